//! Fault injection for the crate's own tests: a write that stops part way with an error (what
//! a file system does when the disk fills up during it) or a sync that fails. The stores route
//! their blob writes and data syncs through a [`Faults`]; outside `cfg(test)` it is empty and
//! its methods only run the real operation, so production code pays nothing for it.
//!
//! Invariant: with nothing planned, [`Faults::write`] and [`Faults::sync`] are exactly the
//! operation they wrap; a planned fault fires once.

use std::io;
#[cfg(test)]
use std::sync::{Mutex, MutexGuard, PoisonError};

/// Faults planned for the next blob writes and syncs of one store (tests only).
#[derive(Debug, Default)]
pub(crate) struct Faults {
    #[cfg(test)]
    planned: Mutex<Planned>,
}

#[cfg(test)]
#[derive(Debug, Default)]
struct Planned {
    write: Option<WriteFault>,
    sync: Option<io::Error>,
}

#[cfg(test)]
#[derive(Debug)]
struct WriteFault {
    /// Writes that still succeed before the faulty one.
    skip_writes: usize,
    /// How much of the faulty write lands before the error.
    written_bytes: usize,
    error: io::Error,
}

impl Faults {
    /// Runs `write(bytes)`. Under test, a planned fault instead writes only a prefix of
    /// `bytes` and then fails.
    pub(crate) fn write(&self, bytes: &[u8], write: impl FnOnce(&[u8]) -> io::Result<()>) -> io::Result<()> {
        #[cfg(test)]
        if let Some(fault) = self.take_write_fault() {
            write(&bytes[..fault.written_bytes.min(bytes.len())])?;
            return Err(fault.error);
        }
        write(bytes)
    }

    /// Runs `sync()`. Under test, a planned fault fails instead, without syncing.
    pub(crate) fn sync(&self, sync: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
        #[cfg(test)]
        if let Some(error) = self.planned().sync.take() {
            return Err(error);
        }
        sync()
    }
}

#[cfg(test)]
impl Faults {
    /// The write after `skip_writes` more successful ones writes `written_bytes` of its bytes,
    /// then fails with `error`.
    pub(crate) fn fail_write(&self, skip_writes: usize, written_bytes: usize, error: io::Error) {
        self.planned().write = Some(WriteFault { skip_writes, written_bytes, error });
    }

    /// The next sync fails with `error`.
    pub(crate) fn fail_next_sync(&self, error: io::Error) {
        self.planned().sync = Some(error);
    }

    fn planned(&self) -> MutexGuard<'_, Planned> {
        // A test that panicked while planning leaves nothing half-done worth refusing.
        self.planned.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn take_write_fault(&self) -> Option<WriteFault> {
        let mut planned = self.planned();
        match &mut planned.write {
            Some(fault) if fault.skip_writes > 0 => {
                fault.skip_writes -= 1;
                None
            }
            _ => planned.write.take(),
        }
    }
}
