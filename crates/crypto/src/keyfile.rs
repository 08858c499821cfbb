//! Key files: a small text format, written atomically with mode 0600.
//!
//! ```text
//! # medledger secret key file: keep private, never share
//! format: medledger-key-v1
//! id: <hex identity id: the signing key's own id, or the identity it replaced keys of>
//! signing-seed: <64 hex>
//! encryption-secret: <64 hex>
//! ```

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
};

use zeroize::Zeroizing;

use medledger_types::IdentityId;

use crate::Keypair;

const FORMAT: &str = "medledger-key-v1";
/// Key files are tiny; anything larger is not one of ours.
const KEY_FILE_BYTES_MAX: u64 = 4096;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileError {
    #[error("key file {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("key file {path} already exists; refusing to overwrite a secret key")]
    Exists { path: PathBuf },
    // The message names the field, never its value.
    #[error("key file {path} is malformed: {problem}")]
    Malformed { path: PathBuf, problem: &'static str },
}

/// Writes `keys` to `path` (mode 0600, via a temporary file and rename so a crash never leaves a
/// half-written key). Refuses to overwrite an existing file.
pub fn write_key_file(path: &Path, keys: &Keypair) -> Result<(), KeyFileError> {
    let io = |source| KeyFileError::Io { path: path.to_owned(), source };
    if path.exists() {
        return Err(KeyFileError::Exists { path: path.to_owned() });
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        create_private_dirs(dir).map_err(io)?;
    }
    let text = Zeroizing::new(format!(
        "# medledger secret key file: keep private, never share\nformat: {FORMAT}\nid: {}\nsigning-seed: {}\nencryption-secret: {}\n",
        keys.id(),
        hex::encode(keys.signing_seed()),
        hex::encode(keys.encryption_secret()),
    ));
    let tmp = path.with_extension("tmp-keyfile");
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let _ = fs::remove_file(&tmp);
    let mut file = options.open(&tmp).map_err(io)?;
    file.write_all(text.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    drop(file);
    fs::rename(&tmp, path).map_err(io)?;
    Ok(())
}

/// Reads a key file written by [`write_key_file`].
pub fn read_key_file(path: &Path) -> Result<Keypair, KeyFileError> {
    let io = |source| KeyFileError::Io { path: path.to_owned(), source };
    let malformed = |problem| KeyFileError::Malformed { path: path.to_owned(), problem };
    let meta = fs::metadata(path).map_err(io)?;
    if meta.len() > KEY_FILE_BYTES_MAX {
        return Err(malformed("file is larger than a key file can be"));
    }
    let text = Zeroizing::new(fs::read_to_string(path).map_err(io)?);
    let mut format = None;
    let mut signing = None;
    let mut encryption = None;
    let mut id = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((field, value)) = line.split_once(':') else {
            return Err(malformed("a line is not 'field: value'"));
        };
        let value = value.trim();
        match field.trim() {
            "format" => format = Some(value == FORMAT),
            "signing-seed" => {
                signing = Some(parse_secret(value).ok_or_else(|| malformed("signing-seed is not 64 hex characters"))?)
            }
            "encryption-secret" => {
                encryption =
                    Some(parse_secret(value).ok_or_else(|| malformed("encryption-secret is not 64 hex characters"))?)
            }
            "id" => id = Some(IdentityId::from_hex(value).map_err(|_| malformed("id is not 64 hex characters"))?),
            _ => return Err(malformed("unknown field")),
        }
    }
    match format {
        Some(true) => {}
        Some(false) => return Err(malformed("unsupported format version")),
        None => return Err(malformed("missing 'format' line")),
    }
    let signing = signing.ok_or_else(|| malformed("missing signing-seed"))?;
    let encryption = encryption.ok_or_else(|| malformed("missing encryption-secret"))?;
    let keys = Keypair::from_secrets(&signing, &encryption);
    // The id line names the identity the keys sign for: their own id, or (after a rotation)
    // the identity whose keys they became. A wrong one only makes signatures fail on-chain.
    Ok(match id {
        Some(id) => keys.for_identity(id),
        None => keys,
    })
}

/// Replaces the key file at `path` (which must exist) with `keys` — used to record, after a
/// key rotation, which identity the new keys sign for. Atomic: a temporary file, then rename.
pub fn rewrite_key_file(path: &Path, keys: &Keypair) -> Result<(), KeyFileError> {
    let io = |source| KeyFileError::Io { path: path.to_owned(), source };
    fs::metadata(path).map_err(io)?;
    let staged = path.with_extension("rewrite-keyfile");
    let _ = fs::remove_file(&staged);
    write_key_file(&staged, keys)?;
    fs::rename(&staged, path).map_err(io)
}

/// Creates `dir` and any missing parents with mode 0700 (directories of key files must not
/// be listable by other local users; `fs::create_dir_all` would leave them 0755). Directories
/// that already exist are left as they are: a key file's parent may be any directory the user
/// chose, not ours to change. See [`make_private`] for directories that are ours.
pub fn create_private_dirs(dir: &Path) -> std::io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

/// Makes a path this program owns (a key directory, a data directory, the ledger file) private
/// to its owner: a directory is created with mode 0700 if missing; an existing directory or
/// file readable, writable or enterable by group or others is tightened to 0700 (directory)
/// or 0600 (file), so an install made before this rule is fixed when the node next starts.
/// Modes already stricter are kept. A missing file is not an error (nothing to protect yet).
pub fn make_private(path: &Path) -> std::io::Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // A symbolic link's own mode means nothing; what it points to may not be ours.
        if meta.file_type().is_symlink() {
            return Ok(());
        }
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            let private = if meta.is_dir() { 0o700 } else { 0o600 };
            fs::set_permissions(path, fs::Permissions::from_mode(private))?;
        }
    }
    #[cfg(not(unix))]
    let _ = meta;
    Ok(())
}

/// [`create_private_dirs`] then [`make_private`]: a directory of ours that exists, private.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    create_private_dirs(dir)?;
    make_private(dir)
}

fn parse_secret(value: &str) -> Option<Zeroizing<[u8; 32]>> {
    let mut out = Zeroizing::new([0u8; 32]);
    if value.len() != 64 {
        return None;
    }
    hex::decode_to_slice(value, out.as_mut()).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_mode_and_no_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/alice.key");
        let keys = Keypair::generate();
        write_key_file(&path, &keys).unwrap();
        let back = read_key_file(&path).unwrap();
        assert_eq!(back.public_key(), keys.public_key());
        assert_eq!(back.encryption_public_key(), keys.encryption_public_key());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        assert!(matches!(write_key_file(&path, &keys), Err(KeyFileError::Exists { .. })));
    }

    #[cfg(unix)]
    #[test]
    fn key_directories_are_private_and_loose_modes_are_tightened() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let dir = tempfile::tempdir().unwrap();
        // Missing directories of a new key file are created 0700; an existing parent is not ours.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        write_key_file(&dir.path().join("a/keys/alice.key"), &Keypair::generate()).unwrap();
        assert_eq!((mode(&dir.path().join("a")), mode(&dir.path().join("a/keys"))), (0o700, 0o700));
        assert_eq!(mode(dir.path()), 0o755);
        // Loose modes of our own paths are tightened; stricter ones are kept.
        let (loose, file, strict) = (dir.path().join("loose"), dir.path().join("file"), dir.path().join("strict"));
        fs::create_dir(&loose).unwrap();
        fs::set_permissions(&loose, fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(&file, b"x").unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
        fs::create_dir(&strict).unwrap();
        fs::set_permissions(&strict, fs::Permissions::from_mode(0o500)).unwrap();
        for path in [&loose, &file, &strict] {
            make_private(path).unwrap();
        }
        assert_eq!((mode(&loose), mode(&file), mode(&strict)), (0o700, 0o600, 0o500));
        make_private(&dir.path().join("absent")).unwrap();
        private_dir(&dir.path().join("new/deeper")).unwrap();
        assert_eq!(mode(&dir.path().join("new/deeper")), 0o700);
    }

    #[test]
    fn rotated_keys_keep_the_identity_they_sign_for() {
        let dir = tempfile::tempdir().unwrap();
        let (first, second) = (Keypair::generate(), Keypair::generate());
        let path = dir.path().join("new.key");
        write_key_file(&path, &second).unwrap();
        assert_eq!(read_key_file(&path).unwrap().id(), second.id(), "fresh keys sign as themselves");
        // After a rotation the file records the identity whose keys they became.
        rewrite_key_file(&path, &second.clone().for_identity(first.id())).unwrap();
        let back = read_key_file(&path).unwrap();
        assert_eq!((back.id(), back.public_key()), (first.id(), second.public_key()));
        assert_eq!(back.clone().id(), first.id(), "clones keep it");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        // Rewriting needs an existing file; a malformed id is refused.
        assert!(rewrite_key_file(&dir.path().join("absent.key"), &second).is_err());
        let text = fs::read_to_string(&path).unwrap().replace(&first.id().to_hex(), "zz");
        fs::write(dir.path().join("bad.key"), text).unwrap();
        assert!(read_key_file(&dir.path().join("bad.key")).is_err());
    }

    #[test]
    fn malformed_files_are_rejected_without_echoing_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.key");
        fs::write(&path, "format: medledger-key-v1\nsigning-seed: 1234secret\nencryption-secret: 00\n").unwrap();
        let err = read_key_file(&path).unwrap_err().to_string();
        assert!(err.contains("signing-seed is not 64 hex"), "{err}");
        assert!(!err.contains("1234secret"));
        fs::write(&path, "signing-seed: 00\n").unwrap();
        assert!(read_key_file(&path).is_err());
    }
}
