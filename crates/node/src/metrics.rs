//! Node metrics as plain atomics, rendered in the Prometheus text format by the API.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }

    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }

    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Default)]
pub struct Metrics {
    pub txs_submitted: Counter,
    pub txs_refused: Counter,
    pub txs_dropped: Counter,
    pub txs_committed: Counter,
    pub blocks_proposed: Counter,
    pub blocks_rejected: Counter,
    pub height: Gauge,
    pub log_size: Gauge,
    pub mempool_txs: Gauge,
}

impl Metrics {
    pub fn set_head(&self, height: u64, log_size: u64) {
        self.height.set(height as i64);
        self.log_size.set(log_size as i64);
    }

    /// Prometheus text exposition (version 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut counter = |name: &str, help: &str, v: u64| {
            out.push_str(&format!(
                "# HELP medledger_{name} {help}\n# TYPE medledger_{name} counter\nmedledger_{name} {v}\n"
            ));
        };
        counter("txs_submitted_total", "Transactions admitted to the mempool.", self.txs_submitted.get());
        counter("txs_refused_total", "Transactions refused at submission.", self.txs_refused.get());
        counter(
            "txs_dropped_total",
            "Pending transactions dropped as invalid at block building.",
            self.txs_dropped.get(),
        );
        counter(
            "txs_committed_total",
            "Transactions in finalized blocks applied by this node.",
            self.txs_committed.get(),
        );
        counter("blocks_proposed_total", "Blocks this node proposed.", self.blocks_proposed.get());
        counter("blocks_rejected_total", "Proposed blocks this node refused to vote for.", self.blocks_rejected.get());
        let mut gauge = |name: &str, help: &str, v: i64| {
            out.push_str(&format!(
                "# HELP medledger_{name} {help}\n# TYPE medledger_{name} gauge\nmedledger_{name} {v}\n"
            ));
        };
        gauge("height", "Height of the latest finalized block.", self.height.get());
        gauge("log_size", "Leaves in the transaction log.", self.log_size.get());
        gauge("mempool_txs", "Transactions waiting in the mempool.", self.mempool_txs.get());
        out
    }
}
