//! Witness replicas with the real `node` binary on loopback (issue 17 item
//! 4): two full nodes bootstrap, a third joins with `--witness` through one
//! of them. With the full follower down, writes still commit (leader +
//! witness); the witness's data directory holds no value; with the leader
//! down too the group waits instead of electing the follower that lacks
//! those writes; once the leader is back the follower catches up with every
//! acknowledged write from it. A witness serves no reads or writes (it sends
//! its clients to the leader, whose address it learned by asking), cannot be
//! promoted, and its data directory refuses to start without `--witness`.
//! A cluster also bootstraps with a witness (`--witnesses`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use net::{AdminRequest, CallError, ReadConsistency, RequestBody, ResponseStatus};
use node::client_cmd::{call, BlockingClient};
use node::config::ClientConfig;
use node::kv::{KvOp, KvResponse};

mod common;

const TOKEN: &str = "witness-test-token";
const CLUSTER: u64 = 11;
/// Every value written holds this, so that a data directory holding any
/// value is found by a byte search.
const PROBE: &str = "witness-probe-value";

/// This test's slots (see `common::SlotCluster`).
type Cluster = common::SlotCluster;

fn new_cluster(base_port: u16) -> Cluster {
    common::SlotCluster::new("witness", base_port, CLUSTER, TOKEN)
}

/// This test's ways to start its slots.
trait Starts {
    fn base_command(&self, slot: u64) -> Command;
    fn full_command(&self, slot: u64) -> Command;
    fn witness_command(&self, witness: bool) -> Command;
    fn start(&mut self, slot: u64, command: Command);
    fn leader(&self) -> u64;
}

impl Starts for Cluster {
    fn base_command(&self, slot: u64) -> Command {
        let mut command = common::SlotCluster::command(self, slot);
        command
            .args(["--cluster-id", &CLUSTER.to_string()])
            // Small snapshots: the witness takes some (metadata only).
            .args(["--snapshot-entries", "16", "--snapshot-log-factor", "0"]);
        command
    }

    /// The full nodes 1 and 2 (bootstrapped together with --peers).
    fn full_command(&self, slot: u64) -> Command {
        let peers: Vec<String> = (1..=2).map(|id| format!("{id}=127.0.0.1:{}", self.peer_port(id))).collect();
        let mut command = self.base_command(slot);
        command.args(["--node-id", &slot.to_string(), "--peers", &peers.join(",")]);
        command
    }

    /// Slot 3 joins through slot 1 (the cluster assigns it id 3).
    fn witness_command(&self, witness: bool) -> Command {
        let mut command = self.base_command(3);
        command.args(["--join", &format!("127.0.0.1:{}", self.client_port(1))]);
        if witness {
            command.arg("--witness");
        }
        command
    }

    fn start(&mut self, slot: u64, mut command: Command) {
        self.nodes.insert(slot, command.spawn().expect("start node"));
    }

    /// The full node (1 or 2) that leads.
    fn leader(&self) -> u64 {
        self.leader_among([1, 2].into_iter())
    }
}

fn value(index: usize) -> String {
    format!("{PROBE}-{index:04}")
}

/// Writes keys `range` (each in a session of its own, answered once
/// applied by the leader: acknowledged).
fn write_keys(client: &mut BlockingClient, range: std::ops::Range<usize>) {
    for index in range {
        let op = KvOp::Put { key: Bytes::from(format!("key-{index}")), value: Bytes::from(value(index)) };
        let mut session = client.open_session().expect("a session opens");
        let answer = client.write(&mut session, op.encode()).expect("write answered");
        assert_eq!(answer, KvResponse::Written.encode(), "put key-{index}");
    }
}

/// Reads `key-index` from the node `client` names, from its own state
/// machine (a stale read: what that replica applied).
fn local_value(client: &ClientConfig, index: usize) -> Option<Bytes> {
    let op = KvOp::Get { key: Bytes::from(format!("key-{index}")) };
    let body = RequestBody::Read { query: op.encode(), consistency: ReadConsistency::Stale };
    match call(client, body).expect("read answered") {
        ResponseStatus::Ok(answer) => match KvResponse::decode(&answer).expect("decodes") {
            KvResponse::Value(value) => value,
            other => panic!("unexpected answer {other:?}"),
        },
        other => panic!("read refused: {other:?}"),
    }
}

/// Every file under `dir` that holds `needle`.
fn files_holding(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("readable directory").flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if std::fs::read(&path).is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle)) {
                found.push(path);
            }
        }
    }
    found
}

/// Has the node in `slot` take a snapshot now (a witness: of metadata),
/// waiting for one being stored to finish first.
fn take_snapshot(cluster: &Cluster, slot: u64) {
    let mut client = BlockingClient::new(&cluster.client(&[slot])).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match client.admin(AdminRequest::TakeSnapshot) {
            Ok(_) => return,
            Err(CallError::Refused(ResponseStatus::BadRequest(reason)))
                if reason.contains("being stored") && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(100))
            }
            Err(CallError::Refused(ResponseStatus::BadRequest(reason))) if reason.contains("nothing applied") => return,
            other => panic!("slot {slot} takes no snapshot: {other:?}"),
        }
    }
}

/// Runs `command` to its end (it must fail) and returns what it printed.
fn refused(mut command: Command) -> String {
    let output = command.stderr(Stdio::piped()).output().expect("runs");
    assert!(!output.status.success(), "the node started: {output:?}");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Starts 2 full nodes and a witness joined with `--witness`; returns once
/// the witness is a voting witness of the configuration.
fn two_full_and_a_witness(base_port: u16) -> Cluster {
    let mut cluster = new_cluster(base_port);
    cluster.start(1, cluster.full_command(1));
    cluster.start(2, cluster.full_command(2));
    let leader = cluster.leader();
    cluster.start(3, cluster.witness_command(true));
    let status = cluster.wait_status(leader, "the witness joined", |status| {
        common::ids(&status["witnesses"]) == [3]
            && common::ids(&status["voters"]) == [1, 2, 3]
            && status["voters_outgoing"] == serde_json::json!([])
    });
    let member = status["members"].as_array().unwrap().iter().find(|member| member["id"] == 3).cloned();
    assert_eq!(member.expect("listed")["role"], "witness");
    cluster.wait_status(3, "the witness knows it is one", |status| status["witness"] == true);
    cluster
}

#[test]
fn two_full_nodes_and_a_witness_lose_no_acknowledged_write() {
    let mut cluster = two_full_and_a_witness(23400);
    let full = cluster.client(&[1, 2]);
    let mut client = BlockingClient::new(&full).unwrap();
    write_keys(&mut client, 0..20);

    // The full follower dies: the leader and the witness go on committing.
    let leader = cluster.leader();
    let follower = 3 - leader;
    cluster.kill(follower);
    write_keys(&mut client, 20..40);
    let status = cluster.status(3).expect("the witness answers");
    assert_eq!(status["witness"], true);
    take_snapshot(&cluster, 3);
    // It holds nothing to back up, and says so.
    match BlockingClient::new(&cluster.client(&[3])).unwrap().admin(AdminRequest::BackupBegin { at_least: 0 }) {
        Err(CallError::Refused(ResponseStatus::BadRequest(reason))) => assert!(reason.contains("witness"), "{reason}"),
        other => panic!("a backup from the witness: {other:?}"),
    }

    // The witness holds no value, the leader all of them.
    let needle = PROBE.as_bytes();
    assert_eq!(files_holding(&cluster.data_dir(3), needle), Vec::<PathBuf>::new(), "the witness stored values");
    assert!(!files_holding(&cluster.data_dir(leader), needle).is_empty(), "the search finds values where they are");

    // A witness serves no reads or writes: it sends its clients to the
    // leader, whose address it learned outside the log (the replicated
    // address book never reaches it), and lists the members with their
    // addresses, so a client given only the witness still reaches the data.
    let client_addr = |slot: u64| format!("127.0.0.1:{}", cluster.client_port(slot));
    cluster.wait_status(3, "the witness lists the leader's and its own client address", |status| {
        status["members"].as_array().is_some_and(|members| {
            [leader, 3].iter().all(|&slot| {
                members.iter().any(|member| member["id"] == slot && member["client_addr"] == client_addr(slot).as_str())
            })
        })
    });
    let op = KvOp::Get { key: Bytes::from("key-0") };
    let mut only_witness = cluster.client(&[3]);
    only_witness.timeout = Duration::from_secs(10);
    let mut through_witness = BlockingClient::new(&only_witness).unwrap();
    for consistency in [ReadConsistency::Stale, ReadConsistency::Linearizable] {
        let answer = through_witness.read(op.encode(), consistency).expect("read through the witness's redirect");
        assert_eq!(KvResponse::decode(&answer), Ok(KvResponse::Value(Some(Bytes::from(value(0))))), "{consistency:?}");
    }
    write_keys(&mut BlockingClient::new(&only_witness).unwrap(), 40..41);
    assert_eq!(files_holding(&cluster.data_dir(3), needle), Vec::<PathBuf>::new(), "the witness stored values");
    // It cannot be promoted.
    match client.admin(AdminRequest::Promote { id: 3 }) {
        Err(CallError::Refused(ResponseStatus::BadRequest(reason))) => assert!(reason.contains("witness"), "{reason}"),
        other => panic!("promoting the witness: {other:?}"),
    }

    // The leader dies too: the follower comes back without the last writes,
    // and the witness (whose log is ahead of it) never lets it lead.
    cluster.kill(leader);
    cluster.start(follower, cluster.full_command(follower));
    cluster.wait_status(follower, "the follower restarted", |_| true);
    std::thread::sleep(Duration::from_secs(4));
    for slot in [follower, 3] {
        let status = cluster.status(slot).expect("answers");
        assert_ne!(status["role"], "Leader", "slot {slot} leads without the leader's writes: {status}");
    }

    // The leader returns: the follower catches up from it.
    cluster.start(leader, cluster.full_command(leader));
    let status = cluster.wait_status(leader, "the leader is back", |status| status["role"] == "Leader");
    let commit = status["commit"].as_u64().unwrap();
    cluster.wait_status(follower, "the follower caught up", |status| status["applied"].as_u64() >= Some(commit));
    let follower_client = cluster.client(&[follower]);
    for index in 0..40 {
        assert_eq!(
            local_value(&follower_client, index),
            Some(Bytes::from(value(index))),
            "key-{index} on the follower"
        );
    }
    assert_eq!(files_holding(&cluster.data_dir(3), needle), Vec::<PathBuf>::new(), "the witness stored values");

    // The witness's data directory is a witness's: without --witness it is
    // refused. While it is down the full nodes commit on and compact their
    // logs (and the leader restarts, dropping the messages its link held
    // for the witness), so it comes back through a snapshot: metadata only.
    cluster.kill(3);
    write_keys(&mut client, 40..80);
    for slot in [1, 2] {
        take_snapshot(&cluster, slot);
    }
    let leader = cluster.leader();
    cluster.kill(leader);
    cluster.start(leader, cluster.full_command(leader));
    let error = refused(cluster.witness_command(false));
    assert!(error.contains("belongs to a witness"), "{error}");
    cluster.leader();
    cluster.start(3, cluster.witness_command(true));
    let commit = cluster.wait_status(cluster.leader(), "leader", |_| true)["commit"].as_u64().unwrap();
    cluster.wait_status(3, "the witness is back", |status| {
        status["witness"] == true && status["applied"].as_u64() >= Some(commit)
    });
    let stats = BlockingClient::new(&cluster.client(&[3])).unwrap().admin(AdminRequest::Stats).expect("stats");
    let stats: serde_json::Value = serde_json::from_slice(&stats).unwrap();
    assert!(stats["stats"]["snapshots_installed"].as_u64() > Some(0), "no snapshot reached the witness: {stats}");
    assert_eq!(files_holding(&cluster.data_dir(3), needle), Vec::<PathBuf>::new(), "the witness stored values");
}

#[test]
fn a_full_data_directory_cannot_become_a_witness() {
    let mut cluster = new_cluster(23420);
    cluster.start(1, cluster.full_command(1));
    cluster.start(2, cluster.full_command(2));
    cluster.wait_status(cluster.leader(), "a leader", |_| true);
    cluster.kill(2);
    let mut command = cluster.full_command(2);
    command.args(["--join", "--witness"]);
    let error = refused(command);
    assert!(error.contains("cannot become a witness in place"), "{error}");
    // And --witness does not bootstrap a cluster.
    let mut command = cluster.full_command(2);
    command.arg("--witness");
    let error = refused(command);
    assert!(error.contains("--witness needs --join"), "{error}");
}

/// A witness applies no ordinary entries, so the replicated address book
/// never reaches it: a full member added after the witness started must
/// still get its votes and acknowledgements once it leads. 1 and 2 full,
/// witness 3; full node 4 joins through 1 (the cluster assigns it id 4);
/// 2 is removed, then 1 dies: 4 can lead only with the witness's vote, sent
/// over a link to an address the witness learned while running.
#[test]
fn a_full_member_added_after_the_witness_started_leads_with_its_vote() {
    let mut cluster = two_full_and_a_witness(23440);
    let mut client = BlockingClient::new(&cluster.client(&[1, 2])).unwrap();
    write_keys(&mut client, 0..10);

    let mut joining = cluster.base_command(4);
    joining.args(["--join", &format!("127.0.0.1:{}", cluster.client_port(1))]);
    cluster.start(4, joining);
    let leader = cluster.leader();
    cluster.wait_status(leader, "node 4 joined as a voter", |status| {
        common::ids(&status["voters"]) == [1, 2, 3, 4] && status["voters_outgoing"] == serde_json::json!([])
    });
    // The witness asks the members for their addresses every 2 s: two
    // rounds, and it links to node 4 (it was never told of it at start).
    std::thread::sleep(Duration::from_secs(5));
    match client.admin(AdminRequest::Remove { id: 2 }) {
        Ok(_) => {}
        other => panic!("removing node 2: {other:?}"),
    }
    let survivor = cluster.leader_among([1, 4].into_iter());
    cluster.wait_status(survivor, "node 2 removed", |status| {
        common::ids(&status["voters"]) == [1, 3, 4] && status["voters_outgoing"] == serde_json::json!([])
    });
    cluster.kill(2);
    cluster.kill(1);

    // Only the witness can give 4 the second vote of {1, 3, 4}.
    cluster.wait_status(4, "node 4 leads with the witness's vote", |status| status["role"] == "Leader");
    let mut client = BlockingClient::new(&cluster.client(&[4])).unwrap();
    write_keys(&mut client, 10..20);
    let four = cluster.client(&[4]);
    for index in 0..20 {
        assert_eq!(local_value(&four, index), Some(Bytes::from(value(index))), "key-{index} on node 4");
    }
}

/// Two full nodes and a witness bootstrap together: every node is given
/// `--witnesses 3` with the three `--peers`, node 3 runs `--witness`. The
/// first leader records the membership with the witness in it; with the
/// full follower down the leader and the witness commit, and the witness
/// stores no value. A listed node without `--witness`, and lists that are
/// not the bootstrap's or leave witnesses a majority, are refused with the
/// reason.
#[test]
fn a_cluster_bootstraps_with_a_witness() {
    let mut cluster = new_cluster(23460);
    let peers: Vec<String> = (1..=3).map(|id| format!("{id}=127.0.0.1:{}", cluster.peer_port(id))).collect();
    let bootstrap = |cluster: &Cluster, slot: u64, witnesses: &str| {
        let mut command = cluster.base_command(slot);
        command.args(["--node-id", &slot.to_string(), "--peers", &peers.join(","), "--witnesses", witnesses]);
        command
    };
    let error = refused(bootstrap(&cluster, 3, "3"));
    assert!(error.contains("start it with --witness too"), "{error}");
    let error = refused(bootstrap(&cluster, 1, "2,3"));
    assert!(error.contains("full voters must be a strict majority"), "{error}");
    let error = refused(bootstrap(&cluster, 1, "4"));
    assert!(error.contains("not in --peers"), "{error}");
    for slot in [1, 2] {
        cluster.start(slot, bootstrap(&cluster, slot, "3"));
    }
    let mut witness = bootstrap(&cluster, 3, "3");
    witness.arg("--witness");
    cluster.start(3, witness);
    let leader = cluster.leader();
    let status = cluster.wait_status(leader, "the bootstrap membership has the witness", |status| {
        common::ids(&status["witnesses"]) == [3] && common::ids(&status["voters"]) == [1, 2, 3]
    });
    assert_eq!(status["role"], "Leader");
    cluster.wait_status(3, "the witness knows it is one", |status| status["witness"] == true);
    let mut client = BlockingClient::new(&cluster.client(&[1, 2])).unwrap();
    write_keys(&mut client, 0..10);
    let follower = 3 - leader;
    cluster.kill(follower);
    write_keys(&mut client, 10..20);
    let needle = PROBE.as_bytes();
    assert_eq!(files_holding(&cluster.data_dir(3), needle), Vec::<PathBuf>::new(), "the witness stored values");
    assert!(!files_holding(&cluster.data_dir(leader), needle).is_empty(), "the search finds values where they are");
    // Restarted, the witness keeps its kind from its data directory, and
    // the membership from the log.
    cluster.kill(3);
    let mut without = cluster.base_command(3);
    without.args(["--node-id", "3", "--peers", &peers.join(",")]);
    let error = refused(without);
    assert!(error.contains("belongs to a witness"), "{error}");
    // The full nodes restarted without --witnesses take the membership,
    // the witness included, from the log's first entry.
    cluster.kill(leader);
    for slot in [1, 2] {
        let mut command = cluster.base_command(slot);
        command.args(["--node-id", &slot.to_string(), "--peers", &peers.join(",")]);
        cluster.start(slot, command);
    }
    let leader = cluster.leader();
    cluster.wait_status(leader, "the log kept the witness", |status| {
        common::ids(&status["witnesses"]) == [3] && common::ids(&status["voters"]) == [1, 2, 3]
    });
}
