//! [`PMap`], the map type of [`super::State`]: persistent, with values behind `Arc`.
//!
//! The node publishes an immutable snapshot of the state per finalized height. Cloning a
//! `PMap` is O(1) and shares every entry; the first write to a shared part copies the path to
//! it, and those copies copy only pointers (values are `Arc`ed), so a block costs the node
//! O(changes · log n) however large the state is.

use std::{hash::Hash, sync::Arc};

/// The persistent map underneath, hashed with a per-process random key (foldhash).
type Inner<K, V> = imbl::GenericHashMap<K, Arc<V>, foldhash::fast::RandomState, imbl::shared_ptr::DefaultSharedPtr>;

/// A persistent hash map with shared values (see the module docs).
#[derive(Debug)]
pub struct PMap<K, V>(Inner<K, V>);

impl<K: Clone, V> Clone for PMap<K, V> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<K: Hash + Eq + Clone, V> Default for PMap<K, V> {
    fn default() -> Self {
        Self(Inner::default())
    }
}

impl<K: Hash + Eq + Clone, V> PMap<K, V> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, key: &K) -> Option<&V> {
        self.0.get(key).map(Arc::as_ref)
    }

    pub fn contains_key(&self, key: &K) -> bool {
        self.0.contains_key(key)
    }

    pub fn insert(&mut self, key: K, value: V) {
        self.0.insert(key, Arc::new(value));
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// In no particular order.
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.0.values().map(Arc::as_ref)
    }

    /// In no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.0.iter().map(|(k, v)| (k, v.as_ref()))
    }
}

impl<K: Hash + Eq + Clone, V> Extend<(K, V)> for PMap<K, V> {
    fn extend<I: IntoIterator<Item = (K, V)>>(&mut self, entries: I) {
        for (key, value) in entries {
            self.insert(key, value);
        }
    }
}
