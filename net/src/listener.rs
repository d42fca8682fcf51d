//! The listener: accepts connections, runs the acceptor's side of the
//! handshake, and delivers each connection's decoded frames to the owner as
//! [`Inbound`] events on a bounded channel (a full channel stops the reads of
//! that connection: back-pressure reaches the remote end through TCP).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::time::Duration;

use engine::{Message, NodeId};
use tokio::sync::{mpsc, Notify};
use tokio_uring::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

use crate::client::{ClientRequest, ClientResponse, ResponseStatus};
use crate::codec::{Frame, Payload};
use crate::conn::{detect_dead_peer, write_frame, Coalescer, ConnError, FrameReader};
use crate::frame::{Limits, PROTOCOL_VERSION};
use crate::handshake::{
    HandshakeAccept, HandshakePolicy, HandshakeRefusal, RefusalReason, Role, HANDSHAKE_FRAME_SIZE_MAX,
};
use crate::queue::{OutQueue, Outgoing};

/// How the listener is set up.
#[derive(Clone, Debug)]
pub struct ListenerConfig {
    pub addr: SocketAddr,
    /// Who may connect and with which secret.
    pub policy: HandshakePolicy,
    pub limits: Limits,
    /// A caller that has not completed its handshake by then is dropped.
    pub handshake_timeout: Duration,
    /// Bound of each client connection's response queue; a full queue makes
    /// [`ReplyTo::send`] wait.
    pub response_queue_frames_max: usize,
    /// The most bytes one coalesced write carries.
    pub write_bytes_max: usize,
    /// How long a silent remote end (no FIN, no RST) takes to be declared
    /// dead, so its connection and task do not linger.
    pub dead_peer_timeout: Duration,
}

impl ListenerConfig {
    /// Defaults for everything but the address and the policy.
    pub fn new(addr: SocketAddr, policy: HandshakePolicy) -> ListenerConfig {
        ListenerConfig {
            addr,
            policy,
            limits: Limits::default(),
            handshake_timeout: Duration::from_secs(5),
            response_queue_frames_max: 1024,
            write_bytes_max: 1 << 20,
            dead_peer_timeout: Duration::from_secs(15),
        }
    }
}

/// Why the listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("address {addr} is already in use: is another node running on this port?")]
    AddrInUse { addr: SocketAddr },
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
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
    /// A Raft message from the peer `from_node` (as named in its handshake).
    Raft { from_node: NodeId, shard_id: u32, message: Message },
    /// A client request; answer it through `reply`, in any order.
    Request { shard_id: u32, request: ClientRequest, reply: ReplyTo },
}

/// The response side of one client connection, shared by the [`ReplyTo`]s
/// of its requests.
struct ClientSide {
    queue: OutQueue,
    /// Requests delivered to the owner and not yet answered (or dropped).
    outstanding: Cell<usize>,
    /// Woken when `outstanding` drops to zero.
    idle: Notify,
    remote: SocketAddr,
}

impl ClientSide {
    fn finish_one(&self) {
        let outstanding = self.outstanding.get();
        assert!(outstanding > 0, "more answers than requests");
        self.outstanding.set(outstanding - 1);
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
/// connection it arrived on. Answer exactly once; dropping it unanswered is
/// logged as a warning. `!Send`: answer on the thread that received it.
pub struct ReplyTo {
    side: Rc<ClientSide>,
    shard_id: u32,
    request_id: u64,
    answered: Cell<bool>,
    received: std::time::Instant,
}

impl std::fmt::Debug for ReplyTo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ReplyTo({}, shard {}, request {})", self.side.remote, self.shard_id, self.request_id)
    }
}

/// A response that could not be queued; its status is handed back, never
/// dropped silently.
#[derive(Debug, thiserror::Error)]
pub enum ReplyError {
    #[error("the client connection is closed")]
    Closed(ResponseStatus),
    #[error("the client connection's response queue is full")]
    Full(ResponseStatus),
}

impl ReplyTo {
    fn item(&self, status: ResponseStatus) -> Outgoing {
        assert!(!self.answered.get(), "request {} answered twice", self.request_id);
        let response = ClientResponse { request_id: self.request_id, status };
        Outgoing::Response { shard_id: self.shard_id, response }
    }

    fn mark_answered(&self) {
        self.answered.set(true);
        self.side.finish_one();
    }

    /// Queues the answer, waiting while the connection's queue is full.
    pub async fn send(&self, status: ResponseStatus) -> Result<(), ReplyError> {
        match self.side.queue.push(self.item(status)).await {
            Ok(()) => {
                self.mark_answered();
                Ok(())
            }
            Err(back) => Err(ReplyError::Closed(into_status(back))),
        }
    }

    /// Queues the answer if there is room now.
    pub fn try_send(&self, status: ResponseStatus) -> Result<(), ReplyError> {
        match self.side.queue.try_push(self.item(status)) {
            Ok(()) => {
                self.mark_answered();
                Ok(())
            }
            Err(back) if self.side.queue.is_closed() => Err(ReplyError::Closed(into_status(back))),
            Err(back) => Err(ReplyError::Full(into_status(back))),
        }
    }

    /// The request this answers.
    pub fn request_id(&self) -> u64 {
        self.request_id
    }

    /// The client's address, for logs.
    pub fn remote_addr(&self) -> SocketAddr {
        self.side.remote
    }

    /// When the connection decoded the request: where a server's latency
    /// stages should start, so that they include its own queues.
    pub fn received(&self) -> std::time::Instant {
        self.received
    }
}

impl Drop for ReplyTo {
    fn drop(&mut self) {
        if !self.answered.get() {
            if !self.side.queue.is_closed() {
                warn!(remote = %self.side.remote, request_id = self.request_id, "client request dropped without an answer");
            }
            self.side.finish_one();
        }
    }
}

fn into_status(item: Outgoing) -> ResponseStatus {
    match item {
        Outgoing::Response { response, .. } => response.status,
        _ => unreachable!("a reply queue holds only responses"),
    }
}

/// A listener's counters, for metrics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenerStats {
    /// Connections accepted by the kernel.
    pub accepted: u64,
    /// Handshakes refused (wrong cluster, token, version, role, or garbage).
    pub refused: u64,
    /// Connections closed for an I/O error or a bad frame after the handshake.
    pub failed: u64,
    /// Connections open now.
    pub open: usize,
}

/// State shared by the accept loop, its connections and the handle.
struct Shared {
    config: ListenerConfig,
    listener_fd: RawFd,
    closed: Cell<bool>,
    next_connection: Cell<u64>,
    stats: Cell<ListenerStats>,
    /// Live connections, so `shutdown` can close them (a restart in tests, a
    /// node leaving the cluster).
    connections: RefCell<HashMap<u64, Rc<TcpStream>>>,
}

impl Shared {
    fn update(&self, change: impl FnOnce(&mut ListenerStats)) {
        let mut stats = self.stats.get();
        change(&mut stats);
        self.stats.set(stats);
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
        let addr = config.addr;
        let std_listener = std::net::TcpListener::bind(addr).map_err(|source| match source.kind() {
            io::ErrorKind::AddrInUse => ListenError::AddrInUse { addr },
            _ => ListenError::Bind { addr, source },
        })?;
        std_listener.set_nonblocking(true).map_err(|source| ListenError::Bind { addr, source })?;
        let local_addr = std_listener.local_addr().map_err(|source| ListenError::Bind { addr, source })?;
        let listener_fd = std_listener.as_raw_fd();
        let listener = TcpListener::from_std(std_listener);
        let shared = Rc::new(Shared {
            config,
            listener_fd,
            closed: Cell::new(false),
            next_connection: Cell::new(0),
            stats: Cell::new(ListenerStats::default()),
            connections: RefCell::new(HashMap::new()),
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
            let id = self.shared.next_connection.get();
            self.shared.next_connection.set(id + 1);
            let stream = Rc::new(stream);
            self.shared.connections.borrow_mut().insert(id, stream.clone());
            let shared = self.shared.clone();
            let inbound = inbound.clone();
            tokio_uring::spawn(async move {
                if let Err(error) = serve(&shared, stream.clone(), remote, inbound).await {
                    shared.update(|stats| stats.failed += 1);
                    warn!(%remote, %error, "connection closed");
                }
                let _ = stream.shutdown(Shutdown::Both);
                shared.connections.borrow_mut().remove(&id);
            });
        }
    }
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
        ListenerStats { open: self.connection_count(), ..self.shared.stats.get() }
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
        for stream in self.shared.connections.borrow().values() {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

/// One accepted connection: handshake, then the role's read loop.
async fn serve(
    shared: &Shared,
    stream: Rc<TcpStream>,
    remote: SocketAddr,
    inbound: mpsc::Sender<Inbound>,
) -> Result<(), ConnError> {
    let config = &shared.config;
    stream.set_nodelay(true)?;
    detect_dead_peer(&stream, config.dead_peer_timeout)?;
    let cluster_id = config.policy.cluster_id;
    let mut reader = FrameReader::new(Limits { frame_size_max: HANDSHAKE_FRAME_SIZE_MAX });
    let first = match tokio::time::timeout(config.handshake_timeout, reader.next(&stream)).await {
        Ok(first) => first,
        Err(_) => {
            warn!(%remote, "no handshake in time; closing");
            return Ok(());
        }
    };
    let refuse = |reason, message: String| HandshakeRefusal { reason, message };
    let verdict = match first {
        Ok(None) => return Ok(()),
        Ok(Some(raw)) => match Frame::decode(raw) {
            Ok(Frame { payload: Payload::Handshake(handshake), .. }) => {
                config.policy.check(&handshake).map(|()| (handshake.role, handshake.node_id))
            }
            Ok(other) => {
                Err(refuse(RefusalReason::Malformed, format!("expected a handshake, got {:?}", other.payload.kind())))
            }
            Err(error) => Err(refuse(RefusalReason::Malformed, error.to_string())),
        },
        Err(ConnError::Decode(error)) => Err(refuse(RefusalReason::Malformed, error.to_string())),
        Err(error) => return Err(error),
    };
    let (role, remote_node) = match verdict {
        Ok(accepted) => accepted,
        Err(refusal) => {
            shared.update(|stats| stats.refused += 1);
            warn!(%remote, reason = ?refusal.reason, message = %refusal.message, "handshake refused");
            let frame = Frame { cluster_id, shard_id: 0, payload: Payload::HandshakeRefuse(refusal) };
            write_frame(&stream, &frame).await?;
            return Ok(());
        }
    };
    let accept = HandshakeAccept { node_id: config.policy.node_id, protocol_version: u16::from(PROTOCOL_VERSION) };
    write_frame(&stream, &Frame { cluster_id, shard_id: 0, payload: Payload::HandshakeAccept(accept) }).await?;
    reader.set_limits(config.limits);
    debug!(%remote, ?role, remote_node, "connection accepted");
    match role {
        Role::Peer => serve_peer(cluster_id, &stream, &mut reader, remote_node, &inbound).await,
        Role::Client => serve_client(shared, stream, &mut reader, remote, &inbound).await,
    }
}

fn check_cluster(expected: u64, found: u64) -> Result<(), ConnError> {
    if expected == found {
        Ok(())
    } else {
        Err(ConnError::ClusterMismatch { expected, found })
    }
}

async fn serve_peer(
    cluster_id: u64,
    stream: &TcpStream,
    reader: &mut FrameReader,
    from_node: NodeId,
    inbound: &mpsc::Sender<Inbound>,
) -> Result<(), ConnError> {
    while let Some(raw) = reader.next(stream).await? {
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
    Ok(())
}

async fn serve_client(
    shared: &Shared,
    stream: Rc<TcpStream>,
    reader: &mut FrameReader,
    remote: SocketAddr,
    inbound: &mpsc::Sender<Inbound>,
) -> Result<(), ConnError> {
    let config = &shared.config;
    let side = Rc::new(ClientSide {
        queue: OutQueue::new(config.response_queue_frames_max),
        outstanding: Cell::new(0),
        idle: Notify::new(),
        remote,
    });
    let writer = {
        let (stream, side) = (stream.clone(), side.clone());
        let (cluster_id, write_bytes_max) = (config.policy.cluster_id, config.write_bytes_max);
        tokio_uring::spawn(async move {
            if let Err((error, lost)) = write_loop(&stream, &side.queue, cluster_id, write_bytes_max, |_| {}).await {
                // Stop the reader too: a client whose answers cannot be
                // written must see its connection close, not hang.
                side.queue.close();
                let lost = lost + side.queue.drain();
                warn!(%remote, %error, lost, "client connection write failed; responses lost with it");
                let _ = stream.shutdown(Shutdown::Both);
            }
        })
    };
    let result = async {
        while let Some(raw) = reader.next(&stream).await? {
            check_cluster(config.policy.cluster_id, raw.cluster_id)?;
            if !raw.kind.is_client_request() {
                return Err(ConnError::UnexpectedKind { kind: raw.kind });
            }
            let shard_id = raw.shard_id;
            let Payload::Request(request) = Frame::decode(raw)?.payload else {
                unreachable!("a request kind decodes to a request payload")
            };
            side.outstanding.set(side.outstanding.get() + 1);
            let reply = ReplyTo {
                side: side.clone(),
                shard_id,
                request_id: request.request_id,
                answered: Cell::new(false),
                received: std::time::Instant::now(),
            };
            if inbound.send(Inbound::Request { shard_id, request, reply }).await.is_err() {
                return Ok(()); // The owner is gone: nothing left to serve.
            }
        }
        Ok(())
    }
    .await;
    if result.is_ok() {
        // The client finished sending (a half-close): answer what it already
        // asked, then close. Answers arriving later get `ReplyError::Closed`.
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
pub(crate) async fn write_loop(
    stream: &TcpStream,
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
