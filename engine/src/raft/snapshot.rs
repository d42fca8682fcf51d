//! Snapshots and log compaction (Raft paper 7), without I/O.
//!
//! Taking one: when `snapshot_entries` entries (plus this replica's jitter,
//! `snapshot_entries_jitter`), or entries of `snapshot_log_bytes` payload
//! bytes, were applied since the last snapshot, and,
//! with `snapshot_log_factor`, they hold that many times the last snapshot's
//! bytes, a Ready sets `snapshot_due`; the shell snapshots its state
//! machine at its applied index (metadata from [`Raft::snapshot_meta_at`]),
//! stores it, and reports it with [`Raft::snapshot_created`]; the engine then
//! compacts its log, keeping `compaction_tail` entries (of at most a quarter
//! of `snapshot_log_bytes`) for followers that are only a little behind, and
//! tells the shell how far storage may compact. A shell that cannot take or
//! store it says so with [`Raft::snapshot_not_taken`], and is asked again
//! after a pause that doubles with each miss in a row.
//!
//! Sending one: a follower whose next entry was compacted moves to the
//! `Snapshot` state. The leader asks the shell (through `snapshot_reads`) to
//! read at most `snapshot_chunks_inflight_max` chunks ahead of the follower's
//! acknowledgements and sends each chunk it gets back. A rejection names the
//! offset to resume from; a stall (heartbeats answered, chunks not) rewinds to
//! the last acknowledged offset.
//!
//! Receiving one: chunks must arrive in order for one snapshot at a time.
//! A duplicate is re-acknowledged, a gap is answered with the offset to
//! resume from, a chunk of an unknown snapshot that does not start at offset
//! 0 is refused. The last chunk installs the snapshot (`snapshot_install`).

use bytes::Bytes;

use super::{Ignored, Raft, Role};
use crate::batch::EntryBatch;
use crate::message::{Message, MessageBody, SnapshotChunk};
use crate::progress::ProgressState;
use crate::types::{Entry, Index, NodeId, SnapshotMeta, Term};

/// A chunk of the local snapshot the shell must read and hand back with
/// [`Raft::snapshot_chunk`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotRead {
    pub to: NodeId,
    /// The snapshot's index: if the shell's current snapshot differs, it
    /// calls [`Raft::snapshot_unavailable`] instead.
    pub index: Index,
    pub offset: u64,
    pub len: u64,
}

/// A chunk of an incoming snapshot to write at `offset` (0 starts a new file).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotWrite {
    pub meta: SnapshotMeta,
    pub offset: u64,
    pub data: Bytes,
    /// The last chunk: the file is complete.
    pub done: bool,
}

/// `next_offset` in a response meaning "I already hold everything this
/// snapshot covers".
const COMPLETE: u64 = u64::MAX;
/// Heartbeat rounds without an acknowledgement before chunks are resent.
const SNAPSHOT_STALL_ROUNDS: u32 = 3;
/// The pause before asking again for a snapshot that was not taken: a
/// tenth of a second in the node (10 ms ticks), long enough for one being
/// stored to finish if it was small.
pub const SNAPSHOT_RETRY_TICKS_MIN: u64 = 10;
/// The longest such pause, reached after seven misses in a row: about ten
/// seconds in the node, so that a snapshot that keeps failing (a disk that
/// stays full) costs one attempt to serialize the state every ten seconds.
pub const SNAPSHOT_RETRY_TICKS_MAX: u64 = 1 << 10;

impl Raft {
    /// The metadata a snapshot of the state machine at `index` must carry:
    /// the term there and the configuration in force. `None` if `index` is
    /// not applied or no longer in the log.
    pub fn snapshot_meta_at(&self, index: Index) -> Option<SnapshotMeta> {
        if index > self.log.applied.max(self.applying.unwrap_or(0)) || index < self.snapshot.index {
            return None;
        }
        let term = self.log.term(index)?;
        Some(SnapshotMeta { index, term, conf: self.conf_at(index) })
    }

    /// The latest snapshot the engine knows of.
    pub fn snapshot(&self) -> &SnapshotMeta {
        &self.snapshot
    }

    /// Reports a snapshot the shell stored (`size` bytes). Also call this at
    /// start-up for the snapshot loaded from storage, so the engine can send
    /// it to followers. The log is compacted below it, keeping a tail.
    pub fn snapshot_created(&mut self, meta: SnapshotMeta, size: u64) {
        self.snapshot_requested = false;
        self.snapshot_retry_at = None;
        self.snapshot_misses = 0;
        let wanted = std::mem::take(&mut self.snapshot_wanted);
        if meta.index < self.snapshot.index || (meta.index == self.snapshot.index && self.snapshot_size != 0) {
            return;
        }
        self.snapshot = meta;
        self.snapshot_size = size;
        let (offset, _) = self.log.offset();
        let compact = self.compaction_point();
        if compact > offset {
            if let Some(term) = self.log.term(compact) {
                self.log.compact_to(compact, term);
                let base = self.conf_at(compact);
                self.conf_history.retain(|(at, _)| *at > compact);
                self.conf_history.insert(0, (compact, base));
                self.compact_to = Some(compact);
            }
        }
        if wanted {
            self.send_wanted_snapshots();
        }
    }

    /// The shell did not take the snapshot a Ready asked for
    /// (`Ready::snapshot_due`): it was busy with another, or storing it
    /// failed (a full disk, say). It is asked for again after a pause of
    /// [`SNAPSHOT_RETRY_TICKS_MIN`] ticks, doubled by each miss in a row up
    /// to [`SNAPSHOT_RETRY_TICKS_MAX`]. Without this call the engine would
    /// wait `snapshot_entries` more applied entries (a hundred thousand
    /// groups of writes in the node) before asking again, neither
    /// compacting its log nor serving a follower that needs a fresh
    /// snapshot meanwhile. Does nothing when no snapshot was asked for (one
    /// the shell took on its own, such as an operator's).
    pub fn snapshot_not_taken(&mut self) {
        if !self.snapshot_requested {
            return;
        }
        self.snapshot_requested = false;
        let pause = (SNAPSHOT_RETRY_TICKS_MIN << self.snapshot_misses.min(16)).min(SNAPSHOT_RETRY_TICKS_MAX);
        self.snapshot_retry_at = Some(self.now + pause);
        self.snapshot_misses = self.snapshot_misses.saturating_add(1);
    }

    /// At each tick: asks again for a snapshot that was not taken, once its
    /// pause is over (see [`Raft::snapshot_not_taken`]).
    pub(super) fn retry_snapshot(&mut self) {
        if self.snapshot_retry_at.is_some_and(|at| self.now >= at) {
            self.snapshot_retry_at = None;
            self.ask_snapshot();
        }
    }

    /// Asks the shell for a snapshot unless one is asked for already or a
    /// retry is waiting out its pause (which then asks).
    fn ask_snapshot(&mut self) {
        if !self.snapshot_requested && self.snapshot_retry_at.is_none() {
            self.snapshot_due = true;
        }
    }

    /// Starts sending the new snapshot at once to the followers that wait
    /// for one because their next entries lost their payloads: from then on
    /// what follows it is kept for them (see `Raft::evict_payloads`), where
    /// waiting for their next answer could find it dropped again.
    fn send_wanted_snapshots(&mut self) {
        if self.role != Role::Leader {
            return;
        }
        let waiting: Vec<NodeId> = self
            .progress
            .iter()
            .filter(|&(&id, pr)| {
                id != self.id && pr.state != ProgressState::Snapshot && self.needs_dropped_payloads(id, pr.next_index)
            })
            .map(|(&id, _)| id)
            .collect();
        for id in waiting {
            self.start_snapshot(id);
        }
    }

    /// Whether sending `to` its entries from `next` on needs payloads the
    /// log dropped (a witness past the change that made it one needs none).
    pub(super) fn needs_dropped_payloads(&self, to: NodeId, next: Index) -> bool {
        next < self.log.payloads_from() && self.witness_since(to).is_none_or(|since| next <= since)
    }

    /// Where the log is compacted below the current snapshot: keeping
    /// `compaction_tail` entries, but no more than a quarter of
    /// `snapshot_log_bytes` of payload (when set), and nothing not applied.
    fn compaction_point(&self) -> Index {
        let mut compact = self.snapshot.index.saturating_sub(self.config.compaction_tail).min(self.log.applied);
        let tail_bytes_max = self.config.snapshot_log_bytes / 4;
        if tail_bytes_max > 0 {
            let mut kept = 0u64;
            let mut index = self.snapshot.index.min(self.log.applied);
            while index > compact {
                kept += self.log.entry(index).map_or(0, |entry| entry.data.len() as u64);
                if kept > tail_bytes_max {
                    compact = index;
                    break;
                }
                index -= 1;
            }
        }
        compact
    }

    /// Hands back a chunk read for a [`SnapshotRead`].
    pub fn snapshot_chunk(&mut self, to: NodeId, index: Index, offset: u64, data: Bytes) {
        if self.role != Role::Leader || index != self.snapshot.index {
            return;
        }
        let Some(pr) = self.progress.get(&to) else { return };
        if pr.state != ProgressState::Snapshot || pr.pending_snapshot != index {
            return;
        }
        let done = offset + data.len() as u64 >= pr.snapshot_size;
        let chunk = SnapshotChunk { meta: self.snapshot.clone(), offset, data, done };
        self.send(Message { from: self.id, to, term: self.term, body: MessageBody::InstallSnapshot(chunk) });
    }

    /// The shell found the stored snapshot damaged (its bytes no longer
    /// match the checksum they were stored with): none of it may be sent.
    /// Followers being sent it start over, and the shell is asked for a new
    /// snapshot to replace it, as after a restart (its size unknown).
    pub fn snapshot_damaged(&mut self) {
        self.snapshot_size = 0;
        for pr in self.progress.values_mut() {
            if pr.state == ProgressState::Snapshot {
                pr.become_probe();
                pr.next_index = pr.match_index + 1;
            }
        }
        self.ask_snapshot();
    }

    /// The shell could not read the snapshot a [`SnapshotRead`] named (a
    /// newer one replaced it): the follower starts over with the latest.
    pub fn snapshot_unavailable(&mut self, to: NodeId) {
        if let Some(pr) = self.progress.get_mut(&to) {
            if pr.state == ProgressState::Snapshot {
                pr.become_probe();
                pr.next_index = pr.match_index + 1;
            }
        }
        if self.snapshot_size == 0 {
            self.ask_snapshot();
        }
    }

    pub(super) fn start_snapshot(&mut self, to: NodeId) {
        if self.snapshot.index > 0 && self.needs_dropped_payloads(to, self.snapshot.index + 1) {
            // Entries after the stored snapshot lost their payloads (see
            // `Raft::evict_payloads`) and `to` needs them whole: a full
            // follower, or a witness that was none for a while after this
            // snapshot (removed, then added as one again). Sent this
            // snapshot, it could not go on from it: it would ask for those
            // entries again and be sent it again, for ever (engine
            // randomized seed 965226). A fresh one is taken (one being
            // taken may be too old as well: then the next call asks again).
            self.snapshot_wanted = true;
            self.ask_snapshot();
            return;
        }
        // Only a snapshot whose membership lists it as a witness goes to a
        // witness without its image: then it knows it is one, and the
        // change that made it one is committed (see `Raft::witness_since`).
        if self.conf.is_witness(to) && self.snapshot.index > 0 && self.snapshot.conf.is_witness(to) {
            self.send_witness_snapshot(to);
            return;
        }
        if self.snapshot.index == 0 || self.snapshot_size == 0 {
            // Compacted entries are always covered by a snapshot, but its
            // size is unknown after a restart until the shell reports it:
            // ask for a fresh one.
            self.ask_snapshot();
            return;
        }
        let (index, size) = (self.snapshot.index, self.snapshot_size);
        let Some(pr) = self.progress.get_mut(&to) else { return };
        pr.become_snapshot(index, size);
        self.request_snapshot_reads(to);
    }

    /// A witness behind the compaction point gets the snapshot's metadata
    /// (index, term, membership) in one chunk of no data: it holds no state
    /// machine, so the image is empty, and the shell reads nothing. Its
    /// size is 0 in the progress, which the first answer completes.
    fn send_witness_snapshot(&mut self, to: NodeId) {
        let meta = self.snapshot.clone();
        let Some(pr) = self.progress.get_mut(&to) else { return };
        pr.become_snapshot(meta.index, 0);
        let chunk = SnapshotChunk { meta, offset: 0, data: Bytes::new(), done: true };
        self.send(Message { from: self.id, to, term: self.term, body: MessageBody::InstallSnapshot(chunk) });
    }

    /// Asks the shell for chunks up to the window ahead of the acknowledged
    /// offset.
    fn request_snapshot_reads(&mut self, to: NodeId) {
        let chunk = self.config.snapshot_chunk_bytes;
        let window = chunk * self.config.snapshot_chunks_inflight_max;
        let Some(pr) = self.progress.get_mut(&to) else { return };
        while pr.snapshot_read_offset < pr.snapshot_size && pr.snapshot_read_offset - pr.snapshot_acked < window {
            let len = chunk.min(pr.snapshot_size - pr.snapshot_read_offset);
            self.snapshot_reads.push(SnapshotRead {
                to,
                index: pr.pending_snapshot,
                offset: pr.snapshot_read_offset,
                len,
            });
            pr.snapshot_read_offset += len;
        }
    }

    /// A heartbeat answer from a follower in `Snapshot`: if chunks stopped
    /// being acknowledged for a few rounds, resend from the last ack.
    pub(super) fn snapshot_heartbeat(&mut self, from: NodeId) {
        let witness = self.conf.is_witness(from);
        let Some(pr) = self.progress.get_mut(&from) else { return };
        if witness && pr.snapshot_size == 0 {
            // Its one metadata chunk was lost, or its answer: resend it.
            pr.snapshot_stalled_rounds += 1;
            if pr.snapshot_stalled_rounds >= SNAPSHOT_STALL_ROUNDS {
                self.send_witness_snapshot(from);
            }
            return;
        }
        if pr.snapshot_read_offset <= pr.snapshot_acked {
            return;
        }
        pr.snapshot_stalled_rounds += 1;
        if pr.snapshot_stalled_rounds >= SNAPSHOT_STALL_ROUNDS {
            pr.snapshot_stalled_rounds = 0;
            pr.snapshot_read_offset = pr.snapshot_acked;
            self.request_snapshot_reads(from);
        }
    }

    pub(super) fn handle_snapshot_response(
        &mut self,
        from: NodeId,
        index: Index,
        term: Term,
        next_offset: u64,
        rejected: bool,
    ) -> Result<(), Ignored> {
        let snapshot_term = self.snapshot.term;
        let pr = self.answering_peer(from)?;
        if pr.state != ProgressState::Snapshot || pr.pending_snapshot != index || snapshot_term != term {
            return Err(Ignored("response about a snapshot no longer being sent"));
        }
        pr.snapshot_stalled_rounds = 0;
        if next_offset >= pr.snapshot_size && !rejected {
            // Installed (or already covered): replicate from after it.
            pr.match_index = pr.match_index.max(index);
            pr.become_probe();
            self.maybe_commit();
            self.send_append(from);
            return Ok(());
        }
        if rejected {
            // Resume where the follower says it is.
            pr.snapshot_acked = next_offset.min(pr.snapshot_size);
            pr.snapshot_read_offset = pr.snapshot_acked;
        } else if next_offset > pr.snapshot_acked {
            pr.snapshot_acked = next_offset.min(pr.snapshot_read_offset);
        } else {
            return Err(Ignored("stale snapshot acknowledgement"));
        }
        self.request_snapshot_reads(from);
        Ok(())
    }

    fn respond_snapshot(&mut self, to: NodeId, meta: &SnapshotMeta, next_offset: u64, rejected: bool) {
        if !rejected {
            self.note_ack();
        }
        let term = self.term;
        self.send(Message {
            from: self.id,
            to,
            term,
            body: MessageBody::InstallSnapshotResponse { index: meta.index, term: meta.term, next_offset, rejected },
        });
    }

    pub(super) fn handle_snapshot_chunk(&mut self, from: NodeId, chunk: SnapshotChunk) -> Result<(), Ignored> {
        let SnapshotChunk { mut meta, offset, data, done } = chunk;
        // The membership arrives from the network: put it in canonical form
        // so it compares equal to the same membership built locally.
        meta.conf.normalize();
        if meta.index <= self.log.committed {
            // Everything it covers is already committed here.
            self.incoming = None;
            self.respond_snapshot(from, &meta, COMPLETE, false);
            return Ok(());
        }
        if meta.conf.voters.is_empty() {
            return Err(Ignored("snapshot without voters"));
        }
        if meta.term > self.term {
            return Err(Ignored("snapshot from a term after the sender's"));
        }
        if self.snapshot_install.is_some() || self.received_complete.is_some() || self.install_on_advance.is_some() {
            // The shell has not yet taken the install of a completed
            // snapshot: a chunk of another one written in the same Ready
            // would replace the file it is about to install. The leader
            // resends after its stall timeout.
            return Err(Ignored("a received snapshot waits to be installed"));
        }
        let expected = match &self.incoming {
            Some((current, received)) if current.index == meta.index && current.term == meta.term => *received,
            _ => {
                if offset != 0 {
                    self.respond_snapshot(from, &meta, 0, true);
                    return Err(Ignored("chunk of a snapshot not being received (start over)"));
                }
                self.incoming = Some((meta.clone(), 0));
                0
            }
        };
        if offset < expected {
            self.respond_snapshot(from, &meta, expected, false);
            return Err(Ignored("duplicate snapshot chunk"));
        }
        if offset > expected {
            self.respond_snapshot(from, &meta, expected, true);
            return Err(Ignored("snapshot chunk out of order"));
        }
        let end = expected + data.len() as u64;
        if !self.witness {
            self.snapshot_writes.push(SnapshotWrite { meta: meta.clone(), offset, data, done });
        } else if done {
            // A witness keeps no state machine image, not even of a snapshot
            // that reached it whole (one taken before the change that made
            // it a witness): it stores the metadata alone, once all arrived.
            self.snapshot_writes.push(SnapshotWrite { meta: meta.clone(), offset: 0, data: Bytes::new(), done });
        }
        if done {
            // Installed (and acknowledged) once the shell wrote the chunk:
            // see `received_complete`.
            self.incoming = None;
            self.received_complete = Some((from, meta, if self.witness { 0 } else { end }, end));
            return Ok(());
        }
        self.incoming = Some((meta.clone(), end));
        self.respond_snapshot(from, &meta, end, false);
        Ok(())
    }

    /// Installs the received snapshot whose last chunk the shell has now
    /// written (see `received_complete`), and acknowledges it; unless the
    /// log was committed up to it meanwhile (an append can arrive between
    /// the last chunk and the Ready that writes it, and that Ready hands the
    /// newly committed entries to apply): installing it then would rewind
    /// the state machine below what it applied, and the entries between
    /// would never be applied again (seed 69 of `three_nodes` with
    /// out-of-order tails: a session's clock entry lost on one replica).
    /// The shell drops the file it wrote when the next snapshot starts.
    pub(super) fn install_received(&mut self) {
        if let Some((from, meta, size, end)) = self.install_on_advance.take() {
            if meta.index <= self.log.committed {
                self.respond_snapshot(from, &meta, COMPLETE, false);
                return;
            }
            self.install_snapshot(meta.clone(), size);
            self.respond_snapshot(from, &meta, end, false);
        }
    }

    /// The shell could not write a chunk of the snapshot being received
    /// (its disk is full) and dropped what it had of it, and the chunk's
    /// acknowledgement with it. The snapshot is received anew from offset 0:
    /// the leader, hearing nothing, resends after its stall timeout and is
    /// answered with where to start. Also for the last chunk: the engine
    /// installs a snapshot only when the shell advances past the Ready that
    /// carried it.
    pub fn abandon_incoming_snapshot(&mut self) {
        self.incoming = None;
        self.received_complete = None;
        self.install_on_advance = None;
    }

    /// Replaces the log's prefix with a received snapshot (Raft paper 7):
    /// entries after it survive only if the log agrees at its index.
    fn install_snapshot(&mut self, meta: SnapshotMeta, size: u64) {
        let index = meta.index;
        self.log.restore(index, meta.term);
        // The leader's snapshot is verified state up to its index.
        if self.repair.is_some_and(|target| target <= index) {
            self.repair = None;
        }
        // Batches not yet handed to the shell that the snapshot covers are
        // dropped; a batch straddling it keeps only the entries after it.
        let batches = std::mem::take(&mut self.unstable_batches);
        for batch in batches {
            if batch.last_index() <= index || self.log.entry(batch.last_index()).is_none() {
                continue;
            }
            if batch.first_index() > index {
                self.unstable_batches.push(batch);
            } else {
                let rest: Vec<Entry> = batch.entries().filter(|entry| entry.index > index).collect();
                self.unstable_batches.push(EntryBatch::encode(&rest));
            }
        }
        if self.unstable_batches.is_empty() {
            self.log.handed = self.log.last_index();
        } else {
            self.log.handed = self.log.handed.min(self.unstable_batches[0].first_index() - 1).max(index);
        }
        self.conf_history = vec![(index, meta.conf.clone())];
        self.conf = meta.conf.clone();
        crate::membership::conf_after_append(self, index + 1);
        self.snapshot = meta.clone();
        self.snapshot_size = size;
        self.snapshot_install = Some(meta);
    }
}
