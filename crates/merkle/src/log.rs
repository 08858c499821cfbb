//! An append-only log of leaf hashes with every perfect subtree hash cached, so roots and
//! proofs for any historical size cost O(log n) hash lookups and at most O(log n) hashing.

use crate::{Hash, MerkleError, empty_root, node_hash, split_point};

/// The global transaction log. `levels[k][i]` is the hash of the perfect subtree covering
/// leaves `[i * 2^k, (i + 1) * 2^k)`; level 0 holds the leaf hashes. Each level is a
/// persistent vector, so a clone (one per finalized block, for readers' snapshots) shares
/// everything already appended and costs O(log n), not O(n).
#[derive(Clone, Debug, Default)]
pub struct MerkleLog {
    levels: Vec<imbl::Vector<Hash>>,
}

impl MerkleLog {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.levels.first().map_or(0, |l| l.len() as u64)
    }

    pub fn leaf(&self, index: u64) -> Option<Hash> {
        self.levels.first()?.get(usize::try_from(index).ok()?).copied()
    }

    /// Appends a leaf hash (already hashed with the 0x00 prefix).
    pub fn push(&mut self, leaf: Hash) {
        let mut level = 0;
        let mut hash = leaf;
        loop {
            if self.levels.len() == level {
                self.levels.push(imbl::Vector::new());
            }
            self.levels[level].push_back(hash);
            let len = self.levels[level].len();
            // A completed pair at this level creates its parent one level up.
            if len % 2 == 1 {
                break;
            }
            hash = node_hash(&self.levels[level][len - 2], &self.levels[level][len - 1]);
            level += 1;
        }
    }

    /// Root of the first `size` leaves.
    pub fn root_at(&self, size: u64) -> Result<Hash, MerkleError> {
        self.check_size(size)?;
        Ok(if size == 0 { empty_root() } else { self.subtree(0, size) })
    }

    pub fn root(&self) -> Hash {
        self.root_at(self.size()).expect("own size is in range")
    }

    /// Root the log would have after appending `extra` leaves, without changing it. Costs
    /// O(extra + log n) hashes.
    pub fn root_with_appended(&self, extra: &[Hash]) -> Hash {
        let end = self.size() + extra.len() as u64;
        if end == 0 {
            return empty_root();
        }
        self.subtree_extended(0, end, extra)
    }

    fn subtree_extended(&self, start: u64, end: u64, extra: &[Hash]) -> Hash {
        let size = self.size();
        if end <= size {
            return self.subtree(start, end);
        }
        let n = end - start;
        if n == 1 {
            return extra[(start - size) as usize];
        }
        let k = split_point(n);
        node_hash(&self.subtree_extended(start, start + k, extra), &self.subtree_extended(start + k, end, extra))
    }

    /// Audit path for leaf `index` in the tree of the first `size` leaves, leaf side first.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, MerkleError> {
        self.check_size(size)?;
        if index >= size {
            return Err(MerkleError::IndexOutOfRange { index, size });
        }
        let mut proof = Vec::new();
        self.path(index, 0, size, &mut proof);
        Ok(proof)
    }

    /// Consistency proof between the trees of the first `from` and `to` leaves (RFC 6962 2.1.2).
    pub fn consistency_proof(&self, from: u64, to: u64) -> Result<Vec<Hash>, MerkleError> {
        self.check_size(to)?;
        if from == 0 || from > to {
            return Err(MerkleError::BadSizes { from, to });
        }
        let mut proof = Vec::new();
        if from < to {
            self.subproof(from, 0, to, true, &mut proof);
        }
        Ok(proof)
    }

    fn check_size(&self, size: u64) -> Result<(), MerkleError> {
        if size > self.size() {
            return Err(MerkleError::SizeOutOfRange { size, log_size: self.size() });
        }
        Ok(())
    }

    /// Hash of leaves `[start, end)`, `end <= size`, following RFC 6962's decomposition.
    fn subtree(&self, start: u64, end: u64) -> Hash {
        let n = end - start;
        debug_assert!(n >= 1);
        if n.is_power_of_two() && start.is_multiple_of(n) {
            let level = n.trailing_zeros() as usize;
            return self.levels[level][(start >> level) as usize];
        }
        let k = split_point(n);
        node_hash(&self.subtree(start, start + k), &self.subtree(start + k, end))
    }

    fn path(&self, index: u64, start: u64, n: u64, out: &mut Vec<Hash>) {
        if n == 1 {
            return;
        }
        let k = split_point(n);
        if index < k {
            self.path(index, start, k, out);
            out.push(self.subtree(start + k, start + n));
        } else {
            self.path(index - k, start + k, n - k, out);
            out.push(self.subtree(start, start + k));
        }
    }

    fn subproof(&self, m: u64, start: u64, n: u64, complete: bool, out: &mut Vec<Hash>) {
        if m == n {
            if !complete {
                out.push(self.subtree(start, start + n));
            }
            return;
        }
        let k = split_point(n);
        if m <= k {
            self.subproof(m, start, k, complete, out);
            out.push(self.subtree(start + k, start + n));
        } else {
            self.subproof(m - k, start + k, n - k, false, out);
            out.push(self.subtree(start, start + k));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{leaf_hash, root_from_leaf_hashes, verify_consistency, verify_inclusion};

    fn log_of(n: u64) -> (MerkleLog, Vec<Hash>) {
        let mut log = MerkleLog::new();
        let leaves: Vec<Hash> = (0..n).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        for leaf in &leaves {
            log.push(*leaf);
        }
        (log, leaves)
    }

    #[test]
    fn roots_match_reference_at_every_size() {
        let (log, leaves) = log_of(70);
        for size in 0..=70u64 {
            assert_eq!(log.root_at(size).unwrap(), root_from_leaf_hashes(&leaves[..size as usize]));
        }
        assert!(matches!(log.root_at(71), Err(MerkleError::SizeOutOfRange { .. })));
    }

    #[test]
    fn every_proof_up_to_40_leaves_verifies() {
        let (log, leaves) = log_of(40);
        for size in 1..=40u64 {
            let root = log.root_at(size).unwrap();
            for index in 0..size {
                let proof = log.inclusion_proof(index, size).unwrap();
                verify_inclusion(index, size, &leaves[index as usize], &proof, &root).unwrap();
            }
            for from in 1..=size {
                let proof = log.consistency_proof(from, size).unwrap();
                verify_consistency(from, size, &log.root_at(from).unwrap(), &root, &proof).unwrap();
            }
        }
    }

    #[test]
    fn root_with_appended_matches_pushing() {
        for base in 0..20u64 {
            for extra in 0..20u64 {
                let (mut log, _) = log_of(base);
                let more: Vec<Hash> = (0..extra).map(|i| leaf_hash(&(1000 + i).to_be_bytes())).collect();
                let predicted = log.root_with_appended(&more);
                more.iter().for_each(|h| log.push(*h));
                assert_eq!(predicted, log.root(), "base {base} extra {extra}");
            }
        }
    }

    #[test]
    fn out_of_range_requests_are_errors() {
        let (log, _) = log_of(5);
        assert_eq!(log.inclusion_proof(5, 5), Err(MerkleError::IndexOutOfRange { index: 5, size: 5 }));
        assert!(matches!(log.inclusion_proof(0, 6), Err(MerkleError::SizeOutOfRange { .. })));
        assert_eq!(log.consistency_proof(0, 3), Err(MerkleError::BadSizes { from: 0, to: 3 }));
        assert_eq!(log.consistency_proof(4, 3), Err(MerkleError::BadSizes { from: 4, to: 3 }));
        assert!(log.consistency_proof(3, 3).unwrap().is_empty());
    }
}
