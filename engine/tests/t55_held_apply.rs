//! Holding back applies (`Raft::hold_apply`), as a shell does while it
//! restores its state machine from an installed snapshot off its driver:
//! the engine goes on replicating and committing but hands out nothing to
//! apply; released, it hands out every committed entry after the snapshot
//! once, in order. A Ready that installs a snapshot carries no entries to
//! apply, so that the shell can hold them before any is handed out (checked
//! on the way; this scenario does not commit past the snapshot before the
//! install, so it does not show that rule is needed: a new leader's append
//! arriving between the last chunk's Ready and the install's would).

use bytes::Bytes;
use engine::testing::Cluster;
use engine::{Config, NodeId};

fn config(id: NodeId) -> Config {
    let mut config = Config::new(id, vec![1, 2, 3]);
    config.snapshot_entries = 10;
    config.snapshot_entries_jitter = 0;
    config.compaction_tail = 2;
    config
}

fn propose(cluster: &mut Cluster, range: std::ops::Range<u64>) {
    for value in range {
        cluster.raft(1).propose(Bytes::from(value.to_le_bytes().to_vec())).expect("the leader takes it");
    }
}

#[test]
fn held_applies_are_handed_out_in_order_once_released() {
    let mut cluster = Cluster::new(&[1, 2, 3], config);
    cluster.elect(1);
    propose(&mut cluster, 0..5);
    cluster.stabilize();
    let applied = cluster.node(2).raft.applied();
    let applied_count = cluster.node(2).applied.len();
    cluster.raft(2).hold_apply(true);
    propose(&mut cluster, 5..40);
    cluster.stabilize();
    for _ in 0..30 {
        cluster.tick_all();
        cluster.stabilize();
    }
    let node = cluster.node(2);
    assert_eq!(node.raft.committed(), cluster.node(1).raft.committed(), "a held follower still commits");
    assert_eq!(node.raft.applied(), applied, "and keeps its applied index");
    assert_eq!(node.applied.len(), applied_count, "and is handed nothing to apply");
    assert!(node.raft.snapshot().index <= applied, "nor asked for a snapshot");
    assert_eq!(cluster.leader(), Some(1), "heartbeats were answered: no election");

    cluster.raft(2).hold_apply(false);
    cluster.stabilize();
    assert_eq!(cluster.node(2).applied_commands(), cluster.node(1).applied_commands());
    let indexes: Vec<u64> = cluster.node(2).applied.iter().map(|entry| entry.index).collect();
    assert!(indexes.windows(2).all(|pair| pair[1] == pair[0] + 1), "applied in order, once: {indexes:?}");
}

#[test]
fn a_follower_that_holds_applies_from_its_install_catches_up_through_a_snapshot() {
    let mut cluster = Cluster::new(&[1, 2, 3], config);
    cluster.elect(1);
    cluster.isolate(3);
    propose(&mut cluster, 0..60);
    cluster.stabilize();
    assert!(cluster.node(1).raft.first_index() > 2, "the leader compacted its log");
    cluster.heal();
    let mut installs = 0;
    for _ in 0..200 {
        cluster.tick_all();
        for _ in 0..100 {
            let mut moved = false;
            for id in [1, 2, 3] {
                if let Some(ready) = cluster.process_ready(id) {
                    moved = true;
                    if ready.snapshot_install.is_some() {
                        installs += 1;
                        assert!(ready.committed_entries.is_empty(), "an install came with entries to apply");
                        // The shell restores in the background from here.
                        cluster.raft(id).hold_apply(true);
                        propose(&mut cluster, 60..62);
                    } else if cluster.node(id).raft.apply_held() {
                        assert!(ready.committed_entries.is_empty(), "entries handed out while held");
                        cluster.raft(id).hold_apply(false);
                    }
                }
            }
            if cluster.deliver_all() == 0 && !moved {
                break;
            }
        }
        if installs > 0 && cluster.node(3).raft.applied() == cluster.node(1).raft.applied() {
            break;
        }
    }
    assert_eq!(installs, 1, "node 3 caught up through a snapshot");
    assert_eq!(cluster.node(3).restores, 1);
    assert_eq!(cluster.node(3).applied_commands(), cluster.node(1).applied_commands());
}
