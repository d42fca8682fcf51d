//! Issue 20: installing a snapshot does not stop the shard's driver while
//! the state machine is rebuilt. A follower that missed the compacted log
//! receives the leader's snapshot; its state machine's restorer then blocks
//! until the test lets it go. Meanwhile the follower's driver must answer a
//! status request and a stale read, take and commit the entries written in
//! the meantime (without applying them), and afterwards apply every one of
//! them once, after the snapshot.
//!
//! The restore waits for the test both on the restorer's thread and in
//! `restore_from` (the restore on the driver), so a node that restored on
//! its driver would answer nothing until the test gave up.

use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use net::{ClientRequest, ReadConsistency, RequestBody, ResponseStatus};
use node::embed::LocalCluster;
use node::{Rejection, RestoreError, RestoredState, Restorer, SerializedImage, SnapshotImage, StateMachine};

/// How long the test waits for any answer or state before it fails.
const PATIENCE: Duration = Duration::from_secs(20);

/// Holds every restore until the test opens it, and counts the restores
/// that reached it; with `refuse`, restores then fail.
#[derive(Default)]
struct Gate {
    /// (open, restores that reached the gate)
    state: Mutex<(bool, u32)>,
    changed: Condvar,
    refuse: AtomicBool,
}

impl Gate {
    fn pass(&self) {
        let mut state = self.state.lock().unwrap();
        state.1 += 1;
        self.changed.notify_all();
        while !state.0 {
            state = self.changed.wait(state).unwrap();
        }
    }

    fn wait_reached(&self) -> bool {
        let state = self.state.lock().unwrap();
        let (state, _) = self.changed.wait_timeout_while(state, PATIENCE, |state| state.1 == 0).unwrap();
        state.1 > 0
    }

    fn open(&self) {
        self.state.lock().unwrap().0 = true;
        self.changed.notify_all();
    }

    fn check(&self) -> Result<(), RestoreError> {
        match self.refuse.load(Ordering::SeqCst) {
            true => Err(RestoreError("refused by the test".into())),
            false => Ok(()),
        }
    }
}

/// The sum of every byte written, as 8 little-endian bytes; its restores
/// wait at the gate.
struct Sum {
    total: u64,
    gate: Arc<Gate>,
}

fn read_total(snapshot: &mut dyn Read) -> Result<u64, RestoreError> {
    let mut bytes = [0; 8];
    snapshot.read_exact(&mut bytes)?;
    if snapshot.read(&mut [0])? != 0 {
        return Err(RestoreError("not 8 bytes".into()));
    }
    Ok(u64::from_le_bytes(bytes))
}

impl StateMachine for Sum {
    fn apply(&mut self, _index: u64, command: &[u8]) -> Result<Bytes, Rejection> {
        self.total += command.iter().map(|&byte| u64::from(byte)).sum::<u64>();
        Ok(Bytes::new())
    }

    fn query(&self, _query: &[u8]) -> Result<Bytes, Rejection> {
        Ok(Bytes::copy_from_slice(&self.total.to_le_bytes()))
    }

    fn snapshot_image(&self) -> Box<dyn SnapshotImage> {
        Box::new(SerializedImage(Bytes::copy_from_slice(&self.total.to_le_bytes())))
    }

    fn restore_from(&mut self, snapshot: &mut dyn Read) -> Result<(), RestoreError> {
        self.gate.pass();
        self.total = read_total(snapshot)?;
        Ok(())
    }

    fn restorer(&self) -> Option<Box<dyn Restorer>> {
        Some(Box::new(SumRestorer(self.gate.clone())))
    }

    fn adopt(&mut self, restored: RestoredState) -> RestoredState {
        let total = restored.downcast::<u64>().expect("a sum");
        RestoredState::new(std::mem::replace(&mut self.total, total))
    }
}

struct SumRestorer(Arc<Gate>);

impl Restorer for SumRestorer {
    fn restore(self: Box<Self>, snapshot: &mut dyn Read) -> Result<RestoredState, RestoreError> {
        self.0.pass();
        self.0.check()?;
        Ok(RestoredState::new(read_total(snapshot)?))
    }
}

/// The in-process cluster of these tests.
type Cluster = LocalCluster<Sum, Box<dyn Fn(u32) -> Sum + Send + Sync>>;

/// Asks node `id` directly (not through a client that would try another
/// node); `None` if it does not answer within [`PATIENCE`].
fn ask(cluster: &Cluster, id: u64, body: RequestBody) -> Option<ResponseStatus> {
    let mut answer = cluster.handle(id)?.call(0, ClientRequest::plain(0, body));
    let deadline = Instant::now() + PATIENCE;
    loop {
        match answer.try_recv() {
            Ok(status) => return Some(status),
            Err(tokio::sync::oneshot::error::TryRecvError::Empty) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(_) => return None,
        }
    }
}

fn status(cluster: &Cluster, id: u64) -> serde_json::Value {
    match ask(cluster, id, RequestBody::Status) {
        Some(ResponseStatus::Ok(json)) => serde_json::from_slice(&json).expect("status is JSON"),
        other => panic!("node {id} did not answer its status while restoring: {other:?}"),
    }
}

fn stale_total(cluster: &Cluster, id: u64) -> u64 {
    let read = RequestBody::Read { query: Bytes::new(), consistency: ReadConsistency::Stale };
    match ask(cluster, id, read) {
        Some(ResponseStatus::Ok(total)) => u64::from_le_bytes(total[..].try_into().expect("8 bytes")),
        other => panic!("node {id} did not answer a stale read while restoring: {other:?}"),
    }
}

/// Polls node `id`'s status until `done` holds (or [`PATIENCE`] passes).
fn wait_status(cluster: &Cluster, id: u64, what: &str, done: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let status = status(cluster, id);
        if done(&status) {
            return status;
        }
        assert!(Instant::now() < deadline, "node {id}: {what}: {status}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A cluster of three whose follower (returned with the leader) missed
/// 100 writes of 1, made in `session` of `client`, and restarted: it
/// catches up through a snapshot, whose restore has reached the gate.
fn follower_catching_up(gate: &Arc<Gate>) -> (Cluster, u64, u64) {
    let make_gate = gate.clone();
    let make: Box<dyn Fn(u32) -> Sum + Send + Sync> = Box::new(move |_shard| Sum { total: 0, gate: make_gate.clone() });
    let mut cluster = LocalCluster::start_with(
        3,
        |config| {
            config.snapshot_entries = Some(20);
            config.snapshot_log_factor = 0;
        },
        make,
    )
    .expect("the cluster starts");
    let leader = cluster.wait_for_leader(0, PATIENCE).expect("a leader");
    let follower = cluster.ids().iter().copied().find(|&id| id != leader).expect("a follower");
    cluster.stop(follower).expect("the follower stops");
    // The leader snapshots and compacts its log past everything the
    // follower holds.
    let mut client = cluster.client();
    let mut session = client.open_session().expect("a session");
    for _ in 0..100 {
        client.write(&mut session, Bytes::from_static(&[1])).expect("a write");
    }
    cluster.restart(follower).expect("the follower restarts");
    assert!(gate.wait_reached(), "the follower never restored a snapshot");
    (cluster, leader, follower)
}

#[test]
fn a_follower_restoring_a_snapshot_keeps_answering_and_replicating() {
    let gate = Arc::new(Gate::default());
    let (cluster, leader, follower) = follower_catching_up(&gate);

    // Its restore waits at the gate. The driver answers meanwhile.
    let restoring = status(&cluster, follower);
    assert_eq!(restoring["restoring"], true, "{restoring}");
    let applied = restoring["applied"].as_u64().expect("applied");
    assert_eq!(stale_total(&cluster, follower), 0, "reads see the state before the snapshot until it is adopted");
    let mut client = cluster.client();
    let mut session = client.open_session().expect("a session");
    for _ in 0..10 {
        client.write(&mut session, Bytes::from_static(&[2])).expect("a write while the follower restores");
    }
    let leader_commit = status(&cluster, leader)["commit"].as_u64().expect("commit");
    let caught_up = wait_status(&cluster, follower, "takes and commits new entries while restoring", |status| {
        status["commit"].as_u64() >= Some(leader_commit)
    });
    assert_eq!(caught_up["restoring"], true, "{caught_up}");
    assert_eq!(caught_up["applied"].as_u64(), Some(applied), "nothing is applied before the snapshot: {caught_up}");

    // Let it go: the snapshot's state is adopted, then the entries after it
    // are applied, each once.
    gate.open();
    wait_status(&cluster, follower, "applies everything once restored", |status| {
        status["restoring"] == false && status["applied"].as_u64() >= Some(leader_commit)
    });
    assert_eq!(stale_total(&cluster, follower), 100 + 2 * 10, "every write applied once");
    cluster.shutdown().expect("a clean stop");
}

/// A snapshot the state machine cannot read stops the shard, and with it
/// the node, with the state machine's reason: off the driver as on it.
#[test]
fn a_restore_refused_off_the_driver_stops_the_follower_with_the_reason() {
    let gate = Arc::new(Gate::default());
    gate.refuse.store(true, Ordering::SeqCst);
    let (mut cluster, _leader, follower) = follower_catching_up(&gate);
    gate.open();
    let deadline = Instant::now() + PATIENCE;
    // Its core answers `Busy` for a stopped shard.
    while matches!(ask(&cluster, follower, RequestBody::Status), Some(ResponseStatus::Ok(_))) {
        assert!(Instant::now() < deadline, "the follower's shard still runs after its restore failed");
        std::thread::sleep(Duration::from_millis(20));
    }
    let error = cluster.stop(follower).expect_err("the follower stopped with an error");
    assert_eq!(
        error.to_string(),
        "shard 0: the state machine cannot restore a snapshot: refused by the test",
        "the reason is the state machine's"
    );
    cluster.shutdown().expect("the others stop cleanly");
}
