//! `bench floor`: this machine's own limits, measured in a few seconds with
//! no outside tool, so that results can be read as ratios to them.
//!
//! A replicated write cannot be faster than the disk's synced write plus the
//! network's round trips, and a cluster cannot write more bytes than its
//! disk takes. On a shared development machine both move by 2x from hour to
//! hour (`../shared/DESIGN.md`), so an absolute figure says little; a ratio
//! to a floor measured in the same run says how much of the machine the
//! code leaves on the table. The floor holds:
//!
//! - synced 4 KiB direct writes (`O_DIRECT | O_DSYNC` `pwrite`s into a
//!   zero-filled file, as the WAL writes), p50 and p99, with 1 writer and
//!   with N concurrent writers, each on its own file (N = the nodes sharing
//!   the disk: a local cluster's nodes all write to it);
//! - synced sequential write bandwidth: 1 MiB `O_DIRECT | O_DSYNC` writes
//!   by the same N writers at once, each into its own file, summed (a
//!   cluster's replicas write the disk together; until 2026-12-07 one
//!   writer measured it, and a disk that takes more with several writes
//!   queued, as a virtio or NVMe disk does, showed clusters above their
//!   "floor");
//! - direct sequential read bandwidth: the files just written, read back
//!   one after another by one reader with `O_DIRECT` in 1 MiB reads (no
//!   page cache in between, so their size does not matter; one reader, as
//!   a restarting node reads its log);
//! - the loopback TCP round trip: 64 bytes echoed over 127.0.0.1, p50 and
//!   p99 (a plain blocking echo: the floor under any client library).
//!
//! Direct I/O is used where `statx(STATX_DIOALIGN)` says 4 KiB-aligned
//! direct I/O is accepted, as the WAL decides (`wal/src/segment.rs`);
//! elsewhere (tmpfs before Linux 6.6) writes go through the page cache with
//! `O_DSYNC` and reads follow `posix_fadvise(DONTNEED)`, and the floor says
//! so in `notes`.

use std::io::{Read as _, Write as _};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::result::{render_table, rfc3339};
use crate::stats::{format_micros, new_histogram};

/// The `format` field of a floor file.
pub const FLOOR_FORMAT: &str = "raft-kv-bench-floor/1";
/// The block of the synced small writes: the WAL pads each group to it.
pub const BLOCK_BYTES: usize = 4096;
/// The size of each sequential write and read.
pub const CHUNK_BYTES: usize = 1 << 20;
/// The most the bandwidth case writes (and reads back).
pub const SEQUENTIAL_BYTES_MAX: u64 = 256 << 20;
/// Each small-write file's size; writes wrap around within it (a block
/// rewritten costs the disk what a fresh one does, and a smaller file is
/// filled faster).
const BLOCK_FILE_BYTES: u64 = 4 << 20;
/// Writes before each timed case, not recorded: the disk may still be
/// settling the previous case's (or the zero fill's) writes.
const CASE_WARMUP: Duration = Duration::from_millis(100);
/// The echoed message of the loopback case.
const ECHO_BYTES: usize = 64;

/// Why the floor could not be measured or read.
#[derive(Debug, thiserror::Error)]
pub enum FloorError {
    #[error("cannot {action} {path}: {source}")]
    Io { action: &'static str, path: PathBuf, source: std::io::Error },
    #[error("loopback echo failed: {0}")]
    Loopback(std::io::Error),
    #[error("{path} is not a floor file (JSON): {source}")]
    Json { path: PathBuf, source: serde_json::Error },
    #[error("{path} has format {found:?}; this bench reads {FLOOR_FORMAT:?}")]
    Format { path: PathBuf, found: String },
    #[error("--writers must be at least 1")]
    NoWriters,
    #[error("--case-seconds {0}: each case needs at least {CASE_SECONDS_MIN} s to measure anything")]
    CaseTooShort(f64),
    #[error("--dir {0}: no such directory (the floor is measured on the file system that holds it)")]
    NoDir(PathBuf),
}

/// The shortest timed case: `--case-seconds 0` used to be taken and
/// floored at 50 ms per case without a word.
pub const CASE_SECONDS_MIN: f64 = 0.05;

fn io_error<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> FloorError + 'a {
    move |source| FloorError::Io { action, path: path.to_path_buf(), source }
}

/// How to measure.
#[derive(Clone, Debug)]
pub struct FloorOptions {
    /// The file system to measure: a temporary directory is made in it.
    /// `None`: the system's temporary directory, where the bench's local
    /// clusters keep their data.
    pub dir: Option<PathBuf>,
    /// Concurrent writers of the second case and of the bandwidth case:
    /// the nodes sharing the disk.
    pub writers: usize,
    /// Seconds for each timed case (five cases; zero-filling and the read
    /// back come on top, a fraction of a second on a usual disk).
    pub case_seconds: f64,
}

impl Default for FloorOptions {
    fn default() -> FloorOptions {
        FloorOptions { dir: None, writers: 3, case_seconds: 0.6 }
    }
}

/// Latency percentiles of one floor case.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencyFloor {
    pub count: u64,
    pub ops_per_second: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub mean_us: f64,
}

impl LatencyFloor {
    fn of(histogram: &Histogram<u64>, elapsed: Duration) -> LatencyFloor {
        let micros = |nanos: u64| nanos as f64 / 1_000.0;
        if histogram.is_empty() {
            return LatencyFloor::default();
        }
        LatencyFloor {
            count: histogram.len(),
            ops_per_second: histogram.len() as f64 / elapsed.as_secs_f64().max(1e-9),
            p50_us: micros(histogram.value_at_quantile(0.5)),
            p99_us: micros(histogram.value_at_quantile(0.99)),
            mean_us: histogram.mean() / 1_000.0,
        }
    }
}

/// This machine's floor, as `bench floor` writes it and result files embed it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Floor {
    /// [`FLOOR_FORMAT`].
    pub format: String,
    /// When it was measured, UTC, RFC 3339.
    pub measured_at: String,
    /// The directory measured (removed afterwards).
    pub dir: PathBuf,
    /// Whether the writes and the read were direct (`O_DIRECT`).
    pub direct_io: bool,
    /// The file system measured, as `TYPE on SOURCE (mounted at PATH)`,
    /// and `, no journal` for a journal-less ext4 (which writes each synced
    /// file's inode once per clock tick: `wal::filesystem`); empty when it
    /// could not be told (and in floors recorded before it was kept).
    #[serde(default)]
    pub file_system: String,
    /// What differs from the plan (direct I/O refused, ...).
    pub notes: Vec<String>,
    /// Synced 4 KiB writes, one writer.
    pub synced_write_1: LatencyFloor,
    /// Synced 4 KiB writes, [`Floor::writers`] writers at once (percentiles
    /// over all of them, ops/s summed).
    pub synced_write_n: LatencyFloor,
    pub writers: usize,
    /// Synced sequential writes of 1 MiB, by [`Floor::write_bandwidth_writers`]
    /// writers at once, summed.
    pub write_bytes_per_second: f64,
    /// How many wrote at once in the bandwidth case: [`Floor::writers`];
    /// 1 in floors recorded before 2026-12-07, when one writer measured it.
    #[serde(default = "one_writer")]
    pub write_bandwidth_writers: usize,
    /// Sequential reads of 1 MiB of the files just written, one reader.
    pub read_bytes_per_second: f64,
    /// 64-byte echo over 127.0.0.1.
    pub loopback_round_trip: LatencyFloor,
    /// How long the measurement took.
    pub seconds: f64,
}

impl Floor {
    /// The latency floor of one replicated write: the synced write with the
    /// cluster's writers on the disk plus two loopback round trips (client
    /// to leader and back, leader to follower and back), at p50 and p99.
    pub fn write_latency_us(&self) -> (f64, f64) {
        (
            self.synced_write_n.p50_us + 2.0 * self.loopback_round_trip.p50_us,
            self.synced_write_n.p99_us + 2.0 * self.loopback_round_trip.p99_us,
        )
    }

    /// The payload bandwidth floor of the cluster: the disk's synced write
    /// bandwidth (with the replicas' writers at once, in floors since
    /// 2026-12-07) shared by the replicas writing to it.
    pub fn write_bandwidth_share(&self) -> f64 {
        self.write_bytes_per_second / self.writers.max(1) as f64
    }

    pub fn save(&self, path: &Path) -> Result<(), FloorError> {
        if let Some(parent) = path.parent().filter(|parent| !parent.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(io_error("create", parent))?;
        }
        let text = serde_json::to_string_pretty(self).expect("a floor serializes");
        std::fs::write(path, text + "\n").map_err(io_error("write", path))
    }

    pub fn load(path: &Path) -> Result<Floor, FloorError> {
        let text = std::fs::read_to_string(path).map_err(io_error("read", path))?;
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|source| FloorError::Json { path: path.to_path_buf(), source })?;
        let found = value.get("format").and_then(|format| format.as_str()).unwrap_or("(none)");
        if found != FLOOR_FORMAT {
            return Err(FloorError::Format { path: path.to_path_buf(), found: found.to_string() });
        }
        serde_json::from_value(value).map_err(|source| FloorError::Json { path: path.to_path_buf(), source })
    }

    /// The floor as a table.
    pub fn table(&self) -> String {
        let latency = |name: String, floor: &LatencyFloor| {
            vec![
                name,
                format!("{:.0}/s", floor.ops_per_second),
                format_micros(floor.p50_us),
                format_micros(floor.p99_us),
            ]
        };
        let bandwidth =
            |name: &str, bytes: f64| vec![name.to_string(), format_bandwidth(bytes), "-".into(), "-".into()];
        let direct = if self.direct_io { "O_DIRECT|O_DSYNC" } else { "O_DSYNC, page cache" };
        let mut rows = vec![
            vec!["floor".to_string(), "rate".into(), "p50".into(), "p99".into()],
            latency(format!("synced 4 KiB write, 1 writer ({direct})"), &self.synced_write_1),
            latency(format!("synced 4 KiB write, {} writers", self.writers), &self.synced_write_n),
            bandwidth(
                &format!("synced sequential write, 1 MiB, {}", writers(self.write_bandwidth_writers)),
                self.write_bytes_per_second,
            ),
            bandwidth(if self.direct_io { "direct sequential read, 1 MiB" } else { "sequential read, 1 MiB" }, {
                self.read_bytes_per_second
            }),
            latency("loopback TCP round trip, 64 B".to_string(), &self.loopback_round_trip),
        ];
        let (p50, p99) = self.write_latency_us();
        rows.push(vec![
            format!("=> replicated write ({} writers + 2 round trips)", self.writers),
            "-".into(),
            format_micros(p50),
            format_micros(p99),
        ]);
        rows.push(vec![
            format!("=> write bandwidth per replica (/{})", self.writers),
            format_bandwidth(self.write_bandwidth_share()),
            "-".into(),
            "-".into(),
        ]);
        let mut out = render_table(&rows);
        if !self.file_system.is_empty() {
            out.push_str(&format!("file system: {}\n", self.file_system));
        }
        for note in &self.notes {
            out.push_str(&format!("note: {note}\n"));
        }
        out
    }
}

/// The bandwidth case's writers in floors that do not say: one.
fn one_writer() -> usize {
    1
}

/// `1 writer`, `3 writers`.
fn writers(count: usize) -> String {
    format!("{count} writer{}", if count == 1 { "" } else { "s" })
}

/// Bytes per second as `123.4 MB/s` (decimal megabytes, as disks are sold).
pub fn format_bandwidth(bytes_per_second: f64) -> String {
    format!("{:.1} MB/s", bytes_per_second / 1e6)
}

/// Measures the floor.
pub fn measure(options: &FloorOptions) -> Result<Floor, FloorError> {
    if options.writers == 0 {
        return Err(FloorError::NoWriters);
    }
    // NaN is refused too (it compares false with everything).
    if options.case_seconds.is_nan() || options.case_seconds < CASE_SECONDS_MIN {
        return Err(FloorError::CaseTooShort(options.case_seconds));
    }
    let began = Instant::now();
    // A given directory must exist: made here, a typo's directory measured
    // the file system above it, not the disk meant.
    if let Some(dir) = options.dir.as_ref().filter(|dir| !dir.is_dir()) {
        return Err(FloorError::NoDir(dir.clone()));
    }
    let parent = options.dir.clone().unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&parent).map_err(io_error("create", &parent))?;
    let dir =
        tempfile::Builder::new().prefix("bench-floor-").tempdir_in(&parent).map_err(io_error("create", &parent))?;
    let case = Duration::from_secs_f64(options.case_seconds);
    let mut notes = Vec::new();
    let file_system = describe_file_system(&parent, &mut notes);

    // One zero-filled file per writer, so that writes land in written
    // extents, as the WAL's segments are.
    let files: Vec<PathBuf> = (0..options.writers).map(|index| dir.path().join(format!("block-{index}.dat"))).collect();
    std::fs::File::create(&files[0]).map_err(io_error("create", &files[0]))?;
    let direct_io = probe_direct(&files[0])?;
    for path in &files {
        zero_fill(path, BLOCK_FILE_BYTES, direct_io)?;
    }
    if !direct_io {
        notes.push(format!(
            "direct I/O is refused here (the file system of {} does not take 4 KiB-aligned O_DIRECT): writes went \
             through the page cache with O_DSYNC, which costs more CPU and latency than the WAL's direct writes",
            parent.display()
        ));
    }
    let synced_write_1 = synced_writes(&files[..1], direct_io, case)?;
    let synced_write_n = synced_writes(&files, direct_io, case)?;
    let sequential_files: Vec<PathBuf> =
        (0..options.writers).map(|index| dir.path().join(format!("sequential-{index}.dat"))).collect();
    let (write_bytes_per_second, read_bytes_per_second) = sequential(&sequential_files, direct_io, case, &mut notes)?;
    let loopback_round_trip = loopback(case).map_err(FloorError::Loopback)?;
    let dir_path = dir.path().to_path_buf();
    drop(dir);
    Ok(Floor {
        format: FLOOR_FORMAT.to_string(),
        measured_at: rfc3339(SystemTime::now()),
        dir: dir_path,
        direct_io,
        file_system,
        notes,
        synced_write_1,
        synced_write_n,
        writers: options.writers,
        write_bytes_per_second,
        write_bandwidth_writers: options.writers,
        read_bytes_per_second,
        loopback_round_trip,
        seconds: began.elapsed().as_secs_f64(),
    })
}

/// The file system holding `dir` for [`Floor::file_system`]; what it is
/// worth a warning for goes into `notes`.
fn describe_file_system(dir: &Path, notes: &mut Vec<String>) -> String {
    let Some((mount, finding)) = wal::filesystem::check(dir) else { return String::new() };
    let mut text = format!("{} on {} (mounted at {})", mount.fs_type, mount.source, mount.mount_point.display());
    if let Some(finding) = finding {
        if finding == wal::filesystem::Finding::Ext4WithoutJournal {
            text.push_str(", no journal");
        }
        notes.push(finding.warning(dir, &mount));
    }
    text
}

/// A buffer of `length` bytes at a [`BLOCK_BYTES`]-aligned address, inside
/// `storage`, filled with `byte`.
fn aligned(storage: &mut Vec<u8>, length: usize, byte: u8) -> std::ops::Range<usize> {
    *storage = vec![byte; length + BLOCK_BYTES];
    let start = (BLOCK_BYTES - storage.as_ptr() as usize % BLOCK_BYTES) % BLOCK_BYTES;
    start..start + length
}

/// Writes `length` zeros (a multiple of [`CHUNK_BYTES`]) into a new file,
/// bypassing the page cache when `direct`, so that no write-back of the
/// fill runs into the timed cases; then syncs it.
fn zero_fill(path: &Path, length: u64, direct: bool) -> Result<(), FloorError> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(if direct { libc::O_DIRECT } else { 0 })
        .open(path)
        .map_err(io_error("create", path))?;
    let mut storage = Vec::new();
    let zeros = aligned(&mut storage, CHUNK_BYTES, 0);
    let mut written = 0;
    while written < length {
        file.write_all_at(&storage[zeros.clone()], written).map_err(io_error("zero-fill", path))?;
        written += CHUNK_BYTES as u64;
    }
    file.sync_all().map_err(io_error("sync", path))
}

/// Opens `path` with `flags`, plus `O_DIRECT` if `direct`.
fn open(path: &Path, write: bool, flags: libc::c_int, direct: bool) -> Result<std::fs::File, FloorError> {
    let flags = flags | if direct { libc::O_DIRECT } else { 0 };
    std::fs::OpenOptions::new().read(!write).write(write).custom_flags(flags).open(path).map_err(io_error("open", path))
}

/// Whether the file system takes 4 KiB-aligned direct I/O on `path`: the
/// open succeeds and `statx(STATX_DIOALIGN)`, where the kernel reports it,
/// asks for no larger alignment: the WAL's own rule
/// ([`wal::segment::direct_io_alignment_fits`]).
fn probe_direct(path: &Path) -> Result<bool, FloorError> {
    match std::fs::OpenOptions::new().write(true).custom_flags(libc::O_DIRECT).open(path) {
        Ok(file) => Ok(wal::segment::direct_io_alignment_fits(&file)),
        Err(error) if error.raw_os_error() == Some(libc::EINVAL) => Ok(false),
        Err(error) => Err(FloorError::Io { action: "open", path: path.to_path_buf(), source: error }),
    }
}

/// Runs `write` on one thread per file, all starting together: each thread
/// first opens its file with `open`, waits for the others, then writes.
/// A thread whose file did not open still reaches the barrier and only then
/// fails (one that returned before it left the others waiting for good).
fn at_once<F, T>(
    files: &[PathBuf],
    open: impl Fn(&Path) -> Result<F, FloorError> + Sync,
    write: impl Fn(&Path, F) -> Result<T, FloorError> + Sync,
) -> Vec<Result<T, FloorError>>
where
    T: Send,
{
    let barrier = std::sync::Barrier::new(files.len());
    std::thread::scope(|scope| {
        let handles: Vec<_> = files
            .iter()
            .map(|path| {
                let (barrier, open, write) = (&barrier, &open, &write);
                scope.spawn(move || {
                    let opened = open(path);
                    barrier.wait();
                    write(path, opened?)
                })
            })
            .collect();
        handles.into_iter().map(|handle| handle.join().expect("a floor writer does not panic")).collect()
    })
}

/// One thread per file, each writing synced 4 KiB blocks in sequence for
/// `duration`, all starting together.
fn synced_writes(files: &[PathBuf], direct: bool, duration: Duration) -> Result<LatencyFloor, FloorError> {
    let results = at_once(
        files,
        |path| open(path, true, libc::O_DSYNC, direct),
        |path, file| {
            let mut storage = Vec::new();
            let block = aligned(&mut storage, BLOCK_BYTES, 0x5a);
            let mut histogram = new_histogram();
            let mut offset = 0u64;
            let started = Instant::now();
            while started.elapsed() < CASE_WARMUP + duration {
                let begin = Instant::now();
                file.write_all_at(&storage[block.clone()], offset).map_err(io_error("write", path))?;
                if begin >= started + CASE_WARMUP {
                    histogram.saturating_record(begin.elapsed().as_nanos() as u64);
                }
                offset = (offset + BLOCK_BYTES as u64) % BLOCK_FILE_BYTES;
            }
            Ok(histogram)
        },
    );
    let mut merged = new_histogram();
    for histogram in results {
        merged.add(histogram?).expect("equal bounds");
    }
    Ok(LatencyFloor::of(&merged, duration))
}

/// Synced 1 MiB sequential writes by one thread per file, all at once, for
/// about `duration` (each at most [`SEQUENTIAL_BYTES_MAX`]), then the same
/// bytes read back by one reader: both in bytes per second.
fn sequential(
    files: &[PathBuf],
    direct: bool,
    duration: Duration,
    notes: &mut Vec<String>,
) -> Result<(f64, f64), FloorError> {
    let create = |path: &Path| {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_DSYNC | if direct { libc::O_DIRECT } else { 0 })
            .open(path)
            .map_err(io_error("create", path))?;
        // SAFETY: fallocate on a descriptor we own; failure is only reported.
        let allocated = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, SEQUENTIAL_BYTES_MAX as libc::off_t) } == 0;
        Ok((file, allocated))
    };
    let results = at_once(files, create, |path, (file, allocated): (std::fs::File, bool)| {
        let mut storage = Vec::new();
        let chunk = aligned(&mut storage, CHUNK_BYTES, 0xa5);
        let began = Instant::now();
        let mut written = 0u64;
        while written < SEQUENTIAL_BYTES_MAX && (began.elapsed() < duration || written == 0) {
            file.write_all_at(&storage[chunk.clone()], written).map_err(io_error("write", path))?;
            written += CHUNK_BYTES as u64;
        }
        Ok((written, allocated, began, Instant::now()))
    });
    let mut written = Vec::new();
    let (mut first_began, mut last_ended) = (None::<Instant>, None::<Instant>);
    for result in results {
        let (bytes, allocated, began, ended) = result?;
        let refused = "fallocate is refused here: the sequential writes also extend the files";
        if !allocated && !notes.iter().any(|note| note == refused) {
            notes.push(refused.into());
        }
        written.push(bytes);
        first_began = Some(first_began.map_or(began, |first| first.min(began)));
        last_ended = Some(last_ended.map_or(ended, |last| last.max(ended)));
    }
    // From the first writer's start to the last one's end: the bytes of all
    // over the time all took (opening and allocating the files not counted).
    let write_seconds = match (first_began, last_ended) {
        (Some(began), Some(ended)) => (ended - began).as_secs_f64(),
        _ => 0.0,
    };
    let write_rate = written.iter().sum::<u64>() as f64 / write_seconds.max(1e-9);

    let mut storage = Vec::new();
    let chunk = aligned(&mut storage, CHUNK_BYTES, 0);
    let started = Instant::now();
    let mut read = 0u64;
    for (path, &length) in files.iter().zip(&written) {
        let file = open(path, false, 0, direct)?;
        if !direct {
            // Without direct I/O the pages just written would be read from
            // memory: drop them first.
            // SAFETY: posix_fadvise only advises the kernel about our descriptor.
            unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        }
        let mut at = 0u64;
        while at < length {
            let got = file.read_at(&mut storage[chunk.clone()], at).map_err(io_error("read", path))?;
            if got == 0 {
                break;
            }
            at += got as u64;
        }
        read += at;
    }
    if !direct {
        notes.push("the read went through the page cache after POSIX_FADV_DONTNEED".into());
    }
    let read_rate = read as f64 / started.elapsed().as_secs_f64();
    Ok((write_rate, read_rate))
}

/// Round trips of a 64-byte message to an echo thread over 127.0.0.1.
fn loopback(duration: Duration) -> std::io::Result<LatencyFloor> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut stream, _) = listener.accept()?;
        stream.set_nodelay(true)?;
        let mut message = [0u8; ECHO_BYTES];
        loop {
            match stream.read_exact(&mut message) {
                Ok(()) => stream.write_all(&message)?,
                Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(error) => return Err(error),
            }
        }
    });
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    let mut message = [0x42u8; ECHO_BYTES];
    let mut histogram = new_histogram();
    let started = Instant::now();
    while started.elapsed() < duration {
        let begin = Instant::now();
        stream.write_all(&message)?;
        stream.read_exact(&mut message)?;
        histogram.saturating_record(begin.elapsed().as_nanos() as u64);
    }
    let elapsed = started.elapsed();
    drop(stream);
    echo.join().expect("the echo thread does not panic")?;
    Ok(LatencyFloor::of(&histogram, elapsed))
}

/// A floor of made-up figures for tests: three writers, synced writes
/// p50 130 us alone and 300 us with the three, 210 MB/s written, 15 us
/// loopback.
#[cfg(test)]
pub(crate) fn sample_floor() -> Floor {
    let latency = |p50_us, p99_us| LatencyFloor { count: 1, ops_per_second: 1.0, p50_us, p99_us, mean_us: p50_us };
    Floor {
        format: FLOOR_FORMAT.into(),
        measured_at: String::new(),
        dir: PathBuf::new(),
        direct_io: true,
        file_system: String::new(),
        notes: Vec::new(),
        synced_write_1: latency(130.0, 400.0),
        synced_write_n: latency(300.0, 900.0),
        writers: 3,
        write_bytes_per_second: 210e6,
        write_bandwidth_writers: 3,
        read_bytes_per_second: 600e6,
        loopback_round_trip: latency(15.0, 40.0),
        seconds: 3.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `--dir` that does not exist is refused, not made: made, a typo
    /// measured the file system above it, and the directory stayed.
    #[test]
    fn a_missing_directory_is_refused_and_not_made() {
        let missing = std::env::temp_dir().join(format!("bench-floor-missing-{}", std::process::id()));
        let options = FloorOptions { dir: Some(missing.clone()), writers: 1, case_seconds: 0.1 };
        assert!(matches!(measure(&options), Err(FloorError::NoDir(_))));
        assert!(!missing.exists(), "the directory was made");
    }

    /// A writer whose file cannot be opened fails its case: it used to
    /// return before the barrier the others wait at, and the floor hung.
    #[test]
    fn a_writer_that_cannot_open_its_file_fails_the_case_instead_of_hanging() {
        let dir = tempfile::tempdir().unwrap();
        let files = vec![dir.path().join("good.dat"), dir.path().join("missing").join("bad.dat")];
        std::fs::write(&files[0], vec![0u8; BLOCK_BYTES]).unwrap();
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let case = Duration::from_millis(50);
            let latency = synced_writes(&files, false, case).map(|_| ());
            let bandwidth = sequential(&files, false, case, &mut Vec::new()).map(|_| ());
            let _ = sender.send((latency, bandwidth));
        });
        let (latency, bandwidth) =
            receiver.recv_timeout(Duration::from_secs(30)).expect("the cases end (a writer left the others waiting)");
        for (case, result) in [("synced writes", latency), ("sequential", bandwidth)] {
            let error = result.expect_err(case).to_string();
            assert!(error.contains("bad.dat"), "{case}: {error}");
        }
    }

    #[test]
    fn a_case_too_short_to_measure_is_refused() {
        for case_seconds in [0.0, -1.0, 0.01, f64::NAN] {
            let options = FloorOptions { dir: None, writers: 1, case_seconds };
            let refused = measure(&options).expect_err("refused");
            assert!(matches!(refused, FloorError::CaseTooShort(_)), "{refused}");
            assert!(refused.to_string().contains("at least 0.05 s"), "{refused}");
        }
    }

    #[test]
    fn a_short_floor_measures_every_case_and_round_trips_as_json() {
        let options = FloorOptions { dir: None, writers: 2, case_seconds: 0.1 };
        let floor = measure(&options).unwrap();
        assert!(floor.synced_write_1.count > 0 && floor.synced_write_n.count > 0, "{floor:?}");
        assert!(floor.synced_write_1.p50_us > 0.0 && floor.synced_write_1.p50_us <= floor.synced_write_1.p99_us);
        assert!(floor.write_bytes_per_second > 0.0 && floor.read_bytes_per_second > 0.0, "{floor:?}");
        assert!(floor.loopback_round_trip.count > 10 && floor.loopback_round_trip.p50_us > 0.0, "{floor:?}");
        assert_eq!(floor.direct_io, floor.notes.iter().all(|note| !note.contains("direct I/O is refused")));
        assert!(!floor.dir.exists(), "the scratch directory is removed");
        let table = floor.table();
        assert!(table.contains("2 writers") && table.contains("MB/s") && table.contains("loopback"), "{table}");
        assert_eq!(floor.write_bandwidth_writers, 2, "the bandwidth case writes with the cluster's writers");
        assert!(table.contains("1 MiB, 2 writers"), "{table}");
        // The file system of the temporary directory, whatever it is here.
        assert!(floor.file_system.contains(" on ") && table.contains("file system: "), "{table}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("floor.json");
        floor.save(&path).unwrap();
        // serde_json reads a float back to within one unit in the last place.
        let loaded = Floor::load(&path).unwrap();
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-12 * a.abs().max(b.abs());
        assert_eq!((loaded.writers, loaded.direct_io, &loaded.notes), (floor.writers, floor.direct_io, &floor.notes));
        assert_eq!(loaded.file_system, floor.file_system);
        assert_eq!(loaded.synced_write_n.count, floor.synced_write_n.count);
        assert!(close(loaded.write_bytes_per_second, floor.write_bytes_per_second), "{loaded:?}");
        assert!(close(loaded.loopback_round_trip.p99_us, floor.loopback_round_trip.p99_us), "{loaded:?}");
        assert_eq!(loaded.table(), floor.table());
        // A floor recorded before the bandwidth case had several writers
        // says nothing of them: it had one.
        let mut old: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        old.as_object_mut().unwrap().remove("write_bandwidth_writers");
        std::fs::write(&path, old.to_string()).unwrap();
        let old = Floor::load(&path).unwrap();
        assert_eq!(old.write_bandwidth_writers, 1);
        assert!(old.table().contains("1 MiB, 1 writer "), "{}", old.table());
        std::fs::write(&path, r#"{"format": "other/1"}"#).unwrap();
        assert!(matches!(Floor::load(&path), Err(FloorError::Format { .. })));
    }

    #[test]
    fn the_write_floor_adds_two_round_trips_to_the_shared_disk_write() {
        let floor = sample_floor();
        assert_eq!(floor.write_latency_us(), (330.0, 980.0));
        assert_eq!(floor.write_bandwidth_share(), 70e6);
        assert!(matches!(measure(&FloorOptions { writers: 0, ..Default::default() }), Err(FloorError::NoWriters)));
    }
}
