//! The io_uring runtime every thread of the node and of the bench runs on.

/// Runs `future` on a new io_uring runtime on this thread, as every core
/// of the node (and the bench's workers) does. The ring is set up with
/// `IORING_SETUP_COOP_TASKRUN`: a completion from an io-wq worker (every WAL
/// write) then no longer interrupts the running thread with
/// an inter-processor interrupt; its task work runs at the thread's next
/// system call, and a sleeping thread is still woken at once. Measured at
/// 256 in flight: +5% throughput (and 1 in flight no slower). Kernels
/// before 5.19 lack the flag and get a plain ring.
pub fn start_runtime<F: std::future::Future>(future: F) -> F::Output {
    static COOP_TASKRUN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let coop = *COOP_TASKRUN.get_or_init(|| tokio_uring::uring_builder().setup_coop_taskrun().build(8).is_ok());
    let mut ring = tokio_uring::uring_builder();
    if coop {
        ring.setup_coop_taskrun();
    }
    tokio_uring::builder().uring_builder(&ring).start(future)
}
