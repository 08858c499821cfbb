//! `medledger dev`: a one-validator network in a directory, seeded with synthetic demo
//! identities and activity, writing `DIR/dev-credentials.json`.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result};
use medledger_codec::Encode;
use medledger_crypto::{Keypair, read_key_file, write_key_file};
use medledger_ledger::{
    Genesis, Payload, Purpose, ReviewVerdict, Scope, Transaction, actions,
    rules::{referral::ReferralConsentParams, referral::ReferralParams, share_new::ShareNewParams},
    tx::sign,
};
use medledger_node::{
    chain::{Chain, TxStatus},
    devnet::Devnet,
};
use medledger_records::WriteRequest;
use medledger_types::{IdentityId, OrganisationKind, RecordId, Role, TxId};
use serde_json::json;

use crate::{
    init::{GENESIS_FILE, now_ms, slug},
    run::{RunOptions, Running, open_chain, run},
};

pub const CREDENTIALS_FILE: &str = "dev-credentials.json";
/// Synthetic patients in the demo, and records written for each.
const PATIENTS: usize = 12;
const RESOURCES_PER_PATIENT: usize = 12;
/// Seed of the synthetic FHIR generator: the same demo data on every run.
const DEMO_SEED: u64 = 2026;
const ORGANISATIONS: [&str; 4] =
    ["St Mary's Hospital", "City General Hospital", "Acme Health Insurance", "Northbridge Research Institute"];
/// What each of [`ORGANISATIONS`] is.
const KINDS: [OrganisationKind; 4] = [
    OrganisationKind::CareProvider,
    OrganisationKind::CareProvider,
    OrganisationKind::Payer,
    OrganisationKind::Research,
];

/// A demo identity with its key file.
struct Demo {
    label: String,
    role: Role,
    organisation: Option<IdentityId>,
    keys: Keypair,
    key_file: PathBuf,
}

fn key_path(dir: &Path, label: &str) -> PathBuf {
    dir.join("keys").join(format!("{label}.key"))
}

/// Loads the key `label` from `dir/keys`, creating it on first use.
fn demo_key(dir: &Path, label: &str) -> Result<Keypair> {
    let path = key_path(dir, label);
    if path.exists() {
        return Ok(read_key_file(&path)?);
    }
    let keys = Keypair::generate();
    write_key_file(&path, &keys)?;
    Ok(keys)
}

fn load_or_create_genesis(dir: &Path) -> Result<Genesis> {
    let path = dir.join(GENESIS_FILE);
    if path.exists() {
        let bytes = std::fs::read(&path)?;
        return Genesis::from_bytes(&bytes).with_context(|| format!("{} is not a valid genesis", path.display()));
    }
    medledger_crypto::private_dir(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut key = |label: &str| -> Keypair {
        let label = match label.strip_prefix("org/") {
            Some(name) => slug(name),
            None => "node-0".into(),
        };
        demo_key(dir, &label).expect("cannot write a demo key file")
    };
    let members: Vec<(&str, OrganisationKind)> = ORGANISATIONS.into_iter().zip(KINDS).collect();
    let net = Devnet::with_kinds("medledger.dev", now_ms(), &members, 1, &mut key);
    std::fs::write(&path, net.genesis.to_bytes())?;
    Ok(net.genesis)
}

pub fn dev(dir: &Path, api_listen: SocketAddr, public_url: Option<String>) -> Result<()> {
    let genesis = load_or_create_genesis(dir)?;
    // Demo keys are secrets too (and an older dev directory may have them readable by all).
    crate::run::private_key_dir(&dir.join("keys"))?;
    let node_keys = read_key_file(&key_path(dir, "node-0"))?;
    let chain = open_chain(dir, &genesis, node_keys.clone())?;
    let p2p = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    // The dev node is operated by St Mary's Hospital and serves its records.
    let organisation_keys = Some(read_key_file(&key_path(dir, &slug(ORGANISATIONS[0])))?);
    let opts = RunOptions {
        organisation_keys,
        p2p_listen: p2p,
        api_listen,
        peers: vec![(node_keys.public_key(), p2p)],
        worker_threads: 2,
        public_url,
    };
    let dir_owned = dir.to_owned();
    run(dir, chain, &node_keys, opts, move |running| async move {
        match seed(&dir_owned, &running).await {
            Ok(()) => {}
            Err(e) => tracing::error!(error = %e, "demo seeding failed"),
        }
        false
    })
}

async fn wait_committed(chain: &Chain, ids: &[TxId]) -> Result<()> {
    for _ in 0..600 {
        let mut all = true;
        for id in ids {
            match chain.tx_status(id)? {
                TxStatus::Committed { .. } => {}
                TxStatus::Rejected { reason } => anyhow::bail!("demo transaction {id} was rejected: {reason}"),
                _ => all = false,
            }
        }
        if all {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("demo transactions were not committed within 30 s")
}

/// Submits a batch (each signer's transactions in nonce order) and waits for all to commit.
async fn commit(chain: &Chain, txs: Vec<Transaction>) -> Result<Vec<TxId>> {
    let mut ids = Vec::new();
    for tx in txs {
        ids.push(chain.submit(tx.bytes(), now_ms()).map_err(|e| anyhow::anyhow!("demo transaction refused: {e}"))?);
    }
    wait_committed(chain, &ids).await?;
    Ok(ids)
}

async fn seed(dir: &Path, running: &Running) -> Result<()> {
    let (chain, api_addr) = (&running.chain, running.api);
    let records = running.records.clone().context("the dev node must serve records")?;
    let credentials = dir.join(CREDENTIALS_FILE);
    let chain_id = chain.snapshot().chain_id();
    let orgs: Vec<Keypair> =
        ORGANISATIONS.iter().map(|n| read_key_file(&key_path(dir, &slug(n)))).collect::<Result<_, _>>()?;
    let mut demos: Vec<Demo> = ORGANISATIONS
        .iter()
        .zip(&orgs)
        .map(|(n, k)| Demo {
            label: slug(n),
            role: Role::Organisation,
            organisation: None,
            keys: k.clone(),
            key_file: key_path(dir, &slug(n)),
        })
        .collect();
    let node = read_key_file(&key_path(dir, "node-0"))?;
    demos.push(Demo {
        label: "node-0".into(),
        role: Role::Validator,
        organisation: Some(orgs[0].id()),
        keys: node.clone(),
        key_file: key_path(dir, "node-0"),
    });
    let staff = [
        ("dr-alice-st-marys", Role::Practitioner, 0, "Dr Alice Example"),
        ("dr-bob-city-general", Role::Practitioner, 1, "Dr Bob Example"),
        ("st-marys-ehr", Role::SystemClient, 0, "St Mary's EHR integration"),
        ("acme-claims", Role::SystemClient, 2, "Acme claims system"),
        ("northbridge-analyst", Role::Practitioner, 3, "Research analyst"),
    ];
    let patients: Vec<String> = (1..=PATIENTS).map(|i| format!("patient-{i:02}")).collect();
    let fresh = chain.head().height == 0;
    let mut demo_records: Vec<(String, RecordId, &str, &str)> = Vec::new();
    for (label, role, org, _) in staff {
        demos.push(Demo {
            label: label.into(),
            role,
            organisation: Some(orgs[org].id()),
            keys: demo_key(dir, label)?,
            key_file: key_path(dir, label),
        });
    }
    for label in &patients {
        demos.push(Demo {
            label: label.clone(),
            role: Role::Patient,
            organisation: None,
            keys: demo_key(dir, label)?,
            key_file: key_path(dir, label),
        });
    }
    if fresh {
        tracing::info!("seeding demo identities and activity");
        let by = |label: &str| demos.iter().find(|d| d.label == label).expect("demo label");
        // Staff, registered by their organisations (each organisation's nonces in order).
        let mut nonces = std::collections::HashMap::new();
        let mut next = |id: IdentityId| {
            let n = nonces.entry(id).or_insert(0u64);
            *n += 1;
            *n - 1
        };
        let mut txs = Vec::new();
        for (label, role, org, name) in staff {
            let d = by(label);
            txs.push(sign(
                &orgs[org],
                chain_id,
                orgs[org].id(),
                next(orgs[org].id()),
                Payload::register(role, &d.keys, Some(orgs[org].id()), name),
            ));
        }
        // St Mary's registers the patients, with each patient's own public keys (registration
        // is an act of a member organisation); names never go on-chain.
        for label in &patients {
            let d = by(label);
            txs.push(sign(
                &orgs[0],
                chain_id,
                orgs[0].id(),
                next(orgs[0].id()),
                Payload::register(Role::Patient, &d.keys, None, ""),
            ));
        }
        commit(chain, txs).await?;
        // Synthetic FHIR records for every patient, written by Dr Alice at St Mary's: each is
        // encrypted under a fresh data key, its category key created and shared with the patient
        // and St Mary's on first use, and committed.
        let alice = by("dr-alice-st-marys");
        let synthetic = medledger_synth::Generator::new(DEMO_SEED).patients(patients.len());
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::from_rng(&mut rand::rng());
        let mut ids = Vec::new();
        for (label, patient) in patients.iter().zip(&synthetic) {
            let p = by(label);
            // The generator's references (`Patient/pat-…`) become this server's logical ids
            // (record ids in hex), so the demo's FHIR resources point at each other. The
            // Patient comes first and each resource only refers to earlier ones.
            let mut server_ids: Vec<(String, String)> = Vec::new();
            for resource in patient.resources.iter().take(RESOURCES_PER_PATIENT) {
                let mut json = String::from_utf8(resource.json.clone()).context("synthetic JSON is UTF-8")?;
                for (from, to) in &server_ids {
                    json = json.replace(from, to);
                }
                if resource.resource_type == "Patient" {
                    json = with_identity(&json, &p.keys.id());
                }
                let request = WriteRequest {
                    author: alice.keys.id(),
                    patient: p.keys.id(),
                    resource_type: resource.resource_type,
                    category: resource.category,
                    content: json.as_bytes(),
                    record: None,
                };
                let written =
                    records.write(&request, now_ms(), &mut rng).map_err(|e| anyhow::anyhow!("demo write: {e}"))?;
                server_ids.push((
                    format!("\"{}/{}\"", resource.resource_type, resource.id),
                    format!("\"{}/{}\"", resource.resource_type, written.record_id.to_hex()),
                ));
                demo_records.push((label.clone(), written.record_id, resource.resource_type, resource.category));
                ids.push(written.tx_id);
            }
        }
        wait_committed(chain, &ids).await?;
        let record_of = |records: &[(String, RecordId, &str, &str)], label: &str, category: &str| {
            records.iter().find(|(l, _, _, c)| l == label && *c == category).map(|r| r.1)
        };
        // Consent: patient 1 lets City General read labs and vitals for treatment; patient 2 lets
        // the insurer read conditions and medications for payment; patient 3 lets the research
        // institute read labs for research.
        let now = now_ms();
        let grant = |patient: &Demo, grantee: IdentityId, categories: &[&str], purpose: Purpose, days: u64| {
            Payload::ConsentGrant {
                patient: patient.keys.id(),
                grantee,
                scope: Scope::Categories(categories.iter().map(|c| (*c).to_owned()).collect()),
                actions: actions::READ,
                purpose,
                valid_from_ms: now,
                valid_until_ms: now + days * 86_400_000,
            }
        };
        let (p1, p2, p3, p4, p5, p6, p8, p9) = (
            by("patient-01"),
            by("patient-02"),
            by("patient-03"),
            by("patient-04"),
            by("patient-05"),
            by("patient-06"),
            by("patient-08"),
            by("patient-09"),
        );
        let mut txs = vec![
            sign(
                &p1.keys,
                chain_id,
                p1.keys.id(),
                next(p1.keys.id()),
                grant(p1, orgs[1].id(), &["labs", "vitals"], Purpose::Treatment, 30),
            ),
            sign(
                &p2.keys,
                chain_id,
                p2.keys.id(),
                next(p2.keys.id()),
                grant(p2, orgs[2].id(), &["conditions", "medications"], Purpose::Payment, 90),
            ),
            sign(
                &p3.keys,
                chain_id,
                p3.keys.id(),
                next(p3.keys.id()),
                grant(p3, orgs[3].id(), &["labs"], Purpose::Research, 180),
            ),
        ];
        // Patient 4 authorises St Mary's to refer them (conditions and medications, up to 30
        // days, treatment); patient 5 shares every new lab result with City General.
        let consent = ReferralConsentParams {
            referrer: orgs[0].id(),
            categories: vec!["conditions".into(), "medications".into()],
            max_days: 30,
            purpose: Purpose::Treatment,
        };
        let consent_tx = sign(
            &p4.keys,
            chain_id,
            p4.keys.id(),
            next(p4.keys.id()),
            Payload::InstallRule { patient: p4.keys.id(), rule: consent.to_spec() },
        );
        let authorisation = consent_tx.id();
        txs.push(consent_tx);
        let standing =
            ShareNewParams { grantee: orgs[1].id(), categories: vec!["labs".into()], purpose: Purpose::Treatment };
        txs.push(sign(
            &p5.keys,
            chain_id,
            p5.keys.id(),
            next(p5.keys.id()),
            Payload::InstallRule { patient: p5.keys.id(), rule: standing.to_spec() },
        ));
        // Patient 8 appoints patient 9 (a parent, registered in their own right) as delegate
        // for a year: patient 9 may manage patient 8's consent.
        txs.push(sign(
            &p8.keys,
            chain_id,
            p8.keys.id(),
            next(p8.keys.id()),
            Payload::AppointDelegate {
                patient: p8.keys.id(),
                delegate: p9.keys.id(),
                valid_until_ms: now + 365 * 86_400_000,
            },
        ));
        let grant_ids = commit(chain, txs).await?;
        // St Mary's refers patient 4 to City General for conditions, 14 days, without the
        // patient's key; Dr Bob at City General declares an emergency for patient 6; patient 9,
        // as patient 8's delegate, lets City General read patient 8's vitals for treatment.
        let bob = by("dr-bob-city-general");
        let referral = ReferralParams {
            authorisation,
            to: orgs[1].id(),
            categories: vec!["conditions".into()],
            days: 14,
            purpose: Purpose::Treatment,
        };
        let emergency = commit(
            chain,
            vec![
                sign(
                    &alice.keys,
                    chain_id,
                    alice.keys.id(),
                    next(alice.keys.id()),
                    Payload::InstallRule { patient: p4.keys.id(), rule: referral.to_spec() },
                ),
                sign(
                    &bob.keys,
                    chain_id,
                    bob.keys.id(),
                    next(bob.keys.id()),
                    Payload::BreakGlass {
                        patient: p6.keys.id(),
                        reason: "ed-unresponsive".into(),
                        window_ms: medledger_types::limits::BREAK_GLASS_WINDOW_DEFAULT_MS,
                    },
                ),
                sign(
                    &p9.keys,
                    chain_id,
                    p9.keys.id(),
                    next(p9.keys.id()),
                    grant(p8, orgs[1].id(), &["vitals"], Purpose::Treatment, 30),
                ),
            ],
        )
        .await?;
        let break_glass = emergency[1];
        // A new lab for patient 5, after the standing rule: City General may read it.
        let lab = synthetic[4].resources.iter().find(|r| r.category == "labs").context("synthetic lab")?;
        let new_lab = records
            .write(
                &WriteRequest {
                    author: alice.keys.id(),
                    patient: p5.keys.id(),
                    resource_type: lab.resource_type,
                    category: lab.category,
                    content: &lab.json,
                    record: None,
                },
                now_ms(),
                &mut rng,
            )
            .map_err(|e| anyhow::anyhow!("demo write: {e}"))?;
        wait_committed(chain, &[new_lab.tx_id]).await?;
        demo_records.push(("patient-05".into(), new_lab.record_id, lab.resource_type, lab.category));
        // Reads through this node, each decided and audited: allowed, refused, break-glass.
        let claims = by("acme-claims");
        let analyst = by("northbridge-analyst");
        let d = &demo_records;
        let reads = [
            (bob.keys.id(), record_of(d, "patient-01", "labs"), Purpose::Treatment),
            (claims.keys.id(), record_of(d, "patient-01", "conditions"), Purpose::Payment),
            (claims.keys.id(), record_of(d, "patient-02", "conditions"), Purpose::Payment),
            (analyst.keys.id(), record_of(d, "patient-03", "labs"), Purpose::Research),
            (bob.keys.id(), record_of(d, "patient-04", "conditions"), Purpose::Treatment),
            (bob.keys.id(), Some(new_lab.record_id), Purpose::Treatment),
            (bob.keys.id(), record_of(d, "patient-06", "labs"), Purpose::Emergency),
            (bob.keys.id(), record_of(d, "patient-07", "labs"), Purpose::Treatment),
            (bob.keys.id(), record_of(d, "patient-08", "vitals"), Purpose::Treatment),
        ];
        for (who, record, purpose) in reads {
            if let Some(record) = record {
                let _ = records.read(who, record, None, purpose, now_ms());
            }
        }
        records.flush_events(now_ms()).map_err(|e| anyhow::anyhow!("demo audit: {e}"))?;
        // St Mary's, custodian of patient 6's records, reviews Dr Bob's emergency access.
        commit(
            chain,
            vec![sign(
                &orgs[0],
                chain_id,
                orgs[0].id(),
                next(orgs[0].id()),
                Payload::ReviewBreakGlass {
                    break_glass_tx: break_glass,
                    verdict: ReviewVerdict::Justified,
                    reason: "ed-unresponsive-confirmed".into(),
                },
            )],
        )
        .await?;
        let _ = grant_ids;
        tracing::info!("demo data committed");
    }
    let token_expires_ms = now_ms() + DEV_TOKEN_TTL_MS;
    let identities: Vec<_> = demos
        .iter()
        .map(|d| {
            let mut entry = json!({
                "label": d.label,
                "role": d.role.as_str(),
                "id": d.keys.id().to_hex(),
                "organisation": d.organisation.map(|o| o.to_hex()),
                "key_file": d.key_file.canonicalize().unwrap_or(d.key_file.clone()),
                "signing_public_key": d.keys.public_key().to_string(),
                "encryption_public_key": hex::encode(d.keys.encryption_public_key().0),
            });
            // A ready SMART bearer token with the widest scope the role may hold (consent
            // still decides per resource). Clients outside the demo get theirs from
            // /auth/token with a signed client assertion.
            if let Some(scope) = dev_scope(d.role) {
                let scopes = vec![medledger_api::smart::parse_scope(scope).expect("dev scopes parse")];
                let token = running.tokens.issue(medledger_api::smart::Grant {
                    identity: d.keys.id(),
                    role: d.role,
                    signing_key: d.keys.public_key(),
                    scopes,
                    expires_ms: token_expires_ms,
                });
                entry["bearer_token"] = json!(token);
                entry["bearer_scope"] = json!(scope);
                entry["bearer_expires_ms"] = json!(token_expires_ms);
            }
            entry
        })
        .collect();
    let doc = json!({
        "about": "Synthetic demo identities of a medledger dev network. Key files are secret (mode 0600).",
        "chain_name": chain.genesis().chain_name,
        "chain_id": chain_id.to_hex(),
        "api": format!("http://{api_addr}"),
        "identities": identities,
        "records": demo_records
            .iter()
            .map(|(label, id, rt, cat)| json!({"patient": label, "record_id": id.to_hex(), "resource_type": rt, "category": cat}))
            .collect::<Vec<_>>(),
    });
    write_private(&credentials, (serde_json::to_string_pretty(&doc)? + "\n").as_bytes())?;
    let head = chain.head();
    println!(
        "medledger dev node ready: API http://{api_addr}  height {}  log size {}  credentials {}",
        head.height,
        head.log_size,
        credentials.display()
    );
    // Its own line, so the address is easy to spot and copy into a browser.
    println!("portal: http://{api_addr}/");
    Ok(())
}

/// How long the bearer tokens `dev` writes stay valid (they also end when the node stops:
/// tokens live in its memory).
const DEV_TOKEN_TTL_MS: u64 = 12 * 3600 * 1000;

/// The demo token scope of each role: SMART v2, everything the role's context allows.
fn dev_scope(role: Role) -> Option<&'static str> {
    match role {
        Role::Patient => Some("patient/*.cruds"),
        Role::Practitioner => Some("user/*.cruds"),
        Role::Organisation | Role::SystemClient => Some("system/*.cruds"),
        _ => None,
    }
}

/// Writes `bytes` to `path` readable by the owner only (it holds bearer tokens), replacing
/// any earlier file atomically.
fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write as _;
    let temp = path.with_extension("json.tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(&temp).with_context(|| format!("cannot write {}", temp.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&temp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// A synthetic Patient resource with an identifier naming its on-chain identity (what the
/// FHIR API requires of a Patient), put first in its `identifier` list (or a new list).
fn with_identity(json: &str, identity: &IdentityId) -> String {
    let entry = format!(r#"{{"system":"{}","value":"{}"}}"#, medledger_api::fhir::IDENTITY_SYSTEM, identity.to_hex());
    if let Some(at) = json.find(r#""identifier":["#) {
        let split = at + r#""identifier":["#.len();
        return format!("{}{entry},{}", &json[..split], &json[split..]);
    }
    match json.find(r#""resourceType":"Patient","#) {
        Some(at) => {
            let split = at + r#""resourceType":"Patient","#.len();
            format!("{}\"identifier\":[{entry}],{}", &json[..split], &json[split..])
        }
        None => json.to_owned(),
    }
}
