//! The FHIR REST API's first slice: CapabilityStatement, create, read and vread of patient
//! records with SMART bearer tokens, where scopes and consent must both allow; exact bytes
//! kept with the server's id and meta spliced in; OperationOutcomes for every refusal.

use axum::body::Body;
use medledger_crypto::Keypair;
use medledger_ledger::tx::sign;
use medledger_types::Role;
use serde_json::Value;

mod common;

use common::{
    fhir::{Lab, patient_resource},
    now_ms,
    request::Answer,
    world::World,
};

/// Hospital A's node (blocks committed by hand); a practitioner of Hospital A and one of
/// Clinic B; two patients.
fn world() -> World {
    World::hospital_and_clinic("medledger.api-fhir")
        .practitioner("fhir-dr-a", 0, "Dr A")
        .practitioner("fhir-dr-b", 1, "Dr B")
        .patients(&["fhir-patient", "fhir-other-patient"])
        .records()
        .commit_wait_ms(0)
        .public_base("http://fhir.test")
        .build()
}

impl World {
    /// Creates (and commits) the Patient resource of the patient as `token`; its id.
    async fn create_patient(&self, token: &str) -> String {
        self.create(token, "Patient", &patient_resource(self.patient().id())).await
    }
}

/// A glucose lab of `Patient/<patient_id>`, its value `5.40` (the exact decimal kept).
fn lab(patient_id: &str) -> String {
    Lab::of(patient_id).value("5.40").ucum().json()
}

#[tokio::test]
async fn capability_statement_names_exactly_what_is_served() {
    let w = world();
    let answer = w.get_anonymous("/fhir/metadata").await;
    assert_eq!(answer.status, 200);
    let v = answer.json();
    assert_eq!(v["resourceType"], "CapabilityStatement");
    assert_eq!(v["fhirVersion"], "4.0.1");
    let resources = v["rest"][0]["resource"].as_array().unwrap();
    let types: Vec<&str> = resources.iter().map(|r| r["type"].as_str().unwrap()).collect();
    let mut expected = medledger_api::fhir::SERVED_TYPES.to_vec();
    expected.extend(medledger_types::DIRECTORY_RESOURCE_TYPES);
    expected.extend(["Consent", "Provenance", "AuditEvent", "Group"]);
    assert_eq!(types, expected);
    // Group comes last, for `$export` only (tests/fhir_export.rs).
    let n = resources.len() - 1;
    let records = medledger_api::fhir::SERVED_TYPES.len();
    for r in &resources[records..n - 3] {
        let codes: Vec<&str> =
            r["interaction"].as_array().unwrap().iter().map(|i| i["code"].as_str().unwrap()).collect();
        assert_eq!(
            codes,
            ["read", "vread", "create", "update", "delete", "history-instance", "history-type", "search-type"]
        );
    }
    assert_eq!(
        resources[n - 3]["interaction"],
        serde_json::json!([{"code": "read"}, {"code": "create"}, {"code": "update"}, {"code": "delete"}, {"code": "search-type"}])
    );
    for searched in &resources[n - 2..n] {
        assert_eq!(searched["interaction"], serde_json::json!([{"code": "search-type"}]));
    }
    for r in &resources[..records] {
        let codes: Vec<&str> =
            r["interaction"].as_array().unwrap().iter().map(|i| i["code"].as_str().unwrap()).collect();
        assert_eq!(
            codes,
            ["read", "vread", "create", "update", "delete", "history-instance", "history-type", "search-type"]
        );
        assert_eq!(r["updateCreate"], false);
        let params: Vec<&str> =
            r["searchParam"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
        assert!(params.contains(&"_id") && params.contains(&"_lastUpdated"), "{params:?}");
        if r["type"] == "Observation" {
            for needed in ["patient", "subject", "code", "date", "category", "status", "identifier"] {
                assert!(params.contains(&needed), "Observation lacks {needed}: {params:?}");
            }
        }
        if r["type"] == "Patient" {
            for needed in ["name", "family", "given", "birthdate", "gender", "identifier"] {
                assert!(params.contains(&needed), "Patient lacks {needed}: {params:?}");
            }
        }
    }
    let token_url = &v["rest"][0]["security"]["extension"][0]["extension"][0]["valueUri"];
    assert_eq!(token_url, "http://fhir.test/auth/token");
}

#[tokio::test]
async fn create_then_read_with_scopes_and_consent_both_enforced() {
    let w = world();
    let doc = w.token(w.doc_a(), Role::Practitioner, "user/*.cruds");

    // The Patient resource names the patient's on-chain identity.
    let patient_body = format!(
        r#"{{"resourceType":"Patient","identifier":[{{"system":"urn:medledger:identity","value":"{}"}}],"gender":"female","birthDate":"1980-02-29"}}"#,
        w.patient().id().to_hex()
    );
    let created = w.post(&doc, "/fhir/Patient", &patient_body).await;
    assert_eq!(created.status, 201, "{}", created.text());
    let patient_id = created.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(patient_id.len(), 64);
    assert_eq!(created.header("location"), Some(format!("/fhir/Patient/{patient_id}/_history/1").as_str()));
    assert_eq!(created.header("etag"), Some("W/\"1\""));
    w.commit();

    let created = w.post(&doc, "/fhir/Observation", &lab(&patient_id)).await;
    assert_eq!(created.status, 201, "{}", created.text());
    let obs_id = created.json()["id"].as_str().unwrap().to_owned();
    w.commit();

    // The custodian's practitioner reads it: the exact bytes (5.40 stays 5.40) with id and meta.
    let before = w.service().pending_events();
    let read = w.get(&doc, &format!("/fhir/Observation/{obs_id}")).await;
    assert_eq!(read.status, 200, "{}", read.text());
    assert_eq!(read.header("content-type"), Some("application/fhir+json; charset=utf-8"));
    assert_eq!(read.header("etag"), Some("W/\"1\""));
    let text = read.text();
    assert!(text.contains(r#""valueQuantity":{"value":5.40,"unit":"mmol/L""#), "{text}");
    assert!(text.starts_with(&format!(
        r#"{{"resourceType":"Observation","id":"{obs_id}","meta":{{"versionId":"1","lastUpdated":""#
    )));
    assert_eq!(w.service().pending_events(), before + 1, "the read is audited");
    assert_eq!(w.get(&doc, &format!("/fhir/Observation/{obs_id}/_history/1")).await.status, 200);
    assert_eq!(w.get(&doc, &format!("/fhir/Observation/{obs_id}/_history/2")).await.fhir_issue(), "not-found");
    // The same id under another type is not there.
    assert_eq!(w.get(&doc, &format!("/fhir/Condition/{obs_id}")).await.status, 404);

    // The patient reads their own record with a patient token.
    let own = w.token(w.patient(), Role::Patient, "patient/*.rs");
    assert_eq!(w.get(&own, &format!("/fhir/Observation/{obs_id}")).await.status, 200);
    // Another patient, and another organisation's practitioner without a grant: consent says no,
    // as for an id that does not exist (tests/adversarial_leaks.rs).
    let other = w.token(w.other_patient(), Role::Patient, "patient/*.rs");
    let refused = w.get(&other, &format!("/fhir/Observation/{obs_id}")).await;
    assert_eq!((refused.status, refused.fhir_issue()), (404, "not-found".to_owned()));
    let doc_b = w.token(w.doc_b(), Role::Practitioner, "user/*.rs");
    assert_eq!(w.get(&doc_b, &format!("/fhir/Observation/{obs_id}")).await.status, 404);
    // Scopes that do not cover the type: refused before consent is even asked.
    let narrow = w.token(w.doc_a(), Role::Practitioner, "user/Patient.rs");
    let before = w.service().pending_events();
    let refused = w.get(&narrow, &format!("/fhir/Observation/{obs_id}")).await;
    assert_eq!(refused.status, 403);
    assert_eq!(w.service().pending_events(), before + 1, "a scope refusal is audited too");
    assert!(refused.json()["issue"][0]["diagnostics"].as_str().unwrap().contains("scopes"));
    // No token, or an unknown one.
    let anonymous = w.get_anonymous(&format!("/fhir/Observation/{obs_id}")).await;
    assert_eq!((anonymous.status, anonymous.fhir_issue()), (401, "login".to_owned()));
    assert_eq!(anonymous.header("www-authenticate"), Some("Bearer"));
    assert_eq!(w.get("forged", &format!("/fhir/Observation/{obs_id}")).await.status, 401);
}

#[tokio::test]
async fn bad_writes_are_refused_with_operation_outcomes_and_nothing_written() {
    let w = world();
    let doc = w.token(w.doc_a(), Role::Practitioner, "user/*.cruds");
    let patient_id = w.create_patient(&doc).await;
    let log_before = w.chain.head().log_size;

    // Structurally invalid: an unknown element, with its path.
    let invalid = lab(&patient_id).replace(r#""status":"final""#, r#""status":"final","colour":"red""#);
    let answer = w.post(&doc, "/fhir/Observation", &invalid).await;
    assert_eq!((answer.status, answer.fhir_issue()), (400, "structure".to_owned()), "{}", answer.text());
    assert!(answer.json()["issue"][0]["expression"][0].as_str().unwrap().contains("colour"), "{}", answer.text());
    // Not JSON; wrong content type; the body's type differs from the URL's.
    assert_eq!(w.post(&doc, "/fhir/Observation", "{not json").await.fhir_issue(), "invalid");
    let plain = w.bearer("POST", "/fhir/Observation", &doc).header("content-type", "text/plain");
    assert_eq!(w.send(plain.body(Body::from(lab(&patient_id))).unwrap()).await.status, 415);
    assert_eq!(w.post(&doc, "/fhir/Condition", &lab(&patient_id)).await.status, 400);
    // A subject that is no Patient here; a Patient naming no registered patient identity.
    let dangling = lab(&"ab".repeat(32));
    assert_eq!(w.post(&doc, "/fhir/Observation", &dangling).await.status, 422);
    let nobody = patient_resource("cd".repeat(32));
    assert_eq!(w.post(&doc, "/fhir/Patient", &nobody).await.status, 422);
    // An Observation that is both a lab and a vital: consent is per category, it must be one.
    let both = lab(&patient_id).replace(
        r#"{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"laboratory"}"#,
        r#"{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"laboratory"},{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"vital-signs"}"#,
    );
    assert_ne!(both, lab(&patient_id));
    assert_eq!(w.post(&doc, "/fhir/Observation", &both).await.fhir_issue(), "business-rule");
    // A patient may not write clinical records; another organisation's practitioner neither.
    let own = w.token(w.patient(), Role::Patient, "patient/*.cruds");
    assert_eq!(w.post(&own, "/fhir/Observation", &lab(&patient_id)).await.status, 403);
    let doc_b = w.token(w.doc_b(), Role::Practitioner, "user/*.cruds");
    let before = w.service().pending_events();
    assert_eq!(w.post(&doc_b, "/fhir/Observation", &lab(&patient_id)).await.status, 403);
    assert_eq!(w.service().pending_events(), before + 1, "a refused write is audited");
    // A read-only token cannot create.
    let reader = w.token(w.doc_a(), Role::Practitioner, "user/*.rs");
    assert_eq!(w.post(&reader, "/fhir/Observation", &lab(&patient_id)).await.status, 403);
    // Types not served, and interactions not yet supported.
    assert_eq!(w.post(&doc, "/fhir/Coverage", "{}").await.fhir_issue(), "not-supported");
    assert_eq!(w.get(&doc, "/fhir/Banana/1").await.fhir_issue(), "not-supported");

    w.commit();
    assert_eq!(w.chain.head().log_size, log_before, "no refused write reached the chain");
}

#[tokio::test]
async fn updates_make_versions_with_if_match_and_history_lists_them() {
    let w = world();
    let doc = w.token(w.doc_a(), Role::Practitioner, "user/*.cruds");
    let patient_id = w.create_patient(&doc).await;
    let obs_id = w.post(&doc, "/fhir/Observation", &lab(&patient_id)).await.json()["id"].as_str().unwrap().to_owned();
    w.commit();
    let path = format!("/fhir/Observation/{obs_id}");
    let v2 = lab(&patient_id).replacen('{', &format!(r#"{{"id":"{obs_id}","#), 1).replace("5.40", "6.10");

    let updated = w.put(&doc, &path, Some("W/\"1\""), &v2).await;
    assert_eq!(updated.status, 200, "{}", updated.text());
    assert_eq!(updated.header("etag"), Some("W/\"2\""));
    w.commit();
    // Based on a stale version: refused, nothing written.
    let stale = w.put(&doc, &path, Some("W/\"1\""), &v2).await;
    assert_eq!((stale.status, stale.fhir_issue()), (412, "conflict".to_owned()));
    assert_eq!(w.put(&doc, &path, Some("banana"), &v2).await.status, 400);
    // The body's id must be the URL's; no update-as-create; the patient never changes.
    assert_eq!(w.put(&doc, &path, None, &lab(&patient_id)).await.status, 400);
    let elsewhere = format!("/fhir/Observation/{}", "ef".repeat(32));
    assert_eq!(w.put(&doc, &elsewhere, None, &v2.replace(&obs_id, &"ef".repeat(32))).await.status, 405);
    let own = w.token(w.patient(), Role::Patient, "patient/*.cruds");
    assert_eq!(w.put(&own, &path, None, &v2).await.status, 403);
    let other_patient_body = patient_resource(w.other_patient().id());
    let other_id = w.post(&doc, "/fhir/Patient", &other_patient_body).await.json()["id"].as_str().unwrap().to_owned();
    w.commit();
    let moved = v2.replace(&patient_id, &other_id);
    assert_eq!(w.put(&doc, &path, None, &moved).await.status, 422);
    let recategorised = v2.replace("laboratory", "vital-signs");
    assert_eq!(w.put(&doc, &path, None, &recategorised).await.fhir_issue(), "business-rule");

    // History: newest first, each version's own bytes; vread still finds version 1.
    let history = w.get(&doc, &format!("{path}/_history")).await;
    assert_eq!(history.status, 200, "{}", history.text());
    let bundle = history.json();
    assert_eq!((bundle["type"].as_str(), bundle["total"].as_u64()), (Some("history"), Some(2)));
    let entries = bundle["entry"].as_array().unwrap();
    assert_eq!(entries[0]["resource"]["meta"]["versionId"], "2");
    assert_eq!(entries[1]["resource"]["meta"]["versionId"], "1");
    assert_eq!(entries[1]["request"]["method"], "POST");
    assert_eq!(entries[0]["response"]["etag"], "W/\"2\"");
    let text = history.text();
    assert!(text.contains(r#""value":6.10"#) && text.contains(r#""value":5.40"#), "{text}");
    let paged = w.get(&doc, &format!("{path}/_history?_count=1&_offset=1")).await.json();
    assert_eq!(paged["entry"].as_array().unwrap().len(), 1);
    assert_eq!(paged["entry"][0]["resource"]["meta"]["versionId"], "1");
    let v1 = w.get(&doc, &format!("{path}/_history/1")).await;
    assert!(v1.text().contains(r#""value":5.40"#));
    // Another patient sees no history either (nor that there is one).
    let other = w.token(w.other_patient(), Role::Patient, "patient/*.rs");
    assert_eq!(w.get(&other, &format!("{path}/_history")).await.status, 404);
    // Type history: both versions, newest first, for whoever may read; nothing for others.
    let all = w.get(&doc, "/fhir/Observation/_history").await;
    assert_eq!(all.status, 200, "{}", all.text());
    let bundle = all.json();
    assert_eq!((bundle["type"].as_str(), bundle["total"].as_u64()), (Some("history"), Some(2)));
    assert_eq!(bundle["entry"][0]["resource"]["meta"]["versionId"], "2");
    let page = w.get(&doc, "/fhir/Observation/_history?_count=1").await.json();
    assert_eq!(page["entry"].as_array().unwrap().len(), 1);
    assert!(page["link"].as_array().unwrap().iter().any(|l| l["relation"] == "next"));
    let others = w.get(&other, "/fhir/Observation/_history").await.json();
    assert_eq!(others["total"], 0);
    assert_eq!(w.get(&doc, "/fhir/Observation/_history?_since=2020").await.fhir_issue(), "not-supported");
}

#[tokio::test]
async fn a_patient_new_to_the_network_is_registered_with_keys_held_for_hand_over() {
    let w = world();
    let doc = w.token(w.doc_a(), Role::Practitioner, "user/*.cruds");
    let newcomer =
        r#"{"resourceType":"Patient","name":[{"family":"Synthetic","given":["Newcomer"]}],"gender":"other"}"#;
    // A node without a patient key directory registers nobody.
    assert_eq!(w.post(&doc, "/fhir/Patient", newcomer).await.status, 422);

    let keys = tempfile::tempdir().unwrap();
    w.service().set_patient_key_dir(keys.path().to_owned());
    // Blocks commit in the background, as consensus would, while the create waits for the
    // registration.
    let committer = w.committer();
    let created = w.post(&doc, "/fhir/Patient", newcomer).await;
    drop(committer);
    assert_eq!(created.status, 201, "{}", created.text());
    assert_eq!(created.header("x-medledger-patient-registered"), Some("true"));
    let identity =
        medledger_types::IdentityId::from_hex(created.header("x-medledger-patient-identity").unwrap()).unwrap();
    assert_eq!(w.chain.snapshot().identity(&identity).map(|i| i.role), Some(Role::Patient));
    // The patient's keys wait, private, in the hand-over directory; their name is not on-chain.
    let key_file = keys.path().join(format!("{identity}.key"));
    let held = medledger_crypto::read_key_file(&key_file).unwrap();
    assert_eq!(held.id(), identity);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777, 0o600);
    }
    w.commit();
    // Records can now be written for them, and with their keys they read their own.
    let patient_id = created.json()["id"].as_str().unwrap().to_owned();
    let obs = w.post(&doc, "/fhir/Observation", &lab(&patient_id)).await;
    assert_eq!(obs.status, 201, "{}", obs.text());
    w.commit();
    let own = w.token(&held, Role::Patient, "patient/*.rs");
    let obs_id = obs.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(w.get(&own, &format!("/fhir/Observation/{obs_id}")).await.status, 200);
}

#[tokio::test]
async fn patient_everything_returns_what_the_caller_may_read_paged() {
    let w = world();
    let doc = w.token(w.doc_a(), Role::Practitioner, "user/*.cruds");
    let patient_id = w.create_patient(&doc).await;
    for _ in 0..3 {
        assert_eq!(w.post(&doc, "/fhir/Observation", &lab(&patient_id)).await.status, 201);
    }
    w.commit();
    let path = format!("/fhir/Patient/{patient_id}/$everything");
    let all = w.get(&doc, &path).await;
    assert_eq!(all.status, 200, "{}", all.text());
    let bundle = all.json();
    assert_eq!(bundle["type"], "searchset");
    let entries = bundle["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 4);
    assert_eq!(entries[0]["resource"]["resourceType"], "Patient");
    assert!(all.text().contains(r#""value":5.40"#));
    // Paged: two at a time, with a next link until the end.
    let page = w.get(&doc, &format!("{path}?_count=2")).await.json();
    assert_eq!(page["entry"].as_array().unwrap().len(), 2);
    let next = page["link"].as_array().unwrap().iter().find(|l| l["relation"] == "next").unwrap()["url"]
        .as_str()
        .unwrap()
        .to_owned();
    let last = w.get(&doc, &next).await.json();
    assert_eq!(last["entry"].as_array().unwrap().len(), 2);
    assert!(last["link"].as_array().unwrap().iter().all(|l| l["relation"] != "next"));
    // The patient gets everything of theirs; another organisation's practitioner gets nothing
    // (each refusal audited): the answer for a patient that does not exist.
    let own = w.token(w.patient(), Role::Patient, "patient/*.rs");
    assert_eq!(w.get(&own, &path).await.json()["entry"].as_array().unwrap().len(), 4);
    let doc_b = w.token(w.doc_b(), Role::Practitioner, "user/*.rs");
    let before = w.service().pending_events();
    let none = w.get(&doc_b, &path).await;
    assert_eq!((none.status, none.fhir_issue()), (404, "not-found".to_owned()));
    assert_eq!(w.service().pending_events(), before + 4);
    assert_eq!(w.get(&doc, &format!("{path}?_count=0")).await.status, 400);
    // Scopes narrow $everything too: a Patient-only token gets only the Patient.
    let patient_only = w.token(w.doc_a(), Role::Practitioner, "user/Patient.rs");
    assert_eq!(w.get(&patient_only, &path).await.json()["entry"].as_array().unwrap().len(), 1);
    assert_eq!(w.get(&doc, &format!("{path}?_offset=99999999999")).await.status, 400);
    assert_eq!(w.get(&doc, &format!("{path}?_since=2020")).await.fhir_issue(), "not-supported");
}

#[tokio::test]
async fn audit_events_show_the_patient_every_access_as_valid_r4() {
    let w = world();
    let doc = w.token(w.doc_a(), Role::Practitioner, "user/*.cruds");
    let patient_id = w.create_patient(&doc).await;
    let obs_id = w.post(&doc, "/fhir/Observation", &lab(&patient_id)).await.json()["id"].as_str().unwrap().to_owned();
    w.commit();
    // One allowed read by the custodian's practitioner, one refused read by another clinic.
    assert_eq!(w.get(&doc, &format!("/fhir/Observation/{obs_id}")).await.status, 200);
    let doc_b = w.token(w.doc_b(), Role::Practitioner, "user/*.rs");
    assert_eq!(w.get(&doc_b, &format!("/fhir/Observation/{obs_id}")).await.status, 404);
    w.flush_events();

    let own = w.token(w.patient(), Role::Patient, "patient/*.rs");
    let answer = w.get(&own, &format!("/fhir/AuditEvent?patient=Patient/{patient_id}")).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let bundle = answer.json();
    let events: Vec<&Value> = bundle["entry"].as_array().unwrap().iter().map(|e| &e["resource"]).collect();
    assert_eq!(events.len(), 2, "{}", answer.text());
    for event in &events {
        let bytes = serde_json::to_vec(event).unwrap();
        if let Err(issues) = medledger_fhir::validate(&bytes) {
            panic!("AuditEvent is not valid R4: {issues:?}\n{event}");
        }
        assert_eq!(event["entity"][1]["what"]["reference"], format!("Observation/{obs_id}/_history/1"));
        assert_eq!(event["extension"][0]["valueString"].as_str().unwrap().len(), 64);
        // The recorder: the validator that decided.
        assert_eq!(event["source"]["observer"]["identifier"]["value"], w.net.validators[0].id().to_hex());
        assert!(event["source"]["observer"]["display"].as_str().unwrap().starts_with("node-0 ("));
    }
    let by = |who: &Keypair| {
        events.iter().find(|e| e["agent"][0]["who"]["identifier"]["value"] == who.id().to_hex()).unwrap()
    };
    assert_eq!(
        (by(w.doc_a())["outcome"].as_str(), by(w.doc_a())["outcomeDesc"].as_str()),
        (Some("0"), Some("custodian"))
    );
    assert_eq!(
        (by(w.doc_b())["outcome"].as_str(), by(w.doc_b())["outcomeDesc"].as_str()),
        (Some("4"), Some("no-grant"))
    );
    // The custodian's staff may see it too; another patient and another clinic may not (and,
    // not seeing the Patient, are not told it exists).
    assert_eq!(w.get(&doc, &format!("/fhir/AuditEvent?patient=Patient/{patient_id}")).await.status, 200);
    let other = w.token(w.other_patient(), Role::Patient, "patient/*.rs");
    assert_eq!(w.get(&other, &format!("/fhir/AuditEvent?patient=Patient/{patient_id}")).await.status, 404);
    assert_eq!(w.get(&doc_b, &format!("/fhir/AuditEvent?patient=Patient/{patient_id}")).await.status, 404);
    // Paged, and unsupported parameters are said to be so.
    let page = w.get(&own, &format!("/fhir/AuditEvent?patient=Patient/{patient_id}&_count=1")).await.json();
    assert_eq!(page["entry"].as_array().unwrap().len(), 1);
    assert!(page["link"].as_array().unwrap().iter().any(|l| l["relation"] == "next"));
    let unsupported = w.get(&own, &format!("/fhir/AuditEvent?patient=Patient/{patient_id}&date=ge2020")).await;
    assert_eq!(unsupported.fhir_issue(), "not-supported");
    assert_eq!(w.get(&own, "/fhir/AuditEvent").await.status, 400);
}

#[tokio::test]
async fn every_version_has_a_provenance_naming_author_custodian_and_ledger_transaction() {
    let w = world();
    let doc = w.token(w.doc_a(), Role::Practitioner, "user/*.cruds");
    let patient_id = w.create_patient(&doc).await;
    let created = w.post(&doc, "/fhir/Observation", &lab(&patient_id)).await;
    let obs_id = created.json()["id"].as_str().unwrap().to_owned();
    let tx_v1 = created.header("x-medledger-tx").unwrap().to_owned();
    w.commit();
    let v2 = lab(&patient_id).replacen('{', &format!(r#"{{"id":"{obs_id}","#), 1);
    assert_eq!(w.put(&doc, &format!("/fhir/Observation/{obs_id}"), None, &v2).await.status, 200);
    w.commit();

    let answer = w.get(&doc, &format!("/fhir/Provenance?target=Observation/{obs_id}")).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let bundle = answer.json();
    let provenances: Vec<&Value> = bundle["entry"].as_array().unwrap().iter().map(|e| &e["resource"]).collect();
    assert_eq!(provenances.len(), 2);
    for p in &provenances {
        if let Err(issues) = medledger_fhir::validate(&serde_json::to_vec(p).unwrap()) {
            panic!("Provenance is not valid R4: {issues:?}\n{p}");
        }
        assert_eq!(p["agent"][0]["who"]["identifier"]["value"], w.doc_a().id().to_hex());
        assert_eq!(p["agent"][1]["who"]["identifier"]["value"], w.net.organisations[0].id().to_hex());
    }
    assert_eq!(provenances[1]["target"][0]["reference"], format!("Observation/{obs_id}/_history/1"));
    assert_eq!(provenances[1]["activity"]["coding"][0]["code"], "CREATE");
    assert_eq!(provenances[0]["activity"]["coding"][0]["code"], "UPDATE");
    assert_eq!(provenances[1]["extension"][0]["valueString"], tx_v1);
    // The transaction's signature verifies under the signer's key over the transaction.
    let tx_id = medledger_types::TxId::from_hex(&tx_v1).unwrap();
    let tx = w.chain.transaction(&tx_id).unwrap().unwrap();
    let signature = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        provenances[1]["signature"][0]["data"].as_str().unwrap(),
    )
    .unwrap();
    assert_eq!(signature, tx.signature().0.to_vec());
    let signer = w.chain.snapshot().identity(&tx.body().signer).unwrap().signing_key;
    signer.verify(&tx.signed_message(), tx.signature()).unwrap();
    // A delete is a version with its own Provenance, labelled as such.
    assert_eq!(w.delete(&doc, &format!("/fhir/Observation/{obs_id}")).await.status, 204);
    w.commit();
    let bundle = w.get(&doc, &format!("/fhir/Provenance?target=Observation/{obs_id}")).await.json();
    assert_eq!(bundle["entry"][0]["resource"]["activity"]["coding"][0]["code"], "DELETE", "{bundle}");
    assert_eq!(bundle["total"], 3);
    // Only for those who may read the record; to others it is not there.
    let doc_b = w.token(w.doc_b(), Role::Practitioner, "user/*.rs");
    assert_eq!(w.get(&doc_b, &format!("/fhir/Provenance?target=Observation/{obs_id}")).await.status, 404);
    assert_eq!(w.get(&doc, "/fhir/Provenance?agent=x").await.fhir_issue(), "not-supported");
}

#[tokio::test]
async fn grants_read_as_r4_consents_with_their_status() {
    let w = world();
    let doc = w.token(w.doc_a(), Role::Practitioner, "user/*.cruds");
    let patient_id = w.create_patient(&doc).await;
    let t = now_ms();
    let grant = medledger_ledger::Payload::ConsentGrant {
        patient: w.patient().id(),
        grantee: w.net.organisations[1].id(),
        scope: medledger_ledger::Scope::Categories(vec!["labs".into()]),
        actions: medledger_ledger::actions::READ,
        purpose: medledger_ledger::Purpose::Treatment,
        valid_from_ms: t - 1000,
        valid_until_ms: t + 86_400_000,
    };
    let grant_id =
        w.chain.submit(sign(w.patient(), w.net.genesis.chain_id(), w.patient().id(), 0, grant).bytes(), t).unwrap();
    w.commit();

    let own = w.token(w.patient(), Role::Patient, "patient/*.rs");
    let listed = w.get(&own, &format!("/fhir/Consent?patient=Patient/{patient_id}")).await;
    assert_eq!(listed.status, 200, "{}", listed.text());
    let consents: Vec<Value> =
        listed.json()["entry"].as_array().unwrap().iter().map(|e| e["resource"].clone()).collect();
    assert_eq!(consents.len(), 1);
    let consent = &consents[0];
    if let Err(issues) = medledger_fhir::validate(&serde_json::to_vec(consent).unwrap()) {
        panic!("Consent is not valid R4: {issues:?}\n{consent}");
    }
    assert_eq!(consent["id"], grant_id.to_hex());
    assert_eq!(consent["status"], "active");
    assert_eq!(consent["provision"]["type"], "permit");
    assert_eq!(consent["provision"]["code"][0]["coding"][0]["code"], "labs");
    assert_eq!(consent["provision"]["purpose"][0]["code"], "TREAT");
    assert_eq!(
        consent["provision"]["actor"][0]["reference"]["identifier"]["value"],
        w.net.organisations[1].id().to_hex()
    );
    assert_eq!(consent["performer"][0]["identifier"]["value"], w.patient().id().to_hex());

    // Revoked: inactive from then on.
    let revoke = medledger_ledger::Payload::ConsentRevoke { grant_id };
    w.chain.submit(sign(w.patient(), w.net.genesis.chain_id(), w.patient().id(), 1, revoke).bytes(), now_ms()).unwrap();
    w.commit();
    let one = w.get(&own, &format!("/fhir/Consent/{}", grant_id.to_hex())).await;
    assert_eq!(one.json()["status"], "inactive", "{}", one.text());
    // Only the patient sees every consent. A custodian's staff see only consents that give
    // their own organisation access (none here): holding a record of a patient does not open
    // the patient's other consents. The grantee clinic holds no records of the patient, and
    // other patients see nothing. A consent one may not see answers as one that does not exist.
    assert_eq!(w.get(&doc, &format!("/fhir/Consent/{}", grant_id.to_hex())).await.status, 404);
    let listed = w.get(&doc, &format!("/fhir/Consent?patient=Patient/{patient_id}")).await;
    assert_eq!((listed.status, listed.json()["total"].as_u64()), (200, Some(0)), "{}", listed.text());
    let doc_b = w.token(w.doc_b(), Role::Practitioner, "user/*.rs");
    assert_eq!(w.get(&doc_b, &format!("/fhir/Consent/{}", grant_id.to_hex())).await.status, 404);
    let other = w.token(w.other_patient(), Role::Patient, "patient/*.rs");
    assert_eq!(w.get(&other, &format!("/fhir/Consent?patient=Patient/{patient_id}")).await.status, 404);
    // A write that is no Consent at all is a structural error (writes: tests/fhir_consent.rs).
    assert_eq!(w.post(&doc, "/fhir/Consent", "{}").await.status, 400);
}

fn lab_at(patient_id: &str, loinc: &str, value: &str, date: &str) -> String {
    Lab::of(patient_id).loinc(loinc).untitled().effective(date).value(value).json()
}

#[tokio::test]
async fn search_matches_sorts_pages_includes_and_shows_only_what_consent_allows() {
    let w = world();
    let doc = w.token(w.doc_a(), Role::Practitioner, "user/*.cruds");
    let patient_body = format!(
        r#"{{"resourceType":"Patient","identifier":[{{"system":"urn:medledger:identity","value":"{}"}}],"name":[{{"family":"Zyxwvut","given":["Ada"]}}],"gender":"female","birthDate":"1980-02-29"}}"#,
        w.patient().id().to_hex()
    );
    let patient_id = w.post(&doc, "/fhir/Patient", &patient_body).await.json()["id"].as_str().unwrap().to_owned();
    w.commit();
    for (code, value, date) in [
        ("2345-7", "5.40", "2024-01-10T08:00:00Z"),
        ("2345-7", "6.10", "2024-03-05T08:00:00Z"),
        ("718-7", "13.2", "2024-02-01"),
    ] {
        assert_eq!(w.post(&doc, "/fhir/Observation", &lab_at(&patient_id, code, value, date)).await.status, 201);
    }
    w.commit();
    let search = |q: &str| format!("/fhir/Observation?{q}");
    let ids_of = |a: &Answer| -> Vec<String> {
        a.json()["entry"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["search"]["mode"] == "match")
            .map(|e| e["resource"]["valueQuantity"]["value"].to_string())
            .collect()
    };

    let all = w.get(&doc, &search(&format!("patient=Patient/{patient_id}"))).await;
    assert_eq!(all.status, 200, "{}", all.text());
    assert_eq!((all.json()["type"].as_str(), all.json()["total"].as_u64()), (Some("searchset"), Some(3)));
    let glucose = w.get(&doc, &search("code=http://loinc.org|2345-7")).await;
    assert_eq!(glucose.json()["total"], 2, "{}", glucose.text());
    assert_eq!(w.get(&doc, &search("code=718-7&category=laboratory")).await.json()["total"], 1);
    assert_eq!(w.get(&doc, &search("date=ge2024-02-01")).await.json()["total"], 2);
    assert_eq!(w.get(&doc, &search("date=lt2024-02")).await.json()["total"], 1);
    // Sorted by date, newest first; exact decimals kept.
    let sorted = w.get(&doc, &search("_sort=-date")).await;
    assert_eq!(ids_of(&sorted), ["6.1", "13.2", "5.4"], "{}", sorted.text());
    assert!(sorted.text().contains(r#""value":6.10"#));
    // Paged with next links.
    let page = w.get(&doc, &search("_sort=date&_count=2")).await;
    assert_eq!(ids_of(&page), ["5.4", "13.2"]);
    let next = page.json()["link"].as_array().unwrap().iter().find(|l| l["relation"] == "next").unwrap()["url"]
        .as_str()
        .unwrap()
        .to_owned();
    let rest = w.get(&doc, &next).await;
    assert_eq!(ids_of(&rest), ["6.1"], "{next}");
    // One level of _include and _revinclude.
    let with_patient = w.get(&doc, &search("code=718-7&_include=Observation:patient")).await.json();
    let included: Vec<&Value> =
        with_patient["entry"].as_array().unwrap().iter().filter(|e| e["search"]["mode"] == "include").collect();
    assert_eq!(included.len(), 1);
    assert_eq!(included[0]["resource"]["resourceType"], "Patient");
    let patients = w.get(&doc, "/fhir/Patient?family=zyx&_revinclude=Observation:patient").await;
    let entries = patients.json()["entry"].as_array().unwrap().clone();
    assert_eq!(patients.json()["total"], 1, "{}", patients.text());
    assert_eq!(entries.iter().filter(|e| e["search"]["mode"] == "include").count(), 3);
    assert_eq!(w.get(&doc, "/fhir/Patient?birthdate=1980-02-29&gender=female").await.json()["total"], 1);
    // Includes of types the token's scopes do not cover are left out.
    let obs_only = w.token(w.doc_a(), Role::Practitioner, "user/Observation.rs");
    let narrow = w.get(&obs_only, &search("code=718-7&_include=Observation:patient")).await.json();
    assert_eq!(narrow["entry"].as_array().unwrap().iter().filter(|e| e["search"]["mode"] == "include").count(), 0);
    let patient_only = w.token(w.doc_a(), Role::Practitioner, "user/Patient.rs");
    let narrow = w.get(&patient_only, "/fhir/Patient?family=zyx&_revinclude=Observation:patient").await.json();
    assert_eq!(narrow["entry"].as_array().unwrap().iter().filter(|e| e["search"]["mode"] == "include").count(), 0);
    assert_eq!(w.get(&doc, &format!("/fhir/Patient?_id={patient_id}")).await.json()["total"], 1);

    // Consent decides what anyone sees, totals included; every result is audited.
    let own = w.token(w.patient(), Role::Patient, "patient/*.rs");
    let before = w.service().pending_events();
    assert_eq!(w.get(&own, &search("")).await.json()["total"], 3);
    assert_eq!(w.service().pending_events(), before + 3);
    let other = w.token(w.other_patient(), Role::Patient, "patient/*.rs");
    assert_eq!(w.get(&other, &search("")).await.json()["total"], 0);
    let doc_b = w.token(w.doc_b(), Role::Practitioner, "user/*.rs");
    assert_eq!(w.get(&doc_b, &search("code=2345-7")).await.json()["total"], 0);
    // Scopes: a token without search on the type.
    let narrow = w.token(w.doc_a(), Role::Practitioner, "user/Observation.r");
    assert_eq!(w.get(&narrow, &search("")).await.status, 403);

    // Unknown parameters are refused, or ignored with a warning when the client allows it.
    let strict = w.get(&doc, &search("colour=red")).await;
    assert_eq!((strict.status, strict.fhir_issue()), (400, "not-supported".to_owned()));
    let request = w.bearer("GET", &search("colour=red"), &doc).header("prefer", "handling=lenient");
    let lenient = w.send(request.body(Body::empty()).unwrap()).await;
    assert_eq!(lenient.status, 200, "{}", lenient.text());
    assert_eq!(lenient.json()["entry"][0]["search"]["mode"], "outcome");
    assert_eq!(w.get(&doc, &search("date=banana")).await.status, 400);
}

#[tokio::test]
async fn a_create_answers_once_committed_or_202_when_the_chain_is_slow() {
    let mut w = world();
    let doc = w.token(w.doc_a(), Role::Practitioner, "user/*.cruds");
    let patient_id = w.create_patient(&doc).await;
    w.reroute(|services| {
        services.fhir_commit_wait_ms = 300;
        services.public_bases = vec![];
    });
    // No blocks: accepted, not created; readable only once committed.
    let pending = w.post(&doc, "/fhir/Observation", &lab(&patient_id)).await;
    assert_eq!(pending.status, 202, "{}", pending.text());
    assert_eq!(pending.json()["issue"][0]["severity"], "information");
    w.commit();
    // Blocks committing in the background: 201 means a read right after finds it.
    let committer = w.committer();
    w.reroute(|services| services.fhir_commit_wait_ms = 10_000);
    let created = w.post(&doc, "/fhir/Observation", &lab(&patient_id)).await;
    assert_eq!(created.status, 201, "{}", created.text());
    let id = created.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(w.get(&doc, &format!("/fhir/Observation/{id}")).await.status, 200);
    drop(committer);
}

#[tokio::test]
async fn a_delete_is_logical_reads_answer_gone_and_history_keeps_every_version() {
    let w = world();
    let doc = w.token(w.doc_a(), Role::Practitioner, "user/*.cruds");
    let patient_id = w.create_patient(&doc).await;
    let obs_id = w.post(&doc, "/fhir/Observation", &lab(&patient_id)).await.json()["id"].as_str().unwrap().to_owned();
    w.commit();
    let path = format!("/fhir/Observation/{obs_id}");
    assert_eq!(w.get(&doc, &format!("/fhir/Observation?patient=Patient/{patient_id}")).await.json()["total"], 1);

    // Not the custodian's staff, or without delete in the scopes: refused.
    let own = w.token(w.patient(), Role::Patient, "patient/*.cruds");
    assert_eq!(w.delete(&own, &path).await.status, 403);
    let no_delete = w.token(w.doc_a(), Role::Practitioner, "user/*.cru");
    assert_eq!(w.delete(&no_delete, &path).await.status, 403);

    let deleted = w.delete(&doc, &path).await;
    assert_eq!(deleted.status, 204, "{}", deleted.text());
    assert_eq!(deleted.header("etag"), Some("W/\"2\""));
    w.commit();
    let gone = w.get(&doc, &path).await;
    assert_eq!((gone.status, gone.fhir_issue()), (410, "deleted".to_owned()));
    // Deleting again changes nothing; the old version is still there to vread.
    assert_eq!(w.delete(&doc, &path).await.status, 204);
    w.commit();
    assert_eq!(
        w.chain.snapshot().record(&medledger_types::RecordId::from_hex(&obs_id).unwrap()).unwrap().latest_version,
        2
    );
    assert_eq!(w.get(&doc, &format!("{path}/_history/1")).await.status, 200);
    let history = w.get(&doc, &format!("{path}/_history")).await.json();
    assert_eq!(history["entry"][0]["request"]["method"], "DELETE");
    assert!(history["entry"][0].get("resource").is_none());
    assert_eq!(history["entry"][1]["resource"]["meta"]["versionId"], "1");
    // Search and $everything no longer find it.
    assert_eq!(w.get(&doc, &format!("/fhir/Observation?patient=Patient/{patient_id}")).await.json()["total"], 0);
    let everything = w.get(&doc, &format!("/fhir/Patient/{patient_id}/$everything")).await.json();
    assert_eq!(everything["entry"].as_array().unwrap().len(), 1, "only the Patient is left");
    // An update brings it back as version 3, found again.
    let revived = lab(&patient_id).replacen('{', &format!(r#"{{"id":"{obs_id}","#), 1);
    assert_eq!(w.put(&doc, &path, None, &revived).await.status, 200);
    w.commit();
    assert_eq!(w.get(&doc, &path).await.header("etag"), Some("W/\"3\""));
    let found = w.get(&doc, &format!("/fhir/Observation?patient=Patient/{patient_id}")).await.json();
    assert_eq!(found["total"], 1);
    assert_eq!(found["entry"].as_array().unwrap().len(), 1);
}
