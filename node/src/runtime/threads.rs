//! The threads of a node: one pinned io_uring runtime per core, and helper
//! threads that must not compete with the cores.

pub use net::runtime::start_runtime;

/// Lets the calling thread run on any CPU the process may use: a helper
/// thread started by a pinned runtime thread would otherwise share its core.
pub fn unpin_thread() {
    // SAFETY: cpu_set_t is plain data; CPU_SET writes within it and
    // sched_setaffinity only reads it. The kernel keeps the CPUs of the set
    // the process may use.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for cpu in 0..libc::CPU_SETSIZE as usize {
            libc::CPU_SET(cpu, &mut set);
        }
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            tracing::debug!("could not widen a helper thread's CPU set; it stays where it was started");
        }
    }
}

/// Gives the calling thread a lower scheduling priority (nice 10), for
/// background work that must not take CPU time from the shard drivers.
pub fn lower_thread_priority() {
    // SAFETY: plain syscall; on Linux PRIO_PROCESS with 0 names the calling
    // thread.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 10) } != 0 {
        tracing::debug!("could not lower a helper thread's priority");
    }
}

pub fn pin_to_cpu(core: usize) {
    // SAFETY: cpu_set_t is plain data; sched_setaffinity only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core % libc::CPU_SETSIZE as usize, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            tracing::warn!(core, "could not pin the thread to its CPU; continuing unpinned");
        }
    }
}
