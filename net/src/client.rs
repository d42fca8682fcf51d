//! The client protocol's vocabulary: requests a client sends to a node and the
//! typed responses it gets back.
//!
//! Commands, queries and results are opaque bytes here: the node's state
//! machine gives them meaning. Each request carries a `request_id` chosen by
//! the client so that many requests can be in flight on one connection and be
//! answered in any order, and a write carries its session: the `client_id`
//! the cluster assigned when the session was opened, its `sequence` in the
//! session, and `ack`, the lowest sequence whose answer the client has not
//! yet received (so the cluster may forget the answers below it). A retried
//! write is applied once ([`crate::session`]).

use bytes::Bytes;
use engine::NodeId;

/// A request from a client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientRequest {
    /// Chosen by the client, echoed in the response; unique among the
    /// client's in-flight requests on one connection.
    pub request_id: u64,
    /// The client's session, as the cluster assigned it when it was opened;
    /// 0 for requests outside a session (reads, admin, and writes the client
    /// explicitly sends at least once).
    pub client_id: u64,
    /// The write's position in the client's session, from 1; a node applies
    /// each `(client_id, sequence)` at most once. 0 outside a session.
    pub sequence: u64,
    /// The lowest sequence of the session whose answer the client has not
    /// received yet (at most `sequence`): the cluster may forget the answers
    /// to every sequence below it, and refuses retries of them. 0 outside a
    /// session.
    pub ack: u64,
    pub body: RequestBody,
}

impl ClientRequest {
    /// A request outside any session (a read, an admin request, the status,
    /// opening a session, or a write sent at least once).
    pub fn plain(request_id: u64, body: RequestBody) -> ClientRequest {
        ClientRequest { request_id, client_id: 0, sequence: 0, ack: 0, body }
    }
}

/// What a client asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestBody {
    /// Replicate and apply `command`.
    Write { command: Bytes },
    /// Answer `query` from the state machine with the given guarantee.
    Read { query: Bytes, consistency: ReadConsistency },
    /// Change or inspect the cluster.
    Admin(AdminRequest),
    /// The node's status (role, term, indices), answered as JSON bytes.
    Status,
    /// Open an exactly-once session: the cluster assigns its id through the
    /// log and answers with an [`crate::session::OpenedSession`].
    OpenSession,
    /// Close the request's session (`client_id`): the cluster forgets it and
    /// its cached answers. Later writes in it get `SessionExpired`.
    CloseSession,
}

/// How fresh a read must be. The numeric values are the wire format's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ReadConsistency {
    /// Whatever the serving node is configured to use by default
    /// (`node serve --read-consistency`).
    NodeDefault = 0,
    /// ReadIndex: confirmed leadership, then read at the commit index.
    Linearizable = 1,
    /// The leader's lease: no round trip, relies on bounded clock drift.
    Lease = 2,
    /// Whatever this node has applied, leader or not.
    Stale = 3,
}

impl ReadConsistency {
    pub fn from_u8(value: u8) -> Option<ReadConsistency> {
        match value {
            0 => Some(ReadConsistency::NodeDefault),
            1 => Some(ReadConsistency::Linearizable),
            2 => Some(ReadConsistency::Lease),
            3 => Some(ReadConsistency::Stale),
            _ => None,
        }
    }
}

/// Cluster administration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdminRequest {
    /// Add `id`, reachable at `addr`, as a non-voting learner.
    AddLearner { id: NodeId, addr: String },
    /// Make learner `id` a voter.
    Promote { id: NodeId },
    /// Add `id`, reachable at `addr`, as a witness: a voter that keeps only
    /// entry metadata (no payloads, no state machine), or make learner `id`
    /// one. The node must run as a witness (`node serve --witness`).
    AddWitness { id: NodeId, addr: String },
    /// Remove `id` from the cluster.
    Remove { id: NodeId },
    /// Hand leadership to `id`.
    TransferLeader { id: NodeId },
    /// Take a snapshot now and compact the log.
    TakeSnapshot,
    /// Counters and gauges, answered as JSON bytes.
    Stats,
    /// Change the replicated session settings (through the log, so every
    /// replica applies the same); a zero field keeps the current value.
    SessionSettings(SessionSettings),
    /// A node asks to be a member. With `id` 0 (shard 0 only) the cluster
    /// assigns it a fresh id through the log (never used before, never
    /// reused) and answers `{"node_id": N}`; a retry with the same `nonce`
    /// gets the same id. With an id: the node's addresses are recorded
    /// through the log if they changed, and it is added as a learner unless
    /// it is a member (as a witness with [`JoinRequest::witness`]); a
    /// removed node is refused. Sent by `node serve --join`.
    Join(JoinRequest),
    /// Where a backup of this shard's state starts (`node admin backup`):
    /// with `at_least` 0, the node first confirms, as a linearizable read
    /// does, what the cluster has committed, and takes what it has applied
    /// then as the bar. Answers `Ok` with the JSON `{"index": I, "term": T,
    /// "size": BYTES, "node": ID}` of a stored snapshot at or past the bar, or
    /// `{"pending": BAR}` while one is being taken: the client asks again
    /// with `at_least` BAR (no second barrier, so the bar does not move
    /// under load). A witness keeps no state and refuses (`BadRequest`).
    BackupBegin { at_least: u64 },
    /// `len` bytes (at most [`BACKUP_CHUNK_BYTES_MAX`]; fewer at the end)
    /// of the stored snapshot at `index` from `offset`. Answers `Ok` with a
    /// first byte 0, the node's id (u64) and the bytes, or the single byte 1
    /// when the node's stored snapshot is no longer the one at `index` (a
    /// newer one replaced it: begin again).
    BackupChunk { index: u64, offset: u64, len: u32 },
}

/// The most bytes one [`AdminRequest::BackupChunk`] asks for.
pub const BACKUP_CHUNK_BYTES_MAX: u32 = 1 << 20;

/// What a joining (or restarting) node tells the cluster about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinRequest {
    /// 0: assign one.
    pub id: NodeId,
    /// Finds the assignment again when the node retries.
    pub nonce: u64,
    /// Its peer address, IP:PORT.
    pub peer_addr: String,
    /// Its client address, IP:PORT.
    pub client_addr: String,
    /// It runs as a witness (`node serve --join ... --witness`): a node that
    /// is not a member is added as a witness, not as a learner.
    pub witness: bool,
}

/// The cluster's session settings: part of the replicated state, never a
/// per-node option, so that every replica expires and bounds sessions alike.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SessionSettings {
    /// Sessions the cluster keeps at most. Opening one more evicts the least
    /// recently active session whose answers were all acknowledged, or is
    /// refused with `SessionFull` when there is none.
    pub sessions_max: u32,
    /// A session without a write for this long (in the log's time, which the
    /// leader advances) expires: later writes in it get `SessionExpired`.
    pub timeout_ms: u64,
    /// Answers a session keeps that its client has not acknowledged, at most;
    /// a write beyond it is refused with `SessionFull` and not applied.
    pub replies_max: u32,
    /// Bytes of such answers a session keeps, at most (the write that crosses
    /// it is still kept; later ones are refused until the client
    /// acknowledges).
    pub reply_bytes_max: u32,
}

impl AdminRequest {
    /// The wire code of the operation.
    pub(crate) fn code(&self) -> u8 {
        match self {
            AdminRequest::AddLearner { .. } => 1,
            AdminRequest::Promote { .. } => 2,
            AdminRequest::Remove { .. } => 3,
            AdminRequest::TransferLeader { .. } => 4,
            AdminRequest::TakeSnapshot => 5,
            AdminRequest::Stats => 6,
            AdminRequest::SessionSettings(_) => 7,
            AdminRequest::Join(_) => 8,
            AdminRequest::AddWitness { .. } => 9,
            AdminRequest::BackupBegin { .. } => 10,
            AdminRequest::BackupChunk { .. } => 11,
        }
    }
}

/// A node's answer to one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientResponse {
    /// The `request_id` of the request this answers.
    pub request_id: u64,
    pub status: ResponseStatus,
}

/// The outcome of a request. Every failure a client can see is one of these,
/// never a connection dropped without a reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResponseStatus {
    /// Done. Holds the result bytes: the state machine's answer, or the JSON
    /// of a status or stats request; empty when there is nothing to say.
    Ok(Bytes),
    /// This node is not the leader. Retry at the leader if it is known.
    NotLeader { leader_id: Option<NodeId>, leader_addr: Option<String> },
    /// The node is overloaded (a bound is full), or it is handing
    /// leadership over, or another membership change is being made (for an
    /// admin request). Retry later.
    Busy,
    /// The request did not complete in time; a write may still be applied,
    /// so retry it with the same sequence number.
    TimedOut,
    /// The client's session is unknown, expired or closed: the write was
    /// not applied now. Open a new session and send the command again (see
    /// [`crate::session`] for when an earlier attempt may have applied).
    SessionExpired,
    /// The request was malformed or refused by the state machine; the reason
    /// says how. Nothing was applied.
    BadRequest(String),
    /// The connection's identity lacks the role the request needs (`write`
    /// for a write, `read` for a read or a status, `admin` for an admin
    /// operation); the reason names both. Retrying with the same credentials
    /// will not help.
    Forbidden(String),
    /// The session's window is full (more writes unanswered than the
    /// cluster keeps answers for), or the cluster holds as many sessions as
    /// it allows (opening one): not applied. Receive the answers already on
    /// their way (the next request acknowledges them) and retry with the
    /// same sequence.
    SessionFull(String),
    /// A disk the write needs is full: the leader's, those of so many
    /// voters that the rest make no quorum, or that of the follower the
    /// write was sent to (which forwards a write only while it can log it):
    /// the write was not taken (nothing applied). Reads are still served;
    /// writes resume by themselves once space is freed, so retry later.
    /// Another node helps only in the last case: it sends the write to the
    /// same leader.
    NoSpace,
}

/// What a person reads: the refusal's reason, without the type's spelling.
impl std::fmt::Display for ResponseStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResponseStatus::Ok(answer) => write!(f, "ok ({} bytes)", answer.len()),
            ResponseStatus::NotLeader { leader_id: Some(id), leader_addr } => match leader_addr {
                Some(addr) => write!(f, "not the leader (node {id} at {addr} is)"),
                None => write!(f, "not the leader (node {id} is, its client address unknown here)"),
            },
            ResponseStatus::NotLeader { leader_id: None, .. } => f.write_str(
                "no leader known (an election may be under way, or a majority of the voters is down or cut off)",
            ),
            ResponseStatus::Busy => f.write_str(
                "busy (a bound is full, leadership is being handed over, or another membership change is being made)",
            ),
            ResponseStatus::TimedOut => f.write_str("timed out in the cluster (a write may still be applied)"),
            ResponseStatus::SessionExpired => f.write_str("the session expired (or was closed)"),
            ResponseStatus::BadRequest(reason) => write!(f, "bad request: {reason}"),
            ResponseStatus::Forbidden(reason) => write!(f, "forbidden: {reason}"),
            ResponseStatus::SessionFull(reason) => write!(f, "session full: {reason}"),
            ResponseStatus::NoSpace => f.write_str(
                "a disk the write needs is full: the leader's, a quorum's, or the answering follower's own (nothing \
                 applied; retry later)",
            ),
        }
    }
}

impl ResponseStatus {
    /// The wire code of the status.
    pub(crate) fn code(&self) -> u8 {
        match self {
            ResponseStatus::Ok(_) => 0,
            ResponseStatus::NotLeader { .. } => 1,
            ResponseStatus::Busy => 2,
            ResponseStatus::TimedOut => 3,
            ResponseStatus::SessionExpired => 4,
            ResponseStatus::BadRequest(_) => 5,
            ResponseStatus::Forbidden(_) => 6,
            ResponseStatus::SessionFull(_) => 7,
            ResponseStatus::NoSpace => 8,
        }
    }
}
