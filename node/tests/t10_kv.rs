//! The key-value state machine: the conformance suite, the codecs, and
//! exactly-once sessions.

use bytes::Bytes;
use engine::StateMachine;
use node::kv::{decode_answer, AnswerError, KvOp, KvResponse, KvStateMachine};
use node::session::{encode_envelope, encode_envelope_in, Envelope, Reply, ENVELOPE_ARENA_BYTES};
use node::testing::{kv_workload, state_machine_suite};
use proptest::prelude::*;

fn put(key: &str, value: &str) -> Bytes {
    KvOp::Put { key: Bytes::copy_from_slice(key.as_bytes()), value: Bytes::copy_from_slice(value.as_bytes()) }.encode()
}

fn get(key: &str) -> Bytes {
    KvOp::Get { key: Bytes::copy_from_slice(key.as_bytes()) }.encode()
}

fn value(machine: &KvStateMachine, key: &str) -> Option<Bytes> {
    match decode_answer(&machine.query(&get(key))).expect("a get answers") {
        KvResponse::Value(value) => value,
        other => panic!("a get answered {other:?}"),
    }
}

#[test]
fn conformance_suite_with_eviction() {
    for seed in 0..4 {
        state_machine_suite(|| KvStateMachine::new(8), &kv_workload(seed, 300));
    }
}

#[test]
fn conformance_suite_with_room_for_every_session() {
    state_machine_suite(KvStateMachine::default, &kv_workload(99, 300));
}

#[test]
fn put_get_delete_cas() {
    let mut kv = KvStateMachine::default();
    let answer = |kv: &mut KvStateMachine, index, sequence, op: KvOp| {
        decode_answer(&kv.apply(index, &encode_envelope(1, sequence, &op.encode()))).unwrap()
    };
    let key = Bytes::from_static(b"k");
    assert_eq!(answer(&mut kv, 1, 1, KvOp::Put { key: key.clone(), value: "a".into() }), KvResponse::Written);
    assert_eq!(value(&kv, "k"), Some(Bytes::from("a")));
    let cas = |expected: Option<&'static str>, new: Option<&'static str>| KvOp::Cas {
        key: key.clone(),
        expected: expected.map(Bytes::from),
        new: new.map(Bytes::from),
    };
    assert_eq!(
        answer(&mut kv, 2, 2, cas(None, Some("b"))),
        KvResponse::CasFailed { current: Some("a".into()) },
        "expected absent, found a"
    );
    assert_eq!(answer(&mut kv, 3, 3, cas(Some("a"), Some("b"))), KvResponse::CasSucceeded);
    assert_eq!(value(&kv, "k"), Some(Bytes::from("b")));
    assert_eq!(answer(&mut kv, 4, 4, cas(Some("b"), None)), KvResponse::CasSucceeded, "cas to absent deletes");
    assert_eq!(value(&kv, "k"), None);
    assert_eq!(answer(&mut kv, 5, 5, cas(None, Some("c"))), KvResponse::CasSucceeded, "create if absent");
    assert_eq!(answer(&mut kv, 6, 6, KvOp::Delete { key: key.clone() }), KvResponse::Deleted { existed: true });
    assert_eq!(answer(&mut kv, 7, 7, KvOp::Delete { key }), KvResponse::Deleted { existed: false });
    assert_eq!(answer(&mut kv, 8, 8, KvOp::Get { key: "k".into() }), KvResponse::Value(None), "a get in the log");
}

/// Keys of every length around the size the map keeps inline are found,
/// overwritten, counted and deleted alike, and survive a snapshot.
#[test]
fn short_and_long_keys_behave_alike() {
    let mut kv = KvStateMachine::default();
    let keys: Vec<String> = (1..=64).map(|len| "x".repeat(len)).collect();
    let mut index = 0;
    let mut apply = |kv: &mut KvStateMachine, op: KvOp| {
        index += 1;
        decode_answer(&kv.apply(index, &encode_envelope(1, index, &op.encode()))).unwrap()
    };
    for (round, value_text) in ["first", "second"].iter().enumerate() {
        for key in &keys {
            let op = KvOp::Put { key: Bytes::from(key.clone()), value: Bytes::from(format!("{value_text}-{key}")) };
            assert_eq!(apply(&mut kv, op), KvResponse::Written);
        }
        assert_eq!(kv.len(), keys.len(), "round {round}: overwrites add no keys");
    }
    let mut restored = KvStateMachine::default();
    restored.restore(&kv.snapshot()).unwrap();
    for key in &keys {
        let expected = Some(Bytes::from(format!("second-{key}")));
        assert_eq!(value(&kv, key), expected, "key of {} bytes", key.len());
        assert_eq!(value(&restored, key), expected, "restored key of {} bytes", key.len());
    }
    for key in &keys {
        assert_eq!(
            apply(&mut kv, KvOp::Delete { key: Bytes::from(key.clone()) }),
            KvResponse::Deleted { existed: true }
        );
    }
    assert!(kv.is_empty());
}

#[test]
fn retried_write_returns_cached_reply_and_is_not_applied_twice() {
    let mut kv = KvStateMachine::default();
    let cas = KvOp::Cas { key: "k".into(), expected: None, new: Some("first".into()) }.encode();
    let first = kv.apply(1, &encode_envelope(7, 1, &cas));
    assert_eq!(decode_answer(&first), Ok(KvResponse::CasSucceeded));
    // Another client changes the key; the retry must not see or touch it.
    kv.apply(2, &encode_envelope(8, 1, &put("k", "other")));
    let retry = kv.apply(3, &encode_envelope(7, 1, &cas));
    assert_eq!(retry, first, "the retry gets the first reply");
    assert_eq!(value(&kv, "k"), Some(Bytes::from("other")));
    // A retried put after a later write by someone else does not overwrite it.
    kv.apply(4, &encode_envelope(7, 2, &put("j", "mine")));
    kv.apply(5, &encode_envelope(8, 2, &put("j", "theirs")));
    kv.apply(6, &encode_envelope(7, 2, &put("j", "mine")));
    assert_eq!(value(&kv, "j"), Some(Bytes::from("theirs")));
    // Older than the last write: applied before, reply gone.
    assert_eq!(
        decode_answer(&kv.apply(7, &encode_envelope(7, 1, &cas))),
        Err(AnswerError::NotApplied(Reply::SequenceStale { last_sequence: 2 }))
    );
}

#[test]
fn retry_after_restore_from_snapshot_is_not_applied_twice() {
    // A leader applied the write and crashed; the new leader's replica was
    // restored from a snapshot that contains it, and the client retries.
    let mut old_leader = KvStateMachine::default();
    let write = encode_envelope(3, 1, &KvOp::Delete { key: "k".into() }.encode());
    old_leader.apply(1, &encode_envelope(0, 0, &put("k", "v")));
    let reply = old_leader.apply(2, &write);
    let mut new_leader = KvStateMachine::default();
    new_leader.restore(&old_leader.snapshot()).unwrap();
    new_leader.apply(3, &encode_envelope(0, 0, &put("k", "again")));
    assert_eq!(new_leader.apply(4, &write), reply);
    assert_eq!(value(&new_leader, "k"), Some(Bytes::from("again")));
}

#[test]
fn sessions_expire_least_recently_written_first() {
    let mut kv = KvStateMachine::new(2);
    kv.apply(1, &encode_envelope(1, 1, &put("a", "1")));
    kv.apply(2, &encode_envelope(2, 1, &put("b", "1")));
    kv.apply(3, &encode_envelope(1, 2, &put("a", "2"))); // client 1 is now the most recent
    kv.apply(4, &encode_envelope(3, 1, &put("c", "1"))); // evicts client 2
    assert_eq!(kv.sessions().len(), 2);
    assert!(kv.sessions().get(2).is_none());
    assert_eq!(
        decode_answer(&kv.apply(5, &encode_envelope(2, 2, &put("b", "2")))),
        Err(AnswerError::NotApplied(Reply::SessionExpired))
    );
    assert_eq!(value(&kv, "b"), Some(Bytes::from("1")), "an expired session's write is not applied");
    // A retry keeps a session alive: client 1 retries, then client 4 evicts client 3.
    kv.apply(6, &encode_envelope(1, 2, &put("a", "2")));
    kv.apply(7, &encode_envelope(4, 1, &put("d", "1")));
    assert!(kv.sessions().get(1).is_some());
    assert!(kv.sessions().get(3).is_none());
    // A first write with a sequence beyond 1 has no session.
    assert_eq!(Reply::decode(&kv.apply(8, &encode_envelope(9, 4, &put("x", "1")))), Ok(Reply::SessionExpired));
}

#[test]
fn malformed_commands_and_queries_are_answered_not_applied() {
    let mut kv = KvStateMachine::default();
    for (index, bad) in [
        Bytes::new(),
        Bytes::from_static(&[9, 0, 0]),
        encode_envelope(1, 0, &put("k", "v")),
        encode_envelope(1, 1, b"\x02\x00\x00\x00\x00"),
        encode_envelope(1, 1, &[put("k", "v").as_ref(), b"x"].concat()),
    ]
    .iter()
    .enumerate()
    {
        assert!(matches!(Reply::decode(&kv.apply(index as u64 + 1, bad)), Ok(Reply::Malformed(_))), "{bad:?}");
    }
    assert!(matches!(Reply::decode(&kv.query(&put("k", "v"))), Ok(Reply::Malformed(_))));
    assert!(matches!(Reply::decode(&kv.query(&Bytes::from_static(b"\x01"))), Ok(Reply::Malformed(_))));
    assert_eq!(kv.len(), 0);
    assert_eq!(kv.sessions().len(), 0, "a malformed write opens no session");
}

#[test]
fn restore_errors_are_clear() {
    let kv = KvStateMachine::new(4);
    let snapshot = kv.snapshot();
    let mut other = KvStateMachine::new(5);
    let error = other.restore(&snapshot).unwrap_err();
    assert!(error.to_string().contains("sessions_max"), "{error}");
    let mut damaged = snapshot.to_vec();
    damaged[20] ^= 1;
    let error = KvStateMachine::new(4).restore(&Bytes::from(damaged)).unwrap_err();
    assert!(error.to_string().contains("checksum"), "{error}");
    let error = KvStateMachine::new(4)
        .restore(&Bytes::from_static(b"this is not a snapshot at all, but long enough to have a header"))
        .unwrap_err();
    assert!(error.to_string().contains("magic"), "{error}");
}

/// Pairs out of the canonical order would make equal states give different
/// bytes; restore refuses them even under a valid checksum.
#[test]
fn restore_refuses_pairs_out_of_snapshot_order() {
    let mut kv = KvStateMachine::new(4);
    kv.apply(1, &encode_envelope(7, 1, &put("a", "1")));
    kv.apply(2, &encode_envelope(7, 2, &put("b", "2")));
    let snapshot = kv.snapshot();
    KvStateMachine::new(4).restore(&snapshot).expect("a snapshot restores");
    // Header (24 bytes), the pair count, then two pairs of 10 bytes each.
    let mut swapped = snapshot.to_vec();
    let pairs = 24 + 8;
    let (first, second) = (swapped[pairs..pairs + 10].to_vec(), swapped[pairs + 10..pairs + 20].to_vec());
    swapped[pairs..pairs + 10].copy_from_slice(&second);
    swapped[pairs + 10..pairs + 20].copy_from_slice(&first);
    let end = swapped.len() - 4;
    let checksum = crc32c::crc32c(&swapped[..end]);
    swapped[end..].copy_from_slice(&checksum.to_le_bytes());
    let error = KvStateMachine::new(4).restore(&Bytes::from(swapped)).unwrap_err();
    assert!(error.to_string().contains("snapshot order"), "{error}");
}

fn bytes_strategy(size_max: usize) -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..size_max).prop_map(Bytes::from)
}

fn op_strategy() -> impl Strategy<Value = KvOp> {
    let key = proptest::collection::vec(any::<u8>(), 1..16).prop_map(Bytes::from);
    prop_oneof![
        key.clone().prop_map(|key| KvOp::Get { key }),
        (key.clone(), bytes_strategy(32)).prop_map(|(key, value)| KvOp::Put { key, value }),
        key.clone().prop_map(|key| KvOp::Delete { key }),
        (key, proptest::option::of(bytes_strategy(8)), proptest::option::of(bytes_strategy(8)))
            .prop_map(|(key, expected, new)| KvOp::Cas { key, expected, new }),
    ]
}

fn response_strategy() -> impl Strategy<Value = KvResponse> {
    prop_oneof![
        proptest::option::of(bytes_strategy(16)).prop_map(KvResponse::Value),
        Just(KvResponse::Written),
        any::<bool>().prop_map(|existed| KvResponse::Deleted { existed }),
        Just(KvResponse::CasSucceeded),
        proptest::option::of(bytes_strategy(16)).prop_map(|current| KvResponse::CasFailed { current }),
    ]
}

proptest! {
    #[test]
    fn op_round_trips(op in op_strategy()) {
        prop_assert_eq!(KvOp::decode(&op.encode()), Ok(op));
    }

    #[test]
    fn response_round_trips(response in response_strategy()) {
        prop_assert_eq!(KvResponse::decode(&response.encode()), Ok(response));
    }

    #[test]
    fn envelope_round_trips(client_id in any::<u64>(), sequence in 1u64.., op in op_strategy()) {
        let envelope = Envelope { client_id, sequence, command: op.encode() };
        prop_assert_eq!(Envelope::decode(&envelope.encode()), Ok(envelope));
    }

    #[test]
    fn reply_round_trips(applied in bytes_strategy(16), last_sequence in any::<u64>(), reason in ".{0,20}") {
        for reply in [Reply::Applied(applied.clone()), Reply::SessionExpired, Reply::SequenceStale { last_sequence }, Reply::Malformed(reason.clone())] {
            prop_assert_eq!(Reply::decode(&reply.encode()), Ok(reply));
        }
    }

    #[test]
    fn decoders_never_panic(bytes in bytes_strategy(64)) {
        let _ = KvOp::decode(&bytes);
        let _ = KvResponse::decode(&bytes);
        let _ = Envelope::decode(&bytes);
        let _ = Reply::decode(&bytes);
        let _ = KvStateMachine::default().restore(&bytes);
    }

    /// Writes delivered with duplicates (each write retried right away or
    /// later) leave the same state as the writes delivered once.
    #[test]
    fn duplicates_are_applied_once(
        ops in proptest::collection::vec((0u64..3, op_strategy(), any::<bool>()), 1..40),
    ) {
        let mut once = KvStateMachine::default();
        let mut twice = KvStateMachine::default();
        let mut sequences = [0u64; 3];
        let mut index_twice = 0;
        for (index, (client, op, retry)) in (1..).zip(ops) {
            sequences[client as usize] += 1;
            let command = encode_envelope(client + 1, sequences[client as usize], &op.encode());
            let reply = once.apply(index, &command);
            index_twice += 1;
            prop_assert_eq!(&twice.apply(index_twice, &command), &reply);
            if retry {
                index_twice += 1;
                prop_assert_eq!(twice.apply(index_twice, &command), reply, "the retry gets the cached reply");
            }
            prop_assert_eq!(value_map(&once), value_map(&twice));
            prop_assert_eq!(twice.sessions().check_invariants(), Ok(()));
        }
    }
}

fn value_map(kv: &KvStateMachine) -> Vec<(Bytes, Option<Bytes>)> {
    (0..16u8)
        .map(|byte| {
            let key = Bytes::from(vec![byte]);
            (key.clone(), kv.get(&key).map(Bytes::copy_from_slice))
        })
        .collect()
}

proptest! {
    /// Whatever the writes, the session table stays within its bound and
    /// consistent, and a session that is present answers a retry of its last
    /// write from the cache.
    #[test]
    fn session_table_invariants(
        writes in proptest::collection::vec((1u64..6, 1u64..4), 1..60),
        sessions_max in 1usize..4,
    ) {
        let mut kv = KvStateMachine::new(sessions_max);
        for (index, (client_id, sequence)) in (1..).zip(writes) {
            let reply = kv.apply(index, &encode_envelope(client_id, sequence, &put("k", &index.to_string())));
            prop_assert_eq!(kv.sessions().check_invariants(), Ok(()));
            prop_assert!(kv.sessions().len() <= sessions_max);
            if let Some(session) = kv.sessions().get(client_id) {
                if session.last_sequence == sequence {
                    prop_assert_eq!(&session.reply, &reply);
                }
            } else {
                prop_assert!(sequence > 1, "a first write opens a session");
            }
        }
    }
}

#[test]
fn envelopes_carved_from_an_arena_equal_standalone_ones() {
    let mut arena = bytes::BytesMut::new();
    let mut kept = Vec::new();
    for round in 0..2_000u64 {
        let command = vec![round as u8; (round as usize * 37) % 700];
        let carved = encode_envelope_in(&mut arena, round, round + 1, &command);
        assert_eq!(carved, encode_envelope(round, round + 1, &command));
        kept.push((carved, command));
    }
    let huge = vec![9u8; ENVELOPE_ARENA_BYTES * 2];
    assert_eq!(encode_envelope_in(&mut arena, 1, 2, &huge), encode_envelope(1, 2, &huge));
    // Later envelopes never overwrote earlier ones.
    for (round, (carved, command)) in kept.iter().enumerate() {
        assert_eq!(*carved, encode_envelope(round as u64, round as u64 + 1, command));
    }
}
