//! Writing Consent over FHIR: the grant a Consent describes, exactly or not at all, signed by
//! the node only as the patient's appointed gateway delegate, on the patient's own request.

use medledger_crypto::Keypair;
use medledger_ledger::{Payload, Purpose, Scope, actions, tx::sign};
use medledger_types::{Role, TxId};
use serde_json::{Value, json};

mod common;

use common::{now_ms, world::World};

/// Hospital A's node, committing in the background; a practitioner of Hospital A and one of
/// Clinic B; two patients.
fn world() -> World {
    World::hospital_and_clinic("medledger.api-consent")
        .practitioner("consent-dr-a", 0, "Dr A")
        .practitioner("consent-dr-b", 1, "Dr B")
        .patients(&["consent-patient", "consent-other"])
        .records()
        .commit_wait_ms(10_000)
        .committing()
        .build()
}

/// The patient appoints this node's validator as their gateway delegate.
fn appoint_gateway(w: &World, patient: &Keypair) {
    let nonce = w.chain.snapshot().next_nonce(&patient.id());
    let payload = Payload::AppointDelegate {
        patient: patient.id(),
        delegate: w.net.validators[0].id(),
        valid_until_ms: now_ms() + 86_400_000,
    };
    let tx = sign(patient, w.net.genesis.chain_id(), patient.id(), nonce, payload);
    let id = w.chain.submit(tx.bytes(), now_ms()).unwrap();
    w.wait_committed(&id);
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
    let w = world();
    let own = w.token(w.patient(), Role::Patient, "patient/*.cruds");
    let body = consent(w.patient(), w.doc_b()).to_string();
    // Not appointed yet: refused, with how to appoint.
    let (status, outcome) = w.post(&own, "/fhir/Consent", &body).await.status_json();
    assert_eq!(status, 403, "{outcome}");
    assert!(outcome.to_string().contains(&w.net.validators[0].id().to_hex()), "{outcome}");
    appoint_gateway(&w, w.patient());
    // Someone else asking for the patient: refused, even a practitioner of the node's hospital.
    let stranger = w.token(w.other_patient(), Role::Patient, "patient/*.cruds");
    assert_eq!(w.post(&stranger, "/fhir/Consent", &body).await.status, 403);
    let doctor = w.token(w.doc_a(), Role::Practitioner, "user/*.cruds");
    assert_eq!(w.post(&doctor, "/fhir/Consent", &body).await.status, 403);
    // The patient: the grant is on-chain, exactly as described.
    let (status, created) = w.post(&own, "/fhir/Consent", &body).await.status_json();
    assert_eq!(status, 201, "{created}");
    let grant_id = TxId::from_hex(created["id"].as_str().unwrap()).unwrap();
    {
        let state = w.chain.snapshot();
        let grant = state.grant(&grant_id).unwrap();
        assert_eq!((grant.patient, grant.grantee), (w.patient().id(), w.doc_b().id()));
        assert_eq!(grant.scope, Scope::Categories(vec!["labs".into()]));
        assert_eq!((grant.actions, grant.purpose), (actions::READ, Purpose::Treatment));
        assert_eq!(grant.signed_by, w.net.validators[0].id(), "signed by the gateway delegate");
    }
    assert_eq!(created["status"], "active");
    assert_eq!(created["provision"]["code"][0]["coding"][0]["code"], "labs");
    // Revoked by DELETE; again is 410. To a stranger, the consent is not there.
    let path = format!("/fhir/Consent/{}", grant_id.to_hex());
    assert_eq!(w.delete(&stranger, &path).await.status, 404);
    assert_eq!(w.delete(&own, &path).await.status, 204);
    assert!(w.chain.snapshot().grant(&grant_id).unwrap().revoked_at.is_some());
    assert_eq!(w.delete(&own, &path).await.status, 410);
}

#[tokio::test]
async fn a_consent_that_cannot_be_enforced_exactly_is_refused_with_the_reasons() {
    let w = world();
    appoint_gateway(&w, w.patient());
    let own = w.token(w.patient(), Role::Patient, "patient/*.cruds");
    let base = consent(w.patient(), w.doc_b());
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
        let (status, outcome) = w.post(&own, "/fhir/Consent", &body).await.status_json();
        assert_eq!(status, 422, "{reason}: {outcome}");
        assert!(outcome.to_string().contains(reason), "{reason}: {outcome}");
    }
    assert_eq!(w.chain.snapshot().grants_of(&w.patient().id()).count(), 0, "nothing was granted");
    // Grants are not edited in place.
    let put = json!({"resourceType": "Consent", "id": "ab".repeat(32), "status": "active"}).to_string();
    assert_eq!(w.put(&own, &format!("/fhir/Consent/{}", "ab".repeat(32)), None, &put).await.status, 422);
}
