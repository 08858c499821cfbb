//! RFC 6962 / RFC 9162 Merkle log: tree hashes, inclusion and consistency proofs, and
//! C2SP signed-note checkpoints.
//!
//! Architecture invariant: hashing is exactly RFC 6962 (leaf = SHA-256(0x00 || data),
//! node = SHA-256(0x01 || left || right), empty tree = SHA-256("")), so proofs issued by
//! medledger verify with any RFC 6962 verifier, and ours verifies theirs.

pub mod checkpoint;
mod log;
mod verify;

pub use log::MerkleLog;
use medledger_crypto::{sha256, sha256_parts};
pub use medledger_types::Hash;
pub use verify::{
    hashes_from_bytes, verify_consistency, verify_consistency_bytes, verify_inclusion, verify_inclusion_bytes,
};

/// Why a proof was refused or could not be produced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MerkleError {
    #[error("leaf index {index} is not below tree size {size}")]
    IndexOutOfRange { index: u64, size: u64 },
    #[error("tree size {size} is larger than the log ({log_size} leaves)")]
    SizeOutOfRange { size: u64, log_size: u64 },
    #[error("consistency needs 0 < from <= to, got from {from}, to {to}")]
    BadSizes { from: u64, to: u64 },
    #[error("proof has {got} hashes, expected {expected}")]
    WrongProofLength { got: usize, expected: usize },
    #[error("proof element {0} is not a 32-byte hash")]
    BadHashLength(usize),
    #[error("computed root does not match the expected root")]
    RootMismatch,
}

/// RFC 6962 leaf hash of `data`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    sha256_parts(&[&[0x00], data])
}

/// RFC 6962 interior node hash.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    sha256_parts(&[&[0x01], &left.0, &right.0])
}

/// Root of the empty tree: SHA-256 of the empty string.
pub fn empty_root() -> Hash {
    sha256(b"")
}

/// Largest power of two strictly less than `n` (n >= 2): the RFC 6962 split point.
pub(crate) fn split_point(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1u64 << (63 - (n - 1).leading_zeros())
}

/// Root of the tree whose leaves have the given hashes (RFC 6962 MTH).
pub fn root_from_leaf_hashes(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = split_point(n as u64) as usize;
            node_hash(&root_from_leaf_hashes(&leaves[..k]), &root_from_leaf_hashes(&leaves[k..]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_points() {
        assert_eq!(split_point(2), 1);
        assert_eq!(split_point(3), 2);
        assert_eq!(split_point(4), 2);
        assert_eq!(split_point(5), 4);
        assert_eq!(split_point(8), 4);
        assert_eq!(split_point(9), 8);
        assert_eq!(split_point(u64::MAX), 1 << 63);
    }
}
