//! The key-value vocabulary of the node's default state machine: the
//! operations a client sends (as a write's command or a read's query) and
//! the answers it gets back, shared by the node, the CLI, the bench and any
//! client. The state machine itself is `node::kv`.
//!
//! # Commands and queries ([`KvOp`]), little-endian
//!
//! A write's command and a read's query are each one encoded op. A byte
//! string `bytes` is a `u32` length and the bytes; an optional one `opt` is
//! `0` (absent) or `1` and a byte string.
//!
//! | tag | op | then |
//! |---|---|---|
//! | 1 | `Get` | key: bytes |
//! | 2 | `Put` | key: bytes, value: bytes |
//! | 3 | `Delete` | key: bytes |
//! | 4 | `Cas` | key: bytes, expected: opt, new: opt |
//! | 5 | `Increment` | key: bytes, delta: `i64` |
//! | 6 | `Append` | key: bytes, value: bytes |
//! | 7 | `Set` | key: bytes, value: bytes, condition: `u8` (0 always, 1 only if absent, 2 only if present), get: `u8` 0 or 1 |
//! | 8 | `Count` | nothing (a query only: no key, so no shard refuses it) |
//! | 9 | batch | count: `u32` (1 to [`BATCH_OPS_MAX`]), then each op (tags 1 to 7) as bytes |
//!
//! Tags 5 to 7 are the read-modify-write commands of the RESP front door
//! (`INCR`, `APPEND`, `SET NX/XX/GET`, `SETNX`, `GETSET`): each is applied as
//! one step of the state machine, so two clients incrementing the same key
//! never both read the old value, and a retried one (same session sequence)
//! is applied once like any write. Tags 1 to 4 keep their encodings.
//!
//! A batch (a write's command only, built by [`encode_batch`]) is applied as
//! one step: its ops in their order, each seeing the ones before it, and
//! answered with one [`KvResponse::Batch`] of their answers in the same
//! order. The RESP front door sends a pipeline's writes to a shard as one
//! batch, which keeps writes of one key in the client's order and costs the
//! log one entry instead of one per command. A node with several shards
//! refuses a batch holding a key of another shard.
//!
//! `Increment` treats an absent key as 0 and a present value as a decimal
//! `i64` (an optional `-`, no `+`, no leading zeros, as Redis's `INCR`);
//! anything else, or a result beyond `i64`, is refused with
//! [`KvRefusal`] and changes nothing. `Append` refuses a result longer than
//! [`VALUE_SIZE_MAX`].
//!
//! `Cas` replaces the key's value with `new` (absent: deletes it) only if the
//! current value equals `expected` (absent: the key must not exist). Keys are
//! 1 to [`KEY_SIZE_MAX`] bytes, values at most [`VALUE_SIZE_MAX`]. A `Get` may
//! also go through the log (a read ordered with the writes).
//!
//! # Answers ([`KvResponse`]): the payload of an `Ok` response
//!
//! | tag | response | then |
//! |---|---|---|
//! | 1 | `Value` | value: opt |
//! | 2 | `Written` | nothing |
//! | 3 | `Deleted` | existed: `u8` 0 or 1 |
//! | 4 | `CasSucceeded` | nothing |
//! | 5 | `CasFailed` | current value: opt |
//! | 6 | `Integer` | `i64`: an `Increment`'s new value, an `Append`'s new length |
//! | 7 | `Refused` | reason: `u8`, a [`KvRefusal`] code; nothing changed |
//! | 8 | `SetDone` | written: `u8` 0 or 1, previous value: opt (only when `get` was asked) |
//! | 9 | `Count` | `u64`: keys in the shard |
//! | 10 | `Batch` | count: `u32`, then each answer as bytes (a batch's answers, in its ops' order) |

use bytes::{BufMut, Bytes, BytesMut};

use crate::compact::{optional_bytes_size, put_bytes, put_optional_bytes, FormatError, Reader};

/// The seed of the key hash that picks a shard: any fixed value other than
/// crc32c's own initial value, so that the shard hash is independent of
/// the plain crc32c the key-value store uses to spread keys over its
/// buckets (a shard's keys still use every bucket).
pub const SHARD_HASH_SEED: u32 = 0x5EED_5A2D;

/// The shard that owns `key` in a cluster of `shards` shards: hash
/// partitioning, `(crc32c_append(SHARD_HASH_SEED, key) * shards) >> 32`
/// (the hash scaled to the shard count, Lemire's range reduction). Every
/// client and node computes the same; a node refuses a keyed request sent
/// to another shard, naming the right one.
pub fn shard_for_key(key: &[u8], shards: u32) -> u32 {
    assert!(shards > 0, "a cluster has at least one shard");
    let hash = crc32c::crc32c_append(SHARD_HASH_SEED, key);
    ((u64::from(hash) * u64::from(shards)) >> 32) as u32
}

/// The largest key, in bytes.
pub const KEY_SIZE_MAX: usize = 64 * 1024;
/// The largest value, in bytes.
pub const VALUE_SIZE_MAX: usize = 16 * 1024 * 1024;

/// The query that counts a shard's keys (op tag 8, `Count`): it has no
/// key, so it is not a [`KvOp`]; send it to every shard and add the answers.
pub const COUNT_QUERY: &[u8] = &[8];

/// The tag of a batch of ops (see the module doc).
pub const BATCH_TAG: u8 = 9;
/// The most ops in one batch.
pub const BATCH_OPS_MAX: usize = 4096;

/// Encodes `ops` as one batch command (see the module doc).
///
/// # Panics
///
/// If `ops` is empty or longer than [`BATCH_OPS_MAX`].
pub fn encode_batch(ops: &[KvOp]) -> Bytes {
    assert!(!ops.is_empty() && ops.len() <= BATCH_OPS_MAX, "a batch holds 1 to {BATCH_OPS_MAX} ops");
    let mut out = BytesMut::with_capacity(5 + ops.iter().map(batch_op_size).sum::<usize>());
    out.put_u8(BATCH_TAG);
    out.put_u32_le(ops.len() as u32);
    for op in ops {
        // The same bytes as `put_bytes(&op.encode())`: its length, then it.
        out.put_u32_le(op.encode_len() as u32);
        op.encode_into(&mut out);
    }
    out.freeze()
}

/// The encoded size of one op inside a batch, for callers that keep a
/// batch under a size limit.
pub fn batch_op_size(op: &KvOp) -> usize {
    4 + op.encode_len()
}

/// The ops of a batch command, or `None` when `bytes` is not a batch.
/// Nested batches are refused.
pub fn decode_batch(bytes: &[u8]) -> Option<Result<Vec<KvOpRef<'_>>, FormatError>> {
    if bytes.first() != Some(&BATCH_TAG) {
        return None;
    }
    Some((|| {
        let mut reader = Reader::new(&bytes[1..]);
        let count = reader.u32("batch count")? as usize;
        if count == 0 || count > BATCH_OPS_MAX {
            return Err(FormatError::Invalid { what: "batch count", reason: "not between 1 and BATCH_OPS_MAX" });
        }
        let mut ops = Vec::with_capacity(count);
        for _ in 0..count {
            ops.push(KvOpRef::decode(reader.bytes("batched op", usize::MAX)?)?);
        }
        reader.finish("batch")?;
        Ok(ops)
    })())
}

/// When a [`KvOp::Set`] writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetCondition {
    Always = 0,
    /// Only if the key is absent (`NX`).
    IfAbsent = 1,
    /// Only if the key is present (`XX`).
    IfPresent = 2,
}

impl SetCondition {
    fn from_u8(code: u8) -> Option<SetCondition> {
        match code {
            0 => Some(SetCondition::Always),
            1 => Some(SetCondition::IfAbsent),
            2 => Some(SetCondition::IfPresent),
            _ => None,
        }
    }
}

/// Why a read-modify-write op changed nothing ([`KvResponse::Refused`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvRefusal {
    /// `Increment` on a value that is not a decimal `i64`.
    NotAnInteger = 1,
    /// `Increment` past `i64::MAX` or below `i64::MIN`.
    Overflow = 2,
    /// `Append` would make a value longer than [`VALUE_SIZE_MAX`].
    TooLarge = 3,
}

impl KvRefusal {
    fn from_u8(code: u8) -> Option<KvRefusal> {
        match code {
            1 => Some(KvRefusal::NotAnInteger),
            2 => Some(KvRefusal::Overflow),
            3 => Some(KvRefusal::TooLarge),
            _ => None,
        }
    }
}

/// One key-value operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvOp {
    Get { key: Bytes },
    Put { key: Bytes, value: Bytes },
    Delete { key: Bytes },
    Cas { key: Bytes, expected: Option<Bytes>, new: Option<Bytes> },
    Increment { key: Bytes, delta: i64 },
    Append { key: Bytes, value: Bytes },
    Set { key: Bytes, value: Bytes, condition: SetCondition, get: bool },
}

impl KvOp {
    /// The shard that owns this op's key in a cluster of `shards` shards.
    pub fn shard(&self, shards: u32) -> u32 {
        shard_for_key(self.key(), shards)
    }

    pub fn key(&self) -> &Bytes {
        match self {
            KvOp::Get { key }
            | KvOp::Put { key, .. }
            | KvOp::Delete { key }
            | KvOp::Cas { key, .. }
            | KvOp::Increment { key, .. }
            | KvOp::Append { key, .. }
            | KvOp::Set { key, .. } => key,
        }
    }

    /// Whether the op changes state (and so must go through the log).
    pub fn is_write(&self) -> bool {
        !matches!(self, KvOp::Get { .. })
    }

    /// The length of [`KvOp::encode`]'s output.
    pub fn encode_len(&self) -> usize {
        1 + 4
            + self.key().len()
            + match self {
                KvOp::Get { .. } | KvOp::Delete { .. } => 0,
                KvOp::Put { value, .. } | KvOp::Append { value, .. } => 4 + value.len(),
                KvOp::Increment { .. } => 8,
                KvOp::Set { value, .. } => 4 + value.len() + 2,
                KvOp::Cas { expected, new, .. } => {
                    optional_bytes_size(expected.as_deref()) + optional_bytes_size(new.as_deref())
                }
            }
    }

    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.encode_len());
        self.encode_into(&mut out);
        out.freeze()
    }

    /// Appends the encoding of [`KvOp::encode`] (exactly
    /// [`KvOp::encode_len`] bytes) to `out`: a batch is written in place,
    /// without a buffer per op (issue 19: a front door's pipeline of
    /// sixteen small writes paid sixteen allocations and copies for them).
    pub fn encode_into(&self, out: &mut BytesMut) {
        let start = out.len();
        match self {
            KvOp::Get { key } => {
                out.put_u8(1);
                put_bytes(out, key);
            }
            KvOp::Put { key, value } => {
                out.put_u8(2);
                put_bytes(out, key);
                put_bytes(out, value);
            }
            KvOp::Delete { key } => {
                out.put_u8(3);
                put_bytes(out, key);
            }
            KvOp::Cas { key, expected, new } => {
                out.put_u8(4);
                put_bytes(out, key);
                put_optional_bytes(out, expected.as_deref());
                put_optional_bytes(out, new.as_deref());
            }
            KvOp::Increment { key, delta } => {
                out.put_u8(5);
                put_bytes(out, key);
                out.put_i64_le(*delta);
            }
            KvOp::Append { key, value } => {
                out.put_u8(6);
                put_bytes(out, key);
                put_bytes(out, value);
            }
            KvOp::Set { key, value, condition, get } => {
                out.put_u8(7);
                put_bytes(out, key);
                put_bytes(out, value);
                out.put_u8(*condition as u8);
                out.put_u8(u8::from(*get));
            }
        }
        debug_assert_eq!(out.len() - start, self.encode_len());
    }

    /// Reads an op; keys and values are slices of `bytes` (no copy).
    pub fn decode(bytes: &Bytes) -> Result<KvOp, FormatError> {
        let owned = |slice: &[u8]| bytes.slice_ref(slice);
        Ok(match KvOpRef::decode(bytes)? {
            KvOpRef::Get { key } => KvOp::Get { key: owned(key) },
            KvOpRef::Put { key, value } => KvOp::Put { key: owned(key), value: owned(value) },
            KvOpRef::Delete { key } => KvOp::Delete { key: owned(key) },
            KvOpRef::Cas { key, expected, new } => {
                KvOp::Cas { key: owned(key), expected: expected.map(owned), new: new.map(owned) }
            }
            KvOpRef::Increment { key, delta } => KvOp::Increment { key: owned(key), delta },
            KvOpRef::Append { key, value } => KvOp::Append { key: owned(key), value: owned(value) },
            KvOpRef::Set { key, value, condition, get } => {
                KvOp::Set { key: owned(key), value: owned(value), condition, get }
            }
        })
    }
}

/// A [`KvOp`] borrowing the bytes it was decoded from: what apply and query
/// work on, so that they touch no reference count (see `codec`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvOpRef<'a> {
    Get { key: &'a [u8] },
    Put { key: &'a [u8], value: &'a [u8] },
    Delete { key: &'a [u8] },
    Cas { key: &'a [u8], expected: Option<&'a [u8]>, new: Option<&'a [u8]> },
    Increment { key: &'a [u8], delta: i64 },
    Append { key: &'a [u8], value: &'a [u8] },
    Set { key: &'a [u8], value: &'a [u8], condition: SetCondition, get: bool },
}

impl<'a> KvOpRef<'a> {
    pub fn key(&self) -> &'a [u8] {
        match *self {
            KvOpRef::Get { key }
            | KvOpRef::Put { key, .. }
            | KvOpRef::Delete { key }
            | KvOpRef::Cas { key, .. }
            | KvOpRef::Increment { key, .. }
            | KvOpRef::Append { key, .. }
            | KvOpRef::Set { key, .. } => key,
        }
    }

    pub fn decode(bytes: &'a [u8]) -> Result<KvOpRef<'a>, FormatError> {
        let mut reader = Reader::new(bytes);
        let tag = reader.u8("op tag")?;
        let key = reader.bytes("key", KEY_SIZE_MAX)?;
        if key.is_empty() {
            return Err(FormatError::Invalid { what: "key", reason: "keys are not empty" });
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
            5 => KvOpRef::Increment { key, delta: reader.u64("delta")? as i64 },
            6 => KvOpRef::Append { key, value: reader.bytes("value", VALUE_SIZE_MAX)? },
            7 => {
                let value = reader.bytes("value", VALUE_SIZE_MAX)?;
                let condition = SetCondition::from_u8(reader.u8("set condition")?)
                    .ok_or(FormatError::Invalid { what: "set condition", reason: "not 0, 1 or 2" })?;
                KvOpRef::Set { key, value, condition, get: reader.flag("get")? }
            }
            tag => return Err(FormatError::UnknownTag { what: "op", tag }),
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
    /// An `Increment`'s new value, or an `Append`'s new length.
    Integer(i64),
    /// A read-modify-write op changed nothing, for this reason.
    Refused(KvRefusal),
    /// A `Set`: whether it wrote, and the value before it (only when it
    /// asked for it with `get`; `None` also when the key was absent).
    SetDone { written: bool, previous: Option<Bytes> },
    /// The `Count` query: keys in the shard.
    Count(u64),
    /// A batch's answers, in its ops' order.
    Batch(Vec<KvResponse>),
}

impl KvResponse {
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::new();
        self.encode_into(&mut out);
        out.freeze()
    }

    pub fn encode_into(&self, out: &mut BytesMut) {
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
            KvResponse::Integer(value) => {
                out.put_u8(6);
                out.put_i64_le(*value);
            }
            KvResponse::Refused(reason) => {
                out.put_u8(7);
                out.put_u8(*reason as u8);
            }
            KvResponse::SetDone { written, previous } => {
                out.put_u8(8);
                out.put_u8(u8::from(*written));
                put_optional_bytes(out, previous.as_deref());
            }
            KvResponse::Count(count) => {
                out.put_u8(9);
                out.put_u64_le(*count);
            }
            KvResponse::Batch(answers) => {
                out.put_u8(10);
                out.put_u32_le(u32::try_from(answers.len()).expect("a batch holds at most BATCH_OPS_MAX ops"));
                let mut answer = BytesMut::new();
                for each in answers {
                    answer.clear();
                    each.encode_into(&mut answer);
                    put_bytes(out, &answer);
                }
            }
        }
    }

    pub fn decode(bytes: &Bytes) -> Result<KvResponse, FormatError> {
        let mut reader = Reader::new(bytes);
        let owned = |slice: Option<&[u8]>| slice.map(|slice| bytes.slice_ref(slice));
        let response = match reader.u8("response tag")? {
            1 => KvResponse::Value(owned(reader.optional_bytes("value", VALUE_SIZE_MAX)?)),
            2 => KvResponse::Written,
            3 => KvResponse::Deleted { existed: reader.flag("existed")? },
            4 => KvResponse::CasSucceeded,
            5 => KvResponse::CasFailed { current: owned(reader.optional_bytes("current value", VALUE_SIZE_MAX)?) },
            6 => KvResponse::Integer(reader.u64("integer")? as i64),
            7 => KvResponse::Refused(
                KvRefusal::from_u8(reader.u8("refusal")?)
                    .ok_or(FormatError::Invalid { what: "refusal", reason: "unknown code" })?,
            ),
            8 => KvResponse::SetDone {
                written: reader.flag("written")?,
                previous: owned(reader.optional_bytes("previous value", VALUE_SIZE_MAX)?),
            },
            9 => KvResponse::Count(reader.u64("count")?),
            10 => {
                let count = reader.u32("batch count")? as usize;
                if count > BATCH_OPS_MAX {
                    return Err(FormatError::Invalid { what: "batch count", reason: "above BATCH_OPS_MAX" });
                }
                let mut answers = Vec::with_capacity(count);
                for _ in 0..count {
                    let answer = reader.bytes("batched answer", usize::MAX)?;
                    if answer.first() == Some(&10) {
                        return Err(FormatError::Invalid { what: "batched answer", reason: "batches do not nest" });
                    }
                    answers.push(KvResponse::decode(&bytes.slice_ref(answer))?);
                }
                KvResponse::Batch(answers)
            }
            tag => return Err(FormatError::UnknownTag { what: "response", tag }),
        };
        reader.finish("response")?;
        Ok(response)
    }

    /// The encoding, allocation-free for the fixed answers: an allocation
    /// per write showed in profiles.
    pub fn to_bytes(&self) -> Bytes {
        match self {
            KvResponse::Written => Bytes::from_static(&[2]),
            KvResponse::Deleted { existed: false } => Bytes::from_static(&[3, 0]),
            KvResponse::Deleted { existed: true } => Bytes::from_static(&[3, 1]),
            KvResponse::CasSucceeded => Bytes::from_static(&[4]),
            _ => self.encode(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_spread_evenly_over_shards_and_one_shard_takes_all() {
        for shards in [1u32, 2, 3, 4, 7] {
            let mut counts = vec![0u32; shards as usize];
            for index in 0..40_000u32 {
                counts[shard_for_key(format!("key-{index:012}").as_bytes(), shards) as usize] += 1;
            }
            let expected = 40_000 / shards;
            for (shard, count) in counts.iter().enumerate() {
                assert!(count.abs_diff(expected) < expected / 10, "{shards} shards: shard {shard} got {count}");
            }
        }
        assert_eq!(shard_for_key(b"anything", 1), 0);
    }

    /// The function is part of the protocol: clients and nodes of every
    /// version must agree, so its values are pinned.
    #[test]
    fn the_shard_function_is_fixed() {
        assert_eq!(crc32c::crc32c_append(SHARD_HASH_SEED, b"hello"), 0x0dca_db0b);
        assert_eq!(shard_for_key(b"hello", 4), 0);
        assert_eq!(shard_for_key(b"key-000000000001", 4), 1);
        assert_eq!(shard_for_key(b"a", 4), 1);
        assert_eq!(shard_for_key(b"hello", 1_000), ((0x0dca_db0bu64 * 1_000) >> 32) as u32);
    }

    /// Data directories and clients of earlier versions hold ops 1 to 4 in
    /// these bytes: adding op kinds must not change how they decode.
    #[test]
    fn earlier_encodings_still_decode() {
        let put = [2, 1, 0, 0, 0, b'k', 1, 0, 0, 0, b'v'];
        assert_eq!(
            KvOp::decode(&Bytes::copy_from_slice(&put)),
            Ok(KvOp::Put { key: Bytes::from_static(b"k"), value: Bytes::from_static(b"v") })
        );
        let cas = [4, 1, 0, 0, 0, b'k', 0, 1, 1, 0, 0, 0, b'n'];
        assert_eq!(
            KvOp::decode(&Bytes::copy_from_slice(&cas)),
            Ok(KvOp::Cas { key: Bytes::from_static(b"k"), expected: None, new: Some(Bytes::from_static(b"n")) })
        );
        assert_eq!(KvResponse::decode(&Bytes::from_static(&[3, 1])), Ok(KvResponse::Deleted { existed: true }));
    }

    #[test]
    fn new_ops_and_answers_round_trip() {
        let key = Bytes::from_static(b"counter");
        let ops = [
            KvOp::Increment { key: key.clone(), delta: -7 },
            KvOp::Append { key: key.clone(), value: Bytes::from_static(b"tail") },
            KvOp::Set {
                key: key.clone(),
                value: Bytes::from_static(b"v"),
                condition: SetCondition::IfPresent,
                get: true,
            },
        ];
        for op in ops {
            assert_eq!(KvOp::decode(&op.encode()), Ok(op.clone()), "{op:?}");
        }
        let responses = [
            KvResponse::Integer(i64::MIN),
            KvResponse::Refused(KvRefusal::Overflow),
            KvResponse::SetDone { written: false, previous: Some(Bytes::from_static(b"old")) },
            KvResponse::Count(12),
        ];
        for response in responses {
            assert_eq!(KvResponse::decode(&response.encode()), Ok(response.clone()), "{response:?}");
        }
        assert!(KvOp::decode(&Bytes::from_static(COUNT_QUERY)).is_err(), "a count is no keyed op");
    }

    #[test]
    fn batches_round_trip_and_do_not_nest() {
        let ops = [
            KvOp::Put { key: Bytes::from_static(b"a"), value: Bytes::from_static(b"1") },
            KvOp::Increment { key: Bytes::from_static(b"a"), delta: 2 },
            KvOp::Delete { key: Bytes::from_static(b"b") },
            KvOp::Cas { key: Bytes::from_static(b"c"), expected: None, new: Some(Bytes::from_static(b"3")) },
            KvOp::Append { key: Bytes::from_static(b"d"), value: Bytes::from_static(b"tail") },
            KvOp::Set {
                key: Bytes::from_static(b"e"),
                value: Bytes::from_static(b"v"),
                condition: SetCondition::IfAbsent,
                get: true,
            },
        ];
        let batch = encode_batch(&ops);
        assert_eq!(batch.len(), 5 + ops.iter().map(batch_op_size).sum::<usize>());
        // Written in place, a batch is byte for byte each op's own encoding
        // behind its length (the log's format: replicas of any version agree).
        let mut expected = BytesMut::new();
        expected.put_u8(BATCH_TAG);
        expected.put_u32_le(ops.len() as u32);
        for op in &ops {
            put_bytes(&mut expected, &op.encode());
        }
        assert_eq!(batch, expected.freeze());
        let decoded = decode_batch(&batch).expect("a batch").expect("well formed");
        let encoded: Vec<Bytes> = ops.iter().map(KvOp::encode).collect();
        assert_eq!(decoded, encoded.iter().map(|op| KvOpRef::decode(op).unwrap()).collect::<Vec<_>>());
        assert!(decode_batch(&ops[0].encode()).is_none(), "a single op is not a batch");
        assert!(KvOp::decode(&batch).is_err(), "a batch is not a single op");

        let mut nested = BytesMut::new();
        nested.put_u8(BATCH_TAG);
        nested.put_u32_le(1);
        put_bytes(&mut nested, &batch);
        assert!(decode_batch(&nested).unwrap().is_err(), "batches do not nest");
        let mut empty = BytesMut::new();
        empty.put_u8(BATCH_TAG);
        empty.put_u32_le(0);
        assert!(decode_batch(&empty).unwrap().is_err(), "an empty batch is refused");
        let truncated = &batch[..batch.len() - 1];
        assert!(decode_batch(truncated).unwrap().is_err());

        let answers = KvResponse::Batch(vec![
            KvResponse::Written,
            KvResponse::Integer(3),
            KvResponse::Deleted { existed: false },
            KvResponse::Value(Some(Bytes::from_static(b"v"))),
        ]);
        assert_eq!(KvResponse::decode(&answers.encode()), Ok(answers));
    }
}
