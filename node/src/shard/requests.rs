//! Client requests: writes proposed (or forwarded to the leader), reads at
//! the asked consistency, admin requests, redirects and timeouts; and the
//! answers when an entry is applied or a read becomes safe.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use engine::raft::ReadMode;
use engine::{ConfChange, ConfChangeOp, Index, ProposeError, Role, Term};
use net::{AdminRequest, ClientRequest, ReadConsistency, RequestBody, ResponseStatus};
use serde_json::json;

use super::{Clock, Shard, ShardStorage, ShardTransport, REQUEST_TIMEOUT};
use crate::fsm::QueryStateMachine;
use crate::replicated::SetAddresses;
use crate::session::{encode_envelope_in, EnvelopeRef, Reply, CLIENT_ID_NONE};

/// Forwarded writes waiting at once; more are answered `Busy`.
pub(super) const FORWARDED_MAX: usize = 4096;
/// A forwarded write not applied within this long is answered `TimedOut`:
/// the leader drops what it cannot take and sends no answer.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);

/// A write this leader proposed, answered when its index is applied.
struct PendingWrite<R> {
    term: Term,
    reply: R,
    arrived: Instant,
    proposed: Instant,
}

/// A session write this follower forwarded to the leader, answered when an
/// entry with its client id and sequence is applied here.
struct ForwardedWrite<R> {
    reply: R,
    arrived: Instant,
}

struct PendingRead<R> {
    query: Bytes,
    reply: R,
    arrived: Instant,
}

/// The clients a shard owes an answer.
pub(super) struct Requests<R> {
    /// Writes this leader proposed, by log index. Invariant: every index is
    /// above the applied index (an applied write is answered and removed).
    writes: HashMap<Index, PendingWrite<R>>,
    /// Writes forwarded to the leader, by client id and sequence, all
    /// forwarded in `forwarded_term`.
    forwarded: HashMap<(u64, u64), ForwardedWrite<R>>,
    forwarded_term: Term,
    /// Reads by context, waiting for the engine or the state machine.
    reads: HashMap<u64, PendingRead<R>>,
    /// Reads whose index is known, waiting for the state machine to reach
    /// it. Invariant: each context is in `reads`.
    reads_waiting: Vec<(Index, u64)>,
    next_read_context: u64,
}

impl<R> Requests<R> {
    pub(super) fn new() -> Requests<R> {
        Requests {
            writes: HashMap::new(),
            forwarded: HashMap::new(),
            forwarded_term: 0,
            reads: HashMap::new(),
            reads_waiting: Vec::new(),
            next_read_context: 1,
        }
    }

    /// Every waiting client, removed.
    pub(super) fn drain_all(&mut self) -> Vec<R> {
        self.reads_waiting.clear();
        let writes = self.writes.drain().map(|(_, write)| write.reply);
        let forwarded = self.forwarded.drain().map(|(_, write)| write.reply);
        let reads = self.reads.drain().map(|(_, read)| read.reply);
        writes.chain(forwarded).chain(reads).collect()
    }

    pub(super) fn check_invariants(&self, applied: Index) -> Result<(), String> {
        if let Some(index) = self.writes.keys().find(|&&index| index <= applied) {
            return Err(format!("a write at index {index} waits, but {applied} is applied"));
        }
        if let Some((_, context)) = self.reads_waiting.iter().find(|(_, context)| !self.reads.contains_key(context)) {
            return Err(format!("read context {context} waits for its index but has no client"));
        }
        if self.forwarded.len() > FORWARDED_MAX {
            return Err(format!("{} forwarded writes wait, more than {FORWARDED_MAX}", self.forwarded.len()));
        }
        Ok(())
    }
}

impl<S, D, T, C> Shard<S, D, T, C>
where
    S: QueryStateMachine,
    D: ShardStorage,
    T: ShardTransport,
    C: Clock,
{
    pub(super) fn handle_request(&mut self, request: ClientRequest, reply: T::Reply, arrived: Instant) {
        match request.body {
            RequestBody::Write { command } => {
                if command.len() > self.ctx.command_bytes_max {
                    let status = ResponseStatus::BadRequest(format!(
                        "command of {} bytes exceeds the limit of {} bytes",
                        command.len(),
                        self.ctx.command_bytes_max
                    ));
                    self.transport.reply(reply, status);
                    return;
                }
                let data = encode_envelope_in(&mut self.envelope_arena, request.client_id, request.sequence, &command);
                self.propose(data, (request.client_id, request.sequence), reply, arrived);
            }
            RequestBody::Read { query, consistency } => self.read(query, consistency, reply, arrived),
            RequestBody::Status => {
                let status = self.status_json();
                self.transport.reply(reply, ResponseStatus::Ok(Bytes::from(status.to_string())));
            }
            RequestBody::Admin(admin) => self.admin(admin, reply, arrived),
        }
    }

    /// Where clients find the leader: its id and, from the replicated address
    /// book, its client address on this shard's core.
    pub(super) fn leader_redirect(&self) -> ResponseStatus {
        let leader = self.raft.leader();
        if leader == engine::NODE_NONE {
            return ResponseStatus::NotLeader { leader_id: None, leader_addr: None };
        }
        let addr = self.fsm.addresses(leader).and_then(|a| a.client.clone()).and_then(|base| {
            let base: SocketAddr = base.parse().ok()?;
            crate::topology::core_addr(base, self.ctx.core).map(|addr| addr.to_string())
        });
        ResponseStatus::NotLeader { leader_id: Some(leader), leader_addr: addr }
    }

    fn propose(&mut self, data: Bytes, session: (u64, u64), reply: T::Reply, arrived: Instant) {
        // A follower that knows the leader forwards when the node forwards and
        // the write can be found again when applied (it has a session).
        if self.ctx.forward_writes
            && session.0 != CLIENT_ID_NONE
            && self.raft.role() != Role::Leader
            && self.raft.leader() != engine::NODE_NONE
        {
            return self.forward(data, session, reply, arrived);
        }
        match self.raft.propose(data) {
            Ok((index, term)) => {
                let now = self.clock.now();
                self.stats.queued.record(now.saturating_duration_since(arrived));
                self.requests.writes.insert(index, PendingWrite { term, reply, arrived, proposed: now });
            }
            Err(error) => {
                let status = self.refusal(error);
                self.transport.reply(reply, status);
            }
        }
    }

    /// Sends a session write to the leader; the entry's client id and
    /// sequence find the client again when it is applied here. A retry of a
    /// write still waiting replaces the first wait (the session applies the
    /// write once, and the retry gets its answer).
    fn forward(&mut self, data: Bytes, session: (u64, u64), reply: T::Reply, arrived: Instant) {
        self.drop_stale_forwards();
        if self.requests.forwarded.len() >= FORWARDED_MAX {
            self.stats.busy += 1;
            self.transport.reply(reply, ResponseStatus::Busy);
            return;
        }
        match self.raft.forward_proposal(data) {
            Ok(()) => {
                self.requests.forwarded_term = self.raft.term();
                self.stats.writes_forwarded += 1;
                if let Some(earlier) = self.requests.forwarded.insert(session, ForwardedWrite { reply, arrived }) {
                    self.transport.reply(earlier.reply, ResponseStatus::TimedOut);
                }
            }
            Err(error) => {
                let status = self.refusal(error);
                self.transport.reply(reply, status);
            }
        }
    }

    /// Forwarded writes of an earlier term may never be applied (the leader
    /// that took them lost its place): their clients are sent to the current
    /// leader, and their retries (same sequence) take effect once.
    pub(super) fn drop_stale_forwards(&mut self) {
        if self.requests.forwarded.is_empty() || self.requests.forwarded_term == self.raft.term() {
            return;
        }
        let redirect = self.leader_redirect();
        for (_, write) in self.requests.forwarded.drain() {
            self.transport.reply(write.reply, redirect.clone());
        }
    }

    /// Leadership was lost: proposals may or may not commit under the next
    /// leader; their clients are sent there and retry with the same sequence
    /// (one effect).
    pub(super) fn redirect_writes(&mut self) {
        let redirect = self.leader_redirect();
        for (_, write) in self.requests.writes.drain() {
            self.transport.reply(write.reply, redirect.clone());
        }
    }

    fn refusal(&mut self, error: ProposeError) -> ResponseStatus {
        match error {
            ProposeError::NotLeader { .. } => {
                self.stats.not_leader += 1;
                self.leader_redirect()
            }
            ProposeError::Busy { .. } | ProposeError::TooManyReads { .. } | ProposeError::TransferInProgress { .. } => {
                self.stats.busy += 1;
                ResponseStatus::Busy
            }
            ProposeError::ChangeInProgress(_) => {
                ResponseStatus::BadRequest("a membership change is in progress; retry when it completes".into())
            }
            ProposeError::NotVoter(id) => ResponseStatus::BadRequest(format!("node {id} is not a voter")),
            ProposeError::InvalidChange(reason) => ResponseStatus::BadRequest(reason),
        }
    }

    fn read(&mut self, query: Bytes, consistency: ReadConsistency, reply: T::Reply, arrived: Instant) {
        let consistency = match consistency {
            ReadConsistency::NodeDefault => self.ctx.read_consistency_default,
            chosen => chosen,
        };
        let mode = match consistency {
            ReadConsistency::Stale => {
                let answer = self.fsm.query(&query);
                self.finish_read(answer, reply, arrived);
                return;
            }
            ReadConsistency::Lease => ReadMode::Lease,
            ReadConsistency::Linearizable | ReadConsistency::NodeDefault => ReadMode::ReadIndex,
        };
        let context = self.requests.next_read_context;
        self.requests.next_read_context += 1;
        match self.raft.read_index(context, mode) {
            Ok(()) => {
                self.requests.reads.insert(context, PendingRead { query, reply, arrived });
            }
            Err(error) => {
                let status = self.refusal(error);
                self.transport.reply(reply, status);
            }
        }
    }

    fn finish_read(&mut self, answer: Bytes, reply: T::Reply, arrived: Instant) {
        let status = match Reply::decode(&answer) {
            Ok(reply) => reply.into_status(),
            Err(_) => ResponseStatus::Ok(answer),
        };
        self.transport.reply(reply, status);
        self.stats.reads.record(self.clock.now().saturating_duration_since(arrived));
        self.stats.reads_served += 1;
    }

    /// A read's index is known: it is served once the state machine reaches it.
    pub(super) fn read_index_known(&mut self, index: Index, context: u64) {
        self.requests.reads_waiting.push((index, context));
    }

    /// A read the engine could not serve here: its client goes to the leader.
    pub(super) fn read_dropped(&mut self, context: u64) {
        if let Some(read) = self.requests.reads.remove(&context) {
            let redirect = self.leader_redirect();
            self.transport.reply(read.reply, redirect);
        }
    }

    /// Serves the reads whose index the state machine has reached.
    pub(super) fn serve_reads(&mut self) {
        if self.requests.reads_waiting.is_empty() {
            return;
        }
        for context in take_safe_reads(&mut self.requests.reads_waiting, self.fsm.applied()) {
            if let Some(read) = self.requests.reads.remove(&context) {
                let answer = self.fsm.query(&read.query);
                self.finish_read(answer, read.reply, read.arrived);
            }
        }
    }

    /// Answers the client waiting for the entry at `index` (term `term`),
    /// applied with `response`, whose batch was handed over at `committed`.
    pub(super) fn answer_write(&mut self, index: Index, term: Term, response: Option<&Bytes>, committed: Instant) {
        let Some(write) = self.requests.writes.remove(&index) else { return };
        if write.term != term {
            // Another leader's entry replaced ours at this index.
            let redirect = self.leader_redirect();
            self.transport.reply(write.reply, redirect);
            return;
        }
        self.stats.replication.record(committed.saturating_duration_since(write.proposed));
        self.stats.total.record(self.clock.now().saturating_duration_since(write.arrived));
        self.stats.writes_applied += 1;
        self.transport.reply(write.reply, applied_status(response.cloned()));
    }

    /// Answers the forwarded write this applied entry carries, if any.
    pub(super) fn answer_forwarded(&mut self, data: &Bytes, response: Option<&Bytes>) {
        if self.requests.forwarded.is_empty() {
            return;
        }
        let Ok(envelope) = EnvelopeRef::decode(data) else { return };
        let Some(write) = self.requests.forwarded.remove(&(envelope.client_id, envelope.sequence)) else { return };
        self.stats.total.record(self.clock.now().saturating_duration_since(write.arrived));
        self.stats.writes_applied += 1;
        self.stats.forwarded_answered += 1;
        self.transport.reply(write.reply, applied_status(response.cloned()));
    }

    /// Answers the requests that waited too long.
    pub(super) fn sweep_timeouts(&mut self, now: Instant) {
        for (_, write) in take_expired(&mut self.requests.writes, now, REQUEST_TIMEOUT, |write| write.arrived) {
            self.transport.reply(write.reply, ResponseStatus::TimedOut);
        }
        self.drop_stale_forwards();
        for (_, write) in take_expired(&mut self.requests.forwarded, now, FORWARD_TIMEOUT, |write| write.arrived) {
            self.transport.reply(write.reply, ResponseStatus::TimedOut);
        }
        for (context, read) in take_expired(&mut self.requests.reads, now, REQUEST_TIMEOUT, |read| read.arrived) {
            self.transport.reply(read.reply, ResponseStatus::TimedOut);
            self.requests.reads_waiting.retain(|&(_, c)| c != context);
        }
    }

    fn admin(&mut self, admin: AdminRequest, reply: T::Reply, arrived: Instant) {
        let change = |op| ConfChange { ops: vec![op] };
        let result = match admin {
            AdminRequest::AddLearner { id, addr } => {
                if addr.parse::<SocketAddr>().is_err() {
                    self.transport
                        .reply(reply, ResponseStatus::BadRequest(format!("{addr:?} is not an IP:port address")));
                    return;
                }
                if self.raft.role() != Role::Leader {
                    let redirect = self.leader_redirect();
                    self.transport.reply(reply, redirect);
                    return;
                }
                // The address goes through the log first, so every member
                // can reach the learner (and any later leader knows it).
                let set = SetAddresses { id, peer: Some(addr), client: None };
                if let Err(error) = self.raft.propose(set.encode()) {
                    let status = self.refusal(error);
                    self.transport.reply(reply, status);
                    return;
                }
                self.raft.propose_conf_change(change(ConfChangeOp::AddLearner(id)))
            }
            AdminRequest::Promote { id } => self.raft.propose_conf_change(change(ConfChangeOp::AddVoter(id))),
            AdminRequest::Remove { id } => self.raft.propose_conf_change(change(ConfChangeOp::Remove(id))),
            AdminRequest::TransferLeader { id } => {
                let status = match self.raft.transfer_leader(id) {
                    Ok(()) => ResponseStatus::Ok(Bytes::new()),
                    Err(error) => self.refusal(error),
                };
                self.transport.reply(reply, status);
                return;
            }
            AdminRequest::TakeSnapshot => {
                let status = match self.take_snapshot_now() {
                    Ok(index) => ResponseStatus::Ok(Bytes::from(json!({ "snapshot_index": index }).to_string())),
                    Err(reason) => ResponseStatus::BadRequest(reason),
                };
                self.transport.reply(reply, status);
                return;
            }
            AdminRequest::Stats => {
                let body = json!({ "shard": self.ctx.shard_id, "node": self.ctx.node_id,
                    "stats": self.stats.to_json(self.clock.now()) });
                self.transport.reply(reply, ResponseStatus::Ok(Bytes::from(body.to_string())));
                return;
            }
        };
        match result {
            Ok((index, term)) => {
                let now = self.clock.now();
                self.requests.writes.insert(index, PendingWrite { term, reply, arrived, proposed: now });
            }
            Err(error) => {
                let status = self.refusal(error);
                self.transport.reply(reply, status);
            }
        }
    }

    pub(super) fn status_json(&self) -> serde_json::Value {
        let status = self.raft.status();
        json!({
            "node": self.ctx.node_id,
            "shard": self.ctx.shard_id,
            "role": format!("{:?}", status.role),
            "term": status.term,
            "leader": status.leader,
            "commit": status.commit,
            "applied": self.fsm.applied(),
            "first_index": status.first_index,
            "last_index": status.last_index,
            "persisted": status.persisted,
            "snapshot_index": self.raft.snapshot().index,
            "voters": status.conf.voters,
            "voters_outgoing": status.conf.voters_outgoing,
            "learners": status.conf.learners,
            "progress": status.progress.iter().map(|p| json!({
                "id": p.id, "match": p.match_index, "next": p.next_index,
                "state": format!("{:?}", p.state), "inflight": p.inflight_batches,
                "active": p.recent_active, "learner": p.learner,
            })).collect::<Vec<_>>(),
            "pending_writes": self.requests.writes.len(),
            "forwarded_writes_waiting": self.requests.forwarded.len(),
            "writes_forwarded": self.stats.writes_forwarded,
            "pending_reads": self.requests.reads.len(),
        })
    }
}

/// Removes and returns the requests that arrived more than `timeout` before
/// `now`.
fn take_expired<K: Copy + Eq + std::hash::Hash, V>(
    waiting: &mut HashMap<K, V>,
    now: Instant,
    timeout: Duration,
    arrived: impl Fn(&V) -> Instant,
) -> Vec<(K, V)> {
    let expired: Vec<K> = waiting
        .iter()
        .filter(|(_, value)| now.saturating_duration_since(arrived(value)) > timeout)
        .map(|(&key, _)| key)
        .collect();
    expired.into_iter().filter_map(|key| waiting.remove(&key).map(|value| (key, value))).collect()
}

/// The client's answer for an applied write: the state machine's reply, or
/// an empty `Ok` for an entry the state machine does not see.
fn applied_status(response: Option<Bytes>) -> ResponseStatus {
    match response {
        Some(bytes) => match Reply::decode(&bytes) {
            Ok(reply) => reply.into_status(),
            Err(_) => ResponseStatus::Ok(bytes),
        },
        None => ResponseStatus::Ok(Bytes::new()),
    }
}

/// Removes from `waiting` (read index, context) the reads the state machine
/// has caught up with, and returns their contexts in order.
pub fn take_safe_reads(waiting: &mut Vec<(Index, u64)>, applied: Index) -> Vec<u64> {
    let mut safe = Vec::new();
    waiting.retain(|&(index, context)| {
        if index <= applied {
            safe.push(context);
            return false;
        }
        true
    });
    safe
}
