//! The Prometheus and health endpoints of real `node` processes: a `node
//! dev` cluster serves `/metrics` (parsed here: per-shard gauges, counters
//! and the write-stage histograms in seconds), `/livez` and `/readyz` on
//! every node; a node that cannot reach a quorum is live but not ready, and
//! says why. Ports 22300-22502.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use node::metrics::{parse_samples, sample};

const DEV_BASE_PORT: u16 = 22_300;
const DEV_TOKEN: &str = "dev-cluster-token";

/// `GET path` on 127.0.0.1:`port`: the status code and body, or `None`
/// when nothing answers.
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let code = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or_default();
    Some((code, body))
}

fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<String>) {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    while Instant::now() < deadline {
        match check() {
            None => return,
            Some(reason) => last = reason,
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{what} within {timeout:?}; last: {last}");
}

/// Kills the child (and, for `node dev`, SIGTERMs it first so it stops its
/// nodes) when the test ends, pass or fail.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        // SAFETY: a signal to a child this test started.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.0.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_dev_cluster_serves_metrics_livez_and_readyz_on_every_node() {
    let dir = std::env::temp_dir().join(format!("metrics-dev-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let _cluster = Running(
        Command::new(env!("CARGO_BIN_EXE_node"))
            .args(["dev", "--base-port", &DEV_BASE_PORT.to_string(), "--log-level", "warn"])
            .args(["--data-root", &dir.display().to_string()])
            .stdout(Stdio::null())
            .spawn()
            .expect("start node dev"),
    );
    let metrics_ports: Vec<u16> = (0..3).map(|n| DEV_BASE_PORT + 200 + n).collect();
    for &port in &metrics_ports {
        wait_for(&format!("/readyz 200 on port {port}"), Duration::from_secs(30), || match get(port, "/readyz") {
            Some((200, _)) => None,
            other => Some(format!("{other:?}")),
        });
        assert_eq!(get(port, "/livez").map(|(code, _)| code), Some(200));
    }
    for n in 0..20 {
        let status = Command::new(env!("CARGO_BIN_EXE_node"))
            .args(["kv", "--addr", &format!("127.0.0.1:{}", DEV_BASE_PORT + 1), "put", &format!("k{n}"), "v"])
            .env("NODE_TOKEN", DEV_TOKEN)
            .stdout(Stdio::null())
            .status()
            .expect("run node kv");
        assert!(status.success(), "node kv put k{n}");
    }
    let mut leaders = 0.0;
    let mut totals = 0.0;
    for &port in &metrics_ports {
        let (code, text) = get(port, "/metrics").expect("a metrics answer");
        assert_eq!(code, 200, "{text}");
        assert!(text.contains("# TYPE raft_node_write_stage_seconds histogram"), "{text}");
        assert!(text.ends_with("# EOF\n"), "OpenMetrics text ends with # EOF: {text}");
        let samples = parse_samples(&text);
        let is_leader = sample(&samples, "raft_node_is_leader{shard=\"0\"}").expect("is_leader");
        leaders += is_leader;
        let commit = sample(&samples, "raft_node_commit_index{shard=\"0\"}").expect("commit_index");
        let applied = sample(&samples, "raft_node_applied_index{shard=\"0\"}").expect("applied_index");
        assert!(commit >= 20.0 || is_leader == 0.0, "the leader committed the 20 writes: {commit}");
        assert!(applied <= commit || is_leader == 0.0, "applied {applied} > commit {commit}");
        assert!(sample(&samples, "raft_node_leader_id{shard=\"0\"}").is_some_and(|id| id >= 1.0));
        let count = sample(&samples, "raft_node_write_stage_seconds_count{shard=\"0\",stage=\"total\"}")
            .expect("the total stage's count");
        let inf = sample(&samples, "raft_node_write_stage_seconds_bucket{le=\"+Inf\",shard=\"0\",stage=\"total\"}")
            .expect("the +Inf bucket");
        assert_eq!(count, inf, "the +Inf bucket holds every observation");
        let sum = sample(&samples, "raft_node_write_stage_seconds_sum{shard=\"0\",stage=\"total\"}").unwrap();
        assert!(count == 0.0 || (sum > 0.0 && sum / count < 10.0), "mean write {sum}/{count} s");
        totals += count;
    }
    assert_eq!(leaders, 1.0, "exactly one node leads shard 0");
    assert!(totals >= 20.0, "the leader timed the 20 writes (plus session openings): {totals}");
    assert_eq!(get(metrics_ports[0], "/nope").map(|(code, _)| code), Some(404));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_node_without_a_quorum_is_live_but_not_ready() {
    let dir = std::env::temp_dir().join(format!("metrics-alone-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // Node 1 of three, started alone: it can never elect a leader.
    let _node = Running(
        Command::new(env!("CARGO_BIN_EXE_node"))
            .args(["serve", "--node-id", "1", "--peer-addr", "127.0.0.1:22400", "--client-addr", "127.0.0.1:22401"])
            .args(["--peers", "1=127.0.0.1:22400,2=127.0.0.1:22410,3=127.0.0.1:22420"])
            .args(["--metrics-addr", "127.0.0.1:22402", "--pin-cores", "false", "--log-level", "warn"])
            .args(["--data-dir", &dir.display().to_string()])
            .env("NODE_TOKEN", "alone")
            .stderr(Stdio::null())
            .spawn()
            .expect("start node"),
    );
    wait_for("/livez 200", Duration::from_secs(20), || match get(22_402, "/livez") {
        Some((200, _)) => None,
        other => Some(format!("{other:?}")),
    });
    std::thread::sleep(Duration::from_secs(2));
    let (code, body) = get(22_402, "/readyz").expect("a readyz answer");
    assert_eq!((code, body.trim()), (503, "shard 0 knows no leader"));
    let _ = std::fs::remove_dir_all(&dir);
}
