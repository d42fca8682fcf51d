//! Bodies of the client request and response frames. Every request body opens
//! with [`RequestHead`]; a write's command and a read's query are the tail, so
//! they travel and decode without a copy.

use bytes::{BufMut, Bytes, BytesMut};
use engine::NODE_NONE;
use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::BodyReader;
use crate::client::{
    AdminRequest, ClientRequest, ClientResponse, JoinRequest, ReadConsistency, RequestBody, ResponseStatus,
    SessionSettings,
};
use crate::error::DecodeError;
use crate::frame::FrameKind;

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct RequestHead {
    request_id: U64,
    client_id: U64,
    sequence: U64,
    ack: U64,
}

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct ReadBody {
    consistency: u8,
    reserved: [u8; 7],
}

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct AdminBody {
    operation: u8,
    reserved: [u8; 7],
    node_id: U64,
}

/// The tail of a `SessionSettings` admin request (operation 7).
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct SessionSettingsBody {
    sessions_max: U32,
    replies_max: U32,
    reply_bytes_max: U32,
    reserved: [u8; 4],
    timeout_ms: U64,
}

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct ResponseHead {
    request_id: U64,
    status: u8,
    reserved: [u8; 7],
    leader_id: U64,
}

const _: () = assert!(size_of::<RequestHead>() == 32);
const _: () = assert!(size_of::<SessionSettingsBody>() == 24);
const _: () = assert!(size_of::<ReadBody>() == 8);
const _: () = assert!(size_of::<AdminBody>() == 16);
const _: () = assert!(size_of::<ResponseHead>() == 24);

pub(crate) fn request_kind(request: &ClientRequest) -> FrameKind {
    match request.body {
        RequestBody::Write { .. } => FrameKind::ClientWrite,
        RequestBody::Read { .. } => FrameKind::ClientRead,
        RequestBody::Admin(_) => FrameKind::ClientAdmin,
        RequestBody::Status => FrameKind::ClientStatus,
        RequestBody::OpenSession => FrameKind::ClientOpenSession,
        RequestBody::CloseSession => FrameKind::ClientCloseSession,
    }
}

pub(crate) fn encode_request_body(request: &ClientRequest, out: &mut BytesMut) -> Bytes {
    let head = RequestHead {
        request_id: U64::new(request.request_id),
        client_id: U64::new(request.client_id),
        sequence: U64::new(request.sequence),
        ack: U64::new(request.ack),
    };
    out.put_slice(head.as_bytes());
    match &request.body {
        RequestBody::Write { command } => command.clone(),
        RequestBody::Read { query, consistency } => {
            out.put_slice(ReadBody { consistency: *consistency as u8, reserved: [0; 7] }.as_bytes());
            query.clone()
        }
        RequestBody::Admin(admin) => {
            let node_id = match admin {
                AdminRequest::AddLearner { id, .. }
                | AdminRequest::AddWitness { id, .. }
                | AdminRequest::Promote { id }
                | AdminRequest::Remove { id }
                | AdminRequest::TransferLeader { id } => *id,
                AdminRequest::Join(join) => join.id,
                AdminRequest::TakeSnapshot
                | AdminRequest::Stats
                | AdminRequest::SessionSettings(_)
                | AdminRequest::BackupBegin { .. }
                | AdminRequest::BackupChunk { .. } => NODE_NONE,
            };
            // A join's first reserved byte says whether the node is a
            // witness (1): 0 from a node that is not, or from an older build;
            // an older leader refuses a witness's join (reserved not zero).
            let mut reserved = [0; 7];
            if let AdminRequest::Join(JoinRequest { witness: true, .. }) = admin {
                reserved[0] = 1;
            }
            out.put_slice(AdminBody { operation: admin.code(), reserved, node_id: U64::new(node_id) }.as_bytes());
            match admin {
                AdminRequest::AddLearner { addr, .. } | AdminRequest::AddWitness { addr, .. } => {
                    out.put_slice(addr.as_bytes())
                }
                AdminRequest::Join(join) => {
                    out.put_u64_le(join.nonce);
                    out.put_slice(join.peer_addr.as_bytes());
                    out.put_u8(b' ');
                    out.put_slice(join.client_addr.as_bytes());
                }
                AdminRequest::SessionSettings(settings) => {
                    let body = SessionSettingsBody {
                        sessions_max: U32::new(settings.sessions_max),
                        replies_max: U32::new(settings.replies_max),
                        reply_bytes_max: U32::new(settings.reply_bytes_max),
                        reserved: [0; 4],
                        timeout_ms: U64::new(settings.timeout_ms),
                    };
                    out.put_slice(body.as_bytes());
                }
                AdminRequest::BackupBegin { at_least } => out.put_u64_le(*at_least),
                AdminRequest::BackupChunk { index, offset, len } => {
                    out.put_u64_le(*index);
                    out.put_u64_le(*offset);
                    out.put_u32_le(*len);
                    out.put_u32_le(0);
                }
                _ => {}
            }
            Bytes::new()
        }
        RequestBody::Status | RequestBody::OpenSession | RequestBody::CloseSession => Bytes::new(),
    }
}

/// A backup chunk request's body (after the admin body).
fn decode_backup_chunk(reader: &mut BodyReader<'_>) -> Result<AdminRequest, DecodeError> {
    let index = reader.fixed::<U64>()?.get();
    let offset = reader.fixed::<U64>()?.get();
    let len = reader.fixed::<U32>()?.get();
    let reserved = reader.fixed::<U32>()?.get();
    reader.reserved(&reserved.to_le_bytes())?;
    if len == 0 || len > crate::client::BACKUP_CHUNK_BYTES_MAX {
        return Err(reader.bad("len", "a backup chunk is 1 byte to 1 MiB"));
    }
    Ok(AdminRequest::BackupChunk { index, offset, len })
}

/// An admin request's body: the operation, its node id and its tail.
fn decode_admin(reader: &mut BodyReader<'_>) -> Result<AdminRequest, DecodeError> {
    let fixed = reader.fixed::<AdminBody>()?;
    // Operation 8 (join) uses the first reserved byte as its witness flag.
    let witness = match fixed.operation {
        8 if fixed.reserved[0] <= 1 => {
            reader.reserved(&fixed.reserved[1..])?;
            fixed.reserved[0] == 1
        }
        _ => {
            reader.reserved(&fixed.reserved)?;
            false
        }
    };
    let id = fixed.node_id.get();
    let admin = match fixed.operation {
        1 => AdminRequest::AddLearner { id, addr: reader.rest_utf8("address")? },
        2 => AdminRequest::Promote { id },
        3 => AdminRequest::Remove { id },
        4 => AdminRequest::TransferLeader { id },
        5 => AdminRequest::TakeSnapshot,
        6 => AdminRequest::Stats,
        7 => {
            let body = reader.fixed::<SessionSettingsBody>()?;
            reader.reserved(&body.reserved)?;
            AdminRequest::SessionSettings(SessionSettings {
                sessions_max: body.sessions_max.get(),
                replies_max: body.replies_max.get(),
                reply_bytes_max: body.reply_bytes_max.get(),
                timeout_ms: body.timeout_ms.get(),
            })
        }
        8 => {
            let nonce = reader.fixed::<U64>()?.get();
            let text = reader.rest_utf8("addresses")?;
            let (peer_addr, client_addr) =
                text.split_once(' ').ok_or_else(|| reader.bad("addresses", "expected PEER_ADDR CLIENT_ADDR"))?;
            AdminRequest::Join(JoinRequest {
                id,
                nonce,
                peer_addr: peer_addr.to_string(),
                client_addr: client_addr.to_string(),
                witness,
            })
        }
        9 => AdminRequest::AddWitness { id, addr: reader.rest_utf8("address")? },
        10 => AdminRequest::BackupBegin { at_least: reader.fixed::<U64>()?.get() },
        11 => decode_backup_chunk(reader)?,
        _ => return Err(reader.bad("operation", "unknown admin operation")),
    };
    let takes_no_id = matches!(
        admin,
        AdminRequest::TakeSnapshot
            | AdminRequest::Stats
            | AdminRequest::SessionSettings(_)
            | AdminRequest::BackupBegin { .. }
            | AdminRequest::BackupChunk { .. }
    );
    if !takes_no_id && !matches!(admin, AdminRequest::AddLearner { .. } | AdminRequest::Join(_)) && id == NODE_NONE {
        return Err(reader.bad("node_id", "the operation needs a node id"));
    }
    if takes_no_id && id != NODE_NONE {
        return Err(reader.bad("node_id", "the operation takes no node id"));
    }
    Ok(admin)
}

pub(crate) fn decode_request(kind: FrameKind, body: &Bytes) -> Result<ClientRequest, DecodeError> {
    let mut reader = BodyReader::new(kind, body);
    let head = reader.fixed::<RequestHead>()?;
    let request_body = match kind {
        FrameKind::ClientWrite => RequestBody::Write { command: reader.rest() },
        FrameKind::ClientRead => {
            let fixed = reader.fixed::<ReadBody>()?;
            reader.reserved(&fixed.reserved)?;
            let consistency = ReadConsistency::from_u8(fixed.consistency)
                .ok_or_else(|| reader.bad("consistency", "unknown read consistency"))?;
            RequestBody::Read { query: reader.rest(), consistency }
        }
        FrameKind::ClientAdmin => RequestBody::Admin(decode_admin(&mut reader)?),
        FrameKind::ClientStatus => RequestBody::Status,
        FrameKind::ClientOpenSession => RequestBody::OpenSession,
        FrameKind::ClientCloseSession => RequestBody::CloseSession,
        other => unreachable!("{other:?} is not a client request kind"),
    };
    reader.finish()?;
    Ok(ClientRequest {
        request_id: head.request_id.get(),
        client_id: head.client_id.get(),
        sequence: head.sequence.get(),
        ack: head.ack.get(),
        body: request_body,
    })
}

pub(crate) fn encode_response_body(response: &ClientResponse, out: &mut BytesMut) -> Bytes {
    let leader_id = match &response.status {
        ResponseStatus::NotLeader { leader_id, .. } => leader_id.unwrap_or(NODE_NONE),
        _ => NODE_NONE,
    };
    let head = ResponseHead {
        request_id: U64::new(response.request_id),
        status: response.status.code(),
        reserved: [0; 7],
        leader_id: U64::new(leader_id),
    };
    out.put_slice(head.as_bytes());
    match &response.status {
        ResponseStatus::Ok(result) => result.clone(),
        ResponseStatus::NotLeader { leader_addr, .. } => {
            out.put_slice(leader_addr.as_deref().unwrap_or("").as_bytes());
            Bytes::new()
        }
        ResponseStatus::BadRequest(reason)
        | ResponseStatus::Forbidden(reason)
        | ResponseStatus::SessionFull(reason) => {
            out.put_slice(reason.as_bytes());
            Bytes::new()
        }
        ResponseStatus::Busy | ResponseStatus::TimedOut | ResponseStatus::SessionExpired | ResponseStatus::NoSpace => {
            Bytes::new()
        }
    }
}

pub(crate) fn decode_response(body: &Bytes) -> Result<ClientResponse, DecodeError> {
    let mut reader = BodyReader::new(FrameKind::ClientResponse, body);
    let head = reader.fixed::<ResponseHead>()?;
    reader.reserved(&head.reserved)?;
    let leader_id = head.leader_id.get();
    if head.status != 1 && leader_id != NODE_NONE {
        return Err(reader.bad("leader_id", "set on a status other than NotLeader"));
    }
    let status = match head.status {
        0 => ResponseStatus::Ok(reader.rest()),
        1 => {
            let addr = reader.rest_utf8("leader_addr")?;
            ResponseStatus::NotLeader {
                leader_id: (leader_id != NODE_NONE).then_some(leader_id),
                leader_addr: (!addr.is_empty()).then_some(addr),
            }
        }
        2 => ResponseStatus::Busy,
        3 => ResponseStatus::TimedOut,
        4 => ResponseStatus::SessionExpired,
        5 => ResponseStatus::BadRequest(reader.rest_utf8("reason")?),
        6 => ResponseStatus::Forbidden(reader.rest_utf8("reason")?),
        7 => ResponseStatus::SessionFull(reader.rest_utf8("reason")?),
        8 => ResponseStatus::NoSpace,
        _ => return Err(reader.bad("status", "unknown response status")),
    };
    reader.finish()?;
    Ok(ClientResponse { request_id: head.request_id.get(), status })
}
