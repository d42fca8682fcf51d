//! Witness replicas (issue 17 item 4): two full replicas plus one witness
//! survive any one failure and lose no acknowledged write. A witness votes
//! and counts toward the commit quorum but holds only entry metadata, never
//! leads, and applies nothing.
//!
//! Nodes 1 and 2 are full voters and node 3 the witness throughout, unless a
//! test says otherwise.

use bytes::Bytes;
use engine::testing::Cluster;
use engine::{ConfChange, ConfChangeOp, ConfState, Config, EntryKind, MessageBody, NodeId, ProposeError, Role};

const WITNESS: NodeId = 3;

fn witness_config(id: NodeId, seed: u64) -> Config {
    let mut config = Config::new(id, vec![1, 2, 3]);
    config.witnesses = vec![WITNESS];
    config.seed = seed.wrapping_mul(31).wrapping_add(id);
    config
}

fn witness_cluster(seed: u64) -> Cluster {
    Cluster::new(&[1, 2, 3], |id| witness_config(id, seed))
}

/// Panics if a message to the witness carries a payload other than a
/// configuration entry's, or snapshot bytes.
fn check_no_payload_to_witness(cluster: &Cluster) {
    for message in cluster.network.iter().filter(|message| message.to == WITNESS) {
        match &message.body {
            MessageBody::Append(request) => {
                if let Some(batch) = &request.entries {
                    for entry in batch.entries() {
                        assert!(
                            entry.kind == EntryKind::Config || entry.data.is_empty(),
                            "leader {} sent the witness entry {} with {} payload bytes",
                            message.from,
                            entry.index,
                            entry.data.len()
                        );
                    }
                }
            }
            MessageBody::InstallSnapshot(chunk) => {
                assert!(chunk.data.is_empty(), "the witness was sent {} snapshot bytes", chunk.data.len());
            }
            _ => {}
        }
    }
}

/// [`Cluster::stabilize`], checking every message to the witness on the way.
fn stabilize_checked(cluster: &mut Cluster) {
    for _ in 0..10_000 {
        let ids: Vec<NodeId> = cluster.nodes.keys().copied().collect();
        let mut moved = false;
        for id in ids {
            moved |= cluster.process_ready(id).is_some();
            if !cluster.nodes[&id].pending_writes.is_empty() && !cluster.down.contains(&id) {
                cluster.persist(id, usize::MAX);
                moved = true;
            }
        }
        check_no_payload_to_witness(cluster);
        moved |= cluster.deliver_all() > 0;
        if !moved {
            return;
        }
    }
    panic!("cluster did not stabilize");
}

/// Ticks every live node `count` times, stabilizing after each tick.
fn tick_checked(cluster: &mut Cluster, count: usize) {
    for _ in 0..count {
        cluster.tick_all();
        stabilize_checked(cluster);
    }
}

fn propose(cluster: &mut Cluster, leader: NodeId, command: &str) -> u64 {
    let (index, _) = cluster.raft(leader).propose(Bytes::from(command.to_string())).expect("leader accepts");
    index
}

/// The witness's durable log holds no normal payload byte, and its state
/// machine applied nothing but configuration entries.
fn check_witness_storage(cluster: &Cluster) {
    let node = cluster.node(WITNESS);
    let storage = &node.storage;
    // Everything after its snapshot (possibly nothing, right after one).
    let entries = storage.entries(storage.first_index(), storage.last_index()).expect("stored entries");
    for entry in entries {
        assert!(entry.kind == EntryKind::Config || entry.data.is_empty(), "witness stored payload at {}", entry.index);
    }
    assert!(storage.snapshot_data().is_empty(), "a witness's snapshot has an empty image");
    assert!(node.applied.iter().all(|entry| entry.kind == EntryKind::Config), "a witness applies no commands");
}

#[test]
fn a_witness_never_becomes_leader() {
    let mut cluster = witness_cluster(1);
    assert!(cluster.node(WITNESS).raft.is_witness());
    cluster.raft(WITNESS).campaign();
    stabilize_checked(&mut cluster);
    assert_eq!(cluster.node(WITNESS).raft.role(), Role::Follower, "campaign is refused");
    assert_eq!(cluster.node(WITNESS).raft.term(), 0, "not even a pre-vote left it");
    // Alone for many election timeouts: it never starts an election.
    cluster.crash(1);
    cluster.crash(2);
    for _ in 0..200 {
        cluster.tick_all();
        stabilize_checked(&mut cluster);
        assert_eq!(cluster.node(WITNESS).raft.role(), Role::Follower);
    }
    assert_eq!(cluster.node(WITNESS).raft.term(), 0);
    cluster.restart(1);
    cluster.restart(2);
    cluster.elect(1);
    // A transfer to it is refused, and a TimeoutNow reaching it is ignored.
    let refused = cluster.raft(1).transfer_leader(WITNESS);
    assert!(matches!(refused, Err(ProposeError::InvalidChange(ref reason)) if reason.contains("witness")));
    let term = cluster.node(1).raft.term();
    let forged = engine::Message { from: 1, to: WITNESS, term, body: MessageBody::TimeoutNow };
    assert!(cluster.raft(WITNESS).step(forged).is_err());
    stabilize_checked(&mut cluster);
    assert_eq!(cluster.leader(), Some(1));
    assert_eq!(cluster.node(WITNESS).raft.role(), Role::Follower);
    // Reads and forwarded writes go to the leader: a witness has no state
    // machine to serve or apply them.
    assert_eq!(
        cluster.raft(WITNESS).read_index(7, engine::ReadMode::ReadIndex),
        Err(ProposeError::NotLeader { leader: Some(1) })
    );
    assert!(cluster.raft(WITNESS).forward_proposal(Bytes::from_static(b"x")).is_err());
}

#[test]
fn leader_and_witness_commit_while_the_full_follower_is_down() {
    let mut cluster = witness_cluster(2);
    cluster.elect(1);
    for i in 0..10 {
        propose(&mut cluster, 1, &format!("before {i}"));
    }
    stabilize_checked(&mut cluster);
    // The leader's next tick tells the followers the commit index.
    tick_checked(&mut cluster, 1);
    let before = cluster.node(1).raft.committed();
    assert_eq!(cluster.node(2).raft.committed(), before);

    cluster.crash(2);
    // Within an election timeout the leader still counts node 2 as active
    // and holds the witness back; after it, node 2 is inactive.
    tick_checked(&mut cluster, 25);
    let index = propose(&mut cluster, 1, "while 2 is down");
    stabilize_checked(&mut cluster);
    assert_eq!(cluster.node(1).raft.role(), Role::Leader, "check-quorum keeps leader + witness");
    assert!(cluster.node(1).raft.committed() >= index, "leader + witness commit without node 2");
    assert_eq!(cluster.node(WITNESS).raft.last_index(), cluster.node(1).raft.last_index());
    check_witness_storage(&cluster);
    assert!(cluster.node(1).applied_commands().contains(&Bytes::from_static(b"while 2 is down")));

    // Node 2 returns and catches up with the payloads from the leader.
    cluster.restart(2);
    tick_checked(&mut cluster, 5);
    assert_eq!(cluster.node(2).raft.committed(), cluster.node(1).raft.committed());
    assert_eq!(cluster.node(2).applied_commands(), cluster.node(1).applied_commands());
}

/// With the full follower active, an entry becomes committed only once it
/// is durable on the full follower: the witness is neither sent past the
/// follower's durable match nor counted past it.
#[test]
fn with_the_full_follower_active_a_witness_ack_never_commits_past_it() {
    let mut cluster = witness_cluster(3);
    cluster.elect(1);
    stabilize_checked(&mut cluster);
    // Node 2's disk is slow: its writes, and the acknowledgements waiting
    // for them, are held back; it still answers heartbeats (it is active).
    cluster.sync_writes = false;
    let mut proposed = Vec::new();
    for round in 0..30 {
        proposed.push(propose(&mut cluster, 1, &format!("slow {round}")));
        for _ in 0..5 {
            for id in [1, 2, 3] {
                cluster.process_ready(id);
            }
            cluster.persist(1, usize::MAX);
            cluster.persist(WITNESS, usize::MAX);
            check_no_payload_to_witness(&cluster);
            cluster.deliver_all();
            let follower_durable = cluster.node(2).storage.last_index();
            let leader = &cluster.node(1).raft;
            assert!(
                leader.committed() <= follower_durable,
                "round {round}: commit {} passed what node 2 holds durably ({follower_durable})",
                leader.committed()
            );
            assert!(
                cluster.node(WITNESS).raft.last_index() <= follower_durable.max(1),
                "the witness was sent past the full follower's durable match"
            );
        }
        cluster.tick_all();
        // Every few rounds node 2's disk catches up.
        if round % 10 == 9 {
            cluster.persist(2, usize::MAX);
        }
    }
    assert_eq!(cluster.node(1).raft.role(), Role::Leader);
    cluster.persist(2, usize::MAX);
    cluster.sync_writes = true;
    stabilize_checked(&mut cluster);
    assert!(cluster.node(1).raft.committed() >= *proposed.last().expect("proposed"));
    check_witness_storage(&cluster);
}

#[test]
fn after_the_leader_fails_follower_and_witness_elect_the_follower_and_lose_nothing() {
    let mut cluster = witness_cluster(4);
    cluster.elect(1);
    for i in 0..20 {
        propose(&mut cluster, 1, &format!("w{i}"));
        stabilize_checked(&mut cluster);
    }
    let committed = cluster.node(1).raft.committed();
    let commands = cluster.node(1).applied_commands();
    assert_eq!(commands.len(), 20);
    cluster.crash(1);
    for _ in 0..100 {
        cluster.tick_all();
        stabilize_checked(&mut cluster);
        if cluster.leader() == Some(2) {
            break;
        }
    }
    assert_eq!(cluster.leader(), Some(2), "node 2 wins with the witness's vote");
    let leader = &cluster.node(2).raft;
    for index in 1..=committed {
        let entry = leader.entry(index).expect("the new leader holds every committed entry");
        assert_eq!(entry.term, cluster.node(1).raft.term_at(index).expect("in the old leader's log"));
    }
    // Node 2 applied every committed command, payloads included.
    assert_eq!(cluster.node(2).applied_commands()[..20], commands[..]);
    // And it goes on committing with the witness while node 1 is down.
    tick_checked(&mut cluster, 25);
    let index = propose(&mut cluster, 2, "after failover");
    stabilize_checked(&mut cluster);
    assert!(cluster.node(2).raft.committed() >= index);
    check_witness_storage(&cluster);
}

/// The documented price of committing with a witness alone: the follower is
/// down, the leader commits with the witness, then the leader fails too.
/// When the follower returns, it lacks entries the witness's log has, so it
/// cannot win the witness's vote: the group waits instead of electing a
/// leader that lost them, and the old leader's return resolves it.
#[test]
fn when_both_full_replicas_failed_in_turn_the_group_waits_and_loses_nothing() {
    let mut cluster = witness_cluster(5);
    cluster.elect(1);
    propose(&mut cluster, 1, "on both");
    stabilize_checked(&mut cluster);
    cluster.crash(2);
    tick_checked(&mut cluster, 25);
    let index = propose(&mut cluster, 1, "only on the leader");
    stabilize_checked(&mut cluster);
    assert!(cluster.node(1).raft.committed() >= index, "acknowledged with the witness");
    cluster.crash(1);
    cluster.restart(2);
    for _ in 0..100 {
        cluster.tick_all();
        stabilize_checked(&mut cluster);
        assert_eq!(cluster.leader(), None, "no leader without the acknowledged entry");
    }
    cluster.restart(1);
    for _ in 0..100 {
        cluster.tick_all();
        stabilize_checked(&mut cluster);
        if cluster.leader().is_some() && cluster.node(2).raft.committed() >= index {
            break;
        }
    }
    assert!(cluster.leader().is_some());
    for id in [1, 2] {
        let applied = cluster.node(id).applied_commands();
        assert!(applied.contains(&Bytes::from_static(b"only on the leader")), "node {id} has the write");
    }
}

#[test]
fn a_witness_behind_compaction_gets_a_metadata_only_snapshot() {
    let make = |id: NodeId| {
        let mut config = witness_config(id, 6);
        config.snapshot_entries = 20;
        config.compaction_tail = 2;
        config
    };
    let mut cluster = Cluster::new(&[1, 2, 3], make);
    cluster.elect(1);
    stabilize_checked(&mut cluster);
    cluster.crash(WITNESS);
    for i in 0..100 {
        propose(&mut cluster, 1, &format!("{i:0>32}"));
        stabilize_checked(&mut cluster);
    }
    let leader_first = cluster.node(1).raft.first_index();
    assert!(leader_first > cluster.node(WITNESS).storage.last_index() + 1, "the leader compacted past the witness");
    cluster.restart(WITNESS);
    tick_checked(&mut cluster, 10);
    let witness = cluster.node(WITNESS);
    assert_eq!(witness.restores, 1, "installed exactly one (empty) snapshot");
    assert!(witness.raft.snapshot().index >= leader_first - 1);
    assert!(witness.raft.snapshot().conf.is_witness(WITNESS), "the snapshot's membership names the witness");
    assert_eq!(witness.raft.last_index(), cluster.node(1).raft.last_index(), "and then the log");
    assert_eq!(witness.raft.committed(), cluster.node(1).raft.committed());
    check_witness_storage(&cluster);
    // It keeps its own log bounded with metadata-only snapshots too.
    for i in 0..60 {
        propose(&mut cluster, 1, &format!("more {i}"));
        stabilize_checked(&mut cluster);
    }
    assert!(cluster.node(WITNESS).storage.snapshot_meta().index > cluster.node(WITNESS).raft.snapshot().index - 1);
    assert!(cluster.node(WITNESS).raft.first_index() > leader_first, "the witness compacted its own log");
    check_witness_storage(&cluster);
}

/// Full voters 1 and 2, leading with 1 and having committed `first`, and
/// node 3 started as a witness (as `--witness` would) and not yet a member.
fn full_pair_with_a_witness_to_add(first: &str) -> Cluster {
    let make = |id: NodeId| {
        let mut config = Config::new(id, if id <= 2 { vec![1, 2] } else { Vec::new() });
        config.witness = id == WITNESS;
        config
    };
    let mut cluster = Cluster::new(&[1, 2], make);
    cluster.elect(1);
    propose(&mut cluster, 1, first);
    stabilize_checked(&mut cluster);
    cluster.add_node(make(WITNESS));
    cluster
}

/// A running pair of full voters adds a witness by a membership change: it
/// joins empty, started as a witness (as `--witness` would), and from the
/// change on receives metadata only. The entries before the change reach it
/// whole (see `Raft::witness_since`), and it drops their payloads itself.
#[test]
fn a_witness_joins_a_running_cluster_by_a_change_and_leaves_by_one() {
    let mut cluster = full_pair_with_a_witness_to_add("before the witness");
    cluster.raft(1).propose_conf_change(ConfChange { ops: vec![ConfChangeOp::AddWitness(WITNESS)] }).unwrap();
    cluster.stabilize();
    check_witness_storage(&cluster);
    let conf = cluster.node(1).raft.conf().clone();
    assert_eq!(conf, ConfState::with_witnesses([1, 2], [WITNESS], []));
    assert!(cluster.node(WITNESS).raft.is_witness());
    propose(&mut cluster, 1, "with the witness");
    stabilize_checked(&mut cluster);
    check_witness_storage(&cluster);
    // The witness cannot be made a full voter in place.
    let refused = cluster.raft(1).propose_conf_change(ConfChange { ops: vec![ConfChangeOp::AddVoter(WITNESS)] });
    assert!(matches!(refused, Err(ProposeError::InvalidChange(ref reason)) if reason.contains("remove it")));
    // Removed, it is no voter; still a witness to itself, it never campaigns.
    cluster.raft(1).propose_conf_change(ConfChange { ops: vec![ConfChangeOp::Remove(WITNESS)] }).unwrap();
    stabilize_checked(&mut cluster);
    assert_eq!(cluster.node(1).raft.conf(), &ConfState::new([1, 2], []));
    assert!(cluster.node(WITNESS).raft.is_witness());
    cluster.raft(WITNESS).campaign();
    stabilize_checked(&mut cluster);
    assert_eq!(cluster.leader(), Some(1));
}

#[test]
fn membership_changes_that_would_weaken_witnesses_are_refused() {
    let conf = ConfState::with_witnesses([1, 2], [3], []);
    let apply = |ops: Vec<ConfChangeOp>| ConfChange { ops }.apply_to(&conf).map_err(|error| error.0);
    let error = apply(vec![ConfChangeOp::Remove(1)]).unwrap_err();
    assert!(error.contains("full voters must be a majority"), "{error}");
    let error = apply(vec![ConfChangeOp::Remove(1), ConfChangeOp::Remove(2)]).unwrap_err();
    assert!(error.contains("no full voter"), "{error}");
    let error = apply(vec![ConfChangeOp::AddWitness(4)]).unwrap_err();
    assert!(error.contains("2 witnesses and only 2 full voters"), "{error}");
    let error = apply(vec![ConfChangeOp::AddVoter(3)]).unwrap_err();
    assert!(error.contains("witness") && error.contains("remove it"), "{error}");
    let error = apply(vec![ConfChangeOp::Remove(3), ConfChangeOp::AddVoter(3)]).unwrap_err();
    assert!(error.contains("in place"), "{error}");
    let error = apply(vec![ConfChangeOp::AddWitness(2)]).unwrap_err();
    assert!(error.contains("full voter and cannot become a witness"), "{error}");
    let error = apply(vec![ConfChangeOp::AddLearner(3)]).unwrap_err();
    assert!(error.contains("witness"), "{error}");
    let error = apply(vec![ConfChangeOp::AddLearner(7), ConfChangeOp::AddWitness(7)]).unwrap_err();
    assert!(error.contains("a learner and a witness at once"), "{error}");
    // A learner is promoted to a witness (the way a node joins).
    let with_learner = ConfState::new([1, 2, 3, 4], [5]);
    let promoted = ConfChange { ops: vec![ConfChangeOp::AddWitness(5)] }.apply_to(&with_learner).unwrap();
    assert!(promoted.is_witness(5) && promoted.learners.is_empty());
    let error = ConfChange { ops: vec![ConfChangeOp::AddWitness(2)] }.apply_to(&ConfState::new([1], [])).unwrap_err().0;
    assert!(error.contains("full voters must be a majority"), "{error}");

    // Allowed: a witness added to three full voters, a full voter added
    // beside a witness, and a witness's removal through a joint phase
    // after which it is no longer listed.
    let joint = apply(vec![ConfChangeOp::AddVoter(4), ConfChangeOp::AddVoter(5), ConfChangeOp::AddWitness(6)]).unwrap();
    assert_eq!(joint.witnesses, vec![3, 6]);
    assert!(joint.is_joint() && joint.is_witness(3) && joint.is_witness(6));
    let removing = apply(vec![ConfChangeOp::Remove(3)]).unwrap();
    assert!(removing.is_witness(3), "still a witness while it votes in the outgoing half");
    let left = ConfChange::default().apply_to(&removing).unwrap();
    assert_eq!(left, ConfState::new([1, 2], []));
    assert!(left.witnesses.is_empty());

    // Engine configuration at bootstrap.
    let mut config = witness_config(1, 0);
    config.validate().unwrap();
    config.witnesses = vec![2, 3];
    assert!(config.validate().unwrap_err().0.contains("full voters must be a majority"));
    config.witnesses = vec![4];
    assert!(config.validate().unwrap_err().0.contains("also be listed as a voter"));
    let mut config = witness_config(1, 0);
    config.witness = true;
    assert!(config.validate().unwrap_err().0.contains("full voter"));
}

/// A membership read from the network or a disk is made consistent: the
/// witness list sorted, deduplicated, and holding voters only.
#[test]
fn normalize_keeps_only_voting_witnesses() {
    let mut conf = ConfState {
        voters: vec![2, 1, 4],
        voters_outgoing: vec![1, 5],
        learners: vec![6],
        witnesses: vec![5, 4, 4, 6, 9],
    };
    conf.normalize();
    assert_eq!(conf.witnesses, vec![4, 5], "6 is a learner and 9 no member");
    assert!(conf.is_witness(5) && !conf.is_witness(6) && !conf.is_full_voter(4) && conf.is_full_voter(1));
}

#[test]
fn add_witness_encodes_as_kind_4_and_old_encodings_decode_unchanged() {
    let change = ConfChange { ops: vec![ConfChangeOp::AddVoter(1), ConfChangeOp::AddWitness(3)] };
    let encoded = change.encode();
    assert_eq!(encoded[4 + 9], 4, "the witness operation's kind byte");
    assert_eq!(ConfChange::decode(&encoded).unwrap(), change);
    // An encoding written before witnesses existed: add voter 1, add
    // learner 2, remove 3.
    let mut old = vec![3, 0, 0, 0];
    for (kind, id) in [(1u8, 1u64), (2, 2), (3, 3)] {
        old.push(kind);
        old.extend_from_slice(&id.to_le_bytes());
    }
    let decoded = ConfChange::decode(&old).unwrap();
    assert_eq!(decoded.ops, vec![ConfChangeOp::AddVoter(1), ConfChangeOp::AddLearner(2), ConfChangeOp::Remove(3)]);
    assert_eq!(decoded.encode(), Bytes::from(old));
}

/// Raft paper 5.1: a server with a stale term rejects the request, and its
/// answer carries its own term. Without check-quorum and pre-vote a voter
/// that can campaign ignores a stale leader instead (its own election
/// replaces it); one that may not campaign, like a witness or a replica in
/// repair, must answer, or the stale leader would lead it for ever: the
/// simulation found a repairing replica whose term ran ahead while its
/// disk stalled, ignored by a leader of an older term (seed 118 of
/// `three_nodes_with_storage_faults`).
#[test]
fn a_replica_that_may_not_campaign_tells_a_stale_leader_its_term() {
    let mut cluster = Cluster::new(&[1, 2, 3], |id| {
        let mut config = witness_config(id, 9);
        config.check_quorum = false;
        config.pre_vote = false;
        config
    });
    cluster.elect(1);
    let term = cluster.node(1).raft.term();
    // The witness hears of a later term (a vote request it refuses).
    let request = engine::VoteRequest { last_log_index: 0, last_log_term: 0, transfer: false, commit: 0 };
    let _ = cluster.raft(WITNESS).step(engine::Message {
        from: 2,
        to: WITNESS,
        term: term + 5,
        body: MessageBody::Vote(request),
    });
    assert_eq!(cluster.node(WITNESS).raft.term(), term + 5);
    cluster.process_ready(WITNESS);
    cluster.network.clear();
    let _ = cluster.raft(WITNESS).step(engine::Message {
        from: 1,
        to: WITNESS,
        term,
        body: MessageBody::Heartbeat { commit: 0, read_context: 0 },
    });
    let ready = cluster.process_ready(WITNESS).expect("an answer");
    let answer = ready.messages.iter().find(|message| message.to == 1).expect("an answer to the stale leader");
    assert_eq!(answer.term, term + 5);
    cluster.deliver_all();
    assert_ne!(cluster.node(1).raft.role(), Role::Leader, "the stale leader stepped down");
}

/// A node run as a witness that a configuration counts as a full member
/// (added with `add-learner` and `promote` instead of `add-witness`: the
/// cluster cannot tell how a node runs) acknowledges no entry, so no commit
/// ever rests on it. Before, it acknowledged the metadata it kept without
/// the payloads, and the leader counted that as a full replica's: with the
/// full follower down, an entry committed with its payload on the leader's
/// disk alone.
#[test]
fn a_witness_counted_as_a_full_member_acknowledges_nothing() {
    let mut cluster = full_pair_with_a_witness_to_add("before");
    for op in [ConfChangeOp::AddLearner(WITNESS), ConfChangeOp::AddVoter(WITNESS)] {
        cluster.raft(1).propose_conf_change(ConfChange { ops: vec![op] }).expect("the leader takes the change");
        cluster.stabilize();
    }
    assert_eq!(cluster.node(1).raft.conf(), &ConfState::new([1, 2, WITNESS], []), "counted as a full voter");
    assert!(cluster.node(WITNESS).raft.is_witness(), "it runs as a witness all the same");
    let committed = cluster.node(1).raft.committed();
    cluster.crash(2);
    let index = propose(&mut cluster, 1, "on the leader's disk alone");
    cluster.stabilize();
    assert!(
        cluster.node(1).raft.committed() < index,
        "committed at {} with the full follower down: the witness's acknowledgement counted as a full replica's",
        cluster.node(1).raft.committed()
    );
    assert_eq!(cluster.node(1).raft.committed(), committed);
    // The full follower back, the entry commits on two full replicas.
    cluster.restart(2);
    tick_checked(&mut cluster, 5);
    assert!(cluster.node(1).raft.committed() >= index);
    assert!(cluster.node(2).applied_commands().contains(&Bytes::from_static(b"on the leader's disk alone")));
}
