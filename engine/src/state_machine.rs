//! The seam between Raft and the application: a deterministic state machine.

use bytes::{Bytes, BytesMut};

use crate::types::{Entry, Index};

/// The application that Raft replicates. Every replica applies the same
/// commands in the same order, so `apply` must be deterministic: the same
/// state and command give the same new state and response on every node.
pub trait StateMachine {
    /// Applies a committed command at `index` and returns the response bytes
    /// for the client that proposed it.
    fn apply(&mut self, index: Index, command: &Bytes) -> Bytes;

    /// A hint given with a batch of committed entries before any of them is
    /// applied: start loading what applying their commands will touch. A
    /// large state lives mostly outside the CPU's caches, and each lookup is
    /// a chain of dependent cache misses; started for the whole batch first,
    /// those chains overlap instead of running one after another. The
    /// entries include no-op and configuration entries, which `apply` never
    /// sees. Must not change the state. The default does nothing.
    fn prefetch(&self, entries: &[Entry]) {
        let _ = entries;
    }

    /// Serializes the whole state as of the last applied index. The bytes
    /// must be a deterministic function of the state (sorted maps, no
    /// timestamps): replicas snapshot independently, and a follower that
    /// received part of one leader's snapshot resumes it from another leader
    /// at the same index and term.
    fn snapshot(&self) -> Bytes;

    /// Replaces the whole state with a snapshot made by [`StateMachine::snapshot`].
    fn restore(&mut self, snapshot: &Bytes) -> Result<(), RestoreError>;

    /// Captures the state for a snapshot whose bytes are produced later,
    /// possibly on another thread, while `apply` goes on (Dragonboat's
    /// concurrent snapshots). Serializing a large state takes tens of
    /// milliseconds; a state machine that can capture it cheaply (shared
    /// copy-on-write structures) keeps that off the apply path. The image's
    /// bytes must equal what `snapshot` returns at the moment of capture.
    /// The default serializes at once.
    fn snapshot_image(&self) -> Box<dyn SnapshotImage> {
        Box::new(SerializedImage(self.snapshot()))
    }
}

/// A state captured by [`StateMachine::snapshot_image`], to be serialized
/// later, possibly on another thread.
pub trait SnapshotImage: Send {
    /// Appends the snapshot's bytes to `out`.
    fn serialize_into(self: Box<Self>, out: &mut BytesMut);
}

/// An image already serialized: the default for state machines that do not
/// capture cheaply.
pub struct SerializedImage(pub Bytes);

impl SnapshotImage for SerializedImage {
    fn serialize_into(self: Box<Self>, out: &mut BytesMut) {
        out.extend_from_slice(&self.0);
    }
}

/// A snapshot that the state machine cannot read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot restore the state machine from the snapshot: {0}")]
pub struct RestoreError(pub String);
