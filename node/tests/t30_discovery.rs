//! Peer discovery against a tiny fake DNS server on loopback.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use node::discovery::{
    check_members, discover_blocking, id_from_host, parse_dns_names, DiscoveryError, DnsDiscovery, HostPort, Peer,
    PeerSource, StaticPeer,
};

/// A UDP DNS server that answers from a fixed zone: NXDOMAIN for names it
/// does not know, an empty answer for a known name without the asked type.
struct FakeDns {
    addr: SocketAddr,
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
        FakeDns { addr, stop, thread: Some(thread) }
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
