//! Commit notifications: whoever waits for a transaction's outcome (a FHIR create answered
//! once committed, a Bundle, the CLI's `--wait`) registers a one-shot receiver and is told when
//! the transaction commits or is rejected, instead of polling the store.
//!
//! Bounded: a receiver dropped without an outcome (its caller timed out, the transaction expired
//! from the mempool) leaves a closed sender, and closed senders are swept whenever the map
//! grows past [`SWEEP_AT`] entries, so the map holds at most the live waiters plus that many.

use std::collections::HashMap;

use futures::channel::oneshot;
use medledger_ledger::Block;
use medledger_types::TxId;

use crate::{
    chain::TxStatus,
    locks::{OrderedMutex, rank},
};

/// Entries past which closed senders are swept on the next registration.
pub const SWEEP_AT: usize = 1024;

pub struct CommitWatchers {
    waiters: OrderedMutex<HashMap<TxId, Vec<oneshot::Sender<TxStatus>>>>,
}

impl Default for CommitWatchers {
    fn default() -> Self {
        Self { waiters: OrderedMutex::new(rank::CHAIN_COMMIT_WATCHERS, "commit watchers", HashMap::new()) }
    }
}

impl CommitWatchers {
    /// A receiver told `id`'s outcome (committed or rejected) once it is known.
    pub fn register(&self, id: TxId) -> oneshot::Receiver<TxStatus> {
        let (sender, receiver) = oneshot::channel();
        let mut waiters = self.waiters.lock();
        if waiters.len() >= SWEEP_AT {
            waiters.retain(|_, senders| {
                senders.retain(|s| !s.is_canceled());
                !senders.is_empty()
            });
        }
        waiters.entry(id).or_default().push(sender);
        receiver
    }

    /// Tells everyone waiting for `id` its outcome.
    pub fn resolve(&self, id: &TxId, status: &TxStatus) {
        let senders = self.waiters.lock().remove(id);
        for sender in senders.into_iter().flatten() {
            let _ = sender.send(status.clone());
        }
    }

    /// Tells everyone waiting for a transaction of `block` (just finalized) that it committed.
    pub fn resolve_block(&self, block: &Block) {
        let mut waiters = self.waiters.lock();
        if waiters.is_empty() {
            return;
        }
        let first_log_index = block.header.log_size - u64::from(block.header.tx_count);
        for (index, tx) in block.txs.iter().enumerate() {
            if let Some(senders) = waiters.remove(&tx.id()) {
                let status = TxStatus::Committed {
                    height: block.height(),
                    index: index as u32,
                    log_index: first_log_index + index as u64,
                };
                for sender in senders {
                    let _ = sender.send(status.clone());
                }
            }
        }
    }

    /// Receivers registered and not yet told (closed ones included until swept).
    pub fn len(&self) -> usize {
        self.waiters.lock().values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
