//! Segment files: naming, preallocation, and the switch to a new segment.
//!
//! A segment is named `{sequence:010}-{first_index:020}.wal`: the sequence
//! orders segments (a truncation can make a later segment start at a lower
//! index than an earlier one, so the first index alone cannot), and the first
//! index says where the segment's first record starts. The records are entry
//! batches laid end to end from offset 0; preallocated space after the last
//! record reads as zeros.
//!
//! The next segment is created, preallocated with `fallocate` and made durable
//! (file and directory) ahead of need as `{sequence:010}.prealloc`, because its
//! first index is not known yet. The switch renames it and syncs the directory
//! before the first record goes in, so a record can never sit in a file whose
//! name a crash could lose.

use std::path::{Path, PathBuf};

use engine::Index;

use crate::error::WalError;

/// Suffix of live segment files.
pub const SEGMENT_SUFFIX: &str = ".wal";
/// Suffix of a preallocated segment not yet in use.
pub const PREALLOC_SUFFIX: &str = ".prealloc";

/// A live segment's name.
pub fn segment_file_name(sequence: u64, first_index: Index) -> String {
    format!("{sequence:010}-{first_index:020}{SEGMENT_SUFFIX}")
}

/// The sequence and first index in a segment's name, or `None` for a name
/// that is not a segment's.
pub fn parse_segment_name(name: &str) -> Option<(u64, Index)> {
    let stem = name.strip_suffix(SEGMENT_SUFFIX)?;
    let (sequence, first_index) = stem.split_once('-')?;
    if sequence.len() != 10 || first_index.len() != 20 {
        return None;
    }
    Some((sequence.parse().ok()?, first_index.parse().ok()?))
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
}

/// A preallocated file waiting to become the next segment.
pub(crate) struct Spare {
    pub sequence: u64,
    pub path: PathBuf,
    pub file: tokio_uring::fs::File,
}

/// Creates, preallocates and durably records the spare segment `sequence`.
pub(crate) async fn create_spare(dir: PathBuf, sequence: u64, segment_bytes: u64) -> Result<Spare, WalError> {
    let path = dir.join(format!("{sequence:010}{PREALLOC_SUFFIX}"));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .map_err(|error| WalError::io("creating", &path, error))?;
    let file = tokio_uring::fs::File::from_std(file);
    file.fallocate(0, segment_bytes, 0).await.map_err(|error| WalError::io("preallocating", &path, error))?;
    file.sync_all().await.map_err(|error| WalError::io("syncing", &path, error))?;
    crate::dir::sync_dir(&dir).await?;
    Ok(Spare { sequence, path, file })
}

/// Turns a spare into the live segment starting at `first_index`: rename, then
/// directory sync, both before any record is written into it.
pub(crate) async fn activate(
    dir: &Path,
    spare: Spare,
    first_index: Index,
) -> Result<(SegmentMeta, tokio_uring::fs::File), WalError> {
    let path = dir.join(segment_file_name(spare.sequence, first_index));
    tokio_uring::fs::rename(&spare.path, &path).await.map_err(|error| WalError::io("renaming", &spare.path, error))?;
    crate::dir::sync_dir(dir).await?;
    let meta = SegmentMeta { sequence: spare.sequence, first_index, path, index_max: 0 };
    Ok((meta, spare.file))
}

/// Removes segment files and makes the removal durable.
pub(crate) async fn remove(dir: &Path, paths: &[PathBuf]) -> Result<(), WalError> {
    if paths.is_empty() {
        return Ok(());
    }
    for path in paths {
        tokio_uring::fs::remove_file(path).await.map_err(|error| WalError::io("removing", path, error))?;
    }
    crate::dir::sync_dir(dir).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sort_by_sequence() {
        let name = segment_file_name(7, 1234);
        assert_eq!(parse_segment_name(&name), Some((7, 1234)));
        assert!(segment_file_name(9, 99_999) < segment_file_name(10, 1));
        assert_eq!(parse_segment_name("0000000007.prealloc"), None);
        assert_eq!(parse_segment_name("7-1.wal"), None);
    }
}
