//! What a shard's driver needs from the world, as three small seams: the
//! durable log ([`ShardStorage`]), the network and the clients
//! ([`ShardTransport`]), and time ([`Clock`]).
//!
//! The io_uring runtime implements them over the WAL and TCP
//! (`crate::runtime`); the deterministic simulator in `tests/` implements
//! them over a simulated disk, network and clock. The driver decides *what*
//! happens and in which order (persist before send, snapshot before the
//! entries after it, durability reported in order); an implementation only
//! carries it out. That is what lets the simulator test the order the node
//! really uses.
//!
//! Every method returns at once except the `async` ones, which the driver
//! awaits before it does anything else, exactly as their contract requires:
//! an append that must wait for room in the log's queue, a hard state whose
//! term or vote changed (it must be durable before any message that depends
//! on it leaves), a chunk of a snapshot received from the leader (durable
//! before its acknowledgement leaves, like entries), the received snapshot's
//! install (stored in the append order before the entries that follow it),
//! and a chunk of the local snapshot read for a follower. An implementation
//! whose operations complete at once (the simulator's, the in-memory
//! store's) returns futures that are ready on their first poll.
//!
//! Snapshots go through storage, never whole through memory: the driver
//! hands over a captured image to be streamed into a file, reads one chunk
//! at a time to send, writes each received chunk as it arrives, and
//! restores the state machine from a reader of the stored file (off the
//! driver, for a state machine that offers a restorer).

use std::time::{Duration, Instant};

use bytes::Bytes;
use engine::raft::SnapshotWrite;
use engine::{Entry, EntryBatch, HardState, Index, Message, NodeId, SnapshotMeta};
use net::ResponseStatus;
use wal::{AppendTicket, SnapshotReader, WalError};

use crate::app::{RestoreError, RestoredState, SnapshotImage};
use crate::replicated::{Addresses, RestoredNode};

/// The durable log of one shard, as its driver uses it. Durability is
/// reported strictly in submission order (see `wal::LogStore`).
#[allow(async_fn_in_trait)] // Single-threaded by design: no `Send` bound wanted.
pub trait ShardStorage {
    /// Queues `batch` for a durable append and returns its ticket; waits only
    /// while the log's queue is full (back-pressure), never for durability.
    async fn append(&mut self, batch: EntryBatch) -> Result<AppendTicket, WalError>;

    /// The sequence of the last durable append (0 before any).
    fn durable_sequence(&self) -> u64;

    /// Whether the disk is full (see `wal::LogStore::no_space`): new writes
    /// are refused with `NoSpace` until it is not.
    fn no_space(&self) -> bool {
        false
    }

    /// See `wal::LogStore::set_repair_floor`: called before the hard-state
    /// save of the Ready in which the engine's repair target became
    /// `engine::REPAIR_UNKNOWN`, and when such a repair ends.
    fn set_repair_floor(&mut self, index: Index) {
        let _ = index;
    }

    /// See `wal::LogStore::read_recovered`: entries whose payloads the log
    /// dropped at recovery, read again, for the driver to apply at start.
    fn read_recovered(&mut self, from: Index, bytes_max: usize) -> Result<Vec<Entry>, WalError> {
        let _ = (from, bytes_max);
        Ok(Vec::new())
    }

    /// Durably replaces the hard state; resolves once it is synced.
    async fn save_hard_state(&mut self, hard_state: HardState) -> Result<(), WalError>;

    /// Saves a hard state that differs from the durable one only in its
    /// commit index, in the background and without `fdatasync`: after a
    /// crash the node may find an older commit index (a hint the leader
    /// repeats). An implementation keeps at most one such save in flight and
    /// drops all but the newest waiting one.
    fn save_commit(&mut self, hard_state: HardState);

    /// Writes a chunk of a snapshot arriving from the leader into a
    /// temporary file, durably: resolves once it is synced (the engine
    /// acknowledges it to the leader). Chunks come in order; offset 0 starts
    /// a new snapshot, replacing a partial one.
    async fn write_snapshot_chunk(&mut self, write: SnapshotWrite) -> Result<(), WalError>;

    /// Verifies the received snapshot whose last chunk was written (against
    /// the checksum computed as its chunks arrived) and durably stores it,
    /// replacing the log as `wal::LogStore::save_snapshot_draft` describes;
    /// resolves once stored.
    async fn install_snapshot(&mut self, meta: SnapshotMeta) -> Result<(), WalError>;

    /// Drops the snapshot being received (its temporary file included):
    /// a chunk could not be written because the disk is full.
    fn abandon_received_snapshot(&mut self) {}

    /// Serializes a captured local snapshot into a file and stores it, in
    /// the background (serializing a large state takes tens of
    /// milliseconds). The outcome must come back through
    /// [`crate::shard::Shard::snapshot_stored`].
    fn store_snapshot(&mut self, meta: SnapshotMeta, image: Box<dyn SnapshotImage>);

    /// `len` bytes (fewer at its end) of the stored snapshot's data from
    /// `offset`, for a follower; `None` when the stored snapshot is no
    /// longer the one at `index`.
    async fn read_snapshot(&mut self, index: Index, offset: u64, len: u64) -> Result<Option<Bytes>, WalError>;

    /// The stored snapshot's metadata and size, with a reader of its data,
    /// for restoring the state machine (at start, after an install).
    fn open_snapshot(&mut self) -> Result<Option<(SnapshotMeta, u64, SnapshotReader)>, WalError>;

    /// Frees log space up to `index` (covered by the stored snapshot), in the
    /// background. A failure stops the log; the next append reports it.
    fn compact(&mut self, index: Index);

    /// Runs a restore of the state machine from a received snapshot off
    /// the driver (a large state takes a fraction of a second per hundred
    /// megabytes to build), at most one at a time. The outcome must come
    /// back through [`crate::shard::Shard::snapshot_restored`], unless the
    /// shard stopped meanwhile.
    fn restore_snapshot(&mut self, job: RestoreJob);

    /// Drops the state a restore replaced, off the driver where that is
    /// possible (freeing a large state takes time too).
    fn drop_replaced(&mut self, replaced: RestoredState) {
        drop(replaced);
    }
}

/// A restore of the state machine from a stored snapshot, to run off the
/// driver ([`ShardStorage::restore_snapshot`]): the snapshot's reader and
/// the state machine's restorer, which build a new state that the driver
/// then adopts.
pub struct RestoreJob {
    pub meta: SnapshotMeta,
    run: Box<dyn FnOnce() -> Result<RestoredNode, RestoreError> + Send>,
}

impl RestoreJob {
    pub(crate) fn new(
        meta: SnapshotMeta,
        run: Box<dyn FnOnce() -> Result<RestoredNode, RestoreError> + Send>,
    ) -> RestoreJob {
        RestoreJob { meta, run }
    }

    /// Runs the restore (blocking: reads the file, builds the state).
    pub fn run(self) -> RestoredSnapshot {
        let started = Instant::now();
        let result = (self.run)();
        RestoredSnapshot { meta: self.meta, result, restore_time: started.elapsed() }
    }
}

/// What a [`RestoreJob`] built, for [`crate::shard::Shard::snapshot_restored`].
pub struct RestoredSnapshot {
    pub meta: SnapshotMeta,
    pub(crate) result: Result<RestoredNode, RestoreError>,
    /// How long the restore took, off the driver.
    pub restore_time: Duration,
}

impl RestoredSnapshot {
    /// A restore that could not run: the shard stops with `reason`.
    pub fn failed(meta: SnapshotMeta, reason: String) -> RestoredSnapshot {
        RestoredSnapshot { meta, result: Err(RestoreError(reason)), restore_time: Duration::ZERO }
    }
}

/// A local snapshot serialized and stored by [`ShardStorage::store_snapshot`].
pub struct StoredSnapshot {
    pub meta: SnapshotMeta,
    /// The snapshot's size in bytes.
    pub size: u64,
    /// How long serializing the image took (a latency stage).
    pub serialize_time: Duration,
}

/// Peers and clients, as a shard's driver reaches them.
pub trait ShardTransport {
    /// Where an answer to a client goes (a connection, a request forwarded
    /// from another core, a simulated client).
    type Reply;

    /// Sends a Raft message of this shard to `message.to`. Delivery is best
    /// effort: a full queue or a down link drops it, and Raft resends.
    fn send(&mut self, message: Message);

    /// Answers a client. Must never drop the answer silently while the
    /// client is connected.
    fn reply(&mut self, to: Self::Reply, status: ResponseStatus);

    /// The replicated address book learned where member `id` is: make sure
    /// its Raft traffic can reach it.
    fn member_addresses(&mut self, id: NodeId, addresses: &Addresses);

    /// Node `id` was removed from this shard for good (the removal is
    /// committed and its configuration leaves `id` out): this shard sends
    /// it nothing any more.
    fn member_removed(&mut self, id: NodeId);

    /// The peers that refuse this node as removed from the cluster (see
    /// `net::Link::told_removed`); none for transports without handshakes.
    fn refusing_as_removed(&self) -> Vec<NodeId> {
        Vec::new()
    }

    /// The state of this shard's link to each peer, by peer id; none for
    /// transports without connections.
    fn links(&self) -> Vec<LinkReport> {
        Vec::new()
    }
}

/// How a link to a peer fares, for the node's status (`links`): whether a
/// connection is up, and if not, why the last attempt failed, so that an
/// operator whose shard has no leader sees which peers this node cannot
/// reach and why (a refused handshake, another shard count, a connect
/// error) without reading the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkReport {
    pub peer: NodeId,
    /// The address dialled (this core's port of the peer).
    pub addr: String,
    pub connected: bool,
    /// Why the link is down (`net::Link::problem`); `None` while it is up.
    pub problem: Option<String>,
    /// Connections made since the link started.
    pub connects: u64,
    /// Handshakes the peer refused, or failed TLS handshakes.
    pub handshake_refusals: u64,
    /// Connections closed because the peer runs another shard count.
    pub shard_count_mismatches: u64,
}

/// The driver's only source of time: latencies, request timeouts and the
/// periodic sweeps read it. Engine time is logical (`Raft::tick`).
pub trait Clock {
    fn now(&self) -> Instant;
}

/// The operating system's monotonic clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}
