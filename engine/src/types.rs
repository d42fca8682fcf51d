//! The vocabulary every crate shares: identifiers, entries, hard state and
//! cluster configurations.

use bytes::Bytes;

/// A node's identity within a cluster. Zero is reserved for "nobody" so that a
/// missing vote or leader needs no `Option` on the wire.
pub type NodeId = u64;
/// A Raft term. Terms only grow.
pub type Term = u64;
/// A position in the replicated log. The first real entry has index 1; index 0
/// is the empty log's sentinel with term 0.
pub type Index = u64;

/// "No node": no vote cast, or no leader known.
pub const NODE_NONE: NodeId = 0;

/// What an entry carries. The numeric values are part of the on-disk and wire
/// format (the entry header's `kind` byte) and must never be reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum EntryKind {
    /// An application command for the state machine.
    Normal = 1,
    /// A membership change (an encoded [`ConfChange`](crate::ConfChange)).
    Config = 2,
    /// The empty entry a new leader appends to commit its term (Raft thesis 6.4).
    Noop = 3,
}

impl EntryKind {
    /// The kind for a header byte, or `None` for an unknown value.
    pub fn from_u8(value: u8) -> Option<EntryKind> {
        match value {
            1 => Some(EntryKind::Normal),
            2 => Some(EntryKind::Config),
            3 => Some(EntryKind::Noop),
            _ => None,
        }
    }
}

/// One log entry. `data` is usually a slice of a received or encoded batch
/// buffer, so holding an entry never copies its payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub index: Index,
    pub term: Term,
    pub kind: EntryKind,
    pub data: Bytes,
}

impl Entry {
    /// Bytes this entry takes in an encoded batch (header plus payload); used
    /// for the byte bounds of batches and in-flight windows.
    pub fn encoded_size(&self) -> usize {
        crate::batch::ENTRY_HEADER_SIZE + self.data.len()
    }
}

/// The state that must be durable before any message that depends on it
/// leaves the node: the current term, the vote cast in it, and the commit index.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HardState {
    pub term: Term,
    /// The candidate voted for in `term`, or [`NODE_NONE`].
    pub vote: NodeId,
    pub commit: Index,
    /// The highest term in which this replica acknowledged entries (to a
    /// leader of that term, or as that leader): durable before the first
    /// acknowledgement of a term leaves. A replica that lost entries it
    /// acknowledged knows from it which leaders may have counted them (see
    /// `Raft::repair_target`); the current term alone may be far higher
    /// after elections that no one won. 0 for none; a store that predates
    /// it reports the term.
    pub ack_term: Term,
    /// This replica knows its past: it never lost its data, or it has
    /// learnt since that it could have acknowledged nothing committed and
    /// voted in no term it might vote in again, or a leader caught it up.
    /// False in a new store, so that a replica whose data directory was
    /// wiped cannot be told from one that crashed after it had voted (see
    /// `Raft::past_unknown`). A store that predates it reports false.
    pub verified: bool,
}

/// A cluster membership. Outside a joint change `voters_outgoing` is empty;
/// during one, decisions need a majority of `voters` and of `voters_outgoing`
/// (Raft thesis 4.3).
///
/// Invariant: the lists are sorted, deduplicated, a learner is not a voter
/// of the incoming configuration, and every witness is a voter of one half
/// (see [`ConfState::normalize`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConfState {
    pub voters: Vec<NodeId>,
    pub voters_outgoing: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    /// The voters (of either half) that are witnesses: they vote and count
    /// toward the commit quorum but hold only entry metadata (index, term,
    /// kind, and configuration entries whole), never normal payloads or the
    /// state machine, and never lead. One list for both halves: a node is a
    /// witness or a full replica for its whole membership, never one in
    /// the outgoing half and the other in the incoming one.
    pub witnesses: Vec<NodeId>,
}

impl ConfState {
    /// A plain (non-joint) configuration; the lists are sorted and deduplicated.
    pub fn new(voters: impl IntoIterator<Item = NodeId>, learners: impl IntoIterator<Item = NodeId>) -> ConfState {
        ConfState::with_witnesses(voters, [], learners)
    }

    /// A plain configuration whose `witnesses` vote as witnesses; they need
    /// not be repeated in `voters`.
    pub fn with_witnesses(
        voters: impl IntoIterator<Item = NodeId>,
        witnesses: impl IntoIterator<Item = NodeId>,
        learners: impl IntoIterator<Item = NodeId>,
    ) -> ConfState {
        let witnesses: Vec<NodeId> = witnesses.into_iter().collect();
        let mut conf = ConfState {
            voters: voters.into_iter().chain(witnesses.iter().copied()).collect(),
            voters_outgoing: Vec::new(),
            learners: learners.into_iter().collect(),
            witnesses,
        };
        conf.normalize();
        conf
    }

    /// Sorts and deduplicates the lists so equal memberships compare equal,
    /// and drops witnesses that vote in neither half (a configuration read
    /// from the network or a disk is made consistent, not trusted).
    pub fn normalize(&mut self) {
        for list in [&mut self.voters, &mut self.voters_outgoing, &mut self.learners, &mut self.witnesses] {
            list.sort_unstable();
            list.dedup();
        }
        let (voters, outgoing) = (&self.voters, &self.voters_outgoing);
        self.witnesses.retain(|id| voters.binary_search(id).is_ok() || outgoing.binary_search(id).is_ok());
    }

    /// Whether `id` is a witness voter.
    pub fn is_witness(&self, id: NodeId) -> bool {
        self.witnesses.binary_search(&id).is_ok() && self.is_voter(id)
    }

    /// Whether `id` is a voter that holds payloads (a voter, not a witness).
    pub fn is_full_voter(&self, id: NodeId) -> bool {
        self.is_voter(id) && !self.is_witness(id)
    }

    /// Refuses a membership whose witnesses could outweigh its full voters:
    /// in each half, full voters must be a strict majority. Then the full
    /// voters alone form a quorum (the group runs with every witness down),
    /// a quorum never consists of witnesses alone, and at least one full
    /// voter remains to lead and hold the payloads.
    pub fn check_witnesses(&self) -> Result<(), String> {
        for (name, half) in [("incoming", &self.voters), ("outgoing", &self.voters_outgoing)] {
            let witnesses = half.iter().filter(|&&id| self.witnesses.binary_search(&id).is_ok()).count();
            if witnesses == 0 {
                continue;
            }
            let full = half.len() - witnesses;
            if full == 0 {
                return Err(format!("the {name} configuration would have no full voter, only witnesses"));
            }
            if full <= witnesses {
                return Err(format!(
                    "the {name} configuration would have {witnesses} witnesses and only {full} full voters: \
                     full voters must be a majority, so that a quorum never depends on witnesses alone"
                ));
            }
        }
        Ok(())
    }

    /// Whether a joint change is in progress.
    pub fn is_joint(&self) -> bool {
        !self.voters_outgoing.is_empty()
    }

    /// Whether `id` votes in either half of the configuration.
    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.binary_search(&id).is_ok() || self.voters_outgoing.binary_search(&id).is_ok()
    }

    /// Whether `id` is a learner (and not a voter).
    pub fn is_learner(&self, id: NodeId) -> bool {
        self.learners.binary_search(&id).is_ok() && !self.is_voter(id)
    }

    /// Every member, voters and learners, once each, sorted.
    pub fn members(&self) -> Vec<NodeId> {
        let mut all: Vec<NodeId> =
            self.voters.iter().chain(&self.voters_outgoing).chain(&self.learners).copied().collect();
        all.sort_unstable();
        all.dedup();
        all
    }
}

/// What a snapshot covers: the last index and term it includes, and the
/// membership in force at that index.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct SnapshotMeta {
    pub index: Index,
    pub term: Term,
    pub conf: ConfState,
}
