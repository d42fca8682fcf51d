//! Deterministic simulation of a replicated key-value cluster.
//!
//! Every replica is the node's real shard driver (`node::shard::Shard`: the
//! real engine, the real node-side state machine around the real key-value
//! store, the real request, Ready and snapshot handling), over a simulated
//! disk ([`disk`]) with the WAL's ordering guarantees, a simulated clock, and
//! a simulated network ([`network`]) that delays, drops, duplicates,
//! reorders and partitions.
//! Nodes crash (losing unsynced writes, sometimes keeping a torn prefix) and
//! restart; membership changes, leader transfers and snapshots happen; and
//! clients ([`client`]) issue put, get, delete and compare-and-swap with
//! exactly-once sessions, retrying after timeouts and redirects. In half the
//! seeds followers forward session writes to the leader (the node's
//! `--forward-writes`) and answer them when they apply them.
//!
//! One seed decides everything, so a failure replays exactly. After every
//! event the Raft safety properties are checked ([`checks`]); at the end the
//! faults heal and the cluster must elect a leader, finish every client
//! operation and converge; then the client history is checked for
//! linearizability, key by key.

pub mod checks;
pub mod client;
pub mod disk;
pub mod effects;
pub mod image;
pub mod network;
pub mod node;
pub mod trace;

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Instant;

use engine::config::Rng;
use engine::{ConfChange, ConfChangeOp, Config, NodeId};
use net::{ClientRequest, ReadConsistency, RequestBody, ResponseStatus, SessionSettings};

use crate::linearizability::{check, CheckOptions, NodeKvModel, Verdict};
use checks::Observer;
use client::{SimClient, SimHistory};
use effects::{resolve_unknown, WriteEffects};
use network::{Endpoint, NetworkFaults, Packet, Payload, SimNetwork};
use node::{Outbox, Request, SimNode, Waiter};

/// The client index of the operator's admin requests (answers are dropped).
const OPERATOR: usize = usize::MAX;
/// The client index (and so the user, `client-N`) of a thief that writes in
/// other clients' sessions (see `World::steal`).
const THIEF: usize = usize::MAX - 1;

/// Time units per engine tick: network delays are a fraction of a tick to a
/// few ticks, like loopback or a LAN against a 10 ms tick.
pub const TICK: u64 = 10;
/// How long faults are injected.
const CHAOS_TIME: u64 = 6_000;
/// How long the healed cluster has to elect, finish and converge.
const HEAL_TIME_MAX: u64 = 12_000;
/// Operations each client must complete after the faults heal.
const OPERATIONS_AFTER_HEAL: u64 = 2;

/// What one run did, for the summary line and for tests that want to know
/// the simulator exercised what it claims.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub seed: u64,
    pub voters: u64,
    pub shards: u32,
    pub operations: usize,
    pub completed: u64,
    pub crashes: u64,
    pub partitions: u64,
    pub membership_changes: u64,
    /// Membership changes asked through the node's admin path (join with
    /// an id, promote, remove), accepted or not.
    pub admin_membership_requests: u64,
    pub disk_stalls: u64,
    /// Restarts plus snapshot installs: each rebuilds a state machine.
    pub state_machine_rebuilds: u64,
    pub snapshots_installed: u64,
    pub terms_with_leader: usize,
    pub committed: usize,
    pub lease_reads: bool,
    /// Reads leaders served under their lease (no quorum round).
    pub lease_reads_served: u64,
    /// Whether followers forwarded session writes to the leader, and how
    /// many forwarded writes were answered when applied.
    pub forward_writes: bool,
    pub forwarded_answered: u64,
    /// Sessions clients opened, found expired (or evicted), and were
    /// refused a session because the table was full of sessions with
    /// answers in doubt; writes given up past the retry window.
    /// Shell events: snapshots installed while reads waited, forwarded
    /// writes redirected by a term change, clean stops.
    pub installs_with_reads_waiting: u64,
    /// Snapshots restored off the driver (the shard running on meanwhile),
    /// and snapshots installed while one was being restored.
    pub restores_off_driver: u64,
    pub installs_while_restoring: u64,
    pub forwards_redirected: u64,
    /// Writes leaders proposed in groups of several per entry.
    pub writes_grouped: u64,
    pub clean_stops: u64,
    pub sessions_opened: u64,
    pub sessions_expired: u64,
    pub sessions_refused: u64,
    pub writes_given_up: u64,
    /// Operations whose client never learned the outcome, settled by what
    /// the state machines stored (`effects`): writes placed at the moment
    /// their value was first stored, writes never stored and reads dropped,
    /// and the rest left unknown for the checker.
    pub unknown_placed: u64,
    pub unknown_dropped: u64,
    pub unknown_left: u64,
    /// Crashes after which a disk lost durable entries (storage-fault mode).
    pub storage_faults: u64,
    /// Byte-level faults kept, by kind (`sim::image::FAULT_KINDS`), and
    /// faults undone because recovery could not have detected them.
    pub fault_kinds: [u64; 4],
    pub faults_undone: u64,
    /// Periods during which a faulty node's disk was full, and the requests
    /// refused and snapshot chunks dropped with `NoSpace` meanwhile.
    pub disks_full: u64,
    pub no_space: u64,
    /// Appends that followers on a full disk answered "no space".
    pub appends_no_space: u64,
    /// Seeds whose groups stalled after healing with a majority of voters
    /// that cannot vote safely: repairing, or with an empty log they cannot
    /// tell from a wiped one (storage-fault mode; see `majority_unsure`).
    pub stalled_unsure: u64,
    /// Nodes run as witnesses (`node serve --witness`), and witnesses
    /// that were members when the run converged.
    pub witness_nodes: u64,
    pub witnesses_at_end: u64,
    /// Snapshots witnesses took (metadata, an empty image) and installed
    /// (the leader's metadata-only ones).
    pub witness_snapshots_taken: u64,
    pub witness_snapshots_installed: u64,
    /// Whether the run wrote large values (see `client::value_bytes`), and
    /// how many of them replicas' stores copied after keeping them as
    /// slices of their log entries.
    pub large_values: bool,
    pub slices_copied: u64,
    /// Shard starts that kept what they applied while recovery read the
    /// log, and starts that discarded it (see `effects::WriteEffects`).
    pub recovered_early: u64,
    pub recovered_discarded: u64,
    /// Writes a thief sent in sessions other clients own, and how many were
    /// answered `Forbidden` (every answer that arrives must be).
    pub thefts: u64,
    pub thefts_refused: u64,
}

/// Which nodes of a run are witnesses, drawn from a stream of their own so
/// that every other choice of a seed (and the seeds recorded in
/// t90_regressions) stays what it was. A quarter of the seeds bootstrap
/// with the last initial voter a witness (2 full voters + 1 witness, or
/// 4 + 1); another quarter run the spare node as a witness, which
/// membership changes add as one (by the admin request, a witness's join,
/// or the engine's change).
struct Witnesses {
    /// Witnesses of the bootstrap configuration.
    bootstrap: Option<NodeId>,
    /// The spare node, run as a witness.
    spare: Option<NodeId>,
}

impl Witnesses {
    fn draw(seed: u64, voters: u64) -> Witnesses {
        match Rng::new(seed ^ 0x817_7E55_5EED).range(0, 4) {
            0 => Witnesses { bootstrap: Some(voters), spare: None },
            1 => Witnesses { bootstrap: None, spare: Some(voters + 1) },
            _ => Witnesses { bootstrap: None, spare: None },
        }
    }

    fn runs_as_witness(&self, id: NodeId) -> bool {
        self.bootstrap == Some(id) || self.spare == Some(id)
    }

    fn nodes(&self) -> Vec<NodeId> {
        self.bootstrap.into_iter().chain(self.spare).collect()
    }
}

/// The whole simulated world.
struct World {
    rng: Rng,
    /// The thief's choices (see `World::steal`): a stream of its own.
    thief_rng: Rng,
    /// The time, shared with every node's clock.
    clock: Rc<Cell<u64>>,
    now: u64,
    nodes: BTreeMap<NodeId, SimNode>,
    ids: Vec<NodeId>,
    network: SimNetwork,
    clients: Vec<SimClient>,
    history: SimHistory,
    /// One observer per shard (Raft group).
    observers: Vec<Observer>,
    shards: u32,
    keys: u8,
    /// Out of 100, the chance per time unit that a node's disk finishes work.
    disk_speed: u64,
    /// Per node, the time until which its log device is stalled: appends
    /// and snapshots wait, while the small hard-state file (a separate
    /// fdatasync, unordered with the appends) may still land.
    stalled_until: BTreeMap<NodeId, u64>,
    /// Faulty nodes whose disk is full, until when.
    full_until: BTreeMap<NodeId, u64>,
    /// Per node, its tick period and phase: clocks neither agree nor run at
    /// quite the same rate. The periods differ by at most 10%, within the
    /// drift the engine's lease reads assume (`lease_drift_ticks` of 2 per
    /// election timeout of at least 10 ticks).
    clocks: BTreeMap<NodeId, (u64, u64)>,
    summary: Summary,
    /// When each written value was first stored (see `effects`).
    effects: Rc<RefCell<WriteEffects>>,
    /// The session settings the run uses, until the cluster applied them.
    settings: Option<SessionSettings>,
    /// The nodes whose disks may lose durable entries when they crash (the
    /// storage-fault mode; empty otherwise).
    faulty: Vec<NodeId>,
    /// With `SIM_TRACE`, the replica states last printed.
    traced: Option<trace::States>,
}

/// Runs one seed with `voters` initial voters (plus one spare node that
/// membership changes may add). Panics, with a description, when a property
/// is broken.
pub fn run(seed: u64, voters: u64) -> Summary {
    run_with(seed, voters, false)
}

/// [`run`], and with `storage_faults` one of the initial voters also loses
/// durable entries when it crashes, as a
/// damaged disk would (see `disk::SimDisk::damage`); every damaged replica
/// must then repair itself from its peers by the end of the seed.
pub fn run_with(seed: u64, voters: u64, storage_faults: bool) -> Summary {
    let mut rng = Rng::new(seed ^ voters.wrapping_mul(0xA24B_AED4_963E_E407));
    let ids: Vec<NodeId> = (1..=voters + 1).collect();
    let members: Vec<NodeId> = (1..=voters).collect();
    let lease_reads = rng.range(0, 3) == 0;
    let pre_vote = rng.range(0, 4) != 0;
    let check_quorum = lease_reads || rng.range(0, 4) != 0;
    let snapshot_entries = rng.range(4, 40);
    let chunk_bytes = rng.range(32, 512);
    // Drawn from its own stream, so that every other choice of a seed (and
    // the seeds recorded in t90_regressions) stays what it was.
    let forward_writes = Rng::new(seed ^ 0x5EED_F0E2_A2D5).range(0, 2) == 0;
    // A quarter of the seeds run two or three shards per node, sharing each
    // node's transport, with leaders moving to their preferred nodes.
    let shards = match Rng::new(seed ^ 0x5A2D_5EED).range(0, 8) {
        0 => 2,
        1 => 3,
        _ => 1,
    };
    let witnesses = Witnesses::draw(seed, voters);
    // A quarter of the seeds write large values (every third one 1 KiB
    // longer), which the store keeps as slices of their log entries; drawn
    // from its own stream too.
    let large_values = Rng::new(seed ^ 0x01A2_6E0A_10E5).range(0, 4) == 0;
    client::set_large_values(large_values);
    // A third of the seeds drop applied payloads from the in-memory logs
    // beyond a small budget (`--log-memory-bytes`), so lagging followers
    // catch up through snapshots taken for them; its own stream too.
    let mut memory = Rng::new(seed ^ 0x10C_3E30_4B17);
    let log_memory_bytes = if memory.range(0, 3) == 0 { memory.range(1, 4096) } else { 0 };
    let clock = Rc::new(Cell::new(0));
    let base = Instant::now();
    let effects = Rc::new(RefCell::new(WriteEffects::default()));
    let mut nodes: BTreeMap<NodeId, SimNode> = ids
        .iter()
        .map(|&id| {
            let mut config = Config::new(id, if id <= voters { members.clone() } else { Vec::new() });
            if id <= voters {
                config.witnesses = witnesses.bootstrap.iter().copied().collect();
            }
            config.witness = witnesses.runs_as_witness(id);
            config.snapshot_entries = snapshot_entries;
            config.compaction_tail = snapshot_entries / 4;
            config.snapshot_chunk_bytes = chunk_bytes;
            config.snapshot_chunks_inflight_max = 2;
            config.log_memory_bytes = log_memory_bytes;
            config.promotion_lag_max = 5;
            config.pre_vote = pre_vote;
            config.check_quorum = check_quorum;
            config.inflight_batches_max = 4;
            config.batch_bytes_max = 512;
            config.seed = seed.wrapping_mul(1_000_003).wrapping_add(id);
            (id, SimNode::new(config, shards, clock.clone(), base, forward_writes, effects.clone()))
        })
        .collect();
    let faults = NetworkFaults {
        drop_per_mille: rng.range(0, 120),
        duplicate_per_mille: rng.range(0, 60),
        delay_max: rng.range(1, 2 * TICK),
        long_delay_per_mille: rng.range(0, 30),
        long_delay_max: rng.range(1, 40 * TICK),
    };
    let read_consistency = if lease_reads { ReadConsistency::Lease } else { ReadConsistency::Linearizable };
    let client_count = rng.range(2, 6) as usize;
    let clients = (0..client_count).map(|index| SimClient::new(index, &mut rng, read_consistency, shards)).collect();
    // Small session settings, so that sessions expire, fill the table and
    // are evicted or refused, and writes find their session full.
    let settings = SessionSettings {
        sessions_max: client_count as u32 + rng.range(0, 3) as u32,
        timeout_ms: rng.range(2_000, 6_000),
        replies_max: rng.range(2, 7) as u32,
        reply_bytes_max: 1 << 20,
    };
    let keys = rng.range(1, 5) as u8;
    let disk_speed = rng.range(20, 100);
    let clocks = ids.iter().map(|&id| (id, (TICK + rng.range(0, 2), rng.range(0, TICK)))).collect();
    let faulty = if storage_faults {
        let mut pick = Rng::new(seed ^ 0xD15C_FA17);
        // One faulty node: with two of five, a crash of a healthy node
        // leaves as many damaged replicas as healthy ones up, and a damaged
        // replica whose lost entries were never committed waits for a log
        // that may never grow that long (liveness, not safety: seen in
        // seed 117 of five nodes when tried).
        let faulty = members[pick.range(0, members.len() as u64) as usize];
        match witnesses.nodes().first() {
            // Two full voters and a witness commit with the leader and the
            // witness alone while the full follower is down: a leader whose
            // disk then loses those entries leaves no copy anywhere (two
            // faults), and the group waits forever, by design (README,
            // "Witnesses"). Any run with a witness can get there (membership
            // changes shrink five voters to three: seeds 184 of three nodes
            // and 180 of five, with byte-level faults). The witness's disk
            // is the faulty one instead: it repairs its metadata from the
            // leader.
            Some(&witness) => vec![witness],
            None => vec![faulty],
        }
    } else {
        Vec::new()
    };
    for id in &faulty {
        nodes.get_mut(id).expect("a member").make_faulty();
    }
    let mut world = World {
        faulty,
        rng,
        thief_rng: Rng::new(seed ^ 0x7E1E_F5EE_D000),
        clock,
        now: 0,
        nodes,
        ids,
        network: SimNetwork::new(faults),
        clients,
        history: SimHistory::new(),
        observers: (0..shards).map(|_| Observer::default()).collect(),
        shards,
        keys,
        disk_speed,
        stalled_until: BTreeMap::new(),
        full_until: BTreeMap::new(),
        clocks,
        summary: Summary {
            seed,
            voters,
            shards,
            lease_reads,
            forward_writes,
            witness_nodes: witnesses.nodes().len() as u64,
            large_values,
            ..Summary::default()
        },
        effects,
        settings: Some(settings),
        traced: trace::enabled().then(trace::States::default),
    };
    world.chaos(voters);
    world.heal_and_converge();
    world.check_history();
    world.summary
}

impl World {
    fn send_all(&mut self, from: NodeId, output: Outbox) {
        for (shard, message) in output.messages {
            let to = message.to;
            let payload = Payload::Raft(shard, message);
            let packet = Packet { from: Endpoint::Node(from), to: Endpoint::Node(to), payload };
            self.network.send(&mut self.rng, self.now, packet);
        }
        for response in output.responses {
            if response.waiter.client == OPERATOR {
                continue;
            }
            if response.waiter.client == THIEF {
                assert!(
                    matches!(response.status, ResponseStatus::Forbidden(_)),
                    "seed {}: node {from} answered a write in another user's session with {:?}",
                    self.summary.seed,
                    response.status
                );
                self.summary.thefts_refused += 1;
                continue;
            }
            let packet = Packet {
                from: Endpoint::Node(from),
                to: Endpoint::Client(response.waiter.client),
                payload: Payload::Response(response),
            };
            self.network.send(&mut self.rng, self.now, packet);
        }
    }

    /// One time unit: deliveries, ticks, disks, Readies, clients.
    fn step(&mut self, clients_may_start: bool, disk_speed: u64) {
        self.clock.set(self.now);
        self.free_disks(self.now);
        while let Some(packet) = self.network.next_due(self.now) {
            match (packet.to, packet.payload) {
                (Endpoint::Node(id), Payload::Raft(shard, message)) => {
                    if self.traced.is_some() {
                        trace::message(self.now, &message);
                    }
                    if let Some(node) = self.nodes.get_mut(&id).filter(|node| node.up) {
                        node.step(shard, message);
                    }
                }
                (Endpoint::Node(id), Payload::Request(request)) => {
                    if self.traced.is_some() {
                        trace::request(self.now, id, &request);
                    }
                    if let Some(node) = self.nodes.get_mut(&id).filter(|node| node.up) {
                        node.request(request);
                    }
                }
                (Endpoint::Client(index), Payload::Response(response)) => {
                    let Endpoint::Node(from) = packet.from else { unreachable!("responses come from nodes") };
                    if self.traced.is_some() {
                        trace::response(self.now, from, &response);
                    }
                    self.clients[index].on_response(self.now, response, from, &mut self.history, &mut self.rng);
                }
                (to, payload) => unreachable!("misrouted packet to {to:?}: {payload:?}"),
            }
        }
        for id in self.ids.clone() {
            let (period, phase) = self.clocks[&id];
            let tick = (self.now + phase).is_multiple_of(period);
            let node = self.nodes.get_mut(&id).expect("known node");
            if !node.up {
                continue;
            }
            if tick {
                node.tick();
            }
            for shard in 0..self.shards {
                if self.stalled_until.get(&id).is_some_and(|&until| self.now < until) {
                    if self.rng.range(0, 20) == 0 {
                        node.disk_progress(shard, 0, true, false);
                    }
                } else if self.rng.range(0, 100) < disk_speed {
                    let count = self.rng.range(1, 4) as usize;
                    let hard_state = self.rng.range(0, 2) == 0;
                    let overtake = self.rng.range(0, 3) == 0;
                    node.disk_progress(shard, count, hard_state, overtake);
                }
                // A restore off the driver reports back after a while
                // (`SIM_RESTORE_DELAY` time units on average, default 50),
                // the shard running on meanwhile. Drawn only while one runs,
                // so that runs without one keep their schedules.
                if node.restore_pending(shard) && self.rng.range(0, restore_delay()) == 0 {
                    node.finish_restore(shard);
                }
            }
            let output = node.process();
            if let Some(traced) = &mut self.traced {
                for shard in 0..self.shards {
                    traced.replica(self.now, id, shard, node.raft(shard));
                }
            }
            self.send_all(id, output);
        }
        for index in 0..self.clients.len() {
            let request = self.clients[index].poll(
                &mut self.rng,
                self.now,
                &self.ids,
                self.keys,
                clients_may_start,
                &mut self.history,
            );
            for (target, request) in request {
                let packet = Packet {
                    from: Endpoint::Client(index),
                    to: Endpoint::Node(target),
                    payload: Payload::Request(request),
                };
                self.network.send(&mut self.rng, self.now, packet);
            }
        }
        self.configure_sessions();
        self.steal();
        for shard in 0..self.shards {
            self.observers[shard as usize].check(&mut self.nodes, shard, self.now);
        }
        self.now += 1;
    }

    /// Now and then a thief (a user with the write role, like every
    /// client) writes in a session the leader's table says another client
    /// owns, at a node that holds the session and would propose or forward
    /// the write: that node must refuse it, `Forbidden` (checked in
    /// `send_all`), whatever crashes, snapshots and restores its table went
    /// through. Only such certain refusals are sent, straight to the node,
    /// with choices from a stream of their own, so a seed runs as it did
    /// without the thief.
    fn steal(&mut self) {
        if !self.now.is_multiple_of(97) {
            return;
        }
        let shard = self.thief_rng.range(0, u64::from(self.shards)) as u32;
        let Some(leader) = self.leader(shard) else { return };
        fn sessions(node: &SimNode, shard: u32) -> &::node::session::SessionTable {
            node.replicas[shard as usize].shard.state_machine().sessions()
        }
        let owned: Vec<u64> = sessions(&self.nodes[&leader], shard)
            .iter()
            .filter(|(_, session)| session.owner.is_some())
            .map(|(id, _)| id)
            .collect();
        if owned.is_empty() {
            return;
        }
        let id = owned[self.thief_rng.range(0, owned.len() as u64) as usize];
        let forward_writes = self.summary.forward_writes;
        let targets: Vec<NodeId> = (self.nodes.values())
            .filter(|node| node.up && sessions(node, shard).get(id).is_some())
            .filter(|node| {
                let raft = node.raft(shard);
                raft.role() == engine::Role::Leader || (forward_writes && raft.leader() != engine::NODE_NONE)
            })
            .map(|node| node.id)
            .collect();
        if targets.is_empty() {
            return;
        }
        let target = targets[self.thief_rng.range(0, targets.len() as u64) as usize];
        let Some(key) =
            (0..=u8::MAX).map(client::key_bytes).find(|key| net::kv::shard_for_key(key, self.shards) == shard)
        else {
            return;
        };
        let command = net::kv::KvOp::Put { key, value: client::value_bytes(u64::MAX) }.encode();
        let sequence = self.thief_rng.range(1, 4);
        let request =
            ClientRequest { request_id: 0, client_id: id, sequence, ack: 1, body: RequestBody::Write { command } };
        let waiter = Waiter { client: THIEF, operation: self.now, attempt: 0 };
        self.summary.thefts += 1;
        self.nodes.get_mut(&target).expect("a node").request(Request { waiter, shard, request });
    }

    /// Frees the full disks whose time is up by `now`.
    fn free_disks(&mut self, now: u64) {
        let freed: Vec<NodeId> =
            self.full_until.iter().filter(|(_, &until)| until <= now || now == u64::MAX).map(|(&id, _)| id).collect();
        for id in freed {
            self.full_until.remove(&id);
            self.nodes.get_mut(&id).expect("known node").set_disk_full(false);
        }
    }

    /// The operator sets the run's session settings through the leader (an
    /// admin request), until the leader has applied them.
    fn configure_sessions(&mut self) {
        let Some(settings) = self.settings else { return };
        let mut configured = true;
        for shard in 0..self.shards {
            let Some(leader) = self.leader(shard) else {
                configured = false;
                continue;
            };
            let node = self.nodes.get_mut(&leader).expect("known node");
            if node.replicas[shard as usize].shard.state_machine().sessions().settings() == settings {
                continue;
            }
            configured = false;
            if self.now.is_multiple_of(50) {
                let body = RequestBody::Admin(net::AdminRequest::SessionSettings(settings));
                let waiter = Waiter { client: OPERATOR, operation: 0, attempt: 0 };
                node.request(Request { waiter, shard, request: ClientRequest::plain(0, body) });
            }
        }
        if configured {
            self.settings = None;
        }
    }

    fn down_count(&self) -> usize {
        self.nodes.values().filter(|node| !node.up).count()
    }

    /// The node that leads `shard` in the highest term, if any.
    fn leader(&self, shard: u32) -> Option<NodeId> {
        self.nodes
            .values()
            .filter(|node| node.is_leader(shard))
            .max_by_key(|node| node.raft(shard).term())
            .map(|node| node.id)
    }

    fn pick_shard(&mut self) -> u32 {
        self.rng.range(0, u64::from(self.shards)) as u32
    }

    fn pick(&mut self) -> NodeId {
        self.ids[self.rng.range(0, self.ids.len() as u64) as usize]
    }

    /// The fault phase: normal operation with faults injected at random.
    fn chaos(&mut self, voters: u64) {
        while self.now < CHAOS_TIME {
            match self.rng.range(0, 1000) {
                0..=1 => {
                    // A symmetric partition into two random groups.
                    let mut shuffled = self.ids.clone();
                    for i in (1..shuffled.len()).rev() {
                        let j = self.rng.range(0, i as u64 + 1) as usize;
                        shuffled.swap(i, j);
                    }
                    let split = self.rng.range(1, shuffled.len() as u64) as usize;
                    let (a, b) = shuffled.split_at(split);
                    for &x in a {
                        for &y in b {
                            self.network.cut.insert((x, y));
                            self.network.cut.insert((y, x));
                        }
                    }
                    self.summary.partitions += 1;
                }
                2 => {
                    // An asymmetric cut: one node hears nobody, or nobody hears it.
                    let id = self.pick();
                    let inbound = self.rng.range(0, 2) == 0;
                    for &other in &self.ids {
                        if other != id {
                            self.network.cut.insert(if inbound { (other, id) } else { (id, other) });
                        }
                    }
                    self.summary.partitions += 1;
                }
                3 => {
                    // A single one-way link failure.
                    let (a, b) = (self.pick(), self.pick());
                    if a != b {
                        self.network.cut.insert((a, b));
                    }
                }
                4..=6 => self.network.cut.clear(),
                7..=8 => {
                    let id = self.pick();
                    let limit = ((voters as usize) - 1) / 2;
                    if self.nodes[&id].up && self.down_count() < limit.max(1) {
                        self.crash(id);
                    }
                }
                9 => {
                    // The leader crashes: the most disruptive crash.
                    let shard = self.pick_shard();
                    if let Some(id) = self.leader(shard) {
                        if self.down_count() < ((voters as usize - 1) / 2).max(1) {
                            self.crash(id);
                        }
                    }
                }
                10 => self.membership_change(),
                12..=13 => {
                    let id = self.pick();
                    let until = self.now + self.rng.range(50, 1500);
                    if self.faulty.contains(&id) && self.rng.range(0, 2) == 0 {
                        // Its disk fills: writes wait and are refused with
                        // `NoSpace`, snapshots are given up, until space
                        // is freed.
                        self.full_until.insert(id, until);
                        self.nodes.get_mut(&id).expect("known node").set_disk_full(true);
                        self.summary.disks_full += 1;
                    } else {
                        self.stalled_until.insert(id, until);
                        self.summary.disk_stalls += 1;
                    }
                }
                14 => {
                    // A clean stop (SIGTERM) with clients waiting: they are
                    // answered, the hard state saved, the log closed.
                    let id = self.pick();
                    let limit = ((voters as usize) - 1) / 2;
                    if self.nodes[&id].up && self.down_count() < limit.max(1) {
                        let output = self.nodes.get_mut(&id).expect("known node").shut_down();
                        self.send_all(id, output);
                        self.network.forget(id);
                    }
                }
                11 => {
                    let shard = self.pick_shard();
                    if let Some(leader) = self.leader(shard) {
                        let target = self.pick();
                        let node = self.nodes.get_mut(&leader).expect("known node");
                        let _ = node.replicas[shard as usize].shard.raft_mut().transfer_leader(target);
                    }
                }
                _ => {}
            }
            if self.down_count() > 0 && self.rng.range(0, 300) == 0 {
                let down: Vec<NodeId> = self.nodes.values().filter(|node| !node.up).map(|node| node.id).collect();
                let id = down[self.rng.range(0, down.len() as u64) as usize];
                self.nodes.get_mut(&id).expect("known node").restart();
            }
            self.step(true, self.disk_speed);
        }
    }

    /// Node `id` crashes; in the storage-fault mode a faulty node's disk
    /// may then lose durable entries too, while every group it is in keeps
    /// at least three voters (with fewer, one damaged replica is already
    /// half of the group, and refusing to vote is then all it can do).
    fn crash(&mut self, id: NodeId) {
        let shards = self.shards;
        let node = self.nodes.get_mut(&id).expect("known node");
        let groups_large_enough = (0..shards).all(|shard| node.raft(shard).conf().voters.len() >= 3);
        node.crash(&mut self.rng);
        if self.faulty.contains(&id) && groups_large_enough && self.rng.range(0, 2) == 0 && node.damage(&mut self.rng) {
            self.summary.storage_faults += 1;
        }
        self.network.forget(id);
        self.summary.crashes += 1;
    }

    /// Adds a learner, promotes one, adds or removes a voter, through the
    /// leader, as the admin commands do.
    fn membership_change(&mut self) {
        let shard = self.pick_shard();
        let Some(leader) = self.leader(shard) else { return };
        let target = self.pick();
        let conf = self.nodes[&leader].raft(shard).conf().clone();
        // A node run as a witness becomes a voter only as a witness (as an
        // operator does it: `admin add-witness`, or its `--join --witness`),
        // directly or from a learner; a full voter only from a learner (the
        // engine refuses anything else).
        let witness = self.nodes[&target].config.witness;
        let op = if conf.is_learner(target) {
            ConfChangeOp::AddVoter(target)
        } else if conf.is_voter(target) {
            // Keep at least three voters so the cluster stays interesting.
            if conf.voters.len() <= 3 {
                return;
            }
            ConfChangeOp::Remove(target)
        } else if self.rng.range(0, 2) == 0 || !witness {
            ConfChangeOp::AddLearner(target)
        } else {
            ConfChangeOp::AddVoter(target)
        };
        let op = match op {
            ConfChangeOp::AddVoter(id) if witness => ConfChangeOp::AddWitness(id),
            op => op,
        };
        if self.rng.range(0, 2) == 0 {
            // Half the time as a joining node and an operator do it: admin
            // requests to the leader (join with an id, promote, remove; the
            // leader asked to remove itself hands leadership over first; a
            // removed node is refused).
            let join = |id: NodeId| {
                net::AdminRequest::Join(net::JoinRequest {
                    id,
                    nonce: 0,
                    peer_addr: format!("127.0.0.1:{}", 10_000 + id),
                    client_addr: format!("127.0.0.1:{}", 20_000 + id),
                    witness,
                })
            };
            let admin = match op {
                // A witness's join adds it as a witness at once.
                ConfChangeOp::AddLearner(id) => join(id),
                ConfChangeOp::AddVoter(id) => net::AdminRequest::Promote { id },
                ConfChangeOp::Remove(id) => net::AdminRequest::Remove { id },
                ConfChangeOp::AddWitness(id) if self.rng.range(0, 2) == 0 => join(id),
                ConfChangeOp::AddWitness(id) => {
                    net::AdminRequest::AddWitness { id, addr: format!("127.0.0.1:{}", 10_000 + id) }
                }
            };
            let waiter = Waiter { client: OPERATOR, operation: 0, attempt: 0 };
            let request = ClientRequest::plain(0, RequestBody::Admin(admin));
            self.nodes.get_mut(&leader).expect("known node").request(Request { waiter, shard, request });
            self.summary.admin_membership_requests += 1;
            return;
        }
        let raft = self.nodes.get_mut(&leader).expect("known node").replicas[shard as usize].shard.raft_mut();
        if raft.propose_conf_change(ConfChange { ops: vec![op] }).is_ok() {
            self.summary.membership_changes += 1;
        }
    }

    /// Heals every fault and demands progress: a leader, every client
    /// operation finished plus a few more, and every member converged to the
    /// same state machine.
    fn heal_and_converge(&mut self) {
        self.network.cut.clear();
        self.network.faults = NetworkFaults::calm();
        self.stalled_until.clear();
        self.free_disks(u64::MAX);
        for node in self.nodes.values_mut() {
            if !node.up {
                node.restart();
            }
        }
        for client in &mut self.clients {
            client.pauses = false;
        }
        let healed_at = self.now;
        let baseline: Vec<u64> = self.clients.iter().map(|client| client.completed).collect();
        let deadline = healed_at + HEAL_TIME_MAX;
        // Clients keep working until each has finished a few operations
        // after the heal; then they stop starting new ones.
        loop {
            let done = self
                .clients
                .iter()
                .zip(&baseline)
                .all(|(client, before)| client.completed >= before + OPERATIONS_AFTER_HEAL && client.is_idle());
            if done {
                break;
            }
            if self.now >= deadline && self.majority_unsure() {
                self.summary.stalled_unsure += 1;
                return;
            }
            if self.now >= deadline {
                panic!(
                    "liveness: {} time units after healing, clients are stuck\n{}",
                    self.now - healed_at,
                    self.describe()
                );
            }
            let may_start = self
                .clients
                .iter()
                .zip(&baseline)
                .any(|(client, before)| client.completed < before + OPERATIONS_AFTER_HEAL);
            self.step(may_start, 100);
        }
        // Convergence: in every shard, every member applies everything the
        // leader committed, and their state machines are byte-for-byte equal;
        // a member whose disk lost entries has repaired itself.
        for shard in 0..self.shards {
            loop {
                if self.converged(shard) {
                    break;
                }
                if self.now >= deadline && self.majority_unsure() {
                    self.summary.stalled_unsure += 1;
                    return;
                }
                if self.now >= deadline {
                    panic!("liveness: shard {shard}'s members did not converge after healing\n{}", self.describe());
                }
                self.step(false, 100);
            }
        }
        self.summary.terms_with_leader = self.observers.iter().map(Observer::terms_with_leader).sum();
        self.summary.committed = self.observers.iter().map(Observer::committed_len).sum();
        self.summary.completed = self.clients.iter().map(|client| client.completed).sum();
        self.summary.state_machine_rebuilds = self.nodes.values().map(|node| node.generation).sum();
        self.summary.snapshots_installed = self.nodes.values().map(|node| node.snapshots_installed()).sum();
        self.summary.forwarded_answered = self.nodes.values().map(|node| node.forwarded_answered()).sum();
        self.summary.installs_with_reads_waiting =
            self.nodes.values().map(|node| node.installs_with_reads_waiting()).sum();
        self.summary.restores_off_driver = self.nodes.values().map(|node| node.restores_off_driver().0).sum();
        self.summary.installs_while_restoring = self.nodes.values().map(|node| node.restores_off_driver().1).sum();
        self.summary.forwards_redirected = self.nodes.values().map(|node| node.forwards_redirected()).sum();
        self.summary.writes_grouped = self.nodes.values().map(|node| node.writes_grouped()).sum();
        self.summary.lease_reads_served = self.nodes.values().map(|node| node.lease_reads_served()).sum();
        self.summary.clean_stops = self.nodes.values().map(|node| node.clean_stops).sum();
        self.summary.no_space = self.nodes.values().map(|node| node.no_space()).sum();
        self.summary.appends_no_space = self.nodes.values().map(|node| node.appends_no_space()).sum();
        for node in self.nodes.values() {
            let (kinds, undone) = node.fault_counts();
            for (total, count) in self.summary.fault_kinds.iter_mut().zip(kinds) {
                *total += count;
            }
            self.summary.faults_undone += undone;
        }
        self.summary.witnesses_at_end = self.witnesses_now();
        let witnesses = || self.nodes.values().filter(|node| node.config.witness);
        self.summary.witness_snapshots_taken = witnesses().map(SimNode::snapshots_taken).sum();
        self.summary.witness_snapshots_installed = witnesses().map(SimNode::snapshots_installed).sum();
        for client in &self.clients {
            self.summary.sessions_opened += client.counts.sessions_opened;
            self.summary.sessions_expired += client.counts.sessions_expired;
            self.summary.sessions_refused += client.counts.sessions_refused;
            self.summary.writes_given_up += client.counts.writes_given_up;
        }
    }

    /// Whether `shard`'s members have all applied everything its leader
    /// committed (and then checks their states are equal).
    fn converged(&self, shard: u32) -> bool {
        let Some(leader) = self.leader(shard) else { return false };
        let raft = self.nodes[&leader].raft(shard);
        let commit = raft.committed();
        let members = raft.conf().members();
        let replica = |id: &NodeId| &self.nodes[id].replicas[shard as usize];
        let converged = raft.last_index() == commit
            && members.iter().all(|id| self.nodes[id].up && replica(id).shard.applied() == commit)
            && members.iter().all(|id| replica(id).shard.raft().repair_target().is_none());
        if converged {
            let reference = replica(&leader).shard.state_machine().snapshot();
            for id in &members {
                if replica(id).shard.raft().is_witness() {
                    check_witness(*id, shard, replica(id));
                    continue;
                }
                let snapshot = replica(id).shard.state_machine().snapshot();
                assert!(
                    snapshot == reference,
                    "state machine safety: shard {shard}: node {id}'s state differs from leader {leader}'s at index {commit}\n{}",
                    self.describe()
                );
            }
        }
        converged
    }

    /// Witnesses that are members of some shard now.
    fn witnesses_now(&self) -> u64 {
        let witness = |node: &SimNode| (0..self.shards).any(|shard| node.raft(shard).conf().is_witness(node.id));
        self.nodes.values().filter(|node| witness(node)).count() as u64
    }

    /// Whether, in the storage-fault mode, too many of some shard's voters
    /// to leave a majority are in repair or unable to tell their empty log from a
    /// wiped one: such a group cannot elect a leader safely, by design (the
    /// README's "Failures and repair"). Happens when a damaged replica's
    /// peer never received an entry.
    fn majority_unsure(&self) -> bool {
        if self.faulty.is_empty() {
            return false;
        }
        (0..self.shards).any(|shard| {
            let conf = self
                .nodes
                .values()
                .map(|node| node.raft(shard))
                .max_by_key(|raft| (raft.term(), raft.last_index()))
                .map(|raft| raft.conf().clone())
                .unwrap_or_default();
            let unsure = |id: &&NodeId| {
                let raft = self.nodes[*id].raft(shard);
                raft.repair_target().is_some() || raft.past_unknown()
            };
            // A half whose others cannot make a majority (with four voters,
            // two unsure ones are enough); during a joint change an
            // election needs a majority of both halves.
            let lacks = |half: &[NodeId]| {
                !half.is_empty() && half.len() - half.iter().filter(unsure).count() < half.len() / 2 + 1
            };
            lacks(&conf.voters) || lacks(&conf.voters_outgoing)
        })
    }

    fn describe(&self) -> String {
        let mut lines = Vec::new();
        for (node, shard) in self.nodes.values().flat_map(|node| (0..self.shards).map(move |shard| (node, shard))) {
            let replica = &node.replicas[shard as usize];
            let raft = replica.shard.raft();
            lines.push(format!(
                "node {} shard {shard}: up={} {:?} term={} leader={} commit={} applied={} persisted={} last={} snapshot={} conf={:?} pending_disk={} oldest_pending_append={:?} progress={:?} repair={:?}",
                node.id,
                node.up,
                raft.role(),
                raft.term(),
                raft.leader(),
                raft.committed(),
                raft.applied(),
                raft.persisted_index(),
                raft.last_index(),
                raft.snapshot().index,
                raft.conf(),
                replica.disk.borrow().pending_len(),
                replica.shard.oldest_pending_append(),
                raft.status().progress.iter().map(|p| (p.id, p.match_index, p.next_index, format!("{:?}", p.state), p.inflight_batches)).collect::<Vec<_>>(),
                raft.repair_target(),
            ));
        }
        lines.push(format!("network: {} in flight, cut {:?}", self.network.len(), self.network.cut));
        for client in &self.clients {
            lines.push(format!("client {}: {}", client.index, client.describe()));
        }
        if let Some(leader) = self.leader(0) {
            let sessions = self.nodes[&leader].replicas[0].shard.state_machine().sessions();
            lines.push(format!(
                "shard 0 leader's sessions at log time {}: {:?} {:?}",
                sessions.time(),
                sessions.settings(),
                sessions
                    .iter()
                    .map(|(id, s)| (id, s.last_active, s.floor, s.replies.keys().collect::<Vec<_>>()))
                    .collect::<Vec<_>>()
            ));
        }
        lines.join("\n")
    }

    fn check_history(&mut self) {
        for client in &mut self.clients {
            client.finish(&mut self.history);
        }
        let history = std::mem::take(&mut self.history);
        self.summary.operations = history.len();
        let (operations, resolved) = resolve_unknown(history.into_operations(), &self.effects.borrow());
        self.summary.unknown_placed = resolved.placed;
        self.summary.unknown_dropped = resolved.dropped;
        self.summary.unknown_left = resolved.left;
        self.summary.slices_copied = self.effects.borrow().slices_copied;
        self.summary.recovered_early = self.effects.borrow().recovered_early;
        self.summary.recovered_discarded = self.effects.borrow().recovered_discarded;
        if std::env::var_os("SIM_DUMP").is_some() {
            let mut sorted: Vec<_> = operations.iter().collect();
            sorted.sort_by_key(|operation| operation.call);
            for operation in sorted {
                let returned = operation.returned.as_ref().map(|r| (r.time, &r.output));
                eprintln!("p{} {:?} at {} -> {:?}", operation.client_id, operation.input, operation.call, returned);
            }
        }
        let mut options = CheckOptions::default();
        if let Ok(seconds) = std::env::var("SIM_CHECK_SECONDS") {
            // Replaying an `Unknown`: give the checker the time (and memory)
            // to decide.
            let seconds: u64 = seconds.parse().expect("SIM_CHECK_SECONDS is a number");
            options.time_budget = Some(std::time::Duration::from_secs(seconds));
            options.memo_entries_max = None;
        }
        let verdict = check(&NodeKvModel::new(), &operations, &options);
        match verdict {
            Verdict::Linearizable => {}
            other => panic!("the client history is not linearizable: {other}\n{} keys; {:?}", self.keys, self.summary),
        }
    }
}

/// A converged witness: it applied up to the commit index without a state
/// machine (its key-value store is empty: no command reached it), and its
/// disk holds no payload but configuration entries', and snapshots without
/// an image.
fn check_witness(id: NodeId, shard: u32, replica: &node::SimReplica) {
    let state = replica.shard.state_machine();
    assert!(
        state.app.is_empty() && state.sessions().is_empty(),
        "witness {id} of shard {shard} has a state machine with data"
    );
    let disk = replica.disk.borrow();
    let storage = &disk.durable;
    let (first, last) = (storage.first_index(), storage.last_index());
    if first <= last {
        for entry in storage.entries(first, last).expect("stored entries") {
            assert!(
                entry.kind == engine::EntryKind::Config || entry.data.is_empty(),
                "witness {id} of shard {shard} stored a payload at {}",
                entry.index
            );
        }
    }
    assert!(storage.snapshot_data().is_empty(), "witness {id} of shard {shard} stored a snapshot image");
}

/// The mean delay before a restore off the driver reports back, in time
/// units (`SIM_RESTORE_DELAY`, default 50).
fn restore_delay() -> u64 {
    std::env::var("SIM_RESTORE_DELAY").map_or(50, |delay| delay.parse().expect("SIM_RESTORE_DELAY is a number")).max(1)
}
