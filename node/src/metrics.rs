//! Prometheus metrics and health endpoints (`node serve --metrics-addr`).
//!
//! `GET /metrics` answers the OpenMetrics text format (prometheus-client's
//! encoder) with, per shard (label `shard`): role, term, commit and applied
//! indexes, the known leader, leader changes, writes and reads served,
//! refusals, snapshots, sessions, and the per-stage write latencies and
//! read latency as histograms in seconds. `GET /livez` answers 200 while
//! the process runs; `GET /readyz` answers 200 once every shard knows a
//! leader and has applied what it had committed when the endpoint started
//! (503 with the reason otherwise), for load balancers and Kubernetes
//! probes.
//!
//! Why a plain thread with blocking std sockets, not a task on a core: a
//! scrape comes every few seconds, so the server needs no concurrency, and
//! keeping HTTP off the cores' io_uring runtimes means a slow or hostile
//! scraper can never delay a shard (the thread runs unpinned, at a lower
//! priority). It reads the shards as a client of the node would, through
//! the in-process [`NodeHandle`] (a status and a stats request per shard),
//! so the drivers carry no metrics code beyond the counters they keep
//! anyway. One connection is served at a time, with short timeouts and a
//! bounded request size.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use serde_json::Value;
use tokio::runtime::Runtime;

use crate::runtime::NodeHandle;
use crate::stats::BUCKET_BOUNDS_MICROS;
use net::{AdminRequest, ClientRequest, RequestBody, ResponseStatus};

/// How long a scrape waits for each shard's answer.
const SHARD_ANSWER_WAIT: Duration = Duration::from_secs(2);
/// Reading a request and writing an answer give up after this.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest request head read (a scrape's is a few hundred bytes).
const REQUEST_BYTES_MAX: usize = 8 << 10;

/// What one shard said for a scrape.
#[derive(Debug)]
struct ShardView {
    shard: u32,
    status: Option<Value>,
    stats: Option<Value>,
}

/// Starts the endpoint on `addr` (already bound by [`bind`]) in a thread of
/// its own; it runs until the process ends.
pub fn spawn(listener: TcpListener, handle: NodeHandle) -> std::io::Result<()> {
    std::thread::Builder::new().name("metrics".into()).spawn(move || {
        crate::runtime::threads::unpin_thread();
        crate::runtime::threads::lower_thread_priority();
        // Readiness is judged against what each shard had committed when
        // the endpoint started (the node starts it right after its cores).
        // Waits for the shards' answers, with a deadline.
        let waiter = match tokio::runtime::Builder::new_current_thread().enable_time().build() {
            Ok(runtime) => runtime,
            Err(error) => {
                tracing::error!(%error, "metrics: cannot build the runtime that waits for answers; not serving");
                return;
            }
        };
        let mut start_commits: Vec<Option<u64>> = (0..handle.shards())
            .map(|shard| ask(&waiter, &handle, shard, RequestBody::Status).and_then(|status| status["commit"].as_u64()))
            .collect();
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            if let Err(error) = serve_one(stream, &waiter, &handle, &mut start_commits) {
                tracing::debug!(%error, "metrics request failed");
            }
        }
    })?;
    Ok(())
}

/// Binds the endpoint's address, so that a taken port fails the start.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
}

fn serve_one(
    mut stream: TcpStream,
    waiter: &Runtime,
    handle: &NodeHandle,
    start_commits: &mut [Option<u64>],
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut head = Vec::new();
    let mut buffer = [0u8; 1024];
    while !head.windows(4).any(|window| window == b"\r\n\r\n") {
        let read = stream.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        head.extend_from_slice(&buffer[..read]);
        if head.len() > REQUEST_BYTES_MAX {
            return respond(&mut stream, 431, "text/plain", "request header too large\n");
        }
    }
    let line = String::from_utf8_lossy(&head);
    let mut parts = line.lines().next().unwrap_or_default().split_whitespace();
    let (method, path) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    if method != "GET" {
        return respond(&mut stream, 405, "text/plain", "only GET\n");
    }
    match path.split('?').next().unwrap_or_default() {
        "/metrics" => {
            let views = gather(waiter, handle);
            let body = encode(handle.node_id(), views);
            respond(&mut stream, 200, "application/openmetrics-text; version=1.0.0; charset=utf-8", &body)
        }
        "/livez" => respond(&mut stream, 200, "text/plain", "ok\n"),
        "/readyz" => {
            let views = gather(waiter, handle);
            match readiness(&views, start_commits) {
                Ok(()) => respond(&mut stream, 200, "text/plain", "ready\n"),
                Err(reason) => respond(&mut stream, 503, "text/plain", &format!("{reason}\n")),
            }
        }
        _ => respond(&mut stream, 404, "text/plain", "not found: try /metrics, /livez or /readyz\n"),
    }
}

fn respond(stream: &mut TcpStream, code: u16, content_type: &str, body: &str) -> std::io::Result<()> {
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    stream.flush()
}

/// One request to one shard through the node's in-process path; the JSON
/// answer, or `None` if the shard did not answer in time.
fn ask(waiter: &Runtime, handle: &NodeHandle, shard: u32, body: RequestBody) -> Option<Value> {
    let answer = handle.call(shard, ClientRequest::plain(0, body));
    match waiter.block_on(async { tokio::time::timeout(SHARD_ANSWER_WAIT, answer).await }) {
        Ok(Ok(ResponseStatus::Ok(bytes))) => serde_json::from_slice(&bytes).ok(),
        _ => None,
    }
}

fn gather(waiter: &Runtime, handle: &NodeHandle) -> Vec<ShardView> {
    (0..handle.shards())
        .map(|shard| ShardView {
            shard,
            status: ask(waiter, handle, shard, RequestBody::Status),
            stats: ask(waiter, handle, shard, RequestBody::Admin(AdminRequest::Stats))
                .map(|mut body| body["stats"].take()),
        })
        .collect()
}

/// Ready: every shard answered, knows a leader, and applied at least what it
/// had committed when the endpoint started (a shard that did not answer
/// then is judged by its first answer).
fn readiness(views: &[ShardView], start_commits: &mut [Option<u64>]) -> Result<(), String> {
    for view in views {
        let Some(status) = &view.status else { return Err(format!("shard {} does not answer", view.shard)) };
        let commit = status["commit"].as_u64().unwrap_or(0);
        let start = *start_commits[view.shard as usize].get_or_insert(commit);
        if status["leader"].as_u64().unwrap_or(0) == 0 {
            return Err(format!("shard {} knows no leader", view.shard));
        }
        let applied = status["applied"].as_u64().unwrap_or(0);
        if applied < start {
            return Err(format!("shard {} applied {applied} of the {start} committed at start", view.shard));
        }
    }
    Ok(())
}

/// The stages of a write, in the order they happen, and the read, as
/// `ShardStats` names them.
const STAGES: [&str; 5] = ["queued", "wal_write_sync", "replication", "apply", "total"];

/// The scrape's shards, encoded by prometheus-client when a registry asks.
#[derive(Debug)]
struct Scrape {
    node: u64,
    views: Vec<ShardView>,
}

fn encode(node: u64, views: Vec<ShardView>) -> String {
    let mut registry = Registry::with_prefix("raft_node");
    registry.register_collector(Box::new(Scrape { node, views }));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry).expect("writing to a String cannot fail");
    out
}

impl Scrape {
    /// A gauge or counter family with one sample per shard that answered,
    /// read from the shard's status (`from_status`) or stats document.
    fn per_shard(
        &self,
        encoder: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        metric_type: MetricType,
        value: impl Fn(&Value, &Value) -> Option<u64>,
    ) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(name, help, None, metric_type)?;
        for view in &self.views {
            let (Some(status), Some(stats)) = (&view.status, &view.stats) else { continue };
            let Some(value) = value(status, stats) else { continue };
            let labels = [("shard", view.shard.to_string())];
            let mut sample = family.encode_family(&labels)?;
            match metric_type {
                MetricType::Counter => sample.encode_counter::<NoLabelSet, _, u64>(&value, None)?,
                _ => sample.encode_gauge(&(value as i64))?,
            }
        }
        Ok(())
    }

    fn histogram(
        &self,
        encoder: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        stages: &[(&str, &str)],
    ) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(name, help, Some(&Unit::Seconds), MetricType::Histogram)?;
        for view in &self.views {
            let Some(stats) = &view.stats else { continue };
            for &(stage, label) in stages {
                let summary = &stats["stages"][stage];
                let count = summary["count"].as_u64().unwrap_or(0);
                let sum = summary["sum_us"].as_u64().unwrap_or(0) as f64 / 1e6;
                let cumulative: Vec<u64> = summary["buckets"]
                    .as_array()
                    .map(|values| values.iter().map(|v| v.as_u64().unwrap_or(0)).collect())
                    .unwrap_or_default();
                if cumulative.len() != BUCKET_BOUNDS_MICROS.len() {
                    continue;
                }
                // prometheus-client takes per-bucket counts and accumulates
                // them itself; the last bucket (+Inf) holds the rest.
                let mut buckets = Vec::with_capacity(cumulative.len() + 1);
                let mut below = 0;
                for (&bound, &total) in BUCKET_BOUNDS_MICROS.iter().zip(&cumulative) {
                    buckets.push((bound as f64 / 1e6, total.saturating_sub(below)));
                    below = total.max(below);
                }
                buckets.push((f64::INFINITY, count.saturating_sub(below)));
                let mut labels = vec![("shard", view.shard.to_string())];
                if !label.is_empty() {
                    labels.push(("stage", label.to_string()));
                }
                family.encode_family(&labels)?.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
            }
        }
        Ok(())
    }
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let node = self.node;
        let mut info = encoder.encode_descriptor("node_id", "This node's id.", None, MetricType::Gauge)?;
        info.encode_gauge(&(node as i64))?;
        let status_u64 = |key: &'static str| move |status: &Value, _: &Value| status[key].as_u64();
        let stats_u64 = |key: &'static str| move |_: &Value, stats: &Value| stats[key].as_u64();
        let gauge = MetricType::Gauge;
        let counter = MetricType::Counter;
        self.per_shard(&mut encoder, "is_leader", "1 if this replica leads the shard.", gauge, |status, _| {
            Some(u64::from(status["role"] == "Leader"))
        })?;
        self.per_shard(&mut encoder, "term", "The replica's current term.", gauge, status_u64("term"))?;
        self.per_shard(
            &mut encoder,
            "commit_index",
            "The highest log index known committed.",
            gauge,
            status_u64("commit"),
        )?;
        self.per_shard(&mut encoder, "applied_index", "The highest log index applied.", gauge, status_u64("applied"))?;
        self.per_shard(
            &mut encoder,
            "leader_id",
            "The leader this replica knows (0: none).",
            gauge,
            status_u64("leader"),
        )?;
        self.per_shard(&mut encoder, "sessions", "Client sessions in the replicated table.", gauge, |status, _| {
            status["sessions"]["count"].as_u64()
        })?;
        self.per_shard(
            &mut encoder,
            "pending_writes",
            "Writes waiting to be applied here.",
            gauge,
            status_u64("pending_writes"),
        )?;
        for (name, key, help) in [
            ("leader_changes", "leader_changes", "Times this replica learned of a new leader."),
            ("writes_applied", "writes_applied", "Client writes applied here that this replica answered."),
            ("reads_served", "reads_served", "Reads answered by this replica."),
            ("not_leader", "not_leader", "Requests refused because this replica does not lead."),
            ("busy", "busy", "Requests refused as Busy (flow control)."),
            ("writes_forwarded", "writes_forwarded", "Session writes this follower forwarded to the leader."),
            ("snapshots_taken", "snapshots_taken", "Local snapshots stored."),
            ("snapshots_installed", "snapshots_installed", "Snapshots received from a leader and installed."),
        ] {
            self.per_shard(&mut encoder, name, help, counter, stats_u64(key))?;
        }
        let stages: Vec<(&str, &str)> = STAGES.iter().map(|&stage| (stage, stage)).collect();
        self.histogram(
            &mut encoder,
            "write_stage",
            "Latency of each stage of a write on the leader (see node/src/stats.rs): queued, wal_write_sync, \
             replication, apply, total.",
            &stages,
        )?;
        self.histogram(&mut encoder, "read", "Latency of a read, arrival to answer.", &[("read", "")])?;
        Ok(())
    }
}

/// A line-by-line reading of the text format, enough for tests and tools:
/// `(name with labels, value)` of every sample.
pub fn parse_samples(text: &str) -> Vec<(String, f64)> {
    let mut samples = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        if let Some((name, value)) = line.rsplit_once(' ') {
            if let Ok(value) = value.parse::<f64>() {
                samples.push((name.to_string(), value));
            }
        }
    }
    samples
}

/// The value of sample `name` (with its labels, exactly as written).
pub fn sample(samples: &[(String, f64)], name: &str) -> Option<f64> {
    samples.iter().find(|(sample, _)| sample == name).map(|&(_, value)| value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn view(shard: u32, leader: u64, commit: u64, applied: u64) -> ShardView {
        let stage =
            json!({ "count": 3, "sum_us": 600, "buckets": [0, 0, 0, 0, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3] });
        ShardView {
            shard,
            status: Some(json!({ "role": "Leader", "term": 4, "commit": commit, "applied": applied, "leader": leader,
                "sessions": { "count": 2 }, "pending_writes": 0 })),
            stats: Some(json!({ "stages": { "queued": stage, "wal_write_sync": stage, "replication": stage,
                "apply": stage, "total": stage, "read": stage }, "writes_applied": 9, "leader_changes": 1 })),
        }
    }

    #[test]
    fn scrape_encodes_gauges_counters_and_histograms_in_seconds() {
        let text = encode(2, vec![view(0, 2, 10, 10), view(1, 3, 5, 5)]);
        let samples = parse_samples(&text);
        assert_eq!(sample(&samples, "raft_node_node_id"), Some(2.0), "{text}");
        assert_eq!(sample(&samples, "raft_node_commit_index{shard=\"1\"}"), Some(5.0), "{text}");
        assert_eq!(sample(&samples, "raft_node_writes_applied_total{shard=\"0\"}"), Some(9.0), "{text}");
        // 2 of 3 writes took at most 500 us; all 3 at most 2.5 ms.
        let bucket = |le: &str| {
            sample(
                &samples,
                &format!("raft_node_write_stage_seconds_bucket{{le=\"{le}\",shard=\"0\",stage=\"total\"}}"),
            )
        };
        assert_eq!(bucket("0.0005"), Some(2.0), "{text}");
        assert_eq!(bucket("0.0025"), Some(3.0), "{text}");
        assert_eq!(sample(&samples, "raft_node_write_stage_seconds_count{shard=\"0\",stage=\"total\"}"), Some(3.0));
        assert_eq!(sample(&samples, "raft_node_write_stage_seconds_sum{shard=\"0\",stage=\"total\"}"), Some(0.0006));
        assert!(text.contains("# TYPE raft_node_write_stage_seconds histogram"), "{text}");
    }

    #[test]
    fn ready_needs_a_leader_and_what_was_committed_at_start_applied() {
        let mut start = vec![Some(10), None];
        assert!(readiness(&[view(0, 2, 12, 9), view(1, 3, 5, 5)], &mut start)
            .unwrap_err()
            .contains("applied 9 of the 10"));
        assert!(readiness(&[view(0, 0, 12, 12), view(1, 3, 5, 5)], &mut start)
            .unwrap_err()
            .contains("knows no leader"));
        assert_eq!(readiness(&[view(0, 2, 12, 10), view(1, 3, 5, 5)], &mut start), Ok(()));
        assert_eq!(start, vec![Some(10), Some(5)], "a shard silent at start is judged by its first answer");
        let silent = ShardView { shard: 1, status: None, stats: None };
        assert!(readiness(&[view(0, 2, 12, 12), silent], &mut start).unwrap_err().contains("does not answer"));
    }
}
