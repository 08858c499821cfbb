//! Adversarial: per-identity quotas. One identity, or a few, cannot take what every other
//! client needs: live bearer tokens and token requests (`POST /auth/token`), the node's memory
//! of signed requests' nonces (`/v1`), Bulk Data export slots (`/fhir/$export`). Past its own
//! quota an identity is refused with 429 and `Retry-After`, in the error shape of the route;
//! nobody else's state is evicted and nobody else is refused.
//!
//! The attacks of the issue needed 100,000 tokens or a million requests against the node-wide
//! caps; here the node-wide caps are configured small and the attack scaled down with them
//! (same ratios), so each test is a few thousand in-process requests. Every identity is
//! registered by an organisation, patients included.

use std::time::Duration;

use axum::{body::Body, http::Request};
use medledger_api::{auth::NonceLimits, smart::TokenLimits};
use medledger_crypto::Keypair;
use medledger_types::Role;

mod common;

use common::{
    now_ms,
    request::signed_request,
    world::{World, WorldBuilder},
};

const BASE: &str = "http://quota.test";

/// One organisation's node, reached at [`BASE`], with `n` patients registered by the
/// organisation.
fn world(label: &str, n: usize) -> WorldBuilder {
    let patients: Vec<String> = (0..n).map(|i| format!("{label}-patient-{i}")).collect();
    World::builder(label).patients(&patients).public_base(BASE)
}

// ---- tokens ----

/// The issue: 1,600 identities × 64 token requests filled the node's 100,000 tokens and
/// assertion ids; the oldest tokens — every other client's — were evicted, and new tokens
/// were refused to everyone until the assertion ids expired. Scaled down: a node that holds
/// 1,000 tokens and 1,200 assertion ids, 20 identities × 64 requests.
#[tokio::test]
async fn one_identity_cannot_evict_other_clients_tokens() {
    const ATTACKERS: usize = 20;
    const REQUESTS_EACH: usize = 64;
    let w = world("medledger.api-quota-tokens", ATTACKERS + 2)
        .token_limits(TokenLimits { tokens_max: 1_000, assertions_max: 1_200, ..TokenLimits::default() })
        .build();
    let tokens = &w.tokens;
    let (victim, latecomer, attackers) = (&w.patients[0], &w.patients[1], &w.patients[2..]);

    let got = w.ask_token(victim, "patient/*.rs", "victim-1").await;
    assert_eq!(got.status, 200, "{}", got.text());
    let victim_token = got.json()["access_token"].as_str().unwrap().to_owned();

    let mut refusals = Vec::new();
    let mut first_tokens = Vec::new();
    for attacker in attackers {
        let mut first_token = None;
        for i in 0..REQUESTS_EACH {
            let got = w.ask_token(attacker, "patient/*.rs", &format!("flood-{i}")).await;
            if got.status == 200 {
                first_token.get_or_insert_with(|| got.json()["access_token"].as_str().unwrap().to_owned());
            } else {
                refusals.push(got);
            }
        }
        first_tokens.extend(first_token);
    }

    assert!(
        tokens.lookup(&victim_token, now_ms()).is_some(),
        "the victim's token survives 20 identities × 64 token requests"
    );
    let got = w.ask_token(victim, "patient/*.rs", "victim-2").await;
    assert_eq!(got.status, 200, "the victim gets a new token: {}", got.text());
    let got = w.ask_token(latecomer, "patient/*.rs", "latecomer-1").await;
    assert_eq!(got.status, 200, "an identity that never asked before gets a token: {}", got.text());

    // Each attacker ran into its own quota: 429, an OAuth error, no-store, a time to come back.
    assert!(!refusals.is_empty(), "the attackers are refused past their quota");
    for got in &refusals {
        assert_eq!(got.status, 429, "{}", got.text());
        assert_eq!(got.json()["error"], "slow_down", "{}", got.text());
        assert!(got.json()["error_description"].is_string());
        assert_eq!(got.headers["cache-control"], "no-store");
        assert!((1..=600).contains(&got.retry_after_s()));
    }
    assert_eq!(first_tokens.len(), ATTACKERS, "every attacker got tokens up to its own quota");
    for first in first_tokens {
        // Beyond its live-token quota, an identity's new tokens replace its OWN oldest.
        assert!(tokens.lookup(&first, now_ms()).is_none(), "the attacker's oldest token made way for its newest");
    }
}

// ---- request nonces ----

/// A signed `GET /v1/patients/{id}/records` by the patient itself.
fn own_records(keys: &Keypair) -> Request<Body> {
    let path = format!("/v1/patients/{}/records", keys.id());
    signed_request("GET", &path, keys, b"").body(Body::empty()).unwrap()
}

/// The issue: one identity's 1,020,000 signed requests filled the node's memory of a million
/// nonces, and every signed request from anyone then got 401 for ten minutes. Scaled down: a
/// node remembering 1,000 nonces, 1,020 requests of one identity.
#[tokio::test]
async fn one_identity_cannot_exhaust_request_nonce_memory() {
    let w = world("medledger.api-quota-nonces", 2)
        .nonce_limits(NonceLimits { per_identity_max: 300, remembered_max: 1_000 })
        .build();
    let (victim, attacker) = (&w.patients[0], &w.patients[1]);

    // The first request's header, to replay once the flood is over.
    let first = own_records(attacker);
    let (first_uri, first_auth) = (first.uri().clone(), first.headers()["authorization"].clone());
    assert_eq!(w.send(first).await.status, 200);
    let mut accepted = 1;
    let mut last_refusal = None;
    for _ in 1..1_020 {
        let got = w.send(own_records(attacker)).await;
        match got.status {
            200 => accepted += 1,
            _ => last_refusal = Some(got),
        }
    }
    // Everyone else is unaffected.
    for _ in 0..5 {
        let got = w.send(own_records(victim)).await;
        assert_eq!(got.status, 200, "another identity's signed requests are served: {}", got.text());
    }

    // The flooder is refused past its quota, with the /v1 error shape and a time to retry.
    let refusal = last_refusal.expect("the flooding identity runs into its quota");
    assert_eq!(refusal.status, 429, "{}", refusal.text());
    assert_eq!(refusal.json()["error"]["code"], 429, "the /v1 error shape: {}", refusal.text());
    assert!((1..=660).contains(&refusal.retry_after_s()));
    assert_eq!(accepted, 300, "exactly its quota of requests is served");

    // A replay of an accepted request is still refused as one: nothing was forgotten.
    let replay = Request::get(first_uri).header("authorization", first_auth).body(Body::empty()).unwrap();
    let got = w.send(replay).await;
    assert_eq!(got.status, 401, "{}", got.text());
    assert!(got.text().contains("replayed"), "{}", got.text());
}

// ---- exports ----

/// The issue: 8 identities × 4 finished exports each held all 32 of the node's export slots
/// for an hour. Here each of 8 identities holds every export its quota lets it; another
/// client still starts one.
#[tokio::test]
async fn a_few_identities_cannot_hold_every_export_slot() {
    const ATTACKERS: usize = 8;
    let w = world("medledger.api-quota-exports", ATTACKERS + 1).records().commit_wait_ms(0).build();
    let token_of = |keys: &Keypair| w.token_valid_for(keys, Role::Patient, "patient/*.rs", 600_000);
    let kick_off = |token: &str| {
        w.bearer("GET", "/fhir/Patient/$export", token).header("prefer", "respond-async").body(Body::empty()).unwrap()
    };
    let (victim, attackers) = (&w.patients[0], &w.patients[1..]);

    for attacker in attackers {
        let token = token_of(attacker);
        let mut held = 0;
        // Each attacker starts exports (each finishing at once: it may see no records) until
        // its quota refuses it.
        for _ in 0..8 {
            let got = w.send(kick_off(&token)).await;
            if got.status != 202 {
                assert_eq!(got.status, 429, "{}", got.text());
                assert_eq!(got.json()["resourceType"], "OperationOutcome", "{}", got.text());
                assert!(got.retry_after_s() >= 1);
                break;
            }
            held += 1;
            let status_url = got.headers["content-location"].to_str().unwrap().trim_start_matches(BASE).to_owned();
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            loop {
                let status = w.get(&token, &status_url).await;
                if status.status == 200 {
                    break;
                }
                assert_eq!(status.status, 202, "{}", status.text());
                assert!(std::time::Instant::now() < deadline, "the export finishes");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        assert!(held >= 1, "an attacker may hold an export of its own");
    }

    let got = w.send(kick_off(&token_of(victim))).await;
    assert_eq!(got.status, 202, "another client still starts an export: {}", got.text());
}
