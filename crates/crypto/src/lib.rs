//! Ed25519 (ZIP-215) signatures, X25519 encryption keys, SHA-256 and key files.
//!
//! Architecture invariant: signature verification is `ed25519-zebra`, which implements the
//! ZIP-215 validation rules, so a batch verification and one-by-one verification of the same
//! signatures always agree; consensus depends on that. Secret material never appears in
//! `Debug` output or error messages.

use std::fmt;

pub use medledger_types::{Hash, IdentityId};
use rand::Rng as _;
use sha2::Digest;
use zeroize::Zeroizing;

pub mod envelope;
mod keyfile;
pub use keyfile::{
    KeyFileError, create_private_dirs, make_private, private_dir, read_key_file, rewrite_key_file, write_key_file,
};

/// Errors from signature verification and key handling.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    #[error("public key is not a valid Ed25519 point encoding")]
    InvalidPublicKey,
    #[error("signature does not verify")]
    BadSignature,
    #[error("signature {index} of the batch does not verify")]
    BadSignatureInBatch { index: usize },
    #[error("ciphertext does not decrypt under this key (wrong key, wrong context or tampered)")]
    Decrypt,
    #[error("encryption public key is invalid")]
    InvalidEncryptionKey,
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> Hash {
    Hash(sha2::Sha256::digest(data).into())
}

/// SHA-256 over several parts, as if concatenated.
pub fn sha256_parts(parts: &[&[u8]]) -> Hash {
    let mut h = sha2::Sha256::new();
    for part in parts {
        h.update(part);
    }
    Hash(h.finalize().into())
}

/// Domain tag hashed before a public key to form an identity id.
pub const IDENTITY_ID_DOMAIN: &[u8] = b"medledger/identity-id/v1";

/// The id of the identity whose first signing key is `key`.
pub fn identity_id(key: &PublicKey) -> IdentityId {
    IdentityId(sha256_parts(&[IDENTITY_ID_DOMAIN, &key.0]).0)
}

/// An Ed25519 public key, as its 32-byte encoding. Validity of the point is checked when it
/// verifies something, following ZIP-215.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(pub [u8; 32]);

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", hex::encode(&self.0[..4]))
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// An Ed25519 signature.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature(pub [u8; 64]);

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({})", hex::encode(&self.0[..4]))
    }
}

/// An X25519 public key (the identity's encryption key, recipient of HPKE key wraps).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EncryptionPublicKey(pub [u8; 32]);

impl fmt::Debug for EncryptionPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EncryptionPublicKey({})", hex::encode(&self.0[..4]))
    }
}

impl PublicKey {
    pub fn verify(&self, msg: &[u8], sig: &Signature) -> Result<(), CryptoError> {
        let vk = ed25519_zebra::VerificationKey::try_from(self.0).map_err(|_| CryptoError::InvalidPublicKey)?;
        vk.verify(&ed25519_zebra::Signature::from(sig.0), msg).map_err(|_| CryptoError::BadSignature)
    }
}

/// Verifies many signatures at once. When the batch fails, falls back to single verification
/// to name the first failing index; ZIP-215 guarantees both paths give the same verdict.
pub fn verify_batch(items: &[(PublicKey, &[u8], Signature)]) -> Result<(), CryptoError> {
    if items.len() < 2 {
        return items.iter().enumerate().try_for_each(|(index, (key, msg, sig))| {
            key.verify(msg, sig).map_err(|_| CryptoError::BadSignatureInBatch { index })
        });
    }
    let mut batch = ed25519_zebra::batch::Verifier::new();
    for (key, msg, sig) in items {
        batch.queue((ed25519_zebra::VerificationKeyBytes::from(key.0), ed25519_zebra::Signature::from(sig.0), msg));
    }
    // The random coefficients only blind the batch equation; the verdict does not depend on them.
    if batch.verify(rand::rng()).is_ok() {
        return Ok(());
    }
    for (index, (key, msg, sig)) in items.iter().enumerate() {
        if key.verify(msg, sig).is_err() {
            return Err(CryptoError::BadSignatureInBatch { index });
        }
    }
    // Unreachable under ZIP-215 (batch and single agree); fail closed rather than accept.
    Err(CryptoError::BadSignature)
}

/// The secret keys of one identity: an Ed25519 signing key and an X25519 encryption key.
pub struct Keypair {
    signing: ed25519_zebra::SigningKey,
    encryption: x25519_dalek::StaticSecret,
    /// The identity these keys sign for, when they replaced its first keys (key rotation keeps
    /// the id); `None`: the id derived from the signing key.
    identity: Option<IdentityId>,
}

impl fmt::Debug for Keypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print secrets; the id is enough to tell keys apart.
        write!(f, "Keypair(id {:?})", self.id())
    }
}

impl Clone for Keypair {
    fn clone(&self) -> Self {
        let mut keys = Self::from_secrets(&self.signing_seed(), &self.encryption_secret());
        keys.identity = self.identity;
        keys
    }
}

impl Keypair {
    /// Fresh keys from the operating system's random source.
    pub fn generate() -> Self {
        let mut seed = Zeroizing::new([0u8; 64]);
        rand::rng().fill_bytes(seed.as_mut());
        let mut signing = [0u8; 32];
        let mut encryption = [0u8; 32];
        signing.copy_from_slice(&seed[..32]);
        encryption.copy_from_slice(&seed[32..]);
        let keys = Self::from_secrets(&signing, &encryption);
        zeroize::Zeroize::zeroize(&mut signing);
        zeroize::Zeroize::zeroize(&mut encryption);
        keys
    }

    /// Deterministic keys derived from a label, for tests and demo data only.
    pub fn from_label(label: &str) -> Self {
        let signing = sha256_parts(&[b"medledger/test-key/signing/", label.as_bytes()]);
        let encryption = sha256_parts(&[b"medledger/test-key/encryption/", label.as_bytes()]);
        Self::from_secrets(&signing.0, &encryption.0)
    }

    pub fn from_secrets(signing_seed: &[u8; 32], encryption_secret: &[u8; 32]) -> Self {
        Self {
            signing: ed25519_zebra::SigningKey::from(*signing_seed),
            encryption: x25519_dalek::StaticSecret::from(*encryption_secret),
            identity: None,
        }
    }

    pub fn signing_seed(&self) -> [u8; 32] {
        self.signing.into()
    }

    pub fn encryption_secret(&self) -> [u8; 32] {
        self.encryption.to_bytes()
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey(ed25519_zebra::VerificationKey::from(&self.signing).into())
    }

    pub fn encryption_public_key(&self) -> EncryptionPublicKey {
        EncryptionPublicKey(x25519_dalek::PublicKey::from(&self.encryption).to_bytes())
    }

    /// The identity these keys sign for: the one they were assigned to after a key rotation
    /// ([`Keypair::for_identity`]), else the id derived from the signing key (an identity's id
    /// is that of its first keys).
    pub fn id(&self) -> IdentityId {
        self.identity.unwrap_or_else(|| identity_id(&self.public_key()))
    }

    /// These keys as the new keys of `identity` (after a key rotation).
    pub fn for_identity(mut self, identity: IdentityId) -> Self {
        self.identity = (identity != identity_id(&self.public_key())).then_some(identity);
        self
    }

    pub fn sign(&self, msg: &[u8]) -> Signature {
        Signature(self.signing.sign(msg).to_bytes())
    }

    /// X25519 shared secret with `their` public key (for HPKE, later).
    pub fn diffie_hellman(&self, their: &EncryptionPublicKey) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.encryption.diffie_hellman(&x25519_dalek::PublicKey::from(their.0)).to_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_known_answer() {
        assert_eq!(sha256(b"abc").to_hex(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(sha256_parts(&[b"a", b"bc"]), sha256(b"abc"));
    }

    #[test]
    fn sign_verify_and_tamper() {
        let keys = Keypair::from_label("alice");
        let sig = keys.sign(b"hello");
        keys.public_key().verify(b"hello", &sig).unwrap();
        assert_eq!(keys.public_key().verify(b"hellp", &sig), Err(CryptoError::BadSignature));
        let mut bad = sig;
        bad.0[0] ^= 1;
        assert!(keys.public_key().verify(b"hello", &bad).is_err());
    }

    #[test]
    fn rfc8032_test_vector_1() {
        // RFC 8032 section 7.1, TEST 1 (empty message).
        let seed: [u8; 32] = hex::decode("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
            .unwrap()
            .try_into()
            .unwrap();
        let keys = Keypair::from_secrets(&seed, &[1; 32]);
        assert_eq!(keys.public_key().to_string(), "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a");
        assert_eq!(
            hex::encode(keys.sign(b"").0),
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
        );
    }

    #[test]
    fn batch_agrees_with_single_and_names_the_bad_index() {
        let keys: Vec<Keypair> = (0..8).map(|i| Keypair::from_label(&format!("k{i}"))).collect();
        let msgs: Vec<Vec<u8>> = (0..8).map(|i| vec![i as u8; 10]).collect();
        let mut items: Vec<(PublicKey, &[u8], Signature)> =
            keys.iter().zip(&msgs).map(|(k, m)| (k.public_key(), m.as_slice(), k.sign(m))).collect();
        verify_batch(&items).unwrap();
        items[5].2.0[10] ^= 0x40;
        assert_eq!(verify_batch(&items), Err(CryptoError::BadSignatureInBatch { index: 5 }));
        assert_eq!(verify_batch(&items[5..6]), Err(CryptoError::BadSignatureInBatch { index: 0 }));
        verify_batch(&[]).unwrap();
    }

    #[test]
    fn zip215_accepts_small_order_key_consistently() {
        // ZIP-215 accepts non-canonical/small-order encodings where the equation holds. The
        // identity point (0x01 || zeros) with signature R = identity, s = 0 satisfies the
        // cofactored equation for every message; batch and single must agree on it.
        let mut key = [0u8; 32];
        key[0] = 1;
        let mut sig = [0u8; 64];
        sig[0] = 1;
        let pk = PublicKey(key);
        let single = pk.verify(b"any", &Signature(sig)).is_ok();
        let items = [(pk, &b"any"[..], Signature(sig)), (pk, &b"other"[..], Signature(sig))];
        let batch = verify_batch(&items).is_ok();
        assert_eq!(single, batch);
        assert!(single, "ZIP-215 accepts the identity-point signature");
    }

    #[test]
    fn ids_derive_from_keys_and_debug_hides_secrets() {
        let keys = Keypair::from_label("bob");
        assert_eq!(keys.id(), identity_id(&keys.public_key()));
        assert_ne!(keys.id(), Keypair::from_label("carol").id());
        let debug = format!("{keys:?}");
        assert!(!debug.contains(&hex::encode(keys.signing_seed())));
        assert!(!debug.contains(&hex::encode(&keys.signing_seed()[..4])));
    }

    #[test]
    fn x25519_agreement_is_symmetric() {
        let a = Keypair::from_label("a");
        let b = Keypair::from_label("b");
        assert_eq!(*a.diffie_hellman(&b.encryption_public_key()), *b.diffie_hellman(&a.encryption_public_key()));
    }
}
