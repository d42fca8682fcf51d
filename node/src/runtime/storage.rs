//! [`LogStorage`]: the shard driver's storage seam over any
//! `wal::LogStore` (the io_uring WAL, or the in-memory `MemLog`), on a
//! tokio-uring runtime. Background work (the commit-only hard state, local
//! snapshots, compaction) runs in tasks of the shard's core; a snapshot is
//! serialized into its file, and a received one restored, on a helper
//! thread so that the core keeps going.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use engine::raft::SnapshotWrite;
use engine::{Entry, EntryBatch, HardState, Index, SnapshotMeta};
use tokio::sync::{mpsc, oneshot};
use wal::{AppendTicket, LogStore, SnapshotDraft, SnapshotReader, WalError};

use crate::app::{RestoredState, SnapshotImage};
use crate::shard::{RestoreJob, RestoredSnapshot, ShardStorage, StoredSnapshot};

/// Background snapshot work that finished, sent back to the shard's driver
/// loop: a local snapshot stored, or a received one restored.
pub enum SnapshotDone {
    Stored(Result<StoredSnapshot, WalError>),
    Restored(RestoredSnapshot),
}

/// A [`ShardStorage`] over a shared log store.
pub struct LogStorage<L> {
    log: Rc<L>,
    shard: u32,
    /// Where local snapshots report back (the driver loop hands the result
    /// to `Shard::snapshot_stored`).
    snapshot_done: mpsc::UnboundedSender<SnapshotDone>,
    /// A commit-only hard state save is in flight.
    commit_saving: Rc<Cell<bool>>,
    /// The newest commit-only hard state waiting for the one in flight.
    commit_next: Rc<RefCell<Option<HardState>>>,
    /// The snapshot arriving from the leader, written chunk by chunk.
    receiving: Option<SnapshotDraft>,
    /// Set when the shard stops: a local snapshot being written is given
    /// up (see `SnapshotDraft::given_up_when`).
    stopping: Arc<AtomicBool>,
}

impl<L: LogStore + 'static> LogStorage<L> {
    pub fn new(log: Rc<L>, shard: u32, snapshot_done: mpsc::UnboundedSender<SnapshotDone>) -> LogStorage<L> {
        LogStorage {
            log,
            shard,
            snapshot_done,
            commit_saving: Rc::new(Cell::new(false)),
            commit_next: Rc::new(RefCell::new(None)),
            receiving: None,
            stopping: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The log store, for the driver loop's durability waits and shutdown.
    pub fn log(&self) -> &Rc<L> {
        &self.log
    }

    /// Gives up the local snapshot being written, if any, so that the log
    /// it holds is released at once when the shard stops: a paced one
    /// takes seconds (`sigterm_stops_promptly_while_a_snapshot_is_written`
    /// in `t20_cluster`).
    pub fn stop_background(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }
}

impl<L: LogStore + 'static> ShardStorage for LogStorage<L> {
    async fn append(&mut self, batch: EntryBatch) -> Result<AppendTicket, WalError> {
        loop {
            match self.log.append(batch.clone()) {
                Err(WalError::QueueFull { .. }) => {
                    // Back-pressure: wait for the oldest write, then retry.
                    let oldest = self.log.durable_sequence() + 1;
                    self.log.wait_durable(oldest).await?;
                }
                result => return result,
            }
        }
    }

    fn durable_sequence(&self) -> u64 {
        self.log.durable_sequence()
    }

    fn read_recovered(&mut self, from: Index, bytes_max: usize) -> Result<Vec<Entry>, WalError> {
        self.log.read_recovered(from, bytes_max)
    }

    fn no_space(&self) -> bool {
        self.log.no_space()
    }

    fn set_repair_floor(&mut self, index: Index) {
        self.log.set_repair_floor(index);
    }

    async fn save_hard_state(&mut self, hard_state: HardState) -> Result<(), WalError> {
        self.log.save_hard_state(hard_state).await
    }

    fn save_commit(&mut self, hard_state: HardState) {
        if self.commit_saving.get() {
            *self.commit_next.borrow_mut() = Some(hard_state);
            return;
        }
        self.commit_saving.set(true);
        let (log, saving, next, shard) =
            (self.log.clone(), self.commit_saving.clone(), self.commit_next.clone(), self.shard);
        tokio_uring::spawn(async move {
            let mut hard_state = hard_state;
            loop {
                if let Err(error) = log.save_commit(hard_state).await {
                    tracing::error!(shard, %error, "saving the hard state failed");
                }
                let Some(newer) = next.borrow_mut().take() else { break };
                hard_state = newer;
            }
            saving.set(false);
        });
    }

    async fn write_snapshot_chunk(&mut self, write: SnapshotWrite) -> Result<(), WalError> {
        if write.offset == 0 {
            self.receiving = None;
            self.receiving = Some(self.log.snapshot_draft(write.meta.clone(), true)?);
        }
        let draft = match &mut self.receiving {
            Some(draft) if *draft.meta() == write.meta && draft.length() == write.offset => draft,
            _ => {
                // The engine hands chunks in order from offset 0.
                self.receiving = None;
                return Err(out_of_order(&write));
            }
        };
        draft.append_durable(write.data).await
    }

    fn abandon_received_snapshot(&mut self) {
        // The draft removes its temporary file when dropped.
        self.receiving = None;
    }

    async fn install_snapshot(&mut self, meta: SnapshotMeta) -> Result<(), WalError> {
        match self.receiving.take() {
            Some(draft) if *draft.meta() == meta => self.log.save_snapshot_draft(draft).await,
            _ => Err(WalError::Io {
                op: "installing a received snapshot",
                path: Default::default(),
                source: std::sync::Arc::new(std::io::Error::other(format!(
                    "the snapshot at {}/{} was not received",
                    meta.index, meta.term
                ))),
            }),
        }
    }

    fn store_snapshot(&mut self, meta: SnapshotMeta, image: Box<dyn SnapshotImage>) {
        let (log, done, stopping) = (self.log.clone(), self.snapshot_done.clone(), self.stopping.clone());
        let draft = match log.snapshot_draft(meta.clone(), false) {
            Ok(draft) => draft.given_up_when(stopping.clone()),
            Err(error) => {
                let _ = done.send(SnapshotDone::Stored(Err(error)));
                return;
            }
        };
        let serialized = serialize_in_background(image, draft);
        // Storing waits for queued appends; it runs off the driver's path and
        // is reported once durable.
        tokio_uring::spawn(async move {
            let result = match serialized.await {
                // Sealing reads the whole draft back: not while stopping.
                Ok(Ok(_)) if stopping.load(Ordering::Relaxed) => Err(WalError::Io {
                    op: "storing a snapshot (given up: the node is stopping)",
                    path: Default::default(),
                    source: std::sync::Arc::new(std::io::Error::other("the node is stopping")),
                }),
                Ok(Ok((draft, serialize_time))) => {
                    let size = draft.length();
                    log.save_snapshot_draft(draft).await.map(|()| StoredSnapshot { meta, size, serialize_time })
                }
                Ok(Err(error)) => Err(WalError::Io {
                    op: "serializing a snapshot into",
                    path: Default::default(),
                    source: std::sync::Arc::new(error),
                }),
                Err(_) => Err(WalError::Io {
                    op: "serializing a snapshot of",
                    path: Default::default(),
                    source: std::sync::Arc::new(std::io::Error::other("the snapshot thread failed")),
                }),
            };
            let _ = done.send(SnapshotDone::Stored(result));
        });
    }

    async fn read_snapshot(&mut self, index: Index, offset: u64, len: u64) -> Result<Option<Bytes>, WalError> {
        self.log.read_snapshot(index, offset, len).await
    }

    /// The WAL checked the stored file whole when it opened or stored it.
    fn open_snapshot(&mut self) -> Result<Option<(SnapshotMeta, u64, SnapshotReader)>, WalError> {
        self.log.open_snapshot(false)
    }

    /// On a thread of its own, like serializing (see
    /// `serialize_in_background`); the outcome goes to the driver loop. A
    /// shard that stopped meanwhile drops it there.
    fn restore_snapshot(&mut self, job: RestoreJob) {
        let done = self.snapshot_done.clone();
        let meta = job.meta.clone();
        let spawned = std::thread::Builder::new().name("restore".into()).spawn(move || {
            super::threads::unpin_thread();
            super::threads::lower_thread_priority();
            let _ = done.send(SnapshotDone::Restored(job.run()));
        });
        if let Err(error) = spawned {
            let reason = format!("could not start a restore thread: {error}");
            let failed = RestoredSnapshot::failed(meta, reason);
            let _ = self.snapshot_done.send(SnapshotDone::Restored(failed));
        }
    }

    /// A large state is freed on a thread of its own, as it was built.
    fn drop_replaced(&mut self, replaced: RestoredState) {
        let spawned = std::thread::Builder::new().name("restore-drop".into()).spawn(move || {
            super::threads::unpin_thread();
            super::threads::lower_thread_priority();
            drop(replaced);
        });
        if let Err(error) = spawned {
            // The state went with the closure, and was dropped here.
            tracing::warn!(%error, "could not start a thread to free a replaced state; freed on the driver");
        }
    }

    fn compact(&mut self, index: Index) {
        // Removing segment files and syncing the directory takes tens of
        // milliseconds: in the background. A failure stops the log, and the
        // next append reports it.
        let (log, shard) = (self.log.clone(), self.shard);
        tokio_uring::spawn(async move {
            if let Err(error) = log.compact(index).await {
                tracing::error!(shard, %error, "compacting the log failed");
            }
        });
    }
}

/// A received chunk that does not continue the snapshot being received.
fn out_of_order(write: &SnapshotWrite) -> WalError {
    WalError::Io {
        op: "writing a received snapshot chunk",
        path: Default::default(),
        source: std::sync::Arc::new(std::io::Error::other(format!(
            "a chunk at offset {} of the snapshot at {}/{} continues no snapshot being received",
            write.offset, write.meta.index, write.meta.term
        ))),
    }
}

/// What a snapshot thread hands back: the written draft and how long it
/// took, or the write's error.
type Serialized = std::io::Result<(SnapshotDraft, std::time::Duration)>;

/// How much a snapshot thread gathers before each write into the draft.
const SERIALIZE_BUFFER_BYTES: usize = 256 << 10;

/// How much of a serialized snapshot is held in memory before the paced
/// write into its file: a snapshot up to this size is serialized at CPU
/// speed and its image released at once. The image of a copy-on-write
/// state machine (the key-value store's buckets) shares the live state:
/// while it is held, every write to a part it has not yet released copies
/// that value (an allocation and a copy per write). Streaming straight into
/// a file paced at `--snapshot-write-rate` held the image for seconds, long
/// enough to cost about a tenth of the throughput at 256 writes in flight
/// (bench/RESULTS.md, 2026-12-02). A larger snapshot streams through this
/// buffer, so memory stays bounded (issue 20).
const SERIALIZE_MEMORY_BYTES: usize = 16 << 20;

/// A snapshot's bytes in memory up to [`SERIALIZE_MEMORY_BYTES`], then (for
/// a larger one) through to the draft.
struct Staged {
    memory: Vec<u8>,
    draft: SnapshotDraft,
    through: bool,
}

impl Staged {
    fn new(draft: SnapshotDraft) -> Staged {
        Staged { memory: Vec::new(), draft, through: false }
    }

    /// Writes what memory holds into the draft, in pieces so that the
    /// draft syncs and paces as it goes.
    fn drain(&mut self) -> std::io::Result<()> {
        use std::io::Write;
        for piece in std::mem::take(&mut self.memory).chunks(wal::snapshot::SAVE_CHUNK_BYTES) {
            self.draft.write_all(piece)?;
        }
        Ok(())
    }

    /// Drains what memory holds and hands the draft back.
    fn finish(mut self) -> std::io::Result<SnapshotDraft> {
        self.drain()?;
        Ok(self.draft)
    }
}

impl std::io::Write for Staged {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if !self.through && self.memory.len() + buf.len() <= SERIALIZE_MEMORY_BYTES {
            self.memory.extend_from_slice(buf);
            return Ok(buf.len());
        }
        if !self.through {
            self.through = true;
            self.drain()?;
        }
        self.draft.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Serializes a snapshot image into its draft on a thread of its own,
/// allowed on every CPU (a thread inherits its creator's pinning, and the
/// driver's core is the one that should not carry this work) and at a lower
/// priority than the drivers, and hands back the draft with the time it
/// took. The draft's writes are blocking, paced and synced in pieces.
fn serialize_in_background(image: Box<dyn SnapshotImage>, draft: SnapshotDraft) -> oneshot::Receiver<Serialized> {
    let (sender, receiver) = oneshot::channel();
    let spawned = std::thread::Builder::new().name("snapshot".into()).spawn(move || {
        super::threads::unpin_thread();
        super::threads::lower_thread_priority();
        let started = Instant::now();
        let mut out = std::io::BufWriter::with_capacity(SERIALIZE_BUFFER_BYTES, Staged::new(draft));
        let result = image
            .write_to(&mut out)
            .and_then(|()| out.into_inner().map_err(|error| error.into_error()))
            .and_then(Staged::finish)
            .map(|draft| (draft, started.elapsed()));
        let _ = sender.send(result);
    });
    if let Err(error) = spawned {
        // The sender went with the closure: the receiver reports the failure.
        tracing::error!(%error, "could not start a snapshot thread");
    }
    receiver
}
