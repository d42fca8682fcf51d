//! The listener's bounds on loopback: the connection cap, a client that
//! pipelines requests and never reads its answers, the handshake timeout
//! (with TLS) and the idle timeout. Each bound holds while the listener goes
//! on serving well-behaved callers.

mod support;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use net::{
    ClientConfig, ClientConnection, ClientError, ClientRequest, Frame, Handshake, HandshakeError, Inbound,
    ListenerConfig, NodeSecurity, Payload, Refusal, RefusalReason, RequestBody, ResponseStatus, Role, PROTOCOL_VERSION,
};
use support::*;
use tokio::sync::mpsc;

const TOKEN: &[u8] = b"bounds test token";

fn plaintext(node_id: u64) -> NodeSecurity {
    NodeSecurity::plaintext(CLUSTER, node_id, Bytes::from_static(TOKEN))
}

fn status(request_id: u64) -> ClientRequest {
    ClientRequest::plain(request_id, RequestBody::Status)
}

/// Answers every request at once with `answer`, counting them.
fn answer_everything(mut inbound: mpsc::Receiver<Inbound>, answer: Bytes) -> Arc<AtomicU64> {
    let delivered = Arc::new(AtomicU64::new(0));
    let counter = delivered.clone();
    tokio_uring::spawn(async move {
        while let Some(event) = inbound.recv().await {
            if let Inbound::Request { reply, .. } = event {
                counter.fetch_add(1, Ordering::Relaxed);
                let _ = reply.send(ResponseStatus::Ok(answer.clone()));
            }
        }
    });
    delivered
}

async fn one_round_trip(addr: SocketAddr, config: &ClientConfig, request_id: u64) {
    let mut client = ClientConnection::connect(addr, config).await.expect("a well-behaved client connects");
    client.send(0, &status(request_id)).await.unwrap();
    assert_eq!(client.recv().await.unwrap().request_id, request_id);
}

#[test]
fn the_connection_cap_refuses_the_next_caller_with_overloaded_in_plaintext_and_tls() {
    let credentials = Credentials::new("cap");
    run(async {
        for (security, client) in [
            (plaintext(2), ClientConfig::new(CLUSTER, Bytes::from_static(TOKEN))),
            (credentials.node(2), credentials.client("ops")),
        ] {
            let mut config = ListenerConfig::clients(loopback(), security);
            config.connections_max = 2;
            let (handle, inbound) = start(config);
            let _delivered = answer_everything(inbound, Bytes::new());
            let addr = handle.local_addr();
            let first = ClientConnection::connect(addr, &client).await.unwrap();
            let second = ClientConnection::connect(addr, &client).await.unwrap();
            match ClientConnection::connect(addr, &client).await {
                Err(ClientError::Handshake(HandshakeError::Refused { reason, message })) => {
                    assert_eq!(reason, RefusalReason::Overloaded);
                    assert!(message.contains("bound of 2"), "{message}");
                }
                Err(other) => panic!("unexpected {other}"),
                Ok(_) => panic!("a third connection was accepted over a bound of 2"),
            }
            let stats = handle.stats();
            assert_eq!((stats.open, stats.refused_for(RefusalReason::Overloaded)), (2, 1), "{stats:?}");
            // Room again once one leaves.
            drop(first);
            wait_until("the first connection is gone", || handle.connection_count() == 1).await;
            one_round_trip(addr, &client, 3).await;
            drop(second);
            handle.shutdown();
        }
    });
}

/// A raw plaintext client (blocking, on its own thread) that pipelines
/// `Status` requests as fast as the socket takes them and never reads.
fn flood_without_reading(addr: SocketAddr, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut socket = std::net::TcpStream::connect(addr).unwrap();
        socket.set_write_timeout(Some(Duration::from_millis(100))).unwrap();
        let handshake = Handshake {
            cluster_id: CLUSTER,
            node_id: 0,
            role: Role::Client,
            protocol_version: u16::from(PROTOCOL_VERSION),
            token: Bytes::from_static(TOKEN),
            history: net::History::FRESH,
        };
        socket
            .write_all(&Frame { cluster_id: CLUSTER, shard_id: 0, payload: Payload::Handshake(handshake) }.to_bytes())
            .unwrap();
        let mut accept = [0u8; 48];
        socket.read_exact(&mut accept).unwrap();
        let mut batch = Vec::new();
        let mut sent = 0u64;
        while !stop.load(Ordering::Relaxed) {
            batch.clear();
            for request_id in sent..sent + 64 {
                let frame = Frame { cluster_id: CLUSTER, shard_id: 0, payload: Payload::Request(status(request_id)) };
                batch.extend_from_slice(&frame.to_bytes());
            }
            match socket.write_all(&batch) {
                Ok(()) => sent += 64,
                // Blocked: the node stopped reading. A write timeout may have
                // cut a frame: from here on only wait.
                Err(_) => {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
            }
        }
        sent
    })
}

#[test]
fn a_client_that_pipelines_and_never_reads_stops_being_read_within_its_bound() {
    run(async {
        let requests_outstanding_max = 8;
        let mut config = ListenerConfig::clients(loopback(), plaintext(2));
        config.requests_outstanding_max = requests_outstanding_max;
        config.dead_peer_timeout = Duration::from_secs(60);
        let (handle, inbound) = start(config);
        let addr = handle.local_addr();
        // Large answers fill the socket buffers quickly.
        let delivered = answer_everything(inbound, Bytes::from(vec![7u8; 64 << 10]));
        let stop = Arc::new(AtomicBool::new(false));
        let flooder = flood_without_reading(addr, stop.clone());

        // The answers fill the kernel's socket buffers (some megabytes on
        // loopback); from then on the connection stays at its bound.
        let mut last = (u64::MAX, Instant::now());
        wait_until("the flooding connection settles at its bound", || {
            let now = delivered.load(Ordering::Relaxed);
            if now != last.0 {
                last = (now, Instant::now());
            }
            handle.stats().connections_paused == 1 && last.1.elapsed() > Duration::from_millis(300)
        })
        .await;
        // While paused, nothing more is read from it: the count of delivered
        // requests stands still, and the listener holds at most the bound.
        let before = delivered.load(Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_millis(500);
        while Instant::now() < deadline {
            let stats = handle.stats();
            assert!(stats.requests_outstanding + stats.responses_queued <= requests_outstanding_max, "{stats:?}");
            assert!(stats.request_bytes_outstanding <= requests_outstanding_max * 64, "{stats:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let stats = handle.stats();
        assert_eq!(stats.connections_paused, 1, "{stats:?}");
        assert_eq!(stats.responses_queued, requests_outstanding_max, "{stats:?}");
        assert_eq!(delivered.load(Ordering::Relaxed), before, "the paused connection was read");
        // The listener serves others meanwhile.
        one_round_trip(addr, &ClientConfig::new(CLUSTER, Bytes::from_static(TOKEN)), 1).await;

        stop.store(true, Ordering::Relaxed);
        wait_until("the flooder stops", || flooder.is_finished()).await;
        let sent = flooder.join().unwrap();
        assert!(before < sent, "delivered {before} of {sent}: the client was not held back");
        wait_until("the flooder's connection is closed", || handle.connection_count() == 0).await;
        handle.shutdown();
    });
}

#[test]
fn a_tls_caller_that_stalls_in_the_handshake_is_dropped_in_time() {
    let credentials = Credentials::new("stall");
    run(async {
        let mut config = ListenerConfig::peers(loopback(), credentials.node(2));
        config.handshake_timeout = Duration::from_millis(200);
        let (handle, _inbound) = start(config);
        let addr = handle.local_addr();
        let stalled = std::thread::spawn(move || {
            let mut socket = std::net::TcpStream::connect(addr).unwrap();
            // The start of a TLS handshake record, and then nothing.
            socket.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).unwrap();
            socket.set_read_timeout(Some(WAIT)).unwrap();
            let mut rest = Vec::new();
            socket.read_to_end(&mut rest).map(|_| rest.len())
        });
        wait_until("the stalled caller is dropped", || stalled.is_finished()).await;
        assert_eq!(stalled.join().unwrap().expect("closed, not timed out"), 0);
        assert_eq!(handle.stats().handshake_timeouts, 1);
        assert_eq!(refusals(&handle), vec![Refusal::HandshakeTimeout(Duration::from_millis(200))]);
        wait_until("its connection is released", || handle.connection_count() == 0).await;
        handle.shutdown();
    });
}

#[test]
fn an_idle_client_is_closed_but_one_waiting_for_an_answer_is_not() {
    run(async {
        let mut config = ListenerConfig::clients(loopback(), plaintext(2));
        config.idle_timeout = Some(Duration::from_millis(200));
        let (handle, mut inbound) = start(config);
        let addr = handle.local_addr();
        let client_config = ClientConfig::new(CLUSTER, Bytes::from_static(TOKEN));
        let mut idle = ClientConnection::connect(addr, &client_config).await.unwrap();
        let mut waiting = ClientConnection::connect(addr, &client_config).await.unwrap();
        waiting.send(0, &status(1)).await.unwrap();
        let Inbound::Request { reply, .. } = next_inbound(&mut inbound).await else { panic!("not a request") };
        // The idle one is closed...
        assert!(matches!(idle.recv().await, Err(ClientError::Closed)));
        // ...while the one with a request outstanding stays, well past the
        // timeout, and gets its answer.
        tokio::time::sleep(Duration::from_millis(600)).await;
        reply.send(ResponseStatus::Ok(Bytes::from_static(b"late"))).unwrap();
        let response = waiting.recv().await.unwrap();
        assert_eq!((response.request_id, response.status), (1, ResponseStatus::Ok(Bytes::from_static(b"late"))));
        // Then it idles too.
        assert!(matches!(waiting.recv().await, Err(ClientError::Closed)));
        assert_eq!(handle.stats().idle_closed, 2);
        handle.shutdown();
    });
}

#[test]
fn a_dropped_reply_answers_timed_out_instead_of_nothing() {
    run(async {
        let (handle, mut inbound) = start(ListenerConfig::clients(loopback(), plaintext(2)));
        let mut client =
            ClientConnection::connect(handle.local_addr(), &ClientConfig::new(CLUSTER, Bytes::from_static(TOKEN)))
                .await
                .unwrap();
        client.send(0, &status(5)).await.unwrap();
        let Inbound::Request { reply, .. } = next_inbound(&mut inbound).await else { panic!("not a request") };
        drop(reply);
        let response = client.recv().await.unwrap();
        assert_eq!((response.request_id, response.status), (5, ResponseStatus::TimedOut));
        assert_eq!(handle.stats().requests_outstanding, 0);
        handle.shutdown();
    });
}

/// An answer that carries the largest value the key-value store keeps
/// (`net::kv::VALUE_SIZE_MAX`, reached by `APPEND`) fits the frame bound a
/// client reads with: it was 16 MiB for the whole frame, so such a value
/// could be written but never read back through the native protocol.
#[test]
fn an_answer_with_the_largest_value_is_read() {
    run(async {
        let (handle, inbound) = start(ListenerConfig::clients(loopback(), plaintext(2)));
        let value = net::kv::KvResponse::Value(Some(Bytes::from(vec![7u8; net::kv::VALUE_SIZE_MAX]))).encode();
        let _delivered = answer_everything(inbound, value.clone());
        let config = ClientConfig::new(CLUSTER, Bytes::from_static(TOKEN));
        let mut client = ClientConnection::connect(handle.local_addr(), &config).await.unwrap();
        client.send(0, &status(1)).await.unwrap();
        let response = client.recv().await.expect("the answer is read");
        assert_eq!(response.status, ResponseStatus::Ok(value));
        handle.shutdown();
    });
}
