//! [`PackBlobStore`]: blobs appended to a few large segment files ("packs") and made durable
//! by group commit; [`verify_pack`] for an offline check.
//!
//! Why not one file per blob ([`crate::DiskBlobStore`]): there every blob costs a new inode, a
//! file fsync, a rename and a directory fsync, and writers cannot share any of it. Here a blob
//! is one positioned write at the end of the active segment, and one `fdatasync` of that
//! segment makes every write that preceded it durable, however many writers are waiting.
//!
//! Layout of a store directory `DIR`:
//!
//! ```text
//! DIR/LOCK               held locked (OS advisory lock) while a store is open; the same file
//!                        as a DiskBlobStore's, so one directory is never open as both
//! DIR/pack-000001.seg    segments, numbered from 1 without gaps; only the highest-numbered
//! DIR/pack-000002.seg    (the active segment) is ever written, the others are sealed
//! ```
//!
//! Byte layout of a segment (integers little-endian):
//!
//! ```text
//! segment header, 16 bytes:
//!   0   8   magic "MLBPACK1" (the 1 is the format version)
//!   8   4   segment number (u32), the same as in the file name
//!   12  4   zero (reserved)
//! then entries, back to back, each:
//!   0   4   magic "MLBE"
//!   4   4   body length (u32, at most BLOB_BYTES_MAX)
//!   8   32  SHA-256 of the body: the blob's address
//!   40  8   header check: the first 8 bytes of
//!           SHA-256(segment number u32 || entry offset in the segment u64 || bytes 0..40)
//!   48  len body: the blob
//! ```
//!
//! The header check lets a scan tell a torn or rotted header from a good one without trusting
//! its length, and binding it to the entry's position means an entry copied elsewhere, or one
//! embedded in another blob's body, is not taken for a real one when a scan re-synchronises
//! after damage. Overhead is 48 bytes per blob (4% of a 1.2 KB record version).
//!
//! Crash safety. An append is a single positioned write at the end of the active segment; a
//! `put` returns only after an `fdatasync` of the segment that *started* after its write
//! (group commit, [`group_commit::GroupCommit`]). A new segment is created with its header synced and the
//! directory fsynced before anything is appended to it, and the previous segment is synced
//! before the new one is created, so sealed segments are complete and a crash can only leave
//! a torn tail in the last segment. Open scans every segment, rebuilds the index and cuts the
//! last segment after its last intact entry (a write that was never reported durable), then
//! syncs it, so appends continue at a clean end.
//!
//! Open cost: sealed segments are walked header by header (their bodies are not hashed: a
//! sealed segment was synced whole, `get` re-hashes every read and [`verify_pack`] re-hashes
//! everything); the last segment is hashed too, since that is where a crash leaves torn
//! bodies. Either way the scan reads (nearly) every byte once; progress is logged every GiB.
//!
//! Memory: the index maps each blob's hash to its place, 48 bytes per entry (32 hash + 16
//! location), plus the hash table's control byte per slot and its slack (at most 7/8 full,
//! doubling when it gets there): between about 56 and 112 bytes per blob, so 10 million blobs
//! take 0.56–1.1 GB. The table uses std's randomly keyed SipHash: the keys are hashes of
//! contents that others choose, so a fixed cheap hash could be flooded.
//!
//! Modules, by concern: [`format`](mod@format) the byte layout (segment names and headers, entry encoding
//! and decoding); [`scan`] the walk over a segment that finds entries and damaged ranges;
//! [`recovery`] the scan at open that rebuilds the index and cuts a torn tail; [`group_commit`]
//! the rule that lets one `fdatasync` serve every waiting writer; [`store`] the
//! [`PackBlobStore`] itself (appends, rolls, reads); [`verify`] the offline check.

mod format;
mod group_commit;
mod recovery;
mod scan;
mod store;
#[cfg(test)]
mod test_support;
mod verify;

pub use recovery::PackRecovery;
pub use store::{PackBlobStore, PackOptions, SEGMENT_BYTES_DEFAULT};
pub use verify::verify_pack;
