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
use node::shard::{Clock, RecoveredShard, Shard, ShardContext, ShardTransport};
use node::KvStateMachine;

use super::disk::{stored, SimDisk, SimStorage};

/// Who waits for an answer: a client, and which attempt of which of its
/// operations.
#[derive(Clone, Copy, Debug)]
pub struct Waiter {
    pub client: usize,
    pub operation: u64,
    pub attempt: u32,
}

/// A client request as it travels to a node.
#[derive(Clone, Debug)]
pub struct Request {
    pub waiter: Waiter,
    pub request: ClientRequest,
}

/// A node's answer as it travels to a client.
#[derive(Clone, Debug)]
pub struct Response {
    pub waiter: Waiter,
    pub status: ResponseStatus,
}

/// What the driver sent since the world last collected it.
#[derive(Default)]
pub struct Outbox {
    pub messages: Vec<Message>,
    pub responses: Vec<Response>,
}

/// The driver's transport: everything goes to the outbox, and the world
/// puts it on the simulated network.
pub struct SimTransport {
    outbox: Rc<RefCell<Outbox>>,
}

impl ShardTransport for SimTransport {
    type Reply = Waiter;

    fn send(&mut self, message: Message) {
        self.outbox.borrow_mut().messages.push(message);
    }

    fn reply(&mut self, waiter: Waiter, status: ResponseStatus) {
        self.outbox.borrow_mut().responses.push(Response { waiter, status });
    }

    fn member_addresses(&mut self, _: NodeId, _: &Addresses) {}
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

pub type SimShard = Shard<KvStateMachine, SimStorage, SimTransport, SimClock>;

/// Runs a future of the driver to completion. The simulated storage never
/// makes the driver wait, so one poll finishes it.
pub fn run_now<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    match future.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("the simulated storage never makes the driver wait"),
    }
}

/// A replica. After a crash only the disk's durable state and the
/// configuration survive; [`SimNode::restart`] rebuilds the driver from them.
pub struct SimNode {
    pub id: NodeId,
    pub config: Config,
    pub up: bool,
    /// The driver; after a crash, the dead process's (its engine is still
    /// checked against the others, as it was at the crash).
    pub shard: SimShard,
    pub disk: Rc<RefCell<SimDisk>>,
    outbox: Rc<RefCell<Outbox>>,
    clock: Rc<Cell<u64>>,
    base: Instant,
    /// The node's `--forward-writes`.
    pub forward_writes: bool,
    /// Entries applied since the observer last looked, for state machine
    /// safety; and the index the next applied entry must have.
    pub applied_unchecked: Vec<Entry>,
    apply_next: engine::Index,
    /// Snapshots installed by the current driver when the observer last
    /// looked (an install moves the next applied index).
    installs_seen: u64,
    /// Incremented whenever the state machine is replaced wholesale (restart,
    /// snapshot install).
    pub generation: u64,
    /// Snapshots received from a leader and installed, and forwarded writes
    /// answered when applied, by the drivers that ended (crashes).
    snapshots_installed_before: u64,
    forwarded_answered_before: u64,
    installs_with_reads_waiting_before: u64,
    forwards_redirected_before: u64,
    /// Clean stops (with clients waiting or not).
    pub clean_stops: u64,
}

fn shard_context(id: NodeId, forward_writes: bool, nonce_salt: u64) -> ShardContext {
    let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
    ShardContext {
        shard_id: 0,
        shards: 1,
        node_id: id,
        core: 0,
        peer_addr: SocketAddr::new(ip, 10_000 + id as u16),
        client_addr: SocketAddr::new(ip, 20_000 + id as u16),
        read_consistency_default: ReadConsistency::Linearizable,
        forward_writes,
        command_bytes_max: 1 << 20,
        balance_leaders: false,
        nonce_salt,
    }
}

impl SimNode {
    pub fn new(config: Config, clock: Rc<Cell<u64>>, base: Instant, forward_writes: bool) -> SimNode {
        let disk = Rc::new(RefCell::new(SimDisk::default()));
        let outbox = Rc::new(RefCell::new(Outbox::default()));
        let shard = SimNode::open(&config, &disk, &outbox, &clock, base, forward_writes, 0);
        SimNode {
            id: config.id,
            config,
            up: true,
            shard,
            disk,
            outbox,
            clock,
            base,
            forward_writes,
            applied_unchecked: Vec::new(),
            apply_next: 1,
            installs_seen: 0,
            generation: 0,
            snapshots_installed_before: 0,
            forwarded_answered_before: 0,
            installs_with_reads_waiting_before: 0,
            forwards_redirected_before: 0,
            clean_stops: 0,
        }
    }

    /// A driver over what the disk holds durably, as the node's start does.
    fn open(
        config: &Config,
        disk: &Rc<RefCell<SimDisk>>,
        outbox: &Rc<RefCell<Outbox>>,
        clock: &Rc<Cell<u64>>,
        base: Instant,
        forward_writes: bool,
        generation: u64,
    ) -> SimShard {
        let (recovered, snapshot) = {
            let disk = disk.borrow();
            let meta = disk.durable.snapshot_meta().clone();
            let snapshot = (meta.index > 0).then(|| (meta, disk.durable.snapshot_data().clone()));
            (disk.durable.recovered(), snapshot)
        };
        let mut shard = Shard::new(
            // Each start of the node its own nonces, as the real node's
            // random salt gives it.
            shard_context(config.id, forward_writes, config.seed.rotate_left(17) ^ generation << 48),
            config.clone(),
            RecoveredShard { recovered, snapshot },
            KvStateMachine::default(),
            SimStorage::new(disk.clone(), config.id),
            SimTransport { outbox: outbox.clone() },
            SimClock { base, now: clock.clone() },
        )
        .expect("a simulated disk always recovers");
        shard.trace_applied();
        shard
    }

    /// The process dies: memory is lost, the disk keeps what was durable
    /// (and maybe a torn prefix of what was not).
    pub fn crash(&mut self, rng: &mut Rng) {
        self.up = false;
        self.disk.borrow_mut().crash(rng);
        let mut outbox = self.outbox.borrow_mut();
        outbox.messages.clear();
        outbox.responses.clear();
    }

    /// The process starts again from its disk.
    pub fn restart(&mut self) {
        if std::env::var_os("SIM_TRACE").is_some() {
            let disk = self.disk.borrow();
            let durable = &disk.durable;
            eprintln!(
                "restart node {}: durable hard state {:?}, log {}..={}, snapshot {}",
                self.id,
                durable.hard_state(),
                durable.first_index(),
                durable.last_index(),
                durable.snapshot_meta().index
            );
        }
        let stats = self.shard.stats();
        self.snapshots_installed_before += stats.snapshots_installed;
        self.forwarded_answered_before += stats.forwarded_answered;
        self.installs_with_reads_waiting_before += stats.installs_with_reads_waiting;
        self.forwards_redirected_before += stats.forwards_redirected;
        self.generation += 1;
        let generation = self.generation;
        self.shard = SimNode::open(
            &self.config,
            &self.disk,
            &self.outbox,
            &self.clock,
            self.base,
            self.forward_writes,
            generation,
        );
        self.up = true;
        self.installs_seen = 0;
        self.apply_next = self.shard.applied() + 1;
    }

    /// The disk finishes up to `count` queued writes; the lazy hard state
    /// lands when `hard_state` is set.
    pub fn disk_progress(&mut self, count: usize, hard_state: bool, overtake: bool) {
        let mut disk = self.disk.borrow_mut();
        if hard_state {
            disk.finish_lazy_hard_state();
        }
        disk.complete_overtaking(count, overtake);
    }

    /// A clean stop, as on SIGTERM: the driver answers its waiting clients
    /// and saves the hard state, then the log closes (every queued write
    /// lands). Returns what the driver sent.
    pub fn shut_down(&mut self) -> Outbox {
        if let Err(error) = run_now(self.shard.shut_down()) {
            panic!("node {}: a clean stop failed: {error}", self.id);
        }
        self.disk.borrow_mut().close();
        self.up = false;
        self.clean_stops += 1;
        std::mem::take(&mut *self.outbox.borrow_mut())
    }

    /// A Raft message arrives.
    pub fn step(&mut self, message: Message) {
        self.shard.step(message);
    }

    /// A client request arrives.
    pub fn request(&mut self, request: Request) {
        let arrived = self.shard_now();
        self.shard.request(request.request, request.waiter, arrived);
    }

    fn shard_now(&self) -> Instant {
        self.base + Duration::from_millis(self.clock.get())
    }

    /// One tick of the node's timer.
    pub fn tick(&mut self) {
        self.shard.tick();
    }

    /// The driver's pass after events: stored snapshots reported, then
    /// `process`; returns what it sent.
    pub fn process(&mut self) -> Outbox {
        for done in self.disk.borrow_mut().take_stored() {
            self.shard.snapshot_stored(Ok(stored(done)));
        }
        if let Err(error) = run_now(self.shard.process()) {
            panic!("node {}: the shard stopped: {error}", self.id);
        }
        if let Err(broken) = self.shard.check_invariants() {
            panic!("node {}: shard invariant broken: {broken}", self.id);
        }
        self.collect_applied();
        std::mem::take(&mut *self.outbox.borrow_mut())
    }

    /// Moves the entries the driver applied to `applied_unchecked`, checking
    /// that they follow each other (or follow an installed snapshot).
    fn collect_applied(&mut self) {
        let installs = self.shard.stats().snapshots_installed;
        if installs != self.installs_seen {
            self.installs_seen = installs;
            self.generation += 1;
            self.apply_next = self.shard.raft().snapshot().index + 1;
            // Entries applied before the install in this pass are checked
            // against the others but not for contiguity.
            let applied = self.shard.take_applied();
            let after: Vec<&Entry> = applied.iter().filter(|entry| entry.index >= self.apply_next).collect();
            for entry in after {
                assert_eq!(entry.index, self.apply_next, "node {} applies out of order", self.id);
                self.apply_next += 1;
            }
            self.applied_unchecked.extend(applied);
            return;
        }
        for entry in self.shard.take_applied() {
            assert_eq!(entry.index, self.apply_next, "node {} applies out of order", self.id);
            self.apply_next = entry.index + 1;
            self.applied_unchecked.push(entry);
        }
    }

    /// Whether this node believes it leads.
    pub fn is_leader(&self) -> bool {
        self.up && self.shard.raft().role() == Role::Leader
    }

    /// Snapshots installed over all restarts.
    pub fn snapshots_installed(&self) -> u64 {
        self.snapshots_installed_before + self.shard.stats().snapshots_installed
    }

    /// Forwarded writes answered when applied, over all restarts.
    pub fn forwarded_answered(&self) -> u64 {
        self.forwarded_answered_before + self.shard.stats().forwarded_answered
    }

    /// Snapshots installed while reads waited, over all restarts.
    pub fn installs_with_reads_waiting(&self) -> u64 {
        self.installs_with_reads_waiting_before + self.shard.stats().installs_with_reads_waiting
    }

    /// Forwarded writes redirected by a term change, over all restarts.
    pub fn forwards_redirected(&self) -> u64 {
        self.forwards_redirected_before + self.shard.stats().forwards_redirected
    }
}
