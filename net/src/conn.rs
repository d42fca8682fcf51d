//! A framed connection's two halves: a reader that splits frames out of a
//! reusable receive buffer, and a coalescing writer that turns many queued
//! frames into one (vectored) write. Both keep tokio-uring's ownership shape:
//! buffers move into each operation and come back with its result. Both work
//! over any [`FrameIo`]: a plain socket or TLS (`crate::stream`).

use std::io;
use std::mem;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use engine::NodeId;
use rustls::pki_types::ServerName;
use tokio_uring::net::TcpStream;

use crate::codec::{Frame, Payload};
use crate::error::DecodeError;
use crate::frame::{check_header, split_frame, FrameKind, Limits, RawFrame, FRAME_HEADER_SIZE};
use crate::handshake::{Handshake, HandshakeAccept, HandshakeError, HANDSHAKE_FRAME_SIZE_MAX};
use crate::stream::{tls_error, FrameIo, Stream, TlsHandshakeError, TlsStream};
use crate::tls::verify::ServerIdentityError;

/// Bytes asked of the kernel per read when no larger frame is pending.
pub const READ_SIZE_DEFAULT: usize = 64 << 10;
/// The read size of a connection from a peer node ([`FrameReader::keep_frames`]):
/// its appends' entries stay in the follower's log until a snapshot, each
/// keeping its receive buffer alive, so the buffers are larger (less of each
/// is the start of a frame that did not fit) but under glibc's threshold for
/// allocating with `mmap` (128 KiB), whose `munmap` for every buffer cost
/// system time.
pub const PEER_READ_SIZE: usize = 120 << 10;
/// The least room a receive buffer whose frames are kept must have left for
/// a read into it when no frame is partly read; with less, a fresh buffer is
/// taken. Bounds the unused end of each such buffer.
pub const READ_SPARE_MIN: usize = 8 << 10;
/// A frame tail (entry batch, command) at most this long is copied into the
/// write buffer; a longer one goes out as its own iovec. Copying a few hundred
/// bytes is cheaper than another segment; copying a batch is not.
pub const TAIL_COPY_SIZE_MAX: usize = 2 << 10;
/// The most iovecs one vectored write carries (the kernel's IOV_MAX is 1024).
pub const WRITE_SEGMENTS_MAX: usize = 512;

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("I/O error: {0}")]
    Io(io::Error),
    /// TLS failed after the handshake (a bad record, an alert from the
    /// remote end).
    #[error("TLS: {0}")]
    Tls(rustls::Error),
    #[error("bad frame: {0}")]
    Decode(#[from] DecodeError),
    #[error("connection closed in the middle of a frame ({buffered} bytes buffered)")]
    UnexpectedEof { buffered: usize },
    #[error("frame for cluster {found} on a connection of cluster {expected}")]
    ClusterMismatch { expected: u64, found: u64 },
    #[error("a message from node {message} on the connection of node {handshake}")]
    WrongSender { handshake: u64, message: u64 },
    #[error("{kind:?} frames are not allowed on this connection")]
    UnexpectedKind { kind: FrameKind },
}

impl From<io::Error> for ConnError {
    /// Recovers the TLS error a [`crate::stream::TlsStream`] wrapped into an
    /// I/O error, so it stays typed.
    fn from(error: io::Error) -> ConnError {
        match tls_error(&error) {
            Some(tls) => ConnError::Tls(tls),
            None => ConnError::Io(error),
        }
    }
}

/// Reads frames from a stream into one reusable buffer. Each frame's body is
/// split off the buffer (`BytesMut::split_to`), so payloads are slices of the
/// bytes the kernel wrote, and the buffer's spare capacity serves the next
/// reads until half of it (by default) or nearly all of it
/// ([`FrameReader::keep_frames`]) is used. A new allocation happens only
/// then, and only when frames still hold the old one; so frames hold at most
/// about twice their bytes of memory, and frames that are kept (a follower's
/// log entries) little more than their bytes (`net/tests/receive_memory.rs`).
pub struct FrameReader {
    buf: BytesMut,
    limits: Limits,
    read_size: usize,
    /// The size of the last frame returned, header included.
    last_frame_size: usize,
    /// The least room left in the buffer for a read into it (when no frame
    /// is partly read): half a read for a connection whose frames are
    /// soon dropped (a larger read costs less than a second one), and
    /// [`READ_SPARE_MIN`] for one whose frames are kept.
    spare_min: usize,
}

impl FrameReader {
    pub fn new(limits: Limits) -> FrameReader {
        FrameReader {
            buf: BytesMut::with_capacity(READ_SIZE_DEFAULT),
            limits,
            read_size: READ_SIZE_DEFAULT,
            last_frame_size: 0,
            spare_min: READ_SIZE_DEFAULT / 2,
        }
    }

    /// A reader whose first bytes were already received by someone else.
    pub(crate) fn with_received(limits: Limits, received: &[u8]) -> FrameReader {
        let mut reader = FrameReader::new(limits);
        reader.buf.extend_from_slice(received);
        reader
    }

    /// For a connection whose frames are kept long (a follower's appends,
    /// kept in its log until a snapshot): fresh buffers of
    /// [`PEER_READ_SIZE`] bytes, each filled to within [`READ_SPARE_MIN`] of
    /// its end, so that the frames hold little more memory than their bytes.
    /// (By default a buffer is given up once half of it is used: frames that
    /// are soon dropped keep it alive only briefly, and larger reads are
    /// fewer.)
    pub fn keep_frames(&mut self) {
        self.read_size = PEER_READ_SIZE;
        self.spare_min = READ_SPARE_MIN;
    }

    /// Bytes received and not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Changes the limits for the frames that follow (the handshake is read
    /// under tighter limits than an authenticated connection's frames).
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// The next frame, checksums verified; `Ok(None)` on a clean close at a
    /// frame boundary.
    pub async fn next<S: FrameIo + ?Sized>(&mut self, stream: &S) -> Result<Option<RawFrame>, ConnError> {
        loop {
            if let Some(frame) = split_frame(&mut self.buf, &self.limits)? {
                self.last_frame_size = FRAME_HEADER_SIZE + frame.body.len();
                return Ok(Some(frame));
            }
            // The header (if present) passed the limits, so its length may be
            // reserved; otherwise ask for at least a header's worth.
            let (wanted, room_enough) = match check_header(&self.buf, &self.limits)? {
                Some((_, frame_length)) => (frame_length, frame_length - self.buf.len()),
                // The next frame is likely the size of the last: with less
                // room than that, its start would be read here only to be
                // copied into the next buffer (a second read and a copy).
                None => (FRAME_HEADER_SIZE, self.spare_min.max(self.last_frame_size)),
            };
            // Frames split off earlier are slices of this buffer and keep all
            // of it alive (a follower keeps its appends' entries until a
            // snapshot), so the buffer is filled before another is taken:
            // a fresh one only when what is left cannot hold the rest of the
            // frame being read, or is too small to be worth a read.
            if self.buf.capacity() - self.buf.len() < room_enough {
                self.buf.reserve(wanted.saturating_sub(self.buf.len()).max(self.read_size));
            }
            let (result, buf) = stream.read_append(mem::take(&mut self.buf)).await;
            self.buf = buf;
            match result? {
                0 if self.buf.is_empty() => return Ok(None),
                0 => return Err(ConnError::UnexpectedEof { buffered: self.buf.len() }),
                _ => {}
            }
        }
    }

    /// The next frame, decoded.
    pub async fn next_frame<S: FrameIo + ?Sized>(&mut self, stream: &S) -> Result<Option<Frame>, ConnError> {
        match self.next(stream).await? {
            Some(raw) => Ok(Some(Frame::decode(raw)?)),
            None => Ok(None),
        }
    }
}

/// Accumulates encoded frames for one write: heads and short tails are copied
/// into one reusable buffer, long tails are queued as their own segments.
pub struct Coalescer {
    buf: BytesMut,
    segments: Vec<Bytes>,
    bytes: usize,
    frames: usize,
}

impl Default for Coalescer {
    fn default() -> Self {
        Coalescer::new()
    }
}

impl Coalescer {
    pub fn new() -> Coalescer {
        Coalescer {
            buf: BytesMut::with_capacity(READ_SIZE_DEFAULT),
            segments: Vec::with_capacity(WRITE_SEGMENTS_MAX),
            bytes: 0,
            frames: 0,
        }
    }

    /// Adds one frame: `encode` writes its head into the buffer and returns
    /// its tail.
    pub fn push(&mut self, encode: impl FnOnce(&mut BytesMut) -> Bytes) {
        let before = self.buf.len();
        let tail = encode(&mut self.buf);
        self.bytes += self.buf.len() - before + tail.len();
        self.frames += 1;
        if tail.len() <= TAIL_COPY_SIZE_MAX {
            self.buf.extend_from_slice(&tail);
        } else {
            if !self.buf.is_empty() {
                self.segments.push(self.buf.split().freeze());
            }
            self.segments.push(tail);
        }
    }

    /// Bytes waiting to be written.
    pub fn len_bytes(&self) -> usize {
        self.bytes
    }

    /// Frames waiting to be written.
    pub fn len_frames(&self) -> usize {
        self.frames
    }

    /// Whether one more frame might need more segments than one write takes.
    pub fn segments_full(&self) -> bool {
        self.segments.len() + 3 > WRITE_SEGMENTS_MAX
    }

    /// Writes everything accumulated, in order, with as few system calls as
    /// the kernel allows. Returns the frames written.
    pub async fn flush<S: FrameIo + ?Sized>(&mut self, stream: &S) -> io::Result<usize> {
        if !self.buf.is_empty() {
            self.segments.push(self.buf.split().freeze());
        }
        let (result, mut segments) = stream.write_segments(mem::take(&mut self.segments)).await;
        segments.clear();
        self.segments = segments;
        // Reclaims the buffer's storage once the frozen segments are gone.
        self.buf.reserve(READ_SIZE_DEFAULT);
        let frames = mem::replace(&mut self.frames, 0);
        self.bytes = 0;
        result.map(|()| frames)
    }
}

/// Writes one frame (cold paths: handshakes, refusals).
pub(crate) async fn write_frame<S: FrameIo + ?Sized>(stream: &S, frame: &Frame) -> io::Result<()> {
    let (result, _) = stream.write_segments(vec![frame.to_bytes()]).await;
    result
}

/// The calling side of the handshake: sends `handshake`, waits for the
/// acceptor's answer within `timeout`.
pub(crate) async fn initiate_handshake<S: FrameIo + ?Sized>(
    stream: &S,
    reader: &mut FrameReader,
    handshake: Handshake,
    timeout: Duration,
) -> Result<HandshakeAccept, HandshakeError> {
    let cluster_id = handshake.cluster_id;
    let frame = Frame { cluster_id, shard_id: 0, payload: Payload::Handshake(handshake) };
    let exchange = async {
        write_frame(stream, &frame).await?;
        let answer = match reader.next(stream).await {
            Ok(Some(raw)) => raw,
            Ok(None) | Err(ConnError::UnexpectedEof { .. }) => return Err(HandshakeError::Closed),
            Err(ConnError::Io(error)) => return Err(HandshakeError::Io(error)),
            Err(ConnError::Tls(error)) => return Err(HandshakeError::Tls(error)),
            Err(ConnError::Decode(error)) => return Err(HandshakeError::Decode(error)),
            Err(other) => return Err(HandshakeError::Io(io::Error::other(other.to_string()))),
        };
        match Frame::decode(answer)?.payload {
            Payload::HandshakeAccept(accept) => Ok(accept),
            Payload::HandshakeRefuse(refusal) => {
                Err(HandshakeError::Refused { reason: refusal.reason, message: refusal.message })
            }
            other => Err(HandshakeError::UnexpectedFrame { found: other.kind() }),
        }
    };
    tokio::time::timeout(timeout, exchange).await.map_err(|_| HandshakeError::TimedOut)?
}

/// How a caller protects its connection: TLS with this configuration, the
/// expected identity travelling in the server name (`crate::tls`).
#[derive(Clone)]
pub(crate) struct CallerTls {
    pub(crate) config: Arc<rustls::ClientConfig>,
    pub(crate) server_name: ServerName<'static>,
}

/// Why a call did not produce an accepted connection.
#[derive(Debug)]
pub(crate) enum CallError {
    Connect(io::Error),
    Handshake(HandshakeError),
}

/// The calling side of a connection: connect, TLS if asked, then the
/// handshake exchange; checks that the acceptor is `expected_node` when one
/// is given (by its certificate with TLS, and by its accept frame always).
/// `timeout` bounds the connect and, separately, TLS plus the handshake.
pub(crate) async fn call(
    addr: SocketAddr,
    tls: Option<CallerTls>,
    handshake: Handshake,
    expected_node: Option<NodeId>,
    limits: Limits,
    timeout: Duration,
    dead_peer_timeout: Option<Duration>,
) -> Result<(Stream, FrameReader, HandshakeAccept), CallError> {
    let tcp = connect(addr, timeout).await.map_err(CallError::Connect)?;
    if let Some(dead_peer_timeout) = dead_peer_timeout {
        detect_dead_peer(&tcp, dead_peer_timeout).map_err(CallError::Connect)?;
    }
    let stream = match tls {
        None => Stream::Plain(tcp),
        Some(CallerTls { config, server_name }) => {
            let session = rustls::ClientConnection::new(config, server_name)
                .map_err(|error| CallError::Handshake(HandshakeError::Tls(error)))?;
            Stream::Tls(Box::new(TlsStream::new(tcp, rustls::Connection::Client(session))))
        }
    };
    // The stream lives outside the timed exchange, so that a timeout can
    // shut it down: a read left in flight would otherwise hold the socket
    // open until the kernel gave up on it.
    let exchange = async {
        if let Stream::Tls(tls) = &stream {
            match tls.handshake().await {
                Ok(()) => {}
                Err(TlsHandshakeError::PlaintextAnswer) => return Err(plaintext_answer(tls).await),
                Err(TlsHandshakeError::Tls(error)) => {
                    return Err(match crate::tls::verify::server_identity_error(&error) {
                        Some(ServerIdentityError::WrongNode { expected, found }) => {
                            HandshakeError::WrongNode { expected: *expected, found: *found }
                        }
                        // In words: rustls shows its own error's cause with `{:?}`.
                        Some(other) => HandshakeError::ServerIdentity(other.to_string()),
                        None => HandshakeError::Tls(error),
                    });
                }
                Err(TlsHandshakeError::Closed) => return Err(HandshakeError::Closed),
                Err(TlsHandshakeError::Io(error)) => return Err(HandshakeError::from(error)),
                Err(TlsHandshakeError::PlaintextCaller) => unreachable!("a caller is not asked for TLS"),
            }
        }
        let mut reader = FrameReader::new(limits);
        let accept = initiate_handshake(&stream, &mut reader, handshake, timeout).await?;
        if let Some(expected) = expected_node.filter(|expected| *expected != accept.node_id) {
            return Err(HandshakeError::WrongNode { expected, found: accept.node_id });
        }
        Ok((reader, accept))
    };
    let result = tokio::time::timeout(timeout, exchange).await.unwrap_or(Err(HandshakeError::TimedOut));
    match result {
        Ok((reader, accept)) => Ok((stream, reader, accept)),
        Err(error) => {
            let _ = stream.shutdown(std::net::Shutdown::Both);
            Err(CallError::Handshake(error))
        }
    }
}

/// The acceptor answered our ClientHello with a plaintext frame: its
/// refusal (a plaintext listener, or one at its connection bound).
async fn plaintext_answer(stream: &TlsStream) -> HandshakeError {
    let received = stream.take_received();
    let mut reader = FrameReader::with_received(Limits { frame_size_max: HANDSHAKE_FRAME_SIZE_MAX }, &received);
    match reader.next(stream.tcp()).await {
        Ok(Some(raw)) => match Frame::decode(raw) {
            Ok(Frame { payload: Payload::HandshakeRefuse(refusal), .. }) => {
                HandshakeError::Refused { reason: refusal.reason, message: refusal.message }
            }
            Ok(other) => HandshakeError::UnexpectedFrame { found: other.payload.kind() },
            Err(error) => HandshakeError::Decode(error),
        },
        Ok(None) | Err(ConnError::UnexpectedEof { .. }) => HandshakeError::Closed,
        Err(ConnError::Decode(error)) => HandshakeError::Decode(error),
        Err(error) => HandshakeError::Io(io::Error::other(error.to_string())),
    }
}

/// Connects with a deadline and sets `TCP_NODELAY`: frames are already
/// coalesced, so Nagle's algorithm would only add latency.
pub(crate) async fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, format!("connect to {addr} timed out")))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Makes a connection to a host that vanished without a FIN or RST (power
/// loss, a partition) fail within about `dead_peer_timeout`, instead of after
/// TCP's default retransmission timeout of many minutes: unacknowledged
/// writes give up after `TCP_USER_TIMEOUT`, and keepalive probes notice a
/// silent peer on a connection that only reads.
pub(crate) fn detect_dead_peer(stream: &TcpStream, dead_peer_timeout: Duration) -> io::Result<()> {
    let fd = stream.as_raw_fd();
    let seconds = dead_peer_timeout.as_secs().clamp(3, i32::MAX as u64) as libc::c_int;
    let millis = dead_peer_timeout.as_millis().clamp(1, i32::MAX as u128) as libc::c_uint;
    set_option(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1)?;
    set_option(fd, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, seconds / 3)?;
    set_option(fd, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, (seconds / 6).max(1))?;
    set_option(fd, libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 3)?;
    set_option(fd, libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT, millis as libc::c_int)
}

fn set_option(fd: RawFd, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from a live local.
    let result = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get_option(fd: RawFd, level: libc::c_int, name: libc::c_int) -> libc::c_int {
        let mut value: libc::c_int = 0;
        let mut length = size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `length` bytes into a live local.
        let result = unsafe { libc::getsockopt(fd, level, name, (&mut value as *mut libc::c_int).cast(), &mut length) };
        assert_eq!(result, 0, "{}", io::Error::last_os_error());
        value
    }

    #[test]
    fn dead_peer_detection_sets_user_timeout_and_keepalive() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        tokio_uring::start(async {
            let stream = connect(addr, Duration::from_secs(5)).await.unwrap();
            detect_dead_peer(&stream, Duration::from_secs(15)).unwrap();
            let fd = stream.as_raw_fd();
            assert_eq!(get_option(fd, libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT), 15_000);
            assert_eq!(get_option(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE), 1);
            assert_eq!(get_option(fd, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE), 5);
            assert_eq!(get_option(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY), 1);
        });
    }
}
