//! The patient's view over HTTP: own records, grants, access log with offline-verifiable
//! proofs, notifications; version history for whoever may read a record; everyone else 403.

use std::sync::Arc;

use axum::{body::Body, http::Request};
use medledger_api::auth::authorization;
use medledger_blobs::MemoryBlobStore;
use medledger_crypto::Keypair;
use medledger_ledger::{Payload, Purpose, Scope, actions, tx::sign};
use medledger_merkle::{Hash, verify_inclusion};
use medledger_node::{chain::Chain, devnet::Devnet, records::RecordService};
use medledger_types::Role;
use serde_json::Value;
use tower::ServiceExt;

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

struct World {
    net: Devnet,
    chain: Arc<Chain>,
    service: Arc<RecordService>,
    router: axum::Router,
    doc_a: Keypair,
    doc_b: Keypair,
    patient: Keypair,
    other_patient: Keypair,
    _dir: tempfile::TempDir,
}

impl World {
    fn new() -> Self {
        let net = Devnet::new("medledger.api-patient", now_ms() - 60_000, &["Hospital A", "Clinic B"], 2, &mut |l| {
            Keypair::from_label(l)
        });
        let dir = tempfile::tempdir().unwrap();
        let (chain, _) = Chain::open(dir.path(), &net.genesis, net.validators[0].clone(), &mut |_, _| {}).unwrap();
        let chain = Arc::new(chain);
        let (org_a, org_b) = (net.organisations[0].clone(), net.organisations[1].clone());
        let doc_a = Keypair::from_label("dr-a");
        let doc_b = Keypair::from_label("dr-b");
        let patient = Keypair::from_label("patient");
        let other_patient = Keypair::from_label("other-patient");
        let t = now_ms();
        chain.submit_as(&org_a, Payload::register(Role::Practitioner, &doc_a, Some(org_a.id()), "Dr A"), t).unwrap();
        chain.submit_as(&org_b, Payload::register(Role::Practitioner, &doc_b, Some(org_b.id()), "Dr B"), t).unwrap();
        for p in [&patient, &other_patient] {
            let tx = sign(p, net.genesis.chain_id(), p.id(), 0, Payload::register(Role::Patient, p, None, ""));
            chain.submit(tx.bytes(), t).unwrap();
        }
        let service = Arc::new(RecordService::new(
            chain.clone(),
            net.validators[0].clone(),
            org_a,
            Arc::new(MemoryBlobStore::default()),
        ));
        let router = medledger_api::router_with(chain.clone(), Some(service.clone()));
        let w = Self { net, chain, service, router, doc_a, doc_b, patient, other_patient, _dir: dir };
        w.commit();
        w
    }

    fn commit(&self) {
        medledger_node::devnet::commit_pending(&self.chain, self.net.validators[0].id(), now_ms()).unwrap();
    }

    /// Commits the queued access events.
    fn flush(&self) {
        self.service.flush_events(now_ms()).unwrap();
        self.commit();
    }

    async fn call(&self, method: &str, path: &str, keys: Option<&Keypair>, body: &[u8]) -> (u16, Vec<u8>) {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(k) = keys {
            request = request.header("authorization", authorization(k, &k.id(), method, path, body, now_ms()));
        }
        let response = self.router.clone().oneshot(request.body(Body::from(body.to_vec())).unwrap()).await.unwrap();
        let status = response.status().as_u16();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
        (status, bytes.to_vec())
    }

    async fn get_json(&self, path: &str, keys: &Keypair) -> Value {
        let (status, body) = self.call("GET", path, Some(keys), b"").await;
        assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&body));
        json(&body)
    }
}

fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap()
}

fn hash(v: &Value) -> Hash {
    Hash::from_hex(v.as_str().unwrap()).unwrap()
}

#[tokio::test]
async fn the_patient_sees_records_grants_access_log_and_notifications() {
    let w = World::new();
    let p = w.patient.id();
    let synthetic = medledger_synth::Generator::new(7).patient();
    let lab = synthetic.resources.iter().find(|r| r.category == "labs").unwrap();
    let write_path = format!("/v1/records?patient={p}");
    let (status, body) = w.call("POST", &write_path, Some(&w.doc_a), &lab.json).await;
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
    let record = json(&body)["record_id"].as_str().unwrap().to_owned();
    w.commit();
    let (status, _) = w.call("POST", &format!("{write_path}&record={record}"), Some(&w.doc_a), &lab.json).await;
    assert_eq!(status, 201);
    w.commit();

    // Reads, allowed and refused, become access events.
    let read_path = format!("/v1/records/{record}?purpose=TREAT");
    assert_eq!(w.call("GET", &read_path, Some(&w.doc_a), b"").await.0, 200);
    assert_eq!(w.call("GET", &read_path, Some(&w.doc_b), b"").await.0, 403);
    w.flush();

    // A consent grant ending in 3 days (expiring soon), its key wrap, and a break-glass.
    let t = now_ms();
    let grant = Payload::ConsentGrant {
        patient: p,
        grantee: w.doc_b.id(),
        scope: Scope::Categories(vec!["labs".into()]),
        actions: actions::READ,
        purpose: Purpose::Research,
        valid_from_ms: t - 1_000,
        valid_until_ms: t + 3 * 86_400_000,
    };
    let grant_id = w.chain.submit_as(&w.patient, grant, t).unwrap();
    let bg = Payload::BreakGlass { patient: p, reason: "unconscious-ed".into(), window_ms: 4 * 3_600_000 };
    let bg_id = w.chain.submit_as(&w.doc_b, bg, t).unwrap();
    w.commit();
    let wraps = w.service.share_keys_for_grant(&grant_id, now_ms(), &mut rand::rng()).unwrap();
    assert_eq!(wraps.len(), 1);
    w.commit();
    // Under break-glass (purpose Emergency) the read is allowed, through the custodian's node,
    // and flagged.
    let emergency = format!("/v1/records/{record}?purpose=ETREAT");
    assert_eq!(w.call("GET", &emergency, Some(&w.doc_b), b"").await.0, 200);
    // History reads are decided and audited too.
    let history = format!("/v1/records/{record}/history?purpose=ETREAT");
    let h = w.get_json(&history, &w.doc_b).await;
    assert_eq!(h["basis"], "break-glass");
    w.flush();

    // Records and versions.
    let records = w.get_json(&format!("/v1/patients/{p}/records"), &w.patient).await;
    assert_eq!(records["total"], 1);
    let r = &records["records"][0];
    assert_eq!(r["record_id"], record.as_str());
    assert_eq!(r["resource_type"], "Observation");
    assert_eq!(r["category"], "labs");
    assert_eq!(r["custodian"], w.net.organisations[0].id().to_hex());
    assert_eq!(r["latest_version"], 2);
    let versions = r["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 2);
    assert!(versions.iter().all(|v| v["author"] == w.doc_a.id().to_hex()));
    assert_eq!(versions[1]["version"], 2);

    // Grants: the consent and the break-glass, with origin and liveness.
    let grants = w.get_json(&format!("/v1/patients/{p}/grants"), &w.patient).await;
    let grants = grants["grants"].as_array().unwrap();
    assert_eq!(grants.len(), 2);
    let consent = grants.iter().find(|g| g["grant_id"] == grant_id.to_hex()).unwrap();
    assert_eq!(consent["origin"], "consent");
    assert_eq!(consent["scope"]["kind"], "categories");
    assert_eq!(consent["purpose"], "HRESCH");
    assert_eq!(consent["actions"], serde_json::json!(["read"]));
    assert_eq!(consent["live"], true);
    assert!(consent["revoked_at"].is_null());
    let glass = grants.iter().find(|g| g["grant_id"] == bg_id.to_hex()).unwrap();
    assert_eq!((glass["origin"].as_str(), glass["reason"].as_str()), (Some("break-glass"), Some("unconscious-ed")));
    assert_eq!(glass["needs_review"], true);

    // Access log: every entry proves offline against the returned root, which is the head's.
    let log = w.get_json(&format!("/v1/patients/{p}/access-log"), &w.patient).await;
    let head = w.get_json("/v1/head", &w.patient).await;
    assert_eq!(log["log_root"], head["log_root"]);
    assert_eq!(log["log_size"], head["log_size"]);
    let (size, root) = (log["log_size"].as_u64().unwrap(), hash(&log["log_root"]));
    let entries = log["entries"].as_array().unwrap();
    assert!(entries.len() >= 4, "{entries:?}");
    for e in entries {
        let proof: Vec<Hash> = e["proof"].as_array().unwrap().iter().map(hash).collect();
        verify_inclusion(e["log_index"].as_u64().unwrap(), size, &hash(&e["tx_id"]), &proof, &root).unwrap();
    }
    let who = |e: &Value| (e["accessor"].as_str().unwrap().to_owned(), e["outcome"].as_str().unwrap().to_owned());
    assert!(entries.iter().any(|e| who(e) == (w.doc_a.id().to_hex(), "allowed".into())));
    assert!(entries.iter().any(|e| who(e) == (w.doc_b.id().to_hex(), "denied".into()) && e["reason"] == "no-grant"));
    assert!(entries.iter().any(|e| e["action"] == "read" && e["outcome"] == "break-glass"));
    assert!(entries.iter().any(|e| e["action"] == "history" && e["outcome"] == "break-glass"));
    // Paging.
    let page = w.get_json(&format!("/v1/patients/{p}/access-log?from=1&limit=1"), &w.patient).await;
    assert_eq!(page["entries"].as_array().unwrap().len(), 1);
    assert_eq!(page["entries"][0]["tx_id"], entries[1]["tx_id"]);
    assert_eq!(page["next"], 2);

    // Notifications: accesses (break-glass flagged), the declaration, the wrap, the expiring grant.
    let notes = w.get_json(&format!("/v1/patients/{p}/notifications?since_ms=0"), &w.patient).await;
    let notes = notes["notifications"].as_array().unwrap();
    let kinds: Vec<&str> = notes.iter().map(|n| n["kind"].as_str().unwrap()).collect();
    for kind in ["access", "break-glass", "grant-wrap", "grant-expiring"] {
        assert!(kinds.contains(&kind), "{kind} missing from {kinds:?}");
    }
    assert!(notes.iter().any(|n| n["kind"] == "access" && n["break_glass"] == true));
    assert!(notes.iter().any(|n| n["kind"] == "break-glass" && n["tx_id"] == bg_id.to_hex()));
    assert!(notes.iter().any(|n| n["kind"] == "grant-wrap" && n["recipient"] == w.doc_b.id().to_hex()));
    assert!(notes.iter().any(|n| n["kind"] == "grant-expiring" && n["grant_id"] == grant_id.to_hex()));
    // Nothing new after the newest block: only current conditions (expiring grants) remain.
    let until = w.get_json(&format!("/v1/patients/{p}/notifications"), &w.patient).await["until_ms"].as_u64().unwrap();
    let later = w.get_json(&format!("/v1/patients/{p}/notifications?since_ms={until}"), &w.patient).await;
    assert!(later["notifications"].as_array().unwrap().iter().all(|n| n["kind"] == "grant-expiring"));
}

#[tokio::test]
async fn only_the_patient_and_only_good_parameters() {
    let w = World::new();
    let p = w.patient.id();
    for path in ["records", "grants", "access-log", "notifications"] {
        let path = format!("/v1/patients/{p}/{path}");
        for other in [&w.doc_a, &w.other_patient] {
            let (status, body) = w.call("GET", &path, Some(other), b"").await;
            assert_eq!(status, 403, "{path}");
            assert_eq!(json(&body)["error"]["reason"], "not-the-patient");
            assert_eq!(json(&body)["error"]["code"], 403);
        }
        assert_eq!(w.call("GET", &path, None, b"").await.0, 401, "{path} unsigned");
        assert_eq!(w.call("GET", &path, Some(&w.patient), b"").await.0, 200, "{path}");
    }
    for bad in [
        format!("/v1/patients/{p}/access-log?limit=501"),
        format!("/v1/patients/{p}/access-log?limit=0"),
        format!("/v1/patients/{p}/access-log?limit=abc"),
        format!("/v1/patients/{p}/access-log?from=-1"),
        format!("/v1/patients/{p}/records?from=1.5"),
        format!("/v1/patients/{p}/notifications?since_ms=yesterday"),
        "/v1/patients/not-hex/grants".to_owned(),
        format!("/v1/records/{}/history?purpose=NOPE", "ab".repeat(32)),
        "/v1/records/xyz/history".to_owned(),
    ] {
        let (status, body) = w.call("GET", &bad, Some(&w.patient), b"").await;
        assert_eq!(status, 400, "{bad}: {}", String::from_utf8_lossy(&body));
        assert_eq!(json(&body)["error"]["code"], 400);
    }
    // An empty view is empty, not an error; paging past the end is empty too.
    let log = w.get_json(&format!("/v1/patients/{p}/access-log?from=1000000&limit=500"), &w.patient).await;
    assert_eq!(log["entries"].as_array().unwrap().len(), 0);
    assert_eq!(log["total"], 0);

    // History: custodian staff yes; a stranger is refused with the reason; unknown record 404.
    let synthetic = medledger_synth::Generator::new(3).patient();
    let lab = synthetic.resources.iter().find(|r| r.category == "labs").unwrap();
    let (status, body) = w.call("POST", &format!("/v1/records?patient={p}"), Some(&w.doc_a), &lab.json).await;
    assert_eq!(status, 201);
    let record = json(&body)["record_id"].as_str().unwrap().to_owned();
    w.commit();
    let history = format!("/v1/records/{record}/history");
    let h = w.get_json(&history, &w.doc_a).await;
    assert_eq!(h["basis"], "custodian");
    assert_eq!(h["versions"][0]["version"], 1);
    assert_eq!(h["patient"], p.to_hex());
    assert_eq!(w.get_json(&history, &w.patient).await["basis"], "patient");
    let (status, body) = w.call("GET", &history, Some(&w.doc_b), b"").await;
    assert_eq!(status, 403);
    assert_eq!(json(&body)["error"]["reason"], "no-grant");
    let unknown = format!("/v1/records/{}/history", "ab".repeat(32));
    assert_eq!(w.call("GET", &unknown, Some(&w.doc_a), b"").await.0, 404);
    // The refusal was audited as a history access event.
    w.flush();
    let log = w.get_json(&format!("/v1/patients/{p}/access-log"), &w.patient).await;
    assert!(
        log["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "history" && e["outcome"] == "denied" && e["accessor"] == w.doc_b.id().to_hex())
    );
}
