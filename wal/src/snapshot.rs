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
const SNAPSHOT_TEMP_FILE: &str = "SNAPSHOT.tmp";
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

fn encode(meta: &SnapshotMeta, segment_sequence_min: u64, data: &[u8]) -> Vec<u8> {
    let conf = &meta.conf;
    let members = conf.voters.len() + conf.voters_outgoing.len() + conf.learners.len();
    let mut raw = Vec::with_capacity(SNAPSHOT_HEADER_SIZE + members * 8 + data.len());
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
    raw.extend_from_slice(data);
    let crc = crc32c::crc32c(&raw[4..]);
    raw[0..4].copy_from_slice(&crc.to_le_bytes());
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

/// Durably replaces the snapshot file.
pub(crate) async fn save(dir: &Path, stored: &StoredSnapshot, data: &[u8]) -> Result<(), WalError> {
    let temp: PathBuf = dir.join(SNAPSHOT_TEMP_FILE);
    let target = dir.join(SNAPSHOT_FILE);
    let raw = encode(&stored.meta, stored.segment_sequence_min, data);
    let file = std::fs::File::create(&temp).map_err(|error| WalError::io("creating", &temp, error))?;
    let file = tokio_uring::fs::File::from_std(file);
    let (result, _) = file.write_all_at(raw, 0).await;
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
}
