//! Transactions: one canonical, versioned binary encoding; the id is the RFC 6962 leaf hash
//! of that encoding, and the signature covers a domain tag plus everything but itself.

mod codec;
mod payload;

use medledger_codec::{CodecError, Encode, Reader, Writer};
use medledger_crypto::{Keypair, Signature};
use medledger_types::{Hash, IdentityId, TxId, limits};

use codec::{decode_body, encode_body};
pub use payload::{
    AccessAction, AccessEvent, AccessOutcome, KeyShareEntry, Payload, Purpose, ReviewVerdict, RuleSpec, Scope, actions,
};

/// Encoding version of transactions; the first byte of every encoded transaction.
pub const TX_VERSION: u8 = 1;
/// Prefix of every signed message, so a transaction signature can never be replayed as a
/// signature over anything else medledger signs (checkpoints, blocks, consensus votes).
pub const TX_SIGNING_DOMAIN: &[u8] = b"medledger/tx/v1\x00";

/// The signed part of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxBody {
    /// Binds the transaction to one chain (the hash of its genesis).
    pub chain_id: Hash,
    pub signer: IdentityId,
    /// Per-signer sequence number, starting at 0: replay protection and ordering.
    pub nonce: u64,
    pub payload: Payload,
}

/// A signed transaction with its canonical bytes and id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transaction {
    body: TxBody,
    signature: Signature,
    bytes: Vec<u8>,
    id: TxId,
}

fn leaf_id(bytes: &[u8]) -> TxId {
    TxId(medledger_crypto::sha256_parts(&[&[0u8], bytes]).0)
}

impl Transaction {
    /// Signs `body` with `keys`.
    pub fn sign(body: TxBody, keys: &Keypair) -> Self {
        let mut w = Writer::with_capacity(256);
        w.u8(TX_VERSION);
        encode_body(&body, &mut w);
        let unsigned = w.into_bytes();
        let signature = keys.sign(&signing_message(&unsigned));
        let mut bytes = unsigned;
        bytes.extend_from_slice(&signature.0);
        let id = leaf_id(&bytes);
        Self { body, signature, bytes, id }
    }

    /// Decodes untrusted bytes (does not check the signature: see [`Transaction::signed_message`]).
    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        if bytes.len() > limits::BATCH_TX_BYTES_MAX {
            return Err(CodecError::TooLong { what: "transaction", got: bytes.len(), max: limits::BATCH_TX_BYTES_MAX });
        }
        let mut r = Reader::new(bytes);
        let version = r.u8("transaction version")?;
        if version != TX_VERSION {
            return Err(CodecError::InvalidTag { what: "transaction version", tag: version });
        }
        let body = decode_body(&mut r)?;
        let signature = Signature(r.array("signature")?);
        r.finish()?;
        // Only a batch may be larger than an ordinary transaction.
        if !matches!(body.payload, Payload::Batch { .. }) && bytes.len() > limits::TX_BYTES_MAX {
            return Err(CodecError::TooLong { what: "transaction", got: bytes.len(), max: limits::TX_BYTES_MAX });
        }
        Ok(Self { body, signature, bytes: bytes.to_vec(), id: leaf_id(bytes) })
    }

    pub fn body(&self) -> &TxBody {
        &self.body
    }

    pub fn signature(&self) -> &Signature {
        &self.signature
    }

    /// Canonical encoded bytes (the log leaf data).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// RFC 6962 leaf hash of [`Transaction::bytes`].
    pub fn id(&self) -> TxId {
        self.id
    }

    /// The exact message the signature covers.
    pub fn signed_message(&self) -> Vec<u8> {
        signing_message(&self.bytes[..self.bytes.len() - 64])
    }
}

fn signing_message(unsigned: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(TX_SIGNING_DOMAIN.len() + unsigned.len());
    msg.extend_from_slice(TX_SIGNING_DOMAIN);
    msg.extend_from_slice(unsigned);
    msg
}

impl Encode for Transaction {
    fn encode(&self, w: &mut Writer) {
        w.fixed(&self.bytes);
    }
}

/// Builds and signs a transaction by `keys` (whose identity id is `signer`).
pub fn sign(keys: &Keypair, chain_id: Hash, signer: IdentityId, nonce: u64, payload: Payload) -> Transaction {
    Transaction::sign(TxBody { chain_id, signer, nonce, payload }, keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(payload: Payload) {
        let keys = Keypair::from_label("tx-round-trip");
        let tx = sign(&keys, Hash([3; 32]), keys.id(), 7, payload);
        let decoded = Transaction::decode(tx.bytes()).unwrap();
        assert_eq!(decoded, tx);
        assert_eq!(decoded.id(), tx.id());
        // Every strict prefix and any trailing byte is refused.
        for cut in 0..tx.bytes().len() {
            assert!(Transaction::decode(&tx.bytes()[..cut]).is_err(), "prefix of {cut} bytes decoded");
        }
        let mut padded = tx.bytes().to_vec();
        padded.push(0);
        assert!(Transaction::decode(&padded).is_err());
    }

    #[test]
    fn delegate_and_review_payloads_round_trip() {
        let (patient, delegate) = (IdentityId([1; 32]), IdentityId([2; 32]));
        round_trip(Payload::AppointDelegate { patient, delegate, valid_until_ms: 1_800_000_000_000 });
        round_trip(Payload::DismissDelegate { patient, delegate });
        for verdict in [ReviewVerdict::Justified, ReviewVerdict::Unjustified] {
            round_trip(Payload::ReviewBreakGlass {
                break_glass_tx: TxId([4; 32]),
                verdict,
                reason: "ed-confirmed".into(),
            });
        }
    }

    #[test]
    fn new_payloads_have_the_documented_layout() {
        let keys = Keypair::from_label("tx-layout");
        let (patient, delegate) = (IdentityId([1; 32]), IdentityId([2; 32]));
        let body_start = 1 + 32 + 32 + 8;
        let appoint = sign(
            &keys,
            Hash([3; 32]),
            keys.id(),
            0,
            Payload::AppointDelegate { patient, delegate, valid_until_ms: 0x0102_0304_0506_0708 },
        );
        let b = &appoint.bytes()[body_start..];
        assert_eq!(b[0], 11);
        assert_eq!((&b[1..33], &b[33..65]), (&patient.0[..], &delegate.0[..]));
        assert_eq!(&b[65..73], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(b.len(), 73 + 64);
        let dismiss = sign(&keys, Hash([3; 32]), keys.id(), 0, Payload::DismissDelegate { patient, delegate });
        assert_eq!(dismiss.bytes()[body_start], 12);
        assert_eq!(dismiss.bytes().len(), body_start + 1 + 64 + 64);
        let review = sign(
            &keys,
            Hash([3; 32]),
            keys.id(),
            0,
            Payload::ReviewBreakGlass {
                break_glass_tx: TxId([4; 32]),
                verdict: ReviewVerdict::Unjustified,
                reason: "no-emergency".into(),
            },
        );
        let b = &review.bytes()[body_start..];
        assert_eq!((b[0], &b[1..33], b[33]), (13, &[4u8; 32][..], 2));
        assert_eq!(&b[34..38], &12u32.to_be_bytes());
        assert_eq!(&b[38..50], b"no-emergency");
    }

    #[test]
    fn unknown_verdicts_and_long_review_reasons_are_refused() {
        let keys = Keypair::from_label("tx-strict");
        let review = |reason: String| {
            sign(
                &keys,
                Hash([3; 32]),
                keys.id(),
                0,
                Payload::ReviewBreakGlass { break_glass_tx: TxId([4; 32]), verdict: ReviewVerdict::Justified, reason },
            )
        };
        let mut bytes = review("ok".into()).bytes().to_vec();
        let verdict_at = 1 + 32 + 32 + 8 + 1 + 32;
        for tag in [0u8, 3, 255] {
            bytes[verdict_at] = tag;
            assert!(matches!(Transaction::decode(&bytes), Err(CodecError::InvalidTag { what: "review verdict", .. })));
        }
        let long = review("x".repeat(limits::REVIEW_REASON_BYTES_MAX + 1));
        assert!(Transaction::decode(long.bytes()).is_err());
        let longest = review("x".repeat(limits::REVIEW_REASON_BYTES_MAX));
        assert!(Transaction::decode(longest.bytes()).is_ok());
        assert_eq!(ReviewVerdict::parse("Unjustified"), Some(ReviewVerdict::Unjustified));
        assert_eq!(ReviewVerdict::parse("maybe"), None);
    }
}
