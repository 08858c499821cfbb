//! C2SP signed notes (`signed-note@v1.0.0`) carrying tlog checkpoints (`tlog-checkpoint`),
//! with Ed25519 signatures (signature type 0x01).

use base64::{Engine, engine::general_purpose::STANDARD as B64};
use medledger_crypto::{Keypair, PublicKey, Signature, sha256_parts};

use crate::Hash;

/// Ed25519 signature type identifier in signed notes.
const SIG_TYPE_ED25519: u8 = 0x01;
/// A note larger than this is refused unparsed.
pub const NOTE_BYTES_MAX: usize = 16 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NoteError {
    #[error("note is malformed: {0}")]
    Malformed(&'static str),
    #[error("verifier key is malformed: {0}")]
    BadVerifierKey(&'static str),
    #[error("no signature by the given key")]
    NoMatchingSignature,
    #[error("signature by the given key does not verify")]
    BadSignature,
}

/// A log checkpoint: the three mandatory lines of a tlog checkpoint note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
}

impl Checkpoint {
    /// The note text: origin, size and base64 root, each followed by a newline.
    pub fn body(&self) -> String {
        format!("{}\n{}\n{}\n", self.origin, self.size, B64.encode(self.root.0))
    }

    /// Parses a note body (ignoring extension lines).
    pub fn parse(body: &str) -> Result<Self, NoteError> {
        let mut lines = body.split('\n');
        let origin = lines.next().filter(|l| !l.is_empty()).ok_or(NoteError::Malformed("missing origin"))?;
        let size_line = lines.next().ok_or(NoteError::Malformed("missing tree size"))?;
        if size_line.is_empty()
            || (size_line.len() > 1 && size_line.starts_with('0'))
            || !size_line.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(NoteError::Malformed("tree size is not a canonical decimal"));
        }
        let size = size_line.parse().map_err(|_| NoteError::Malformed("tree size out of range"))?;
        let root_line = lines.next().ok_or(NoteError::Malformed("missing root hash"))?;
        let root = B64
            .decode(root_line)
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or(NoteError::Malformed("root hash is not base64 of 32 bytes"))?;
        Ok(Self { origin: origin.to_owned(), size, root: Hash(root) })
    }
}

/// The 4-byte key id of an Ed25519 note key: SHA-256(name || 0x0A || 0x01 || key)[:4].
pub fn key_id(name: &str, key: &PublicKey) -> [u8; 4] {
    let h = sha256_parts(&[name.as_bytes(), b"\n", &[SIG_TYPE_ED25519], &key.0]);
    [h.0[0], h.0[1], h.0[2], h.0[3]]
}

/// The verifier key string `name+hex(key id)+base64(0x01 || key)`.
pub fn verifier_key(name: &str, key: &PublicKey) -> String {
    let mut typed = vec![SIG_TYPE_ED25519];
    typed.extend_from_slice(&key.0);
    format!("{name}+{}+{}", hex::encode(key_id(name, key)), B64.encode(typed))
}

/// Parses a verifier key string into its name and Ed25519 key, checking the key id.
pub fn parse_verifier_key(vkey: &str) -> Result<(String, PublicKey), NoteError> {
    // Names never contain '+', but base64 keys may: split from the left.
    let mut parts = vkey.trim().splitn(3, '+');
    let (Some(name), Some(id_hex), Some(key_b64)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(NoteError::BadVerifierKey("expected name+id+key"));
    };
    let typed = B64.decode(key_b64).map_err(|_| NoteError::BadVerifierKey("key is not base64"))?;
    if typed.len() != 33 || typed[0] != SIG_TYPE_ED25519 {
        return Err(NoteError::BadVerifierKey("not an Ed25519 key"));
    }
    let key = PublicKey(typed[1..].try_into().expect("length checked"));
    if hex::encode(key_id(name, &key)) != id_hex {
        return Err(NoteError::BadVerifierKey("key id does not match name and key"));
    }
    Ok((name.to_owned(), key))
}

/// Signs `body` (which must end with a newline) as a note by `name`.
pub fn sign_note(body: &str, name: &str, keys: &Keypair) -> String {
    debug_assert!(body.ends_with('\n'));
    let sig = keys.sign(body.as_bytes());
    let mut blob = key_id(name, &keys.public_key()).to_vec();
    blob.extend_from_slice(&sig.0);
    format!("{body}\n\u{2014} {name} {}\n", B64.encode(blob))
}

/// Verifies a signed note against one verifier key and returns its body text.
/// Signatures by other keys are ignored, as the spec requires.
pub fn verify_note<'a>(note: &'a str, name: &str, key: &PublicKey) -> Result<&'a str, NoteError> {
    if note.len() > NOTE_BYTES_MAX {
        return Err(NoteError::Malformed("note too large"));
    }
    let split = note.rfind("\n\n").ok_or(NoteError::Malformed("no blank line before signatures"))?;
    let body = &note[..split + 1];
    let sigs = &note[split + 2..];
    if !sigs.ends_with('\n') {
        return Err(NoteError::Malformed("signature block does not end with a newline"));
    }
    let want_id = key_id(name, key);
    for line in sigs.lines() {
        let rest =
            line.strip_prefix("\u{2014} ").ok_or(NoteError::Malformed("signature line must start with an em dash"))?;
        let (line_name, b64) = rest.rsplit_once(' ').ok_or(NoteError::Malformed("signature line lacks a signature"))?;
        if line_name != name {
            continue;
        }
        let blob = B64.decode(b64).map_err(|_| NoteError::Malformed("signature is not base64"))?;
        if blob.len() < 4 || blob[..4] != want_id {
            continue;
        }
        let sig: [u8; 64] = blob[4..].try_into().map_err(|_| NoteError::BadSignature)?;
        return key.verify(body.as_bytes(), &Signature(sig)).map(|()| body).map_err(|_| NoteError::BadSignature);
    }
    Err(NoteError::NoMatchingSignature)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_and_verify_round_trip_and_tamper() {
        let keys = Keypair::from_label("log");
        let cp = Checkpoint { origin: "medledger.test/log".into(), size: 42, root: Hash([7; 32]) };
        let note = sign_note(&cp.body(), &cp.origin, &keys);
        let body = verify_note(&note, &cp.origin, &keys.public_key()).unwrap();
        assert_eq!(Checkpoint::parse(body).unwrap(), cp);
        let tampered = note.replace("\n42\n", "\n43\n");
        assert_eq!(verify_note(&tampered, &cp.origin, &keys.public_key()), Err(NoteError::BadSignature));
        let other = Keypair::from_label("other");
        assert_eq!(verify_note(&note, &cp.origin, &other.public_key()), Err(NoteError::NoMatchingSignature));
        let (name, key) = parse_verifier_key(&verifier_key(&cp.origin, &keys.public_key())).unwrap();
        assert_eq!((name.as_str(), key), (cp.origin.as_str(), keys.public_key()));
    }

    #[test]
    fn checkpoint_parse_rejects_noncanonical_sizes() {
        assert!(Checkpoint::parse("o\n012\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n").is_err());
        assert!(Checkpoint::parse("o\n-1\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n").is_err());
        assert!(Checkpoint::parse("o\n1\nAAAA\n").is_err());
        assert!(Checkpoint::parse("\n1\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n").is_err());
    }
}
