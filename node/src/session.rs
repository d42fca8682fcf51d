//! Exactly-once client sessions, kept by the node for any state machine
//! (Raft thesis section 6.3; the client's side is `net::session`).
//!
//! - **Opening** goes through the log: the session's id is the index of the
//!   entry that opened it, so ids are unique by construction (no two
//!   committed entries share an index) and never reused.
//! - **Writes** carry `(client_id, sequence, ack)`. The table applies each
//!   sequence at most once and keeps the answer of every applied sequence at
//!   or above the session's *floor* (the highest `ack` seen): a retry of any
//!   of them gets the original answer, however many are in flight. Answers
//!   below the floor are dropped (the client said it has them), and a retry
//!   of one is refused as stale, never applied again.
//! - **The window.** A sequence must lie in `[floor, floor + window)`, the
//!   window being the session's `replies_max`: so a session keeps at most
//!   `window` answers, and the lowest write its client still awaits always
//!   fits (were the bound a plain count, answers to later writes could fill
//!   it and lock out the earlier write they wait behind). A byte bound,
//!   `reply_bytes_max`, refuses writes that would extend the session past
//!   its highest kept answer once its answers hold that many bytes; a write
//!   that fills a gap below it is always taken, for the same reason.
//! - **Time** is the log's: the leader proposes clock entries (milliseconds
//!   of its monotonic clock since it took office, added to the log time it
//!   found), and every replica advances the table's time when it applies
//!   one. A session without a write for its timeout of log time expires.
//!   Nothing here reads a local clock, so every replica expires the same
//!   sessions at the same index.
//! - **Bounds**, all part of the replicated settings (`net::SessionSettings`,
//!   changed only through the log, never a per-node option): at most
//!   `sessions_max` sessions; opening one more evicts the least recently
//!   active session that holds no unacknowledged answer, or is refused when
//!   every session holds one. A session keeps the timeout and window it was
//!   opened with (its client was told them), so a change of the settings
//!   applies to sessions opened after it. So the table holds at most
//!   `sessions_max * window` answers, and about `sessions_max *
//!   reply_bytes_max` bytes of them (each session may exceed its byte bound
//!   by the answers that fill its gaps).
//!
//! - **Owners.** A session belongs to the user that opened it (the name of
//!   its connection's identity; the empty name for the node's own callers,
//!   such as the Redis front door, which no client can have: user names
//!   are 1 to 64 characters). The owner is part of the opening entry and
//!   of the table, so every replica knows it; the node that receives a
//!   write or a close in a session checks it against the caller
//!   ([`SessionTable::owned_by`]) before proposing or forwarding it, since
//!   a forwarded write no longer carries its caller. A session opened by an
//!   older build (or before every member ran this one) has no owner, and
//!   any user with the write role may write in it, as before.
//!
//! - **Fingerprints.** Each kept answer carries the crc32c of the command
//!   it answers, computed when this replica applied the write. A write
//!   that reuses a kept sequence with another command is refused
//!   ([`Refusal::Reused`]) instead of being told the earlier command's
//!   answer: a client that reuses a sequence is buggy, and without the
//!   check it would believe a write applied that never was (the Raft
//!   thesis trusts the client here; this is defense in depth). They are
//!   not replicated state: snapshots do not carry them (a snapshot's bytes
//!   must be the same on every replica, and a replica's fingerprints
//!   depend on which writes it applied itself), so an answer restored from
//!   a snapshot has none and is given to any retry, as before. A
//!   fingerprint decides only the answer to such a retry, never the state:
//!   the session's bookkeeping is the same whether it is answered or
//!   refused, and tables compare equal whatever fingerprints they hold.
//!
//! Why eviction spares sessions with unacknowledged answers: such a session
//! may have a retry on its way whose write was applied; evicting it would
//! turn that retry's `SessionExpired` into a lie ("not applied"). A session
//! whose answers were all acknowledged has no applied write its client is
//! still unsure of, so any later write in it is truly new and truly not
//! applied when refused. The same holds for expiry as long as the client
//! retries a write for at most half the timeout (`net::session`), since log
//! time runs no faster than real time.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use net::compact::{put_bytes, FormatError, Reader};
use net::session::OpenedSession;
use net::SessionSettings;

/// The settings every cluster starts with, until an admin request changes
/// them through the log.
pub const SETTINGS_DEFAULT: SessionSettings =
    SessionSettings { sessions_max: 4096, timeout_ms: 10 * 60 * 1000, replies_max: 1024, reply_bytes_max: 256 << 10 };
/// Bounds on the settings an admin may choose.
pub const SESSIONS_MAX_LIMIT: u32 = 1 << 20;
pub const TIMEOUT_MS_MIN: u64 = 1000;
pub const REPLIES_MAX_LIMIT: u32 = 1 << 16;
/// The largest answer a session caches (the largest a state machine may give
/// for a write that is to be cached).
pub const REPLY_SIZE_MAX: usize = 64 << 20;

/// What a session keeps of an applied write: the state machine's answer or
/// its refusal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cached {
    Applied(Bytes),
    Refused(String),
}

impl Cached {
    fn size(&self) -> usize {
        match self {
            Cached::Applied(bytes) => bytes.len(),
            Cached::Refused(reason) => reason.len(),
        }
    }
}

/// One client's session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// The log time of its last write (or of its opening).
    pub last_active: u64,
    /// How long it lives without writes, and its window: the settings in
    /// force when it was opened.
    pub timeout_ms: u64,
    pub window: u32,
    /// The highest `ack` seen: the client has the answers below it.
    /// Invariant: every key of `replies` is in `[floor, floor + window)`.
    pub floor: u64,
    /// The answers of applied writes at or above the floor.
    pub replies: Replies,
    /// Invariant: the sum of the sizes of `replies`.
    pub reply_bytes: usize,
    /// The user that opened it; `None` when opened by an older build
    /// (anyone may write in it). See the module's "Owners".
    pub owner: Option<Arc<str>>,
}

/// The caller name of the node's own callers (the Redis front door, an
/// embedding application's `NodeHandle`): the owner of the sessions they
/// open. No client has it: user names are 1 to 64 characters.
pub const LOCAL_CALLER: &str = "";

/// The longest owner name a session keeps: a user name's bound.
pub const OWNER_SIZE_MAX: usize = net::identity::USER_NAME_SIZE_MAX;

/// The fingerprint of a write's command, which a session keeps beside its
/// answer (see the module's "Fingerprints").
pub fn fingerprint(command: &[u8]) -> u32 {
    crc32c::crc32c(command)
}

/// Answers' room a session's ring keeps however empty it gets.
const REPLIES_KEPT_ROOM: usize = 64;

/// A session's kept answers, in sequence order. A ring, not a B-tree: a
/// client acknowledges its answers soon, so the set keeps emptying and
/// refilling, and a B-tree frees and allocates a leaf each time (on every
/// replica, once per write: the largest source of allocations in a profile
/// at 256 writes in flight), where a ring keeps its buffer. Answers arrive
/// in sequence order but for retries, so an insert is nearly always a push
/// at the back.
///
/// Each answer has the fingerprint of its command, or none when restored
/// from a snapshot; equality ignores them (they are no replicated state).
#[derive(Clone, Debug, Default)]
pub struct Replies(VecDeque<(u64, Cached, Option<u32>)>);

impl PartialEq for Replies {
    fn eq(&self, other: &Replies) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for Replies {}

impl Replies {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The answer to write `sequence`, if kept.
    pub fn get(&self, sequence: u64) -> Option<&Cached> {
        self.get_fingerprinted(sequence).map(|(answer, _)| answer)
    }

    /// The answer to write `sequence` and its command's fingerprint, if kept.
    pub fn get_fingerprinted(&self, sequence: u64) -> Option<(&Cached, Option<u32>)> {
        self.position(sequence).ok().map(|at| (&self.0[at].1, self.0[at].2))
    }

    /// Keeps `answer` for `sequence` with its command's `fingerprint`;
    /// returns the answer it replaces.
    pub fn insert(&mut self, sequence: u64, answer: Cached, fingerprint: Option<u32>) -> Option<Cached> {
        match self.position(sequence) {
            Ok(at) => {
                self.0[at].2 = fingerprint;
                Some(std::mem::replace(&mut self.0[at].1, answer))
            }
            Err(at) => {
                self.0.insert(at, (sequence, answer, fingerprint));
                None
            }
        }
    }

    /// Drops the answers below `sequence`; returns their total size.
    fn drop_below(&mut self, sequence: u64) -> usize {
        let mut size = 0;
        while self.0.front().is_some_and(|(kept, _, _)| *kept < sequence) {
            size += self.0.pop_front().expect("a front").1.size();
        }
        // A session that once held many answers does not keep their room
        // for ever (thousands of sessions may each have had a full window).
        if self.0.capacity() > REPLIES_KEPT_ROOM && self.0.len() * 4 < self.0.capacity() {
            self.0.shrink_to((self.0.capacity() / 2).max(REPLIES_KEPT_ROOM));
        }
        size
    }

    /// The highest sequence kept.
    pub fn last_key(&self) -> Option<u64> {
        self.0.back().map(|(sequence, _, _)| *sequence)
    }

    pub fn keys(&self) -> impl DoubleEndedIterator<Item = &u64> + Clone {
        self.0.iter().map(|(sequence, _, _)| sequence)
    }

    pub fn values(&self) -> impl Iterator<Item = &Cached> {
        self.0.iter().map(|(_, answer, _)| answer)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&u64, &Cached)> {
        self.0.iter().map(|(sequence, answer, _)| (sequence, answer))
    }

    /// Where `sequence` is, or where it goes; checks the back first.
    fn position(&self, sequence: u64) -> Result<usize, usize> {
        match self.0.back() {
            None => Err(0),
            Some((last, _, _)) if *last < sequence => Err(self.0.len()),
            _ => self.0.binary_search_by_key(&sequence, |(kept, _, _)| *kept),
        }
    }
}

impl Session {
    fn expires_at(&self) -> u64 {
        self.last_active.saturating_add(self.timeout_ms)
    }
}

/// What to do with a write, decided by [`SessionTable::admit`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admission {
    /// New: apply it, then [`SessionTable::record`] the answer.
    Apply,
    /// Applied before: answer with this and do not apply.
    Duplicate(Cached),
    /// Not applied: answer with this refusal.
    Refuse(Refusal),
}

/// Why a write in a session is not applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The session is unknown: expired, evicted, closed, or never opened.
    Expired,
    /// The client acknowledged this sequence's answer already (`floor` is
    /// the session's lowest kept sequence): a client bug.
    Stale { floor: u64 },
    /// Beyond the session's window, or past its byte bound.
    Full(String),
    /// The session kept an answer for this sequence, to another command
    /// (its fingerprint differs): a client that reused a sequence.
    Reused { sequence: u64 },
}

/// The sessions of a shard: bounded, deterministic, part of its replicated
/// state and snapshots.
///
/// Invariants: `by_expiry` holds exactly one `(expires_at, id)` per session;
/// `evictable` holds exactly one `(last_active, id)` per session without
/// answers; `time` never decreases; every session's `last_active` is at most
/// `time`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionTable {
    settings: SessionSettings,
    /// The log's time in milliseconds, from the last clock entry applied.
    time: u64,
    sessions: BTreeMap<u64, Session>,
    by_expiry: BTreeSet<(u64, u64)>,
    evictable: BTreeSet<(u64, u64)>,
}

impl Default for SessionTable {
    fn default() -> SessionTable {
        SessionTable::new(SETTINGS_DEFAULT)
    }
}

impl SessionTable {
    pub fn new(settings: SessionSettings) -> SessionTable {
        SessionTable {
            settings,
            time: 0,
            sessions: BTreeMap::new(),
            by_expiry: BTreeSet::new(),
            evictable: BTreeSet::new(),
        }
    }

    pub fn settings(&self) -> SessionSettings {
        self.settings
    }

    /// The log's time, in milliseconds.
    pub fn time(&self) -> u64 {
        self.time
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

    /// The sessions in id order (the snapshot order).
    pub fn iter(&self) -> impl Iterator<Item = (u64, &Session)> {
        self.sessions.iter().map(|(&id, session)| (id, session))
    }

    /// Opens session `client_id` (the index of the entry opening it) for
    /// `owner` at the current log time with the current timeout and window,
    /// evicting an idle session if the table is full.
    pub fn open(&mut self, client_id: u64, owner: Option<Arc<str>>) -> Result<OpenedSession, String> {
        assert!(client_id != 0 && !self.sessions.contains_key(&client_id), "session ids are unique log indexes");
        if self.sessions.len() >= self.settings.sessions_max as usize {
            let Some(&(_, victim)) = self.evictable.first() else {
                return Err(format!(
                    "the cluster holds {} sessions (its limit), each with answers its client has not acknowledged; \
                     retry once one closes or expires, or raise the limit (`node admin sessions --max`)",
                    self.sessions.len()
                ));
            };
            self.remove(victim);
        }
        let session = Session {
            last_active: self.time,
            timeout_ms: self.settings.timeout_ms,
            window: self.settings.replies_max,
            floor: 1,
            replies: Replies::default(),
            reply_bytes: 0,
            owner,
        };
        self.by_expiry.insert((session.expires_at(), client_id));
        self.evictable.insert((self.time, client_id));
        let opened = OpenedSession { client_id, timeout_ms: session.timeout_ms, window: session.window };
        self.sessions.insert(client_id, session);
        Ok(opened)
    }

    /// Whether `caller` may write in (or close) session `client_id`:
    /// `None` when the table does not hold it (the caller learns why when
    /// the write is applied), `Some(true)` when it is the owner or the
    /// session has none.
    pub fn owned_by(&self, client_id: u64, caller: &str) -> Option<bool> {
        let session = self.sessions.get(&client_id)?;
        Some(session.owner.as_deref().is_none_or(|owner| owner == caller))
    }

    /// Whether any session has an owner (a snapshot then needs the format
    /// that carries owners, which older builds cannot read).
    pub fn has_owners(&self) -> bool {
        self.sessions.values().any(|session| session.owner.is_some())
    }

    /// Forgets a session; `false` if it was not there.
    pub fn close(&mut self, client_id: u64) -> bool {
        self.remove(client_id)
    }

    fn remove(&mut self, client_id: u64) -> bool {
        let Some(session) = self.sessions.remove(&client_id) else { return false };
        assert!(
            self.by_expiry.remove(&(session.expires_at(), client_id)),
            "session {client_id} not in the expiry order"
        );
        self.evictable.remove(&(session.last_active, client_id));
        true
    }

    /// Decides whether write `sequence` of session `client_id`, sent with
    /// `ack` (at most `sequence`), whose command has fingerprint
    /// `fingerprint` ([`fingerprint`]), must be applied. Any write in a live
    /// session marks it active and drops the answers below `ack`.
    pub fn admit(&mut self, client_id: u64, sequence: u64, ack: u64, fingerprint: u32) -> Admission {
        debug_assert!(sequence >= 1 && ack >= 1 && ack <= sequence, "the envelope's decoder checks these");
        let time = self.time;
        let reply_bytes_max = self.settings.reply_bytes_max as usize;
        let Some(session) = self.sessions.get_mut(&client_id) else {
            return Admission::Refuse(Refusal::Expired);
        };
        let before = (session.expires_at(), session.last_active, session.replies.is_empty());
        session.last_active = time;
        if ack > session.floor {
            session.reply_bytes -= session.replies.drop_below(ack);
            session.floor = ack;
        }
        let highest = session.replies.last_key();
        let admission = if sequence < session.floor {
            Admission::Refuse(Refusal::Stale { floor: session.floor })
        } else if let Some((cached, kept)) = session.replies.get_fingerprinted(sequence) {
            if kept.is_some_and(|kept| kept != fingerprint) {
                Admission::Refuse(Refusal::Reused { sequence })
            } else {
                Admission::Duplicate(cached.clone())
            }
        } else if sequence - session.floor >= u64::from(session.window) {
            Admission::Refuse(Refusal::Full(format!(
                "sequence {sequence} is beyond the session's window: at most {} writes above the lowest one \
                 awaited ({}); receive its answer, then retry",
                session.window, session.floor
            )))
        } else if highest.is_none_or(|highest| sequence > highest) && session.reply_bytes >= reply_bytes_max {
            Admission::Refuse(Refusal::Full(format!(
                "the session holds {} bytes of answers its client has not acknowledged (the limit is \
                 {reply_bytes_max}); receive them, then retry sequence {sequence}",
                session.reply_bytes
            )))
        } else {
            Admission::Apply
        };
        let after = (session.expires_at(), session.last_active, session.replies.is_empty());
        // Most writes change neither the session's time (clock entries come
        // about once a second) nor whether it is idle: no reindexing then.
        if before != after {
            self.reindex(client_id, before, after);
        }
        admission
    }

    /// Keeps the answer to write `sequence`, which [`SessionTable::admit`]
    /// allowed, with its command's `fingerprint`.
    pub fn record(&mut self, client_id: u64, sequence: u64, answer: Cached, fingerprint: u32) {
        let session = self.sessions.get_mut(&client_id).expect("admit allowed a write of a live session");
        assert!(sequence >= session.floor, "record of a write below the floor");
        let before = (session.expires_at(), session.last_active, session.replies.is_empty());
        session.reply_bytes += answer.size();
        let previous = session.replies.insert(sequence, answer, Some(fingerprint));
        assert!(previous.is_none(), "sequence {sequence} of session {client_id} applied twice");
        let after = (session.expires_at(), session.last_active, false);
        if before != after {
            self.reindex(client_id, before, after);
        }
    }

    /// Moves a session in the expiry and eviction orders from its `before`
    /// place (expires at, last active, idle) to its `after` one.
    fn reindex(&mut self, client_id: u64, before: (u64, u64, bool), after: (u64, u64, bool)) {
        assert!(self.by_expiry.remove(&(before.0, client_id)), "session {client_id} not in the expiry order");
        self.by_expiry.insert((after.0, client_id));
        if before.2 {
            self.evictable.remove(&(before.1, client_id));
        }
        if after.2 {
            self.evictable.insert((after.1, client_id));
        }
    }

    /// Advances the log's time to `time` (a clock entry; an older time
    /// changes nothing) and expires the sessions idle for their timeout.
    /// Returns how many expired.
    pub fn advance(&mut self, time: u64) -> usize {
        self.time = self.time.max(time);
        let mut expired = 0;
        while let Some(&(expires_at, client_id)) = self.by_expiry.first() {
            if expires_at > self.time {
                break;
            }
            self.remove(client_id);
            expired += 1;
        }
        expired
    }

    /// Replaces the settings (validated by the caller) for sessions opened
    /// from now on. A lower `sessions_max` evicts idle sessions down to it;
    /// sessions with unacknowledged answers stay until they expire, and no
    /// session opens while the table is over the bound.
    pub fn set_settings(&mut self, settings: SessionSettings) {
        self.settings = settings;
        while self.sessions.len() > settings.sessions_max as usize {
            let Some(&(_, victim)) = self.evictable.first() else { break };
            self.remove(victim);
        }
    }

    /// Checks the table's invariants; returns the first broken one.
    pub fn check_invariants(&self) -> Result<(), String> {
        if self.by_expiry.len() != self.sessions.len() {
            return Err("the expiry order and the sessions differ in size".into());
        }
        let idle = self.sessions.values().filter(|session| session.replies.is_empty()).count();
        if self.evictable.len() != idle {
            return Err(format!("{} sessions in the eviction order, {idle} without answers", self.evictable.len()));
        }
        for (&client_id, session) in &self.sessions {
            if !self.by_expiry.contains(&(session.expires_at(), client_id)) {
                return Err(format!("session {client_id} is not in the expiry order at its place"));
            }
            if session.replies.is_empty() && !self.evictable.contains(&(session.last_active, client_id)) {
                return Err(format!("idle session {client_id} is not in the eviction order at its place"));
            }
            if session.last_active > self.time {
                return Err(format!("session {client_id} was active at {}, after the log time", session.last_active));
            }
            if session.expires_at() <= self.time {
                return Err(format!("session {client_id} outlived its timeout"));
            }
            let keys = session.replies.keys();
            if keys.clone().zip(keys.clone().skip(1)).any(|(lower, higher)| lower >= higher) {
                return Err(format!("session {client_id} keeps its answers out of sequence order"));
            }
            if keys.clone().next().is_some_and(|&lowest| lowest < session.floor) {
                return Err(format!("session {client_id} keeps an answer below its floor"));
            }
            if keys.last().is_some_and(|&highest| highest - session.floor >= u64::from(session.window)) {
                return Err(format!("session {client_id} keeps an answer beyond its window"));
            }
            if session.replies.values().map(Cached::size).sum::<usize>() != session.reply_bytes {
                return Err(format!("session {client_id} counts its answers' bytes wrong"));
            }
        }
        Ok(())
    }

    /// Appends the table to a snapshot: settings, time, then each session
    /// in id order with its answers in sequence order (without their
    /// fingerprints, see the module's "Fingerprints"); with `owners`, each
    /// session's owner after its floor (see [`put_owner`]).
    pub fn encode(&self, out: &mut BytesMut, owners: bool) {
        let settings = self.settings;
        out.put_u32_le(settings.sessions_max);
        out.put_u64_le(settings.timeout_ms);
        out.put_u32_le(settings.replies_max);
        out.put_u32_le(settings.reply_bytes_max);
        out.put_u64_le(self.time);
        out.put_u64_le(self.sessions.len() as u64);
        for (&client_id, session) in &self.sessions {
            out.put_u64_le(client_id);
            out.put_u64_le(session.last_active);
            out.put_u64_le(session.timeout_ms);
            out.put_u32_le(session.window);
            out.put_u64_le(session.floor);
            if owners {
                put_owner(out, session.owner.as_deref());
            }
            out.put_u32_le(session.replies.len() as u32);
            for (&sequence, answer) in session.replies.iter() {
                out.put_u64_le(sequence);
                match answer {
                    Cached::Applied(bytes) => {
                        out.put_u8(0);
                        put_bytes(out, bytes);
                    }
                    Cached::Refused(reason) => {
                        out.put_u8(1);
                        put_bytes(out, reason.as_bytes());
                    }
                }
            }
        }
    }

    /// Reads a table written by [`SessionTable::encode`] (with `owners` as
    /// it was written), checking every bound and invariant (a snapshot may
    /// come from another node).
    pub fn decode(reader: &mut Reader<'_>, snapshot: &Bytes, owners: bool) -> Result<SessionTable, FormatError> {
        let invalid = |reason| FormatError::Invalid { what: "session table", reason };
        let settings = SessionSettings {
            sessions_max: reader.u32("sessions_max")?,
            timeout_ms: reader.u64("session timeout")?,
            replies_max: reader.u32("replies_max")?,
            reply_bytes_max: reader.u32("reply_bytes_max")?,
        };
        validate_settings(&settings).map_err(|_| invalid("settings out of range"))?;
        let mut table = SessionTable::new(settings);
        table.time = reader.u64("log time")?;
        let count = reader.u64("session count")?;
        let mut previous = 0;
        for _ in 0..count {
            let client_id = reader.u64("session id")?;
            if client_id <= previous {
                return Err(invalid("session ids are not strictly increasing"));
            }
            previous = client_id;
            let mut session = Session {
                last_active: reader.u64("last active")?,
                timeout_ms: reader.u64("timeout")?,
                window: reader.u32("window")?,
                floor: reader.u64("floor")?,
                replies: Replies::default(),
                reply_bytes: 0,
                owner: if owners { read_owner(reader)? } else { None },
            };
            let replies_count = reader.u32("answer count")?;
            if replies_count > session.window || session.window == 0 || session.floor == 0 {
                return Err(invalid("a session's window or floor is out of range"));
            }
            for _ in 0..replies_count {
                let sequence = reader.u64("sequence")?;
                let answer = match reader.u8("answer tag")? {
                    0 => Cached::Applied(snapshot.slice_ref(reader.bytes("answer", REPLY_SIZE_MAX)?)),
                    1 => {
                        let reason = std::str::from_utf8(reader.bytes("refusal", REPLY_SIZE_MAX)?)
                            .map_err(|_| invalid("a refusal is not UTF-8"))?;
                        Cached::Refused(reason.to_string())
                    }
                    tag => return Err(FormatError::UnknownTag { what: "cached answer", tag }),
                };
                session.reply_bytes += answer.size();
                if session.replies.insert(sequence, answer, None).is_some() {
                    return Err(invalid("an answer appears twice"));
                }
            }
            table.by_expiry.insert((session.expires_at(), client_id));
            if session.replies.is_empty() {
                table.evictable.insert((session.last_active, client_id));
            }
            table.sessions.insert(client_id, session);
        }
        table.check_invariants().map_err(|_| invalid("the table's invariants do not hold"))?;
        Ok(table)
    }
}

/// Writes a session's owner: a length byte and the name, or `0xFF` for
/// none (a name is at most [`OWNER_SIZE_MAX`] bytes).
pub fn put_owner(out: &mut BytesMut, owner: Option<&str>) {
    match owner {
        Some(name) => {
            assert!(name.len() <= OWNER_SIZE_MAX, "an owner is a user name");
            out.put_u8(name.len() as u8);
            out.put_slice(name.as_bytes());
        }
        None => out.put_u8(0xFF),
    }
}

/// Reads what [`put_owner`] wrote.
pub fn read_owner(reader: &mut Reader<'_>) -> Result<Option<Arc<str>>, FormatError> {
    let len = reader.u8("owner length")?;
    if len == 0xFF {
        return Ok(None);
    }
    if usize::from(len) > OWNER_SIZE_MAX {
        return Err(FormatError::Invalid { what: "session owner", reason: "longer than a user name" });
    }
    let name = reader.take_exact("session owner", usize::from(len))?;
    let name =
        std::str::from_utf8(name).map_err(|_| FormatError::Invalid { what: "session owner", reason: "not UTF-8" })?;
    Ok(Some(Arc::from(name)))
}

/// Checks settings an admin asks for (or a snapshot carries).
pub fn validate_settings(settings: &SessionSettings) -> Result<(), String> {
    if settings.sessions_max == 0 || settings.sessions_max > SESSIONS_MAX_LIMIT {
        return Err(format!("sessions_max must be 1 to {SESSIONS_MAX_LIMIT}"));
    }
    if settings.timeout_ms < TIMEOUT_MS_MIN {
        return Err(format!("the session timeout must be at least {TIMEOUT_MS_MIN} ms"));
    }
    if settings.replies_max == 0 || settings.replies_max > REPLIES_MAX_LIMIT {
        return Err(format!("replies_max must be 1 to {REPLIES_MAX_LIMIT}"));
    }
    if settings.reply_bytes_max == 0 {
        return Err("reply_bytes_max must be at least 1".into());
    }
    Ok(())
}

/// `requested` with its zero fields taken from `current` (an admin request
/// changes only what it names).
pub fn merge_settings(current: SessionSettings, requested: SessionSettings) -> SessionSettings {
    let pick32 = |new: u32, old: u32| if new == 0 { old } else { new };
    SessionSettings {
        sessions_max: pick32(requested.sessions_max, current.sessions_max),
        timeout_ms: if requested.timeout_ms == 0 { current.timeout_ms } else { requested.timeout_ms },
        replies_max: pick32(requested.replies_max, current.replies_max),
        reply_bytes_max: pick32(requested.reply_bytes_max, current.reply_bytes_max),
    }
}
