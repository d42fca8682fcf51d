//! The seam between Raft and the application: a deterministic state machine.

use bytes::Bytes;

use crate::types::Index;

/// The application that Raft replicates. Every replica applies the same
/// commands in the same order, so `apply` must be deterministic: the same
/// state and command give the same new state and response on every node.
pub trait StateMachine {
    /// Applies a committed command at `index` and returns the response bytes
    /// for the client that proposed it.
    fn apply(&mut self, index: Index, command: &Bytes) -> Bytes;

    /// Serializes the whole state as of the last applied index. The bytes
    /// must be a deterministic function of the state (sorted maps, no
    /// timestamps): replicas snapshot independently, and a follower that
    /// received part of one leader's snapshot resumes it from another leader
    /// at the same index and term.
    fn snapshot(&self) -> Bytes;

    /// Replaces the whole state with a snapshot made by [`StateMachine::snapshot`].
    fn restore(&mut self, snapshot: &Bytes) -> Result<(), RestoreError>;
}

/// A snapshot that the state machine cannot read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot restore the state machine from the snapshot: {0}")]
pub struct RestoreError(pub String);
