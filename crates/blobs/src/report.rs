//! What an offline check of a store found: [`BlobReport`], and for pack stores the damaged
//! byte ranges ([`DamagedRange`], [`DamageKind`]). Shared by [`crate::verify_all`] and
//! `verify_pack`, so the CLI prints one report whatever the backend.
//!
//! Invariant: a report names paths, offsets and hashes, never blob contents.

use std::path::PathBuf;

use crate::Hash;

/// What [`crate::verify_all`] or `verify_pack` found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlobReport {
    /// Blobs read and re-hashed, corrupt ones included.
    pub blobs_checked: u64,
    /// Total size of the blobs that verified.
    pub valid_bytes: u64,
    /// Blobs whose stored bytes do not hash to their name (or that are not regular files, or
    /// are larger than any blob can be), in path order.
    pub corrupt: Vec<Hash>,
    /// Entries that are not part of the layout: foreign files, names that are not lowercase
    /// hex, blobs in the wrong shard directory.
    pub unexpected: Vec<PathBuf>,
    /// Pack stores only (always empty for a one-file-per-blob store, whose damage is per file
    /// and listed in `corrupt`): where the damage is, by segment and offset, in file order.
    pub damaged: Vec<DamagedRange>,
    /// Pack stores only: older copies of blobs that a later copy replaced (a `put` appends a
    /// fresh copy when the stored one is corrupt). Dead space, not damage: never re-hashed.
    pub superseded_entries: u64,
}

impl BlobReport {
    /// No corrupt blobs, no damaged ranges and nothing foreign in the store.
    pub fn is_clean(&self) -> bool {
        self.corrupt.is_empty() && self.unexpected.is_empty() && self.damaged.is_empty()
    }
}

/// A byte range of a pack segment that holds nothing servable, as found by a scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DamagedRange {
    pub path: PathBuf,
    pub offset: u64,
    pub len_bytes: u64,
    pub kind: DamageKind,
}

/// What is wrong with a [`DamagedRange`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DamageKind {
    /// The segment header is missing or wrong (the range is the header).
    SegmentHeader,
    /// No intact entry header: a torn or overwritten write, or a rotted header. The scan
    /// resumed at the next intact header (or the end), so the range may hide whole entries,
    /// whose hashes are unknown.
    Unparseable,
    /// An intact entry header whose body does not hash to the address it names (the range is
    /// the whole entry).
    BodyMismatch { hash: Hash },
    /// A segment file is absent although segments numbered on both sides of it exist (the
    /// range is empty; the path is where the segment should be).
    MissingSegment,
}
