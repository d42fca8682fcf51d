//! The key-value state machine the `node` binary replicates: put, get, delete
//! and compare-and-swap over a hash map, with snapshots in a canonical order.
//! Its commands, queries and answers are `net::kv`'s; exactly-once sessions
//! are the node's ([`crate::session`]), so this state machine sees each
//! command once.
//!
//! # Snapshot, little-endian
//!
//! | bytes | field |
//! |---|---|
//! | 4 | magic `b"KVSN"` |
//! | 2 | format version, [`SNAPSHOT_VERSION`] |
//! | 2 | reserved, 0 |
//! | 8 | applied index |
//! | 8 | pair count, then each pair: key: bytes, value: bytes, in strictly increasing snapshot order: by the key's crc32c, then by the key |
//! | 4 | crc32c of everything before it |
//!
//! The map is written in a canonical order, so equal states give equal
//! bytes (a snapshot transfer resumed from another leader relies on it).

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::io::{BufReader, Read, Write};
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use engine::Index;
use net::compact::{put_bytes, FormatError, Reader};
pub use net::kv::{KvOp, KvOpRef, KvRefusal, KvResponse, SetCondition, COUNT_QUERY, KEY_SIZE_MAX, VALUE_SIZE_MAX};
use rustc_hash::FxHasher;

use crate::app::{Rejection, RestoreError, RestoredState, Restorer, SnapshotImage, StateMachine};

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
    fn prefetch(&self, key: &[u8]) {
        if let Some(value) = self.get(key) {
            // Every line an overwrite touches, each once: from the
            // reference counts before the bytes (`Arc::get_mut` reads them)
            // to the last byte, up to a bound (a large value streams anyway).
            let len = value.len().min(PREFETCH_VALUE_BYTES_MAX);
            let first = (value.as_ptr() as usize - 2 * size_of::<usize>()) & !(CACHE_LINE_BYTES - 1);
            let end = value.as_ptr() as usize + len;
            for line in (first..end).step_by(CACHE_LINE_BYTES) {
                prefetch_line(line as *const u8);
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

/// Calls `key` with the key of a command's op, or of each op of a batch;
/// with nothing for a command that does not decode (apply refuses it).
fn for_each_key(command: &[u8], key: &mut dyn FnMut(&[u8])) {
    match net::kv::decode_batch(command) {
        Some(Ok(ops)) => ops.iter().for_each(|op| key(op.key())),
        Some(Err(_)) => {}
        None => {
            if let Ok(op) = KvOpRef::decode(command) {
                key(op.key());
            }
        }
    }
}

/// The cache line size the prefetch steps by.
const CACHE_LINE_BYTES: usize = 64;

/// The most of a value [`Data::prefetch`] asks for: the 256-byte values of
/// the load generator's default and a little more, not a 64 KiB one.
const PREFETCH_VALUE_BYTES_MAX: usize = 1024;

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

/// A key's place in a snapshot, before ties are broken by the key's bytes: a
/// fixed function (crc32c), so every replica and every version agrees on it.
fn snapshot_order_code(key: &[u8]) -> u32 {
    crc32c::crc32c(key)
}

/// The snapshot format this code writes and reads.
pub const SNAPSHOT_VERSION: u16 = 3;
const SNAPSHOT_MAGIC: &[u8; 4] = b"KVSN";
const SNAPSHOT_HEADER_SIZE: usize = 4 + 2 + 2 + 8;
const SNAPSHOT_CHECKSUM_SIZE: usize = 4;

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
    #[error("snapshot content is invalid: {0}")]
    Decode(#[from] FormatError),
    #[error("snapshot content is invalid: {0}")]
    Invalid(&'static str),
    #[error("reading the snapshot failed: {0}")]
    Read(String),
}

impl SnapshotError {
    fn read(error: std::io::Error) -> SnapshotError {
        if error.kind() == std::io::ErrorKind::UnexpectedEof {
            return SnapshotError::Read("it ends early (truncated)".into());
        }
        SnapshotError::Read(error.to_string())
    }
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
    /// The index of the last applied command.
    applied_index: Index,
}

impl Default for KvStateMachine {
    fn default() -> KvStateMachine {
        KvStateMachine::new()
    }
}

impl KvStateMachine {
    pub fn new() -> KvStateMachine {
        KvStateMachine { data: Data::new(), applied_index: 0 }
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
            KvOpRef::Increment { key, delta } => {
                let current = match self.data.get(key) {
                    None => 0,
                    Some(value) => match parse_redis_integer(value) {
                        Some(current) => current,
                        None => return KvResponse::Refused(KvRefusal::NotAnInteger),
                    },
                };
                let Some(new) = current.checked_add(delta) else {
                    return KvResponse::Refused(KvRefusal::Overflow);
                };
                self.data.insert(key, new.to_string().as_bytes());
                KvResponse::Integer(new)
            }
            KvOpRef::Append { key, value } => {
                let current = self.data.get(key).unwrap_or_default();
                if current.len() + value.len() > VALUE_SIZE_MAX {
                    return KvResponse::Refused(KvRefusal::TooLarge);
                }
                if value.is_empty() && self.data.get(key).is_some() {
                    return KvResponse::Integer(current.len() as i64);
                }
                let mut joined = Vec::with_capacity(current.len() + value.len());
                joined.extend_from_slice(current);
                joined.extend_from_slice(value);
                self.data.insert(key, &joined);
                KvResponse::Integer(joined.len() as i64)
            }
            KvOpRef::Set { key, value, condition, get } => {
                let current = self.data.get(key);
                let write = match condition {
                    SetCondition::Always => true,
                    SetCondition::IfAbsent => current.is_none(),
                    SetCondition::IfPresent => current.is_some(),
                };
                let previous = if get { current.map(Bytes::copy_from_slice) } else { None };
                if write {
                    self.data.insert(key, value);
                }
                KvResponse::SetDone { written: write, previous }
            }
        }
    }

    /// Reads a snapshot piece by piece into a new store. The checksum is
    /// checked as the bytes go by; a snapshot that fails to decode is read
    /// to its end, so that damage anywhere is reported as a checksum
    /// mismatch rather than as whatever the damaged bytes decoded to.
    fn decode_snapshot(snapshot: &mut dyn Read) -> Result<KvStateMachine, SnapshotError> {
        let mut tracked = CrcTail::new(snapshot);
        let mut input = BufReader::with_capacity(RESTORE_BUFFER_BYTES, &mut tracked);
        let decoded = KvStateMachine::decode_pairs(&mut input);
        // What follows the pairs is the checksum: exactly its four bytes.
        let trailing = std::io::copy(&mut input, &mut std::io::sink()).map_err(SnapshotError::read);
        drop(input);
        let size = tracked.count;
        if size < (SNAPSHOT_HEADER_SIZE + 8 + SNAPSHOT_CHECKSUM_SIZE) as u64 {
            return Err(SnapshotError::TooShort { size: size as usize });
        }
        if matches!(decoded, Err(SnapshotError::BadMagic)) {
            return decoded;
        }
        let (stored, computed) = (u32::from_le_bytes(tracked.tail), tracked.crc);
        if stored != computed {
            return Err(SnapshotError::Checksum { stored, computed });
        }
        let restored = decoded?;
        match trailing? {
            4 => Ok(restored),
            _ => Err(SnapshotError::Invalid("bytes after the last pair")),
        }
    }

    /// The header and pairs of a snapshot (the checksum is checked by the
    /// caller).
    fn decode_pairs(input: &mut impl Read) -> Result<KvStateMachine, SnapshotError> {
        let mut header = [0; SNAPSHOT_HEADER_SIZE + 8];
        input.read_exact(&mut header).map_err(SnapshotError::read)?;
        if &header[..4] != SNAPSHOT_MAGIC {
            return Err(SnapshotError::BadMagic);
        }
        let mut reader = Reader::new(&header[4..]);
        let version = reader.u16("version")?;
        if version != SNAPSHOT_VERSION {
            return Err(SnapshotError::UnsupportedVersion { found: version });
        }
        if reader.u16("reserved")? != 0 {
            return Err(SnapshotError::Invalid("reserved header bytes are not zero"));
        }
        let mut restored = KvStateMachine::new();
        restored.applied_index = reader.u64("applied index")?;
        let pairs_count = reader.u64("pair count")?;
        let mut last_key: Option<(u32, Vec<u8>)> = None;
        let (mut key, mut value) = (Vec::new(), Vec::new());
        for _ in 0..pairs_count {
            read_bytes(input, &mut key, KEY_SIZE_MAX, "key")?;
            read_bytes(input, &mut value, VALUE_SIZE_MAX, "value")?;
            if key.is_empty() {
                return Err(SnapshotError::Invalid("an empty key"));
            }
            let code = snapshot_order_code(&key);
            if last_key.as_ref().is_some_and(|(last_code, last)| (*last_code, last.as_slice()) >= (code, &key[..])) {
                return Err(SnapshotError::Invalid("keys are not in strictly increasing snapshot order"));
            }
            restored.data.insert(&key, &value);
            match &mut last_key {
                Some((last_code, last)) => {
                    *last_code = code;
                    last.clear();
                    last.extend_from_slice(&key);
                }
                None => last_key = Some((code, key.clone())),
            }
        }
        Ok(restored)
    }
}

/// The read buffer of a restore.
const RESTORE_BUFFER_BYTES: usize = 256 << 10;

/// Reads a length-prefixed byte string (see `net::compact::put_bytes`) into
/// `out`, refusing one longer than `size_max` before reading it.
fn read_bytes(
    input: &mut impl Read,
    out: &mut Vec<u8>,
    size_max: usize,
    what: &'static str,
) -> Result<(), SnapshotError> {
    let mut size = [0; 4];
    input.read_exact(&mut size).map_err(SnapshotError::read)?;
    let size = u32::from_le_bytes(size) as usize;
    if size > size_max {
        return Err(SnapshotError::Decode(FormatError::TooLarge { what, size, max: size_max }));
    }
    out.resize(size, 0);
    input.read_exact(out).map_err(SnapshotError::read)
}

/// A reader that computes the crc32c of everything it passed on except the
/// last four bytes, and keeps those (a checksum trailer).
struct CrcTail<'a> {
    inner: &'a mut dyn Read,
    crc: u32,
    tail: [u8; 4],
    count: u64,
}

impl<'a> CrcTail<'a> {
    fn new(inner: &'a mut dyn Read) -> CrcTail<'a> {
        CrcTail { inner, crc: 0, tail: [0; 4], count: 0 }
    }
}

impl Read for CrcTail<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let read = self.inner.read(buf)?;
        let data = &buf[..read];
        // The tail holds the last min(count, 4) bytes; bytes pushed out of
        // it join the checksum.
        let held = self.count.min(4) as usize;
        if data.len() >= 4 {
            self.crc = crc32c::crc32c_append(self.crc, &self.tail[4 - held..]);
            self.crc = crc32c::crc32c_append(self.crc, &data[..data.len() - 4]);
            self.tail.copy_from_slice(&data[data.len() - 4..]);
        } else {
            let mut held = held;
            for &byte in data {
                if held == 4 {
                    self.crc = crc32c::crc32c_append(self.crc, &self.tail[..1]);
                    self.tail.copy_within(1.., 0);
                    self.tail[3] = byte;
                } else {
                    // Fewer than four so far: they sit at the tail's end.
                    self.tail.copy_within(4 - held.., 3 - held);
                    self.tail[3] = byte;
                    held += 1;
                }
            }
        }
        self.count += read as u64;
        Ok(read)
    }
}

impl StateMachine for KvStateMachine {
    /// Applies a [`KvOp`] and answers with an encoded [`KvResponse`]. A
    /// malformed command is refused, not applied: every replica decodes the
    /// same bytes the same way, so they all agree.
    fn apply(&mut self, index: Index, command: &[u8]) -> Result<Bytes, Rejection> {
        // The writes of one group entry share its index.
        assert!(index >= self.applied_index, "apply at index {index} after {}", self.applied_index);
        self.applied_index = index;
        if let Some(batch) = net::kv::decode_batch(command) {
            let ops = batch.map_err(|error| Rejection(format!("bad batch: {error}")))?;
            let answers = ops.into_iter().map(|op| self.execute(op)).collect();
            return Ok(KvResponse::Batch(answers).encode());
        }
        let op = KvOpRef::decode(command).map_err(|error| Rejection(format!("bad command: {error}")))?;
        Ok(self.execute(op).to_bytes())
    }

    /// Serves a read (`Get`) from the applied state, without the log; the
    /// caller decides how fresh that state must be (ReadIndex, lease, stale).
    fn query(&self, query: &[u8]) -> Result<Bytes, Rejection> {
        if query == COUNT_QUERY {
            return Ok(KvResponse::Count(self.data.len as u64).encode());
        }
        match KvOpRef::decode(query) {
            Ok(KvOpRef::Get { key }) => Ok(KvResponse::Value(self.data.get(key).map(Bytes::copy_from_slice)).encode()),
            Ok(_) => Err(Rejection("a query must be a get; writes go through the log".into())),
            Err(error) => Err(Rejection(format!("bad query: {error}"))),
        }
    }

    /// Every op is about one key; a batch about each of its ops' keys.
    fn routing_keys(command: &[u8], key: &mut dyn FnMut(&[u8])) {
        for_each_key(command, key);
    }

    /// Starts loading each key's value into the cache before the batch is
    /// applied.
    fn prefetch(&self, commands: &[&[u8]]) {
        for command in commands {
            for_each_key(command, &mut |key| self.data.prefetch(key));
        }
    }

    fn snapshot_image(&self) -> Box<dyn SnapshotImage> {
        Box::new(KvImage { buckets: self.data.buckets.clone(), len: self.data.len, applied_index: self.applied_index })
    }

    /// Replaces the state with the snapshot's, or leaves it untouched and
    /// says what is wrong with the snapshot.
    fn restore_from(&mut self, snapshot: &mut dyn Read) -> Result<(), RestoreError> {
        *self = KvStateMachine::decode_snapshot(snapshot)?;
        Ok(())
    }

    /// The map is built on the node's restore thread (it is `Send`) and
    /// swapped in whole.
    fn restorer(&self) -> Option<Box<dyn Restorer>> {
        Some(Box::new(KvRestorer))
    }

    fn adopt(&mut self, restored: RestoredState) -> RestoredState {
        let restored = restored.downcast::<KvStateMachine>().expect("the key-value restorer builds a key-value store");
        RestoredState::new(std::mem::replace(self, restored))
    }
}

/// Decodes a key-value snapshot into a new store, off the driver.
struct KvRestorer;

impl Restorer for KvRestorer {
    fn restore(self: Box<Self>, snapshot: &mut dyn Read) -> Result<RestoredState, RestoreError> {
        Ok(RestoredState::new(KvStateMachine::decode_snapshot(snapshot)?))
    }
}

/// A stored value as `INCR` reads it, as strictly as Redis (`string2ll`):
/// an optional `-`, then decimal digits without a leading zero (except `0`
/// itself), within `i64`. So `INCR` on `"007"` or `" 1"` is refused on every
/// replica alike, as it is by Redis.
pub fn parse_redis_integer(value: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(value).ok()?;
    let digits = text.strip_prefix('-').unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    if digits.len() > 1 && digits.starts_with('0') || text == "-0" {
        return None;
    }
    text.parse().ok()
}

/// The store as of one applied index: the bucket pointers, serialized on
/// whatever thread the node chooses.
struct KvImage {
    buckets: Vec<Arc<DataMap>>,
    len: usize,
    applied_index: Index,
}

impl SnapshotImage for KvImage {
    fn write_to(self: Box<Self>, out: &mut dyn Write) -> std::io::Result<()> {
        let mut writer = CrcWriter { out, crc: 0, buffer: BytesMut::with_capacity(WRITE_BUFFER_BYTES) };
        writer.buffer.put_slice(SNAPSHOT_MAGIC);
        writer.buffer.put_u16_le(SNAPSHOT_VERSION);
        writer.buffer.put_u16_le(0);
        writer.buffer.put_u64_le(self.applied_index);
        writer.buffer.put_u64_le(self.len as u64);
        // In snapshot order, so equal states give equal bytes on every
        // replica: buckets hold consecutive ranges of the order code, so
        // sorting each bucket by (code, key) sorts the whole. Comparing codes
        // first keeps the comparisons off the keys' bytes, which sit all over
        // the heap (sorting by the keys alone cost ~60 ms of cache misses per
        // 100,000 keys).
        // Each bucket is released as soon as it is written: while the image
        // holds a bucket, the next write to it copies it.
        let KvImage { buckets, .. } = *self;
        for bucket in buckets {
            let mut pairs: Vec<(u32, &[u8], &Value)> = bucket
                .iter()
                .map(|(key, value)| (snapshot_order_code(key.as_slice()), key.as_slice(), value))
                .collect();
            pairs.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(b.1)));
            for (_, key, value) in &pairs {
                put_bytes(&mut writer.buffer, key);
                put_bytes(&mut writer.buffer, value);
                if writer.buffer.len() >= WRITE_BUFFER_BYTES {
                    writer.flush_buffer()?;
                }
            }
        }
        writer.flush_buffer()?;
        let checksum = writer.crc;
        writer.out.write_all(&checksum.to_le_bytes())
    }
}

/// How much of a snapshot is gathered before it is written out.
const WRITE_BUFFER_BYTES: usize = 256 << 10;

/// Writes through a buffer, keeping the crc32c of what it wrote.
struct CrcWriter<'a> {
    out: &'a mut dyn Write,
    crc: u32,
    buffer: BytesMut,
}

impl CrcWriter<'_> {
    fn flush_buffer(&mut self) -> std::io::Result<()> {
        self.crc = crc32c::crc32c_append(self.crc, &self.buffer);
        self.out.write_all(&self.buffer)?;
        self.buffer.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_parse_as_redis_does() {
        assert_eq!(parse_redis_integer(b"0"), Some(0));
        assert_eq!(parse_redis_integer(b"-12"), Some(-12));
        assert_eq!(parse_redis_integer(b"9223372036854775807"), Some(i64::MAX));
        for bad in [&b""[..], b"-", b"007", b"-0", b"+1", b" 1", b"1.5", b"9223372036854775808", b"\xff"] {
            assert_eq!(parse_redis_integer(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn fixed_answers_equal_their_encoding() {
        let responses = [
            KvResponse::Written,
            KvResponse::Deleted { existed: false },
            KvResponse::Deleted { existed: true },
            KvResponse::CasSucceeded,
            KvResponse::Value(Some(Bytes::from_static(b"v"))),
            KvResponse::CasFailed { current: None },
        ];
        for response in responses {
            assert_eq!(response.to_bytes(), response.encode(), "{response:?}");
        }
    }
}
