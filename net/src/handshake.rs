//! The handshake: the first frame on every connection (inside TLS when the
//! listener speaks TLS) says who is calling (cluster, node, role, protocol
//! version) and may carry a token. The acceptor checks it against the
//! caller's certificate and its credentials (`crate::auth`) and answers with
//! an accept frame, or with a typed refusal and a close, so a misconfigured
//! node learns why it was turned away.

use bytes::{BufMut, Bytes, BytesMut};
use engine::NodeId;
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::codec::BodyReader;
use crate::error::DecodeError;
use crate::frame::FrameKind;

/// The longest authentication token accepted. Tokens are secrets from
/// configuration (a peer token, or a client's per-user token); the bound keeps
/// a hostile handshake small.
pub const TOKEN_SIZE_MAX: usize = 1024;

/// The largest frame read before a caller has been authenticated: a
/// handshake with the longest token fits easily, and a stranger cannot make
/// the acceptor reserve more than this.
pub const HANDSHAKE_FRAME_SIZE_MAX: usize = 4 << 10;

/// Who opens a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Role {
    /// Another node of the cluster: the connection carries Raft messages.
    Peer = 1,
    /// A client: the connection carries requests and their responses.
    Client = 2,
}

/// The first frame a connecting side sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handshake {
    pub cluster_id: u64,
    /// The caller's node id (peers) or 0 (clients).
    pub node_id: NodeId,
    pub role: Role,
    pub protocol_version: u16,
    /// A secret: the peer token (peers without TLS, or with TLS when the
    /// node also asks for one), a client's per-user token, or empty when a
    /// certificate alone authenticates the caller.
    pub token: Bytes,
    /// Peers: which history of the cluster the caller's data continues
    /// ([`History`]). Clients send 0. On the wire only when not 0 (8 bytes
    /// after the token), so nodes that never restored a backup speak the
    /// handshake of the versions before it.
    pub history: History,
}

/// Which history of a cluster a node's data continues: the one that began
/// when its first nodes started empty ([`History::FRESH`]), or the one a
/// backup began (`node restore` names it after the backup, so every node
/// restored from the same backup has the same). Peers of different
/// histories refuse each other's connections: otherwise a node restored
/// alone, started after empty nodes had bootstrapped a cluster of their own
/// and acknowledged writes, would be elected with its longer log and its
/// snapshot would replace those writes on every node. A node that joins
/// takes the history of the cluster it joins.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct History(pub u64);

impl History {
    /// Started empty: every node before restores existed.
    pub const FRESH: History = History(0);
}

impl std::fmt::Display for History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            0 => f.write_str("the history of a cluster that started empty"),
            id => write!(f, "the history restored from backup {id:016x}"),
        }
    }
}

/// The acceptor's positive answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandshakeAccept {
    /// The acceptor's node id, so a client learns whom it reached.
    pub node_id: NodeId,
    pub protocol_version: u16,
    /// The acceptor's shard count (0: not said), so a client can route a
    /// key to its shard (`crate::kv::shard_for_key`).
    pub shards: u32,
}

/// Why a handshake was refused. The numeric values are the wire format's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RefusalReason {
    /// The caller belongs to another cluster.
    ClusterMismatch = 1,
    /// The caller speaks a protocol version this node does not.
    VersionUnsupported = 2,
    /// The token is wrong.
    BadToken = 3,
    /// The listener does not take connections of the caller's role.
    RoleNotAccepted = 4,
    /// The first frame was not a well-formed handshake.
    Malformed = 5,
    /// The listener speaks TLS and the caller sent a plaintext handshake.
    /// Sent in plaintext, before any TLS.
    TlsRequired = 6,
    /// The listener speaks plaintext and the caller opened with a TLS
    /// ClientHello. Sent in plaintext.
    TlsUnavailable = 7,
    /// The caller's certificate does not name what its handshake claims:
    /// another node id, another cluster, or a client certificate on the peer
    /// listener (and the reverse).
    IdentityMismatch = 8,
    /// The listener is at its connection bound (`connections_max`). Sent in
    /// plaintext right after the accept, before any TLS; retry later or
    /// elsewhere.
    Overloaded = 9,
    /// The caller's data continues another history of the cluster than
    /// this node's ([`History`]): one was restored from a backup that the
    /// other was not, or from another backup.
    OtherHistory = 10,
    /// The caller is a node removed from the cluster: it takes no part any
    /// more (ids are never reused).
    Removed = 11,
}

impl RefusalReason {
    /// Every reason, in wire order.
    pub const ALL: [RefusalReason; 11] = [
        RefusalReason::ClusterMismatch,
        RefusalReason::VersionUnsupported,
        RefusalReason::BadToken,
        RefusalReason::RoleNotAccepted,
        RefusalReason::Malformed,
        RefusalReason::TlsRequired,
        RefusalReason::TlsUnavailable,
        RefusalReason::IdentityMismatch,
        RefusalReason::Overloaded,
        RefusalReason::OtherHistory,
        RefusalReason::Removed,
    ];

    pub fn from_u8(value: u8) -> Option<RefusalReason> {
        match value {
            1 => Some(RefusalReason::ClusterMismatch),
            2 => Some(RefusalReason::VersionUnsupported),
            3 => Some(RefusalReason::BadToken),
            4 => Some(RefusalReason::RoleNotAccepted),
            5 => Some(RefusalReason::Malformed),
            6 => Some(RefusalReason::TlsRequired),
            7 => Some(RefusalReason::TlsUnavailable),
            8 => Some(RefusalReason::IdentityMismatch),
            9 => Some(RefusalReason::Overloaded),
            10 => Some(RefusalReason::OtherHistory),
            11 => Some(RefusalReason::Removed),
            _ => None,
        }
    }
}

/// The acceptor's negative answer; the connection closes after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandshakeRefusal {
    pub reason: RefusalReason,
    /// A human-readable explanation for the caller's log.
    pub message: String,
}

/// A handshake that failed, on either side.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("handshake refused by the remote end ({reason:?}): {message}")]
    Refused { reason: RefusalReason, message: String },
    #[error("handshake rejected ({reason:?}): {message}")]
    Rejected { reason: RefusalReason, message: String },
    #[error("the remote end sent {found:?} where a handshake frame was expected")]
    UnexpectedFrame { found: FrameKind },
    #[error("bad handshake frame: {0}")]
    Decode(#[from] DecodeError),
    #[error("connection closed during the handshake")]
    Closed,
    #[error("handshake timed out")]
    TimedOut,
    /// The TLS handshake failed, or the remote end sent a TLS alert (an
    /// untrusted, expired or wrongly named certificate on either side).
    #[error("TLS: {0}")]
    Tls(rustls::Error),
    /// The acceptor's certificate is valid but names someone else (another
    /// cluster, or a client): why, in words.
    #[error("TLS: {0}")]
    ServerIdentity(String),
    /// The remote end authenticated as another node than the one dialled
    /// (its certificate, or without TLS its accept frame, names `found`).
    #[error("reached node {found} where node {expected} was dialled")]
    WrongNode { expected: NodeId, found: NodeId },
    #[error("I/O error during the handshake: {0}")]
    Io(std::io::Error),
}

impl From<std::io::Error> for HandshakeError {
    /// Keeps a TLS error that travelled inside an I/O error typed.
    fn from(error: std::io::Error) -> HandshakeError {
        match crate::stream::tls_error(&error) {
            Some(tls) => HandshakeError::Tls(tls),
            None => HandshakeError::Io(error),
        }
    }
}

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct HandshakeBody {
    cluster_id: U64,
    node_id: U64,
    protocol_version: U16,
    role: u8,
    reserved: u8,
    token_length: U32,
}

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct AcceptBody {
    node_id: U64,
    protocol_version: U16,
    reserved: [u8; 2],
    shards: U32,
}

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct RefuseBody {
    reason: u8,
    reserved: [u8; 7],
}

const _: () = assert!(size_of::<HandshakeBody>() == 24);
const _: () = assert!(size_of::<AcceptBody>() == 16);
const _: () = assert!(size_of::<RefuseBody>() == 8);

impl Handshake {
    pub(crate) fn encode_body(&self, out: &mut BytesMut) {
        assert!(self.token.len() <= TOKEN_SIZE_MAX, "token longer than TOKEN_SIZE_MAX");
        let body = HandshakeBody {
            cluster_id: U64::new(self.cluster_id),
            node_id: U64::new(self.node_id),
            protocol_version: U16::new(self.protocol_version),
            role: self.role as u8,
            reserved: 0,
            token_length: U32::new(self.token.len() as u32),
        };
        out.put_slice(body.as_bytes());
        out.put_slice(&self.token);
        if self.history != History::FRESH {
            out.put_u64_le(self.history.0);
        }
    }

    pub(crate) fn decode_body(body: &Bytes) -> Result<Handshake, DecodeError> {
        let mut reader = BodyReader::new(FrameKind::Handshake, body);
        let fixed = reader.fixed::<HandshakeBody>()?;
        reader.reserved(&[fixed.reserved])?;
        let role = match fixed.role {
            1 => Role::Peer,
            2 => Role::Client,
            _ => return Err(reader.bad("role", "unknown role")),
        };
        let token_length = fixed.token_length.get() as usize;
        if token_length > TOKEN_SIZE_MAX {
            return Err(reader.bad("token_length", "over TOKEN_SIZE_MAX"));
        }
        let token = reader.bytes(token_length)?;
        let history = match reader.remaining() {
            0 => History::FRESH,
            _ => History(reader.fixed::<U64>()?.get()),
        };
        reader.finish()?;
        Ok(Handshake {
            cluster_id: fixed.cluster_id.get(),
            node_id: fixed.node_id.get(),
            role,
            protocol_version: fixed.protocol_version.get(),
            token,
            history,
        })
    }
}

impl HandshakeAccept {
    pub(crate) fn encode_body(&self, out: &mut BytesMut) {
        let body = AcceptBody {
            node_id: U64::new(self.node_id),
            protocol_version: U16::new(self.protocol_version),
            reserved: [0; 2],
            shards: U32::new(self.shards),
        };
        out.put_slice(body.as_bytes());
    }

    pub(crate) fn decode_body(body: &Bytes) -> Result<HandshakeAccept, DecodeError> {
        let mut reader = BodyReader::new(FrameKind::HandshakeAccept, body);
        let fixed = reader.fixed::<AcceptBody>()?;
        reader.reserved(&fixed.reserved)?;
        reader.finish()?;
        Ok(HandshakeAccept {
            node_id: fixed.node_id.get(),
            protocol_version: fixed.protocol_version.get(),
            shards: fixed.shards.get(),
        })
    }
}

impl HandshakeRefusal {
    pub(crate) fn encode_body(&self, out: &mut BytesMut) {
        out.put_slice(RefuseBody { reason: self.reason as u8, reserved: [0; 7] }.as_bytes());
        out.put_slice(self.message.as_bytes());
    }

    pub(crate) fn decode_body(body: &Bytes) -> Result<HandshakeRefusal, DecodeError> {
        let mut reader = BodyReader::new(FrameKind::HandshakeRefuse, body);
        let fixed = reader.fixed::<RefuseBody>()?;
        reader.reserved(&fixed.reserved)?;
        let reason = RefusalReason::from_u8(fixed.reason).ok_or_else(|| reader.bad("reason", "unknown reason"))?;
        let message = reader.rest_utf8("message")?;
        Ok(HandshakeRefusal { reason, message })
    }
}

#[cfg(test)]
mod size_tests {
    use super::*;
    use crate::codec::{Frame, Payload};
    use crate::frame::PROTOCOL_VERSION;

    #[test]
    fn the_largest_handshake_fits_the_pre_authentication_limit() {
        let handshake = Handshake {
            cluster_id: u64::MAX,
            node_id: u64::MAX,
            role: Role::Peer,
            protocol_version: u16::from(PROTOCOL_VERSION),
            token: Bytes::from(vec![0xAB; TOKEN_SIZE_MAX]),
            history: History(u64::MAX),
        };
        let frame = Frame { cluster_id: u64::MAX, shard_id: 0, payload: Payload::Handshake(handshake) };
        assert!(frame.to_bytes().len() <= HANDSHAKE_FRAME_SIZE_MAX);
    }

    /// Nodes that never restored a backup send the handshake of the versions
    /// before histories, byte for byte; a restored node's adds 8 bytes.
    #[test]
    fn only_a_restored_history_lengthens_the_handshake() {
        let fresh = Handshake {
            cluster_id: 7,
            node_id: 2,
            role: Role::Peer,
            protocol_version: u16::from(PROTOCOL_VERSION),
            token: Bytes::from_static(b"token"),
            history: History::FRESH,
        };
        let restored = Handshake { history: History(0x1234), ..fresh.clone() };
        let (mut old, mut new) = (BytesMut::new(), BytesMut::new());
        fresh.encode_body(&mut old);
        restored.encode_body(&mut new);
        assert_eq!(old.len(), size_of::<HandshakeBody>() + 5);
        assert_eq!(new.len(), old.len() + 8);
        assert_eq!(Handshake::decode_body(&old.freeze()).unwrap(), fresh);
        assert_eq!(Handshake::decode_body(&new.freeze()).unwrap(), restored);
    }
}
