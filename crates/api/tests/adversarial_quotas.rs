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

use std::{sync::Arc, time::Duration};

use axum::{
    body::Body,
    http::{Request, Response},
};
use base64::Engine as _;
use medledger_api::{
    Services,
    auth::{NonceLimits, authorization},
    smart::{CLIENT_ASSERTION_TYPE, Grant, TokenLimits, TokenStore, parse_scope},
};
use medledger_blobs::MemoryBlobStore;
use medledger_crypto::Keypair;
use medledger_ledger::Payload;
use medledger_node::{chain::Chain, devnet::Devnet};
use medledger_records::RecordService;
use medledger_types::Role;
use serde_json::{Value, json};
use tower::ServiceExt;

const BASE: &str = "http://quota.test";

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

    /// `Retry-After` in seconds; panics when absent or not a number.
    fn retry_after_s(&self) -> u64 {
        let value = self.headers.get("retry-after").unwrap_or_else(|| panic!("no Retry-After: {}", self.text()));
        value.to_str().unwrap().parse().unwrap()
    }
}

/// One organisation's node with `n` patients registered by the organisation.
struct World {
    net: Devnet,
    chain: Arc<Chain>,
    patients: Vec<Keypair>,
    _dir: tempfile::TempDir,
}

impl World {
    fn new(label: &str, n: usize) -> Self {
        let net = Devnet::new(label, now_ms() - 60_000, &["Hospital A"], 1, &mut |l| Keypair::from_label(l));
        let dir = tempfile::tempdir().unwrap();
        let (chain, _) = Chain::open(dir.path(), &net.genesis, net.validators[0].clone(), &mut |_, _| {}).unwrap();
        let chain = Arc::new(chain);
        let org = net.organisations[0].clone();
        let t = now_ms();
        let patients: Vec<Keypair> = (0..n).map(|i| Keypair::from_label(&format!("{label}-patient-{i}"))).collect();
        for p in &patients {
            // Registered by the organisation, never self-registered.
            chain.submit_as(&org, Payload::register(Role::Patient, p, None, ""), t).unwrap();
        }
        medledger_node::devnet::commit_pending(&chain, net.validators[0].id(), t).unwrap();
        Self { net, chain, patients, _dir: dir }
    }

    fn router(&self, services: Services) -> axum::Router {
        medledger_api::router_for(self.chain.clone(), Services { public_bases: vec![BASE.into()], ..services })
    }
}

async fn send(router: &axum::Router, request: Request<Body>) -> Answer {
    let response: Response<Body> = router.clone().oneshot(request).await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = axum::body::to_bytes(response.into_body(), 16 << 20).await.unwrap().to_vec();
    Answer { status, headers, body }
}

// ---- tokens ----

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A fresh EdDSA client assertion of `keys` for this node's token endpoint.
fn assertion(keys: &Keypair, jti: &str) -> String {
    let header = json!({"alg": "EdDSA", "typ": "JWT"});
    let claims = json!({
        "iss": keys.id().to_hex(), "sub": keys.id().to_hex(), "aud": format!("{BASE}/auth/token"),
        "exp": now_ms() / 1000 + 120, "jti": jti,
    });
    let input = format!("{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()));
    let signature = keys.sign(input.as_bytes());
    format!("{input}.{}", b64(&signature.0))
}

async fn ask_token(router: &axum::Router, keys: &Keypair, jti: &str) -> Answer {
    let body = format!(
        "grant_type=client_credentials&scope=patient%2F%2A.rs&client_assertion_type={}&client_assertion={}",
        CLIENT_ASSERTION_TYPE.replace(':', "%3A"),
        assertion(keys, jti)
    );
    let request = Request::post("/auth/token")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Body::from(body))
        .unwrap();
    send(router, request).await
}

/// The issue: 1,600 identities × 64 token requests filled the node's 100,000 tokens and
/// assertion ids; the oldest tokens — every other client's — were evicted, and new tokens
/// were refused to everyone until the assertion ids expired. Scaled down: a node that holds
/// 1,000 tokens and 1,200 assertion ids, 20 identities × 64 requests.
#[tokio::test]
async fn one_identity_cannot_evict_other_clients_tokens() {
    const ATTACKERS: usize = 20;
    const REQUESTS_EACH: usize = 64;
    let w = World::new("medledger.api-quota-tokens", ATTACKERS + 2);
    let tokens =
        Arc::new(TokenStore::new(TokenLimits { tokens_max: 1_000, assertions_max: 1_200, ..TokenLimits::default() }));
    let router = w.router(Services { tokens: tokens.clone(), ..Services::default() });
    let (victim, latecomer, attackers) = (&w.patients[0], &w.patients[1], &w.patients[2..]);

    let got = ask_token(&router, victim, "victim-1").await;
    assert_eq!(got.status, 200, "{}", got.text());
    let victim_token = got.json()["access_token"].as_str().unwrap().to_owned();

    let mut refusals = Vec::new();
    let mut first_tokens = Vec::new();
    for attacker in attackers {
        let mut first_token = None;
        for i in 0..REQUESTS_EACH {
            let got = ask_token(&router, attacker, &format!("flood-{i}")).await;
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
    let got = ask_token(&router, victim, "victim-2").await;
    assert_eq!(got.status, 200, "the victim gets a new token: {}", got.text());
    let got = ask_token(&router, latecomer, "latecomer-1").await;
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
    Request::get(&path)
        .header("authorization", authorization(keys, &keys.id(), "GET", &path, b"", now_ms()))
        .body(Body::empty())
        .unwrap()
}

/// The issue: one identity's 1,020,000 signed requests filled the node's memory of a million
/// nonces, and every signed request from anyone then got 401 for ten minutes. Scaled down: a
/// node remembering 1,000 nonces, 1,020 requests of one identity.
#[tokio::test]
async fn one_identity_cannot_exhaust_request_nonce_memory() {
    let w = World::new("medledger.api-quota-nonces", 2);
    let router = w.router(Services {
        nonces: NonceLimits { per_identity_max: 300, remembered_max: 1_000 },
        ..Services::default()
    });
    let (victim, attacker) = (&w.patients[0], &w.patients[1]);

    // The first request's header, to replay once the flood is over.
    let first = own_records(attacker);
    let (first_uri, first_auth) = (first.uri().clone(), first.headers()["authorization"].clone());
    assert_eq!(send(&router, first).await.status, 200);
    let mut accepted = 1;
    let mut last_refusal = None;
    for _ in 1..1_020 {
        let got = send(&router, own_records(attacker)).await;
        match got.status {
            200 => accepted += 1,
            _ => last_refusal = Some(got),
        }
    }
    // Everyone else is unaffected.
    for _ in 0..5 {
        let got = send(&router, own_records(victim)).await;
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
    let got = send(&router, replay).await;
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
    let w = World::new("medledger.api-quota-exports", ATTACKERS + 1);
    let tokens = Arc::new(TokenStore::default());
    let service = Arc::new(RecordService::new(
        w.chain.clone(),
        w.net.validators[0].clone(),
        w.net.organisations[0].clone(),
        Arc::new(MemoryBlobStore::default()),
    ));
    let router = w.router(Services {
        records: Some(service),
        tokens: tokens.clone(),
        fhir_commit_wait_ms: 0,
        ..Services::default()
    });
    let token_of = |keys: &Keypair| {
        tokens.issue(Grant {
            identity: keys.id(),
            role: Role::Patient,
            signing_key: keys.public_key(),
            scopes: vec![parse_scope("patient/*.rs").unwrap()],
            expires_ms: now_ms() + 600_000,
        })
    };
    let kick_off = |token: &str| {
        Request::get("/fhir/Patient/$export")
            .header("authorization", format!("Bearer {token}"))
            .header("prefer", "respond-async")
            .body(Body::empty())
            .unwrap()
    };
    let (victim, attackers) = (&w.patients[0], &w.patients[1..]);

    for attacker in attackers {
        let token = token_of(attacker);
        let mut held = 0;
        // Each attacker starts exports (each finishing at once: it may see no records) until
        // its quota refuses it.
        for _ in 0..8 {
            let got = send(&router, kick_off(&token)).await;
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
                let poll = Request::get(&status_url)
                    .header("authorization", format!("Bearer {token}"))
                    .body(Body::empty())
                    .unwrap();
                let status = send(&router, poll).await;
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

    let got = send(&router, kick_off(&token_of(victim))).await;
    assert_eq!(got.status, 202, "another client still starts an export: {}", got.text());
}
