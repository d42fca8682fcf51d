//! Bodies of the Raft message frames. Every body opens with [`MessageHead`]
//! (from, to, term); the kind-specific fields follow. AppendEntries ends with
//! the entry batch exactly as the engine encoded it, so a follower can write
//! the received bytes to its log unchanged.

use bytes::{BufMut, Bytes, BytesMut};
use engine::{
    AppendRequest, AppendResponse, ConfState, EntryBatch, Message, MessageBody, SnapshotChunk, SnapshotMeta,
    VoteRequest,
};
use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::BodyReader;
use crate::error::DecodeError;
use crate::frame::FrameKind;

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub(crate) struct MessageHead {
    from: U64,
    to: U64,
    term: U64,
}

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct VoteBody {
    last_log_index: U64,
    last_log_term: U64,
    transfer: u8,
    reserved: [u8; 7],
}

/// Follows a [`VoteBody`]: the candidate's commit index (see
/// `VoteRequest::commit`). A build from before it sends a vote body
/// without it, read as commit 0 (which helps no replica in repair to vote).
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct VoteCommitBody {
    commit: U64,
}

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct GrantBody {
    granted: u8,
    reserved: [u8; 7],
}

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct AppendBody {
    prev_index: U64,
    prev_term: U64,
    commit: U64,
}

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct AppendResponseBody {
    index: U64,
    hint_index: U64,
    hint_term: U64,
    reject: u8,
    missing: u8,
    /// The follower's disk is full (see `AppendResponse::no_space`). Was
    /// reserved (zero) before: a node from before it refuses a message that
    /// sets it, so a mixed cluster is upgraded followers first (README).
    no_space: u8,
    /// With `no_space`: the follower refuses while it applies (see
    /// `AppendResponse::applying`). Reserved before, as `no_space` was.
    applying: u8,
    reserved: [u8; 4],
}

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct HeartbeatBody {
    commit: U64,
    read_context: U64,
}

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct ContextBody {
    context: U64,
}

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct ReadIndexResponseBody {
    context: U64,
    index: U64,
}

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct SnapshotBody {
    index: U64,
    term: U64,
    offset: U64,
    voters_count: U32,
    voters_outgoing_count: U32,
    learners_count: U32,
    done: u8,
    /// Witness ids, after the learners (0 from a build without witnesses).
    witnesses_count: u8,
    reserved: [u8; 2],
}

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct SnapshotResponseBody {
    index: U64,
    term: U64,
    next_offset: U64,
    rejected: u8,
    reserved: [u8; 7],
}

const _: () = assert!(size_of::<MessageHead>() == 24);
const _: () = assert!(size_of::<VoteBody>() == 24);
const _: () = assert!(size_of::<VoteCommitBody>() == 8);
const _: () = assert!(size_of::<GrantBody>() == 8);
const _: () = assert!(size_of::<AppendBody>() == 24);
const _: () = assert!(size_of::<AppendResponseBody>() == 32);
const _: () = assert!(size_of::<HeartbeatBody>() == 16);
const _: () = assert!(size_of::<ContextBody>() == 8);
const _: () = assert!(size_of::<ReadIndexResponseBody>() == 16);
const _: () = assert!(size_of::<SnapshotBody>() == 40);
const _: () = assert!(size_of::<SnapshotResponseBody>() == 32);

/// The frame kind of a message.
pub(crate) fn kind_of(message: &Message) -> FrameKind {
    match &message.body {
        MessageBody::PreVote(_) => FrameKind::PreVote,
        MessageBody::PreVoteResponse { .. } => FrameKind::PreVoteResponse,
        MessageBody::Vote(_) => FrameKind::Vote,
        MessageBody::VoteResponse { .. } => FrameKind::VoteResponse,
        MessageBody::Append(_) => FrameKind::Append,
        MessageBody::AppendResponse(_) => FrameKind::AppendResponse,
        MessageBody::Heartbeat { .. } => FrameKind::Heartbeat,
        MessageBody::HeartbeatResponse { .. } => FrameKind::HeartbeatResponse,
        MessageBody::InstallSnapshot(_) => FrameKind::InstallSnapshot,
        MessageBody::InstallSnapshotResponse { .. } => FrameKind::InstallSnapshotResponse,
        MessageBody::TimeoutNow => FrameKind::TimeoutNow,
        MessageBody::ReadIndex { .. } => FrameKind::ReadIndex,
        MessageBody::ReadIndexResponse { .. } => FrameKind::ReadIndexResponse,
        MessageBody::Propose { .. } => FrameKind::Propose,
    }
}

fn list_count(list: &[u64]) -> U32 {
    U32::new(u32::try_from(list.len()).expect("membership list over u32::MAX"))
}

fn put_list(out: &mut BytesMut, list: &[u64]) {
    for id in list {
        out.put_u64_le(*id);
    }
}

/// The crc32c of the message's tail when it is known without reading the
/// tail: an entry batch stores the crc of its bytes 4.., so the crc of the
/// whole batch is that combined with the crc of its first four bytes.
pub(crate) fn tail_crc(message: &Message) -> Option<u32> {
    let MessageBody::Append(AppendRequest { entries: Some(batch), .. }) = &message.body else {
        return None;
    };
    let bytes = batch.as_bytes();
    Some(crate::crc::combine(crc32c::crc32c(&bytes[..4]), batch.crc(), bytes.len() - 4))
}

/// Writes the body's head into `out` and returns its zero-copy tail.
pub(crate) fn encode_body(message: &Message, out: &mut BytesMut) -> Bytes {
    let head = MessageHead { from: U64::new(message.from), to: U64::new(message.to), term: U64::new(message.term) };
    out.put_slice(head.as_bytes());
    match &message.body {
        MessageBody::PreVote(vote) | MessageBody::Vote(vote) => {
            let body = VoteBody {
                last_log_index: U64::new(vote.last_log_index),
                last_log_term: U64::new(vote.last_log_term),
                transfer: u8::from(vote.transfer),
                reserved: [0; 7],
            };
            out.put_slice(body.as_bytes());
            out.put_slice(VoteCommitBody { commit: U64::new(vote.commit) }.as_bytes());
            Bytes::new()
        }
        MessageBody::PreVoteResponse { granted } | MessageBody::VoteResponse { granted } => {
            out.put_slice(GrantBody { granted: u8::from(*granted), reserved: [0; 7] }.as_bytes());
            Bytes::new()
        }
        MessageBody::Append(append) => {
            let body = AppendBody {
                prev_index: U64::new(append.prev_index),
                prev_term: U64::new(append.prev_term),
                commit: U64::new(append.commit),
            };
            out.put_slice(body.as_bytes());
            append.entries.as_ref().map(|batch| batch.as_bytes().clone()).unwrap_or_default()
        }
        MessageBody::AppendResponse(response) => {
            let body = AppendResponseBody {
                index: U64::new(response.index),
                hint_index: U64::new(response.hint_index),
                hint_term: U64::new(response.hint_term),
                reject: u8::from(response.reject),
                missing: u8::from(response.missing),
                no_space: u8::from(response.no_space),
                applying: u8::from(response.applying),
                reserved: [0; 4],
            };
            out.put_slice(body.as_bytes());
            Bytes::new()
        }
        MessageBody::Heartbeat { commit, read_context } => {
            let body = HeartbeatBody { commit: U64::new(*commit), read_context: U64::new(*read_context) };
            out.put_slice(body.as_bytes());
            Bytes::new()
        }
        MessageBody::HeartbeatResponse { read_context } => {
            out.put_slice(ContextBody { context: U64::new(*read_context) }.as_bytes());
            Bytes::new()
        }
        MessageBody::InstallSnapshot(chunk) => {
            let conf = &chunk.meta.conf;
            let body = SnapshotBody {
                index: U64::new(chunk.meta.index),
                term: U64::new(chunk.meta.term),
                offset: U64::new(chunk.offset),
                voters_count: list_count(&conf.voters),
                voters_outgoing_count: list_count(&conf.voters_outgoing),
                learners_count: list_count(&conf.learners),
                done: u8::from(chunk.done),
                witnesses_count: u8::try_from(conf.witnesses.len()).expect("witnesses are voters: a few"),
                reserved: [0; 2],
            };
            out.put_slice(body.as_bytes());
            put_list(out, &conf.voters);
            put_list(out, &conf.voters_outgoing);
            put_list(out, &conf.learners);
            put_list(out, &conf.witnesses);
            chunk.data.clone()
        }
        MessageBody::InstallSnapshotResponse { index, term, next_offset, rejected } => {
            let body = SnapshotResponseBody {
                index: U64::new(*index),
                term: U64::new(*term),
                next_offset: U64::new(*next_offset),
                rejected: u8::from(*rejected),
                reserved: [0; 7],
            };
            out.put_slice(body.as_bytes());
            Bytes::new()
        }
        MessageBody::TimeoutNow => Bytes::new(),
        MessageBody::ReadIndex { context } => {
            out.put_slice(ContextBody { context: U64::new(*context) }.as_bytes());
            Bytes::new()
        }
        MessageBody::ReadIndexResponse { context, index } => {
            let body = ReadIndexResponseBody { context: U64::new(*context), index: U64::new(*index) };
            out.put_slice(body.as_bytes());
            Bytes::new()
        }
        MessageBody::Propose { command } => command.clone(),
    }
}

fn decode_vote(reader: &mut BodyReader<'_>) -> Result<VoteRequest, DecodeError> {
    let body = reader.fixed::<VoteBody>()?;
    reader.reserved(&body.reserved)?;
    let transfer = reader.flag(body.transfer, "transfer")?;
    // A sender from before the commit field ends the body here.
    let commit = if reader.remaining() == 0 { 0 } else { reader.fixed::<VoteCommitBody>()?.commit.get() };
    Ok(VoteRequest {
        last_log_index: body.last_log_index.get(),
        last_log_term: body.last_log_term.get(),
        transfer,
        commit,
    })
}

fn decode_grant(reader: &mut BodyReader<'_>) -> Result<bool, DecodeError> {
    let body = reader.fixed::<GrantBody>()?;
    reader.reserved(&body.reserved)?;
    reader.flag(body.granted, "granted")
}

/// Parses a Raft message body of `kind` (one of the Raft kinds) whose
/// verified crc32c is `body_crc`.
pub(crate) fn decode(kind: FrameKind, body: &Bytes, body_crc: u32) -> Result<Message, DecodeError> {
    let mut reader = BodyReader::new(kind, body);
    let head = reader.fixed::<MessageHead>()?;
    let message_body = match kind {
        FrameKind::PreVote => MessageBody::PreVote(decode_vote(&mut reader)?),
        FrameKind::Vote => MessageBody::Vote(decode_vote(&mut reader)?),
        FrameKind::PreVoteResponse => MessageBody::PreVoteResponse { granted: decode_grant(&mut reader)? },
        FrameKind::VoteResponse => MessageBody::VoteResponse { granted: decode_grant(&mut reader)? },
        FrameKind::Append => {
            let fixed = reader.fixed::<AppendBody>()?;
            let rest = reader.rest();
            let entries = if rest.is_empty() {
                None
            } else {
                // The frame's body crc already covered these bytes; the batch's
                // structure is still checked in full.
                let batch = EntryBatch::decode_checksummed_elsewhere(&rest, rest.len())?;
                if batch.len_bytes() != rest.len() {
                    return Err(DecodeError::TrailingBytes { kind, count: rest.len() - batch.len_bytes() });
                }
                // The batch's own crc goes to disk with it, so it must be
                // right too. The body crc, already verified over these bytes,
                // pins it down: crc(body) = combine(crc(head + first four
                // batch bytes), crc(batch[4..]), length - 4), and combine is
                // one-to-one in its second argument. No second pass needed.
                let head_length = body.len() - rest.len() + 4;
                let expected =
                    crate::crc::combine(crc32c::crc32c(&body[..head_length]), batch.crc(), batch.len_bytes() - 4);
                if expected != body_crc {
                    return Err(DecodeError::BadField {
                        kind,
                        field: "entries",
                        reason: "the batch's stored crc32c does not match its bytes",
                    });
                }
                Some(batch)
            };
            MessageBody::Append(AppendRequest {
                prev_index: fixed.prev_index.get(),
                prev_term: fixed.prev_term.get(),
                commit: fixed.commit.get(),
                entries,
            })
        }
        FrameKind::AppendResponse => {
            let fixed = reader.fixed::<AppendResponseBody>()?;
            reader.reserved(&fixed.reserved)?;
            MessageBody::AppendResponse(AppendResponse {
                index: fixed.index.get(),
                reject: reader.flag(fixed.reject, "reject")?,
                hint_index: fixed.hint_index.get(),
                hint_term: fixed.hint_term.get(),
                missing: reader.flag(fixed.missing, "missing")?,
                no_space: reader.flag(fixed.no_space, "no_space")?,
                applying: reader.flag(fixed.applying, "applying")?,
            })
        }
        FrameKind::Heartbeat => {
            let fixed = reader.fixed::<HeartbeatBody>()?;
            MessageBody::Heartbeat { commit: fixed.commit.get(), read_context: fixed.read_context.get() }
        }
        FrameKind::HeartbeatResponse => {
            MessageBody::HeartbeatResponse { read_context: reader.fixed::<ContextBody>()?.context.get() }
        }
        FrameKind::InstallSnapshot => {
            let fixed = reader.fixed::<SnapshotBody>()?;
            reader.reserved(&fixed.reserved)?;
            let done = reader.flag(fixed.done, "done")?;
            let voters = reader.u64_list(fixed.voters_count.get() as usize)?;
            let voters_outgoing = reader.u64_list(fixed.voters_outgoing_count.get() as usize)?;
            let learners = reader.u64_list(fixed.learners_count.get() as usize)?;
            let witnesses = reader.u64_list(usize::from(fixed.witnesses_count))?;
            let conf = ConfState { voters, voters_outgoing, learners, witnesses };
            MessageBody::InstallSnapshot(SnapshotChunk {
                meta: SnapshotMeta { index: fixed.index.get(), term: fixed.term.get(), conf },
                offset: fixed.offset.get(),
                data: reader.rest(),
                done,
            })
        }
        FrameKind::InstallSnapshotResponse => {
            let fixed = reader.fixed::<SnapshotResponseBody>()?;
            reader.reserved(&fixed.reserved)?;
            MessageBody::InstallSnapshotResponse {
                index: fixed.index.get(),
                term: fixed.term.get(),
                next_offset: fixed.next_offset.get(),
                rejected: reader.flag(fixed.rejected, "rejected")?,
            }
        }
        FrameKind::TimeoutNow => MessageBody::TimeoutNow,
        FrameKind::ReadIndex => MessageBody::ReadIndex { context: reader.fixed::<ContextBody>()?.context.get() },
        FrameKind::ReadIndexResponse => {
            let fixed = reader.fixed::<ReadIndexResponseBody>()?;
            MessageBody::ReadIndexResponse { context: fixed.context.get(), index: fixed.index.get() }
        }
        FrameKind::Propose => MessageBody::Propose { command: reader.rest() },
        other => unreachable!("{other:?} is not a Raft message kind"),
    };
    reader.finish()?;
    Ok(Message { from: head.from.get(), to: head.to.get(), term: head.term.get(), body: message_body })
}
