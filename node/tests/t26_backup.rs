//! Disaster recovery: a backup of a running two-shard cluster (`node admin
//! backup`, the command line) restores into a new cluster (`node restore`
//! on every node, then `node serve`) that holds every write acknowledged
//! before the backup started, none made after it finished, and takes new
//! writes. A restore is refused under the backed-up cluster's id, into a
//! directory that holds anything, and from a damaged or truncated backup,
//! which then leaves nothing behind.

use std::path::Path;
use std::process::{Command, Output};

use bytes::Bytes;
use net::session::Session;
use net::ReadConsistency;
use node::client_cmd::BlockingClient;
use node::kv::{KvOp, KvResponse};

mod common;

const TOKEN: &str = "backup-token";
const CLUSTER: u64 = 13;
const NEW_CLUSTER: u64 = 14;
const BASE_PORT: u16 = 27_700;
const NEW_BASE_PORT: u16 = 27_720;
const SHARDS: &str = "2";
/// About 2.5 MB of values: each shard's snapshot takes more than one
/// chunk (1 MiB).
const KEYS: u64 = 600;

fn start(cluster: &mut common::SlotCluster, slot: u64) {
    let peers = peers(cluster);
    let mut command = cluster.command(slot);
    command
        .args(["--cluster-id", &cluster.cluster_id.to_string(), "--node-id", &slot.to_string(), "--peers", &peers])
        .args(["--shards", SHARDS, "--snapshot-write-rate", "0"]);
    cluster.nodes.insert(slot, command.spawn().expect("start node"));
}

fn peers(cluster: &common::SlotCluster) -> String {
    (1..=3).map(|id| format!("{id}=127.0.0.1:{}", cluster.peer_port(id))).collect::<Vec<_>>().join(",")
}

fn key(key: u64) -> Bytes {
    Bytes::from(format!("key-{key:04}"))
}

fn value(key: u64) -> Bytes {
    (0..4096).map(|at| (at as u64 ^ key) as u8).collect::<Vec<u8>>().into()
}

/// Writes `keys` (each in a session of its shard) through `client`.
fn put(client: &mut BlockingClient, keys: impl Iterator<Item = u64>, name: impl Fn(u64) -> Bytes) {
    let mut sessions: Vec<Option<Session>> = vec![None, None];
    for k in keys {
        let shard = client.route_to_key(&name(k)).expect("the cluster's shards") as usize;
        let session = sessions[shard].get_or_insert_with(|| client.open_session().expect("a session opens"));
        let op = KvOp::Put { key: name(k), value: value(k) };
        assert_eq!(client.write(session, op.encode()).expect("written"), KvResponse::Written.encode());
    }
}

fn get(client: &mut BlockingClient, key: &Bytes) -> Bytes {
    client.route_to_key(key).expect("the cluster's shards");
    client.read(KvOp::Get { key: key.clone() }.encode(), ReadConsistency::Linearizable).expect("read")
}

fn node(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_node")).args(args).env("NODE_TOKEN", TOKEN).output().expect("run node")
}

fn restore(backup: &Path, data_dir: &Path, slot: u64, peers: &str, cluster_id: u64) -> Output {
    let (backup, data_dir) = (backup.display().to_string(), data_dir.display().to_string());
    let (slot, cluster_id) = (slot.to_string(), cluster_id.to_string());
    node(&[
        "restore",
        "--backup",
        &backup,
        "--data-dir",
        &data_dir,
        "--node-id",
        &slot,
        "--peers",
        peers,
        "--cluster-id",
        &cluster_id,
    ])
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn a_backup_restores_into_a_new_cluster_with_every_acknowledged_write() {
    let mut old = common::SlotCluster::new("backup-old", BASE_PORT, CLUSTER, TOKEN);
    for slot in 1..=3 {
        start(&mut old, slot);
    }
    old.leader_among(1..=3);
    let mut client = BlockingClient::new(&old.client(&[1, 2, 3])).expect("a client");
    put(&mut client, 0..KEYS, key);

    // The backup, from a node that may be a follower: the barrier makes it
    // hold every write above.
    let file = old.dir.join("cluster.backup");
    let file_arg = file.display().to_string();
    let addr = format!("127.0.0.1:{}", old.client_port(2));
    let cluster_arg = CLUSTER.to_string();
    let backup_args = ["admin", "--addr", &addr, "--cluster-id", &cluster_arg, "backup", "--out", &file_arg];
    let output = node(&backup_args);
    assert!(output.status.success(), "backup failed: {}", stderr(&output));
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).expect("a JSON summary");
    assert_eq!(summary["shards"].as_array().map(Vec::len), Some(2), "{summary}");
    assert!(!Path::new(&format!("{file_arg}.partial")).exists(), "the partial file stayed");
    let again = node(&backup_args);
    assert!(!again.status.success() && stderr(&again).contains("exists"), "{}", stderr(&again));
    // Written after the backup finished: not in it.
    put(&mut client, 0..20, |k| Bytes::from(format!("after-{k}")));
    drop(client);
    for slot in 1..=3 {
        old.kill(slot);
    }

    let mut new = common::SlotCluster::new("backup-new", NEW_BASE_PORT, NEW_CLUSTER, TOKEN);
    let new_peers = peers(&new);
    let refused = restore(&file, &new.data_dir(1), 1, &new_peers, CLUSTER);
    assert!(!refused.status.success() && stderr(&refused).contains("another --cluster-id"), "{}", stderr(&refused));
    std::fs::create_dir_all(new.data_dir(1)).unwrap();
    std::fs::write(new.data_dir(1).join("notes"), b"something").unwrap();
    let refused = restore(&file, &new.data_dir(1), 1, &new_peers, NEW_CLUSTER);
    assert!(!refused.status.success() && stderr(&refused).contains("not empty"), "{}", stderr(&refused));
    std::fs::remove_file(new.data_dir(1).join("notes")).unwrap();
    // A file where the data directory goes, and a directory given as the
    // backup, are named as what they are (an I/O error deep in the restore,
    // and "shorter than a backup's head", before).
    let file_there = new.dir.join("a-file");
    std::fs::write(&file_there, b"x").unwrap();
    let refused = restore(&file, &file_there, 1, &new_peers, NEW_CLUSTER);
    assert!(
        !refused.status.success() && stderr(&refused).contains("is a file, not a directory"),
        "{}",
        stderr(&refused)
    );
    let directory = new.dir.to_string_lossy().into_owned();
    let refused = node(&["restore", "--backup", &directory, "--check"]);
    assert!(
        !refused.status.success() && stderr(&refused).contains("is a directory, not a backup"),
        "{}",
        stderr(&refused)
    );

    let checked = node(&["restore", "--backup", &file_arg, "--check"]);
    assert!(checked.status.success(), "{}", stderr(&checked));
    let checked: serde_json::Value = serde_json::from_slice(&checked.stdout).expect("a JSON summary");
    assert_eq!(checked, summary, "--check reads what the backup wrote");
    let mut bytes = std::fs::read(&file).expect("the backup");
    let damaged = new.dir.join("damaged.backup");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x10;
    std::fs::write(&damaged, &bytes).unwrap();
    let refused = restore(&damaged, &new.data_dir(1), 1, &new_peers, NEW_CLUSTER);
    assert!(!refused.status.success() && stderr(&refused).contains("checksum"), "{}", stderr(&refused));
    let refused = node(&["restore", "--backup", &damaged.display().to_string(), "--check"]);
    assert!(!refused.status.success() && stderr(&refused).contains("checksum"), "{}", stderr(&refused));
    bytes[middle] ^= 0x10;
    std::fs::write(&damaged, &bytes[..bytes.len() - 100]).unwrap();
    let refused = restore(&damaged, &new.data_dir(1), 1, &new_peers, NEW_CLUSTER);
    assert!(!refused.status.success() && stderr(&refused).contains("truncated"), "{}", stderr(&refused));
    let left: Vec<_> = std::fs::read_dir(new.data_dir(1)).unwrap().collect();
    assert!(left.is_empty(), "a refused restore left {left:?}");

    for slot in 1..=3 {
        let output = restore(&file, &new.data_dir(slot), slot, &new_peers, NEW_CLUSTER);
        assert!(output.status.success(), "restore of slot {slot} failed: {}", stderr(&output));
        // It names the new cluster's id (it printed the backed-up one's).
        let restored: serde_json::Value = serde_json::from_slice(&output.stdout).expect("a JSON summary");
        assert_eq!(restored["cluster_id"], NEW_CLUSTER, "{restored}");
        assert_eq!(restored["backup_cluster_id"], CLUSTER, "{restored}");
    }
    // Another shard count than the backup's would route keys to shards
    // that do not hold them.
    for shards in ["1", "4"] {
        let mut other = new.command(1);
        other.args(["--cluster-id", &NEW_CLUSTER.to_string(), "--node-id", "1", "--peers", &new_peers]);
        let mut other = other.args(["--shards", shards]).stderr(std::process::Stdio::piped()).spawn().expect("start");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while other.try_wait().expect("wait").is_none() {
            assert!(std::time::Instant::now() < deadline, "a node with {shards} shards started on 2 shards' data");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let output = other.wait_with_output().expect("its output");
        assert!(!output.status.success() && stderr(&output).contains("run it with --shards 2"), "{}", stderr(&output));
    }
    for slot in 1..=3 {
        start(&mut new, slot);
    }
    new.leader_among(1..=3);
    for slot in 1..=3 {
        let mut reader = BlockingClient::new(&new.client(&[slot])).expect("a client");
        for k in 0..KEYS {
            assert_eq!(get(&mut reader, &key(k)), KvResponse::Value(Some(value(k))).encode(), "{k} at slot {slot}");
        }
        let after = get(&mut reader, &Bytes::from("after-3"));
        assert_eq!(after, KvResponse::Value(None).encode(), "a write after the backup came back at slot {slot}");
    }
    let mut writer = BlockingClient::new(&new.client(&[1, 2, 3])).expect("a client");
    put(&mut writer, 0..20, |k| Bytes::from(format!("new-{k}")));
    assert_eq!(get(&mut writer, &Bytes::from("new-7")), KvResponse::Value(Some(value(7))).encode());
}

const ALONE_BASE_PORT: u16 = 27_800;
const ALONE_NEW_BASE_PORT: u16 = 27_820;

/// The audit's sequence: a backup restored on node 1 only, nodes 2 and 3
/// started empty (they bootstrapped an empty cluster of their own and
/// acknowledged a write), then node 1 started. Before the nodes knew which
/// history their data continues, node 1's longer log won, its snapshot
/// replaced what 2 and 3 held, and the acknowledged write was gone on all
/// three. Since a new cluster's nodes vote only once every node has asked
/// with an empty log, 2 and 3 alone no longer elect a leader, so here the
/// three start empty, acknowledge writes, and node 1 is then wiped and
/// restored from the backup (the same mistake, made later). The nodes
/// refuse each other's peer connections: the writes stay, and restoring 2
/// and 3 from the same backup makes one cluster, which a node added with
/// `--join` then joins (it learns the history from the members).
#[test]
fn a_node_restored_alone_never_replaces_writes_that_empty_nodes_acknowledged() {
    let mut old = common::SlotCluster::new("backup-alone-old", ALONE_BASE_PORT, CLUSTER, TOKEN);
    for slot in 1..=3 {
        start(&mut old, slot);
    }
    // Terms well above a new cluster's, so that the restored log is the
    // more up to date in any election it can take part in.
    while old.status(old.leader_among(1..=3)).map_or(0, |status| status["term"].as_u64().unwrap_or(0)) < 6 {
        let leader = old.leader_among(1..=3);
        old.kill(leader);
        old.leader_among((1..=3).filter(|slot| *slot != leader));
        start(&mut old, leader);
    }
    let mut client = BlockingClient::new(&old.client(&[1, 2, 3])).expect("a client");
    put(&mut client, 0..40, key);
    let file = old.dir.join("cluster.backup");
    let (file_arg, addr) = (file.display().to_string(), format!("127.0.0.1:{}", old.client_port(1)));
    let output = node(&["admin", "--addr", &addr, "--cluster-id", &CLUSTER.to_string(), "backup", "--out", &file_arg]);
    assert!(output.status.success(), "backup failed: {}", stderr(&output));
    drop(client);
    for slot in 1..=3 {
        old.kill(slot);
    }

    let mut new = common::SlotCluster::new("backup-alone-new", ALONE_NEW_BASE_PORT, NEW_CLUSTER, TOKEN);
    let new_peers = peers(&new);
    for slot in 1..=3 {
        start(&mut new, slot);
    }
    new.leader_among(1..=3);
    let mut fresh = BlockingClient::new(&new.client(&[1, 2, 3])).expect("a client");
    put(&mut fresh, 0..4, |k| Bytes::from(format!("fresh-{k}")));
    drop(fresh);
    new.kill(1);
    std::fs::remove_dir_all(new.data_dir(1)).unwrap();
    let output = restore(&file, &new.data_dir(1), 1, &new_peers, NEW_CLUSTER);
    assert!(output.status.success(), "restore failed: {}", stderr(&output));
    start(&mut new, 1);
    // Node 1's log is longer and its terms are higher: given an election
    // (the leaders' spreading makes one soon), it wins with the others'
    // votes.
    std::thread::sleep(std::time::Duration::from_secs(8));
    for slot in [2, 3] {
        let mut reader = BlockingClient::new(&new.client(&[slot])).expect("a client");
        let read = get(&mut reader, &Bytes::from("fresh-2"));
        assert_eq!(read, KvResponse::Value(Some(value(2))).encode(), "an acknowledged write is gone at slot {slot}");
    }

    // The way out the refusal names: restore 2 and 3 from the same backup.
    for slot in [2, 3] {
        new.kill(slot);
        std::fs::remove_dir_all(new.data_dir(slot)).unwrap();
        let output = restore(&file, &new.data_dir(slot), slot, &new_peers, NEW_CLUSTER);
        assert!(output.status.success(), "restore of slot {slot} failed: {}", stderr(&output));
        start(&mut new, slot);
    }
    new.leader_among(1..=3);
    let mut reader = BlockingClient::new(&new.client(&[1, 2, 3])).expect("a client");
    assert_eq!(get(&mut reader, &key(7)), KvResponse::Value(Some(value(7))).encode());
    let through = format!("127.0.0.1:{}", new.client_port(1));
    let mut joiner = new.command(4);
    joiner.args(["--join", &through, "--cluster-id", &NEW_CLUSTER.to_string(), "--shards", SHARDS]);
    new.nodes.insert(4, joiner.spawn().expect("start node 4"));
    new.wait_status(1, "the joined node a voter", |status| common::ids(&status["voters"]).len() == 4);
}

const INTERRUPTED_BASE_PORT: u16 = 27_840;

/// Ctrl-C during a backup removes the partial file it was writing (it
/// stayed beside FILE, found by an audit) and exits 130.
#[test]
fn a_backup_interrupted_by_ctrl_c_leaves_no_partial_file() {
    let mut cluster = common::SlotCluster::new("backup-interrupted", INTERRUPTED_BASE_PORT, CLUSTER, TOKEN);
    let mut command = cluster.command(1);
    let peer = format!("1=127.0.0.1:{}", cluster.peer_port(1));
    command.args(["--cluster-id", &CLUSTER.to_string(), "--node-id", "1", "--peers", &peer]);
    // Paced at 100 kB/s, the snapshot of 2.4 MB the backup waits for takes
    // many seconds to write.
    command.args(["--snapshot-write-rate", "100000"]);
    cluster.nodes.insert(1, command.spawn().expect("start node"));
    cluster.leader_among(1..=1);
    let mut client = BlockingClient::new(&cluster.client(&[1])).expect("a client");
    let mut session = client.open_session().expect("a session opens");
    for k in 0..600 {
        let op = KvOp::Put { key: key(k), value: value(k) };
        assert_eq!(client.write(&mut session, op.encode()).expect("written"), KvResponse::Written.encode());
    }
    let file = cluster.dir.join("interrupted.backup");
    let addr = format!("127.0.0.1:{}", cluster.client_port(1));
    let backup = Command::new(env!("CARGO_BIN_EXE_node"))
        .args(["admin", "--addr", &addr, "--cluster-id", &CLUSTER.to_string(), "backup", "--out"])
        .arg(&file)
        .env("NODE_TOKEN", TOKEN)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the backup");
    let partial = cluster.dir.join("interrupted.backup.partial");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !partial.exists() {
        assert!(std::time::Instant::now() < deadline, "the backup made no partial file");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    // SAFETY: signalling a child this test started.
    unsafe { libc::kill(backup.id() as i32, libc::SIGINT) };
    let output = backup.wait_with_output().expect("the backup's end");
    assert_eq!(output.status.code(), Some(130), "{}", stderr(&output));
    assert!(!partial.exists(), "Ctrl-C left {}", partial.display());
    assert!(!file.exists(), "an interrupted backup left {}", file.display());
}
