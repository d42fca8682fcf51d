//! The seam between the node and an application: a deterministic state
//! machine that the node replicates.
//!
//! The application sees only its own commands and queries. Everything else
//! that travels in the log is the node's: exactly-once client sessions (a
//! retried write reaches `apply` once), the address book, the log's clock,
//! no-op and configuration entries. So an application gets exactly-once
//! writes without knowing about sessions.

use std::any::Any;
use std::io::{Read, Write};

use bytes::Bytes;
use engine::Index;

/// An application's replicated state machine. Every replica applies the same
/// commands in the same order, so `apply` must be deterministic: the same
/// state and command give the same new state and answer on every node (no
/// clocks, no randomness, no iteration order of a randomly seeded hash map).
pub trait StateMachine {
    /// Applies a committed command at log `index` and returns the answer for
    /// the client that wrote it. `Err` refuses the command: the state must
    /// be unchanged, and the client gets `BadRequest` with the reason (every
    /// replica refuses it alike).
    ///
    /// Indexes never decrease, but several commands may share one: a leader
    /// proposes the writes it takes at once as one log entry, whose commands
    /// are applied in order at that entry's index. So an index tells where
    /// the state is in the log (a snapshot is never taken between commands
    /// of one entry), not which command this is.
    fn apply(&mut self, index: Index, command: &[u8]) -> Result<Bytes, Rejection>;

    /// [`StateMachine::apply`], with the buffer of the log entry that
    /// `command` lies in. The node calls this one. A state machine that
    /// keeps parts of its commands (values) can keep them as slices of
    /// `entry` (`entry.slice_ref(part)`) instead of copying them: a slice
    /// costs a reference count, a copy touches every byte of the value on
    /// every replica. A slice keeps the whole buffer alive (a receive
    /// buffer of up to about 120 KiB, the leader's entry batch, or a log
    /// segment read whole at restart), so a
    /// state machine that keeps slices must bound how long they pin it (the
    /// key-value store copies a value still stored 64 MiB of applied
    /// commands later). The default calls `apply`.
    fn apply_in(&mut self, index: Index, command: &[u8], entry: &Bytes) -> Result<Bytes, Rejection> {
        let _ = entry;
        self.apply(index, command)
    }

    /// Answers a read-only `query` from the applied state, without the log.
    /// The node calls it once the read is safe at the asked consistency
    /// (after the ReadIndex is applied, under a lease, or at once for stale
    /// reads). Must not change the state.
    fn query(&self, query: &[u8]) -> Result<Bytes, Rejection>;

    /// Calls `key` with each key a command or query is about, if the state
    /// machine's data is keyed: a node with several shards refuses a keyed
    /// request sent to a shard that does not own every one of its keys
    /// (`net::kv::shard_for_key`), naming the right one, so no shard ever
    /// serves another's keys. The default (no key) lets any shard take any
    /// command. (A callback rather than a returned list: it runs for every
    /// request of a multi-shard node, and a list would allocate.)
    fn routing_keys(command: &[u8], key: &mut dyn FnMut(&[u8]))
    where
        Self: Sized,
    {
        let _ = (command, key);
    }

    /// A hint given with a batch of committed commands before any of them is
    /// applied: start loading what applying them will touch. A large state
    /// lives mostly outside the CPU's caches, and each lookup is a chain of
    /// dependent cache misses; started for the whole batch first, those
    /// chains overlap instead of running one after another. A large batch
    /// comes in several calls of up to 64 commands each, in order, all
    /// before the batch's first `apply`. Must not change the state. The
    /// default does nothing.
    fn prefetch(&self, commands: &[&[u8]]) {
        let _ = commands;
    }

    /// Captures the state for a snapshot whose bytes are produced later,
    /// possibly on another thread, while `apply` goes on (Dragonboat's
    /// concurrent snapshots). Serializing a large state takes tens of
    /// milliseconds; a state machine that can capture it cheaply (shared
    /// copy-on-write structures) keeps that off the apply path. The bytes
    /// must be a deterministic function of the state (sorted, no
    /// timestamps): replicas snapshot independently, and a follower that
    /// received part of one leader's snapshot resumes it from another leader
    /// at the same index.
    ///
    /// The node streams the image into the snapshot file
    /// ([`SnapshotImage::write_to`]) and never holds the whole snapshot in
    /// memory; a state machine that writes its state piece by piece keeps
    /// the snapshot's memory bounded too.
    fn snapshot_image(&self) -> Box<dyn SnapshotImage>;

    /// Called on the driver right before the node captures an image
    /// ([`StateMachine::snapshot_image`]), with the state mutable; the node
    /// stores one snapshot at a time, so by then the last image it took is
    /// gone. A state machine whose images share its structure can settle
    /// it here, so that the next image shares less: the key-value store
    /// folds in the changes it kept beside the tables an earlier image
    /// shared. Must not change the state. The default does nothing.
    fn before_image(&mut self) {}

    /// The snapshot's bytes now, in memory (tests, small states).
    fn snapshot(&self) -> Bytes {
        let mut out = Vec::new();
        self.snapshot_image().write_to(&mut out).expect("writing to memory cannot fail");
        out.into()
    }

    /// Replaces the whole state with a snapshot made by `snapshot_image`,
    /// read from `snapshot` (a buffered reader of the node's snapshot file,
    /// at its end exactly when the snapshot's bytes end), or leaves the state
    /// untouched and says what is wrong with the bytes. Read it piece by
    /// piece: the snapshot may be much larger than memory allows twice.
    /// (For an in-memory snapshot, `restore_from(&mut &bytes[..])`.) The
    /// node calls it on the shard's driver: at start, and for a snapshot
    /// received from the leader unless [`StateMachine::restorer`] offers a
    /// restore off the driver.
    fn restore_from(&mut self, snapshot: &mut dyn Read) -> Result<(), RestoreError>;

    /// Opt-in: a restorer that builds a new state from a snapshot on
    /// another thread, so that restoring a large state from a snapshot
    /// received from the leader does not stop the shard's driver (no ticks,
    /// heartbeats, appends or answers meanwhile: about 0.2 s per 128 MiB
    /// for the key-value store). The node then hands the built state to
    /// [`StateMachine::adopt`] on the driver. The default, `None`, restores
    /// with [`StateMachine::restore_from`] on the driver. (A restart
    /// restores its stored snapshot with `restore_from` before the shard
    /// runs.) A state machine that returns `Some` must implement `adopt`.
    fn restorer(&self) -> Option<Box<dyn Restorer>> {
        None
    }

    /// Replaces the whole state with `restored`, which this state machine's
    /// [`Restorer`] built, and returns the state it replaced: the node drops
    /// that off the driver (freeing a large state takes time too). Runs on
    /// the driver: make it a move, not a copy.
    fn adopt(&mut self, restored: RestoredState) -> RestoredState {
        let _ = restored;
        unimplemented!("a state machine that offers a restorer adopts what it restored")
    }
}

/// Builds a state machine's state from a snapshot, on a thread of its own
/// (see [`StateMachine::restorer`]). It reads the same bytes, with the same
/// contract, as [`StateMachine::restore_from`]; the state it returns must
/// be exactly what `restore_from` would have left.
pub trait Restorer: Send {
    fn restore(self: Box<Self>, snapshot: &mut dyn Read) -> Result<RestoredState, RestoreError>;
}

/// A state built by a [`Restorer`], of the state machine's own type (or
/// whatever its `adopt` expects); or the state `adopt` replaced.
pub struct RestoredState(pub Box<dyn Any + Send>);

impl RestoredState {
    pub fn new<T: Any + Send>(state: T) -> RestoredState {
        RestoredState(Box::new(state))
    }

    /// The state as a `T`, or itself back when it is not one.
    pub fn downcast<T: Any + Send>(self) -> Result<T, RestoredState> {
        self.0.downcast::<T>().map(|state| *state).map_err(RestoredState)
    }
}

impl std::fmt::Debug for RestoredState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RestoredState")
    }
}

/// A command or query the state machine refuses; the client gets
/// `BadRequest` with this reason.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Rejection(pub String);

/// A state captured by [`StateMachine::snapshot_image`], to be serialized
/// later, possibly on another thread.
pub trait SnapshotImage: Send {
    /// Writes the snapshot's bytes to `out` (the node's snapshot file,
    /// buffered; or memory). An error from `out` is passed on.
    fn write_to(self: Box<Self>, out: &mut dyn Write) -> std::io::Result<()>;
}

/// An image already serialized: for state machines that do not capture
/// cheaply.
pub struct SerializedImage(pub Bytes);

impl SnapshotImage for SerializedImage {
    fn write_to(self: Box<Self>, out: &mut dyn Write) -> std::io::Result<()> {
        out.write_all(&self.0)
    }
}

/// A snapshot that the state machine cannot read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot restore the state machine from the snapshot: {0}")]
pub struct RestoreError(pub String);

impl From<std::io::Error> for RestoreError {
    /// Reading the snapshot failed (or it ended early).
    fn from(error: std::io::Error) -> RestoreError {
        if error.kind() == std::io::ErrorKind::UnexpectedEof {
            return RestoreError("the snapshot ends early (truncated)".into());
        }
        RestoreError(format!("reading the snapshot failed: {error}"))
    }
}
