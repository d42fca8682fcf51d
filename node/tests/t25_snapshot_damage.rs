//! A stored snapshot that rots on the leader's disk after it was checked is
//! never installed by a follower: before the leader serves its first chunk
//! it reads the file whole and checks it against its crc32c (see
//! `wal::snapshot::OpenSnapshot`); a damaged one serves nothing, is counted
//! (`snapshots_damaged`), and a new snapshot replaces it, through which the
//! follower catches up with the leader's exact state.
//!
//! Without the check the follower receives the damaged bytes and its
//! restore fails on the key-value store's own checksum, which stops its
//! shard (an embedded state machine without one would install the damage
//! silently).

use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use net::{AdminRequest, ReadConsistency, RequestBody};
use node::client_cmd::{call, BlockingClient};
use node::kv::{KvOp, KvResponse};

mod common;

const TOKEN: &str = "snapshot-damage-token";
const CLUSTER: u64 = 12;
const BASE_PORT: u16 = 27_500;
const VALUE_BYTES: usize = 4 << 10;
const KEYS: u64 = 300;

fn start(cluster: &mut common::SlotCluster, slot: u64) {
    let peers: Vec<String> = (1..=3).map(|id| format!("{id}=127.0.0.1:{}", cluster.peer_port(id))).collect();
    let mut command: Command = cluster.command(slot);
    command
        .args(["--cluster-id", &CLUSTER.to_string(), "--node-id", &slot.to_string(), "--peers", &peers.join(",")])
        .args(["--snapshot-entries", "64", "--snapshot-log-factor", "0", "--snapshot-write-rate", "0"]);
    cluster.nodes.insert(slot, command.spawn().expect("start node"));
}

fn value(key: u64) -> Bytes {
    (0..VALUE_BYTES).map(|at| (at as u64 ^ key) as u8).collect::<Vec<u8>>().into()
}

fn stat(cluster: &common::SlotCluster, slot: u64, name: &str) -> u64 {
    let mut client = BlockingClient::new(&cluster.client(&[slot])).expect("a client");
    let stats: serde_json::Value = serde_json::from_slice(&client.admin(AdminRequest::Stats).expect("stats")).unwrap();
    stats["stats"][name].as_u64().unwrap_or(0)
}

#[test]
fn a_follower_never_installs_a_snapshot_damaged_on_the_leaders_disk() {
    let mut cluster = common::SlotCluster::new("snapshot-damage", BASE_PORT, CLUSTER, TOKEN);
    for slot in 1..=3 {
        start(&mut cluster, slot);
    }
    let leader = cluster.leader_among(1..=3);
    let follower = (1..=3).find(|&slot| slot != leader).expect("a follower");
    let others: Vec<u64> = (1..=3).filter(|&slot| slot != follower).collect();
    cluster.kill(follower);

    let mut client = BlockingClient::new(&cluster.client(&others)).expect("a client");
    let mut session = client.open_session().expect("a session opens");
    for key in 0..KEYS {
        let op = KvOp::Put { key: Bytes::from(format!("key-{key:04}")), value: value(key) };
        assert_eq!(client.write(&mut session, op.encode()).expect("written"), KvResponse::Written.encode());
    }
    // A snapshot of everything, the log compacted below it.
    let target = cluster.status(leader).expect("leader status")["applied"].as_u64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let damaged_index = loop {
        let status = cluster.status(leader).expect("leader status");
        let index = status["snapshot_index"].as_u64().unwrap_or(0);
        if index >= target && status["first_index"].as_u64().unwrap_or(0) > 1 {
            break index;
        }
        assert!(Instant::now() < deadline, "the leader took no snapshot of the whole state: {status}");
        let _ = call(&cluster.client(&[leader]), RequestBody::Admin(AdminRequest::TakeSnapshot));
        std::thread::sleep(Duration::from_millis(200));
    };

    // One byte of a value in the middle of the leader's stored snapshot rots.
    let path = cluster.data_dir(leader).join("shard-0/SNAPSHOT");
    let mut bytes = std::fs::read(&path).expect("the leader's snapshot");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&path, &bytes).expect("damage the snapshot");

    start(&mut cluster, follower);
    let deadline = Instant::now() + Duration::from_secs(60);
    while cluster.status(follower).is_none_or(|status| status["applied"].as_u64().unwrap_or(0) < target) {
        assert!(Instant::now() < deadline, "the follower did not catch up: {:?}", cluster.status(follower));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(stat(&cluster, leader, "snapshots_damaged") >= 1, "the leader did not notice the damage");
    assert!(stat(&cluster, follower, "snapshots_installed") >= 1, "the follower caught up without a snapshot");
    let replaced = cluster.status(leader).expect("leader status")["snapshot_index"].as_u64().unwrap();
    assert!(replaced >= damaged_index, "the leader's snapshot went back: {replaced} < {damaged_index}");

    // Every value, read from the follower's own state, is the leader's.
    let mut reader = BlockingClient::new(&cluster.client(&[follower])).expect("a client");
    for key in 0..KEYS {
        let query = KvOp::Get { key: Bytes::from(format!("key-{key:04}")) }.encode();
        let answer = reader.read(query, ReadConsistency::Stale).expect("read");
        assert_eq!(answer, KvResponse::Value(Some(value(key))).encode(), "key {key} on the follower");
    }
}
