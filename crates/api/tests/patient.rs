//! The patient's view over HTTP: own records, grants, access log with offline-verifiable
//! proofs, notifications; version history for whoever may read a record; everyone else 403
//! (404 for a record they may not see: as if it did not exist).
//! Delegates acting for the patient, and organisations reviewing break-glass access.

use axum::{body::Body, http::Request};
use medledger_crypto::Keypair;
use medledger_ledger::{Payload, Purpose, ReviewVerdict, Scope, actions, tx::sign};
use medledger_merkle::{Hash, verify_inclusion};
use medledger_types::IdentityId;
use serde_json::Value;

mod common;

use common::{now_ms, request::Answer, world::World};

/// Hospital A's node; a practitioner of Hospital A and one of Clinic B; two patients.
fn world() -> World {
    World::hospital_and_clinic("medledger.api-patient")
        .practitioner("dr-a", 0, "Dr A")
        .practitioner("dr-b", 1, "Dr B")
        .patients(&["patient", "other-patient"])
        .records()
        .build()
}

fn hash(v: &Value) -> Hash {
    Hash::from_hex(v.as_str().unwrap()).unwrap()
}

#[tokio::test]
async fn the_patient_sees_records_grants_access_log_and_notifications() {
    let w = world();
    let p = w.patient().id();
    let synthetic = medledger_synth::Generator::new(7).patient();
    let lab = synthetic.resources.iter().find(|r| r.category == "labs").unwrap();
    let write_path = format!("/v1/records?patient={p}");
    let answer = w.call("POST", &write_path, Some(w.doc_a()), &lab.json).await;
    assert_eq!(answer.status, 201, "{}", answer.text());
    let record = answer.json()["record_id"].as_str().unwrap().to_owned();
    w.commit();
    let status = w.call("POST", &format!("{write_path}&record={record}"), Some(w.doc_a()), &lab.json).await.status;
    assert_eq!(status, 201);
    w.commit();

    // Reads, allowed and refused, become access events.
    let read_path = format!("/v1/records/{record}?purpose=TREAT");
    assert_eq!(w.call("GET", &read_path, Some(w.doc_a()), b"").await.status, 200);
    assert_eq!(w.call("GET", &read_path, Some(w.doc_b()), b"").await.status, 404);
    w.flush_events();

    // A consent grant ending in 3 days (expiring soon), its key wrap, and a break-glass.
    let t = now_ms();
    let grant = Payload::ConsentGrant {
        patient: p,
        grantee: w.doc_b().id(),
        scope: Scope::Categories(vec!["labs".into()]),
        actions: actions::READ,
        purpose: Purpose::Research,
        valid_from_ms: t - 1_000,
        valid_until_ms: t + 3 * 86_400_000,
    };
    let grant_id = w.chain.submit_as(w.patient(), grant, t).unwrap();
    let bg = Payload::BreakGlass { patient: p, reason: "unconscious-ed".into(), window_ms: 4 * 3_600_000 };
    let bg_id = w.chain.submit_as(w.doc_b(), bg, t).unwrap();
    w.commit();
    let wraps = w.service().share_keys_for_grant(&grant_id, now_ms(), &mut rand::rng()).unwrap();
    assert_eq!(wraps.len(), 1);
    w.commit();
    // Under break-glass (purpose Emergency) the read is allowed, through the custodian's node,
    // and flagged.
    let emergency = format!("/v1/records/{record}?purpose=ETREAT");
    assert_eq!(w.call("GET", &emergency, Some(w.doc_b()), b"").await.status, 200);
    // History reads are decided and audited too.
    let history = format!("/v1/records/{record}/history?purpose=ETREAT");
    let h = w.get_json(&history, Some(w.doc_b())).await;
    assert_eq!(h["basis"], "break-glass");
    w.flush_events();

    // Records and versions.
    let records = w.get_json(&format!("/v1/patients/{p}/records"), Some(w.patient())).await;
    assert_eq!(records["total"], 1);
    let r = &records["records"][0];
    assert_eq!(r["record_id"], record.as_str());
    assert_eq!(r["resource_type"], "Observation");
    assert_eq!(r["category"], "labs");
    assert_eq!(r["custodian"], w.net.organisations[0].id().to_hex());
    assert_eq!(r["latest_version"], 2);
    let versions = r["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 2);
    assert!(versions.iter().all(|v| v["author"] == w.doc_a().id().to_hex()));
    assert_eq!(versions[1]["version"], 2);

    // Grants: the consent and the break-glass, with origin and liveness.
    let grants = w.get_json(&format!("/v1/patients/{p}/grants"), Some(w.patient())).await;
    let grants = grants["grants"].as_array().unwrap();
    assert_eq!(grants.len(), 2);
    let consent = grants.iter().find(|g| g["grant_id"] == grant_id.to_hex()).unwrap();
    assert_eq!(consent["origin"], "consent");
    assert_eq!(consent["scope"]["kind"], "categories");
    assert_eq!(consent["purpose"], "HRESCH");
    assert_eq!(consent["actions"], serde_json::json!(["read"]));
    assert_eq!(consent["live"], true);
    assert!(consent["revoked_at"].is_null());
    let glass = grants.iter().find(|g| g["grant_id"] == bg_id.to_hex()).unwrap();
    assert_eq!((glass["origin"].as_str(), glass["reason"].as_str()), (Some("break-glass"), Some("unconscious-ed")));
    assert_eq!(glass["needs_review"], true);

    // Access log: every entry proves offline against the returned root, which is the head's.
    let log = w.get_json(&format!("/v1/patients/{p}/access-log"), Some(w.patient())).await;
    let head = w.get_json("/v1/head", Some(w.patient())).await;
    assert_eq!(log["log_root"], head["log_root"]);
    assert_eq!(log["log_size"], head["log_size"]);
    let (size, root) = (log["log_size"].as_u64().unwrap(), hash(&log["log_root"]));
    let entries = log["entries"].as_array().unwrap();
    assert!(entries.len() >= 4, "{entries:?}");
    for e in entries {
        let proof: Vec<Hash> = e["proof"].as_array().unwrap().iter().map(hash).collect();
        verify_inclusion(e["log_index"].as_u64().unwrap(), size, &hash(&e["tx_id"]), &proof, &root).unwrap();
    }
    let who = |e: &Value| (e["accessor"].as_str().unwrap().to_owned(), e["outcome"].as_str().unwrap().to_owned());
    assert!(entries.iter().any(|e| who(e) == (w.doc_a().id().to_hex(), "allowed".into())));
    assert!(entries.iter().any(|e| who(e) == (w.doc_b().id().to_hex(), "denied".into()) && e["reason"] == "no-grant"));
    assert!(entries.iter().any(|e| e["action"] == "read" && e["outcome"] == "break-glass"));
    assert!(entries.iter().any(|e| e["action"] == "history" && e["outcome"] == "break-glass"));
    // Every entry names the node that decided and recorded it, by id and in words.
    let node = w.net.validators[0].id().to_hex();
    for e in entries {
        assert_eq!(e["recorded_by"].as_str(), Some(node.as_str()), "{e}");
        assert!(e["recorded_by_name"].as_str().unwrap().starts_with("node-0 ("), "{e}");
    }
    // Paging.
    let page = w.get_json(&format!("/v1/patients/{p}/access-log?from=1&limit=1"), Some(w.patient())).await;
    assert_eq!(page["entries"].as_array().unwrap().len(), 1);
    assert_eq!(page["entries"][0]["tx_id"], entries[1]["tx_id"]);
    assert_eq!(page["next"], 2);

    // Notifications: accesses (break-glass flagged), the declaration, the wrap, the expiring grant.
    let notes = w.get_json(&format!("/v1/patients/{p}/notifications?since_ms=0"), Some(w.patient())).await;
    let notes = notes["notifications"].as_array().unwrap();
    let kinds: Vec<&str> = notes.iter().map(|n| n["kind"].as_str().unwrap()).collect();
    for kind in ["access", "break-glass", "grant-wrap", "grant-expiring"] {
        assert!(kinds.contains(&kind), "{kind} missing from {kinds:?}");
    }
    assert!(notes.iter().any(|n| n["kind"] == "access" && n["break_glass"] == true));
    assert!(notes.iter().any(|n| n["kind"] == "break-glass" && n["tx_id"] == bg_id.to_hex()));
    assert!(notes.iter().any(|n| n["kind"] == "grant-wrap" && n["recipient"] == w.doc_b().id().to_hex()));
    assert!(notes.iter().any(|n| n["kind"] == "grant-expiring" && n["grant_id"] == grant_id.to_hex()));
    // Nothing new after the newest block: only current conditions (expiring grants) remain.
    let until =
        w.get_json(&format!("/v1/patients/{p}/notifications"), Some(w.patient())).await["until_ms"].as_u64().unwrap();
    let later = w.get_json(&format!("/v1/patients/{p}/notifications?since_ms={until}"), Some(w.patient())).await;
    assert!(later["notifications"].as_array().unwrap().iter().all(|n| n["kind"] == "grant-expiring"));
}

#[tokio::test]
async fn only_the_patient_and_only_good_parameters() {
    let w = world();
    let p = w.patient().id();
    for path in ["records", "grants", "access-log", "notifications"] {
        let path = format!("/v1/patients/{p}/{path}");
        // Grants are also shown to the patient's live delegates, so the refusal says so.
        let reason = if path.ends_with("grants") { "not-the-patient-or-delegate" } else { "not-the-patient" };
        for other in [w.doc_a(), w.other_patient()] {
            let answer = w.call("GET", &path, Some(other), b"").await;
            assert_eq!(answer.status, 403, "{path}");
            assert_eq!(answer.json()["error"]["reason"], reason);
            assert_eq!(answer.json()["error"]["code"], 403);
        }
        assert_eq!(w.call("GET", &path, None, b"").await.status, 401, "{path} unsigned");
        assert_eq!(w.call("GET", &path, Some(w.patient()), b"").await.status, 200, "{path}");
    }
    for bad in [
        format!("/v1/patients/{p}/access-log?limit=501"),
        format!("/v1/patients/{p}/access-log?limit=0"),
        format!("/v1/patients/{p}/access-log?limit=abc"),
        format!("/v1/patients/{p}/access-log?from=-1"),
        format!("/v1/patients/{p}/records?from=1.5"),
        format!("/v1/patients/{p}/notifications?since_ms=yesterday"),
        "/v1/patients/not-hex/grants".to_owned(),
        format!("/v1/records/{}/history?purpose=NOPE", "ab".repeat(32)),
        "/v1/records/xyz/history".to_owned(),
    ] {
        let answer = w.call("GET", &bad, Some(w.patient()), b"").await;
        assert_eq!(answer.status, 400, "{bad}: {}", answer.text());
        assert_eq!(answer.json()["error"]["code"], 400);
    }
    // An empty view is empty, not an error; paging past the end is empty too.
    let log = w.get_json(&format!("/v1/patients/{p}/access-log?from=1000000&limit=500"), Some(w.patient())).await;
    assert_eq!(log["entries"].as_array().unwrap().len(), 0);
    assert_eq!(log["total"], 0);

    // History: custodian staff yes; a stranger is refused as if the record did not exist (the
    // reason is in the audit trail); unknown record 404.
    let synthetic = medledger_synth::Generator::new(3).patient();
    let lab = synthetic.resources.iter().find(|r| r.category == "labs").unwrap();
    let answer = w.call("POST", &format!("/v1/records?patient={p}"), Some(w.doc_a()), &lab.json).await;
    assert_eq!(answer.status, 201);
    let record = answer.json()["record_id"].as_str().unwrap().to_owned();
    w.commit();
    let history = format!("/v1/records/{record}/history");
    let h = w.get_json(&history, Some(w.doc_a())).await;
    assert_eq!(h["basis"], "custodian");
    assert_eq!(h["versions"][0]["version"], 1);
    assert_eq!(h["patient"], p.to_hex());
    assert_eq!(w.get_json(&history, Some(w.patient())).await["basis"], "patient");
    let answer = w.call("GET", &history, Some(w.doc_b()), b"").await;
    assert_eq!(answer.status, 404);
    assert_eq!(answer.json()["error"]["message"], format!("no record {record}"));
    let unknown = format!("/v1/records/{}/history", "ab".repeat(32));
    assert_eq!(w.call("GET", &unknown, Some(w.doc_a()), b"").await.status, 404);
    // The refusal was audited as a history access event.
    w.flush_events();
    let log = w.get_json(&format!("/v1/patients/{p}/access-log"), Some(w.patient())).await;
    assert!(
        log["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "history" && e["outcome"] == "denied" && e["accessor"] == w.doc_b().id().to_hex())
    );
}

impl World {
    /// Signs `payload` as `keys` and posts it to `/v1/transactions`, as any client would.
    async fn post_tx(&self, keys: &Keypair, payload: Payload) -> Answer {
        let nonce = self.chain.snapshot().next_nonce(&keys.id());
        let tx = sign(keys, self.net.genesis.chain_id(), keys.id(), nonce, payload);
        let request = Request::builder()
            .method("POST")
            .uri("/v1/transactions")
            .header("content-type", "application/octet-stream")
            .body(Body::from(tx.bytes().to_vec()))
            .unwrap();
        self.send(request).await
    }

    /// Writes a synthetic lab for the patient at hospital A; returns the record id.
    async fn write_lab(&self) -> String {
        let synthetic = medledger_synth::Generator::new(11).patient();
        let lab = synthetic.resources.iter().find(|r| r.category == "labs").unwrap();
        let path = format!("/v1/records?patient={}", self.patient().id());
        let answer = self.call("POST", &path, Some(self.doc_a()), &lab.json).await;
        assert_eq!(answer.status, 201, "{}", answer.text());
        self.commit();
        answer.json()["record_id"].as_str().unwrap().to_owned()
    }
}

fn labs_grant(patient: IdentityId, grantee: IdentityId) -> Payload {
    let t = now_ms();
    Payload::ConsentGrant {
        patient,
        grantee,
        scope: Scope::Categories(vec!["labs".into()]),
        actions: actions::READ,
        purpose: Purpose::Treatment,
        valid_from_ms: t - 1_000,
        valid_until_ms: t + 30 * 86_400_000,
    }
}

#[tokio::test]
async fn a_delegates_grant_lets_the_grantee_read_until_the_delegate_is_dismissed() {
    let w = world();
    let p = w.patient().id();
    // The other patient identity is the patient's guardian.
    let guardian = w.other_patient();
    let record = w.write_lab().await;
    let read = format!("/v1/records/{record}?purpose=TREAT");
    assert_eq!(w.call("GET", &read, Some(w.doc_b()), b"").await.status, 404);

    // Before appointment the guardian may neither grant nor see the patient's consent.
    assert_eq!(w.post_tx(guardian, labs_grant(p, w.doc_b().id())).await.status, 400);
    let delegates = format!("/v1/patients/{p}/delegates");
    let answer = w.call("GET", &delegates, Some(guardian), b"").await;
    assert_eq!((answer.status, answer.json()["error"]["reason"].as_str()), (403, Some("not-the-patient-or-delegate")));

    let appoint =
        Payload::AppointDelegate { patient: p, delegate: guardian.id(), valid_until_ms: now_ms() + 86_400_000 };
    assert_eq!(w.post_tx(w.patient(), appoint).await.status, 202);
    w.commit();
    for who in [w.patient(), guardian] {
        let list = w.get_json(&delegates, Some(who)).await;
        assert_eq!((list["live"].as_u64(), list["total"].as_u64()), (Some(1), Some(1)));
        let d = &list["delegations"][0];
        assert_eq!(
            (d["delegate"].as_str(), d["delegate_role"].as_str()),
            (Some(guardian.id().to_hex().as_str()), Some("patient"))
        );
        assert_eq!(d["live"], true);
    }
    assert_eq!(w.call("GET", &delegates, Some(w.doc_b()), b"").await.status, 403);

    // The guardian grants Clinic B's doctor: the read through the custodian's node is allowed.
    let (status, accepted) = w.post_tx(guardian, labs_grant(p, w.doc_b().id())).await.status_json();
    assert_eq!(status, 202, "{accepted}");
    let grant_id = accepted["tx_id"].as_str().unwrap().to_owned();
    w.commit();
    assert_eq!(w.call("GET", &read, Some(w.doc_b()), b"").await.status, 200);
    // Both see who granted it; the guardian still sees nothing else of the patient's.
    for who in [w.patient(), guardian] {
        let grants = w.get_json(&format!("/v1/patients/{p}/grants"), Some(who)).await;
        let g =
            grants["grants"].as_array().unwrap().iter().find(|g| g["grant_id"] == grant_id.as_str()).unwrap().clone();
        assert_eq!(g["granted_by_delegate"], guardian.id().to_hex());
        assert_eq!(g["signed_by"], guardian.id().to_hex());
    }
    for path in ["records", "access-log", "notifications"] {
        assert_eq!(w.call("GET", &format!("/v1/patients/{p}/{path}"), Some(guardian), b"").await.status, 403, "{path}");
    }

    // Dismissed: the guardian's next grant is refused, the earlier one stays in force.
    let dismiss = Payload::DismissDelegate { patient: p, delegate: guardian.id() };
    assert_eq!(w.post_tx(w.patient(), dismiss).await.status, 202);
    w.commit();
    let (status, refused) = w.post_tx(guardian, labs_grant(p, w.doc_a().id())).await.status_json();
    assert_eq!(status, 400, "{refused}");
    assert!(refused["error"]["message"].as_str().unwrap().contains("delegate"), "{refused}");
    assert_eq!(w.call("GET", &delegates, Some(guardian), b"").await.status, 403);
    assert_eq!(w.call("GET", &read, Some(w.doc_b()), b"").await.status, 200);
    let list = w.get_json(&delegates, Some(w.patient())).await;
    assert_eq!(
        (list["live"].as_u64(), list["delegations"][0]["dismissed_by"].as_str()),
        (Some(0), Some(p.to_hex().as_str()))
    );

    // The patient was told of each step.
    let notes = w.get_json(&format!("/v1/patients/{p}/notifications?since_ms=0"), Some(w.patient())).await;
    let kinds: Vec<&str> =
        notes["notifications"].as_array().unwrap().iter().map(|n| n["kind"].as_str().unwrap()).collect();
    for kind in ["delegate-appointed", "delegate-grant", "delegate-dismissed"] {
        assert!(kinds.contains(&kind), "{kind} missing from {kinds:?}");
    }
    let grant_note =
        notes["notifications"].as_array().unwrap().iter().find(|n| n["kind"] == "delegate-grant").unwrap().clone();
    assert_eq!(
        (grant_note["tx_id"].as_str(), grant_note["grantee"].as_str()),
        (Some(grant_id.as_str()), Some(w.doc_b().id().to_hex().as_str()))
    );
}

#[tokio::test]
async fn organisations_review_break_glass_from_their_queue_and_the_patient_sees_the_verdict() {
    let w = world();
    let p = w.patient().id();
    let (org_a, org_b) = (w.net.organisations[0].clone(), w.net.organisations[1].clone());
    let record = w.write_lab().await;
    let bg = Payload::BreakGlass { patient: p, reason: "unconscious-ed".into(), window_ms: 4 * 3_600_000 };
    let bg_id = w.chain.submit_as(w.doc_b(), bg, now_ms()).unwrap().to_hex();
    w.commit();
    let emergency = format!("/v1/records/{record}?purpose=ETREAT");
    assert_eq!(w.call("GET", &emergency, Some(w.doc_b()), b"").await.status, 200);

    // Hospital A (custodian) and Clinic B (the declarer's) both see it awaiting review; only
    // the custodian may review it, never the declarer or its organisation; a patient has no
    // queue.
    let queue = "/v1/break-glass?pending=true";
    for (who, basis, reviewable) in [
        (&org_a, "custodian", true),
        (w.doc_a(), "custodian", true),
        (&org_b, "declarer-organisation", false),
        (w.doc_b(), "declarer-organisation", false),
    ] {
        let list = w.get_json(queue, Some(who)).await;
        assert_eq!(list["total"], 1, "{list}");
        let e = &list["events"][0];
        assert_eq!((e["tx_id"].as_str(), e["basis"].as_str()), (Some(bg_id.as_str()), Some(basis)));
        assert_eq!((e["reviewable_by_you"].as_bool(), e["live"].as_bool()), (Some(reviewable), Some(true)));
    }
    let answer = w.call("GET", queue, Some(w.patient()), b"").await;
    assert_eq!((answer.status, answer.json()["error"]["reason"].as_str()), (403, Some("not-an-organisation")));
    assert_eq!(w.call("GET", "/v1/break-glass?pending=maybe", Some(&org_a), b"").await.status, 400);

    // The declarer's own review is refused; the custodian finds it unjustified.
    let review = |verdict| Payload::ReviewBreakGlass {
        break_glass_tx: medledger_types::TxId::from_hex(&bg_id).unwrap(),
        verdict,
        reason: "no-emergency".into(),
    };
    assert_eq!(w.post_tx(w.doc_b(), review(ReviewVerdict::Justified)).await.status, 400);
    assert_eq!(w.post_tx(&org_b, review(ReviewVerdict::Justified)).await.status, 400);
    let (status, accepted) = w.post_tx(&org_a, review(ReviewVerdict::Unjustified)).await.status_json();
    assert_eq!(status, 202, "{accepted}");
    let review_tx = accepted["tx_id"].as_str().unwrap().to_owned();
    w.commit();
    // The window closed at once; a second review is refused; the queue is empty.
    assert_eq!(w.call("GET", &emergency, Some(w.doc_b()), b"").await.status, 404);
    assert_eq!(w.post_tx(&org_b, review(ReviewVerdict::Justified)).await.status, 400);
    assert_eq!(w.get_json(queue, Some(&org_a)).await["total"], 0);
    let all = w.get_json("/v1/break-glass?pending=false", Some(&org_b)).await;
    assert_eq!((all["total"].as_u64(), all["events"][0]["review"]["verdict"].as_str()), (Some(1), Some("unjustified")));

    // The patient's grants and notifications show the review.
    let grants = w.get_json(&format!("/v1/patients/{p}/grants"), Some(w.patient())).await;
    let glass = grants["grants"].as_array().unwrap().iter().find(|g| g["grant_id"] == bg_id.as_str()).unwrap().clone();
    assert_eq!((glass["needs_review"].as_bool(), glass["live"].as_bool()), (Some(false), Some(false)));
    assert_eq!(glass["review"]["verdict"], "unjustified");
    assert_eq!(glass["review"]["reviewer"], org_a.id().to_hex());
    assert_eq!(glass["revoked_by"], org_a.id().to_hex());
    let notes = w.get_json(&format!("/v1/patients/{p}/notifications?since_ms=0"), Some(w.patient())).await;
    let reviewed = notes["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["kind"] == "break-glass-reviewed")
        .expect("a break-glass-reviewed notification")
        .clone();
    assert_eq!(
        (reviewed["tx_id"].as_str(), reviewed["break_glass_tx"].as_str()),
        (Some(review_tx.as_str()), Some(bg_id.as_str()))
    );
    assert_eq!(
        (reviewed["verdict"].as_str(), reviewed["reason"].as_str()),
        (Some("unjustified"), Some("no-emergency"))
    );
}
