//! Helpers shared by the tests of the disk store's modules.

use std::{
    fs,
    path::{Path, PathBuf},
};

use super::DiskBlobStore;
use crate::store_dir::LOCK_FILE;

pub(super) fn open(dir: &Path) -> DiskBlobStore {
    DiskBlobStore::open(dir).expect("open")
}

/// Every file under `dir` except the lock file, relative to `dir`.
pub(super) fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path != dir.join(LOCK_FILE) {
                out.push(path.strip_prefix(dir).unwrap().to_owned());
            }
        }
    }
    out.sort();
    out
}

pub(super) fn flip_byte(path: &Path, index: usize) {
    let mut bytes = fs::read(path).unwrap();
    bytes[index] ^= 0x01;
    fs::write(path, bytes).unwrap();
}
