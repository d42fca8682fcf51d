//! A learner's last resort: it campaigns only when the voters have been
//! without a leader for several election timeouts, and a learner that wins
//! hands leadership to a voter as soon as an entry of its term is committed.
//!
//! Why a learner may need to lead at all: a voter in repair (its storage
//! lost entries it acknowledged) votes only for a candidate that surely
//! holds them (`Raft::repair_vote_allowed`). If it led a term, sent the
//! entries of that term to a learner only and then lost them, the learner
//! is the one replica that holds them, and the other voters may need the
//! repairing voter's vote (a joint configuration, or a voter down). Before,
//! no one could then win, for good: the voters' logs lack the entries, and
//! the learner did not campaign. The simulation found it
//! (`five_nodes_with_storage_faults`, seed 771904; `t80_repair` replays it
//! in small).
//!
//! Why it is safe: Raft's election rules do not need the candidate to be a
//! voter. It wins only with a majority of each half of its configuration,
//! each granting by its own rules (one vote per term, a log at least as up
//! to date as its own, the repair and unknown-past rules), so no two
//! leaders share a term, and the winner's log holds every committed entry.
//! A leader that is no voter already exists in Raft (one finishing its own
//! removal): it counts only the voters toward commit and leases, as here.
//!
//! Why only as a last resort: users add learners as read replicas or on
//! their way to becoming voters; neither should take over leadership in an
//! ordinary election. A learner waits [`LEARNER_PATIENCE_ROUNDS`] election
//! timeouts without hearing a leader, enough for the voters' own rounds,
//! campaigns through a pre-vote (so it disturbs no group that has a
//! leader), and needs a non-empty log and no repair of its own. Once it
//! leads and an entry of its term is committed (the voters that took it
//! now hold the entries it alone had), it transfers leadership to the most
//! up-to-date active full voter, again after any transfer that times out.

use super::{Raft, NODE_NONE};
use crate::types::NodeId;

/// How many election timeouts in a row a learner hears no leader before it
/// campaigns: the voters' own elections come first.
pub const LEARNER_PATIENCE_ROUNDS: u32 = 3;

impl Raft {
    /// Whether this replica is a learner that may campaign now (see the
    /// module documentation).
    pub(crate) fn learner_last_resort(&self) -> bool {
        self.conf.is_learner(self.id)
            && !self.witness
            && self.repair.is_none()
            && self.log.last_index() > 0
            && self.leaderless_rounds >= LEARNER_PATIENCE_ROUNDS
    }

    /// Counts one more election timeout without a leader's message for a
    /// replica that does not campaign as a voter (`tick_election`): a named
    /// leader means it heard one since the last timeout.
    pub(crate) fn note_leaderless_round(&mut self) {
        self.leaderless_rounds = if self.leader == NODE_NONE { self.leaderless_rounds.saturating_add(1) } else { 1 };
    }

    /// A leader that is a learner of its configuration hands leadership to
    /// a voter once an entry of its term is committed, and tries again on a
    /// later tick if the transfer timed out or no full voter was active.
    pub(crate) fn learner_hand_over(&mut self) {
        if !self.conf.is_learner(self.id) || self.transfer_target != NODE_NONE {
            return;
        }
        if self.log.term(self.log.committed) != Some(self.term) {
            return;
        }
        if let Some(target) = self.hand_over_target() {
            // A full voter of the configuration that this leader tracks:
            // the transfer's own checks cannot refuse it.
            let _ = self.transfer_leader(target);
        }
    }

    /// The active full voter with the highest match (the lowest id among
    /// equals), if any.
    fn hand_over_target(&self) -> Option<NodeId> {
        self.progress
            .iter()
            .filter(|&(&id, pr)| id != self.id && self.conf.is_full_voter(id) && pr.recent_active)
            .max_by_key(|&(&id, pr)| (pr.match_index, std::cmp::Reverse(id)))
            .map(|(&id, _)| id)
    }
}
