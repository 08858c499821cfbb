//! The file-system steps both on-disk stores share: creating the store directory durably,
//! taking its `LOCK`, keeping files private, listing a directory in a stable order, syncing a
//! directory, and naming the path in every I/O error.
//!
//! Invariant: one lock file per store directory, the same for [`crate::DiskBlobStore`] and
//! `PackBlobStore`, so a directory is never open as two stores at once.

use std::{
    ffi::OsString,
    fs::{self, DirBuilder, File, FileType, OpenOptions, TryLockError},
    io,
    path::{Path, PathBuf},
};

use crate::BlobError;

/// Name of the lock file in a store directory.
pub(crate) const LOCK_FILE: &str = "LOCK";

/// Turns an I/O error at `path` into a [`BlobError`], classified by `BlobError::io` (so a full
/// disk becomes [`BlobError::StorageFull`]); for `map_err`.
pub(crate) fn io_at(path: &Path) -> impl FnOnce(io::Error) -> BlobError + '_ {
    move |source| BlobError::io(path, source)
}

pub(crate) fn is_not_found(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::NotFound
}

pub(crate) fn create_dirs(path: &Path) -> Result<(), BlobError> {
    let mut builder = DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(path).map_err(io_at(path))
}

/// Creates the store directory `root` if it is missing and makes its own entry durable (syncs
/// its parent) before any blob in it can be reported stored.
pub(crate) fn create_root(root: &Path) -> Result<(), BlobError> {
    if !root.try_exists().map_err(io_at(root))? {
        create_dirs(root)?;
        let parent = root.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        sync_dir_at(parent)?;
    }
    Ok(())
}

/// Opens (mode 0600) and locks `root/LOCK`; [`BlobError::Locked`] if another open store, in
/// this process or another, holds it. The returned file keeps the lock until dropped.
pub(crate) fn lock_store(root: &Path) -> Result<File, BlobError> {
    let lock_path = root.join(LOCK_FILE);
    let mut options = OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let lock = options.open(&lock_path).map_err(io_at(&lock_path))?;
    match lock.try_lock() {
        Ok(()) => Ok(lock),
        Err(TryLockError::WouldBlock) => Err(BlobError::Locked { path: root.to_owned() }),
        Err(TryLockError::Error(source)) => Err(BlobError::io(lock_path, source)),
    }
}

/// Tightens an existing path of the store to `private` (0700 for a directory, 0600 for a
/// file) when group or others have any access: a store created before its files were made
/// private is fixed when it is next opened. Stricter modes are kept.
pub(crate) fn make_private(path: &Path, private: u32) -> Result<(), BlobError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = fs::symlink_metadata(path).map_err(io_at(path))?;
        if !meta.file_type().is_symlink() && meta.permissions().mode() & 0o077 != 0 {
            fs::set_permissions(path, fs::Permissions::from_mode(private)).map_err(io_at(path))?;
        }
    }
    #[cfg(not(unix))]
    let _ = (path, private);
    Ok(())
}

/// The entries of `dir` sorted by name, so walks and reports are deterministic.
pub(crate) fn sorted_entries(dir: &Path) -> Result<Vec<(OsString, FileType, PathBuf)>, BlobError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_at(dir))? {
        let entry = entry.map_err(io_at(dir))?;
        let path = entry.path();
        // `DirEntry::file_type` does not follow symlinks: a link is never taken for a directory.
        let kind = entry.file_type().map_err(io_at(&path))?;
        out.push((entry.file_name(), kind, path));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Fsyncs directory `dir`, so entries created, renamed or removed in it are durable. Returns
/// whether a sync happened: std offers no directory handle to sync outside unix, and the node
/// runs on Linux.
pub(crate) fn sync_dir_at(dir: &Path) -> Result<bool, BlobError> {
    #[cfg(unix)]
    {
        File::open(dir).and_then(|d| d.sync_all()).map_err(io_at(dir))?;
        Ok(true)
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(false)
    }
}
