//! [`PMap`], the map type of [`super::State`]: cheap to clone, fast to read.
//!
//! The node publishes an immutable snapshot of the state per finalized height, so cloning a
//! map must not copy it. A fully persistent map (a HAMT) clones in O(1) but every lookup walks
//! several nodes, and block building and verification look up identities, records and grants
//! for every operation. So a `PMap` is two levels: a large **base**, a plain hash map shared
//! by `Arc` between clones and never changed once shared, and a small **recent** map (also
//! shared, copied on the first write after a clone) holding what was inserted since the base
//! was made. A lookup is one hashbrown probe of `recent`, then one of the base. A clone copies
//! two pointers; the first write after one copies `recent` (at most [`RECENT_MAX`] entries:
//! once per block). When `recent` is full ([`RECENT_MIN`] entries and a thirty-second of the
//! base), it is merged into a new base: O(n) every n/32 inserts, O(1) amortised per insert.
//! Values sit behind `Arc`, so copies and merges move pointers, not values.

use std::{collections::HashMap, hash::Hash, sync::Arc};

/// Keyed per process: as resistant to chosen keys as std's SipHash, and faster on the
/// 32-byte ids that every lookup hashes.
type Hasher = foldhash::fast::RandomState;

type Inner<K, V> = HashMap<K, Arc<V>, Hasher>;

/// `recent` is merged into the base once it holds more than this many entries and more than
/// a thirty-second of the base…
pub const RECENT_MIN: usize = 4_096;
/// …or more than this many, whatever the base's size (it is copied once per block).
pub const RECENT_MAX: usize = 32_768;

/// A hash map that clones in O(1) and reads in about one hash probe (see the module docs).
#[derive(Debug)]
pub struct PMap<K, V> {
    base: Arc<Inner<K, V>>,
    /// Entries inserted since `base` was made; they shadow the base's.
    recent: Arc<Inner<K, V>>,
}

impl<K: Clone, V> Clone for PMap<K, V> {
    fn clone(&self) -> Self {
        Self { base: self.base.clone(), recent: self.recent.clone() }
    }
}

impl<K: Hash + Eq + Clone, V> Default for PMap<K, V> {
    fn default() -> Self {
        Self {
            base: Arc::new(HashMap::with_hasher(Hasher::default())),
            recent: Arc::new(HashMap::with_hasher(Hasher::default())),
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
        if !self.recent.contains_key(&key) {
            self.make_room();
        }
        Arc::make_mut(&mut self.recent).insert(key, Arc::new(value));
    }

    /// Moves `recent` into a new base (the old base stays with the snapshots that share it).
    fn merge(&mut self) {
        let recent = std::mem::replace(&mut self.recent, Arc::new(HashMap::with_hasher(Hasher::default())));
        let base = Arc::make_mut(&mut self.base);
        base.reserve(recent.len());
        for (key, value) in recent.iter() {
            base.insert(key.clone(), value.clone());
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
            Arc::make_mut(&mut self.recent).insert(key.clone(), value);
        }
        Arc::make_mut(&mut self.recent).get_mut(key).map(Arc::make_mut)
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
            Arc::make_mut(&mut self.recent).insert(key.clone(), value);
        }
        let slot = Arc::make_mut(&mut self.recent).get_mut(&key).expect("inserted above");
        Arc::make_mut(slot)
    }

    /// Merges `recent` into the base when it is full, before an entry is added to it.
    fn make_room(&mut self) {
        if self.recent.len() >= RECENT_MIN.max(self.base.len() / 32).min(RECENT_MAX) {
            self.merge();
        }
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
