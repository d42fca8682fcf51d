//! The rules of the Raft paper's Figure 2 and sections 5.1-5.4, one test
//! each, asserting the exact messages and state the engine produces.

use bytes::Bytes;
use engine::message::{AppendRequest, AppendResponse, MessageBody, VoteRequest};
use engine::testing::batch_of_terms as batch;
use engine::testing::Cluster;
use engine::{Config, MemStorage, Message, NodeId, Raft, Recovered, Role, Term};

fn raft(id: NodeId, voters: &[NodeId]) -> Raft {
    let mut config = Config::new(id, voters.to_vec());
    config.pre_vote = false;
    config.check_quorum = false;
    let mut raft = Raft::new(config, Recovered::default()).unwrap();
    engine::testing::introduce_peers(&mut raft);
    raft
}

fn raft_with_log(id: NodeId, voters: &[NodeId], terms: &[Term], current_term: Term) -> Raft {
    let mut storage = MemStorage::new();
    if !terms.is_empty() {
        storage.append(&batch(1, terms)).unwrap();
    }
    storage.set_hard_state(engine::HardState { term: current_term, vote: 0, commit: 0, ack_term: 0, verified: false });
    let mut config = Config::new(id, voters.to_vec());
    config.pre_vote = false;
    config.check_quorum = false;
    Raft::new(config, storage.recovered()).unwrap()
}

fn vote(from: NodeId, to: NodeId, term: Term, last_index: u64, last_term: Term) -> Message {
    Message {
        from,
        to,
        term,
        body: MessageBody::Vote(VoteRequest {
            last_log_index: last_index,
            last_log_term: last_term,
            transfer: false,
            commit: 0,
        }),
    }
}

fn sent(raft: &mut Raft) -> Vec<Message> {
    let mut ready = raft.ready();
    let mut all = std::mem::take(&mut ready.messages);
    all.append(&mut ready.messages_after_persist);
    raft.advance(ready);
    all
}

fn vote_granted(messages: &[Message], to: NodeId) -> Option<bool> {
    messages.iter().find(|m| m.to == to).and_then(|m| match m.body {
        MessageBody::VoteResponse { granted } => Some(granted),
        _ => None,
    })
}

#[test]
fn term_update_on_larger_term() {
    // Raft paper 5.1: a server that sees a larger term adopts it.
    let mut node = raft(1, &[1, 2, 3]);
    node.step(vote(2, 1, 5, 0, 0)).unwrap();
    assert_eq!(node.term(), 5);
    assert_eq!(node.role(), Role::Follower);
}

#[test]
fn leader_reverts_to_follower_on_larger_term() {
    // Raft paper 5.1: a leader or candidate that sees a larger term reverts
    // to follower.
    let mut cluster = Cluster::new(&[1, 2, 3], |id| {
        let mut config = Config::new(id, vec![1, 2, 3]);
        config.pre_vote = false;
        config.check_quorum = false;
        config
    });
    cluster.elect(1);
    let term = cluster.node(1).raft.term();
    cluster
        .raft(1)
        .step(Message { from: 2, to: 1, term: term + 1, body: MessageBody::Heartbeat { commit: 0, read_context: 0 } })
        .unwrap();
    assert_eq!(cluster.node(1).raft.role(), Role::Follower);
    assert_eq!(cluster.node(1).raft.term(), term + 1);
    assert_eq!(cluster.node(1).raft.leader(), 2);
}

#[test]
fn stale_term_request_is_rejected() {
    // Raft paper 5.1: a request with a stale term is rejected.
    let mut node = raft(1, &[1, 2, 3]);
    node.step(vote(2, 1, 3, 0, 0)).unwrap();
    let _ = sent(&mut node);
    let result = node.step(vote(3, 1, 2, 10, 2));
    assert!(result.is_err(), "stale vote request must be ignored");
    assert!(sent(&mut node).is_empty(), "no vote for a stale candidate");
    assert_eq!(node.term(), 3);
    // A stale append is answered with the current term so the sender steps down.
    let mut config = Config::new(1, vec![1, 2, 3]);
    config.check_quorum = true;
    let mut node = Raft::new(config, Recovered::default()).unwrap();
    node.step(vote(2, 1, 3, 0, 0)).unwrap();
    let _ = sent(&mut node);
    let stale = MessageBody::Append(AppendRequest { prev_index: 0, prev_term: 0, commit: 0, entries: None });
    assert!(node.step(Message { from: 3, to: 1, term: 1, body: stale }).is_err());
    let answers = sent(&mut node);
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0].term, 3);
    assert!(matches!(answers[0].body, MessageBody::AppendResponse(AppendResponse { reject: true, .. })));
}

#[test]
fn one_vote_per_term() {
    // Raft paper 5.2: each server votes for at most one candidate per term,
    // and repeats its vote to the same candidate.
    let mut node = raft(1, &[1, 2, 3]);
    node.step(vote(2, 1, 1, 0, 0)).unwrap();
    assert_eq!(vote_granted(&sent(&mut node), 2), Some(true));
    node.step(vote(3, 1, 1, 0, 0)).unwrap();
    assert_eq!(vote_granted(&sent(&mut node), 3), Some(false));
    node.step(vote(2, 1, 1, 0, 0)).unwrap();
    assert_eq!(vote_granted(&sent(&mut node), 2), Some(true));
    assert_eq!(node.vote(), 2);
}

#[test]
fn vote_grant_waits_for_persistence() {
    // Figure 2: the vote must be on stable storage before the response; the
    // engine puts vote grants among the messages that wait for persistence.
    let mut node = raft(1, &[1, 2, 3]);
    node.step(vote(2, 1, 1, 0, 0)).unwrap();
    let ready = node.ready();
    assert!(ready.messages.is_empty());
    assert_eq!(ready.messages_after_persist.len(), 1);
    assert!(ready.hard_state_must_sync);
    assert_eq!(ready.hard_state.map(|hs| hs.vote), Some(2));
    node.advance(ready);
}

#[test]
fn majority_wins_minority_does_not() {
    // Raft paper 5.2: a candidate wins with votes from a majority.
    let mut node = raft(1, &[1, 2, 3, 4, 5]);
    node.campaign();
    assert_eq!(node.role(), Role::Candidate);
    let term = node.term();
    let grant = |from| Message { from, to: 1, term, body: MessageBody::VoteResponse { granted: true } };
    let reject = |from| Message { from, to: 1, term, body: MessageBody::VoteResponse { granted: false } };
    node.step(grant(2)).unwrap();
    assert_eq!(node.role(), Role::Candidate, "2 of 5 votes is not a majority");
    node.step(reject(3)).unwrap();
    node.step(grant(4)).unwrap();
    assert_eq!(node.role(), Role::Leader, "3 of 5 votes is a majority");

    let mut loser = raft(1, &[1, 2, 3]);
    loser.campaign();
    let term = loser.term();
    for from in [2, 3] {
        loser.step(Message { from, to: 1, term, body: MessageBody::VoteResponse { granted: false } }).unwrap();
    }
    assert_eq!(loser.role(), Role::Follower, "a candidate rejected by a majority gives up");
}

#[test]
fn election_restriction() {
    // Raft paper 5.4.1: a vote is granted only to a candidate whose log is at
    // least as up to date: higher last term, or same term and index >= ours.
    let cases = [
        // (our log terms, candidate last index, candidate last term, granted)
        (vec![1, 2], 1, 3, true),  // higher last term wins despite shorter log
        (vec![1, 2], 5, 1, false), // lower last term loses despite longer log
        (vec![1, 2], 2, 2, true),  // same term, same length
        (vec![1, 2], 1, 2, false), // same term, shorter
        (vec![1, 2], 3, 2, true),  // same term, longer
    ];
    for (terms, last_index, last_term, expected) in cases {
        let mut node = raft_with_log(1, &[1, 2, 3], &terms, 2);
        node.step(vote(2, 1, 4, last_index, last_term)).unwrap();
        assert_eq!(vote_granted(&sent(&mut node), 2), Some(expected), "log {terms:?} vs {last_index}/{last_term}");
    }
}

#[test]
fn log_matching_rejects_missing_prev() {
    // Raft paper 5.3: a follower rejects an append whose prev_index/prev_term
    // it does not hold, and accepts one it does.
    let mut node = raft_with_log(1, &[1, 2, 3], &[1, 1], 1);
    let append = |prev_index, prev_term| Message {
        from: 2,
        to: 1,
        term: 2,
        body: MessageBody::Append(AppendRequest {
            prev_index,
            prev_term,
            commit: 0,
            entries: Some(batch(prev_index + 1, &[2])),
        }),
    };
    node.step(append(3, 1)).unwrap();
    let answer = sent(&mut node);
    assert!(matches!(answer[0].body, MessageBody::AppendResponse(AppendResponse { reject: true, index: 3, .. })));
    node.step(append(2, 2)).unwrap();
    let answer = sent(&mut node);
    assert!(matches!(answer[0].body, MessageBody::AppendResponse(AppendResponse { reject: true, index: 2, .. })));
    node.step(append(2, 1)).unwrap();
    let answer = sent(&mut node);
    assert!(matches!(answer[0].body, MessageBody::AppendResponse(AppendResponse { reject: false, index: 3, .. })));
    assert_eq!(node.term_at(3), Some(2));
}

#[test]
fn conflicting_suffix_is_replaced() {
    // Raft paper 5.3: if an existing entry conflicts with a new one (same
    // index, different term), delete it and all that follow.
    let mut node = raft_with_log(1, &[1, 2, 3], &[1, 1, 1, 1], 1);
    node.step(Message {
        from: 2,
        to: 1,
        term: 2,
        body: MessageBody::Append(AppendRequest {
            prev_index: 1,
            prev_term: 1,
            commit: 0,
            entries: Some(batch(2, &[1, 2])),
        }),
    })
    .unwrap();
    assert_eq!(node.last_index(), 3);
    assert_eq!((node.term_at(2), node.term_at(3)), (Some(1), Some(2)));
    let ready = node.ready();
    // Only the new entry is persisted; entry 2 was already there and matches.
    assert_eq!(ready.entries.len(), 1);
    assert_eq!(ready.entries[0].first_index(), 3);
    node.advance(ready);
}

#[test]
fn leader_is_append_only() {
    // Figure 2 (Leader Append-Only): a leader never overwrites or deletes
    // entries in its log; a rejection only moves its view of the follower.
    let mut cluster = Cluster::with_voters(3, 3);
    cluster.elect(1);
    cluster.raft(1).propose(Bytes::from_static(b"a")).unwrap();
    cluster.stabilize();
    let before: Vec<_> =
        (1..=cluster.node(1).raft.last_index()).map(|i| cluster.node(1).raft.entry(i).cloned()).collect();
    let term = cluster.node(1).raft.term();
    let _ = cluster.raft(1).step(Message {
        from: 2,
        to: 1,
        term,
        body: MessageBody::AppendResponse(AppendResponse { reject: true, ..AppendResponse::accepted(2) }),
    });
    let after: Vec<_> =
        (1..=cluster.node(1).raft.last_index()).map(|i| cluster.node(1).raft.entry(i).cloned()).collect();
    assert_eq!(before, after);
}

#[test]
fn previous_term_entry_not_committed_by_counting() {
    // Raft paper 5.4.2: a leader commits only entries of its current term by
    // counting replicas; older entries commit indirectly.
    let mut node = raft_with_log(1, &[1, 2, 3], &[1, 1], 1);
    node.campaign();
    let term = node.term();
    node.step(Message { from: 2, to: 1, term, body: MessageBody::VoteResponse { granted: true } }).unwrap();
    assert_eq!(node.role(), Role::Leader);
    let ready = node.ready();
    let (last, last_term) = ready.last_entry().unwrap();
    node.advance(ready);
    // Follower 2 acknowledges only the old entries (index 2, term 1).
    node.step(Message { from: 2, to: 1, term, body: accepted(2) }).unwrap();
    node.persisted(last, last_term);
    assert_eq!(node.committed(), 0, "index 2 (term 1) is on a majority but must not commit by counting");
    node.step(Message { from: 2, to: 1, term, body: accepted(last) }).unwrap();
    assert_eq!(node.committed(), last, "the current term's no-op commits, and everything before it");
}

#[test]
fn leader_counts_itself_only_once_durable() {
    // DESIGN.md: the leader writes its disk in parallel with replication and
    // counts its own log in the quorum only once the write is durable.
    let mut node = raft(1, &[1, 2, 3]);
    node.campaign();
    let term = node.term();
    node.step(Message { from: 2, to: 1, term, body: MessageBody::VoteResponse { granted: true } }).unwrap();
    let ready = node.ready();
    assert!(ready.messages.iter().any(|m| matches!(m.body, MessageBody::Append(_))), "appends leave before the write");
    let (last, last_term) = ready.last_entry().unwrap();
    node.advance(ready);
    node.step(Message { from: 2, to: 1, term, body: accepted(last) }).unwrap();
    // Leader + follower 2 is a majority of 3, but the leader's copy is not durable.
    assert_eq!(node.committed(), 0);
    node.persisted(last, last_term);
    assert_eq!(node.committed(), last);
}

#[test]
fn follower_proposal_is_refused_with_leader_hint() {
    let mut cluster = Cluster::with_voters(3, 5);
    cluster.elect(2);
    let error = cluster.raft(1).propose(Bytes::from_static(b"x")).unwrap_err();
    assert_eq!(error, engine::ProposeError::NotLeader { leader: Some(2) });
}

#[test]
fn a_forwarded_proposal_is_committed_and_applied_everywhere() {
    let mut cluster = Cluster::with_voters(3, 5);
    cluster.elect(2);
    cluster.raft(1).forward_proposal(Bytes::from_static(b"from-follower")).unwrap();
    cluster.stabilize();
    let applied_on = |cluster: &Cluster, id: NodeId| {
        cluster.node(id).applied_commands().iter().filter(|command| &command[..] == b"from-follower").count()
    };
    // The follower that forwarded it is told the commit at once (its caller
    // waits for it to apply there); node 3 learns it with the next
    // heartbeat.
    assert_eq!(applied_on(&cluster, 1), 1);
    assert_eq!(applied_on(&cluster, 2), 1);
    cluster.tell_commit();
    for id in 1..=3 {
        assert_eq!(applied_on(&cluster, id), 1, "node {id}");
    }
    // On the leader, forwarding is proposing.
    cluster.raft(2).forward_proposal(Bytes::from_static(b"on-leader")).unwrap();
    cluster.stabilize();
    cluster.tell_commit();
    assert!(cluster.node(3).applied_commands().iter().any(|command| &command[..] == b"on-leader"));
}

#[test]
fn a_forwarded_proposal_needs_a_known_leader_and_a_leader_to_take_it() {
    let mut cluster = Cluster::with_voters(3, 5);
    let error = cluster.raft(1).forward_proposal(Bytes::from_static(b"x")).unwrap_err();
    assert_eq!(error, engine::ProposeError::NotLeader { leader: None });

    // A proposal that reaches a node that is no longer (or not) the leader is
    // dropped, not re-forwarded: the client's retry covers it.
    cluster.elect(2);
    let to_follower = Message {
        from: 1,
        to: 3,
        term: cluster.raft(3).term(),
        body: MessageBody::Propose { command: Bytes::from_static(b"x") },
    };
    let last = cluster.raft(3).last_index();
    assert!(cluster.raft(3).step(to_follower).is_err());
    assert_eq!(cluster.raft(3).last_index(), last);
}

/// A follower's plain acknowledgement of entries up to `index`.
fn accepted(index: u64) -> MessageBody {
    MessageBody::AppendResponse(AppendResponse::accepted(index))
}

/// Raft paper 5.3: followers learn the commit index from the leader's
/// AppendEntries. A follower that forwarded a client's write answers it
/// only once it applies it, so when its acknowledgement arrives after the
/// commit advanced (it was not needed for the quorum) it is told at the
/// next Ready, not at the next heartbeat. (Before, nothing made a Ready and
/// the follower waited up to a heartbeat interval, 50 ms by default.)
#[test]
fn a_late_acknowledgement_is_answered_with_the_commit_index() {
    let mut cluster = Cluster::with_voters(3, 7);
    cluster.elect(1);
    let index = forwarded_by_3_then_late(&mut cluster);
    // 3's acknowledgement arrived after the commit: the leader owes it the
    // commit index, with no tick and no new proposal.
    assert!(cluster.raft(1).has_ready(), "the leader has the commit index to send");
    cluster.process_ready(1);
    let to_3: Vec<&Message> = cluster.network.iter().filter(|message| message.to == 3).collect();
    assert!(
        to_3.iter().any(
            |message| matches!(&message.body, MessageBody::Append(AppendRequest { commit, .. }) if *commit == index)
        ),
        "{to_3:?}"
    );
}

/// A commit advance no follower waits for is not sent on its own: an empty
/// append would cost each follower a message to read, an apply and an
/// acknowledgement to send per write. It travels with the next append, or the
/// leader's next tick tells it.
#[test]
fn a_commit_no_follower_waits_for_travels_with_the_next_append_or_tick() {
    // Heartbeats every third tick, so that a tick without one shows.
    let mut cluster = Cluster::new(&[1, 2, 3], |id| {
        let mut config = Config::new(id, vec![1, 2, 3]);
        config.heartbeat_ticks = 3;
        config.seed = 7 * 31 + id;
        config
    });
    cluster.elect(1);
    let index = cluster.raft(1).propose(Bytes::from_static(b"x")).unwrap().0;
    cluster.stabilize();
    assert_eq!(cluster.raft(1).committed(), index);
    for id in [2, 3] {
        assert_eq!(cluster.raft(id).last_index(), index, "node {id} holds the entry");
        assert!(cluster.raft(id).committed() < index, "node {id} was not sent the commit on its own");
    }
    // The next append carries it.
    let next = cluster.raft(1).propose(Bytes::from_static(b"y")).unwrap().0;
    cluster.stabilize();
    for id in [2, 3] {
        assert_eq!(cluster.raft(id).committed(), index, "node {id} learnt it with the next append");
    }
    // With nothing more to write, the leader's next tick tells it, though no
    // heartbeat is due at that tick.
    cluster.raft(1).tick();
    let sent: Vec<Message> = cluster.raft(1).ready().messages;
    assert!(!sent.iter().any(|message| matches!(message.body, MessageBody::Heartbeat { .. })), "{sent:?}");
    for id in [2, 3] {
        assert!(
            sent.iter().any(|message| message.to == id
                && matches!(&message.body, MessageBody::Append(AppendRequest { commit, entries: None, .. }) if *commit == next)),
            "node {id} is told the commit: {sent:?}"
        );
    }
}

/// Node 3 forwards a command to leader 1; both followers store it, the
/// leader commits on node 2's acknowledgement, and node 3's arrives after.
/// Returns the command's index.
fn forwarded_by_3_then_late(cluster: &mut Cluster) -> u64 {
    cluster.raft(3).forward_proposal(Bytes::from_static(b"x")).unwrap();
    cluster.process_ready(3);
    cluster.deliver_all();
    let index = cluster.raft(1).last_index();
    cluster.process_ready(1);
    // Both followers store the entry; only 2's acknowledgement arrives.
    for message in std::mem::take(&mut cluster.network) {
        cluster.deliver(message);
    }
    cluster.process_ready(2);
    cluster.process_ready(3);
    let (late, early): (Vec<Message>, Vec<Message>) =
        std::mem::take(&mut cluster.network).into_iter().partition(|message| message.from == 3);
    for message in early {
        cluster.deliver(message);
    }
    cluster.process_ready(1);
    assert_eq!(cluster.raft(1).committed(), index);
    cluster.network.clear();
    for message in late {
        cluster.deliver(message);
    }
    index
}
