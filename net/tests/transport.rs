//! The transport on loopback: client requests answered out of order, Raft
//! messages over links, reconnect after the peer restarts, back-pressure when
//! the peer stops reading, handshake refusals, a port already in use, and a
//! garbage-sending connection that is closed without disturbing the others.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use engine::{AppendRequest, Entry, EntryBatch, EntryKind, Message, MessageBody};
use net::frame::decode_raw;
use net::{
    ClientConfig, ClientConnection, ClientError, ClientRequest, Frame, HandshakeAccept, HandshakeError, Inbound,
    Limits, Link, LinkConfig, ListenError, Listener, ListenerConfig, ListenerHandle, ListenerRole, NodeSecurity,
    Payload, RefusalReason, RequestBody, ResponseStatus, FRAME_HEADER_SIZE, PROTOCOL_VERSION,
};
use tokio::sync::mpsc;

const CLUSTER: u64 = 42;
const TOKEN: &[u8] = b"correct horse battery staple";
const WAIT: Duration = Duration::from_secs(10);

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// Plaintext with one token for peers and clients (development mode).
fn security(node_id: u64) -> NodeSecurity {
    NodeSecurity::plaintext(CLUSTER, node_id, Bytes::from_static(TOKEN))
}

fn start_listener(addr: SocketAddr, node_id: u64, role: ListenerRole) -> (ListenerHandle, mpsc::Receiver<Inbound>) {
    let listener = Listener::bind(ListenerConfig::new(addr, role, security(node_id))).expect("bind");
    let (sender, receiver) = mpsc::channel(1024);
    (listener.spawn(sender), receiver)
}

fn link_to(addr: SocketAddr, configure: impl FnOnce(&mut LinkConfig)) -> Link {
    let mut config = LinkConfig::new(security(1), 2, addr);
    config.backoff_min = Duration::from_millis(5);
    config.backoff_max = Duration::from_millis(50);
    configure(&mut config);
    Link::spawn(config)
}

fn heartbeat(read_context: u64) -> Message {
    Message { from: 1, to: 2, term: 5, body: MessageBody::Heartbeat { commit: 3, read_context } }
}

/// Runs a test body on a fresh tokio-uring runtime with an overall deadline,
/// so a hang fails the test instead of stalling the suite.
fn run(test: impl std::future::Future<Output = ()>) {
    tokio_uring::start(async {
        tokio::time::timeout(Duration::from_secs(30), test).await.expect("test timed out");
    });
}

async fn next_inbound(receiver: &mut mpsc::Receiver<Inbound>) -> Inbound {
    tokio::time::timeout(WAIT, receiver.recv()).await.expect("no inbound event in time").expect("channel closed")
}

async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[test]
fn pipelined_client_requests_are_answered_out_of_order() {
    run(async {
        let (handle, mut inbound) = start_listener(loopback(), 7, ListenerRole::Clients);
        let mut client =
            ClientConnection::connect(handle.local_addr(), &ClientConfig::new(CLUSTER, Bytes::from_static(TOKEN)))
                .await
                .unwrap();
        assert_eq!(client.server_node_id(), 7);
        let count = 100u64;
        for request_id in 0..count {
            let command = Bytes::from(format!("put k{request_id}"));
            let request = ClientRequest {
                request_id,
                client_id: 9,
                sequence: request_id + 1,
                ack: 1,
                body: RequestBody::Write { command },
            };
            client.queue(3, &request);
        }
        client.flush().await.unwrap();

        let mut pending = Vec::new();
        for _ in 0..count {
            match next_inbound(&mut inbound).await {
                Inbound::Request { shard_id, request, reply, .. } => {
                    assert_eq!(shard_id, 3);
                    pending.push((request, reply));
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        // Answer newest first.
        for (request, reply) in pending.into_iter().rev() {
            let RequestBody::Write { command } = request.body else { panic!("not a write") };
            assert_eq!(reply.request_id(), request.request_id);
            reply.send(ResponseStatus::Ok(command)).unwrap();
        }
        let mut seen = vec![false; count as usize];
        for expected in (0..count).rev() {
            let response = client.recv().await.unwrap();
            assert_eq!(response.request_id, expected);
            assert_eq!(response.status, ResponseStatus::Ok(Bytes::from(format!("put k{expected}"))));
            seen[expected as usize] = true;
        }
        assert!(seen.iter().all(|s| *s));
        handle.shutdown();
    });
}

#[test]
fn a_client_that_finished_sending_still_gets_every_answer() {
    run(async {
        let (handle, mut inbound) = start_listener(loopback(), 7, ListenerRole::Clients);
        let client =
            ClientConnection::connect(handle.local_addr(), &ClientConfig::new(CLUSTER, Bytes::from_static(TOKEN)))
                .await
                .unwrap();
        let (mut sender, mut receiver) = client.split();
        for request_id in 0..10 {
            sender.queue(0, &ClientRequest::plain(request_id, RequestBody::Status));
        }
        sender.flush().await.unwrap();
        sender.finish().unwrap();
        let mut replies = Vec::new();
        for _ in 0..10 {
            let Inbound::Request { reply, .. } = next_inbound(&mut inbound).await else { panic!("not a request") };
            replies.push(reply);
        }
        // Answer after the client's half-close has surely been seen.
        tokio::time::sleep(Duration::from_millis(50)).await;
        for reply in replies {
            reply.send(ResponseStatus::Busy).unwrap();
        }
        for request_id in 0..10 {
            let response = receiver.recv().await.unwrap();
            assert_eq!((response.request_id, response.status), (request_id, ResponseStatus::Busy));
        }
        // Every question answered: the node closes the connection.
        assert!(matches!(receiver.recv().await, Err(ClientError::Closed)));
        handle.shutdown();
    });
}

/// Many frames of mixed sizes (small ones coalesced, large batches sent as
/// their own iovecs, writes cut short by the kernel) arrive complete and in
/// order.
#[test]
fn a_link_delivers_mixed_frames_in_order_and_intact() {
    run(async {
        let (handle, mut inbound) = start_listener(loopback(), 2, ListenerRole::Peers);
        let queue_frames_max = 64;
        let link = link_to(handle.local_addr(), |config| config.queue_frames_max = queue_frames_max);
        let count = 600u64;
        let message = |i: u64| {
            // Every third frame is an append, the others heartbeats.
            if !i.is_multiple_of(3) {
                return heartbeat(i);
            }
            {
                // Sizes from tiny to 300 KiB, with contents tied to `i`.
                let size = ((i * 7919) % 300_000) as usize;
                let data = Bytes::from((0..size).map(|b| (b as u64 ^ i) as u8).collect::<Vec<u8>>());
                let batch = EntryBatch::encode(&[Entry { index: i + 1, term: 1, kind: EntryKind::Normal, data }]);
                let append = AppendRequest { prev_index: i, prev_term: 1, commit: i, entries: Some(batch) };
                Message { from: 1, to: 2, term: 1, body: MessageBody::Append(append) }
            }
        };
        let (mut sent, mut received) = (0u64, 0u64);
        while received < count {
            if sent < count && link.stats().queued < queue_frames_max {
                link.send(5, message(sent)).unwrap();
                sent += 1;
                continue;
            }
            match next_inbound(&mut inbound).await {
                Inbound::Raft { shard_id, message: got, .. } => {
                    assert_eq!(shard_id, 5);
                    assert_eq!(got, message(received), "frame {received} differs");
                    received += 1;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        // The writer counts a write after it completes, which may be noticed
        // after the reader has already delivered its frames.
        wait_until("every frame counted as sent", || link.stats().sent_frames == count).await;
        let stats = link.stats();
        assert_eq!((stats.dropped_queue_full, stats.lost_on_disconnect, stats.connects), (0, 0, 1), "{stats:?}");
        link.close();
        handle.shutdown();
    });
}

#[test]
fn link_reconnects_after_the_peer_restarts() {
    run(async {
        let (first, mut inbound) = start_listener(loopback(), 2, ListenerRole::Peers);
        let addr = first.local_addr();
        let link = link_to(addr, |_| {});
        link.send(0, heartbeat(1)).unwrap();
        match next_inbound(&mut inbound).await {
            Inbound::Raft { from_node, shard_id, message } => {
                assert_eq!((from_node, shard_id), (1, 0));
                assert_eq!(message, heartbeat(1));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(link.stats().connects, 1);

        // The peer goes away...
        first.shutdown();
        wait_until("the link notices", || !link.stats().connected).await;

        // ...and comes back on the same port.
        let (second, mut inbound) = rebind(addr).await;
        // Messages sent while the link reconnects may be lost (Raft retries),
        // so keep sending until one arrives.
        let mut context = 100;
        let received = loop {
            context += 1;
            let _ = link.send(0, heartbeat(context));
            match tokio::time::timeout(Duration::from_millis(20), inbound.recv()).await {
                Ok(Some(Inbound::Raft { message, .. })) => break message,
                Ok(other) => panic!("unexpected {other:?}"),
                Err(_) => assert!(context < 100 + 500, "no message after the restart"),
            }
        };
        assert!(matches!(received.body, MessageBody::Heartbeat { read_context, .. } if read_context > 100));
        assert!(link.stats().connects >= 2, "{:?}", link.stats());
        link.close();
        second.shutdown();
    });
}

/// A link waiting out a long reconnect backoff tries at once when told the
/// peer is up (the node tells it when the peer's messages arrive): a node
/// that had been alone answered a returning peer only after up to the
/// backoff's maximum.
#[test]
fn a_link_told_its_peer_is_up_reconnects_without_waiting_out_its_backoff() {
    run(async {
        // A port nothing listens on yet.
        let addr = {
            let (probe, _) = start_listener(loopback(), 2, ListenerRole::Peers);
            let addr = probe.local_addr();
            probe.shutdown();
            addr
        };
        let link = link_to(addr, |config| {
            config.backoff_min = Duration::from_secs(8);
            config.backoff_max = Duration::from_secs(8);
        });
        // Its first attempt is refused; it now sleeps 4 to 8 s.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!link.stats().connected);
        let (listener, _inbound) = rebind(addr).await;
        let told = Instant::now();
        link.peer_is_up();
        while !link.stats().connected {
            assert!(
                told.elapsed() < Duration::from_secs(2),
                "still waiting out the backoff after {:?}",
                told.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        link.close();
        listener.shutdown();
    });
}

/// Node 2's peer listener on `addr` again, once the port is free.
async fn rebind(addr: SocketAddr) -> (ListenerHandle, mpsc::Receiver<Inbound>) {
    let deadline = Instant::now() + WAIT;
    loop {
        match Listener::bind(ListenerConfig::peers(addr, security(2))) {
            Ok(listener) => {
                let (sender, receiver) = mpsc::channel(1024);
                return (listener.spawn(sender), receiver);
            }
            Err(ListenError::AddrInUse { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await
            }
            Err(error) => panic!("rebind failed: {error}"),
        }
    }
}

fn big_append(index: u64) -> Message {
    let entries = [Entry { index, term: 1, kind: EntryKind::Normal, data: Bytes::from(vec![7u8; 64 << 10]) }];
    let batch = EntryBatch::encode(&entries);
    Message {
        from: 1,
        to: 2,
        term: 1,
        body: MessageBody::Append(AppendRequest {
            prev_index: index - 1,
            prev_term: 1,
            commit: 0,
            entries: Some(batch),
        }),
    }
}

/// A peer that accepts the handshake and then never reads again.
fn spawn_stalled_peer() -> (SocketAddr, std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>) {
    let listener = std::net::TcpListener::bind(loopback()).unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let (mut socket, _) = listener.accept().unwrap();
        let mut header = [0u8; FRAME_HEADER_SIZE];
        socket.read_exact(&mut header).unwrap();
        let body_length = u32::from_le_bytes(header[20..24].try_into().unwrap()) as usize;
        let mut frame = header.to_vec();
        frame.resize(FRAME_HEADER_SIZE + body_length, 0);
        socket.read_exact(&mut frame[FRAME_HEADER_SIZE..]).unwrap();
        let (raw, _) = decode_raw(&Bytes::from(frame), &Limits::default()).unwrap();
        assert!(matches!(Frame::decode(raw).unwrap().payload, Payload::Handshake(_)));
        let accept = Frame {
            cluster_id: CLUSTER,
            shard_id: 0,
            payload: Payload::HandshakeAccept(HandshakeAccept {
                node_id: 2,
                protocol_version: u16::from(PROTOCOL_VERSION),
                shards: 1,
            }),
        };
        socket.write_all(&accept.to_bytes()).unwrap();
        let _ = stopped.recv_timeout(Duration::from_secs(30));
    });
    (addr, stop, thread)
}

#[test]
fn a_peer_that_stops_reading_fills_the_bounded_queue_and_messages_are_dropped_and_counted() {
    let (addr, stop, thread) = spawn_stalled_peer();
    run(async {
        let queue_frames_max = 16;
        let link = link_to(addr, |config| config.queue_frames_max = queue_frames_max);
        wait_until("connected", || link.stats().connected).await;
        let mut refused = 0u64;
        let mut sent = 0u64;
        // Each message is 64 KiB: the socket buffers fill after some megabytes.
        while refused < 10 {
            sent += 1;
            assert!(sent < 5000, "the queue never filled: {:?}", link.stats());
            match link.send(0, big_append(sent)) {
                Ok(()) => {}
                Err(net::SendError::QueueFull) => refused += 1,
                Err(error) => panic!("{error}"),
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        let stats = link.stats();
        assert_eq!(stats.dropped_queue_full, refused, "{stats:?}");
        assert_eq!(stats.queued, queue_frames_max, "{stats:?}");
        assert!(stats.connected, "back-pressure is not a disconnect: {stats:?}");
        assert!(stats.sent_frames + (queue_frames_max as u64) + refused <= sent, "{stats:?}");
        link.close();
    });
    stop.send(()).unwrap();
    thread.join().unwrap();
}

#[test]
fn handshakes_with_a_wrong_cluster_or_token_are_refused_with_a_reason() {
    run(async {
        let (handle, _inbound) = start_listener(loopback(), 7, ListenerRole::Clients);
        let addr = handle.local_addr();

        let wrong_cluster = ClientConfig::new(CLUSTER + 1, Bytes::from_static(TOKEN));
        match ClientConnection::connect(addr, &wrong_cluster).await {
            Err(ClientError::Handshake(HandshakeError::Refused { reason, .. })) => {
                assert_eq!(reason, RefusalReason::ClusterMismatch)
            }
            Err(other) => panic!("unexpected error {other}"),
            Ok(_) => panic!("a wrong cluster id was accepted"),
        }
        let wrong_token = ClientConfig::new(CLUSTER, Bytes::from_static(b"correct horse battery stapler"));
        match ClientConnection::connect(addr, &wrong_token).await {
            Err(ClientError::Handshake(HandshakeError::Refused { reason, .. })) => {
                assert_eq!(reason, RefusalReason::BadToken)
            }
            Err(other) => panic!("unexpected error {other}"),
            Ok(_) => panic!("a wrong token was accepted"),
        }

        wait_until("refused connections closed", || handle.connection_count() == 0).await;
        let stats = handle.stats();
        assert_eq!((stats.accepted, stats.refused), (2, 2), "{stats:?}");
        assert_eq!(stats.refused_for(RefusalReason::ClusterMismatch), 1, "{stats:?}");
        assert_eq!(stats.refused_for(RefusalReason::BadToken), 1, "{stats:?}");
        handle.shutdown();

        // A link with the wrong token keeps being refused and never connects.
        let (peers, _inbound) = start_listener(loopback(), 2, ListenerRole::Peers);
        let wrong = NodeSecurity::plaintext(CLUSTER, 1, Bytes::from_static(b"nope"));
        let link = link_to(peers.local_addr(), |config| config.security = wrong);
        wait_until("two refusals", || link.stats().handshake_refusals >= 2).await;
        assert_eq!(link.stats().connects, 0);
        link.close();
        // The refused connections are closed by the listener and counted.
        wait_until("refused connections closed", || peers.connection_count() == 0).await;
        let stats = peers.stats();
        assert_eq!(stats.accepted, stats.refused, "{stats:?}");
        assert_eq!(stats.refused_for(RefusalReason::BadToken), stats.refused, "{stats:?}");
        peers.shutdown();
    });
}

#[test]
fn binding_a_port_in_use_is_a_clear_error() {
    run(async {
        let (handle, _inbound) = start_listener(loopback(), 1, ListenerRole::Clients);
        match Listener::bind(ListenerConfig::clients(handle.local_addr(), security(1))) {
            Err(ListenError::AddrInUse { addr }) => assert_eq!(addr, handle.local_addr()),
            Err(other) => panic!("unexpected error {other}"),
            Ok(_) => panic!("a second listener bound the same port"),
        }
        handle.shutdown();

        // Also when the port's holder is a tokio-uring listener, which sets
        // SO_REUSEPORT (with which a plain second bind would succeed).
        let holder = tokio_uring::net::TcpListener::bind(loopback()).unwrap();
        let addr = holder.local_addr().unwrap();
        let error = Listener::bind(ListenerConfig::peers(addr, security(1))).err().expect("bind must fail");
        assert!(matches!(error, ListenError::AddrInUse { .. }), "{error}");
        assert!(error.to_string().contains("already in use"), "{error}");
    });
}

#[test]
fn a_connection_sending_garbage_is_closed_and_others_are_served() {
    run(async {
        let (handle, mut inbound) = start_listener(loopback(), 7, ListenerRole::Clients);
        let addr = handle.local_addr();
        // Not this protocol at all.
        let mut garbage = std::net::TcpStream::connect(addr).unwrap();
        garbage.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nxxxxxxxxxxxxxxxx").unwrap();
        garbage.set_read_timeout(Some(Duration::from_millis(100))).unwrap();

        let mut client =
            ClientConnection::connect(addr, &ClientConfig::new(CLUSTER, Bytes::from_static(TOKEN))).await.unwrap();
        let request = ClientRequest { request_id: 1, client_id: 1, sequence: 1, ack: 1, body: RequestBody::Status };
        client.send(0, &request).await.unwrap();
        let Inbound::Request { request, reply, .. } = next_inbound(&mut inbound).await else { panic!("not a request") };
        assert_eq!(request.body, RequestBody::Status);
        reply.send(ResponseStatus::Ok(Bytes::from_static(b"{}"))).unwrap();
        assert_eq!(client.recv().await.unwrap().request_id, 1);

        // The garbage connection got a refusal frame and then end of stream.
        let mut answer = Vec::new();
        let deadline = Instant::now() + WAIT;
        loop {
            let mut chunk = [0u8; 256];
            match garbage.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => answer.extend_from_slice(&chunk[..n]),
                Err(_) => {
                    assert!(Instant::now() < deadline, "garbage connection never closed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
        let (raw, _) = decode_raw(&Bytes::from(answer), &Limits::default()).unwrap();
        match Frame::decode(raw).unwrap().payload {
            Payload::HandshakeRefuse(refusal) => assert_eq!(refusal.reason, RefusalReason::Malformed),
            other => panic!("unexpected {other:?}"),
        }
        handle.shutdown();
    });
}

/// Reads from a blocking socket until end of stream, within the test deadline.
fn read_to_end_within(socket: &mut std::net::TcpStream, deadline: Duration) -> Vec<u8> {
    socket.set_read_timeout(Some(deadline)).unwrap();
    let mut received = Vec::new();
    socket.read_to_end(&mut received).expect("the listener should close the connection in time");
    received
}

#[test]
fn a_caller_that_never_sends_its_handshake_is_dropped() {
    run(async {
        let mut config = ListenerConfig::clients(loopback(), security(7));
        config.handshake_timeout = Duration::from_millis(100);
        let listener = Listener::bind(config).unwrap();
        let (sender, _inbound) = mpsc::channel(16);
        let handle = listener.spawn(sender);
        let addr = handle.local_addr();
        let waiter = std::thread::spawn(move || {
            let mut silent = std::net::TcpStream::connect(addr).unwrap();
            read_to_end_within(&mut silent, WAIT)
        });
        wait_until("the silent caller is dropped", || waiter.is_finished()).await;
        assert!(waiter.join().unwrap().is_empty(), "a silent caller gets no frame");
        assert_eq!(handle.stats().handshake_timeouts, 1, "{:?}", handle.stats());
        let refusals = handle.recent_refusals();
        assert!(
            matches!(refusals[..], [net::RefusalRecord { refusal: net::Refusal::HandshakeTimeout(_), .. }]),
            "{refusals:?}"
        );
        handle.shutdown();
    });
}

#[test]
fn a_peer_frame_for_another_cluster_closes_the_connection() {
    run(async {
        let (handle, mut inbound) = start_listener(loopback(), 2, ListenerRole::Peers);
        let addr = handle.local_addr();
        let sender = std::thread::spawn(move || {
            let mut socket = std::net::TcpStream::connect(addr).unwrap();
            let handshake = net::Handshake {
                cluster_id: CLUSTER,
                node_id: 1,
                role: net::Role::Peer,
                protocol_version: u16::from(PROTOCOL_VERSION),
                token: Bytes::from_static(TOKEN),
                history: net::History::FRESH,
            };
            let frames = [
                Frame { cluster_id: CLUSTER, shard_id: 0, payload: Payload::Handshake(handshake) },
                Frame { cluster_id: CLUSTER, shard_id: 0, payload: Payload::Raft(heartbeat(1)) },
                Frame { cluster_id: CLUSTER + 1, shard_id: 0, payload: Payload::Raft(heartbeat(2)) },
                Frame { cluster_id: CLUSTER, shard_id: 0, payload: Payload::Raft(heartbeat(3)) },
            ];
            for frame in &frames {
                socket.write_all(&frame.to_bytes()).unwrap();
            }
            read_to_end_within(&mut socket, WAIT)
        });
        // The good frame before the bad one is delivered; nothing after it.
        match next_inbound(&mut inbound).await {
            Inbound::Raft { message, .. } => assert_eq!(message, heartbeat(1)),
            other => panic!("unexpected {other:?}"),
        }
        wait_until("the connection is closed", || sender.is_finished()).await;
        let answer = sender.join().unwrap();
        let (raw, used) = decode_raw(&Bytes::from(answer.clone()), &Limits::default()).unwrap();
        assert!(matches!(Frame::decode(raw).unwrap().payload, Payload::HandshakeAccept(_)));
        assert_eq!(used, answer.len(), "nothing but the accept frame was sent");
        assert!(tokio::time::timeout(Duration::from_millis(50), inbound.recv()).await.is_err());
        assert_eq!(handle.stats().failed, 1, "{:?}", handle.stats());
        handle.shutdown();
    });
}

/// A peer that runs another shard count is not linked to: a key's shard
/// depends on the count, so two nodes that disagree about it would put one
/// key's writes in two groups. The link closes the connection as soon as
/// the accept frame tells the peer's count and retries like a refused
/// handshake; a peer with the same count (or one that does not say) links.
#[test]
fn a_link_refuses_a_peer_with_another_shard_count() {
    run(async {
        let listener_with = |shards: u32| {
            let mut config = ListenerConfig::new(loopback(), ListenerRole::Peers, security(2));
            config.shards = shards;
            let (sender, receiver) = mpsc::channel(1024);
            (Listener::bind(config).expect("bind").spawn(sender), receiver)
        };
        let (other, mut other_inbound) = listener_with(2);
        let link = link_to(other.local_addr(), |config| config.shards = 4);
        link.send(0, heartbeat(1)).unwrap();
        wait_until("the mismatch is noticed twice", || link.stats().shard_count_mismatches >= 2).await;
        let stats = link.stats();
        assert_eq!((stats.connects, stats.connected, stats.sent_frames), (0, false, 0), "{stats:?}");
        assert!(other_inbound.try_recv().is_err(), "a message reached a peer with another shard count");
        let problem = link.problem().unwrap_or_default();
        assert!(problem.contains("the peer runs 2 shard(s) and this node 4"), "{problem}");
        link.close();
        other.shutdown();

        for peer_says in [4, 0] {
            let (same, mut inbound) = listener_with(peer_says);
            let link = link_to(same.local_addr(), |config| config.shards = 4);
            link.send(0, heartbeat(1)).unwrap();
            match next_inbound(&mut inbound).await {
                Inbound::Raft { message, .. } => assert_eq!(message, heartbeat(1)),
                other => panic!("unexpected {other:?}"),
            }
            assert_eq!(link.stats().shard_count_mismatches, 0);
            assert_eq!(link.problem(), None, "a link that is up has no problem");
            link.close();
            same.shutdown();
        }
    });
}
