//! The driver of one shard: the one place outside the engine that turns the
//! engine's `Ready` into disk writes, messages, applies and answers.
//!
//! [`Shard`] is deterministic and generic over its storage, transport and
//! clock ([`io`]). The io_uring runtime (`crate::runtime`) runs it over the
//! WAL and TCP; the simulator in `tests/` runs the same code over a
//! simulated disk, network and clock, so what the simulator checks is what
//! users run.
//!
//! The shell feeds it events ([`Shard::step`], [`Shard::request`],
//! [`Shard::tick`], [`Shard::snapshot_stored`],
//! [`Shard::snapshot_restored`]) and then awaits
//! [`Shard::process`], which reports durability to the engine and executes
//! every `Ready`. For each `Ready` the driver, in this order: installs a
//! received snapshot; hands the entry batches to storage without waiting for
//! them; syncs the hard state when the term or vote changed; sends the
//! messages that may leave at once (the leader's appends: its own disk write
//! runs in parallel with replication); queues the messages that must wait
//! until storage reports this Ready's writes durable; applies committed
//! entries and answers the clients waiting for them; serves reads that
//! became safe; takes a snapshot when the engine asks; and hands the Ready
//! back. Durability reports (strictly in order) release the waiting messages
//! and tell the engine, which then counts the leader's own log in the commit
//! quorum.
//!
//! The code is split by concern: `requests` (client writes, reads, admin,
//! forwarding, timeouts), `ready` (Ready execution and durability),
//! `snapshots` (taking, storing, serving and installing snapshots),
//! `backup` (serving a backup of the state).

mod backup;
mod early;
pub mod io;
mod lease;
mod ready;
mod requests;
mod snapshots;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use engine::{Entry, Index, Message, NodeId, Raft, Recovered, Term};
use net::{ClientRequest, ReadConsistency, ResponseStatus};
use wal::WalError;

pub use backup::{BACKUP_CHUNK_DATA, BACKUP_CHUNK_HEAD, BACKUP_CHUNK_REPLACED};
pub use early::{RecoveringState, SnapshotOpener};
pub use io::{
    Clock, LinkReport, RestoreJob, RestoredSnapshot, ShardStorage, ShardTransport, StoredSnapshot, SystemClock,
};

use crate::app::StateMachine;
use crate::replicated::{Addresses, NodeCommand, NodeStateMachine};
use crate::stats::ShardStats;
use ready::Persistence;
use requests::Requests;
use snapshots::Snapshots;

/// A request not answered within this time gets `TimedOut` (a write may
/// still be applied: the client retries with the same sequence number).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How often waiting requests are checked for timeouts.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// What a shard needs to know about its node.
#[derive(Clone, Debug)]
pub struct ShardContext {
    pub shard_id: u32,
    /// The node's shard count: a keyed request belongs to shard
    /// `net::kv::shard_for_key(key, shards)`.
    pub shards: u32,
    pub node_id: NodeId,
    /// The core the shard runs on: its peers and clients use the node's
    /// base ports plus `core * CORE_PORT_STRIDE` (see [`crate::topology`]).
    pub core: u16,
    /// This node's base peer and client addresses (core 0).
    pub peer_addr: SocketAddr,
    pub client_addr: SocketAddr,
    pub read_consistency_default: ReadConsistency,
    /// Forward session writes that reach a follower to the leader.
    pub forward_writes: bool,
    /// Largest command accepted: a batch must fit storage's batch limit.
    pub command_bytes_max: usize,
    /// Hand leadership to the shard's preferred leader when it is healthy,
    /// so that a node's shards do not all lead from one node (on when the
    /// node runs several shards).
    pub balance_leaders: bool,
    /// Where this shard's session-opening nonces start: random per start,
    /// so an opening proposed before a crash never answers a client of the
    /// restarted node (determined by the seed in the simulator).
    pub nonce_salt: u64,
    /// Members' addresses learned outside the log (see [`LearnedAddresses`]).
    pub learned_addresses: LearnedAddresses,
    /// The history of the cluster the node's data continues (in its status,
    /// so that a joining node takes it).
    pub history: net::History,
    /// How often the driver calls [`Shard::tick`]: a lease of N ticks lasts
    /// N of these in real time (see `Shard::lease_holds_in_real_time`).
    pub tick_interval: Duration,
    /// A longer vote hold this node said before it restarted, which the
    /// shard keeps until its new word is in force ([`crate::vote_hold`]).
    pub said_hold: Option<std::sync::Arc<crate::vote_hold::SaidHold>>,
}

/// Members' addresses learned outside the log, shared by a node's shards: a
/// witness's member watch fills it (`membership::spawn_witness_watch`),
/// because a witness applies no ordinary entry and so never receives the
/// replicated address book. A shard uses it only where its book has no
/// address for a member: to send a client to the leader, and in the
/// status's member list (from which clients learn the members). Empty on
/// every other node.
pub type LearnedAddresses = std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<NodeId, Addresses>>>;

/// Why a shard stopped.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error("shard {shard}: the write-ahead log failed, the shard stopped: {source}")]
    Wal { shard: u32, source: WalError },
    #[error("shard {shard}: the state machine cannot restore a snapshot: {reason}")]
    Restore { shard: u32, reason: String },
}

/// What a shard recovers from storage at start: the engine's durable state
/// (the stored snapshot, if any, is read from storage).
pub struct RecoveredShard {
    pub recovered: Recovered,
}

/// One shard's driver; see the module documentation.
pub struct Shard<S, D, T: ShardTransport, C> {
    ctx: ShardContext,
    raft: Raft,
    fsm: NodeStateMachine<S>,
    storage: D,
    transport: T,
    clock: C,
    /// Clients waiting for writes, forwarded writes and reads.
    requests: Requests<T::Reply>,
    /// Appends on their way to the disk and the messages waiting for them.
    persist: Persistence,
    snapshots: Snapshots,
    /// Backup chunks to read from the stored snapshot at the next `process`.
    backup_reads: Vec<backup::BackupRead<T::Reply>>,
    /// The term in which this node, as leader, last announced its addresses.
    announced_term: Term,
    /// The leader this shard last knew of, for counting leader changes.
    leader_seen: NodeId,
    /// The engine's repair target as of the last Ready (see `repair_changed`).
    repair_seen: Option<Index>,
    /// `Raft::unknown_repairs` as of the last Ready.
    unknown_repairs_seen: u64,
    /// A repair to `engine::REPAIR_UNKNOWN` whose start was saved ended
    /// with the log at this index: its end is saved once that is durable
    /// (see `save_unknown_repair_end`).
    unknown_repair_end: Option<Index>,
    /// A received snapshot was dropped on a full disk since the last
    /// install (its warning is logged once per episode).
    snapshot_no_space: bool,
    /// While repairing: where it started, for `admin status`.
    repair_progress: Option<RepairProgress>,
    /// Since when this replica has known no leader, and when it last warned
    /// of that (see `note_no_leader`).
    no_leader: Option<(Instant, Option<Instant>)>,
    stats: ShardStats,
    last_sweep: Instant,
    /// Lease reads in real time, and what this node says of its votes.
    lease: lease::Lease,
    /// Where proposals' envelopes are encoded (see `encode_envelope_in`).
    envelope_arena: BytesMut,
    /// Groups of writes: what is gathered, and this node's word that it
    /// reads them.
    groups: Groups,
    /// Entries applied since the last [`Shard::take_applied`], when tracing
    /// is on (the simulator's state machine safety check).
    applied_trace: Option<Vec<Entry>>,
    /// The log's clock as this node, when leader, advances it.
    log_clock: LogClock,
    /// When this node last tried to hand leadership to the preferred leader.
    balanced_at: Option<Instant>,
    /// Whether this node's removal was logged.
    removed_reported: bool,
    /// When this node last sent its addresses to the leader.
    announced_at: Option<Instant>,
}

/// A member whose addresses in the replicated address book are not its own
/// sends them to the leader at most this often until they are.
const ANNOUNCE_RETRY: Duration = Duration::from_secs(2);

/// A new leader keeps leadership at least this long before handing it to
/// the preferred leader: after a failure and recovery the cluster settles
/// first, and a flapping preferred node never ping-pongs leadership.
const BALANCE_HOLD: Duration = Duration::from_secs(5);
/// A hand-over that did not happen is tried again after this long.
const BALANCE_RETRY: Duration = Duration::from_secs(10);
/// How long a replica goes without a leader before it says so (a new
/// cluster's members may start seconds apart).
const NO_LEADER_WARN_AFTER: Duration = Duration::from_secs(10);
/// How often it says so again while nothing changes.
const NO_LEADER_WARN_EVERY: Duration = Duration::from_secs(60);

/// How a leader advances the log's time: it proposes clock entries carrying
/// the log time it found on taking office plus the time its monotonic clock
/// has run since. Log time therefore never runs faster than the leader's
/// clock, and pauses across elections: sessions can only live longer than
/// their timeout, never shorter.
#[derive(Default)]
struct LogClock {
    /// When this node became leader, and the log time it had applied then.
    office: Option<(Instant, u64)>,
    /// When it last proposed a clock entry.
    last_proposed: Option<Instant>,
}

/// Where a repair started, for `admin status` (issue 16).
pub(crate) struct RepairProgress {
    pub(crate) since: Instant,
    /// The log's last index when the repair started: the range after it up
    /// to the target is what it fetches.
    pub(crate) start_last: Index,
    /// Snapshots installed before the repair started (a repair may be done
    /// by a snapshot).
    pub(crate) snapshots_before: u64,
}

impl RepairProgress {
    pub(crate) fn new(raft: &Raft, now: Instant, snapshots_before: u64) -> RepairProgress {
        RepairProgress { since: now, start_last: raft.last_index(), snapshots_before }
    }
}

/// Clock entries are proposed this often at most (a tenth of the session
/// timeout, when shorter): a session's idle time is measured to within it.
const CLOCK_INTERVAL_MAX: Duration = Duration::from_secs(1);
/// ... and this often at least.
const CLOCK_INTERVAL_MIN: Duration = Duration::from_millis(10);

/// Says what a shard recovered, and warns when it starts in repair.
fn log_recovered(shard: u32, raft: &Raft) {
    tracing::info!(
        shard,
        term = raft.term(),
        last_index = raft.last_index(),
        commit = raft.committed(),
        "shard recovered"
    );
    if let Some(target) = raft.repair_target() {
        tracing::warn!(
            shard,
            last_index = raft.last_index(),
            acknowledged = target,
            "the log lacks entries this replica may have acknowledged: it votes again once a leader resent them"
        );
    }
}

impl<S, D, T, C> Shard<S, D, T, C>
where
    S: StateMachine,
    D: ShardStorage,
    T: ShardTransport,
    C: Clock,
{
    /// Rebuilds the engine and the state machine from what storage recovered
    /// and returns the driver, ready for events. `state` is a fresh state
    /// machine, or one that applied the committed log as recovery read it
    /// ([`RecoveringState`]), which the driver adopts if recovery did not
    /// tell it to discard that.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        ctx: ShardContext,
        engine_config: engine::Config,
        recovered: RecoveredShard,
        state: RecoveringState<S>,
        storage: D,
        transport: T,
        clock: C,
    ) -> Result<Self, ShardError> {
        let shard = ctx.shard_id;
        let nonce_salt = ctx.nonce_salt;
        let snapshot = recovered.recovered.snapshot.clone();
        let log_start = snapshot.as_ref().map_or(0, |meta| meta.index) + 1;
        let (fsm, applied_early) = state.into_start(log_start - 1, recovered.recovered.applied);
        let raft = Raft::new(engine_config, recovered.recovered)
            .map_err(|error| ShardError::Restore { shard, reason: error.0 })?;
        log_recovered(shard, &raft);
        let now = clock.now();
        let repair_seen = raft.repair_target();
        let repair_progress = repair_seen.map(|_| RepairProgress::new(&raft, now, 0));
        let mut driver = Shard {
            ctx,
            raft,
            fsm,
            storage,
            transport,
            clock,
            requests: Requests::new(nonce_salt),
            persist: Persistence::default(),
            snapshots: Snapshots::new(None),
            backup_reads: Vec::new(),
            announced_term: 0,
            leader_seen: engine::NODE_NONE,
            repair_seen,
            unknown_repairs_seen: 0,
            unknown_repair_end: None,
            repair_progress,
            no_leader: None,
            snapshot_no_space: false,
            stats: ShardStats::new(now),
            last_sweep: now,
            lease: lease::Lease::default(),
            envelope_arena: BytesMut::new(),
            groups: Groups::default(),
            applied_trace: None,
            log_clock: LogClock::default(),
            balanced_at: None,
            removed_reported: false,
            announced_at: None,
        };
        match applied_early {
            Err(discarded) => driver.restore_and_apply(snapshot, discarded)?,
            Ok(applied) => driver.adopt_applied_early(snapshot, applied),
        }
        driver.links_from_address_book();
        Ok(driver)
    }

    /// The start from a fresh state machine: restores the stored snapshot
    /// and applies the committed log after it (the payloads recovery
    /// dropped read again). `discarded` counts the entries a
    /// [`RecoveringState`] applied in vain.
    fn restore_and_apply(&mut self, snapshot: Option<engine::SnapshotMeta>, discarded: u64) -> Result<(), ShardError> {
        if discarded > 0 {
            self.stats.recovered_discarded = discarded;
            tracing::info!(
                shard = self.ctx.shard_id,
                discarded,
                "the entries applied while the log was read are discarded (a later record replaced one, \
                 or the replica repairs): starting again from the snapshot"
            );
        }
        let log_start = snapshot.as_ref().map_or(0, |meta| meta.index) + 1;
        // The state machine streams the stored snapshot from its file.
        if let Some(meta) = snapshot {
            let size = self.restore_stored(&meta)?;
            self.raft.snapshot_created(meta.clone(), size);
            self.fsm.note_members(&meta.conf.members());
            self.snapshots = Snapshots::new(Some((meta, size)));
        }
        self.raise_vote_hold();
        self.apply_recovered(log_start)
    }

    /// Takes over a state machine that applied the committed log while
    /// recovery read it ([`RecoveringState`]): what applying an entry does
    /// besides the state machine (the vote hold's notes, removals, the
    /// reports) is done here, from the final state, as the shard's own
    /// applies would have left it.
    fn adopt_applied_early(&mut self, snapshot: Option<engine::SnapshotMeta>, applied: early::AppliedStart) {
        if let (Some(meta), Some(size)) = (snapshot, applied.snapshot_size) {
            if let Some(took) = applied.restore_took {
                self.stats.snapshot_restore.record(took);
            }
            self.raft.snapshot_created(meta.clone(), size);
            self.snapshots = Snapshots::new(Some((meta, size)));
        }
        self.raise_vote_hold();
        for &(index, term) in &applied.term_starts {
            self.note_applied_term(index, term);
        }
        if applied.configs {
            self.removals_to_transport();
            self.warn_if_witness_counted_as_full();
            self.report_if_removed();
        }
        self.stats.recovered_early = applied.count;
        tracing::info!(
            shard = self.ctx.shard_id,
            entries = applied.count,
            to = self.raft.applied(),
            took = ?applied.took,
            "applied the committed log while reading it (the log read once)"
        );
    }

    /// Tells the transport every address the replicated address book holds
    /// (after a snapshot replaced the state machine: its entries are not
    /// applied one by one).
    pub(crate) fn links_from_address_book(&mut self) {
        let book: Vec<(NodeId, crate::replicated::Addresses)> =
            self.fsm.address_book().iter().map(|(id, addresses)| (*id, addresses.clone())).collect();
        for (id, addresses) in book {
            if !self.fsm.is_removed(id)
                && addresses.peer.as_deref().is_some_and(|peer| peer.parse::<SocketAddr>().is_ok())
            {
                self.transport.member_addresses(id, &addresses);
            }
        }
        self.removals_to_transport();
    }

    /// Tells the transport every removed node that the committed
    /// configuration leaves out (a removal is recorded when its joint
    /// configuration is entered, while the node may still count in the
    /// outgoing half; it is final once a committed configuration leaves it
    /// out). Idempotent: called after each configuration entry applied and
    /// after a snapshot replaced the state machine.
    pub(crate) fn removals_to_transport(&mut self) {
        let conf = self.raft.committed_conf().members();
        let gone: Vec<NodeId> = self.fsm.removed().iter().copied().filter(|id| !conf.contains(id)).collect();
        for id in gone {
            self.transport.member_removed(id);
        }
    }

    /// A Raft message from a peer.
    pub fn step(&mut self, message: Message) {
        self.note_disk_space();
        if let Err(ignored) = self.raft.step(message) {
            tracing::trace!(shard = self.ctx.shard_id, %ignored);
        }
    }

    /// A client request from `caller` (the user of its connection's
    /// identity, or [`crate::session::LOCAL_CALLER`] for the node's own
    /// callers: it owns the sessions it opens); `arrived` is when its
    /// connection decoded it (the start of its latency stages).
    pub fn request(&mut self, request: ClientRequest, caller: &str, reply: T::Reply, arrived: Instant) {
        self.handle_request(request, caller, reply, arrived);
    }

    /// One tick of logical time: the engine's timers, and every second the
    /// requests that waited too long; also saves a commit-only hard state
    /// (at most once a tick).
    pub fn tick(&mut self) {
        self.raft.tick();
        let now = self.clock.now();
        self.note_tick_time(now);
        if now.saturating_duration_since(self.last_sweep) >= SWEEP_INTERVAL {
            self.last_sweep = now;
            self.sweep_timeouts(now);
        }
        if let Some(hard_state) = self.persist.hard_state_pending.take() {
            self.storage.save_commit(hard_state);
        }
        self.advance_log_clock(now);
        self.note_disk_space();
        self.note_peers_disk_space();
        // Copied once a tick for the statistics, not after every message.
        self.stats.appends_no_space = self.raft.appends_refused_no_space();
        self.stats.appends_refused_applying = self.raft.appends_refused_applying();
        self.balance_leadership(now);
        self.announce_addresses(now);
        self.announce_features(now);
        self.announce_votes_held(now);
        self.release_vote_hold();
        self.note_short_vote_hold();
        self.note_no_leader(now);
    }

    /// Warns (after [`NO_LEADER_WARN_AFTER`] with no leader, then at most
    /// once per [`NO_LEADER_WARN_EVERY`]) while this replica knows no
    /// leader. Before, a survivor of a lost majority logged one `role
    /// changed` line and nothing more. The peer links say which members
    /// cannot be reached (`cannot reach the peer`).
    ///
    /// When this replica withholds its vote, it says why (see
    /// `engine::Raft::past_unknown`). It started with an empty log, so it
    /// cannot know what it acknowledged before: either it still waits for
    /// every other voter of its configuration to ask for a vote with an
    /// empty log (a new cluster; `votes_wait_for` names them), or it heard
    /// a history and votes only once a leader has caught it up. Its
    /// configuration is the starting one (`--peers`); a member listed there
    /// that has left the cluster never asks, and a group that needs this
    /// vote then has no leader until the node is restarted with the current
    /// members.
    fn note_no_leader(&mut self, now: Instant) {
        if self.raft.leader() != engine::NODE_NONE {
            self.no_leader = None;
            return;
        }
        let (since, warned) = self.no_leader.get_or_insert((now, None));
        let due = warned.is_none_or(|at| now.saturating_duration_since(at) >= NO_LEADER_WARN_EVERY);
        let without = now.saturating_duration_since(*since);
        if without < NO_LEADER_WARN_AFTER || !due {
            return;
        }
        *warned = Some(now);
        let waiting = self.raft.votes_wait_for();
        let voters = &self.raft.conf().voters;
        if !waiting.is_empty() {
            tracing::warn!(
                shard = self.ctx.shard_id,
                waiting_for = ?waiting,
                ?voters,
                "no leader, and this replica withholds its vote: it started with an empty log (a new cluster, or a \
                 wiped data directory) and votes only once every other voter of its configuration has asked for a \
                 vote with an empty log, so a new cluster elects its first leader once all its nodes have started; \
                 start those members; if they have left the cluster, restart this node with the current members in \
                 --peers"
            );
        } else if self.raft.past_unknown() {
            tracing::warn!(
                shard = self.ctx.shard_id,
                ?voters,
                "no leader, and this replica withholds its vote: it started with an empty log in a cluster that has \
                 data (a wiped data directory?), so it cannot know what it acknowledged before, and it votes only \
                 once a leader has caught it up (in a group of two voters, for the other one): the other voters \
                 must elect a leader without it. If its --peers are not the cluster's current members, restart it \
                 with the current members in --peers"
            );
        } else {
            tracing::warn!(
                shard = self.ctx.shard_id,
                term = self.raft.term(),
                role = ?self.raft.role(),
                ?voters,
                "no leader for {}s: a majority of the voters must be up and reach each other (the peer links say \
                 which members this node cannot reach)",
                without.as_secs()
            );
        }
    }

    /// Says, through the leader, what this node's build reads (groups of
    /// writes, sessions with owners: see `replicated`): once in each term
    /// with a leader, since a new leader may not have applied the earlier
    /// word (it is kept in no snapshot), and again while this node has not
    /// applied its own.
    fn announce_features(&mut self, now: Instant) {
        use crate::replicated::{NodeCommand, FEATURES};
        let me = self.ctx.node_id;
        let term = self.raft.term();
        if !self.may_announce(self.groups.announced_at, now)
            || (self.groups.announced_term == term && self.fsm.reads(me, FEATURES))
        {
            return;
        }
        match self.raft.forward_proposal(NodeCommand::Features { id: me, features: FEATURES }.encode()) {
            Ok(()) => {
                self.groups.announced_term = term;
                self.groups.announced_at = Some(now);
            }
            Err(error) => tracing::debug!(shard = self.ctx.shard_id, %error, "features not announced"),
        }
    }

    /// Whether this node may send an announcement about itself through the
    /// leader now: it [may speak](Self::may_speak), and it is a member that
    /// applies payloads (a witness's announcements of its addresses or
    /// features would change nothing).
    fn may_announce(&self, last: Option<Instant>, now: Instant) -> bool {
        !self.raft.is_witness() && self.raft.conf().members().contains(&self.ctx.node_id) && self.may_speak(last, now)
    }

    /// What every announcement about this node needs, whoever may make it:
    /// a leader is known to forward it to, this node is not removed, and
    /// its last announcement of this kind (sent at `last`) is at least
    /// [`ANNOUNCE_RETRY`] old.
    fn may_speak(&self, last: Option<Instant>, now: Instant) -> bool {
        self.raft.leader() != engine::NODE_NONE
            && !self.fsm.is_removed(self.ctx.node_id)
            && last.is_none_or(|at| now.saturating_duration_since(at) >= ANNOUNCE_RETRY)
    }

    /// A member whose replicated addresses are missing or not its own (it
    /// never led, or restarted on a new address) sends them through the
    /// leader, so that every member and client learns where it is.
    fn announce_addresses(&mut self, now: Instant) {
        let me = self.ctx.node_id;
        if !self.may_announce(self.announced_at, now) {
            return;
        }
        let peer = self.ctx.peer_addr.to_string();
        let client = self.ctx.client_addr.to_string();
        let known = self.fsm.addresses(me);
        if known.is_some_and(|known| known.peer.as_deref() == Some(&peer) && known.client.as_deref() == Some(&client)) {
            return;
        }
        self.announced_at = Some(now);
        let set = crate::replicated::SetAddresses { id: me, peer: Some(peer), client: Some(client) };
        if let Err(error) = self.raft.forward_proposal(set.encode()) {
            tracing::debug!(shard = self.ctx.shard_id, %error, "address announcement not sent");
        }
    }

    /// A node run as a witness (`--witness`) that the configuration lists
    /// as a full voter (made one by `add-learner` and `promote` instead of
    /// `add-witness`): the leader would count its acknowledgements as a
    /// full replica's though it keeps no payloads, so the engine withholds
    /// them ([`engine::Raft::witness_counted_as_full`]): for commits the
    /// cluster then has one voter fewer. The cluster cannot tell; this node
    /// says so.
    fn warn_if_witness_counted_as_full(&self) {
        if self.raft.witness_counted_as_full() {
            tracing::error!(
                shard = self.ctx.shard_id,
                node = self.ctx.node_id,
                "this node runs as a witness (no payloads), but the configuration counts it as a full voter: \
                 it acknowledges no entry (so no commit rests on it, and the group commits only on its full \
                 replicas); remove it (`node admin remove`) and add it with `node admin add-witness`"
            );
        }
    }

    /// The node that should lead this shard when it is up: the full voters
    /// (witnesses never lead) in id order, shard `s` preferring the
    /// `s mod n`-th. Every node computes the same from the replicated
    /// configuration, so leaders spread evenly over the full voters (for as
    /// many shards as voters, one each) with no coordination between shards.
    pub fn preferred_leader(&self) -> Option<NodeId> {
        let conf = self.raft.conf();
        let voters: Vec<NodeId> = conf.voters.iter().copied().filter(|&id| !conf.is_witness(id)).collect();
        (!voters.is_empty()).then(|| voters[self.ctx.shard_id as usize % voters.len()])
    }

    /// As a leader that is not the preferred one, hands leadership to the
    /// preferred leader once it has led for [`BALANCE_HOLD`] and the
    /// preferred node is active and holds the whole log (at most one try
    /// per [`BALANCE_RETRY`]).
    fn balance_leadership(&mut self, now: Instant) {
        if !self.ctx.balance_leaders || self.raft.role() != engine::Role::Leader {
            return;
        }
        let Some(preferred) = self.preferred_leader().filter(|&id| id != self.ctx.node_id) else { return };
        let Some((since, _)) = self.log_clock.office else { return };
        if now.saturating_duration_since(since) < BALANCE_HOLD
            || self.balanced_at.is_some_and(|at| now.saturating_duration_since(at) < BALANCE_RETRY)
        {
            return;
        }
        let last = self.raft.last_index();
        let ready = self.raft.status().progress.iter().any(|peer| {
            peer.id == preferred
                && !peer.learner
                && !peer.witness
                && !peer.no_space
                && peer.recent_active
                && peer.match_index == last
        });
        if ready {
            self.balanced_at = Some(now);
            tracing::info!(shard = self.ctx.shard_id, to = preferred, "handing leadership to the preferred leader");
            if let Err(error) = self.raft.transfer_leader(preferred) {
                tracing::debug!(shard = self.ctx.shard_id, %error, "leadership hand-over refused");
            }
        }
    }

    /// As leader, proposes a clock entry when sessions exist (only they need
    /// time) and the last one is an interval old.
    fn advance_log_clock(&mut self, now: Instant) {
        let Some((since, base)) = self.log_clock.office else { return };
        let sessions = self.fsm.sessions();
        if sessions.is_empty() {
            return;
        }
        let interval =
            Duration::from_millis(sessions.settings().timeout_ms / 10).clamp(CLOCK_INTERVAL_MIN, CLOCK_INTERVAL_MAX);
        if self.log_clock.last_proposed.is_some_and(|last| now.saturating_duration_since(last) < interval) {
            return;
        }
        let millis = base + now.saturating_duration_since(since).as_millis() as u64;
        if self.raft.propose(NodeCommand::Clock { millis }.encode()).is_ok() {
            self.log_clock.last_proposed = Some(now);
        }
    }

    /// Leadership changed: a new leader's log clock starts from the log time
    /// it has applied.
    fn log_clock_on_role(&mut self, leader: bool) {
        self.log_clock = LogClock::default();
        if leader {
            self.log_clock.office = Some((self.clock.now(), self.fsm.sessions().time()));
        }
    }

    /// The sequence of the oldest append not yet durable, for a shell that
    /// waits for storage's progress.
    pub fn oldest_pending_append(&self) -> Option<u64> {
        self.persist.oldest_pending()
    }

    /// Answers every waiting client with `TimedOut` (their writes may still
    /// be applied; a retry with the same sequence takes effect once), for a
    /// shell that stops the shard.
    pub fn abandon_requests(&mut self) {
        for reply in self.requests.drain_all() {
            self.transport.reply(reply, ResponseStatus::TimedOut);
        }
    }

    /// The clean stop: answers every waiting client (`TimedOut`) and saves
    /// the hard state, its commit index no further than what this node's
    /// log holds durably (a commit index beyond the durable log would be
    /// wrong after a crash before the log closes). The shell then closes the
    /// log, which waits for the appends still on their way.
    pub async fn shut_down(&mut self) -> Result<(), ShardError> {
        self.abandon_requests();
        let mut hard_state = self.raft.hard_state();
        hard_state.commit = hard_state.commit.min(self.raft.persisted_index());
        self.storage.save_hard_state(hard_state).await.map_err(|source| self.storage_error(source))
    }

    pub fn context(&self) -> &ShardContext {
        &self.ctx
    }

    /// The engine, read-only (status, tests and the simulator's checks).
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// The engine, for admin calls a test makes directly (leader transfer,
    /// membership changes).
    pub fn raft_mut(&mut self) -> &mut Raft {
        &mut self.raft
    }

    pub fn state_machine(&self) -> &NodeStateMachine<S> {
        &self.fsm
    }

    pub fn stats(&self) -> &ShardStats {
        &self.stats
    }

    pub fn storage(&self) -> &D {
        &self.storage
    }

    pub fn storage_mut(&mut self) -> &mut D {
        &mut self.storage
    }

    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.transport
    }

    /// Records every applied entry until [`Shard::take_applied`] collects
    /// them (the simulator compares what every replica applied).
    pub fn trace_applied(&mut self) {
        self.applied_trace.get_or_insert_with(Vec::new);
    }

    /// The entries applied since the last call, when tracing is on.
    pub fn take_applied(&mut self) -> Vec<Entry> {
        self.applied_trace.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Checks the driver's invariants; returns the first broken one. The
    /// simulator calls it after every event, debug builds after every
    /// `process`.
    pub fn check_invariants(&self) -> Result<(), String> {
        let applied = self.fsm.applied();
        let committed = self.raft.committed();
        if applied > committed {
            return Err(format!("applied {applied} is beyond committed {committed}"));
        }
        self.requests.check_invariants(applied)?;
        self.fsm.check_invariants()?;
        self.persist.check_invariants(self.storage.durable_sequence())?;
        self.snapshots.check_invariants(applied, self.raft.apply_held())?;
        Ok(())
    }

    /// The last index applied to the state machine.
    pub fn applied(&self) -> Index {
        self.fsm.applied()
    }
}

/// A shard's groups of writes (see `replicated`).
#[derive(Default)]
struct Groups {
    /// The writes gathered as leader since the last proposal (their clients
    /// wait in `requests.gathered`).
    builder: crate::replicated::GroupBuilder,
    /// The term in which this node last said its build reads groups, and
    /// when.
    announced_term: engine::Term,
    announced_at: Option<Instant>,
}
