//! Finalization certificates: a quorum of the genesis validators' signatures over a block's
//! digest, as Simplex produced them. Stored with each block so that anyone holding a data
//! directory and the genesis can check offline that the stored head was finalized by the
//! consortium, not just hash-linked by whoever wrote the disk.

use commonware_codec::{Decode as _, Encode as _};
use commonware_consensus::simplex::{scheme::ed25519::Scheme, types::Finalization};
use commonware_cryptography::{certificate::Verifier as _, sha256::Digest};
use commonware_parallel::Sequential;
use commonware_utils::ordered::Set;
use medledger_ledger::Genesis;
use medledger_types::Hash;

use crate::validator::{consensus_namespace, consensus_public_key};

/// Why a stored certificate does not prove finalization of its block.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertificateError {
    #[error("certificate does not decode")]
    Malformed,
    #[error("certificate is for another block")]
    WrongBlock,
    #[error("certificate signatures do not verify against the genesis validators")]
    BadSignatures,
    #[error("genesis holds an invalid validator key")]
    BadGenesis,
}

/// Checks finalization certificates against one genesis.
pub struct CertificateVerifier {
    scheme: Scheme,
}

impl CertificateVerifier {
    pub fn new(genesis: &Genesis) -> Result<Self, CertificateError> {
        let keys = genesis
            .validators
            .iter()
            .map(|v| consensus_public_key(&v.signing_key).ok_or(CertificateError::BadGenesis))
            .collect::<Result<Vec<_>, _>>()?;
        let namespace = consensus_namespace(genesis.chain_id());
        Ok(Self { scheme: Scheme::verifier(&namespace, Set::from_iter_dedup(keys)) })
    }

    /// Verifies that `certificate` finalizes the block with hash `block`.
    pub fn verify(&self, certificate: &[u8], block: Hash) -> Result<(), CertificateError> {
        let cfg = self.scheme.certificate_codec_config();
        let finalization = Finalization::<Scheme, Digest>::decode_cfg(bytes::Bytes::copy_from_slice(certificate), &cfg)
            .map_err(|_| CertificateError::Malformed)?;
        if finalization.proposal.payload != Digest(block.0) {
            return Err(CertificateError::WrongBlock);
        }
        if !finalization.verify(&mut rand::rng(), &self.scheme, &Sequential) {
            return Err(CertificateError::BadSignatures);
        }
        Ok(())
    }
}

pub fn encode(finalization: &Finalization<Scheme, Digest>) -> Vec<u8> {
    finalization.encode().to_vec()
}
