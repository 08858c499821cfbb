//! A full disk is reported as a full disk. An `ENOSPC` or `EDQUOT` from a blob write or sync
//! is [`BlobError::StorageFull`], never `Corrupt` or a bare `Io`. The store it hit stays
//! consistent: nothing partly written can be read or is left behind, and once there is space
//! again the same store takes the blob. After a failed pack sync the store must be reopened
//! first.

use std::{fs, io, path::Path};

use crate::{BlobError, BlobStore, DiskBlobStore, blob_hash, verify_all};

const KEPT: &[u8] = b"stored before the disk filled up";
const LATE: &[u8] = b"arrives while the disk is full";
const BATCH: [&[u8]; 2] = [b"first of a batch", b"second of a batch"];

fn disk_full() -> io::Error {
    io::Error::from(io::ErrorKind::StorageFull)
}

fn quota_used_up() -> io::Error {
    io::Error::from(io::ErrorKind::QuotaExceeded)
}

fn assert_storage_full(err: BlobError) {
    assert!(err.is_storage_full(), "{err:?}");
    assert!(matches!(err, BlobError::StorageFull { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("the disk is full"), "{message}");
    assert!(!message.contains("corrupt") && !message.contains("inconsistent"), "{message}");
    // The OS error stays reachable as the source, for logs that print the whole chain.
    let source = std::error::Error::source(&err).and_then(|s| s.downcast_ref::<io::Error>()).expect("io::Error source");
    assert!(matches!(source.kind(), io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded), "{source:?}");
}

/// Every file under `dir` whose name marks a write in progress.
fn temporary_files(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.file_name().unwrap().to_string_lossy().starts_with(".tmp-") {
                found.push(path.display().to_string());
            }
        }
    }
    found
}

#[test]
fn disk_store_write_or_sync_on_a_full_disk_is_storage_full_and_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let store = DiskBlobStore::open(dir.path()).unwrap();
    let kept = store.put(KEPT).unwrap();

    // Half the blob lands in its temporary file, then the disk is full.
    store.faults().fail_write(0, LATE.len() / 2, disk_full());
    assert_storage_full(store.put(LATE).unwrap_err());
    // The file is written but its sync finds no space.
    store.faults().fail_next_sync(disk_full());
    assert_storage_full(store.put(LATE).unwrap_err());
    // A batch that runs out of quota at its second blob renames none of them.
    store.faults().fail_write(1, 3, quota_used_up());
    assert_storage_full(store.put_many(&BATCH).unwrap_err());
    for bytes in [LATE].iter().chain(&BATCH) {
        assert!(!store.contains(&blob_hash(bytes)).unwrap());
    }
    assert_eq!(temporary_files(dir.path()), Vec::<String>::new());

    // Space is back: the same store takes them all.
    assert_eq!(store.put(LATE).unwrap(), blob_hash(LATE));
    store.put_many(&BATCH).unwrap();
    for bytes in [KEPT, LATE].iter().chain(&BATCH) {
        assert_eq!(store.get(&blob_hash(bytes)).unwrap().as_deref(), Some(*bytes));
    }
    assert_eq!(store.get(&kept).unwrap().as_deref(), Some(KEPT));
    let report = verify_all(&store, &mut |_| {}).unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.blobs_checked, 4);
}

/// What the OS reports, not only a hand-made error kind: `ENOSPC` (28) and `EDQUOT` (122).
#[cfg(target_os = "linux")]
#[test]
fn enospc_and_edquot_from_the_os_are_storage_full() {
    let dir = tempfile::tempdir().unwrap();
    let store = DiskBlobStore::open(dir.path()).unwrap();
    for errno in [28, 122] {
        store.faults().fail_write(0, 0, io::Error::from_raw_os_error(errno));
        assert_storage_full(store.put(LATE).unwrap_err());
    }
    // Other I/O errors stay I/O errors.
    store.faults().fail_write(0, 0, io::Error::from(io::ErrorKind::PermissionDenied));
    let err = store.put(LATE).unwrap_err();
    assert!(matches!(err, BlobError::Io { .. }) && !err.is_storage_full(), "{err:?}");
}

#[cfg(unix)]
mod pack {
    use super::*;
    use crate::{PackBlobStore, verify_pack};

    fn segment_len(dir: &Path) -> u64 {
        fs::metadata(dir.join("pack-000001.seg")).unwrap().len()
    }

    #[test]
    fn pack_store_append_on_a_full_disk_is_storage_full_and_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let store = PackBlobStore::open(dir.path()).unwrap();
        let kept = store.put(KEPT).unwrap();
        let len = segment_len(dir.path());

        // 20 bytes of the entry's 48-byte header land, then the disk is full.
        store.faults().fail_write(0, 20, disk_full());
        assert_storage_full(store.put(LATE).unwrap_err());
        assert_eq!(segment_len(dir.path()), len, "the partial entry is cut off");
        assert!(!store.contains(&blob_hash(LATE)).unwrap());
        // A batch that runs out of quota inside its second blob's body.
        store.faults().fail_write(1, 60, quota_used_up());
        assert_storage_full(store.put_many(&BATCH).unwrap_err());
        assert!(!store.contains(&blob_hash(BATCH[1])).unwrap());

        // Space is back: the same store takes them, without a reopen.
        store.put(LATE).unwrap();
        store.put_many(&BATCH).unwrap();
        for bytes in [KEPT, LATE].iter().chain(&BATCH) {
            assert_eq!(store.get(&blob_hash(bytes)).unwrap().as_deref(), Some(*bytes));
        }
        let report = verify_pack(&store, &mut |_| {}).unwrap();
        assert!(report.is_clean(), "{report:?}");
        assert_eq!((report.blobs_checked, report.superseded_entries), (4, 0));
        drop(store);

        // Nothing torn is found at the next open either.
        let store = PackBlobStore::open(dir.path()).unwrap();
        assert_eq!(store.recovery().truncated_bytes, 0);
        assert!(store.recovery().damaged.is_empty(), "{:?}", store.recovery());
        assert_eq!(store.recovery().blobs, 4);
        assert_eq!(store.get(&kept).unwrap().as_deref(), Some(KEPT));
        assert!(verify_pack(&store, &mut |_| {}).unwrap().is_clean());
    }

    #[test]
    fn pack_store_sync_on_a_full_disk_is_storage_full_and_a_reopen_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let store = PackBlobStore::open(dir.path()).unwrap();
        let kept = store.put(KEPT).unwrap();

        store.faults().fail_next_sync(disk_full());
        assert_storage_full(store.put(LATE).unwrap_err());
        // A failed sync cannot be retried (the kernel may have dropped the pages): the store
        // refuses writes until it is reopened, and still serves what was durable.
        assert!(matches!(store.put(BATCH[0]), Err(BlobError::Poisoned { .. })));
        assert_eq!(store.get(&kept).unwrap().as_deref(), Some(KEPT));
        drop(store);

        let store = PackBlobStore::open(dir.path()).unwrap();
        assert!(store.recovery().damaged.is_empty(), "{:?}", store.recovery());
        assert_eq!(store.put(LATE).unwrap(), blob_hash(LATE));
        store.put_many(&BATCH).unwrap();
        for bytes in [KEPT, LATE].iter().chain(&BATCH) {
            assert_eq!(store.get(&blob_hash(bytes)).unwrap().as_deref(), Some(*bytes));
        }
        assert!(verify_pack(&store, &mut |_| {}).unwrap().is_clean());
    }
}
