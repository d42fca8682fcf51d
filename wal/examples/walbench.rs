//! The WAL benchmark in runnable form: the raw `write` + `fdatasync` floor of
//! the same sizes on the same disk (and the direct-I/O floor of the log's
//! own writes), then 256-byte appends from 1, 16, 64 and
//! 256 concurrent appenders (durable appends per second, p50/p99 latency from
//! submission to durability).
//!
//! ```text
//! cargo run --release -p wal --example walbench -- [--dir DIR] [--seconds S] [--appenders 1,16,64,256]
//! ```
//!
//! The directory defaults to `./walbench-data` (the disk under test: keep it
//! off tmpfs); it is removed afterwards.

use std::cell::{Cell, RefCell};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use engine::batch::{BATCH_HEADER_SIZE, ENTRY_HEADER_SIZE};
use engine::EntryBatch;
use hdrhistogram::Histogram;
use wal::{LogStore, Wal, WalConfig};

/// The payload of every benchmark append.
const PAYLOAD_BYTES: usize = 256;
/// One append's record on disk: batch header, entry header, payload.
const RECORD_BYTES: usize = BATCH_HEADER_SIZE + ENTRY_HEADER_SIZE + PAYLOAD_BYTES;

/// Benchmarks the WAL against the raw synced-write floor of the same disk.
#[derive(clap::Parser)]
#[command(name = "walbench")]
struct Args {
    /// The directory on the disk under test (keep it off tmpfs); removed
    /// afterwards.
    #[arg(long, default_value = "walbench-data")]
    dir: PathBuf,
    /// Seconds per case.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Concurrent appenders, one case each.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64,256")]
    appenders: Vec<usize>,
}

fn parse_args() -> Args {
    <Args as clap::Parser>::parse()
}

struct Summary {
    operations: u64,
    elapsed: Duration,
    histogram: Histogram<u64>,
}

impl Summary {
    fn per_second(&self) -> f64 {
        self.operations as f64 / self.elapsed.as_secs_f64()
    }
    fn p50(&self) -> u64 {
        self.histogram.value_at_quantile(0.50)
    }
    fn p99(&self) -> u64 {
        self.histogram.value_at_quantile(0.99)
    }
    fn mean(&self) -> f64 {
        self.histogram.mean()
    }
}

/// Sequential `pwrite` + `fdatasync` of `size` bytes into a preallocated file,
/// exactly as the WAL lays records into a segment: the floor.
fn raw_floor(dir: &Path, size: usize, duration: Duration) -> Summary {
    let path = dir.join("floor.dat");
    let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
    let span = 256u64 << 20;
    // SAFETY: fallocate on an owned descriptor.
    let result = unsafe { libc::fallocate(std::os::unix::io::AsRawFd::as_raw_fd(&file), 0, 0, span as libc::off_t) };
    assert_eq!(result, 0, "fallocate failed");
    file.sync_all().unwrap();
    let buffer = vec![0x5au8; size];
    timed_writes(&path, file, &buffer, span - size as u64, true, duration)
}

/// Writes `buffer` at successive offsets (wrapping at `span`) for
/// `duration`, each followed by `fdatasync` when `sync` is set, timing each;
/// then removes the file.
fn timed_writes(path: &Path, file: std::fs::File, buffer: &[u8], span: u64, sync: bool, duration: Duration) -> Summary {
    let mut histogram = Histogram::<u64>::new(3).unwrap();
    let mut offset = 0u64;
    let started = Instant::now();
    let mut operations = 0;
    while started.elapsed() < duration {
        let begin = Instant::now();
        file.write_all_at(buffer, offset).unwrap();
        if sync {
            file.sync_data().unwrap();
        }
        histogram.record(begin.elapsed().as_micros() as u64).unwrap();
        offset = (offset + buffer.len() as u64) % span;
        operations += 1;
    }
    let elapsed = started.elapsed();
    drop(file);
    std::fs::remove_file(path).unwrap();
    Summary { operations, elapsed, histogram }
}

/// Sequential 4 KiB `pwrite`s through an `O_DIRECT | O_DSYNC` descriptor
/// into a zero-filled file: the floor of the log's own writes when the file
/// system supports direct I/O (each group is padded to 4 KiB). `None` where
/// it does not.
fn direct_floor(dir: &Path, duration: Duration) -> Option<Summary> {
    use std::os::unix::fs::OpenOptionsExt;
    const BLOCK: usize = 4096;
    let path = dir.join("floor-direct.dat");
    let span = 64u64 << 20;
    std::fs::write(&path, vec![0u8; span as usize]).unwrap();
    std::fs::File::open(&path).unwrap().sync_all().unwrap();
    let opened = std::fs::OpenOptions::new().write(true).custom_flags(libc::O_DIRECT | libc::O_DSYNC).open(&path);
    let Ok(file) = opened else {
        std::fs::remove_file(&path).unwrap();
        return None;
    };
    let memory = vec![0x5au8; 2 * BLOCK];
    let start = (BLOCK - memory.as_ptr() as usize % BLOCK) % BLOCK;
    // O_DSYNC: each write is its own sync, as in the log.
    Some(timed_writes(&path, file, &memory[start..start + BLOCK], span, false, duration))
}

/// The same through tokio-uring (`write_at` then `sync_data`, each awaited):
/// what any io_uring log pays before its own logic.
async fn uring_floor(dir: &Path, size: usize, duration: Duration) -> Summary {
    let path = dir.join("floor-uring.dat");
    let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
    let span = 256u64 << 20;
    let file = tokio_uring::fs::File::from_std(file);
    file.fallocate(0, span, 0).await.unwrap();
    file.sync_all().await.unwrap();
    let mut buffer = vec![0x5au8; size];
    let mut histogram = Histogram::<u64>::new(3).unwrap();
    let mut offset = 0u64;
    let started = Instant::now();
    let mut operations = 0;
    while started.elapsed() < duration {
        let begin = Instant::now();
        let (result, returned) = file.write_all_at(buffer, offset).await;
        result.unwrap();
        buffer = returned;
        file.sync_data().await.unwrap();
        histogram.record(begin.elapsed().as_micros() as u64).unwrap();
        offset = (offset + size as u64) % (span - size as u64);
        operations += 1;
    }
    let elapsed = started.elapsed();
    file.close().await.unwrap();
    std::fs::remove_file(&path).unwrap();
    Summary { operations, elapsed, histogram }
}

/// One appender against both floors, interleaved in short slices so that a
/// shared disk's drifting load hits all three alike: `rounds` times, `slice`
/// of `pwrite` + `fdatasync`, of tokio-uring write + `fdatasync`, and of WAL
/// appends awaited one at a time.
async fn interleaved_one_appender(dir: &Path, rounds: u32, slice: Duration) -> [Summary; 3] {
    let span = 64u64 << 20;
    let std_path = dir.join("floor-interleaved.dat");
    let std_file =
        std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&std_path).unwrap();
    // SAFETY: fallocate on an owned descriptor.
    let result =
        unsafe { libc::fallocate(std::os::unix::io::AsRawFd::as_raw_fd(&std_file), 0, 0, span as libc::off_t) };
    assert_eq!(result, 0, "fallocate failed");
    std_file.sync_all().unwrap();
    let uring_path = dir.join("floor-interleaved-uring.dat");
    let uring_file =
        std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&uring_path).unwrap();
    let uring_file = tokio_uring::fs::File::from_std(uring_file);
    uring_file.fallocate(0, span, 0).await.unwrap();
    uring_file.sync_all().await.unwrap();
    let wal_dir = dir.join("wal-interleaved");
    std::fs::create_dir_all(&wal_dir).unwrap();
    let (wal, _) = Wal::open(WalConfig::new(&wal_dir, 1, 1)).await.expect("open");
    let buffer = vec![0x5au8; RECORD_BYTES];
    let mut uring_buffer = buffer.clone();
    let new_summary =
        || Summary { operations: 0, elapsed: Duration::ZERO, histogram: Histogram::<u64>::new(3).unwrap() };
    let mut summaries = [new_summary(), new_summary(), new_summary()];
    let (mut std_offset, mut uring_offset, mut next_index) = (0u64, 0u64, 1u64);
    for _ in 0..rounds {
        for (kind, summary) in summaries.iter_mut().enumerate() {
            let started = Instant::now();
            while started.elapsed() < slice {
                let begin = Instant::now();
                match kind {
                    0 => {
                        std_file.write_all_at(&buffer, std_offset).unwrap();
                        std_file.sync_data().unwrap();
                        std_offset = (std_offset + RECORD_BYTES as u64) % (span - RECORD_BYTES as u64);
                    }
                    1 => {
                        let (result, returned) = uring_file.write_all_at(uring_buffer, uring_offset).await;
                        result.unwrap();
                        uring_buffer = returned;
                        uring_file.sync_data().await.unwrap();
                        uring_offset = (uring_offset + RECORD_BYTES as u64) % (span - RECORD_BYTES as u64);
                    }
                    _ => {
                        let ticket = wal.append(append_batch(next_index)).expect("append");
                        next_index += 1;
                        wal.wait_durable(ticket.sequence).await.expect("durable");
                    }
                }
                summary.histogram.record(begin.elapsed().as_micros() as u64).unwrap();
                summary.operations += 1;
            }
            summary.elapsed += started.elapsed();
        }
    }
    wal.close().await.expect("close");
    uring_file.close().await.unwrap();
    drop(std_file);
    std::fs::remove_file(&std_path).unwrap();
    std::fs::remove_file(&uring_path).unwrap();
    std::fs::remove_dir_all(&wal_dir).unwrap();
    summaries
}

fn append_batch(index: u64) -> EntryBatch {
    wal::testing::bench_batch(index, PAYLOAD_BYTES)
}

/// `appenders` tasks, each appending and awaiting durability in a loop.
async fn wal_run(dir: &Path, appenders: usize, warmup: Duration, duration: Duration) -> (Summary, wal::WalStats) {
    let (wal, _) = Wal::open(WalConfig::new(dir, 1, 1)).await.expect("open");
    let wal = Rc::new(wal);
    let next_index = Rc::new(Cell::new(1u64));
    let histogram = Rc::new(RefCell::new(Histogram::<u64>::new(3).unwrap()));
    let operations = Rc::new(Cell::new(0u64));
    let measuring = Rc::new(Cell::new(false));
    let stop = Rc::new(Cell::new(false));
    let mut tasks = Vec::new();
    for _ in 0..appenders {
        let (wal, next_index, histogram, operations, measuring, stop) =
            (wal.clone(), next_index.clone(), histogram.clone(), operations.clone(), measuring.clone(), stop.clone());
        tasks.push(tokio_uring::spawn(async move {
            while !stop.get() {
                let index = next_index.get();
                next_index.set(index + 1);
                let begin = Instant::now();
                let ticket = wal.append(append_batch(index)).expect("append");
                wal.wait_durable(ticket.sequence).await.expect("durable");
                if measuring.get() {
                    histogram.borrow_mut().record(begin.elapsed().as_micros() as u64).unwrap();
                    operations.set(operations.get() + 1);
                }
            }
        }));
    }
    tokio::time::sleep(warmup).await;
    let stats_before = wal.stats();
    measuring.set(true);
    let started = Instant::now();
    tokio::time::sleep(duration).await;
    measuring.set(false);
    let elapsed = started.elapsed();
    let stats_after = wal.stats();
    stop.set(true);
    for task in tasks {
        task.await.unwrap();
    }
    Rc::try_unwrap(wal).unwrap_or_else(|_| panic!("tasks done")).close().await.expect("close");
    let stats = wal::WalStats {
        writes: stats_after.writes - stats_before.writes,
        segment_switches: stats_after.segment_switches - stats_before.segment_switches,
        recycled_switches: stats_after.recycled_switches - stats_before.recycled_switches,
        write_micros: stats_after.write_micros - stats_before.write_micros,
        write_bytes: stats_after.write_bytes - stats_before.write_bytes,
        direct_io: stats_after.direct_io,
    };
    let histogram = Rc::try_unwrap(histogram).unwrap_or_else(|_| panic!("tasks done")).into_inner();
    (Summary { operations: operations.get(), elapsed, histogram }, stats)
}

fn main() {
    let args = parse_args();
    if let Err(error) = wal::io_uring_available() {
        eprintln!("walbench: {error}");
        std::process::exit(2);
    }
    std::fs::create_dir_all(&args.dir).expect("create the benchmark directory");
    let duration = Duration::from_secs_f64(args.seconds);
    println!(
        "walbench: dir {}, {} s per case, {PAYLOAD_BYTES}-byte payloads ({RECORD_BYTES}-byte records)",
        args.dir.display(),
        args.seconds
    );

    let floor = raw_floor(&args.dir, RECORD_BYTES, duration);
    println!(
        "floor  pwrite+fdatasync {RECORD_BYTES:>6} B      : {:>9.0} ops/s  p50 {:>6} us  p99 {:>6} us  mean {:>6.0} us",
        floor.per_second(),
        floor.p50(),
        floor.p99(),
        floor.mean()
    );
    let uring = tokio_uring::start(uring_floor(&args.dir, RECORD_BYTES, duration));
    println!(
        "floor  io_uring write+fdatasync {RECORD_BYTES:>6} B: {:>9.0} ops/s  p50 {:>6} us  p99 {:>6} us  mean {:>6.0} us",
        uring.per_second(),
        uring.p50(),
        uring.p99(),
        uring.mean()
    );
    match direct_floor(&args.dir, duration) {
        Some(direct) => println!(
            "floor  O_DIRECT|O_DSYNC pwrite   4096 B : {:>9.0} ops/s  p50 {:>6} us  p99 {:>6} us  mean {:>6.0} us",
            direct.per_second(),
            direct.p50(),
            direct.p99(),
            direct.mean()
        ),
        None => println!("floor  O_DIRECT|O_DSYNC pwrite: not supported by this file system"),
    }
    let group = 256 * RECORD_BYTES;
    let floor_group = raw_floor(&args.dir, group, duration);
    println!(
        "floor  pwrite+fdatasync {group:>6} B      : {:>9.0} ops/s  p50 {:>6} us  p99 {:>6} us  mean {:>6.0} us  ({:.0} records/s)",
        floor_group.per_second(),
        floor_group.p50(),
        floor_group.p99(),
        floor_group.mean(),
        floor_group.per_second() * 256.0
    );
    let rounds = (args.seconds * 3.0).ceil().max(1.0) as u32;
    let [floor_std, floor_uring, one] =
        tokio_uring::start(interleaved_one_appender(&args.dir, rounds, Duration::from_millis(300)));
    println!("interleaved, {rounds} rounds of 300 ms each:");
    for (name, summary) in [
        ("floor  pwrite+fdatasync", &floor_std),
        ("floor  io_uring write+fdatasync", &floor_uring),
        ("wal    1 appender", &one),
    ] {
        println!(
            "  {name:<32}: {:>9.0} ops/s  p50 {:>6} us  p99 {:>6} us  mean {:>6.0} us",
            summary.per_second(),
            summary.p50(),
            summary.p99(),
            summary.mean()
        );
    }
    println!(
        "  wal 1 appender p50 = {:.2}x the pwrite floor, {:.2}x the io_uring floor",
        one.p50() as f64 / floor_std.p50().max(1) as f64,
        one.p50() as f64 / floor_uring.p50().max(1) as f64
    );
    for &appenders in &args.appenders {
        // The disk may be shared: measure the floor again right before each
        // case, so the latency ratio compares neighbouring seconds.
        let floor_adjacent = raw_floor(&args.dir, RECORD_BYTES, Duration::from_secs(1).min(duration));
        println!(
            "floor  pwrite+fdatasync {RECORD_BYTES:>6} B (again): {:>9.0} ops/s  p50 {:>6} us  p99 {:>6} us  mean {:>6.0} us",
            floor_adjacent.per_second(),
            floor_adjacent.p50(),
            floor_adjacent.p99(),
            floor_adjacent.mean()
        );
        let dir = args.dir.join(format!("wal-{appenders}"));
        std::fs::create_dir_all(&dir).unwrap();
        let (summary, stats) =
            tokio_uring::start(wal_run(&dir, appenders, Duration::from_millis(500).min(duration), duration));
        std::fs::remove_dir_all(&dir).unwrap();
        println!(
            "wal    {appenders:>3} appender(s)            : {:>9.0} appends/s  p50 {:>6} us  p99 {:>6} us  mean {:>6.0} us  (p50 {:.2}x the floor just before; {:.1} appends/write, {} synced writes of {:.0} us, direct I/O {})",
            summary.per_second(),
            summary.p50(),
            summary.p99(),
            summary.mean(),
            summary.p50() as f64 / floor_adjacent.p50().max(1) as f64,
            summary.operations as f64 / stats.writes.max(1) as f64,
            stats.writes,
            stats.write_micros as f64 / stats.writes.max(1) as f64,
            if stats.direct_io { "on" } else { "off" },
        );
    }
    let _ = std::fs::remove_dir(&args.dir);
}
