//! The entry-batch format: one encoding for entries on the wire and on disk.
//!
//! A leader encodes a batch once; the same bytes go to every follower and into
//! its own write-ahead log, and a follower writes the bytes it received straight
//! into its log. Decoding borrows: every payload is a `Bytes` slice of the
//! buffer the batch arrived in.
//!
//! Layout (all integers little-endian, no padding):
//!
//! ```text
//! BatchHeader (40 bytes)
//!   0  crc32c      u32  over bytes 4..length of the batch (header rest + body)
//!   4  length      u32  total bytes of the batch, this header included
//!   8  first_index u64
//!  16  first_term  u64
//!  24  last_term   u64
//!  32  count       u32  number of entries, at least 1
//!  36  magic       u16  0xBA7C
//!  38  version     u8   1
//!  39  flags       u8   0 (reserved)
//! then `count` times:
//! EntryHeader (24 bytes)
//!   0  index       u64  first_index + position
//!   8  term        u64  non-decreasing, first = first_term, last = last_term
//!  16  length      u32  payload bytes that follow this header
//!  20  kind        u8   1 normal, 2 configuration, 3 no-op
//!  21  reserved    [u8; 3] zero
//! payload (length bytes)
//! ```

use bytes::{BufMut, Bytes, BytesMut};
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::types::{Entry, EntryKind, Index, Term};

/// The magic number that opens every batch header's tail; it lets a log
/// scanner tell a batch from zeroed, preallocated space.
pub const BATCH_MAGIC: u16 = 0xBA7C;
/// The format version this code writes and reads.
pub const BATCH_VERSION: u8 = 1;
/// Size of [`BatchHeader`] in bytes.
pub const BATCH_HEADER_SIZE: usize = 40;
/// Size of [`EntryHeader`] in bytes.
pub const ENTRY_HEADER_SIZE: usize = 24;
/// The largest batch any reader accepts unless told a smaller limit. A length
/// claimed by a peer or a disk is checked against a limit before anything is
/// allocated for it.
pub const BATCH_BYTES_LIMIT: usize = 64 << 20;

/// The fixed header that opens every batch.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct BatchHeader {
    pub crc: U32,
    pub length: U32,
    pub first_index: U64,
    pub first_term: U64,
    pub last_term: U64,
    pub count: U32,
    pub magic: U16,
    pub version: u8,
    pub flags: u8,
}

/// The fixed header before each entry's payload.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct EntryHeader {
    pub index: U64,
    pub term: U64,
    pub length: U32,
    pub kind: u8,
    pub reserved: [u8; 3],
}

const _: () = assert!(size_of::<BatchHeader>() == BATCH_HEADER_SIZE);
const _: () = assert!(size_of::<EntryHeader>() == ENTRY_HEADER_SIZE);

/// Why bytes are not a valid batch. Every variant is bad input (from a peer or
/// a damaged disk), never a bug, so callers turn it into a typed error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("batch truncated: need {needed} bytes, have {available}")]
    Truncated { needed: usize, available: usize },
    #[error("bad batch magic {found:#06x} (expected {BATCH_MAGIC:#06x})")]
    BadMagic { found: u16 },
    #[error("unsupported batch version {found} (this build reads {BATCH_VERSION})")]
    BadVersion { found: u8 },
    #[error("batch length {length} outside [{BATCH_HEADER_SIZE}, {limit}]")]
    BadLength { length: usize, limit: usize },
    #[error("batch checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum { stored: u32, computed: u32 },
    #[error("batch entry {position}: {reason}")]
    BadEntry { position: u32, reason: &'static str },
    #[error("batch header disagrees with its entries: {reason}")]
    Inconsistent { reason: &'static str },
}

/// A validated, immutable batch of contiguous entries in the shared encoding.
///
/// Invariant: `bytes` holds exactly one batch whose every header field was
/// checked against its entries, so iteration cannot fail.
#[derive(Clone, PartialEq, Eq)]
pub struct EntryBatch {
    bytes: Bytes,
    first_index: Index,
    count: u32,
    first_term: Term,
    last_term: Term,
}

impl std::fmt::Debug for EntryBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "EntryBatch[{}..={} terms {}..={}, {} bytes]",
            self.first_index,
            self.last_index(),
            self.first_term,
            self.last_term,
            self.bytes.len()
        )
    }
}

/// Reads the batch length claimed by a header at the start of `buf`, checked
/// against `limit`, without checking the checksum. Returns `Ok(None)` if fewer
/// than a header's bytes are available. A log scanner uses this to find where
/// a record ends before the whole record is in memory.
pub fn peek_batch_length(buf: &[u8], limit: usize) -> Result<Option<usize>, BatchError> {
    let Ok((header, _)) = BatchHeader::ref_from_prefix(buf) else {
        return Ok(None);
    };
    check_header_fields(header, limit).map(Some)
}

fn check_header_fields(header: &BatchHeader, limit: usize) -> Result<usize, BatchError> {
    if header.magic.get() != BATCH_MAGIC {
        return Err(BatchError::BadMagic { found: header.magic.get() });
    }
    if header.version != BATCH_VERSION {
        return Err(BatchError::BadVersion { found: header.version });
    }
    let length = header.length.get() as usize;
    if !(BATCH_HEADER_SIZE + ENTRY_HEADER_SIZE..=limit).contains(&length) {
        return Err(BatchError::BadLength { length, limit });
    }
    Ok(length)
}

impl EntryBatch {
    /// Decodes the batch at the start of `buf` (which may hold more bytes after
    /// it), verifying the checksum and every header field. The returned batch
    /// borrows `buf`'s storage.
    pub fn decode(buf: &Bytes, limit: usize) -> Result<EntryBatch, BatchError> {
        Self::decode_inner(buf, limit, true)
    }

    /// Like [`EntryBatch::decode`] but skips the crc32c, for bytes that an
    /// outer checksum (a wire frame's body crc) has already covered. Every
    /// structural check still runs, so a bad batch is still refused.
    pub fn decode_checksummed_elsewhere(buf: &Bytes, limit: usize) -> Result<EntryBatch, BatchError> {
        Self::decode_inner(buf, limit, false)
    }

    fn decode_inner(buf: &Bytes, limit: usize, verify_crc: bool) -> Result<EntryBatch, BatchError> {
        let (header, _) = BatchHeader::ref_from_prefix(buf.as_ref())
            .map_err(|_| BatchError::Truncated { needed: BATCH_HEADER_SIZE, available: buf.len() })?;
        let length = check_header_fields(header, limit)?;
        if buf.len() < length {
            return Err(BatchError::Truncated { needed: length, available: buf.len() });
        }
        if header.flags != 0 {
            return Err(BatchError::Inconsistent { reason: "reserved flags are set" });
        }
        let stored = header.crc.get();
        if verify_crc {
            let computed = crc32c::crc32c(&buf[4..length]);
            if stored != computed {
                return Err(BatchError::Checksum { stored, computed });
            }
        }
        let count = header.count.get();
        let first_index = header.first_index.get();
        let first_term = header.first_term.get();
        let last_term = header.last_term.get();
        if count == 0 {
            return Err(BatchError::Inconsistent { reason: "count is zero" });
        }
        if first_index == 0 {
            return Err(BatchError::Inconsistent { reason: "first index is zero" });
        }
        if first_index.checked_add(u64::from(count)).is_none() {
            return Err(BatchError::Inconsistent { reason: "index range overflows" });
        }
        // Counts must agree with lengths before any per-entry work.
        if (count as usize).saturating_mul(ENTRY_HEADER_SIZE) > length - BATCH_HEADER_SIZE {
            return Err(BatchError::Inconsistent { reason: "count exceeds what the length can hold" });
        }
        let mut offset = BATCH_HEADER_SIZE;
        let mut previous_term = first_term;
        for position in 0..count {
            let (entry, _) = EntryHeader::ref_from_prefix(&buf[offset..length])
                .map_err(|_| BatchError::BadEntry { position, reason: "entry header truncated" })?;
            if entry.index.get() != first_index + u64::from(position) {
                return Err(BatchError::BadEntry { position, reason: "index is not contiguous" });
            }
            let term = entry.term.get();
            if position == 0 && term != first_term {
                return Err(BatchError::BadEntry { position, reason: "term differs from first_term" });
            }
            if term < previous_term {
                return Err(BatchError::BadEntry { position, reason: "term decreases" });
            }
            previous_term = term;
            if EntryKind::from_u8(entry.kind).is_none() {
                return Err(BatchError::BadEntry { position, reason: "unknown entry kind" });
            }
            if entry.reserved != [0; 3] {
                return Err(BatchError::BadEntry { position, reason: "reserved bytes are set" });
            }
            let payload = entry.length.get() as usize;
            offset += ENTRY_HEADER_SIZE;
            if payload > length - offset {
                return Err(BatchError::BadEntry { position, reason: "payload runs past the batch" });
            }
            offset += payload;
        }
        if offset != length {
            return Err(BatchError::Inconsistent { reason: "bytes left over after the last entry" });
        }
        if previous_term != last_term {
            return Err(BatchError::Inconsistent { reason: "last entry's term differs from last_term" });
        }
        Ok(EntryBatch { bytes: buf.slice(..length), first_index, count, first_term, last_term })
    }

    /// Encodes `entries` (contiguous indices, non-decreasing terms, at least
    /// one) into a new batch. Payloads are copied once, here.
    pub fn encode(entries: &[Entry]) -> EntryBatch {
        EntryBatch::encode_from(entries.iter())
    }

    /// [`EntryBatch::encode`] from borrowed entries, such as a range of the
    /// leader's log: no vector of cloned entries (an allocation and two
    /// reference-count updates per entry) on the way.
    pub fn encode_from<'a>(entries: impl ExactSizeIterator<Item = &'a Entry> + Clone) -> EntryBatch {
        EntryBatch::encode_filtered(entries, |_| true)
    }

    /// Encodes the metadata of `entries` for a witness: the same indices,
    /// terms and kinds, with every payload empty except configuration
    /// entries', which a witness needs to know the membership. Costs the
    /// entry headers (and configuration payloads) only, whatever the
    /// payloads' size.
    pub fn encode_metadata_from<'a>(entries: impl ExactSizeIterator<Item = &'a Entry> + Clone) -> EntryBatch {
        EntryBatch::encode_filtered(entries, keeps_payload_for_witness)
    }

    /// This batch as a witness receives it (see
    /// [`EntryBatch::encode_metadata_from`]). A batch with no payload to
    /// strip is shared, not copied.
    pub fn metadata_only(&self) -> EntryBatch {
        if self.entries().all(|entry| entry.data.is_empty() || keeps_payload_for_witness(&entry)) {
            return self.clone();
        }
        let entries: Vec<Entry> = self.entries().collect();
        EntryBatch::encode_metadata_from(entries.iter())
    }

    /// Whether every payload in the batch is one a witness may hold: a
    /// batch from a leader to a witness must pass this.
    pub fn is_metadata_only(&self) -> bool {
        self.entries().all(|entry| entry.data.is_empty() || keeps_payload_for_witness(&entry))
    }

    /// [`EntryBatch::encode_from`], writing the payload of an entry only when
    /// `keep_payload` says so (an empty one otherwise).
    fn encode_filtered<'a>(
        entries: impl ExactSizeIterator<Item = &'a Entry> + Clone,
        keep_payload: impl Fn(&Entry) -> bool,
    ) -> EntryBatch {
        let count = entries.len();
        assert!(count > 0, "a batch holds at least one entry");
        let payload = |entry: &'a Entry| -> &'a [u8] {
            if keep_payload(entry) {
                &entry.data
            } else {
                &[]
            }
        };
        let length: usize =
            BATCH_HEADER_SIZE + entries.clone().map(|entry| ENTRY_HEADER_SIZE + payload(entry).len()).sum::<usize>();
        assert!(length <= u32::MAX as usize, "batch of {length} bytes does not fit the format");
        let first = entries.clone().next().expect("count > 0");
        let (first_index, first_term) = (first.index, first.term);
        let mut buf = BytesMut::with_capacity(length);
        buf.put_bytes(0, BATCH_HEADER_SIZE);
        let mut previous_term = first_term;
        for (position, entry) in entries.enumerate() {
            assert_eq!(entry.index, first_index + position as u64, "batch entries must be contiguous");
            assert!(entry.term >= previous_term, "batch entry terms must not decrease");
            previous_term = entry.term;
            let entry_header = EntryHeader {
                index: U64::new(entry.index),
                term: U64::new(entry.term),
                length: U32::new(u32::try_from(payload(entry).len()).expect("payload over 4 GiB")),
                kind: entry.kind as u8,
                reserved: [0; 3],
            };
            buf.put_slice(entry_header.as_bytes());
            buf.put_slice(payload(entry));
        }
        let last_term = previous_term;
        let header = BatchHeader {
            crc: U32::new(0),
            length: U32::new(length as u32),
            first_index: U64::new(first_index),
            first_term: U64::new(first_term),
            last_term: U64::new(last_term),
            count: U32::new(count as u32),
            magic: U16::new(BATCH_MAGIC),
            version: BATCH_VERSION,
            flags: 0,
        };
        buf[..BATCH_HEADER_SIZE].copy_from_slice(header.as_bytes());
        debug_assert_eq!(buf.len(), length);
        let crc = crc32c::crc32c(&buf[4..]);
        buf[0..4].copy_from_slice(&crc.to_le_bytes());
        EntryBatch { bytes: buf.freeze(), first_index, count: count as u32, first_term, last_term }
    }

    /// The encoded bytes, exactly one batch long.
    pub fn as_bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// Consumes the batch, giving back its encoded bytes.
    pub fn into_bytes(self) -> Bytes {
        self.bytes
    }

    /// Encoded size in bytes.
    pub fn len_bytes(&self) -> usize {
        self.bytes.len()
    }

    pub fn first_index(&self) -> Index {
        self.first_index
    }

    pub fn last_index(&self) -> Index {
        self.first_index + u64::from(self.count) - 1
    }

    pub fn count(&self) -> u32 {
        self.count
    }

    pub fn first_term(&self) -> Term {
        self.first_term
    }

    pub fn last_term(&self) -> Term {
        self.last_term
    }

    /// The stored checksum (over bytes 4.. of the batch).
    pub fn crc(&self) -> u32 {
        u32::from_le_bytes(self.bytes[0..4].try_into().expect("header present"))
    }

    /// The entries, each payload a zero-copy slice of the batch.
    pub fn entries(&self) -> EntryIter<'_> {
        EntryIter { batch: self, offset: BATCH_HEADER_SIZE, remaining: self.count }
    }
}

/// Whether a witness receives this entry's payload: only a configuration
/// entry's, because a witness must know the membership to vote and count.
fn keeps_payload_for_witness(entry: &Entry) -> bool {
    entry.kind == EntryKind::Config
}

/// Iterates the entries of a validated batch.
pub struct EntryIter<'a> {
    batch: &'a EntryBatch,
    offset: usize,
    remaining: u32,
}

impl Iterator for EntryIter<'_> {
    type Item = Entry;

    fn next(&mut self) -> Option<Entry> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        let bytes = &self.batch.bytes;
        let (header, _) = EntryHeader::ref_from_prefix(&bytes[self.offset..]).expect("validated batch");
        let start = self.offset + ENTRY_HEADER_SIZE;
        let end = start + header.length.get() as usize;
        self.offset = end;
        Some(Entry {
            index: header.index.get(),
            term: header.term.get(),
            kind: EntryKind::from_u8(header.kind).expect("validated batch"),
            data: bytes.slice(start..end),
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining as usize, Some(self.remaining as usize))
    }
}

impl ExactSizeIterator for EntryIter<'_> {}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(index: Index, term: Term, data: &[u8]) -> Entry {
        Entry { index, term, kind: EntryKind::Normal, data: Bytes::copy_from_slice(data) }
    }

    #[test]
    fn round_trip_borrows_payloads() {
        let entries = vec![entry(5, 2, b"hello"), entry(6, 2, b""), entry(7, 3, b"world")];
        let batch = EntryBatch::encode(&entries);
        let bytes = batch.as_bytes().clone();
        let decoded = EntryBatch::decode(&bytes, BATCH_BYTES_LIMIT).unwrap();
        assert_eq!(decoded.first_index(), 5);
        assert_eq!(decoded.last_index(), 7);
        assert_eq!(decoded.last_term(), 3);
        let back: Vec<Entry> = decoded.entries().collect();
        assert_eq!(back, entries);
        // The payload is a slice of the receive buffer, not a copy.
        let base = bytes.as_ptr() as usize;
        let payload = back[0].data.as_ptr() as usize;
        assert!(payload > base && payload < base + bytes.len());
    }

    #[test]
    fn bit_flip_is_a_checksum_error() {
        let batch = EntryBatch::encode(&[entry(1, 1, b"abc")]);
        let mut raw = batch.as_bytes().to_vec();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        let err = EntryBatch::decode(&Bytes::from(raw), BATCH_BYTES_LIMIT).unwrap_err();
        assert!(matches!(err, BatchError::Checksum { .. }), "{err}");
    }

    #[test]
    fn claimed_length_over_limit_is_refused_before_reading() {
        let batch = EntryBatch::encode(&[entry(1, 1, &[7; 100])]);
        let err = EntryBatch::decode(batch.as_bytes(), 64).unwrap_err();
        assert!(matches!(err, BatchError::BadLength { .. }), "{err}");
    }

    /// A witness's batch keeps every index, term and kind and the
    /// configuration payloads, and drops every other payload byte.
    #[test]
    fn metadata_only_strips_normal_payloads() {
        let config = Entry { index: 6, term: 2, kind: EntryKind::Config, data: Bytes::from_static(b"conf") };
        let entries = vec![entry(5, 2, b"hello"), config.clone(), entry(7, 3, b"world")];
        let batch = EntryBatch::encode(&entries);
        let stripped = batch.metadata_only();
        let decoded = EntryBatch::decode(stripped.as_bytes(), BATCH_BYTES_LIMIT).unwrap();
        let back: Vec<Entry> = decoded.entries().collect();
        assert_eq!(back, vec![entry(5, 2, b""), config, entry(7, 3, b"")]);
        assert_eq!((decoded.first_index(), decoded.last_index(), decoded.last_term()), (5, 7, 3));
        assert!(stripped.is_metadata_only());
        assert!(!batch.is_metadata_only());
        assert_eq!(stripped.len_bytes(), batch.len_bytes() - b"helloworld".len());
        // Nothing to strip: the very same bytes are shared.
        let empty = EntryBatch::encode(&[entry(1, 1, b"")]);
        assert_eq!(empty.metadata_only().as_bytes().as_ptr(), empty.as_bytes().as_ptr());
    }

    proptest! {
        #[test]
        fn round_trip(first in 1u64..1_000_000, term in 0u64..100, payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 1..20)) {
            let entries: Vec<Entry> = payloads.iter().enumerate().map(|(i, p)| entry(first + i as u64, term + (i as u64 / 3), p)).collect();
            let batch = EntryBatch::encode(&entries);
            let decoded = EntryBatch::decode(batch.as_bytes(), BATCH_BYTES_LIMIT).unwrap();
            prop_assert_eq!(decoded.entries().collect::<Vec<_>>(), entries);
        }

        #[test]
        fn arbitrary_bytes_never_panic(raw in proptest::collection::vec(any::<u8>(), 0..256)) {
            let bytes = Bytes::from(raw);
            let _ = EntryBatch::decode(&bytes, BATCH_BYTES_LIMIT);
            let _ = EntryBatch::decode_checksummed_elsewhere(&bytes, BATCH_BYTES_LIMIT);
            let _ = peek_batch_length(&bytes, BATCH_BYTES_LIMIT);
        }

        #[test]
        fn corrupted_valid_batch_never_panics(flip in 0usize..200, bit in 0u8..8) {
            let batch = EntryBatch::encode(&[entry(3, 1, b"abcdef"), entry(4, 2, b"xyz")]);
            let mut raw = batch.as_bytes().to_vec();
            let at = flip % raw.len();
            raw[at] ^= 1 << bit;
            let bytes = Bytes::from(raw);
            let _ = EntryBatch::decode_checksummed_elsewhere(&bytes, BATCH_BYTES_LIMIT);
            prop_assert!(EntryBatch::decode(&bytes, BATCH_BYTES_LIMIT).is_err());
        }
    }
}
