//! What the node's multi-process tests share: a client of local nodes and
//! the `admin status` query. Each test binary uses a part of it.
#![allow(dead_code)]

use std::time::Duration;

use bytes::Bytes;
use net::{RequestBody, ResponseStatus};
use node::client_cmd::call;
use node::config::{ClientConfig, Token};
use node::discovery::HostPort;

/// A client of the local nodes listening on these client ports (15 s
/// timeout, shard 0, no TLS).
pub fn local_client(ports: impl IntoIterator<Item = u16>, cluster_id: u64, token: &'static str) -> ClientConfig {
    ClientConfig {
        addrs: ports.into_iter().map(|port| HostPort { host: "127.0.0.1".into(), port }).collect(),
        cluster_id,
        token: Some(Token(Bytes::from_static(token.as_bytes()))),
        tls: None,
        timeout: Duration::from_secs(15),
        shard: 0,
    }
}

/// The `admin status` of the node `client` names, or `None` if it does not
/// answer within 2 s.
pub fn status(mut client: ClientConfig) -> Option<serde_json::Value> {
    client.timeout = Duration::from_secs(2);
    match call(&client, RequestBody::Status) {
        Ok(ResponseStatus::Ok(bytes)) => serde_json::from_slice(&bytes).ok(),
        _ => None,
    }
}

/// Local `node` processes by slot, each in its own data directory under a
/// scratch directory: slot `s` listens on `base + 2(s-1)` (peers) and the
/// port after it (clients). Killed and removed when dropped.
pub struct SlotCluster {
    pub dir: std::path::PathBuf,
    pub base_port: u16,
    pub nodes: std::collections::BTreeMap<u64, std::process::Child>,
    pub cluster_id: u64,
    pub token: &'static str,
}

impl SlotCluster {
    pub fn new(name: &str, base_port: u16, cluster_id: u64, token: &'static str) -> SlotCluster {
        let dir = std::env::temp_dir().join(format!("node-{name}-{}-{base_port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        SlotCluster { dir, base_port, nodes: Default::default(), cluster_id, token }
    }

    pub fn peer_port(&self, slot: u64) -> u16 {
        self.base_port + 2 * (slot as u16 - 1)
    }

    pub fn client_port(&self, slot: u64) -> u16 {
        self.peer_port(slot) + 1
    }

    pub fn data_dir(&self, slot: u64) -> std::path::PathBuf {
        self.dir.join(format!("slot-{slot}"))
    }

    /// `node serve` for `slot`: its addresses, data directory and token.
    pub fn command(&self, slot: u64) -> std::process::Command {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_node"));
        command
            .arg("serve")
            .args(["--peer-addr", &format!("127.0.0.1:{}", self.peer_port(slot))])
            .args(["--client-addr", &format!("127.0.0.1:{}", self.client_port(slot))])
            .args(["--data-dir", &self.data_dir(slot).display().to_string()])
            .args(["--log-level", "warn", "--pin-cores", "false"])
            .env("NODE_TOKEN", self.token)
            .stdout(std::process::Stdio::null());
        command
    }

    pub fn kill(&mut self, slot: u64) {
        if let Some(mut child) = self.nodes.remove(&slot) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn client(&self, slots: &[u64]) -> ClientConfig {
        local_client(slots.iter().map(|slot| self.client_port(*slot)), self.cluster_id, self.token)
    }

    pub fn status(&self, slot: u64) -> Option<serde_json::Value> {
        status(self.client(&[slot]))
    }

    /// Waits until the status of `slot` satisfies `done`; returns it.
    pub fn wait_status(&self, slot: u64, what: &str, done: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let mut last = None;
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.status(slot) {
                if done(&status) {
                    return status;
                }
                last = Some(status);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("{what}: not within 60 s; last status of slot {slot}: {last:?}");
    }

    /// The one of `slots` that reports itself leader (within 30 s).
    pub fn leader_among(&self, slots: impl Iterator<Item = u64> + Clone) -> u64 {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            for slot in slots.clone() {
                if self.status(slot).is_some_and(|status| status["role"] == "Leader") {
                    return slot;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("no leader within 30 s");
    }
}

impl Drop for SlotCluster {
    fn drop(&mut self) {
        let slots: Vec<u64> = self.nodes.keys().copied().collect();
        for slot in slots {
            self.kill(slot);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A field of `/proc/PID/status` in bytes (`VmRSS`, `VmHWM`); 0 if the
/// process is gone.
pub fn proc_memory(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib << 10)
}

/// The ids in a JSON array of numbers.
pub fn ids(value: &serde_json::Value) -> Vec<u64> {
    value.as_array().map(|list| list.iter().filter_map(|v| v.as_u64()).collect()).unwrap_or_default()
}

/// A plain HTTP/1.1 `GET`: the status code and the body.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10))).ok()?;
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes()).ok()?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).ok()?;
    let answer = String::from_utf8(answer).ok()?;
    let (head, body) = answer.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_string()))
}
