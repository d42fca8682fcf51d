//! Recovery that holds a bounded part of a long log
//! (`WalConfig::recovery_payload_bytes`): the oldest committed entries come
//! back without payloads, counted as `Recovered::applied`, and
//! `read_recovered` reads them again, whole and checked, for the shell to
//! apply; or a taker (`Wal::open_applying`) gets them as they are read, and
//! nothing is read again unless it is told to discard them.

use bytes::Bytes;
use engine::{Entry, EntryBatch, EntryKind, HardState, Index};
use wal::{LogStore, Wal, WalConfig};

const PAYLOAD: usize = 1024;

fn scratch(tag: &str) -> std::path::PathBuf {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let dir = std::env::temp_dir().join(format!("wal-{tag}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn payload(index: Index) -> Bytes {
    Bytes::from(vec![(index % 251) as u8; PAYLOAD])
}

fn config(dir: &std::path::Path, budget: u64) -> WalConfig {
    let mut config = WalConfig::new(dir, 1, 1);
    // Small segments: the log spans several, and reading it again crosses them.
    config.segment_bytes = 64 << 10;
    config.batch_bytes_max = 16 << 10;
    config.write_bytes_max = 16 << 10;
    config.recovery_payload_bytes = budget;
    config
}

/// Writes entries 1 to `last` (term 1, four to a record, a configuration
/// entry at 10) and saves `commit` as the commit index.
fn write_log(dir: &std::path::Path, last: Index, commit: Index) {
    tokio_uring::start(async {
        let (wal, _) = Wal::open(config(dir, 0)).await.unwrap();
        let mut ticket = None;
        for first in (1..=last).step_by(4) {
            let entries: Vec<Entry> = (first..=(first + 3).min(last))
                .map(|index| {
                    let kind = if index == 10 { EntryKind::Config } else { EntryKind::Normal };
                    Entry { index, term: 1, kind, data: payload(index) }
                })
                .collect();
            ticket = Some(wal.append(EntryBatch::encode(&entries)).unwrap());
        }
        wal.wait_durable(ticket.unwrap().sequence).await.unwrap();
        wal.save_hard_state(HardState { term: 1, vote: 1, commit, ack_term: 1, verified: false }).await.unwrap();
        wal.close().await.unwrap();
    });
}

#[test]
fn the_oldest_committed_payloads_beyond_the_budget_are_read_again_on_demand() {
    let dir = scratch("bounded-recovery");
    write_log(&dir, 320, 300);
    tokio_uring::start(async {
        // 32 KiB: the configuration entry (10) and the newest 31 entries keep
        // their payloads.
        let (wal, recovered) = Wal::open(config(&dir, 32 * PAYLOAD as u64)).await.unwrap();
        assert_eq!(recovered.entries.len(), 320);
        assert_eq!(recovered.applied, 289, "dropped up to the entry that brings the rest within the budget");
        assert_eq!(recovered.applied_bytes, 288 * PAYLOAD as u64, "the configuration entry keeps its payload");
        for entry in &recovered.entries {
            let held = entry.index > 289 || entry.kind == EntryKind::Config;
            assert_eq!(!entry.data.is_empty(), held, "payload of entry {}", entry.index);
            if held {
                assert_eq!(entry.data, payload(entry.index));
            }
        }
        // Read again in pieces of about 10 KiB: whole records, in order.
        let mut next = 1;
        loop {
            let entries = wal.read_recovered(next, 10 * PAYLOAD).unwrap();
            if entries.is_empty() {
                break;
            }
            assert!(entries.len() <= 12, "about 10 KiB at a time, whole records: {}", entries.len());
            for entry in entries {
                assert_eq!((entry.index, &entry.data), (next, &payload(next)));
                next += 1;
            }
        }
        assert_eq!(next, 290, "every dropped entry, then none");
        assert!(wal.read_recovered(1, 10 * PAYLOAD).unwrap().is_empty(), "read once");
        wal.close().await.unwrap();
    });
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A replica in repair (its saved commit index lies beyond its log) counts
/// nothing past the snapshot as committed, so nothing can be applied before
/// the engine runs: every payload comes back, and a taker given entries as
/// the log was read is told to discard them.
#[test]
fn a_log_in_repair_gets_every_payload_back() {
    let dir = scratch("bounded-recovery-repair");
    write_log(&dir, 120, 200);
    for with_taker in [false, true] {
        tokio_uring::start(async {
            let mut taker = Taker::default();
            let taken = with_taker.then_some(&mut taker as &mut dyn wal::RecoveryApply);
            let (wal, recovered) = Wal::open_applying(config(&dir, 8 * PAYLOAD as u64), taken).await.unwrap();
            assert_eq!(recovered.applied, 0);
            assert_eq!(recovered.entries.len(), 120);
            assert!(recovered.entries.iter().all(|entry| entry.data == payload(entry.index)));
            assert!(wal.read_recovered(1, usize::MAX).unwrap().is_empty());
            wal.close().await.unwrap();
            if with_taker {
                assert!(!taker.entries.is_empty() && taker.discards >= 1, "entries handed over, then discarded");
            }
        });
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Without a budget nothing is dropped.
#[test]
fn without_a_budget_recovery_keeps_every_payload() {
    let dir = scratch("bounded-recovery-none");
    write_log(&dir, 64, 64);
    tokio_uring::start(async {
        let (wal, recovered) = Wal::open(config(&dir, 0)).await.unwrap();
        assert_eq!((recovered.applied, recovered.applied_bytes), (0, 0));
        assert!(recovered.entries.iter().all(|entry| entry.data == payload(entry.index)));
        wal.close().await.unwrap();
    });
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A taker of recovery's dropped entries (`wal::RecoveryApply`): what it
/// was given, and how often it was told to discard.
#[derive(Default)]
struct Taker {
    entries: Vec<Entry>,
    discards: usize,
}

impl wal::RecoveryApply for Taker {
    fn apply(&mut self, entries: &[Entry]) {
        self.entries.extend_from_slice(entries);
    }

    fn discard(&mut self) {
        self.discards += 1;
    }
}

/// With a taker, each dropped entry is handed over once, in order, payload
/// included, as the log is read: nothing is left to read again.
#[test]
fn a_taker_gets_the_dropped_entries_as_they_are_read_and_nothing_is_read_again() {
    let dir = scratch("bounded-recovery-taker");
    write_log(&dir, 320, 300);
    tokio_uring::start(async {
        let mut taker = Taker::default();
        let (wal, recovered) = Wal::open_applying(config(&dir, 32 * PAYLOAD as u64), Some(&mut taker)).await.unwrap();
        assert_eq!(recovered.applied, 289, "the same entries dropped as without a taker");
        assert_eq!(taker.discards, 0);
        let given: Vec<(Index, Bytes)> = taker.entries.iter().map(|entry| (entry.index, entry.data.clone())).collect();
        let expected: Vec<(Index, Bytes)> = (1..=289).map(|index| (index, payload(index))).collect();
        assert!(given == expected, "entries 1 to 289 with their payloads, in order");
        assert_eq!(taker.entries[9].kind, EntryKind::Config, "configuration entries too");
        assert!(wal.read_recovered(1, usize::MAX).unwrap().is_empty(), "nothing to read again");
        wal.close().await.unwrap();
    });
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A later record that replaces entries already handed over (a follower's
/// uncommitted tail that a new leader overwrote) makes the taker discard:
/// what it applied was not the committed log. The dropped entries are read
/// again instead, in their final versions.
#[test]
fn a_taker_whose_entries_a_later_record_replaces_discards_and_the_log_is_read_again() {
    let dir = scratch("bounded-recovery-taker-replaced");
    write_log(&dir, 200, 0);
    tokio_uring::start(async {
        let (wal, _) = Wal::open(config(&dir, 0)).await.unwrap();
        let replacing: Vec<Entry> = (50..=60)
            .map(|index| Entry { index, term: 2, kind: EntryKind::Normal, data: payload(index + 1) })
            .collect();
        let ticket = wal.append(EntryBatch::encode(&replacing)).unwrap();
        wal.wait_durable(ticket.sequence).await.unwrap();
        wal.save_hard_state(HardState { term: 2, vote: 1, commit: 60, ack_term: 2, verified: false }).await.unwrap();
        wal.close().await.unwrap();
    });
    tokio_uring::start(async {
        let mut taker = Taker::default();
        let (wal, recovered) = Wal::open_applying(config(&dir, 4 * PAYLOAD as u64), Some(&mut taker)).await.unwrap();
        assert_eq!(recovered.entries.len(), 60, "the log ends with the replacing record");
        assert!(taker.entries.iter().any(|entry| entry.index >= 50 && entry.term == 1), "handed over before replaced");
        assert!(taker.discards >= 1, "told to discard");
        let again = wal.read_recovered(1, usize::MAX).unwrap();
        assert_eq!(again.len() as u64, recovered.applied, "every dropped entry read again");
        for entry in &again {
            let (term, data) =
                if entry.index >= 50 { (2, payload(entry.index + 1)) } else { (1, payload(entry.index)) };
            assert_eq!((entry.term, &entry.data), (term, &data), "entry {} in its final version", entry.index);
        }
        wal.close().await.unwrap();
    });
    std::fs::remove_dir_all(&dir).unwrap();
}
