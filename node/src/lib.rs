//! The Raft key-value node as a library: the key-value state machine with
//! exactly-once client sessions, the command line and configuration file,
//! and peer discovery. An application embeds it with its own
//! [`QueryStateMachine`].
//!
//! How a shard's driver uses these pieces:
//! - a client write (`net::RequestBody::Write`) is proposed as
//!   [`session::encode_envelope`]`(request.client_id, request.sequence, &command)`;
//! - the bytes `StateMachine::apply` returns for it, and the bytes
//!   [`QueryStateMachine::query`] returns for a read, decode with
//!   [`Reply::decode`], and [`Reply::into_status`] gives the client's
//!   `net::ResponseStatus`;
//! - [`config::parse_from`] turns the command line into a
//!   [`config::NodeCommand`]; `serve` then resolves its members with
//!   [`discovery::discover`] and checks them with [`discovery::check_members`].

pub mod cli;
pub mod codec;
pub mod config;
pub mod discovery;
pub mod fsm;
pub mod kv;
pub mod session;
pub mod testing;

pub use codec::DecodeError;
pub use fsm::QueryStateMachine;
pub use kv::{KvOp, KvResponse, KvStateMachine};
pub use session::{Envelope, Reply, SessionTable};
pub mod client_cmd;
pub mod dev;
pub mod replicated;
pub mod runtime;
pub mod shard;
pub mod stats;
pub mod topology;
