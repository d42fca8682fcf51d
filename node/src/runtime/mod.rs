//! The io_uring runtime around the shard drivers: `node serve` runs one
//! pinned io_uring runtime per core, shards assigned to cores, nothing
//! mutable shared between cores.
//!
//! Core `k` listens on the peer and client ports plus `1000 * k`, and talks to core
//! `k` of the other nodes; shard `s` lives on core `s % cores`. Every node of
//! a cluster must therefore run the same number of shards and cores (cores =
//! min(shards, available CPUs)). A client request that arrives on the wrong
//! core is forwarded over a bounded channel to the core that owns its shard.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use net::{inbound_channel, Inbound, Listener, ListenerConfig, ListenerRole, NodeSecurity, ResponseStatus};
use tokio::sync::{mpsc, oneshot};
use wal::LogStore;

use crate::app::StateMachine;
use crate::config::ServeConfig;
use crate::discovery::{self, Peer};
use crate::shard::{RecoveredShard, Shard, ShardContext, SystemClock};
use crate::topology::{core_addr, CORE_PORT_STRIDE};
use driver::{run_shard, ShardEvent, SHARD_INBOX_MAX};
use peers::{Peers, Replier, TcpTransport};
use storage::LogStorage;
use threads::{pin_to_cpu, start_runtime};

pub mod driver;
pub mod peers;
pub mod storage;
pub mod threads;

/// Requests forwarded between cores, at most, per core.
const FORWARD_QUEUE_MAX: usize = 4096;
/// Decoded frames queued from a core's listeners to its dispatcher.
const INBOUND_QUEUE_MAX: usize = 16_384;
/// WAL batches may exceed the engine's batch limit by the batch header and
/// one entry header; the WAL is configured with this much headroom.
const WAL_BATCH_HEADROOM: usize = 64 << 10;

/// Why `node serve` could not start or stopped with an error. Each variant
/// says what the operator can do.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("io_uring is unavailable ({0}); this node needs Linux 5.10+ with io_uring allowed (containers: permit the io_uring syscalls in the seccomp profile)")]
    IoUring(String),
    #[error("peer discovery failed: {0}")]
    Discovery(#[from] discovery::DiscoveryError),
    #[error("data directory {path}: {reason}")]
    DataDir { path: String, reason: String },
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: SocketAddr, reason: String },
    #[error(transparent)]
    Shard(#[from] crate::shard::ShardError),
    #[error("core {core} failed: {reason}")]
    Core { core: usize, reason: String },
}

/// A client request forwarded from the core it arrived on.
struct Forwarded {
    shard_id: u32,
    request: net::ClientRequest,
    reply: oneshot::Sender<ResponseStatus>,
    arrived: Instant,
}

/// Runs the node until SIGINT or SIGTERM, with `make_app` building each
/// shard's state machine.
pub fn serve<S, F>(config: ServeConfig, make_app: F) -> Result<(), ServeError>
where
    S: StateMachine + 'static,
    F: Fn(u32) -> S + Send + Sync + 'static,
{
    wal::io_uring_available().map_err(|error| ServeError::IoUring(error.to_string()))?;
    let members = discovery::discover_blocking(&config.peers)?;
    discovery::check_members(config.node_id, &members)?;
    prepare_data_dir(&config.data_dir, config.shards)?;
    let cores = (config.shards as usize).min(std::thread::available_parallelism().map_or(1, |n| n.get())).max(1);
    for core in 0..cores {
        for base in [config.peer_addr, config.client_addr] {
            let addr = core_addr(base, core as u16).ok_or_else(|| ServeError::Listen {
                addr: base,
                reason: format!(
                    "core {core} needs port {} + {}, past the last port",
                    base.port(),
                    core as u16 * CORE_PORT_STRIDE
                ),
            })?;
            probe_port(addr)?;
        }
    }
    let shutdown = Arc::new(AtomicBool::new(false));
    {
        let shutdown = shutdown.clone();
        ctrlc::set_handler(move || {
            if shutdown.swap(true, Ordering::SeqCst) {
                // A second signal: stop now.
                std::process::exit(130);
            }
        })
        .map_err(|error| ServeError::Core { core: 0, reason: format!("cannot install the signal handler: {error}") })?;
    }
    // One set of credentials for the whole process: every core's listeners
    // and links share it.
    let security = NodeSecurity::plaintext(config.cluster_id, config.node_id, config.token.0.clone());
    for warning in security.warnings() {
        tracing::warn!(%warning, "security");
    }
    tracing::info!(node = config.node_id, cores, shards = config.shards, members = ?members, "starting");
    let config = Arc::new(config);
    let make_app = Arc::new(make_app);
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for _ in 0..cores {
        let (sender, receiver) = mpsc::channel::<Forwarded>(FORWARD_QUEUE_MAX);
        senders.push(sender);
        receivers.push(Some(receiver));
    }
    let mut threads = Vec::new();
    for (core, receiver) in receivers.iter_mut().enumerate() {
        let receiver = receiver.take().expect("one receiver per core");
        let (config, members, senders, shutdown, make_app) =
            (config.clone(), members.clone(), senders.clone(), shutdown.clone(), make_app.clone());
        let security = security.clone();
        let pin = config.pin_cores;
        let thread = std::thread::Builder::new()
            .name(format!("core-{core}"))
            .spawn(move || {
                if pin {
                    pin_to_cpu(core);
                }
                start_runtime(run_core(core, cores, config, members, senders, receiver, shutdown, make_app, security))
            })
            .map_err(|error| ServeError::Core { core, reason: error.to_string() })?;
        threads.push(thread);
    }
    let mut first_error = None;
    for (core, thread) in threads.into_iter().enumerate() {
        let result = thread.join().unwrap_or_else(|_| Err(ServeError::Core { core, reason: "panicked".into() }));
        if let Err(error) = result {
            // One core failing stops the node: the others shut down too.
            shutdown.store(true, Ordering::SeqCst);
            first_error.get_or_insert(error);
        }
    }
    match first_error {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

/// Fails clearly if another process listens on `addr`. After a node is
/// killed, the kernel tears its io_uring down asynchronously and its
/// listening socket can outlive the process by a moment, so a conflict is
/// retried for [`PORT_WAIT`] before it is reported.
fn probe_port(addr: SocketAddr) -> Result<(), ServeError> {
    let deadline = Instant::now() + PORT_WAIT;
    let mut warned = false;
    loop {
        match std::net::TcpListener::bind(addr) {
            Ok(_) => return Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                if !warned {
                    tracing::warn!(%addr, "address in use; waiting up to {PORT_WAIT:?} in case a previous run is still closing");
                    warned = true;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(error) => return Err(ServeError::Listen { addr, reason: error.to_string() }),
        }
    }
}

/// How long a port conflict at start is retried.
const PORT_WAIT: Duration = Duration::from_secs(5);

fn prepare_data_dir(dir: &Path, shards: u32) -> Result<(), ServeError> {
    let fail = |reason: String| ServeError::DataDir { path: dir.display().to_string(), reason };
    std::fs::create_dir_all(dir).map_err(|error| fail(format!("cannot create it: {error}")))?;
    for shard in 0..shards {
        let path = dir.join(format!("shard-{shard}"));
        std::fs::create_dir_all(&path).map_err(|error| fail(format!("cannot create {}: {error}", path.display())))?;
    }
    let probe = dir.join(".write-probe");
    std::fs::write(&probe, b"probe").map_err(|error| fail(format!("not writable: {error}")))?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn run_core<S, F>(
    core: usize,
    cores: usize,
    config: Arc<ServeConfig>,
    members: Vec<Peer>,
    forward: Vec<mpsc::Sender<Forwarded>>,
    mut forwarded: mpsc::Receiver<Forwarded>,
    shutdown: Arc<AtomicBool>,
    make_app: Arc<F>,
    security: NodeSecurity,
) -> Result<(), ServeError>
where
    S: StateMachine + 'static,
    F: Fn(u32) -> S,
{
    let offset = core as u16;
    let (inbound_sender, mut inbound) = inbound_channel(INBOUND_QUEUE_MAX);
    let mut listeners = Vec::new();
    // The peer listener takes only peers, the client listener only clients.
    for (base, role) in [(config.peer_addr, ListenerRole::Peers), (config.client_addr, ListenerRole::Clients)] {
        let addr = core_addr(base, offset).expect("checked at start");
        let listener = Listener::bind(ListenerConfig::new(addr, role, security.clone()))
            .map_err(|error| ServeError::Listen { addr, reason: error.to_string() })?;
        listeners.push(listener.spawn(inbound_sender.clone()));
    }
    drop(inbound_sender);
    let peers = Rc::new(Peers::new(security, offset));
    for member in &members {
        peers.ensure(member.id, member.addr);
    }
    // A joining node bootstraps nothing: it learns the membership from the
    // leader's log (the first entry records the bootstrap membership).
    let voters: Vec<u64> = if config.join { Vec::new() } else { members.iter().map(|member| member.id).collect() };
    let mut inboxes: HashMap<u32, mpsc::Sender<ShardEvent>> = HashMap::new();
    let mut tasks = Vec::new();
    for shard_id in (0..config.shards).filter(|shard| *shard as usize % cores == core) {
        let (sender, receiver) = mpsc::channel(SHARD_INBOX_MAX);
        inboxes.insert(shard_id, sender);
        let mut wal_config =
            wal::WalConfig::new(config.data_dir.join(format!("shard-{shard_id}")), config.cluster_id, config.node_id);
        let batch_limit = config.limits.batch_bytes_max + WAL_BATCH_HEADROOM;
        wal_config.batch_bytes_max = batch_limit;
        wal_config.snapshot_write_rate = config.snapshot_write_rate;
        wal_config.write_bytes_max = wal_config.write_bytes_max.max(batch_limit);
        let mut engine_config = config.engine_config(voters.clone());
        engine_config.seed = config.node_id.wrapping_mul(1_000_003) ^ u64::from(shard_id);
        let ctx = ShardContext {
            shard_id,
            node_id: config.node_id,
            core: offset,
            peer_addr: config.peer_addr,
            client_addr: config.client_addr,
            read_consistency_default: config.read_consistency,
            forward_writes: config.forward_writes,
            command_bytes_max: config.limits.batch_bytes_max.saturating_sub(4096).max(1024),
            nonce_salt: rand::random(),
        };
        let fail = |source| ServeError::Shard(crate::shard::ShardError::Wal { shard: shard_id, source });
        let (wal, recovered) = wal::Wal::open(wal_config).await.map_err(fail)?;
        let snapshot = match recovered.snapshot {
            Some(_) => wal.load_snapshot().await.map_err(fail)?,
            None => None,
        };
        let (snapshot_sender, snapshot_receiver) = mpsc::unbounded_channel();
        let storage = LogStorage::new(Rc::new(wal), shard_id, snapshot_sender);
        let transport = TcpTransport { shard_id, peers: peers.clone() };
        let shard = Shard::new(
            ctx,
            engine_config,
            RecoveredShard { recovered, snapshot },
            make_app(shard_id),
            storage,
            transport,
            SystemClock,
        )?;
        let tick = config.timing.tick_interval;
        tasks.push(tokio_uring::spawn(run_shard(shard, receiver, snapshot_receiver, tick, shutdown.clone())));
    }
    tracing::info!(core, shards = ?inboxes.keys().collect::<Vec<_>>(), "core serving");
    let mut ticker = tokio::time::interval(Duration::from_millis(50));
    loop {
        tokio::select! {
            event = inbound.recv() => {
                let Some(event) = event else { break };
                route(event, cores, &inboxes, &forward);
            }
            request = forwarded.recv() => {
                let Some(Forwarded { shard_id, request, reply, arrived }) = request else { continue };
                deliver(&inboxes, shard_id, request, Replier::Forwarded(reply), arrived);
            }
            _ = ticker.tick() => {
                if shutdown.load(Ordering::Relaxed) {
                    break;
                }
            }
        }
    }
    for listener in &listeners {
        listener.shutdown();
    }
    drop(inboxes);
    let mut result = Ok(());
    for task in tasks {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                shutdown.store(true, Ordering::SeqCst);
                result = Err(ServeError::Shard(error));
            }
            Err(error) => result = Err(ServeError::Core { core, reason: format!("shard task failed: {error}") }),
        }
    }
    peers.close_all();
    result
}

fn route(
    event: Inbound,
    cores: usize,
    inboxes: &HashMap<u32, mpsc::Sender<ShardEvent>>,
    forward: &[mpsc::Sender<Forwarded>],
) {
    match event {
        Inbound::Raft { shard_id, message, .. } => {
            if let Some(inbox) = inboxes.get(&shard_id) {
                // A full inbox drops the message: Raft resends.
                let _ = inbox.try_send(ShardEvent::Raft(message));
            }
        }
        Inbound::Request { shard_id, request, reply, .. } => {
            let arrived = reply.received();
            if inboxes.contains_key(&shard_id) {
                deliver(inboxes, shard_id, request, Replier::Local(reply), arrived);
                return;
            }
            let Some(owner) = forward.get(shard_id as usize % cores) else {
                Replier::Local(reply).send(ResponseStatus::BadRequest(format!("no shard {shard_id}")));
                return;
            };
            let (sender, receiver) = oneshot::channel();
            match owner.try_send(Forwarded { shard_id, request, reply: sender, arrived }) {
                Ok(()) => {
                    tokio_uring::spawn(async move {
                        let status = receiver.await.unwrap_or(ResponseStatus::TimedOut);
                        Replier::Local(reply).send(status);
                    });
                }
                Err(_) => Replier::Local(reply).send(ResponseStatus::Busy),
            }
        }
    }
}

fn deliver(
    inboxes: &HashMap<u32, mpsc::Sender<ShardEvent>>,
    shard_id: u32,
    request: net::ClientRequest,
    reply: Replier,
    arrived: Instant,
) {
    let Some(inbox) = inboxes.get(&shard_id) else {
        reply.send(ResponseStatus::BadRequest(format!("no shard {shard_id} on this node")));
        return;
    };
    if let Err(error) = inbox.try_send(ShardEvent::Request { request, reply, arrived }) {
        let event = match error {
            mpsc::error::TrySendError::Full(event) | mpsc::error::TrySendError::Closed(event) => event,
        };
        if let ShardEvent::Request { reply, .. } = event {
            reply.send(ResponseStatus::Busy);
        }
    }
}
