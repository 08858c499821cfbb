//! Offline proof verification, RFC 9162 sections 2.1.3.2 and 2.1.4.2.

use crate::{Hash, MerkleError, node_hash};

/// Checks that `leaf` is at `index` in the tree of `size` leaves with root `root`.
pub fn verify_inclusion(index: u64, size: u64, leaf: &Hash, proof: &[Hash], root: &Hash) -> Result<(), MerkleError> {
    if index >= size {
        return Err(MerkleError::IndexOutOfRange { index, size });
    }
    let (mut fnode, mut snode) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if snode == 0 {
            return Err(MerkleError::WrongProofLength { got: proof.len(), expected: proof_len_inclusion(index, size) });
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(MerkleError::WrongProofLength { got: proof.len(), expected: proof_len_inclusion(index, size) });
    }
    if r != *root {
        return Err(MerkleError::RootMismatch);
    }
    Ok(())
}

/// Checks that the tree of `size2` leaves with `root2` extends the tree of `size1` leaves with
/// `root1`. Policy (matching the Go reference and its test probes): `size1 == 0` is an error,
/// and equal sizes need an empty proof and equal roots.
pub fn verify_consistency(
    size1: u64,
    size2: u64,
    root1: &Hash,
    root2: &Hash,
    proof: &[Hash],
) -> Result<(), MerkleError> {
    if size1 == 0 || size1 > size2 {
        return Err(MerkleError::BadSizes { from: size1, to: size2 });
    }
    if size1 == size2 {
        if !proof.is_empty() {
            return Err(MerkleError::WrongProofLength { got: proof.len(), expected: 0 });
        }
        return if root1 == root2 { Ok(()) } else { Err(MerkleError::RootMismatch) };
    }
    if proof.is_empty() {
        return Err(MerkleError::WrongProofLength { got: 0, expected: 1 });
    }
    // When size1 is a power of two its root is itself a node of the larger tree and the proof
    // omits it.
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if size1.is_power_of_two() {
        path.push(*root1);
    }
    path.extend_from_slice(proof);
    let (mut fnode, mut snode) = (size1 - 1, size2 - 1);
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let (mut fr, mut sr) = (path[0], path[0]);
    for c in &path[1..] {
        if snode == 0 {
            return Err(MerkleError::WrongProofLength { got: proof.len(), expected: path.len() - 1 });
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(MerkleError::WrongProofLength { got: proof.len(), expected: proof.len() + 1 });
    }
    if fr != *root1 || sr != *root2 {
        return Err(MerkleError::RootMismatch);
    }
    Ok(())
}

/// Number of hashes in an inclusion proof (for error messages).
fn proof_len_inclusion(index: u64, size: u64) -> usize {
    let inner = 64 - (index ^ (size - 1)).leading_zeros();
    let border = (index >> inner).count_ones();
    (inner + border) as usize
}

/// Converts untrusted bytes (e.g. a decoded proof) into hashes, naming the first bad element.
pub fn hashes_from_bytes<B: AsRef<[u8]>>(items: &[B]) -> Result<Vec<Hash>, MerkleError> {
    items
        .iter()
        .enumerate()
        .map(|(i, b)| <[u8; 32]>::try_from(b.as_ref()).map(Hash).map_err(|_| MerkleError::BadHashLength(i)))
        .collect()
}

/// [`verify_inclusion`] on untrusted byte strings: any element that is not 32 bytes fails.
pub fn verify_inclusion_bytes<B: AsRef<[u8]>>(
    index: u64,
    size: u64,
    leaf: &[u8],
    proof: &[B],
    root: &[u8],
) -> Result<(), MerkleError> {
    let leaf = <[u8; 32]>::try_from(leaf).map(Hash).map_err(|_| MerkleError::BadHashLength(0))?;
    let root = <[u8; 32]>::try_from(root).map(Hash).map_err(|_| MerkleError::BadHashLength(0))?;
    verify_inclusion(index, size, &leaf, &hashes_from_bytes(proof)?, &root)
}

/// [`verify_consistency`] on untrusted byte strings. For equal sizes only byte equality of the
/// roots is checked, whatever their length (as the Go reference does).
pub fn verify_consistency_bytes<B: AsRef<[u8]>>(
    size1: u64,
    size2: u64,
    root1: &[u8],
    root2: &[u8],
    proof: &[B],
) -> Result<(), MerkleError> {
    if size1 != 0 && size1 == size2 {
        if !proof.is_empty() {
            return Err(MerkleError::WrongProofLength { got: proof.len(), expected: 0 });
        }
        return if root1 == root2 { Ok(()) } else { Err(MerkleError::RootMismatch) };
    }
    let root1 = <[u8; 32]>::try_from(root1).map(Hash).map_err(|_| MerkleError::BadHashLength(0))?;
    let root2 = <[u8; 32]>::try_from(root2).map(Hash).map_err(|_| MerkleError::BadHashLength(0))?;
    verify_consistency(size1, size2, &root1, &root2, &hashes_from_bytes(proof)?)
}
