//! Criterion benches of the WAL against the raw floor on the same disk:
//! `pwrite` + `fdatasync` of one record, one durable append at a time, and 256
//! appends submitted together (one group commit). Data goes to
//! `./walbench-data` (override with `WALBENCH_DIR`). The runnable report with
//! 1/16/64/256 concurrent appenders is `cargo run --release -p wal --example
//! walbench`.

use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use engine::EntryBatch;
use wal::{LogStore, Wal, WalConfig};

const PAYLOAD_BYTES: usize = 256;

fn bench_dir(tag: &str) -> PathBuf {
    let base = std::env::var("WALBENCH_DIR").map(PathBuf::from).unwrap_or_else(|_| PathBuf::from("walbench-data"));
    let dir = base.join(format!("{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn append_batch(index: u64) -> EntryBatch {
    wal::testing::bench_batch(index, PAYLOAD_BYTES)
}

fn record_bytes() -> usize {
    append_batch(1).len_bytes()
}

fn raw_floor(c: &mut Criterion) {
    let dir = bench_dir("floor");
    let path = dir.join("floor.dat");
    let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
    let span = 64u64 << 20;
    // SAFETY: fallocate on an owned descriptor.
    let result = unsafe { libc::fallocate(std::os::unix::io::AsRawFd::as_raw_fd(&file), 0, 0, span as libc::off_t) };
    assert_eq!(result, 0);
    let size = record_bytes();
    let buffer = vec![0x5au8; size];
    let mut offset = 0u64;
    let mut group = c.benchmark_group("floor");
    group.throughput(Throughput::Elements(1));
    group.bench_function("pwrite_fdatasync_record", |b| {
        b.iter(|| {
            file.write_all_at(&buffer, offset).unwrap();
            file.sync_data().unwrap();
            offset = (offset + size as u64) % (span - size as u64);
        })
    });
    group.finish();
    std::fs::remove_dir_all(&dir).unwrap();
}

fn wal_appends(c: &mut Criterion) {
    let mut group = c.benchmark_group("wal");
    group.throughput(Throughput::Elements(1));
    group.bench_function("append_durable_1_appender", |b| {
        b.iter_custom(|iterations| {
            let dir = bench_dir("one");
            let elapsed = tokio_uring::start(async {
                let (wal, _) = Wal::open(WalConfig::new(&dir, 1, 1)).await.unwrap();
                // The first append activates the first segment (rename and
                // directory sync): keep that out of the timing.
                let ticket = wal.append(append_batch(1)).unwrap();
                wal.wait_durable(ticket.sequence).await.unwrap();
                let started = Instant::now();
                for index in 2..=iterations + 1 {
                    let ticket = wal.append(append_batch(index)).unwrap();
                    wal.wait_durable(ticket.sequence).await.unwrap();
                }
                let elapsed = started.elapsed();
                wal.close().await.unwrap();
                elapsed
            });
            std::fs::remove_dir_all(&dir).unwrap();
            elapsed
        })
    });
    const GROUP_APPENDS: u64 = 256;
    group.throughput(Throughput::Elements(GROUP_APPENDS));
    group.bench_function("append_durable_256_submitted_together", |b| {
        b.iter_custom(|iterations| {
            let dir = bench_dir("group");
            let elapsed = tokio_uring::start(async {
                let (wal, _) = Wal::open(WalConfig::new(&dir, 1, 1)).await.unwrap();
                let ticket = wal.append(append_batch(1)).unwrap();
                wal.wait_durable(ticket.sequence).await.unwrap();
                let mut next = 2;
                let started = Instant::now();
                for _ in 0..iterations {
                    let mut last = 0;
                    for _ in 0..GROUP_APPENDS {
                        last = wal.append(append_batch(next)).unwrap().sequence;
                        next += 1;
                    }
                    wal.wait_durable(last).await.unwrap();
                }
                let elapsed = started.elapsed();
                wal.close().await.unwrap();
                elapsed
            });
            std::fs::remove_dir_all(&dir).unwrap();
            elapsed
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = raw_floor, wal_appends
}
criterion_main!(benches);
