//! FHIR Bulk Data `$export` (async pattern): kick-off, polling, manifest and download, with the
//! same scope and consent rules as search, every exported record an on-chain `Export` access
//! event, and jobs visible only to the client that started them. Synthetic data, in-process.

use std::{collections::BTreeMap, ops::Deref, time::Duration};

use axum::{body::Body, http::Request};
use medledger_crypto::Keypair;
use medledger_ledger::{AccessAction, AccessOutcome, Payload, Purpose, Scope, actions, tx::sign};
use medledger_types::Role;
use serde_json::Value;

mod common;

use common::{
    fhir::{FHIR, Lab},
    now_ms,
    request::Answer,
    world::World,
};

const BASE: &str = "http://fhir.test";

fn lab(patient_id: &str, value: &str) -> String {
    Lab::of(patient_id).value(value).json()
}

fn patient_body(identity: &Keypair) -> String {
    // Pretty-printed on purpose: NDJSON must still carry it on one line.
    format!(
        "{{\n  \"resourceType\": \"Patient\",\n  \"identifier\": [{{\"system\": \"urn:medledger:identity\", \"value\": \"{}\"}}],\n  \"name\": [{{\"family\": \"Synthetic\"}}]\n}}",
        identity.id().to_hex()
    )
}

/// A node of organisation A with two patients' records (P: a Patient, two lab Observations
/// and a Condition; Q: a Patient and one Observation), all in A's custody.
struct Exports {
    world: World,
    /// Resource ids by (patient label, type).
    p_patient: String,
    p_labs: Vec<String>,
    p_condition: String,
    q_patient: String,
    q_lab: String,
}

impl Deref for Exports {
    type Target = World;

    fn deref(&self) -> &World {
        &self.world
    }
}

impl Exports {
    async fn new() -> Self {
        let w = World::hospital_and_clinic("medledger.api-export")
            .practitioner("export-dr-a", 0, "Dr A")
            .practitioner("export-dr-b", 1, "Dr B")
            .staff("export-system-a", 0, Role::SystemClient, "Export A")
            .patients(&["export-patient", "export-other-patient"])
            .records()
            .commit_wait_ms(0)
            .public_base(BASE)
            .build();
        let doc = w.token(w.doc_a(), Role::Practitioner, "user/*.cruds");
        let p_patient = w.create(&doc, "Patient", &patient_body(w.patient())).await;
        let q_patient = w.create(&doc, "Patient", &patient_body(w.other_patient())).await;
        let mut p_labs = Vec::new();
        for value in ["5.40", "6.10"] {
            p_labs.push(w.create(&doc, "Observation", &lab(&p_patient, value)).await);
        }
        let condition = format!(
            r#"{{"resourceType":"Condition","code":{{"text":"Synthetic condition"}},"subject":{{"reference":"Patient/{p_patient}"}}}}"#
        );
        let p_condition = w.create(&doc, "Condition", &condition).await;
        let q_lab = w.create(&doc, "Observation", &lab(&q_patient, "7.70")).await;
        Self { world: w, p_patient, p_labs, p_condition, q_patient, q_lab }
    }
}

impl World {
    /// Hospital A's system client.
    fn system_a(&self) -> &Keypair {
        &self.staff[2]
    }

    /// A kick-off as the IG asks for it.
    async fn kick_off(&self, token: &str, path: &str) -> Answer {
        let request = self.bearer("GET", path, token).header("accept", FHIR).header("prefer", "respond-async");
        self.send(request.body(Body::empty()).unwrap()).await
    }

    /// Kicks off, checks the 202, and returns the status path (relative to the base).
    async fn start(&self, token: &str, path: &str) -> String {
        let kicked = self.kick_off(token, path).await;
        assert_eq!(kicked.status, 202, "{path}: {}", kicked.text());
        let location = kicked.header("content-location").expect("Content-Location").to_owned();
        assert!(location.starts_with(&format!("{BASE}/fhir/$export-status/")), "{location}");
        location.strip_prefix(BASE).unwrap().to_owned()
    }

    /// Polls the status URL until the job is no longer running.
    async fn finish(&self, token: &str, status_path: &str) -> Answer {
        for _ in 0..2_000 {
            let polled = self.get(token, status_path).await;
            if polled.status != 202 {
                return polled;
            }
            assert!(polled.header("x-progress").is_some(), "running jobs report progress");
            assert!(polled.header("retry-after").is_some());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("the export did not finish");
    }

    /// Runs an export to its manifest and downloads every output: resources by type, and
    /// the raw lines by resource id. Deletes the job afterwards.
    async fn export(&self, token: &str, path: &str) -> Exported {
        let status_path = self.start(token, path).await;
        let done = self.finish(token, &status_path).await;
        assert_eq!(done.status, 200, "{}", done.text());
        assert_eq!(done.header("content-type"), Some("application/json"));
        let manifest = done.json();
        let mut by_type: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        let mut lines = BTreeMap::new();
        for output in manifest["output"].as_array().unwrap() {
            let url = output["url"].as_str().unwrap();
            let file = self.get(token, url.strip_prefix(BASE).expect("absolute file URLs")).await;
            assert_eq!(file.status, 200, "{}", file.text());
            assert_eq!(file.header("content-type"), Some("application/fhir+ndjson"));
            let text = file.text();
            assert!(text.ends_with('\n'));
            let mut count = 0;
            for line in text.lines() {
                let resource: Value = serde_json::from_str(line).unwrap();
                assert_eq!(resource["resourceType"], output["type"]);
                lines.insert(resource["id"].as_str().unwrap().to_owned(), line.to_owned());
                by_type.entry(output["type"].as_str().unwrap().to_owned()).or_default().push(resource);
                count += 1;
            }
            assert_eq!(output["count"], count);
        }
        assert_eq!(self.delete(token, &status_path).await.status, 202);
        Exported { manifest, by_type, lines, status_path }
    }
}

struct Exported {
    manifest: Value,
    by_type: BTreeMap<String, Vec<Value>>,
    lines: BTreeMap<String, String>,
    status_path: String,
}

/// The ids exported, sorted.
fn ids(exported: &Exported) -> Vec<String> {
    exported.lines.keys().cloned().collect()
}

fn sorted(ids: &[&String]) -> Vec<String> {
    let mut ids: Vec<String> = ids.iter().map(|s| (*s).clone()).collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn an_export_hands_out_exactly_what_the_client_may_read_and_audits_it_on_chain() {
    let w = Exports::new().await;
    // P lets Clinic B read everything of theirs; Q consents to nothing.
    let t = now_ms();
    let grant = Payload::ConsentGrant {
        patient: w.patient().id(),
        grantee: w.net.organisations[1].id(),
        scope: Scope::All,
        actions: actions::READ,
        purpose: Purpose::Treatment,
        valid_from_ms: t - 1_000,
        valid_until_ms: t + 86_400_000,
    };
    w.chain.submit(sign(w.patient(), w.net.genesis.chain_id(), w.patient().id(), 0, grant).bytes(), t).unwrap();
    w.commit();
    let doc_b = w.token(w.doc_b(), Role::Practitioner, "user/*.rs");
    let events_before = w.chain.patient_index().patient(&w.patient().id()).map_or(0, |p| p.access.len());

    let status_path = w.start(&doc_b, "/fhir/Patient/$export").await;
    // Nobody else sees the job, not even with a token of their own; without a token, 401.
    let doc_a = w.token(w.doc_a(), Role::Practitioner, "user/*.rs");
    assert_eq!(w.get(&doc_a, &status_path).await.issue(), "not-found");
    assert_eq!(w.get_anonymous(&status_path).await.status, 401);
    assert_eq!(w.delete(&doc_a, &status_path).await.status, 404);
    let done = w.finish(&doc_b, &status_path).await;
    assert_eq!(done.status, 200, "{}", done.text());
    let manifest = done.json();
    assert_eq!(manifest["request"], format!("{BASE}/fhir/Patient/$export"));
    assert_eq!(manifest["requiresAccessToken"], true);
    assert_eq!(manifest["error"], serde_json::json!([]));
    let head = w.chain.head();
    assert_eq!(manifest["transactionTime"], medledger_fhir::instant::instant_from_ms(head.timestamp_ms));
    let outputs = manifest["output"].as_array().unwrap();
    let types: Vec<&str> = outputs.iter().map(|o| o.as_object().unwrap()["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["Patient", "Observation", "Condition"], "{manifest}");
    // Files: only for the job's client.
    let file_path = outputs[1]["url"].as_str().unwrap().strip_prefix(BASE).unwrap().to_owned();
    assert_eq!(w.get(&doc_a, &file_path).await.status, 404);
    assert_eq!(w.get_anonymous(&file_path).await.status, 401);
    // A fresh token of the same client still sees it, if its scopes cover the type.
    let fresh = w.token(w.doc_b(), Role::Practitioner, "user/*.rs");
    assert_eq!(w.get(&fresh, &file_path).await.status, 200);
    let patients_only = w.token(w.doc_b(), Role::Practitioner, "user/Patient.rs");
    assert_eq!(w.get(&patients_only, &file_path).await.issue(), "forbidden");
    assert_eq!(w.delete(&doc_b, &status_path).await.status, 202);
    assert_eq!(w.get(&doc_b, &status_path).await.status, 404);
    assert_eq!(w.get(&doc_b, &file_path).await.status, 404);

    // The same again through the helper: every line is byte for byte what a read returns, and
    // nothing of Q's is there.
    let exported = w.export(&doc_b, "/fhir/Patient/$export").await;
    let mut expected = vec![&w.p_patient, &w.p_labs[0], &w.p_labs[1], &w.p_condition];
    assert_eq!(ids(&exported), sorted(&expected), "{}", exported.manifest);
    for (id, line) in &exported.lines {
        let resource_type = exported.by_type.iter().find(|(_, rs)| rs.iter().any(|r| r["id"] == **id)).unwrap().0;
        let read = w.get(&doc_b, &format!("/fhir/{resource_type}/{id}")).await;
        assert_eq!(read.status, 200);
        let read_line = read.text().replace('\n', " ");
        assert_eq!(*line, read_line, "exported as read (line breaks between tokens become spaces)");
    }
    assert!(exported.lines[&w.p_labs[0]].contains(r#""value":5.40"#), "values kept exactly");
    assert_eq!(w.get(&doc_b, &exported.status_path).await.status, 404, "deleted by the helper");

    // Every exported record is an on-chain Export access by Clinic B's practitioner (twice:
    // two exports), and nothing of Q's was touched.
    w.flush_events();
    let index = w.chain.patient_index();
    let exports: Vec<_> = index
        .patient(&w.patient().id())
        .unwrap()
        .access
        .iter()
        .skip(events_before)
        .map(|e| &e.event)
        .filter(|e| e.action == AccessAction::Export)
        .collect();
    assert_eq!(exports.len(), 8, "{exports:?}");
    for event in &exports {
        assert_eq!((event.accessor, event.outcome), (w.doc_b().id(), AccessOutcome::Allowed));
        let (record, _) = event.record.unwrap();
        expected.retain(|id| **id != record.to_hex());
    }
    assert!(expected.is_empty(), "every exported record is audited: {expected:?} missing");
    let q_events = index
        .patient(&w.other_patient().id())
        .map_or(0, |p| p.access.iter().filter(|e| e.event.accessor == w.doc_b().id()).count());
    assert_eq!(q_events, 0, "records left out are not touched (nor audited as refused)");
}

#[tokio::test]
async fn types_since_and_deletions_filter_a_system_export() {
    let w = Exports::new().await;
    let system = w.token(w.system_a(), Role::SystemClient, "system/*.rs");
    let all = w.export(&system, "/fhir/$export").await;
    let mut everything = vec![&w.p_patient, &w.q_patient, &w.p_labs[0], &w.p_labs[1], &w.q_lab, &w.p_condition];
    assert_eq!(ids(&all), sorted(&everything));
    assert_eq!(all.manifest["request"], format!("{BASE}/fhir/$export"));
    // Each line carries the server's id and meta.
    let patient = &all.by_type["Patient"][0];
    assert_eq!(patient["meta"]["versionId"], "1");
    assert!(patient["meta"]["lastUpdated"].as_str().unwrap().ends_with('Z'));
    assert!(!all.lines[&w.p_patient].contains('\n'));

    // _type: only those types.
    let labs = w.export(&system, "/fhir/$export?_type=Observation").await;
    assert_eq!(labs.by_type.keys().collect::<Vec<_>>(), ["Observation"]);
    assert_eq!(ids(&labs), sorted(&[&w.p_labs[0], &w.p_labs[1], &w.q_lab]));
    let two =
        w.export(&system, "/fhir/$export?_type=Condition,Patient&_outputFormat=application%2Ffhir%2Bndjson").await;
    assert_eq!(ids(&two), sorted(&[&w.p_patient, &w.q_patient, &w.p_condition]));
    let types: Vec<&str> =
        two.manifest["output"].as_array().unwrap().iter().map(|o| o["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["Condition", "Patient"], "in the order _type names them");

    // A deleted record is left out; _since keeps what was committed at or after it.
    let doc = w.token(w.doc_a(), Role::Practitioner, "user/*.cruds");
    assert_eq!(w.delete(&doc, &format!("/fhir/Observation/{}", w.p_labs[0])).await.status, 204);
    w.commit();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let since = medledger_fhir::instant::instant_from_ms(now_ms());
    tokio::time::sleep(Duration::from_millis(20)).await;
    let fresh = w.create(&doc, "Observation", &lab(&w.q_patient, "8.80")).await;
    let after = w.export(&system, "/fhir/$export").await;
    everything.retain(|id| **id != w.p_labs[0]);
    everything.push(&fresh);
    assert_eq!(ids(&after), sorted(&everything));
    let recent = w.export(&system, &format!("/fhir/$export?_since={since}")).await;
    assert_eq!(ids(&recent), vec![fresh.clone()]);
    let offset = since.replace('Z', "+00:00").replace('+', "%2B");
    let recent = w.export(&system, &format!("/fhir/$export?_since={offset}&_type=Observation")).await;
    assert_eq!(ids(&recent), vec![fresh.clone()]);
    let future = medledger_fhir::instant::instant_from_ms(now_ms() + 86_400_000);
    let none = w.export(&system, &format!("/fhir/$export?_since={future}")).await;
    assert_eq!(none.manifest["output"], serde_json::json!([]));

    // Per-type system scopes narrow a system export; asking for more is refused.
    let labs_only = w.token(w.system_a(), Role::SystemClient, "system/Observation.r");
    let narrow = w.export(&labs_only, "/fhir/$export").await;
    assert_eq!(narrow.by_type.keys().collect::<Vec<_>>(), ["Observation"]);
    assert_eq!(w.kick_off(&labs_only, "/fhir/$export?_type=Patient").await.issue(), "forbidden");
    let search_only = w.token(w.system_a(), Role::SystemClient, "system/*.s");
    assert_eq!(w.kick_off(&search_only, "/fhir/$export").await.status, 403);
}

#[tokio::test]
async fn patient_scopes_export_only_the_patients_own_compartment() {
    let w = Exports::new().await;
    let own = w.token(w.patient(), Role::Patient, "patient/*.rs");
    let mine = w.export(&own, "/fhir/Patient/$export").await;
    assert_eq!(ids(&mine), sorted(&[&w.p_patient, &w.p_labs[0], &w.p_labs[1], &w.p_condition]));
    let other = w.token(w.other_patient(), Role::Patient, "patient/*.rs");
    assert_eq!(ids(&w.export(&other, "/fhir/Patient/$export").await), sorted(&[&w.q_patient, &w.q_lab]));
    // Not system level, whatever the scopes say.
    let refused = w.kick_off(&own, "/fhir/$export").await;
    assert_eq!((refused.status, refused.issue()), (403, "forbidden".to_owned()));
    // patient/… scopes limit to the token's own patient even where consent would allow more:
    // a custodian practitioner holding patient scopes exports nobody's records.
    let odd = w.token(w.doc_a(), Role::Practitioner, "patient/*.rs");
    let nothing = w.export(&odd, "/fhir/Patient/$export").await;
    assert_eq!(nothing.manifest["output"], serde_json::json!([]), "{}", nothing.manifest);
    // The same practitioner with user scopes sees both patients (custodian staff); system level
    // is for system scopes only.
    let user = w.token(w.doc_a(), Role::Practitioner, "user/*.rs");
    assert_eq!(w.export(&user, "/fhir/Patient/$export").await.lines.len(), 6);
    assert_eq!(w.kick_off(&user, "/fhir/$export").await.status, 403);
    // A Group export through a patient token: still only their own records.
    let group = format!("/fhir/Group/{}/$export", w.net.organisations[0].id().to_hex());
    assert_eq!(ids(&w.export(&own, &group).await), ids(&mine));
}

#[tokio::test]
async fn a_group_is_the_patients_in_an_organisations_custody() {
    let w = Exports::new().await;
    let system = w.token(w.system_a(), Role::SystemClient, "system/*.rs");
    let org_a = w.net.organisations[0].id().to_hex();
    let group = w.export(&system, &format!("/fhir/Group/{org_a}/$export?_type=Patient")).await;
    assert_eq!(ids(&group), sorted(&[&w.p_patient, &w.q_patient]));
    assert_eq!(group.manifest["request"], format!("{BASE}/fhir/Group/{org_a}/$export?_type=Patient"));
    // Clinic B holds no records: an empty group.
    let org_b = w.net.organisations[1].id().to_hex();
    let empty = w.export(&system, &format!("/fhir/Group/{org_b}/$export")).await;
    assert_eq!(empty.manifest["output"], serde_json::json!([]));
    // Group is there for $export only: no Group resource is read or searched.
    assert_eq!(w.get(&system, &format!("/fhir/Group/{org_a}")).await.issue(), "not-supported");
    // Anything but an organisation is no Group.
    for id in [w.patient().id().to_hex(), "ab".repeat(32), "not-hex".into()] {
        let answer = w.kick_off(&system, &format!("/fhir/Group/{id}/$export")).await;
        assert_eq!((answer.status, answer.issue()), (404, "not-found".to_owned()), "{id}");
    }
}

#[tokio::test]
async fn kick_offs_are_checked_and_jobs_can_be_cancelled() {
    let w = Exports::new().await;
    let system = w.token(w.system_a(), Role::SystemClient, "system/*.rs");
    let send = |path: &str, prefer: Option<&str>, accept: Option<&str>| {
        let mut request = Request::get(path).header("authorization", format!("Bearer {system}"));
        if let Some(p) = prefer {
            request = request.header("prefer", p);
        }
        if let Some(a) = accept {
            request = request.header("accept", a);
        }
        request.body(Body::empty()).unwrap()
    };
    let missing_prefer = w.send(send("/fhir/$export", None, Some(FHIR))).await;
    assert_eq!((missing_prefer.status, missing_prefer.issue()), (400, "invalid".to_owned()));
    assert_eq!(w.send(send("/fhir/$export", Some("respond-async"), Some("text/html"))).await.status, 406);
    for bad in [
        "_type=Banana",
        "_type=Coverage",
        "_type=Observation,",
        "_outputFormat=text/csv",
        "_since=yesterday",
        "_since=2024-01-01",
        "_typeFilter=Observation%3Fcode%3D1",
    ] {
        let answer = w.kick_off(&system, &format!("/fhir/$export?{bad}")).await;
        assert_eq!(answer.status, 400, "{bad}: {}", answer.text());
        assert_eq!(answer.json()["resourceType"], "OperationOutcome");
    }
    assert_eq!(w.get_anonymous("/fhir/$export").await.status, 401);
    let post = Request::post("/fhir/$export").header("authorization", format!("Bearer {system}")).body(Body::empty());
    assert_eq!(w.send(post.unwrap()).await.status, 405);
    // Lenient handling skips unknown parameters, with a warning in the kick-off's outcome; no
    // Accept header is fine.
    let lenient =
        w.send(send("/fhir/$export?_typeFilter=x&_type=Patient", Some("respond-async, handling=lenient"), None)).await;
    assert_eq!(lenient.status, 202, "{}", lenient.text());
    let issues = lenient.json()["issue"].as_array().unwrap().clone();
    assert!(
        issues.iter().any(|i| i["severity"] == "warning" && i["diagnostics"].as_str().unwrap().contains("_typeFilter"))
    );
    let status_path = lenient.header("content-location").unwrap().strip_prefix(BASE).unwrap().to_owned();
    // Cancelled (or discarded, if it already finished): gone either way.
    assert_eq!(w.delete(&system, &status_path).await.status, 202);
    assert_eq!(w.get(&system, &status_path).await.status, 404);
    assert_eq!(w.delete(&system, &status_path).await.status, 404);
    assert_eq!(w.get(&system, "/fhir/$export-status/0123").await.status, 404);
    // The client may start again right away.
    assert_eq!(w.export(&system, "/fhir/$export?_type=Patient").await.lines.len(), 2);
}

#[tokio::test]
async fn the_capability_statement_declares_the_export_operations() {
    let w = Exports::new().await;
    let v = w.get_anonymous("/fhir/metadata").await.json();
    let rest = &v["rest"][0];
    assert_eq!(rest["operation"][0]["name"], "export");
    assert_eq!(rest["operation"][0]["definition"], "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export");
    let resources = rest["resource"].as_array().unwrap();
    let patient = resources.iter().find(|r| r["type"] == "Patient").unwrap();
    let names: Vec<&str> =
        patient["operation"].as_array().unwrap().iter().map(|o| o["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["everything", "export"]);
    assert_eq!(
        patient["operation"][1]["definition"],
        "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export"
    );
    let group = resources.iter().find(|r| r["type"] == "Group").unwrap();
    assert!(group.get("interaction").is_none(), "no Group resources are served");
    assert_eq!(group["operation"][0]["definition"], "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export");
}
