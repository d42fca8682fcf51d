//! Torn writes, bit flips and random damage on the files of a closed log, and
//! the start-up errors of a wrong or missing directory.
//!
//! `WAL_DAMAGE_ITERATIONS` (default 40) sets the randomized rounds and
//! `WAL_DAMAGE_SEED` replays them.

use std::path::{Path, PathBuf};

use engine::{HardState, Index, Recovered, Term};
use rand::{Rng, SeedableRng};
use wal::testing::{batch, shape};
use wal::{LogStore, Wal, WalConfig, WalError};

fn scratch(tag: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let dir = std::env::temp_dir().join(format!("wal-{tag}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// 512 KiB segments, 1 KiB writes: a torn-tail window of 10 KiB (2 KiB of
/// records and the padding of two groups to 4 KiB). Each awaited append is
/// its own group, so a segment holds 128 of them.
fn config(dir: &Path) -> WalConfig {
    let mut config = WalConfig::new(dir, 5, 2);
    config.segment_bytes = 512 << 10;
    config.write_bytes_max = 1 << 10;
    config.batch_bytes_max = 1 << 10;
    config
}

fn open(dir: &Path) -> Result<Recovered, WalError> {
    open_reporting(dir).map(|(recovered, _)| recovered)
}

/// Opens and closes the log; also returns the damage recovery reported.
fn open_reporting(dir: &Path) -> Result<(Recovered, Option<WalError>), WalError> {
    tokio_uring::start(async {
        let (wal, recovered) = Wal::open(config(dir)).await?;
        let damage = wal.recovery_damage().cloned();
        wal.close().await?;
        Ok((recovered, damage))
    })
}

/// Writes `batches` batches of 3 entries, each awaited (one record per write),
/// plus two hard-state saves; returns the log's `(index, term)` list.
fn build(dir: &Path, batches: u64) -> Vec<(Index, Term)> {
    tokio_uring::start(async {
        let (wal, _) = Wal::open(config(dir)).await.unwrap();
        for number in 0..batches {
            let ticket = wal.append(batch(1 + number * 3, &[1 + number / 50; 3])).unwrap();
            wal.wait_durable(ticket.sequence).await.unwrap();
        }
        wal.save_hard_state(HardState { term: 1, vote: 2, commit: 3, ack_term: 0, verified: false }).await.unwrap();
        wal.save_hard_state(HardState { term: 2, vote: 2, commit: 4, ack_term: 0, verified: false }).await.unwrap();
        wal.close().await.unwrap();
    });
    (0..batches).flat_map(|number| (0..3).map(move |k| (1 + number * 3 + k, 1 + number / 50))).collect()
}

/// Segment files in sequence order.
fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|item| item.unwrap().path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "wal"))
        .collect();
    paths.sort();
    paths
}

/// Record offsets in a segment (from the length field of each header,
/// skipping the zero padding after each group to the next 4 KiB), then the
/// end of the last record.
fn record_offsets(raw: &[u8]) -> Vec<usize> {
    let nonzero = |range: std::ops::Range<usize>| raw[range].iter().any(|&byte| byte != 0);
    let mut offsets = Vec::new();
    let mut at = 0;
    loop {
        if at + 40 <= raw.len() && nonzero(at..at + 40) {
            offsets.push(at);
            at += u32::from_le_bytes(raw[at + 4..at + 8].try_into().unwrap()) as usize;
            continue;
        }
        let next = at.next_multiple_of(4096);
        if next > at && next + 40 <= raw.len() && !nonzero(at..next) && nonzero(next..next + 40) {
            at = next;
            continue;
        }
        break;
    }
    offsets.push(at);
    offsets
}

fn flip(path: &Path, at: usize) {
    let mut raw = std::fs::read(path).unwrap();
    raw[at] ^= 0x20;
    std::fs::write(path, raw).unwrap();
}

#[test]
fn log_spans_segments_named_by_first_index_with_a_spare_ready() {
    let dir = scratch("layout");
    build(&dir, 300);
    let names: Vec<String> =
        segments(&dir).iter().map(|path| path.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert!(names.len() >= 3, "{names:?}");
    assert!(names[0].starts_with("0000000001-00000000000000000001-"), "{names:?}");
    for path in segments(&dir) {
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 512 << 10, "preallocated to segment_bytes");
    }
    let name = wal::segment::parse_segment(&names[1]).unwrap();
    let raw = std::fs::read(segments(&dir)[1].clone()).unwrap();
    let stored_first = u64::from_le_bytes(raw[8..16].try_into().unwrap());
    assert_eq!(name.first_index, stored_first, "name carries the first record's index");
    // And the salt of the record's stored crc (see `wal::segment::salt`).
    let stored_crc = u32::from_le_bytes(raw[..4].try_into().unwrap());
    let length = u32::from_le_bytes(raw[4..8].try_into().unwrap()) as usize;
    assert_eq!(stored_crc ^ name.salt.unwrap(), crc32c::crc32c(&raw[4..length]), "{names:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn torn_tail_is_cut_and_the_log_continues() {
    let dir = scratch("torn");
    let expected = build(&dir, 100);
    let newest = segments(&dir).pop().unwrap();
    let raw = std::fs::read(&newest).unwrap();
    let offsets = record_offsets(&raw);
    let (last_start, end) = (offsets[offsets.len() - 2], offsets[offsets.len() - 1]);
    // A torn write: the second half of the last record never reached the disk.
    let mut torn = raw.clone();
    torn[(last_start + end) / 2..end].fill(0);
    std::fs::write(&newest, &torn).unwrap();
    let recovered = open(&dir).unwrap();
    assert_eq!(shape(&recovered.entries), expected[..expected.len() - 3]);
    assert_eq!(recovered.hard_state, HardState { term: 2, vote: 2, commit: 4, ack_term: 0, verified: false });
    // The cut is durable and the log goes on from it.
    let after = std::fs::read(&newest).unwrap();
    assert!(after[last_start..].iter().all(|&byte| byte == 0), "cut tail zeroed");
    tokio_uring::start(async {
        let (wal, _) = Wal::open(config(&dir)).await.unwrap();
        let ticket = wal.append(batch(expected.len() as u64 - 2, &[9])).unwrap();
        wal.wait_durable(ticket.sequence).await.unwrap();
        wal.close().await.unwrap();
    });
    let recovered = open(&dir).unwrap();
    assert_eq!(recovered.entries.last().map(|entry| (entry.index, entry.term)), Some((expected.len() as u64 - 2, 9)));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn garbage_in_preallocated_space_after_the_tail_is_cut() {
    let dir = scratch("garbage");
    let expected = build(&dir, 20);
    let newest = segments(&dir).pop().unwrap();
    let mut raw = std::fs::read(&newest).unwrap();
    let end = *record_offsets(&raw).last().unwrap();
    raw[end + 100..end + 300].fill(0xab);
    std::fs::write(&newest, &raw).unwrap();
    let recovered = open(&dir).unwrap();
    assert_eq!(shape(&recovered.entries), expected);
    assert!(std::fs::read(&newest).unwrap()[end..].iter().all(|&byte| byte == 0));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Issue 16: a flipped bit in an older segment is corruption, not a torn
/// write. The log is cut before the damaged record (later segments go), the
/// damage is reported with file and offset, and the recovered log claims at
/// least what the hard state's last save saw durable, so the engine starts
/// in repair instead of the node refusing to start.
#[test]
fn bit_flip_in_an_older_segment_cuts_the_log_before_it_and_reports_it() {
    let dir = scratch("flip-old");
    let expected = build(&dir, 300);
    let first = segments(&dir)[0].clone();
    let raw = std::fs::read(&first).unwrap();
    let offsets = record_offsets(&raw);
    let damaged = offsets.len() / 2;
    flip(&first, offsets[damaged] + 50);
    let (recovered, damage) = open_reporting(&dir).unwrap();
    match damage {
        Some(WalError::Corrupt { file, offset, .. }) => {
            assert_eq!((file, offset), (first.clone(), offsets[damaged] as u64))
        }
        other => panic!("expected reported corruption, got {other:?}"),
    }
    assert_eq!(shape(&recovered.entries), expected[..damaged * 3], "the good prefix survives");
    assert_eq!(recovered.acknowledged, expected.len() as u64, "the last hard-state save saw the whole log durable");
    assert_eq!(segments(&dir), vec![first.clone()], "segments after the damage are gone");
    // The cut is durable: the next open finds a clean log that still lacks
    // what this replica acknowledged, and the log goes on from the cut.
    let (recovered, damage) = open_reporting(&dir).unwrap();
    assert!(damage.is_none(), "{damage:?}");
    assert_eq!((recovered.entries.len(), recovered.acknowledged), (damaged * 3, expected.len() as u64));
    tokio_uring::start(async {
        let (wal, _) = Wal::open(config(&dir)).await.unwrap();
        let ticket = wal.append(batch(damaged as u64 * 3 + 1, &[7])).unwrap();
        wal.wait_durable(ticket.sequence).await.unwrap();
        // A save while still short of what it acknowledged keeps the claim.
        wal.save_hard_state(HardState { term: 7, vote: 0, commit: 0, ack_term: 0, verified: false }).await.unwrap();
        wal.close().await.unwrap();
    });
    let recovered = open(&dir).unwrap();
    assert_eq!(recovered.entries.len(), damaged * 3 + 1);
    assert_eq!(recovered.acknowledged, expected.len() as u64, "a replica in repair never forgets what it lacks");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Issue 16: damage far before the newest segment's tail (valid records
/// beyond the torn-tail window) is corruption: cut and reported, not refused.
#[test]
fn bit_flip_far_before_the_newest_tail_cuts_the_log_and_reports_it() {
    let dir = scratch("flip-newest");
    // 90 groups of 4 KiB: one segment, far more than the 10 KiB window.
    let expected = build(&dir, 90);
    let newest = segments(&dir).pop().unwrap();
    let raw = std::fs::read(&newest).unwrap();
    let offsets = record_offsets(&raw);
    let end = *offsets.last().unwrap();
    assert!(end > 20 << 10, "the newest segment holds more than twice the 10 KiB window: {end}");
    flip(&newest, offsets[1] + 45);
    let (recovered, damage) = open_reporting(&dir).unwrap();
    let text = damage.expect("corruption is reported").to_string();
    assert!(text.contains(&newest.display().to_string()) && text.contains("torn-tail window"), "{text}");
    assert_eq!(shape(&recovered.entries), expected[..3]);
    assert_eq!(recovered.acknowledged, expected.len() as u64);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Issue 16 item 5, misdirected writes: a whole valid record written at
/// another record's place. Before, a record that left a gap refused the log
/// (an operator had to wipe the replica), and a stale copy landing on the
/// last record silently truncated it; now both cut the log before the
/// misplaced record and claim what the cut removed.
#[test]
fn a_record_written_at_another_records_place_is_damage_not_a_refusal() {
    for (tag, source, target) in [("gap", 10, 5), ("stale", 0, 0)] {
        let dir = scratch(&format!("misdirected-{tag}"));
        let expected = build(&dir, 20);
        let newest = segments(&dir).pop().unwrap();
        let mut raw = std::fs::read(&newest).unwrap();
        let offsets = record_offsets(&raw);
        // Records are the same length; the stale case overwrites the last.
        let target = if tag == "stale" { offsets.len() - 2 } else { target };
        let length = offsets[1] - offsets[0];
        let record = raw[offsets[source]..offsets[source] + length].to_vec();
        raw[offsets[target]..offsets[target] + length].copy_from_slice(&record);
        std::fs::write(&newest, raw).unwrap();
        let (recovered, damage) = open_reporting(&dir).unwrap_or_else(|error| panic!("{tag}: refused: {error}"));
        let text = damage.unwrap_or_else(|| panic!("{tag}: the misplaced record is reported")).to_string();
        assert!(text.contains("out of place") || text.contains("a gap"), "{tag}: {text}");
        assert_eq!(shape(&recovered.entries), expected[..target * 3], "{tag}: the good prefix is kept");
        assert_eq!(recovered.acknowledged, expected.len() as u64, "{tag}: the rest is claimed and repaired");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// Issue 16: a torn-looking tail is a torn write only when it holds nothing
/// this replica may have acknowledged. The hard state's `acknowledged`
/// (the durable end of the log at its last save) tells the two apart.
#[test]
fn a_cut_tail_below_the_acknowledged_index_is_reported_as_lost() {
    let dir = scratch("torn-acked");
    let expected = build(&dir, 100);
    let last = expected.len() as u64;
    // One more record, durable, but no hard-state save after it.
    tokio_uring::start(async {
        let (wal, _) = Wal::open(config(&dir)).await.unwrap();
        let ticket = wal.append(batch(last + 1, &[3, 3])).unwrap();
        wal.wait_durable(ticket.sequence).await.unwrap();
        wal.close().await.unwrap();
    });
    let tear_last_record = |dir: &Path| {
        let newest = segments(dir).pop().unwrap();
        let mut raw = std::fs::read(&newest).unwrap();
        let offsets = record_offsets(&raw);
        let (start, end) = (offsets[offsets.len() - 2], offsets[offsets.len() - 1]);
        raw[(start + end) / 2..end].fill(0);
        std::fs::write(&newest, &raw).unwrap();
    };
    tear_last_record(&dir);
    let (recovered, damage) = open_reporting(&dir).unwrap();
    assert!(damage.is_none(), "a torn tail is not reported: {damage:?}");
    assert_eq!((recovered.entries.len() as u64, recovered.acknowledged), (last, last), "nothing acknowledged lost");
    tear_last_record(&dir);
    let (recovered, _) = open_reporting(&dir).unwrap();
    assert_eq!(recovered.entries.len() as u64, last - 3);
    assert_eq!(recovered.acknowledged, last, "the same cut now lost entries the hard state saw durable");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Issue 16: a damaged hard-state slot may have held the newest term and
/// vote (a bit flip, not only a torn save), so any damage is reported and the
/// replica's past is unknown (`engine::REPAIR_UNKNOWN`: it repairs from its
/// peers, voting only when that is safe); both slots damaged no longer stop
/// the node: the file is kept aside and the hard state starts over from the
/// log's last term.
#[test]
fn hard_state_damage_is_repaired_from_the_peers() {
    let dir = scratch("hard");
    let log = build(&dir, 2);
    let path = dir.join(wal::hard_state::HARD_STATE_FILE);
    // Three saves in all (sequence 1 at initialization, 2 and 3 in build):
    // the newest (term 2) is in slot 1, the previous (term 1) in slot 0.
    flip(&path, wal::hard_state::SLOT_SIZE + 30);
    let (recovered, damage) = open_reporting(&dir).unwrap();
    assert_eq!(recovered.hard_state, HardState { term: 1, vote: 2, commit: 3, ack_term: 1, verified: false });
    assert_eq!(recovered.acknowledged, engine::REPAIR_UNKNOWN, "the lost slot may have held a newer vote");
    assert!(matches!(damage, Some(WalError::Corrupt { ref file, .. }) if *file == path), "{damage:?}");
    flip(&path, 30);
    let (recovered, damage) = open_reporting(&dir).unwrap();
    match damage {
        Some(WalError::Corrupt { file, found, .. }) => {
            assert_eq!(file, path);
            assert!(found.contains("slot 0") && found.contains("slot 1"), "names both slots: {found}");
        }
        other => panic!("expected the damage reported, got {other:?}"),
    }
    assert!(dir.join("HARDSTATE.damaged").exists(), "the damaged file is kept");
    assert_eq!(recovered.acknowledged, engine::REPAIR_UNKNOWN);
    assert_eq!(recovered.hard_state.term, log.last().unwrap().1, "the term starts from the log's");
    assert_eq!(recovered.entries.len(), log.len(), "the log is kept");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Issue 16: a snapshot file that fails its checksum no longer stops the
/// node: it is kept as `SNAPSHOT.damaged` with the segments after it (their
/// entries cannot be applied without the state before them), and the
/// replica starts empty, in repair up to what its hard state says it
/// acknowledged, so a leader sends it a snapshot.
#[test]
fn damaged_snapshot_is_set_aside_and_repaired_from_the_peers() {
    let dir = scratch("snapshot");
    let log = build(&dir, 4);
    tokio_uring::start(async {
        let (wal, _) = Wal::open(config(&dir)).await.unwrap();
        let meta = engine::SnapshotMeta { index: 6, term: 1, conf: engine::ConfState::new([1, 2, 3], []) };
        wal.save_snapshot(meta, bytes::Bytes::from(vec![7u8; 4096])).await.unwrap();
        wal.close().await.unwrap();
    });
    let path = dir.join(wal::snapshot::SNAPSHOT_FILE);
    flip(&path, 2000);
    let (recovered, damage) = open_reporting(&dir).unwrap();
    assert!(matches!(damage, Some(WalError::Corrupt { ref file, .. }) if *file == path), "{damage:?}");
    assert!(dir.join("SNAPSHOT.damaged").exists(), "the damaged snapshot is kept");
    assert_eq!(recovered.snapshot, None);
    assert!(recovered.entries.is_empty(), "the entries after the lost snapshot are set aside");
    assert!(recovered.acknowledged >= 4, "in repair up to what it acknowledged (log of {})", log.len());
    // It opens again (the next start finds an empty log).
    let (again, damage) = open_reporting(&dir).unwrap();
    assert!(damage.is_none() && again.entries.is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn wrong_missing_or_busy_directories_are_clear_errors() {
    let missing = std::env::temp_dir().join("wal-does-not-exist-here");
    assert!(matches!(open(&missing), Err(WalError::DirMissing { .. })));

    let dir = scratch("identity");
    build(&dir, 1);
    let result = tokio_uring::start(async {
        let mut other = config(&dir);
        other.node_id = 99;
        Wal::open(other).await.map(|_| ())
    });
    assert!(matches!(result, Err(WalError::WrongIdentity { found_node: 2, expected_node: 99, .. })), "{result:?}");

    let result = tokio_uring::start(async {
        let (_wal, _) = Wal::open(config(&dir)).await.unwrap();
        Wal::open(config(&dir)).await.map(|_| ())
    });
    assert!(matches!(result, Err(WalError::DirLocked { .. })), "{result:?}");

    std::fs::remove_file(dir.join(wal::dir::IDENTITY_FILE)).unwrap();
    assert!(matches!(open(&dir), Err(WalError::MissingIdentity { .. })));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn full_queue_pushes_back_and_a_closed_log_refuses() {
    let dir = scratch("queue");
    tokio_uring::start(async {
        let mut small = config(&dir);
        small.queued_bytes_max = 4 << 10;
        let (wal, _) = Wal::open(small).await.unwrap();
        let mut next = 1;
        let error = loop {
            match wal.append(batch(next, &[1; 10])) {
                Ok(ticket) => next = ticket.last_index + 1,
                Err(error) => break error,
            }
        };
        assert!(matches!(error, WalError::QueueFull { queued_bytes_max: 4096, .. }), "{error}");
        assert!(wal.queued_bytes() <= 4096);
        // Durability frees the queue.
        wal.wait_durable(wal.durable_sequence() + 1).await.unwrap();
        wal.append(batch(next, &[1])).unwrap();
        wal.close().await.unwrap();
    });
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Random damage to random files never panics, and whatever is recovered was
/// written (no invented entries).
#[test]
fn randomized_damage_never_panics() {
    let iterations: u32 =
        std::env::var("WAL_DAMAGE_ITERATIONS").ok().and_then(|value| value.parse().ok()).unwrap_or(40);
    let seed: u64 = std::env::var("WAL_DAMAGE_SEED").ok().and_then(|value| value.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    println!("damage seed {seed}; replay with WAL_DAMAGE_SEED={seed} cargo test -p wal --release --test damage");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let pristine = scratch("damage-pristine");
    let written = build(&pristine, 200);
    let (mut refused, mut opened) = (0, 0);
    for iteration in 0..iterations {
        let dir = scratch("damage");
        for item in std::fs::read_dir(&pristine).unwrap() {
            let path = item.unwrap().path();
            std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
        }
        let mut files: Vec<PathBuf> = segments(&dir);
        files.push(dir.join(wal::hard_state::HARD_STATE_FILE));
        files.push(dir.join(wal::dir::IDENTITY_FILE));
        for _ in 0..rng.random_range(1..=3) {
            let path = &files[rng.random_range(0..files.len())];
            let mut raw = std::fs::read(path).unwrap();
            if raw.is_empty() {
                continue;
            }
            let at = rng.random_range(0..raw.len());
            match rng.random_range(0..4) {
                0 => raw[at] ^= 1 << rng.random_range(0..8),
                1 => {
                    let end = (at + rng.random_range(1..600)).min(raw.len());
                    raw[at..end].fill(0);
                }
                2 => raw.truncate(at),
                _ => {
                    let end = (at + rng.random_range(1..600)).min(raw.len());
                    rng.fill(&mut raw[at..end]);
                }
            }
            std::fs::write(path, raw).unwrap();
        }
        match open(&dir) {
            Ok(recovered) => {
                opened += 1;
                for pair in shape(&recovered.entries) {
                    assert!(
                        written.binary_search(&pair).is_ok(),
                        "seed {seed} iteration {iteration}: invented {pair:?}"
                    );
                }
            }
            Err(error) => {
                refused += 1;
                assert!(!error.to_string().is_empty());
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
    println!("{opened} damaged logs opened (torn tails cut), {refused} refused");
    std::fs::remove_dir_all(&pristine).unwrap();
}

/// A crash right after a segment switch renamed the spare leaves an empty
/// newest segment whose name claims an index the next append may not have.
#[test]
fn empty_newest_segment_from_a_crash_during_a_switch_is_dropped() {
    let dir = scratch("empty-newest");
    let expected = build(&dir, 10);
    let empty = dir.join(wal::segment::segment_file_name(900, expected.len() as u64 + 1));
    std::fs::write(&empty, vec![0u8; 512 << 10]).unwrap();
    tokio_uring::start(async {
        let (wal, recovered) = Wal::open(config(&dir)).await.unwrap();
        assert_eq!(shape(&recovered.entries), expected);
        // A conflicting append at a lower index than the empty file's name.
        let ticket = wal.append(batch(5, &[7])).unwrap();
        wal.wait_durable(ticket.sequence).await.unwrap();
        wal.close().await.unwrap();
    });
    assert!(!empty.exists());
    let recovered = open(&dir).unwrap();
    assert_eq!(recovered.entries.last().map(|entry| (entry.index, entry.term)), Some((5, 7)));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// An initialization that crashed before writing IDENTITY is finished on the
/// next open; one with a saved vote is not someone's fresh directory.
#[test]
fn interrupted_initialization_is_completed() {
    let dir = scratch("init");
    build(&dir, 1);
    for item in std::fs::read_dir(&dir).unwrap() {
        let path = item.unwrap().path();
        if path.file_name().unwrap() != wal::hard_state::HARD_STATE_FILE {
            std::fs::remove_file(path).unwrap();
        }
    }
    assert!(matches!(open(&dir), Err(WalError::MissingIdentity { .. })), "a saved vote is kept");
    std::fs::remove_dir_all(&dir).unwrap();
    let dir = scratch("init-default");
    open(&dir).unwrap();
    for item in std::fs::read_dir(&dir).unwrap() {
        let path = item.unwrap().path();
        if path.file_name().unwrap() == wal::dir::IDENTITY_FILE {
            std::fs::remove_file(path).unwrap();
        }
    }
    assert!(dir.join(wal::hard_state::HARD_STATE_FILE).exists(), "the default hard state stays");
    assert_eq!(open(&dir).unwrap(), Recovered::default());
    std::fs::remove_dir_all(&dir).unwrap();
}
