//! Group commit with pipelined write and `fdatasync`.
//!
//! Two tasks share the log's state:
//!
//! - The writer takes every queued append it may (up to `write_bytes_max`,
//!   [`WRITE_RECORDS_MAX`] records and the segment's end) as one group and
//!   writes it with one vectored write, then goes back for more. Appends that
//!   arrive while a write or sync is in flight simply wait in the queue and
//!   form the next group: nothing ever waits on a timer.
//! - The syncers (two tasks), whenever a write has completed past what any
//!   sync started so far covers, issue one `fdatasync` and, when it
//!   completes, declare durable everything whose write had completed before
//!   that sync was submitted. io_uring does not order separate submissions,
//!   so a sync only covers writes seen complete. Two syncs may be in flight,
//!   and the later one may finish first: it covers the earlier one's writes
//!   too, and the earlier one then changes nothing.
//!
//! So the next group's write runs while the previous group's sync is in
//! flight, its own sync starts as soon as its write completes (not after the
//! previous sync), and durability still advances strictly in submission
//! order.
//!
//! The writer keeps at most `2 * write_bytes_max` bytes written but not yet
//! durable (the torn-tail window recovery relies on) and drains the pipeline
//! before it switches segments, so unsynced bytes only ever sit in the newest
//! segment. Any I/O error stops the log: nothing after it is reported durable.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

use bytes::Bytes;
use engine::{EntryBatch, Index};
use tokio::sync::Notify;

use crate::config::{WalConfig, WRITE_RECORDS_MAX};
use crate::error::WalError;
use crate::segment::{self, SegmentMeta, Spare};
use crate::snapshot::StoredSnapshot;
use crate::terms::TermLog;

/// An append waiting for the writer.
pub(crate) struct Queued {
    pub sequence: u64,
    pub batch: EntryBatch,
}

/// A point in the append stream: the sequence, the log's last index after it,
/// and the cumulative record bytes up to it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Mark {
    pub sequence: u64,
    pub index: Index,
    pub bytes: u64,
}

/// The segment being written.
pub(crate) struct Active {
    pub file: Rc<tokio_uring::fs::File>,
    /// Where the next group goes.
    pub offset: u64,
}

/// State shared by the API, the writer and the syncer.
///
/// Invariants: `durable <= written <= started` component-wise;
/// `started.bytes - durable.bytes <= 2 * write_bytes_max`; every queued
/// sequence is greater than `started.sequence`.
pub(crate) struct State {
    pub queue: VecDeque<Queued>,
    /// The last submitted append.
    pub submitted: Mark,
    /// The last append handed to a write.
    pub started: Mark,
    /// The last append whose write completed, and the file it went to.
    pub written: Mark,
    pub written_file: Option<Rc<tokio_uring::fs::File>>,
    /// The last append known durable.
    pub durable: Mark,
    /// The last append a sync in flight (or done) covers: a syncer starts a
    /// new sync only for writes past it.
    pub sync_started: Mark,
    pub log: TermLog,
    pub snapshot: Option<StoredSnapshot>,
    /// Live segments in sequence order; the last one is `active` when set.
    pub segments: Vec<SegmentMeta>,
    pub active: Option<Active>,
    /// Set when the active segment was voided: the next group opens a new one.
    pub force_switch: bool,
    /// While set, the writer takes no append with a higher sequence (a
    /// snapshot is being stored).
    pub write_limit: Option<u64>,
    /// The sequence the next spare segment gets.
    pub sequence_next: u64,
    pub failed: Option<WalError>,
    pub closing: bool,
    pub stats: WalStats,
}

/// Counters of the commit pipeline, for benchmarks and diagnostics: appends
/// per sync is the group-commit factor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WalStats {
    /// Group writes completed.
    pub writes: u64,
    /// `fdatasync`s completed.
    pub syncs: u64,
    /// Segment switches.
    pub segment_switches: u64,
    /// Time spent in group writes, submission to completion.
    pub write_micros: u64,
    /// Time spent in `fdatasync`s, submission to completion.
    pub sync_micros: u64,
}

/// The shared core of a [`crate::Wal`].
pub(crate) struct Shared {
    pub config: WalConfig,
    pub state: RefCell<State>,
    /// Durability advanced or the log failed; wakes every `wait_durable`.
    pub progress: Notify,
    /// Something the writer may act on changed.
    pub writer_wake: Notify,
    /// A write completed, or the log is closing.
    pub syncer_wake: Notify,
}

impl Shared {
    /// Stops the log: records the first error and wakes everyone.
    pub(crate) fn fail(&self, error: WalError) {
        {
            let mut state = self.state.borrow_mut();
            if state.failed.is_none() {
                state.failed = Some(error);
            }
        }
        self.wake_all();
    }

    pub(crate) fn wake_all(&self) {
        self.progress.notify_waiters();
        self.writer_wake.notify_one();
        self.syncer_wake.notify_waiters();
    }
}

/// What the writer does next.
enum Plan {
    Wait,
    Exit,
    Switch { first_index: Index },
    Write { file: Rc<tokio_uring::fs::File>, offset: u64, buffers: Vec<Bytes>, length: u64, end: Mark },
}

fn plan(state: &mut State, config: &WalConfig) -> Plan {
    if state.failed.is_some() {
        return Plan::Exit;
    }
    let Some(front) = state.queue.front() else {
        return if state.closing { Plan::Exit } else { Plan::Wait };
    };
    if state.write_limit.is_some_and(|limit| front.sequence > limit) {
        return Plan::Wait;
    }
    let unsynced = state.started.bytes - state.durable.bytes;
    let front_length = front.batch.len_bytes() as u64;
    let room = match &state.active {
        Some(active) if !state.force_switch => config.segment_bytes.saturating_sub(active.offset),
        _ => 0,
    };
    if front_length > room {
        // Drain before switching, so unsynced bytes never span two segments.
        return if unsynced == 0 { Plan::Switch { first_index: front.batch.first_index() } } else { Plan::Wait };
    }
    let window = config.tail_window_bytes();
    if unsynced + front_length > window {
        return Plan::Wait;
    }
    let group_bytes_max = (config.write_bytes_max as u64).min(window - unsynced).min(room);
    let mut buffers = Vec::new();
    let mut group_bytes = 0;
    let mut end = state.started;
    let mut index_max = 0;
    while let Some(next) = state.queue.front() {
        let length = next.batch.len_bytes() as u64;
        if buffers.len() == WRITE_RECORDS_MAX
            || group_bytes + length > group_bytes_max
            || state.write_limit.is_some_and(|limit| next.sequence > limit)
        {
            break;
        }
        let next = state.queue.pop_front().expect("front exists");
        group_bytes += length;
        index_max = index_max.max(next.batch.last_index());
        end = Mark { sequence: next.sequence, index: next.batch.last_index(), bytes: end.bytes + length };
        buffers.push(next.batch.into_bytes());
    }
    assert!(!buffers.is_empty(), "the front append fits, so a group is never empty");
    let active = state.active.as_mut().expect("room > 0 implies an active segment");
    let offset = active.offset;
    active.offset += group_bytes;
    let file = active.file.clone();
    let segment = state.segments.last_mut().expect("an active segment is listed");
    segment.index_max = segment.index_max.max(index_max);
    state.started = end;
    assert!(state.started.bytes - state.durable.bytes <= window, "unsynced bytes exceed the torn-tail window");
    Plan::Write { file, offset, buffers, length: group_bytes, end }
}

/// The writer task: groups queued appends into writes and switches segments.
pub(crate) async fn run_writer(
    shared: Rc<Shared>,
    mut spare: Option<tokio::task::JoinHandle<Result<Spare, WalError>>>,
) {
    loop {
        let next = plan(&mut shared.state.borrow_mut(), &shared.config);
        match next {
            Plan::Exit => break,
            Plan::Wait => shared.writer_wake.notified().await,
            Plan::Switch { first_index } => {
                if let Err(error) = switch_segment(&shared, &mut spare, first_index).await {
                    shared.fail(error);
                    break;
                }
            }
            Plan::Write { file, offset, buffers, length: expected, end } => {
                let begin = std::time::Instant::now();
                let (result, _) = file.writev_at_all(buffers, Some(offset)).await;
                let micros = begin.elapsed().as_micros() as u64;
                let path =
                    shared.state.borrow().segments.last().map(|segment| segment.path.clone()).unwrap_or_default();
                match result {
                    Ok(written) if written as u64 == expected => {
                        let mut state = shared.state.borrow_mut();
                        assert!(end.sequence > state.written.sequence, "writes complete in order");
                        state.written = end;
                        state.written_file = Some(file);
                        state.stats.writes += 1;
                        state.stats.write_micros += micros;
                        drop(state);
                        shared.syncer_wake.notify_one();
                    }
                    Ok(written) => {
                        let error = std::io::Error::other(format!("short write: {written} of {expected} bytes"));
                        shared.fail(WalError::io("writing", &path, error));
                        break;
                    }
                    Err(error) => {
                        shared.fail(WalError::io("writing", &path, error));
                        break;
                    }
                }
            }
        }
    }
    // Let a preallocation in flight finish, so no operation outlives the log;
    // the spare file is removed on the next open.
    if let Some(handle) = spare {
        let _ = handle.await;
    }
    shared.syncer_wake.notify_waiters();
}

/// Turns the spare into the active segment and starts preallocating the next.
async fn switch_segment(
    shared: &Rc<Shared>,
    spare: &mut Option<tokio::task::JoinHandle<Result<Spare, WalError>>>,
    first_index: Index,
) -> Result<(), WalError> {
    let config = &shared.config;
    let ready = match spare.take() {
        Some(handle) => handle.await.map_err(|error| WalError::Io {
            op: "preallocating a segment in",
            path: config.dir.clone(),
            source: std::sync::Arc::new(std::io::Error::other(error.to_string())),
        })??,
        None => {
            let sequence = take_sequence(shared);
            segment::create_spare(config.dir.clone(), sequence, config.segment_bytes).await?
        }
    };
    let (meta, file) = segment::activate(&config.dir, ready, first_index).await?;
    let next_sequence = take_sequence(shared);
    *spare = Some(tokio_uring::spawn(segment::create_spare(config.dir.clone(), next_sequence, config.segment_bytes)));
    let mut state = shared.state.borrow_mut();
    assert_eq!(state.started.bytes, state.durable.bytes, "switch only with nothing unsynced");
    state.segments.push(meta);
    state.active = Some(Active { file: Rc::new(file), offset: 0 });
    state.force_switch = false;
    state.stats.segment_switches += 1;
    Ok(())
}

fn take_sequence(shared: &Shared) -> u64 {
    let mut state = shared.state.borrow_mut();
    let sequence = state.sequence_next;
    state.sequence_next += 1;
    sequence
}

/// A syncer task: one `fdatasync` per round covers every write completed
/// when it starts; several run at once (`SYNCS_IN_FLIGHT`).
pub(crate) async fn run_syncer(shared: Rc<Shared>) {
    loop {
        let target = {
            let mut state = shared.state.borrow_mut();
            if state.failed.is_some() {
                break;
            }
            if state.written.sequence > state.sync_started.sequence {
                state.sync_started = state.written;
                Some((state.written, state.written_file.clone().expect("a completed write names its file")))
            } else if state.closing && state.durable.sequence == state.submitted.sequence {
                break;
            } else {
                None
            }
        };
        let Some((target, file)) = target else {
            shared.syncer_wake.notified().await;
            continue;
        };
        let begin = std::time::Instant::now();
        if let Err(error) = file.sync_data().await {
            let path = shared.state.borrow().segments.last().map(|segment| segment.path.clone()).unwrap_or_default();
            shared.fail(WalError::io("syncing", &path, error));
            break;
        }
        {
            let mut state = shared.state.borrow_mut();
            if state.failed.is_some() {
                break;
            }
            // With several syncs in flight, a later one may have finished
            // first and covered this one's writes already.
            if target.sequence > state.durable.sequence {
                state.durable = target;
            }
            state.stats.syncs += 1;
            state.stats.sync_micros += begin.elapsed().as_micros() as u64;
        }
        shared.progress.notify_waiters();
        shared.writer_wake.notify_one();
    }
    shared.progress.notify_waiters();
    // The other syncers may be waiting for a write that will not come.
    shared.syncer_wake.notify_waiters();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::batch;

    fn state(dir: &std::path::Path) -> State {
        let file = std::fs::File::create(dir.join("segment")).unwrap();
        let file = Rc::new(tokio_uring::fs::File::from_std(file));
        State {
            queue: VecDeque::new(),
            submitted: Mark::default(),
            started: Mark::default(),
            written: Mark::default(),
            written_file: None,
            durable: Mark::default(),
            sync_started: Mark::default(),
            log: TermLog::default(),
            snapshot: None,
            segments: vec![SegmentMeta { sequence: 1, first_index: 1, path: dir.join("segment"), index_max: 0 }],
            active: Some(Active { file, offset: 0 }),
            force_switch: false,
            write_limit: None,
            sequence_next: 2,
            failed: None,
            closing: false,
            stats: WalStats::default(),
        }
    }

    fn submit(state: &mut State, count: u64) {
        for _ in 0..count {
            let index = state.submitted.index + 1;
            let batch = batch(index, &[1]);
            let length = batch.len_bytes() as u64;
            let sequence = state.submitted.sequence + 1;
            state.submitted = Mark { sequence, index, bytes: state.submitted.bytes + length };
            state.queue.push_back(Queued { sequence, batch });
        }
    }

    fn config(dir: &std::path::Path) -> WalConfig {
        let mut config = WalConfig::new(dir, 1, 1);
        config.segment_bytes = 64 << 10;
        config.write_bytes_max = 4 << 10;
        config.batch_bytes_max = 4 << 10;
        config
    }

    /// Marks everything started as written (the write completed).
    fn complete_write(state: &mut State) {
        state.written = state.started;
    }

    #[test]
    fn next_group_is_written_while_the_previous_sync_runs() {
        let dir = std::env::temp_dir().join(format!("wal-plan-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        tokio_uring::start(async {
            let config = config(&dir);
            let mut state = state(&dir);
            submit(&mut state, 3);
            let Plan::Write { buffers, offset: 0, end, .. } = plan(&mut state, &config) else {
                panic!("expected a write")
            };
            assert_eq!((buffers.len(), end.sequence), (3, 3), "everything queued forms one group");
            complete_write(&mut state);
            // Group 1 is written, its sync in flight (nothing durable yet):
            // new appends are written at once, not held for the sync.
            submit(&mut state, 2);
            let Plan::Write { buffers, offset, .. } = plan(&mut state, &config) else {
                panic!("expected a pipelined write")
            };
            assert_eq!((buffers.len(), offset), (2, state.written.bytes));
            complete_write(&mut state);
            // Beyond twice write_bytes_max unsynced, the writer waits.
            submit(&mut state, 200);
            let mut groups = 0;
            while let Plan::Write { .. } = plan(&mut state, &config) {
                complete_write(&mut state);
                groups += 1;
            }
            assert!(groups >= 1);
            assert!(state.started.bytes - state.durable.bytes <= config.tail_window_bytes());
            assert!(!state.queue.is_empty(), "the bound held appends back");
            // The sync completes: writing resumes.
            state.durable = state.written;
            assert!(matches!(plan(&mut state, &config), Plan::Write { .. }));
        });
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_segment_switch_waits_for_the_pipeline_to_drain_and_limits_hold_appends() {
        let dir = std::env::temp_dir().join(format!("wal-plan-switch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        tokio_uring::start(async {
            let config = config(&dir);
            let mut state = state(&dir);
            submit(&mut state, 1);
            assert!(matches!(plan(&mut state, &config), Plan::Write { .. }));
            complete_write(&mut state);
            state.active.as_mut().unwrap().offset = config.segment_bytes - 10;
            submit(&mut state, 1);
            assert!(matches!(plan(&mut state, &config), Plan::Wait), "unsynced bytes in the old segment");
            state.durable = state.written;
            assert!(matches!(plan(&mut state, &config), Plan::Switch { first_index: 2 }));
            // A snapshot in progress holds later appends back.
            state.write_limit = Some(1);
            assert!(matches!(plan(&mut state, &config), Plan::Wait));
        });
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
