//! Frame bodies: how each kind of frame lays out its fields after the header.
//!
//! Each body starts with a fixed-layout `zerocopy` head read in place, and may
//! end with a variable tail (an entry batch, snapshot data, a command) that
//! decodes to a `Bytes` slice of the receive buffer. Encoding mirrors that: the
//! head is written into the caller's output buffer and the tail is handed back
//! as `Bytes` so a writer can send it with a vectored write instead of copying.

pub(crate) mod client;
pub(crate) mod message;

use bytes::{Bytes, BytesMut};
use engine::Message;
use zerocopy::{FromBytes, Immutable, KnownLayout, Unaligned};

use crate::client::{ClientRequest, ClientResponse};
use crate::error::DecodeError;
use crate::frame::{decode_raw, FrameKind, FrameWriter, Limits, RawFrame};
use crate::handshake::{Handshake, HandshakeAccept, HandshakeRefusal};

/// What a frame carries, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Payload {
    Handshake(Handshake),
    HandshakeAccept(HandshakeAccept),
    HandshakeRefuse(HandshakeRefusal),
    Raft(Message),
    Request(ClientRequest),
    Response(ClientResponse),
}

/// A decoded frame: the routing fields of its header and its payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub cluster_id: u64,
    pub shard_id: u32,
    pub payload: Payload,
}

impl Payload {
    /// The frame kind this payload is sent as.
    pub fn kind(&self) -> FrameKind {
        match self {
            Payload::Handshake(_) => FrameKind::Handshake,
            Payload::HandshakeAccept(_) => FrameKind::HandshakeAccept,
            Payload::HandshakeRefuse(_) => FrameKind::HandshakeRefuse,
            Payload::Raft(message) => message::kind_of(message),
            Payload::Request(request) => client::request_kind(request),
            Payload::Response(_) => FrameKind::ClientResponse,
        }
    }
}

impl Frame {
    /// Writes the header and the body's head into `out` and returns the
    /// body's tail, which must be sent right after `out`'s new bytes. The tail
    /// shares storage with the payload (no copy).
    pub fn encode_into(&self, out: &mut BytesMut) -> Bytes {
        match &self.payload {
            Payload::Raft(message) => encode_message(self.cluster_id, self.shard_id, message, out),
            Payload::Request(request) => encode_request(self.cluster_id, self.shard_id, request, out),
            Payload::Response(response) => encode_response(self.cluster_id, self.shard_id, response, out),
            Payload::Handshake(handshake) => {
                let writer = FrameWriter::begin(out, FrameKind::Handshake, self.cluster_id, self.shard_id);
                handshake.encode_body(out);
                writer.finish(out, &[], None);
                Bytes::new()
            }
            Payload::HandshakeAccept(accept) => {
                let writer = FrameWriter::begin(out, FrameKind::HandshakeAccept, self.cluster_id, self.shard_id);
                accept.encode_body(out);
                writer.finish(out, &[], None);
                Bytes::new()
            }
            Payload::HandshakeRefuse(refusal) => {
                let writer = FrameWriter::begin(out, FrameKind::HandshakeRefuse, self.cluster_id, self.shard_id);
                refusal.encode_body(out);
                writer.finish(out, &[], None);
                Bytes::new()
            }
        }
    }

    /// The whole frame as one contiguous buffer. Copies the tail: meant for
    /// tests, tools and cold paths; the transport uses [`Frame::encode_into`].
    pub fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::new();
        let tail = self.encode_into(&mut out);
        out.extend_from_slice(&tail);
        out.freeze()
    }

    /// Parses the body of a checksum-verified raw frame. Payload bytes are
    /// slices of `raw.body`.
    pub fn decode(raw: RawFrame) -> Result<Frame, DecodeError> {
        let payload = match raw.kind {
            FrameKind::Handshake => Payload::Handshake(Handshake::decode_body(&raw.body)?),
            FrameKind::HandshakeAccept => Payload::HandshakeAccept(HandshakeAccept::decode_body(&raw.body)?),
            FrameKind::HandshakeRefuse => Payload::HandshakeRefuse(HandshakeRefusal::decode_body(&raw.body)?),
            FrameKind::ClientResponse => Payload::Response(client::decode_response(&raw.body)?),
            kind if kind.is_raft() => Payload::Raft(message::decode(kind, &raw.body, raw.body_crc)?),
            kind => {
                debug_assert!(kind.is_client_request());
                Payload::Request(client::decode_request(kind, &raw.body)?)
            }
        };
        Ok(Frame { cluster_id: raw.cluster_id, shard_id: raw.shard_id, payload })
    }

    /// Decodes the frame at the start of a contiguous buffer and returns it
    /// with the number of bytes it took.
    pub fn decode_bytes(buf: &Bytes, limits: &Limits) -> Result<(Frame, usize), DecodeError> {
        let (raw, length) = decode_raw(buf, limits)?;
        Ok((Frame::decode(raw)?, length))
    }
}

/// Encodes a Raft message as one frame: header and body head into `out`, the
/// returned tail (entry batch or snapshot data, zero-copy) to follow it.
pub fn encode_message(cluster_id: u64, shard_id: u32, message: &Message, out: &mut BytesMut) -> Bytes {
    let writer = FrameWriter::begin(out, message::kind_of(message), cluster_id, shard_id);
    let tail = message::encode_body(message, out);
    writer.finish(out, &tail, message::tail_crc(message));
    tail
}

/// Encodes a client request as one frame; see [`encode_message`].
pub fn encode_request(cluster_id: u64, shard_id: u32, request: &ClientRequest, out: &mut BytesMut) -> Bytes {
    let writer = FrameWriter::begin(out, client::request_kind(request), cluster_id, shard_id);
    let tail = client::encode_request_body(request, out);
    writer.finish(out, &tail, None);
    tail
}

/// Encodes a client response as one frame; see [`encode_message`].
pub fn encode_response(cluster_id: u64, shard_id: u32, response: &ClientResponse, out: &mut BytesMut) -> Bytes {
    let writer = FrameWriter::begin(out, FrameKind::ClientResponse, cluster_id, shard_id);
    let tail = client::encode_response_body(response, out);
    writer.finish(out, &tail, None);
    tail
}

/// Reads a body front to back. Every read is bounds-checked and turns a short
/// body into a typed error; nothing is allocated from a claimed count before
/// the bytes for it are known to be present.
pub(crate) struct BodyReader<'a> {
    body: &'a Bytes,
    offset: usize,
    kind: FrameKind,
}

impl<'a> BodyReader<'a> {
    pub(crate) fn new(kind: FrameKind, body: &'a Bytes) -> BodyReader<'a> {
        BodyReader { body, offset: 0, kind }
    }

    /// The next fixed-layout head, read in place.
    pub(crate) fn fixed<T: FromBytes + KnownLayout + Immutable + Unaligned>(&mut self) -> Result<&'a T, DecodeError> {
        let rest: &'a [u8] = &self.body[self.offset..];
        let (value, _) = T::ref_from_prefix(rest).map_err(|_| DecodeError::BodyTooShort {
            kind: self.kind,
            needed: self.offset + size_of::<T>(),
            available: self.body.len(),
        })?;
        self.offset += size_of::<T>();
        Ok(value)
    }

    /// The next `length` bytes as a slice of the body.
    pub(crate) fn bytes(&mut self, length: usize) -> Result<Bytes, DecodeError> {
        if length > self.remaining() {
            return Err(DecodeError::BodyTooShort {
                kind: self.kind,
                needed: self.offset.saturating_add(length),
                available: self.body.len(),
            });
        }
        let slice = self.body.slice(self.offset..self.offset + length);
        self.offset += length;
        Ok(slice)
    }

    /// `count` little-endian u64s. The count is checked against the bytes
    /// present before the vector is allocated.
    pub(crate) fn u64_list(&mut self, count: usize) -> Result<Vec<u64>, DecodeError> {
        let length =
            count.checked_mul(8).filter(|length| *length <= self.remaining()).ok_or(DecodeError::BodyTooShort {
                kind: self.kind,
                needed: self.offset.saturating_add(count.saturating_mul(8)),
                available: self.body.len(),
            })?;
        let raw = &self.body[self.offset..self.offset + length];
        self.offset += length;
        Ok(raw.chunks_exact(8).map(|chunk| u64::from_le_bytes(chunk.try_into().expect("8-byte chunk"))).collect())
    }

    /// Everything after the current position, as a slice of the body.
    pub(crate) fn rest(&mut self) -> Bytes {
        let slice = self.body.slice(self.offset..);
        self.offset = self.body.len();
        slice
    }

    /// The remaining bytes as UTF-8 text.
    pub(crate) fn rest_utf8(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let rest = self.rest();
        String::from_utf8(rest.to_vec()).map_err(|_| self.bad(field, "not valid UTF-8"))
    }

    pub(crate) fn remaining(&self) -> usize {
        self.body.len() - self.offset
    }

    /// Refuses bytes after the last field, so every body has one encoding.
    pub(crate) fn finish(&self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            count => Err(DecodeError::TrailingBytes { kind: self.kind, count }),
        }
    }

    pub(crate) fn bad(&self, field: &'static str, reason: &'static str) -> DecodeError {
        DecodeError::BadField { kind: self.kind, field, reason }
    }

    /// A wire boolean: exactly 0 or 1.
    pub(crate) fn flag(&self, value: u8, field: &'static str) -> Result<bool, DecodeError> {
        match value {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(self.bad(field, "boolean is neither 0 nor 1")),
        }
    }

    /// Reserved bytes must be zero so a later version can give them meaning.
    pub(crate) fn reserved(&self, bytes: &[u8]) -> Result<(), DecodeError> {
        if bytes.iter().all(|byte| *byte == 0) {
            Ok(())
        } else {
            Err(self.bad("reserved", "reserved bytes are not zero"))
        }
    }
}
