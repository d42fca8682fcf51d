//! Bad input never panics the engine nor breaks an invariant: messages from
//! unknown nodes, from past and future terms, with indices before or beyond
//! the log, duplicated, reordered, in every role. Proptest drives arbitrary
//! messages into nodes of a live cluster; `PROPTEST_CASES` makes it longer.

use bytes::Bytes;
use engine::message::{AppendRequest, AppendResponse, MessageBody, SnapshotChunk, VoteRequest};
use engine::testing::Cluster;
use engine::{ConfState, Entry, EntryBatch, EntryKind, Message, ReadMode, SnapshotMeta};
use proptest::prelude::*;

fn batch(first: u64, terms: Vec<u64>) -> Option<EntryBatch> {
    if terms.is_empty() || first == 0 {
        return None;
    }
    let mut sorted = terms;
    sorted.sort_unstable();
    let entries: Vec<Entry> = sorted
        .into_iter()
        .enumerate()
        .map(|(i, term)| Entry {
            index: first + i as u64,
            term,
            kind: EntryKind::Normal,
            data: Bytes::from_static(b"z"),
        })
        .collect();
    Some(EntryBatch::encode(&entries))
}

fn any_body() -> impl Strategy<Value = MessageBody> {
    let index = prop_oneof![0u64..12, Just(u64::MAX), Just(u64::MAX - 1)];
    let term = prop_oneof![0u64..8, Just(u64::MAX)];
    prop_oneof![
        (index.clone(), term.clone(), any::<bool>(), index.clone()).prop_map(|(i, t, transfer, commit)| {
            MessageBody::PreVote(VoteRequest { last_log_index: i, last_log_term: t, transfer, commit })
        }),
        (index.clone(), term.clone(), any::<bool>(), index.clone()).prop_map(|(i, t, transfer, commit)| {
            MessageBody::Vote(VoteRequest { last_log_index: i, last_log_term: t, transfer, commit })
        }),
        any::<bool>().prop_map(|granted| MessageBody::PreVoteResponse { granted }),
        any::<bool>().prop_map(|granted| MessageBody::VoteResponse { granted }),
        (0u64..12, 0u64..6, index.clone(), 1u64..12, proptest::collection::vec(0u64..6, 0..4)).prop_map(
            |(prev_index, prev_term, commit, first, terms)| {
                let entries = batch(prev_index + 1, terms).filter(|_| first > 0);
                MessageBody::Append(AppendRequest { prev_index, prev_term, commit, entries })
            }
        ),
        (index.clone(), any::<bool>(), index.clone(), term.clone(), any::<bool>(), any::<bool>(), any::<bool>())
            .prop_map(|(index, reject, hint_index, hint_term, missing, no_space, applying)| {
                MessageBody::AppendResponse(AppendResponse {
                    index,
                    reject,
                    hint_index,
                    hint_term,
                    missing,
                    no_space,
                    applying,
                })
            }),
        (index.clone(), 0u64..20).prop_map(|(commit, read_context)| MessageBody::Heartbeat { commit, read_context }),
        prop_oneof![0u64..20, Just(u64::MAX)].prop_map(|read_context| MessageBody::HeartbeatResponse { read_context }),
        Just(MessageBody::TimeoutNow),
        (0u64..5).prop_map(|context| MessageBody::ReadIndex { context }),
        (0u64..5, index.clone()).prop_map(|(context, index)| MessageBody::ReadIndexResponse { context, index }),
        Just(MessageBody::Propose { command: Bytes::from_static(b"forwarded") }),
        (index.clone(), term.clone(), 0u64..100, any::<bool>()).prop_map(|(i, t, offset, done)| {
            MessageBody::InstallSnapshot(SnapshotChunk {
                meta: SnapshotMeta { index: i, term: t, conf: ConfState::new([1, 2, 3], []) },
                offset,
                data: Bytes::from_static(b"snap"),
                done,
            })
        }),
        (index.clone(), term, 0u64..100, any::<bool>()).prop_map(|(index, term, next_offset, rejected)| {
            MessageBody::InstallSnapshotResponse { index, term, next_offset, rejected }
        }),
    ]
}

fn any_message() -> impl Strategy<Value = (u64, u64, u64, MessageBody)> {
    (0u64..6, 1u64..4, prop_oneof![0u64..8, Just(u64::MAX - 1)], any_body())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(512),
        ..ProptestConfig::default()
    })]

    #[test]
    fn arbitrary_messages_never_break_the_engine(
        setup in 0u8..4,
        messages in proptest::collection::vec(any_message(), 1..40),
    ) {
        let mut cluster = Cluster::with_voters(3, u64::from(setup));
        // Put nodes in different roles: fresh, leader with entries, a
        // candidate, a partitioned stale leader.
        match setup {
            0 => {}
            1 => {
                cluster.elect(1);
                for i in 0..5 {
                    cluster.raft(1).propose(Bytes::from(format!("p{i}"))).unwrap();
                }
                cluster.stabilize();
            }
            2 => {
                cluster.raft(2).campaign();
                cluster.process_ready(2);
            }
            _ => {
                cluster.elect(1);
                cluster.isolate(1);
                let _ = cluster.raft(1).propose(Bytes::from_static(b"lost"));
                for _ in 0..10 {
                    cluster.raft(3).tick();
                }
                cluster.raft(2).campaign();
                cluster.stabilize();
                let _ = cluster.raft(1).read_index(9, ReadMode::ReadIndex);
            }
        }
        for (from, to, term, body) in messages {
            let message = Message { from, to, term, body };
            cluster.deliver(message.clone());
            cluster.deliver(message); // duplicated
            for id in 1..=3 {
                cluster.process_ready(id);
                cluster.node(id).raft.check_invariants();
            }
        }
        // The cluster still works for honest traffic afterwards... unless a
        // forged message made nodes believe nonsense; it must not panic.
        for _ in 0..30 {
            cluster.tick_all();
            cluster.stabilize();
        }
    }
}
