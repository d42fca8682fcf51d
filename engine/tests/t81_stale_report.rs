//! A wiped voter's vote is never vouched for by other voters' reports of
//! their logs: a report older than the reporter's acknowledgement of an
//! entry that was then committed let a wiped voter help elect a leader
//! without that entry (found 2026-12-06; kept on a branch as a failing
//! counterexample until the rule changed, see
//! `Raft::unknown_past_vote_allowed`).
//!
//! Five voters. Leader 1 appends e, which only node 2 acknowledges. Node 2
//! is wiped and restarts (an unknown past; node 1 never reaches it again).
//! Node 3, cut off from node 1, pre-campaigns: its pre-vote request, whose
//! log lacks e, reaches node 2. Node 3 then hears node 1 again (a
//! pre-candidate's term did not move), takes e and acknowledges it: with 1,
//! 2 (before its wipe) and 3, e is committed. Node 1 crashes; nodes 4 and 5
//! (without e, cut off from node 3) campaign. The old rule counted node 3's
//! request as a report of its log: node 2 then had reports from 3, 4 and 5
//! (n - majority + 1 = 3 others), all at or below 5's log, and voted, and 5
//! won {2, 4, 5} without committed e. Now node 2 withholds its vote until a
//! leader has caught it up, and once node 3 reaches 4 and 5 again, a leader
//! with e is elected.

use bytes::Bytes;
use engine::testing::Cluster;
use engine::Role;

#[test]
fn a_report_older_than_an_acknowledgement_never_lets_a_wiped_voter_elect_a_leader_without_a_committed_entry() {
    let mut cluster = Cluster::with_voters(5, 3);
    cluster.elect(1);
    cluster.commit_values(1, 2);
    cluster.partition(&[1], &[3, 4, 5]);
    cluster.raft(1).propose(Bytes::from_static(b"e")).expect("leader");
    cluster.stabilize();
    let e_index = cluster.node(1).raft.last_index();
    let e_term = cluster.node(1).raft.term_at(e_index).unwrap();
    assert_eq!(cluster.node(2).raft.last_index(), e_index, "node 2 acknowledged e");
    assert!(cluster.node(1).raft.committed() < e_index, "not committed yet");

    cluster.cut.insert((1, 2));
    cluster.cut.insert((2, 1));
    cluster.wipe_and_restart(2, vec![1, 2, 3, 4, 5]);
    while cluster.node(3).raft.role() != Role::PreCandidate {
        cluster.raft(3).tick();
    }
    cluster.process_ready(3);
    let requests = std::mem::take(&mut cluster.network);
    for request in requests.into_iter().filter(|message| message.to == 2) {
        cluster.deliver(request);
    }
    cluster.process_ready(2);
    cluster.network.clear();

    cluster.cut.remove(&(1, 3));
    cluster.cut.remove(&(3, 1));
    for _ in 0..20 {
        cluster.raft(1).tick();
        cluster.stabilize();
    }
    assert!(cluster.node(1).raft.committed() >= e_index, "e is committed");
    assert_eq!(cluster.node(3).raft.term_at(e_index), Some(e_term), "node 3 holds e");

    cluster.crash(1);
    cluster.heal();
    cluster.partition(&[3], &[4, 5]);
    for _ in 0..400 {
        cluster.tick_all();
        cluster.stabilize();
        if cluster.leader().is_some() {
            break;
        }
    }
    let check = |cluster: &Cluster| {
        if let Some(leader) = cluster.leader() {
            assert_eq!(
                cluster.node(leader).raft.term_at(e_index),
                Some(e_term),
                "node {leader} leads term {} without committed e (its entry {e_index} has term {:?})",
                cluster.node(leader).raft.term(),
                cluster.node(leader).raft.term_at(e_index)
            );
        }
    };
    check(&cluster);
    assert!(cluster.node(2).raft.past_unknown(), "the wiped voter still cannot know its past");

    cluster.heal();
    for _ in 0..400 {
        cluster.tick_all();
        cluster.stabilize();
        check(&cluster);
        if cluster.leader().is_some_and(|leader| cluster.node(leader).raft.committed() > e_index) {
            break;
        }
    }
    let leader = cluster.leader().expect("nodes 3, 4 and 5 elect a leader once they reach each other");
    assert!(cluster.node(leader).raft.committed() > e_index, "the new leader commits an entry of its term");
    for _ in 0..50 {
        cluster.tick_all();
        cluster.stabilize();
    }
    assert!(!cluster.node(2).raft.past_unknown(), "the leader caught the wiped voter up");
    assert_eq!(cluster.node(2).raft.term_at(e_index), Some(e_term), "the wiped voter holds e again");
}
