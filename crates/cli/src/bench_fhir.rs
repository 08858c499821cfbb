//! `medledger bench fhir`: the FHIR API under load on a one-validator node.
//!
//! 1. Load: `--resources` synthetic FHIR resources (Observations, Conditions, Encounters, …)
//!    for `--patients` patients, written in-process through the record service from
//!    `--clients` threads (encrypt, store, commit; counted once committed). This is the
//!    record-store side of an import; `bench fhir-import` measures import over HTTP.
//! 2. Index: the first search builds the node's in-memory search index by decrypting every
//!    resource; its time is reported apart.
//! 3. Search: `--clients` threads send `--searches` FHIR searches over HTTP with a bearer
//!    token (by patient, by patient and code, by code and date), each answered with at most
//!    20 consent-filtered, audited results. p50/p99 latency and searches/s.
//! 4. CRUD: `--clients` threads send `--crud` requests over HTTP, four reads for every create.
//!
//! The load generator's threads share the machine with the node. The last line is JSON.

use std::{
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
use medledger_records::{RecordService, WriteRequest};
use medledger_types::{RecordId, Role, TxId};
use serde_json::json;

use crate::{
    bench::{percentile, round2, wait_committed},
    init::now_ms,
    run::{RunOptions, open_chain, run},
};

pub struct FhirBenchOptions {
    pub resources: usize,
    pub patients: usize,
    pub clients: usize,
    pub searches: usize,
    pub crud: usize,
}

struct Figures {
    load_window_s: f64,
    loaded: usize,
    index_build_s: f64,
    search_latency_ms: Vec<f64>,
    search_window_s: f64,
    search_failures: usize,
    crud_latency_ms: Vec<f64>,
    crud_window_s: f64,
    crud_failures: usize,
}

pub fn bench_fhir(opts: FhirBenchOptions) -> Result<()> {
    anyhow::ensure!(opts.resources > 0 && opts.patients > 0 && opts.clients > 0, "counts must be positive");
    let temp = tempfile::tempdir()?;
    let dir = temp.path().to_owned();
    let net = Devnet::new("medledger.bench-fhir", now_ms(), &["Bench Hospital"], 1, &mut |l| Keypair::from_label(l));
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
    let result = Arc::new(Mutex::new(None));
    let result2 = result.clone();
    run(&dir, chain, &node_keys, run_opts, move |running| async move {
        let outcome = tokio::task::spawn_blocking(move || {
            let records = running.records.clone().context("the bench node serves records")?;
            drive(&net, &running, &records, &opts)
        })
        .await;
        *result2.lock().expect("result lock") =
            Some(outcome.map_err(|e| anyhow::anyhow!("driver panicked: {e}")).and_then(|r| r));
        true
    })?;
    let f = result.lock().expect("result lock").take().unwrap_or_else(|| Err(anyhow::anyhow!("no result")))?;
    let mut s = f.search_latency_ms.clone();
    let mut c = f.crud_latency_ms.clone();
    s.sort_by(|a, b| a.total_cmp(b));
    c.sort_by(|a, b| a.total_cmp(b));
    eprintln!(
        "bench: {} resources loaded in {:.2} s; index built in {:.2} s; {} searches in {:.2} s; {} CRUD requests in {:.2} s",
        f.loaded,
        f.load_window_s,
        f.index_build_s,
        s.len(),
        f.search_window_s,
        c.len(),
        f.crud_window_s
    );
    println!(
        "{}",
        json!({
            "benchmark": "fhir",
            "clients": clients,
            "resources": f.loaded,
            "load_in_process_resources_per_s": round2(f.loaded as f64 / f.load_window_s.max(1e-9)),
            "index_build_s": round2(f.index_build_s),
            "searches": s.len(),
            "search_failures": f.search_failures,
            "searches_per_s": round2(s.len() as f64 / f.search_window_s.max(1e-9)),
            "search_latency_ms": {"p50": round2(percentile(&s, 50.0)), "p99": round2(percentile(&s, 99.0))},
            "crud_requests": c.len(),
            "crud_failures": f.crud_failures,
            "crud_requests_per_s": round2(c.len() as f64 / f.crud_window_s.max(1e-9)),
            "crud_latency_ms": {"p50": round2(percentile(&c, 50.0)), "p99": round2(percentile(&c, 99.0))},
            "transport": "http (search, CRUD); in-process (load)",
        })
    );
    Ok(())
}

fn drive(
    net: &Devnet,
    running: &crate::run::Running,
    records: &Arc<RecordService>,
    opts: &FhirBenchOptions,
) -> Result<Figures> {
    let chain = &running.chain;
    let hospital = &net.organisations[0];
    let doc = Keypair::from_label("bench-fhir-doctor");
    let patients: Vec<Keypair> =
        (0..opts.patients).map(|i| Keypair::from_label(&format!("bench-fhir-patient-{i}"))).collect();
    eprintln!("bench: registering {} patients ...", patients.len());
    let ids = vec![chain.submit_as(
        hospital,
        Payload::register(Role::Practitioner, &doc, Some(hospital.id()), "Bench Doctor"),
        now_ms(),
    )?];
    wait_committed(chain, &ids, Duration::from_secs(120))?;
    crate::bench::register_patients(chain, hospital, &patients, Duration::from_secs(120))?;
    // Synthetic bodies, reused round-robin; each gets its patient's server id as subject.
    let synthetic = medledger_synth::Generator::new(4242).patients(64);
    let mut patient_ids = Vec::with_capacity(patients.len());
    let mut ids = Vec::new();
    for (i, p) in patients.iter().enumerate() {
        let template = &synthetic[i % synthetic.len()].resources[0];
        let body = String::from_utf8(template.json.clone())?.replacen(
            r#""resourceType":"Patient","#,
            &format!(
                r#""resourceType":"Patient","identifier":[{{"system":"{}","value":"{}"}}],"#,
                medledger_api::fhir::IDENTITY_SYSTEM,
                p.id().to_hex()
            ),
            1,
        );
        let request = WriteRequest {
            author: doc.id(),
            patient: p.id(),
            resource_type: "Patient",
            category: "demographics",
            content: body.as_bytes(),
            record: None,
        };
        let written = records.write(&request, now_ms(), &mut rand::rng())?;
        patient_ids.push(written.record_id);
        ids.push(written.tx_id);
    }
    wait_committed(chain, &ids, Duration::from_secs(120))?;
    let bodies: Vec<(&'static str, &'static str, String, String)> = synthetic
        .iter()
        .flat_map(|p| {
            let own = format!("\"Patient/{}\"", p.resources[0].id);
            p.resources[1..]
                .iter()
                .map(move |r| (r.resource_type, r.category, String::from_utf8_lossy(&r.json).into_owned(), own.clone()))
        })
        .collect();

    eprintln!("bench: loading {} resources from {} clients ...", opts.resources, opts.clients);
    let submitted: Mutex<Vec<TxId>> = Mutex::new(Vec::with_capacity(opts.resources));
    let observations: Mutex<Vec<RecordId>> = Mutex::new(Vec::new());
    let started = Instant::now();
    std::thread::scope(|s| {
        for client in 0..opts.clients {
            let (submitted, observations, bodies, patients, patient_ids, doc) =
                (&submitted, &observations, &bodies, &patients, &patient_ids, &doc);
            s.spawn(move || {
                let mine = opts.resources / opts.clients + usize::from(client < opts.resources % opts.clients);
                let mut rng = rand::rng();
                for i in 0..mine {
                    let n = client + i * opts.clients;
                    let (resource_type, category, json, own) = &bodies[n % bodies.len()];
                    let p = n % patients.len();
                    let json = json.replace(own.as_str(), &format!("\"Patient/{}\"", patient_ids[p].to_hex()));
                    let request = WriteRequest {
                        author: doc.id(),
                        patient: patients[p].id(),
                        resource_type,
                        category,
                        content: json.as_bytes(),
                        record: None,
                    };
                    loop {
                        match records.write(&request, now_ms(), &mut rng) {
                            Ok(w) => {
                                submitted.lock().expect("lock").push(w.tx_id);
                                if *resource_type == "Observation" {
                                    observations.lock().expect("lock").push(w.record_id);
                                }
                                break;
                            }
                            Err(medledger_records::RecordError::Submit(_)) => {
                                std::thread::sleep(Duration::from_millis(2))
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "benchmark load write failed");
                                break;
                            }
                        }
                    }
                }
            });
        }
    });
    let submitted = submitted.into_inner().expect("lock");
    wait_committed(chain, &submitted, Duration::from_secs(600))?;
    let load_window_s = started.elapsed().as_secs_f64();
    let observations = observations.into_inner().expect("lock");

    let token = running.tokens.issue(Grant {
        identity: doc.id(),
        role: Role::Practitioner,
        signing_key: doc.public_key(),
        scopes: vec![parse_scope("user/*.cruds").expect("scope parses")],
        expires_ms: now_ms() + 3_600_000,
    });
    let base = format!("http://{}/fhir", running.api);
    let agent = || -> ureq::Agent {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(120)))
            .build()
            .into()
    };
    eprintln!("bench: first search builds the index ...");
    let started = Instant::now();
    let warm = agent()
        .get(&format!("{base}/Observation?patient=Patient/{}", patient_ids[0].to_hex()))
        .header("authorization", &format!("Bearer {token}"))
        .call()?;
    anyhow::ensure!(warm.status() == 200, "warm-up search answered {}", warm.status());
    let index_build_s = started.elapsed().as_secs_f64();

    eprintln!("bench: {} searches from {} clients ...", opts.searches, opts.clients);
    let failures = AtomicUsize::new(0);
    let latencies: Mutex<Vec<f64>> = Mutex::new(Vec::with_capacity(opts.searches));
    let codes = ["8867-4", "2339-0", "8480-6", "718-7", "29463-7"];
    let started = Instant::now();
    std::thread::scope(|s| {
        for client in 0..opts.clients {
            let (failures, latencies, patient_ids, token, base) = (&failures, &latencies, &patient_ids, &token, &base);
            let agent = agent();
            s.spawn(move || {
                let mine = opts.searches / opts.clients + usize::from(client < opts.searches % opts.clients);
                let mut local = Vec::with_capacity(mine);
                for i in 0..mine {
                    let n = client * 7919 + i * 31;
                    let patient = patient_ids[n % patient_ids.len()].to_hex();
                    let url = match i % 3 {
                        0 => format!("{base}/Observation?patient=Patient/{patient}&_count=20"),
                        1 => format!("{base}/Observation?patient=Patient/{patient}&code={}", codes[n % codes.len()]),
                        _ => format!("{base}/Condition?patient=Patient/{patient}&_sort=-_lastUpdated"),
                    };
                    let t = Instant::now();
                    let ok = agent
                        .get(&url)
                        .header("authorization", &format!("Bearer {token}"))
                        .call()
                        .is_ok_and(|mut r| r.status() == 200 && r.body_mut().read_to_vec().is_ok());
                    if ok {
                        local.push(t.elapsed().as_secs_f64() * 1e3);
                    } else {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
                latencies.lock().expect("lock").extend(local);
            });
        }
    });
    let search_window_s = started.elapsed().as_secs_f64();
    let search_latency_ms = latencies.into_inner().expect("lock");
    let search_failures = failures.load(Ordering::Relaxed);

    eprintln!("bench: {} CRUD requests from {} clients ...", opts.crud, opts.clients);
    let failures = AtomicUsize::new(0);
    let latencies: Mutex<Vec<f64>> = Mutex::new(Vec::with_capacity(opts.crud));
    let create_body = |patient: &RecordId| {
        format!(
            r#"{{"resourceType":"Observation","status":"final","category":[{{"coding":[{{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"vital-signs"}}]}}],"code":{{"coding":[{{"system":"http://loinc.org","code":"8867-4"}}]}},"subject":{{"reference":"Patient/{}"}},"effectiveDateTime":"2026-01-01T10:00:00Z","valueQuantity":{{"value":72,"unit":"/min"}}}}"#,
            patient.to_hex()
        )
    };
    let started = Instant::now();
    std::thread::scope(|s| {
        for client in 0..opts.clients {
            let (failures, latencies, patient_ids, observations, token, base, create_body) =
                (&failures, &latencies, &patient_ids, &observations, &token, &base, &create_body);
            let agent = agent();
            s.spawn(move || {
                let mine = opts.crud / opts.clients + usize::from(client < opts.crud % opts.clients);
                let mut local = Vec::with_capacity(mine);
                for i in 0..mine {
                    let n = client * 104_729 + i * 17;
                    let t = Instant::now();
                    let ok = if i % 5 == 4 {
                        let body = create_body(&patient_ids[n % patient_ids.len()]);
                        agent
                            .post(&format!("{base}/Observation"))
                            .header("authorization", &format!("Bearer {token}"))
                            .header("content-type", "application/fhir+json")
                            .send(body.as_bytes())
                            .is_ok_and(|mut r| r.status() == 201 && r.body_mut().read_to_vec().is_ok())
                    } else {
                        let id = observations[n % observations.len().max(1)].to_hex();
                        agent
                            .get(&format!("{base}/Observation/{id}"))
                            .header("authorization", &format!("Bearer {token}"))
                            .call()
                            .is_ok_and(|mut r| r.status() == 200 && r.body_mut().read_to_vec().is_ok())
                    };
                    if ok {
                        local.push(t.elapsed().as_secs_f64() * 1e3);
                    } else {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
                latencies.lock().expect("lock").extend(local);
            });
        }
    });
    let crud_window_s = started.elapsed().as_secs_f64();
    Ok(Figures {
        load_window_s,
        loaded: submitted.len(),
        index_build_s,
        search_latency_ms,
        search_window_s,
        search_failures,
        crud_latency_ms: latencies.into_inner().expect("lock"),
        crud_window_s,
        crud_failures: failures.load(Ordering::Relaxed),
    })
}
