//! The blob pack scan: `PackBlobStore::open` on segment files of arbitrary content, in a fresh
//! temporary directory (on tmpfs when there is one: opening syncs).
//!
//! Inputs come in two forms, told apart by the first byte. Even: raw segment files (the next
//! byte says how many, then a `u16` length per segment but the last). Odd: a recipe read with
//! `arbitrary` — up to three segments of intact entries (built from the layout in the
//! `medledger_blobs` pack module docs), garbage between them, sometimes a missing segment, then the damage
//! a crash or bit rot leaves: flipped bytes, zeroed ranges, a cut, garbage at the end. The
//! recipe knows which entries no damage touched.
//!
//! Properties: opening never panics and never fails (the files are plain and readable, so an
//! I/O error means the scan read beyond a file's end); every damaged range lies within its
//! file; at most the last segment shrinks, by the bytes reported cut; every untouched entry is
//! served with its body; a blob served always hashes to its address; opening again finds the
//! same blobs and damage and changes no byte (recovery is idempotent); after recovery a put
//! lands, `verify_pack` counts every served blob, and a third open still serves the put.

use std::{
    collections::{BTreeMap, HashMap},
    fs,
    path::{Path, PathBuf},
};

use arbitrary::Unstructured;
use medledger_blobs::{BlobError, BlobStore, DamageKind, Hash, PackBlobStore, PackOptions, blob_hash, verify_pack};
use sha2::Digest as _;

use super::{bucket, feature};

const SEGMENT_HEADER_BYTES: usize = 16;
const ENTRY_HEADER_BYTES: usize = 48;

fn segment_name(segment: u32) -> String {
    format!("pack-{segment:06}.seg")
}

fn segment_header(segment: u32) -> Vec<u8> {
    let mut header = b"MLBPACK1".to_vec();
    header.extend_from_slice(&segment.to_le_bytes());
    header.extend_from_slice(&[0; 4]);
    header
}

/// Appends an intact entry for `body` to `segment_bytes` (whose length is the entry's offset).
fn append_entry(segment: u32, segment_bytes: &mut Vec<u8>, body: &[u8]) {
    let offset = segment_bytes.len() as u64;
    let mut header = b"MLBE".to_vec();
    header.extend_from_slice(&(body.len() as u32).to_le_bytes());
    header.extend_from_slice(&blob_hash(body).0);
    let mut check = sha2::Sha256::new();
    check.update(segment.to_le_bytes());
    check.update(offset.to_le_bytes());
    check.update(&header);
    header.extend_from_slice(&check.finalize()[..8]);
    segment_bytes.extend_from_slice(&header);
    segment_bytes.extend_from_slice(body);
}

/// An entry a recipe wrote.
struct Planted {
    segment: u32,
    offset: usize,
    body: Vec<u8>,
}

impl Planted {
    fn end(&self) -> usize {
        self.offset + ENTRY_HEADER_BYTES + self.body.len()
    }
}

/// Segment files to write (`None`: the segment is missing) and the entries planted in them
/// with whether damage touched each.
struct Layout {
    segments: BTreeMap<u32, Option<Vec<u8>>>,
    planted: Vec<(Planted, bool)>,
}

fn raw_layout(data: &[u8]) -> Layout {
    let count = 1 + data.first().map_or(0, |b| usize::from(*b % 3));
    let mut rest = data.get(1..).unwrap_or(&[]);
    let mut segments = BTreeMap::new();
    for segment in 1..=count as u32 {
        let len = if segment as usize == count {
            rest.len()
        } else {
            let len = rest.get(..2).map_or(0, |b| usize::from(u16::from_le_bytes([b[0], b[1]])));
            rest = rest.get(2..).unwrap_or(&[]);
            len.min(rest.len())
        };
        let (bytes, tail) = rest.split_at(len);
        segments.insert(segment, Some(bytes.to_vec()));
        rest = tail;
    }
    Layout { segments, planted: Vec::new() }
}

fn recipe_layout(u: &mut Unstructured<'_>) -> arbitrary::Result<Layout> {
    let count: u32 = u.int_in_range(1..=3)?;
    let mut segments = BTreeMap::new();
    let mut planted: Vec<(Planted, bool)> = Vec::new();
    for segment in 1..=count {
        if segment < count && u.int_in_range(0u8..=15)? == 0 {
            segments.insert(segment, None);
            continue;
        }
        let mut bytes = segment_header(segment);
        let first = planted.len();
        for index in 0..u.int_in_range(0u8..=6)? {
            if u.int_in_range(0u8..=7)? == 0 {
                let garbage: &[u8] = u.arbitrary()?;
                bytes.extend_from_slice(&garbage[..garbage.len().min(64)]);
            }
            let body = match planted.last() {
                // Now and then a copy of the previous blob (a repair appends one).
                Some((previous, _)) if u.int_in_range(0u8..=15)? == 0 => previous.body.clone(),
                _ => {
                    let tail: &[u8] = u.arbitrary()?;
                    let mut body = vec![segment as u8, index];
                    body.extend_from_slice(&tail[..tail.len().min(300)]);
                    body
                }
            };
            let offset = bytes.len();
            append_entry(segment, &mut bytes, &body);
            planted.push((Planted { segment, offset, body }, false));
        }
        // Damage, each op touching a range of the file.
        for _ in 0..u.int_in_range(0u8..=3)? {
            let len = bytes.len();
            let (start, end) = match u.int_in_range(0u8..=3)? {
                0 => {
                    let at = u.choose_index(len)?;
                    bytes[at] ^= 1 << u.int_in_range(0u8..=7)?;
                    (at, at + 1)
                }
                1 => {
                    let at = u.choose_index(len)?;
                    let end = (at + 1 + u.choose_index(64)?).min(len);
                    bytes[at..end].fill(0);
                    (at, end)
                }
                2 => {
                    let at = u.choose_index(len)?;
                    bytes.truncate(at);
                    (at, usize::MAX)
                }
                _ => {
                    let garbage: &[u8] = u.arbitrary()?;
                    bytes.extend_from_slice(&garbage[..garbage.len().min(128)]);
                    (len, len)
                }
            };
            for (entry, touched) in &mut planted[first..] {
                *touched |= entry.offset < end && start < entry.end();
            }
        }
        segments.insert(segment, Some(bytes));
    }
    Ok(Layout { segments, planted })
}

/// Where temporary stores go: tmpfs if the machine has one (opening a store syncs).
fn scratch_base() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() { shm.to_owned() } else { std::env::temp_dir() }
}

/// Every file of the store but its lock, with contents.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    for entry in fs::read_dir(dir).expect("read the store directory") {
        let entry = entry.expect("a directory entry");
        let name = entry.file_name().to_string_lossy().into_owned();
        if name != "LOCK" {
            files.insert(name, fs::read(entry.path()).expect("read a store file"));
        }
    }
    files
}

fn open(dir: &Path) -> PackBlobStore {
    // Small segments: a put after recovery may start a new one.
    match PackBlobStore::open_with(dir, PackOptions { segment_bytes_max: 64 * 1024 }) {
        Ok(store) => store,
        Err(error) => panic!("opening segment files of arbitrary content failed: {error}"),
    }
}

/// A served blob hashes to its address (`get` checks; a mismatch must be `Corrupt`, never bytes).
fn served(store: &PackBlobStore, hash: &Hash) -> Option<Vec<u8>> {
    match store.get(hash) {
        Ok(Some(body)) => {
            assert_eq!(blob_hash(&body), *hash, "served bytes that do not hash to their address");
            Some(body)
        }
        Ok(None) | Err(BlobError::Corrupt { .. }) => None,
        Err(error) => panic!("reading a blob failed: {error}"),
    }
}

pub fn pack_scan(data: &[u8]) -> u64 {
    let layout = if data.first().is_some_and(|b| b % 2 == 1) {
        let mut u = Unstructured::new(&data[1..]);
        match recipe_layout(&mut u) {
            Ok(layout) => layout,
            Err(_) => return 0,
        }
    } else {
        raw_layout(data.get(1..).unwrap_or(&[]))
    };
    let scratch = tempfile::Builder::new().prefix("medledger-fuzz-pack").tempdir_in(scratch_base()).expect("temp dir");
    let dir = scratch.path().join("store");
    fs::create_dir(&dir).expect("store dir");
    let mut lengths = HashMap::new();
    for (segment, bytes) in &layout.segments {
        if let Some(bytes) = bytes {
            let path = dir.join(segment_name(*segment));
            fs::write(&path, bytes).expect("write a segment");
            lengths.insert(path, bytes.len() as u64);
        }
    }
    let last = *layout.segments.keys().next_back().expect("at least one segment");
    let last_path = dir.join(segment_name(last));

    // First open: the scan and the recovery.
    let store = open(&dir);
    let recovery = store.recovery().clone();
    assert_eq!(recovery.segments as usize, lengths.len());
    for range in &recovery.damaged {
        let file_len = lengths.get(&range.path).copied().unwrap_or(0);
        assert!(range.offset + range.len_bytes <= file_len, "damage {range:?} beyond the file's {file_len} bytes");
        if range.kind == DamageKind::MissingSegment {
            assert!(!lengths.contains_key(&range.path), "an existing segment reported missing");
        }
    }
    let last_len = lengths[&last_path];
    assert!(recovery.truncated_bytes <= last_len, "cut more than the last segment held");
    for (path, len) in &lengths {
        let now = fs::metadata(path).expect("segment").len();
        if *path == last_path {
            let expected = last_len - recovery.truncated_bytes;
            assert!(
                now == expected || (expected == 0 && now == SEGMENT_HEADER_BYTES as u64),
                "last segment {now} bytes"
            );
        } else {
            assert_eq!(now, *len, "a sealed segment changed size");
        }
    }
    // Untouched entries are served, unless another copy of the same blob was touched.
    let mut copies: HashMap<Hash, (usize, bool)> = HashMap::new();
    for (entry, touched) in &layout.planted {
        let slot = copies.entry(blob_hash(&entry.body)).or_default();
        *slot = (slot.0 + 1, slot.1 | touched);
    }
    let mut served_len = HashMap::new();
    for (entry, touched) in &layout.planted {
        let hash = blob_hash(&entry.body);
        let body = served(&store, &hash);
        if !touched && !copies[&hash].1 {
            assert_eq!(
                body.as_deref(),
                Some(&entry.body[..]),
                "an untouched entry in segment {} is lost",
                entry.segment
            );
        }
        served_len.insert(hash, store.len_bytes(&hash).expect("len_bytes"));
    }
    drop(store);

    // Second open: nothing left to repair, the same view, no byte changed.
    let before = snapshot(&dir);
    let store = open(&dir);
    let again = store.recovery().clone();
    assert_eq!(again.truncated_bytes, 0, "a second open cut again");
    assert_eq!((again.blobs, &again.damaged), (recovery.blobs, &recovery.damaged), "a second open saw otherwise");
    assert_eq!(snapshot(&dir), before, "a second open changed the files");
    for (hash, len) in &served_len {
        assert_eq!(store.len_bytes(hash).expect("len_bytes"), *len);
    }
    // Appends continue at a clean end.
    let fresh = [b"fuzz fresh blob ".as_slice(), &medledger_crypto::sha256(data).0].concat();
    let fresh_hash = store.put(&fresh).expect("a put after recovery");
    assert_eq!(served(&store, &fresh_hash).as_deref(), Some(&fresh[..]));
    let report = verify_pack(&store, &mut |_| {}).expect("verify_pack");
    assert_eq!(report.blobs_checked, again.blobs + 1, "verify_pack counts every served blob");
    drop(store);
    let store = open(&dir);
    assert_eq!(store.recovery().truncated_bytes, 0, "a put left a torn tail");
    assert_eq!(served(&store, &fresh_hash).as_deref(), Some(&fresh[..]), "the put did not survive a reopen");
    drop(store);

    let damage: Vec<u8> = recovery.damaged.iter().map(|r| format!("{:?}", r.kind).as_bytes()[0]).take(8).collect();
    feature(&[
        b"pack",
        &[data.first().map_or(0, |b| b % 2)],
        &bucket(recovery.blobs as usize),
        &bucket(recovery.truncated_bytes as usize),
        &damage,
        &bucket(layout.planted.iter().filter(|(_, touched)| *touched).count()),
    ])
}
