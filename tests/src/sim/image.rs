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
}

/// The segments of one replica's log, in sequence order.
#[derive(Clone, Debug, Default)]
pub struct LogImage {
    segments: Vec<Segment>,
    /// The next group opens a new segment.
    switch: bool,
    /// The sequence of the last segment opened (its salt's input).
    sequence: u64,
}

/// The salt key of every simulated log (any value: see [`wal::segment::salt`]).
const SALT_KEY: u32 = 0x5A17_5EED;

fn config() -> WalConfig {
    WalConfig::new("sim", 1, 1)
}

impl LogImage {
    /// Writes `batch` as one group; with `landed`, only that many of its
    /// bytes reach the disk (a torn write).
    pub fn write(&mut self, batch: &EntryBatch, landed: Option<usize>) {
        let record = batch.as_bytes();
        let fits = self.segments.last().is_some_and(|last| last.bytes.len() + record.len() <= SEGMENT_BYTES);
        if self.switch || !fits {
            self.switch = false;
            self.sequence += 1;
            let salt = wal::segment::salt(self.sequence, SALT_KEY);
            self.segments.push(Segment {
                first_index: batch.first_index(),
                salt,
                bytes: Vec::new(),
                groups: Vec::new(),
            });
        }
        let segment = self.segments.last_mut().expect("just ensured");
        let start = segment.bytes.len();
        let landed = landed.unwrap_or(record.len()).min(record.len());
        let mut salted = record.to_vec();
        let crc = u32::from_le_bytes(salted[..4].try_into().expect("a batch header")) ^ segment.salt;
        salted[..4].copy_from_slice(&crc.to_le_bytes());
        segment.bytes.extend_from_slice(&salted[..landed]);
        segment.bytes.resize((start + record.len()).next_multiple_of(ALIGN), 0);
        segment.groups.push((start, start + record.len(), batch.last_index()));
    }

    /// A snapshot that disagrees with the log voids every segment.
    pub fn void(&mut self) {
        self.segments.clear();
        self.switch = true;
    }

    /// Removes the whole segments a snapshot at `index` covers, never the
    /// newest, as the WAL's compaction does.
    pub fn compact(&mut self, index: Index) {
        let candidates = self.segments.len().saturating_sub(1);
        let covered =
            self.segments[..candidates].iter().take_while(|segment| segment_index_max(segment) <= index).count();
        self.segments.drain(..covered);
    }

    /// What the WAL's recovery makes of these bytes on top of a snapshot at
    /// `snapshot_index`, without changing them.
    pub fn plan(&self, snapshot_index: Index) -> ImageRecovery {
        let images: Vec<SegmentImage> = self
            .segments
            .iter()
            .map(|segment| {
                // The file goes on with zeros (preallocated) after the last
                // group written.
                let mut bytes = segment.bytes.clone();
                bytes.resize(bytes.len().next_multiple_of(ALIGN) + ALIGN, 0);
                SegmentImage { first_index: segment.first_index, salt: Some(segment.salt), bytes: Bytes::from(bytes) }
            })
            .collect();
        wal::recover_images(&images, snapshot_index, &config()).expect("recovery decides, it does not fail")
    }

    /// Recovers (see [`LogImage::plan`]) and applies the decision as the WAL
    /// does: cut tails zeroed, segments after damage removed.
    pub fn recover(&mut self, snapshot_index: Index) -> ImageRecovery {
        let recovery = self.plan(snapshot_index);
        self.segments.truncate(recovery.kept);
        for (segment, &end) in self.segments.iter_mut().zip(&recovery.ends) {
            segment.bytes.truncate(end);
            segment.bytes.resize(end.next_multiple_of(ALIGN), 0);
            segment.groups.retain(|&(_, group_end, _)| group_end <= end);
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
            1 => segment.bytes[start..end].fill(0),
            2 => {
                let record = segment.bytes[start..end].to_vec();
                segment.bytes[start..end].fill(0);
                let target = &mut self.segments[written[rng.range(0, written.len() as u64) as usize]];
                let slots = target.bytes.len().div_ceil(ALIGN) + 1;
                let offset = rng.range(0, slots as u64) as usize * ALIGN;
                let needed = (offset + record.len()).next_multiple_of(ALIGN);
                if target.bytes.len() < needed {
                    target.bytes.resize(needed, 0);
                }
                target.bytes[offset..offset + record.len()].copy_from_slice(&record);
            }
            _ => {
                let from = rng.range(start as u64, end as u64) as usize;
                segment.bytes[from..end].fill(0);
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
