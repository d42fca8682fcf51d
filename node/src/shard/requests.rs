//! Client requests: writes proposed (or forwarded to the leader), reads at
//! the asked consistency, admin requests, redirects and timeouts; and the
//! answers when an entry is applied or a read becomes safe.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use engine::raft::ReadMode;
use engine::{ConfChange, ConfChangeOp, Index, NodeId, ProposeError, Role, Term};
use net::{AdminRequest, ClientRequest, JoinRequest, ReadConsistency, RequestBody, ResponseStatus};
use rustc_hash::FxHashMap as HashMap;
use serde_json::json;

use super::lease::{LeaseNow, LeaseRead};
use super::{Clock, Shard, ShardStorage, ShardTransport, REQUEST_TIMEOUT};
use crate::app::{Rejection, StateMachine};
use crate::replicated::{
    encode_write_in, Addresses, Applied, NodeCommand, Outcome, SetAddresses, Write, GROUP_BYTES_MAX, WRITE_HEADER_SIZE,
};
use crate::session::{merge_settings, validate_settings, Cached, Refusal};

/// Forwarded writes (and session openings) waiting at once; more are
/// answered `Busy`.
pub(super) const FORWARDED_MAX: usize = 4096;
/// The `sequence` a forwarded session close is found by (writes use 1 and
/// up).
const CLOSE_SEQUENCE: u64 = 0;
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

/// The writes of a group this leader proposed, answered in the group's
/// order when its index is applied.
struct PendingGroup<R> {
    term: Term,
    /// Each write's client and when it arrived.
    clients: Vec<(R, Instant)>,
    proposed: Instant,
}

/// A session write this follower forwarded to the leader (or a session
/// opening proposed or forwarded from here), answered when its entry is
/// applied here.
struct ForwardedWrite<R> {
    reply: R,
    arrived: Instant,
}

struct PendingRead<R> {
    /// `None`: a backup's barrier (see `Shard::backup_begin`).
    query: Option<Bytes>,
    reply: R,
    arrived: Instant,
    /// A read served from the lease, checked again when it is served.
    lease: Option<LeaseRead>,
}

/// Emptied client lists a shard keeps for its next groups: about as many
/// groups as are in flight at once (one per turn until they commit).
const SPARE_CLIENT_LISTS: usize = 8;

/// The clients a shard owes an answer. The maps hash with a fixed hasher,
/// so that their order (the order in which clients are answered when many
/// are at once) is the same in every run: the simulator replays a seed
/// exactly.
pub(super) struct Requests<R> {
    /// Writes this leader proposed, by log index. Invariant: every index is
    /// above the applied index (an applied write is answered and removed).
    writes: HashMap<Index, PendingWrite<R>>,
    /// Groups of writes this leader proposed, by log index; the same
    /// invariant.
    groups: HashMap<Index, PendingGroup<R>>,
    /// The clients of the writes gathered since the last
    /// [`Shard::propose_gathered`], in order (their bytes are in the shard's
    /// group builder).
    gathered: Vec<(R, Instant)>,
    /// Emptied client lists of answered groups, for the next groups (a
    /// list grown anew each turn cost several reallocations per turn).
    /// At most [`SPARE_CLIENT_LISTS`].
    spare_clients: Vec<Vec<(R, Instant)>>,
    /// Writes forwarded to the leader, by client id and sequence (a session
    /// close by its id and [`CLOSE_SEQUENCE`]), all forwarded in
    /// `forwarded_term`.
    forwarded: HashMap<(u64, u64), ForwardedWrite<R>>,
    /// Session openings this node proposed or forwarded, by nonce, all in
    /// `forwarded_term`.
    openings: HashMap<u64, ForwardedWrite<R>>,
    forwarded_term: Term,
    /// The next session-opening nonce.
    nonce_next: u64,
    /// Reads by context, waiting for the engine or the state machine.
    reads: HashMap<u64, PendingRead<R>>,
    /// Reads whose index is known, waiting for the state machine to reach
    /// it. Invariant: each context is in `reads`.
    reads_waiting: Vec<(Index, u64)>,
    next_read_context: u64,
}

impl<R> Requests<R> {
    pub(super) fn new(nonce_salt: u64) -> Requests<R> {
        Requests {
            writes: HashMap::default(),
            groups: HashMap::default(),
            gathered: Vec::new(),
            spare_clients: Vec::new(),
            forwarded: HashMap::default(),
            openings: HashMap::default(),
            forwarded_term: 0,
            nonce_next: nonce_salt,
            reads: HashMap::default(),
            reads_waiting: Vec::new(),
            next_read_context: 1,
        }
    }

    /// Whether reads wait for the state machine to reach their index.
    pub(super) fn reads_waiting(&self) -> bool {
        !self.reads_waiting.is_empty()
    }

    /// Every waiting client, removed.
    pub(super) fn drain_all(&mut self) -> Vec<R> {
        self.reads_waiting.clear();
        let writes = self.writes.drain().map(|(_, write)| write.reply);
        let groups = self.groups.drain().flat_map(|(_, group)| group.clients).map(|(reply, _)| reply);
        let gathered = self.gathered.drain(..).map(|(reply, _)| reply);
        let forwarded = self.forwarded.drain().map(|(_, write)| write.reply);
        let openings = self.openings.drain().map(|(_, write)| write.reply);
        let reads = self.reads.drain().map(|(_, read)| read.reply);
        writes.chain(groups).chain(gathered).chain(forwarded).chain(openings).chain(reads).collect()
    }

    pub(super) fn check_invariants(&self, applied: Index) -> Result<(), String> {
        if let Some(index) = self.writes.keys().chain(self.groups.keys()).find(|&&index| index <= applied) {
            return Err(format!("a write at index {index} waits, but {applied} is applied"));
        }
        if let Some((index, _)) = self.groups.iter().find(|(_, group)| group.clients.len() < 2) {
            return Err(format!("the group at index {index} waits for fewer than two writes"));
        }
        if let Some((_, context)) = self.reads_waiting.iter().find(|(_, context)| !self.reads.contains_key(context)) {
            return Err(format!("read context {context} waits for its index but has no client"));
        }
        if self.forwarded.len() + self.openings.len() > FORWARDED_MAX {
            return Err(format!(
                "{} forwarded writes and {} openings wait, more than {FORWARDED_MAX}",
                self.forwarded.len(),
                self.openings.len()
            ));
        }
        Ok(())
    }
}

impl<S, D, T, C> Shard<S, D, T, C>
where
    S: StateMachine,
    D: ShardStorage,
    T: ShardTransport,
    C: Clock,
{
    pub(super) fn handle_request(&mut self, request: ClientRequest, caller: &str, reply: T::Reply, arrived: Instant) {
        if let Some(owner) = self.misrouted(&request.body) {
            let status = ResponseStatus::BadRequest(format!(
                "the key belongs to shard {owner} of {} (net::kv::shard_for_key), not to shard {}",
                self.ctx.shards, self.ctx.shard_id
            ));
            self.transport.reply(reply, status);
            return;
        }
        if self.raft.is_witness()
            && matches!(
                request.body,
                RequestBody::Write { .. }
                    | RequestBody::Read { .. }
                    | RequestBody::OpenSession
                    | RequestBody::CloseSession
            )
        {
            // A witness holds no state machine (not even a stale one): the
            // client asks the leader, as a follower's client would.
            self.stats.not_leader += 1;
            let redirect = self.leader_redirect();
            self.transport.reply(reply, redirect);
            return;
        }
        if !matches!(request.body, RequestBody::Write { .. }) {
            // Whatever this request proposes goes after the writes that
            // arrived before it.
            self.propose_gathered();
        }
        if matches!(request.body, RequestBody::Write { .. } | RequestBody::CloseSession) {
            if let Some(refused) = self.refuse_session_caller(request.client_id, caller) {
                self.transport.reply(reply, refused);
                return;
            }
        }
        match request.body {
            RequestBody::Write { ref command } => {
                let write =
                    Write { client_id: request.client_id, sequence: request.sequence, ack: request.ack, command };
                self.write(write, reply, arrived);
            }
            RequestBody::Read { query, consistency } => self.read(query, consistency, reply, arrived),
            RequestBody::Status => {
                let status = self.status_json();
                self.transport.reply(reply, ResponseStatus::Ok(Bytes::from(status.to_string())));
            }
            RequestBody::Admin(admin) => self.admin(admin, reply, arrived),
            RequestBody::OpenSession => self.open_session(caller, reply, arrived),
            RequestBody::CloseSession => {
                if request.client_id == 0 {
                    let status = ResponseStatus::BadRequest("closing a session needs its client id".into());
                    self.transport.reply(reply, status);
                    return;
                }
                let data = NodeCommand::CloseSession { client_id: request.client_id }.encode();
                self.propose(data, (request.client_id, CLOSE_SEQUENCE), reply, arrived);
            }
        }
    }

    /// A client's write: checked, then gathered (as leader), forwarded or
    /// proposed.
    fn write(&mut self, write: Write<'_>, reply: T::Reply, arrived: Instant) {
        if write.command.len() > self.ctx.command_bytes_max {
            let status = ResponseStatus::BadRequest(format!(
                "command of {} bytes exceeds the limit of {} bytes",
                write.command.len(),
                self.ctx.command_bytes_max
            ));
            self.transport.reply(reply, status);
            return;
        }
        if let Err(reason) = write.check() {
            self.transport.reply(reply, ResponseStatus::BadRequest(reason.into()));
            return;
        }
        if self.raft.role() == Role::Leader {
            return self.gather(&write, reply, arrived);
        }
        let data = encode_write_in(&mut self.envelope_arena, &write);
        self.propose(data, (write.client_id, write.sequence), reply, arrived);
    }

    /// Refuses a write or close in session `client_id` (0: none) that
    /// `caller` may not make (see `session`, "Owners"): `Forbidden` when
    /// the session belongs to another user. When the entry that opened it
    /// is not applied here yet (a session id reaches a client only from a
    /// node that applied its opening, so this node is behind), a follower
    /// sends the client to the leader, and the leader (which applies what
    /// it committed soon) answers `Busy`, which clients retry: a follower
    /// that stays behind (a learner removed while cut off never hears of
    /// it) answering `Busy` held a client that kept retrying there for
    /// good (simulator seed 320130 of three nodes). Checked only where the
    /// write is proposed or forwarded, since a forwarded write no longer
    /// carries its caller; a node that redirects the client leaves it to
    /// the node it goes to.
    fn refuse_session_caller(&mut self, client_id: u64, caller: &str) -> Option<ResponseStatus> {
        let proposes_here =
            self.raft.role() == Role::Leader || (self.ctx.forward_writes && self.raft.leader() != engine::NODE_NONE);
        if client_id == 0 || !proposes_here {
            return None;
        }
        match self.fsm.may_use_session(client_id, caller) {
            Some(true) => None,
            Some(false) => {
                self.stats.session_owner_refused += 1;
                tracing::debug!(shard = self.ctx.shard_id, client_id, caller, "a session of another user refused");
                Some(ResponseStatus::Forbidden(format!(
                    "session {client_id} belongs to another user; open a session of your own"
                )))
            }
            None if self.raft.role() == Role::Leader => {
                self.stats.busy += 1;
                Some(ResponseStatus::Busy)
            }
            None => {
                self.stats.not_leader += 1;
                Some(self.leader_redirect())
            }
        }
    }

    /// Proposes a session opening for `caller` (forwarding it from a
    /// follower when the node forwards); the applied entry's index is the
    /// session's id, and the nonce finds this client again when it is
    /// applied here. The session is `caller`'s once every member reads
    /// owners (see `replicated`), and anyone's before.
    fn open_session(&mut self, caller: &str, reply: T::Reply, arrived: Instant) {
        let leader = self.raft.role() == Role::Leader;
        let forwards = self.ctx.forward_writes && self.raft.leader() != engine::NODE_NONE;
        if !(leader || forwards) {
            let redirect = self.leader_redirect();
            self.transport.reply(reply, redirect);
            return;
        }
        if !leader && self.full_follower_refuses() {
            self.transport.reply(reply, ResponseStatus::NoSpace);
            return;
        }
        self.drop_stale_forwards();
        if self.requests.forwarded.len() + self.requests.openings.len() >= FORWARDED_MAX {
            self.stats.busy += 1;
            self.transport.reply(reply, ResponseStatus::Busy);
            return;
        }
        if leader && self.refuse_for_no_space() {
            self.transport.reply(reply, ResponseStatus::NoSpace);
            return;
        }
        if caller.len() > crate::session::OWNER_SIZE_MAX {
            let status = ResponseStatus::BadRequest(format!("caller name {caller:?} is longer than a user name"));
            self.transport.reply(reply, status);
            return;
        }
        let nonce = self.requests.nonce_next;
        self.requests.nonce_next = nonce.wrapping_add(1);
        let owned = self.fsm.sessions_get_owners(self.raft.conf());
        let owner = owned.then(|| Arc::from(caller));
        let data = NodeCommand::OpenSession { proposer: self.ctx.node_id, nonce, owner }.encode();
        match self.raft.forward_proposal(data) {
            Ok(()) => {
                self.requests.forwarded_term = self.raft.term();
                self.requests.openings.insert(nonce, ForwardedWrite { reply, arrived });
            }
            Err(error) => {
                let status = self.refusal(error);
                self.transport.reply(reply, status);
            }
        }
    }

    /// The shard that owns a keyed request's key, when it is not this one.
    fn misrouted(&self, body: &RequestBody) -> Option<u32> {
        if self.ctx.shards <= 1 {
            return None;
        }
        let bytes = match body {
            RequestBody::Write { command } => command,
            RequestBody::Read { query, .. } => query,
            _ => return None,
        };
        let (shards, shard_id) = (self.ctx.shards, self.ctx.shard_id);
        let mut elsewhere = None;
        S::routing_keys(bytes, &mut |key| {
            let owner = net::kv::shard_for_key(key, shards);
            if owner != shard_id && elsewhere.is_none() {
                elsewhere = Some(owner);
            }
        });
        elsewhere
    }

    /// Where clients find the leader: its id and, from the replicated address
    /// book, its client address on this shard's core.
    pub(super) fn leader_redirect(&self) -> ResponseStatus {
        let leader = self.raft.leader();
        if leader == engine::NODE_NONE {
            return ResponseStatus::NotLeader { leader_id: None, leader_addr: None };
        }
        let addr = self.member_addresses(leader).and_then(|a| a.client).and_then(|base| {
            let base: SocketAddr = base.parse().ok()?;
            crate::topology::core_addr(base, self.ctx.core).map(|addr| addr.to_string())
        });
        ResponseStatus::NotLeader { leader_id: Some(leader), leader_addr: addr }
    }

    fn propose(&mut self, data: Bytes, session: (u64, u64), reply: T::Reply, arrived: Instant) {
        // A follower that knows the leader forwards when the node forwards and
        // the write can be found again when applied (it has a session).
        if self.ctx.forward_writes
            && session.0 != 0
            && self.raft.role() != Role::Leader
            && self.raft.leader() != engine::NODE_NONE
        {
            if self.full_follower_refuses() {
                return self.transport.reply(reply, ResponseStatus::NoSpace);
            }
            return self.forward(data, session, reply, arrived);
        }
        if self.raft.role() == Role::Leader && self.refuse_for_no_space() {
            self.transport.reply(reply, ResponseStatus::NoSpace);
            return;
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

    /// As leader, gathers a write into the group that the next
    /// [`Shard::propose_gathered`] proposes (at the latest when the shard
    /// processes its Ready, in the same turn of its loop): so the writes a
    /// turn takes become one log entry, with one entry's cost in the
    /// engine, the log, the messages and the apply loop, and no write
    /// waits longer than it did alone.
    fn gather(&mut self, write: &Write<'_>, reply: T::Reply, arrived: Instant) {
        if self.refuse_for_no_space() {
            self.transport.reply(reply, ResponseStatus::NoSpace);
            return;
        }
        let size = 4 + WRITE_HEADER_SIZE + write.command.len();
        if self.groups.builder.count() > 0 && self.groups.builder.len_bytes() + size > GROUP_BYTES_MAX {
            self.propose_gathered();
        }
        self.groups.builder.push(write);
        self.requests.gathered.push((reply, arrived));
    }

    /// Proposes the gathered writes: as one group entry when every member
    /// that applies payloads reads groups (see `replicated`), else one
    /// entry each, as before groups existed.
    pub(super) fn propose_gathered(&mut self) {
        if self.requests.gathered.is_empty() {
            return;
        }
        let next = self.requests.spare_clients.pop().unwrap_or_default();
        let clients = std::mem::replace(&mut self.requests.gathered, next);
        let groups = self.fsm.all_read_groups(self.raft.conf());
        let entries = self.groups.builder.finish(!groups);
        let now = self.clock.now();
        if entries.len() == 1 && clients.len() > 1 {
            let data = entries.into_iter().next().expect("one entry");
            match self.raft.propose(data) {
                Ok((index, term)) => {
                    for (_, arrived) in &clients {
                        self.stats.queued.record(now.saturating_duration_since(*arrived));
                    }
                    self.stats.groups_proposed += 1;
                    self.stats.writes_grouped += clients.len() as u64;
                    self.requests.groups.insert(index, PendingGroup { term, clients, proposed: now });
                }
                Err(error) => {
                    let status = self.refusal(error);
                    for (reply, _) in clients {
                        self.transport.reply(reply, status.clone());
                    }
                }
            }
            return;
        }
        for (data, (reply, arrived)) in entries.into_iter().zip(clients) {
            match self.raft.propose(data) {
                Ok((index, term)) => {
                    self.stats.queued.record(now.saturating_duration_since(arrived));
                    self.requests.writes.insert(index, PendingWrite { term, reply, arrived, proposed: now });
                }
                Err(error) => {
                    let status = self.refusal(error);
                    self.transport.reply(reply, status);
                }
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
        let waiting = !self.requests.forwarded.is_empty() || !self.requests.openings.is_empty();
        if !waiting || self.requests.forwarded_term == self.raft.term() {
            return;
        }
        // A session opening of an earlier term may still be applied; it is
        // then a session nobody uses, which expires (or is evicted: it holds
        // no answers).
        let redirect = self.leader_redirect();
        let stale = self
            .requests
            .forwarded
            .drain()
            .map(|(_, write)| write)
            .chain(self.requests.openings.drain().map(|(_, write)| write));
        for write in stale.collect::<Vec<_>>() {
            self.stats.forwards_redirected += 1;
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
        for (_, group) in self.requests.groups.drain() {
            for (reply, _) in group.clients {
                self.transport.reply(reply, redirect.clone());
            }
        }
    }

    fn refusal(&mut self, error: ProposeError) -> ResponseStatus {
        match error {
            ProposeError::NotLeader { .. } => {
                self.stats.not_leader += 1;
                self.leader_redirect()
            }
            // A membership change behind another one (two operators at
            // once, or a leader that has not yet applied what it committed,
            // as right after a handover) goes through once that one is
            // applied, usually within milliseconds: busy, so the client
            // retries until its deadline, as for a transfer in progress.
            ProposeError::Busy { .. }
            | ProposeError::TooManyReads { .. }
            | ProposeError::TransferInProgress { .. }
            | ProposeError::ChangeInProgress(_) => {
                self.stats.busy += 1;
                ResponseStatus::Busy
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
            // Past its lease in real time (see `lease_holds_in_real_time`),
            // a leader confirms with a quorum instead.
            ReadConsistency::Lease => match self.lease_now() {
                LeaseNow::Holds(lease) => {
                    self.stats.lease_reads += 1;
                    return self.read_pending(ReadMode::Lease, Some(query), reply, arrived, Some(lease));
                }
                LeaseNow::Late => {
                    self.stats.lease_reads_late += 1;
                    ReadMode::ReadIndex
                }
                LeaseNow::None => ReadMode::ReadIndex,
            },
            ReadConsistency::Linearizable | ReadConsistency::NodeDefault => ReadMode::ReadIndex,
        };
        self.read_barrier(mode, Some(query), reply, arrived);
    }

    /// Asks the engine for the index a read (or a backup's barrier, with
    /// no query) must wait for; the read waits in `requests.reads`.
    pub(super) fn read_barrier(&mut self, mode: ReadMode, query: Option<Bytes>, reply: T::Reply, arrived: Instant) {
        self.read_pending(mode, query, reply, arrived, None);
    }

    /// [`Shard::read_barrier`] for a read served from the lease too.
    fn read_pending(
        &mut self,
        mode: ReadMode,
        query: Option<Bytes>,
        reply: T::Reply,
        arrived: Instant,
        lease: Option<LeaseRead>,
    ) {
        let context = self.requests.next_read_context;
        self.requests.next_read_context += 1;
        match self.raft.read_index(context, mode) {
            Ok(()) => {
                self.requests.reads.insert(context, PendingRead { query, reply, arrived, lease });
            }
            Err(error) => {
                let status = self.refusal(error);
                self.transport.reply(reply, status);
            }
        }
    }

    fn finish_read(&mut self, answer: Result<Bytes, Rejection>, reply: T::Reply, arrived: Instant) {
        let status = match answer {
            Ok(answer) => ResponseStatus::Ok(answer),
            Err(refusal) => ResponseStatus::BadRequest(refusal.0),
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
            let Some(read) = self.requests.reads.remove(&context) else { continue };
            if read.lease.is_some_and(|lease| !self.lease_held_for(lease)) {
                // A word applied since it was asked (committed before it)
                // shortens the lease it was asked under: a quorum confirms.
                self.stats.lease_reads = self.stats.lease_reads.saturating_sub(1);
                self.stats.lease_reads_late += 1;
                self.read_barrier(ReadMode::ReadIndex, read.query, read.reply, read.arrived);
                continue;
            }
            match read.query {
                Some(query) => {
                    let answer = self.fsm.query(&query);
                    self.finish_read(answer, read.reply, read.arrived);
                }
                None => self.backup_point(self.fsm.applied(), read.reply),
            }
        }
    }

    /// Answers the clients waiting for the entry at `index` (term `term`):
    /// the leader's writer by index, a forwarded write by its session, a
    /// session opening by its nonce. `applied` is what applying it did
    /// (`None` for a no-op or configuration entry); `committed` is when its
    /// batch was handed over.
    pub(super) fn answer_applied(&mut self, index: Index, term: Term, applied: Option<&Applied>, committed: Instant) {
        if let Some(Applied::Group(writes)) = applied {
            return self.answer_group(index, term, writes, committed);
        }
        let forwarded = match applied {
            Some(Applied::Write { session: Some(key), .. }) => self.requests.forwarded.remove(key),
            Some(Applied::SessionClosed { client_id }) => self.requests.forwarded.remove(&(*client_id, CLOSE_SEQUENCE)),
            Some(Applied::SessionOpened { proposer, nonce, .. }) if *proposer == self.ctx.node_id => {
                self.requests.openings.remove(nonce)
            }
            _ => None,
        };
        let write = self.requests.writes.remove(&index);
        if forwarded.is_none() && write.is_none() {
            return;
        }
        let status = self.applied_status(applied);
        let now = self.clock.now();
        if let Some(forwarded) = forwarded {
            self.stats.total.record(now.saturating_duration_since(forwarded.arrived));
            self.stats.writes_applied += 1;
            self.stats.forwarded_answered += 1;
            self.transport.reply(forwarded.reply, status.clone());
        }
        let Some(write) = write else { return };
        if write.term != term {
            // Another leader's entry replaced ours at this index.
            let redirect = self.leader_redirect();
            self.transport.reply(write.reply, redirect);
            return;
        }
        self.stats.replication.record(committed.saturating_duration_since(write.proposed));
        self.stats.total.record(now.saturating_duration_since(write.arrived));
        self.stats.writes_applied += 1;
        self.transport.reply(write.reply, status);
    }

    /// Answers the clients of an applied group: each write's client here,
    /// and any client of one of its writes that this node forwarded (a
    /// retry sent to the leader directly may land in a group).
    fn answer_group(&mut self, index: Index, term: Term, writes: &[Applied], committed: Instant) {
        if !self.requests.forwarded.is_empty() {
            for write in writes {
                let Applied::Write { session: Some(key), .. } = write else { continue };
                if let Some(forwarded) = self.requests.forwarded.remove(key) {
                    let now = self.clock.now();
                    self.stats.total.record(now.saturating_duration_since(forwarded.arrived));
                    self.stats.writes_applied += 1;
                    self.stats.forwarded_answered += 1;
                    let status = self.applied_status(Some(write));
                    self.transport.reply(forwarded.reply, status);
                }
            }
        }
        let Some(group) = self.requests.groups.remove(&index) else { return };
        if group.term != term {
            // Another leader's entry replaced ours at this index.
            let redirect = self.leader_redirect();
            for (reply, _) in group.clients {
                self.transport.reply(reply, redirect.clone());
            }
            return;
        }
        let now = self.clock.now();
        let replication = committed.saturating_duration_since(group.proposed);
        self.stats.replication.record_n(replication, group.clients.len() as u64);
        let mut clients = group.clients;
        for (at, (reply, arrived)) in clients.drain(..).enumerate() {
            // Every replica decodes the same bytes, so a group this leader
            // built has as many answers as writes; were it not so, the
            // clients without one hear that their write was malformed.
            let status = match writes.get(at) {
                Some(write) => self.applied_status(Some(write)),
                None => ResponseStatus::BadRequest("the write's group entry did not decode".into()),
            };
            self.stats.total.record(now.saturating_duration_since(arrived));
            self.stats.writes_applied += 1;
            self.transport.reply(reply, status);
        }
        if self.requests.spare_clients.len() < SPARE_CLIENT_LISTS {
            self.requests.spare_clients.push(clients);
        }
    }

    /// The client's answer for an applied entry.
    fn applied_status(&self, applied: Option<&Applied>) -> ResponseStatus {
        let Some(applied) = applied else { return ResponseStatus::Ok(Bytes::new()) };
        match applied {
            Applied::Write { session, outcome } => match outcome {
                Outcome::Done(Cached::Applied(answer)) => ResponseStatus::Ok(answer.clone()),
                Outcome::Done(Cached::Refused(reason)) => ResponseStatus::BadRequest(reason.clone()),
                Outcome::Refused(Refusal::Expired) => ResponseStatus::SessionExpired,
                Outcome::Refused(Refusal::Stale { floor }) => ResponseStatus::BadRequest(format!(
                    "sequence {} of session {} was acknowledged (the session keeps answers from sequence {floor}); \
                     it is not applied again",
                    session.map_or(0, |(_, sequence)| sequence),
                    session.map_or(0, |(client_id, _)| client_id),
                )),
                Outcome::Refused(Refusal::Full(reason)) => ResponseStatus::SessionFull(reason.clone()),
                Outcome::Refused(Refusal::Reused { sequence }) => ResponseStatus::BadRequest(format!(
                    "sequence {sequence} of session {} was used for another command, whose answer the session \
                     keeps; this command is not applied (a client sends each command under a sequence of its \
                     own, and a retry with the same command)",
                    session.map_or(0, |(client_id, _)| client_id),
                )),
                Outcome::Malformed(reason) => ResponseStatus::BadRequest(reason.clone()),
            },
            Applied::SessionOpened { result: Ok(opened), .. } => ResponseStatus::Ok(opened.encode()),
            Applied::SessionOpened { result: Err(reason), .. } => ResponseStatus::SessionFull(reason.clone()),
            Applied::SessionClosed { .. } | Applied::AddressesSet { .. } | Applied::Node(Ok(())) => {
                ResponseStatus::Ok(Bytes::new())
            }
            Applied::Node(Err(reason)) => ResponseStatus::BadRequest(reason.clone()),
            Applied::IdAssigned { result: Ok(id) } => {
                ResponseStatus::Ok(Bytes::from(json!({ "node_id": id }).to_string()))
            }
            Applied::IdAssigned { result: Err(reason) } => ResponseStatus::BadRequest(reason.clone()),
            Applied::Group(_) => ResponseStatus::BadRequest("a group has an answer per write".into()),
        }
    }

    /// Answers the requests that waited too long.
    pub(super) fn sweep_timeouts(&mut self, now: Instant) {
        for (_, write) in take_expired(&mut self.requests.writes, now, REQUEST_TIMEOUT, |write| write.arrived) {
            self.transport.reply(write.reply, ResponseStatus::TimedOut);
        }
        for (_, group) in take_expired(&mut self.requests.groups, now, REQUEST_TIMEOUT, |group| group.clients[0].1) {
            for (reply, _) in group.clients {
                self.transport.reply(reply, ResponseStatus::TimedOut);
            }
        }
        self.drop_stale_forwards();
        for (_, write) in take_expired(&mut self.requests.forwarded, now, FORWARD_TIMEOUT, |write| write.arrived) {
            self.transport.reply(write.reply, ResponseStatus::TimedOut);
        }
        for (_, opening) in take_expired(&mut self.requests.openings, now, FORWARD_TIMEOUT, |write| write.arrived) {
            self.transport.reply(opening.reply, ResponseStatus::TimedOut);
        }
        for (context, read) in take_expired(&mut self.requests.reads, now, REQUEST_TIMEOUT, |read| read.arrived) {
            self.transport.reply(read.reply, ResponseStatus::TimedOut);
            self.requests.reads_waiting.retain(|&(_, c)| c != context);
        }
    }

    fn admin(&mut self, admin: AdminRequest, reply: T::Reply, arrived: Instant) {
        let change = |op| ConfChange { ops: vec![op] };
        if let Some(status) = self.membership_answer(&admin) {
            self.transport.reply(reply, status);
            return;
        }
        let result = match admin {
            AdminRequest::Join(join) => {
                self.join(join, reply, arrived);
                return;
            }
            AdminRequest::AddLearner { id, addr } => {
                self.add_member(ConfChangeOp::AddLearner(id), addr, reply, arrived);
                return;
            }
            AdminRequest::AddWitness { id, addr } => {
                self.add_member(ConfChangeOp::AddWitness(id), addr, reply, arrived);
                return;
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
            AdminRequest::BackupBegin { at_least } => return self.backup_begin(at_least, reply, arrived),
            AdminRequest::BackupChunk { index, offset, len } => return self.backup_chunk(index, offset, len, reply),
            AdminRequest::Stats => {
                let body = json!({ "shard": self.ctx.shard_id, "node": self.ctx.node_id,
                    "stats": self.stats.to_json(self.clock.now()) });
                self.transport.reply(reply, ResponseStatus::Ok(Bytes::from(body.to_string())));
                return;
            }
            AdminRequest::SessionSettings(requested) => {
                let settings = merge_settings(self.fsm.sessions().settings(), requested);
                if let Err(reason) = validate_settings(&settings) {
                    self.transport.reply(reply, ResponseStatus::BadRequest(reason));
                    return;
                }
                self.raft.propose(NodeCommand::SessionSettings(settings).encode())
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

    /// The answer to a membership request that needs no entry: a removed
    /// node is never added or promoted again (ids are not reused); a witness
    /// is never promoted to a full voter (its log has no payloads); the
    /// leader asked to remove itself hands leadership to the most caught-up
    /// voter first (the client's retry reaches the new leader); promoting a
    /// voter (a joining node that restarted) or adding a witness that is one
    /// is done.
    fn membership_answer(&mut self, admin: &AdminRequest) -> Option<ResponseStatus> {
        let leader = self.raft.role() == Role::Leader;
        match *admin {
            AdminRequest::AddLearner { id, .. }
            | AdminRequest::AddWitness { id, .. }
            | AdminRequest::Promote { id }
                if self.fsm.is_removed(id) =>
            {
                Some(ResponseStatus::BadRequest(removed_reason(id)))
            }
            AdminRequest::Promote { id } if self.raft.conf().is_witness(id) => {
                Some(ResponseStatus::BadRequest(format!(
                    "node {id} is a witness: it holds entry metadata only and cannot be promoted to a full voter \
                     (remove it, wipe its data directory, and add the machine again as a full node)"
                )))
            }
            AdminRequest::AddWitness { id, .. } if leader && self.raft.conf().is_witness(id) => {
                Some(ResponseStatus::Ok(Bytes::new()))
            }
            AdminRequest::Remove { id } if id == self.ctx.node_id && leader => Some(self.hand_over_for_removal()),
            // An id that is no member and was never removed: a typo, most
            // likely. Taken, it was recorded as removed and never given out
            // again. (Removing a removed one again is a retry: done.)
            AdminRequest::Remove { id }
                if leader && !self.raft.conf().members().contains(&id) && !self.fsm.is_removed(id) =>
            {
                Some(ResponseStatus::BadRequest(format!(
                    "node {id} is not a member (members: {:?}): nothing removed",
                    self.raft.conf().members()
                )))
            }
            AdminRequest::Promote { id } if leader && self.raft.conf().voters.contains(&id) => {
                Some(ResponseStatus::Ok(Bytes::new()))
            }
            // Only a learner is promoted, once it caught up (the engine
            // checks the lag): a voter added with an empty log is needed
            // for a majority before it holds anything, and one that lost its
            // data cannot tell it never voted (the repair rules), so the
            // group can be left without a leader until it catches up, or for
            // good if it never comes (seeds 8822, 9901 and 26942 of the
            // engine's `three_nodes` with 8,800-30,000 seeds).
            AdminRequest::Promote { id } if leader && !self.raft.conf().is_learner(id) => {
                Some(ResponseStatus::BadRequest(format!(
                    "node {id} is not a learner: add it first (`node serve --join`, or `node admin add-learner {id} \
                     ADDR`), and promote it once it caught up"
                )))
            }
            _ => None,
        }
    }

    /// `node admin add-learner ID ADDR` and `node admin add-witness ID
    /// ADDR` (`op` adds the learner or the witness): the address through the
    /// log, then the change.
    fn add_member(&mut self, op: ConfChangeOp, addr: String, reply: T::Reply, arrived: Instant) {
        let change = |op| ConfChange { ops: vec![op] };
        let Some(reply) = self.leader_with_addresses(&[&addr], reply) else {
            return;
        };
        let (ConfChangeOp::AddLearner(id) | ConfChangeOp::AddWitness(id)) = op else {
            unreachable!("add_member adds a learner or a witness")
        };
        // The address goes through the log first, so every member
        // can reach the learner (and any later leader knows it).
        let set = SetAddresses { id, peer: Some(addr), client: None };
        if let Err(error) = self.raft.propose(set.encode()) {
            let status = self.refusal(error);
            self.transport.reply(reply, status);
            return;
        }
        let result = self.raft.propose_conf_change(change(op));
        self.answer_when_applied(result, reply, arrived);
    }

    /// A node asks to be a member (`node serve --join`): with id 0, a fresh
    /// id through the log (shard 0); with its id, its addresses through the
    /// log when they changed and, unless it is a member, a place as a
    /// learner (a witness: as a witness; a witness that is a learner is
    /// made one). A removed node is refused.
    fn join(&mut self, join: JoinRequest, reply: T::Reply, arrived: Instant) {
        let Some(reply) = self.leader_with_addresses(&[&join.peer_addr, &join.client_addr], reply) else {
            return;
        };
        if join.id == engine::NODE_NONE {
            if self.ctx.shard_id != 0 {
                let status = ResponseStatus::BadRequest("node ids are assigned by shard 0".into());
                self.transport.reply(reply, status);
                return;
            }
            let command = NodeCommand::AssignId { nonce: join.nonce, peer: join.peer_addr, client: join.client_addr };
            let result = self.raft.propose(command.encode());
            self.answer_when_applied(result, reply, arrived);
            return;
        }
        let id = join.id;
        if self.fsm.is_removed(id) {
            self.transport.reply(reply, ResponseStatus::BadRequest(removed_reason(id)));
            return;
        }
        let known = self.fsm.addresses(id);
        let changed = known.is_none_or(|known| {
            known.peer.as_deref() != Some(join.peer_addr.as_str())
                || known.client.as_deref() != Some(join.client_addr.as_str())
        });
        let mut last = None;
        if changed {
            let set = SetAddresses { id, peer: Some(join.peer_addr), client: Some(join.client_addr) };
            match self.raft.propose(set.encode()) {
                Ok(proposed) => last = Some(proposed),
                Err(error) => {
                    let status = self.refusal(error);
                    self.transport.reply(reply, status);
                    return;
                }
            }
        }
        let conf = self.raft.conf();
        let add = match (conf.members().contains(&id), join.witness) {
            (false, false) => Some(ConfChangeOp::AddLearner(id)),
            (false, true) => Some(ConfChangeOp::AddWitness(id)),
            (true, true) if !conf.is_witness(id) => Some(ConfChangeOp::AddWitness(id)),
            (true, _) => None,
        };
        if let Some(op) = add {
            let result = self.raft.propose_conf_change(ConfChange { ops: vec![op] });
            self.answer_when_applied(result, reply, arrived);
            return;
        }
        match last {
            Some(proposed) => self.answer_when_applied(Ok(proposed), reply, arrived),
            None => self.transport.reply(reply, ResponseStatus::Ok(Bytes::new())),
        }
    }

    /// The common first steps of a membership request that carries
    /// addresses: each must be an IP:port, and only the leader proposes
    /// (others answer with where it is). Returns the reply still to be
    /// answered, or None when it was answered here.
    fn leader_with_addresses(&mut self, addrs: &[&str], reply: T::Reply) -> Option<T::Reply> {
        if let Some(addr) = addrs.iter().find(|addr| addr.parse::<SocketAddr>().is_err()) {
            self.transport.reply(reply, ResponseStatus::BadRequest(format!("{addr:?} is not an IP:port address")));
            return None;
        }
        if self.raft.role() != Role::Leader {
            let redirect = self.leader_redirect();
            self.transport.reply(reply, redirect);
            return None;
        }
        Some(reply)
    }

    /// Answers `reply` when the proposed entry is applied, or at once with
    /// the refusal.
    fn answer_when_applied(&mut self, result: Result<(Index, Term), ProposeError>, reply: T::Reply, arrived: Instant) {
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

    /// The leader is asked to remove itself: it hands leadership to the
    /// voter with the longest log that is active, and answers `Busy` so the
    /// client retries (at the new leader). With no such voter it refuses.
    fn hand_over_for_removal(&mut self) -> ResponseStatus {
        if self.raft.transfer_target().is_some() {
            return ResponseStatus::Busy;
        }
        let me = self.ctx.node_id;
        let status = self.raft.status();
        let target = status
            .progress
            .iter()
            .filter(|peer| {
                peer.id != me
                    && !peer.learner
                    && !peer.witness
                    && peer.recent_active
                    && status.conf.voters.contains(&peer.id)
            })
            .max_by_key(|peer| (peer.match_index, std::cmp::Reverse(peer.id)))
            .map(|peer| peer.id);
        let Some(target) = target else {
            return ResponseStatus::BadRequest(format!(
                "node {me} leads and no other voter is active to take over: it cannot be removed now"
            ));
        };
        tracing::info!(shard = self.ctx.shard_id, to = target, "handing leadership over before this node's removal");
        match self.raft.transfer_leader(target) {
            Ok(()) | Err(ProposeError::TransferInProgress { .. }) => ResponseStatus::Busy,
            Err(error) => self.refusal(error),
        }
    }

    /// Whether a new write must be refused because a disk is full: this
    /// leader's, or those of so many voters that the rest make no quorum
    /// (it could not commit). Counts the refusal. Reads go on: they need no
    /// disk.
    /// Whether this follower, whose own disk is full, refuses a write it
    /// would forward (counted with the leader's refusals). It answers a
    /// forwarded write only once it has applied it from its own log, which
    /// it cannot write: the client waited out its whole timeout (10 s
    /// through the Redis front door) although the leader had room (fifth
    /// audit, F6). Refused at once, nothing was applied, and the client
    /// can write through another node.
    fn full_follower_refuses(&mut self) -> bool {
        if !self.storage.no_space() {
            return false;
        }
        self.stats.no_space += 1;
        true
    }

    fn refuse_for_no_space(&mut self) -> bool {
        self.note_disk_space();
        if !self.storage.no_space() && !self.raft.quorum_lacks_space() {
            return false;
        }
        self.stats.no_space += 1;
        true
    }

    /// Tells the engine whether this node's disk is full (a follower then
    /// answers appends "no space" instead of queueing them) and logs when
    /// it fills and when it has room again.
    pub(super) fn note_disk_space(&mut self) {
        let full = self.storage.no_space();
        self.raft.set_no_space(full);
        if full == self.stats.disk_full {
            return;
        }
        self.stats.disk_full = full;
        if full && self.raft.role() == Role::Leader {
            // (A leader receives no appends: the follower's wording named
            // them here too, found by the membership audit.)
            tracing::warn!(
                shard = self.ctx.shard_id,
                "disk full on the leader: writes are refused with NoSpace until space is freed here (followers \
                 send writes to the leader, so clients cannot go around it)"
            );
        } else if full {
            tracing::warn!(
                shard = self.ctx.shard_id,
                "disk full: the leader's appends are answered \"no space\" until space is freed (writes go on while \
                 the other voters make a quorum)"
            );
        } else {
            tracing::warn!(shard = self.ctx.shard_id, "disk space available again: writes resume");
        }
    }

    /// On a leader, logs when the set of peers that report a full disk
    /// changes, and whether writes are refused for it.
    pub(super) fn note_peers_disk_space(&mut self) {
        let full = self.raft.peers_no_space();
        if full == self.stats.peers_disk_full {
            return;
        }
        if full.is_empty() {
            tracing::warn!(shard = self.ctx.shard_id, "no peer reports a full disk any more");
        } else if self.raft.quorum_lacks_space() {
            tracing::warn!(
                shard = self.ctx.shard_id,
                peers = ?full,
                "peers report a full disk, too many for a quorum: writes are refused with NoSpace until they have room"
            );
        } else {
            tracing::warn!(shard = self.ctx.shard_id, peers = ?full, "peers report a full disk (writes go on without them)");
        }
        self.stats.peers_disk_full = full;
    }

    /// The configuration's members with their roles and addresses.
    /// A member's addresses: from the replicated address book, else (a
    /// witness's) this node's own or as learned outside the log.
    fn member_addresses(&self, id: NodeId) -> Option<Addresses> {
        if let Some(addresses) = self.fsm.addresses(id) {
            return Some(addresses.clone());
        }
        if id == self.ctx.node_id {
            let (peer, client) = (self.ctx.peer_addr.to_string(), self.ctx.client_addr.to_string());
            return Some(Addresses { peer: Some(peer), client: Some(client) });
        }
        self.ctx.learned_addresses.lock().expect("not poisoned").get(&id).cloned()
    }

    /// This core's links to the peers (see [`crate::shard::LinkReport`]).
    fn links_json(&self) -> serde_json::Value {
        let links = self.transport.links().into_iter().map(|link| {
            json!({
                "peer": link.peer,
                "addr": link.addr,
                "connected": link.connected,
                "problem": link.problem,
                "connects": link.connects,
                "handshake_refusals": link.handshake_refusals,
                "shard_count_mismatches": link.shard_count_mismatches,
            })
        });
        serde_json::Value::Array(links.collect())
    }

    fn members_json(&self, conf: &engine::ConfState) -> serde_json::Value {
        let members: Vec<serde_json::Value> = conf
            .members()
            .into_iter()
            .map(|id| {
                let addresses = self.member_addresses(id);
                let addresses = addresses.as_ref();
                let role = if conf.is_witness(id) {
                    "witness"
                } else if conf.is_voter(id) {
                    "voter"
                } else {
                    "learner"
                };
                json!({
                    "id": id,
                    "role": role,
                    "peer_addr": addresses.and_then(|a| a.peer.clone()),
                    "client_addr": addresses.and_then(|a| a.client.clone()),
                })
            })
            .collect();
        serde_json::Value::Array(members)
    }

    /// The repair's state and progress (null when whole): the range it
    /// lacks and how much of it has arrived.
    fn repair_json(&self, target: Option<Index>, last_index: Index) -> serde_json::Value {
        let (Some(target), Some(progress)) = (target, &self.repair_progress) else {
            return serde_json::Value::Null;
        };
        let unknown = target == engine::REPAIR_UNKNOWN;
        json!({
            "cause": if unknown {
                "started with an empty log in a cluster that has one (a wiped data directory?): \
                 repairs to the leader's log through an entry of its term and its commit index"
            } else {
                "lost or damaged entries it may have acknowledged"
            },
            "missing_from": progress.start_last + 1,
            "missing_to": if unknown { serde_json::Value::Null } else { json!(target) },
            "last_index": last_index,
            "fetched_entries": last_index.saturating_sub(progress.start_last),
            "remaining_entries": if unknown { serde_json::Value::Null } else { json!(target.saturating_sub(last_index)) },
            "snapshots_installed": self.stats.snapshots_installed - progress.snapshots_before,
            "seconds": self.clock.now().saturating_duration_since(progress.since).as_secs_f64(),
        })
    }

    pub(super) fn status_json(&self) -> serde_json::Value {
        let status = self.raft.status();
        json!({
            "node": self.ctx.node_id,
            "shard": self.ctx.shard_id,
            "shards": self.ctx.shards,
            // Null when leaders are not balanced (one shard).
            "preferred_leader": self.preferred_leader().filter(|_| self.ctx.balance_leaders),
            "role": format!("{:?}", status.role),
            "term": status.term,
            "leader": status.leader,
            "commit": status.commit,
            "applied": self.fsm.applied(),
            // Restoring the state machine from a snapshot off the driver
            // (`applied` jumps to the snapshot's index when done).
            "restoring": self.restoring(),
            "first_index": status.first_index,
            "last_index": status.last_index,
            // The in-memory log's payload bytes, and its first entry that
            // still holds its payload (older applied ones dropped theirs:
            // `--log-memory-bytes`).
            "log_memory_bytes": status.log_held_bytes,
            "payloads_from": status.payloads_from,
            "persisted": status.persisted,
            // While the replica refetches entries its storage lost: the index
            // it must reach before it votes again (null when whole,
            // "unknown" for a replica that started with an empty log).
            "repair_target": status.repair_target.map(|target| match target {
                engine::REPAIR_UNKNOWN => json!("unknown"),
                target => json!(target),
            }),
            "repair": self.repair_json(status.repair_target, status.last_index),
            // A replica that started with an empty log votes only after every
            // other voter of its configuration asked for a vote with an empty
            // log: those it still waits for (empty once it has heard them
            // all, knows its past, or heard a history: then "repair" says
            // so).
            "votes_wait_for": self.raft.votes_wait_for(),
            "disk_full": self.storage.no_space(),
            // Peers that answer this leader's appends "no space" (empty on
            // followers); writes are refused with NoSpace while the rest
            // make no quorum.
            "peers_disk_full": self.raft.peers_no_space(),
            "writes_refused_no_space": self.raft.role() == Role::Leader
                && (self.storage.no_space() || self.raft.quorum_lacks_space()),
            "snapshot_index": self.raft.snapshot().index,
            "voters": status.conf.voters,
            "voters_outgoing": status.conf.voters_outgoing,
            "learners": status.conf.learners,
            // Voters (listed above too) that keep entry metadata only.
            "witnesses": status.conf.witnesses,
            // Whether this node is a witness (no state machine: `applied`
            // is the engine's, its reads and writes go to the leader).
            "witness": self.raft.is_witness(),
            // Every member's addresses from the replicated address book, so
            // a client given one node learns the others.
            "members": self.members_json(&status.conf),
            "removed": self.fsm.removed(),
            // Peers that refuse this node as removed: its view is stale.
            "refused_as_removed_by": self.transport.refusing_as_removed(),
            // This core's link to each peer: up, or why not.
            "links": self.links_json(),
            // How long this node's leases last in real time: the shortest
            // time any voter refuses votes after it hears a leader, less
            // the drift allowance (see `shard::lease`).
            "lease": self.lease_json(),
            "next_id": self.fsm.next_id(),
            // The history of the cluster this node's data continues (16 hex
            // digits; zeros: a cluster that started empty), which a node
            // joining through this one takes: `net::History`.
            "history": format!("{:016x}", self.ctx.history.0),
            "progress": progress_json(&status.progress),
            "sessions": sessions_json(
                self.fsm.sessions(),
                self.fsm.sessions_get_owners(self.raft.conf()),
            ),
            "pending_writes": self.requests.writes.len()
                + self.requests.groups.values().map(|group| group.clients.len()).sum::<usize>(),
            "forwarded_writes_waiting": self.requests.forwarded.len(),
            "writes_forwarded": self.stats.writes_forwarded,
            "pending_reads": self.requests.reads.len(),
        })
    }
}

/// A leader's view of each member's replication (empty on followers).
fn progress_json(progress: &[engine::raft::PeerStatus]) -> Vec<serde_json::Value> {
    progress
        .iter()
        .map(|p| {
            json!({
                "id": p.id, "match": p.match_index, "next": p.next_index,
                "state": format!("{:?}", p.state), "inflight": p.inflight_batches,
                "active": p.recent_active, "learner": p.learner, "witness": p.witness,
                "disk_full": p.no_space,
            })
        })
        .collect()
}

/// Why a removed node is refused.
fn removed_reason(id: engine::NodeId) -> String {
    format!(
        "node {id} was removed from the cluster and ids are never reused: wipe its data directory and start it \
         with --join to add it as a new node"
    )
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

/// The sessions' part of the status document.
/// The status's `sessions`; `owned` says whether sessions opened here now
/// belong to their users (every member's build reads owners).
fn sessions_json(table: &crate::session::SessionTable, owned: bool) -> serde_json::Value {
    let settings = table.settings();
    json!({
        "count": table.len(),
        "owned": owned,
        "log_time_ms": table.time(),
        "sessions_max": settings.sessions_max,
        "timeout_ms": settings.timeout_ms,
        "replies_max": settings.replies_max,
        "reply_bytes_max": settings.reply_bytes_max,
    })
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
