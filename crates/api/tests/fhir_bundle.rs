//! Transaction and batch Bundles (`POST /fhir`) and the consortium directory (Organization,
//! Practitioner, PractitionerRole, Location) over FHIR.

use axum::{body::Body, http::Request};
use medledger_types::Role;
use serde_json::{Value, json};

mod common;

use common::{
    fhir::{FHIR, Lab},
    world::World,
};

/// Two organisations' practitioners, a node of the first (Hospital A) that may register new
/// patients, with blocks committing in the background, so writes answer once committed.
fn world() -> World {
    World::hospital_and_clinic("medledger.api-bundle")
        .practitioner("bundle-dr-a", 0, "Dr A")
        .practitioner("bundle-dr-b", 1, "Dr B")
        .records()
        .patient_key_dir()
        .commit_wait_ms(10_000)
        .public_base("http://fhir.test")
        .committing()
        .build()
}

fn entry(full_url: &str, resource: Value) -> Value {
    let resource_type = resource["resourceType"].as_str().unwrap().to_owned();
    json!({"fullUrl": full_url, "resource": resource, "request": {"method": "POST", "url": resource_type}})
}

fn transaction(entries: Vec<Value>) -> String {
    json!({"resourceType": "Bundle", "type": "transaction", "entry": entries}).to_string()
}

fn organization() -> Value {
    json!({"resourceType": "Organization", "identifier": [{"system": "urn:test:org", "value": "org-1"}], "name": "Synthetic General"})
}

fn practitioner(npi: &str) -> Value {
    json!({"resourceType": "Practitioner", "identifier": [{"system": "http://hl7.org/fhir/sid/us-npi", "value": npi}], "name": [{"family": "Synthetic"}]})
}

fn patient() -> Value {
    json!({"resourceType": "Patient", "name": [{"family": "Testperson", "given": ["Synthia"]}], "gender": "female", "birthDate": "1980-02-03"})
}

fn encounter(patient: &str, practitioner: &str, organization: &str) -> Value {
    json!({
        "resourceType": "Encounter", "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": patient},
        "participant": [{"individual": {"reference": practitioner}}],
        "serviceProvider": {"reference": organization}
    })
}

/// A lab Observation whose value keeps its decimal lexeme (`1.50`) only if the exact bytes
/// are stored.
fn lab_text(subject: &str, encounter: &str) -> String {
    Lab::about(subject).encounter(encounter).untitled().value("1.50").json()
}

fn lab(subject: &str, encounter: &str) -> Value {
    serde_json::from_str(&lab_text(subject, encounter)).unwrap()
}

#[tokio::test]
async fn a_transaction_creates_a_new_patient_with_linked_resources_in_one_ledger_transaction() {
    let w = world();
    let doc = w.token(w.doc_a(), Role::Practitioner, "user/*.cruds");
    let log_before = w.log_size();
    // Entries in any order: references point forward and backward.
    let body = transaction(vec![
        json!({"fullUrl": "urn:uuid:5b1c5a58-0000-4000-8000-000000000005", "resource": "RAW_LAB", "request": {"method": "POST", "url": "Observation"}}),
        entry("urn:uuid:5b1c5a58-0000-4000-8000-000000000001", organization()),
        entry("urn:uuid:5b1c5a58-0000-4000-8000-000000000002", practitioner("9999900001")),
        entry("urn:uuid:5b1c5a58-0000-4000-8000-000000000003", patient()),
        entry(
            "urn:uuid:5b1c5a58-0000-4000-8000-000000000004",
            encounter(
                "urn:uuid:5b1c5a58-0000-4000-8000-000000000003",
                "urn:uuid:5b1c5a58-0000-4000-8000-000000000002",
                "urn:uuid:5b1c5a58-0000-4000-8000-000000000001",
            ),
        ),
    ]);
    // The lab goes in as text, so its bytes (the decimal `1.50`) are exactly as written.
    let raw_lab =
        lab_text("urn:uuid:5b1c5a58-0000-4000-8000-000000000003", "urn:uuid:5b1c5a58-0000-4000-8000-000000000004");
    let body = body.replace("\"RAW_LAB\"", &raw_lab);
    let answer = w.post(&doc, "/fhir", &body).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let v = answer.json();
    assert_eq!(v["type"], "transaction-response");
    let locations: Vec<String> = v["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            assert_eq!(e["response"]["status"], "201 Created", "{e}");
            assert_eq!(e["response"]["etag"], "W/\"1\"");
            e["response"]["location"].as_str().unwrap().to_owned()
        })
        .collect();
    assert!(locations[0].starts_with("Observation/") && locations[3].starts_with("Patient/"), "{locations:?}");
    // One ledger leaf for the whole Bundle (a key share per category rides inside it).
    assert_eq!(w.log_size(), log_before + 1);
    assert_eq!(w.held_patient_keys(), 1, "the new patient's keys are held for hand-over");
    let path = |location: &str| format!("/fhir/{}", location.split("/_history").next().unwrap());
    let id_of = |location: &str| location.split('/').nth(1).unwrap().to_owned();
    let (obs, org, prac, pat, enc) =
        (&locations[0], id_of(&locations[1]), id_of(&locations[2]), id_of(&locations[3]), id_of(&locations[4]));
    let read = w.get(&doc, &path(obs)).await;
    assert_eq!(read.status, 200, "{}", read.text());
    // The references now name the server's ids; every other byte is as sent.
    let text = read.text();
    assert!(text.contains(&format!(r#""subject":{{"reference":"Patient/{pat}"}}"#)), "{text}");
    assert!(text.contains(&format!(r#""encounter":{{"reference":"Encounter/{enc}"}}"#)), "{text}");
    assert!(text.contains(r#""value":1.50"#), "{text}");
    let encounter = w.get(&doc, &format!("/fhir/Encounter/{enc}")).await.json();
    assert_eq!(encounter["participant"][0]["individual"]["reference"], format!("Practitioner/{prac}"));
    assert_eq!(encounter["serviceProvider"]["reference"], format!("Organization/{org}"));
    // Directory entries read in clear, and search finds everything.
    assert_eq!(w.get(&doc, &format!("/fhir/Organization/{org}")).await.json()["name"], "Synthetic General");
    let found = w.get(&doc, &format!("/fhir/Observation?patient={pat}")).await.json();
    assert_eq!(found["total"], 1, "{found}");
    let found = w.get(&doc, "/fhir/Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|9999900001").await.json();
    assert_eq!(found["total"], 1, "{found}");
    assert_eq!(found["entry"][0]["resource"]["id"], prac.as_str());
}

#[tokio::test]
async fn a_broken_or_invalid_transaction_writes_nothing_and_names_the_entry() {
    let w = world();
    let doc = w.token(w.doc_a(), Role::Practitioner, "user/*.cruds");
    let log_before = w.log_size();
    let cases = [
        // A reference to an entry that is not there.
        (
            transaction(vec![
                entry("urn:uuid:00000000-0000-4000-8000-000000000001", patient()),
                entry(
                    "urn:uuid:00000000-0000-4000-8000-000000000002",
                    lab(
                        "urn:uuid:00000000-0000-4000-8000-00000000dead",
                        "urn:uuid:00000000-0000-4000-8000-000000000001",
                    ),
                ),
            ]),
            400,
            "Bundle.entry[1]",
        ),
        // A structurally invalid resource (an Observation without status).
        (
            transaction(vec![
                entry("urn:uuid:00000000-0000-4000-8000-000000000001", patient()),
                entry(
                    "urn:uuid:00000000-0000-4000-8000-000000000002",
                    json!({"resourceType": "Observation", "code": {"text": "x"}}),
                ),
            ]),
            400,
            "Bundle.entry[1]",
        ),
        // A relative reference to nothing on the server.
        (
            transaction(vec![entry(
                "urn:uuid:00000000-0000-4000-8000-000000000002",
                lab(&format!("Patient/{}", "ab".repeat(32)), "Encounter/nope"),
            )]),
            400,
            "Bundle.entry[0]",
        ),
        // A conditional reference matching nothing.
        (
            transaction(vec![
                entry("urn:uuid:00000000-0000-4000-8000-000000000001", patient()),
                entry(
                    "urn:uuid:00000000-0000-4000-8000-000000000002",
                    encounter(
                        "urn:uuid:00000000-0000-4000-8000-000000000001",
                        "Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|404",
                        "urn:uuid:00000000-0000-4000-8000-000000000001",
                    ),
                ),
            ]),
            412,
            "Bundle.entry[1]",
        ),
        // A conditional interaction not supported: refused, not ignored.
        (
            transaction(vec![
                json!({"resource": patient(), "request": {"method": "POST", "url": "Patient", "ifNoneMatch": "W/\"1\""}}),
            ]),
            400,
            "Bundle.entry[0]",
        ),
    ];
    for (body, status, expression) in cases {
        let answer = w.post(&doc, "/fhir", &body).await;
        assert_eq!(answer.status, status, "{}", answer.text());
        let outcome = answer.json();
        assert_eq!(outcome["resourceType"], "OperationOutcome", "{outcome}");
        assert!(outcome["issue"].to_string().contains(expression), "{outcome}");
    }
    // Not a transaction or batch.
    let searchset = json!({"resourceType": "Bundle", "type": "searchset"}).to_string();
    assert_eq!(w.post(&doc, "/fhir", &searchset).await.status, 400);
    // Without a token, or with a token not allowed to create: refused before anything.
    let body = transaction(vec![entry("urn:uuid:00000000-0000-4000-8000-000000000001", patient())]);
    let anonymous = Request::post("/fhir").header("content-type", FHIR).body(Body::from(body.clone())).unwrap();
    assert_eq!(w.send(anonymous).await.status, 401);
    let reader = w.token(w.doc_a(), Role::Practitioner, "user/*.rs");
    assert_eq!(w.post(&reader, "/fhir", &body).await.status, 403);
    // Staff of another organisation do not write at this node.
    let other = w.token(w.doc_b(), Role::Practitioner, "user/*.cruds");
    assert_eq!(w.post(&other, "/fhir", &body).await.status, 403);
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert_eq!(w.log_size(), log_before, "nothing was written");
    assert_eq!(w.held_patient_keys(), 0, "no patient keys were kept");
}

#[tokio::test]
async fn conditional_references_resolve_to_exactly_one_resource_of_the_bundle_or_the_server() {
    let w = world();
    let doc = w.token(w.doc_a(), Role::Practitioner, "user/*.cruds");
    let created = w.post(&doc, "/fhir/Practitioner", &practitioner("9999900007").to_string()).await;
    assert_eq!(created.status, 201, "{}", created.text());
    let on_server = created.json()["id"].as_str().unwrap().to_owned();
    let by_npi = |npi: &str| format!("Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|{npi}");
    // One on the server, one created in the same Bundle.
    let org = "urn:uuid:00000000-0000-4000-8000-000000000005";
    let pat = "urn:uuid:00000000-0000-4000-8000-000000000001";
    let body = transaction(vec![
        entry(pat, patient()),
        entry("urn:uuid:00000000-0000-4000-8000-000000000002", practitioner("9999900008")),
        entry("urn:uuid:00000000-0000-4000-8000-000000000003", encounter(pat, &by_npi("9999900007"), org)),
        entry("urn:uuid:00000000-0000-4000-8000-000000000004", encounter(pat, &by_npi("9999900008"), org)),
        entry(org, organization()),
    ]);
    // A reference of the wrong type, found once rewritten (a Practitioner as serviceProvider).
    let prac = "urn:uuid:00000000-0000-4000-8000-000000000002";
    let wrong_type = transaction(vec![
        entry(pat, patient()),
        entry(prac, practitioner("9999900009")),
        entry("urn:uuid:00000000-0000-4000-8000-000000000003", encounter(pat, prac, prac)),
    ]);
    let refused = w.post(&doc, "/fhir", &wrong_type).await;
    assert_eq!(refused.status, 400, "{}", refused.text());
    assert!(refused.text().contains("Bundle.entry[2].resource.serviceProvider"), "{}", refused.text());
    let answer = w.post(&doc, "/fhir", &body).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let locations: Vec<String> = answer.json()["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["response"]["location"].as_str().unwrap().split("/_history").next().unwrap().to_owned())
        .collect();
    let first = w.get(&doc, &format!("/fhir/{}", locations[2])).await.json();
    assert_eq!(first["participant"][0]["individual"]["reference"], format!("Practitioner/{on_server}"));
    let second = w.get(&doc, &format!("/fhir/{}", locations[3])).await.json();
    assert_eq!(second["participant"][0]["individual"]["reference"], locations[1]);
    // Two practitioners with the same NPI: ambiguous, refused.
    assert_eq!(w.post(&doc, "/fhir/Practitioner", &practitioner("9999900007").to_string()).await.status, 201);
    let patient_id = locations[0].clone();
    let ambiguous = transaction(vec![
        entry("urn:uuid:00000000-0000-4000-8000-000000000001", organization()),
        entry(
            "urn:uuid:00000000-0000-4000-8000-000000000003",
            encounter(&patient_id, &by_npi("9999900007"), "urn:uuid:00000000-0000-4000-8000-000000000001"),
        ),
    ]);
    let refused = w.post(&doc, "/fhir", &ambiguous).await;
    assert_eq!(refused.status, 412, "{}", refused.text());
    assert!(refused.text().contains("more than one"), "{}", refused.text());
}

#[tokio::test]
async fn a_transaction_updates_and_deletes_and_a_batch_runs_entries_independently() {
    let w = world();
    let doc = w.token(w.doc_a(), Role::Practitioner, "user/*.cruds");
    let body = transaction(vec![
        entry("urn:uuid:00000000-0000-4000-8000-000000000001", patient()),
        entry(
            "urn:uuid:00000000-0000-4000-8000-000000000002",
            lab("urn:uuid:00000000-0000-4000-8000-000000000001", "urn:uuid:00000000-0000-4000-8000-000000000003"),
        ),
        entry(
            "urn:uuid:00000000-0000-4000-8000-000000000003",
            encounter(
                "urn:uuid:00000000-0000-4000-8000-000000000001",
                "urn:uuid:00000000-0000-4000-8000-000000000004",
                "urn:uuid:00000000-0000-4000-8000-000000000005",
            ),
        ),
        entry("urn:uuid:00000000-0000-4000-8000-000000000004", practitioner("9999900011")),
        entry("urn:uuid:00000000-0000-4000-8000-000000000005", organization()),
    ]);
    let created = w.post(&doc, "/fhir", &body).await;
    assert_eq!(created.status, 200, "{}", created.text());
    let ids: Vec<String> = created.json()["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["response"]["location"].as_str().unwrap().split('/').nth(1).unwrap().to_owned())
        .collect();
    let (patient, obs, enc, org) = (&ids[0], &ids[1], &ids[2], &ids[4]);
    // Update the Observation and the Organization, delete the Encounter: one transaction.
    let mut updated = lab(&format!("Patient/{patient}"), &format!("Encounter/{enc}"));
    updated["id"] = json!(obs);
    updated["status"] = json!("amended");
    let mut renamed = organization();
    renamed["id"] = json!(org);
    renamed["name"] = json!("Synthetic General Hospital");
    let body = transaction(vec![
        json!({"resource": updated, "request": {"method": "PUT", "url": format!("Observation/{obs}"), "ifMatch": "W/\"1\""}}),
        json!({"resource": renamed, "request": {"method": "PUT", "url": format!("Organization/{org}")}}),
        json!({"request": {"method": "DELETE", "url": format!("Encounter/{enc}")}}),
    ]);
    let changed = w.post(&doc, "/fhir", &body).await;
    assert_eq!(changed.status, 200, "{}", changed.text());
    let statuses: Vec<Value> =
        changed.json()["entry"].as_array().unwrap().iter().map(|e| e["response"]["status"].clone()).collect();
    assert_eq!(statuses, [json!("200 OK"), json!("200 OK"), json!("204 No Content")]);
    assert_eq!(w.get(&doc, &format!("/fhir/Observation/{obs}")).await.json()["status"], "amended");
    assert_eq!(w.get(&doc, &format!("/fhir/Organization/{org}")).await.json()["meta"]["versionId"], "2");
    assert_eq!(w.get(&doc, &format!("/fhir/Encounter/{enc}")).await.status, 410);
    // A stale ifMatch fails the whole transaction.
    let mut stale = lab(&format!("Patient/{patient}"), &format!("Encounter/{enc}"));
    stale["id"] = json!(obs);
    let body = transaction(vec![
        json!({"resource": stale, "request": {"method": "PUT", "url": format!("Observation/{obs}"), "ifMatch": "W/\"1\""}}),
        entry("urn:uuid:00000000-0000-4000-8000-000000000009", practitioner("9999900012")),
    ]);
    assert_eq!(w.post(&doc, "/fhir", &body).await.status, 412);
    let found = w.get(&doc, "/fhir/Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|9999900012").await.json();
    assert_eq!(found["total"], 0, "{found}");
    // A batch: the good entry is written, the bad one answered with its own outcome.
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        entry("urn:uuid:00000000-0000-4000-8000-000000000021", lab(&format!("Patient/{patient}"), &format!("Encounter/{enc}"))),
        entry("urn:uuid:00000000-0000-4000-8000-000000000022", lab("urn:uuid:00000000-0000-4000-8000-000000000021", "Encounter/x")),
    ]})
    .to_string();
    let answer = w.post(&doc, "/fhir", &batch).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let v = answer.json();
    assert_eq!(v["type"], "batch-response");
    assert_eq!(v["entry"][0]["response"]["status"], "201 Created", "{v}");
    assert_eq!(v["entry"][1]["response"]["status"], "400", "{v}");
    assert_eq!(v["entry"][1]["response"]["outcome"]["resourceType"], "OperationOutcome");
}

#[tokio::test]
async fn directory_entries_are_read_by_scope_and_written_only_by_their_organisation() {
    let w = world();
    let doc = w.token(w.doc_a(), Role::Practitioner, "user/*.cruds");
    let created = w.post(&doc, "/fhir/Organization", &organization().to_string()).await;
    assert_eq!(created.status, 201, "{}", created.text());
    let id = created.json()["id"].as_str().unwrap().to_owned();
    // Anyone with the type's read scope reads it, another organisation's staff too.
    let reader = w.token(w.doc_b(), Role::Practitioner, "user/Organization.rs");
    let read = w.get(&reader, &format!("/fhir/Organization/{id}")).await;
    assert_eq!((read.status, read.json()["name"].clone()), (200, json!("Synthetic General")));
    let no_scope = w.token(w.doc_b(), Role::Practitioner, "user/Observation.rs");
    assert_eq!(w.get(&no_scope, &format!("/fhir/Organization/{id}")).await.status, 403);
    // Updates with If-Match; a stale one is refused.
    let mut renamed = organization();
    renamed["id"] = json!(id);
    renamed["name"] = json!("Renamed");
    let path = format!("/fhir/Organization/{id}");
    let updated = w.put(&doc, &path, Some("W/\"1\""), &renamed.to_string()).await;
    assert_eq!(updated.status, 200, "{}", updated.text());
    assert_eq!(w.put(&doc, &path, Some("W/\"1\""), &renamed.to_string()).await.status, 412);
    // Clinic B's staff cannot write Hospital A's node, nor create here.
    let other = w.token(w.doc_b(), Role::Practitioner, "user/*.cruds");
    assert_eq!(w.put(&other, &path, None, &renamed.to_string()).await.status, 403);
    // History lists both versions; a delete answers 410 after and keeps the history.
    let history = w.get(&reader, &format!("{path}/_history")).await.json();
    assert_eq!(history["total"], 2, "{history}");
    assert_eq!(w.delete(&doc, &path).await.status, 204);
    assert_eq!(w.get(&reader, &path).await.status, 410);
    assert_eq!(w.get(&reader, &format!("{path}/_history/1")).await.json()["name"], "Synthetic General");
    // Search by name, and deleted entries are not found.
    let created =
        w.post(&doc, "/fhir/Location", &json!({"resourceType": "Location", "name": "Ward 7"}).to_string()).await;
    assert_eq!(created.status, 201, "{}", created.text());
    let found = w.get(&reader, "/fhir/Organization?name=Renamed").await.json();
    assert_eq!(found["total"], 0, "{found}");
    // An oversize directory resource is refused: directory entries are stored on-chain.
    let mut huge = organization();
    huge["alias"] = json!(vec!["x".repeat(1000); 40]);
    assert_eq!(w.post(&doc, "/fhir/Organization", &huge.to_string()).await.status, 413);
    // Type history: every version of every Organization, newest first (the delete too).
    let history = w.get(&reader, "/fhir/Organization/_history").await.json();
    assert_eq!(history["total"], 3, "{history}");
    assert_eq!(history["entry"][0]["request"]["method"], "DELETE", "{history}");
    assert_eq!(history["entry"][2]["resource"]["name"], "Synthetic General", "{history}");
}

/// The Synthea transaction Bundles (testdata/fhir/synthea-r4): patients with their
/// encounters, observations, claims and more, and the hospital and practitioner directories.
fn synthea_bundles() -> Vec<(String, String)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/fhir/synthea-r4");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read_to_string(&p).unwrap()))
        .collect()
}

#[tokio::test]
async fn every_synthea_bundle_imports_as_one_transaction() {
    let w = world();
    let doc = w.token(w.doc_a(), Role::Practitioner, "user/*.cruds");
    let bundles = synthea_bundles();
    assert_eq!(bundles.len(), 9);
    let mut created = 0;
    for (name, body) in &bundles {
        let log_before = w.log_size();
        let answer = w.post(&doc, "/fhir", body).await;
        assert_eq!(answer.status, 200, "{name}: {}", answer.text());
        let sent: Value = serde_json::from_str(body).unwrap();
        let entries = answer.json()["entry"].as_array().unwrap().clone();
        assert_eq!(entries.len(), sent["entry"].as_array().unwrap().len(), "{name}");
        for (entry, request) in entries.iter().zip(sent["entry"].as_array().unwrap()) {
            assert_eq!(entry["response"]["status"], "201 Created", "{name}: {entry}");
            let location = entry["response"]["location"].as_str().unwrap();
            assert!(location.starts_with(request["request"]["url"].as_str().unwrap()), "{name}: {location}");
        }
        created += entries.len();
        assert_eq!(w.log_size(), log_before + 1, "{name}: one ledger transaction per Bundle");
        if name.starts_with("Alberto") {
            // A Claim's patient and provider references now name the server's resources.
            let patient = entries[0]["response"]["location"].as_str().unwrap().split('/').nth(1).unwrap().to_owned();
            let claims = w.get(&doc, &format!("/fhir/Claim?patient={patient}&_count=100")).await.json();
            assert_eq!(claims["total"], 8, "{claims}");
            let claim = &claims["entry"][0]["resource"];
            assert_eq!(claim["patient"]["reference"], format!("Patient/{patient}"));
            let provider = claim["provider"]["reference"].as_str().unwrap();
            assert_eq!(w.get(&doc, &format!("/fhir/{provider}")).await.status, 200, "{provider}");
            let eobs = w.get(&doc, &format!("/fhir/ExplanationOfBenefit?patient={patient}")).await.json();
            assert_eq!(eobs["total"], 6, "{eobs}");
            let observations =
                w.get(&doc, &format!("/fhir/Observation?subject=Patient/{patient}&_count=1")).await.json();
            assert_eq!(observations["total"], 35, "{observations}");
        }
    }
    assert_eq!(created, 695);
    assert_eq!(w.held_patient_keys(), 7, "one held key per new patient");
}

#[tokio::test]
async fn a_bundle_cannot_move_a_record_or_search_beyond_its_scopes_or_publish_patient_data() {
    let w = world();
    let doc = w.token(w.doc_a(), Role::Practitioner, "user/*.cruds");
    let (p1, p2) = ("urn:uuid:00000000-0000-4000-8000-000000000001", "urn:uuid:00000000-0000-4000-8000-000000000002");
    let body = transaction(vec![
        entry(p1, patient()),
        entry(p2, patient()),
        entry(
            "urn:uuid:00000000-0000-4000-8000-000000000003",
            encounter(
                p1,
                "urn:uuid:00000000-0000-4000-8000-000000000004",
                "urn:uuid:00000000-0000-4000-8000-000000000005",
            ),
        ),
        entry("urn:uuid:00000000-0000-4000-8000-000000000004", practitioner("9999900031")),
        entry("urn:uuid:00000000-0000-4000-8000-000000000005", organization()),
    ]);
    let created = w.post(&doc, "/fhir", &body).await;
    assert_eq!(created.status, 200, "{}", created.text());
    let ids: Vec<String> = created.json()["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["response"]["location"].as_str().unwrap().split("/_history").next().unwrap().to_owned())
        .collect();
    // The encounter's next version names the other patient: refused, as a plain PUT would be.
    let mut moved = encounter(&ids[1], &ids[3], &ids[4]);
    let encounter_id = ids[2].split('/').nth(1).unwrap().to_owned();
    moved["id"] = json!(encounter_id);
    let body = transaction(vec![json!({"resource": moved, "request": {"method": "PUT", "url": ids[2]}})]);
    let refused = w.post(&doc, "/fhir", &body).await;
    assert_eq!(refused.status, 422, "{}", refused.text());
    // Another organisation's practitioner: refused, and the attempt is on the record's trail.
    let outsider = w.token(w.doc_b(), Role::Practitioner, "user/*.cruds");
    let before = w.service().pending_events();
    assert_eq!(w.post(&outsider, "/fhir", &body).await.status, 403);
    assert_eq!(w.service().pending_events(), before + 1, "the refused write is audited");
    // A conditional reference is a search: a token that may create Encounters but not search
    // Practitioners cannot resolve one.
    let writer = w.token(w.doc_a(), Role::Practitioner, "user/Encounter.c user/Patient.c");
    let conditional = encounter(&ids[0], "Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|9999900031", &ids[4]);
    let body = transaction(vec![entry("urn:uuid:00000000-0000-4000-8000-000000000009", conditional.clone())]);
    let refused = w.post(&writer, "/fhir", &body).await;
    assert_eq!(refused.status, 412, "{}", refused.text());
    assert!(refused.text().contains("scopes"), "{}", refused.text());
    // With the scope, it resolves.
    assert_eq!(w.post(&doc, "/fhir", &body).await.status, 200);
    // A patient's home is patient data: never in the directory.
    let home = json!({"resourceType": "Location", "name": "Home", "type": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-RoleCode", "code": "PTRES"}]}]});
    assert_eq!(w.post(&doc, "/fhir/Location", &home.to_string()).await.status, 422);
    let body = transaction(vec![entry("urn:uuid:00000000-0000-4000-8000-00000000000a", home)]);
    assert_eq!(w.post(&doc, "/fhir", &body).await.status, 422);
}

#[tokio::test]
async fn a_conditional_create_finds_what_is_already_there_so_imports_repeat_safely() {
    let w = world();
    let doc = w.token(w.doc_a(), Role::Practitioner, "user/*.cruds");
    let mut person = patient();
    person["identifier"] = json!([{"system": "urn:test:mrn", "value": "MRN-1"}]);
    let conditional = |resource: Value, url: &str, query: &str| {
        let resource_type = resource["resourceType"].as_str().unwrap().to_owned();
        json!({"fullUrl": url, "resource": resource, "request": {"method": "POST", "url": resource_type, "ifNoneExist": query}})
    };
    let (pat, prac) =
        ("urn:uuid:00000000-0000-4000-8000-000000000001", "urn:uuid:00000000-0000-4000-8000-000000000002");
    let body = transaction(vec![
        conditional(person.clone(), pat, "identifier=urn:test:mrn|MRN-1"),
        conditional(practitioner("9999900041"), prac, "identifier=http://hl7.org/fhir/sid/us-npi|9999900041"),
        entry(
            "urn:uuid:00000000-0000-4000-8000-000000000003",
            lab(pat, "urn:uuid:00000000-0000-4000-8000-000000000004"),
        ),
        entry(
            "urn:uuid:00000000-0000-4000-8000-000000000004",
            encounter(pat, prac, "urn:uuid:00000000-0000-4000-8000-000000000005"),
        ),
        entry("urn:uuid:00000000-0000-4000-8000-000000000005", organization()),
    ]);
    let first = w.post(&doc, "/fhir", &body).await;
    assert_eq!(first.status, 200, "{}", first.text());
    let first = first.json();
    let statuses = |v: &Value| -> Vec<String> {
        v["entry"].as_array().unwrap().iter().map(|e| e["response"]["status"].as_str().unwrap().to_owned()).collect()
    };
    assert_eq!(statuses(&first), vec!["201 Created"; 5]);
    let keys_after_first = w.held_patient_keys();
    // The same Bundle again: the patient and the practitioner are found, not created again;
    // the new lab and encounter refer to them.
    let again = w.post(&doc, "/fhir", &body).await;
    assert_eq!(again.status, 200, "{}", again.text());
    let again = again.json();
    assert_eq!(statuses(&again)[..2], ["200 OK", "200 OK"]);
    assert_eq!(again["entry"][0]["response"]["location"], first["entry"][0]["response"]["location"]);
    assert_eq!(again["entry"][1]["response"]["location"], first["entry"][1]["response"]["location"]);
    assert_eq!(w.held_patient_keys(), keys_after_first, "no second identity for the same patient");
    let patient_id = first["entry"][0]["response"]["location"].as_str().unwrap().split('/').nth(1).unwrap().to_owned();
    let labs = w.get(&doc, &format!("/fhir/Observation?patient={patient_id}")).await.json();
    assert_eq!(labs["total"], 2, "{labs}");
    let found = w.get(&doc, "/fhir/Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|9999900041").await.json();
    assert_eq!(found["total"], 1, "{found}");
    // Two matches: refused, nothing written.
    let twin = transaction(vec![entry("urn:uuid:00000000-0000-4000-8000-000000000009", practitioner("9999900041"))]);
    assert_eq!(w.post(&doc, "/fhir", &twin).await.status, 200);
    let ambiguous = transaction(vec![conditional(
        practitioner("9999900041"),
        prac,
        "identifier=http://hl7.org/fhir/sid/us-npi|9999900041",
    )]);
    let refused = w.post(&doc, "/fhir", &ambiguous).await;
    assert_eq!(refused.status, 412, "{}", refused.text());
}

#[tokio::test]
async fn a_single_create_with_if_none_exist_writes_nothing_when_the_resource_is_there() {
    let w = world();
    let doc = w.token(w.doc_a(), Role::Practitioner, "user/*.cruds");
    let create = |body: String| {
        Request::post("/fhir/Practitioner")
            .header("host", "fhir.test")
            .header("authorization", format!("Bearer {doc}"))
            .header("content-type", FHIR)
            .header("if-none-exist", "identifier=http://hl7.org/fhir/sid/us-npi|9999900051")
            .body(Body::from(body))
            .unwrap()
    };
    let first = w.send(create(practitioner("9999900051").to_string())).await;
    assert_eq!(first.status, 201, "{}", first.text());
    let log = w.log_size();
    let again = w.send(create(practitioner("9999900051").to_string())).await;
    assert_eq!(again.status, 200, "{}", again.text());
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert_eq!(w.log_size(), log, "nothing written");
    let found = w.get(&doc, "/fhir/Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|9999900051").await.json();
    assert_eq!(found["total"], 1, "{found}");
    // The CapabilityStatement says so.
    let metadata = w.get(&doc, "/fhir/metadata").await.json();
    let practitioner_entry = metadata["rest"][0]["resource"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["type"] == "Practitioner")
        .unwrap()
        .clone();
    assert_eq!(practitioner_entry["conditionalCreate"], true);
}
