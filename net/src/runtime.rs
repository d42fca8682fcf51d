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

/// The machine's CPUs, as the process may use them.
fn cpus() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

/// A node's core threads for `shards` shards when it has the machine to
/// itself: one per shard, at most one per CPU (`node serve`'s default).
pub fn default_cores(shards: u32) -> u32 {
    shards.min(cpus()).max(1)
}

/// The core threads each of `nodes` nodes sharing this one machine runs for
/// `shards` shards (a local cluster: `node dev`, the bench): the CPUs
/// divided among the nodes, at least 1 and at most the shard count.
/// Thread-per-core means one busy thread per CPU; three nodes with a thread
/// per CPU each make three per CPU, whose switches cost about a fifth more
/// CPU per write with 4 shards on 2 CPUs (bench/RESULTS.md, "Local clusters
/// divide the CPUs").
pub fn shared_machine_cores(shards: u32, nodes: u32) -> u32 {
    (cpus() / nodes.max(1)).clamp(1, shards.max(1))
}
