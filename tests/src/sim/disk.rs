//! A simulated disk with the write ordering of the node's WAL, and the
//! shard driver's storage seam over it ([`SimStorage`]).
//!
//! The shard hands entry batches to the WAL without waiting, saves a hard
//! state whose term or vote changed synchronously, saves a commit-only hard
//! state lazily in the background (not ordered with the appends), and stores
//! snapshots "ordered at the call" (appends submitted earlier are durable
//! first; for a received snapshot, appends submitted later wait for it).
//! Snapshots travel as the node's files do: a local one is streamed into its
//! file, a follower is served one chunk at a time read from the stored
//! snapshot (unavailable once a newer one replaced it), a received one is
//! written chunk by chunk into a temporary file (each chunk durable when the
//! write returns; the temporary file means nothing to a restarted node, so
//! it lives in [`SimStorage`]), checked against the checksum of its chunks
//! and installed, and a restore reads the stored snapshot as a stream (one
//! off the driver runs at once but reports back later, at a time the world
//! draws).
//! This disk reproduces exactly those guarantees and no more: appends and
//! snapshots become durable in submission order, the lazy hard state at any
//! moment, and a crash loses whatever was not durable, except that a prefix
//! of the unsynced appends may have reached the platter, the next one torn
//! after any number of its bytes, and a local snapshot in that prefix may be
//! missing (later appends can land before its file).
//!
//! The log's entries also live as bytes ([`LogImage`]), and a restart
//! recovers them with the WAL's own recovery code; without a fault, what it
//! recovers must equal what became durable, entry for entry. In the
//! storage-fault mode ([`SimDisk::damage`]) a stopped node's bytes are
//! damaged (see [`super::image`]) and recovery decides what was lost and
//! what this replica claims to have acknowledged. A fault whose loss
//! recovery cannot detect (a lost durable tail beyond the hard state's
//! acknowledged index with nothing valid after it, even when damage found
//! before it claims less, or stale entries brought back) is undone: no
//! replica can vote safely after it.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use engine::batch::EntryBatch;
use engine::config::Rng;
use engine::raft::SnapshotWrite;
use engine::storage::MemStorage;
use engine::{Entry, HardState, Index, SnapshotMeta};
use node::shard::{RestoreJob, RestoredSnapshot, ShardStorage, StoredSnapshot};
use node::SnapshotImage;
use wal::{AppendTicket, SnapshotReader, WalError};

use super::image::LogImage;

/// One write in the ordered queue.
#[derive(Debug)]
pub enum DiskWrite {
    /// One append; `sequence` is its ticket's, reported durable in order.
    Entries { batch: EntryBatch, sequence: u64 },
    /// A snapshot, either taken locally (`local`: reported to the shard with
    /// `snapshot_stored` once durable) or received from a leader.
    Snapshot { meta: SnapshotMeta, data: SnapshotBytes, local: bool },
}

/// A snapshot's bytes: a received one's, or a local one's image, written
/// out only when its write lands. The node's snapshot thread writes an
/// image while the shard goes on applying, so the shard's writes meet a
/// live image (the key-value store keeps them beside the tables the image
/// shares); writing it out at once would never let them.
pub enum SnapshotBytes {
    Data(Bytes),
    Image(Box<dyn SnapshotImage>),
}

impl SnapshotBytes {
    fn into_bytes(self) -> Bytes {
        match self {
            SnapshotBytes::Data(data) => data,
            SnapshotBytes::Image(image) => {
                let mut out = Vec::new();
                image.write_to(&mut out).expect("writing to memory");
                Bytes::from(out)
            }
        }
    }
}

impl std::fmt::Debug for SnapshotBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SnapshotBytes::Data(data) => write!(f, "{} bytes", data.len()),
            SnapshotBytes::Image(_) => write!(f, "an image not yet written"),
        }
    }
}

/// A local snapshot that became durable, for the shard to hear of.
#[derive(Debug)]
pub struct SnapshotStored {
    pub meta: SnapshotMeta,
    pub data: Bytes,
}

/// The durable state of one node and the writes on their way to it.
#[derive(Debug, Default)]
pub struct SimDisk {
    /// What survives a crash.
    pub durable: MemStorage,
    /// Submitted, not yet durable, in submission order.
    pending: VecDeque<DiskWrite>,
    /// A commit-only hard state being saved in the background.
    lazy_hard_state: Option<HardState>,
    /// The sequence of the last durable append since the last restart.
    durable_sequence: u64,
    /// Local snapshots that became durable, for the shard to hear of.
    stored: Vec<SnapshotStored>,
    /// The highest index this replica may have acknowledged, as the WAL's
    /// hard state records it at each save (`wal::commit::State::acknowledged`):
    /// the durable log's end short of suffixes that queued appends replace,
    /// at least `repair_floor`; raised by reported damage.
    acknowledged: Index,
    /// What the log must reach after a start that found it short.
    repair_floor: Index,
    /// The log's bytes, as the WAL lays them out: what a restart recovers
    /// the entries from.
    image: LogImage,
    /// Recovery may report damage: a fault struck, or a crash landed a
    /// group after one that did not land.
    damaged: bool,
    /// A crash may land the second of two groups in flight without the
    /// first. The WAL cannot tell that from damage to a durable group (the
    /// second may then have been acknowledged), so it repairs: a storage
    /// fault as far as liveness goes, injected on faulty nodes only (a
    /// majority repairing at once waits, by design).
    pub out_of_order_tails: bool,
    /// The disk is full: appends wait, a local snapshot is given up and a
    /// received chunk refused with `NoSpace`, as the WAL does.
    pub full: bool,
    /// Local snapshots given up on a full disk, for the shard to hear of.
    given_up: usize,
    /// Faults injected and kept, by kind ([`super::image::FAULT_KINDS`]),
    /// and faults undone because recovery could not have detected them.
    pub faults: [u64; 4],
    pub faults_undone: u64,
    /// Restarts so far: each recovers with the next payload budget (see
    /// `image::RECOVERY_BUDGETS`).
    restarts: usize,
    /// The payloads the last recovery dropped, for the driver to read again
    /// (`ShardStorage::read_recovered`).
    dropped: Option<wal::DroppedReader>,
}

/// `(index, term)` of each entry: what identifies an entry in one log.
fn shape(entries: &[Entry]) -> Vec<(Index, engine::Term)> {
    entries.iter().map(|entry| (entry.index, entry.term)).collect()
}

/// Appends a batch to storage, skipping the part a stored snapshot covers (a
/// snapshot may be taken of applied entries whose local append is ordered
/// before it, so the overlap is the same entries).
fn append_after_snapshot(storage: &mut MemStorage, entries: &[Entry]) {
    let covered = storage.snapshot_meta().index;
    let rest: Vec<Entry> = entries.iter().filter(|entry| entry.index > covered).cloned().collect();
    if rest.is_empty() {
        return;
    }
    storage.append(&EntryBatch::encode(&rest)).expect("the engine hands contiguous batches");
}

impl SimDisk {
    /// Queues a write behind the ones already submitted.
    pub fn submit(&mut self, write: DiskWrite) {
        self.pending.push_back(write);
    }

    /// A term or vote change: durable before the call returns.
    pub fn save_hard_state_sync(&mut self, hard_state: HardState) {
        self.durable.set_hard_state(hard_state);
        self.lazy_hard_state = None;
        self.record_acknowledged();
    }

    /// What a hard-state save records as acknowledged, as the WAL computes it.
    fn record_acknowledged(&mut self) {
        let mut running_last = self.durable.last_index();
        let mut kept = running_last;
        for write in &self.pending {
            if let DiskWrite::Entries { batch, .. } = write {
                if batch.first_index() <= running_last {
                    kept = kept.min(batch.first_index() - 1);
                }
                running_last = batch.last_index();
            }
        }
        if self.durable.last_index() >= self.repair_floor {
            self.repair_floor = 0;
        }
        self.acknowledged = kept.max(self.repair_floor);
    }

    /// A commit-only change: saved in the background, unordered with appends.
    pub fn save_hard_state_lazily(&mut self, hard_state: HardState) {
        self.lazy_hard_state = Some(hard_state);
    }

    /// The background hard-state write finishes.
    pub fn finish_lazy_hard_state(&mut self) {
        if let Some(hard_state) = self.lazy_hard_state.take() {
            // A synchronous save of a newer term or vote may have happened
            // since; the WAL drops a lazy save it overtook.
            let durable = self.durable.hard_state();
            if !wal::hard_state::is_overtaken(hard_state, durable) {
                self.durable.set_hard_state(hard_state);
                self.record_acknowledged();
            }
        }
    }

    /// Makes up to `count` queued writes durable, in order.
    pub fn complete(&mut self, count: usize) {
        self.complete_overtaking(count, false);
    }

    /// Makes up to `count` queued writes durable; with `overtake`, an
    /// append queued behind a local snapshot completes before it (the WAL
    /// lets later appends land while a snapshot the log agrees with is
    /// still being written, so durability can be reported for appends
    /// submitted after a snapshot the shard has not heard of).
    pub fn complete_overtaking(&mut self, count: usize, overtake: bool) {
        for _ in 0..count {
            if self.full {
                // Nothing more fits: a local snapshot's file is given up,
                // appends wait for space.
                match self.pending.front() {
                    Some(DiskWrite::Snapshot { local: true, .. }) => {
                        self.pending.pop_front();
                        self.given_up += 1;
                        continue;
                    }
                    Some(DiskWrite::Entries { .. }) | None => break,
                    Some(DiskWrite::Snapshot { local: false, .. }) => {}
                }
            }
            let local_snapshot_first = matches!(self.pending.front(), Some(DiskWrite::Snapshot { local: true, .. }));
            let append_next = matches!(self.pending.get(1), Some(DiskWrite::Entries { .. }));
            let write = if overtake && local_snapshot_first && append_next {
                self.pending.remove(1)
            } else {
                self.pending.pop_front()
            };
            let Some(write) = write else { break };
            if let Some(stored) = self.make_durable(write) {
                self.stored.push(stored);
            }
        }
    }

    /// The log closes cleanly (a node's clean stop): every queued write
    /// lands (unless the disk is full), and the next store opened on this
    /// disk counts its appends from 1 again.
    pub fn close(&mut self) {
        self.complete(usize::MAX);
        // On a full disk the WAL cannot wait while closing: what did not
        // land is lost, as in a crash (none of it was reported durable).
        self.pending.clear();
        self.finish_lazy_hard_state();
        self.durable_sequence = 0;
        self.stored.clear();
        self.given_up = 0;
    }

    /// The local snapshots given up on a full disk since the last call.
    pub fn take_given_up(&mut self) -> usize {
        std::mem::take(&mut self.given_up)
    }

    /// The local snapshots that became durable since the last call.
    pub fn take_stored(&mut self) -> Vec<SnapshotStored> {
        std::mem::take(&mut self.stored)
    }

    /// What a restarting node recovers from this disk: the entries are what
    /// the WAL's recovery makes of the log's bytes. A `taker` gets the
    /// dropped entries as they are read, as `wal::Wal::open_applying` gives
    /// them.
    pub fn recovered(&mut self, mut taker: Option<&mut dyn wal::RecoveryApply>) -> engine::Recovered {
        let snapshot_index = self.durable.snapshot_meta().index;
        let commit = self.durable.hard_state().commit;
        self.restarts += 1;
        let recovery = self.image.recover(snapshot_index, commit, self.restarts, taker.as_mut().map(|t| &mut **t as _));
        // The dropped payloads read again from the images: they must be the
        // very entries the model holds.
        let mut recovered_entries = recovery.entries.clone();
        for entry in recovery.dropped_reader().read(snapshot_index + 1, usize::MAX).expect("read again") {
            let at = (entry.index - snapshot_index - 1) as usize;
            recovered_entries[at] = entry;
        }
        let held = self.durable.entries(self.durable.first_index(), self.durable.last_index() + 1).unwrap_or_default();
        if !self.damaged {
            // Without a fault, the bytes and the model agree exactly,
            // payloads included.
            assert!(
                recovery.damage.is_none(),
                "recovery reports damage on an undamaged log: {:?} in {}",
                recovery.damage,
                self.image
            );
            assert!(
                recovered_entries == held,
                "recovery disagrees with what became durable (snapshot {snapshot_index}): {:?} against {:?} in {}",
                shape(&recovered_entries),
                shape(&held),
                self.image
            );
        }
        self.damaged = false;
        self.acknowledged = self.acknowledged.max(recovery.acknowledged);
        self.durable = self.rebuilt(&recovered_entries);
        if self.acknowledged > self.durable.last_index() {
            self.repair_floor = self.acknowledged;
        }
        let recovered = engine::Recovered { acknowledged: self.acknowledged, ..self.durable.recovered() };
        self.dropped = None;
        let repair = self.acknowledged.max(recovered.hard_state.commit) > self.durable.last_index();
        // The WAL's rule: the taker keeps what it applied only when it got
        // every dropped entry and the replica is not in repair.
        let handed_over = wal::settle_taker(taker, recovery.handed_over, repair, (recovery.dropped_to, snapshot_index));
        if recovery.dropped_to == snapshot_index || repair {
            // As the WAL does: a replica in repair gets every payload back.
            return recovered;
        }
        // Otherwise the driver applies the entries whose payloads were
        // dropped itself, read again (`Shard::apply_recovered`), unless the
        // taker applied them.
        self.dropped = (!handed_over).then(|| recovery.dropped_reader());
        engine::Recovered {
            entries: recovery.entries,
            applied: recovery.dropped_to,
            applied_bytes: recovery.dropped_bytes,
            ..recovered
        }
    }

    /// The durable snapshot's metadata and size, with a reader of its data
    /// (`ShardStorage::open_snapshot`).
    pub fn snapshot_reader(&self) -> Option<(SnapshotMeta, u64, SnapshotReader)> {
        let meta = self.durable.snapshot_meta();
        if meta.index == 0 {
            return None;
        }
        let data = self.durable.snapshot_data().clone();
        Some((meta.clone(), data.len() as u64, Box::new(data.reader())))
    }

    /// See `ShardStorage::read_recovered`.
    pub fn read_recovered(&mut self, from: Index, bytes_max: usize) -> Result<Vec<Entry>, WalError> {
        match &mut self.dropped {
            Some(dropped) => dropped.read(from, bytes_max),
            None => Ok(Vec::new()),
        }
    }

    /// The durable state with the log replaced by `entries` (after the
    /// snapshot).
    fn rebuilt(&self, entries: &[Entry]) -> MemStorage {
        let mut rebuilt = MemStorage::new();
        rebuilt.set_hard_state(self.durable.hard_state());
        let meta = self.durable.snapshot_meta().clone();
        if meta.index > 0 {
            rebuilt.apply_snapshot(meta, self.durable.snapshot_data().clone());
        }
        if !entries.is_empty() {
            rebuilt.append(&EntryBatch::encode(entries)).expect("recovery replays a contiguous log");
        }
        rebuilt
    }

    /// Storage faults while the node is stopped (see [`LogImage::damage`]);
    /// returns whether any entry was lost. A fault whose loss recovery
    /// cannot detect is outside the model and is undone: a log that holds
    /// entries it had replaced (whatever else recovery finds), or one that
    /// lost entries beyond what recovery claims as acknowledged (the hard
    /// state's index, or what damage it found implies), damage found or not
    /// (no replica could vote safely after it; see the module
    /// documentation).
    pub fn damage(&mut self, rng: &mut Rng) -> bool {
        let before = self.image.clone();
        let mut kinds = Vec::new();
        for _ in 0..rng.range(1, 3) {
            kinds.extend(self.image.damage(rng));
        }
        let snapshot_index = self.durable.snapshot_meta().index;
        let plan = self.image.plan(snapshot_index, 0, 0, None);
        let last = self.durable.last_index();
        let held = self.durable.entries(self.durable.first_index(), last + 1).unwrap_or_default();
        let recovered = shape(&plan.entries);
        let prefix = recovered.len() <= held.len() && recovered == shape(&held[..recovered.len()]);
        let lost = !prefix || recovered.len() < held.len();
        let claimed = self.acknowledged.max(plan.acknowledged);
        // Entries the log had replaced, read back as valid before any damage
        // recovery finds, are undetectable even when other damage is found
        // after them (seed 6069 of five_nodes_with_storage_faults: a stale
        // entry 1 of term 1 under an entry 2 of term 7).
        // Found damage does not make the loss of a tail after it detectable:
        // the claim must reach the durable log's end (seed 241921 of
        // three_nodes_with_storage_faults: a group moved out of the newest
        // segment left it reading as empty, so entries 33 to 38 of term 16
        // were gone, while the damage found in the segment before claimed
        // only 32, and this witness's vote then elected a leader without
        // them).
        let detected = prefix && claimed >= last;
        if lost && !detected {
            self.image = before;
            self.faults_undone += 1;
            return false;
        }
        for kind in kinds {
            self.faults[kind] += 1;
        }
        self.damaged = true;
        lost
    }

    /// How many writes are queued.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    fn make_durable(&mut self, write: DiskWrite) -> Option<SnapshotStored> {
        match write {
            DiskWrite::Entries { batch, sequence } => {
                let entries: Vec<Entry> = batch.entries().collect();
                append_after_snapshot(&mut self.durable, &entries);
                self.image.write(&batch, None);
                self.durable_sequence = sequence;
                None
            }
            DiskWrite::Snapshot { meta, data, local } => {
                let data = data.into_bytes();
                if super::trace::enabled() && local {
                    eprintln!(
                        "snapshot {}/{} taken lands: {} bytes, crc {:08x}",
                        meta.index,
                        meta.term,
                        data.len(),
                        crc32c::crc32c(&data)
                    );
                }
                if meta.index > self.durable.snapshot_meta().index {
                    // A received snapshot the log disagrees with voids it.
                    if !local && self.durable.term(meta.index).ok() != Some(meta.term) {
                        self.image.void();
                    }
                    self.durable.apply_snapshot(meta.clone(), data.clone());
                }
                local.then_some(SnapshotStored { meta, data })
            }
        }
    }

    /// A crash: unsynced writes are lost, except that a prefix of them may
    /// have reached the disk, the last one torn. Nothing is reported: the
    /// process that would have heard about it is gone.
    pub fn crash(&mut self, rng: &mut Rng) {
        self.lose_unsynced(rng);
        // The sequences of a store's appends count from its opening, and
        // the process that would hear of a stored snapshot is gone.
        self.durable_sequence = 0;
        self.stored.clear();
    }

    fn lose_unsynced(&mut self, rng: &mut Rng) {
        if rng.range(0, 2) == 0 {
            self.finish_lazy_hard_state();
        }
        self.lazy_hard_state = None;
        let pending = std::mem::take(&mut self.pending);
        if pending.is_empty() || rng.range(0, 3) != 0 {
            return;
        }
        let landed = rng.range(0, pending.len() as u64 + 1) as usize;
        let mut writes = pending.into_iter().enumerate();
        while let Some((position, write)) = writes.next() {
            if position < landed {
                // A local snapshot agrees with the log, so the WAL lets later
                // appends land before its file does: it may be missing from
                // a landed prefix.
                let overtaken = matches!(write, DiskWrite::Snapshot { local: true, .. }) && rng.range(0, 2) == 0;
                if !overtaken {
                    self.make_durable(write);
                }
                continue;
            }
            // The first write that did not fully land is torn after any
            // number of its bytes, and recovery cuts it whole; the WAL has
            // two groups in flight, so the one after it may have landed.
            if let DiskWrite::Entries { batch, sequence } = write {
                let landed = rng.range(0, batch.len_bytes() as u64) as usize;
                if super::trace::enabled() {
                    eprintln!("torn write of {}..={} at a crash", batch.first_index(), batch.last_index());
                }
                if self.image.torn_write_is_whole(&batch, landed) {
                    // What did not land is what the file already held
                    // there (zeros, or a recycled file's same record from
                    // before a void): the record is whole.
                    self.make_durable(DiskWrite::Entries { batch, sequence });
                } else {
                    self.image.write(&batch, Some(landed));
                }
                if let Some((_, DiskWrite::Entries { batch: next, .. })) = writes.next() {
                    if self.out_of_order_tails && rng.range(0, 4) == 0 {
                        if super::trace::enabled() {
                            eprintln!("{}..={} landed after a torn write", next.first_index(), next.last_index());
                        }
                        self.image.write(&next, None);
                        self.damaged = true;
                    }
                }
            }
            break;
        }
    }
}

/// The shard driver's storage over a [`SimDisk`] shared with the world,
/// which decides when writes become durable and when the node crashes.
/// Every operation completes at once: the futures are ready on first poll.
pub struct SimStorage {
    pub disk: Rc<RefCell<SimDisk>>,
    /// Appends submitted since this store was opened (the last ticket's
    /// sequence).
    submitted: u64,
    /// The node's id and the shard's, for traces.
    id: (u64, u32),
    /// The snapshot arriving from the leader (its temporary file) and the
    /// crc32c of its chunks.
    receiving: Option<(SnapshotMeta, BytesMut, u32)>,
    /// A restore off the driver: run at once (deterministically), its
    /// outcome handed to the shard when the world decides
    /// ([`SimStorage::take_restored`]), so that the shard runs on with its
    /// state machine being restored for a while.
    restored: Option<RestoredSnapshot>,
}

impl SimStorage {
    /// With `SIM_TRACE`, says which snapshot this replica installs or takes.
    fn trace_snapshot(&self, what: &str, meta: &SnapshotMeta, data: &Bytes) {
        if super::trace::enabled() {
            let (node, shard, crc) = (self.id.0, self.id.1, crc32c::crc32c(data));
            eprintln!(
                "node {node} shard {shard} {what} snapshot {}/{}: {} bytes, crc {crc:08x}",
                meta.index,
                meta.term,
                data.len()
            );
        }
    }

    pub fn new(disk: Rc<RefCell<SimDisk>>, id: (u64, u32)) -> SimStorage {
        SimStorage { disk, submitted: 0, id, receiving: None, restored: None }
    }

    /// Whether a restore's outcome waits to be handed to the shard.
    pub fn restore_pending(&self) -> bool {
        self.restored.is_some()
    }

    /// The finished restore, for `Shard::snapshot_restored`.
    pub fn take_restored(&mut self) -> Option<RestoredSnapshot> {
        self.restored.take()
    }
}

/// A storage error of the simulated disk (a broken driver contract).
fn sim_error(what: String) -> WalError {
    WalError::Io {
        op: "simulated snapshot",
        path: Default::default(),
        source: std::sync::Arc::new(std::io::Error::other(what)),
    }
}

impl ShardStorage for SimStorage {
    async fn append(&mut self, batch: EntryBatch) -> Result<AppendTicket, WalError> {
        self.submitted += 1;
        let ticket = AppendTicket {
            sequence: self.submitted,
            first_index: batch.first_index(),
            last_index: batch.last_index(),
            last_term: batch.last_term(),
        };
        self.disk.borrow_mut().submit(DiskWrite::Entries { batch, sequence: self.submitted });
        Ok(ticket)
    }

    fn durable_sequence(&self) -> u64 {
        self.disk.borrow().durable_sequence
    }

    fn read_recovered(&mut self, from: Index, bytes_max: usize) -> Result<Vec<Entry>, WalError> {
        self.disk.borrow_mut().read_recovered(from, bytes_max)
    }

    fn no_space(&self) -> bool {
        self.disk.borrow().full
    }

    fn abandon_received_snapshot(&mut self) {
        self.receiving = None;
    }

    fn set_repair_floor(&mut self, index: Index) {
        self.disk.borrow_mut().repair_floor = index;
    }

    async fn save_hard_state(&mut self, hard_state: HardState) -> Result<(), WalError> {
        self.disk.borrow_mut().save_hard_state_sync(hard_state);
        Ok(())
    }

    fn save_commit(&mut self, hard_state: HardState) {
        self.disk.borrow_mut().save_hard_state_lazily(hard_state);
    }

    /// Durable at once (the driver awaits it); chunks must continue the
    /// snapshot being received, from offset 0.
    async fn write_snapshot_chunk(&mut self, write: SnapshotWrite) -> Result<(), WalError> {
        if self.disk.borrow().full {
            return Err(WalError::NoSpace { op: "writing a received snapshot chunk", path: Default::default() });
        }
        if write.offset == 0 {
            self.receiving = Some((write.meta.clone(), BytesMut::new(), 0));
        }
        match &mut self.receiving {
            Some((meta, data, crc)) if *meta == write.meta && data.len() as u64 == write.offset => {
                *crc = crc32c::crc32c_append(*crc, &write.data);
                data.extend_from_slice(&write.data);
                Ok(())
            }
            _ => {
                Err(sim_error(format!("chunk at {} of snapshot {} continues nothing", write.offset, write.meta.index)))
            }
        }
    }

    /// The shard awaits the store, ordered behind earlier appends: the whole
    /// queue completes.
    async fn install_snapshot(&mut self, meta: SnapshotMeta) -> Result<(), WalError> {
        let Some((received, data, crc)) = self.receiving.take() else {
            return Err(sim_error(format!("install of snapshot {} that was not received", meta.index)));
        };
        if received != meta || crc32c::crc32c(&data) != crc {
            return Err(sim_error(format!("install of snapshot {} that does not match what was received", meta.index)));
        }
        let data = data.freeze();
        self.trace_snapshot("installs", &meta, &data);
        let mut disk = self.disk.borrow_mut();
        disk.submit(DiskWrite::Snapshot { meta, data: SnapshotBytes::Data(data), local: false });
        disk.complete(usize::MAX);
        Ok(())
    }

    /// The image is written out when the write lands (see
    /// [`SnapshotBytes`]).
    fn store_snapshot(&mut self, meta: SnapshotMeta, image: Box<dyn SnapshotImage>) {
        if super::trace::enabled() {
            let (node, shard) = (self.id.0, self.id.1);
            eprintln!("node {node} shard {shard} takes snapshot {}/{}", meta.index, meta.term);
        }
        self.disk.borrow_mut().submit(DiskWrite::Snapshot { meta, data: SnapshotBytes::Image(image), local: true });
    }

    /// A chunk of the durable snapshot, if it is still the one at `index`.
    async fn read_snapshot(&mut self, index: Index, offset: u64, len: u64) -> Result<Option<Bytes>, WalError> {
        let disk = self.disk.borrow();
        if disk.durable.snapshot_meta().index != index || index == 0 {
            return Ok(None);
        }
        let data = disk.durable.snapshot_data();
        let start = (offset as usize).min(data.len());
        let end = offset.saturating_add(len).min(data.len() as u64) as usize;
        Ok(Some(data.slice(start..end)))
    }

    fn open_snapshot(&mut self) -> Result<Option<(SnapshotMeta, u64, SnapshotReader)>, WalError> {
        Ok(self.disk.borrow().snapshot_reader())
    }

    fn restore_snapshot(&mut self, job: RestoreJob) {
        assert!(self.restored.is_none(), "one restore at a time");
        self.restored = Some(job.run());
    }

    fn compact(&mut self, index: Index) {
        let mut disk = self.disk.borrow_mut();
        disk.durable.compact(index).expect("compaction stays below the stored snapshot");
        disk.image.compact(index);
    }
}

/// A stored local snapshot, as the shard hears of it.
pub fn stored(done: SnapshotStored) -> StoredSnapshot {
    StoredSnapshot { meta: done.meta, size: done.data.len() as u64, serialize_time: Duration::ZERO }
}
