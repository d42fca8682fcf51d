//! The Raft safety properties (paper Figure 3), checked across the whole
//! simulated cluster after every event.

use std::collections::BTreeMap;

use bytes::Bytes;
use engine::{Index, NodeId, Role, Term};

use super::node::SimNode;

/// What the cluster has shown so far.
#[derive(Default)]
pub struct Observer {
    /// Election safety: the one leader seen in each term.
    leaders: BTreeMap<Term, NodeId>,
    /// Every index any node saw committed, with its term and payload.
    committed: BTreeMap<Index, (Term, Bytes)>,
    /// For each committed index, the lowest term in which a node saw it
    /// committed: every leader of a later term must hold it.
    committed_by_term: BTreeMap<Index, Term>,
    /// Every index any state machine applied, with its term and payload.
    applied: BTreeMap<Index, (Term, Bytes)>,
    /// Leaders whose log was already checked for completeness: (id, term).
    completeness_checked: BTreeMap<(NodeId, Term), Index>,
}

impl Observer {
    /// Checks every property against the current state; panics with a
    /// description when one is broken.
    pub fn check(&mut self, nodes: &mut BTreeMap<NodeId, SimNode>, time: u64) {
        for (&id, node) in nodes.iter_mut() {
            node.raft.check_invariants();
            // State machine safety: every state machine applies the same
            // entry at an index.
            for entry in node.applied_unchecked.drain(..) {
                let recorded = self.applied.entry(entry.index).or_insert((entry.term, entry.data.clone()));
                assert_eq!(
                    (recorded.0, &recorded.1),
                    (entry.term, &entry.data),
                    "time {time}: node {id} applied a different entry at {}",
                    entry.index
                );
            }
            if !node.up {
                continue;
            }
            let raft = &node.raft;
            if raft.role() == Role::Leader {
                let previous = self.leaders.entry(raft.term()).or_insert(id);
                assert_eq!(*previous, id, "time {time}: two leaders in term {}", raft.term());
                // Leader completeness: a leader holds every entry committed
                // in an earlier term (checked when it is first seen, and for
                // entries committed since).
                let from = self.completeness_checked.get(&(id, raft.term())).copied().unwrap_or(0);
                for (&index, (term, data)) in self.committed.range(from + 1..) {
                    if self.committed_by_term[&index] >= raft.term() {
                        continue;
                    }
                    if index < raft.first_index() {
                        assert!(raft.snapshot().index >= index, "time {time}: leader {id} lost entry {index}");
                        continue;
                    }
                    let entry = raft.entry(index);
                    assert!(
                        entry.is_some_and(|e| e.term == *term && e.data == *data),
                        "time {time}: leader {id} of term {} lacks committed entry {index} of term {term}",
                        raft.term()
                    );
                }
                let last = self.committed.last_key_value().map_or(0, |(&index, _)| index);
                self.completeness_checked.insert((id, raft.term()), last);
            }
            // Everything a node says is committed agrees with what any node
            // said before.
            for index in raft.first_index()..=raft.committed() {
                let Some(entry) = raft.entry(index) else { continue };
                let recorded = self.committed.entry(index).or_insert_with(|| (entry.term, entry.data.clone()));
                assert_eq!(
                    (recorded.0, &recorded.1),
                    (entry.term, &entry.data),
                    "time {time}: node {id} committed a different entry at {index}"
                );
                let by_term = self.committed_by_term.entry(index).or_insert(raft.term());
                *by_term = (*by_term).min(raft.term());
            }
        }
        // Log matching: two logs that hold an entry with the same index and
        // term are identical up to it.
        let ids: Vec<NodeId> = nodes.keys().copied().collect();
        for (position, &a) in ids.iter().enumerate() {
            for &b in &ids[position + 1..] {
                let (ra, rb) = (&nodes[&a].raft, &nodes[&b].raft);
                let low = ra.first_index().max(rb.first_index());
                let high = ra.last_index().min(rb.last_index());
                let Some(matching) = (low..=high).rev().find(|&i| ra.term_at(i) == rb.term_at(i)) else { continue };
                for index in low..=matching {
                    assert_eq!(
                        ra.entry(index),
                        rb.entry(index),
                        "time {time}: logs of {a} and {b} match at {matching} but differ at {index}"
                    );
                }
            }
        }
    }

    /// How many terms had a leader, for the run summary.
    pub fn terms_with_leader(&self) -> usize {
        self.leaders.len()
    }

    /// How many entries were committed.
    pub fn committed_len(&self) -> usize {
        self.committed.len()
    }
}
