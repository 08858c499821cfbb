//! Record endpoints: signed requests, writes by the custodian's staff only, reads allowed by
//! consent and refused with a machine-readable reason otherwise.

use axum::{body::Body, http::Request};
use medledger_api::auth::authorization;

mod common;

use common::{now_ms, world::World};

/// Hospital A's node; a practitioner of Hospital A and one of Clinic B; one patient.
fn world() -> World {
    World::hospital_and_clinic("medledger.api-records")
        .practitioner("dr-a", 0, "Dr A")
        .practitioner("dr-b", 1, "Dr B")
        .patients(&["patient"])
        .records()
        .build()
}

#[tokio::test]
async fn records_over_http_are_signed_consented_and_explained() {
    let w = world();
    let synthetic = medledger_synth::Generator::new(11).patient();
    let lab = synthetic.resources.iter().find(|r| r.category == "labs").unwrap();
    let write_path = format!("/v1/records?patient={}", w.patient().id());

    // Writes: only this organisation's staff, with a valid signature and a FHIR body.
    let answer = w.call("POST", &write_path, Some(w.doc_b()), &lab.json).await;
    assert_eq!(answer.status, 403, "{}", answer.text());
    assert_eq!(answer.json()["error"]["reason"], "not-custodian-staff");
    assert_eq!(w.call("POST", &write_path, None, &lab.json).await.status, 401);
    assert_eq!(w.call("POST", &write_path, Some(w.doc_a()), b"not json").await.status, 400);
    let ambiguous = br#"{"resourceType":"Observation","status":"final","category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"laboratory"},{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"vital-signs"}]}]}"#;
    assert_eq!(w.call("POST", &write_path, Some(w.doc_a()), ambiguous).await.status, 400, "both lab and vital");
    let answer = w.call("POST", &write_path, Some(w.doc_a()), &lab.json).await;
    assert_eq!(answer.status, 201, "{}", answer.text());
    let record = answer.json()["record_id"].as_str().unwrap().to_owned();
    w.commit();

    // Reads: the author and the patient get the exact bytes; to others the record is not there
    // (the reason is in the access event the patient sees).
    let read_path = format!("/v1/records/{record}?purpose=TREAT");
    let answer = w.call("GET", &read_path, Some(w.doc_a()), b"").await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, lab.json);
    assert_eq!(w.call("GET", &read_path, Some(w.patient()), b"").await.body, lab.json);
    let answer = w.call("GET", &read_path, Some(w.doc_b()), b"").await;
    assert_eq!(answer.status, 404);
    assert_eq!(answer.json()["error"]["message"], format!("record {record} does not exist"));
    // Unsigned, forged, replayed and stale requests are refused before anything is read.
    assert_eq!(w.call("GET", &read_path, None, b"").await.status, 401);
    let header = authorization(w.doc_a(), &w.doc_a().id(), "GET", &read_path, b"", now_ms());
    let replay = || Request::builder().uri(&read_path).header("authorization", &header).body(Body::empty()).unwrap();
    assert_eq!(w.send(replay()).await.status, 200);
    assert_eq!(w.send(replay()).await.status, 401, "replayed request accepted");
    let forged = authorization(w.doc_b(), &w.doc_a().id(), "GET", &read_path, b"", now_ms());
    let forged = Request::builder().uri(&read_path).header("authorization", forged).body(Body::empty()).unwrap();
    assert_eq!(w.send(forged).await.status, 401);
    let stale = authorization(w.doc_a(), &w.doc_a().id(), "GET", &read_path, b"", now_ms() - 3_600_000);
    let stale = Request::builder().uri(&read_path).header("authorization", stale).body(Body::empty()).unwrap();
    assert_eq!(w.send(stale).await.status, 401);
    // A signature for another path does not authorise this one.
    let other = authorization(w.doc_a(), &w.doc_a().id(), "GET", "/v1/records/00", b"", now_ms());
    let other = Request::builder().uri(&read_path).header("authorization", other).body(Body::empty()).unwrap();
    assert_eq!(w.send(other).await.status, 401);
    let unknown = format!("/v1/records/{}", "ab".repeat(32));
    assert_eq!(w.call("GET", &unknown, Some(w.doc_a()), b"").await.status, 404);
    assert_eq!(w.call("GET", &format!("/v1/records/{record}?purpose=NOPE"), Some(w.doc_a()), b"").await.status, 400);
}
