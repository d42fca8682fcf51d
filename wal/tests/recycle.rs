//! Segment recycling (see `wal::segment`, "Recycling"): segments that
//! compaction frees become the next spares instead of new zero-filled files,
//! and a log written into recycled files, full of their earlier lives'
//! records, reopens to exactly what was written.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use engine::{ConfState, Index, SnapshotMeta};
use wal::testing::{batch, shape};
use wal::{LogStore, Wal, WalConfig};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wal-recycle-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn config(dir: &Path) -> WalConfig {
    let mut config = WalConfig::new(dir, 1, 1);
    config.segment_bytes = 64 << 10;
    config.write_bytes_max = 16 << 10;
    config.batch_bytes_max = 16 << 10;
    config.recycled_segments_max = 2;
    config
}

/// The inode numbers of the directory's segment and spare files, and the
/// files held open: a deleted file's inode number is not reused while it is
/// open, so a new inode number means a new file.
fn inodes(dir: &Path) -> (BTreeSet<u64>, Vec<std::fs::File>) {
    let files: Vec<std::fs::File> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap())
        .filter(|entry| {
            let name = entry.file_name().to_string_lossy().to_string();
            name.ends_with(".wal") || name.ends_with(".prealloc")
        })
        .map(|entry| std::fs::File::open(entry.path()).unwrap())
        .collect();
    (files.iter().map(|file| file.metadata().unwrap().ino()).collect(), files)
}

/// Appends batches of 100 entries of term `term` from `next` until the log
/// switched segments `switches` times in all; returns the next index.
async fn fill(wal: &Wal, mut next: Index, term: u64, switches: u64) -> Index {
    while wal.stats().segment_switches < switches {
        let ticket = wal.append(batch(next, &[term; 100])).unwrap();
        wal.wait_durable(ticket.sequence).await.unwrap();
        next = ticket.last_index + 1;
    }
    next
}

/// Takes a snapshot at `index` (of term `term`, the log's: it keeps the
/// log) and compacts the log up to it.
async fn snapshot_and_compact(wal: &Wal, index: Index, term: u64) {
    let meta = SnapshotMeta { index, term, conf: ConfState::new([1], []) };
    wal.save_snapshot(meta, bytes::Bytes::from(vec![7u8; 100])).await.unwrap();
    wal.compact(index).await.unwrap();
}

/// Reopens the log in `dir`, whose recovery must find no damage: its
/// snapshot's index and its entries' indexes and terms.
fn reopened(dir: &Path) -> (Option<Index>, Vec<(Index, u64)>) {
    tokio_uring::start(async {
        let (wal, recovered) = Wal::open(config(dir)).await.unwrap();
        assert!(wal.recovery_damage().is_none(), "{:?}", wal.recovery_damage());
        wal.close().await.unwrap();
        (recovered.snapshot.map(|meta| meta.index), shape(&recovered.entries))
    })
}

/// Compaction pools every segment it frees, even more than
/// `recycled_segments_max` (2 here): the log grows through about as many
/// again before the next compaction, and a pool bounded by the setting
/// alone deleted the rest, so that as many switches later zero-filled
/// fresh spares (with `--snapshot-log-bytes 1GiB`, 0.78-0.82x the default
/// interval's writes/s). The log then switches into the pooled files
/// without making a new one, and reopens exactly.
#[test]
fn compacted_segments_become_the_next_spares_and_the_log_reopens_exactly() {
    wal::io_uring_available().expect("these tests need io_uring");
    let dir = scratch("reuse");
    let (snapshot_index, last) = tokio_uring::start(async {
        let (wal, _) = Wal::open(config(&dir)).await.unwrap();
        let next = fill(&wal, 1, 1, 6).await;
        // Wait for the spare made at the last switch.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let (seen, _held) = inodes(&dir);
        let snapshot_index = next - 1;
        let live = names_ending(&dir, ".wal").len();
        snapshot_and_compact(&wal, snapshot_index, 1).await;
        let freed = live - names_ending(&dir, ".wal").len();
        let pooled = names_ending(&dir, ".recycled.prealloc").len();
        assert!(freed > config(&dir).recycled_segments_max, "the compaction freed {freed} segments");
        assert_eq!(pooled, freed, "the pool keeps every segment the compaction freed");
        // Entries of a later term, at higher indexes than the recycled
        // files' records: the spare made ahead, then two recycled ones.
        let switches = wal.stats().segment_switches;
        let last = fill(&wal, next, 2, switches + 3).await - 1;
        assert_eq!(wal.stats().recycled_switches, 2, "{:?}", wal.stats());
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let (now, _) = inodes(&dir);
        let created: Vec<&u64> = now.difference(&seen).collect();
        // No new file: every spare since came from the pool.
        assert!(created.is_empty(), "{seen:?} then {now:?}");
        wal.close().await.unwrap();
        (snapshot_index, last)
    });
    let expected: Vec<(Index, u64)> = (snapshot_index + 1..=last).map(|index| (index, 2)).collect();
    assert_eq!(reopened(&dir), (Some(snapshot_index), expected));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A log truncated back into a recycled segment, so that the file's
/// earlier life holds records of higher indexes than the log's end, and
/// records of this life past the truncation point too.
#[test]
fn a_truncation_inside_a_recycled_segment_reopens_exactly() {
    wal::io_uring_available().expect("these tests need io_uring");
    let dir = scratch("truncate");
    let expected = tokio_uring::start(async {
        let (wal, _) = Wal::open(config(&dir)).await.unwrap();
        let next = fill(&wal, 1, 1, 6).await;
        snapshot_and_compact(&wal, next - 1, 1).await;
        let switches = wal.stats().segment_switches;
        let next_again = fill(&wal, next, 1, switches + 2).await;
        assert!(wal.stats().recycled_switches >= 1);
        // Replace the last 150 entries with one batch of a later term.
        let ticket = wal.append(batch(next_again - 150, &[3; 10])).unwrap();
        wal.wait_durable(ticket.sequence).await.unwrap();
        wal.close().await.unwrap();
        let mut expected: Vec<(Index, u64)> = (next..next_again - 150).map(|index| (index, 1)).collect();
        expected.extend((next_again - 150..next_again - 140).map(|index| (index, 3)));
        expected
    });
    assert_eq!(reopened(&dir).1, expected);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The names of the directory's files that end in `suffix`, sorted.
fn names_ending(dir: &Path, suffix: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().to_string())
        .filter(|name| name.ends_with(suffix))
        .collect();
    names.sort();
    names
}

/// Turns a salted segment into the format written before salting: plain
/// checksums, and a name without a salt. Walks the records as the writer
/// lays them (groups from aligned offsets), in a file that was never
/// recycled (zeros after its records).
fn unsalt(dir: &Path, name: &str) {
    let parsed = wal::segment::parse_segment(name).unwrap();
    let path = dir.join(name);
    let mut raw = std::fs::read(&path).unwrap();
    let mut at = 0;
    while at + 40 <= raw.len() {
        if raw[at + 36..at + 38] != engine::batch::BATCH_MAGIC.to_le_bytes() {
            let next = (at + 1).next_multiple_of(4096);
            if next + 40 > raw.len() || raw[next + 36..next + 38] != engine::batch::BATCH_MAGIC.to_le_bytes() {
                break;
            }
            at = next;
            continue;
        }
        let crc = u32::from_le_bytes(raw[at..at + 4].try_into().unwrap()) ^ parsed.salt.unwrap();
        raw[at..at + 4].copy_from_slice(&crc.to_le_bytes());
        at += u32::from_le_bytes(raw[at + 4..at + 8].try_into().unwrap()) as usize;
    }
    std::fs::write(&path, raw).unwrap();
    let legacy = wal::segment::segment_file_name(parsed.sequence, parsed.first_index);
    std::fs::rename(&path, dir.join(legacy)).unwrap();
}

/// Data directories written before salting keep working: their unsalted
/// segments recover, the newest goes on being written unsalted, and once
/// compacted they are removed, never recycled (their zeros after the
/// records are what tells their end).
#[test]
fn unsalted_segments_from_before_salting_recover_and_are_never_recycled() {
    wal::io_uring_available().expect("these tests need io_uring");
    let dir = scratch("unsalted");
    let next = tokio_uring::start(async {
        let (wal, _) = Wal::open(config(&dir)).await.unwrap();
        let next = fill(&wal, 1, 1, 3).await;
        wal.close().await.unwrap();
        next
    });
    for name in names_ending(&dir, ".wal") {
        unsalt(&dir, &name);
    }
    assert!(names_ending(&dir, ".wal").iter().all(|name| wal::segment::parse_segment(name).unwrap().salt.is_none()));
    let last = tokio_uring::start(async {
        let (wal, recovered) = Wal::open(config(&dir)).await.unwrap();
        assert!(wal.recovery_damage().is_none(), "{:?}", wal.recovery_damage());
        assert_eq!(shape(&recovered.entries), (1..next).map(|index| (index, 1)).collect::<Vec<_>>());
        // Appends go on into the unsalted newest segment, then salted ones.
        let switches = wal.stats().segment_switches;
        let last = fill(&wal, next, 2, switches + 2).await - 1;
        wal.close().await.unwrap();
        last
    });
    let mut expected: Vec<(Index, u64)> = (1..next).map(|index| (index, 1)).collect();
    expected.extend((next..=last).map(|index| (index, 2)));
    tokio_uring::start(async {
        let (wal, recovered) = Wal::open(config(&dir)).await.unwrap();
        assert!(wal.recovery_damage().is_none(), "{:?}", wal.recovery_damage());
        assert_eq!(shape(&recovered.entries), expected);
        let salted = names_ending(&dir, ".wal").iter().filter(|name| name.len() > 36).count();
        assert_eq!(salted, 2, "{:?}", names_ending(&dir, ".wal"));
        snapshot_and_compact(&wal, last, 2).await;
        let pooled = names_ending(&dir, ".recycled.prealloc");
        assert_eq!(pooled.len(), 1, "only the sealed salted segment is pooled: {pooled:?}");
        wal.close().await.unwrap();
    });
    assert_eq!(reopened(&dir), (Some(last), Vec::new()));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A snapshot that disagrees with the log (a leader's, received by a
/// follower behind it) voids every segment, and the log starts anew in the
/// next one: the voided segments go into the pool, so that switch does not
/// wait for a zero-filled spare. A follower chasing a busy leader's
/// snapshots voids its log at every install; with a fresh zero-filled
/// spare at each one (tens of milliseconds for 64 MiB), its first
/// acknowledgement after an install came after the leader had compacted
/// past it again, and it never caught up (`t50_chaos`
/// `five_nodes_partitioned_minority_and_wiped_follower`, 616 installs in
/// 30 s).
#[test]
fn segments_a_snapshot_voids_become_the_next_spares_and_the_log_reopens_exactly() {
    wal::io_uring_available().expect("these tests need io_uring");
    let dir = scratch("voided");
    let (snapshot_index, last) = tokio_uring::start(async {
        let (wal, _) = Wal::open(config(&dir)).await.unwrap();
        let mut next = fill(&wal, 1, 1, 3).await;
        let mut snapshot_index = 0;
        for round in 0..3u64 {
            // Wait for the spare made at the last switch.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            // A leader's snapshot far beyond this log, of a later term.
            snapshot_index = next + 1_000;
            let meta = SnapshotMeta { index: snapshot_index, term: 2 + round, conf: ConfState::new([1], []) };
            wal.save_snapshot(meta, bytes::Bytes::from(vec![7u8; 100])).await.unwrap();
            assert!(names_ending(&dir, ".wal").is_empty(), "the snapshot voided every segment");
            assert!(!names_ending(&dir, ".recycled.prealloc").is_empty(), "round {round}: nothing was pooled");
            let ticket = wal.append(batch(snapshot_index + 1, &[2 + round; 10])).unwrap();
            wal.wait_durable(ticket.sequence).await.unwrap();
            next = ticket.last_index + 1;
        }
        // The first switch after a void took the spare made ahead (a fresh
        // one); the next ones reused the voided segments.
        assert_eq!(wal.stats().recycled_switches, 2, "{:?}", wal.stats());
        wal.close().await.unwrap();
        (snapshot_index, next - 1)
    });
    let expected: Vec<(Index, u64)> = (snapshot_index + 1..=last).map(|index| (index, 4)).collect();
    assert_eq!(reopened(&dir), (Some(snapshot_index), expected));
    std::fs::remove_dir_all(&dir).unwrap();
}
