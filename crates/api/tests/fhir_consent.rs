//! Writing Consent over FHIR: the grant a Consent describes, exactly or not at all, signed by
//! the node only as the patient's appointed gateway delegate, on the patient's own request.

use std::sync::Arc;

use axum::{
    body::Body,
    http::{Request, Response},
};
use medledger_api::{
    Services,
    smart::{Grant, TokenStore, parse_scope},
};
use medledger_blobs::MemoryBlobStore;
use medledger_crypto::Keypair;
use medledger_ledger::{Payload, Purpose, Scope, actions, tx::sign};
use medledger_node::{chain::Chain, devnet::Devnet};
use medledger_records::RecordService;
use medledger_types::{Role, TxId};
use serde_json::{Value, json};
use tower::ServiceExt;

mod common;

use common::{now_ms, world::Committer};

struct World {
    net: Devnet,
    chain: Arc<Chain>,
    tokens: Arc<TokenStore>,
    router: axum::Router,
    doc_a: Keypair,
    doc_b: Keypair,
    patient: Keypair,
    other: Keypair,
    _committer: Committer,
    _dir: tempfile::TempDir,
}

impl World {
    fn new() -> Self {
        let net = Devnet::new("medledger.api-consent", now_ms() - 60_000, &["Hospital A", "Clinic B"], 2, &mut |l| {
            Keypair::from_label(l)
        });
        let dir = tempfile::tempdir().unwrap();
        let (chain, _) = Chain::open(dir.path(), &net.genesis, net.validators[0].clone(), &mut |_, _| {}).unwrap();
        let chain = Arc::new(chain);
        let (org_a, org_b) = (net.organisations[0].clone(), net.organisations[1].clone());
        let (doc_a, doc_b) = (Keypair::from_label("consent-dr-a"), Keypair::from_label("consent-dr-b"));
        let (patient, other) = (Keypair::from_label("consent-patient"), Keypair::from_label("consent-other"));
        chain
            .submit_as(&org_a, Payload::register(Role::Practitioner, &doc_a, Some(org_a.id()), "Dr A"), now_ms())
            .unwrap();
        chain
            .submit_as(&org_b, Payload::register(Role::Practitioner, &doc_b, Some(org_b.id()), "Dr B"), now_ms())
            .unwrap();
        for p in [&patient, &other] {
            chain.submit_as(&net.organisations[0], Payload::register(Role::Patient, p, None, ""), now_ms()).unwrap();
        }
        medledger_node::devnet::commit_pending(&chain, net.validators[0].id(), now_ms()).unwrap();
        let service = Arc::new(RecordService::new(
            chain.clone(),
            net.validators[0].clone(),
            org_a,
            Arc::new(MemoryBlobStore::default()),
        ));
        let tokens = Arc::new(TokenStore::default());
        let router = medledger_api::router_for(
            chain.clone(),
            Services {
                records: Some(service),
                tokens: tokens.clone(),
                fhir_commit_wait_ms: 10_000,
                public_bases: vec![],
                ..Services::default()
            },
        );
        let committer = Committer::start(chain.clone(), net.validators[0].id());
        Self { net, chain, tokens, router, doc_a, doc_b, patient, other, _committer: committer, _dir: dir }
    }

    fn token(&self, who: &Keypair, role: Role, scope: &str) -> String {
        let scopes = scope.split(' ').map(|s| parse_scope(s).unwrap()).collect();
        self.tokens.issue(Grant {
            identity: who.id(),
            role,
            signing_key: who.public_key(),
            scopes,
            expires_ms: now_ms() + 60_000,
        })
    }

    async fn send(&self, method: &str, path: &str, token: &str, body: Option<String>) -> (u16, Value) {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/fhir+json")
            .body(body.map(Body::from).unwrap_or_else(Body::empty))
            .unwrap();
        let response: Response<Body> = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status().as_u16();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    /// The patient appoints this node's validator as their gateway delegate.
    fn appoint_gateway(&self, patient: &Keypair) {
        let nonce = self.chain.state().next_nonce(&patient.id());
        let payload = Payload::AppointDelegate {
            patient: patient.id(),
            delegate: self.net.validators[0].id(),
            valid_until_ms: now_ms() + 86_400_000,
        };
        let tx = sign(patient, self.net.genesis.chain_id(), patient.id(), nonce, payload);
        let id = self.chain.submit(tx.bytes(), now_ms()).unwrap();
        let started = std::time::Instant::now();
        while !matches!(self.chain.tx_status(&id), Ok(medledger_node::chain::TxStatus::Committed { .. })) {
            assert!(started.elapsed().as_secs() < 10, "appointment did not commit");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}

fn identity(keys: &Keypair) -> Value {
    json!({"identifier": {"system": "urn:medledger:identity", "value": keys.id().to_hex()}})
}

/// A Consent letting `grantee` read the patient's labs for treatment until tomorrow.
fn consent(patient: &Keypair, grantee: &Keypair) -> Value {
    json!({
        "resourceType": "Consent",
        "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": identity(patient),
        "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]},
        "provision": {
            "type": "permit",
            "period": {"start": "2020-01-01T00:00:00Z", "end": medledger_fhir::instant::instant_from_ms(now_ms() + 86_400_000)},
            "actor": [{"role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]}, "reference": identity(grantee)}],
            "action": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentaction", "code": "access"}]}],
            "purpose": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"}],
            "code": [{"coding": [{"system": "urn:medledger:category", "code": "labs"}]}]
        }
    })
}

#[tokio::test]
async fn a_consent_becomes_the_grant_it_describes_only_through_the_appointed_gateway() {
    let w = World::new();
    let own = w.token(&w.patient, Role::Patient, "patient/*.cruds");
    let body = consent(&w.patient, &w.doc_b).to_string();
    // Not appointed yet: refused, with how to appoint.
    let (status, outcome) = w.send("POST", "/fhir/Consent", &own, Some(body.clone())).await;
    assert_eq!(status, 403, "{outcome}");
    assert!(outcome.to_string().contains(&w.net.validators[0].id().to_hex()), "{outcome}");
    w.appoint_gateway(&w.patient);
    // Someone else asking for the patient: refused, even a practitioner of the node's hospital.
    let stranger = w.token(&w.other, Role::Patient, "patient/*.cruds");
    assert_eq!(w.send("POST", "/fhir/Consent", &stranger, Some(body.clone())).await.0, 403);
    let doctor = w.token(&w.doc_a, Role::Practitioner, "user/*.cruds");
    assert_eq!(w.send("POST", "/fhir/Consent", &doctor, Some(body.clone())).await.0, 403);
    // The patient: the grant is on-chain, exactly as described.
    let (status, created) = w.send("POST", "/fhir/Consent", &own, Some(body)).await;
    assert_eq!(status, 201, "{created}");
    let grant_id = TxId::from_hex(created["id"].as_str().unwrap()).unwrap();
    {
        let state = w.chain.state();
        let grant = state.grant(&grant_id).unwrap();
        assert_eq!((grant.patient, grant.grantee), (w.patient.id(), w.doc_b.id()));
        assert_eq!(grant.scope, Scope::Categories(vec!["labs".into()]));
        assert_eq!((grant.actions, grant.purpose), (actions::READ, Purpose::Treatment));
        assert_eq!(grant.signed_by, w.net.validators[0].id(), "signed by the gateway delegate");
    }
    assert_eq!(created["status"], "active");
    assert_eq!(created["provision"]["code"][0]["coding"][0]["code"], "labs");
    // Revoked by DELETE; again is 410. To a stranger, the consent is not there.
    let path = format!("/fhir/Consent/{}", grant_id.to_hex());
    assert_eq!(w.send("DELETE", &path, &stranger, None).await.0, 404);
    assert_eq!(w.send("DELETE", &path, &own, None).await.0, 204);
    assert!(w.chain.state().grant(&grant_id).unwrap().revoked_at.is_some());
    assert_eq!(w.send("DELETE", &path, &own, None).await.0, 410);
}

#[tokio::test]
async fn a_consent_that_cannot_be_enforced_exactly_is_refused_with_the_reasons() {
    let w = World::new();
    w.appoint_gateway(&w.patient);
    let own = w.token(&w.patient, Role::Patient, "patient/*.cruds");
    let base = consent(&w.patient, &w.doc_b);
    let variant = |change: &dyn Fn(&mut Value)| {
        let mut c = base.clone();
        change(&mut c);
        c.to_string()
    };
    let cases: Vec<(String, &str)> = vec![
        (variant(&|c| c["provision"]["type"] = json!("deny")), "deny"),
        (variant(&|c| c["provision"]["provision"] = json!([{"type": "deny"}])), "provision.provision"),
        (variant(&|c| c["provision"]["period"] = json!({"start": "2020-01-01"})), "period.end"),
        (
            variant(&|c| {
                c["provision"]["actor"] =
                    json!([c["provision"]["actor"][0].clone(), c["provision"]["actor"][0].clone()])
            }),
            "exactly one grantee",
        ),
        (
            variant(
                &|c| c["provision"]["action"] = json!([{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentaction", "code": "disclose"}]}]),
            ),
            "disclose",
        ),
        (
            variant(&|c| {
                c["provision"]["purpose"] = json!([
                    {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"},
                    {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "HRESCH"}
                ])
            }),
            "exactly one of TREAT",
        ),
        (
            variant(&|c| {
                c["provision"]["class"] =
                    json!([{"system": "http://hl7.org/fhir/resource-types", "code": "Observation"}])
            }),
            "combination",
        ),
        (variant(&|c| c["provision"]["dataPeriod"] = json!({"start": "2020-01-01"})), "dataPeriod"),
        (variant(&|c| c["status"] = json!("proposed")), "active"),
        (variant(&|c| c["provision"]["actor"][0]["reference"] = json!({"reference": "Practitioner/123"})), "on-chain"),
    ];
    for (body, reason) in cases {
        let (status, outcome) = w.send("POST", "/fhir/Consent", &own, Some(body)).await;
        assert_eq!(status, 422, "{reason}: {outcome}");
        assert!(outcome.to_string().contains(reason), "{reason}: {outcome}");
    }
    assert_eq!(w.chain.state().grants_of(&w.patient.id()).count(), 0, "nothing was granted");
    // Grants are not edited in place.
    let put = json!({"resourceType": "Consent", "id": "ab".repeat(32), "status": "active"}).to_string();
    assert_eq!(w.send("PUT", &format!("/fhir/Consent/{}", "ab".repeat(32)), &own, Some(put)).await.0, 422);
}
