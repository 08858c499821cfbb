//! Pending transactions: bounded, deduplicated by id and by (signer, nonce), offered to block
//! building in arrival order. Transactions leave when a finalized block includes them, when
//! their nonce is used up by another transaction, or when block building finds them invalid.

use std::collections::{BTreeMap, HashMap, VecDeque};

use medledger_ledger::Transaction;
use medledger_types::{IdentityId, TxId, limits};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MempoolError {
    #[error("the node's mempool is full ({0} transactions); retry later")]
    Full(usize),
    #[error("transaction is already pending")]
    Duplicate,
    #[error("another transaction with nonce {0} from this signer is already pending")]
    NonceTaken(u64),
}

#[derive(Debug)]
pub struct Mempool {
    txs: HashMap<TxId, Transaction>,
    /// Arrival order; may hold ids already removed (skipped lazily, compacted when large).
    order: VecDeque<TxId>,
    by_signer: HashMap<IdentityId, BTreeMap<u64, TxId>>,
    capacity: usize,
}

impl Default for Mempool {
    fn default() -> Self {
        Self::new(limits::MEMPOOL_TXS_MAX)
    }
}

impl Mempool {
    pub fn new(capacity: usize) -> Self {
        Self { txs: HashMap::new(), order: VecDeque::new(), by_signer: HashMap::new(), capacity }
    }

    pub fn len(&self) -> usize {
        self.txs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.txs.is_empty()
    }

    /// Whether a transaction of `signer` with `nonce` is pending.
    pub fn has_nonce(&self, signer: &IdentityId, nonce: u64) -> bool {
        self.by_signer.get(signer).is_some_and(|n| n.contains_key(&nonce))
    }

    pub fn contains(&self, id: &TxId) -> bool {
        self.txs.contains_key(id)
    }

    pub fn insert(&mut self, tx: Transaction) -> Result<(), MempoolError> {
        if self.txs.contains_key(&tx.id()) {
            return Err(MempoolError::Duplicate);
        }
        if self.txs.len() >= self.capacity {
            return Err(MempoolError::Full(self.capacity));
        }
        let body = tx.body();
        let nonces = self.by_signer.entry(body.signer).or_default();
        if nonces.contains_key(&body.nonce) {
            return Err(MempoolError::NonceTaken(body.nonce));
        }
        nonces.insert(body.nonce, tx.id());
        self.order.push_back(tx.id());
        self.txs.insert(tx.id(), tx);
        Ok(())
    }

    /// Up to `max` pending transactions in arrival order (cloned; they stay pending until
    /// finalized or removed).
    pub fn candidates(&self, max: usize) -> Vec<Transaction> {
        self.order.iter().filter_map(|id| self.txs.get(id)).take(max).cloned().collect()
    }

    pub fn remove(&mut self, id: &TxId) -> Option<Transaction> {
        let tx = self.txs.remove(id)?;
        let body = tx.body();
        if let Some(nonces) = self.by_signer.get_mut(&body.signer) {
            nonces.remove(&body.nonce);
            if nonces.is_empty() {
                self.by_signer.remove(&body.signer);
            }
        }
        if self.order.len() > 1024 && self.order.len() > 2 * self.txs.len() {
            let txs = &self.txs;
            self.order.retain(|id| txs.contains_key(id));
        }
        Some(tx)
    }

    /// Removes `signer`'s pending transactions with nonces below `next_nonce` (used up),
    /// returning their ids.
    pub fn remove_stale(&mut self, signer: &IdentityId, next_nonce: u64) -> Vec<TxId> {
        let stale: Vec<TxId> = match self.by_signer.get(signer) {
            Some(nonces) => nonces.range(..next_nonce).map(|(_, id)| *id).collect(),
            None => return Vec::new(),
        };
        for id in &stale {
            self.remove(id);
        }
        stale
    }
}

#[cfg(test)]
mod tests {
    use medledger_crypto::Keypair;
    use medledger_ledger::{Payload, tx::sign};
    use medledger_types::Hash;

    use super::*;

    fn tx(keys: &Keypair, nonce: u64) -> Transaction {
        sign(keys, Hash::default(), keys.id(), nonce, Payload::ConsentRevoke { grant_id: TxId([nonce as u8; 32]) })
    }

    #[test]
    fn bounded_dedup_order_and_stale_removal() {
        let a = Keypair::from_label("a");
        let b = Keypair::from_label("b");
        let mut pool = Mempool::new(4);
        pool.insert(tx(&a, 0)).unwrap();
        pool.insert(tx(&b, 0)).unwrap();
        pool.insert(tx(&a, 1)).unwrap();
        assert_eq!(pool.insert(tx(&a, 1)), Err(MempoolError::Duplicate));
        let mut other = tx(&a, 1);
        // Same signer and nonce, different content.
        other = sign(&a, Hash([1; 32]), a.id(), 1, other.body().payload.clone());
        assert_eq!(pool.insert(other), Err(MempoolError::NonceTaken(1)));
        pool.insert(tx(&a, 2)).unwrap();
        assert_eq!(pool.insert(tx(&b, 1)), Err(MempoolError::Full(4)));
        let order: Vec<_> = pool.candidates(10).iter().map(|t| (t.body().signer, t.body().nonce)).collect();
        assert_eq!(order, vec![(a.id(), 0), (b.id(), 0), (a.id(), 1), (a.id(), 2)]);
        assert_eq!(pool.remove_stale(&a.id(), 2).len(), 2);
        assert_eq!(pool.len(), 2);
        assert_eq!(pool.candidates(1).len(), 1);
    }
}
