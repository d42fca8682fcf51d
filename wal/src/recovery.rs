//! Recovery on open: read every segment, verify every record, cut a torn tail,
//! cut before corruption anywhere else (reporting it), and replay the records
//! into the log the engine restarts from.
//!
//! # Padding
//!
//! The writer pads each group of records with zeros to the next 4 KiB
//! boundary (direct I/O needs aligned writes). Zeros from the end of a record
//! to the next boundary, where no valid record starts, are such padding: the
//! next group, if any, starts at the boundary. A zero header at a boundary
//! ends the records.
//!
//! # Torn tail or corruption
//!
//! The writer keeps at most `2 * write_bytes_max` record bytes (in two
//! groups, each padded) written but not yet synced, all of them in the newest
//! segment: it drains the pipeline before it switches segments. After a crash, any of those bytes may be missing, so a
//! damaged record can be followed by intact ones that were never reported
//! durable. Recovery therefore reads a damaged record (or a non-zero byte in the
//! zeroed space after the last record) in the newest segment as a torn tail when
//! no valid record starts more than that window after it, and cuts the log
//! there, zeroing the rest of the segment durably so that stale bytes never
//! come back.
//!
//! Damage anywhere else, or with a valid record beyond the window, is
//! corruption: the log is cut the same way before the damaged record, later
//! segments are removed, and the damage (file and offset) is reported with
//! the recovered log, which then claims to have acknowledged at least the
//! index after its last entry. Damage to durable records inside the window
//! looks like a torn write; the hard state's `acknowledged` index (the
//! durable log's end at the latest hard-state save) tells the engine when
//! such a cut removed entries this replica may have acknowledged. Either way
//! the engine starts in repair and fetches the lost range from its peers
//! (see `engine::Raft::repair_target`).
//!
//! # Salted segments
//!
//! A salted segment (see `segment`, "Recycling") may be a recycled file:
//! after its records lie whatever its earlier lives left, records among
//! them, which fail their checksum under this segment's salt. So there the
//! records end at the first offset where no valid record (under the
//! segment's salt) starts, whatever the bytes, with two exceptions that
//! keep damage detectable:
//! - a valid record after that point is damage, exactly as in an unsalted
//!   segment: only this segment's own writes can leave one there, and a cut
//!   after damage zeroes the whole rest of the segment so that none
//!   survives it;
//! - the writer pads each group's last block with zeros, so anything but
//!   zeros from the end of the last record to the next aligned offset is a
//!   damaged (or, in the newest segment, torn) record, never an earlier
//!   life's bytes.
//!
//! The newest segment, where writing resumes, has everything after its
//! records zeroed on open (as a cut tail is), whatever was there: it then
//! reads as a fresh segment would, and a crash before the next open finds
//! the usual zeros. That costs at most one segment of zeros per open (the
//! spare that open makes costs as much). Sealed segments keep their earlier
//! lives' bytes; when the newest segment holds no record and is dropped,
//! writing resumes in the sealed one before it, after its last group's zero
//! padding, and the rules above still tell its records from those bytes.
//! Past the block where the records end (whose rest the writer pads, or a
//! cut zeroes), nothing depends on those zeros for correctness: no valid
//! record of a segment's own salt is left after its end (a cut after damage
//! zeroes the rest), and whatever else lies there stays garbage to a later
//! recovery.
//!
//! What this cannot see inside one segment is a group lost whole at its
//! end (its blocks still hold an earlier life's bytes). In a sealed segment
//! the next segment's name then starts after a gap, which replay reports as
//! damage (a lost tail with zeros after it looks alike in an unsalted
//! segment); in the newest segment it is a torn tail.
//!
//! # Replay
//!
//! Records are applied in segment-sequence order. A record whose first index is
//! at or below the current last index replaces the suffix from there (a Raft
//! conflict truncation is just such a record, so it is durable exactly when the
//! record is). Entries at or below the snapshot index are dropped.

use std::collections::VecDeque;
use std::fs;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use engine::batch::{peek_batch_length, BatchError, BATCH_HEADER_SIZE, BATCH_MAGIC, BATCH_VERSION};
use engine::{Entry, EntryBatch, EntryKind, Index};

use crate::config::WalConfig;
use crate::dir::{list_with_suffix, sync_dir_blocking};
use crate::error::WalError;
use crate::segment::{self, parse_segment, SegmentMeta, PREALLOC_SUFFIX, SEGMENT_SUFFIX};
use crate::snapshot::StoredSnapshot;

/// Where a record lies in a segment buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RecordSpan {
    pub offset: usize,
    pub length: usize,
}

/// The outcome of scanning one segment's bytes.
#[derive(Debug)]
pub(crate) struct Scan {
    /// Verified records, in file order.
    pub records: Vec<RecordSpan>,
    /// Where the records end: the next write position.
    pub end: usize,
    /// Whether bytes after `end` are not zero and must be zeroed (a cut tail).
    pub torn: bool,
    /// Damage that cannot be a torn write (see the module documentation):
    /// the records up to `end` are good, and what lay after them is lost.
    pub damage: Option<WalError>,
    /// The highest index in valid records after the damage, if any.
    pub index_after_damage: Option<Index>,
}

/// Scans a segment's bytes. `salt` is the segment's (`None`: unsalted);
/// `is_newest` selects the torn-tail rule (see the module documentation);
/// `window` is the unsynced-bytes bound.
pub(crate) fn scan(
    path: &Path,
    buf: &Bytes,
    (salt, is_newest): (Option<u32>, bool),
    window: usize,
    batch_limit: usize,
) -> Result<Scan, WalError> {
    let salted = salt.is_some();
    let salt = salt.unwrap_or(0);
    let mut records = Vec::new();
    let mut position = 0;
    let (expected, found) = loop {
        // Zeros up to the next aligned offset, where no record starts: the
        // padding after a group (the next group, if any, starts aligned).
        // The padding can be shorter than a record header, so the check
        // looks at those bytes only, and a record is tried first: one that
        // happens to begin with a few zero bytes must still be read.
        let aligned = (segment::align_up(position as u64) as usize).min(buf.len());
        if aligned > position
            && buf[position..aligned].iter().all(|&byte| byte == 0)
            && valid_batch_length(buf, position, salt, batch_limit).is_none()
        {
            position = aligned;
            continue;
        }
        let rest = &buf[position..];
        let header_length = rest.len().min(BATCH_HEADER_SIZE);
        if rest[..header_length].iter().all(|&byte| byte == 0) {
            // Preallocated space: the records end here, and so must every
            // non-zero byte.
            match first_non_zero(rest) {
                None => {
                    return Ok(Scan { records, end: position, torn: false, damage: None, index_after_damage: None })
                }
                Some(at) => {
                    break (
                        "only zeros after the last record".to_string(),
                        format!("a non-zero byte at offset {}", position + at),
                    )
                }
            }
        }
        let length = match peek_batch_length(rest, batch_limit) {
            Ok(Some(length)) => length,
            Ok(None) => {
                break ("a batch header".to_string(), format!("{} bytes before the end of the file", rest.len()))
            }
            Err(error) => break ("a batch header".to_string(), error.to_string()),
        };
        if length > rest.len() {
            break (format!("a batch of {length} bytes"), format!("the file ends after {} bytes", rest.len()));
        }
        if let Err(error) = verify_record(buf, position, length, salt, batch_limit) {
            break (format!("a valid batch of {length} bytes"), error.to_string());
        }
        records.push(RecordSpan { offset: position, length });
        position += length;
    };
    // Valid records after the damage were written after it and may have
    // been acknowledged, so the cut loses them too: a torn write leaves none.
    let index_after_damage = last_index_after(buf, position + 1, salt, batch_limit);
    if salted && index_after_damage.is_none() && ends_block(buf, position) {
        // What follows is no record of this segment's: zeros, or a recycled
        // file's earlier lives (or, in the newest segment, a group torn from
        // its first block). See "Salted segments" in the module
        // documentation.
        let torn = is_newest && buf[position..].iter().any(|&byte| byte != 0);
        return Ok(Scan { records, end: position, torn, damage: None, index_after_damage: None });
    }
    let damage = if !is_newest {
        Some(WalError::corrupt(path, position as u64, expected, found))
    } else if let Some(valid) =
        find_valid_batch(buf, position.saturating_add(window).saturating_add(1), salt, batch_limit)
    {
        Some(WalError::corrupt(
            path,
            position as u64,
            expected,
            format!("{found}, and a valid record at offset {valid}, beyond the {window}-byte torn-tail window"),
        ))
    } else {
        index_after_damage.map(|index| {
            WalError::corrupt(
                path,
                position as u64,
                expected,
                format!("{found}, and valid records after it (up to index {index}): damage, not a torn write"),
            )
        })
    };
    Ok(Scan { records, end: position, torn: true, damage, index_after_damage })
}

/// Whether `position` is where a block written by a group ends or may end:
/// aligned, or followed by zeros only up to the next aligned offset (the
/// writer pads every group's last block with zeros, so anything else there
/// is damage, or a torn write, and no earlier life's bytes).
fn ends_block(buf: &[u8], position: usize) -> bool {
    let aligned = (segment::align_up(position as u64) as usize).min(buf.len());
    buf[position.min(aligned)..aligned].iter().all(|&byte| byte == 0)
}

/// Checks the record of `length` bytes at `at`: its stored crc XORed with
/// `salt` (0 for an unsalted segment) must be its crc32c, and its fields
/// must agree.
fn verify_record(
    buf: &Bytes,
    at: usize,
    length: usize,
    salt: u32,
    batch_limit: usize,
) -> Result<EntryBatch, BatchError> {
    let record = &buf[at..at + length];
    let stored = u32::from_le_bytes(record[..4].try_into().expect("a batch header")) ^ salt;
    let computed = crc32c::crc32c(&record[4..]);
    if stored != computed {
        return Err(BatchError::Checksum { stored, computed });
    }
    EntryBatch::decode_checksummed_elsewhere(&buf.slice(at..at + length), batch_limit)
}

/// The offset of the first non-zero byte of `bytes`, if any. Checks 64
/// bytes at a time (the compiler vectorizes the OR), then finds the byte:
/// the newest segment's preallocated tail is tens of megabytes of zeros,
/// which a byte-at-a-time search took 17-24 ms to cross (1.6 ms this way).
fn first_non_zero(bytes: &[u8]) -> Option<usize> {
    const BLOCK: usize = 64;
    let block = bytes.chunks(BLOCK).position(|block| block.iter().fold(0u8, |any, &byte| any | byte) != 0)?;
    let start = block * BLOCK;
    bytes[start..].iter().position(|&byte| byte != 0).map(|at| start + at)
}

/// The highest last index of the valid batches found at or after `from`
/// (byte by byte, skipping each one found): what a cut before `from` loses.
pub(crate) fn last_index_after(buf: &Bytes, mut from: usize, salt: u32, batch_limit: usize) -> Option<Index> {
    let mut highest = None;
    while let Some(at) = find_valid_batch(buf, from, salt, batch_limit) {
        let length = valid_batch_length(buf, at, salt, batch_limit).expect("found valid");
        let batch = verify_record(buf, at, length, salt, batch_limit).expect("found valid");
        highest = highest.max(Some(batch.last_index()));
        from = at + length;
    }
    highest
}

/// The first offset at or after `from` where a whole valid batch (under
/// `salt`) starts.
fn find_valid_batch(buf: &Bytes, from: usize, salt: u32, batch_limit: usize) -> Option<usize> {
    let magic = BATCH_MAGIC.to_le_bytes();
    let last_start = buf.len().checked_sub(BATCH_HEADER_SIZE)?;
    (from..=last_start).find(|&at| {
        buf[at + 36..at + 38] == magic
            && buf[at + 38] == BATCH_VERSION
            && valid_batch_length(buf, at, salt, batch_limit).is_some()
    })
}

/// The length of the whole valid batch (under `salt`) starting at `at`, if
/// one does.
fn valid_batch_length(buf: &Bytes, at: usize, salt: u32, batch_limit: usize) -> Option<usize> {
    match peek_batch_length(&buf[at..], batch_limit) {
        Ok(Some(length)) if at + length <= buf.len() => {
            verify_record(buf, at, length, salt, batch_limit).is_ok().then_some(length)
        }
        _ => None,
    }
}

/// Takes the committed entries recovery would otherwise drop for its
/// payload budget ([`WalConfig::recovery_payload_bytes`]) as the log is
/// read, to apply them then instead of reading them again afterwards (a
/// restart of a log beyond the budget read its dropped part twice: 1.5-2.1x
/// the direct read of the log, against 0.8-1.1x within the budget; issue 21
/// item 4).
///
/// Handing over is optimistic. Entries come in log order from the first
/// after the snapshot, each at most once, all at or below the saved commit
/// index, and the version of an index that stays in the log is the
/// committed one; but an earlier record may hold another version of an
/// index that a later record replaces (a follower's uncommitted tail that
/// a new leader overwrote). When a later record replaces an entry already
/// handed over, or the replica turns out to be in repair (it applies
/// through the engine), recovery calls [`RecoveryApply::discard`]: what was
/// applied must be thrown away, and the log's dropped part is read again
/// instead (`crate::Wal::read_recovered`), as without a taker.
pub trait RecoveryApply {
    /// The next committed entries, in order, payloads included.
    fn apply(&mut self, entries: &[Entry]);

    /// What was handed over is not to be used (see the trait); nothing more
    /// is handed over. May be called more than once.
    fn discard(&mut self);
}

/// Reborrows a taker for one call (a trait object's lifetime shortens only
/// outside the `Option`).
pub(crate) fn reborrow<'s>(taker: &'s mut Option<&mut dyn RecoveryApply>) -> Option<&'s mut dyn RecoveryApply> {
    match taker {
        Some(taker) => Some(&mut **taker),
        None => None,
    }
}

/// Settles a recovery's taker once the open knows whether the replica is in
/// repair, and says whether the taker keeps what it applied: only when it
/// got every dropped entry, only committed versions (`handed_over`), some
/// were dropped (`dropped_to` past the snapshot at `snapshot_index`), and
/// the replica is not in repair (it then applies through the engine, which
/// gets every payload back). Otherwise the taker is told to discard. One
/// rule for [`crate::Wal::open_applying`] and a simulator's disk
/// ([`recover_images`]), so both decide alike.
pub fn settle_taker(
    taker: Option<&mut dyn RecoveryApply>,
    handed_over: bool,
    in_repair: bool,
    (dropped_to, snapshot_index): (Index, Index),
) -> bool {
    let keeps = handed_over && !in_repair && dropped_to > snapshot_index;
    if let Some(taker) = taker.filter(|_| !keeps) {
        taker.discard();
    }
    keeps
}

/// The log being rebuilt from records.
///
/// Invariants: `entries[i].index == snapshot_index + 1 + i`; the entries up
/// to `dropped_to` hold no payload unless they are configuration entries,
/// and `records` name, in log order, the records the entries after the
/// snapshot came from (their `first..=last` cover the log without gaps);
/// `held` is the sum of the payloads held.
#[derive(Debug, Default)]
pub(crate) struct Replay {
    pub snapshot_index: Index,
    pub entries: Vec<Entry>,
    /// See [`WalConfig::recovery_payload_bytes`] (0: no bound).
    pub payload_budget: u64,
    /// The highest index whose payload may be dropped: the saved commit
    /// index (an entry above it may yet be replaced, and is applied through
    /// the engine).
    pub drop_limit: Index,
    pub held: u64,
    /// The highest index whose payload was dropped (the snapshot index when
    /// none was).
    pub dropped_to: Index,
    /// The payload bytes dropped (entries a later record replaced
    /// included: a count for the snapshot rules, not an exact one).
    pub dropped_bytes: u64,
    pub records: VecDeque<RecordAt>,
    /// Whether dropped entries are handed over ([`RecoveryApply`]): set
    /// when a taker is given, cleared for good once one handed over is
    /// replaced.
    pub handing: bool,
    /// Whether the taker is owed a [`RecoveryApply::discard`].
    pub discard_owed: bool,
    /// Entries dropped since the last hand over, payloads included.
    handover: Vec<Entry>,
}

/// Where the entries `first..=last` of the log were read: the record at
/// `offset` (`length` bytes) of the segment at `segment` (its position in
/// the segments read).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RecordAt {
    pub segment: usize,
    pub offset: usize,
    pub length: usize,
    pub first: Index,
    pub last: Index,
}

impl Replay {
    /// An empty log after a snapshot at `snapshot_index`, holding at most
    /// `payload_budget` payload bytes of entries up to `drop_limit`.
    pub(crate) fn new(snapshot_index: Index, drop_limit: Index, payload_budget: u64) -> Replay {
        Replay { snapshot_index, drop_limit, payload_budget, dropped_to: snapshot_index, ..Replay::default() }
    }

    pub(crate) fn last_index(&self) -> Index {
        self.snapshot_index + self.entries.len() as u64
    }

    /// The term of the entry at `index`, if the log holds it (entries the
    /// snapshot covers are not held).
    pub(crate) fn term(&self, index: Index) -> Option<u64> {
        let offset = index.checked_sub(self.snapshot_index + 1)?;
        self.entries.get(offset as usize).map(|entry| entry.term)
    }

    /// Applies one record, read from `segment` at `span`, that does not
    /// leave a gap (see [`misplaced`]): truncate from its first index, then
    /// append what lies after the snapshot, and drop the oldest committed
    /// payloads beyond the budget.
    pub(crate) fn apply(&mut self, batch: &EntryBatch, segment: usize, span: RecordSpan) {
        let first = batch.first_index();
        debug_assert!(first <= self.last_index() + 1, "checked by `misplaced`");
        let keep = first.max(self.snapshot_index + 1) - self.snapshot_index - 1;
        self.held -= self.entries[keep as usize..].iter().map(|entry| entry.data.len() as u64).sum::<u64>();
        self.entries.truncate(keep as usize);
        let last_kept = self.last_index();
        if self.handing && last_kept < self.dropped_to {
            // An entry handed over (or about to be) is replaced: it was not
            // the committed version.
            (self.handing, self.discard_owed) = (false, true);
            self.handover.clear();
        }
        self.dropped_to = self.dropped_to.min(last_kept);
        while self.records.back().is_some_and(|record| record.first > last_kept) {
            self.records.pop_back();
        }
        if let Some(record) = self.records.back_mut() {
            record.last = record.last.min(last_kept);
        }
        let snapshot_index = self.snapshot_index;
        let before = self.entries.len();
        self.entries.extend(batch.entries().filter(|entry| entry.index > snapshot_index));
        self.held += self.entries[before..].iter().map(|entry| entry.data.len() as u64).sum::<u64>();
        if self.entries.len() > before {
            let (offset, length) = (span.offset, span.length);
            let (first, last) = (self.entries[before].index, self.last_index());
            self.records.push_back(RecordAt { segment, offset, length, first, last });
        }
        debug_assert!(self.entries.first().is_none_or(|entry| entry.index == self.snapshot_index + 1));
        self.drop_payloads();
    }

    /// Drops the payloads of the oldest entries up to the drop limit while
    /// more than the budget is held. A dropped payload frees its segment's
    /// buffer once no other entry holds a slice of it: with the oldest
    /// dropped first, the buffers go in the order they were read.
    fn drop_payloads(&mut self) {
        if self.payload_budget == 0 {
            return;
        }
        let limit = self.drop_limit.min(self.last_index());
        while self.held > self.payload_budget && self.dropped_to < limit {
            let entry = &mut self.entries[(self.dropped_to - self.snapshot_index) as usize];
            if self.handing {
                self.handover.push(entry.clone());
            }
            if entry.kind != EntryKind::Config {
                self.held -= entry.data.len() as u64;
                self.dropped_bytes += entry.data.len() as u64;
                entry.data = Bytes::new();
            }
            self.dropped_to += 1;
        }
    }

    /// Hands the entries dropped since the last call to `taker`, or tells it
    /// to discard what it took (see [`RecoveryApply`]).
    pub(crate) fn hand_over(&mut self, taker: &mut dyn RecoveryApply) {
        if std::mem::take(&mut self.discard_owed) {
            taker.discard();
        } else if !self.handover.is_empty() {
            taker.apply(&std::mem::take(&mut self.handover));
        }
    }

    /// The records that hold the dropped payloads, in log order; the others
    /// are forgotten.
    pub(crate) fn dropped_records(&mut self) -> Vec<RecordAt> {
        let dropped_to = self.dropped_to;
        let records = std::mem::take(&mut self.records);
        records.into_iter().take_while(|record| record.first <= dropped_to).collect()
    }
}

/// Everything open needs to resume writing.
pub(crate) struct RecoveredLog {
    /// Damage found below the log's tail (the log was cut before it).
    pub damage: Option<WalError>,
    /// The highest index of the valid records the cut removed (0 if none).
    pub damage_index_max: Index,
    pub entries: Vec<Entry>,
    /// The entries up to this index hold no payload (unless configuration
    /// entries): see [`WalConfig::recovery_payload_bytes`]. The snapshot's
    /// index (or 0) when none was dropped.
    pub dropped_to: Index,
    /// Their payload bytes (see `Replay::dropped_bytes`).
    pub dropped_bytes: u64,
    /// The records that hold the dropped payloads, in log order, with the
    /// position of their segment in `segments`.
    pub dropped_records: Vec<RecordAt>,
    /// Whether a taker holds every dropped entry, and only committed
    /// versions (see [`RecoveryApply`]).
    pub handed_over: bool,
    /// Live segments in sequence order; the last is where writing resumes.
    pub segments: Vec<SegmentMeta>,
    /// The write position in the last segment.
    pub tail_offset: u64,
    /// The sequence the next segment gets.
    pub sequence_next: u64,
}

/// Recovers the log in `config.dir` on top of the stored snapshot. Blocking:
/// this is start-up work, done before the shard serves.
/// Payloads of entries up to `commit` (the saved commit index) may be
/// dropped as [`WalConfig::recovery_payload_bytes`] says.
/// With a `taker`, the dropped entries are handed to it as they are read
/// (see [`RecoveryApply`]).
pub(crate) fn recover(
    config: &WalConfig,
    head: Option<&StoredSnapshot>,
    commit: Index,
    taker: Option<&mut dyn RecoveryApply>,
) -> Result<RecoveredLog, WalError> {
    let dir = &config.dir;
    let mut directory_changed = remove_leftovers(dir)?;
    let mut segments = Vec::new();
    let mut sequence_seen = 0;
    for path in list_with_suffix(dir, SEGMENT_SUFFIX)? {
        let name = path.file_name().and_then(|name| name.to_str()).unwrap_or_default();
        let Some(segment::SegmentName { sequence, first_index, salt }) = parse_segment(name) else {
            return Err(WalError::corrupt(&path, 0, "a segment name SEQUENCE-FIRSTINDEX[-SALT].wal", name.to_string()));
        };
        sequence_seen = sequence_seen.max(sequence);
        if head.is_some_and(|stored| sequence < stored.segment_sequence_min) {
            // Voided by a snapshot that disagreed with the log; its removal was
            // interrupted.
            fs::remove_file(&path).map_err(|error| WalError::io("removing", &path, error))?;
            directory_changed = true;
            continue;
        }
        segments.push(SegmentMeta { sequence, first_index, path, index_max: 0, salt });
    }
    if directory_changed {
        sync_dir_blocking(dir)?;
    }
    let sequence_floor = head.map_or(1, |stored| stored.segment_sequence_min);
    let names: Vec<SegmentInput> = segments
        .iter()
        .map(|segment| SegmentInput { path: &segment.path, first_index: segment.first_index, salt: segment.salt })
        .collect();
    // Threads read the next segments while this one is checked and decoded:
    // reading and checking overlap instead of taking turns.
    let paths: Vec<PathBuf> = segments.iter().map(|segment| segment.path.clone()).collect();
    let snapshot_index = head.map_or(0, |stored| stored.meta.index);
    let mut plan = read_segments(paths, |read| plan(&names, read, (snapshot_index, commit), config, taker))?;
    // The plan's effects on the files: cut tails are zeroed durably, and
    // damage that is not a torn tail removes every later segment (the log
    // keeps its good prefix and the replica fetches the rest again from its
    // peers; refusing to start instead would need an operator to wipe the
    // replica, issue 16).
    for &(position, from, to) in &plan.torn {
        zero_tail(&segments[position].path, from as u64, to as u64)?;
    }
    for (segment, index_max) in segments.iter_mut().zip(&plan.index_max) {
        segment.index_max = *index_max;
    }
    if plan.kept < segments.len() {
        for removed in segments.drain(plan.kept..) {
            fs::remove_file(&removed.path).map_err(|error| WalError::io("removing", &removed.path, error))?;
        }
        sync_dir_blocking(dir)?;
    }
    Ok(RecoveredLog {
        damage: plan.damage,
        damage_index_max: plan.damage_index_max,
        dropped_to: plan.replay.dropped_to,
        dropped_bytes: plan.replay.dropped_bytes,
        dropped_records: plan.replay.dropped_records(),
        handed_over: plan.replay.handing,
        entries: plan.replay.entries,
        segments,
        tail_offset: plan.tail_offset,
        sequence_next: (sequence_seen + 1).max(sequence_floor),
    })
}

/// Reads again, record by record, the payloads recovery dropped (see
/// [`WalConfig::recovery_payload_bytes`]): from the segment files (read
/// ahead, see `crate::reread`), or from the images [`recover_images`] was
/// given.
pub struct DroppedReader {
    source: Source,
    /// The records left to read, each with its window (see
    /// [`crate::reread::windows`]; 0 for images).
    records: VecDeque<(RecordAt, usize)>,
    /// The last index whose payload was dropped.
    to: Index,
    batch_limit: usize,
}

/// Where the segments' bytes are read again: each segment's file or image,
/// by position, with its salt.
enum Source {
    Files {
        segments: Vec<(PathBuf, u32)>,
        /// The windows the records lie in, until the reading starts.
        windows: Vec<crate::reread::Window>,
        /// Started at the first read, ended once every record is read.
        prefetch: Option<crate::reread::Prefetch>,
    },
    Images(Vec<(Bytes, u32)>),
}

impl std::fmt::Debug for DroppedReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DroppedReader").field("records", &self.records.len()).field("to", &self.to).finish()
    }
}

impl DroppedReader {
    pub(crate) fn new(segments: &[SegmentMeta], log: &RecoveredLog, batch_limit: usize) -> DroppedReader {
        let segments = segments.iter().map(|segment| (segment.path.clone(), segment.salt.unwrap_or(0))).collect();
        let records: VecDeque<RecordAt> = log.dropped_records.iter().copied().collect();
        let (windows, of_record) = crate::reread::windows(&records);
        DroppedReader {
            source: Source::Files { segments, windows, prefetch: None },
            records: records.into_iter().zip(of_record).collect(),
            to: log.dropped_to,
            batch_limit,
        }
    }

    /// The entries from `from` up to the last dropped one, whole records
    /// until they hold `bytes_max` payload bytes (one record at least): the
    /// records are read again and their checksums checked again. Empty once
    /// past the last dropped entry.
    pub fn read(&mut self, mut from: Index, bytes_max: usize) -> Result<Vec<Entry>, WalError> {
        let mut entries = Vec::new();
        let mut bytes = 0;
        while let Some(&(record, window)) = self.records.front() {
            if record.last < from {
                self.records.pop_front();
                continue;
            }
            if record.first > self.to || (bytes >= bytes_max && !entries.is_empty()) {
                break;
            }
            let batch = self.read_record(&record, window)?;
            let (low, high) = (from.max(record.first), record.last.min(self.to));
            for entry in batch.entries().filter(|entry| (low..=high).contains(&entry.index)) {
                bytes += entry.data.len();
                entries.push(entry);
            }
            if entries.last().is_none_or(|entry: &Entry| entry.index != high) {
                let found = format!("entries up to {:?}", entries.last().map(|entry| entry.index));
                return Err(self.corrupt(&record, format!("entries {low} to {high}"), found));
            }
            from = high + 1;
            self.records.pop_front();
        }
        if self.records.front().is_none_or(|(record, _)| record.first > self.to) {
            // Nothing more to read: the reading threads end.
            if let Source::Files { prefetch, .. } = &mut self.source {
                *prefetch = None;
            }
        }
        Ok(entries)
    }

    fn read_record(&mut self, record: &RecordAt, window: usize) -> Result<EntryBatch, WalError> {
        let (bytes, salt) = match &mut self.source {
            Source::Files { segments, windows, prefetch } => {
                if prefetch.is_none() {
                    *prefetch = Some(crate::reread::Prefetch::start(segments, std::mem::take(windows))?);
                }
                let bytes = prefetch.as_mut().expect("started above").record(window, record)?;
                (bytes, segments[record.segment].1)
            }
            Source::Images(images) => {
                let (image, salt) = &images[record.segment];
                (image.slice(record.offset..record.offset + record.length), *salt)
            }
        };
        verify_record(&bytes, 0, record.length, salt, self.batch_limit)
            .map_err(|error| self.corrupt(record, "the record recovery read there", error.to_string()))
    }

    fn corrupt(&self, record: &RecordAt, expected: impl Into<String>, found: impl Into<String>) -> WalError {
        let path = match &self.source {
            Source::Files { segments, .. } => segments[record.segment].0.clone(),
            Source::Images(_) => PathBuf::from("image"),
        };
        WalError::corrupt(&path, record.offset as u64, expected, found)
    }
}

/// Removes spares and temporaries from an earlier run (never part of the
/// log); returns whether there were any.
fn remove_leftovers(dir: &Path) -> Result<bool, WalError> {
    let mut removed = false;
    for leftover in list_with_suffix(dir, PREALLOC_SUFFIX)?.into_iter().chain(list_with_suffix(dir, ".tmp")?) {
        fs::remove_file(&leftover).map_err(|error| WalError::io("removing", &leftover, error))?;
        removed = true;
    }
    Ok(removed)
}

/// What reading a log's segments decided, before any file is touched: the
/// pure part of recovery, which the simulator runs on its disk images too.
#[derive(Debug)]
pub(crate) struct Plan {
    pub replay: Replay,
    /// The highest index in each segment read (0 when it holds no record).
    pub index_max: Vec<Index>,
    /// Where the records of each segment read end.
    pub ends: Vec<usize>,
    /// Cut tails to zero: (segment position, from, to).
    pub torn: Vec<(usize, usize, usize)>,
    /// How many segments stay; the rest are removed.
    pub kept: usize,
    /// Damage that is not a torn tail.
    pub damage: Option<WalError>,
    /// The highest index of the valid records the cut removed (0 if none).
    pub damage_index_max: Index,
    /// The write position in the last kept segment.
    pub tail_offset: u64,
}

/// One segment as recovery's decisions see it: its path (for messages) and
/// what its name says.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SegmentInput<'a> {
    pub path: &'a Path,
    pub first_index: Index,
    /// `None` for an unsalted segment.
    pub salt: Option<u32>,
}

/// Reads the segments named in `names` (in sequence order) one `read` at a
/// time, verifies and replays their records on top
/// of a snapshot at `snapshot_index`, and decides what to cut. Payloads of
/// entries up to `commit` may be dropped (see
/// [`WalConfig::recovery_payload_bytes`]).
///
/// A record that is whole but out of place is damage too, not a reason to
/// refuse the log: a misdirected write can put a valid record at another
/// record's offset (TigerBeetle's fault model), so a record that leaves a
/// gap, starts with an entry the log holds with the same term (a Raft
/// truncation record always starts at a conflicting entry), follows an
/// entry of a later term, or opens a segment under another first index cuts
/// the log before it.
pub(crate) fn plan(
    names: &[SegmentInput],
    mut read: impl FnMut() -> Result<Bytes, WalError>,
    (snapshot_index, commit): (Index, Index),
    config: &WalConfig,
    mut taker: Option<&mut dyn RecoveryApply>,
) -> Result<Plan, WalError> {
    let (window, batch_limit) = (config.tail_window_bytes() as usize, config.batch_bytes_max);
    let mut plan = Plan {
        replay: Replay::new(snapshot_index, commit, config.recovery_payload_bytes),
        index_max: Vec::new(),
        ends: Vec::new(),
        torn: Vec::new(),
        kept: names.len(),
        damage: None,
        damage_index_max: 0,
        tail_offset: 0,
    };
    plan.replay.handing = taker.is_some();
    let mut previous_tail_offset = 0;
    for (position, &input) in names.iter().enumerate() {
        let raw = read()?;
        let salt = input.salt.unwrap_or(0);
        if plan.damage.is_some() {
            // What the cut loses from later segments counts as possibly
            // acknowledged too.
            let lost = last_index_after(&raw, 0, salt, batch_limit).unwrap_or(0);
            plan.damage_index_max = plan.damage_index_max.max(lost);
            continue;
        }
        let is_newest = position + 1 == names.len();
        let mut scan = scan(input.path, &raw, (input.salt, is_newest), window, batch_limit)?;
        let index_max =
            replay_segment(&mut plan.replay, (position, input), &raw, &mut scan, (batch_limit, reborrow(&mut taker)))?;
        if scan.torn {
            plan.torn.push((position, scan.end, raw.len()));
        }
        plan.index_max.push(index_max);
        plan.ends.push(scan.end);
        previous_tail_offset = plan.tail_offset;
        plan.tail_offset = scan.end as u64;
        if scan.damage.is_some() {
            plan.damage_index_max = scan.index_after_damage.unwrap_or(0);
            plan.damage = scan.damage;
            plan.kept = position + 1;
        }
    }
    // A segment without records (renamed into place, then a crash before its
    // first record, or cut whole) would name a first index the next append
    // may not have. It holds nothing, so it goes; the next append opens a
    // fresh segment. Without damage only the newest segment can be empty
    // (every other one received the record that made the writer switch).
    if plan.kept > 0 && plan.index_max[plan.kept - 1] == 0 {
        plan.kept -= 1;
        plan.tail_offset = previous_tail_offset;
    }
    Ok(plan)
}

/// Replays the records `scan` found in one segment's bytes `raw`; a record
/// out of place (see [`plan`]), or a segment whose name starts after a gap,
/// turns into damage in `scan`, cutting it and everything after it. Returns
/// the highest index replayed from it.
fn replay_segment(
    replay: &mut Replay,
    (position, SegmentInput { path, first_index, salt }): (usize, SegmentInput),
    raw: &Bytes,
    scan: &mut Scan,
    (batch_limit, mut taker): (usize, Option<&mut dyn RecoveryApply>),
) -> Result<Index, WalError> {
    let salt = salt.unwrap_or(0);
    if first_index > replay.last_index() + 1 {
        // The segment before lost its tail (even when this one has no
        // record yet): the switch to this one came after a record at the
        // index before its first.
        let found = format!("a segment named to start at index {first_index} (a gap: records are missing)");
        cut(
            scan,
            (path, 0),
            raw,
            salt,
            batch_limit,
            (format!("a segment starting at or before index {}", replay.last_index() + 1), found),
        );
        return Ok(0);
    }
    // Entries borrow this buffer for as long as the engine holds them;
    // when most of it is preallocated zeros after the records (the newest
    // segment), keep a copy of the records only.
    let bytes = if scan.end < raw.len() / 2 { Bytes::copy_from_slice(&raw[..scan.end]) } else { raw.slice(..scan.end) };
    let mut index_max = 0;
    for (number, span) in scan.records.iter().enumerate() {
        let batch = EntryBatch::decode_checksummed_elsewhere(&bytes.slice(span.offset..), batch_limit)
            .map_err(|error| WalError::corrupt(path, span.offset as u64, "a valid batch", error.to_string()))?;
        if let Some(reason) = misplaced(replay, &batch, (number == 0).then_some(first_index)) {
            cut(scan, (path, span.offset), raw, salt, batch_limit, reason);
            break;
        }
        index_max = index_max.max(batch.last_index());
        replay.apply(&batch, position, *span);
        if let Some(taker) = reborrow(&mut taker) {
            replay.hand_over(taker);
        }
    }
    Ok(index_max)
}

/// Cuts a segment's records at `offset`, as damage: everything from there
/// on is lost.
fn cut(
    scan: &mut Scan,
    (path, offset): (&Path, usize),
    raw: &Bytes,
    salt: u32,
    batch_limit: usize,
    (expected, found): (String, String),
) {
    scan.records.retain(|span| span.offset < offset);
    scan.end = offset;
    scan.torn = true;
    scan.index_after_damage = last_index_after(raw, offset, salt, batch_limit);
    scan.damage = Some(WalError::corrupt(path, offset as u64, expected, found));
}

/// What recovery makes of a log given as in-memory segment images.
#[derive(Debug)]
pub struct ImageRecovery {
    /// The recovered entries after the snapshot.
    pub entries: Vec<Entry>,
    /// Damage that is not a torn tail, if any.
    pub damage: Option<WalError>,
    /// At least what the recovered log claims to have acknowledged because
    /// of the damage (see [`claimed_after_damage`]); 0 without damage.
    pub acknowledged: Index,
    /// How many segments stay (the rest are removed).
    pub kept: usize,
    /// Where each kept segment's records end: writing resumes at the next
    /// aligned offset of the last, and a cut tail is zeroed.
    pub ends: Vec<usize>,
    /// The highest index in each kept segment.
    pub index_max: Vec<Index>,
    /// The kept segments (positions) whose bytes after `ends` are zeroed;
    /// the others keep them (a salted segment's earlier lives, say).
    pub zeroed: Vec<usize>,
    /// The entries up to this index hold no payload (unless configuration
    /// entries): see [`WalConfig::recovery_payload_bytes`]; the snapshot's
    /// index when none was dropped.
    pub dropped_to: Index,
    /// Their payload bytes (a count for the snapshot rules).
    pub dropped_bytes: u64,
    /// Whether the taker holds every dropped entry, and only committed
    /// versions (see [`RecoveryApply`]).
    pub handed_over: bool,
    dropped_records: Vec<RecordAt>,
    images: Vec<(Bytes, u32)>,
    batch_limit: usize,
}

impl ImageRecovery {
    /// Reads the dropped payloads again from the images recovery was given.
    pub fn dropped_reader(&self) -> DroppedReader {
        DroppedReader {
            source: Source::Images(self.images.clone()),
            records: self.dropped_records.iter().map(|record| (*record, 0)).collect(),
            to: self.dropped_to,
            batch_limit: self.batch_limit,
        }
    }
}

/// One segment file's bytes and what its name says, for [`recover_images`].
#[derive(Clone, Debug)]
pub struct SegmentImage {
    pub first_index: Index,
    /// The salt of its records' checksums (see [`crate::segment::salt`]);
    /// `None` for an unsalted segment.
    pub salt: Option<u32>,
    pub bytes: Bytes,
}

/// Runs recovery's decisions (the same code a [`crate::Wal`] runs on open)
/// over segment images in sequence order, on top of a snapshot at
/// `snapshot_index`, with `commit` the saved commit index (payloads up to it
/// may be dropped: see [`WalConfig::recovery_payload_bytes`]): for a
/// simulator that keeps the log's bytes in memory and damages them (issue
/// 16).
///
/// With a `taker`, the dropped entries are handed to it as they are read,
/// as [`crate::Wal::open_applying`] does (see [`RecoveryApply`]).
pub fn recover_images(
    images: &[SegmentImage],
    (snapshot_index, commit): (Index, Index),
    config: &WalConfig,
    taker: Option<&mut dyn RecoveryApply>,
) -> Result<ImageRecovery, WalError> {
    let names: Vec<SegmentInput> = images
        .iter()
        .map(|image| SegmentInput { path: Path::new("image"), first_index: image.first_index, salt: image.salt })
        .collect();
    let mut next = images.iter().map(|image| image.bytes.clone());
    let mut plan =
        plan(&names, || Ok(next.next().expect("one image per name")), (snapshot_index, commit), config, taker)?;
    let dropped_records = plan.replay.dropped_records();
    let ends = plan.ends[..plan.kept].to_vec();
    let log_last = snapshot_index + plan.replay.entries.len() as u64;
    let acknowledged = if plan.damage.is_some() { claimed_after_damage(log_last, plan.damage_index_max) } else { 0 };
    let index_max = plan.index_max[..plan.kept].to_vec();
    let zeroed = plan.torn.iter().map(|&(position, _, _)| position).filter(|&position| position < plan.kept).collect();
    Ok(ImageRecovery {
        entries: plan.replay.entries,
        damage: plan.damage,
        acknowledged,
        kept: plan.kept,
        ends,
        index_max,
        zeroed,
        dropped_to: plan.replay.dropped_to,
        dropped_bytes: plan.replay.dropped_bytes,
        handed_over: plan.replay.handing,
        dropped_records,
        images: images.iter().map(|image| (image.bytes.clone(), image.salt.unwrap_or(0))).collect(),
        batch_limit: config.batch_bytes_max,
    })
}

/// What a log cut by damage (not a torn tail) claims to have acknowledged:
/// at least the entry after its good prefix, and everything the valid
/// records after the damage held.
pub fn claimed_after_damage(log_last: Index, damage_index_max: Index) -> Index {
    (log_last + 1).max(damage_index_max)
}

/// Why a verified record cannot follow the records replayed before it, if it
/// cannot: (what was expected, what was found).
fn misplaced(replay: &Replay, batch: &EntryBatch, segment_first: Option<Index>) -> Option<(String, String)> {
    let (first, last) = (batch.first_index(), replay.last_index());
    if let Some(named) = segment_first.filter(|&named| named != first) {
        return Some((format!("a first record at index {named} (the file's name)"), format!("index {first}")));
    }
    if first > last + 1 {
        return Some((
            format!("a batch starting at or before index {}", last + 1),
            format!("a batch starting at index {first} (a gap: a record is missing)"),
        ));
    }
    // A Raft truncation record starts at a conflicting entry (the engine
    // skips the entries it holds). A record that starts with an entry the
    // log holds with the same term is a stale copy out of place, and
    // replaying it would bring back entries the log had replaced (or lose
    // the ones after it).
    if let Some(held) = replay.term(first).filter(|&term| term == batch.first_term()) {
        return Some((
            format!("a batch at index {first} with a term other than {held} (a truncation)"),
            format!("entry {first} of term {held} again: a record out of place"),
        ));
    }
    // The engine never makes its log's terms decrease.
    let before = replay.term(first - 1).filter(|&term| term > batch.first_term())?;
    Some((
        format!("a batch at index {first} of term {before} or later"),
        format!("term {} after term {before}: a record out of place", batch.first_term()),
    ))
}

/// Bytes per read of a segment with `O_DIRECT`.
pub(crate) const READ_CHUNK: usize = 1 << 20;
/// Reads of a segment in flight, each on its own thread. One large read at a
/// time left the disk idle while the kernel faulted in and cleared the next
/// read's fresh pages; with several in flight, one thread's page clearing
/// overlaps the others' transfers and the disk queue never empties.
pub(crate) const READS_IN_FLIGHT: usize = 8;

/// A segment's bytes, read with `O_DIRECT` into page-aligned memory that
/// the recovered entries then borrow (through [`Bytes::from_owner`]).
///
/// A mapping of its own rather than the allocator's: freed, it goes back to
/// the system at once. With 1 MiB buffers from the allocator (the second
/// pass, [`crate::reread`]), glibc kept the freed ones in its heap, and a
/// restart settled 200 MB higher (2026-12-05).
pub(crate) struct AlignedBytes {
    pointer: std::ptr::NonNull<u8>,
    /// The mapping's size.
    capacity: usize,
    /// Bytes read, at most `capacity`.
    pub(crate) len: usize,
}

// SAFETY: the buffer is owned; while it is being filled, the reading threads
// write disjoint ranges of it (see `read_chunks`), and once built it is never
// written again.
unsafe impl Send for AlignedBytes {}
// SAFETY: as above.
unsafe impl Sync for AlignedBytes {}

impl AlignedBytes {
    /// An uninitialised buffer of `capacity` bytes (a positive multiple of
    /// the direct I/O alignment), aligned for direct I/O. Its pages are
    /// faulted in by the reads that fill them, on the reading threads.
    pub(crate) fn new(capacity: usize) -> AlignedBytes {
        assert!(capacity > 0 && capacity.is_multiple_of(segment::DIRECT_IO_ALIGN), "a buffer of whole blocks");
        // SAFETY: an anonymous private mapping of a positive size, at an
        // address of the kernel's choosing, has no preconditions.
        let mapped = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                capacity,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        let pointer = match std::ptr::NonNull::new(mapped.cast::<u8>()) {
            Some(pointer) if mapped != libc::MAP_FAILED => pointer,
            _ => {
                let layout = std::alloc::Layout::from_size_align(capacity, segment::DIRECT_IO_ALIGN);
                std::alloc::handle_alloc_error(layout.expect("a valid layout"))
            }
        };
        AlignedBytes { pointer, capacity, len: 0 }
    }

    /// Reads `[at, at + want)` of the file into the same range of the
    /// buffer, until it is full or the file ends; returns the bytes read.
    ///
    /// # Safety
    ///
    /// No other thread reads or writes that range of the buffer meanwhile,
    /// and `at + want` is at most the buffer's size.
    unsafe fn read_at(&self, file: &fs::File, at: usize, want: usize) -> std::io::Result<usize> {
        // SAFETY: the caller's promise, with the file and buffer offsets equal.
        unsafe { self.read_into(file, at as u64, at, want) }
    }

    /// Reads `want` bytes of the file from `file_at` into the buffer from
    /// `at`, until they are read or the file ends; returns the bytes read.
    ///
    /// # Safety
    ///
    /// No other thread reads or writes `[at, at + want)` of the buffer
    /// meanwhile, and `at + want` is at most the buffer's size.
    pub(crate) unsafe fn read_into(
        &self,
        file: &fs::File,
        file_at: u64,
        at: usize,
        want: usize,
    ) -> std::io::Result<usize> {
        use std::os::unix::io::AsRawFd;
        let mut done = 0;
        while done < want {
            // SAFETY: the destination lies inside the allocation (the
            // caller's promise), and `pread` writes at most `want - done`
            // bytes there.
            let read = unsafe {
                libc::pread(
                    file.as_raw_fd(),
                    self.pointer.as_ptr().add(at + done).cast(),
                    want - done,
                    (file_at + done as u64) as libc::off_t,
                )
            };
            if read < 0 {
                let error = std::io::Error::last_os_error();
                if error.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(error);
            }
            if read == 0 {
                break;
            }
            done += read as usize;
        }
        Ok(done)
    }
}

impl AsRef<[u8]> for AlignedBytes {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: the first `len` bytes were written by `pread`.
        unsafe { std::slice::from_raw_parts(self.pointer.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBytes {
    fn drop(&mut self) {
        // SAFETY: mapped in `AlignedBytes::new` with this size, and no
        // borrow of it outlives `self`.
        unsafe { libc::munmap(self.pointer.as_ptr().cast(), self.capacity) };
    }
}

/// How many segments may wait, opened, ahead of the one being checked.
const SEGMENTS_AHEAD: usize = 2;

/// Runs `consume` with a function that returns the segments at `paths`, in
/// order, each read whole as [`read_segment`] does, but with `O_DIRECT`
/// where the file system allows it: the disk writes straight into the
/// buffer instead of the page cache and a copy (the copy was a quarter of
/// recovery's CPU). A thread opens the segments ahead of need and
/// [`READS_IN_FLIGHT`] threads read them in [`READ_CHUNK`] reads in file
/// order, across segment boundaries, so the disk queue stays full from the
/// first byte to the last.
fn read_segments<T>(paths: Vec<PathBuf>, consume: impl FnOnce(&mut dyn FnMut() -> Result<Bytes, WalError>) -> T) -> T {
    // No more reading threads than chunks (a small log needs few), and one
    // at least, however the files change after this look.
    let chunks: usize = paths
        .iter()
        .map(|path| fs::metadata(path).map_or(1, |metadata| (metadata.len() as usize).div_ceil(READ_CHUNK)))
        .sum();
    let threads = READS_IN_FLIGHT.min(chunks).max(1);
    let reads = SegmentReads::default();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let _leave = Leave { reads: &reads, consumer: false };
            reads.open_all(paths);
        });
        for _ in 0..threads {
            scope.spawn(|| {
                let _leave = Leave { reads: &reads, consumer: false };
                reads.read_chunks();
            });
        }
        // Ends the threads however `consume` returns, unwinding included.
        let _leave = Leave { reads: &reads, consumer: true };
        consume(&mut || reads.next())
    })
}

/// The segments being read, shared by the opening thread, the reading
/// threads and the consumer.
#[derive(Default)]
struct SegmentReads {
    state: std::sync::Mutex<ReadsState>,
    changed: std::sync::Condvar,
}

#[derive(Default)]
struct ReadsState {
    /// Segments opened and not yet taken by the consumer, in order.
    queue: std::collections::VecDeque<Opened>,
    /// How many segments the consumer took: the first queued segment's
    /// number.
    taken: usize,
    /// Whether every segment has been opened (or opening stopped).
    opened_all: bool,
    /// Whether the consumer is gone: the threads end.
    stopped: bool,
    /// Whether a thread panicked: the consumer must not wait for it.
    panicked: bool,
}

/// A segment as opened: read already, or being read chunk by chunk.
enum Opened {
    Done(Result<Bytes, WalError>),
    Reading(Reading),
}

/// A segment being read in [`READ_CHUNK`] reads.
struct Reading {
    path: PathBuf,
    segment: std::sync::Arc<DirectSegment>,
    chunks: usize,
    /// Chunks handed to reading threads, and of those not finished.
    taken: usize,
    pending: usize,
    /// Where the bytes read end: the end of the first chunk the end of the
    /// file cut short, if any.
    end: usize,
    error: Option<std::io::Error>,
}

/// A segment file opened with `O_DIRECT`, and the buffer it is read into.
struct DirectSegment {
    file: fs::File,
    buffer: AlignedBytes,
    size: usize,
}

/// Tells the others, when a thread of [`read_segments`] leaves, that the
/// consumer is gone or that a thread panicked.
struct Leave<'a> {
    reads: &'a SegmentReads,
    consumer: bool,
}

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        let panicked = std::thread::panicking();
        if self.consumer || panicked {
            let mut state = self.reads.lock();
            state.stopped = true;
            state.panicked |= panicked;
            self.reads.changed.notify_all();
        }
    }
}

impl SegmentReads {
    fn lock(&self) -> std::sync::MutexGuard<'_, ReadsState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn wait<'a>(&self, state: std::sync::MutexGuard<'a, ReadsState>) -> std::sync::MutexGuard<'a, ReadsState> {
        self.changed.wait(state).unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Opens the segments in order, at most [`SEGMENTS_AHEAD`] ahead of the
    /// consumer.
    fn open_all(&self, paths: Vec<PathBuf>) {
        for path in paths {
            let mut state = self.lock();
            while state.queue.len() >= SEGMENTS_AHEAD && !state.stopped {
                state = self.wait(state);
            }
            if state.stopped {
                break;
            }
            drop(state);
            let opened = open_direct_segment(path);
            self.lock().queue.push_back(opened);
            self.changed.notify_all();
        }
        self.lock().opened_all = true;
        self.changed.notify_all();
    }

    /// Reads chunks, the first not yet taken each time, until every
    /// segment is read or the consumer is gone.
    fn read_chunks(&self) {
        let mut state = self.lock();
        loop {
            if state.stopped {
                return;
            }
            let next = state.queue.iter_mut().enumerate().find_map(|(position, opened)| match opened {
                Opened::Reading(reading) if reading.taken < reading.chunks => Some((position, reading)),
                _ => None,
            });
            let Some((position, reading)) = next else {
                if state.opened_all {
                    return;
                }
                state = self.wait(state);
                continue;
            };
            let (segment, chunk) = (reading.segment.clone(), reading.taken);
            reading.taken += 1;
            // The consumer may take earlier segments meanwhile, not this one.
            let number = state.taken + position;
            drop(state);
            let at = chunk * READ_CHUNK;
            let want = READ_CHUNK.min(segment.buffer.capacity - at);
            // SAFETY: each chunk, inside the buffer, is handed to one thread
            // only, and the buffer is not read before every chunk is done.
            let read = unsafe { segment.buffer.read_at(&segment.file, at, want) };
            drop(segment);
            state = self.lock();
            let position = number - state.taken;
            let Opened::Reading(reading) = &mut state.queue[position] else { unreachable!("a segment being read") };
            reading.pending -= 1;
            match read {
                Ok(read) if read < want => reading.end = reading.end.min(at + read),
                Ok(_) => {}
                Err(error) => reading.error = reading.error.take().or(Some(error)),
            }
            if reading.pending == 0 && reading.taken == reading.chunks {
                self.changed.notify_all();
            }
        }
    }

    /// The next segment's bytes, once read.
    fn next(&self) -> Result<Bytes, WalError> {
        let mut state = self.lock();
        let opened = loop {
            let ready = match state.queue.front() {
                Some(Opened::Reading(reading)) => reading.pending == 0 && reading.taken == reading.chunks,
                Some(Opened::Done(_)) => true,
                None => false,
            };
            if ready {
                state.taken += 1;
                break state.queue.pop_front().expect("a segment");
            }
            assert!(!state.panicked, "a thread reading the segments panicked");
            assert!(!(state.opened_all && state.queue.is_empty()), "no more segments than paths");
            state = self.wait(state);
        };
        self.changed.notify_all();
        drop(state);
        match opened {
            Opened::Done(result) => result,
            Opened::Reading(reading) => reading.finish(),
        }
    }
}

impl Reading {
    /// The segment's bytes, from a reading whose chunks are all done.
    fn finish(self) -> Result<Bytes, WalError> {
        if let Some(error) = self.error {
            return Err(WalError::io("reading", &self.path, error));
        }
        let Ok(DirectSegment { mut buffer, size, .. }) = std::sync::Arc::try_unwrap(self.segment) else {
            unreachable!("the reading threads let go of a segment before they finish its chunks")
        };
        buffer.len = self.end.min(size);
        Ok(Bytes::from_owner(buffer))
    }
}

/// Opens a segment for [`SegmentReads`] once no dead process's write to it
/// is still in flight; a file system without `O_DIRECT` reads it buffered.
fn open_direct_segment(path: PathBuf) -> Opened {
    use std::os::unix::fs::OpenOptionsExt;
    let file = match fs::OpenOptions::new().read(true).custom_flags(libc::O_DIRECT).open(&path) {
        Ok(file) => file,
        Err(error) if error.raw_os_error() == Some(libc::EINVAL) => {
            return Opened::Done(read_segment(&path).map(Bytes::from))
        }
        Err(error) => return Opened::Done(Err(WalError::io("opening", &path, error))),
    };
    let size = match segment::lock_segment(&file, &path, libc::LOCK_SH)
        .and_then(|()| file.metadata().map_err(|error| WalError::io("reading", &path, error)))
    {
        Ok(metadata) => metadata.len() as usize,
        Err(error) => return Opened::Done(Err(error)),
    };
    if size == 0 {
        return Opened::Done(Ok(Bytes::new()));
    }
    let buffer = AlignedBytes::new(segment::align_up(size as u64) as usize);
    let chunks = buffer.capacity.div_ceil(READ_CHUNK);
    let end = buffer.capacity;
    let segment = std::sync::Arc::new(DirectSegment { file, buffer, size });
    Opened::Reading(Reading { path, segment, chunks, taken: 0, pending: chunks, end, error: None })
}

/// Reads a whole segment once no dead process's write to it is still in
/// flight (see [`segment::lock_segment`]).
fn read_segment(path: &Path) -> Result<Vec<u8>, WalError> {
    use std::io::Read;
    let mut file = fs::File::open(path).map_err(|error| WalError::io("opening", path, error))?;
    segment::lock_segment(&file, path, libc::LOCK_SH)?;
    let mut raw = Vec::new();
    file.read_to_end(&mut raw).map_err(|error| WalError::io("reading", path, error))?;
    Ok(raw)
}

/// Zeroes `[from, to)` of a segment and syncs it, so a cut tail stays cut.
///
/// It writes the zeros rather than punching them with
/// `FALLOC_FL_ZERO_RANGE`: that would leave unwritten extents, and every
/// later synced write into them would also have to commit their conversion
/// (see [`segment`]).
fn zero_tail(path: &PathBuf, from: u64, to: u64) -> Result<(), WalError> {
    use std::os::unix::fs::FileExt;
    const CHUNK: u64 = 1 << 20;
    let file = fs::OpenOptions::new().write(true).open(path).map_err(|error| WalError::io("opening", path, error))?;
    let zeros = vec![0u8; CHUNK.min(to.saturating_sub(from)) as usize];
    let mut at = from;
    while at < to {
        let length = (to - at).min(CHUNK) as usize;
        file.write_all_at(&zeros[..length], at)
            .map_err(|error| WalError::io("zeroing the torn tail of", path, error))?;
        at += length as u64;
    }
    file.sync_data().map_err(|error| WalError::io("syncing", path, error))
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine::EntryKind;

    fn batch(first: Index, count: u64, term: u64) -> Vec<u8> {
        let entries: Vec<Entry> = (first..first + count)
            .map(|index| Entry { index, term, kind: EntryKind::Normal, data: Bytes::from(vec![index as u8; 20]) })
            .collect();
        EntryBatch::encode(&entries).as_bytes().to_vec()
    }

    fn segment(batches: &[Vec<u8>], size: usize) -> Vec<u8> {
        let mut raw: Vec<u8> = batches.concat();
        raw.resize(size, 0);
        raw
    }

    const LIMIT: usize = 1 << 20;

    #[test]
    fn the_first_non_zero_byte_is_found_wherever_it_lies() {
        for length in [0, 1, 63, 64, 65, 200] {
            assert_eq!(first_non_zero(&vec![0u8; length]), None, "{length} zeros");
            for at in 0..length {
                let mut bytes = vec![0u8; length];
                bytes[at] = 0x80;
                if at + 1 < length {
                    bytes[length - 1] = 1;
                }
                assert_eq!(first_non_zero(&bytes), Some(at), "length {length}, byte {at}");
            }
        }
    }

    #[test]
    fn clean_segment_ends_at_zeros() {
        let raw = segment(&[batch(1, 3, 1), batch(4, 2, 1)], 1000);
        let scan = scan(Path::new("s"), &Bytes::from(raw), (None, false), 64, LIMIT).unwrap();
        assert_eq!(scan.records.len(), 2);
        assert!(!scan.torn);
    }

    #[test]
    fn torn_newest_tail_is_cut_but_the_same_damage_in_an_older_segment_is_refused() {
        let first = batch(1, 3, 1);
        let mut raw = segment(&[first.clone(), batch(4, 2, 1)], 1000);
        raw[first.len() + 50] ^= 0xff;
        let raw = Bytes::from(raw);
        let scan_newest = scan(Path::new("s"), &raw, (None, true), 4096, LIMIT).unwrap();
        assert_eq!((scan_newest.records.len(), scan_newest.end, scan_newest.torn), (1, first.len(), true));
        let older = scan(Path::new("s"), &raw, (None, false), 4096, LIMIT).unwrap();
        assert_eq!((older.records.len(), older.end), (1, first.len()), "the good prefix is kept");
        let error = older.damage.expect("damage in an older segment is never a torn write");
        assert!(matches!(error, WalError::Corrupt { offset, .. } if offset == first.len() as u64), "{error}");
    }

    #[test]
    fn valid_record_beyond_the_window_is_corruption() {
        let records: Vec<Vec<u8>> = (0..20).map(|i| batch(1 + 3 * i, 3, 1)).collect();
        let mut raw = segment(&records, 8000);
        raw[10] ^= 0x01;
        let raw = Bytes::from(raw);
        let error = scan(Path::new("s"), &raw, (None, true), 256, LIMIT).unwrap().damage.expect("corruption");
        assert!(matches!(error, WalError::Corrupt { offset: 0, .. }), "{error}");
        // Even within the window, valid records after the damage make it
        // damage, not a torn write, and say what the cut loses.
        let within = scan(Path::new("s"), &raw, (None, true), 8000, LIMIT).unwrap();
        assert!(within.damage.is_some());
        assert_eq!(within.index_after_damage, Some(60));
    }

    /// Groups as the writer lays them: each from an aligned offset, padded
    /// with zeros to the next.
    fn padded(groups: &[Vec<u8>], size: usize) -> Vec<u8> {
        let mut raw = Vec::new();
        for group in groups {
            raw.extend_from_slice(group);
            raw.resize(raw.len().next_multiple_of(segment::DIRECT_IO_ALIGN), 0);
        }
        raw.resize(size, 0);
        raw
    }

    #[test]
    fn padding_after_each_group_is_skipped_even_when_shorter_than_a_header() {
        let align = segment::DIRECT_IO_ALIGN;
        let first = [batch(1, 3, 1), batch(4, 2, 1)].concat();
        // A group whose last record ends 10 bytes before the boundary: the
        // next group's header lies within a header's length of the padding.
        let mut second = batch(6, 1, 1);
        let filler = batch(7, 1, 1).len();
        let mut index = 7;
        while second.len() + filler < align - 10 - 200 {
            second.extend_from_slice(&batch(index, 1, 1));
            index += 1;
        }
        let last_length = align - 10 - second.len();
        // One more record sized so the group ends exactly 10 bytes short.
        let entry = Entry { index, term: 1, kind: EntryKind::Normal, data: Bytes::new() };
        let empty = EntryBatch::encode(&[entry]).as_bytes().len();
        let data = Bytes::from(vec![7u8; last_length - empty]);
        let entry = Entry { index, term: 1, kind: EntryKind::Normal, data };
        second.extend_from_slice(EntryBatch::encode(&[entry]).as_bytes());
        assert_eq!(second.len(), align - 10);
        let third = batch(index + 1, 2, 1);
        let raw = Bytes::from(padded(&[first, second, third], 6 * align));
        let scan = scan(Path::new("s"), &raw, (None, false), 64, LIMIT).unwrap();
        let offsets: Vec<usize> = scan.records.iter().map(|span| span.offset).collect();
        assert_eq!(offsets.len(), 2 + (index as usize - 6 + 1) + 1, "{offsets:?}");
        assert_eq!((offsets[2], *offsets.last().unwrap()), (align, 2 * align), "groups start aligned");
        assert_eq!((scan.end, scan.torn), (3 * align, false), "the log ends after the last group's padding");
        // A non-zero byte in a group's padding is damage, not padding.
        let mut damaged = raw.to_vec();
        damaged[2 * align - 5] = 1;
        let error = scan_error(&damaged);
        assert!(matches!(error, WalError::Corrupt { offset, .. } if offset == 2 * align as u64 - 10), "{error}");
    }

    /// A record one byte of payload long per `size`, for exact layouts.
    fn record(index: Index, size: usize, fill: u8) -> Vec<u8> {
        let empty = EntryBatch::encode(&[Entry { index, term: 1, kind: EntryKind::Normal, data: Bytes::new() }]);
        let data = Bytes::from(vec![fill; size - empty.as_bytes().len()]);
        EntryBatch::encode(&[Entry { index, term: 1, kind: EntryKind::Normal, data }]).as_bytes().to_vec()
    }

    #[test]
    fn a_record_starting_with_zero_bytes_just_before_a_boundary_is_not_padding() {
        let align = segment::DIRECT_IO_ALIGN;
        // Within one group: a record ending 2 bytes before a boundary, then a
        // record whose crc begins with two zero bytes (found by search).
        let first = record(1, align - 2, 1);
        let second = (0..=u8::MAX)
            .flat_map(|fill| (100..1100).map(move |size| record(2, size, fill)))
            .find(|bytes| bytes[..2] == [0, 0])
            .expect("some payload gives a crc with two low zero bytes");
        let raw = Bytes::from(padded(&[[first, second].concat()], 3 * align));
        let scan = scan(Path::new("s"), &raw, (None, false), 64, LIMIT).unwrap();
        let offsets: Vec<usize> = scan.records.iter().map(|span| span.offset).collect();
        assert_eq!(offsets, vec![0, align - 2], "the second record is read, not skipped as padding");
    }

    /// A writer that died with a direct write in flight still holds its
    /// segment's lock until the write lands: recovery reads after it.
    #[test]
    fn recovery_reads_a_segment_only_after_its_last_writer_lets_go() {
        use std::io::Write;
        let path = std::env::temp_dir().join(format!("wal-fence-{}", std::process::id()));
        std::fs::write(&path, b"early").unwrap();
        let (locked, lock_taken) = std::sync::mpsc::channel();
        let holder = {
            let path = path.clone();
            std::thread::spawn(move || {
                let mut file = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
                segment::lock_segment(&file, &path, libc::LOCK_EX).unwrap();
                locked.send(()).unwrap();
                // The "in-flight write" lands a while later, then the
                // description (and its lock) goes.
                std::thread::sleep(std::time::Duration::from_millis(200));
                file.write_all(b"-late").unwrap();
                drop(file);
            })
        };
        lock_taken.recv().unwrap();
        let read = read_segment(&path).unwrap();
        holder.join().unwrap();
        assert_eq!(read, b"early-late", "read before the last write landed");
        // Not held: no wait, and a shared lock does not exclude another.
        let other = std::fs::File::open(&path).unwrap();
        segment::lock_segment(&other, &path, libc::LOCK_SH).unwrap();
        assert_eq!(read_segment(&path).unwrap(), b"early-late");
        drop(other);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn segments_are_read_whole_and_in_order_across_chunks_and_threads() {
        let dir = std::env::temp_dir().join(format!("wal-read-segments-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // Sizes around the chunk and alignment boundaries, an empty file and
        // a missing one, more files than may wait ahead.
        let sizes = [3 * READ_CHUNK + 100, 0, READ_CHUNK, 4096, 5, READ_CHUNK - 1, 2 * READ_CHUNK + 4096];
        let mut paths = Vec::new();
        for (number, &size) in sizes.iter().enumerate() {
            let path = dir.join(format!("{number}.wal"));
            let bytes: Vec<u8> = (0..size).map(|at| (at * 7 + number * 13 + at / 4096) as u8).collect();
            std::fs::write(&path, &bytes).unwrap();
            paths.push((path, Some(bytes)));
        }
        paths.insert(3, (dir.join("missing.wal"), None));
        let read = read_segments(paths.iter().map(|(path, _)| path.clone()).collect(), |read| {
            paths.iter().map(|_| read()).collect::<Vec<_>>()
        });
        for ((path, expected), read) in paths.iter().zip(read) {
            match expected {
                Some(bytes) => assert!(read.unwrap() == bytes[..], "{} read back differently", path.display()),
                None => assert!(matches!(read, Err(WalError::Io { .. })), "{} is missing", path.display()),
            }
        }
        // A consumer that stops early ends the reading threads.
        let first = read_segments(paths.iter().map(|(path, _)| path.clone()).collect(), |read| read());
        assert_eq!(first.unwrap().len(), sizes[0]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn scan_error(raw: &[u8]) -> WalError {
        scan(Path::new("s"), &Bytes::copy_from_slice(raw), (None, false), 64, LIMIT).unwrap().damage.expect("damage")
    }

    /// Plans recovery of in-memory segment images with a default config.
    fn plan_of(images: &[(Index, Vec<u8>)]) -> Plan {
        let names: Vec<SegmentInput> = images
            .iter()
            .map(|(first_index, _)| SegmentInput { path: Path::new("s"), first_index: *first_index, salt: None })
            .collect();
        let mut next = images.iter().map(|(_, raw)| Bytes::from(raw.clone()));
        let config = WalConfig::new("unused", 1, 1);
        plan(&names, || Ok(next.next().expect("one per name")), (0, 0), &config, None).unwrap()
    }

    #[test]
    fn a_record_written_over_another_is_damage_not_a_refusal() {
        let (first, second, third) = (batch(1, 3, 1), batch(4, 3, 1), batch(7, 3, 1));
        // The third record's write landed on the second's place (the
        // same length, so the third place keeps a valid copy): entry 7
        // follows entry 3, a gap.
        let raw = segment(&[first.clone(), third.clone(), third.clone()], 2000);
        let plan = plan_of(&[(1, raw)]);
        assert_eq!(plan.replay.last_index(), 3, "the good prefix is kept");
        assert!(plan.damage.is_some());
        assert_eq!(plan.damage_index_max, 9, "what the cut removed counts as acknowledged");
        // A stale copy of the first record written over the last one: a
        // replay would silently truncate to entry 3.
        let raw = segment(&[first.clone(), second.clone(), first.clone()], 2000);
        let plan = plan_of(&[(1, raw)]);
        assert_eq!(plan.replay.last_index(), 6);
        assert!(plan.damage.is_some(), "entry 1 of term 1 again is out of place");
        // A segment whose first record is not its name's: cut whole, and
        // the damage removes the later segments, whose entries count.
        let older = segment(std::slice::from_ref(&first), 2000);
        let moved = segment(std::slice::from_ref(&third), 2000);
        let later = segment(&[batch(10, 2, 1)], 2000);
        let plan = plan_of(&[(1, older), (4, moved), (10, later)]);
        assert_eq!((plan.replay.last_index(), plan.kept), (3, 1), "the empty cut segment goes too");
        assert_eq!(plan.damage_index_max, 11);
    }

    /// A record as the writer lays it in a segment salted with `salt`.
    fn salted(record: &[u8], salt: u32) -> Vec<u8> {
        let mut record = record.to_vec();
        let crc = u32::from_le_bytes(record[..4].try_into().unwrap()) ^ salt;
        record[..4].copy_from_slice(&crc.to_le_bytes());
        record
    }

    /// Groups of records salted with `salt`, each group padded as the
    /// writer pads it, written over `old` (a recycled file's bytes).
    fn salted_over(old: &[u8], groups: &[Vec<Vec<u8>>], salt: u32) -> Vec<u8> {
        let groups: Vec<Vec<u8>> =
            groups.iter().map(|group| group.iter().flat_map(|record| salted(record, salt)).collect()).collect();
        let length = groups.iter().map(|group| group.len().next_multiple_of(segment::DIRECT_IO_ALIGN)).sum();
        let new = padded(&groups, length);
        let mut raw = old.to_vec();
        raw[..new.len()].copy_from_slice(&new);
        raw
    }

    const OLD_SALT: u32 = 0x1111_2222;
    const NEW_SALT: u32 = 0x3333_4444;

    /// A recycled file's earlier life: a group at every aligned offset, of
    /// records valid under [`OLD_SALT`], from index `first` on.
    fn earlier_life(first: Index, blocks: usize) -> Vec<u8> {
        let groups: Vec<Vec<u8>> =
            (0..blocks as u64).map(|at| salted(&batch(first + 2 * at, 2, 1), OLD_SALT)).collect();
        padded(&groups, blocks * segment::DIRECT_IO_ALIGN)
    }

    fn scan_salted(raw: &[u8], salt: u32, is_newest: bool, window: usize) -> Scan {
        scan(Path::new("s"), &Bytes::copy_from_slice(raw), (Some(salt), is_newest), window, LIMIT).unwrap()
    }

    /// Plans recovery of salted segment images `(first index, bytes)` on
    /// top of a snapshot at the index before the first.
    fn plan_salted(images: &[(Index, Vec<u8>)], salt: u32) -> Plan {
        let names: Vec<SegmentInput> = images
            .iter()
            .map(|(first_index, _)| SegmentInput { path: Path::new("s"), first_index: *first_index, salt: Some(salt) })
            .collect();
        let mut next = images.iter().map(|(_, raw)| Bytes::from(raw.clone()));
        let config = WalConfig::new("unused", 1, 1);
        let snapshot_index = images.first().map_or(0, |(first_index, _)| first_index - 1);
        plan(&names, || Ok(next.next().expect("one per name")), (snapshot_index, 0), &config, None).unwrap()
    }

    #[test]
    fn a_recycled_segments_earlier_records_are_not_read_as_records() {
        let align = segment::DIRECT_IO_ALIGN;
        for earlier_first in [1, 5, 1000] {
            // Lower, overlapping and higher indexes than the new records'.
            let old = earlier_life(earlier_first, 8);
            let raw = salted_over(&old, &[vec![batch(5, 3, 2), batch(8, 1, 2)], vec![batch(9, 2, 2)]], NEW_SALT);
            for is_newest in [false, true] {
                let scan = scan_salted(&raw, NEW_SALT, is_newest, 2 * align);
                assert_eq!(scan.records.len(), 3, "from {earlier_first}");
                assert_eq!((scan.end, scan.torn), (2 * align, is_newest), "zeroed where writing resumes");
                assert!(scan.damage.is_none() && scan.index_after_damage.is_none());
            }
            let plan = plan_salted(&[(5, raw.clone())], NEW_SALT);
            assert!(plan.damage.is_none(), "an earlier life is no damage");
            assert_eq!(plan.torn, vec![(0, 2 * align, raw.len())]);
            assert_eq!(
                plan.replay.entries.iter().map(|e| (e.index, e.term)).collect::<Vec<_>>(),
                [5, 6, 7, 8, 9, 10].map(|i| (i, 2))
            );
            // The same bytes read under the earlier salt are records: the
            // salt, not their content, tells the lives apart.
            assert_eq!(scan_salted(&raw, OLD_SALT, false, 0).records.len(), 0, "the new first record fails");
            assert_eq!(scan_salted(&old, OLD_SALT, false, 0).records.len(), 8);
        }
    }

    #[test]
    fn a_valid_record_beyond_the_window_in_a_recycled_segment_is_corruption() {
        let align = segment::DIRECT_IO_ALIGN;
        let old = earlier_life(1, 16);
        let mut groups: Vec<Vec<Vec<u8>>> = (0..8).map(|at| vec![batch(1 + at, 1, 1)]).collect();
        let mut raw = salted_over(&old, &groups, NEW_SALT);
        // A block in the middle reads as an earlier life's (a lost write).
        raw[3 * align..4 * align].copy_from_slice(&old[3 * align..4 * align]);
        let scan = scan_salted(&raw, NEW_SALT, true, align);
        assert_eq!((scan.records.len(), scan.end), (3, 3 * align));
        let error = scan.damage.expect("a valid record of this life lies beyond the window");
        assert!(matches!(error, WalError::Corrupt { offset, .. } if offset == 3 * align as u64), "{error}");
        assert!(error.to_string().contains("beyond"), "{error}");
        assert_eq!(scan.index_after_damage, Some(8));
        // Sealed: the same is damage, and so is any valid record after it.
        groups.truncate(5);
        let mut raw = salted_over(&old, &groups, NEW_SALT);
        raw[3 * align..4 * align].copy_from_slice(&old[3 * align..4 * align]);
        assert!(scan_salted(&raw, NEW_SALT, false, align).damage.is_some());
        // The cut zeroes the whole rest: the valid records after it must
        // not come back after the records written over the cut.
        let plan = plan_salted(&[(1, raw.clone())], NEW_SALT);
        assert_eq!(plan.torn, vec![(0, 3 * align, raw.len())]);
    }

    #[test]
    fn a_torn_tail_in_a_recycled_newest_segment_is_cut() {
        let align = segment::DIRECT_IO_ALIGN;
        let old = earlier_life(100, 8);
        let raw = salted_over(&old, &[vec![batch(1, 2, 1)], vec![batch(3, 2, 1), batch(5, 2, 1)]], NEW_SALT);
        let second = batch(3, 2, 1).len();
        // The second group's write stopped inside its second record.
        let mut torn = raw.clone();
        torn[align + second + 30..2 * align].copy_from_slice(&old[align + second + 30..2 * align]);
        let scan = scan_salted(&torn, NEW_SALT, true, 2 * align);
        assert_eq!((scan.records.len(), scan.end, scan.torn), (2, align + second, true));
        assert!(scan.damage.is_none(), "a torn write, not damage");
        let plan = plan_salted(&[(1, torn.clone())], NEW_SALT);
        assert_eq!(plan.replay.last_index(), 4);
        assert_eq!(plan.torn, vec![(0, align + second, torn.len())], "the rest is zeroed");
        // Sealed, the same bytes are damage: a group's last block ends in
        // zeros, never in an earlier life's bytes.
        let sealed = scan_salted(&torn, NEW_SALT, false, 2 * align);
        assert!(sealed.damage.is_some());
        // The second group lost from its first byte: the records end at
        // its aligned offset, nothing to zero.
        let mut lost = raw.clone();
        lost[align..2 * align].copy_from_slice(&old[align..2 * align]);
        let scan = scan_salted(&lost, NEW_SALT, true, 2 * align);
        assert_eq!((scan.records.len(), scan.end, scan.torn), (1, align, true));
        assert!(scan.damage.is_none());
    }

    #[test]
    fn a_sealed_recycled_segment_that_lost_its_last_record_is_damage() {
        let align = segment::DIRECT_IO_ALIGN;
        let old = earlier_life(50, 4);
        let full = salted_over(&old, &[vec![batch(1, 2, 1)], vec![batch(3, 2, 1)]], NEW_SALT);
        let mut lost = full.clone();
        lost[align..2 * align].copy_from_slice(&old[align..2 * align]);
        let next = salted_over(&old, &[vec![batch(5, 2, 1)]], NEW_SALT);
        let plan = plan_salted(&[(1, full.clone()), (5, next.clone())], NEW_SALT);
        assert!(plan.damage.is_none());
        assert_eq!(plan.replay.last_index(), 6);
        let plan = plan_salted(&[(1, lost.clone()), (5, next.clone())], NEW_SALT);
        assert_eq!((plan.replay.last_index(), plan.kept), (2, 1), "the next segment's records would leave a gap");
        assert!(plan.damage.is_some());
        assert_eq!(plan.damage_index_max, 6);
        // The newest segment renamed into place, then a crash before its
        // first record: its name alone shows the gap.
        let plan = plan_salted(&[(1, lost), (5, old.clone())], NEW_SALT);
        assert_eq!((plan.replay.last_index(), plan.kept), (2, 1));
        let error = plan.damage.expect("a lost tail");
        assert!(error.to_string().contains("gap"), "{error}");
        // With its tail, the empty newest segment is simply dropped.
        let plan = plan_salted(&[(1, full), (5, old)], NEW_SALT);
        assert!(plan.damage.is_none());
        assert_eq!((plan.replay.last_index(), plan.kept), (4, 1));
    }

    #[test]
    fn replay_truncates_conflicting_suffix_and_skips_snapshot() {
        let mut replay = Replay::new(2, 0, 0);
        let decode = |raw: Vec<u8>| EntryBatch::decode(&Bytes::from(raw), LIMIT).unwrap();
        let span = RecordSpan { offset: 0, length: 0 };
        replay.apply(&decode(batch(1, 5, 1)), 0, span);
        assert_eq!(replay.last_index(), 5);
        assert!(misplaced(&replay, &decode(batch(4, 1, 1)), None).is_some(), "entry 4 of term 1 again");
        assert!(misplaced(&replay, &decode(batch(4, 1, 2)), None).is_none(), "a truncation");
        assert!(misplaced(&replay, &decode(batch(6, 1, 0)), None).is_some(), "terms never decrease");
        replay.apply(&decode(batch(4, 1, 2)), 0, span);
        assert_eq!(replay.entries.iter().map(|e| (e.index, e.term)).collect::<Vec<_>>(), vec![(3, 1), (4, 2)]);
        assert!(misplaced(&replay, &decode(batch(6, 1, 2)), None).is_some(), "a gap");
        assert!(misplaced(&replay, &decode(batch(4, 1, 1)), None).is_none(), "a truncation to an older term");
        assert!(misplaced(&replay, &decode(batch(5, 1, 2)), Some(4)).is_some(), "not the segment's first index");
        assert!(misplaced(&replay, &decode(batch(5, 1, 2)), Some(5)).is_none());
    }

    /// Payloads beyond the budget are dropped oldest first, only up to the
    /// saved commit index, and the records they came from are named so that
    /// they can be read again; a truncation (a later record replacing
    /// entries) forgets what it replaced, records included.
    #[test]
    fn replay_drops_the_oldest_committed_payloads_beyond_its_budget_and_names_their_records() {
        let decode = |raw: Vec<u8>| EntryBatch::decode(&Bytes::from(raw), LIMIT).unwrap();
        let at = |offset| RecordSpan { offset, length: 100 };
        // Entries of 20 bytes; 50 bytes held at most; commit 8.
        let mut replay = Replay::new(0, 8, 50);
        replay.apply(&decode(batch(1, 4, 1)), 0, at(0));
        assert_eq!((replay.dropped_to, replay.held), (2, 40));
        replay.apply(&decode(batch(5, 4, 1)), 0, at(100));
        replay.apply(&decode(batch(9, 3, 1)), 1, at(0));
        // Entries above the commit index keep their payloads whatever the budget.
        assert_eq!((replay.dropped_to, replay.held), (8, 60));
        let holding: Vec<Index> = replay.entries.iter().filter(|e| !e.data.is_empty()).map(|e| e.index).collect();
        assert_eq!(holding, vec![9, 10, 11]);
        // A new leader's record replaces entries from 7 on (they were not
        // committed when the hard state was saved: the commit index counts
        // the durable log only when saved after it).
        replay.apply(&decode(batch(7, 2, 2)), 1, at(100));
        assert_eq!((replay.dropped_to, replay.held), (6, 40), "the new 7 and 8 are held, 9 to 11 gone");
        let records: Vec<(usize, usize, Index, Index)> =
            replay.records.iter().map(|r| (r.segment, r.offset, r.first, r.last)).collect();
        assert_eq!(records, vec![(0, 0, 1, 4), (0, 100, 5, 6), (1, 100, 7, 8)]);
        assert_eq!(replay.dropped_records().len(), 2, "the records of 1 to 6");
        // Budget 0: nothing dropped.
        let mut replay = Replay::new(0, 8, 0);
        replay.apply(&decode(batch(1, 8, 1)), 0, at(0));
        assert_eq!((replay.dropped_to, replay.held), (0, 160));
    }

    /// What a [`RecoveryApply`] taker saw: entries with their payloads, and
    /// discards.
    #[derive(Default)]
    struct Taken {
        entries: Vec<(Index, u64, usize)>,
        discards: usize,
    }

    impl RecoveryApply for Taken {
        fn apply(&mut self, entries: &[Entry]) {
            self.entries.extend(entries.iter().map(|entry| (entry.index, entry.term, entry.data.len())));
        }

        fn discard(&mut self) {
            self.discards += 1;
        }
    }

    /// A taker gets each dropped entry once, in order, payload included,
    /// as it is dropped; once a later record replaces an entry it was
    /// given, it is told to discard and gets nothing more.
    #[test]
    fn replay_hands_dropped_entries_over_until_one_is_replaced() {
        let decode = |raw: Vec<u8>| EntryBatch::decode(&Bytes::from(raw), LIMIT).unwrap();
        let at = |offset| RecordSpan { offset, length: 100 };
        let (mut replay, mut taken) = (Replay::new(0, 8, 50), Taken::default());
        replay.handing = true;
        replay.apply(&decode(batch(1, 4, 1)), 0, at(0));
        replay.hand_over(&mut taken);
        assert_eq!(taken.entries, vec![(1, 1, 20), (2, 1, 20)], "dropped as the budget was passed");
        replay.apply(&decode(batch(5, 4, 1)), 0, at(100));
        replay.hand_over(&mut taken);
        let indexes: Vec<Index> = taken.entries.iter().map(|&(index, _, _)| index).collect();
        assert_eq!(indexes, (1..=6).collect::<Vec<_>>());
        assert!(taken.entries.iter().all(|&(_, _, bytes)| bytes == 20), "payloads travel with the entries");
        assert!(replay.handing && taken.discards == 0);
        // A record replacing entries from 7 on touches none handed over.
        replay.apply(&decode(batch(7, 2, 2)), 0, at(200));
        replay.hand_over(&mut taken);
        assert!(replay.handing && taken.discards == 0, "7 and 8 were not handed over yet");
        // One replacing 6, which was: the taker discards, and gets no more.
        replay.apply(&decode(batch(6, 3, 3)), 0, at(300));
        replay.hand_over(&mut taken);
        assert_eq!((replay.handing, taken.discards), (false, 1));
        replay.apply(&decode(batch(9, 4, 3)), 1, at(0));
        replay.hand_over(&mut taken);
        assert_eq!((taken.entries.len(), taken.discards), (6, 1), "nothing after the discard");
        assert_eq!(replay.dropped_to, 8, "dropping goes on without a taker");
    }

    /// The taker keeps what it applied only when every dropped entry was
    /// handed over, some were dropped, and the replica is not in repair;
    /// in every other case it is told to discard (the WAL's open and the
    /// simulator's disk both decide with this).
    #[test]
    fn a_taker_keeps_its_applies_only_when_it_got_them_all_outside_repair() {
        for handed_over in [false, true] {
            for in_repair in [false, true] {
                for dropped_to in [10, 11] {
                    let mut taken = Taken::default();
                    let keeps = settle_taker(Some(&mut taken), handed_over, in_repair, (dropped_to, 10));
                    let expected = handed_over && !in_repair && dropped_to == 11;
                    let case = format!("handed over {handed_over}, in repair {in_repair}, dropped to {dropped_to}");
                    assert_eq!(keeps, expected, "{case}");
                    assert_eq!(taken.discards, usize::from(!expected), "{case}");
                }
            }
        }
        assert!(settle_taker(None, true, false, (11, 10)), "without a taker the rule still says what was handed over");
    }
}
