//! The snapshot file: metadata, membership and the state machine's bytes under
//! one crc32c, written under a temporary name, synced, renamed and made durable
//! with a directory sync, so a crash leaves the old snapshot or the new one.
//!
//! A snapshot is never held whole in memory: its data is written into a
//! temporary file as it is produced ([`SnapshotDraft`]: streamed by a
//! serializer thread, or chunk by chunk, each durably, as it arrives from the
//! leader), verified against the checksum computed on the way in, sealed with
//! its header and renamed into place; followers are served one chunk at a
//! time by position (`read_chunk`), and a restore reads it as a stream
//! (`open_reader`).
//!
//! The header also carries `segment_sequence_min`: segments with a lower
//! sequence are void. A snapshot that disagrees with the log (or lies past its
//! end) discards every entry, and this field makes that discard durable in the
//! same rename that makes the snapshot durable.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use engine::{ConfState, NodeId, SnapshotMeta};
use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::error::WalError;

/// The snapshot file's name.
pub const SNAPSHOT_FILE: &str = "SNAPSHOT";
/// Where a local snapshot is written before it is sealed and renamed.
pub(crate) const SNAPSHOT_TEMP_FILE: &str = "SNAPSHOT.tmp";
/// Where a snapshot arriving from the leader is written.
const SNAPSHOT_RECEIVED_FILE: &str = "SNAPSHOT.recv";
const SNAPSHOT_MAGIC: [u8; 8] = *b"RAFTSNAP";
const SNAPSHOT_VERSION: u32 = 1;
/// The most members a stored configuration may list, checked before anything
/// is allocated for a claimed count.
const MEMBERS_MAX: u32 = 1 << 16;

#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct SnapshotHeader {
    /// crc32c over bytes 4.. of the whole file.
    crc: U32,
    version: U32,
    magic: [u8; 8],
    index: U64,
    term: U64,
    segment_sequence_min: U64,
    data_length: U64,
    voters: U32,
    voters_outgoing: U32,
    learners: U32,
    /// How many witness ids follow the learners. This field was reserved
    /// (always 0) before witnesses existed, so older files read as having
    /// none; a file with witnesses is refused by an older build (its length
    /// disagrees with the counts it knows) rather than read without them.
    witnesses: U32,
}

const SNAPSHOT_HEADER_SIZE: usize = 64;
const _: () = assert!(size_of::<SnapshotHeader>() == SNAPSHOT_HEADER_SIZE);

/// A stored snapshot's metadata plus the log bookkeeping that travels with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct StoredSnapshot {
    pub meta: SnapshotMeta,
    /// Segments with a lower sequence number are void.
    pub segment_sequence_min: u64,
}

/// The header and membership list; the crc32c field is left zero for
/// [`seal_head`].
fn encode_head(meta: &SnapshotMeta, segment_sequence_min: u64, data_length: u64) -> Vec<u8> {
    let conf = &meta.conf;
    let members = conf.voters.len() + conf.voters_outgoing.len() + conf.learners.len() + conf.witnesses.len();
    let mut raw = Vec::with_capacity(SNAPSHOT_HEADER_SIZE + members * 8);
    let header = SnapshotHeader {
        crc: U32::new(0),
        version: U32::new(SNAPSHOT_VERSION),
        magic: SNAPSHOT_MAGIC,
        index: U64::new(meta.index),
        term: U64::new(meta.term),
        segment_sequence_min: U64::new(segment_sequence_min),
        data_length: U64::new(data_length),
        voters: U32::new(conf.voters.len() as u32),
        voters_outgoing: U32::new(conf.voters_outgoing.len() as u32),
        learners: U32::new(conf.learners.len() as u32),
        witnesses: U32::new(conf.witnesses.len() as u32),
    };
    raw.extend_from_slice(header.as_bytes());
    for id in conf.voters.iter().chain(&conf.voters_outgoing).chain(&conf.learners).chain(&conf.witnesses) {
        raw.extend_from_slice(&id.to_le_bytes());
    }
    raw
}

/// Writes into the head the crc32c of everything after the field: the rest
/// of the head, then the data, whose crc32c continued from the head's is
/// `crc`.
fn seal_head(head: &mut [u8], crc: u32) {
    head[0..4].copy_from_slice(&crc.to_le_bytes());
}

#[cfg(test)]
fn encode(meta: &SnapshotMeta, segment_sequence_min: u64, data: &[u8]) -> Vec<u8> {
    let mut raw = encode_head(meta, segment_sequence_min, data.len() as u64);
    let crc = crc32c::crc32c_append(crc32c::crc32c(&raw[4..]), data);
    seal_head(&mut raw, crc);
    raw.extend_from_slice(data);
    raw
}

/// Decodes a whole snapshot file; the data is a slice of `raw`.
pub(crate) fn decode(path: &Path, raw: &Bytes) -> Result<(StoredSnapshot, Bytes), WalError> {
    let Ok((header, _)) = SnapshotHeader::ref_from_prefix(&raw[..]) else {
        return Err(WalError::corrupt(
            path,
            0,
            format!("a {SNAPSHOT_HEADER_SIZE}-byte header"),
            format!("{} bytes", raw.len()),
        ));
    };
    if header.magic != SNAPSHOT_MAGIC {
        return Err(WalError::corrupt(path, 8, "magic RAFTSNAP", format!("{:?}", header.magic)));
    }
    let computed = crc32c::crc32c(&raw[4..]);
    if header.crc.get() != computed {
        return Err(WalError::corrupt(
            path,
            0,
            format!("crc32c {computed:#010x}"),
            format!("{:#010x}", header.crc.get()),
        ));
    }
    let (counts, data_start) = check_header(path, header, raw.len() as u64)?;
    let meta = meta_from(header, counts, &raw[SNAPSHOT_HEADER_SIZE..data_start]);
    let stored = StoredSnapshot { meta, segment_sequence_min: header.segment_sequence_min.get() };
    Ok((stored, raw.slice(data_start..)))
}

/// The checks a header passes whether the file is read whole or streamed:
/// magic, version, member counts, and the file length they and the data
/// length imply. Returns the member counts and where the data starts.
fn check_header(path: &Path, header: &SnapshotHeader, file_length: u64) -> Result<([u32; 4], usize), WalError> {
    if header.magic != SNAPSHOT_MAGIC {
        return Err(WalError::corrupt(path, 8, "magic RAFTSNAP", format!("{:?}", header.magic)));
    }
    if header.version.get() != SNAPSHOT_VERSION {
        return Err(WalError::corrupt(
            path,
            4,
            format!("version {SNAPSHOT_VERSION}"),
            header.version.get().to_string(),
        ));
    }
    let counts = [header.voters.get(), header.voters_outgoing.get(), header.learners.get(), header.witnesses.get()];
    if counts.iter().any(|&count| count > MEMBERS_MAX) {
        return Err(WalError::corrupt(path, 40, format!("at most {MEMBERS_MAX} members"), format!("{counts:?}")));
    }
    let members: usize = counts.iter().map(|&count| count as usize).sum();
    let data_start = SNAPSHOT_HEADER_SIZE + members * 8;
    let expected_length = (data_start as u64).checked_add(header.data_length.get());
    if expected_length != Some(file_length) {
        return Err(WalError::corrupt(
            path,
            0,
            format!("a file of {expected_length:?} bytes"),
            format!("{file_length} bytes"),
        ));
    }
    Ok((counts, data_start))
}

/// The snapshot's metadata from a checked header and the member ids after
/// it (`counts` of them, in the header's order).
fn meta_from(header: &SnapshotHeader, counts: [u32; 4], ids_raw: &[u8]) -> SnapshotMeta {
    let mut ids = ids_raw.chunks_exact(8).map(|chunk| NodeId::from_le_bytes(chunk.try_into().expect("8-byte chunk")));
    let mut take = |count: u32| -> Vec<NodeId> { ids.by_ref().take(count as usize).collect() };
    let mut conf = ConfState {
        voters: take(counts[0]),
        voters_outgoing: take(counts[1]),
        learners: take(counts[2]),
        witnesses: take(counts[3]),
    };
    // Only a voter is a witness: a list that says otherwise is made
    // consistent, as a membership from the network is.
    conf.normalize();
    SnapshotMeta { index: header.index.get(), term: header.term.get(), conf }
}

/// Reads the whole snapshot file on the io_uring runtime, refusing files
/// over `length_max` before allocating (tests; the node streams it).
pub(crate) async fn load(dir: &Path, length_max: u64) -> Result<Option<(StoredSnapshot, Bytes)>, WalError> {
    let path = dir.join(SNAPSHOT_FILE);
    let file = match std::fs::File::open(&path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(WalError::io("opening", &path, error)),
    };
    let length = file.metadata().map_err(|error| WalError::io("reading the metadata of", &path, error))?.len();
    if length > length_max {
        return Err(WalError::SnapshotTooLarge { length, snapshot_bytes_max: length_max });
    }
    let file = tokio_uring::fs::File::from_std(file);
    let (result, raw) = file.read_exact_at(Vec::with_capacity(length as usize), 0).await;
    result.map_err(|error| WalError::io("reading", &path, error))?;
    file.close().await.map_err(|error| WalError::io("closing", &path, error))?;
    decode(&path, &Bytes::from(raw)).map(Some)
}

/// Bytes written between two syncs of a snapshot file, and the size of
/// the pieces it is verified and read in. A snapshot is tens of megabytes;
/// synced in one piece it would occupy the device for a hundred
/// milliseconds, and every WAL `fdatasync` queued behind it would wait as
/// long. In pieces, log syncs interleave with it.
pub const SAVE_CHUNK_BYTES: usize = 256 << 10;

/// A snapshot's bytes on their way into a store, before
/// `LogStore::save_snapshot_draft` seals and installs them: a temporary file
/// in the log's directory (or memory, for the in-memory store), with the
/// crc32c and length of what was written so far. Written in order, either
/// through [`std::io::Write`] (blocking, paced, synced every
/// [`SAVE_CHUNK_BYTES`]: for a serializer thread) or with
/// [`SnapshotDraft::append_durable`] (on the io_uring runtime, durable when
/// it returns: for chunks arriving from the leader).
pub struct SnapshotDraft {
    meta: SnapshotMeta,
    length: u64,
    /// crc32c of the data written so far.
    crc: u32,
    sink: Sink,
    /// Removes the temporary file of a draft dropped unsealed (a failed
    /// write, a full disk, a transfer given up): a partial snapshot must
    /// not hold the space the log needs.
    discard: Discard,
}

/// Removes its file when dropped, unless disarmed (see `SnapshotDraft`).
struct Discard(Option<PathBuf>);

impl Drop for Discard {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

enum Sink {
    File(FileSink),
    Memory(Vec<u8>),
}

struct FileSink {
    file: std::fs::File,
    path: PathBuf,
    /// Where the data starts: the header and membership come first.
    data_start: u64,
    /// Bytes per second at most for blocking writes (0: no limit).
    rate: u64,
    started: std::time::Instant,
    unsynced: usize,
    /// The log's appended-bytes counter and its value when the draft
    /// started, counted from `slack` bytes ahead: the pacing never lets the
    /// draft fall further behind the log than that.
    log: Option<(Arc<AtomicU64>, u64)>,
    /// Set when the node stops: the draft is given up at its next write
    /// (see [`SnapshotDraft::given_up_when`]).
    stop: Option<Arc<AtomicBool>>,
    /// Set here when a write finds the disk full (see
    /// [`SnapshotDraft::wanting_space`]).
    space_wanted: Option<Arc<AtomicBool>>,
}

impl FileSink {
    fn stopping(&self) -> bool {
        self.stop.as_ref().is_some_and(|stop| stop.load(Ordering::Relaxed))
    }

    /// `error`, after noting a full disk where the log will see it.
    fn noting_full(&self, error: std::io::Error) -> std::io::Error {
        if error.raw_os_error() == Some(libc::ENOSPC) {
            if let Some(flag) = &self.space_wanted {
                flag.store(true, Ordering::Relaxed);
            }
        }
        error
    }

    /// Sleeps while the draft is ahead of its rate and of the log's growth
    /// since it started, re-checking the log every [`PACE_STEP`].
    fn pace(&self, written: u64) {
        while let Some(pause) = self.pause(written) {
            std::thread::sleep(pause);
        }
    }

    /// How long to sleep now, having written `written` bytes: `None` once
    /// the draft is not ahead of its rate, or the log grew at least as much.
    fn pause(&self, written: u64) -> Option<std::time::Duration> {
        if self.rate == 0 || self.stopping() {
            return None;
        }
        let due = std::time::Duration::from_secs_f64(written as f64 / self.rate as f64);
        let ahead = due.checked_sub(self.started.elapsed()).filter(|ahead| !ahead.is_zero())?;
        let appended = self.log.as_ref().map(|(counter, start)| counter.load(Ordering::Relaxed).saturating_sub(*start));
        if appended.is_some_and(|appended| appended >= written) {
            return None;
        }
        Some(ahead.min(PACE_STEP))
    }
}

/// How long a paced draft sleeps before it looks at the log's growth again.
const PACE_STEP: std::time::Duration = std::time::Duration::from_millis(10);

impl SnapshotDraft {
    /// A draft in a temporary file of `dir` (a received snapshot has its own,
    /// so that it never overwrites a local one being written).
    pub(crate) fn create(dir: &Path, meta: SnapshotMeta, received: bool, rate: u64) -> Result<SnapshotDraft, WalError> {
        let path = dir.join(if received { SNAPSHOT_RECEIVED_FILE } else { SNAPSHOT_TEMP_FILE });
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|error| WalError::io("creating", &path, error))?;
        let data_start = encode_head(&meta, 0, 0).len() as u64;
        let discard = Discard(Some(path.clone()));
        let sink = FileSink {
            file,
            path,
            data_start,
            rate,
            started: std::time::Instant::now(),
            unsynced: 0,
            log: None,
            stop: None,
            space_wanted: None,
        };
        Ok(SnapshotDraft { meta, length: 0, crc: 0, sink: Sink::File(sink), discard })
    }

    /// Paces the draft no slower than `counter` (bytes appended to the log)
    /// grows from now on, once it grew `slack` bytes more than the draft.
    pub(crate) fn keeping_up_with(mut self, counter: Arc<AtomicU64>, slack: u64) -> SnapshotDraft {
        if let Sink::File(sink) = &mut self.sink {
            let start = counter.load(Ordering::Relaxed).saturating_add(slack);
            sink.log = Some((counter, start));
        }
        self
    }

    /// Sets `flag` when a write of the draft finds the disk full, for the
    /// log to make room before the next snapshot (it lets its pool of
    /// recycled spares go).
    pub(crate) fn wanting_space(mut self, flag: Arc<AtomicBool>) -> SnapshotDraft {
        if let Sink::File(sink) = &mut self.sink {
            sink.space_wanted = Some(flag);
        }
        self
    }

    /// Gives the draft up at its next write once `stop` is set: its writes
    /// then fail, and the dropped draft removes its file. A paced local
    /// snapshot takes up to `SNAPSHOT_WRITE_SECONDS_MAX` seconds and holds
    /// the log meanwhile, so a node asked to stop waited for it, and past
    /// its wait left the log unclosed. Nothing is lost by giving it up: the
    /// log it would have let the node compact is still there.
    pub fn given_up_when(mut self, stop: Arc<AtomicBool>) -> SnapshotDraft {
        if let Sink::File(sink) = &mut self.sink {
            sink.stop = Some(stop);
        }
        self
    }

    /// A draft in memory.
    pub(crate) fn memory(meta: SnapshotMeta) -> SnapshotDraft {
        SnapshotDraft { meta, length: 0, crc: 0, sink: Sink::Memory(Vec::new()), discard: Discard(None) }
    }

    pub fn meta(&self) -> &SnapshotMeta {
        &self.meta
    }

    /// Bytes written so far.
    pub fn length(&self) -> u64 {
        self.length
    }

    /// Appends `data` and makes it durable (`fdatasync`) before returning.
    /// Must run on a tokio-uring runtime for a file draft.
    pub async fn append_durable(&mut self, data: Bytes) -> Result<(), WalError> {
        let length = data.len() as u64;
        let crc = crc32c::crc32c_append(self.crc, &data);
        match &mut self.sink {
            Sink::Memory(buffer) => buffer.extend_from_slice(&data),
            Sink::File(sink) => {
                let path = &sink.path;
                let file = sink.file.try_clone().map_err(|error| WalError::io("opening", path, error))?;
                let file = tokio_uring::fs::File::from_std(file);
                let (result, _) = file.write_all_at(data, sink.data_start + self.length).await;
                result.map_err(|error| WalError::io("writing", path, error))?;
                file.sync_data().await.map_err(|error| WalError::io("syncing", path, error))?;
                file.close().await.map_err(|error| WalError::io("closing", path, error))?;
            }
        }
        self.length += length;
        self.crc = crc;
        Ok(())
    }

    /// The bytes of an in-memory draft (the whole snapshot: the in-memory
    /// store keeps it so).
    pub(crate) fn into_memory(self) -> Option<(SnapshotMeta, Bytes)> {
        match self.sink {
            Sink::Memory(buffer) => Some((self.meta, buffer.into())),
            Sink::File(_) => None,
        }
    }
}

impl std::io::Write for SnapshotDraft {
    /// Blocking: for a serializer thread. Syncs every [`SAVE_CHUNK_BYTES`]
    /// and sleeps to keep to the draft's rate.
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        use std::os::unix::fs::FileExt;
        match &mut self.sink {
            Sink::Memory(buffer) => buffer.extend_from_slice(buf),
            Sink::File(sink) => {
                if sink.stopping() {
                    // Not `Interrupted`: `write_all` would retry it forever.
                    return Err(std::io::Error::other("the node is stopping: the snapshot being written is given up"));
                }
                let at = sink.data_start + self.length;
                sink.file.write_all_at(buf, at).map_err(|error| sink.noting_full(error))?;
                sink.unsynced += buf.len();
                if sink.unsynced >= SAVE_CHUNK_BYTES {
                    sink.unsynced = 0;
                    sink.file.sync_data().map_err(|error| sink.noting_full(error))?;
                    sink.pace(self.length + buf.len() as u64);
                }
            }
        }
        self.crc = crc32c::crc32c_append(self.crc, buf);
        self.length += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Durably replaces the snapshot file with a file draft: reads the draft's
/// data back in pieces and checks it against the crc32c computed as it was
/// written, writes the header (its crc32c combined from the header's and
/// the data's), syncs, renames into place and syncs the directory. The
/// pieces are read on the io_uring runtime and checksummed between reads, so
/// the runtime thread (the shard driver's) is never held for the whole
/// state.
pub(crate) async fn seal(dir: &Path, stored: &StoredSnapshot, draft: SnapshotDraft) -> Result<u64, WalError> {
    // A seal that fails part way leaves the file to the next draft, which
    // truncates it.
    let SnapshotDraft { meta, length, crc: data_crc, sink, mut discard } = draft;
    discard.0 = None;
    debug_assert_eq!(meta, stored.meta);
    let Sink::File(sink) = sink else {
        panic!("an in-memory snapshot draft given to the WAL");
    };
    let temp = sink.path;
    let target = dir.join(SNAPSHOT_FILE);
    let file = tokio_uring::fs::File::from_std(sink.file);
    let mut verified = 0;
    let mut offset = 0;
    while offset < length {
        let piece = (length - offset).min(SAVE_CHUNK_BYTES as u64) as usize;
        let (result, buffer) = file.read_exact_at(Vec::with_capacity(piece), sink.data_start + offset).await;
        result.map_err(|error| WalError::io("reading back", &temp, error))?;
        verified = crc32c::crc32c_append(verified, &buffer);
        offset += piece as u64;
    }
    if verified != data_crc {
        return Err(WalError::corrupt(
            &temp,
            sink.data_start,
            format!("snapshot data with crc32c {data_crc:#010x} as written"),
            format!("crc32c {verified:#010x} read back"),
        ));
    }
    let mut head = encode_head(&stored.meta, stored.segment_sequence_min, length);
    let crc = crc32c::crc32c_combine(crc32c::crc32c(&head[4..]), data_crc, length as usize);
    seal_head(&mut head, crc);
    let (result, _) = file.write_all_at(head, 0).await;
    result.map_err(|error| WalError::io("writing", &temp, error))?;
    file.sync_all().await.map_err(|error| WalError::io("syncing", &temp, error))?;
    file.close().await.map_err(|error| WalError::io("closing", &temp, error))?;
    tokio_uring::fs::rename(&temp, &target).await.map_err(|error| WalError::io("renaming", &temp, error))?;
    crate::dir::sync_dir(dir).await?;
    Ok(length)
}

/// The stored snapshot file's header, parsed, and where its data lies.
pub(crate) struct SnapshotFileHead {
    pub stored: StoredSnapshot,
    pub crc: u32,
    pub data_start: u64,
    pub data_length: u64,
}

/// Reads and checks the header of the snapshot file open as `file` (not its
/// checksum: see [`verify_blocking`]). Blocking; a few hundred bytes.
pub(crate) fn read_head(path: &Path, file: &std::fs::File) -> Result<SnapshotFileHead, WalError> {
    use std::os::unix::fs::FileExt;
    let file_length = file.metadata().map_err(|error| WalError::io("reading the metadata of", path, error))?.len();
    let mut raw = [0u8; SNAPSHOT_HEADER_SIZE];
    file.read_exact_at(&mut raw, 0).map_err(|error| WalError::io("reading", path, error))?;
    let header = SnapshotHeader::read_from_bytes(&raw).expect("the header's size");
    let (counts, data_start) = check_header(path, &header, file_length)?;
    let mut ids_raw = vec![0u8; data_start - SNAPSHOT_HEADER_SIZE];
    file.read_exact_at(&mut ids_raw, SNAPSHOT_HEADER_SIZE as u64)
        .map_err(|error| WalError::io("reading", path, error))?;
    let meta = meta_from(&header, counts, &ids_raw);
    Ok(SnapshotFileHead {
        stored: StoredSnapshot { meta, segment_sequence_min: header.segment_sequence_min.get() },
        crc: header.crc.get(),
        data_start: data_start as u64,
        data_length: header.data_length.get(),
    })
}

/// Checks the whole file against its header's crc32c, reading it in pieces.
/// Blocking.
pub(crate) fn verify_blocking(path: &Path, file: &std::fs::File, head: &SnapshotFileHead) -> Result<(), WalError> {
    use std::os::unix::fs::FileExt;
    let end = head.data_start + head.data_length;
    let mut buffer = vec![0u8; SAVE_CHUNK_BYTES];
    let mut computed = 0;
    let mut offset = 4;
    while offset < end {
        let piece = (end - offset).min(SAVE_CHUNK_BYTES as u64) as usize;
        file.read_exact_at(&mut buffer[..piece], offset).map_err(|error| WalError::io("reading", path, error))?;
        computed = crc32c::crc32c_append(computed, &buffer[..piece]);
        offset += piece as u64;
    }
    if computed != head.crc {
        return Err(WalError::corrupt(path, 0, format!("crc32c {computed:#010x}"), format!("{:#010x}", head.crc)));
    }
    Ok(())
}

/// The snapshot file's header, checked whole against its crc32c (read in
/// pieces), if there is a snapshot. Blocking; used on open.
pub(crate) fn load_head_blocking(dir: &Path) -> Result<Option<SnapshotFileHead>, WalError> {
    let path = dir.join(SNAPSHOT_FILE);
    let file = match std::fs::File::open(&path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(WalError::io("opening", &path, error)),
    };
    let head = read_head(&path, &file)?;
    verify_blocking(&path, &file, &head)?;
    Ok(Some(head))
}

/// A reader of a stored snapshot's data, from its first byte to its last.
pub type SnapshotReader = Box<dyn std::io::Read + Send>;

/// Opens the stored snapshot for a streaming read of its data, checking the
/// whole file against its checksum first when `verify`. Blocking.
pub(crate) fn open_reader(dir: &Path, verify: bool) -> Result<Option<(SnapshotMeta, u64, SnapshotReader)>, WalError> {
    use std::io::{Read, Seek};
    let path = dir.join(SNAPSHOT_FILE);
    let mut file = match std::fs::File::open(&path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(WalError::io("opening", &path, error)),
    };
    let head = read_head(&path, &file)?;
    if verify {
        verify_blocking(&path, &file, &head)?;
    }
    file.seek(std::io::SeekFrom::Start(head.data_start)).map_err(|error| WalError::io("seeking", &path, error))?;
    let reader = std::io::BufReader::with_capacity(SAVE_CHUNK_BYTES, file.take(head.data_length));
    Ok(Some((head.stored.meta, head.data_length, Box::new(reader))))
}

/// Opens the snapshot stored in `dir` for a streaming read of its data,
/// without checking it again: for a taker of recovery's entries
/// ([`crate::RecoveryApply`]), which restores it while
/// [`crate::Wal::open_applying`] runs, after the open checked it (or set a
/// damaged one aside). Blocking.
pub fn open_checked(dir: &Path) -> Result<Option<(SnapshotMeta, u64, SnapshotReader)>, WalError> {
    open_reader(dir, false)
}

/// The stored snapshot file, open for serving chunks to followers.
///
/// The file was checked whole when it was stored or loaded, but its bytes
/// may rot on disk since: before its first chunk is served, it is read
/// whole again and checked against the header's crc32c. A damaged file
/// serves nothing, so no follower receives a chunk of it (a follower keeps
/// the chunks it received and resumes where it stopped, so a check at the
/// last chunk would be too late); the node takes a new snapshot instead
/// (`engine::Raft::snapshot_damaged`). It costs one more read of the file
/// per snapshot sent, on the io_uring runtime between other work.
pub(crate) struct OpenSnapshot {
    pub index: engine::Index,
    data_start: u64,
    data_length: u64,
    /// The header's crc32c, of the file's bytes from offset 4 on.
    crc: u32,
    check: std::cell::Cell<Check>,
    file: std::rc::Rc<tokio_uring::fs::File>,
}

/// Whether the file was found to match its checksum since it was opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Check {
    Unchecked,
    Verified,
    Damaged,
}

impl OpenSnapshot {
    /// Opens the stored snapshot file (its header is checked).
    pub(crate) fn open(dir: &Path) -> Result<Option<OpenSnapshot>, WalError> {
        let path = dir.join(SNAPSHOT_FILE);
        let file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(WalError::io("opening", &path, error)),
        };
        let head = read_head(&path, &file)?;
        Ok(Some(OpenSnapshot {
            index: head.stored.meta.index,
            data_start: head.data_start,
            data_length: head.data_length,
            crc: head.crc,
            check: std::cell::Cell::new(Check::Unchecked),
            file: std::rc::Rc::new(tokio_uring::fs::File::from_std(file)),
        }))
    }

    /// Reads `len` bytes of data at `offset` (fewer at the end) with one
    /// positioned read on the io_uring runtime, once the whole file was
    /// checked (see the type's documentation).
    pub(crate) async fn read_chunk(&self, dir: &Path, offset: u64, len: u64) -> Result<Bytes, WalError> {
        let path = dir.join(SNAPSHOT_FILE);
        if self.check.get() == Check::Unchecked {
            self.check.set(self.verify_whole(&path).await?);
        }
        if self.check.get() == Check::Damaged {
            return Err(WalError::corrupt(
                &path,
                0,
                format!("bytes matching the header's crc32c {:#010x}", self.crc),
                "other bytes: the file changed on disk since it was stored",
            ));
        }
        let len = len.min(self.data_length.saturating_sub(offset)) as usize;
        if len == 0 {
            return Ok(Bytes::new());
        }
        self.read_at(&path, self.data_start + offset, len).await
    }

    async fn read_at(&self, path: &Path, position: u64, len: usize) -> Result<Bytes, WalError> {
        let file = self.file.clone();
        let (result, buffer) = file.read_exact_at(Vec::with_capacity(len), position).await;
        result.map_err(|error| WalError::io("reading", path, error))?;
        Ok(Bytes::from(buffer))
    }

    /// Reads the file from offset 4 to its end in [`SAVE_CHUNK_BYTES`]
    /// pieces and checks them against the header's crc32c.
    async fn verify_whole(&self, path: &Path) -> Result<Check, WalError> {
        let end = self.data_start + self.data_length;
        let mut computed = 0;
        let mut position = 4;
        while position < end {
            let piece = (end - position).min(SAVE_CHUNK_BYTES as u64) as usize;
            computed = crc32c::crc32c_append(computed, &self.read_at(path, position, piece).await?);
            position += piece as u64;
        }
        Ok(if computed == self.crc { Check::Verified } else { Check::Damaged })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage_is_refused() {
        let meta = SnapshotMeta { index: 9, term: 3, conf: ConfState::new([1, 2, 3], [7]) };
        let raw = Bytes::from(encode(&meta, 4, b"state"));
        let (stored, data) = decode(Path::new("s"), &raw).unwrap();
        assert_eq!(stored, StoredSnapshot { meta, segment_sequence_min: 4 });
        assert_eq!(&data[..], b"state");
        for at in 0..raw.len() {
            let mut damaged = raw.to_vec();
            damaged[at] ^= 0x01;
            assert!(decode(Path::new("s"), &Bytes::from(damaged)).is_err(), "flip at {at} accepted");
        }
        assert!(decode(Path::new("s"), &raw.slice(..raw.len() - 1)).is_err());
    }

    /// A file written before witnesses existed (the field that now counts
    /// them was reserved and zero) reads as a membership without witnesses;
    /// one with witnesses round-trips.
    #[test]
    fn witnesses_extend_the_header_compatibly() {
        // The version-1 layout as the build before witnesses wrote it.
        let mut old = Vec::new();
        old.extend_from_slice(&[0; 4]);
        old.extend_from_slice(&1u32.to_le_bytes());
        old.extend_from_slice(b"RAFTSNAP");
        for value in [9u64, 3, 4, 5] {
            old.extend_from_slice(&value.to_le_bytes());
        }
        for count in [3u32, 0, 1, 0] {
            old.extend_from_slice(&count.to_le_bytes());
        }
        for id in [1u64, 2, 3, 7] {
            old.extend_from_slice(&id.to_le_bytes());
        }
        old.extend_from_slice(b"state");
        let crc = crc32c::crc32c(&old[4..]);
        old[0..4].copy_from_slice(&crc.to_le_bytes());
        let (stored, data) = decode(Path::new("old"), &Bytes::from(old)).unwrap();
        assert_eq!(stored.meta, SnapshotMeta { index: 9, term: 3, conf: ConfState::new([1, 2, 3], [7]) });
        assert_eq!(&data[..], b"state");

        let meta = SnapshotMeta { index: 9, term: 3, conf: ConfState::with_witnesses([1, 2], [3], [7]) };
        let raw = Bytes::from(encode(&meta, 4, b"state"));
        let (stored, data) = decode(Path::new("new"), &raw).unwrap();
        assert_eq!(stored.meta, meta);
        assert!(stored.meta.conf.is_witness(3));
        assert_eq!(&data[..], b"state");
    }

    #[test]
    fn a_paced_draft_never_falls_behind_the_log() {
        let dir = std::env::temp_dir().join(format!("wal-snapshot-pace-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let meta = SnapshotMeta { index: 9, term: 1, conf: ConfState::new([1], []) };
        // 1 KiB/s: 1 MiB written is 17 minutes ahead of the rate.
        let counter = Arc::new(AtomicU64::new(500));
        let slack = 3 << 20;
        let draft = SnapshotDraft::create(&dir, meta, false, 1 << 10).unwrap().keeping_up_with(counter.clone(), slack);
        let Sink::File(sink) = &draft.sink else { panic!("a file draft") };
        assert_eq!(sink.pause(1 << 20), Some(PACE_STEP), "ahead of its rate and of the log");
        counter.fetch_add(slack + (1 << 20) - 1, Ordering::Relaxed);
        assert!(sink.pause(1 << 20).is_some(), "the log grew a byte less than the draft and the slack");
        counter.fetch_add(1, Ordering::Relaxed);
        assert_eq!(sink.pause(1 << 20), None, "the log grew as much as the draft and the slack: no sleeping");
        assert!(sink.pause(2 << 20).is_some(), "ahead of the log again");
        drop(draft);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A stored snapshot whose data rotted on disk since it was checked
    /// serves no chunk at all, whichever is asked for first; an intact one
    /// serves every chunk.
    #[test]
    fn a_snapshot_damaged_on_disk_serves_no_chunk() {
        use std::io::Write;
        use std::os::unix::fs::FileExt;
        let dir = std::env::temp_dir().join(format!("wal-snapshot-serve-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let meta = SnapshotMeta { index: 90, term: 4, conf: ConfState::new([1, 2, 3], []) };
        let stored = StoredSnapshot { meta: meta.clone(), segment_sequence_min: 2 };
        let data: Bytes = (0..SAVE_CHUNK_BYTES * 2 + 1000).map(|at| (at % 251) as u8).collect::<Vec<u8>>().into();
        let chunk = 100_000u64;
        let chunks = data.len() as u64 / chunk + 1;
        tokio_uring::start(async {
            let mut draft = SnapshotDraft::create(&dir, meta.clone(), false, 0).unwrap();
            draft.write_all(&data).unwrap();
            seal(&dir, &stored, draft).await.unwrap();
            let open = OpenSnapshot::open(&dir).unwrap().expect("saved");
            for at in (0..chunks).rev() {
                let end = ((at + 1) * chunk).min(data.len() as u64) as usize;
                assert_eq!(
                    open.read_chunk(&dir, at * chunk, chunk).await.unwrap(),
                    data.slice((at * chunk) as usize..end)
                );
            }
            let path = dir.join(SNAPSHOT_FILE);
            let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            let position = file.metadata().unwrap().len() - 1000;
            file.write_all_at(&[data[data.len() - 1000] ^ 0x10], position).unwrap();
            for first in [0, chunks - 1] {
                let open = OpenSnapshot::open(&dir).unwrap().expect("saved");
                for at in std::iter::once(first).chain(0..chunks) {
                    assert!(open.read_chunk(&dir, at * chunk, chunk).await.is_err(), "chunk {at} served");
                }
            }
        });
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_draft_written_in_many_pieces_seals_and_loads_whole() {
        use std::io::{Read, Write};
        let dir = std::env::temp_dir().join(format!("wal-snapshot-pieces-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let meta = SnapshotMeta { index: 90, term: 4, conf: ConfState::new([1, 2, 3], []) };
        let stored = StoredSnapshot { meta: meta.clone(), segment_sequence_min: 2 };
        let data: Bytes = (0..SAVE_CHUNK_BYTES * 3 + 12_345).map(|at| (at % 251) as u8).collect::<Vec<u8>>().into();
        tokio_uring::start(async {
            // Streamed by a writer, then appended durably (as received).
            let mut draft = SnapshotDraft::create(&dir, meta.clone(), false, 0).unwrap();
            draft.write_all(&data).unwrap();
            seal(&dir, &stored, draft).await.unwrap();
            let (loaded, loaded_data) = load(&dir, u64::MAX).await.unwrap().expect("saved");
            assert_eq!(loaded, stored);
            assert_eq!(loaded_data, data);
            let mut draft = SnapshotDraft::create(&dir, meta.clone(), true, 0).unwrap();
            for piece in data.chunks(100_000) {
                draft.append_durable(Bytes::copy_from_slice(piece)).await.unwrap();
            }
            seal(&dir, &stored, draft).await.unwrap();
            let head = load_head_blocking(&dir).unwrap().expect("saved");
            assert_eq!(head.stored, stored);
            let (_, length, mut reader) = open_reader(&dir, true).unwrap().expect("saved");
            let mut read = Vec::new();
            reader.read_to_end(&mut read).unwrap();
            assert_eq!((length, &read[..]), (data.len() as u64, &data[..]));
            let open = OpenSnapshot::open(&dir).unwrap().expect("saved");
            let chunk = open.read_chunk(&dir, 1000, 5000).await.unwrap();
            assert_eq!(chunk, data.slice(1000..6000));
            let last = open.read_chunk(&dir, data.len() as u64 - 10, 5000).await.unwrap();
            assert_eq!(last, data.slice(data.len() - 10..));
        });
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_draft_damaged_on_disk_is_refused() {
        use std::os::unix::fs::FileExt;
        let dir = std::env::temp_dir().join(format!("wal-snapshot-damaged-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let meta = SnapshotMeta { index: 9, term: 1, conf: ConfState::new([1], []) };
        let stored = StoredSnapshot { meta: meta.clone(), segment_sequence_min: 0 };
        tokio_uring::start(async {
            let mut draft = SnapshotDraft::create(&dir, meta.clone(), true, 0).unwrap();
            draft.append_durable(Bytes::from_static(b"some state")).await.unwrap();
            // The disk returns other bytes than were written.
            let temp = dir.join(SNAPSHOT_RECEIVED_FILE);
            let file = std::fs::OpenOptions::new().write(true).open(&temp).unwrap();
            let data_start = encode_head(&meta, 0, 0).len() as u64;
            file.write_all_at(b"X", data_start + 3).unwrap();
            let error = seal(&dir, &stored, draft).await.unwrap_err();
            assert!(matches!(error, WalError::Corrupt { .. }), "{error}");
            assert!(!dir.join(SNAPSHOT_FILE).exists(), "a damaged draft was installed");
        });
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
