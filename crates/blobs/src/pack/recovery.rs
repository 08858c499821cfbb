//! The scan at open: lists the segments, walks each to rebuild the index (sealed segments
//! header by header, the last one with bodies hashed), cuts a torn tail off the last segment
//! and syncs it, and reports what it found in [`PackRecovery`].
//!
//! Invariant: only the last segment is ever cut, and only after its last intact entry: a write
//! past that was never reported durable (it would be intact if it had been).

use std::{
    collections::{BTreeMap, HashMap},
    fs::{self, File},
    os::unix::fs::FileExt as _,
    path::Path,
    sync::Arc,
    time::Instant,
};

use super::{
    format::{
        Location, SEGMENT_HEADER_BYTES, create_segment, open_options, parse_segment_name, segment_header, segment_path,
    },
    scan::{PROGRESS_EVERY_BYTES, ScanItem, scan_segment},
};
use crate::{
    BlobError, DamageKind, DamagedRange, Hash,
    store_dir::{LOCK_FILE, io_at, make_private, sorted_entries, sync_dir_at},
};

/// What [`super::PackBlobStore::open`] found and repaired.
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
    /// [`super::verify_pack`].
    pub damaged: Vec<DamagedRange>,
    /// Files in the directory that are not part of the layout (ignored).
    pub unexpected_files: u64,
}

/// What the scan at open rebuilt, for the store to take over.
pub(super) struct Recovered {
    pub(super) recovery: PackRecovery,
    pub(super) index: HashMap<Hash, Location>,
    /// A read-only handle per segment found.
    pub(super) readers: BTreeMap<u32, Arc<File>>,
    /// The highest-numbered segment, where appends continue.
    pub(super) last_segment: u32,
    /// Read-write handle of the last segment, cut to its clean end and synced.
    pub(super) last_file: File,
    /// End of the last intact entry of the last segment: where the next append goes.
    pub(super) tail: u64,
    /// Syncs done while opening: (`fdatasync` of segments, directory fsyncs).
    pub(super) data_syncs: u64,
    pub(super) dir_syncs: u64,
}

/// Scans the store directory `root` (locked by the caller), creating the first segment of an
/// empty store. See the module docs.
pub(super) fn recover(root: &Path) -> Result<Recovered, BlobError> {
    let mut recovery = PackRecovery::default();
    let mut segments = BTreeMap::new();
    for (name, kind, path) in sorted_entries(root)? {
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
        create_segment(root, 1)?;
        data_syncs += 1;
        dir_syncs += 1;
        segments.insert(1, segment_path(root, 1));
    }
    let last = *segments.keys().next_back().expect("at least one segment");
    for missing in (1..last).filter(|s| !segments.contains_key(s)) {
        let path = segment_path(root, missing);
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
    let mut last_open = None;
    for (&segment, path) in &segments {
        let is_last = segment == last;
        let file = if is_last { open_options().open(path) } else { File::open(path) }.map_err(io_at(path))?;
        let end = file.metadata().map_err(io_at(path))?.len();
        if is_last {
            let tail = recover_last_segment(&file, segment, end, path, &mut index, &mut recovery)?;
            readers.insert(segment, Arc::new(File::open(path).map_err(io_at(path))?));
            last_open = Some((file, tail));
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
    let (last_file, tail) = last_open.expect("the last segment was opened");
    // A previous process may have appended without syncing before it died (a process crash
    // keeps the page cache): sync now, since puts deduplicate against what the scan found.
    let last_path = segment_path(root, last);
    last_file.sync_all().map_err(io_at(&last_path))?;
    sync_dir_at(root)?;
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
    Ok(Recovered { recovery, index, readers, last_segment: last, last_file, tail, data_syncs, dir_syncs })
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

#[cfg(test)]
mod tests {
    use std::{
        fs::{self, OpenOptions},
        io::Write as _,
    };

    use super::*;
    use crate::{
        BlobStore as _, blob_hash,
        pack::{format::ENTRY_MAGIC, test_support::*, verify_pack},
    };

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
}
