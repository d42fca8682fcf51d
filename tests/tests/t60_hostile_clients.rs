//! Hostile clients against a real `node` process: a connection sending
//! random bytes, frames larger than the limit (before and after the
//! handshake), a wrong token, and many connections that never read (some
//! silent, some pipelining requests whose answers pile up). Throughout, a
//! well-behaved client keeps writing and reading through the same node, and
//! every one of its requests must succeed; at the end the node is still up.
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

fn node_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let binary = exe.parent()?.parent()?.join("node");
    binary.is_file().then_some(binary)
}

/// A one-node cluster, killed when dropped.
struct Node {
    child: Child,
    dir: PathBuf,
}

impl Node {
    fn start(binary: &PathBuf) -> Node {
        let dir = std::env::temp_dir().join(format!("hostile-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let child = Command::new(binary)
            .args(["serve", "--node-id", "1", "--cluster-id", &CLUSTER_ID.to_string()])
            .args(["--peer-addr", &format!("127.0.0.1:{PEER_PORT}")])
            .args(["--client-addr", &format!("127.0.0.1:{CLIENT_PORT}")])
            .args(["--peers", &format!("1=127.0.0.1:{PEER_PORT}")])
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
    ClientConfig {
        addrs: vec![HostPort { host: "127.0.0.1".into(), port: CLIENT_PORT }],
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
    };
    Frame { cluster_id: CLUSTER_ID, shard_id: 0, payload: Payload::Handshake(handshake) }.to_bytes()
}

fn connect() -> TcpStream {
    let stream = TcpStream::connect(("127.0.0.1", CLIENT_PORT)).expect("connect");
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
    let Some(binary) = node_binary() else {
        eprintln!(
            "SKIPPED: no node binary next to the test executable; build it first (cargo build --release -p node)"
        );
        return;
    };
    if let Err(error) = wal::io_uring_available() {
        eprintln!("SKIPPED: io_uring is unavailable: {error}");
        return;
    }
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
