//! Multi-process tests with the real `node` binary on loopback: three- and
//! five-node clusters elect a leader, replicate, serve linearizable reads,
//! survive the leader being killed, change membership, transfer leadership,
//! and restart from their data directories with every acknowledged write.
//! Each test uses its own port range so the tests can run in parallel.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use net::session::Session;
use net::{AdminRequest, ReadConsistency, RequestBody, ResponseStatus};
use node::client_cmd::{call, BlockingClient};
use node::config::ClientConfig;
use node::kv::{KvOp, KvResponse};

mod common;

const TOKEN: &str = "test-cluster-token";

struct TestCluster {
    dir: PathBuf,
    base_port: u16,
    /// Members listed in `--peers` (joiners add themselves).
    peers: Vec<u64>,
    nodes: BTreeMap<u64, Child>,
    /// More `node serve` arguments for every node.
    extra_args: Vec<&'static str>,
    /// Whether each node's log goes to `node-ID.log` in `dir` (see
    /// [`TestCluster::log`]) instead of the test's output.
    logged: bool,
}

impl TestCluster {
    fn start(count: u64, base_port: u16) -> TestCluster {
        TestCluster::start_with(count, base_port, &[])
    }

    fn start_with(count: u64, base_port: u16, extra_args: &[&'static str]) -> TestCluster {
        TestCluster::start_opts(count, base_port, extra_args, false)
    }

    fn start_opts(count: u64, base_port: u16, extra_args: &[&'static str], logged: bool) -> TestCluster {
        let dir = std::env::temp_dir().join(format!("node-test-{}-{base_port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut cluster = TestCluster {
            dir,
            base_port,
            peers: (1..=count).collect(),
            nodes: BTreeMap::new(),
            extra_args: extra_args.to_vec(),
            logged,
        };
        for id in 1..=count {
            cluster.spawn(id, false);
        }
        cluster
    }

    fn peer_port(&self, id: u64) -> u16 {
        self.base_port + 2 * (id as u16 - 1)
    }

    fn client_port(&self, id: u64) -> u16 {
        self.peer_port(id) + 1
    }

    fn spawn(&mut self, id: u64, join: bool) {
        let mut peers: Vec<u64> = self.peers.clone();
        if !peers.contains(&id) {
            peers.push(id);
        }
        let list: Vec<String> = peers.iter().map(|p| format!("{p}=127.0.0.1:{}", self.peer_port(*p))).collect();
        let mut command = Command::new(env!("CARGO_BIN_EXE_node"));
        command
            .args(["serve", "--node-id", &id.to_string(), "--cluster-id", "9"])
            .args(["--peer-addr", &format!("127.0.0.1:{}", self.peer_port(id))])
            .args(["--client-addr", &format!("127.0.0.1:{}", self.client_port(id))])
            .args(["--peers", &list.join(",")])
            .args(["--data-dir", &self.dir.join(format!("node-{id}")).display().to_string()])
            .args(["--pin-cores", "false"])
            .args(&self.extra_args)
            .env("NODE_TOKEN", TOKEN)
            .stdout(Stdio::null());
        if join {
            command.arg("--join");
        }
        if !self.extra_args.contains(&"--log-level") {
            command.args(["--log-level", "warn"]);
        }
        if self.logged {
            let path = self.dir.join(format!("node-{id}.log"));
            let file = std::fs::OpenOptions::new().create(true).append(true).open(path).expect("log file");
            command.stderr(file);
        }
        let child = command.spawn().expect("start node");
        self.nodes.insert(id, child);
    }

    /// What node `id` logged (with `logged`).
    fn log(&self, id: u64) -> String {
        std::fs::read_to_string(self.dir.join(format!("node-{id}.log"))).unwrap_or_default()
    }

    fn kill(&mut self, id: u64) {
        if let Some(mut child) = self.nodes.remove(&id) {
            let _ = child.kill(); // SIGKILL: no clean shutdown
            let _ = child.wait();
        }
    }

    fn client(&self, ids: &[u64]) -> ClientConfig {
        common::local_client(ids.iter().map(|id| self.client_port(*id)), 9, TOKEN)
    }

    fn live(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    fn status(&self, id: u64) -> Option<serde_json::Value> {
        common::status(self.client(&[id]))
    }

    /// Waits until a live node reports itself leader and returns it.
    fn leader(&self) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            for id in self.live() {
                if let Some(status) = self.status(id) {
                    if status["role"] == "Leader" {
                        return id;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("no leader within 30 s");
    }

    /// A client of the live nodes with a session of its own.
    fn writer(&self) -> Writer {
        let mut client = BlockingClient::new(&self.client(&self.live())).expect("a client");
        let session = client.open_session().expect("a session opens");
        Writer { client, session, last: None }
    }

    fn get(&self, via: &[u64], key: &str, consistency: ReadConsistency) -> Option<Bytes> {
        let op = KvOp::Get { key: Bytes::from(key.to_string()) };
        let status =
            call(&self.client(via), RequestBody::Read { query: op.encode(), consistency }).expect("read answered");
        match status {
            ResponseStatus::Ok(bytes) => match KvResponse::decode(&bytes).expect("decodes") {
                KvResponse::Value(value) => value,
                other => panic!("unexpected answer {other:?}"),
            },
            other => panic!("read {key}: {other:?}"),
        }
    }

    fn admin(&self, request: AdminRequest) -> ResponseStatus {
        call(&self.client(&self.live()), RequestBody::Admin(request)).expect("admin answered")
    }

    /// Waits until node `id` has applied at least `index`.
    fn wait_applied(&self, id: u64, index: u64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.status(id).is_some_and(|s| s["applied"].as_u64().unwrap_or(0) >= index) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("node {id} did not apply index {index} within 30 s");
    }
}

/// A client writing in one exactly-once session.
struct Writer {
    client: BlockingClient,
    session: Session,
    /// The last write's sequence and command, to send it again.
    last: Option<(u64, Bytes)>,
}

impl Writer {
    fn put(&mut self, key: &str, value: &str) {
        let op = KvOp::Put { key: Bytes::from(key.to_string()), value: Bytes::from(value.to_string()) };
        let sequence = self.session.start();
        self.last = Some((sequence, op.encode()));
        let answer = self.client.write_again(&mut self.session, sequence, op.encode()).expect("write answered");
        assert_eq!(answer, KvResponse::Written.encode(), "put {key}");
    }

    /// Sends the last write again with its sequence, as a client that lost
    /// the answer does (acknowledging nothing new).
    fn retry_last(&mut self) -> ResponseStatus {
        let (sequence, command) = self.last.clone().expect("a write before");
        self.client
            .call_in_session(self.session.client_id(), sequence, sequence, RequestBody::Write { command })
            .expect("retry answered")
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        let ids: Vec<u64> = self.live();
        for id in ids {
            self.kill(id);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn three_nodes_replicate_read_and_survive_leader_kill() {
    let mut cluster = TestCluster::start(3, 21100);
    let leader = cluster.leader();
    let mut writer = cluster.writer();
    for i in 1..=30 {
        writer.put(&format!("k{i}"), &format!("v{i}"));
    }
    for i in 1..=30 {
        let value = cluster.get(&[leader], &format!("k{i}"), ReadConsistency::Linearizable);
        assert_eq!(value, Some(Bytes::from(format!("v{i}"))));
    }
    // A linearizable read through a follower goes through the leader.
    let follower = cluster.live().into_iter().find(|&id| id != leader).unwrap();
    assert_eq!(cluster.get(&[follower], "k30", ReadConsistency::Linearizable), Some(Bytes::from("v30")));

    cluster.kill(leader);
    let new_leader = cluster.leader();
    assert_ne!(new_leader, leader);
    for i in 31..=60 {
        writer.put(&format!("k{i}"), &format!("v{i}"));
    }
    // A retried write (same session and sequence) is applied once: the
    // node answers from the session table, which survived the failover.
    assert_eq!(writer.retry_last(), ResponseStatus::Ok(KvResponse::Written.encode()));
    for i in 1..=60 {
        assert_eq!(
            cluster.get(&cluster.live(), &format!("k{i}"), ReadConsistency::Linearizable),
            Some(Bytes::from(format!("v{i}")))
        );
    }
    // The killed node restarts from its data directory and catches up.
    cluster.spawn(leader, false);
    let commit = cluster.status(new_leader).unwrap()["commit"].as_u64().unwrap();
    cluster.wait_applied(leader, commit);
    for i in [1, 30, 31, 60] {
        assert_eq!(
            cluster.get(&[leader], &format!("k{i}"), ReadConsistency::Stale),
            Some(Bytes::from(format!("v{i}")))
        );
    }
}

#[test]
fn five_nodes_survive_two_failures() {
    let mut cluster = TestCluster::start(5, 21200);
    let leader = cluster.leader();
    let mut writer = cluster.writer();
    for i in 1..=20 {
        writer.put(&format!("a{i}"), "x");
    }
    let others: Vec<u64> = cluster.live().into_iter().filter(|&id| id != leader).collect();
    cluster.kill(leader);
    cluster.kill(others[0]);
    cluster.leader();
    for i in 21..=40 {
        writer.put(&format!("a{i}"), "y");
    }
    for i in [1, 20, 21, 40] {
        assert!(cluster.get(&cluster.live(), &format!("a{i}"), ReadConsistency::Linearizable).is_some());
    }
}

#[test]
fn all_nodes_killed_and_restarted_keep_every_acknowledged_write() {
    let mut cluster = TestCluster::start(3, 21300);
    cluster.leader();
    let mut writer = cluster.writer();
    for i in 1..=100 {
        writer.put(&format!("d{i}"), &format!("{i}"));
    }
    drop(writer);
    for id in 1..=3 {
        cluster.kill(id);
    }
    for id in 1..=3 {
        cluster.spawn(id, false);
    }
    cluster.leader();
    for i in 1..=100 {
        assert_eq!(
            cluster.get(&cluster.live(), &format!("d{i}"), ReadConsistency::Linearizable),
            Some(Bytes::from(format!("{i}"))),
            "acknowledged write d{i} lost"
        );
    }
}

#[test]
fn membership_changes_and_leader_transfer() {
    let mut cluster = TestCluster::start(3, 21400);
    cluster.leader();
    let mut writer = cluster.writer();
    writer.put("before", "join");
    // Node 4 joins: started empty with --join, added as a learner, promoted.
    cluster.spawn(4, true);
    let addr = format!("127.0.0.1:{}", cluster.peer_port(4));
    assert_eq!(cluster.admin(AdminRequest::AddLearner { id: 4, addr }), ResponseStatus::Ok(Bytes::new()));
    let leader = cluster.leader();
    let commit = cluster.status(leader).unwrap()["commit"].as_u64().unwrap();
    cluster.wait_applied(4, commit);
    assert_eq!(cluster.get(&[4], "before", ReadConsistency::Stale), Some(Bytes::from("join")));
    // Only a learner is promoted: node 5 is no member at all.
    match cluster.admin(AdminRequest::Promote { id: 5 }) {
        ResponseStatus::BadRequest(reason) => assert!(reason.contains("node 5 is not a learner"), "{reason}"),
        other => panic!("promoting a non-member: {other:?}"),
    }
    assert_eq!(cluster.admin(AdminRequest::Promote { id: 4 }), ResponseStatus::Ok(Bytes::new()));
    let status = cluster.status(leader).unwrap();
    let voters: Vec<u64> = status["voters"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    assert_eq!(voters, vec![1, 2, 3, 4]);

    // Hand leadership to node 4, then remove the old leader.
    assert_eq!(cluster.admin(AdminRequest::TransferLeader { id: 4 }), ResponseStatus::Ok(Bytes::new()));
    let deadline = Instant::now() + Duration::from_secs(20);
    while cluster.leader() != 4 {
        assert!(Instant::now() < deadline, "leadership did not move to node 4");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(cluster.admin(AdminRequest::Remove { id: leader }), ResponseStatus::Ok(Bytes::new()));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = cluster.status(4).unwrap();
        let voters: Vec<u64> = status["voters"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
        if !voters.contains(&leader) && status["voters_outgoing"].as_array().unwrap().is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "node {leader} was not removed: {status}");
        std::thread::sleep(Duration::from_millis(100));
    }
    cluster.kill(leader);
    let mut writer = cluster.writer();
    writer.put("after", "remove");
    assert_eq!(cluster.get(&cluster.live(), "after", ReadConsistency::Linearizable), Some(Bytes::from("remove")));
}

#[test]
fn a_read_without_a_consistency_uses_the_node_default() {
    let cluster = TestCluster::start(3, 21500);
    cluster.leader();
    cluster.writer().put("k", "v");
    // NodeDefault is linearizable unless the node is configured otherwise.
    assert_eq!(cluster.get(&cluster.live(), "k", ReadConsistency::NodeDefault), Some(Bytes::from("v")));
}

#[test]
fn a_follower_forwards_session_writes_to_the_leader_when_asked() {
    let cluster = TestCluster::start_with(3, 21600, &["--forward-writes"]);
    let leader = cluster.leader();
    let follower = cluster.live().into_iter().find(|&id| id != leader).expect("a follower");
    // The session is opened through the follower too (forwarded, and
    // answered when the follower applies the opening).
    let mut client = BlockingClient::new(&cluster.client(&[follower])).expect("a client");
    let session = client.open_session().expect("a session opens through a follower").client_id();
    let mut put = |sequence: u64, value: &str| {
        let op = KvOp::Put { key: Bytes::from_static(b"forwarded"), value: Bytes::from(value.to_string()) };
        client
            .call_in_session(session, sequence, sequence, RequestBody::Write { command: op.encode() })
            .expect("write answered")
    };
    // The follower answers the write itself (a redirect would have sent this
    // client elsewhere, and the follower would count no forwarded write).
    assert_eq!(put(1, "first"), ResponseStatus::Ok(KvResponse::Written.encode()));
    let status = cluster.status(follower).expect("status");
    assert!(status["writes_forwarded"].as_u64() >= Some(1), "{status}");
    assert_eq!(status["forwarded_writes_waiting"], 0, "{status}");
    // A retry of the same sequence is answered from the session; another
    // command under it is refused (the session keeps each answer's command
    // fingerprint); neither is applied again; the next sequence is.
    assert_eq!(put(1, "first"), ResponseStatus::Ok(KvResponse::Written.encode()));
    assert!(matches!(put(1, "another value"), ResponseStatus::BadRequest(_)));
    assert_eq!(cluster.get(&[leader], "forwarded", ReadConsistency::Linearizable), Some(Bytes::from("first")));
    assert_eq!(put(2, "second"), ResponseStatus::Ok(KvResponse::Written.encode()));
    assert_eq!(cluster.get(&[follower], "forwarded", ReadConsistency::Linearizable), Some(Bytes::from("second")));
    // Without a session a write cannot be matched when applied: the follower
    // redirects it (the client follows) and forwards nothing.
    let forwarded = cluster.status(follower).expect("status")["writes_forwarded"].clone();
    let op = KvOp::Put { key: Bytes::from_static(b"plain"), value: Bytes::from_static(b"v") };
    let answer = call(&cluster.client(&[follower]), RequestBody::Write { command: op.encode() });
    assert_eq!(answer.expect("write answered"), ResponseStatus::Ok(KvResponse::Written.encode()));
    assert_eq!(cluster.status(follower).expect("status")["writes_forwarded"], forwarded);
}

/// Issue 15: `node kv put` run from a fresh pid namespace each time (as
/// every `docker exec` or `kubectl exec` is) must never have its write
/// answered from another process's session. Every acknowledged put must be
/// visible to the next get. Needs root for `unshare --pid`; without it the
/// test says so loudly and checks the same sequence without namespaces
/// (CI runs as root).
#[test]
fn cli_puts_from_fresh_pid_namespaces_are_never_lost() {
    let cluster = TestCluster::start(3, 21700);
    cluster.leader();
    let node = env!("CARGO_BIN_EXE_node");
    let addrs: Vec<String> =
        cluster.live().iter().map(|id| format!("127.0.0.1:{}", cluster.client_port(*id))).collect();
    let addrs = addrs.join(",");
    let namespaces = std::process::Command::new("unshare")
        .args(["--pid", "--fork", "true"])
        .status()
        .is_ok_and(|status| status.success());
    if !namespaces {
        eprintln!(
            "\n*** SKIPPING PID NAMESPACES: `unshare --pid --fork` is not available (needs root and util-linux); \
             running the CLI without namespaces instead ***\n"
        );
    }
    let output = |args: &[&str]| -> std::process::Output {
        let mut command = if namespaces {
            let mut command = std::process::Command::new("unshare");
            command.args(["--pid", "--fork", node]);
            command
        } else {
            std::process::Command::new(node)
        };
        command
            .arg("kv")
            .args(["--addr", &addrs, "--cluster-id", "9"])
            .args(args)
            .env("NODE_TOKEN", TOKEN)
            .output()
            .expect("run the CLI")
    };
    let run = |args: &[&str]| -> String {
        let output = output(args);
        assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    };
    let mut lost = Vec::new();
    for i in 1..=60 {
        let value = format!("v{i}");
        assert_eq!(run(&["put", "k", &value]), "OK");
        let read = run(&["get", "k"]);
        if read != value {
            lost.push(format!("put {value} acknowledged, then get returned {read}"));
        }
    }
    assert!(lost.is_empty(), "{} of 60 acknowledged puts were lost:\n{}", lost.len(), lost.join("\n"));
    // A compare-and-swap whose condition does not hold exits 1 (it exited
    // 0, so a script could not tell it from a swap but by its text).
    let refused = output(&["cas", "k", "--expected", "v1", "--new", "w"]);
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    assert_eq!(String::from_utf8_lossy(&refused.stdout).trim(), "not swapped; current value: v60");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("nothing was written"), "{refused:?}");
    assert_eq!(run(&["cas", "k", "--expected", "v60", "--new", "w"]), "swapped");
    assert_eq!(run(&["get", "k"]), "w");
}

/// Core k of a node talks to core k of its peers, so every node must run
/// the same number of cores: a node that runs 2 for its 2 shards (the
/// default on a 2-CPU machine) and a peer told `--cores 1` (or one on a
/// 1-CPU machine) never replicate shard 1 between them. The messages used to
/// be dropped without a word; the node that gets them on the wrong core now
/// says what is wrong.
/// Node `id` of a three-node cluster (cluster id 9) on the ports from
/// `base` (peer `base + 2 (id - 1)`, client one above), `--shards
/// shards --cores cores`, its data directory and log (`node-ID.log`) in
/// `dir`: for tests that give nodes different settings.
fn start_node_with(dir: &std::path::Path, base: u16, id: u64, shards: &str, cores: &str) -> Child {
    let stderr = std::fs::File::create(dir.join(format!("node-{id}.log"))).unwrap();
    let peers: Vec<String> = (1..=3u16).map(|peer| format!("{peer}=127.0.0.1:{}", base + 2 * (peer - 1))).collect();
    let (peer, client) = (base + 2 * (id as u16 - 1), base + 1 + 2 * (id as u16 - 1));
    Command::new(env!("CARGO_BIN_EXE_node"))
        .args(["serve", "--node-id", &id.to_string(), "--cluster-id", "9", "--peers", &peers.join(",")])
        .args(["--peer-addr", &format!("127.0.0.1:{peer}"), "--client-addr", &format!("127.0.0.1:{client}")])
        .args(["--shards", shards, "--cores", cores, "--pin-cores", "false"])
        .args(["--data-dir", &dir.join(format!("node-{id}")).display().to_string()])
        .env("NODE_TOKEN", TOKEN)
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("start node")
}

/// Nodes that run different shard counts do not link: a key's shard is a
/// function of the count, so a node with 4 shards among nodes with 2 sent
/// some keys' writes to another group than the others did. Before, with
/// node 1 leading shard 1, a write of such a key through node 1 was
/// acknowledged and read back there, and node 2 answered that the key was
/// absent. Now every node names the mismatch and node 1 links to no one:
/// what it acknowledges (nothing, here) every node reads. Started again
/// with the others' count, it joins them.
#[test]
fn nodes_with_different_shard_counts_do_not_link() {
    let dir = std::env::temp_dir().join(format!("node-test-{}-shard-counts", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let client_addr = |id: u64| format!("127.0.0.1:{}", 25_151 + 2 * (id - 1));
    let start = |id: u64, shards: &str| start_node_with(&dir, 25_150, id, shards, "1");
    // `kv` or `admin`, its options, then the rest.
    let cli = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_node"))
            .arg(args[0])
            .args(["--cluster-id", "9", "--timeout", "2s"])
            .args(&args[1..])
            .env("NODE_TOKEN", TOKEN)
            .output()
            .expect("run the CLI")
    };
    let mut nodes = [start(1, "4"), start(2, "2"), start(3, "2")];
    let log = |id: u64| std::fs::read_to_string(dir.join(format!("node-{id}.log"))).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(20);
    let named = |id: u64, text: &str| log(id).contains(text);
    while !(named(1, "the peer runs 2 shard(s) and this node 4")
        && named(2, "the peer runs 4 shard(s) and this node 2"))
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    // Hand shard 1 to node 1 (before, this made node 1 take writes for it);
    // now node 1 never leads, and this gives up after 5 s.
    let node_1_leads_shard_1 = || {
        let status = cli(&["admin", "--addr", &client_addr(1), "--shard", "1", "status"]);
        let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap_or_default();
        status.pointer("/0/leader").or(status.get("leader")).and_then(serde_json::Value::as_u64) == Some(1)
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !node_1_leads_shard_1() && Instant::now() < deadline {
        let _ = cli(&["admin", "--addr", &client_addr(2), "--shard", "1", "transfer-leader", "1"]);
        std::thread::sleep(Duration::from_millis(300));
    }
    // Keys that 4 shards put in shard 1 and 2 shards in shard 0.
    let keys: Vec<String> = (0..400)
        .map(|i| format!("key{i}"))
        .filter(|key| net::kv::shard_for_key(key.as_bytes(), 4) == 1 && net::kv::shard_for_key(key.as_bytes(), 2) == 0)
        .take(4)
        .collect();
    let mut unseen = Vec::new();
    for key in &keys {
        if cli(&["kv", "--addr", &client_addr(1), "put", key, "through-node-1"]).status.success() {
            let read = cli(&["kv", "--addr", &client_addr(2), "get", key]);
            if String::from_utf8_lossy(&read.stdout).trim() != "through-node-1" {
                unseen.push(key.clone());
            }
        }
    }
    let logs = (log(1), log(2), log(3));
    // Node 1's status says why its links are down (each shard of its one
    // core reports the core's links).
    let links = |id: u64| {
        let status = cli(&["admin", "--addr", &client_addr(id), "--shard", "0", "status"]);
        let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap_or_default();
        status.pointer("/0/links").or(status.get("links")).cloned().unwrap_or_default()
    };
    let links_while_apart = links(1);
    // The fix: node 1 started again, empty, with the others' count. (A new
    // cluster's first election needs every listed node, so until then
    // there was no leader at all.)
    let _ = nodes[0].kill();
    let _ = nodes[0].wait();
    std::fs::remove_dir_all(dir.join("node-1")).unwrap();
    nodes[0] = start(1, "2");
    let deadline = Instant::now() + Duration::from_secs(30);
    let put = loop {
        let put = cli(&["kv", "--addr", &client_addr(2), "put", "shared", "yes"]);
        if put.status.success() || Instant::now() > deadline {
            break put;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let got = cli(&["kv", "--addr", &client_addr(1), "get", "shared"]);
    let links_after = links(1);
    for node in &mut nodes {
        let _ = node.kill();
        let _ = node.wait();
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(keys.len(), 4);
    assert!(unseen.is_empty(), "writes acknowledged through node 1 that node 2 does not read: {unseen:?}");
    for (id, log, theirs, ours) in [(1, &logs.0, 2, 4), (2, &logs.1, 4, 2), (3, &logs.2, 4, 2)] {
        let text = format!("the peer runs {theirs} shard(s) and this node {ours}");
        assert!(log.contains(&text), "node {id} did not name the mismatch ({text}):\n{log}");
        assert!(log.contains("same --shards"), "{log}");
    }
    let peers_of = |links: &serde_json::Value| -> Vec<u64> {
        links.as_array().map_or_else(Vec::new, |links| links.iter().filter_map(|l| l["peer"].as_u64()).collect())
    };
    assert_eq!(peers_of(&links_while_apart), [2, 3], "{links_while_apart}");
    for link in links_while_apart.as_array().unwrap() {
        assert_eq!(link["connected"], false, "{link}");
        assert!(link["problem"].as_str().is_some_and(|why| why.contains("runs 2 shard(s)")), "{link}");
        assert!(link["shard_count_mismatches"].as_u64() > Some(0), "{link}");
    }
    assert!(put.status.success(), "no write taken once node 1 runs 2 shards: {}", String::from_utf8_lossy(&put.stderr));
    assert_eq!(String::from_utf8_lossy(&got.stdout).trim(), "yes");
    assert_eq!(peers_of(&links_after), [2, 3], "{links_after}");
    for link in links_after.as_array().unwrap() {
        assert_eq!((link["connected"].as_bool(), link["problem"].as_str()), (Some(true), None), "{link}");
    }
}

#[test]
fn a_peer_with_another_core_count_is_reported() {
    let dir = std::env::temp_dir().join(format!("node-test-{}-cores", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let start = |id: u64, cores: &str| start_node_with(&dir, 25_100, id, "2", cores);
    let mut nodes = [start(1, "2"), start(2, "1")];
    // Node 2 sends shard 1's vote requests from its only core to node 1's
    // core 0, which runs shard 0 only.
    let deadline = Instant::now() + Duration::from_secs(20);
    let log = loop {
        let log = std::fs::read_to_string(dir.join("node-1.log")).unwrap_or_default();
        if log.contains("a shard this core does not run") || Instant::now() > deadline {
            break log;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    for node in &mut nodes {
        let _ = node.kill();
        let _ = node.wait();
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(log.contains("a shard this core does not run"), "node 1 did not report the mismatch:\n{log}");
    assert!(log.contains("same --shards and --cores"), "{log}");
    // It says where its own count came from (node 1 was given it).
    assert!(log.contains("given with --cores"), "{log}");
}

/// A fresh directory for one test's node, named for `name`.
fn fresh_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("node-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A single node of cluster 9 on `peer_port` and the next port, its data
/// in `dir`, with its standard error piped.
fn start_single(dir: &std::path::Path, peer_port: u16, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_node"))
        .args(["serve", "--node-id", "1", "--cluster-id", "9"])
        .args(["--peer-addr", &format!("127.0.0.1:{peer_port}")])
        .args(["--client-addr", &format!("127.0.0.1:{}", peer_port + 1)])
        .args(["--peers", &format!("1=127.0.0.1:{peer_port}"), "--pin-cores", "false"])
        .args(["--data-dir", &dir.join("node-1").display().to_string(), "--log-level", "info"])
        .args(args)
        .env("NODE_TOKEN", TOKEN)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start node")
}

/// A client of the single node whose client port is `port`, and a session.
fn single_client(port: u16) -> (ClientConfig, BlockingClient, Session) {
    let config = common::local_client([port], 9, TOKEN);
    let mut client = BlockingClient::new(&config).expect("a client");
    let session = client.open_session().expect("the single node opens a session");
    (config, client, session)
}

/// Sends SIGTERM to `child` and waits for it: its exit status, how long it
/// took, and its standard error.
fn terminate(mut child: Child) -> (std::process::ExitStatus, Duration, String) {
    // SAFETY: plain syscall on a child process this test owns.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let started = Instant::now();
    let status = child.wait().expect("the node exits");
    let elapsed = started.elapsed();
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    (status, elapsed, stderr)
}

/// The node `terminate` stopped exited successfully within 3 s, every one
/// of its `shards` shards stopped cleanly, and every log was closed.
fn assert_stopped_cleanly((status, elapsed, stderr): (std::process::ExitStatus, Duration, String), shards: usize) {
    assert!(status.success(), "exit {status:?}\n{stderr}");
    assert!(elapsed < Duration::from_secs(3), "stopping took {elapsed:?}\n{stderr}");
    assert_eq!(stderr.matches("shard stopped cleanly").count(), shards, "{stderr}");
    assert!(!stderr.contains("not closed"), "{stderr}");
}

/// SIGTERM stops a node cleanly and promptly: waiting clients are
/// answered, the hard state saved, and every shard's log closed (a log
/// still held by the driver loop once made shutdown wait its full 5 s and
/// leave the WAL unclosed).
#[test]
fn sigterm_stops_the_node_cleanly_and_closes_its_logs() {
    let dir = fresh_dir("sigterm");
    let child = start_single(&dir, 21800, &["--shards", "2"]);
    let (_, mut client, mut session) = single_client(21801);
    let put = KvOp::Put { key: Bytes::from_static(b"k"), value: Bytes::from_static(b"v") };
    client.write(&mut session, put.encode()).expect("a write");
    let stopped = terminate(child);
    let _ = std::fs::remove_dir_all(&dir);
    assert_stopped_cleanly(stopped, 2);
}

/// SIGTERM while a local snapshot is being written gives the snapshot up:
/// a paced snapshot (here 96 MiB at 8 MB/s, the rate for a node's first
/// snapshot) held the log, so the node waited 5 s for it and then stopped
/// without closing the log (`log still in use at shutdown; not closed`).
/// Nothing is lost: the log the snapshot would have let the node compact
/// is still there, and the node restarts from it.
#[test]
fn sigterm_stops_promptly_while_a_snapshot_is_written() {
    let dir = fresh_dir("sigterm-snapshot");
    let child = start_single(&dir, 21810, &["--shards", "1"]);
    let (config, mut client, mut session) = single_client(21811);
    let value = |key: u32| Bytes::from(vec![key as u8; 512 << 10]);
    for key in 0..192u32 {
        let put = KvOp::Put { key: Bytes::from(key.to_be_bytes().to_vec()), value: value(key) };
        client.write(&mut session, put.encode()).expect("a write");
    }
    let taken = call(&config, RequestBody::Admin(AdminRequest::TakeSnapshot)).expect("a snapshot");
    assert!(matches!(taken, ResponseStatus::Ok(_)), "{taken:?}");
    drop(client);
    assert_stopped_cleanly(terminate(child), 1);

    // It restarts from its log with every value.
    let child = start_single(&dir, 21810, &["--shards", "1"]);
    let mut client = BlockingClient::new(&config).expect("a client");
    for key in [0u32, 191] {
        let get = KvOp::Get { key: Bytes::from(key.to_be_bytes().to_vec()) };
        let read = client.read(get.encode(), ReadConsistency::Linearizable).expect("a read after the restart");
        assert_eq!(read, KvResponse::Value(Some(value(key))).encode(), "key {key}");
    }
    drop(client);
    let (status, _, stderr) = terminate(child);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(status.success(), "exit {status:?}\n{stderr}");
}

/// Issue 20: on a four-shard cluster `node kv` puts each key on the shard
/// that owns it (`net::kv::shard_for_key`; the cluster tells clients how
/// many shards it has), every key reads back through any node, and a keyed
/// request sent to the wrong shard is refused with the right one named.
/// The four shards share one core per node (`--cores 1`, as a local cluster
/// of three nodes on two CPUs runs them; `t50_chaos` runs four shards on
/// the default cores).
#[test]
fn keys_spread_over_four_shards_and_read_back_through_any_node() {
    let cluster = TestCluster::start_with(3, 21900, &["--shards", "4", "--cores", "1"]);
    let node = env!("CARGO_BIN_EXE_node");
    let cli = |via: u64, args: &[&str]| -> String {
        let output = Command::new(node)
            .arg("kv")
            .args(["--addr", &format!("127.0.0.1:{}", cluster.client_port(via)), "--cluster-id", "9"])
            .args(args)
            .env("NODE_TOKEN", TOKEN)
            .output()
            .expect("run the CLI");
        assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    };
    // Wait until every shard has a leader (the CLI retries for 5 s anyway).
    for shard in 0..4 {
        let mut config = cluster.client(&cluster.live());
        config.shard = shard;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status = call(&config, RequestBody::Status).expect("status");
            let ResponseStatus::Ok(json) = status else { panic!("status answered {status:?}") };
            let status: serde_json::Value = serde_json::from_slice(&json).unwrap();
            if status["leader"].as_u64().unwrap_or(0) != 0 {
                break;
            }
            assert!(Instant::now() < deadline, "shard {shard} has no leader");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let mut per_shard = [0u32; 4];
    for i in 0..40 {
        let key = format!("user-{i}");
        per_shard[net::kv::shard_for_key(key.as_bytes(), 4) as usize] += 1;
        assert_eq!(cli(1 + i % 3, &["put", &key, &format!("v{i}")]), "OK");
    }
    assert!(per_shard.iter().all(|&count| count > 0), "the keys spread over every shard: {per_shard:?}");
    for i in 0..40 {
        for via in 1..=3 {
            assert_eq!(cli(via, &["get", &format!("user-{i}")]), format!("v{i}"), "user-{i} through node {via}");
        }
    }
    // Each shard applied exactly its keys' writes.
    for (shard, &expected) in per_shard.iter().enumerate() {
        let mut config = cluster.client(&cluster.live());
        config.shard = shard as u32;
        let status = call(&config, RequestBody::Status).expect("status");
        let ResponseStatus::Ok(json) = status else { panic!("{status:?}") };
        let status: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(status["shards"], 4);
        let leader = status["leader"].as_u64().unwrap();
        let mut stats_config = cluster.client(&[leader]);
        stats_config.shard = shard as u32;
        let stats = call(&stats_config, RequestBody::Admin(AdminRequest::Stats)).expect("stats");
        let ResponseStatus::Ok(json) = stats else { panic!("{stats:?}") };
        let stats: serde_json::Value = serde_json::from_slice(&json).unwrap();
        // Each put is a session opening, the write and the close: three.
        let applied = stats["stats"]["writes_applied"].as_u64().unwrap();
        assert!(applied >= u64::from(expected) * 3, "shard {shard}: {applied} writes for {expected} keys: {stats}");
    }
    // A key sent to a shard that does not own it is refused, naming its own.
    let key = "user-0";
    let owner = net::kv::shard_for_key(key.as_bytes(), 4);
    let mut config = cluster.client(&cluster.live());
    config.shard = (owner + 1) % 4;
    let op = KvOp::Get { key: Bytes::from(key) };
    let status = call(&config, RequestBody::Read { query: op.encode(), consistency: ReadConsistency::Linearizable })
        .expect("answered");
    match status {
        ResponseStatus::BadRequest(reason) => assert!(reason.contains(&format!("shard {owner} of 4")), "{reason}"),
        other => panic!("a misrouted read answered {other:?}"),
    }
}

/// Writes that reach the leader in one turn of its shard's loop are proposed
/// as one log entry (a group of writes); each client still gets its own
/// answer, in its session, and every write is applied exactly once.
#[test]
fn concurrent_writers_are_grouped_and_each_gets_its_own_answer() {
    const WRITERS: u64 = 24;
    const WRITES: u64 = 50;
    const COUNTERS: u64 = 4;
    let cluster = TestCluster::start(3, 22000);
    let leader = cluster.leader();
    let config = cluster.client(&[leader]);
    std::thread::scope(|scope| {
        for writer in 0..WRITERS {
            let config = config.clone();
            scope.spawn(move || {
                let mut client = BlockingClient::new(&config).expect("a client");
                let session = client.open_session().expect("a session").client_id();
                let key = Bytes::from(format!("counter-{}", writer % COUNTERS));
                let mut last = 0;
                for sequence in 1..=WRITES {
                    let op = KvOp::Increment { key: key.clone(), delta: 1 };
                    let answer = client
                        .call_in_session(session, sequence, sequence, RequestBody::Write { command: op.encode() })
                        .expect("write answered");
                    let ResponseStatus::Ok(body) = answer else { panic!("writer {writer}: {answer:?}") };
                    // The answer is this write's own: the counter after it,
                    // higher than after this writer's previous increment.
                    let Ok(KvResponse::Integer(value)) = KvResponse::decode(&body) else { panic!("{body:?}") };
                    assert!(value > last, "writer {writer}: {value} after {last}");
                    last = value;
                }
            });
        }
    });
    for counter in 0..COUNTERS {
        let value = cluster.get(&[leader], &format!("counter-{counter}"), ReadConsistency::Linearizable);
        let expected = (WRITERS / COUNTERS * WRITES).to_string();
        assert_eq!(value, Some(Bytes::from(expected)), "counter-{counter}: every increment applied once");
    }
    let stats = call(&config, RequestBody::Admin(AdminRequest::Stats)).expect("stats");
    let ResponseStatus::Ok(json) = stats else { panic!("{stats:?}") };
    let stats: serde_json::Value = serde_json::from_slice(&json).unwrap();
    let grouped = stats["stats"]["writes_grouped"].as_u64().unwrap();
    let groups = stats["stats"]["groups_proposed"].as_u64().unwrap();
    eprintln!("{grouped} of {} writes proposed in {groups} groups", WRITERS * WRITES);
    assert!(grouped > 0 && groups > 0, "{WRITERS} concurrent writers, and no two writes shared an entry: {stats}");
    assert!(grouped >= 2 * groups, "a group holds at least two writes");
}

/// A stopped node (SIGSTOP: it accepts connections and never answers) among
/// the addresses given to `node kv` must not sink a request the healthy
/// leader answers. The client went round the given nodes call by call, so
/// the session's write went to the stopped node and failed after the
/// default 5 s (`no node answered within 5s: ...: handshake timed out`),
/// and `--timeout 1s` against the stopped node alone still waited the
/// handshake's fixed 5 s (the shard count was asked without a deadline).
#[test]
fn a_stopped_node_among_the_addresses_does_not_sink_the_cli() {
    let mut cluster = TestCluster::start(3, 22300);
    let leader = cluster.leader();
    let stopped = if leader == 3 { 2 } else { 3 };
    let pid = cluster.nodes[&stopped].id().to_string();
    assert!(Command::new("kill").args(["-STOP", &pid]).status().unwrap().success());
    let addr = |id: u64| format!("127.0.0.1:{}", cluster.client_port(id));
    let run = |addrs: &str, args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_node"))
            .arg("kv")
            .args(["--addr", addrs, "--cluster-id", "9"])
            .args(args)
            .env("NODE_TOKEN", TOKEN)
            .output()
            .expect("run the CLI")
    };
    let healthy_first = format!("{},{}", addr(leader), addr(stopped));
    let stopped_first = format!("{},{}", addr(stopped), addr(leader));
    for (addrs, value) in [(&healthy_first, "a"), (&stopped_first, "b")] {
        let put = run(addrs, &["put", "key", value]);
        assert!(put.status.success(), "put via {addrs}: {}", String::from_utf8_lossy(&put.stderr));
        let get = run(addrs, &["get", "key"]);
        assert!(get.status.success(), "get via {addrs}: {}", String::from_utf8_lossy(&get.stderr));
        assert_eq!(String::from_utf8_lossy(&get.stdout).trim(), value);
    }
    // Alone, the stopped node fails within the timeout given, and says so.
    let started = Instant::now();
    let alone = run(&addr(stopped), &["--timeout", "1s", "get", "key"]);
    let elapsed = started.elapsed();
    let stderr = String::from_utf8_lossy(&alone.stderr);
    assert!(!alone.status.success() && stderr.contains("within 1s"), "{stderr}");
    assert!(elapsed < Duration::from_secs(4), "--timeout 1s took {elapsed:?} (the handshake's own 5 s)");
    let _ = Command::new("kill").args(["-CONT", &pid]).status();
    cluster.kill(stopped);
}

/// A node left without a majority says so, and says which peers it cannot
/// reach: the survivor of two killed members logged one `role changed` line
/// and nothing more.
#[test]
fn a_node_without_a_majority_says_so_and_names_the_peers_it_cannot_reach() {
    let mut cluster = TestCluster::start_opts(3, 22400, &["--log-level", "warn,net::link=info"], true);
    let leader = cluster.leader();
    let survivor = if leader == 1 { 2 } else { 1 };
    let gone: Vec<u64> = (1..=3).filter(|id| *id != survivor).collect();
    for id in &gone {
        cluster.kill(*id);
    }
    let names = |log: &str, id: u64| {
        log.lines().any(|line| line.contains("cannot reach the peer") && line.contains(&format!(" peer={id} ")))
    };
    let deadline = Instant::now() + Duration::from_secs(40);
    let log = loop {
        let log = cluster.log(survivor);
        let unreachable = gone.iter().all(|id| names(&log, *id));
        if (log.contains("no leader for") && unreachable) || Instant::now() > deadline {
            break log;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(log.contains("no leader for"), "no warning of the missing leader:\n{log}");
    for id in &gone {
        assert!(names(&log, *id), "peer {id} not named:\n{log}");
    }
    // Once one comes back, the link says so and a leader is elected.
    cluster.spawn(gone[0], false);
    cluster.leader();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cluster.log(survivor).contains("reached the peer again") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(cluster.log(survivor).contains("reached the peer again"), "{}", cluster.log(survivor));
}

/// Binary values and values beyond what a command line takes go in with
/// `--value-file` (a file, or `-` for standard input) and come out byte for
/// byte with `get --raw`; an absent key exits with status 1, and a closed
/// standard output is no crash.
#[test]
fn binary_values_go_in_from_a_file_and_come_out_raw() {
    let cluster = TestCluster::start(3, 22600);
    cluster.leader();
    let addrs: Vec<String> =
        cluster.live().iter().map(|id| format!("127.0.0.1:{}", cluster.client_port(*id))).collect();
    let addrs = addrs.join(",");
    let kv = |args: &[&str], stdin: Option<&[u8]>| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_node"))
            .arg("kv")
            .args(["--addr", &addrs, "--cluster-id", "9"])
            .args(args)
            .env("NODE_TOKEN", TOKEN)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run the CLI");
        let mut input = child.stdin.take().unwrap();
        if let Some(bytes) = stdin {
            std::io::Write::write_all(&mut input, bytes).unwrap();
        }
        drop(input);
        child.wait_with_output().unwrap()
    };
    let value: Vec<u8> = (0..300_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    let file = cluster.dir.join("value.bin");
    std::fs::write(&file, &value).unwrap();
    let put = kv(&["put", "blob", "--value-file", &file.display().to_string()], None);
    assert!(put.status.success(), "{}", String::from_utf8_lossy(&put.stderr));
    let get = kv(&["get", "blob", "--raw"], None);
    assert!(get.status.success(), "{}", String::from_utf8_lossy(&get.stderr));
    assert!(get.stdout == value, "{} bytes came back, not the 300,000 put", get.stdout.len());
    let put = kv(&["put", "nul", "--value-file", "-"], Some(b"a\0b\n"));
    assert!(put.status.success(), "{}", String::from_utf8_lossy(&put.stderr));
    assert_eq!(kv(&["get", "nul", "--raw"], None).stdout, b"a\0b\n");
    let absent = kv(&["get", "never-written", "--raw"], None);
    assert_eq!(absent.status.code(), Some(1));
    assert!(absent.stdout.is_empty());
    // Without `--raw` too (it exited 0: fifth audit).
    let absent = kv(&["get", "never-written"], None);
    assert_eq!(absent.status.code(), Some(1), "{absent:?}");
    assert_eq!(String::from_utf8_lossy(&absent.stdout).trim(), "(absent)");
    // A reader that closed the pipe before the answer came (`| head`) is
    // the reader's choice: no panic (it panicked: "failed printing to
    // stdout: Broken pipe", exit status 101).
    let mut child = Command::new(env!("CARGO_BIN_EXE_node"))
        .arg("kv")
        .args(["--addr", &addrs, "--cluster-id", "9", "get", "nul"])
        .env("NODE_TOKEN", TOKEN)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the CLI");
    drop(child.stdout.take());
    let closed = child.wait_with_output().unwrap();
    assert!(closed.status.success(), "{closed:?}: {}", String::from_utf8_lossy(&closed.stderr));
}

/// `node dev` stopped the way a terminal's Ctrl-C stops it (SIGINT to its
/// whole process group, the nodes included) exits 0 without an error: the
/// nodes stopping before the dev process's own handler ran were reported
/// as `node N exited early` with exit status 1. And at exit it removes only
/// what it made: with `--data-root DIR` it removed DIR and everything the
/// user had in it.
#[test]
fn node_dev_stops_cleanly_on_ctrl_c_and_removes_only_what_it_made() {
    use std::os::unix::process::CommandExt;
    let dir = std::env::temp_dir().join(format!("node-test-{}-dev", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("notes.txt"), "the user's own file").unwrap();
    // (Its output goes beside the root, not into it.)
    let (out, err) = (dir.with_extension("out"), dir.with_extension("err"));
    let mut dev = Command::new(env!("CARGO_BIN_EXE_node"))
        .args(["dev", "--base-port", "29700", "--data-root", dir.to_str().unwrap(), "--log-level", "info"])
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .process_group(0)
        .spawn()
        .expect("start node dev");
    let client = common::local_client([29_701, 29_703, 29_705], 1, "dev-cluster-token");
    let mut client = BlockingClient::new(&client).expect("a client");
    let put = KvOp::Put { key: Bytes::from_static(b"k"), value: Bytes::from_static(b"v") };
    let answer = client.write_at_least_once(put.encode()).expect("the dev cluster takes a write");
    assert_eq!(KvResponse::decode(&answer).unwrap(), KvResponse::Written);
    assert!(dir.join("node-1").is_dir(), "node 1's data directory is under the root");
    // What a terminal does on Ctrl-C is SIGINT to the foreground group; the
    // nodes may stop before `node dev`'s handler runs. Made certain here:
    // the nodes get theirs first, and `node dev` its own once they are gone.
    let nodes: Vec<i32> = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", dev.id()))
        .expect("the dev process's children")
        .split_whitespace()
        .map(|pid| pid.parse().unwrap())
        .collect();
    assert_eq!(nodes.len(), 3, "three nodes");
    for pid in &nodes {
        // SAFETY: signalling a process this test's child started.
        unsafe { libc::kill(*pid, libc::SIGINT) };
    }
    let exited = |pid: &i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map_or(true, |stat| stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z')))
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !nodes.iter().all(exited) {
        assert!(Instant::now() < deadline, "the nodes did not stop within 20 s of SIGINT");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(150));
    // SAFETY: signalling a child this test started.
    unsafe { libc::kill(dev.id() as i32, libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = dev.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "node dev did not stop within 20 s of Ctrl-C");
        std::thread::sleep(Duration::from_millis(50));
    };
    let stderr = std::fs::read_to_string(&err).unwrap();
    assert!(status.success(), "node dev exited with {status} on Ctrl-C:\n{stderr}");
    assert!(!stderr.contains("error:"), "{stderr}");
    assert!(dir.join("notes.txt").is_file(), "the user's file in --data-root was removed");
    for id in 1..=3 {
        assert!(!dir.join(format!("node-{id}")).exists(), "node {id}'s data directory is left behind");
    }
    std::fs::remove_dir_all(&dir).unwrap();
    let _ = (std::fs::remove_file(&out), std::fs::remove_file(&err));
}

/// `node dev` prints its banner (addresses, commands to try) only once
/// every node answers: with a port taken it printed the banner first and
/// the failure after it (found by an audit). Now it fails without one.
#[test]
fn node_dev_with_a_busy_port_fails_without_printing_its_banner() {
    let taken = std::net::TcpListener::bind("127.0.0.1:29963").expect("node 2's client port");
    let output = Command::new(env!("CARGO_BIN_EXE_node"))
        .args(["dev", "--base-port", "29960", "--log-level", "warn"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("run node dev");
    drop(taken);
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(!output.status.success(), "node dev served with a port taken:\n{stdout}\n{stderr}");
    assert!(stderr.contains("node 2 exited early"), "{stderr}");
    assert!(!stdout.contains("dev cluster:"), "the banner came before the failure:\n{stdout}");
}
