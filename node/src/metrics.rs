//! The Prometheus endpoint (`node serve --metrics-addr`): `/metrics` in the
//! OpenMetrics text format (`prometheus-client`'s encoder), or in the
//! Prometheus text format 0.0.4 for a scraper whose `Accept` asks for
//! `text/plain` and not OpenMetrics (`prometheus_text`), `/livez` and
//! `/readyz`.
//!
//! # Why a small HTTP server of our own
//!
//! The node's cores are single-threaded tokio-uring runtimes that share
//! nothing. The usual Rust HTTP servers (hyper, axum) run on tokio's
//! epoll reactor and want `Send` futures on a multi-threaded executor:
//! using one would mean a second runtime and thread beside the cores, and
//! every scrape crossing threads to reach the shards' figures. A scrape is
//! one short `GET` every few seconds, so this module serves HTTP/1.1 itself
//! on core 0's own ring: one task per connection, one request per
//! connection (`Connection: close`), a bounded request head, a bounded
//! number of connections. The figures come from the shards the same way
//! `node admin status` and `stats` get them (the in-process request path),
//! so a scrape never touches a shard's state from another thread.
//!
//! # What it exports
//!
//! Per shard (label `shard`): the role (`raft_node_role{role=...}`, 1 for
//! the one it has and 0 for the others), term,
//! commit and applied indexes, the leader's id, the in-memory log's payload
//! bytes, leader changes, log bytes
//! appended, snapshots taken and installed, sessions, writes and reads
//! served, and the per-stage latency histograms of `crate::stats` as
//! `raft_node_stage_duration_seconds{stage=...}`. Per node: connections of
//! core 0's client and peer listeners and of the RESP front door.
//!
//! `/livez` answers 200 whenever the process serves HTTP. `/readyz` answers
//! 200 once every shard knows a leader and has applied at least what was
//! committed when the node started (so a restarted node is not sent
//! traffic while it replays its log), 503 with the reason otherwise.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use net::{AdminRequest, ClientRequest, ListenerHandle, RequestBody, ResponseStatus};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use serde_json::Value;
use tokio_uring::net::{TcpListener, TcpStream};

use crate::local::NodeHandle;
use crate::resp::RespStats;
use crate::stats::BUCKET_BOUNDS_US;

/// Connections served at once. A new one beyond it closes the one that has
/// waited longest for its request head, or is closed unanswered while every
/// one is being answered.
pub const CONNECTIONS_MAX: usize = 16;
/// The longest request head read; a longer one is answered 431.
const REQUEST_HEAD_MAX: usize = 8 << 10;
/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The values of `raft_node_role`'s `role` label: the engine's roles
/// (`engine::Role`), as `node admin status` names them, in lower case.
const ROLES: [&str; 4] = ["follower", "precandidate", "candidate", "leader"];
/// How long a shard may take to answer a scrape's questions.
const SHARD_TIMEOUT: Duration = Duration::from_secs(2);
/// The stages of `crate::stats`, in its JSON's names.
const STAGES: [&str; 10] = [
    "queued",
    "wal_write_sync",
    "replication",
    "apply",
    "total",
    "read",
    "snapshot_capture",
    "snapshot_serialize",
    "snapshot_restore",
    "snapshot_restore_blocked",
];

/// What the endpoint reads besides the shards.
pub struct MetricsSources {
    pub handle: NodeHandle,
    /// Core 0's listeners: (`client` or `peer`, handle).
    pub listeners: Vec<(&'static str, ListenerHandle)>,
    pub resp: Option<RespStats>,
}

struct Server {
    sources: MetricsSources,
    /// Each shard's commit index when the node started, once known.
    commit_at_start: RefCell<Vec<Option<u64>>>,
    connections: std::cell::Cell<usize>,
    /// The connections still waiting for their request head, oldest first:
    /// 16 idle connections held every slot for the request timeout, and
    /// `/livez` failed meanwhile (a liveness probe restarting the node).
    waiting: RefCell<std::collections::VecDeque<(u64, Rc<TcpStream>)>>,
    next_connection: std::cell::Cell<u64>,
}

/// Binds `addr` and serves on the current tokio-uring runtime. The caller
/// checked that the port is free.
pub fn spawn(addr: SocketAddr, sources: MetricsSources) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr)?;
    let shards = sources.handle.shards() as usize;
    let server = Rc::new(Server {
        sources,
        commit_at_start: RefCell::new(vec![None; shards]),
        connections: Default::default(),
        waiting: Default::default(),
        next_connection: Default::default(),
    });
    tracing::info!(%addr, "metrics endpoint listening");
    // Learn the commit indexes the node started with as soon as the shards
    // answer, not at the first probe.
    let early = server.clone();
    tokio_uring::spawn(async move {
        for _ in 0..100 {
            if early.learn_start_commits().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    tokio_uring::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            if server.connections.get() >= CONNECTIONS_MAX {
                let oldest = server.waiting.borrow_mut().pop_front();
                match oldest {
                    // Its pending read ends, and its task frees the slot.
                    Some((_, idle)) => {
                        let _ = idle.shutdown(std::net::Shutdown::Both);
                    }
                    None => continue,
                }
            }
            server.connections.set(server.connections.get() + 1);
            let server = server.clone();
            tokio_uring::spawn(async move { server.serve_connection(Rc::new(stream)).await });
        }
    });
    Ok(())
}

/// Reads a request head and returns whether it is a `HEAD` request and its
/// path (`GET` and `HEAD` only: load balancers probe with either).
/// What a request asked: `HEAD` (the head only), the path or the refusal
/// to send, and whether the Prometheus text format 0.0.4 is wanted.
struct Request {
    head_only: bool,
    path: Result<String, Vec<u8>>,
    plain_text: bool,
}

/// Whether an `Accept` header asks for the Prometheus text format rather
/// than OpenMetrics: it names `text/plain` and not
/// `application/openmetrics-text`. Prometheus itself offers both (and gets
/// OpenMetrics); `*/*` or no header gets OpenMetrics, as before.
fn wants_plain_text(head: &str) -> bool {
    head.lines()
        .filter_map(|line| line.split_once(':'))
        .filter(|(name, _)| name.trim().eq_ignore_ascii_case("accept"))
        .any(|(_, value)| {
            let value = value.to_ascii_lowercase();
            value.contains("text/plain") && !value.contains("application/openmetrics-text")
        })
}

async fn read_request(stream: &TcpStream) -> Result<Request, std::io::Error> {
    let mut head = Vec::with_capacity(1024);
    loop {
        let buf = vec![0u8; 1024];
        let (read, buf) = stream.read(buf).await;
        let read = read?;
        if read == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.extend_from_slice(&buf[..read]);
        if head.windows(4).any(|window| window == b"\r\n\r\n") {
            break;
        }
        if head.len() > REQUEST_HEAD_MAX {
            let refusal = response(431, "text/plain", "request head too large\n");
            return Ok(Request { head_only: false, path: Err(refusal), plain_text: false });
        }
    }
    let head = String::from_utf8_lossy(&head);
    let plain_text = wants_plain_text(&head);
    let mut parts = head.lines().next().unwrap_or_default().split_whitespace();
    let (head_only, path) = match (parts.next(), parts.next()) {
        (Some("GET"), Some(path)) => (false, Ok(path.to_string())),
        (Some("HEAD"), Some(path)) => (true, Ok(path.to_string())),
        _ => (false, Err(response(405, "text/plain", "only GET and HEAD are served\n"))),
    };
    Ok(Request { head_only, path, plain_text })
}

/// The OpenMetrics exposition in the Prometheus text format 0.0.4: no
/// `# EOF` or `# UNIT` lines, a counter's `# HELP` and `# TYPE` name its
/// `_total` series, and no `_created` series (OpenMetrics counters keep
/// their family name there, which a 0.0.4 parser reads as an untyped
/// series).
fn prometheus_text(openmetrics: &str) -> String {
    let counters: Vec<&str> =
        openmetrics.lines().filter_map(|line| line.strip_prefix("# TYPE ")?.strip_suffix(" counter")).collect();
    let mut text = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let described = ["# HELP ", "# TYPE "].into_iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let name = rest.split(' ').next()?;
            counters.contains(&name).then(|| format!("{prefix}{name}_total{}", &rest[name.len()..]))
        });
        if let Some(described) = described {
            text.push_str(&described);
        } else if counters.iter().any(|name| line.strip_prefix(name).is_some_and(|rest| rest.starts_with("_created"))) {
            continue;
        } else {
            text.push_str(line);
        }
        text.push('\n');
    }
    text
}

fn response(code: u16, content_type: &str, body: &str) -> Vec<u8> {
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

impl Server {
    /// One connection: one request, one answer, closed.
    async fn serve_connection(&self, stream: Rc<TcpStream>) {
        let id = self.next_connection.get();
        self.next_connection.set(id + 1);
        self.waiting.borrow_mut().push_back((id, stream.clone()));
        let request = tokio::time::timeout(REQUEST_TIMEOUT, read_request(&stream)).await;
        self.waiting.borrow_mut().retain(|(waiting, _)| *waiting != id);
        if let Ok(Ok(Request { head_only, path, plain_text })) = request {
            let mut answer = self.respond(&path, plain_text).await;
            if head_only {
                let end = answer.windows(4).position(|window| window == b"\r\n\r\n").map_or(answer.len(), |at| at + 4);
                answer.truncate(end);
            }
            let _ = stream.write_all(answer).await;
        }
        // Ends a read still in flight (one the timeout gave up on), so the
        // descriptor is closed now and not when the client goes: idle
        // connections kept theirs open for as long as they stayed.
        let _ = stream.shutdown(std::net::Shutdown::Both);
        self.connections.set(self.connections.get() - 1);
    }

    async fn respond(&self, request: &Result<String, Vec<u8>>, plain_text: bool) -> Vec<u8> {
        let path = match request {
            Ok(path) => path.split('?').next().unwrap_or_default(),
            Err(refusal) => return refusal.clone(),
        };
        match path {
            "/livez" => response(200, "text/plain", "ok\n"),
            "/readyz" => match self.readiness().await {
                Ok(()) => response(200, "text/plain", "ready\n"),
                Err(reason) => response(503, "text/plain", &format!("not ready: {reason}\n")),
            },
            "/metrics" if plain_text => {
                let text = prometheus_text(&self.metrics().await);
                response(200, "text/plain; version=0.0.4; charset=utf-8", &text)
            }
            "/metrics" => {
                let text = self.metrics().await;
                response(200, "application/openmetrics-text; version=1.0.0; charset=utf-8", &text)
            }
            _ => response(404, "text/plain", "try /metrics, /livez or /readyz\n"),
        }
    }

    async fn ask(&self, shard: u32, body: RequestBody) -> Option<Value> {
        let request = ClientRequest { request_id: 0, client_id: 0, sequence: 0, ack: 0, body };
        let answer = tokio::time::timeout(SHARD_TIMEOUT, self.sources.handle.call(shard, request)).await;
        match answer {
            Ok(Ok(ResponseStatus::Ok(bytes))) => serde_json::from_slice(&bytes).ok(),
            _ => None,
        }
    }

    /// Records each shard's commit index the first time it answers; true
    /// once every shard has.
    async fn learn_start_commits(&self) -> bool {
        for shard in 0..self.sources.handle.shards() {
            if self.commit_at_start.borrow()[shard as usize].is_some() {
                continue;
            }
            if let Some(status) = self.ask(shard, RequestBody::Status).await {
                self.commit_at_start.borrow_mut()[shard as usize] = status["commit"].as_u64();
            }
        }
        self.commit_at_start.borrow().iter().all(Option::is_some)
    }

    async fn readiness(&self) -> Result<(), String> {
        self.learn_start_commits().await;
        for shard in 0..self.sources.handle.shards() {
            let status = self.ask(shard, RequestBody::Status).await.ok_or(format!("shard {shard} does not answer"))?;
            if status["leader"].as_u64().unwrap_or(0) == engine::NODE_NONE {
                return Err(format!("shard {shard} knows no leader"));
            }
            let start = self.commit_at_start.borrow()[shard as usize]
                .ok_or(format!("shard {shard}'s commit index at start is not known yet"))?;
            let applied = status["applied"].as_u64().unwrap_or(0);
            if applied < start {
                return Err(format!("shard {shard} applied {applied} of the {start} committed at start"));
            }
        }
        Ok(())
    }

    async fn metrics(&self) -> String {
        let mut shards = Vec::new();
        for shard in 0..self.sources.handle.shards() {
            let status = self.ask(shard, RequestBody::Status).await;
            let stats = self.ask(shard, RequestBody::Admin(AdminRequest::Stats)).await;
            shards.push(ShardSample { shard, status, stats: stats.map(|stats| stats["stats"].clone()) });
        }
        let mut connections: Vec<(&'static str, u64)> =
            self.sources.listeners.iter().map(|(name, listener)| (*name, listener.connection_count() as u64)).collect();
        if let Some(resp) = &self.sources.resp {
            connections.push(("resp", resp.connections() as u64));
        }
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Sample { shards, connections }));
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &registry).is_err() {
            text = "# the metrics could not be encoded\n".into();
        }
        text
    }
}

/// One shard's answers to a scrape (absent when it did not answer).
#[derive(Debug)]
struct ShardSample {
    shard: u32,
    status: Option<Value>,
    stats: Option<Value>,
}

/// Everything one scrape reports, encoded by `prometheus-client`.
#[derive(Debug)]
struct Sample {
    shards: Vec<ShardSample>,
    connections: Vec<(&'static str, u64)>,
}

type Labels = Vec<(&'static str, String)>;

/// A histogram whose buckets were counted elsewhere (`crate::stats`'s HDR
/// histograms), in seconds.
struct CountedHistogram {
    sum_seconds: f64,
    count: u64,
    /// Per-bucket (not cumulative) counts, the last bound `+Inf`.
    buckets: Vec<(f64, u64)>,
}

impl CountedHistogram {
    /// From a stage's JSON: `count`, `sum_us`, cumulative `buckets` at
    /// [`BUCKET_BOUNDS_US`].
    fn from_stage(stage: &Value) -> Option<CountedHistogram> {
        let count = stage["count"].as_u64()?;
        let cumulative: Vec<u64> = stage["buckets"].as_array()?.iter().filter_map(Value::as_u64).collect();
        if cumulative.len() != BUCKET_BOUNDS_US.len() {
            return None;
        }
        let mut buckets = Vec::with_capacity(cumulative.len() + 1);
        let mut below = 0;
        for (bound, at_or_below) in BUCKET_BOUNDS_US.iter().zip(&cumulative) {
            buckets.push((*bound as f64 / 1e6, at_or_below.saturating_sub(below)));
            below = (*at_or_below).max(below);
        }
        buckets.push((f64::INFINITY, count.saturating_sub(below)));
        Some(CountedHistogram { sum_seconds: stage["sum_us"].as_u64().unwrap_or(0) as f64 / 1e6, count, buckets })
    }
}

/// The counters per shard: name, help, and the field of `node admin stats`
/// each counts.
const COUNTERS: [(&str, &str, &str); 19] = [
    ("raft_node_leader_changes", "Leaders this shard learned of.", "leader_changes"),
    ("raft_node_log_bytes_written", "Entry batch bytes appended to the shard's log.", "log_bytes_appended"),
    ("raft_node_snapshots_taken", "Snapshots this shard took of its state.", "snapshots_taken"),
    ("raft_node_snapshots_installed", "Snapshots this shard installed from a leader.", "snapshots_installed"),
    (
        "raft_node_snapshot_chunks_no_space",
        "Received snapshot chunks a full disk could not take (the snapshot is received anew).",
        "snapshot_chunks_no_space",
    ),
    (
        "raft_node_snapshots_damaged",
        "Stored snapshots found damaged on disk while sent to a follower (a new one replaced each).",
        "snapshots_damaged",
    ),
    (
        "raft_node_writes_applied",
        "Client writes this node answered once applied (its own clients' and those it forwarded).",
        "writes_applied",
    ),
    ("raft_node_writes_forwarded", "Client writes this follower forwarded to the leader.", "writes_forwarded"),
    ("raft_node_groups_proposed", "Log entries this leader proposed holding several writes.", "groups_proposed"),
    ("raft_node_writes_grouped", "Client writes this leader proposed in groups.", "writes_grouped"),
    ("raft_node_reads_served", "Client reads served by this shard.", "reads_served"),
    ("raft_node_lease_reads", "Lease reads served under this leader's lease.", "lease_reads"),
    (
        "raft_node_lease_reads_late",
        "Lease reads asked while the lease held in ticks but not in real time (this leader's ticks fell \
         behind), confirmed with a quorum instead.",
        "lease_reads_late",
    ),
    ("raft_node_not_leader", "Requests answered NotLeader.", "not_leader"),
    ("raft_node_busy", "Requests answered Busy (a bound was reached).", "busy"),
    ("raft_node_no_space", "Writes answered NoSpace (a full disk here or on too many peers).", "no_space"),
    (
        "raft_node_session_owner_refused",
        "Writes and closes refused because their session belongs to another user.",
        "session_owner_refused",
    ),
    (
        "raft_node_appends_no_space",
        "Appends from the leader this follower refused for want of space (its disk was full).",
        "appends_no_space",
    ),
    (
        "raft_node_appends_refused_applying",
        "Appends from the leader this follower refused while it restored a snapshot with more unapplied \
         log in memory than its budget.",
        "appends_refused_applying",
    ),
];

impl Sample {
    fn gauge(&self, encoder: &mut DescriptorEncoder, name: &str, help: &str, field: &str) -> std::fmt::Result {
        self.per_shard(encoder, name, help, MetricType::Gauge, |sample| sample.status.as_ref()?[field].as_i64())
    }

    fn counter(&self, encoder: &mut DescriptorEncoder, name: &str, help: &str, field: &str) -> std::fmt::Result {
        self.per_shard(encoder, name, help, MetricType::Counter, |sample| sample.stats.as_ref()?[field].as_i64())
    }

    fn per_shard(
        &self,
        encoder: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        kind: MetricType,
        value: impl Fn(&ShardSample) -> Option<i64>,
    ) -> std::fmt::Result {
        let mut family = encoder.encode_descriptor(name, help, None, kind)?;
        for sample in &self.shards {
            let Some(value) = value(sample) else { continue };
            let labels: Labels = vec![("shard", sample.shard.to_string())];
            let mut metric = family.encode_family(&labels)?;
            if kind == MetricType::Counter {
                metric.encode_counter::<Labels, _, u64>(&(value.max(0) as u64), None)?;
            } else {
                metric.encode_gauge(&value)?;
            }
        }
        Ok(())
    }
}

impl Collector for Sample {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        self.encode_state(&mut encoder)?;
        self.encode_counters(&mut encoder)?;
        self.encode_stages(&mut encoder)
    }
}

impl Sample {
    /// Role, term, indexes, leader, sessions: each shard's state now.
    fn encode_state(&self, encoder: &mut DescriptorEncoder) -> std::fmt::Result {
        let mut roles = encoder.encode_descriptor(
            "raft_node_role",
            "The shard's Raft role on this node: 1 for the role it has, 0 for the others.",
            None,
            MetricType::Gauge,
        )?;
        for sample in &self.shards {
            let Some(role) = sample.status.as_ref().and_then(|status| status["role"].as_str()) else { continue };
            // Every role is a series of its own, 0 or 1, so that a role
            // the shard left reads 0 at once instead of going stale (a
            // query for leaders would count it for five more minutes).
            for candidate in ROLES {
                let labels: Labels = vec![("shard", sample.shard.to_string()), ("role", candidate.to_string())];
                let value = i64::from(role.eq_ignore_ascii_case(candidate));
                roles.encode_family(&labels)?.encode_gauge(&value)?;
            }
        }
        self.gauge(encoder, "raft_node_term", "The shard's current Raft term.", "term")?;
        self.gauge(encoder, "raft_node_commit_index", "The shard's commit index as this node knows it.", "commit")?;
        self.gauge(encoder, "raft_node_applied_index", "The shard's applied index on this node.", "applied")?;
        self.gauge(encoder, "raft_node_leader_id", "The shard's leader as this node knows it (0: none).", "leader")?;
        self.encode_links(encoder)?;
        self.gauge(
            encoder,
            "raft_node_log_memory_bytes",
            "Payload bytes the shard's in-memory log holds (bounded by --log-memory-bytes).",
            "log_memory_bytes",
        )?;
        self.per_shard(
            encoder,
            "raft_node_disk_full",
            "1 while this node's disk is full.",
            MetricType::Gauge,
            |sample| sample.status.as_ref()?["disk_full"].as_bool().map(i64::from),
        )?;
        self.per_shard(
            encoder,
            "raft_node_peers_disk_full",
            "On a leader: peers that report a full disk (their ids are in `node admin status`).",
            MetricType::Gauge,
            |sample| Some(sample.status.as_ref()?["peers_disk_full"].as_array()?.len() as i64),
        )?;
        self.per_shard(
            encoder,
            "raft_node_votes_wait_for",
            "Voters whose vote requests with an empty log this replica, started with an empty log, still waits \
             for before it votes (their ids are in `node admin status`; 0 once it heard them all or a history).",
            MetricType::Gauge,
            |sample| Some(sample.status.as_ref()?["votes_wait_for"].as_array()?.len() as i64),
        )?;
        self.per_shard(
            encoder,
            "raft_node_past_unknown",
            "1 while this replica, started with an empty log in a cluster that has data (a wiped data directory?), \
             withholds its vote until a leader has caught it up (`repair` in `node admin status`).",
            MetricType::Gauge,
            |sample| Some(i64::from(sample.status.as_ref()?["repair_target"] == "unknown")),
        )?;
        self.per_shard(
            encoder,
            "raft_node_sessions",
            "Exactly-once client sessions the shard keeps.",
            MetricType::Gauge,
            |sample| sample.status.as_ref()?["sessions"]["count"].as_i64(),
        )
    }

    /// Counters per shard, and the connections per listener.
    fn encode_counters(&self, encoder: &mut DescriptorEncoder) -> std::fmt::Result {
        for (name, help, field) in COUNTERS {
            self.counter(encoder, name, help, field)?;
        }
        let mut connections = encoder.encode_descriptor(
            "raft_node_connections",
            "Open connections, by listener (core 0's client and peer listeners, the RESP front door).",
            None,
            MetricType::Gauge,
        )?;
        for (listener, count) in &self.connections {
            let labels: Labels = vec![("listener", listener.to_string())];
            connections.encode_family(&labels)?.encode_gauge(&(*count as i64))?;
        }
        Ok(())
    }

    /// Whether each shard's core has a connection up to each peer.
    fn encode_links(&self, encoder: &mut DescriptorEncoder) -> std::fmt::Result {
        let mut links = encoder.encode_descriptor(
            "raft_node_peer_link_up",
            "1 while the shard's core has a connection up to the peer, 0 while it cannot reach it or the peer \
             refuses it (`links` in `node admin status` says why).",
            None,
            MetricType::Gauge,
        )?;
        for sample in &self.shards {
            let Some(status) = &sample.status else { continue };
            for link in status["links"].as_array().into_iter().flatten() {
                let (Some(peer), Some(up)) = (link["peer"].as_u64(), link["connected"].as_bool()) else { continue };
                let labels: Labels = vec![("shard", sample.shard.to_string()), ("peer", peer.to_string())];
                links.encode_family(&labels)?.encode_gauge(&i64::from(up))?;
            }
        }
        Ok(())
    }

    /// The per-stage latency histograms, in seconds.
    fn encode_stages(&self, encoder: &mut DescriptorEncoder) -> std::fmt::Result {
        let mut stages = encoder.encode_descriptor(
            "raft_node_stage_duration",
            "Latency of each stage of a request (see node::stats): queued, wal_write_sync, replication, apply, \
             total, read, snapshot_capture, snapshot_serialize, snapshot_restore, snapshot_restore_blocked.",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for sample in &self.shards {
            let Some(stats) = &sample.stats else { continue };
            for stage in STAGES {
                let Some(histogram) = CountedHistogram::from_stage(&stats["stages"][stage]) else { continue };
                let labels: Labels = vec![("shard", sample.shard.to_string()), ("stage", stage.to_string())];
                stages.encode_family(&labels)?.encode_histogram::<Labels>(
                    histogram.sum_seconds,
                    histogram.count,
                    &histogram.buckets,
                    None,
                )?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `prometheus-client` writes for a counter, a gauge and a
    /// histogram, and what a 0.0.4 parser must get instead.
    #[test]
    fn openmetrics_becomes_the_prometheus_text_format() {
        let openmetrics = "# HELP raft_node_writes Writes served.\n# TYPE raft_node_writes counter\n\
                           raft_node_writes_total{shard=\"0\"} 7\nraft_node_writes_created{shard=\"0\"} 1.5\n\
                           # HELP raft_node_term The term.\n# TYPE raft_node_term gauge\n# UNIT raft_node_term terms\n\
                           raft_node_term{shard=\"0\"} 3\n# TYPE raft_node_stage_duration_seconds histogram\n\
                           raft_node_stage_duration_seconds_bucket{le=\"+Inf\"} 2\n\
                           raft_node_stage_duration_seconds_count 2\n# EOF\n";
        let expected = "# HELP raft_node_writes_total Writes served.\n# TYPE raft_node_writes_total counter\n\
                        raft_node_writes_total{shard=\"0\"} 7\n\
                        # HELP raft_node_term The term.\n# TYPE raft_node_term gauge\n\
                        raft_node_term{shard=\"0\"} 3\n# TYPE raft_node_stage_duration_seconds histogram\n\
                        raft_node_stage_duration_seconds_bucket{le=\"+Inf\"} 2\n\
                        raft_node_stage_duration_seconds_count 2\n";
        assert_eq!(prometheus_text(openmetrics), expected);
    }

    #[test]
    fn only_an_accept_for_plain_text_without_openmetrics_gets_it() {
        let head = |accept: &str| format!("GET /metrics HTTP/1.1\r\nHost: x\r\n{accept}\r\n\r\n");
        assert!(wants_plain_text(&head("Accept: text/plain; version=0.0.4")));
        assert!(wants_plain_text(&head("accept: text/plain;version=0.0.4;q=0.3,*/*;q=0.1")));
        // What Prometheus sends: it takes OpenMetrics.
        assert!(!wants_plain_text(&head(
            "Accept: application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
        )));
        assert!(!wants_plain_text(&head("Accept: */*")));
        assert!(!wants_plain_text(&head("User-Agent: curl")));
    }
}
