//! The snapshot lifecycle of a shard: capturing the state machine (on the
//! driver, cheaply) and having storage serialize and store it (in the
//! background); serving chunks of the stored snapshot to followers that
//! need it; and receiving, storing and installing a leader's snapshot.

use bytes::{Bytes, BytesMut};
use engine::raft::{SnapshotRead, SnapshotWrite};
use engine::{Index, SnapshotMeta};
use wal::WalError;

use super::{Clock, Shard, ShardError, ShardStorage, ShardTransport, StoredSnapshot};
use crate::app::StateMachine;

pub(super) struct Snapshots {
    /// The latest stored snapshot and its bytes, served to followers.
    /// Invariant: its index is at most the applied index.
    current: Option<(SnapshotMeta, Bytes)>,
    /// A local snapshot being serialized and stored.
    storing: Option<SnapshotMeta>,
    /// The chunks of a snapshot arriving from the leader, in order.
    incoming: BytesMut,
}

impl Snapshots {
    pub(super) fn new(current: Option<(SnapshotMeta, Bytes)>) -> Snapshots {
        Snapshots { current, storing: None, incoming: BytesMut::new() }
    }

    /// Collects a chunk of an incoming snapshot (offset 0 starts a new one).
    pub(super) fn receive_chunk(&mut self, write: &SnapshotWrite) {
        if write.offset == 0 {
            self.incoming.clear();
        }
        debug_assert_eq!(write.offset as usize, self.incoming.len(), "snapshot chunks arrive in order");
        self.incoming.extend_from_slice(&write.data);
    }

    pub(super) fn check_invariants(&self, applied: Index) -> Result<(), String> {
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
    /// takes one at once.
    pub(super) fn take_snapshot_now(&mut self) -> Result<Index, String> {
        if self.snapshots.storing.is_some() {
            return Err("a snapshot is being stored; retry in a moment".into());
        }
        let index = self.fsm.applied();
        let meta = self.raft.snapshot_meta_at(index).ok_or("nothing applied since the last snapshot")?;
        // Only the capture runs on the driver; the bytes are produced in the
        // background while the shard goes on applying.
        let started = self.clock.now();
        let image = self.fsm.snapshot_image();
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
                self.raft.snapshot_created(meta.clone(), stored.data.len() as u64);
                // A snapshot received from the leader while this one was
                // being stored may be newer: keep serving the newest.
                if self.snapshots.current.as_ref().is_none_or(|(current, _)| current.index <= meta.index) {
                    self.snapshots.current = Some((meta, stored.data));
                }
            }
            Err(error) => tracing::error!(shard = self.ctx.shard_id, %error, "storing a snapshot failed"),
        }
    }

    /// Hands followers the chunks of the stored snapshot the engine asked for.
    pub(super) fn serve_snapshot_reads(&mut self, reads: Vec<SnapshotRead>) {
        for read in reads {
            match &self.snapshots.current {
                Some((meta, data)) if meta.index == read.index => {
                    let start = (read.offset as usize).min(data.len());
                    let end = (read.offset + read.len).min(data.len() as u64) as usize;
                    self.raft.snapshot_chunk(read.to, read.index, read.offset, data.slice(start..end));
                }
                _ => self.raft.snapshot_unavailable(read.to),
            }
        }
    }

    /// Stores the snapshot that finished arriving and restores the state
    /// machine from it.
    pub(super) async fn install_snapshot(&mut self, meta: SnapshotMeta) -> Result<(), ShardError> {
        let data = self.snapshots.incoming.split().freeze();
        self.storage.install_snapshot(meta.clone(), data.clone()).await.map_err(|source| self.storage_error(source))?;
        self.fsm.restore(&data).map_err(|error| ShardError::Restore { shard: self.ctx.shard_id, reason: error.0 })?;
        self.fsm.note_members(&meta.conf.members());
        self.links_from_address_book();
        self.snapshots.current = Some((meta, data));
        self.stats.snapshots_installed += 1;
        if self.requests.reads_waiting() {
            self.stats.installs_with_reads_waiting += 1;
        }
        Ok(())
    }
}
