//! `bench run --protocol resp` against a real `redis-server` that the test
//! starts on a free loopback port: an open loop whose request count is
//! known in advance, then a closed loop of reads and writes; each checked
//! through its result file and against the server's own command counts
//! (`INFO commandstats`).
//!
//! Needs Debian's `redis-server` (`.ci/run` installs it). Without it the
//! test fails, unless `BENCH_SKIP_REDIS=1` is set, when it says SKIPPED.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bench::resp_runner::{info_fields, resp_call};
use bench::result::ResultFile;
use net::resp::Reply;

/// A `redis-server` child, killed when dropped.
struct Redis {
    child: Child,
    addr: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|dir| Path::new(dir).join(name)).find(|path| path.is_file())
}

fn start_redis(binary: &Path) -> Redis {
    start_redis_with(binary, &[])
}

fn start_redis_with(binary: &Path, extra: &[&str]) -> Redis {
    let dir = tempfile::tempdir().unwrap();
    // A port that is free now; redis-server refuses to start if another
    // process takes it in between, which the wait below reports.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new(binary)
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .args(["--daemonize", "no", "--loglevel", "warning", "--dir"])
        .arg(dir.path())
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("start redis-server");
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut redis = Redis { child, addr, _dir: dir };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match resp_call(addr, &["PING"], Duration::from_millis(500)) {
            Ok(Reply::Simple(pong)) => {
                assert_eq!(&pong[..], b"PONG");
                return redis;
            }
            // Up, with a password.
            Ok(Reply::Error(message)) if message.starts_with(b"NOAUTH") => return redis,
            _ => {}
        }
        if let Ok(Some(status)) = redis.child.try_wait() {
            panic!("redis-server exited with {status} before answering on {addr}");
        }
        assert!(Instant::now() < deadline, "redis-server does not answer on {addr}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn bench_output(redis: &Redis, out: &Path, extra: &[&str]) -> std::process::Output {
    let bench = env!("CARGO_BIN_EXE_bench");
    Command::new(bench)
        .args(["run", "--protocol", "resp", "--addr", &redis.addr.to_string(), "--quiet", "--no-floor", "--out"])
        .arg(out)
        .args(["--keys", "1000", "--value-size", "100", "--connections", "2", "--node-pids", "auto"])
        .args(extra)
        .output()
        .expect("run the bench binary")
}

fn bench_run(redis: &Redis, out: &Path, extra: &[&str]) -> ResultFile {
    let output = bench_output(redis, out, extra);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "bench run failed ({}):\n{stdout}\n{stderr}", output.status);
    assert!(stdout.contains("p99.99") && stdout.contains("server CPU:"), "no table or CPU line:\n{stdout}\n{stderr}");
    ResultFile::load(out).expect("a readable result file")
}

/// `calls` of one command in `INFO commandstats` (`cmdstat_set:calls=500,...`).
fn calls(stats: &serde_json::Value, command: &str) -> u64 {
    let line = stats[format!("cmdstat_{command}")].as_str().unwrap_or("calls=0");
    line.split(',').find_map(|field| field.strip_prefix("calls=")).and_then(|n| n.parse().ok()).unwrap()
}

fn command_stats(redis: &Redis) -> serde_json::Value {
    info_fields(&resp_call(redis.addr, &["INFO", "commandstats"], Duration::from_secs(2)).unwrap()).unwrap()
}

/// `redis-server`, or the test's failure (or SKIPPED with
/// `BENCH_SKIP_REDIS=1`).
fn redis_binary() -> Option<PathBuf> {
    let Some(binary) = find_on_path("redis-server") else {
        if std::env::var("BENCH_SKIP_REDIS").is_ok_and(|value| value == "1") {
            eprintln!("SKIPPED (BENCH_SKIP_REDIS=1): redis-server is not installed; this test did not run");
            return None;
        }
        panic!(
            "redis-server is not on PATH: install it (Debian: apt-get install redis-server redis-tools; .ci/run \
             does), or set BENCH_SKIP_REDIS=1 to skip this test"
        );
    };
    Some(binary)
}

#[test]
fn bench_run_resp_against_redis_server() {
    let Some(binary) = redis_binary() else { return };
    let redis = start_redis(&binary);
    let dir = tempfile::tempdir().unwrap();

    // Open loop, 400 writes/s for 1 s after 250 ms of warm-up: exactly 400
    // requests fall in the measured window, and the server saw 500 SETs.
    let open =
        bench_run(&redis, &dir.path().join("open.json"), &["--rate", "400", "--duration", "1s", "--warmup", "250ms"]);
    assert_eq!(open.protocol.as_deref(), Some("resp"));
    assert!(open.errors.is_empty(), "{:?} {:?}", open.errors, open.error_examples);
    assert_eq!(open.operations["write"].count, 400);
    assert_eq!(open.total.count, 400);
    assert_eq!(open.operations["write"].latency_histogram().unwrap().len(), 400);
    assert_eq!(open.warmup_completed, 100);
    let stats = open.cluster_stats.as_ref().expect("INFO commandstats after the run");
    assert_eq!(calls(&stats[redis.addr.to_string()], "set"), 500, "{stats}");
    let status = open.cluster.as_ref().expect("INFO server before the run");
    assert_eq!(status[redis.addr.to_string()]["process_id"], redis.child.id().to_string(), "{status}");
    // The server's CPU, found by its port.
    let cpu = open.cpu.as_ref().expect("CPU accounting");
    assert_eq!(cpu.pids, vec![redis.child.id()]);
    assert_eq!(cpu.writes, 400);
    assert!(cpu.window_seconds > 0.9 && cpu.window_seconds < 1.5, "{cpu:?}");

    // Closed loop, half reads: every request sent was answered (none in
    // error), so the server's GET and SET counts are the run's.
    assert_eq!(resp_call(redis.addr, &["CONFIG", "RESETSTAT"], Duration::from_secs(2)), Ok(Reply::ok()));
    let closed = bench_run(
        &redis,
        &dir.path().join("closed.json"),
        &["--inflight", "8", "--read-fraction", "0.5", "--duration", "1s", "--warmup", "200ms"],
    );
    assert!(closed.errors.is_empty(), "{:?} {:?}", closed.errors, closed.error_examples);
    let (writes, reads) = (closed.operations["write"].count, closed.operations["read"].count);
    assert!(writes > 0 && reads > 0, "writes {writes}, reads {reads}");
    assert_eq!(closed.total.count, writes + reads);
    let stats = command_stats(&redis);
    assert_eq!(calls(&stats, "set") + calls(&stats, "get"), closed.total.count + closed.warmup_completed, "{stats}");
}

/// A server with a password (as the node's front door always has): the
/// bench sends its token with `AUTH` on every connection (it sent none, and
/// every request was refused `NOAUTH`), and a run in which no request
/// succeeded (a wrong token) fails instead of exiting 0 with an empty table.
#[test]
fn bench_run_resp_authenticates_and_a_run_without_a_success_fails() {
    let Some(binary) = redis_binary() else { return };
    let redis = start_redis_with(&binary, &["--requirepass", "bench-secret-token"]);
    let dir = tempfile::tempdir().unwrap();
    let run = bench_run(
        &redis,
        &dir.path().join("auth.json"),
        &["--token", "bench-secret-token", "--inflight", "4", "--duration", "500ms", "--warmup", "100ms"],
    );
    assert!(run.errors.is_empty(), "{:?} {:?}", run.errors, run.error_examples);
    assert!(run.total.count > 0);
    let status = run.cluster.as_ref().expect("INFO server before the run, authenticated");
    assert!(status[redis.addr.to_string()]["process_id"].is_string(), "{status}");

    let wrong = ["--token", "not-the-token", "--inflight", "4", "--duration", "300ms", "--warmup", "0s"];
    let output = bench_output(&redis, &dir.path().join("wrong.json"), &wrong);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "a run without one success exited 0:\n{stderr}");
    assert!(stderr.contains("no request succeeded") && stderr.contains("auth"), "{stderr}");
}

/// A run stopped by Ctrl-C keeps its result file and prints its table, but
/// exits 1 saying it was cut short: it exited 0, so a script took the
/// shorter run for the one it asked for.
#[test]
fn a_run_stopped_by_a_signal_keeps_its_result_and_fails() {
    let Some(binary) = redis_binary() else { return };
    let redis = start_redis(&binary);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("stopped.json");
    let child = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(["run", "--protocol", "resp", "--addr", &redis.addr.to_string(), "--quiet", "--no-floor", "--out"])
        .arg(&out)
        .args(["--inflight", "4", "--duration", "60s", "--warmup", "0s", "--no-status"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run the bench binary");
    std::thread::sleep(Duration::from_secs(2));
    // SAFETY: a plain kill(2) of our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let output = child.wait_with_output().expect("the bench's end");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "a run stopped early exited 0:\n{stderr}");
    assert!(stderr.contains("stopped early by a signal"), "{stderr}");
    let result = ResultFile::load(&out).expect("the shorter run's result file");
    assert!(result.measured_seconds < 30.0 && result.total.count > 0, "{}", result.measured_seconds);
}
