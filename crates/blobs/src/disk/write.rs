//! The write path of [`DiskBlobStore`]: each new blob goes to a temporary file in its shard
//! directory, is fsynced, renamed to its final name, and the directory is fsynced before the
//! write is reported (crash-safety argument in the parent module's docs). A batch shares the
//! directory syncs.
//!
//! Invariant: a final name never holds a partial blob; a temporary file that is not renamed is
//! removed (on drop, or at the next open).

use std::{
    collections::{BTreeSet, HashSet},
    fs::{self, File, OpenOptions},
    io::{self, Read, Write},
    path::{Path, PathBuf},
    sync::{
        MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
};

use super::{DiskBlobStore, READ_CHUNK_BYTES, TMP_CREATE_ATTEMPTS_MAX, TMP_PREFIX};
use crate::{
    BlobError, Hash, blob_hash, check_size,
    store_dir::{create_dirs, io_at, is_not_found, sync_dir_at},
};

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Whether `file` holds exactly `expected`, compared in bounded chunks.
fn same_contents(file: &mut File, expected: &[u8]) -> io::Result<bool> {
    let mut buf = vec![0u8; READ_CHUNK_BYTES];
    let mut offset = 0;
    loop {
        let n = match file.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Ok(offset == expected.len());
        }
        if expected.get(offset..offset + n) != Some(&buf[..n]) {
            return Ok(false);
        }
        offset += n;
    }
}

/// A temporary file, removed on drop unless it was renamed to its final name.
struct TempFile {
    path: Option<PathBuf>,
}

impl TempFile {
    fn rename_to(mut self, dest: &Path) -> Result<(), BlobError> {
        let path = self.path.take().expect("a TempFile holds its path until renamed or dropped");
        if let Err(source) = fs::rename(&path, dest) {
            let _ = fs::remove_file(&path);
            return Err(BlobError::io(dest, source));
        }
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            // Best effort: a temporary file that survives is removed at the next open.
            let _ = fs::remove_file(path);
        }
    }
}

/// Directories a write must fsync before it is reported durable, and the shards that become
/// durable with them.
#[derive(Default)]
struct SyncPlan {
    dirs: BTreeSet<PathBuf>,
    new_shards: Vec<u8>,
}

impl DiskBlobStore {
    /// Stores one blob: see [`crate::BlobStore::put`].
    pub(super) fn write_one(&self, bytes: &[u8]) -> Result<Hash, BlobError> {
        check_size(bytes)?;
        let hash = blob_hash(bytes);
        let mut plan = SyncPlan::default();
        let dir = self.stage_shard(&hash, &mut plan)?;
        let path = dir.join(hash.to_hex());
        if !self.existing_matches(&path, bytes, &hash)? {
            self.write_temp(&dir, bytes)?.rename_to(&path)?;
        }
        // Makes the rename durable: ours, or a concurrent writer's whose file we just found
        // (it may not have synced the directory yet).
        self.commit(plan)?;
        Ok(hash)
    }

    /// Stores a batch as a group: see the `put_many` of [`DiskBlobStore`].
    pub(super) fn write_batch(&self, blobs: &[&[u8]]) -> Result<Vec<Hash>, BlobError> {
        for bytes in blobs {
            check_size(bytes)?;
        }
        let hashes: Vec<Hash> = blobs.iter().map(|bytes| blob_hash(bytes)).collect();
        let mut seen = HashSet::new();
        // On any error below, dropping `staged` removes the temporary files not yet renamed.
        let mut staged = Vec::new();
        let mut plan = SyncPlan::default();
        for (bytes, hash) in blobs.iter().zip(&hashes) {
            if !seen.insert(*hash) {
                continue;
            }
            let dir = self.stage_shard(hash, &mut plan)?;
            let path = dir.join(hash.to_hex());
            if !self.existing_matches(&path, bytes, hash)? {
                staged.push((self.write_temp(&dir, bytes)?, path));
            }
        }
        for (temp, path) in staged {
            temp.rename_to(&path)?;
        }
        self.commit(plan)?;
        Ok(hashes)
    }

    fn durable_shards(&self) -> MutexGuard<'_, HashSet<u8>> {
        // The set only caches "already fsynced"; a panic elsewhere cannot make it wrong.
        self.durable_shards.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Creates the shard directory of `hash` if needed and returns it, adding to `plan` the
    /// directories to fsync before the write is reported: the shard directory itself (for the
    /// blob's entry) and, the first time this process uses the shard, the root (for the entry
    /// `ab` in the root: whether this process created it or a crashed predecessor did, it may
    /// still be only in the page cache).
    fn stage_shard(&self, hash: &Hash, plan: &mut SyncPlan) -> Result<PathBuf, BlobError> {
        let shard = hash.0[0];
        let dir = self.shard_dir(hash);
        if !self.durable_shards().contains(&shard) {
            create_dirs(&dir)?;
            plan.dirs.insert(self.root.clone());
            plan.new_shards.push(shard);
        }
        plan.dirs.insert(dir.clone());
        Ok(dir)
    }

    /// Fsyncs every directory in `plan`, each once, then remembers its shards as durable.
    /// Threads racing on a new shard only sync its parents twice.
    fn commit(&self, plan: SyncPlan) -> Result<(), BlobError> {
        for dir in &plan.dirs {
            self.sync_dir(dir)?;
        }
        self.durable_shards().extend(plan.new_shards);
        Ok(())
    }

    fn sync_file(&self, file: &File, path: &Path) -> Result<(), BlobError> {
        self.faults.sync(|| file.sync_all()).map_err(io_at(path))?;
        self.file_syncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> Result<(), BlobError> {
        if sync_dir_at(dir)? {
            self.dir_syncs.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Fsyncs performed so far: (files, directories).
    #[cfg(test)]
    fn sync_counts(&self) -> (u64, u64) {
        (self.file_syncs.load(Ordering::Relaxed), self.dir_syncs.load(Ordering::Relaxed))
    }

    /// Writes `bytes` to a fresh temporary file in `dir` (mode 0600) and fsyncs it.
    fn write_temp(&self, dir: &Path, bytes: &[u8]) -> Result<TempFile, BlobError> {
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        for _ in 0..TMP_CREATE_ATTEMPTS_MAX {
            let counter = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = dir.join(format!("{TMP_PREFIX}{}-{counter}", std::process::id()));
            let mut file = match options.open(&path) {
                Ok(file) => file,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(source) => return Err(BlobError::io(path, source)),
            };
            let temp = TempFile { path: Some(path.clone()) };
            self.faults.write(bytes, |bytes| file.write_all(bytes)).map_err(io_at(&path))?;
            self.sync_file(&file, &path)?;
            return Ok(temp);
        }
        Err(BlobError::io(dir, io::Error::new(io::ErrorKind::AlreadyExists, "no free temporary file name")))
    }

    /// Whether the final file of a blob already holds exactly `bytes`; if so it is fsynced,
    /// so the caller may report it durable without rewriting it. A file that differs (corrupt,
    /// truncated, not a regular file) returns `false` and is replaced by the caller's rename.
    fn existing_matches(&self, path: &Path, bytes: &[u8], hash: &Hash) -> Result<bool, BlobError> {
        let meta = match fs::symlink_metadata(path) {
            Ok(meta) => meta,
            Err(e) if is_not_found(&e) => return Ok(false),
            Err(source) => return Err(BlobError::io(path, source)),
        };
        if meta.is_file() && meta.len() == bytes.len() as u64 {
            let mut file = match File::open(path) {
                Ok(file) => file,
                Err(e) if is_not_found(&e) => return Ok(false),
                Err(source) => return Err(BlobError::io(path, source)),
            };
            if same_contents(&mut file, bytes).map_err(io_at(path))? {
                // Our writers sync before renaming, but the file may have been placed by other
                // means (a restore from backup); syncing a clean file is cheap.
                self.sync_file(&file, path)?;
                return Ok(true);
            }
        }
        tracing::warn!(%hash, "replacing a corrupt stored blob with the bytes being put");
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, time::Instant};

    use super::*;
    use crate::{
        BlobStore as _,
        disk::{test_support::*, verify_all},
        store_dir::LOCK_FILE,
    };

    #[cfg(unix)]
    #[test]
    fn blobs_are_0600_and_directories_0700() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir.path().join("blobs"));
        let hash = store.put(b"sensitive").unwrap();
        let hashes = store.put_many(&[b"also sensitive", b"and this"]).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        for hash in std::iter::once(&hash).chain(&hashes) {
            let path = store.blob_path(hash);
            assert_eq!(mode(&path), 0o600);
            assert_eq!(mode(path.parent().unwrap()), 0o700);
            assert_eq!(mode(path.parent().unwrap().parent().unwrap()), 0o700);
        }
        assert_eq!(mode(store.root()), 0o700);
        assert_eq!(mode(&store.root().join(LOCK_FILE)), 0o600);
    }

    #[test]
    fn put_many_blobs_are_all_durable_and_present_after_return() {
        let dir = tempfile::tempdir().unwrap();
        let blobs: Vec<Vec<u8>> = (0..100u32).map(|i| format!("record version {i}").repeat(50).into_bytes()).collect();
        let batch: Vec<&[u8]> = blobs.iter().map(Vec::as_slice).collect();
        let store = open(dir.path());
        let hashes = store.put_many(&batch).unwrap();
        // No temporary file is left, and everything is there for a fresh process.
        assert!(files_under(dir.path()).iter().all(|p| !p.to_string_lossy().contains(TMP_PREFIX)));
        drop(store);
        let store = open(dir.path());
        for (hash, bytes) in hashes.iter().zip(&blobs) {
            assert_eq!(store.get(hash).unwrap().as_ref(), Some(bytes));
        }
        let report = verify_all(&store, &mut |_| {}).unwrap();
        assert_eq!(report.blobs_checked, 100);
        assert!(report.is_clean());
    }

    /// Three contents whose hashes share their first two bytes, so they land in one shard
    /// (the first byte names it).
    fn same_shard_blobs() -> Vec<Vec<u8>> {
        let mut by_shard: HashMap<[u8; 2], Vec<Vec<u8>>> = HashMap::new();
        for i in 0u32.. {
            let bytes = i.to_le_bytes().to_vec();
            let hash = blob_hash(&bytes);
            let bucket = by_shard.entry([hash.0[0], hash.0[1]]).or_default();
            bucket.push(bytes);
            if bucket.len() == 3 {
                return bucket.clone();
            }
        }
        unreachable!("the birthday bound finds a triple long before u32 runs out")
    }

    #[test]
    fn put_many_syncs_each_file_once_and_each_directory_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let blobs = same_shard_blobs();
        let batch: Vec<&[u8]> = blobs.iter().map(Vec::as_slice).collect();
        store.put_many(&batch).unwrap();
        // Three blob files; the shard directory once, plus its parent (the root) the first time.
        assert_eq!(store.sync_counts(), (3, 2));

        // Storing them again rewrites nothing but still makes them durable before returning.
        store.put_many(&batch).unwrap();
        assert_eq!(store.sync_counts(), (6, 3));

        // One put each pays a directory sync per blob: what the batch saves.
        let before = store.sync_counts();
        for bytes in &batch {
            store.put(bytes).unwrap();
        }
        let after = store.sync_counts();
        assert_eq!((after.0 - before.0, after.1 - before.1), (3, 3));
    }

    #[test]
    fn concurrent_puts_leave_no_temporary_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        std::thread::scope(|scope| {
            for t in 0..8u32 {
                let store = &store;
                scope.spawn(move || {
                    for i in 0..25u32 {
                        store.put(format!("same {i}").as_bytes()).unwrap();
                        store.put(format!("thread {t} item {i}").as_bytes()).unwrap();
                    }
                });
            }
        });
        let report = verify_all(&store, &mut |_| {}).unwrap();
        assert_eq!(report.blobs_checked, 25 + 8 * 25);
        assert!(report.is_clean());
        assert!(files_under(dir.path()).iter().all(|p| !p.to_string_lossy().contains(TMP_PREFIX)));
    }

    /// Prints what a batch saves against single puts; asserts only counts, never times.
    #[test]
    fn batch_versus_single_puts_report() {
        const BLOBS: u32 = 64;
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let blobs: Vec<Vec<u8>> = (0..2 * BLOBS).map(|i| vec![i as u8; 4096 + i as usize]).collect();
        let (singles, batch) = blobs.split_at(BLOBS as usize);

        let started = Instant::now();
        for bytes in singles {
            store.put(bytes).unwrap();
        }
        let single_time = started.elapsed();
        let single_syncs = store.sync_counts();

        let started = Instant::now();
        let batch: Vec<&[u8]> = batch.iter().map(Vec::as_slice).collect();
        store.put_many(&batch).unwrap();
        let batch_time = started.elapsed();
        let batch_syncs = (store.sync_counts().0 - single_syncs.0, store.sync_counts().1 - single_syncs.1);

        eprintln!(
            "{BLOBS} x put: {single_time:?}, syncs (files, dirs) {single_syncs:?}; \
             put_many of {BLOBS}: {batch_time:?}, syncs {batch_syncs:?}"
        );
        assert_eq!(single_syncs.0, u64::from(BLOBS));
        assert_eq!(batch_syncs.0, u64::from(BLOBS));
        // Singles sync their shard directory each; the batch syncs each shard and the root once.
        assert!(batch_syncs.1 < single_syncs.1);
    }
}
