//! Membership with the real `node` binary on loopback: nodes join a running
//! cluster given one member's client address only (no --node-id, no
//! --peers), get ids from the cluster, are promoted once caught up, keep
//! their id across restarts; the member they joined through dies and
//! clients and the new members keep working; joining twice, the wrong
//! cluster or the wrong token are refused clearly; removing the leader hands
//! leadership over first, a down member can be removed, and a removed node
//! that comes back is refused. Each test uses its own port range.

use std::process::{Command, Stdio};

use bytes::Bytes;
use net::{AdminRequest, ReadConsistency, RequestBody, ResponseStatus};
use node::client_cmd::{call, BlockingClient};
use node::kv::{KvOp, KvResponse};

mod common;

const TOKEN: &str = "membership-test-token";
const CLUSTER: u64 = 9;

/// This test's slots (see `common::SlotCluster`).
type Cluster = common::SlotCluster;

fn new_cluster(base_port: u16) -> Cluster {
    common::SlotCluster::new("membership", base_port, CLUSTER, TOKEN)
}

/// This test's ways to start its slots.
trait Starts {
    fn bootstrap(&mut self, count: u64);
    fn join_command(&self, slot: u64, through: &[u64]) -> Command;
    fn join_command_in(&self, slot: u64, through: &[u64], cluster_id: u64) -> Command;
    fn join(&mut self, slot: u64, through: &[u64]);
    fn leader(&self) -> u64;
}

impl Starts for Cluster {
    /// Slots 1..=count bootstrap a cluster (node id = slot).
    fn bootstrap(&mut self, count: u64) {
        let peers: Vec<String> = (1..=count).map(|id| format!("{id}=127.0.0.1:{}", self.peer_port(id))).collect();
        for id in 1..=count {
            let mut command = self.command(id);
            command.args(["--node-id", &id.to_string(), "--cluster-id", &CLUSTER.to_string()]);
            command.args(["--peers", &peers.join(",")]);
            self.nodes.insert(id, command.spawn().expect("start node"));
        }
    }

    /// Slot `slot` joins through the client addresses of `through`.
    fn join_command(&self, slot: u64, through: &[u64]) -> Command {
        self.join_command_in(slot, through, CLUSTER)
    }

    fn join_command_in(&self, slot: u64, through: &[u64], cluster_id: u64) -> Command {
        let through: Vec<String> = through.iter().map(|s| format!("127.0.0.1:{}", self.client_port(*s))).collect();
        let mut command = self.command(slot);
        command.args(["--join", &through.join(","), "--cluster-id", &cluster_id.to_string()]);
        command
    }

    fn join(&mut self, slot: u64, through: &[u64]) {
        let child = self.join_command(slot, through).spawn().expect("start node");
        self.nodes.insert(slot, child);
    }

    /// The slot of the node that reports itself leader.
    fn leader(&self) -> u64 {
        let slots: Vec<u64> = self.nodes.keys().copied().collect();
        self.leader_among(slots.into_iter())
    }
}

fn put(client: &mut BlockingClient, key: &str, value: &str) {
    let op = KvOp::Put { key: Bytes::from(key.to_string()), value: Bytes::from(value.to_string()) };
    let mut session = client.open_session().expect("a session opens");
    let answer = client.write(&mut session, op.encode()).expect("write answered");
    assert_eq!(answer, KvResponse::Written.encode(), "put {key}");
}

fn get(client: &mut BlockingClient, key: &str) -> Option<Bytes> {
    let op = KvOp::Get { key: Bytes::from(key.to_string()) };
    let answer = client.read(op.encode(), ReadConsistency::Linearizable).expect("read answered");
    match KvResponse::decode(&answer).expect("decodes") {
        KvResponse::Value(value) => value,
        other => panic!("unexpected answer {other:?}"),
    }
}

/// Runs `command` to its end (it must fail, within a minute) and returns
/// what it printed.
fn refused(mut command: Command) -> String {
    let mut child = command.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("runs");
    let mut stderr = child.stderr.take().expect("piped");
    let printed = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("waits") {
            break Some(status);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let printed = printed.join().expect("read its output");
    match status {
        Some(status) => assert!(!status.success(), "the node started: {printed}"),
        None => panic!("the node was not refused: it still ran after a minute:\n{printed}"),
    }
    printed
}

#[test]
fn three_nodes_grow_to_five_through_one_member_which_then_dies() {
    let mut cluster = new_cluster(23100);
    cluster.bootstrap(3);
    cluster.leader();
    // A client given node 1 only: it learns the members from it, at its
    // first call, so only once node 1 knows their client addresses (each
    // member announces its own once there is a leader; under CI's load that
    // came after the first call once, and the client, knowing node 1
    // alone, had nowhere to go when it died).
    cluster.wait_status(1, "the members' client addresses", |status| {
        status["members"]
            .as_array()
            .is_some_and(|members| members.len() == 3 && members.iter().all(|member| member["client_addr"].is_string()))
    });
    let mut client = BlockingClient::new(&cluster.client(&[1])).expect("a client");
    put(&mut client, "before", "growing");

    // Two nodes join given node 1's client address and nothing else.
    cluster.join(4, &[1]);
    cluster.join(5, &[1]);
    let status = cluster.wait_status(1, "five voters", |status| {
        common::ids(&status["voters"]).len() == 5 && common::ids(&status["learners"]).is_empty()
    });
    let voters = common::ids(&status["voters"]);
    assert_eq!(&voters[..3], &[1, 2, 3], "{status}");
    let new_ids: Vec<u64> = voters[3..].to_vec();
    assert!(new_ids.iter().all(|&id| id > 3), "fresh ids above the bootstrap ones: {new_ids:?}");
    // Every member's addresses are in the replicated membership.
    let members = status["members"].as_array().unwrap();
    assert_eq!(members.len(), 5);
    for member in members {
        assert!(member["peer_addr"].is_string() && member["client_addr"].is_string(), "{member}");
    }
    let id_of_slot_4 = cluster.status(4).unwrap()["node"].as_u64().unwrap();
    assert!(new_ids.contains(&id_of_slot_4));

    // The member they joined through dies.
    cluster.kill(1);
    let leader = cluster.leader();
    assert_ne!(leader, 1);
    put(&mut client, "after", "node 1 died");
    assert_eq!(get(&mut client, "before"), Some(Bytes::from("growing")));
    // A client given a new member only works too.
    let mut through_new = BlockingClient::new(&cluster.client(&[5])).expect("a client");
    assert_eq!(get(&mut through_new, "after"), Some(Bytes::from("node 1 died")));
    put(&mut through_new, "via", "five");

    // A joined node restarts with the same command: same id, still a voter
    // (it joins through node 1, which is down: its data directory has all
    // it needs).
    cluster.kill(4);
    cluster.join(4, &[1, 2]);
    let status = cluster.wait_status(4, "slot 4 back", |status| status["applied"].as_u64().unwrap_or(0) > 0);
    assert_eq!(status["node"].as_u64(), Some(id_of_slot_4));
    let status =
        cluster.wait_status(2, "slot 4 a voter again", |status| common::ids(&status["voters"]).contains(&id_of_slot_4));
    assert!(!common::ids(&status["voters"]).contains(&0));
    assert_eq!(get(&mut through_new, "via"), Some(Bytes::from("five")));
}

#[test]
fn joining_twice_the_wrong_cluster_or_token_is_refused() {
    let mut cluster = new_cluster(23200);
    cluster.bootstrap(3);
    cluster.leader();
    // Wrong token.
    let mut command = cluster.join_command(4, &[2]);
    command.env("NODE_TOKEN", "not-the-token");
    let error = refused(command);
    eprintln!("wrong token: {error}");
    assert!(error.contains("cannot join through"), "{error}");
    let _ = std::fs::remove_dir_all(cluster.data_dir(4));
    // Wrong cluster id.
    let error = refused(cluster.join_command_in(4, &[2], 77));
    eprintln!("wrong cluster: {error}");
    assert!(error.contains("cannot join through"), "{error}");
    let _ = std::fs::remove_dir_all(cluster.data_dir(4));
    // Another shard count: the node would put keys in other shards than
    // the members do.
    let mut command = cluster.join_command(4, &[2]);
    command.args(["--shards", "2"]);
    let error = refused(command);
    eprintln!("wrong shard count: {error}");
    assert!(error.contains("the cluster runs 1 shard(s) and this node was started with --shards 2"), "{error}");
    let _ = std::fs::remove_dir_all(cluster.data_dir(4));

    cluster.join(4, &[2]);
    cluster.wait_status(2, "four voters", |status| common::ids(&status["voters"]).len() == 4);
    // The same data directory against another cluster id.
    cluster.kill(4);
    let error = refused(cluster.join_command_in(4, &[2], 77));
    assert!(error.contains("belongs to cluster 9"), "{error}");
    // The same node (its peer address) joining again with an empty data
    // directory.
    let kept = cluster.dir.join("slot-4-kept");
    std::fs::rename(cluster.data_dir(4), &kept).unwrap();
    let error = refused(cluster.join_command(4, &[2]));
    assert!(error.contains("already belongs to node 4"), "{error}");
    std::fs::remove_dir_all(cluster.data_dir(4)).unwrap();
    std::fs::rename(&kept, cluster.data_dir(4)).unwrap();
    cluster.join(4, &[2]);
    cluster.wait_status(4, "slot 4 back", |status| {
        status["node"].as_u64() == Some(4) && status["applied"].as_u64() > Some(0)
    });
}

#[test]
fn removing_the_leader_a_down_member_and_a_removed_node_coming_back() {
    let mut cluster = new_cluster(23300);
    cluster.bootstrap(3);
    cluster.join(4, &[1]);
    cluster.join(5, &[1]);
    cluster.wait_status(1, "five voters", |status| common::ids(&status["voters"]).len() == 5);
    let admin = |cluster: &Cluster, request: AdminRequest| {
        let live: Vec<u64> = cluster.nodes.keys().copied().collect();
        call(&cluster.client(&live), RequestBody::Admin(request)).expect("admin answered")
    };

    // Removing the leader: leadership moves first, then it is removed.
    let leader = cluster.leader();
    let leader_id = cluster.status(leader).unwrap()["node"].as_u64().unwrap();
    assert_eq!(admin(&cluster, AdminRequest::Remove { id: leader_id }), ResponseStatus::Ok(Bytes::new()));
    let other = *cluster.nodes.keys().find(|&&slot| slot != leader).unwrap();
    let status = cluster.wait_status(other, "the leader removed", |status| {
        !common::ids(&status["voters"]).contains(&leader_id) && common::ids(&status["voters_outgoing"]).is_empty()
    });
    assert_ne!(status["leader"].as_u64(), Some(leader_id));
    cluster.kill(leader);

    // Removing a member that is down (one that joined).
    let down = *cluster.nodes.keys().find(|&&slot| slot >= 4).unwrap();
    let down_id = cluster.status(down).unwrap()["node"].as_u64().unwrap();
    cluster.kill(down);
    cluster.leader();
    assert_eq!(admin(&cluster, AdminRequest::Remove { id: down_id }), ResponseStatus::Ok(Bytes::new()));
    let live = *cluster.nodes.keys().next().unwrap();
    cluster.wait_status(live, "the down member removed", |status| {
        !common::ids(&status["voters"]).contains(&down_id) && common::ids(&status["removed"]).contains(&down_id)
    });
    // The members stop dialling it: they kept trying (and warning) every
    // 2 s for as long as they ran (found by the membership audit).
    // (The kernel releases a killed node's port once it has torn its
    // io_uring down, which takes a moment.)
    let bound = std::time::Instant::now();
    let listener = loop {
        match std::net::TcpListener::bind(("127.0.0.1", cluster.peer_port(down))) {
            Ok(listener) => break listener,
            Err(error) if bound.elapsed() > std::time::Duration::from_secs(10) => panic!("its peer port: {error}"),
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(50)),
        }
    };
    std::thread::sleep(std::time::Duration::from_secs(1));
    listener.set_nonblocking(true).unwrap();
    while listener.accept().is_ok() {}
    let watched = std::time::Instant::now();
    let mut dialled = 0;
    while watched.elapsed() < std::time::Duration::from_secs(5) {
        if listener.accept().is_ok() {
            dialled += 1;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(dialled, 0, "the members still dial the removed node");
    drop(listener);
    // Removing it again (a retry) is done; removing an id that was never a
    // member is refused and burns nothing (it printed OK and marked the id
    // removed for good: a typo like `remove 33` for 3).
    assert_eq!(admin(&cluster, AdminRequest::Remove { id: down_id }), ResponseStatus::Ok(Bytes::new()));
    match admin(&cluster, AdminRequest::Remove { id: 33 }) {
        ResponseStatus::BadRequest(reason) => assert!(reason.contains("node 33 is not a member"), "{reason}"),
        other => panic!("removing a never-member answered {other:?}"),
    }
    let status = cluster.status(live).unwrap();
    assert!(!common::ids(&status["removed"]).contains(&33), "{status}");
    let mut client = BlockingClient::new(&cluster.client(&[live])).expect("a client");
    put(&mut client, "three", "left");

    // The removed node comes back with its command: refused, and it says so.
    let error = refused(cluster.join_command(down, &[live]));
    assert!(error.contains("was removed"), "{error}");
    // An id is never given out again.
    let status = cluster.status(live).unwrap();
    assert!(status["next_id"].as_u64().unwrap() > 5, "{status}");
}

/// A voter whose data directory is wiped after the group shrank, restarted
/// with its old `--peers`: it cannot know what it acknowledged, and node 3's
/// log is not empty, so it withholds its vote in what it takes for a group
/// of three. The group {1, 3} needs its vote, so there is no leader; the
/// node says so (`admin status` `repair_target` "unknown", the
/// `raft_node_past_unknown` gauge, and a warning naming the way out), and
/// restarted with the current members it votes for node 3 (in a group of
/// two, the candidate's own request vouches for the vote), a leader is
/// elected and the data reads back through it.
#[test]
fn a_wiped_voter_restarted_with_old_peers_says_so_and_recovers_with_the_current_ones() {
    let mut cluster = new_cluster(23500);
    cluster.bootstrap(3);
    let leader = cluster.leader();
    let mut client = BlockingClient::new(&cluster.client(&[1, 2, 3])).expect("a client");
    put(&mut client, "kept", "through the wipe");
    let answer = call(&cluster.client(&[leader]), RequestBody::Admin(AdminRequest::Remove { id: 2 }));
    assert_eq!(answer.expect("admin answered"), ResponseStatus::Ok(Bytes::new()));
    cluster.wait_status(1, "node 2 removed", |status| {
        common::ids(&status["voters"]) == [1, 3] && common::ids(&status["voters_outgoing"]).is_empty()
    });
    cluster.wait_status(3, "node 2 removed", |status| common::ids(&status["voters"]) == [1, 3]);
    cluster.kill(2);

    const METRICS_PORT: u16 = 23510;
    let start = |cluster: &mut Cluster, peers: &[u64], log: &std::path::Path| {
        let peers: Vec<String> = peers.iter().map(|id| format!("{id}=127.0.0.1:{}", cluster.peer_port(*id))).collect();
        let mut command = cluster.command(1);
        command.args(["--node-id", "1", "--cluster-id", &CLUSTER.to_string(), "--peers", &peers.join(",")]);
        command.args(["--metrics-addr", &format!("127.0.0.1:{METRICS_PORT}")]);
        command.stderr(std::fs::File::create(log).expect("log file"));
        cluster.nodes.insert(1, command.spawn().expect("start node"));
    };
    cluster.kill(1);
    std::fs::remove_dir_all(cluster.data_dir(1)).expect("wipe node 1");
    // Node 3, if it led, steps down without a quorum (check-quorum): a
    // leader the wiped node hears would simply repair it.
    cluster.wait_status(3, "node 3 without a leader", |status| status["leader"] == 0);
    let stale_log = cluster.dir.join("stale-peers.log");
    start(&mut cluster, &[1, 2, 3], &stale_log);
    cluster.wait_status(1, "node 1 knows its past is unknown", |status| status["repair_target"] == "unknown");
    let (code, metrics) = common::http_get(METRICS_PORT, "/metrics").expect("metrics answered");
    assert_eq!(code, 200);
    let gauge = metrics.lines().find(|line| line.starts_with("raft_node_past_unknown{")).expect("the gauge");
    assert!(gauge.ends_with(" 1"), "{gauge}");
    // The warning comes after 10 s without a leader.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(40);
    let warned = loop {
        let log = std::fs::read_to_string(&stale_log).unwrap_or_default();
        if log.contains("withholds its vote") || std::time::Instant::now() > deadline {
            break log;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    };
    assert!(warned.contains("withholds its vote") && warned.contains("--peers"), "no warning: {warned}");
    for slot in [1, 3] {
        assert_eq!(cluster.status(slot).expect("status")["leader"], 0, "slot {slot} found a leader");
    }

    cluster.kill(1);
    let current_log = cluster.dir.join("current-peers.log");
    start(&mut cluster, &[1, 3], &current_log);
    cluster.leader_among([1, 3].into_iter());
    let mut client = BlockingClient::new(&cluster.client(&[1])).expect("a client");
    assert_eq!(get(&mut client, "kept").as_deref(), Some(&b"through the wipe"[..]));
    cluster.wait_status(1, "node 1 knows its past", |status| {
        common::ids(&status["votes_wait_for"]).is_empty() && status["repair"].is_null()
    });
}

/// On a cluster with several shards, `node admin remove` (and the other
/// membership changes) without `--shard` changes every shard: it changed
/// shard 0 only and printed OK, leaving the removed node a voter (even the
/// leader) of the others, and unable to restart, its id being removed.
#[test]
fn a_membership_change_without_a_shard_changes_every_shard() {
    let mut cluster = new_cluster(23600);
    let peers: Vec<String> = (1..=3).map(|id| format!("{id}=127.0.0.1:{}", cluster.peer_port(id))).collect();
    for id in 1..=3 {
        let mut command = cluster.command(id);
        command.args(["--node-id", &id.to_string(), "--cluster-id", &CLUSTER.to_string()]);
        command.args(["--peers", &peers.join(","), "--shards", "2"]);
        cluster.nodes.insert(id, command.spawn().expect("start node"));
    }
    let mut join = cluster.join_command(4, &[1]);
    join.args(["--shards", "2"]);
    cluster.nodes.insert(4, join.spawn().expect("start node"));
    let shard_status = |cluster: &Cluster, shard: u32| {
        let mut client = cluster.client(&[1]);
        client.shard = shard;
        common::status(client)
    };
    let wait_shard = |cluster: &Cluster, shard: u32, what: &str, done: &dyn Fn(&serde_json::Value) -> bool| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let status = shard_status(cluster, shard);
            if status.as_ref().is_some_and(done) {
                return status.unwrap();
            }
            assert!(std::time::Instant::now() < deadline, "shard {shard}: {what}: {status:?}");
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    };
    let four = |status: &serde_json::Value| common::ids(&status["voters"]).len() == 4;
    let joined = wait_shard(&cluster, 1, "four voters", &four);
    wait_shard(&cluster, 0, "four voters", &four);
    let id = *common::ids(&joined["voters"]).iter().max().unwrap();
    assert!(id > 3, "{joined}");

    let output = Command::new(env!("CARGO_BIN_EXE_node"))
        .args(["admin", "--addr", &format!("127.0.0.1:{}", cluster.client_port(1)), "--cluster-id", "9"])
        .args(["remove", &id.to_string()])
        .env("NODE_TOKEN", TOKEN)
        .output()
        .expect("run node admin");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(stdout.trim(), "shard 0: OK\nshard 1: OK", "{output:?}");
    for shard in 0..2 {
        wait_shard(&cluster, shard, "the node removed", &|status| {
            !common::ids(&status["voters"]).contains(&id) && common::ids(&status["removed"]).contains(&id)
        });
    }
}

/// A joined node restarted while the member it joins through is stopped
/// (it accepts connections and never answers) starts at once: its data
/// directory holds what it needs. It probed that member's credentials and
/// then asked it for the members, 5 s each, before serving or logging
/// anything, and a group that needed it waited for them.
#[test]
fn a_joined_node_restarts_without_waiting_on_the_member_it_joined_through() {
    let mut cluster = new_cluster(23700);
    cluster.bootstrap(3);
    cluster.join(4, &[1]);
    cluster.wait_status(1, "four voters", |status| common::ids(&status["voters"]).len() == 4);
    cluster.kill(4);
    let stopped = cluster.nodes[&1].id() as i32;
    // SAFETY: signalling a child this test started.
    unsafe { libc::kill(stopped, libc::SIGSTOP) };
    let started = std::time::Instant::now();
    cluster.join(4, &[1]);
    let status = cluster.wait_status(4, "slot 4 serving", |status| status["node"].as_u64().is_some_and(|id| id > 3));
    let took = started.elapsed();
    // SAFETY: as above.
    unsafe { libc::kill(stopped, libc::SIGCONT) };
    assert!(took < std::time::Duration::from_secs(8), "slot 4 served after {took:?}: {status}");
}

/// A removed node that still runs is told: the members refuse its peer
/// connections (closing one made before the removal), and it says so once,
/// at error level. Before, nothing told it: it warned that it had no
/// leader for as long as it ran (found by the membership audit).
#[test]
fn a_removed_node_that_still_runs_is_told() {
    let mut cluster = new_cluster(23800);
    let log = cluster.dir.join("node-3.log");
    let peers: Vec<String> = (1..=3).map(|id| format!("{id}=127.0.0.1:{}", cluster.peer_port(id))).collect();
    for id in 1..=3 {
        let mut command = cluster.command(id);
        command.args(["--node-id", &id.to_string(), "--cluster-id", &CLUSTER.to_string()]);
        command.args(["--peers", &peers.join(",")]);
        if id == 3 {
            command.stderr(std::fs::File::create(&log).unwrap());
        }
        cluster.nodes.insert(id, command.spawn().expect("start node"));
    }
    cluster.leader();
    // Right after an election the remaining voter may not have caught up
    // with the new leader yet, and the change is refused until it has (the
    // strict reconfiguration check): ask again, as an operator would.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let answer = loop {
        let answer = call(&cluster.client(&[1, 2]), RequestBody::Admin(AdminRequest::Remove { id: 3 }));
        let refused_for_now = matches!(&answer, Ok(ResponseStatus::BadRequest(why)) if why.contains("caught up"));
        if !refused_for_now || std::time::Instant::now() > deadline {
            break answer;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(answer.expect("admin answered"), ResponseStatus::Ok(Bytes::new()));
    cluster.wait_status(1, "node 3 removed", |status| {
        !common::ids(&status["voters"]).contains(&3) && common::ids(&status["voters_outgoing"]).is_empty()
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("the peer refuses this node: it was removed from the cluster") {
            assert!(text.contains("wipe its data directory and start it with --join"), "{text}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "node 3 was not told it was removed:\n{text}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // Its status says so, and `node admin status` through it warns that
    // this is not the cluster's view (it read as the cluster's: fifth
    // audit, F3).
    let status = cluster.status(3).expect("the removed node answers its status");
    assert!(!common::ids(&status["refused_as_removed_by"]).is_empty(), "{status}");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_node"))
        .args(["admin", "--addr", &format!("127.0.0.1:{}", cluster.client_port(3))])
        .args(["--cluster-id", &CLUSTER.to_string(), "status"])
        .env("NODE_TOKEN", TOKEN)
        .output()
        .expect("run the CLI");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("was removed from the cluster"), "{stderr}");
}
