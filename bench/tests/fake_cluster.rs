//! The load driver against fake nodes that speak the client protocol, so
//! leader following and session handling are tested without the node
//! binary: a follower answers `NotLeader` (with the leader's address, or
//! with only its id), the leader answers every request at once, opens
//! sessions with ids it assigns, and checks that every write names an open
//! session, a sequence never used before in it, and an acknowledgement that
//! never goes backwards nor past the sequence. A leader that refuses some
//! writes `Busy` checks that each comes back under its session sequence.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use bench::progress::ProgressStyleKind;
use bench::runner::{run, LoadMode, RunOptions, RunSettings};
use bytes::Bytes;
use net::kv::KvResponse;
use net::session::OpenedSession;
use net::{inbound_channel, Inbound, Listener, ListenerConfig, NodeSecurity, RequestBody, ResponseStatus};

const TOKEN: &[u8] = b"fake-cluster";

#[derive(Clone, Copy)]
enum Role {
    Leader,
    /// Names the leader by address.
    FollowerWithAddress,
    /// Names only the leader's node id (1).
    FollowerWithId,
    /// A leader that refuses every `n`-th write `Busy` (not taking it).
    LeaderRefusingEvery(u64),
}

/// What a refusing leader saw: writes refused and not yet sent again (by
/// session and sequence), and how many came back.
#[derive(Default)]
struct Refusals {
    waiting: BTreeSet<(u64, u64)>,
    came_back: u64,
}

/// Starts a fake node on its own thread and returns its address and the
/// count of requests it answered.
fn spawn_node(node_id: u64, role: Role, leader: Option<SocketAddr>) -> (SocketAddr, Arc<AtomicU64>) {
    spawn_node_with(node_id, role, leader, Arc::default())
}

fn spawn_node_with(
    node_id: u64,
    role: Role,
    leader: Option<SocketAddr>,
    refusals: Arc<Mutex<Refusals>>,
) -> (SocketAddr, Arc<AtomicU64>) {
    let (sender, receiver) = mpsc::channel();
    let answered = Arc::new(AtomicU64::new(0));
    let counter = answered.clone();
    std::thread::spawn(move || {
        tokio_uring::start(async move {
            let security = NodeSecurity::plaintext(1, node_id, Bytes::from_static(TOKEN));
            let listener = Listener::bind(ListenerConfig::clients("127.0.0.1:0".parse().unwrap(), security)).unwrap();
            sender.send(listener.local_addr()).unwrap();
            let (inbound_sender, mut inbound) = inbound_channel(1_024);
            let _listener = listener.spawn(inbound_sender);
            // Per open session: the highest ack seen and the sequences used.
            let mut sessions: HashMap<u64, (u64, BTreeSet<u64>)> = HashMap::new();
            let mut next_session = 100;
            let mut writes = 0;
            while let Some(event) = inbound.recv().await {
                let Inbound::Request { request, reply, .. } = event else { continue };
                counter.fetch_add(1, Ordering::Relaxed);
                let refuse_every = match role {
                    Role::LeaderRefusingEvery(n) => Some(n),
                    _ => None,
                };
                let role = if refuse_every.is_some() { Role::Leader } else { role };
                if let (Some(n), RequestBody::Write { .. }) = (refuse_every, &request.body) {
                    writes += 1;
                    let mut refusals = refusals.lock().unwrap();
                    let key = (request.client_id, request.sequence);
                    if refusals.waiting.remove(&key) {
                        refusals.came_back += 1;
                    } else if writes % n == 0 {
                        refusals.waiting.insert(key);
                        let _ = reply.send(ResponseStatus::Busy);
                        continue;
                    }
                }
                let status = match (role, &request.body) {
                    (Role::FollowerWithAddress, _) => {
                        ResponseStatus::NotLeader { leader_id: Some(1), leader_addr: leader.map(|a| a.to_string()) }
                    }
                    (Role::FollowerWithId, _) => ResponseStatus::NotLeader { leader_id: Some(1), leader_addr: None },
                    (Role::Leader, RequestBody::OpenSession) => {
                        next_session += 1;
                        sessions.insert(next_session, (1, BTreeSet::new()));
                        ResponseStatus::Ok(
                            OpenedSession { client_id: next_session, timeout_ms: 60_000, window: 1024 }.encode(),
                        )
                    }
                    (Role::Leader, RequestBody::CloseSession) => {
                        sessions.remove(&request.client_id);
                        ResponseStatus::Ok(Bytes::new())
                    }
                    (Role::Leader, RequestBody::Write { .. }) => match sessions.get_mut(&request.client_id) {
                        None => ResponseStatus::SessionExpired,
                        Some((floor, used)) => {
                            if request.ack < *floor || request.ack > request.sequence || request.ack == 0 {
                                ResponseStatus::BadRequest(format!("ack {} (floor {floor})", request.ack))
                            } else if !used.insert(request.sequence) {
                                ResponseStatus::BadRequest(format!("sequence {} used twice", request.sequence))
                            } else {
                                *floor = request.ack;
                                ResponseStatus::Ok(KvResponse::Written.encode())
                            }
                        }
                    },
                    (Role::Leader, RequestBody::Read { .. }) => ResponseStatus::Ok(KvResponse::Value(None).encode()),
                    (Role::Leader, _) => ResponseStatus::Ok(Bytes::from_static(b"{\"fake\":true}")),
                    (Role::LeaderRefusingEvery(_), _) => unreachable!("served as a leader"),
                };
                let _ = reply.send(status);
            }
        });
    });
    (receiver.recv_timeout(Duration::from_secs(5)).expect("the fake node starts"), answered)
}

fn settings(addrs: Vec<SocketAddr>, load: LoadMode) -> RunSettings {
    let mut settings = RunSettings::example();
    settings.addrs = addrs.iter().map(ToString::to_string).collect();
    settings.connections = 4;
    settings.load = load;
    settings.duration_s = 0.5;
    settings.warmup_s = 0.2;
    settings.workload.read_fraction = 0.2;
    settings
}

fn options(settings: RunSettings) -> RunOptions {
    RunOptions {
        settings,
        token: Bytes::from_static(TOKEN),
        tls: None,
        label: "fake".into(),
        progress: ProgressStyleKind::Quiet,
        fetch_status: true,
    }
}

#[test]
fn follows_not_leader_to_the_leader_with_valid_sessions() {
    let (leader, _) = spawn_node(1, Role::Leader, None);
    let (by_address, redirected_by_address) = spawn_node(2, Role::FollowerWithAddress, Some(leader));
    let (by_id, redirected_by_id) = spawn_node(3, Role::FollowerWithId, None);
    // Connections start at every node; the leader is listed last so that
    // the id-only follower's answer is resolved through handshakes.
    let result = run(&options(settings(vec![by_address, by_id, leader], LoadMode::Closed { inflight: 32 }))).unwrap();
    assert!(result.operations["write"].count > 100, "{:?}", result.operations["write"].count);
    assert!(result.operations["read"].count > 10);
    // Redirects happen at the start, when connections open their sessions;
    // none after it, and no write was ever refused (open sessions, new
    // sequences, acknowledgements that never go backwards).
    assert!(result.errors.is_empty(), "{:?} {:?}", result.errors, result.error_examples);
    assert!(
        redirected_by_address.load(Ordering::Relaxed) > 0,
        "no connection started at the follower naming an address"
    );
    assert!(redirected_by_id.load(Ordering::Relaxed) > 0, "no connection started at the follower naming an id");
    assert!(!result.warmup_errors.contains_key("session_expired"), "{:?}", result.warmup_errors);
    assert!(!result.warmup_errors.contains_key("bad_request"), "{:?}", result.warmup_errors);
    let status = result.cluster.unwrap();
    assert_eq!(status[leader.to_string()]["fake"], true, "{status}");
}

#[test]
fn open_loop_sends_on_schedule() {
    let (leader, _) = spawn_node(1, Role::Leader, None);
    let result = run(&options(settings(vec![leader], LoadMode::Open { rate: 2_000.0, inflight_max: 64 }))).unwrap();
    // 0.5 s at 2,000/s: 1,000 requests due in the measured window.
    assert_eq!(result.total.count, 1_000, "{:?}", result.errors);
    assert!(result.errors.is_empty(), "{:?}", result.errors);
    assert!((result.throughput_per_second - 2_000.0).abs() < 100.0, "{}", result.throughput_per_second);
}

/// A write refused `Busy` (the node did not take it) is sent again after a
/// pause under its session sequence, not counted as an error: a leader
/// hands leadership over on its own (shards balance their leaders) and
/// sheds load, and neither should fail a client's request.
#[test]
fn refused_writes_are_sent_again_under_their_sequence() {
    let refusals = Arc::new(Mutex::new(Refusals::default()));
    let (leader, _) = spawn_node_with(1, Role::LeaderRefusingEvery(7), None, refusals.clone());
    let mut settings = settings(vec![leader], LoadMode::Closed { inflight: 32 });
    settings.workload.read_fraction = 0.0;
    let result = run(&options(settings)).unwrap();
    let refusals = refusals.lock().unwrap();
    let retried = result.retried.get("busy").copied().unwrap_or(0);
    assert!(retried > 10, "retried {:?}, errors {:?}", result.retried, result.errors);
    assert!(refusals.came_back > 10, "{} came back", refusals.came_back);
    // Only the refusals of the run's last moments (no time left to send
    // them again before it ends) are errors; every other refused write came
    // back with its sequence.
    let failed =
        result.errors.get("busy").copied().unwrap_or(0) + result.errors.get("unanswered").copied().unwrap_or(0);
    assert!(failed * 10 <= retried, "{:?} {:?}, retried {retried}", result.errors, result.error_examples);
    assert!(refusals.waiting.len() as u64 <= failed, "{} never came back", refusals.waiting.len());
    assert_eq!(
        result.errors.keys().filter(|kind| *kind != "busy" && *kind != "unanswered").count(),
        0,
        "{:?}",
        result.errors
    );
}

/// A TLS file the load generator cannot read is named by its option and
/// environment variable, as the CLI's are (the error gave only the path).
#[test]
fn an_unreadable_tls_file_names_its_option() {
    let missing = std::env::temp_dir().join(format!("bench-missing-ca-{}.pem", std::process::id()));
    let mut options = options(settings(vec!["127.0.0.1:1".parse().unwrap()], LoadMode::Closed { inflight: 1 }));
    options.tls = Some(net::ClientTlsFiles { node_ca: missing, certificate: None, private_key: None });
    let error = run(&options).expect_err("the CA cannot be read").to_string();
    assert!(error.contains("--tls-ca (or NODE_TLS_CA): cannot read "), "{error}");
}
