//! A full disk, as the engine sees it (issue 16).
//!
//! The shell tells the engine whether its disk is full
//! ([`Raft::set_no_space`]; the engine itself knows no disk). A follower
//! whose disk is full takes no entries: it answers every append with
//! `AppendResponse::no_space` (a rejection that says nothing about where
//! the logs match) instead of queueing writes it cannot make and going
//! silent. Its log, its commit index and what it acknowledged stay as they
//! were, exactly as if the append had been lost; heartbeats still reach
//! it, so it keeps its leader and applies what the leader commits.
//!
//! A leader that hears this records when ([`Progress::no_space_at`]),
//! counts nothing toward commit, keeps the follower's match index, and
//! probes it again once per heartbeat with an empty append at that match
//! (even when the follower has every entry; no entries, as it could not
//! take them), so the first probe after space returns is accepted, the
//! leader replicates to it again and the follower resumes by itself.
//! While the leader and the voters with room make no quorum
//! ([`Raft::quorum_lacks_space`]), the shell refuses new writes with a
//! typed status instead of letting them time out, and it names the full
//! peers ([`Raft::peers_no_space`]). For the witnesses' limit a full
//! follower counts as absent, as a down one does (`Raft::witness_limit`).
//!
//! [`Progress::no_space_at`]: crate::progress::Progress::no_space_at

use super::{Ignored, Raft, Role};
use crate::message::{AppendResponse, MessageBody};
use crate::progress::ProgressState;
use crate::types::{Index, NodeId};

impl Raft {
    /// The shell reports whether this node's disk is full; while it is, the
    /// node answers appends with a no-space rejection instead of taking
    /// their entries. Call it before stepping messages.
    pub fn set_no_space(&mut self, full: bool) {
        self.no_space = full;
    }

    /// Whether the shell last reported this node's disk full.
    pub fn no_space(&self) -> bool {
        self.no_space
    }

    /// How many appends this node answered with a no-space rejection since
    /// it was built.
    pub fn appends_refused_no_space(&self) -> u64 {
        self.appends_refused_no_space
    }

    /// On a leader: the peers that reported a full disk within the last
    /// election timeout and have taken no append since, in id order.
    pub fn peers_no_space(&self) -> Vec<NodeId> {
        if self.role != Role::Leader {
            return Vec::new();
        }
        let window = self.no_space_window();
        self.progress
            .iter()
            .filter(|&(&id, pr)| id != self.id && pr.reports_no_space(self.now, window))
            .map(|(&id, _)| id)
            .collect()
    }

    /// On a leader: whether the leader and the voters that did not report a
    /// full disk (see [`Raft::peers_no_space`]) miss a quorum (in either
    /// half of a joint configuration), so that no new entry can commit
    /// until a full voter has room again. The leader's own disk is the
    /// shell's to check.
    pub fn quorum_lacks_space(&self) -> bool {
        // The shell asks before every write: no quorum count when no peer
        // has said its disk is full.
        if self.role != Role::Leader || self.progress.values().all(|pr| pr.no_space_at.is_none()) {
            return false;
        }
        let window = self.no_space_window();
        let room = |id: NodeId| {
            u64::from(id == self.id || !self.progress.get(&id).is_some_and(|pr| pr.reports_no_space(self.now, window)))
        };
        self.quorum_value(room) != 1
    }

    /// How long a no-space report counts: a full follower repeats it in
    /// answer to the probe of every heartbeat, so one election timeout
    /// without it means the follower has room again or is gone.
    fn no_space_window(&self) -> u64 {
        u64::from(self.config.election_ticks_min)
    }

    /// A follower with a full disk answers an append at `prev_index`: it
    /// takes nothing, and says why. A rejection, so it leaves at once (it
    /// acknowledges nothing that must be durable first).
    pub(super) fn send_append_no_space(&mut self, to: NodeId, prev_index: Index) {
        self.appends_refused_no_space += 1;
        self.send_to(to, MessageBody::AppendResponse(AppendResponse::without_space(prev_index)));
    }

    /// Whether this follower takes no entries until it applies: its applying
    /// is held (the shell restores a snapshot) and the entries it has not
    /// applied hold more than its log budget (`Config::log_memory_bytes`),
    /// which they cannot drop before they are applied. A restore of a large
    /// state under load otherwise holds everything that arrives meanwhile
    /// (964 MB in 10 s with 4 KiB values: bench/RESULTS.md, "Recovery
    /// within the log budget").
    pub(super) fn refuses_while_applying(&self) -> bool {
        let budget = self.config.log_memory_bytes;
        self.apply_held && budget > 0 && self.log.held_bytes() > budget.saturating_mul(2)
    }

    /// Answers an append at `prev_index` while applying refuses it (see
    /// [`Raft::refuses_while_applying`]): like a full disk, it takes nothing.
    pub(super) fn send_append_while_applying(&mut self, to: NodeId, prev_index: Index) {
        self.appends_refused_applying += 1;
        self.send_to(to, MessageBody::AppendResponse(AppendResponse::while_applying(prev_index)));
    }

    /// How many appends this node refused while applying (see
    /// `Raft::refuses_while_applying`) since it was built.
    pub fn appends_refused_applying(&self) -> u64 {
        self.appends_refused_applying
    }

    /// A leader hears that `from`'s disk is full. Nothing it sent since the
    /// follower's match point was taken, so the follower is probed from
    /// there (its match index stays: the answer is not about the logs), and
    /// not before the next heartbeat's answer, which keeps the exchange at
    /// one probe per heartbeat for as long as the disk stays full.
    pub(super) fn handle_no_space_response(&mut self, from: NodeId, applying: bool) -> Result<(), Ignored> {
        let now = self.now;
        let pr = self.progress.get_mut(&from).expect("an answering peer has progress");
        pr.no_space_at = Some(now);
        pr.no_space_applying = applying;
        match pr.state {
            ProgressState::Replicate => {
                pr.become_probe();
                pr.probe_sent = true;
            }
            ProgressState::Probe => pr.probe_sent = true,
            // A snapshot being sent has its own way with a full disk (the
            // follower drops the chunk and the stall rewinds it).
            ProgressState::Snapshot => {}
        }
        Ok(())
    }
}
