//! One simulated replica: the node's real shard driver (`node::shard::Shard`)
//! with the real key-value state machine, over a simulated disk
//! ([`SimStorage`]), network and clock. This file holds only the fakes the
//! driver runs on and the fault injection (crash, restart); everything the
//! node does with a `Ready` is the node's own code.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use engine::config::Rng;
use engine::{Config, Entry, Message, NodeId, Role};
use net::{ClientRequest, ReadConsistency, ResponseStatus};
use node::replicated::Addresses;
use node::shard::{Clock, RecoveredShard, RecoveringState, Shard, ShardContext, ShardTransport};

use super::disk::{stored, SimDisk, SimStorage};
use super::effects::{HeldEffects, ObservedKv, WriteEffects};

/// Who waits for an answer: a client, and which attempt of which of its
/// operations.
#[derive(Clone, Copy, Debug)]
pub struct Waiter {
    pub client: usize,
    pub operation: u64,
    pub attempt: u32,
}

/// A client request as it travels to a node: for one shard.
#[derive(Clone, Debug)]
pub struct Request {
    pub waiter: Waiter,
    pub shard: u32,
    pub request: ClientRequest,
}

/// A node's answer as it travels to a client.
#[derive(Clone, Debug)]
pub struct Response {
    pub waiter: Waiter,
    pub status: ResponseStatus,
}

/// What the drivers of a node sent since the world last collected it: Raft
/// messages tagged with their shard (one transport for every shard of the
/// node, as a core's links are shared), and answers.
#[derive(Default)]
pub struct Outbox {
    pub messages: Vec<(u32, Message)>,
    pub responses: Vec<Response>,
}

/// A shard driver's transport: everything goes to the node's outbox, and
/// the world puts it on the simulated network.
pub struct SimTransport {
    shard_id: u32,
    outbox: Rc<RefCell<Outbox>>,
}

impl ShardTransport for SimTransport {
    type Reply = Waiter;

    fn send(&mut self, message: Message) {
        self.outbox.borrow_mut().messages.push((self.shard_id, message));
    }

    fn reply(&mut self, waiter: Waiter, status: ResponseStatus) {
        self.outbox.borrow_mut().responses.push(Response { waiter, status });
    }

    fn member_addresses(&mut self, _: NodeId, _: &Addresses) {}

    fn member_removed(&mut self, _: NodeId) {}
}

/// The driver's clock: the world's time, one unit a millisecond.
pub struct SimClock {
    base: Instant,
    now: Rc<Cell<u64>>,
}

impl Clock for SimClock {
    fn now(&self) -> Instant {
        self.base + Duration::from_millis(self.now.get())
    }
}

pub type SimShard = Shard<ObservedKv, SimStorage, SimTransport, SimClock>;

/// Runs a future of the driver to completion. The simulated storage never
/// makes the driver wait, so one poll finishes it.
pub fn run_now<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    match future.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("the simulated storage never makes the driver wait"),
    }
}

/// What the drivers that ended (crashes, stops) counted, kept for the
/// run's totals.
#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    snapshots_installed: u64,
    snapshots_taken: u64,
    forwarded_answered: u64,
    installs_with_reads_waiting: u64,
    restores_off_driver: u64,
    installs_while_restoring: u64,
    forwards_redirected: u64,
    writes_grouped: u64,
    lease_reads: u64,
    no_space: u64,
    appends_no_space: u64,
}

impl Counts {
    fn add(&mut self, stats: &node::stats::ShardStats) {
        self.snapshots_installed += stats.snapshots_installed;
        self.snapshots_taken += stats.snapshots_taken;
        self.forwarded_answered += stats.forwarded_answered;
        self.installs_with_reads_waiting += stats.installs_with_reads_waiting;
        self.restores_off_driver += stats.restores_off_driver;
        self.installs_while_restoring += stats.installs_while_restoring;
        self.forwards_redirected += stats.forwards_redirected;
        self.writes_grouped += stats.writes_grouped;
        self.lease_reads += stats.lease_reads;
        self.no_space += stats.no_space + stats.snapshot_chunks_no_space;
        self.appends_no_space += stats.appends_no_space;
    }
}

/// One shard of a node: its driver, its disk, and what the observer has
/// not looked at yet.
pub struct SimReplica {
    /// The driver; after a crash, the dead process's (its engine is still
    /// checked against the others, as it was at the crash).
    pub shard: SimShard,
    pub disk: Rc<RefCell<SimDisk>>,
    /// Entries applied since the observer last looked, for state machine
    /// safety; and the index the next applied entry must have.
    pub applied_unchecked: Vec<Entry>,
    apply_next: engine::Index,
    /// Snapshots installed by the current driver when the observer last
    /// looked (an install moves the next applied index).
    installs_seen: u64,
    before: Counts,
}

impl SimReplica {
    /// Moves the entries the driver applied to `applied_unchecked`, checking
    /// that they follow each other (or follow an installed snapshot).
    /// Returns whether a snapshot replaced the state machine.
    fn collect_applied(&mut self, id: NodeId) -> bool {
        let installs = self.shard.stats().snapshots_installed;
        if installs != self.installs_seen {
            self.installs_seen = installs;
            self.apply_next = self.shard.raft().snapshot().index + 1;
            // Entries applied before the install in this pass are checked
            // against the others but not for contiguity.
            let applied = self.shard.take_applied();
            let after: Vec<&Entry> = applied.iter().filter(|entry| entry.index >= self.apply_next).collect();
            let witness = self.shard.raft().is_witness();
            for entry in after {
                if witness {
                    assert!(entry.index >= self.apply_next, "witness {id} applies out of order");
                } else {
                    assert_eq!(entry.index, self.apply_next, "node {id} applies out of order");
                }
                self.apply_next = entry.index + 1;
            }
            self.applied_unchecked.extend(applied);
            return true;
        }
        // A witness applies configuration entries only: in order, with gaps.
        let witness = self.shard.raft().is_witness();
        for entry in self.shard.take_applied() {
            if witness {
                assert!(entry.index >= self.apply_next, "witness {id} applies out of order");
            } else {
                assert_eq!(entry.index, self.apply_next, "node {id} applies out of order");
            }
            self.apply_next = entry.index + 1;
            self.applied_unchecked.push(entry);
        }
        false
    }

    fn counts(&self) -> Counts {
        let mut counts = self.before;
        counts.add(self.shard.stats());
        counts
    }
}

/// A node: one replica per shard, sharing the node's transport. After a
/// crash only the disks' durable state and the configuration survive;
/// [`SimNode::restart`] rebuilds the drivers from them.
pub struct SimNode {
    pub id: NodeId,
    /// The engine configuration of shard 0 (each shard's seed differs).
    pub config: Config,
    pub up: bool,
    pub replicas: Vec<SimReplica>,
    outbox: Rc<RefCell<Outbox>>,
    clock: Rc<Cell<u64>>,
    base: Instant,
    /// Where the state machines record when each value is first stored.
    effects: Rc<RefCell<WriteEffects>>,
    /// The node's `--forward-writes`.
    pub forward_writes: bool,
    /// Incremented whenever a state machine is replaced wholesale
    /// (restart, snapshot install).
    pub generation: u64,
    /// Clean stops (with clients waiting or not).
    pub clean_stops: u64,
}

fn shard_context(id: NodeId, shard_id: u32, shards: u32, forward_writes: bool, nonce_salt: u64) -> ShardContext {
    let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
    ShardContext {
        shard_id,
        shards,
        node_id: id,
        core: 0,
        peer_addr: SocketAddr::new(ip, 10_000 + id as u16),
        client_addr: SocketAddr::new(ip, 20_000 + id as u16),
        read_consistency_default: ReadConsistency::Linearizable,
        forward_writes,
        command_bytes_max: 1 << 20,
        // With several shards, leaders move to their preferred nodes: more
        // leadership transfers for the simulator to check.
        balance_leaders: shards > 1,
        nonce_salt,
        learned_addresses: Default::default(),
        history: net::History::FRESH,
        tick_interval: Duration::from_millis(crate::sim::TICK),
        said_hold: None,
    }
}

impl SimNode {
    pub fn new(
        config: Config,
        shards: u32,
        clock: Rc<Cell<u64>>,
        base: Instant,
        forward_writes: bool,
        effects: Rc<RefCell<WriteEffects>>,
    ) -> SimNode {
        let outbox = Rc::new(RefCell::new(Outbox::default()));
        let mut node = SimNode {
            id: config.id,
            config,
            up: true,
            replicas: Vec::new(),
            outbox,
            clock,
            base,
            effects,
            forward_writes,
            generation: 0,
            clean_stops: 0,
        };
        for shard_id in 0..shards {
            let disk = Rc::new(RefCell::new(SimDisk::default()));
            // `SIM_OUT_OF_ORDER_TAILS=1` gives every node's disk out-of-order
            // tails (see `SimDisk::out_of_order_tails`), for diagnosis: the
            // repairs they cause can stall a majority by design.
            disk.borrow_mut().out_of_order_tails = std::env::var_os("SIM_OUT_OF_ORDER_TAILS").is_some();
            let shard = node.open(shard_id, shards, &disk);
            node.replicas.push(SimReplica {
                shard,
                disk,
                applied_unchecked: Vec::new(),
                apply_next: 1,
                installs_seen: 0,
                before: Counts::default(),
            });
        }
        node
    }

    fn shards(&self) -> u32 {
        self.replicas.len().max(1) as u32
    }

    /// A driver of shard `shard_id` over what its disk holds durably, as the
    /// node's start does.
    fn open(&self, shard_id: u32, shards: u32, disk: &Rc<RefCell<SimDisk>>) -> SimShard {
        // The node's start: the committed log beyond the payload budget is
        // applied as recovery reads it (a witness applies no payload); the
        // values it stores count once the shard keeps what it applied.
        let held: HeldEffects = Rc::new(RefCell::new(Some(Vec::new())));
        let app = ObservedKv::holding(self.effects.clone(), self.clock.clone(), held.clone());
        let (mut state, witness) = if self.config.witness {
            (RecoveringState::from(app), true)
        } else {
            let mut snapshot = disk.borrow().snapshot_reader();
            let spare = ObservedKv::new(self.effects.clone(), self.clock.clone());
            (RecoveringState::new(app, spare, Box::new(move || Ok(snapshot.take()))), false)
        };
        let taker: Option<&mut dyn wal::RecoveryApply> = (!witness).then_some(&mut state);
        let recovered = disk.borrow_mut().recovered(taker);
        let mut config = self.config.clone();
        config.seed = config.seed.wrapping_add(u64::from(shard_id).wrapping_mul(0x9E37_79B9));
        // Each start of the node its own nonces, as the real node's random
        // salt gives it.
        let salt = config.seed.rotate_left(17) ^ self.generation << 48;
        let mut shard = Shard::new(
            shard_context(self.id, shard_id, shards, self.forward_writes, salt),
            config,
            RecoveredShard { recovered },
            state,
            SimStorage::new(disk.clone(), (self.id, shard_id)),
            SimTransport { shard_id, outbox: self.outbox.clone() },
            SimClock { base: self.base, now: self.clock.clone() },
        )
        .expect("a simulated disk always recovers");
        let (early, discarded) = (shard.stats().recovered_early, shard.stats().recovered_discarded);
        let mut effects = self.effects.borrow_mut();
        effects.release(&held, discarded == 0);
        effects.recovered_early += u64::from(early > 0);
        effects.recovered_discarded += u64::from(discarded > 0);
        drop(effects);
        shard.trace_applied();
        shard
    }

    /// Shard `shard`'s engine.
    pub fn raft(&self, shard: u32) -> &engine::Raft {
        self.replicas[shard as usize].shard.raft()
    }

    /// The process dies: memory is lost, the disks keep what was durable
    /// (and maybe a torn prefix of what was not).
    pub fn crash(&mut self, rng: &mut Rng) {
        self.up = false;
        for replica in &self.replicas {
            replica.disk.borrow_mut().crash(rng);
        }
        let mut outbox = self.outbox.borrow_mut();
        outbox.messages.clear();
        outbox.responses.clear();
    }

    /// Makes this node's disks faulty: crashes may also leave out-of-order
    /// tails (see [`SimDisk::out_of_order_tails`]).
    pub fn make_faulty(&mut self) {
        for replica in &self.replicas {
            replica.disk.borrow_mut().out_of_order_tails = true;
        }
    }

    /// Fills this node's disks, or frees them.
    pub fn set_disk_full(&mut self, full: bool) {
        for replica in &self.replicas {
            replica.disk.borrow_mut().full = full;
        }
    }

    /// Faults kept by kind and faults undone, over this node's disks.
    pub fn fault_counts(&self) -> ([u64; 4], u64) {
        let mut kinds = [0; 4];
        let mut undone = 0;
        for replica in &self.replicas {
            let disk = replica.disk.borrow();
            for (total, count) in kinds.iter_mut().zip(disk.faults) {
                *total += count;
            }
            undone += disk.faults_undone;
        }
        (kinds, undone)
    }

    /// Storage faults on a stopped node's disks (see [`SimDisk::damage`]);
    /// returns whether any disk lost entries.
    pub fn damage(&mut self, rng: &mut Rng) -> bool {
        assert!(!self.up, "damage strikes a stopped node's disk");
        let mut lost = false;
        for replica in &self.replicas {
            lost |= replica.disk.borrow_mut().damage(rng);
        }
        lost
    }

    /// The process starts again from its disks.
    pub fn restart(&mut self) {
        self.generation += 1;
        let shards = self.shards();
        for shard_id in 0..shards {
            let disk = self.replicas[shard_id as usize].disk.clone();
            if super::trace::enabled() {
                let disk = disk.borrow();
                let durable = &disk.durable;
                eprintln!(
                    "restart node {} shard {shard_id}: durable hard state {:?}, log {}..={}, snapshot {}",
                    self.id,
                    durable.hard_state(),
                    durable.first_index(),
                    durable.last_index(),
                    durable.snapshot_meta().index
                );
            }
            let shard = self.open(shard_id, shards, &disk);
            let replica = &mut self.replicas[shard_id as usize];
            replica.before.add(replica.shard.stats());
            replica.shard = shard;
            replica.installs_seen = 0;
            replica.apply_next = replica.shard.applied() + 1;
        }
        self.up = true;
    }

    /// Shard `shard`'s disk finishes up to `count` queued writes; the lazy
    /// hard state lands when `hard_state` is set.
    pub fn disk_progress(&mut self, shard: u32, count: usize, hard_state: bool, overtake: bool) {
        let mut disk = self.replicas[shard as usize].disk.borrow_mut();
        if hard_state {
            disk.finish_lazy_hard_state();
        }
        disk.complete_overtaking(count, overtake);
    }

    /// Whether shard `shard` has a restore off the driver whose outcome it
    /// has not heard of.
    pub fn restore_pending(&self, shard: u32) -> bool {
        self.replicas[shard as usize].shard.storage().restore_pending()
    }

    /// Shard `shard`'s restore off the driver reports back (the driver
    /// adopts the state at its next `process`).
    pub fn finish_restore(&mut self, shard: u32) {
        let replica = &mut self.replicas[shard as usize];
        if let Some(restored) = replica.shard.storage_mut().take_restored() {
            replica.shard.snapshot_restored(restored);
        }
    }

    /// A clean stop, as on SIGTERM: each driver answers its waiting clients
    /// and saves the hard state, then the logs close (every queued write
    /// lands). Returns what the drivers sent.
    pub fn shut_down(&mut self) -> Outbox {
        for replica in &mut self.replicas {
            if let Err(error) = run_now(replica.shard.shut_down()) {
                panic!("node {}: a clean stop failed: {error}", self.id);
            }
            replica.disk.borrow_mut().close();
        }
        self.up = false;
        self.clean_stops += 1;
        std::mem::take(&mut *self.outbox.borrow_mut())
    }

    /// A Raft message of shard `shard` arrives.
    pub fn step(&mut self, shard: u32, message: Message) {
        self.replicas[shard as usize].shard.step(message);
    }

    /// A client request arrives, from the user its client is (each client
    /// its own, so that sessions' owners are checked on every write).
    pub fn request(&mut self, request: Request) {
        let arrived = self.base + Duration::from_millis(self.clock.get());
        let replica = &mut self.replicas[request.shard as usize];
        let caller = format!("client-{}", request.waiter.client);
        replica.shard.request(request.request, &caller, request.waiter, arrived);
    }

    /// One tick of the node's timer, for every shard.
    pub fn tick(&mut self) {
        for replica in &mut self.replicas {
            replica.shard.tick();
        }
    }

    /// The drivers' pass after events: stored snapshots reported, then
    /// `process`; returns what they sent.
    pub fn process(&mut self) -> Outbox {
        for replica in &mut self.replicas {
            for done in replica.disk.borrow_mut().take_stored() {
                replica.shard.snapshot_stored(Ok(stored(done)));
            }
            for _ in 0..replica.disk.borrow_mut().take_given_up() {
                let full = wal::WalError::NoSpace { op: "storing a snapshot", path: Default::default() };
                replica.shard.snapshot_stored(Err(full));
            }
            if let Err(error) = run_now(replica.shard.process()) {
                panic!("node {}: the shard stopped: {error}", self.id);
            }
            if let Err(broken) = replica.shard.check_invariants() {
                panic!("node {}: shard invariant broken: {broken}", self.id);
            }
            if replica.collect_applied(self.id) {
                self.generation += 1;
            }
        }
        std::mem::take(&mut *self.outbox.borrow_mut())
    }

    /// Whether this node believes it leads shard `shard`.
    pub fn is_leader(&self, shard: u32) -> bool {
        self.up && self.raft(shard).role() == Role::Leader
    }

    fn counts(&self) -> Counts {
        let mut total = Counts::default();
        for replica in &self.replicas {
            let counts = replica.counts();
            total.snapshots_installed += counts.snapshots_installed;
            total.snapshots_taken += counts.snapshots_taken;
            total.forwarded_answered += counts.forwarded_answered;
            total.installs_with_reads_waiting += counts.installs_with_reads_waiting;
            total.restores_off_driver += counts.restores_off_driver;
            total.installs_while_restoring += counts.installs_while_restoring;
            total.forwards_redirected += counts.forwards_redirected;
            total.writes_grouped += counts.writes_grouped;
            total.lease_reads += counts.lease_reads;
            total.no_space += counts.no_space;
            total.appends_no_space += counts.appends_no_space;
        }
        total
    }

    /// Snapshots installed over all restarts.
    pub fn snapshots_installed(&self) -> u64 {
        self.counts().snapshots_installed
    }

    /// Requests refused and snapshot chunks dropped on a full disk, over all
    /// restarts.
    pub fn no_space(&self) -> u64 {
        self.counts().no_space
    }

    /// Appends a follower answered "no space" on a full disk, over all
    /// restarts.
    pub fn appends_no_space(&self) -> u64 {
        self.counts().appends_no_space
    }

    /// Snapshots taken locally, over all restarts.
    pub fn snapshots_taken(&self) -> u64 {
        self.counts().snapshots_taken
    }

    /// Forwarded writes answered when applied, over all restarts.
    pub fn forwarded_answered(&self) -> u64 {
        self.counts().forwarded_answered
    }

    /// Snapshots installed while reads waited, over all restarts.
    pub fn installs_with_reads_waiting(&self) -> u64 {
        self.counts().installs_with_reads_waiting
    }

    /// Snapshots restored off the driver, and snapshots installed while
    /// one was being restored, over all restarts.
    pub fn restores_off_driver(&self) -> (u64, u64) {
        let counts = self.counts();
        (counts.restores_off_driver, counts.installs_while_restoring)
    }

    /// Forwarded writes redirected by a term change, over all restarts.
    /// Writes leaders proposed in groups (several writes per entry).
    pub fn writes_grouped(&self) -> u64 {
        self.counts().writes_grouped
    }

    /// Reads leaders served under their lease, over all restarts.
    pub fn lease_reads_served(&self) -> u64 {
        self.counts().lease_reads
    }

    pub fn forwards_redirected(&self) -> u64 {
        self.counts().forwards_redirected
    }
}
