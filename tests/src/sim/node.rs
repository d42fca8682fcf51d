//! One simulated replica: the real engine and the real node-side state
//! machine (`NodeStateMachine<KvStateMachine>`), driven the way
//! `node::shard::Shard` drives them, over a [`SimDisk`].

use std::collections::HashMap;

use bytes::{Bytes, BytesMut};
use engine::config::Rng;
use engine::raft::ReadMode;
use engine::{
    Config, Entry, EntryKind, Index, Message, NodeId, ProposeError, Raft, Role, SnapshotMeta, StateMachine, Term,
    NODE_NONE,
};
use node::replicated::{NodeStateMachine, SetAddresses};
use node::session::{encode_envelope, Envelope, Reply, CLIENT_ID_NONE};
use node::{KvOp, KvResponse, KvStateMachine};

use super::disk::{Completion, DiskWrite, SimDisk};

/// A client request as the node receives it.
#[derive(Clone, Debug)]
pub struct Request {
    /// The client's operation number and attempt, echoed in the response.
    pub operation: u64,
    pub attempt: u32,
    pub body: RequestBody,
}

#[derive(Clone, Debug)]
pub enum RequestBody {
    /// A write in the client's session.
    Write { client_id: u64, sequence: u64, op: KvOp },
    /// A linearizable read of one key.
    Read { key: Bytes, mode: ReadMode },
}

/// The node's answer.
#[derive(Clone, Debug)]
pub struct Response {
    pub operation: u64,
    pub attempt: u32,
    pub status: Status,
}

#[derive(Clone, Debug)]
pub enum Status {
    /// Applied (a write, possibly earlier for a retry) or read.
    Applied(KvResponse),
    /// Not the leader, or leadership was lost before the outcome was known:
    /// the outcome of a write is unknown, retry with the same sequence.
    NotLeader { leader: Option<NodeId> },
    /// The leader refused for now (busy, leadership transfer).
    Busy,
    /// The session layer refused: a bug for a well-behaved client.
    Rejected(Reply),
}

/// Who waits for an answer.
#[derive(Clone, Copy, Debug)]
pub struct Waiter {
    pub client: usize,
    pub operation: u64,
    pub attempt: u32,
}

/// A replica. After a crash only `disk.durable` and the configuration
/// survive; [`SimNode::restart`] rebuilds everything else from them.
pub struct SimNode {
    pub id: NodeId,
    pub config: Config,
    pub up: bool,
    pub raft: Raft,
    pub fsm: NodeStateMachine<KvStateMachine>,
    pub disk: SimDisk,
    /// The latest durable local snapshot, served to followers in chunks.
    snapshot: Option<(SnapshotMeta, Bytes)>,
    snapshot_pending: bool,
    incoming_snapshot: BytesMut,
    writes: HashMap<Index, (Term, Waiter)>,
    reads: HashMap<u64, (Bytes, Waiter)>,
    reads_waiting: Vec<(Index, u64)>,
    next_read_context: u64,
    announced_term: Term,
    /// Durability reports waiting for the next durability point.
    completions: Vec<Completion>,
    /// Entries applied since the observer last looked, for state machine
    /// safety; and the index the next applied entry must have.
    pub applied_unchecked: Vec<Entry>,
    pub apply_next: Index,
    /// Incremented whenever the state machine is replaced wholesale (restart,
    /// snapshot install), so the observer restarts its contiguity check.
    pub generation: u64,
    /// Snapshots received from a leader and installed, over all restarts.
    pub snapshots_installed: u64,
    /// The node's `--forward-writes`: a follower sends session writes to the
    /// leader (`Raft::forward_proposal`) instead of redirecting the client.
    pub forward_writes: bool,
    /// Forwarded writes waiting to be applied here, by (client id,
    /// sequence), all forwarded in `forwarded_term`.
    forwarded: HashMap<(u64, u64), Waiter>,
    forwarded_term: Term,
    /// Forwarded writes answered when applied, over all restarts.
    pub forwarded_answered: u64,
}

/// Everything a `process_ready` produced for the outside world.
#[derive(Default)]
pub struct Output {
    pub messages: Vec<Message>,
    pub responses: Vec<(Waiter, Status)>,
}

impl SimNode {
    pub fn new(config: Config) -> SimNode {
        SimNode::recover(config, SimDisk::default(), 0)
    }

    fn recover(config: Config, disk: SimDisk, generation: u64) -> SimNode {
        let mut fsm = NodeStateMachine::new(KvStateMachine::default());
        let mut snapshot = None;
        let snapshot_meta = disk.durable.snapshot_meta().clone();
        if snapshot_meta.index > 0 {
            let data = disk.durable.snapshot_data().clone();
            fsm.restore(&data).expect("a stored snapshot restores");
            snapshot = Some((snapshot_meta, data));
        }
        let mut raft = Raft::new(config.clone(), disk.durable.recovered()).expect("valid simulation config");
        if let Some((meta, data)) = &snapshot {
            raft.snapshot_created(meta.clone(), data.len() as u64);
        }
        let apply_next = raft.applied() + 1;
        SimNode {
            id: config.id,
            config,
            up: true,
            raft,
            fsm,
            disk,
            snapshot,
            snapshot_pending: false,
            incoming_snapshot: BytesMut::new(),
            writes: HashMap::new(),
            reads: HashMap::new(),
            reads_waiting: Vec::new(),
            next_read_context: 1,
            announced_term: 0,
            completions: Vec::new(),
            applied_unchecked: Vec::new(),
            apply_next,
            generation,
            snapshots_installed: 0,
            forward_writes: false,
            forwarded: HashMap::new(),
            forwarded_term: 0,
            forwarded_answered: 0,
        }
    }

    /// The process dies: memory is lost, the disk keeps what was durable
    /// (and maybe a torn prefix of what was not).
    pub fn crash(&mut self, rng: &mut Rng) {
        self.up = false;
        self.disk.crash(rng);
    }

    /// The process starts again from its disk.
    pub fn restart(&mut self) {
        if std::env::var_os("SIM_TRACE").is_some() {
            let durable = &self.disk.durable;
            let hard_state = durable.hard_state();
            eprintln!(
                "restart node {}: durable hard state {:?}, log {}..={} (terms at the end: {:?}), snapshot {}",
                self.id,
                hard_state,
                durable.first_index(),
                durable.last_index(),
                (durable.last_index().saturating_sub(3).max(durable.first_index())..=durable.last_index())
                    .map(|index| (index, durable.term(index).ok()))
                    .collect::<Vec<_>>(),
                durable.snapshot_meta().index
            );
        }
        let disk = std::mem::take(&mut self.disk);
        let (installed, forward_writes, answered) =
            (self.snapshots_installed, self.forward_writes, self.forwarded_answered);
        *self = SimNode::recover(self.config.clone(), disk, self.generation + 1);
        self.snapshots_installed = installed;
        self.forward_writes = forward_writes;
        self.forwarded_answered = answered;
    }

    /// The disk finishes up to `count` queued writes; the lazy hard state
    /// lands when `hard_state` is set.
    pub fn disk_progress(&mut self, count: usize, hard_state: bool) {
        if hard_state {
            self.disk.finish_lazy_hard_state();
        }
        let done = self.disk.complete(count);
        self.completions.extend(done);
    }

    /// The shard's `on_durable`: report durability to the engine, release
    /// the messages that waited for it, report stored snapshots.
    fn on_durable(&mut self, output: &mut Output) {
        let mut last = None;
        for completion in std::mem::take(&mut self.completions) {
            match completion {
                Completion::Persisted { last: persisted, messages } => {
                    if persisted.is_some() {
                        last = persisted;
                    }
                    output.messages.extend(messages);
                }
                Completion::SnapshotStored { meta, data } => {
                    self.raft.snapshot_created(meta.clone(), data.len() as u64);
                    self.snapshot = Some((meta, data));
                    self.snapshot_pending = false;
                }
            }
        }
        if let Some((index, term)) = last {
            self.raft.persisted(index, term);
        }
    }

    fn leader_hint(&self) -> Status {
        let leader = self.raft.leader();
        Status::NotLeader { leader: (leader != NODE_NONE).then_some(leader) }
    }

    fn refusal(&self, error: ProposeError) -> Status {
        match error {
            ProposeError::NotLeader { .. } => self.leader_hint(),
            _ => Status::Busy,
        }
    }

    /// A client request arrives.
    pub fn handle_request(&mut self, client: usize, request: Request, output: &mut Output) {
        let waiter = Waiter { client, operation: request.operation, attempt: request.attempt };
        match request.body {
            RequestBody::Write { client_id, sequence, op } => {
                let data = encode_envelope(client_id, sequence, &op.encode());
                if self.forward_writes
                    && client_id != CLIENT_ID_NONE
                    && self.raft.role() != Role::Leader
                    && self.raft.leader() != NODE_NONE
                {
                    return self.forward(data, (client_id, sequence), waiter, output);
                }
                match self.raft.propose(data) {
                    Ok((index, term)) => {
                        self.writes.insert(index, (term, waiter));
                    }
                    Err(error) => output.responses.push((waiter, self.refusal(error))),
                }
            }
            RequestBody::Read { key, mode } => {
                let context = self.next_read_context;
                self.next_read_context += 1;
                match self.raft.read_index(context, mode) {
                    Ok(()) => {
                        self.reads.insert(context, (KvOp::Get { key }.encode(), waiter));
                    }
                    Err(error) => output.responses.push((waiter, self.refusal(error))),
                }
            }
        }
    }

    /// The shard's `forward`: send the write to the leader and find the
    /// client again by its session when the entry is applied here. A retry
    /// of a write still waiting replaces the first wait.
    fn forward(&mut self, data: Bytes, session: (u64, u64), waiter: Waiter, output: &mut Output) {
        self.drop_stale_forwards(output);
        match self.raft.forward_proposal(data) {
            Ok(()) => {
                self.forwarded_term = self.raft.term();
                if let Some(earlier) = self.forwarded.insert(session, waiter) {
                    output.responses.push((earlier, Status::Busy));
                }
            }
            Err(error) => output.responses.push((waiter, self.refusal(error))),
        }
    }

    /// The shard's `drop_stale_forwards`: writes forwarded in an earlier
    /// term may never be applied; their clients are sent to the leader.
    fn drop_stale_forwards(&mut self, output: &mut Output) {
        if self.forwarded.is_empty() || self.forwarded_term == self.raft.term() {
            return;
        }
        let hint = self.leader_hint();
        for (_, waiter) in self.forwarded.drain() {
            output.responses.push((waiter, hint.clone()));
        }
    }

    /// A Raft message arrives.
    pub fn step(&mut self, message: Message) {
        let _ = self.raft.step(message);
        self.raft.check_invariants();
    }

    /// One pass of the shard's loop after an event: durability reports, then
    /// every Ready.
    pub fn process(&mut self, output: &mut Output) {
        self.on_durable(output);
        while self.raft.has_ready() {
            let mut ready = self.raft.ready();
            if let Some(soft) = ready.soft_state {
                self.on_role_change(soft.role, output);
                self.drop_stale_forwards(output);
            }
            for write in std::mem::take(&mut ready.snapshot_writes) {
                if write.offset == 0 {
                    self.incoming_snapshot.clear();
                }
                if std::env::var_os("SIM_TRACE").is_some() {
                    eprintln!(
                        "node {} receives snapshot {}/{} chunk at {} of {} bytes (crc {:08x}), done={}",
                        self.id,
                        write.meta.index,
                        write.meta.term,
                        write.offset,
                        write.data.len(),
                        crc32c::crc32c(&write.data),
                        write.done
                    );
                }
                assert_eq!(write.offset as usize, self.incoming_snapshot.len(), "snapshot chunks arrive in order");
                self.incoming_snapshot.extend_from_slice(&write.data);
            }
            if let Some(meta) = ready.snapshot_install.take() {
                // The shard awaits the store (ordered behind earlier appends).
                let data = self.incoming_snapshot.split().freeze();
                if std::env::var_os("SIM_TRACE").is_some() {
                    eprintln!(
                        "node {} installs snapshot {}/{} of {} bytes",
                        self.id,
                        meta.index,
                        meta.term,
                        data.len()
                    );
                }
                self.disk.submit(DiskWrite::Snapshot { meta: meta.clone(), data: data.clone(), local: false });
                let done = self.disk.complete(usize::MAX);
                self.completions.extend(done);
                self.fsm.restore(&data).expect("a received snapshot restores");
                self.snapshot = Some((meta.clone(), data));
                self.generation += 1;
                self.snapshots_installed += 1;
                self.apply_next = meta.index + 1;
            }
            let entries = std::mem::take(&mut ready.entries);
            let last = entries.last().map(|batch| (batch.last_index(), batch.last_term()));
            let had_entries = !entries.is_empty();
            if had_entries {
                self.disk.submit(DiskWrite::Entries { batches: entries, last, messages: Vec::new() });
            }
            if let Some(hard_state) = ready.hard_state {
                if ready.hard_state_must_sync {
                    self.disk.save_hard_state_sync(hard_state);
                } else {
                    self.disk.save_hard_state_lazily(hard_state);
                }
            }
            output.messages.extend(std::mem::take(&mut ready.messages));
            let waiting = std::mem::take(&mut ready.messages_after_persist);
            if !waiting.is_empty() {
                if self.disk.has_pending_entries() {
                    self.disk.attach_messages(waiting);
                } else {
                    output.messages.extend(waiting);
                }
            }
            for entry in std::mem::take(&mut ready.committed_entries) {
                self.apply(entry, output);
            }
            for read in std::mem::take(&mut ready.read_states) {
                self.reads_waiting.push((read.index, read.context));
            }
            for context in std::mem::take(&mut ready.dropped_reads) {
                if let Some((_, waiter)) = self.reads.remove(&context) {
                    output.responses.push((waiter, self.leader_hint()));
                }
            }
            let snapshot_due = ready.snapshot_due;
            let snapshot_reads = std::mem::take(&mut ready.snapshot_reads);
            let compact_to = ready.compact_to;
            self.raft.advance(ready);
            if snapshot_due && !self.snapshot_pending {
                self.take_snapshot();
            }
            for read in snapshot_reads {
                match &self.snapshot {
                    Some((meta, data)) if meta.index == read.index => {
                        if std::env::var_os("SIM_TRACE").is_some() {
                            eprintln!(
                                "node {} reads snapshot {}/{} ({} bytes) at {}+{} for node {}",
                                self.id,
                                meta.index,
                                meta.term,
                                data.len(),
                                read.offset,
                                read.len,
                                read.to
                            );
                        }
                        let start = (read.offset as usize).min(data.len());
                        let end = (read.offset + read.len).min(data.len() as u64) as usize;
                        self.raft.snapshot_chunk(read.to, read.index, read.offset, data.slice(start..end));
                    }
                    _ => self.raft.snapshot_unavailable(read.to),
                }
            }
            if let Some(index) = compact_to {
                self.disk.durable.compact(index).expect("compaction stays below the stored snapshot");
            }
            self.serve_reads(output);
            self.on_durable(output);
            self.raft.check_invariants();
        }
    }

    fn take_snapshot(&mut self) {
        let index = self.fsm.applied();
        let Some(meta) = self.raft.snapshot_meta_at(index) else { return };
        let data = self.fsm.snapshot();
        if std::env::var_os("SIM_TRACE").is_some() {
            eprintln!(
                "node {} takes snapshot {}/{}: {} bytes, crc {:08x}",
                self.id,
                meta.index,
                meta.term,
                data.len(),
                crc32c::crc32c(&data)
            );
        }
        self.disk.submit(DiskWrite::Snapshot { meta, data, local: true });
        self.snapshot_pending = true;
    }

    fn on_role_change(&mut self, role: Role, output: &mut Output) {
        if role != Role::Leader {
            let hint = self.leader_hint();
            for (_, (_, waiter)) in self.writes.drain() {
                output.responses.push((waiter, hint.clone()));
            }
            return;
        }
        if self.announced_term != self.raft.term() {
            self.announced_term = self.raft.term();
            let set = SetAddresses {
                id: self.id,
                peer: Some(format!("sim:{}:peer", self.id)),
                client: Some(format!("sim:{}:client", self.id)),
            };
            let _ = self.raft.propose(set.encode());
        }
    }

    fn apply(&mut self, entry: Entry, output: &mut Output) {
        assert_eq!(entry.index, self.apply_next, "node {} applies out of order", self.id);
        self.apply_next = entry.index + 1;
        let index = entry.index;
        let response = match entry.kind {
            EntryKind::Normal => Some(self.fsm.apply(index, &entry.data)),
            EntryKind::Noop | EntryKind::Config => {
                self.fsm.skip(index);
                None
            }
        };
        self.fsm.app.sessions().check_invariants().expect("session table invariants");
        if !self.forwarded.is_empty() && entry.kind == EntryKind::Normal {
            let session = Envelope::decode(&entry.data).map(|envelope| (envelope.client_id, envelope.sequence));
            if let Some(waiter) = session.ok().and_then(|session| self.forwarded.remove(&session)) {
                let response = response.as_ref().expect("a normal entry has a response");
                output.responses.push((waiter, applied_status(response)));
                self.forwarded_answered += 1;
            }
        }
        let term = entry.term;
        self.applied_unchecked.push(entry);
        let Some((proposed_term, waiter)) = self.writes.remove(&index) else { return };
        if proposed_term != term {
            output.responses.push((waiter, self.leader_hint()));
            return;
        }
        let response = response.expect("a client write is a normal entry");
        output.responses.push((waiter, applied_status(&response)));
    }

    fn serve_reads(&mut self, output: &mut Output) {
        if self.reads_waiting.is_empty() {
            return;
        }
        for context in node::shard::take_safe_reads(&mut self.reads_waiting, self.fsm.applied()) {
            if let Some((query, waiter)) = self.reads.remove(&context) {
                let answer = self.fsm.query(&query);
                output.responses.push((waiter, applied_status(&answer)));
            }
        }
    }

    /// Whether this node believes it leads.
    pub fn is_leader(&self) -> bool {
        self.up && self.raft.role() == Role::Leader
    }
}

/// The client's status for an encoded [`Reply`] of the state machine.
fn applied_status(reply: &Bytes) -> Status {
    match Reply::decode(reply).expect("the state machine's reply decodes") {
        Reply::Applied(bytes) => Status::Applied(KvResponse::decode(&bytes).expect("a key-value response")),
        other => Status::Rejected(other),
    }
}
