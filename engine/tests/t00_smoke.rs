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

#[test]
fn a_skipped_snapshot_is_asked_for_again() {
    // A shell may be unable to take a snapshot when asked (it is storing
    // one, say): the engine asks again an interval later, so the log stays
    // bounded.
    let mut config = engine::Config::new(1, vec![1]);
    config.snapshot_entries = 5;
    let mut raft = engine::Raft::new(config, engine::Recovered::default()).unwrap();
    raft.tick();
    let mut asked = 0;
    for i in 0..40u32 {
        if raft.role() == Role::Leader {
            raft.propose(Bytes::from(i.to_le_bytes().to_vec())).unwrap();
        }
        while raft.has_ready() {
            let ready = raft.ready();
            if let Some((index, term)) = ready.last_entry() {
                raft.persisted(index, term);
            }
            asked += u32::from(ready.snapshot_due);
            raft.advance(ready); // and never report a snapshot
        }
    }
    assert!(raft.applied() >= 40);
    assert!(asked >= 6, "asked {asked} times over 40 applied entries with an interval of 5");
}
