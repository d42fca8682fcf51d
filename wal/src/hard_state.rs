//! The hard state (term, vote, commit, and the last term in which this
//! replica acknowledged entries) in two checksummed slots written
//! alternately, each with the durable log's last index at the time of the
//! save (`acknowledged`): every entry up to it was durable, so this replica
//! may have acknowledged it, and a recovered log that ends before it lost
//! entries to damage rather than to a torn write (issue 16).
//!
//! A save overwrites the older slot with a higher sequence number and
//! `fdatasync`s. A crash during the write can damage only that slot, and the
//! other still holds the previous value, so a reader always finds the old or the
//! new hard state. The cost is one small write and one `fdatasync`, with no
//! rename or directory sync on the path that gates vote replies.
//!
//! A slot with a bad checksum next to a good one is read as the torn write it
//! most likely is; the price is that a bit flip in the newer slot falls back to
//! the previous value (both slots damaged is refused).

use std::fs;
use std::path::{Path, PathBuf};

use engine::{HardState, Index};
use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::error::WalError;

/// The hard-state file's name.
pub const HARD_STATE_FILE: &str = "HARDSTATE";
/// Bytes per slot: one sector, so that on most devices a slot write is atomic
/// and a torn write never spans both slots.
pub const SLOT_SIZE: usize = 512;
/// Slots in the file.
pub const SLOT_COUNT: usize = 2;

const SLOT_MAGIC: [u8; 8] = *b"RAFTHARD";

/// One slot's layout; the rest of the slot is zero.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct SlotRecord {
    /// crc32c over bytes 4 to the end of the record of the slot's layout
    /// (56 bytes for layout 0, 64 for layout 1, 72 for layout 2).
    crc: U32,
    /// 0: written before `ack_term` existed (the record ends before it,
    /// and the term stands in for it on load); 1: with `ack_term`.
    layout: U32,
    magic: [u8; 8],
    /// Which save wrote this slot; the higher valid one wins.
    sequence: U64,
    term: U64,
    vote: U64,
    commit: U64,
    /// The durable log's last index when this slot was written.
    acknowledged: U64,
    /// `HardState::ack_term` (layouts 1 and 2).
    ack_term: U64,
    /// Bit 0: `HardState::verified` (layout 2 only).
    flags: U64,
}

const SLOT_RECORD_SIZE: usize = 72;
/// Where a layout-0 record (no `ack_term`) ends.
const SLOT_RECORD_SIZE_V0: usize = 56;
/// Where a layout-1 record (no flags) ends.
const SLOT_RECORD_SIZE_V1: usize = 64;
const SLOT_LAYOUT: u32 = 2;
const FLAG_VERIFIED: u64 = 1;
const _: () = assert!(size_of::<SlotRecord>() == SLOT_RECORD_SIZE);
const _: () = assert!(SLOT_RECORD_SIZE <= SLOT_SIZE);

/// What a slot holds.
#[derive(Debug)]
enum Slot {
    Empty,
    Valid { sequence: u64, hard_state: HardState, acknowledged: Index },
    Damaged { reason: String },
}

impl Slot {
    fn describe(&self) -> String {
        match self {
            Slot::Empty => "empty".into(),
            Slot::Valid { sequence, .. } => format!("valid, sequence {sequence}"),
            Slot::Damaged { reason } => format!("damaged ({reason})"),
        }
    }
}

fn decode_slot(raw: &[u8]) -> Slot {
    debug_assert_eq!(raw.len(), SLOT_SIZE);
    if raw.iter().all(|&byte| byte == 0) {
        return Slot::Empty;
    }
    let (record, _) = SlotRecord::ref_from_prefix(raw).expect("a slot holds a record");
    let end = match record.layout.get() {
        0 => SLOT_RECORD_SIZE_V0,
        1 => SLOT_RECORD_SIZE_V1,
        SLOT_LAYOUT => SLOT_RECORD_SIZE,
        other => return Slot::Damaged { reason: format!("unknown layout {other}") },
    };
    let computed = crc32c::crc32c(&raw[4..end]);
    if record.crc.get() != computed {
        return Slot::Damaged { reason: format!("crc32c {:#010x} != stored {:#010x}", computed, record.crc.get()) };
    }
    if record.magic != SLOT_MAGIC {
        return Slot::Damaged { reason: "bad magic".into() };
    }
    if raw[end..].iter().any(|&byte| byte != 0) {
        return Slot::Damaged { reason: "padding is not zero".into() };
    }
    // A layout-0 slot: the replica may have acknowledged in any term up to
    // its current one.
    let ack_term = if end >= SLOT_RECORD_SIZE_V1 { record.ack_term.get() } else { record.term.get() };
    // A slot written before the flag existed: the replica's past counts as
    // unknown only if its log is empty, which then it learns again.
    let flags = if end == SLOT_RECORD_SIZE { record.flags.get() } else { 0 };
    Slot::Valid {
        sequence: record.sequence.get(),
        hard_state: HardState {
            term: record.term.get(),
            vote: record.vote.get(),
            commit: record.commit.get(),
            ack_term,
            verified: flags & FLAG_VERIFIED != 0,
        },
        acknowledged: record.acknowledged.get(),
    }
}

fn encode_slot(sequence: u64, hard_state: HardState, acknowledged: Index) -> Vec<u8> {
    let mut record = SlotRecord {
        crc: U32::new(0),
        layout: U32::new(SLOT_LAYOUT),
        magic: SLOT_MAGIC,
        sequence: U64::new(sequence),
        term: U64::new(hard_state.term),
        vote: U64::new(hard_state.vote),
        commit: U64::new(hard_state.commit),
        acknowledged: U64::new(acknowledged),
        ack_term: U64::new(hard_state.ack_term),
        flags: U64::new(if hard_state.verified { FLAG_VERIFIED } else { 0 }),
    };
    record.crc = U32::new(crc32c::crc32c(&record.as_bytes()[4..]));
    let mut slot = vec![0u8; SLOT_SIZE];
    slot[..SLOT_RECORD_SIZE].copy_from_slice(record.as_bytes());
    slot
}

/// Creates the hard-state file holding the default hard state. Blocking; part
/// of directory initialization.
pub(crate) fn initialize(dir: &Path) -> Result<(), WalError> {
    // Sequence 1 lives in slot 1, the durable one, so the first save goes to
    // the empty slot 0 and never overwrites the only valid one.
    write_initial(dir, HardState::default(), 0)
}

/// Creates the hard-state file holding `hard_state` with `acknowledged` as
/// its only valid slot, the durable one (a seeded directory, see
/// [`crate::seed`]). Blocking.
pub(crate) fn write_initial(dir: &Path, hard_state: HardState, acknowledged: Index) -> Result<(), WalError> {
    let mut raw = vec![0u8; SLOT_SIZE];
    raw.extend_from_slice(&encode_slot(1, hard_state, acknowledged));
    crate::dir::write_file_atomically(dir, HARD_STATE_FILE, &raw)
}

/// The newest valid slot: its hard state, acknowledged index, sequence
/// number and slot number.
pub(crate) type Loaded = (HardState, Index, u64, usize);

/// Reads the newest valid hard state, its acknowledged index, its sequence
/// number and its slot. Blocking; used on open.
pub(crate) fn load(dir: &Path) -> Result<Loaded, WalError> {
    let path = dir.join(HARD_STATE_FILE);
    let raw = fs::read(&path).map_err(|error| WalError::io("reading", &path, error))?;
    decode_file(&path, &raw)
}

/// Like [`load`], for a node's open: damage does not stop it (issue 16).
/// A damaged slot may have held the newest durable term and vote (a bit
/// flip, not only a torn save), so any damage comes back as the error
/// describing it (the caller then treats this replica's past votes and
/// acknowledgements as unknown and repairs from its peers). With no valid
/// slot, or a file of the wrong size, the file is kept as
/// `HARDSTATE.damaged` and a new one written; the hard state is then the
/// default one.
pub(crate) fn load_or_repair(dir: &Path) -> Result<(Loaded, Option<WalError>), WalError> {
    let path = dir.join(HARD_STATE_FILE);
    let raw = fs::read(&path).map_err(|error| WalError::io("reading", &path, error))?;
    if raw.len() == SLOT_SIZE * SLOT_COUNT {
        let damaged: Vec<String> = raw
            .chunks_exact(SLOT_SIZE)
            .enumerate()
            .filter_map(|(index, chunk)| match decode_slot(chunk) {
                slot @ Slot::Damaged { .. } => {
                    Some(format!("slot {index} (offset {}) {}", index * SLOT_SIZE, slot.describe()))
                }
                _ => None,
            })
            .collect();
        if let Ok(loaded) = decode_file(&path, &raw) {
            let damage = (!damaged.is_empty())
                .then(|| WalError::corrupt(&path, 0, "two valid or empty hard-state slots", damaged.join("; ")));
            return Ok((loaded, damage));
        }
    }
    let damage = decode_file(&path, &raw).err().unwrap_or_else(|| WalError::corrupt(&path, 0, "", ""));
    let aside = dir.join(format!("{HARD_STATE_FILE}.damaged"));
    fs::rename(&path, &aside).map_err(|error| WalError::io("renaming", &path, error))?;
    initialize(dir)?;
    Ok((load(dir)?, Some(damage)))
}

fn decode_file(path: &Path, raw: &[u8]) -> Result<Loaded, WalError> {
    if raw.len() != SLOT_SIZE * SLOT_COUNT {
        return Err(WalError::corrupt(
            path,
            0,
            format!("a file of {} bytes", SLOT_SIZE * SLOT_COUNT),
            format!("{} bytes", raw.len()),
        ));
    }
    let slots: Vec<Slot> = raw.chunks_exact(SLOT_SIZE).map(decode_slot).collect();
    let best = slots
        .iter()
        .enumerate()
        .filter_map(|(index, slot)| match slot {
            Slot::Valid { sequence, hard_state, acknowledged } => Some((*sequence, *hard_state, *acknowledged, index)),
            _ => None,
        })
        .max_by_key(|(sequence, _, _, _)| *sequence);
    match best {
        Some((sequence, hard_state, acknowledged, slot)) => Ok((hard_state, acknowledged, sequence, slot)),
        None => Err(WalError::corrupt(
            path,
            0,
            "at least one valid hard-state slot",
            format!("slot 0 (offset 0) {}; slot 1 (offset {SLOT_SIZE}) {}", slots[0].describe(), slots[1].describe()),
        )),
    }
}

/// Whether a commit-only save carries a term, vote or `ack_term` older than
/// `durable`'s:
/// a background save that a durable one overtook, which must not undo it.
pub fn is_overtaken(hard_state: HardState, durable: HardState) -> bool {
    hard_state.term < durable.term
        || (hard_state.term == durable.term && durable.vote != 0 && hard_state.vote != durable.vote)
        || hard_state.ack_term < durable.ack_term
        || (durable.verified && !hard_state.verified)
}

/// Writes hard states into the slots.
///
/// Invariant: `synced_slot` holds the newest hard state known durable, and
/// every save, durable or not, goes to the other slot. So a save left in the
/// page cache (a commit-only change, see [`HardStateWriter::save`]) can be
/// lost or torn by a crash without ever damaging the durable one, and the
/// newest valid slot on disk is never older than the last durable save.
pub(crate) struct HardStateWriter {
    file: tokio_uring::fs::File,
    path: PathBuf,
    /// The highest sequence written.
    sequence: u64,
    synced_slot: usize,
    /// The newest durable hard state.
    synced: HardState,
}

impl HardStateWriter {
    /// Opens the file whose newest valid slot, `slot`, holds `hard_state`
    /// with `sequence`, and makes that slot durable: a process crash can
    /// leave a save that was never synced in the page cache, and it must not
    /// be taken for a durable one.
    pub(crate) fn open(
        dir: &Path,
        hard_state: HardState,
        sequence: u64,
        slot: usize,
    ) -> Result<HardStateWriter, WalError> {
        let path = dir.join(HARD_STATE_FILE);
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|error| WalError::io("opening", &path, error))?;
        file.sync_data().map_err(|error| WalError::io("syncing", &path, error))?;
        Ok(HardStateWriter {
            file: tokio_uring::fs::File::from_std(file),
            path,
            sequence,
            synced_slot: slot,
            synced: hard_state,
        })
    }

    /// Replaces the hard state: writes the slot that does not hold the
    /// durable one, then, when `sync`, `fdatasync`s and makes it the durable
    /// one. Without `sync` a crash may lose the save, so it is taken only for
    /// a change of the commit index alone (which may lag after a restart); a
    /// newer term or vote is synced anyway, and an older one (a background
    /// save overtaken by a durable one) is dropped. On error the caller must stop
    /// using the log: which slot holds what is then unknown until the next
    /// open reads it back.
    pub(crate) async fn save(
        &mut self,
        hard_state: HardState,
        acknowledged: Index,
        sync: bool,
    ) -> Result<(), WalError> {
        if !sync && is_overtaken(hard_state, self.synced) {
            return Ok(());
        }
        let sync = sync || hard_state.term != self.synced.term || hard_state.vote != self.synced.vote;
        let sequence = self.sequence + 1;
        let slot = 1 - self.synced_slot;
        let (result, _) =
            self.file.write_all_at(encode_slot(sequence, hard_state, acknowledged), (slot * SLOT_SIZE) as u64).await;
        result.map_err(|error| WalError::io("writing", &self.path, error))?;
        self.sequence = sequence;
        if sync {
            self.file.sync_data().await.map_err(|error| WalError::io("syncing", &self.path, error))?;
            self.synced_slot = slot;
            self.synced = hard_state;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A slot written before `ack_term` existed (layout 0: a 56-byte
    /// record) still reads, with its term standing in for `ack_term`; the
    /// current layout keeps `ack_term` and `verified` as saved, and a
    /// layout-1 slot (64 bytes, no flags) reads as not verified.
    #[test]
    fn a_slot_without_ack_term_reads_with_its_term() {
        let hard_state = HardState { term: 9, vote: 2, commit: 4, ack_term: 3, verified: false };
        let current = encode_slot(5, hard_state, 4);
        match decode_slot(&current) {
            Slot::Valid { hard_state: read, .. } => assert_eq!(read, hard_state),
            other => panic!("{other:?}"),
        }
        let mut old = current.clone();
        old[4..8].fill(0);
        old[SLOT_RECORD_SIZE_V0..SLOT_RECORD_SIZE].fill(0);
        let crc = crc32c::crc32c(&old[4..SLOT_RECORD_SIZE_V0]);
        old[..4].copy_from_slice(&crc.to_le_bytes());
        match decode_slot(&old) {
            Slot::Valid { hard_state: read, acknowledged, .. } => {
                assert_eq!(read, HardState { ack_term: 9, ..hard_state });
                assert_eq!(acknowledged, 4);
            }
            other => panic!("{other:?}"),
        }
        // Layout 1 (no flags): read as not verified, whatever follows it.
        let verified = HardState { verified: true, ..hard_state };
        let current = encode_slot(6, verified, 4);
        match decode_slot(&current) {
            Slot::Valid { hard_state: read, .. } => assert_eq!(read, verified),
            other => panic!("{other:?}"),
        }
        let mut layout_1 = current.clone();
        layout_1[4..8].copy_from_slice(&1u32.to_le_bytes());
        layout_1[SLOT_RECORD_SIZE_V1..SLOT_RECORD_SIZE].fill(0);
        let crc = crc32c::crc32c(&layout_1[4..SLOT_RECORD_SIZE_V1]);
        layout_1[..4].copy_from_slice(&crc.to_le_bytes());
        match decode_slot(&layout_1) {
            Slot::Valid { hard_state: read, .. } => assert_eq!(read, hard_state),
            other => panic!("{other:?}"),
        }
        // A layout this build does not know is damage, not a guess.
        let mut unknown = current;
        unknown[4..8].copy_from_slice(&7u32.to_le_bytes());
        assert!(matches!(decode_slot(&unknown), Slot::Damaged { .. }));
    }

    fn file_with(slots: [Option<(u64, HardState)>; 2]) -> Vec<u8> {
        let mut raw = vec![0u8; SLOT_SIZE * SLOT_COUNT];
        for (index, slot) in slots.iter().enumerate() {
            if let Some((sequence, hard_state)) = slot {
                raw[index * SLOT_SIZE..(index + 1) * SLOT_SIZE].copy_from_slice(&encode_slot(
                    *sequence,
                    *hard_state,
                    0,
                ));
            }
        }
        raw
    }

    #[test]
    fn newest_valid_slot_wins_and_a_torn_newer_slot_falls_back() {
        let old = HardState { term: 3, vote: 1, commit: 7, ack_term: 0, verified: false };
        let new = HardState { term: 4, vote: 2, commit: 9, ack_term: 0, verified: false };
        let mut raw = file_with([Some((2, new)), Some((1, old))]);
        assert_eq!(decode_file(Path::new("h"), &raw).unwrap(), (new, 0, 2, 0));
        raw[20] ^= 0x10;
        assert_eq!(decode_file(Path::new("h"), &raw).unwrap(), (old, 0, 1, 1));
        raw[SLOT_SIZE + 20] ^= 0x10;
        let error = decode_file(Path::new("h"), &raw).unwrap_err();
        assert!(matches!(error, WalError::Corrupt { offset: 0, .. }), "{error}");
    }

    /// A crash can lose or tear any save that was not synced; what `load`
    /// finds must then be the last durable hard state or newer.
    #[test]
    fn unsynced_saves_never_overwrite_the_durable_slot() {
        let dir = std::env::temp_dir().join(format!("wal-hard-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        initialize(&dir).unwrap();
        let voted = HardState { term: 2, vote: 3, commit: 5, ack_term: 0, verified: false };
        let new_term = HardState { term: 3, vote: 0, commit: 9, ack_term: 0, verified: false };
        tokio_uring::start(async {
            let (hard_state, _, sequence, slot) = load(&dir).unwrap();
            let mut writer = HardStateWriter::open(&dir, hard_state, sequence, slot).unwrap();
            writer.save(voted, 0, true).await.unwrap();
            let durable_slot = load(&dir).unwrap().3;
            for commit in 6..=8 {
                writer.save(HardState { commit, ..voted }, 0, false).await.unwrap();
                let raw = std::fs::read(dir.join(HARD_STATE_FILE)).unwrap();
                let durable = decode_slot(&raw[durable_slot * SLOT_SIZE..][..SLOT_SIZE]);
                assert!(matches!(durable, Slot::Valid { hard_state, .. } if hard_state == voted), "{durable:?}");
                assert_eq!(decode_file(Path::new("h"), &raw).unwrap().0.commit, commit);
                // Tearing the unsynced slot falls back to the durable one.
                let mut torn = raw.clone();
                torn[(1 - durable_slot) * SLOT_SIZE + 30] ^= 0xff;
                assert_eq!(decode_file(Path::new("h"), &torn).unwrap().0, voted);
            }
            // A new term is synced even when asked not to: later commit-only
            // saves leave it alone.
            writer.save(new_term, 0, false).await.unwrap();
            writer.save(HardState { commit: 10, ..new_term }, 0, false).await.unwrap();
            let raw = std::fs::read(dir.join(HARD_STATE_FILE)).unwrap();
            let mut torn = raw.clone();
            let (_, _, _, newest) = decode_file(Path::new("h"), &raw).unwrap();
            torn[newest * SLOT_SIZE + 30] ^= 0xff;
            assert_eq!(decode_file(Path::new("h"), &torn).unwrap().0, new_term);
        });
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn wrong_size_and_all_zero_files_are_refused() {
        assert!(decode_file(Path::new("h"), &[0u8; 100]).is_err());
        assert!(decode_file(Path::new("h"), &[0u8; SLOT_SIZE * SLOT_COUNT]).is_err());
    }
}
