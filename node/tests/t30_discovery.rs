//! Peer discovery against a tiny fake DNS server on loopback.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
mod common;

use node::discovery::{
    check_members, discover_blocking, id_from_host, parse_dns_names, DiscoveryError, DnsDiscovery, HostPort, Peer,
    PeerSource, StaticPeer,
};

/// A UDP DNS server that answers from a zone the test may change:
/// NXDOMAIN for names it does not know, an empty answer for a known name
/// without the asked type.
struct FakeDns {
    addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

type Zone = HashMap<(String, RecordType), Vec<RData>>;

impl FakeDns {
    fn start(zone: Zone) -> FakeDns {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        let addr = socket.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let zone = Arc::new(Mutex::new(zone));
        let serving = zone.clone();
        let thread = std::thread::spawn(move || {
            let mut buffer = [0u8; 1500];
            while !stopping.load(Ordering::Relaxed) {
                let Ok((size, from)) = socket.recv_from(&mut buffer) else { continue };
                let Ok(request) = Message::from_vec(&buffer[..size]) else { continue };
                let mut response = Message::new();
                response.set_id(request.id());
                response.set_message_type(MessageType::Response);
                response.set_recursion_desired(request.recursion_desired());
                response.set_recursion_available(true);
                response.set_authoritative(true);
                let Some(query) = request.queries().first().cloned() else { continue };
                let name = query.name().to_ascii().to_ascii_lowercase();
                let zone = serving.lock().unwrap().clone();
                let known = zone.keys().any(|(known, _)| *known == name);
                if !known {
                    response.set_response_code(ResponseCode::NXDomain);
                }
                for rdata in zone.get(&(name, query.query_type())).into_iter().flatten() {
                    response.add_answer(Record::from_rdata(query.name().clone(), 60, rdata.clone()));
                }
                response.add_query(query);
                let _ = socket.send_to(&response.to_vec().unwrap(), from);
            }
        });
        FakeDns { addr, zone, stop, thread: Some(thread) }
    }

    /// Answers from `zone` from now on.
    fn set_zone(&self, zone: Zone) {
        *self.zone.lock().unwrap() = zone;
    }
}

impl Drop for FakeDns {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }
}

fn zone() -> Zone {
    let mut zone = Zone::new();
    let mut add = |name: &str, rdata: RData| {
        zone.entry((format!("{name}."), rdata.record_type())).or_default().push(rdata);
    };
    for (id, port) in [(1, 7100), (2, 7102), (3, 7104)] {
        let target = Name::from_str(&format!("node-{id}.cluster.test.")).unwrap();
        add("_raft._tcp.cluster.test", RData::SRV(SRV::new(10, 10, port, target)));
        add(&format!("node-{id}.cluster.test"), RData::A(A::new(127, 0, 0, id)));
    }
    add("node-4.cluster.test", RData::A(A::new(127, 0, 0, 4)));
    add("node-5.cluster.test", RData::AAAA(AAAA::new(0, 0, 0, 0, 0, 0, 0, 1)));
    add("db.cluster.test", RData::A(A::new(127, 0, 0, 9)));
    add("_raft._tcp.noid.test", RData::SRV(SRV::new(10, 10, 7000, Name::from_str("db.cluster.test.").unwrap())));
    add("_raft._tcp.dup.test", RData::SRV(SRV::new(10, 10, 7000, Name::from_str("node-1.cluster.test.").unwrap())));
    zone
}

fn dns(server: &FakeDns, names: &str, port: Option<u16>) -> PeerSource {
    PeerSource::Dns(DnsDiscovery {
        names: parse_dns_names(names).unwrap(),
        port,
        nameserver: Some(server.addr),
        timeout: Duration::from_millis(500),
        interval: Duration::from_secs(30),
    })
}

fn peer(id: u64, addr: &str) -> Peer {
    Peer { id, addr: addr.parse().unwrap() }
}

#[test]
fn srv_records_give_members_with_ids_from_target_names() {
    let server = FakeDns::start(zone());
    let peers = discover_blocking(&dns(&server, "cluster.test", None)).unwrap();
    assert_eq!(peers, [peer(1, "127.0.0.1:7100"), peer(2, "127.0.0.2:7102"), peer(3, "127.0.0.3:7104")]);
    check_members(2, &peers).unwrap();
    assert!(matches!(check_members(7, &peers), Err(DiscoveryError::SelfNotFound { node_id: 7, .. })));
    // The service name can be given in full.
    assert_eq!(discover_blocking(&dns(&server, "_raft._tcp.cluster.test", None)).unwrap(), peers);
}

#[test]
fn names_without_srv_fall_back_to_a_and_aaaa_records() {
    let server = FakeDns::start(zone());
    let peers = discover_blocking(&dns(
        &server,
        "cluster.test,node-4.cluster.test,node-5.cluster.test,9@db.cluster.test",
        Some(7000),
    ))
    .unwrap();
    assert_eq!(
        peers,
        [
            peer(1, "127.0.0.1:7100"),
            peer(2, "127.0.0.2:7102"),
            peer(3, "127.0.0.3:7104"),
            peer(4, "127.0.0.4:7000"),
            peer(5, "[::1]:7000"),
            peer(9, "127.0.0.9:7000"),
        ]
    );
}

#[test]
fn discovery_errors_name_the_culprit() {
    let server = FakeDns::start(zone());
    let error = discover_blocking(&dns(&server, "missing.cluster.test", Some(7000))).unwrap_err();
    assert!(matches!(&error, DiscoveryError::Unresolvable { name, .. } if name == "missing.cluster.test"), "{error}");
    let error = discover_blocking(&dns(&server, "node-4.cluster.test", None)).unwrap_err();
    assert!(matches!(error, DiscoveryError::PortMissing { .. }), "{error}");
    let error = discover_blocking(&dns(&server, "db.cluster.test", Some(7000))).unwrap_err();
    assert!(matches!(error, DiscoveryError::NoIdInName { .. }), "{error}");
    let error = discover_blocking(&dns(&server, "noid.test", None)).unwrap_err();
    assert!(matches!(&error, DiscoveryError::NoIdInName { host } if host == "db.cluster.test"), "{error}");
    let error = discover_blocking(&dns(&server, "cluster.test,dup.test", None)).unwrap_err();
    assert!(matches!(error, DiscoveryError::DuplicateId { id: 1, .. }), "{error}");
    let error = discover_blocking(&dns(&server, "_raft._tcp.node-4.cluster.test", Some(7000))).unwrap_err();
    assert!(matches!(error, DiscoveryError::Unresolvable { .. }), "{error}");
}

#[test]
fn an_unreachable_dns_server_is_a_clear_error() {
    // A port nobody listens on: bind, note the port, close.
    let addr = UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let source = PeerSource::Dns(DnsDiscovery {
        names: parse_dns_names("cluster.test").unwrap(),
        port: Some(7000),
        nameserver: Some(addr),
        timeout: Duration::from_millis(200),
        interval: Duration::from_secs(30),
    });
    let started = std::time::Instant::now();
    let error = discover_blocking(&source).unwrap_err();
    assert!(matches!(error, DiscoveryError::Unresolvable { .. }), "{error}");
    eprintln!("unreachable server: {error}");
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
}

#[test]
fn static_lists_with_addresses_need_no_dns() {
    let peers = vec![
        StaticPeer { id: 2, addr: HostPort { host: "::1".into(), port: 7102 } },
        StaticPeer { id: 1, addr: "127.0.0.1:7100".parse().unwrap() },
    ];
    let found = discover_blocking(&PeerSource::Static(peers)).unwrap();
    assert_eq!(found, [peer(1, "127.0.0.1:7100"), peer(2, "[::1]:7102")]);
    assert_eq!(HostPort { host: "::1".into(), port: 1 }.to_string(), "[::1]:1");
    assert_eq!(
        "[::1]:1".parse::<HostPort>().unwrap().socket_addr(),
        Some(SocketAddr::new(IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]), 1))
    );
}

#[test]
fn ids_from_host_names() {
    assert_eq!(id_from_host("node-3.cluster.local"), Some(3));
    assert_eq!(id_from_host("raft12"), Some(12));
    assert_eq!(id_from_host("node-0.x"), None);
    assert_eq!(id_from_host("db.node-3"), None);
    assert_eq!(id_from_host("node"), None);
}

/// A zone for a cluster of real nodes on loopback: SRV records
/// `_raft._tcp.grow.test` naming `node-ID.grow.test` at each peer port.
fn cluster_zone(members: &[(u64, u16)]) -> Zone {
    let mut zone = Zone::new();
    for &(id, port) in members {
        let target = Name::from_str(&format!("node-{id}.grow.test.")).unwrap();
        let srv = RData::SRV(SRV::new(10, 10, port, target));
        zone.entry(("_raft._tcp.grow.test.".into(), RecordType::SRV)).or_default().push(srv);
        zone.entry((format!("node-{id}.grow.test."), RecordType::A)).or_default().push(RData::A(A::new(127, 0, 0, 1)));
    }
    zone
}

const TOKEN: &str = "discovery-test-token";
const CLUSTER: u64 = 12;

/// `node serve` for node `id` with its data directory, listening on the
/// ports of slot `port_slot`, finding its members in `server`'s DNS every
/// second; its log goes to `node-ID.log` in the cluster's directory.
fn dns_node(cluster: &common::SlotCluster, id: u64, port_slot: u64, server: &FakeDns) -> std::process::Command {
    let log =
        std::fs::OpenOptions::new().create(true).append(true).open(cluster.dir.join(format!("node-{id}.log"))).unwrap();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_node"));
    command
        .arg("serve")
        .args(["--node-id", &id.to_string(), "--cluster-id", &CLUSTER.to_string()])
        .args(["--peer-addr", &format!("127.0.0.1:{}", cluster.peer_port(port_slot))])
        .args(["--client-addr", &format!("127.0.0.1:{}", cluster.client_port(port_slot))])
        .args(["--data-dir", &cluster.data_dir(id).display().to_string()])
        .args(["--discovery-dns", "grow.test", "--discovery-nameserver", &server.addr.to_string()])
        .args(["--discovery-interval", "1s", "--discovery-timeout", "300ms"])
        .args(["--log-level", "info", "--pin-cores", "false"])
        .env("NODE_TOKEN", TOKEN)
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::null())
        .stderr(log);
    command
}

/// The status of the first of `slots` that answers and satisfies `done`,
/// within 60 s.
fn wait_any(cluster: &common::SlotCluster, slots: &[u64], what: &str, done: impl Fn(&serde_json::Value) -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut last = None;
    while std::time::Instant::now() < deadline {
        for &slot in slots {
            if let Some(status) = cluster.status(slot) {
                if done(&status) {
                    return;
                }
                last = Some(status);
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("{what}: not within 60 s; last status: {last:?}");
}

fn member_peer_addr(status: &serde_json::Value, id: u64) -> Option<String> {
    status["members"].as_array()?.iter().find(|member| member["id"] == id)?["peer_addr"].as_str().map(Into::into)
}

fn log_of(cluster: &common::SlotCluster, id: u64) -> String {
    std::fs::read_to_string(cluster.dir.join(format!("node-{id}.log"))).unwrap_or_default()
}

/// A cluster started from DNS: its slots, the listed (id, peer port)
/// pairs, the DNS server and the first leader.
type DnsCluster = (common::SlotCluster, Vec<(u64, u16)>, FakeDns, u64);

/// Three nodes bootstrapped from `server`'s DNS on the ports from
/// `base_port`, once one leads three voters: the cluster, the listed
/// (id, peer port) pairs, the server and the leader. `None` (the test
/// skips, saying why) without io_uring.
fn three_from_dns(name: &str, base_port: u16) -> Option<DnsCluster> {
    if let Err(error) = wal::io_uring_available() {
        eprintln!("SKIPPED: io_uring is unavailable: {error}");
        return None;
    }
    let mut cluster = common::SlotCluster::new(name, base_port, CLUSTER, TOKEN);
    let listed: Vec<(u64, u16)> = (1..=3).map(|id| (id, cluster.peer_port(id))).collect();
    let server = FakeDns::start(cluster_zone(&listed));
    // A new cluster from DNS bootstraps as before (nodes started one after
    // the other: the later ones may find the first and wait to be added).
    for id in 1..=3 {
        let child = dns_node(&cluster, id, id, &server).spawn().expect("start node");
        cluster.nodes.insert(id, child);
    }
    let leader = cluster.leader_among(1..=3);
    wait_any(&cluster, &[leader], "three voters", |status| common::ids(&status["voters"]) == [1, 2, 3]);
    Some((cluster, listed, server, leader))
}

#[test]
fn a_running_cluster_follows_dns_a_member_moves_and_a_new_name_joins_as_a_voter() {
    let Some((mut cluster, mut listed, server, leader)) = three_from_dns("dns-follow", 27_100) else { return };

    // A follower moves: it restarts on other ports (slot 5's), and DNS says
    // so, after the nodes looked the names up once (at 1 s).
    std::thread::sleep(Duration::from_millis(1500));
    let moved = (1..=3).find(|id| *id != leader).unwrap();
    cluster.kill(moved);
    listed.retain(|(id, _)| *id != moved);
    listed.push((moved, cluster.peer_port(5)));
    server.set_zone(cluster_zone(&listed));
    let child = dns_node(&cluster, moved, 5, &server).spawn().expect("restart the moved node");
    cluster.nodes.insert(moved, child);
    let new_addr = format!("127.0.0.1:{}", cluster.peer_port(5));
    // The others reach it at its new address, so it hears the leader and
    // announces the address through the log.
    let others: Vec<u64> = (1..=3).filter(|id| *id != moved).collect();
    wait_any(&cluster, &others, "the moved member's new address in the log", |status| {
        member_peer_addr(status, moved).as_deref() == Some(new_addr.as_str())
    });
    wait_any(&cluster, &[5], "the moved member following a leader", |status| {
        status["leader"].as_u64().is_some_and(|leader| leader != 0) && status["role"] == "Follower"
    });
    for id in &others {
        assert!(log_of(&cluster, *id).contains("DNS gives a new address"), "node {id}:\n{}", log_of(&cluster, *id));
    }

    // A fourth name appears, and its node starts with the same options: the
    // leader adds it as a learner and promotes it once caught up.
    listed.push((4, cluster.peer_port(4)));
    server.set_zone(cluster_zone(&listed));
    // A node that bootstrapped the cluster restarts meanwhile: its voters
    // come from its log, not from the DNS answer that now lists node 4.
    let bootstrapped = others.iter().copied().find(|id| !cluster.data_dir(*id).join("node-identity").exists());
    let bootstrapped = bootstrapped.or((moved != 1).then_some(1)).unwrap_or(2);
    cluster.kill(bootstrapped);
    let child = dns_node(&cluster, bootstrapped, bootstrapped, &server).spawn().expect("restart");
    cluster.nodes.insert(bootstrapped, child);
    wait_any(&cluster, &[bootstrapped], "the restarted node following a leader", |status| {
        status["leader"].as_u64().is_some_and(|leader| leader != 0)
    });
    let status = cluster.status(bootstrapped).expect("status");
    assert_eq!(common::ids(&status["voters"]), [1, 2, 3], "{status}");
    let child = dns_node(&cluster, 4, 4, &server).spawn().expect("start node 4");
    cluster.nodes.insert(4, child);
    wait_any(&cluster, &others, "node 4 a voter", |status| {
        common::ids(&status["voters"]) == [1, 2, 3, 4] && common::ids(&status["learners"]).is_empty()
    });
    wait_any(&cluster, &[4], "node 4 following", |status| {
        status["role"] == "Follower" && common::ids(&status["voters"]).contains(&4)
    });
    assert!(cluster.data_dir(4).join("node-identity").exists(), "node 4 recorded that it joined");

    // A name that disappears is not removed, and failing lookups remove
    // nothing and are logged once.
    listed.retain(|(id, _)| *id != 4);
    server.set_zone(cluster_zone(&listed));
    drop(server);
    std::thread::sleep(Duration::from_secs(4));
    wait_any(&cluster, &others, "four voters still", |status| common::ids(&status["voters"]) == [1, 2, 3, 4]);
    for id in 1..=4 {
        let failures = log_of(&cluster, id).matches("DNS lookup failed").count();
        assert_eq!(failures, 1, "node {id} logs the failing lookups once:\n{}", log_of(&cluster, id));
    }
}

/// A `node serve` configuration of node 2 finding its members by DNS,
/// with its data directory at `data_dir`.
fn dns_serve_config(data_dir: &std::path::Path, cluster_id: u64) -> node::config::ServeConfig {
    let args = [
        "node",
        "serve",
        "--node-id",
        "2",
        "--cluster-id",
        &cluster_id.to_string(),
        "--peer-addr",
        "127.0.0.1:7102",
        "--client-addr",
        "127.0.0.1:7103",
        "--discovery-dns",
        "grow.test",
        "--token",
        "t",
        "--data-dir",
        &data_dir.display().to_string(),
    ];
    match node::config::parse_from(args) {
        Ok(node::config::NodeCommand::Serve(config)) => *config,
        other => panic!("not serve: {other:?}"),
    }
}

#[test]
fn a_fresh_node_joins_when_a_listed_node_answers_and_bootstraps_otherwise() {
    use node::dns_watch::decide_start;
    let dir = std::env::temp_dir().join(format!("node-t30-decide-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // Node 1 listens on its peer port throughout; "alone" lists no other node.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let members = [peer(1, &listener.local_addr().unwrap().to_string()), peer(2, "127.0.0.1:7102")];
    let alone = [peer(2, "127.0.0.1:7102")];

    // No other listed node answers: it bootstraps, and records nothing.
    let mut config = dns_serve_config(&dir.join("alone"), 12);
    decide_start(&mut config, &alone).unwrap();
    assert!(!config.join);
    assert!(!dir.join("alone/node-identity").exists());

    // Node 1 answers: it waits to be added, and says so in its data directory.
    let mut config = dns_serve_config(&dir.join("late"), 12);
    decide_start(&mut config, &members).unwrap();
    assert!(config.join);
    // Its restarts do the same though no one answers now.
    let mut config = dns_serve_config(&dir.join("late"), 12);
    decide_start(&mut config, &alone).unwrap();
    assert!(config.join);
    // Another cluster's data directory is refused.
    let mut config = dns_serve_config(&dir.join("late"), 13);
    let error = decide_start(&mut config, &members).unwrap_err();
    assert!(error.to_string().contains("belongs to cluster 12"), "{error}");

    // A data directory with a log (a node that bootstrapped) never joins.
    std::fs::create_dir_all(dir.join("bootstrapped/shard-0")).unwrap();
    std::fs::write(dir.join("bootstrapped/shard-0/segment"), "log").unwrap();
    let mut config = dns_serve_config(&dir.join("bootstrapped"), 12);
    decide_start(&mut config, &members).unwrap();
    assert!(!config.join);
    drop(listener);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A fresh node listed in DNS that starts while no listed node answers
/// (the cluster is down) bootstraps with the members DNS lists, but it
/// cannot take over: it holds no entry, so no member votes for it, and it
/// writes none (only a leader writes the first entry). Once the cluster is
/// back, the leader finds it in DNS, adds it as a learner whose log it
/// fills from its own, and promotes it; nothing needs wiping.
#[test]
fn a_fresh_node_that_bootstrapped_while_the_cluster_was_down_joins_it_once_back() {
    let Some((mut cluster, mut listed, server, _)) = three_from_dns("dns-late", 27_120) else { return };
    let mut client = node::client_cmd::BlockingClient::new(&cluster.client(&[1, 2, 3])).unwrap();
    let mut session = client.open_session().expect("a session opens");
    let put = node::kv::KvOp::Put { key: "before".into(), value: "down".into() };
    client.write(&mut session, put.encode()).expect("written");
    for id in 1..=3 {
        cluster.kill(id);
    }
    // A killed node's listening socket can outlive it by a moment.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while (1..=3).any(|id| std::net::TcpStream::connect(("127.0.0.1", cluster.peer_port(id))).is_ok()) {
        assert!(std::time::Instant::now() < deadline, "a killed node still listens");
        std::thread::sleep(Duration::from_millis(50));
    }

    // Node 4 appears in DNS and starts while nothing answers: it bootstraps.
    listed.push((4, cluster.peer_port(4)));
    server.set_zone(cluster_zone(&listed));
    let child = dns_node(&cluster, 4, 4, &server).spawn().expect("start node 4");
    cluster.nodes.insert(4, child);
    wait_any(&cluster, &[4], "node 4 up", |status| status["last_index"] == 0);
    assert!(!cluster.data_dir(4).join("node-identity").exists(), "node 4 found no one and bootstraps");
    std::thread::sleep(Duration::from_secs(2));
    let status = cluster.status(4).expect("node 4 answers");
    assert_ne!(status["role"], "Leader", "node 4 leads alone: {status}");
    assert_eq!(status["last_index"], 0, "node 4 wrote entries of its own: {status}");

    // The cluster returns: node 4 becomes one of its voters, with its data.
    for id in 1..=3 {
        let child = dns_node(&cluster, id, id, &server).spawn().expect("restart node");
        cluster.nodes.insert(id, child);
    }
    wait_any(&cluster, &[1, 2, 3], "node 4 a voter", |status| {
        status["role"] == "Leader" && common::ids(&status["voters"]) == [1, 2, 3, 4]
    });
    let leader = cluster.leader_among(1..=3);
    let commit = cluster.status(leader).expect("leader answers")["commit"].as_u64().unwrap();
    wait_any(&cluster, &[4], "node 4 caught up", |status| {
        status["role"] == "Follower"
            && common::ids(&status["voters"]) == [1, 2, 3, 4]
            && status["applied"].as_u64() >= Some(commit)
    });
    let get = net::RequestBody::Read {
        query: node::kv::KvOp::Get { key: "before".into() }.encode(),
        consistency: net::ReadConsistency::Stale,
    };
    let answer = node::client_cmd::call(&cluster.client(&[4]), get).expect("node 4 reads");
    let value = node::kv::KvResponse::Value(Some(bytes::Bytes::from_static(b"down"))).encode();
    assert_eq!(answer, net::ResponseStatus::Ok(value), "node 4's copy of the cluster's data");
}
