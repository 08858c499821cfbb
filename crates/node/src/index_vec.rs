//! [`IndexVec`]: the append-mostly list type of the per-patient index, persistent so that a
//! snapshot per finalized block costs O(changes).
//!
//! A persistent vector shares its chunks between clones; the first write to a shared chunk
//! copies it. Elements sit behind `Arc`, so that copy is 64 pointers rather than 64 entries
//! (with their strings): a block that appends one access event to a patient's list costs a
//! pointer chunk, not a deep copy of the patient's latest events.

use std::{ops::Index, sync::Arc};

/// A persistent list of `T` (see the module docs); reads like a `Vec`.
#[derive(Debug)]
pub struct IndexVec<T>(imbl::Vector<Arc<T>>);

impl<T> Clone for IndexVec<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T> Default for IndexVec<T> {
    fn default() -> Self {
        Self(imbl::Vector::new())
    }
}

impl<T: PartialEq> PartialEq for IndexVec<T> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().zip(other.iter()).all(|(a, b)| a == b)
    }
}

impl<T: Eq> Eq for IndexVec<T> {}

impl<T> IndexVec<T> {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn get(&self, index: usize) -> Option<&T> {
        self.0.get(index).map(Arc::as_ref)
    }

    pub fn last(&self) -> Option<&T> {
        self.0.last().map(Arc::as_ref)
    }

    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &T> + ExactSizeIterator {
        self.0.iter().map(Arc::as_ref)
    }

    /// The first position whose element does not satisfy `before` (the list is partitioned
    /// by it: every element that does comes first), as `slice::partition_point`.
    pub fn partition_point(&self, mut before: impl FnMut(&T) -> bool) -> usize {
        self.0
            .binary_search_by(|x| if before(x) { std::cmp::Ordering::Less } else { std::cmp::Ordering::Greater })
            .unwrap_or_else(|at| at)
    }

    /// The elements from `from` on.
    pub fn iter_from(&self, from: usize) -> impl Iterator<Item = &T> {
        (from.min(self.len())..self.len()).map(move |i| &*self.0[i])
    }

    pub(crate) fn push(&mut self, value: T) {
        self.0.push_back(Arc::new(value));
    }
}

impl<T: Clone> IndexVec<T> {
    /// A mutable element; copies it first if a snapshot still shares it.
    pub(crate) fn get_mut(&mut self, index: usize) -> Option<&mut T> {
        self.0.get_mut(index).map(Arc::make_mut)
    }
}

impl<T> Index<usize> for IndexVec<T> {
    type Output = T;

    fn index(&self, index: usize) -> &T {
        &self.0[index]
    }
}

impl<T> Extend<T> for IndexVec<T> {
    fn extend<I: IntoIterator<Item = T>>(&mut self, items: I) {
        for item in items {
            self.push(item);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::IndexVec;

    #[test]
    fn a_clone_is_unchanged_by_writes_to_the_original() {
        let mut list = IndexVec::default();
        list.extend((0..200).map(|i| vec![i]));
        let snapshot = list.clone();
        list.push(vec![200]);
        list.get_mut(3).unwrap().push(99);
        assert_eq!((snapshot.len(), snapshot[3].clone()), (200, vec![3]));
        assert_eq!((list.len(), list[3].clone()), (201, vec![3, 99]));
        assert_eq!(list.partition_point(|v| v[0] < 150), 150);
        assert_eq!(list.iter_from(199).count(), 2);
        assert_eq!(list.iter().next_back(), Some(&vec![200]));
    }
}
