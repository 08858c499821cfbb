//! Transaction and block decoding (`medledger_ledger`, over `medledger_codec`).
//!
//! Properties: decoding never panics; what decodes re-encodes to exactly the bytes it came from
//! (one encoding per value), so a decoded transaction's body signed again gives the same
//! unsigned bytes and a decoded block encodes to its input; a trailing byte and a strict
//! prefix are refused; structurally generated values round-trip exactly when every limit holds
//! and are refused otherwise.

use std::sync::LazyLock;

use arbitrary::Unstructured;
use medledger_codec::{CodecError, Encode, decode_exact};
use medledger_crypto::Keypair;
use medledger_ledger::{Block, BlockHeader, Payload, Transaction, tx::TX_SIGNING_DOMAIN};
use medledger_types::limits;

use super::{bucket, feature, generate::Gen};

/// The keys that sign generated transactions (any key will do: decoding does not verify).
static KEYS: LazyLock<Keypair> = LazyLock::new(|| Keypair::from_label("medledger-fuzz"));

/// A feature naming the error: its kind and the field it names.
fn codec_feature(domain: &[u8], error: &CodecError) -> u64 {
    let (kind, what): (&[u8], &str) = match error {
        CodecError::UnexpectedEnd(what) => (b"end", what),
        CodecError::TrailingBytes(_) => (b"trailing", ""),
        CodecError::TooLong { what, .. } => (b"long", what),
        CodecError::InvalidTag { what, .. } => (b"tag", what),
        CodecError::InvalidUtf8(what) => (b"utf8", what),
        CodecError::InvalidValue(what) => (b"value", what),
        _ => (b"other", ""),
    };
    feature(&[domain, kind, what.as_bytes()])
}

/// The kinds of a payload's operations (a batch: the set of its operations' kinds and a size
/// class of their number), for features.
fn kinds(payload: &Payload) -> Vec<u8> {
    let mut out: Vec<u8> = payload.kind().as_bytes().to_vec();
    if let Payload::Batch { ops } = payload {
        let mut inside: Vec<&str> = ops.iter().map(Payload::kind).collect();
        inside.sort_unstable();
        inside.dedup();
        for kind in inside {
            out.push(b'/');
            out.extend_from_slice(kind.as_bytes());
        }
        out.extend_from_slice(&bucket(ops.len()));
    }
    out
}

/// The largest encoding a transaction with this payload may have.
fn size_limit(payload: &Payload) -> usize {
    match payload {
        Payload::Batch { .. } => limits::BATCH_TX_BYTES_MAX,
        _ => limits::TX_BYTES_MAX,
    }
}

/// What must hold of bytes `Transaction::decode` accepted.
fn check_accepted_tx(tx: &Transaction, data: &[u8]) {
    let n = data.len();
    assert_eq!(tx.bytes(), data, "a decoded transaction keeps its bytes");
    assert!(n <= size_limit(&tx.body().payload), "accepted a transaction of {n} bytes");
    assert_eq!(tx.id().0, medledger_crypto::sha256_parts(&[&[0u8], data]).0, "the id is the RFC 6962 leaf hash");
    let unsigned = &data[..n - 64];
    assert_eq!(tx.signed_message(), [TX_SIGNING_DOMAIN, unsigned].concat());
    // One encoding per value: the decoded body, encoded again, is the same bytes.
    let again = Transaction::sign(tx.body().clone(), &KEYS);
    assert_eq!(&again.bytes()[..again.bytes().len() - 64], unsigned, "the decoded body re-encodes differently");
    let mut longer = data.to_vec();
    longer.push(data[n / 2]);
    assert!(Transaction::decode(&longer).is_err(), "a trailing byte was accepted");
    let cut = (feature(&[data]) % n as u64) as usize;
    assert!(Transaction::decode(&data[..cut]).is_err(), "a {cut}-byte prefix was accepted");
}

/// `Transaction::decode` on arbitrary bytes.
pub fn tx_decode(data: &[u8]) -> u64 {
    match Transaction::decode(data) {
        Err(error) => codec_feature(b"tx", &error),
        Ok(tx) => {
            check_accepted_tx(&tx, data);
            feature(&[b"tx ok", &kinds(&tx.body().payload)])
        }
    }
}

/// Generated transaction bodies, signed and decoded.
pub fn tx_roundtrip(data: &[u8]) -> u64 {
    let mut u = Unstructured::new(data);
    let mut generator = Gen::new(&mut u);
    let Ok(body) = generator.body() else { return 0 };
    let broken = generator.broken;
    let tx = Transaction::sign(body.clone(), &KEYS);
    let too_large = tx.bytes().len() > size_limit(&body.payload);
    let must_decode = broken.is_empty() && !too_large;
    match Transaction::decode(tx.bytes()) {
        Ok(decoded) => {
            assert!(must_decode, "decoded although {broken:?} (too large: {too_large})");
            assert_eq!(decoded, tx);
            assert_eq!(decoded.body(), &body);
            assert!(KEYS.public_key().verify(&decoded.signed_message(), decoded.signature()).is_ok());
            feature(&[b"roundtrip ok", &kinds(&body.payload)])
        }
        Err(error) => {
            assert!(!must_decode, "a valid transaction ({}) was refused: {error}", body.payload.kind());
            codec_feature(b"roundtrip refused", &error)
        }
    }
}

/// `Block::decode`, `decode_exact::<BlockHeader>` and the partial decoders a transaction's
/// status and lookup use (`Block::decode_header`, `Block::decode_transaction_at`) on arbitrary
/// bytes: none panics, and where the whole block decodes the partial ones agree with it.
pub fn block_decode(data: &[u8]) -> u64 {
    if let Ok(header) = decode_exact::<BlockHeader>(data) {
        assert_eq!(header.to_bytes(), data, "a decoded header re-encodes differently");
    }
    let header = Block::decode_header(data);
    let at = |i: u32| Block::decode_transaction_at(data, i);
    let (first, second) = (at(0), at(1));
    match Block::decode(data) {
        Err(error) => codec_feature(b"block", &error),
        Ok(block) => {
            assert_eq!(header.as_ref().ok(), Some(&block.header), "the header decoder disagrees");
            assert_eq!(first.ok().flatten().as_ref(), block.txs.first(), "transaction 0 decodes differently");
            assert_eq!(second.ok().flatten().as_ref(), block.txs.get(1), "transaction 1 decodes differently");
            assert_eq!(block.to_bytes(), data, "a decoded block re-encodes differently");
            let header_bytes = block.header.to_bytes();
            assert_eq!(block.hash(), medledger_crypto::sha256(&data[..header_bytes.len()]));
            let mut longer = data.to_vec();
            longer.push(0);
            assert!(Block::decode(&longer).is_err(), "a trailing byte was accepted");
            let mut kinds_seen: Vec<&str> = block.txs.iter().map(|tx| tx.body().payload.kind()).collect();
            kinds_seen.sort_unstable();
            kinds_seen.dedup();
            feature(&[b"block ok", &bucket(block.txs.len()), kinds_seen.join("/").as_bytes()])
        }
    }
}

/// Generated blocks of generated transactions, encoded and decoded.
pub fn block_roundtrip(data: &[u8]) -> u64 {
    let mut u = Unstructured::new(data);
    let mut generator = Gen::new(&mut u);
    let Ok(header) = generator.header() else { return 0 };
    let mut txs = Vec::new();
    let mut all_valid = true;
    let count = generator.small(4).unwrap_or(0);
    for _ in 0..count {
        let before = generator.broken.len();
        let Ok(body) = generator.body() else { break };
        let tx = Transaction::sign(body, &KEYS);
        all_valid &= generator.broken.len() == before && tx.bytes().len() <= size_limit(&tx.body().payload);
        txs.push(tx);
    }
    let block = Block { header, txs };
    let bytes = block.to_bytes();
    let must_decode = all_valid && bytes.len() <= limits::BLOCK_BYTES_MAX;
    match Block::decode(&bytes) {
        Ok(decoded) => {
            assert!(must_decode, "a block with an invalid transaction decoded");
            assert_eq!(decoded, block);
            assert_eq!(decoded.hash(), block.hash());
            assert_eq!(Block::decode_header(&bytes).ok().as_ref(), Some(&block.header));
            for (i, tx) in block.txs.iter().enumerate() {
                let alone = Block::decode_transaction_at(&bytes, i as u32).ok().flatten();
                assert_eq!(alone.as_ref(), Some(tx), "transaction {i} decodes differently alone");
            }
            feature(&[b"block roundtrip ok", &bucket(block.txs.len())])
        }
        Err(error) => {
            assert!(!must_decode, "a valid block was refused: {error}");
            codec_feature(b"block roundtrip refused", &error)
        }
    }
}
