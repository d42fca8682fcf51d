//! Regressions and known problems found by the simulator and the chaos tests,
//! each reduced to the smallest scenario that shows it.

use bytes::Bytes;
use engine::batch::EntryBatch;
use engine::storage::MemStorage;
use engine::testing::Cluster;

/// Found by `t50_chaos` (a follower restarted with the last batch of its WAL
/// torn): a follower that comes back with fewer entries than it had
/// acknowledged is never caught up by the leader that holds its old
/// `match_index`. The leader probes at `match + 1`; the follower rejects
/// (it lacks `match`); the leader discards the rejection as stale because it
/// is at or below `match` (engine/src/raft.rs, `handle_append_response`,
/// `Progress::maybe_decrease_to`), so the follower stays behind until the
/// leadership changes.
///
/// Losing an acknowledged, fsynced write is outside Raft's fault model (a
/// disk that lies), so this is a robustness problem rather than a safety
/// bug: safety holds, but one replica silently stops replicating. Ignored
/// until the engine handles it; run with `--ignored` to see it fail.
#[test]
#[ignore = "known engine limitation: a follower that lost acknowledged entries is not caught up (see doc comment)"]
fn follower_that_lost_acknowledged_entries_catches_up() {
    let mut cluster = Cluster::with_voters(3, 7);
    cluster.elect(1);
    for value in 0..5u8 {
        cluster.raft(1).propose(Bytes::from(vec![value])).expect("leader accepts");
        cluster.stabilize();
    }
    let last = cluster.node(1).raft.last_index();
    assert_eq!(cluster.node(3).raft.last_index(), last, "follower 3 holds everything before the crash");
    // Node 3 crashes and its last acknowledged entry is lost (a torn tail).
    cluster.crash(3);
    let durable = &cluster.node(3).storage;
    let entries = durable.entries(durable.first_index(), durable.last_index()).expect("entries on disk");
    let mut torn = MemStorage::new();
    torn.set_hard_state(durable.hard_state());
    torn.append(&EntryBatch::encode(&entries)).expect("a contiguous prefix");
    cluster.nodes.get_mut(&3).expect("node 3").storage = torn;
    cluster.restart(3);
    assert_eq!(cluster.node(3).raft.last_index(), last - 1);
    // The same leader goes on; node 3 must catch up.
    for round in 0..50u8 {
        let _ = cluster.raft(1).propose(Bytes::from(vec![100 + round]));
        cluster.tick_all();
        run_rounds(&mut cluster, 20);
    }
    let leader_last = cluster.node(1).raft.last_index();
    assert_eq!(
        cluster.node(3).raft.last_index(),
        leader_last,
        "follower 3 never caught up: the leader's status: {:?}",
        cluster.node(1).raft.status().progress
    );
}

/// Ready processing and delivery for a bounded number of rounds (the
/// harness's `stabilize` panics on a cluster that keeps exchanging messages,
/// which is what the broken case does).
fn run_rounds(cluster: &mut Cluster, rounds: usize) {
    for _ in 0..rounds {
        let ids: Vec<u64> = cluster.nodes.keys().copied().collect();
        for id in ids {
            cluster.process_ready(id);
        }
        cluster.deliver_all();
    }
}
