//! Executing a `Ready`: persisting entries and the hard state, sending
//! messages before or after the local write is durable, applying committed
//! entries and answering their clients, and reporting durability back to
//! the engine.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Instant;

use engine::{EntryKind, HardState, Index, Message, Role};
use wal::AppendTicket;

use super::{Clock, Shard, ShardError, ShardStorage, ShardTransport};
use crate::app::StateMachine;
use crate::replicated::{Applied, SetAddresses};

/// How often a long apply of the log read again at a restart says how far
/// it got (one with gigabytes beyond the log budget takes seconds, and the
/// node answers nothing until it is done).
const RECOVERY_PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// Appends on their way to the disk and what waits for them.
#[derive(Default)]
pub(super) struct Persistence {
    /// Appends handed to storage and not yet reported durable, with when.
    /// Invariant: sequences strictly increase.
    tickets: VecDeque<(AppendTicket, Instant)>,
    /// Messages waiting for the append with this sequence to be durable.
    /// Invariant: sequences increase, and each names a ticket in `tickets`.
    after_persist: VecDeque<(u64, Vec<Message>)>,
    /// A commit-only hard state to save lazily at the next tick.
    pub(super) hard_state_pending: Option<HardState>,
    /// The durable sequence last seen. Invariant: never decreases.
    durable_seen: u64,
}

impl Persistence {
    pub(super) fn oldest_pending(&self) -> Option<u64> {
        self.tickets.front().map(|(ticket, _)| ticket.sequence)
    }

    pub(super) fn check_invariants(&self, durable: u64) -> Result<(), String> {
        if durable < self.durable_seen {
            return Err(format!("storage's durable sequence went back from {} to {durable}", self.durable_seen));
        }
        let tickets: Vec<u64> = self.tickets.iter().map(|(ticket, _)| ticket.sequence).collect();
        if !tickets.windows(2).all(|pair| pair[0] < pair[1]) {
            return Err(format!("append tickets out of order: {tickets:?}"));
        }
        let waits: Vec<u64> = self.after_persist.iter().map(|(sequence, _)| *sequence).collect();
        if !waits.windows(2).all(|pair| pair[0] <= pair[1]) {
            return Err(format!("messages wait for appends out of order: {waits:?}"));
        }
        if let Some((sequence, _)) = self.after_persist.back() {
            if !self.tickets.iter().any(|(ticket, _)| ticket.sequence == *sequence) {
                return Err(format!("messages wait for append {sequence}, which is not pending"));
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
    /// Reports storage's progress to the engine and executes every Ready.
    /// Returns an error when storage failed: the shard must stop rather than
    /// report something durable that is not.
    pub async fn process(&mut self) -> Result<(), ShardError> {
        self.propose_gathered();
        self.adopt_restored()?;
        self.on_durable();
        if self.unknown_repair_end.is_some() {
            self.save_unknown_repair_end().await?;
        }
        if !self.backup_reads.is_empty() {
            self.serve_backup_reads().await;
        }
        while self.raft.has_ready() {
            let mut ready = self.raft.ready();
            if let Some(soft) = ready.soft_state {
                self.on_role_change(soft.role);
                self.drop_stale_forwards();
            }
            let leader = self.raft.leader();
            if leader != self.leader_seen {
                self.leader_seen = leader;
                self.stats.leader_changes += u64::from(leader != engine::NODE_NONE);
            }
            // A received snapshot: each chunk durable as it arrives (its
            // acknowledgement waits in `messages_after_persist`); the last
            // one installed and the state machine restored, before the
            // entries that follow it are appended or applied.
            self.write_snapshot_chunks(&mut ready).await?;
            if let Some(meta) = ready.snapshot_install.take() {
                self.install_snapshot(meta).await?;
            }
            for batch in std::mem::take(&mut ready.entries) {
                self.stats.log_bytes_appended += batch.len_bytes() as u64;
                let ticket = self.storage.append(batch).await.map_err(|source| self.storage_error(source))?;
                self.persist.tickets.push_back((ticket, self.clock.now()));
            }
            if self.raft.repair_target() != self.repair_seen || self.raft.unknown_repairs() != self.unknown_repairs_seen
            {
                self.repair_changed().await?;
            }
            if let Some(hard_state) = ready.hard_state {
                if ready.hard_state_must_sync {
                    // A vote or a new term must be durable before any message
                    // that depends on it leaves.
                    self.storage.save_hard_state(hard_state).await.map_err(|source| self.storage_error(source))?;
                    self.persist.hard_state_pending = None;
                } else {
                    self.persist.hard_state_pending = Some(hard_state);
                }
            }
            for message in std::mem::take(&mut ready.messages) {
                self.transport.send(message);
            }
            let waiting = std::mem::take(&mut ready.messages_after_persist);
            if !waiting.is_empty() {
                match self.persist.tickets.back() {
                    Some((ticket, _)) => self.persist.after_persist.push_back((ticket.sequence, waiting)),
                    None => {
                        for message in waiting {
                            self.transport.send(message);
                        }
                    }
                }
            }
            let committed = std::mem::take(&mut ready.committed_entries);
            if !committed.is_empty() {
                self.apply_committed(committed);
            }
            for read in std::mem::take(&mut ready.read_states) {
                self.read_index_known(read.index, read.context);
            }
            for context in std::mem::take(&mut ready.dropped_reads) {
                self.read_dropped(context);
            }
            let snapshot_due = ready.snapshot_due;
            let reads = std::mem::take(&mut ready.snapshot_reads);
            let compact_to = ready.compact_to;
            self.raft.advance(ready);
            if self.raft.is_witness() {
                // A witness applies by moving its applied index (the engine
                // hands it configuration entries only): its state machine,
                // which holds nothing else, follows.
                self.fsm.skip(self.raft.applied());
            }
            if snapshot_due {
                if let Err(reason) = self.take_snapshot_now() {
                    tracing::debug!(shard = self.ctx.shard_id, reason, "snapshot skipped; asked again shortly");
                    self.raft.snapshot_not_taken();
                }
            }
            self.serve_snapshot_reads(reads).await;
            if let Some(index) = compact_to {
                self.storage.compact(index);
            }
            self.serve_reads();
            self.on_durable();
        }
        #[cfg(debug_assertions)]
        if let Err(broken) = self.check_invariants() {
            panic!("shard {}: {broken}", self.ctx.shard_id);
        }
        Ok(())
    }

    /// Writes the received snapshot chunks of a Ready, each durably. A full
    /// disk is not fatal: the snapshot is dropped (its file too, freeing the
    /// space it held), its chunks' acknowledgements in this Ready are
    /// withdrawn, and the engine receives it anew when the leader resends;
    /// the shard goes on meanwhile. (The engine installs a snapshot only
    /// after the Ready carrying its last chunk, so that chunk may fail too.)
    async fn write_snapshot_chunks(&mut self, ready: &mut engine::Ready) -> Result<(), ShardError> {
        let mut abandoned: Option<engine::SnapshotMeta> = None;
        for write in std::mem::take(&mut ready.snapshot_writes) {
            if abandoned.as_ref().is_some_and(|meta| *meta == write.meta) {
                continue;
            }
            let meta = write.meta.clone();
            match self.storage.write_snapshot_chunk(write).await {
                Ok(()) => {}
                Err(error @ wal::WalError::NoSpace { .. }) => {
                    if !self.snapshot_no_space {
                        tracing::warn!(
                            shard = self.ctx.shard_id,
                            index = meta.index,
                            "disk full while receiving a snapshot: dropped it; it is received anew when the leader \
                             resends (this repeats until space is freed)"
                        );
                    }
                    self.snapshot_no_space = true;
                    self.stats.snapshot_chunks_no_space += 1;
                    self.storage.abandon_received_snapshot();
                    self.raft.abandon_incoming_snapshot();
                    tracing::debug!(shard = self.ctx.shard_id, %error, "snapshot chunk not written");
                    abandoned = Some(meta);
                }
                Err(source) => return Err(self.storage_error(source)),
            }
        }
        if let Some(meta) = abandoned {
            let acknowledges = |message: &engine::Message| {
                matches!(message.body, engine::MessageBody::InstallSnapshotResponse { index, term, rejected: false, .. }
                    if index == meta.index && term == meta.term)
            };
            ready.messages.retain(|message| !acknowledges(message));
            ready.messages_after_persist.retain(|message| !acknowledges(message));
        }
        Ok(())
    }

    /// The engine's repair target changed. A replica that started with an
    /// empty log and heard a leader (`engine::REPAIR_UNKNOWN`: its data
    /// directory may have been wiped) records that durably at once, so a
    /// crash during its repair cannot bring it back as a whole voter with a
    /// partial log; when that repair ends, the end is saved once the log
    /// that ended it is durable (see `save_unknown_repair_end`).
    async fn repair_changed(&mut self) -> Result<(), ShardError> {
        let (before, now) = (self.repair_seen, self.raft.repair_target());
        self.repair_seen = now;
        let unknown_started = self.raft.unknown_repairs() != self.unknown_repairs_seen;
        self.unknown_repairs_seen = self.raft.unknown_repairs();
        let shard = self.ctx.shard_id;
        if now.is_some() && before.is_none() {
            self.repair_progress =
                Some(super::RepairProgress::new(&self.raft, self.clock.now(), self.stats.snapshots_installed));
        }
        // One that started and ended within a Ready (a new cluster's first
        // append, or a leader that sent everything at once) lost nothing
        // worth a warning.
        if unknown_started && now == Some(engine::REPAIR_UNKNOWN) {
            tracing::warn!(
                shard,
                leader = self.raft.leader(),
                "this replica started with an empty log in a cluster that has one (a wiped data directory?): \
                 it does not vote until it holds the leader's log"
            );
        }
        if now == Some(engine::REPAIR_UNKNOWN) {
            if before != now {
                self.storage.set_repair_floor(engine::REPAIR_UNKNOWN);
                let hard_state = self.raft.hard_state();
                self.storage.save_hard_state(hard_state).await.map_err(|source| self.storage_error(source))?;
            }
        } else if before == Some(engine::REPAIR_UNKNOWN) {
            // Ended, and its start was saved: the store keeps the unknown
            // target until the entries that ended the repair are durable,
            // then the end is saved (see `save_unknown_repair_end`).
            self.unknown_repair_end = Some(self.raft.last_index());
        }
        // One that started and ended within this Ready (a new cluster's
        // first append) saved nothing and records nothing: a crash before
        // its entries are durable brings it back as it started (an empty
        // or shorter log, which a leader's log extends). Recording the
        // log's end as acknowledged would hold it in repair for entries
        // that, lost in the crash, may exist nowhere (seed 133695 of
        // three_nodes: the term's save in the same Ready recorded it, and
        // with a witness no one could be elected); saving the unknown
        // target instead made two replicas of three repair at once after
        // crashes in that window, and they never vote for anyone (seed
        // 134546 of three_nodes). What that gives up: a wiped replica that
        // crashes again before its first entries are durable comes back as
        // a new one, two faults in a row.
        if now.is_none() {
            self.repair_progress = None;
            if before.is_some() {
                tracing::warn!(shard, last_index = self.raft.last_index(), "repaired: this replica votes again");
            }
        }
        Ok(())
    }

    /// Saves the end of a repair to an unknown target once the log that
    /// ended it is durable: the store's floor drops from the unknown target
    /// to that log's end, which the durable log covers, so the save records
    /// what the log holds as acknowledged.
    ///
    /// Not before: a floor above the durable log, saved and then lost in a
    /// crash, holds the replica in repair for entries that may exist
    /// nowhere (seed 133695 of three_nodes stalled so with a witness).
    /// And not never: the last save would keep the unknown target, and a
    /// crash after the repair would bring the replica back in repair with
    /// every entry it had, unable to campaign (seed 132285 of
    /// three_nodes_with_storage_faults: no leader, forever), or, if a
    /// storage fault then took its entries, voting as one that knows
    /// nothing (seed 132274 of five_nodes_with_storage_faults: a leader
    /// elected without two committed entries).
    pub(crate) async fn save_unknown_repair_end(&mut self) -> Result<(), ShardError> {
        let Some(end) = self.unknown_repair_end else { return Ok(()) };
        let end = end.min(self.raft.last_index());
        if self.raft.persisted_index() < end {
            return Ok(());
        }
        self.unknown_repair_end = None;
        self.storage.set_repair_floor(end);
        let hard_state = self.raft.hard_state();
        self.storage.save_hard_state(hard_state).await.map_err(|source| self.storage_error(source))
    }

    /// The error that stops the shard after storage failed.
    pub fn storage_error(&self, source: wal::WalError) -> ShardError {
        ShardError::Wal { shard: self.ctx.shard_id, source }
    }

    /// Tells the engine and the waiting messages about storage's progress.
    fn on_durable(&mut self) {
        let durable = self.storage.durable_sequence();
        self.persist.durable_seen = self.persist.durable_seen.max(durable);
        let mut last = None;
        let now = self.clock.now();
        while let Some(&(ticket, submitted)) = self.persist.tickets.front() {
            if ticket.sequence > durable {
                break;
            }
            self.stats.wal_write_sync.record(now.saturating_duration_since(submitted));
            last = Some(ticket);
            self.persist.tickets.pop_front();
        }
        if let Some(ticket) = last {
            self.raft.persisted(ticket.last_index, ticket.last_term);
        }
        while let Some((sequence, _)) = self.persist.after_persist.front() {
            if *sequence > durable {
                break;
            }
            let (_, messages) = self.persist.after_persist.pop_front().expect("present");
            for message in messages {
                self.transport.send(message);
            }
        }
    }

    fn on_role_change(&mut self, role: Role) {
        tracing::info!(
            shard = self.ctx.shard_id,
            ?role,
            term = self.raft.term(),
            leader = self.raft.leader(),
            "role changed"
        );
        self.log_clock_on_role(role == Role::Leader);
        if role != Role::Leader {
            self.redirect_writes();
            return;
        }
        if self.announced_term != self.raft.term() {
            // Tell every replica where clients reach the new leader.
            self.announced_term = self.raft.term();
            let set = SetAddresses {
                id: self.ctx.node_id,
                peer: Some(self.ctx.peer_addr.to_string()),
                client: Some(self.ctx.client_addr.to_string()),
            };
            let _ = self.raft.propose(set.encode());
        }
    }

    /// Applies the committed entries from `from` whose payloads the log
    /// dropped at recovery (`engine::Recovered::applied`: the engine counts
    /// them as applied already), read again a batch at a time: a restart
    /// holds a bounded part of a long log at once, not all of it.
    pub(super) fn apply_recovered(&mut self, from: Index) -> Result<(), ShardError> {
        let (shard, to) = (self.ctx.shard_id, self.raft.applied());
        if to < from {
            return Ok(());
        }
        tracing::info!(shard, from, to, "applying the committed log whose payloads recovery left on disk");
        let started = self.clock.now();
        let mut reported = started;
        let mut next = from;
        while next <= to {
            let now = self.clock.now();
            if now.saturating_duration_since(reported) >= RECOVERY_PROGRESS_EVERY {
                reported = now;
                let (done, left) = (next - from, to + 1 - next);
                tracing::info!(shard, done, left, "applying the log read again from disk");
            }
            let bytes_max = self.raft.config().apply_bytes_max;
            let entries = self.storage.read_recovered(next, bytes_max).map_err(|error| self.storage_error(error))?;
            let (first, last) = match (entries.first(), entries.last()) {
                (Some(first), Some(last)) => (first.index, last.index),
                _ => (0, 0),
            };
            if first != next || last > to || last - first + 1 != entries.len() as u64 {
                let reason = format!("the log gave back entries {first} to {last} when {next} to {to} were due");
                return Err(ShardError::Restore { shard, reason });
            }
            next = last + 1;
            self.stats.recovered_read_again += entries.len() as u64;
            self.apply_committed(entries);
        }
        let took = self.clock.now().saturating_duration_since(started);
        tracing::info!(shard, from, to, ?took, "applied the committed log read again from disk");
        Ok(())
    }

    /// Applies a committed batch in order and answers the writers.
    fn apply_committed(&mut self, committed: Vec<engine::Entry>) {
        // One clock read for the batch: reading the clock around every entry
        // was 2% of the machine at 150,000 writes/s.
        let started = self.clock.now();
        let count = committed.len() as u64;
        self.fsm.prefetch(&committed);
        for entry in committed {
            self.apply(entry, started);
        }
        let elapsed = self.clock.now().saturating_duration_since(started);
        self.stats.apply.record_n(elapsed / count as u32, count);
    }

    /// Says once, loudly, that the configuration applied removed this node.
    pub(super) fn report_if_removed(&mut self) {
        if self.fsm.is_removed(self.ctx.node_id) && !self.removed_reported {
            self.removed_reported = true;
            tracing::error!(
                shard = self.ctx.shard_id,
                node = self.ctx.node_id,
                "this node was removed from the cluster: it takes no part any more; \
                 wipe its data directory and start it with --join to add it again (under a new id)"
            );
        }
    }

    /// Applies one entry of a committed batch whose application started at
    /// `committed`, and answers its writer.
    fn apply(&mut self, entry: engine::Entry, committed: Instant) {
        let index = entry.index;
        self.note_applied_term(index, entry.term);
        let applied = match entry.kind {
            EntryKind::Normal => Some(self.fsm.apply(index, &entry.data)),
            EntryKind::Noop => {
                self.fsm.skip(index);
                None
            }
            EntryKind::Config => {
                self.fsm.apply_conf(index, &entry.data);
                self.removals_to_transport();
                self.warn_if_witness_counted_as_full();
                self.report_if_removed();
                None
            }
        };
        let addressed = match applied {
            Some(Applied::AddressesSet { id }) | Some(Applied::IdAssigned { result: Ok(id) }) => Some(id),
            _ => None,
        };
        if let Some(id) = addressed {
            if let Some(addresses) = self.fsm.addresses(id).cloned() {
                if addresses.peer.as_deref().is_some_and(|peer| peer.parse::<SocketAddr>().is_ok()) {
                    self.transport.member_addresses(id, &addresses);
                }
            }
        }
        self.answer_applied(index, entry.term, applied.as_ref(), committed);
        if let Some(trace) = &mut self.applied_trace {
            trace.push(entry);
        }
    }
}
