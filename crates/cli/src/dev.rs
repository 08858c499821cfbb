//! `medledger dev`: a one-validator network in a directory, seeded with synthetic demo
//! identities and activity, writing `DIR/dev-credentials.json`.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, Result};
use medledger_codec::Encode;
use medledger_crypto::envelope::{CategoryKey, DataKey, hpke_wrap, wrap_data_key};
use medledger_crypto::{Keypair, read_key_file, write_key_file};
use medledger_ledger::{
    AccessAction, AccessEvent, AccessOutcome, Genesis, KeyShareEntry, Payload, Purpose, Scope, Transaction, actions,
    keys::{category_key_info, data_key_aad},
    tx::sign,
};
use medledger_node::{
    chain::{Chain, TxStatus},
    devnet::Devnet,
};
use medledger_types::{Hash, IdentityId, RecordId, Role, TxId};
use serde_json::json;

use crate::{
    init::{GENESIS_FILE, now_ms, slug},
    run::{RunOptions, open_chain, run},
};

pub const CREDENTIALS_FILE: &str = "dev-credentials.json";
const ORGANISATIONS: [&str; 4] =
    ["St Mary's Hospital", "City General Hospital", "Acme Health Insurance", "Northbridge Research Institute"];

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
    std::fs::create_dir_all(dir)?;
    let mut key = |label: &str| -> Keypair {
        let label = match label.strip_prefix("org/") {
            Some(name) => slug(name),
            None => "node-0".into(),
        };
        demo_key(dir, &label).expect("cannot write a demo key file")
    };
    let net = Devnet::new("medledger.dev", now_ms(), &ORGANISATIONS, 1, &mut key);
    std::fs::write(&path, net.genesis.to_bytes())?;
    Ok(net.genesis)
}

pub fn dev(dir: &Path, api_listen: SocketAddr) -> Result<()> {
    let genesis = load_or_create_genesis(dir)?;
    let node_keys = read_key_file(&key_path(dir, "node-0"))?;
    let chain = open_chain(dir, &genesis, node_keys.clone())?;
    let p2p = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let opts =
        RunOptions { p2p_listen: p2p, api_listen, peers: vec![(node_keys.public_key(), p2p)], worker_threads: 2 };
    let dir_owned = dir.to_owned();
    run(dir, chain, &node_keys, opts, move |chain, api_addr| async move {
        match seed(&dir_owned, &chain, api_addr).await {
            Ok(()) => {}
            Err(e) => tracing::error!(error = %e, "demo seeding failed"),
        }
        false
    })
}

/// Wraps `key` to `recipient_keys` (whose identity is `recipient`) for the key-share transaction.
fn key_share_entry(
    key: &CategoryKey,
    custodian: IdentityId,
    patient: IdentityId,
    category: &str,
    epoch: u32,
    recipient: IdentityId,
    recipient_keys: &Keypair,
) -> Result<KeyShareEntry> {
    let info = category_key_info(&custodian, &patient, category, epoch);
    let wrap = hpke_wrap(&recipient_keys.encryption_public_key(), &info, &recipient.0, key, &mut rand::rng())?;
    Ok(KeyShareEntry { recipient, encapsulated_key: wrap.encapsulated_key, wrapped_key: wrap.ciphertext })
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

async fn seed(dir: &Path, chain: &Arc<Chain>, api_addr: SocketAddr) -> Result<()> {
    let credentials = dir.join(CREDENTIALS_FILE);
    let chain_id = chain.state().chain_id();
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
    let patients: Vec<String> = (1..=3).map(|i| format!("patient-{i:02}")).collect();
    let fresh = chain.head().height == 0;
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
        // Patients register themselves with their own keys; names never go on-chain.
        for label in &patients {
            let d = by(label);
            txs.push(sign(
                &d.keys,
                chain_id,
                d.keys.id(),
                next(d.keys.id()),
                Payload::register(Role::Patient, &d.keys, None, ""),
            ));
        }
        commit(chain, txs).await?;
        // St Mary's creates a category key per patient and category, wrapped (HPKE) to the
        // patient and to itself, then Dr Alice commits records whose data keys are wrapped
        // under it. Until the record write path stores ciphertexts, the ciphertext hashes are
        // random placeholders: no medical data exists yet.
        let alice = by("dr-alice-st-marys");
        // A Send RNG: the seeding future crosses awaits.
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::from_rng(&mut rand::rng());
        let mut category_keys = std::collections::HashMap::new();
        let mut txs = Vec::new();
        for label in &patients {
            let p = by(label);
            for category in ["labs", "conditions"] {
                let key = CategoryKey::generate(&mut rng);
                let shares = [p.keys.id(), orgs[0].id()]
                    .into_iter()
                    .map(|recipient| {
                        let to = if recipient == orgs[0].id() { &orgs[0] } else { &p.keys };
                        key_share_entry(&key, orgs[0].id(), p.keys.id(), category, 1, recipient, to)
                    })
                    .collect::<Result<Vec<_>>>()?;
                txs.push(sign(
                    &alice.keys,
                    chain_id,
                    alice.keys.id(),
                    next(alice.keys.id()),
                    Payload::KeyShare {
                        custodian: orgs[0].id(),
                        patient: p.keys.id(),
                        category: category.into(),
                        epoch: 1,
                        shares,
                    },
                ));
                category_keys.insert((p.keys.id(), category), key);
            }
        }
        commit(chain, txs).await?;
        let mut txs = Vec::new();
        let mut records = Vec::new();
        for (i, label) in patients.iter().enumerate() {
            let p = by(label);
            for (j, (resource_type, category)) in
                [("Observation", "labs"), ("Condition", "conditions")].iter().enumerate()
            {
                let record =
                    RecordId(medledger_crypto::sha256(format!("demo-record-{i}-{j}-{}", now_ms()).as_bytes()).0);
                records.push(record);
                let data_key = DataKey::generate(&mut rng);
                let aad = data_key_aad(&record, 1, &orgs[0].id(), &p.keys.id(), category, 1);
                let wrapped = wrap_data_key(&category_keys[&(p.keys.id(), *category)], &aad, &data_key, &mut rng);
                txs.push(sign(
                    &alice.keys,
                    chain_id,
                    alice.keys.id(),
                    next(alice.keys.id()),
                    Payload::RecordCommit {
                        record_id: record,
                        version: 1,
                        patient: p.keys.id(),
                        custodian: orgs[0].id(),
                        author: alice.keys.id(),
                        resource_type: (*resource_type).into(),
                        category: (*category).into(),
                        key_epoch: 1,
                        ciphertext_hash: Hash(Keypair::generate().signing_seed()),
                        ciphertext_bytes: 1024,
                        wrapped_data_key: wrapped,
                    },
                ));
            }
        }
        commit(chain, txs).await?;
        // Patient 1 lets City General read their Observations for treatment, for 30 days; the
        // node then shares the labs key with City General (consensus checks the grant).
        let p1 = by(&patients[0]);
        let now = now_ms();
        let grant = sign(
            &p1.keys,
            chain_id,
            p1.keys.id(),
            next(p1.keys.id()),
            Payload::ConsentGrant {
                patient: p1.keys.id(),
                grantee: orgs[1].id(),
                scope: Scope::ResourceTypes(vec!["Observation".into()]),
                actions: actions::READ,
                purpose: Purpose::Treatment,
                valid_from_ms: now,
                valid_until_ms: now + 30 * 86_400_000,
            },
        );
        let grant_id = commit(chain, vec![grant]).await?[0];
        let share = key_share_entry(
            &category_keys[&(p1.keys.id(), "labs")],
            orgs[0].id(),
            p1.keys.id(),
            "labs",
            1,
            orgs[1].id(),
            &orgs[1],
        )?;
        let share_tx = sign(
            &node,
            chain_id,
            node.id(),
            next(node.id()),
            Payload::KeyShare {
                custodian: orgs[0].id(),
                patient: p1.keys.id(),
                category: "labs".into(),
                epoch: 1,
                shares: vec![share],
            },
        );
        commit(chain, vec![share_tx]).await?;
        // The node records Dr Bob's read under that grant, and a denied read by the insurer.
        let bob = by("dr-bob-city-general");
        let claims = by("acme-claims");
        let at_ms = now_ms();
        let events = sign(
            &node,
            chain_id,
            node.id(),
            next(node.id()),
            Payload::AccessEvents {
                events: vec![
                    AccessEvent {
                        accessor: bob.keys.id(),
                        patient: p1.keys.id(),
                        record: Some((records[0], 1)),
                        action: AccessAction::Read,
                        purpose: Purpose::Treatment,
                        outcome: AccessOutcome::Allowed,
                        grant_id: Some(grant_id),
                        reason: "consent-grant".into(),
                        at_ms,
                    },
                    AccessEvent {
                        accessor: claims.keys.id(),
                        patient: p1.keys.id(),
                        record: Some((records[1], 1)),
                        action: AccessAction::Read,
                        purpose: Purpose::Payment,
                        outcome: AccessOutcome::Denied,
                        grant_id: None,
                        reason: "no-grant".into(),
                        at_ms,
                    },
                ],
            },
        );
        commit(chain, vec![events]).await?;
        tracing::info!("demo data committed");
    }
    let identities: Vec<_> = demos
        .iter()
        .map(|d| {
            json!({
                "label": d.label,
                "role": d.role.as_str(),
                "id": d.keys.id().to_hex(),
                "organisation": d.organisation.map(|o| o.to_hex()),
                "key_file": d.key_file.canonicalize().unwrap_or(d.key_file.clone()),
                "signing_public_key": d.keys.public_key().to_string(),
                "encryption_public_key": hex::encode(d.keys.encryption_public_key().0),
            })
        })
        .collect();
    let doc = json!({
        "about": "Synthetic demo identities of a medledger dev network. Key files are secret (mode 0600).",
        "chain_name": chain.genesis().chain_name,
        "chain_id": chain_id.to_hex(),
        "api": format!("http://{api_addr}"),
        "identities": identities,
    });
    std::fs::write(&credentials, serde_json::to_string_pretty(&doc)? + "\n")?;
    let head = chain.head();
    println!(
        "medledger dev node ready: API http://{api_addr}  height {}  log size {}  credentials {}",
        head.height,
        head.log_size,
        credentials.display()
    );
    Ok(())
}
