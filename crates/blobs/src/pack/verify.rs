//! [`verify_pack`]: the offline check of a [`PackBlobStore`], re-hashing every entry of every
//! segment and reporting damage by file and offset.
//!
//! Invariant: it only reads; repairs happen by putting the right bytes again (which appends a
//! fresh copy).

use std::collections::BTreeMap;

use super::{
    PackBlobStore,
    format::{Location, parse_segment_name, segment_path},
    scan::{PROGRESS_EVERY_BYTES, ScanItem, scan_segment},
};
use crate::{
    BlobError, BlobReport, DamageKind, DamagedRange, Hash,
    store_dir::{LOCK_FILE, io_at, sorted_entries},
};

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
    for (name, kind, path) in sorted_entries(store.root())? {
        let part_of_layout =
            kind.is_file() && (name == LOCK_FILE || name.to_str().and_then(parse_segment_name).is_some());
        if !part_of_layout {
            report.unexpected.push(path);
        }
    }
    let (active, active_end) = store.append_position();
    let segments = store.segment_readers();
    let last = segments.last().map_or(0, |(s, _)| *s);
    let mut scanned_ends = BTreeMap::new();
    let mut scanned_bytes = 0u64;
    let mut next_progress = PROGRESS_EVERY_BYTES;
    for missing in (1..last).filter(|s| segments.binary_search_by_key(s, |(segment, _)| *segment).is_err()) {
        let path = segment_path(store.root(), missing);
        report.damaged.push(DamagedRange { path, offset: 0, len_bytes: 0, kind: DamageKind::MissingSegment });
    }
    let mut served_seen = 0u64;
    for (segment, file) in &segments {
        let path = segment_path(store.root(), *segment);
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
                range.path == segment_path(store.root(), location.segment)
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
    use std::fs;

    use super::*;
    use crate::{BlobStore as _, pack::test_support::*};

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
}
