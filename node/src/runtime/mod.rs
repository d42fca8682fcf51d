//! The io_uring runtime around the shard drivers: a node runs one pinned
//! io_uring runtime per core, shards assigned to cores, nothing mutable
//! shared between cores.
//!
//! Core `k` listens on the peer and client ports plus `1000 * k`, and talks to core
//! `k` of the other nodes; shard `s` lives on core `s % cores`. Every node of
//! a cluster must therefore run the same number of shards and cores (cores =
//! `--cores`, or min(shards, available CPUs)). A client request that arrives on the wrong
//! core is forwarded over a bounded channel to the core that owns its shard.
//!
//! [`start`] runs a node with any state machine, on the WAL or in memory
//! ([`Storage`]), over TCP or an in-process [`Hub`] ([`Network`]), and
//! returns a [`RunningNode`] with a [`NodeHandle`] for in-process clients;
//! [`serve`] is the `node serve` binary's way: the WAL, TCP, until a signal.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use engine::{Message, NodeId};
use net::{
    inbound_channel, Inbound, InboundReceiver, Listener, ListenerConfig, ListenerHandle, ListenerRole, NodeSecurity,
    ResponseStatus,
};
use tokio::sync::{mpsc, oneshot};
use wal::LogStore;

use crate::app::StateMachine;
use crate::config::ServeConfig;
use crate::discovery::{self, Peer, PeerSource};
pub use crate::local::{Forwarded, Hub, HubMessage, NodeHandle};
use crate::metrics::MetricsSources;
use crate::replicated::Addresses;
use crate::resp::RespConfig;
use crate::shard::{RecoveredShard, RecoveringState, Shard, ShardContext, ShardTransport, SnapshotOpener, SystemClock};
use crate::signals::Signal;
use crate::topology::{core_addr, CORE_PORT_STRIDE};
use driver::{run_shard, ShardEvent, SHARD_INBOX_MAX};
pub use log::{LogOptions, MemDisks, NodeLog};
use peers::{Peers, Replier};
use storage::LogStorage;
use threads::{pin_to_cpu, start_runtime};

pub mod driver;
pub mod log;
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
/// How often a core's dispatcher looks at the shutdown flag.
const SHUTDOWN_POLL: Duration = Duration::from_millis(50);

/// Why a node could not start or stopped with an error. Each variant says
/// what the operator can do.
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
    #[error("credentials: {0}")]
    Credentials(#[from] net::CredentialsError),
    #[error("a token is required without TLS: --token, NODE_TOKEN or --token-file")]
    NoCredentials,
    /// Joining the cluster (`--join`) failed; the text says why.
    #[error("{0}")]
    Join(String),
    /// The RESP front door authenticates with tokens (`AUTH`), or with
    /// client certificates over TLS: a node with neither has no way to
    /// let a RESP client in.
    #[error(
        "--resp-addr needs a way for RESP clients to authenticate: client tokens for AUTH (the cluster token: \
         --token, NODE_TOKEN or --token-file; or per-user tokens: --client-tokens), or TLS with a client CA \
         (--tls-client-ca) for client certificates"
    )]
    RespWithoutToken,
}

/// Where a node's shards keep their logs.
#[derive(Clone, Debug)]
pub enum Storage {
    /// The io_uring WAL, in `shard-N` directories of the data directory.
    Wal,
    /// Memory that outlives the node (an in-process cluster's disks).
    Memory(MemDisks),
}

/// How a node reaches its peers.
#[derive(Clone)]
pub enum Network {
    /// TCP on the configured peer and client addresses.
    Tcp,
    /// Channels to the other nodes of this process; no sockets (clients use
    /// [`NodeHandle`]s).
    InProcess(Hub),
}

/// A node started by [`start`]: its cores run on threads of their own.
pub struct RunningNode {
    node_id: NodeId,
    handle: NodeHandle,
    shutdown: Arc<AtomicBool>,
    security: NodeSecurity,
    threads: Vec<std::thread::JoinHandle<Result<(), ServeError>>>,
    /// Why the membership driver stopped the node, if it did.
    fatal: crate::membership::Fatal,
}

impl RunningNode {
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// A handle for sending client requests from this process.
    pub fn handle(&self) -> NodeHandle {
        self.handle.clone()
    }

    /// The flag that stops the node when set (what a signal handler sets).
    pub fn shutdown_flag(&self) -> Arc<AtomicBool> {
        self.shutdown.clone()
    }

    /// The node's credentials, shared by every core's listeners and links:
    /// [`NodeSecurity::reload`] on it is what SIGHUP does.
    pub fn security(&self) -> NodeSecurity {
        self.security.clone()
    }

    /// Stops the node cleanly: waiting clients are answered, the hard state
    /// saved, the logs closed.
    pub fn stop(self) -> Result<(), ServeError> {
        self.shutdown.store(true, Ordering::SeqCst);
        self.wait()
    }

    /// Waits until the node stops (its shutdown flag, or a core failing,
    /// which stops the others too) and reports the first failure.
    pub fn wait(self) -> Result<(), ServeError> {
        let mut first_error = None;
        for (core, thread) in self.threads.into_iter().enumerate() {
            let result = thread.join().unwrap_or_else(|_| Err(ServeError::Core { core, reason: "panicked".into() }));
            if let Err(error) = result {
                self.shutdown.store(true, Ordering::SeqCst);
                first_error.get_or_insert(error);
            }
        }
        if let Some(reason) = self.fatal.lock().expect("not poisoned").take() {
            return Err(ServeError::Join(reason));
        }
        match first_error {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

/// Runs the node until SIGINT or SIGTERM, reloading its credentials on
/// SIGHUP: the `node serve` binary, with `make_app` building each shard's
/// state machine, on the WAL and TCP.
pub fn serve<S, F>(config: ServeConfig, make_app: F) -> Result<(), ServeError>
where
    S: StateMachine + 'static,
    F: Fn(u32) -> S + Send + Sync + 'static,
{
    let node = start(config, Storage::Wal, Network::Tcp, make_app)?;
    let shutdown = node.shutdown_flag();
    let security = node.security();
    crate::signals::spawn_handler(move |signal| match signal {
        Signal::Stop => {
            if shutdown.swap(true, Ordering::SeqCst) {
                // A second signal: stop now.
                std::process::exit(130);
            }
        }
        Signal::Reload => reload_credentials(&security),
    })
    .map_err(|error| ServeError::Core { core: 0, reason: format!("cannot install the signal handler: {error}") })?;
    node.wait()
}

/// Reads the credentials' files again. Established connections, peer links
/// included, keep what they negotiated, so the cluster stays connected; a
/// file that fails to load leaves the current credentials in place.
fn reload_credentials(security: &NodeSecurity) {
    match security.reload() {
        Ok(generation) => {
            tracing::info!(generation, "credentials reloaded: new connections use them");
            for warning in security.warnings() {
                tracing::warn!(%warning, "security");
            }
        }
        Err(error) => tracing::error!(%error, "credentials not reloaded; keeping the current ones"),
    }
}

/// What every core of a node shares.
struct NodeSetup<F> {
    config: ServeConfig,
    members: Vec<Peer>,
    cores: usize,
    storage: Storage,
    network: Network,
    security: NodeSecurity,
    make_app: F,
    /// The cores' queues of requests from outside them.
    forward: Vec<mpsc::Sender<Forwarded>>,
    /// How the front doors on core 0 reach every shard.
    handle: NodeHandle,
    shutdown: Arc<AtomicBool>,
    /// Members' addresses a witness learns outside the log, for its shards.
    learned_addresses: crate::shard::LearnedAddresses,
    /// A longer vote hold the node said before it restarted.
    said_hold: Option<Arc<crate::vote_hold::SaidHold>>,
}

/// Starts a node: checks its configuration and ports, then runs one thread
/// per core with the shards it owns, each with a state machine from
/// `make_app`.
pub fn start<S, F>(
    config: ServeConfig,
    storage: Storage,
    network: Network,
    make_app: F,
) -> Result<RunningNode, ServeError>
where
    S: StateMachine + 'static,
    F: Fn(u32) -> S + Send + Sync + 'static,
{
    wal::io_uring_available().map_err(|error| ServeError::IoUring(error.to_string()))?;
    let mut config = config;
    check_replica_kind(&config, &storage)?;
    let members = resolve_members(&mut config)?;
    if matches!(storage, Storage::Wal) && matches!(network, Network::Tcp) {
        crate::dns_watch::decide_start(&mut config, &members).map_err(|error| ServeError::Join(error.0))?;
    }
    let said_hold = prepare_storage(&config, &storage)?;
    let cores = config.cores();
    if matches!(network, Network::Tcp) {
        check_ports(&config, cores)?;
    }
    // One set of credentials for the whole process: every core's listeners
    // and links share it.
    let security = load_security(&config, &network)?;
    tracing::info!(node = config.node_id, cores, shards = config.shards, members = ?members, "starting");
    if matches!(network, Network::Tcp) {
        warn_own_entry_differs(&config, &members);
    }
    let mut forward = Vec::new();
    let mut receivers = Vec::new();
    let mut moved = Vec::new();
    for _ in 0..cores {
        let (sender, receiver) = mpsc::channel::<Forwarded>(FORWARD_QUEUE_MAX);
        let (moved_sender, moved_receiver) = mpsc::channel::<Peer>(crate::dns_watch::MOVED_QUEUE_MAX);
        forward.push(sender);
        moved.push(moved_sender);
        receivers.push((receiver, moved_receiver));
    }
    let node_id = config.node_id;
    let pin = config.pin_cores;
    let shutdown = Arc::new(AtomicBool::new(false));
    let handle = NodeHandle::new(node_id, config.shards, forward.clone());
    let setup = Arc::new(NodeSetup {
        config,
        members,
        cores,
        storage,
        network,
        security,
        make_app,
        forward,
        handle: handle.clone(),
        shutdown: shutdown.clone(),
        learned_addresses: Default::default(),
        said_hold,
    });
    let security = setup.security.clone();
    let threads = spawn_cores(&setup, receivers, pin)?;
    spawn_watches(&setup, moved);
    let fatal = crate::membership::Fatal::default();
    if !setup.config.join_through.is_empty() && matches!(setup.network, Network::Tcp) {
        crate::membership::spawn_driver(setup.config.clone(), shutdown.clone(), fatal.clone());
    }
    Ok(RunningNode { node_id, handle, shutdown, security, threads, fatal })
}

/// The threads that point the cores' links at members that moved: a
/// witness's member watch (which also fills the addresses its shards
/// learn) and the DNS watch.
fn spawn_watches<F>(setup: &NodeSetup<F>, moved: Vec<crate::dns_watch::Moved>) {
    let (config, shutdown) = (&setup.config, &setup.shutdown);
    if config.witness && !config.join_through.is_empty() && matches!(setup.network, Network::Tcp) {
        let learned = setup.learned_addresses.clone();
        crate::membership::spawn_witness_watch(config.clone(), moved.clone(), learned, shutdown.clone());
    }
    if let (PeerSource::Dns(dns), Network::Tcp) = (&config.peers, &setup.network) {
        crate::dns_watch::spawn(config.node_id, dns.clone(), setup.handle.clone(), moved, shutdown.clone());
    }
}

/// One thread per core, each running its core's runtime with the queues
/// that reach it.
fn spawn_cores<S, F>(
    setup: &Arc<NodeSetup<F>>,
    queues: Vec<(mpsc::Receiver<Forwarded>, mpsc::Receiver<Peer>)>,
    pin: bool,
) -> Result<Vec<std::thread::JoinHandle<Result<(), ServeError>>>, ServeError>
where
    S: StateMachine + 'static,
    F: Fn(u32) -> S + Send + Sync + 'static,
{
    let node_id = setup.config.node_id;
    let mut threads = Vec::new();
    for (core, (forwarded, moved)) in queues.into_iter().enumerate() {
        let setup = setup.clone();
        let thread = std::thread::Builder::new()
            .name(format!("node-{node_id}-core-{core}"))
            .spawn(move || {
                if pin {
                    pin_to_cpu(core);
                }
                start_runtime(run_core(core, setup, CoreQueues { forwarded, moved }))
            })
            .map_err(|error| ServeError::Core { core, reason: error.to_string() })?;
        threads.push(thread);
    }
    Ok(threads)
}

/// A data directory on disk must be what `--witness` says it is (see
/// [`crate::membership::check_replica_kind`]).
fn check_replica_kind(config: &ServeConfig, storage: &Storage) -> Result<(), ServeError> {
    if matches!(storage, Storage::Wal) {
        crate::membership::check_replica_kind(config).map_err(|error| ServeError::Join(error.0))?;
    }
    Ok(())
}

/// The members to connect to at start: from `--peers` or DNS; when
/// joining through members, also this node's id (from the data directory or
/// the cluster) and the members the cluster reports.
fn resolve_members(config: &mut ServeConfig) -> Result<Vec<Peer>, ServeError> {
    let members = if config.join_through.is_empty() {
        let members = discovery::discover_blocking(&config.peers)?;
        discovery::check_members(config.node_id, &members)?;
        members
    } else {
        // Joining through members: the id from the data directory or the
        // cluster, the members from the cluster (see `crate::membership`).
        let mut members = crate::membership::resolve_identity(config).map_err(|error| ServeError::Join(error.0))?;
        members.extend(discovery::discover_blocking(&config.peers)?);
        members.retain(|member| member.id != config.node_id);
        members.sort();
        members.dedup_by_key(|member| member.id);
        members
    };
    Ok(members)
}

/// Prepares the data directory of a node that keeps its log on disk, and
/// reads from it a longer vote hold the node said before it restarted.
fn prepare_storage(
    config: &ServeConfig,
    storage: &Storage,
) -> Result<Option<Arc<crate::vote_hold::SaidHold>>, ServeError> {
    if !matches!(storage, Storage::Wal) {
        return Ok(None);
    }
    prepare_data_dir(&config.data_dir, config.shards)?;
    check_data_fs(&config.data_dir);
    let hold = config.timing.tick_interval * config.timing.election_ticks_min;
    crate::vote_hold::SaidHold::at_start(&config.data_dir, hold, config.shards)
        .map_err(|error| ServeError::Join(error.0))
}

/// One set of credentials for the whole process: every core's listeners and
/// links share it. Over TCP its warnings (plaintext above all) are logged.
fn load_security(config: &ServeConfig, network: &Network) -> Result<NodeSecurity, ServeError> {
    if config.token.is_none() && config.security.tls.is_none() {
        return Err(ServeError::NoCredentials);
    }
    let history = crate::membership::read_history(&config.data_dir).map_err(|error| ServeError::Join(error.0))?;
    if history != net::History::FRESH {
        tracing::info!(%history, "peers must continue the same history: a node of another is refused");
    }
    let security = NodeSecurity::load(config.security.node_security(
        config.cluster_id,
        config.node_id,
        config.token.as_ref(),
        history,
    ))?;
    if config.resp_addr.is_some() && !security.accepts_client_tokens() && !security.accepts_client_certificates() {
        return Err(ServeError::RespWithoutToken);
    }
    if matches!(network, Network::Tcp) {
        for warning in security.warnings() {
            tracing::warn!(%warning, "security");
        }
    }
    Ok(security)
}

/// Fails clearly if a port a core needs does not exist or is taken.
fn check_ports(config: &ServeConfig, cores: usize) -> Result<(), ServeError> {
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
    for addr in [config.resp_addr, config.metrics_addr].into_iter().flatten() {
        probe_port(addr)?;
    }
    Ok(())
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
    let holds_logs = crate::membership::holds_a_log(dir);
    let missing = (0..shards).find(|shard| !dir.join(format!("shard-{shard}")).is_dir());
    if shard_logs_beyond(dir, shards).or(missing.filter(|_| holds_logs)).is_some() {
        let held = (0u32..).take_while(|shard| dir.join(format!("shard-{shard}")).is_dir()).count();
        return Err(fail(format!(
            "it holds the logs of {held} shard(s) and this node runs {shards} (--shards): the count cannot change; \
             run it with --shards {held}, the count its cluster was created with (for a restored backup, the \
             count `node restore` printed)"
        )));
    }
    for shard in 0..shards {
        let path = dir.join(format!("shard-{shard}"));
        std::fs::create_dir_all(&path).map_err(|error| fail(format!("cannot create {}: {error}", path.display())))?;
    }
    let probe = dir.join(".write-probe");
    std::fs::write(&probe, b"probe").map_err(|error| fail(format!("not writable: {error}")))?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

/// The lowest shard number at or past `shards` whose directory holds
/// files: a node started with fewer shards than its data has would route
/// keys past them and never serve what they hold.
fn shard_logs_beyond(dir: &Path, shards: u32) -> Option<u32> {
    let listing = std::fs::read_dir(dir).ok()?;
    listing
        .flatten()
        .filter_map(|entry| {
            let shard: u32 = entry.file_name().to_str()?.strip_prefix("shard-")?.parse().ok()?;
            let holds_files = std::fs::read_dir(entry.path()).is_ok_and(|mut files| files.next().is_some());
            (shard >= shards && holds_files).then_some(shard)
        })
        .min()
}

/// Says which file system holds the data directory, and warns when it
/// loses data on a restart or costs synced writes ([`wal::filesystem`]).
fn check_data_fs(dir: &Path) {
    let Some((mount, finding)) = wal::filesystem::check(dir) else { return };
    tracing::info!(
        data_dir = %dir.display(),
        fs = %mount.fs_type,
        source = %mount.source,
        mount_point = %mount.mount_point.display(),
        "data directory's file system"
    );
    if let Some(finding) = finding {
        tracing::warn!(fs = %mount.fs_type, "{}", finding.warning(dir, &mount));
    }
    let segment = wal::WalConfig::new(dir, 1, 1).segment_bytes;
    if let Some(free) = free_bytes(dir).filter(|free| *free < segment) {
        tracing::warn!(
            data_dir = %dir.display(),
            free_bytes = free,
            "the data directory's file system has {} MiB free: each shard's log takes {} MiB at a time (a segment, \
             made in full), so writes are refused with NoSpace (\"disk full\") whenever a log needs a new one",
            free >> 20,
            segment >> 20
        );
    }
}

/// Bytes an unprivileged writer may still use on `dir`'s file system.
fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a NUL-terminated string and `stat` a writable
    // statvfs that outlives the call.
    (unsafe { libc::statvfs(path.as_ptr(), &mut stat) } == 0).then(|| stat.f_bavail as u64 * stat.f_frsize as u64)
}

/// How a core's shards reach their peers: TCP links, or the hub.
#[derive(Clone)]
enum PeerNet {
    Tcp(Rc<Peers>),
    Local { hub: Hub, core: u16 },
}

/// A shard's transport: Raft messages over its core's `PeerNet`, answers
/// to whoever asked.
pub struct NodeTransport {
    shard_id: u32,
    peers: PeerNet,
}

impl ShardTransport for NodeTransport {
    type Reply = Replier;

    fn send(&mut self, message: Message) {
        match &self.peers {
            PeerNet::Tcp(peers) => peers.send(self.shard_id, message),
            PeerNet::Local { hub, core } => hub.send(*core, self.shard_id, message),
        }
    }

    fn reply(&mut self, to: Replier, status: ResponseStatus) {
        to.send(status);
    }

    fn member_addresses(&mut self, id: NodeId, addresses: &Addresses) {
        if let PeerNet::Tcp(peers) = &self.peers {
            if let Some(addr) = addresses.peer.as_deref().and_then(|addr| addr.parse::<SocketAddr>().ok()) {
                peers.ensure(id, addr);
            }
        }
    }

    fn member_removed(&mut self, id: NodeId) {
        if let PeerNet::Tcp(peers) = &self.peers {
            peers.removed(self.shard_id, id);
        }
    }

    fn refusing_as_removed(&self) -> Vec<NodeId> {
        match &self.peers {
            PeerNet::Tcp(peers) => peers.refusing_as_removed(),
            _ => Vec::new(),
        }
    }

    fn links(&self) -> Vec<crate::shard::LinkReport> {
        match &self.peers {
            PeerNet::Tcp(peers) => peers.links(),
            _ => Vec::new(),
        }
    }
}

/// What reaches a core from outside it besides the network.
struct CoreQueues {
    /// Requests from other cores and from handles.
    forwarded: mpsc::Receiver<Forwarded>,
    /// Members' new peer addresses from the DNS watch ([`crate::dns_watch`])
    /// or a witness's member watch ([`crate::membership::spawn_witness_watch`]).
    moved: mpsc::Receiver<Peer>,
}

/// One core: its network, its shards, and the dispatcher that routes what
/// arrives to them until shutdown.
async fn run_core<S, F>(core: usize, setup: Arc<NodeSetup<F>>, mut queues: CoreQueues) -> Result<(), ServeError>
where
    S: StateMachine + 'static,
    F: Fn(u32) -> S,
{
    let config = &setup.config;
    let offset = core as u16;
    let (inbound_sender, mut inbound) = inbound_channel(INBOUND_QUEUE_MAX);
    let (peers, listeners) = match &setup.network {
        Network::Tcp => {
            let removed = net::RemovedPeers::default();
            let listeners = listen(config, offset, &setup.security, &inbound_sender, &removed)?;
            let shards = (0..config.shards).filter(|shard| *shard as usize % setup.cores == core).count();
            let peers = Rc::new(Peers::new(setup.security.clone(), offset, shards, config.shards, removed));
            for member in &setup.members {
                peers.ensure(member.id, member.addr);
            }
            (PeerNet::Tcp(peers), listeners)
        }
        Network::InProcess(hub) => (PeerNet::Local { hub: hub.clone(), core: offset }, Vec::new()),
    };
    let mut from_hub = match &setup.network {
        Network::InProcess(hub) => Some(hub.register(config.node_id, offset)),
        Network::Tcp => None,
    };
    drop(inbound_sender);
    let mut inboxes: HashMap<u32, mpsc::Sender<ShardEvent>> = HashMap::new();
    let mut tasks = Vec::new();
    for shard_id in (0..config.shards).filter(|shard| *shard as usize % setup.cores == core) {
        let (sender, receiver) = mpsc::channel(SHARD_INBOX_MAX);
        inboxes.insert(shard_id, sender);
        tasks.push(open_shard(&setup, offset, shard_id, peers.clone(), receiver).await?);
    }
    if core == 0 && matches!(setup.network, Network::Tcp) {
        start_front_doors(&setup, &listeners)?;
    }
    tracing::info!(core, shards = ?inboxes.keys().collect::<Vec<_>>(), "core serving");
    dispatch(&setup, &mut inbound, &mut queues, &peers, from_hub.as_mut(), &inboxes).await;
    for listener in &listeners {
        listener.shutdown();
    }
    if let Network::InProcess(hub) = &setup.network {
        hub.unregister(config.node_id, offset);
    }
    drop(inboxes);
    let mut result = Ok(());
    for task in tasks {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                setup.shutdown.store(true, Ordering::SeqCst);
                result = Err(ServeError::Shard(error));
            }
            Err(error) => result = Err(ServeError::Core { core, reason: format!("shard task failed: {error}") }),
        }
    }
    if let PeerNet::Tcp(peers) = peers {
        peers.close_all();
    }
    result
}

/// Starts the RESP front door and the metrics endpoint, when configured, on
/// core 0: both reach every shard through the node's handle.
fn start_front_doors<F>(setup: &NodeSetup<F>, listeners: &[ListenerHandle]) -> Result<(), ServeError> {
    let config = &setup.config;
    let mut resp_stats = None;
    if let Some(addr) = config.resp_addr {
        let resp = RespConfig { addr, security: setup.security.clone(), command_bytes_max: command_bytes_max(config) };
        let stats = crate::resp::spawn(resp, setup.handle.clone())
            .map_err(|error| ServeError::Listen { addr, reason: error.to_string() })?;
        resp_stats = Some(stats);
    }
    if let Some(addr) = config.metrics_addr {
        // `listen` binds the peer listener first, then the client one.
        let names = ["peer", "client"];
        let sources = MetricsSources {
            handle: setup.handle.clone(),
            listeners: names.into_iter().zip(listeners.iter().cloned()).collect(),
            resp: resp_stats,
        };
        crate::metrics::spawn(addr, sources).map_err(|error| ServeError::Listen { addr, reason: error.to_string() })?;
    }
    Ok(())
}

/// Binds core `core`'s peer and client listeners: the peer listener takes
/// only peers, the client listener only clients.
fn listen(
    config: &ServeConfig,
    core: u16,
    security: &NodeSecurity,
    inbound: &net::InboundSender,
    removed: &net::RemovedPeers,
) -> Result<Vec<ListenerHandle>, ServeError> {
    let mut listeners = Vec::new();
    for (base, role) in [(config.peer_addr, ListenerRole::Peers), (config.client_addr, ListenerRole::Clients)] {
        let addr = core_addr(base, core).expect("checked at start");
        let mut listener_config = ListenerConfig::new(addr, role, security.clone());
        listener_config.shards = config.shards;
        listener_config.removed_peers = removed.clone();
        let listener =
            Listener::bind(listener_config).map_err(|error| ServeError::Listen { addr, reason: error.to_string() })?;
        listeners.push(listener.spawn(inbound.clone()));
    }
    Ok(listeners)
}

/// The largest write command a shard accepts: what fits one replication
/// batch with room for the entry and session envelopes.
fn command_bytes_max(config: &ServeConfig) -> usize {
    config.limits.batch_bytes_max.saturating_sub(4096).max(1024)
}

/// Warns when the members dial this node somewhere it does not listen: its
/// own `--peers` entry differs from `--peer-addr` (the port, or the address
/// unless it listens on all of them). A port mapping or a proxy may forward
/// one to the other, so it is no error; a typo left a cluster with no
/// leader and nothing said (the others' links failed at debug level).
fn warn_own_entry_differs(config: &ServeConfig, members: &[Peer]) {
    let Some(own) = members.iter().find(|member| member.id == config.node_id) else { return };
    let listen = config.peer_addr;
    let differs = own.addr.port() != listen.port() || (!listen.ip().is_unspecified() && own.addr.ip() != listen.ip());
    if differs {
        tracing::warn!(
            "--peers lists this node at {} but it listens for peers on {}: the other members dial the listed \
             address, so unless a port mapping or proxy forwards it here they cannot reach this node",
            own.addr,
            listen
        );
    }
}

/// Opens shard `shard_id`'s log, rebuilds its driver, and spawns it.
async fn open_shard<S, F>(
    setup: &NodeSetup<F>,
    core: u16,
    shard_id: u32,
    peers: PeerNet,
    inbox: mpsc::Receiver<ShardEvent>,
) -> Result<tokio::task::JoinHandle<Result<(), crate::shard::ShardError>>, ServeError>
where
    S: StateMachine + 'static,
    F: Fn(u32) -> S,
{
    let config = &setup.config;
    let options = match &setup.storage {
        Storage::Wal => {
            let dir = config.data_dir.join(format!("shard-{shard_id}"));
            let mut wal_config = wal::WalConfig::new(dir, config.cluster_id, config.node_id);
            let batch_limit = config.limits.batch_bytes_max + WAL_BATCH_HEADROOM;
            wal_config.batch_bytes_max = batch_limit;
            wal_config.snapshot_write_rate = config.snapshot_write_rate;
            if config.snapshot_log_bytes > 0 {
                wal_config.snapshot_log_slack = config.shard_snapshot_log_bytes() / 2;
            }
            wal_config.write_bytes_max = wal_config.write_bytes_max.max(batch_limit);
            wal_config.recovery_payload_bytes = config.shard_log_memory_bytes();
            LogOptions::Wal(Box::new(wal_config))
        }
        Storage::Memory(disks) => LogOptions::Memory(disks.disk(config.node_id, shard_id)),
    };
    let ctx = ShardContext {
        shard_id,
        shards: config.shards,
        node_id: config.node_id,
        core,
        peer_addr: config.peer_addr,
        client_addr: config.client_addr,
        read_consistency_default: config.read_consistency,
        forward_writes: config.forward_writes,
        command_bytes_max: command_bytes_max(config),
        balance_leaders: config.shards > 1,
        nonce_salt: rand::random(),
        learned_addresses: setup.learned_addresses.clone(),
        history: setup.security.history(),
        tick_interval: config.timing.tick_interval,
        said_hold: setup.said_hold.clone(),
    };
    let fail = |source| ServeError::Shard(crate::shard::ShardError::Wal { shard: shard_id, source });
    let (log, recovered, state) =
        open_log(options, || (setup.make_app)(shard_id), config.witness).await.map_err(fail)?;
    let mut engine_config = config.engine_config(bootstrap_voters(setup, &recovered));
    engine_config.seed = config.node_id.wrapping_mul(1_000_003) ^ u64::from(shard_id) ^ rand::random::<u64>();
    if let Some(damage) = log.recovery_damage() {
        tracing::warn!(shard = shard_id, %damage, "storage damage found (the log cut before it, or the hard state unreadable): repairing from the peers");
    }
    let (snapshot_sender, snapshot_receiver) = mpsc::unbounded_channel();
    let storage = LogStorage::new(Rc::new(log), shard_id, snapshot_sender);
    let transport = NodeTransport { shard_id, peers };
    let recovered = RecoveredShard { recovered };
    let shard = Shard::new(ctx, engine_config, recovered, state, storage, transport, SystemClock)?;
    let tick = config.timing.tick_interval;
    Ok(tokio_uring::spawn(run_shard(shard, inbox, snapshot_receiver, tick, setup.shutdown.clone())))
}

/// Opens a shard's log with the state machine it starts with: a log
/// beyond its payload budget is applied as it is read, not read again
/// afterwards (see [`RecoveringState`]; a witness applies no payload).
async fn open_log<S: StateMachine>(
    options: LogOptions,
    make_app: impl Fn() -> S,
    witness: bool,
) -> Result<(NodeLog, engine::Recovered, RecoveringState<S>), wal::WalError> {
    match options {
        LogOptions::Wal(wal_config) if wal_config.recovery_payload_bytes > 0 && !witness => {
            let dir = wal_config.dir.clone();
            let opener: SnapshotOpener = Box::new(move || wal::snapshot::open_checked(&dir));
            let mut state = RecoveringState::new(make_app(), make_app(), opener);
            let (log, recovered) = wal::Wal::open_applying(*wal_config, Some(&mut state)).await?;
            Ok((NodeLog::Wal(log), recovered, state))
        }
        options => {
            let (log, recovered) = NodeLog::open(options).await?;
            Ok((log, recovered, RecoveringState::from(make_app())))
        }
    }
}

/// The voters a shard starts from before its log's configuration entries
/// apply. A joining node bootstraps nothing: it learns the membership from
/// the leader's log. Nor does a node whose log already records the
/// membership (a snapshot, or the first entry, which the first leader of a
/// cluster writes with the bootstrap membership): the members it is given
/// now (`--peers`, or DNS, whose answer changes over time) must not add
/// voters to what the log says, or its quorums would count nodes the
/// others do not.
fn bootstrap_voters<F>(setup: &NodeSetup<F>, recovered: &engine::Recovered) -> Vec<NodeId> {
    let recorded = recovered.snapshot.is_some()
        || recovered.entries.first().is_some_and(|entry| entry.index == 1 && entry.kind == engine::EntryKind::Config);
    if setup.config.join || recorded {
        return Vec::new();
    }
    setup.members.iter().map(|member| member.id).collect()
}

/// Routes what arrives at a core to its shards until shutdown: Raft
/// messages and client requests from the network, requests from other
/// cores and from handles; points the core's link to a member that moved
/// at its new address.
async fn dispatch<F>(
    setup: &NodeSetup<F>,
    inbound: &mut InboundReceiver,
    queues: &mut CoreQueues,
    peers: &PeerNet,
    mut from_hub: Option<&mut mpsc::Receiver<HubMessage>>,
    inboxes: &HashMap<u32, mpsc::Sender<ShardEvent>>,
) {
    let mut ticker = tokio::time::interval(SHUTDOWN_POLL);
    let mut listening = true;
    let mut watching = true;
    let mut misrouted = Misrouted::default();
    loop {
        tokio::select! {
            event = inbound.recv(), if listening => {
                match event {
                    Some(event) => {
                        // A peer heard from is up: our link to it, if down,
                        // need not wait out its backoff to answer.
                        if let (Inbound::Raft { from_node, .. }, PeerNet::Tcp(peers)) = (&event, peers) {
                            peers.peer_is_up(*from_node);
                        }
                        route(event, setup, inboxes, &mut misrouted)
                    }
                    // No listeners (an in-process node): only the hub.
                    None => listening = false,
                }
            }
            Some(HubMessage { shard_id, message }) = recv_hub(&mut from_hub) => {
                if let Some(inbox) = inboxes.get(&shard_id) {
                    // A full inbox drops the message: Raft resends.
                    let _ = inbox.try_send(ShardEvent::Raft(message));
                }
            }
            member = queues.moved.recv(), if watching => {
                match (member, peers) {
                    (Some(member), PeerNet::Tcp(peers)) => peers.ensure(member.id, member.addr),
                    (Some(_), PeerNet::Local { .. }) => {}
                    // No DNS or witness watch (static members): nothing more comes.
                    (None, _) => watching = false,
                }
            }
            request = queues.forwarded.recv() => {
                let Some(Forwarded { shard_id, request, caller, reply, arrived }) = request else { continue };
                deliver(inboxes, shard_id, request, caller, Replier::Forwarded(reply), arrived);
            }
            _ = ticker.tick() => {
                if setup.shutdown.load(Ordering::Relaxed) {
                    break;
                }
            }
        }
    }
}

/// The next message from the hub, or never when the core has no hub.
async fn recv_hub(from_hub: &mut Option<&mut mpsc::Receiver<HubMessage>>) -> Option<HubMessage> {
    match from_hub {
        Some(receiver) => receiver.recv().await,
        None => std::future::pending().await,
    }
}

/// Raft messages this core got for shards it does not run, and when it
/// last said so.
#[derive(Default)]
struct Misrouted {
    count: u64,
    logged_at: Option<Instant>,
}

/// How often a core logs the Raft messages it got for shards it does not run.
const MISROUTED_LOG_INTERVAL: Duration = Duration::from_secs(10);

fn route<F>(
    event: Inbound,
    setup: &NodeSetup<F>,
    inboxes: &HashMap<u32, mpsc::Sender<ShardEvent>>,
    misrouted: &mut Misrouted,
) {
    let (cores, forward) = (setup.cores, &setup.forward);
    match event {
        Inbound::Raft { from_node, shard_id, message } => match inboxes.get(&shard_id) {
            // A full inbox drops the message: Raft resends.
            Some(inbox) => drop(inbox.try_send(ShardEvent::Raft(message))),
            None => {
                // Core k of a peer sends a shard's messages to core k here:
                // a shard that is not on this core means the peer runs
                // another number of cores or shards, and those shards never
                // replicate between the two. Say so, loudly but not for
                // every message.
                misrouted.count += 1;
                let now = Instant::now();
                if misrouted.logged_at.is_none_or(|at| now.duration_since(at) >= MISROUTED_LOG_INTERVAL) {
                    misrouted.logged_at = Some(now);
                    // A default core count differs between machines with
                    // different CPU counts: say which this one is, or
                    // "the same --cores" misleads a user who never gave it.
                    let cores_from = match setup.config.core_threads {
                        Some(_) => "given with --cores",
                        None => {
                            "the default, the smaller of --shards and this machine's CPUs: give --cores on \
                                 every node when their machines differ in CPUs"
                        }
                    };
                    tracing::error!(
                        peer = from_node,
                        shard = shard_id,
                        messages = misrouted.count,
                        cores,
                        cores_from,
                        shards = setup.config.shards,
                        "a peer sent Raft messages for a shard this core does not run: every node must run the \
                         same --shards and --cores (core k talks to core k of the others); those shards do \
                         not replicate between these nodes"
                    );
                }
            }
        },
        Inbound::Request { shard_id, request, identity, reply } => {
            let arrived = reply.received();
            let caller = Some(identity.user);
            if inboxes.contains_key(&shard_id) {
                deliver(inboxes, shard_id, request, caller, Replier::Local(reply), arrived);
                return;
            }
            let Some(owner) = forward.get(shard_id as usize % cores) else {
                Replier::Local(reply).send(ResponseStatus::BadRequest(format!("no shard {shard_id}")));
                return;
            };
            let (sender, receiver) = oneshot::channel();
            match owner.try_send(Forwarded { shard_id, request, caller, reply: sender, arrived }) {
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
    caller: Option<Arc<str>>,
    reply: Replier,
    arrived: Instant,
) {
    let Some(inbox) = inboxes.get(&shard_id) else {
        reply.send(ResponseStatus::BadRequest(format!("no shard {shard_id} on this node")));
        return;
    };
    if let Err(error) = inbox.try_send(ShardEvent::Request { request, caller, reply, arrived }) {
        let event = match error {
            mpsc::error::TrySendError::Full(event) | mpsc::error::TrySendError::Closed(event) => event,
        };
        if let ShardEvent::Request { reply, .. } = event {
            reply.send(ResponseStatus::Busy);
        }
    }
}
