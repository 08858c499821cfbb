//! [`verify_all`]: the offline check of a [`DiskBlobStore`], re-hashing every blob file in
//! bounded chunks and listing what does not belong to the layout.
//!
//! Invariant: it only reads; repairs happen by putting the right bytes again.

use std::{
    fs::File,
    io::{self, Read},
    path::Path,
};

use sha2::Digest as _;

use super::{DiskBlobStore, READ_CHUNK_BYTES, TMP_PREFIX, parse_blob_name};
use crate::{
    BLOB_BYTES_MAX, BlobError, BlobReport, Hash,
    store_dir::{is_not_found, sorted_entries},
};

/// The verdict on one blob file.
enum FileCheck {
    Valid { len_bytes: u64 },
    Corrupt,
    Missing,
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

impl DiskBlobStore {
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
            Err(source) => return Err(BlobError::io(path, source)),
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
                Err(source) => return Err(BlobError::io(path, source)),
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

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::{BlobStore as _, blob_hash, disk::test_support::*};

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
}
