//! Group commit and pipelining, observed through the pipeline's counters:
//! appends submitted together share one synced write, and a producer that
//! keeps submitting gets its next write in flight while the previous one
//! syncs.

use std::cell::Cell;
use std::rc::Rc;

use wal::testing::batch;
use wal::{LogStore, Wal, WalConfig};

fn scratch(tag: &str) -> std::path::PathBuf {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let dir = std::env::temp_dir().join(format!("wal-{tag}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn appends_submitted_together_share_a_sync() {
    let dir = scratch("group");
    tokio_uring::start(async {
        let (wal, _) = Wal::open(WalConfig::new(&dir, 1, 1)).await.unwrap();
        let tickets: Vec<_> = (1..=1000).map(|index| wal.append(batch(index, &[1])).unwrap()).collect();
        wal.wait_durable(tickets.last().unwrap().sequence).await.unwrap();
        let stats = wal.stats();
        assert!(stats.writes <= 10, "1000 queued appends took {} writes", stats.writes);
        wal.close().await.unwrap();
    });
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Bursts of appends from a producer while an observer follows durability:
/// it only advances, one sequence per index, and many appends share a write.
/// (Whether a write overlaps a sync here depends on the disk's timing; the
/// pipelining rule itself is unit-tested in `commit.rs`.)
///
/// Note the `sleep` between bursts: tokio-uring submits queued operations only
/// when the runtime parks, so a task that spins with `yield_now` would starve
/// every io_uring operation, the WAL's included.
#[test]
fn durability_stays_ordered_under_bursts() {
    let dir = scratch("pipeline");
    tokio_uring::start(async {
        let (wal, _) = Wal::open(WalConfig::new(&dir, 1, 1)).await.unwrap();
        // The first append waits for the first segment's zero fill (about
        // 50 ms for 64 MiB); the bursts below are about steady state.
        let ticket = wal.append(batch(1, &[1])).unwrap();
        wal.wait_durable(ticket.sequence).await.unwrap();
        let wal = Rc::new(wal);
        const APPENDS: u64 = 3000;
        let submitted = Rc::new(Cell::new(0u64));
        let observer = {
            let (wal, submitted) = (wal.clone(), submitted.clone());
            tokio_uring::spawn(async move {
                let mut seen = 1;
                let mut observations = 0;
                while seen < APPENDS {
                    while submitted.get() <= seen {
                        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                    }
                    wal.wait_durable(seen + 1).await.unwrap();
                    let durable = wal.durable_sequence();
                    assert!(durable > seen, "durability went from {seen} to {durable}");
                    assert_eq!(wal.durable_index(), durable, "index and sequence move together");
                    seen = durable;
                    observations += 1;
                }
                observations
            })
        };
        submitted.set(1);
        for index in 2..=APPENDS {
            wal.append(batch(index, &[1])).unwrap();
            submitted.set(index);
            if index % 100 == 0 {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        }
        let observations = observer.await.unwrap();
        let stats = wal.stats();
        assert!(observations > 1, "the observer saw durability advance in steps");
        assert!(stats.writes < APPENDS / 10, "no group commit: {stats:?}");
        Rc::try_unwrap(wal).unwrap_or_else(|_| panic!("observer done")).close().await.unwrap();
    });
    std::fs::remove_dir_all(&dir).unwrap();
}
