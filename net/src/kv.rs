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

/// One key-value operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvOp {
    Get { key: Bytes },
    Put { key: Bytes, value: Bytes },
    Delete { key: Bytes },
    Cas { key: Bytes, expected: Option<Bytes>, new: Option<Bytes> },
}

impl KvOp {
    /// The shard that owns this op's key in a cluster of `shards` shards.
    pub fn shard(&self, shards: u32) -> u32 {
        shard_for_key(self.key(), shards)
    }

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
    pub fn decode(bytes: &Bytes) -> Result<KvOp, FormatError> {
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
pub enum KvOpRef<'a> {
    Get { key: &'a [u8] },
    Put { key: &'a [u8], value: &'a [u8] },
    Delete { key: &'a [u8] },
    Cas { key: &'a [u8], expected: Option<&'a [u8]>, new: Option<&'a [u8]> },
}

impl<'a> KvOpRef<'a> {
    pub fn key(&self) -> &'a [u8] {
        match *self {
            KvOpRef::Get { key } | KvOpRef::Put { key, .. } | KvOpRef::Delete { key } | KvOpRef::Cas { key, .. } => key,
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
}
