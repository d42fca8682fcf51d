//! The signals `node serve` answers: SIGINT and SIGTERM stop it, SIGHUP
//! reloads its credentials.
//!
//! A signal handler may only do async-signal-safe work, so the handler
//! writes the signal's number into a pipe (the self-pipe pattern) and a
//! thread of its own reads the pipe and acts. `ctrlc`, which the node used
//! before, treats SIGHUP as a request to stop, so reloading on SIGHUP needs
//! this module instead.

use std::sync::atomic::{AtomicI32, Ordering};

/// What a signal asks of the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// SIGINT or SIGTERM.
    Stop,
    /// SIGHUP.
    Reload,
}

/// The pipe's write end, for the handler (-1 before [`spawn_handler`]).
static PIPE_WRITE: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(signal: libc::c_int) {
    let fd = PIPE_WRITE.load(Ordering::Relaxed);
    if fd >= 0 {
        let byte = signal as u8;
        // SAFETY: write(2) is async-signal-safe; the byte lives on this stack
        // frame for the call. A full pipe drops the byte: many signals at
        // once need only one answer.
        unsafe {
            libc::write(fd, (&byte as *const u8).cast(), 1);
        }
    }
}

/// Installs handlers for SIGINT, SIGTERM and SIGHUP and starts the thread
/// that calls `act` for each signal, in order. Call once per process.
pub fn spawn_handler<A>(mut act: A) -> std::io::Result<()>
where
    A: FnMut(Signal) + Send + 'static,
{
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array it is given.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let (read_fd, write_fd) = (fds[0], fds[1]);
    if PIPE_WRITE.compare_exchange(-1, write_fd, Ordering::SeqCst, Ordering::SeqCst).is_err() {
        return Err(std::io::Error::other("the signal handler is already installed"));
    }
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: sigaction is plain data; the handler only calls write(2).
        // SA_RESTART keeps other threads' blocking calls from failing with
        // EINTR.
        let installed = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as *const () as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut())
        };
        if installed != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    std::thread::Builder::new().name("signals".into()).spawn(move || loop {
        let mut byte = 0u8;
        // SAFETY: reads one byte into a local.
        let read = unsafe { libc::read(read_fd, (&mut byte as *mut u8).cast(), 1) };
        if read == 1 {
            let signal = if i32::from(byte) == libc::SIGHUP { Signal::Reload } else { Signal::Stop };
            act(signal);
        } else if read < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        } else {
            return;
        }
    })?;
    Ok(())
}
