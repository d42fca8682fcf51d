//! What the node needs from an application's state machine beyond the
//! engine's [`StateMachine`]: reads that do not go through the log.

use bytes::Bytes;
use engine::StateMachine;

/// A state machine that also answers read-only queries from its applied
/// state. The node calls `query` once a read is safe at the chosen
/// consistency (after the ReadIndex is applied, under a lease, or at once for
/// stale reads); `query` must not change the state.
pub trait QueryStateMachine: StateMachine {
    /// Answers `query` (opaque bytes from the client) with opaque bytes.
    fn query(&self, query: &Bytes) -> Bytes;
}
