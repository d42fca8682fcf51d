//! Membership changes by joint consensus (Raft thesis 4.3).
//!
//! Every change goes through a joint configuration: the entry that enters it
//! lists the operations; once it commits, the leader appends an empty
//! "leave joint" entry. A configuration takes effect on each node as soon as
//! its entry is appended to that node's log (thesis 4.1), so a truncated
//! configuration entry reverts the membership, which is why the engine keeps
//! the history of configurations since the last snapshot.

use bytes::{BufMut, Bytes, BytesMut};

use crate::raft::{ProposeError, Raft, Role};
use crate::types::{ConfState, EntryKind, Index, NodeId};

/// One membership operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfChangeOp {
    /// Add a voter, or promote a learner to voter.
    AddVoter(NodeId),
    /// Add a learner (a non-voting member that receives the log).
    AddLearner(NodeId),
    /// Remove a voter (witness or not) or learner.
    Remove(NodeId),
    /// Add a witness, or promote a learner to one: a voter that holds only
    /// entry metadata and never leads. A full voter does not become a
    /// witness in place, nor a witness a full voter or learner: a witness's
    /// log lacks payloads that matching terms would make a leader believe
    /// it holds, so the node is removed, and added back (with its data
    /// wiped) by a later change.
    AddWitness(NodeId),
}

/// The payload of a configuration entry: the operations that enter a joint
/// configuration, or none to leave it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfChange {
    pub ops: Vec<ConfChangeOp>,
}

/// A configuration entry that cannot be decoded or applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad configuration change: {0}")]
pub struct ConfChangeError(pub String);

impl ConfChange {
    /// Encoding: a u32 count, then per operation one kind byte (1 add voter,
    /// 2 add learner, 3 remove, 4 add witness) and a u64 node id, all
    /// little-endian. Kind 4 came later: every older encoding decodes the
    /// same, but a node built before it ignores a change that adds a witness
    /// (see `conf_after_append`), so all nodes must be upgraded first.
    pub fn encode(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(4 + self.ops.len() * 9);
        buf.put_u32_le(self.ops.len() as u32);
        for op in &self.ops {
            let (kind, id) = match *op {
                ConfChangeOp::AddVoter(id) => (1u8, id),
                ConfChangeOp::AddLearner(id) => (2, id),
                ConfChangeOp::Remove(id) => (3, id),
                ConfChangeOp::AddWitness(id) => (4, id),
            };
            buf.put_u8(kind);
            buf.put_u64_le(id);
        }
        buf.freeze()
    }

    pub fn decode(data: &[u8]) -> Result<ConfChange, ConfChangeError> {
        let count = data
            .get(..4)
            .map(|raw| u32::from_le_bytes(raw.try_into().expect("4 bytes")) as usize)
            .ok_or_else(|| ConfChangeError("truncated count".into()))?;
        if data.len() != 4 + count.saturating_mul(9) {
            return Err(ConfChangeError(format!("{} bytes do not hold {count} operations", data.len())));
        }
        let ops = data[4..]
            .chunks_exact(9)
            .map(|raw| {
                let id = u64::from_le_bytes(raw[1..9].try_into().expect("8 bytes"));
                match raw[0] {
                    1 => Ok(ConfChangeOp::AddVoter(id)),
                    2 => Ok(ConfChangeOp::AddLearner(id)),
                    3 => Ok(ConfChangeOp::Remove(id)),
                    4 => Ok(ConfChangeOp::AddWitness(id)),
                    kind => Err(ConfChangeError(format!("unknown operation kind {kind}"))),
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ConfChange { ops })
    }

    /// Whether this entry leaves a joint configuration.
    pub fn is_leave_joint(&self) -> bool {
        self.ops.is_empty()
    }

    /// The configuration after this change takes effect on `conf`.
    pub fn apply_to(&self, conf: &ConfState) -> Result<ConfState, ConfChangeError> {
        if self.is_leave_joint() {
            if !conf.is_joint() {
                return Err(ConfChangeError("leave-joint outside a joint configuration".into()));
            }
            let mut next = ConfState {
                voters: conf.voters.clone(),
                voters_outgoing: Vec::new(),
                learners: conf.learners.clone(),
                witnesses: conf.witnesses.clone(),
            };
            next.normalize();
            return Ok(next);
        }
        if conf.is_joint() {
            return Err(ConfChangeError("a change while a joint configuration is in force".into()));
        }
        let mut next = ConfState {
            voters: conf.voters.clone(),
            voters_outgoing: conf.voters.clone(),
            learners: conf.learners.clone(),
            witnesses: conf.witnesses.clone(),
        };
        for op in &self.ops {
            apply_op(*op, conf, &mut next)?;
        }
        next.normalize();
        if next.voters == next.voters_outgoing {
            // The voters did not change (learners only, or the bootstrap
            // entry restating the membership): no joint phase is needed.
            next.voters_outgoing.clear();
        }
        if next.voters.is_empty() {
            return Err(ConfChangeError("the change would remove the last voter".into()));
        }
        next.check_witnesses().map_err(ConfChangeError)?;
        Ok(next)
    }
}

/// Applies one operation of a change to `next` (its incoming half), checked
/// against `conf`, the configuration the change starts from: whether a node
/// is a witness is decided there, so removing and re-adding a node within
/// one change cannot turn a witness into a full voter or back.
fn apply_op(op: ConfChangeOp, conf: &ConfState, next: &mut ConfState) -> Result<(), ConfChangeError> {
    let id = match op {
        ConfChangeOp::AddVoter(id) | ConfChangeOp::AddLearner(id) | ConfChangeOp::AddWitness(id) => id,
        ConfChangeOp::Remove(id) => id,
    };
    if id == crate::types::NODE_NONE && !matches!(op, ConfChangeOp::Remove(_)) {
        return Err(ConfChangeError("node id 0 cannot be a member".into()));
    }
    let was_witness = conf.witnesses.contains(&id);
    match op {
        ConfChangeOp::AddVoter(id) => {
            if was_witness || next.witnesses.contains(&id) {
                return Err(ConfChangeError(format!(
                    "node {id} is a witness and cannot become a full voter in place: remove it, wipe its \
                     data, then add it again in a later change"
                )));
            }
            next.learners.retain(|&l| l != id);
            next.voters.push(id);
        }
        ConfChangeOp::AddLearner(id) => {
            if was_witness {
                return Err(ConfChangeError(format!("node {id} is a witness and cannot become a learner")));
            }
            if next.voters.contains(&id) {
                return Err(ConfChangeError(format!("node {id} is a voter; demotion is not supported")));
            }
            next.learners.push(id);
        }
        ConfChangeOp::AddWitness(id) => {
            if conf.is_voter(id) && !was_witness {
                return Err(ConfChangeError(format!(
                    "node {id} is a full voter and cannot become a witness in place: remove it, then add it \
                     as a witness in a later change"
                )));
            }
            if next.learners.contains(&id) && !conf.learners.contains(&id) {
                return Err(ConfChangeError(format!("node {id} cannot be added as a learner and a witness at once")));
            }
            // A learner may become a witness (a node joins as a learner,
            // then is promoted): the payloads it holds are only more than a
            // witness needs, unlike a witness's log made a full voter's.
            next.learners.retain(|&l| l != id);
            next.voters.push(id);
            next.witnesses.push(id);
        }
        ConfChangeOp::Remove(id) => {
            next.voters.retain(|&v| v != id);
            next.learners.retain(|&l| l != id);
            // A removed witness stays listed while it votes in the outgoing
            // half; `normalize` drops it once it votes in neither.
        }
    }
    Ok(())
}

impl Raft {
    /// Proposes a membership change (leader only). Refused while another
    /// change is in progress, for a learner that lags too far to be promoted
    /// or that has acknowledged no entry yet (the lag bound alone let a young
    /// cluster promote a learner it never heard from: a voter holding
    /// nothing, perhaps not even running), for a full voter that is not a
    /// learner yet, and for a change that would leave no voter.
    ///
    /// A full voter joins as a learner first and is promoted once it has
    /// caught up (Raft thesis 4.2.1). Added directly, it would count toward
    /// the quorum while it holds nothing, and it could not tell a lost
    /// history from a new cluster: a replica with an empty log that was in
    /// its starting configuration waits for requests with an empty log
    /// from that configuration's voters before it votes
    /// (`Raft::unverified`), so one
    /// added back directly after its configuration changed could wait for
    /// members that have left and no longer campaign, and a group that
    /// needs its vote had no leader for good (seeds 8822, 9901, 26942,
    /// 30441, 42312, 42795, 45040, 101931 and 205173 of the randomized
    /// `three_nodes`). A witness may still join directly: it holds entry
    /// metadata only, and a node joins as a witness that way (`--join
    /// --witness`).
    pub fn propose_conf_change(&mut self, change: ConfChange) -> Result<(Index, u64), ProposeError> {
        if self.role() != Role::Leader {
            let leader = self.leader();
            return Err(ProposeError::NotLeader { leader: (leader != crate::NODE_NONE).then_some(leader) });
        }
        if change.is_leave_joint() {
            return Err(ProposeError::InvalidChange("an empty change is only proposed by the engine".into()));
        }
        if self.pending_conf_index > self.applied() || self.conf().is_joint() {
            return Err(ProposeError::ChangeInProgress(self.pending_conf_index.max(self.applied())));
        }
        let next = change.apply_to(self.conf()).map_err(|error| ProposeError::InvalidChange(error.0))?;
        self.check_new_voters_caught_up(&next.voters)?;
        let last = self.last_index();
        for op in &change.ops {
            if let ConfChangeOp::AddVoter(id) = *op {
                if !self.conf().is_voter(id) && !self.conf().is_learner(id) {
                    return Err(ProposeError::InvalidChange(format!(
                        "node {id} is not a learner: add it as one first, and promote it once it has caught up"
                    )));
                }
            }
            if let ConfChangeOp::AddVoter(id) | ConfChangeOp::AddWitness(id) = *op {
                if self.conf().is_learner(id) {
                    let matched = self.progress().get(&id).map_or(0, |pr| pr.match_index);
                    if matched + self.config().promotion_lag_max < last {
                        return Err(ProposeError::InvalidChange(format!(
                            "learner {id} is {} entries behind (at most {} allowed for promotion)",
                            last - matched,
                            self.config().promotion_lag_max
                        )));
                    }
                    if matched == 0 {
                        return Err(ProposeError::InvalidChange(format!(
                            "learner {id} has acknowledged no entry yet: promote it once it has caught up"
                        )));
                    }
                }
            }
        }
        let (index, term) = self.propose_entry(EntryKind::Config, change.encode())?;
        Ok((index, term))
    }

    /// Refuses a change whose new voters hold no majority of replicas that
    /// have caught up with this leader (`Progress::caught_up`), as etcd's
    /// strict reconfiguration check does. Such a change could not commit
    /// until the others answer, and a voter that has not caught up may be
    /// one that took its past for unknown (a new cluster's voter cut off
    /// during its first round: `Raft::note_evidence`) and withholds the
    /// vote the new configuration then needs. Engine randomized seeds of
    /// `three_nodes`: in 103059, removing node 2 of {1, 2, 3} left {1, 3},
    /// and node 3 had never been reached; in 303508, node 3 had
    /// acknowledged entries, but only part of the way to the commit index,
    /// so it was still in that repair.
    fn check_new_voters_caught_up(&self, voters: &[NodeId]) -> Result<(), ProposeError> {
        let caught_up: Vec<NodeId> = voters
            .iter()
            .copied()
            .filter(|&id| id == self.id() || self.progress().get(&id).is_some_and(|pr| pr.caught_up))
            .collect();
        let majority = voters.len() / 2 + 1;
        if caught_up.len() >= majority {
            return Ok(());
        }
        Err(ProposeError::InvalidChange(format!(
            "the new voters {voters:?} would hold {} that caught up with this leader ({caught_up:?}), fewer than a \
             majority ({majority}): start the others, or let them catch up, first",
            caught_up.len()
        )))
    }
}

/// Recomputes the membership after the log changed at or after `from`: the
/// latest configuration entry in the log is in force.
pub(crate) fn conf_after_append(raft: &mut Raft, first: Index) {
    let mut conf = raft.conf_at(first.saturating_sub(1));
    let mut index = first;
    let mut recorded = Vec::new();
    while let Some(entry) = raft.entry(index) {
        if entry.kind == EntryKind::Config {
            // A configuration entry that does not apply is ignored on every
            // node alike, so all agree on the membership.
            if let Ok(next) = ConfChange::decode(&entry.data).and_then(|change| change.apply_to(&conf)) {
                conf = next;
                recorded.push((index, conf.clone()));
            }
        }
        index += 1;
    }
    for (index, conf) in recorded {
        raft.record_conf(index, conf);
    }
    raft.install_conf(conf);
}

/// Called when the commit index moves from `old` to `new`: a committed joint
/// configuration is left by an automatic entry; a committed final
/// configuration that removed the leader makes it step down.
pub(crate) fn on_commit(raft: &mut Raft, old: Index, new: Index) {
    if raft.role() != Role::Leader {
        return;
    }
    let mut index = old + 1;
    while index <= new {
        let is_config = raft.entry(index).is_some_and(|entry| entry.kind == EntryKind::Config);
        if is_config {
            let change = raft.entry(index).map(|entry| ConfChange::decode(&entry.data));
            if let Some(Ok(change)) = change {
                if !change.is_leave_joint() && raft.conf().is_joint() && raft.last_conf_index() == index {
                    // Thesis 4.3: once C_old,new commits, append C_new.
                    raft.propose_entry_internal(EntryKind::Config, ConfChange::default().encode());
                } else if change.is_leave_joint() && !raft.conf().is_voter(raft.id()) {
                    raft.step_down_removed();
                    return;
                }
            }
        }
        index += 1;
    }
}
