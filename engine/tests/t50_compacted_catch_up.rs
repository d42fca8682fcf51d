//! Raft paper 7 at scale: a node added to a cluster whose log was compacted
//! past 1,000,000 entries catches up through a snapshot, then through the
//! log, and is promoted to voter.

use bytes::Bytes;
use engine::testing::Cluster;
use engine::{ConfChange, ConfChangeOp, Config, NodeId};

#[test]
fn new_node_catches_up_past_a_million_compacted_entries() {
    let make = |id: NodeId| {
        let voters = if id <= 3 { vec![1, 2, 3] } else { Vec::new() };
        let mut config = Config::new(id, voters);
        config.snapshot_entries = 50_000;
        config.compaction_tail = 1_000;
        config.snapshot_chunk_bytes = 1 << 20;
        config.inflight_batches_max = 64;
        config
    };
    let mut cluster = Cluster::new(&[1, 2, 3], make);
    cluster.elect(1);
    let total = 1_060_000u64;
    let per_round = 5_000;
    let mut proposed = 0;
    while proposed < total {
        for _ in 0..per_round {
            cluster.raft(1).propose(Bytes::from(proposed.to_le_bytes().to_vec())).unwrap();
            proposed += 1;
        }
        cluster.stabilize();
    }
    let leader = &cluster.node(1).raft;
    assert!(
        leader.first_index() > 1_000_000,
        "the log was compacted past 1,000,000 (first index {})",
        leader.first_index()
    );
    let committed = leader.committed();

    cluster.add_node(make(4));
    cluster.raft(1).propose_conf_change(ConfChange { ops: vec![ConfChangeOp::AddLearner(4)] }).unwrap();
    for _ in 0..200 {
        cluster.tick_all();
        cluster.stabilize();
        if cluster.node(4).raft.applied() >= committed {
            break;
        }
    }
    let node = cluster.node(4);
    assert_eq!(node.restores, 1, "node 4 caught up through exactly one snapshot");
    assert!(node.raft.snapshot().index >= 1_000_000, "snapshot at {}", node.raft.snapshot().index);
    assert_eq!(node.raft.applied(), cluster.node(1).raft.applied(), "and then through the log");
    // Its state machine (every applied command) equals the leader's.
    assert_eq!(node.applied_commands(), cluster.node(1).applied_commands());
    assert_eq!(node.applied_commands().len() as u64, total);

    cluster.raft(1).propose_conf_change(ConfChange { ops: vec![ConfChangeOp::AddVoter(4)] }).unwrap();
    cluster.stabilize();
    assert!(cluster.node(1).raft.conf().voters.contains(&4));
    assert!(!cluster.node(1).raft.conf().is_joint());
}

/// A leader whose stored snapshot turned out damaged (the shell found its
/// bytes no longer match their checksum) stops sending it, asks for a new
/// one at once, and a follower that needed the old one catches up through
/// the new one.
#[test]
fn a_damaged_snapshot_is_replaced_and_the_follower_catches_up_through_the_new_one() {
    let make = |id: NodeId| {
        let mut config = Config::new(id, vec![1, 2, 3]);
        config.snapshot_entries = 20;
        config.compaction_tail = 5;
        config
    };
    let mut cluster = Cluster::new(&[1, 2, 3], make);
    cluster.elect(1);
    cluster.isolate(3);
    for value in 0..100u64 {
        cluster.raft(1).propose(Bytes::from(value.to_le_bytes().to_vec())).unwrap();
        cluster.stabilize();
    }
    let damaged = cluster.node(1).raft.snapshot().index;
    assert!(damaged > 50 && cluster.node(1).raft.first_index() > 2, "the leader compacted past node 3");

    cluster.raft(1).snapshot_damaged();
    let ready = cluster.process_ready(1).expect("a Ready asking for a snapshot");
    assert!(ready.snapshot_due, "a new snapshot is asked for at once");
    let replaced = cluster.node(1).raft.snapshot().index;
    assert!(replaced >= damaged && replaced == cluster.node(1).raft.applied(), "taken at the applied index");

    cluster.heal();
    let committed = cluster.node(1).raft.committed();
    for _ in 0..100 {
        cluster.tick_all();
        cluster.stabilize();
        if cluster.node(3).raft.applied() >= committed {
            break;
        }
    }
    let node = cluster.node(3);
    assert_eq!(node.restores, 1, "node 3 caught up through the new snapshot");
    assert_eq!(node.applied_commands(), cluster.node(1).applied_commands());
}
