//! Several shards per node, in one process: keys are routed to their
//! shard, and leadership spreads over the nodes (each shard prefers one
//! voter, in turn), comes back after a node returns, and never flaps.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use net::{ClientRequest, RequestBody, ResponseStatus};
use node::embed::LocalCluster;
use node::{KvOp, KvResponse, KvStateMachine};

/// Each shard's leader, as the shard's own leader says (`None`: unknown).
fn leaders<F>(cluster: &LocalCluster<KvStateMachine, F>, shards: u32) -> BTreeMap<u32, Option<u64>>
where
    F: Fn(u32) -> KvStateMachine + Send + Sync + 'static,
{
    (0..shards).map(|shard| (shard, cluster.leader(shard))).collect()
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "{what} within {timeout:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn leaders_spread_over_the_nodes_and_come_back() {
    let mut cluster =
        LocalCluster::start_with(3, |config| config.shards = 3, |_shard| KvStateMachine::new()).expect("starts");
    // Shard s prefers voter s mod 3 (voters 1, 2, 3): one shard each.
    let spread = |leaders: &BTreeMap<u32, Option<u64>>| {
        leaders.iter().all(|(&shard, &leader)| leader == Some(u64::from(shard) + 1))
    };
    wait_until("each node leads the shard that prefers it", Duration::from_secs(40), || spread(&leaders(&cluster, 3)));
    // Node 2 stops: its shard fails over; back, it takes its shard again.
    cluster.stop(2).expect("stops");
    wait_until("shard 1 fails over", Duration::from_secs(20), || cluster.leader(1).is_some_and(|leader| leader != 2));
    cluster.restart(2).expect("restarts");
    wait_until("node 2 leads shard 1 again", Duration::from_secs(40), || spread(&leaders(&cluster, 3)));
    // Settled: no more hand-overs for a while (the damper holds).
    let settled = leaders(&cluster, 3);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(leaders(&cluster, 3), settled, "leadership moved after it settled");
    cluster.shutdown().expect("stops");
}

#[test]
fn keys_are_served_by_their_own_shard() {
    let cluster =
        LocalCluster::start_with(3, |config| config.shards = 4, |_shard| KvStateMachine::new()).expect("starts");
    for shard in 0..4 {
        cluster.wait_for_leader(shard, Duration::from_secs(20)).expect("every shard elects");
    }
    let mut clients: Vec<_> = (0..4).map(|shard| cluster.client_of_shard(shard)).collect();
    let mut sessions: Vec<_> = clients.iter_mut().map(|client| client.open_session().expect("a session")).collect();
    for i in 0..40u32 {
        let key = Bytes::from(format!("k{i}"));
        let shard = net::kv::shard_for_key(&key, 4) as usize;
        let put = KvOp::Put { key, value: Bytes::from(format!("v{i}")) };
        assert_eq!(
            clients[shard].write(&mut sessions[shard], put.encode()).expect("written"),
            KvResponse::Written.encode()
        );
    }
    // Each key is on its shard only: the owner has it, the others refuse
    // to serve it.
    let leader = cluster.leader(0).expect("a leader");
    let handle = cluster.handle(leader).expect("running");
    for i in 0..40u32 {
        let key = Bytes::from(format!("k{i}"));
        let owner = net::kv::shard_for_key(&key, 4);
        for shard in 0..4 {
            let query = KvOp::Get { key: key.clone() }.encode();
            let read = RequestBody::Read { query, consistency: net::ReadConsistency::Stale };
            let status = handle.call(shard, ClientRequest::plain(1, read)).blocking_recv().expect("answered");
            match (shard == owner, status) {
                (true, ResponseStatus::Ok(bytes)) => {
                    // A stale read on a node that may lag: absent or right.
                    let value = KvResponse::decode(&bytes).expect("decodes");
                    assert!(
                        value == KvResponse::Value(Some(Bytes::from(format!("v{i}"))))
                            || value == KvResponse::Value(None),
                        "{value:?}"
                    );
                }
                (false, ResponseStatus::BadRequest(reason)) => assert!(reason.contains(&format!("shard {owner} of 4"))),
                (owns, other) => panic!("key k{i} on shard {shard} (owner {owner}, {owns}): {other:?}"),
            }
        }
    }
    cluster.shutdown().expect("stops");
}
