//! The conformance suite every [`LogStore`] passes, and small test helpers.
//!
//! Each check is a plain async function taking `open`, a factory that maps a
//! location name to the store's options; opening the same name again must
//! reopen the same storage (that is how recovery is checked). [`suite`] runs
//! them all:
//!
//! ```ignore
//! let disks = RefCell::new(HashMap::new());
//! wal::testing::block_on(wal::testing::suite::<MemLog>(&|name| disks.borrow_mut().entry(name.to_string()).or_default().clone()));
//! ```

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use engine::{ConfState, Entry, EntryBatch, EntryKind, HardState, Index, Recovered, SnapshotMeta, Term};

use crate::error::WalError;
use crate::store::LogStore;

/// Maps a location name to the options that open it.
pub type Opener<'a, S> = &'a dyn Fn(&str) -> <S as LogStore>::Options;

/// Runs a future that never waits on I/O (a [`crate::MemLog`] workload) to
/// completion on this thread.
pub fn block_on<F: Future>(future: F) -> F::Output {
    /// A future that stays pending this long is waiting for I/O that never
    /// comes: a bug in the caller's choice of executor.
    const POLLS_MAX: u32 = 1_000_000;
    let mut future = pin!(future);
    let mut context = Context::from_waker(Waker::noop());
    for _ in 0..POLLS_MAX {
        if let Poll::Ready(output) = future.as_mut().poll(&mut context) {
            return output;
        }
    }
    panic!("block_on: the future did not complete; run it on a tokio-uring runtime instead");
}

/// The payload of entry `index` at `term`: derived from both, so a check can
/// tell a stale entry from the right one.
pub fn payload(index: Index, term: Term) -> Bytes {
    Bytes::from(format!("entry {index} of term {term}"))
}

/// A batch of entries starting at `first` with the given terms and
/// [`payload`]s.
/// One entry of term 1 at `index` carrying `payload_bytes` bytes: the record
/// the WAL's benchmarks append.
pub fn bench_batch(index: Index, payload_bytes: usize) -> EntryBatch {
    EntryBatch::encode(&[Entry {
        index,
        term: 1,
        kind: EntryKind::Normal,
        data: Bytes::from(vec![0xa5; payload_bytes]),
    }])
}

pub fn batch(first: Index, terms: &[Term]) -> EntryBatch {
    let entries: Vec<Entry> = terms
        .iter()
        .enumerate()
        .map(|(offset, &term)| {
            let index = first + offset as u64;
            Entry { index, term, kind: EntryKind::Normal, data: payload(index, term) }
        })
        .collect();
    EntryBatch::encode(&entries)
}

/// `(index, term)` of each entry, checking each payload on the way.
pub fn shape(entries: &[Entry]) -> Vec<(Index, Term)> {
    for entry in entries {
        assert_eq!(entry.data, payload(entry.index, entry.term), "payload of entry {}", entry.index);
    }
    entries.iter().map(|entry| (entry.index, entry.term)).collect()
}

fn range(first: Index, last: Index, term: Term) -> Vec<(Index, Term)> {
    (first..=last).map(|index| (index, term)).collect()
}

async fn reopen<S: LogStore>(open: Opener<'_, S>, name: &str, store: S) -> (S, Recovered) {
    store.close().await.expect("close");
    S::open(open(name)).await.expect("reopen")
}

/// Runs every check of the suite, each on its own location.
pub async fn suite<S: LogStore>(open: Opener<'_, S>) {
    empty_store_recovers_nothing::<S>(open).await;
    appends_survive_reopen::<S>(open).await;
    durability_is_reported_in_order::<S>(open).await;
    conflicting_append_replaces_the_suffix::<S>(open).await;
    bad_positions_are_refused::<S>(open).await;
    hard_state_round_trips::<S>(open).await;
    snapshot_keeps_an_agreeing_suffix::<S>(open).await;
    snapshot_membership_keeps_witnesses::<S>(open).await;
    snapshot_that_disagrees_discards_the_log::<S>(open).await;
    snapshot_past_the_end_restarts_the_log::<S>(open).await;
    compaction_does_not_change_recovery::<S>(open).await;
    appends_continue_while_a_snapshot_is_stored::<S>(open).await;
}

/// Polls a future once, so that it starts; `Some` if it already finished.
pub fn poll_once<F: Future>(future: std::pin::Pin<&mut F>) -> Option<F::Output> {
    match future.poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => Some(output),
        Poll::Pending => None,
    }
}

/// A node stores snapshots off its driver's path: appends go on while one is
/// being stored and are checked against the log as the snapshot leaves it.
pub async fn appends_continue_while_a_snapshot_is_stored<S: LogStore>(open: Opener<'_, S>) {
    let (store, _) = S::open(open("concurrent")).await.expect("open");
    store.append(batch(1, &[1; 10])).expect("append");
    let agreeing = SnapshotMeta { index: 5, term: 1, conf: ConfState::default() };
    let early;
    let result = {
        let mut save = pin!(store.save_snapshot(agreeing.clone(), Bytes::from_static(b"five")));
        early = poll_once(save.as_mut());
        assert!(matches!(store.append(batch(5, &[2])), Err(WalError::BeforeSnapshot { first: 5, snapshot: 5 })));
        let ticket = store.append(batch(11, &[1; 5])).expect("append while the snapshot is stored");
        let result = match early {
            Some(result) => result,
            None => save.await,
        };
        store.wait_durable(ticket.sequence).await.expect("durable");
        result
    };
    result.expect("snapshot");
    // A disagreeing snapshot: appends during it continue right after it.
    let disagreeing = SnapshotMeta { index: 20, term: 3, conf: ConfState::default() };
    let result = {
        let mut save = pin!(store.save_snapshot(disagreeing.clone(), Bytes::from_static(b"twenty")));
        let early = poll_once(save.as_mut());
        assert!(matches!(store.append(batch(23, &[3])), Err(WalError::Gap { first: 23, last: 20 })));
        let ticket = store.append(batch(21, &[3, 3])).expect("append after the new snapshot point");
        let result = match early {
            Some(result) => result,
            None => save.await,
        };
        store.wait_durable(ticket.sequence).await.expect("durable");
        result
    };
    result.expect("snapshot");
    let (store, recovered) = reopen(open, "concurrent", store).await;
    assert_eq!(recovered.snapshot, Some(disagreeing));
    assert_eq!(shape(&recovered.entries), range(21, 22, 3));
    let (_, data) = store.load_snapshot().await.expect("load").expect("stored");
    assert_eq!(&data[..], b"twenty");
    store.close().await.expect("close");
}

pub async fn empty_store_recovers_nothing<S: LogStore>(open: Opener<'_, S>) {
    let (store, recovered) = S::open(open("empty")).await.expect("open");
    assert_eq!(recovered, Recovered::default());
    assert_eq!((store.last_index(), store.durable_index(), store.durable_sequence()), (0, 0, 0));
    assert!(store.load_snapshot().await.expect("load").is_none());
    let (_, recovered) = reopen(open, "empty", store).await;
    assert_eq!(recovered, Recovered::default());
}

pub async fn appends_survive_reopen<S: LogStore>(open: Opener<'_, S>) {
    let (store, _) = S::open(open("survive")).await.expect("open");
    let mut next = 1;
    let mut expected = Vec::new();
    let mut last_ticket = None;
    for round in 0..60u64 {
        let count = 1 + round % 7;
        let terms = vec![1 + round / 20; count as usize];
        let ticket = store.append(batch(next, &terms)).expect("append");
        assert_eq!((ticket.first_index, ticket.last_index), (next, next + count - 1));
        expected.extend(range(next, next + count - 1, 1 + round / 20));
        next += count;
        last_ticket = Some(ticket);
    }
    let ticket = last_ticket.expect("appended");
    store.wait_durable(ticket.sequence).await.expect("durable");
    assert_eq!(store.durable_sequence(), 60);
    assert_eq!(store.durable_index(), next - 1);
    let (store, recovered) = reopen(open, "survive", store).await;
    assert_eq!(shape(&recovered.entries), expected);
    // Appending continues where the recovered log ends, across reopens.
    let ticket = store.append(batch(next, &[5])).expect("append after reopen");
    store.wait_durable(ticket.sequence).await.expect("durable");
    let (_, recovered) = reopen(open, "survive", store).await;
    assert_eq!(recovered.entries.last().map(|entry| (entry.index, entry.term)), Some((next, 5)));
}

pub async fn durability_is_reported_in_order<S: LogStore>(open: Opener<'_, S>) {
    let (store, _) = S::open(open("order")).await.expect("open");
    let tickets: Vec<_> = (1..=100).map(|index| store.append(batch(index, &[1])).expect("append")).collect();
    for (position, ticket) in tickets.iter().enumerate() {
        assert_eq!(ticket.sequence, position as u64 + 1);
    }
    store.wait_durable(37).await.expect("durable");
    assert!(store.durable_sequence() >= 37);
    assert!(store.durable_index() >= 37);
    store.wait_durable(100).await.expect("durable");
    assert_eq!((store.durable_sequence(), store.durable_index(), store.last_index()), (100, 100, 100));
    store.close().await.expect("close");
}

pub async fn conflicting_append_replaces_the_suffix<S: LogStore>(open: Opener<'_, S>) {
    let (store, _) = S::open(open("conflict")).await.expect("open");
    store.append(batch(1, &[1; 10])).expect("append");
    // Queued behind the first without waiting: the truncation must still land.
    let ticket = store.append(batch(6, &[2, 2])).expect("conflicting append");
    assert_eq!((ticket.last_index, store.last_index()), (7, 7));
    store.wait_durable(ticket.sequence).await.expect("durable");
    assert_eq!(store.durable_index(), 7);
    let (store, recovered) = reopen(open, "conflict", store).await;
    let mut expected = range(1, 5, 1);
    expected.extend(range(6, 7, 2));
    assert_eq!(shape(&recovered.entries), expected);
    // A truncation reaching into an earlier append of the same session.
    store.append(batch(8, &[2, 2, 2])).expect("append");
    store.append(batch(3, &[3])).expect("append");
    let (_, recovered) = reopen(open, "conflict", store).await;
    let mut expected = range(1, 2, 1);
    expected.push((3, 3));
    assert_eq!(shape(&recovered.entries), expected);
}

pub async fn bad_positions_are_refused<S: LogStore>(open: Opener<'_, S>) {
    let (store, _) = S::open(open("positions")).await.expect("open");
    assert!(matches!(store.append(batch(2, &[1])), Err(WalError::Gap { first: 2, last: 0 })));
    store.append(batch(1, &[1, 1, 1])).expect("append");
    assert!(matches!(store.append(batch(5, &[1])), Err(WalError::Gap { first: 5, last: 3 })));
    store
        .save_snapshot(SnapshotMeta { index: 2, term: 1, conf: ConfState::default() }, Bytes::new())
        .await
        .expect("snapshot");
    assert!(matches!(store.append(batch(2, &[2])), Err(WalError::BeforeSnapshot { first: 2, snapshot: 2 })));
    assert!(matches!(
        store.save_snapshot(SnapshotMeta { index: 1, term: 1, conf: ConfState::default() }, Bytes::new()).await,
        Err(WalError::SnapshotStale { index: 1, current: 2 })
    ));
    assert!(matches!(store.compact(3).await, Err(WalError::CompactBeyondSnapshot { index: 3, snapshot: 2 })));
    assert_eq!(store.last_index(), 3);
    let (_, recovered) = reopen(open, "positions", store).await;
    assert_eq!(shape(&recovered.entries), vec![(3, 1)]);
}

/// A hard state without an acknowledged term, for the round-trip checks.
fn hard(term: u64, vote: u64, commit: u64, verified: bool) -> HardState {
    HardState { term, vote, commit, ack_term: 0, verified }
}

pub async fn hard_state_round_trips<S: LogStore>(open: Opener<'_, S>) {
    let (store, recovered) = S::open(open("hard")).await.expect("open");
    assert_eq!(recovered.hard_state, HardState::default());
    for term in 1..=5 {
        store.save_hard_state(hard(term, term % 3, term * 2, term % 2 == 1)).await.expect("save");
    }
    let (store, recovered) = reopen(open, "hard", store).await;
    assert_eq!(recovered.hard_state, hard(5, 2, 10, true));
    store.save_hard_state(hard(6, 1, 10, false)).await.expect("save");
    let (store, recovered) = reopen(open, "hard", store).await;
    assert_eq!(recovered.hard_state, hard(6, 1, 10, false));
    // Commit-only saves, and one that changes the term through save_commit
    // (saved durably), are all found after a clean reopen.
    for commit in 11..=13 {
        store.save_commit(hard(6, 1, commit, false)).await.expect("save commit");
    }
    store.save_commit(hard(7, 0, 14, false)).await.expect("save commit");
    store.save_commit(hard(7, 0, 15, false)).await.expect("save commit");
    // A background save overtaken by a durable one does not undo it.
    store.save_hard_state(hard(7, 2, 15, false)).await.expect("save");
    store.save_commit(hard(7, 0, 16, false)).await.expect("save commit");
    store.save_commit(hard(6, 1, 17, false)).await.expect("save commit");
    let (_, recovered) = reopen(open, "hard", store).await;
    assert_eq!(recovered.hard_state, hard(7, 2, 15, false));
}

pub async fn snapshot_keeps_an_agreeing_suffix<S: LogStore>(open: Opener<'_, S>) {
    let (store, _) = S::open(open("keep")).await.expect("open");
    store.append(batch(1, &[1; 10])).expect("append");
    store.append(batch(11, &[2; 10])).expect("append");
    let meta = SnapshotMeta { index: 12, term: 2, conf: ConfState::new([1, 2, 3], []) };
    // Not waiting for the appends: the snapshot orders itself after them.
    store.save_snapshot(meta.clone(), Bytes::from_static(b"machine state")).await.expect("snapshot");
    assert_eq!(store.durable_sequence(), 2);
    let (store, recovered) = reopen(open, "keep", store).await;
    assert_eq!(recovered.snapshot, Some(meta.clone()));
    assert_eq!(shape(&recovered.entries), range(13, 20, 2));
    let (loaded, data) = store.load_snapshot().await.expect("load").expect("stored");
    assert_eq!((loaded, &data[..]), (meta, &b"machine state"[..]));
    store.close().await.expect("close");
}

/// A witness is a witness after a restart: the snapshot's membership keeps
/// its witness list (a joint one here, the witness voting in both halves),
/// as recovery and the snapshot loader read it.
pub async fn snapshot_membership_keeps_witnesses<S: LogStore>(open: Opener<'_, S>) {
    let (store, _) = S::open(open("witnesses")).await.expect("open");
    store.append(batch(1, &[1; 4])).expect("append");
    let mut conf = ConfState::with_witnesses([1, 2, 4], [3], [5]);
    conf.voters_outgoing = vec![1, 2, 3];
    let meta = SnapshotMeta { index: 4, term: 1, conf };
    store.save_snapshot(meta.clone(), Bytes::new()).await.expect("snapshot");
    let (store, recovered) = reopen(open, "witnesses", store).await;
    let recovered_conf = &recovered.snapshot.as_ref().expect("snapshot recovered").conf;
    assert_eq!(recovered_conf.witnesses, vec![3]);
    assert!(recovered_conf.is_witness(3) && !recovered_conf.is_witness(4));
    assert_eq!(recovered.snapshot, Some(meta.clone()));
    let (loaded, data) = store.load_snapshot().await.expect("load").expect("stored");
    assert_eq!((loaded, data.len()), (meta, 0));
    store.close().await.expect("close");
}

pub async fn snapshot_that_disagrees_discards_the_log<S: LogStore>(open: Opener<'_, S>) {
    let (store, _) = S::open(open("disagree")).await.expect("open");
    store.append(batch(1, &[1; 20])).expect("append");
    let meta = SnapshotMeta { index: 15, term: 9, conf: ConfState::new([1], []) };
    store.save_snapshot(meta.clone(), Bytes::from_static(b"s")).await.expect("snapshot");
    assert_eq!(store.last_index(), 15);
    assert!(matches!(store.append(batch(17, &[9])), Err(WalError::Gap { .. })));
    let (store, recovered) = reopen(open, "disagree", store).await;
    assert_eq!((recovered.snapshot, recovered.entries.len()), (Some(meta), 0));
    let ticket = store.append(batch(16, &[9, 9])).expect("append after snapshot");
    store.wait_durable(ticket.sequence).await.expect("durable");
    let (_, recovered) = reopen(open, "disagree", store).await;
    assert_eq!(shape(&recovered.entries), range(16, 17, 9));
}

pub async fn snapshot_past_the_end_restarts_the_log<S: LogStore>(open: Opener<'_, S>) {
    let (store, _) = S::open(open("past")).await.expect("open");
    store.append(batch(1, &[1; 5])).expect("append");
    store
        .save_snapshot(SnapshotMeta { index: 100, term: 4, conf: ConfState::default() }, Bytes::new())
        .await
        .expect("snapshot");
    assert_eq!(store.last_index(), 100);
    store.append(batch(101, &[4])).expect("append");
    let (_, recovered) = reopen(open, "past", store).await;
    assert_eq!(shape(&recovered.entries), vec![(101, 4)]);
}

pub async fn compaction_does_not_change_recovery<S: LogStore>(open: Opener<'_, S>) {
    let (store, _) = S::open(open("compact")).await.expect("open");
    let mut next = 1;
    for round in 0..300u64 {
        let ticket = store.append(batch(next, &[1 + round / 100; 10])).expect("append");
        next = ticket.last_index + 1;
    }
    let last = next - 1;
    store
        .save_snapshot(SnapshotMeta { index: 2000, term: 2, conf: ConfState::default() }, Bytes::new())
        .await
        .expect("snapshot");
    store.compact(2000).await.expect("compact");
    store.compact(1000).await.expect("compacting less is a no-op");
    let (store, recovered) = reopen(open, "compact", store).await;
    assert_eq!(shape(&recovered.entries), range(2001, last, 3));
    // The log keeps working after compaction, and a second round compacts more.
    let ticket = store.append(batch(last + 1, &[3])).expect("append");
    store.wait_durable(ticket.sequence).await.expect("durable");
    store
        .save_snapshot(SnapshotMeta { index: 2900, term: 3, conf: ConfState::default() }, Bytes::new())
        .await
        .expect("snapshot");
    store.compact(2900).await.expect("compact");
    let (_, recovered) = reopen(open, "compact", store).await;
    assert_eq!(shape(&recovered.entries), range(2901, last + 1, 3));
}
