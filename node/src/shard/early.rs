//! The state machine a shard starts with, applying the committed log while
//! the log's recovery reads it (issue 21 item 4).
//!
//! A log longer than its payload budget (`--log-memory-bytes`) used to be
//! read twice at a restart: recovery dropped the oldest committed payloads
//! as it read, and the shard read them again to apply them (1.5-2.1x the
//! direct read of the log, against 0.8-1.1x within the budget). A
//! [`RecoveringState`] given to recovery ([`wal::RecoveryApply`]) restores
//! the stored snapshot at the first entry handed over and applies each
//! dropped entry as it is read: the log is read once. Handing over is
//! optimistic (a later record may replace an entry handed over, or the
//! replica turn out to be in repair); then recovery says discard, and the
//! shard starts from a fresh state machine and today's path (read again).

use std::time::{Duration, Instant};

use engine::{Entry, EntryKind, Index, SnapshotMeta, Term};
use wal::{SnapshotReader, WalError};

use crate::app::StateMachine;
use crate::replicated::NodeStateMachine;

/// Opens the stored snapshot for reading (`ShardStorage::open_snapshot`'s
/// answer), before the shard and its storage exist.
pub type SnapshotOpener = Box<dyn FnMut() -> Result<Option<(SnapshotMeta, u64, SnapshotReader)>, WalError>>;

/// The state machine a shard starts with: a fresh one, or one that applied
/// the committed log recovery handed over (see the module).
pub struct RecoveringState<S> {
    /// Untouched until the first entry handed over.
    app: Option<S>,
    /// A fresh state machine for when what was applied is discarded.
    spare: Option<S>,
    open_snapshot: Option<SnapshotOpener>,
    applied: Option<Applied<S>>,
    /// Discarded, or the snapshot could not be restored: the shard starts
    /// from a fresh state machine and reads the log again.
    unusable: bool,
}

/// What applying the handed-over entries built.
struct Applied<S> {
    fsm: NodeStateMachine<S>,
    /// The stored snapshot restored first, with its size.
    snapshot: Option<(SnapshotMeta, u64)>,
    restore_took: Option<Duration>,
    /// The last entry applied (the snapshot's index before any).
    last: Index,
    count: u64,
    /// The first index of each term applied (for the vote hold's notes).
    term_starts: Vec<(Index, Term)>,
    configs: bool,
    started: Instant,
}

/// What applying while the log was read built, for the shard to adopt
/// (see [`RecoveringState::into_start`]).
pub(super) struct AppliedStart {
    pub snapshot_size: Option<u64>,
    pub restore_took: Option<Duration>,
    pub count: u64,
    pub term_starts: Vec<(Index, Term)>,
    pub configs: bool,
    pub took: Duration,
}

impl<S> From<S> for RecoveringState<S> {
    /// A fresh state machine that takes no entries from recovery.
    fn from(app: S) -> RecoveringState<S> {
        RecoveringState { app: Some(app), spare: None, open_snapshot: None, applied: None, unusable: false }
    }
}

impl<S: StateMachine> RecoveringState<S> {
    /// A state machine that applies what recovery hands over, restoring the
    /// snapshot `open_snapshot` opens first; `spare`, a fresh one, replaces
    /// it if that is discarded.
    pub fn new(app: S, spare: S, open_snapshot: SnapshotOpener) -> RecoveringState<S> {
        RecoveringState {
            app: Some(app),
            spare: Some(spare),
            open_snapshot: Some(open_snapshot),
            applied: None,
            unusable: false,
        }
    }

    /// The first entry arrived: restores the stored snapshot.
    fn begin(&mut self) -> Result<Applied<S>, String> {
        let opener = self.open_snapshot.as_mut().ok_or("no snapshot opener")?;
        let mut fsm = NodeStateMachine::new(self.app.take().ok_or("no state machine")?);
        let started = Instant::now();
        let (snapshot, restore_took, last) = match opener().map_err(|error| error.to_string())? {
            Some((meta, size, mut reader)) => {
                fsm.restore_from(&mut reader).map_err(|error| error.0)?;
                fsm.note_members(&meta.conf.members());
                let index = meta.index;
                (Some((meta, size)), Some(started.elapsed()), index)
            }
            None => (None, None, 0),
        };
        Ok(Applied { fsm, snapshot, restore_took, last, count: 0, term_starts: Vec::new(), configs: false, started })
    }

    /// Decides how the shard starts: with what was applied, if it holds
    /// the snapshot at `snapshot_index` and every entry up to `applied`
    /// (the engine's applied index), or (`None`) from a fresh state
    /// machine, which restores the snapshot and applies the whole log
    /// (read again where recovery dropped payloads); `Err` then counts the
    /// entries applied and discarded.
    pub(super) fn into_start(
        self,
        snapshot_index: Index,
        applied: Index,
    ) -> (NodeStateMachine<S>, Result<AppliedStart, u64>) {
        let RecoveringState { app, spare, applied: built, unusable, .. } = self;
        let Some(built) = built else {
            return (NodeStateMachine::new(app.or(spare).expect("a state machine")), Err(0));
        };
        let restored_at = built.snapshot.as_ref().map_or(0, |(meta, _)| meta.index);
        if unusable || restored_at != snapshot_index || built.last != applied {
            return (NodeStateMachine::new(spare.expect("a spare state machine")), Err(built.count));
        }
        let start = AppliedStart {
            took: built.started.elapsed(),
            snapshot_size: built.snapshot.map(|(_, size)| size),
            restore_took: built.restore_took,
            count: built.count,
            term_starts: built.term_starts,
            configs: built.configs,
        };
        (built.fsm, Ok(start))
    }
}

impl<S: StateMachine> wal::RecoveryApply for RecoveringState<S> {
    fn apply(&mut self, entries: &[Entry]) {
        if self.unusable || self.open_snapshot.is_none() {
            // A fresh state machine (`From`) takes nothing: it stays fresh.
            return;
        }
        if self.applied.is_none() {
            match self.begin() {
                Ok(applied) => self.applied = Some(applied),
                Err(reason) => {
                    // The shard's own restore reports it.
                    tracing::warn!(reason, "the snapshot could not be restored while the log was read");
                    self.unusable = true;
                    return;
                }
            }
        }
        let applied = self.applied.as_mut().expect("begun");
        applied.fsm.prefetch(entries);
        for entry in entries {
            if entry.index != applied.last + 1 {
                // Not the next entry: recovery's contract broken; start
                // fresh rather than apply out of order.
                self.unusable = true;
                return;
            }
            if applied.term_starts.last().is_none_or(|&(_, term)| term < entry.term) {
                applied.term_starts.push((entry.index, entry.term));
            }
            match entry.kind {
                EntryKind::Normal => {
                    // No client waits at a start: what it did is not needed.
                    let _ = applied.fsm.apply(entry.index, &entry.data);
                }
                EntryKind::Noop => applied.fsm.skip(entry.index),
                EntryKind::Config => {
                    applied.fsm.apply_conf(entry.index, &entry.data);
                    applied.configs = true;
                }
            }
            applied.last = entry.index;
            applied.count += 1;
        }
    }

    fn discard(&mut self) {
        if self.applied.is_some() {
            self.unusable = true;
        }
    }
}
