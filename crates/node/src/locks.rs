//! The lock order of the node and its record service, checked.
//!
//! Every lock of `Chain` and of the record service has a rank ([`rank`]); a thread may take a
//! lock only while every lock it already holds has a lower rank. Two threads that both follow
//! the order cannot deadlock on these locks, and a thread never takes a read lock it already
//! holds (a second read of a `std::sync::RwLock` can deadlock behind a waiting writer). Debug
//! builds check the order on every acquisition and panic on a violation, so the test suite
//! catches one; release builds compile the check away. The table is in ARCHITECTURE.md.
//!
//! A poisoned lock (a thread panicked while holding it) is taken anyway: every structure behind
//! these locks is left consistent between statements, and a node that stops serving because one
//! request panicked would turn a bug into an outage.

use std::{
    ops::{Deref, DerefMut},
    sync::{Mutex, MutexGuard, PoisonError},
};

/// The ranks, lowest first: take locks in this order.
pub mod rank {
    /// `RecordService`: key wraps submitted and not yet committed (held while wrapping).
    pub const RECORD_INFLIGHT_SHARES: u8 = 10;
    /// `RecordService`: category keys created or unwrapped, by key id and epoch.
    pub const RECORD_CATEGORY_KEYS: u8 = 11;
    /// `RecordService`: versions being committed, per record.
    pub const RECORD_PENDING_VERSIONS: u8 = 12;
    /// `Chain`: one local signer at a time picks nonces.
    pub const CHAIN_LOCAL_SIGNING: u8 = 20;
    /// `Chain`: block application, one writer at a time (readers take snapshots, no lock).
    pub const CHAIN_APPLY: u8 = 21;
    /// `Chain`: executed unfinalized blocks, by hash.
    pub const CHAIN_UNFINALIZED: u8 = 22;
    /// `Chain`: pending transactions.
    pub const CHAIN_MEMPOOL: u8 = 23;
    /// `Chain`: recently rejected transactions and why.
    pub const CHAIN_REJECTIONS: u8 = 24;
    /// `Chain`: why the node halted, if it did.
    pub const CHAIN_HALTED: u8 = 26;
    /// `Chain`: who waits for which transaction's outcome (told while block application holds
    /// the locks above).
    pub const CHAIN_COMMIT_WATCHERS: u8 = 27;
}

#[cfg(debug_assertions)]
mod check {
    use std::cell::RefCell;

    thread_local! {
        /// The ranks and names of the locks this thread holds, in acquisition order.
        static HELD: RefCell<Vec<(u8, &'static str)>> = const { RefCell::new(Vec::new()) };
    }

    pub fn acquire(rank: u8, name: &'static str) {
        HELD.with(|held| {
            let mut held = held.borrow_mut();
            if let Some(&(top, top_name)) = held.iter().max_by_key(|(r, _)| *r)
                && top >= rank
            {
                panic!("lock order violation: taking {name} (rank {rank}) while holding {top_name} (rank {top})");
            }
            held.push((rank, name));
        });
    }

    pub fn release(rank: u8) {
        HELD.with(|held| {
            let mut held = held.borrow_mut();
            if let Some(at) = held.iter().rposition(|(r, _)| *r == rank) {
                held.remove(at);
            }
        });
    }
}

#[cfg(not(debug_assertions))]
mod check {
    #[inline(always)]
    pub fn acquire(_: u8, _: &'static str) {}
    #[inline(always)]
    pub fn release(_: u8) {}
}

/// Releases its rank when the guard it sits in is dropped.
struct Held(u8);

impl Drop for Held {
    fn drop(&mut self) {
        check::release(self.0);
    }
}

/// A mutex with a rank in the lock order.
pub struct OrderedMutex<T> {
    rank: u8,
    name: &'static str,
    inner: Mutex<T>,
}

/// A held [`OrderedMutex`].
pub struct MutexLock<'a, T> {
    guard: MutexGuard<'a, T>,
    _held: Held,
}

impl<T> OrderedMutex<T> {
    pub fn new(rank: u8, name: &'static str, value: T) -> Self {
        Self { rank, name, inner: Mutex::new(value) }
    }

    pub fn lock(&self) -> MutexLock<'_, T> {
        check::acquire(self.rank, self.name);
        let held = Held(self.rank);
        MutexLock { guard: self.inner.lock().unwrap_or_else(PoisonError::into_inner), _held: held }
    }
}

impl<T> Deref for MutexLock<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T> DerefMut for MutexLock<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_taken_in_order_pass_and_released_ranks_are_forgotten() {
        let (low, high) = (OrderedMutex::new(1, "low", ()), OrderedMutex::new(2, "high", ()));
        {
            let _a = low.lock();
            let _b = high.lock();
        }
        // Released: the high lock alone, then the low one again, are fine.
        drop(high.lock());
        drop(low.lock());
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "lock order violation: taking low (rank 1) while holding high (rank 2)")]
    fn taking_a_lower_lock_while_holding_a_higher_one_panics() {
        let (low, high) = (OrderedMutex::new(1, "low", ()), OrderedMutex::new(2, "high", ()));
        let _b = high.lock();
        let _a = low.lock();
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "lock order violation: taking mempool (rank 3) while holding mempool (rank 3)")]
    fn taking_a_lock_twice_on_one_thread_panics() {
        let pool = OrderedMutex::new(3, "mempool", ());
        let _first = pool.lock();
        let _second = pool.lock();
    }
}
