//! The snapshot file: metadata, membership and the state machine's bytes under
//! one crc32c, written under a temporary name, synced, renamed and made durable
//! with a directory sync, so a crash leaves the old snapshot or the new one.
//!
//! The header also carries `segment_sequence_min`: segments with a lower
//! sequence are void. A snapshot that disagrees with the log (or lies past its
//! end) discards every entry, and this field makes that discard durable in the
//! same rename that makes the snapshot durable.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use engine::{ConfState, NodeId, SnapshotMeta};
use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::error::WalError;

/// The snapshot file's name.
pub const SNAPSHOT_FILE: &str = "SNAPSHOT";
pub(crate) const SNAPSHOT_TEMP_FILE: &str = "SNAPSHOT.tmp";
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
    reserved: U32,
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
fn encode_head(meta: &SnapshotMeta, segment_sequence_min: u64, data: &[u8]) -> Vec<u8> {
    let conf = &meta.conf;
    let members = conf.voters.len() + conf.voters_outgoing.len() + conf.learners.len();
    let mut raw = Vec::with_capacity(SNAPSHOT_HEADER_SIZE + members * 8);
    let header = SnapshotHeader {
        crc: U32::new(0),
        version: U32::new(SNAPSHOT_VERSION),
        magic: SNAPSHOT_MAGIC,
        index: U64::new(meta.index),
        term: U64::new(meta.term),
        segment_sequence_min: U64::new(segment_sequence_min),
        data_length: U64::new(data.len() as u64),
        voters: U32::new(conf.voters.len() as u32),
        voters_outgoing: U32::new(conf.voters_outgoing.len() as u32),
        learners: U32::new(conf.learners.len() as u32),
        reserved: U32::new(0),
    };
    raw.extend_from_slice(header.as_bytes());
    for id in conf.voters.iter().chain(&conf.voters_outgoing).chain(&conf.learners) {
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
    let mut raw = encode_head(meta, segment_sequence_min, data);
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
    if header.version.get() != SNAPSHOT_VERSION {
        return Err(WalError::corrupt(
            path,
            4,
            format!("version {SNAPSHOT_VERSION}"),
            header.version.get().to_string(),
        ));
    }
    let counts = [header.voters.get(), header.voters_outgoing.get(), header.learners.get()];
    if counts.iter().any(|&count| count > MEMBERS_MAX) {
        return Err(WalError::corrupt(path, 40, format!("at most {MEMBERS_MAX} members"), format!("{counts:?}")));
    }
    let members: usize = counts.iter().map(|&count| count as usize).sum();
    let data_start = SNAPSHOT_HEADER_SIZE + members * 8;
    let expected_length = (data_start as u64).checked_add(header.data_length.get());
    if expected_length != Some(raw.len() as u64) {
        return Err(WalError::corrupt(
            path,
            0,
            format!("a file of {expected_length:?} bytes"),
            format!("{} bytes", raw.len()),
        ));
    }
    let mut ids = raw[SNAPSHOT_HEADER_SIZE..data_start]
        .chunks_exact(8)
        .map(|chunk| NodeId::from_le_bytes(chunk.try_into().expect("8-byte chunk")));
    let mut take = |count: u32| -> Vec<NodeId> { ids.by_ref().take(count as usize).collect() };
    let conf = ConfState { voters: take(counts[0]), voters_outgoing: take(counts[1]), learners: take(counts[2]) };
    let meta = SnapshotMeta { index: header.index.get(), term: header.term.get(), conf };
    let stored = StoredSnapshot { meta, segment_sequence_min: header.segment_sequence_min.get() };
    Ok((stored, raw.slice(data_start..)))
}

/// Reads the snapshot file, if any. Blocking; used on open.
pub(crate) fn load_blocking(dir: &Path) -> Result<Option<(StoredSnapshot, Bytes)>, WalError> {
    let path = dir.join(SNAPSHOT_FILE);
    match std::fs::read(&path) {
        Ok(raw) => decode(&path, &Bytes::from(raw)).map(Some),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(WalError::io("reading", &path, error)),
    }
}

/// Reads the snapshot file on the io_uring runtime, refusing files over
/// `length_max` before allocating.
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

/// Bytes written between two syncs of a snapshot file. A snapshot is tens of
/// megabytes; synced in one piece it would occupy the device for a hundred
/// milliseconds, and every WAL `fdatasync` queued behind it would wait as
/// long. In pieces, log syncs interleave with it.
const SAVE_CHUNK_BYTES: usize = 256 << 10;

/// Durably replaces the snapshot file, writing and syncing it in pieces of
/// [`SAVE_CHUNK_BYTES`], at most `rate` bytes per second (0: no limit), so
/// the log's syncs are not held behind it. The checksum is computed piece by
/// piece too, between the writes, so the runtime thread (the shard driver's)
/// is never held for the whole state.
pub(crate) async fn save(dir: &Path, stored: &StoredSnapshot, data: &Bytes, rate: u64) -> Result<(), WalError> {
    let started = std::time::Instant::now();
    let temp: PathBuf = dir.join(SNAPSHOT_TEMP_FILE);
    let target = dir.join(SNAPSHOT_FILE);
    let mut head = encode_head(&stored.meta, stored.segment_sequence_min, data);
    let mut crc = crc32c::crc32c(&head[4..]);
    let file = std::fs::File::create(&temp).map_err(|error| WalError::io("creating", &temp, error))?;
    let file = tokio_uring::fs::File::from_std(file);
    let mut offset = head.len() as u64;
    let mut chunk_start = 0;
    while chunk_start < data.len() {
        let chunk = data.slice(chunk_start..(chunk_start + SAVE_CHUNK_BYTES).min(data.len()));
        let length = chunk.len();
        crc = crc32c::crc32c_append(crc, &chunk);
        let (result, _) = file.write_all_at(chunk, offset).await;
        result.map_err(|error| WalError::io("writing", &temp, error))?;
        offset += length as u64;
        chunk_start += length;
        if chunk_start < data.len() {
            file.sync_data().await.map_err(|error| WalError::io("syncing", &temp, error))?;
            if rate > 0 {
                let due = std::time::Duration::from_secs_f64(chunk_start as f64 / rate as f64);
                if let Some(ahead) = due.checked_sub(started.elapsed()) {
                    tokio::time::sleep(ahead).await;
                }
            }
        }
    }
    // The head last, sealed with the checksum of everything; the file is
    // only renamed into place after the final sync, so order does not matter.
    seal_head(&mut head, crc);
    let (result, _) = file.write_all_at(head, 0).await;
    result.map_err(|error| WalError::io("writing", &temp, error))?;
    file.sync_all().await.map_err(|error| WalError::io("syncing", &temp, error))?;
    file.close().await.map_err(|error| WalError::io("closing", &temp, error))?;
    tokio_uring::fs::rename(&temp, &target).await.map_err(|error| WalError::io("renaming", &temp, error))?;
    crate::dir::sync_dir(dir).await
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

    #[test]
    fn a_snapshot_saved_in_many_pieces_loads_whole() {
        let dir = std::env::temp_dir().join(format!("wal-snapshot-pieces-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let meta = SnapshotMeta { index: 90, term: 4, conf: ConfState::new([1, 2, 3], []) };
        let stored = StoredSnapshot { meta, segment_sequence_min: 2 };
        let data: Bytes = (0..SAVE_CHUNK_BYTES * 3 + 12_345).map(|at| (at % 251) as u8).collect::<Vec<u8>>().into();
        tokio_uring::start(async {
            save(&dir, &stored, &data, 0).await.unwrap();
            let (loaded, loaded_data) = load(&dir, u64::MAX).await.unwrap().expect("saved");
            assert_eq!(loaded, stored);
            assert_eq!(loaded_data, data);
        });
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
