//! Record encryption and the key hierarchy (see `docs/keys.md`).
//!
//! - A **data key** (random, per record version) encrypts the record's bytes with
//!   XChaCha20-Poly1305; the associated data binds the ciphertext to its record, version and
//!   patient.
//! - A **category key** (random, per custodian × patient × category × epoch) wraps data keys
//!   with XChaCha20-Poly1305, so one category key opens every version in its category.
//! - Category keys reach each entitled identity through HPKE (RFC 9180, base mode,
//!   DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305) to its X25519 key.
//!
//! Granting a category to someone therefore costs one HPKE operation per category key, not
//! one per record. Randomness is always an argument, so callers in the deterministic core can
//! inject it.

use chacha20poly1305::{
    XChaCha20Poly1305, XNonce,
    aead::{Aead, KeyInit, Payload},
};
use hpke::{
    Deserializable, OpModeR, OpModeS, Serializable, aead::ChaCha20Poly1305, kdf::HkdfSha256, kem::X25519HkdfSha256,
};
use rand::CryptoRng;
use zeroize::Zeroizing;

use crate::{CryptoError, EncryptionPublicKey, Keypair};

pub const KEY_BYTES: usize = 32;
const NONCE_BYTES: usize = 24;
const TAG_BYTES: usize = 16;
/// Bytes added to a plaintext by [`seal`]: the nonce and the tag.
pub const SEAL_OVERHEAD_BYTES: usize = NONCE_BYTES + TAG_BYTES;
/// A data key wrapped under a category key: nonce, encrypted key, tag.
pub const WRAPPED_DATA_KEY_BYTES: usize = KEY_BYTES + SEAL_OVERHEAD_BYTES;
/// An HPKE-wrapped key: the encrypted key and its tag (the encapsulated key travels apart).
pub const HPKE_WRAPPED_KEY_BYTES: usize = KEY_BYTES + TAG_BYTES;

macro_rules! secret_key {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone, PartialEq, Eq)]
        pub struct $name(Zeroizing<[u8; KEY_BYTES]>);

        impl $name {
            pub fn generate(rng: &mut impl CryptoRng) -> Self {
                let mut key = Zeroizing::new([0u8; KEY_BYTES]);
                rng.fill_bytes(key.as_mut());
                Self(key)
            }

            pub fn from_bytes(bytes: [u8; KEY_BYTES]) -> Self {
                Self(Zeroizing::new(bytes))
            }

            pub fn expose(&self) -> &[u8; KEY_BYTES] {
                &self.0
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(concat!(stringify!($name), "(<secret>)"))
            }
        }
    };
}

secret_key!(
    /// Encrypts one record version.
    DataKey
);
secret_key!(
    /// Wraps the data keys of one custodian's records of one patient in one category and epoch.
    CategoryKey
);

/// XChaCha20-Poly1305 with a random nonce: `nonce || ciphertext || tag`.
pub fn seal(key: &[u8; KEY_BYTES], aad: &[u8], plaintext: &[u8], rng: &mut impl CryptoRng) -> Vec<u8> {
    let cipher = XChaCha20Poly1305::new(key.into());
    let mut nonce = [0u8; NONCE_BYTES];
    rng.fill_bytes(&mut nonce);
    let sealed = cipher
        .encrypt(&XNonce::from(nonce), Payload { msg: plaintext, aad })
        .expect("XChaCha20-Poly1305 encryption cannot fail for in-memory buffers");
    let mut out = Vec::with_capacity(NONCE_BYTES + sealed.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    out
}

/// Opens what [`seal`] produced; fails on a wrong key, wrong associated data or any tampering.
pub fn open(key: &[u8; KEY_BYTES], aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
    if sealed.len() < SEAL_OVERHEAD_BYTES {
        return Err(CryptoError::Decrypt);
    }
    let (nonce, body) = sealed.split_at(NONCE_BYTES);
    let nonce: [u8; NONCE_BYTES] = nonce.try_into().expect("split at the nonce length");
    XChaCha20Poly1305::new(key.into())
        .decrypt(&XNonce::from(nonce), Payload { msg: body, aad })
        .map_err(|_| CryptoError::Decrypt)
}

/// Encrypts a record version under its data key.
pub fn seal_record(key: &DataKey, aad: &[u8], plaintext: &[u8], rng: &mut impl CryptoRng) -> Vec<u8> {
    seal(key.expose(), aad, plaintext, rng)
}

pub fn open_record(key: &DataKey, aad: &[u8], ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    open(key.expose(), aad, ciphertext).map(Zeroizing::new)
}

/// Wraps a data key under a category key.
pub fn wrap_data_key(
    category_key: &CategoryKey,
    aad: &[u8],
    data_key: &DataKey,
    rng: &mut impl CryptoRng,
) -> [u8; WRAPPED_DATA_KEY_BYTES] {
    seal(category_key.expose(), aad, data_key.expose(), rng).try_into().expect("fixed-size key")
}

pub fn unwrap_data_key(category_key: &CategoryKey, aad: &[u8], wrapped: &[u8]) -> Result<DataKey, CryptoError> {
    let key = Zeroizing::new(open(category_key.expose(), aad, wrapped)?);
    let bytes: [u8; KEY_BYTES] = key.as_slice().try_into().map_err(|_| CryptoError::Decrypt)?;
    Ok(DataKey::from_bytes(bytes))
}

/// A key wrapped to one recipient with HPKE.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HpkeWrap {
    /// The sender's ephemeral X25519 public key.
    pub encapsulated_key: [u8; 32],
    pub ciphertext: [u8; HPKE_WRAPPED_KEY_BYTES],
}

type Kem = X25519HkdfSha256;

/// Wraps `key` to `recipient`. `info` names the context (which key this is); `aad` binds it
/// further (for whom, under which grant); both must be repeated to unwrap.
pub fn hpke_wrap(
    recipient: &EncryptionPublicKey,
    info: &[u8],
    aad: &[u8],
    key: &CategoryKey,
    rng: &mut impl CryptoRng,
) -> Result<HpkeWrap, CryptoError> {
    let pk = <Kem as hpke::Kem>::PublicKey::from_bytes(&recipient.0).map_err(|_| CryptoError::InvalidEncryptionKey)?;
    let (encapped, ciphertext) = hpke::single_shot_seal_with_rng::<ChaCha20Poly1305, HkdfSha256, Kem>(
        &OpModeS::Base,
        &pk,
        info,
        key.expose(),
        aad,
        rng,
    )
    .map_err(|_| CryptoError::InvalidEncryptionKey)?;
    Ok(HpkeWrap {
        encapsulated_key: encapped.to_bytes().as_slice().try_into().expect("X25519 encapsulated keys are 32 bytes"),
        ciphertext: ciphertext.as_slice().try_into().expect("a wrapped 32-byte key is 48 bytes"),
    })
}

/// Unwraps a key wrapped to `recipient` by [`hpke_wrap`].
pub fn hpke_unwrap(recipient: &Keypair, info: &[u8], aad: &[u8], wrap: &HpkeWrap) -> Result<CategoryKey, CryptoError> {
    let secret = Zeroizing::new(recipient.encryption_secret());
    let sk = <Kem as hpke::Kem>::PrivateKey::from_bytes(secret.as_slice()).map_err(|_| CryptoError::Decrypt)?;
    let encapped =
        <Kem as hpke::Kem>::EncappedKey::from_bytes(&wrap.encapsulated_key).map_err(|_| CryptoError::Decrypt)?;
    let key = Zeroizing::new(
        hpke::single_shot_open::<ChaCha20Poly1305, HkdfSha256, Kem>(
            &OpModeR::Base,
            &sk,
            &encapped,
            info,
            &wrap.ciphertext,
            aad,
        )
        .map_err(|_| CryptoError::Decrypt)?,
    );
    let bytes: [u8; KEY_BYTES] = key.as_slice().try_into().map_err(|_| CryptoError::Decrypt)?;
    Ok(CategoryKey::from_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rng() -> impl CryptoRng {
        rand::rng()
    }

    #[test]
    fn record_round_trip_and_binding() {
        let key = DataKey::generate(&mut rng());
        let sealed = seal_record(&key, b"record-1/v1", br#"{"resourceType":"Observation"}"#, &mut rng());
        assert_eq!(sealed.len(), 30 + SEAL_OVERHEAD_BYTES);
        assert_eq!(&open_record(&key, b"record-1/v1", &sealed).unwrap()[..], br#"{"resourceType":"Observation"}"#);
        // Another record's associated data, another key, a flipped bit, a truncation: all fail.
        assert_eq!(open_record(&key, b"record-1/v2", &sealed).unwrap_err(), CryptoError::Decrypt);
        assert!(open_record(&DataKey::generate(&mut rng()), b"record-1/v1", &sealed).is_err());
        let mut tampered = sealed.clone();
        tampered[30] ^= 1;
        assert!(open_record(&key, b"record-1/v1", &tampered).is_err());
        assert!(open_record(&key, b"record-1/v1", &sealed[..10]).is_err());
        // Random nonces: the same plaintext never encrypts the same way twice.
        assert_ne!(sealed, seal_record(&key, b"record-1/v1", br#"{"resourceType":"Observation"}"#, &mut rng()));
    }

    #[test]
    fn data_keys_wrap_under_category_keys() {
        let ck = CategoryKey::generate(&mut rng());
        let dek = DataKey::generate(&mut rng());
        let wrapped = wrap_data_key(&ck, b"aad", &dek, &mut rng());
        assert_eq!(unwrap_data_key(&ck, b"aad", &wrapped).unwrap(), dek);
        assert!(unwrap_data_key(&CategoryKey::generate(&mut rng()), b"aad", &wrapped).is_err());
        assert!(unwrap_data_key(&ck, b"other", &wrapped).is_err());
    }

    #[test]
    fn hpke_wraps_reach_only_their_recipient() {
        let alice = Keypair::from_label("alice");
        let bob = Keypair::from_label("bob");
        let ck = CategoryKey::generate(&mut rng());
        let wrap = hpke_wrap(&alice.encryption_public_key(), b"info", b"aad", &ck, &mut rng()).unwrap();
        assert_eq!(hpke_unwrap(&alice, b"info", b"aad", &wrap).unwrap(), ck);
        assert_eq!(hpke_unwrap(&bob, b"info", b"aad", &wrap).unwrap_err(), CryptoError::Decrypt);
        assert!(hpke_unwrap(&alice, b"other info", b"aad", &wrap).is_err());
        assert!(hpke_unwrap(&alice, b"info", b"other aad", &wrap).is_err());
        let mut tampered = wrap.clone();
        tampered.ciphertext[0] ^= 1;
        assert!(hpke_unwrap(&alice, b"info", b"aad", &tampered).is_err());
    }

    #[test]
    fn secrets_do_not_leak_through_debug() {
        let ck = CategoryKey::from_bytes([0xab; 32]);
        assert_eq!(format!("{ck:?}"), "CategoryKey(<secret>)");
    }
}
