//! The WAL's configuration: where it lives, whose it is, and its named bounds.

use std::path::PathBuf;

use crate::error::WalError;

/// The largest `write_bytes_max` accepted. Recovery treats up to twice the
/// configured `write_bytes_max` after a damaged record as a possibly torn tail,
/// so this keeps that window small.
pub const WRITE_BYTES_MAX_LIMIT: usize = 16 << 20;

/// The longest a paced snapshot write may take: a larger snapshot is written
/// faster than `snapshot_write_rate`, so the log it lets the node compact
/// does not grow for minutes meanwhile.
pub const SNAPSHOT_WRITE_SECONDS_MAX: u64 = 4;

/// The default `recycled_segments_max`. A snapshot, and the compaction
/// after it, frees in one go the segments written since the last one; a pool
/// too small for them deletes the rest, and as many switches then zero-fill
/// fresh spares again. Measured (3 nodes on one disk, 64 KiB values, a
/// snapshot every 4000 to 6000 entries, so 4 to 6 segments of 64 MiB per
/// snapshot): disk bytes per payload byte 6.7 without recycling, 4.1 to 4.8
/// with a pool of 4, 3.6 to 3.8 with 8 (the floor, the log and snapshots
/// without zeros, is about 3.75).
///
/// A longer interval frees more at once, so a pool bounded by this alone
/// deleted the rest and zero-filled as many spares again: three nodes with
/// `--snapshot-log-bytes 1GiB` (64 KiB values) wrote 1.48-1.52 disk bytes
/// per log byte and made 0.78-0.82x the default interval's writes/s. So
/// the pool may also hold as many as the freeing that fills it gave back.
/// Measured against the bound alone, same runs (bench/RESULTS.md,
/// 2026-12-08): the default interval with 64 KiB values 1.17-1.19x the
/// writes/s (1.19-1.20 disk bytes per log byte against 1.25-1.29), a
/// 400 MB state (4 KiB values on 100,000 keys, a snapshot every 800 MB of
/// log by the size factor) 1.12-1.20x (1.46-1.62 against 1.89-1.94).
///
/// The pool costs no disk beyond what the log itself took: it only holds
/// files that were live segments, and each switch takes one from it as the
/// log grows by one, so live segments and pool together never exceed the
/// most live segments since open (plus the spare). What it does cost is that
/// the space stays taken after a burst, until the log needs it or a restart
/// deletes the pool: up to this many segments per log.
///
/// A snapshot that voids the log (a follower installing a leader's) pools
/// the voided segments too. Without that, recycling on made `t50_chaos`
/// `five_nodes_partitioned_minority_and_wiped_follower` fail in 5 of 6 runs:
/// a follower behind a leader that snapshots every 40 entries (each 26 ms
/// under that load) and keeps 10 voided its log at every install, and the
/// switch that starts the log anew waited for a fresh zero-filled spare
/// (63 ms on average over 353 installs), so its first acknowledgement came
/// after the leader had compacted past it again and another snapshot
/// followed, without end (616 to 805 installs in 30 s). With recycling off
/// it caught up only in the pauses a paced segment removal holds compaction
/// for (`segment::remove`), which recycling had taken away.
pub const RECYCLED_SEGMENTS_MAX_DEFAULT: usize = 8;

/// How to open a WAL directory.
#[derive(Clone, Debug)]
pub struct WalConfig {
    /// The data directory. It must exist; the WAL initializes it when empty.
    pub dir: PathBuf,
    /// The cluster this log belongs to; checked against the IDENTITY file.
    pub cluster_id: u64,
    /// This node's id; checked against the IDENTITY file.
    pub node_id: u64,
    /// Size of each preallocated segment file: a multiple of 4 KiB.
    pub segment_bytes: u64,
    /// The most record bytes one group write carries. Together with
    /// pipelining this bounds the bytes written but not yet synced to
    /// `2 * write_bytes_max` (plus the padding of two groups to 4 KiB), which
    /// is the torn-tail window recovery tolerates. Lowering it after an
    /// unclean shutdown can make recovery refuse a tail it would have cut.
    pub write_bytes_max: usize,
    /// The most bytes submitted but not yet durable; beyond it `append` returns
    /// [`WalError::QueueFull`] (back-pressure for the driver).
    pub queued_bytes_max: usize,
    /// The largest single batch `append` accepts.
    pub batch_bytes_max: usize,
    /// The largest snapshot file `load_snapshot` reads.
    pub snapshot_bytes_max: u64,
    /// Bytes per second at most for writing a snapshot the log agrees with
    /// (a local one; it holds nothing back, so it can take its time), unless
    /// a snapshot as large as the stored one would then take longer than
    /// [`SNAPSHOT_WRITE_SECONDS_MAX`] (it is streamed: its size is known
    /// only at its end). Written at
    /// disk speed, tens of megabytes sit in front of every log sync for as
    /// long as they take. A received snapshot is written at full speed: the
    /// follower waits for it. 0: no limit.
    pub snapshot_write_rate: u64,
    /// How far the log may grow past a paced local snapshot's bytes while
    /// it is written before the pacing gives way and the draft keeps up
    /// with the log. Without any, a busy log sped every snapshot up to the
    /// log's own pace: with small values (a 28 MB state, 55 MB/s of log per
    /// node) each node rewrote its state every second, 3.5 times as often
    /// as at the set rate, for 7 % fewer writes/s and a higher p99. Without
    /// the bound, large values grew the in-memory log to gigabytes while
    /// one snapshot was written. The node sets half of its
    /// `snapshot_log_bytes`.
    pub snapshot_log_slack: u64,
    /// The pool of spares compaction (or a voiding snapshot) keeps to reuse
    /// instead of deleting the segments it frees (see `segment`,
    /// "Recycling"): each one the next switch reuses saves writing a
    /// segment's worth of zeros. The pool holds at most this many, or as
    /// many as the freeing that fills it gave back when that is more: a
    /// compaction frees the log since the snapshot before, and the log
    /// grows through as many segments again before the next, however long
    /// the interval (`snapshot-log-bytes`, or a multiple of a large state's
    /// size). Beyond it freed segments are deleted. The pool holds its
    /// files' space: this many segments, or no more than the log held
    /// just before the freeing. 0: never recycle.
    pub recycled_segments_max: usize,
    /// The most payload bytes of committed entries recovery holds while it
    /// reads the log (0: no bound). Beyond it the oldest committed entries'
    /// payloads are dropped as the log is read (their index, term and kind
    /// stay; configuration entries keep theirs): handed to a taker that
    /// applies them as they are read (`crate::Wal::open_applying`, see
    /// `crate::RecoveryApply`), or, without one or when it must discard
    /// them, read again, record by record, with `crate::Wal::read_recovered`,
    /// for the shell to apply them before it serves. A log since the last
    /// snapshot of gigabytes then costs a restart this bound plus a few
    /// segments of memory, not its size. The node sets its per-shard
    /// `--log-memory-bytes`.
    pub recovery_payload_bytes: u64,
}

impl WalConfig {
    /// A configuration with the defaults: 64 MiB segments, 1 MiB group writes,
    /// 64 MiB of queued appends, 1 MiB batches, 4 GiB snapshots written at
    /// 8 MiB/s (or in 4 s, for a larger one; faster once the log outgrew
    /// one by 128 MiB), [`RECYCLED_SEGMENTS_MAX_DEFAULT`] recycled
    /// segments, and no bound on the payloads recovery holds.
    pub fn new(dir: impl Into<PathBuf>, cluster_id: u64, node_id: u64) -> WalConfig {
        WalConfig {
            dir: dir.into(),
            cluster_id,
            node_id,
            segment_bytes: 64 << 20,
            write_bytes_max: 1 << 20,
            queued_bytes_max: 64 << 20,
            batch_bytes_max: 1 << 20,
            snapshot_bytes_max: 4 << 30,
            snapshot_write_rate: 8 << 20,
            snapshot_log_slack: 128 << 20,
            recycled_segments_max: RECYCLED_SEGMENTS_MAX_DEFAULT,
            recovery_payload_bytes: 0,
        }
    }

    /// The most record bytes written but not yet durable: at most two group
    /// writes are ever unsynced at once (one syncing, one being written).
    pub(crate) fn unsynced_bytes_max(&self) -> u64 {
        2 * self.write_bytes_max as u64
    }

    /// The bytes after a damaged record in the last segment within which valid
    /// records may still be a torn tail: the unsynced record bytes plus each
    /// of those two groups' padding to the direct I/O alignment.
    pub(crate) fn tail_window_bytes(&self) -> u64 {
        self.unsynced_bytes_max() + 2 * crate::segment::DIRECT_IO_ALIGN as u64
    }

    pub(crate) fn validate(&self) -> Result<(), WalError> {
        let fail = |reason: String| Err(WalError::Config { reason });
        if self.write_bytes_max == 0 || self.write_bytes_max > WRITE_BYTES_MAX_LIMIT {
            return fail(format!("write_bytes_max {} outside [1, {WRITE_BYTES_MAX_LIMIT}]", self.write_bytes_max));
        }
        if self.batch_bytes_max > self.write_bytes_max {
            return fail(format!(
                "batch_bytes_max {} exceeds write_bytes_max {}: one batch must fit one write",
                self.batch_bytes_max, self.write_bytes_max
            ));
        }
        if self.batch_bytes_max > engine::batch::BATCH_BYTES_LIMIT {
            return fail(format!("batch_bytes_max {} exceeds the batch format's limit", self.batch_bytes_max));
        }
        let align = crate::segment::DIRECT_IO_ALIGN as u64;
        if self.segment_bytes == 0 || self.segment_bytes & (align - 1) != 0 {
            return fail(format!("segment_bytes {} is not a positive multiple of {align}", self.segment_bytes));
        }
        if self.segment_bytes < self.batch_bytes_max as u64 {
            return fail(format!(
                "segment_bytes {} is smaller than batch_bytes_max {}: a batch must fit one segment",
                self.segment_bytes, self.batch_bytes_max
            ));
        }
        if self.queued_bytes_max < self.batch_bytes_max {
            return fail(format!(
                "queued_bytes_max {} is smaller than batch_bytes_max {}",
                self.queued_bytes_max, self.batch_bytes_max
            ));
        }
        Ok(())
    }
}
