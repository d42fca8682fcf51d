//! A replica whose storage lost entries it acknowledged (repair): it must
//! not help elect a leader lacking them, and must not keep a group that
//! holds them from electing one.

use engine::testing::Cluster;
use engine::{ConfChange, ConfChangeOp, ConfState, EntryBatch, MemStorage, NodeId, Role};

/// `candidate` campaigns and wins with `voter`'s vote, the two handling
/// their Readies and writes by hand (the caller may hold writes back with
/// `sync_writes`), so that the caller can act the moment it leads.
fn campaign_step_by_step(cluster: &mut Cluster, candidate: NodeId, voter: NodeId) {
    cluster.raft(candidate).campaign();
    for _ in 0..10 {
        if cluster.node(candidate).raft.role() == Role::Leader {
            break;
        }
        for id in [voter, candidate] {
            cluster.process_ready(id);
            cluster.persist(id, usize::MAX);
        }
        cluster.deliver_all();
    }
}

/// Seed 6339 of the simulation's `three_nodes_with_storage_faults`, reduced:
/// node 2 wins a term with node 1's vote and records in its hard state
/// that it acknowledged in that term (a leader counts its own log from its
/// election on), but crashes before its first entry of the term is on its
/// disk, and the disk then loses its last entries too. It comes back in
/// repair, and with node 3 down node 1 needs its vote. Node 1 holds every
/// committed entry, yet before the fix node 2 voted only for a log ending
/// in an entry of the term it led, which no one has: no leader, for good
/// (in the simulation a joint configuration made the healthy replicas
/// need node 2's vote the same way). Now a vote request carries the
/// candidate's commit index, and node 2 votes for a candidate whose commit
/// index reaches its repair target.
#[test]
fn a_leader_that_lost_its_first_entry_and_more_lets_a_complete_log_win() {
    let mut cluster = Cluster::with_voters(3, 3);
    cluster.elect(1);
    cluster.commit_values(1, 4);
    cluster.tell_commit();
    let committed = cluster.node(1).raft.committed();
    assert_eq!(cluster.node(2).raft.committed(), committed);
    cluster.crash(3);
    // Node 1 restarts (it no longer leads); node 2 wins the next term, and
    // its writes stay in memory once it leads.
    cluster.crash(1);
    cluster.restart(1);
    // A restarted voter refuses votes for an election timeout (a lease
    // may rest on what it acknowledged before): let that pass first.
    for _ in 0..cluster.node(1).raft.config().election_ticks_min {
        cluster.raft(1).tick();
    }
    cluster.sync_writes = false;
    campaign_step_by_step(&mut cluster, 2, 1);
    assert_eq!(cluster.node(2).raft.role(), Role::Leader);
    let led = cluster.node(2).raft.term();
    // Its hard state (with the term it acknowledged in) reaches the disk,
    // its first entry of the term does not, then it crashes.
    cluster.process_ready(2);
    let node = cluster.nodes.get_mut(&2).expect("node 2");
    let write = node.pending_writes.pop_front().expect("the new leader's write");
    let hard_state = write.hard_state.expect("the leader's hard state");
    assert_eq!(hard_state.ack_term, led);
    assert!(write.entries.iter().any(|batch| batch.last_term() == led), "its first entry of the term");
    node.storage.set_hard_state(hard_state);
    cluster.crash(2);
    // Its disk also loses the last two entries it had acknowledged.
    let old = std::mem::take(&mut cluster.nodes.get_mut(&2).expect("node 2").storage);
    let mut damaged = MemStorage::new();
    damaged.set_hard_state(old.hard_state());
    let kept = old.entries(1, committed - 1).expect("entries");
    damaged.append(&EntryBatch::encode(&kept)).expect("append");
    cluster.nodes.get_mut(&2).expect("node 2").storage = damaged;
    cluster.restart(2);
    cluster.sync_writes = true;
    assert_eq!(cluster.node(2).raft.repair_target(), Some(committed));
    // Node 3 stays down: node 1 needs node 2's vote.
    for _ in 0..200 {
        cluster.tick_all();
        cluster.stabilize();
    }
    assert_eq!(cluster.leader(), Some(1), "node 1, holding every committed entry, was not elected");
    assert_eq!(cluster.node(2).raft.repair_target(), None, "node 2 repaired from the new leader");
    for index in 1..=committed {
        assert_eq!(cluster.node(2).raft.entry(index), cluster.node(1).raft.entry(index));
    }
}

/// A voter wiped and restarted with its old starting configuration after
/// the group shrank to {1, 3}: it cannot know what it acknowledged, and node
/// 3's log is not empty, so its past is unknown and it withholds its vote in
/// what it takes for a group of three (no other voter's report can vouch for
/// its vote there; `Raft::unknown_past_vote_allowed`). Node 3 needs its
/// vote, so there is no leader, and the replica says its past is unknown
/// (`past_unknown`, which the node shows in `admin status` and in a
/// warning). Restarted with the current members, it votes for node 3, the
/// other voter of its group of two, whose own request vouches for the vote;
/// a leader is elected, and the wiped replica gets every committed entry
/// back.
#[test]
fn a_wiped_voter_with_a_stale_configuration_withholds_its_vote_and_votes_with_the_current_one() {
    let mut cluster = Cluster::with_voters(3, 11);
    cluster.elect(1);
    cluster.commit_values(1, 3);
    cluster.raft(1).propose_conf_change(ConfChange { ops: vec![ConfChangeOp::Remove(2)] }).expect("proposed");
    cluster.stabilize();
    cluster.commit_values(1, 2);
    assert_eq!(cluster.node(3).raft.conf(), &ConfState::new([1, 3], []));
    let committed = cluster.node(1).raft.committed();
    cluster.crash(2);

    cluster.wipe_and_restart(1, vec![1, 2, 3]);
    for _ in 0..300 {
        cluster.tick_all();
        cluster.stabilize();
    }
    assert_eq!(cluster.leader(), None, "node 3 cannot win {{1, 3}} without node 1's vote");
    assert!(cluster.node(1).raft.past_unknown(), "node 1 heard a history it may have helped make");
    assert!(cluster.node(1).raft.votes_wait_for().is_empty(), "no request can vouch for its vote");
    assert!(!cluster.node(3).raft.past_unknown(), "node 3 knows its past");

    cluster.wipe_and_restart(1, vec![1, 3]);
    for _ in 0..300 {
        cluster.tick_all();
        cluster.stabilize();
        if cluster.leader().is_some() && cluster.node(1).raft.committed() >= committed {
            break;
        }
    }
    assert_eq!(cluster.leader(), Some(3));
    assert!(cluster.node(1).raft.committed() >= committed, "the wiped replica caught up");
    assert!(!cluster.node(1).raft.past_unknown());
}

/// Seed 771904 of the simulation's `five_nodes_with_storage_faults`, in
/// small: node 2 leads a term whose entries reach only learner 4 (node 1 is
/// cut off, node 3 is down), then crashes and its disk loses them. It comes
/// back in repair and votes only for a candidate holding them; node 1 needs
/// its vote (node 3 stays down) and lacks them; learner 4 holds them. Before,
/// a learner never campaigned, and there was no leader for good. Now the
/// learner campaigns once the voters have had their rounds, wins with both
/// voters, and once an entry of its term is committed (nodes 1 and 2 then
/// hold what only it held) hands leadership to a voter.
#[test]
fn a_learner_holding_what_a_repairing_voter_lost_leads_then_hands_over() {
    use engine::{Config, Raft, LEARNER_PATIENCE_ROUNDS};
    let make = |id| Config::new(id, if id <= 3 { vec![1, 2, 3] } else { Vec::new() });
    let mut cluster = Cluster::new(&[1, 2, 3], make);
    cluster.elect(1);
    cluster.add_node(make(4));
    cluster.raft(1).propose_conf_change(ConfChange { ops: vec![ConfChangeOp::AddLearner(4)] }).expect("proposed");
    cluster.stabilize();
    cluster.commit_values(1, 3);
    let committed = cluster.node(1).raft.committed();
    assert!(cluster.node(4).raft.conf().is_learner(4));

    // Node 3 goes down for good; node 2 wins the next term with node 1's
    // vote, and is cut off from node 1 as soon as it leads.
    cluster.crash(3);
    cluster.crash(1);
    cluster.restart(1);
    for _ in 0..cluster.node(1).raft.config().election_ticks_min {
        cluster.raft(1).tick();
    }
    campaign_step_by_step(&mut cluster, 2, 1);
    assert_eq!(cluster.node(2).raft.role(), Role::Leader);
    let led = cluster.node(2).raft.term();
    cluster.partition(&[1], &[2, 4]);
    cluster.stabilize();
    for value in 0..2u8 {
        cluster.raft(2).propose(bytes::Bytes::from(vec![value])).expect("leader accepts");
        cluster.stabilize();
    }
    let acknowledged = cluster.node(2).raft.last_index();
    assert_eq!(cluster.node(4).raft.last_index(), acknowledged, "the learner holds node 2's entries");
    assert_eq!(cluster.node(4).raft.entry(acknowledged).expect("entry").term, led);
    assert_eq!(cluster.node(1).raft.committed(), committed, "nothing of node 2's term committed");

    // Node 2 crashes; its disk keeps only the entries from before its term,
    // and its store reports that it acknowledged up to `acknowledged`.
    cluster.crash(2);
    let node = cluster.nodes.get_mut(&2).expect("node 2");
    let old = std::mem::take(&mut node.storage);
    let mut damaged = MemStorage::new();
    damaged.set_hard_state(old.hard_state());
    damaged.append(&EntryBatch::encode(&old.entries(1, committed).expect("entries"))).expect("append");
    node.storage = damaged;
    cluster.restart(2);
    let node = cluster.nodes.get_mut(&2).expect("node 2");
    let mut recovered = node.storage.recovered();
    recovered.acknowledged = acknowledged;
    node.raft = Raft::new(node.config.clone(), recovered).expect("valid config");
    assert_eq!(cluster.node(2).raft.repair_target(), Some(acknowledged));
    cluster.heal();

    // The learner waits its rounds, leads, and hands over.
    let rounds = u64::from(LEARNER_PATIENCE_ROUNDS + 2);
    let mut learner_led = false;
    for _ in 0..rounds * u64::from(cluster.node(4).raft.config().election_ticks_max) * 3 {
        cluster.tick_all();
        cluster.stabilize();
        learner_led |= cluster.node(4).raft.role() == Role::Leader;
        if learner_led && matches!(cluster.leader(), Some(1 | 2)) && cluster.node(2).raft.repair_target().is_none() {
            break;
        }
    }
    assert!(learner_led, "the learner never led; leader {:?}", cluster.leader());
    let leader = cluster.leader().expect("a leader after the learner's turn");
    assert!(leader == 1 || leader == 2, "the learner handed leadership to a voter, not to {leader}");
    assert!(cluster.node(4).raft.conf().is_learner(4), "still a learner");
    assert_eq!(cluster.node(2).raft.repair_target(), None, "node 2 repaired");
    for index in committed + 1..=acknowledged {
        let held = cluster.node(4).raft.entry(index);
        assert_eq!(cluster.node(1).raft.entry(index), held, "node 1 at {index}");
        assert_eq!(cluster.node(2).raft.entry(index), held, "node 2 at {index}");
    }
    assert!(cluster.node(1).raft.committed() > acknowledged, "the voters committed past the learner's entries");
}
