//! An in-memory cluster of engines for tests, golden scripts and benchmarks.
//!
//! Each node has a [`MemStorage`] as its disk. A `Ready`'s writes may be held
//! back ("in flight to disk") and its `messages_after_persist` with them, so
//! tests can check that nothing depends on a write before it is durable; a
//! crash loses exactly the writes that were not yet durable.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::batch::EntryBatch;
use crate::config::Config;
use crate::message::{Message, MessageBody, VoteRequest};
use crate::raft::{Raft, ReadState, Ready, Role};
use crate::storage::MemStorage;
use crate::types::{Entry, EntryKind, HardState, Index, NodeId, SnapshotMeta, Term};

/// One Ready's local writes, waiting to become durable, and the messages that
/// must wait with them.
#[derive(Debug)]
pub struct PendingWrite {
    pub hard_state: Option<HardState>,
    pub entries: Vec<EntryBatch>,
    /// A received snapshot to install before the entries.
    pub snapshot: Option<(SnapshotMeta, Bytes)>,
    pub last: Option<(Index, Term)>,
    pub messages_after_persist: Vec<Message>,
}

/// A node of the test cluster.
pub struct TestNode {
    pub raft: Raft,
    pub config: Config,
    /// The durable state: what survives a crash.
    pub storage: MemStorage,
    /// The state machine: every applied entry, in order (normal entries and
    /// no-ops alike), since the last restart. A witness applies nothing but
    /// configuration entries (see `Ready::committed_entries`).
    pub applied: Vec<Entry>,
    pub read_states: Vec<ReadState>,
    pub dropped_reads: Vec<u64>,
    pub pending_writes: VecDeque<PendingWrite>,
    /// Bytes of a snapshot being received.
    incoming_snapshot: Vec<u8>,
    /// How many times the state machine was replaced by a snapshot.
    pub restores: u64,
    /// Snapshots whose bytes the state machine refused (forged ones).
    pub restore_failures: u64,
}

/// Checks what leaves a node at once (`Ready::messages`, before its writes
/// are durable): no message that only a leader sends may carry a term above
/// the node's durable one. A read's answer counts only when it carries an
/// index: any replica may answer 0 ("ask again"). A leader whose term a
/// crash could still take back may find it voting for another leader of
/// that term after the crash, and
/// whatever it sent first (entries of that term, a commit index) would
/// contradict what the other one sends.
fn check_leader_term_durable(id: NodeId, storage: &MemStorage, messages: &[Message]) {
    let durable = storage.hard_state().term;
    for message in messages {
        let leaders_only = matches!(
            message.body,
            MessageBody::Append(_)
                | MessageBody::Heartbeat { .. }
                | MessageBody::InstallSnapshot(_)
                | MessageBody::TimeoutNow
                | MessageBody::ReadIndexResponse { index: 1.., .. }
        );
        assert!(
            !leaders_only || message.term <= durable,
            "node {id} sent a leader's message of term {} while its durable term was {durable}: {message:?}",
            message.term
        );
    }
}

/// A batch of empty normal entries from `first`, one per term in `terms`
/// (non-decreasing): the shape tests of logs care about.
pub fn batch_of_terms(first: Index, terms: &[Term]) -> EntryBatch {
    let entries: Vec<Entry> = terms
        .iter()
        .enumerate()
        .map(|(i, &term)| Entry { index: first + i as u64, term, kind: EntryKind::Normal, data: Bytes::new() })
        .collect();
    EntryBatch::encode(&entries)
}

/// The test state machine's snapshot: its applied entries, each as index,
/// term, kind, payload length and payload.
pub fn encode_state(applied: &[Entry]) -> Bytes {
    let mut buf = BytesMut::new();
    for entry in applied {
        buf.put_u64_le(entry.index);
        buf.put_u64_le(entry.term);
        buf.put_u8(entry.kind as u8);
        buf.put_u32_le(entry.data.len() as u32);
        buf.put_slice(&entry.data);
    }
    buf.freeze()
}

/// Reads a state written by [`encode_state`]; `None` for bytes that are not
/// one (a forged snapshot in a bad-input test), as a real state machine's
/// restore would refuse them.
pub fn decode_state(mut data: Bytes) -> Option<Vec<Entry>> {
    let mut applied = Vec::new();
    while data.has_remaining() {
        if data.remaining() < 21 {
            return None;
        }
        let index = data.get_u64_le();
        let term = data.get_u64_le();
        let kind = EntryKind::from_u8(data.get_u8())?;
        let len = data.get_u32_le() as usize;
        if data.remaining() < len {
            return None;
        }
        applied.push(Entry { index, term, kind, data: data.split_to(len) });
    }
    Some(applied)
}

/// Appends a batch to storage, skipping the part a stored snapshot covers
/// (a snapshot may be taken of applied entries not yet durable locally).
fn append_after_snapshot(storage: &mut MemStorage, batch: &EntryBatch) {
    let covered = storage.snapshot_meta().index;
    if batch.last_index() <= covered {
        return;
    }
    if batch.first_index() > covered {
        storage.append(batch).expect("engine hands contiguous batches");
    } else {
        let rest: Vec<Entry> = batch.entries().filter(|entry| entry.index > covered).collect();
        storage.append(&EntryBatch::encode(&rest)).expect("engine hands contiguous batches");
    }
}

impl TestNode {
    fn new(config: Config, storage: MemStorage) -> TestNode {
        let mut raft = Raft::new(config.clone(), storage.recovered()).expect("valid test config");
        let mut applied = Vec::new();
        if storage.snapshot_meta().index > 0 {
            applied = decode_state(storage.snapshot_data().clone()).unwrap_or_default();
            raft.snapshot_created(storage.snapshot_meta().clone(), storage.snapshot_data().len() as u64);
        }
        TestNode {
            raft,
            config,
            storage,
            applied,
            incoming_snapshot: Vec::new(),
            restores: 0,
            restore_failures: 0,
            read_states: Vec::new(),
            dropped_reads: Vec::new(),
            pending_writes: VecDeque::new(),
        }
    }

    /// The payloads of applied normal entries, for state comparisons.
    pub fn applied_commands(&self) -> Vec<Bytes> {
        self.applied.iter().filter(|entry| entry.kind == EntryKind::Normal).map(|entry| entry.data.clone()).collect()
    }
}

/// What a cluster has committed so far, for the safety properties of Raft
/// paper Figure 3: every index any node saw committed, with its term and
/// payload, and the lowest term in which a node saw it committed (every
/// leader of a later term must hold it). Shared by the randomized engine test
/// and the whole-node simulator.
#[derive(Default)]
pub struct CommittedLog {
    pub entries: BTreeMap<Index, (Term, Bytes)>,
    pub by_term: BTreeMap<Index, Term>,
}

impl CommittedLog {
    /// Records what `raft` says is committed; panics, naming `at`, if it
    /// disagrees with anything recorded before (state machine safety). A
    /// witness's normal entries have no payload: only their terms are
    /// compared, and only with entries a full replica recorded.
    pub fn record(&mut self, id: NodeId, raft: &Raft, at: &str) {
        for index in raft.first_index()..=raft.committed() {
            let Some(entry) = raft.entry(index) else { continue };
            let evicted = index < raft.payloads_from();
            let stripped = (raft.is_witness() || evicted) && entry.kind != EntryKind::Config;
            if stripped && !self.entries.contains_key(&index) {
                continue;
            }
            let recorded = self.entries.entry(index).or_insert_with(|| (entry.term, entry.data.clone()));
            let payload = if stripped { &recorded.1 } else { &entry.data };
            assert_eq!(
                (recorded.0, &recorded.1),
                (entry.term, payload),
                "{at}: node {id} committed a different entry at {index}"
            );
            let by_term = self.by_term.entry(index).or_insert(raft.term());
            *by_term = (*by_term).min(raft.term());
        }
    }

    /// Leader completeness: leader `id` holds every entry from `from` on that
    /// was committed in an earlier term than its own (in its log, or under
    /// its snapshot).
    pub fn check_leader_holds(&self, id: NodeId, raft: &Raft, from: Index, at: &str) {
        for (&index, (term, data)) in self.entries.range(from..) {
            if self.by_term[&index] >= raft.term() {
                continue;
            }
            if index < raft.first_index() {
                assert!(raft.snapshot().index >= index, "{at}: leader {id} lost entry {index}");
                continue;
            }
            // A payload dropped from memory (`Config::log_memory_bytes`) is
            // in the leader's storage, which the shell checks.
            let evicted = index < raft.payloads_from();
            let entry = raft.entry(index);
            assert!(
                entry.is_some_and(|e| e.term == *term && (e.data == *data || evicted)),
                "{at}: leader {id} of term {} lacks committed entry {index} of term {term}",
                raft.term()
            );
        }
    }

    /// Lease safety: leader `id`, while its lease holds
    /// ([`Raft::lease_valid`]), holds every entry any node has seen
    /// committed, in any term: a lease read there sees every acknowledged
    /// write. Checking the highest such entry is enough, since log
    /// matching (checked on its own) then covers every entry below it.
    /// Meaningful only while every node's ticks keep pace (the lease's
    /// clock assumption).
    pub fn check_lease_holder_holds(&self, id: NodeId, raft: &Raft, at: &str) {
        let Some((&index, (term, _))) = self.entries.last_key_value() else { return };
        if index < raft.first_index() {
            assert!(raft.snapshot().index >= index, "{at}: lease holder {id} lost entry {index}");
            return;
        }
        assert!(
            raft.term_at(index) == Some(*term),
            "{at}: node {id} holds a lease in term {} but lacks committed entry {index} of term {term}",
            raft.term()
        );
    }
}

/// Log matching: two logs that hold an entry with the same index and term
/// are identical up to it (a witness's normal entries, which have no
/// payload, by index, term and kind). Panics, naming `at`, when they are not.
pub fn check_log_matching(rafts: &[(NodeId, &Raft)], at: &str) {
    let shape = |raft: &Raft, index: Index, stripped: bool| {
        raft.entry(index).map(|entry| {
            let keep = !stripped || entry.kind == EntryKind::Config;
            (entry.index, entry.term, entry.kind, if keep { entry.data.clone() } else { Bytes::new() })
        })
    };
    for (position, &(a, ra)) in rafts.iter().enumerate() {
        for &(b, rb) in &rafts[position + 1..] {
            let low = ra.first_index().max(rb.first_index());
            let high = ra.last_index().min(rb.last_index());
            let Some(matching) = (low..=high).rev().find(|&i| ra.term_at(i) == rb.term_at(i)) else { continue };
            let stripped = ra.is_witness() || rb.is_witness();
            let evicted = ra.payloads_from().max(rb.payloads_from());
            for index in low..=matching {
                let stripped = stripped || index < evicted;
                assert_eq!(
                    shape(ra, index, stripped),
                    shape(rb, index, stripped),
                    "{at}: logs of {a} and {b} match at {matching} but differ at {index}"
                );
            }
        }
    }
}

/// A cluster wired by an in-memory network that the test controls.
pub struct Cluster {
    pub nodes: BTreeMap<NodeId, TestNode>,
    /// Messages sent and not yet delivered, in send order.
    pub network: Vec<Message>,
    /// Links (from, to) that drop everything.
    pub cut: BTreeSet<(NodeId, NodeId)>,
    /// Nodes that are down: they neither send nor receive.
    pub down: BTreeSet<NodeId>,
    /// Whether a Ready's writes become durable at once when it is processed.
    pub sync_writes: bool,
}

impl Cluster {
    /// A cluster whose members get `make_config(id)`; `ids` are the members.
    pub fn new(ids: &[NodeId], make_config: impl Fn(NodeId) -> Config) -> Cluster {
        let mut cluster = Cluster::starting(ids, make_config);
        cluster.introduce();
        cluster
    }

    /// The nodes as they first start, each unsure whether its empty log
    /// is a new cluster's or a wiped one (`Raft::unverified`), before they
    /// have heard each other.
    pub fn starting(ids: &[NodeId], make_config: impl Fn(NodeId) -> Config) -> Cluster {
        let nodes = ids.iter().map(|&id| (id, TestNode::new(make_config(id), MemStorage::new()))).collect();
        Cluster { nodes, network: Vec::new(), cut: BTreeSet::new(), down: BTreeSet::new(), sync_writes: true }
    }

    /// A cluster of voters `1..=count` with default settings and the given seed.
    pub fn with_voters(count: u64, seed: u64) -> Cluster {
        let ids: Vec<NodeId> = (1..=count).collect();
        let voters = ids.clone();
        Cluster::new(&ids, |id| {
            let mut config = Config::new(id, voters.clone());
            config.seed = seed.wrapping_mul(31).wrapping_add(id);
            config
        })
    }

    /// Adds a node that starts empty (not yet a member until a change adds it).
    pub fn add_node(&mut self, config: Config) {
        let id = config.id;
        self.nodes.insert(id, TestNode::new(config, MemStorage::new()));
    }

    pub fn node(&self, id: NodeId) -> &TestNode {
        &self.nodes[&id]
    }

    pub fn raft(&mut self, id: NodeId) -> &mut Raft {
        &mut self.nodes.get_mut(&id).expect("known node").raft
    }

    /// The node that believes it leads in the highest term, if any.
    pub fn leader(&self) -> Option<NodeId> {
        self.nodes
            .iter()
            .filter(|(id, node)| !self.down.contains(id) && node.raft.role() == Role::Leader)
            .max_by_key(|(_, node)| node.raft.term())
            .map(|(&id, _)| id)
    }

    /// Processes one node's Ready: queues its messages, records its writes
    /// (durable at once when `sync_writes`), applies committed entries.
    /// Returns the Ready for inspection.
    pub fn process_ready(&mut self, id: NodeId) -> Option<Ready> {
        if self.down.contains(&id) {
            return None;
        }
        let node = self.nodes.get_mut(&id).expect("known node");
        if !node.raft.has_ready() {
            return None;
        }
        let mut ready = node.raft.ready();
        check_leader_term_durable(id, &node.storage, &ready.messages);
        self.network.extend(ready.messages.iter().cloned());
        for write in &ready.snapshot_writes {
            if write.offset == 0 {
                node.incoming_snapshot.clear();
            }
            assert_eq!(write.offset as usize, node.incoming_snapshot.len(), "snapshot chunks arrive in order");
            node.incoming_snapshot.extend_from_slice(&write.data);
        }
        let mut snapshot = None;
        if let Some(meta) = &ready.snapshot_install {
            let data = Bytes::from(std::mem::take(&mut node.incoming_snapshot));
            match decode_state(data.clone()) {
                Some(applied) => {
                    node.applied = applied;
                    node.restores += 1;
                }
                None => node.restore_failures += 1,
            }
            snapshot = Some((meta.clone(), data));
        }
        node.pending_writes.push_back(PendingWrite {
            hard_state: ready.hard_state,
            entries: ready.entries.clone(),
            snapshot,
            last: ready.last_entry(),
            messages_after_persist: std::mem::take(&mut ready.messages_after_persist),
        });
        node.applied.extend(ready.committed_entries.iter().cloned());
        node.read_states.extend(ready.read_states.iter().copied());
        node.dropped_reads.extend(ready.dropped_reads.iter().copied());
        let shown = Ready {
            hard_state: ready.hard_state,
            hard_state_must_sync: ready.hard_state_must_sync,
            entries: ready.entries.clone(),
            messages: std::mem::take(&mut ready.messages),
            messages_after_persist: node
                .pending_writes
                .back()
                .map(|w| w.messages_after_persist.clone())
                .unwrap_or_default(),
            committed_entries: ready.committed_entries.clone(),
            read_states: ready.read_states.clone(),
            dropped_reads: ready.dropped_reads.clone(),
            soft_state: ready.soft_state,
            snapshot_install: ready.snapshot_install.clone(),
            snapshot_writes: ready.snapshot_writes.clone(),
            snapshot_reads: ready.snapshot_reads.clone(),
            snapshot_due: ready.snapshot_due,
            compact_to: ready.compact_to,
        };
        let reads = std::mem::take(&mut ready.snapshot_reads);
        let snapshot_due = ready.snapshot_due;
        node.raft.advance(ready);
        if snapshot_due {
            // A witness has no state machine: its snapshot is the metadata
            // at its applied index with an empty image.
            let witness = node.raft.is_witness();
            let index = if witness { node.raft.applied() } else { node.applied.last().map_or(0, |entry| entry.index) };
            if let Some(meta) = node.raft.snapshot_meta_at(index) {
                let data = if witness { Bytes::new() } else { encode_state(&node.applied) };
                let size = data.len() as u64;
                node.storage.save_local_snapshot(meta.clone(), data);
                node.raft.snapshot_created(meta, size);
            } else {
                node.raft.snapshot_not_taken();
            }
        }
        for read in reads {
            if node.storage.snapshot_meta().index == read.index {
                let data = node.storage.snapshot_data();
                let end = (read.offset + read.len).min(data.len() as u64) as usize;
                let chunk = data.slice((read.offset as usize).min(end)..end);
                node.raft.snapshot_chunk(read.to, read.index, read.offset, chunk);
            } else {
                node.raft.snapshot_unavailable(read.to);
            }
        }
        if self.sync_writes {
            self.persist(id, usize::MAX);
        }
        Some(shown)
    }

    /// Makes up to `count` of a node's pending writes durable, in order, and
    /// releases the messages that waited for them.
    pub fn persist(&mut self, id: NodeId, count: usize) {
        let node = self.nodes.get_mut(&id).expect("known node");
        for _ in 0..count {
            let Some(write) = node.pending_writes.pop_front() else { break };
            if let Some(hard_state) = write.hard_state {
                node.storage.set_hard_state(hard_state);
            }
            if let Some((meta, data)) = write.snapshot {
                if meta.index > node.storage.snapshot_meta().index {
                    node.storage.apply_snapshot(meta, data);
                }
            }
            for batch in &write.entries {
                append_after_snapshot(&mut node.storage, batch);
            }
            if let Some((index, term)) = write.last {
                node.raft.persisted(index, term);
            }
            self.network.extend(write.messages_after_persist);
        }
    }

    /// Delivers one message (if its link and nodes are up); returns whether
    /// it reached its node.
    pub fn deliver(&mut self, message: Message) -> bool {
        if self.down.contains(&message.from)
            || self.down.contains(&message.to)
            || self.cut.contains(&(message.from, message.to))
        {
            return false;
        }
        let Some(node) = self.nodes.get_mut(&message.to) else { return false };
        let _ = node.raft.step(message);
        node.raft.check_invariants();
        true
    }

    /// Delivers every message in flight (and only those), in order.
    pub fn deliver_all(&mut self) -> usize {
        let messages = std::mem::take(&mut self.network);
        let count = messages.len();
        for message in messages {
            self.deliver(message);
        }
        count
    }

    /// Runs Ready processing and delivery until nothing moves.
    pub fn stabilize(&mut self) {
        for _ in 0..10_000 {
            let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
            let mut moved = false;
            for id in ids {
                moved |= self.process_ready(id).is_some();
                if !self.nodes[&id].pending_writes.is_empty() && !self.down.contains(&id) {
                    self.persist(id, usize::MAX);
                    moved = true;
                }
            }
            moved |= self.deliver_all() > 0;
            if !moved {
                return;
            }
        }
        panic!("cluster did not stabilize");
    }

    /// Ticks every live node once and stabilizes: the caught-up followers
    /// then know the leader's commit index. (A commit advance travels with
    /// the next append, or the leader's next tick tells it; only a follower
    /// that forwarded a command the advance covers is told at once, see
    /// `Raft::send_commit`.)
    pub fn tell_commit(&mut self) {
        self.tick_all();
        self.stabilize();
    }

    /// Ticks every live node once.
    pub fn tick_all(&mut self) {
        for (id, node) in self.nodes.iter_mut() {
            if !self.down.contains(id) {
                node.raft.tick();
            }
        }
    }

    /// Cuts both directions between every node of `a` and every node of `b`.
    pub fn partition(&mut self, a: &[NodeId], b: &[NodeId]) {
        for &x in a {
            for &y in b {
                self.cut.insert((x, y));
                self.cut.insert((y, x));
            }
        }
    }

    /// Cuts `id` off from everyone.
    pub fn isolate(&mut self, id: NodeId) {
        let others: Vec<NodeId> = self.nodes.keys().copied().filter(|&other| other != id).collect();
        self.partition(&[id], &others);
    }

    pub fn heal(&mut self) {
        self.cut.clear();
    }

    /// Crashes a node: its undurable writes and in-memory state are lost.
    pub fn crash(&mut self, id: NodeId) {
        self.down.insert(id);
        let node = self.nodes.get_mut(&id).expect("known node");
        node.pending_writes.clear();
        self.network.retain(|message| message.from != id && message.to != id);
    }

    /// Restarts a crashed node from its durable storage.
    pub fn restart(&mut self, id: NodeId) {
        self.down.remove(&id);
        let node = self.nodes.get_mut(&id).expect("known node");
        let storage = std::mem::take(&mut node.storage);
        let config = node.config.clone();
        *node = TestNode::new(config, storage);
    }

    /// Crashes `id`, wipes its storage (an empty data directory) and
    /// restarts it with the starting voters `voters` (what `--peers` would
    /// give it).
    pub fn wipe_and_restart(&mut self, id: NodeId, voters: Vec<NodeId>) {
        self.crash(id);
        let node = self.nodes.get_mut(&id).expect("known node");
        node.storage = MemStorage::new();
        node.config.voters = voters;
        self.restart(id);
    }

    /// Proposes `count` one-byte commands (0, 1, ...) at the leader `id`,
    /// stabilizing after each, so each is committed before the next.
    pub fn commit_values(&mut self, id: NodeId, count: u8) {
        for value in 0..count {
            self.raft(id).propose(Bytes::from(vec![value])).expect("leader accepts");
            self.stabilize();
        }
    }

    /// Every voter tells the others its empty log, as the voters of a new
    /// cluster do when they first hear each other: each then knows that no
    /// history exists that it could have helped make, and votes (see
    /// `Raft::unverified`). `new` does this, so that tests of anything else
    /// start from a cluster that can elect at once.
    pub fn introduce(&mut self) {
        for node in self.nodes.values_mut() {
            node.raft.report_log();
        }
        self.stabilize();
    }

    /// Elects `id`: campaigns and stabilizes. Panics if it did not win.
    pub fn elect(&mut self, id: NodeId) {
        self.raft(id).campaign();
        self.stabilize();
        assert_eq!(self.nodes[&id].raft.role(), Role::Leader, "node {id} failed to win the election");
    }
}

/// Steps into a replica that starts a new cluster's log (`Raft::unverified`)
/// what it hears once every other voter of its configuration has started:
/// their pre-vote requests with an empty log, asked from term 0. Then it
/// votes as any voter does. What it sent meanwhile, and what it must save,
/// is taken and advanced past.
pub fn introduce_peers(raft: &mut Raft) {
    let me = raft.id();
    let voters: Vec<NodeId> = raft.conf().voters.clone();
    for from in voters.into_iter().filter(|&id| id != me) {
        let request = VoteRequest { last_log_index: 0, last_log_term: 0, transfer: false, commit: 0 };
        let _ = raft.step(Message { from, to: me, term: 1, body: MessageBody::PreVote(request) });
    }
    let ready = raft.ready();
    raft.advance(ready);
}
