//! An in-memory [`BlobStore`] for tests: no durability, same contract otherwise.

use std::{
    collections::HashMap,
    fmt,
    sync::{Mutex, MutexGuard, PoisonError},
};

use crate::{BlobError, BlobStore, Hash, blob_hash, check_size};

/// A [`BlobStore`] in a `HashMap` behind a mutex. Contents vanish with the value.
#[derive(Default)]
pub struct MemoryBlobStore {
    blobs: Mutex<HashMap<Hash, Vec<u8>>>,
}

impl MemoryBlobStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn blobs(&self) -> MutexGuard<'_, HashMap<Hash, Vec<u8>>> {
        // A panic while holding the lock cannot leave the map half-updated (each operation is a
        // single insert or lookup), so a poisoned lock is still safe to use.
        self.blobs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Replaces the stored bytes of `hash` without re-addressing them, to test that readers
    /// detect corruption.
    #[cfg(any(test, feature = "conformance"))]
    pub fn corrupt_for_test(&self, hash: &Hash, bytes: Vec<u8>) {
        self.blobs().insert(*hash, bytes);
    }
}

// Hand-written so debug output never prints blob contents.
impl fmt::Debug for MemoryBlobStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryBlobStore").field("blobs", &self.blobs().len()).finish()
    }
}

impl BlobStore for MemoryBlobStore {
    fn put(&self, bytes: &[u8]) -> Result<Hash, BlobError> {
        check_size(bytes)?;
        let hash = blob_hash(bytes);
        let mut blobs = self.blobs();
        // Replacing an entry that differs repairs it, as `DiskBlobStore` does.
        if blobs.get(&hash).is_none_or(|stored| stored != bytes) {
            blobs.insert(hash, bytes.to_vec());
        }
        Ok(hash)
    }

    fn get(&self, hash: &Hash) -> Result<Option<Vec<u8>>, BlobError> {
        let Some(bytes) = self.blobs().get(hash).cloned() else {
            return Ok(None);
        };
        // Memory does not rot, but the contract is uniform: no bytes leave a store unverified.
        if blob_hash(&bytes) != *hash {
            return Err(BlobError::Corrupt { hash: *hash });
        }
        Ok(Some(bytes))
    }

    fn len_bytes(&self, hash: &Hash) -> Result<Option<u64>, BlobError> {
        Ok(self.blobs().get(hash).map(|bytes| bytes.len() as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conformance() {
        crate::testing::conformance_tests(&MemoryBlobStore::new());
    }

    #[test]
    fn corrupt_entry_is_refused_and_debug_hides_contents() {
        let store = MemoryBlobStore::new();
        let hash = store.put(b"ciphertext-one").unwrap();
        store.corrupt_for_test(&hash, b"ciphertext-two".to_vec());
        assert!(matches!(store.get(&hash), Err(BlobError::Corrupt { hash: h }) if h == hash));
        // A put of the right bytes repairs the entry, as on disk.
        store.put(b"ciphertext-one").unwrap();
        assert_eq!(store.get(&hash).unwrap().unwrap(), b"ciphertext-one");
        let debug = format!("{store:?}");
        assert_eq!(debug, "MemoryBlobStore { blobs: 1 }");
    }
}
