//! The storage seam between the node and its durable log.
//!
//! The node's driver is one task on a single-threaded runtime. It submits
//! appends in log order without awaiting each one ([`LogStore::append`] queues
//! synchronously and returns a ticket at once), keeps stepping the engine, and
//! learns of durability through [`LogStore::durable_sequence`] or
//! [`LogStore::wait_durable`]. Durability is reported strictly in submission
//! order: when ticket *n* is durable, so is every ticket before it.

use bytes::Bytes;
use engine::{Entry, EntryBatch, HardState, Index, Recovered, SnapshotMeta, Term};

use crate::error::WalError;
use crate::snapshot::{SnapshotDraft, SnapshotReader};

/// The receipt for a submitted append.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppendTicket {
    /// Submission order since open, from 1. Durable tickets form a prefix.
    pub sequence: u64,
    pub first_index: Index,
    /// The log's last index once this append is applied (an append replaces
    /// any suffix from its first index, so this is the batch's last index).
    pub last_index: Index,
    pub last_term: Term,
}

/// A durable Raft log: entries, hard state and the latest snapshot.
///
/// Semantics every implementation shares (the conformance suite in
/// [`crate::testing`] checks them):
/// - `append` of a batch whose first index is at or below the last index
///   replaces the log from that index (a conflict truncation); the truncation
///   is durable no later than the append itself.
/// - `save_snapshot_draft` (and `save_snapshot`) takes its place in the
///   append order when it is called (the draft's bytes are written before):
///   appends submitted before it are durable before it is stored, and appends
///   submitted while it runs come after it (so it may run in a spawned task
///   while the driver keeps appending). For a snapshot the log agrees with
///   (a local one) those later appends may become durable before the snapshot
///   does, so a crash may recover them with the previous snapshot and the
///   whole log since it; for one that voids the log they wait for it. Entries it covers are dropped; entries
///   after it are kept only if the log holds the snapshot's index with the
///   snapshot's term (Raft paper section 7), otherwise the whole log is
///   discarded and the next append must start right after the snapshot.
/// - `compact(index)` frees log space up to `index`, which the stored snapshot
///   must cover; it never changes what `open` recovers.
/// - `save_hard_state` is not ordered with appends; a node that needs
///   `commit <= last durable index` after a crash saves the hard state after
///   the entries are durable.
#[allow(async_fn_in_trait)] // Single-threaded by design: no `Send` bound wanted.
pub trait LogStore: Sized {
    /// What `open` needs to find (and, when new, create) the store.
    type Options;

    /// Opens the store and recovers what it holds.
    async fn open(options: Self::Options) -> Result<(Self, Recovered), WalError>;

    /// The entries from `from` on whose payloads `open` dropped
    /// (`Recovered::applied`), read again: whole records, up to about
    /// `bytes_max` payload bytes (one record at least), and none once past
    /// the last such entry. The shell applies them before its first
    /// `Ready`. A store that drops nothing returns none, and so does a
    /// [`crate::Wal`] whose taker applied them as it read them and was not
    /// told to discard them ([`crate::Wal::open_applying`]).
    fn read_recovered(&self, from: Index, bytes_max: usize) -> Result<Vec<Entry>, WalError> {
        let _ = (from, bytes_max);
        Ok(Vec::new())
    }

    /// Queues `batch` for durable append and returns at once. Errors leave the
    /// log unchanged: a bad position ([`WalError::Gap`],
    /// [`WalError::BeforeSnapshot`]), back-pressure ([`WalError::QueueFull`]:
    /// wait for durability and retry), or a stopped log.
    fn append(&self, batch: EntryBatch) -> Result<AppendTicket, WalError>;

    /// The sequence of the last durable append (0 before any).
    fn durable_sequence(&self) -> u64;

    /// The log's last index as of the last durable append (or as recovered).
    fn durable_index(&self) -> Index;

    /// The log's last index as of the last submitted append.
    fn last_index(&self) -> Index;

    /// Resolves once the append with `sequence` (and all before it) is
    /// durable, or with the error that stopped the log.
    async fn wait_durable(&self, sequence: u64) -> Result<(), WalError>;

    /// Durably replaces the hard state (atomically: a crash leaves the old or
    /// the new value).
    async fn save_hard_state(&self, hard_state: HardState) -> Result<(), WalError>;

    /// Records a hard state that differs from the last saved one only in its
    /// commit index, without waiting for it to be durable: the commit index
    /// may lag after a crash (it is only a hint; the leader tells it again),
    /// but `open` never finds a hard state older than the last durable save.
    /// A newer term or vote is saved durably, as by `save_hard_state`; an
    /// older one (a background save overtaken by a durable save) is ignored.
    /// This keeps a second `fdatasync` per commit off the disk.
    async fn save_commit(&self, hard_state: HardState) -> Result<(), WalError>;

    /// Starts a snapshot: its bytes are written into the draft (a temporary
    /// file, never whole in memory) and then stored with
    /// [`LogStore::save_snapshot_draft`]. `received`: it arrives from the
    /// leader (it has its own temporary file, so that it never overwrites a
    /// local one being written).
    fn snapshot_draft(&self, meta: SnapshotMeta, received: bool) -> Result<SnapshotDraft, WalError>;

    /// Checks a finished draft against the checksum computed as it was
    /// written and durably stores it (a rename), replacing the previous
    /// snapshot (see the trait documentation for what happens to the log).
    async fn save_snapshot_draft(&self, draft: SnapshotDraft) -> Result<(), WalError>;

    /// Durably stores a snapshot held in memory (tests, small states). Its
    /// bytes are written into the draft before the first await, so that it
    /// takes its place in the append order when it is called.
    async fn save_snapshot(&self, meta: SnapshotMeta, data: Bytes) -> Result<(), WalError> {
        let mut draft = self.snapshot_draft(meta, false)?;
        // `WalError::io` tells a full disk (`NoSpace`, which a caller may
        // wait out) from other failures.
        std::io::Write::write_all(&mut draft, &data)
            .map_err(|error| WalError::io("writing a snapshot draft", std::path::Path::new(""), error))?;
        self.save_snapshot_draft(draft).await
    }

    /// The latest stored snapshot and its bytes, whole in memory (tests).
    async fn load_snapshot(&self) -> Result<Option<(SnapshotMeta, Bytes)>, WalError>;

    /// `len` bytes (fewer at its end) of the stored snapshot's data from
    /// `offset`, or `None` when the stored snapshot is not the one at
    /// `index` (a newer one replaced it).
    async fn read_snapshot(&self, index: Index, offset: u64, len: u64) -> Result<Option<Bytes>, WalError>;

    /// The stored snapshot's metadata and data length, with a reader of its
    /// data (a stream: never whole in memory); with `verify`, the whole is
    /// checked against its checksum first. Blocking.
    fn open_snapshot(&self, verify: bool) -> Result<Option<(SnapshotMeta, u64, SnapshotReader)>, WalError>;

    /// Frees log space up to `index` (at most the snapshot's index).
    async fn compact(&self, index: Index) -> Result<(), WalError>;

    /// Waits for every submitted append to be durable and releases the store.
    /// Damage that recovery found below the log's tail and cut the log
    /// before, if any: the log holds only the good prefix, and the
    /// [`Recovered`] it gave back claims the lost range as acknowledged, so
    /// the engine repairs it from the peers.
    fn recovery_damage(&self) -> Option<&WalError> {
        None
    }

    /// Sets the index the hard state keeps recording as acknowledged until
    /// the durable log reaches it (the engine's repair target; see
    /// `engine::REPAIR_UNKNOWN` for a replica that cannot know it, whose
    /// floor then holds until its repair ends and it sets the floor to its
    /// log's end). A store that records no acknowledged index ignores it.
    fn set_repair_floor(&self, _index: Index) {}

    /// Whether the disk is full: appends are kept queued (up to the queue's
    /// bound) and become durable once space is freed, so the caller should
    /// refuse new writes meanwhile rather than fill the queue.
    fn no_space(&self) -> bool {
        false
    }

    async fn close(self) -> Result<(), WalError>;
}
