//! The load driver: connections to the cluster, the closed and open loops,
//! leader discovery, client sessions and recording.
//!
//! Each worker thread runs one tokio-uring runtime (everything there is
//! `!Send`) and a share of the connections. A connection targets one shard;
//! it starts at any node and follows `NotLeader` answers to the leader that
//! they name. Each connection is two tasks, a sender and a receiver, so that
//! many requests are in flight at once (pipelining, matched by request id):
//!
//! - closed loop: a connection keeps its share of the in-flight requests
//!   outstanding; a new request goes out when an answer comes back;
//! - open loop: requests go out on a fixed schedule ([`crate::schedule`])
//!   whatever the answers do, and latency is measured from each request's
//!   intended send time.
//!
//! Writes are exactly-once: each connection slot opens a session through the
//! log (the cluster assigns its id) and pipelines its writes in it, each
//! with the next sequence and the lowest sequence still awaited as its
//! acknowledgement (`net::session`); the session outlives reconnections and
//! leader changes, and is closed when the run ends. Reads carry none.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use net::kv::KvResponse;
use net::session::{OpenedSession, Session};
use net::{
    ClientConfig, ClientConnection, ClientReceiver, ClientRequest, ClientSender, ClientTls, ClientTlsFiles,
    RequestBody, ResponseStatus,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, Semaphore};

use crate::progress::{watch, Live, ProgressStyleKind};
use crate::result::ResultFile;
use crate::schedule::Schedule;
use crate::signal;
use crate::stats::{duration_nanos, HistogramError, OpKind, Recorder};
use crate::workload::{Distribution, KeyChooser, Workload, WorkloadConfig, WorkloadError};

/// Requests encoded into one write at most: enough to amortize the system
/// call, small enough that the first request of a batch is not held back.
const SEND_BATCH_MAX: usize = 64;
/// How long the last answers may take after the measured window ends.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause before reconnecting after a failure, doubled up to the maximum.
const RECONNECT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const RECONNECT_BACKOFF_MAX: Duration = Duration::from_millis(500);
/// How often a run asks the cluster for its members again: a run given one
/// node of a cluster whose address book was not yet complete (members
/// announce their client addresses once a leader exists), or whose
/// membership changed, would otherwise know too few nodes to go on when
/// those it knows fail.
const RELEARN_EVERY: Duration = Duration::from_secs(1);
/// A request refused `busy` is sent again after this long times its tries
/// so far (at most [`BUSY_RETRY_PAUSE_MAX`]): the node sheds load, so the
/// retry must not come straight back.
const BUSY_RETRY_PAUSE: Duration = Duration::from_millis(1);
const BUSY_RETRY_PAUSE_MAX: Duration = Duration::from_millis(20);

/// How fresh reads must be (the wire's [`net::ReadConsistency`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Consistency {
    /// ReadIndex at the leader.
    Linearizable,
    /// The leader's lease.
    Lease,
    /// Whatever the contacted node has applied.
    Stale,
}

impl From<Consistency> for net::ReadConsistency {
    fn from(consistency: Consistency) -> net::ReadConsistency {
        match consistency {
            Consistency::Linearizable => net::ReadConsistency::Linearizable,
            Consistency::Lease => net::ReadConsistency::Lease,
            Consistency::Stale => net::ReadConsistency::Stale,
        }
    }
}

/// How requests are paced.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum LoadMode {
    /// `inflight` requests outstanding at all times, over all connections.
    Closed { inflight: usize },
    /// `rate` requests per second over all connections, at most
    /// `inflight_max` outstanding (beyond it, sending waits, and the wait
    /// counts in the latency).
    Open { rate: f64, inflight_max: usize },
}

/// Everything that defines a run, as recorded in its result file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunSettings {
    /// Client addresses of the nodes to start from (`host:port`).
    pub addrs: Vec<String>,
    pub cluster_id: u64,
    pub connections: usize,
    pub threads: usize,
    pub load: LoadMode,
    pub workload: WorkloadConfig,
    pub consistency: Consistency,
    pub duration_s: f64,
    pub warmup_s: f64,
    /// The shards the connections target, round robin; empty: every shard
    /// of the cluster (its count is learnt from the nodes). Each connection
    /// sends only keys its shard owns (`net::kv::shard_for_key`).
    pub shards: Vec<u32>,
    /// A connection with requests in flight and no answer for this long is
    /// dropped and its requests counted as `timeout`.
    pub request_timeout_s: f64,
    pub seed: u64,
}

impl RunSettings {
    /// A small valid configuration, for tests and as a template.
    pub fn example() -> RunSettings {
        RunSettings {
            addrs: vec!["127.0.0.1:7101".into()],
            cluster_id: 1,
            connections: 4,
            threads: 1,
            load: LoadMode::Closed { inflight: 16 },
            workload: WorkloadConfig {
                keys: 100_000,
                distribution: Distribution::Uniform,
                read_fraction: 0.0,
                value_size: 256,
            },
            consistency: Consistency::Linearizable,
            duration_s: 5.0,
            warmup_s: 1.0,
            shards: Vec::new(),
            request_timeout_s: 10.0,
            seed: 1,
        }
    }

    /// Checks the settings and fixes up what has one obvious meaning (fewer
    /// in-flight requests than connections: fewer connections).
    pub fn validate(&mut self) -> Result<(), RunError> {
        self.workload.validate()?;
        let bad = |reason: &str| Err(RunError::Settings(reason.to_string()));
        if self.addrs.is_empty() {
            return bad("give at least one node address");
        }
        if self.connections == 0 || self.threads == 0 {
            return bad("connections and threads must be at least 1");
        }
        let positive = |seconds: f64| seconds > 0.0 && seconds.is_finite();
        if !positive(self.duration_s) || !(positive(self.warmup_s) || self.warmup_s == 0.0) {
            return bad("the duration must be positive and the warm-up not negative");
        }
        if !positive(self.request_timeout_s) {
            return bad("the request timeout must be positive");
        }
        match self.load {
            LoadMode::Closed { inflight: 0 } => return bad("in-flight requests must be at least 1"),
            LoadMode::Closed { inflight } => self.connections = self.connections.min(inflight),
            LoadMode::Open { rate, .. } if !(rate > 0.0 && rate.is_finite()) => {
                return bad("the rate must be positive")
            }
            LoadMode::Open { inflight_max, .. } if inflight_max < self.connections => {
                return bad("--inflight-max must be at least the number of connections")
            }
            LoadMode::Open { .. } => {}
        }
        self.threads = self.threads.min(self.connections);
        Ok(())
    }
}

/// Why a run could not be made.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("bad settings: {0}")]
    Settings(String),
    #[error("TLS credentials: {0}")]
    Tls(String),
    #[error(transparent)]
    Workload(#[from] WorkloadError),
    #[error("cannot resolve the node address {addr}: {reason}")]
    Resolve { addr: String, reason: String },
    #[error("io_uring is not available here ({0}); the client needs it (a container's seccomp profile may block it)")]
    IoUringUnavailable(std::io::Error),
    #[error("a worker thread panicked; see the message above")]
    WorkerPanicked,
    /// No given node answered the first question (each one's reason).
    #[error("no node answered to say how many shards the cluster has: {0}")]
    Unreachable(String),
    #[error(transparent)]
    Histogram(#[from] HistogramError),
}

/// A run to make.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub settings: RunSettings,
    /// A per-user or shared token; empty when a client certificate
    /// authenticates.
    pub token: Bytes,
    /// Connect with TLS: the node CA, and a client certificate unless the
    /// token authenticates.
    pub tls: Option<ClientTlsFiles>,
    /// The run's name in tables and plots.
    pub label: String,
    pub progress: ProgressStyleKind,
    /// Ask each node for its status before the run and its stats after it,
    /// and keep the answers in the result.
    pub fetch_status: bool,
}

/// Resolves `host:port`.
pub fn resolve(addr: &str) -> Result<SocketAddr, RunError> {
    if let Ok(parsed) = addr.parse() {
        return Ok(parsed);
    }
    let resolve_error = |reason: String| RunError::Resolve { addr: addr.to_string(), reason };
    addr.to_socket_addrs()
        .map_err(|error| resolve_error(error.to_string()))?
        .next()
        .ok_or_else(|| resolve_error("no address found".into()))
}

/// Checks that this process may use io_uring, since `tokio_uring::start`
/// panics without it.
pub fn check_io_uring() -> Result<(), RunError> {
    // struct io_uring_params is 120 bytes; zeroed means "defaults".
    let mut params = [0u8; 120];
    // SAFETY: io_uring_setup writes at most sizeof(io_uring_params) bytes
    // into params, which is that large.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 1u32, params.as_mut_ptr()) };
    if fd < 0 {
        return Err(RunError::IoUringUnavailable(std::io::Error::last_os_error()));
    }
    // SAFETY: fd is the ring we just opened and nothing else holds it.
    unsafe { libc::close(fd as libc::c_int) };
    Ok(())
}

/// The client configuration of a run: TLS files and token.
fn client_config(options: &RunOptions) -> Result<ClientConfig, RunError> {
    let cluster_id = options.settings.cluster_id;
    let mut config = match &options.tls {
        Some(files) => {
            let tls = ClientTls::load(cluster_id, files).map_err(|error| match files.option_of(&error) {
                Some(option) => RunError::Tls(format!("{option}: {error}")),
                None => RunError::Tls(error.to_string()),
            })?;
            ClientConfig::with_tls(cluster_id, tls, options.token.clone())
        }
        None => ClientConfig::new(cluster_id, options.token.clone()),
    };
    config.connect_timeout = Duration::from_secs(2);
    Ok(config)
}

/// The client addresses of every member of the cluster (the given ones
/// first), as a run learns them: the run drives all of them, so
/// `--node-pids auto` measures all of them (it measured the `--addr` nodes
/// only, and a run given one address reported a third of the CPU).
pub fn member_addrs(options: &RunOptions) -> Result<Vec<String>, RunError> {
    let addrs = options.settings.addrs.iter().map(|addr| resolve(addr)).collect::<Result<Vec<_>, _>>()?;
    let (_, members) = cluster_shards_and_members(&addrs, &client_config(options)?)?;
    Ok(members.iter().map(ToString::to_string).collect())
}

/// Makes one run and returns its result (also when stopped early by a
/// signal: the measured window is then shorter).
pub fn run(options: &RunOptions) -> Result<ResultFile, RunError> {
    let mut settings = options.settings.clone();
    settings.validate()?;
    check_io_uring()?;
    let addrs = settings.addrs.iter().map(|addr| resolve(addr)).collect::<Result<Vec<_>, _>>()?;
    let client_config = client_config(options)?;
    let (total_shards, connect_to) = cluster_shards_and_members(&addrs, &client_config)?;
    if settings.shards.is_empty() {
        settings.shards = (0..total_shards).collect();
    }
    if let Some(shard) = settings.shards.iter().find(|&&shard| shard >= total_shards) {
        return Err(RunError::Settings(format!("shard {shard} does not exist: the cluster has {total_shards}")));
    }
    let ask = {
        let (names, addrs, shards, config) =
            (settings.addrs.clone(), addrs.clone(), settings.shards.clone(), client_config.clone());
        move |body: RequestBody| fetch_json(&names, &addrs, &shards, &config, body, Duration::from_secs(2))
    };
    let cluster = options.fetch_status.then(|| ask(RequestBody::Status));
    let keys = KeyChooser::new(settings.workload.keys, settings.workload.distribution)?;

    let shared = Arc::new(Shared {
        settings: settings.clone(),
        total_shards,
        client_config,
        addrs: Mutex::new(connect_to),
        keys,
        window: Window::new(&settings),
        leaders: Mutex::new(HashMap::new()),
        node_addrs: Mutex::new(HashMap::new()),
    });
    let finished = run_workers(&shared, &shared.settings, &shared.window, options, "bench-worker", connection)?;
    let mut result = finished.result(options, settings, cluster)?;
    // The nodes' own counters and per-stage latencies, which explain where
    // the time of this run (and those before it on the same cluster) went.
    result.cluster_stats = options.fetch_status.then(|| ask(RequestBody::Admin(net::AdminRequest::Stats)));
    Ok(result)
}

/// What every worker thread reads.
struct Shared {
    settings: RunSettings,
    /// The cluster's shard count.
    total_shards: u32,
    client_config: ClientConfig,
    /// The nodes to connect to: those given, then the members the first
    /// that answered listed, then those learnt since ([`learn_members`]).
    addrs: Mutex<Vec<SocketAddr>>,
    keys: KeyChooser,
    window: Window,
    /// The leader each shard is believed to have, learnt from `NotLeader`.
    leaders: Mutex<HashMap<u32, SocketAddr>>,
    /// Node ids, from handshakes, to the addresses they answered on: a
    /// `NotLeader` that names the leader's id but not its address still
    /// leads somewhere.
    node_addrs: Mutex<HashMap<engine::NodeId, SocketAddr>>,
}

impl Shared {
    fn leader(&self, shard: u32) -> Option<SocketAddr> {
        self.leaders.lock().expect("not poisoned").get(&shard).copied()
    }

    fn set_leader(&self, shard: u32, leader: SocketAddr) {
        self.leaders.lock().expect("not poisoned").insert(shard, leader);
    }

    /// Forgets the leader of `shard` if it is still believed to be at
    /// `addr` (another connection may have learnt better meanwhile).
    fn forget_leader(&self, shard: u32, addr: SocketAddr) {
        let mut leaders = self.leaders.lock().expect("not poisoned");
        if leaders.get(&shard) == Some(&addr) {
            leaders.remove(&shard);
        }
    }

    /// The `index`th node to connect to, counting round the known nodes.
    fn addr(&self, index: usize) -> SocketAddr {
        let addrs = self.addrs.lock().expect("not poisoned");
        addrs[index % addrs.len()]
    }

    /// Adds the members not known yet to the nodes to connect to.
    fn add_addrs(&self, members: Vec<SocketAddr>) {
        let mut addrs = self.addrs.lock().expect("not poisoned");
        for member in members {
            if !addrs.contains(&member) {
                addrs.push(member);
            }
        }
    }

    fn node_addr(&self, id: engine::NodeId) -> Option<SocketAddr> {
        self.node_addrs.lock().expect("not poisoned").get(&id).copied()
    }

    fn stopping(&self) -> bool {
        self.window.stopping()
    }
}

/// When a run's load starts, when its measured window begins and when no
/// request is intended any more, with the live counters: what the worker
/// threads of both runners (this one and [`crate::resp_runner`]) share
/// besides their protocol's own state.
pub(crate) struct Window {
    pub start: Instant,
    /// Answers to requests intended before this are warm-up.
    pub warmup_end: Instant,
    /// No request is intended at or after this.
    pub end: Instant,
    pub live: Live,
}

impl Window {
    /// The window of a run with `settings` starting in 20 ms (the threads'
    /// start-up).
    pub fn new(settings: &RunSettings) -> Window {
        let start = Instant::now() + Duration::from_millis(20);
        let warmup_end = start + Duration::from_secs_f64(settings.warmup_s);
        let end = warmup_end + Duration::from_secs_f64(settings.duration_s);
        Window { start, warmup_end, end, live: Live::default() }
    }

    /// The run is over (its time is up, or a signal asked it to stop).
    pub fn stopping(&self) -> bool {
        signal::stop_requested() || Instant::now() >= self.end
    }

    /// Counts an error of kind `kind` of a request intended at `intended`
    /// (see [`Window::errors`]).
    pub fn error(&self, recorder: &RefCell<Recorder>, intended: Instant, kind: &str, example: impl FnOnce() -> String) {
        self.errors(recorder, intended, kind, 1, example);
    }

    /// Counts `count` errors of kind `kind` of requests intended at
    /// `intended`: as warm-up errors before the measured window, else with
    /// an example.
    pub fn errors(
        &self,
        recorder: &RefCell<Recorder>,
        intended: Instant,
        kind: &str,
        count: u64,
        example: impl FnOnce() -> String,
    ) {
        if count == 0 {
            return;
        }
        self.live.errors.fetch_add(count, std::sync::atomic::Ordering::Relaxed);
        let mut recorder = recorder.borrow_mut();
        if intended >= self.warmup_end {
            recorder.errors_n(kind, count, example);
        } else {
            *recorder.warmup_errors.entry(kind.to_string()).or_default() += count;
        }
    }
}

/// What the worker threads of a run recorded, and when.
pub(crate) struct Finished {
    pub recorder: Recorder,
    pub timeline: Vec<crate::progress::TimelinePoint>,
    /// The measured window's length (shorter when stopped early).
    pub measured: Duration,
    /// When the measured window began, by the wall clock.
    pub started_at: SystemTime,
}

impl Finished {
    /// The run's result file, before the runner adds what is its own.
    pub fn result(
        &self,
        options: &RunOptions,
        settings: RunSettings,
        cluster: Option<serde_json::Value>,
    ) -> Result<ResultFile, RunError> {
        let mut result =
            ResultFile::new(options.label.clone(), settings, cluster, &self.recorder, self.measured, self.started_at)?;
        result.timeline = self.timeline.clone();
        Ok(result)
    }
}

/// Runs `connection` once per planned connection of `settings`, given
/// `shared`, over `settings.threads` worker threads (each its own io_uring runtime,
/// threads named `NAME-K`), shows the run's progress until they are done,
/// and merges what they recorded.
pub(crate) fn run_workers<S, C, F>(
    shared: &Arc<S>,
    settings: &RunSettings,
    window: &Window,
    options: &RunOptions,
    name: &str,
    connection: C,
) -> Result<Finished, RunError>
where
    S: Send + Sync + 'static,
    C: Fn(Arc<S>, ConnectionPlan, Rc<RefCell<Recorder>>) -> F + Copy + Send + 'static,
    F: std::future::Future<Output = ()> + 'static,
{
    let mut per_thread: Vec<Vec<ConnectionPlan>> = vec![Vec::new(); settings.threads];
    for plan in plan_connections(settings) {
        per_thread[plan.index % settings.threads].push(plan);
    }
    let workers: Vec<_> = per_thread
        .into_iter()
        .enumerate()
        .map(|(thread, plans)| {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("{name}-{thread}"))
                .spawn(move || net::runtime::start_runtime(worker(shared, plans, connection)))
                .expect("spawn a worker thread")
        })
        .collect();
    let warmup = window.warmup_end.saturating_duration_since(window.start);
    let duration = window.end.saturating_duration_since(window.warmup_end);
    let started_at = SystemTime::now() + warmup;
    let timeline = watch(&window.live, options.progress, &options.label, window.start, warmup, duration, || {
        workers.iter().all(|worker| worker.is_finished())
    });
    let stopped = Instant::now().min(window.end);
    let mut recorder = Recorder::default();
    for worker in workers {
        recorder.merge(worker.join().map_err(|_| RunError::WorkerPanicked)?);
    }
    let measured = stopped.saturating_duration_since(window.warmup_end).max(Duration::from_millis(1));
    Ok(Finished { recorder, timeline, measured, started_at })
}

/// One worker thread: its connections' tasks until they end, and what they
/// recorded.
async fn worker<S, C, F>(shared: Arc<S>, plans: Vec<ConnectionPlan>, connection: C) -> Recorder
where
    C: Fn(Arc<S>, ConnectionPlan, Rc<RefCell<Recorder>>) -> F,
    F: std::future::Future<Output = ()> + 'static,
{
    let recorder = Rc::new(RefCell::new(Recorder::default()));
    let tasks: Vec<_> =
        plans.into_iter().map(|plan| tokio_uring::spawn(connection(shared.clone(), plan, recorder.clone()))).collect();
    for task in tasks {
        task.await.expect("connection tasks do not panic");
    }
    Rc::try_unwrap(recorder).map(RefCell::into_inner).unwrap_or_else(|shared| shared.borrow().clone())
}

/// One connection's part of the load.
#[derive(Clone, Debug, PartialEq)]
pub struct ConnectionPlan {
    pub index: usize,
    pub shard: u32,
    /// Requests this connection keeps in flight (closed) or at most (open).
    pub inflight: usize,
    /// The open loop's schedule.
    pub schedule: Option<Schedule>,
}

/// Splits the load over the connections: in-flight requests as evenly as
/// possible, shards round robin, the open loop's rate interleaved.
pub fn plan_connections(settings: &RunSettings) -> Vec<ConnectionPlan> {
    let connections = settings.connections;
    let share = |total: usize, index: usize| total / connections + usize::from(index < total % connections);
    (0..connections)
        .map(|index| {
            let (inflight, schedule) = match settings.load {
                LoadMode::Closed { inflight } => (share(inflight, index), None),
                LoadMode::Open { rate, inflight_max } => {
                    (share(inflight_max, index), Some(Schedule::new(rate, connections, index)))
                }
            };
            let shard = match settings.shards.len() {
                0 => 0,
                count => settings.shards[index % count],
            };
            ConnectionPlan { index, shard, inflight, schedule }
        })
        .collect()
}

/// A request waiting for its answer.
struct Pending {
    op: OpKind,
    intended: Instant,
    sent: Instant,
    /// A write's session and sequence.
    write: Option<(u64, u64)>,
    /// What was asked, to ask again after a refusal.
    body: RequestBody,
    /// Times it was refused and sent again.
    retries: u32,
}

/// A refused request waiting to be sent again (see [`retry_pause`]).
struct Retry {
    pending: Pending,
    due: Instant,
}

/// Why a connection's drive ended.
#[derive(Clone, Debug, PartialEq)]
enum Outcome {
    /// The run is over.
    Finished,
    /// The node named another leader.
    Redirect(SocketAddr),
    /// The node knows no leader (an election is going on).
    LeaderUnknown,
    /// The connection broke or stopped answering.
    Broken,
    /// The slot's session expired: open another on the next connection.
    SessionLost,
}

/// State shared by one connection's sender and receiver.
struct Conn {
    inflight: HashMap<u64, Pending>,
    next_request_id: u64,
    /// Set when the connection must stop sending.
    outcome: Option<Outcome>,
    sender_done: bool,
}

/// What lives across reconnections of one connection slot.
struct Slot {
    workload: Workload,
    /// The slot's exactly-once session, once opened.
    session: Option<Session>,
    /// The open loop's next request number.
    next_scheduled: u64,
    /// Refused requests to send again, on this connection or the next.
    retries: VecDeque<Retry>,
}

impl Slot {
    /// Write `sequence` of session `client_id` got its answer, or will get
    /// none (a lost connection: it is never retried, so its answer need
    /// not be kept).
    fn finish(&mut self, client_id: u64, sequence: u64) {
        if let Some(session) = self.session.as_mut().filter(|session| session.client_id() == client_id) {
            session.finish(sequence);
        }
    }
}

async fn connection(shared: Arc<Shared>, plan: ConnectionPlan, recorder: Rc<RefCell<Recorder>>) {
    let seed = shared.settings.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(plan.index as u64);
    let slot = Rc::new(RefCell::new(Slot {
        workload: Workload::new(&shared.settings.workload, shared.keys.clone(), seed)
            .routed(plan.shard, shared.total_shards),
        session: None,
        next_scheduled: 0,
        retries: VecDeque::new(),
    }));
    if plan.index == 0 {
        tokio_uring::spawn(learn_members(shared.clone()));
    }
    let mut next_addr = plan.index;
    let mut backoff = RECONNECT_BACKOFF_MIN;
    while !shared.stopping() {
        let addr = shared.leader(plan.shard).unwrap_or_else(|| shared.addr(next_addr));
        let mut connection = match ClientConnection::connect(addr, &shared.client_config).await {
            Ok(connection) => connection,
            Err(error) => {
                shared.window.error(&recorder, Instant::now(), "connect", || format!("{addr}: {error}"));
                shared.forget_leader(plan.shard, addr);
                next_addr = next_addr.wrapping_add(1);
                pause(&shared, backoff).await;
                backoff = (backoff * 2).min(RECONNECT_BACKOFF_MAX);
                continue;
            }
        };
        shared.node_addrs.lock().expect("not poisoned").entry(connection.server_node_id()).or_insert(addr);
        if slot.borrow().session.is_none() && shared.settings.workload.read_fraction < 1.0 {
            match open_session(&shared, &plan, &mut connection).await {
                Ok(session) => slot.borrow_mut().session = Some(session),
                Err(outcome) => {
                    match outcome {
                        Outcome::Redirect(leader) => shared.set_leader(plan.shard, leader),
                        _ => {
                            shared.forget_leader(plan.shard, addr);
                            next_addr = next_addr.wrapping_add(1);
                        }
                    }
                    pause(&shared, backoff).await;
                    backoff = (backoff * 2).min(RECONNECT_BACKOFF_MAX);
                    continue;
                }
            }
        }
        match drive(&shared, &plan, &slot, &recorder, connection).await {
            Outcome::Finished => break,
            Outcome::Redirect(leader) => {
                backoff = RECONNECT_BACKOFF_MIN;
                if leader == addr {
                    // The node names itself yet refused: give it a moment.
                    pause(&shared, RECONNECT_BACKOFF_MIN).await;
                }
                shared.set_leader(plan.shard, leader);
            }
            Outcome::LeaderUnknown => {
                shared.forget_leader(plan.shard, addr);
                next_addr = next_addr.wrapping_add(1);
                pause(&shared, Duration::from_millis(20)).await;
            }
            Outcome::Broken => {
                shared.forget_leader(plan.shard, addr);
                next_addr = next_addr.wrapping_add(1);
                pause(&shared, backoff).await;
                backoff = (backoff * 2).min(RECONNECT_BACKOFF_MAX);
            }
            Outcome::SessionLost => slot.borrow_mut().session = None,
        }
    }
    let unsent: Vec<Retry> = slot.borrow_mut().retries.drain(..).collect();
    for retry in unsent {
        shared.window.error(&recorder, retry.pending.intended, "unanswered", || {
            "refused, and the run ended before it was sent again".to_string()
        });
    }
    let session = slot.borrow_mut().session.take();
    if let Some(session) = session {
        close_session(&shared, &plan, session).await;
    }
}

/// How long a request refused with `status` waits before it is sent again,
/// or `None` when it is not retried: only refusals that say the request was
/// not taken (`not_leader`: to the leader, on the next connection; `busy`:
/// after a pause) and only while the run and the request's timeout last. A
/// write goes again under its session sequence, so it applies at most once
/// even if the refusing leader had proposed it before it stepped down.
fn retry_pause(
    status: &ResponseStatus,
    pending: &Pending,
    now: Instant,
    timeout: Duration,
    end: Instant,
) -> Option<Duration> {
    let pause = match status {
        ResponseStatus::NotLeader { .. } => Duration::ZERO,
        ResponseStatus::Busy => (BUSY_RETRY_PAUSE * (pending.retries + 1)).min(BUSY_RETRY_PAUSE_MAX),
        _ => return None,
    };
    (now + pause < end && now + pause < pending.intended + timeout).then_some(pause)
}

/// How long opening or closing a session may take.
const SESSION_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens the slot's session through the leader this connection reached.
async fn open_session(
    shared: &Shared,
    plan: &ConnectionPlan,
    connection: &mut ClientConnection,
) -> Result<Session, Outcome> {
    let request = ClientRequest::plain(0, RequestBody::OpenSession);
    let answer = tokio::time::timeout(SESSION_CALL_TIMEOUT, connection.call(plan.shard, &request)).await;
    match answer {
        Ok(Ok(response)) => match response.status {
            ResponseStatus::Ok(bytes) => OpenedSession::decode(&bytes).map(Session::new).map_err(|_| Outcome::Broken),
            ResponseStatus::NotLeader { leader_id, leader_addr } => Err(leader_addr
                .as_deref()
                .and_then(|addr| resolve(addr).ok())
                .or_else(|| leader_id.and_then(|id| shared.node_addr(id)))
                .map_or(Outcome::LeaderUnknown, Outcome::Redirect)),
            _ => Err(Outcome::Broken),
        },
        _ => Err(Outcome::Broken),
    }
}

/// Closes a session at the end of the run, so the cluster forgets it now
/// instead of at its timeout (best effort: the leader if known).
async fn close_session(shared: &Shared, plan: &ConnectionPlan, session: Session) {
    let addr = shared.leader(plan.shard).unwrap_or_else(|| shared.addr(plan.index));
    let close = async {
        let mut connection = ClientConnection::connect(addr, &shared.client_config).await.ok()?;
        let request = ClientRequest {
            request_id: 0,
            client_id: session.client_id(),
            sequence: 0,
            ack: 0,
            body: RequestBody::CloseSession,
        };
        connection.call(plan.shard, &request).await.ok()
    };
    let _ = tokio::time::timeout(SESSION_CALL_TIMEOUT, close).await;
}

/// Asks a node for the cluster's members every [`RELEARN_EVERY`] while the
/// run lasts (the leader of shard 0 if known, else the known nodes in
/// turn, over one connection kept while it works) and adds those not known
/// yet to the nodes the connections try.
async fn learn_members(shared: Arc<Shared>) {
    let mut connection: Option<(SocketAddr, ClientConnection)> = None;
    let mut next = 0usize;
    loop {
        pause(&shared, RELEARN_EVERY).await;
        if shared.stopping() {
            return;
        }
        let addr = shared.leader(0).unwrap_or_else(|| {
            next = next.wrapping_add(1);
            shared.addr(next)
        });
        if connection.as_ref().is_some_and(|(connected, _)| *connected != addr) {
            connection = None;
        }
        let members = tokio::time::timeout(SESSION_CALL_TIMEOUT, async {
            if connection.is_none() {
                connection = Some((addr, ClientConnection::connect(addr, &shared.client_config).await.ok()?));
            }
            let (_, open) = connection.as_mut()?;
            let status = ClientRequest::plain(u64::MAX, RequestBody::Status);
            match open.call(0, &status).await.ok()?.status {
                ResponseStatus::Ok(bytes) => Some(net::session_client::member_client_addrs(&bytes)),
                _ => None,
            }
        })
        .await;
        match members {
            Ok(Some(members)) => shared.add_addrs(members),
            _ => connection = None,
        }
    }
}

/// Sleeps for `pause`, but not past the end of the run.
async fn pause(shared: &Shared, pause: Duration) {
    let until = (Instant::now() + pause).min(shared.window.end);
    tokio::time::sleep_until(until.into()).await;
}

/// Runs the load over one connection until the run ends or the connection
/// must be replaced.
async fn drive(
    shared: &Arc<Shared>,
    plan: &ConnectionPlan,
    slot: &Rc<RefCell<Slot>>,
    recorder: &Rc<RefCell<Recorder>>,
    connection: ClientConnection,
) -> Outcome {
    let (sender, receiver) = connection.split();
    let conn = Rc::new(RefCell::new(Conn {
        inflight: HashMap::with_capacity(plan.inflight),
        next_request_id: 1,
        outcome: None,
        sender_done: false,
    }));
    let permits = Rc::new(Semaphore::new(plan.inflight));
    let wake_sender = Rc::new(Notify::new());
    let wake_receiver = Rc::new(Notify::new());
    let send_task = tokio_uring::spawn(send_loop(
        shared.clone(),
        plan.clone(),
        slot.clone(),
        conn.clone(),
        sender,
        permits.clone(),
        wake_sender.clone(),
        wake_receiver.clone(),
        recorder.clone(),
    ));
    receive_loop(shared, slot, &conn, receiver, &permits, &wake_sender, &wake_receiver, recorder).await;
    wake_sender.notify_one();
    let _sender = send_task.await.expect("the send loop does not panic");
    // Whatever is still in flight will not be answered on this connection.
    let mut conn = conn.borrow_mut();
    let outcome = conn.outcome.clone().unwrap_or(Outcome::Finished);
    let kind = if outcome == Outcome::Finished { "unanswered" } else { "connection_lost" };
    for (_, pending) in conn.inflight.drain() {
        if let Some((client_id, sequence)) = pending.write {
            slot.borrow_mut().finish(client_id, sequence);
        }
        shared.window.error(recorder, pending.intended, kind, || format!("no answer before {outcome:?}"));
    }
    outcome
}

#[allow(clippy::too_many_arguments)]
async fn send_loop(
    shared: Arc<Shared>,
    plan: ConnectionPlan,
    slot: Rc<RefCell<Slot>>,
    conn: Rc<RefCell<Conn>>,
    mut sender: ClientSender,
    permits: Rc<Semaphore>,
    wake_sender: Rc<Notify>,
    wake_receiver: Rc<Notify>,
    recorder: Rc<RefCell<Recorder>>,
) -> ClientSender {
    let consistency = net::ReadConsistency::from(shared.settings.consistency);
    let stop = |conn: &RefCell<Conn>| conn.borrow().outcome.is_some() || signal::stop_requested();
    let mut window_full = false;
    'run: loop {
        if stop(&conn) {
            break;
        }
        // Queue every request that is due and has a permit: refused ones
        // first.
        let now = Instant::now();
        let mut next_due = queue_retries(&shared, &slot, &conn, &mut sender, &permits, &recorder, plan.shard, now);
        while sender.queued() < SEND_BATCH_MAX {
            let intended = match plan.schedule {
                None => now,
                Some(schedule) => shared.window.start + schedule.due(slot.borrow().next_scheduled),
            };
            if intended >= shared.window.end || (plan.schedule.is_none() && now >= shared.window.end) {
                break 'run;
            }
            if let (Some(schedule), true) = (plan.schedule, now >= shared.window.end + DRAIN_TIMEOUT) {
                // Too far behind the schedule to catch up: what was never
                // sent failed, at least as late as now.
                let due = schedule.count_before(shared.window.end - shared.window.start);
                let unsent = due.saturating_sub(slot.borrow().next_scheduled);
                shared.window.live.errors.fetch_add(unsent, std::sync::atomic::Ordering::Relaxed);
                recorder.borrow_mut().errors_n("unsent", unsent, || {
                    format!("the open loop fell more than {DRAIN_TIMEOUT:?} behind its schedule")
                });
                break 'run;
            }
            if intended > now {
                next_due = Some(next_due.map_or(intended, |due: Instant| due.min(intended)));
                break;
            }
            if slot.borrow().session.as_ref().is_some_and(|session| !session.can_start()) {
                // The session's window is full (more writes unanswered than
                // the cluster keeps answers for): wait for the lowest one.
                window_full = true;
                break;
            }
            if !slot.borrow().retries.is_empty() {
                // Refused requests go first: with them, at most `inflight`
                // requests are outstanding, sent or waiting to be sent again.
                break;
            }
            let Ok(permit) = permits.try_acquire() else { break };
            permit.forget();
            let mut slot = slot.borrow_mut();
            let (op, payload) = slot.workload.next_op();
            let (client_id, sequence, ack, body) = match op {
                OpKind::Write => {
                    let Some(session) = slot.session.as_mut() else {
                        conn.borrow_mut().outcome.get_or_insert(Outcome::SessionLost);
                        break 'run;
                    };
                    let sequence = session.start();
                    (session.client_id(), sequence, session.ack(), RequestBody::Write { command: payload })
                }
                OpKind::Read => (0, 0, 0, RequestBody::Read { query: payload, consistency }),
            };
            if plan.schedule.is_some() {
                slot.next_scheduled += 1;
            }
            let mut conn = conn.borrow_mut();
            let request_id = conn.next_request_id;
            conn.next_request_id += 1;
            let request = ClientRequest { request_id, client_id, sequence, ack, body };
            sender.queue(plan.shard, &request);
            let write = (op == OpKind::Write).then_some((client_id, sequence));
            let pending = Pending { op, intended, sent: Instant::now(), write, body: request.body, retries: 0 };
            conn.inflight.insert(request_id, pending);
        }
        if sender.queued() > 0 {
            let flushed = sender.flush().await;
            wake_receiver.notify_one();
            if let Err(error) = flushed {
                shared.window.error(&recorder, Instant::now(), "send", || error.to_string());
                conn.borrow_mut().outcome.get_or_insert(Outcome::Broken);
                break;
            }
            continue;
        }
        // Nothing to send now: wait for the next due time or a free slot.
        if window_full {
            window_full = false;
            let until = shared.window.end;
            tokio::select! {
                _ = wake_sender.notified() => {}
                _ = tokio::time::sleep_until(until.into()) => {}
            }
            continue;
        }
        match next_due {
            Some(due) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(due.into()) => {}
                    _ = wake_sender.notified() => {}
                }
            }
            None => {
                let until = shared.window.end;
                tokio::select! {
                    permit = permits.acquire() => drop(permit),
                    _ = wake_sender.notified() => {}
                    _ = tokio::time::sleep_until(until.into()) => {}
                }
            }
        }
    }
    if sender.queued() > 0 {
        let _ = sender.flush().await;
    }
    conn.borrow_mut().sender_done = true;
    wake_receiver.notify_one();
    sender
}

/// Queues the refused requests that are due (each under a permit), and
/// returns when the next of the others is.
#[allow(clippy::too_many_arguments)]
fn queue_retries(
    shared: &Shared,
    slot: &RefCell<Slot>,
    conn: &RefCell<Conn>,
    sender: &mut ClientSender,
    permits: &Semaphore,
    recorder: &RefCell<Recorder>,
    shard: u32,
    now: Instant,
) -> Option<Instant> {
    while sender.queued() < SEND_BATCH_MAX {
        let due = slot.borrow().retries.front().map(|retry| retry.due)?;
        if due > now {
            return Some(due);
        }
        let Ok(permit) = permits.try_acquire() else { return None };
        permit.forget();
        let mut slot = slot.borrow_mut();
        let Retry { mut pending, .. } = slot.retries.pop_front()?;
        let (client_id, sequence, ack) = match pending.write {
            None => (0, 0, 0),
            Some((client_id, sequence)) => {
                match slot.session.as_ref().filter(|session| session.client_id() == client_id) {
                    Some(session) => (client_id, sequence, session.ack()),
                    None => {
                        // Its session is gone (expired and replaced): it
                        // cannot be sent again safely.
                        permits.add_permits(1);
                        shared.window.error(recorder, pending.intended, "session_expired", || {
                            "refused, then its session expired before it was sent again".to_string()
                        });
                        continue;
                    }
                }
            }
        };
        let mut conn = conn.borrow_mut();
        let request_id = conn.next_request_id;
        conn.next_request_id += 1;
        let request = ClientRequest { request_id, client_id, sequence, ack, body: pending.body };
        sender.queue(shard, &request);
        pending.body = request.body;
        pending.sent = Instant::now();
        pending.retries += 1;
        conn.inflight.insert(request_id, pending);
    }
    None
}

#[allow(clippy::too_many_arguments)]
async fn receive_loop(
    shared: &Arc<Shared>,
    slot: &Rc<RefCell<Slot>>,
    conn: &Rc<RefCell<Conn>>,
    mut receiver: ClientReceiver,
    permits: &Semaphore,
    wake_sender: &Notify,
    wake_receiver: &Notify,
    recorder: &Rc<RefCell<Recorder>>,
) {
    let request_timeout = Duration::from_secs_f64(shared.settings.request_timeout_s);
    loop {
        let (empty, sender_done) = {
            let conn = conn.borrow();
            (conn.inflight.is_empty(), conn.sender_done)
        };
        if empty {
            if sender_done {
                return;
            }
            wake_receiver.notified().await;
            continue;
        }
        let drain_deadline = shared.window.end + DRAIN_TIMEOUT;
        let deadline = (Instant::now() + request_timeout).min(drain_deadline);
        let response = match tokio::time::timeout_at(deadline.into(), receiver.recv()).await {
            Ok(Ok(response)) => response,
            Ok(Err(error)) => {
                shared.window.error(recorder, Instant::now(), "connection", || error.to_string());
                conn.borrow_mut().outcome.get_or_insert(Outcome::Broken);
                return;
            }
            Err(_elapsed) => {
                let mut conn = conn.borrow_mut();
                let past_end = Instant::now() >= shared.window.end;
                let kind = if past_end { "unanswered" } else { "timeout" };
                let pending: Vec<Pending> = conn.inflight.drain().map(|(_, pending)| pending).collect();
                for pending in pending {
                    if let Some((client_id, sequence)) = pending.write {
                        slot.borrow_mut().finish(client_id, sequence);
                    }
                    shared.window.error(recorder, pending.intended, kind, || {
                        format!("no answer within {:?}", deadline.saturating_duration_since(pending.sent))
                    });
                }
                conn.outcome.get_or_insert(if past_end { Outcome::Finished } else { Outcome::Broken });
                return;
            }
        };
        let now = Instant::now();
        let Some(pending) = conn.borrow_mut().inflight.remove(&response.request_id) else {
            shared.window.error(recorder, now, "unknown_request_id", || {
                format!("an answer to request {} that is not in flight", response.request_id)
            });
            continue;
        };
        permits.add_permits(1);
        let retry = retry_pause(&response.status, &pending, now, request_timeout, shared.window.end);
        if let (Some((client_id, sequence)), None) = (pending.write, retry) {
            // Answered (or refused for good): its answer is not needed any
            // more; the window may have room again.
            slot.borrow_mut().finish(client_id, sequence);
            wake_sender.notify_one();
        }
        let mut failure: Option<(&str, String)> = None;
        match response.status {
            ResponseStatus::Ok(answer) => match check_answer(pending.op, &answer) {
                Answer::Done => {
                    shared.window.live.record(duration_nanos(now - pending.intended));
                    let mut recorder = recorder.borrow_mut();
                    if pending.intended >= shared.window.warmup_end {
                        recorder.record(pending.op, now - pending.intended, now - pending.sent);
                    } else {
                        recorder.warmup_completed += 1;
                    }
                }
                Answer::Unexpected(reason) => failure = Some(("unexpected_answer", reason)),
            },
            ResponseStatus::NotLeader { leader_id, leader_addr } => {
                let target = leader_addr
                    .as_deref()
                    .filter(|addr| !addr.is_empty())
                    .and_then(|addr| resolve(addr).ok())
                    .or_else(|| leader_id.and_then(|id| shared.node_addr(id)));
                let outcome = target.map_or(Outcome::LeaderUnknown, Outcome::Redirect);
                failure = Some(("not_leader", format!("leader {leader_id:?} at {leader_addr:?}")));
                conn.borrow_mut().outcome.get_or_insert(outcome);
                wake_sender.notify_one();
            }
            ResponseStatus::Busy => {
                failure = Some(("busy", "the node is overloaded".into()));
                wake_sender.notify_one();
            }
            ResponseStatus::NoSpace => failure = Some(("no_space", "a disk the write needs is full".into())),
            ResponseStatus::TimedOut => failure = Some(("timed_out", "the node timed the request out".into())),
            ResponseStatus::SessionExpired => {
                conn.borrow_mut().outcome.get_or_insert(Outcome::SessionLost);
                wake_sender.notify_one();
                failure = Some(("session_expired", "the cluster no longer knows the session".into()));
            }
            ResponseStatus::SessionFull(reason) => failure = Some(("session_full", reason)),
            ResponseStatus::BadRequest(reason) => failure = Some(("bad_request", reason)),
            ResponseStatus::Forbidden(reason) => failure = Some(("forbidden", reason)),
        }
        match (failure, retry) {
            (Some((kind, _)), Some(pause)) => {
                if pending.intended >= shared.window.warmup_end {
                    *recorder.borrow_mut().retried.entry(kind.to_string()).or_default() += 1;
                }
                slot.borrow_mut().retries.push_back(Retry { pending, due: now + pause });
            }
            (Some((kind, reason)), None) => shared.window.error(recorder, pending.intended, kind, || reason),
            (None, _) => {}
        }
    }
}

/// What an `Ok` answer's bytes say.
#[derive(Debug, PartialEq)]
pub enum Answer {
    Done,
    Unexpected(String),
}

/// Checks the state machine's answer ([`KvResponse`]) to an operation.
pub fn check_answer(op: OpKind, answer: &Bytes) -> Answer {
    match KvResponse::decode(answer) {
        Ok(KvResponse::Written) if op == OpKind::Write => Answer::Done,
        Ok(KvResponse::Value(_)) if op == OpKind::Read => Answer::Done,
        Ok(response) => Answer::Unexpected(format!("a {op} was answered with {response:?}")),
        Err(error) => Answer::Unexpected(format!("a {op} was answered with bytes that do not decode: {error}")),
    }
}

/// The cluster's shard count, as the first node that answers tells it in
/// the handshake (1 when it does not say: an older node), and the nodes to
/// connect to: `addrs` (those given), then the other members' client
/// addresses as that node lists them, so that a run given one node spreads
/// over the cluster and goes on when that node dies.
fn cluster_shards_and_members(addrs: &[SocketAddr], config: &ClientConfig) -> Result<(u32, Vec<SocketAddr>), RunError> {
    let (given, config) = (addrs.to_vec(), config.clone());
    let told = tokio_uring::start(async move {
        let mut failures = Vec::new();
        for addr in given.iter().copied() {
            match ClientConnection::connect(addr, &config).await {
                Ok(mut connection) => {
                    let shards = connection.server_shards().max(1);
                    let status = ClientRequest::plain(u64::MAX, RequestBody::Status);
                    let members = match connection.call(0, &status).await.map(|response| response.status) {
                        Ok(ResponseStatus::Ok(bytes)) => net::session_client::member_client_addrs(&bytes),
                        _ => Vec::new(),
                    };
                    let mut all = given.clone();
                    all.extend(members.into_iter().filter(|member| !given.contains(member)));
                    return Ok((shards, all));
                }
                Err(error) => failures.push(format!("{addr}: {error}")),
            }
        }
        Err(failures.join("; "))
    });
    told.map_err(RunError::Unreachable)
}

/// Asks every node, for every shard in `shards`, the JSON request `body`
/// (status or stats); answers keyed `ADDRESS` (one shard) or
/// `ADDRESS/shard-N`, with `{"error": ...}` where a node did not answer.
pub fn fetch_json(
    names: &[String],
    addrs: &[SocketAddr],
    shards: &[u32],
    config: &ClientConfig,
    body: RequestBody,
    timeout: Duration,
) -> serde_json::Value {
    let answers = tokio_uring::start(async {
        let mut answers = BTreeMap::new();
        for (name, &addr) in names.iter().zip(addrs) {
            for &shard in shards {
                let answer = tokio::time::timeout(timeout, json_of(addr, shard, config, body.clone())).await;
                let value = match answer {
                    Ok(Ok(value)) => value,
                    Ok(Err(reason)) => serde_json::json!({ "error": reason }),
                    Err(_) => serde_json::json!({ "error": "no answer in time" }),
                };
                let key = if shards.len() == 1 { name.clone() } else { format!("{name}/shard-{shard}") };
                answers.insert(key, value);
            }
        }
        answers
    });
    serde_json::to_value(answers).expect("JSON values serialize")
}

async fn json_of(
    addr: SocketAddr,
    shard: u32,
    config: &ClientConfig,
    body: RequestBody,
) -> Result<serde_json::Value, String> {
    let mut connection = ClientConnection::connect(addr, config).await.map_err(|error| error.to_string())?;
    let request = ClientRequest::plain(1, body);
    let response = connection.call(shard, &request).await.map_err(|error| error.to_string())?;
    match response.status {
        ResponseStatus::Ok(json) => serde_json::from_slice(&json)
            .or_else(|_| Ok(serde_json::Value::String(String::from_utf8_lossy(&json).into_owned()))),
        other => Err(format!("answered {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closed_loop_spreads_inflight_and_shards() {
        let mut settings = RunSettings::example();
        settings.connections = 3;
        settings.shards = vec![0, 1];
        settings.load = LoadMode::Closed { inflight: 16 };
        settings.validate().unwrap();
        let plans = plan_connections(&settings);
        assert_eq!(plans.iter().map(|plan| plan.inflight).collect::<Vec<_>>(), vec![6, 5, 5]);
        assert_eq!(plans.iter().map(|plan| plan.shard).collect::<Vec<_>>(), vec![0, 1, 0]);
        assert!(plans.iter().all(|plan| plan.schedule.is_none()));
    }

    #[test]
    fn fewer_inflight_than_connections_means_fewer_connections() {
        let mut settings = RunSettings::example();
        settings.connections = 8;
        settings.threads = 4;
        settings.load = LoadMode::Closed { inflight: 1 };
        settings.validate().unwrap();
        assert_eq!((settings.connections, settings.threads), (1, 1));
    }

    #[test]
    fn open_loop_plans_interleave() {
        let mut settings = RunSettings::example();
        settings.connections = 2;
        settings.load = LoadMode::Open { rate: 1_000.0, inflight_max: 64 };
        settings.validate().unwrap();
        let plans = plan_connections(&settings);
        assert_eq!(plans[0].schedule.unwrap().due(1), Duration::from_millis(2));
        assert_eq!(plans[1].schedule.unwrap().due(0), Duration::from_millis(1));
        assert_eq!(plans[1].inflight, 32);
    }

    #[test]
    fn bad_settings_are_refused() {
        let mut settings = RunSettings::example();
        settings.addrs.clear();
        assert!(matches!(settings.validate(), Err(RunError::Settings(_))));
        let mut settings = RunSettings::example();
        settings.load = LoadMode::Open { rate: 0.0, inflight_max: 8 };
        assert!(matches!(settings.validate(), Err(RunError::Settings(_))));
    }

    #[test]
    fn answers_are_checked_against_the_operation() {
        assert_eq!(check_answer(OpKind::Write, &KvResponse::Written.encode()), Answer::Done);
        assert_eq!(check_answer(OpKind::Read, &KvResponse::Value(None).encode()), Answer::Done);
        assert!(matches!(check_answer(OpKind::Write, &KvResponse::CasSucceeded.encode()), Answer::Unexpected(_)));
        assert!(matches!(check_answer(OpKind::Read, &KvResponse::Written.encode()), Answer::Unexpected(_)));
        assert!(matches!(check_answer(OpKind::Write, &Bytes::from_static(b"\xff")), Answer::Unexpected(_)));
    }
}
