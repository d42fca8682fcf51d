//! The hash table under each bucket of the key-value store: open addressing
//! with linear probing, a 32-bit tag per slot in an array of its own, and the
//! entries in a second array at the same positions.
//!
//! Why not `std::collections::HashMap`: a lookup of a key that is not in
//! the cache waits for three loads in a row (the table's header, its control
//! bytes, the entry), and then the value. Under load the node looks up a
//! whole committed batch before applying it ([`KvStateMachine::prefetch`]),
//! and with the standard map the only way to do that is one lookup per key,
//! so those waits overlap only as far as the CPU runs ahead on its own
//! (a profile at 256 writes in flight put a quarter of the nodes' CPU in
//! them). Here every step of a lookup can be asked for by position before it
//! is needed ([`Table::prefetch_tags`], [`Table::prefetch_entry`]), so the
//! batch's loads are issued a step at a time for all its keys, and each
//! step's waits overlap.
//!
//! [`KvStateMachine::prefetch`]: crate::kv::KvStateMachine

use std::borrow::Borrow;
use std::hash::BuildHasher;

use rustc_hash::FxBuildHasher;

/// The tag of an empty slot; a key's tag is never 0 ([`tag`]).
const EMPTY: u32 = 0;

/// Slots in a table's first allocation.
const CAPACITY_MIN: usize = 8;

/// A key's hash, truncated: 32 bits are the slot's tag, and the low bits of
/// the same are its home position (so growing never hashes a key again).
/// Seedless and fixed, as the map it replaces was; iteration order never
/// reaches the outside (the snapshot sorts the keys).
pub(crate) fn tag(key: &[u8]) -> u32 {
    match FxBuildHasher.hash_one(key) as u32 {
        EMPTY => 1,
        tag => tag,
    }
}

/// A key-value table; `K` is looked up by its bytes.
#[derive(Clone)]
pub(crate) struct Table<K, V> {
    /// One per slot: [`EMPTY`] or the tag of the entry there. A power of two
    /// long (or empty).
    tags: Box<[u32]>,
    /// The entry at each slot whose tag is not empty.
    entries: Box<[Option<(K, V)>]>,
    len: usize,
}

impl<K, V> Default for Table<K, V> {
    fn default() -> Table<K, V> {
        Table { tags: Box::new([]), entries: Box::new([]), len: 0 }
    }
}

impl<K: Borrow<[u8]>, V> Table<K, V> {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    fn mask(&self) -> usize {
        self.tags.len().wrapping_sub(1)
    }

    /// The slot holding `key` (whose tag is `tag`), if any.
    fn find(&self, key: &[u8], tag: u32) -> Option<usize> {
        if self.len == 0 {
            return None;
        }
        let mask = self.mask();
        let mut slot = tag as usize & mask;
        loop {
            match self.tags[slot] {
                EMPTY => return None,
                found if found == tag => {
                    let (stored, _) = self.entries[slot].as_ref().expect("a tagged slot holds an entry");
                    if stored.borrow() == key {
                        return Some(slot);
                    }
                }
                _ => {}
            }
            slot = (slot + 1) & mask;
        }
    }

    pub(crate) fn get(&self, key: &[u8]) -> Option<&V> {
        self.get_tagged(key, tag(key))
    }

    /// As [`Table::get`], with the key's tag already computed.
    pub(crate) fn get_tagged(&self, key: &[u8], tag: u32) -> Option<&V> {
        let slot = self.find(key, tag)?;
        self.entries[slot].as_ref().map(|(_, value)| value)
    }

    pub(crate) fn get_mut(&mut self, key: &[u8]) -> Option<&mut V> {
        let slot = self.find(key, tag(key))?;
        self.entries[slot].as_mut().map(|(_, value)| value)
    }

    #[cfg(test)]
    pub(crate) fn contains_key(&self, key: &[u8]) -> bool {
        self.find(key, tag(key)).is_some()
    }

    /// Stores `value` under `key`, which the table must not hold (callers
    /// look it up first, to update in place).
    pub(crate) fn insert_new(&mut self, key: K, value: V) {
        let tag = tag(key.borrow());
        debug_assert!(self.find(key.borrow(), tag).is_none(), "insert_new of a key the table holds");
        // Grown at three quarters full: linear probing's runs stay short
        // (about 2.5 probes for a hit at the most, one tag line).
        if (self.len + 1) * 4 > self.tags.len() * 3 {
            self.grow();
        }
        self.place(tag, key, value);
        self.len += 1;
    }

    /// Puts an entry in the first empty slot from its home.
    fn place(&mut self, tag: u32, key: K, value: V) {
        let mask = self.mask();
        let mut slot = tag as usize & mask;
        while self.tags[slot] != EMPTY {
            slot = (slot + 1) & mask;
        }
        self.tags[slot] = tag;
        self.entries[slot] = Some((key, value));
    }

    fn grow(&mut self) {
        let capacity = (self.tags.len() * 2).max(CAPACITY_MIN);
        let tags = std::mem::replace(&mut self.tags, vec![EMPTY; capacity].into_boxed_slice());
        let entries = std::mem::replace(&mut self.entries, (0..capacity).map(|_| None).collect());
        for (tag, entry) in tags.iter().zip(entries.into_vec()) {
            if let Some((key, value)) = entry {
                self.place(*tag, key, value);
            }
        }
    }

    /// Takes `key`'s entry out, and moves later entries of its run back so
    /// that no lookup meets an empty slot before its key (no tombstones).
    pub(crate) fn remove(&mut self, key: &[u8]) -> Option<V> {
        let mut hole = self.find(key, tag(key))?;
        let (_, value) = self.entries[hole].take().expect("a found slot holds an entry");
        self.tags[hole] = EMPTY;
        self.len -= 1;
        let mask = self.mask();
        let mut slot = (hole + 1) & mask;
        while self.tags[slot] != EMPTY {
            let home = self.tags[slot] as usize & mask;
            // The entry at `slot` may move into the hole unless its home lies
            // cyclically after the hole, up to `slot` (it would then sit
            // before its home).
            let stays = if hole <= slot { hole < home && home <= slot } else { hole < home || home <= slot };
            if !stays {
                self.tags[hole] = self.tags[slot];
                self.tags[slot] = EMPTY;
                self.entries[hole] = self.entries[slot].take();
                hole = slot;
            }
            slot = (slot + 1) & mask;
        }
        Some(value)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.entries.iter().flatten().map(|(key, value)| (key, value))
    }

    /// The entries, taken out in no order.
    pub(crate) fn into_entries(self) -> impl Iterator<Item = (K, V)> {
        self.entries.into_vec().into_iter().flatten()
    }

    /// Step one of a lookup ahead of time: asks the CPU for the line of
    /// tags where `tag`'s run starts. Reads the table's header (which step
    /// zero, a prefetch of the table itself, brought in).
    pub(crate) fn prefetch_tags(&self, tag: u32) {
        if let Some(tags) = self.tags.get(tag as usize & self.mask()) {
            crate::kv::prefetch_line(std::ptr::from_ref(tags).cast());
        }
    }

    /// Step two: finds the first slot of `tag`'s run with that tag, reading
    /// only tags (which step one brought in), and asks for its entry's
    /// lines. Usually the key's own slot; a tag shared within a run only
    /// costs a wasted hint.
    pub(crate) fn prefetch_entry(&self, tag: u32) {
        if self.len == 0 {
            return;
        }
        let mask = self.mask();
        let mut slot = tag as usize & mask;
        while self.tags[slot] != EMPTY {
            if self.tags[slot] == tag {
                let entry = std::ptr::from_ref(&self.entries[slot]).cast::<u8>();
                crate::kv::prefetch_line(entry);
                crate::kv::prefetch_line(entry.wrapping_add(size_of::<Option<(K, V)>>() - 1));
                return;
            }
            slot = (slot + 1) & mask;
        }
    }
}

/// Equal when they hold the same pairs, whatever their slots.
impl<K: Borrow<[u8]>, V: PartialEq> PartialEq for Table<K, V> {
    fn eq(&self, other: &Table<K, V>) -> bool {
        self.len == other.len && self.iter().all(|(key, value)| other.get(key.borrow()) == Some(value))
    }
}

impl<K: Borrow<[u8]>, V: PartialEq> Eq for Table<K, V> {}

impl<K: Borrow<[u8]> + std::fmt::Debug, V: std::fmt::Debug> std::fmt::Debug for Table<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    type Bytes = Vec<u8>;

    /// Keys whose home in an eight-slot table is `home`.
    fn homed_at(home: usize, count: usize) -> Vec<Bytes> {
        (0u32..).map(|i| format!("k{i}").into_bytes()).filter(|k| tag(k) as usize & 7 == home).take(count).collect()
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u8, u32),
        Remove(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![(any::<u8>(), any::<u32>()).prop_map(|(k, v)| Op::Insert(k, v)), any::<u8>().prop_map(Op::Remove)]
    }

    /// Keys drawn from a small space (so removals hit and runs collide),
    /// some longer than a tag line's worth of bytes.
    fn key(k: u8) -> Bytes {
        let mut key = format!("key-{k}").into_bytes();
        if k.is_multiple_of(7) {
            key.extend_from_slice(&[k; 40]);
        }
        key
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        /// Every sequence of inserts (as the store does them: update in place
        /// when present) and removals leaves the table answering as the
        /// standard map does, for every key, present or not.
        #[test]
        fn behaves_as_a_hash_map(ops in proptest::collection::vec(op(), 0..400)) {
            let mut table: Table<Bytes, u32> = Table::default();
            let mut model: HashMap<Bytes, u32> = HashMap::new();
            for op in ops {
                match op {
                    Op::Insert(k, v) => {
                        match table.get_mut(&key(k)) {
                            Some(stored) => *stored = v,
                            None => table.insert_new(key(k), v),
                        }
                        model.insert(key(k), v);
                    }
                    Op::Remove(k) => prop_assert_eq!(table.remove(&key(k)), model.remove(&key(k))),
                }
                prop_assert_eq!(table.len(), model.len());
            }
            for k in 0..=u8::MAX {
                prop_assert_eq!(table.get(&key(k)), model.get(&key(k)));
                prop_assert_eq!(table.contains_key(&key(k)), model.contains_key(&key(k)));
            }
            let mut listed: Vec<(Bytes, u32)> = table.iter().map(|(k, v)| (k.clone(), *v)).collect();
            let mut expected: Vec<(Bytes, u32)> = model.into_iter().collect();
            listed.sort();
            expected.sort();
            prop_assert_eq!(listed, expected);
        }
    }

    #[test]
    fn removal_shifts_runs_back_across_the_end_of_the_table() {
        // Eight slots, six keys: four at home in the last slot and two in
        // the first, so the run starts at slot 7, wraps to 0 and goes on to
        // 4. Each is removed in turn in several orders, and after every
        // removal the rest must all still be found.
        let keys: Vec<Bytes> = homed_at(7, 4).into_iter().chain(homed_at(0, 2)).collect();
        let mut table: Table<Bytes, u32> = Table::default();
        for (i, k) in keys.iter().enumerate() {
            table.insert_new(k.clone(), i as u32);
        }
        assert_eq!(table.tags.len(), CAPACITY_MIN);
        assert_eq!(table.tags.iter().filter(|tag| **tag == EMPTY).count(), 2);
        assert_eq!((table.tags[5], table.tags[6]), (EMPTY, EMPTY), "the run is 7, 0, 1, 2, 3, 4");
        for order in [[0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0], [2, 5, 0, 3, 1, 4], [4, 0, 5, 1, 3, 2]] {
            let mut table = table.clone();
            for (removed, &gone) in order.iter().enumerate() {
                assert_eq!(table.remove(&keys[gone]), Some(gone as u32));
                for (i, k) in keys.iter().enumerate() {
                    let expected = (!order[..=removed].contains(&i)).then_some(i as u32);
                    assert_eq!(table.get(k).copied(), expected, "key {i} after removing {:?}", &order[..=removed]);
                }
            }
            assert_eq!(table.len(), 0);
            assert!(table.tags.iter().all(|tag| *tag == EMPTY));
        }
    }

    #[test]
    fn equal_tables_hold_the_same_pairs_whatever_their_order() {
        let mut forward: Table<Bytes, u32> = Table::default();
        let mut backward: Table<Bytes, u32> = Table::default();
        for k in 0..50u8 {
            forward.insert_new(key(k), u32::from(k));
            backward.insert_new(key(49 - k), u32::from(49 - k));
        }
        assert_eq!(forward, backward);
        *backward.get_mut(&key(3)).expect("present") = 99;
        assert_ne!(forward, backward);
        backward.remove(&key(3));
        assert_ne!(forward, backward);
    }

    #[test]
    fn prefetching_reads_nothing_it_should_not() {
        // The hints run on empty, sparse and full tables without touching
        // a slot out of range (a wrong mask would panic on the index).
        let mut table: Table<Bytes, u32> = Table::default();
        table.prefetch_tags(tag(b"x"));
        table.prefetch_entry(tag(b"x"));
        for k in 0..=u8::MAX {
            table.insert_new(key(k), 0);
            table.prefetch_tags(tag(&key(k)));
            table.prefetch_entry(tag(&key(k)));
            table.prefetch_entry(tag(b"absent"));
        }
    }
}
