//! A simulated disk with the write ordering of the node's WAL.
//!
//! The shard hands entry batches to the WAL without waiting, saves a hard
//! state whose term or vote changed synchronously, saves a commit-only hard
//! state lazily in the background (not ordered with the appends), and stores
//! snapshots "ordered at the call" (appends submitted earlier are durable
//! first; for a received snapshot, appends submitted later wait for it).
//! This disk reproduces exactly those guarantees and no more: appends and
//! snapshots become durable in submission order, the lazy hard state at any
//! moment, and a crash loses whatever was not durable, except that a prefix
//! of the unsynced appends may have reached the platter, the last of them
//! torn (a suffix of its entries missing), and a local snapshot in that
//! prefix may be missing (later appends can land before its file).

use std::collections::VecDeque;

use bytes::Bytes;
use engine::batch::EntryBatch;
use engine::config::Rng;
use engine::storage::MemStorage;
use engine::{Entry, HardState, Index, Message, SnapshotMeta, Term};

/// One write in the ordered queue.
#[derive(Debug)]
pub enum DiskWrite {
    /// Entry batches of one Ready; `last` is reported to the engine once
    /// durable, and `messages` (the Ready's `messages_after_persist`) leave
    /// then.
    Entries { batches: Vec<EntryBatch>, last: Option<(Index, Term)>, messages: Vec<Message> },
    /// A snapshot, either taken locally (`local`: reported to the engine with
    /// `snapshot_created` once durable) or received from a leader.
    Snapshot { meta: SnapshotMeta, data: Bytes, local: bool },
}

/// What became durable, for the node to act on at its next durability point.
#[derive(Debug)]
pub enum Completion {
    Persisted { last: Option<(Index, Term)>, messages: Vec<Message> },
    SnapshotStored { meta: SnapshotMeta, data: Bytes },
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

    /// Whether an append is still on its way: messages that must wait for
    /// durability attach to the latest one, as in the shard.
    pub fn has_pending_entries(&self) -> bool {
        self.pending.iter().any(|write| matches!(write, DiskWrite::Entries { .. }))
    }

    /// Attaches messages to the newest pending append.
    pub fn attach_messages(&mut self, more: Vec<Message>) {
        for write in self.pending.iter_mut().rev() {
            if let DiskWrite::Entries { messages, .. } = write {
                messages.extend(more);
                return;
            }
        }
        panic!("attach_messages without a pending append");
    }

    /// A term or vote change: durable before the call returns.
    pub fn save_hard_state_sync(&mut self, hard_state: HardState) {
        self.durable.set_hard_state(hard_state);
        self.lazy_hard_state = None;
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
            }
        }
    }

    /// Makes up to `count` queued writes durable, in order.
    pub fn complete(&mut self, count: usize) -> Vec<Completion> {
        let mut done = Vec::new();
        for _ in 0..count {
            let Some(write) = self.pending.pop_front() else { break };
            done.push(self.make_durable(write));
        }
        done
    }

    /// How many writes are queued.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    fn make_durable(&mut self, write: DiskWrite) -> Completion {
        match write {
            DiskWrite::Entries { batches, last, messages } => {
                for batch in &batches {
                    let entries: Vec<Entry> = batch.entries().collect();
                    append_after_snapshot(&mut self.durable, &entries);
                }
                Completion::Persisted { last, messages }
            }
            DiskWrite::Snapshot { meta, data, local } => {
                if meta.index > self.durable.snapshot_meta().index {
                    self.durable.apply_snapshot(meta.clone(), data.clone());
                }
                if local {
                    Completion::SnapshotStored { meta, data }
                } else {
                    Completion::Persisted { last: None, messages: Vec::new() }
                }
            }
        }
    }

    /// A crash: unsynced writes are lost, except that a prefix of them may
    /// have reached the disk, the last one torn. Nothing is reported: the
    /// process that would have heard about it is gone.
    pub fn crash(&mut self, rng: &mut Rng) {
        if rng.range(0, 2) == 0 {
            self.finish_lazy_hard_state();
        }
        self.lazy_hard_state = None;
        let pending = std::mem::take(&mut self.pending);
        if pending.is_empty() || rng.range(0, 3) != 0 {
            return;
        }
        let landed = rng.range(0, pending.len() as u64 + 1) as usize;
        for (position, write) in pending.into_iter().enumerate() {
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
            // The first write that did not fully land is torn: a prefix of
            // its entries made it (a WAL that cuts a torn batch whole is the
            // special case of an empty prefix).
            if let DiskWrite::Entries { batches, .. } = write {
                let total: u64 = batches.iter().map(|batch| u64::from(batch.count())).sum();
                let mut kept = rng.range(0, total + 1) as usize;
                for batch in &batches {
                    if kept == 0 {
                        break;
                    }
                    // A batch replacing a suffix of the log truncates first.
                    let entries: Vec<Entry> = batch.entries().take(kept).collect();
                    kept -= entries.len();
                    append_after_snapshot(&mut self.durable, &entries);
                }
            }
            break;
        }
    }
}
