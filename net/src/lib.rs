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
//! - a [`Listener`] accepts one role, peers or clients, runs TLS and the
//!   handshake, and delivers decoded frames as [`Inbound`] events on a
//!   bounded channel; a client request comes with the connection's
//!   [`Identity`] and a [`ReplyTo`] that answers on its connection;
//! - a [`Link`] per peer connects, reconnects with backoff and jitter, and
//!   sends Raft messages from a bounded queue with coalesced writes;
//! - a [`ClientConnection`] is the client side (load generator, CLI).
//!
//! [`resp`] is the codec of the Redis protocol (RESP2 and RESP3): the
//! command parser and reply encoder of a Redis front door, and the command
//! encoder and reply parser of a Redis client.
//! Security: a [`NodeSecurity`] (TLS files, or plaintext with tokens) is
//! shared by a node's listeners and links and reloads without a restart;
//! [`tls`] has the TLS rules and `tls::dev_certificates` for throwaway
//! certificates; [`identity`] the certificate identity rule and roles;
//! [`tokens`] the per-user token file. `net/README.md` is the operator's
//! guide, `PROTOCOL.md` the wire format.
//!
//! ```no_run
//! use bytes::Bytes;
//! use net::{inbound_channel, Inbound, Link, LinkConfig, Listener, ListenerConfig, NodeSecurity};
//!
//! tokio_uring::start(async {
//!     // Plaintext, one token for peers and clients: development only.
//!     let security = NodeSecurity::plaintext(1, 1, Bytes::from_static(b"shared secret"));
//!     for warning in security.warnings() {
//!         eprintln!("warning: {warning}");
//!     }
//!     let (sender, mut inbound) = inbound_channel(1024);
//!     let peers = Listener::bind(ListenerConfig::peers("127.0.0.1:7001".parse().unwrap(), security.clone())).unwrap();
//!     let clients = Listener::bind(ListenerConfig::clients("127.0.0.1:7101".parse().unwrap(), security.clone())).unwrap();
//!     let _listeners = (peers.spawn(sender.clone()), clients.spawn(sender));
//!     let link = Link::spawn(LinkConfig::new(security, 2, "127.0.0.1:7002".parse().unwrap()));
//!     while let Some(event) = inbound.recv().await {
//!         match event {
//!             Inbound::Raft { shard_id, message, .. } => { /* engine.step(message) */ let _ = (shard_id, message); }
//!             Inbound::Request { request, identity, reply, .. } => {
//!                 // The listener already refused what `identity`'s roles forbid.
//!                 /* propose; later: */ let _ = (request, identity);
//!                 let _ = reply.send(net::ResponseStatus::Busy);
//!             }
//!         }
//!     }
//!     drop(link);
//! });
//! ```

mod auth;
pub mod client;
pub mod codec;
pub mod compact;
mod crc;
pub mod error;
pub mod frame;
pub mod handshake;
pub mod identity;
pub mod kv;
pub mod resp;
pub mod runtime;
pub mod security;
pub mod session;
pub mod session_client;
pub mod stream;
pub mod tls;
pub mod tokens;

pub use client::{
    AdminRequest, ClientRequest, ClientResponse, JoinRequest, ReadConsistency, RequestBody, ResponseStatus,
    SessionSettings, BACKUP_CHUNK_BYTES_MAX,
};
pub use codec::{encode_message, encode_request, encode_response, Frame, Payload};
pub use error::DecodeError;
pub use frame::{
    FrameHeader, FrameKind, Limits, RawFrame, FRAME_HEADER_SIZE, FRAME_SIZE_MAX_DEFAULT, PROTOCOL_VERSION,
};
pub use handshake::{
    Handshake, HandshakeAccept, HandshakeError, HandshakeRefusal, History, RefusalReason, Role,
    HANDSHAKE_FRAME_SIZE_MAX, TOKEN_SIZE_MAX,
};
pub use identity::{AuthMethod, CertIdentity, ClientName, Forbidden, Identity, NodeName, Roles};
pub use security::{
    ClientTls, ClientTlsFiles, ClientTokens, CredentialsError, NodeSecurity, NodeSecurityConfig, NodeTlsFiles,
    SecurityWarning,
};
pub use stream::{FrameIo, Stream};
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
    ListenerRole, ListenerStats, Refusal, RefusalRecord, RemovedPeers, ReplyError, ReplyTo, TlsFailure,
};
pub use session_client::{refused_credentials, CallError, Client, Connector, TcpConnector};
