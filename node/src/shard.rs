//! The driver of one shard: the loop that joins the engine, the WAL, the
//! transport and the state machine on one core.
//!
//! For each `Ready` the driver, in this order: installs a received snapshot;
//! hands the entry batches to the WAL without waiting for them; syncs the hard
//! state when the term or vote changed; sends the messages that may leave at
//! once (the leader's appends: its own disk write runs in parallel with
//! replication); queues the messages that must wait until the WAL reports this
//! Ready's writes durable; applies committed entries and answers the clients
//! waiting for them; serves reads that became safe; takes a snapshot when the
//! engine asks; and hands the Ready back. Durability reports from the WAL
//! (strictly in order) release the waiting messages and tell the engine,
//! which then counts the leader's own log in the commit quorum.
//!
//! Nothing slow runs on the driver: a snapshot is only captured here and is
//! serialized on a helper thread and stored by a background task; log
//! compaction and the commit-only hard state (saved without `fdatasync`, at
//! most once a tick) are background tasks too.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use engine::raft::ReadMode;
use engine::{
    ConfChange, ConfChangeOp, EntryKind, HardState, Index, Message, NodeId, ProposeError, Raft, Role, SnapshotMeta,
    StateMachine, Term,
};
use net::{
    AdminRequest, ClientRequest, Link, LinkConfig, ReadConsistency, ReplyError, ReplyTo, RequestBody, ResponseStatus,
};
use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use wal::{AppendTicket, LogStore, Wal, WalError};

use crate::fsm::QueryStateMachine;
use crate::replicated::{NodeStateMachine, SetAddresses};
use crate::session::{encode_envelope_in, EnvelopeRef, Reply, CLIENT_ID_NONE};
use crate::stats::ShardStats;

/// Events a shard's inbox carries, bounded by [`SHARD_INBOX_MAX`].
pub enum ShardEvent {
    Raft(Message),
    Request { request: ClientRequest, reply: Replier, arrived: Instant },
}

/// Events queued for a shard, at most; beyond it Raft messages are dropped
/// (Raft retries) and client requests answered `Busy`.
pub const SHARD_INBOX_MAX: usize = 8192;
/// Events handled per wake-up before the driver processes a Ready, so one busy
/// connection cannot starve ticks and durability reports.
const EVENTS_PER_WAKE_MAX: usize = 4096;
/// How long shutdown waits for background work on the log to end.
const SHUTDOWN_BACKGROUND_WAIT: Duration = Duration::from_secs(5);
/// A request not answered within this time gets `TimedOut` (a write may
/// still be applied: the client retries with the same sequence number).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a response goes: a connection on this core, or a request forwarded
/// from another core.
pub enum Replier {
    Local(ReplyTo),
    Forwarded(oneshot::Sender<ResponseStatus>),
}

impl Replier {
    /// Answers, never dropping the response silently: a full connection
    /// queue is waited on by a task of its own.
    pub fn send(self, status: ResponseStatus) {
        match self {
            Replier::Local(reply) => match reply.try_send(status) {
                Ok(()) | Err(ReplyError::Closed(_)) => {}
                Err(ReplyError::Full(status)) => {
                    tokio_uring::spawn(async move {
                        let _ = reply.send(status).await;
                    });
                }
            },
            Replier::Forwarded(sender) => {
                let _ = sender.send(status);
            }
        }
    }
}

/// The peer links of one core, shared by the shards on it: core `k` of one
/// node talks to core `k` of the others.
pub struct Peers {
    node_id: NodeId,
    cluster_id: u64,
    token: Bytes,
    core: u16,
    links: RefCell<HashMap<NodeId, (SocketAddr, Link)>>,
}

impl Peers {
    pub fn new(node_id: NodeId, cluster_id: u64, token: Bytes, core: u16) -> Peers {
        Peers { node_id, cluster_id, token, core, links: RefCell::new(HashMap::new()) }
    }

    /// Makes sure a link to `id` exists, given its base peer address (core 0).
    pub fn ensure(&self, id: NodeId, base: SocketAddr) {
        if id == self.node_id {
            return;
        }
        let Some(addr) = crate::server::core_addr(base, self.core) else {
            tracing::warn!(peer = id, %base, core = self.core, "no port for this core at the peer");
            return;
        };
        let mut links = self.links.borrow_mut();
        if links.get(&id).is_some_and(|(known, _)| *known == addr) {
            return;
        }
        if let Some((_, old)) = links.remove(&id) {
            old.close();
        }
        let link = Link::spawn(LinkConfig::new(self.cluster_id, self.node_id, self.token.clone(), id, addr));
        links.insert(id, (addr, link));
    }

    pub fn send(&self, shard_id: u32, message: Message) {
        if let Some((_, link)) = self.links.borrow().get(&message.to) {
            // A full queue or a down link drops the message: Raft resends.
            let _ = link.send(shard_id, message);
        }
    }

    pub fn close_all(&self) {
        for (_, (_, link)) in self.links.borrow_mut().drain() {
            link.close();
        }
    }
}

/// What a shard needs to know about its node.
pub struct ShardContext {
    pub shard_id: u32,
    pub node_id: NodeId,
    pub core: u16,
    /// This node's base peer and client addresses (core 0).
    pub peer_addr: SocketAddr,
    pub client_addr: SocketAddr,
    pub tick_interval: Duration,
    pub read_consistency_default: ReadConsistency,
    /// Forward session writes that reach a follower to the leader.
    pub forward_writes: bool,
    /// Largest command accepted: a batch must fit the WAL's batch limit.
    pub command_bytes_max: usize,
    pub shutdown: Arc<AtomicBool>,
}

/// Why a shard stopped.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error("shard {shard}: the write-ahead log failed, the shard stopped: {source}")]
    Wal { shard: u32, source: WalError },
    #[error("shard {shard}: the state machine cannot restore a snapshot: {reason}")]
    Restore { shard: u32, reason: String },
}

struct PendingWrite {
    term: Term,
    reply: Replier,
    arrived: Instant,
    proposed: Instant,
}

/// A session write this follower forwarded to the leader, answered when an
/// entry with its client id and sequence is applied here.
struct ForwardedWrite {
    reply: Replier,
    arrived: Instant,
}

/// Forwarded writes waiting at once; more are answered `Busy`.
const FORWARDED_MAX: usize = 4096;
/// A forwarded write not applied within this long is answered `TimedOut`:
/// the leader drops what it cannot take and sends no answer.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);

/// A snapshot being serialized and stored: its metadata and, once stored,
/// its bytes.
type PendingSnapshot = (SnapshotMeta, oneshot::Receiver<Result<Bytes, WalError>>);

struct PendingRead {
    query: Bytes,
    reply: Replier,
    arrived: Instant,
}

/// One shard's driver.
pub struct Shard<S: QueryStateMachine> {
    ctx: ShardContext,
    raft: Raft,
    wal: Rc<Wal>,
    fsm: NodeStateMachine<S>,
    peers: Rc<Peers>,
    inbox: mpsc::Receiver<ShardEvent>,
    writes: HashMap<Index, PendingWrite>,
    /// Writes forwarded to the leader, by client id and sequence, and the
    /// term they were forwarded in.
    forwarded: HashMap<(u64, u64), ForwardedWrite>,
    forwarded_term: Term,
    reads: HashMap<u64, PendingRead>,
    /// Reads whose index is known, waiting for the state machine to reach it.
    reads_waiting: Vec<(Index, u64)>,
    next_read_context: u64,
    /// Appends handed to the WAL and not yet durable, with when.
    tickets: VecDeque<(AppendTicket, Instant)>,
    /// Messages waiting for the WAL append with this sequence.
    after_persist: VecDeque<(u64, Vec<Message>)>,
    hard_state_pending: Option<HardState>,
    hard_state_saving: Rc<Cell<bool>>,
    snapshot: Option<(SnapshotMeta, Bytes)>,
    /// A snapshot being stored by a background task: reported to the engine
    /// once durable.
    pending_snapshot: Option<PendingSnapshot>,
    incoming_snapshot: BytesMut,
    announced_term: Term,
    stats: Rc<RefCell<ShardStats>>,
    last_sweep: Instant,
    /// Where proposals' envelopes are encoded (see `encode_envelope_in`).
    envelope_arena: BytesMut,
}

impl<S: QueryStateMachine> Shard<S> {
    /// Opens the shard's WAL, rebuilds the engine and the state machine from
    /// it, and returns the driver ready to run.
    #[allow(clippy::too_many_arguments)]
    pub async fn open(
        ctx: ShardContext,
        wal_config: wal::WalConfig,
        engine_config: engine::Config,
        app: S,
        peers: Rc<Peers>,
        inbox: mpsc::Receiver<ShardEvent>,
        stats: Rc<RefCell<ShardStats>>,
    ) -> Result<Shard<S>, ShardError> {
        let shard = ctx.shard_id;
        let (wal, recovered) = Wal::open(wal_config).await.map_err(|source| ShardError::Wal { shard, source })?;
        let mut fsm = NodeStateMachine::new(app);
        let mut snapshot = None;
        if recovered.snapshot.is_some() {
            if let Some((meta, data)) = wal.load_snapshot().await.map_err(|source| ShardError::Wal { shard, source })? {
                fsm.restore(&data).map_err(|error| ShardError::Restore { shard, reason: error.0 })?;
                snapshot = Some((meta, data));
            }
        }
        let mut raft =
            Raft::new(engine_config, recovered).map_err(|error| ShardError::Restore { shard, reason: error.0 })?;
        if let Some((meta, data)) = &snapshot {
            raft.snapshot_created(meta.clone(), data.len() as u64);
        }
        tracing::info!(
            shard,
            term = raft.term(),
            last_index = raft.last_index(),
            commit = raft.committed(),
            "shard recovered"
        );
        Ok(Shard {
            ctx,
            raft,
            wal: Rc::new(wal),
            fsm,
            peers,
            inbox,
            writes: HashMap::new(),
            forwarded: HashMap::new(),
            forwarded_term: 0,
            reads: HashMap::new(),
            reads_waiting: Vec::new(),
            next_read_context: 1,
            tickets: VecDeque::new(),
            after_persist: VecDeque::new(),
            hard_state_pending: None,
            hard_state_saving: Rc::new(Cell::new(false)),
            snapshot,
            pending_snapshot: None,
            incoming_snapshot: BytesMut::new(),
            announced_term: 0,
            stats,
            last_sweep: Instant::now(),
            envelope_arena: BytesMut::new(),
        })
    }

    fn fail(&self, source: WalError) -> ShardError {
        ShardError::Wal { shard: self.ctx.shard_id, source }
    }

    /// Runs until shutdown (or a storage failure, which stops the shard
    /// loudly rather than risk reporting something durable that is not).
    pub async fn run(mut self) -> Result<(), ShardError> {
        let mut ticker = tokio::time::interval(self.ctx.tick_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let result = loop {
            let wal = self.wal.clone();
            let oldest = self.tickets.front().map(|(ticket, _)| ticket.sequence);
            tokio::select! {
                event = self.inbox.recv() => {
                    let Some(event) = event else { break Ok(()) };
                    self.handle(event);
                    for _ in 0..EVENTS_PER_WAKE_MAX {
                        match self.inbox.try_recv() {
                            Ok(event) => self.handle(event),
                            Err(_) => break,
                        }
                    }
                }
                durable = wal.wait_durable(oldest.unwrap_or(0)), if oldest.is_some() => {
                    if let Err(error) = durable {
                        break Err(self.fail(error));
                    }
                }
                _ = ticker.tick() => {
                    self.raft.tick();
                    if self.ctx.shutdown.load(Ordering::Relaxed) {
                        break Ok(());
                    }
                    self.sweep_timeouts();
                    self.save_commit_lazily();
                }
            }
            self.on_durable();
            if let Err(error) = self.process_ready().await {
                break Err(error);
            }
        };
        self.stop(result).await
    }

    /// Answers everything still waiting, closes the WAL cleanly, and reports
    /// why the shard stopped.
    async fn stop(mut self, result: Result<(), ShardError>) -> Result<(), ShardError> {
        for (_, write) in self.writes.drain() {
            write.reply.send(ResponseStatus::TimedOut);
        }
        for (_, read) in self.reads.drain() {
            read.reply.send(ResponseStatus::TimedOut);
        }
        if result.is_ok() {
            let hard_state = self.raft.hard_state();
            if let Err(error) = self.wal.save_hard_state(hard_state).await {
                tracing::warn!(shard = self.ctx.shard_id, %error, "saving the hard state at shutdown failed");
            }
            // Background work (a paced compaction, a snapshot being stored)
            // holds the log for a moment; let it finish so the log closes.
            let deadline = Instant::now() + SHUTDOWN_BACKGROUND_WAIT;
            while Rc::strong_count(&self.wal) > 1 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            match Rc::try_unwrap(self.wal) {
                Ok(wal) => {
                    if let Err(error) = wal.close().await {
                        tracing::warn!(shard = self.ctx.shard_id, %error, "closing the WAL failed");
                    }
                }
                Err(_) => tracing::warn!(shard = self.ctx.shard_id, "WAL still in use at shutdown; not closed"),
            }
            tracing::info!(shard = self.ctx.shard_id, "shard stopped cleanly");
        } else if let Err(error) = &result {
            tracing::error!(shard = self.ctx.shard_id, %error, "shard stopped");
        }
        result
    }

    fn leader_redirect(&self) -> ResponseStatus {
        let leader = self.raft.leader();
        if leader == engine::NODE_NONE {
            return ResponseStatus::NotLeader { leader_id: None, leader_addr: None };
        }
        let addr = self.fsm.addresses(leader).and_then(|a| a.client.clone()).and_then(|base| {
            let base: SocketAddr = base.parse().ok()?;
            crate::server::core_addr(base, self.ctx.core).map(|addr| addr.to_string())
        });
        ResponseStatus::NotLeader { leader_id: Some(leader), leader_addr: addr }
    }

    fn handle(&mut self, event: ShardEvent) {
        match event {
            ShardEvent::Raft(message) => {
                if let Err(ignored) = self.raft.step(message) {
                    tracing::trace!(shard = self.ctx.shard_id, %ignored);
                }
            }
            ShardEvent::Request { request, reply, arrived } => self.handle_request(request, reply, arrived),
        }
    }

    fn handle_request(&mut self, request: ClientRequest, reply: Replier, arrived: Instant) {
        match request.body {
            RequestBody::Write { command } => {
                if command.len() > self.ctx.command_bytes_max {
                    reply.send(ResponseStatus::BadRequest(format!(
                        "command of {} bytes exceeds the limit of {} bytes",
                        command.len(),
                        self.ctx.command_bytes_max
                    )));
                    return;
                }
                let data = encode_envelope_in(&mut self.envelope_arena, request.client_id, request.sequence, &command);
                self.propose(data, (request.client_id, request.sequence), reply, arrived);
            }
            RequestBody::Read { query, consistency } => self.read(query, consistency, reply, arrived),
            RequestBody::Status => {
                let status = self.status_json();
                reply.send(ResponseStatus::Ok(Bytes::from(status.to_string())));
            }
            RequestBody::Admin(admin) => self.admin(admin, reply, arrived),
        }
    }

    fn propose(&mut self, data: Bytes, session: (u64, u64), reply: Replier, arrived: Instant) {
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
                let now = Instant::now();
                self.stats.borrow_mut().queued.record(now - arrived);
                self.writes.insert(index, PendingWrite { term, reply, arrived, proposed: now });
            }
            Err(error) => reply.send(self.refusal(error)),
        }
    }

    /// Sends a session write to the leader; the entry's client id and
    /// sequence find the client again when it is applied here. A retry of a
    /// write still waiting replaces the first wait (the session applies the
    /// write once, and the retry gets its answer).
    fn forward(&mut self, data: Bytes, session: (u64, u64), reply: Replier, arrived: Instant) {
        self.drop_stale_forwards();
        if self.forwarded.len() >= FORWARDED_MAX {
            self.stats.borrow_mut().busy += 1;
            reply.send(ResponseStatus::Busy);
            return;
        }
        match self.raft.forward_proposal(data) {
            Ok(()) => {
                self.forwarded_term = self.raft.term();
                self.stats.borrow_mut().writes_forwarded += 1;
                if let Some(earlier) = self.forwarded.insert(session, ForwardedWrite { reply, arrived }) {
                    earlier.reply.send(ResponseStatus::TimedOut);
                }
            }
            Err(error) => reply.send(self.refusal(error)),
        }
    }

    /// Forwarded writes of an earlier term may never be applied (the leader
    /// that took them lost its place): their clients are sent to the current
    /// leader, and their retries (same sequence) take effect once.
    fn drop_stale_forwards(&mut self) {
        if self.forwarded.is_empty() || self.forwarded_term == self.raft.term() {
            return;
        }
        let redirect = self.leader_redirect();
        for (_, write) in self.forwarded.drain() {
            write.reply.send(redirect.clone());
        }
    }

    fn refusal(&self, error: ProposeError) -> ResponseStatus {
        let mut stats = self.stats.borrow_mut();
        match error {
            ProposeError::NotLeader { .. } => {
                stats.not_leader += 1;
                drop(stats);
                self.leader_redirect()
            }
            ProposeError::Busy { .. } | ProposeError::TooManyReads { .. } | ProposeError::TransferInProgress { .. } => {
                stats.busy += 1;
                ResponseStatus::Busy
            }
            ProposeError::ChangeInProgress(_) => {
                ResponseStatus::BadRequest("a membership change is in progress; retry when it completes".into())
            }
            ProposeError::NotVoter(id) => ResponseStatus::BadRequest(format!("node {id} is not a voter")),
            ProposeError::InvalidChange(reason) => ResponseStatus::BadRequest(reason),
        }
    }

    fn read(&mut self, query: Bytes, consistency: ReadConsistency, reply: Replier, arrived: Instant) {
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
        let context = self.next_read_context;
        self.next_read_context += 1;
        match self.raft.read_index(context, mode) {
            Ok(()) => {
                self.reads.insert(context, PendingRead { query, reply, arrived });
            }
            Err(error) => reply.send(self.refusal(error)),
        }
    }

    fn finish_read(&self, answer: Bytes, reply: Replier, arrived: Instant) {
        let status = match Reply::decode(&answer) {
            Ok(reply) => reply.into_status(),
            Err(_) => ResponseStatus::Ok(answer),
        };
        reply.send(status);
        let mut stats = self.stats.borrow_mut();
        stats.reads.record_since(arrived);
        stats.reads_served += 1;
    }

    fn admin(&mut self, admin: AdminRequest, reply: Replier, arrived: Instant) {
        let change = |op| ConfChange { ops: vec![op] };
        let result = match admin {
            AdminRequest::AddLearner { id, addr } => {
                if addr.parse::<SocketAddr>().is_err() {
                    reply.send(ResponseStatus::BadRequest(format!("{addr:?} is not an IP:port address")));
                    return;
                }
                if self.raft.role() != Role::Leader {
                    reply.send(self.leader_redirect());
                    return;
                }
                // The address goes through the log first, so every member
                // can reach the learner (and any later leader knows it).
                let set = SetAddresses { id, peer: Some(addr), client: None };
                if let Err(error) = self.raft.propose(set.encode()) {
                    reply.send(self.refusal(error));
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
                reply.send(status);
                return;
            }
            AdminRequest::TakeSnapshot => {
                let status = match self.take_snapshot_now() {
                    Ok(index) => ResponseStatus::Ok(Bytes::from(json!({ "snapshot_index": index }).to_string())),
                    Err(reason) => ResponseStatus::BadRequest(reason),
                };
                reply.send(status);
                return;
            }
            AdminRequest::Stats => {
                let stats = self.stats.borrow().to_json();
                let body = json!({ "shard": self.ctx.shard_id, "node": self.ctx.node_id, "stats": stats,
                    "wal": format!("{:?}", self.wal.stats()) });
                reply.send(ResponseStatus::Ok(Bytes::from(body.to_string())));
                return;
            }
        };
        match result {
            Ok((index, term)) => {
                let now = Instant::now();
                self.writes.insert(index, PendingWrite { term, reply, arrived, proposed: now });
            }
            Err(error) => reply.send(self.refusal(error)),
        }
    }

    /// Snapshots are normally taken when the engine asks; an admin request
    /// marks one due at the next Ready by taking it right away here.
    fn take_snapshot_now(&mut self) -> Result<Index, String> {
        if self.pending_snapshot.is_some() {
            return Err("a snapshot is being stored; retry in a moment".into());
        }
        let index = self.fsm.applied();
        let meta = self.raft.snapshot_meta_at(index).ok_or("nothing applied since the last snapshot")?;
        // Only the capture runs on the driver; the bytes are produced on a
        // helper thread while the shard goes on applying.
        let started = Instant::now();
        let image = self.fsm.snapshot_image();
        self.stats.borrow_mut().snapshot_capture.record_since(started);
        let serialized = serialize_in_background(image);
        let wal = self.wal.clone();
        let stats = self.stats.clone();
        // Storing waits for queued appends; do it off the driver's path and
        // report it once durable.
        let (done_sender, done) = oneshot::channel();
        let meta_for_store = meta.clone();
        tokio_uring::spawn(async move {
            let Ok((data, serialize_time)) = serialized.await else {
                return; // The helper thread panicked: dropping the sender reports it.
            };
            stats.borrow_mut().snapshot_serialize.record(serialize_time);
            let result = wal.save_snapshot(meta_for_store, data.clone()).await;
            if result.is_ok() {
                stats.borrow_mut().snapshots_taken += 1;
            }
            let _ = done_sender.send(result.map(|()| data));
        });
        self.pending_snapshot = Some((meta, done));
        Ok(index)
    }

    fn status_json(&self) -> serde_json::Value {
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
            "pending_writes": self.writes.len(),
            "forwarded_writes_waiting": self.forwarded.len(),
            "writes_forwarded": self.stats.borrow().writes_forwarded,
            "pending_reads": self.reads.len(),
        })
    }

    /// Tells the engine and the waiting messages about the WAL's progress.
    fn on_durable(&mut self) {
        let durable = self.wal.durable_sequence();
        let mut last = None;
        while let Some(&(ticket, submitted)) = self.tickets.front() {
            if ticket.sequence > durable {
                break;
            }
            self.stats.borrow_mut().wal_write_sync.record_since(submitted);
            last = Some(ticket);
            self.tickets.pop_front();
        }
        if let Some(ticket) = last {
            self.raft.persisted(ticket.last_index, ticket.last_term);
        }
        while let Some((sequence, _)) = self.after_persist.front() {
            if *sequence > durable {
                break;
            }
            let (_, messages) = self.after_persist.pop_front().expect("present");
            for message in messages {
                self.peers.send(self.ctx.shard_id, message);
            }
        }
    }

    async fn process_ready(&mut self) -> Result<(), ShardError> {
        self.finish_pending_snapshot();
        while self.raft.has_ready() {
            let mut ready = self.raft.ready();
            if let Some(soft) = ready.soft_state {
                self.on_role_change(soft.role);
                self.drop_stale_forwards();
            }
            // A received snapshot: store it, then restore the state machine,
            // before the entries that follow it are appended or applied.
            for write in std::mem::take(&mut ready.snapshot_writes) {
                if write.offset == 0 {
                    self.incoming_snapshot.clear();
                }
                self.incoming_snapshot.extend_from_slice(&write.data);
            }
            if let Some(meta) = ready.snapshot_install.take() {
                let data = self.incoming_snapshot.split().freeze();
                self.wal.save_snapshot(meta.clone(), data.clone()).await.map_err(|source| self.fail(source))?;
                self.fsm
                    .restore(&data)
                    .map_err(|error| ShardError::Restore { shard: self.ctx.shard_id, reason: error.0 })?;
                self.snapshot = Some((meta, data));
                self.stats.borrow_mut().snapshots_installed += 1;
            }
            for batch in std::mem::take(&mut ready.entries) {
                let ticket = loop {
                    match self.wal.append(batch.clone()) {
                        Ok(ticket) => break ticket,
                        Err(WalError::QueueFull { .. }) => {
                            // Back-pressure: wait for the oldest write.
                            let oldest = self.wal.durable_sequence() + 1;
                            self.wal.wait_durable(oldest).await.map_err(|source| self.fail(source))?;
                            self.on_durable();
                        }
                        Err(error) => return Err(self.fail(error)),
                    }
                };
                self.tickets.push_back((ticket, Instant::now()));
            }
            if let Some(hard_state) = ready.hard_state {
                if ready.hard_state_must_sync {
                    // A vote or a new term must be durable before any message
                    // that depends on it leaves.
                    self.wal.save_hard_state(hard_state).await.map_err(|source| self.fail(source))?;
                    self.hard_state_pending = None;
                } else {
                    self.hard_state_pending = Some(hard_state);
                }
            }
            for message in std::mem::take(&mut ready.messages) {
                self.peers.send(self.ctx.shard_id, message);
            }
            let waiting = std::mem::take(&mut ready.messages_after_persist);
            if !waiting.is_empty() {
                match self.tickets.back() {
                    Some((ticket, _)) => self.after_persist.push_back((ticket.sequence, waiting)),
                    None => {
                        for message in waiting {
                            self.peers.send(self.ctx.shard_id, message);
                        }
                    }
                }
            }
            let committed = std::mem::take(&mut ready.committed_entries);
            if !committed.is_empty() {
                // One clock read for the batch: reading the clock around
                // every entry was 2% of the machine at 150,000 writes/s.
                let started = Instant::now();
                let count = committed.len() as u64;
                self.fsm.prefetch(&committed);
                for entry in committed {
                    self.apply(entry, started);
                }
                let elapsed = started.elapsed();
                self.stats.borrow_mut().apply.record_n(elapsed / count as u32, count);
            }
            for read in std::mem::take(&mut ready.read_states) {
                self.reads_waiting.push((read.index, read.context));
            }
            for context in std::mem::take(&mut ready.dropped_reads) {
                if let Some(read) = self.reads.remove(&context) {
                    read.reply.send(self.leader_redirect());
                }
            }
            let snapshot_due = ready.snapshot_due;
            let reads = std::mem::take(&mut ready.snapshot_reads);
            let compact_to = ready.compact_to;
            self.raft.advance(ready);
            if snapshot_due && self.pending_snapshot.is_none() {
                if let Err(reason) = self.take_snapshot_now() {
                    tracing::debug!(shard = self.ctx.shard_id, reason, "snapshot skipped");
                }
            }
            for read in reads {
                match &self.snapshot {
                    Some((meta, data)) if meta.index == read.index => {
                        let start = (read.offset as usize).min(data.len());
                        let end = (read.offset + read.len).min(data.len() as u64) as usize;
                        self.raft.snapshot_chunk(read.to, read.index, read.offset, data.slice(start..end));
                    }
                    _ => self.raft.snapshot_unavailable(read.to),
                }
            }
            if let Some(index) = compact_to {
                // Removing segment files and syncing the directory takes tens
                // of milliseconds: in the background. A failure stops the
                // log, and the next append reports it.
                let wal = self.wal.clone();
                let shard = self.ctx.shard_id;
                tokio_uring::spawn(async move {
                    if let Err(error) = wal.compact(index).await {
                        tracing::error!(shard, %error, "compacting the log failed");
                    }
                });
            }
            self.serve_reads();
            self.on_durable();
        }
        Ok(())
    }

    /// Reports a snapshot to the engine once the WAL stored it.
    fn finish_pending_snapshot(&mut self) {
        let Some((_, done)) = &mut self.pending_snapshot else { return };
        match done.try_recv() {
            Err(oneshot::error::TryRecvError::Empty) => {}
            Err(oneshot::error::TryRecvError::Closed) => {
                tracing::error!(shard = self.ctx.shard_id, "serializing a snapshot failed");
                self.pending_snapshot = None;
            }
            Ok(result) => {
                let (meta, _) = self.pending_snapshot.take().expect("present");
                match result {
                    Ok(data) => {
                        self.raft.snapshot_created(meta.clone(), data.len() as u64);
                        self.snapshot = Some((meta, data));
                    }
                    Err(error) => tracing::error!(shard = self.ctx.shard_id, %error, "storing a snapshot failed"),
                }
            }
        }
    }

    fn on_role_change(&mut self, role: Role) {
        tracing::info!(
            shard = self.ctx.shard_id,
            ?role,
            term = self.raft.term(),
            leader = self.raft.leader(),
            "role changed"
        );
        if role != Role::Leader {
            // Proposals may or may not commit under the next leader; the
            // client retries with the same sequence and gets one effect.
            let redirect = self.leader_redirect();
            for (_, write) in self.writes.drain() {
                write.reply.send(redirect.clone());
            }
            return;
        }
        if self.announced_term != self.raft.term() {
            // Tell every replica where clients reach the new leader.
            self.announced_term = self.raft.term();
            let set = SetAddresses {
                id: self.ctx.node_id,
                peer: Some(self.ctx.peer_addr.to_string()),
                client: Some(self.ctx.client_addr.to_string()),
            };
            let _ = self.raft.propose(set.encode());
        }
    }

    /// Applies one entry of a committed batch whose application started at
    /// `committed` (when the engine handed it over), and answers its writer.
    fn apply(&mut self, entry: engine::Entry, committed: Instant) {
        let index = entry.index;
        let response = match entry.kind {
            EntryKind::Normal => {
                let response = self.fsm.apply(index, &entry.data);
                if let Some(set) = SetAddresses::decode(&entry.data) {
                    if let Some(addr) = set.peer.as_deref().and_then(|a| a.parse::<SocketAddr>().ok()) {
                        self.peers.ensure(set.id, addr);
                    }
                }
                Some(response)
            }
            EntryKind::Noop | EntryKind::Config => {
                self.fsm.skip(index);
                None
            }
        };
        if !self.forwarded.is_empty() && entry.kind == EntryKind::Normal {
            self.answer_forwarded(&entry.data, response.as_ref());
        }
        let Some(write) = self.writes.remove(&index) else { return };
        if write.term != entry.term {
            // Another leader's entry replaced ours at this index.
            write.reply.send(self.leader_redirect());
            return;
        }
        let mut stats = self.stats.borrow_mut();
        stats.replication.record(committed.saturating_duration_since(write.proposed));
        stats.total.record_since(write.arrived);
        stats.writes_applied += 1;
        write.reply.send(applied_status(response));
    }

    /// Answers the forwarded write this applied entry carries, if any.
    fn answer_forwarded(&mut self, data: &Bytes, response: Option<&Bytes>) {
        let Ok(envelope) = EnvelopeRef::decode(data) else { return };
        let Some(write) = self.forwarded.remove(&(envelope.client_id, envelope.sequence)) else { return };
        let mut stats = self.stats.borrow_mut();
        stats.total.record_since(write.arrived);
        stats.writes_applied += 1;
        write.reply.send(applied_status(response.cloned()));
    }

    fn serve_reads(&mut self) {
        if self.reads_waiting.is_empty() {
            return;
        }
        for context in take_safe_reads(&mut self.reads_waiting, self.fsm.applied()) {
            if let Some(read) = self.reads.remove(&context) {
                let answer = self.fsm.query(&read.query);
                self.finish_read(answer, read.reply, read.arrived);
            }
        }
    }

    fn sweep_timeouts(&mut self) {
        if self.last_sweep.elapsed() < Duration::from_secs(1) {
            return;
        }
        self.last_sweep = Instant::now();
        for (_, write) in take_expired(&mut self.writes, REQUEST_TIMEOUT, |write| write.arrived) {
            write.reply.send(ResponseStatus::TimedOut);
        }
        self.drop_stale_forwards();
        for (_, write) in take_expired(&mut self.forwarded, FORWARD_TIMEOUT, |write| write.arrived) {
            write.reply.send(ResponseStatus::TimedOut);
        }
        for (context, read) in take_expired(&mut self.reads, REQUEST_TIMEOUT, |read| read.arrived) {
            read.reply.send(ResponseStatus::TimedOut);
            self.reads_waiting.retain(|&(_, c)| c != context);
        }
    }

    /// The commit index is not needed for safety, so a commit-only hard state
    /// is written in the background, without `fdatasync`, at most once a tick
    /// and one write at a time: after a crash the node may restart with an
    /// older commit index and learn the rest from the leader.
    fn save_commit_lazily(&mut self) {
        if self.hard_state_saving.get() {
            return;
        }
        let Some(hard_state) = self.hard_state_pending.take() else { return };
        self.hard_state_saving.set(true);
        let wal = self.wal.clone();
        let saving = self.hard_state_saving.clone();
        tokio_uring::spawn(async move {
            if let Err(error) = wal.save_commit(hard_state).await {
                tracing::error!(%error, "saving the hard state failed");
            }
            saving.set(false);
        });
    }
}

/// Removes and returns the requests that arrived more than `timeout` ago.
fn take_expired<K: Copy + Eq + std::hash::Hash, V>(
    waiting: &mut HashMap<K, V>,
    timeout: Duration,
    arrived: impl Fn(&V) -> Instant,
) -> Vec<(K, V)> {
    let expired: Vec<K> =
        waiting.iter().filter(|(_, value)| arrived(value).elapsed() > timeout).map(|(&key, _)| key).collect();
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

/// Serializes a snapshot image on a thread of its own, allowed on every CPU
/// (a thread inherits its creator's pinning, and the driver's core is the
/// one that should not carry this work) and at a lower priority than the
/// drivers, and hands back the bytes with the time it took.
fn serialize_in_background(image: Box<dyn engine::SnapshotImage>) -> oneshot::Receiver<(Bytes, Duration)> {
    let (sender, receiver) = oneshot::channel();
    let spawned = std::thread::Builder::new().name("snapshot".into()).spawn(move || {
        crate::server::unpin_thread();
        crate::server::lower_thread_priority();
        let started = Instant::now();
        let mut out = BytesMut::new();
        image.serialize_into(&mut out);
        let _ = sender.send((out.freeze(), started.elapsed()));
    });
    if let Err(error) = spawned {
        // The sender went with the closure: the receiver reports the failure.
        tracing::error!(%error, "could not start a snapshot thread");
    }
    receiver
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
