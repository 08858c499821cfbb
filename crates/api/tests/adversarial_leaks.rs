//! Adversarial: what a caller learns beyond what consent shows it. A record it may not see
//! answers exactly like an id that does not exist (and the refusal is still audited);
//! `$everything` pages only over what the caller may see; a bearer token dies with the key it
//! was issued under; and the request's `Host` header never ends up in a URL the server writes.

use axum::{body::Body, http::Request};
use medledger_crypto::Keypair;
use medledger_ledger::{Payload, Purpose, Scope, actions};
use medledger_records::WriteRequest;
use medledger_types::{RecordId, Role};
use serde_json::{Value, json};

mod common;

use common::{
    fhir::{FHIR, Lab, patient_resource},
    now_ms,
    request::Answer,
    world::World,
};

const BASE: &str = "http://fhir.test";
/// What an attacker puts in its `Host` header.
const EVIL_HOST: &str = "evil.example";
/// An id of the right form that names nothing.
const UNKNOWN: &str = "abababababababababababababababababababababababababababababababab";

/// Hospital A's node (blocks committed by hand) reached at `public_bases`; a practitioner of
/// Hospital A and one of Clinic B; two patients.
fn world(public_bases: Vec<String>) -> World {
    let mut world = World::hospital_and_clinic("medledger.api-leaks")
        .practitioner("leaks-dr-a", 0, "Dr A")
        .practitioner("leaks-dr-b", 1, "Dr B")
        .patients(&["leaks-patient", "leaks-other-patient"])
        .records()
        .commit_wait_ms(0);
    for base in &public_bases {
        world = world.public_base(base);
    }
    world.build()
}

impl World {
    /// The patient's Patient resource and one lab, written by Hospital A's doctor; their ids.
    async fn patient_with_a_lab(&self) -> (String, String) {
        let doc = self.token(self.doc_a(), Role::Practitioner, "user/*.cruds");
        let patient_id = self.create(&doc, "Patient", &patient_resource(self.patient().id())).await;
        let lab_id = self.create(&doc, "Observation", &lab(&patient_id, None)).await;
        (patient_id, lab_id)
    }

    /// `patient` grants Clinic B `scope` for treatment; the grant id.
    fn grant_clinic_b(&self, scope: Scope) -> String {
        let t = now_ms();
        let grant = Payload::ConsentGrant {
            patient: self.patient().id(),
            grantee: self.net.organisations[1].id(),
            scope,
            actions: actions::READ,
            purpose: Purpose::Treatment,
            valid_from_ms: t - 1_000,
            valid_until_ms: t + 86_400_000,
        };
        let id = self.chain.submit_as(self.patient(), grant, t).unwrap();
        self.commit();
        id.to_hex()
    }
}

/// A glucose lab of `Patient/<patient_id>`, with the server id `id` when given.
fn lab(patient_id: &str, id: Option<&str>) -> String {
    match id {
        Some(id) => Lab::of(patient_id).id(id),
        None => Lab::of(patient_id),
    }
    .json()
}

/// An answer with the probed id replaced, so that answers about two ids compare.
#[derive(Debug, PartialEq)]
struct Seen {
    status: u16,
    content_type: Option<String>,
    body: String,
}

fn seen(answer: &Answer, id: &str) -> Seen {
    Seen {
        status: answer.status,
        content_type: answer.header("content-type").map(str::to_owned),
        // Messages quote ids, truncated after 64 characters (`Patient/` and 56 of the id).
        body: answer.text().replace(id, "{ID}").replace(&id[..56], "{ID}"),
    }
}

#[tokio::test]
async fn unauthorised_read_of_a_real_record_looks_like_an_unknown_one() {
    let w = world(vec![BASE.into()]);
    let (patient_id, lab_id) = w.patient_with_a_lab().await;
    // A lab of the same patient kept by Clinic B (written through Clinic B's own node).
    let service_b = w.record_service(1);
    let content = lab(&patient_id, None);
    let request = WriteRequest {
        author: w.doc_b().id(),
        patient: w.patient().id(),
        resource_type: "Observation",
        category: "labs",
        content: content.as_bytes(),
        record: None,
    };
    let b_lab_id = service_b.write(&request, now_ms(), &mut rand::rng()).unwrap().record_id.to_hex();
    w.commit();
    // A grant to Clinic B for vital signs only: it names the patient, not their labs.
    let grant_id = w.grant_clinic_b(Scope::Categories(vec!["vitals".into()]));

    let doc_b = w.token(w.doc_b(), Role::Practitioner, "user/*.cruds");
    let doc_a = w.token(w.doc_a(), Role::Practitioner, "user/*.cruds");
    let stranger = w.token(w.other_patient(), Role::Patient, "patient/*.cruds");
    // (who, method, path with {ID}, whether it sends a body, the real id): each must answer for
    // the real id exactly what it answers for an id that names nothing. (Clinic B holds a record
    // of the patient, so the patient's existence is no secret to it: the stranger asks those.)
    let bundle = |id: &str| {
        json!({"resourceType": "Bundle", "type": "transaction", "entry": [{
            "fullUrl": format!("{BASE}/fhir/Observation/{id}"),
            "resource": serde_json::from_str::<Value>(&lab(&patient_id, Some(id))).unwrap(),
            "request": {"method": "PUT", "url": format!("Observation/{id}")},
        }]})
        .to_string()
    };
    let fhir_cases: Vec<(&str, &str, &str, String, bool, &str)> = vec![
        ("Clinic B reads A's lab", &doc_b, "GET", "/fhir/Observation/{ID}".into(), false, &lab_id),
        ("Clinic B vreads A's lab", &doc_b, "GET", "/fhir/Observation/{ID}/_history/1".into(), false, &lab_id),
        ("Clinic B vreads a version", &doc_b, "GET", "/fhir/Observation/{ID}/_history/7".into(), false, &lab_id),
        ("Clinic B lists A's lab's history", &doc_b, "GET", "/fhir/Observation/{ID}/_history".into(), false, &lab_id),
        ("Clinic B updates A's lab", &doc_b, "PUT", "/fhir/Observation/{ID}".into(), true, &lab_id),
        ("Clinic B deletes A's lab", &doc_b, "DELETE", "/fhir/Observation/{ID}".into(), false, &lab_id),
        (
            "Clinic B asks for provenance",
            &doc_b,
            "GET",
            "/fhir/Provenance?target=Observation/{ID}".into(),
            false,
            &lab_id,
        ),
        ("Clinic B reads the Patient", &doc_b, "GET", "/fhir/Patient/{ID}".into(), false, &patient_id),
        ("a stranger reads the lab", &stranger, "GET", "/fhir/Observation/{ID}".into(), false, &lab_id),
        (
            "a stranger asks for everything",
            &stranger,
            "GET",
            "/fhir/Patient/{ID}/$everything".into(),
            false,
            &patient_id,
        ),
        (
            "a stranger asks for audit",
            &stranger,
            "GET",
            "/fhir/AuditEvent?patient=Patient/{ID}".into(),
            false,
            &patient_id,
        ),
        (
            "a stranger lists consents",
            &stranger,
            "GET",
            "/fhir/Consent?patient=Patient/{ID}".into(),
            false,
            &patient_id,
        ),
        ("a stranger reads a consent", &stranger, "GET", "/fhir/Consent/{ID}".into(), false, &grant_id),
        ("a stranger revokes a consent", &stranger, "DELETE", "/fhir/Consent/{ID}".into(), false, &grant_id),
        ("Hospital A reads B's lab", &doc_a, "GET", "/fhir/Observation/{ID}".into(), false, &b_lab_id),
        ("Hospital A updates B's lab", &doc_a, "PUT", "/fhir/Observation/{ID}".into(), true, &b_lab_id),
        ("Hospital A deletes B's lab", &doc_a, "DELETE", "/fhir/Observation/{ID}".into(), false, &b_lab_id),
        ("Hospital A puts B's lab in a Bundle", &doc_a, "POST", "/fhir".into(), true, &b_lab_id),
    ];
    for (what, token, method, path, with_body, real) in &fhir_cases {
        let mut answers = Vec::new();
        for id in [*real, UNKNOWN] {
            let body = match (*with_body, *method) {
                (false, _) => None,
                (true, "POST") => Some(bundle(id)),
                (true, _) => Some(lab(&patient_id, Some(id))),
            };
            let answer = w.fhir(method, token, &path.replace("{ID}", id), body.as_deref()).await;
            answers.push(seen(&answer, id));
        }
        assert_ne!(answers[0].status, 200, "{what}: {:?}", answers[0]);
        assert_eq!(answers[0], answers[1], "{what}: the real id answers differently from an unknown one");
    }
    // The signed record API: reads, history, and a write naming another custodian's record.
    let v1_cases: Vec<(&str, &Keypair, &str, String, &str)> = vec![
        ("Clinic B reads A's lab", w.doc_b(), "GET", "/v1/records/{ID}".into(), &lab_id),
        ("Clinic B reads a version", w.doc_b(), "GET", "/v1/records/{ID}?version=3".into(), &lab_id),
        ("Clinic B lists A's lab's history", w.doc_b(), "GET", "/v1/records/{ID}/history".into(), &lab_id),
        (
            "Hospital A writes B's lab",
            w.doc_a(),
            "POST",
            format!("/v1/records?patient={}&record={{ID}}", w.patient().id().to_hex()),
            &b_lab_id,
        ),
    ];
    for (what, keys, method, path, real) in &v1_cases {
        let mut answers = Vec::new();
        for id in [*real, UNKNOWN] {
            let body = if *method == "POST" { lab(&patient_id, None) } else { String::new() };
            answers.push(seen(&w.call(method, &path.replace("{ID}", id), Some(keys), body.as_bytes()).await, id));
        }
        assert_ne!(answers[0].status, 200, "{what}: {:?}", answers[0]);
        assert_eq!(answers[0], answers[1], "{what}: the real id answers differently from an unknown one");
    }
    // The refusal is still on the patient's trail: a denied access event for the real record,
    // none for an id that names nothing.
    let before = w.service().pending_events();
    assert_eq!(w.get(&doc_b, &format!("/fhir/Observation/{lab_id}")).await.status, 404);
    assert_eq!(w.service().pending_events(), before + 1, "the refused read is audited");
    let path = format!("/v1/records/{lab_id}");
    assert_eq!(w.call("GET", &path, Some(w.doc_b()), b"").await.status, 404);
    assert_eq!(w.service().pending_events(), before + 2, "the refused signed read is audited");
    assert_eq!(w.get(&doc_b, &format!("/fhir/Observation/{UNKNOWN}")).await.status, 404);
    assert_eq!(w.service().pending_events(), before + 2);
    // Those who may see the record still get it.
    assert_eq!(w.get(&doc_a, &format!("/fhir/Observation/{lab_id}")).await.status, 200);
}

#[tokio::test]
async fn everything_paging_does_not_reveal_another_patients_record_count() {
    let w = world(vec![BASE.into()]);
    let (patient_id, _) = w.patient_with_a_lab().await;
    let doc = w.token(w.doc_a(), Role::Practitioner, "user/*.cruds");
    for _ in 0..2 {
        w.create(&doc, "Observation", &lab(&patient_id, None)).await;
    }
    // Clinic B may see nothing of the patient: it learns nothing, not even that they exist,
    // whatever page it asks for; each refused record is still audited.
    let doc_b = w.token(w.doc_b(), Role::Practitioner, "user/*.rs");
    let unknown = w.get(&doc_b, &format!("/fhir/Patient/{UNKNOWN}/$everything?_count=1")).await;
    for offset in [0, 1, 2, 3, 4] {
        let before = w.service().pending_events();
        let path = format!("/fhir/Patient/{patient_id}/$everything?_count=1&_offset={offset}");
        let answer = w.get(&doc_b, &path).await;
        assert_eq!(seen(&answer, &patient_id), seen(&unknown, UNKNOWN), "offset {offset}: {}", answer.text());
        assert!(w.service().pending_events() > before, "the refusal is audited");
    }
    // Granted the labs only (not the Patient resource), it pages over exactly the three labs:
    // full pages, and a next link only while labs remain.
    w.grant_clinic_b(Scope::Categories(vec!["labs".into()]));
    let mut path = format!("/fhir/Patient/{patient_id}/$everything?_count=2");
    let mut pages = Vec::new();
    loop {
        let page = w.get(&doc_b, &path).await;
        assert_eq!(page.status, 200, "{}", page.text());
        let page = page.json();
        let entries = page["entry"].as_array().unwrap();
        assert!(entries.iter().all(|e| e["resource"]["resourceType"] == "Observation"), "{page}");
        pages.push(entries.len());
        match page["link"].as_array().unwrap().iter().find(|l| l["relation"] == "next") {
            Some(next) => path = next["url"].as_str().unwrap().to_owned(),
            None => break,
        }
        assert!(pages.len() < 10, "paging does not end");
    }
    assert_eq!(pages, [2, 1], "pages are counted over the visible records only");
}

#[tokio::test]
async fn token_stops_working_after_its_identity_rotates_keys() {
    let w = world(vec![BASE.into()]);
    let (patient_id, _) = w.patient_with_a_lab().await;
    let token = w.token_from_endpoint(w.patient(), "patient/*.rs").await;
    let path = format!("/fhir/Patient/{patient_id}");
    assert_eq!(w.get(&token, &path).await.status, 200);
    // The patient rotates their keys (say the old ones leaked): once committed, a token issued
    // under the old key is worth nothing.
    let new_keys = Keypair::from_label("leaks-patient-rotated");
    let rotate =
        Payload::RotateKey { signing_key: new_keys.public_key(), encryption_key: new_keys.encryption_public_key() };
    w.chain.submit_as(w.patient(), rotate, now_ms()).unwrap();
    assert_eq!(w.get(&token, &path).await.status, 200, "not committed yet: still the current key");
    w.commit();
    let refused = w.get(&token, &path).await;
    assert_eq!(refused.status, 401, "{}", refused.text());
    assert_eq!(refused.header("www-authenticate"), Some("Bearer"));
    // The same holds for every route a token opens, and it stays refused.
    assert_eq!(w.get(&token, &format!("/fhir/Patient/{patient_id}/$everything")).await.status, 401);
    assert_eq!(w.get(&token, &path).await.status, 401);
    // A token asked for with the new key works.
    let renewed = w.token_from_endpoint(&new_keys.for_identity(w.patient().id()), "patient/*.rs").await;
    assert_eq!(w.get(&renewed, &path).await.status, 200);
}

#[tokio::test]
async fn host_header_is_never_reflected_into_urls() {
    for bases in [vec![BASE.to_owned()], Vec::new()] {
        let configured = !bases.is_empty();
        let w = world(bases);
        let (patient_id, lab_id) = w.patient_with_a_lab().await;
        let doc = w.token(w.doc_a(), Role::Practitioner, "user/*.cruds");
        // A second lab and a second version, so that every list below has a next page.
        w.create(&doc, "Observation", &lab(&patient_id, None)).await;
        let v2 = lab(&patient_id, Some(&lab_id));
        let update = Request::put(format!("/fhir/Observation/{lab_id}"))
            .header("host", EVIL_HOST)
            .header("authorization", format!("Bearer {doc}"))
            .header("content-type", FHIR);
        let updated = w.send(update.body(Body::from(v2)).unwrap()).await;
        assert_eq!(updated.status, 200, "{}", updated.text());
        w.commit();
        let system = w.token(&w.net.organisations[0], Role::Organisation, "system/*.rs");
        let paths = [
            ("/fhir/metadata".to_owned(), &doc),
            ("/.well-known/smart-configuration".to_owned(), &doc),
            (format!("/fhir/Observation?patient=Patient/{patient_id}&_count=1"), &doc),
            (format!("/fhir/Observation/{lab_id}/_history?_count=1"), &doc),
            ("/fhir/Observation/_history?_count=1".to_owned(), &doc),
            (format!("/fhir/Patient/{patient_id}/$everything?_count=1"), &doc),
            (format!("/fhir/AuditEvent?patient=Patient/{patient_id}&_count=1"), &doc),
            (format!("/fhir/Provenance?target=Observation/{lab_id}"), &doc),
            ("/fhir/$export".to_owned(), &system),
        ];
        for (path, token) in paths {
            let request = Request::get(&path)
                .header("host", EVIL_HOST)
                .header("x-forwarded-host", EVIL_HOST)
                .header("authorization", format!("Bearer {token}"))
                .header("accept", FHIR)
                .header("prefer", "respond-async");
            let answer = w.send(request.body(Body::empty()).unwrap()).await;
            assert!(answer.status < 300, "{path}: {} {}", answer.status, answer.text());
            let headers = format!("{:?}", answer.headers);
            let text = answer.text();
            if let Some(at) = text.find(EVIL_HOST) {
                let around =
                    String::from_utf8_lossy(&text.as_bytes()[at.saturating_sub(80)..(at + 40).min(text.len())]);
                panic!("{path} reflects the Host header: …{around}…");
            }
            assert!(!headers.contains(EVIL_HOST), "{path} reflects the Host header in {headers}");
            if !configured {
                continue;
            }
            // Every absolute URL the server writes is under its configured base.
            let v = answer.json();
            let mut urls: Vec<String> = Vec::new();
            for link in v["link"].as_array().into_iter().flatten() {
                urls.push(link["url"].as_str().unwrap().to_owned());
            }
            if let Some(url) = v["token_endpoint"].as_str() {
                urls.push(url.to_owned());
            }
            if let Some(url) = v["rest"][0]["security"]["extension"][0]["extension"][0]["valueUri"].as_str() {
                urls.push(url.to_owned());
            }
            urls.extend(answer.header("content-location").map(str::to_owned));
            assert!(!urls.is_empty(), "{path}: no URL to check in {}", answer.text());
            for url in urls {
                assert!(url.starts_with(&format!("{BASE}/")), "{path}: {url} is not under {BASE}");
            }
        }
    }
}

// ---- What a caller learns without an access event (issue 9, item 4) ----

/// Attack: `_summary=count` and `_count=0` searches told a grantee how many of a patient's
/// records match, with no access event. Now every patient whose records a total counts (and
/// none of them returned) gets a `Search` event naming no record.
#[tokio::test]
async fn count_searches_are_on_the_patients_trail() {
    let w = world(vec![BASE.into()]);
    let (patient_id, _lab) = w.patient_with_a_lab().await;
    w.grant_clinic_b(Scope::Categories(vec!["labs".into(), "demographics".into()]));
    let doc_b = w.token(w.doc_b(), Role::Practitioner, "user/*.rs");
    for query in ["_summary=count", "_count=0"] {
        let before = w.service().pending_events();
        let answer = w.get(&doc_b, &format!("/fhir/Observation?patient=Patient/{patient_id}&{query}")).await;
        assert_eq!(answer.status, 200, "{}", answer.text());
        assert_eq!(answer.json()["total"], 1);
        assert_eq!(w.service().pending_events(), before + 1, "a {query} search learned a count unrecorded");
    }
    // On the chain, the event names the grantee, the patient and no record.
    w.flush_events();
    let index = w.chain.patient_index();
    let events = &index.patient(&w.patient().id()).unwrap().access;
    let counts: Vec<_> = events
        .iter()
        .filter(|a| a.event.accessor == w.doc_b().id() && a.event.action == medledger_ledger::AccessAction::Search)
        .collect();
    assert_eq!(counts.len(), 2);
    assert!(counts.iter().all(|a| a.event.record.is_none() && a.event.grant_id.is_some()));
}

/// Attack: `If-None-Exist` was checked before the staff check, so a caller allowed to create
/// nothing learned whether a matching record exists (200 against 403), unrecorded. Now only the
/// custodian's staff get that far, and what their check finds is recorded.
#[tokio::test]
async fn conditional_create_reveals_nothing_to_non_staff_and_is_audited() {
    let w = world(vec![BASE.into()]);
    let (patient_id, _lab) = w.patient_with_a_lab().await;
    w.grant_clinic_b(Scope::Categories(vec!["labs".into(), "demographics".into()]));
    let probe = |token: String| {
        let body = lab(&patient_id, None);
        let patient_id = patient_id.clone();
        let w = &w;
        async move {
            let request = Request::builder()
                .method("POST")
                .uri("/fhir/Observation")
                .header("authorization", format!("Bearer {token}"))
                .header("content-type", FHIR)
                .header("if-none-exist", format!("code=2345-7&patient=Patient/{patient_id}"))
                .body(Body::from(body))
                .unwrap();
            w.send(request).await
        }
    };
    // Clinic B may read the lab, but creates nothing here: the same refusal, match or not.
    let doc_b = w.token(w.doc_b(), Role::Practitioner, "user/*.cruds");
    assert_eq!(probe(doc_b).await.status, 403, "a non-staff caller's conditional check answered");
    // Hospital A's doctor finds the existing lab: nothing is written, and the match is recorded.
    let doc_a = w.token(w.doc_a(), Role::Practitioner, "user/*.cruds");
    let before = w.service().pending_events();
    let found = probe(doc_a).await;
    assert_eq!(found.status, 200, "{}", found.text());
    assert_eq!(w.service().pending_events(), before + 1, "the conditional check's match is not on the trail");
}

/// Attack: one identity's refused reads pushed the patient's real notifications out of view
/// (the list keeps the latest 500). Now an accessor's refusals are one notification with a count.
#[tokio::test]
async fn refused_attempts_cannot_push_a_patients_notifications_out_of_view() {
    let w = world(vec![BASE.into()]);
    let (_patient, lab) = w.patient_with_a_lab().await;
    let lab = RecordId::from_hex(&lab).unwrap();
    w.service().read(w.doc_a().id(), lab, None, Purpose::Treatment, now_ms()).unwrap();
    for _ in 0..600 {
        assert!(w.service().read(w.doc_b().id(), lab, None, Purpose::Treatment, now_ms()).is_err());
    }
    w.flush_events();
    let answer =
        w.call("GET", &format!("/v1/patients/{}/notifications", w.patient().id()), Some(w.patient()), b"").await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let notes = answer.json()["notifications"].as_array().unwrap().clone();
    let by = |who: &Keypair| {
        notes
            .iter()
            .filter(|n| n["kind"] == "access" && n["accessor"] == who.id().to_hex())
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(by(w.doc_a()).len(), 1, "the real access was pushed out of view");
    let refused = by(w.doc_b());
    assert_eq!(refused.len(), 1, "{} notifications for one accessor's refusals", refused.len());
    assert!(refused[0]["refused_attempts"].as_u64().unwrap() > 1);
}

/// Attack: one broad search made the node record a count event for every patient it counted
/// (100,000 patients: 100,000 events, and the node's audit backlog full for everyone). Now a
/// total that would count more than `COUNTED_PATIENTS_MAX` patients beyond the page is left
/// out, and such a `_summary=count` is refused.
#[tokio::test]
async fn one_broad_search_cannot_write_a_count_event_for_every_patient() {
    let w = world(vec![BASE.into()]);
    let org_a = w.net.organisations[0].clone();
    let many = medledger_api::COUNTED_PATIENTS_MAX + 20;
    let patients: Vec<Keypair> = (0..many).map(|i| Keypair::from_label(&format!("counted-{i}"))).collect();
    for p in &patients {
        w.chain.submit_as(&org_a, Payload::register(Role::Patient, p, None, ""), now_ms()).unwrap();
    }
    w.commit();
    for p in &patients {
        let content = lab("unused", None);
        let request = WriteRequest {
            author: w.doc_a().id(),
            patient: p.id(),
            resource_type: "Observation",
            category: "labs",
            content: content.as_bytes(),
            record: None,
        };
        w.service().write(&request, now_ms(), &mut rand::rng()).unwrap();
    }
    w.commit();
    let doc_a = w.token(w.doc_a(), Role::Practitioner, "user/*.rs");
    let before = w.service().pending_events();
    let count = w.get(&doc_a, "/fhir/Observation?code=2345-7&_summary=count").await;
    assert_eq!(count.status, 422, "{}", count.text());
    assert_eq!(count.json()["issue"][0]["code"], "too-costly");
    let page = w.get(&doc_a, "/fhir/Observation?code=2345-7&_count=1").await;
    assert_eq!(page.status, 200, "{}", page.text());
    assert!(page.json().get("total").is_none(), "a total over {many} patients was given");
    // One page: one read event, no count events.
    assert_eq!(w.service().pending_events(), before + 1);
}
