//! The key-value state machine the `node` binary replicates: put, get, delete
//! and compare-and-swap over a hash map (snapshots write it in a canonical order), with exactly-once client sessions
//! ([`crate::session`]).
//!
//! # Commands and queries ([`KvOp`]), little-endian
//!
//! A write's log payload is a session [`Envelope`]
//! around one encoded op; a query (served by [`KvStateMachine::query`], not
//! through the log) is an encoded op alone. A byte string `bytes` is a `u32`
//! length and the bytes; an optional one `opt` is `0` (absent) or `1` and a
//! byte string.
//!
//! | tag | op | then |
//! |---|---|---|
//! | 1 | `Get` | key: bytes |
//! | 2 | `Put` | key: bytes, value: bytes |
//! | 3 | `Delete` | key: bytes |
//! | 4 | `Cas` | key: bytes, expected: opt, new: opt |
//!
//! `Cas` replaces the key's value with `new` (absent: deletes it) only if the
//! current value equals `expected` (absent: the key must not exist). Keys are
//! 1 to [`KEY_SIZE_MAX`] bytes, values at most [`VALUE_SIZE_MAX`]. A `Get` may
//! also go through the log (a read ordered with the writes).
//!
//! # Responses ([`KvResponse`]), inside [`Reply::Applied`](crate::session::Reply)
//!
//! | tag | response | then |
//! |---|---|---|
//! | 1 | `Value` | value: opt |
//! | 2 | `Written` | nothing |
//! | 3 | `Deleted` | existed: `u8` 0 or 1 |
//! | 4 | `CasSucceeded` | nothing |
//! | 5 | `CasFailed` | current value: opt |
//!
//! # Snapshot, little-endian
//!
//! | bytes | field |
//! |---|---|
//! | 4 | magic `b"KVSN"` |
//! | 2 | format version, [`SNAPSHOT_VERSION`] |
//! | 2 | reserved, 0 |
//! | 8 | applied index |
//! | 8 | `sessions_max` |
//! | 8 | pair count, then each pair: key: bytes, value: bytes, in strictly increasing snapshot order: by the key's crc32c, then by the key |
//! | 8 | session count, then each: client id u64, last sequence u64, last index u64, reply: bytes, client ids strictly increasing |
//! | 4 | crc32c of everything before it |
//!
//! Both maps are written in a canonical order, so equal states give equal
//! bytes (a snapshot transfer resumed from another leader relies on it).

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use engine::{Entry, EntryKind, Index, RestoreError, SnapshotImage, StateMachine};
use rustc_hash::FxHasher;

use crate::codec::{optional_bytes_size, put_bytes, put_optional_bytes, DecodeError, Reader};
use crate::fsm::QueryStateMachine;
use crate::session::{Admission, EnvelopeRef, Reply, Session, SessionTable, SESSIONS_MAX_DEFAULT};

/// One bucket of the key-value map: a hash map (an insert is one hash, not a
/// dozen key comparisons: the B-tree cost a quarter of a node's CPU under
/// load), with a fixed, seedless hasher. Iteration order never reaches the
/// outside: the snapshot sorts the keys (see [`snapshot_order_code`]).
type DataMap = HashMap<Key, Value, BuildHasherDefault<FxHasher>>;

/// A stored value. Reference counted, so that a snapshot image shares it
/// instead of copying it; a write of the same length into a value no image
/// shares overwrites it in place. Most writes overwrite a key with a value of
/// the same size, and replacing the allocation instead cost a `malloc` and a
/// `free` whose chunk header (and its neighbours, when glibc coalesces) sit in
/// cold memory: `free` alone was 7% of the machine's CPU at 256 in flight.
type Value = Arc<[u8]>;

/// The longest key stored inside the table itself.
const KEY_INLINE_MAX: usize = 30;

/// A stored key: short ones (most) live in the hash table's slot, so a
/// lookup compares bytes already in cache instead of chasing a pointer to
/// them, and copying a bucket for copy-on-write allocates nothing for them.
#[derive(Clone)]
enum Key {
    Inline { len: u8, bytes: [u8; KEY_INLINE_MAX] },
    Heap(Bytes),
}

impl Key {
    fn new(key: &[u8]) -> Key {
        if key.len() <= KEY_INLINE_MAX {
            let mut bytes = [0; KEY_INLINE_MAX];
            bytes[..key.len()].copy_from_slice(key);
            Key::Inline { len: key.len() as u8, bytes }
        } else {
            Key::Heap(Bytes::copy_from_slice(key))
        }
    }

    fn as_slice(&self) -> &[u8] {
        match self {
            Key::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Key::Heap(bytes) => bytes,
        }
    }
}

impl std::borrow::Borrow<[u8]> for Key {
    fn borrow(&self) -> &[u8] {
        self.as_slice()
    }
}

/// Hashes as the byte slice does, as `Borrow<[u8]>` requires.
impl std::hash::Hash for Key {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_slice().hash(state);
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for Key {}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.as_slice())
    }
}

/// log2 of the number of buckets.
const BUCKET_BITS: u32 = 10;

/// The key-value map, split by the top bits of each key's snapshot order
/// code into buckets, each behind an `Arc`. A snapshot captures the map by
/// cloning the bucket pointers; a later write to a bucket the snapshot still
/// holds copies that bucket first (copy-on-write, about a thousandth of the
/// map). So the state is serialized on another thread while writes go on,
/// instead of stalling the shard's driver for tens of milliseconds.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Data {
    buckets: Vec<Arc<DataMap>>,
    len: usize,
}

impl Data {
    fn new() -> Data {
        Data { buckets: (0..1 << BUCKET_BITS).map(|_| Arc::new(DataMap::default())).collect(), len: 0 }
    }

    fn bucket(key: &[u8]) -> usize {
        (snapshot_order_code(key) >> (32 - BUCKET_BITS)) as usize
    }

    fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.buckets[Data::bucket(key)].get(key).map(|value| &**value)
    }

    /// Stores a copy of `value` under a copy of `key`; an existing key keeps
    /// its stored key, and its stored value too when the length matches and
    /// no snapshot image shares it (see [`Value`]).
    fn insert(&mut self, key: &[u8], value: &[u8]) {
        let bucket = Arc::make_mut(&mut self.buckets[Data::bucket(key)]);
        match bucket.get_mut(key) {
            Some(stored) => match Arc::get_mut(stored) {
                Some(bytes) if bytes.len() == value.len() => bytes.copy_from_slice(value),
                _ => *stored = Value::from(value),
            },
            None => {
                bucket.insert(Key::new(key), Value::from(value));
                self.len += 1;
            }
        }
    }

    /// Starts loading each key's value into the cache (see
    /// [`StateMachine::prefetch`]). The lookups' own loads miss as well, but
    /// no lookup depends on another, so the CPU overlaps several keys'
    /// misses; the later writes then find everything in cache. (Prefetching
    /// each key's bucket in a first pass gained nothing more.)
    fn prefetch<'a>(&self, keys: impl Iterator<Item = &'a [u8]>) {
        for key in keys {
            if let Some(value) = self.get(key) {
                prefetch_line(value.as_ptr());
            }
        }
    }

    fn remove(&mut self, key: &[u8]) -> Option<Value> {
        let bucket = &mut self.buckets[Data::bucket(key)];
        if !bucket.contains_key(key) {
            return None;
        }
        self.len -= 1;
        Arc::make_mut(bucket).remove(key)
    }
}

/// Asks the CPU to load the cache line at `address`; nothing else happens.
fn prefetch_line(address: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint: it never faults, and reads nothing the
    // program can observe, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(address.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = address;
}

/// The key of the op inside an envelope, borrowed (for
/// [`StateMachine::prefetch`]); `None` when the bytes are not an envelope
/// around a valid op.
fn enveloped_key(command: &[u8]) -> Option<&[u8]> {
    let envelope = EnvelopeRef::decode(command).ok()?;
    Some(KvOpRef::decode(envelope.command).ok()?.key())
}

/// A key's place in a snapshot, before ties are broken by the key's bytes: a
/// fixed function (crc32c), so every replica and every version agrees on it.
fn snapshot_order_code(key: &[u8]) -> u32 {
    crc32c::crc32c(key)
}

/// The largest key, in bytes.
pub const KEY_SIZE_MAX: usize = 64 * 1024;
/// The largest value, in bytes.
pub const VALUE_SIZE_MAX: usize = 16 * 1024 * 1024;
/// The snapshot format this code writes and reads.
pub const SNAPSHOT_VERSION: u16 = 2;
const SNAPSHOT_MAGIC: &[u8; 4] = b"KVSN";
const SNAPSHOT_HEADER_SIZE: usize = 4 + 2 + 2 + 8 + 8;
const SNAPSHOT_CHECKSUM_SIZE: usize = 4;
/// A reply cached in a session is at most a `CasFailed` with a full value.
const REPLY_SIZE_MAX: usize = 1 + 1 + 1 + 4 + VALUE_SIZE_MAX;

/// One key-value operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvOp {
    Get { key: Bytes },
    Put { key: Bytes, value: Bytes },
    Delete { key: Bytes },
    Cas { key: Bytes, expected: Option<Bytes>, new: Option<Bytes> },
}

impl KvOp {
    pub fn key(&self) -> &Bytes {
        match self {
            KvOp::Get { key } | KvOp::Put { key, .. } | KvOp::Delete { key } | KvOp::Cas { key, .. } => key,
        }
    }

    /// Whether the op changes state (and so must go through the log).
    pub fn is_write(&self) -> bool {
        !matches!(self, KvOp::Get { .. })
    }

    pub fn encode(&self) -> Bytes {
        let key = self.key();
        let size = 1
            + 4
            + key.len()
            + match self {
                KvOp::Get { .. } | KvOp::Delete { .. } => 0,
                KvOp::Put { value, .. } => 4 + value.len(),
                KvOp::Cas { expected, new, .. } => {
                    optional_bytes_size(expected.as_deref()) + optional_bytes_size(new.as_deref())
                }
            };
        let mut out = BytesMut::with_capacity(size);
        match self {
            KvOp::Get { key } => {
                out.put_u8(1);
                put_bytes(&mut out, key);
            }
            KvOp::Put { key, value } => {
                out.put_u8(2);
                put_bytes(&mut out, key);
                put_bytes(&mut out, value);
            }
            KvOp::Delete { key } => {
                out.put_u8(3);
                put_bytes(&mut out, key);
            }
            KvOp::Cas { key, expected, new } => {
                out.put_u8(4);
                put_bytes(&mut out, key);
                put_optional_bytes(&mut out, expected.as_deref());
                put_optional_bytes(&mut out, new.as_deref());
            }
        }
        debug_assert_eq!(out.len(), size);
        out.freeze()
    }

    /// Reads an op; keys and values are slices of `bytes` (no copy).
    pub fn decode(bytes: &Bytes) -> Result<KvOp, DecodeError> {
        let owned = |slice: &[u8]| bytes.slice_ref(slice);
        Ok(match KvOpRef::decode(bytes)? {
            KvOpRef::Get { key } => KvOp::Get { key: owned(key) },
            KvOpRef::Put { key, value } => KvOp::Put { key: owned(key), value: owned(value) },
            KvOpRef::Delete { key } => KvOp::Delete { key: owned(key) },
            KvOpRef::Cas { key, expected, new } => {
                KvOp::Cas { key: owned(key), expected: expected.map(owned), new: new.map(owned) }
            }
        })
    }
}

/// A [`KvOp`] borrowing the bytes it was decoded from: what apply and query
/// work on, so that they touch no reference count (see `codec`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KvOpRef<'a> {
    Get { key: &'a [u8] },
    Put { key: &'a [u8], value: &'a [u8] },
    Delete { key: &'a [u8] },
    Cas { key: &'a [u8], expected: Option<&'a [u8]>, new: Option<&'a [u8]> },
}

impl<'a> KvOpRef<'a> {
    fn key(&self) -> &'a [u8] {
        match *self {
            KvOpRef::Get { key } | KvOpRef::Put { key, .. } | KvOpRef::Delete { key } | KvOpRef::Cas { key, .. } => key,
        }
    }

    pub(crate) fn decode(bytes: &'a [u8]) -> Result<KvOpRef<'a>, DecodeError> {
        let mut reader = Reader::new(bytes);
        let tag = reader.u8("op tag")?;
        let key = reader.bytes("key", KEY_SIZE_MAX)?;
        if key.is_empty() {
            return Err(DecodeError::Invalid { what: "key", reason: "keys are not empty" });
        }
        let op = match tag {
            1 => KvOpRef::Get { key },
            2 => KvOpRef::Put { key, value: reader.bytes("value", VALUE_SIZE_MAX)? },
            3 => KvOpRef::Delete { key },
            4 => KvOpRef::Cas {
                key,
                expected: reader.optional_bytes("expected value", VALUE_SIZE_MAX)?,
                new: reader.optional_bytes("new value", VALUE_SIZE_MAX)?,
            },
            tag => return Err(DecodeError::UnknownTag { what: "op", tag }),
        };
        reader.finish("op")?;
        Ok(op)
    }
}

/// The outcome of one op.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvResponse {
    /// A `Get`: the value, or `None` if the key is absent.
    Value(Option<Bytes>),
    /// A `Put` stored its value.
    Written,
    /// A `Delete`; `existed` tells whether the key was there.
    Deleted { existed: bool },
    /// A `Cas` found the expected value and made the change.
    CasSucceeded,
    /// A `Cas` found `current` instead of the expected value; nothing changed.
    CasFailed { current: Option<Bytes> },
}

impl KvResponse {
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::new();
        self.encode_into(&mut out);
        out.freeze()
    }

    fn encode_into(&self, out: &mut BytesMut) {
        match self {
            KvResponse::Value(value) => {
                out.put_u8(1);
                put_optional_bytes(out, value.as_deref());
            }
            KvResponse::Written => out.put_u8(2),
            KvResponse::Deleted { existed } => {
                out.put_u8(3);
                out.put_u8(u8::from(*existed));
            }
            KvResponse::CasSucceeded => out.put_u8(4),
            KvResponse::CasFailed { current } => {
                out.put_u8(5);
                put_optional_bytes(out, current.as_deref());
            }
        }
    }

    pub fn decode(bytes: &Bytes) -> Result<KvResponse, DecodeError> {
        let mut reader = Reader::new(bytes);
        let owned = |slice: Option<&[u8]>| slice.map(|slice| bytes.slice_ref(slice));
        let response = match reader.u8("response tag")? {
            1 => KvResponse::Value(owned(reader.optional_bytes("value", VALUE_SIZE_MAX)?)),
            2 => KvResponse::Written,
            3 => KvResponse::Deleted { existed: reader.flag("existed")? },
            4 => KvResponse::CasSucceeded,
            5 => KvResponse::CasFailed { current: owned(reader.optional_bytes("current value", VALUE_SIZE_MAX)?) },
            tag => return Err(DecodeError::UnknownTag { what: "response", tag }),
        };
        reader.finish("response")?;
        Ok(response)
    }

    /// The encoded [`Reply::Applied`] carrying this response. The fixed
    /// answers are static: an allocation per write showed in profiles.
    fn into_reply(self) -> Bytes {
        match self {
            KvResponse::Written => return Bytes::from_static(&[0, 2]),
            KvResponse::Deleted { existed: false } => return Bytes::from_static(&[0, 3, 0]),
            KvResponse::Deleted { existed: true } => return Bytes::from_static(&[0, 3, 1]),
            KvResponse::CasSucceeded => return Bytes::from_static(&[0, 4]),
            _ => {}
        }
        let mut out = BytesMut::with_capacity(16);
        out.put_u8(0);
        self.encode_into(&mut out);
        out.freeze()
    }
}

/// Decodes a state machine's answer (to a write or a query) into the
/// response, for clients: `Err` holds the reply that was not
/// [`Reply::Applied`], or says the bytes did not decode.
pub fn decode_answer(bytes: &Bytes) -> Result<KvResponse, AnswerError> {
    match Reply::decode(bytes)? {
        Reply::Applied(response) => Ok(KvResponse::decode(&response)?),
        other => Err(AnswerError::NotApplied(other)),
    }
}

/// An answer that holds no [`KvResponse`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    #[error("the request was not applied: {0:?}")]
    NotApplied(Reply),
    #[error("the answer does not decode: {0}")]
    Decode(#[from] DecodeError),
}

/// A snapshot that [`KvStateMachine::restore`] refuses; turned into the
/// engine's [`RestoreError`] with this message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot is {size} bytes, shorter than its header and checksum")]
    TooShort { size: usize },
    #[error("snapshot does not start with the key-value magic bytes (not a key-value snapshot)")]
    BadMagic,
    #[error("snapshot format version {found} is not supported (this node reads version {SNAPSHOT_VERSION})")]
    UnsupportedVersion { found: u16 },
    #[error("snapshot checksum mismatch: stored {stored:#010x}, computed {computed:#010x} (the snapshot is damaged)")]
    Checksum { stored: u32, computed: u32 },
    #[error(
        "snapshot was taken with sessions_max = {snapshot}, this node has {configured}; \
         the setting must be equal on every node"
    )]
    SessionsMaxMismatch { snapshot: u64, configured: usize },
    #[error("snapshot content is invalid: {0}")]
    Decode(#[from] DecodeError),
    #[error("snapshot content is invalid: {0}")]
    Invalid(&'static str),
}

impl From<SnapshotError> for RestoreError {
    fn from(error: SnapshotError) -> RestoreError {
        RestoreError(error.to_string())
    }
}

/// The key-value state machine.
///
/// Keys and values are copied out of the log entries (and snapshots) they
/// arrive in, so a small stored value does not keep a large receive buffer
/// alive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvStateMachine {
    data: Data,
    sessions: SessionTable,
    /// The index of the last applied command. Invariant: every session's
    /// `last_index` is at most this.
    applied_index: Index,
}

impl Default for KvStateMachine {
    fn default() -> KvStateMachine {
        KvStateMachine::new(SESSIONS_MAX_DEFAULT)
    }
}

impl KvStateMachine {
    /// An empty store keeping at most `sessions_max` client sessions; see
    /// [`crate::session`] for why that bound must match across the cluster.
    pub fn new(sessions_max: usize) -> KvStateMachine {
        KvStateMachine { data: Data::new(), sessions: SessionTable::new(sessions_max), applied_index: 0 }
    }

    pub fn applied_index(&self) -> Index {
        self.applied_index
    }

    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.data.get(key)
    }

    pub fn len(&self) -> usize {
        self.data.len
    }

    pub fn is_empty(&self) -> bool {
        self.data.len == 0
    }

    pub fn sessions(&self) -> &SessionTable {
        &self.sessions
    }

    /// Serves a read (`Get`) from the applied state, without the log; the
    /// caller decides how fresh that state must be (ReadIndex, lease, stale).
    /// Answers with an encoded [`Reply`]: `Applied` with a [`KvResponse`], or
    /// `Malformed`.
    pub fn query(&self, query: &Bytes) -> Bytes {
        match KvOpRef::decode(query) {
            Ok(KvOpRef::Get { key }) => KvResponse::Value(self.data.get(key).map(Bytes::copy_from_slice)).into_reply(),
            Ok(_) => Reply::Malformed("a query must be a get; writes go through the log".into()).encode(),
            Err(error) => Reply::Malformed(format!("bad query: {error}")).encode(),
        }
    }

    /// Applies one op to the map.
    fn execute(&mut self, op: KvOpRef<'_>) -> KvResponse {
        match op {
            KvOpRef::Get { key } => KvResponse::Value(self.data.get(key).map(Bytes::copy_from_slice)),
            KvOpRef::Put { key, value } => {
                self.data.insert(key, value);
                KvResponse::Written
            }
            KvOpRef::Delete { key } => KvResponse::Deleted { existed: self.data.remove(key).is_some() },
            KvOpRef::Cas { key, expected, new } => {
                let current = self.data.get(key);
                if current != expected {
                    return KvResponse::CasFailed { current: current.map(Bytes::copy_from_slice) };
                }
                match new {
                    Some(new) => {
                        self.data.insert(key, new);
                    }
                    None => {
                        self.data.remove(key);
                    }
                }
                KvResponse::CasSucceeded
            }
        }
    }

    fn decode_snapshot(&self, snapshot: &Bytes) -> Result<KvStateMachine, SnapshotError> {
        let size = snapshot.len();
        if size < SNAPSHOT_HEADER_SIZE + 8 + 8 + SNAPSHOT_CHECKSUM_SIZE {
            return Err(SnapshotError::TooShort { size });
        }
        if &snapshot[..4] != SNAPSHOT_MAGIC {
            return Err(SnapshotError::BadMagic);
        }
        let body_size = size - SNAPSHOT_CHECKSUM_SIZE;
        let stored = u32::from_le_bytes(snapshot[body_size..].try_into().expect("4 checksum bytes"));
        let computed = crc32c::crc32c(&snapshot[..body_size]);
        if stored != computed {
            return Err(SnapshotError::Checksum { stored, computed });
        }
        let body = snapshot.slice(4..body_size);
        let mut reader = Reader::new(&body);
        let version = u16::from(reader.u8("version")?) | u16::from(reader.u8("version")?) << 8;
        if version != SNAPSHOT_VERSION {
            return Err(SnapshotError::UnsupportedVersion { found: version });
        }
        if reader.u8("reserved")? != 0 || reader.u8("reserved")? != 0 {
            return Err(SnapshotError::Invalid("reserved header bytes are not zero"));
        }
        let applied_index = reader.u64("applied index")?;
        let sessions_max = reader.u64("sessions_max")?;
        if sessions_max != self.sessions.sessions_max() as u64 {
            return Err(SnapshotError::SessionsMaxMismatch {
                snapshot: sessions_max,
                configured: self.sessions.sessions_max(),
            });
        }
        let mut restored = KvStateMachine::new(self.sessions.sessions_max());
        restored.applied_index = applied_index;
        let pairs_count = reader.u64("pair count")?;
        let mut last_key: Option<(u32, &[u8])> = None;
        for _ in 0..pairs_count {
            let key = reader.bytes("key", KEY_SIZE_MAX)?;
            let value = reader.bytes("value", VALUE_SIZE_MAX)?;
            if key.is_empty() {
                return Err(SnapshotError::Invalid("an empty key"));
            }
            let ordered = (snapshot_order_code(key), key);
            if last_key.is_some_and(|last| last >= ordered) {
                return Err(SnapshotError::Invalid("keys are not in strictly increasing snapshot order"));
            }
            last_key = Some(ordered);
            // Copied, so that the map does not pin the whole snapshot buffer
            // until the last restored value is overwritten.
            restored.data.insert(key, value);
        }
        let sessions_count = reader.u64("session count")?;
        let mut client_id_last = None;
        for _ in 0..sessions_count {
            let client_id = reader.u64("client id")?;
            let last_sequence = reader.u64("last sequence")?;
            let last_index = reader.u64("last index")?;
            let reply = reader.bytes("cached reply", REPLY_SIZE_MAX)?;
            if client_id_last.is_some_and(|last| last >= client_id) {
                return Err(SnapshotError::Invalid("client ids are not strictly increasing"));
            }
            client_id_last = Some(client_id);
            if last_index > applied_index {
                return Err(SnapshotError::Invalid("a session is newer than the applied index"));
            }
            restored
                .sessions
                .insert_restored(client_id, Session { last_sequence, last_index, reply: Bytes::copy_from_slice(reply) })
                .map_err(SnapshotError::Invalid)?;
        }
        reader.finish("snapshot").map_err(SnapshotError::Decode)?;
        restored.sessions.check_invariants().map_err(SnapshotError::Invalid)?;
        Ok(restored)
    }
}

impl StateMachine for KvStateMachine {
    /// Applies an [`Envelope`] around a [`KvOp`] and answers with an encoded
    /// [`Reply`]. A malformed command is answered, not applied: every replica
    /// decodes the same bytes the same way, so they all agree.
    fn apply(&mut self, index: Index, command: &Bytes) -> Bytes {
        assert!(index > self.applied_index, "apply at index {index} after {}", self.applied_index);
        self.applied_index = index;
        let envelope = match EnvelopeRef::decode(command) {
            Ok(envelope) => envelope,
            Err(error) => return Reply::Malformed(format!("bad envelope: {error}")).encode(),
        };
        let op = match KvOpRef::decode(envelope.command) {
            Ok(op) => op,
            Err(error) => return Reply::Malformed(format!("bad command: {error}")).encode(),
        };
        match self.sessions.admit(envelope.client_id, envelope.sequence, index) {
            Admission::Apply => {
                let reply = self.execute(op).into_reply();
                self.sessions.record(envelope.client_id, envelope.sequence, index, reply.clone());
                reply
            }
            Admission::Duplicate(reply) => reply,
            Admission::Reject(reply) => reply.encode(),
        }
    }

    fn prefetch(&self, entries: &[Entry]) {
        let keys = entries
            .iter()
            .filter(|entry| entry.kind == EntryKind::Normal)
            .filter_map(|entry| enveloped_key(&entry.data));
        self.data.prefetch(keys);
    }

    fn snapshot(&self) -> Bytes {
        let mut out = BytesMut::new();
        self.snapshot_image().serialize_into(&mut out);
        out.freeze()
    }

    fn snapshot_image(&self) -> Box<dyn SnapshotImage> {
        Box::new(KvImage {
            buckets: self.data.buckets.clone(),
            len: self.data.len,
            sessions: self.sessions.iter().map(|(client_id, session)| (client_id, session.clone())).collect(),
            sessions_max: self.sessions.sessions_max(),
            applied_index: self.applied_index,
        })
    }

    /// Replaces the state with the snapshot's, or leaves it untouched and
    /// says what is wrong with the snapshot.
    fn restore(&mut self, snapshot: &Bytes) -> Result<(), RestoreError> {
        *self = self.decode_snapshot(snapshot)?;
        Ok(())
    }
}

/// The store as of one applied index: the bucket pointers and a copy of the
/// sessions, serialized on whatever thread the node chooses.
struct KvImage {
    buckets: Vec<Arc<DataMap>>,
    len: usize,
    sessions: Vec<(u64, Session)>,
    sessions_max: usize,
    applied_index: Index,
}

impl SnapshotImage for KvImage {
    fn serialize_into(self: Box<Self>, out: &mut BytesMut) {
        let pairs_size: usize = self
            .buckets
            .iter()
            .flat_map(|bucket| bucket.iter())
            .map(|(key, value)| 8 + key.as_slice().len() + value.len())
            .sum();
        let sessions_size: usize = self.sessions.iter().map(|(_, session)| 28 + session.reply.len()).sum();
        let size = SNAPSHOT_HEADER_SIZE + 8 + pairs_size + 8 + sessions_size + SNAPSHOT_CHECKSUM_SIZE;
        out.reserve(size);
        let start = out.len();
        out.put_slice(SNAPSHOT_MAGIC);
        out.put_u16_le(SNAPSHOT_VERSION);
        out.put_u16_le(0);
        out.put_u64_le(self.applied_index);
        out.put_u64_le(self.sessions_max as u64);
        out.put_u64_le(self.len as u64);
        // In snapshot order, so equal states give equal bytes on every
        // replica: buckets hold consecutive ranges of the order code, so
        // sorting each bucket by (code, key) sorts the whole. Comparing codes
        // first keeps the comparisons off the keys' bytes, which sit all over
        // the heap (sorting by the keys alone cost ~60 ms of cache misses per
        // 100,000 keys).
        // Each bucket is released as soon as it is written: while the image
        // holds a bucket, the next write to it copies it.
        let KvImage { buckets, sessions, .. } = *self;
        for bucket in buckets {
            let mut pairs: Vec<(u32, &[u8], &Value)> = bucket
                .iter()
                .map(|(key, value)| (snapshot_order_code(key.as_slice()), key.as_slice(), value))
                .collect();
            pairs.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(b.1)));
            for (_, key, value) in &pairs {
                put_bytes(out, key);
                put_bytes(out, value);
            }
        }
        out.put_u64_le(sessions.len() as u64);
        for (client_id, session) in &sessions {
            out.put_u64_le(*client_id);
            out.put_u64_le(session.last_sequence);
            out.put_u64_le(session.last_index);
            put_bytes(out, &session.reply);
        }
        let checksum = crc32c::crc32c(&out[start..]);
        out.put_u32_le(checksum);
        debug_assert_eq!(out.len() - start, size);
    }
}

impl QueryStateMachine for KvStateMachine {
    fn query(&self, query: &Bytes) -> Bytes {
        KvStateMachine::query(self, query)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_replies_equal_their_encoding() {
        let responses = [
            KvResponse::Written,
            KvResponse::Deleted { existed: false },
            KvResponse::Deleted { existed: true },
            KvResponse::CasSucceeded,
            KvResponse::Value(Some(Bytes::from_static(b"v"))),
            KvResponse::CasFailed { current: None },
        ];
        for response in responses {
            let expected = Reply::Applied(response.encode()).encode();
            assert_eq!(response.clone().into_reply(), expected, "{response:?}");
        }
    }

    #[test]
    fn enveloped_key_reads_the_key_decoding_would() {
        let key = Bytes::from_static(b"some-key");
        let value = Bytes::from_static(b"v");
        let ops = [
            KvOp::Get { key: key.clone() },
            KvOp::Put { key: key.clone(), value: value.clone() },
            KvOp::Delete { key: key.clone() },
            KvOp::Cas { key: key.clone(), expected: None, new: Some(value) },
        ];
        for op in ops {
            let command = crate::session::encode_envelope(7, 1, &op.encode());
            assert_eq!(enveloped_key(&command), Some(&key[..]), "{op:?}");
            // A command cut anywhere before the key's end has no key (and
            // never panics).
            let key_end = crate::session::ENVELOPE_HEADER_SIZE + 5 + key.len();
            for cut in 0..key_end {
                assert_eq!(enveloped_key(&command[..cut]), None, "{op:?} cut at {cut}");
            }
        }
        assert_eq!(enveloped_key(b"\x02not an envelope, a node command"), None);
    }
}
