//! `medledger bench ledger`: drives a one-validator node with pre-signed transactions from
//! concurrent clients and measures durable commit throughput and latency.
//!
//! Clients submit in-process through the same admission path as the HTTP API (decode, size,
//! signature and rule checks, mempool), so HTTP parsing is not part of the figure. A block
//! counts as committed when consensus finalized it and it is fsynced in the node's store.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Result;
use medledger_crypto::Keypair;
use medledger_ledger::{Payload, Transaction, tx::sign};
use medledger_node::{
    chain::{Chain, SubmitError},
    devnet::Devnet,
    mempool::MempoolError,
};
use medledger_types::{Role, TxId};
use serde_json::json;

use crate::{
    init::now_ms,
    run::{RunOptions, open_chain, run},
};

const ORGANISATIONS: usize = 16;

pub struct BenchOptions {
    pub txs: usize,
    pub clients: usize,
    pub dir: Option<PathBuf>,
    pub timeout: Duration,
}

/// Pre-signs the workload: registrations by the organisations (sequential nonces), alternately
/// of a patient (with the patient's own keys: registration is an organisation's act) and of a
/// practitioner. Client `k` gets every organisation `j` with `j % clients == k`, so each
/// signer's nonces stay in order.
fn workload(net: &Devnet, n: usize, clients: usize) -> Vec<Vec<Transaction>> {
    let chain_id = net.genesis.chain_id();
    let per_thread = n.div_ceil(2);
    let make = |range: std::ops::Range<usize>| -> Vec<(usize, Transaction)> {
        range
            .map(|i| {
                let subject = Keypair::from_label(&format!("bench-subject-{i}"));
                let org = &net.organisations[i % ORGANISATIONS];
                let nonce = (i / ORGANISATIONS) as u64;
                let payload = if nonce.is_multiple_of(2) {
                    Payload::register(Role::Patient, &subject, None, "")
                } else {
                    Payload::register(Role::Practitioner, &subject, Some(org.id()), format!("Bench practitioner {i}"))
                };
                (i, sign(org, chain_id, org.id(), nonce, payload))
            })
            .collect()
    };
    let mut all: Vec<(usize, Transaction)> = std::thread::scope(|s| {
        let a = s.spawn(|| make(0..per_thread));
        let b = s.spawn(|| make(per_thread..n));
        let mut v = a.join().expect("signing thread");
        v.extend(b.join().expect("signing thread"));
        v
    });
    all.sort_by_key(|(i, _)| *i);
    let mut streams: Vec<Vec<Transaction>> = vec![Vec::new(); clients];
    for (i, tx) in all {
        // All of one organisation's on one client, in nonce order.
        let client = (i % ORGANISATIONS) % clients;
        streams[client].push(tx);
    }
    streams
}

/// The `p`-th percentile of ascending `sorted` (nearest rank); 0 when empty. Shared by the
/// benchmarks.
pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// `v` rounded to two decimals, for the benchmarks' JSON lines.
pub(crate) fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// Registers `patients` (with their own keys) as organisation `org` does, in rounds that stay
/// within a signer's mempool budget, waiting for each round to commit.
pub(crate) fn register_patients(
    chain: &medledger_node::chain::Chain,
    org: &Keypair,
    patients: &[Keypair],
    deadline: std::time::Duration,
) -> anyhow::Result<()> {
    for round in patients.chunks(medledger_types::limits::MEMPOOL_TXS_PER_SIGNER_MAX / 2) {
        let ids = round
            .iter()
            .map(|p| chain.submit_as(org, Payload::register(Role::Patient, p, None, ""), now_ms()))
            .collect::<Result<Vec<_>, _>>()?;
        wait_committed(chain, &ids, deadline)?;
    }
    Ok(())
}

/// Waits until every id is committed (or `deadline` passes); a rejection is an error.
pub(crate) fn wait_committed(
    chain: &medledger_node::chain::Chain,
    ids: &[medledger_types::TxId],
    deadline: std::time::Duration,
) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    for id in ids {
        loop {
            match chain.tx_status(id)? {
                medledger_node::chain::TxStatus::Committed { .. } => break,
                medledger_node::chain::TxStatus::Rejected { reason } => {
                    anyhow::bail!("benchmark transaction rejected: {reason}")
                }
                _ if started.elapsed() > deadline => anyhow::bail!("benchmark transactions not committed in time"),
                _ => std::thread::sleep(std::time::Duration::from_millis(5)),
            }
        }
    }
    Ok(())
}

struct Progress {
    submit_ns: Vec<AtomicU64>,
    commit_ns: Vec<AtomicU64>,
    committed: AtomicUsize,
    refused: AtomicUsize,
    blocks: AtomicU64,
    done: AtomicBool,
}

pub fn bench_ledger(opts: BenchOptions) -> Result<()> {
    anyhow::ensure!(opts.txs > 0 && opts.clients > 0, "--txs and --clients must be positive");
    let temp = tempfile::tempdir()?;
    let dir = opts.dir.clone().unwrap_or_else(|| temp.path().to_owned());
    let names: Vec<String> = (0..ORGANISATIONS).map(|i| format!("Bench Org {i}")).collect();
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let net = Devnet::new("medledger.bench", now_ms(), &name_refs, 1, &mut |l| Keypair::from_label(l));
    eprintln!("bench: signing {} transactions for {} clients ...", opts.txs, opts.clients);
    let streams = workload(&net, opts.txs, opts.clients);
    let index: HashMap<TxId, usize> = streams.iter().flatten().enumerate().map(|(i, tx)| (tx.id(), i)).collect();
    let node_keys = net.validators[0].clone();
    let chain = open_chain(&dir, &net.genesis, node_keys.clone())?;
    let p2p = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let run_opts = RunOptions {
        organisation_keys: None,
        p2p_listen: p2p,
        api_listen: "127.0.0.1:0".parse()?,
        peers: vec![(node_keys.public_key(), p2p)],
        worker_threads: 2,
        public_url: None,
    };
    let total = opts.txs;
    let progress = Arc::new(Progress {
        submit_ns: (0..total).map(|_| AtomicU64::new(0)).collect(),
        commit_ns: (0..total).map(|_| AtomicU64::new(0)).collect(),
        committed: AtomicUsize::new(0),
        refused: AtomicUsize::new(0),
        blocks: AtomicU64::new(0),
        done: AtomicBool::new(false),
    });
    let started = Instant::now();
    let result = Arc::new(std::sync::Mutex::new(None));
    let (progress2, result2, timeout) = (progress.clone(), result.clone(), opts.timeout);
    run(&dir, chain, &node_keys, run_opts, move |running| async move {
        let chain = running.chain;
        let outcome = tokio::task::spawn_blocking(move || drive(chain, streams, index, progress2, started, timeout));
        let outcome = outcome.await.map_err(|e| anyhow::anyhow!("benchmark driver panicked: {e}"));
        *result2.lock().expect("result lock") = Some(outcome.and_then(|r| r));
        true
    })?;
    let elapsed = result.lock().expect("result lock").take().unwrap_or_else(|| Err(anyhow::anyhow!("no result")))?;
    let committed = progress.committed.load(Ordering::Relaxed);
    let mut latencies: Vec<f64> = (0..total)
        .filter_map(|i| {
            let (s, c) = (progress.submit_ns[i].load(Ordering::Relaxed), progress.commit_ns[i].load(Ordering::Relaxed));
            (s > 0 && c > 0).then(|| c.saturating_sub(s) as f64 / 1e6)
        })
        .collect();
    latencies.sort_by(|a, b| a.total_cmp(b));
    let first_submit =
        (0..total).map(|i| progress.submit_ns[i].load(Ordering::Relaxed)).filter(|&v| v > 0).min().unwrap_or(0);
    let last_commit = (0..total).map(|i| progress.commit_ns[i].load(Ordering::Relaxed)).max().unwrap_or(0);
    let window_s = (last_commit.saturating_sub(first_submit)) as f64 / 1e9;
    let tps = if window_s > 0.0 { committed as f64 / window_s } else { 0.0 };
    let blocks = progress.blocks.load(Ordering::Relaxed);
    eprintln!(
        "bench: {committed}/{total} committed in {window_s:.2} s over {blocks} blocks ({} refused at submission), wall {:.2} s",
        progress.refused.load(Ordering::Relaxed),
        elapsed.as_secs_f64()
    );
    let report = json!({
        "benchmark": "ledger",
        "transactions": total,
        "committed": committed,
        "clients": opts.clients,
        "blocks": blocks,
        "durable": true,
        "committed_tps": (tps * 10.0).round() / 10.0,
        "commit_latency_ms": {
            "p50": (percentile(&latencies, 50.0) * 100.0).round() / 100.0,
            "p99": (percentile(&latencies, 99.0) * 100.0).round() / 100.0,
        },
    });
    println!("{report}");
    anyhow::ensure!(committed == total, "only {committed} of {total} transactions committed");
    Ok(())
}

fn drive(
    chain: Arc<Chain>,
    streams: Vec<Vec<Transaction>>,
    index: HashMap<TxId, usize>,
    progress: Arc<Progress>,
    started: Instant,
    timeout: Duration,
) -> Result<Duration> {
    let total = index.len();
    let index = Arc::new(index);
    std::thread::scope(|s| {
        for stream in &streams {
            let (chain, progress, index) = (&chain, &progress, &index);
            s.spawn(move || {
                for tx in stream {
                    loop {
                        match chain.submit(tx.bytes(), now_ms()) {
                            Ok(_) => {
                                progress.submit_ns[index[&tx.id()]]
                                    .store(started.elapsed().as_nanos() as u64 + 1, Ordering::Relaxed);
                                break;
                            }
                            // Back-pressure: wait for the chain to catch up.
                            Err(SubmitError::Mempool(MempoolError::Full(_) | MempoolError::SignerOverQuota { .. }))
                            | Err(SubmitError::Invalid(medledger_ledger::TxError::NonceAhead { .. })) => {
                                if progress.done.load(Ordering::Relaxed) {
                                    return;
                                }
                                std::thread::sleep(Duration::from_millis(1));
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "benchmark transaction refused");
                                progress.refused.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                        }
                    }
                }
            });
        }
        // Commit observer: stamps each transaction when its block is durably applied.
        let mut seen = 0;
        let mut last_report = Instant::now();
        while progress.committed.load(Ordering::Relaxed) + progress.refused.load(Ordering::Relaxed) < total {
            if started.elapsed() > timeout {
                progress.done.store(true, Ordering::Relaxed);
                break;
            }
            let height = chain.head().height;
            while seen < height {
                seen += 1;
                if let Ok(Some(block)) = chain.block(seen) {
                    let now = started.elapsed().as_nanos() as u64 + 1;
                    for tx in &block.txs {
                        if let Some(&i) = index.get(&tx.id()) {
                            progress.commit_ns[i].store(now, Ordering::Relaxed);
                        }
                    }
                    progress.committed.fetch_add(block.txs.len(), Ordering::Relaxed);
                    progress.blocks.fetch_add(1, Ordering::Relaxed);
                }
            }
            if last_report.elapsed() > Duration::from_secs(2) {
                eprintln!(
                    "bench: {} committed, height {}, mempool {}",
                    progress.committed.load(Ordering::Relaxed),
                    height,
                    chain.mempool_len()
                );
                last_report = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        progress.done.store(true, Ordering::Relaxed);
    });
    Ok(started.elapsed())
}
