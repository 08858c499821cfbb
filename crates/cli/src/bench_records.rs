//! `medledger bench records`: record writes (encrypt, wrap, store, commit durably) and
//! authorized reads (consent decision, fetch, unwrap, decrypt, access event) from concurrent
//! clients against a one-validator node. By default in-process through the node's record
//! service (the path the HTTP API takes, without HTTP parsing and request-signature checks);
//! with `--http`, every request is a signed HTTP request to the node's API on loopback, from
//! client threads in the same process.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use medledger_crypto::Keypair;
use medledger_ledger::{Payload, Purpose, Scope, actions, tx::sign};
use medledger_node::{chain::Chain, devnet::Devnet};
use medledger_records::{RecordError, RecordService, WriteRequest};
use medledger_types::{RecordId, Role, TxId};

use serde_json::json;

use crate::{
    bench::{percentile, round2, wait_committed},
    init::now_ms,
    run::{RunOptions, open_chain, run},
};

pub struct RecordBenchOptions {
    pub writes: usize,
    pub reads: usize,
    pub clients: usize,
    pub patients: usize,
    pub dir: Option<PathBuf>,
    /// Drive the node over its HTTP API instead of in-process.
    pub http: bool,
}

struct Report {
    writes_committed: usize,
    write_window_s: f64,
    write_latency_ms: Vec<f64>,
    reads_done: usize,
    reads_refused: usize,
    read_window_s: f64,
    read_latency_ms: Vec<f64>,
    audit_drain_s: f64,
}

pub fn bench_records(opts: RecordBenchOptions) -> Result<()> {
    anyhow::ensure!(opts.writes > 0 && opts.clients > 0 && opts.patients > 0, "counts must be positive");
    let temp = tempfile::tempdir()?;
    let dir = opts.dir.clone().unwrap_or_else(|| temp.path().to_owned());
    let net = Devnet::new("medledger.bench-records", now_ms(), &["Bench Hospital", "Bench Clinic"], 1, &mut |l| {
        Keypair::from_label(l)
    });
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
    let clients = opts.clients;
    let result = Arc::new(std::sync::Mutex::new(None));
    let result2 = result.clone();
    let http = opts.http;
    run(&dir, chain, &node_keys, run_opts, move |running| async move {
        let (chain, api, records) = (running.chain, running.api, running.records);
        let outcome = tokio::task::spawn_blocking(move || {
            let records = records.context("the bench node serves records")?;
            let transport = if opts.http { Transport::Http(format!("http://{api}")) } else { Transport::InProcess };
            drive(&net, &chain, &records, &opts, &transport)
        })
        .await;
        *result2.lock().expect("result lock") =
            Some(outcome.map_err(|e| anyhow::anyhow!("driver panicked: {e}")).and_then(|r| r));
        true
    })?;
    let report = result.lock().expect("result lock").take().unwrap_or_else(|| Err(anyhow::anyhow!("no result")))?;
    let mut w = report.write_latency_ms;
    let mut r = report.read_latency_ms;
    w.sort_by(|a, b| a.total_cmp(b));
    r.sort_by(|a, b| a.total_cmp(b));
    let writes_per_s = report.writes_committed as f64 / report.write_window_s.max(1e-9);
    let reads_per_s = report.reads_done as f64 / report.read_window_s.max(1e-9);
    eprintln!(
        "bench: {} writes committed in {:.2} s; {} reads ({} refused) in {:.2} s; access events committed {:.2} s after the last read",
        report.writes_committed,
        report.write_window_s,
        report.reads_done,
        report.reads_refused,
        report.read_window_s,
        report.audit_drain_s
    );
    println!(
        "{}",
        json!({
            "benchmark": "records",
            "transport": if http { "http" } else { "in-process" },
            "clients": clients,
            "writes_committed": report.writes_committed,
            "writes_per_s": round2(writes_per_s),
            "write_commit_latency_ms": {"p50": round2(percentile(&w, 50.0)), "p99": round2(percentile(&w, 99.0))},
            "reads": report.reads_done,
            "reads_per_s": round2(reads_per_s),
            "read_latency_ms": {"p50": round2(percentile(&r, 50.0)), "p99": round2(percentile(&r, 99.0))},
            "access_events_committed_after_s": round2(report.audit_drain_s),
            "durable": true,
        })
    );
    Ok(())
}

/// How the clients reach the node.
enum Transport {
    InProcess,
    /// The node's API base URL.
    Http(String),
}

/// One client's way of writing and reading.
enum Session<'a> {
    InProcess(&'a RecordService),
    Http(crate::client::Client),
}

/// Why a request did not succeed.
enum Failed {
    /// Back-pressure (mempool full, nonce window): retry shortly.
    Busy,
    Refused(String),
}

impl Session<'_> {
    fn new<'a>(transport: &Transport, records: &'a RecordService) -> Session<'a> {
        match transport {
            Transport::InProcess => Session::InProcess(records),
            Transport::Http(base) => Session::Http(crate::client::Client::new(base)),
        }
    }

    fn write(
        &self,
        author: &Keypair,
        request: &WriteRequest<'_>,
        rng: &mut impl rand::CryptoRng,
    ) -> Result<(TxId, RecordId), Failed> {
        match self {
            Session::InProcess(records) => match records.write(request, now_ms(), rng) {
                Ok(w) => Ok((w.tx_id, w.record_id)),
                Err(RecordError::Submit(_)) => Err(Failed::Busy),
                Err(e) => Err(Failed::Refused(e.to_string())),
            },
            Session::Http(client) => {
                let path = format!("/v1/records?patient={}", request.patient);
                let (status, _, body) = client
                    .signed(author, "POST", &path, request.content)
                    .map_err(|e| Failed::Refused(e.to_string()))?;
                match status {
                    201 => {
                        let v: serde_json::Value =
                            serde_json::from_slice(&body).map_err(|e| Failed::Refused(e.to_string()))?;
                        let tx = v["tx_id"].as_str().and_then(|t| TxId::from_hex(t).ok());
                        let record = v["record_id"].as_str().and_then(|r| RecordId::from_hex(r).ok());
                        tx.zip(record).ok_or_else(|| Failed::Refused("write answer without ids".into()))
                    }
                    429 | 503 => Err(Failed::Busy),
                    other => Err(Failed::Refused(format!("{other}: {}", crate::client::error_of(&body)))),
                }
            }
        }
    }

    fn read(&self, reader: &Keypair, record: RecordId) -> bool {
        match self {
            Session::InProcess(records) => {
                records.read(reader.id(), record, None, Purpose::Treatment, now_ms()).is_ok()
            }
            Session::Http(client) => {
                let path = format!("/v1/records/{record}?purpose=TREAT");
                client.signed(reader, "GET", &path, b"").is_ok_and(|(status, _, _)| status == 200)
            }
        }
    }
}

fn drive(
    net: &Devnet,
    chain: &Arc<Chain>,
    records: &Arc<RecordService>,
    opts: &RecordBenchOptions,
    transport: &Transport,
) -> Result<Report> {
    let (hospital, clinic) = (&net.organisations[0], &net.organisations[1]);
    let doc = Keypair::from_label("bench-doctor");
    let doc_b = Keypair::from_label("bench-clinic-doctor");
    let patients: Vec<Keypair> =
        (0..opts.patients).map(|i| Keypair::from_label(&format!("bench-patient-{i}"))).collect();
    let chain_id = net.genesis.chain_id();
    eprintln!("bench: registering {} patients ...", patients.len());
    let ids = vec![
        chain.submit_as(
            hospital,
            Payload::register(Role::Practitioner, &doc, Some(hospital.id()), "Bench Doctor"),
            now_ms(),
        )?,
        chain.submit_as(
            clinic,
            Payload::register(Role::Practitioner, &doc_b, Some(clinic.id()), "Clinic Doctor"),
            now_ms(),
        )?,
    ];
    wait_committed(chain, &ids, Duration::from_secs(60))?;
    crate::bench::register_patients(chain, hospital, &patients, Duration::from_secs(60))?;
    // Every patient lets the clinic read labs and vitals for treatment.
    let now = now_ms();
    let mut grants = Vec::new();
    for p in &patients {
        let payload = Payload::ConsentGrant {
            patient: p.id(),
            grantee: clinic.id(),
            scope: Scope::Categories(vec!["labs".into(), "vitals".into()]),
            actions: actions::READ,
            purpose: Purpose::Treatment,
            valid_from_ms: now,
            valid_until_ms: now + 86_400_000,
        };
        // The patient's first transaction (an organisation registered them).
        grants.push(chain.submit(sign(p, chain_id, p.id(), 0, payload).bytes(), now)?);
    }
    wait_committed(chain, &grants, Duration::from_secs(60))?;
    // Payloads: synthetic labs and vitals (about 1 KB each).
    let bodies: Vec<(&'static str, &'static str, Vec<u8>)> = medledger_synth::Generator::new(99)
        .patients(32)
        .into_iter()
        .flat_map(|p| p.resources)
        .filter(|r| r.category == "labs" || r.category == "vitals")
        .map(|r| (r.resource_type, r.category, r.json))
        .collect();
    anyhow::ensure!(!bodies.is_empty(), "no synthetic payloads");

    // ---- writes ----
    eprintln!("bench: {} record writes from {} clients ...", opts.writes, opts.clients);
    let submitted: std::sync::Mutex<Vec<(TxId, RecordId, u64)>> =
        std::sync::Mutex::new(Vec::with_capacity(opts.writes));
    // Commit times of every transaction applied while the benchmark runs, stamped as blocks
    // are durably applied (observed every millisecond).
    let commits: std::sync::Mutex<HashMap<TxId, u64>> = std::sync::Mutex::new(HashMap::new());
    let writers_done = AtomicUsize::new(0);
    let started = Instant::now();
    let failures = AtomicUsize::new(0);
    let first_height = chain.head().height;
    std::thread::scope(|s| {
        // The observer.
        s.spawn(|| {
            let mut seen = first_height;
            let deadline = Duration::from_secs(600);
            loop {
                let height = chain.head().height;
                while seen < height {
                    seen += 1;
                    if let Ok(Some(block)) = chain.block(seen) {
                        let at = started.elapsed().as_nanos() as u64;
                        let mut map = commits.lock().expect("lock");
                        for tx in &block.txs {
                            map.insert(tx.id(), at);
                        }
                    }
                }
                let done = writers_done.load(Ordering::Relaxed) == opts.clients;
                if done {
                    let all = submitted.lock().expect("lock");
                    let map = commits.lock().expect("lock");
                    if all.iter().all(|(tx, _, _)| map.contains_key(tx)) {
                        return;
                    }
                }
                if started.elapsed() > deadline {
                    return;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        for client in 0..opts.clients {
            let (submitted, failures, bodies, patients, doc, writers_done) =
                (&submitted, &failures, &bodies, &patients, &doc, &writers_done);
            s.spawn(move || {
                let session = Session::new(transport, records);
                let mut rng = rand::rng();
                let mine = (opts.writes / opts.clients) + usize::from(client < opts.writes % opts.clients);
                for i in 0..mine {
                    let (resource_type, category, body) = &bodies[(client * 7919 + i) % bodies.len()];
                    let patient = &patients[(client + i * opts.clients) % patients.len()];
                    let request = WriteRequest {
                        author: doc.id(),
                        patient: patient.id(),
                        resource_type,
                        category,
                        content: body,
                        record: None,
                    };
                    loop {
                        let at = started.elapsed().as_nanos() as u64;
                        match session.write(doc, &request, &mut rng) {
                            Ok((tx_id, record_id)) => {
                                submitted.lock().expect("lock").push((tx_id, record_id, at));
                                break;
                            }
                            // Back-pressure from the mempool or the signer's nonce window.
                            Err(Failed::Busy) => std::thread::sleep(Duration::from_millis(2)),
                            Err(Failed::Refused(e)) => {
                                tracing::warn!(error = %e, "benchmark write failed");
                                failures.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                        }
                    }
                }
                writers_done.fetch_add(1, Ordering::Relaxed);
            });
        }
    });
    let submitted = submitted.into_inner().expect("lock");
    let commits = commits.into_inner().expect("lock");
    let mut last_commit = 0u64;
    let write_latency_ms: Vec<f64> = submitted
        .iter()
        .filter_map(|(tx, _, at)| {
            let c = *commits.get(tx)?;
            last_commit = last_commit.max(c);
            Some(c.saturating_sub(*at) as f64 / 1e6)
        })
        .collect();
    let committed = write_latency_ms.len();
    let write_window_s = last_commit as f64 / 1e9;

    // ---- reads ----
    eprintln!("bench: {} authorized reads from {} clients ...", opts.reads, opts.clients);
    let written: Vec<RecordId> = submitted.iter().map(|(_, r, _)| *r).collect();
    let latencies: std::sync::Mutex<Vec<f64>> = std::sync::Mutex::new(Vec::with_capacity(opts.reads));
    let refused = AtomicUsize::new(0);
    let started_reads = Instant::now();
    std::thread::scope(|s| {
        for client in 0..opts.clients {
            let (latencies, refused, written, doc, doc_b) = (&latencies, &refused, &written, &doc, &doc_b);
            s.spawn(move || {
                let session = Session::new(transport, records);
                let mine = (opts.reads / opts.clients) + usize::from(client < opts.reads % opts.clients);
                let mut local = Vec::with_capacity(mine);
                for i in 0..mine {
                    let record = written[(client * 104_729 + i * 31) % written.len()];
                    // Half through the custodian, half through the patient's grant to the clinic.
                    let reader = if i % 2 == 0 { doc } else { doc_b };
                    let t = Instant::now();
                    if session.read(reader, record) {
                        local.push(t.elapsed().as_secs_f64() * 1e3);
                    } else {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
                latencies.lock().expect("lock").extend(local);
            });
        }
    });
    let read_window_s = started_reads.elapsed().as_secs_f64();
    // The node's upkeep commits the queued access events in batches; wait for them.
    let drain_started = Instant::now();
    while records.pending_events() > 0 && drain_started.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(10));
    }
    while chain.mempool_len() > 0 && drain_started.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let read_latency_ms = latencies.into_inner().expect("lock");
    Ok(Report {
        writes_committed: committed,
        write_window_s,
        write_latency_ms,
        reads_done: read_latency_ms.len(),
        reads_refused: refused.load(Ordering::Relaxed),
        read_window_s,
        read_latency_ms,
        audit_drain_s: drain_started.elapsed().as_secs_f64(),
    })
}
