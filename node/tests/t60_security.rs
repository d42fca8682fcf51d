//! Security of the real `node` binary: a three-node cluster with mutual TLS
//! serves writes; callers that must be refused are refused, each with a
//! reason in the node's log, while the cluster keeps serving; credentials
//! reload on SIGHUP without dropping the cluster.
//!
//! The listener-level cases (every refusal reason, reloads, bounds) are
//! tested in `net/tests/tls_auth.rs` and `net/tests/bounds.rs`; these check
//! that the node wires them: its options, its listeners' roles, its client
//! roles and its signal handling. Ports 26000-26103 (see `BASE_PORT`).

#[path = "../../net/tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use net::identity::{ClientName, NodeName};
use net::tls::{CertificateAuthority, Validity};
use net::{
    AdminRequest, ClientConfig as NetClientConfig, ClientConnection, ClientError, ClientTls, ClientTlsFiles, Handshake,
    HandshakeError, Payload, ReadConsistency, RefusalReason, RequestBody, ResponseStatus, Role, Roles,
};
use node::client_cmd::{call, BlockingClient};
use node::config::{ClientConfig, NodeCommand, Token};
use node::discovery::HostPort;
use node::kv::{KvOp, KvResponse};
use support::{expired, hostile_tls_call, peer_handshake, Credentials, HostileOutcome, CLUSTER};

/// The first test's nodes use 26000-26005, the reload test's 26006-26011,
/// the join test's 26020-26029, the witness test's 26030-26037, the RESP
/// test's 26040-26045, the RESP start test's 26050-26052; each cluster's
/// RESP ports are its base + 60 + id.
const BASE_PORT: u16 = 26_000;
const RELOAD_BASE_PORT: u16 = 26_006;
const JOIN_BASE_PORT: u16 = 26_020;
const WITNESS_BASE_PORT: u16 = 26_030;
const RESP_BASE_PORT: u16 = 26_040;

fn loopback(port: u16) -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], port))
}

/// A TLS cluster of real processes, killed when dropped; each node logs to
/// `node-N.log` in the credentials' directory.
struct TlsCluster {
    credentials: Credentials,
    base_port: u16,
    nodes: BTreeMap<u64, Child>,
}

impl TlsCluster {
    fn start(credentials: Credentials, base_port: u16) -> TlsCluster {
        let peer_port = |id: u64| base_port + 2 * (id as u16 - 1);
        let peers: Vec<String> = (1..=3).map(|id| format!("{id}=127.0.0.1:{}", peer_port(id))).collect();
        let mut nodes = BTreeMap::new();
        for id in 1..=3u64 {
            let dir = &credentials.dir;
            let log = std::fs::File::create(dir.join(format!("node-{id}.log"))).unwrap();
            let child = Command::new(env!("CARGO_BIN_EXE_node"))
                .args(["serve", "--node-id", &id.to_string(), "--cluster-id", &CLUSTER.to_string()])
                .args(["--peer-addr", &loopback(peer_port(id)).to_string()])
                .args(["--client-addr", &loopback(peer_port(id) + 1).to_string()])
                .args(["--resp-addr", &loopback(base_port + 60 + id as u16).to_string()])
                .args(["--peers", &peers.join(",")])
                .args(["--data-dir", &dir.join(format!("data-{id}")).display().to_string()])
                // The files `node certs` writes; no shared token at all.
                .args(["--tls-dir", &dir.display().to_string()])
                .args(["--log-level", "info", "--pin-cores", "false"])
                .env_remove("NODE_TOKEN")
                .env_remove("NODE_TOKEN_FILE")
                .env("NO_COLOR", "1")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start node");
            nodes.insert(id, child);
        }
        TlsCluster { credentials, base_port, nodes }
    }

    /// A cluster with fresh credentials once it has a leader, or `None`
    /// after saying why the test skips.
    fn start_with_leader(name: &str, base_port: u16) -> Option<TlsCluster> {
        if let Err(error) = wal::io_uring_available() {
            eprintln!("SKIPPED: io_uring is unavailable: {error}");
            return None;
        }
        let cluster = TlsCluster::start(Credentials::new(name), base_port);
        cluster.wait_for_leader();
        Some(cluster)
    }

    fn peer_port(&self, id: u64) -> u16 {
        self.base_port + 2 * (id as u16 - 1)
    }

    fn client_port(&self, id: u64) -> u16 {
        self.peer_port(id) + 1
    }

    fn resp_port(&self, id: u64) -> u16 {
        self.base_port + 60 + id as u16
    }

    /// [`TlsCluster::client`] of node `id` alone.
    fn client_of(&self, user: &str, id: u64) -> ClientConfig {
        ClientConfig {
            addrs: vec![HostPort { host: "127.0.0.1".into(), port: self.client_port(id) }],
            ..self.client(user)
        }
    }

    fn log(&self, id: u64) -> String {
        std::fs::read_to_string(self.credentials.dir.join(format!("node-{id}.log"))).unwrap_or_default()
    }

    /// Waits until node `id`'s log contains `text`.
    fn wait_for_log(&self, id: u64, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.log(id).contains(text) {
            assert!(Instant::now() < deadline, "node {id} never logged {text:?}; its log:\n{}", self.log(id));
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn all_alive(&mut self) -> bool {
        self.nodes.values_mut().all(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// A command-line client configuration presenting `user`'s certificate.
    fn client(&self, user: &str) -> ClientConfig {
        ClientConfig {
            addrs: (1..=3).map(|id| HostPort { host: "127.0.0.1".into(), port: self.client_port(id) }).collect(),
            cluster_id: CLUSTER,
            token: None,
            tls: self.credentials.certificates.client_tls(user),
            timeout: Duration::from_secs(15),
            shard: 0,
        }
    }

    /// The same, presenting a token instead of a certificate.
    fn token_client(&self, token: &str) -> ClientConfig {
        ClientConfig {
            token: Some(Token(Bytes::from(token.to_string()))),
            tls: Some(self.credentials.certificates.client_tls_without_certificate()),
            ..self.client("ops")
        }
    }

    fn wait_for_leader(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let leaders = (1..=3)
                .filter(|id| {
                    let config = ClientConfig { timeout: Duration::from_secs(2), ..self.client_of("ops", *id) };
                    matches!(call(&config, RequestBody::Status), Ok(ResponseStatus::Ok(answer))
                        if serde_json::from_slice::<serde_json::Value>(&answer).is_ok_and(|s| s["role"] == "Leader"))
                })
                .count();
            if leaders == 1 {
                return;
            }
            assert!(Instant::now() < deadline, "no leader within 30 s");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A session belongs to the user that opened it: `ops`, who may write,
    /// can neither write in `writer`'s session nor close it, whichever node
    /// it asks; `writer` writes on.
    fn sessions_belong_to_their_users(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        for id in 1..=3 {
            // Every member says its build reads owners as it first sees a
            // leader; until then sessions are anyone's (a rolling upgrade).
            while !matches!(call(&self.client_of("ops", id), RequestBody::Status), Ok(ResponseStatus::Ok(answer))
                if serde_json::from_slice::<serde_json::Value>(&answer).is_ok_and(|s| s["sessions"]["owned"] == true))
            {
                assert!(Instant::now() < deadline, "node {id} never opened sessions with owners");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let mut writer = BlockingClient::new(&self.client("writer")).expect("a client");
        let mut session = writer.open_session().expect("a session opens");
        let put = |value: &'static str| KvOp::Put { key: Bytes::from_static(b"owned"), value: Bytes::from(value) };
        assert_eq!(writer.write(&mut session, put("mine").encode()).unwrap(), KvResponse::Written.encode());
        for id in 1..=3 {
            let mut ops = BlockingClient::new(&self.client_of("ops", id)).expect("a client");
            let write = RequestBody::Write { command: put("theirs").encode() };
            for (sequence, body) in [(1, write.clone()), (2, write), (0, RequestBody::CloseSession)] {
                let status = ops.call_in_session(session.client_id(), sequence, sequence.min(1), body).unwrap();
                let reason = forbidden(status);
                assert!(reason.contains("belongs to another user"), "node {id}: {reason}");
            }
        }
        assert_eq!(writer.write(&mut session, put("still mine").encode()).unwrap(), KvResponse::Written.encode());
        writer.close_session(session).expect("the owner closes it");
    }

    /// Writes `key` = `value` in a session of `user`'s and reads it back
    /// as `reader`.
    fn write_and_read(&self, user: &str, key: &str, value: &str) {
        let mut client = BlockingClient::new(&self.client(user)).expect("a client");
        let mut session = client.open_session().expect("a session opens");
        let put = KvOp::Put { key: Bytes::from(key.to_string()), value: Bytes::from(value.to_string()) };
        assert_eq!(client.write(&mut session, put.encode()).unwrap(), KvResponse::Written.encode());
        let get = RequestBody::Read {
            query: KvOp::Get { key: Bytes::from(key.to_string()) }.encode(),
            consistency: ReadConsistency::Linearizable,
        };
        let answer = call(&self.client("reader"), get).unwrap();
        assert_eq!(answer, ResponseStatus::Ok(KvResponse::Value(Some(Bytes::from(value.to_string()))).encode()));
    }
}

impl Drop for TlsCluster {
    fn drop(&mut self) {
        for child in self.nodes.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn client_handshake() -> Handshake {
    Handshake { role: Role::Client, ..peer_handshake(0) }
}

fn tls_failure(result: Result<ClientConnection, ClientError>) -> String {
    match result {
        Err(ClientError::Handshake(HandshakeError::Tls(error))) => error.to_string(),
        Err(other) => panic!("expected a TLS failure, got {other}"),
        Ok(_) => panic!("the connection was accepted"),
    }
}

fn forbidden(status: ResponseStatus) -> String {
    match status {
        ResponseStatus::Forbidden(reason) => reason,
        other => panic!("expected Forbidden, got {other:?}"),
    }
}

#[test]
fn a_mutual_tls_cluster_serves_writes_and_refuses_what_it_must_with_logged_reasons() {
    let Some(mut cluster) = TlsCluster::start_with_leader("node-t60", BASE_PORT) else { return };
    cluster.write_and_read("writer", "before", "1");
    let writer_token = cluster.credentials.certificates.tokens["writer"].clone();
    let mut token_client = BlockingClient::new(&cluster.token_client(&writer_token)).unwrap();
    let mut session = token_client.open_session().expect("a token client opens a session");
    let put = KvOp::Put { key: Bytes::from_static(b"by-token"), value: Bytes::from_static(b"2") };
    assert_eq!(token_client.write(&mut session, put.encode()).unwrap(), KvResponse::Written.encode());
    for id in 1..=3 {
        assert!(!cluster.log(id).contains("TLS is off"), "node {id} warned of plaintext with TLS on");
    }
    cluster.sessions_belong_to_their_users();

    let credentials = &cluster.credentials;
    let strangers = Credentials::new("node-t60-strangers");
    let client_authority = CertificateAuthority::load(
        &credentials.certificates.client_ca.certificate,
        &credentials.certificates.client_ca.private_key,
    )
    .unwrap();
    let late = ClientName { cluster_id: CLUSTER, user: "late".into(), roles: Roles::ALL };
    let (expired_certificate, expired_key) =
        credentials.write("client-expired", &client_authority.issue_client(&late, expired()).unwrap());
    let node3 = credentials.certificates.nodes[&3].clone();
    let (peer_addr, client_addr) = (loopback(cluster.peer_port(1)), loopback(cluster.client_port(1)));

    // A client handshake on the peer port, even from a caller whose
    // certificate the peer port trusts: refused for its role.
    let (certificate, key) = (node3.certificate.clone(), node3.private_key.clone());
    match std::thread::spawn(move || hostile_tls_call(peer_addr, &certificate, &key, client_handshake()))
        .join()
        .unwrap()
    {
        HostileOutcome::Answer(Payload::HandshakeRefuse(refusal)) => {
            assert_eq!(refusal.reason, RefusalReason::RoleNotAccepted)
        }
        other => panic!("a client handshake on the peer port got {other:?}"),
    }
    // Node 3's genuine certificate with a handshake claiming node 2.
    let (certificate, key) = (node3.certificate.clone(), node3.private_key.clone());
    match std::thread::spawn(move || hostile_tls_call(peer_addr, &certificate, &key, peer_handshake(2))).join().unwrap()
    {
        HostileOutcome::Answer(Payload::HandshakeRefuse(refusal)) => {
            assert_eq!(refusal.reason, RefusalReason::IdentityMismatch)
        }
        other => panic!("a peer claiming another node's id got {other:?}"),
    }
    let expired_client = ClientTls::load(
        CLUSTER,
        &ClientTlsFiles {
            node_ca: credentials.certificates.node_ca.certificate.clone(),
            certificate: Some(expired_certificate),
            private_key: Some(expired_key),
        },
    )
    .unwrap();
    tokio_uring::start(async {
        // A client certificate on the peer port: the peer port trusts only
        // the node CA.
        tls_failure(ClientConnection::connect(peer_addr, &credentials.client("ops")).await);
        // A client certificate from another CA.
        tls_failure(ClientConnection::connect(client_addr, &strangers.client("ops")).await);
        // A client that trusts our node CA but whose certificate another
        // client CA signed.
        let foreign = ClientTlsFiles {
            node_ca: credentials.certificates.node_ca.certificate.clone(),
            ..strangers.certificates.client_tls("ops").unwrap()
        };
        let foreign = NetClientConfig::with_tls(CLUSTER, ClientTls::load(CLUSTER, &foreign).unwrap(), Bytes::new());
        tls_failure(ClientConnection::connect(client_addr, &foreign).await);
        // An expired client certificate from the right CA.
        tls_failure(
            ClientConnection::connect(client_addr, &NetClientConfig::with_tls(CLUSTER, expired_client, Bytes::new()))
                .await,
        );
        // Plaintext to the TLS port.
        let plaintext = NetClientConfig::new(CLUSTER, Bytes::from(writer_token.clone()));
        match ClientConnection::connect(client_addr, &plaintext).await {
            Err(ClientError::Handshake(HandshakeError::Refused { reason, .. })) => {
                assert_eq!(reason, RefusalReason::TlsRequired)
            }
            Err(other) => panic!("plaintext to a TLS port: {other}"),
            Ok(_) => panic!("plaintext to a TLS port was accepted"),
        }
    });
    // A write with a read-only identity, and an admin request without admin.
    let reader_at_node_1 = cluster.client_of("reader", 1);
    let write = RequestBody::Write {
        command: KvOp::Put { key: Bytes::from_static(b"x"), value: Bytes::from_static(b"y") }.encode(),
    };
    let reason = forbidden(call(&reader_at_node_1, write).unwrap());
    assert!(reason.contains("needs write"), "{reason}");
    let writer_at_node_1 = cluster.client_of("writer", 1);
    let reason = forbidden(call(&writer_at_node_1, RequestBody::Admin(AdminRequest::Stats)).unwrap());
    assert!(reason.contains("needs admin"), "{reason}");

    // Each refusal is in node 1's log with its reason.
    for text in [
        "role=Peers refusal=handshake refused (RoleNotAccepted)",
        "role=Peers refusal=handshake refused (IdentityMismatch): the handshake claims node 2 but the certificate names raft-node://42/3",
        "role=Peers refusal=TLS handshake failed: the certificate is not signed by a trusted CA",
        // The stranger's client trusts another node CA: it refuses ours.
        "role=Clients refusal=TLS handshake failed: the caller refused this node's certificate",
        "role=Clients refusal=TLS handshake failed: the certificate is not signed by a trusted CA",
        "role=Clients refusal=TLS handshake failed: the certificate has expired",
        "role=Clients refusal=handshake refused (TlsRequired)",
        "forbidden=user reader has roles read; this request needs write",
        "forbidden=user writer has roles read,write; this request needs admin",
    ] {
        cluster.wait_for_log(1, text);
    }
    // And the cluster serves on.
    assert!(cluster.all_alive(), "a node died");
    cluster.write_and_read("ops", "after", "3");
    drop(strangers);
}

/// SIGHUP re-reads the token file: a user added to it gets in without a
/// restart, and the cluster keeps its peer links (it still commits writes).
#[test]
fn sighup_reloads_credentials_without_dropping_the_cluster() {
    let Some(mut cluster) = TlsCluster::start_with_leader("node-t60-reload", RELOAD_BASE_PORT) else { return };
    let token = "late-user-token-0123456789abcdef";
    let late = |cluster: &TlsCluster| {
        let mut config = cluster.token_client(token);
        config.timeout = Duration::from_secs(2);
        call(&config, RequestBody::Status)
    };
    assert!(late(&cluster).is_err(), "an unknown token was accepted");
    let token_file = cluster.credentials.certificates.token_file.clone();
    let mut tokens = std::fs::read_to_string(&token_file).unwrap();
    tokens.push_str(&format!("late:read:{token}\n"));
    std::fs::write(&token_file, tokens).unwrap();
    for (id, child) in &cluster.nodes {
        // SAFETY: signalling a child this test started.
        assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGHUP) }, 0, "SIGHUP to node {id}");
    }
    for id in 1..=3 {
        cluster.wait_for_log(id, "credentials reloaded");
    }
    assert!(matches!(late(&cluster), Ok(ResponseStatus::Ok(_))), "the reloaded token was refused");
    assert!(cluster.all_alive(), "SIGHUP stopped a node");
    cluster.write_and_read("writer", "after-reload", "4");
}

/// A fresh directory of `node certs` files for cluster 7 and `node_ids`.
fn node_certs(name: &str, node_ids: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("node-t60-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let output = Command::new(env!("CARGO_BIN_EXE_node"))
        .args(["certs", "--dir", &dir.display().to_string(), "--cluster-id", "7", "--node-ids", node_ids])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    dir
}

/// `node certs` writes the files `node serve --tls-dir` reads.
#[test]
fn node_certs_writes_what_serve_tls_dir_reads() {
    let dir = node_certs("certs", "1,2");
    let NodeCommand::Serve(config) = node::config::parse_from([
        "node",
        "serve",
        "--node-id",
        "2",
        "--cluster-id",
        "7",
        "--peer-addr",
        "127.0.0.1:1",
        "--client-addr",
        "127.0.0.1:2",
        "--peers",
        "2=127.0.0.1:1",
        "--data-dir",
        &dir.join("data").display().to_string(),
        "--tls-dir",
        &dir.display().to_string(),
    ])
    .unwrap() else {
        panic!()
    };
    let security = config.security.node_security(7, 2, None, net::History::FRESH);
    let loaded = net::NodeSecurity::load(security).expect("the written credentials load");
    assert!(!loaded.is_plaintext());
    assert!(loaded.warnings().is_empty(), "{:?}", loaded.warnings());
    let client = ClientTlsFiles {
        node_ca: dir.join("node-ca.pem"),
        certificate: Some(dir.join("client-admin.pem")),
        private_key: Some(dir.join("client-admin.key")),
    };
    ClientTls::load(7, &client).expect("the admin client's files load");
    std::fs::remove_dir_all(&dir).unwrap();
}

impl TlsCluster {
    /// `node serve --join` through node 1's client address for node `id`
    /// (on the `id`th slot's ports) with the cluster's TLS files, a
    /// certificate for it from the node CA, and `extra`; its log goes to
    /// `node-ID.log`.
    fn join_command(&self, id: u64, extra: &[&str]) -> Command {
        let credentials = &self.credentials;
        let issued =
            credentials.node_authority().issue_node(NodeName { cluster_id: CLUSTER, node_id: id }, Validity::days(1));
        credentials.write(&format!("node-{id}"), &issued.unwrap());
        let dir = &credentials.dir;
        let log = std::fs::File::create(dir.join(format!("node-{id}.log"))).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_node"));
        command
            .args(["serve", "--node-id", &id.to_string(), "--cluster-id", &CLUSTER.to_string()])
            .args(["--join", &loopback(self.client_port(1)).to_string()])
            .args(["--peer-addr", &loopback(self.peer_port(id)).to_string()])
            .args(["--client-addr", &loopback(self.client_port(id)).to_string()])
            .args(["--data-dir", &dir.join(format!("data-{id}")).display().to_string()])
            .args(["--tls-dir", &dir.display().to_string()])
            .args(["--log-level", "info", "--pin-cores", "false"])
            .args(extra)
            .env_remove("NODE_TOKEN")
            .env_remove("NODE_TOKEN_FILE")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log);
        command
    }

    /// Runs node 4's join command with `extra`; it must exit unsuccessfully
    /// within 30 s. Returns its log.
    fn join_refused(&self, extra: &[&str]) -> String {
        let mut child = self.join_command(4, extra).spawn().expect("start node 4");
        let deadline = Instant::now() + Duration::from_secs(30);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("node 4 did not exit with {extra:?}; its log:\n{}", self.log(4));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(!child.wait().unwrap().success(), "node 4 started with {extra:?}");
        let _ = std::fs::remove_dir_all(self.credentials.dir.join("data-4"));
        let log = self.log(4);
        let errors: Vec<&str> = log.lines().filter(|line| line.contains("rror")).collect();
        eprintln!("node 4 with {extra:?}: {}", errors.join("\n"));
        log
    }

    /// Starts node `id` joining with `extra` and waits until node 1 lists
    /// it as a voter.
    fn join_as_voter(&mut self, id: u64, extra: &[&str]) {
        let child = self.join_command(id, extra).spawn().expect("start node");
        self.nodes.insert(id, child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let status = match call(&self.client_of("ops", 1), RequestBody::Status) {
                Ok(ResponseStatus::Ok(answer)) => serde_json::from_slice::<serde_json::Value>(&answer).ok(),
                _ => None,
            };
            let voters = status.as_ref().and_then(|status| status["voters"].as_array().cloned()).unwrap_or_default();
            if voters.iter().any(|voter| voter.as_u64() == Some(id)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {id} not a voter within 60 s: {status:?}; its log:\n{}",
                self.log(id)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

#[test]
fn a_node_joins_through_a_member_over_tls_and_wrong_settings_are_clear_errors() {
    let Some(mut cluster) = TlsCluster::start_with_leader("tls-join", JOIN_BASE_PORT) else { return };
    let credentials = &cluster.credentials;
    let ops = credentials.certificates.client_tls("ops").unwrap();
    let (ops_certificate, ops_key) = (ops.certificate.unwrap(), ops.private_key.unwrap());
    let reader = credentials.certificates.client_tls("reader").unwrap();
    let (reader_certificate, reader_key) = (reader.certificate.unwrap(), reader.private_key.unwrap());
    // A client certificate from a CA the cluster does not trust.
    let stranger = CertificateAuthority::generate("stranger").unwrap();
    let name = ClientName { cluster_id: CLUSTER, user: "ops".into(), roles: Roles::ALL };
    let (stranger_certificate, stranger_key) =
        credentials.write("stranger-ops", &stranger.issue_client(&name, Validity::days(1)).unwrap());
    // The ops user's token from the members' client-tokens file.
    let ops_token = credentials.dir.join("ops-token");
    std::fs::write(&ops_token, &credentials.certificates.tokens["ops"]).unwrap();
    let wrong_token = credentials.dir.join("wrong-token");
    std::fs::write(&wrong_token, "not-a-token").unwrap();
    let path = |path: &std::path::Path| path.display().to_string();

    // Missing: no client credential for the members.
    let log = cluster.join_refused(&[]);
    assert!(log.contains("--join-tls-cert"), "{log}");
    // Wrong: a certificate the members' client CA did not sign.
    let stranger = [&path(&stranger_certificate), &path(&stranger_key)];
    let log = cluster.join_refused(&["--join-tls-cert", stranger[0], "--join-tls-key", stranger[1]]);
    assert!(log.contains("cannot join through"), "{log}");
    // Wrong: a token the members do not know.
    let log = cluster.join_refused(&["--join-token-file", &path(&wrong_token)]);
    assert!(log.contains("cannot join through"), "{log}");
    // Wrong: a certificate without the admin role.
    let log =
        cluster.join_refused(&["--join-tls-cert", &path(&reader_certificate), "--join-tls-key", &path(&reader_key)]);
    assert!(log.contains("admin"), "{log}");

    // Right: the admin client certificate (node 4) or an admin token (node 5).
    cluster.join_as_voter(4, &["--join-tls-cert", &path(&ops_certificate), "--join-tls-key", &path(&ops_key)]);
    cluster.join_as_voter(5, &["--join-token-file", &path(&ops_token)]);
    // They serve: a write through the cluster is readable on each.
    cluster.write_and_read("writer", "joined-over-tls", "yes");
    let get = RequestBody::Read {
        query: KvOp::Get { key: Bytes::from_static(b"joined-over-tls") }.encode(),
        consistency: ReadConsistency::Linearizable,
    };
    for id in [4, 5] {
        let answer = call(&cluster.client_of("reader", id), get.clone()).unwrap();
        assert_eq!(answer, ResponseStatus::Ok(KvResponse::Value(Some(Bytes::from_static(b"yes"))).encode()));
    }
    assert!(cluster.all_alive());
}

/// A witness over TLS (issue 17): it joins through a member with the admin
/// client certificate, learns the members' addresses by asking them over
/// TLS, and, once node 3 is removed and the full follower dies, the leader
/// commits with the witness's acknowledgements over the TLS peer links.
#[test]
fn a_witness_joins_and_acknowledges_over_tls() {
    let Some(mut cluster) = TlsCluster::start_with_leader("tls-witness", WITNESS_BASE_PORT) else { return };
    let ops = cluster.credentials.certificates.client_tls("ops").unwrap();
    let (certificate, key) = (ops.certificate.unwrap(), ops.private_key.unwrap());
    let (certificate, key) = (certificate.display().to_string(), key.display().to_string());
    cluster.join_as_voter(4, &["--witness", "--join-tls-cert", &certificate, "--join-tls-key", &key]);
    cluster.wait_for_log(4, "witness: linking to the member");
    cluster.write_and_read("writer", "before", "1");

    let mut ops = BlockingClient::new(&cluster.client("ops")).expect("a client");
    ops.admin(AdminRequest::Remove { id: 3 }).expect("node 3 removed");
    let status = |id: u64| match call(&cluster.client_of("ops", id), RequestBody::Status) {
        Ok(ResponseStatus::Ok(answer)) => serde_json::from_slice::<serde_json::Value>(&answer).ok(),
        _ => None,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let leader = loop {
        let leader = [1, 2].into_iter().find(|&id| {
            status(id).is_some_and(|status| {
                status["role"] == "Leader"
                    && status["voters"] == serde_json::json!([1, 2, 4])
                    && status["witnesses"] == serde_json::json!([4])
                    && status["voters_outgoing"] == serde_json::json!([])
            })
        });
        if let Some(leader) = leader {
            break leader;
        }
        assert!(Instant::now() < deadline, "node 3 not removed within 30 s: {:?}", status(1));
        std::thread::sleep(Duration::from_millis(200));
    };
    for id in [3, 3 - leader] {
        let mut child = cluster.nodes.remove(&id).expect("running");
        child.kill().expect("killed");
        child.wait().expect("reaped");
    }
    // Only the witness's acknowledgements make a quorum of {leader, 4}.
    cluster.write_and_read("writer", "after", "2");
    assert!(cluster.all_alive());
}

/// The RESP front door speaks TLS when the node does, with the client
/// port's settings: `redis-cli --tls` trusting the node CA writes through
/// one node and reads through another, authenticated by a user's token
/// (`AUTH user token`) or by a client certificate alone (its roles apply);
/// a plaintext client is told the port needs TLS; a wrong token is refused
/// as before. (Until 2026-12-04 the RESP port was plaintext even on a TLS
/// node, tokens included, and knew no certificates.)
#[test]
fn the_resp_port_speaks_tls_when_the_node_does() {
    let Ok(version) = Command::new("redis-cli").arg("--version").output() else {
        eprintln!("SKIPPED: redis-cli is not installed (Debian: apt-get install redis-tools)");
        return;
    };
    eprintln!("using {}", String::from_utf8_lossy(&version.stdout).trim());
    let Some(cluster) = TlsCluster::start_with_leader("resp-tls", RESP_BASE_PORT) else { return };
    let ca = cluster.credentials.certificates.node_ca.certificate.display().to_string();
    let token = cluster.credentials.certificates.tokens["writer"].clone();
    let run = |id: u64, tls: bool, login: &[&str], args: &[&str]| {
        let mut command = Command::new("redis-cli");
        command.args(["-h", "127.0.0.1", "-p", &cluster.resp_port(id).to_string()]);
        if tls {
            command.args(["--tls", "--cacert", &ca]);
        }
        let output = command.args(login).args(args).output().expect("redis-cli runs");
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
    };
    let redis_cli = |id: u64, tls: bool, user: &str, token: &str, args: &[&str]| {
        run(id, tls, &["--user", user, "--pass", token, "--no-auth-warning"], args)
    };
    let certificate = |user: &str| {
        let files = &cluster.credentials.certificates.users[user];
        [files.certificate.display().to_string(), files.private_key.display().to_string()]
    };
    let set = redis_cli(1, true, "writer", &token, &["SET", "tls-key", "tls-value"]);
    assert_eq!(set.trim(), "OK", "SET over TLS through node 1");
    let get = redis_cli(2, true, "writer", &token, &["GET", "tls-key"]);
    assert_eq!(get.trim(), "tls-value", "GET over TLS through node 2");
    let plaintext = redis_cli(3, false, "writer", &token, &["GET", "tls-key"]);
    assert!(plaintext.contains("this port needs TLS"), "a plaintext client at the TLS port: {plaintext}");
    let wrong = redis_cli(1, true, "writer", "not-the-token", &["GET", "tls-key"]);
    assert!(!wrong.contains("tls-value"), "a wrong token read the value: {wrong}");
    // A client certificate is a login of its own, with its roles.
    let [cert, key] = certificate("writer");
    let set = run(2, true, &["--cert", &cert, "--key", &key], &["SET", "cert-key", "cert-value"]);
    assert_eq!(set.trim(), "OK", "SET with the writer's certificate");
    let [cert, key] = certificate("reader");
    let get = run(3, true, &["--cert", &cert, "--key", &key], &["GET", "cert-key"]);
    assert_eq!(get.trim(), "cert-value", "GET with the reader's certificate");
    let refused = run(3, true, &["--cert", &cert, "--key", &key], &["SET", "cert-key", "other"]);
    assert!(refused.contains("NOPERM"), "a reader's certificate wrote: {refused}");
    cluster.wait_for_log(3, "RESP connection refused");
}

/// `--resp-addr` needs a way in for RESP clients: a TLS node with neither
/// client tokens nor a client CA refuses to start and says what to add; a
/// client CA alone is enough (client certificates log RESP clients in).
#[test]
fn a_resp_port_needs_client_tokens_or_a_client_ca() {
    let dir = node_certs("resp-auth", "1");
    std::fs::remove_file(dir.join("client-tokens")).unwrap();
    let serve = |data: &str| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_node"));
        command
            .args(["serve", "--node-id", "1", "--cluster-id", "7", "--peers", "1=127.0.0.1:26050"])
            .args([
                "--peer-addr",
                "127.0.0.1:26050",
                "--client-addr",
                "127.0.0.1:26051",
                "--resp-addr",
                "127.0.0.1:26052",
            ])
            .args(["--data-dir", &dir.join(data).display().to_string(), "--tls-dir", &dir.display().to_string()])
            .args(["--pin-cores", "false"])
            .env_remove("NODE_TOKEN")
            .env_remove("NODE_TOKEN_FILE")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        command
    };
    // A client CA and no tokens: the node serves RESP.
    let mut child = serve("data-ca").spawn().expect("start node");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect("127.0.0.1:26052").is_err() {
        if let Some(status) = child.try_wait().unwrap() {
            let mut log = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut log).unwrap();
            panic!("the node exited ({status}) with a client CA and --resp-addr:\n{log}");
        }
        assert!(Instant::now() < deadline, "no RESP port within 10 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    // Neither: refused, naming both ways.
    std::fs::remove_file(dir.join("client-ca.pem")).unwrap();
    let output = serve("data-none").output().unwrap();
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "started with no way for RESP clients to authenticate:\n{log}");
    assert!(log.contains("--resp-addr needs a way for RESP clients to authenticate"), "{log}");
    assert!(log.contains("--client-tokens") && log.contains("--tls-client-ca"), "{log}");
    std::fs::remove_dir_all(&dir).unwrap();
}
