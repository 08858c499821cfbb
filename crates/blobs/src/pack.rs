//! [`PackBlobStore`]: blobs appended to a few large segment files ("packs") and made durable
//! by group commit; [`verify_pack`] for an offline check.
//!
//! Why not one file per blob ([`crate::DiskBlobStore`]): there every blob costs a new inode, a
//! file fsync, a rename and a directory fsync, and writers cannot share any of it. Here a blob
//! is one positioned write at the end of the active segment, and one `fdatasync` of that
//! segment makes every write that preceded it durable, however many writers are waiting.
//!
//! Layout of a store directory `DIR`:
//!
//! ```text
//! DIR/LOCK               held locked (OS advisory lock) while a store is open; the same file
//!                        as a DiskBlobStore's, so one directory is never open as both
//! DIR/pack-000001.seg    segments, numbered from 1 without gaps; only the highest-numbered
//! DIR/pack-000002.seg    (the active segment) is ever written, the others are sealed
//! ```
//!
//! Byte layout of a segment (integers little-endian):
//!
//! ```text
//! segment header, 16 bytes:
//!   0   8   magic "MLBPACK1" (the 1 is the format version)
//!   8   4   segment number (u32), the same as in the file name
//!   12  4   zero (reserved)
//! then entries, back to back, each:
//!   0   4   magic "MLBE"
//!   4   4   body length (u32, at most BLOB_BYTES_MAX)
//!   8   32  SHA-256 of the body: the blob's address
//!   40  8   header check: the first 8 bytes of
//!           SHA-256(segment number u32 || entry offset in the segment u64 || bytes 0..40)
//!   48  len body: the blob
//! ```
//!
//! The header check lets a scan tell a torn or rotted header from a good one without trusting
//! its length, and binding it to the entry's position means an entry copied elsewhere, or one
//! embedded in another blob's body, is not taken for a real one when a scan re-synchronises
//! after damage. Overhead is 48 bytes per blob (4% of a 1.2 KB record version).
//!
//! Crash safety. An append is a single positioned write at the end of the active segment; a
//! `put` returns only after an `fdatasync` of the segment that *started* after its write
//! (group commit, [`GroupCommit`]). A new segment is created with its header synced and the
//! directory fsynced before anything is appended to it, and the previous segment is synced
//! before the new one is created, so sealed segments are complete and a crash can only leave
//! a torn tail in the last segment. Open scans every segment, rebuilds the index and cuts the
//! last segment after its last intact entry (a write that was never reported durable), then
//! syncs it, so appends continue at a clean end.
//!
//! Open cost: sealed segments are walked header by header (their bodies are not hashed: a
//! sealed segment was synced whole, `get` re-hashes every read and [`verify_pack`] re-hashes
//! everything); the last segment is hashed too, since that is where a crash leaves torn
//! bodies. Either way the scan reads (nearly) every byte once; progress is logged every GiB.
//!
//! Memory: the index maps each blob's hash to its place, 48 bytes per entry (32 hash + 16
//! location), plus the hash table's control byte per slot and its slack (at most 7/8 full,
//! doubling when it gets there): between about 56 and 112 bytes per blob, so 10 million blobs
//! take 0.56–1.1 GB. The table uses std's randomly keyed SipHash: the keys are hashes of
//! contents that others choose, so a fixed cheap hash could be flooded.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    fs::{self, File, OpenOptions, TryLockError},
    io,
    os::unix::fs::{FileExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    sync::{
        Arc, Condvar, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use sha2::Digest as _;

use crate::{
    BLOB_BYTES_MAX, BlobError, BlobReport, BlobStore, DamageKind, DamagedRange, Hash, blob_hash, check_size,
    store_dir::{LOCK_FILE, create_dirs, io_at, make_private, sorted_entries, sync_dir_at},
};

/// Default [`PackOptions::segment_bytes_max`]: large enough that a busy node creates a new
/// file rarely (each costs two syncs), small enough to copy and back up one file at a time.
pub const SEGMENT_BYTES_DEFAULT: u64 = 256 * 1024 * 1024;

const SEGMENT_MAGIC: [u8; 8] = *b"MLBPACK1";
const SEGMENT_HEADER_BYTES: u64 = 16;
const ENTRY_MAGIC: [u8; 4] = *b"MLBE";
const ENTRY_HEADER_BYTES: usize = 48;
/// Offset of the header check within an entry header; the bytes before it are what it covers.
const ENTRY_CHECK_OFFSET: usize = 40;
/// Scans read segments in windows of this size (or one body, if larger).
const SCAN_WINDOW_BYTES: usize = 1024 * 1024;
const PROGRESS_EVERY_BYTES: u64 = 1024 * 1024 * 1024;

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

/// What [`PackBlobStore::open`] found and repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PackRecovery {
    pub segments: u32,
    /// Distinct blobs indexed.
    pub blobs: u64,
    pub scanned_bytes: u64,
    /// Bytes cut from the end of the last segment: a write torn by a crash, never reported
    /// durable (or an intact-looking tail whose body does not match its hash, which is what a
    /// crash leaves on file systems that extend a file before its data lands).
    pub truncated_bytes: u64,
    /// Damage found by the scan and left in place (it is followed by intact entries, or is in
    /// a sealed segment): corrupt headers, missing segments, and in the last segment bodies
    /// that do not match. Bodies in sealed segments are not hashed at open: see
    /// [`verify_pack`].
    pub damaged: Vec<DamagedRange>,
    /// Files in the directory that are not part of the layout (ignored).
    pub unexpected_files: u64,
}

/// Where an entry's body is. 16 bytes, the per-blob memory cost of the index besides the hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Location {
    /// Offset of the entry (its header) in the segment.
    offset: u64,
    segment: u32,
    len_bytes: u32,
}

impl Location {
    fn body_offset(&self) -> u64 {
        self.offset + ENTRY_HEADER_BYTES as u64
    }

    fn end(&self) -> u64 {
        self.body_offset() + u64::from(self.len_bytes)
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
}

impl fmt::Debug for PackBlobStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PackBlobStore").field("root", &self.root).finish_non_exhaustive()
    }
}

fn segment_name(segment: u32) -> String {
    format!("pack-{segment:06}.seg")
}

/// Parses a segment file name; only the exact form this store writes is accepted.
fn parse_segment_name(name: &str) -> Option<u32> {
    let digits = name.strip_prefix("pack-")?.strip_suffix(".seg")?;
    if !digits.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let segment = digits.parse().ok()?;
    (segment > 0 && segment_name(segment) == name).then_some(segment)
}

fn segment_header(segment: u32) -> [u8; SEGMENT_HEADER_BYTES as usize] {
    let mut header = [0u8; SEGMENT_HEADER_BYTES as usize];
    header[..8].copy_from_slice(&SEGMENT_MAGIC);
    header[8..12].copy_from_slice(&segment.to_le_bytes());
    header
}

fn header_check(segment: u32, offset: u64, covered: &[u8]) -> [u8; 8] {
    let mut hasher = sha2::Sha256::new();
    hasher.update(segment.to_le_bytes());
    hasher.update(offset.to_le_bytes());
    hasher.update(covered);
    let digest: [u8; 32] = hasher.finalize().into();
    let mut check = [0u8; 8];
    check.copy_from_slice(&digest[..8]);
    check
}

/// An entry for `bytes` with its header check still zero: the check depends on the offset,
/// known only under the writer mutex, and the rest is built before taking it.
fn prepare_entry(hash: &Hash, bytes: &[u8]) -> Vec<u8> {
    let mut entry = Vec::with_capacity(ENTRY_HEADER_BYTES + bytes.len());
    entry.extend_from_slice(&ENTRY_MAGIC);
    // `check_size` bounds every blob far below u32::MAX.
    entry.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    entry.extend_from_slice(&hash.0);
    entry.extend_from_slice(&[0u8; 8]);
    entry.extend_from_slice(bytes);
    entry
}

/// The hash and body length of the entry at `offset` if its header is intact and its body
/// fits before `end`.
fn parse_entry_header(window: &mut Window<'_>, segment: u32, offset: u64, end: u64) -> io::Result<Option<(Hash, u32)>> {
    if end.saturating_sub(offset) < ENTRY_HEADER_BYTES as u64 {
        return Ok(None);
    }
    let header = window.bytes(offset, ENTRY_HEADER_BYTES)?;
    if header[..4] != ENTRY_MAGIC {
        return Ok(None);
    }
    let len_bytes = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
    if len_bytes as usize > BLOB_BYTES_MAX
        || header[ENTRY_CHECK_OFFSET..] != header_check(segment, offset, &header[..ENTRY_CHECK_OFFSET])
    {
        return Ok(None);
    }
    let hash = Hash(header[8..40].try_into().expect("32 bytes"));
    if offset + ENTRY_HEADER_BYTES as u64 + u64::from(len_bytes) > end {
        return Ok(None);
    }
    Ok(Some((hash, len_bytes)))
}

/// A read-only window over a segment, refilled with positioned reads, so a scan reads each
/// byte from the file once and can step back after a failed re-synchronisation attempt.
struct Window<'a> {
    file: &'a File,
    end: u64,
    start: u64,
    buf: Vec<u8>,
}

impl<'a> Window<'a> {
    fn new(file: &'a File, end: u64) -> Self {
        Self { file, end, start: 0, buf: Vec::new() }
    }

    /// `len` bytes at `offset`, which the caller keeps within `end`.
    fn bytes(&mut self, offset: u64, len: usize) -> io::Result<&[u8]> {
        let buffered_end = self.start + self.buf.len() as u64;
        if offset < self.start || offset + len as u64 > buffered_end {
            let fill = (len.max(SCAN_WINDOW_BYTES) as u64).min(self.end - offset) as usize;
            self.buf.resize(fill, 0);
            self.file.read_exact_at(&mut self.buf, offset)?;
            self.start = offset;
        }
        let at = (offset - self.start) as usize;
        Ok(&self.buf[at..at + len])
    }
}

/// One thing a segment scan found, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ScanItem {
    /// An entry with an intact header; `body_ok` is whether its body hashes to `hash`, or
    /// `None` when the scan does not hash bodies.
    Entry { hash: Hash, location: Location, body_ok: Option<bool> },
    /// The segment header (`0..len_bytes`) is missing or wrong.
    BadSegmentHeader { len_bytes: u64 },
    /// Bytes with no intact entry header, up to the next intact one or the end.
    Unparseable { offset: u64, len_bytes: u64 },
}

/// Walks segment `segment` up to `end`, calling `visit` for each entry and each damaged range.
/// After a range without an intact header it re-synchronises at the next intact one (a
/// position-bound header check makes a false match practically impossible), so damage in the
/// middle of a segment hides only the entries it overlaps.
fn scan_segment(
    file: &File,
    segment: u32,
    end: u64,
    hash_bodies: bool,
    visit: &mut dyn FnMut(ScanItem),
) -> io::Result<()> {
    let mut window = Window::new(file, end);
    if end < SEGMENT_HEADER_BYTES || window.bytes(0, SEGMENT_HEADER_BYTES as usize)? != segment_header(segment) {
        visit(ScanItem::BadSegmentHeader { len_bytes: end.min(SEGMENT_HEADER_BYTES) });
    }
    let mut offset = SEGMENT_HEADER_BYTES;
    while offset < end {
        if let Some((hash, len_bytes)) = parse_entry_header(&mut window, segment, offset, end)? {
            let location = Location { offset, segment, len_bytes };
            let body_ok = if hash_bodies {
                Some(blob_hash(window.bytes(location.body_offset(), len_bytes as usize)?) == hash)
            } else {
                None
            };
            visit(ScanItem::Entry { hash, location, body_ok });
            offset = location.end();
        } else {
            let resume = next_entry_header(&mut window, segment, offset + 1, end)?.unwrap_or(end);
            visit(ScanItem::Unparseable { offset, len_bytes: resume - offset });
            offset = resume;
        }
    }
    Ok(())
}

/// The offset of the first intact entry header at or after `from`, if any.
fn next_entry_header(window: &mut Window<'_>, segment: u32, from: u64, end: u64) -> io::Result<Option<u64>> {
    let mut at = from;
    while at + ENTRY_HEADER_BYTES as u64 <= end {
        let chunk_len = (SCAN_WINDOW_BYTES as u64).min(end - at) as usize;
        let chunk = window.bytes(at, chunk_len)?;
        match chunk.windows(ENTRY_MAGIC.len()).position(|w| w == ENTRY_MAGIC) {
            Some(i) => {
                let candidate = at + i as u64;
                if parse_entry_header(window, segment, candidate, end)?.is_some() {
                    return Ok(Some(candidate));
                }
                at = candidate + 1;
            }
            // Keep the last bytes: a magic may straddle the chunk boundary.
            None => at += (chunk_len.saturating_sub(ENTRY_MAGIC.len() - 1)).max(1) as u64,
        }
    }
    Ok(None)
}

/// Group commit: callers that have appended wait until a sync that started after their append
/// has completed. One waiter at a time becomes the leader and runs the sync; everyone whose
/// append it covered returns when it completes, and those who appended while it ran wait for
/// the next one, which one of them leads. So one sync serves every writer that arrived during
/// the previous one, and the number of syncs tracks sync latency, not the number of writers.
///
/// A failed (or panicking) sync poisons it for good: after a failed `fdatasync` the kernel may
/// have dropped the dirty pages and marked them clean, and a retry would report success.
struct GroupCommit {
    state: Mutex<GroupState>,
    synced: Condvar,
}

struct GroupState {
    /// Every append with a sequence number up to this is durable.
    durable_seq: u64,
    syncing: bool,
    poisoned: bool,
}

#[derive(Debug)]
enum GroupError<E> {
    /// This caller led a sync and it failed.
    SyncFailed(E),
    /// A sync failed before (or while this caller waited).
    Poisoned,
}

/// Ends a leader's turn: on drop without [`LeaderTurn::finish`] (the sync panicked) it poisons
/// the group, so waiters wake up and fail instead of waiting for a sync that will not finish.
struct LeaderTurn<'a> {
    group: &'a GroupCommit,
    finished: bool,
}

impl LeaderTurn<'_> {
    /// Publishes the outcome: everything up to `covered_seq` is durable, or (`None`) the sync
    /// failed and the group is poisoned. Wakes every waiter either way.
    fn finish(mut self, covered_seq: Option<u64>) {
        self.finished = true;
        let mut state = self.group.lock();
        state.syncing = false;
        match covered_seq {
            Some(seq) => state.durable_seq = state.durable_seq.max(seq),
            None => state.poisoned = true,
        }
        drop(state);
        self.group.synced.notify_all();
    }
}

impl Drop for LeaderTurn<'_> {
    fn drop(&mut self) {
        if !self.finished {
            let mut state = self.group.lock();
            state.syncing = false;
            state.poisoned = true;
            drop(state);
            self.group.synced.notify_all();
        }
    }
}

impl GroupCommit {
    fn new() -> Self {
        Self {
            state: Mutex::new(GroupState { durable_seq: 0, syncing: false, poisoned: false }),
            synced: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, GroupState> {
        // Every update of the state is a few plain assignments that cannot panic midway.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn is_poisoned(&self) -> bool {
        self.lock().poisoned
    }

    fn poison(&self) {
        self.lock().poisoned = true;
        self.synced.notify_all();
    }

    /// Returns once append `seq` is durable. `sync`, run by the leader, must note the highest
    /// sequence number appended so far *before* it starts flushing, flush, and return that
    /// number: everything up to it was in the page cache when the flush began.
    fn wait_durable<E>(&self, seq: u64, sync: &mut dyn FnMut() -> Result<u64, E>) -> Result<(), GroupError<E>> {
        let mut state = self.lock();
        loop {
            if state.poisoned {
                return Err(GroupError::Poisoned);
            }
            if state.durable_seq >= seq {
                return Ok(());
            }
            if state.syncing {
                state = self.synced.wait(state).unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            state.syncing = true;
            drop(state);
            let turn = LeaderTurn { group: self, finished: false };
            match sync() {
                Ok(covered_seq) => turn.finish(Some(covered_seq)),
                Err(e) => {
                    turn.finish(None);
                    return Err(GroupError::SyncFailed(e));
                }
            }
            state = self.lock();
        }
    }
}

fn segment_path(root: &Path, segment: u32) -> PathBuf {
    root.join(segment_name(segment))
}

fn open_options() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.read(true).write(true).mode(0o600);
    options
}

/// Creates segment `segment` with its header, syncs it and the directory (so the file's entry
/// survives a crash before anything in it is reported durable), and returns a read-write
/// handle. A file already there can only be this process's own failed attempt (the segment
/// numbers past the last one found at open are ours, under the lock), so it is overwritten
/// rather than making every later roll fail.
fn create_segment(root: &Path, segment: u32) -> Result<File, BlobError> {
    let path = segment_path(root, segment);
    let file = open_options().create(true).truncate(true).open(&path).map_err(io_at(&path))?;
    file.write_all_at(&segment_header(segment), 0).map_err(io_at(&path))?;
    file.sync_data().map_err(io_at(&path))?;
    sync_dir_at(root)?;
    Ok(file)
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
        if !root.try_exists().map_err(io_at(&root))? {
            create_dirs(&root)?;
            // The store directory's own entry must be durable before blobs in it are reported.
            let parent = root.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
            sync_dir_at(parent)?;
        }
        let lock = lock_store(&root)?;
        // Ciphertexts are not secret, but which patients have how much data is: private to
        // the node's user, and fixed here for stores made before that rule.
        make_private(&root, 0o700)?;
        make_private(&root.join(LOCK_FILE), 0o600)?;

        let mut recovery = PackRecovery::default();
        let mut segments = BTreeMap::new();
        for (name, kind, path) in sorted_entries(&root)? {
            match name.to_str().and_then(parse_segment_name) {
                Some(segment) if kind.is_file() => {
                    make_private(&path, 0o600)?;
                    segments.insert(segment, path);
                }
                _ if name == LOCK_FILE && kind.is_file() => {}
                _ => {
                    tracing::warn!(path = %path.display(), "ignoring a file that is not part of the pack layout");
                    recovery.unexpected_files += 1;
                }
            }
        }
        // Counted from the start, so tests can compare them with the number of puts.
        let (mut data_syncs, mut dir_syncs) = (0, 0);
        if segments.is_empty() {
            create_segment(&root, 1)?;
            data_syncs += 1;
            dir_syncs += 1;
            segments.insert(1, segment_path(&root, 1));
        }
        let last = *segments.keys().next_back().expect("at least one segment");
        for missing in (1..last).filter(|s| !segments.contains_key(s)) {
            let path = segment_path(&root, missing);
            tracing::error!(path = %path.display(), "pack segment is missing: the blobs in it are lost");
            recovery.damaged.push(DamagedRange { path, offset: 0, len_bytes: 0, kind: DamageKind::MissingSegment });
        }

        let total_bytes: u64 = segments.values().filter_map(|p| fs::metadata(p).ok()).map(|m| m.len()).sum();
        let started = Instant::now();
        if total_bytes >= PROGRESS_EVERY_BYTES {
            tracing::info!(dir = %root.display(), segments = segments.len(), bytes = total_bytes, "scanning the pack blob store");
        }
        let mut index = HashMap::new();
        let mut readers = BTreeMap::new();
        let mut next_progress = PROGRESS_EVERY_BYTES;
        let mut writer = None;
        for (&segment, path) in &segments {
            let is_last = segment == last;
            let file = if is_last { open_options().open(path) } else { File::open(path) }.map_err(io_at(path))?;
            let end = file.metadata().map_err(io_at(path))?.len();
            if is_last {
                let tail = recover_last_segment(&file, segment, end, path, &mut index, &mut recovery)?;
                readers.insert(segment, Arc::new(File::open(path).map_err(io_at(path))?));
                writer = Some(Writer { segment, file: Arc::new(file), len_bytes: tail, dirty: false });
            } else {
                scan_segment(&file, segment, end, false, &mut |item| {
                    index_item(&mut index, path, item, &mut recovery.damaged);
                })
                .map_err(io_at(path))?;
                readers.insert(segment, Arc::new(file));
            }
            recovery.scanned_bytes += end;
            if recovery.scanned_bytes >= next_progress {
                tracing::info!(
                    scanned_bytes = recovery.scanned_bytes,
                    total_bytes,
                    blobs = index.len(),
                    "scanning the pack blob store"
                );
                next_progress = (recovery.scanned_bytes / PROGRESS_EVERY_BYTES + 1) * PROGRESS_EVERY_BYTES;
            }
        }
        let writer = writer.expect("the last segment was opened");
        // A previous process may have appended without syncing before it died (a process crash
        // keeps the page cache): sync now, since puts deduplicate against what the scan found.
        let last_path = segment_path(&root, last);
        writer.file.sync_all().map_err(io_at(&last_path))?;
        sync_dir_at(&root)?;
        data_syncs += 1;
        dir_syncs += 1;

        recovery.segments = segments.len() as u32;
        recovery.blobs = index.len() as u64;
        for range in &recovery.damaged {
            tracing::warn!(path = %range.path.display(), offset = range.offset, len_bytes = range.len_bytes, kind = ?range.kind, "damaged range in the pack blob store");
        }
        if total_bytes >= PROGRESS_EVERY_BYTES || recovery.truncated_bytes > 0 || !recovery.damaged.is_empty() {
            tracing::info!(
                dir = %root.display(),
                segments = recovery.segments,
                blobs = recovery.blobs,
                truncated_bytes = recovery.truncated_bytes,
                damaged_ranges = recovery.damaged.len(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "pack blob store opened"
            );
        }
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

    fn index_read(&self) -> RwLockReadGuard<'_, HashMap<Hash, Location>> {
        // Index updates are single inserts: a panic elsewhere cannot leave it half-updated.
        self.index.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn index_write(&self) -> RwLockWriteGuard<'_, HashMap<Hash, Location>> {
        self.index.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn writer(&self) -> MutexGuard<'_, Writer> {
        // Nothing under this mutex panics between the write and the bookkeeping that follows
        // it (a panic could only come from allocation), so the state stays consistent.
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn reader(&self, segment: u32) -> Result<Arc<File>, BlobError> {
        self.readers.read().unwrap_or_else(PoisonError::into_inner).get(&segment).cloned().ok_or_else(|| {
            BlobError::Io {
                path: segment_path(&self.root, segment),
                source: io::Error::new(io::ErrorKind::NotFound, "segment not open"),
            }
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
            Err(source) => Err(BlobError::Io { path: segment_path(&self.root, location.segment), source }),
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
        if let Err(source) = writer.file.write_all_at(entry, offset) {
            // Cut what part of the entry was written, so the next append starts at a clean
            // end. If even that fails, the end of the file is unknown: stop writing.
            if writer.file.set_len(offset).is_err() {
                self.group.poison();
            }
            return Err(BlobError::Io { path: segment_path(&self.root, writer.segment), source });
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
            return Err(BlobError::Io { path: old_path, source });
        }
        self.data_syncs.fetch_add(1, Ordering::Relaxed);
        let segment = writer
            .segment
            .checked_add(1)
            .ok_or_else(|| BlobError::Io { path: old_path, source: io::Error::other("no segment numbers left") })?;
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
                file.sync_data().map_err(io_at(&segment_path(&self.root, segment)))?;
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

/// Opens and locks `root/LOCK`, as [`crate::DiskBlobStore`] does.
fn lock_store(root: &Path) -> Result<File, BlobError> {
    let lock_path = root.join(LOCK_FILE);
    let lock = open_options().create(true).truncate(false).open(&lock_path).map_err(io_at(&lock_path))?;
    match lock.try_lock() {
        Ok(()) => Ok(lock),
        Err(TryLockError::WouldBlock) => Err(BlobError::Locked { path: root.to_owned() }),
        Err(TryLockError::Error(source)) => Err(BlobError::Io { path: lock_path, source }),
    }
}

/// Adds what a scan of a sealed segment found to the index (a later copy of a blob replaces an
/// earlier one: copies are only appended to replace a corrupt one) and to `damaged`.
fn index_item(index: &mut HashMap<Hash, Location>, path: &Path, item: ScanItem, damaged: &mut Vec<DamagedRange>) {
    match item {
        ScanItem::Entry { hash, location, body_ok } => {
            // A copy known to be bad never hides an earlier one.
            if body_ok != Some(false) || !index.contains_key(&hash) {
                index.insert(hash, location);
            }
            if body_ok == Some(false) {
                damaged.push(DamagedRange {
                    path: path.to_owned(),
                    offset: location.offset,
                    len_bytes: location.end() - location.offset,
                    kind: DamageKind::BodyMismatch { hash },
                });
            }
        }
        ScanItem::BadSegmentHeader { len_bytes } => {
            damaged.push(DamagedRange { path: path.to_owned(), offset: 0, len_bytes, kind: DamageKind::SegmentHeader })
        }
        ScanItem::Unparseable { offset, len_bytes } => {
            damaged.push(DamagedRange { path: path.to_owned(), offset, len_bytes, kind: DamageKind::Unparseable })
        }
    }
}

/// Scans the last segment with bodies hashed, indexes it up to its last intact entry and cuts
/// everything after that (a torn write: nothing past the last intact entry was reported
/// durable, or it would be intact). Returns the new end.
fn recover_last_segment(
    file: &File,
    segment: u32,
    end: u64,
    path: &Path,
    index: &mut HashMap<Hash, Location>,
    recovery: &mut PackRecovery,
) -> Result<u64, BlobError> {
    let mut items = Vec::new();
    scan_segment(file, segment, end, true, &mut |item| items.push(item)).map_err(io_at(path))?;
    let intact_end = items.iter().rev().find_map(|item| match item {
        ScanItem::Entry { location, body_ok: Some(true), .. } => Some(location.end()),
        _ => None,
    });
    let header_ok = !items.iter().any(|item| matches!(item, ScanItem::BadSegmentHeader { .. }));
    let tail = match intact_end {
        Some(tail) => tail,
        None => SEGMENT_HEADER_BYTES,
    };
    for item in items {
        let before_tail = match &item {
            ScanItem::Entry { location, .. } => location.end() <= tail,
            ScanItem::Unparseable { offset, .. } => *offset < tail,
            // A bad header is rewritten below when nothing intact follows it.
            ScanItem::BadSegmentHeader { .. } => intact_end.is_some(),
        };
        if before_tail {
            index_item(index, path, item, &mut recovery.damaged);
        }
    }
    if intact_end.is_none() && !header_ok {
        // Nothing intact, and the header itself torn: a crash while the segment was created.
        file.set_len(0).map_err(io_at(path))?;
        file.write_all_at(&segment_header(segment), 0).map_err(io_at(path))?;
        recovery.truncated_bytes += end;
        tracing::warn!(path = %path.display(), bytes = end, "rewrote a torn pack segment header");
    } else if tail < end {
        file.set_len(tail).map_err(io_at(path))?;
        recovery.truncated_bytes += end - tail;
        tracing::warn!(path = %path.display(), offset = tail, bytes = end - tail, "cut a torn write from the end of the pack segment");
    }
    // The caller syncs the file (data and size) before any put is accepted.
    Ok(tail)
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

/// Re-hashes every entry of every segment and reports what it found; `progress` is called
/// with the number of blobs checked so far after each one. Meant for an offline check (the
/// lock keeps a node off the directory meanwhile); appends made by this process during the
/// check are not covered. Fails only on I/O errors, naming the path.
///
/// `blobs_checked` counts the copies the store serves (one per blob); `corrupt` lists blobs
/// whose served copy does not hash to its address, also listed with their position in
/// `damaged`, which holds every damaged range (and missing segment) in file order. Older
/// copies replaced by a repair are only counted, in `superseded_entries`.
pub fn verify_pack(store: &PackBlobStore, progress: &mut dyn FnMut(u64)) -> Result<BlobReport, BlobError> {
    let mut report = BlobReport::default();
    for (name, kind, path) in sorted_entries(&store.root)? {
        let part_of_layout =
            kind.is_file() && (name == LOCK_FILE || name.to_str().and_then(parse_segment_name).is_some());
        if !part_of_layout {
            report.unexpected.push(path);
        }
    }
    let (active, active_end) = {
        let writer = store.writer();
        (writer.segment, writer.len_bytes)
    };
    let segments: Vec<(u32, Arc<File>)> =
        store.readers.read().unwrap_or_else(PoisonError::into_inner).iter().map(|(s, f)| (*s, Arc::clone(f))).collect();
    let last = segments.last().map_or(0, |(s, _)| *s);
    let mut scanned_ends = BTreeMap::new();
    let mut scanned_bytes = 0u64;
    let mut next_progress = PROGRESS_EVERY_BYTES;
    for missing in (1..last).filter(|s| segments.binary_search_by_key(s, |(segment, _)| *segment).is_err()) {
        let path = segment_path(&store.root, missing);
        report.damaged.push(DamagedRange { path, offset: 0, len_bytes: 0, kind: DamageKind::MissingSegment });
    }
    let mut served_seen = 0u64;
    for (segment, file) in &segments {
        let path = segment_path(&store.root, *segment);
        let end = if *segment == active { active_end } else { file.metadata().map_err(io_at(&path))?.len() };
        scanned_ends.insert(*segment, end);
        scan_segment(file, *segment, end, true, &mut |item| match item {
            ScanItem::Entry { hash, location, body_ok } => {
                if store.index_read().get(&hash) != Some(&location) {
                    report.superseded_entries += 1;
                    return;
                }
                served_seen += 1;
                report.blobs_checked += 1;
                if body_ok == Some(true) {
                    report.valid_bytes += u64::from(location.len_bytes);
                } else {
                    tracing::warn!(%hash, path = %path.display(), offset = location.offset, "stored blob failed verification");
                    report.corrupt.push(hash);
                    report.damaged.push(DamagedRange {
                        path: path.clone(),
                        offset: location.offset,
                        len_bytes: location.end() - location.offset,
                        kind: DamageKind::BodyMismatch { hash },
                    });
                }
                progress(report.blobs_checked);
            }
            ScanItem::BadSegmentHeader { len_bytes } => {
                report.damaged.push(DamagedRange { path: path.clone(), offset: 0, len_bytes, kind: DamageKind::SegmentHeader })
            }
            ScanItem::Unparseable { offset, len_bytes } => {
                report.damaged.push(DamagedRange { path: path.clone(), offset, len_bytes, kind: DamageKind::Unparseable })
            }
        })
        .map_err(io_at(&path))?;
        scanned_bytes += end;
        if scanned_bytes >= next_progress {
            tracing::info!(scanned_bytes, blobs = report.blobs_checked, "verifying the pack blob store");
            next_progress = (scanned_bytes / PROGRESS_EVERY_BYTES + 1) * PROGRESS_EVERY_BYTES;
        }
    }
    // Blobs the index serves that the scan did not reach: their bytes were overwritten or cut
    // since the store was opened. Found only when the counts disagree, to keep the usual case
    // one pass.
    let index = store.index_read();
    if served_seen < index.len() as u64 {
        let covered = |location: &Location| {
            let in_range = scanned_ends.get(&location.segment).is_some_and(|end| location.end() <= *end);
            let in_damage = report.damaged.iter().any(|range| {
                range.path == segment_path(&store.root, location.segment)
                    && range.kind == DamageKind::Unparseable
                    && location.offset >= range.offset
                    && location.offset < range.offset + range.len_bytes
            });
            in_range && !in_damage
        };
        let mut lost: Vec<Hash> =
            index.iter().filter(|(_, location)| !covered(location)).map(|(hash, _)| *hash).collect();
        lost.sort();
        for hash in lost {
            tracing::warn!(%hash, "stored blob is no longer readable from its segment");
            report.blobs_checked += 1;
            report.corrupt.push(hash);
            progress(report.blobs_checked);
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use std::{
        io::Write as _,
        sync::atomic::AtomicBool,
        thread,
        time::{Duration, Instant},
    };

    use super::*;
    use crate::DiskBlobStore;

    fn open(dir: &Path) -> PackBlobStore {
        PackBlobStore::open(dir).expect("open")
    }

    fn open_small(dir: &Path, segment_bytes_max: u64) -> PackBlobStore {
        PackBlobStore::open_with(dir, PackOptions { segment_bytes_max }).expect("open")
    }

    fn file_len(path: &Path) -> u64 {
        fs::metadata(path).unwrap().len()
    }

    fn location(store: &PackBlobStore, hash: &Hash) -> Location {
        *store.index_read().get(hash).expect("indexed")
    }

    fn flip_byte(path: &Path, offset: u64) {
        let mut bytes = fs::read(path).unwrap();
        bytes[offset as usize] ^= 0x01;
        fs::write(path, bytes).unwrap();
    }

    /// Deterministic incompressible bytes (splitmix64), like real ciphertexts.
    fn noise(seed: u64, len: usize) -> Vec<u8> {
        let mut state = seed;
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
        }
        out.truncate(len);
        out
    }

    fn entry_bytes(blob: &[u8]) -> u64 {
        (ENTRY_HEADER_BYTES + blob.len()) as u64
    }

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
    fn layout_round_trip_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let hash = store.put(b"ciphertext").unwrap();
        let mut names: Vec<String> =
            fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        assert_eq!(names, ["LOCK", "pack-000001.seg"]);

        // The documented byte layout, field by field.
        let bytes = fs::read(segment_path(dir.path(), 1)).unwrap();
        assert_eq!(bytes.len(), 16 + 48 + 10);
        assert_eq!(&bytes[..8], b"MLBPACK1");
        assert_eq!(bytes[8..12], 1u32.to_le_bytes());
        assert_eq!(bytes[12..16], [0; 4]);
        assert_eq!(&bytes[16..20], b"MLBE");
        assert_eq!(bytes[20..24], 10u32.to_le_bytes());
        assert_eq!(bytes[24..56], hash.0);
        assert_eq!(bytes[56..64], header_check(1, 16, &bytes[16..56]));
        assert_eq!(&bytes[64..], b"ciphertext");
        drop(store);

        let store = open(dir.path());
        assert_eq!(store.get(&hash).unwrap().unwrap(), b"ciphertext");
        assert_eq!(store.len_bytes(&hash).unwrap(), Some(10));
        assert_eq!(*store.recovery(), PackRecovery { segments: 1, blobs: 1, scanned_bytes: 74, ..Default::default() });
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
    fn torn_entry_at_the_end_is_cut_and_appends_continue() {
        // Cut inside the header, right after it, and inside the body of the last entry.
        for cut in [20u64, 48, 48 + 100] {
            let dir = tempfile::tempdir().unwrap();
            let path = segment_path(dir.path(), 1);
            let (a, b, c, d) = (noise(1, 500), noise(2, 500), noise(3, 500), noise(4, 500));
            let store = open(dir.path());
            store.put(&a).unwrap();
            store.put(&b).unwrap();
            let before_c = file_len(&path);
            store.put(&c).unwrap();
            drop(store);
            let file = OpenOptions::new().write(true).open(&path).unwrap();
            file.set_len(before_c + cut).unwrap();
            drop(file);

            let store = open(dir.path());
            assert_eq!(store.recovery().truncated_bytes, cut, "cut at {cut}");
            assert!(store.recovery().damaged.is_empty());
            assert_eq!(file_len(&path), before_c);
            assert_eq!(store.get(&blob_hash(&a)).unwrap().unwrap(), a);
            assert_eq!(store.get(&blob_hash(&b)).unwrap().unwrap(), b);
            assert_eq!(store.get(&blob_hash(&c)).unwrap(), None);
            store.put(&d).unwrap();
            store.put(&c).unwrap();
            drop(store);

            let store = open(dir.path());
            assert_eq!(store.recovery().truncated_bytes, 0);
            for blob in [&a, &b, &c, &d] {
                assert_eq!(store.get(&blob_hash(blob)).unwrap().as_ref(), Some(blob));
            }
            assert!(verify_pack(&store, &mut |_| {}).unwrap().is_clean());
        }
    }

    #[test]
    fn garbage_after_the_last_entry_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = segment_path(dir.path(), 1);
        let (a, b, c) = (noise(1, 700), noise(2, 700), noise(3, 700));
        let store = open(dir.path());
        store.put(&a).unwrap();
        let b_hash = store.put(&b).unwrap();
        let b_at = location(&store, &b_hash);
        let end = file_len(&path);
        drop(store);
        // Noise, a stray magic, and a verbatim copy of b's entry: its header check names its
        // old position, so a scan must not take the copy for an entry.
        let segment = fs::read(&path).unwrap();
        let mut garbage = noise(9, 333);
        garbage.extend_from_slice(&ENTRY_MAGIC);
        garbage.extend_from_slice(&segment[b_at.offset as usize..b_at.end() as usize]);
        garbage.extend_from_slice(&noise(10, 50));
        fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(&garbage).unwrap();

        let store = open(dir.path());
        assert_eq!(store.recovery().truncated_bytes, garbage.len() as u64);
        assert_eq!(file_len(&path), end);
        assert_eq!(store.get(&blob_hash(&a)).unwrap().unwrap(), a);
        assert_eq!(store.get(&b_hash).unwrap().unwrap(), b);
        store.put(&c).unwrap();
        drop(store);
        let store = open(dir.path());
        assert_eq!(store.get(&blob_hash(&c)).unwrap().unwrap(), c);
        assert_eq!(store.recovery().blobs, 3);
        assert!(verify_pack(&store, &mut |_| {}).unwrap().is_clean());
    }

    #[test]
    fn last_entry_with_a_zeroed_body_is_a_torn_write() {
        // What a crash leaves where the size was extended before the data landed.
        let dir = tempfile::tempdir().unwrap();
        let path = segment_path(dir.path(), 1);
        let store = open(dir.path());
        let a = store.put(b"survives").unwrap();
        let torn = store.put(&noise(5, 400)).unwrap();
        let at = location(&store, &torn);
        drop(store);
        let mut bytes = fs::read(&path).unwrap();
        bytes[at.body_offset() as usize..].fill(0);
        fs::write(&path, bytes).unwrap();

        let store = open(dir.path());
        assert_eq!(store.recovery().truncated_bytes, entry_bytes(&noise(5, 400)));
        assert_eq!(store.get(&torn).unwrap(), None);
        assert_eq!(store.get(&a).unwrap().unwrap(), b"survives");
    }

    #[test]
    fn flipped_body_byte_is_corrupt_reported_and_repaired_by_put() {
        let dir = tempfile::tempdir().unwrap();
        let path = segment_path(dir.path(), 1);
        let store = open(dir.path());
        let good = store.put(b"a perfectly good ciphertext").unwrap();
        let rot = store.put(b"ciphertext that will rot").unwrap();
        let later = store.put(b"written after it").unwrap();
        let at = location(&store, &rot);
        flip_byte(&path, at.body_offset() + 5);

        assert!(matches!(store.get(&rot), Err(BlobError::Corrupt { hash }) if hash == rot));
        // Metadata queries do not re-hash (documented).
        assert!(store.contains(&rot).unwrap());
        assert_eq!(store.get(&good).unwrap().unwrap(), b"a perfectly good ciphertext");
        assert_eq!(store.get(&later).unwrap().unwrap(), b"written after it");

        let mut calls = Vec::new();
        let report = verify_pack(&store, &mut |n| calls.push(n)).unwrap();
        assert_eq!(report.blobs_checked, 3);
        assert_eq!(report.corrupt, [rot]);
        assert_eq!(report.valid_bytes, 27 + 16);
        let expected = DamagedRange {
            path: path.clone(),
            offset: at.offset,
            len_bytes: 48 + 24,
            kind: DamageKind::BodyMismatch { hash: rot },
        };
        assert_eq!(report.damaged, std::slice::from_ref(&expected));
        assert!(!report.is_clean());
        assert_eq!(calls, [1, 2, 3]);

        // Putting the right bytes again appends a fresh copy, which is served from then on.
        assert_eq!(store.put(b"ciphertext that will rot").unwrap(), rot);
        assert_eq!(store.get(&rot).unwrap().unwrap(), b"ciphertext that will rot");
        let report = verify_pack(&store, &mut |_| {}).unwrap();
        assert!(report.is_clean(), "{report:?}");
        assert_eq!((report.blobs_checked, report.superseded_entries), (3, 1));
        drop(store);

        // The scan at open (the last segment is hashed) finds the rotten copy and keeps the
        // repaired one.
        let store = open(dir.path());
        assert_eq!(store.recovery().damaged, [expected]);
        assert_eq!(store.recovery().truncated_bytes, 0);
        assert_eq!(store.get(&rot).unwrap().unwrap(), b"ciphertext that will rot");
        assert!(verify_pack(&store, &mut |_| {}).unwrap().is_clean());
    }

    #[test]
    fn corrupt_headers_mid_segment_hide_only_their_entry() {
        // 100-byte blobs make 148-byte entries; three fit in a segment.
        let dir = tempfile::tempdir().unwrap();
        let blobs: Vec<Vec<u8>> = (0..6).map(|i| noise(i, 100)).collect();
        let store = open_small(dir.path(), SEGMENT_HEADER_BYTES + 3 * 148);
        let hashes: Vec<Hash> = blobs.iter().map(|b| store.put(b).unwrap()).collect();
        let (sealed, last) = (location(&store, &hashes[1]), location(&store, &hashes[4]));
        assert_eq!((sealed.segment, last.segment), (1, 2));
        drop(store);
        // One header byte in the sealed segment, one in the last (the length field).
        flip_byte(&segment_path(dir.path(), 1), sealed.offset + 2);
        flip_byte(&segment_path(dir.path(), 2), last.offset + 5);

        let store = open_small(dir.path(), SEGMENT_HEADER_BYTES + 3 * 148);
        let unparseable = |at: Location| DamagedRange {
            path: segment_path(dir.path(), at.segment),
            offset: at.offset,
            len_bytes: 148,
            kind: DamageKind::Unparseable,
        };
        assert_eq!(store.recovery().damaged, [unparseable(sealed), unparseable(last)]);
        // Damage followed by intact entries is not a torn tail: nothing is cut.
        assert_eq!(store.recovery().truncated_bytes, 0);
        for (i, (hash, bytes)) in hashes.iter().zip(&blobs).enumerate() {
            let expected = if i == 1 || i == 4 { None } else { Some(bytes) };
            assert_eq!(store.get(hash).unwrap().as_ref(), expected, "blob {i}");
        }
        let report = verify_pack(&store, &mut |_| {}).unwrap();
        assert_eq!(report.damaged, [unparseable(sealed), unparseable(last)]);
        assert!(report.corrupt.is_empty());
        assert_eq!(report.blobs_checked, 4);

        // The lost blobs can be stored again (by replication, from a peer).
        store.put(&blobs[1]).unwrap();
        assert_eq!(store.get(&hashes[1]).unwrap().unwrap(), blobs[1]);
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
    fn missing_segment_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_small(dir.path(), 200);
        let blobs: Vec<Vec<u8>> = (0..3).map(|i| noise(i, 100)).collect();
        for bytes in &blobs {
            store.put(bytes).unwrap();
        }
        drop(store);
        fs::remove_file(segment_path(dir.path(), 2)).unwrap();

        let store = open_small(dir.path(), 200);
        let missing = DamagedRange {
            path: segment_path(dir.path(), 2),
            offset: 0,
            len_bytes: 0,
            kind: DamageKind::MissingSegment,
        };
        assert_eq!(store.recovery().damaged, std::slice::from_ref(&missing));
        assert_eq!(store.get(&blob_hash(&blobs[0])).unwrap().unwrap(), blobs[0]);
        assert_eq!(store.get(&blob_hash(&blobs[1])).unwrap(), None);
        assert_eq!(store.get(&blob_hash(&blobs[2])).unwrap().unwrap(), blobs[2]);
        let report = verify_pack(&store, &mut |_| {}).unwrap();
        assert_eq!(report.damaged, [missing]);
        assert!(!report.is_clean());
    }

    #[test]
    fn torn_segment_header_is_rewritten() {
        // A crash while the next segment was being created leaves a stub of its header.
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let a = store.put(b"in the first segment").unwrap();
        drop(store);
        let stub = segment_path(dir.path(), 2);
        fs::write(&stub, &segment_header(2)[..5]).unwrap();

        let store = open(dir.path());
        assert_eq!(store.recovery().truncated_bytes, 5);
        assert!(store.recovery().damaged.is_empty());
        assert_eq!(fs::read(&stub).unwrap(), segment_header(2));
        let b = store.put(b"in the second segment").unwrap();
        drop(store);
        let store = open(dir.path());
        assert_eq!(store.get(&a).unwrap().unwrap(), b"in the first segment");
        assert_eq!(store.get(&b).unwrap().unwrap(), b"in the second segment");
        assert_eq!(location(&store, &b).segment, 2);
        assert!(verify_pack(&store, &mut |_| {}).unwrap().is_clean());
    }

    #[test]
    fn verify_reports_foreign_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        store.put(b"blob").unwrap();
        let stray = dir.path().join("notes.txt");
        fs::write(&stray, b"x").unwrap();
        let misnamed = dir.path().join("pack-1.seg");
        fs::write(&misnamed, b"x").unwrap();
        let report = verify_pack(&store, &mut |_| {}).unwrap();
        assert_eq!(report.unexpected, [stray, misnamed]);
        assert_eq!(report.blobs_checked, 1);
        assert!(!report.is_clean());
    }

    #[test]
    fn segment_names_parse_only_in_canonical_form() {
        assert_eq!(parse_segment_name("pack-000001.seg"), Some(1));
        assert_eq!(parse_segment_name("pack-1234567.seg"), Some(1_234_567));
        for name in ["pack-1.seg", "pack-000000.seg", "pack-+00001.seg", "pack-000001.seg.tmp", "PACK-000001.seg"] {
            assert_eq!(parse_segment_name(name), None, "{name}");
        }
    }

    /// The group-commit rule with a fake sync: every writer returns only after a sync that
    /// started after its write completed, syncs never overlap, and they are shared.
    #[test]
    fn group_commit_returns_only_after_a_sync_that_started_after_the_write() {
        const THREADS: u64 = 16;
        const WRITES_PER_THREAD: u64 = 25;
        let group = GroupCommit::new();
        // A logical clock orders writes, sync starts and ends, and returns.
        let clock = AtomicU64::new(0);
        let appended = Mutex::new(0u64);
        let syncs = Mutex::new(Vec::<(u64, u64)>::new());
        let in_sync = AtomicBool::new(false);
        thread::scope(|scope| {
            for _ in 0..THREADS {
                scope.spawn(|| {
                    for _ in 0..WRITES_PER_THREAD {
                        let (seq, written_at) = {
                            let mut appended = appended.lock().unwrap();
                            *appended += 1;
                            (*appended, clock.fetch_add(1, Ordering::SeqCst))
                        };
                        let mut sync = || -> Result<u64, ()> {
                            assert!(!in_sync.swap(true, Ordering::SeqCst), "two syncs at once");
                            // As the store's sync does: note what is covered, then start the
                            // flush; the flush's start is what must come after the write.
                            let covered = *appended.lock().unwrap();
                            let started_at = clock.fetch_add(1, Ordering::SeqCst);
                            thread::sleep(Duration::from_micros(300));
                            in_sync.store(false, Ordering::SeqCst);
                            syncs.lock().unwrap().push((started_at, clock.fetch_add(1, Ordering::SeqCst)));
                            Ok(covered)
                        };
                        group.wait_durable(seq, &mut sync).unwrap();
                        let returned_at = clock.fetch_add(1, Ordering::SeqCst);
                        let syncs = syncs.lock().unwrap();
                        assert!(
                            syncs.iter().any(|&(started, ended)| started > written_at && ended < returned_at),
                            "write at {written_at} returned at {returned_at} without a sync after it: {syncs:?}"
                        );
                    }
                });
            }
        });
        let writes = THREADS * WRITES_PER_THREAD;
        let syncs = syncs.lock().unwrap().len() as u64;
        eprintln!("{writes} writes, {syncs} syncs");
        assert!(syncs < writes, "{syncs} syncs for {writes} writes");
    }

    #[test]
    fn failed_or_panicking_sync_poisons_the_group() {
        let group = GroupCommit::new();
        let mut ok = || -> Result<u64, &'static str> { Ok(1) };
        group.wait_durable(1, &mut ok).unwrap();

        // A writer waiting for the failing sync fails too, instead of waiting forever.
        let started = std::sync::Barrier::new(2);
        thread::scope(|scope| {
            let leader = scope.spawn(|| {
                let mut failing = || -> Result<u64, &'static str> {
                    started.wait();
                    thread::sleep(Duration::from_millis(50));
                    Err("disk on fire")
                };
                group.wait_durable(2, &mut failing)
            });
            started.wait();
            let mut never = || -> Result<u64, &'static str> { panic!("a poisoned group never syncs") };
            assert!(matches!(group.wait_durable(3, &mut never), Err(GroupError::Poisoned)));
            assert!(matches!(leader.join().unwrap(), Err(GroupError::SyncFailed("disk on fire"))));
        });
        // Even for appends that were durable before: the store refuses everything.
        assert!(matches!(group.wait_durable(1, &mut ok), Err(GroupError::Poisoned)));

        let group = GroupCommit::new();
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut panicking = || -> Result<u64, ()> { panic!("sync panicked") };
            group.wait_durable(1, &mut panicking)
        }));
        assert!(panicked.is_err());
        assert!(group.is_poisoned());
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
