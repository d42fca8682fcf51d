//! [`Wal`]: the io_uring log store, tying the directory, recovery, the commit
//! pipeline, the hard state and snapshots together.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::pin::pin;
use std::rc::Rc;

use bytes::Bytes;
use engine::{Entry, EntryBatch, HardState, Index, Recovered, SnapshotMeta};
use tokio::sync::{Mutex, Notify};

use crate::commit::{run_writer, Active, Mark, Queued, Shared, State, WalStats};
use crate::config::WalConfig;
use crate::error::WalError;
use crate::hard_state::{self, HardStateWriter, HARD_STATE_FILE};
use crate::segment::{self, SEGMENT_SUFFIX};
use crate::snapshot::{self, OpenSnapshot, SnapshotDraft, SnapshotReader, StoredSnapshot, SNAPSHOT_FILE};
use crate::store::{AppendTicket, LogStore};
use crate::terms::TermLog;
use crate::{dir, recovery};

/// The write-ahead log of one shard on io_uring. Single-threaded (`!Send`):
/// open it, and use it, on the shard's tokio-uring runtime.
pub struct Wal {
    shared: Rc<Shared>,
    hard_state: Mutex<HardStateWriter>,
    /// Serializes snapshot, compaction and close with each other.
    exclusive: Mutex<()>,
    tasks: RefCell<Vec<tokio::task::JoinHandle<()>>>,
    /// Damage below the tail that recovery cut the log before (the replica
    /// repairs from its peers), for the node to report.
    damage: Option<Box<WalError>>,
    /// The stored snapshot's file, open for serving chunks (opened at the
    /// first read; dropped when a new snapshot replaces it).
    snapshot_open: RefCell<Option<Rc<OpenSnapshot>>>,
    /// The stored snapshot's data length (the next local one is paced as if
    /// it were as large).
    snapshot_length: std::cell::Cell<u64>,
    /// The payloads recovery dropped, to be read again by the shell before
    /// it serves (see [`Wal::read_recovered`]); `None` once read.
    recovered_reader: RefCell<Option<recovery::DroppedReader>>,
    /// Record bytes appended since the log was opened, for a paced snapshot
    /// writer on another thread to keep up with.
    appended_bytes: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Set when a snapshot did not fit (its draft's write, on whatever
    /// thread, or its sealing): the next snapshot lets the pool of
    /// recycled spares go first (see [`Wal::release_pool`]).
    space_wanted: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Holds the directory's `flock` for as long as the log is open.
    _lock: std::fs::File,
}

impl Wal {
    /// The configuration the log was opened with.
    pub fn config(&self) -> &WalConfig {
        &self.shared.config
    }

    /// Bytes submitted but not yet durable (what `queued_bytes_max` bounds).
    pub fn queued_bytes(&self) -> usize {
        let state = self.shared.state.borrow();
        (state.submitted.bytes - state.durable.bytes) as usize
    }

    /// Counters of the commit pipeline since open.
    pub fn stats(&self) -> WalStats {
        self.shared.state.borrow().stats
    }

    async fn write_hard_state(&self, hard_state: HardState, sync: bool) -> Result<(), WalError> {
        let mut writer = self.hard_state.lock().await;
        Self::check_usable(&self.shared.state.borrow())?;
        let acknowledged = self.shared.state.borrow_mut().acknowledged();
        let result = writer.save(hard_state, acknowledged, sync).await;
        if let Err(error) = &result {
            self.shared.fail(error.clone());
        }
        result
    }

    fn check_usable(state: &State) -> Result<(), WalError> {
        if let Some(cause) = &state.failed {
            return Err(WalError::Stopped { cause: Box::new(cause.clone()) });
        }
        if state.closing {
            return Err(WalError::Closed);
        }
        Ok(())
    }

    fn resume(&self) {
        self.shared.state.borrow_mut().write_limit = None;
        self.shared.writer_wake.notify_one();
    }

    /// Stores a snapshot whose effect on the log was decided (and applied to
    /// the submitted log) when `save_snapshot` was called; `limit` is the last
    /// append submitted before that call, where the writer is held when the
    /// snapshot voids the log (`keep` false).
    async fn store_snapshot(&self, draft: SnapshotDraft, keep: bool, limit: u64) -> Result<(), WalError> {
        let config = &self.shared.config;
        let meta = draft.meta().clone();
        // Every append from before the call is durable before the snapshot is
        // stored; when the log is voided, later ones wait behind it.
        self.wait_durable(limit).await?;
        let stored = {
            let state = self.shared.state.borrow();
            if !keep {
                assert_eq!(state.started.sequence, limit, "the writer holds at the limit");
                assert_eq!(state.durable.sequence, limit, "everything before the snapshot is durable");
            }
            let previous_minimum = state.snapshot.as_ref().map_or(0, |stored| stored.segment_sequence_min);
            let sequence_min = if keep {
                previous_minimum
            } else {
                // Void every segment there is; the next one starts the log anew.
                state.segments.iter().map(|segment| segment.sequence + 1).max().unwrap_or(0).max(previous_minimum)
            };
            StoredSnapshot { meta: meta.clone(), segment_sequence_min: sequence_min }
        };
        let length = snapshot::seal(&config.dir, &stored, draft).await?;
        self.snapshot_length.set(length);
        *self.snapshot_open.borrow_mut() = None;
        let removed = {
            let mut state = self.shared.state.borrow_mut();
            state.snapshot = Some(stored);
            if keep {
                Vec::new()
            } else {
                state.active = None;
                state.force_switch = true;
                // The durable log now ends at the snapshot.
                state.durable.index = meta.index;
                state.started.index = meta.index;
                state.segments.drain(..).collect()
            }
        };
        // Into the pool too: a follower chasing a busy leader's snapshots
        // voids its log at every install, and the switch that starts the
        // log anew would otherwise wait for a zero-filled spare each time
        // (see `RECYCLED_SEGMENTS_MAX_DEFAULT`).
        self.recycle_or_remove(removed, false).await
    }
}

impl Wal {
    /// Puts segments compaction or a snapshot freed into the pool of
    /// recycled spares, as many as it has room for (only salted ones: see
    /// `segment`, "Recycling"), and removes the rest (`paced`: see
    /// [`segment::remove`]). The room is `recycled_segments_max`, or as
    /// many as this freeing gave back when that is more: the log will grow
    /// through about as many before the next compaction.
    async fn recycle_or_remove(&self, freed: Vec<segment::SegmentMeta>, paced: bool) -> Result<(), WalError> {
        let pooled = self.shared.state.borrow().recycled.len();
        let bound = match self.shared.config.recycled_segments_max {
            0 => 0,
            max => max.max(freed.len()),
        };
        let mut room = bound.saturating_sub(pooled);
        let mut removed = Vec::new();
        for meta in freed {
            if room == 0 || meta.salt.is_none() {
                removed.push(meta.path);
                continue;
            }
            let path = segment::recycle(&meta).await?;
            // The writer only takes from the pool, so the room counted
            // above is still there.
            self.shared.state.borrow_mut().recycled.push(path);
            room -= 1;
        }
        segment::remove(&self.shared.config.dir, &removed, paced).await
    }

    /// Deletes the pooled spares once a snapshot did not fit, before the
    /// next one: on a full disk their space is worth more than the zeros
    /// they would save, and the next snapshot (which frees the log's
    /// segments once stored) needs it. The pool may hold as many segments
    /// as the last compaction freed (a whole snapshot interval), so without
    /// this a disk that filled up kept every later snapshot out while the
    /// log went on into the pooled files until it too was full. Blocking
    /// removals, on a full disk only. Best effort: a file that cannot be
    /// removed stays (recovery deletes leftover spares).
    fn release_pool(&self) {
        if !self.space_wanted.swap(false, std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let pooled = std::mem::take(&mut self.shared.state.borrow_mut().recycled);
        for path in pooled {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// A snapshot file that fails its checks is kept as `SNAPSHOT.damaged`, and
/// the log segments (whose entries follow the lost snapshot and cannot be
/// applied without it) as `*.damaged` too, so that the replica starts empty
/// and repairs from its peers. The operator may delete them.
fn set_aside_damaged_snapshot(dir: &std::path::Path) -> Result<(), WalError> {
    let mut files = dir::list_with_suffix(dir, SEGMENT_SUFFIX)?;
    files.push(dir.join(SNAPSHOT_FILE));
    for path in files {
        let mut aside = path.clone().into_os_string();
        aside.push(".damaged");
        std::fs::rename(&path, &aside).map_err(|error| WalError::io("renaming", &path, error))?;
    }
    dir::sync_dir_blocking(dir)
}

impl Wal {
    /// [`LogStore::open`], handing the committed entries recovery drops for
    /// its payload budget to `taker` as the log is read (see
    /// [`crate::RecoveryApply`]): then, unless it was told to discard them,
    /// nothing is read twice and [`LogStore::read_recovered`] has nothing to
    /// give.
    pub async fn open_applying(
        config: WalConfig,
        mut taker: Option<&mut dyn crate::RecoveryApply>,
    ) -> Result<(Wal, Recovered), WalError> {
        config.validate()?;
        let lock = dir::lock_dir(&config.dir)?;
        if !dir::check_identity(&config.dir, config.cluster_id, config.node_id)? {
            // No identity: a new directory, or an initialization that crashed
            // before its last step. Anything that may hold a node's durable
            // state means someone else's (or a damaged) directory.
            let log_files = [SEGMENT_SUFFIX, SNAPSHOT_FILE]
                .iter()
                .map(|suffix| dir::list_with_suffix(&config.dir, suffix).map(|paths| paths.len()))
                .sum::<Result<usize, WalError>>()?;
            let hard_state_saved = config.dir.join(HARD_STATE_FILE).exists()
                && hard_state::load(&config.dir).map_or(true, |(saved, _, _, _)| saved != HardState::default());
            if log_files > 0 || hard_state_saved {
                return Err(WalError::MissingIdentity { path: config.dir.clone() });
            }
            hard_state::initialize(&config.dir)?;
            dir::write_identity(&config.dir, config.cluster_id, config.node_id)?;
        }
        let ((mut hard_state, acknowledged, hard_state_sequence, hard_state_slot), hard_state_damage) =
            hard_state::load_or_repair(&config.dir)?;
        let (head, snapshot_damage) = match snapshot::load_head_blocking(&config.dir) {
            Ok(head) => (head, None),
            Err(damage @ WalError::Corrupt { .. }) => {
                set_aside_damaged_snapshot(&config.dir)?;
                (None, Some(damage))
            }
            Err(error) => return Err(error),
        };
        let snapshot_length = head.as_ref().map_or(0, |head| head.data_length);
        let stored = head.map(|head| head.stored);
        let mut recovered =
            recovery::recover(&config, stored.as_ref(), hard_state.commit, recovery::reborrow(&mut taker))?;

        let mut log = stored.as_ref().map_or_else(TermLog::default, |s| TermLog::new(s.meta.index, s.meta.term));
        for entry in &recovered.entries {
            log.append_entry(entry.index, entry.term);
        }
        // Damage below the tail lost at least the entry after the good
        // prefix, which this replica may have acknowledged.
        let damage_floor = if recovered.damage.is_some() {
            recovery::claimed_after_damage(log.last_index, recovered.damage_index_max)
        } else {
            0
        };
        let damage = recovered.damage.clone().or(hard_state_damage.clone()).or(snapshot_damage.clone()).map(Box::new);
        let mut acknowledged = acknowledged.max(damage_floor);
        // A damaged snapshot took the state before the log with it: the
        // replica repairs from the peers (a leader sends a snapshot) up to
        // what its hard state says it acknowledged.
        if snapshot_damage.is_some() {
            acknowledged = acknowledged.max(hard_state.commit);
        }
        // A damaged hard state may have lost the newest term and vote and
        // what was acknowledged: this replica's past is unknown, and it
        // repairs as a wiped one does (see `engine::REPAIR_UNKNOWN`), from a
        // term no lower than its log's.
        if hard_state_damage.is_some() {
            acknowledged = engine::REPAIR_UNKNOWN;
            hard_state.term = hard_state.term.max(log.term(log.last_index).unwrap_or(0));
            hard_state.ack_term = hard_state.term;
            hard_state.commit = hard_state.commit.min(log.last_index);
        }
        let log_last = log.last_index;
        let snapshot_index = stored.as_ref().map_or(0, |stored| stored.meta.index);
        let (mut applied, mut applied_bytes, mut recovered_reader) = (snapshot_index, 0, None);
        let in_repair = acknowledged.max(hard_state.commit) > log_last;
        let handed_over =
            recovery::settle_taker(taker, recovered.handed_over, in_repair, (recovered.dropped_to, snapshot_index));
        if recovered.dropped_to > snapshot_index {
            let mut dropped = recovery::DroppedReader::new(&recovered.segments, &recovered, config.batch_bytes_max);
            if in_repair {
                // A replica in repair counts nothing past its snapshot as
                // committed (see `engine::Raft::new`): it applies through the
                // engine, which needs the payloads back. Repair is rare; its
                // restart is not bounded.
                for entry in dropped.read(snapshot_index + 1, usize::MAX)? {
                    let at = (entry.index - snapshot_index - 1) as usize;
                    recovered.entries[at] = entry;
                }
            } else {
                (applied, applied_bytes) = (recovered.dropped_to, recovered.dropped_bytes);
                // The taker applied them all: nothing to read again.
                recovered_reader = (!handed_over).then_some(dropped);
            }
        }
        let mut stats = WalStats::default();
        let active = match recovered.segments.last() {
            Some(last) => {
                let (file, direct) = segment::open_log_file(&last.path)?;
                stats.direct_io = direct;
                // Groups start aligned; recovery checked that the bytes up to
                // there are zeros (or zeroed a cut tail).
                let (offset, salt) = (segment::align_up(recovered.tail_offset), last.salt.unwrap_or(0));
                Some(Active { file: Rc::new(file), offset, salt })
            }
            None => None,
        };
        let start = Mark { sequence: 0, index: log.last_index, bytes: 0 };
        let salt_key = segment::salt_key(&recovered.segments);
        let state = State {
            queue: VecDeque::new(),
            submitted: start,
            started: start,
            in_flight: VecDeque::new(),
            durable: start,
            log,
            snapshot: stored.clone(),
            segments: recovered.segments,
            active,
            force_switch: false,
            write_limit: None,
            sequence_next: recovered.sequence_next + 1,
            recycled: Vec::new(),
            salt_key,
            failed: None,
            no_space: None,
            truncations: VecDeque::new(),
            repair_floor: if acknowledged > log_last { acknowledged } else { 0 },
            closing: false,
            stats,
            buffers: Vec::new(),
        };
        let hard_state_writer = HardStateWriter::open(&config.dir, hard_state, hard_state_sequence, hard_state_slot)?;
        // Preallocate the next segment now, ahead of need.
        let spare = tokio_uring::spawn(segment::create_spare(
            config.dir.clone(),
            recovered.sequence_next,
            config.segment_bytes,
        ));
        let shared =
            Rc::new(Shared { config, state: RefCell::new(state), progress: Notify::new(), writer_wake: Notify::new() });
        let tasks = vec![tokio_uring::spawn(run_writer(shared.clone(), Some(spare)))];
        let wal = Wal {
            shared,
            hard_state: Mutex::new(hard_state_writer),
            exclusive: Mutex::new(()),
            tasks: RefCell::new(tasks),
            damage,
            snapshot_open: RefCell::new(None),
            snapshot_length: std::cell::Cell::new(snapshot_length),
            recovered_reader: RefCell::new(recovered_reader),
            appended_bytes: Default::default(),
            space_wanted: Default::default(),
            _lock: lock,
        };
        let recovered = Recovered {
            hard_state,
            snapshot: stored.map(|stored| stored.meta),
            entries: recovered.entries,
            acknowledged,
            applied,
            applied_bytes,
        };
        Ok((wal, recovered))
    }
}

impl LogStore for Wal {
    type Options = WalConfig;

    /// Opens (initializing when empty) the data directory, recovers the log,
    /// and starts the commit pipeline. Must run inside a tokio-uring runtime;
    /// check [`crate::io_uring_available`] before starting one.
    async fn open(config: WalConfig) -> Result<(Wal, Recovered), WalError> {
        Wal::open_applying(config, None).await
    }

    fn set_repair_floor(&self, index: Index) {
        self.shared.state.borrow_mut().repair_floor = index;
    }

    fn append(&self, batch: EntryBatch) -> Result<AppendTicket, WalError> {
        let config = &self.shared.config;
        let mut state = self.shared.state.borrow_mut();
        Self::check_usable(&state)?;
        let length = batch.len_bytes();
        if length > config.batch_bytes_max {
            return Err(WalError::BatchTooLarge { length, batch_bytes_max: config.batch_bytes_max });
        }
        let first = batch.first_index();
        if first <= state.log.snapshot_index {
            return Err(WalError::BeforeSnapshot { first, snapshot: state.log.snapshot_index });
        }
        if first > state.log.last_index + 1 {
            return Err(WalError::Gap { first, last: state.log.last_index });
        }
        let queued_bytes = (state.submitted.bytes - state.durable.bytes) as usize;
        if queued_bytes + length > config.queued_bytes_max {
            return Err(WalError::QueueFull { queued_bytes, queued_bytes_max: config.queued_bytes_max });
        }
        let sequence = state.submitted.sequence + 1;
        if first <= state.log.last_index {
            state.truncations.push_back((sequence, first - 1));
        }
        state.log.append(&batch);
        state.submitted = Mark { sequence, index: batch.last_index(), bytes: state.submitted.bytes + length as u64 };
        self.appended_bytes.fetch_add(length as u64, std::sync::atomic::Ordering::Relaxed);
        let ticket =
            AppendTicket { sequence, first_index: first, last_index: batch.last_index(), last_term: batch.last_term() };
        state.queue.push_back(Queued { sequence, batch });
        #[cfg(debug_assertions)]
        if let Err(broken) = state.check_invariants() {
            panic!("WAL commit state: {broken}");
        }
        drop(state);
        self.shared.writer_wake.notify_one();
        Ok(ticket)
    }

    fn durable_sequence(&self) -> u64 {
        self.shared.state.borrow().durable.sequence
    }

    fn durable_index(&self) -> Index {
        self.shared.state.borrow().durable.index
    }

    fn last_index(&self) -> Index {
        self.shared.state.borrow().log.last_index
    }

    async fn wait_durable(&self, sequence: u64) -> Result<(), WalError> {
        loop {
            let mut notified = pin!(self.shared.progress.notified());
            notified.as_mut().enable();
            {
                let state = self.shared.state.borrow();
                assert!(sequence <= state.submitted.sequence, "waiting for append {sequence}, never submitted");
                if state.durable.sequence >= sequence {
                    return Ok(());
                }
                if let Some(cause) = &state.failed {
                    return Err(WalError::Stopped { cause: Box::new(cause.clone()) });
                }
            }
            notified.await;
        }
    }

    async fn save_hard_state(&self, hard_state: HardState) -> Result<(), WalError> {
        self.write_hard_state(hard_state, true).await
    }

    async fn save_commit(&self, hard_state: HardState) -> Result<(), WalError> {
        self.write_hard_state(hard_state, false).await
    }

    /// A draft in the log's directory. A local snapshot (one the log agrees
    /// with) holds no append back, so it is paced at `snapshot_write_rate`,
    /// unless a snapshot as large as the stored one would then take longer
    /// than `SNAPSHOT_WRITE_SECONDS_MAX`, and never slower than the log
    /// grows meanwhile beyond `snapshot_log_slack` (the in-memory log it
    /// lets the node compact would otherwise outgrow the snapshot:
    /// gigabytes with large values); a received one is written at full
    /// speed (the follower waits for it).
    fn snapshot_draft(&self, meta: SnapshotMeta, received: bool) -> Result<SnapshotDraft, WalError> {
        let config = &self.shared.config;
        Self::check_usable(&self.shared.state.borrow())?;
        self.release_pool();
        let rate = if !received && config.snapshot_write_rate > 0 {
            config.snapshot_write_rate.max(self.snapshot_length.get() / crate::config::SNAPSHOT_WRITE_SECONDS_MAX)
        } else {
            0
        };
        let draft = SnapshotDraft::create(&config.dir, meta, received, rate)?;
        Ok(draft
            .keeping_up_with(self.appended_bytes.clone(), config.snapshot_log_slack)
            .wanting_space(self.space_wanted.clone()))
    }

    async fn save_snapshot_draft(&self, draft: SnapshotDraft) -> Result<(), WalError> {
        let meta = draft.meta().clone();
        let _exclusive = self.exclusive.lock().await;
        // Decide now, against the log as submitted so far, and apply the
        // decision to the submitted log at once: appends made while the
        // snapshot is stored are checked against the log it leaves, and the
        // writer holds them until it is durable.
        let (keep, limit, previous) = {
            let mut state = self.shared.state.borrow_mut();
            Self::check_usable(&state)?;
            if meta.index < state.log.snapshot_index {
                return Err(WalError::SnapshotStale { index: meta.index, current: state.log.snapshot_index });
            }
            let keep = state.log.term(meta.index) == Some(meta.term);
            let previous = keep.then(|| state.log.clone());
            state.log.install_snapshot(meta.index, meta.term, keep);
            let limit = state.submitted.sequence;
            if !keep {
                // Later appends go into a log that starts after the snapshot:
                // they wait until it is stored. A snapshot the log agrees
                // with (every local one) changes no segment, so appends keep
                // flowing while its file is written.
                state.write_limit = Some(limit);
            }
            (keep, limit, previous)
        };
        let index = meta.index;
        let result = self.store_snapshot(draft, keep, limit).await;
        match &result {
            // A snapshot the log agrees with (a local one) changes no
            // segment: if the disk is full it is given up, its temporary
            // file removed, the log's snapshot point put back, and the log
            // goes on (the node takes another later).
            Err(WalError::NoSpace { .. }) if keep => {
                let _ = std::fs::remove_file(self.shared.config.dir.join(snapshot::SNAPSHOT_TEMP_FILE));
                if let Some(previous) = previous {
                    self.shared.state.borrow_mut().log.put_back_prefix(previous, index);
                }
                self.space_wanted.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            // The submitted log already reflects a snapshot that voids it: a
            // failure here must stop the log rather than leave the two
            // disagreeing.
            Err(error) => self.shared.fail(error.clone()),
            Ok(()) => {}
        }
        self.resume();
        result
    }

    async fn load_snapshot(&self) -> Result<Option<(SnapshotMeta, Bytes)>, WalError> {
        let config = &self.shared.config;
        let loaded = snapshot::load(&config.dir, config.snapshot_bytes_max).await?;
        Ok(loaded.map(|(stored, data)| (stored.meta, data)))
    }

    async fn read_snapshot(&self, index: Index, offset: u64, len: u64) -> Result<Option<Bytes>, WalError> {
        let dir = &self.shared.config.dir;
        let cached = self.snapshot_open.borrow().clone();
        let open = match cached {
            Some(open) if open.index == index => open,
            _ => {
                let Some(open) = OpenSnapshot::open(dir)? else { return Ok(None) };
                let open = Rc::new(open);
                *self.snapshot_open.borrow_mut() = Some(open.clone());
                open
            }
        };
        if open.index != index {
            return Ok(None);
        }
        open.read_chunk(dir, offset, len).await.map(Some)
    }

    fn open_snapshot(&self, verify: bool) -> Result<Option<(SnapshotMeta, u64, SnapshotReader)>, WalError> {
        snapshot::open_reader(&self.shared.config.dir, verify)
    }

    async fn compact(&self, index: Index) -> Result<(), WalError> {
        let _exclusive = self.exclusive.lock().await;
        let freed: Vec<segment::SegmentMeta> = {
            let mut state = self.shared.state.borrow_mut();
            Self::check_usable(&state)?;
            if index > state.log.snapshot_index {
                return Err(WalError::CompactBeyondSnapshot { index, snapshot: state.log.snapshot_index });
            }
            // Only a prefix of whole segments, never the one being written:
            // what stays must still replay without a gap.
            let candidates = state.segments.len().saturating_sub(1);
            let count = state.segments[..candidates].iter().take_while(|segment| segment.index_max <= index).count();
            state.segments.drain(..count).collect()
        };
        let result = self.recycle_or_remove(freed, true).await;
        if let Err(error) = &result {
            self.shared.fail(error.clone());
        }
        result
    }

    fn no_space(&self) -> bool {
        self.shared.state.borrow().no_space.is_some()
    }

    fn recovery_damage(&self) -> Option<&WalError> {
        self.damage.as_deref()
    }

    fn read_recovered(&self, from: Index, bytes_max: usize) -> Result<Vec<Entry>, WalError> {
        let mut reader = self.recovered_reader.borrow_mut();
        let Some(dropped) = reader.as_mut() else { return Ok(Vec::new()) };
        let entries = dropped.read(from, bytes_max)?;
        if entries.is_empty() {
            *reader = None;
        }
        Ok(entries)
    }

    async fn close(self) -> Result<(), WalError> {
        let _exclusive = self.exclusive.lock().await;
        let target = {
            let mut state = self.shared.state.borrow_mut();
            state.closing = true;
            state.submitted.sequence
        };
        self.shared.wake_all();
        let result = self.wait_durable(target).await;
        let tasks = std::mem::take(&mut *self.tasks.borrow_mut());
        for task in tasks {
            let _ = task.await;
        }
        result
    }
}

impl Drop for Wal {
    /// A log dropped without `close` finishes writing what was submitted (its
    /// tasks run until the queue is empty) but reports nothing further.
    fn drop(&mut self) {
        self.shared.state.borrow_mut().closing = true;
        self.shared.wake_all();
    }
}
