//! The shared conformance suite for [`BlobStore`] implementations (feature `conformance`).
//!
//! A new backend (for example an S3-compatible object store) passes the contract documented on
//! [`BlobStore`] if `conformance_tests(&store)` returns without panicking. The store may already
//! hold blobs, including ones from an earlier run of this suite: the suite relies only on
//! content addressing, and on a few contents it never stores successfully.

use std::thread;

use crate::{BLOB_BYTES_MAX, BlobError, BlobStore, Hash, blob_hash};

/// Contents the suite only ever tries to store in batches that must be rejected whole.
const NEVER_STORED: &[u8] = b"medledger-blobs conformance: never stored";
const REJECTED_WITH_BATCH: &[u8] = b"medledger-blobs conformance: in a rejected batch";
const THREADS: usize = 8;
const PUTS_PER_THREAD: usize = 16;

/// Runs every check against `store`; panics with a description on the first violation.
pub fn conformance_tests(store: &dyn BlobStore) {
    round_trip(store);
    idempotent_put(store);
    empty_blob(store);
    unknown_hash(store);
    put_many_order_and_duplicates(store);
    size_limit(store);
    concurrent_puts(store);
}

fn assert_stored(store: &dyn BlobStore, hash: &Hash, bytes: &[u8]) {
    assert_eq!(store.get(hash).expect("get").as_deref(), Some(bytes), "get {hash}");
    assert!(store.contains(hash).expect("contains"), "contains {hash}");
    assert_eq!(store.len_bytes(hash).expect("len_bytes"), Some(bytes.len() as u64), "len_bytes {hash}");
}

fn round_trip(store: &dyn BlobStore) {
    let hash = store.put(b"abc").expect("put");
    // The address is plain SHA-256 of the bytes (FIPS 180-2 test vector), as the chain stores it.
    assert_eq!(hash.to_hex(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    assert_stored(store, &hash, b"abc");

    let bytes: Vec<u8> = (0..200_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let hash = store.put(&bytes).expect("put");
    assert_eq!(hash, blob_hash(&bytes));
    assert_stored(store, &hash, &bytes);
}

fn idempotent_put(store: &dyn BlobStore) {
    let bytes = b"medledger-blobs conformance: idempotent";
    let first = store.put(bytes).expect("first put");
    let second = store.put(bytes).expect("second put");
    assert_eq!(first, second);
    assert_stored(store, &first, bytes);
}

fn empty_blob(store: &dyn BlobStore) {
    let hash = store.put(&[]).expect("put of an empty blob");
    assert_eq!(hash.to_hex(), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    assert_stored(store, &hash, &[]);
}

fn unknown_hash(store: &dyn BlobStore) {
    for hash in [blob_hash(NEVER_STORED), Hash([0; 32]), Hash([0xff; 32])] {
        assert_eq!(store.get(&hash).expect("get"), None, "get {hash}");
        assert!(!store.contains(&hash).expect("contains"), "contains {hash}");
        assert_eq!(store.len_bytes(&hash).expect("len_bytes"), None, "len_bytes {hash}");
    }
}

fn put_many_order_and_duplicates(store: &dyn BlobStore) {
    let blobs: Vec<Vec<u8>> =
        (0..20u32).map(|i| format!("medledger-blobs conformance: batch item {i}").into_bytes()).collect();
    let mut batch: Vec<&[u8]> = blobs.iter().map(Vec::as_slice).collect();
    // A duplicate within the batch and a blob stored before it.
    batch.push(blobs[3].as_slice());
    batch.push(b"abc");
    let hashes = store.put_many(&batch).expect("put_many");
    assert_eq!(hashes.len(), batch.len());
    for (hash, bytes) in hashes.iter().zip(&batch) {
        assert_eq!(*hash, blob_hash(bytes), "hashes come back in input order");
        assert_stored(store, hash, bytes);
    }
    assert_eq!(store.put_many(&[]).expect("empty put_many"), Vec::<Hash>::new());
}

fn size_limit(store: &dyn BlobStore) {
    let mut bytes = vec![0xa5; BLOB_BYTES_MAX + 1];
    let too_large = |err: Option<BlobError>| matches!(err, Some(BlobError::TooLarge { bytes, max }) if bytes == BLOB_BYTES_MAX + 1 && max == BLOB_BYTES_MAX);
    assert!(too_large(store.put(&bytes).err()), "put of BLOB_BYTES_MAX + 1 bytes");
    assert!(!store.contains(&blob_hash(&bytes)).expect("contains"));

    // An oversized blob rejects the whole batch before anything in it is written.
    assert!(too_large(store.put_many(&[REJECTED_WITH_BATCH, &bytes]).err()), "put_many with an oversized blob");
    assert!(!store.contains(&blob_hash(REJECTED_WITH_BATCH)).expect("contains"), "nothing of the batch is stored");

    bytes.pop();
    let hash = store.put(&bytes).expect("put of exactly BLOB_BYTES_MAX bytes");
    assert_stored(store, &hash, &bytes);
}

fn concurrent_puts(store: &dyn BlobStore) {
    let shared = b"medledger-blobs conformance: shared by every thread";
    let hashes: Vec<Vec<(Hash, Vec<u8>)>> = thread::scope(|scope| {
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                scope.spawn(move || {
                    let mut mine = Vec::new();
                    for i in 0..PUTS_PER_THREAD {
                        assert_eq!(store.put(shared).expect("put shared"), blob_hash(shared));
                        // Distinct per thread, plus one blob every thread writes at the same step.
                        let own = format!("medledger-blobs conformance: thread {t} item {i}").into_bytes();
                        let common = format!("medledger-blobs conformance: common item {i}").into_bytes();
                        let got = store.put_many(&[&own, &common, shared]).expect("put_many");
                        mine.push((got[0], own));
                        mine.push((got[1], common));
                    }
                    mine
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().expect("worker thread")).collect()
    });
    assert_stored(store, &blob_hash(shared), shared);
    for (hash, bytes) in hashes.iter().flatten() {
        assert_eq!(*hash, blob_hash(bytes));
        assert_stored(store, hash, bytes);
    }
}
