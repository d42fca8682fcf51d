//! Exactly-once client sessions, as a client sees them.
//!
//! 1. **Open** a session with a `ClientOpenSession` request. The cluster
//!    assigns its id through the log (the index of the entry that opened it,
//!    so no two sessions ever share an id) and answers with an
//!    [`OpenedSession`]: the id and the session timeout.
//! 2. **Write**: each write carries the session's id, a `sequence` (1, 2, 3,
//!    ... — a new one per command, the same one for every retry of that
//!    command) and `ack`, the lowest sequence whose answer the client has not
//!    received yet. The cluster applies each sequence at most once and keeps
//!    the answer of every sequence at or above the highest `ack` it has seen,
//!    so a retry of any of them (after a timeout, a redirect, a lost
//!    connection, a leader change) gets the original answer. Many writes of
//!    one session may be in flight at once, within a *window*: a sequence
//!    must be below `ack + window` (the session's `replies_max`), so the
//!    cluster never keeps more than `window` answers per session and a
//!    missing lower write can always still be applied. [`Session`] does the
//!    bookkeeping.
//! 3. **Close** the session with `ClientCloseSession` when done, so the
//!    cluster forgets it at once instead of at its timeout.
//!
//! What each status means for a write in a session:
//!
//! | status | applied? | what to do |
//! |---|---|---|
//! | `Ok` | yes, once | done (the answer may be the cached one of an earlier attempt) |
//! | `NotLeader`, `TimedOut`, `Busy`, a lost connection | unknown | retry the same sequence (at the leader) |
//! | `SessionFull` | no | receive the answers on their way, then retry the same sequence |
//! | `SessionExpired` | not now | open a new session and send the command there as a new write |
//! | `BadRequest` | no (refused) | fix the request |
//! | `Forbidden` | no | the caller may not write, or the session belongs to another user (a session is its opener's) |
//!
//! `SessionExpired` is certain ("this command was never applied") as long as
//! the client stops retrying a write [`Session::retry_window`] after it first
//! sent it: a session expires only after the session timeout without a write
//! (in the log's time, which runs no faster than real time), and the cluster
//! evicts a session early (to open another when it holds as many as it may)
//! only when the session has no answer its client has not acknowledged. A
//! client that retries longer must treat `SessionExpired` for a retried
//! write as "outcome unknown".

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};

use crate::compact::{FormatError, Reader};

/// The answer to `ClientOpenSession`, 20 bytes little-endian: the session's
/// id, its timeout in milliseconds, and its window (the most writes it may
/// have unacknowledged, `replies_max`). Both are the session's for its whole
/// life: a later change of the cluster's settings applies to new sessions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenedSession {
    pub client_id: u64,
    pub timeout_ms: u64,
    pub window: u32,
}

impl OpenedSession {
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(20);
        out.put_u64_le(self.client_id);
        out.put_u64_le(self.timeout_ms);
        out.put_u32_le(self.window);
        out.freeze()
    }

    pub fn decode(bytes: &[u8]) -> Result<OpenedSession, FormatError> {
        let mut reader = Reader::new(bytes);
        let client_id = reader.u64("session id")?;
        let timeout_ms = reader.u64("session timeout")?;
        let window = reader.u32("session window")?;
        reader.finish("opened session")?;
        if client_id == 0 {
            return Err(FormatError::Invalid { what: "session id", reason: "a session id is never 0" });
        }
        if window == 0 {
            return Err(FormatError::Invalid { what: "session window", reason: "a window is at least 1" });
        }
        Ok(OpenedSession { client_id, timeout_ms, window })
    }
}

/// A client's side of one session: which sequence comes next and which
/// answers are still awaited (their lowest is the `ack` every request
/// carries).
#[derive(Clone, Debug)]
pub struct Session {
    opened: OpenedSession,
    next_sequence: u64,
    /// Sequences started and not yet finished.
    outstanding: BTreeSet<u64>,
}

impl Session {
    pub fn new(opened: OpenedSession) -> Session {
        Session { opened, next_sequence: 1, outstanding: BTreeSet::new() }
    }

    /// The id the cluster assigned.
    pub fn client_id(&self) -> u64 {
        self.opened.client_id
    }

    /// The session as the cluster opened it.
    pub fn opened(&self) -> OpenedSession {
        self.opened
    }

    /// Whether a new write fits the window now: its sequence would be below
    /// `ack + window`. When it does not, wait for the answer of the lowest
    /// awaited write (or give it up with [`Session::finish`]).
    pub fn can_start(&self) -> bool {
        self.next_sequence < self.ack() + u64::from(self.opened.window)
    }

    /// Starts a new write: its sequence, awaited until [`Session::finish`].
    /// Call only when [`Session::can_start`].
    pub fn start(&mut self) -> u64 {
        debug_assert!(self.can_start(), "a write beyond the session's window");
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        self.outstanding.insert(sequence);
        sequence
    }

    /// The `ack` to send with any request of this session now: the lowest
    /// sequence whose answer has not been received.
    pub fn ack(&self) -> u64 {
        self.outstanding.first().copied().unwrap_or(self.next_sequence)
    }

    /// The write with `sequence` got its final answer (or the client gave up
    /// on it: it must never be retried after this).
    pub fn finish(&mut self, sequence: u64) {
        self.outstanding.remove(&sequence);
    }

    /// Writes started and not yet finished.
    pub fn outstanding(&self) -> usize {
        self.outstanding.len()
    }

    /// How long after first sending a write the client may still retry it
    /// and trust a `SessionExpired` answer to mean "never applied": half the
    /// session timeout.
    pub fn retry_window(&self) -> Duration {
        Duration::from_millis(self.opened.timeout_ms / 2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_is_the_lowest_unanswered_sequence() {
        let mut session = Session::new(OpenedSession { client_id: 9, timeout_ms: 1000, window: 3 });
        assert_eq!(session.ack(), 1, "nothing sent: everything below 1 is acknowledged");
        let (a, b, c) = (session.start(), session.start(), session.start());
        assert_eq!((a, b, c), (1, 2, 3));
        assert_eq!(session.ack(), 1);
        assert!(!session.can_start(), "4 is beyond the window of 3 above ack 1");
        session.finish(2);
        assert_eq!(session.ack(), 1, "1 is still awaited");
        session.finish(1);
        assert_eq!(session.ack(), 3);
        assert!(session.can_start());
        session.finish(3);
        assert_eq!(session.ack(), 4);
        assert_eq!(session.retry_window(), Duration::from_millis(500));
    }

    #[test]
    fn opened_session_round_trips_and_refuses_id_zero() {
        let opened = OpenedSession { client_id: 77, timeout_ms: 600_000, window: 1024 };
        assert_eq!(OpenedSession::decode(&opened.encode()), Ok(opened));
        assert!(OpenedSession::decode(&OpenedSession { client_id: 0, timeout_ms: 1, window: 1 }.encode()).is_err());
        assert!(OpenedSession::decode(&OpenedSession { client_id: 1, timeout_ms: 1, window: 0 }.encode()).is_err());
        assert!(OpenedSession::decode(&[1, 2, 3]).is_err());
    }
}
