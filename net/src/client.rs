//! The client protocol's vocabulary: requests a client sends to a node and the
//! typed responses it gets back.
//!
//! Commands, queries and results are opaque bytes here: the node's state
//! machine gives them meaning. Each request carries a `request_id` chosen by
//! the client so that many requests can be in flight on one connection and be
//! answered in any order, and a `(client_id, sequence)` pair so a retried write
//! is applied once (exactly-once sessions).

use bytes::Bytes;
use engine::NodeId;

/// A request from a client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientRequest {
    /// Chosen by the client, echoed in the response; unique among the
    /// client's in-flight requests on one connection.
    pub request_id: u64,
    /// The client's session; 0 for requests outside a session (reads, admin).
    pub client_id: u64,
    /// The write's position in the client's session; a node applies each
    /// `(client_id, sequence)` at most once.
    pub sequence: u64,
    pub body: RequestBody,
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
    /// Remove `id` from the cluster.
    Remove { id: NodeId },
    /// Hand leadership to `id`.
    TransferLeader { id: NodeId },
    /// Take a snapshot now and compact the log.
    TakeSnapshot,
    /// Counters and gauges, answered as JSON bytes.
    Stats,
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
    /// The node is overloaded (a bound is full). Retry later.
    Busy,
    /// The request did not complete in time; a write may still be applied,
    /// so retry it with the same sequence number.
    TimedOut,
    /// The client's session is unknown or was evicted: start a new one.
    SessionExpired,
    /// The request was malformed; the reason says how.
    BadRequest(String),
    /// The connection's identity lacks the role the request needs (`write`
    /// for a write, `read` for a read or a status, `admin` for an admin
    /// operation); the reason names both. Retrying with the same credentials
    /// will not help.
    Forbidden(String),
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
        }
    }
}
