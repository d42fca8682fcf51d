//! Exactly-once client sessions (`node::session`, kept by the node's
//! replicated state machine for any application): opening through the log,
//! pipelined writes with acknowledgements, retries answered from the cache,
//! expiry by the log's clock, eviction that never lies, bounds, replicated
//! settings, snapshots; and a property test of the table against a model.

use std::collections::{BTreeMap, BTreeSet};

use bytes::{Bytes, BytesMut};
use net::SessionSettings;
use node::kv::{KvOp, KvResponse};
use node::replicated::{encode_write_in, Applied, NodeCommand, Outcome, Write, WRITE_ARENA_BYTES};
use node::session::{Admission, Cached, Refusal, SessionTable, SETTINGS_DEFAULT};
use proptest::prelude::*;

#[path = "common/replica.rs"]
mod replica;
use replica::Replica;

impl Replica {
    fn write(&mut self, client_id: u64, sequence: u64, ack: u64, op: &KvOp) -> Outcome {
        let command = op.encode();
        match self.apply(&Write { client_id, sequence, ack, command: &command }.encode()) {
            Applied::Write { outcome, .. } => outcome,
            other => panic!("a write applied as {other:?}"),
        }
    }

    fn clock(&mut self, millis: u64) {
        self.apply(&NodeCommand::Clock { millis }.encode());
    }

    fn value(&self, key: &str) -> Option<Bytes> {
        let query = KvOp::Get { key: Bytes::copy_from_slice(key.as_bytes()) }.encode();
        match KvResponse::decode(&self.machine.query(&query).unwrap()).unwrap() {
            KvResponse::Value(value) => value,
            other => panic!("{other:?}"),
        }
    }
}

fn put(key: &str, value: &str) -> KvOp {
    KvOp::Put { key: Bytes::copy_from_slice(key.as_bytes()), value: Bytes::copy_from_slice(value.as_bytes()) }
}

fn done(response: KvResponse) -> Outcome {
    Outcome::Done(Cached::Applied(response.encode()))
}

#[test]
fn session_ids_are_the_indexes_of_their_openings() {
    let mut replica = Replica::new();
    replica.apply(&Write { client_id: 0, sequence: 0, ack: 0, command: &put("k", "v").encode() }.encode());
    let first = replica.open();
    let second = replica.open();
    assert_eq!((first, second), (2, 3));
    assert_eq!(replica.machine.sessions().len(), 2);
}

#[test]
fn a_retry_is_answered_from_the_cache_and_not_applied_again() {
    let mut replica = Replica::new();
    let session = replica.open();
    let cas = KvOp::Cas { key: "k".into(), expected: None, new: Some("first".into()) };
    assert_eq!(replica.write(session, 1, 1, &cas), done(KvResponse::CasSucceeded));
    // Another client changes the key; the retry must not see or touch it.
    let other = replica.open();
    replica.write(other, 1, 1, &put("k", "other"));
    assert_eq!(replica.write(session, 1, 1, &cas), done(KvResponse::CasSucceeded), "the first answer");
    assert_eq!(replica.value("k"), Some(Bytes::from("other")));
}

#[test]
fn pipelined_writes_keep_every_unacknowledged_answer() {
    let mut replica = Replica::new();
    let session = replica.open();
    // Five writes in flight (ack 1), applied out of order after a failover
    // (increments: applying one twice would show).
    let increment = |sequence: u64| KvOp::Increment { key: format!("k{sequence}").into(), delta: 1 };
    for sequence in [2, 1, 4, 3, 5] {
        assert_eq!(replica.write(session, sequence, 1, &increment(sequence)), done(KvResponse::Integer(1)));
    }
    // Retries of any of them, in any order, get their answers, applied once.
    for sequence in [5, 1, 3] {
        assert_eq!(replica.write(session, sequence, 1, &increment(sequence)), done(KvResponse::Integer(1)));
        assert_eq!(replica.value(&format!("k{sequence}")), Some(Bytes::from("1")), "sequence {sequence} applied twice");
    }
    // The client received 1 to 3: the next write says so, and the table
    // forgets those answers; a retry of one is refused, not applied.
    assert_eq!(replica.write(session, 6, 4, &put("k6", "1")), done(KvResponse::Written));
    let kept: Vec<u64> = replica.machine.sessions().get(session).unwrap().replies.keys().copied().collect();
    assert_eq!(kept, vec![4, 5, 6]);
    // A delayed copy of write 2 (sent with ack 1) arrives now.
    assert_eq!(replica.write(session, 2, 1, &increment(2)), Outcome::Refused(Refusal::Stale { floor: 4 }));
    assert_eq!(replica.value("k2"), Some(Bytes::from("1")));
}

#[test]
fn a_write_in_an_unknown_session_is_refused_and_not_applied() {
    let mut replica = Replica::new();
    assert_eq!(replica.write(77, 1, 1, &put("k", "v")), Outcome::Refused(Refusal::Expired));
    assert_eq!(replica.value("k"), None);
    let session = replica.open();
    replica.apply(&NodeCommand::CloseSession { client_id: session }.encode());
    assert_eq!(replica.write(session, 1, 1, &put("k", "v")), Outcome::Refused(Refusal::Expired));
    assert_eq!(replica.value("k"), None);
}

#[test]
fn sessions_expire_by_the_log_clock_only() {
    let mut replica = Replica::new();
    let timeout = SETTINGS_DEFAULT.timeout_ms;
    let idle = replica.open();
    let busy = replica.open();
    replica.clock(timeout / 2);
    replica.write(busy, 1, 1, &put("b", "1"));
    replica.clock(timeout - 1);
    assert_eq!(replica.machine.sessions().len(), 2, "not idle for the timeout yet");
    replica.clock(timeout);
    assert!(replica.machine.sessions().get(idle).is_none(), "idle for the timeout: expired");
    assert!(replica.machine.sessions().get(busy).is_some());
    // An older clock entry (from a leader whose clock lags) changes nothing.
    replica.clock(1);
    assert_eq!(replica.machine.sessions().time(), timeout);
    replica.clock(timeout / 2 + timeout);
    assert!(replica.machine.sessions().is_empty());
}

#[test]
fn eviction_takes_only_sessions_whose_answers_were_all_acknowledged() {
    let mut replica = Replica::new();
    let settings = SessionSettings { sessions_max: 2, ..SETTINGS_DEFAULT };
    replica.apply(&NodeCommand::SessionSettings(settings).encode());
    let a = replica.open();
    let b = replica.open();
    replica.write(a, 1, 1, &put("a", "1")); // an answer a has not acknowledged
                                            // b holds no answer in doubt: opening a third session evicts it.
    let c = replica.open();
    assert!(replica.machine.sessions().get(b).is_none(), "b was evicted");
    assert!(replica.machine.sessions().get(a).is_some(), "a, with an answer in doubt, was not");
    replica.write(c, 1, 1, &put("c", "1"));
    // Both now hold an unacknowledged answer: a fourth session is refused.
    match replica.apply(&NodeCommand::OpenSession { proposer: 1, nonce: 9, owner: None }.encode()) {
        Applied::SessionOpened { result: Err(reason), .. } => assert!(reason.contains("2 sessions"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(replica.write(b, 1, 1, &put("b", "1")), Outcome::Refused(Refusal::Expired));
    // Closing one makes room.
    replica.apply(&NodeCommand::CloseSession { client_id: c }.encode());
    replica.open();
}

#[test]
fn the_window_never_locks_out_the_write_the_others_wait_behind() {
    let mut replica = Replica::new();
    let settings = SessionSettings { replies_max: 3, ..SETTINGS_DEFAULT };
    replica.apply(&NodeCommand::SessionSettings(settings).encode());
    let session = replica.open();
    // Writes 1 to 3 in flight; 2 and 3 are applied first (1 was lost on the
    // way to a leader that failed), filling two of the three places.
    assert_eq!(replica.write(session, 2, 1, &put("b", "2")), done(KvResponse::Written));
    assert_eq!(replica.write(session, 3, 1, &put("c", "3")), done(KvResponse::Written));
    // 4 is beyond the window above the lowest awaited write (1): refused.
    assert!(matches!(replica.write(session, 4, 1, &put("d", "4")), Outcome::Refused(Refusal::Full(_))));
    assert_eq!(replica.value("d"), None);
    // 1, the write the others wait behind, still fits and is applied.
    assert_eq!(replica.write(session, 1, 1, &put("a", "1")), done(KvResponse::Written));
    // With 1 to 3 answered, 4 fits.
    assert_eq!(replica.write(session, 4, 4, &put("d", "4")), done(KvResponse::Written));
    // The byte bound refuses extending the session, never filling its gaps.
    let tight = SessionSettings { reply_bytes_max: 1, replies_max: 4, ..SETTINGS_DEFAULT };
    replica.apply(&NodeCommand::SessionSettings(tight).encode());
    let small = replica.open();
    assert_eq!(replica.write(small, 2, 1, &put("x", "2")), done(KvResponse::Written));
    assert!(
        matches!(replica.write(small, 3, 1, &put("y", "3")), Outcome::Refused(Refusal::Full(_))),
        "extends past the byte bound"
    );
    assert_eq!(replica.write(small, 1, 1, &put("z", "1")), done(KvResponse::Written), "fills the gap below 2");
}

#[test]
fn a_session_keeps_the_timeout_and_window_it_was_opened_with() {
    let mut replica = Replica::new();
    let old = replica.open();
    let settings = SessionSettings { timeout_ms: 2_000, replies_max: 2, ..SETTINGS_DEFAULT };
    replica.apply(&NodeCommand::SessionSettings(settings).encode());
    let new = replica.open();
    replica.clock(2_000);
    assert!(replica.machine.sessions().get(new).is_none(), "the new session has the new timeout");
    assert!(replica.machine.sessions().get(old).is_some(), "the old one keeps the timeout its client was told");
    for sequence in 1..=3 {
        assert_eq!(replica.write(old, sequence, 1, &put("k", "v")), done(KvResponse::Written), "the old window");
    }
}

#[test]
fn per_session_bounds_refuse_writes_without_applying_them() {
    let mut replica = Replica::new();
    let settings = SessionSettings { replies_max: 3, ..SETTINGS_DEFAULT };
    replica.apply(&NodeCommand::SessionSettings(settings).encode());
    let session = replica.open();
    for sequence in 1..=3 {
        assert_eq!(replica.write(session, sequence, 1, &put("k", &sequence.to_string())), done(KvResponse::Written));
    }
    let refused = replica.write(session, 4, 1, &put("k", "4"));
    assert!(matches!(refused, Outcome::Refused(Refusal::Full(_))), "{refused:?}");
    assert_eq!(replica.value("k"), Some(Bytes::from("3")));
    // Once the client acknowledges, the same sequence is applied.
    assert_eq!(replica.write(session, 4, 3, &put("k", "4")), done(KvResponse::Written));
    assert_eq!(replica.value("k"), Some(Bytes::from("4")));
}

#[test]
fn settings_travel_in_the_log_and_in_snapshots() {
    // Two replicas configured differently on their command lines would have
    // diverged before; now there is nothing local to configure: a replica
    // restored from another's snapshot has its settings, sessions and clock.
    let mut leader = Replica::new();
    let settings = SessionSettings { sessions_max: 5, timeout_ms: 30_000, replies_max: 7, reply_bytes_max: 900 };
    leader.apply(&NodeCommand::SessionSettings(settings).encode());
    let session = leader.open();
    leader.clock(1_234);
    leader.write(session, 1, 1, &put("k", "v"));
    let cas = KvOp::Cas { key: "k".into(), expected: Some("x".into()), new: None };
    leader.write(session, 2, 1, &cas);
    let snapshot = leader.machine.snapshot();
    let mut follower = Replica::new();
    follower.machine.restore_from(&mut &snapshot[..]).unwrap();
    assert_eq!(follower.machine.sessions(), leader.machine.sessions());
    assert_eq!(follower.machine.sessions().settings(), settings);
    assert_eq!(follower.machine.snapshot(), snapshot, "snapshots are deterministic");
    // The format before streamed snapshots (version 2: no node section
    // length, and no member ids at its end: here the empty ones, a u64 and
    // two u32 counts of zero) still restores.
    let section_len = u64::from_le_bytes(snapshot[16..24].try_into().unwrap()) as usize;
    let (section, app) = snapshot[24..].split_at(section_len);
    let (node_part, member_ids) = section.split_at(section_len - 16);
    assert_eq!(member_ids, &[0u8; 16][..], "no member ids in this replica");
    let mut version_2 = snapshot[..16].to_vec();
    version_2[4..6].copy_from_slice(&2u16.to_le_bytes());
    version_2.extend_from_slice(node_part);
    version_2.extend_from_slice(app);
    let mut upgraded = Replica::new();
    upgraded.machine.restore_from(&mut &version_2[..]).unwrap();
    assert_eq!(upgraded.machine.snapshot(), snapshot, "a version 2 snapshot restores the same state");
    // The follower answers a retry exactly as the leader would.
    follower.index = leader.index;
    assert_eq!(follower.write(session, 2, 1, &cas), done(KvResponse::CasFailed { current: Some("v".into()) }));
    // Out-of-range settings are refused identically everywhere.
    let bad = SessionSettings { sessions_max: 0, ..settings };
    assert!(matches!(leader.apply(&NodeCommand::SessionSettings(bad).encode()), Applied::Node(Err(_))));
    assert_eq!(leader.machine.sessions().settings(), settings);
}

/// A session belongs to the user that opened it: every replica knows the
/// owner from the opening entry, so the node a write arrives at can refuse
/// another user's write; a session opened without an owner (by an older
/// build) takes anyone's; an id not yet applied is not known either way.
#[test]
fn a_session_belongs_to_the_user_that_opened_it() {
    let mut replica = Replica::new();
    let alice = replica.open_for(Some("alice"));
    let local = replica.open_for(Some(node::session::LOCAL_CALLER));
    let anyones = replica.open();
    let may = |replica: &Replica, id, caller| replica.machine.may_use_session(id, caller);
    assert_eq!(may(&replica, alice, "alice"), Some(true));
    assert_eq!(may(&replica, alice, "bob"), Some(false));
    assert_eq!(may(&replica, alice, node::session::LOCAL_CALLER), Some(false), "the node's own callers are not alice");
    assert_eq!(may(&replica, local, node::session::LOCAL_CALLER), Some(true));
    assert_eq!(may(&replica, local, "alice"), Some(false), "no client is the node's own caller");
    assert_eq!(may(&replica, anyones, "bob"), Some(true));
    assert_eq!(may(&replica, replica.index + 1, "alice"), None, "not applied here yet: ask again");
    // Gone for good once applied and not held: the write is let through,
    // and applying it says the session expired.
    replica.command(NodeCommand::CloseSession { client_id: alice });
    assert_eq!(may(&replica, alice, "bob"), Some(true));
    assert_eq!(replica.write(alice, 1, 1, &put("k", "v")), Outcome::Refused(Refusal::Expired));
}

/// Owners travel in snapshots (format version 4), and a replica restored
/// from one refuses the same callers; a state whose sessions have no owner
/// is written in version 3, the bytes an older build reads, so a cluster
/// being upgraded (whose sessions have no owner until every member runs
/// this build) still sends its older members snapshots they read.
#[test]
fn owners_travel_in_snapshots_and_their_absence_keeps_the_older_format() {
    let mut replica = Replica::new();
    let anyones = replica.open();
    replica.write(anyones, 1, 1, &put("k", "v"));
    let unowned = replica.machine.snapshot();
    assert_eq!(u16::from_le_bytes([unowned[4], unowned[5]]), 3, "no owner: the older format");
    let alice = replica.open_for(Some("alice"));
    replica.write(alice, 1, 1, &put("a", "1"));
    let owned = replica.machine.snapshot();
    assert_eq!(u16::from_le_bytes([owned[4], owned[5]]), 4);
    for (snapshot, sessions) in [(&unowned, 1), (&owned, 2)] {
        let mut restored = Replica::new();
        restored.machine.restore_from(&mut &snapshot[..]).unwrap();
        assert_eq!(restored.machine.sessions().len(), sessions);
        assert_eq!(&restored.machine.snapshot(), snapshot, "snapshots are deterministic");
    }
    let mut restored = Replica::new();
    restored.machine.restore_from(&mut &owned[..]).unwrap();
    assert_eq!(restored.machine.sessions(), replica.machine.sessions());
    assert_eq!(restored.machine.may_use_session(alice, "bob"), Some(false));
    assert_eq!(restored.machine.may_use_session(alice, "alice"), Some(true));
    // An owner longer than a user name is damage.
    let mut table = SessionTable::default();
    table.open(7, Some(std::sync::Arc::from("alice"))).unwrap();
    let mut encoded = BytesMut::new();
    table.encode(&mut encoded, true);
    let at = encoded.windows(6).position(|window| window == b"\x05alice").expect("the owner is encoded");
    encoded[at] = 65;
    let encoded = encoded.freeze();
    assert!(SessionTable::decode(&mut net::compact::Reader::new(&encoded), &encoded, true).is_err());
}

/// A client that reuses a sequence for another command (a client bug) is
/// refused, and the command is not applied: before, it was given the
/// earlier command's answer and believed its write applied. The retry of
/// the first command still gets its answer.
#[test]
fn a_sequence_reused_for_another_command_is_refused_and_not_applied() {
    let mut replica = Replica::new();
    let session = replica.open();
    assert_eq!(replica.write(session, 1, 1, &put("k", "first")), done(KvResponse::Written));
    let delete = KvOp::Delete { key: "k".into() };
    assert_eq!(replica.write(session, 1, 1, &delete), Outcome::Refused(Refusal::Reused { sequence: 1 }));
    assert_eq!(replica.value("k"), Some(Bytes::from("first")), "the other command was not applied");
    assert_eq!(replica.write(session, 1, 1, &put("k", "first")), done(KvResponse::Written), "the first answer");
    assert_eq!(
        replica.write(session, 2, 1, &delete),
        done(KvResponse::Deleted { existed: true }),
        "a sequence of its own"
    );
}

/// The answers' fingerprints are no replicated state: snapshots do not
/// carry them (their bytes must be the same on every replica), so a
/// replica restored from one gives a kept answer to any retry, as before
/// fingerprints, while the replica that applied the write refuses another
/// command; both hold the same state, and their tables compare equal.
#[test]
fn fingerprints_stay_out_of_snapshots_and_the_state() {
    let mut replica = Replica::new();
    let session = replica.open();
    replica.write(session, 1, 1, &put("k", "v"));
    let snapshot = replica.machine.snapshot();
    let mut restored = Replica::new();
    restored.machine.restore_from(&mut &snapshot[..]).unwrap();
    restored.index = replica.index;
    assert_eq!(restored.machine.sessions(), replica.machine.sessions(), "equal whatever their fingerprints");
    let reuse = KvOp::Delete { key: "k".into() };
    assert_eq!(replica.write(session, 1, 1, &reuse), Outcome::Refused(Refusal::Reused { sequence: 1 }));
    assert_eq!(restored.write(session, 1, 1, &reuse), done(KvResponse::Written), "no fingerprint: the kept answer");
    assert_eq!(restored.machine.snapshot(), replica.machine.snapshot(), "the same state either way");
    assert_eq!(restored.value("k"), Some(Bytes::from("v")));
    // A write the restored replica applies itself has a fingerprint there.
    assert_eq!(restored.write(session, 2, 1, &reuse), done(KvResponse::Deleted { existed: true }));
    assert_eq!(restored.write(session, 2, 1, &put("k", "w")), Outcome::Refused(Refusal::Reused { sequence: 2 }));
}

/// Sessions get owners only once every member that applies payloads has
/// said its build reads them (node command kind 9): an older build would
/// apply an owned opening (kind 8) as malformed and open nothing, while
/// the others opened a session.
#[test]
fn owners_wait_for_every_member_to_read_them() {
    use node::replicated::{FEATURES, FEATURE_GROUPS, FEATURE_SESSION_OWNERS};
    let mut replica = Replica::new();
    let conf = engine::ConfState::new([1, 2, 3], [4]);
    let owners = |replica: &Replica, conf| replica.machine.all_read(conf, FEATURE_SESSION_OWNERS);
    for id in [1, 2, 3] {
        assert!(matches!(replica.command(NodeCommand::Features { id, features: FEATURES }), Applied::Node(Ok(()))));
    }
    // Node 4 runs a build that said only that it reads groups.
    replica.command(NodeCommand::ReadsGroups { id: 4 });
    assert!(replica.machine.all_read_groups(&conf));
    assert!(!owners(&replica, &conf), "learner 4 does not read owners");
    replica.command(NodeCommand::Features { id: 4, features: FEATURE_GROUPS | FEATURE_SESSION_OWNERS });
    assert!(owners(&replica, &conf));
    assert!(replica.machine.reads(4, FEATURES));
    assert!(replica.machine.sessions_get_owners(&conf));
    // Announcements are not replicated state: a replica that restarted or
    // restored a snapshot after them has none, but an owned session in its
    // log or snapshot says every member read owners when it was opened.
    let mut restarted = Replica::new();
    assert!(!restarted.machine.sessions_get_owners(&conf), "nothing says so yet");
    restarted.open();
    assert!(!restarted.machine.sessions_get_owners(&conf), "a session without an owner says nothing");
    restarted.open_for(Some("alice"));
    assert!(restarted.machine.sessions_get_owners(&conf), "replayed from the log");
    let snapshot = restarted.machine.snapshot();
    let mut restored = Replica::new();
    restored.machine.restore_from(&mut &snapshot[..]).unwrap();
    assert!(restored.machine.sessions_get_owners(&conf), "restored from a snapshot");
}

#[test]
fn malformed_entries_are_answered_identically_and_change_nothing() {
    let mut replica = Replica::new();
    let before = replica.machine.snapshot();
    for bad in [
        &b""[..],
        b"\x01old format",
        b"\x80",
        b"\x80\x09",
        &Write { client_id: 5, sequence: 0, ack: 0, command: b"x" }.encode(),
        &Write { client_id: 5, sequence: 2, ack: 3, command: b"x" }.encode(),
        &Write { client_id: 0, sequence: 1, ack: 0, command: b"x" }.encode(),
    ] {
        let applied = replica.apply(bad);
        assert!(
            matches!(applied, Applied::Write { outcome: Outcome::Malformed(_), .. } | Applied::Node(Err(_))),
            "{bad:?}: {applied:?}"
        );
    }
    // Only the applied index moved.
    let mut fresh = Replica::new();
    fresh.machine.restore_from(&mut &before[..]).unwrap();
    assert_eq!(replica.machine.sessions(), fresh.machine.sessions());
}

#[test]
fn snapshot_restore_refuses_damage_and_leaves_the_state() {
    let mut replica = Replica::new();
    let session = replica.open();
    replica.write(session, 1, 1, &put("k", "v"));
    let snapshot = replica.machine.snapshot();
    let mut target = Replica::new();
    let before = target.machine.snapshot();
    for cut in [0, 3, 10, 40, snapshot.len() - 1] {
        assert!(target.machine.restore_from(&mut &snapshot.slice(..cut)[..]).is_err(), "cut at {cut}");
        assert_eq!(target.machine.snapshot(), before);
    }
    target.machine.restore_from(&mut &snapshot[..]).unwrap();
    assert_eq!(target.machine.snapshot(), snapshot);
}

#[test]
fn writes_carved_from_an_arena_equal_standalone_ones() {
    let mut arena = BytesMut::new();
    let mut kept = Vec::new();
    for round in 0..2_000u64 {
        let command = vec![round as u8; (round as usize * 37) % 700];
        let write = Write { client_id: round + 1, sequence: round + 2, ack: 1, command: &command };
        let carved = encode_write_in(&mut arena, &write);
        assert_eq!(carved, write.encode());
        kept.push((carved, command));
    }
    let huge = vec![9u8; WRITE_ARENA_BYTES * 2];
    let write = Write { client_id: 1, sequence: 2, ack: 2, command: &huge };
    assert_eq!(encode_write_in(&mut arena, &write), write.encode());
    // Later envelopes never overwrote earlier ones.
    for (round, (carved, command)) in kept.iter().enumerate() {
        let round = round as u64;
        assert_eq!(*carved, Write { client_id: round + 1, sequence: round + 2, ack: 1, command }.encode());
    }
}

/// What a member says of its votes (node command kind 10) is kept per
/// member, the latest word replacing the last (a member restarted with
/// other settings says so again), and nothing else changes.
#[test]
fn a_members_vote_hold_is_kept_and_replaced() {
    use std::time::Duration;
    let mut replica = Replica::new();
    assert_eq!(replica.machine.votes_held(2), None);
    let applied = replica.command(NodeCommand::VotesHeld { id: 2, micros: 500_000 });
    assert!(matches!(applied, Applied::Node(Ok(()))));
    assert_eq!(replica.machine.votes_held(2), Some(Duration::from_millis(500)));
    replica.command(NodeCommand::VotesHeld { id: 2, micros: 300_000 });
    assert_eq!(replica.machine.votes_held(2), Some(Duration::from_millis(300)));
    assert_eq!(replica.machine.votes_held(3), None);
}

proptest! {
    #[test]
    fn write_envelopes_and_node_commands_round_trip(
        client_id in 1u64.., sequence in 1u64.., ack_back in 0u64..5, command in proptest::collection::vec(any::<u8>(), 0..40),
        millis in any::<u64>(), nonce in any::<u64>(),
    ) {
        let ack = sequence.saturating_sub(ack_back).max(1);
        let write = Write { client_id, sequence, ack, command: &command };
        let encoded = write.encode();
        prop_assert_eq!(Write::decode(&encoded), Ok(write));
        for node_command in [
            NodeCommand::Clock { millis },
            NodeCommand::OpenSession { proposer: 3, nonce, owner: None },
            NodeCommand::OpenSession { proposer: 3, nonce, owner: Some(std::sync::Arc::from("writer-1")) },
            NodeCommand::OpenSession { proposer: 3, nonce, owner: Some(std::sync::Arc::from(node::session::LOCAL_CALLER)) },
            NodeCommand::Features { id: nonce, features: millis },
            NodeCommand::VotesHeld { id: nonce, micros: millis },
            NodeCommand::CloseSession { client_id },
        ] {
            prop_assert_eq!(NodeCommand::decode(&node_command.encode()), Some(node_command));
        }
    }

    #[test]
    fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
        let _ = Write::decode(&bytes);
        let _ = NodeCommand::decode(&bytes);
        let mut replica = Replica::new();
        let _ = replica.apply(&bytes);
        let _ = replica.machine.restore_from(&mut &bytes[..]);
        prop_assert_eq!(replica.machine.check_invariants(), Ok(()));
    }
}

/// One step of the property test's client behaviour.
#[derive(Clone, Debug)]
enum Step {
    Open,
    /// Write of session `slot` (modulo the open ones) with `sequence`
    /// (relative to the session's next) and an ack `ack_back` below it;
    /// with `other_command`, a command other than the one first sent under
    /// that sequence (a client that reuses sequences).
    Write {
        slot: usize,
        sequence_back: u64,
        ack_back: u64,
        size: usize,
        other_command: bool,
    },
    Close {
        slot: usize,
    },
    Clock {
        advance: u64,
    },
    Settings {
        sessions_max: u32,
        replies_max: u32,
        reply_bytes_max: u32,
    },
}

fn step_strategy() -> impl Strategy<Value = Step> {
    prop_oneof![
        2 => Just(Step::Open),
        10 => (0usize..8, 0u64..4, 0u64..4, 0usize..40, proptest::bool::weighted(0.2)).prop_map(|(slot, sequence_back, ack_back, size, other_command)| Step::Write { slot, sequence_back, ack_back, size, other_command }),
        1 => (0usize..8).prop_map(|slot| Step::Close { slot }),
        2 => (0u64..700).prop_map(|advance| Step::Clock { advance }),
        1 => (1u32..5, 1u32..5, 1u32..120).prop_map(|(sessions_max, replies_max, reply_bytes_max)| Step::Settings { sessions_max, replies_max, reply_bytes_max }),
    ]
}

/// What the model remembers of a session: everything, forever.
#[derive(Default, Clone)]
struct ModelSession {
    /// Every sequence ever applied, with its answer.
    applied: BTreeMap<u64, Cached>,
    /// ... and its command's fingerprint.
    commands: BTreeMap<u64, u32>,
    /// The highest ack seen.
    floor: u64,
    last_active: u64,
    next: u64,
    /// The timeout and window it was opened with.
    timeout_ms: u64,
    window: u64,
}

impl ModelSession {
    /// Applied answers the client has not acknowledged.
    fn unacknowledged(&self) -> impl Iterator<Item = (&u64, &Cached)> {
        self.applied.range(self.floor..)
    }
}

fn size(answer: &Cached) -> usize {
    match answer {
        Cached::Applied(bytes) => bytes.len(),
        Cached::Refused(reason) => reason.len(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// The session table against a model that never forgets: a write is
    /// applied only if its sequence never was; a duplicate gets exactly the
    /// first answer; every refusal has its reason (unknown session, stale,
    /// beyond the window or the byte bound) and nothing is refused without
    /// one; a session disappears only when closed, idle for its timeout, or
    /// evicted while it held no unacknowledged answer; and it keeps exactly
    /// the unacknowledged answers.
    #[test]
    fn session_table_matches_a_model_that_never_forgets(steps in proptest::collection::vec(step_strategy(), 1..120)) {
        let initial = SessionSettings { sessions_max: 3, timeout_ms: 1_000, replies_max: 3, reply_bytes_max: 60 };
        let mut table = SessionTable::new(initial);
        let mut model: BTreeMap<u64, ModelSession> = BTreeMap::new();
        let mut gone: BTreeSet<u64> = BTreeSet::new();
        let mut time = 0u64;
        let mut next_id = 1u64;
        for step in steps {
            let settings = table.settings();
            match step {
                Step::Open => {
                    let id = next_id;
                    next_id += 1;
                    let full = model.len() >= settings.sessions_max as usize;
                    match table.open(id, None) {
                        Ok(opened) => {
                            prop_assert_eq!(opened.client_id, id);
                            prop_assert_eq!(opened.window, settings.replies_max);
                            prop_assert_eq!(opened.timeout_ms, settings.timeout_ms);
                            model.insert(id, ModelSession {
                                floor: 1,
                                last_active: time,
                                next: 1,
                                timeout_ms: settings.timeout_ms,
                                window: u64::from(settings.replies_max),
                                ..ModelSession::default()
                            });
                        }
                        Err(_) => {
                            prop_assert!(full, "an opening refused with room for it");
                            prop_assert!(model.values().all(|s| s.unacknowledged().next().is_some()), "refused while an idle session could be evicted");
                        }
                    }
                }
                Step::Write { slot, sequence_back, ack_back, size: answer_size, other_command } => {
                    let ids: Vec<u64> = model.keys().copied().chain(gone.iter().copied()).collect();
                    if ids.is_empty() { continue; }
                    let id = ids[slot % ids.len()];
                    let next = model.get(&id).map_or(1, |s| s.next);
                    let sequence = next.saturating_sub(sequence_back).max(1);
                    let ack = sequence.saturating_sub(ack_back).max(1);
                    // Each sequence's own command, or another.
                    let command = (id << 20 | sequence) as u32;
                    let fingerprint = if other_command { !command } else { command };
                    let admission = table.admit(id, sequence, ack, fingerprint);
                    let Some(session) = model.get_mut(&id) else {
                        prop_assert_eq!(admission, Admission::Refuse(Refusal::Expired));
                        continue;
                    };
                    session.last_active = time;
                    session.floor = session.floor.max(ack);
                    let unacked_bytes: usize = session.unacknowledged().map(|(_, answer)| size(answer)).sum();
                    let highest = session.unacknowledged().map(|(sequence, _)| *sequence).last();
                    let extends = highest.is_none_or(|highest| sequence > highest);
                    let beyond_window = sequence >= session.floor && sequence - session.floor >= session.window;
                    let over_bytes = extends && unacked_bytes >= settings.reply_bytes_max as usize;
                    match admission {
                        Admission::Apply => {
                            prop_assert!(!session.applied.contains_key(&sequence), "sequence {} applied twice", sequence);
                            prop_assert!(sequence >= session.floor, "a stale sequence applied");
                            prop_assert!(!beyond_window && !over_bytes, "applied beyond a bound");
                            let answer = Cached::Applied(Bytes::from(vec![sequence as u8; answer_size]));
                            table.record(id, sequence, answer.clone(), fingerprint);
                            session.applied.insert(sequence, answer);
                            session.commands.insert(sequence, fingerprint);
                            session.next = session.next.max(sequence + 1);
                        }
                        Admission::Duplicate(answer) => {
                            prop_assert_eq!(Some(&answer), session.applied.get(&sequence), "a duplicate with another answer");
                            prop_assert_eq!(session.commands.get(&sequence), Some(&fingerprint), "another command's answer");
                            prop_assert!(sequence >= session.floor);
                        }
                        Admission::Refuse(Refusal::Reused { sequence: reused }) => {
                            prop_assert_eq!(reused, sequence);
                            prop_assert!(session.applied.contains_key(&sequence) && sequence >= session.floor);
                            prop_assert_ne!(session.commands.get(&sequence), Some(&fingerprint), "its own command refused");
                        }
                        Admission::Refuse(Refusal::Stale { floor }) => {
                            prop_assert_eq!(floor, session.floor);
                            prop_assert!(sequence < session.floor);
                        }
                        Admission::Refuse(Refusal::Full(_)) => {
                            prop_assert!(!session.applied.contains_key(&sequence) && sequence >= session.floor);
                            prop_assert!(beyond_window || over_bytes, "refused as full without being full");
                        }
                        Admission::Refuse(Refusal::Expired) => prop_assert!(false, "a live session refused as expired"),
                    }
                }
                Step::Close { slot } => {
                    let ids: Vec<u64> = model.keys().copied().collect();
                    if ids.is_empty() { continue; }
                    let id = ids[slot % ids.len()];
                    prop_assert!(table.close(id));
                    model.remove(&id);
                    gone.insert(id);
                }
                Step::Clock { advance } => {
                    time += advance;
                    table.advance(time);
                }
                Step::Settings { sessions_max, replies_max, reply_bytes_max } => {
                    table.set_settings(SessionSettings { sessions_max, replies_max, reply_bytes_max, timeout_ms: 1_000 + u64::from(replies_max) * 100 });
                }
            }
            // Sessions that vanished must have had a right to.
            let live: Vec<u64> = model.keys().copied().collect();
            for id in live {
                if table.get(id).is_some() {
                    let session = &model[&id];
                    prop_assert!(session.last_active + session.timeout_ms > time, "session {} outlived its timeout", id);
                    continue;
                }
                let session = model.remove(&id).expect("listed");
                let expired = session.last_active + session.timeout_ms <= time;
                let idle = session.unacknowledged().next().is_none();
                prop_assert!(expired || idle, "session {} with answers in doubt vanished before its timeout", id);
                gone.insert(id);
            }
            prop_assert_eq!(table.len(), model.len(), "the table keeps a session the model lost");
            prop_assert_eq!(table.check_invariants(), Ok(()));
            for (id, session) in &model {
                let kept: BTreeMap<u64, Cached> =
                    table.get(*id).expect("live").replies.iter().map(|(s, a)| (*s, a.clone())).collect();
                let expected: BTreeMap<u64, Cached> = session.unacknowledged().map(|(s, a)| (*s, a.clone())).collect();
                prop_assert_eq!(&kept, &expected, "session {} keeps other answers than the unacknowledged ones", id);
            }
        }
    }
}
