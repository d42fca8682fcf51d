//! A per-peer link: the outgoing side of the connection to one peer. It
//! connects (with TLS when the node's credentials have it, checking that the
//! peer's certificate names the node dialled), does the handshake, sends
//! queued Raft messages with coalesced writes, and reconnects with
//! exponential backoff and jitter when the connection fails. Each connect
//! reads the node's current credentials, so a reload applies from the next
//! reconnect on. Raft tolerates lost messages, so a full queue drops the
//! new message (and counts it) instead of blocking the engine's driver.
//!
//! Messages from the peer arrive on the peer's own link to this node, through
//! this node's [`Listener`](crate::Listener): each direction has its own
//! connection, so neither side's writes wait for the other's reads.

use std::cell::{Cell, RefCell};
use std::net::{Shutdown, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use engine::{Message, NodeId};
use tokio::sync::Notify;
use tracing::{debug, error, warn};

use crate::conn::{call, CallError, CallerTls, ConnError, FrameReader};
use crate::frame::{Limits, PROTOCOL_VERSION};
use crate::handshake::{Handshake, HandshakeError, RefusalReason, Role};
use crate::listener::write_loop;
use crate::queue::{OutQueue, Outgoing};
use crate::security::NodeSecurity;
use crate::stream::Stream;

/// How a link connects and queues.
#[derive(Clone, Debug)]
pub struct LinkConfig {
    /// This node's identity and credentials (its id and cluster, TLS files
    /// or the peer token), read anew at each connect.
    pub security: NodeSecurity,
    pub peer_id: NodeId,
    pub peer_addr: SocketAddr,
    /// Bound of the outgoing queue. A message sent while it is full is
    /// dropped and counted in [`LinkStats::dropped_queue_full`].
    pub queue_frames_max: usize,
    /// The first reconnect delay; it doubles after each failure.
    pub backoff_min: Duration,
    /// The longest reconnect delay after a failed connection. 500 ms by
    /// default, within an election timeout: a node that was alone for a
    /// while hears the returning leader at once (over the leader's link)
    /// but answers only once its own link reconnects, and with 2 s it had
    /// acknowledged nothing seconds after the others were back. A peer that
    /// refuses the handshake is retried at most every
    /// [`REFUSED_BACKOFF_MAX`] (each refusal is logged).
    pub backoff_max: Duration,
    /// Bound on connect plus handshake.
    pub connect_timeout: Duration,
    /// The most bytes one coalesced write carries.
    pub write_bytes_max: usize,
    /// How long a silent peer (no FIN, no RST) takes to be declared dead.
    pub dead_peer_timeout: Duration,
    pub limits: Limits,
    /// This node's shard count, which the peer must run too (its accept
    /// frame says its own): a link to a peer with another count is closed
    /// at once and retried like a refused handshake, logged as an error
    /// (see [`LinkStats::shard_count_mismatches`]). 0: not checked.
    pub shards: u32,
}

impl LinkConfig {
    /// Defaults for everything but the credentials and the peer.
    pub fn new(security: NodeSecurity, peer_id: NodeId, peer_addr: SocketAddr) -> LinkConfig {
        LinkConfig {
            security,
            peer_id,
            peer_addr,
            queue_frames_max: 4096,
            backoff_min: Duration::from_millis(20),
            backoff_max: Duration::from_millis(500),
            connect_timeout: Duration::from_secs(2),
            write_bytes_max: 1 << 20,
            dead_peer_timeout: Duration::from_secs(15),
            limits: Limits::default(),
            shards: 0,
        }
    }
}

/// A link's counters, for metrics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Frames waiting in the queue now.
    pub queued: usize,
    /// Frames handed to the kernel.
    pub sent_frames: u64,
    /// Messages refused because the queue was full.
    pub dropped_queue_full: u64,
    /// Frames lost because the connection failed while writing them, or
    /// discarded when the link closed.
    pub lost_on_disconnect: u64,
    /// Successful connections (handshake accepted).
    pub connects: u64,
    /// Handshakes the peer refused, or TLS handshakes that failed, or a peer
    /// that turned out to be another node (a configuration error or an
    /// impostor: logged as a warning).
    pub handshake_refusals: u64,
    /// Connections closed because the peer runs another shard count than
    /// this node ([`LinkConfig::shards`]).
    pub shard_count_mismatches: u64,
    /// Whether a connection is up now.
    pub connected: bool,
}

/// Why a message was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("the link's queue is full; the message was dropped")]
    QueueFull,
    #[error("the link is closed")]
    Closed,
}

/// Why one connection attempt or session ended (logged, then retried).
#[derive(Debug, thiserror::Error)]
enum LinkError {
    #[error("connect failed: {0}")]
    Connect(std::io::Error),
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    #[error(transparent)]
    Conn(#[from] ConnError),
    #[error("the peer closed the connection")]
    PeerClosed,
    #[error(
        "the peer runs {theirs} shard(s) and this node {ours}: every node of a cluster must run the same --shards \
         (a key's shard depends on the count); not linking to it"
    )]
    OtherShardCount { ours: u32, theirs: u32 },
}

struct LinkShared {
    config: LinkConfig,
    queue: OutQueue,
    stats: Cell<LinkStats>,
    closed: Cell<bool>,
    wake: Notify,
    current: RefCell<Option<Rc<Stream>>>,
    /// Since when no connection is up (None while one is), and whether that
    /// was logged as a warning ([`LINK_DOWN_WARN_AFTER`]).
    down: Cell<(Option<Instant>, bool)>,
    /// [`Link::peer_is_up`] cut a wait short since the last connection:
    /// once per down period, so a peer whose messages arrive while ours
    /// cannot reach it (a one-way fault) never makes the link spin.
    woken_early: Cell<bool>,
    /// The peer said this node was removed from the cluster: said once at
    /// error level, then at debug level.
    told_removed: Cell<bool>,
    /// The last refusal logged at warning level, and when: the same one is
    /// logged again at most once a minute (the link retries every 2 s; a
    /// restored node beside empty ones logged three a second with its
    /// peers', found by the fifth audit).
    refusal_logged: RefCell<Option<(RefusalReason, Instant)>>,
    /// When a shard count mismatch was last logged.
    mismatch_logged: Cell<Option<Instant>>,
    /// Why the last attempt or connection failed, until a connection is
    /// up again ([`Link::problem`]).
    problem: RefCell<Option<String>>,
}

/// How often the same refusal is logged again at warning level.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(60);

/// How long a link stays down before it is logged as a warning: a peer
/// that restarts, or one not yet listening while a cluster starts, is
/// debug-level noise; one that cannot be reached for longer is what an
/// operator looks for when a shard has no leader (only `role changed` lines
/// said anything before).
const LINK_DOWN_WARN_AFTER: Duration = Duration::from_secs(5);

/// The longest reconnect delay after the peer refused the handshake (a
/// configuration error that a retry fixes only once an operator acts).
pub const REFUSED_BACKOFF_MAX: Duration = Duration::from_secs(2);

impl LinkShared {
    fn update(&self, change: impl FnOnce(&mut LinkStats)) {
        let mut stats = self.stats.get();
        change(&mut stats);
        self.stats.set(stats);
    }

    fn close(&self) {
        if self.closed.replace(true) {
            return;
        }
        self.queue.close();
        self.wake.notify_waiters();
        if let Some(stream) = self.current.borrow().as_ref() {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

/// Closes the link when the last [`Link`] clone is dropped.
struct LinkOwner {
    shared: Rc<LinkShared>,
}

impl Drop for LinkOwner {
    fn drop(&mut self) {
        self.shared.close();
    }
}

/// The handle to a link; clones share it. `!Send`: use it on the runtime
/// thread that spawned it.
#[derive(Clone)]
pub struct Link {
    owner: Rc<LinkOwner>,
}

impl Link {
    /// Starts the link's task on the current tokio-uring runtime. It connects
    /// at once and keeps reconnecting until the link is closed or dropped.
    pub fn spawn(config: LinkConfig) -> Link {
        let shared = Rc::new(LinkShared {
            queue: OutQueue::new(config.queue_frames_max),
            config,
            stats: Cell::new(LinkStats::default()),
            closed: Cell::new(false),
            wake: Notify::new(),
            current: RefCell::new(None),
            down: Cell::new((None, false)),
            woken_early: Cell::new(false),
            told_removed: Cell::new(false),
            refusal_logged: RefCell::new(None),
            mismatch_logged: Cell::new(None),
            problem: RefCell::new(None),
        });
        tokio_uring::spawn(run(shared.clone()));
        Link { owner: Rc::new(LinkOwner { shared }) }
    }

    /// Queues `message` for the peer. Never waits: when the queue is full the
    /// message is dropped and counted, and Raft's retries recover.
    pub fn send(&self, shard_id: u32, message: Message) -> Result<(), SendError> {
        let shared = &self.owner.shared;
        if shared.closed.get() {
            return Err(SendError::Closed);
        }
        shared.queue.try_push(Outgoing::Raft { shard_id, message }).map_err(|_| {
            shared.update(|stats| stats.dropped_queue_full += 1);
            SendError::QueueFull
        })
    }

    pub fn peer_id(&self) -> NodeId {
        self.owner.shared.config.peer_id
    }

    /// Tells the link that the peer was just heard from (its own link
    /// delivered a message here), so it is up: a link waiting out its
    /// reconnect backoff tries at once, once per down period. A node that
    /// had been alone heard a returning peer at once but answered it only
    /// after up to `backoff_max`.
    pub fn peer_is_up(&self) {
        let shared = &self.owner.shared;
        if shared.closed.get() || shared.current.borrow().is_some() || shared.woken_early.replace(true) {
            return;
        }
        shared.wake.notify_one();
    }

    pub fn stats(&self) -> LinkStats {
        let shared = &self.owner.shared;
        LinkStats { queued: shared.queue.len(), ..shared.stats.get() }
    }

    /// Why the link is down, in words (a refused handshake, another shard
    /// count, a connect error, a lost connection): the last failure since a
    /// connection was last up; `None` while one is up or before the first
    /// attempt ends. For the node's status, so an operator sees why a peer
    /// is unreachable without reading the log.
    pub fn problem(&self) -> Option<String> {
        self.owner.shared.problem.borrow().clone()
    }

    /// Stops the link: queued frames are written if the connection is up, and
    /// no reconnect follows.
    pub fn close(&self) {
        self.owner.shared.close();
    }

    /// Whether the peer refused this node's handshake because this node
    /// was removed from the cluster (`RefusalReason::Removed`): whatever
    /// this node's own state says, its view of the cluster is stale.
    pub fn told_removed(&self) -> bool {
        self.owner.shared.told_removed.get()
    }
}

/// The reconnect loop.
async fn run(shared: Rc<LinkShared>) {
    let config = &shared.config;
    let mut rng = Jitter::seeded(config.security.node_id(), config.peer_id);
    let mut backoff = config.backoff_min;
    while !shared.closed.get() {
        let connects_before = shared.stats.get().connects;
        let mut backoff_max = config.backoff_max;
        if let Err(error) = session(&shared).await {
            *shared.problem.borrow_mut() = Some(error.to_string());
            if note_failure(&shared, error) {
                backoff_max = backoff_max.max(REFUSED_BACKOFF_MAX);
            }
        }
        if shared.closed.get() {
            break;
        }
        if shared.stats.get().connects != connects_before {
            backoff = config.backoff_min;
            shared.woken_early.set(false);
        }
        let delay = rng.jittered(backoff);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shared.wake.notified() => {}
        }
        backoff = (backoff * 2).min(backoff_max);
    }
    let lost = shared.queue.drain() as u64;
    shared.update(|stats| stats.lost_on_disconnect += lost);
}

/// Counts and logs a failed attempt or a lost connection. `true` when the
/// peer refused this node (its handshake, its identity, its shard count):
/// a configuration error that only an operator fixes, retried at most every
/// [`REFUSED_BACKOFF_MAX`].
fn note_failure(shared: &LinkShared, error: LinkError) -> bool {
    let config = &shared.config;
    match error {
        LinkError::Handshake(HandshakeError::Refused { reason, message }) => {
            shared.update(|stats| stats.handshake_refusals += 1);
            if reason != RefusalReason::Removed {
                let due = shared
                    .refusal_logged
                    .borrow()
                    .is_none_or(|(last, at)| last != reason || at.elapsed() >= REFUSAL_LOG_EVERY);
                if due {
                    *shared.refusal_logged.borrow_mut() = Some((reason, Instant::now()));
                    warn!(peer = config.peer_id, addr = %config.peer_addr, ?reason, %message, "peer refused our handshake (logged again at most once a minute)");
                } else {
                    debug!(peer = config.peer_id, ?reason, %message, "peer refused our handshake");
                }
            } else if !shared.told_removed.replace(true) {
                error!(peer = config.peer_id, %message, "the peer refuses this node: it was removed from the cluster");
            } else {
                debug!(peer = config.peer_id, %message, "peer refused our handshake");
            }
            true
        }
        LinkError::Handshake(
            error @ (HandshakeError::Tls(_)
            | HandshakeError::ServerIdentity(_)
            | HandshakeError::WrongNode { .. }
            | HandshakeError::Decode(_)),
        ) => {
            shared.update(|stats| stats.handshake_refusals += 1);
            warn!(peer = config.peer_id, addr = %config.peer_addr, %error, "could not authenticate with the peer");
            true
        }
        error @ LinkError::OtherShardCount { .. } => {
            shared.update(|stats| stats.shard_count_mismatches += 1);
            if shared.mismatch_logged.get().is_none_or(|at| at.elapsed() >= REFUSAL_LOG_EVERY) {
                shared.mismatch_logged.set(Some(Instant::now()));
                error!(peer = config.peer_id, addr = %config.peer_addr, "{error} (logged again at most once a minute)");
            }
            true
        }
        error => {
            debug!(peer = config.peer_id, addr = %config.peer_addr, %error, "link down");
            note_down(shared, &error);
            false
        }
    }
}

/// Notes a failed attempt or a lost connection; warns once the link has
/// been down for [`LINK_DOWN_WARN_AFTER`] (once until it is back).
fn note_down(shared: &LinkShared, error: &LinkError) {
    let (since, warned) = shared.down.get();
    let since = since.unwrap_or_else(Instant::now);
    let due = !warned && since.elapsed() >= LINK_DOWN_WARN_AFTER;
    shared.down.set((Some(since), warned || due));
    if due {
        let config = &shared.config;
        warn!(
            peer = config.peer_id,
            addr = %config.peer_addr,
            %error,
            "cannot reach the peer for {}s; retrying (logged again when it is back)",
            since.elapsed().as_secs()
        );
    }
}

/// One connection: connect, TLS and handshake, then write until something
/// fails.
async fn session(shared: &LinkShared) -> Result<(), LinkError> {
    let config = &shared.config;
    let credentials = config.security.current();
    let handshake = Handshake {
        cluster_id: credentials.cluster_id,
        node_id: credentials.node_id,
        role: Role::Peer,
        protocol_version: u16::from(PROTOCOL_VERSION),
        token: credentials.peer_token.clone().unwrap_or_default(),
        history: credentials.history,
    };
    let tls = credentials.tls.as_ref().map(|tls| CallerTls {
        config: tls.link_caller.clone(),
        server_name: crate::tls::server_name(credentials.cluster_id, Some(config.peer_id)),
    });
    let (stream, mut reader, accept) = call(
        config.peer_addr,
        tls,
        handshake,
        Some(config.peer_id),
        config.limits,
        config.connect_timeout,
        Some(config.dead_peer_timeout),
    )
    .await
    .map_err(|error| match error {
        CallError::Connect(error) => LinkError::Connect(error),
        CallError::Handshake(error) => LinkError::Handshake(error),
    })?;
    // A peer of a build that does not say its count (0) is not checked.
    if config.shards != 0 && accept.shards != 0 && accept.shards != config.shards {
        let _ = stream.shutdown(Shutdown::Both);
        return Err(LinkError::OtherShardCount { ours: config.shards, theirs: accept.shards });
    }
    let stream = Rc::new(stream);
    if shared.closed.get() {
        let _ = stream.shutdown(Shutdown::Both);
        return Ok(());
    }
    *shared.current.borrow_mut() = Some(stream.clone());
    shared.update(|stats| {
        stats.connects += 1;
        stats.connected = true;
    });
    *shared.problem.borrow_mut() = None;
    debug!(peer = config.peer_id, addr = %config.peer_addr, tls = stream.is_tls(), "link up");
    if let (Some(since), true) = shared.down.replace((None, false)) {
        tracing::info!(
            peer = config.peer_id,
            addr = %config.peer_addr,
            after_secs = since.elapsed().as_secs(),
            "reached the peer again"
        );
    }
    let written = |frames: usize| shared.update(|stats| stats.sent_frames += frames as u64);
    let result = tokio::select! {
        result = write_loop(&*stream, &shared.queue, credentials.cluster_id, config.write_bytes_max, written) => {
            result.map_err(|(error, lost)| {
                shared.update(|stats| stats.lost_on_disconnect += lost as u64);
                LinkError::Conn(ConnError::from(error))
            })
        }
        result = watch(&stream, &mut reader) => result,
    };
    shared.update(|stats| stats.connected = false);
    *shared.current.borrow_mut() = None;
    // Completes any read or write still in flight, so the descriptor closes.
    let _ = stream.shutdown(Shutdown::Both);
    result
}

/// Reads from a link's connection only to notice that the peer went away:
/// the acceptor never sends after its handshake answer.
async fn watch(stream: &Stream, reader: &mut FrameReader) -> Result<(), LinkError> {
    match reader.next(stream).await? {
        None => Err(LinkError::PeerClosed),
        Some(frame) => Err(LinkError::Conn(ConnError::UnexpectedKind { kind: frame.kind })),
    }
}

/// A small xorshift generator for backoff jitter. Jitter keeps nodes that lost
/// a peer at the same moment from reconnecting in lockstep; it needs no
/// cryptographic quality, and the engine's reproducibility does not depend on it.
struct Jitter(u64);

impl Jitter {
    fn seeded(node_id: NodeId, peer_id: NodeId) -> Jitter {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
        Jitter((nanos ^ node_id.rotate_left(32) ^ peer_id.wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A delay uniformly drawn from [backoff/2, backoff].
    fn jittered(&mut self, backoff: Duration) -> Duration {
        let half = backoff.as_micros() as u64 / 2;
        Duration::from_micros(half + self.next() % (half + 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_half_to_full_backoff() {
        let mut jitter = Jitter::seeded(1, 2);
        let backoff = Duration::from_millis(100);
        for _ in 0..1000 {
            let delay = jitter.jittered(backoff);
            assert!(delay >= backoff / 2, "{delay:?}");
            assert!(delay <= backoff, "{delay:?}");
        }
    }
}
