//! Exactly-once client sessions, independent of what the state machine does.
//!
//! A client opens a session by choosing a fresh random 64-bit `client_id` and
//! numbers its writes 1, 2, 3, ... (`sequence`). The node wraps each write's
//! command in an [`Envelope`] carrying both before proposing it, so every
//! replica sees them in the log. The state machine keeps a [`SessionTable`]
//! (client id → last applied sequence and that write's cached reply) as part of
//! its state and snapshots: a retried write, proposed again after a timeout or
//! a leader change, is answered from the cache instead of being applied twice.
//!
//! # Envelope (the log entry's payload), little-endian
//!
//! | bytes | field |
//! |---|---|
//! | 1 | format, [`ENVELOPE_FORMAT`] |
//! | 8 | `client_id`; 0 means "no session": applied every time it is committed |
//! | 8 | `sequence`; at least 1 inside a session |
//! | rest | the application command |
//!
//! # Reply (every byte string the key-value state machine answers with)
//!
//! | tag | meaning | then |
//! |---|---|---|
//! | 0 | [`Reply::Applied`] | the application's response, to the end |
//! | 1 | [`Reply::SessionExpired`] | nothing |
//! | 2 | [`Reply::SequenceStale`] | `last_sequence` as u64 |
//! | 3 | [`Reply::Malformed`] | a UTF-8 reason, to the end |
//!
//! # Expiry
//!
//! The table holds at most `sessions_max` sessions. Opening one more evicts the
//! session whose last write has the lowest log index (least recently used in
//! log order). This depends only on the applied log, never on a clock, so every
//! replica evicts the same sessions. `sessions_max` must therefore be the same
//! on every node; snapshots record it and a restore refuses a mismatch.
//!
//! Only the reply to a session's latest write is cached. A client that
//! pipelines several writes of one session and retries an older one after a
//! newer one was applied gets [`Reply::SequenceStale`]: the write was applied,
//! its reply is gone.

use std::collections::{BTreeMap, BTreeSet};

use bytes::{BufMut, Bytes, BytesMut};
use engine::Index;

use crate::codec::{DecodeError, Reader};

/// The format byte that opens every [`Envelope`].
pub const ENVELOPE_FORMAT: u8 = 1;
/// Bytes of an envelope before the application command.
pub const ENVELOPE_HEADER_SIZE: usize = 17;
/// The `client_id` of writes outside any session.
pub const CLIENT_ID_NONE: u64 = 0;
/// Default bound on the session table (see [`SessionTable::new`]).
pub const SESSIONS_MAX_DEFAULT: usize = 4096;

/// A write as it travels through the log: the client's session and the
/// application's command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    pub client_id: u64,
    pub sequence: u64,
    pub command: Bytes,
}

impl Envelope {
    /// The log entry payload for this write.
    pub fn encode(&self) -> Bytes {
        encode_envelope(self.client_id, self.sequence, &self.command)
    }

    /// Reads an envelope; `command` is a slice of `bytes` (no copy).
    pub fn decode(bytes: &Bytes) -> Result<Envelope, DecodeError> {
        let envelope = EnvelopeRef::decode(bytes)?;
        Ok(Envelope {
            client_id: envelope.client_id,
            sequence: envelope.sequence,
            command: bytes.slice_ref(envelope.command),
        })
    }
}

/// An [`Envelope`] borrowing the bytes it was decoded from: what apply reads,
/// touching no reference count (see `codec`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct EnvelopeRef<'a> {
    pub client_id: u64,
    pub sequence: u64,
    pub command: &'a [u8],
}

impl<'a> EnvelopeRef<'a> {
    pub(crate) fn decode(bytes: &'a [u8]) -> Result<EnvelopeRef<'a>, DecodeError> {
        let mut reader = Reader::new(bytes);
        let format = reader.u8("envelope format")?;
        if format != ENVELOPE_FORMAT {
            return Err(DecodeError::UnknownTag { what: "envelope format", tag: format });
        }
        let client_id = reader.u64("envelope client id")?;
        let sequence = reader.u64("envelope sequence")?;
        if client_id != CLIENT_ID_NONE && sequence == 0 {
            return Err(DecodeError::Invalid { what: "envelope sequence", reason: "sequences start at 1" });
        }
        Ok(EnvelopeRef { client_id, sequence, command: reader.rest() })
    }
}

/// Wraps a client's command with its session, the way the node proposes it
/// (from `net::ClientRequest`'s `client_id` and `sequence`).
/// Bytes of each buffer [`encode_envelope_in`] carves envelopes from.
pub const ENVELOPE_ARENA_BYTES: usize = 64 << 10;

/// Encodes an envelope into `arena` and splits it off. Envelopes carved from
/// one buffer are shared slices of it, so the log's clones of an entry cost no
/// allocation; a `Bytes` of its own is promoted, with an allocation, on its
/// first clone (a few percent of a leader's CPU in profiles). A buffer is
/// freed once every envelope in it is.
pub fn encode_envelope_in(arena: &mut BytesMut, client_id: u64, sequence: u64, command: &[u8]) -> Bytes {
    let size = ENVELOPE_HEADER_SIZE + command.len();
    if arena.capacity() - arena.len() < size {
        *arena = BytesMut::with_capacity(ENVELOPE_ARENA_BYTES.max(size));
    }
    arena.put_u8(ENVELOPE_FORMAT);
    arena.put_u64_le(client_id);
    arena.put_u64_le(sequence);
    arena.put_slice(command);
    arena.split().freeze()
}

pub fn encode_envelope(client_id: u64, sequence: u64, command: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(ENVELOPE_HEADER_SIZE + command.len());
    out.put_u8(ENVELOPE_FORMAT);
    out.put_u64_le(client_id);
    out.put_u64_le(sequence);
    out.put_slice(command);
    out.freeze()
}

/// What a state machine with sessions answers, in a form the node can turn
/// into a `net::ResponseStatus` without knowing the application.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Applied (now or, for a retry, earlier): the application's response.
    Applied(Bytes),
    /// The client's session is unknown (evicted, or never opened with
    /// sequence 1): nothing was applied; start a new session.
    SessionExpired,
    /// This sequence was applied before, but its reply is no longer cached
    /// because a later write of the session replaced it.
    SequenceStale { last_sequence: u64 },
    /// The command or query did not decode; nothing was applied.
    Malformed(String),
}

impl Reply {
    pub fn encode(&self) -> Bytes {
        match self {
            Reply::Applied(response) => {
                let mut out = BytesMut::with_capacity(1 + response.len());
                out.put_u8(0);
                out.put_slice(response);
                out.freeze()
            }
            Reply::SessionExpired => Bytes::from_static(&[1]),
            Reply::SequenceStale { last_sequence } => {
                let mut out = BytesMut::with_capacity(9);
                out.put_u8(2);
                out.put_u64_le(*last_sequence);
                out.freeze()
            }
            Reply::Malformed(reason) => {
                let mut out = BytesMut::with_capacity(1 + reason.len());
                out.put_u8(3);
                out.put_slice(reason.as_bytes());
                out.freeze()
            }
        }
    }

    pub fn decode(bytes: &Bytes) -> Result<Reply, DecodeError> {
        let mut reader = Reader::new(bytes);
        let reply = match reader.u8("reply tag")? {
            0 => Reply::Applied(bytes.slice_ref(reader.rest())),
            1 => Reply::SessionExpired,
            2 => Reply::SequenceStale { last_sequence: reader.u64("reply last sequence")? },
            3 => {
                let reason = std::str::from_utf8(reader.rest())
                    .map_err(|_| DecodeError::Invalid { what: "reply reason", reason: "not UTF-8" })?;
                Reply::Malformed(reason.to_string())
            }
            tag => return Err(DecodeError::UnknownTag { what: "reply", tag }),
        };
        reader.finish("reply")?;
        Ok(reply)
    }

    /// The status a client sees for this reply.
    pub fn into_status(self) -> net::ResponseStatus {
        match self {
            Reply::Applied(response) => net::ResponseStatus::Ok(response),
            Reply::SessionExpired => net::ResponseStatus::SessionExpired,
            Reply::SequenceStale { last_sequence } => net::ResponseStatus::BadRequest(format!(
                "sequence already applied and its reply is no longer cached (the session's last sequence is {last_sequence})"
            )),
            Reply::Malformed(reason) => net::ResponseStatus::BadRequest(reason),
        }
    }
}

/// One client's session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// The highest sequence applied. Invariant: at least 1.
    pub last_sequence: u64,
    /// The log index of the session's last write (or retry of it); the
    /// eviction order. Invariant: at most the state machine's applied index.
    pub last_index: Index,
    /// The encoded [`Reply`] to `last_sequence`, returned again on a retry.
    pub reply: Bytes,
}

/// What to do with a write, decided by [`SessionTable::admit`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admission {
    /// New: apply it, then [`SessionTable::record`] the reply.
    Apply,
    /// A retry of the session's last write: answer with this cached encoded
    /// reply and do not apply.
    Duplicate(Bytes),
    /// Do not apply; answer with this reply.
    Reject(Reply),
}

/// The sessions of a state machine: bounded, deterministic, part of its state.
///
/// Invariant: `by_index` holds exactly one `(last_index, client_id)` pair per
/// session, and `sessions.len() <= sessions_max`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionTable {
    sessions: BTreeMap<u64, Session>,
    by_index: BTreeSet<(Index, u64)>,
    sessions_max: usize,
}

impl SessionTable {
    /// An empty table holding at most `sessions_max` sessions (at least 1).
    /// The bound must be equal on every replica, since eviction is part of
    /// the replicated state.
    pub fn new(sessions_max: usize) -> SessionTable {
        assert!(sessions_max > 0, "sessions_max must be at least 1");
        SessionTable { sessions: BTreeMap::new(), by_index: BTreeSet::new(), sessions_max }
    }

    pub fn sessions_max(&self) -> usize {
        self.sessions_max
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    pub fn get(&self, client_id: u64) -> Option<&Session> {
        self.sessions.get(&client_id)
    }

    /// The sessions in client id order (the snapshot order).
    pub fn iter(&self) -> impl Iterator<Item = (u64, &Session)> {
        self.sessions.iter().map(|(&id, session)| (id, session))
    }

    /// Decides whether write `(client_id, sequence)` must be applied, and for a
    /// duplicate refreshes the session's place in the eviction order to
    /// `index` (a retrying client is alive). Writes outside a session
    /// ([`CLIENT_ID_NONE`]) are always applied.
    pub fn admit(&mut self, client_id: u64, sequence: u64, index: Index) -> Admission {
        if client_id == CLIENT_ID_NONE {
            return Admission::Apply;
        }
        debug_assert!(sequence >= 1, "Envelope::decode refuses sequence 0 in a session");
        match self.sessions.get_mut(&client_id) {
            None if sequence == 1 => Admission::Apply,
            None => Admission::Reject(Reply::SessionExpired),
            Some(session) if sequence > session.last_sequence => Admission::Apply,
            Some(session) if sequence == session.last_sequence => {
                let reply = session.reply.clone();
                let removed = self.by_index.remove(&(session.last_index, client_id));
                assert!(removed, "session {client_id} missing from the eviction order");
                session.last_index = index;
                self.by_index.insert((index, client_id));
                Admission::Duplicate(reply)
            }
            Some(session) => Admission::Reject(Reply::SequenceStale { last_sequence: session.last_sequence }),
        }
    }

    /// Records the encoded `reply` to an applied write at log `index`, opening
    /// the session if it is new; a new session beyond `sessions_max` evicts
    /// the least recently written one.
    pub fn record(&mut self, client_id: u64, sequence: u64, index: Index, reply: Bytes) {
        if client_id == CLIENT_ID_NONE {
            return;
        }
        if let Some(session) = self.sessions.get_mut(&client_id) {
            assert!(sequence > session.last_sequence, "record of a write that admit did not allow");
            let removed = self.by_index.remove(&(session.last_index, client_id));
            assert!(removed, "session {client_id} missing from the eviction order");
            *session = Session { last_sequence: sequence, last_index: index, reply };
        } else {
            if self.sessions.len() == self.sessions_max {
                let (_, evicted) = self.by_index.pop_first().expect("a full table has an eviction order");
                self.sessions.remove(&evicted).expect("the eviction order names live sessions");
            }
            self.sessions.insert(client_id, Session { last_sequence: sequence, last_index: index, reply });
        }
        self.by_index.insert((index, client_id));
        debug_assert!(self.check_invariants().is_ok(), "{:?}", self.check_invariants());
    }

    /// Checks the table's invariants; tests and the simulator call it after
    /// every step. Returns the first broken one.
    pub fn check_invariants(&self) -> Result<(), &'static str> {
        if self.sessions.len() > self.sessions_max {
            return Err("more sessions than sessions_max");
        }
        if self.by_index.len() != self.sessions.len() {
            return Err("the eviction order and the sessions differ in size");
        }
        for &(index, client_id) in &self.by_index {
            match self.sessions.get(&client_id) {
                None => return Err("the eviction order names a missing session"),
                Some(session) if session.last_index != index => {
                    return Err("the eviction order has a stale index for a session")
                }
                Some(session) if session.last_sequence == 0 => return Err("a session has sequence 0"),
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// Adds a session read from a snapshot; the caller checks the order.
    pub(crate) fn insert_restored(&mut self, client_id: u64, session: Session) -> Result<(), &'static str> {
        if client_id == CLIENT_ID_NONE {
            return Err("a session has client id 0");
        }
        if session.last_sequence == 0 {
            return Err("a session has sequence 0");
        }
        if self.sessions.len() == self.sessions_max {
            return Err("more sessions than sessions_max");
        }
        if self.sessions.contains_key(&client_id) {
            return Err("a client id appears twice");
        }
        self.by_index.insert((session.last_index, client_id));
        self.sessions.insert(client_id, session);
        Ok(())
    }
}
