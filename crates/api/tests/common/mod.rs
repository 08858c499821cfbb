//! Shared by the API tests.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use medledger_node::chain::Chain;
use medledger_types::IdentityId;

pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

/// Finalizes whatever is pending every few milliseconds, as a one-validator chain would, until
/// dropped: writes that wait for their commit then get one.
pub struct Committer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Committer {
    pub fn start(chain: Arc<Chain>, proposer: IdentityId) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                medledger_node::devnet::commit_pending(&chain, proposer, now_ms()).unwrap();
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        });
        Self { stop, thread: Some(thread) }
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
