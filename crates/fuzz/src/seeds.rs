//! The seed corpus: real encodings made with the crates' own encoders (`medledger-fuzz seed`
//! writes them under `corpus/<target>/seed-*`), and small FHIR examples copied from
//! `testdata/fhir` (`r4-*`, `bulk-*`). Everything here is deterministic: the same code writes
//! the same files (Ed25519 signatures are deterministic, keys come from labels).

use std::{fs, path::Path};

use medledger_api::auth;
use medledger_blobs::{BlobStore, PackBlobStore, PackOptions};
use medledger_codec::Encode;
use medledger_crypto::Keypair;
use medledger_ledger::{
    AccessAction, AccessEvent, AccessOutcome, Block, BlockHeader, KeyShareEntry, Payload, Purpose, ReviewVerdict,
    RuleSpec, Scope, Transaction, block::txs_root, tx::sign,
};
use medledger_types::{Hash, RecordId, Role, TxId};

use crate::{FuzzError, engine::Rng, io_at, targets::requests};

/// One seed file.
#[derive(Debug, Clone)]
pub struct Seed {
    pub target: &'static str,
    /// File name in the target's corpus directory.
    pub name: String,
    pub bytes: Vec<u8>,
}

fn seed(target: &'static str, name: impl Into<String>, bytes: Vec<u8>) -> Seed {
    Seed { target, name: name.into(), bytes }
}

fn keys(label: &str) -> Keypair {
    Keypair::from_label(label)
}

fn hash_of(label: &str) -> Hash {
    medledger_crypto::sha256(label.as_bytes())
}

/// One payload of every kind, with plausible values.
fn payloads() -> Vec<Payload> {
    let (org, patient, clinician) = (keys("seed-org"), keys("seed-patient"), keys("seed-clinician"));
    let record = RecordId(hash_of("seed-record").0);
    let record_commit = Payload::RecordCommit {
        record_id: record,
        version: 1,
        patient: patient.id(),
        custodian: org.id(),
        author: clinician.id(),
        resource_type: "Observation".into(),
        category: "laboratory".into(),
        key_epoch: 1,
        ciphertext_hash: hash_of("seed-ciphertext"),
        ciphertext_bytes: 1234,
        wrapped_data_key: [9; 72],
    };
    let key_share = Payload::KeyShare {
        custodian: org.id(),
        patient: patient.id(),
        category: "laboratory".into(),
        epoch: 1,
        shares: vec![
            KeyShareEntry { recipient: patient.id(), encapsulated_key: [1; 32], wrapped_key: [2; 48] },
            KeyShareEntry { recipient: org.id(), encapsulated_key: [3; 32], wrapped_key: [4; 48] },
        ],
    };
    let directory_put = Payload::DirectoryPut {
        entry_id: RecordId(hash_of("seed-directory").0),
        version: 1,
        resource_type: "Organization".into(),
        content: br#"{"resourceType":"Organization","name":"Seed Hospital"}"#.to_vec(),
    };
    let event = AccessEvent {
        accessor: clinician.id(),
        patient: patient.id(),
        record: Some((record, 1)),
        action: AccessAction::Read,
        purpose: Purpose::Treatment,
        outcome: AccessOutcome::Allowed,
        grant_id: Some(TxId(hash_of("seed-grant").0)),
        reason: "consent".into(),
        at_ms: 1_800_000_000_000,
    };
    vec![
        Payload::register(Role::Practitioner, &clinician, Some(org.id()), "Dr Seed"),
        Payload::RotateKey {
            signing_key: keys("seed-new").public_key(),
            encryption_key: keys("seed-new").encryption_public_key(),
        },
        record_commit.clone(),
        Payload::ConsentGrant {
            patient: patient.id(),
            grantee: org.id(),
            scope: Scope::Categories(vec!["laboratory".into()]),
            actions: medledger_ledger::actions::READ,
            purpose: Purpose::Treatment,
            valid_from_ms: 1_800_000_000_000,
            valid_until_ms: 1_900_000_000_000,
        },
        Payload::ConsentGrant {
            patient: patient.id(),
            grantee: clinician.id(),
            scope: Scope::Records(vec![record]),
            actions: medledger_ledger::actions::ALL,
            purpose: Purpose::Research,
            valid_from_ms: 0,
            valid_until_ms: u64::MAX,
        },
        Payload::ConsentRevoke { grant_id: TxId(hash_of("seed-grant").0) },
        Payload::AccessEvents { events: vec![event.clone(), AccessEvent { record: None, grant_id: None, ..event }] },
        key_share.clone(),
        Payload::BreakGlass { patient: patient.id(), reason: "ed-unconscious".into(), window_ms: 3_600_000 },
        Payload::InstallRule {
            patient: patient.id(),
            rule: RuleSpec { kind: "referral".into(), params: vec![0, 1, 2, 3] },
        },
        Payload::RemoveRule { rule_id: TxId(hash_of("seed-rule").0) },
        Payload::AppointDelegate { patient: patient.id(), delegate: clinician.id(), valid_until_ms: 1_900_000_000_000 },
        Payload::DismissDelegate { patient: patient.id(), delegate: clinician.id() },
        Payload::ReviewBreakGlass {
            break_glass_tx: TxId(hash_of("seed-break-glass").0),
            verdict: ReviewVerdict::Justified,
            reason: "ed-confirmed".into(),
        },
        Payload::Batch {
            ops: vec![
                Payload::register(Role::Patient, &patient, Some(org.id()), ""),
                key_share,
                record_commit,
                directory_put.clone(),
            ],
        },
        directory_put,
    ]
}

/// One signed transaction of every payload kind.
pub fn transactions() -> Vec<Transaction> {
    let signer = keys("seed-signer");
    let chain = hash_of("seed-chain");
    payloads()
        .into_iter()
        .enumerate()
        .map(|(nonce, payload)| sign(&signer, chain, signer.id(), nonce as u64, payload))
        .collect()
}

/// Blocks of none, a few, and all of the seed transactions.
pub fn blocks() -> Vec<Block> {
    let txs = transactions();
    [0..0, 0..3, 13..15, 0..txs.len()]
        .into_iter()
        .enumerate()
        .map(|(i, range)| {
            let txs = txs[range].to_vec();
            let header = BlockHeader {
                chain_id: hash_of("seed-chain"),
                height: 1 + i as u64,
                parent: hash_of("seed-parent"),
                timestamp_ms: 1_800_000_000_000 + i as u64,
                proposer: keys("seed-validator").id(),
                tx_count: txs.len() as u32,
                txs_root: txs_root(&txs),
                log_size: 100 + txs.len() as u64,
                log_root: hash_of("seed-log"),
            };
            Block { header, txs }
        })
        .collect()
}

/// Pseudo-random inputs for the targets that build their values from bytes.
fn random_inputs(target: &'static str, prefix: &[u8], sizes: &[usize]) -> Vec<Seed> {
    let mut rng = Rng::new(crate::targets::feature(&[target.as_bytes()]));
    sizes
        .iter()
        .enumerate()
        .map(|(i, &size)| seed(target, format!("seed-random-{i}.bin"), [prefix, &rng.bytes(size)].concat()))
        .collect()
}

/// Segment files of a real pack store, as `pack_scan` raw inputs: one store with one segment,
/// and one whose small segments rolled over.
fn pack_inputs() -> Result<Vec<Seed>, FuzzError> {
    let mut seeds = Vec::new();
    for (name, segment_bytes_max, blobs) in [("one-segment", 1 << 20, 4usize), ("rolled", 300, 5)] {
        let scratch = tempfile::tempdir().map_err(io_at(Path::new("temporary directory")))?;
        let dir = scratch.path().join("store");
        {
            let store = PackBlobStore::open_with(&dir, PackOptions { segment_bytes_max })
                .unwrap_or_else(|e| panic!("a fresh pack store opens: {e}"));
            for i in 0..blobs {
                let blob: Vec<u8> = format!("seed blob {i} ").bytes().cycle().take(40 + 50 * i).collect();
                store.put(&blob).unwrap_or_else(|e| panic!("a put to a fresh store: {e}"));
            }
        }
        let mut segments = Vec::new();
        for number in 1.. {
            let path = dir.join(format!("pack-{number:06}.seg"));
            if !path.exists() {
                break;
            }
            segments.push(fs::read(&path).map_err(io_at(&path))?);
        }
        // Raw form: mode 0, the count, a u16 length per segment but the last, the segments.
        let count = segments.len().min(3);
        let mut input = vec![0u8, (count - 1) as u8];
        for segment in &segments[..count - 1] {
            input.extend_from_slice(&(segment.len() as u16).to_le_bytes());
        }
        for segment in &segments[..count] {
            input.extend_from_slice(segment);
        }
        seeds.push(seed("pack_scan", format!("seed-{name}.bin"), input));
    }
    Ok(seeds)
}

fn auth_headers() -> Vec<Seed> {
    let keys = keys("seed-client");
    let cases: [(&str, &str, &[u8]); 3] =
        [("GET", "/v1/head", b""), ("POST", "/v1/records", br#"{"x":1}"#), ("GET", "/v1/patients/ab?x=1", b"")];
    cases
        .iter()
        .enumerate()
        .map(|(i, (method, path, body))| {
            let ts = 1_800_000_000_000 + i as u64;
            let nonce = format!("{:032x}", 0xfeed_0000 + i);
            let sig = keys.sign(&auth::request_message(method, path, ts, &nonce, body));
            let header = format!("{} id={},ts={ts},nonce={nonce},sig={}", auth::SCHEME, keys.id(), hex::encode(sig.0));
            seed("auth_header", format!("seed-{i}.txt"), header.into_bytes())
        })
        .collect()
}

fn jwt_inputs() -> Vec<Seed> {
    let keys = keys("seed-client");
    let iss = keys.id().to_hex();
    let exp_s = requests::NOW_MS / 1000 + 60;
    let claims = [
        format!(r#"{{"iss":"{iss}","sub":"{iss}","aud":"{}","exp":{exp_s},"jti":"seed-1"}}"#, requests::TOKEN_URLS[0]),
        format!(
            r#"{{"iss":"{iss}","sub":"{iss}","aud":["x","{}"],"exp":{exp_s},"iat":{},"nbf":{},"jti":"seed-2"}}"#,
            requests::TOKEN_URLS[1],
            exp_s - 60,
            exp_s - 60
        ),
    ];
    let header = br#"{"alg":"EdDSA","typ":"JWT","kid":"k1"}"#;
    let mut seeds = Vec::new();
    for (i, claims) in claims.iter().enumerate() {
        let b64 = |bytes: &[u8]| {
            use base64::Engine as _;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
        };
        let signing_input = format!("{}.{}", b64(header), b64(claims.as_bytes()));
        let signature = keys.sign(signing_input.as_bytes());
        let compact = format!("{signing_input}.{}", b64(&signature.0));
        seeds.push(seed("smart_jwt", format!("seed-compact-{i}.txt"), compact.into_bytes()));
        let parts = [&header[..], b"\0", claims.as_bytes(), b"\0", &signature.0].concat();
        seeds.push(seed("smart_jwt", format!("seed-parts-{i}.bin"), parts));
    }
    seeds
}

fn scope_inputs() -> Vec<Seed> {
    [
        "patient/*.rs",
        "user/Observation.cruds",
        "system/*.read",
        "user/Patient.write",
        "system/*.*",
        "patient/Observation.rs?category=laboratory",
        "user/*.sr",
    ]
    .iter()
    .enumerate()
    .map(|(i, text)| seed("smart_scope", format!("seed-{i}.txt"), text.as_bytes().to_vec()))
    .collect()
}

/// Transaction Bundles written for `fhir_bundle`: every kind of reference the planner
/// rewrites (urn:uuid, a full URL, a relative reference under an entry's base, a conditional
/// reference), updates and deletes, and a batch.
fn bundle_inputs() -> Vec<Seed> {
    let id = "0".repeat(63) + "1";
    let transaction = format!(
        r#"{{"resourceType":"Bundle","type":"transaction","entry":[
{{"fullUrl":"urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a","resource":{{"resourceType":"Patient","identifier":[{{"system":"http://x","value":"1"}}],"gender":"female"}},"request":{{"method":"POST","url":"Patient"}}}},
{{"fullUrl":"http://example.org/fhir/Patient/p2","resource":{{"resourceType":"Patient","gender":"male"}},"request":{{"method":"POST","url":"Patient"}}}},
{{"fullUrl":"http://example.org/fhir/Encounter/e1","resource":{{"resourceType":"Encounter","status":"finished","class":{{"code":"AMB"}},"subject":{{"reference":"Patient/p2"}}}},"request":{{"method":"POST","url":"Encounter"}}}},
{{"resource":{{"resourceType":"Observation","status":"final","code":{{"text":"x"}},"subject":{{"reference":"urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a"}},"encounter":{{"reference":"http://example.org/fhir/Encounter/e1"}},"performer":[{{"reference":"Practitioner?identifier=http://x|2"}}],"valueQuantity":{{"value":5.40,"unit":"mmol/L"}}}},"request":{{"method":"POST","url":"Observation"}}}},
{{"resource":{{"resourceType":"Condition","id":"{id}","subject":{{"reference":"Patient?identifier=http://x|1"}}}},"request":{{"method":"PUT","url":"Condition/{id}","ifMatch":"W/\"1\""}}}},
{{"request":{{"method":"DELETE","url":"Observation/{id}"}}}}
]}}"#
    );
    let batch = r#"{"resourceType":"Bundle","type":"batch","entry":[
{"resource":{"resourceType":"Organization","name":"Seed Clinic"},"request":{"method":"POST","url":"Organization"}},
{"resource":{"resourceType":"Practitioner","identifier":[{"system":"http://x","value":"2"}]},"request":{"method":"POST","url":"Practitioner","ifNoneExist":"identifier=http://x|2"}}
]}"#;
    vec![
        seed("fhir_bundle", "seed-transaction.json", transaction.into_bytes()),
        seed("fhir_bundle", "seed-batch.json", batch.as_bytes().to_vec()),
    ]
}

/// Every generated seed.
pub fn generated() -> Result<Vec<Seed>, FuzzError> {
    let mut seeds = Vec::new();
    for tx in transactions() {
        let kind = tx.body().payload.kind();
        seeds.push(seed("tx_decode", format!("seed-{kind}.bin"), tx.bytes().to_vec()));
    }
    for (i, block) in blocks().iter().enumerate() {
        seeds.push(seed("block_decode", format!("seed-{i}-{}-txs.bin", block.txs.len()), block.to_bytes()));
    }
    seeds.extend(random_inputs("tx_roundtrip", &[], &[64, 200, 600, 1500, 4000]));
    seeds.extend(random_inputs("block_roundtrip", &[], &[300, 1500, 6000]));
    seeds.extend(random_inputs("pack_scan", &[1], &[100, 400, 1200, 3000]));
    seeds.extend(pack_inputs()?);
    seeds.extend(auth_headers());
    seeds.extend(jwt_inputs());
    seeds.extend(scope_inputs());
    seeds.extend(bundle_inputs());
    Ok(seeds)
}

/// Small FHIR examples from `testdata/fhir` (under `repo`): up to three of each resource type
/// of at most 3,000 bytes, the first resource of each bulk NDJSON file, and the transaction
/// and batch Bundles of at most 6,000 bytes (also for `fhir_bundle`).
pub fn fhir_examples(repo: &Path) -> Result<Vec<Seed>, FuzzError> {
    let examples = repo.join("testdata/fhir/r4-examples");
    let mut names: Vec<String> = fs::read_dir(&examples)
        .map_err(io_at(&examples))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".json"))
        .collect();
    names.sort();
    let mut seeds = Vec::new();
    let mut per_type: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for name in names {
        let path = examples.join(&name);
        let bytes = fs::read(&path).map_err(io_at(&path))?;
        let resource_type = name.split('-').next().unwrap_or("").to_owned();
        let taken = per_type.entry(resource_type.clone()).or_default();
        if bytes.len() <= 3_000 && *taken < 3 {
            *taken += 1;
            seeds.push(seed("fhir_validate", format!("r4-{name}"), bytes.clone()));
        }
        let text = String::from_utf8_lossy(&bytes);
        let is_request_bundle = text.contains(r#""type": "transaction""#) || text.contains(r#""type": "batch""#);
        if resource_type == "Bundle" && bytes.len() <= 6_000 && is_request_bundle {
            seeds.push(seed("fhir_bundle", format!("r4-{name}"), bytes));
        }
    }
    let bulk = repo.join("testdata/fhir/bulk-ndjson-10-patients");
    let mut files: Vec<String> = fs::read_dir(&bulk)
        .map_err(io_at(&bulk))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".ndjson"))
        .collect();
    files.sort();
    for file in files {
        let path = bulk.join(&file);
        let text = fs::read_to_string(&path).map_err(io_at(&path))?;
        if let Some(first) = text.lines().next().filter(|l| l.len() <= 6_000) {
            let name = file.trim_end_matches(".000.ndjson");
            seeds.push(seed("fhir_validate", format!("bulk-{name}.json"), first.as_bytes().to_vec()));
        }
    }
    Ok(seeds)
}

/// Writes every seed under `corpus_root/<target>/`, replacing files of the same name and
/// leaving others (regression inputs) alone; returns how many were written.
pub fn write_all(corpus_root: &Path, repo: &Path) -> Result<usize, FuzzError> {
    let mut seeds = generated()?;
    seeds.extend(fhir_examples(repo)?);
    for seed in &seeds {
        let dir = corpus_root.join(seed.target);
        fs::create_dir_all(&dir).map_err(io_at(&dir))?;
        let path = dir.join(&seed.name);
        fs::write(&path, &seed.bytes).map_err(io_at(&path))?;
    }
    Ok(seeds.len())
}
