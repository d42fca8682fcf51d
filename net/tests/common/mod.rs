//! Strategies shared by the codec tests: every frame payload the protocol has.

#![allow(dead_code)]

use bytes::Bytes;
use engine::{
    AppendRequest, AppendResponse, ConfState, Entry, EntryBatch, EntryKind, Message, MessageBody, SnapshotChunk,
    SnapshotMeta, VoteRequest,
};
use net::{
    AdminRequest, ClientRequest, ClientResponse, Frame, Handshake, HandshakeAccept, HandshakeRefusal, History, Payload,
    ReadConsistency, RefusalReason, RequestBody, ResponseStatus, Role,
};
use proptest::prelude::*;

pub fn bytes(max: usize) -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

fn text(max: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(any::<char>(), 0..max).prop_map(|chars| chars.into_iter().collect())
}

fn entry_kind() -> impl Strategy<Value = EntryKind> {
    prop_oneof![Just(EntryKind::Normal), Just(EntryKind::Config), Just(EntryKind::Noop)]
}

pub fn batch() -> impl Strategy<Value = EntryBatch> {
    (1u64..u64::MAX / 2, 0u64..1000, proptest::collection::vec((entry_kind(), bytes(300), 0u64..2), 1..12)).prop_map(
        |(first, term, specs)| {
            let mut current_term = term;
            let entries: Vec<Entry> = specs
                .into_iter()
                .enumerate()
                .map(|(position, (kind, data, bump))| {
                    current_term += bump;
                    Entry { index: first + position as u64, term: current_term, kind, data }
                })
                .collect();
            EntryBatch::encode(&entries)
        },
    )
}

fn vote() -> impl Strategy<Value = VoteRequest> {
    (any::<u64>(), any::<u64>(), any::<bool>(), any::<u64>()).prop_map(
        |(last_log_index, last_log_term, transfer, commit)| VoteRequest {
            last_log_index,
            last_log_term,
            transfer,
            commit,
        },
    )
}

fn ids() -> impl Strategy<Value = Vec<u64>> {
    proptest::collection::vec(any::<u64>(), 0..8)
}

pub fn message_body() -> impl Strategy<Value = MessageBody> {
    prop_oneof![
        vote().prop_map(MessageBody::PreVote),
        any::<bool>().prop_map(|granted| MessageBody::PreVoteResponse { granted }),
        vote().prop_map(MessageBody::Vote),
        any::<bool>().prop_map(|granted| MessageBody::VoteResponse { granted }),
        (any::<u64>(), any::<u64>(), any::<u64>(), proptest::option::of(batch())).prop_map(
            |(prev_index, prev_term, commit, entries)| MessageBody::Append(AppendRequest {
                prev_index,
                prev_term,
                commit,
                entries
            })
        ),
        (any::<u64>(), any::<bool>(), any::<u64>(), any::<u64>(), any::<bool>(), any::<bool>(), any::<bool>())
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
        (any::<u64>(), any::<u64>()).prop_map(|(commit, read_context)| MessageBody::Heartbeat { commit, read_context }),
        any::<u64>().prop_map(|read_context| MessageBody::HeartbeatResponse { read_context }),
        (any::<u64>(), any::<u64>(), ids(), ids(), ids(), ids(), any::<u64>(), bytes(600), any::<bool>()).prop_map(
            |(index, term, voters, voters_outgoing, learners, witnesses, offset, data, done)| {
                MessageBody::InstallSnapshot(SnapshotChunk {
                    meta: SnapshotMeta {
                        index,
                        term,
                        conf: ConfState { voters, voters_outgoing, learners, witnesses },
                    },
                    offset,
                    data,
                    done,
                })
            }
        ),
        (any::<u64>(), any::<u64>(), any::<u64>(), any::<bool>()).prop_map(|(index, term, next_offset, rejected)| {
            MessageBody::InstallSnapshotResponse { index, term, next_offset, rejected }
        }),
        Just(MessageBody::TimeoutNow),
        any::<u64>().prop_map(|context| MessageBody::ReadIndex { context }),
        (any::<u64>(), any::<u64>()).prop_map(|(context, index)| MessageBody::ReadIndexResponse { context, index }),
        bytes(600).prop_map(|command| MessageBody::Propose { command }),
    ]
}

pub fn message() -> impl Strategy<Value = Message> {
    (any::<u64>(), any::<u64>(), any::<u64>(), message_body()).prop_map(|(from, to, term, body)| Message {
        from,
        to,
        term,
        body,
    })
}

fn consistency() -> impl Strategy<Value = ReadConsistency> {
    prop_oneof![
        Just(ReadConsistency::NodeDefault),
        Just(ReadConsistency::Linearizable),
        Just(ReadConsistency::Lease),
        Just(ReadConsistency::Stale)
    ]
}

fn admin() -> impl Strategy<Value = AdminRequest> {
    prop_oneof![
        (1u64.., text(40)).prop_map(|(id, addr)| AdminRequest::AddLearner { id, addr }),
        (1u64..).prop_map(|id| AdminRequest::Promote { id }),
        (1u64.., text(40)).prop_map(|(id, addr)| AdminRequest::AddWitness { id, addr }),
        (1u64..).prop_map(|id| AdminRequest::Remove { id }),
        (1u64..).prop_map(|id| AdminRequest::TransferLeader { id }),
        Just(AdminRequest::TakeSnapshot),
        Just(AdminRequest::Stats),
        any::<u64>().prop_map(|at_least| AdminRequest::BackupBegin { at_least }),
        (any::<u64>(), any::<u64>(), 1..=net::BACKUP_CHUNK_BYTES_MAX)
            .prop_map(|(index, offset, len)| AdminRequest::BackupChunk { index, offset, len }),
        (any::<u64>(), any::<u64>(), "[0-9.:]{1,21}", "[0-9.:]{1,21}", any::<bool>()).prop_map(
            |(id, nonce, peer_addr, client_addr, witness)| {
                AdminRequest::Join(net::JoinRequest { id, nonce, peer_addr, client_addr, witness })
            }
        ),
        (any::<u32>(), any::<u64>(), any::<u32>(), any::<u32>()).prop_map(
            |(sessions_max, timeout_ms, replies_max, reply_bytes_max)| {
                AdminRequest::SessionSettings(net::SessionSettings {
                    sessions_max,
                    timeout_ms,
                    replies_max,
                    reply_bytes_max,
                })
            }
        ),
    ]
}

pub fn request() -> impl Strategy<Value = ClientRequest> {
    let body = prop_oneof![
        bytes(300).prop_map(|command| RequestBody::Write { command }),
        (bytes(100), consistency()).prop_map(|(query, consistency)| RequestBody::Read { query, consistency }),
        admin().prop_map(RequestBody::Admin),
        Just(RequestBody::Status),
        Just(RequestBody::OpenSession),
        Just(RequestBody::CloseSession),
    ];
    (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>(), body).prop_map(
        |(request_id, client_id, sequence, ack, body)| ClientRequest { request_id, client_id, sequence, ack, body },
    )
}

pub fn response() -> impl Strategy<Value = ClientResponse> {
    // `NotLeader` spells "unknown" as `None`, never as id 0 or an empty address.
    let status = prop_oneof![
        bytes(300).prop_map(ResponseStatus::Ok),
        (proptest::option::of(1u64..), proptest::option::of(text(30).prop_filter("non-empty", |s| !s.is_empty())))
            .prop_map(|(leader_id, leader_addr)| ResponseStatus::NotLeader { leader_id, leader_addr }),
        Just(ResponseStatus::Busy),
        Just(ResponseStatus::TimedOut),
        Just(ResponseStatus::SessionExpired),
        text(60).prop_map(ResponseStatus::BadRequest),
        text(60).prop_map(ResponseStatus::SessionFull),
        text(60).prop_map(ResponseStatus::Forbidden),
    ];
    (any::<u64>(), status).prop_map(|(request_id, status)| ClientResponse { request_id, status })
}

fn refusal_reason() -> impl Strategy<Value = RefusalReason> {
    prop_oneof![
        Just(RefusalReason::ClusterMismatch),
        Just(RefusalReason::VersionUnsupported),
        Just(RefusalReason::BadToken),
        Just(RefusalReason::RoleNotAccepted),
        Just(RefusalReason::Malformed),
        Just(RefusalReason::TlsRequired),
        Just(RefusalReason::TlsUnavailable),
        Just(RefusalReason::IdentityMismatch),
        Just(RefusalReason::Overloaded),
        Just(RefusalReason::OtherHistory),
        Just(RefusalReason::Removed),
    ]
}

pub fn payload() -> impl Strategy<Value = Payload> {
    prop_oneof![
        1 => (
            any::<u64>(),
            any::<u64>(),
            prop_oneof![Just(Role::Peer), Just(Role::Client)],
            any::<u16>(),
            bytes(64),
            prop_oneof![Just(0), any::<u64>()]
        )
            .prop_map(|(cluster_id, node_id, role, protocol_version, token, history)| Payload::Handshake(Handshake {
                cluster_id,
                node_id,
                role,
                protocol_version,
                token,
                history: History(history),
            })),
        1 => (any::<u64>(), any::<u16>(), any::<u32>()).prop_map(|(node_id, protocol_version, shards)| {
            Payload::HandshakeAccept(HandshakeAccept { node_id, protocol_version, shards })
        }),
        1 => (refusal_reason(), text(60)).prop_map(|(reason, message)| Payload::HandshakeRefuse(HandshakeRefusal {
            reason,
            message
        })),
        4 => message().prop_map(Payload::Raft),
        2 => request().prop_map(Payload::Request),
        2 => response().prop_map(Payload::Response),
    ]
}

pub fn frame() -> impl Strategy<Value = Frame> {
    (any::<u64>(), any::<u32>(), payload()).prop_map(|(cluster_id, shard_id, payload)| Frame {
        cluster_id,
        shard_id,
        payload,
    })
}
