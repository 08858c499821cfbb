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

use std::{
    collections::{BTreeSet, HashSet},
    ffi::OsString,
    fmt,
    fs::{self, DirBuilder, File, FileType, OpenOptions, TryLockError},
    io::{self, Read, Write},
    path::{Path, PathBuf},
    sync::{
        Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
};

use sha2::Digest as _;

use crate::{BLOB_BYTES_MAX, BlobError, BlobStore, Hash, blob_hash, check_size};

/// Name of the lock file in a store directory.
pub const LOCK_FILE: &str = "LOCK";
/// Prefix of temporary files; never a valid blob name (blob names are 64 hex characters).
const TMP_PREFIX: &str = ".tmp-";
/// Temporary names are unique per process (pid + counter); a clash means a stale file from an
/// earlier process with the same pid, so a few retries with fresh counters always suffice.
const TMP_CREATE_ATTEMPTS_MAX: u32 = 16;
const READ_CHUNK_BYTES: usize = 64 * 1024;

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

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
}

impl fmt::Debug for DiskBlobStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DiskBlobStore").field("root", &self.root).finish_non_exhaustive()
    }
}

/// What [`verify_all`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlobReport {
    /// Blobs read and re-hashed, corrupt ones included.
    pub blobs_checked: u64,
    /// Total size of the blobs that verified.
    pub valid_bytes: u64,
    /// Blobs whose stored bytes do not hash to their name (or that are not regular files, or
    /// are larger than any blob can be), in path order.
    pub corrupt: Vec<Hash>,
    /// Entries that are not part of the layout: foreign files, names that are not lowercase
    /// hex, blobs in the wrong shard directory.
    pub unexpected: Vec<PathBuf>,
    /// Pack stores only (always empty for a one-file-per-blob store, whose damage is per file
    /// and listed in `corrupt`): where the damage is, by segment and offset, in file order.
    pub damaged: Vec<DamagedRange>,
    /// Pack stores only: older copies of blobs that a later copy replaced (a `put` appends a
    /// fresh copy when the stored one is corrupt). Dead space, not damage: never re-hashed.
    pub superseded_entries: u64,
}

impl BlobReport {
    /// No corrupt blobs, no damaged ranges and nothing foreign in the store.
    pub fn is_clean(&self) -> bool {
        self.corrupt.is_empty() && self.unexpected.is_empty() && self.damaged.is_empty()
    }
}

/// A byte range of a pack segment that holds nothing servable, as found by a scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DamagedRange {
    pub path: PathBuf,
    pub offset: u64,
    pub len_bytes: u64,
    pub kind: DamageKind,
}

/// What is wrong with a [`DamagedRange`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DamageKind {
    /// The segment header is missing or wrong (the range is the header).
    SegmentHeader,
    /// No intact entry header: a torn or overwritten write, or a rotted header. The scan
    /// resumed at the next intact header (or the end), so the range may hide whole entries,
    /// whose hashes are unknown.
    Unparseable,
    /// An intact entry header whose body does not hash to the address it names (the range is
    /// the whole entry).
    BodyMismatch { hash: Hash },
    /// A segment file is absent although segments numbered on both sides of it exist (the
    /// range is empty; the path is where the segment should be).
    MissingSegment,
}

pub(crate) fn io_at(path: &Path) -> impl FnOnce(io::Error) -> BlobError + '_ {
    move |source| BlobError::Io { path: path.to_owned(), source }
}

fn is_not_found(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::NotFound
}

pub(crate) fn create_dirs(path: &Path) -> Result<(), BlobError> {
    let mut builder = DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(path).map_err(io_at(path))
}

/// Tightens an existing path of the store to `private` (0700 for a directory, 0600 for a
/// file) when group or others have any access: a store created before its files were made
/// private is fixed when it is next opened. Stricter modes are kept.
pub(crate) fn make_private(path: &Path, private: u32) -> Result<(), BlobError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = fs::symlink_metadata(path).map_err(io_at(path))?;
        if !meta.file_type().is_symlink() && meta.permissions().mode() & 0o077 != 0 {
            fs::set_permissions(path, fs::Permissions::from_mode(private)).map_err(io_at(path))?;
        }
    }
    #[cfg(not(unix))]
    let _ = (path, private);
    Ok(())
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

/// The entries of `dir` sorted by name, so walks and reports are deterministic.
pub(crate) fn sorted_entries(dir: &Path) -> Result<Vec<(OsString, FileType, PathBuf)>, BlobError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_at(dir))? {
        let entry = entry.map_err(io_at(dir))?;
        let path = entry.path();
        // `DirEntry::file_type` does not follow symlinks: a link is never taken for a directory.
        let kind = entry.file_type().map_err(io_at(&path))?;
        out.push((entry.file_name(), kind, path));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

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
            return Err(BlobError::Io { path: dest.to_owned(), source });
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

/// The verdict on one blob file.
enum FileCheck {
    Valid { len_bytes: u64 },
    Corrupt,
    Missing,
}

impl DiskBlobStore {
    /// Opens (creating if needed) the store in `dir`, takes its lock and removes temporary
    /// files left by an interrupted write. The walk over shard directories makes opening
    /// cost one directory listing per shard in use (at most 256 + 1).
    pub fn open(dir: &Path) -> Result<Self, BlobError> {
        let root = dir.to_owned();
        if !root.try_exists().map_err(io_at(&root))? {
            create_dirs(&root)?;
            // The store directory's own entry must be durable before blobs in it are reported.
            let parent = root.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
            sync_dir_at(parent)?;
        }
        let lock_path = root.join(LOCK_FILE);
        let mut options = OpenOptions::new();
        options.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let lock = options.open(&lock_path).map_err(io_at(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(BlobError::Locked { path: root }),
            Err(TryLockError::Error(source)) => return Err(BlobError::Io { path: lock_path, source }),
        }
        let store = Self {
            root,
            _lock: lock,
            durable_shards: Mutex::new(HashSet::new()),
            file_syncs: AtomicU64::new(0),
            dir_syncs: AtomicU64::new(0),
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

    fn shard_dir(&self, hash: &Hash) -> PathBuf {
        self.root.join(shard_name(hash.0[0]))
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
        file.sync_all().map_err(io_at(path))?;
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
                Err(source) => return Err(BlobError::Io { path, source }),
            };
            let temp = TempFile { path: Some(path.clone()) };
            file.write_all(bytes).map_err(io_at(&path))?;
            self.sync_file(&file, &path)?;
            return Ok(temp);
        }
        Err(BlobError::Io {
            path: dir.to_owned(),
            source: io::Error::new(io::ErrorKind::AlreadyExists, "no free temporary file name"),
        })
    }

    /// Whether the final file of a blob already holds exactly `bytes`; if so it is fsynced,
    /// so the caller may report it durable without rewriting it. A file that differs (corrupt,
    /// truncated, not a regular file) returns `false` and is replaced by the caller's rename.
    fn existing_matches(&self, path: &Path, bytes: &[u8], hash: &Hash) -> Result<bool, BlobError> {
        let meta = match fs::symlink_metadata(path) {
            Ok(meta) => meta,
            Err(e) if is_not_found(&e) => return Ok(false),
            Err(source) => return Err(BlobError::Io { path: path.to_owned(), source }),
        };
        if meta.is_file() && meta.len() == bytes.len() as u64 {
            let mut file = match File::open(path) {
                Ok(file) => file,
                Err(e) if is_not_found(&e) => return Ok(false),
                Err(source) => return Err(BlobError::Io { path: path.to_owned(), source }),
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
            Err(source) => return Err(BlobError::Io { path, source }),
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
            Err(source) => return Err(BlobError::Io { path: path.to_owned(), source }),
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
                        Err(source) => return Err(BlobError::Io { path, source }),
                    }
                }
            }
        }
        Ok(removed)
    }

    /// Re-hashes the blob file at `path`, streaming, bounded by [`BLOB_BYTES_MAX`].
    fn check_file(&self, hash: &Hash, path: &Path) -> Result<FileCheck, BlobError> {
        match self.stored_len(hash, path) {
            Ok(Some(_)) => {}
            Ok(None) => return Ok(FileCheck::Missing),
            Err(BlobError::Corrupt { .. }) => return Ok(FileCheck::Corrupt),
            Err(e) => return Err(e),
        }
        let file = match File::open(path) {
            Ok(file) => file,
            Err(e) if is_not_found(&e) => return Ok(FileCheck::Missing),
            Err(source) => return Err(BlobError::Io { path: path.to_owned(), source }),
        };
        let mut reader = file.take(BLOB_BYTES_MAX as u64 + 1);
        let mut hasher = sha2::Sha256::new();
        let mut buf = vec![0u8; READ_CHUNK_BYTES];
        let mut len_bytes = 0u64;
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => return Err(BlobError::Io { path: path.to_owned(), source }),
            };
            hasher.update(&buf[..n]);
            len_bytes += n as u64;
        }
        let digest: [u8; 32] = hasher.finalize().into();
        if len_bytes > BLOB_BYTES_MAX as u64 || Hash(digest) != *hash {
            return Ok(FileCheck::Corrupt);
        }
        Ok(FileCheck::Valid { len_bytes })
    }
}

/// Fsyncs directory `dir`, so entries created, renamed or removed in it are durable. Returns
/// whether a sync happened: std offers no directory handle to sync outside unix, and the node
/// runs on Linux.
pub(crate) fn sync_dir_at(dir: &Path) -> Result<bool, BlobError> {
    #[cfg(unix)]
    {
        File::open(dir).and_then(|d| d.sync_all()).map_err(io_at(dir))?;
        Ok(true)
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(false)
    }
}

impl BlobStore for DiskBlobStore {
    fn put(&self, bytes: &[u8]) -> Result<Hash, BlobError> {
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

    /// Group commit: every new blob is written to a temporary file and fsynced, then all are
    /// renamed, then each touched directory is fsynced once. Blobs spread over 65,536 shards,
    /// so a batch mostly saves the parent syncs of new shards; on a journaling file system
    /// the first directory sync also commits every rename, which makes the rest cheap.
    fn put_many(&self, blobs: &[&[u8]]) -> Result<Vec<Hash>, BlobError> {
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

    fn get(&self, hash: &Hash) -> Result<Option<Vec<u8>>, BlobError> {
        self.read_verified(hash)
    }

    fn len_bytes(&self, hash: &Hash) -> Result<Option<u64>, BlobError> {
        self.stored_len(hash, &self.blob_path(hash))
    }
}

/// Walks every blob in `store`, re-hashes it and reports what it found; `progress` is called
/// with the number of blobs checked so far after each one. Meant for an offline check (the
/// store's lock keeps a node from running on the same directory meanwhile). Temporary files
/// of writes in progress in this process are skipped. Fails only on I/O errors (for example
/// an unreadable file), naming the path.
pub fn verify_all(store: &DiskBlobStore, progress: &mut dyn FnMut(u64)) -> Result<BlobReport, BlobError> {
    let mut report = BlobReport::default();
    for (shard, dir) in store.shard_dirs(&mut report.unexpected)? {
        for (name, kind, path) in sorted_entries(&dir)? {
            if kind.is_file() && name.to_str().is_some_and(|n| n.starts_with(TMP_PREFIX)) {
                continue;
            }
            let Some(hash) = parse_blob_name(&name).filter(|h| h.0[0] == shard) else {
                report.unexpected.push(path);
                continue;
            };
            match store.check_file(&hash, &path)? {
                FileCheck::Valid { len_bytes } => report.valid_bytes += len_bytes,
                FileCheck::Corrupt => {
                    tracing::warn!(%hash, "stored blob failed verification");
                    report.corrupt.push(hash);
                }
                FileCheck::Missing => continue,
            }
            report.blobs_checked += 1;
            progress(report.blobs_checked);
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, time::Instant};

    use super::*;

    fn open(dir: &Path) -> DiskBlobStore {
        DiskBlobStore::open(dir).expect("open")
    }

    /// Every file under `dir` except the lock file, relative to `dir`.
    fn files_under(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_owned()];
        while let Some(d) = stack.pop() {
            for entry in fs::read_dir(&d).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else if path != dir.join(LOCK_FILE) {
                    out.push(path.strip_prefix(dir).unwrap().to_owned());
                }
            }
        }
        out.sort();
        out
    }

    fn flip_byte(path: &Path, index: usize) {
        let mut bytes = fs::read(path).unwrap();
        bytes[index] ^= 0x01;
        fs::write(path, bytes).unwrap();
    }

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
    fn flipped_byte_is_corrupt_reported_and_repaired_by_put() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let good = store.put(b"a perfectly good ciphertext").unwrap();
        let hash = store.put(b"ciphertext that will rot").unwrap();
        flip_byte(&store.blob_path(&hash), 5);

        assert!(matches!(store.get(&hash), Err(BlobError::Corrupt { hash: h }) if h == hash));
        // Metadata queries do not re-hash (documented): the file is there, with its size.
        assert!(store.contains(&hash).unwrap());
        assert_eq!(store.get(&good).unwrap().unwrap(), b"a perfectly good ciphertext");

        let mut calls = Vec::new();
        let report = verify_all(&store, &mut |n| calls.push(n)).unwrap();
        assert_eq!(report.blobs_checked, 2);
        assert_eq!(report.corrupt, vec![hash]);
        assert_eq!(report.valid_bytes, 27);
        assert!(report.unexpected.is_empty());
        assert_eq!(calls, vec![1, 2]);

        // Putting the right bytes again replaces the rotten file.
        assert_eq!(store.put(b"ciphertext that will rot").unwrap(), hash);
        assert_eq!(store.get(&hash).unwrap().unwrap(), b"ciphertext that will rot");
        assert!(verify_all(&store, &mut |_| {}).unwrap().is_clean());
    }

    #[test]
    fn truncated_oversized_and_non_regular_files_are_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let truncated = store.put(b"will be truncated").unwrap();
        fs::write(store.blob_path(&truncated), b"will be").unwrap();
        let grown = store.put(b"will grow").unwrap();
        fs::write(store.blob_path(&grown), vec![0u8; BLOB_BYTES_MAX + 1]).unwrap();
        let directory = store.put(b"will be a directory").unwrap();
        fs::remove_file(store.blob_path(&directory)).unwrap();
        fs::create_dir(store.blob_path(&directory)).unwrap();

        let mut expected = vec![truncated, grown, directory];
        for hash in &expected {
            assert!(matches!(store.get(hash), Err(BlobError::Corrupt { .. })), "{hash}");
        }
        assert!(matches!(store.len_bytes(&grown), Err(BlobError::Corrupt { .. })));
        assert!(matches!(store.len_bytes(&directory), Err(BlobError::Corrupt { .. })));

        #[cfg(unix)]
        {
            // A symlink is never followed, even to a file with the right contents.
            let linked = store.put(b"will be a symlink").unwrap();
            let target = dir.path().join("outside");
            fs::write(&target, b"will be a symlink").unwrap();
            fs::remove_file(store.blob_path(&linked)).unwrap();
            std::os::unix::fs::symlink(&target, store.blob_path(&linked)).unwrap();
            assert!(matches!(store.get(&linked), Err(BlobError::Corrupt { .. })));
            expected.push(linked);
            // put replaces the link itself with the blob, leaving the target alone.
            store.put(b"will be a symlink").unwrap();
            assert!(fs::symlink_metadata(store.blob_path(&linked)).unwrap().is_file());
            assert!(store.get(&linked).unwrap().is_some());
            expected.pop();
        }

        let mut report = verify_all(&store, &mut |_| {}).unwrap();
        report.corrupt.sort();
        expected.sort();
        assert_eq!(report.corrupt, expected);
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
    fn verify_all_reports_foreign_and_misplaced_entries() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let hash = store.put(b"blob").unwrap();
        let shard = store.blob_path(&hash).parent().unwrap().to_owned();
        let other = blob_hash(b"another blob");
        let stray = dir.path().join("notes.txt");
        fs::write(&stray, b"x").unwrap();
        let upper = shard.join(hash.to_hex().to_uppercase());
        fs::write(&upper, b"blob").unwrap();
        let misplaced = shard.join(other.to_hex());
        fs::write(&misplaced, b"another blob").unwrap();
        let bad_shard = dir.path().join("zz");
        fs::create_dir(&bad_shard).unwrap();

        let report = verify_all(&store, &mut |_| {}).unwrap();
        assert_eq!(report.blobs_checked, 1);
        assert!(report.corrupt.is_empty());
        let mut unexpected = report.unexpected.clone();
        unexpected.sort();
        let mut expected = vec![stray, upper, misplaced, bad_shard];
        expected.sort();
        assert_eq!(unexpected, expected);
        assert!(!report.is_clean());
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
