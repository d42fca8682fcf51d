//! The in-memory log's payload budget (`Config::log_memory_bytes`): applied
//! payloads beyond it are dropped, except what followers the leader hears
//! from still need; a follower that needs a dropped payload catches up
//! through one snapshot taken for it, then through the log.

use bytes::Bytes;
use engine::testing::Cluster;
use engine::{Config, EntryKind, MessageBody, NodeId};

const BUDGET: u64 = 2_000;
const VALUE: usize = 100;

fn cluster(budget: u64) -> Cluster {
    Cluster::new(&[1, 2, 3], |id| {
        let mut config = Config::new(id, vec![1, 2, 3]);
        // Snapshots far apart, as with a large state: without the budget
        // the log since the last one is held whole.
        config.snapshot_entries = 150;
        config.compaction_tail = 10;
        config.log_memory_bytes = budget;
        config
    })
}

fn propose(cluster: &mut Cluster, first: u64, count: u64) {
    for value in first..first + count {
        let mut data = vec![0u8; VALUE];
        data[..8].copy_from_slice(&value.to_le_bytes());
        cluster.raft(1).propose(Bytes::from(data)).expect("the leader accepts");
        cluster.stabilize();
    }
}

/// Delivers what is in flight, dropping appends that carry entries to
/// `slow`: it answers heartbeats (so the leader hears from it) but takes
/// no entries, as a follower whose disk or link cannot keep up.
fn stabilize_starving(cluster: &mut Cluster, slow: NodeId) {
    for _ in 0..1_000 {
        let ids: Vec<NodeId> = cluster.nodes.keys().copied().collect();
        let mut moved = false;
        for id in ids {
            moved |= cluster.process_ready(id).is_some();
        }
        let messages = std::mem::take(&mut cluster.network);
        moved |= !messages.is_empty();
        for message in messages {
            let starved =
                message.to == slow && matches!(&message.body, MessageBody::Append(append) if append.entries.is_some());
            if !starved {
                cluster.deliver(message);
            }
        }
        if !moved {
            return;
        }
    }
    panic!("did not settle");
}

/// Node `id` applied what the leader (node 1) applied.
fn same_state(cluster: &Cluster, id: NodeId) {
    let (mine, leader) = (cluster.node(id).applied_commands(), cluster.node(1).applied_commands());
    let differs = mine.iter().zip(&leader).position(|(a, b)| a != b);
    assert!(
        mine.len() == leader.len() && differs.is_none(),
        "node {id} applied {} commands, the leader {}; first difference at {differs:?}",
        mine.len(),
        leader.len()
    );
}

#[test]
fn applied_payloads_beyond_the_budget_are_dropped_and_the_log_still_matches() {
    let mut held_whole = cluster(0);
    held_whole.elect(1);
    propose(&mut held_whole, 0, 120);
    let mut bounded = cluster(BUDGET);
    bounded.elect(1);
    propose(&mut bounded, 0, 120);
    for id in 1..=3 {
        let whole = &held_whole.node(id).raft;
        assert!(whole.log_held_bytes() >= 120 * VALUE as u64, "without a budget node {id} holds every payload");
        let raft = &bounded.node(id).raft;
        assert!(raft.log_held_bytes() <= BUDGET, "node {id} holds {} bytes", raft.log_held_bytes());
        assert!(raft.payloads_from() > raft.first_index() + 50, "node {id} dropped the oldest payloads");
        // Dropped entries keep their terms: the log still matches and
        // elections still compare logs.
        for index in raft.first_index()..raft.payloads_from() {
            assert_eq!(raft.term_at(index), whole.term_at(index), "node {id} at {index}");
            let entry = raft.entry(index).expect("held");
            // Configuration entries keep theirs (membership is read from them).
            assert!(entry.data.is_empty() || entry.kind == EntryKind::Config, "node {id} at {index}");
        }
        assert!(
            bounded.node(id).applied_commands() == held_whole.node(id).applied_commands(),
            "node {id} applied the same"
        );
    }
    // A new leader whose oldest payloads are gone still leads and commits.
    bounded.crash(1);
    for _ in 0..200 {
        bounded.tick_all();
        bounded.stabilize();
        if bounded.leader().is_some() {
            break;
        }
    }
    let leader = bounded.leader().expect("a new leader");
    let proposed = bounded.raft(leader).propose(Bytes::from_static(b"after")).expect("it leads");
    bounded.stabilize();
    for id in 2..=3 {
        assert_eq!(bounded.node(id).raft.term_at(proposed.0), Some(proposed.1));
    }
}

#[test]
fn a_follower_the_leader_hears_from_keeps_what_it_lacks_and_catches_up_from_the_log() {
    let mut cluster = cluster(BUDGET);
    cluster.elect(1);
    propose(&mut cluster, 0, 10);
    let matched = cluster.node(3).raft.last_index();
    for value in 10..110u64 {
        cluster.raft(1).propose(Bytes::from(vec![value as u8; VALUE])).expect("the leader accepts");
        cluster.tick_all();
        stabilize_starving(&mut cluster, 3);
    }
    let leader = &cluster.node(1).raft;
    assert_eq!(cluster.node(3).raft.last_index(), matched, "node 3 took no entries");
    assert!(leader.log_held_bytes() > 4 * BUDGET, "beyond the budget for node 3");
    assert!(leader.payloads_from() <= matched + 1, "node 3's next entry keeps its payload");
    cluster.tick_all();
    cluster.stabilize();
    let node = cluster.node(3);
    assert_eq!(node.restores, 0, "node 3 caught up from the log");
    same_state(&cluster, 3);
    cluster.tick_all();
    cluster.stabilize();
    assert!(cluster.node(1).raft.log_held_bytes() <= BUDGET, "and then the leader drops them");
}

#[test]
fn a_follower_gone_quiet_catches_up_through_one_snapshot_taken_for_it() {
    let mut cluster = cluster(BUDGET);
    cluster.elect(1);
    propose(&mut cluster, 0, 10);
    cluster.isolate(3);
    for value in 10..200u64 {
        let mut data = vec![0u8; VALUE];
        data[..8].copy_from_slice(&value.to_le_bytes());
        cluster.raft(1).propose(Bytes::from(data)).expect("the leader accepts");
        cluster.tick_all();
        cluster.stabilize();
    }
    let leader = &cluster.node(1).raft;
    let stored = leader.snapshot().index;
    assert!(stored > 0, "the leader took a snapshot on its own");
    assert!(
        stored + 1 < leader.payloads_from(),
        "the entries right after the stored snapshot (at {stored}) lost their payloads (held from {})",
        leader.payloads_from()
    );
    cluster.heal();
    // The leader keeps taking writes while node 3 catches up, so what
    // follows each snapshot would go beyond the budget before node 3 asks
    // for it, unless kept for it.
    for value in 200..300u64 {
        cluster.raft(1).propose(Bytes::from(vec![value as u8; VALUE])).expect("the leader accepts");
        cluster.tick_all();
        cluster.stabilize();
        if cluster.node(3).raft.applied() == cluster.node(1).raft.applied() {
            break;
        }
    }
    let node = cluster.node(3);
    assert_eq!(node.restores, 1, "one snapshot, no second one");
    assert!(node.raft.snapshot().index > stored, "a fresh snapshot, taken for node 3");
    same_state(&cluster, 3);
    // The leader goes on taking writes and node 3 follows from the log.
    propose(&mut cluster, 300, 20);
    cluster.tick_all();
    cluster.stabilize();
    assert_eq!(cluster.node(3).restores, 1);
    same_state(&cluster, 3);
}

/// A follower whose applying is held (its shell restores a snapshot) cannot
/// drop the payloads of what arrives meanwhile: once the entries it has not
/// applied hold more than its budget it takes no more, answering as a full
/// disk does but saying why (`AppendResponse::applying`), so the leader
/// probes it once per heartbeat without reporting a full disk or refusing
/// writes. Once applying resumes it catches up from the log.
#[test]
fn a_follower_that_cannot_apply_takes_no_more_than_its_budget_and_catches_up_after() {
    let mut cluster = cluster(BUDGET);
    cluster.elect(1);
    propose(&mut cluster, 0, 5);
    cluster.raft(2).hold_apply(true);
    propose(&mut cluster, 5, 60);
    let held = cluster.node(2).raft.log_held_bytes();
    assert!(held <= 2 * BUDGET + VALUE as u64, "the held follower holds {held} payload bytes (budget {BUDGET})");
    assert!(cluster.node(2).raft.appends_refused_applying() > 0, "it refused appends");
    assert!(cluster.node(2).raft.last_index() < cluster.node(1).raft.last_index(), "it took fewer entries");
    let leader = &cluster.node(1).raft;
    assert_eq!(leader.committed(), leader.last_index(), "the leader and node 3 commit without it");
    assert!(leader.peers_no_space().is_empty(), "not reported as a full disk");
    assert!(!leader.quorum_lacks_space(), "writes are not refused for it");

    cluster.raft(2).hold_apply(false);
    for _ in 0..20 {
        cluster.tick_all();
        cluster.stabilize();
    }
    assert_eq!(cluster.node(2).raft.last_index(), cluster.node(1).raft.last_index(), "caught up from the log");
    same_state(&cluster, 2);
    assert_eq!(cluster.node(2).raft.snapshot().index, 0, "no snapshot was needed");
}
