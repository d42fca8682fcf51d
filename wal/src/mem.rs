//! [`MemLog`]: the in-memory log store over [`engine::MemStorage`], durable the
//! moment a call returns. It is the reference the conformance suite holds the
//! io_uring WAL to, and the disk of simulations and tests.

use std::cell::Cell;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use engine::{EntryBatch, HardState, Index, MemStorage, Recovered, SnapshotMeta, StorageError};

use crate::error::WalError;
use crate::snapshot::{SnapshotDraft, SnapshotReader};
use crate::store::{AppendTicket, LogStore};

/// The "disk" a [`MemLog`] lives on: it outlives the log, so closing and
/// reopening a `MemLog` on the same disk recovers what was stored, like a
/// directory does for the WAL. Clones share the disk; it may move between
/// threads (an in-process cluster restarts a node on a new thread), but one
/// log uses it at a time.
#[derive(Clone, Debug, Default)]
pub struct MemDisk(Arc<Mutex<MemStorage>>);

impl MemDisk {
    pub fn new() -> MemDisk {
        MemDisk::default()
    }

    fn lock(&self) -> MutexGuard<'_, MemStorage> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// An in-memory [`LogStore`]; every append is durable when `append` returns.
pub struct MemLog {
    disk: MemDisk,
    /// Appends submitted (and so durable) since open.
    sequence: Cell<u64>,
    closed: Cell<bool>,
}

impl MemLog {
    fn check_open(&self) -> Result<(), WalError> {
        if self.closed.get() {
            return Err(WalError::Closed);
        }
        Ok(())
    }
}

impl LogStore for MemLog {
    type Options = MemDisk;

    async fn open(disk: MemDisk) -> Result<(MemLog, Recovered), WalError> {
        let recovered = disk.lock().recovered();
        Ok((MemLog { disk, sequence: Cell::new(0), closed: Cell::new(false) }, recovered))
    }

    fn append(&self, batch: EntryBatch) -> Result<AppendTicket, WalError> {
        self.check_open()?;
        self.disk.lock().append(&batch).map_err(|error| match error {
            StorageError::Gap { first, last } => WalError::Gap { first, last },
            StorageError::BeforeSnapshot { first, snapshot } => WalError::BeforeSnapshot { first, snapshot },
            other => unreachable!("append reports only position errors, got {other}"),
        })?;
        let sequence = self.sequence.get() + 1;
        self.sequence.set(sequence);
        Ok(AppendTicket {
            sequence,
            first_index: batch.first_index(),
            last_index: batch.last_index(),
            last_term: batch.last_term(),
        })
    }

    fn durable_sequence(&self) -> u64 {
        self.sequence.get()
    }

    fn durable_index(&self) -> Index {
        self.disk.lock().last_index()
    }

    fn last_index(&self) -> Index {
        self.disk.lock().last_index()
    }

    async fn wait_durable(&self, sequence: u64) -> Result<(), WalError> {
        assert!(sequence <= self.sequence.get(), "waiting for append {sequence}, never submitted");
        Ok(())
    }

    async fn save_hard_state(&self, hard_state: HardState) -> Result<(), WalError> {
        self.check_open()?;
        self.disk.lock().set_hard_state(hard_state);
        Ok(())
    }

    async fn save_commit(&self, hard_state: HardState) -> Result<(), WalError> {
        self.check_open()?;
        let mut storage = self.disk.lock();
        if !crate::hard_state::is_overtaken(hard_state, storage.hard_state()) {
            storage.set_hard_state(hard_state);
        }
        Ok(())
    }

    fn snapshot_draft(&self, meta: SnapshotMeta, _received: bool) -> Result<SnapshotDraft, WalError> {
        self.check_open()?;
        Ok(SnapshotDraft::memory(meta))
    }

    /// The in-memory store keeps the snapshot's bytes in memory.
    async fn save_snapshot_draft(&self, draft: SnapshotDraft) -> Result<(), WalError> {
        let (meta, data) = draft.into_memory().expect("a MemLog draft is in memory");
        self.check_open()?;
        let mut storage = self.disk.lock();
        let current = storage.snapshot_meta().index;
        if meta.index < current {
            return Err(WalError::SnapshotStale { index: meta.index, current });
        }
        storage.apply_snapshot(meta, data);
        Ok(())
    }

    async fn load_snapshot(&self) -> Result<Option<(SnapshotMeta, Bytes)>, WalError> {
        let storage = self.disk.lock();
        let meta = storage.snapshot_meta();
        Ok((meta.index > 0).then(|| (meta.clone(), storage.snapshot_data().clone())))
    }

    async fn read_snapshot(&self, index: Index, offset: u64, len: u64) -> Result<Option<Bytes>, WalError> {
        let storage = self.disk.lock();
        if storage.snapshot_meta().index != index || index == 0 {
            return Ok(None);
        }
        let data = storage.snapshot_data();
        let start = (offset as usize).min(data.len());
        let end = (offset.saturating_add(len)).min(data.len() as u64) as usize;
        Ok(Some(data.slice(start..end)))
    }

    fn open_snapshot(&self, _verify: bool) -> Result<Option<(SnapshotMeta, u64, SnapshotReader)>, WalError> {
        use bytes::Buf;
        let storage = self.disk.lock();
        let meta = storage.snapshot_meta();
        if meta.index == 0 {
            return Ok(None);
        }
        let data = storage.snapshot_data().clone();
        Ok(Some((meta.clone(), data.len() as u64, Box::new(data.reader()))))
    }

    async fn compact(&self, index: Index) -> Result<(), WalError> {
        self.check_open()?;
        let snapshot = self.disk.lock().snapshot_meta().index;
        if index > snapshot {
            return Err(WalError::CompactBeyondSnapshot { index, snapshot });
        }
        // MemStorage drops covered entries when the snapshot is installed.
        Ok(())
    }

    async fn close(self) -> Result<(), WalError> {
        self.closed.set(true);
        Ok(())
    }
}
