//! The frame: a fixed 32-byte header followed by a kind-specific body.
//!
//! Every byte on a connection belongs to a frame. The header is a `zerocopy`
//! struct of little-endian fields (all align 1), so it is read in place from
//! any offset of the receive buffer without copying. Its own crc32c is checked
//! before any of its lengths is trusted, and the body length is checked against
//! [`Limits::frame_size_max`] before a single byte is reserved for the body.
//! The byte-level layout is in `net/PROTOCOL.md`.

use bytes::{BufMut, Bytes, BytesMut};
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::error::DecodeError;

/// "RNET" in ASCII as the first four bytes of every frame. It makes a stream
/// that is not this protocol (an HTTP probe, a desynchronised reader) fail on
/// the first frame instead of being read as a huge length.
pub const FRAME_MAGIC: u32 = u32::from_le_bytes(*b"RNET");
/// The protocol version this build speaks. A peer with another version is
/// refused during the handshake with a typed refusal.
pub const PROTOCOL_VERSION: u8 = 2;
/// Size of [`FrameHeader`] in bytes.
pub const FRAME_HEADER_SIZE: usize = 32;
/// The default bound on a whole frame (header and body). Large enough for an
/// AppendEntries that carries a full default-sized entry batch and for an
/// answer that carries the largest value the key-value store keeps
/// ([`crate::kv::VALUE_SIZE_MAX`], reached by `APPEND`: with a bound of 16
/// MiB for the whole frame such a value was written but never read back),
/// small enough that a hostile length cannot make a reader reserve much
/// memory.
pub const FRAME_SIZE_MAX_DEFAULT: usize = crate::kv::VALUE_SIZE_MAX + (64 << 10);

/// The fixed header that opens every frame.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct FrameHeader {
    /// [`FRAME_MAGIC`].
    pub magic: U32,
    /// [`PROTOCOL_VERSION`].
    pub version: u8,
    /// A [`FrameKind`] value.
    pub kind: u8,
    /// Reserved; zero in versions 1 and 2.
    pub flags: U16,
    /// The cluster this frame belongs to; a frame for another cluster is refused.
    pub cluster_id: U64,
    /// The Raft group (shard) the frame is for; 0 for connection-level frames.
    pub shard_id: U32,
    /// Bytes of body after this header.
    pub body_length: U32,
    /// crc32c of the body bytes.
    pub body_crc: U32,
    /// crc32c of header bytes 0..28 (every field above).
    pub header_crc: U32,
}

const _: () = assert!(size_of::<FrameHeader>() == FRAME_HEADER_SIZE);
const _: () = assert!(align_of::<FrameHeader>() == 1);

/// The bytes of the header that its own checksum covers.
const HEADER_CRC_COVERS: usize = FRAME_HEADER_SIZE - 4;

/// What a frame's body is. The numeric values are the wire format's `kind`
/// byte and are never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameKind {
    Handshake = 1,
    HandshakeAccept = 2,
    HandshakeRefuse = 3,
    PreVote = 16,
    PreVoteResponse = 17,
    Vote = 18,
    VoteResponse = 19,
    Append = 20,
    AppendResponse = 21,
    Heartbeat = 22,
    HeartbeatResponse = 23,
    InstallSnapshot = 24,
    InstallSnapshotResponse = 25,
    TimeoutNow = 26,
    ReadIndex = 27,
    ReadIndexResponse = 28,
    Propose = 29,
    ClientWrite = 64,
    ClientRead = 65,
    ClientAdmin = 66,
    ClientStatus = 67,
    ClientOpenSession = 68,
    ClientCloseSession = 69,
    ClientResponse = 80,
}

impl FrameKind {
    /// Every kind, for tests and documentation.
    pub const ALL: [FrameKind; 24] = [
        FrameKind::Handshake,
        FrameKind::HandshakeAccept,
        FrameKind::HandshakeRefuse,
        FrameKind::PreVote,
        FrameKind::PreVoteResponse,
        FrameKind::Vote,
        FrameKind::VoteResponse,
        FrameKind::Append,
        FrameKind::AppendResponse,
        FrameKind::Heartbeat,
        FrameKind::HeartbeatResponse,
        FrameKind::InstallSnapshot,
        FrameKind::InstallSnapshotResponse,
        FrameKind::TimeoutNow,
        FrameKind::ReadIndex,
        FrameKind::ReadIndexResponse,
        FrameKind::Propose,
        FrameKind::ClientWrite,
        FrameKind::ClientRead,
        FrameKind::ClientAdmin,
        FrameKind::ClientStatus,
        FrameKind::ClientOpenSession,
        FrameKind::ClientCloseSession,
        FrameKind::ClientResponse,
    ];

    /// The kind for a header byte, or `None` for an unknown value.
    pub fn from_u8(value: u8) -> Option<FrameKind> {
        FrameKind::ALL.iter().copied().find(|kind| *kind as u8 == value)
    }

    /// Whether frames of this kind carry a Raft message between peers.
    pub fn is_raft(self) -> bool {
        (16..64).contains(&(self as u8))
    }

    /// Whether frames of this kind are a client's request.
    pub fn is_client_request(self) -> bool {
        (64..80).contains(&(self as u8))
    }
}

/// Bounds a reader enforces on what a remote end claims.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The largest frame, header included, a reader accepts. A longer claimed
    /// length is a [`DecodeError::TooLarge`] before anything is allocated.
    pub frame_size_max: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { frame_size_max: FRAME_SIZE_MAX_DEFAULT }
    }
}

impl Limits {
    /// The largest body a frame may carry under these limits.
    pub fn body_size_max(&self) -> usize {
        self.frame_size_max.saturating_sub(FRAME_HEADER_SIZE).min(u32::MAX as usize)
    }
}

/// A frame whose header and body checksums were verified, body not yet parsed.
/// `body` is a slice of the receive buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawFrame {
    pub kind: FrameKind,
    pub cluster_id: u64,
    pub shard_id: u32,
    pub body: Bytes,
    /// The body's crc32c, verified against the body's bytes. Lets a body
    /// parser check an embedded checksum (an entry batch's) without a second
    /// pass over the bytes.
    pub body_crc: u32,
}

/// Validates the header at the start of `buf` and returns it with the whole
/// frame's length, or `Ok(None)` if fewer than [`FRAME_HEADER_SIZE`] bytes are
/// there. The claimed body length is checked against `limits` here, so a
/// caller may reserve the returned length.
pub fn check_header<'a>(buf: &'a [u8], limits: &Limits) -> Result<Option<(&'a FrameHeader, usize)>, DecodeError> {
    let Ok((header, _)) = FrameHeader::ref_from_prefix(buf) else {
        return Ok(None);
    };
    if header.magic.get() != FRAME_MAGIC {
        return Err(DecodeError::BadMagic { found: header.magic.get() });
    }
    let computed = crc32c::crc32c(&buf[..HEADER_CRC_COVERS]);
    if computed != header.header_crc.get() {
        return Err(DecodeError::HeaderChecksum { stored: header.header_crc.get(), computed });
    }
    if header.version != PROTOCOL_VERSION {
        return Err(DecodeError::BadVersion { found: header.version });
    }
    if FrameKind::from_u8(header.kind).is_none() {
        return Err(DecodeError::UnknownKind { found: header.kind });
    }
    if header.flags.get() != 0 {
        return Err(DecodeError::BadFlags { found: header.flags.get() });
    }
    let body_length = header.body_length.get() as usize;
    if body_length > limits.body_size_max() {
        return Err(DecodeError::TooLarge { length: FRAME_HEADER_SIZE + body_length, limit: limits.frame_size_max });
    }
    Ok(Some((header, FRAME_HEADER_SIZE + body_length)))
}

/// Splits the first complete frame off `buf`, verifying both checksums, or
/// returns `Ok(None)` if `buf` does not yet hold a whole frame. The body is a
/// slice of `buf`'s storage: no payload byte is copied.
pub fn split_frame(buf: &mut BytesMut, limits: &Limits) -> Result<Option<RawFrame>, DecodeError> {
    let Some((header, frame_length)) = check_header(buf, limits)? else {
        return Ok(None);
    };
    if buf.len() < frame_length {
        return Ok(None);
    }
    let kind = FrameKind::from_u8(header.kind).expect("checked by check_header");
    let cluster_id = header.cluster_id.get();
    let shard_id = header.shard_id.get();
    let stored = header.body_crc.get();
    let computed = crc32c::crc32c(&buf[FRAME_HEADER_SIZE..frame_length]);
    if stored != computed {
        return Err(DecodeError::BodyChecksum { stored, computed });
    }
    let mut frame = buf.split_to(frame_length).freeze();
    let body = frame.split_off(FRAME_HEADER_SIZE);
    Ok(Some(RawFrame { kind, cluster_id, shard_id, body, body_crc: stored }))
}

/// Like [`split_frame`] for a contiguous, immutable buffer: decodes the frame
/// at the start of `buf` and returns it with the bytes it took.
pub fn decode_raw(buf: &Bytes, limits: &Limits) -> Result<(RawFrame, usize), DecodeError> {
    let Some((header, frame_length)) = check_header(buf, limits)? else {
        return Err(DecodeError::Truncated { needed: FRAME_HEADER_SIZE, available: buf.len() });
    };
    if buf.len() < frame_length {
        return Err(DecodeError::Truncated { needed: frame_length, available: buf.len() });
    }
    let kind = FrameKind::from_u8(header.kind).expect("checked by check_header");
    let stored = header.body_crc.get();
    let computed = crc32c::crc32c(&buf[FRAME_HEADER_SIZE..frame_length]);
    if stored != computed {
        return Err(DecodeError::BodyChecksum { stored, computed });
    }
    let frame = RawFrame {
        kind,
        cluster_id: header.cluster_id.get(),
        shard_id: header.shard_id.get(),
        body: buf.slice(FRAME_HEADER_SIZE..frame_length),
        body_crc: stored,
    };
    Ok((frame, frame_length))
}

/// Where a frame is being encoded: the header's position in the output
/// buffer, so [`FrameWriter::finish`] can fill in lengths and checksums once
/// the body is written.
pub(crate) struct FrameWriter {
    start: usize,
    kind: FrameKind,
    cluster_id: u64,
    shard_id: u32,
}

impl FrameWriter {
    /// Reserves a header in `out`; the caller then appends the body's head.
    pub(crate) fn begin(out: &mut BytesMut, kind: FrameKind, cluster_id: u64, shard_id: u32) -> FrameWriter {
        let start = out.len();
        out.put_bytes(0, FRAME_HEADER_SIZE);
        FrameWriter { start, kind, cluster_id, shard_id }
    }

    /// Completes the header. The body is the bytes appended to `out` since
    /// [`FrameWriter::begin`] followed by `tail`, which the caller sends right
    /// after `out`'s bytes without copying it.
    ///
    /// `tail_crc`, when given, is the crc32c of `tail`, already known (an
    /// entry batch carries one): the body crc is then combined from it in
    /// time logarithmic in the tail's length instead of reading the tail, so
    /// encoding an AppendEntries does not grow with its payload.
    pub(crate) fn finish(self, out: &mut BytesMut, tail: &[u8], tail_crc: Option<u32>) {
        let head = &out[self.start + FRAME_HEADER_SIZE..];
        let body_length = head.len() + tail.len();
        assert!(body_length <= u32::MAX as usize, "frame body of {body_length} bytes does not fit the format");
        let head_crc = crc32c::crc32c(head);
        let body_crc = match tail_crc {
            Some(tail_crc) => {
                debug_assert_eq!(tail_crc, crc32c::crc32c(tail), "stale tail crc");
                crate::crc::combine(head_crc, tail_crc, tail.len())
            }
            None => crc32c::crc32c_append(head_crc, tail),
        };
        let mut header = FrameHeader {
            magic: U32::new(FRAME_MAGIC),
            version: PROTOCOL_VERSION,
            kind: self.kind as u8,
            flags: U16::new(0),
            cluster_id: U64::new(self.cluster_id),
            shard_id: U32::new(self.shard_id),
            body_length: U32::new(body_length as u32),
            body_crc: U32::new(body_crc),
            header_crc: U32::new(0),
        };
        header.header_crc = U32::new(crc32c::crc32c(&header.as_bytes()[..HEADER_CRC_COVERS]));
        out[self.start..self.start + FRAME_HEADER_SIZE].copy_from_slice(header.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn empty_frame(kind: FrameKind) -> BytesMut {
        let mut out = BytesMut::new();
        let writer = FrameWriter::begin(&mut out, kind, 7, 3);
        writer.finish(&mut out, &[], None);
        out
    }

    #[test]
    fn kinds_round_trip_through_their_byte() {
        for kind in FrameKind::ALL {
            assert_eq!(FrameKind::from_u8(kind as u8), Some(kind));
        }
        assert_eq!(FrameKind::from_u8(0), None);
    }

    #[test]
    fn header_crc_catches_a_flipped_length_bit() {
        let mut frame = empty_frame(FrameKind::TimeoutNow);
        frame[21] ^= 0x40;
        let err = split_frame(&mut frame, &Limits::default()).unwrap_err();
        assert!(matches!(err, DecodeError::HeaderChecksum { .. }), "{err}");
    }

    #[test]
    fn partial_header_and_partial_body_wait_for_more() {
        let mut out = BytesMut::new();
        let writer = FrameWriter::begin(&mut out, FrameKind::ClientWrite, 1, 0);
        out.put_slice(&[9; 40]);
        writer.finish(&mut out, &[], None);
        let whole = out.clone();
        let mut partial = BytesMut::from(&whole[..20]);
        assert_eq!(split_frame(&mut partial, &Limits::default()).unwrap(), None);
        let mut partial = BytesMut::from(&whole[..50]);
        assert_eq!(split_frame(&mut partial, &Limits::default()).unwrap(), None);
        let mut full = whole.clone();
        let frame = split_frame(&mut full, &Limits::default()).unwrap().unwrap();
        assert_eq!(frame.body.len(), 40);
        assert!(full.is_empty());
    }

    #[test]
    fn length_over_the_limit_is_refused_from_the_header_alone() {
        let mut out = BytesMut::new();
        let writer = FrameWriter::begin(&mut out, FrameKind::ClientWrite, 1, 0);
        out.put_slice(&[0; 100]);
        writer.finish(&mut out, &[], None);
        // Only the header is present: the verdict must not need the body.
        let mut header_only = BytesMut::from(&out[..FRAME_HEADER_SIZE]);
        let limits = Limits { frame_size_max: 64 };
        let err = split_frame(&mut header_only, &limits).unwrap_err();
        assert_eq!(err, DecodeError::TooLarge { length: 132, limit: 64 });
    }
}
