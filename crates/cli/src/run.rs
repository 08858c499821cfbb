//! Running a node process: chain recovery with progress, consensus, the HTTP API, and an
//! optional extra task (the dev seeder, the benchmark driver).

use std::{future::Future, net::SocketAddr, path::Path, sync::Arc, time::Instant};

use anyhow::{Context, Result};
use medledger_crypto::Keypair;
use medledger_ledger::Genesis;
use medledger_node::{
    chain::Chain,
    net::{NodeConfig, run_node},
    validator::Timing,
};
use medledger_records::RecordService;

/// Opens (and re-verifies) the chain in `data_dir`, printing progress for long replays.
pub fn open_chain(data_dir: &Path, genesis: &Genesis, keys: Keypair) -> Result<Arc<Chain>> {
    let started = Instant::now();
    let (chain, report) = Chain::open(data_dir, genesis, keys, &mut |height, last| {
        tracing::info!("re-verifying stored chain: block {height} of {last}");
    })
    .with_context(|| format!("cannot open the chain in {}", data_dir.display()))?;
    tracing::info!(
        blocks = report.blocks,
        transactions = report.transactions,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "stored chain verified"
    );
    Ok(Arc::new(chain))
}

/// Opens the node's record ciphertext store (`DIR/blobs`, an append-only pack store),
/// reporting what crash recovery found.
pub fn open_blob_store(data_dir: &Path) -> Result<medledger_blobs::PackBlobStore> {
    let dir = data_dir.join("blobs");
    let started = Instant::now();
    let store = medledger_blobs::PackBlobStore::open(&dir)
        .with_context(|| format!("cannot open the blob store in {}", dir.display()))?;
    tracing::info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        recovery = ?store.recovery(),
        "blob store opened"
    );
    Ok(store)
}

/// Makes a directory of key files its owner's alone: the directory 0700 (created if missing)
/// and every file in it 0600. Installs made before this rule had them 0755 and 0644 (any
/// local user could list the patients whose keys a node holds); a start fixes them.
pub fn private_key_dir(dir: &Path) -> Result<()> {
    medledger_crypto::private_dir(dir).with_context(|| format!("cannot make {} private", dir.display()))?;
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let path = entry?.path();
        if path.is_file() {
            medledger_crypto::make_private(&path).with_context(|| format!("cannot make {} private", path.display()))?;
        }
    }
    Ok(())
}

pub struct RunOptions {
    /// The operating organisation's keys: with them the node serves records (encrypts,
    /// decrypts and shares its organisation's category keys).
    pub organisation_keys: Option<Keypair>,
    pub p2p_listen: SocketAddr,
    pub api_listen: SocketAddr,
    pub peers: Vec<(medledger_crypto::PublicKey, SocketAddr)>,
    pub worker_threads: usize,
    /// The base URL clients reach the API at (e.g. `https://fhir.hospital.example`), already
    /// checked with `medledger_api::public_base`: the one every absolute URL the API writes
    /// starts with (never the request's `Host`). `None`: `http://<api listen address>`.
    pub public_url: Option<String>,
}

/// Background duties of a node serving records: commit queued access events in batches, and
/// share category keys with grantees of newly committed grants.
async fn record_upkeep(records: Arc<RecordService>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(AUDIT_FLUSH_MS));
    let mut ticks = 0u64;
    loop {
        tick.tick().await;
        ticks += 1;
        let records = records.clone();
        let share = ticks.is_multiple_of(GRANT_SCAN_MS / AUDIT_FLUSH_MS);
        let _ = tokio::task::spawn_blocking(move || {
            let now = crate::init::now_ms();
            if let Err(e) = records.flush_events(now) {
                tracing::warn!(error = %e, "access events not committed yet");
            }
            if share && let Err(e) = records.share_keys_for_live_grants(now, &mut rand::rng()) {
                tracing::warn!(error = %e, "key sharing for grants failed");
            }
        })
        .await;
    }
}

/// How often queued access events are committed.
const AUDIT_FLUSH_MS: u64 = 200;
/// How often live grants are checked for keys still to share.
const GRANT_SCAN_MS: u64 = 1000;

/// File in the data directory journaling access events until they are committed
/// (`medledger_node::audit`).
pub const AUDIT_JOURNAL_FILE: &str = "audit.journal";

/// Sub-directory of the data directory holding the keys of patients the node's organisation
/// registered, until handed over (mode 0600 files, named by identity id).
pub const PATIENT_KEYS_DIR: &str = "patient-keys";

/// What a running node hands to the extra task of [`run`].
pub struct Running {
    pub chain: Arc<Chain>,
    /// Where the API listens.
    pub api: SocketAddr,
    pub records: Option<Arc<RecordService>>,
    /// The API's bearer tokens (SMART), so a task can issue some.
    pub tokens: Arc<medledger_api::smart::TokenStore>,
}

/// Runs the node until Ctrl-C (or until `extra` returns `true`, asking to stop).
pub fn run<F, Fut>(data_dir: &Path, chain: Arc<Chain>, keys: &Keypair, opts: RunOptions, extra: F) -> Result<()>
where
    F: FnOnce(Running) -> Fut + Send + 'static,
    Fut: Future<Output = bool> + Send + 'static,
{
    // Bind before starting consensus so a busy port is a clear error, not a half-started node.
    let api = std::net::TcpListener::bind(opts.api_listen)
        .with_context(|| format!("cannot listen for the API on {}", opts.api_listen))?;
    api.set_nonblocking(true)?;
    let api_addr = api.local_addr()?;
    let records = match opts.organisation_keys {
        None => None,
        Some(org) => {
            let blobs = open_blob_store(data_dir)?;
            private_key_dir(&data_dir.join(PATIENT_KEYS_DIR))?;
            let service = RecordService::new(chain.clone(), keys.clone(), org, Arc::new(blobs));
            // Keys of patients this organisation registers (e.g. a FHIR Patient create for
            // someone new), held in trust until handed over.
            service.set_patient_key_dir(data_dir.join(PATIENT_KEYS_DIR));
            // Every access decision is journaled durably before it is acted on; what a crash
            // left uncommitted is committed now.
            let requeued = service
                .open_audit_journal(&data_dir.join(AUDIT_JOURNAL_FILE), crate::init::now_ms())
                .with_context(|| format!("cannot open the audit journal in {}", data_dir.display()))?;
            if requeued > 0 {
                tracing::info!(events = requeued, "access events from the audit journal queued for commitment");
            }
            Some(Arc::new(service))
        }
    };
    let cfg = NodeConfig {
        data_dir: data_dir.to_owned(),
        p2p_listen: opts.p2p_listen,
        peers: opts.peers,
        timing: Timing::default(),
        worker_threads: opts.worker_threads,
        replication: records.as_ref().map(|r| (r.blobs(), r.organisation())),
    };
    run_node(cfg, chain, keys.signing_seed(), move |chain, fetcher| async move {
        if let (Some(records), Some(fetcher)) = (&records, fetcher) {
            records.set_fetcher(fetcher);
        }
        let listener = match tokio::net::TcpListener::from_std(api) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "cannot use the API listener");
                return;
            }
        };
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let tokens = Arc::new(medledger_api::smart::TokenStore::default());
        let services = medledger_api::Services {
            records: records.clone(),
            tokens: tokens.clone(),
            // The configured public URL first (the canonical one); the listen address's own
            // URLs stay valid client-assertion audiences.
            public_bases: opts.public_url.into_iter().chain(medledger_api::bases_for_listen_addr(api_addr)).collect(),
            ..Default::default()
        };
        let server = tokio::spawn(medledger_api::serve_for(listener, chain.clone(), services, async move {
            let _ = stop_rx.await;
        }));
        if let Some(records) = &records {
            tokio::spawn(record_upkeep(records.clone()));
        }
        tracing::info!("API listening on http://{api_addr}");
        let extra_done = extra(Running { chain, api: api_addr, records, tokens });
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("stopping on Ctrl-C"),
            stop = extra_done => {
                if stop {
                    tracing::info!("task finished; stopping");
                } else {
                    let _ = tokio::signal::ctrl_c().await;
                    tracing::info!("stopping on Ctrl-C");
                }
            }
        }
        let _ = stop_tx.send(());
        let _ = server.await;
    })?;
    Ok(())
}
