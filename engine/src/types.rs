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
    /// A membership change (an encoded [`ConfChange`]).
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
}

/// A cluster membership. Outside a joint change `voters_outgoing` is empty;
/// during one, decisions need a majority of `voters` and of `voters_outgoing`
/// (Raft thesis 4.3).
///
/// Invariant: the three lists are sorted, deduplicated, and a learner is not a
/// voter of the incoming configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConfState {
    pub voters: Vec<NodeId>,
    pub voters_outgoing: Vec<NodeId>,
    pub learners: Vec<NodeId>,
}

impl ConfState {
    /// A plain (non-joint) configuration; the lists are sorted and deduplicated.
    pub fn new(voters: impl IntoIterator<Item = NodeId>, learners: impl IntoIterator<Item = NodeId>) -> ConfState {
        let mut conf = ConfState {
            voters: voters.into_iter().collect(),
            voters_outgoing: Vec::new(),
            learners: learners.into_iter().collect(),
        };
        conf.normalize();
        conf
    }

    /// Sorts and deduplicates the lists so equal memberships compare equal.
    pub fn normalize(&mut self) {
        for list in [&mut self.voters, &mut self.voters_outgoing, &mut self.learners] {
            list.sort_unstable();
            list.dedup();
        }
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
