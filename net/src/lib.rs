//! The wire protocol and the io_uring TCP transport of the Raft node.
//!
//! Protocol: every frame is a fixed 32-byte [`FrameHeader`] (read in place
//! with `zerocopy`) and a body; `PROTOCOL.md` has the byte-level layout.
//! Decoding borrows: payloads (entry batches, snapshot chunks, commands) are
//! `Bytes` slices of the receive buffer. Bad input is a typed [`DecodeError`],
//! never a panic, and no memory is reserved for a claimed length before it
//! passed [`Limits::frame_size_max`].
//!
//! Transport (tokio-uring: everything is `!Send`, one runtime per thread):
//! - a [`Listener`] accepts peers and clients, runs the handshake, and delivers
//!   decoded frames as [`Inbound`] events on a bounded channel; a client
//!   request comes with a [`ReplyTo`] that answers on its connection;
//! - a [`Link`] per peer connects, reconnects with backoff and jitter, and
//!   sends Raft messages from a bounded queue with coalesced writes;
//! - a [`ClientConnection`] is the client side (load generator, CLI).
//!
//! [`resp`] is the codec of the Redis protocol (RESP2 and RESP3): the
//! command parser and reply encoder of a Redis front door, and the command
//! encoder and reply parser of a Redis client.
//!
//! ```no_run
//! use bytes::Bytes;
//! use net::{inbound_channel, HandshakePolicy, Inbound, Link, LinkConfig, Listener, ListenerConfig};
//!
//! tokio_uring::start(async {
//!     let token = Bytes::from_static(b"shared secret");
//!     let policy = HandshakePolicy { cluster_id: 1, node_id: 1, token: token.clone(), accept_peers: true, accept_clients: true };
//!     let listener = Listener::bind(ListenerConfig::new("127.0.0.1:7001".parse().unwrap(), policy)).unwrap();
//!     let (sender, mut inbound) = inbound_channel(1024);
//!     let _listener = listener.spawn(sender);
//!     let link = Link::spawn(LinkConfig::new(1, 1, token, 2, "127.0.0.1:7002".parse().unwrap()));
//!     while let Some(event) = inbound.recv().await {
//!         match event {
//!             Inbound::Raft { shard_id, message, .. } => { /* engine.step(message) */ let _ = (shard_id, message); }
//!             Inbound::Request { request, reply, .. } => { /* propose; later reply.send(status).await */ let _ = (request, reply); }
//!         }
//!     }
//!     drop(link);
//! });
//! ```

pub mod client;
pub mod codec;
pub mod compact;
mod crc;
pub mod error;
pub mod frame;
pub mod handshake;
pub mod kv;
pub mod resp;
pub mod runtime;
pub mod session;
pub mod session_client;

pub use client::{
    AdminRequest, ClientRequest, ClientResponse, ReadConsistency, RequestBody, ResponseStatus, SessionSettings,
};
pub use codec::{encode_message, encode_request, encode_response, Frame, Payload};
pub use error::DecodeError;
pub use frame::{
    FrameHeader, FrameKind, Limits, RawFrame, FRAME_HEADER_SIZE, FRAME_SIZE_MAX_DEFAULT, PROTOCOL_VERSION,
};
pub use handshake::{
    Handshake, HandshakeAccept, HandshakeError, HandshakePolicy, HandshakeRefusal, RefusalReason, Role,
    HANDSHAKE_FRAME_SIZE_MAX, TOKEN_SIZE_MAX,
};
pub mod client_conn;
pub mod conn;
pub mod link;
pub mod listener;
mod queue;

pub use client_conn::{ClientConfig, ClientConnection, ClientError, ClientReceiver, ClientSender};
pub use conn::{Coalescer, ConnError, FrameReader};
pub use link::{Link, LinkConfig, LinkStats, SendError};
pub use listener::{
    inbound_channel, Inbound, InboundReceiver, InboundSender, ListenError, Listener, ListenerConfig, ListenerHandle,
    ListenerStats, ReplyError, ReplyTo,
};
pub use session_client::{CallError, Client};
