//! The key-value state machine: the conformance suite, its operations,
//! snapshots, and the codecs of its vocabulary (`net::kv`).

use bytes::Bytes;
use node::kv::{KvOp, KvRefusal, KvResponse, KvStateMachine, SetCondition, COUNT_QUERY, VALUE_SIZE_MAX};
use node::testing::{kv_workload, state_machine_suite};
use node::StateMachine;
use proptest::prelude::*;

fn put(key: &str, value: &str) -> Bytes {
    KvOp::Put { key: Bytes::copy_from_slice(key.as_bytes()), value: Bytes::copy_from_slice(value.as_bytes()) }.encode()
}

fn get(key: &str) -> Bytes {
    KvOp::Get { key: Bytes::copy_from_slice(key.as_bytes()) }.encode()
}

fn value(machine: &KvStateMachine, key: &str) -> Option<Bytes> {
    match KvResponse::decode(&machine.query(&get(key)).expect("a get answers")).expect("decodes") {
        KvResponse::Value(value) => value,
        other => panic!("a get answered {other:?}"),
    }
}

fn answer(kv: &mut KvStateMachine, index: u64, op: KvOp) -> KvResponse {
    KvResponse::decode(&kv.apply(index, &op.encode()).expect("applied")).expect("decodes")
}

#[test]
fn conformance_suite() {
    for seed in 0..4 {
        state_machine_suite(KvStateMachine::new, &kv_workload(seed, 300));
    }
}

#[test]
fn put_get_delete_cas() {
    let mut kv = KvStateMachine::new();
    let key = Bytes::from_static(b"k");
    assert_eq!(answer(&mut kv, 1, KvOp::Put { key: key.clone(), value: "a".into() }), KvResponse::Written);
    assert_eq!(value(&kv, "k"), Some(Bytes::from("a")));
    let cas = |expected: Option<&'static str>, new: Option<&'static str>| KvOp::Cas {
        key: key.clone(),
        expected: expected.map(Bytes::from),
        new: new.map(Bytes::from),
    };
    assert_eq!(
        answer(&mut kv, 2, cas(None, Some("b"))),
        KvResponse::CasFailed { current: Some("a".into()) },
        "expected absent, found a"
    );
    assert_eq!(answer(&mut kv, 3, cas(Some("a"), Some("b"))), KvResponse::CasSucceeded);
    assert_eq!(value(&kv, "k"), Some(Bytes::from("b")));
    assert_eq!(answer(&mut kv, 4, cas(Some("b"), None)), KvResponse::CasSucceeded, "cas to absent deletes");
    assert_eq!(value(&kv, "k"), None);
    assert_eq!(answer(&mut kv, 5, cas(None, Some("c"))), KvResponse::CasSucceeded, "create if absent");
    assert_eq!(answer(&mut kv, 6, KvOp::Delete { key: key.clone() }), KvResponse::Deleted { existed: true });
    assert_eq!(answer(&mut kv, 7, KvOp::Delete { key }), KvResponse::Deleted { existed: false });
    assert_eq!(answer(&mut kv, 8, KvOp::Get { key: "k".into() }), KvResponse::Value(None), "a get in the log");
}

/// The read-modify-write ops of the RESP front door, each one step of the
/// state machine (as Redis's INCR, APPEND, SET NX/XX/GET).
#[test]
fn increment_append_and_conditional_set() {
    let mut kv = KvStateMachine::new();
    let increment = |delta| KvOp::Increment { key: "n".into(), delta };
    assert_eq!(answer(&mut kv, 1, increment(1)), KvResponse::Integer(1), "absent counts as 0");
    assert_eq!(answer(&mut kv, 2, increment(-5)), KvResponse::Integer(-4));
    assert_eq!(value(&kv, "n"), Some(Bytes::from("-4")), "stored as decimal text");
    assert_eq!(answer(&mut kv, 3, increment(i64::MIN)), KvResponse::Refused(KvRefusal::Overflow));
    assert_eq!(value(&kv, "n"), Some(Bytes::from("-4")), "a refused increment changes nothing");
    assert_eq!(answer(&mut kv, 4, KvOp::Put { key: "s".into(), value: "abc".into() }), KvResponse::Written);
    assert_eq!(
        answer(&mut kv, 5, KvOp::Increment { key: "s".into(), delta: 1 }),
        KvResponse::Refused(KvRefusal::NotAnInteger)
    );
    assert_eq!(answer(&mut kv, 6, KvOp::Append { key: "s".into(), value: "de".into() }), KvResponse::Integer(5));
    assert_eq!(answer(&mut kv, 7, KvOp::Append { key: "new".into(), value: "x".into() }), KvResponse::Integer(1));
    assert_eq!(value(&kv, "s"), Some(Bytes::from("abcde")));
    let big = Bytes::from(vec![b'x'; VALUE_SIZE_MAX]);
    assert_eq!(
        answer(&mut kv, 8, KvOp::Append { key: "s".into(), value: big }),
        KvResponse::Refused(KvRefusal::TooLarge)
    );
    let set = |condition, get| KvOp::Set { key: "c".into(), value: "v1".into(), condition, get };
    assert_eq!(
        answer(&mut kv, 9, set(SetCondition::IfPresent, false)),
        KvResponse::SetDone { written: false, previous: None }
    );
    assert_eq!(value(&kv, "c"), None, "XX on an absent key writes nothing");
    assert_eq!(
        answer(&mut kv, 10, set(SetCondition::IfAbsent, true)),
        KvResponse::SetDone { written: true, previous: None }
    );
    assert_eq!(
        answer(&mut kv, 11, set(SetCondition::IfAbsent, true)),
        KvResponse::SetDone { written: false, previous: Some("v1".into()) }
    );
    let getset = KvOp::Set { key: "c".into(), value: "v2".into(), condition: SetCondition::Always, get: true };
    assert_eq!(answer(&mut kv, 12, getset), KvResponse::SetDone { written: true, previous: Some("v1".into()) });
    assert_eq!(value(&kv, "c"), Some(Bytes::from("v2")));
    let count = KvResponse::decode(&kv.query(COUNT_QUERY).expect("a count answers")).expect("decodes");
    assert_eq!(count, KvResponse::Count(4), "n, s, new and c");
    assert!(kv.query(&KvOp::Increment { key: "n".into(), delta: 1 }.encode()).is_err(), "writes are no queries");
}

/// Keys of every length around the size the map keeps inline are found,
/// overwritten, counted and deleted alike, and survive a snapshot.
#[test]
fn short_and_long_keys_behave_alike() {
    let mut kv = KvStateMachine::new();
    let keys: Vec<String> = (1..=64).map(|len| "x".repeat(len)).collect();
    let mut index = 0;
    let mut apply = |kv: &mut KvStateMachine, op: KvOp| {
        index += 1;
        answer(kv, index, op)
    };
    for (round, value_text) in ["first", "second"].iter().enumerate() {
        for key in &keys {
            let op = KvOp::Put { key: Bytes::from(key.clone()), value: Bytes::from(format!("{value_text}-{key}")) };
            assert_eq!(apply(&mut kv, op), KvResponse::Written);
        }
        assert_eq!(kv.len(), keys.len(), "round {round}: overwrites add no keys");
    }
    let mut restored = KvStateMachine::new();
    restored.restore_from(&mut &kv.snapshot()[..]).unwrap();
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
fn malformed_commands_and_queries_are_refused_not_applied() {
    let mut kv = KvStateMachine::new();
    for (index, bad) in [
        Bytes::new(),
        Bytes::from_static(&[9, 0, 0]),
        Bytes::from_static(b"\x02\x00\x00\x00\x00"),
        Bytes::from([put("k", "v").as_ref(), b"x"].concat()),
    ]
    .iter()
    .enumerate()
    {
        assert!(kv.apply(index as u64 + 1, bad).is_err(), "{bad:?}");
    }
    assert!(kv.query(&put("k", "v")).is_err(), "a query must be a get");
    assert!(kv.query(&Bytes::from_static(b"\x01")).is_err());
    assert_eq!(kv.len(), 0);
}

#[test]
fn restore_errors_are_clear() {
    let mut kv = KvStateMachine::new();
    kv.apply(1, &put("k", "v")).unwrap();
    let snapshot = kv.snapshot();
    let mut damaged = snapshot.to_vec();
    damaged[20] ^= 1;
    let error = KvStateMachine::new().restore_from(&mut &Bytes::from(damaged)[..]).unwrap_err();
    assert!(error.to_string().contains("checksum"), "{error}");
    let error = KvStateMachine::new()
        .restore_from(&mut &Bytes::from_static(b"this is not a snapshot at all, but long enough to have a header")[..])
        .unwrap_err();
    assert!(error.to_string().contains("magic"), "{error}");
}

/// Pairs out of the canonical order would make equal states give different
/// bytes; restore refuses them even under a valid checksum.
#[test]
fn restore_refuses_pairs_out_of_snapshot_order() {
    let mut kv = KvStateMachine::new();
    kv.apply(1, &put("a", "1")).unwrap();
    kv.apply(2, &put("b", "2")).unwrap();
    let snapshot = kv.snapshot();
    KvStateMachine::new().restore_from(&mut &snapshot[..]).expect("a snapshot restores");
    // Header (16 bytes), the pair count, then two pairs of 10 bytes each.
    let mut swapped = snapshot.to_vec();
    let pairs = 16 + 8;
    let (first, second) = (swapped[pairs..pairs + 10].to_vec(), swapped[pairs + 10..pairs + 20].to_vec());
    swapped[pairs..pairs + 10].copy_from_slice(&second);
    swapped[pairs + 10..pairs + 20].copy_from_slice(&first);
    let end = swapped.len() - 4;
    let checksum = crc32c::crc32c(&swapped[..end]);
    swapped[end..].copy_from_slice(&checksum.to_le_bytes());
    let error = KvStateMachine::new().restore_from(&mut &Bytes::from(swapped)[..]).unwrap_err();
    assert!(error.to_string().contains("snapshot order"), "{error}");
}

fn bytes_strategy(size_max: usize) -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..size_max).prop_map(Bytes::from)
}

pub fn op_strategy() -> impl Strategy<Value = KvOp> {
    let key = proptest::collection::vec(any::<u8>(), 1..16).prop_map(Bytes::from);
    prop_oneof![
        key.clone().prop_map(|key| KvOp::Get { key }),
        (key.clone(), bytes_strategy(32)).prop_map(|(key, value)| KvOp::Put { key, value }),
        key.clone().prop_map(|key| KvOp::Delete { key }),
        (key.clone(), proptest::option::of(bytes_strategy(8)), proptest::option::of(bytes_strategy(8)))
            .prop_map(|(key, expected, new)| KvOp::Cas { key, expected, new }),
        (key.clone(), any::<i64>()).prop_map(|(key, delta)| KvOp::Increment { key, delta }),
        (key.clone(), bytes_strategy(8)).prop_map(|(key, value)| KvOp::Append { key, value }),
        (key, bytes_strategy(8), 0..3u8, any::<bool>()).prop_map(|(key, value, condition, get)| KvOp::Set {
            key,
            value,
            condition: [SetCondition::Always, SetCondition::IfAbsent, SetCondition::IfPresent][condition as usize],
            get
        }),
    ]
}

fn response_strategy() -> impl Strategy<Value = KvResponse> {
    prop_oneof![
        proptest::option::of(bytes_strategy(16)).prop_map(KvResponse::Value),
        Just(KvResponse::Written),
        any::<bool>().prop_map(|existed| KvResponse::Deleted { existed }),
        Just(KvResponse::CasSucceeded),
        proptest::option::of(bytes_strategy(16)).prop_map(|current| KvResponse::CasFailed { current }),
        any::<i64>().prop_map(KvResponse::Integer),
        prop_oneof![Just(KvRefusal::NotAnInteger), Just(KvRefusal::Overflow), Just(KvRefusal::TooLarge)]
            .prop_map(KvResponse::Refused),
        (any::<bool>(), proptest::option::of(bytes_strategy(16)))
            .prop_map(|(written, previous)| KvResponse::SetDone { written, previous }),
        any::<u64>().prop_map(KvResponse::Count),
    ]
}

proptest! {
    #[test]
    fn op_round_trips(op in op_strategy()) {
        prop_assert_eq!(KvOp::decode(&op.encode()), Ok(op));
    }

    #[test]
    fn response_round_trips(response in response_strategy()) {
        prop_assert_eq!(KvResponse::decode(&response.encode()), Ok(response.clone()));
        prop_assert_eq!(response.to_bytes(), response.encode());
    }

    #[test]
    fn decoders_never_panic(bytes in bytes_strategy(64)) {
        let _ = KvOp::decode(&bytes);
        let _ = KvResponse::decode(&bytes);
        let _ = KvStateMachine::new().restore_from(&mut &bytes[..]);
        let _ = KvStateMachine::new().apply(1, &bytes);
        let _ = KvStateMachine::new().query(&bytes);
    }
}
