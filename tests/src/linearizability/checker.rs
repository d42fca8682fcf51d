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
    /// Memoized (linearized set, state) pairs for the whole check; `None`
    /// for no limit. The memo is the checker's memory: this bounds it.
    pub memo_entries_max: Option<usize>,
}

impl Default for CheckOptions {
    /// Thirty seconds, no step limit, and ten million memo entries (about a
    /// gigabyte for a few hundred operations per partition): histories from
    /// tests take milliseconds, so hitting a bound means something is wrong.
    fn default() -> Self {
        Self { time_budget: Some(Duration::from_secs(30)), steps_max: None, memo_entries_max: Some(10_000_000) }
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
/// The partitions of the model are searched in turns, with step slices that
/// double each round, so the first partition proven not linearizable decides
/// the verdict even when another one's search is long. When a bound of
/// `options` runs out first, the verdict is `Unknown`.
///
/// Panics on a history no client could have produced (an operation returning
/// before its call) and on a partition that loses or repeats an operation:
/// both are bugs of the caller, and a verdict about them would mislead.
pub fn check<M: Model>(model: &M, history: &[Operation<M::Input, M::Output>], options: &CheckOptions) -> Verdict {
    for (index, operation) in history.iter().enumerate() {
        if let Some(return_time) = operation.return_time() {
            assert!(operation.call <= return_time, "operation {index} returns before it is called");
        }
    }
    let mut budget = Budget::new(options);
    let partitions = model.partition(history);
    let mut partition_of = vec![None; history.len()];
    for (number, partition) in partitions.iter().enumerate() {
        for &index in partition {
            assert!(index < history.len(), "partition {number} names operation {index}, past the history's end");
            let previous = partition_of[index].replace(number);
            assert!(previous.is_none(), "operation {index} is in partitions {previous:?} and {number}");
        }
    }
    let lost = partition_of.iter().position(Option::is_none);
    assert!(lost.is_none(), "operation {lost:?} is in no partition");
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
                Progress::Paused if budget.exhausted.is_some() => {
                    let largest = searches.iter().max_by_key(|search| search.partition.len()).expect("not empty");
                    return Verdict::Unknown {
                        reason: format!(
                            "{}, with {} of {} partitions unfinished; the largest has {} operations, \
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

const _: () = assert!(Budget::CLOCK_INTERVAL_STEPS.is_power_of_two());

/// The shared allowance of one [`check`]: time, steps and memo size.
struct Budget {
    deadline: Option<Instant>,
    options: CheckOptions,
    /// Invariant: `steps <= steps_max` unless `exhausted` says so.
    steps: u64,
    /// Entries in the memos of all partitions. Invariant: `memo_entries <=
    /// memo_entries_max` unless `exhausted` says so.
    memo_entries: usize,
    exhausted: Option<Exhausted>,
}

/// Which bound of [`CheckOptions`] ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exhausted {
    Time,
    Steps,
    Memo,
}

impl Budget {
    /// Reading the clock costs about as much as a search step, so it is read
    /// once per this many steps. A power of two, so the test is a mask.
    const CLOCK_INTERVAL_STEPS: u64 = 1024;

    fn new(options: &CheckOptions) -> Self {
        Self {
            deadline: options.time_budget.map(|budget| Instant::now() + budget),
            options: *options,
            steps: 0,
            memo_entries: 0,
            exhausted: None,
        }
    }

    /// Counts one step; false once any bound is spent.
    fn step(&mut self) -> bool {
        if self.exhausted.is_some() {
            return false;
        }
        self.steps += 1;
        if self.options.steps_max.is_some_and(|steps_max| self.steps > steps_max) {
            self.exhausted = Some(Exhausted::Steps);
        } else if self.steps & (Self::CLOCK_INTERVAL_STEPS - 1) == 0
            && self.deadline.is_some_and(|deadline| Instant::now() >= deadline)
        {
            self.exhausted = Some(Exhausted::Time);
        }
        self.exhausted.is_none()
    }

    /// Counts one memo entry; the next step fails once there are too many.
    fn memo_entry(&mut self) {
        self.memo_entries += 1;
        if self.options.memo_entries_max.is_some_and(|memo_entries_max| self.memo_entries > memo_entries_max) {
            self.exhausted.get_or_insert(Exhausted::Memo);
        }
    }

    fn describe(&self) -> String {
        let CheckOptions { time_budget, steps_max, memo_entries_max } = self.options;
        let bound = match self.exhausted {
            Some(Exhausted::Time) => format!("time budget of {:?}", time_budget.unwrap_or_default()),
            Some(Exhausted::Steps) => format!("step budget of {}", steps_max.unwrap_or_default()),
            Some(Exhausted::Memo) => format!("memo bound of {} entries", memo_entries_max.unwrap_or_default()),
            None => "no bound".to_string(),
        };
        format!("{bound} exhausted after {} steps and {} memo entries", self.steps, self.memo_entries)
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
///
/// Besides the bits it keeps where its full words end and where its last
/// set bit lies, so that the memo can key on the part between
/// ([`Bitset::window`]): a search linearizes roughly in call order, so that
/// part is a few words however long the history. Keying on the whole set
/// made each step cost the history's length (a copy and a hash of it), and a
/// long chaos run's check (120,000 operations on one key) ran out of time.
struct Bitset {
    words: Box<[u64]>,
    bits: usize,
    /// Invariant: the words before it are full, and it is `words.len()` or
    /// the first word that is not.
    full_below: usize,
    /// Invariant: the words from it on are zero, and it is 0 or one past the
    /// last word that is not.
    top: usize,
}

impl Bitset {
    fn new(size: usize) -> Self {
        Self { words: vec![0; size.div_ceil(64)].into_boxed_slice(), bits: size, full_below: 0, top: 0 }
    }

    /// The word `word` holds when all its bits are set.
    fn full(&self, word: usize) -> u64 {
        let used = (self.bits - word * 64).min(64);
        if used == 64 {
            u64::MAX
        } else {
            (1 << used) - 1
        }
    }

    fn set(&mut self, bit: usize) {
        let word = bit / 64;
        self.words[word] |= 1 << (bit % 64);
        self.top = self.top.max(word + 1);
        while self.full_below < self.words.len() && self.words[self.full_below] == self.full(self.full_below) {
            self.full_below += 1;
        }
    }

    fn clear(&mut self, bit: usize) {
        let word = bit / 64;
        self.words[word] &= !(1 << (bit % 64));
        self.full_below = self.full_below.min(word);
        while self.top > 0 && self.words[self.top - 1] == 0 {
            self.top -= 1;
        }
    }

    fn count(&self) -> usize {
        self.words.iter().map(|word| word.count_ones() as usize).sum()
    }

    /// Where the full words end, and the words from there to the last set
    /// bit: equal for two sets exactly when the sets are equal.
    fn window(&self) -> (usize, &[u64]) {
        (self.full_below, &self.words[self.full_below..self.top.max(self.full_below)])
    }
}

/// Lowe's memo: the (linearized set, state) pairs already explored, in
/// buckets by hash so a lookup allocates nothing; each set kept as its
/// [`Bitset::window`].
struct Memo<S> {
    buckets: HashMap<u64, Vec<Seen<S>>>,
}

/// A memo entry: a set as its [`Bitset::window`], and a state.
type Seen<S> = (usize, Box<[u64]>, S);

impl<S: Clone + Eq + Hash> Memo<S> {
    /// Records the pair; false if it was already there.
    fn insert(&mut self, linearized: &Bitset, state: &S) -> bool {
        let (full_below, window) = linearized.window();
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        full_below.hash(&mut hasher);
        window.hash(&mut hasher);
        state.hash(&mut hasher);
        let bucket = self.buckets.entry(hasher.finish()).or_default();
        let seen = |(seen_full, seen_window, seen_state): &Seen<S>| {
            *seen_full == full_below && seen_window[..] == *window && seen_state == state
        };
        if bucket.iter().any(seen) {
            return false;
        }
        bucket.push((full_below, window.into(), state.clone()));
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
    /// How many entries of `stack` and of the deepest prefix recorded are
    /// the same: a new deepest prefix copies only the rest (copying the
    /// whole stack each time cost the history's length per backtrack).
    agree: usize,
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
            agree: 0,
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
            if let Some(violation) = self.step(budget) {
                return Progress::Stuck(Box::new(violation));
            }
        }
        Progress::Paused
    }

    /// Tries one candidate or backtracks once; a violation once there is
    /// nothing left to backtrack.
    fn step(&mut self, budget: &mut Budget) -> Option<Violation> {
        let entry = self.entry;
        assert!(entry != NIL, "the walk ran off the list: a return entry must end it");
        if self.list.is_call(entry) {
            let position = self.list.entries[entry].operation;
            let operation = &self.history[self.partition[position]];
            if let Some(next_state) = self.model.step(&self.state, &operation.input, operation.output()) {
                self.linearized.set(position);
                if self.memo.insert(&self.linearized, &next_state) {
                    budget.memo_entry();
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
            let mut prefix = self.deepest.take().map(|deepest| deepest.prefix).unwrap_or_default();
            prefix.truncate(self.agree);
            prefix.extend(
                self.stack[self.agree..].iter().map(|&(call, _)| self.partition[self.list.entries[call].operation]),
            );
            self.agree = self.stack.len();
            self.deepest = Some(describe_position(self.model, self.partition, &self.list, prefix, entry, &self.state));
        }
        let Some((call, previous_state)) = self.stack.pop() else {
            let deepest = self.deepest.take().expect("recorded just above");
            return Some(violation(self.model, self.history, self.partition, deepest));
        };
        self.agree = self.agree.min(self.stack.len());
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
    prefix: Vec<usize>,
    stuck_return: usize,
    state: &M::State,
) -> Deepest {
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
         then operation {} must take effect before it returns, but none of the {} candidates to go next is legal \
         there.",
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linearizability::models::{
        NodeKvInput, NodeKvModel, NodeKvOutput, RegisterInput, RegisterModel, RegisterOutput,
    };

    type RegisterOperation = Operation<RegisterInput, RegisterOutput>;

    fn write(client_id: u64, value: i64, call: u64, ret: u64) -> RegisterOperation {
        Operation::completed(client_id, RegisterInput::Write(value), call, RegisterOutput::Written, ret)
    }

    fn read(client_id: u64, value: Option<i64>, call: u64, ret: u64) -> RegisterOperation {
        Operation::completed(client_id, RegisterInput::Read, call, RegisterOutput::Read(value), ret)
    }

    fn cas(client_id: u64, expected: i64, new: i64, swapped: bool, call: u64, ret: u64) -> RegisterOperation {
        let input = RegisterInput::Cas { expected, new };
        Operation::completed(client_id, input, call, RegisterOutput::Cas { swapped }, ret)
    }

    fn check_register(history: &[RegisterOperation]) -> Verdict {
        check(&RegisterModel, history, &CheckOptions::default())
    }

    fn violation_of(verdict: Verdict) -> Violation {
        match verdict {
            Verdict::NotLinearizable(violation) => *violation,
            other => panic!("expected a violation, got {other}"),
        }
    }

    #[test]
    fn an_empty_history_is_linearizable() {
        assert_eq!(check_register(&[]), Verdict::Linearizable);
    }

    #[test]
    fn sequential_history_that_follows_the_model_is_linearizable() {
        let history = [read(0, None, 0, 1), write(0, 1, 2, 3), read(1, Some(1), 4, 5), cas(0, 1, 2, true, 6, 7)];
        assert_eq!(check_register(&history), Verdict::Linearizable);
    }

    #[test]
    fn a_stale_read_after_a_completed_write_is_caught() {
        // The write of 2 returned before the read was called, so the read
        // must see 2 (or something later), never the old 1.
        let history = [write(0, 1, 0, 1), write(0, 2, 2, 3), read(1, Some(1), 4, 5)];
        let violation = violation_of(check_register(&history));
        assert_eq!(violation.stuck, 2, "the stale read is the operation that cannot take effect");
        assert_eq!(violation.longest_prefix, vec![0, 1]);
        assert_eq!(violation.candidates, vec![2]);
        assert!(violation.description.contains("leaves state 2"), "{}", violation.description);
        assert!(violation.description.contains("#2 (client 1, called 4, returned 5)"), "{}", violation.description);
    }

    #[test]
    fn reads_overlapping_a_write_may_see_either_value() {
        // The write spans both reads: it may take effect between them.
        let history = [write(0, 1, 0, 10), read(1, None, 1, 2), read(2, Some(1), 3, 4)];
        assert_eq!(check_register(&history), Verdict::Linearizable);
        // Reads overlapping each other and the write, in either order.
        let history = [write(0, 1, 0, 10), read(1, Some(1), 1, 8), read(2, None, 2, 9)];
        assert_eq!(check_register(&history), Verdict::Linearizable);
    }

    #[test]
    fn a_new_value_then_an_old_one_is_caught_even_under_an_overlapping_write() {
        // Once a read has seen the new value, a later read may not see the
        // old one, though both overlap the write.
        let history = [write(0, 1, 0, 10), read(1, Some(1), 1, 2), read(2, None, 3, 4)];
        let violation = violation_of(check_register(&history));
        assert_eq!(violation.stuck, 2);
    }

    #[test]
    fn operations_touching_at_the_same_instant_count_as_overlapping() {
        let history = [read(0, Some(1), 0, 5), write(1, 1, 5, 6)];
        assert_eq!(check_register(&history), Verdict::Linearizable);
        let history = [read(0, Some(1), 0, 4), write(1, 1, 5, 6)];
        assert!(check_register(&history).is_violation());
    }

    #[test]
    fn an_unknown_outcome_write_may_take_effect_late_or_never() {
        let unknown_write = Operation::unknown(0, RegisterInput::Write(1), 0);
        // Never: later reads see nothing.
        let history = [unknown_write.clone(), read(1, None, 5, 6), read(1, None, 7, 8)];
        assert_eq!(check_register(&history), Verdict::Linearizable);
        // Late: long after its client gave up.
        let history = [unknown_write.clone(), read(1, None, 5, 6), read(1, Some(1), 100, 101)];
        assert_eq!(check_register(&history), Verdict::Linearizable);
        // But only once: the value cannot come back after being overwritten.
        let history = [unknown_write, read(1, Some(1), 5, 6), write(1, 2, 7, 8), read(1, Some(1), 9, 10)];
        assert!(check_register(&history).is_violation());
    }

    #[test]
    fn an_unknown_outcome_write_cannot_take_effect_before_its_call() {
        let history = [read(0, Some(1), 0, 1), Operation::unknown(1, RegisterInput::Write(1), 2)];
        let violation = violation_of(check_register(&history));
        assert_eq!(violation.stuck, 0);
        assert!(violation.description.contains("returned never") || violation.description.contains("#0"));
    }

    #[test]
    fn an_unknown_outcome_cas_applies_only_if_the_value_matches() {
        let history = [
            write(0, 1, 0, 1),
            Operation::unknown(1, RegisterInput::Cas { expected: 7, new: 2 }, 2),
            read(0, Some(2), 3, 4),
        ];
        assert!(check_register(&history).is_violation());
        let history = [
            write(0, 1, 0, 1),
            Operation::unknown(1, RegisterInput::Cas { expected: 1, new: 2 }, 2),
            read(0, Some(1), 3, 4),
            read(0, Some(2), 5, 6),
        ];
        assert_eq!(check_register(&history), Verdict::Linearizable);
    }

    #[test]
    fn a_failed_cas_is_an_observation() {
        // The register held 1, so a CAS expecting 1 cannot have failed.
        let history = [write(0, 1, 0, 1), cas(1, 1, 2, false, 2, 3)];
        assert!(check_register(&history).is_violation());
        let history = [write(0, 1, 0, 1), cas(1, 3, 2, false, 2, 3), read(0, Some(1), 4, 5)];
        assert_eq!(check_register(&history), Verdict::Linearizable);
    }

    #[test]
    fn many_concurrent_writes_are_checked_quickly_thanks_to_the_memo() {
        // Twelve overlapping writes then a read of one of them: 12! orders,
        // but few (set, state) pairs.
        let mut history: Vec<RegisterOperation> = (0..12).map(|value| write(value as u64, value, 0, 100)).collect();
        history.push(read(99, Some(5), 101, 102));
        let options = CheckOptions { steps_max: Some(1_000_000), ..CheckOptions::default() };
        assert_eq!(check(&RegisterModel, &history, &options), Verdict::Linearizable);
    }

    #[test]
    fn an_exhausted_step_budget_gives_unknown() {
        let history = [write(0, 1, 0, 10), write(1, 2, 1, 11), read(2, Some(1), 13, 14), read(2, Some(2), 15, 16)];
        let verdict = check(&RegisterModel, &history, &CheckOptions { steps_max: Some(3), ..CheckOptions::default() });
        match verdict {
            Verdict::Unknown { reason } => assert!(reason.contains("step budget of 3 exhausted"), "{reason}"),
            other => panic!("expected unknown, got {other}"),
        }
        assert!(check_register(&history).is_violation(), "with enough budget it is decided");

        let verdict =
            check(&RegisterModel, &history, &CheckOptions { memo_entries_max: Some(2), ..CheckOptions::default() });
        match verdict {
            Verdict::Unknown { reason } => assert!(reason.contains("memo bound of 2 entries exhausted"), "{reason}"),
            other => panic!("expected unknown, got {other}"),
        }
    }

    #[test]
    fn partitions_are_checked_independently_and_the_failing_one_is_named() {
        type Input = NodeKvInput<&'static str, u32>;
        let put = |client_id, key, value, call, ret| {
            Operation::completed(client_id, Input::Put { key, value }, call, NodeKvOutput::Done, ret)
        };
        let get = |client_id, key, value, call, ret| {
            Operation::completed(client_id, Input::Get { key }, call, NodeKvOutput::Value(value), ret)
        };
        let history = [
            put(0, "a", 1, 0, 1),
            put(1, "b", 1, 2, 3),
            get(2, "a", Some(1), 4, 5),
            get(2, "b", None, 6, 7),
            get(0, "a", Some(1), 8, 9),
        ];
        // Without partitioning a register of key "b" alone would start at
        // `None` too; the point is which operations the violation names.
        let violation = violation_of(check(&NodeKvModel::new(), &history, &CheckOptions::default()));
        assert_eq!(violation.partition, vec![1, 3]);
        assert_eq!(violation.stuck, 3);
        let fixed = [history[0].clone(), history[1].clone(), history[2].clone(), get(2, "b", Some(1), 6, 7)];
        assert_eq!(check(&NodeKvModel::new(), &fixed, &CheckOptions::default()), Verdict::Linearizable);
    }

    #[test]
    fn partition_by_key_keeps_first_appearance_order() {
        let history: Vec<Operation<(char, u8), ()>> =
            [('b', 0), ('a', 1), ('b', 2), ('c', 3)].map(|input| Operation::unknown(0, input, 0)).to_vec();
        assert_eq!(partition_by_key(&history, |(key, _)| key), vec![vec![0, 2], vec![1], vec![3]]);
    }

    /// A small deterministic generator, so the crate needs no `rand`.
    struct SplitMix64(u64);

    impl SplitMix64 {
        fn below(&mut self, bound: u64) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            (z ^ (z >> 31)) % bound
        }
    }

    fn random_register_history(seed: u64) -> Vec<RegisterOperation> {
        let mut random = SplitMix64(seed);
        let operations_count = 1 + random.below(6);
        (0..operations_count)
            .map(|client_id| {
                let call = random.below(12);
                let value = |random: &mut SplitMix64| random.below(3) as i64;
                let (input, output) = match random.below(3) {
                    0 => {
                        let read = if random.below(4) == 0 { None } else { Some(value(&mut random)) };
                        (RegisterInput::Read, RegisterOutput::Read(read))
                    }
                    1 => (RegisterInput::Write(value(&mut random)), RegisterOutput::Written),
                    _ => {
                        let input = RegisterInput::Cas { expected: value(&mut random), new: value(&mut random) };
                        (input, RegisterOutput::Cas { swapped: random.below(2) == 0 })
                    }
                };
                if random.below(5) == 0 {
                    Operation::unknown(client_id, input, call)
                } else {
                    Operation::completed(client_id, input, call, output, call + random.below(6))
                }
            })
            .collect()
    }

    /// The definition, by brute force: some order that respects real time
    /// (an operation that returned before another was called goes first) is
    /// a legal sequential execution.
    fn linearizable_by_brute_force(history: &[RegisterOperation]) -> bool {
        fn extend(history: &[RegisterOperation], used: &mut Vec<bool>, state: Option<i64>) -> bool {
            if used.iter().all(|&used| used) {
                return true;
            }
            for next in 0..history.len() {
                let must_wait = (0..history.len()).any(|other| {
                    !used[other]
                        && other != next
                        && history[other].return_time().is_some_and(|time| time < history[next].call)
                });
                if used[next] || must_wait {
                    continue;
                }
                if let Some(after) = RegisterModel.step(&state, &history[next].input, history[next].output()) {
                    used[next] = true;
                    let found = extend(history, used, after);
                    used[next] = false;
                    if found {
                        return true;
                    }
                }
            }
            false
        }
        extend(history, &mut vec![false; history.len()], None)
    }

    #[test]
    fn agrees_with_brute_force_on_random_small_histories() {
        let seeds = 5_000;
        let mut violations = 0;
        for seed in 0..seeds {
            let history = random_register_history(seed);
            let expected = linearizable_by_brute_force(&history);
            let verdict = check_register(&history);
            assert_eq!(
                verdict.is_linearizable(),
                expected,
                "seed {seed}: brute force says {expected}, checker says {verdict}; history {history:#?}\n\
                 replay: cargo test -p tests agrees_with_brute_force"
            );
            assert!(!matches!(verdict, Verdict::Unknown { .. }), "seed {seed}: {verdict}");
            violations += u64::from(!expected);
        }
        // Both answers must be well represented, or the test proves little.
        assert!(violations > seeds / 10 && violations < seeds * 9 / 10, "{violations} violations of {seeds}");
    }

    #[test]
    #[should_panic(expected = "is in no partition")]
    fn a_partition_that_loses_an_operation_is_a_bug_in_the_model() {
        struct Lossy;
        impl Model for Lossy {
            type State = ();
            type Input = ();
            type Output = ();
            fn init(&self) {}
            fn step(&self, _: &(), _: &(), _: Option<&()>) -> Option<()> {
                Some(())
            }
            fn partition(&self, _: &[Operation<(), ()>]) -> Vec<Vec<usize>> {
                vec![vec![0]]
            }
        }
        let history = [Operation::unknown(0, (), 0), Operation::unknown(1, (), 1)];
        check(&Lossy, &history, &CheckOptions::default());
    }

    #[test]
    #[should_panic(expected = "returns before it is called")]
    fn a_return_before_the_call_is_a_bug_in_the_recorder() {
        let mut operation = write(0, 1, 5, 6);
        operation.returned.as_mut().unwrap().time = 4;
        check_register(&[operation]);
    }

    /// Blocks of two overlapping writes and a read of the one called first,
    /// which the search first linearizes in the wrong order and must back
    /// out of: 3 * `blocks` operations on one register, as a long chaos
    /// run gives (about 120,000 on one key at `CHAOS_SECONDS=100`; this one 180,000).
    fn long_history(blocks: i64) -> Vec<RegisterOperation> {
        let mut history = Vec::new();
        for block in 0..blocks {
            let (at, first) = (block as u64 * 10, block * 2);
            history.push(write(0, first, at, at + 5));
            history.push(write(1, first + 1, at + 1, at + 4));
            history.push(read(2, Some(first), at + 6, at + 7));
        }
        history
    }

    /// Regression (2026-12-05): each step of the search copied and hashed
    /// the whole set of linearized operations into the memo, and each
    /// backtrack that went deeper copied the whole prefix, so the cost of
    /// a step grew with the history: the five-node chaos test at
    /// `CHAOS_SECONDS=100` (120,000 operations on one key) ended `Unknown`,
    /// its 30 s exhausted 55,000 operations in, and this history too
    /// (checked before the fix). The default options must decide it.
    #[test]
    fn a_long_history_is_decided_within_the_default_bounds() {
        let history = long_history(60_000);
        assert_eq!(check_register(&history), Verdict::Linearizable);
        let mut broken = history;
        let last = broken.len() - 1;
        broken[last] = read(2, Some(-1), broken[last].call, broken[last].return_time().unwrap());
        let violation = violation_of(check_register(&broken));
        assert_eq!(violation.stuck, last);
        assert_eq!(violation.longest_prefix.len(), last);
        let mut prefix = violation.longest_prefix.clone();
        prefix.sort_unstable();
        assert_eq!(prefix, (0..last).collect::<Vec<_>>(), "the prefix is every operation but the bad read");
    }
}
