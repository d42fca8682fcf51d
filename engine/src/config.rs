//! The engine's configuration: membership at bootstrap, timing in ticks, flow
//! control bounds, feature switches and the RNG seed.

use crate::types::NodeId;

/// Everything that shapes one engine. Times are in ticks: the shell decides
/// how long a tick is (the node uses 10 ms by default).
#[derive(Clone, Debug)]
pub struct Config {
    pub id: NodeId,
    /// Voters at bootstrap. Ignored once the log or a snapshot holds a
    /// configuration.
    pub voters: Vec<NodeId>,
    /// Learners at bootstrap.
    pub learners: Vec<NodeId>,
    /// Voters at bootstrap that are witnesses (each also listed in
    /// `voters`). Whether this node is a witness is not configured here
    /// but read from the configuration in force, so that every node agrees.
    pub witnesses: Vec<NodeId>,
    /// This node runs as a witness (its data directory holds entry metadata
    /// and no state machine): it never campaigns and applies nothing, even
    /// while the configuration does not (yet, or any more) list it as a
    /// witness. A node is also a witness, without this, from the moment a
    /// configuration lists it as one; this flag is how a shell keeps that
    /// across a restart after the node was removed.
    pub witness: bool,
    /// A follower starts an election after a random timeout in
    /// `[election_ticks_min, election_ticks_max)`.
    pub election_ticks_min: u32,
    pub election_ticks_max: u32,
    /// A leader sends heartbeats every `heartbeat_ticks`.
    pub heartbeat_ticks: u32,
    /// AppendEntries messages in flight per follower, at most.
    pub inflight_batches_max: usize,
    /// Bytes of entries in flight per follower, at most (one batch is always
    /// allowed, so a single large entry still moves).
    pub inflight_bytes_max: usize,
    /// Entries per encoded batch are capped at this many bytes (one entry
    /// always fits, however large).
    pub batch_bytes_max: usize,
    /// Proposed but uncommitted payload bytes a leader accepts before it
    /// answers `Busy`: bounds memory when followers or the disk fall behind.
    pub uncommitted_bytes_max: usize,
    /// Committed entries handed to the shell per `Ready`, in bytes.
    pub apply_bytes_max: usize,
    /// Pre-vote (Raft thesis 9.6): a node that cannot win does not disturb the
    /// cluster's term.
    pub pre_vote: bool,
    /// Check-quorum: a leader that has not heard from a quorum within an
    /// election timeout steps down, and followers that heard from a leader
    /// recently, or restarted recently, refuse votes. Lease reads require
    /// it.
    pub check_quorum: bool,
    /// Lease reads are served for `election_ticks_min - lease_drift_ticks`
    /// after a heartbeat round that a quorum acknowledged. The clock
    /// assumption: no node's tick runs more than `lease_drift_ticks` per
    /// election timeout faster than the leader's (a follower whose ticks run
    /// fast votes before the leader's lease has run out; one whose ticks run
    /// slow, or fall behind, only refuses votes for longer). A shell whose
    /// ticks can fall behind real time checks the lease in real time too
    /// ([`crate::Raft::lease_sent_at`]).
    pub lease_drift_ticks: u32,
    /// A learner is promoted only if its log is within this many entries of
    /// the leader's.
    pub promotion_lag_max: u64,
    /// The shell is asked for a snapshot once this many entries were applied
    /// since the last one; this bounds the in-memory log and the WAL.
    pub snapshot_entries: u64,
    /// Up to this many entries more before a snapshot, drawn per snapshot
    /// from the seed: replicas that apply the same entries would otherwise
    /// all serialize and write their state at the same moment. 0: none.
    pub snapshot_entries_jitter: u64,
    /// A snapshot is due only once the entries applied since the last one
    /// hold at least this many times the last snapshot's size in bytes, so
    /// with a large state and small writes, snapshots do not rewrite the
    /// whole state more often than the log grows by that much. 0: off.
    pub snapshot_log_factor: u64,
    /// A snapshot is also due once the entries applied since the last one
    /// hold this many payload bytes, however few they are (the factor rule
    /// still applies), and the tail kept below a snapshot holds at most a
    /// quarter of it: counted in entries alone, the in-memory log would grow
    /// to `snapshot_entries` times the value size (6.4 GiB of 64 KiB
    /// values). 0: off.
    pub snapshot_log_bytes: u64,
    /// The most payload bytes the in-memory log holds past what it must
    /// (0: off, payloads go only with compaction). Beyond it the oldest
    /// applied entries drop their payloads, except what a leader's
    /// recently heard followers have yet to acknowledge or what follows a
    /// snapshot being sent. A follower that then needs a dropped entry
    /// gets a snapshot, a fresh one if the stored one is older. Without it
    /// the log since a snapshot is held whole: with a large state, the
    /// snapshot rule (`snapshot_log_factor`) lets that grow to several
    /// times the state.
    pub log_memory_bytes: u64,
    /// Entries kept in the log below a new snapshot, so a follower that is
    /// only a little behind catches up from the log instead of a snapshot.
    pub compaction_tail: u64,
    /// Bytes per InstallSnapshot chunk.
    pub snapshot_chunk_bytes: u64,
    /// InstallSnapshot chunks in flight per follower, at most.
    pub snapshot_chunks_inflight_max: u64,
    /// Seed of the engine's own RNG (election timeouts): a run is reproducible
    /// from its seeds.
    pub seed: u64,
}

impl Config {
    /// Sensible defaults for a member `id` of a cluster of `voters`.
    pub fn new(id: NodeId, voters: Vec<NodeId>) -> Config {
        Config {
            id,
            voters,
            learners: Vec::new(),
            witnesses: Vec::new(),
            witness: false,
            election_ticks_min: 10,
            election_ticks_max: 20,
            heartbeat_ticks: 1,
            inflight_batches_max: 256,
            inflight_bytes_max: 32 << 20,
            batch_bytes_max: 1 << 20,
            uncommitted_bytes_max: 256 << 20,
            apply_bytes_max: 16 << 20,
            pre_vote: true,
            check_quorum: true,
            lease_drift_ticks: 2,
            promotion_lag_max: 1000,
            snapshot_entries: 100_000,
            snapshot_entries_jitter: 0,
            snapshot_log_factor: 0,
            snapshot_log_bytes: 0,
            log_memory_bytes: 0,
            compaction_tail: 5_000,
            snapshot_chunk_bytes: 1 << 20,
            snapshot_chunks_inflight_max: 4,
            seed: id,
        }
    }

    /// Refuses a configuration the engine cannot run with.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.id == crate::types::NODE_NONE {
            return Err(ConfigError("node id 0 is reserved for \"nobody\"".into()));
        }
        if self.heartbeat_ticks == 0 {
            return Err(ConfigError("heartbeat_ticks must be at least 1".into()));
        }
        if self.election_ticks_min <= self.heartbeat_ticks {
            return Err(ConfigError(format!(
                "election_ticks_min ({}) must exceed heartbeat_ticks ({})",
                self.election_ticks_min, self.heartbeat_ticks
            )));
        }
        if self.election_ticks_max <= self.election_ticks_min {
            return Err(ConfigError(format!(
                "election_ticks_max ({}) must exceed election_ticks_min ({})",
                self.election_ticks_max, self.election_ticks_min
            )));
        }
        if self.lease_drift_ticks >= self.election_ticks_min {
            return Err(ConfigError("lease_drift_ticks must be below election_ticks_min".into()));
        }
        if self.snapshot_entries == 0 || self.snapshot_chunk_bytes == 0 || self.snapshot_chunks_inflight_max == 0 {
            return Err(ConfigError("snapshot interval, chunk size and chunk window must be positive".into()));
        }
        if self.inflight_batches_max == 0 || self.inflight_bytes_max == 0 || self.batch_bytes_max == 0 {
            return Err(ConfigError("in-flight window and batch size must be positive".into()));
        }
        if self.voters.contains(&crate::types::NODE_NONE) || self.learners.contains(&crate::types::NODE_NONE) {
            return Err(ConfigError("node id 0 cannot be a member".into()));
        }
        if self.voters.iter().any(|v| self.learners.contains(v)) {
            return Err(ConfigError("a node cannot be both voter and learner".into()));
        }
        if let Some(witness) = self.witnesses.iter().find(|w| !self.voters.contains(w)) {
            return Err(ConfigError(format!("witness {witness} must also be listed as a voter")));
        }
        if self.witness && self.voters.contains(&self.id) && !self.witnesses.contains(&self.id) {
            return Err(ConfigError(format!(
                "node {} runs as a witness but the bootstrap membership makes it a full voter",
                self.id
            )));
        }
        crate::types::ConfState::with_witnesses(
            self.voters.iter().copied(),
            self.witnesses.iter().copied(),
            self.learners.iter().copied(),
        )
        .check_witnesses()
        .map_err(ConfigError)?;
        Ok(())
    }
}

/// A configuration the engine refuses, with what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid engine configuration: {0}")]
pub struct ConfigError(pub String);

/// The engine's private, seeded random number generator (SplitMix64): no
/// global randomness, so a test replays exactly from its seed.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value in `[low, high)`; `high > low`.
    pub fn range(&mut self, low: u64, high: u64) -> u64 {
        debug_assert!(high > low);
        low + self.next_u64() % (high - low)
    }
}
