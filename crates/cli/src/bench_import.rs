//! `medledger bench fhir-import`: FHIR import over HTTP on a one-validator node.
//!
//! 1. Synthea: the transaction Bundles of `testdata/fhir/synthea-r4` (7 patients with their
//!    encounters, observations, claims, …, plus the hospital and practitioner directories),
//!    posted `--copies` times from `--clients` threads. Each Bundle is one all-or-nothing
//!    ledger transaction, answered once committed; every copy of a patient Bundle is a new
//!    patient. Resources/s over the whole window, and per-Bundle latency.
//! 2. Bulk NDJSON: `testdata/fhir/bulk-ndjson-10-patients` (7,160 resources, 10,037
//!    conditional references) through the same importer as `medledger fhir import`: 4 patients
//!    at a time, chunks of 500.
//!
//! The load generator shares the machine with the node. The last line is JSON.

use std::{
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use medledger_api::smart::{Grant, parse_scope};
use medledger_crypto::Keypair;
use medledger_ledger::Payload;
use medledger_node::devnet::Devnet;
use medledger_types::Role;
use serde_json::json;

use crate::{
    bench::{percentile, round2, wait_committed},
    fhir_import::{FhirClient, Imported, import_paths},
    init::now_ms,
    run::{RunOptions, open_chain, run},
};

pub struct ImportBenchOptions {
    pub copies: usize,
    pub clients: usize,
    pub synthea_dir: PathBuf,
    pub ndjson_dir: PathBuf,
}

struct Figures {
    synthea_resources: usize,
    synthea_bundles: usize,
    synthea_window_s: f64,
    synthea_failures: usize,
    bundle_latency_ms: Vec<f64>,
    ndjson: Imported,
}

/// Where the repository's test data is, for the defaults.
pub fn testdata(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/fhir").join(path)
}

pub fn bench_import(opts: ImportBenchOptions) -> Result<()> {
    anyhow::ensure!(opts.copies > 0 && opts.clients > 0, "counts must be positive");
    let mut bundles = Vec::new();
    for entry in std::fs::read_dir(&opts.synthea_dir).with_context(|| format!("{}", opts.synthea_dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|x| x == "json") {
            let text = std::fs::read_to_string(&path)?;
            let entries = serde_json::from_str::<serde_json::Value>(&text)?["entry"].as_array().map_or(0, Vec::len);
            bundles.push((text, entries));
        }
    }
    anyhow::ensure!(!bundles.is_empty(), "no Bundles (*.json) in {}", opts.synthea_dir.display());
    let temp = tempfile::tempdir()?;
    let dir = temp.path().to_owned();
    let net = Devnet::new("medledger.bench-import", now_ms(), &["Bench Hospital"], 1, &mut |l| Keypair::from_label(l));
    let node_keys = net.validators[0].clone();
    let chain = open_chain(&dir, &net.genesis, node_keys.clone())?;
    let p2p = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let run_opts = RunOptions {
        organisation_keys: Some(net.organisations[0].clone()),
        p2p_listen: p2p,
        api_listen: "127.0.0.1:0".parse()?,
        peers: vec![(node_keys.public_key(), p2p)],
        worker_threads: 2,
        public_url: None,
    };
    let (copies, clients) = (opts.copies, opts.clients);
    let result = Arc::new(Mutex::new(None));
    let result2 = result.clone();
    run(&dir, chain, &node_keys, run_opts, move |running| async move {
        let outcome = tokio::task::spawn_blocking(move || drive(&net, &running, &bundles, &opts)).await;
        *result2.lock().expect("result lock") =
            Some(outcome.map_err(|e| anyhow::anyhow!("driver panicked: {e}")).and_then(|r| r));
        true
    })?;
    let f = result.lock().expect("result lock").take().unwrap_or_else(|| Err(anyhow::anyhow!("no result")))?;
    let mut latency = f.bundle_latency_ms.clone();
    latency.sort_by(|a, b| a.total_cmp(b));
    eprintln!(
        "bench: {} Synthea resources in {} Bundles in {:.2} s; {} NDJSON resources in {} Bundles in {:.2} s",
        f.synthea_resources,
        f.synthea_bundles,
        f.synthea_window_s,
        f.ndjson.resources,
        f.ndjson.bundles,
        f.ndjson.seconds
    );
    println!(
        "{}",
        json!({
            "benchmark": "fhir-import",
            "clients": clients,
            "copies": copies,
            "synthea_bundles": f.synthea_bundles,
            "synthea_failures": f.synthea_failures,
            "synthea_resources": f.synthea_resources,
            "synthea_resources_per_s": round2(f.synthea_resources as f64 / f.synthea_window_s.max(1e-9)),
            "bundle_latency_ms": {"p50": round2(percentile(&latency, 50.0)), "p99": round2(percentile(&latency, 99.0))},
            "ndjson_resources": f.ndjson.resources,
            "ndjson_bundles": f.ndjson.bundles,
            "ndjson_resources_per_s": round2(f.ndjson.resources as f64 / f.ndjson.seconds.max(1e-9)),
            "transport": "http (transaction Bundles, each committed before its answer)",
        })
    );
    Ok(())
}

fn drive(
    net: &Devnet,
    running: &crate::run::Running,
    bundles: &[(String, usize)],
    opts: &ImportBenchOptions,
) -> Result<Figures> {
    let chain = &running.chain;
    let hospital = &net.organisations[0];
    let doc = Keypair::from_label("bench-import-doctor");
    let tx = chain.submit_as(
        hospital,
        Payload::register(Role::Practitioner, &doc, Some(hospital.id()), "Importer"),
        now_ms(),
    )?;
    wait_committed(chain, &[tx], Duration::from_secs(60))?;
    let token = running.tokens.issue(Grant {
        identity: doc.id(),
        role: Role::Practitioner,
        signing_key: doc.public_key(),
        scopes: vec![parse_scope("user/*.cruds").expect("scope parses")],
        expires_ms: now_ms() + 3_600_000,
    });
    let base = format!("http://{}", running.api);
    let total = bundles.len() * opts.copies;
    eprintln!("bench: posting {total} Synthea transaction Bundles from {} clients ...", opts.clients);
    let next = AtomicUsize::new(0);
    let (resources, failures) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let latencies: Mutex<Vec<f64>> = Mutex::new(Vec::with_capacity(total));
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..opts.clients {
            let (next, resources, failures, latencies) = (&next, &resources, &failures, &latencies);
            let client = FhirClient::with_token(&base, &token);
            s.spawn(move || {
                let mut local = Vec::new();
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= total {
                        break;
                    }
                    let (body, entries) = &bundles[n % bundles.len()];
                    let t = Instant::now();
                    match client.post_bundle(body) {
                        Ok(_) => {
                            local.push(t.elapsed().as_secs_f64() * 1e3);
                            resources.fetch_add(*entries, Ordering::Relaxed);
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "benchmark Bundle failed");
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                latencies.lock().expect("lock").extend(local);
            });
        }
    });
    let synthea_window_s = started.elapsed().as_secs_f64();
    eprintln!("bench: importing the bulk NDJSON set ...");
    let client = FhirClient::with_token(&base, &token);
    let ndjson = import_paths(&client, std::slice::from_ref(&opts.ndjson_dir), 500, 4, false)?;
    let bundle_latency_ms = latencies.into_inner().expect("lock");
    Ok(Figures {
        synthea_resources: resources.into_inner(),
        synthea_bundles: bundle_latency_ms.len(),
        synthea_window_s,
        synthea_failures: failures.into_inner(),
        bundle_latency_ms,
        ndjson,
    })
}
