//! The engine's in-memory view of the replicated log.
//!
//! Every entry after the latest snapshot is held in memory (payloads are
//! slices of encoded batches, so a held entry costs its payload once); log
//! compaction after a snapshot bounds the entries. Their payloads are
//! bounded apart from that: an applied entry's payload may be dropped
//! (evicted) before any snapshot covers it, keeping its index, term and
//! kind, so the log still matches and counts terms but can no longer send
//! it (see `Raft::evict_payloads`). Four cursors describe where each
//! entry is in its life: handed to the shell for persistence, durable,
//! committed, handed to the shell to apply; a fifth, `evicted`, where the
//! payloads start.

use std::collections::VecDeque;

use crate::batch::EntryBatch;
use crate::types::{Entry, EntryKind, Index, Term};

/// The log and its cursors.
///
/// Invariants: `entries[i].index == offset_index + 1 + i`;
/// `applied <= committed`; `committed <= last_index()`;
/// `persisted <= handed <= last_index()`; `evicted <= applied`, and every
/// entry at or below `evicted` holds no payload unless it is a
/// configuration entry; `held_bytes` is the sum of the payloads held.
#[derive(Clone, Debug)]
pub struct RaftLog {
    /// Index and term of the entry just before `entries[0]`: the snapshot
    /// point, or 0/0 for a log that was never compacted.
    offset_index: Index,
    offset_term: Term,
    entries: VecDeque<Entry>,
    /// Highest index known committed.
    pub committed: Index,
    /// Highest index handed to the shell to apply.
    pub applied: Index,
    /// Highest index the shell reported durable.
    pub persisted: Index,
    /// Highest index handed to the shell to persist.
    pub handed: Index,
    /// Highest index whose payload was dropped (or the snapshot point, if
    /// higher: see [`RaftLog::payloads_from`]).
    evicted: Index,
    /// Payload bytes of the entries held.
    held_bytes: u64,
}

impl RaftLog {
    /// A log that starts after a snapshot point (0/0 for an empty log), with
    /// `entries` that follow it, all of them already durable.
    pub fn new(offset_index: Index, offset_term: Term, entries: Vec<Entry>) -> RaftLog {
        for (position, entry) in entries.iter().enumerate() {
            assert_eq!(entry.index, offset_index + 1 + position as u64, "recovered entries must be contiguous");
        }
        let last = offset_index + entries.len() as u64;
        let held_bytes = entries.iter().map(|entry| entry.data.len() as u64).sum();
        RaftLog {
            offset_index,
            offset_term,
            entries: entries.into(),
            committed: offset_index,
            applied: offset_index,
            persisted: last,
            handed: last,
            evicted: offset_index,
            held_bytes,
        }
    }

    /// The first index whose entry the log can still send whole: after the
    /// snapshot point and after every dropped payload.
    pub fn payloads_from(&self) -> Index {
        self.evicted.max(self.offset_index) + 1
    }

    /// Payload bytes the log holds.
    pub fn held_bytes(&self) -> u64 {
        self.held_bytes
    }

    /// Drops the payloads of the oldest entries, up to `limit` (at most the
    /// applied index), while the log holds more than `budget` payload bytes.
    /// Configuration entries keep theirs (they are small, and membership is
    /// read from them). Each entry is dropped once: amortized O(1).
    pub fn evict(&mut self, limit: Index, budget: u64) {
        let limit = limit.min(self.applied).min(self.last_index());
        let mut index = self.payloads_from();
        while self.held_bytes > budget && index <= limit {
            let entry = &mut self.entries[(index - self.offset_index - 1) as usize];
            if entry.kind != EntryKind::Config {
                self.held_bytes -= entry.data.len() as u64;
                entry.data = bytes::Bytes::new();
            }
            self.evicted = index;
            index += 1;
        }
    }

    /// Marks the payloads up to `index` (at most the applied index) as
    /// dropped: a store that recovered them without payloads (see
    /// `Recovered::applied`).
    pub fn payloads_dropped_to(&mut self, index: Index) {
        debug_assert!(index <= self.applied, "only applied entries lose their payloads");
        debug_assert!(self
            .entries
            .iter()
            .take_while(|entry| entry.index <= index)
            .all(|entry| { entry.data.is_empty() || entry.kind == EntryKind::Config }));
        self.evicted = self.evicted.max(index.min(self.applied));
    }

    pub fn first_index(&self) -> Index {
        self.offset_index + 1
    }

    pub fn last_index(&self) -> Index {
        self.offset_index + self.entries.len() as u64
    }

    pub fn last_term(&self) -> Term {
        self.entries.back().map_or(self.offset_term, |entry| entry.term)
    }

    /// The snapshot point (index, term) before the first held entry.
    pub fn offset(&self) -> (Index, Term) {
        (self.offset_index, self.offset_term)
    }

    /// The term at `index`, if the log still knows it.
    pub fn term(&self, index: Index) -> Option<Term> {
        if index == self.offset_index {
            return Some(self.offset_term);
        }
        if index < self.offset_index || index > self.last_index() {
            return None;
        }
        Some(self.entries[(index - self.offset_index - 1) as usize].term)
    }

    pub fn matches(&self, index: Index, term: Term) -> bool {
        self.term(index) == Some(term)
    }

    pub fn entry(&self, index: Index) -> Option<&Entry> {
        if index <= self.offset_index || index > self.last_index() {
            return None;
        }
        Some(&self.entries[(index - self.offset_index - 1) as usize])
    }

    /// Borrowed entries in `[low, high]`, capped at `bytes_max` (at least one
    /// entry when `low` is held), as [`RaftLog::slice`] selects them.
    pub fn range(&self, low: Index, high: Index, bytes_max: usize) -> std::collections::vec_deque::Iter<'_, Entry> {
        if low <= self.offset_index || low > high.min(self.last_index()) {
            return self.entries.range(0..0);
        }
        let start = (low - self.offset_index - 1) as usize;
        let available = (high.min(self.last_index()) - low + 1) as usize;
        let mut bytes = 0;
        let mut count = 0;
        for entry in self.entries.range(start..start + available) {
            bytes += entry.encoded_size();
            if bytes > bytes_max && count > 0 {
                break;
            }
            count += 1;
        }
        self.entries.range(start..start + count)
    }

    /// Entries in `[low, high]`, capped at `bytes_max` (at least one entry).
    pub fn slice(&self, low: Index, high: Index, bytes_max: usize) -> Vec<Entry> {
        let mut out = Vec::new();
        let mut bytes = 0;
        let mut index = low;
        while index <= high {
            let Some(entry) = self.entry(index) else { break };
            bytes += entry.encoded_size();
            if bytes > bytes_max && !out.is_empty() {
                break;
            }
            out.push(entry.clone());
            index += 1;
        }
        out
    }

    /// Raft paper 5.4.1: a candidate's log is at least as up to date as ours if
    /// its last term is higher, or equal with an index at least as high.
    pub fn is_up_to_date(&self, last_index: Index, last_term: Term) -> bool {
        last_term > self.last_term() || (last_term == self.last_term() && last_index >= self.last_index())
    }

    /// Appends a new entry at the end (a leader's proposal).
    pub fn push(&mut self, entry: Entry) {
        assert_eq!(entry.index, self.last_index() + 1, "appended entries must be contiguous");
        assert!(entry.term >= self.last_term(), "terms in the log never decrease");
        self.held_bytes += entry.data.len() as u64;
        self.entries.push_back(entry);
    }

    /// Replaces the payloads of entries with slices of the batch that now
    /// holds them, so memory is shared with the bytes sent and persisted.
    pub fn share_payloads(&mut self, batch: &EntryBatch) {
        for entry in batch.entries() {
            let position = (entry.index - self.offset_index - 1) as usize;
            debug_assert_eq!(self.entries[position].term, entry.term);
            self.entries[position].data = entry.data;
        }
    }

    /// Discards entries from `index` on (a conflicting suffix, Raft paper
    /// 5.3). Committed entries are never discarded: that is a bug.
    pub fn truncate_from(&mut self, index: Index) {
        assert!(index > self.committed, "truncating committed entry {index} (commit {})", self.committed);
        if index > self.last_index() {
            return;
        }
        let keep = (index - self.offset_index - 1) as usize;
        self.held_bytes -= self.entries.range(keep..).map(|entry| entry.data.len() as u64).sum::<u64>();
        self.entries.truncate(keep);
        self.handed = self.handed.min(index - 1);
        self.persisted = self.persisted.min(index - 1);
    }

    /// Etcd's `findConflictByTerm`: the largest index at or below `index`
    /// whose term is at most `term`, so a leader (or follower) can skip a
    /// whole term of mismatching entries in one round trip.
    pub fn find_conflict_by_term(&self, index: Index, term: Term) -> (Index, Term) {
        let mut index = index.min(self.last_index());
        loop {
            match self.term(index) {
                Some(found) if found > term => index -= 1,
                Some(found) => return (index, found),
                None => return (index, 0),
            }
        }
    }

    /// Advances the commit index; never moves it back.
    pub fn commit_to(&mut self, index: Index) -> bool {
        if index <= self.committed {
            return false;
        }
        assert!(index <= self.last_index(), "commit {index} beyond last index {}", self.last_index());
        self.committed = index;
        true
    }

    /// Drops entries up to `index` (already covered by a snapshot at
    /// `index`/`term`), keeping later ones.
    pub fn compact_to(&mut self, index: Index, term: Term) {
        if index <= self.offset_index {
            return;
        }
        assert!(index <= self.applied, "compacting past the applied index");
        let drop = ((index - self.offset_index) as usize).min(self.entries.len());
        self.held_bytes -= self.entries.drain(..drop).map(|entry| entry.data.len() as u64).sum::<u64>();
        self.offset_index = index;
        self.offset_term = term;
    }

    /// Replaces the whole log with a snapshot point: everything before it is
    /// gone; entries after it are kept only if the log agrees at the point.
    pub fn restore(&mut self, index: Index, term: Term) {
        if self.matches(index, term) && index >= self.offset_index {
            let drop = (index - self.offset_index) as usize;
            self.held_bytes -= self.entries.drain(..drop).map(|entry| entry.data.len() as u64).sum::<u64>();
        } else {
            self.entries.clear();
            self.held_bytes = 0;
        }
        self.offset_index = index;
        self.offset_term = term;
        self.evicted = index;
        self.committed = self.committed.max(index);
        self.applied = self.applied.max(index);
        self.persisted = self.persisted.max(index).min(self.last_index());
        self.handed = self.handed.max(index).min(self.last_index());
    }

    /// Panics unless payloads were dropped only from applied entries and
    /// `held_bytes` counts the rest.
    pub fn check_payloads(&self) {
        assert!(self.payloads_from() <= self.applied + 1, "payload dropped past applied {}", self.applied);
        let held: u64 = self.entries.iter().map(|entry| entry.data.len() as u64).sum();
        assert_eq!(held, self.held_bytes, "held payload bytes miscounted");
    }

    /// Payload bytes of entries in `(from, to]`.
    pub fn bytes_between(&self, from: Index, to: Index) -> usize {
        ((from + 1)..=to).filter_map(|index| self.entry(index)).map(|entry| entry.data.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::EntryKind;

    /// `range` selects exactly the entries `slice` clones, for every window
    /// and byte cap, including windows outside the log.
    #[test]
    fn range_borrows_what_slice_clones() {
        let entries: Vec<Entry> = (11..=30)
            .map(|index| Entry {
                index,
                term: 2 + index / 10,
                kind: EntryKind::Normal,
                data: Bytes::from(vec![index as u8; (index as usize * 7) % 50]),
            })
            .collect();
        let log = RaftLog::new(10, 2, entries);
        for low in 8..=32u64 {
            for high in low.saturating_sub(1)..=33 {
                for bytes_max in [0, 1, 60, 200, 1000, usize::MAX] {
                    let borrowed: Vec<Entry> = log.range(low, high, bytes_max).cloned().collect();
                    assert_eq!(borrowed, log.slice(low, high, bytes_max), "[{low}, {high}] capped at {bytes_max}");
                }
            }
        }
    }
}
