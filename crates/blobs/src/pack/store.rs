//! [`PackBlobStore`]: the store itself. Appends go to the active segment under one writer
//! mutex; a put then waits for a group-commit sync ([`super::group_commit`]); a full segment is
//! sealed (synced) and the next created; reads go through per-segment read-only handles and
//! are re-hashed.
//!
//! Invariant: a blob is in the index only once its entry is written in full, and a put returns
//! only once a sync that started after that write has completed.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    fs::File,
    io,
    os::unix::fs::FileExt as _,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard,
        atomic::{AtomicU64, Ordering},
    },
};

use super::{
    format::{
        ENTRY_CHECK_OFFSET, ENTRY_HEADER_BYTES, Location, SEGMENT_HEADER_BYTES, create_segment, header_check,
        prepare_entry, segment_path,
    },
    group_commit::{GroupCommit, GroupError},
    recovery::{PackRecovery, Recovered, recover},
};
use crate::{
    BlobError, BlobStore, Hash, blob_hash, check_size,
    faults::Faults,
    store_dir::{LOCK_FILE, create_root, io_at, lock_store, make_private},
};

/// Default [`PackOptions::segment_bytes_max`]: large enough that a busy node creates a new
/// file rarely (each costs two syncs), small enough to copy and back up one file at a time.
pub const SEGMENT_BYTES_DEFAULT: u64 = 256 * 1024 * 1024;

/// Tuning of a [`PackBlobStore`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackOptions {
    /// The active segment is sealed and a new one started when an append would take it past
    /// this size. A segment always takes at least one entry, so a blob larger than this gets a
    /// segment of its own. Bounds the size of any one file.
    pub segment_bytes_max: u64,
}

impl Default for PackOptions {
    fn default() -> Self {
        Self { segment_bytes_max: SEGMENT_BYTES_DEFAULT }
    }
}

/// The append side, behind one mutex: appends are serialised so each lands at a known offset.
struct Writer {
    segment: u32,
    /// Read-write handle of the active segment; shared with a group-sync leader, which syncs it
    /// without holding this mutex.
    file: Arc<File>,
    /// End of the last appended entry: where the next append goes.
    len_bytes: u64,
    /// Whether anything was appended since the last group sync took the file.
    dirty: bool,
}

/// A [`BlobStore`] of append-only segment files (layout, crash-safety argument and memory cost
/// in the module docs). One open store per directory: a second open, from this process or
/// another, fails with [`BlobError::Locked`].
pub struct PackBlobStore {
    root: PathBuf,
    // Held for the store's lifetime; it is what makes truncating a torn tail at open safe.
    _lock: File,
    options: PackOptions,
    recovery: PackRecovery,
    index: RwLock<HashMap<Hash, Location>>,
    /// Read-only handles per segment, so reads never wait for the writer mutex.
    readers: RwLock<BTreeMap<u32, Arc<File>>>,
    writer: Mutex<Writer>,
    /// Appends so far; an append's sequence number is this value just after it. Stored under
    /// the writer mutex, before the index insert, so whoever finds an entry in the index reads
    /// a value at least as large as that entry's.
    appended_seq: AtomicU64,
    group: GroupCommit,
    data_syncs: AtomicU64,
    dir_syncs: AtomicU64,
    /// Entry writes and group syncs go through it, so tests can fail them (a full disk).
    faults: Faults,
}

impl fmt::Debug for PackBlobStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PackBlobStore").field("root", &self.root).finish_non_exhaustive()
    }
}

impl PackBlobStore {
    /// Opens (creating if needed) the store in `dir` with default options.
    pub fn open(dir: &Path) -> Result<Self, BlobError> {
        Self::open_with(dir, PackOptions::default())
    }

    /// Opens (creating if needed) the store in `dir`: takes its lock, scans every segment to
    /// rebuild the index, cuts a torn tail off the last segment and syncs it (module docs).
    pub fn open_with(dir: &Path, options: PackOptions) -> Result<Self, BlobError> {
        let root = dir.to_owned();
        create_root(&root)?;
        let lock = lock_store(&root)?;
        // Ciphertexts are not secret, but which patients have how much data is: private to
        // the node's user, and fixed here for stores made before that rule.
        make_private(&root, 0o700)?;
        make_private(&root.join(LOCK_FILE), 0o600)?;

        let Recovered { recovery, index, readers, last_segment, last_file, tail, data_syncs, dir_syncs } =
            recover(&root)?;
        let writer = Writer { segment: last_segment, file: Arc::new(last_file), len_bytes: tail, dirty: false };
        Ok(Self {
            root,
            _lock: lock,
            options,
            recovery,
            index: RwLock::new(index),
            readers: RwLock::new(readers),
            writer: Mutex::new(writer),
            appended_seq: AtomicU64::new(0),
            group: GroupCommit::new(),
            data_syncs: AtomicU64::new(data_syncs),
            dir_syncs: AtomicU64::new(dir_syncs),
            faults: Faults::default(),
        })
    }

    /// The store directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// What opening found and repaired.
    pub fn recovery(&self) -> &PackRecovery {
        &self.recovery
    }

    /// Syncs performed so far: (`fdatasync` of segments, directory fsyncs).
    pub fn sync_counts(&self) -> (u64, u64) {
        (self.data_syncs.load(Ordering::Relaxed), self.dir_syncs.load(Ordering::Relaxed))
    }

    /// Where tests plan failures of this store's entry writes and group syncs.
    #[cfg(test)]
    pub(crate) fn faults(&self) -> &Faults {
        &self.faults
    }

    pub(super) fn index_read(&self) -> RwLockReadGuard<'_, HashMap<Hash, Location>> {
        // Index updates are single inserts: a panic elsewhere cannot leave it half-updated.
        self.index.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn index_write(&self) -> RwLockWriteGuard<'_, HashMap<Hash, Location>> {
        self.index.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// The active segment and the end of its last appended entry.
    pub(super) fn append_position(&self) -> (u32, u64) {
        let writer = self.writer();
        (writer.segment, writer.len_bytes)
    }

    /// A read-only handle per segment, in segment order.
    pub(super) fn segment_readers(&self) -> Vec<(u32, Arc<File>)> {
        self.readers.read().unwrap_or_else(PoisonError::into_inner).iter().map(|(s, f)| (*s, Arc::clone(f))).collect()
    }

    fn writer(&self) -> MutexGuard<'_, Writer> {
        // Nothing under this mutex panics between the write and the bookkeeping that follows
        // it (a panic could only come from allocation), so the state stays consistent.
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn reader(&self, segment: u32) -> Result<Arc<File>, BlobError> {
        self.readers.read().unwrap_or_else(PoisonError::into_inner).get(&segment).cloned().ok_or_else(|| {
            BlobError::io(
                segment_path(&self.root, segment),
                io::Error::new(io::ErrorKind::NotFound, "segment not open"),
            )
        })
    }

    fn poisoned(&self) -> BlobError {
        BlobError::Poisoned { path: self.root.clone() }
    }

    /// Reads the body at `location`; `Ok(None)` if the file ends before it (cut short behind
    /// the store's back).
    fn read_body(&self, location: Location) -> Result<Option<Vec<u8>>, BlobError> {
        let file = self.reader(location.segment)?;
        // The length came from an intact header or from a put, both bounded by BLOB_BYTES_MAX.
        let mut body = vec![0u8; location.len_bytes as usize];
        match file.read_exact_at(&mut body, location.body_offset()) {
            Ok(()) => Ok(Some(body)),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
            Err(source) => Err(BlobError::io(segment_path(&self.root, location.segment), source)),
        }
    }

    /// Appends `bytes` (whose hash is `hash`) unless an intact copy is stored, and returns the
    /// sequence number that must be durable before the blob may be reported stored.
    fn append(&self, hash: &Hash, bytes: &[u8]) -> Result<u64, BlobError> {
        if self.group.is_poisoned() {
            return Err(self.poisoned());
        }
        let known = self.index_read().get(hash).copied();
        if let Some(location) = known {
            if location.len_bytes as usize == bytes.len() && self.read_body(location)?.as_deref() == Some(bytes) {
                // Possibly appended by a concurrent put that has not synced yet: wait for
                // everything appended so far, which includes it.
                return Ok(self.appended_seq.load(Ordering::Acquire));
            }
            tracing::warn!(%hash, "appending a fresh copy of a corrupt stored blob");
        }
        let mut entry = prepare_entry(hash, bytes);
        let mut writer = self.writer();
        let current = self.index_read().get(hash).copied();
        if current.is_some() && current != known {
            // A concurrent put stored (or repaired) it since we looked.
            return Ok(self.appended_seq.load(Ordering::Acquire));
        }
        let location = self.write_entry(&mut writer, &mut entry)?;
        let seq = self.appended_seq.load(Ordering::Relaxed) + 1;
        self.appended_seq.store(seq, Ordering::Release);
        self.index_write().insert(*hash, location);
        Ok(seq)
    }

    /// Writes `entry` at the end of the active segment, rolling to a new segment first if it
    /// would not fit, and fills in its header check.
    fn write_entry(&self, writer: &mut Writer, entry: &mut [u8]) -> Result<Location, BlobError> {
        let entry_bytes = entry.len() as u64;
        if writer.len_bytes > SEGMENT_HEADER_BYTES && writer.len_bytes + entry_bytes > self.options.segment_bytes_max {
            self.roll(writer)?;
        }
        let offset = writer.len_bytes;
        let check = header_check(writer.segment, offset, &entry[..ENTRY_CHECK_OFFSET]);
        entry[ENTRY_CHECK_OFFSET..ENTRY_HEADER_BYTES].copy_from_slice(&check);
        if let Err(source) = self.faults.write(entry, |bytes| writer.file.write_all_at(bytes, offset)) {
            // Cut what part of the entry was written, so the next append starts at a clean
            // end. If even that fails, the end of the file is unknown: stop writing.
            if writer.file.set_len(offset).is_err() {
                self.group.poison();
            }
            return Err(BlobError::io(segment_path(&self.root, writer.segment), source));
        }
        writer.len_bytes += entry_bytes;
        writer.dirty = true;
        Ok(Location { offset, segment: writer.segment, len_bytes: (entry.len() - ENTRY_HEADER_BYTES) as u32 })
    }

    /// Seals the active segment and starts the next. The old segment is synced first, so a
    /// sealed segment is always complete and only the last one can hold a torn tail.
    fn roll(&self, writer: &mut Writer) -> Result<(), BlobError> {
        let old_path = segment_path(&self.root, writer.segment);
        if let Err(source) = writer.file.sync_data() {
            self.group.poison();
            return Err(BlobError::io(old_path, source));
        }
        self.data_syncs.fetch_add(1, Ordering::Relaxed);
        let segment = writer
            .segment
            .checked_add(1)
            .ok_or_else(|| BlobError::io(old_path, io::Error::other("no segment numbers left")))?;
        let file = create_segment(&self.root, segment)?;
        self.data_syncs.fetch_add(1, Ordering::Relaxed);
        self.dir_syncs.fetch_add(1, Ordering::Relaxed);
        let path = segment_path(&self.root, segment);
        let reader = File::open(&path).map_err(io_at(&path))?;
        self.readers.write().unwrap_or_else(PoisonError::into_inner).insert(segment, Arc::new(reader));
        // Appends made to the old segment are durable now (synced above), and the new one's
        // header is synced: nothing is dirty.
        *writer = Writer { segment, file: Arc::new(file), len_bytes: SEGMENT_HEADER_BYTES, dirty: false };
        tracing::debug!(segment, "started a new pack segment");
        Ok(())
    }

    /// Returns once append `seq` is durable, syncing (as the group's leader) if needed.
    fn wait_durable(&self, seq: u64) -> Result<(), BlobError> {
        let mut sync = || -> Result<u64, BlobError> {
            let (dirty, covered_seq) = {
                let mut writer = self.writer();
                let dirty = std::mem::take(&mut writer.dirty).then(|| (Arc::clone(&writer.file), writer.segment));
                (dirty, self.appended_seq.load(Ordering::Acquire))
            };
            if let Some((file, segment)) = dirty {
                self.faults.sync(|| file.sync_data()).map_err(io_at(&segment_path(&self.root, segment)))?;
                self.data_syncs.fetch_add(1, Ordering::Relaxed);
            }
            Ok(covered_seq)
        };
        self.group.wait_durable(seq, &mut sync).map_err(|e| match e {
            GroupError::SyncFailed(e) => {
                tracing::error!(dir = %self.root.display(), error = %e, "pack blob store sync failed; refusing further writes");
                e
            }
            GroupError::Poisoned => self.poisoned(),
        })
    }
}

impl BlobStore for PackBlobStore {
    fn put(&self, bytes: &[u8]) -> Result<Hash, BlobError> {
        check_size(bytes)?;
        let hash = blob_hash(bytes);
        let seq = self.append(&hash, bytes)?;
        self.wait_durable(seq)?;
        Ok(hash)
    }

    /// Appends every blob, then waits once for a sync covering all of them.
    fn put_many(&self, blobs: &[&[u8]]) -> Result<Vec<Hash>, BlobError> {
        for bytes in blobs {
            check_size(bytes)?;
        }
        let mut hashes = Vec::with_capacity(blobs.len());
        let mut seq = 0;
        for bytes in blobs {
            let hash = blob_hash(bytes);
            seq = seq.max(self.append(&hash, bytes)?);
            hashes.push(hash);
        }
        self.wait_durable(seq)?;
        Ok(hashes)
    }

    fn get(&self, hash: &Hash) -> Result<Option<Vec<u8>>, BlobError> {
        let Some(location) = self.index_read().get(hash).copied() else {
            return Ok(None);
        };
        match self.read_body(location)? {
            Some(body) if blob_hash(&body) == *hash => Ok(Some(body)),
            _ => {
                tracing::warn!(%hash, segment = location.segment, offset = location.offset, "stored blob failed verification");
                Err(BlobError::Corrupt { hash: *hash })
            }
        }
    }

    fn len_bytes(&self, hash: &Hash) -> Result<Option<u64>, BlobError> {
        Ok(self.index_read().get(hash).map(|location| u64::from(location.len_bytes)))
    }
}

#[cfg(test)]
mod tests {
    use std::{fs, thread, time::Instant};

    use super::*;
    use crate::{
        BLOB_BYTES_MAX, DiskBlobStore,
        pack::{test_support::*, verify_pack},
    };

    #[test]
    fn conformance() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        crate::testing::conformance_tests(&store);
        let report = verify_pack(&store, &mut |_| {}).unwrap();
        assert!(report.is_clean(), "{report:?}");
        assert_eq!(report.blobs_checked, store.index_read().len() as u64);
        // Again on a non-empty store, and again after a reopen (index rebuilt from the scan).
        crate::testing::conformance_tests(&store);
        drop(store);
        let store = open(dir.path());
        crate::testing::conformance_tests(&store);
        assert!(verify_pack(&store, &mut |_| {}).unwrap().is_clean());
        assert_eq!(store.recovery().truncated_bytes, 0);
        assert!(store.recovery().damaged.is_empty());
    }

    #[test]
    fn open_creates_missing_directories() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("data/blobs");
        let store = open(&root);
        let hash = store.put(b"x").unwrap();
        assert!(root.join(LOCK_FILE).is_file());
        assert_eq!(store.get(&hash).unwrap().unwrap(), b"x");
    }

    #[test]
    fn second_open_is_refused_while_the_first_is_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        assert!(matches!(PackBlobStore::open(dir.path()), Err(BlobError::Locked { .. })));
        // The same lock file as the one-file-per-blob store: never open as both at once.
        assert!(matches!(DiskBlobStore::open(dir.path()), Err(BlobError::Locked { .. })));
        drop(store);
        open(dir.path());
    }

    #[test]
    fn duplicate_puts_append_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let path = segment_path(dir.path(), 1);
        let x = store.put(b"x").unwrap();
        let len = file_len(&path);
        assert_eq!(store.put(b"x").unwrap(), x);
        assert_eq!(file_len(&path), len);
        let hashes = store.put_many(&[b"x", b"yy", b"yy"]).unwrap();
        assert_eq!(hashes, [x, blob_hash(b"yy"), blob_hash(b"yy")]);
        assert_eq!(file_len(&path), len + entry_bytes(b"yy"));
    }

    #[test]
    fn oversized_puts_write_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let path = segment_path(dir.path(), 1);
        let big = vec![7u8; BLOB_BYTES_MAX + 1];
        assert!(matches!(store.put(&big), Err(BlobError::TooLarge { .. })));
        assert!(matches!(store.put_many(&[b"small", &big]), Err(BlobError::TooLarge { .. })));
        assert_eq!(file_len(&path), SEGMENT_HEADER_BYTES);
    }

    #[test]
    fn files_are_0600_and_directories_0700() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("blobs");
        let store = open_small(&root, 200);
        store.put_many(&[&[1; 100], &[2; 100], &[3; 100]]).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&root), 0o700);
        assert_eq!(mode(&root.join(LOCK_FILE)), 0o600);
        for segment in 1..=3 {
            assert_eq!(mode(&segment_path(&root, segment)), 0o600);
        }
        // A store left readable by others (made before this rule) is made private on open.
        drop(store);
        for path in [root.clone(), root.join(LOCK_FILE), segment_path(&root, 2)] {
            let loose = if path.is_dir() { 0o755 } else { 0o644 };
            fs::set_permissions(&path, fs::Permissions::from_mode(loose)).unwrap();
        }
        let _reopened = open_small(&root, 200);
        assert_eq!((mode(&root), mode(&root.join(LOCK_FILE))), (0o700, 0o600));
        assert_eq!(mode(&segment_path(&root, 2)), 0o600);
    }

    #[test]
    fn concurrent_puts_share_syncs_and_survive_reopen() {
        const THREADS: u64 = 32;
        const PUTS_PER_THREAD: u64 = 40;
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let syncs_before = store.sync_counts().0;
        thread::scope(|scope| {
            for t in 0..THREADS {
                let store = &store;
                scope.spawn(move || {
                    for i in 0..PUTS_PER_THREAD {
                        // One blob of its own, and one that every thread puts at the same step.
                        store.put(&noise(t << 32 | i, 300 + i as usize)).unwrap();
                        store.put(format!("common {i}").as_bytes()).unwrap();
                    }
                });
            }
        });
        let puts = THREADS * PUTS_PER_THREAD * 2;
        let syncs = store.sync_counts().0 - syncs_before;
        eprintln!("{puts} puts from {THREADS} threads: {syncs} fdatasync calls");
        assert!(syncs * 4 < puts, "{syncs} syncs for {puts} puts: group commit is not grouping");
        drop(store);

        let store = open(dir.path());
        let distinct = THREADS * PUTS_PER_THREAD + PUTS_PER_THREAD;
        assert_eq!(store.recovery().blobs, distinct);
        for t in 0..THREADS {
            for i in 0..PUTS_PER_THREAD {
                let bytes = noise(t << 32 | i, 300 + i as usize);
                assert_eq!(store.get(&blob_hash(&bytes)).unwrap().as_ref(), Some(&bytes));
            }
        }
        let report = verify_pack(&store, &mut |_| {}).unwrap();
        assert!(report.is_clean(), "{report:?}");
        assert_eq!((report.blobs_checked, report.superseded_entries), (distinct, 0));
    }

    #[test]
    fn segments_roll_over_at_the_configured_size() {
        const SEGMENT_BYTES: u64 = 1024;
        let dir = tempfile::tempdir().unwrap();
        let store = open_small(dir.path(), SEGMENT_BYTES);
        let (data_syncs, dir_syncs) = store.sync_counts();
        // 200-byte blobs make 248-byte entries: four per segment.
        let blobs: Vec<Vec<u8>> = (0..40).map(|i| noise(i, 200)).collect();
        for bytes in &blobs {
            store.put(bytes).unwrap();
        }
        // A blob larger than a segment gets one of its own.
        let big = noise(99, 3000);
        store.put(&big).unwrap();
        store.put(b"after the big one").unwrap();
        assert_eq!(store.writer().segment, 12);
        // Each of the 11 rolls syncs the old segment and the new one's header, and the directory.
        let (rolled_data, rolled_dirs) = (store.sync_counts().0 - data_syncs, store.sync_counts().1 - dir_syncs);
        assert!(rolled_data >= 22, "{rolled_data}");
        assert_eq!(rolled_dirs, 11);
        for segment in 1..=12 {
            let len = file_len(&segment_path(dir.path(), segment));
            if segment == 11 {
                assert_eq!(len, SEGMENT_HEADER_BYTES + entry_bytes(&big));
            } else {
                assert!(len <= SEGMENT_BYTES, "segment {segment}: {len} bytes");
            }
        }
        drop(store);

        let store = open_small(dir.path(), SEGMENT_BYTES);
        assert_eq!((store.recovery().segments, store.recovery().blobs), (12, 42));
        for bytes in blobs.iter().chain([&big]) {
            assert_eq!(store.get(&blob_hash(bytes)).unwrap().as_ref(), Some(bytes));
        }
        let report = verify_pack(&store, &mut |_| {}).unwrap();
        assert!(report.is_clean(), "{report:?}");
        assert_eq!(report.blobs_checked, 42);
        // Appends continue in the last segment.
        store.put(b"more").unwrap();
        assert_eq!(store.writer().segment, 12);
    }

    #[test]
    fn poisoned_store_refuses_puts_but_serves_reads() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let hash = store.put(b"before").unwrap();
        store.group.poison();
        assert!(matches!(store.put(b"after"), Err(BlobError::Poisoned { .. })));
        assert!(matches!(store.put(b"before"), Err(BlobError::Poisoned { .. })));
        assert!(matches!(store.put_many(&[b"after"]), Err(BlobError::Poisoned { .. })));
        assert_eq!(store.get(&hash).unwrap().unwrap(), b"before");
    }

    /// Prints puts/s of both disk stores with 64 writer threads putting 1.2 KB blobs; asserts
    /// only that every blob is stored, never timings.
    #[test]
    fn puts_per_second_disk_versus_pack_report() {
        const THREADS: u64 = 64;
        const PUTS_PER_THREAD: u64 = 40;
        const BLOB_BYTES: usize = 1200;
        fn run(store: &dyn BlobStore, seed: u64) -> f64 {
            let started = Instant::now();
            thread::scope(|scope| {
                for t in 0..THREADS {
                    scope.spawn(move || {
                        for i in 0..PUTS_PER_THREAD {
                            store.put(&noise(seed + (t << 32 | i), BLOB_BYTES)).unwrap();
                        }
                    });
                }
            });
            let puts_per_second = (THREADS * PUTS_PER_THREAD) as f64 / started.elapsed().as_secs_f64();
            for t in 0..THREADS {
                for i in 0..PUTS_PER_THREAD {
                    assert!(store.contains(&blob_hash(&noise(seed + (t << 32 | i), BLOB_BYTES))).unwrap());
                }
            }
            puts_per_second
        }
        let dir = tempfile::tempdir().unwrap();
        let disk = DiskBlobStore::open(&dir.path().join("disk")).unwrap();
        let pack = open(&dir.path().join("pack"));
        let disk_rate = run(&disk, 1 << 60);
        let pack_syncs = pack.sync_counts().0;
        let pack_rate = run(&pack, 2 << 60);
        let pack_syncs = pack.sync_counts().0 - pack_syncs;
        eprintln!(
            "{THREADS} threads x {PUTS_PER_THREAD} puts of {BLOB_BYTES} bytes: DiskBlobStore {disk_rate:.0} puts/s, \
             PackBlobStore {pack_rate:.0} puts/s ({pack_syncs} fdatasync calls)"
        );
    }
}
