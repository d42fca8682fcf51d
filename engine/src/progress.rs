//! What a leader knows about each follower's log, and the in-flight window
//! that bounds how far ahead of acknowledgements it sends.

use std::collections::VecDeque;

use crate::types::Index;

/// How the leader currently replicates to a follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressState {
    /// The leader does not know where the follower's log matches: one probe in
    /// flight at a time, backing off on rejection.
    Probe,
    /// The follower's log matches up to `match_index`: send optimistically,
    /// bounded by the window.
    Replicate,
    /// The follower needs a snapshot; appends pause until it is installed.
    Snapshot,
}

/// A leader's view of one peer.
///
/// Invariant: `match_index < next_index`.
#[derive(Clone, Debug)]
pub struct Progress {
    pub match_index: Index,
    pub next_index: Index,
    pub state: ProgressState,
    /// In `Probe`, an append is outstanding: wait for its answer or the next
    /// heartbeat before sending another.
    pub probe_sent: bool,
    /// Heard from since the last check-quorum round.
    pub recent_active: bool,
    /// The leader's tick when this peer last answered (or voted for it):
    /// the same notion as `recent_active` over a sliding window, which a
    /// witness's replication limit needs (see `Raft::witness_limit`): a
    /// window that restarts empty every election timeout would call a
    /// healthy follower inactive for the tick after each restart.
    pub heard_at: Option<u64>,
    /// The latest heartbeat round this peer acknowledged (ReadIndex, leases).
    pub acked_round: u64,
    /// In `Snapshot`, the index of the snapshot being sent.
    pub pending_snapshot: Index,
    /// Snapshot sending (in `Snapshot`): the snapshot's size, the next offset
    /// to read for it, the offset the follower acknowledged, and heartbeat
    /// rounds without progress (a stall makes the leader resend).
    pub snapshot_size: u64,
    pub snapshot_read_offset: u64,
    pub snapshot_acked: u64,
    pub snapshot_stalled_rounds: u32,
    /// The highest commit index sent to this peer, so a commit advance is
    /// announced once rather than with every acknowledgement.
    pub commit_sent: Index,
    /// The last index of a command this peer forwarded to the leader
    /// (`MessageBody::Propose`): the peer answers its caller once it applies
    /// it, so the commit that covers it is sent at once.
    pub forwarded_last: Index,
    pub inflight: Inflight,
    /// The leader's tick when this peer last answered an append with "my
    /// disk is full" (`AppendResponse::no_space`); cleared by any other
    /// answer to an append. See `Progress::reports_no_space`.
    pub no_space_at: Option<u64>,
    /// That answer was not about a full disk but about applying
    /// (`AppendResponse::applying`).
    pub no_space_applying: bool,
    /// Acknowledged, in this leader's term, an append that ended at an
    /// entry of the term and at or past the commit index it carried (see
    /// [`Progress::commit_carried`]). A replica that took its past for
    /// unknown (`REPAIR_UNKNOWN`) ends its repair on such an append, so
    /// once this is set it votes (until a wipe, a failure like any other).
    /// The leader's strict reconfiguration check counts these, not every
    /// peer that acknowledged something: a follower partly caught up in
    /// that repair acknowledges entries and still withholds its vote
    /// (engine randomized seed 303508). Every append at the tail of the
    /// leader's log qualifies (a leader's commit index is never past its
    /// last entry), so a follower that keeps up gets it under any load.
    pub caught_up: bool,
    /// In `Probe`, the outstanding probe's last index and the commit index
    /// it carried (in `Replicate` the window keeps them).
    probe_carried: Option<(Index, Index)>,
}

impl Progress {
    /// Whether this peer should hear of the commit index `committed` at the
    /// next chance (a tick): it holds the entries through it and was not
    /// told it. Whether the peer is replicating is the caller's to check.
    pub fn owes_commit(&self, committed: Index) -> bool {
        self.commit_sent < committed && self.match_index >= committed
    }

    /// Whether this peer waits to hear of the commit index `committed` now:
    /// it is owed it ([`Progress::owes_commit`]) and forwarded a command it
    /// was not told is committed. (Only the last forwarded index is kept,
    /// so while later ones are uncommitted every advance is told: an
    /// earlier one may be among those it covers.)
    pub fn awaits_commit(&self, committed: Index) -> bool {
        self.owes_commit(committed) && self.commit_sent < self.forwarded_last
    }

    /// Whether this peer answered within the last `window` ticks before
    /// `now` (see `heard_at`).
    pub fn heard_within(&self, now: u64, window: u64) -> bool {
        self.heard_at.is_some_and(|at| now < at + window)
    }

    pub fn new(next_index: Index) -> Progress {
        Progress {
            match_index: 0,
            next_index,
            state: ProgressState::Probe,
            probe_sent: false,
            recent_active: false,
            heard_at: None,
            acked_round: 0,
            pending_snapshot: 0,
            commit_sent: 0,
            forwarded_last: 0,
            snapshot_size: 0,
            snapshot_read_offset: 0,
            snapshot_acked: 0,
            snapshot_stalled_rounds: 0,
            inflight: Inflight::default(),
            no_space_at: None,
            no_space_applying: false,
            caught_up: false,
            probe_carried: None,
        }
    }

    /// Whether this peer said its disk is full within the last `window`
    /// ticks before `now` and has not answered an append otherwise since.
    /// A full follower says so in answer to every probe (one a heartbeat),
    /// so the report stays fresh while it lasts; one that falls silent
    /// stops counting as full after the window (it is then just absent).
    pub fn reports_no_space(&self, now: u64, window: u64) -> bool {
        self.refuses_entries(now, window) && !self.no_space_applying
    }

    /// Whether this peer takes no entries, as [`Progress::reports_no_space`]
    /// says, for a full disk or while it applies.
    pub fn refuses_entries(&self, now: u64, window: u64) -> bool {
        self.no_space_at.is_some_and(|at| now < at + window)
    }

    pub fn become_probe(&mut self) {
        if self.state == ProgressState::Snapshot {
            self.next_index = self.match_index.max(self.pending_snapshot) + 1;
            self.pending_snapshot = 0;
        } else {
            self.next_index = self.match_index + 1;
        }
        self.state = ProgressState::Probe;
        self.probe_sent = false;
        self.inflight.clear();
    }

    pub fn become_replicate(&mut self) {
        self.state = ProgressState::Replicate;
        self.next_index = self.match_index + 1;
        self.probe_sent = false;
        self.pending_snapshot = 0;
        self.inflight.clear();
    }

    pub fn become_snapshot(&mut self, snapshot_index: Index, size: u64) {
        self.state = ProgressState::Snapshot;
        self.pending_snapshot = snapshot_index;
        self.snapshot_size = size;
        self.snapshot_read_offset = 0;
        self.snapshot_acked = 0;
        self.snapshot_stalled_rounds = 0;
        self.probe_sent = false;
        self.inflight.clear();
    }

    /// Records an acknowledgement up to `index`; returns whether it was new.
    pub fn maybe_update(&mut self, index: Index) -> bool {
        let updated = index > self.match_index;
        if updated {
            self.match_index = index;
            self.probe_sent = false;
        }
        self.next_index = self.next_index.max(index + 1);
        self.inflight.free_to(index);
        updated
    }

    /// Backs `next_index` off after a rejection of an append at `rejected`
    /// (the follower's mismatching `prev_index`) given the back-tracking
    /// `hint`. Returns false for a stale rejection that changes nothing.
    pub fn maybe_decrease_to(&mut self, rejected: Index, hint: Index) -> bool {
        if self.state == ProgressState::Replicate {
            // Only a rejection of something sent after the match point counts.
            if rejected <= self.match_index {
                return false;
            }
            self.next_index = self.match_index + 1;
            return true;
        }
        // In probe, only the answer to the latest probe (prev = next - 1) counts.
        if self.next_index == 0 || self.next_index - 1 != rejected {
            return false;
        }
        let next = (hint + 1).min(rejected).max(self.match_index + 1);
        if next == self.next_index {
            // It rejects an index at or below what it acknowledged (and does
            // not say it lost entries): nothing to go back to. Resending at
            // once would loop with it as fast as messages go; the next
            // heartbeat probes again instead.
            return false;
        }
        self.next_index = next;
        self.probe_sent = false;
        true
    }

    /// Forgets what the follower matched after it reported lacking an entry
    /// at or below `match_index` (its storage lost acknowledged entries):
    /// probe again from after `hint`, its last entry that may match.
    pub fn forget_match(&mut self, hint: Index) {
        self.match_index = 0;
        self.caught_up = false;
        self.state = ProgressState::Probe;
        self.next_index = hint + 1;
        self.pending_snapshot = 0;
        self.probe_sent = false;
        self.inflight.clear();
    }

    /// Whether no more appends may be sent now.
    pub fn is_paused(&self, batches_max: usize, bytes_max: usize) -> bool {
        match self.state {
            ProgressState::Probe => self.probe_sent,
            ProgressState::Replicate => self.inflight.is_full(batches_max, bytes_max),
            ProgressState::Snapshot => true,
        }
    }

    /// Records that an append ending at `last_index` with `bytes` left,
    /// carrying the commit index `commit`.
    pub fn sent(&mut self, last_index: Index, bytes: usize, commit: Index) {
        match self.state {
            ProgressState::Replicate => {
                self.next_index = last_index + 1;
                self.inflight.add(last_index, bytes, commit);
            }
            ProgressState::Probe => {
                self.probe_sent = true;
                self.probe_carried = Some((last_index, commit));
            }
            ProgressState::Snapshot => {}
        }
    }

    /// The commit index that the append this peer acknowledges up to
    /// `index` carried, if that append is still known: one in the window,
    /// or the outstanding probe.
    pub fn commit_carried(&self, index: Index) -> Option<Index> {
        match self.state {
            ProgressState::Replicate => self.inflight.commit_carried(index),
            ProgressState::Probe => self.probe_carried.filter(|&(last, _)| last == index).map(|(_, commit)| commit),
            ProgressState::Snapshot => None,
        }
    }
}

/// The append messages sent to one follower and not yet acknowledged, by
/// their last index, with their byte sizes and the commit index each
/// carried.
///
/// Invariant: last indices strictly increase; `bytes` is their sum.
#[derive(Clone, Debug, Default)]
pub struct Inflight {
    batches: VecDeque<(Index, usize, Index)>,
    bytes: usize,
}

impl Inflight {
    pub fn add(&mut self, last_index: Index, bytes: usize, commit: Index) {
        if let Some(&(back, _, _)) = self.batches.back() {
            debug_assert!(last_index > back, "in-flight batches must advance");
        }
        self.batches.push_back((last_index, bytes, commit));
        self.bytes += bytes;
    }

    /// The commit index carried by the batch ending at `index`, if it is
    /// in flight.
    pub fn commit_carried(&self, index: Index) -> Option<Index> {
        let position = self.batches.partition_point(|&(last, _, _)| last < index);
        self.batches.get(position).filter(|&&(last, _, _)| last == index).map(|&(_, _, commit)| commit)
    }

    /// Frees every batch acknowledged by a match up to `index`.
    pub fn free_to(&mut self, index: Index) {
        while let Some(&(last, bytes, _)) = self.batches.front() {
            if last > index {
                break;
            }
            self.batches.pop_front();
            self.bytes -= bytes;
        }
    }

    /// Frees the oldest batch: a heartbeat answer proves the follower is
    /// reachable, so one slot is released to keep a lossy link moving.
    pub fn free_first(&mut self) {
        if let Some((_, bytes, _)) = self.batches.pop_front() {
            self.bytes -= bytes;
        }
    }

    pub fn clear(&mut self) {
        self.batches.clear();
        self.bytes = 0;
    }

    pub fn count(&self) -> usize {
        self.batches.len()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn is_full(&self, batches_max: usize, bytes_max: usize) -> bool {
        self.batches.len() >= batches_max || (self.bytes >= bytes_max && !self.batches.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A follower that rejects the probe right after what it acknowledged
    /// (a forged or contradictory answer): the leader has nowhere to go
    /// back to, so the rejection must not trigger an immediate resend of
    /// the same probe (t40_bad_input found the two looping forever).
    #[test]
    fn a_rejection_that_moves_nothing_sends_nothing() {
        let mut progress = Progress::new(2);
        progress.match_index = 1;
        progress.become_probe();
        assert_eq!(progress.next_index, 2);
        assert!(!progress.maybe_decrease_to(1, 0), "no progress: wait for the next heartbeat");
        assert_eq!(progress.next_index, 2);
        // A rejection that does move the probe back still counts.
        let mut progress = Progress::new(5);
        assert!(progress.maybe_decrease_to(4, 2));
        assert_eq!(progress.next_index, 3);
    }
}
