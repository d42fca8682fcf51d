//! The Raft key-value node as a library: the key-value state machine with
//! exactly-once client sessions, the command-line and configuration file,
//! and peer discovery. An application embeds it with its own
//! [`QueryStateMachine`](fsm::QueryStateMachine).

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
