//! A linearizability checker for client histories, in the style of Porcupine
//! (Wing & Gong's search with Lowe's memoization).
//!
//! - [`history`]: operations as clients saw them, and a recorder for tests.
//! - [`checker`]: the [`Model`] trait, [`check`] and its [`Verdict`].
//! - [`models`]: the register of Jepsen's etcd test, Porcupine's get/put/append
//!   store, and the node's get/put/delete/compare-and-swap store.
//! - [`parse`]: readers for the histories in `shared/testdata/linearizability`.

pub mod checker;
pub mod history;
pub mod models;
pub mod parse;

pub use checker::{check, partition_by_key, CheckOptions, Model, Verdict, Violation};
pub use history::{HistoryRecorder, Operation, OperationId, Returned};
pub use models::{
    KvInput, KvModel, KvOutput, NodeKvInput, NodeKvModel, NodeKvOutput, RegisterInput, RegisterModel, RegisterOutput,
};
pub use parse::{parse_etcd_log, parse_kv_history, ParseError};
