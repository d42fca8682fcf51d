//! The listener: accepts connections of one role (peers or clients), runs
//! the acceptor's side of TLS and of the handshake, and delivers each
//! connection's decoded frames to the owner as [`Inbound`] events on a bounded
//! channel.
//!
//! Every resource a remote end can make the listener hold has a bound:
//!
//! - connections: [`ListenerConfig::connections_max`]; one more is refused
//!   with [`RefusalReason::Overloaded`] at once, before any TLS;
//! - time to authenticate: [`ListenerConfig::handshake_timeout`], TLS
//!   included; frames read before that are at most
//!   [`HANDSHAKE_FRAME_SIZE_MAX`] bytes;
//! - time doing nothing: [`ListenerConfig::idle_timeout`] (a connection with
//!   requests outstanding is never idle);
//! - a client connection's requests: at most
//!   [`ListenerConfig::requests_outstanding_max`] requests delivered and not
//!   yet answered *or* answered and not yet written, and at most
//!   [`ListenerConfig::request_bytes_outstanding_max`] bytes of them. At the
//!   bound the connection is not read: the client's writes stop when the
//!   socket buffers fill (back-pressure through TCP), and no task or queue
//!   grows. Each request read reserves its answer's place in the
//!   connection's response queue, so [`ReplyTo::send`] never waits and never
//!   finds the queue full;
//! - the owner's pace: a full inbound channel stops the reads of every
//!   connection that has something to deliver.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::pin::pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use engine::{Message, NodeId};
use tokio::sync::{mpsc, Notify};
use tokio_uring::net::{TcpListener, TcpStream};
use tracing::{debug, info, warn};

use crate::auth::{authenticate, Authenticated};
use crate::client::{ClientRequest, ClientResponse, ResponseStatus};
use crate::codec::{Frame, Payload};
use crate::conn::{detect_dead_peer, write_frame, Coalescer, ConnError, FrameReader};
use crate::error::DecodeError;
use crate::frame::{Limits, RawFrame, FRAME_HEADER_SIZE, PROTOCOL_VERSION};
use crate::handshake::{HandshakeAccept, HandshakeRefusal, RefusalReason, HANDSHAKE_FRAME_SIZE_MAX};
use crate::identity::{certificate_identity, Identity};
use crate::queue::{OutQueue, Outgoing};
use crate::security::{Credentials, NodeSecurity};
use crate::stream::{FrameIo, Stream, TlsHandshakeError, TlsStream, TLS_READ_SIZE, TLS_WRITE_CHUNK_BYTES};

/// Which connections a listener takes. A node runs one listener of each:
/// peers and clients never share a port or credentials.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ListenerRole {
    /// Other nodes of the cluster (Raft messages).
    Peers,
    /// Clients (requests and responses).
    Clients,
}

/// A caller that has not authenticated within this time is dropped.
pub const HANDSHAKE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(5);
/// A client connection with nothing outstanding that sends no complete frame
/// for this long is closed. Peers have no idle timeout by default: a link
/// between two followers may carry nothing for as long as the leader lives.
pub const CLIENT_IDLE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(300);
/// Connections a peer listener holds: each other node opens one link per
/// core to its counterpart, plus a reconnect or two in flight.
pub const PEER_CONNECTIONS_MAX_DEFAULT: usize = 64;
/// Connections a client listener holds.
pub const CLIENT_CONNECTIONS_MAX_DEFAULT: usize = 1024;
/// Requests one client connection may have outstanding (delivered and not
/// answered, or answered and not yet written). The load generator keeps up
/// to 256 in flight per connection.
pub const REQUESTS_OUTSTANDING_MAX_DEFAULT: usize = 256;
/// Bytes of request frames one client connection may have outstanding. One
/// request of any size up to `frame_size_max` is always read when nothing is
/// outstanding.
pub const REQUEST_BYTES_OUTSTANDING_MAX_DEFAULT: usize = 4 << 20;
/// Refusals kept for [`ListenerHandle::recent_refusals`].
pub const RECENT_REFUSALS_MAX: usize = 32;
/// After refusing a caller, the listener reads and discards what it still
/// sends for at most this long before closing, so that the refusal (a
/// frame, or a TLS alert) is not destroyed by the reset a close with unread
/// data would send.
pub const REFUSAL_LINGER: Duration = Duration::from_secs(1);
/// Bytes discarded while lingering after a refusal, at most.
pub const REFUSAL_LINGER_BYTES_MAX: usize = 64 << 10;
/// Refusals of over-the-bound connections lingering at once; beyond this a
/// connection over the bound is closed at once without a refusal frame.
pub const OVERLOAD_REFUSALS_IN_FLIGHT_MAX: usize = 64;

/// Nodes removed from the cluster, whose peer connections a listener
/// refuses ([`RefusalReason::Removed`]), so that a removed node that still
/// runs is told instead of being ignored for as long as it runs. The owner
/// adds ids (never removes one: ids are never reused); cheap to clone and
/// shared with the owner.
#[derive(Clone, Debug, Default)]
pub struct RemovedPeers(Arc<RemovedInner>);

#[derive(Debug, Default)]
struct RemovedInner {
    ids: RwLock<BTreeSet<NodeId>>,
    /// Bumped by each insertion: a peer connection compares it per frame
    /// (one relaxed load) and looks at the set only when it moved.
    generation: AtomicU64,
}

impl RemovedPeers {
    pub fn insert(&self, id: NodeId) {
        if self.0.ids.write().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(id) {
            self.0.generation.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn contains(&self, id: NodeId) -> bool {
        self.0.ids.read().unwrap_or_else(|poisoned| poisoned.into_inner()).contains(&id)
    }

    fn generation(&self) -> u64 {
        self.0.generation.load(Ordering::Relaxed)
    }
}

/// How the listener is set up.
#[derive(Clone, Debug)]
pub struct ListenerConfig {
    pub addr: SocketAddr,
    pub role: ListenerRole,
    /// The node's identity and credentials (TLS or plaintext), read anew for
    /// each accepted connection so that a reload applies to new ones.
    pub security: NodeSecurity,
    /// Bounds on frames after the handshake.
    pub limits: Limits,
    /// Bound on TLS plus the handshake frame exchange.
    pub handshake_timeout: Duration,
    /// `None`: never close a connection for being idle.
    pub idle_timeout: Option<Duration>,
    pub connections_max: usize,
    /// Client connections only (see the module documentation).
    pub requests_outstanding_max: usize,
    /// Client connections only (see the module documentation).
    pub request_bytes_outstanding_max: usize,
    /// Whether the listener itself answers [`ResponseStatus::Forbidden`] to a
    /// request the connection's identity has no role for (instead of
    /// delivering it). On by default; an owner with finer rules turns it off
    /// and calls [`Identity::authorize`] itself.
    pub authorize_requests: bool,
    /// The most bytes one coalesced write carries.
    pub write_bytes_max: usize,
    /// How long a silent remote end (no FIN, no RST) takes to be declared
    /// dead, so its connection and task do not linger: `TCP_USER_TIMEOUT`
    /// and keepalive. (Whether the kernel also applies it to a client that
    /// keeps acknowledging but stops reading, a zero window, is not relied
    /// on: such a client is held at its bound instead.)
    pub dead_peer_timeout: Duration,
    /// The node's shard count, told to every caller in the handshake's
    /// answer (0: not said).
    pub shards: u32,
    /// Peers refused as removed from the cluster (peer listeners).
    pub removed_peers: RemovedPeers,
}

impl ListenerConfig {
    /// Defaults for everything but the address, the role and the security.
    pub fn new(addr: SocketAddr, role: ListenerRole, security: NodeSecurity) -> ListenerConfig {
        let (connections_max, idle_timeout) = match role {
            ListenerRole::Peers => (PEER_CONNECTIONS_MAX_DEFAULT, None),
            ListenerRole::Clients => (CLIENT_CONNECTIONS_MAX_DEFAULT, Some(CLIENT_IDLE_TIMEOUT_DEFAULT)),
        };
        ListenerConfig {
            addr,
            role,
            security,
            limits: Limits::default(),
            handshake_timeout: HANDSHAKE_TIMEOUT_DEFAULT,
            idle_timeout,
            connections_max,
            requests_outstanding_max: REQUESTS_OUTSTANDING_MAX_DEFAULT,
            request_bytes_outstanding_max: REQUEST_BYTES_OUTSTANDING_MAX_DEFAULT,
            authorize_requests: true,
            write_bytes_max: 1 << 20,
            dead_peer_timeout: Duration::from_secs(15),
            shards: 0,
            removed_peers: RemovedPeers::default(),
        }
    }

    /// A listener for the other nodes.
    pub fn peers(addr: SocketAddr, security: NodeSecurity) -> ListenerConfig {
        ListenerConfig::new(addr, ListenerRole::Peers, security)
    }

    /// A listener for clients.
    pub fn clients(addr: SocketAddr, security: NodeSecurity) -> ListenerConfig {
        ListenerConfig::new(addr, ListenerRole::Clients, security)
    }

    /// An upper bound on the memory one client connection can make the
    /// listener hold, in bytes, not counting the answers' own bytes (which
    /// the owner produces; at most `requests_outstanding_max` of them):
    /// - the receive buffer: one frame and one read;
    /// - outstanding requests: their bytes, counted up to the bound plus the
    ///   one frame that crosses it; each pins the receive buffer it was read
    ///   into, which can double that;
    /// - with TLS, rustls's buffers and the stream's (a read, a write chunk,
    ///   64 KiB of handshake and 16 KiB of plaintext inside rustls).
    ///
    /// Times `connections_max` it bounds a listener.
    pub fn connection_bytes_max(&self) -> usize {
        let frame = self.limits.frame_size_max;
        let receive = frame + crate::conn::READ_SIZE_DEFAULT;
        let requests = 2 * (self.request_bytes_outstanding_max + frame);
        let tls = TLS_READ_SIZE + 2 * TLS_WRITE_CHUNK_BYTES + (64 << 10) + (16 << 10);
        receive + requests + tls
    }
}

/// Why the listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("address {addr} is already in use: is another node running on this port?")]
    AddrInUse { addr: SocketAddr },
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("listener configuration: {0}")]
    Config(&'static str),
}

/// The sending side of the inbound channel, given to [`Listener::spawn`].
pub type InboundSender = mpsc::Sender<Inbound>;
/// The owner's side of the inbound channel.
pub type InboundReceiver = mpsc::Receiver<Inbound>;

/// A bounded inbound channel. When it is full, connections stop reading, so
/// a slow owner slows its senders down through TCP instead of growing memory.
pub fn inbound_channel(capacity: usize) -> (InboundSender, InboundReceiver) {
    mpsc::channel(capacity)
}

/// What a connection delivers to the owner of the listener.
#[derive(Debug)]
pub enum Inbound {
    /// A Raft message from the peer `from_node` (authenticated: with TLS its
    /// certificate names that node).
    Raft { from_node: NodeId, shard_id: u32, message: Message },
    /// A client request, with the identity of the connection it came on;
    /// answer it through `reply` (once, in any order).
    Request { shard_id: u32, request: ClientRequest, identity: Identity, reply: ReplyTo },
}

/// The response side of one client connection, shared by the [`ReplyTo`]s
/// of its requests.
///
/// Invariant: `outstanding + queue.len() <= requests_outstanding_max`, the
/// queue's capacity; so an answer always finds its place.
struct ClientSide {
    queue: OutQueue,
    /// Requests delivered to the owner (or being delivered) and not answered.
    outstanding: Cell<usize>,
    /// Frame bytes of those requests.
    request_bytes: Cell<usize>,
    requests_outstanding_max: usize,
    request_bytes_outstanding_max: usize,
    /// Whether the reader is waiting for room (for stats).
    paused: Cell<bool>,
    /// Woken when an answer is given or written: room may have appeared.
    room: Notify,
    /// Woken when `outstanding` drops to zero.
    idle: Notify,
    identity: Identity,
    remote: SocketAddr,
}

impl ClientSide {
    fn in_flight(&self) -> usize {
        self.outstanding.get() + self.queue.len()
    }

    fn has_room(&self) -> bool {
        self.in_flight() < self.requests_outstanding_max
            && self.request_bytes.get() < self.request_bytes_outstanding_max
    }

    fn reserve(&self, bytes: usize) {
        assert!(self.in_flight() < self.requests_outstanding_max, "a request read without a reserved slot");
        self.outstanding.set(self.outstanding.get() + 1);
        self.request_bytes.set(self.request_bytes.get() + bytes);
    }

    fn release(&self, bytes: usize) {
        let outstanding = self.outstanding.get();
        assert!(outstanding > 0, "more answers than requests");
        self.outstanding.set(outstanding - 1);
        self.request_bytes.set(self.request_bytes.get() - bytes);
        self.room.notify_waiters();
        if outstanding == 1 {
            self.idle.notify_waiters();
        }
    }

    async fn wait_idle(&self) {
        while self.outstanding.get() > 0 {
            self.idle.notified().await;
        }
    }
}

/// Where the answer to one client request goes: the response queue of the
/// connection it arrived on. `!Send`: answer on the thread that received it.
///
/// Its place in the queue was reserved when the request was read, so
/// [`ReplyTo::send`] is synchronous and cannot find the queue full. Dropping
/// it unanswered answers [`ResponseStatus::TimedOut`] (logged as a warning):
/// the client is never left without an answer, and `TimedOut` is the status
/// under which it retries safely (a write may or may not have been applied).
pub struct ReplyTo {
    side: Rc<ClientSide>,
    shard_id: u32,
    request_id: u64,
    /// The request frame's bytes, counted against the connection's bound.
    request_bytes: usize,
    answered: bool,
    received: Instant,
}

impl std::fmt::Debug for ReplyTo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ReplyTo({}, shard {}, request {})", self.side.remote, self.shard_id, self.request_id)
    }
}

/// A response that could not be queued because its connection is gone; its
/// status is handed back, never dropped silently.
#[derive(Debug, thiserror::Error)]
pub enum ReplyError {
    #[error("the client connection is closed")]
    Closed(ResponseStatus),
}

impl ReplyTo {
    /// Queues the answer for the connection's writer. Never waits.
    pub fn send(mut self, status: ResponseStatus) -> Result<(), ReplyError> {
        self.answer(status)
    }

    fn answer(&mut self, status: ResponseStatus) -> Result<(), ReplyError> {
        assert!(!self.answered, "request {} answered twice", self.request_id);
        self.answered = true;
        let response = ClientResponse { request_id: self.request_id, status };
        let result = match self.side.queue.try_push(Outgoing::Response { shard_id: self.shard_id, response }) {
            Ok(()) => Ok(()),
            Err(back) if self.side.queue.is_closed() => Err(ReplyError::Closed(into_status(back))),
            Err(_) => unreachable!("the reply slot of request {} was not reserved", self.request_id),
        };
        self.side.release(self.request_bytes);
        result
    }

    /// The request this answers.
    pub fn request_id(&self) -> u64 {
        self.request_id
    }

    /// The client's address, for logs.
    pub fn remote_addr(&self) -> SocketAddr {
        self.side.remote
    }

    /// Who sent the request (the same as `Inbound::Request::identity`), for
    /// a request that is handed on without its envelope.
    pub fn identity(&self) -> &Identity {
        &self.side.identity
    }

    /// When the connection decoded the request: where a server's latency
    /// stages should start, so that they include its own queues.
    pub fn received(&self) -> Instant {
        self.received
    }
}

impl Drop for ReplyTo {
    fn drop(&mut self) {
        if !self.answered {
            if !self.side.queue.is_closed() {
                warn!(remote = %self.side.remote, request_id = self.request_id, "client request dropped without an answer; answering TimedOut");
            }
            let _ = self.answer(ResponseStatus::TimedOut);
        }
    }
}

fn into_status(item: Outgoing) -> ResponseStatus {
    match item {
        Outgoing::Response { response, .. } => response.status,
        _ => unreachable!("a reply queue holds only responses"),
    }
}

/// Why a TLS handshake failed, as the acceptor saw it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TlsFailure {
    #[error("the certificate is not signed by a trusted CA")]
    UnknownIssuer,
    #[error("the certificate has expired")]
    Expired,
    #[error("the certificate is not valid yet")]
    NotValidYet,
    #[error("no certificate was presented")]
    NoCertificate,
    #[error("the certificate was refused: {0}")]
    BadCertificate(String),
    #[error("the caller refused this node's certificate: {0}")]
    RemoteRefused(String),
    #[error("TLS protocol error: {0}")]
    Protocol(String),
}

impl From<&rustls::Error> for TlsFailure {
    fn from(error: &rustls::Error) -> TlsFailure {
        use rustls::CertificateError as Certificate;
        match error {
            rustls::Error::InvalidCertificate(Certificate::UnknownIssuer) => TlsFailure::UnknownIssuer,
            rustls::Error::InvalidCertificate(Certificate::Expired | Certificate::ExpiredContext { .. }) => {
                TlsFailure::Expired
            }
            rustls::Error::InvalidCertificate(Certificate::NotValidYet | Certificate::NotValidYetContext { .. }) => {
                TlsFailure::NotValidYet
            }
            rustls::Error::NoCertificatesPresented => TlsFailure::NoCertificate,
            rustls::Error::InvalidCertificate(other) => TlsFailure::BadCertificate(format!("{other:?}")),
            rustls::Error::AlertReceived(alert) => TlsFailure::RemoteRefused(format!("{alert:?}")),
            other => TlsFailure::Protocol(other.to_string()),
        }
    }
}

/// Why the listener turned a caller away. Each is counted
/// ([`ListenerStats`]), kept among the recent refusals, and logged.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// A refusal frame was sent (inside TLS when TLS was up).
    #[error("handshake refused ({reason:?}): {message}")]
    Handshake { reason: RefusalReason, message: String },
    /// The TLS handshake failed; the caller got a TLS alert.
    #[error("TLS handshake failed: {0}")]
    Tls(TlsFailure),
    /// The caller did not complete TLS and its handshake in time.
    #[error("no handshake within {0:?}")]
    HandshakeTimeout(Duration),
}

/// One refused caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefusalRecord {
    pub remote: SocketAddr,
    pub refusal: Refusal,
    pub at: Instant,
}

/// A listener's counters and gauges, for metrics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenerStats {
    /// Connections accepted by the kernel.
    pub accepted: u64,
    /// Callers refused, for any reason (the sum of the three below).
    pub refused: u64,
    /// Refusal frames sent, by [`RefusalReason`] (index: the reason's wire
    /// value minus one; see [`ListenerStats::refused_for`]).
    pub refused_by_reason: [u64; RefusalReason::ALL.len()],
    /// TLS handshakes that failed.
    pub tls_failures: u64,
    /// Callers dropped for not authenticating in time.
    pub handshake_timeouts: u64,
    /// Connections closed for being idle.
    pub idle_closed: u64,
    /// Requests answered `Forbidden` by the listener.
    pub forbidden: u64,
    /// Connections closed for an I/O error or a bad frame after the handshake.
    pub failed: u64,
    /// Connections open now (handshaking or serving).
    pub open: usize,
    /// Client requests delivered and not answered, now.
    pub requests_outstanding: usize,
    /// Client answers queued and not yet written, now.
    pub responses_queued: usize,
    /// Bytes of the outstanding client requests, now.
    pub request_bytes_outstanding: usize,
    /// Client connections not being read because they are at their bound.
    pub connections_paused: usize,
}

impl ListenerStats {
    /// Refusal frames sent for `reason`.
    pub fn refused_for(&self, reason: RefusalReason) -> u64 {
        self.refused_by_reason[reason as usize - 1]
    }
}

/// State shared by the accept loop, its connections and the handle.
struct Shared {
    config: ListenerConfig,
    listener_fd: RawFd,
    closed: Cell<bool>,
    next_connection: Cell<u64>,
    stats: Cell<ListenerStats>,
    /// Live connections' sockets, so `shutdown` can close them. An entry is
    /// removed before its socket is closed.
    connections: RefCell<HashMap<u64, RawFd>>,
    /// Client connections' response sides, for the gauges.
    clients: RefCell<HashMap<u64, Rc<ClientSide>>>,
    recent_refusals: RefCell<VecDeque<RefusalRecord>>,
    /// Over-the-bound connections being refused now.
    overload_refusals: Cell<usize>,
    /// The refusal frame sent to a caller over the connection bound.
    overloaded_frame: bytes::Bytes,
    /// When a refusal of each kind was last logged at warning level, per
    /// caller address (without its port): a caller refused for good
    /// retries every few hundred milliseconds, and each refusal was a
    /// warning (three a second for a restored node beside empty ones, found
    /// by the fifth audit). Bounded by [`REFUSAL_LOG_KEYS_MAX`].
    refusals_logged: RefCell<WarnedRefusals>,
}

/// When a refusal of each kind was last logged at warning level, per caller
/// address (see [`Shared::refusals_logged`]).
#[derive(Default)]
struct WarnedRefusals(HashMap<(std::net::IpAddr, String), Instant>);

impl WarnedRefusals {
    /// Whether a refusal of `kind` of a caller at `ip` is due a warning at
    /// `now` (and if so, notes it).
    fn due(&mut self, ip: std::net::IpAddr, kind: String, now: Instant) -> bool {
        if self.0.len() >= REFUSAL_LOG_KEYS_MAX {
            self.0.retain(|_, at| now.saturating_duration_since(*at) < REFUSAL_LOG_EVERY);
        }
        if self.0.len() >= REFUSAL_LOG_KEYS_MAX {
            // Many callers within the minute: forget them all (they are
            // warned about again) rather than grow.
            self.0.clear();
        }
        match self.0.get(&(ip, kind.clone())) {
            Some(at) if now.saturating_duration_since(*at) < REFUSAL_LOG_EVERY => false,
            _ => {
                self.0.insert((ip, kind), now);
                true
            }
        }
    }
}

/// How often the same refusal of the same caller is logged at warning
/// level; the others go to debug level (every refusal is counted).
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(60);
/// Callers whose last refusal is remembered for that.
const REFUSAL_LOG_KEYS_MAX: usize = 1024;

impl Shared {
    /// Whether this refusal of `remote` is due a warning (see
    /// [`Shared::refusals_logged`]).
    fn refusal_warning_due(&self, remote: SocketAddr, refusal: &Refusal) -> bool {
        // The refusal's text: each distinct refusal of a caller is warned
        // about, the same one again only after a minute.
        let kind = refusal.to_string();
        self.refusals_logged.borrow_mut().due(remote.ip(), kind, Instant::now())
    }

    fn update(&self, change: impl FnOnce(&mut ListenerStats)) {
        let mut stats = self.stats.get();
        change(&mut stats);
        self.stats.set(stats);
    }

    /// Counts, remembers and logs a refusal.
    fn refused(&self, remote: SocketAddr, refusal: Refusal) {
        self.update(|stats| {
            stats.refused += 1;
            match &refusal {
                Refusal::Handshake { reason, .. } => stats.refused_by_reason[*reason as usize - 1] += 1,
                Refusal::Tls(_) => stats.tls_failures += 1,
                Refusal::HandshakeTimeout(_) => stats.handshake_timeouts += 1,
            }
        });
        // A removed node that still runs keeps calling, and it is the one
        // told (at error level, once).
        let removed = matches!(refusal, Refusal::Handshake { reason: RefusalReason::Removed, .. });
        if !removed && self.refusal_warning_due(remote, &refusal) {
            warn!(%remote, role = ?self.config.role, %refusal, "caller refused (the same refusal of this caller is logged again at most once a minute)");
        } else {
            debug!(%remote, role = ?self.config.role, %refusal, "caller refused");
        }
        let mut recent = self.recent_refusals.borrow_mut();
        if recent.len() == RECENT_REFUSALS_MAX {
            recent.pop_front();
        }
        recent.push_back(RefusalRecord { remote, refusal, at: Instant::now() });
    }
}

/// A bound listening socket, not yet accepting.
pub struct Listener {
    listener: TcpListener,
    local_addr: SocketAddr,
    shared: Rc<Shared>,
}

/// Controls a running listener.
#[derive(Clone)]
pub struct ListenerHandle {
    shared: Rc<Shared>,
    local_addr: SocketAddr,
}

impl Listener {
    /// Binds `config.addr`. The socket is bound by the standard library,
    /// without `SO_REUSEPORT` (which tokio-uring's own `bind` sets and with
    /// which a second process on the same port would silently share it), so a
    /// port already in use is a clear [`ListenError::AddrInUse`] and no other
    /// socket can later share this port either. Must run inside a tokio-uring
    /// runtime.
    pub fn bind(config: ListenerConfig) -> Result<Listener, ListenError> {
        if config.connections_max == 0 {
            return Err(ListenError::Config("connections_max must be at least 1"));
        }
        if config.requests_outstanding_max == 0 || config.request_bytes_outstanding_max == 0 {
            return Err(ListenError::Config(
                "requests_outstanding_max and request_bytes_outstanding_max must be at least 1",
            ));
        }
        let addr = config.addr;
        let std_listener = std::net::TcpListener::bind(addr).map_err(|source| match source.kind() {
            io::ErrorKind::AddrInUse => ListenError::AddrInUse { addr },
            _ => ListenError::Bind { addr, source },
        })?;
        std_listener.set_nonblocking(true).map_err(|source| ListenError::Bind { addr, source })?;
        let local_addr = std_listener.local_addr().map_err(|source| ListenError::Bind { addr, source })?;
        let listener_fd = std_listener.as_raw_fd();
        let listener = TcpListener::from_std(std_listener);
        let refusal = HandshakeRefusal {
            reason: RefusalReason::Overloaded,
            message: format!("this listener is at its bound of {} connections; retry later", config.connections_max),
        };
        let cluster_id = config.security.cluster_id();
        let overloaded_frame = Frame { cluster_id, shard_id: 0, payload: Payload::HandshakeRefuse(refusal) }.to_bytes();
        let shared = Rc::new(Shared {
            config,
            listener_fd,
            closed: Cell::new(false),
            next_connection: Cell::new(0),
            stats: Cell::new(ListenerStats::default()),
            connections: RefCell::new(HashMap::new()),
            clients: RefCell::new(HashMap::new()),
            recent_refusals: RefCell::new(VecDeque::with_capacity(RECENT_REFUSALS_MAX)),
            overload_refusals: Cell::new(0),
            refusals_logged: RefCell::new(WarnedRefusals::default()),
            overloaded_frame,
        });
        Ok(Listener { listener, local_addr, shared })
    }

    /// The bound address (the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Spawns the accept loop on the current tokio-uring runtime; each
    /// accepted connection gets a task of its own.
    pub fn spawn(self, inbound: mpsc::Sender<Inbound>) -> ListenerHandle {
        let handle = self.handle();
        tokio_uring::spawn(self.run(inbound));
        handle
    }

    /// A handle to stop the listener and read its counters, for callers that
    /// drive [`Listener::run`] themselves.
    pub fn handle(&self) -> ListenerHandle {
        ListenerHandle { shared: self.shared.clone(), local_addr: self.local_addr }
    }

    /// Accepts until [`ListenerHandle::shutdown`]. Accept errors (out of
    /// descriptors, a connection reset before it was accepted) are logged and
    /// retried: they do not stop the listener.
    pub async fn run(self, inbound: mpsc::Sender<Inbound>) {
        loop {
            let accepted = self.listener.accept().await;
            if self.shared.closed.get() {
                return;
            }
            let (stream, remote) = match accepted {
                Ok(accepted) => accepted,
                // Out of descriptors or a connection reset before accept: the
                // listener itself is fine; back off a little and go on.
                Err(error) => {
                    warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            self.shared.update(|stats| stats.accepted += 1);
            if self.shared.connections.borrow().len() >= self.shared.config.connections_max {
                refuse_overloaded(&self.shared, stream, remote);
                continue;
            }
            let id = self.shared.next_connection.get();
            self.shared.next_connection.set(id + 1);
            self.shared.connections.borrow_mut().insert(id, stream.as_raw_fd());
            let shared = self.shared.clone();
            let inbound = inbound.clone();
            tokio_uring::spawn(async move {
                if let Err(error) = serve(&shared, id, stream, remote, inbound).await {
                    shared.update(|stats| stats.failed += 1);
                    warn!(%remote, %error, "connection closed");
                }
                // `serve` closed (or dropped) the socket with no await since:
                // no other task reused its descriptor number in between.
                shared.connections.borrow_mut().remove(&id);
                shared.clients.borrow_mut().remove(&id);
            });
        }
    }
}

/// Turns away a caller over the connection bound, before TLS: a plaintext
/// refusal frame (a TLS caller of this crate recognises it), then a short
/// linger so the frame is not lost to a reset.
fn refuse_overloaded(shared: &Rc<Shared>, stream: TcpStream, remote: SocketAddr) {
    let message = format!("over the bound of {} connections", shared.config.connections_max);
    shared.refused(remote, Refusal::Handshake { reason: RefusalReason::Overloaded, message });
    if shared.overload_refusals.get() >= OVERLOAD_REFUSALS_IN_FLIGHT_MAX {
        return; // Dropping the stream closes it.
    }
    shared.overload_refusals.set(shared.overload_refusals.get() + 1);
    let shared = shared.clone();
    tokio_uring::spawn(async move {
        let _ = stream.write_segments(vec![shared.overloaded_frame.clone()]).await;
        linger(&stream).await;
        shared.overload_refusals.set(shared.overload_refusals.get() - 1);
    });
}

/// Closes the sending side and discards what the remote end still sends, for
/// at most [`REFUSAL_LINGER`] and [`REFUSAL_LINGER_BYTES_MAX`]: a socket
/// closed with unread data sends a reset, which can destroy the refusal
/// before the caller reads it.
async fn linger(tcp: &TcpStream) {
    let _ = tcp.shutdown(Shutdown::Write);
    let discard = async {
        let mut discarded = 0;
        let mut buf = vec![0u8; 4096];
        while discarded < REFUSAL_LINGER_BYTES_MAX {
            let (result, back) = tcp.read(buf).await;
            buf = back;
            match result {
                Ok(0) | Err(_) => return,
                Ok(read) => discarded += read,
            }
        }
    };
    let _ = tokio::time::timeout(REFUSAL_LINGER, discard).await;
}

impl ListenerHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Live connections (handshaking or serving).
    pub fn connection_count(&self) -> usize {
        self.shared.connections.borrow().len()
    }

    pub fn stats(&self) -> ListenerStats {
        let mut stats = ListenerStats { open: self.connection_count(), ..self.shared.stats.get() };
        for side in self.shared.clients.borrow().values() {
            stats.requests_outstanding += side.outstanding.get();
            stats.responses_queued += side.queue.len();
            stats.request_bytes_outstanding += side.request_bytes.get();
            stats.connections_paused += usize::from(side.paused.get());
        }
        stats
    }

    /// The last [`RECENT_REFUSALS_MAX`] refusals, oldest first.
    pub fn recent_refusals(&self) -> Vec<RefusalRecord> {
        self.shared.recent_refusals.borrow().iter().cloned().collect()
    }

    /// Stops accepting and closes every connection. The port is free again
    /// once the accept loop has seen the shutdown.
    pub fn shutdown(&self) {
        // Only once: after the accept loop ends the descriptor is closed and
        // its number may belong to another socket.
        if self.shared.closed.replace(true) {
            return;
        }
        // SAFETY: shutdown(2) on a descriptor this listener owns; it wakes the
        // in-flight accept (which then sees `closed`) and stops listening.
        unsafe { libc::shutdown(self.shared.listener_fd, libc::SHUT_RDWR) };
        for fd in self.shared.connections.borrow().values() {
            // SAFETY: every descriptor in the map belongs to a live
            // connection (entries leave the map before their socket closes);
            // shutdown(2) wakes its reads and writes, and the connection's
            // task then closes it.
            unsafe { libc::shutdown(*fd, libc::SHUT_RDWR) };
        }
    }
}

/// How the handshake phase of a connection ended.
enum Established {
    Accepted {
        reader: FrameReader,
        caller: Authenticated,
    },
    /// Refused (counted and logged): linger on the socket, then close.
    Refused,
    /// The caller left, or the owner is gone.
    Closed,
}

/// One accepted connection: TLS and handshake, then the role's read loop.
async fn serve(
    shared: &Rc<Shared>,
    id: u64,
    tcp: TcpStream,
    remote: SocketAddr,
    inbound: mpsc::Sender<Inbound>,
) -> Result<(), ConnError> {
    let config = &shared.config;
    tcp.set_nodelay(true)?;
    detect_dead_peer(&tcp, config.dead_peer_timeout)?;
    // The credentials of this connection: a reload changes the next ones.
    let credentials = config.security.current();
    let stream = match &credentials.tls {
        None => Stream::Plain(tcp),
        Some(tls) => {
            let acceptor = match config.role {
                ListenerRole::Peers => tls.peer_acceptor.clone(),
                ListenerRole::Clients => tls.client_acceptor.clone(),
            };
            let session = rustls::ServerConnection::new(acceptor).map_err(ConnError::Tls)?;
            Stream::Tls(Box::new(TlsStream::new(tcp, rustls::Connection::Server(session))))
        }
    };
    // The stream lives outside the timed handshake so that a timeout can
    // shut it down: that ends the read left in flight, which would
    // otherwise keep the socket open as long as the caller stays silent.
    let established =
        tokio::time::timeout(config.handshake_timeout, establish(shared, &stream, remote, &credentials)).await;
    let (mut reader, caller) = match established {
        Ok(Ok(Established::Accepted { reader, caller })) => (reader, caller),
        Ok(Ok(Established::Refused)) => {
            linger(stream.tcp()).await;
            let _ = stream.shutdown(Shutdown::Both);
            return Ok(());
        }
        Ok(Ok(Established::Closed)) => {
            let _ = stream.shutdown(Shutdown::Both);
            return Ok(());
        }
        Ok(Err(error)) => {
            let _ = stream.shutdown(Shutdown::Both);
            return Err(error);
        }
        Err(_) => {
            let _ = stream.shutdown(Shutdown::Both);
            shared.refused(remote, Refusal::HandshakeTimeout(config.handshake_timeout));
            return Ok(());
        }
    };
    debug!(%remote, ?caller, tls = stream.is_tls(), "connection accepted");
    let stream = Rc::new(stream);
    let result = match caller {
        Authenticated::Peer { node_id } => serve_peer(shared, &stream, &mut reader, node_id, &inbound).await,
        Authenticated::Client { identity } => {
            serve_client(shared, id, stream.clone(), &mut reader, remote, identity, &inbound).await
        }
    };
    let _ = stream.shutdown(Shutdown::Both);
    result
}

/// Runs TLS (if the stream is TLS) and the handshake exchange.
async fn establish(
    shared: &Shared,
    stream: &Stream,
    remote: SocketAddr,
    credentials: &Credentials,
) -> Result<Established, ConnError> {
    let config = &shared.config;
    let cluster_id = credentials.cluster_id;
    let refusal_frame =
        |refusal: HandshakeRefusal| Frame { cluster_id, shard_id: 0, payload: Payload::HandshakeRefuse(refusal) };
    if let Stream::Tls(tls) = stream {
        match tls.handshake().await {
            Ok(()) => {}
            Err(TlsHandshakeError::PlaintextCaller) => {
                let refusal = HandshakeRefusal {
                    reason: RefusalReason::TlsRequired,
                    message: "this listener speaks TLS 1.3; configure the caller's TLS files".into(),
                };
                shared.refused(remote, Refusal::Handshake { reason: refusal.reason, message: refusal.message.clone() });
                write_frame(tls.tcp(), &refusal_frame(refusal)).await?;
                return Ok(Established::Refused);
            }
            Err(TlsHandshakeError::Tls(error)) => {
                shared.refused(remote, Refusal::Tls(TlsFailure::from(&error)));
                return Ok(Established::Refused);
            }
            Err(TlsHandshakeError::Closed) => return Ok(Established::Closed),
            Err(TlsHandshakeError::Io(error)) => return Err(error.into()),
            Err(TlsHandshakeError::PlaintextAnswer) => unreachable!("an acceptor gets no answer"),
        }
    }
    let mut reader = FrameReader::new(Limits { frame_size_max: HANDSHAKE_FRAME_SIZE_MAX });
    let refusal = |reason, message: String| HandshakeRefusal { reason, message };
    let verdict = match reader.next(stream).await {
        Ok(None) => return Ok(Established::Closed),
        Ok(Some(raw)) => match Frame::decode(raw) {
            Ok(Frame { payload: Payload::Handshake(handshake), .. }) => {
                let certificate = stream.peer_certificate().map(|certificate| certificate_identity(&certificate));
                judge(&handshake, config, certificate, credentials)
            }
            Ok(other) => {
                Err(refusal(RefusalReason::Malformed, format!("expected a handshake, got {:?}", other.payload.kind())))
            }
            Err(error) => Err(refusal(RefusalReason::Malformed, error.to_string())),
        },
        Err(ConnError::Decode(DecodeError::BadMagic { found })) if looks_like_tls(found) => Err(refusal(
            RefusalReason::TlsUnavailable,
            "this listener speaks plaintext; the caller opened with TLS".into(),
        )),
        Err(ConnError::Decode(error)) => Err(refusal(RefusalReason::Malformed, error.to_string())),
        Err(error) => return Err(error),
    };
    match verdict {
        Ok(caller) => {
            let accept = HandshakeAccept {
                node_id: credentials.node_id,
                protocol_version: u16::from(PROTOCOL_VERSION),
                shards: config.shards,
            };
            write_frame(stream, &Frame { cluster_id, shard_id: 0, payload: Payload::HandshakeAccept(accept) }).await?;
            reader.set_limits(config.limits);
            Ok(Established::Accepted { reader, caller })
        }
        Err(refusal) => {
            shared.refused(remote, Refusal::Handshake { reason: refusal.reason, message: refusal.message.clone() });
            write_frame(stream, &refusal_frame(refusal)).await?;
            Ok(Established::Refused)
        }
    }
}

/// The credentials' verdict on a caller, and a peer removed from the
/// cluster refused.
fn judge(
    handshake: &crate::handshake::Handshake,
    config: &ListenerConfig,
    certificate: Option<Result<crate::identity::CertIdentity, crate::identity::IdentityError>>,
    credentials: &Credentials,
) -> Result<Authenticated, HandshakeRefusal> {
    match authenticate(handshake, config.role, certificate, credentials) {
        Ok(Authenticated::Peer { node_id }) if config.removed_peers.contains(node_id) => Err(HandshakeRefusal {
            reason: RefusalReason::Removed,
            message: format!(
                "node {node_id} was removed from the cluster: it takes no part any more; wipe its data directory \
                 and start it with --join to add it again (under a new id)"
            ),
        }),
        verdict => verdict,
    }
}

/// Whether a stream's first four bytes (as the frame magic reads them) start
/// a TLS handshake record: content type 22, then major version 3.
fn looks_like_tls(magic: u32) -> bool {
    let bytes = magic.to_le_bytes();
    bytes[0] == 0x16 && bytes[1] == 0x03
}

fn check_cluster(expected: u64, found: u64) -> Result<(), ConnError> {
    if expected == found {
        Ok(())
    } else {
        Err(ConnError::ClusterMismatch { expected, found })
    }
}

/// What waiting for the next frame gave.
enum Next {
    Frame(RawFrame),
    End,
    Idle,
}

/// The next frame, or `Idle` when the idle timeout passes while `is_idle`
/// holds. The read stays in flight across timer ticks (a cancelled read
/// would lose the bytes it received), and is dropped only when the
/// connection is being closed for idleness.
async fn next_or_idle(
    reader: &mut FrameReader,
    stream: &Stream,
    idle_timeout: Option<Duration>,
    is_idle: impl Fn() -> bool,
) -> Result<Next, ConnError> {
    let mut read = pin!(reader.next(stream));
    let Some(idle_timeout) = idle_timeout else {
        return Ok(read.await?.map_or(Next::End, Next::Frame));
    };
    loop {
        tokio::select! {
            result = &mut read => return Ok(result?.map_or(Next::End, Next::Frame)),
            _ = tokio::time::sleep(idle_timeout) => {
                if is_idle() {
                    return Ok(Next::Idle);
                }
            }
        }
    }
}

async fn serve_peer(
    shared: &Shared,
    stream: &Stream,
    reader: &mut FrameReader,
    from_node: NodeId,
    inbound: &mpsc::Sender<Inbound>,
) -> Result<(), ConnError> {
    let cluster_id = shared.config.security.cluster_id();
    // A peer's appends are kept (in the log) until a snapshot.
    reader.keep_frames();
    let removed = &shared.config.removed_peers;
    let mut removals_seen = removed.generation();
    loop {
        // A connection made before its node was removed closes, so that
        // the node's next handshake is refused and it is told.
        if removed.generation() != removals_seen {
            removals_seen = removed.generation();
            if removed.contains(from_node) {
                info!(peer = from_node, "connection of a node removed from the cluster closed");
                return Ok(());
            }
        }
        let raw = match next_or_idle(reader, stream, shared.config.idle_timeout, || true).await? {
            Next::Frame(raw) => raw,
            Next::End => return Ok(()),
            Next::Idle => {
                shared.update(|stats| stats.idle_closed += 1);
                info!(peer = from_node, "idle peer connection closed");
                return Ok(());
            }
        };
        check_cluster(cluster_id, raw.cluster_id)?;
        if !raw.kind.is_raft() {
            return Err(ConnError::UnexpectedKind { kind: raw.kind });
        }
        let shard_id = raw.shard_id;
        let Payload::Raft(message) = Frame::decode(raw)?.payload else {
            unreachable!("a Raft kind decodes to a Raft payload")
        };
        // A peer speaks only for itself: a message claiming another sender is
        // a misrouted or forged frame.
        if message.from != from_node {
            return Err(ConnError::WrongSender { handshake: from_node, message: message.from });
        }
        if inbound.send(Inbound::Raft { from_node, shard_id, message }).await.is_err() {
            return Ok(()); // The owner is gone: nothing left to serve.
        }
    }
}

async fn serve_client(
    shared: &Shared,
    id: u64,
    stream: Rc<Stream>,
    reader: &mut FrameReader,
    remote: SocketAddr,
    identity: Identity,
    inbound: &mpsc::Sender<Inbound>,
) -> Result<(), ConnError> {
    let config = &shared.config;
    let cluster_id = config.security.cluster_id();
    let side = Rc::new(ClientSide {
        queue: OutQueue::new(config.requests_outstanding_max),
        outstanding: Cell::new(0),
        request_bytes: Cell::new(0),
        requests_outstanding_max: config.requests_outstanding_max,
        request_bytes_outstanding_max: config.request_bytes_outstanding_max,
        paused: Cell::new(false),
        room: Notify::new(),
        idle: Notify::new(),
        identity,
        remote,
    });
    shared.clients.borrow_mut().insert(id, side.clone());
    let writer = {
        let (stream, side) = (stream.clone(), side.clone());
        let write_bytes_max = config.write_bytes_max;
        tokio_uring::spawn(async move {
            let written = |_| side.room.notify_waiters();
            if let Err((error, lost)) = write_loop(&*stream, &side.queue, cluster_id, write_bytes_max, written).await {
                // Stop the reader too: a client whose answers cannot be
                // written must see its connection close, not hang.
                side.queue.close();
                side.room.notify_waiters();
                let lost = lost + side.queue.drain();
                warn!(%remote, %error, lost, "client connection write failed; responses lost with it");
                let _ = stream.shutdown(Shutdown::Both);
            }
        })
    };
    let result = async {
        loop {
            // At the bound, stop reading: TCP pushes back on the client.
            while !side.has_room() && !side.queue.is_closed() {
                side.paused.set(true);
                side.room.notified().await;
            }
            side.paused.set(false);
            if side.queue.is_closed() {
                return Ok(()); // The writer failed; it logged why.
            }
            let raw = match next_or_idle(reader, &stream, config.idle_timeout, || side.in_flight() == 0).await? {
                Next::Frame(raw) => raw,
                Next::End => return Ok(()),
                Next::Idle => {
                    shared.update(|stats| stats.idle_closed += 1);
                    info!(%remote, user = %side.identity.user, "idle client connection closed");
                    return Ok(());
                }
            };
            check_cluster(cluster_id, raw.cluster_id)?;
            if !raw.kind.is_client_request() {
                return Err(ConnError::UnexpectedKind { kind: raw.kind });
            }
            let shard_id = raw.shard_id;
            let request_bytes = FRAME_HEADER_SIZE + raw.body.len();
            let Payload::Request(request) = Frame::decode(raw)?.payload else {
                unreachable!("a request kind decodes to a request payload")
            };
            side.reserve(request_bytes);
            let reply = ReplyTo {
                side: side.clone(),
                shard_id,
                request_id: request.request_id,
                request_bytes,
                answered: false,
                received: Instant::now(),
            };
            if config.authorize_requests {
                if let Err(forbidden) = side.identity.authorize(&request.body) {
                    shared.update(|stats| stats.forbidden += 1);
                    // Logged at info, not debug: an operator needs to see
                    // who was refused what, and why, without a debug build
                    // of the filter.
                    info!(%remote, %forbidden, request_id = request.request_id, "request forbidden");
                    let _ = reply.send(forbidden.status());
                    continue;
                }
            }
            let identity = side.identity.clone();
            if inbound.send(Inbound::Request { shard_id, request, identity, reply }).await.is_err() {
                return Ok(()); // The owner is gone: nothing left to serve.
            }
        }
    }
    .await;
    side.paused.set(false);
    if result.is_ok() {
        // The client finished sending (a half-close) or went idle: answer
        // what it already asked, then close. Answers given later get
        // `ReplyError::Closed`.
        side.wait_idle().await;
    }
    side.queue.close();
    if result.is_ok() {
        let _ = writer.await;
    } else {
        let lost = side.queue.drain();
        if lost > 0 {
            warn!(%remote, lost, "client connection failed with responses still queued");
        }
    }
    result
}

/// Sends queued frames until the queue is closed and empty, coalescing
/// everything queued at the moment the socket becomes free into one write.
/// `on_written` hears how many frames each write carried; frames popped for a
/// write that fails are lost with the connection and are the caller's to count
/// (`Err` carries how many).
pub(crate) async fn write_loop<S: FrameIo + ?Sized>(
    stream: &S,
    queue: &OutQueue,
    cluster_id: u64,
    write_bytes_max: usize,
    mut on_written: impl FnMut(usize),
) -> Result<(), (std::io::Error, usize)> {
    let mut coalescer = Coalescer::new();
    while queue.wait_ready().await {
        while coalescer.len_bytes() < write_bytes_max && !coalescer.segments_full() {
            let Some(item) = queue.pop() else { break };
            coalescer.push(|out| item.encode(cluster_id, out));
        }
        let frames = coalescer.len_frames();
        coalescer.flush(stream).await.map_err(|error| (error, frames))?;
        on_written(frames);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A caller refused for good is warned about once a minute per kind of
    /// refusal (every refusal was a warning: three a second).
    #[test]
    fn the_same_refusal_of_the_same_caller_is_warned_about_once_a_minute() {
        let mut warned = WarnedRefusals::default();
        let (a, b): (std::net::IpAddr, std::net::IpAddr) = ("127.0.0.1".parse().unwrap(), "127.0.0.2".parse().unwrap());
        let start = Instant::now();
        assert!(warned.due(a, "BadToken".into(), start));
        assert!(!warned.due(a, "BadToken".into(), start + Duration::from_secs(59)));
        assert!(warned.due(a, "OtherHistory".into(), start + Duration::from_secs(1)), "another reason");
        assert!(warned.due(b, "BadToken".into(), start + Duration::from_secs(1)), "another caller");
        assert!(warned.due(a, "BadToken".into(), start + REFUSAL_LOG_EVERY));
        for n in 0..(3 * REFUSAL_LOG_KEYS_MAX as u32) {
            let ip = std::net::IpAddr::V4(std::net::Ipv4Addr::from(n));
            warned.due(ip, "BadToken".into(), start + REFUSAL_LOG_EVERY * 3);
            assert!(warned.0.len() <= REFUSAL_LOG_KEYS_MAX, "{} remembered", warned.0.len());
        }
    }
}
