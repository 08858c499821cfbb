//! [`PMap`], the map type of [`super::State`]: cheap to clone, fast to read; and
//! [`DeltaMap`], one block's changes to one, committed by moving pointers.
//!
//! The node publishes an immutable snapshot of the state per finalized height, so cloning a
//! map must not copy it. A fully persistent map (a HAMT) clones in O(1) but every lookup walks
//! several nodes, and block building and verification look up identities, records and grants
//! for every operation. So a `PMap` is two levels: a large **base**, a plain hash map shared
//! by `Arc` between clones and never changed once shared, and a small **recent** map (also
//! shared, copied on the first write after a clone) holding what was inserted since the base
//! was made. A lookup is one hashbrown probe of `recent`, then one of the base. A clone copies
//! two pointers. Values sit behind `Arc`, so copies and merges move pointers, not values.
//!
//! The writer clones the map once per block and changes the clone (the old one is the
//! published snapshot), so each block pays one copy of `recent` — r/2 entries on average, as
//! `recent` fills from empty to r between merges — and every r inserts a merge pays one copy
//! of the base (n entries, shared with the snapshots). With i inserts per block that is
//! r/2 + n·i/r per block, least at r = √(2·n·i). A clone starts the count of a new block; a
//! `PMap` merges at that size for the last block's i (within [`RECENT_MIN`]..[`RECENT_MAX`]):
//! a map that rarely changes (category keys) keeps a tiny `recent`, and one that grows by
//! thousands per block (records) a large one.

use std::{collections::HashMap, hash::Hash, sync::Arc};

/// Keyed per process: as resistant to chosen keys as std's SipHash, and faster on the
/// 32-byte ids that every lookup hashes.
type Hasher = foldhash::fast::RandomState;

type Inner<K, V> = HashMap<K, Arc<V>, Hasher>;

/// `recent` may always hold this many entries before it is merged into the base…
pub const RECENT_MIN: usize = 64;
/// …and never more than this many, whatever the base's size (it is copied once per block).
pub const RECENT_MAX: usize = 32_768;

/// What the merge size is tuned by: how many entries one block inserts. The last block's
/// count, not an average: a map loaded in bulk and then changed a little per block must not
/// keep a bulk-sized `recent` for long.
#[derive(Clone, Copy, Debug, Default)]
struct Tuning {
    /// New entries since this map was cloned from the previous block's.
    inserts_since_copy: u64,
    /// The previous block's count (0 before the first clone).
    inserts_per_copy: u64,
}

/// A hash map that clones in O(1) and reads in about one hash probe (see the module docs).
#[derive(Debug)]
pub struct PMap<K, V> {
    base: Arc<Inner<K, V>>,
    /// Entries inserted since `base` was made; they shadow the base's.
    recent: Arc<Inner<K, V>>,
    tuning: Tuning,
}

/// A clone starts a new block: the writer changes the clone (see the module docs).
impl<K: Clone, V> Clone for PMap<K, V> {
    fn clone(&self) -> Self {
        let tuning = Tuning { inserts_since_copy: 0, inserts_per_copy: self.tuning.inserts_since_copy };
        Self { base: self.base.clone(), recent: self.recent.clone(), tuning }
    }
}

impl<K: Hash + Eq + Clone, V> Default for PMap<K, V> {
    fn default() -> Self {
        Self {
            base: Arc::new(HashMap::with_hasher(Hasher::default())),
            recent: Arc::new(HashMap::with_hasher(Hasher::default())),
            tuning: Tuning::default(),
        }
    }
}

impl<K: Hash + Eq + Clone, V> PMap<K, V> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, key: &K) -> Option<&V> {
        if !self.recent.is_empty()
            && let Some(value) = self.recent.get(key)
        {
            return Some(value.as_ref());
        }
        self.base.get(key).map(Arc::as_ref)
    }

    pub fn contains_key(&self, key: &K) -> bool {
        self.recent.contains_key(key) || self.base.contains_key(key)
    }

    pub fn insert(&mut self, key: K, value: V) {
        self.insert_shared(key, Arc::new(value));
    }

    /// Inserts a value another map (a [`DeltaMap`]) may still share.
    pub fn insert_shared(&mut self, key: K, value: Arc<V>) {
        if !self.recent.contains_key(&key) {
            self.make_room();
        }
        self.recent_mut().insert(key, value);
    }

    /// Inserts every change of `delta`, sharing its values.
    pub fn apply(&mut self, delta: &DeltaMap<K, V>) {
        for (key, value) in &delta.0 {
            self.insert_shared(key.clone(), value.clone());
        }
    }

    /// `recent`, to change: copied first if a clone (a published snapshot) still shares it,
    /// which happens once per block.
    fn recent_mut(&mut self) -> &mut Inner<K, V> {
        Arc::make_mut(&mut self.recent)
    }

    /// Moves `recent` into a new base (the old base stays with the snapshots that share it).
    fn merge(&mut self) {
        let recent = std::mem::replace(&mut self.recent, Arc::new(HashMap::with_hasher(Hasher::default())));
        let base = Arc::make_mut(&mut self.base);
        base.reserve(recent.len());
        match Arc::try_unwrap(recent) {
            Ok(recent) => base.extend(recent),
            Err(shared) => base.extend(shared.iter().map(|(k, v)| (k.clone(), v.clone()))),
        }
    }

    /// The value of `key`, to change; copied first if a clone still shares it.
    pub fn get_mut(&mut self, key: &K) -> Option<&mut V>
    where
        V: Clone,
    {
        if !self.recent.contains_key(key) {
            let value = self.base.get(key)?.clone();
            self.make_room();
            self.recent_mut().insert(key.clone(), value);
        }
        self.recent_mut().get_mut(key).map(Arc::make_mut)
    }

    /// The value of `key` (the default one if there is none yet), to change; copied first if a
    /// clone still shares it.
    pub fn entry_mut(&mut self, key: K) -> &mut V
    where
        V: Clone + Default,
    {
        if !self.recent.contains_key(&key) {
            let value = self.base.get(&key).cloned().unwrap_or_default();
            self.make_room();
            self.recent_mut().insert(key.clone(), value);
        }
        let slot = self.recent_mut().get_mut(&key).expect("inserted above");
        Arc::make_mut(slot)
    }

    /// Merges `recent` into the base when it is full, before an entry is added to it.
    fn make_room(&mut self) {
        self.tuning.inserts_since_copy += 1;
        if self.recent.len() >= self.recent_limit() {
            self.merge();
        }
    }

    /// The size of `recent` at which merging costs least (see the module docs).
    fn recent_limit(&self) -> usize {
        let per_block = self.tuning.inserts_per_copy.max(self.tuning.inserts_since_copy).max(1);
        let best = (2.0 * per_block as f64 * self.base.len() as f64).sqrt() as usize;
        best.clamp(RECENT_MIN, RECENT_MAX)
    }

    pub fn len(&self) -> usize {
        self.base.len() + self.recent.keys().filter(|k| !self.base.contains_key(k)).count()
    }

    pub fn is_empty(&self) -> bool {
        self.base.is_empty() && self.recent.is_empty()
    }

    /// Every entry once (a recent one instead of the base's it shadows), in no particular
    /// order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        let recent = self.recent.iter().map(|(k, v)| (k, v.as_ref()));
        let base = self.base.iter().filter(|(k, _)| !self.recent.contains_key(k)).map(|(k, v)| (k, v.as_ref()));
        recent.chain(base)
    }

    /// In no particular order.
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, v)| v)
    }
}

/// One block's changes to one [`PMap`]: what verification computes and commit applies. Its
/// values are behind `Arc`, so commit shares them instead of copying, and the verified block
/// can stay cached (for proposals building on it) until its snapshot is published.
#[derive(Debug)]
pub struct DeltaMap<K, V>(HashMap<K, Arc<V>>);

impl<K: Clone, V> Clone for DeltaMap<K, V> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<K, V> Default for DeltaMap<K, V> {
    fn default() -> Self {
        Self(HashMap::default())
    }
}

impl<K: Hash + Eq, V> DeltaMap<K, V> {
    pub fn get(&self, key: &K) -> Option<&V> {
        self.0.get(key).map(Arc::as_ref)
    }

    pub fn contains_key(&self, key: &K) -> bool {
        self.0.contains_key(key)
    }

    pub fn insert(&mut self, key: K, value: V) {
        self.0.insert(key, Arc::new(value));
    }

    /// The value of `key`, to change (copied first only if a clone of this map shares it).
    pub fn get_mut(&mut self, key: &K) -> Option<&mut V>
    where
        V: Clone,
    {
        self.0.get_mut(key).map(Arc::make_mut)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Layers newer changes over these (`Delta::merge`).
impl<K: Hash + Eq, V> Extend<(K, Arc<V>)> for DeltaMap<K, V> {
    fn extend<I: IntoIterator<Item = (K, Arc<V>)>>(&mut self, entries: I) {
        self.0.extend(entries);
    }
}

impl<K, V> IntoIterator for DeltaMap<K, V> {
    type Item = (K, Arc<V>);
    type IntoIter = std::collections::hash_map::IntoIter<K, Arc<V>>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<K: Hash + Eq + Clone, V> Extend<(K, V)> for PMap<K, V> {
    fn extend<I: IntoIterator<Item = (K, V)>>(&mut self, entries: I) {
        for (key, value) in entries {
            self.insert(key, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{PMap, RECENT_MIN};

    #[test]
    fn clones_are_independent_across_merges_and_read_the_newest_value() {
        let mut map: PMap<u32, String> = PMap::new();
        let n = (RECENT_MIN * 3) as u32;
        for i in 0..n {
            map.insert(i, format!("v{i}"));
        }
        let snapshot = map.clone();
        // Overwrites and new keys, enough to merge again.
        for i in 0..n + 10 {
            map.insert(i, format!("w{i}"));
        }
        assert_eq!(snapshot.get(&7).map(String::as_str), Some("v7"));
        assert_eq!(snapshot.get(&n), None);
        assert_eq!(snapshot.len(), n as usize);
        assert_eq!(map.get(&7).map(String::as_str), Some("w7"));
        assert_eq!(map.get(&(n + 9)).map(String::as_str), Some(&*format!("w{}", n + 9)));
        assert_eq!(map.len(), n as usize + 10);
        // Each key once, with its newest value.
        let mut seen: Vec<(u32, String)> = map.iter().map(|(k, v)| (*k, v.clone())).collect();
        seen.sort();
        assert_eq!(seen.len(), n as usize + 10);
        assert!(seen.iter().all(|(k, v)| *v == format!("w{k}")));
        assert!(map.contains_key(&0) && !map.contains_key(&(n + 10)));
    }

    #[test]
    fn values_changed_in_place_leave_clones_alone() {
        let mut map: PMap<u32, Vec<u32>> = PMap::new();
        for i in 0..(RECENT_MIN as u32 * 2) {
            map.entry_mut(i % 100).push(i);
        }
        let snapshot = map.clone();
        map.entry_mut(3).push(7);
        map.get_mut(&4).expect("there").clear();
        map.entry_mut(1_000).push(1);
        assert_eq!(map.get(&3).unwrap().last(), Some(&7));
        assert!(map.get(&4).unwrap().is_empty());
        assert_eq!(snapshot.get(&3).unwrap().len(), (0..RECENT_MIN * 2).filter(|i| i % 100 == 3).count());
        assert!(!snapshot.get(&4).unwrap().is_empty());
        assert!(snapshot.get(&1_000).is_none() && map.get_mut(&2_000).is_none());
    }

    #[test]
    fn a_map_that_changes_little_per_clone_keeps_its_copies_small() {
        // A map of 5,000 entries cloned once per "block", ten new keys per block (like
        // category keys): the copy each block pays stays near √(2·5000·10) ≈ 316 entries,
        // not the whole map.
        let mut map: PMap<u32, u32> = PMap::new();
        for i in 0..5_000 {
            map.insert(i, i);
        }
        let mut largest_copy = 0;
        let mut snapshots = Vec::new();
        for block in 0..200u32 {
            // As the node does: the writer changes a clone; the old map is the snapshot.
            let next = map.clone();
            snapshots.push(std::mem::replace(&mut map, next));
            for i in 0..10 {
                map.insert(5_000 + block * 10 + i, 0);
            }
            if block >= 3 {
                largest_copy = largest_copy.max(map.recent.len());
            }
        }
        assert!(largest_copy <= 400, "recent grew to {largest_copy} entries");
        assert_eq!(map.len(), 7_000);
        assert_eq!(snapshots[100].len(), 6_000);
        assert_eq!(snapshots[100].get(&5_999), Some(&0));
        assert_eq!(snapshots[100].get(&6_000), None);
        // Growing by thousands per block, it lets `recent` grow instead of merging each time.
        let mut merges = 0;
        for block in 0..20u32 {
            let next = map.clone();
            let _snapshot = std::mem::replace(&mut map, next);
            for i in 0..2_000 {
                let before = map.recent.len();
                map.insert(100_000 + block * 2_000 + i, 0);
                merges += usize::from(map.recent.len() < before);
            }
        }
        assert!(merges <= 20, "{merges} merges for 40,000 inserts");
    }

    #[test]
    fn a_recent_value_shadows_the_base_one() {
        let mut map: PMap<u32, u32> = PMap::new();
        for i in 0..(RECENT_MIN as u32 + 1) {
            map.insert(i, 0);
        }
        // Merged: the base holds them all; the next insert is recent and shadows.
        map.insert(5, 1);
        assert_eq!(map.get(&5), Some(&1));
        assert_eq!(map.iter().filter(|(k, _)| **k == 5).count(), 1);
        assert_eq!(map.len(), RECENT_MIN + 1);
    }
}
