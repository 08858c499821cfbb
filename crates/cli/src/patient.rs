//! Patient-facing commands: consent (grant, revoke, list, delegates), the access log with
//! offline proof checking, notifications, break-glass declarations and their review, and a
//! record's version history. A live delegate uses the consent commands with `--for-patient`.
//!
//! Reads are signed requests (`Client::signed`) to the patient-view endpoints; transactions
//! reuse `txcmd` (sign, submit, wait for commitment).

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context, Result, bail, ensure};
use clap::{Args, Subcommand};
use medledger_crypto::Keypair;
use medledger_ledger::{Payload, ReviewVerdict};
use medledger_merkle::{Hash, verify_consistency, verify_inclusion};
use medledger_types::{IdentityId, RecordId, TxId, limits};
use serde_json::{Value, json};

use crate::{
    client::{self, Client},
    print_json,
    txcmd::{self, load_keys},
};

const DEFAULT_NODE: &str = "http://127.0.0.1:8080";
/// Longest consent a CLI grant asks for; longer consent is better renewed than forgotten.
/// Most entries one `access-log` page asks for (the node's limit).
const ACCESS_LOG_LIMIT_MAX: u64 = 500;

#[derive(Args)]
pub struct ConsentArgs {
    /// Node API.
    #[arg(long, global = true, default_value = DEFAULT_NODE)]
    node: String,
    /// Nonce to use (default: the node's view of the signer's next nonce).
    #[arg(long, global = true)]
    nonce: Option<u64>,
    /// Return once accepted instead of waiting for commitment.
    #[arg(long, global = true)]
    no_wait: bool,
    #[command(subcommand)]
    command: ConsentCommand,
}

#[derive(Subcommand)]
enum ConsentCommand {
    /// Grant access to your data (as `tx grant`), or, as a delegate, to a patient's.
    Grant {
        #[command(flatten)]
        grant: txcmd::GrantArgs,
        /// Grant for this patient (hex id) as their delegate; --key is then the delegate's.
        #[arg(long)]
        for_patient: Option<IdentityId>,
    },
    /// Revoke a grant (consent, rule-derived or break-glass); a delegate revokes the same way,
    /// with their own key.
    Revoke {
        #[arg(long)]
        key: PathBuf,
        /// Grant id (hex).
        #[arg(long)]
        grant: TxId,
    },
    /// List your grants: origin, signer, scope, actions, purpose, validity, revocation, review,
    /// live or not.
    List {
        #[arg(long)]
        key: PathBuf,
        /// List this patient's grants, as their live delegate.
        #[arg(long)]
        for_patient: Option<IdentityId>,
        #[arg(long, default_value_t = 0)]
        from: u64,
        #[arg(long, default_value_t = 100)]
        limit: u64,
    },
    /// Appoint, dismiss and list delegates who may manage your consent.
    Delegate {
        #[command(subcommand)]
        command: DelegateCommand,
    },
}

#[derive(Subcommand)]
enum DelegateCommand {
    /// Appoint a delegate (a practitioner, a patient identity such as a parent or guardian, or
    /// a node's validator identity as your FHIR gateway for Consent writes).
    Add {
        /// Your (the patient's) key file.
        #[arg(long)]
        key: PathBuf,
        /// The delegate's identity id (hex).
        #[arg(long)]
        delegate: IdentityId,
        /// How long the delegate may act, in days.
        #[arg(long, default_value_t = 365)]
        days: u64,
    },
    /// Dismiss a delegate; or, with --for-patient, step down as a patient's delegate.
    Remove {
        #[arg(long)]
        key: PathBuf,
        /// The delegate's identity id (hex); defaults to your own when stepping down.
        #[arg(long)]
        delegate: Option<IdentityId>,
        /// The patient you are a delegate of (when stepping down).
        #[arg(long)]
        for_patient: Option<IdentityId>,
    },
    /// List the delegations (live, dismissed, expired) of you, or of --for-patient.
    List {
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        for_patient: Option<IdentityId>,
    },
}

#[derive(Args)]
pub struct AccessLogArgs {
    #[arg(long, default_value = DEFAULT_NODE)]
    node: String,
    /// Your (the patient's) key file.
    #[arg(long)]
    key: PathBuf,
    /// First entry (0 is the oldest).
    #[arg(long, default_value_t = 0)]
    from: u64,
    /// Entries in this page (at most 500).
    #[arg(long, default_value_t = 100)]
    limit: u64,
    /// Check every entry's inclusion proof offline, and that the proofs' root is the head's
    /// log root (or consistent with it).
    #[arg(long)]
    verify: bool,
}

#[derive(Args)]
pub struct NotificationsArgs {
    #[arg(long, default_value = DEFAULT_NODE)]
    node: String,
    #[arg(long)]
    key: PathBuf,
    /// Only what committed after this block time (pass the last answer's `until_ms`).
    #[arg(long)]
    since_ms: Option<u64>,
}

/// `break-glass --key --patient --reason` declares; `break-glass review|pending` review.
#[derive(Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct BreakGlassArgs {
    #[arg(long, global = true, default_value = DEFAULT_NODE)]
    node: String,
    /// Your (the practitioner's) key file.
    #[arg(long, required = true)]
    key: Option<PathBuf>,
    /// Patient identity id (hex).
    #[arg(long, required = true)]
    patient: Option<IdentityId>,
    /// Reason code (letters, digits, `-_.:`), never free text about the patient.
    #[arg(long, required = true)]
    reason: Option<String>,
    /// Emergency window, 1 to 24 hours.
    #[arg(long, default_value_t = 4)]
    hours: u64,
    /// Return once accepted instead of waiting for commitment.
    #[arg(long, global = true)]
    no_wait: bool,
    #[command(subcommand)]
    command: Option<BreakGlassCommand>,
}

#[derive(Subcommand)]
enum BreakGlassCommand {
    /// As an organisation or one of its practitioners (never the declarer): review a
    /// break-glass access. `unjustified` ends a window still open at once.
    Review {
        /// The break-glass declaration's transaction id (hex).
        tx: TxId,
        /// Your (the reviewer's) key file.
        #[arg(long)]
        key: PathBuf,
        /// justified or unjustified.
        #[arg(long)]
        verdict: String,
        /// Reason code (letters, digits, `-_.:`), never free text.
        #[arg(long)]
        reason: String,
    },
    /// As an organisation or one of its practitioners: break-glass accesses you may review.
    Pending {
        #[arg(long)]
        key: PathBuf,
        /// Include those already reviewed.
        #[arg(long)]
        all: bool,
        #[arg(long, default_value_t = 0)]
        from: u64,
        #[arg(long, default_value_t = 100)]
        limit: u64,
    },
}

/// A signed GET returning JSON; a refusal is printed with its reason and becomes `Err(code)`.
fn signed_get(client: &Client, keys: &Keypair, path: &str) -> Result<std::result::Result<Value, ExitCode>> {
    let (status, _, bytes) = client.signed(keys, "GET", path, b"")?;
    if status != 200 {
        eprintln!("error: refused ({status}): {}", client::error_of(&bytes));
        return Ok(Err(ExitCode::from(1)));
    }
    Ok(Ok(serde_json::from_slice(&bytes).context("node answered with something other than JSON")?))
}

pub fn consent(args: ConsentArgs) -> Result<ExitCode> {
    let client = Client::new(&args.node);
    let wait = !args.no_wait;
    let result = match args.command {
        ConsentCommand::Grant { grant, for_patient } => {
            let (signer, mut payload) = grant.payload(crate::init::now_ms())?;
            // The grant is the patient's; a delegate only signs it.
            if let (Some(p), Payload::ConsentGrant { patient, .. }) = (for_patient, &mut payload) {
                *patient = p;
            }
            txcmd::submit(&client, &signer, args.nonce, payload, wait)?
        }
        ConsentCommand::Revoke { key, grant } => {
            let signer = load_keys(&key)?;
            txcmd::submit(&client, &signer, args.nonce, Payload::ConsentRevoke { grant_id: grant }, wait)?
        }
        ConsentCommand::List { key, for_patient, from, limit } => {
            let keys = load_keys(&key)?;
            let patient = for_patient.unwrap_or(keys.id());
            let path = format!("/v1/patients/{patient}/grants?from={from}&limit={limit}");
            match signed_get(&client, &keys, &path)? {
                Ok(v) => v,
                Err(code) => return Ok(code),
            }
        }
        ConsentCommand::Delegate { command } => match delegate(&client, args.nonce, wait, command)? {
            Ok(v) => v,
            Err(code) => return Ok(code),
        },
    };
    print_json(&result);
    Ok(ExitCode::SUCCESS)
}

fn delegate(
    client: &Client,
    nonce: Option<u64>,
    wait: bool,
    command: DelegateCommand,
) -> Result<std::result::Result<Value, ExitCode>> {
    Ok(Ok(match command {
        DelegateCommand::Add { key, delegate, days } => {
            ensure!((1..=txcmd::GRANT_DAYS_MAX).contains(&days), "--days must be 1 to {}", txcmd::GRANT_DAYS_MAX);
            let keys = load_keys(&key)?;
            let valid_until_ms = crate::init::now_ms() + days * 86_400_000;
            let payload = Payload::AppointDelegate { patient: keys.id(), delegate, valid_until_ms };
            txcmd::submit(client, &keys, nonce, payload, wait)?
        }
        DelegateCommand::Remove { key, delegate, for_patient } => {
            let keys = load_keys(&key)?;
            let (patient, delegate) = match (for_patient, delegate) {
                (Some(patient), d) => (patient, d.unwrap_or(keys.id())),
                (None, Some(d)) => (keys.id(), d),
                (None, None) => {
                    bail!("name the delegate to dismiss (--delegate), or the patient to step down for (--for-patient)")
                }
            };
            txcmd::submit(client, &keys, nonce, Payload::DismissDelegate { patient, delegate }, wait)?
        }
        DelegateCommand::List { key, for_patient } => {
            let keys = load_keys(&key)?;
            let path = format!("/v1/patients/{}/delegates", for_patient.unwrap_or(keys.id()));
            return signed_get(client, &keys, &path);
        }
    }))
}

fn hash_field(value: &Value, field: &str) -> Result<Hash> {
    let text = value[field].as_str().with_context(|| format!("answer has no `{field}`"))?;
    Ok(Hash::from_hex(text)?)
}

fn hashes(value: &Value) -> Result<Vec<Hash>> {
    value
        .as_array()
        .context("expected a list of hashes")?
        .iter()
        .map(|h| Ok(Hash::from_hex(h.as_str().context("hash is not a string")?)?))
        .collect()
}

/// Checks every entry's proof against the page's root, and the root against the node's head:
/// equal at the same size, or proven a prefix of it by a consistency proof.
fn verify_page(client: &Client, page: &Value) -> Result<usize> {
    let entries = page["entries"].as_array().context("answer has no entries")?;
    if entries.is_empty() {
        return Ok(0);
    }
    let size = page["log_size"].as_u64().context("answer has no log size")?;
    let root = hash_field(page, "log_root")?;
    for e in entries {
        let index = e["log_index"].as_u64().context("entry has no log index")?;
        // The transaction id is the RFC 6962 leaf hash: the proof is checked against it.
        let leaf = hash_field(e, "tx_id")?;
        verify_inclusion(index, size, &leaf, &hashes(&e["proof"])?, &root)
            .with_context(|| format!("inclusion proof of {leaf} at {index} does not verify"))?;
    }
    let head = client.get("/v1/head")?;
    let head_size = head["log_size"].as_u64().context("head has no log size")?;
    let head_root = hash_field(&head, "log_root")?;
    if head_size == size {
        ensure!(head_root == root, "the access log's root differs from the head's log root at size {size}");
    } else {
        ensure!(head_size > size, "the node's head ({head_size}) is behind its own answer ({size})");
        let c = client.get(&format!("/v1/proofs/consistency?from={size}&to={head_size}"))?;
        verify_consistency(size, head_size, &root, &head_root, &hashes(&c["proof"])?)
            .context("the access log's root is not consistent with the head's log root")?;
    }
    Ok(entries.len())
}

pub fn access_log(args: AccessLogArgs) -> Result<ExitCode> {
    ensure!((1..=ACCESS_LOG_LIMIT_MAX).contains(&args.limit), "--limit must be 1 to {ACCESS_LOG_LIMIT_MAX}");
    let client = Client::new(&args.node);
    let keys = load_keys(&args.key)?;
    let path = format!("/v1/patients/{}/access-log?from={}&limit={}", keys.id(), args.from, args.limit);
    let mut page = match signed_get(&client, &keys, &path)? {
        Ok(v) => v,
        Err(code) => return Ok(code),
    };
    let verified = if args.verify { Some(verify_page(&client, &page)?) } else { None };
    // Proofs are for machines; the printout says how long each was.
    if let Some(entries) = page["entries"].as_array_mut() {
        for e in entries {
            let n = e["proof"].as_array().map_or(0, Vec::len);
            if let Some(obj) = e.as_object_mut() {
                obj.remove("proof");
                obj.insert("proof_hashes".into(), json!(n));
            }
        }
    }
    if let Some(n) = verified {
        page["verified_entries"] = json!(n);
        page["verified"] = json!(true);
    }
    print_json(&page);
    Ok(ExitCode::SUCCESS)
}

pub fn notifications(args: NotificationsArgs) -> Result<ExitCode> {
    let client = Client::new(&args.node);
    let keys = load_keys(&args.key)?;
    let mut path = format!("/v1/patients/{}/notifications", keys.id());
    if let Some(t) = args.since_ms {
        path.push_str(&format!("?since_ms={t}"));
    }
    match signed_get(&client, &keys, &path)? {
        Ok(v) => print_json(&v),
        Err(code) => return Ok(code),
    }
    Ok(ExitCode::SUCCESS)
}

/// A reason code as the ledger accepts it, checked before anything is signed.
fn check_code(code: &str, flag: &str) -> Result<()> {
    let ok = !code.is_empty()
        && code.len() <= limits::BREAK_GLASS_REASON_BYTES_MAX
        && code.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
    ensure!(ok, "{flag} must be a code of letters, digits and -_.: (at most 64 bytes), never free text");
    Ok(())
}

pub fn break_glass(args: BreakGlassArgs) -> Result<ExitCode> {
    let client = Client::new(&args.node);
    match args.command {
        Some(BreakGlassCommand::Review { tx, key, verdict, reason }) => {
            let verdict = ReviewVerdict::parse(&verdict).context("--verdict must be justified or unjustified")?;
            check_code(&reason, "--reason")?;
            let keys = load_keys(&key)?;
            let payload = Payload::ReviewBreakGlass { break_glass_tx: tx, verdict, reason };
            print_json(&txcmd::submit(&client, &keys, None, payload, !args.no_wait)?);
            return Ok(ExitCode::SUCCESS);
        }
        Some(BreakGlassCommand::Pending { key, all, from, limit }) => {
            let keys = load_keys(&key)?;
            let path = format!("/v1/break-glass?pending={}&from={from}&limit={limit}", !all);
            return match signed_get(&client, &keys, &path)? {
                Ok(v) => {
                    print_json(&v);
                    Ok(ExitCode::SUCCESS)
                }
                Err(code) => Ok(code),
            };
        }
        None => {}
    }
    // Declaration: clap requires these when no subcommand is given.
    let (Some(key), Some(patient), Some(reason)) = (args.key, args.patient, args.reason) else {
        bail!("break-glass needs --key, --patient and --reason");
    };
    let window_ms = args.hours.saturating_mul(3_600_000);
    if !(limits::BREAK_GLASS_WINDOW_MIN_MS..=limits::BREAK_GLASS_WINDOW_MAX_MS).contains(&window_ms) {
        bail!("--hours must be 1 to 24");
    }
    check_code(&reason, "--reason")?;
    let keys = load_keys(&key)?;
    let payload = Payload::BreakGlass { patient, reason, window_ms };
    print_json(&txcmd::submit(&client, &keys, None, payload, !args.no_wait)?);
    Ok(ExitCode::SUCCESS)
}

/// `record history`: the versions of a record, if you may read it.
pub fn record_history(client: &Client, key: &std::path::Path, purpose: &str, record: &RecordId) -> Result<ExitCode> {
    let keys = load_keys(key)?;
    let purpose = txcmd::parse_purpose(purpose)?;
    let path = format!("/v1/records/{record}/history?purpose={}", purpose.code());
    match signed_get(client, &keys, &path)? {
        Ok(v) => print_json(&v),
        Err(code) => return Ok(code),
    }
    Ok(ExitCode::SUCCESS)
}
