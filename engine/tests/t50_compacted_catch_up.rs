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
