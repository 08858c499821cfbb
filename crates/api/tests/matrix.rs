//! The authorization matrix: every actor × every action, asserting the HTTP answer and the
//! access event committed on-chain (read back from the patient's index).
//!
//! Actors: the patient; a practitioner of the custodian; practitioners of other organisations
//! without a grant, with a grant, with an expired grant and with a revoked grant; a
//! practitioner who declared break-glass; an insurer's system with a payment grant; a
//! researcher with a research grant; an unregistered key. Actions: read, write, history, grant.

use std::time::Duration;

use axum::body::Body;
use medledger_crypto::Keypair;
use medledger_ledger::{AccessAction, AccessEvent, AccessOutcome, Payload, Purpose, Scope, actions, tx::sign};
use medledger_types::{IdentityId, Role};
use serde_json::Value;

mod common;

use common::{fhir::FHIR, now_ms, request::signed_request, world::World};

/// A `/v1` request signed by `keys`: a transaction as raw bytes, anything else as FHIR JSON.
async fn call(w: &World, method: &str, path: &str, keys: &Keypair, body: &[u8]) -> (u16, Value) {
    let content_type =
        if method == "POST" && path.starts_with("/v1/transactions") { "application/octet-stream" } else { FHIR };
    let request =
        signed_request(method, path, keys, body).header("content-type", content_type).body(Body::from(body.to_vec()));
    w.send(request.unwrap()).await.status_json()
}

/// Commits queued access events and returns those new since `before` for the patient.
fn new_events(w: &World, before: usize) -> Vec<AccessEvent> {
    w.flush_events();
    w.access_events(&w.patient().id())[before..].to_vec()
}

fn events_so_far(w: &World) -> usize {
    w.access_events(&w.patient().id()).len()
}

#[derive(Clone, Copy, Debug)]
enum Expect {
    /// HTTP status, and the access event's outcome and reason (None: no event).
    Is(u16, Option<(AccessOutcome, &'static str)>),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_matrix() {
    let orgs = ["Hospital A", "Clinic B", "Clinic C", "Clinic E", "Clinic R", "Insurer", "Research Institute"];
    let people = [
        ("dr-a", 0, Role::Practitioner),    // own organisation
        ("dr-c", 2, Role::Practitioner),    // no grant
        ("dr-b", 1, Role::Practitioner),    // grant
        ("dr-e", 3, Role::Practitioner),    // expired grant
        ("dr-r", 4, Role::Practitioner),    // revoked grant
        ("dr-g", 2, Role::Practitioner),    // break-glass
        ("claims", 5, Role::SystemClient),  // insurer, payment grant
        ("analyst", 6, Role::Practitioner), // researcher, research grant
    ];
    let mut world = World::builder("medledger.matrix").organisations(&orgs);
    for (label, org, role) in people {
        world = world.staff(label, org, role, "Staff");
    }
    let w = world.patients(&["patient"]).records().build();
    let o = |i: usize| w.net.organisations[i].clone();
    let patient = w.patient().clone();
    let k = |i: usize| w.staff[i].clone();

    // A lab result in Hospital A's care.
    let synthetic = medledger_synth::Generator::new(3).patient();
    let lab = synthetic.resources.iter().find(|r| r.category == "labs").unwrap();
    let (status, body) = call(&w, "POST", &format!("/v1/records?patient={}", patient.id()), &k(0), &lab.json).await;
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
            let before = events_so_far(&w);
            let (status, body) = call(&w, method, &path, &keys, &body).await;
            let Expect::Is(want_status, want_event) = expect;
            assert_eq!(status, want_status, "{name} {action}: {body}");
            if status == 403 {
                assert_eq!(body["error"]["reason"], want_event.unwrap().1, "{name} {action} reason");
            }
            let events = new_events(&w, before);
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
                    w.chain.snapshot().record(&medledger_types::RecordId::from_hex(&record).unwrap()).unwrap().clone();
                assert_eq!(head.latest_version, 2, "the write committed a new version");
            }
        }
        // Grant: only the patient may grant access to their data.
        let payload = grant(o(1).id(), Purpose::Operations, now_ms() + 86_400_000);
        let nonce = w.chain.snapshot().next_nonce(&keys.id());
        let tx = sign(&keys, w.net.genesis.chain_id(), keys.id(), nonce, payload);
        let (status, body) = call(&w, "POST", "/v1/transactions", &keys, tx.bytes()).await;
        if may_grant {
            assert_eq!(status, 202, "{name} grant: {body}");
            w.commit();
            assert!(w.chain.snapshot().grant(&tx.id()).is_some(), "{name}: grant not committed");
        } else {
            assert_eq!(status, 400, "{name} grant: {body}");
            assert!(w.chain.snapshot().grant(&tx.id()).is_none());
        }
    }
}
