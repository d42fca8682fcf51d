//! Recovery against the disk's read floor (issue 21, "recovery at the read
//! floor"): opens a log of `--gib` GiB of `--value-bytes` entries and
//! compares the time `Wal::open` takes (reading, verifying and decoding every
//! record) with the time a plain direct sequential read of the same segment
//! files takes, each from a cold page cache, alternating, `--rounds` times.
//!
//! ```text
//! cargo run --release -p wal --example recoverybench -- [--dir DIR] [--gib 1] [--value-bytes 65536] [--rounds 3]
//! ```
//!
//! The log is written once into `DIR` (default `./recoverybench-data`, on the
//! disk under test) and kept for later runs unless `--remove`; dropping the
//! page cache needs root (`/proc/sys/vm/drop_caches`), and without it the
//! figures are warm-cache ones, which the output says.

use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use wal::{LogStore, Wal, WalConfig};

#[derive(clap::Parser)]
#[command(name = "recoverybench")]
struct Args {
    /// The log's directory, on the disk under test (keep it off tmpfs).
    #[arg(long, default_value = "recoverybench-data")]
    dir: PathBuf,
    /// GiB of log to recover.
    #[arg(long, default_value_t = 1.0)]
    gib: f64,
    /// Bytes of each entry's payload.
    #[arg(long, default_value_t = 64 << 10)]
    value_bytes: usize,
    /// Alternating floor / recovery rounds.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Remove the log afterwards.
    #[arg(long)]
    remove: bool,
}

/// Appends in flight while the log is written.
const FILL_INFLIGHT: usize = 32;
/// Bytes per read of the floor, and reads in flight (threads).
const FLOOR_READ_BYTES: usize = 1 << 20;
const FLOOR_READERS: usize = 4;
/// Reads in flight of the strict floor, which reads across file boundaries
/// (as many as the floor's: the only difference is the pause between files).
const STRICT_FLOOR_READERS: usize = 4;

fn main() {
    let args = <Args as clap::Parser>::parse();
    std::fs::create_dir_all(&args.dir).expect("create the directory");
    let target = (args.gib * f64::from(1u32 << 30)) as u64;
    if segment_bytes(&args.dir) < target {
        let started = Instant::now();
        tokio_uring::start(fill(&args.dir, target, args.value_bytes));
        eprintln!("wrote the log ({}) in {:.1?}", gib(segment_bytes(&args.dir)), started.elapsed());
    }
    let bytes = segment_bytes(&args.dir);
    let cold = drop_caches();
    if !cold {
        eprintln!("WARNING: cannot drop the page cache (not root?): the figures below are warm-cache reads");
    }
    println!("log: {} in {} segment files, {} B entries", gib(bytes), segments(&args.dir).len(), args.value_bytes);
    let mut ratios = Vec::new();
    let mut open_ratios = Vec::new();
    for round in 1..=args.rounds {
        drop_caches();
        let strict = read_floor_strict(&args.dir);
        drop_caches();
        let floor = read_floor(&args.dir);
        drop_caches();
        let started = Instant::now();
        let (entries, parts) = tokio_uring::start(async {
            let opening = Instant::now();
            let (wal, recovered) = Wal::open(WalConfig::new(&args.dir, 1, 1)).await.expect("open");
            let open = opening.elapsed();
            let entries = recovered.entries.len();
            drop(recovered);
            let dropped = opening.elapsed();
            wal.close().await.expect("close");
            (entries, [open, dropped - open, opening.elapsed() - dropped])
        });
        let recovery = started.elapsed();
        let ratio = recovery.as_secs_f64() / floor.as_secs_f64();
        ratios.push(ratio);
        // The issue's measure: opening the log (a node answers once open
        // returns; it neither drops its entries nor closes right away).
        open_ratios.push(parts[0].as_secs_f64() / floor.as_secs_f64());
        println!(
            "round {round}: direct read {:.2?} ({:.0} MB/s), recovery {:.2?} ({:.0} MB/s, {entries} entries, {:.2} s/GiB): {ratio:.2}x the read floor",
            floor,
            bytes as f64 / floor.as_secs_f64() / 1e6,
            recovery,
            bytes as f64 / recovery.as_secs_f64() / 1e6,
            recovery.as_secs_f64() / (bytes as f64 / f64::from(1u32 << 30)),
        );
        // Close waits for the spare segment that open starts preallocating.
        let [open, dropping, close] = parts.map(|part| format!("{part:.2?}"));
        println!(
            "  recovery's parts: open {open} ({:.2}x the read floor), dropping the entries {dropping}, close {close}",
            open_ratios[open_ratios.len() - 1]
        );
        println!(
            "  strict floor (no pause between files, {STRICT_FLOOR_READERS} reads in flight): {strict:.2?}, recovery {:.2}x that",
            recovery.as_secs_f64() / strict.as_secs_f64()
        );
    }
    ratios.sort_by(f64::total_cmp);
    open_ratios.sort_by(f64::total_cmp);
    println!(
        "median: opening {:.2}x the direct sequential read of the same bytes (open, drop and close {:.2}x)",
        open_ratios[open_ratios.len() / 2],
        ratios[ratios.len() / 2]
    );
    if args.remove {
        std::fs::remove_dir_all(&args.dir).expect("remove the directory");
    }
}

/// Appends entries of `value_bytes` until the segments hold `target` bytes.
async fn fill(dir: &Path, target: u64, value_bytes: usize) {
    let (wal, recovered) = Wal::open(WalConfig::new(dir, 1, 1)).await.expect("open");
    let wal = Rc::new(wal);
    let mut index = recovered.entries.last().map_or(0, |entry| entry.index) + 1;
    let per_entry = value_bytes as u64 + 64;
    let mut remaining = target.saturating_sub(segment_bytes(dir)) / per_entry + 1;
    let mut pending = Vec::new();
    while remaining > 0 {
        let ticket = wal.append(wal::testing::bench_batch(index, value_bytes)).expect("append");
        pending.push(ticket.sequence);
        index += 1;
        remaining -= 1;
        if pending.len() >= FILL_INFLIGHT || remaining == 0 {
            let last = *pending.last().expect("appends");
            wal.wait_durable(last).await.expect("durable");
            pending.clear();
        }
    }
    Rc::try_unwrap(wal).ok().expect("one owner").close().await.expect("close");
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("list the directory")
        .map(|item| item.expect("an entry").path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "wal"))
        .collect();
    files.sort();
    files
}

fn segment_bytes(dir: &Path) -> u64 {
    segments(dir).iter().map(|path| std::fs::metadata(path).map_or(0, |meta| meta.len())).sum()
}

fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / f64::from(1u32 << 30))
}

/// Writes back dirty pages and drops the page cache; false if not allowed.
fn drop_caches() -> bool {
    // SAFETY: sync takes no arguments and cannot fail.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

/// Reads every segment file with `O_DIRECT`, `FLOOR_READ_BYTES` at a time,
/// `FLOOR_READERS` reads in flight: the disk's sequential read floor for
/// these bytes.
fn read_floor(dir: &Path) -> Duration {
    let files = segments(dir);
    let started = Instant::now();
    for path in files {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)
            .expect("open a segment with O_DIRECT");
        let length = file.metadata().expect("metadata").len();
        let chunks = length.div_ceil(FLOOR_READ_BYTES as u64);
        std::thread::scope(|scope| {
            for reader in 0..FLOOR_READERS as u64 {
                let file = &file;
                scope.spawn(move || {
                    let mut buffer = AlignedBuffer::new(FLOOR_READ_BYTES);
                    let mut chunk = reader;
                    while chunk < chunks {
                        let read = file.read_at(buffer.as_mut(), chunk * FLOOR_READ_BYTES as u64).expect("read");
                        assert!(read > 0, "a segment ended early");
                        chunk += FLOOR_READERS as u64;
                    }
                });
            }
        });
    }
    started.elapsed()
}

/// Reads every segment file like [`read_floor`], but as one stream:
/// `STRICT_FLOOR_READERS` threads each take the next chunk in file order,
/// across file boundaries, so the disk queue never drains between files (as
/// recovery reads). `read_floor`'s pause at each file's end makes it a
/// lenient floor.
fn read_floor_strict(dir: &Path) -> Duration {
    let files: Vec<std::fs::File> = segments(dir)
        .iter()
        .map(|path| std::fs::OpenOptions::new().read(true).custom_flags(libc::O_DIRECT).open(path).expect("open"))
        .collect();
    let started = Instant::now();
    let mut chunks = Vec::new();
    for (number, file) in files.iter().enumerate() {
        let length = file.metadata().expect("metadata").len();
        chunks.extend((0..length.div_ceil(FLOOR_READ_BYTES as u64)).map(|chunk| (number, chunk)));
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..STRICT_FLOOR_READERS {
            scope.spawn(|| {
                let mut buffer = AlignedBuffer::new(FLOOR_READ_BYTES);
                while let Some(&(number, chunk)) = chunks.get(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed)) {
                    let read = files[number].read_at(buffer.as_mut(), chunk * FLOOR_READ_BYTES as u64).expect("read");
                    assert!(read > 0, "a segment ended early");
                }
            });
        }
    });
    started.elapsed()
}

/// A 4 KiB-aligned buffer for `O_DIRECT` reads.
struct AlignedBuffer {
    pointer: *mut u8,
    layout: std::alloc::Layout,
}

impl AlignedBuffer {
    fn new(size: usize) -> AlignedBuffer {
        let layout = std::alloc::Layout::from_size_align(size, 4096).expect("a valid layout");
        // SAFETY: the layout has a non-zero size.
        let pointer = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!pointer.is_null(), "out of memory");
        AlignedBuffer { pointer, layout }
    }

    fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: the allocation is `layout.size()` bytes, owned by self.
        unsafe { std::slice::from_raw_parts_mut(self.pointer, self.layout.size()) }
    }
}

impl Drop for AlignedBuffer {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.pointer, self.layout) };
    }
}
