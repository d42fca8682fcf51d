//! Codec and transport benchmarks.
//!
//! - `encode/append`: one AppendEntries frame with 64 entries of 256 B and of
//!   64 KiB, into a reused buffer (header and body head; the body crc is
//!   combined from the batch's stored crc, so the entries are not read).
//! - `decode_parse/append`: parsing a checksum-verified frame; borrows, so its
//!   time must not grow with payload size.
//! - `decode_full/append`: header crc + body crc + parse: the crc is the only
//!   part linear in the payload (hardware crc32c).
//! - `loopback/frames/*`: frames per second through one loopback connection,
//!   from a [`Link`] (coalesced writes) to a [`Listener`] delivering decoded
//!   frames; `loopback_tls/frames/*` the same over mutual TLS 1.3 (throwaway
//!   certificates from `net::tls::dev_certificates`), so the two lines give
//!   the cost of TLS on a link.
//! - `loopback/client_requests/*`: requests per second, answered, through one
//!   client connection with 256 requests in flight; `loopback_tls/...` the
//!   same over TLS with a client certificate.
//!
//! Run: `cargo bench -p net --bench net` (`-- loopback` for the transport
//! cases only).

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use engine::{AppendRequest, Entry, EntryBatch, EntryKind, Message, MessageBody};
use net::frame::decode_raw;
use net::{
    encode_message, ClientConfig, ClientConnection, ClientRequest, ClientTls, ClientTokens, Frame, Inbound, Limits,
    Link, LinkConfig, Listener, ListenerConfig, NodeSecurity, NodeSecurityConfig, RequestBody, ResponseStatus, Roles,
};
use tokio::sync::mpsc;

fn append(entry_size: usize) -> Message {
    let entries: Vec<Entry> = (0..64)
        .map(|i| Entry {
            index: 1000 + i,
            term: 7,
            kind: EntryKind::Normal,
            data: Bytes::from(vec![i as u8; entry_size]),
        })
        .collect();
    let batch = EntryBatch::encode(&entries);
    Message {
        from: 1,
        to: 2,
        term: 7,
        body: MessageBody::Append(AppendRequest { prev_index: 999, prev_term: 7, commit: 990, entries: Some(batch) }),
    }
}

fn sizes() -> [(usize, &'static str); 2] {
    [(256, "64x256B"), (64 << 10, "64x64KiB")]
}

fn codec(c: &mut Criterion) {
    let limits = Limits { frame_size_max: 64 << 20 };
    let mut group = c.benchmark_group("codec");
    for (entry_size, label) in sizes() {
        let message = append(entry_size);
        let mut out = BytesMut::with_capacity(4096);
        group.bench_function(BenchmarkId::new("encode/append", label), |b| {
            b.iter(|| {
                out.clear();
                let tail = encode_message(1, 0, std::hint::black_box(&message), &mut out);
                std::hint::black_box(tail);
            })
        });
        let bytes = Frame { cluster_id: 1, shard_id: 0, payload: net::Payload::Raft(message) }.to_bytes();
        let (raw, _) = decode_raw(&bytes, &limits).unwrap();
        group.bench_function(BenchmarkId::new("decode_parse/append", label), |b| {
            b.iter(|| std::hint::black_box(Frame::decode(std::hint::black_box(raw.clone())).unwrap()))
        });
        group.bench_function(BenchmarkId::new("decode_full/append", label), |b| {
            b.iter(|| std::hint::black_box(Frame::decode_bytes(std::hint::black_box(&bytes), &limits).unwrap()))
        });
    }
    group.finish();
}

/// Pushes `count` copies of `message` through `link`, keeping its queue from
/// overflowing by taking what has arrived whenever the queue is full, and
/// waits for all of them.
async fn pump(link: &Link, inbound: &mut mpsc::Receiver<Inbound>, message: &Message, count: u64) -> Duration {
    let start = Instant::now();
    let (mut sent, mut received) = (0u64, 0u64);
    while sent < count {
        if link.stats().queued >= QUEUE_FRAMES_MAX {
            inbound.recv().await.expect("listener alive");
            received += 1;
            continue;
        }
        link.send(0, message.clone()).expect("the queue has room");
        sent += 1;
    }
    while received < count {
        inbound.recv().await.expect("listener alive");
        received += 1;
    }
    start.elapsed()
}

const QUEUE_FRAMES_MAX: usize = 1024;
const PIPELINE_DEPTH: u64 = 256;

/// Sends `count` 64-byte writes with up to `PIPELINE_DEPTH` in flight (sent
/// in batches of half that, each batch one coalesced write) and waits for
/// every answer.
async fn pipeline(client: &mut ClientConnection, count: u64) -> Duration {
    let command = Bytes::from_static(&[7; 64]);
    let start = Instant::now();
    let (mut sent, mut received) = (0u64, 0u64);
    while received < count {
        while sent < count && sent - received < PIPELINE_DEPTH {
            let body = RequestBody::Write { command: command.clone() };
            client.queue(0, &ClientRequest { request_id: sent, client_id: 1, sequence: sent + 1, ack: 1, body });
            sent += 1;
        }
        client.flush().await.unwrap();
        // Refill in batches: take answers until half the window is free.
        loop {
            let response = client.recv().await.unwrap();
            assert!(matches!(response.status, ResponseStatus::Ok(_)));
            received += 1;
            if sent - received <= PIPELINE_DEPTH / 2 {
                break;
            }
        }
    }
    start.elapsed()
}

/// The credentials of both ends: plaintext with a token, or TLS from
/// throwaway certificates.
struct Ends {
    listener: NodeSecurity,
    link: NodeSecurity,
    client: ClientConfig,
}

fn ends(tls: bool) -> Ends {
    if !tls {
        let token = Bytes::from_static(b"bench");
        return Ends {
            listener: NodeSecurity::plaintext(1, 2, token.clone()),
            link: NodeSecurity::plaintext(1, 1, token.clone()),
            client: ClientConfig::new(1, token),
        };
    }
    let dir = std::env::temp_dir().join(format!("net-bench-certs-{}", std::process::id()));
    let certificates = net::tls::dev_certificates(&dir, 1, &[1, 2], &[("bench", Roles::ALL)]).expect("certificates");
    let node = |node_id| {
        NodeSecurity::load(NodeSecurityConfig {
            cluster_id: 1,
            node_id,
            tls: certificates.node_tls(node_id),
            peer_token: None,
            client_tokens: ClientTokens::None,
            history: net::History::FRESH,
        })
        .expect("node credentials")
    };
    let client_tls = ClientTls::load(1, &certificates.client_tls("bench").unwrap()).expect("client credentials");
    let ends = Ends { listener: node(2), link: node(1), client: ClientConfig::with_tls(1, client_tls, Bytes::new()) };
    let _ = std::fs::remove_dir_all(&dir);
    ends
}

fn loopback_plain(c: &mut Criterion) {
    loopback(c, "loopback", false);
}

fn loopback_tls(c: &mut Criterion) {
    loopback(c, "loopback_tls", true);
}

fn loopback(c: &mut Criterion, group_name: &str, tls: bool) {
    let runtime = tokio_uring::Runtime::new(&tokio_uring::builder()).expect("io_uring available");
    let Ends { listener: listener_security, link: link_security, client: client_config } = ends(tls);
    let (link, mut inbound) = runtime.block_on(async {
        let mut config = ListenerConfig::peers("127.0.0.1:0".parse().unwrap(), listener_security.clone());
        config.limits = Limits { frame_size_max: 64 << 20 };
        let listener = Listener::bind(config).unwrap();
        let addr = listener.local_addr();
        let (sender, receiver) = mpsc::channel(4096);
        listener.spawn(sender);
        let mut link_config = LinkConfig::new(link_security, 2, addr);
        link_config.queue_frames_max = QUEUE_FRAMES_MAX;
        let link = Link::spawn(link_config);
        while !link.stats().connected {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        (link, receiver)
    });
    let heartbeat = Message { from: 1, to: 2, term: 7, body: MessageBody::Heartbeat { commit: 5, read_context: 0 } };
    let mut group = c.benchmark_group(group_name);
    group.throughput(Throughput::Elements(1));
    group.bench_function("frames/heartbeat", |b| {
        b.iter_custom(|iters| runtime.block_on(pump(&link, &mut inbound, &heartbeat, iters)))
    });
    let small_append = append(256);
    group.bench_function("frames/append_64x256B", |b| {
        b.iter_custom(|iters| runtime.block_on(pump(&link, &mut inbound, &small_append, iters)))
    });
    group.finish();

    // Client requests through a listener whose owner answers each at once:
    // a pipelined client keeps `PIPELINE_DEPTH` requests in flight.
    let mut client = runtime.block_on(async {
        let listener =
            Listener::bind(ListenerConfig::clients("127.0.0.1:0".parse().unwrap(), listener_security)).unwrap();
        let addr = listener.local_addr();
        let (sender, mut requests) = mpsc::channel(4096);
        listener.spawn(sender);
        tokio_uring::spawn(async move {
            while let Some(event) = requests.recv().await {
                if let Inbound::Request { request, reply, .. } = event {
                    let RequestBody::Write { command } = request.body else { continue };
                    reply.send(ResponseStatus::Ok(command)).expect("client connected");
                }
            }
        });
        ClientConnection::connect(addr, &client_config).await.unwrap()
    });
    assert_eq!(client.is_tls(), tls);
    let mut group = c.benchmark_group(group_name);
    group.throughput(Throughput::Elements(1));
    group.bench_function("client_requests/pipelined_64B", |b| {
        b.iter_custom(|iters| runtime.block_on(pipeline(&mut client, iters)))
    });
    group.finish();
    let stats = link.stats();
    eprintln!("link after the {group_name} benches: {stats:?}");
    assert_eq!(stats.dropped_queue_full, 0, "the pump must not overflow the queue");
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = codec, loopback_plain, loopback_tls
}
criterion_main!(benches);
