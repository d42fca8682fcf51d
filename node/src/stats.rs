//! Per-stage latency histograms of one shard, shown by `node admin stats`.
//!
//! The stages of a write on the leader, each measured where it happens:
//! - `queued`: from the request's arrival (decoded on its client
//!   connection, before the hops to the core's router and the shard) to its
//!   proposal to the engine;
//! - `wal_write_sync`: from handing a batch to the WAL to its durability
//!   (the synced write, including waiting behind earlier batches);
//! - `replication`: from the proposal to the entry being committed (the
//!   round trip to a quorum, with the local write in parallel);
//! - `apply`: applying the entry to the state machine (each entry of a
//!   committed batch counts the batch's mean: one clock read per batch, not
//!   two per entry);
//! - `total`: from arrival to the answer being queued to the client.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{json, Value};

/// Highest latency recorded without clamping: one minute.
const LATENCY_MAX_MICROS: u64 = 60_000_000;

/// One latency histogram in microseconds.
pub struct Stage {
    histogram: Histogram<u64>,
}

impl Stage {
    fn new() -> Stage {
        Stage { histogram: Histogram::new_with_bounds(1, LATENCY_MAX_MICROS, 3).expect("valid histogram bounds") }
    }

    pub fn record(&mut self, elapsed: Duration) {
        let micros = (elapsed.as_micros() as u64).clamp(1, LATENCY_MAX_MICROS);
        self.histogram.record(micros).expect("clamped into range");
    }

    /// Records `elapsed` `count` times.
    pub fn record_n(&mut self, elapsed: Duration, count: u64) {
        let micros = (elapsed.as_micros() as u64).clamp(1, LATENCY_MAX_MICROS);
        self.histogram.record_n(micros, count).expect("clamped into range");
    }

    fn summary(&self) -> Value {
        let h = &self.histogram;
        if h.is_empty() {
            return json!({ "count": 0, "sum_us": 0, "buckets": self.buckets() });
        }
        json!({
            "sum_us": (h.mean() * h.len() as f64).round() as u64,
            "buckets": self.buckets(),
            "count": h.len(),
            "p50_us": h.value_at_quantile(0.5),
            "p90_us": h.value_at_quantile(0.9),
            "p99_us": h.value_at_quantile(0.99),
            "p999_us": h.value_at_quantile(0.999),
            "max_us": h.max(),
            "mean_us": (h.mean() * 10.0).round() / 10.0,
        })
    }
}

/// Upper bounds of the cumulative buckets exported with each stage (what
/// the Prometheus endpoint turns into a histogram in seconds): 50 us to
/// 10 s, roughly 1-2.5-5 per decade, where a synced write's latency moves.
pub const BUCKET_BOUNDS_US: [u64; 17] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
    5_000_000, 10_000_000,
];

impl Stage {
    /// Cumulative counts at or below each of [`BUCKET_BOUNDS_US`] (an HDR
    /// histogram keeps 3 significant digits, so a bound splits values
    /// within 0.1 % of it approximately).
    fn buckets(&self) -> Vec<u64> {
        BUCKET_BOUNDS_US.iter().map(|&bound| self.histogram.count_between(0, bound)).collect()
    }
}

/// The histograms and counters of one shard.
pub struct ShardStats {
    pub queued: Stage,
    pub wal_write_sync: Stage,
    pub replication: Stage,
    pub apply: Stage,
    pub total: Stage,
    pub reads: Stage,
    /// Capturing the state machine for a snapshot, on the driver's thread.
    pub snapshot_capture: Stage,
    /// Serializing a captured snapshot, on a helper thread.
    pub snapshot_serialize: Stage,
    /// Restoring the state machine from a snapshot file: at start and, for
    /// a state machine without a restorer, an install, on the driver; an
    /// install with a restorer, on a helper thread.
    pub snapshot_restore: Stage,
    /// The driver's own time for each step of an install's restore:
    /// opening the file and handing it over, adopting the built state (or,
    /// without a restorer, the whole restore). No ticks, messages or
    /// answers happen meanwhile.
    pub snapshot_restore_blocked: Stage,
    /// Client writes this node answered once applied: its own clients'
    /// (as leader) and those it forwarded (as follower); not every write
    /// the shard applied.
    pub writes_applied: u64,
    /// Session writes this follower forwarded to the leader.
    pub writes_forwarded: u64,
    /// Group entries this leader proposed (several writes each).
    pub groups_proposed: u64,
    /// The writes in those groups.
    pub writes_grouped: u64,
    /// Forwarded writes answered here when their entry was applied.
    pub forwarded_answered: u64,
    pub reads_served: u64,
    /// Lease reads served under the leader's lease (no quorum round).
    pub lease_reads: u64,
    /// Lease reads asked while the lease held in ticks but not in real
    /// time (this leader's ticks fell behind: a pause), confirmed with a
    /// quorum instead (see `Shard::lease_holds_in_real_time`).
    pub lease_reads_late: u64,
    pub not_leader: u64,
    pub busy: u64,
    /// Writes refused because the disk was full.
    pub no_space: u64,
    /// Writes and closes refused because their session belongs to another
    /// user (see `session`, "Owners").
    pub session_owner_refused: u64,
    /// The disk was seen full and has not been seen with room since (logged
    /// once per episode).
    pub disk_full: bool,
    /// Appends from the leader this follower answered "no space" (its disk
    /// was full): it took none of their entries.
    pub appends_no_space: u64,
    /// Appends from the leader this follower refused while it restored a
    /// snapshot with more unapplied log in memory than its budget
    /// (`engine::AppendResponse::applying`).
    pub appends_refused_applying: u64,
    /// On a leader: the peers that report a full disk (logged when the set
    /// changes).
    pub peers_disk_full: Vec<engine::NodeId>,
    pub snapshots_taken: u64,
    pub snapshots_installed: u64,
    /// Received snapshot chunks that a full disk could not take (the
    /// snapshot was dropped and received anew).
    pub snapshot_chunks_no_space: u64,
    /// Snapshot chunks read from the stored snapshot and sent to followers.
    pub snapshot_chunks_sent: u64,
    /// Stored snapshots found damaged while being sent to a follower (its
    /// bytes no longer matched their checksum): a new one replaced each.
    pub snapshots_damaged: u64,
    /// Installed snapshots whose state machine was restored off the driver.
    pub restores_off_driver: u64,
    /// Snapshots installed while the state machine was being restored from
    /// an earlier one (restored after it).
    pub installs_while_restoring: u64,
    /// Snapshots installed while reads waited for the state machine (they
    /// are then served from the installed state).
    pub installs_with_reads_waiting: u64,
    /// Forwarded writes and session openings whose clients were sent to the
    /// new leader because the term changed before they were applied.
    pub forwards_redirected: u64,
    /// Times this shard learned of a new leader (an election won by anyone,
    /// as seen here).
    pub leader_changes: u64,
    /// Entry batch bytes handed to the log for durable appends.
    pub log_bytes_appended: u64,
    /// Committed entries this start applied while recovery read the log
    /// (their payloads beyond `--log-memory-bytes`; see
    /// `crate::shard::RecoveringState`): read once.
    pub recovered_early: u64,
    /// Committed entries this start read again from disk to apply them (the
    /// path when recovery could not hand them over as it read).
    pub recovered_read_again: u64,
    /// Entries this start applied while recovery read the log and then
    /// discarded (a later record replaced one, or the replica repairs):
    /// the state machine started again from the snapshot.
    pub recovered_discarded: u64,
    started: Instant,
}

impl ShardStats {
    /// Empty histograms and counters, counting uptime from `now`.
    pub fn new(now: Instant) -> ShardStats {
        ShardStats {
            queued: Stage::new(),
            wal_write_sync: Stage::new(),
            replication: Stage::new(),
            apply: Stage::new(),
            total: Stage::new(),
            reads: Stage::new(),
            snapshot_capture: Stage::new(),
            snapshot_serialize: Stage::new(),
            snapshot_restore: Stage::new(),
            snapshot_restore_blocked: Stage::new(),
            writes_applied: 0,
            writes_forwarded: 0,
            groups_proposed: 0,
            writes_grouped: 0,
            forwarded_answered: 0,
            reads_served: 0,
            lease_reads: 0,
            lease_reads_late: 0,
            not_leader: 0,
            busy: 0,
            no_space: 0,
            session_owner_refused: 0,
            disk_full: false,
            appends_no_space: 0,
            appends_refused_applying: 0,
            peers_disk_full: Vec::new(),
            snapshots_taken: 0,
            snapshots_installed: 0,
            snapshot_chunks_no_space: 0,
            snapshot_chunks_sent: 0,
            snapshots_damaged: 0,
            installs_with_reads_waiting: 0,
            restores_off_driver: 0,
            installs_while_restoring: 0,
            forwards_redirected: 0,
            leader_changes: 0,
            log_bytes_appended: 0,
            recovered_early: 0,
            recovered_read_again: 0,
            recovered_discarded: 0,
            started: now,
        }
    }

    pub fn to_json(&self, now: Instant) -> Value {
        json!({
            "uptime_s": now.saturating_duration_since(self.started).as_secs(),
            "stages": {
                "queued": self.queued.summary(),
                "wal_write_sync": self.wal_write_sync.summary(),
                "replication": self.replication.summary(),
                "apply": self.apply.summary(),
                "total": self.total.summary(),
                "read": self.reads.summary(),
                "snapshot_capture": self.snapshot_capture.summary(),
                "snapshot_serialize": self.snapshot_serialize.summary(),
                "snapshot_restore": self.snapshot_restore.summary(),
                "snapshot_restore_blocked": self.snapshot_restore_blocked.summary(),
            },
            "writes_applied": self.writes_applied,
            "writes_forwarded": self.writes_forwarded,
            "groups_proposed": self.groups_proposed,
            "writes_grouped": self.writes_grouped,
            "forwarded_answered": self.forwarded_answered,
            "reads_served": self.reads_served,
            "lease_reads": self.lease_reads,
            "lease_reads_late": self.lease_reads_late,
            "not_leader": self.not_leader,
            "busy": self.busy,
            "no_space": self.no_space,
            "session_owner_refused": self.session_owner_refused,
            "appends_no_space": self.appends_no_space,
            "appends_refused_applying": self.appends_refused_applying,
            "peers_disk_full": self.peers_disk_full,
            "snapshots_taken": self.snapshots_taken,
            "snapshots_installed": self.snapshots_installed,
            "snapshot_chunks_no_space": self.snapshot_chunks_no_space,
            "snapshot_chunks_sent": self.snapshot_chunks_sent,
            "snapshots_damaged": self.snapshots_damaged,
            "installs_with_reads_waiting": self.installs_with_reads_waiting,
            "restores_off_driver": self.restores_off_driver,
            "installs_while_restoring": self.installs_while_restoring,
            "forwards_redirected": self.forwards_redirected,
            "leader_changes": self.leader_changes,
            "log_bytes_appended": self.log_bytes_appended,
            "recovered_early": self.recovered_early,
            "recovered_read_again": self.recovered_read_again,
            "recovered_discarded": self.recovered_discarded,
        })
    }
}
