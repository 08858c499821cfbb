//! Helpers shared by the tests of the pack store's modules.

use std::{fs, path::Path};

use super::{
    PackBlobStore, PackOptions,
    format::{ENTRY_HEADER_BYTES, Location},
};
use crate::Hash;

pub(super) fn open(dir: &Path) -> PackBlobStore {
    PackBlobStore::open(dir).expect("open")
}

pub(super) fn open_small(dir: &Path, segment_bytes_max: u64) -> PackBlobStore {
    PackBlobStore::open_with(dir, PackOptions { segment_bytes_max }).expect("open")
}

pub(super) fn file_len(path: &Path) -> u64 {
    fs::metadata(path).unwrap().len()
}

pub(super) fn location(store: &PackBlobStore, hash: &Hash) -> Location {
    *store.index_read().get(hash).expect("indexed")
}

pub(super) fn flip_byte(path: &Path, offset: u64) {
    let mut bytes = fs::read(path).unwrap();
    bytes[offset as usize] ^= 0x01;
    fs::write(path, bytes).unwrap();
}

/// Deterministic incompressible bytes (splitmix64), like real ciphertexts.
pub(super) fn noise(seed: u64, len: usize) -> Vec<u8> {
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

pub(super) fn entry_bytes(blob: &[u8]) -> u64 {
    (ENTRY_HEADER_BYTES + blob.len()) as u64
}
