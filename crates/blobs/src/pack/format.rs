//! The byte layout of a pack store (documented field by field in the parent module): segment
//! file names, the segment header, and how an entry header is encoded and checked. Also the
//! creation of a new segment file, which writes its header.
//!
//! Invariant: bytes count as an entry header only if the magic, the length bound and the
//! position-bound check all hold ([`decode_entry_header`]); anything else is damage.

use std::{
    fs::{File, OpenOptions},
    os::unix::fs::{FileExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use sha2::Digest as _;

use crate::{
    BLOB_BYTES_MAX, BlobError, Hash,
    store_dir::{io_at, sync_dir_at},
};

pub(super) const SEGMENT_MAGIC: [u8; 8] = *b"MLBPACK1";
pub(super) const SEGMENT_HEADER_BYTES: u64 = 16;
pub(super) const ENTRY_MAGIC: [u8; 4] = *b"MLBE";
pub(super) const ENTRY_HEADER_BYTES: usize = 48;
/// Offset of the header check within an entry header; the bytes before it are what it covers.
pub(super) const ENTRY_CHECK_OFFSET: usize = 40;

/// Where an entry's body is. 16 bytes, the per-blob memory cost of the index besides the hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Location {
    /// Offset of the entry (its header) in the segment.
    pub(super) offset: u64,
    pub(super) segment: u32,
    pub(super) len_bytes: u32,
}

impl Location {
    pub(super) fn body_offset(&self) -> u64 {
        self.offset + ENTRY_HEADER_BYTES as u64
    }

    pub(super) fn end(&self) -> u64 {
        self.body_offset() + u64::from(self.len_bytes)
    }
}

pub(super) fn segment_name(segment: u32) -> String {
    format!("pack-{segment:06}.seg")
}

/// Parses a segment file name; only the exact form this store writes is accepted.
pub(super) fn parse_segment_name(name: &str) -> Option<u32> {
    let digits = name.strip_prefix("pack-")?.strip_suffix(".seg")?;
    if !digits.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let segment = digits.parse().ok()?;
    (segment > 0 && segment_name(segment) == name).then_some(segment)
}

pub(super) fn segment_header(segment: u32) -> [u8; SEGMENT_HEADER_BYTES as usize] {
    let mut header = [0u8; SEGMENT_HEADER_BYTES as usize];
    header[..8].copy_from_slice(&SEGMENT_MAGIC);
    header[8..12].copy_from_slice(&segment.to_le_bytes());
    header
}

pub(super) fn header_check(segment: u32, offset: u64, covered: &[u8]) -> [u8; 8] {
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
pub(super) fn prepare_entry(hash: &Hash, bytes: &[u8]) -> Vec<u8> {
    let mut entry = Vec::with_capacity(ENTRY_HEADER_BYTES + bytes.len());
    entry.extend_from_slice(&ENTRY_MAGIC);
    // `check_size` bounds every blob far below u32::MAX.
    entry.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    entry.extend_from_slice(&hash.0);
    entry.extend_from_slice(&[0u8; 8]);
    entry.extend_from_slice(bytes);
    entry
}

/// The hash and body length named by an entry header at `offset` of segment `segment`, if
/// the header is intact: the magic matches, the length is possible and the check (which binds
/// the header to its position) holds. Whether the body fits in the file is the caller's
/// question.
pub(super) fn decode_entry_header(header: &[u8; ENTRY_HEADER_BYTES], segment: u32, offset: u64) -> Option<(Hash, u32)> {
    if header[..4] != ENTRY_MAGIC {
        return None;
    }
    let len_bytes = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
    if len_bytes as usize > BLOB_BYTES_MAX
        || header[ENTRY_CHECK_OFFSET..] != header_check(segment, offset, &header[..ENTRY_CHECK_OFFSET])
    {
        return None;
    }
    Some((Hash(header[8..40].try_into().expect("32 bytes")), len_bytes))
}

pub(super) fn segment_path(root: &Path, segment: u32) -> PathBuf {
    root.join(segment_name(segment))
}

pub(super) fn open_options() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.read(true).write(true).mode(0o600);
    options
}

/// Creates segment `segment` with its header, syncs it and the directory (so the file's entry
/// survives a crash before anything in it is reported durable), and returns a read-write
/// handle. A file already there can only be this process's own failed attempt (the segment
/// numbers past the last one found at open are ours, under the lock), so it is overwritten
/// rather than making every later roll fail.
pub(super) fn create_segment(root: &Path, segment: u32) -> Result<File, BlobError> {
    let path = segment_path(root, segment);
    let file = open_options().create(true).truncate(true).open(&path).map_err(io_at(&path))?;
    file.write_all_at(&segment_header(segment), 0).map_err(io_at(&path))?;
    file.sync_data().map_err(io_at(&path))?;
    sync_dir_at(root)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::{
        BlobStore as _,
        pack::{PackRecovery, test_support::*},
    };

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
    fn segment_names_parse_only_in_canonical_form() {
        assert_eq!(parse_segment_name("pack-000001.seg"), Some(1));
        assert_eq!(parse_segment_name("pack-1234567.seg"), Some(1_234_567));
        for name in ["pack-1.seg", "pack-000000.seg", "pack-+00001.seg", "pack-000001.seg.tmp", "PACK-000001.seg"] {
            assert_eq!(parse_segment_name(name), None, "{name}");
        }
    }
}
