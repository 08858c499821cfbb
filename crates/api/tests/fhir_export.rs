//! FHIR Bulk Data `$export` (async pattern): kick-off, polling, manifest and download, with the
//! same scope and consent rules as search, every exported record an on-chain `Export` access
//! event, and jobs visible only to the client that started them. Synthetic data, in-process.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

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
use medledger_ledger::{AccessAction, AccessOutcome, Payload, Purpose, Scope, actions, tx::sign};
use medledger_node::{chain::Chain, devnet::Devnet};
use medledger_records::RecordService;
use medledger_types::Role;
use serde_json::Value;
use tower::ServiceExt;

const FHIR: &str = "application/fhir+json";
const BASE: &str = "http://fhir.test";

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

struct Answer {
    status: u16,
    headers: axum::http::HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The OperationOutcome's first issue code.
    fn issue(&self) -> String {
        let v = self.json();
        assert_eq!(v["resourceType"], "OperationOutcome", "{}", self.text());
        v["issue"][0]["code"].as_str().unwrap_or("").to_owned()
    }
}

/// A node of organisation A with two patients' records (P: a Patient, two lab Observations
/// and a Condition; Q: a Patient and one Observation), all in A's custody.
struct World {
    net: Devnet,
    chain: Arc<Chain>,
    service: Arc<RecordService>,
    tokens: Arc<TokenStore>,
    router: axum::Router,
    doc_a: Keypair,
    doc_b: Keypair,
    system_a: Keypair,
    patient: Keypair,
    other_patient: Keypair,
    /// Resource ids by (patient label, type).
    p_patient: String,
    p_labs: Vec<String>,
    p_condition: String,
    q_patient: String,
    q_lab: String,
    _dir: tempfile::TempDir,
}

fn lab(patient_id: &str, value: &str) -> String {
    format!(
        r#"{{"resourceType":"Observation","status":"final","category":[{{"coding":[{{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"laboratory"}}]}}],"code":{{"coding":[{{"system":"http://loinc.org","code":"2345-7"}}],"text":"Glucose"}},"subject":{{"reference":"Patient/{patient_id}"}},"valueQuantity":{{"value":{value},"unit":"mmol/L"}}}}"#
    )
}

fn patient_body(identity: &Keypair) -> String {
    // Pretty-printed on purpose: NDJSON must still carry it on one line.
    format!(
        "{{\n  \"resourceType\": \"Patient\",\n  \"identifier\": [{{\"system\": \"urn:medledger:identity\", \"value\": \"{}\"}}],\n  \"name\": [{{\"family\": \"Synthetic\"}}]\n}}",
        identity.id().to_hex()
    )
}

impl World {
    async fn new() -> Self {
        let net = Devnet::new("medledger.api-export", now_ms() - 60_000, &["Hospital A", "Clinic B"], 2, &mut |l| {
            Keypair::from_label(l)
        });
        let dir = tempfile::tempdir().unwrap();
        let (chain, _) = Chain::open(dir.path(), &net.genesis, net.validators[0].clone(), &mut |_, _| {}).unwrap();
        let chain = Arc::new(chain);
        let (org_a, org_b) = (net.organisations[0].clone(), net.organisations[1].clone());
        let doc_a = Keypair::from_label("export-dr-a");
        let doc_b = Keypair::from_label("export-dr-b");
        let system_a = Keypair::from_label("export-system-a");
        let patient = Keypair::from_label("export-patient");
        let other_patient = Keypair::from_label("export-other-patient");
        let t = now_ms();
        chain.submit_as(&org_a, Payload::register(Role::Practitioner, &doc_a, Some(org_a.id()), "Dr A"), t).unwrap();
        chain.submit_as(&org_b, Payload::register(Role::Practitioner, &doc_b, Some(org_b.id()), "Dr B"), t).unwrap();
        chain
            .submit_as(&org_a, Payload::register(Role::SystemClient, &system_a, Some(org_a.id()), "Export A"), t)
            .unwrap();
        for p in [&patient, &other_patient] {
            chain.submit_as(&net.organisations[0], Payload::register(Role::Patient, p, None, ""), t).unwrap();
        }
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
                records: Some(service.clone()),
                tokens: tokens.clone(),
                fhir_commit_wait_ms: 0,
                public_bases: vec![BASE.into()],
                ..Services::default()
            },
        );
        let mut w = Self {
            net,
            chain,
            service,
            tokens,
            router,
            doc_a,
            doc_b,
            system_a,
            patient,
            other_patient,
            p_patient: String::new(),
            p_labs: Vec::new(),
            p_condition: String::new(),
            q_patient: String::new(),
            q_lab: String::new(),
            _dir: dir,
        };
        w.commit();
        let doc = w.token(&w.doc_a, Role::Practitioner, "user/*.cruds");
        w.p_patient = w.create(&doc, "Patient", &patient_body(&w.patient)).await;
        w.q_patient = w.create(&doc, "Patient", &patient_body(&w.other_patient)).await;
        for value in ["5.40", "6.10"] {
            let id = w.create(&doc, "Observation", &lab(&w.p_patient, value)).await;
            w.p_labs.push(id);
        }
        let condition = format!(
            r#"{{"resourceType":"Condition","code":{{"text":"Synthetic condition"}},"subject":{{"reference":"Patient/{}"}}}}"#,
            w.p_patient
        );
        w.p_condition = w.create(&doc, "Condition", &condition).await;
        w.q_lab = w.create(&doc, "Observation", &lab(&w.q_patient, "7.70")).await;
        w
    }

    fn commit(&self) {
        medledger_node::devnet::commit_pending(&self.chain, self.net.validators[0].id(), now_ms()).unwrap();
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

    async fn send(&self, request: Request<Body>) -> Answer {
        let response: Response<Body> = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = axum::body::to_bytes(response.into_body(), 64 << 20).await.unwrap().to_vec();
        Answer { status, headers, body }
    }

    /// Creates (and commits) a resource; its id.
    async fn create(&self, token: &str, resource_type: &str, body: &str) -> String {
        let request = Request::post(format!("/fhir/{resource_type}"))
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", FHIR)
            .body(Body::from(body.to_owned()))
            .unwrap();
        let created = self.send(request).await;
        assert_eq!(created.status, 201, "{}", created.text());
        self.commit();
        created.json()["id"].as_str().unwrap().to_owned()
    }

    async fn get(&self, token: Option<&str>, path: &str) -> Answer {
        let mut request = Request::get(path);
        if let Some(t) = token {
            request = request.header("authorization", format!("Bearer {t}"));
        }
        self.send(request.body(Body::empty()).unwrap()).await
    }

    async fn delete(&self, token: &str, path: &str) -> Answer {
        let request =
            Request::delete(path).header("authorization", format!("Bearer {token}")).body(Body::empty()).unwrap();
        self.send(request).await
    }

    /// A kick-off as the IG asks for it.
    async fn kick_off(&self, token: &str, path: &str) -> Answer {
        let request = Request::get(path)
            .header("authorization", format!("Bearer {token}"))
            .header("accept", FHIR)
            .header("prefer", "respond-async")
            .body(Body::empty())
            .unwrap();
        self.send(request).await
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
            let polled = self.get(Some(token), status_path).await;
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
            let file = self.get(Some(token), url.strip_prefix(BASE).expect("absolute file URLs")).await;
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

    /// The ids exported, sorted.
    fn ids(exported: &Exported) -> Vec<String> {
        exported.lines.keys().cloned().collect()
    }
}

struct Exported {
    manifest: Value,
    by_type: BTreeMap<String, Vec<Value>>,
    lines: BTreeMap<String, String>,
    status_path: String,
}

fn sorted(ids: &[&String]) -> Vec<String> {
    let mut ids: Vec<String> = ids.iter().map(|s| (*s).clone()).collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn an_export_hands_out_exactly_what_the_client_may_read_and_audits_it_on_chain() {
    let w = World::new().await;
    // P lets Clinic B read everything of theirs; Q consents to nothing.
    let t = now_ms();
    let grant = Payload::ConsentGrant {
        patient: w.patient.id(),
        grantee: w.net.organisations[1].id(),
        scope: Scope::All,
        actions: actions::READ,
        purpose: Purpose::Treatment,
        valid_from_ms: t - 1_000,
        valid_until_ms: t + 86_400_000,
    };
    w.chain.submit(sign(&w.patient, w.net.genesis.chain_id(), w.patient.id(), 0, grant).bytes(), t).unwrap();
    w.commit();
    let doc_b = w.token(&w.doc_b, Role::Practitioner, "user/*.rs");
    let events_before = w.chain.patient_index().patient(&w.patient.id()).map_or(0, |p| p.access.len());

    let status_path = w.start(&doc_b, "/fhir/Patient/$export").await;
    // Nobody else sees the job, not even with a token of their own; without a token, 401.
    let doc_a = w.token(&w.doc_a, Role::Practitioner, "user/*.rs");
    assert_eq!(w.get(Some(&doc_a), &status_path).await.issue(), "not-found");
    assert_eq!(w.get(None, &status_path).await.status, 401);
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
    assert_eq!(w.get(Some(&doc_a), &file_path).await.status, 404);
    assert_eq!(w.get(None, &file_path).await.status, 401);
    // A fresh token of the same client still sees it, if its scopes cover the type.
    let fresh = w.token(&w.doc_b, Role::Practitioner, "user/*.rs");
    assert_eq!(w.get(Some(&fresh), &file_path).await.status, 200);
    let patients_only = w.token(&w.doc_b, Role::Practitioner, "user/Patient.rs");
    assert_eq!(w.get(Some(&patients_only), &file_path).await.issue(), "forbidden");
    assert_eq!(w.delete(&doc_b, &status_path).await.status, 202);
    assert_eq!(w.get(Some(&doc_b), &status_path).await.status, 404);
    assert_eq!(w.get(Some(&doc_b), &file_path).await.status, 404);

    // The same again through the helper: every line is byte for byte what a read returns, and
    // nothing of Q's is there.
    let exported = w.export(&doc_b, "/fhir/Patient/$export").await;
    let mut expected = vec![&w.p_patient, &w.p_labs[0], &w.p_labs[1], &w.p_condition];
    assert_eq!(World::ids(&exported), sorted(&expected), "{}", exported.manifest);
    for (id, line) in &exported.lines {
        let resource_type = exported.by_type.iter().find(|(_, rs)| rs.iter().any(|r| r["id"] == **id)).unwrap().0;
        let read = w.get(Some(&doc_b), &format!("/fhir/{resource_type}/{id}")).await;
        assert_eq!(read.status, 200);
        let read_line = read.text().replace('\n', " ");
        assert_eq!(*line, read_line, "exported as read (line breaks between tokens become spaces)");
    }
    assert!(exported.lines[&w.p_labs[0]].contains(r#""value":5.40"#), "values kept exactly");
    assert_eq!(w.get(Some(&doc_b), &exported.status_path).await.status, 404, "deleted by the helper");

    // Every exported record is an on-chain Export access by Clinic B's practitioner (twice:
    // two exports), and nothing of Q's was touched.
    w.service.flush_events(now_ms()).unwrap();
    w.commit();
    let index = w.chain.patient_index();
    let exports: Vec<_> = index.patient(&w.patient.id()).unwrap().access[events_before..]
        .iter()
        .map(|e| &e.event)
        .filter(|e| e.action == AccessAction::Export)
        .collect();
    assert_eq!(exports.len(), 8, "{exports:?}");
    for event in &exports {
        assert_eq!((event.accessor, event.outcome), (w.doc_b.id(), AccessOutcome::Allowed));
        let (record, _) = event.record.unwrap();
        expected.retain(|id| **id != record.to_hex());
    }
    assert!(expected.is_empty(), "every exported record is audited: {expected:?} missing");
    let q_events = index
        .patient(&w.other_patient.id())
        .map_or(0, |p| p.access.iter().filter(|e| e.event.accessor == w.doc_b.id()).count());
    assert_eq!(q_events, 0, "records left out are not touched (nor audited as refused)");
}

#[tokio::test]
async fn types_since_and_deletions_filter_a_system_export() {
    let w = World::new().await;
    let system = w.token(&w.system_a, Role::SystemClient, "system/*.rs");
    let all = w.export(&system, "/fhir/$export").await;
    let mut everything = vec![&w.p_patient, &w.q_patient, &w.p_labs[0], &w.p_labs[1], &w.q_lab, &w.p_condition];
    assert_eq!(World::ids(&all), sorted(&everything));
    assert_eq!(all.manifest["request"], format!("{BASE}/fhir/$export"));
    // Each line carries the server's id and meta.
    let patient = &all.by_type["Patient"][0];
    assert_eq!(patient["meta"]["versionId"], "1");
    assert!(patient["meta"]["lastUpdated"].as_str().unwrap().ends_with('Z'));
    assert!(!all.lines[&w.p_patient].contains('\n'));

    // _type: only those types.
    let labs = w.export(&system, "/fhir/$export?_type=Observation").await;
    assert_eq!(labs.by_type.keys().collect::<Vec<_>>(), ["Observation"]);
    assert_eq!(World::ids(&labs), sorted(&[&w.p_labs[0], &w.p_labs[1], &w.q_lab]));
    let two =
        w.export(&system, "/fhir/$export?_type=Condition,Patient&_outputFormat=application%2Ffhir%2Bndjson").await;
    assert_eq!(World::ids(&two), sorted(&[&w.p_patient, &w.q_patient, &w.p_condition]));
    let types: Vec<&str> =
        two.manifest["output"].as_array().unwrap().iter().map(|o| o["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["Condition", "Patient"], "in the order _type names them");

    // A deleted record is left out; _since keeps what was committed at or after it.
    let doc = w.token(&w.doc_a, Role::Practitioner, "user/*.cruds");
    let request = Request::delete(format!("/fhir/Observation/{}", w.p_labs[0]))
        .header("authorization", format!("Bearer {doc}"))
        .body(Body::empty())
        .unwrap();
    assert_eq!(w.send(request).await.status, 204);
    w.commit();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let since = medledger_fhir::instant::instant_from_ms(now_ms());
    tokio::time::sleep(Duration::from_millis(20)).await;
    let fresh = w.create(&doc, "Observation", &lab(&w.q_patient, "8.80")).await;
    let after = w.export(&system, "/fhir/$export").await;
    everything.retain(|id| **id != w.p_labs[0]);
    everything.push(&fresh);
    assert_eq!(World::ids(&after), sorted(&everything));
    let recent = w.export(&system, &format!("/fhir/$export?_since={since}")).await;
    assert_eq!(World::ids(&recent), vec![fresh.clone()]);
    let offset = since.replace('Z', "+00:00").replace('+', "%2B");
    let recent = w.export(&system, &format!("/fhir/$export?_since={offset}&_type=Observation")).await;
    assert_eq!(World::ids(&recent), vec![fresh.clone()]);
    let future = medledger_fhir::instant::instant_from_ms(now_ms() + 86_400_000);
    let none = w.export(&system, &format!("/fhir/$export?_since={future}")).await;
    assert_eq!(none.manifest["output"], serde_json::json!([]));

    // Per-type system scopes narrow a system export; asking for more is refused.
    let labs_only = w.token(&w.system_a, Role::SystemClient, "system/Observation.r");
    let narrow = w.export(&labs_only, "/fhir/$export").await;
    assert_eq!(narrow.by_type.keys().collect::<Vec<_>>(), ["Observation"]);
    assert_eq!(w.kick_off(&labs_only, "/fhir/$export?_type=Patient").await.issue(), "forbidden");
    let search_only = w.token(&w.system_a, Role::SystemClient, "system/*.s");
    assert_eq!(w.kick_off(&search_only, "/fhir/$export").await.status, 403);
}

#[tokio::test]
async fn patient_scopes_export_only_the_patients_own_compartment() {
    let w = World::new().await;
    let own = w.token(&w.patient, Role::Patient, "patient/*.rs");
    let mine = w.export(&own, "/fhir/Patient/$export").await;
    assert_eq!(World::ids(&mine), sorted(&[&w.p_patient, &w.p_labs[0], &w.p_labs[1], &w.p_condition]));
    let other = w.token(&w.other_patient, Role::Patient, "patient/*.rs");
    assert_eq!(World::ids(&w.export(&other, "/fhir/Patient/$export").await), sorted(&[&w.q_patient, &w.q_lab]));
    // Not system level, whatever the scopes say.
    let refused = w.kick_off(&own, "/fhir/$export").await;
    assert_eq!((refused.status, refused.issue()), (403, "forbidden".to_owned()));
    // patient/… scopes limit to the token's own patient even where consent would allow more:
    // a custodian practitioner holding patient scopes exports nobody's records.
    let odd = w.token(&w.doc_a, Role::Practitioner, "patient/*.rs");
    let nothing = w.export(&odd, "/fhir/Patient/$export").await;
    assert_eq!(nothing.manifest["output"], serde_json::json!([]), "{}", nothing.manifest);
    // The same practitioner with user scopes sees both patients (custodian staff); system level
    // is for system scopes only.
    let user = w.token(&w.doc_a, Role::Practitioner, "user/*.rs");
    assert_eq!(w.export(&user, "/fhir/Patient/$export").await.lines.len(), 6);
    assert_eq!(w.kick_off(&user, "/fhir/$export").await.status, 403);
    // A Group export through a patient token: still only their own records.
    let group = format!("/fhir/Group/{}/$export", w.net.organisations[0].id().to_hex());
    assert_eq!(World::ids(&w.export(&own, &group).await), World::ids(&mine));
}

#[tokio::test]
async fn a_group_is_the_patients_in_an_organisations_custody() {
    let w = World::new().await;
    let system = w.token(&w.system_a, Role::SystemClient, "system/*.rs");
    let org_a = w.net.organisations[0].id().to_hex();
    let group = w.export(&system, &format!("/fhir/Group/{org_a}/$export?_type=Patient")).await;
    assert_eq!(World::ids(&group), sorted(&[&w.p_patient, &w.q_patient]));
    assert_eq!(group.manifest["request"], format!("{BASE}/fhir/Group/{org_a}/$export?_type=Patient"));
    // Clinic B holds no records: an empty group.
    let org_b = w.net.organisations[1].id().to_hex();
    let empty = w.export(&system, &format!("/fhir/Group/{org_b}/$export")).await;
    assert_eq!(empty.manifest["output"], serde_json::json!([]));
    // Group is there for $export only: no Group resource is read or searched.
    assert_eq!(w.get(Some(&system), &format!("/fhir/Group/{org_a}")).await.issue(), "not-supported");
    // Anything but an organisation is no Group.
    for id in [w.patient.id().to_hex(), "ab".repeat(32), "not-hex".into()] {
        let answer = w.kick_off(&system, &format!("/fhir/Group/{id}/$export")).await;
        assert_eq!((answer.status, answer.issue()), (404, "not-found".to_owned()), "{id}");
    }
}

#[tokio::test]
async fn kick_offs_are_checked_and_jobs_can_be_cancelled() {
    let w = World::new().await;
    let system = w.token(&w.system_a, Role::SystemClient, "system/*.rs");
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
    assert_eq!(w.get(None, "/fhir/$export").await.status, 401);
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
    assert_eq!(w.get(Some(&system), &status_path).await.status, 404);
    assert_eq!(w.delete(&system, &status_path).await.status, 404);
    assert_eq!(w.get(Some(&system), "/fhir/$export-status/0123").await.status, 404);
    // The client may start again right away.
    assert_eq!(w.export(&system, "/fhir/$export?_type=Patient").await.lines.len(), 2);
}

#[tokio::test]
async fn the_capability_statement_declares_the_export_operations() {
    let w = World::new().await;
    let v = w.get(None, "/fhir/metadata").await.json();
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
