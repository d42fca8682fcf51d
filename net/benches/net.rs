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
//!   frames.
//! - `loopback/client_requests/*`: requests per second, answered, through one
//!   client connection with 256 requests in flight.
//!
//! Run: `cargo bench -p net --bench net`.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use engine::{AppendRequest, Entry, EntryBatch, EntryKind, Message, MessageBody};
use net::frame::decode_raw;
use net::{
    encode_message, ClientConfig, ClientConnection, ClientRequest, Frame, HandshakePolicy, Inbound, Limits, Link,
    LinkConfig, Listener, ListenerConfig, RequestBody, ResponseStatus,
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

fn loopback(c: &mut Criterion) {
    let runtime = tokio_uring::Runtime::new(&tokio_uring::builder()).expect("io_uring available");
    let (link, mut inbound) = runtime.block_on(async {
        let policy = HandshakePolicy {
            cluster_id: 1,
            node_id: 2,
            token: Bytes::from_static(b"bench"),
            accept_peers: true,
            accept_clients: false,
        };
        let mut config = ListenerConfig::new("127.0.0.1:0".parse().unwrap(), policy);
        config.limits = Limits { frame_size_max: 64 << 20 };
        let listener = Listener::bind(config).unwrap();
        let addr = listener.local_addr();
        let (sender, receiver) = mpsc::channel(4096);
        listener.spawn(sender);
        let mut link_config = LinkConfig::new(1, 1, Bytes::from_static(b"bench"), 2, addr);
        link_config.queue_frames_max = QUEUE_FRAMES_MAX;
        let link = Link::spawn(link_config);
        while !link.stats().connected {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        (link, receiver)
    });
    let heartbeat = Message { from: 1, to: 2, term: 7, body: MessageBody::Heartbeat { commit: 5, read_context: 0 } };
    let mut group = c.benchmark_group("loopback");
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
        let policy = HandshakePolicy {
            cluster_id: 1,
            node_id: 3,
            token: Bytes::from_static(b"bench"),
            accept_peers: false,
            accept_clients: true,
        };
        let listener = Listener::bind(ListenerConfig::new("127.0.0.1:0".parse().unwrap(), policy)).unwrap();
        let addr = listener.local_addr();
        let (sender, mut requests) = mpsc::channel(4096);
        listener.spawn(sender);
        tokio_uring::spawn(async move {
            while let Some(event) = requests.recv().await {
                if let Inbound::Request { request, reply, .. } = event {
                    let RequestBody::Write { command } = request.body else { continue };
                    reply.send(ResponseStatus::Ok(command)).await.expect("client connected");
                }
            }
        });
        ClientConnection::connect(addr, &ClientConfig::new(1, Bytes::from_static(b"bench"))).await.unwrap()
    });
    let mut group = c.benchmark_group("loopback");
    group.throughput(Throughput::Elements(1));
    group.bench_function("client_requests/pipelined_64B", |b| {
        b.iter_custom(|iters| runtime.block_on(pipeline(&mut client, iters)))
    });
    group.finish();
    let stats = link.stats();
    eprintln!("link after the loopback benches: {stats:?}");
    assert_eq!(stats.dropped_queue_full, 0, "the pump must not overflow the queue");
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = codec, loopback
}
criterion_main!(benches);
