//! The Raft algorithm as a pure, deterministic state machine, plus the
//! vocabulary every other crate of the node shares.
//!
//! The engine does no I/O, reads no clock, starts no thread and uses no global
//! randomness. A shell drives it with `tick`, `step` and `propose`, takes a
//! [`Ready`] of work (entries to persist, messages to send,
//! entries to apply) and hands it back with `advance`.

pub mod batch;
pub mod message;
pub mod storage;
pub mod types;

pub use batch::{BatchError, EntryBatch};
pub use message::{AppendRequest, AppendResponse, Message, MessageBody, SnapshotChunk, VoteRequest};
pub use storage::{MemStorage, Recovered, StorageError};
pub use types::{ConfState, Entry, EntryKind, HardState, Index, NodeId, SnapshotMeta, Term, NODE_NONE};

pub mod config;
pub mod log;
pub mod membership;
pub mod progress;
pub mod raft;
pub mod testing;

pub use config::{Config, ConfigError};
pub use membership::{ConfChange, ConfChangeOp};
pub use raft::{
    Ignored, ProposeError, Raft, ReadMode, ReadState, Ready, Role, SoftState, Status, LEARNER_PATIENCE_ROUNDS,
    REPAIR_UNKNOWN, SNAPSHOT_RETRY_TICKS_MAX, SNAPSHOT_RETRY_TICKS_MIN,
};
