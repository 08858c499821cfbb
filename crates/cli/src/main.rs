//! The `medledger` command.

mod bench;
mod bench_fhir;
mod bench_import;
mod bench_records;
mod client;
mod config;
mod dev;
mod fhir_import;
mod init;
mod patient;
mod patient_keys;
mod run;
mod txcmd;

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use medledger_crypto::{Keypair, write_key_file};
use medledger_ledger::{Genesis, Payload};
use medledger_merkle::{Hash, checkpoint, verify_inclusion};
use medledger_types::{IdentityId, TxId};
use serde_json::json;

use crate::{client::Client, config::NodeConfigFile, txcmd::load_keys};

#[derive(Parser)]
#[command(name = "medledger", version, about = "A permissioned blockchain for medical records")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a new consortium: keys, genesis and one config per validator.
    Init {
        /// Directory to create the consortium in.
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 4)]
        validators: usize,
        /// Comma-separated founding member organisations, each `Name` or `Name:kind` (kind:
        /// care-provider (the default), payer, research or other).
        #[arg(
            long,
            default_value = "St Mary's Hospital:care-provider,City General Hospital:care-provider,Acme Health Insurance:payer,Northbridge Research Institute:research"
        )]
        organisations: String,
        #[arg(long, default_value = "medledger.local")]
        chain_name: String,
        /// Address validators listen on.
        #[arg(long, default_value = "127.0.0.1")]
        host: IpAddr,
        #[arg(long, default_value_t = 27000)]
        p2p_base_port: u16,
        #[arg(long, default_value_t = 28000)]
        api_base_port: u16,
    },
    /// Run a validator from its config file.
    Node {
        #[arg(long)]
        config: PathBuf,
    },
    /// Run a one-validator development network with demo data.
    Dev {
        #[arg(long, default_value = "medledger-dev")]
        data_dir: PathBuf,
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// The base URL clients reach the API at (behind a proxy, say), e.g.
        /// `https://fhir.example`; absolute URLs the API writes start with it. Default:
        /// `http://<listen>`.
        #[arg(long)]
        public_url: Option<String>,
    },
    /// Generate an identity's keys (Ed25519 signing + X25519 encryption) into a 0600 key file.
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Build, sign and submit transactions.
    Tx {
        #[command(flatten)]
        common: TxCommon,
        #[command(subcommand)]
        command: TxCommand,
    },
    /// Write and read encrypted records (requests are signed with your key file).
    Record {
        #[arg(long, global = true, default_value = "http://127.0.0.1:8080")]
        node: String,
        #[command(subcommand)]
        command: RecordCommand,
    },
    /// As a patient (or their delegate): grant, revoke and list consent; appoint, dismiss and
    /// list delegates.
    Consent(patient::ConsentArgs),
    /// As a patient: who saw what, when and why, with inclusion proofs (--verify checks them).
    AccessLog(patient::AccessLogArgs),
    /// As a patient: new accesses, break-glass, key wraps to third parties, expiring grants.
    Notifications(patient::NotificationsArgs),
    /// As a practitioner: declare emergency access to a patient's records; as an organisation
    /// or its practitioners: `review` one, list those `pending` review.
    BreakGlass(patient::BreakGlassArgs),
    /// Show the node's head (height, log size and root).
    Head {
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        node: String,
    },
    /// Fetch and verify, offline, that a committed transaction is in the log.
    Prove {
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        node: String,
        /// Transaction id (hex).
        tx: TxId,
    },
    /// Fetch the node's signed checkpoint and verify its signature.
    Checkpoint {
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        node: String,
    },
    /// Verify a whole data directory offline (the node must be stopped).
    Verify {
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
    /// The keys a node holds in trust for patients it registered: list, hand over, forget.
    PatientKeys {
        #[command(subcommand)]
        command: patient_keys::PatientKeysCommand,
    },
    /// FHIR data in and out of a running node.
    Fhir {
        #[command(subcommand)]
        command: FhirCommand,
    },
}

#[derive(Subcommand)]
enum FhirCommand {
    /// Import Bulk Data NDJSON files and Bundle files through the node's FHIR API, as
    /// all-or-nothing transaction Bundles (directory resources first, then each patient).
    Import(fhir_import::ImportArgs),
}

#[derive(Args)]
struct TxCommon {
    /// Node API to submit to.
    #[arg(long, global = true, default_value = "http://127.0.0.1:8080")]
    node: String,
    /// Nonce to use (default: the node's view of the signer's next nonce).
    #[arg(long, global = true)]
    nonce: Option<u64>,
    /// Return once accepted instead of waiting for commitment.
    #[arg(long, global = true)]
    no_wait: bool,
}

#[derive(Subcommand)]
enum TxCommand {
    /// Register an identity. Organisations register practitioners and system clients;
    /// patients are registered by a provider (an organisation or its staff) with their keys.
    Register {
        /// Signer's key file.
        #[arg(long)]
        key: PathBuf,
        /// Key file of the identity to register (only its public keys are used).
        #[arg(long)]
        subject: PathBuf,
        /// practitioner, system-client or patient.
        #[arg(long)]
        role: String,
        /// Display name (not for patients: their names never go on-chain).
        #[arg(long, default_value = "")]
        name: String,
    },
    /// Replace the signer's keys (its id stays the same).
    RotateKey {
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        new_key: PathBuf,
    },
    /// As a patient, grant access to your data.
    Grant(txcmd::GrantArgs),
    /// As a patient, revoke a grant.
    Revoke {
        #[arg(long)]
        key: PathBuf,
        /// Grant id (the granting transaction's id, hex).
        #[arg(long)]
        grant: TxId,
    },
    /// Show a transaction's status (where it is; with --key, signed: also its kind and signer,
    /// if you signed it or are a member organisation or validator).
    Status {
        id: TxId,
        /// Key file to sign the request with.
        #[arg(long)]
        key: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum RecordCommand {
    /// Write a FHIR resource (a JSON file) for a patient, as its custodian's staff.
    Put {
        /// Your key file (a practitioner or system client of the node's organisation).
        #[arg(long)]
        key: PathBuf,
        /// Patient identity id (hex).
        #[arg(long)]
        patient: IdentityId,
        /// Write the next version of this record instead of a new record.
        #[arg(long)]
        record: Option<medledger_types::RecordId>,
        /// The FHIR resource.
        file: PathBuf,
    },
    /// Read a record version (default: the latest). Prints the FHIR resource.
    Get {
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        version: Option<u32>,
        /// TREAT, HPAYMT, HOPERAT, HRESCH or ETREAT.
        #[arg(long, default_value = "TREAT")]
        purpose: String,
        record: medledger_types::RecordId,
    },
    /// List a record's versions (tx id, author), if you may read it.
    History {
        #[arg(long)]
        key: PathBuf,
        /// TREAT, HPAYMT, HOPERAT, HRESCH or ETREAT.
        #[arg(long, default_value = "TREAT")]
        purpose: String,
        record: medledger_types::RecordId,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Encrypted record writes and authorized reads from concurrent clients on a one-validator node.
    Records {
        #[arg(long, default_value_t = 20_000)]
        writes: usize,
        #[arg(long, default_value_t = 50_000)]
        reads: usize,
        #[arg(long, default_value_t = 64)]
        clients: usize,
        #[arg(long, default_value_t = 256)]
        patients: usize,
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Send every request as a signed HTTP request to the node's API (loopback) instead of
        /// calling the record service in-process.
        #[arg(long)]
        http: bool,
    },
    /// The FHIR API under load: resources loaded, search latency and CRUD throughput.
    Fhir {
        #[arg(long, default_value_t = 100_000)]
        resources: usize,
        #[arg(long, default_value_t = 2_000)]
        patients: usize,
        #[arg(long, default_value_t = 64)]
        clients: usize,
        #[arg(long, default_value_t = 20_000)]
        searches: usize,
        #[arg(long, default_value_t = 20_000)]
        crud: usize,
    },
    /// FHIR import over HTTP: the Synthea transaction Bundles, then the bulk NDJSON set.
    FhirImport {
        /// How many times each Synthea Bundle is posted.
        #[arg(long, default_value_t = 40)]
        copies: usize,
        /// Concurrent importers (each Bundle waits for its block, so throughput grows with
        /// them until the CPU is busy).
        #[arg(long, default_value_t = 8)]
        clients: usize,
        /// Directory of transaction Bundles (default: the repository's Synthea set).
        #[arg(long)]
        synthea: Option<PathBuf>,
        /// Directory of Bulk NDJSON (default: the repository's 10-patient set).
        #[arg(long)]
        ndjson: Option<PathBuf>,
    },
    /// Durable commit throughput and latency of signed transactions on a one-validator node.
    Ledger {
        #[arg(long, default_value_t = 200_000)]
        txs: usize,
        #[arg(long, default_value_t = 4)]
        clients: usize,
        /// Keep the chain here instead of a temporary directory.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        #[arg(long, default_value_t = 300)]
        timeout_s: u64,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,commonware=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run_command(Cli::parse().command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn print_json(value: &serde_json::Value) {
    println!("{}", serde_json::to_string_pretty(value).unwrap_or_default());
}

fn run_command(command: Command) -> Result<ExitCode> {
    match command {
        Command::Init { dir, validators, organisations, chain_name, host, p2p_base_port, api_base_port } => {
            let organisations: Vec<String> =
                organisations.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect();
            let configs = init::init(&init::InitOptions {
                dir: dir.clone(),
                chain_name,
                organisations,
                validators,
                host,
                p2p_base_port,
                api_base_port,
            })?;
            println!("created consortium in {}", dir.display());
            for c in configs {
                println!("  medledger node --config {}", c.display());
            }
        }
        Command::Node { config } => {
            let cfg = NodeConfigFile::load(&config)?;
            // Secret key files readable by others (an older install, a careless copy) are
            // made the owner's alone before they are used.
            for key_file in std::iter::once(&cfg.key).chain(cfg.organisation_key.as_ref()) {
                medledger_crypto::make_private(key_file)
                    .with_context(|| format!("cannot make {} private", key_file.display()))?;
            }
            let genesis_bytes = std::fs::read(&cfg.genesis)
                .with_context(|| format!("cannot read genesis {}", cfg.genesis.display()))?;
            let genesis = Genesis::from_bytes(&genesis_bytes)?;
            let keys = load_keys(&cfg.key)?;
            let peers = cfg
                .peers
                .iter()
                .map(|p| Ok((config::parse_public_key(&p.public_key)?, p.address)))
                .collect::<Result<Vec<_>>>()?;
            let chain = run::open_chain(&cfg.data_dir, &genesis, keys.clone())?;
            let organisation_keys = cfg.organisation_key.as_deref().map(load_keys).transpose()?;
            let opts = run::RunOptions {
                organisation_keys,
                p2p_listen: cfg.p2p_listen,
                api_listen: cfg.api_listen,
                peers,
                worker_threads: cfg.worker_threads,
                public_url: cfg.public_url.clone(),
            };
            run::run(&cfg.data_dir, chain, &keys, opts, |_| async { false })?;
        }
        Command::Dev { data_dir, listen, public_url } => {
            let public_url = public_url
                .map(|url| {
                    medledger_api::public_base(&url).map_err(|why| anyhow::anyhow!("--public-url {url:?}: {why}"))
                })
                .transpose()?;
            dev::dev(&data_dir, listen, public_url)?
        }
        Command::Keygen { out } => {
            let keys = Keypair::generate();
            write_key_file(&out, &keys)?;
            print_json(&json!({
                "key_file": out,
                "id": keys.id().to_hex(),
                "signing_public_key": keys.public_key().to_string(),
                "encryption_public_key": hex::encode(keys.encryption_public_key().0),
            }));
        }
        Command::Tx { common, command } => tx(common, command)?,
        Command::Record { node, command } => return record(&Client::new(&node), command),
        Command::Consent(args) => return patient::consent(args),
        Command::AccessLog(args) => return patient::access_log(args),
        Command::Notifications(args) => return patient::notifications(args),
        Command::BreakGlass(args) => return patient::break_glass(args),
        Command::Head { node } => print_json(&Client::new(&node).get("/v1/head")?),
        Command::Prove { node, tx } => prove(&Client::new(&node), &tx)?,
        Command::Checkpoint { node } => {
            let client = Client::new(&node);
            let note = client.get_text("/v1/checkpoint")?;
            let vkey = client.get_text("/v1/checkpoint/key")?;
            let (name, key) = checkpoint::parse_verifier_key(&vkey)?;
            let body = checkpoint::verify_note(&note, &name, &key)?;
            let cp = checkpoint::Checkpoint::parse(body)?;
            print!("{note}");
            eprintln!("signature verified with {}: log size {}, root {}", vkey.trim(), cp.size, cp.root);
        }
        Command::Verify { data_dir } => return verify(&data_dir),
        Command::Bench { command: BenchCommand::Records { writes, reads, clients, patients, data_dir, http } } => {
            bench_records::bench_records(bench_records::RecordBenchOptions {
                writes,
                reads,
                clients,
                patients,
                dir: data_dir,
                http,
            })?;
        }
        Command::PatientKeys { command } => patient_keys::run(command)?,
        Command::Fhir { command: FhirCommand::Import(args) } => {
            let imported = fhir_import::run(&args)?;
            println!(
                "imported {} resources in {} transaction bundles in {:.1} s ({:.0} resources/s)",
                imported.resources,
                imported.bundles,
                imported.seconds,
                imported.resources as f64 / imported.seconds.max(1e-9)
            );
        }
        Command::Bench { command: BenchCommand::Fhir { resources, patients, clients, searches, crud } } => {
            bench_fhir::bench_fhir(bench_fhir::FhirBenchOptions { resources, patients, clients, searches, crud })?;
        }
        Command::Bench { command: BenchCommand::FhirImport { copies, clients, synthea, ndjson } } => {
            bench_import::bench_import(bench_import::ImportBenchOptions {
                copies,
                clients,
                synthea_dir: synthea.unwrap_or_else(|| bench_import::testdata("synthea-r4")),
                ndjson_dir: ndjson.unwrap_or_else(|| bench_import::testdata("bulk-ndjson-10-patients")),
            })?;
        }
        Command::Bench { command: BenchCommand::Ledger { txs, clients, data_dir, timeout_s } } => {
            bench::bench_ledger(bench::BenchOptions {
                txs,
                clients,
                dir: data_dir,
                timeout: Duration::from_secs(timeout_s),
            })?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn tx(common: TxCommon, command: TxCommand) -> Result<()> {
    let client = Client::new(&common.node);
    let wait = !common.no_wait;
    let result = match command {
        TxCommand::Register { key, subject, role, name } => {
            let signer = load_keys(&key)?;
            let subject = load_keys(&subject)?;
            let organisation = match role.as_str() {
                "practitioner" | "system-client" => Some(signer.id()),
                _ => None,
            };
            let payload = txcmd::register_payload(&role, &subject, organisation, &name)?;
            txcmd::submit(&client, &signer, common.nonce, payload, wait)?
        }
        TxCommand::RotateKey { key, new_key } => {
            let signer = load_keys(&key)?;
            let new_keys = load_keys(&new_key)?;
            // The identity keeps its id; the node looks up its nonce by that id.
            let nonce = match common.nonce {
                Some(n) => n,
                None => txcmd::next_nonce(&client, &signer)?,
            };
            let mut answer = txcmd::submit(&client, &signer, Some(nonce), txcmd::rotate_payload(&new_keys), false)?;
            if wait {
                let identity = signer.id();
                let rotated = new_keys.for_identity(identity);
                let id = TxId::from_hex(answer["tx_id"].as_str().context("node did not report a transaction id")?)?;
                // Once committed only the new keys sign for the identity, so they ask for the
                // transaction's details.
                answer = txcmd::wait_for(&client, &id, Duration::from_secs(30), Some(&rotated))?;
                // Committed: the new key file now names the identity it signs for.
                medledger_crypto::rewrite_key_file(&new_key, &rotated)
                    .with_context(|| format!("recording the identity in {}", new_key.display()))?;
                eprintln!(
                    "{} now holds the keys of identity {identity}; {} no longer signs for it",
                    new_key.display(),
                    key.display()
                );
            } else {
                eprintln!(
                    "once committed, {} signs for identity {}: run with waiting to record it in the file",
                    new_key.display(),
                    signer.id()
                );
            }
            answer
        }
        TxCommand::Grant(grant) => {
            let (signer, payload) = grant.payload(init::now_ms())?;
            txcmd::submit(&client, &signer, common.nonce, payload, wait)?
        }
        TxCommand::Revoke { key, grant } => {
            let signer = load_keys(&key)?;
            txcmd::submit(&client, &signer, common.nonce, Payload::ConsentRevoke { grant_id: grant }, wait)?
        }
        TxCommand::Status { id, key } => {
            let keys = key.as_deref().map(load_keys).transpose()?;
            txcmd::status(&client, &id, keys.as_ref())?
        }
    };
    print_json(&result);
    Ok(())
}

/// Largest FHIR file `record put` sends.
const RECORD_FILE_BYTES_MAX: u64 = 4 * 1024 * 1024;

fn record(client: &Client, command: RecordCommand) -> Result<ExitCode> {
    match command {
        RecordCommand::Put { key, patient, record, file } => {
            let keys = load_keys(&key)?;
            let size = std::fs::metadata(&file).with_context(|| format!("cannot read {}", file.display()))?.len();
            if size > RECORD_FILE_BYTES_MAX {
                bail!("{} is larger than {RECORD_FILE_BYTES_MAX} bytes", file.display());
            }
            let body = std::fs::read(&file)?;
            let mut path = format!("/v1/records?patient={patient}");
            if let Some(r) = record {
                path.push_str(&format!("&record={r}"));
            }
            let (status, _, bytes) = client.signed(&keys, "POST", &path, &body)?;
            if status != 201 {
                eprintln!("error: write refused ({status}): {}", client::error_of(&bytes));
                return Ok(ExitCode::from(1));
            }
            println!("{}", String::from_utf8_lossy(&bytes));
        }
        RecordCommand::Get { key, version, purpose, record } => {
            let keys = load_keys(&key)?;
            let purpose = txcmd::parse_purpose(&purpose)?;
            let mut path = format!("/v1/records/{record}?purpose={}", purpose.code());
            if let Some(v) = version {
                path.push_str(&format!("&version={v}"));
            }
            let (status, _, bytes) = client.signed(&keys, "GET", &path, b"")?;
            if status != 200 {
                eprintln!("error: read refused ({status}): {}", client::error_of(&bytes));
                return Ok(ExitCode::from(1));
            }
            use std::io::Write;
            // A closed pipe (`| head`) is not an error worth a panic.
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(&bytes).and_then(|()| out.write_all(b"\n"));
        }
        RecordCommand::History { key, purpose, record } => {
            return patient::record_history(client, &key, &purpose, &record);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn prove(client: &Client, tx: &TxId) -> Result<()> {
    let status = client.get(&format!("/v1/transactions/{tx}"))?;
    let Some(index) = status["log_index"].as_u64() else {
        bail!("transaction {tx} is not committed (status {})", status["status"]);
    };
    let head = client.get("/v1/head")?;
    let size = head["log_size"].as_u64().context("head without log size")?;
    let proof = client.get(&format!("/v1/proofs/inclusion?index={index}&size={size}"))?;
    let root = Hash::from_hex(proof["root"].as_str().context("proof without root")?)?;
    let path = proof["proof"]
        .as_array()
        .context("proof without path")?
        .iter()
        .map(|h| Ok(Hash::from_hex(h.as_str().context("proof element is not a string")?)?))
        .collect::<Result<Vec<_>>>()?;
    // The transaction id is its RFC 6962 leaf hash: the proof is checked against it, not
    // against anything the node claims.
    verify_inclusion(index, size, &Hash(tx.0), &path, &root).context("inclusion proof does not verify")?;
    anyhow::ensure!(head["log_root"].as_str() == Some(&root.to_hex()), "proof root differs from the head's log root");
    print_json(&json!({
        "tx_id": tx.to_hex(),
        "log_index": index,
        "log_size": size,
        "log_root": root.to_hex(),
        "proof_hashes": path.len(),
        "verified": true,
    }));
    Ok(())
}

fn verify(data_dir: &Path) -> Result<ExitCode> {
    let started = Instant::now();
    let store = medledger_storage::Store::open_existing(data_dir)
        .with_context(|| format!("cannot open {} (is a node still running on it?)", data_dir.display()))?;
    let last = store.last_height()?;
    eprintln!("verifying {} blocks in {} ...", last, data_dir.display());
    let result = medledger_storage::replay(&store, &mut |height, last| {
        if height % 10_000 == 0 {
            eprintln!("  block {height} of {last}");
        }
    });
    match result {
        Ok((state, report)) => {
            // Finalization certificates: each must be a quorum of the genesis validators'
            // signatures over the stored block at its height.
            let genesis = store.genesis()?;
            let verifier = medledger_node::certificate::CertificateVerifier::new(&genesis)?;
            let mut certified = 0u64;
            let mut last_certified = 0u64;
            let checked = store.for_each_finalization(|height, certificate| {
                let bytes = store.block_bytes(height)?.ok_or(medledger_storage::ChainError::Missing { height })?;
                let block = medledger_ledger::Block::decode(&bytes)
                    .map_err(|error| medledger_storage::ChainError::Undecodable { height, error })?;
                verifier
                    .verify(certificate, block.hash())
                    .map_err(|e| medledger_storage::ChainError::BadCertificate { height, reason: e.to_string() })?;
                certified += 1;
                last_certified = height;
                Ok(())
            });
            if let Err(e) = checked {
                println!("FAILED at height {}: {e}", e.height().unwrap_or(0));
                return Ok(ExitCode::from(1));
            }
            // Record ciphertexts: each must hash to its address.
            let blob_dir = data_dir.join("blobs");
            let mut blob_line = None;
            if blob_dir.exists() {
                let blobs = run::open_blob_store(data_dir)?;
                let report = medledger_blobs::verify_pack(&blobs, &mut |n| {
                    if n % 10_000 == 0 {
                        eprintln!("  blob {n}");
                    }
                })?;
                if let Some(bad) = report.corrupt.first() {
                    println!(
                        "FAILED: record ciphertext {bad} does not match its hash ({} corrupt)",
                        report.corrupt.len()
                    );
                    return Ok(ExitCode::from(1));
                }
                if let Some(damage) = report.damaged.first() {
                    println!(
                        "FAILED: the blob store is damaged at {} offset {} ({} bytes, {:?}; {} damaged ranges)",
                        damage.path.display(),
                        damage.offset,
                        damage.len_bytes,
                        damage.kind,
                        report.damaged.len()
                    );
                    return Ok(ExitCode::from(1));
                }
                blob_line = Some(format!(
                    "    {} record ciphertexts verified ({} bytes){}",
                    report.blobs_checked,
                    report.valid_bytes,
                    if report.unexpected.is_empty() {
                        String::new()
                    } else {
                        format!("; {} unexpected files in the blob store", report.unexpected.len())
                    }
                ));
            }
            let indexed = store.tx_count()?;
            if indexed != report.transactions {
                println!(
                    "FAILED: the transaction index holds {indexed} entries, the blocks {} transactions",
                    report.transactions
                );
                return Ok(ExitCode::from(1));
            }
            println!(
                "OK: {} blocks, {} transactions, log size {}, log root {}, head {} ({:.2} s)",
                report.blocks,
                report.transactions,
                state.log().size(),
                state.log().root(),
                state.head_hash(),
                started.elapsed().as_secs_f64()
            );
            println!(
                "    {certified} finalization certificates verified against the genesis validators; \
                 blocks up to height {last_certified} are covered by one"
            );
            if let Some(line) = blob_line {
                println!("{line}");
            }
            if last_certified < report.blocks {
                println!(
                    "    note: blocks {}..={} carry no certificate yet (written without one); only hash links cover them",
                    last_certified + 1,
                    report.blocks
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            match e.height() {
                Some(height) => println!("FAILED at height {height}: {e}"),
                None => println!("FAILED: {e}"),
            }
            Ok(ExitCode::from(1))
        }
    }
}
