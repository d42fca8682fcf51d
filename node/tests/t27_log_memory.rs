//! The in-memory log's payload budget (`--log-memory-bytes`) with real
//! processes: three nodes that never snapshot (so compaction frees
//! nothing) take [`LOG_MB_DEFAULT`] MiB of 64 KiB values over a few keys
//! (a tiny state, a large log). Each node's log holds at most its budget
//! of payloads (`node admin status`: `log_memory_bytes`), none of them
//! compacted its log, and each node's resident memory stays within the
//! budget plus [`SLACK`] of what it held idle. Without the budget
//! (`LOG_MEMORY_TEST_BUDGET=0`) every node holds the whole log: checked
//! on 2026-12-05, the status check fails (402,893,092 payload bytes held)
//! and the nodes held 387-412 MiB more than idle, against 26-66 MiB with
//! the 16 MiB budget.
//!
//! `LOG_MEMORY_TEST_MB` sets the log's size.

use bytes::Bytes;
use node::client_cmd::BlockingClient;
use node::kv::{KvOp, KvResponse};

mod common;
use common::SlotCluster;

const TOKEN: &str = "test-cluster-token";
const BASE_PORT: u16 = 27_740;
const CLUSTER_ID: u64 = 9;
/// The log written, in MiB, unless `LOG_MEMORY_TEST_MB` says otherwise.
const LOG_MB_DEFAULT: u64 = 384;
/// The node's budget, unless `LOG_MEMORY_TEST_BUDGET` says otherwise.
const BUDGET: u64 = 16 << 20;
const VALUE_BYTES: usize = 64 << 10;
const KEYS: u64 = 8;
/// What a node may hold beyond the budget besides its idle memory: the
/// leader's cache of encoded batches for followers (64 MiB), the WAL's
/// queue and receive buffers.
const SLACK: u64 = 128 << 20;

/// A field of `/proc/PID/status` in bytes (`VmRSS`).
fn proc_memory(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib << 10)
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|value| value.parse().ok()).unwrap_or(default)
}

#[test]
fn a_large_log_is_held_within_the_memory_budget() {
    let log_mb = env_u64("LOG_MEMORY_TEST_MB", LOG_MB_DEFAULT);
    let budget = env_u64("LOG_MEMORY_TEST_BUDGET", BUDGET);
    let mut cluster = SlotCluster::new("log-memory", BASE_PORT, CLUSTER_ID, TOKEN);
    let peers: Vec<String> = (1..=3).map(|slot| format!("{slot}=127.0.0.1:{}", cluster.peer_port(slot))).collect();
    let peers = peers.join(",");
    for slot in 1..=3u64 {
        let child = cluster
            .command(slot)
            .args(["--node-id", &slot.to_string(), "--cluster-id", &CLUSTER_ID.to_string()])
            .args(["--peers", &peers, "--log-memory-bytes", &budget.to_string()])
            // No snapshot at all: only the budget can free the log.
            .args(["--snapshot-entries", "1000000000", "--snapshot-log-bytes", "0"])
            .env("MALLOC_MMAP_THRESHOLD_", "131072")
            .spawn()
            .expect("start node");
        cluster.nodes.insert(slot, child);
    }
    let leader = cluster.leader_among(1..=3);
    let pids: Vec<(u64, u32)> = cluster.nodes.iter().map(|(&slot, child)| (slot, child.id())).collect();
    let idle: Vec<u64> = pids.iter().map(|&(_, pid)| proc_memory(pid, "VmRSS")).collect();

    let mut client = BlockingClient::new(&cluster.client(&[leader])).expect("a client");
    let mut session = client.open_session().expect("a session opens");
    let count = (log_mb << 20) / VALUE_BYTES as u64;
    for i in 0..count {
        let key = format!("key-{}", i % KEYS);
        let value: Vec<u8> = (0..VALUE_BYTES).map(|at| (at as u64 ^ i) as u8).collect();
        let op = KvOp::Put { key: Bytes::from(key), value: Bytes::from(value) };
        let answer = client.write(&mut session, op.encode()).expect("write answered");
        assert_eq!(answer, KvResponse::Written.encode());
    }
    let committed = cluster.status(leader).expect("leader status")["commit"].as_u64().unwrap();
    let statuses: Vec<serde_json::Value> = (1..=3)
        .map(|slot| {
            cluster.wait_status(slot, "applied everything", |status| {
                status["applied"].as_u64().is_some_and(|applied| applied >= committed)
            })
        })
        .collect();
    // Everything is printed before anything is asserted.
    let grown: Vec<u64> = pids.iter().zip(&idle).map(|(&(_, pid), idle)| proc_memory(pid, "VmRSS") - idle).collect();
    for (slot, status) in (1..=3).zip(&statuses) {
        eprintln!(
            "node {slot}: log from {} to {}, payloads from {}, {} payload bytes held; {} MiB more resident than idle",
            status["first_index"],
            status["last_index"],
            status["payloads_from"],
            status["log_memory_bytes"],
            grown[slot as usize - 1] >> 20
        );
    }
    for (slot, status) in (1..=3).zip(&statuses) {
        let held = status["log_memory_bytes"].as_u64().unwrap();
        assert_eq!(status["snapshot_index"], 0, "node {slot} took no snapshot");
        assert_eq!(status["first_index"], 1, "node {slot} compacted nothing");
        assert!(held <= budget, "node {slot} holds {held} payload bytes, over its budget of {budget}");
        // The dropped payloads left the process too (the key-value store
        // keeps the few live values, which it copies or slices).
        let grown = grown[slot as usize - 1];
        assert!(
            grown <= budget + SLACK,
            "node {slot} grew by {} MiB holding a {log_mb} MiB log (budget {} MiB, slack {} MiB)",
            grown >> 20,
            budget >> 20,
            SLACK >> 20
        );
    }
}
