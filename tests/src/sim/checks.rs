//! The Raft safety properties (paper Figure 3), checked across the whole
//! simulated cluster after every event, one shard (Raft group) at a time.

use std::collections::BTreeMap;

use bytes::Bytes;
use engine::testing::{check_log_matching, CommittedLog};
use engine::{Index, NodeId, Role, Term};

use super::node::SimNode;

/// What one shard of the cluster has shown so far.
#[derive(Default)]
pub struct Observer {
    /// Election safety: the one leader seen in each term.
    leaders: BTreeMap<Term, NodeId>,
    /// Every index any node saw committed, and in which lowest term.
    committed: CommittedLog,
    /// Every index any state machine applied, with its term and payload.
    applied: BTreeMap<Index, (Term, Bytes)>,
    /// Leaders whose log was already checked for completeness: (id, term).
    completeness_checked: BTreeMap<(NodeId, Term), Index>,
}

impl Observer {
    /// Checks every property against the current state; panics with a
    /// description when one is broken.
    pub fn check(&mut self, nodes: &mut BTreeMap<NodeId, SimNode>, shard: u32, time: u64) {
        let at = format!("time {time}, shard {shard}");
        for (&id, node) in nodes.iter_mut() {
            let up = node.up;
            let replica = &mut node.replicas[shard as usize];
            replica.shard.raft().check_invariants();
            // State machine safety: every state machine applies the same
            // entry at an index.
            for entry in replica.applied_unchecked.drain(..) {
                let recorded = self.applied.entry(entry.index).or_insert((entry.term, entry.data.clone()));
                assert_eq!(
                    (recorded.0, &recorded.1),
                    (entry.term, &entry.data),
                    "{at}: node {id} applied a different entry at {}",
                    entry.index
                );
            }
            if !up {
                continue;
            }
            let raft = replica.shard.raft();
            // Election safety counts a leader once its term is durable: a
            // sole voter elects itself in memory before its term and vote
            // are on disk, and sends nothing of that term until they are
            // (`Ready`'s contract); a crash before then takes the term back,
            // and the restarted replica may vote for another candidate of
            // that term, which is no second leader.
            if raft.role() == Role::Leader {
                if replica.disk.borrow().durable.hard_state().term >= raft.term() {
                    let previous = self.leaders.entry(raft.term()).or_insert(id);
                    assert_eq!(*previous, id, "{at}: two leaders in term {}", raft.term());
                }
                // Leader completeness: a leader holds every entry committed
                // in an earlier term (checked when it is first seen, and for
                // entries committed since).
                let from = self.completeness_checked.get(&(id, raft.term())).copied().unwrap_or(0);
                self.committed.check_leader_holds(id, raft, from + 1, &at);
                let last = self.committed.entries.last_key_value().map_or(0, |(&index, _)| index);
                self.completeness_checked.insert((id, raft.term()), last);
            }
            // Everything a node says is committed agrees with what any node
            // said before.
            self.committed.record(id, raft, &at);
        }
        // Lease safety: a leader that would serve a read from its lease now
        // holds every entry any node saw committed (the nodes' clocks keep
        // within the drift the lease allows, see `World::clocks`).
        for (&id, node) in nodes.iter() {
            let replica = &node.replicas[shard as usize];
            if node.up && replica.shard.lease_serves_now() {
                self.committed.check_lease_holder_holds(id, replica.shard.raft(), &at);
            }
        }
        // Log matching: two logs that hold an entry with the same index and
        // term are identical up to it.
        let rafts: Vec<(NodeId, &engine::Raft)> = nodes.iter().map(|(&id, node)| (id, node.raft(shard))).collect();
        check_log_matching(&rafts, &at);
    }

    /// How many terms had a leader, for the run summary.
    pub fn terms_with_leader(&self) -> usize {
        self.leaders.len()
    }

    /// How many entries were committed.
    pub fn committed_len(&self) -> usize {
        self.committed.entries.len()
    }
}
