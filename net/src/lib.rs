//! The wire protocol and the io_uring TCP transport of the Raft node.
//!
//! Protocol: every frame is a fixed 32-byte [`FrameHeader`] (read in place
//! with `zerocopy`) and a body; see `PROTOCOL.md` for the byte-level layout.
//! Decoding borrows: payloads are `Bytes` slices of the receive buffer.
//!
//! Transport (tokio-uring, `!Send`, one runtime per thread): a [`Listener`]
//! accepts peers and clients and delivers decoded frames as [`Inbound`]
//! events; a [`Link`] per peer connects, reconnects with backoff and sends
//! Raft messages from a bounded queue with coalesced writes; a
//! [`ClientConnection`] is the client side used by the load generator and CLI.

pub mod client;
pub mod codec;
pub mod error;
pub mod frame;
pub mod handshake;

pub use client::{AdminRequest, ClientRequest, ClientResponse, ReadConsistency, RequestBody, ResponseStatus};
pub use codec::{encode_message, encode_request, encode_response, Frame, Payload};
pub use error::DecodeError;
pub use frame::{
    FrameHeader, FrameKind, Limits, RawFrame, FRAME_HEADER_SIZE, FRAME_SIZE_MAX_DEFAULT, PROTOCOL_VERSION,
};
pub use handshake::{
    Handshake, HandshakeAccept, HandshakeError, HandshakePolicy, HandshakeRefusal, RefusalReason, Role,
};
pub mod client_conn;
pub mod conn;
pub mod link;
pub mod listener;
mod queue;

pub use client_conn::{ClientConfig, ClientConnection, ClientError, ClientReceiver, ClientSender};
pub use conn::{Coalescer, ConnError, FrameReader};
pub use link::{Link, LinkConfig, LinkStats, SendError};
pub use listener::{Inbound, ListenError, Listener, ListenerConfig, ListenerHandle, ReplyError, ReplyTo};
