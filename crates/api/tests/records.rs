//! Record endpoints: signed requests, writes by the custodian's staff only, reads allowed by
//! consent and refused with a machine-readable reason otherwise.

use std::sync::Arc;

use axum::{body::Body, http::Request};
use medledger_api::auth::authorization;
use medledger_blobs::MemoryBlobStore;
use medledger_crypto::Keypair;
use medledger_ledger::Payload;
use medledger_node::{chain::Chain, devnet::Devnet};
use medledger_records::RecordService;
use medledger_types::Role;
use serde_json::Value;
use tower::ServiceExt;

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

struct World {
    net: Devnet,
    chain: Arc<Chain>,
    router: axum::Router,
    doc_a: Keypair,
    doc_b: Keypair,
    patient: Keypair,
    _dir: tempfile::TempDir,
}

impl World {
    fn new() -> Self {
        let net = Devnet::new("medledger.api-records", now_ms() - 60_000, &["Hospital A", "Clinic B"], 2, &mut |l| {
            Keypair::from_label(l)
        });
        let dir = tempfile::tempdir().unwrap();
        let (chain, _) = Chain::open(dir.path(), &net.genesis, net.validators[0].clone(), &mut |_, _| {}).unwrap();
        let chain = Arc::new(chain);
        let (org_a, org_b) = (net.organisations[0].clone(), net.organisations[1].clone());
        let doc_a = Keypair::from_label("dr-a");
        let doc_b = Keypair::from_label("dr-b");
        let patient = Keypair::from_label("patient");
        let t = now_ms();
        chain.submit_as(&org_a, Payload::register(Role::Practitioner, &doc_a, Some(org_a.id()), "Dr A"), t).unwrap();
        chain.submit_as(&org_b, Payload::register(Role::Practitioner, &doc_b, Some(org_b.id()), "Dr B"), t).unwrap();
        chain.submit_as(&org_a, Payload::register(Role::Patient, &patient, None, ""), t).unwrap();
        let service = Arc::new(RecordService::new(
            chain.clone(),
            net.validators[0].clone(),
            org_a,
            Arc::new(MemoryBlobStore::default()),
        ));
        let router = medledger_api::router_with(chain.clone(), Some(service));
        let w = Self { net, chain, router, doc_a, doc_b, patient, _dir: dir };
        w.commit();
        w
    }

    fn commit(&self) {
        medledger_node::devnet::commit_pending(&self.chain, self.net.validators[0].id(), now_ms()).unwrap();
    }

    async fn call(&self, method: &str, path: &str, keys: Option<&Keypair>, body: &[u8]) -> (u16, Vec<u8>) {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(k) = keys {
            request = request.header("authorization", authorization(k, &k.id(), method, path, body, now_ms()));
        }
        self.send(request.body(Body::from(body.to_vec())).unwrap()).await
    }

    async fn send(&self, request: Request<Body>) -> (u16, Vec<u8>) {
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status().as_u16();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
        (status, bytes.to_vec())
    }
}

fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap()
}

#[tokio::test]
async fn records_over_http_are_signed_consented_and_explained() {
    let w = World::new();
    let synthetic = medledger_synth::Generator::new(11).patient();
    let lab = synthetic.resources.iter().find(|r| r.category == "labs").unwrap();
    let write_path = format!("/v1/records?patient={}", w.patient.id());

    // Writes: only this organisation's staff, with a valid signature and a FHIR body.
    let (status, body) = w.call("POST", &write_path, Some(&w.doc_b), &lab.json).await;
    assert_eq!(status, 403, "{}", String::from_utf8_lossy(&body));
    assert_eq!(json(&body)["error"]["reason"], "not-custodian-staff");
    assert_eq!(w.call("POST", &write_path, None, &lab.json).await.0, 401);
    assert_eq!(w.call("POST", &write_path, Some(&w.doc_a), b"not json").await.0, 400);
    let ambiguous = br#"{"resourceType":"Observation","status":"final","category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"laboratory"},{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"vital-signs"}]}]}"#;
    assert_eq!(w.call("POST", &write_path, Some(&w.doc_a), ambiguous).await.0, 400, "both lab and vital");
    let (status, body) = w.call("POST", &write_path, Some(&w.doc_a), &lab.json).await;
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
    let record = json(&body)["record_id"].as_str().unwrap().to_owned();
    w.commit();

    // Reads: the author and the patient get the exact bytes; to others the record is not there
    // (the reason is in the access event the patient sees).
    let read_path = format!("/v1/records/{record}?purpose=TREAT");
    let (status, body) = w.call("GET", &read_path, Some(&w.doc_a), b"").await;
    assert_eq!(status, 200);
    assert_eq!(body, lab.json);
    assert_eq!(w.call("GET", &read_path, Some(&w.patient), b"").await.1, lab.json);
    let (status, body) = w.call("GET", &read_path, Some(&w.doc_b), b"").await;
    assert_eq!(status, 404);
    assert_eq!(json(&body)["error"]["message"], format!("record {record} does not exist"));
    // Unsigned, forged, replayed and stale requests are refused before anything is read.
    assert_eq!(w.call("GET", &read_path, None, b"").await.0, 401);
    let header = authorization(&w.doc_a, &w.doc_a.id(), "GET", &read_path, b"", now_ms());
    let replay = || Request::builder().uri(&read_path).header("authorization", &header).body(Body::empty()).unwrap();
    assert_eq!(w.send(replay()).await.0, 200);
    assert_eq!(w.send(replay()).await.0, 401, "replayed request accepted");
    let forged = authorization(&w.doc_b, &w.doc_a.id(), "GET", &read_path, b"", now_ms());
    let forged = Request::builder().uri(&read_path).header("authorization", forged).body(Body::empty()).unwrap();
    assert_eq!(w.send(forged).await.0, 401);
    let stale = authorization(&w.doc_a, &w.doc_a.id(), "GET", &read_path, b"", now_ms() - 3_600_000);
    let stale = Request::builder().uri(&read_path).header("authorization", stale).body(Body::empty()).unwrap();
    assert_eq!(w.send(stale).await.0, 401);
    // A signature for another path does not authorise this one.
    let other = authorization(&w.doc_a, &w.doc_a.id(), "GET", "/v1/records/00", b"", now_ms());
    let other = Request::builder().uri(&read_path).header("authorization", other).body(Body::empty()).unwrap();
    assert_eq!(w.send(other).await.0, 401);
    let unknown = format!("/v1/records/{}", "ab".repeat(32));
    assert_eq!(w.call("GET", &unknown, Some(&w.doc_a), b"").await.0, 404);
    assert_eq!(w.call("GET", &format!("/v1/records/{record}?purpose=NOPE"), Some(&w.doc_a), b"").await.0, 400);
}
