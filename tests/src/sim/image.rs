//! The log's bytes as the WAL lays them out, for storage faults at the byte
//! level (issue 16 item 5).
//!
//! Each durable append is one group: the entry batch, byte for byte as the
//! WAL writes it (its stored crc salted with the segment's salt), from a 4 KiB-aligned offset, padded with zeros to the next
//! boundary, in segments that switch when the next group does not fit (or
//! after a snapshot voided the log). A restart runs the WAL's own recovery
//! decisions ([`wal::recover_images`]) over these bytes, so a fault is
//! whatever that code makes of it: the simulator does not decide what a
//! flipped bit or a misdirected write costs, the WAL does.
//!
//! Segments that compaction frees, or a snapshot voids, are recycled as the
//! WAL recycles them (a small pool, deleted at a restart): a new segment may
//! start as an old one's bytes, and wherever a write did not land (lost,
//! torn) the disk holds those earlier bytes, or zeros in a fresh file.
//!
//! Faults ([`LogImage::damage`]), on a stopped node: a bit flipped in any
//! written byte (a latent sector error), a group that never reached the disk
//! though it was reported durable (a lost fsync), a group written at another
//! aligned offset instead of its own (a misdirected write), and a group whose
//! write stopped after any number of bytes (a torn write, anywhere in the
//! log). At a crash, the unsynced writes land as a prefix, the first one that
//! did not land torn after any number of bytes, and the one after it may
//! land whole (the WAL has two groups in flight).

use bytes::Bytes;
use engine::config::Rng;
use engine::{EntryBatch, Index};
use wal::{ImageRecovery, SegmentImage, WalConfig};

/// The faults [`LogImage::damage`] injects, by kind.
pub const FAULT_KINDS: [&str; 4] = ["bit flip", "lost write", "misdirected write", "torn write"];

/// Small segments, so that logs span several and damage strikes older ones.
const SEGMENT_BYTES: usize = 64 << 10;
const ALIGN: usize = 4096;

/// One segment file: its name's first index and salt, and its written bytes
/// (the rest of the file reads as zeros).
#[derive(Clone, Debug)]
struct Segment {
    first_index: Index,
    /// Each record's stored crc is XORed with it, as the WAL writes.
    salt: u32,
    bytes: Vec<u8>,
    /// Where each group's record starts and ends, and its last index.
    groups: Vec<(usize, usize, Index)>,
    /// A recycled file's earlier life: what reads where this life wrote
    /// nothing (zeros beyond it).
    stale: Vec<u8>,
}

impl Segment {
    /// `range` as the disk holds it where this life did not write: the
    /// earlier life's bytes, or zeros.
    fn underneath(&self, range: std::ops::Range<usize>) -> Vec<u8> {
        range.map(|at| self.stale.get(at).copied().unwrap_or(0)).collect()
    }

    /// The whole file's bytes up to its last non-zero one, about.
    fn image(&self) -> Vec<u8> {
        let mut bytes = self.bytes.clone();
        if self.stale.len() > bytes.len() {
            bytes.extend_from_slice(&self.stale[bytes.len()..]);
        }
        bytes
    }
}

/// The most compacted segments kept to recycle, as the WAL's pool (small,
/// so that many new segments are fresh too).
const POOL_MAX: usize = 2;

/// The segments of one replica's log, in sequence order.
#[derive(Clone, Debug, Default)]
pub struct LogImage {
    segments: Vec<Segment>,
    /// The next group opens a new segment.
    switch: bool,
    /// The sequence of the last segment opened (its salt's input).
    sequence: u64,
    /// Compacted segments' bytes, for new segments to reuse (see
    /// `wal::segment`, "Recycling"); a restart deletes them.
    pool: Vec<Vec<u8>>,
}

/// The salt key of every simulated log (any value: see [`wal::segment::salt`]).
const SALT_KEY: u32 = 0x5A17_5EED;

fn config() -> WalConfig {
    WalConfig::new("sim", 1, 1)
}

/// The payload budgets recovery runs with, in turn at each restart of a
/// disk (`WalConfig::recovery_payload_bytes`): none; a few entries' worth,
/// so that nearly every committed payload is dropped and read again; a few
/// dozen entries'.
const RECOVERY_BUDGETS: [u64; 3] = [0, 64, 2048];

impl LogImage {
    /// Writes `batch` as one group; with `landed`, only that many of its
    /// bytes reach the disk (a torn write).
    pub fn write(&mut self, batch: &EntryBatch, landed: Option<usize>) {
        let record = batch.as_bytes();
        if self.opens_segment(record.len()) {
            self.switch = false;
            self.sequence += 1;
            let salt = wal::segment::salt(self.sequence, SALT_KEY);
            let stale = self.pool.pop().unwrap_or_default();
            self.segments.push(Segment {
                first_index: batch.first_index(),
                salt,
                bytes: Vec::new(),
                groups: Vec::new(),
                stale,
            });
        }
        let segment = self.segments.last_mut().expect("just ensured");
        let start = segment.bytes.len();
        let landed = landed.unwrap_or(record.len()).min(record.len());
        let salted = salted(record, segment.salt);
        segment.bytes.extend_from_slice(&salted[..landed]);
        let aligned_end = (start + record.len()).next_multiple_of(ALIGN);
        if landed < record.len() {
            // The rest of the write never landed: the file's earlier bytes.
            let underneath = segment.underneath(start + landed..aligned_end);
            segment.bytes.extend_from_slice(&underneath);
        }
        segment.bytes.resize(aligned_end, 0);
        segment.groups.push((start, start + record.len(), batch.last_index()));
    }

    /// Whether a write of `batch` torn after `landed` bytes leaves the
    /// whole record on the disk anyway: what did not land is what the file
    /// already held there (zeros in a fresh file; a recycled file's earlier
    /// life, which may be the same entry at the same offset, written before
    /// a snapshot voided the log). Such a record is durable: recovery finds
    /// it whole.
    pub fn torn_write_is_whole(&self, batch: &EntryBatch, landed: usize) -> bool {
        let record = batch.as_bytes();
        let (salt, underneath): (u32, Vec<u8>) = if self.opens_segment(record.len()) {
            let stale = self.pool.last().cloned().unwrap_or_default();
            let salt = wal::segment::salt(self.sequence + 1, SALT_KEY);
            (salt, (landed..record.len()).map(|at| stale.get(at).copied().unwrap_or(0)).collect())
        } else {
            let last = self.segments.last().expect("fits implies a segment");
            let start = last.bytes.len();
            (last.salt, last.underneath(start + landed..start + record.len()))
        };
        salted(record, salt)[landed..] == underneath[..]
    }

    /// Whether the next group, of `length` bytes, opens a new segment.
    fn opens_segment(&self, length: usize) -> bool {
        self.switch || self.segments.last().is_none_or(|last| last.bytes.len() + length > SEGMENT_BYTES)
    }

    /// A snapshot that disagrees with the log voids every segment; they
    /// are recycled as the WAL recycles them.
    pub fn void(&mut self) {
        let voided = self.segments.len();
        self.free(voided);
        self.switch = true;
    }

    /// Removes the whole segments a snapshot at `index` covers, never the
    /// newest, as the WAL's compaction does.
    pub fn compact(&mut self, index: Index) {
        let candidates = self.segments.len().saturating_sub(1);
        let covered =
            self.segments[..candidates].iter().take_while(|segment| segment_index_max(segment) <= index).count();
        self.free(covered);
    }

    /// Takes the first `count` segments out of the log, into the pool while
    /// it has room.
    fn free(&mut self, count: usize) {
        for segment in self.segments.drain(..count) {
            if self.pool.len() < POOL_MAX {
                self.pool.push(segment.image());
            }
        }
    }

    /// What the WAL's recovery makes of these bytes on top of a snapshot at
    /// `snapshot_index`, without changing them; payloads of entries up to
    /// `commit` are dropped beyond the `budget`th of `RECOVERY_BUDGETS`
    /// (taken modulo their count).
    pub fn plan(
        &self,
        snapshot_index: Index,
        commit: Index,
        budget: usize,
        taker: Option<&mut dyn wal::RecoveryApply>,
    ) -> ImageRecovery {
        let images: Vec<SegmentImage> = self
            .segments
            .iter()
            .map(|segment| {
                // The file goes on with its earlier life's bytes, if it was
                // recycled, then zeros (preallocated).
                let mut bytes = segment.image();
                bytes.resize(bytes.len().next_multiple_of(ALIGN) + ALIGN, 0);
                SegmentImage { first_index: segment.first_index, salt: Some(segment.salt), bytes: Bytes::from(bytes) }
            })
            .collect();
        let mut config = config();
        config.recovery_payload_bytes = RECOVERY_BUDGETS[budget % RECOVERY_BUDGETS.len()];
        wal::recover_images(&images, (snapshot_index, commit), &config, taker)
            .expect("recovery decides, it does not fail")
    }

    /// Recovers (see [`LogImage::plan`]) and applies the decision as the WAL
    /// does: cut tails zeroed, segments after damage removed.
    /// With a `taker`, the dropped entries are handed to it as they are read
    /// (see `wal::RecoveryApply`).
    pub fn recover(
        &mut self,
        snapshot_index: Index,
        commit: Index,
        budget: usize,
        taker: Option<&mut dyn wal::RecoveryApply>,
    ) -> ImageRecovery {
        let recovery = self.plan(snapshot_index, commit, budget, taker);
        self.segments.truncate(recovery.kept);
        self.pool.clear();
        for (position, (segment, &end)) in self.segments.iter_mut().zip(&recovery.ends).enumerate() {
            segment.bytes.truncate(end);
            segment.bytes.resize(end.next_multiple_of(ALIGN), 0);
            segment.groups.retain(|&(_, group_end, _)| group_end <= end);
            if recovery.zeroed.contains(&position) {
                segment.stale.clear();
            }
        }
        recovery
    }

    /// One storage fault on a stopped disk (see the module documentation);
    /// returns its kind (an index into [`FAULT_KINDS`]), if it struck.
    pub fn damage(&mut self, rng: &mut Rng) -> Option<usize> {
        let written: Vec<usize> = (0..self.segments.len()).filter(|&at| !self.segments[at].groups.is_empty()).collect();
        if written.is_empty() {
            return None;
        }
        let at = written[rng.range(0, written.len() as u64) as usize];
        let segment = &mut self.segments[at];
        let (start, end, _) = segment.groups[rng.range(0, segment.groups.len() as u64) as usize];
        let kind = rng.range(0, FAULT_KINDS.len() as u64) as usize;
        match kind {
            0 => {
                let byte = rng.range(0, segment.bytes.len() as u64) as usize;
                segment.bytes[byte] ^= 1 << rng.range(0, 8);
            }
            1 => {
                let underneath = segment.underneath(start..end);
                segment.bytes[start..end].copy_from_slice(&underneath);
            }
            2 => {
                let record = segment.bytes[start..end].to_vec();
                let underneath = segment.underneath(start..end);
                segment.bytes[start..end].copy_from_slice(&underneath);
                let target = &mut self.segments[written[rng.range(0, written.len() as u64) as usize]];
                let slots = target.bytes.len().div_ceil(ALIGN) + 1;
                let offset = rng.range(0, slots as u64) as usize * ALIGN;
                let needed = (offset + record.len()).next_multiple_of(ALIGN);
                if target.bytes.len() < needed {
                    let underneath = target.underneath(target.bytes.len()..needed);
                    target.bytes.extend_from_slice(&underneath);
                }
                target.bytes[offset..offset + record.len()].copy_from_slice(&record);
            }
            _ => {
                let from = rng.range(start as u64, end as u64) as usize;
                let underneath = segment.underneath(from..end);
                segment.bytes[from..end].copy_from_slice(&underneath);
            }
        }
        Some(kind)
    }
}

impl std::fmt::Display for LogImage {
    /// The segments and their groups (for a failing seed's report).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for segment in &self.segments {
            write!(f, "[segment {} of {} bytes:", segment.first_index, segment.bytes.len())?;
            for (start, end, last) in &segment.groups {
                write!(f, " {start}..{end} to {last}")?;
            }
            write!(f, "] ")?;
        }
        Ok(())
    }
}

fn segment_index_max(segment: &Segment) -> Index {
    segment.groups.iter().map(|&(_, _, last)| last).max().unwrap_or(0)
}

/// `record` as the WAL stores it in a segment salted with `salt`: its
/// stored crc XORed with the salt.
fn salted(record: &[u8], salt: u32) -> Vec<u8> {
    let mut salted = record.to_vec();
    let crc = u32::from_le_bytes(salted[..4].try_into().expect("a batch header")) ^ salt;
    salted[..4].copy_from_slice(&crc.to_le_bytes());
    salted
}
