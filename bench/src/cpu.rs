//! CPU accounting: how much processor time the servers spent per committed
//! write, from `/proc/PID/stat` of their processes.
//!
//! Throughput alone hides cost: two configurations at the same writes/s may
//! burn very different CPU, and on a shared machine the cheaper one wins
//! once the load grows. The bench samples the user and system time of
//! every server process (all threads, `utime` + `stime`) when the measured
//! window starts and when it ends, and divides the difference by the writes
//! answered in the window.
//!
//! Which processes: those the bench started itself (`sweep`, `demo`), or
//! for `bench run` against servers it did not start, `--node-pids` with the
//! process ids, or `--node-pids auto`, which finds the processes listening
//! on the `--addr` ports through `/proc/net/tcp` and `/proc/PID/fd` (only
//! for servers on this machine, and only processes this user may inspect).
//!
//! Memory too: at the window's end the sampler reads each process's
//! resident set (`VmRSS`) and its peak since it started (`VmHWM`) from
//! `/proc/PID/status`, so a configuration that holds gigabytes more shows
//! beside its writes/s (a 400 MB state held 5-7 GB per node with two
//! shards before the in-memory log had a budget, and nothing in a result
//! file said so).
//!
//! Resolution: the kernel counts in clock ticks (`sysconf(_SC_CLK_TCK)`,
//! usually 100 per second), so a window should hold at least a few seconds
//! of server CPU for the figure to be precise.

use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Why CPU time could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CpuError {
    #[error("cannot read /proc/{pid}/stat: {source} (has the process exited?)")]
    Read { pid: u32, source: std::io::Error },
    #[error("/proc/{pid}/stat has an unexpected layout")]
    Layout { pid: u32 },
    #[error("no process on this machine listens on port {port} (give --node-pids instead)")]
    NoListener { port: u16 },
    #[error("cannot look up listening sockets: {0}")]
    Proc(std::io::Error),
}

/// User and system CPU time of a set of processes, in clock ticks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuTicks {
    pub user: u64,
    pub system: u64,
}

/// The kernel's clock ticks per second.
pub fn ticks_per_second() -> u64 {
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as u64
    } else {
        100
    }
}

/// The CPU time `pid` has used so far, all its threads (live and exited).
pub fn process_ticks(pid: u32) -> Result<CpuTicks, CpuError> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|source| CpuError::Read { pid, source })?;
    parse_stat(&text).ok_or(CpuError::Layout { pid })
}

/// `utime` and `stime` (fields 14 and 15) of a `/proc/PID/stat` line. The
/// command name (field 2) is in parentheses and may hold spaces and
/// parentheses itself, so fields are counted from the last `)`.
pub fn parse_stat(text: &str) -> Option<CpuTicks> {
    let after_name = &text[text.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace();
    // After the name: state (3), ppid (4), ... utime is field 14, the 12th here.
    let user = fields.nth(11)?.parse().ok()?;
    let system = fields.next()?.parse().ok()?;
    Some(CpuTicks { user, system })
}

/// `VmRSS` and `VmHWM` of a `/proc/PID/status` text, in bytes.
pub fn parse_status_memory(text: &str) -> Option<(u64, u64)> {
    let field = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|rest| rest.trim().strip_suffix("kB")?.trim().parse::<u64>().ok())
            .map(|kib| kib << 10)
    };
    Some((field("VmRSS")?, field("VmHWM")?))
}

/// The largest resident set and the largest peak resident set among
/// `pids`, in bytes; `None` if any cannot be read.
pub fn largest_memory(pids: &[u32]) -> Option<(u64, u64)> {
    let mut largest = (0, 0);
    for &pid in pids {
        let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let (resident, peak) = parse_status_memory(&text)?;
        largest = (largest.0.max(resident), largest.1.max(peak));
    }
    Some(largest)
}

/// The summed CPU time of `pids`.
pub fn total_ticks(pids: &[u32]) -> Result<CpuTicks, CpuError> {
    let mut total = CpuTicks::default();
    for &pid in pids {
        let ticks = process_ticks(pid)?;
        total.user += ticks.user;
        total.system += ticks.system;
    }
    Ok(total)
}

/// How long after being called the runners start their load
/// (`runner::run`, `resp_runner::run_resp`).
const RUN_START_DELAY: Duration = Duration::from_millis(20);

/// What a result file records about the servers' CPU.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CpuAccounting {
    /// The processes measured.
    pub pids: Vec<u32>,
    /// How they were found: `local cluster`, `--node-pids` or `auto (ports)`.
    pub source: String,
    /// The sampled window: the measured window, give or take a scheduler
    /// tick.
    pub window_seconds: f64,
    pub user_seconds: f64,
    pub system_seconds: f64,
    /// Writes answered in the window.
    pub writes: u64,
    /// `(user + system) / writes`, in microseconds; `None` without writes.
    pub cpu_us_per_write: Option<f64>,
    /// Cores busy on average: `(user + system) / window`.
    pub cores_busy: f64,
    /// The largest resident set of the processes at the window's end, in
    /// bytes (absent in files written before it was recorded).
    #[serde(default)]
    pub resident_bytes_max: Option<u64>,
    /// The largest peak resident set (`VmHWM`, since each process started).
    #[serde(default)]
    pub peak_resident_bytes_max: Option<u64>,
}

impl CpuAccounting {
    /// The accounting of `ticks` used over `window` for `writes` writes.
    pub fn new(pids: Vec<u32>, source: &str, window: Duration, ticks: CpuTicks, writes: u64) -> CpuAccounting {
        let per_second = ticks_per_second() as f64;
        let user_seconds = ticks.user as f64 / per_second;
        let system_seconds = ticks.system as f64 / per_second;
        let total = user_seconds + system_seconds;
        CpuAccounting {
            pids,
            source: source.to_string(),
            window_seconds: window.as_secs_f64(),
            user_seconds,
            system_seconds,
            writes,
            cpu_us_per_write: (writes > 0).then(|| total * 1e6 / writes as f64),
            cores_busy: total / window.as_secs_f64().max(1e-9),
            resident_bytes_max: None,
            peak_resident_bytes_max: None,
        }
    }
}

/// What the sampler measured: the CPU time used, the window's length, and
/// the largest resident set and peak at its end.
type Sampled = (CpuTicks, Duration, Option<(u64, u64)>);

/// Samples the CPU of `pids` on its own thread at the two ends of a
/// window: `window_start`, and `window_end` or a stop signal, whichever
/// comes first. Join it after the run.
pub struct WindowSampler {
    handle: std::thread::JoinHandle<Result<Sampled, CpuError>>,
    pids: Vec<u32>,
    source: String,
}

impl WindowSampler {
    pub fn start(pids: Vec<u32>, source: &str, window_start: Instant, window_end: Instant) -> WindowSampler {
        let sampled = pids.clone();
        let handle = std::thread::spawn(move || {
            sleep_until(window_start, || false);
            let before = total_ticks(&sampled)?;
            let started = Instant::now();
            sleep_until(window_end, crate::signal::stop_requested);
            let after = total_ticks(&sampled)?;
            let memory = largest_memory(&sampled);
            let used = CpuTicks {
                user: after.user.saturating_sub(before.user),
                system: after.system.saturating_sub(before.system),
            };
            Ok((used, started.elapsed(), memory))
        });
        WindowSampler { handle, pids, source: source.to_string() }
    }

    /// A sampler for a run with `settings` that starts now: the window is
    /// the run's measured window as the runner schedules it (20 ms after the
    /// call, then the warm-up), which may lead the real one by the few
    /// milliseconds the runner's status request takes.
    pub fn for_run(pids: Vec<u32>, source: &str, settings: &crate::runner::RunSettings) -> WindowSampler {
        let start = Instant::now() + RUN_START_DELAY + Duration::from_secs_f64(settings.warmup_s);
        WindowSampler::start(pids, source, start, start + Duration::from_secs_f64(settings.duration_s))
    }

    /// The accounting for `writes` writes answered in the window.
    pub fn finish(self, writes: u64) -> Result<CpuAccounting, CpuError> {
        let (ticks, window, memory) = self.handle.join().expect("the sampler does not panic")?;
        let mut accounting = CpuAccounting::new(self.pids, &self.source, window, ticks, writes);
        accounting.resident_bytes_max = memory.map(|(resident, _)| resident);
        accounting.peak_resident_bytes_max = memory.map(|(_, peak)| peak);
        Ok(accounting)
    }
}

fn sleep_until(deadline: Instant, stop: impl Fn() -> bool) {
    while !stop() {
        let now = Instant::now();
        if now >= deadline {
            return;
        }
        std::thread::sleep((deadline - now).min(Duration::from_millis(20)));
    }
}

/// The processes listening on TCP `port` on this machine (IPv4 or IPv6),
/// from `/proc/net/tcp*` (socket inodes in state LISTEN) and the
/// `socket:[INODE]` links in `/proc/PID/fd`.
pub fn pids_listening_on(port: u16) -> Result<Vec<u32>, CpuError> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else { continue };
        inodes.extend(listening_inodes(&text, port));
    }
    if inodes.is_empty() {
        return Err(CpuError::NoListener { port });
    }
    let targets: Vec<String> = inodes.iter().map(|inode| format!("socket:[{inode}]")).collect();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").map_err(CpuError::Proc)?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else { continue };
        if holds_socket(&entry.path().join("fd"), &targets) {
            pids.push(pid);
        }
    }
    if pids.is_empty() {
        return Err(CpuError::NoListener { port });
    }
    pids.sort_unstable();
    Ok(pids)
}

/// The inodes of sockets listening on `port` in a `/proc/net/tcp` table:
/// `sl local_address rem_address st ... inode`, addresses as `HEX:PORTHEX`,
/// state `0A` = LISTEN.
pub fn listening_inodes(table: &str, port: u16) -> Vec<u64> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = u16::from_str_radix(fields.get(1)?.rsplit(':').next()?, 16).ok()?;
            (local_port == port && *fields.get(3)? == "0A").then(|| fields.get(9)?.parse().ok())?
        })
        .collect()
}

fn holds_socket(fd_dir: &Path, targets: &[String]) -> bool {
    let Ok(entries) = std::fs::read_dir(fd_dir) else { return false };
    entries.flatten().any(|entry| {
        std::fs::read_link(entry.path())
            .ok()
            .and_then(|link| link.to_str().map(|link| targets.iter().any(|target| target == link)))
            .unwrap_or(false)
    })
}

/// The processes serving `addrs` (`host:port`): one lookup per port, each
/// process once.
pub fn pids_for_addrs(addrs: &[String]) -> Result<Vec<u32>, CpuError> {
    let mut pids = Vec::new();
    for addr in addrs {
        let port = addr.rsplit(':').next().and_then(|port| port.parse().ok()).unwrap_or(0);
        for pid in pids_listening_on(port)? {
            if !pids.contains(&pid) {
                pids.push(pid);
            }
        }
    }
    Ok(pids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_name() {
        // A command name with spaces and a parenthesis, as a thread may set.
        let line = "4242 (node (core 1)) S 1 4242 4242 0 -1 4194560 500 0 0 0 1234 567 0 0 20 0 9 0 100 0 0";
        assert_eq!(parse_stat(line), Some(CpuTicks { user: 1234, system: 567 }));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn memory_fields_are_read_in_bytes() {
        let status = "Name:\tnode\nVmHWM:\t  204800 kB\nVmRSS:\t  102400 kB\nThreads:\t9\n";
        assert_eq!(parse_status_memory(status), Some((100 << 20, 200 << 20)));
        assert_eq!(parse_status_memory("Name:\tnode\nVmRSS:\t1 kB\n"), None, "no peak");
        // This process: resident, and its peak at least that.
        let (resident, peak) = largest_memory(&[std::process::id()]).expect("readable");
        assert!(resident > 0 && peak >= resident);
        assert_eq!(largest_memory(&[u32::MAX]), None);
    }

    #[test]
    fn this_process_uses_cpu() {
        let pid = std::process::id();
        let before = total_ticks(&[pid]).unwrap();
        let started = Instant::now();
        let mut spin = 0u64;
        while started.elapsed() < Duration::from_millis(200) {
            spin = spin.wrapping_add(std::hint::black_box(1));
        }
        let after = total_ticks(&[pid]).unwrap();
        assert!(after.user + after.system > before.user + before.system, "200 ms of spinning counted no tick");
        assert!(matches!(process_ticks(u32::MAX), Err(CpuError::Read { .. })));
    }

    #[test]
    fn listening_sockets_are_found_by_port() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   \
                     0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 98765 1\n   \
                     1: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 11111 1\n";
        assert_eq!(listening_inodes(table, 8080), vec![98765]);
        assert!(listening_inodes(table, 8081).is_empty());
        // And on the real tables: a listener of this process is found.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert_eq!(pids_listening_on(port).unwrap(), vec![std::process::id()]);
    }

    #[test]
    fn accounting_divides_by_writes() {
        let ticks = CpuTicks { user: 3 * ticks_per_second(), system: ticks_per_second() };
        let accounting = CpuAccounting::new(vec![1], "test", Duration::from_secs(2), ticks, 40_000);
        assert_eq!(accounting.cpu_us_per_write, Some(100.0));
        assert_eq!(accounting.cores_busy, 2.0);
        assert_eq!(CpuAccounting::new(vec![1], "test", Duration::from_secs(1), ticks, 0).cpu_us_per_write, None);
    }
}
