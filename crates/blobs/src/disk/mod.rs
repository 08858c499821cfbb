//! [`DiskBlobStore`]: one file per blob, and [`verify_all`] for an offline check.
//!
//! Layout of a store directory `DIR`:
//!
//! ```text
//! DIR/LOCK                        held locked (OS advisory lock) while a store is open
//! DIR/ab/abcd…(64 hex)            a blob, named by the lowercase hex SHA-256 of its bytes;
//!                                 `ab` is the first byte of the hash (256 shards)
//! DIR/ab/.tmp-<pid>-<counter>     a write in progress (removed at open if a crash left it)
//! ```
//!
//! One level of 256 shards, not two of 65,536: creating a directory costs about as much as
//! writing a blob (inode allocation, a parent fsync), and with two levels nearly every one of
//! the first hundred thousand blobs paid for a new directory. ext4 and XFS index large
//! directories, so 256 shards serve tens of millions of blobs.
//!
//! Crash safety: a blob is written to a temporary file in its final directory, fsynced, then
//! renamed to its final name (atomic on POSIX), and the directory is fsynced before the write
//! is reported. So after a crash a final name holds either nothing or the complete blob, and a
//! reported write survives. Directories created for a shard are made durable (their parents
//! fsynced) before the first blob in them is reported. `put_many` commits a batch as a group:
//! every temporary file written and fsynced, then all renamed, then each touched directory
//! fsynced once. Temporary files are never read; open
//! removes the ones a crash left, which is safe because the `LOCK` file guarantees no other
//! store is writing to the directory.
//!
//! Modules: this one holds the store, its layout (names, paths) and reads; [`write`](mod@write) the
//! crash-safe write path (temporary file, fsync, rename, directory fsync); [`verify`] the
//! offline check.

#[cfg(test)]
mod test_support;
mod verify;
mod write;

use std::{
    collections::HashSet,
    ffi::OsString,
    fmt,
    fs::{self, File},
    io::Read,
    path::{Path, PathBuf},
    sync::{Mutex, atomic::AtomicU64},
};

pub use verify::verify_all;

use crate::{
    BLOB_BYTES_MAX, BlobError, BlobStore, Hash, blob_hash,
    faults::Faults,
    store_dir::{LOCK_FILE, create_root, io_at, is_not_found, lock_store, sorted_entries},
};

/// Prefix of temporary files; never a valid blob name (blob names are 64 hex characters).
const TMP_PREFIX: &str = ".tmp-";
/// Temporary names are unique per process (pid + counter); a clash means a stale file from an
/// earlier process with the same pid, so a few retries with fresh counters always suffice.
const TMP_CREATE_ATTEMPTS_MAX: u32 = 16;
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// A [`BlobStore`] in a local directory (layout and crash-safety argument in the module docs).
/// One open store per directory: a second [`DiskBlobStore::open`] of the same directory, from
/// this process or another, fails with [`BlobError::Locked`].
pub struct DiskBlobStore {
    root: PathBuf,
    // The OS lock on this file lives as long as the store; it is what makes removing stale
    // temporary files at open safe.
    _lock: File,
    // Shards (first hash byte) whose directories this process has created or found and whose
    // parent (the root) it has fsynced, so each shard costs that fsync once per process.
    durable_shards: Mutex<HashSet<u8>>,
    file_syncs: AtomicU64,
    dir_syncs: AtomicU64,
    /// Blob writes and file syncs go through it, so tests can fail them (a full disk).
    faults: Faults,
}

impl fmt::Debug for DiskBlobStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DiskBlobStore").field("root", &self.root).finish_non_exhaustive()
    }
}

/// The name of a shard directory for byte `b`: two lowercase hex digits.
fn shard_name(b: u8) -> String {
    format!("{b:02x}")
}

/// Parses a shard directory name; only the exact form this store writes is accepted.
fn parse_shard_name(name: &OsString) -> Option<u8> {
    let name = name.to_str()?;
    if name.len() != 2 || !name.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    u8::from_str_radix(name, 16).ok()
}

/// Parses a blob file name; only the lowercase form this store writes is accepted, so one
/// hash has exactly one path.
fn parse_blob_name(name: &OsString) -> Option<Hash> {
    let text = name.to_str()?;
    let hash = Hash::from_hex(text).ok()?;
    (hash.to_hex() == text).then_some(hash)
}

impl DiskBlobStore {
    /// Opens (creating if needed) the store in `dir`, takes its lock and removes temporary
    /// files left by an interrupted write. The walk over shard directories makes opening
    /// cost one directory listing per shard in use (at most 256 + 1).
    pub fn open(dir: &Path) -> Result<Self, BlobError> {
        let root = dir.to_owned();
        create_root(&root)?;
        let lock = lock_store(&root)?;
        let store = Self {
            root,
            _lock: lock,
            durable_shards: Mutex::new(HashSet::new()),
            file_syncs: AtomicU64::new(0),
            dir_syncs: AtomicU64::new(0),
            faults: Faults::default(),
        };
        let removed = store.remove_stale_temps()?;
        if removed > 0 {
            tracing::info!(
                dir = %store.root.display(),
                files = removed,
                "removed temporary blob files left by an interrupted write"
            );
        }
        Ok(store)
    }

    /// The store directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The path a blob with `hash` is stored at (whether or not it is present).
    pub fn blob_path(&self, hash: &Hash) -> PathBuf {
        self.shard_dir(hash).join(hash.to_hex())
    }

    /// Where tests plan failures of this store's blob writes and file syncs.
    #[cfg(test)]
    pub(crate) fn faults(&self) -> &Faults {
        &self.faults
    }

    fn shard_dir(&self, hash: &Hash) -> PathBuf {
        self.root.join(shard_name(hash.0[0]))
    }

    /// Reads the blob file at `path` and checks it hashes to `hash`, never reading more than
    /// [`BLOB_BYTES_MAX`] + 1 bytes.
    fn read_verified(&self, hash: &Hash) -> Result<Option<Vec<u8>>, BlobError> {
        let path = self.blob_path(hash);
        let Some(len_bytes) = self.stored_len(hash, &path)? else {
            return Ok(None);
        };
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(source) => return Err(BlobError::io(path, source)),
        };
        // The length is bounded above, so this allocation is too; `take` keeps it so if the
        // file grows between the stat and the read.
        let mut bytes = Vec::with_capacity(len_bytes as usize);
        file.take(BLOB_BYTES_MAX as u64 + 1).read_to_end(&mut bytes).map_err(io_at(&path))?;
        if bytes.len() > BLOB_BYTES_MAX || blob_hash(&bytes) != *hash {
            tracing::warn!(%hash, "stored blob failed verification");
            return Err(BlobError::Corrupt { hash: *hash });
        }
        Ok(Some(bytes))
    }

    /// The length of the blob file from metadata: `None` if absent, `Corrupt` if it cannot
    /// be a blob (not a regular file, or larger than any blob).
    fn stored_len(&self, hash: &Hash, path: &Path) -> Result<Option<u64>, BlobError> {
        let meta = match fs::symlink_metadata(path) {
            Ok(meta) => meta,
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(source) => return Err(BlobError::io(path, source)),
        };
        if !meta.is_file() || meta.len() > BLOB_BYTES_MAX as u64 {
            tracing::warn!(%hash, "stored blob is not a regular file of a possible size");
            return Err(BlobError::Corrupt { hash: *hash });
        }
        Ok(Some(meta.len()))
    }

    /// Every shard directory (`DIR/ab`) in name order; entries that do not belong to the
    /// layout are appended to `unexpected`.
    fn shard_dirs(&self, unexpected: &mut Vec<PathBuf>) -> Result<Vec<(u8, PathBuf)>, BlobError> {
        let mut out = Vec::new();
        for (name, kind, path) in sorted_entries(&self.root)? {
            match parse_shard_name(&name) {
                Some(a) if kind.is_dir() => out.push((a, path)),
                _ if name == LOCK_FILE && kind.is_file() => {}
                _ => unexpected.push(path),
            }
        }
        Ok(out)
    }

    /// Removes temporary files from every shard directory; returns how many.
    fn remove_stale_temps(&self) -> Result<u64, BlobError> {
        let mut removed = 0;
        for (_, dir) in self.shard_dirs(&mut Vec::new())? {
            for (name, kind, path) in sorted_entries(&dir)? {
                if kind.is_file() && name.to_str().is_some_and(|n| n.starts_with(TMP_PREFIX)) {
                    match fs::remove_file(&path) {
                        Ok(()) => removed += 1,
                        Err(e) if is_not_found(&e) => {}
                        Err(source) => return Err(BlobError::io(path, source)),
                    }
                }
            }
        }
        Ok(removed)
    }
}

impl BlobStore for DiskBlobStore {
    fn put(&self, bytes: &[u8]) -> Result<Hash, BlobError> {
        self.write_one(bytes)
    }

    /// Group commit: every new blob is written to a temporary file and fsynced, then all are
    /// renamed, then each touched directory is fsynced once. Blobs spread over 256 shards,
    /// so a batch mostly saves the parent syncs of new shards; on a journaling file system
    /// the first directory sync also commits every rename, which makes the rest cheap.
    fn put_many(&self, blobs: &[&[u8]]) -> Result<Vec<Hash>, BlobError> {
        self.write_batch(blobs)
    }

    fn get(&self, hash: &Hash) -> Result<Option<Vec<u8>>, BlobError> {
        self.read_verified(hash)
    }

    fn len_bytes(&self, hash: &Hash) -> Result<Option<u64>, BlobError> {
        self.stored_len(hash, &self.blob_path(hash))
    }
}

#[cfg(test)]
mod tests {
    use super::{test_support::*, *};

    #[test]
    fn conformance() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        crate::testing::conformance_tests(&store);
        let report = verify_all(&store, &mut |_| {}).unwrap();
        assert!(report.is_clean(), "{report:?}");
        // Running it again on a non-empty store (as against a reused bucket) also passes.
        crate::testing::conformance_tests(&store);
    }

    #[test]
    fn layout_round_trip_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let hash = store.put(b"ciphertext").unwrap();
        let hex = hash.to_hex();
        let expected = PathBuf::from(&hex[0..2]).join(&hex);
        assert_eq!(files_under(dir.path()), vec![expected.clone()]);
        assert_eq!(store.blob_path(&hash), dir.path().join(&expected));
        drop(store);

        let store = open(dir.path());
        assert_eq!(store.get(&hash).unwrap().unwrap(), b"ciphertext");
        assert_eq!(store.len_bytes(&hash).unwrap(), Some(10));
    }

    #[test]
    fn open_creates_missing_directories() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("data/blobs");
        let store = open(&root);
        let hash = store.put(b"x").unwrap();
        assert!(root.join(LOCK_FILE).is_file());
        assert!(store.blob_path(&hash).is_file());
    }

    #[test]
    fn second_open_is_refused_while_the_first_is_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        assert!(matches!(DiskBlobStore::open(dir.path()), Err(BlobError::Locked { .. })));
        drop(store);
        open(dir.path());
    }

    #[test]
    fn stale_temp_file_is_ignored_by_reads_and_removed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = b"the write of this blob was interrupted";
        let hash = blob_hash(bytes);
        let store = open(dir.path());
        // What a crash between create and rename leaves: a partial temporary file in the shard.
        let shard = store.blob_path(&hash).parent().unwrap().to_owned();
        fs::create_dir_all(&shard).unwrap();
        let temp = shard.join(".tmp-4242-7");
        fs::write(&temp, &bytes[..10]).unwrap();

        assert_eq!(store.get(&hash).unwrap(), None);
        assert!(!store.contains(&hash).unwrap());
        assert!(verify_all(&store, &mut |_| {}).unwrap().is_clean());
        drop(store);

        let store = open(dir.path());
        assert!(!temp.exists(), "open removes stale temporary files");
        assert!(files_under(dir.path()).is_empty());
        assert_eq!(store.put(bytes).unwrap(), hash);
        assert_eq!(store.get(&hash).unwrap().unwrap(), bytes);
    }

    #[test]
    fn oversized_puts_write_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let big = vec![7u8; BLOB_BYTES_MAX + 1];
        assert!(matches!(store.put(&big), Err(BlobError::TooLarge { .. })));
        assert!(matches!(store.put_many(&[b"small", &big]), Err(BlobError::TooLarge { .. })));
        assert!(files_under(dir.path()).is_empty());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "only the lock file");
    }
}
