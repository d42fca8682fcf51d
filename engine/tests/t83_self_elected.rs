//! A sole voter elects itself in memory, in the step that starts its
//! campaign, before its new term and vote are durable. A crash may then take
//! the term back, and after its restart the node may vote for another
//! candidate of that same term (engine randomized seed 954552: a node
//! removed from the configuration, still a voter of the committed one,
//! won that term with its vote). Whatever the first leader sent of its term
//! would contradict the second: an entry at the same index and term with
//! other contents, on a learner that believes both. So a leader elected by
//! its own vote sends nothing ahead of its write until an entry of its term
//! is durable (`Raft::term_unsynced`); the test harness checks that for
//! every Ready (`Cluster::process_ready`).

use bytes::Bytes;
use engine::testing::Cluster;
use engine::{Config, MessageBody, Role};

/// Node 1 the only voter, node 2 its learner; writes become durable only
/// when a test persists them.
fn voter_and_learner() -> Cluster {
    let mut cluster = Cluster::new(&[1, 2], |id| {
        let mut config = Config::new(id, vec![1]);
        config.learners = vec![2];
        config.seed = 11 + id;
        config
    });
    cluster.sync_writes = false;
    cluster
}

/// Node 1 campaigns and wins alone; its Ready is handed to the harness but
/// nothing is made durable. Returns the new term.
fn self_elected(cluster: &mut Cluster) -> u64 {
    cluster.raft(1).campaign();
    assert_eq!(cluster.node(1).raft.role(), Role::Leader, "a sole voter wins at once");
    let term = cluster.node(1).raft.term();
    assert!(cluster.node(1).storage.hard_state().term < term, "the new term is not durable yet");
    cluster.process_ready(1);
    term
}

#[test]
fn a_self_elected_leader_sends_nothing_of_its_term_before_the_term_is_durable() {
    let mut cluster = voter_and_learner();
    let term = self_elected(&mut cluster);
    let early: Vec<_> = cluster.network.iter().filter(|message| message.from == 1).collect();
    assert!(early.is_empty(), "sent before term {term} was durable: {early:?}");

    // A crash before the write lands takes the term back, and the learner
    // never heard of it.
    cluster.crash(1);
    cluster.restart(1);
    assert!(cluster.node(1).raft.term() < term, "the restarted node is back in an earlier term");
    cluster.deliver_all();
    assert!(cluster.node(2).raft.term() < term, "the learner heard of a term its leader lost");
}

#[test]
fn its_messages_leave_once_the_term_is_durable_and_at_once_after() {
    let mut cluster = voter_and_learner();
    let term = self_elected(&mut cluster);
    cluster.persist(1, usize::MAX);
    let held = cluster.network.iter().any(|message| {
        message.from == 1 && message.to == 2 && message.term == term && matches!(message.body, MessageBody::Append(_))
    });
    assert!(held, "the learner's append leaves with the write: {:?}", cluster.network);

    // The term is durable now: once the learner has caught up, a new
    // entry's append leaves ahead of its write again, as any leader's does.
    cluster.sync_writes = true;
    cluster.stabilize();
    cluster.sync_writes = false;
    cluster.raft(1).propose(Bytes::from_static(b"x")).expect("the leader takes a proposal");
    cluster.process_ready(1);
    let at_once =
        cluster.network.iter().any(|message| message.from == 1 && matches!(message.body, MessageBody::Append(_)));
    assert!(at_once, "a leader with a durable term replicates in parallel with its write: {:?}", cluster.network);

    // And the learner ends with the leader's log.
    cluster.sync_writes = true;
    cluster.persist(1, usize::MAX);
    cluster.stabilize();
    let leader_last = cluster.node(1).raft.last_index();
    assert_eq!(cluster.node(2).raft.last_index(), leader_last);
    assert_eq!(cluster.node(2).raft.term_at(leader_last), Some(term));
}
