//! Adversarial tests of what the node accepts to store (issue 9, items 6 and 7): every write
//! path validates a patient record the same way (`POST /v1/records` as `POST /fhir/{type}`),
//! reads survive a stored version that does not parse, and directory entries (on-chain in
//! clear, for good) carry no patient data.

use medledger_records::WriteRequest;
use medledger_types::{IdentityId, RecordId, Role, TxId};
use serde_json::{Value, json};

mod common;

use common::{fhir::Lab, now_ms, request::Answer, world::World};

/// Hospital A's node with a practitioner of Hospital A, blocks committing in the
/// background so that FHIR writes answer once committed.
fn world() -> World {
    World::hospital_and_clinic("medledger.api-adv-validation")
        .practitioner("adv-validation-dr-a", 0, "Dr A")
        .records()
        .patient_key_dir()
        .commit_wait_ms(10_000)
        .public_base("http://fhir.test")
        .committing()
        .build()
}

impl World {
    /// A token of Hospital A's practitioner for every interaction on every type.
    fn doc_token(&self) -> String {
        self.token(self.doc_a(), Role::Practitioner, "user/*.cruds")
    }

    /// `POST /v1/records` signed by Hospital A's practitioner.
    async fn v1_write(&self, patient: &IdentityId, record: Option<&str>, body: &[u8]) -> Answer {
        let mut path = format!("/v1/records?patient={patient}");
        if let Some(record) = record {
            path.push_str(&format!("&record={record}"));
        }
        self.call("POST", &path, Some(self.doc_a()), body).await
    }

    /// Creates a Patient of someone new to the network: (its record id, the patient identity).
    async fn create_patient(&self, token: &str, family: &str) -> (String, IdentityId) {
        let body = json!({"resourceType": "Patient", "name": [{"family": family}]}).to_string();
        let created = self.post(token, "/fhir/Patient", &body).await;
        assert_eq!(created.status, 201);
        let identity = created.headers["x-medledger-patient-identity"].to_str().unwrap().to_owned();
        let id = created.json()["id"].as_str().unwrap().to_owned();
        self.settle(&id);
        (id, IdentityId::from_hex(&identity).unwrap())
    }

    /// Waits until the record or directory entry `id` (hex) a write answered is in the state.
    fn settle(&self, id: &str) {
        let id = RecordId::from_hex(id).unwrap();
        let started = std::time::Instant::now();
        while self.chain.snapshot().record(&id).is_none() && self.chain.snapshot().directory_entry(&id).is_none() {
            assert!(started.elapsed() < std::time::Duration::from_secs(20), "{id} not in the state in 20 s");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}

/// The transaction a `/v1/records` write answered with.
fn tx_of(answer: &Answer) -> TxId {
    TxId::from_hex(answer.json()["tx_id"].as_str().unwrap()).unwrap()
}

/// A lab Observation about `Patient/<patient_record>`.
fn lab(patient_record: &str) -> Value {
    Lab::of(patient_record).untitled().resource()
}

#[tokio::test]
async fn v1_records_refuses_duplicate_keys_that_break_everything() {
    let w = world();
    let doc = w.doc_token();
    let (patient_record, patient) = w.create_patient(&doc, "Dupkey").await;
    // Valid JSON to a lenient parser (the last `status` wins), refused by the strict one that
    // every read splices the server's `id` and `meta` with.
    let good = lab(&patient_record).to_string();
    let duplicate = good.replacen(r#""status":"final""#, r#""status":"final","status":"cancelled""#, 1);
    assert_ne!(good, duplicate);
    let answer = w.v1_write(&patient, None, duplicate.as_bytes()).await;
    if answer.status == 201 {
        w.wait_committed(&tx_of(&answer));
    }
    let everything = w.get(&doc, &format!("/fhir/Patient/{patient_record}/$everything")).await;
    let history = w.get(&doc, "/fhir/Observation/_history").await;
    assert_eq!(
        (answer.status, everything.status, history.status),
        (400, 200, 200),
        "write: {}\n$everything: {}\ntype history: {}",
        answer.text(),
        everything.text(),
        history.text()
    );
    assert_eq!(answer.json()["error"]["code"], 400, "{}", answer.text());
    // The valid body is still accepted, and the patient's record reads.
    let answer = w.v1_write(&patient, None, good.as_bytes()).await;
    assert_eq!(answer.status, 201, "{}", answer.text());
    w.wait_committed(&tx_of(&answer));
    let everything = w.get(&doc, &format!("/fhir/Patient/{patient_record}/$everything")).await;
    assert_eq!(everything.status, 200, "{}", everything.text());
    assert_eq!(everything.json()["entry"].as_array().unwrap().len(), 2, "{}", everything.text());
}

#[tokio::test]
async fn v1_records_refuses_a_lookalike_delete_marker() {
    let w = world();
    let doc = w.doc_token();
    let (patient_record, patient) = w.create_patient(&doc, "Marker").await;
    let created = w.post(&doc, "/fhir/Observation", &lab(&patient_record).to_string()).await;
    assert_eq!(created.status, 201, "{}", created.text());
    let record = created.json()["id"].as_str().unwrap().to_owned();
    w.settle(&record);
    // What a logical delete stores, written as an ordinary next version: it would read as a
    // delete that never happened (410, dropped from search and $everything), with no DELETE
    // on the record's trail.
    // (With the lab category, so that the ledger sees the same record category.)
    let marker = br#"{"medledger":"deleted","resourceType":"Observation","category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"laboratory"}]}]}"#;
    let answer = w.v1_write(&patient, Some(&record), marker).await;
    if answer.status == 201 {
        w.wait_committed(&tx_of(&answer));
    }
    let read = w.get(&doc, &format!("/fhir/Observation/{record}")).await;
    assert_eq!((answer.status, read.status), (400, 200), "write: {}\nread: {}", answer.text(), read.text());
    // Nor as a new record (deleted from birth), whatever follows the marker's prefix.
    let bare = br#"{"medledger":"deleted","resourceType":"Observation"}"#;
    for body in [&marker[..], &bare[..]] {
        let answer = w.v1_write(&patient, None, body).await;
        assert_eq!(answer.status, 400, "{}", answer.text());
    }
}

#[tokio::test]
async fn v1_records_refuses_a_record_filed_under_another_patient() {
    let w = world();
    let doc = w.doc_token();
    let (_, alice) = w.create_patient(&doc, "Alice").await;
    let (bob_record, bob) = w.create_patient(&doc, "Bob").await;
    // Filed under Alice (her key, her consent) while saying it is Bob's: Bob's chart would
    // show it to whoever may read Alice's records, and Bob's consent would not govern it.
    let answer = w.v1_write(&alice, None, lab(&bob_record).to_string().as_bytes()).await;
    assert_eq!(answer.status, 400, "{}", answer.text());
    // A Patient naming another identity than the one it is filed under, likewise.
    let named =
        json!({"resourceType": "Patient", "identifier": [{"system": "urn:medledger:identity", "value": bob.to_hex()}]});
    let answer = w.v1_write(&alice, None, named.to_string().as_bytes()).await;
    assert_eq!(answer.status, 400, "{}", answer.text());
    // A server id that names no Patient here (or a record that is not a Patient) is refused
    // as the FHIR API refuses it; filed under Bob it is accepted.
    let nowhere = lab(&"ab".repeat(32)).to_string();
    assert_eq!(w.v1_write(&bob, None, nowhere.as_bytes()).await.status, 400);
    let answer = w.v1_write(&bob, None, lab(&bob_record).to_string().as_bytes()).await;
    assert_eq!(answer.status, 201, "{}", answer.text());
    w.wait_committed(&tx_of(&answer));
    let lab_record = answer.json()["record_id"].as_str().unwrap().to_owned();
    let pointing_at_lab = lab(&lab_record).to_string();
    assert_eq!(w.v1_write(&bob, None, pointing_at_lab.as_bytes()).await.status, 400);
    // A type the FHIR API does not serve as a patient record is refused too.
    let directory = json!({"resourceType": "Organization", "name": "Not a record"}).to_string();
    assert_eq!(w.v1_write(&bob, None, directory.as_bytes()).await.status, 400);
}

#[tokio::test]
async fn a_stored_version_that_does_not_parse_leaves_the_rest_of_the_answer() {
    let w = world();
    let doc = w.doc_token();
    let (patient_record, patient) = w.create_patient(&doc, "Legacy").await;
    let good = w.post(&doc, "/fhir/Observation", &lab(&patient_record).to_string()).await;
    assert_eq!(good.status, 201, "{}", good.text());
    w.settle(good.json()["id"].as_str().unwrap());
    // A version no write path accepts any more, but one a node stored before (or another
    // organisation's node still stores, and this one serves under a grant).
    let broken =
        lab(&patient_record).to_string().replacen(r#""status":"final""#, r#""status":"final","status":"x""#, 1);
    let written = w
        .service()
        .write(
            &WriteRequest {
                author: w.doc_a().id(),
                patient,
                resource_type: "Observation",
                category: "labs",
                content: broken.as_bytes(),
                record: None,
            },
            now_ms(),
            &mut rand::rng(),
        )
        .unwrap();
    w.wait_committed(&written.tx_id);
    let broken_id = written.record_id.to_hex();
    let everything = w.get(&doc, &format!("/fhir/Patient/{patient_record}/$everything")).await;
    let instance = w.get(&doc, &format!("/fhir/Observation/{broken_id}/_history")).await;
    let type_history = w.get(&doc, "/fhir/Observation/_history").await;
    assert_eq!(
        (everything.status, instance.status, type_history.status),
        (200, 200, 200),
        "$everything: {}\ninstance history: {}\ntype history: {}",
        everything.text(),
        instance.text(),
        type_history.text()
    );
    // $everything: the Patient and the good Observation, and an outcome naming the other.
    let entries = everything.json()["entry"].as_array().unwrap().clone();
    let resources: Vec<&str> = entries.iter().map(|e| e["resource"]["resourceType"].as_str().unwrap()).collect();
    assert_eq!(resources, ["Patient", "Observation", "OperationOutcome"], "{}", everything.text());
    assert_eq!(entries[2]["search"]["mode"], "outcome");
    assert!(entries[2]["resource"]["issue"][0]["diagnostics"].as_str().unwrap().contains(&broken_id));
    // History: the version is listed without its content, with an outcome saying why.
    let entry = &instance.json()["entry"][0];
    assert!(entry["resource"].is_null(), "{entry}");
    assert_eq!(entry["response"]["outcome"]["resourceType"], "OperationOutcome", "{entry}");
    assert_eq!(type_history.json()["entry"].as_array().unwrap().len(), 2, "{}", type_history.text());
    // A single read of it is an error of that read alone.
    let read = w.get(&doc, &format!("/fhir/Observation/{broken_id}")).await;
    assert_eq!(read.status, 500, "{}", read.text());
    assert_eq!(read.json()["resourceType"], "OperationOutcome");
}

/// A Practitioner as a directory entry, with `extra` members added.
fn practitioner_with(extra: Value) -> Value {
    let mut practitioner = json!({
        "resourceType": "Practitioner",
        "identifier": [{"system": "http://hl7.org/fhir/sid/us-npi", "value": "9999977001"}],
        "name": [{"family": "Directory", "given": ["Dana"]}]
    });
    for (key, value) in extra.as_object().unwrap() {
        practitioner[key] = value.clone();
    }
    practitioner
}

/// Tries `resource` on every path that writes a directory entry (create, update of an
/// existing entry, a transaction Bundle, a batch Bundle); returns what each answered.
async fn try_every_directory_path(w: &World, token: &str, resource: &Value) -> Vec<(&'static str, u16, String)> {
    let mut answers = Vec::new();
    let created = w.post(token, "/fhir/Practitioner", &resource.to_string()).await;
    answers.push(("create", created.status, created.text()));
    let clean = w.post(token, "/fhir/Practitioner", &practitioner_with(json!({})).to_string()).await;
    assert_eq!(clean.status, 201, "{}", clean.text());
    let id = clean.json()["id"].as_str().unwrap().to_owned();
    w.settle(&id);
    let mut update = resource.clone();
    update["id"] = json!(id);
    let updated = w.put(token, &format!("/fhir/Practitioner/{id}"), None, &update.to_string()).await;
    answers.push(("update", updated.status, updated.text()));
    for kind in ["transaction", "batch"] {
        let bundle = json!({"resourceType": "Bundle", "type": kind, "entry": [
            {"fullUrl": "urn:uuid:0b7e7a63-2c5e-4d7e-9a53-5c1f0d4c0001", "resource": resource, "request": {"method": "POST", "url": "Practitioner"}}
        ]});
        let answer = w.post(token, "/fhir", &bundle.to_string()).await;
        // A batch answers 200 with the entry's own status.
        let status = match kind {
            "batch" => answer.json()["entry"][0]["response"]["status"]
                .as_str()
                .and_then(|s| s.split(' ').next())
                .and_then(|s| s.parse().ok())
                .unwrap_or(0),
            _ => answer.status,
        };
        answers.push((kind, status, answer.text()));
    }
    answers
}

/// Asserts every path refused `resource` with 422 and nothing of it reached the chain.
async fn assert_refused_everywhere(w: &World, token: &str, resource: &Value) {
    let before = w.log_size();
    let answers = try_every_directory_path(w, token, resource).await;
    let statuses: Vec<(&str, u16)> = answers.iter().map(|(path, status, _)| (*path, *status)).collect();
    assert_eq!(
        statuses,
        [("create", 422), ("update", 422), ("transaction", 422), ("batch", 422)],
        "{resource}\n{answers:#?}"
    );
    // Only the clean entry the update needs was committed.
    assert_eq!(w.log_size(), before + 1, "{answers:#?}");
}

#[tokio::test]
async fn directory_entry_with_contained_patient_is_refused() {
    let w = world();
    let doc = w.doc_token();
    let smuggled = practitioner_with(json!({
        "contained": [
            {"resourceType": "Patient", "id": "p1", "name": [{"family": "Doe", "given": ["Jane"]}], "birthDate": "1980-02-03"},
            {"resourceType": "Observation", "id": "o1", "status": "final",
             "code": {"coding": [{"system": "http://loinc.org", "code": "75622-1", "display": "HIV 1 and 2 tests"}]},
             "subject": {"reference": "#p1"}, "valueString": "positive"}
        ]
    }));
    assert_refused_everywhere(&w, &doc, &smuggled).await;
}

#[tokio::test]
async fn directory_entry_with_patient_data_in_extensions_is_refused() {
    let w = world();
    let doc = w.doc_token();
    let patient_data = json!({"url": "http://example.org/fhir/StructureDefinition/seen-patient", "valueString": "Jane Doe, born 1980-02-03, HIV positive"});
    for smuggled in [
        // On the resource, on a data type, on a primitive (`_family`), as a modifier, and
        // an allowed url carrying another type of value or nested extensions.
        practitioner_with(json!({"extension": [patient_data.clone()]})),
        practitioner_with(json!({"name": [{"family": "Directory", "extension": [patient_data.clone()]}]})),
        practitioner_with(json!({"name": [{"family": "Directory", "_family": {"extension": [patient_data.clone()]}}]})),
        practitioner_with(json!({"modifierExtension": [patient_data.clone()]})),
        practitioner_with(json!({"extension": [
            {"url": "http://synthetichealth.github.io/synthea/utilization-encounters-extension", "valueString": "Jane Doe 1980-02-03"}
        ]})),
        practitioner_with(json!({"extension": [
            {"url": "http://synthetichealth.github.io/synthea/utilization-encounters-extension", "extension": [patient_data.clone()]}
        ]})),
    ] {
        assert_refused_everywhere(&w, &doc, &smuggled).await;
    }
    // The allow-listed extensions of the Synthea and US Core directories are accepted.
    let allowed = practitioner_with(json!({
        "extension": [{"url": "http://synthetichealth.github.io/synthea/utilization-encounters-extension", "valueInteger": 17}],
        "telecom": [{"extension": [{"url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-direct", "valueBoolean": true}],
                     "system": "email", "value": "dana@example.org", "use": "work"}]
    }));
    let answer = w.post(&doc, "/fhir/Practitioner", &allowed.to_string()).await;
    assert_eq!(answer.status, 201, "{}", answer.text());
}

#[tokio::test]
async fn directory_entry_with_patient_details_in_narrative_is_refused() {
    let w = world();
    let doc = w.doc_token();
    let smuggled = practitioner_with(json!({
        "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">Treated Jane Doe (1980-02-03) for HIV today</div>"}
    }));
    assert_refused_everywhere(&w, &doc, &smuggled).await;
}
