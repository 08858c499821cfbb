//! The authorization matrix: every actor × every action, asserting the HTTP answer and the
//! access event committed on-chain (read back from the patient's index).
//!
//! Actors: the patient; a practitioner of the custodian; practitioners of other organisations
//! without a grant, with a grant, with an expired grant and with a revoked grant; a
//! practitioner who declared break-glass; an insurer's system with a payment grant; a
//! researcher with a research grant; an unregistered key. Actions: read, write, history, grant.

use std::{sync::Arc, time::Duration};

use axum::{body::Body, http::Request};
use medledger_api::auth::authorization;
use medledger_blobs::MemoryBlobStore;
use medledger_crypto::Keypair;
use medledger_ledger::{AccessAction, AccessOutcome, Payload, Purpose, Scope, actions, tx::sign};
use medledger_node::{chain::Chain, devnet::Devnet};
use medledger_records::RecordService;
use medledger_types::{IdentityId, Role};
use tower::ServiceExt;

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

struct World {
    validator: IdentityId,
    chain_id: medledger_types::Hash,
    chain: Arc<Chain>,
    records: Arc<RecordService>,
    router: axum::Router,
    patient: Keypair,
    _dir: tempfile::TempDir,
}

impl World {
    fn commit(&self) {
        medledger_node::devnet::commit_pending(&self.chain, self.validator, now_ms()).unwrap();
    }

    async fn call(&self, method: &str, path: &str, keys: &Keypair, body: &[u8]) -> (u16, serde_json::Value) {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", authorization(keys, &keys.id(), method, path, body, now_ms()))
            .header(
                "content-type",
                if method == "POST" && path.starts_with("/v1/transactions") {
                    "application/octet-stream"
                } else {
                    "application/fhir+json"
                },
            )
            .body(Body::from(body.to_vec()))
            .unwrap();
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status().as_u16();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
    }

    /// Commits queued access events and returns those new since `before` for the patient.
    fn new_events(&self, before: usize) -> Vec<medledger_ledger::AccessEvent> {
        self.records.flush_events(now_ms()).unwrap();
        self.commit();
        let index = self.chain.patient_index();
        let entry = index.patient(&self.patient.id()).unwrap();
        entry.access[before..].iter().map(|a| a.event.clone()).collect()
    }

    fn events_so_far(&self) -> usize {
        self.chain.patient_index().patient(&self.patient.id()).map_or(0, |e| e.access.len())
    }
}

#[derive(Clone, Copy, Debug)]
enum Expect {
    /// HTTP status, and the access event's outcome and reason (None: no event).
    Is(u16, Option<(AccessOutcome, &'static str)>),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_matrix() {
    let orgs = ["Hospital A", "Clinic B", "Clinic C", "Clinic E", "Clinic R", "Insurer", "Research Institute"];
    let net = Devnet::new("medledger.matrix", now_ms() - 60_000, &orgs, 1, &mut |l| Keypair::from_label(l));
    let dir = tempfile::tempdir().unwrap();
    let (chain, _) = Chain::open(dir.path(), &net.genesis, net.validators[0].clone(), &mut |_, _| {}).unwrap();
    let chain = Arc::new(chain);
    let o = |i: usize| net.organisations[i].clone();
    let staff = |label: &str, org: usize, role: Role| (Keypair::from_label(label), org, role);
    let people = [
        staff("dr-a", 0, Role::Practitioner),    // own organisation
        staff("dr-c", 2, Role::Practitioner),    // no grant
        staff("dr-b", 1, Role::Practitioner),    // grant
        staff("dr-e", 3, Role::Practitioner),    // expired grant
        staff("dr-r", 4, Role::Practitioner),    // revoked grant
        staff("dr-g", 2, Role::Practitioner),    // break-glass
        staff("claims", 5, Role::SystemClient),  // insurer, payment grant
        staff("analyst", 6, Role::Practitioner), // researcher, research grant
    ];
    let t = now_ms();
    for (keys, org, role) in &people {
        chain.submit_as(&o(*org), Payload::register(*role, keys, Some(o(*org).id()), "Staff"), t).unwrap();
    }
    let patient = Keypair::from_label("patient");
    chain.submit_as(&o(0), Payload::register(Role::Patient, &patient, None, ""), t).unwrap();
    let records = Arc::new(RecordService::new(
        chain.clone(),
        net.validators[0].clone(),
        o(0),
        Arc::new(MemoryBlobStore::default()),
    ));
    let router = medledger_api::router_with(chain.clone(), Some(records.clone()));
    let w = World {
        validator: net.validators[0].id(),
        chain_id: net.genesis.chain_id(),
        chain: chain.clone(),
        records,
        router,
        patient: patient.clone(),
        _dir: dir,
    };
    w.commit();
    let k = |i: usize| people[i].0.clone();

    // A lab result in Hospital A's care.
    let synthetic = medledger_synth::Generator::new(3).patient();
    let lab = synthetic.resources.iter().find(|r| r.category == "labs").unwrap();
    let (status, body) = w.call("POST", &format!("/v1/records?patient={}", patient.id()), &k(0), &lab.json).await;
    assert_eq!(status, 201, "{body}");
    let record = body["record_id"].as_str().unwrap().to_owned();
    w.commit();

    // Grants: Clinic B (treatment), Clinic E (expires in 1.5 s), Clinic R (revoked), the
    // insurer (payment) and the research institute (research); and Dr G's break-glass.
    let grant = |grantee: IdentityId, purpose: Purpose, until: u64| Payload::ConsentGrant {
        patient: patient.id(),
        grantee,
        scope: Scope::Categories(vec!["labs".into()]),
        actions: actions::READ,
        purpose,
        valid_from_ms: now_ms() - 1000,
        valid_until_ms: until,
    };
    let day = now_ms() + 86_400_000;
    let t = now_ms();
    w.chain.submit_as(&patient, grant(o(1).id(), Purpose::Treatment, day), t).unwrap();
    w.chain.submit_as(&patient, grant(o(3).id(), Purpose::Treatment, now_ms() + 1500), t).unwrap();
    let revoked = w.chain.submit_as(&patient, grant(o(4).id(), Purpose::Treatment, day), t).unwrap();
    w.chain.submit_as(&patient, grant(o(5).id(), Purpose::Payment, day), t).unwrap();
    w.chain.submit_as(&patient, grant(o(6).id(), Purpose::Research, day), t).unwrap();
    w.chain
        .submit_as(
            &k(5),
            Payload::BreakGlass { patient: patient.id(), reason: "ed-unresponsive".into(), window_ms: 3_600_000 },
            t,
        )
        .unwrap();
    w.commit();
    w.chain.submit_as(&patient, Payload::ConsentRevoke { grant_id: revoked }, now_ms()).unwrap();
    w.commit();
    // Let Clinic E's grant lapse.
    tokio::time::sleep(Duration::from_millis(1700)).await;

    use AccessOutcome::{Allowed, BreakGlass, Denied};
    use Expect::Is;
    let unregistered = Keypair::from_label("nobody");
    // (actor, purpose, read, write, history, may grant). A refused read or history answers
    // 404, as for a record that does not exist (the caller must not learn that it does); the
    // refusal and its reason are in the access event the patient sees.
    let rows: Vec<(&str, Keypair, Purpose, Expect, Expect, Expect, bool)> = vec![
        (
            "patient",
            patient.clone(),
            Purpose::Treatment,
            Is(200, Some((Allowed, "patient"))),
            Is(403, Some((Denied, "not-custodian-staff"))),
            Is(200, Some((Allowed, "patient"))),
            true,
        ),
        (
            "own practitioner",
            k(0),
            Purpose::Treatment,
            Is(200, Some((Allowed, "custodian"))),
            Is(201, None),
            Is(200, Some((Allowed, "custodian"))),
            false,
        ),
        (
            "other org, no grant",
            k(1),
            Purpose::Treatment,
            Is(404, Some((Denied, "no-grant"))),
            Is(403, Some((Denied, "not-custodian-staff"))),
            Is(404, Some((Denied, "no-grant"))),
            false,
        ),
        (
            "other org, grant",
            k(2),
            Purpose::Treatment,
            Is(200, Some((Allowed, "consent-grant"))),
            Is(403, Some((Denied, "not-custodian-staff"))),
            Is(200, Some((Allowed, "consent-grant"))),
            false,
        ),
        (
            "other org, expired grant",
            k(3),
            Purpose::Treatment,
            Is(404, Some((Denied, "grant-expired"))),
            Is(403, Some((Denied, "not-custodian-staff"))),
            Is(404, Some((Denied, "grant-expired"))),
            false,
        ),
        (
            "other org, revoked grant",
            k(4),
            Purpose::Treatment,
            Is(404, Some((Denied, "grant-revoked"))),
            Is(403, Some((Denied, "not-custodian-staff"))),
            Is(404, Some((Denied, "grant-revoked"))),
            false,
        ),
        (
            "break-glass",
            k(5),
            Purpose::Emergency,
            Is(200, Some((BreakGlass, "break-glass"))),
            Is(403, Some((Denied, "not-custodian-staff"))),
            Is(200, Some((BreakGlass, "break-glass"))),
            false,
        ),
        (
            "insurer, payment grant",
            k(6),
            Purpose::Payment,
            Is(200, Some((Allowed, "consent-grant"))),
            Is(403, Some((Denied, "not-custodian-staff"))),
            Is(200, Some((Allowed, "consent-grant"))),
            false,
        ),
        (
            "researcher, research grant",
            k(7),
            Purpose::Research,
            Is(200, Some((Allowed, "consent-grant"))),
            Is(403, Some((Denied, "not-custodian-staff"))),
            Is(200, Some((Allowed, "consent-grant"))),
            false,
        ),
        ("unregistered key", unregistered, Purpose::Treatment, Is(401, None), Is(401, None), Is(401, None), false),
    ];
    for (name, keys, purpose, read, write, history, may_grant) in rows {
        for (action, expect, method, path, body) in [
            ("read", read, "GET", format!("/v1/records/{record}?purpose={}", purpose.code()), Vec::new()),
            ("write", write, "POST", format!("/v1/records?patient={}&record={record}", patient.id()), lab.json.clone()),
            ("history", history, "GET", format!("/v1/records/{record}/history?purpose={}", purpose.code()), Vec::new()),
        ] {
            let before = w.events_so_far();
            let (status, body) = w.call(method, &path, &keys, &body).await;
            let Expect::Is(want_status, want_event) = expect;
            assert_eq!(status, want_status, "{name} {action}: {body}");
            if status == 403 {
                assert_eq!(body["error"]["reason"], want_event.unwrap().1, "{name} {action} reason");
            }
            let events = w.new_events(before);
            match want_event {
                None => assert!(events.is_empty(), "{name} {action}: unexpected events {events:?}"),
                Some((outcome, reason)) => {
                    assert_eq!(events.len(), 1, "{name} {action}: {events:?}");
                    let e = &events[0];
                    assert_eq!(
                        (e.accessor, e.outcome, e.reason.as_str()),
                        (keys.id(), outcome, reason),
                        "{name} {action}"
                    );
                    let want_action = match action {
                        "read" => AccessAction::Read,
                        "write" => AccessAction::Write,
                        _ => AccessAction::History,
                    };
                    assert_eq!(e.action, want_action, "{name} {action}");
                    assert_eq!(
                        e.grant_id.is_some(),
                        reason == "consent-grant" || reason == "break-glass",
                        "{name} {action}"
                    );
                }
            }
            if action == "write" && status == 201 {
                w.commit();
                let head =
                    w.chain.state().record(&medledger_types::RecordId::from_hex(&record).unwrap()).unwrap().clone();
                assert_eq!(head.latest_version, 2, "the write committed a new version");
            }
        }
        // Grant: only the patient may grant access to their data.
        let payload = grant(o(1).id(), Purpose::Operations, now_ms() + 86_400_000);
        let nonce = w.chain.state().next_nonce(&keys.id());
        let tx = sign(&keys, w.chain_id, keys.id(), nonce, payload);
        let (status, body) = w.call("POST", "/v1/transactions", &keys, tx.bytes()).await;
        if may_grant {
            assert_eq!(status, 202, "{name} grant: {body}");
            w.commit();
            assert!(w.chain.state().grant(&tx.id()).is_some(), "{name}: grant not committed");
        } else {
            assert_eq!(status, 400, "{name} grant: {body}");
            assert!(w.chain.state().grant(&tx.id()).is_none());
        }
    }
}
