//! The snapshot lifecycle of a shard: capturing the state machine (on the
//! driver, cheaply) and having storage serialize it into a file and store
//! it (in the background); serving chunks of the stored file to followers
//! that need it, one positioned read each; and receiving a leader's
//! snapshot chunk by chunk into a file (each durable as it arrives),
//! installing it by rename and restoring the state machine from the file
//! (off the driver when the state machine offers a restorer: the engine
//! holds committed entries back meanwhile, and the driver adopts the built
//! state when it is done). No step holds the whole snapshot in memory.

use std::collections::VecDeque;
use std::time::Instant;

use bytes::Bytes;
use engine::raft::SnapshotRead;
use engine::{Index, SnapshotMeta};
use wal::{SnapshotReader, WalError};

use super::{Clock, RestoreJob, RestoredSnapshot, Shard, ShardError, ShardStorage, ShardTransport, StoredSnapshot};
use crate::app::{Restorer, SnapshotImage, StateMachine};

/// A witness's snapshot image: nothing (see `Shard::take_snapshot_now`).
struct EmptyImage;

impl SnapshotImage for EmptyImage {
    fn write_to(self: Box<Self>, _: &mut dyn std::io::Write) -> std::io::Result<()> {
        Ok(())
    }
}

pub(super) struct Snapshots {
    /// The latest stored snapshot and its size, served to followers.
    /// Invariant: its index is at most the applied index.
    current: Option<(SnapshotMeta, u64)>,
    /// A local snapshot being serialized and stored.
    storing: Option<SnapshotMeta>,
    /// The chunks read last (snapshot index, offset, length, bytes), newest
    /// last. The engine asks for a chunk again when a follower's
    /// acknowledgements stall (often because the link to it is busy, the
    /// first copy still queued): the same bytes are handed out again instead
    /// of a second copy, so the chunks a leader holds stay bounded by this
    /// and the engine's window, whatever the resends.
    recent: VecDeque<(Index, u64, u64, Bytes)>,
    /// A received snapshot whose state machine is being restored off the
    /// driver: its metadata and size, and when the install started.
    /// Invariant: set exactly when the engine holds applies back.
    restoring: Option<(SnapshotMeta, u64, Instant)>,
    /// A newer snapshot installed while one was being restored: restored
    /// next. Invariant: set only while `restoring` is.
    restore_next: Option<SnapshotMeta>,
    /// The finished restore, adopted at the next `process`.
    /// Invariant: set only while `restoring` is.
    restored: Option<RestoredSnapshot>,
}

/// Chunks kept for resends: twice the engine's default window.
const RECENT_CHUNKS_MAX: usize = 8;

impl Snapshots {
    pub(super) fn new(current: Option<(SnapshotMeta, u64)>) -> Snapshots {
        Snapshots {
            current,
            storing: None,
            recent: VecDeque::new(),
            restoring: None,
            restore_next: None,
            restored: None,
        }
    }

    /// The latest stored snapshot and its size.
    pub(super) fn current(&self) -> Option<&(SnapshotMeta, u64)> {
        self.current.as_ref()
    }

    /// Whether no snapshot is being stored or restored.
    pub(super) fn idle(&self) -> bool {
        self.storing.is_none() && self.restoring.is_none()
    }

    fn recent_chunk(&self, read: &SnapshotRead) -> Option<Bytes> {
        self.recent
            .iter()
            .find(|(index, offset, len, _)| (*index, *offset, *len) == (read.index, read.offset, read.len))
            .map(|(_, _, _, data)| data.clone())
    }

    fn remember_chunk(&mut self, read: &SnapshotRead, data: &Bytes) {
        if self.recent.len() == RECENT_CHUNKS_MAX {
            self.recent.pop_front();
        }
        self.recent.push_back((read.index, read.offset, read.len, data.clone()));
    }

    pub(super) fn check_invariants(&self, applied: Index, apply_held: bool) -> Result<(), String> {
        if self.restoring.is_some() != apply_held {
            return Err(format!(
                "restoring a snapshot: {}, but the engine holds applies: {apply_held}",
                self.restoring.is_some()
            ));
        }
        if self.restoring.is_none() && (self.restore_next.is_some() || self.restored.is_some()) {
            return Err("a snapshot restore is queued or finished while none runs".into());
        }
        if let Some((meta, _)) = &self.current {
            if meta.index > applied {
                return Err(format!("the stored snapshot at {} is beyond the applied index {applied}", meta.index));
            }
        }
        Ok(())
    }
}

impl<S, D, T, C> Shard<S, D, T, C>
where
    S: StateMachine,
    D: ShardStorage,
    T: ShardTransport,
    C: Clock,
{
    /// Captures the state machine at the applied index and has storage
    /// serialize and store it; the engine hears of it once it is stored.
    /// Snapshots are normally taken when the engine asks; an admin request
    /// takes one at once. A witness runs no state machine: its snapshot is
    /// the metadata at the engine's applied index with an empty image.
    pub(super) fn take_snapshot_now(&mut self) -> Result<Index, String> {
        if self.snapshots.storing.is_some() {
            return Err("a snapshot is being stored; retry in a moment".into());
        }
        if self.snapshots.restoring.is_some() {
            return Err("the state machine is being restored from a snapshot; retry in a moment".into());
        }
        let witness = self.raft.is_witness();
        let index = if witness { self.raft.applied() } else { self.fsm.applied() };
        let meta = self.raft.snapshot_meta_at(index).ok_or("nothing applied since the last snapshot")?;
        // Only the capture runs on the driver; the bytes are produced in the
        // background while the shard goes on applying.
        let started = self.clock.now();
        let image: Box<dyn SnapshotImage> = if witness {
            Box::new(EmptyImage)
        } else {
            self.fsm.before_image();
            self.fsm.snapshot_image()
        };
        self.stats.snapshot_capture.record(self.clock.now().saturating_duration_since(started));
        self.snapshots.storing = Some(meta.clone());
        self.storage.store_snapshot(meta, image);
        Ok(index)
    }

    /// Storage finished (or failed) storing the local snapshot
    /// [`ShardStorage::store_snapshot`] was given.
    pub fn snapshot_stored(&mut self, result: Result<StoredSnapshot, WalError>) {
        let Some(meta) = self.snapshots.storing.take() else {
            tracing::error!(shard = self.ctx.shard_id, "a snapshot was reported stored, but none was being stored");
            return;
        };
        match result {
            Ok(stored) => {
                assert_eq!(stored.meta, meta, "storage reported another snapshot than it was given");
                self.stats.snapshot_serialize.record(stored.serialize_time);
                self.stats.snapshots_taken += 1;
                self.raft.snapshot_created(meta.clone(), stored.size);
                // A snapshot received from the leader while this one was
                // being stored may be newer: keep serving the newest.
                if self.snapshots.current.as_ref().is_none_or(|(current, _)| current.index <= meta.index) {
                    self.snapshots.current = Some((meta, stored.size));
                    self.snapshots.recent.clear();
                }
            }
            Err(error) => {
                tracing::error!(shard = self.ctx.shard_id, %error, "storing a snapshot failed; it is taken again later");
                self.raft.snapshot_not_taken();
            }
        }
    }

    /// Hands followers the chunks of the stored snapshot the engine asked
    /// for, each read from the file when it is sent (the engine asks for a
    /// few chunks ahead of each follower's acknowledgements, no more).
    pub(super) async fn serve_snapshot_reads(&mut self, reads: Vec<SnapshotRead>) {
        for read in reads {
            let current = self.snapshots.current.as_ref().is_some_and(|(meta, _)| meta.index == read.index);
            let chunk = if !current {
                None
            } else if let Some(data) = self.snapshots.recent_chunk(&read) {
                Some(data)
            } else {
                match self.storage.read_snapshot(read.index, read.offset, read.len).await {
                    Ok(chunk) => {
                        if let Some(data) = &chunk {
                            self.snapshots.remember_chunk(&read, data);
                        }
                        chunk
                    }
                    Err(error @ WalError::Corrupt { .. }) => {
                        self.stored_snapshot_damaged(&error, "not sent");
                        return;
                    }
                    Err(error) => {
                        tracing::error!(shard = self.ctx.shard_id, %error, "reading the snapshot for a follower failed");
                        None
                    }
                }
            };
            match chunk {
                Some(data) => {
                    self.stats.snapshot_chunks_sent += 1;
                    self.raft.snapshot_chunk(read.to, read.index, read.offset, data);
                }
                None => self.raft.snapshot_unavailable(read.to),
            }
        }
    }

    /// The stored snapshot failed its checksum when read for a follower or
    /// a backup (`what` says which was refused): counted, and the engine
    /// takes a new one; no chunk of it is handed out again.
    pub(super) fn stored_snapshot_damaged(&mut self, error: &WalError, what: &str) {
        tracing::error!(shard = self.ctx.shard_id, %error, "the stored snapshot is damaged: {what}; taking a new one");
        self.stats.snapshots_damaged += 1;
        self.snapshots.recent.clear();
        self.raft.snapshot_damaged();
    }

    /// Stores the snapshot whose chunks all arrived (verified, then renamed
    /// into place) and restores the state machine from it, streaming the
    /// file: off the driver when the state machine offers a restorer (the
    /// engine holds committed entries back until it is adopted, see
    /// [`Shard::adopt_restored`]), else on the driver. See README,
    /// "Snapshots".
    pub(super) async fn install_snapshot(&mut self, meta: SnapshotMeta) -> Result<(), ShardError> {
        self.storage.install_snapshot(meta.clone()).await.map_err(|source| self.storage_error(source))?;
        self.snapshot_no_space = false;
        if self.snapshots.restoring.is_some() {
            // One restore at a time: this newer one follows (an older one
            // waiting is dropped: the stored snapshot is this one now).
            self.snapshots.restore_next = Some(meta);
            self.stats.installs_while_restoring += 1;
            return Ok(());
        }
        if !self.raft.is_witness() {
            if let Some(restorer) = self.fsm.restorer() {
                return self.start_restore(meta, restorer);
            }
        }
        let started = self.clock.now();
        let size = self.restore_stored(&meta)?;
        self.stats.snapshot_restore_blocked.record(self.clock.now().saturating_duration_since(started));
        self.installed(meta, size);
        Ok(())
    }

    /// Hands storage a restore of the stored snapshot, described by
    /// `meta`, to run off the driver, and holds committed entries back
    /// until it is adopted.
    fn start_restore(&mut self, meta: SnapshotMeta, restorer: Box<dyn Restorer>) -> Result<(), ShardError> {
        let started = self.clock.now();
        let (size, reader) = self.open_stored(&meta)?;
        let job = RestoreJob::new(meta.clone(), Box::new(move || crate::replicated::restore_with(restorer, reader)));
        self.storage.restore_snapshot(job);
        self.raft.hold_apply(true);
        self.snapshots.restoring = Some((meta, size, started));
        self.stats.snapshot_restore_blocked.record(self.clock.now().saturating_duration_since(started));
        Ok(())
    }

    /// Storage finished the restore [`ShardStorage::restore_snapshot`] was
    /// given: its state is adopted when the driver next processes.
    pub fn snapshot_restored(&mut self, restored: RestoredSnapshot) {
        let expected = self.snapshots.restoring.as_ref().map(|(meta, _, _)| meta);
        if expected != Some(&restored.meta) || self.snapshots.restored.is_some() {
            tracing::error!(
                shard = self.ctx.shard_id,
                index = restored.meta.index,
                "a snapshot restore was reported that was not running; ignored"
            );
            return;
        }
        self.snapshots.restored = Some(restored);
    }

    /// Adopts the state a restore off the driver built (an O(1) swap; the
    /// replaced state is dropped off the driver), then starts the restore
    /// of a newer snapshot installed meanwhile, or lets the engine hand out
    /// the entries it held back. A state machine that cannot read the
    /// snapshot stops the shard, as a restore on the driver does.
    pub(super) fn adopt_restored(&mut self) -> Result<(), ShardError> {
        let Some(restored) = self.snapshots.restored.take() else { return Ok(()) };
        let (meta, size, started) = self.snapshots.restoring.take().expect("a reported restore was running");
        let shard = self.ctx.shard_id;
        let state = restored.result.map_err(|error| ShardError::Restore { shard, reason: error.0 })?;
        if state.applied() != meta.index {
            let reason = format!("the snapshot at {} holds the state at {}", meta.index, state.applied());
            return Err(ShardError::Restore { shard, reason });
        }
        let adopting = self.clock.now();
        let replaced = self.fsm.adopt(state);
        self.storage.drop_replaced(replaced);
        self.stats.snapshot_restore.record(restored.restore_time);
        let took = self.clock.now().saturating_duration_since(started);
        tracing::info!(
            shard,
            index = meta.index,
            size,
            ?took,
            "state machine restored from the snapshot (off the driver)"
        );
        self.installed(meta, size);
        self.stats.restores_off_driver += 1;
        self.stats.snapshot_restore_blocked.record(self.clock.now().saturating_duration_since(adopting));
        match self.snapshots.restore_next.take() {
            Some(next) => {
                let restorer = self.fsm.restorer().expect("the state machine still offers a restorer");
                self.start_restore(next, restorer)
            }
            None => {
                self.raft.hold_apply(false);
                Ok(())
            }
        }
    }

    /// The state machine holds the snapshot described by `meta`, of `size`
    /// bytes: it is the one served to followers from now on.
    fn installed(&mut self, meta: SnapshotMeta, size: u64) {
        self.fsm.note_members(&meta.conf.members());
        self.links_from_address_book();
        self.snapshots.current = Some((meta, size));
        self.snapshots.recent.clear();
        self.stats.snapshots_installed += 1;
        if self.requests.reads_waiting() {
            self.stats.installs_with_reads_waiting += 1;
        }
    }

    /// Whether the state machine is being restored off the driver.
    pub fn restoring(&self) -> bool {
        self.snapshots.restoring.is_some()
    }

    /// The stored snapshot's size and a reader of its data; it must be the
    /// one described by `meta`.
    fn open_stored(&mut self, meta: &SnapshotMeta) -> Result<(u64, SnapshotReader), ShardError> {
        let shard = self.ctx.shard_id;
        let opened = self.storage.open_snapshot().map_err(|source| ShardError::Wal { shard, source })?;
        let Some((stored, size, reader)) = opened else {
            return Err(ShardError::Restore { shard, reason: format!("the snapshot at {} is not stored", meta.index) });
        };
        if stored.index != meta.index || stored.term != meta.term {
            return Err(ShardError::Restore {
                shard,
                reason: format!(
                    "storage holds the snapshot at {}/{}, not {}/{}",
                    stored.index, stored.term, meta.index, meta.term
                ),
            });
        }
        Ok((size, reader))
    }

    /// Restores the state machine from the stored snapshot on the driver;
    /// it must be the one described by `meta`; returns its size.
    pub(super) fn restore_stored(&mut self, meta: &SnapshotMeta) -> Result<u64, ShardError> {
        let shard = self.ctx.shard_id;
        let (size, mut reader) = self.open_stored(meta)?;
        if self.raft.is_witness() {
            // A witness's snapshot holds no image (the engine stores none):
            // it has no state machine to restore, only the index to note.
            self.fsm.skip(meta.index);
            tracing::info!(shard, index = meta.index, "witness: snapshot metadata installed (no state machine)");
            return Ok(size);
        }
        let started = self.clock.now();
        self.fsm.restore_from(&mut reader).map_err(|error| ShardError::Restore { shard, reason: error.0 })?;
        let took = self.clock.now().saturating_duration_since(started);
        self.stats.snapshot_restore.record(took);
        tracing::info!(shard, index = meta.index, size, ?took, "state machine restored from the snapshot");
        Ok(size)
    }
}
