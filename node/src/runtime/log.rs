//! [`NodeLog`]: the log store a node runs on, chosen when it starts: the
//! io_uring WAL in the data directory, or memory (an in-process cluster for
//! an application's tests), behind one `wal::LogStore`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use engine::{Entry, EntryBatch, HardState, Index, NodeId, Recovered, SnapshotMeta};
use wal::{AppendTicket, LogStore, MemDisk, MemLog, SnapshotDraft, SnapshotReader, Wal, WalConfig, WalError};

/// The disks of an in-process cluster's nodes, by node and shard. They
/// outlive the nodes, so a node stopped and started again recovers what it
/// stored, as from a data directory.
#[derive(Clone, Debug, Default)]
pub struct MemDisks(Arc<Mutex<HashMap<(NodeId, u32), MemDisk>>>);

impl MemDisks {
    pub fn new() -> MemDisks {
        MemDisks::default()
    }

    /// The disk of `node`'s shard `shard` (created empty the first time).
    pub fn disk(&self, node: NodeId, shard: u32) -> MemDisk {
        let mut disks = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        disks.entry((node, shard)).or_default().clone()
    }

    /// Forgets `node`'s disks: it comes back empty (a wiped machine).
    pub fn wipe(&self, node: NodeId) {
        let mut disks = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        disks.retain(|(id, _), _| *id != node);
    }
}

/// Where a shard's log lives.
pub enum LogOptions {
    Wal(Box<WalConfig>),
    Memory(MemDisk),
}

/// A shard's log store: the WAL or memory.
#[allow(clippy::large_enum_variant)] // One per shard, made once: no copies to save.
pub enum NodeLog {
    Wal(Wal),
    Memory(MemLog),
}

/// Calls the same method on whichever store it is.
macro_rules! delegate {
    ($self:ident, $log:ident => $call:expr) => {
        match $self {
            NodeLog::Wal($log) => $call,
            NodeLog::Memory($log) => $call,
        }
    };
}

impl LogStore for NodeLog {
    type Options = LogOptions;

    async fn open(options: LogOptions) -> Result<(NodeLog, Recovered), WalError> {
        Ok(match options {
            LogOptions::Wal(config) => {
                let (log, recovered) = Wal::open(*config).await?;
                (NodeLog::Wal(log), recovered)
            }
            LogOptions::Memory(disk) => {
                let (log, recovered) = MemLog::open(disk).await?;
                (NodeLog::Memory(log), recovered)
            }
        })
    }

    fn append(&self, batch: EntryBatch) -> Result<AppendTicket, WalError> {
        delegate!(self, log => log.append(batch))
    }

    fn durable_sequence(&self) -> u64 {
        delegate!(self, log => log.durable_sequence())
    }

    fn durable_index(&self) -> Index {
        delegate!(self, log => log.durable_index())
    }

    fn last_index(&self) -> Index {
        delegate!(self, log => log.last_index())
    }

    async fn wait_durable(&self, sequence: u64) -> Result<(), WalError> {
        delegate!(self, log => log.wait_durable(sequence).await)
    }

    async fn save_hard_state(&self, hard_state: HardState) -> Result<(), WalError> {
        delegate!(self, log => log.save_hard_state(hard_state).await)
    }

    async fn save_commit(&self, hard_state: HardState) -> Result<(), WalError> {
        delegate!(self, log => log.save_commit(hard_state).await)
    }

    fn snapshot_draft(&self, meta: SnapshotMeta, received: bool) -> Result<SnapshotDraft, WalError> {
        delegate!(self, log => log.snapshot_draft(meta, received))
    }

    async fn save_snapshot_draft(&self, draft: SnapshotDraft) -> Result<(), WalError> {
        delegate!(self, log => log.save_snapshot_draft(draft).await)
    }

    async fn read_snapshot(&self, index: Index, offset: u64, len: u64) -> Result<Option<Bytes>, WalError> {
        delegate!(self, log => log.read_snapshot(index, offset, len).await)
    }

    fn open_snapshot(&self, verify: bool) -> Result<Option<(SnapshotMeta, u64, SnapshotReader)>, WalError> {
        delegate!(self, log => log.open_snapshot(verify))
    }

    async fn load_snapshot(&self) -> Result<Option<(SnapshotMeta, Bytes)>, WalError> {
        delegate!(self, log => log.load_snapshot().await)
    }

    async fn compact(&self, index: Index) -> Result<(), WalError> {
        delegate!(self, log => log.compact(index).await)
    }

    fn no_space(&self) -> bool {
        delegate!(self, log => log.no_space())
    }

    fn set_repair_floor(&self, index: Index) {
        delegate!(self, log => log.set_repair_floor(index))
    }

    fn recovery_damage(&self) -> Option<&WalError> {
        delegate!(self, log => log.recovery_damage())
    }

    fn read_recovered(&self, from: Index, bytes_max: usize) -> Result<Vec<Entry>, WalError> {
        delegate!(self, log => log.read_recovered(from, bytes_max))
    }

    async fn close(self) -> Result<(), WalError> {
        delegate!(self, log => log.close().await)
    }
}
