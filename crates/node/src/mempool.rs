//! Pending transactions: bounded, deduplicated by id and by (signer, nonce), offered to block
//! building in arrival order. Transactions leave when a finalized block includes them, when
//! their nonce is used up by another transaction, when block building finds them invalid, or
//! when they have waited longer than [`MempoolLimits::tx_ttl_ms`].
//!
//! Every budget is per signer, so no identity's transactions crowd out another's: a signer
//! holds at most [`MempoolLimits::txs_per_signer_max`] transactions and
//! [`MempoolLimits::bytes_per_signer_max`] bytes. Everyone but the node itself shares at most
//! the pool's capacity less a reserve kept for the node's own transactions (its audit events
//! and the writes it signs for its organisation), so a flood of others' transactions never
//! stops the node from recording what it decided. Transactions parked behind a nonce gap are
//! never offered to block building (only each signer's run of consecutive nonces from its next
//! one is), so however many wait, they cannot push executable ones out of a block.

use std::collections::{BTreeMap, HashMap, VecDeque};

use medledger_ledger::Transaction;
use medledger_types::{IdentityId, TimestampMs, TxId, limits};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MempoolError {
    #[error("the node's mempool is full ({0} transactions); retry later")]
    Full(usize),
    #[error("this signer already has {pending} transactions ({bytes} bytes) waiting; retry when some commit")]
    SignerOverQuota { pending: usize, bytes: usize },
    #[error(
        "too many transactions wait behind a nonce gap ({parked} of this signer's); submit the missing nonce first"
    )]
    TooManyParked { parked: usize },
    #[error("transaction is already pending")]
    Duplicate,
    #[error("another transaction with nonce {0} from this signer is already pending")]
    NonceTaken(u64),
}

/// The mempool's bounds. Defaults from [`limits`].
#[derive(Debug, Clone, Copy)]
pub struct MempoolLimits {
    /// Most transactions in all.
    pub txs_max: usize,
    /// Most encoded bytes in all.
    pub bytes_max: usize,
    /// Transactions and bytes only the node's own signer may use.
    pub reserved_txs: usize,
    pub reserved_bytes: usize,
    /// Per signer other than the node itself.
    pub txs_per_signer_max: usize,
    pub bytes_per_signer_max: usize,
    /// How long a transaction may wait before it is dropped.
    pub tx_ttl_ms: u64,
    /// Transactions admitted behind a nonce gap (checked only for their signature): per signer
    /// other than the node, and their bytes in all.
    pub parked_per_signer_max: usize,
    pub parked_bytes_max: usize,
}

impl Default for MempoolLimits {
    fn default() -> Self {
        Self {
            txs_max: limits::MEMPOOL_TXS_MAX,
            bytes_max: limits::MEMPOOL_BYTES_MAX,
            reserved_txs: limits::MEMPOOL_TXS_MAX / 4,
            reserved_bytes: limits::MEMPOOL_BYTES_MAX / 4,
            txs_per_signer_max: limits::MEMPOOL_TXS_PER_SIGNER_MAX,
            bytes_per_signer_max: limits::MEMPOOL_BYTES_PER_SIGNER_MAX,
            tx_ttl_ms: limits::MEMPOOL_TX_TTL_MS,
            parked_per_signer_max: limits::MEMPOOL_PARKED_PER_SIGNER_MAX,
            parked_bytes_max: limits::MEMPOOL_PARKED_BYTES_MAX,
        }
    }
}

#[derive(Debug)]
struct Pending {
    tx: Transaction,
    admitted_ms: TimestampMs,
    own: bool,
    /// Admitted behind a nonce gap.
    parked: bool,
}

#[derive(Debug, Default, Clone, Copy)]
struct Usage {
    txs: usize,
    bytes: usize,
    parked_txs: usize,
}

#[derive(Debug)]
pub struct Mempool {
    txs: HashMap<TxId, Pending>,
    /// Arrival order; may hold ids already removed (skipped lazily, compacted when large).
    order: VecDeque<TxId>,
    by_signer: HashMap<IdentityId, BTreeMap<u64, TxId>>,
    usage_by_signer: HashMap<IdentityId, Usage>,
    /// Everything, and everything not the node's own.
    total: Usage,
    others: Usage,
    /// Bytes of parked transactions not the node's own.
    parked_bytes: usize,
    limits: MempoolLimits,
}

impl Default for Mempool {
    fn default() -> Self {
        Self::new(MempoolLimits::default())
    }
}

impl Mempool {
    pub fn new(limits: MempoolLimits) -> Self {
        Self {
            txs: HashMap::new(),
            order: VecDeque::new(),
            by_signer: HashMap::new(),
            usage_by_signer: HashMap::new(),
            total: Usage::default(),
            others: Usage::default(),
            parked_bytes: 0,
            limits,
        }
    }

    pub fn len(&self) -> usize {
        self.txs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.txs.is_empty()
    }

    /// Encoded bytes of every pending transaction.
    pub fn bytes(&self) -> usize {
        self.total.bytes
    }

    pub fn contains(&self, id: &TxId) -> bool {
        self.txs.contains_key(id)
    }

    /// Admits `tx` at `now_ms`; `own` when the node itself signed it (it may use the reserve
    /// and has no per-signer budget beyond the pool's); `next_nonce` is its signer's next nonce
    /// in finalized state: beyond the signer's run of consecutive pending nonces from there, it
    /// waits behind a gap (admitted on its signature alone, so budgeted tighter). Drops expired
    /// transactions first.
    pub fn insert(
        &mut self,
        tx: Transaction,
        now_ms: TimestampMs,
        own: bool,
        next_nonce: u64,
    ) -> Result<(), MempoolError> {
        self.expire(now_ms);
        if self.txs.contains_key(&tx.id()) {
            return Err(MempoolError::Duplicate);
        }
        let size = tx.bytes().len();
        let body = tx.body();
        if self.by_signer.get(&body.signer).is_some_and(|n| n.contains_key(&body.nonce)) {
            return Err(MempoolError::NonceTaken(body.nonce));
        }
        let parked = body.nonce > self.run_end(&body.signer, next_nonce);
        if own {
            if self.total.txs >= self.limits.txs_max || self.total.bytes + size > self.limits.bytes_max {
                return Err(MempoolError::Full(self.limits.txs_max));
            }
        } else {
            let usage = self.usage_by_signer.get(&body.signer).copied().unwrap_or_default();
            if usage.txs >= self.limits.txs_per_signer_max || usage.bytes + size > self.limits.bytes_per_signer_max {
                return Err(MempoolError::SignerOverQuota { pending: usage.txs, bytes: usage.bytes });
            }
            if parked
                && (usage.parked_txs >= self.limits.parked_per_signer_max
                    || self.parked_bytes + size > self.limits.parked_bytes_max)
            {
                return Err(MempoolError::TooManyParked { parked: usage.parked_txs });
            }
            let shared_txs = self.limits.txs_max.saturating_sub(self.limits.reserved_txs);
            let shared_bytes = self.limits.bytes_max.saturating_sub(self.limits.reserved_bytes);
            if self.others.txs >= shared_txs
                || self.others.bytes + size > shared_bytes
                || self.total.txs >= self.limits.txs_max
                || self.total.bytes + size > self.limits.bytes_max
            {
                return Err(MempoolError::Full(self.limits.txs_max));
            }
        }
        let id = tx.id();
        self.by_signer.entry(body.signer).or_default().insert(body.nonce, id);
        let parked = parked && !own;
        let usage = self.usage_by_signer.entry(body.signer).or_default();
        usage.txs += 1;
        usage.bytes += size;
        usage.parked_txs += usize::from(parked);
        self.total.txs += 1;
        self.total.bytes += size;
        if !own {
            self.others.txs += 1;
            self.others.bytes += size;
        }
        if parked {
            self.parked_bytes += size;
        }
        self.order.push_back(id);
        self.txs.insert(id, Pending { tx, admitted_ms: now_ms, own, parked });
        Ok(())
    }

    /// The first nonce after `signer`'s run of consecutive pending nonces from `next_nonce`:
    /// the first from there it has no pending transaction for.
    pub fn run_end(&self, signer: &IdentityId, next_nonce: u64) -> u64 {
        let mut next = next_nonce;
        if let Some(nonces) = self.by_signer.get(signer) {
            for nonce in nonces.range(next_nonce..).map(|(n, _)| *n) {
                if nonce != next {
                    break;
                }
                next += 1;
            }
        }
        next
    }

    /// Up to `max` pending transactions that may execute in a block, in arrival order
    /// (cloned; they stay pending until finalized or removed): each signer's run of
    /// consecutive nonces from `next_nonce(signer)` (its next nonce in finalized state). Those
    /// parked behind a gap are left out.
    pub fn candidates(&self, max: usize, next_nonce: impl Fn(&IdentityId) -> u64) -> Vec<Transaction> {
        let mut run_end: HashMap<IdentityId, u64> = HashMap::new();
        let mut out = Vec::new();
        for id in &self.order {
            if out.len() >= max {
                break;
            }
            let Some(pending) = self.txs.get(id) else { continue };
            let body = pending.tx.body();
            let end =
                *run_end.entry(body.signer).or_insert_with(|| self.run_end(&body.signer, next_nonce(&body.signer)));
            // Below the run: used already (by an unfinalized ancestor or about to be removed);
            // block building skips it as it always has.
            if body.nonce < end {
                out.push(pending.tx.clone());
            }
        }
        out
    }

    pub fn remove(&mut self, id: &TxId) -> Option<Transaction> {
        let pending = self.txs.remove(id)?;
        let body = pending.tx.body();
        let size = pending.tx.bytes().len();
        if let Some(nonces) = self.by_signer.get_mut(&body.signer) {
            nonces.remove(&body.nonce);
            if nonces.is_empty() {
                self.by_signer.remove(&body.signer);
            }
        }
        if pending.parked {
            self.parked_bytes -= size;
        }
        if let Some(usage) = self.usage_by_signer.get_mut(&body.signer) {
            usage.txs -= 1;
            usage.bytes -= size;
            usage.parked_txs -= usize::from(pending.parked);
            if usage.txs == 0 {
                self.usage_by_signer.remove(&body.signer);
            }
        }
        self.total.txs -= 1;
        self.total.bytes -= size;
        if !pending.own {
            self.others.txs -= 1;
            self.others.bytes -= size;
        }
        if self.order.len() > 1024 && self.order.len() > 2 * self.txs.len() {
            let txs = &self.txs;
            self.order.retain(|id| txs.contains_key(id));
        }
        Some(pending.tx)
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

    /// Drops transactions admitted more than the time-to-live before `now_ms` (oldest first),
    /// returning their ids: parked ones whose gap never filled, and any that waited too long.
    pub fn expire(&mut self, now_ms: TimestampMs) -> Vec<TxId> {
        let mut expired = Vec::new();
        while let Some(id) = self.order.front().copied() {
            match self.txs.get(&id) {
                None => {
                    self.order.pop_front();
                }
                Some(p) if p.admitted_ms.saturating_add(self.limits.tx_ttl_ms) <= now_ms => {
                    self.order.pop_front();
                    self.remove(&id);
                    expired.push(id);
                }
                Some(_) => break,
            }
        }
        expired
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

    fn small(txs_max: usize) -> MempoolLimits {
        MempoolLimits {
            txs_max,
            bytes_max: 1 << 20,
            reserved_txs: 0,
            reserved_bytes: 0,
            txs_per_signer_max: 1000,
            bytes_per_signer_max: 1 << 20,
            tx_ttl_ms: 60_000,
            parked_per_signer_max: 1000,
            parked_bytes_max: 1 << 20,
        }
    }

    #[test]
    fn bounded_dedup_order_and_stale_removal() {
        let a = Keypair::from_label("a");
        let b = Keypair::from_label("b");
        let mut pool = Mempool::new(small(4));
        pool.insert(tx(&a, 0), 0, false, 0).unwrap();
        pool.insert(tx(&b, 0), 0, false, 0).unwrap();
        pool.insert(tx(&a, 1), 0, false, 0).unwrap();
        assert_eq!(pool.insert(tx(&a, 1), 0, false, 0), Err(MempoolError::Duplicate));
        let mut other = tx(&a, 1);
        // Same signer and nonce, different content.
        other = sign(&a, Hash([1; 32]), a.id(), 1, other.body().payload.clone());
        assert_eq!(pool.insert(other, 0, false, 0), Err(MempoolError::NonceTaken(1)));
        pool.insert(tx(&a, 2), 0, false, 0).unwrap();
        assert_eq!(pool.insert(tx(&b, 1), 0, false, 0), Err(MempoolError::Full(4)));
        let order: Vec<_> = pool.candidates(10, |_| 0).iter().map(|t| (t.body().signer, t.body().nonce)).collect();
        assert_eq!(order, vec![(a.id(), 0), (b.id(), 0), (a.id(), 1), (a.id(), 2)]);
        assert_eq!(pool.remove_stale(&a.id(), 2).len(), 2);
        assert_eq!(pool.len(), 2);
        assert_eq!(pool.candidates(1, |_| 0).len(), 1);
    }

    #[test]
    fn others_cannot_take_the_room_reserved_for_the_nodes_own_transactions() {
        let limits = MempoolLimits {
            txs_max: 10,
            bytes_max: 1 << 20,
            reserved_txs: 4,
            reserved_bytes: 0,
            txs_per_signer_max: 3,
            bytes_per_signer_max: 1 << 20,
            tx_ttl_ms: 60_000,
            parked_per_signer_max: 1000,
            parked_bytes_max: 1 << 20,
        };
        let mut pool = Mempool::new(limits);
        let (a, b, c, node) =
            (Keypair::from_label("a"), Keypair::from_label("b"), Keypair::from_label("c"), Keypair::from_label("n"));
        for n in 0..3 {
            pool.insert(tx(&a, n), 0, false, 0).unwrap();
        }
        assert!(matches!(pool.insert(tx(&a, 3), 0, false, 0), Err(MempoolError::SignerOverQuota { pending: 3, .. })));
        // Another signer is unaffected by a's budget.
        for n in 0..3 {
            pool.insert(tx(&b, n), 0, false, 0).unwrap();
        }
        // Others share 10 - 4 = 6: full for c, whose own budget is untouched.
        assert_eq!(pool.insert(tx(&c, 0), 0, false, 0), Err(MempoolError::Full(10)));
        // The node's own transactions use the reserve.
        for n in 0..4 {
            pool.insert(tx(&node, n), 0, true, 0).unwrap();
        }
        assert_eq!(pool.insert(tx(&node, 4), 0, true, 0), Err(MempoolError::Full(10)));
        pool.remove_stale(&a.id(), 3);
        pool.insert(tx(&c, 0), 0, false, 0).unwrap();
    }

    #[test]
    fn parked_transactions_are_not_candidates_and_expire() {
        let (a, b) = (Keypair::from_label("a"), Keypair::from_label("b"));
        let mut pool = Mempool::new(small(100));
        // a's next nonce is 0 but it only has 5.. parked; b's run 0, 1 then a gap to 3.
        for n in 5..10 {
            pool.insert(tx(&a, n), 1_000, false, 0).unwrap();
        }
        for n in [0, 1, 3] {
            pool.insert(tx(&b, n), 2_000, false, 0).unwrap();
        }
        let picked: Vec<_> = pool.candidates(100, |_| 0).iter().map(|t| (t.body().signer, t.body().nonce)).collect();
        assert_eq!(picked, vec![(b.id(), 0), (b.id(), 1)]);
        // Once a's gap fills (its next nonce is 5 on-chain), its run is offered.
        assert_eq!(pool.candidates(100, |s| if *s == a.id() { 5 } else { 0 }).len(), 7);
        // Nothing waits forever: a's expire first, then b's.
        assert_eq!(pool.expire(61_000).len(), 5);
        assert_eq!(pool.len(), 3);
        assert_eq!(pool.expire(62_000).len(), 3);
        assert!(pool.is_empty());
        assert_eq!(pool.bytes(), 0);
    }
}
