//! Every frame kind survives encode then decode unchanged, through both the
//! contiguous decoder and the streaming one, and decoding borrows payloads.

mod common;

use std::collections::HashSet;

use bytes::{Bytes, BytesMut};
use engine::{AppendRequest, Entry, EntryBatch, EntryKind, Message, MessageBody};
use net::frame::split_frame;
use net::{Frame, FrameKind, Limits, Payload};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;

fn round_trip(frame: &Frame) -> Result<(), TestCaseError> {
    let bytes = frame.to_bytes();
    let (decoded, length) =
        Frame::decode_bytes(&bytes, &Limits::default()).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(length, bytes.len());
    prop_assert_eq!(&decoded, frame);

    // The head-plus-tail encoding the transport uses gives the same bytes.
    let mut head = BytesMut::new();
    let tail = frame.encode_into(&mut head);
    head.extend_from_slice(&tail);
    prop_assert_eq!(&head[..], &bytes[..]);

    // The streaming decoder, fed the frame twice in one buffer.
    let mut stream = BytesMut::new();
    stream.extend_from_slice(&bytes);
    stream.extend_from_slice(&bytes);
    for _ in 0..2 {
        let raw = split_frame(&mut stream, &Limits::default()).unwrap().expect("a whole frame is buffered");
        prop_assert_eq!(&Frame::decode(raw).unwrap(), frame);
    }
    prop_assert!(stream.is_empty());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_frame_round_trips(frame in common::frame()) {
        round_trip(&frame)?;
    }

    #[test]
    fn raft_messages_round_trip(message in common::message(), cluster_id in any::<u64>(), shard_id in any::<u32>()) {
        round_trip(&Frame { cluster_id, shard_id, payload: Payload::Raft(message) })?;
    }
}

/// The generators reach every frame kind, so the property above covers them all.
#[test]
fn generators_cover_every_frame_kind() {
    let mut runner = TestRunner::deterministic();
    let strategy = common::frame();
    let mut seen = HashSet::new();
    for _ in 0..5000 {
        let frame = strategy.new_tree(&mut runner).unwrap().current();
        seen.insert(frame.payload.kind());
    }
    let missing: Vec<FrameKind> = FrameKind::ALL.iter().copied().filter(|kind| !seen.contains(kind)).collect();
    assert!(missing.is_empty(), "kinds never generated: {missing:?}");
}

/// AppendEntries carries the engine's batch byte for byte, and the decoded
/// entries' payloads point into the receive buffer.
#[test]
fn append_entries_carry_the_batch_unchanged_and_borrow_payloads() {
    let entries: Vec<Entry> = (0..8)
        .map(|i| Entry { index: 10 + i, term: 3, kind: EntryKind::Normal, data: Bytes::from(vec![i as u8; 100]) })
        .collect();
    let batch = EntryBatch::encode(&entries);
    let message = Message {
        from: 1,
        to: 2,
        term: 3,
        body: MessageBody::Append(AppendRequest {
            prev_index: 9,
            prev_term: 3,
            commit: 9,
            entries: Some(batch.clone()),
        }),
    };
    let bytes = Frame { cluster_id: 1, shard_id: 0, payload: Payload::Raft(message) }.to_bytes();
    // The batch bytes appear unchanged at the end of the frame.
    assert_eq!(&bytes[bytes.len() - batch.len_bytes()..], &batch.as_bytes()[..]);
    let (frame, _) = Frame::decode_bytes(&bytes, &Limits::default()).unwrap();
    let Payload::Raft(Message { body: MessageBody::Append(append), .. }) = frame.payload else {
        panic!("not an append")
    };
    let received = append.entries.unwrap();
    assert_eq!(received.as_bytes(), batch.as_bytes());
    let range = bytes.as_ptr() as usize..bytes.as_ptr() as usize + bytes.len();
    assert!(range.contains(&(received.as_bytes().as_ptr() as usize)), "the batch was copied");
    for entry in received.entries() {
        assert!(range.contains(&(entry.data.as_ptr() as usize)), "entry {} was copied", entry.index);
    }
}

/// The worked example and the crc check value in PROTOCOL.md match the code.
#[test]
fn protocol_md_example_is_what_the_code_writes() {
    assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
    let message = Message { from: 1, to: 2, term: 5, body: MessageBody::Heartbeat { commit: 3, read_context: 0 } };
    let bytes = Frame { cluster_id: 42, shard_id: 0, payload: Payload::Raft(message) }.to_bytes();
    let header_prefix: [u8; 24] =
        [0x52, 0x4e, 0x45, 0x54, 0x02, 0x16, 0x00, 0x00, 0x2a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x28, 0, 0, 0];
    assert_eq!(&bytes[..24], &header_prefix);
    let mut body = Vec::new();
    for value in [1u64, 2, 5, 3, 0] {
        body.extend_from_slice(&value.to_le_bytes());
    }
    assert_eq!(&bytes[32..], &body[..]);
    assert_eq!(&bytes[24..28], &crc32c::crc32c(&body).to_le_bytes());
    assert_eq!(&bytes[28..32], &crc32c::crc32c(&bytes[..28]).to_le_bytes());
}

/// A batch whose stored crc is wrong is refused even when the frame's crc is
/// right (the batch crc goes to disk; the frame crc does not).
#[test]
fn a_batch_with_a_wrong_stored_crc_is_refused_inside_a_valid_frame() {
    let entries = [Entry { index: 1, term: 1, kind: EntryKind::Normal, data: Bytes::from_static(b"payload") }];
    let batch = EntryBatch::encode(&entries);
    let message = Message {
        from: 1,
        to: 2,
        term: 1,
        body: MessageBody::Append(AppendRequest {
            prev_index: 0,
            prev_term: 0,
            commit: 0,
            entries: Some(batch.clone()),
        }),
    };
    let mut raw = Frame { cluster_id: 1, shard_id: 0, payload: Payload::Raft(message) }.to_bytes().to_vec();
    let batch_start = raw.len() - batch.len_bytes();
    raw[batch_start] ^= 0x01; // the batch's stored crc
    let body_crc = crc32c::crc32c(&raw[32..]);
    raw[24..28].copy_from_slice(&body_crc.to_le_bytes());
    let header_crc = crc32c::crc32c(&raw[..28]);
    raw[28..32].copy_from_slice(&header_crc.to_le_bytes());
    let err = Frame::decode_bytes(&Bytes::from(raw), &Limits::default()).unwrap_err();
    assert!(matches!(err, net::DecodeError::BadField { field: "entries", .. }), "{err}");
}

/// A vote request from a build before the commit field (its body ends after
/// the reserved bytes) still decodes, as commit 0, so that such a node's
/// candidates keep their votes during a rolling upgrade.
#[test]
fn a_vote_request_without_the_commit_field_decodes_as_commit_zero() {
    let request = engine::VoteRequest { last_log_index: 9, last_log_term: 4, transfer: true, commit: 7 };
    let message = Message { from: 1, to: 2, term: 5, body: MessageBody::Vote(request) };
    let mut raw = Frame { cluster_id: 1, shard_id: 0, payload: Payload::Raft(message) }.to_bytes().to_vec();
    assert_eq!(raw.len(), 32 + 24 + 24 + 8, "header, message head, vote body, commit");
    raw.truncate(raw.len() - 8);
    let body_length = (raw.len() - 32) as u32;
    raw[20..24].copy_from_slice(&body_length.to_le_bytes());
    let body_crc = crc32c::crc32c(&raw[32..]);
    raw[24..28].copy_from_slice(&body_crc.to_le_bytes());
    let header_crc = crc32c::crc32c(&raw[..28]);
    raw[28..32].copy_from_slice(&header_crc.to_le_bytes());
    let (frame, _) = Frame::decode_bytes(&Bytes::from(raw), &Limits::default()).expect("an older sender's vote");
    let Payload::Raft(decoded) = frame.payload else { panic!("a Raft message") };
    assert_eq!(decoded.body, MessageBody::Vote(engine::VoteRequest { commit: 0, ..request }));
}
