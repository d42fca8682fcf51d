//! Group commit with pipelined, self-syncing, direct writes.
//!
//! Segment files are opened `O_DSYNC`, so a group write completes only once
//! its bytes (and the metadata needed to read them back) are on stable
//! storage: the write is its own `fdatasync`. They are also opened `O_DIRECT`
//! where the file system allows it: the write skips the page cache, and since
//! it overwrites written extents (spares are zero-filled) without extending
//! the file, ext4 completes it without handing it to an io-wq worker. On this
//! project's dev machine that halved both the time and the CPU of each synced
//! write against a buffered `O_DSYNC` one (see bench/RESULTS.md).
//!
//! Direct I/O needs aligned memory, offsets and lengths, so each group is
//! copied into a [`DIRECT_IO_ALIGN`]-aligned buffer and padded with zeros to a
//! multiple of it: every group starts on an aligned offset, and the records
//! of one group lie end to end. No two writes ever share a block, so two
//! writes in flight can never overwrite each other's bytes. Recovery skips
//! the zero padding after a group.
//!
//! The writer task takes every queued append it may (up to
//! `write_bytes_max` and the segment's end) as one group and starts its
//! write, then goes back for more: up to [`WRITES_IN_FLIGHT`] groups are in
//! flight at once, so a group's write (and sync) starts while the previous
//! one is still syncing. Appends that arrive meanwhile simply wait in the
//! queue and form the next group: nothing ever waits on a timer.
//!
//! Writes may complete out of order, and a completed write says nothing of
//! the bytes before it. So durability advances over the completed prefix
//! only: a group is durable once it and every group before it completed.
//!
//! The writer keeps at most `2 * write_bytes_max` record bytes written but
//! not yet durable (with padding, the torn-tail window recovery relies on: a
//! crash may keep a later group and lose an earlier one) and drains the
//! pipeline before it switches segments, so such bytes only ever sit in the
//! newest segment. Any I/O error stops the log: nothing after it is reported
//! durable.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

use engine::{EntryBatch, Index};
use tokio::sync::Notify;
use tokio_uring::buf::BoundedBuf;

use crate::config::WalConfig;

/// Group writes in flight at once. With one, a group whose append arrives
/// just after a write started waits for that write's sync and then its own;
/// with two, its write starts at once.
pub(crate) const WRITES_IN_FLIGHT: usize = 2;
use crate::error::WalError;
use crate::segment::{self, SegmentMeta, Spare, DIRECT_IO_ALIGN};
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
    /// Where the next group goes: a multiple of [`DIRECT_IO_ALIGN`].
    pub offset: u64,
    /// XORed into each record's stored crc (see `segment`, "Recycling"); 0
    /// in an unsalted segment.
    pub salt: u32,
}

/// State shared by the API, the writer and the write tasks.
///
/// Invariants: `durable <= started` component-wise; `in_flight` holds the
/// groups after `durable` up to `started`, at most [`WRITES_IN_FLIGHT`];
/// `started.bytes - durable.bytes <= 2 * write_bytes_max`; every queued
/// sequence is greater than `started.sequence`.
pub(crate) struct State {
    pub queue: VecDeque<Queued>,
    /// The last submitted append.
    pub submitted: Mark,
    /// The last append handed to a write.
    pub started: Mark,
    /// Group writes started and not yet part of the durable prefix, oldest
    /// first: each one's end and whether it completed.
    pub in_flight: VecDeque<(Mark, bool)>,
    /// The last append known durable: it and everything before it were
    /// written by completed (self-syncing) writes.
    pub durable: Mark,
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
    /// Segments compaction freed, renamed to pooled spares' names, for the
    /// next spares to reuse (see `segment`, "Recycling").
    ///
    /// Invariant: at most `recycled_segments_max` files, or as many as
    /// the freeing that last filled it gave back when that was more.
    pub recycled: Vec<std::path::PathBuf>,
    /// The directory's salt key (see [`segment::salt`]).
    pub salt_key: u32,
    pub failed: Option<WalError>,
    /// Set while the disk is full: the writer could not open the next
    /// segment and tries again every [`NO_SPACE_RETRY`]; appends stay queued
    /// (bounded by `queued_bytes_max`) and become durable once it can.
    pub no_space: Option<WalError>,
    /// Appends submitted and maybe not yet durable that replace a suffix of
    /// the log: their sequence and the index before their first. Entries
    /// past that were never committed (a leader replaces them), so they no
    /// longer count as acknowledged in a hard-state save.
    pub truncations: VecDeque<(u64, Index)>,
    /// While recovery found the log short of what this replica may have
    /// acknowledged: that index, kept in every hard-state save until the
    /// durable log reaches it (0 otherwise).
    pub repair_floor: Index,
    pub closing: bool,
    pub stats: WalStats,
    /// Aligned write buffers not in use, for the next groups (at most
    /// [`WRITES_IN_FLIGHT`] are kept).
    pub buffers: Vec<Vec<u8>>,
}

impl State {
    /// The highest index this replica may have acknowledged, for a
    /// hard-state save: the durable log's end, short of any suffix a
    /// submitted append replaces, and at least the repair floor while the
    /// log has not reached it.
    pub(crate) fn acknowledged(&mut self) -> Index {
        let durable = self.durable;
        while self.truncations.front().is_some_and(|&(sequence, _)| sequence <= durable.sequence) {
            self.truncations.pop_front();
        }
        if durable.index >= self.repair_floor {
            self.repair_floor = 0;
        }
        let kept = self.truncations.iter().map(|&(_, cut)| cut).min().unwrap_or(Index::MAX);
        durable.index.min(kept).max(self.repair_floor)
    }

    /// Checks the commit pipeline's invariants; returns the first broken
    /// one. Debug builds check after every append and every completed write.
    #[cfg_attr(not(debug_assertions), allow(dead_code))]
    pub(crate) fn check_invariants(&self) -> Result<(), String> {
        let (durable, started, submitted) = (self.durable, self.started, self.submitted);
        if durable.sequence > started.sequence || started.sequence > submitted.sequence {
            return Err(format!(
                "sequences out of order: durable {} started {} submitted {}",
                durable.sequence, started.sequence, submitted.sequence
            ));
        }
        if durable.bytes > started.bytes || started.bytes > submitted.bytes {
            return Err("byte counts out of order between durable, started and submitted".into());
        }
        let mut previous = durable.sequence;
        for (end, _) in &self.in_flight {
            if end.sequence <= previous {
                return Err(format!("a group in flight ends at {} after {previous}", end.sequence));
            }
            previous = end.sequence;
        }
        if previous != started.sequence {
            return Err(format!("the groups in flight end at {previous}, the started mark is {}", started.sequence));
        }
        let mut expected = started.sequence + 1;
        for queued in &self.queue {
            if queued.sequence != expected {
                return Err(format!("queued append {} where {expected} was next", queued.sequence));
            }
            expected += 1;
        }
        if expected != submitted.sequence + 1 {
            return Err(format!("the queue ends at {}, submitted is {}", expected - 1, submitted.sequence));
        }
        Ok(())
    }
}

/// Counters of the commit pipeline, for benchmarks and diagnostics: appends
/// per write is the group-commit factor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WalStats {
    /// Group writes completed, each synced (`O_DSYNC`).
    pub writes: u64,
    /// Segment switches.
    pub segment_switches: u64,
    /// Segment switches into a recycled segment (no zero-fill was needed).
    pub recycled_switches: u64,
    /// Time spent in group writes, submission to completion (the sync
    /// included).
    pub write_micros: u64,
    /// Bytes written by group writes, zero padding included.
    pub write_bytes: u64,
    /// Whether the segment being written was opened `O_DIRECT` (false on a
    /// file system without direct I/O, such as an older tmpfs).
    pub direct_io: bool,
}

/// The shared core of a [`crate::Wal`].
pub(crate) struct Shared {
    pub config: WalConfig,
    pub state: RefCell<State>,
    /// Durability advanced or the log failed; wakes every `wait_durable`.
    pub progress: Notify,
    /// Something the writer may act on changed.
    pub writer_wake: Notify,
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
    }
}

/// What the writer does next.
enum Plan {
    Wait,
    Exit,
    Switch { first_index: Index },
    Write(GroupWrite),
}

/// One group, copied into an aligned buffer: `buffer[start..start + length]`
/// goes to `offset`.
struct GroupWrite {
    file: Rc<tokio_uring::fs::File>,
    offset: u64,
    buffer: Vec<u8>,
    start: usize,
    length: usize,
    end: Mark,
}

fn plan(state: &mut State, config: &WalConfig) -> Plan {
    if state.failed.is_some() {
        return Plan::Exit;
    }
    let Some(front) = state.queue.front() else {
        return if state.closing { Plan::Exit } else { Plan::Wait };
    };
    if state.in_flight.len() >= WRITES_IN_FLIGHT {
        return Plan::Wait;
    }
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
    let window = config.unsynced_bytes_max();
    if unsynced + front_length > window {
        return Plan::Wait;
    }
    // `room` is a multiple of the alignment, so a group that fits it still
    // does once padded.
    let group_bytes_max = (config.write_bytes_max as u64).min(window - unsynced).min(room);
    let mut buffer = state.buffers.pop().unwrap_or_default();
    buffer.clear();
    // Reserved up front, so the copies below never move the allocation.
    buffer.reserve(config.write_bytes_max + 2 * DIRECT_IO_ALIGN);
    let start = segment::aligned_start(&buffer);
    buffer.resize(start, 0);
    let salt = state.active.as_ref().map_or(0, |active| active.salt);
    let mut end = state.started;
    let mut index_max = 0;
    while let Some(next) = state.queue.front() {
        let length = next.batch.len_bytes() as u64;
        if end.bytes - state.started.bytes + length > group_bytes_max
            || state.write_limit.is_some_and(|limit| next.sequence > limit)
        {
            break;
        }
        let next = state.queue.pop_front().expect("front exists");
        extend_salted(&mut buffer, next.batch.as_bytes(), salt);
        index_max = index_max.max(next.batch.last_index());
        end = Mark { sequence: next.sequence, index: next.batch.last_index(), bytes: end.bytes + length };
    }
    let group_bytes = end.bytes - state.started.bytes;
    assert!(group_bytes > 0, "the front append fits, so a group is never empty");
    let length = segment::align_up(group_bytes) as usize;
    buffer.resize(start + length, 0);
    let active = state.active.as_mut().expect("room > 0 implies an active segment");
    let offset = active.offset;
    active.offset += length as u64;
    let file = active.file.clone();
    let segment = state.segments.last_mut().expect("an active segment is listed");
    segment.index_max = segment.index_max.max(index_max);
    state.started = end;
    state.in_flight.push_back((end, false));
    assert!(state.started.bytes - state.durable.bytes <= window, "unsynced bytes exceed the torn-tail window");
    Plan::Write(GroupWrite { file, offset, buffer, start, length, end })
}

/// Appends a record to a group's buffer with its stored crc XORed with the
/// segment's salt: the copy the group needs anyway, so salting costs no
/// extra pass (the batch itself keeps its plain crc for the wire).
fn extend_salted(buffer: &mut Vec<u8>, record: &[u8], salt: u32) {
    let at = buffer.len();
    buffer.extend_from_slice(record);
    let crc = u32::from_le_bytes(buffer[at..at + 4].try_into().expect("a batch header"));
    buffer[at..at + 4].copy_from_slice(&(crc ^ salt).to_le_bytes());
}

/// How long the writer waits before trying again to open the next segment
/// on a full disk.
pub(crate) const NO_SPACE_RETRY: std::time::Duration = std::time::Duration::from_millis(500);

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
            Plan::Switch { first_index } => match switch_segment(&shared, &mut spare, first_index).await {
                Ok(()) => shared.state.borrow_mut().no_space = None,
                Err(error @ WalError::NoSpace { .. }) if !shared.state.borrow().closing => {
                    // A full disk is an operating condition, not a broken
                    // log: nothing is lost by waiting, and writes resume by
                    // themselves once space is freed (issue 16). Closing
                    // cannot wait, so it fails the log instead.
                    shared.state.borrow_mut().no_space = Some(error);
                    tokio::time::sleep(NO_SPACE_RETRY).await;
                }
                Err(error) => {
                    shared.fail(error);
                    break;
                }
            },
            Plan::Write(group) => {
                tokio_uring::spawn(write_group(shared.clone(), group));
            }
        }
    }
    // Let a preallocation in flight finish, so no operation outlives the log;
    // the spare file is removed on the next open.
    if let Some(handle) = spare {
        let _ = handle.await;
    }
}

/// Writes one group (durable on completion: `O_DSYNC`) and advances
/// durability over the prefix of completed groups.
async fn write_group(shared: Rc<Shared>, group: GroupWrite) {
    let GroupWrite { file, offset, buffer, start, length, end } = group;
    let begin = std::time::Instant::now();
    let (result, slice) = file.write_all_at(buffer.slice(start..start + length), offset).await;
    let micros = begin.elapsed().as_micros() as u64;
    if let Err(error) = result {
        let path = shared.state.borrow().segments.last().map(|segment| segment.path.clone()).unwrap_or_default();
        shared.fail(WalError::io("writing", &path, error));
        return;
    }
    {
        let mut state = shared.state.borrow_mut();
        if state.buffers.len() < WRITES_IN_FLIGHT {
            state.buffers.push(slice.into_inner());
        }
        if state.failed.is_some() {
            return;
        }
        let group = state.in_flight.iter_mut().find(|(group_end, _)| *group_end == end).expect("a started group");
        group.1 = true;
        while let Some(&(group_end, true)) = state.in_flight.front() {
            state.in_flight.pop_front();
            assert!(group_end.sequence > state.durable.sequence, "durability only advances");
            state.durable = group_end;
        }
        #[cfg(debug_assertions)]
        if let Err(broken) = state.check_invariants() {
            panic!("WAL commit state: {broken}");
        }
        state.stats.writes += 1;
        state.stats.write_micros += micros;
        state.stats.write_bytes += length as u64;
    }
    shared.progress.notify_waiters();
    shared.writer_wake.notify_one();
}

/// Turns the spare into the active segment and starts preallocating the next.
async fn switch_segment(
    shared: &Rc<Shared>,
    spare: &mut Option<tokio::task::JoinHandle<Result<Spare, WalError>>>,
    first_index: Index,
) -> Result<(), WalError> {
    let config = &shared.config;
    let made = match spare.take() {
        Some(handle) => Some(handle.await.map_err(|error| WalError::Io {
            op: "preallocating a segment in",
            path: config.dir.clone(),
            source: std::sync::Arc::new(std::io::Error::other(error.to_string())),
        })?),
        None => None,
    };
    let ready = match made {
        Some(Ok(ready)) => ready,
        Some(Err(error)) if !matches!(error, WalError::NoSpace { .. }) => return Err(error),
        // No spare, or one given up when it did not fit (perhaps long ago):
        // the disk may have room now (or a recycled file), so make one
        // before saying it is full.
        _ => next_spare(shared).await?,
    };
    let recycled = ready.recycled;
    let salt = segment::salt(ready.sequence, shared.state.borrow().salt_key);
    let (meta, file, direct) = segment::activate(&config.dir, ready, first_index, salt).await?;
    *spare = Some(tokio_uring::spawn(next_spare(shared)));
    let mut state = shared.state.borrow_mut();
    assert_eq!(state.started.bytes, state.durable.bytes, "switch only with nothing unsynced");
    state.segments.push(meta);
    state.active = Some(Active { file: Rc::new(file), offset: 0, salt });
    state.stats.direct_io = direct;
    state.force_switch = false;
    state.stats.segment_switches += 1;
    state.stats.recycled_switches += u64::from(recycled);
    Ok(())
}

/// Makes the next spare: a recycled segment from the pool when there is
/// one, else a new zero-filled file. Takes its sequence now.
fn next_spare(shared: &Shared) -> impl std::future::Future<Output = Result<Spare, WalError>> + 'static {
    let sequence = take_sequence(shared);
    let pooled = shared.state.borrow_mut().recycled.pop();
    let (dir, segment_bytes) = (shared.config.dir.clone(), shared.config.segment_bytes);
    async move {
        match pooled {
            Some(path) => segment::reuse_spare(path, sequence).await,
            None => segment::create_spare(dir, sequence, segment_bytes).await,
        }
    }
}

fn take_sequence(shared: &Shared) -> u64 {
    let mut state = shared.state.borrow_mut();
    let sequence = state.sequence_next;
    state.sequence_next += 1;
    sequence
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
            in_flight: VecDeque::new(),
            durable: Mark::default(),
            log: TermLog::default(),
            snapshot: None,
            segments: vec![SegmentMeta {
                sequence: 1,
                first_index: 1,
                path: dir.join("segment"),
                index_max: 0,
                salt: Some(7),
            }],
            active: Some(Active { file, offset: 0, salt: 7 }),
            force_switch: false,
            write_limit: None,
            sequence_next: 2,
            recycled: Vec::new(),
            salt_key: 0,
            failed: None,
            no_space: None,
            truncations: VecDeque::new(),
            repair_floor: 0,
            closing: false,
            stats: WalStats::default(),
            buffers: Vec::new(),
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

    /// Completes the oldest group in flight (its write, and so its sync).
    fn complete_oldest(state: &mut State) {
        let (end, _) = state.in_flight.pop_front().expect("a group in flight");
        state.durable = end;
    }

    #[test]
    fn the_next_group_is_written_while_the_previous_one_syncs() {
        let dir = std::env::temp_dir().join(format!("wal-plan-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        tokio_uring::start(async {
            let config = config(&dir);
            let mut state = state(&dir);
            submit(&mut state, 3);
            let Plan::Write(first) = plan(&mut state, &config) else { panic!("expected a write") };
            assert_eq!((first.offset, first.end.sequence), (0, 3), "everything queued forms one group");
            let record_bytes = first.end.bytes as usize;
            assert_eq!(first.length, DIRECT_IO_ALIGN, "padded to the alignment");
            let written = &first.buffer[first.start..first.start + first.length];
            assert_eq!(written.as_ptr() as usize % DIRECT_IO_ALIGN, 0, "an aligned buffer");
            assert!(written[record_bytes..].iter().all(|&byte| byte == 0), "zero padding");
            let stored = u32::from_le_bytes(written[..4].try_into().unwrap());
            assert_eq!(stored ^ 7, batch(1, &[1]).crc(), "the stored crc is salted with the segment's salt");
            assert_eq!(&written[4..record_bytes / 3], &batch(1, &[1]).as_bytes()[4..], "the rest is the batch");
            // Group 1 is in flight (written and syncing, nothing durable
            // yet): new appends are written at once, not held for it, from
            // the next aligned offset.
            submit(&mut state, 2);
            let Plan::Write(second) = plan(&mut state, &config) else { panic!("expected a pipelined write") };
            assert_eq!((second.end.sequence, second.offset), (5, DIRECT_IO_ALIGN as u64));
            // Two groups in flight: the next waits for one to complete.
            submit(&mut state, 1);
            assert!(matches!(plan(&mut state, &config), Plan::Wait));
            complete_oldest(&mut state);
            assert_eq!(state.durable.sequence, 3);
            assert!(matches!(plan(&mut state, &config), Plan::Write { .. }));
            complete_oldest(&mut state);
            complete_oldest(&mut state);
            // Beyond twice write_bytes_max not yet durable, the writer waits.
            submit(&mut state, 200);
            while let Plan::Write { .. } = plan(&mut state, &config) {}
            assert!(state.started.bytes - state.durable.bytes <= config.unsynced_bytes_max());
            assert!(!state.queue.is_empty(), "the bounds held appends back");
            // A group completes: writing resumes.
            complete_oldest(&mut state);
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
            state.active.as_mut().unwrap().offset = config.segment_bytes - 10;
            submit(&mut state, 1);
            assert!(matches!(plan(&mut state, &config), Plan::Wait), "a write still in flight in the old segment");
            complete_oldest(&mut state);
            assert!(matches!(plan(&mut state, &config), Plan::Switch { first_index: 2 }));
            // A snapshot in progress holds later appends back.
            state.write_limit = Some(1);
            assert!(matches!(plan(&mut state, &config), Plan::Wait));
        });
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
