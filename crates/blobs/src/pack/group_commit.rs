//! Group commit for the pack store: writers that have appended wait for one `fdatasync` that
//! started after their append, and one sync serves everyone waiting (see [`GroupCommit`]).
//!
//! Invariant: a waiter returns `Ok` only once a sync that *started* after its append has
//! completed; after any failed or panicking sync, every waiter fails, for good.

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

/// Group commit: callers that have appended wait until a sync that started after their append
/// has completed. One waiter at a time becomes the leader and runs the sync; everyone whose
/// append it covered returns when it completes, and those who appended while it ran wait for
/// the next one, which one of them leads. So one sync serves every writer that arrived during
/// the previous one, and the number of syncs tracks sync latency, not the number of writers.
///
/// A failed (or panicking) sync poisons it for good: after a failed `fdatasync` the kernel may
/// have dropped the dirty pages and marked them clean, and a retry would report success.
pub(super) struct GroupCommit {
    state: Mutex<GroupState>,
    synced: Condvar,
}

struct GroupState {
    /// Every append with a sequence number up to this is durable.
    durable_seq: u64,
    syncing: bool,
    poisoned: bool,
}

#[derive(Debug)]
pub(super) enum GroupError<E> {
    /// This caller led a sync and it failed.
    SyncFailed(E),
    /// A sync failed before (or while this caller waited).
    Poisoned,
}

/// Ends a leader's turn: on drop without [`LeaderTurn::finish`] (the sync panicked) it poisons
/// the group, so waiters wake up and fail instead of waiting for a sync that will not finish.
struct LeaderTurn<'a> {
    group: &'a GroupCommit,
    finished: bool,
}

impl LeaderTurn<'_> {
    /// Publishes the outcome: everything up to `covered_seq` is durable, or (`None`) the sync
    /// failed and the group is poisoned. Wakes every waiter either way.
    fn finish(mut self, covered_seq: Option<u64>) {
        self.finished = true;
        let mut state = self.group.lock();
        state.syncing = false;
        match covered_seq {
            Some(seq) => state.durable_seq = state.durable_seq.max(seq),
            None => state.poisoned = true,
        }
        drop(state);
        self.group.synced.notify_all();
    }
}

impl Drop for LeaderTurn<'_> {
    fn drop(&mut self) {
        if !self.finished {
            let mut state = self.group.lock();
            state.syncing = false;
            state.poisoned = true;
            drop(state);
            self.group.synced.notify_all();
        }
    }
}

impl GroupCommit {
    pub(super) fn new() -> Self {
        Self {
            state: Mutex::new(GroupState { durable_seq: 0, syncing: false, poisoned: false }),
            synced: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, GroupState> {
        // Every update of the state is a few plain assignments that cannot panic midway.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn is_poisoned(&self) -> bool {
        self.lock().poisoned
    }

    pub(super) fn poison(&self) {
        self.lock().poisoned = true;
        self.synced.notify_all();
    }

    /// Returns once append `seq` is durable. `sync`, run by the leader, must note the highest
    /// sequence number appended so far *before* it starts flushing, flush, and return that
    /// number: everything up to it was in the page cache when the flush began.
    pub(super) fn wait_durable<E>(
        &self,
        seq: u64,
        sync: &mut dyn FnMut() -> Result<u64, E>,
    ) -> Result<(), GroupError<E>> {
        let mut state = self.lock();
        loop {
            if state.poisoned {
                return Err(GroupError::Poisoned);
            }
            if state.durable_seq >= seq {
                return Ok(());
            }
            if state.syncing {
                state = self.synced.wait(state).unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            state.syncing = true;
            drop(state);
            let turn = LeaderTurn { group: self, finished: false };
            match sync() {
                Ok(covered_seq) => turn.finish(Some(covered_seq)),
                Err(e) => {
                    turn.finish(None);
                    return Err(GroupError::SyncFailed(e));
                }
            }
            state = self.lock();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::atomic::{AtomicBool, AtomicU64, Ordering},
        thread,
        time::Duration,
    };

    use super::*;

    /// The group-commit rule with a fake sync: every writer returns only after a sync that
    /// started after its write completed, syncs never overlap, and they are shared.
    #[test]
    fn group_commit_returns_only_after_a_sync_that_started_after_the_write() {
        const THREADS: u64 = 16;
        const WRITES_PER_THREAD: u64 = 25;
        let group = GroupCommit::new();
        // A logical clock orders writes, sync starts and ends, and returns.
        let clock = AtomicU64::new(0);
        let appended = Mutex::new(0u64);
        let syncs = Mutex::new(Vec::<(u64, u64)>::new());
        let in_sync = AtomicBool::new(false);
        thread::scope(|scope| {
            for _ in 0..THREADS {
                scope.spawn(|| {
                    for _ in 0..WRITES_PER_THREAD {
                        let (seq, written_at) = {
                            let mut appended = appended.lock().unwrap();
                            *appended += 1;
                            (*appended, clock.fetch_add(1, Ordering::SeqCst))
                        };
                        let mut sync = || -> Result<u64, ()> {
                            assert!(!in_sync.swap(true, Ordering::SeqCst), "two syncs at once");
                            // As the store's sync does: note what is covered, then start the
                            // flush; the flush's start is what must come after the write.
                            let covered = *appended.lock().unwrap();
                            let started_at = clock.fetch_add(1, Ordering::SeqCst);
                            thread::sleep(Duration::from_micros(300));
                            in_sync.store(false, Ordering::SeqCst);
                            syncs.lock().unwrap().push((started_at, clock.fetch_add(1, Ordering::SeqCst)));
                            Ok(covered)
                        };
                        group.wait_durable(seq, &mut sync).unwrap();
                        let returned_at = clock.fetch_add(1, Ordering::SeqCst);
                        let syncs = syncs.lock().unwrap();
                        assert!(
                            syncs.iter().any(|&(started, ended)| started > written_at && ended < returned_at),
                            "write at {written_at} returned at {returned_at} without a sync after it: {syncs:?}"
                        );
                    }
                });
            }
        });
        let writes = THREADS * WRITES_PER_THREAD;
        let syncs = syncs.lock().unwrap().len() as u64;
        eprintln!("{writes} writes, {syncs} syncs");
        assert!(syncs < writes, "{syncs} syncs for {writes} writes");
    }

    #[test]
    fn failed_or_panicking_sync_poisons_the_group() {
        let group = GroupCommit::new();
        let mut ok = || -> Result<u64, &'static str> { Ok(1) };
        group.wait_durable(1, &mut ok).unwrap();

        // A writer waiting for the failing sync fails too, instead of waiting forever.
        let started = std::sync::Barrier::new(2);
        thread::scope(|scope| {
            let leader = scope.spawn(|| {
                let mut failing = || -> Result<u64, &'static str> {
                    started.wait();
                    thread::sleep(Duration::from_millis(50));
                    Err("disk on fire")
                };
                group.wait_durable(2, &mut failing)
            });
            started.wait();
            let mut never = || -> Result<u64, &'static str> { panic!("a poisoned group never syncs") };
            assert!(matches!(group.wait_durable(3, &mut never), Err(GroupError::Poisoned)));
            assert!(matches!(leader.join().unwrap(), Err(GroupError::SyncFailed("disk on fire"))));
        });
        // Even for appends that were durable before: the store refuses everything.
        assert!(matches!(group.wait_durable(1, &mut ok), Err(GroupError::Poisoned)));

        let group = GroupCommit::new();
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut panicking = || -> Result<u64, ()> { panic!("sync panicked") };
            group.wait_durable(1, &mut panicking)
        }));
        assert!(panicked.is_err());
        assert!(group.is_poisoned());
    }
}
