//! A follower whose disk is full (issue 16 item 4): it says so in answer to
//! appends instead of going silent; the leader counts nothing it did not
//! take, keeps what it matched, knows which peers are full and whether a
//! quorum still has room, and the follower resumes by itself once the
//! shell reports room again.

use bytes::Bytes;
use engine::testing::Cluster;
use engine::{AppendResponse, Config, MessageBody, NodeId, Role};

/// Ticks every node `count` times, stabilizing after each tick.
fn run_ticks(cluster: &mut Cluster, count: u32) {
    for _ in 0..count {
        cluster.tick_all();
        cluster.stabilize();
    }
}

/// The leader's (match, next) for `id`.
fn progress_of(cluster: &Cluster, leader: NodeId, id: NodeId) -> (u64, u64) {
    let status = cluster.node(leader).raft.status();
    let peer = status.progress.iter().find(|peer| peer.id == id).expect("a member");
    (peer.match_index, peer.next_index)
}

/// Before, a full follower's shell could only hold appends it could not
/// write: the leader timed writes out and could not say why. Now the
/// follower answers each append "no space" (and takes nothing), the leader
/// counts no such answer toward commit, keeps each follower's match (no
/// back-off below it), reports both followers full and the quorum out of
/// room, keeps leading, and once the disks have room the entries commit
/// without any new write.
#[test]
fn followers_without_space_say_so_and_resume_by_themselves() {
    let mut cluster = Cluster::with_voters(3, 7);
    cluster.elect(1);
    cluster.raft(1).propose(Bytes::from_static(b"before")).expect("a leader takes writes");
    cluster.stabilize();
    let committed = cluster.node(1).raft.committed();
    let (matched, _) = progress_of(&cluster, 1, 2);
    assert_eq!(matched, committed);
    assert!(!cluster.node(1).raft.quorum_lacks_space());

    for id in [2, 3] {
        cluster.raft(id).set_no_space(true);
    }
    let (index, _) = cluster.raft(1).propose(Bytes::from_static(b"while full")).expect("taken");
    cluster.process_ready(1);
    let appends: Vec<_> =
        cluster.network.iter().filter(|m| matches!(m.body, MessageBody::Append(_))).cloned().collect();
    assert_eq!(appends.len(), 2, "the entry goes to both followers");
    cluster.deliver_all();
    for id in [2, 3] {
        let ready = cluster.process_ready(id).expect("an answer");
        assert!(ready.entries.is_empty(), "node {id} took entries it cannot write");
        assert!(ready.messages_after_persist.is_empty(), "node {id} acknowledged something");
        let answer = ready.messages.iter().find(|m| m.to == 1).expect("an answer to the leader");
        assert!(
            matches!(answer.body, MessageBody::AppendResponse(AppendResponse { no_space: true, reject: true, .. })),
            "node {id} answered {answer:?}"
        );
        assert_eq!(cluster.node(id).raft.last_index(), index - 1, "node {id}'s log did not change");
        assert_eq!(cluster.node(id).raft.appends_refused_no_space(), 1);
    }
    cluster.stabilize();
    assert_eq!(cluster.node(1).raft.committed(), committed, "nothing commits without a quorum that took it");
    assert_eq!(cluster.node(1).raft.peers_no_space(), vec![2, 3]);
    assert!(cluster.node(1).raft.quorum_lacks_space());
    for id in [2, 3] {
        assert_eq!(progress_of(&cluster, 1, id), (matched, matched + 1), "node {id}: match kept, probed from there");
    }

    // The next heartbeat's answers bring a probe each, without entries
    // (they could not be taken), at the match point.
    for _ in 0..cluster.node(1).config.heartbeat_ticks {
        cluster.raft(1).tick();
    }
    cluster.process_ready(1);
    cluster.deliver_all();
    for id in [2, 3] {
        cluster.process_ready(id);
    }
    cluster.deliver_all();
    let probes: Vec<_> = cluster.process_ready(1).expect("probes").messages;
    for id in [2, 3] {
        let probe = probes.iter().find(|m| m.to == id).expect("a probe");
        match &probe.body {
            MessageBody::Append(request) => {
                assert!(request.entries.is_none(), "node {id} was sent entries it cannot take");
                assert_eq!(request.prev_index, matched);
            }
            other => panic!("node {id} was sent {other:?}"),
        }
    }
    cluster.stabilize();

    // Several election timeouts: the leader keeps leading (heartbeats are
    // answered), probes once per heartbeat, and the report stays fresh.
    let election = cluster.node(1).config.election_ticks_min;
    let refused_before = cluster.node(2).raft.appends_refused_no_space();
    run_ticks(&mut cluster, 3 * election);
    assert_eq!(cluster.node(1).raft.role(), Role::Leader);
    assert_eq!(cluster.node(1).raft.committed(), committed);
    assert_eq!(cluster.node(1).raft.peers_no_space(), vec![2, 3]);
    let refused = cluster.node(2).raft.appends_refused_no_space() - refused_before;
    assert!(
        (u64::from(3 * election / cluster.node(1).config.heartbeat_ticks)..=u64::from(3 * election)).contains(&refused),
        "one probe a heartbeat, no faster: {refused}"
    );
    for id in [2, 3] {
        assert_eq!(progress_of(&cluster, 1, id).0, matched, "node {id}'s match kept");
    }

    // Room again: the next probe is taken, the entry commits everywhere.
    for id in [2, 3] {
        cluster.raft(id).set_no_space(false);
    }
    let ticks = cluster.node(1).config.heartbeat_ticks;
    run_ticks(&mut cluster, ticks);
    assert_eq!(cluster.node(1).raft.committed(), index, "the waiting entry commits by itself");
    assert!(cluster.node(1).raft.peers_no_space().is_empty());
    assert!(!cluster.node(1).raft.quorum_lacks_space());
    // The leader's next tick tells the followers the commit index.
    run_ticks(&mut cluster, ticks);
    for id in [2, 3] {
        assert!(cluster.node(id).applied.iter().any(|entry| entry.data == Bytes::from_static(b"while full")));
    }
}

/// One full follower of three: the other and the leader still make a
/// quorum, so writes go on; the full one is named, and catches up once it
/// has room, even with nothing new written (its probe is empty).
#[test]
fn one_full_follower_is_named_and_writes_go_on() {
    let mut cluster = Cluster::with_voters(3, 11);
    cluster.elect(1);
    cluster.raft(3).set_no_space(true);
    let (index, _) = cluster.raft(1).propose(Bytes::from_static(b"x")).expect("taken");
    cluster.stabilize();
    assert_eq!(cluster.node(1).raft.committed(), index, "leader and node 2 commit");
    assert_eq!(cluster.node(1).raft.peers_no_space(), vec![3]);
    assert!(!cluster.node(1).raft.quorum_lacks_space());
    let status = cluster.node(1).raft.status();
    assert!(status.progress.iter().any(|peer| peer.id == 3 && peer.no_space));
    assert!(cluster.node(3).raft.last_index() < index);

    cluster.raft(3).set_no_space(false);
    let ticks = cluster.node(1).config.heartbeat_ticks;
    run_ticks(&mut cluster, ticks);
    assert_eq!(cluster.node(3).raft.last_index(), index);
    assert_eq!(progress_of(&cluster, 1, 3).0, index);
    assert!(cluster.node(1).raft.peers_no_space().is_empty());
    // Caught up with nothing left to send, it is replicated to at once again.
    let (next, _) = cluster.raft(1).propose(Bytes::from_static(b"y")).expect("taken");
    cluster.stabilize();
    assert_eq!(cluster.node(3).raft.last_index(), next);
    cluster.tell_commit();
    assert_eq!(cluster.node(3).raft.committed(), next);
}

/// A follower that said it is full and then falls silent (down, cut off)
/// stops counting as full after an election timeout: it is absent, not
/// known to be full.
#[test]
fn a_silent_full_follower_stops_counting_as_full() {
    let mut cluster = Cluster::with_voters(5, 3);
    cluster.elect(1);
    for id in [4, 5] {
        cluster.raft(id).set_no_space(true);
    }
    cluster.raft(1).propose(Bytes::from_static(b"x")).expect("taken");
    cluster.stabilize();
    assert_eq!(cluster.node(1).raft.peers_no_space(), vec![4, 5]);
    assert!(!cluster.node(1).raft.quorum_lacks_space(), "1, 2 and 3 have room");
    // A caught-up follower whose disk fills is found out by the next write.
    cluster.raft(2).set_no_space(true);
    cluster.raft(1).propose(Bytes::from_static(b"y")).expect("taken");
    cluster.stabilize();
    assert!(cluster.node(1).raft.quorum_lacks_space(), "only 1 and 3 have room of five");
    cluster.isolate(5);
    let ticks = cluster.node(1).config.election_ticks_min;
    run_ticks(&mut cluster, ticks);
    assert_eq!(cluster.node(1).raft.role(), Role::Leader);
    assert_eq!(cluster.node(1).raft.peers_no_space(), vec![2, 4]);
    // Followers never report peers.
    assert!(cluster.node(2).raft.peers_no_space().is_empty());
    assert!(!cluster.node(2).raft.quorum_lacks_space());
}

/// Two full replicas and a witness: a full follower whose disk is full
/// counts as absent for the witness's limit, as a down one does, so the
/// leader and the witness keep committing (README "Witnesses"); before,
/// the full follower's stuck match held the witness back and writes
/// stalled though a quorum had room.
#[test]
fn with_a_witness_a_full_follower_is_treated_as_absent() {
    let mut cluster = Cluster::new(&[1, 2, 3], |id| {
        let mut config = Config::new(id, vec![1, 2, 3]);
        config.witnesses = vec![3];
        config.seed = 5 + id;
        config
    });
    cluster.elect(1);
    cluster.raft(2).set_no_space(true);
    let (first, _) = cluster.raft(1).propose(Bytes::from_static(b"a")).expect("taken");
    cluster.stabilize();
    assert_eq!(cluster.node(1).raft.peers_no_space(), vec![2]);
    assert!(!cluster.node(1).raft.quorum_lacks_space());
    let (second, _) = cluster.raft(1).propose(Bytes::from_static(b"b")).expect("taken");
    cluster.stabilize();
    assert!(cluster.node(1).raft.committed() >= second.max(first), "leader and witness commit");
    cluster.raft(2).set_no_space(false);
    let ticks = cluster.node(1).config.heartbeat_ticks;
    run_ticks(&mut cluster, ticks);
    assert_eq!(cluster.node(2).raft.committed(), second, "the full follower catches up once it has room");
}

/// A leader whose own disk is full takes no command forwarded by a
/// follower: it appended them (its shell refused only its own clients'
/// writes), its log's queue filled with writes the disk could not take, and
/// its shard driver stopped for good (found by the fifth audit, writing
/// through a follower's Redis port). Now the forwarded command is dropped,
/// as one forwarded to a busy leader is (the follower's caller times out),
/// and taken again once the disk has room.
#[test]
fn a_full_leader_takes_no_forwarded_command() {
    let mut cluster = Cluster::with_voters(3, 5);
    cluster.elect(1);
    cluster.stabilize();
    cluster.raft(1).set_no_space(true);
    let last = cluster.node(1).raft.last_index();
    cluster.raft(2).forward_proposal(Bytes::from_static(b"via 2")).expect("node 2 knows the leader");
    cluster.stabilize();
    assert_eq!(cluster.node(1).raft.last_index(), last, "the full leader appended a forwarded command");

    cluster.raft(1).set_no_space(false);
    cluster.raft(2).forward_proposal(Bytes::from_static(b"via 2 again")).expect("node 2 knows the leader");
    cluster.stabilize();
    assert_eq!(cluster.node(1).raft.last_index(), last + 1, "with room, it takes it");
}
