//! What the writes whose clients never learned the outcome actually did.
//!
//! A write that times out, or whose client gives up after a crash, enters
//! the history with an unknown outcome: the checker must consider every
//! moment after its call for its effect, and also its absence. A few dozen
//! of them on one key make the search exponential, and the checker gives
//! up (`Unknown`) on histories that are fine.
//!
//! The simulator can see what happened. Every value a client writes is
//! unique (its client and operation number), so the first moment any
//! replica's state machine stored a value is when that write took effect at
//! the latest: it was committed before any replica applied it, and it was
//! proposed after the client sent it. [`resolve_unknown`] gives each
//! unknown write that return time (and drops one that never stored its
//! value: it had no effect by the end of the run, which a pending operation
//! may always have). This narrows the history, so a linearizable verdict on
//! the narrowed history holds for the original one; the reverse is not
//! claimed, and a narrowed history that is not linearizable still fails the
//! run (the actual order of effects contradicted what clients saw).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use bytes::Bytes;
use engine::Index;
use net::kv::{KvOpRef, KvResponse};
use node::{KvStateMachine, Rejection, RestoreError, RestoredState, Restorer, SnapshotImage, StateMachine};

use crate::linearizability::{NodeKvInput, NodeKvOutput, Operation, Returned};

/// The first simulated time (milliseconds) each written value was stored by
/// any replica.
#[derive(Default)]
pub struct WriteEffects {
    first_stored: HashMap<u64, u64>,
    /// Values that replicas' stores copied after keeping them as slices of
    /// their log entries (see `KvStateMachine::slices_copied`).
    pub slices_copied: u64,
    /// Shard starts that kept the state machine built while recovery read
    /// the log (`node::shard::RecoveringState`), and starts that discarded
    /// it (a later record replaced an entry applied, or repair).
    pub recovered_early: u64,
    pub recovered_discarded: u64,
}

impl WriteEffects {
    fn stored(&mut self, value: u64, now: u64) {
        self.first_stored.entry(value).or_insert(now);
    }

    /// Takes the observations `held` kept back, if `keep` (see
    /// [`HeldEffects`]), and lets later ones through.
    pub fn release(&mut self, held: &HeldEffects, keep: bool) {
        for (value, now) in held.borrow_mut().take().unwrap_or_default() {
            if keep {
                self.stored(value, now);
            }
        }
    }
}

/// Observations a state machine keeps back while it may yet be discarded:
/// a restart applies the committed log as recovery reads it
/// (`node::shard::RecoveringState`), optimistically; an entry applied that
/// a later record replaces was never committed, and its value must not
/// count as stored. `None` once released.
pub type HeldEffects = Rc<RefCell<Option<Vec<(u64, u64)>>>>;

/// The real key-value state machine, telling [`WriteEffects`] when each
/// value is first stored. Everything else is the inner machine's.
pub struct ObservedKv {
    inner: KvStateMachine,
    effects: Rc<RefCell<WriteEffects>>,
    clock: Rc<Cell<u64>>,
    held: HeldEffects,
}

impl ObservedKv {
    pub fn new(effects: Rc<RefCell<WriteEffects>>, clock: Rc<Cell<u64>>) -> ObservedKv {
        // Slices copied after 4 KiB of commands, so that short runs copy
        // them too.
        ObservedKv::holding(effects, clock, Rc::new(RefCell::new(None)))
    }

    /// One whose observations wait in `held` until it is released (see
    /// [`HeldEffects`]).
    pub fn holding(effects: Rc<RefCell<WriteEffects>>, clock: Rc<Cell<u64>>, held: HeldEffects) -> ObservedKv {
        ObservedKv { inner: KvStateMachine::with_slice_keep_bytes(4096), effects, clock, held }
    }

    /// Whether the store holds no key (a witness's never does).
    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }
}

impl ObservedKv {
    /// Notes the value a put or a successful compare-and-swap stored.
    fn observe(&self, command: &[u8], answer: &Bytes) {
        let stored = match KvOpRef::decode(command) {
            Ok(KvOpRef::Put { value, .. }) => Some(value),
            Ok(KvOpRef::Cas { new: Some(new), .. }) => {
                matches!(KvResponse::decode(answer), Ok(KvResponse::CasSucceeded)).then_some(new)
            }
            _ => None,
        };
        let Some(value) = stored.and_then(super::client::value_id) else { return };
        if let Some(held) = self.held.borrow_mut().as_mut() {
            held.push((value, self.clock.get()));
        } else {
            self.effects.borrow_mut().stored(value, self.clock.get());
        }
    }
}

impl StateMachine for ObservedKv {
    fn apply(&mut self, index: Index, command: &[u8]) -> Result<Bytes, Rejection> {
        let answer = self.inner.apply(index, command)?;
        self.observe(command, &answer);
        Ok(answer)
    }

    /// The node's path: the store keeps values as slices of the entry.
    fn apply_in(&mut self, index: Index, command: &[u8], entry: &Bytes) -> Result<Bytes, Rejection> {
        let copied = self.inner.slices_copied();
        let answer = self.inner.apply_in(index, command, entry);
        self.effects.borrow_mut().slices_copied += self.inner.slices_copied() - copied;
        let answer = answer?;
        self.observe(command, &answer);
        Ok(answer)
    }

    fn query(&self, query: &[u8]) -> Result<Bytes, Rejection> {
        self.inner.query(query)
    }

    fn routing_keys(command: &[u8], key: &mut dyn FnMut(&[u8])) {
        KvStateMachine::routing_keys(command, key)
    }

    fn prefetch(&self, commands: &[&[u8]]) {
        self.inner.prefetch(commands)
    }

    fn snapshot_image(&self) -> Box<dyn SnapshotImage> {
        self.inner.snapshot_image()
    }

    fn before_image(&mut self) {
        self.inner.before_image()
    }

    fn restore_from(&mut self, snapshot: &mut dyn std::io::Read) -> Result<(), RestoreError> {
        self.inner.restore_from(snapshot)
    }

    /// The key-value store's restorer: the simulator restores off the
    /// driver as the node does (its storage delivers the outcome later).
    fn restorer(&self) -> Option<Box<dyn Restorer>> {
        self.inner.restorer()
    }

    fn adopt(&mut self, restored: RestoredState) -> RestoredState {
        self.inner.adopt(restored)
    }
}

type SimOperation = Operation<NodeKvInput<u8, u64>, NodeKvOutput<u64>>;

/// How many unknown outcomes [`resolve_unknown`] settled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Resolved {
    /// Writes given the time their value was first stored.
    pub placed: u64,
    /// Writes whose value was never stored, and reads, dropped.
    pub dropped: u64,
    /// Unknown outcomes left for the checker (deletes, deleting swaps).
    pub left: u64,
}

/// Narrows `operations` by what the state machines saw (module docs).
pub fn resolve_unknown(operations: Vec<SimOperation>, effects: &WriteEffects) -> (Vec<SimOperation>, Resolved) {
    let mut resolved = Resolved::default();
    let mut out = Vec::with_capacity(operations.len());
    for mut operation in operations {
        if operation.returned.is_some() {
            out.push(operation);
            continue;
        }
        let (value, output) = match operation.input {
            NodeKvInput::Put { value, .. } => (value, NodeKvOutput::Done),
            NodeKvInput::Cas { new, .. } => (new, NodeKvOutput::Cas { swapped: true }),
            NodeKvInput::Get { .. } => {
                resolved.dropped += 1;
                continue;
            }
            NodeKvInput::Delete { .. } => {
                resolved.left += 1;
                out.push(operation);
                continue;
            }
        };
        match effects.first_stored.get(&value) {
            Some(&stored) => {
                assert!(stored >= operation.call, "value {value} stored at {stored}, before its write was sent");
                resolved.placed += 1;
                operation.returned = Some(Returned { time: stored, output });
                out.push(operation);
            }
            None => resolved.dropped += 1,
        }
    }
    (out, resolved)
}
