//! The walk over one segment: every entry with an intact header, in file order, and every
//! range without one, re-synchronising at the next intact header after damage. Used by the
//! scan at open ([`super::recovery`]) and by [`super::verify_pack`].
//!
//! Invariant: nothing read is trusted before its header check holds, and a scan holds at most
//! one window (or one body, bounded by `BLOB_BYTES_MAX`) in memory.

use std::{fs::File, io, os::unix::fs::FileExt as _};

use super::format::{
    ENTRY_HEADER_BYTES, ENTRY_MAGIC, Location, SEGMENT_HEADER_BYTES, decode_entry_header, segment_header,
};
use crate::{Hash, blob_hash};

/// Scans read segments in windows of this size (or one body, if larger).
const SCAN_WINDOW_BYTES: usize = 1024 * 1024;
pub(super) const PROGRESS_EVERY_BYTES: u64 = 1024 * 1024 * 1024;

/// The hash and body length of the entry at `offset` if its header is intact and its body
/// fits before `end`.
fn parse_entry_header(window: &mut Window<'_>, segment: u32, offset: u64, end: u64) -> io::Result<Option<(Hash, u32)>> {
    if end.saturating_sub(offset) < ENTRY_HEADER_BYTES as u64 {
        return Ok(None);
    }
    let header: &[u8; ENTRY_HEADER_BYTES] =
        window.bytes(offset, ENTRY_HEADER_BYTES)?.try_into().expect("a window returns the length asked for");
    let Some((hash, len_bytes)) = decode_entry_header(header, segment, offset) else {
        return Ok(None);
    };
    if offset + ENTRY_HEADER_BYTES as u64 + u64::from(len_bytes) > end {
        return Ok(None);
    }
    Ok(Some((hash, len_bytes)))
}

/// A read-only window over a segment, refilled with positioned reads, so a scan reads each
/// byte from the file once and can step back after a failed re-synchronisation attempt.
struct Window<'a> {
    file: &'a File,
    end: u64,
    start: u64,
    buf: Vec<u8>,
}

impl<'a> Window<'a> {
    fn new(file: &'a File, end: u64) -> Self {
        Self { file, end, start: 0, buf: Vec::new() }
    }

    /// `len` bytes at `offset`, which the caller keeps within `end`.
    fn bytes(&mut self, offset: u64, len: usize) -> io::Result<&[u8]> {
        let buffered_end = self.start + self.buf.len() as u64;
        if offset < self.start || offset + len as u64 > buffered_end {
            let fill = (len.max(SCAN_WINDOW_BYTES) as u64).min(self.end - offset) as usize;
            self.buf.resize(fill, 0);
            self.file.read_exact_at(&mut self.buf, offset)?;
            self.start = offset;
        }
        let at = (offset - self.start) as usize;
        Ok(&self.buf[at..at + len])
    }
}

/// One thing a segment scan found, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ScanItem {
    /// An entry with an intact header; `body_ok` is whether its body hashes to `hash`, or
    /// `None` when the scan does not hash bodies.
    Entry { hash: Hash, location: Location, body_ok: Option<bool> },
    /// The segment header (`0..len_bytes`) is missing or wrong.
    BadSegmentHeader { len_bytes: u64 },
    /// Bytes with no intact entry header, up to the next intact one or the end.
    Unparseable { offset: u64, len_bytes: u64 },
}

/// Walks segment `segment` up to `end`, calling `visit` for each entry and each damaged range.
/// After a range without an intact header it re-synchronises at the next intact one (a
/// position-bound header check makes a false match practically impossible), so damage in the
/// middle of a segment hides only the entries it overlaps.
pub(super) fn scan_segment(
    file: &File,
    segment: u32,
    end: u64,
    hash_bodies: bool,
    visit: &mut dyn FnMut(ScanItem),
) -> io::Result<()> {
    let mut window = Window::new(file, end);
    if end < SEGMENT_HEADER_BYTES || window.bytes(0, SEGMENT_HEADER_BYTES as usize)? != segment_header(segment) {
        visit(ScanItem::BadSegmentHeader { len_bytes: end.min(SEGMENT_HEADER_BYTES) });
    }
    let mut offset = SEGMENT_HEADER_BYTES;
    while offset < end {
        if let Some((hash, len_bytes)) = parse_entry_header(&mut window, segment, offset, end)? {
            let location = Location { offset, segment, len_bytes };
            let body_ok = if hash_bodies {
                Some(blob_hash(window.bytes(location.body_offset(), len_bytes as usize)?) == hash)
            } else {
                None
            };
            visit(ScanItem::Entry { hash, location, body_ok });
            offset = location.end();
        } else {
            let resume = next_entry_header(&mut window, segment, offset + 1, end)?.unwrap_or(end);
            visit(ScanItem::Unparseable { offset, len_bytes: resume - offset });
            offset = resume;
        }
    }
    Ok(())
}

/// The offset of the first intact entry header at or after `from`, if any.
fn next_entry_header(window: &mut Window<'_>, segment: u32, from: u64, end: u64) -> io::Result<Option<u64>> {
    let mut at = from;
    while at + ENTRY_HEADER_BYTES as u64 <= end {
        let chunk_len = (SCAN_WINDOW_BYTES as u64).min(end - at) as usize;
        let chunk = window.bytes(at, chunk_len)?;
        match chunk.windows(ENTRY_MAGIC.len()).position(|w| w == ENTRY_MAGIC) {
            Some(i) => {
                let candidate = at + i as u64;
                if parse_entry_header(window, segment, candidate, end)?.is_some() {
                    return Ok(Some(candidate));
                }
                at = candidate + 1;
            }
            // Keep the last bytes: a magic may straddle the chunk boundary.
            None => at += (chunk_len.saturating_sub(ENTRY_MAGIC.len() - 1)).max(1) as u64,
        }
    }
    Ok(None)
}
