//! Blocks: a header that commits to the block's transactions and to the whole log after it,
//! hash-linked to its parent.

use medledger_codec::{CodecError, Decode, Encode, Reader, Writer};
use medledger_crypto::sha256;
use medledger_merkle::{leaf_hash, root_from_leaf_hashes};
use medledger_types::{Hash, Height, IdentityId, TimestampMs, limits};

use crate::tx::Transaction;

/// Encoding version of block headers.
pub const BLOCK_VERSION: u8 = 1;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockHeader {
    pub chain_id: Hash,
    pub height: Height,
    /// Hash of the parent header; for height 1, of the genesis anchor header.
    pub parent: Hash,
    /// Injected by the proposer through consensus; strictly greater than the parent's.
    pub timestamp_ms: TimestampMs,
    /// The validator that proposed the block.
    pub proposer: IdentityId,
    pub tx_count: u32,
    /// RFC 6962 root over this block's transactions (leaf data = transaction bytes).
    pub txs_root: Hash,
    /// Size of the global transaction log after this block.
    pub log_size: u64,
    /// RFC 6962 root of the global transaction log after this block.
    pub log_root: Hash,
}

impl BlockHeader {
    /// SHA-256 of the encoded header: the block's identity and the next block's parent.
    pub fn hash(&self) -> Hash {
        sha256(&self.to_bytes())
    }
}

impl Encode for BlockHeader {
    fn encode(&self, w: &mut Writer) {
        w.u8(BLOCK_VERSION)
            .encode(&self.chain_id)
            .u64(self.height)
            .encode(&self.parent)
            .u64(self.timestamp_ms)
            .encode(&self.proposer)
            .u32(self.tx_count)
            .encode(&self.txs_root)
            .u64(self.log_size)
            .encode(&self.log_root);
    }
}

impl Decode for BlockHeader {
    fn decode(r: &mut Reader<'_>) -> Result<Self, CodecError> {
        let version = r.u8("block version")?;
        if version != BLOCK_VERSION {
            return Err(CodecError::InvalidTag { what: "block version", tag: version });
        }
        Ok(Self {
            chain_id: Hash::decode(r)?,
            height: r.u64("height")?,
            parent: Hash::decode(r)?,
            timestamp_ms: r.u64("timestamp")?,
            proposer: IdentityId::decode(r)?,
            tx_count: r.u32("transaction count")?,
            txs_root: Hash::decode(r)?,
            log_size: r.u64("log size")?,
            log_root: Hash::decode(r)?,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Block {
    pub header: BlockHeader,
    pub txs: Vec<Transaction>,
}

impl Block {
    pub fn hash(&self) -> Hash {
        self.header.hash()
    }

    pub fn height(&self) -> Height {
        self.header.height
    }

    /// Decodes untrusted bytes; structure only (see `State::verify_block` for validity).
    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        if bytes.len() > limits::BLOCK_BYTES_MAX {
            return Err(CodecError::TooLong { what: "block", got: bytes.len(), max: limits::BLOCK_BYTES_MAX });
        }
        let mut r = Reader::new(bytes);
        let header = BlockHeader::decode(&mut r)?;
        let txs = r.seq(limits::BLOCK_TXS_MAX, "block transactions", |r| {
            Transaction::decode(r.bytes(limits::BATCH_TX_BYTES_MAX, "transaction")?)
        })?;
        r.finish()?;
        Ok(Self { header, txs })
    }

    /// The header of a stored block, without decoding its transactions (a transaction's
    /// status needs only the header's log size).
    pub fn decode_header(bytes: &[u8]) -> Result<BlockHeader, CodecError> {
        if bytes.len() > limits::BLOCK_BYTES_MAX {
            return Err(CodecError::TooLong { what: "block", got: bytes.len(), max: limits::BLOCK_BYTES_MAX });
        }
        BlockHeader::decode(&mut Reader::new(bytes))
    }

    /// The transaction at `index` of a stored block, decoding only that one (`None` past the
    /// end). The others are skipped by their length prefixes.
    pub fn decode_transaction_at(bytes: &[u8], index: u32) -> Result<Option<Transaction>, CodecError> {
        if bytes.len() > limits::BLOCK_BYTES_MAX {
            return Err(CodecError::TooLong { what: "block", got: bytes.len(), max: limits::BLOCK_BYTES_MAX });
        }
        let mut r = Reader::new(bytes);
        BlockHeader::decode(&mut r)?;
        let count = r.u32("block transactions")?;
        if count as usize > limits::BLOCK_TXS_MAX {
            return Err(CodecError::TooLong {
                what: "block transactions",
                got: count as usize,
                max: limits::BLOCK_TXS_MAX,
            });
        }
        if index >= count {
            return Ok(None);
        }
        for _ in 0..index {
            r.bytes(limits::BATCH_TX_BYTES_MAX, "transaction")?;
        }
        Transaction::decode(r.bytes(limits::BATCH_TX_BYTES_MAX, "transaction")?).map(Some)
    }
}

impl Encode for Block {
    fn encode(&self, w: &mut Writer) {
        w.encode(&self.header);
        w.seq(&self.txs, |w, tx| {
            w.bytes(tx.bytes());
        });
    }
}

/// RFC 6962 root over the transactions of a block.
pub fn txs_root(txs: &[Transaction]) -> Hash {
    let leaves: Vec<Hash> = txs.iter().map(|tx| tx.id().0).map(Hash).collect();
    debug_assert!(txs.iter().all(|tx| leaf_hash(tx.bytes()).0 == tx.id().0));
    root_from_leaf_hashes(&leaves)
}
