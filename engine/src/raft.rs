//! The Raft state machine: a value the shell drives with `tick`, `step`,
//! `propose`, `read_index` and `transfer_leader`, then drains with `ready` and
//! hands back with `advance`.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;

use crate::batch::EntryBatch;
use crate::config::{Config, ConfigError, Rng};
use crate::log::RaftLog;
use crate::membership::{ConfChange, ConfChangeOp};
use crate::message::{AppendRequest, AppendResponse, Message, MessageBody, VoteRequest};
use crate::progress::{Progress, ProgressState};
use crate::storage::Recovered;
use crate::types::{ConfState, Entry, EntryKind, HardState, Index, NodeId, SnapshotMeta, Term, NODE_NONE};

mod learner;
mod no_space;
mod snapshot;
pub use learner::LEARNER_PATIENCE_ROUNDS;
pub use snapshot::{SnapshotRead, SnapshotWrite, SNAPSHOT_RETRY_TICKS_MAX, SNAPSHOT_RETRY_TICKS_MIN};

/// A node's role in its current term.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Follower,
    /// Collecting pre-votes, term unchanged (Raft thesis 9.6).
    PreCandidate,
    Candidate,
    Leader,
}

/// How a read is made linearizable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadMode {
    /// ReadIndex (Raft thesis 6.4): the leader confirms with one heartbeat
    /// round that it still leads, then the read is served at the commit index
    /// it had when the read arrived.
    ReadIndex,
    /// Lease read (Raft thesis 6.4.1): served at once while the leader's lease
    /// holds, relying on bounded clock drift (see `Config::lease_drift_ticks`).
    /// Falls back to ReadIndex when the lease has lapsed.
    Lease,
}

/// A read that is now safe: serve it from the state machine once it has
/// applied `index`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadState {
    pub context: u64,
    pub index: Index,
}

/// Why a proposal (or admin request) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    #[error("not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<NodeId> },
    #[error("leadership is being transferred to {target}")]
    TransferInProgress { target: NodeId },
    #[error("too many uncommitted bytes ({uncommitted} of at most {limit}); retry later")]
    Busy { uncommitted: usize, limit: usize },
    #[error("too many reads waiting for the leader ({pending} of at most {limit}); retry later")]
    TooManyReads { pending: usize, limit: usize },
    #[error("node {0} is not a voter")]
    NotVoter(NodeId),
    #[error("a membership change is already in progress (at index {0})")]
    ChangeInProgress(Index),
    #[error("invalid membership change: {0}")]
    InvalidChange(String),
}

/// Why a message was ignored. Ignoring is normal operation (stale terms,
/// duplicates, reordered answers); the reason helps logs and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("message ignored: {0}")]
pub struct Ignored(pub &'static str);

/// Role and leader, for the shell to see changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SoftState {
    pub role: Role,
    pub leader: NodeId,
}

/// The work the shell must do, in this order: persist `hard_state` and
/// `entries`; send `messages` at once (they may leave before the local write
/// is durable — this is how the leader writes its disk in parallel with
/// replication); send `messages_after_persist` only after `hard_state` and
/// `entries` are durable; apply `committed_entries`; serve `read_states`;
/// then call `advance`. A Ready's hard state must be durable no later than
/// its entries are reported durable ([`Raft::persisted`]): a leader elected
/// by its own vote counts its term durable from then on.
#[derive(Debug, Default)]
pub struct Ready {
    /// The hard state to persist, if it changed.
    pub hard_state: Option<HardState>,
    /// Whether the term or vote changed (not just the commit index): the hard
    /// state must then be synced before `messages_after_persist` leave; a
    /// commit-only change may be written lazily.
    pub hard_state_must_sync: bool,
    /// Batches to append, in order. A batch whose first index is at or below
    /// the stored last index replaces the stored suffix from that index.
    pub entries: Vec<EntryBatch>,
    pub messages: Vec<Message>,
    pub messages_after_persist: Vec<Message>,
    /// Entries to apply, in index order. On a witness ([`Raft::is_witness`])
    /// only the configuration entries among them, for the shell to log: a
    /// witness runs no state machine (its normal entries have no payload)
    /// and its applied index advances without one. A witness's
    /// `snapshot_due` asks for a snapshot with an empty image.
    pub committed_entries: Vec<Entry>,
    pub read_states: Vec<ReadState>,
    /// Read contexts that cannot be served here (leadership lost, no leader):
    /// the shell answers their clients with an error so they retry.
    pub dropped_reads: Vec<u64>,
    /// Set when the role or the known leader changed.
    pub soft_state: Option<SoftState>,
    /// A snapshot finished arriving from the leader: before anything else in
    /// this Ready, the shell installs it in storage (entries it covers are
    /// dropped, later ones kept only if they agree) and restores the state
    /// machine from it. Such a Ready carries no `committed_entries`: a
    /// shell that restores in the background holds them back first
    /// ([`Raft::hold_apply`]).
    pub snapshot_install: Option<SnapshotMeta>,
    /// Chunks of an incoming snapshot to write, in order (offset 0 starts a
    /// new one). They are durable writes like `entries`.
    pub snapshot_writes: Vec<SnapshotWrite>,
    /// Chunks of the local snapshot to read and hand back with
    /// [`Raft::snapshot_chunk`], for followers that need it.
    pub snapshot_reads: Vec<SnapshotRead>,
    /// Time for a snapshot: take one of the state machine at the applied
    /// index and report it with [`Raft::snapshot_created`].
    pub snapshot_due: bool,
    /// Storage may drop entries up to and including this index.
    pub compact_to: Option<Index>,
}

impl Ready {
    /// The index and term of the last entry this Ready asks to persist, for
    /// reporting durability back with [`Raft::persisted`].
    pub fn last_entry(&self) -> Option<(Index, Term)> {
        self.entries.last().map(|batch| (batch.last_index(), batch.last_term()))
    }
}

/// Which followers `Raft::send_commit` tells of a commit advance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CommitTo {
    /// Only one that waits for it (it forwarded a command the advance
    /// covers): in every Ready.
    Awaited,
    /// Any caught-up follower not told yet: at a tick.
    Owed,
}

/// A leader's pending ReadIndex request.
#[derive(Clone, Copy, Debug)]
struct PendingRead {
    /// The heartbeat round that must be acknowledged by a quorum.
    round: u64,
    index: Index,
    context: u64,
    /// Who asked: this node or a follower that forwarded it.
    from: NodeId,
}

/// A snapshot of the engine's state for admin status.
#[derive(Clone, Debug)]
pub struct Status {
    pub id: NodeId,
    pub role: Role,
    pub term: Term,
    pub vote: NodeId,
    pub leader: NodeId,
    pub commit: Index,
    pub applied: Index,
    pub persisted: Index,
    pub first_index: Index,
    pub last_index: Index,
    /// Payload bytes the in-memory log holds (see `Config::log_memory_bytes`).
    pub log_held_bytes: u64,
    /// The first entry the log holds with its payload.
    pub payloads_from: Index,
    pub conf: ConfState,
    /// While this replica repairs a damaged log: the index it must reach.
    pub repair_target: Option<Index>,
    /// The leader's view of each member (empty on non-leaders).
    pub progress: Vec<PeerStatus>,
}

/// The leader's view of one member.
#[derive(Clone, Debug)]
pub struct PeerStatus {
    pub id: NodeId,
    pub match_index: Index,
    pub next_index: Index,
    pub state: ProgressState,
    pub inflight_batches: usize,
    /// The leader heard from it within the last election timeout (a
    /// sliding window: the check-quorum flag of the same name restarts
    /// empty every election timeout, which would call every healthy peer
    /// inactive until the next heartbeat's answers).
    pub recent_active: bool,
    pub learner: bool,
    pub witness: bool,
    /// It reported a full disk recently (see [`Raft::peers_no_space`]).
    pub no_space: bool,
}

/// Encoded batches a leader keeps so that followers at the same point receive
/// the very bytes it persists; bounded by this many bytes.
const BATCH_CACHE_BYTES_MAX: usize = 64 << 20;
/// Heartbeat rounds remembered for lease timing.
const ROUNDS_REMEMBERED_MAX: usize = 1024;
/// ReadIndex requests a leader holds at once (more are dropped for retry),
/// and reads a follower has forwarded and not heard back about (more are
/// refused with `Busy`).
const PENDING_READS_MAX: usize = 65_536;

/// The Raft engine of one node in one group.
pub struct Raft {
    config: Config,
    id: NodeId,
    term: Term,
    /// The candidate voted for in `term`, or none.
    vote: NodeId,
    leader: NodeId,
    role: Role,
    log: RaftLog,
    conf: ConfState,
    /// The leader's view of every member, itself included. Empty otherwise.
    progress: BTreeMap<NodeId, Progress>,
    /// Votes received in the current (pre-)election.
    votes: BTreeMap<NodeId, bool>,
    election_elapsed: u32,
    /// For a replica that does not campaign as a voter: how many election
    /// timeouts in a row passed without a leader's message (a learner
    /// campaigns only after several, see `raft/learner.rs`).
    leaderless_rounds: u32,
    heartbeat_elapsed: u32,
    election_timeout: u32,
    /// Ticks since this engine was created: the leader's lease clock.
    now: u64,
    /// Whether this replica was created with a term (a restart, not a
    /// first start): it may then have acknowledged a leader's heartbeat
    /// round just before, and forgot whom it heard. It refuses votes for
    /// `election_ticks_min` ticks after it starts (see `in_lease`).
    started_with_term: bool,
    /// How many ticks this replica refuses votes (and waits before it
    /// campaigns) after it hears a leader or starts: `election_ticks_min`,
    /// unless its node raised it ([`Raft::set_vote_hold_ticks`]).
    vote_hold_ticks: u32,
    rng: Rng,
    transfer_target: NodeId,
    /// Whether this leader started a leader transfer in its term. Its lease
    /// is gone for the rest of the term, even once the transfer is aborted:
    /// the target may still act on a `TimeoutNow` sent before the abort
    /// (delivered late), and voters grant a transfer's votes inside a
    /// lease. Before, an aborted transfer revived the lease, resting on
    /// acknowledgements from before the transfer, while the target had won
    /// with those very voters (engine randomized seed 1855).
    lease_forfeited: bool,
    /// Whether this leader won its term by its own vote alone (a sole
    /// voter) and no entry of the term is reported durable yet. Its new term
    /// and vote may then be lost by a crash (a candidate that asked others
    /// made them durable before its requests left), after which it may vote
    /// for another candidate in the same term: two leaders of one term. So
    /// until then everything it sends waits for the local write
    /// (`messages_after_persist`), and nothing of its term reaches a learner
    /// that the other leader could contradict at the same index and term
    /// (engine randomized seed 954552).
    term_unsynced: bool,
    /// Entries up to this index are encoded into batches (leader only).
    /// Invariant: `encoded_last <= log.last_index()`.
    encoded_last: Index,
    batch_cache: VecDeque<EntryBatch>,
    batch_cache_bytes: usize,
    /// A follower acknowledged entries up to the commit index but has not
    /// been sent it: the next Ready sends it (see `send_commit`).
    commit_owed: bool,
    /// Batches to hand to the shell in the next Ready.
    unstable_batches: Vec<EntryBatch>,
    messages: Vec<Message>,
    messages_after_persist: Vec<Message>,
    /// Heartbeat rounds: the latest round sent, and when each was sent.
    round: u64,
    round_ticks: VecDeque<(u64, u64)>,
    read_round_needed: bool,
    pending_reads: VecDeque<PendingRead>,
    /// Reads that arrived before the leader committed an entry of its term.
    reads_waiting_commit: Vec<(u64, NodeId)>,
    /// Reads forwarded to the leader, awaiting its answer (follower only).
    forwarded_reads: Vec<u64>,
    read_states: Vec<ReadState>,
    dropped_reads: Vec<u64>,
    /// Payload bytes proposed by this leader and not yet committed.
    uncommitted_bytes: usize,
    /// Index of the latest configuration entry not yet applied.
    pub(crate) pending_conf_index: Index,
    /// The configuration after each configuration entry still in the log,
    /// led by the one in force at the log's start (the snapshot's).
    /// Invariant: indices increase; the last one is `conf`.
    conf_history: Vec<(Index, ConfState)>,
    persisted_hard_state: HardState,
    previous_soft_state: SoftState,
    /// Set between `ready` and `advance`: the last index handed to apply.
    applying: Option<Index>,
    /// Set by the shell while its state machine is being restored from an
    /// installed snapshot in the background ([`Raft::hold_apply`]): no
    /// committed entries are handed out, and the applied index stays.
    apply_held: bool,
    /// The latest local snapshot and its size in bytes (0 when unknown).
    snapshot: SnapshotMeta,
    snapshot_size: u64,
    /// A snapshot was asked of the shell and not yet reported.
    snapshot_requested: bool,
    /// The applied index when the snapshot was last asked for: a shell that
    /// neither took it nor said so is asked again an interval later, so the
    /// log never grows without bound.
    snapshot_requested_at: Index,
    /// A snapshot asked for was not taken ([`Raft::snapshot_not_taken`]):
    /// it is asked again at this tick.
    snapshot_retry_at: Option<u64>,
    /// Snapshots asked for and not taken since the last one taken: each
    /// doubles the pause before asking again.
    snapshot_misses: u32,
    /// A follower waits for a fresh snapshot because the stored one ends
    /// before the payloads the log still holds: dropping payloads stops at
    /// `snapshot_requested_at` until the snapshot is reported, so the one
    /// being taken is followed by entries the log can send.
    snapshot_wanted: bool,
    /// Bytes of the entries handed to apply since a snapshot was last asked
    /// for (see `Config::snapshot_log_factor`).
    applied_bytes_since_snapshot: u64,
    snapshot_due: bool,
    /// The snapshot being received from the leader, and how much of it.
    incoming: Option<(SnapshotMeta, u64)>,
    snapshot_install: Option<SnapshotMeta>,
    /// A received snapshot whose last chunk is in `snapshot_writes` (the
    /// sender, the metadata, its stored size, the end offset to
    /// acknowledge), then, once a Ready handed that chunk to the shell, in
    /// `install_on_advance`: it is installed when the shell advances past
    /// that Ready, so that every chunk is written before the log is
    /// replaced, and a shell that could not write one can still drop the
    /// snapshot (`abandon_incoming_snapshot`).
    received_complete: Option<(NodeId, SnapshotMeta, u64, u64)>,
    install_on_advance: Option<(NodeId, SnapshotMeta, u64, u64)>,
    snapshot_writes: Vec<SnapshotWrite>,
    snapshot_reads: Vec<SnapshotRead>,
    compact_to: Option<Index>,
    /// Set while this replica's log lacks entries it may have acknowledged
    /// (its storage lost or damaged them): the index its log must reach,
    /// verified by a leader, before it is a full voter again. Until then it
    /// starts no elections, takes commit indexes only from appends whose
    /// entries it has just verified, and votes only for a candidate that
    /// surely holds what it acknowledged (see `repair_vote_allowed`):
    /// Protocol-Aware Recovery, FAST'18, shows that a replica that forgot
    /// what it acknowledged can otherwise help elect a leader that lacks a
    /// committed entry.
    /// Invariant: `Some(target)` implies `target > log.committed`.
    repair: Option<Index>,
    /// While `repair` is set: the highest term in which this replica
    /// acknowledged anything (`HardState::ack_term`, or the term in which a
    /// replica with an unknown past first heard a leader).
    repair_term: Term,
    /// Set while this replica, a voter of its starting configuration,
    /// has an empty log and no snapshot and has heard neither a leader nor
    /// a log that is not empty: either a new cluster is bootstrapping or its
    /// data directory was wiped, and it cannot tell which. It votes only as
    /// `unknown_past_vote_allowed` says until every other voter of its
    /// configuration has asked for a vote with an empty log (see
    /// `note_evidence`): then no history exists that it could have helped
    /// make, and it votes as any voter does, in terms above `vote_fence`.
    unverified: bool,
    /// While its past is unknown (`unverified`, or in a repair to
    /// [`REPAIR_UNKNOWN`]): the voters that asked for a (pre-)vote with an
    /// empty log since it started, each with the highest term it asked in.
    evidence: BTreeMap<NodeId, Term>,
    /// This replica votes only in terms above it: the highest term in which
    /// the voters that asked, in the evidence that ended `unverified`, were
    /// at. Any term in which a wiped replica may have voted before is at or
    /// below it (every candidate it could have voted for was at that term or
    /// a later one when it asked).
    vote_fence: Term,
    /// When this unverified replica last told the voters its (empty) log
    /// (`report_log`), so that a new cluster's voters learn each other's
    /// logs in one round instead of one election timeout each, or this
    /// non-voter told an asking voter its log (`answer_new_voter`).
    reported_at: Option<u64>,
    /// The log must be durable up to here before the hard state says
    /// `verified`: the end of the entries that ended a repair to
    /// [`REPAIR_UNKNOWN`].
    verified_from: Index,
    /// How many times this replica started a repair to [`REPAIR_UNKNOWN`]
    /// (a shell may miss one that started and ended between two Readies).
    unknown_repairs: u64,
    /// This replica is a witness: configured as one, or listed as one by a
    /// configuration it installed since it started. Sticky: a witness's log
    /// lacks payloads, so a later configuration that drops it (a removal,
    /// or a truncated entry) must not make it campaign or apply.
    witness: bool,
    /// The last empty entry this leader proposed for a replica in repair
    /// (see `nudge_repair`): the next waits until it is committed.
    repair_nudge: Index,
    /// See `HardState::ack_term`.
    ack_term: Term,
    /// The shell reported this node's disk full (see `raft/no_space.rs`):
    /// appends are answered with a no-space rejection, their entries not
    /// taken.
    no_space: bool,
    /// Appends answered so, for the shell's statistics.
    appends_refused_no_space: u64,
    /// Appends refused while applying (`raft/no_space.rs`), likewise.
    appends_refused_applying: u64,
}

/// The repair target of a replica that cannot know what it acknowledged: it
/// started with an empty log (its data directory may have been wiped) and
/// then heard from a leader, or a candidate whose log is not empty, so the
/// cluster has a history it may have been counted for. It repairs until it
/// holds the leader's log up to an entry of the leader's term and up to the
/// leader's commit index, which then covers every committed entry (see
/// `Raft::handle_append`), and votes meanwhile only in a group of two (see
/// `Raft::unknown_past_vote_allowed`). The repair also ends once every
/// other voter of its configuration has asked it for a vote with an empty
/// log since it started (see `Raft::note_evidence`).
pub const REPAIR_UNKNOWN: Index = Index::MAX;

impl Raft {
    /// Builds an engine from what the node recovered from its storage.
    pub fn new(config: Config, recovered: Recovered) -> Result<Raft, ConfigError> {
        config.validate()?;
        let Recovered { hard_state, snapshot, entries, acknowledged, applied, applied_bytes } = recovered;
        let (offset_index, offset_term, conf) = match &snapshot {
            Some(meta) => (meta.index, meta.term, meta.conf.clone()),
            None => (
                0,
                0,
                ConfState::with_witnesses(
                    config.voters.iter().copied(),
                    config.witnesses.iter().copied(),
                    config.learners.iter().copied(),
                ),
            ),
        };
        let mut log = RaftLog::new(offset_index, offset_term, entries);
        // The hard state's commit index never covers entries that were not
        // durable (see `Raft::hard_state`), so a log that ends before it, or
        // before what the store says this replica acknowledged, lost durable
        // entries: repair. What survived may then even be a stale prefix (a
        // lost record may have replaced entries below the saved commit), so
        // nothing past the snapshot counts as committed until a leader
        // verifies it.
        let repair_target = acknowledged.max(hard_state.commit);
        let repair = (repair_target > log.last_index()).then_some(repair_target);
        log.committed = match repair {
            Some(_) => offset_index,
            None => hard_state.commit.clamp(offset_index, log.last_index()),
        };
        if applied > offset_index && (repair.is_some() || applied > log.committed) {
            return Err(ConfigError(format!(
                "the store dropped the payloads of entries up to {applied}, beyond what counts as committed \
                 ({}{}): they cannot be applied",
                log.committed,
                if repair.is_some() { ", repairing" } else { "" }
            )));
        }
        // Only a member of its own starting configuration (a node that
        // bootstraps a cluster, not one started to join it) is presumed to
        // have been a voter before.
        // A sole voter has no one to ask: nothing could have been committed
        // without it.
        let unverified = repair.is_none()
            && !hard_state.verified
            && log.last_index() == 0
            && snapshot.is_none()
            && conf.voters.contains(&config.id)
            && conf.voters.len() > 1;
        let rng = Rng::new(config.seed);
        let id = config.id;
        let mut raft = Raft {
            id,
            term: hard_state.term,
            vote: hard_state.vote,
            leader: NODE_NONE,
            role: Role::Follower,
            log,
            conf: conf.clone(),
            progress: BTreeMap::new(),
            votes: BTreeMap::new(),
            election_elapsed: 0,
            leaderless_rounds: 0,
            heartbeat_elapsed: 0,
            election_timeout: config.election_ticks_min,
            now: 0,
            started_with_term: hard_state.term > 0,
            vote_hold_ticks: config.election_ticks_min,
            lease_forfeited: false,
            term_unsynced: false,
            rng,
            transfer_target: NODE_NONE,
            encoded_last: 0,
            batch_cache: VecDeque::new(),
            batch_cache_bytes: 0,
            commit_owed: false,
            unstable_batches: Vec::new(),
            messages: Vec::new(),
            messages_after_persist: Vec::new(),
            round: 0,
            round_ticks: VecDeque::new(),
            read_round_needed: false,
            pending_reads: VecDeque::new(),
            reads_waiting_commit: Vec::new(),
            forwarded_reads: Vec::new(),
            read_states: Vec::new(),
            dropped_reads: Vec::new(),
            uncommitted_bytes: 0,
            pending_conf_index: 0,
            conf_history: vec![(offset_index, conf.clone())],
            persisted_hard_state: hard_state,
            previous_soft_state: SoftState { role: Role::Follower, leader: NODE_NONE },
            applying: None,
            apply_held: false,
            snapshot: snapshot.clone().unwrap_or_default(),
            snapshot_size: 0,
            snapshot_requested: false,
            snapshot_requested_at: 0,
            snapshot_retry_at: None,
            snapshot_misses: 0,
            snapshot_wanted: false,
            applied_bytes_since_snapshot: 0,
            snapshot_due: false,
            incoming: None,
            snapshot_install: None,
            snapshot_writes: Vec::new(),
            received_complete: None,
            install_on_advance: None,
            snapshot_reads: Vec::new(),
            compact_to: None,
            repair,
            repair_term: hard_state.ack_term,
            ack_term: hard_state.ack_term,
            unverified,
            evidence: BTreeMap::new(),
            vote_fence: 0,
            reported_at: None,
            verified_from: 0,
            unknown_repairs: 0,
            witness: config.witness || conf.is_witness(id),
            repair_nudge: 0,
            no_space: false,
            appends_refused_no_space: 0,
            appends_refused_applying: 0,
            config,
        };
        raft.encoded_last = raft.log.last_index();
        if applied > offset_index {
            // Applied by the shell before its first Ready (see
            // `Recovered::applied`); the snapshot rules see them as applied.
            raft.applied_bytes_since_snapshot = applied_bytes;
            raft.advance_applied(applied);
            raft.log.payloads_dropped_to(applied);
        }
        raft.reset_election_timeout();
        // The latest configuration entry in the log is in force (thesis 4.1).
        crate::membership::conf_after_append(&mut raft, offset_index + 1);
        // A witness whose removal is in its log is still one: its log has
        // no payloads whichever configuration is in force.
        raft.witness |= raft.conf_history.iter().any(|(_, conf)| conf.is_witness(id));
        Ok(raft)
    }

    // ----- accessors -----

    pub fn id(&self) -> NodeId {
        self.id
    }
    pub fn term(&self) -> Term {
        self.term
    }
    pub fn role(&self) -> Role {
        self.role
    }
    /// The leader this node knows of, or [`NODE_NONE`].
    pub fn leader(&self) -> NodeId {
        self.leader
    }
    pub fn vote(&self) -> NodeId {
        self.vote
    }
    pub fn conf(&self) -> &ConfState {
        &self.conf
    }

    /// The configuration in force at the commit index: committed, so no
    /// later truncation brings back a member it leaves out (`conf` is the
    /// latest appended one, which may yet be truncated).
    pub fn committed_conf(&self) -> ConfState {
        self.conf_at(self.log.committed)
    }
    pub fn config(&self) -> &Config {
        &self.config
    }
    pub fn committed(&self) -> Index {
        self.log.committed
    }
    pub fn applied(&self) -> Index {
        self.log.applied
    }
    pub fn persisted_index(&self) -> Index {
        self.log.persisted
    }
    pub fn last_index(&self) -> Index {
        self.log.last_index()
    }
    pub fn first_index(&self) -> Index {
        self.log.first_index()
    }
    /// The term of the entry at `index`, if the in-memory log holds it.
    pub fn term_at(&self, index: Index) -> Option<Term> {
        self.log.term(index)
    }
    /// The entry at `index`, if the in-memory log holds it (without its
    /// payload below [`Raft::payloads_from`], unless a configuration entry).
    pub fn entry(&self, index: Index) -> Option<&Entry> {
        self.log.entry(index)
    }
    /// The first entry the in-memory log holds with its payload (see
    /// `Config::log_memory_bytes`).
    pub fn payloads_from(&self) -> Index {
        self.log.payloads_from()
    }
    /// Payload bytes the in-memory log holds.
    pub fn log_held_bytes(&self) -> u64 {
        self.log.held_bytes()
    }
    /// The state to persist. Its commit index never exceeds the durable log
    /// (`persisted`): a shell may write the hard state before, and apart
    /// from, the entry appends of the same Ready, and a crash in between
    /// must not leave a commit index covering entries that are not on disk,
    /// or stale entries a pending append was about to replace (on restart
    /// they would be applied as committed).
    pub fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            vote: self.vote,
            commit: self.log.committed.min(self.log.persisted),
            ack_term: self.ack_term,
            // A repair that ended on entries not yet durable is not over for
            // a restart: those entries may be lost with it.
            verified: !self.past_unknown() && self.log.persisted >= self.verified_from,
        }
    }
    /// The index this replica's log must reach, verified by a leader, before
    /// it votes again; `None` when it holds everything it acknowledged. Set
    /// on start when the storage lost or damaged acknowledged entries.
    pub fn repair_target(&self) -> Option<Index> {
        self.repair
    }
    /// Whether this replica cannot know what it acknowledged or whom it
    /// voted for: it started with an empty log as a voter of its
    /// configuration (its hard state not `verified`: a new cluster, or a
    /// wiped data directory), and has neither heard every other voter ask
    /// with an empty log nor been caught up by a leader since (see
    /// [`REPAIR_UNKNOWN`]), or its hard state was damaged.
    pub fn past_unknown(&self) -> bool {
        self.unverified || self.repair == Some(REPAIR_UNKNOWN)
    }
    /// The voters of this replica's configuration whose vote requests with
    /// an empty log it still waits for before it votes as any voter does,
    /// while it is `unverified` (it started with an empty log: a new
    /// cluster, or a wiped data directory?); empty otherwise. A shell shows
    /// it to the operator: a new cluster elects its first leader once every
    /// node of its starting configuration has started, and a voter listed
    /// here that has left the cluster never asks (its starting
    /// configuration is all this replica knows).
    pub fn votes_wait_for(&self) -> Vec<NodeId> {
        if !self.unverified {
            return Vec::new();
        }
        self.evidence_missing()
    }

    /// How many repairs to [`REPAIR_UNKNOWN`] this replica started since it
    /// was built.
    pub fn unknown_repairs(&self) -> u64 {
        self.unknown_repairs
    }

    /// Whether this replica runs as a witness but its configuration counts
    /// it as a full voter (a node started as a witness and made a voter
    /// with `AddVoter` instead of `AddWitness`; the cluster cannot tell how
    /// a node runs). It then acknowledges no entry, so no commit rests on
    /// its metadata-only log. As a learner it still does: a learner's
    /// acknowledgements count toward no commit, and its promotion to a
    /// witness (`AddWitness` of a learner) checks how far it has caught up.
    pub fn witness_counted_as_full(&self) -> bool {
        self.witness && self.conf.is_full_voter(self.id)
    }

    /// Whether this replica is a witness: it holds entry metadata only,
    /// never leads, and hands out no normal entries to apply (see
    /// [`Ready::committed_entries`]); its shell runs no state machine.
    pub fn is_witness(&self) -> bool {
        self.witness
    }

    pub fn transfer_target(&self) -> Option<NodeId> {
        (self.transfer_target != NODE_NONE).then_some(self.transfer_target)
    }
    /// The configuration in force at `index` (as far as the log remembers).
    pub(crate) fn conf_at(&self, index: Index) -> ConfState {
        self.conf_history
            .iter()
            .rev()
            .find(|(at, _)| *at <= index)
            .or(self.conf_history.first())
            .map(|(_, conf)| conf.clone())
            .expect("the history always holds the base configuration")
    }

    /// The index of the latest configuration entry (or of the base).
    pub(crate) fn last_conf_index(&self) -> Index {
        self.conf_history.last().map_or(0, |(index, _)| *index)
    }

    pub(crate) fn record_conf(&mut self, index: Index, conf: ConfState) {
        self.conf_history.retain(|(at, _)| *at < index);
        self.conf_history.push((index, conf));
    }

    /// Forgets configurations of entries at or after `first` (they were
    /// truncated or are about to be re-read), keeping the base.
    pub(crate) fn forget_confs_from(&mut self, first: Index) {
        let base = self.conf_history[0].clone();
        self.conf_history.retain(|(at, _)| *at < first);
        if self.conf_history.is_empty() {
            self.conf_history.push(base);
        }
    }

    /// Puts a configuration in force; a leader starts or stops tracking
    /// members accordingly.
    pub(crate) fn install_conf(&mut self, conf: ConfState) {
        self.witness |= conf.is_witness(self.id);
        self.conf = conf;
        if self.role != Role::Leader {
            return;
        }
        let members = self.conf.members();
        let next = self.log.last_index() + 1;
        for &id in &members {
            self.progress.entry(id).or_insert_with(|| Progress::new(next));
        }
        let me = self.id;
        self.progress.retain(|id, _| *id == me || members.contains(id));
        if self.transfer_target != NODE_NONE && !self.conf.is_voter(self.transfer_target) {
            self.transfer_target = NODE_NONE;
        }
    }

    /// A leader whose removal committed hands over by stepping down; it is no
    /// longer a voter, so it will not campaign.
    pub(crate) fn step_down_removed(&mut self) {
        self.become_follower(self.term, NODE_NONE);
    }

    /// Appends an entry on the engine's own behalf (leave-joint), bypassing
    /// the client-facing checks.
    pub(crate) fn propose_entry_internal(&mut self, kind: EntryKind, data: Bytes) -> Index {
        let index = self.log.last_index() + 1;
        self.log.push(Entry { index, term: self.term, kind, data });
        if kind == EntryKind::Config {
            self.pending_conf_index = index;
            crate::membership::conf_after_append(self, index);
        }
        index
    }
    pub(crate) fn progress(&self) -> &BTreeMap<NodeId, Progress> {
        &self.progress
    }

    pub fn status(&self) -> Status {
        let no_space = self.peers_no_space();
        let active_window = u64::from(self.config.election_ticks_min);
        Status {
            id: self.id,
            role: self.role,
            term: self.term,
            vote: self.vote,
            leader: self.leader,
            commit: self.log.committed,
            applied: self.log.applied,
            persisted: self.log.persisted,
            first_index: self.log.first_index(),
            last_index: self.log.last_index(),
            log_held_bytes: self.log.held_bytes(),
            payloads_from: self.log.payloads_from(),
            conf: self.conf.clone(),
            repair_target: self.repair,
            progress: self
                .progress
                .iter()
                .map(|(&id, pr)| PeerStatus {
                    id,
                    match_index: pr.match_index,
                    next_index: pr.next_index,
                    state: pr.state,
                    inflight_batches: pr.inflight.count(),
                    recent_active: id == self.id || pr.heard_within(self.now, active_window),
                    learner: self.conf.is_learner(id),
                    witness: self.conf.is_witness(id),
                    no_space: no_space.contains(&id),
                })
                .collect(),
        }
    }

    /// Whether this node may campaign: it votes in its latest configuration,
    /// or in the one in force at its commit index. The second case matters
    /// when an uncommitted entry removes this node: the remaining voters may
    /// need it to finish the change (its log is the most up to date), and
    /// votes are still counted under its latest configuration.
    fn promotable(&self) -> bool {
        // A witness lacks the payloads a leader must send.
        if self.witness || self.conf_at(self.log.committed).is_witness(self.id) {
            return false;
        }
        // A replica repairing to an unknown target may still campaign: it
        // does not count its own vote (see `self_vote_allowed`), so it wins
        // only with a majority of the others, each voting by its own rules.
        // One repairing to a known target knows its log lacks entries it
        // acknowledged.
        if self.repair.is_some_and(|target| target != REPAIR_UNKNOWN) {
            return false;
        }
        self.conf.is_voter(self.id) || self.conf_at(self.log.committed).is_voter(self.id)
    }

    fn sole_voter(&self) -> bool {
        !self.conf.is_joint() && self.conf.voters.len() == 1 && self.conf.voters[0] == self.id
    }

    // ----- driving API -----

    /// Advances logical time by one tick.
    pub fn tick(&mut self) {
        self.now += 1;
        self.retry_snapshot();
        match self.role {
            Role::Leader => self.tick_leader(),
            _ => self.tick_election(),
        }
    }

    fn tick_election(&mut self) {
        self.election_elapsed += 1;
        if !self.promotable() {
            if self.election_elapsed >= self.election_timeout {
                // The leader is silent: forget it, as a follower that
                // campaigns would (`become_pre_candidate`). A replica that
                // does not campaign as a voter (a learner, a witness, a
                // voter in repair) otherwise named a dead leader for good:
                // its status, and the `NotLeader` answers that send clients
                // there. For a witness it also ends the lease that made it
                // ignore the candidates that replace the leader.
                self.election_elapsed = 0;
                self.note_leaderless_round();
                self.leader = NODE_NONE;
                if self.witness || self.repair.is_some() {
                    // It does not campaign, but the others may need its
                    // log to decide (see `report_log`).
                    self.report_log();
                } else if self.learner_last_resort() {
                    // The voters had their rounds; its log may be the one
                    // they need (see `raft/learner.rs`).
                    self.hup(false);
                }
            }
            return;
        }
        // Single-node bootstrap: nobody else can win, so do not wait.
        if self.sole_voter() || (self.promotable() && self.election_elapsed >= self.election_timeout) {
            self.election_elapsed = 0;
            self.hup(false);
        }
    }

    fn tick_leader(&mut self) {
        self.heartbeat_elapsed += 1;
        self.election_elapsed += 1;
        if self.election_elapsed >= self.config.election_ticks_min {
            self.election_elapsed = 0;
            if self.config.check_quorum {
                let active = self.quorum_active();
                for (&id, pr) in self.progress.iter_mut() {
                    if id != self.id {
                        pr.recent_active = false;
                    }
                }
                if !active {
                    // Raft thesis 6.2: a leader cut off from a quorum steps down.
                    self.become_follower(self.term, NODE_NONE);
                    return;
                }
            }
            if self.transfer_target != NODE_NONE {
                // Thesis 3.10: abort a transfer that did not finish in an
                // election timeout, so the cluster is not left without writes.
                self.transfer_target = NODE_NONE;
            }
        }
        self.learner_hand_over();
        if self.heartbeat_elapsed >= self.config.heartbeat_ticks {
            self.heartbeat_elapsed = 0;
            self.broadcast_heartbeat();
        }
        // A commit advance that no append carried since is told at the next
        // tick: a replica's saved commit index is what shows, after a crash
        // that lost the tail of its log, that it lost entries it
        // acknowledged (repair), so it must not trail for long.
        let peers: Vec<NodeId> = self.progress.keys().copied().filter(|&id| id != self.id).collect();
        for id in peers {
            self.send_commit(id, CommitTo::Owed);
        }
    }

    /// A witness, or a voter in repair to a known target, never campaigns,
    /// but once per election timeout without a leader it tells the other
    /// voters its log position in pre-vote requests, whose answers it
    /// ignores. A voter that started with an empty log votes only once every
    /// other voter of its configuration has asked with an empty log (see
    /// `note_evidence`), and a witness hears another's log only in such
    /// requests: without these, a new cluster with a witness could elect no
    /// one. An unverified voter also sends them when it first hears another
    /// one ask, so that a new cluster's voters learn of each other in one
    /// round. A pre-vote changes no term and no vote, so the requests
    /// disturb nobody.
    pub(crate) fn report_log(&mut self) {
        if !self.conf.is_voter(self.id) {
            return;
        }
        let request = self.vote_request(false);
        let term = self.term + 1;
        let me = self.id;
        for to in self.voter_ids().into_iter().filter(|&to| to != me) {
            self.send(Message { from: me, to, term, body: MessageBody::PreVote(request) });
        }
    }

    /// Starts an election now (tests and admin "campaign").
    pub fn campaign(&mut self) {
        self.hup(false);
    }

    fn hup(&mut self, transfer: bool) {
        if self.role == Role::Leader || !(self.promotable() || self.learner_last_resort()) {
            return;
        }
        if self.config.pre_vote && !transfer {
            self.become_pre_candidate();
            self.run_election(true, false);
        } else {
            self.become_candidate();
            self.run_election(false, transfer);
        }
    }

    fn run_election(&mut self, pre: bool, transfer: bool) {
        let term = if pre { self.term + 1 } else { self.term };
        let request = self.vote_request(transfer);
        let voters: Vec<NodeId> = self.voter_ids();
        let self_vote = self.self_vote_allowed(term);
        if self.poll(self.id, self_vote) == VoteResult::Won {
            if pre {
                self.become_candidate();
                self.run_election(false, transfer);
            } else {
                self.become_leader();
            }
            return;
        }
        let me = self.id;
        for to in voters.into_iter().filter(|&to| to != me) {
            let body = if pre { MessageBody::PreVote(request) } else { MessageBody::Vote(request) };
            self.send(Message { from: self.id, to, term, body });
        }
    }

    /// What this node's (pre-)vote requests say of its log.
    fn vote_request(&self, transfer: bool) -> VoteRequest {
        VoteRequest {
            last_log_index: self.log.last_index(),
            last_log_term: self.log.last_term(),
            transfer,
            commit: self.log.committed,
        }
    }

    /// Proposes a command. On success returns the index and term it was
    /// appended at; the command is committed once that entry is (an entry at
    /// that index with a different term means it was lost and must be retried).
    pub fn propose(&mut self, command: Bytes) -> Result<(Index, Term), ProposeError> {
        self.propose_entry(EntryKind::Normal, command)
    }

    pub(crate) fn propose_entry(&mut self, kind: EntryKind, data: Bytes) -> Result<(Index, Term), ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader { leader: (self.leader != NODE_NONE).then_some(self.leader) });
        }
        if self.transfer_target != NODE_NONE {
            return Err(ProposeError::TransferInProgress { target: self.transfer_target });
        }
        let limit = self.config.uncommitted_bytes_max;
        if self.uncommitted_bytes > 0 && self.uncommitted_bytes + data.len() > limit {
            return Err(ProposeError::Busy { uncommitted: self.uncommitted_bytes, limit });
        }
        self.uncommitted_bytes += data.len();
        let index = self.propose_entry_internal(kind, data);
        if self.sole_voter() && self.log.persisted == self.log.last_index() {
            self.maybe_commit();
        }
        Ok((index, self.term))
    }

    /// Asks for a linearizable read. `context` is the shell's name for it; the
    /// answer comes back as a [`ReadState`] (or in `dropped_reads`).
    pub fn read_index(&mut self, context: u64, mode: ReadMode) -> Result<(), ProposeError> {
        if self.witness {
            // No state machine here to serve it from: the client asks the
            // leader instead.
            return Err(ProposeError::NotLeader { leader: (self.leader != NODE_NONE).then_some(self.leader) });
        }
        match self.role {
            Role::Leader => {
                self.leader_read(context, self.id, mode);
                Ok(())
            }
            _ if self.leader != NODE_NONE => {
                if self.forwarded_reads.len() >= PENDING_READS_MAX {
                    return Err(ProposeError::TooManyReads {
                        pending: self.forwarded_reads.len(),
                        limit: PENDING_READS_MAX,
                    });
                }
                self.forwarded_reads.push(context);
                self.send_to(self.leader, MessageBody::ReadIndex { context });
                Ok(())
            }
            _ => Err(ProposeError::NotLeader { leader: None }),
        }
    }

    /// Proposes `command` through the leader: on the leader it is
    /// [`Raft::propose`]; on a follower or learner that knows the leader it
    /// sends the command there ([`MessageBody::Propose`]) and the caller
    /// watches the applied entries for it. A forwarded command may be lost
    /// (the leader changes, or is busy) and gets no answer either way.
    pub fn forward_proposal(&mut self, command: Bytes) -> Result<(), ProposeError> {
        if self.witness {
            // Its caller would wait for the command to apply here, and a
            // witness applies nothing: the client asks the leader instead.
            return Err(ProposeError::NotLeader { leader: (self.leader != NODE_NONE).then_some(self.leader) });
        }
        self.forward_announcement(command)
    }

    /// As [`Raft::forward_proposal`], for a command whose sender waits for
    /// nothing (a member's word about itself, which the replicas that apply
    /// it keep): a witness may send one too, since it votes, and what it
    /// says about its votes matters to the leaders it may elect.
    pub fn forward_announcement(&mut self, command: Bytes) -> Result<(), ProposeError> {
        match self.role {
            Role::Leader => self.propose(command).map(|_| ()),
            _ if self.leader != NODE_NONE => {
                self.send_to(self.leader, MessageBody::Propose { command });
                Ok(())
            }
            _ => Err(ProposeError::NotLeader { leader: None }),
        }
    }

    fn leader_read(&mut self, context: u64, from: NodeId, mode: ReadMode) {
        // Thesis 6.4: until the leader commits an entry of its own term it
        // does not know the latest commit index.
        if self.log.term(self.log.committed) != Some(self.term) {
            if self.reads_waiting_commit.len() >= PENDING_READS_MAX {
                self.drop_read(context, from);
            } else {
                self.reads_waiting_commit.push((context, from));
            }
            return;
        }
        let index = self.log.committed;
        if self.sole_voter() || (mode == ReadMode::Lease && self.lease_valid()) {
            self.serve_read(context, from, index);
            return;
        }
        if self.pending_reads.len() >= PENDING_READS_MAX {
            self.drop_read(context, from);
            return;
        }
        self.pending_reads.push_back(PendingRead { round: self.round + 1, index, context, from });
        self.read_round_needed = true;
    }

    fn serve_read(&mut self, context: u64, from: NodeId, index: Index) {
        if from == self.id {
            self.read_states.push(ReadState { context, index });
        } else {
            let term = self.term;
            self.send(Message {
                from: self.id,
                to: from,
                term,
                body: MessageBody::ReadIndexResponse { context, index },
            });
        }
    }

    /// A read that cannot be served here: the local shell learns it through
    /// `dropped_reads`; a follower that forwarded it gets index 0 ("retry").
    fn drop_read(&mut self, context: u64, from: NodeId) {
        if from == self.id {
            self.dropped_reads.push(context);
        } else {
            self.serve_read(context, from, 0);
        }
    }

    /// Whether the leader's lease holds now: a quorum acknowledged a heartbeat
    /// round sent less than `election_ticks_min - lease_drift_ticks` ago, no
    /// leader transfer (which tells voters to ignore the lease) was started
    /// in this term, and this leader is a voter of its configuration (not
    /// leaving).
    pub fn lease_valid(&self) -> bool {
        self.lease_sent_at().is_some()
    }

    /// The tick (see [`Raft::ticks`]) at which the heartbeat round the
    /// lease rests on was sent, while [`Raft::lease_valid`] holds; `None`
    /// when it does not. The engine counts the lease in ticks only: a shell
    /// whose ticks can fall behind real time (a timer that fires late after
    /// the process was paused, and does not fire what it missed) checks
    /// the lease's age in real time as well before it asks for a lease read
    /// (the node does: `Shard::lease_holds_in_real_time`). A sole voter's
    /// lease rests on no round: it holds as of every tick (`Some(now)`).
    pub fn lease_sent_at(&self) -> Option<u64> {
        if self.role != Role::Leader || !self.config.check_quorum || self.lease_forfeited {
            return None;
        }
        if !self.conf.voters.contains(&self.id) {
            // A leader that is leaving (its removal appended, not yet
            // committed) holds no lease: the voters that remain may elect
            // one of their own without asking anyone (a sole voter does so
            // at its next tick), and this leader would not know.
            return None;
        }
        if self.sole_voter() {
            return Some(self.now);
        }
        // Computed once per call: every lease read asks (the quorum's
        // round takes a sort of the voters' acknowledgements).
        let acked = self.quorum_acked_round();
        let &(_, sent) = self.round_ticks.iter().find(|(round, _)| *round == acked)?;
        let lease = u64::from(self.config.election_ticks_min - self.config.lease_drift_ticks);
        (self.now < sent + lease).then_some(sent)
    }

    /// Whether this leader started a leader transfer in its term, which
    /// ended its lease for the rest of the term (see [`Raft::lease_valid`]).
    pub fn lease_forfeited(&self) -> bool {
        self.role == Role::Leader && self.lease_forfeited
    }

    /// Holds this replica's vote for `ticks` (at least
    /// `election_ticks_min`) after it hears a leader or starts: it refuses
    /// vote requests and does not campaign for that long. A node raises it
    /// when a leader may still size its lease by a longer hold this replica
    /// said it kept before a restart with shorter settings, and lowers it
    /// again once its new word is in force. A raised hold also delays the
    /// next election timeout: campaigning is voting for oneself.
    pub fn set_vote_hold_ticks(&mut self, ticks: u32) {
        let ticks = ticks.max(self.config.election_ticks_min);
        if ticks == self.vote_hold_ticks {
            return;
        }
        let spread = self.election_timeout.saturating_sub(self.vote_hold_ticks);
        self.vote_hold_ticks = ticks;
        self.election_timeout = ticks.saturating_add(spread);
    }

    /// How many ticks this replica holds its vote after it hears a leader
    /// or starts (see [`Raft::set_vote_hold_ticks`]).
    pub fn vote_hold_ticks(&self) -> u32 {
        self.vote_hold_ticks
    }

    /// Ticks since this engine was created (its lease clock).
    pub fn ticks(&self) -> u64 {
        self.now
    }

    /// Hands leadership to `target` (Raft thesis 3.10): proposals are refused
    /// while the target is caught up and told to campaign at once.
    pub fn transfer_leader(&mut self, target: NodeId) -> Result<(), ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader { leader: (self.leader != NODE_NONE).then_some(self.leader) });
        }
        if target == self.id {
            return Ok(());
        }
        if !self.conf.is_voter(target) || !self.progress.contains_key(&target) {
            return Err(ProposeError::NotVoter(target));
        }
        if self.conf.is_witness(target) {
            return Err(ProposeError::InvalidChange(format!("node {target} is a witness and never leads")));
        }
        if self.transfer_target == target {
            return Ok(());
        }
        self.transfer_target = target;
        self.lease_forfeited = true;
        self.election_elapsed = 0;
        if self.progress[&target].match_index == self.log.last_index() {
            self.send_timeout_now(target);
        } else {
            self.send_append_or_empty(target);
        }
        Ok(())
    }

    fn send_timeout_now(&mut self, to: NodeId) {
        self.send_to(to, MessageBody::TimeoutNow);
    }

    /// Reports that every entry up to `index` (whose term is `term`) is
    /// durable. A report for entries that were since replaced is ignored.
    pub fn persisted(&mut self, index: Index, term: Term) {
        if index > self.log.handed || index <= self.log.persisted || self.log.term(index) != Some(term) {
            return;
        }
        self.log.persisted = index;
        if term == self.term {
            self.term_unsynced = false;
        }
        if self.role == Role::Leader {
            if let Some(pr) = self.progress.get_mut(&self.id) {
                pr.maybe_update(index);
            }
            self.maybe_commit();
            // The witness limit may follow the leader's disk.
            self.send_witnesses();
        }
    }

    /// Whether a `ready` call would return any work.
    pub fn has_ready(&self) -> bool {
        self.log.last_index() > self.log.handed
            || !self.unstable_batches.is_empty()
            || !self.messages.is_empty()
            || !self.messages_after_persist.is_empty()
            || (self.log.committed > self.log.applied && !self.apply_held)
            || self.commit_owed
            || !self.read_states.is_empty()
            || !self.dropped_reads.is_empty()
            || self.read_round_needed
            || self.hard_state() != self.persisted_hard_state
            || self.soft_state() != self.previous_soft_state
            || self.snapshot_due
            || self.snapshot_install.is_some()
            || !self.snapshot_writes.is_empty()
            || !self.snapshot_reads.is_empty()
            || self.compact_to.is_some()
    }

    fn soft_state(&self) -> SoftState {
        SoftState { role: self.role, leader: self.leader }
    }

    /// Takes the pending work. Must be followed by [`Raft::advance`] before
    /// the next call.
    pub fn ready(&mut self) -> Ready {
        assert!(self.applying.is_none(), "ready() called twice without advance()");
        // Owed commit indexes are sent below, by a leader; anyone else owes
        // nothing any more.
        self.commit_owed = false;
        if self.role == Role::Leader {
            self.flush_proposals();
            if self.read_round_needed {
                self.broadcast_heartbeat();
            }
        }
        self.read_round_needed = false;
        let mut ready = Ready { entries: std::mem::take(&mut self.unstable_batches), ..Ready::default() };
        if let Some(batch) = ready.entries.last() {
            debug_assert_eq!(batch.last_index(), self.log.last_index());
            self.log.handed = batch.last_index();
        }
        let hard_state = self.hard_state();
        if hard_state != self.persisted_hard_state {
            ready.hard_state_must_sync = hard_state.term != self.persisted_hard_state.term
                || hard_state.vote != self.persisted_hard_state.vote
                || hard_state.ack_term != self.persisted_hard_state.ack_term
                || hard_state.verified != self.persisted_hard_state.verified;
            ready.hard_state = Some(hard_state);
            self.persisted_hard_state = hard_state;
        }
        let soft_state = self.soft_state();
        if soft_state != self.previous_soft_state {
            ready.soft_state = Some(soft_state);
            self.previous_soft_state = soft_state;
        }
        ready.messages = std::mem::take(&mut self.messages);
        ready.messages_after_persist = std::mem::take(&mut self.messages_after_persist);
        let mut applying = self.log.applied;
        // A Ready that installs a snapshot hands out no entries to apply:
        // the shell may restore its state machine in the background and
        // hold applying until then (`hold_apply`).
        if self.log.committed > self.log.applied && !self.apply_held && self.snapshot_install.is_none() {
            ready.committed_entries =
                self.log.slice(self.log.applied + 1, self.log.committed, self.config.apply_bytes_max);
            let bytes: usize = ready.committed_entries.iter().map(|entry| entry.data.len()).sum();
            self.applied_bytes_since_snapshot += bytes as u64;
            applying = ready.committed_entries.last().map_or(applying, |entry| entry.index);
            if self.witness {
                // A witness has no state machine: it applies by moving its
                // applied index (which its metadata snapshots follow), and
                // shows its shell only the membership changes.
                ready.committed_entries.retain(|entry| entry.kind == EntryKind::Config);
            }
        }
        self.applying = Some(applying);
        ready.read_states = std::mem::take(&mut self.read_states);
        ready.dropped_reads = std::mem::take(&mut self.dropped_reads);
        ready.snapshot_install = self.snapshot_install.take();
        ready.snapshot_writes = std::mem::take(&mut self.snapshot_writes);
        if let Some(complete) = self.received_complete.take() {
            self.install_on_advance = Some(complete);
        }
        ready.snapshot_reads = std::mem::take(&mut self.snapshot_reads);
        ready.compact_to = self.compact_to.take();
        if self.snapshot_due {
            self.snapshot_due = false;
            self.snapshot_requested = true;
            self.snapshot_requested_at = self.log.applied.max(self.applying.unwrap_or(0));
            self.applied_bytes_since_snapshot = 0;
            ready.snapshot_due = true;
        }
        ready
    }

    /// Acknowledges a [`Ready`]: its committed entries count as applied.
    pub fn advance(&mut self, ready: Ready) {
        let applying = self.applying.take().expect("advance() without ready()");
        debug_assert!(ready.committed_entries.last().is_none_or(|entry| entry.index <= applying));
        debug_assert!(self.witness || ready.committed_entries.last().map_or(applying, |e| e.index) == applying);
        self.advance_applied(applying);
        self.install_received();
        self.evict_payloads();
    }

    /// Drops payloads the log need not hold (see `Config::log_memory_bytes`):
    /// applied entries', oldest first, while it holds more than the budget.
    /// A leader keeps what a follower it heard from lately has yet to
    /// acknowledge, what follows a snapshot it is sending, and what follows
    /// a snapshot it is taking for a follower (which matters when that
    /// follower is heard only now and then): otherwise a follower slower to
    /// catch up than the budget lasts would be sent one snapshot after
    /// another. That keeps no more than compaction alone would: a snapshot
    /// still compacts the log whoever lags, so a follower that is merely
    /// slow holds at most the log since the last snapshot, as before.
    fn evict_payloads(&mut self) {
        let budget = self.config.log_memory_bytes;
        if budget == 0 || self.log.held_bytes() <= budget {
            return;
        }
        let mut limit = self.log.applied;
        if self.role == Role::Leader {
            if self.snapshot_wanted && self.snapshot_requested {
                limit = limit.min(self.snapshot_requested_at);
            }
            let window = u64::from(self.config.election_ticks_min);
            for (&id, pr) in &self.progress {
                if id == self.id || !pr.heard_within(self.now, window) {
                    continue;
                }
                let needs = if pr.state == ProgressState::Snapshot { pr.pending_snapshot } else { pr.match_index };
                limit = limit.min(needs);
            }
        }
        self.log.evict(limit, budget);
    }

    /// Holds back (`true`) or releases (`false`) the committed entries to
    /// apply. A shell that restores its state machine from an installed
    /// snapshot off its driver holds them until the restore is done: the
    /// engine meanwhile ticks, steps, appends, commits and answers as
    /// usual, but hands out no committed entries and keeps its applied
    /// index (so it asks for no snapshot either); once released, the
    /// entries after the snapshot are handed out in order, each once. They
    /// stay in the log meanwhile: the log is compacted only up to the
    /// applied index.
    pub fn hold_apply(&mut self, held: bool) {
        self.apply_held = held;
    }

    /// Whether committed entries are held back (see [`Raft::hold_apply`]).
    pub fn apply_held(&self) -> bool {
        self.apply_held
    }

    fn advance_applied(&mut self, applied: Index) {
        if applied <= self.log.applied {
            return;
        }
        self.log.applied = applied;
        let interval = self.config.snapshot_entries;
        let due = if self.snapshot_requested {
            applied >= self.snapshot_requested_at + interval
        } else {
            let factor = self.config.snapshot_log_factor;
            let log_bytes = self.config.snapshot_log_bytes;
            (applied >= self.snapshot.index + interval + self.snapshot_jitter()
                || (log_bytes > 0 && self.applied_bytes_since_snapshot >= log_bytes))
                && (factor == 0 || self.applied_bytes_since_snapshot >= factor.saturating_mul(self.snapshot_size))
        };
        // A snapshot not taken is asked for again when its pause is over
        // (`retry_snapshot`), not at every apply meanwhile.
        if due && self.snapshot_retry_at.is_none() {
            self.snapshot_due = true;
        }
        if self.pending_conf_index != 0 && applied >= self.pending_conf_index {
            self.pending_conf_index = 0;
        }
    }

    /// The extra entries before the next snapshot: a function of the seed
    /// and the last snapshot, so it stays put between calls and differs
    /// between replicas.
    fn snapshot_jitter(&self) -> u64 {
        let jitter = self.config.snapshot_entries_jitter;
        if jitter == 0 {
            return 0;
        }
        Rng::new(self.config.seed ^ self.snapshot.index.wrapping_mul(0x9e37_79b9_7f4a_7c15)).range(0, jitter + 1)
    }

    /// Encodes the leader's new proposals into batches (once), queues them
    /// for the local write and sends them to every follower that is caught up.
    fn flush_proposals(&mut self) {
        self.encode_proposals();
        let peers: Vec<NodeId> = self.progress.keys().copied().filter(|&id| id != self.id).collect();
        for id in peers {
            self.send_append(id);
            self.send_commit(id, CommitTo::Awaited);
        }
    }

    /// Tells a caught-up follower about a commit advance with an empty
    /// append. In a Ready (at most one per Ready) only when it waits for it:
    /// a command it forwarded is now committed, and its caller is answered
    /// only when that follower applies it ([`Progress::awaits_commit`]).
    /// Any other advance rides on the next append, or is told at the next
    /// tick (`CommitTo::Owed`): an empty append per write cost each follower
    /// a message to read, an apply and an acknowledgement to send, a sixth
    /// of the cluster's CPU per write at one write in flight (RESULTS.md,
    /// 2026-12-07; mostly system calls, not extra wake-ups).
    fn send_commit(&mut self, to: NodeId, which: CommitTo) {
        let committed = self.log.committed;
        let Some(pr) = self.progress.get(&to) else { return };
        let owed = match which {
            CommitTo::Awaited => pr.awaits_commit(committed),
            CommitTo::Owed => pr.owes_commit(committed),
        };
        if pr.state != ProgressState::Replicate || !owed {
            return;
        }
        let prev_index = pr.next_index - 1;
        let Some(prev_term) = self.log.term(prev_index) else { return };
        self.send_to(
            to,
            MessageBody::Append(AppendRequest { prev_index, prev_term, commit: committed, entries: None }),
        );
        self.progress.get_mut(&to).expect("present").commit_sent = committed;
    }

    fn encode_proposals(&mut self) {
        let last = self.log.last_index();
        while self.encoded_last < last {
            let batch =
                EntryBatch::encode_from(self.log.range(self.encoded_last + 1, last, self.config.batch_bytes_max));
            self.log.share_payloads(&batch);
            self.encoded_last = batch.last_index();
            self.batch_cache_bytes += batch.len_bytes();
            self.batch_cache.push_back(batch.clone());
            while self.batch_cache_bytes > BATCH_CACHE_BYTES_MAX && self.batch_cache.len() > 1 {
                let old = self.batch_cache.pop_front().expect("non-empty");
                self.batch_cache_bytes -= old.len_bytes();
            }
            self.unstable_batches.push(batch);
        }
    }

    /// The batch to send a follower whose next index is `next`: a cached one
    /// when it starts there (no re-encoding), otherwise a fresh encoding that
    /// stops where the cache picks up again.
    fn batch_from(&self, next: Index) -> Option<EntryBatch> {
        if next > self.encoded_last {
            return None;
        }
        let position = self.batch_cache.partition_point(|batch| batch.first_index() < next);
        if let Some(batch) = self.batch_cache.get(position) {
            if batch.first_index() == next {
                return Some(batch.clone());
            }
        }
        let stop = self.batch_cache.get(position).map_or(self.encoded_last, |batch| batch.first_index() - 1);
        let entries = self.log.range(next, stop.min(self.encoded_last), self.config.batch_bytes_max);
        (entries.len() > 0).then(|| EntryBatch::encode_from(entries))
    }

    /// Sends appends to `to` while its window allows (one probe in Probe).
    fn send_append(&mut self, to: NodeId) {
        self.send_append_inner(to, false);
    }

    /// Like `send_append`, but in Replicate sends an empty append when there
    /// is nothing new: if an earlier append was lost, the follower rejects it
    /// and the leader backs off to probing, which resends what was lost.
    fn send_append_or_empty(&mut self, to: NodeId) {
        self.send_append_inner(to, true);
    }

    fn send_append_inner(&mut self, to: NodeId, send_if_empty: bool) {
        let mut sent_any = false;
        loop {
            let Some(pr) = self.progress.get(&to) else { return };
            if pr.is_paused(self.config.inflight_batches_max, self.config.inflight_bytes_max) {
                return;
            }
            let state = pr.state;
            let next = pr.next_index;
            let prev_index = next - 1;
            // A follower that said its disk is full cannot take entries: it
            // is probed without them until it answers otherwise.
            let without_space = pr.no_space_at.is_some();
            let Some(prev_term) = self.log.term(prev_index) else {
                // The follower needs entries that were compacted: it gets
                // the snapshot instead.
                self.start_snapshot(to);
                return;
            };
            if self.needs_dropped_payloads(to, next) {
                // The follower needs entries whose payloads were dropped
                // (see `Raft::evict_payloads`).
                self.start_snapshot(to);
                return;
            }
            let batch = match self.witness_since(to) {
                _ if without_space => None,
                Some(since) => self.witness_batch(next, since),
                None => self.batch_from(next),
            };
            if batch.is_none() && state == ProgressState::Replicate {
                if send_if_empty && !sent_any {
                    let commit = self.log.committed;
                    self.send_to(
                        to,
                        MessageBody::Append(AppendRequest { prev_index, prev_term, commit, entries: None }),
                    );
                }
                return;
            }
            sent_any = true;
            let (last, bytes) = batch.as_ref().map_or((prev_index, 0), |b| (b.last_index(), b.len_bytes()));
            let commit = self.log.committed;
            self.send_to(to, MessageBody::Append(AppendRequest { prev_index, prev_term, commit, entries: batch }));
            let pr = self.progress.get_mut(&to).expect("present");
            pr.sent(last, bytes, commit);
            pr.commit_sent = pr.commit_sent.max(commit.min(last));
            if state != ProgressState::Replicate {
                return;
            }
        }
    }

    fn broadcast_heartbeat(&mut self) {
        self.round += 1;
        self.round_ticks.push_back((self.round, self.now));
        while self.round_ticks.len() > ROUNDS_REMEMBERED_MAX {
            self.round_ticks.pop_front();
        }
        if let Some(pr) = self.progress.get_mut(&self.id) {
            pr.acked_round = self.round;
        }
        let peers: Vec<(NodeId, Index)> =
            self.progress.iter().filter(|(&id, _)| id != self.id).map(|(&id, pr)| (id, pr.match_index)).collect();
        for (to, match_index) in peers {
            let commit = match_index.min(self.log.committed);
            self.send_to(to, MessageBody::Heartbeat { commit, read_context: self.round });
            if let Some(pr) = self.progress.get_mut(&to) {
                pr.commit_sent = pr.commit_sent.max(commit);
            }
        }
        // A lone voter's round is acknowledged by itself.
        self.release_reads();
    }

    /// Queues a message in the right group: votes and acknowledgements must
    /// wait for the local write, and so does everything a leader elected by
    /// its own vote sends before its term is durable (see
    /// `term_unsynced`); everything else may leave at once.
    /// Sends `body` to `to` in the current term.
    fn send_to(&mut self, to: NodeId, body: MessageBody) {
        self.send(Message { from: self.id, to, term: self.term, body });
    }

    fn send(&mut self, message: Message) {
        debug_assert_ne!(message.to, self.id, "no messages to self");
        let after_persist = self.term_unsynced
            || match &message.body {
                MessageBody::Vote(_) | MessageBody::VoteResponse { .. } => true,
                MessageBody::AppendResponse(response) => !response.reject,
                MessageBody::InstallSnapshotResponse { .. } => true,
                _ => false,
            };
        if after_persist {
            self.messages_after_persist.push(message);
        } else {
            self.messages.push(message);
        }
    }

    // ----- role changes -----

    fn reset(&mut self, term: Term) {
        if self.role == Role::Leader {
            // Proposals not yet encoded are still log entries that must reach
            // the disk in order; a new leader may replace them later.
            self.encode_proposals();
        }
        if term != self.term {
            self.term = term;
            self.vote = NODE_NONE;
        }
        self.term_unsynced = false;
        self.leader = NODE_NONE;
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        self.reset_election_timeout();
        self.votes.clear();
        self.transfer_target = NODE_NONE;
        self.progress.clear();
        self.batch_cache.clear();
        self.batch_cache_bytes = 0;
        self.uncommitted_bytes = 0;
        self.read_round_needed = false;
        let pending: Vec<PendingRead> = self.pending_reads.drain(..).collect();
        for read in pending {
            self.drop_read(read.context, read.from);
        }
        for (context, from) in std::mem::take(&mut self.reads_waiting_commit) {
            self.drop_read(context, from);
        }
        self.dropped_reads.append(&mut self.forwarded_reads);
    }

    fn reset_election_timeout(&mut self) {
        let spread = self.config.election_ticks_max - self.config.election_ticks_min;
        let min = self.vote_hold_ticks;
        self.election_timeout = self.rng.range(u64::from(min), u64::from(min) + u64::from(spread)) as u32;
    }

    fn become_follower(&mut self, term: Term, leader: NodeId) {
        self.reset(term);
        self.role = Role::Follower;
        self.leader = leader;
    }

    fn become_pre_candidate(&mut self) {
        // The term does not change: pre-vote must not disturb anyone.
        self.reset(self.term);
        self.role = Role::PreCandidate;
    }

    fn become_candidate(&mut self) {
        self.reset(self.term + 1);
        self.vote = self.id;
        self.role = Role::Candidate;
    }

    fn become_leader(&mut self) {
        assert_ne!(self.role, Role::Follower, "a follower cannot become leader directly");
        assert!(!self.witness, "a witness never leads");
        // Voters that answered the election are alive now (a witness's
        // limit depends on it, see `witness_limit`).
        let answered: Vec<NodeId> = self.votes.keys().copied().collect();
        let self_elected = !self.votes.iter().any(|(&id, &granted)| granted && id != self.id);
        self.reset(self.term);
        self.role = Role::Leader;
        self.term_unsynced = self_elected;
        self.lease_forfeited = false;
        // Its own durable entries count toward commitment in this term.
        self.note_ack();
        self.unverified = false;
        if self.repair == Some(REPAIR_UNKNOWN) {
            self.repair = None;
            self.verified_from = self.log.last_index();
        }
        self.leader = self.id;
        let last = self.log.last_index();
        let mut members = self.conf.members();
        if !members.contains(&self.id) {
            // A leader finishing its own removal tracks itself, but is not
            // counted in quorums.
            members.push(self.id);
        }
        for id in members {
            let mut pr = Progress::new(last + 1);
            if answered.contains(&id) {
                pr.heard_at = Some(self.now);
            }
            if id == self.id {
                pr.match_index = self.log.persisted;
                pr.recent_active = true;
                pr.become_replicate();
                pr.next_index = last + 1;
            }
            self.progress.insert(id, pr);
        }
        self.encoded_last = last;
        // A configuration entry not yet applied may still be pending.
        let unapplied_conf = (self.log.applied + 1..=last)
            .rev()
            .find(|&index| self.log.entry(index).is_some_and(|entry| entry.kind == EntryKind::Config));
        self.pending_conf_index = unapplied_conf.unwrap_or(self.log.committed.max(self.log.applied));
        // Raft thesis 6.4 / paper 5.4.2: commit an entry of the new term. The
        // first leader of a new cluster makes it the bootstrap membership,
        // so a node that joins later learns the whole history from the log.
        if last == 0 {
            let conf = &self.conf;
            let mut ops: Vec<ConfChangeOp> = conf
                .voters
                .iter()
                .map(|&id| if conf.is_witness(id) { ConfChangeOp::AddWitness(id) } else { ConfChangeOp::AddVoter(id) })
                .collect();
            ops.extend(self.conf.learners.iter().map(|&id| ConfChangeOp::AddLearner(id)));
            let data = ConfChange { ops }.encode();
            self.log.push(Entry { index: 1, term: self.term, kind: EntryKind::Config, data });
            self.pending_conf_index = 1;
            crate::membership::conf_after_append(self, 1);
        } else {
            self.log.push(Entry { index: last + 1, term: self.term, kind: EntryKind::Noop, data: Bytes::new() });
        }
        if self.sole_voter() && self.log.persisted == last {
            self.maybe_commit();
        }
    }

    // ----- quorums -----

    fn voter_ids(&self) -> Vec<NodeId> {
        let mut ids: Vec<NodeId> = self.conf.voters.iter().chain(&self.conf.voters_outgoing).copied().collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// The largest value that a majority of `voters` has reached.
    fn majority_value(voters: &[NodeId], value: impl Fn(NodeId) -> u64) -> u64 {
        if voters.is_empty() {
            return u64::MAX; // An empty half agrees with anything.
        }
        let mut values: Vec<u64> = voters.iter().map(|&id| value(id)).collect();
        values.sort_unstable_by(|a, b| b.cmp(a));
        values[voters.len() / 2]
    }

    /// A value reached by a majority of the configuration (both halves during
    /// a joint change).
    fn quorum_value(&self, value: impl Fn(NodeId) -> u64) -> u64 {
        let incoming = Self::majority_value(&self.conf.voters, &value);
        let outgoing = Self::majority_value(&self.conf.voters_outgoing, &value);
        let result = incoming.min(outgoing);
        if result == u64::MAX {
            0
        } else {
            result
        }
    }

    fn quorum_acked_round(&self) -> u64 {
        self.quorum_value(|id| self.progress.get(&id).map_or(0, |pr| pr.acked_round))
    }

    fn quorum_active(&self) -> bool {
        self.quorum_value(|id| u64::from(id == self.id || self.progress.get(&id).is_some_and(|pr| pr.recent_active)))
            == 1
    }

    fn poll(&mut self, from: NodeId, granted: bool) -> VoteResult {
        self.votes.entry(from).or_insert(granted);
        let granted_count = |voters: &[NodeId], votes: &BTreeMap<NodeId, bool>| {
            voters.iter().filter(|id| votes.get(id) == Some(&true)).count()
        };
        let rejected_count = |voters: &[NodeId], votes: &BTreeMap<NodeId, bool>| {
            voters.iter().filter(|id| votes.get(id) == Some(&false)).count()
        };
        let mut result = VoteResult::Won;
        for half in [&self.conf.voters, &self.conf.voters_outgoing] {
            if half.is_empty() {
                continue;
            }
            let majority = half.len() / 2 + 1;
            if granted_count(half, &self.votes) >= majority {
                continue;
            }
            if half.len() - rejected_count(half, &self.votes) < majority {
                return VoteResult::Lost;
            }
            result = VoteResult::Pending;
        }
        result
    }

    /// Advances the commit index to what a quorum has durably matched, but
    /// only by counting entries of the current term (Raft paper 5.4.2).
    fn maybe_commit(&mut self) -> bool {
        let limit = self.witness_limit();
        let index = self.quorum_value(|id| self.counted_match(id, limit));
        if index <= self.log.committed || self.log.term(index) != Some(self.term) {
            return false;
        }
        let old = self.log.committed;
        self.log.commit_to(index);
        let committed_bytes = self.log.bytes_between(old, index);
        self.uncommitted_bytes = self.uncommitted_bytes.saturating_sub(committed_bytes);
        if old < index && !self.reads_waiting_commit.is_empty() && self.log.term(index) == Some(self.term) {
            for (context, from) in std::mem::take(&mut self.reads_waiting_commit) {
                self.leader_read(context, from, ReadMode::ReadIndex);
            }
        }
        self.after_commit(old, index);
        true
    }

    /// What `id` has durably matched, as the commit rule counts it: a
    /// witness's match is capped at `limit` ([`Raft::witness_limit`]).
    fn counted_match(&self, id: NodeId, limit: Index) -> Index {
        let matched = self.progress.get(&id).map_or(0, |pr| pr.match_index);
        if self.conf.is_witness(id) {
            matched.min(limit)
        } else {
            matched
        }
    }

    /// How far a leader sends witnesses entries, and counts their
    /// acknowledgements toward commit: the durability rule of witnesses.
    ///
    /// While another full voter is recently active (it answered within an
    /// election timeout, the check-quorum notion, and is not being sent a
    /// snapshot), the limit is the highest index such a follower has durably
    /// matched. An entry a witness helps commit is then already on a second
    /// full replica besides the leader, so no single failure loses it, and a
    /// witness's log never runs ahead of every active full follower's, so
    /// that follower can win the witness's vote if the leader fails.
    ///
    /// When no other full voter is active, the limit is what the leader
    /// holds durably: the leader and the witnesses keep committing while the
    /// other full replicas are down (2 full + 1 witness survive the loss of
    /// the full follower). Not further: a witness holding an entry that no
    /// full replica holds durably (the leader crashed before writing it)
    /// would refuse its vote to every full voter, forever, since none can
    /// ever get that entry; the randomized test found this. So every entry
    /// a witness holds is durable on a full replica that is at least as up
    /// to date as the witness (or was replaced there by a leader of a later
    /// term, whose log is then more up to date). The cost: the leader's disk
    /// write and the round trip to the witness run in series, not in
    /// parallel, while the full followers are down.
    ///
    /// The price of committing without a full follower: entries committed
    /// so are on one full replica only. If that leader then
    /// fails too, the witness's log is ahead of every other full voter's, so
    /// none of them can win its vote: the group waits, safely, until a full
    /// replica holding those entries (the old leader) returns. Nothing
    /// acknowledged is lost, because nothing is elected without it.
    ///
    /// A full follower receiving a snapshot counts as inactive: its match
    /// index stays put for as long as the transfer takes, and writes would
    /// stall with it. So does one that reports a full disk (see
    /// `raft/no_space.rs`): it takes nothing until it has room.
    pub(crate) fn witness_limit(&self) -> Index {
        let window = u64::from(self.config.election_ticks_min);
        let active_full = self.progress.iter().filter(|&(&id, pr)| {
            id != self.id
                && self.conf.is_full_voter(id)
                && pr.state != ProgressState::Snapshot
                && !pr.refuses_entries(self.now, window)
                && pr.heard_within(self.now, window)
        });
        // A leader that is no voter (a learner leading as a last resort, or
        // one finishing its removal) is no replica the witnesses' rule may
        // lean on: without an active full voter they get nothing new.
        let own = if self.conf.is_voter(self.id) { self.log.persisted } else { self.log.committed };
        active_full.map(|(_, pr)| pr.match_index).max().unwrap_or(own)
    }

    /// The index of the configuration entry from which `id` is a witness
    /// without a break in the configurations this log holds (the log's
    /// start if all of them list it), or `None` if it is no witness now.
    ///
    /// Only entries after it reach `id` without payloads. `id` receives
    /// those only after that entry, so it knows it is a witness (and stays
    /// one, see `Raft::witness`) before it holds any; and if a new leader
    /// truncates the entry, the stripped entries after it go with it. An
    /// entry before it, stripped, could outlive the change that made `id`
    /// a witness, in a log `id` then takes for a full one.
    pub(crate) fn witness_since(&self, id: NodeId) -> Option<Index> {
        let mut since = None;
        for (index, conf) in self.conf_history.iter().rev() {
            if !conf.is_witness(id) {
                break;
            }
            since = Some(*index);
        }
        since
    }

    /// The batch to send witness `to` from `next`, ending at the witness
    /// limit: entries after `since` (see [`Raft::witness_since`]) as
    /// metadata, configuration entries whole and other payloads empty (see
    /// [`EntryBatch::encode_metadata_from`]); entries up to `since` whole.
    fn witness_batch(&self, next: Index, since: Index) -> Option<EntryBatch> {
        let last = self.witness_limit().min(self.encoded_last);
        if next > last {
            return None;
        }
        if next <= since {
            let whole = self.log.range(next, last.min(since), self.config.batch_bytes_max);
            return (whole.len() > 0).then(|| EntryBatch::encode_from(whole));
        }
        // A metadata entry is its header (and a configuration entry its
        // payload too): bound the batch by that, not by payload bytes it
        // does not carry.
        let bytes_max = self.config.batch_bytes_max;
        let last = last.min(next.saturating_add((bytes_max / crate::batch::ENTRY_HEADER_SIZE) as u64));
        let entries = self.log.range(next, last, usize::MAX);
        let mut bytes = crate::batch::BATCH_HEADER_SIZE;
        let count = entries
            .clone()
            .take_while(|entry| {
                let payload = if entry.kind == EntryKind::Config { entry.data.len() } else { 0 };
                bytes += crate::batch::ENTRY_HEADER_SIZE + payload;
                bytes <= bytes_max
            })
            .count()
            .max(1);
        (entries.len() > 0).then(|| EntryBatch::encode_metadata_from(entries.take(count)))
    }

    /// Sends witnesses what a raised witness limit now allows: a full
    /// follower acknowledged more.
    fn send_witnesses(&mut self) {
        let witnesses: Vec<NodeId> =
            self.progress.keys().copied().filter(|&id| id != self.id && self.conf.is_witness(id)).collect();
        for id in witnesses {
            self.send_append(id);
        }
    }

    /// Hook for membership changes that take effect on commit.
    fn after_commit(&mut self, old: Index, new: Index) {
        crate::membership::on_commit(self, old, new);
    }

    fn release_reads(&mut self) {
        if self.pending_reads.is_empty() {
            return;
        }
        let acked = self.quorum_acked_round();
        while let Some(read) = self.pending_reads.front().copied() {
            if read.round > acked {
                break;
            }
            self.pending_reads.pop_front();
            self.serve_read(read.context, read.from, read.index);
        }
    }

    // ----- step -----

    /// Processes one message from a peer. An ignored message is not an error
    /// of the node; the reason says why it was ignored.
    pub fn step(&mut self, message: Message) -> Result<(), Ignored> {
        if message.to != self.id {
            return Err(Ignored("addressed to another node"));
        }
        if message.from == self.id || message.from == NODE_NONE {
            return Err(Ignored("bad sender"));
        }
        if !fields_in_range(&message) {
            return Err(Ignored("a term or index beyond any real cluster's (forged or corrupt)"));
        }
        if let MessageBody::PreVote(request) | MessageBody::Vote(request) = message.body {
            // Whatever its term: an empty log asked for a vote is evidence
            // even in a request too old to answer.
            let pre = matches!(message.body, MessageBody::PreVote(_));
            self.note_evidence(message.from, message.term, request, pre);
            self.answer_new_voter(message.from, request);
        }
        self.step_term(&message)?;
        let from = message.from;
        match message.body {
            MessageBody::PreVote(request) => self.handle_vote_request(from, message.term, request, true),
            MessageBody::Vote(request) => self.handle_vote_request(from, message.term, request, false),
            MessageBody::PreVoteResponse { granted } => self.handle_vote_response(from, granted, true),
            MessageBody::VoteResponse { granted } => self.handle_vote_response(from, granted, false),
            MessageBody::Append(request) => {
                self.accept_leader(from)?;
                self.leader_heard();
                self.handle_append(from, request)
            }
            MessageBody::Heartbeat { commit, read_context } => {
                self.accept_leader(from)?;
                self.leader_heard();
                // A repairing replica's log may hold a stale suffix that the
                // leader's match index (learned before the damage) covers.
                // It tells the leader what it lacks instead: a leader with
                // nothing new to send would otherwise never probe it.
                if self.repair.is_none() {
                    self.log.commit_to(commit.min(self.log.last_index()));
                } else {
                    let last = self.log.last_index();
                    self.send_append_reject(from, last + 1, (last, self.log.term(last).unwrap_or(0)));
                }
                let term = self.term;
                self.send(Message {
                    from: self.id,
                    to: from,
                    term,
                    body: MessageBody::HeartbeatResponse { read_context },
                });
                Ok(())
            }
            MessageBody::AppendResponse(response) => self.handle_append_response(from, response),
            MessageBody::HeartbeatResponse { read_context } => self.handle_heartbeat_response(from, read_context),
            MessageBody::TimeoutNow => {
                if self.role == Role::Leader || from != self.leader {
                    return Err(Ignored("timeout-now not from the current leader"));
                }
                if !self.promotable() {
                    return Err(Ignored("timeout-now to a non-voter"));
                }
                self.hup(true);
                Ok(())
            }
            MessageBody::ReadIndex { context } => {
                if self.role != Role::Leader {
                    let term = self.term;
                    self.send(Message {
                        from: self.id,
                        to: from,
                        term,
                        body: MessageBody::ReadIndexResponse { context, index: 0 },
                    });
                    return Err(Ignored("read index asked of a non-leader"));
                }
                if !self.conf.members().contains(&from) {
                    return Err(Ignored("read index from a non-member"));
                }
                self.leader_read(context, from, ReadMode::ReadIndex);
                Ok(())
            }
            MessageBody::Propose { command } => {
                if self.role != Role::Leader {
                    return Err(Ignored("proposal forwarded to a non-leader"));
                }
                if !self.conf.members().contains(&from) {
                    return Err(Ignored("proposal forwarded by a non-member"));
                }
                // As the shell refuses its own clients' writes then: a full
                // leader that took forwarded commands filled its log's queue
                // with writes its disk could not take, and its driver
                // stopped. Dropped, the follower's caller times out.
                if self.no_space || self.quorum_lacks_space() {
                    return Err(Ignored("forwarded proposal refused: no disk space"));
                }
                let (index, _) =
                    self.propose(command).map_err(|_| Ignored("forwarded proposal refused (busy or transferring)"))?;
                if let Some(pr) = self.progress.get_mut(&from) {
                    pr.forwarded_last = pr.forwarded_last.max(index);
                }
                Ok(())
            }
            MessageBody::ReadIndexResponse { context, index } => {
                let Some(position) = self.forwarded_reads.iter().position(|&c| c == context) else {
                    return Err(Ignored("answer to an unknown read"));
                };
                self.forwarded_reads.swap_remove(position);
                if index == 0 {
                    self.dropped_reads.push(context);
                } else {
                    self.read_states.push(ReadState { context, index });
                }
                Ok(())
            }
            MessageBody::InstallSnapshot(chunk) => {
                self.accept_leader(from)?;
                self.leader_heard();
                self.handle_snapshot_chunk(from, chunk)
            }
            MessageBody::InstallSnapshotResponse { index, term, next_offset, rejected } => {
                self.handle_snapshot_response(from, index, term, next_offset, rejected)
            }
        }
    }

    /// Whether this replica refuses to help elect a new leader because a
    /// leader's lease may rest on its acknowledgement (thesis 4.2.3 and
    /// 6.4.1): it heard a leader less than `election_ticks_min` ago, or it
    /// restarted less than `election_ticks_min` ago. A restarted replica
    /// forgot whom it heard, and may have acknowledged the round a leader's
    /// lease rests on just before it went down: voting at once, it let a
    /// voter cut off from that leader win while the leader still served
    /// lease reads that could not see the new leader's writes (the hazard
    /// of TiKV issue 15035). A first start (term 0) acknowledged nothing.
    fn in_lease(&self) -> bool {
        let min = self.vote_hold_ticks;
        let heard = self.leader != NODE_NONE && self.election_elapsed < min;
        let restarted = self.started_with_term && self.now < u64::from(min);
        self.config.check_quorum && (heard || restarted)
    }

    /// The term rules of Raft paper 5.1 and thesis 9.6 (pre-vote) and 6.2
    /// (leases): adopt a newer term, reject a stale one.
    fn step_term(&mut self, message: &Message) -> Result<(), Ignored> {
        use MessageBody as B;
        if message.term > self.term {
            let is_vote_request = matches!(message.body, B::PreVote(_) | B::Vote(_));
            if is_vote_request {
                let transfer = matches!(message.body, B::PreVote(r) | B::Vote(r) if r.transfer);
                if self.in_lease() && !transfer {
                    // Thesis 4.2.3: a node that heard from a leader recently
                    // does not help depose it.
                    return Err(Ignored("vote request while a leader's lease holds"));
                }
            }
            match &message.body {
                B::PreVote(_) => {}
                B::PreVoteResponse { granted: true } => {}
                B::Append(_) | B::Heartbeat { .. } | B::InstallSnapshot(_) => {
                    self.become_follower(message.term, message.from);
                }
                _ => self.become_follower(message.term, NODE_NONE),
            }
        } else if message.term < self.term {
            match &message.body {
                B::Append(_) | B::Heartbeat { .. }
                    if self.config.check_quorum || self.config.pre_vote || !self.promotable() =>
                {
                    // A stale leader learns our term from this and steps down;
                    // without it a partitioned leader with check-quorum could
                    // keep disrupting after the partition heals. A replica
                    // that may not campaign (in repair, a witness) says so
                    // in any configuration: it cannot make the stale leader
                    // step down by an election of its own, and would ignore
                    // it for ever (a replica whose stalled disk let it run
                    // its term up while it was cut off did, in the
                    // simulation, seed 118 of `three_nodes_with_storage_faults`).
                    let term = self.term;
                    self.send(Message {
                        from: self.id,
                        to: message.from,
                        term,
                        body: MessageBody::AppendResponse(AppendResponse {
                            reject: true,
                            ..AppendResponse::accepted(0)
                        }),
                    });
                }
                B::PreVote(_) => {
                    let term = self.term;
                    self.send(Message {
                        from: self.id,
                        to: message.from,
                        term,
                        body: MessageBody::PreVoteResponse { granted: false },
                    });
                }
                _ => {}
            }
            return Err(Ignored("stale term"));
        }
        Ok(())
    }

    /// A leader's message reached a replica that started with an empty log:
    /// the cluster has a history (a leader always holds an entry of its
    /// term), which this replica may have acknowledged before its data
    /// directory was wiped. It repairs, not voting, until it has caught up
    /// (see [`REPAIR_UNKNOWN`]).
    fn leader_heard(&mut self) {
        if !std::mem::take(&mut self.unverified) || self.log.last_index() > 0 {
            return;
        }
        self.repair = Some(REPAIR_UNKNOWN);
        self.repair_term = self.term;
        self.unknown_repairs += 1;
    }

    /// A leader's message in our term: it is the leader (a candidate of the
    /// same term lost, Raft paper 5.2).
    fn accept_leader(&mut self, from: NodeId) -> Result<(), Ignored> {
        match self.role {
            Role::Leader => Err(Ignored("another leader in my term")),
            Role::Candidate | Role::PreCandidate => {
                self.become_follower(self.term, from);
                Ok(())
            }
            Role::Follower => {
                if self.leader == NODE_NONE {
                    self.leader = from;
                } else if self.leader != from {
                    return Err(Ignored("a second leader in one term"));
                }
                self.election_elapsed = 0;
                Ok(())
            }
        }
    }

    fn handle_vote_request(
        &mut self,
        from: NodeId,
        term: Term,
        request: VoteRequest,
        pre: bool,
    ) -> Result<(), Ignored> {
        // Raft paper 5.2 and 5.4.1: one vote per term, only for a log at
        // least as up to date as ours.
        // A replica in repair may have forgotten entries it acknowledged, so
        // its "up to date" check could pass a candidate lacking them; one
        // whose past is unknown votes only as `unknown_past_vote_allowed`
        // says.
        let can_vote =
            if self.past_unknown() { self.unknown_past_vote_allowed(from) } else { self.repair_vote_allowed(request) }
                && term > self.vote_fence
                && (self.vote == from
                    || (self.vote == NODE_NONE && self.leader == NODE_NONE)
                    || (pre && term > self.term));
        let granted = can_vote && self.log.is_up_to_date(request.last_log_index, request.last_log_term);
        let response_term = if pre && granted { term } else { self.term };
        if granted && !pre {
            self.vote = from;
            self.election_elapsed = 0;
        }
        let body = if pre { MessageBody::PreVoteResponse { granted } } else { MessageBody::VoteResponse { granted } };
        self.send(Message { from: self.id, to: from, term: response_term, body });
        Ok(())
    }

    /// Whether this candidate counts its own (pre-)vote: not while it cannot
    /// know what it acknowledged or whom it voted for (no candidate's own
    /// request can vouch for it; see `unknown_past_vote_allowed`), nor in a
    /// term at or below `vote_fence`. Without its own vote it can still win
    /// with the others', which each voter grants by its own rules.
    fn self_vote_allowed(&self, term: Term) -> bool {
        !self.past_unknown() && term > self.vote_fence
    }

    /// Notes what a (pre-)vote request tells a replica whose past is
    /// unknown (one that started with an empty log as a voter of its
    /// configuration: a new cluster, or a wiped data directory?).
    ///
    /// - A log that is not empty: the cluster has a history, which this
    ///   replica may have helped make before it lost its data. It repairs
    ///   as one that heard a leader does (see [`REPAIR_UNKNOWN`]), and
    ///   votes again once a leader has caught it up, or once the evidence
    ///   below is complete, in whatever order it came.
    /// - An empty log, from every other voter of its configuration: then it
    ///   can have acknowledged nothing that was ever committed (an entry it
    ///   acknowledged came from a leader, whose log still holds it, so that
    ///   leader could not ask with an empty log afterwards), and every
    ///   candidate it may have voted for before asked here in a term at
    ///   least as high as that vote. It votes from then on as any voter,
    ///   in terms above the highest term the askers were at (`vote_fence`),
    ///   which its hard state keeps across a restart.
    ///
    /// This needs each link to deliver in order (or to lose what it does
    /// not deliver in order): a request sent before this replica lost its
    /// data then never arrives after the messages its sender sent later,
    /// such as the entries this replica acknowledged. The node's peer links
    /// keep order and drop what a down link would send; the simulator's
    /// network reorders, but loses every packet to a node that crashes.
    fn note_evidence(&mut self, from: NodeId, term: Term, request: VoteRequest, pre: bool) {
        if !self.past_unknown() {
            return;
        }
        if request.last_log_index > 0 {
            if std::mem::take(&mut self.unverified) {
                self.repair = Some(REPAIR_UNKNOWN);
                self.repair_term = self.term.max(term);
                self.unknown_repairs += 1;
            }
            // The evidence gathered so far stays: it is about what the
            // askers held after this replica lost its data, whatever came
            // since (a voter that missed a new cluster's first round, cut
            // off, still completes it once the others that lack its vote
            // ask again; simulator seed 600021 of `five_nodes`).
            return;
        }
        // The asker's own term: a pre-vote asks for the term after it.
        let asker_term = if pre { term.saturating_sub(1) } else { term };
        let asked = self.evidence.entry(from).or_insert(0);
        *asked = (*asked).max(asker_term);
        if !self.evidence_missing().is_empty() {
            // Tell the voters this replica's empty log at once: a new
            // cluster's voters would otherwise each wait for the others'
            // election timeouts before the first election could succeed.
            if self.unverified
                && self.reported_at.is_none_or(|at| self.now >= at + u64::from(self.config.election_ticks_min))
            {
                self.reported_at = Some(self.now);
                self.report_log();
            }
            return;
        }
        let fence = self.evidence.values().copied().max().unwrap_or(0);
        self.unverified = false;
        self.evidence.clear();
        if self.repair == Some(REPAIR_UNKNOWN) {
            self.repair = None;
            self.verified_from = self.log.last_index();
        }
        self.vote_fence = fence;
        // The hard state carries the fence across a restart: its term, with
        // the term's vote spent.
        if self.term < fence {
            self.become_follower(fence, NODE_NONE);
        }
        if self.term == fence && self.vote == NODE_NONE {
            self.vote = self.id;
        }
        // The others may still wait for this replica's empty log (a
        // message of the round may have been lost): tell them once more.
        if self.log.last_index() == 0 {
            self.reported_at = Some(self.now);
            self.report_log();
        }
    }

    /// The voters of this replica's configuration, other than itself, that
    /// have not asked it for a vote with an empty log since it started.
    fn evidence_missing(&self) -> Vec<NodeId> {
        let mut missing = self.voter_ids(); // sorted, each once
        missing.retain(|id| *id != self.id && !self.evidence.contains_key(id));
        missing
    }

    /// A node that is no voter of its own configuration (one started to
    /// join, waiting to be added) tells a voter that asks with an empty log
    /// what its own log holds, once per election timeout: that voter may be
    /// starting a new cluster whose configuration lists this node, and
    /// votes only once every voter listed there has told it (see
    /// `note_evidence`). Without this, a node that bootstrapped a cluster
    /// from DNS while the other listed nodes found it and chose to join
    /// would wait for them for ever.
    fn answer_new_voter(&mut self, from: NodeId, request: VoteRequest) {
        if request.last_log_index > 0 || self.conf.is_voter(self.id) {
            return;
        }
        if self.reported_at.is_some_and(|at| self.now < at + u64::from(self.config.election_ticks_min)) {
            return;
        }
        self.reported_at = Some(self.now);
        let request = self.vote_request(false);
        let term = self.term + 1;
        self.send(Message { from: self.id, to: from, term, body: MessageBody::PreVote(request) });
    }

    /// Whether a replica that does not know what it acknowledged or whom it
    /// voted for (it started with an empty log: a wiped data directory?) may
    /// vote for this candidate. Only when, in every half of its
    /// configuration that it is a voter of, the candidate is the one other
    /// voter (a group of two).
    ///
    /// A report from another voter of what its log holds, or of its term,
    /// cannot vouch for such a vote: the voter may acknowledge an entry, or
    /// vote, after its report, and this replica's lost acknowledgement or
    /// vote may complete a majority with it (engine test
    /// `t81_stale_report`). Only a candidate's own vote request vouches for
    /// something: it has moved to the request's term, so its log holds
    /// every entry it acknowledged in an earlier term, and it voted for
    /// itself in this one. In a group of two, that is every other voter of
    /// any majority this replica could have completed. In a larger group a
    /// majority of the others would have to vouch, and they would then
    /// elect the candidate without this replica: so it never votes there,
    /// and waits for a leader to catch it up.
    fn unknown_past_vote_allowed(&self, from: NodeId) -> bool {
        let halves = [&self.conf.voters, &self.conf.voters_outgoing];
        halves.into_iter().filter(|half| half.contains(&self.id)).all(|half| half.len() == 2 && half.contains(&from))
    }

    /// Whether a replica in repair may vote for a candidate with this log
    /// (always true when not in repair). Only for one that surely holds
    /// every entry this replica acknowledged that is or may yet be
    /// committed (all at or below the target), which it shows in one of
    /// two ways:
    ///
    /// - Its last entry has a term at or above `repair_term` (the last term
    ///   in which this replica acknowledged anything) and an index at or
    ///   above the target: that entry came from the leader of its term,
    ///   which held every entry committed before (Leader Completeness), and
    ///   Log Matching gives the candidate that leader's log up to there.
    ///   Without this, a replica that repairs after a false alarm (a log
    ///   legitimately shortened by a new leader, then a crash) could leave a
    ///   group with no majority to elect anyone.
    /// - Its commit index is at or above the target: it holds the committed
    ///   entry at every index up to the target, and one index never holds
    ///   two committed entries, so whatever this replica acknowledged there
    ///   is either that entry or never committed. Without this, a replica
    ///   whose `repair_term` is the term it led (it counts its own log from
    ///   its election on) but whose entries of that term all perished
    ///   refuses every candidate when no other voter holds an entry of that
    ///   term: seed 6339 of `three_nodes_with_storage_faults` stalled for
    ///   good that way, with every committed entry on two healthy replicas.
    fn repair_vote_allowed(&self, request: VoteRequest) -> bool {
        self.repair.is_none_or(|target| {
            (request.last_log_term >= self.repair_term && request.last_log_index >= target) || request.commit >= target
        })
    }

    fn handle_vote_response(&mut self, from: NodeId, granted: bool, pre: bool) -> Result<(), Ignored> {
        let expected = if pre { Role::PreCandidate } else { Role::Candidate };
        if self.role != expected {
            return Err(Ignored("vote response while not campaigning"));
        }
        if !self.conf.is_voter(from) {
            return Err(Ignored("vote from a non-voter"));
        }
        match self.poll(from, granted) {
            VoteResult::Won if pre => {
                self.become_candidate();
                self.run_election(false, false);
            }
            VoteResult::Won => self.become_leader(),
            VoteResult::Lost => self.become_follower(self.term, NODE_NONE),
            VoteResult::Pending => {}
        }
        Ok(())
    }

    fn handle_append(&mut self, from: NodeId, request: AppendRequest) -> Result<(), Ignored> {
        let AppendRequest { prev_index, prev_term, commit, entries: batch } = request;
        // A leader of term T holds only entries of terms up to T (the message
        // term is ours now): a later term is forged or corrupt, and accepting
        // it would let this node later lead a term below its own last entry.
        if prev_term > self.term || batch.as_ref().is_some_and(|batch| batch.last_term() > self.term) {
            return Err(Ignored("append carries entries from a term after the sender's"));
        }
        if let Some(batch) = &batch {
            if batch.first_index() != prev_index + 1 {
                return Err(Ignored("append entries do not follow prev_index"));
            }
            if batch.first_term() < prev_term {
                return Err(Ignored("append entries have a term below prev_term"));
            }
        }
        if self.no_space {
            // It could not write the entries, nor anything it would
            // acknowledge: it says so and changes nothing (see `no_space.rs`).
            self.send_append_no_space(from, prev_index);
            return Ok(());
        }
        if self.refuses_while_applying() {
            self.send_append_while_applying(from, prev_index);
            return Ok(());
        }
        let last_new = prev_index + batch.as_ref().map_or(0, |batch| u64::from(batch.count()));
        // Entries at or below our commit index are known to match (Log
        // Matching): start the comparison after them instead of rejecting.
        let committed = self.log.committed;
        let (check_index, check_term) = if prev_index < committed {
            if last_new <= committed {
                // It holds the leader's log through `last_new` (committed
                // entries match): a repair to an unknown target ends here
                // as below, or the leader, which infers the end from such
                // an append (`Progress::caught_up`), would count a voter
                // still in it.
                self.end_unknown_repair(last_new, commit);
                self.send_append_ack(from, committed);
                return Ok(());
            }
            (committed, self.log.term(committed).expect("the committed index is in the log or the snapshot"))
        } else {
            (prev_index, prev_term)
        };
        if !self.log.matches(check_index, check_term) {
            let hint = self.log.find_conflict_by_term(check_index.min(self.log.last_index()), check_term);
            self.send_append_reject(from, check_index, hint);
            return Ok(());
        }
        if let Some(mut batch) = batch {
            if self.witness {
                // A leader sends a witness metadata only; a witness keeps
                // it so even if an older or confused sender did not.
                batch = batch.metadata_only();
            }
            // Raft paper 5.3: skip entries we already hold, truncate at the
            // first conflict, append the rest.
            let conflict = batch
                .entries()
                .find(|entry| entry.index > check_index && !self.log.matches(entry.index, entry.term))
                .map(|entry| (entry.index, entry.term));
            if let Some((first, first_term)) = conflict {
                if first <= self.log.committed {
                    return Err(Ignored("append conflicts with a committed entry"));
                }
                if self.log.term(first - 1).is_some_and(|term| term > first_term) {
                    return Err(Ignored("append would make log terms decrease"));
                }
                self.log.truncate_from(first);
                let truncated_conf = self.last_conf_index() >= first;
                // The common case keeps the received bytes as they are, so
                // the follower persists exactly what the leader encoded.
                let batch = if first == batch.first_index() {
                    batch
                } else {
                    let rest: Vec<Entry> = batch.entries().filter(|entry| entry.index >= first).collect();
                    EntryBatch::encode(&rest)
                };
                let mut has_conf = truncated_conf;
                for entry in batch.entries() {
                    has_conf |= entry.kind == EntryKind::Config;
                    self.log.push(entry);
                }
                self.unstable_batches.push(batch);
                if has_conf {
                    self.forget_confs_from(first);
                    crate::membership::conf_after_append(self, first);
                }
            }
        }
        if commit > self.log.committed {
            self.log.commit_to(commit.min(last_new));
        }
        // The log now matches the leader's through `last_new`.
        if self.repair.is_some_and(|target| last_new >= target) {
            self.repair = None;
        }
        // Or it holds the log of a leader of a later term than any in which
        // it acknowledged anything, through an entry of that term: whatever
        // it acknowledged that was committed, was committed in an earlier
        // term, so that leader's log holds it before its first entry of its
        // own term (Leader Completeness). The target itself may never come:
        // what it acknowledged beyond that may never have been committed and
        // the new leader may not write that far (seed 101000 of
        // `three_nodes_with_storage_faults` waited forever).
        if self.repair.is_some_and(|target| target != REPAIR_UNKNOWN)
            && self.term > self.repair_term
            && self.log.term(last_new) == Some(self.term)
        {
            self.repair = None;
        }
        // A replica that does not know what it acknowledged (a wiped one).
        self.end_unknown_repair(last_new, commit);
        self.send_append_ack(from, last_new);
        Ok(())
    }

    /// Ends a repair to an unknown target once this replica holds the
    /// leader's log through `last_new`, an entry of the leader's term, and
    /// `last_new` is at or past the leader's commit index `commit`: every
    /// entry committed in an earlier term precedes that entry (Leader
    /// Completeness), and every one of this term is at or below the
    /// leader's commit index, which only the leader advances.
    fn end_unknown_repair(&mut self, last_new: Index, commit: Index) {
        if self.repair == Some(REPAIR_UNKNOWN) && last_new >= commit && self.log.term(last_new) == Some(self.term) {
            self.repair = None;
            self.verified_from = last_new;
        }
    }

    /// Rejects an append at `index` (its `prev_index`) with the back-tracking
    /// hint; `missing` when this log ends before `index`.
    fn send_append_reject(&mut self, to: NodeId, index: Index, (hint_index, hint_term): (Index, Term)) {
        let term = self.term;
        let missing = index > self.log.last_index();
        self.send(Message {
            from: self.id,
            to,
            term,
            body: MessageBody::AppendResponse(AppendResponse {
                reject: true,
                hint_index,
                hint_term,
                missing,
                ..AppendResponse::accepted(index)
            }),
        });
    }

    fn send_append_ack(&mut self, to: NodeId, index: Index) {
        if self.witness_counted_as_full() {
            // It keeps metadata only, and the leader would count its
            // acknowledgement as a full replica's: a commit could then rest
            // on the leader's disk alone. It acknowledges nothing (its
            // heartbeat answers and votes stay: they carry no entry), so
            // the group commits on its full replicas, or waits.
            return;
        }
        self.note_ack();
        self.send_to(to, MessageBody::AppendResponse(AppendResponse::accepted(index)));
    }

    /// This replica acknowledges something in the current term (see
    /// `HardState::ack_term`): the hard state saying so is synced in the
    /// Ready that carries the acknowledgement, before it leaves.
    pub(super) fn note_ack(&mut self) {
        self.ack_term = self.ack_term.max(self.term);
    }

    /// The progress of `from` for an answer that only a leader expects; the
    /// answer proves the peer is alive, which check-quorum counts.
    pub(super) fn answering_peer(&mut self, from: NodeId) -> Result<&mut Progress, Ignored> {
        if self.role != Role::Leader {
            return Err(Ignored("an answer to a leader while not leader"));
        }
        let now = self.now;
        let pr = self.progress.get_mut(&from).ok_or(Ignored("an answer from a non-member"))?;
        pr.recent_active = true;
        pr.heard_at = Some(now);
        Ok(pr)
    }

    fn handle_append_response(&mut self, from: NodeId, response: AppendResponse) -> Result<(), Ignored> {
        let pr = self.answering_peer(from)?;
        if response.no_space {
            return self.handle_no_space_response(from, response.applying);
        }
        // Any other answer to an append means the follower takes them again.
        let had_no_space = pr.no_space_at.take().is_some();
        if response.reject {
            return self.handle_append_rejection(from, response);
        }
        if response.index > self.log.last_index() {
            return Err(Ignored("acknowledges entries the leader never had"));
        }
        let witness = self.conf.is_witness(from);
        let pr = self.progress.get_mut(&from).expect("present");
        // Before the window frees the batch (see `Progress::caught_up`);
        // once per term, not on every answer.
        if !pr.caught_up {
            pr.caught_up = self.log.term(response.index) == Some(self.term)
                && pr.commit_carried(response.index).is_some_and(|commit| response.index >= commit);
        }
        if (witness || had_no_space) && pr.state == ProgressState::Probe && response.index + 1 >= pr.next_index {
            // A witness held back by its limit is probed with an empty
            // append, whose acceptance matches nothing new: it still proves
            // the logs agree, so replicate, or the witness would wait for the
            // next heartbeat each time its limit moves. The same holds for a
            // follower that had no space and, holding every entry, took the
            // empty probe that found it with room again.
            pr.become_replicate();
        }
        if pr.maybe_update(response.index) {
            match pr.state {
                ProgressState::Probe => pr.become_replicate(),
                ProgressState::Snapshot if pr.match_index >= pr.pending_snapshot => pr.become_replicate(),
                _ => {}
            }
            self.maybe_commit();
            if from == self.transfer_target && self.progress[&from].match_index == self.log.last_index() {
                self.send_timeout_now(from);
            }
            if self.conf.is_full_voter(from) {
                self.send_witnesses();
            }
        }
        self.send_append(from);
        // A follower that forwarded a command and whose acknowledgement came
        // after the commit that covers it is owed the commit index: the next
        // Ready tells it (`send_commit`, or the entries proposed meanwhile,
        // which carry it). Without this nothing may make a Ready before the
        // next tick, and such a follower answers its client only when it
        // applies the command. Any other follower hears it at the tick.
        self.commit_owed |= self
            .progress
            .get(&from)
            .is_some_and(|pr| pr.state == ProgressState::Replicate && pr.awaits_commit(self.log.committed));
        Ok(())
    }

    /// A follower's log does not match at `response.index` (or it lost
    /// entries it acknowledged): back off, using its hint, and probe again.
    fn handle_append_rejection(&mut self, from: NodeId, response: AppendResponse) -> Result<(), Ignored> {
        let next_probe = if response.hint_term > 0 {
            self.log.find_conflict_by_term(response.hint_index, response.hint_term).0
        } else {
            response.hint_index
        };
        if response.index > self.log.last_index() {
            self.nudge_repair();
        }
        let pr = self.progress.get_mut(&from).expect("present");
        if response.missing && response.index <= pr.match_index {
            // The follower lost entries it had acknowledged: what it
            // holds is no longer known, so it counts for nothing until it
            // acknowledges again (or this is a stale answer, and it will).
            pr.forget_match(next_probe);
            self.send_append(from);
            return Ok(());
        }
        if pr.maybe_decrease_to(response.index, next_probe) {
            if pr.state == ProgressState::Replicate {
                pr.become_probe();
            }
            self.send_append(from);
            return Ok(());
        }
        Err(Ignored("stale rejection"))
    }

    /// A follower asks for entries past the end of this leader's log: only
    /// a replica in repair does (it asks for the entry after its last on
    /// every heartbeat), when its target lies past this log because what
    /// it acknowledged there was never committed and a leader of a later
    /// term replaced it. An empty entry, one at a time, grows the log until
    /// it reaches the target; without it the replica would stay in repair,
    /// not voting, until clients wrote that far (seed 101000 of
    /// `three_nodes_with_storage_faults`).
    fn nudge_repair(&mut self) {
        if self.log.committed < self.repair_nudge || self.transfer_target != NODE_NONE {
            return;
        }
        if let Ok((index, _)) = self.propose_entry(EntryKind::Noop, Bytes::new()) {
            self.repair_nudge = index;
        }
    }

    fn handle_heartbeat_response(&mut self, from: NodeId, round: u64) -> Result<(), Ignored> {
        let sent_round = self.round;
        let pr = self.answering_peer(from)?;
        pr.probe_sent = false;
        if round > sent_round {
            return Err(Ignored("acknowledges a round never sent"));
        }
        pr.acked_round = pr.acked_round.max(round);
        if pr.state == ProgressState::Snapshot {
            self.snapshot_heartbeat(from);
            self.release_reads();
            return Ok(());
        }
        let pr = self.progress.get_mut(&from).expect("present");
        if pr.state == ProgressState::Replicate
            && pr.inflight.is_full(self.config.inflight_batches_max, self.config.inflight_bytes_max)
        {
            pr.inflight.free_first();
        }
        // A follower that said its disk is full is probed even when it has
        // every entry: its answer tells when it has room again.
        if pr.match_index < self.log.last_index() || pr.no_space_at.is_some() {
            self.send_append_or_empty(from);
        }
        self.release_reads();
        Ok(())
    }

    /// Checks the engine's invariants; a failure is a bug. Tests and the
    /// simulator call this after every step.
    pub fn check_invariants(&self) {
        let log = &self.log;
        assert!(log.applied <= log.committed, "applied {} > committed {}", log.applied, log.committed);
        assert!(log.committed <= log.last_index(), "committed {} > last {}", log.committed, log.last_index());
        assert!(log.persisted <= log.handed, "persisted {} > handed {}", log.persisted, log.handed);
        assert!(log.handed <= log.last_index(), "handed {} > last {}", log.handed, log.last_index());
        assert!(self.encoded_last <= log.last_index() || self.role != Role::Leader);
        assert!(!self.witness || self.role != Role::Leader, "a witness never leads");
        log.check_payloads();
        if let Some(target) = self.repair {
            assert!(target > log.committed, "repair target {target} <= committed {}", log.committed);
            assert_ne!(self.role, Role::Leader, "a replica in repair never leads");
        }
        match self.role {
            Role::Leader => {
                assert_eq!(self.leader, self.id, "a leader knows it leads");
                assert_eq!(self.vote, self.id, "a leader voted for itself");
                let own = &self.progress[&self.id];
                assert!(own.match_index <= log.persisted, "leader counts undurable entries");
                for (id, pr) in &self.progress {
                    assert!(
                        pr.match_index < pr.next_index,
                        "peer {id}: match {} >= next {}",
                        pr.match_index,
                        pr.next_index
                    );
                    assert!(pr.match_index <= log.last_index(), "peer {id}: match past the leader's log");
                }
            }
            Role::Candidate => assert_eq!(self.vote, self.id, "a candidate voted for itself"),
            Role::PreCandidate | Role::Follower => assert!(self.progress.is_empty()),
        }
    }
}

/// Terms and indices at or above this are refused on input: no real cluster
/// reaches them, and refusing them keeps every `+ 1` in the engine exact.
pub const TERM_INDEX_LIMIT: u64 = 1 << 62;

fn fields_in_range(message: &Message) -> bool {
    let ok = |value: u64| value < TERM_INDEX_LIMIT;
    ok(message.term)
        && match &message.body {
            MessageBody::PreVote(r) | MessageBody::Vote(r) => {
                ok(r.last_log_index) && ok(r.last_log_term) && ok(r.commit)
            }
            MessageBody::Append(r) => {
                ok(r.prev_index)
                    && ok(r.prev_term)
                    && ok(r.commit)
                    && r.entries.as_ref().is_none_or(|b| ok(b.last_index()) && ok(b.last_term()))
            }
            MessageBody::AppendResponse(r) => ok(r.index) && ok(r.hint_index) && ok(r.hint_term),
            MessageBody::Heartbeat { commit, .. } => ok(*commit),
            MessageBody::ReadIndexResponse { index, .. } => ok(*index),
            MessageBody::InstallSnapshot(chunk) => ok(chunk.meta.index) && ok(chunk.meta.term),
            MessageBody::InstallSnapshotResponse { index, term, .. } => ok(*index) && ok(*term),
            _ => true,
        }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum VoteResult {
    Won,
    Lost,
    Pending,
}
