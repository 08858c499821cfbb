//! The ledger block as commonware consensus sees it: a length-prefixed canonical encoding
//! and the header hash as digest.

use bytes::{BufMut, Bytes};
use commonware_codec::{Buf, EncodeSize, Error as CodecError, Read, Write};
use commonware_consensus::{Heightable, types::Height};
use commonware_cryptography::{Digestible, sha256::Digest};
use medledger_codec::Encode as _;
use medledger_ledger::Block;
use medledger_types::{Hash, limits};

/// A ledger block with its encoding and digest computed once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainBlock {
    block: Block,
    bytes: Bytes,
    digest: Digest,
}

impl ChainBlock {
    pub fn new(block: Block) -> Self {
        let bytes = Bytes::from(block.to_bytes());
        let digest = Digest(block.hash().0);
        Self { block, bytes, digest }
    }

    pub fn block(&self) -> &Block {
        &self.block
    }

    pub fn into_block(self) -> Block {
        self.block
    }
}

pub fn to_digest(hash: Hash) -> Digest {
    Digest(hash.0)
}

impl Write for ChainBlock {
    fn write(&self, w: &mut impl BufMut) {
        w.put_u32(self.bytes.len() as u32);
        w.put_slice(&self.bytes);
    }
}

impl EncodeSize for ChainBlock {
    fn encode_size(&self) -> usize {
        4 + self.bytes.len()
    }
}

impl Read for ChainBlock {
    type Cfg = ();

    fn read_cfg(r: &mut impl Buf, _: &()) -> Result<Self, CodecError> {
        if r.remaining() < 4 {
            return Err(CodecError::EndOfBuffer);
        }
        let len = r.get_u32() as usize;
        if len > limits::BLOCK_BYTES_MAX {
            return Err(CodecError::Invalid("ChainBlock", "block larger than the maximum"));
        }
        if r.remaining() < len {
            return Err(CodecError::EndOfBuffer);
        }
        let bytes = r.copy_to_bytes(len);
        let block = Block::decode(&bytes).map_err(|_| CodecError::Invalid("ChainBlock", "malformed block"))?;
        let digest = Digest(block.hash().0);
        Ok(Self { block, bytes, digest })
    }
}

impl Digestible for ChainBlock {
    type Digest = Digest;

    fn digest(&self) -> Digest {
        self.digest
    }
}

impl Heightable for ChainBlock {
    fn height(&self) -> Height {
        Height::new(self.block.height())
    }
}

impl commonware_consensus::Block for ChainBlock {
    fn parent(&self) -> Digest {
        Digest(self.block.header.parent.0)
    }
}

impl commonware_consensus::BoundedBlock for ChainBlock {
    fn max_encode_size(_: &()) -> usize {
        4 + limits::BLOCK_BYTES_MAX
    }
}

#[cfg(test)]
mod tests {
    use commonware_codec::{DecodeExt, Encode};
    use medledger_crypto::Keypair;
    use medledger_ledger::{Genesis, GenesisIdentity};

    use super::*;

    #[test]
    fn round_trip_and_strict_decoding() {
        let k = Keypair::from_label("v");
        let id = GenesisIdentity {
            name: "v".into(),
            signing_key: k.public_key(),
            encryption_key: k.encryption_public_key(),
            organisation: None,
            kind: Some(medledger_types::OrganisationKind::CareProvider),
        };
        let g =
            Genesis { chain_name: "t".into(), genesis_time_ms: 5, organisations: vec![id.clone()], validators: vec![] };
        let b = ChainBlock::new(Block { header: g.anchor_header(), txs: vec![] });
        let enc = b.encode();
        assert_eq!(enc.len(), b.encode_size());
        let back = ChainBlock::decode(enc.clone()).unwrap();
        assert_eq!(back, b);
        assert_eq!(back.digest(), Digest(g.anchor_header().hash().0));
        let mut long = enc.to_vec();
        long.push(0);
        assert!(ChainBlock::decode(Bytes::from(long)).is_err());
        let mut huge = enc.to_vec();
        huge[..4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(ChainBlock::decode(Bytes::from(huge)).is_err());
    }
}
