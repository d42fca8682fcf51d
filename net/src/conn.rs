//! A framed connection's two halves: a reader that splits frames out of a
//! reusable receive buffer, and a coalescing writer that turns many queued
//! frames into one (vectored) write. Both keep tokio-uring's ownership shape:
//! buffers move into each operation and come back with its result.

use std::io;
use std::mem;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio_uring::buf::BoundedBuf;
use tokio_uring::net::TcpStream;

use crate::codec::{Frame, Payload};
use crate::error::DecodeError;
use crate::frame::{check_header, split_frame, FrameKind, Limits, RawFrame, FRAME_HEADER_SIZE};
use crate::handshake::{Handshake, HandshakeAccept, HandshakeError};

/// Bytes asked of the kernel per read when no larger frame is pending.
pub const READ_SIZE_DEFAULT: usize = 64 << 10;
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
    Io(#[from] io::Error),
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

/// Reads frames from a stream into one reusable buffer. Each frame's body is
/// split off the buffer (`BytesMut::split_to`), so payloads are slices of the
/// bytes the kernel wrote, and the buffer's spare capacity serves the next
/// read. A new allocation happens only when frames still hold the old one.
pub struct FrameReader {
    buf: BytesMut,
    limits: Limits,
    read_size: usize,
}

impl FrameReader {
    pub fn new(limits: Limits) -> FrameReader {
        FrameReader { buf: BytesMut::with_capacity(READ_SIZE_DEFAULT), limits, read_size: READ_SIZE_DEFAULT }
    }

    /// Changes the limits for the frames that follow (the handshake is read
    /// under tighter limits than an authenticated connection's frames).
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// The next frame, checksums verified; `Ok(None)` on a clean close at a
    /// frame boundary.
    pub async fn next(&mut self, stream: &TcpStream) -> Result<Option<RawFrame>, ConnError> {
        loop {
            if let Some(frame) = split_frame(&mut self.buf, &self.limits)? {
                return Ok(Some(frame));
            }
            // The header (if present) passed the limits, so its length may be
            // reserved; otherwise ask for at least a header's worth.
            let wanted = match check_header(&self.buf, &self.limits)? {
                Some((_, frame_length)) => frame_length,
                None => FRAME_HEADER_SIZE,
            };
            self.buf.reserve(wanted.saturating_sub(self.buf.len()).max(self.read_size));
            let start = self.buf.len();
            let end = self.buf.capacity();
            let buf = mem::take(&mut self.buf);
            let (result, slice) = stream.read(buf.slice(start..end)).await;
            self.buf = slice.into_inner();
            match result? {
                0 if self.buf.is_empty() => return Ok(None),
                0 => return Err(ConnError::UnexpectedEof { buffered: self.buf.len() }),
                _ => {}
            }
        }
    }

    /// The next frame, decoded.
    pub async fn next_frame(&mut self, stream: &TcpStream) -> Result<Option<Frame>, ConnError> {
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
    pub async fn flush(&mut self, stream: &TcpStream) -> io::Result<usize> {
        if !self.buf.is_empty() {
            self.segments.push(self.buf.split().freeze());
        }
        let mut segments = mem::take(&mut self.segments);
        let result = write_all_segments(stream, &mut segments).await;
        segments.clear();
        self.segments = segments;
        // Reclaims the buffer's storage once the frozen segments are gone.
        self.buf.reserve(READ_SIZE_DEFAULT);
        let frames = mem::replace(&mut self.frames, 0);
        self.bytes = 0;
        result.map(|()| frames)
    }
}

/// Writes every segment in order, resuming after partial writes.
async fn write_all_segments(stream: &TcpStream, segments: &mut Vec<Bytes>) -> io::Result<()> {
    while !segments.is_empty() {
        let (result, back) = stream.writev(mem::take(segments)).await;
        *segments = back;
        let mut written = result?;
        if written == 0 {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "the socket accepted no bytes"));
        }
        let mut consumed = 0;
        for segment in segments.iter_mut() {
            if written >= segment.len() {
                written -= segment.len();
                consumed += 1;
            } else {
                segment.advance(written);
                break;
            }
        }
        segments.drain(..consumed);
    }
    Ok(())
}

/// Writes one frame (cold paths: handshakes, refusals).
pub(crate) async fn write_frame(stream: &TcpStream, frame: &Frame) -> io::Result<()> {
    let (result, _) = stream.write_all(frame.to_bytes()).await;
    result
}

/// The calling side of the handshake: sends `handshake`, waits for the
/// acceptor's answer within `timeout`.
pub(crate) async fn initiate_handshake(
    stream: &TcpStream,
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
