//! The shortest path through the engine: elect, replicate, commit, apply.

use bytes::Bytes;
use engine::testing::Cluster;
use engine::Role;

#[test]
fn three_nodes_elect_and_commit() {
    let mut cluster = Cluster::with_voters(3, 1);
    cluster.elect(1);
    let (index, _) = cluster.raft(1).propose(Bytes::from_static(b"x=1")).unwrap();
    cluster.stabilize();
    for id in 1..=3 {
        let node = cluster.node(id);
        assert!(node.raft.committed() >= index, "node {id} commit {}", node.raft.committed());
        assert_eq!(node.applied_commands(), vec![Bytes::from_static(b"x=1")]);
    }
    assert_eq!(cluster.node(2).raft.role(), Role::Follower);
}

#[test]
fn single_node_bootstraps_on_first_tick() {
    let mut cluster = Cluster::with_voters(1, 7);
    cluster.tick_all();
    cluster.stabilize();
    assert_eq!(cluster.node(1).raft.role(), Role::Leader);
    cluster.raft(1).propose(Bytes::from_static(b"a")).unwrap();
    cluster.stabilize();
    assert_eq!(cluster.node(1).applied_commands(), vec![Bytes::from_static(b"a")]);
}
