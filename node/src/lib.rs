//! The replicated storage node as a library: the shard driver that joins the
//! Raft engine, a log store, a transport and an application's state machine;
//! exactly-once client sessions for any state machine; the io_uring runtime
//! with the WAL and TCP; the key-value state machine; the command line and
//! configuration file; peer discovery.
//!
//! - An application implements [`StateMachine`] (commands and queries as
//!   bytes; sessions, clocks and addresses are the node's,
//!   [`replicated`]).
//! - [`shard::Shard`] is the one driver of the engine, generic over
//!   storage, transport and clock; [`runtime`] runs it on io_uring over the
//!   WAL and TCP, and the simulator in `tests/` runs it over fakes.
//! - [`config::parse_from`] turns the command line into a
//!   [`config::NodeCommand`]; `serve` then resolves its members with
//!   [`discovery::discover`] and checks them with [`discovery::check_members`].

pub mod app;
pub mod backup;
pub mod cli;
pub mod config;
pub mod discovery;
pub mod dns_watch;
pub mod kv;
mod kv_table;
pub mod local;
pub mod membership;
pub mod metrics;
pub mod session;
pub mod testing;

pub use app::{Rejection, RestoreError, RestoredState, Restorer, SerializedImage, SnapshotImage, StateMachine};
pub use kv::{KvOp, KvResponse, KvStateMachine};
pub use session::SessionTable;
pub mod certs;
pub mod client_cmd;
pub mod dev;
pub mod embed;
pub mod replicated;
pub mod resp;
pub mod runtime;
pub mod shard;
pub mod signals;
pub mod stats;
pub mod topology;
pub mod vote_hold;
