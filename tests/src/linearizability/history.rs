//! Client histories: what each client asked, when, and what it was told.

/// One client operation as the client saw it: when it was called, what it
/// asked, and, if it ever learned the outcome, when and what it was told.
///
/// Times are any monotonic clock shared by all clients of one history (the
/// simulator's logical time, nanoseconds since the start of a real run, or the
/// line number of a log). Only their order matters. Two operations overlap
/// when neither returned before the other was called; equal times count as
/// overlapping, so clock granularity never manufactures a violation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation<I, O> {
    /// The client that issued the operation; used only in descriptions.
    pub client_id: u64,
    /// What the client asked for.
    pub input: I,
    /// When the client sent the request.
    pub call: u64,
    /// When and with what the operation returned, or `None` if the client
    /// never learned the outcome (a timeout, a crash, a dropped connection).
    /// Such an operation may have taken effect at any moment after `call`, or
    /// never: the checker gives it an infinite return time.
    pub returned: Option<Returned<O>>,
}

/// The end of an operation whose outcome the client learned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Returned<O> {
    /// When the client received the response. Invariant: `time >= call`.
    pub time: u64,
    /// What the client was told.
    pub output: O,
}

impl<I, O> Operation<I, O> {
    /// An operation that returned `output` at `return_time`.
    pub fn completed(client_id: u64, input: I, call: u64, output: O, return_time: u64) -> Self {
        assert!(call <= return_time, "an operation cannot return ({return_time}) before it was called ({call})");
        Self { client_id, input, call, returned: Some(Returned { time: return_time, output }) }
    }

    /// An operation whose outcome the client never learned.
    pub fn unknown(client_id: u64, input: I, call: u64) -> Self {
        Self { client_id, input, call, returned: None }
    }

    /// The output, or `None` when the outcome is unknown.
    pub fn output(&self) -> Option<&O> {
        self.returned.as_ref().map(|returned| &returned.output)
    }

    /// The return time, or `None` when the operation never returned.
    pub fn return_time(&self) -> Option<u64> {
        self.returned.as_ref().map(|returned| returned.time)
    }
}

/// Identifies an operation recorded by a [`HistoryRecorder`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OperationId(usize);

/// Records a history while clients run, for the simulator and the chaos tests.
///
/// A client calls [`invoke`](Self::invoke) before it sends a request and
/// [`complete`](Self::complete) when it gets an answer that tells what
/// happened. An operation that definitely did not take effect (the node
/// refused it before proposing it, e.g. "not leader") is [`discard`]ed: keeping
/// it would only slow the check. Anything else left open at the end (timeouts,
/// crashed clients) becomes an operation with an unknown outcome, which is
/// what it is: the request may have been applied. A read whose answer never
/// came constrains nothing and only widens the search: discard it too.
///
/// [`discard`]: Self::discard
#[derive(Debug, Clone)]
pub struct HistoryRecorder<I, O> {
    /// Invariant: a slot is `None` only after `discard`.
    slots: Vec<Option<Operation<I, O>>>,
}

impl<I, O> Default for HistoryRecorder<I, O> {
    fn default() -> Self {
        Self { slots: Vec::new() }
    }
}

impl<I, O> HistoryRecorder<I, O> {
    /// An empty history.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `client_id` sent `input` at `time`.
    pub fn invoke(&mut self, client_id: u64, input: I, time: u64) -> OperationId {
        self.slots.push(Some(Operation::unknown(client_id, input, time)));
        OperationId(self.slots.len() - 1)
    }

    /// Records that the operation returned `output` at `time`.
    ///
    /// Panics if the operation was already completed or discarded: that is a
    /// bug in the test's client, and a silent overwrite would hide it.
    pub fn complete(&mut self, id: OperationId, output: O, time: u64) {
        let operation = self.slots[id.0].as_mut().expect("completing a discarded operation");
        assert!(operation.returned.is_none(), "operation {id:?} completed twice");
        assert!(operation.call <= time, "operation {id:?} returns ({time}) before its call ({})", operation.call);
        operation.returned = Some(Returned { time, output });
    }

    /// Forgets an operation that certainly did not take effect.
    pub fn discard(&mut self, id: OperationId) {
        let operation = self.slots[id.0].take().expect("operation discarded twice");
        assert!(operation.returned.is_none(), "discarding operation {id:?}, which already returned");
    }

    /// The number of operations recorded and not discarded.
    pub fn len(&self) -> usize {
        self.slots.iter().flatten().count()
    }

    /// Whether no operation is recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The history to check, in invocation order; open operations have an
    /// unknown outcome.
    pub fn into_operations(self) -> Vec<Operation<I, O>> {
        self.slots.into_iter().flatten().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_operations_become_unknown_and_discarded_ones_vanish() {
        let mut recorder = HistoryRecorder::new();
        let done = recorder.invoke(1, "put", 10);
        let refused = recorder.invoke(2, "put", 11);
        let timed_out = recorder.invoke(3, "get", 12);
        recorder.complete(done, "ok", 13);
        recorder.discard(refused);
        assert_eq!(recorder.len(), 2);
        let operations = recorder.into_operations();
        assert_eq!(operations[0], Operation::completed(1, "put", 10, "ok", 13));
        assert_eq!(operations[1], Operation::unknown(3, "get", 12));
        let _ = timed_out;
    }

    #[test]
    #[should_panic(expected = "completed twice")]
    fn completing_twice_is_a_bug() {
        let mut recorder = HistoryRecorder::new();
        let id = recorder.invoke(1, (), 0);
        recorder.complete(id, (), 1);
        recorder.complete(id, (), 2);
    }
}
