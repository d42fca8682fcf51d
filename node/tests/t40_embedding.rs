//! Embedding: an application's own state machine (the ledger of
//! `examples/ledger`, whose transfers must conserve the total and be
//! applied exactly once) replicated by the node library, as a cluster in
//! this process and as three TCP processes of the example binary; a leader
//! fails in the middle of the transfers; every replica is then checked.

#[path = "../examples/ledger/machine.rs"]
mod machine;
#[path = "../examples/ledger/workload.rs"]
mod workload;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use machine::{Ledger, Summary};
use net::{ClientRequest, ReadConsistency, RequestBody, ResponseStatus};
use node::client_cmd::BlockingClient;
use node::config::{ClientConfig, Token};
use node::discovery::HostPort;
use node::embed::LocalCluster;
use workload::Seen;

const ACCOUNTS: u32 = 12;
const INITIAL: u64 = 500;
const CLIENTS: u64 = 3;

/// Runs `CLIENTS` threads of `count` transfers, each with a client made on
/// its thread.
fn transfers<C: net::Connector>(count: u64, seed: u64, make_client: impl Fn() -> BlockingClient<C> + Sync) -> Seen {
    std::thread::scope(|scope| {
        let threads: Vec<_> = (0..CLIENTS)
            .map(|index| {
                let make_client = &make_client;
                scope.spawn(move || {
                    workload::transfers(&mut make_client(), ACCOUNTS, count, seed + index).expect("transfers run")
                })
            })
            .collect();
        let mut seen = Seen::default();
        for thread in threads {
            seen += thread.join().expect("a client thread");
        }
        seen
    })
}

/// Polls `summary` of every replica until they agree (or 30 s pass).
fn agreed_summaries(ids: &[u64], summary: impl Fn(u64) -> Option<Summary>) -> Vec<(u64, Summary)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let summaries: Vec<(u64, Summary)> = ids.iter().filter_map(|&id| summary(id).map(|s| (id, s))).collect();
        let agree = summaries.len() == ids.len() && summaries.windows(2).all(|pair| pair[0].1 == pair[1].1);
        if agree || Instant::now() >= deadline {
            return summaries;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn an_in_process_ledger_cluster_survives_its_leader_stopping() {
    let mut cluster = LocalCluster::start(3, |_shard| Ledger::default()).expect("the cluster starts");
    let leader = cluster.wait_for_leader(0, Duration::from_secs(10)).expect("a leader");
    workload::open_accounts(&mut cluster.client(), ACCOUNTS, INITIAL).expect("accounts open");
    let mut seen = transfers(60, 11, || cluster.client());
    cluster.stop(leader).expect("the leader stops");
    let next = cluster.wait_for_leader(0, Duration::from_secs(10)).expect("the others elect a leader");
    assert_ne!(next, leader);
    seen += transfers(60, 97, || cluster.client());
    cluster.restart(leader).expect("the old leader restarts from its disks");
    let summaries = agreed_summaries(cluster.ids(), |id| {
        let request = ClientRequest::plain(
            0,
            RequestBody::Read { query: machine::summary_query(), consistency: ReadConsistency::Stale },
        );
        match cluster.handle(id)?.call(0, request).blocking_recv() {
            Ok(ResponseStatus::Ok(bytes)) => Summary::decode(&bytes),
            _ => None,
        }
    });
    workload::check(&summaries, ACCOUNTS, INITIAL, seen).unwrap_or_else(|error| panic!("{error}: {summaries:?}"));
    assert_eq!(seen.acknowledged, CLIENTS * 120, "every transfer was answered: {seen:?}");
    cluster.shutdown().expect("a clean stop");
}

/// The example binary, built next to the tests (`target/<profile>/examples`).
fn ledger_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's path");
    let profile = exe.parent().and_then(|deps| deps.parent()).expect("target/<profile>");
    let binary = profile.join("examples").join("ledger");
    assert!(binary.is_file(), "{} is missing: cargo test builds the examples", binary.display());
    binary
}

struct Processes {
    dir: PathBuf,
    nodes: Vec<Option<Child>>,
}

const BASE_PORT: u16 = 22_100;
const TOKEN: &str = "ledger-test-token";

impl Processes {
    fn peer_port(id: u64) -> u16 {
        BASE_PORT + 2 * (id as u16 - 1)
    }

    fn spawn(&mut self, id: u64) {
        let peers: Vec<String> = (1..=3).map(|p| format!("{p}=127.0.0.1:{}", Processes::peer_port(p))).collect();
        let child = Command::new(ledger_binary())
            .args(["serve", "--node-id", &id.to_string(), "--cluster-id", "5"])
            .args(["--peer-addr", &format!("127.0.0.1:{}", Processes::peer_port(id))])
            .args(["--client-addr", &format!("127.0.0.1:{}", Processes::peer_port(id) + 1)])
            .args(["--peers", &peers.join(",")])
            .args(["--data-dir", &self.dir.join(format!("node-{id}")).display().to_string()])
            .args(["--log-level", "warn", "--pin-cores", "false"])
            .env("NODE_TOKEN", TOKEN)
            .stdout(Stdio::null())
            .spawn()
            .expect("start a ledger node");
        self.nodes[id as usize - 1] = Some(child);
    }

    fn kill(&mut self, id: u64) {
        if let Some(mut child) = self.nodes[id as usize - 1].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn config(ids: &[u64]) -> ClientConfig {
        ClientConfig {
            addrs: ids
                .iter()
                .map(|&id| HostPort { host: "127.0.0.1".into(), port: Processes::peer_port(id) + 1 })
                .collect(),
            cluster_id: 5,
            token: Some(Token(Bytes::from_static(TOKEN.as_bytes()))),
            tls: None,
            timeout: Duration::from_secs(15),
            shard: 0,
        }
    }

    fn leader(&self) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            for id in (1..=3).filter(|id| self.nodes[*id as usize - 1].is_some()) {
                let mut config = Processes::config(&[id]);
                config.timeout = Duration::from_secs(1);
                let status = node::client_cmd::call(&config, RequestBody::Status);
                if let Ok(ResponseStatus::Ok(json)) = status {
                    let status: serde_json::Value = serde_json::from_slice(&json).expect("JSON");
                    if status["role"] == "Leader" {
                        return id;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("no leader within 30 s");
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for id in 1..=3 {
            self.kill(id);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn a_ledger_cluster_of_three_processes_survives_its_leader_killed() {
    let dir = std::env::temp_dir().join(format!("ledger-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    let mut processes = Processes { dir, nodes: vec![None, None, None] };
    for id in 1..=3 {
        processes.spawn(id);
    }
    let leader = processes.leader();
    let all = Processes::config(&[1, 2, 3]);
    workload::open_accounts(&mut BlockingClient::new(&all).expect("a client"), ACCOUNTS, INITIAL).expect("accounts");
    let mut seen = transfers(40, 5, || BlockingClient::new(&all).expect("a client"));
    processes.kill(leader); // SIGKILL: no clean shutdown
    seen += transfers(40, 50, || BlockingClient::new(&all).expect("a client"));
    processes.spawn(leader);
    let summaries = agreed_summaries(&[1, 2, 3], |id| {
        let mut client = BlockingClient::new(&Processes::config(&[id])).ok()?;
        Summary::decode(&client.read(machine::summary_query(), ReadConsistency::Stale).ok()?)
    });
    workload::check(&summaries, ACCOUNTS, INITIAL, seen).unwrap_or_else(|error| panic!("{error}: {summaries:?}"));
}

/// The README's "Embedding" example, as written there (keep the two equal).
#[test]
fn the_readme_embedding_example_runs() -> Result<(), Box<dyn std::error::Error>> {
    use node::{Rejection, RestoreError, SerializedImage, SnapshotImage, StateMachine};

    struct Counter(u64);

    impl StateMachine for Counter {
        fn apply(&mut self, _index: u64, command: &[u8]) -> Result<bytes::Bytes, Rejection> {
            self.0 += u64::from(*command.first().ok_or_else(|| Rejection("empty".into()))?);
            Ok(bytes::Bytes::copy_from_slice(&self.0.to_le_bytes()))
        }
        fn query(&self, _query: &[u8]) -> Result<bytes::Bytes, Rejection> {
            Ok(bytes::Bytes::copy_from_slice(&self.0.to_le_bytes()))
        }
        fn snapshot_image(&self) -> Box<dyn SnapshotImage> {
            Box::new(SerializedImage(bytes::Bytes::copy_from_slice(&self.0.to_le_bytes())))
        }
        fn restore_from(&mut self, snapshot: &mut dyn std::io::Read) -> Result<(), RestoreError> {
            let mut bytes = [0; 8];
            snapshot.read_exact(&mut bytes)?;
            if snapshot.read(&mut [0])? != 0 {
                return Err(RestoreError("not 8 bytes".into()));
            }
            self.0 = u64::from_le_bytes(bytes);
            Ok(())
        }
    }

    // Three replicas in this process (memory, channels), with a client that
    // follows the leader and writes exactly once:
    let mut cluster = node::embed::LocalCluster::start(3, |_shard| Counter(0))?;
    let mut client = cluster.client();
    let mut session = client.open_session()?;
    client.write(&mut session, bytes::Bytes::from_static(&[5]))?;
    let leader = cluster.wait_for_leader(0, Duration::from_secs(10)).unwrap();
    cluster.stop(leader)?; // the others elect a new leader
    client.write(&mut session, bytes::Bytes::from_static(&[1]))?;
    cluster.restart(leader)?; // it recovers from its memory disks

    // Beyond the README: both writes applied once.
    let total = client.read(bytes::Bytes::new(), ReadConsistency::Linearizable)?;
    assert_eq!(total.as_ref(), &6u64.to_le_bytes());
    cluster.shutdown()?;
    Ok(())
}

/// An application's own front door sends its users' requests with
/// `NodeHandle::call_as`: the sessions it opens for a user are that user's,
/// and neither another user nor the node's own caller (`call`) may write in
/// them.
#[test]
fn a_node_handle_calls_as_a_user_and_their_sessions_are_theirs() {
    use std::sync::Arc;
    let cluster = LocalCluster::start(1, |_shard| node::kv::KvStateMachine::new()).expect("the cluster starts");
    let leader = cluster.wait_for_leader(0, Duration::from_secs(10)).expect("a leader");
    let handle = cluster.handle(leader).expect("a running node");
    let ask = |request: ClientRequest, user: Option<&str>| {
        let answer = match user {
            Some(user) => handle.call_as(0, request, Arc::from(user)),
            None => handle.call(0, request),
        };
        answer.blocking_recv().expect("an answer")
    };
    // The node says it reads owners at its first tick as leader.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !matches!(ask(ClientRequest::plain(1, RequestBody::Status), None), ResponseStatus::Ok(status)
        if serde_json::from_slice::<serde_json::Value>(&status).is_ok_and(|s| s["sessions"]["owned"] == true))
    {
        assert!(Instant::now() < deadline, "sessions never got owners");
        std::thread::sleep(Duration::from_millis(20));
    }
    let id = match ask(ClientRequest::plain(2, RequestBody::OpenSession), Some("alice")) {
        ResponseStatus::Ok(bytes) => net::session::OpenedSession::decode(&bytes).expect("a session").client_id,
        other => panic!("opening: {other:?}"),
    };
    let put = |sequence| {
        let command = node::kv::KvOp::Put { key: Bytes::from_static(b"k"), value: Bytes::from_static(b"v") }.encode();
        ClientRequest { request_id: 3, client_id: id, sequence, ack: 1, body: RequestBody::Write { command } }
    };
    for user in [Some("bob"), None] {
        let status = ask(put(1), user);
        assert!(matches!(status, ResponseStatus::Forbidden(_)), "{user:?} wrote in alice's session: {status:?}");
    }
    assert!(matches!(ask(put(1), Some("alice")), ResponseStatus::Ok(_)));
    let status = ask(ClientRequest::plain(4, RequestBody::Status), Some(""));
    assert!(matches!(status, ResponseStatus::BadRequest(_)), "an empty user name: {status:?}");
    drop(handle);
    cluster.shutdown().expect("a clean stop");
}

/// A request that reuses a session's sequence for another command (a
/// client bug) is refused with `BadRequest` and not applied; before, the
/// node answered it with the earlier command's answer, so the client
/// believed a write applied that never was. The same command under the
/// same sequence still gets its answer.
#[test]
fn a_sequence_reused_for_another_command_is_refused_with_bad_request() {
    use node::kv::{KvOp, KvResponse};
    let cluster = LocalCluster::start(1, |_shard| node::kv::KvStateMachine::new()).expect("the cluster starts");
    let leader = cluster.wait_for_leader(0, Duration::from_secs(10)).expect("a leader");
    let handle = cluster.handle(leader).expect("a running node");
    let ask = |request: ClientRequest| handle.call(0, request).blocking_recv().expect("an answer");
    let id = match ask(ClientRequest::plain(1, RequestBody::OpenSession)) {
        ResponseStatus::Ok(bytes) => net::session::OpenedSession::decode(&bytes).expect("a session").client_id,
        other => panic!("opening: {other:?}"),
    };
    let write = |op: KvOp| ClientRequest {
        request_id: 2,
        client_id: id,
        sequence: 1,
        ack: 1,
        body: RequestBody::Write { command: op.encode() },
    };
    let put = || KvOp::Put { key: Bytes::from_static(b"k"), value: Bytes::from_static(b"v") };
    let written = ResponseStatus::Ok(KvResponse::Written.encode());
    assert_eq!(ask(write(put())), written);
    match ask(write(KvOp::Delete { key: Bytes::from_static(b"k") })) {
        ResponseStatus::BadRequest(reason) => assert!(reason.contains("used for another command"), "{reason}"),
        other => panic!("a reused sequence answered {other:?}"),
    }
    let get = KvOp::Get { key: Bytes::from_static(b"k") }.encode();
    let read = ClientRequest::plain(3, RequestBody::Read { query: get, consistency: ReadConsistency::Linearizable });
    assert_eq!(ask(read), ResponseStatus::Ok(KvResponse::Value(Some(Bytes::from_static(b"v"))).encode()));
    assert_eq!(ask(write(put())), written, "the retry of the first command");
    drop(handle);
    cluster.shutdown().expect("a clean stop");
}
