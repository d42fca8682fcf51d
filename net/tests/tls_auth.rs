//! TLS and authentication on loopback: mutual TLS between nodes with the node
//! id bound to the certificate, client identities and roles, and every
//! refused case refused with a typed reason (counted and kept by the
//! listener) while the listener keeps serving the callers it should.

mod support;

use std::time::Duration;

use bytes::Bytes;
use engine::{Message, MessageBody};
use net::tls::Validity;
use net::{
    ClientConfig, ClientConnection, ClientError, ClientName, ClientRequest, ClientTls, ClientTlsFiles,
    CredentialsError, HandshakeError, Identity, Inbound, Link, LinkConfig, ListenerRole, NodeName, NodeSecurity,
    NodeSecurityConfig, NodeTlsFiles, Payload, ReadConsistency, Refusal, RefusalReason, RequestBody, ResponseStatus,
    Roles, TlsFailure,
};
use support::*;

fn heartbeat(from: u64, to: u64) -> Message {
    Message { from, to, term: 3, body: MessageBody::Heartbeat { commit: 0, read_context: 7 } }
}

fn link(security: NodeSecurity, peer_id: u64, addr: std::net::SocketAddr) -> Link {
    let mut config = LinkConfig::new(security, peer_id, addr);
    config.backoff_min = Duration::from_millis(5);
    config.backoff_max = Duration::from_millis(50);
    Link::spawn(config)
}

fn refused_with(result: Result<ClientConnection, ClientError>) -> RefusalReason {
    match result {
        Err(ClientError::Handshake(HandshakeError::Refused { reason, .. })) => reason,
        Err(other) => panic!("expected a refusal frame, got {other}"),
        Ok(_) => panic!("the connection was accepted"),
    }
}

fn status_request(request_id: u64) -> ClientRequest {
    ClientRequest::plain(request_id, RequestBody::Status)
}

/// Checks that the listener still serves a good client after refusals.
async fn still_serves_clients(
    addr: std::net::SocketAddr,
    config: &ClientConfig,
    inbound: &mut tokio::sync::mpsc::Receiver<Inbound>,
) {
    let mut client = ClientConnection::connect(addr, config).await.expect("a good client connects");
    client.send(0, &status_request(99)).await.unwrap();
    let Inbound::Request { reply, .. } = next_inbound(inbound).await else { panic!("not a request") };
    reply.send(ResponseStatus::Ok(Bytes::from_static(b"{}"))).unwrap();
    assert_eq!(client.recv().await.unwrap().request_id, 99);
}

#[test]
fn mutual_tls_links_deliver_messages_from_the_node_their_certificate_names() {
    let credentials = Credentials::new("mutual");
    run(async {
        let (peers, mut inbound) = listener(ListenerRole::Peers, credentials.node(2));
        let link = link(credentials.node(1), 2, peers.local_addr());
        link.send(4, heartbeat(1, 2)).unwrap();
        match next_inbound(&mut inbound).await {
            Inbound::Raft { from_node, shard_id, message } => {
                assert_eq!((from_node, shard_id), (1, 4));
                assert_eq!(message, heartbeat(1, 2));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(link.stats().connected);
        assert_eq!(peers.stats().refused, 0);
        link.close();
        peers.shutdown();
    });
}

/// Frames from a few bytes to 300 KiB, many coalesced into one write, cross
/// a TLS link complete and in order (records split frames and frames split
/// records), and pipelined client requests get large answers back.
#[test]
fn small_and_large_frames_cross_tls_intact_and_in_order() {
    use engine::{AppendRequest, Entry, EntryBatch, EntryKind};
    let credentials = Credentials::new("sizes");
    run(async {
        let (peers, mut inbound) = listener(ListenerRole::Peers, credentials.node(2));
        let mut config = LinkConfig::new(credentials.node(1), 2, peers.local_addr());
        config.queue_frames_max = 64;
        let link = Link::spawn(config);
        let message = |i: u64| {
            if !i.is_multiple_of(3) {
                return heartbeat(1, 2);
            }
            let size = ((i * 7919) % 300_000) as usize;
            let data = Bytes::from((0..size).map(|b| (b as u64 ^ i) as u8).collect::<Vec<u8>>());
            let batch = EntryBatch::encode(&[Entry { index: i + 1, term: 1, kind: EntryKind::Normal, data }]);
            let append = AppendRequest { prev_index: i, prev_term: 1, commit: i, entries: Some(batch) };
            Message { from: 1, to: 2, term: 1, body: MessageBody::Append(append) }
        };
        let count = 300u64;
        let (mut sent, mut received) = (0u64, 0u64);
        while received < count {
            if sent < count && link.stats().queued < 64 {
                link.send(5, message(sent)).unwrap();
                sent += 1;
                continue;
            }
            let Inbound::Raft { message: got, .. } = next_inbound(&mut inbound).await else { panic!("not Raft") };
            assert_eq!(got, message(received), "frame {received} differs");
            received += 1;
        }
        assert_eq!(link.stats().connects, 1);
        link.close();
        peers.shutdown();

        let (clients, mut inbound) = listener(ListenerRole::Clients, credentials.node(2));
        let mut client = ClientConnection::connect(clients.local_addr(), &credentials.client("ops")).await.unwrap();
        for request_id in 0..20 {
            client.queue(0, &status_request(request_id));
        }
        client.flush().await.unwrap();
        for _ in 0..20 {
            let Inbound::Request { request, reply, .. } = next_inbound(&mut inbound).await else {
                panic!("not a request")
            };
            let answer = vec![request.request_id as u8; 100_000 + request.request_id as usize];
            reply.send(ResponseStatus::Ok(Bytes::from(answer))).unwrap();
        }
        for request_id in 0..20u64 {
            let response = client.recv().await.unwrap();
            assert_eq!(response.request_id, request_id);
            let ResponseStatus::Ok(answer) = response.status else { panic!("{:?}", response.status) };
            assert_eq!(answer.len(), 100_000 + request_id as usize);
            assert!(answer.iter().all(|byte| *byte == request_id as u8));
        }
        clients.shutdown();
    });
}

/// A TLS client that closes its sending side (no close_notify, just the TCP
/// end of stream) still gets the answers to what it asked.
#[test]
fn a_tls_client_that_finished_sending_still_gets_every_answer() {
    let credentials = Credentials::new("half-close");
    run(async {
        let (clients, mut inbound) = listener(ListenerRole::Clients, credentials.node(2));
        let client = ClientConnection::connect(clients.local_addr(), &credentials.client("ops")).await.unwrap();
        let (mut sender, mut receiver) = client.split();
        for request_id in 0..5 {
            sender.queue(0, &status_request(request_id));
        }
        sender.flush().await.unwrap();
        sender.finish().unwrap();
        let mut replies = Vec::new();
        for _ in 0..5 {
            let Inbound::Request { reply, .. } = next_inbound(&mut inbound).await else { panic!("not a request") };
            replies.push(reply);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        for reply in replies {
            reply.send(ResponseStatus::Busy).unwrap();
        }
        for request_id in 0..5 {
            let response = receiver.recv().await.unwrap();
            assert_eq!((response.request_id, response.status), (request_id, ResponseStatus::Busy));
        }
        assert!(matches!(receiver.recv().await, Err(ClientError::Closed)));
        assert_eq!(clients.stats().failed, 0, "{:?}", clients.stats());
        clients.shutdown();
    });
}

#[test]
fn a_peer_certificate_claiming_another_node_id_is_refused() {
    let credentials = Credentials::new("claim");
    run(async {
        let (peers, mut inbound) = listener(ListenerRole::Peers, credentials.node(2));
        let addr = peers.local_addr();
        // Node 3's genuine certificate, with a handshake that claims node 1.
        let node3 = credentials.certificates.nodes[&3].clone();
        let caller = std::thread::spawn(move || {
            hostile_tls_call(addr, &node3.certificate, &node3.private_key, peer_handshake(1))
        });
        wait_until("the impostor is answered", || caller.is_finished()).await;
        match caller.join().unwrap() {
            HostileOutcome::Answer(Payload::HandshakeRefuse(refusal)) => {
                assert_eq!(refusal.reason, RefusalReason::IdentityMismatch);
                assert!(refusal.message.contains("raft-node://42/3"), "{}", refusal.message);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(peers.stats().refused_for(RefusalReason::IdentityMismatch), 1);
        assert!(matches!(&refusals(&peers)[..], [Refusal::Handshake { reason: RefusalReason::IdentityMismatch, .. }]));
        // The real node 1 still gets in.
        let link = link(credentials.node(1), 2, addr);
        link.send(0, heartbeat(1, 2)).unwrap();
        assert!(matches!(next_inbound(&mut inbound).await, Inbound::Raft { from_node: 1, .. }));
        link.close();
        peers.shutdown();
    });
}

#[test]
fn a_link_refuses_an_acceptor_that_is_not_the_node_it_dialled() {
    let credentials = Credentials::new("dialled");
    run(async {
        // Node 2 listens; node 1 thinks node 3 lives there.
        let (peers, _inbound) = listener(ListenerRole::Peers, credentials.node(2));
        let link = link(credentials.node(1), 3, peers.local_addr());
        wait_until("two failed connects", || link.stats().handshake_refusals >= 2).await;
        assert_eq!(link.stats().connects, 0, "{:?}", link.stats());
        link.close();
        // The acceptor saw its certificate refused by the caller.
        let seen = refusals(&peers);
        assert!(seen.iter().all(|refusal| matches!(refusal, Refusal::Tls(TlsFailure::RemoteRefused(_)))), "{seen:?}");
        peers.shutdown();

        // Without TLS the accept frame names the node: the same mistake is caught.
        let token = Bytes::from_static(b"plaintext peer token");
        let (plain, _inbound) = listener(ListenerRole::Peers, NodeSecurity::plaintext(CLUSTER, 2, token.clone()));
        let link = self::link(NodeSecurity::plaintext(CLUSTER, 1, token), 3, plain.local_addr());
        wait_until("two failed connects", || link.stats().handshake_refusals >= 2).await;
        assert_eq!(link.stats().connects, 0);
        link.close();
        plain.shutdown();
    });
}

#[test]
fn certificates_from_another_ca_are_refused_both_ways() {
    let credentials = Credentials::new("ca-ours");
    let strangers = Credentials::new("ca-theirs");
    run(async {
        let (peers, mut inbound) = listener(ListenerRole::Peers, credentials.node(2));
        let addr = peers.local_addr();
        // A caller whose node certificate another CA signed.
        let foreign = strangers.certificates.nodes[&1].clone();
        let caller = std::thread::spawn(move || {
            hostile_tls_call(addr, &foreign.certificate, &foreign.private_key, peer_handshake(1))
        });
        wait_until("the foreign caller is refused", || caller.is_finished()).await;
        match caller.join().unwrap() {
            HostileOutcome::TlsError(error) => assert!(error.contains("UnknownCA"), "{error}"),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(refusals(&peers), vec![Refusal::Tls(TlsFailure::UnknownIssuer)]);

        // A node of the other cluster's CA does not trust ours either: its
        // link fails on our certificate, typed on its side.
        let link = link(strangers.node(1), 2, addr);
        wait_until("the stranger's link fails", || link.stats().handshake_refusals >= 1).await;
        assert_eq!(link.stats().connects, 0);
        link.close();

        // And a client with a certificate from another client CA.
        let (clients, mut client_inbound) = listener(ListenerRole::Clients, credentials.node(2));
        let result = ClientConnection::connect(clients.local_addr(), &strangers.client("ops")).await;
        assert!(matches!(result, Err(ClientError::Handshake(HandshakeError::Tls(_)))), "{:?}", result.err());
        wait_until("the client refusal is recorded", || clients.stats().tls_failures >= 1).await;

        // Meanwhile the right callers are served.
        let good = self::link(credentials.node(1), 2, addr);
        good.send(0, heartbeat(1, 2)).unwrap();
        assert!(matches!(next_inbound(&mut inbound).await, Inbound::Raft { from_node: 1, .. }));
        still_serves_clients(clients.local_addr(), &credentials.client("ops"), &mut client_inbound).await;
        good.close();
        peers.shutdown();
        clients.shutdown();
    });
}

#[test]
fn an_expired_certificate_is_refused_and_not_even_loaded() {
    let credentials = Credentials::new("expired");
    let issued =
        credentials.node_authority().issue_node(NodeName { cluster_id: CLUSTER, node_id: 1 }, expired()).unwrap();
    let (certificate, key) = credentials.write("expired-node-1", &issued);
    run(async {
        let (peers, _inbound) = listener(ListenerRole::Peers, credentials.node(2));
        let addr = peers.local_addr();
        let (c, k) = (certificate.clone(), key.clone());
        let caller = std::thread::spawn(move || hostile_tls_call(addr, &c, &k, peer_handshake(1)));
        wait_until("the expired caller is refused", || caller.is_finished()).await;
        match caller.join().unwrap() {
            HostileOutcome::TlsError(error) => assert!(error.contains("CertificateExpired"), "{error}"),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(refusals(&peers), vec![Refusal::Tls(TlsFailure::Expired)]);
        peers.shutdown();
    });
    // A node given the expired certificate refuses to start with it.
    let config = NodeSecurityConfig {
        cluster_id: CLUSTER,
        node_id: 1,
        tls: Some(NodeTlsFiles {
            node_ca: credentials.certificates.node_ca.certificate.clone(),
            client_ca: None,
            certificate,
            private_key: key,
        }),
        peer_token: None,
        client_tokens: net::ClientTokens::None,
        history: net::History::FRESH,
    };
    match NodeSecurity::load(config) {
        Err(CredentialsError::Tls { source: rustls::Error::InvalidCertificate(error), .. }) => {
            assert!(matches!(
                error,
                rustls::CertificateError::Expired | rustls::CertificateError::ExpiredContext { .. }
            ))
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn client_certificates_are_refused_on_the_peer_port_and_node_certificates_on_the_client_port() {
    let credentials = Credentials::new("crossed");
    run(async {
        let (peers, mut peer_inbound) = listener(ListenerRole::Peers, credentials.node(2));
        let (clients, mut client_inbound) = listener(ListenerRole::Clients, credentials.node(2));

        // A client certificate at the peer port: the peer port trusts only
        // the node CA, so TLS fails.
        let result = ClientConnection::connect(peers.local_addr(), &credentials.client("ops")).await;
        assert!(matches!(result, Err(ClientError::Handshake(HandshakeError::Tls(_)))), "{:?}", result.err());
        wait_until("the peer port records it", || peers.stats().tls_failures == 1).await;
        assert_eq!(refusals(&peers), vec![Refusal::Tls(TlsFailure::UnknownIssuer)]);

        // A node certificate used by a client at the client port: the client
        // port trusts only the client CA.
        let node1 = &credentials.certificates.nodes[&1];
        let files = ClientTlsFiles {
            node_ca: credentials.certificates.node_ca.certificate.clone(),
            certificate: Some(node1.certificate.clone()),
            private_key: Some(node1.private_key.clone()),
        };
        let node_as_client = ClientConfig::with_tls(CLUSTER, ClientTls::load(CLUSTER, &files).unwrap(), Bytes::new());
        let result = ClientConnection::connect(clients.local_addr(), &node_as_client).await;
        assert!(matches!(result, Err(ClientError::Handshake(HandshakeError::Tls(_)))), "{:?}", result.err());
        wait_until("the client port records it", || clients.stats().tls_failures == 1).await;
        assert_eq!(refusals(&clients), vec![Refusal::Tls(TlsFailure::UnknownIssuer)]);

        // Even if one CA signed both kinds, the identity rule refuses a
        // client name on the peer port: here the node CA signs a client URI.
        let name = ClientName { cluster_id: CLUSTER, user: "mallory".into(), roles: Roles::ALL };
        let issued = credentials.node_authority().issue_client(&name, Validity::days(1)).unwrap();
        let (certificate, key) = credentials.write("mallory", &issued);
        let addr = peers.local_addr();
        let caller = std::thread::spawn(move || hostile_tls_call(addr, &certificate, &key, peer_handshake(1)));
        wait_until("mallory is answered", || caller.is_finished()).await;
        match caller.join().unwrap() {
            HostileOutcome::Answer(Payload::HandshakeRefuse(refusal)) => {
                assert_eq!(refusal.reason, RefusalReason::IdentityMismatch);
                assert!(refusal.message.contains("a client certificate"), "{}", refusal.message);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(peers.stats().refused, 2, "{:?}", refusals(&peers));

        // Both listeners go on serving their own.
        let link = link(credentials.node(1), 2, peers.local_addr());
        link.send(0, heartbeat(1, 2)).unwrap();
        assert!(matches!(next_inbound(&mut peer_inbound).await, Inbound::Raft { from_node: 1, .. }));
        still_serves_clients(clients.local_addr(), &credentials.client("ops"), &mut client_inbound).await;
        link.close();
        peers.shutdown();
        clients.shutdown();
    });
}

/// A client told another cluster id than the node's certificate names is
/// refused with the reason in words (it printed rustls's debug form,
/// `Other(OtherError(OtherCluster { expected_cluster: .. }))`).
#[test]
fn a_client_of_another_cluster_id_is_told_in_words() {
    let credentials = Credentials::new("other-cluster");
    run(async {
        let (clients, _inbound) = listener(ListenerRole::Clients, credentials.node(2));
        let files = credentials.certificates.client_tls("ops").unwrap();
        let other = CLUSTER + 1;
        let client = ClientConfig::with_tls(other, ClientTls::load(other, &files).unwrap(), Bytes::new());
        match ClientConnection::connect(clients.local_addr(), &client).await {
            Err(ClientError::Handshake(error @ HandshakeError::ServerIdentity(_))) => {
                let text = error.to_string();
                assert!(text.contains(&format!("names node 2 of cluster {CLUSTER}, not a node of cluster {other}")));
                assert!(!text.contains("OtherError") && !text.contains('{'), "{text}");
            }
            other => panic!("not refused for the cluster: {:?}", other.err()),
        }
        clients.shutdown();
    });
}

#[test]
fn plaintext_to_a_tls_port_and_tls_to_a_plaintext_port_are_refused_with_reasons() {
    let credentials = Credentials::new("mixed");
    let token = Bytes::from_static(b"plaintext client token");
    run(async {
        let (tls_clients, mut inbound) = listener(ListenerRole::Clients, credentials.node(2));
        let plaintext = ClientConfig::new(CLUSTER, token.clone());
        assert_eq!(
            refused_with(ClientConnection::connect(tls_clients.local_addr(), &plaintext).await),
            RefusalReason::TlsRequired
        );
        assert_eq!(tls_clients.stats().refused_for(RefusalReason::TlsRequired), 1);

        let (plain_clients, _plain_inbound) =
            listener(ListenerRole::Clients, NodeSecurity::plaintext(CLUSTER, 2, token));
        let result = ClientConnection::connect(plain_clients.local_addr(), &credentials.client("ops")).await;
        assert_eq!(refused_with(result), RefusalReason::TlsUnavailable);
        assert_eq!(plain_clients.stats().refused_for(RefusalReason::TlsUnavailable), 1);

        still_serves_clients(tls_clients.local_addr(), &credentials.client("ops"), &mut inbound).await;
        tls_clients.shutdown();
        plain_clients.shutdown();
    });
}

#[test]
fn each_listener_refuses_the_other_role() {
    let token = Bytes::from_static(b"one token for everything");
    run(async {
        let security = NodeSecurity::plaintext(CLUSTER, 2, token.clone());
        let (peers, mut peer_inbound) = listener(ListenerRole::Peers, security.clone());
        let (clients, _inbound) = listener(ListenerRole::Clients, security);
        // Even holding the token, a client is refused on the peer port...
        let client = ClientConfig::new(CLUSTER, token.clone());
        assert_eq!(
            refused_with(ClientConnection::connect(peers.local_addr(), &client).await),
            RefusalReason::RoleNotAccepted
        );
        assert_eq!(peers.stats().refused_for(RefusalReason::RoleNotAccepted), 1);
        // ...and a node on the client port.
        let wrong_port = link(NodeSecurity::plaintext(CLUSTER, 1, token.clone()), 2, clients.local_addr());
        wait_until("the link is refused", || wrong_port.stats().handshake_refusals >= 1).await;
        wrong_port.close();
        assert!(clients.stats().refused_for(RefusalReason::RoleNotAccepted) >= 1);
        // The peer port serves nodes.
        let link = link(NodeSecurity::plaintext(CLUSTER, 1, token), 2, peers.local_addr());
        link.send(0, heartbeat(1, 2)).unwrap();
        assert!(matches!(next_inbound(&mut peer_inbound).await, Inbound::Raft { from_node: 1, .. }));
        link.close();
        peers.shutdown();
        clients.shutdown();
    });
}

#[test]
fn a_read_only_identity_is_delivered_with_its_requests_and_its_writes_are_forbidden() {
    let credentials = Credentials::new("identity");
    run(async {
        let (clients, mut inbound) = listener(ListenerRole::Clients, credentials.node(2));
        let addr = clients.local_addr();
        for (config, method) in [
            (credentials.client("reader"), net::AuthMethod::Certificate),
            (credentials.token_client("reader"), net::AuthMethod::UserToken),
        ] {
            let mut client = ClientConnection::connect(addr, &config).await.unwrap();
            assert!(client.is_tls());
            let read = RequestBody::Read { query: Bytes::from_static(b"k"), consistency: ReadConsistency::NodeDefault };
            client
                .send(1, &ClientRequest { request_id: 1, client_id: 0, sequence: 0, ack: 0, body: read })
                .await
                .unwrap();
            match next_inbound(&mut inbound).await {
                Inbound::Request { shard_id, request, identity, reply } => {
                    assert_eq!((shard_id, request.request_id), (1, 1));
                    let expected = Identity { user: "reader".into(), roles: Roles::READ, method };
                    assert_eq!(identity, expected);
                    assert_eq!(reply.identity(), &expected);
                    reply.send(ResponseStatus::Ok(Bytes::from_static(b"v"))).unwrap();
                }
                other => panic!("unexpected {other:?}"),
            }
            assert_eq!(client.recv().await.unwrap().status, ResponseStatus::Ok(Bytes::from_static(b"v")));
            // A write and an admin request are answered Forbidden by the
            // listener, and never reach the owner.
            let write = RequestBody::Write { command: Bytes::from_static(b"put k v") };
            client
                .send(1, &ClientRequest { request_id: 2, client_id: 5, sequence: 1, ack: 1, body: write })
                .await
                .unwrap();
            let admin = RequestBody::Admin(net::AdminRequest::TakeSnapshot);
            client
                .send(1, &ClientRequest { request_id: 3, client_id: 0, sequence: 0, ack: 0, body: admin })
                .await
                .unwrap();
            for expected_id in [2, 3] {
                let response = client.recv().await.unwrap();
                assert_eq!(response.request_id, expected_id);
                assert!(
                    matches!(&response.status, ResponseStatus::Forbidden(reason) if reason.contains("reader")),
                    "{:?}",
                    response.status
                );
            }
            assert!(tokio::time::timeout(Duration::from_millis(50), inbound.recv()).await.is_err());
        }
        assert_eq!(clients.stats().forbidden, 4);
        // A writer's write is delivered.
        let mut writer = ClientConnection::connect(addr, &credentials.client("writer")).await.unwrap();
        let write = RequestBody::Write { command: Bytes::from_static(b"put k v") };
        writer.send(0, &ClientRequest { request_id: 7, client_id: 5, sequence: 1, ack: 1, body: write }).await.unwrap();
        let Inbound::Request { identity, reply, .. } = next_inbound(&mut inbound).await else {
            panic!("not a request")
        };
        assert_eq!(identity.roles, Roles::READ | Roles::WRITE);
        reply.send(ResponseStatus::Ok(Bytes::new())).unwrap();
        assert_eq!(writer.recv().await.unwrap().request_id, 7);
        // A wrong token is refused.
        let mut stranger = credentials.token_client("reader");
        stranger.token = Bytes::from_static(b"0000000000000000000000000000000000");
        assert_eq!(refused_with(ClientConnection::connect(addr, &stranger).await), RefusalReason::BadToken);
        clients.shutdown();
    });
}

#[test]
fn a_reload_changes_the_credentials_of_new_connections_only() {
    let first = Credentials::new("reload-first");
    let second = Credentials::new("reload-second");
    // The node reads its files from one place; the operator replaces them.
    let live = std::env::temp_dir().join(format!("net-test-reload-live-{}", std::process::id()));
    std::fs::create_dir_all(&live).unwrap();
    let install = |from: &Credentials| {
        let files = from.certificates.node_tls(2).unwrap();
        for (source, name) in [
            (&files.node_ca, "node-ca.pem"),
            (files.client_ca.as_ref().unwrap(), "client-ca.pem"),
            (&files.certificate, "node.pem"),
            (&files.private_key, "node.key"),
            (&from.certificates.token_file, "tokens"),
        ] {
            std::fs::copy(source, live.join(name)).unwrap();
        }
    };
    install(&first);
    let security = NodeSecurity::load(NodeSecurityConfig {
        cluster_id: CLUSTER,
        node_id: 2,
        tls: Some(NodeTlsFiles {
            node_ca: live.join("node-ca.pem"),
            client_ca: Some(live.join("client-ca.pem")),
            certificate: live.join("node.pem"),
            private_key: live.join("node.key"),
        }),
        peer_token: None,
        client_tokens: net::ClientTokens::File(live.join("tokens")),
        history: net::History::FRESH,
    })
    .unwrap();
    assert!(!security.is_plaintext());
    assert_eq!(security.warnings(), vec![]);
    run(async {
        let (clients, mut inbound) = listener(ListenerRole::Clients, security.clone());
        let addr = clients.local_addr();
        let mut established = ClientConnection::connect(addr, &first.client("ops")).await.unwrap();

        install(&second);
        assert_eq!(security.reload().unwrap(), 2);

        // New connections need the new credentials...
        assert!(ClientConnection::connect(addr, &first.client("ops")).await.is_err());
        let mut fresh = ClientConnection::connect(addr, &second.token_client("writer")).await.unwrap();
        // ...and the connection made before the reload is still served.
        for (client, request_id) in [(&mut established, 1), (&mut fresh, 2)] {
            client.send(0, &status_request(request_id)).await.unwrap();
            let Inbound::Request { reply, .. } = next_inbound(&mut inbound).await else { panic!("not a request") };
            reply.send(ResponseStatus::Ok(Bytes::new())).unwrap();
            assert_eq!(client.recv().await.unwrap().request_id, request_id);
        }

        // A broken file is refused and the loaded credentials stay.
        std::fs::write(live.join("tokens"), "not a token file").unwrap();
        assert!(matches!(security.reload(), Err(CredentialsError::TokenFile { .. })));
        assert_eq!(security.generation(), 2);
        ClientConnection::connect(addr, &second.token_client("writer")).await.expect("the old credentials still work");
        clients.shutdown();
    });
    std::fs::remove_dir_all(&live).unwrap();
}

#[test]
fn plaintext_mode_is_the_default_and_says_so() {
    let security = NodeSecurity::plaintext(CLUSTER, 1, Bytes::from_static(b"token"));
    assert!(security.is_plaintext());
    assert_eq!(
        security.warnings(),
        vec![net::SecurityWarning::Plaintext, net::SecurityWarning::PeerTokenIsClientToken]
    );
    let missing = NodeSecurity::load(NodeSecurityConfig {
        cluster_id: CLUSTER,
        node_id: 1,
        tls: None,
        peer_token: None,
        client_tokens: net::ClientTokens::None,
        history: net::History::FRESH,
    });
    assert!(matches!(missing, Err(CredentialsError::NoPeerCredentials)));
    let credentials = Credentials::new("wrong-node");
    // A node given another node's certificate refuses to start.
    let mut files = credentials.certificates.node_tls(2).unwrap();
    files.client_ca = None;
    let wrong = NodeSecurity::load(NodeSecurityConfig {
        cluster_id: CLUSTER,
        node_id: 1,
        tls: Some(files),
        peer_token: None,
        client_tokens: net::ClientTokens::None,
        history: net::History::FRESH,
    });
    match wrong {
        Err(error @ CredentialsError::WrongIdentity { .. }) => assert!(error.to_string().contains("raft-node://42/1")),
        other => panic!("unexpected {other:?}"),
    }
}
