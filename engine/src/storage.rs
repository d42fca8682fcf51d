//! The durable state a Raft node keeps, modelled in memory.
//!
//! [`MemStorage`] is the reference for what any durable log must do (the `wal`
//! crate's conformance suite runs the same tests against it and the io_uring
//! WAL) and the disk of tests and simulations. [`Recovered`] is what a node
//! hands the engine when it starts from whatever it had persisted.

use bytes::Bytes;

use crate::batch::EntryBatch;
use crate::types::{Entry, HardState, Index, SnapshotMeta, Term};

/// What a log store gives back on start: the engine is rebuilt from this.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    pub hard_state: HardState,
    /// The latest persisted snapshot's metadata, if any; `entries` follow it.
    pub snapshot: Option<SnapshotMeta>,
    /// Contiguous entries after the snapshot (or from index 1).
    pub entries: Vec<Entry>,
    /// The highest index this replica may have acknowledged to a leader, as
    /// far as its storage knows (0 when it knows nothing beyond the hard
    /// state). A store that found damage reports at least the index after
    /// the last entry it could read. When this, or the hard state's commit
    /// index, lies beyond `entries`, the replica lost entries it may have
    /// been counted for, and the engine starts in repair (see
    /// [`crate::Raft::repair_target`]).
    pub acknowledged: Index,
    /// The entries up to this index (committed, after the snapshot) hold no
    /// payload: the store dropped them while it read them (to bound the
    /// memory of a restart) and the shell applies them itself, read again
    /// from the store, before its first `Ready`; the engine counts them as
    /// applied. 0 (or the snapshot's index): none.
    pub applied: Index,
    /// The payload bytes of those entries (the snapshot rules count them as
    /// applied since the last snapshot).
    pub applied_bytes: u64,
}

/// Why a log operation cannot be done. These are caller errors against the
/// log's shape, reported rather than panicking so a store can refuse them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StorageError {
    #[error("append at index {first} would leave a gap after the last index {last}")]
    Gap { first: Index, last: Index },
    #[error("append at index {first} rewrites entries covered by the snapshot at {snapshot}")]
    BeforeSnapshot { first: Index, snapshot: Index },
    #[error("index {index} was compacted (first available index is {first})")]
    Compacted { index: Index, first: Index },
    #[error("index {index} is past the last index {last}")]
    Unavailable { index: Index, last: Index },
}

/// An in-memory durable log: hard state, latest snapshot, and the entries
/// after it.
///
/// Invariant: `entries[i].index == snapshot_meta.index + 1 + i`.
#[derive(Clone, Debug, Default)]
pub struct MemStorage {
    hard_state: HardState,
    snapshot_meta: SnapshotMeta,
    snapshot_data: Bytes,
    entries: Vec<Entry>,
}

impl MemStorage {
    pub fn new() -> MemStorage {
        MemStorage::default()
    }

    pub fn hard_state(&self) -> HardState {
        self.hard_state
    }

    pub fn set_hard_state(&mut self, hard_state: HardState) {
        self.hard_state = hard_state;
    }

    /// The latest snapshot's metadata (index 0 when there is none).
    pub fn snapshot_meta(&self) -> &SnapshotMeta {
        &self.snapshot_meta
    }

    /// The latest snapshot's bytes (empty when there is none).
    pub fn snapshot_data(&self) -> &Bytes {
        &self.snapshot_data
    }

    /// The first index held as an entry (one past the snapshot).
    pub fn first_index(&self) -> Index {
        self.snapshot_meta.index + 1
    }

    /// The last index held, as an entry or by the snapshot.
    pub fn last_index(&self) -> Index {
        self.snapshot_meta.index + self.entries.len() as u64
    }

    /// The term at `index`; the snapshot's own index answers with its term.
    pub fn term(&self, index: Index) -> Result<Term, StorageError> {
        if index == self.snapshot_meta.index {
            return Ok(self.snapshot_meta.term);
        }
        if index < self.snapshot_meta.index {
            return Err(StorageError::Compacted { index, first: self.first_index() });
        }
        if index > self.last_index() {
            return Err(StorageError::Unavailable { index, last: self.last_index() });
        }
        Ok(self.entries[(index - self.first_index()) as usize].term)
    }

    /// Entries in `[low, high)`.
    pub fn entries(&self, low: Index, high: Index) -> Result<Vec<Entry>, StorageError> {
        if low < self.first_index() {
            return Err(StorageError::Compacted { index: low, first: self.first_index() });
        }
        if high > self.last_index() + 1 {
            return Err(StorageError::Unavailable { index: high - 1, last: self.last_index() });
        }
        let offset = self.first_index();
        Ok(self.entries[(low - offset) as usize..(high.max(low) - offset) as usize].to_vec())
    }

    /// Appends a batch, first discarding any entries at or after its first
    /// index (a conflicting suffix is replaced, as Raft requires).
    pub fn append(&mut self, batch: &EntryBatch) -> Result<(), StorageError> {
        let first = batch.first_index();
        if first <= self.snapshot_meta.index {
            return Err(StorageError::BeforeSnapshot { first, snapshot: self.snapshot_meta.index });
        }
        if first > self.last_index() + 1 {
            return Err(StorageError::Gap { first, last: self.last_index() });
        }
        self.entries.truncate((first - self.first_index()) as usize);
        self.entries.extend(batch.entries());
        Ok(())
    }

    /// Drops entries up to and including `index`, which must be covered by the
    /// stored snapshot (compaction never loses what the snapshot lacks).
    pub fn compact(&mut self, index: Index) -> Result<(), StorageError> {
        if index <= self.snapshot_meta.index {
            return Ok(());
        }
        Err(StorageError::Unavailable { index, last: self.snapshot_meta.index })
    }

    /// Stores a snapshot this replica took of its own applied entries, as a
    /// write-ahead log does (a record of the snapshot, then compaction): the
    /// entries it covers are dropped and those after it kept, whatever their
    /// term. Unlike a received snapshot ([`MemStorage::apply_snapshot`]), it
    /// never voids the entries after it: the engine may take it while
    /// writes it handed before are still pending (a snapshot may cover
    /// applied entries not yet durable locally), one of them may extend a
    /// branch that a later pending write replaces, and voiding would leave
    /// that write a gap to append to. A snapshot older than the stored one
    /// is ignored.
    pub fn save_local_snapshot(&mut self, meta: SnapshotMeta, data: Bytes) {
        if meta.index <= self.snapshot_meta.index {
            return;
        }
        let covered = (meta.index + 1 - self.first_index()).min(self.entries.len() as u64) as usize;
        self.entries.drain(..covered);
        self.snapshot_meta = meta;
        self.snapshot_data = data;
    }

    /// Installs a snapshot. Entries it covers are dropped; entries after it are
    /// kept only if the log agrees with the snapshot's last term (Raft paper 7).
    pub fn apply_snapshot(&mut self, meta: SnapshotMeta, data: Bytes) {
        let keep = matches!(self.term(meta.index), Ok(term) if term == meta.term);
        if keep {
            let drop = (meta.index + 1 - self.first_index()) as usize;
            self.entries.drain(..drop);
        } else {
            self.entries.clear();
        }
        self.snapshot_meta = meta;
        self.snapshot_data = data;
    }

    /// Everything a restarting engine needs.
    pub fn recovered(&self) -> Recovered {
        Recovered {
            hard_state: self.hard_state,
            snapshot: (self.snapshot_meta.index > 0).then(|| self.snapshot_meta.clone()),
            entries: self.entries.clone(),
            acknowledged: 0,
            applied: 0,
            applied_bytes: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::batch_of_terms as batch;

    #[test]
    fn append_replaces_conflicting_suffix() {
        let mut storage = MemStorage::new();
        storage.append(&batch(1, &[1, 1, 1])).unwrap();
        storage.append(&batch(2, &[2])).unwrap();
        assert_eq!(storage.last_index(), 2);
        assert_eq!(storage.term(2), Ok(2));
        assert_eq!(storage.append(&batch(4, &[2])), Err(StorageError::Gap { first: 4, last: 2 }));
    }

    #[test]
    fn snapshot_keeps_matching_tail_only() {
        let mut storage = MemStorage::new();
        storage.append(&batch(1, &[1, 1, 2, 2])).unwrap();
        storage.apply_snapshot(SnapshotMeta { index: 2, term: 1, conf: Default::default() }, Bytes::new());
        assert_eq!((storage.first_index(), storage.last_index()), (3, 4));
        storage.apply_snapshot(SnapshotMeta { index: 3, term: 9, conf: Default::default() }, Bytes::new());
        assert_eq!((storage.first_index(), storage.last_index()), (4, 3));
        assert_eq!(storage.term(3), Ok(9));
    }

    /// A local snapshot compacts and keeps what follows, even a stale
    /// branch: a write of that branch handed before the snapshot still
    /// appends, and the later write that replaced the branch truncates it.
    #[test]
    fn a_local_snapshot_keeps_the_entries_after_it() {
        let mut storage = MemStorage::new();
        storage.append(&batch(1, &[1, 2, 2, 2])).unwrap();
        storage.save_local_snapshot(SnapshotMeta { index: 2, term: 3, conf: Default::default() }, Bytes::new());
        assert_eq!((storage.first_index(), storage.last_index(), storage.term(4)), (3, 4, Ok(2)));
        storage.append(&batch(5, &[2])).expect("the stale branch's pending write appends");
        storage.append(&batch(3, &[3])).expect("the write that replaced it truncates");
        assert_eq!((storage.last_index(), storage.term(3)), (3, Ok(3)));
        // Beyond the stored entries: all dropped; an older snapshot: ignored.
        storage.save_local_snapshot(SnapshotMeta { index: 6, term: 3, conf: Default::default() }, Bytes::new());
        assert_eq!((storage.first_index(), storage.last_index()), (7, 6));
        storage.save_local_snapshot(SnapshotMeta { index: 5, term: 3, conf: Default::default() }, Bytes::new());
        assert_eq!(storage.snapshot_meta().index, 6);
    }
}
