//! Groups of writes (`node::replicated`, `GROUP_FORMAT`): a leader proposes
//! the writes it takes in one turn as one log entry. Applying a group must
//! give each write exactly what applying it as an entry of its own gives
//! (session admission, cached answers, refusals), a damaged group must be
//! refused alike on every replica, and a leader may group only once every
//! member that applies payloads reads groups.

use bytes::{Bytes, BytesMut};
use engine::ConfState;
use node::kv::KvOp;
use node::replicated::{
    group_writes, Applied, GroupBuilder, NodeCommand, Outcome, Write, GROUP_FORMAT, GROUP_HEADER_SIZE,
};
use proptest::prelude::*;

#[path = "common/replica.rs"]
mod replica;
use replica::Replica;

fn put(key: &str, value: &str) -> Bytes {
    KvOp::Put { key: Bytes::copy_from_slice(key.as_bytes()), value: Bytes::copy_from_slice(value.as_bytes()) }.encode()
}

fn increment(key: &str) -> Bytes {
    KvOp::Increment { key: Bytes::copy_from_slice(key.as_bytes()), delta: 1 }.encode()
}

/// The writes of a mixed turn: new writes in two sessions, a retry of an
/// applied one, one in a session that does not exist, one outside any
/// session, increments of one key (whose answers depend on order).
fn mixed_turn(first: u64, second: u64, commands: &[Bytes]) -> Vec<Write<'_>> {
    vec![
        Write { client_id: first, sequence: 2, ack: 1, command: &commands[0] },
        Write { client_id: second, sequence: 1, ack: 1, command: &commands[1] },
        Write { client_id: first, sequence: 1, ack: 1, command: &commands[2] },
        Write { client_id: 999, sequence: 1, ack: 1, command: &commands[3] },
        Write { client_id: 0, sequence: 0, ack: 0, command: &commands[4] },
        Write { client_id: first, sequence: 3, ack: 1, command: &commands[5] },
        Write { client_id: second, sequence: 2, ack: 2, command: &commands[6] },
    ]
}

#[test]
fn a_group_gives_each_write_what_it_gets_as_an_entry_of_its_own() {
    let (mut alone, mut grouped) = (Replica::new(), Replica::new());
    let commands = [put("a", "2"), increment("n"), put("a", "retried"), put("b", "x"), put("c", "y")];
    let commands: Vec<Bytes> = commands.into_iter().chain([increment("n"), increment("n")]).collect();
    let mut expected = Vec::new();
    for replica in [&mut alone, &mut grouped] {
        let (first, second) = (replica.open(), replica.open());
        // Write 1 of the first session, applied before the turn.
        let early = put("a", "1");
        replica.apply(&Write { client_id: first, sequence: 1, ack: 1, command: &early }.encode());
        let writes = mixed_turn(first, second, &commands);
        if expected.is_empty() {
            expected = writes.iter().map(|write| replica.apply(&write.encode())).collect();
        } else {
            let mut builder = GroupBuilder::default();
            writes.iter().for_each(|write| builder.push(write));
            let entries = builder.finish(false);
            assert_eq!(entries.len(), 1, "seven writes make one entry");
            assert_eq!(entries[0][0], GROUP_FORMAT);
            let Applied::Group(applied) = replica.apply(&entries[0]) else { panic!("a group applies as a group") };
            assert_eq!(applied, expected, "each write of the group gets its lone answer");
        }
    }
    // Sanity: the mix holds each kind of outcome.
    let outcomes: Vec<&Outcome> = expected
        .iter()
        .map(|applied| match applied {
            Applied::Write { outcome, .. } => outcome,
            other => panic!("{other:?}"),
        })
        .collect();
    assert!(outcomes.iter().any(|outcome| matches!(outcome, Outcome::Refused(_))), "{outcomes:?}");
    assert!(outcomes.iter().filter(|outcome| matches!(outcome, Outcome::Done(_))).count() >= 5, "{outcomes:?}");
    // The same state, sessions and cached answers included, at the same index.
    assert_eq!(alone.machine.sessions(), grouped.machine.sessions());
    assert_eq!(alone.machine.app.get(b"a"), Some(&b"2"[..]), "the retry was not applied again");
    assert_eq!(alone.machine.app.get(b"a"), grouped.machine.app.get(b"a"));
    assert_eq!(alone.machine.app.get(b"n"), grouped.machine.app.get(b"n"));
    assert_eq!(alone.machine.app.len(), grouped.machine.app.len());
    assert!(grouped.index < alone.index, "the group took one index for seven writes");
}

#[test]
fn a_lone_write_is_its_own_envelope_and_a_split_group_gives_each_envelope() {
    let mut builder = GroupBuilder::default();
    let mut kept = Vec::new();
    // Many rounds through one builder: later groups never overwrite earlier
    // ones (they are carved from shared buffers).
    for round in 0..300u64 {
        let commands: Vec<Vec<u8>> = (0..=round % 5).map(|at| vec![at as u8; (round as usize * 31) % 900]).collect();
        let writes: Vec<Write<'_>> = commands
            .iter()
            .enumerate()
            .map(|(at, command)| Write { client_id: round + 1, sequence: at as u64 + 1, ack: 1, command })
            .collect();
        writes.iter().for_each(|write| builder.push(write));
        assert_eq!(builder.count() as usize, writes.len());
        let split = round % 2 == 0;
        let entries = builder.finish(split);
        assert_eq!(builder.count(), 0);
        let envelopes: Vec<Bytes> = writes.iter().map(Write::encode).collect();
        if split || writes.len() == 1 {
            assert_eq!(entries, envelopes, "round {round}");
        } else {
            assert_eq!(entries.len(), 1);
            let inside: Vec<Bytes> = group_writes(&entries[0]).map(Bytes::copy_from_slice).collect();
            assert_eq!(inside, envelopes, "round {round}");
            assert_eq!(u32::from_le_bytes(entries[0][1..GROUP_HEADER_SIZE].try_into().unwrap()), writes.len() as u32);
        }
        kept.push((entries, envelopes));
    }
    for (round, (entries, envelopes)) in kept.iter().enumerate() {
        let inside: Vec<Bytes> = if entries.len() == 1 && entries[0][0] == GROUP_FORMAT {
            group_writes(&entries[0]).map(Bytes::copy_from_slice).collect()
        } else {
            entries.clone()
        };
        assert_eq!(&inside, envelopes, "round {round} was overwritten");
    }
    assert!(builder.finish(false).is_empty(), "an empty builder proposes nothing");
}

#[test]
fn a_damaged_group_is_refused_alike_and_changes_only_what_it_could_read() {
    let commands = [put("a", "1"), put("b", "2"), put("c", "3")];
    let writes: Vec<Write<'_>> =
        commands.iter().map(|command| Write { client_id: 0, sequence: 0, ack: 0, command }).collect();
    let mut builder = GroupBuilder::default();
    writes.iter().for_each(|write| builder.push(write));
    let group = builder.finish(false).remove(0);
    // Cut inside the third write: the first two apply, the third is malformed.
    let cut = group.slice(..group.len() - 3);
    let mut replica = Replica::new();
    let Applied::Group(applied) = replica.apply(&cut) else { panic!("a cut group is still a group") };
    assert_eq!(applied.len(), 3);
    assert!(matches!(applied[0], Applied::Write { outcome: Outcome::Done(_), .. }));
    assert!(matches!(applied[1], Applied::Write { outcome: Outcome::Done(_), .. }));
    assert!(
        matches!(&applied[2], Applied::Write { outcome: Outcome::Malformed(reason), .. } if reason.contains("group"))
    );
    assert_eq!(replica.machine.app.get(b"b"), Some(&b"2"[..]));
    assert_eq!(replica.machine.app.get(b"c"), None);
    // A count its bytes cannot hold, or no count at all: one malformed write,
    // nothing applied, nothing allocated for the claimed count.
    let mut huge = BytesMut::from(&group[..]);
    huge[1..GROUP_HEADER_SIZE].copy_from_slice(&u32::MAX.to_le_bytes());
    for bad in [&huge[..], &[GROUP_FORMAT][..], &[GROUP_FORMAT, 1, 0][..]] {
        let mut replica = Replica::new();
        let applied = replica.apply(bad);
        assert!(matches!(applied, Applied::Write { outcome: Outcome::Malformed(_), .. }), "{applied:?}");
        assert_eq!(replica.machine.app.len(), 0);
    }
}

#[test]
fn a_leader_groups_only_once_every_member_that_applies_payloads_reads_groups() {
    let mut replica = Replica::new();
    let conf = ConfState { voters: vec![1, 2, 3], learners: vec![4], witnesses: vec![3], ..ConfState::default() };
    assert!(!replica.machine.all_read_groups(&conf));
    for id in [1, 2] {
        assert!(matches!(replica.apply(&NodeCommand::ReadsGroups { id }.encode()), Applied::Node(Ok(()))));
        assert!(replica.machine.reads_groups(id));
    }
    assert!(!replica.machine.all_read_groups(&conf), "learner 4 has not said so (an older build)");
    replica.apply(&NodeCommand::ReadsGroups { id: 4 }.encode());
    assert!(replica.machine.all_read_groups(&conf), "witness 3 applies no payloads, so it does not count");
    let joint = ConfState { voters_outgoing: vec![5], ..conf.clone() };
    assert!(!replica.machine.all_read_groups(&joint), "the outgoing half counts too");
    assert_eq!(
        NodeCommand::decode(&NodeCommand::ReadsGroups { id: 7 }.encode()),
        Some(NodeCommand::ReadsGroups { id: 7 })
    );
}

proptest! {
    #[test]
    fn groups_of_any_bytes_never_panic_and_keep_the_sessions_whole(
        bytes in proptest::collection::vec(any::<u8>(), 0..200)
    ) {
        let mut replica = Replica::new();
        replica.open();
        let mut group = vec![GROUP_FORMAT];
        group.extend_from_slice(&bytes);
        let _ = replica.apply(&group);
        let _ = group_writes(&group).count();
        prop_assert_eq!(replica.machine.check_invariants(), Ok(()));
    }
}
