//! Content-addressed, crash-safe off-chain storage of encrypted record ciphertexts ("blobs").
//! The chain commits only to the SHA-256 of each ciphertext; the ciphertext itself lives here,
//! stored under that hash, and anyone holding the on-chain hash can fetch it and check it.
//!
//! Architecture invariant: a blob is stored under the SHA-256 of its bytes and nothing else
//! (content-addressed, so puts are idempotent and a hash can never name two contents); every
//! read re-hashes what it read and returns [`BlobError::Corrupt`] instead of bytes that do not
//! match their address; a successful `put` / `put_many` is durable (survives power loss) and
//! atomic (a crash never leaves a partial blob under its final name). Everything read from the
//! backing store is treated as adversarial: sizes are bounded by [`BLOB_BYTES_MAX`] before
//! allocating, and errors name paths and hashes, never blob contents. Errors keep their cause
//! as their source, and a full disk or quota is [`BlobError::StorageFull`], never reported as
//! damage: every I/O error is classified in one place (`BlobError::io`).
//!
//! API boundary: the [`BlobStore`] trait, its implementations [`DiskBlobStore`] (one file per
//! blob), `PackBlobStore` (unix only: blobs appended to segment files with group commit, for
//! write throughput) and [`MemoryBlobStore`] (tests), and [`verify_all`] / `verify_pack` for an
//! offline check of a disk or pack store.
//!
//! The trait is shaped so an S3-compatible object store can implement it later: the object key
//! is the lowercase hex hash (optionally under the same `ab/` prefix as on disk); `put` is
//! an idempotent PUT (same key, same bytes; send `x-amz-checksum-sha256` so the server rejects
//! transport corruption) that is durable once the server acknowledges it; `get` is a GET whose
//! body the client re-hashes before returning it; `contains` / `len_bytes` are a HEAD;
//! `put_many` may issue the PUTs concurrently. The shared suite in `testing::conformance_tests`
//! (feature `conformance`) checks any implementation against this contract.

use std::path::PathBuf;

pub use medledger_types::Hash;
use sha2::Digest as _;

mod disk;
mod faults;
mod memory;
#[cfg(unix)]
mod pack;
mod report;
#[cfg(test)]
mod storage_full_tests;
mod store_dir;
#[cfg(any(test, feature = "conformance"))]
pub mod testing;

pub use disk::{DiskBlobStore, verify_all};
pub use memory::MemoryBlobStore;
#[cfg(unix)]
pub use pack::{PackBlobStore, PackOptions, PackRecovery, SEGMENT_BYTES_DEFAULT, verify_pack};
pub use report::{BlobReport, DamageKind, DamagedRange};

/// Largest blob accepted by [`BlobStore::put`]: an encrypted record version (FHIR resource
/// plus AEAD overhead) is far smaller; the bound keeps a single read or write from exhausting
/// memory.
pub const BLOB_BYTES_MAX: usize = 8 * 1024 * 1024;

/// Errors from blob stores. Messages name paths, hashes and sizes, never blob contents.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BlobError {
    #[error("blob store I/O at {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The disk, or the quota of the node's user, has no space left for a write (`ENOSPC`,
    /// `EDQUOT`). Not damage: the store is as consistent as before the write (a partly written
    /// blob is removed or cut off) and a write retried once space is freed can succeed, unless
    /// the space ran out in a pack store's sync, which also poisons it (see
    /// [`BlobError::Poisoned`]). Callers detect it with [`BlobError::is_storage_full`].
    #[error("blob store {path}: the disk is full (no space left on the device, or the disk quota is used up)")]
    StorageFull {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("blob of {bytes} bytes exceeds the maximum of {max} bytes")]
    TooLarge { bytes: usize, max: usize },
    #[error("blob {hash} is corrupt: the stored bytes do not hash to its address")]
    Corrupt { hash: Hash },
    #[error("blob store {path} is locked by another process or another open store")]
    Locked { path: PathBuf },
    /// A sync failed earlier: the kernel may have dropped the unwritten pages and will not
    /// report it again, so no later write can be trusted to be durable until the store is
    /// reopened (which rescans and re-syncs what is on disk).
    #[error("blob store {path} refuses writes after a failed sync; reopen it (restart the node)")]
    Poisoned { path: PathBuf },
}

impl BlobError {
    /// An I/O error at `path`, classified: [`BlobError::StorageFull`] when the disk or the
    /// quota is full, [`BlobError::Io`] otherwise. Every I/O error of this crate is built here,
    /// so a full disk is never reported as anything else.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        match source.kind() {
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => Self::StorageFull { path, source },
            _ => Self::Io { path, source },
        }
    }

    /// Whether the write failed because the disk (or the quota) is full: an operational
    /// condition to report as such (free space, then retry), not damage to the store.
    pub fn is_storage_full(&self) -> bool {
        matches!(self, Self::StorageFull { .. })
    }
}

/// A content-addressed store of blobs. Implementations must uphold the crate invariant:
/// addresses are SHA-256 of contents, `get` verifies before returning, and a successful write
/// is durable.
pub trait BlobStore: Send + Sync {
    /// Stores `bytes` and returns their SHA-256. Idempotent: storing the same bytes again
    /// returns the same hash and keeps one copy. Durable when it returns `Ok`.
    fn put(&self, bytes: &[u8]) -> Result<Hash, BlobError>;

    /// Stores every blob and returns their hashes in input order; all are durable when it
    /// returns `Ok`. Sizes are checked before anything is written, so an oversized blob
    /// rejects the whole batch without writing any of it. On another error some blobs may
    /// have been stored (harmless: content-addressed) but none is guaranteed durable.
    ///
    /// The default issues one `put` per blob; backends that can share the cost of making a
    /// batch durable (one directory sync, concurrent requests) override it.
    fn put_many(&self, blobs: &[&[u8]]) -> Result<Vec<Hash>, BlobError> {
        for bytes in blobs {
            check_size(bytes)?;
        }
        blobs.iter().map(|bytes| self.put(bytes)).collect()
    }

    /// The blob stored under `hash`, re-hashed after reading: `Ok(None)` if absent,
    /// [`BlobError::Corrupt`] if the stored bytes do not hash to `hash`.
    fn get(&self, hash: &Hash) -> Result<Option<Vec<u8>>, BlobError>;

    /// Whether a blob is stored under `hash`. Answered from metadata (like an S3 HEAD): it
    /// does not re-hash the contents; only [`BlobStore::get`] proves them.
    fn contains(&self, hash: &Hash) -> Result<bool, BlobError> {
        Ok(self.len_bytes(hash)?.is_some())
    }

    /// The stored length of the blob under `hash`, from metadata and not re-hashed.
    fn len_bytes(&self, hash: &Hash) -> Result<Option<u64>, BlobError>;
}

/// SHA-256 of `bytes`: the address of a blob. The same function as `medledger_crypto::sha256`;
/// computed here directly so this crate sits below the signing code in the dependency graph.
pub fn blob_hash(bytes: &[u8]) -> Hash {
    Hash(sha2::Sha256::digest(bytes).into())
}

fn check_size(bytes: &[u8]) -> Result<(), BlobError> {
    if bytes.len() > BLOB_BYTES_MAX {
        return Err(BlobError::TooLarge { bytes: bytes.len(), max: BLOB_BYTES_MAX });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_hash_is_sha256() {
        // FIPS 180-2 test vector: the chain's hashes and this store's addresses must agree.
        assert_eq!(blob_hash(b"abc").to_hex(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn errors_never_carry_contents() {
        let err = BlobError::TooLarge { bytes: BLOB_BYTES_MAX + 1, max: BLOB_BYTES_MAX };
        assert_eq!(err.to_string(), "blob of 8388609 bytes exceeds the maximum of 8388608 bytes");
        let hash = blob_hash(b"secret ciphertext");
        let err = BlobError::Corrupt { hash };
        assert!(err.to_string().contains(&hash.to_hex()));
        assert!(!err.to_string().contains("secret"));
    }
}
