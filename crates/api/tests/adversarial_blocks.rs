//! Adversarial: what the ledger endpoints tell someone who is not a consortium member.
//!
//! Every transaction names pseudonymous patients together with what was done for them: a
//! record's type, category and custodian, a grant's grantee and purpose, an access's or a
//! break-glass's reason. That is personal health metadata. Without a signature, or signed by
//! anyone but a member (an organisation or a validator), the API shows block headers,
//! transaction ids and where each is in the log, which is all the portal needs to check
//! proofs; only members (and a transaction's own signer, for that transaction) see more.

use medledger_crypto::Keypair;
use medledger_ledger::{Block, Payload, Purpose, Scope, actions};
use medledger_records::WriteRequest;
use medledger_types::{TxId, limits};
use serde_json::Value;

mod common;

use common::{now_ms, request::Answer, world::World};

/// What a caller who is not a member may see of a committed transaction.
const PUBLIC_TX_FIELDS: [&str; 5] = ["tx_id", "status", "height", "index", "log_index"];

/// A chain holding one of each kind of sensitive transaction about one patient: their
/// registration by Hospital A, a lab kept by Hospital A, their research grant to Clinic B,
/// a Clinic B doctor's break-glass, and the access events of a read. The other patient is a
/// registered identity, but no member. Also returns the patient's grant to Clinic B (signed
/// by the patient) and the record commit of the lab (signed by Hospital A's validator).
fn world() -> (World, TxId, TxId) {
    let w = World::hospital_and_clinic("medledger.api-blocks")
        .practitioner("blocks-dr-a", 0, "Dr A")
        .practitioner("blocks-dr-b", 1, "Dr B")
        .patients(&["blocks-patient", "blocks-mallory"])
        .records()
        .commit_wait_ms(0)
        .build();
    let (patient, doc_b) = (w.patient(), w.doc_b());
    let lab = br#"{"resourceType":"Observation","status":"final","code":{"text":"HIV viral load"},"valueQuantity":{"value":20,"unit":"copies/mL"}}"#;
    let request = WriteRequest {
        author: w.doc_a().id(),
        patient: patient.id(),
        resource_type: "Observation",
        category: "labs",
        content: lab,
        record: None,
    };
    let written = w.service().write(&request, now_ms(), &mut rand::rng()).unwrap();
    w.commit();

    let t = now_ms();
    let grant = Payload::ConsentGrant {
        patient: patient.id(),
        grantee: w.net.organisations[1].id(),
        scope: Scope::Categories(vec!["labs".into()]),
        actions: actions::READ,
        purpose: Purpose::Research,
        valid_from_ms: t - 1_000,
        valid_until_ms: t + 86_400_000,
    };
    let grant = w.chain.submit_as(patient, grant, t).unwrap();
    w.commit();

    let break_glass = Payload::BreakGlass {
        patient: patient.id(),
        reason: "unconscious-in-er".into(),
        window_ms: limits::BREAK_GLASS_WINDOW_MIN_MS,
    };
    w.chain.submit_as(doc_b, break_glass, now_ms()).unwrap();
    w.commit();

    // A read by Clinic B's doctor for treatment: decided, and the decision audited.
    let _ = w.service().read(doc_b.id(), written.record_id, None, Purpose::Treatment, now_ms());
    assert!(!w.service().flush_events(now_ms()).unwrap().is_empty(), "the read left an access event");
    w.commit();
    (w, grant, written.tx_id)
}

/// Every finalized block.
fn blocks(w: &World) -> Vec<Block> {
    (1..=w.chain.head().height).map(|h| w.chain.block(h).unwrap().unwrap()).collect()
}

/// What a block says about patients: every kind and signer, and in every operation the
/// patients, custodians, authors, grantees and accessors named, record types, categories,
/// purposes and reasons. (Not the proposer: a validator, named in the public header, whose id
/// alone says nothing about which transaction it signed.)
fn metadata_of(block: &Block) -> Vec<String> {
    let mut out = Vec::new();
    for tx in &block.txs {
        let body = tx.body();
        out.push(body.payload.kind().to_owned());
        out.push(body.signer.to_hex());
        for op in body.payload.ops() {
            match op {
                Payload::RecordCommit { patient, custodian, author, resource_type, category, .. } => {
                    out.extend([patient.to_hex(), custodian.to_hex(), author.to_hex()]);
                    out.extend([resource_type.clone(), category.clone()]);
                }
                Payload::ConsentGrant { patient, grantee, purpose, .. } => {
                    out.extend([patient.to_hex(), grantee.to_hex(), purpose.code().to_owned()]);
                }
                Payload::AccessEvents { events } => {
                    for e in events {
                        out.extend([e.accessor.to_hex(), e.patient.to_hex(), e.purpose.code().to_owned()]);
                        out.push(e.reason.clone());
                    }
                }
                Payload::BreakGlass { patient, reason, .. } => out.extend([patient.to_hex(), reason.clone()]),
                Payload::KeyShare { custodian, patient, category, .. } => {
                    out.extend([custodian.to_hex(), patient.to_hex(), category.clone()]);
                }
                _ => {}
            }
        }
    }
    out.retain(|m| *m != block.header.proposer.to_hex());
    out.sort();
    out.dedup();
    out
}

fn assert_reveals_none(what: &str, answer: &Answer, metadata: &[String]) {
    let text = answer.text();
    for secret in metadata {
        assert!(!text.contains(secret.as_str()), "{what} reveals {secret:?}: {text}");
    }
}

#[tokio::test]
async fn outsiders_cannot_read_raw_blocks_or_transaction_details() {
    let (w, grant, record_commit) = world();
    let blocks = blocks(&w);
    let all: Vec<String> = blocks.iter().flat_map(metadata_of).collect();
    for needle in ["Observation", "labs", "HRESCH", "unconscious-in-er", "consent-grant", "break-glass"] {
        assert!(all.iter().any(|m| m == needle), "the chain under test holds {needle:?}");
    }
    let org_b = w.net.organisations[1].clone();

    for (who, keys) in [("an outsider", None), ("another patient", Some(w.other_patient()))] {
        for block in &blocks {
            let h = block.header.height;
            let metadata = metadata_of(block);

            // Raw bytes: members only.
            let raw = w.call("GET", &format!("/v1/blocks/{h}/raw"), keys, b"").await;
            let (want, reason) = if keys.is_some() { (403, Some("not-a-member")) } else { (401, None) };
            assert_eq!(raw.status, want, "{who} GET /v1/blocks/{h}/raw answered {} bytes", raw.body.len());
            assert_eq!(raw.json()["error"]["code"], want, "{who}: an error body, not the block");
            assert_eq!(raw.json()["error"]["reason"].as_str(), reason, "{who}");

            // The JSON block: its header and its transactions' ids, nothing about them.
            let json = w.call("GET", &format!("/v1/blocks/{h}"), keys, b"").await;
            assert_eq!(json.status, 200, "{who} GET /v1/blocks/{h}: {}", json.text());
            let v = json.json();
            assert_eq!(v["hash"], block.hash().to_hex());
            assert_eq!(v["log_root"], block.header.log_root.to_hex());
            let listed = v["transactions"].as_array().unwrap();
            assert_eq!(listed.len(), block.txs.len());
            for (entry, tx) in listed.iter().zip(&block.txs) {
                assert_eq!(entry, &serde_json::json!({"tx_id": tx.id().to_hex()}), "{who}, block {h}");
            }
            assert_reveals_none(&format!("{who}'s /v1/blocks/{h}"), &json, &metadata);

            // Each transaction: committed, and where; not what or by whom.
            for (i, tx) in block.txs.iter().enumerate() {
                let answer = w.call("GET", &format!("/v1/transactions/{}", tx.id()), keys, b"").await;
                assert_eq!(answer.status, 200, "{who}: {}", answer.text());
                let v = answer.json();
                let fields: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
                assert!(fields.iter().all(|f| PUBLIC_TX_FIELDS.contains(f)), "{who} sees {fields:?} of a transaction");
                assert_eq!(
                    (v["status"].as_str(), v["height"].as_u64(), v["index"].as_u64()),
                    (Some("committed"), Some(h), Some(i as u64))
                );
                assert_reveals_none(&format!("{who}'s /v1/transactions/{}", tx.id()), &answer, &metadata);
            }
        }
    }

    // The patient sees their own grant's details, and no one else's transaction's.
    let own = w.call("GET", &format!("/v1/transactions/{grant}"), Some(w.patient()), b"").await.json();
    assert_eq!(
        (own["kind"].as_str(), own["signer"].as_str()),
        (Some("consent-grant"), Some(w.patient().id().to_hex().as_str()))
    );
    let theirs = w.call("GET", &format!("/v1/transactions/{record_commit}"), Some(w.patient()), b"").await.json();
    assert!(theirs.get("kind").is_none() && theirs.get("signer").is_none(), "{theirs}");

    // A member organisation (and a validator) still gets everything.
    for member in [&org_b, &w.net.validators[1]] {
        for block in &blocks {
            let h = block.header.height;
            let raw = w.call("GET", &format!("/v1/blocks/{h}/raw"), Some(member), b"").await;
            assert_eq!(raw.status, 200, "member GET /v1/blocks/{h}/raw: {}", raw.text());
            assert_eq!(&Block::decode(&raw.body).unwrap(), block);
            let v = w.call("GET", &format!("/v1/blocks/{h}"), Some(member), b"").await.json();
            for (entry, tx) in v["transactions"].as_array().unwrap().iter().zip(&block.txs) {
                assert_eq!(entry["kind"], tx.body().payload.kind());
                assert_eq!(entry["signer"], tx.body().signer.to_hex());
                assert_eq!(entry["nonce"], tx.body().nonce);
            }
            for tx in &block.txs {
                let v = w.call("GET", &format!("/v1/transactions/{}", tx.id()), Some(member), b"").await.json();
                assert_eq!(
                    (v["kind"].as_str(), v["signer"].clone()),
                    (Some(tx.body().payload.kind()), Value::String(tx.body().signer.to_hex()))
                );
            }
        }
    }
}

#[tokio::test]
async fn outsiders_cannot_tell_a_pseudonym_is_a_registered_patient() {
    let (w, _, _) = world();
    let unknown = Keypair::from_label("blocks-nobody").id();
    let patient = w.patient().id();
    // Answers about the patient, with the id replaced, compared with answers about an id that
    // names no one.
    let seen = |answer: Answer, id: &str| (answer.status, answer.text().replace(id, "{ID}"));
    for (who, keys) in [("an outsider", None), ("another patient", Some(w.other_patient()))] {
        let real = w.call("GET", &format!("/v1/identities/{patient}"), keys, b"").await;
        let none = w.call("GET", &format!("/v1/identities/{unknown}"), keys, b"").await;
        assert_eq!(seen(real, &patient.to_hex()), seen(none, &unknown.to_hex()), "{who} tells the patient exists");
    }
    // The patient (for their own nonce) and members (who replicate the chain anyway) see it;
    // organisations and their staff stay public.
    for keys in [w.patient(), &w.net.organisations[1]] {
        let v = w.call("GET", &format!("/v1/identities/{patient}"), Some(keys), b"").await.json();
        assert_eq!((v["role"].as_str(), v["next_nonce"].as_u64()), (Some("patient"), Some(1)), "{v}");
    }
    let org = w.net.organisations[0].id();
    assert_eq!(w.call("GET", &format!("/v1/identities/{org}"), None, b"").await.json()["role"], "organisation");
    let doc = Keypair::from_label("blocks-dr-a").id();
    assert_eq!(w.call("GET", &format!("/v1/identities/{doc}"), None, b"").await.json()["role"], "practitioner");
}
