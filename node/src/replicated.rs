//! The node's replicated state machine, wrapped around the application's:
//! the exactly-once client sessions ([`crate::session`]), the log's clock,
//! and an address book (node id to peer and client addresses) that every
//! replica applies from the log, so a follower can tell a client where the
//! leader is and a member added at run time becomes reachable everywhere.
//!
//! # Log entry payloads (the first byte says which)
//!
//! A **write** is an envelope around the application's command,
//! little-endian:
//!
//! | bytes | field |
//! |---|---|
//! | 1 | [`WRITE_FORMAT`] |
//! | 8 | `client_id`: the session; 0 for a write sent at least once, outside any session |
//! | 8 | `sequence`: from 1 in a session, 0 outside |
//! | 8 | `ack`: 1 to `sequence` in a session, 0 outside |
//! | rest | the application's command |
//!
//! A **group** is several writes proposed as one entry (the writes a
//! leader took in one turn of its shard's loop), each applied as if it were
//! an entry of its own, in order, at the group's index:
//!
//! | bytes | field |
//! |---|---|
//! | 1 | [`GROUP_FORMAT`] |
//! | 4 | count of writes, at least 2 |
//! | then, per write | u32 length, then a write as above |
//!
//! A leader groups writes only once every member of the configuration that
//! applies payloads has said its build reads groups (node command kind 9,
//! or 7 from older builds), so no replica of an older build ever applies a
//! group as malformed while the others apply its writes. Sessions with
//! owners (kind 8) wait the same way for every member to say it reads them.
//!
//! A **node command** starts with [`NODE_COMMAND_FORMAT`] and a kind byte:
//!
//! | kind | command | then |
//! |---|---|---|
//! | 1 | set a member's addresses | id u64, peer and client as optional strings (u8 length, 0xFF for absent) |
//! | 2 | open a session (its id is this entry's index) | the proposing node's id u64, a nonce u64 that finds its client again |
//! | 3 | close a session | client id u64 |
//! | 4 | the log's clock | milliseconds u64 |
//! | 5 | session settings | sessions_max u32, timeout_ms u64, replies_max u32, reply_bytes_max u32 |
//! | 6 | assign a joining node an id | nonce u64, peer and client addresses as in kind 1 (both present) |
//! | 7 | member `id`'s build reads groups (older builds; still read) | id u64 |
//! | 8 | open a session owned by a user (see [`crate::session`], "Owners") | as kind 2, then the owner: u8 length (at most 64) and the name |
//! | 9 | what member `id`'s build reads | id u64, `FEATURE_*` bits u64 |
//! | 10 | how long member `id` refuses votes after it hears a leader | id u64, microseconds u64 |
//!
//! Configuration entries are applied too ([`NodeStateMachine::apply_conf`]):
//! the state machine keeps the highest node id any configuration named and
//! the ids removed, so that id assignment (kind 6) never hands out an id
//! that was used, and a removed node is refused when it comes back.
//!
//! Kinds 9 and 10 change no replicated state: they tell the replicas that
//! apply them about a member (what its build reads, how long a leader's
//! lease may last, see [`NodeStateMachine::votes_held`]), kept in memory
//! only and said again to every new leader. An older build answers kind 10
//! as malformed and is none the worse.
//!
//! Anything else is answered as malformed, identically on every replica.
//! Node commands never reach the application.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use engine::{Index, NodeId};
use net::compact::{FormatError, Reader};
use net::session::OpenedSession;
use net::SessionSettings;

use crate::app::{RestoreError, RestoredState, Restorer, SnapshotImage, StateMachine};
use crate::session::{validate_settings, Admission, Cached, Refusal, SessionTable};

/// The first byte of a write's envelope.
pub const WRITE_FORMAT: u8 = 2;
/// Bytes of a write's envelope before the application's command.
pub const WRITE_HEADER_SIZE: usize = 25;
/// The first byte of a group of writes.
pub const GROUP_FORMAT: u8 = 3;
/// Bytes of a group before its first write's length: format and count.
pub const GROUP_HEADER_SIZE: usize = 5;
/// The most bytes of a group entry, header included; a write that would take
/// a group past it starts the next one, and a larger write is an entry of
/// its own. Small enough that a group's buffer comes from the allocator's
/// heap, never a fresh mapping whose every page faults in on first touch (a
/// 1 MiB bound made 4 KiB values slower), and large enough for a turn's
/// worth of small writes (about 200 of 256 bytes).
pub const GROUP_BYTES_MAX: usize = 64 << 10;
/// The first byte of a node command entry.
pub const NODE_COMMAND_FORMAT: u8 = 0x80;
/// The longest address accepted in the address book.
pub const ADDRESS_LEN_MAX: usize = 254;
const SNAPSHOT_MAGIC: &[u8; 4] = b"NDSN";
/// The node snapshot format this code writes and reads when some session
/// has an owner: version 3 with each session's owner after its floor.
pub const SNAPSHOT_VERSION: u16 = 4;
/// The format before sessions had owners, still written while none has
/// one (so a cluster being upgraded sends its older members snapshots they
/// read: owners appear only once every member runs this build) and read.
const SNAPSHOT_VERSION_UNOWNED: u16 = 3;
/// The format before snapshots were streamed (no node section length) and
/// before membership bookkeeping (the id counter then starts above the
/// address book's ids), still read.
const SNAPSHOT_VERSION_WHOLE: u16 = 2;
/// The largest node section (sessions, address book and member ids) a
/// snapshot may claim, checked before it is read into memory.
const SNAPSHOT_NODE_SECTION_MAX: u64 = 1 << 30;

const KIND_SET_ADDRESSES: u8 = 1;
const KIND_OPEN_SESSION: u8 = 2;
const KIND_CLOSE_SESSION: u8 = 3;
const KIND_CLOCK: u8 = 4;
const KIND_SESSION_SETTINGS: u8 = 5;
const KIND_ASSIGN_ID: u8 = 6;
const KIND_READS_GROUPS: u8 = 7;
const KIND_OPEN_OWNED_SESSION: u8 = 8;
const KIND_FEATURES: u8 = 9;
const KIND_VOTES_HELD: u8 = 10;

/// What a member's build reads, as it says in a [`NodeCommand::Features`]:
/// groups of writes (format 3).
pub const FEATURE_GROUPS: u64 = 1;
/// ... and sessions with owners (node command kind 8, snapshot version 4).
pub const FEATURE_SESSION_OWNERS: u64 = 2;
/// Everything this build reads.
pub const FEATURES: u64 = FEATURE_GROUPS | FEATURE_SESSION_OWNERS;
/// A write as it travels through the log: its session and the
/// application's command (borrowed from the entry).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Write<'a> {
    pub client_id: u64,
    pub sequence: u64,
    pub ack: u64,
    pub command: &'a [u8],
}

impl<'a> Write<'a> {
    /// Appends the envelope to `out`.
    pub fn encode_into(&self, out: &mut BytesMut) {
        out.put_u8(WRITE_FORMAT);
        out.put_u64_le(self.client_id);
        out.put_u64_le(self.sequence);
        out.put_u64_le(self.ack);
        out.put_slice(self.command);
    }

    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(WRITE_HEADER_SIZE + self.command.len());
        self.encode_into(&mut out);
        out.freeze()
    }

    /// Reads an envelope, checking its session fields: in a session,
    /// `1 <= ack <= sequence`; outside one, both 0.
    pub fn decode(bytes: &'a [u8]) -> Result<Write<'a>, FormatError> {
        let mut reader = Reader::new(bytes);
        let format = reader.u8("write format")?;
        if format != WRITE_FORMAT {
            return Err(FormatError::UnknownTag { what: "write format", tag: format });
        }
        let write = Write {
            client_id: reader.u64("client id")?,
            sequence: reader.u64("sequence")?,
            ack: reader.u64("ack")?,
            command: reader.rest(),
        };
        write.check().map_err(|reason| FormatError::Invalid { what: "write session", reason })?;
        Ok(write)
    }

    /// Whether the session fields are consistent (see [`Write::decode`]).
    pub fn check(&self) -> Result<(), &'static str> {
        if self.client_id == 0 {
            if self.sequence != 0 || self.ack != 0 {
                return Err("a write outside a session has sequence and ack 0");
            }
        } else if self.sequence == 0 || self.ack == 0 || self.ack > self.sequence {
            return Err("in a session, sequences start at 1 and ack is 1 to the sequence");
        }
        Ok(())
    }
}

/// Commands handed to [`StateMachine::prefetch`] at once.
const PREFETCH_CHUNK: usize = 64;

/// Bytes of each buffer [`encode_write_in`] carves envelopes from.
pub const WRITE_ARENA_BYTES: usize = 64 << 10;

/// Encodes a write's envelope into `arena` and splits it off. Envelopes
/// carved from one buffer are shared slices of it, so the log's clones of an
/// entry cost no allocation; a `Bytes` of its own is promoted, with an
/// allocation, on its first clone (a few percent of a leader's CPU in
/// profiles). A buffer is freed once every envelope in it is.
pub fn encode_write_in(arena: &mut BytesMut, write: &Write<'_>) -> Bytes {
    let size = WRITE_HEADER_SIZE + write.command.len();
    if arena.capacity() - arena.len() < size {
        *arena = BytesMut::with_capacity(WRITE_ARENA_BYTES.max(size));
    }
    write.encode_into(arena);
    arena.split().freeze()
}

/// The writes of a group entry (each a write's bytes), as far as its framing
/// holds; for reading a group outside `apply` (prefetch, tools).
pub fn group_writes(group: &[u8]) -> impl Iterator<Item = &[u8]> + '_ {
    let mut reader = Reader::new(group.get(GROUP_HEADER_SIZE..).unwrap_or_default());
    std::iter::from_fn(move || {
        let len = reader.u32("write length").ok()?;
        reader.take_exact("write", len as usize).ok()
    })
}

/// Gathers writes into one log entry: a group when there are several, the
/// write's own envelope when there is one (so a lone write, as at one write
/// in flight, is the entry it always was). Bytes are carved from a shared
/// buffer, as [`encode_write_in`]'s are, and each write of a group can be
/// taken out again without a copy ([`GroupBuilder::finish`] with `split`).
#[derive(Default)]
pub struct GroupBuilder {
    buffer: BytesMut,
    count: u32,
}

impl GroupBuilder {
    /// Writes gathered so far.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// Bytes the group would take.
    pub fn len_bytes(&self) -> usize {
        self.buffer.len()
    }

    /// Adds a write. The caller proposes the group first when this write
    /// would take it past [`GROUP_BYTES_MAX`] (a group's buffer then never
    /// grows: each group starts with room for the largest one).
    pub fn push(&mut self, write: &Write<'_>) {
        let size = 4 + WRITE_HEADER_SIZE + write.command.len();
        if self.count == 0 {
            // `reserve` takes the buffer back whole when the last group
            // carved from it is gone (the leader's log keeps a copy in its
            // entry batch, not the group), so a leader reuses one buffer
            // instead of allocating 64 KiB per turn.
            self.buffer.reserve(GROUP_BYTES_MAX.max(GROUP_HEADER_SIZE + size));
            self.buffer.put_u8(GROUP_FORMAT);
            self.buffer.put_u32_le(0);
        }
        self.buffer.put_u32_le((WRITE_HEADER_SIZE + write.command.len()) as u32);
        write.encode_into(&mut self.buffer);
        self.count += 1;
    }

    /// The gathered writes as entries, and the builder emptied: one entry
    /// (a group, or a lone write's envelope) unless `split`, which gives
    /// each write its own entry, in order.
    pub fn finish(&mut self, split: bool) -> Vec<Bytes> {
        let count = std::mem::take(&mut self.count);
        if count == 0 {
            return Vec::new();
        }
        let mut group = self.buffer.split();
        group[1..GROUP_HEADER_SIZE].copy_from_slice(&count.to_le_bytes());
        let group = group.freeze();
        if count > 1 && !split {
            return vec![group];
        }
        let mut writes = Vec::with_capacity(count as usize);
        let mut at = GROUP_HEADER_SIZE;
        while at < group.len() {
            let len = u32::from_le_bytes(group[at..at + 4].try_into().expect("four bytes")) as usize;
            writes.push(group.slice(at + 4..at + 4 + len));
            at += 4 + len;
        }
        writes
    }
}

/// A node command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeCommand {
    /// Set a member's addresses (an absent one is left as is).
    SetAddresses(SetAddresses),
    /// Open a session for `owner` (see `session`, "Owners"; `None`: any
    /// user, as older builds opened them); `proposer` and `nonce` find the
    /// waiting client.
    OpenSession {
        proposer: NodeId,
        nonce: u64,
        owner: Option<Arc<str>>,
    },
    CloseSession {
        client_id: u64,
    },
    /// Advance the log's time to `millis` (never backwards).
    Clock {
        millis: u64,
    },
    SessionSettings(SessionSettings),
    /// Give a joining node a fresh id (see [`NodeStateMachine`]).
    AssignId {
        nonce: u64,
        peer: String,
        client: String,
    },
    /// Member `id` runs a build that reads groups of writes (what builds
    /// before [`NodeCommand::Features`] said; still read).
    ReadsGroups {
        id: NodeId,
    },
    /// Member `id` runs a build that reads `features` (`FEATURE_*` bits).
    Features {
        id: NodeId,
        features: u64,
    },
    /// Member `id` refuses votes for `micros` after it hears a leader, or
    /// after it starts (its `--election-ticks-min` times its
    /// `--tick-interval`): no leader's lease may last longer in real time
    /// (see [`NodeStateMachine::votes_held`]).
    VotesHeld {
        id: NodeId,
        micros: u64,
    },
}

/// A member's addresses, as a node command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetAddresses {
    pub id: NodeId,
    pub peer: Option<String>,
    pub client: Option<String>,
}

impl SetAddresses {
    pub fn encode(&self) -> Bytes {
        NodeCommand::SetAddresses(self.clone()).encode()
    }
}

impl NodeCommand {
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::new();
        out.put_u8(NODE_COMMAND_FORMAT);
        let put_address = |out: &mut BytesMut, value: Option<&String>| match value {
            Some(text) => {
                let text = &text.as_bytes()[..text.len().min(ADDRESS_LEN_MAX)];
                out.put_u8(text.len() as u8);
                out.put_slice(text);
            }
            None => out.put_u8(0xFF),
        };
        match self {
            NodeCommand::SetAddresses(set) => {
                out.put_u8(KIND_SET_ADDRESSES);
                out.put_u64_le(set.id);
                put_address(&mut out, set.peer.as_ref());
                put_address(&mut out, set.client.as_ref());
            }
            NodeCommand::AssignId { nonce, peer, client } => {
                out.put_u8(KIND_ASSIGN_ID);
                out.put_u64_le(*nonce);
                put_address(&mut out, Some(peer));
                put_address(&mut out, Some(client));
            }
            NodeCommand::OpenSession { proposer, nonce, owner } => {
                out.put_u8(if owner.is_some() { KIND_OPEN_OWNED_SESSION } else { KIND_OPEN_SESSION });
                out.put_u64_le(*proposer);
                out.put_u64_le(*nonce);
                if let Some(owner) = owner {
                    crate::session::put_owner(&mut out, Some(owner));
                }
            }
            NodeCommand::CloseSession { client_id } => {
                out.put_u8(KIND_CLOSE_SESSION);
                out.put_u64_le(*client_id);
            }
            NodeCommand::Clock { millis } => {
                out.put_u8(KIND_CLOCK);
                out.put_u64_le(*millis);
            }
            NodeCommand::ReadsGroups { id } => {
                out.put_u8(KIND_READS_GROUPS);
                out.put_u64_le(*id);
            }
            NodeCommand::Features { id, features } => {
                out.put_u8(KIND_FEATURES);
                out.put_u64_le(*id);
                out.put_u64_le(*features);
            }
            NodeCommand::VotesHeld { id, micros } => {
                out.put_u8(KIND_VOTES_HELD);
                out.put_u64_le(*id);
                out.put_u64_le(*micros);
            }
            NodeCommand::SessionSettings(settings) => {
                out.put_u8(KIND_SESSION_SETTINGS);
                out.put_u32_le(settings.sessions_max);
                out.put_u64_le(settings.timeout_ms);
                out.put_u32_le(settings.replies_max);
                out.put_u32_le(settings.reply_bytes_max);
            }
        }
        out.freeze()
    }

    /// Reads a node command; `None` if `data` is not one.
    pub fn decode(data: &[u8]) -> Option<NodeCommand> {
        let mut reader = Reader::new(data);
        if reader.u8("format").ok()? != NODE_COMMAND_FORMAT {
            return None;
        }
        fn read_address(reader: &mut Reader<'_>) -> Option<Option<String>> {
            let len = reader.u8("address length").ok()?;
            if len == 0xFF {
                return Some(None);
            }
            let text = reader.take_exact("address", usize::from(len)).ok()?;
            Some(Some(std::str::from_utf8(text).ok()?.to_string()))
        }
        let command = match reader.u8("kind").ok()? {
            KIND_SET_ADDRESSES => {
                let id = reader.u64("id").ok()?;
                let peer = read_address(&mut reader)?;
                let client = read_address(&mut reader)?;
                NodeCommand::SetAddresses(SetAddresses { id, peer, client })
            }
            KIND_ASSIGN_ID => {
                let nonce = reader.u64("nonce").ok()?;
                let peer = read_address(&mut reader)??;
                let client = read_address(&mut reader)??;
                NodeCommand::AssignId { nonce, peer, client }
            }
            kind @ (KIND_OPEN_SESSION | KIND_OPEN_OWNED_SESSION) => {
                let (proposer, nonce) = (reader.u64("proposer").ok()?, reader.u64("nonce").ok()?);
                let owner = match kind {
                    KIND_OPEN_OWNED_SESSION => Some(crate::session::read_owner(&mut reader).ok()??),
                    _ => None,
                };
                NodeCommand::OpenSession { proposer, nonce, owner }
            }
            KIND_CLOSE_SESSION => NodeCommand::CloseSession { client_id: reader.u64("client id").ok()? },
            KIND_CLOCK => NodeCommand::Clock { millis: reader.u64("millis").ok()? },
            KIND_READS_GROUPS => NodeCommand::ReadsGroups { id: reader.u64("id").ok()? },
            KIND_FEATURES => {
                NodeCommand::Features { id: reader.u64("id").ok()?, features: reader.u64("features").ok()? }
            }
            KIND_VOTES_HELD => {
                NodeCommand::VotesHeld { id: reader.u64("id").ok()?, micros: reader.u64("micros").ok()? }
            }
            KIND_SESSION_SETTINGS => NodeCommand::SessionSettings(SessionSettings {
                sessions_max: reader.u32("sessions_max").ok()?,
                timeout_ms: reader.u64("timeout").ok()?,
                replies_max: reader.u32("replies_max").ok()?,
                reply_bytes_max: reader.u32("reply_bytes_max").ok()?,
            }),
            _ => return None,
        };
        reader.finish("node command").ok()?;
        Some(command)
    }
}

/// Where a member can be reached.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Addresses {
    /// The address other nodes connect to (Raft traffic), if known.
    pub peer: Option<String>,
    /// The address clients connect to, if known.
    pub client: Option<String>,
}

/// What applying one entry did, for the driver to answer its client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// A write: its session (`None` outside one) and the outcome.
    Write { session: Option<(u64, u64)>, outcome: Outcome },
    /// A session was opened (`Ok` with its id, timeout and window) or
    /// refused, for the client the proposing node finds by `nonce`.
    SessionOpened { proposer: NodeId, nonce: u64, result: Result<OpenedSession, String> },
    /// A session was closed (or was not there).
    SessionClosed { client_id: u64 },
    /// Member `id`'s addresses changed.
    AddressesSet { id: NodeId },
    /// A joining node was given an id (or refused one).
    IdAssigned { result: Result<NodeId, String> },
    /// A group's writes, each an [`Applied::Write`], in the group's order; a
    /// group that does not decode at all is one malformed `Write`.
    Group(Vec<Applied>),
    /// Another node command (or a malformed entry): nothing for a client
    /// beyond an empty `Ok`, or the refusal.
    Node(Result<(), String>),
}

/// The outcome of a write for its client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Applied now or, for a retry, earlier.
    Done(Cached),
    /// Not applied: the session refused it.
    Refused(Refusal),
    /// Not applied: the entry does not decode.
    Malformed(String),
}

/// The application's state machine plus the node's sessions, clock and
/// address book.
pub struct NodeStateMachine<S> {
    pub app: S,
    sessions: SessionTable,
    addresses: BTreeMap<NodeId, Addresses>,
    /// Membership bookkeeping, from applied configuration entries and id
    /// assignments.
    ids: MemberIds,
    /// The last index applied (application or node command, no-op or
    /// configuration). Invariant: never decreases, except by a restore.
    applied: Index,
    /// What members said their builds read (`FEATURE_*` bits, from node
    /// commands kind 7 and 9), as applied since this process started or
    /// restored. Not replicated state: it only tells a node whether it may
    /// propose what every member must read (groups of writes, sessions
    /// with owners; how those are applied does not depend on it), so it
    /// stays out of snapshots, and members say it again to every new
    /// leader.
    features: BTreeMap<NodeId, u64>,
    /// How long each member said it refuses votes after it hears a leader
    /// (node command kind 10): not replicated state either, like
    /// `features`, and said again to every new leader. With the index of
    /// the entry that said it.
    votes_held: BTreeMap<NodeId, (Duration, Index)>,
    /// Whether this replica has seen a session with an owner, applied or
    /// restored: the log's proof that every member read owners when it was
    /// opened (see [`NodeStateMachine::sessions_get_owners`]). Never
    /// cleared.
    owners_seen: bool,
}

impl<S: StateMachine> NodeStateMachine<S> {
    pub fn new(app: S) -> NodeStateMachine<S> {
        NodeStateMachine {
            app,
            sessions: SessionTable::default(),
            addresses: BTreeMap::new(),
            ids: MemberIds::default(),
            applied: 0,
            features: BTreeMap::new(),
            votes_held: BTreeMap::new(),
            owners_seen: false,
        }
    }

    /// Whether member `id` said its build reads every feature of
    /// `features`.
    pub fn reads(&self, id: NodeId, features: u64) -> bool {
        self.features.get(&id).is_some_and(|&has| has & features == features)
    }

    /// Whether member `id` said its build reads groups of writes.
    pub fn reads_groups(&self, id: NodeId) -> bool {
        self.reads(id, FEATURE_GROUPS)
    }

    /// How long member `id` said it refuses votes after it hears a leader
    /// or starts, as applied here since this process started; `None` when
    /// it has not said (an older build, or not yet in this process's life).
    /// A leader's lease rests on its voters refusing votes while it holds,
    /// so it may last no longer than the shortest of these, whatever this
    /// node's own settings (`Shard::lease_length`).
    pub fn votes_held(&self, id: NodeId) -> Option<Duration> {
        self.votes_held.get(&id).map(|&(held, _)| held)
    }

    /// [`NodeStateMachine::votes_held`] with the index of the entry that
    /// said it.
    pub fn votes_held_said_at(&self, id: NodeId) -> Option<(Duration, Index)> {
        self.votes_held.get(&id).copied()
    }

    /// Whether every member of `conf` that applies payloads (all but
    /// witnesses) reads `features`: entries that need them may then be
    /// proposed.
    pub fn all_read(&self, conf: &engine::ConfState, features: u64) -> bool {
        conf.voters
            .iter()
            .chain(&conf.voters_outgoing)
            .chain(&conf.learners)
            .all(|&id| conf.is_witness(id) || self.reads(id, features))
    }

    /// Whether sessions opened now get owners: every member of `conf` said
    /// it reads them, or an owned session was seen already (announcements
    /// are not replicated state: a replica restarted or restored from a
    /// snapshot has not seen the ones made earlier in the term, and would
    /// open sessions without owners until the next term's; an owned
    /// session in its log or snapshot says the gate opened).
    pub fn sessions_get_owners(&self, conf: &engine::ConfState) -> bool {
        self.owners_seen || self.all_read(conf, FEATURE_SESSION_OWNERS)
    }

    /// Whether every member of `conf` that applies payloads reads groups: a
    /// leader may then propose them.
    pub fn all_read_groups(&self, conf: &engine::ConfState) -> bool {
        self.all_read(conf, FEATURE_GROUPS)
    }

    /// Whether `caller` may write in (or close) session `client_id`, by the
    /// sessions applied here: `Some(true)` when it is the session's owner,
    /// the session has none, or the table does not hold it although its
    /// opening index is applied (it expired, was closed or never opened:
    /// applying the write says so); `Some(false)` when it belongs to another
    /// user; `None` when its opening index is not applied here yet (ask
    /// again later).
    pub fn may_use_session(&self, client_id: u64, caller: &str) -> Option<bool> {
        match self.sessions.owned_by(client_id, caller) {
            Some(owned) => Some(owned),
            None if client_id <= self.applied => Some(true),
            None => None,
        }
    }

    /// Whether node `id` was removed from the cluster (it is never a member
    /// again: ids are not reused).
    pub fn is_removed(&self, id: NodeId) -> bool {
        self.ids.removed.contains(&id)
    }

    /// The ids removed from the cluster.
    pub fn removed(&self) -> &BTreeSet<NodeId> {
        &self.ids.removed
    }

    /// The id the next joining node gets (the highest id ever used, plus one).
    pub fn next_id(&self) -> NodeId {
        self.ids.next_id(&self.addresses)
    }

    /// Applies a committed configuration entry at `index`: records the ids
    /// it names and the ids it removes.
    pub fn apply_conf(&mut self, index: Index, data: &[u8]) {
        self.skip(index);
        let Ok(change) = engine::ConfChange::decode(data) else { return };
        for op in change.ops {
            match op {
                engine::ConfChangeOp::AddVoter(id)
                | engine::ConfChangeOp::AddLearner(id)
                | engine::ConfChangeOp::AddWitness(id) => {
                    self.ids.high = self.ids.high.max(id);
                }
                engine::ConfChangeOp::Remove(id) => {
                    self.ids.high = self.ids.high.max(id);
                    self.ids.removed.insert(id);
                }
            }
        }
    }

    /// Notes the members of a configuration this state machine did not
    /// apply entry by entry (a snapshot's), so that their ids are never
    /// assigned.
    pub fn note_members(&mut self, members: &[NodeId]) {
        if let Some(&high) = members.iter().max() {
            self.ids.high = self.ids.high.max(high);
        }
    }

    pub fn addresses(&self, id: NodeId) -> Option<&Addresses> {
        self.addresses.get(&id)
    }

    pub fn address_book(&self) -> &BTreeMap<NodeId, Addresses> {
        &self.addresses
    }

    pub fn sessions(&self) -> &SessionTable {
        &self.sessions
    }

    /// The last index applied.
    pub fn applied(&self) -> Index {
        self.applied
    }

    /// Records that `index` was applied without a command (a no-op or a
    /// configuration entry), so reads waiting for it can proceed.
    pub fn skip(&mut self, index: Index) {
        self.applied = self.applied.max(index);
    }

    /// Answers a read from the application's applied state.
    pub fn query(&self, query: &[u8]) -> Result<Bytes, crate::app::Rejection> {
        self.app.query(query)
    }

    /// Applies a committed normal entry at `index`.
    pub fn apply(&mut self, index: Index, data: &Bytes) -> Applied {
        assert!(index > self.applied, "apply at index {index} after {}", self.applied);
        self.applied = index;
        match data.first() {
            Some(&NODE_COMMAND_FORMAT) => self.apply_node_command(index, data),
            Some(&GROUP_FORMAT) => self.apply_group(index, data),
            _ => self.apply_write(index, data, data),
        }
    }

    /// Applies a group's writes in order, each as if it were an entry of its
    /// own (its session admission, answer and refusal), at the group's
    /// index. A write whose length does not fit is malformed, and so is
    /// every write after it.
    fn apply_group(&mut self, index: Index, data: &Bytes) -> Applied {
        let malformed = |reason: String| Applied::Write { session: None, outcome: Outcome::Malformed(reason) };
        let mut reader = Reader::new(&data[1..]);
        let count = match reader.u32("group count") {
            // Each write takes at least its length and header, so a count
            // the bytes cannot hold is refused before anything is allocated.
            Ok(count) if (count as usize) <= reader.remaining() / (4 + WRITE_HEADER_SIZE) => count,
            Ok(count) => return malformed(format!("bad group: {count} writes in {} bytes", data.len())),
            Err(error) => return malformed(format!("bad group: {error}")),
        };
        let mut applied = Vec::with_capacity(count as usize);
        let mut broken = None;
        for _ in 0..count {
            if broken.is_none() {
                let framed = reader.u32("write length").and_then(|len| reader.take_exact("write", len as usize));
                match framed {
                    Ok(write) => {
                        applied.push(self.apply_write(index, write, data));
                        continue;
                    }
                    Err(error) => broken = Some(format!("bad group: {error}")),
                }
            }
            applied.push(malformed(broken.clone().unwrap_or_default()));
        }
        Applied::Group(applied)
    }

    /// Applies one write, `data`, which lies in the entry buffer `entry`.
    fn apply_write(&mut self, index: Index, data: &[u8], entry: &Bytes) -> Applied {
        let write = match Write::decode(data) {
            Ok(write) => write,
            Err(error) => {
                return Applied::Write { session: None, outcome: Outcome::Malformed(format!("bad write: {error}")) }
            }
        };
        let execute = |app: &mut S| match app.apply_in(index, write.command, entry) {
            Ok(answer) => Cached::Applied(answer),
            Err(refusal) => Cached::Refused(refusal.0),
        };
        if write.client_id == 0 {
            return Applied::Write { session: None, outcome: Outcome::Done(execute(&mut self.app)) };
        }
        let session = Some((write.client_id, write.sequence));
        let fingerprint = crate::session::fingerprint(write.command);
        let outcome = match self.sessions.admit(write.client_id, write.sequence, write.ack, fingerprint) {
            Admission::Apply => {
                let answer = execute(&mut self.app);
                self.sessions.record(write.client_id, write.sequence, answer.clone(), fingerprint);
                Outcome::Done(answer)
            }
            Admission::Duplicate(answer) => Outcome::Done(answer),
            Admission::Refuse(refusal) => Outcome::Refused(refusal),
        };
        Applied::Write { session, outcome }
    }

    fn apply_node_command(&mut self, index: Index, data: &[u8]) -> Applied {
        let Some(command) = NodeCommand::decode(data) else {
            return Applied::Node(Err("malformed node command".into()));
        };
        match command {
            NodeCommand::SetAddresses(set) => {
                let entry = self.addresses.entry(set.id).or_default();
                if set.peer.is_some() {
                    entry.peer = set.peer;
                }
                if set.client.is_some() {
                    entry.client = set.client;
                }
                Applied::AddressesSet { id: set.id }
            }
            NodeCommand::OpenSession { proposer, nonce, owner } => {
                self.owners_seen |= owner.is_some();
                let result = self.sessions.open(index, owner);
                Applied::SessionOpened { proposer, nonce, result }
            }
            NodeCommand::CloseSession { client_id } => {
                self.sessions.close(client_id);
                Applied::SessionClosed { client_id }
            }
            NodeCommand::Clock { millis } => {
                self.sessions.advance(millis);
                Applied::Node(Ok(()))
            }
            NodeCommand::ReadsGroups { id } => {
                *self.features.entry(id).or_default() |= FEATURE_GROUPS;
                Applied::Node(Ok(()))
            }
            NodeCommand::Features { id, features } => {
                *self.features.entry(id).or_default() |= features;
                Applied::Node(Ok(()))
            }
            NodeCommand::VotesHeld { id, micros } => {
                // The latest word replaces the last: a member restarted with
                // other settings says so again.
                self.votes_held.insert(id, (Duration::from_micros(micros), index));
                Applied::Node(Ok(()))
            }
            NodeCommand::SessionSettings(settings) => match validate_settings(&settings) {
                Ok(()) => {
                    self.sessions.set_settings(settings);
                    Applied::Node(Ok(()))
                }
                Err(reason) => Applied::Node(Err(reason)),
            },
            NodeCommand::AssignId { nonce, peer, client } => {
                Applied::IdAssigned { result: self.assign_id(nonce, peer, client) }
            }
        }
    }

    /// A fresh id for a joining node: above every id any configuration, the
    /// address book or an earlier assignment used. The same nonce gets the
    /// same id (a retry); a peer address that a node not removed already has
    /// is refused (that node joined already).
    fn assign_id(&mut self, nonce: u64, peer: String, client: String) -> Result<NodeId, String> {
        if let Some(&id) = self.ids.joins.get(&nonce) {
            return Ok(id);
        }
        let holder = self
            .addresses
            .iter()
            .find(|(id, addresses)| addresses.peer.as_deref() == Some(peer.as_str()) && !self.ids.removed.contains(id));
        if let Some((&id, _)) = holder {
            return Err(format!(
                "peer address {peer} already belongs to node {id}: that node has joined already (restart it with \
                 its own data directory, which keeps its id), or remove node {id} first"
            ));
        }
        let id = self.ids.next_id(&self.addresses);
        self.ids.high = id;
        self.ids.joins.insert(nonce, id);
        self.addresses.insert(id, Addresses { peer: Some(peer), client: Some(client) });
        Ok(id)
    }

    /// Hands the application the commands of a committed batch (see
    /// [`StateMachine::prefetch`]).
    pub fn prefetch<'e>(&self, entries: &'e [engine::Entry]) {
        // In chunks from a buffer on the stack: a list of the batch's
        // commands cost an allocation per batch (a group holds about a
        // hundred writes: 0.7 % of the nodes' CPU at 256 writes in flight,
        // by profile; grown by doubling it had cost twice that), and a
        // chunk still overlaps the misses of many keys.
        let mut chunk: [&'e [u8]; PREFETCH_CHUNK] = [&[]; PREFETCH_CHUNK];
        let mut len = 0;
        let mut add = |command: &'e [u8]| {
            chunk[len] = command;
            len += 1;
            if len == PREFETCH_CHUNK {
                self.app.prefetch(&chunk);
                len = 0;
            }
        };
        for entry in entries.iter().filter(|entry| entry.kind == engine::EntryKind::Normal) {
            if entry.data.first() == Some(&GROUP_FORMAT) {
                group_writes(&entry.data).filter_map(|write| Write::decode(write).ok()).for_each(|w| add(w.command));
            } else if let Ok(write) = Write::decode(&entry.data) {
                add(write.command);
            }
        }
        if len > 0 {
            self.app.prefetch(&chunk[..len]);
        }
    }

    /// Captures the whole replicated state for a snapshot. Layout: magic,
    /// u16 version, u16 reserved, u64 applied index, u64 length of the node
    /// section, the node section: the session table
    /// ([`SessionTable::encode`]), u32 address count and each address as a
    /// u16 length and a set-addresses command; then the application's
    /// snapshot (the rest). Deterministic: everything is sorted. The length
    /// lets a restore read the (small) node section whole and stream the
    /// application's part.
    pub fn snapshot_image(&self) -> Box<dyn SnapshotImage> {
        let head = encode_snapshot_head(self.applied, &self.sessions, &self.addresses, &self.ids);
        Box::new(NodeImage { head, app: self.app.snapshot_image() })
    }

    /// See [`StateMachine::before_image`]: the shard calls it right before
    /// [`NodeStateMachine::snapshot_image`].
    pub fn before_image(&mut self) {
        self.app.before_image()
    }

    /// The snapshot's bytes now, in memory (tests and checks).
    pub fn snapshot(&self) -> Bytes {
        let mut out = Vec::new();
        self.snapshot_image().write_to(&mut out).expect("writing to memory cannot fail");
        out.into()
    }

    /// Replaces the whole state with a snapshot's, read piece by piece from
    /// `snapshot`, or leaves it untouched and says what is wrong with it.
    /// Reads the current format and version 2 (before snapshots were
    /// streamed; read whole, as it was written).
    pub fn restore_from(&mut self, snapshot: &mut dyn Read) -> Result<(), RestoreError> {
        let (section, whole) = NodeSection::read(snapshot)?;
        match whole {
            Some(app) => self.app.restore_from(&mut &app[..])?,
            None => self.app.restore_from(snapshot)?,
        }
        self.install(section);
        Ok(())
    }

    /// The application's restorer, if it builds its state off the driver
    /// (see [`StateMachine::restorer`]).
    pub fn restorer(&self) -> Option<Box<dyn Restorer>> {
        self.app.restorer()
    }

    /// Replaces the whole state with one restored off the driver (see
    /// [`restore_with`]); returns the application state it replaced.
    pub fn adopt(&mut self, restored: RestoredNode) -> RestoredState {
        let replaced = self.app.adopt(restored.app);
        self.install(restored.section);
        replaced
    }

    fn install(&mut self, section: NodeSection) {
        self.owners_seen |= section.sessions.has_owners();
        self.sessions = section.sessions;
        self.addresses = section.addresses;
        self.ids = section.ids;
        self.applied = section.applied;
    }

    /// Checks the sessions' invariants; returns the first broken one.
    pub fn check_invariants(&self) -> Result<(), String> {
        self.sessions.check_invariants()
    }
}

/// What the replicated state knows of node ids beyond the address book.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct MemberIds {
    /// The highest id any applied configuration or assignment used.
    high: NodeId,
    /// Ids removed by an applied configuration: never members again.
    removed: BTreeSet<NodeId>,
    /// Assignments by the joining node's nonce, so that a retry gets the
    /// same id.
    joins: BTreeMap<u64, NodeId>,
}

impl MemberIds {
    fn next_id(&self, addresses: &BTreeMap<NodeId, Addresses>) -> NodeId {
        let book = addresses.keys().next_back().copied().unwrap_or(0);
        self.high.max(book) + 1
    }

    /// u64 high, u32 count and the removed ids, u32 count and (nonce, id)
    /// pairs, all little-endian and sorted.
    fn encode(&self, out: &mut BytesMut) {
        out.put_u64_le(self.high);
        out.put_u32_le(self.removed.len() as u32);
        for id in &self.removed {
            out.put_u64_le(*id);
        }
        out.put_u32_le(self.joins.len() as u32);
        for (nonce, id) in &self.joins {
            out.put_u64_le(*nonce);
            out.put_u64_le(*id);
        }
    }

    fn decode(reader: &mut Reader<'_>) -> Result<MemberIds, FormatError> {
        let high = reader.u64("highest id")?;
        let mut removed = BTreeSet::new();
        for _ in 0..reader.u32("removed count")? {
            removed.insert(reader.u64("removed id")?);
        }
        let mut joins = BTreeMap::new();
        for _ in 0..reader.u32("join count")? {
            let nonce = reader.u64("join nonce")?;
            joins.insert(nonce, reader.u64("joined id")?);
        }
        Ok(MemberIds { high, removed, joins })
    }
}

/// The node's part of a snapshot (sessions, address book, member ids) and
/// its applied index.
struct NodeSection {
    applied: Index,
    sessions: SessionTable,
    addresses: BTreeMap<NodeId, Addresses>,
    ids: MemberIds,
}

impl NodeSection {
    /// Reads a node snapshot's header and node section from `snapshot`,
    /// which is left at the application's part; for a version 2 snapshot
    /// (read whole) it returns the application's part too.
    fn read(snapshot: &mut dyn Read) -> Result<(NodeSection, Option<Bytes>), RestoreError> {
        let bad = |what: String| RestoreError(format!("node snapshot: {what}"));
        let mut fixed = [0u8; 24];
        snapshot.read_exact(&mut fixed).map_err(|_| bad("missing header (not a node snapshot)".into()))?;
        if &fixed[..4] != SNAPSHOT_MAGIC {
            return Err(bad("missing header (not a node snapshot)".into()));
        }
        let mut reader = Reader::new(&fixed[4..]);
        let version = reader.u16("version").map_err(|error| bad(error.to_string()))?;
        if ![SNAPSHOT_VERSION_WHOLE, SNAPSHOT_VERSION_UNOWNED, SNAPSHOT_VERSION].contains(&version) {
            return Err(bad(format!(
                "format version {version}; this node reads versions {SNAPSHOT_VERSION_WHOLE} to {SNAPSHOT_VERSION}"
            )));
        }
        if reader.u16("reserved").map_err(|error| bad(error.to_string()))? != 0 {
            return Err(bad("reserved header bytes are not zero".into()));
        }
        let applied = reader.u64("applied index").map_err(|error| bad(error.to_string()))?;
        if version == SNAPSHOT_VERSION_WHOLE {
            let mut rest = fixed[16..].to_vec();
            snapshot.read_to_end(&mut rest)?;
            let rest = Bytes::from(rest);
            let mut reader = Reader::new(&rest);
            let (sessions, addresses) = decode_node_section(&mut reader, &rest, false).map_err(bad)?;
            let app = rest.slice(rest.len() - reader.remaining()..);
            let section = NodeSection { applied, sessions, addresses, ids: MemberIds::default() };
            return Ok((section, Some(app)));
        }
        let section_len = reader.u64("node section length").map_err(|error| bad(error.to_string()))?;
        if section_len > SNAPSHOT_NODE_SECTION_MAX {
            return Err(bad(format!("a node section of {section_len} bytes")));
        }
        let mut section = Vec::new();
        snapshot
            .take(section_len)
            .read_to_end(&mut section)
            .map_err(|error| bad(format!("reading the node section: {error}")))?;
        if section.len() as u64 != section_len {
            return Err(bad("the node section ends early (truncated)".into()));
        }
        let section = Bytes::from(section);
        let mut reader = Reader::new(&section);
        let owners = version == SNAPSHOT_VERSION;
        let (sessions, addresses) = decode_node_section(&mut reader, &section, owners).map_err(bad)?;
        let ids = MemberIds::decode(&mut reader).map_err(|error| bad(error.to_string()))?;
        reader.finish("node section").map_err(|error| bad(error.to_string()))?;
        Ok((NodeSection { applied, sessions, addresses, ids }, None))
    }
}

/// A node snapshot's header and node section (see
/// [`NodeStateMachine::snapshot_image`]); the application's part follows.
fn encode_snapshot_head(
    applied: Index,
    sessions: &SessionTable,
    addresses: &BTreeMap<NodeId, Addresses>,
    ids: &MemberIds,
) -> Bytes {
    let mut section = BytesMut::new();
    let owners = sessions.has_owners();
    sessions.encode(&mut section, owners);
    section.put_u32_le(addresses.len() as u32);
    for (id, addresses) in addresses {
        let set = SetAddresses { id: *id, peer: addresses.peer.clone(), client: addresses.client.clone() };
        let encoded = set.encode();
        section.put_u16_le(encoded.len() as u16);
        section.put_slice(&encoded);
    }
    ids.encode(&mut section);
    let mut head = BytesMut::with_capacity(24 + section.len());
    head.put_slice(SNAPSHOT_MAGIC);
    head.put_u16_le(if owners { SNAPSHOT_VERSION } else { SNAPSHOT_VERSION_UNOWNED });
    head.put_u16_le(0);
    head.put_u64_le(applied);
    head.put_u64_le(section.len() as u64);
    head.put_slice(&section);
    head.freeze()
}

/// Reads a node snapshot's header and node section from `snapshot` (left
/// at the application's part, which is copied unchanged) and gives them
/// back as a restored cluster of `voters` must start from (`node
/// restore`): the address book emptied, since the old members' addresses
/// are not the new ones and a member announces its own through the log
/// once there is a leader (an old address would send the new members'
/// messages to the old machines); the voters no longer counted as removed
/// (an id the old cluster retired may name a member of the new one); the
/// highest id used at least the highest voter's, so ids the cluster
/// assigns later are new. Sessions stay: their ids are log indexes at or
/// below the snapshot's, which the new cluster never reuses. A snapshot
/// of the format read whole (version 2) is refused.
pub fn restore_snapshot_head(snapshot: &mut dyn Read, voters: &[NodeId]) -> Result<Bytes, RestoreError> {
    let (mut section, whole) = NodeSection::read(snapshot)?;
    if whole.is_some() {
        return Err(RestoreError("node snapshot: an older format (version 2); take a new backup".into()));
    }
    section.addresses.clear();
    for voter in voters {
        section.ids.removed.remove(voter);
    }
    section.ids.high = section.ids.high.max(voters.iter().copied().max().unwrap_or(0));
    Ok(encode_snapshot_head(section.applied, &section.sessions, &section.addresses, &section.ids))
}

/// A whole replicated state restored off the driver, for
/// [`NodeStateMachine::adopt`].
pub struct RestoredNode {
    section: NodeSection,
    app: RestoredState,
}

impl RestoredNode {
    /// The index the snapshot was taken at.
    pub fn applied(&self) -> Index {
        self.section.applied
    }
}

/// Restores a whole node snapshot from `snapshot` with the application's
/// `restorer`, as [`NodeStateMachine::restore_from`] does but into a new
/// state: runs on a thread of its own, the node section included (a session
/// table may hold many replies).
pub fn restore_with(
    restorer: Box<dyn Restorer>,
    mut snapshot: Box<dyn Read + Send>,
) -> Result<RestoredNode, RestoreError> {
    let (section, whole) = NodeSection::read(&mut snapshot)?;
    let app = match whole {
        Some(app) => restorer.restore(&mut &app[..])?,
        None => restorer.restore(&mut snapshot)?,
    };
    Ok(RestoredNode { section, app })
}

/// A [`NodeStateMachine`] captured for a snapshot: the encoded node state
/// and the application's image.
struct NodeImage {
    head: Bytes,
    app: Box<dyn SnapshotImage>,
}

/// The session table (with `owners`: see [`SessionTable::encode`]) and
/// address book of a node snapshot.
fn decode_node_section(
    reader: &mut Reader<'_>,
    bytes: &Bytes,
    owners: bool,
) -> Result<(SessionTable, BTreeMap<NodeId, Addresses>), String> {
    let sessions = SessionTable::decode(reader, bytes, owners).map_err(|error| error.to_string())?;
    let count = reader.u32("address count").map_err(|error| error.to_string())?;
    let mut addresses = BTreeMap::new();
    for _ in 0..count {
        let len = reader.u16("address length").map_err(|error| error.to_string())?;
        let encoded = reader.take_exact("address", usize::from(len)).map_err(|error| error.to_string())?;
        let Some(NodeCommand::SetAddresses(set)) = NodeCommand::decode(encoded) else {
            return Err("malformed address".into());
        };
        addresses.insert(set.id, Addresses { peer: set.peer, client: set.client });
    }
    Ok((sessions, addresses))
}

impl SnapshotImage for NodeImage {
    fn write_to(self: Box<Self>, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        out.write_all(&self.head)?;
        self.app.write_to(out)
    }
}
