//! Hostile clients against a real `node` process: a connection sending
//! random bytes, frames larger than the limit (before and after the
//! handshake), a wrong token, and many connections that never read (some
//! silent, some pipelining requests whose answers pile up). Throughout, a
//! well-behaved client keeps writing and reading through the same node, and
//! every one of its requests must succeed; at the end the node is still up.
//!
//! A second test holds the node's resident memory (VmRSS) under a bound
//! while many connections pipeline requests and never read the answers.
//!
//! Like `t50_chaos`, it needs the `node` binary built first
//! (`cargo build --release -p node`) and skips with a message without it.
//! Ports 24200-24299.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use net::{
    ClientConfig as NetClientConfig, ClientConnection, ClientRequest, Frame, Handshake, Payload, ReadConsistency,
    RequestBody, ResponseStatus, Role, PROTOCOL_VERSION,
};
use node::client_cmd::{call, BlockingClient};
use node::config::{ClientConfig, Token};
use node::discovery::HostPort;
use node::kv::{KvOp, KvResponse};

const TOKEN: &str = "hostile-test-token";
const CLUSTER_ID: u64 = 60;
const PEER_PORT: u16 = 24_200;
const CLIENT_PORT: u16 = 24_201;
/// The memory test's node, so that both tests can run at once.
const MEMORY_PEER_PORT: u16 = 24_210;
const MEMORY_CLIENT_PORT: u16 = 24_211;

/// The node binary, or `None` after saying why the test skips.
fn runnable_node_binary() -> Option<PathBuf> {
    let Some(binary) = tests::node_binary() else {
        eprintln!(
            "SKIPPED: no node binary next to the test executable; build it first (cargo build --release -p node)"
        );
        return None;
    };
    if let Err(error) = wal::io_uring_available() {
        eprintln!("SKIPPED: io_uring is unavailable: {error}");
        return None;
    }
    Some(binary)
}

/// A one-node cluster, killed when dropped.
struct Node {
    child: Child,
    dir: PathBuf,
}

impl Node {
    fn start(binary: &PathBuf) -> Node {
        Node::start_on(binary, PEER_PORT, CLIENT_PORT)
    }

    fn start_on(binary: &PathBuf, peer_port: u16, client_port: u16) -> Node {
        let dir = std::env::temp_dir().join(format!("hostile-{}-{peer_port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let child = Command::new(binary)
            .args(["serve", "--node-id", "1", "--cluster-id", &CLUSTER_ID.to_string()])
            .args(["--peer-addr", &format!("127.0.0.1:{peer_port}")])
            .args(["--client-addr", &format!("127.0.0.1:{client_port}")])
            .args(["--peers", &format!("1=127.0.0.1:{peer_port}")])
            .args(["--data-dir", &dir.join("node-1").display().to_string()])
            .args(["--log-level", "error", "--pin-cores", "false"])
            .env("NODE_TOKEN", TOKEN)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start node");
        Node { child, dir }
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn client(timeout: Duration) -> ClientConfig {
    client_of(CLIENT_PORT, timeout)
}

fn client_of(port: u16, timeout: Duration) -> ClientConfig {
    ClientConfig {
        addrs: vec![HostPort { host: "127.0.0.1".into(), port }],
        cluster_id: CLUSTER_ID,
        token: Some(Token(Bytes::from_static(TOKEN.as_bytes()))),
        tls: None,
        timeout,
        shard: 0,
    }
}

/// A frame header announcing `body_length` bytes, with valid magic and
/// header checksum, so only the size limit can refuse it.
fn header(kind: u8, body_length: u32) -> Vec<u8> {
    let mut out = BytesMut::with_capacity(32);
    out.put_u32_le(0x5445_4E52);
    out.put_u8(PROTOCOL_VERSION);
    out.put_u8(kind);
    out.put_u16_le(0);
    out.put_u64_le(CLUSTER_ID);
    out.put_u32_le(0);
    out.put_u32_le(body_length);
    out.put_u32_le(0);
    let crc = crc32c::crc32c(&out[..28]);
    out.put_u32_le(crc);
    out.to_vec()
}

fn handshake_frame(token: &str) -> Bytes {
    let handshake = Handshake {
        cluster_id: CLUSTER_ID,
        node_id: 0,
        role: Role::Client,
        protocol_version: u16::from(PROTOCOL_VERSION),
        token: Bytes::copy_from_slice(token.as_bytes()),
        history: net::History::FRESH,
    };
    Frame { cluster_id: CLUSTER_ID, shard_id: 0, payload: Payload::Handshake(handshake) }.to_bytes()
}

fn connect() -> TcpStream {
    connect_to(CLIENT_PORT)
}

fn connect_to(port: u16) -> TcpStream {
    let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    stream.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    stream
}

/// Reads until the node closes the connection (or the timeout): the node
/// must close a connection that broke the protocol.
fn closed_by_node(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(error) => {
                eprintln!("waiting for the node to close the connection: {error}");
                return false;
            }
        }
    }
    false
}

/// A well-behaved client: writes and reads back, one after the other, until
/// told to stop; any failure is recorded.
fn good_client(stop: Arc<AtomicBool>, done: Arc<AtomicU64>, failures: Arc<std::sync::Mutex<Vec<String>>>) {
    let config = client(Duration::from_secs(10));
    let mut good = BlockingClient::new(&config).expect("a client");
    let mut session = good.open_session().expect("a session opens");
    let mut sequence = 0;
    while !stop.load(Ordering::Relaxed) {
        sequence += 1;
        let key = Bytes::from(format!("good-{}", sequence % 16));
        let value = Bytes::from(format!("value-{sequence}"));
        let put = KvOp::Put { key: key.clone(), value: value.clone() };
        match good.write(&mut session, put.encode()) {
            Ok(bytes) if bytes == KvResponse::Written.encode() => {}
            other => failures.lock().unwrap().push(format!("put {sequence}: {other:?}")),
        }
        let get = RequestBody::Read { query: KvOp::Get { key }.encode(), consistency: ReadConsistency::Linearizable };
        match good.call(get) {
            Ok(ResponseStatus::Ok(bytes)) if bytes == KvResponse::Value(Some(value)).encode() => {}
            other => failures.lock().unwrap().push(format!("get {sequence}: {other:?}")),
        }
        done.fetch_add(1, Ordering::Relaxed);
    }
}

#[test]
fn node_survives_hostile_clients_and_keeps_serving() {
    let Some(binary) = runnable_node_binary() else { return };
    let mut node = Node::start(&binary);
    // Wait until the node serves.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !matches!(call(&client(Duration::from_secs(1)), RequestBody::Status), Ok(ResponseStatus::Ok(_))) {
        assert!(Instant::now() < deadline, "the node did not start serving");
        std::thread::sleep(Duration::from_millis(100));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let good = {
        let (stop, done, failures) = (stop.clone(), done.clone(), failures.clone());
        std::thread::spawn(move || good_client(stop, done, failures))
    };

    // Random bytes, before any handshake: the node closes the connection.
    let mut seed = 0x1234_5678_9ABC_DEF0u64;
    for round in 0..20 {
        let mut stream = connect();
        let size = 1 + (round * 997) % 20_000;
        let noise: Vec<u8> = (0..size)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        let _ = stream.write_all(&noise);
        assert!(closed_by_node(&mut stream), "random bytes (round {round}) did not get the connection closed");
    }
    // Random bytes after a valid handshake.
    for _ in 0..10 {
        let mut stream = connect();
        stream.write_all(&handshake_frame(TOKEN)).unwrap();
        let noise: Vec<u8> = (0..5000).map(|i| (i * 131 % 251) as u8).collect();
        let _ = stream.write_all(&noise);
        assert!(closed_by_node(&mut stream), "random bytes after the handshake did not close the connection");
    }
    // Oversized frames: a header announcing 1 GiB, before and after the
    // handshake. The node must refuse without reserving the memory.
    for kind in [1u8, 64] {
        let mut stream = connect();
        if kind == 64 {
            stream.write_all(&handshake_frame(TOKEN)).unwrap();
        }
        stream.write_all(&header(kind, 1 << 30)).unwrap();
        let _ = stream.write_all(&vec![0u8; 64 * 1024]);
        assert!(closed_by_node(&mut stream), "an oversized frame of kind {kind} was not refused");
    }
    // A wrong token: refused at the handshake.
    let refused = tokio_uring::start(async {
        let config = NetClientConfig::new(CLUSTER_ID, Bytes::from_static(b"not-the-token"));
        let addr = format!("127.0.0.1:{CLIENT_PORT}").parse().unwrap();
        ClientConnection::connect(addr, &config).await.is_err()
    });
    assert!(refused, "a client with the wrong token was accepted");
    let mut stream = connect();
    stream.write_all(&handshake_frame("wrong-token")).unwrap();
    assert!(closed_by_node(&mut stream), "a raw handshake with the wrong token was not closed");

    // Many connections that never read: some never say anything, some
    // pipeline status requests (large answers) and never read the answers.
    let silent: Vec<TcpStream> = (0..200).map(|_| connect()).collect();
    let (flood_done_sender, flood_done) = std::sync::mpsc::channel();
    let (release_sender, release) = std::sync::mpsc::channel::<()>();
    let flood = std::thread::spawn(move || {
        tokio_uring::start(async move {
            let config = NetClientConfig::new(CLUSTER_ID, Bytes::from_static(TOKEN.as_bytes()));
            let addr = format!("127.0.0.1:{CLIENT_PORT}").parse().unwrap();
            let mut connections = Vec::new();
            for index in 0..40u64 {
                let Ok(mut connection) = ClientConnection::connect(addr, &config).await else { continue };
                for request_id in 0..2000u64 {
                    let request = ClientRequest::plain(request_id, RequestBody::Status);
                    connection.queue(0, &request);
                }
                let _ = tokio::time::timeout(Duration::from_secs(2), connection.flush()).await;
                connections.push(connection);
                let _ = index;
            }
            let _ = flood_done_sender.send(connections.len());
            // Hold them open, unread, until told to let go.
            let _ = release.recv();
            drop(connections);
        })
    });
    let flooders = flood_done.recv_timeout(Duration::from_secs(120)).expect("the flood connections were opened");
    let before = done.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs(3));
    let during = done.load(Ordering::Relaxed) - before;
    assert!(node.alive(), "the node died under hostile clients");
    assert!(during > 0, "the well-behaved client made no progress while {flooders} connections did not read");
    let _ = release_sender.send(());
    flood.join().expect("flood thread");
    drop(silent);

    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    good.join().expect("good client");
    assert!(node.alive(), "the node died under hostile clients");
    let failures = failures.lock().unwrap().clone();
    let completed = done.load(Ordering::Relaxed);
    eprintln!(
        "hostile clients: the good client did {completed} write+read pairs ({during} while {flooders} connections did not read)"
    );
    assert!(failures.is_empty(), "the well-behaved client saw failures: {failures:?}");
    assert!(completed >= 10, "the well-behaved client made almost no progress: {completed}");
}

/// A process's resident memory in bytes, from `/proc/PID/status`.
fn resident_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    let line = status.lines().find(|line| line.starts_with("VmRSS:")).expect("a VmRSS line");
    let kib: u64 = line.split_whitespace().nth(1).and_then(|field| field.parse().ok()).expect("VmRSS in kB");
    kib * 1024
}

/// Connections that pipeline status requests and never read.
const FLOOD_CONNECTIONS: usize = 64;
/// Connections that finish the handshake and then say nothing.
const SILENT_CONNECTIONS: usize = 400;
/// What one flooding connection may make the node hold, at most: the
/// listener reads no further once `REQUESTS_OUTSTANDING_MAX_DEFAULT` (256)
/// requests are unanswered, so it holds at most 256 requests and their 256
/// answers (a status answer is under 4 KiB: 1 MiB), its receive buffer
/// (`READ_SIZE_DEFAULT`, 64 KiB) and one coalesced write being sent
/// (`ListenerConfig::write_bytes_max`, 1 MiB): 2 MiB with slack to spare
/// for the allocator. A silent connection holds its receive buffer and its
/// task: 128 KiB.
const FLOOD_CONNECTION_BYTES_MAX: u64 = 2 << 20;
const SILENT_CONNECTION_BYTES_MAX: u64 = 128 << 10;
/// Allocator and runtime slack over the whole run (arenas grown by other
/// threads, the status answers' JSON buffers).
const MEMORY_SLACK_BYTES: u64 = 32 << 20;

/// The documented bound: a node holding every connection at its limit
/// stays under its resident memory at rest plus
/// `FLOOD_CONNECTIONS * 2 MiB + SILENT_CONNECTIONS * 128 KiB + 32 MiB`
/// (here 210 MiB). A node that kept reading a client that does not read
/// (a task or a queued answer per request) grows by the answers to
/// everything the flood sends, which the test checks is far more.
#[test]
fn resident_memory_stays_bounded_while_clients_pipeline_and_never_read() {
    let Some(binary) = runnable_node_binary() else { return };
    let mut node = Node::start_on(&binary, MEMORY_PEER_PORT, MEMORY_CLIENT_PORT);
    let status_client = client_of(MEMORY_CLIENT_PORT, Duration::from_secs(5));
    let deadline = Instant::now() + Duration::from_secs(20);
    let answer_bytes = loop {
        if let Ok(ResponseStatus::Ok(answer)) =
            call(&client_of(MEMORY_CLIENT_PORT, Duration::from_secs(1)), RequestBody::Status)
        {
            break answer.len() as u64;
        }
        assert!(Instant::now() < deadline, "the node did not start serving");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(answer_bytes < 4096, "a status answer is {answer_bytes} bytes: the per-connection bound assumes < 4 KiB");
    // Warm up what a served client allocates once, then take the baseline.
    for _ in 0..20 {
        assert!(matches!(call(&status_client, RequestBody::Status), Ok(ResponseStatus::Ok(_))));
    }
    std::thread::sleep(Duration::from_millis(500));
    let pid = node.child.id();
    let baseline = resident_bytes(pid);
    let bound = baseline
        + FLOOD_CONNECTIONS as u64 * FLOOD_CONNECTION_BYTES_MAX
        + SILENT_CONNECTIONS as u64 * SILENT_CONNECTION_BYTES_MAX
        + MEMORY_SLACK_BYTES;

    let silent: Vec<TcpStream> = (0..SILENT_CONNECTIONS)
        .map(|_| {
            let mut stream = connect_to(MEMORY_CLIENT_PORT);
            stream.write_all(&handshake_frame(TOKEN)).unwrap();
            stream
        })
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let flood = {
        let (stop, sent) = (stop.clone(), sent.clone());
        std::thread::spawn(move || {
            tokio_uring::start(async move {
                let config = NetClientConfig::new(CLUSTER_ID, Bytes::from_static(TOKEN.as_bytes()));
                let addr = format!("127.0.0.1:{MEMORY_CLIENT_PORT}").parse().unwrap();
                let mut connections = Vec::new();
                for _ in 0..FLOOD_CONNECTIONS {
                    connections.push(ClientConnection::connect(addr, &config).await.expect("a flood connection"));
                }
                // Round after round, every connection gets 1,000 more
                // requests until its socket stops taking them: the node has
                // stopped reading it.
                let mut stuck = vec![false; connections.len()];
                let mut request_id = 0u64;
                while !stop.load(Ordering::Relaxed) && stuck.iter().any(|stuck| !stuck) {
                    for (connection, stuck) in connections.iter_mut().zip(stuck.iter_mut()).filter(|(_, s)| !**s) {
                        for _ in 0..1000 {
                            request_id += 1;
                            connection.queue(0, &ClientRequest::plain(request_id, RequestBody::Status));
                        }
                        match tokio::time::timeout(Duration::from_millis(200), connection.flush()).await {
                            Ok(Ok(())) => {
                                sent.fetch_add(1000, Ordering::Relaxed);
                            }
                            _ => *stuck = true,
                        }
                    }
                }
                while !stop.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                drop(connections);
            })
        })
    };
    let mut peak = baseline;
    let started = Instant::now();
    let mut served_during = 0;
    while started.elapsed() < Duration::from_secs(10) {
        peak = peak.max(resident_bytes(pid));
        if started.elapsed() > Duration::from_secs(2) && served_during < 5 {
            if let Ok(ResponseStatus::Ok(_)) = call(&status_client, RequestBody::Status) {
                served_during += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let sent_total = sent.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    flood.join().expect("flood thread");
    drop(silent);
    let mib = |bytes: u64| bytes as f64 / f64::from(1 << 20);
    eprintln!(
        "resident memory: {:.1} MiB at rest, peak {:.1} MiB under {FLOOD_CONNECTIONS} flooding and {SILENT_CONNECTIONS} \
         silent connections (bound {:.1} MiB); the flood sent {sent_total} requests ({:.0} MiB of answers had they all \
         been queued)",
        mib(baseline),
        mib(peak),
        mib(bound),
        mib(sent_total * answer_bytes),
    );
    assert!(node.alive(), "the node died under the flood");
    assert!(served_during >= 5, "a well-behaved client was not served during the flood");
    assert!(
        sent_total * answer_bytes > 4 * (bound - baseline),
        "the flood sent too little ({sent_total} requests) to tell a bounded node from an unbounded one"
    );
    assert!(peak <= bound, "resident memory peaked at {:.1} MiB, over the bound of {:.1} MiB", mib(peak), mib(bound));
}
