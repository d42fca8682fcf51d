//! Segment files: naming, preallocation, and the switch to a new segment.
//!
//! A segment is named `{sequence:010}-{first_index:020}.wal`: the sequence
//! orders segments (a truncation can make a later segment start at a lower
//! index than an earlier one, so the first index alone cannot), and the first
//! index says where the segment's first record starts. The records are entry
//! batches, written in groups: each group's records lie end to end from a
//! [`DIRECT_IO_ALIGN`]-aligned offset, and zeros pad the group to the next
//! one (see `commit`). Space after the last group reads as zeros.
//!
//! The next segment is created, preallocated with `fallocate`, filled with
//! zeros and made durable (file and directory) ahead of need as
//! `{sequence:010}.prealloc`, because its first index is not known yet. The
//! switch renames it and syncs the directory before the first record goes in,
//! so a record can never sit in a file whose name a crash could lose.
//!
//! Why write the zeros: `fallocate` leaves its extents *unwritten*, and every
//! synced write into an unwritten extent must also commit the extent's
//! conversion to the file system journal. On this project's dev machine (ext4
//! on a virtio disk; fio, io_uring, 2 in flight) a 4 KiB `O_DIRECT|O_DSYNC`
//! write took 354 us into fallocated space and 146 us into written space, and
//! 2.5 times the CPU. Writing 64 MiB of zeros once per segment, in the
//! background, is far cheaper than paying the conversion on every group
//! write.
//!
//! # Recycling
//!
//! Zero-filling still writes every segment's bytes twice (once as zeros,
//! once as records): on a disk shared by a cluster's nodes that was half the
//! log's bandwidth. So a segment that compaction frees (or a snapshot
//! voids) is not deleted but renamed into a pool of spares
//! (`{sequence:010}.recycled.prealloc`, at most
//! `WalConfig::recycled_segments_max`, or as many as one freeing gave back
//! when that is more), and the next switch reuses one: its
//! extents are written ones already, so it needs neither zeros nor
//! conversions (RocksDB's `recycle_log_file_num`). Like a fresh spare, a
//! recycled one gets its live name, durably, before any record goes in; a
//! pooled file left at a crash ends in `.prealloc` and recovery deletes it
//! (only its reuse is lost).
//!
//! A recycled file still holds its earlier lives' records after the new
//! end, and recovery must never read them as records. So every segment
//! written by this code is *salted*: each record's stored crc32c is XORed
//! with the segment's salt, and the salt is part of the segment's name,
//! `{sequence:010}-{first_index:020}-{salt:08x}.wal`. A record of an earlier
//! life carries another salt (see [`salt`]) and fails its checksum: to
//! recovery it is garbage, never a record. Segments named without a salt
//! (written before salting) are read with plain checksums and the old rules
//! (zeros after the last record), and are never recycled.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use engine::Index;

use crate::error::WalError;

/// Suffix of live segment files.
pub const SEGMENT_SUFFIX: &str = ".wal";
/// Suffix of a preallocated segment not yet in use.
pub const PREALLOC_SUFFIX: &str = ".prealloc";

/// Ends the name of a spare that was a segment before (see the module
/// documentation); a `PREALLOC_SUFFIX`, so recovery deletes it.
const RECYCLED_SUFFIX: &str = ".recycled.prealloc";

/// An unsalted segment's name: the format written before salting (see the
/// module documentation), still read.
pub fn segment_file_name(sequence: u64, first_index: Index) -> String {
    format!("{sequence:010}-{first_index:020}{SEGMENT_SUFFIX}")
}

/// A salted segment's name: every segment this code starts is one.
pub fn salted_segment_file_name(sequence: u64, first_index: Index, salt: u32) -> String {
    format!("{sequence:010}-{first_index:020}-{salt:08x}{SEGMENT_SUFFIX}")
}

/// What a segment's name says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentName {
    pub sequence: u64,
    pub first_index: Index,
    /// The salt of its records' checksums; `None` for an unsalted segment.
    pub salt: Option<u32>,
}

/// The sequence and first index in a segment's name, or `None` for a name
/// that is not a segment's.
pub fn parse_segment_name(name: &str) -> Option<(u64, Index)> {
    parse_segment(name).map(|parsed| (parsed.sequence, parsed.first_index))
}

/// Parses a salted or unsalted segment's name; `None` for a name that is
/// not a segment's.
pub fn parse_segment(name: &str) -> Option<SegmentName> {
    let stem = name.strip_suffix(SEGMENT_SUFFIX)?;
    let mut parts = stem.split('-');
    let (sequence, first_index) = (parts.next()?, parts.next()?);
    let salt = match parts.next() {
        Some(salt) if salt.len() == 8 => Some(u32::from_str_radix(salt, 16).ok()?),
        Some(_) => return None,
        None => None,
    };
    if sequence.len() != 10 || first_index.len() != 20 || parts.next().is_some() {
        return None;
    }
    Some(SegmentName { sequence: sequence.parse().ok()?, first_index: first_index.parse().ok()?, salt })
}

/// The salt of segment `sequence` in a directory whose salt key is `key`.
///
/// Why this function: multiplying by an odd constant is a bijection on
/// `u32`, and so is XOR with the key, so two segments whose sequences differ
/// by less than 2^32 never share a salt, and a record from any earlier life
/// of a recycled file fails its checksum deterministically. The key (one
/// random value per directory, recovered from the names of its segments)
/// keeps the salts unpredictable: a client cannot craft a value whose bytes,
/// left behind in a recycled file, pass for a future segment's record.
pub fn salt(sequence: u64, key: u32) -> u32 {
    (sequence as u32).wrapping_mul(0x9E37_79B1) ^ key
}

/// The salt key of a directory whose segments are `segments` (see [`salt`]):
/// the one its salted segments were written with, or a new random one when
/// it has none (then no file holds records of an earlier salt: spares and
/// pooled files are deleted on open).
pub(crate) fn salt_key(segments: &[SegmentMeta]) -> u32 {
    let inherited = segments.iter().rev().find_map(|meta| Some(meta.salt? ^ salt(meta.sequence, 0)));
    inherited.unwrap_or_else(|| {
        let mut key = [0u8; 4];
        // SAFETY: getrandom writes at most 4 bytes into the 4-byte buffer.
        let read = unsafe { libc::getrandom(key.as_mut_ptr().cast(), key.len(), 0) };
        assert_eq!(read, 4, "getrandom: {}", std::io::Error::last_os_error());
        u32::from_ne_bytes(key)
    })
}

/// What the log keeps in memory about each segment.
///
/// Invariant: `index_max` is the largest index of any record written into the
/// segment (0 when empty), so the segment holds nothing needed once a snapshot
/// covers `index_max`.
#[derive(Clone, Debug)]
pub(crate) struct SegmentMeta {
    pub sequence: u64,
    pub first_index: Index,
    pub path: PathBuf,
    pub index_max: Index,
    /// The salt of its records' checksums; `None` for an unsalted segment
    /// (never recycled).
    pub salt: Option<u32>,
}

/// A preallocated file waiting to become the next segment.
pub(crate) struct Spare {
    pub sequence: u64,
    pub path: PathBuf,
    pub file: tokio_uring::fs::File,
    /// Whether `file` was opened `O_DIRECT`.
    pub direct: bool,
    /// Whether the file is a recycled segment (not zero-filled).
    pub recycled: bool,
}

/// Creates, preallocates, zero-fills and durably records the spare segment
/// `sequence`, and opens it for the log's writes.
pub(crate) async fn create_spare(dir: PathBuf, sequence: u64, segment_bytes: u64) -> Result<Spare, WalError> {
    let path = dir.join(format!("{sequence:010}{PREALLOC_SUFFIX}"));
    if let Err(error) = fill_spare(&dir, &path, segment_bytes).await {
        // A spare that could not be filled (a full disk) must not keep the
        // space it got: the active segment may still have room for the log.
        let _ = std::fs::remove_file(&path);
        return Err(error);
    }
    let (file, direct) = open_log_file(&path)?;
    Ok(Spare { sequence, path, file, direct, recycled: false })
}

/// Takes a pooled recycled file (see [`recycle`]) as the spare segment
/// `sequence`: its extents are written already, so it is only opened.
pub(crate) async fn reuse_spare(path: PathBuf, sequence: u64) -> Result<Spare, WalError> {
    let (file, direct) = open_log_file(&path)?;
    Ok(Spare { sequence, path, file, direct, recycled: true })
}

/// Takes a segment compaction freed (or a snapshot voided) out of the log
/// by renaming it to a pooled spare's name, and returns that name. The
/// rename needs no directory sync of its own: should a crash undo it, the
/// segment is back with the records it always had, which the snapshot
/// covers or voids (as after an interrupted removal), and the switch that reuses the file syncs the
/// directory before it writes a record.
pub(crate) async fn recycle(meta: &SegmentMeta) -> Result<PathBuf, WalError> {
    let pooled = meta.path.with_file_name(format!("{:010}{RECYCLED_SUFFIX}", meta.sequence));
    tokio_uring::fs::rename(&meta.path, &pooled).await.map_err(|error| WalError::io("renaming", &meta.path, error))?;
    Ok(pooled)
}

/// Creates, preallocates, zero-fills and syncs a spare segment file.
async fn fill_spare(dir: &Path, path: &Path, segment_bytes: u64) -> Result<(), WalError> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(|error| WalError::io("creating", path, error))?;
    let file = tokio_uring::fs::File::from_std(file);
    file.fallocate(0, segment_bytes, 0).await.map_err(|error| WalError::io("preallocating", path, error))?;
    write_zeros(path, segment_bytes).await?;
    file.sync_all().await.map_err(|error| WalError::io("syncing", path, error))?;
    file.close().await.map_err(|error| WalError::io("closing", path, error))?;
    crate::dir::sync_dir(dir).await
}

/// Opens a segment for the log's writes: `O_DSYNC`, so every write is its
/// own sync (see `commit`), and `O_DIRECT` where the file system allows it,
/// so the write skips the page cache and, landing in written extents of a
/// file it does not extend, completes without an io-wq worker. The
/// descriptor holds an exclusive `flock` (see [`lock_segment`]).
pub(crate) fn open_log_file(path: &Path) -> Result<(tokio_uring::fs::File, bool), WalError> {
    let (file, direct) = open_direct(path, libc::O_DSYNC).map_err(|error| WalError::io("opening", path, error))?;
    lock_segment(&file, path, libc::LOCK_EX)?;
    Ok((tokio_uring::fs::File::from_std(file), direct))
}

/// How long [`lock_segment`] waits for a dead writer's last writes.
const SEGMENT_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Takes a `flock` on a segment, waiting (up to [`SEGMENT_LOCK_WAIT`]) while
/// another open file description holds a conflicting one.
///
/// Why: a direct write in flight when its process dies is not cancelled. It
/// lands when the device completes it, possibly after the process is gone
/// and a restarted node has already read the segment, cut its tail and
/// written there. Each io_uring write holds a reference to the descriptor's
/// open file description until it completes, and a `flock` lives exactly as
/// long as that description: so the writer's exclusive lock outlives the
/// process until its last write has landed, and recovery (shared lock) and
/// the next writer (exclusive) wait for it. The data directory's own lock
/// already excludes live processes, so a wait here is short.
pub(crate) fn lock_segment(file: &std::fs::File, path: &Path, mode: libc::c_int) -> Result<(), WalError> {
    use std::os::unix::io::AsRawFd;
    let deadline = std::time::Instant::now() + SEGMENT_LOCK_WAIT;
    loop {
        // SAFETY: flock on a valid, owned descriptor has no memory-safety
        // preconditions.
        if unsafe { libc::flock(file.as_raw_fd(), mode | libc::LOCK_NB) } == 0 {
            return Ok(());
        }
        let error = std::io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(WalError::io("locking", path, error));
        }
        if std::time::Instant::now() >= deadline {
            return Err(WalError::io(
                "locking",
                path,
                std::io::Error::other(format!(
                    "another open descriptor of this segment still holds its lock after {SEGMENT_LOCK_WAIT:?} \
                     (writes of a process that exited still in flight?)"
                )),
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// Alignment of direct I/O buffers, offsets and lengths: a multiple of every
/// common logical block size.
pub const DIRECT_IO_ALIGN: usize = 4096;
/// Bytes per write when a spare is filled with zeros. The writes go one at a
/// time, so a log write never queues behind more than one chunk (about
/// 0.2 ms of this machine's disk), and a 64 MiB spare still takes only
/// about 50 ms.
const ZERO_CHUNK_BYTES: usize = 256 << 10;

/// Rounds `length` up to a multiple of [`DIRECT_IO_ALIGN`].
pub(crate) fn align_up(length: u64) -> u64 {
    length.next_multiple_of(DIRECT_IO_ALIGN as u64)
}

/// Where the first [`DIRECT_IO_ALIGN`]-aligned byte of `buffer`'s allocation
/// lies, as an offset into it.
pub(crate) fn aligned_start(buffer: &[u8]) -> usize {
    let address = buffer.as_ptr() as usize;
    (DIRECT_IO_ALIGN - address % DIRECT_IO_ALIGN) % DIRECT_IO_ALIGN
}

/// A zeroed buffer of `length` bytes whose first byte is aligned for direct
/// I/O: the vector and the offset of that byte in it.
pub(crate) fn aligned_zeros(length: usize) -> (Vec<u8>, usize) {
    let buffer = vec![0u8; length + DIRECT_IO_ALIGN];
    let start = aligned_start(&buffer);
    (buffer, start)
}

/// Opens `path` for writing with `O_DIRECT` added to `flags` where the file
/// system supports it with [`DIRECT_IO_ALIGN`] alignment (tmpfs before Linux
/// 6.6 refuses `O_DIRECT`; a device with larger blocks would need larger
/// alignment), and says whether it did.
pub(crate) fn open_direct(path: &Path, flags: libc::c_int) -> std::io::Result<(std::fs::File, bool)> {
    open_direct_with(std::fs::OpenOptions::new().read(true).write(true), path, flags)
}

/// [`open_direct`] for reading only.
pub(crate) fn open_direct_to_read(path: &Path) -> std::io::Result<(std::fs::File, bool)> {
    open_direct_with(std::fs::OpenOptions::new().read(true), path, 0)
}

fn open_direct_with(
    options: &std::fs::OpenOptions,
    path: &Path,
    flags: libc::c_int,
) -> std::io::Result<(std::fs::File, bool)> {
    let open = |flags| options.clone().custom_flags(flags).open(path);
    match open(flags | libc::O_DIRECT) {
        Ok(file) if direct_io_alignment_fits(&file) => Ok((file, true)),
        Ok(_) => Ok((open(flags)?, false)),
        Err(error) if error.raw_os_error() == Some(libc::EINVAL) => Ok((open(flags)?, false)),
        Err(error) => Err(error),
    }
}

/// Whether direct I/O on `file` accepts [`DIRECT_IO_ALIGN`]-aligned memory,
/// offsets and lengths (see `alignment_fits`).
pub fn direct_io_alignment_fits(file: &std::fs::File) -> bool {
    alignment_fits(direct_io_alignment(file))
}

/// Whether [`DIRECT_IO_ALIGN`] satisfies the reported direct I/O alignment
/// (memory, offset). A kernel or file system that does not report it is
/// assumed to accept 4 KiB, a multiple of every common logical block size;
/// 0 means the file cannot do direct I/O at all.
fn alignment_fits(reported: Option<(u32, u32)>) -> bool {
    let fits = |align: u32| align.is_power_of_two() && align <= DIRECT_IO_ALIGN as u32;
    reported.is_none_or(|(memory, offset)| fits(memory) && fits(offset))
}

/// The direct I/O alignment of `file` (memory, offset) from
/// `statx(STATX_DIOALIGN)` (Linux 6.1), if the kernel reports it.
fn direct_io_alignment(file: &std::fs::File) -> Option<(u32, u32)> {
    use std::os::unix::io::AsRawFd;
    const STATX_DIOALIGN: libc::c_uint = 0x2000;
    /// `struct statx` is 256 bytes; `stx_mask` is at 0, `stx_dio_mem_align`
    /// and `stx_dio_offset_align` at 0x98 and 0x9c.
    #[repr(C, align(8))]
    struct Statx([u8; 256]);
    let mut buffer = Statx([0; 256]);
    // SAFETY: statx writes at most 256 bytes into the buffer, which is that
    // large and outlives the call; the path is a valid empty C string and
    // AT_EMPTY_PATH makes the call read the descriptor.
    let result = unsafe {
        libc::syscall(
            libc::SYS_statx,
            file.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            STATX_DIOALIGN,
            buffer.0.as_mut_ptr(),
        )
    };
    let field = |at: usize| u32::from_ne_bytes(buffer.0[at..at + 4].try_into().expect("4 bytes"));
    (result == 0 && field(0) & STATX_DIOALIGN != 0).then(|| (field(0x98), field(0x9c)))
}

/// Writes zeros over the whole (preallocated) file, bypassing the page cache
/// where possible, so its extents are written ones; the caller syncs.
async fn write_zeros(path: &Path, length: u64) -> Result<(), WalError> {
    let (file, _) = open_direct(path, 0).map_err(|error| WalError::io("opening", path, error))?;
    let file = tokio_uring::fs::File::from_std(file);
    let (mut buffer, start) = aligned_zeros(ZERO_CHUNK_BYTES);
    let mut offset = 0;
    while offset < length {
        // A segment size that is not a multiple of the chunk ends in a
        // shorter (still aligned, when the size is) write.
        let chunk = (length - offset).min(ZERO_CHUNK_BYTES as u64) as usize;
        let slice = tokio_uring::buf::BoundedBuf::slice(buffer, start..start + chunk);
        let (result, slice) = file.write_all_at(slice, offset).await;
        buffer = slice.into_inner();
        result.map_err(|error| WalError::io("zero-filling", path, error))?;
        offset += chunk as u64;
    }
    file.close().await.map_err(|error| WalError::io("closing", path, error))
}

/// Turns a spare into the live segment starting at `first_index`: rename, then
/// directory sync, both before any record is written into it. Its records
/// are salted with `salt` (see the module documentation), which its name
/// records.
pub(crate) async fn activate(
    dir: &Path,
    spare: Spare,
    first_index: Index,
    salt: u32,
) -> Result<(SegmentMeta, tokio_uring::fs::File, bool), WalError> {
    let path = dir.join(salted_segment_file_name(spare.sequence, first_index, salt));
    tokio_uring::fs::rename(&spare.path, &path).await.map_err(|error| WalError::io("renaming", &spare.path, error))?;
    crate::dir::sync_dir(dir).await?;
    let meta = SegmentMeta { sequence: spare.sequence, first_index, path, index_max: 0, salt: Some(salt) };
    Ok((meta, spare.file, spare.direct))
}

/// Bytes a paced removal frees per step.
const REMOVE_STEP_BYTES: u64 = 2 << 20;
/// The pause between two steps of a paced removal.
const REMOVE_STEP_PAUSE: std::time::Duration = std::time::Duration::from_millis(5);

/// Removes segment files and makes the removal durable.
///
/// `paced` first shrinks each file a few megabytes at a time: freeing a whole
/// segment's blocks at once (with ext4 mounted `discard`, a 64 MiB discard
/// in one journal commit) held every `fdatasync` on the device, the log's
/// own and those of other nodes sharing the disk, for about 15 ms. Log
/// compaction runs in the background and is paced; a removal someone waits
/// for is not.
pub(crate) async fn remove(dir: &Path, paths: &[PathBuf], paced: bool) -> Result<(), WalError> {
    if paths.is_empty() {
        return Ok(());
    }
    if !paced {
        for path in paths {
            tokio_uring::fs::remove_file(path).await.map_err(|error| WalError::io("removing", path, error))?;
        }
        return crate::dir::sync_dir(dir).await;
    }
    // Out of the log first, durably: recovery must never meet a segment cut
    // short by an interrupted shrink (it removes `.tmp` files on open).
    let mut doomed = Vec::with_capacity(paths.len());
    for path in paths {
        let mut name = path.clone().into_os_string();
        name.push(REMOVING_SUFFIX);
        let renamed = PathBuf::from(name);
        tokio_uring::fs::rename(path, &renamed).await.map_err(|error| WalError::io("renaming", path, error))?;
        doomed.push(renamed);
    }
    crate::dir::sync_dir(dir).await?;
    for path in &doomed {
        shrink_gradually(path).await?;
        tokio_uring::fs::remove_file(path).await.map_err(|error| WalError::io("removing", path, error))?;
    }
    crate::dir::sync_dir(dir).await
}

/// Appended to a segment's name while a paced removal shrinks it; ends in
/// `.tmp`, which recovery removes.
const REMOVING_SUFFIX: &str = ".removing.tmp";

async fn shrink_gradually(path: &Path) -> Result<(), WalError> {
    let file =
        std::fs::OpenOptions::new().write(true).open(path).map_err(|error| WalError::io("opening", path, error))?;
    let mut length = file.metadata().map_err(|error| WalError::io("reading the metadata of", path, error))?.len();
    while length > 0 {
        length = length.saturating_sub(REMOVE_STEP_BYTES);
        file.set_len(length).map_err(|error| WalError::io("truncating", path, error))?;
        tokio::time::sleep(REMOVE_STEP_PAUSE).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_io_is_used_only_where_4_kib_alignment_fits() {
        assert!(alignment_fits(None), "not reported: assumed to fit");
        assert!(alignment_fits(Some((512, 512))) && alignment_fits(Some((4, 4096))));
        assert!(!alignment_fits(Some((512, 8192))), "a 8 KiB-block device needs larger writes");
        assert!(!alignment_fits(Some((8192, 512))));
        assert!(!alignment_fits(Some((0, 0))), "0: this file cannot do direct I/O");
        // Where the kernel reports it (Linux 6.1 and later, ext4 or XFS),
        // the value read is a plausible one: statx was called and parsed.
        let path = std::env::temp_dir().join(format!("wal-dio-align-{}", std::process::id()));
        let (file, direct) = open_direct(&path, libc::O_CREAT).unwrap();
        if let Some((memory, offset)) = direct_io_alignment(&file) {
            assert!(offset.is_power_of_two() && memory.is_power_of_two(), "{memory} {offset}");
            assert_eq!(direct, alignment_fits(Some((memory, offset))));
        }
        drop(file);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn names_round_trip_and_sort_by_sequence() {
        let name = segment_file_name(7, 1234);
        assert_eq!(parse_segment_name(&name), Some((7, 1234)));
        assert!(segment_file_name(9, 99_999) < segment_file_name(10, 1));
        assert_eq!(parse_segment_name("0000000007.prealloc"), None);
        assert_eq!(parse_segment_name("7-1.wal"), None);
    }

    #[test]
    fn a_paced_removal_leaves_nothing_behind() {
        let dir = std::env::temp_dir().join(format!("wal-segment-remove-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let paths: Vec<PathBuf> =
            (1..=2).map(|sequence| dir.join(segment_file_name(sequence, sequence * 10))).collect();
        for path in &paths {
            std::fs::write(path, vec![1u8; 5 << 20]).unwrap();
        }
        tokio_uring::start(async { remove(&dir, &paths, true).await.unwrap() });
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "every file and temporary name is gone");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
