//! The search: Wing & Gong's algorithm with Lowe's memoization, as in
//! Porcupine.
//!
//! Each operation becomes two entries, its call and its return, in one list
//! sorted by time. Walking the list from the head, every call met before the
//! first return is an operation that may take effect next. The search tries
//! them in order: if the model accepts one, the operation is *lifted* (its call
//! and return are unlinked, in O(1), like dancing links) and the walk restarts
//! from the head. Meeting a return entry means that operation had to take
//! effect by now and nothing could: the search backtracks, *unlifting* the
//! last operation and trying the next candidate after it. The list empties
//! exactly when a full linearization is found.
//!
//! Lowe's memoization makes this practical: the outcome of the rest of the
//! search depends only on which operations are linearized and on the model's
//! state, so each (set, state) pair is explored once. Together with splitting
//! a history into independent partitions (per key) this checks the Jepsen and
//! Porcupine test histories in well under a second each.

use std::collections::HashMap;
use std::fmt::{self, Debug, Write as _};
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

use super::history::Operation;

/// A sequential specification: what a single copy of the service would do.
///
/// The checker asks whether the concurrent history could have come from this
/// model, with each operation taking effect atomically at some moment between
/// its call and its return.
pub trait Model {
    /// The model's state. The checker memoizes on it, so it should be small
    /// and cheap to hash: with [`Model::partition`] it only needs to describe
    /// one partition (one key's value, not the whole map).
    type State: Clone + Eq + Hash + Debug;
    /// What a client asks.
    type Input: Debug;
    /// What a client is told.
    type Output: Debug;

    /// The state before any operation.
    fn init(&self) -> Self::State;

    /// Applies `input` to `state` if the service could have answered
    /// `output`; returns the new state, or `None` if that answer is
    /// impossible in `state`.
    ///
    /// `output` is `None` when the client never learned the outcome. The
    /// operation is then only being placed at a moment where it takes effect,
    /// so the model must accept it and return the state it leaves. (An
    /// operation that never took effect is the same as one linearized after
    /// everything else, so that case needs no separate treatment.)
    fn step(&self, state: &Self::State, input: &Self::Input, output: Option<&Self::Output>) -> Option<Self::State>;

    /// Splits a history into independent sub-histories, as lists of indices
    /// into `history`. A history is linearizable exactly when every part is,
    /// and checking parts separately is exponentially cheaper. Operations on
    /// different keys of a key-value store are independent (linearizability
    /// is compositional, Herlihy & Wing 1990). The default keeps one part.
    fn partition(&self, history: &[Operation<Self::Input, Self::Output>]) -> Vec<Vec<usize>> {
        vec![(0..history.len()).collect()]
    }

    /// One operation, for the description of a violation.
    fn describe_operation(&self, input: &Self::Input, output: Option<&Self::Output>) -> String {
        match output {
            Some(output) => format!("{input:?} -> {output:?}"),
            None => format!("{input:?} -> unknown outcome"),
        }
    }

    /// One state, for the description of a violation.
    fn describe_state(&self, state: &Self::State) -> String {
        format!("{state:?}")
    }
}

/// Bounds on one check, so that a pathological history gives
/// [`Verdict::Unknown`] instead of a test that never ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckOptions {
    /// Wall-clock time for the whole check; `None` for no limit.
    pub time_budget: Option<Duration>,
    /// Search steps (one candidate tried or one backtrack) for the whole
    /// check; `None` for no limit. Unlike time, steps make an `Unknown`
    /// reproducible.
    pub steps_max: Option<u64>,
}

impl Default for CheckOptions {
    /// Thirty seconds and no step limit: histories from tests should take
    /// milliseconds, so hitting this means something is wrong.
    fn default() -> Self {
        Self { time_budget: Some(Duration::from_secs(30)), steps_max: None }
    }
}

/// The answer of a check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Some order of the operations, consistent with real time, is a legal
    /// sequential execution of the model.
    Linearizable,
    /// No such order exists.
    NotLinearizable(Box<Violation>),
    /// The budget ran out before the search finished.
    Unknown {
        /// Which budget, and how far the search got.
        reason: String,
    },
}

impl Verdict {
    /// Whether the history was proven linearizable.
    pub fn is_linearizable(&self) -> bool {
        matches!(self, Verdict::Linearizable)
    }

    /// Whether the history was proven not linearizable.
    pub fn is_violation(&self) -> bool {
        matches!(self, Verdict::NotLinearizable(_))
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Linearizable => f.write_str("linearizable"),
            Verdict::NotLinearizable(violation) => write!(f, "not linearizable: {}", violation.description),
            Verdict::Unknown { reason } => write!(f, "unknown: {reason}"),
        }
    }
}

/// Where the search got stuck in a partition that is not linearizable.
///
/// All indices refer to the history passed to [`check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The operations of the partition that cannot be linearized.
    pub partition: Vec<usize>,
    /// The longest linearizable prefix the search found, in linearization
    /// order.
    pub longest_prefix: Vec<usize>,
    /// The operation that had to take effect next: the search reached its
    /// return with no candidate able to go first.
    pub stuck: usize,
    /// The operations that could have come next after the prefix (called
    /// before `stuck` returned, not in the prefix; `stuck` is one of them).
    /// None of them is legal in the state the prefix leaves.
    pub candidates: Vec<usize>,
    /// All of the above in words, with the model's state.
    pub description: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.description)
    }
}

/// Checks whether `history` is linearizable with respect to `model`.
///
/// Each partition of the model is searched separately; the first one that is
/// not linearizable decides the verdict. If a budget runs out, the remaining
/// partitions are still looked at only while budget remains, and the verdict
/// is `Unknown` unless some partition is proven not linearizable.
pub fn check<M: Model>(model: &M, history: &[Operation<M::Input, M::Output>], options: &CheckOptions) -> Verdict {
    for (index, operation) in history.iter().enumerate() {
        if let Some(return_time) = operation.return_time() {
            assert!(operation.call <= return_time, "operation {index} returns before it is called");
        }
    }
    let mut budget = Budget::new(options);
    let partitions = model.partition(history);
    let mut searches: Vec<Search<'_, M>> =
        partitions.iter().map(|partition| Search::new(model, history, partition)).collect();
    // Round-robin with doubling slices, the deterministic version of
    // Porcupine's one goroutine per partition: a partition that fails fast is
    // found even when another partition's search is long.
    let mut slice_steps = SLICE_STEPS_FIRST;
    while !searches.is_empty() {
        let mut index = 0;
        while index < searches.len() {
            match searches[index].run(slice_steps, &mut budget) {
                Progress::Linearizable => {
                    searches.remove(index);
                }
                Progress::Stuck(violation) => return Verdict::NotLinearizable(violation),
                Progress::Paused if budget.exhausted => {
                    let largest = searches.iter().max_by_key(|search| search.partition.len()).expect("not empty");
                    return Verdict::Unknown {
                        reason: format!(
                            "{} exhausted with {} of {} partitions unfinished; the largest has {} operations, \
                             of which the longest linearizable prefix found has {}",
                            budget.describe(),
                            searches.len(),
                            partitions.len(),
                            largest.partition.len(),
                            largest.depth_max(),
                        ),
                    };
                }
                Progress::Paused => index += 1,
            }
        }
        slice_steps = slice_steps.saturating_mul(2);
    }
    Verdict::Linearizable
}

/// The steps each partition gets in the first round; each round doubles it.
const SLICE_STEPS_FIRST: u64 = 1 << 12;

/// Groups operations by a key of their input, in order of first appearance:
/// the usual [`Model::partition`] for key-value models.
pub fn partition_by_key<I, O, K: Hash + Eq>(history: &[Operation<I, O>], key: impl Fn(&I) -> &K) -> Vec<Vec<usize>> {
    let mut part_of_key: HashMap<&K, usize> = HashMap::new();
    let mut parts: Vec<Vec<usize>> = Vec::new();
    for (index, operation) in history.iter().enumerate() {
        let part = *part_of_key.entry(key(&operation.input)).or_insert_with(|| {
            parts.push(Vec::new());
            parts.len() - 1
        });
        parts[part].push(index);
    }
    parts
}

/// The shared step and time allowance of one [`check`].
struct Budget {
    deadline: Option<Instant>,
    time_budget: Option<Duration>,
    steps_max: Option<u64>,
    /// Invariant: `steps <= steps_max` while the budget is not exhausted.
    steps: u64,
    exhausted: bool,
}

impl Budget {
    /// Reading the clock costs about as much as a search step, so it is read
    /// once per this many steps.
    const CLOCK_INTERVAL_STEPS: u64 = 1024;

    fn new(options: &CheckOptions) -> Self {
        Self {
            deadline: options.time_budget.map(|budget| Instant::now() + budget),
            time_budget: options.time_budget,
            steps_max: options.steps_max,
            steps: 0,
            exhausted: false,
        }
    }

    /// Counts one step; false once the budget is spent.
    fn step(&mut self) -> bool {
        if self.exhausted {
            return false;
        }
        self.steps += 1;
        if self.steps_max.is_some_and(|steps_max| self.steps > steps_max) {
            self.exhausted = true;
        } else if self.steps % Self::CLOCK_INTERVAL_STEPS == 0 {
            self.exhausted = self.deadline.is_some_and(|deadline| Instant::now() >= deadline);
        }
        !self.exhausted
    }

    fn describe(&self) -> String {
        match (self.steps_max, self.time_budget) {
            (Some(steps_max), _) if self.steps > steps_max => format!("step budget of {steps_max}"),
            (_, Some(time_budget)) => format!("time budget of {time_budget:?} (after {} steps)", self.steps),
            _ => "budget".to_string(),
        }
    }
}

/// Where a partition's search stands after a slice of steps.
enum Progress {
    Linearizable,
    Stuck(Box<Violation>),
    /// The slice or the budget ran out.
    Paused,
}

/// Marks the end of the entry list.
const NIL: usize = usize::MAX;
/// The list's sentinel head: entry 0.
const HEAD: usize = 0;

/// A call or return entry in the doubly linked list the search walks.
struct Entry {
    /// The operation's position in the partition.
    operation: usize,
    /// For a call entry, the index of its return entry; `NIL` for a return.
    return_entry: usize,
    prev: usize,
    next: usize,
}

/// The entry list of one partition, sorted by time.
struct EntryList {
    /// Invariant: `entries[HEAD]` is the sentinel; every call entry comes
    /// before its return entry in the linked order.
    entries: Vec<Entry>,
}

impl EntryList {
    fn new<I, O>(history: &[Operation<I, O>], partition: &[usize]) -> Self {
        // Sort key: (never returns, time, return after call). Calls sort
        // before returns at equal times, so touching operations overlap.
        let mut events: Vec<((bool, u64, bool), usize)> = Vec::with_capacity(partition.len() * 2);
        for (position, &index) in partition.iter().enumerate() {
            let operation = &history[index];
            events.push(((false, operation.call, false), position));
            let return_key = match operation.return_time() {
                Some(time) => (false, time, true),
                None => (true, 0, true),
            };
            events.push((return_key, position));
        }
        events.sort_by_key(|&(key, _)| key);

        let mut entries = Vec::with_capacity(events.len() + 1);
        entries.push(Entry { operation: NIL, return_entry: NIL, prev: NIL, next: NIL });
        let mut call_entry_of = vec![NIL; partition.len()];
        for (key, position) in events {
            let index = entries.len();
            let is_return = key.2;
            if is_return {
                let call = call_entry_of[position];
                assert!(call != NIL, "a return entry sorted before its call");
                entries[call].return_entry = index;
            } else {
                call_entry_of[position] = index;
            }
            entries.push(Entry { operation: position, return_entry: NIL, prev: index - 1, next: NIL });
            entries[index - 1].next = index;
        }
        Self { entries }
    }

    fn first(&self) -> usize {
        self.entries[HEAD].next
    }

    fn is_call(&self, entry: usize) -> bool {
        self.entries[entry].return_entry != NIL
    }

    /// Unlinks a call entry and its return entry.
    fn lift(&mut self, call: usize) {
        let ret = self.entries[call].return_entry;
        self.unlink(call);
        self.unlink(ret);
    }

    /// Relinks what `lift` unlinked; must be undone in reverse order of lifts.
    fn unlift(&mut self, call: usize) {
        let ret = self.entries[call].return_entry;
        self.relink(ret);
        self.relink(call);
    }

    fn unlink(&mut self, entry: usize) {
        let Entry { prev, next, .. } = self.entries[entry];
        self.entries[prev].next = next;
        if next != NIL {
            self.entries[next].prev = prev;
        }
    }

    fn relink(&mut self, entry: usize) {
        let Entry { prev, next, .. } = self.entries[entry];
        self.entries[prev].next = entry;
        if next != NIL {
            self.entries[next].prev = entry;
        }
    }
}

/// The set of linearized operations of one partition.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Bitset(Box<[u64]>);

impl Bitset {
    fn new(size: usize) -> Self {
        Self(vec![0; size.div_ceil(64)].into_boxed_slice())
    }

    fn set(&mut self, bit: usize) {
        self.0[bit / 64] |= 1 << (bit % 64);
    }

    fn clear(&mut self, bit: usize) {
        self.0[bit / 64] &= !(1 << (bit % 64));
    }

    fn count(&self) -> usize {
        self.0.iter().map(|word| word.count_ones() as usize).sum()
    }
}

/// Lowe's memo: the (linearized set, state) pairs already explored, in
/// buckets by hash so a lookup allocates nothing.
struct Memo<S> {
    buckets: HashMap<u64, Vec<(Bitset, S)>>,
}

impl<S: Clone + Eq + Hash> Memo<S> {
    /// Records the pair; false if it was already there.
    fn insert(&mut self, linearized: &Bitset, state: &S) -> bool {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        linearized.hash(&mut hasher);
        state.hash(&mut hasher);
        let bucket = self.buckets.entry(hasher.finish()).or_default();
        if bucket.iter().any(|(seen_linearized, seen_state)| seen_linearized == linearized && seen_state == state) {
            return false;
        }
        bucket.push((linearized.clone(), state.clone()));
        true
    }
}

/// Where the search went deepest, kept to describe a violation.
struct Deepest {
    prefix: Vec<usize>,
    stuck: usize,
    candidates: Vec<usize>,
    state: String,
}

/// The search of one partition, resumable so that [`check`] can interleave
/// partitions.
struct Search<'a, M: Model> {
    model: &'a M,
    history: &'a [Operation<M::Input, M::Output>],
    partition: &'a [usize],
    list: EntryList,
    memo: Memo<M::State>,
    /// Invariant: holds exactly the operations of the call entries on `stack`.
    linearized: Bitset,
    state: M::State,
    /// The lifted call entries, each with the state before it took effect.
    stack: Vec<(usize, M::State)>,
    deepest: Option<Deepest>,
    /// The entry the walk looks at next.
    entry: usize,
}

impl<'a, M: Model> Search<'a, M> {
    fn new(model: &'a M, history: &'a [Operation<M::Input, M::Output>], partition: &'a [usize]) -> Self {
        let list = EntryList::new(history, partition);
        let entry = list.first();
        Self {
            model,
            history,
            partition,
            list,
            memo: Memo { buckets: HashMap::new() },
            linearized: Bitset::new(partition.len()),
            state: model.init(),
            stack: Vec::new(),
            deepest: None,
            entry,
        }
    }

    /// The longest linearizable prefix found so far.
    fn depth_max(&self) -> usize {
        self.deepest.as_ref().map_or(0, |deepest| deepest.prefix.len()).max(self.stack.len())
    }

    /// Searches for at most `slice_steps` steps drawn from `budget`.
    fn run(&mut self, slice_steps: u64, budget: &mut Budget) -> Progress {
        for _ in 0..slice_steps {
            if self.list.first() == NIL {
                assert_eq!(self.stack.len(), self.partition.len(), "an empty list means all are linearized");
                return Progress::Linearizable;
            }
            if !budget.step() {
                return Progress::Paused;
            }
            if let Some(violation) = self.step() {
                return Progress::Stuck(Box::new(violation));
            }
        }
        Progress::Paused
    }

    /// Tries one candidate or backtracks once; a violation once there is
    /// nothing left to backtrack.
    fn step(&mut self) -> Option<Violation> {
        let entry = self.entry;
        assert!(entry != NIL, "the walk ran off the list: a return entry must end it");
        if self.list.is_call(entry) {
            let position = self.list.entries[entry].operation;
            let operation = &self.history[self.partition[position]];
            if let Some(next_state) = self.model.step(&self.state, &operation.input, operation.output()) {
                self.linearized.set(position);
                if self.memo.insert(&self.linearized, &next_state) {
                    self.stack.push((entry, std::mem::replace(&mut self.state, next_state)));
                    self.list.lift(entry);
                    self.entry = self.list.first();
                    return None;
                }
                self.linearized.clear(position);
            }
            self.entry = self.list.entries[entry].next;
            return None;
        }
        // This operation had to take effect by its return, and no candidate
        // could go first: record how far we got, then undo the last choice
        // and try the candidate after it.
        if self.deepest.as_ref().is_none_or(|deepest| self.stack.len() > deepest.prefix.len()) {
            self.deepest =
                Some(describe_position(self.model, self.partition, &self.list, &self.stack, entry, &self.state));
        }
        let Some((call, previous_state)) = self.stack.pop() else {
            let deepest = self.deepest.take().expect("recorded just above");
            return Some(violation(self.model, self.history, self.partition, deepest));
        };
        self.state = previous_state;
        self.linearized.clear(self.list.entries[call].operation);
        self.list.unlift(call);
        self.entry = self.list.entries[call].next;
        debug_assert_eq!(self.linearized.count(), self.stack.len());
        None
    }
}

fn describe_position<M: Model>(
    model: &M,
    partition: &[usize],
    list: &EntryList,
    stack: &[(usize, M::State)],
    stuck_return: usize,
    state: &M::State,
) -> Deepest {
    let prefix = stack.iter().map(|&(call, _)| partition[list.entries[call].operation]).collect();
    let mut candidates = Vec::new();
    let mut entry = list.first();
    while entry != stuck_return {
        if list.is_call(entry) {
            candidates.push(partition[list.entries[entry].operation]);
        }
        entry = list.entries[entry].next;
    }
    Deepest {
        prefix,
        stuck: partition[list.entries[stuck_return].operation],
        candidates,
        state: model.describe_state(state),
    }
}

/// How many operations of the prefix and of the candidates a description
/// lists; the `Violation` fields hold them all.
const DESCRIBED_OPERATIONS_MAX: usize = 8;

fn violation<M: Model>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
    partition: &[usize],
    deepest: Deepest,
) -> Violation {
    let describe = |index: usize| {
        let operation = &history[index];
        let returned = operation.return_time().map_or_else(|| "never".to_string(), |time| time.to_string());
        format!(
            "#{index} (client {}, called {}, returned {}): {}",
            operation.client_id,
            operation.call,
            returned,
            model.describe_operation(&operation.input, operation.output())
        )
    };
    let mut description = format!(
        "no linearization of {} operations; the longest linearizable prefix has {} operations and leaves state {}; \
         then operation {} must take effect before it returns, but none of the {} operations that could go next is \
         legal in that state.",
        partition.len(),
        deepest.prefix.len(),
        deepest.state,
        describe(deepest.stuck),
        deepest.candidates.len(),
    );
    let prefix_shown = deepest.prefix.len().min(DESCRIBED_OPERATIONS_MAX);
    let _ = write!(description, "\n  end of the prefix ({prefix_shown} of {}):", deepest.prefix.len());
    for &index in &deepest.prefix[deepest.prefix.len() - prefix_shown..] {
        let _ = write!(description, "\n    {}", describe(index));
    }
    let candidates_shown = deepest.candidates.len().min(DESCRIBED_OPERATIONS_MAX);
    let _ = write!(description, "\n  candidates ({candidates_shown} of {}):", deepest.candidates.len());
    for &index in &deepest.candidates[..candidates_shown] {
        let _ = write!(description, "\n    {}", describe(index));
    }
    Violation {
        partition: partition.to_vec(),
        longest_prefix: deepest.prefix,
        stuck: deepest.stuck,
        candidates: deepest.candidates,
        description,
    }
}
