//! SMART backend-services authorization: `POST /auth/token` with EdDSA client assertions
//! signed by on-chain identities, scope narrowing by role, and every way an assertion or a
//! request can be wrong, each answered with the RFC 6749 error it deserves.

use std::sync::Arc;

use axum::{body::Body, http::Request};
use base64::Engine as _;
use medledger_api::{
    Services,
    smart::{CLIENT_ASSERTION_TYPE, TokenStore, interactions},
};
use medledger_crypto::Keypair;
use medledger_ledger::Payload;
use medledger_node::{chain::Chain, devnet::Devnet};
use medledger_types::Role;
use serde_json::{Value, json};
use tower::ServiceExt;

const HOST: &str = "node.test:8080";
const AUD: &str = "http://node.test:8080/auth/token";

fn now_s() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A compact JWS with `header` and `claims`, signed by `keys`.
fn jwt(keys: &Keypair, header: &Value, claims: &Value) -> String {
    let signing_input = format!("{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()));
    let signature = keys.sign(signing_input.as_bytes());
    format!("{signing_input}.{}", b64(&signature.0))
}

fn claims(keys: &Keypair, jti: &str) -> Value {
    json!({"iss": keys.id().to_hex(), "sub": keys.id().to_hex(), "aud": AUD, "exp": now_s() + 120, "jti": jti})
}

fn eddsa() -> Value {
    json!({"alg": "EdDSA", "typ": "JWT"})
}

struct World {
    router: axum::Router,
    tokens: Arc<TokenStore>,
    net: Devnet,
    patient: Keypair,
    doc: Keypair,
    _dir: tempfile::TempDir,
}

impl World {
    fn new() -> Self {
        let now_ms = now_s() * 1000;
        let net =
            Devnet::new("medledger.api-smart", now_ms - 60_000, &["Hospital A"], 1, &mut |l| Keypair::from_label(l));
        let dir = tempfile::tempdir().unwrap();
        let (chain, _) = Chain::open(dir.path(), &net.genesis, net.validators[0].clone(), &mut |_, _| {}).unwrap();
        let chain = Arc::new(chain);
        let org = net.organisations[0].clone();
        let doc = Keypair::from_label("smart-doctor");
        let patient = Keypair::from_label("smart-patient");
        chain.submit_as(&org, Payload::register(Role::Practitioner, &doc, Some(org.id()), "Dr S"), now_ms).unwrap();
        chain.submit_as(&org, Payload::register(Role::Patient, &patient, None, ""), now_ms).unwrap();
        medledger_node::devnet::commit_pending(&chain, net.validators[0].id(), now_ms).unwrap();
        let tokens = Arc::new(TokenStore::default());
        let router = medledger_api::router_for(
            chain,
            Services {
                tokens: tokens.clone(),
                public_bases: vec!["http://node.test:8080".into()],
                ..Services::default()
            },
        );
        Self { router, tokens, net, patient, doc, _dir: dir }
    }

    async fn post_form(&self, body: &str) -> (u16, Value, Option<String>) {
        let request = Request::post("/auth/token")
            .header("host", HOST)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Body::from(body.to_owned()))
            .unwrap();
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status().as_u16();
        let cache = response.headers().get("cache-control").map(|v| v.to_str().unwrap().to_owned());
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null), cache)
    }

    async fn token(&self, assertion: &str, scope: &str) -> (u16, Value) {
        let body = format!(
            "grant_type=client_credentials&scope={}&client_assertion_type={}&client_assertion={assertion}",
            scope.replace(' ', "+").replace('/', "%2F").replace('*', "%2A"),
            CLIENT_ASSERTION_TYPE.replace(':', "%3A"),
        );
        let (status, json, _) = self.post_form(&body).await;
        (status, json)
    }
}

fn error_of(v: &Value) -> &str {
    v["error"].as_str().unwrap_or("")
}

#[tokio::test]
async fn identities_get_tokens_with_the_scopes_their_role_allows() {
    let w = World::new();
    // A patient asks for patient and user scopes: only its own compartment is granted.
    let assertion = jwt(&w.patient, &eddsa(), &claims(&w.patient, "p-1"));
    let (status, body) = w.token(&assertion, "patient/*.rs user/*.rs openid").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "bearer");
    assert_eq!(body["scope"], "patient/*.rs");
    assert_eq!(body["expires_in"], 300);
    let grant = w.tokens.lookup(body["access_token"].as_str().unwrap(), now_s() * 1000).expect("token is live");
    assert_eq!((grant.identity, grant.role), (w.patient.id(), Role::Patient));
    assert!(grant.allows("Observation", interactions::SEARCH) && !grant.allows("Observation", interactions::CREATE));

    // The same assertion twice: refused (jti replay).
    let (status, body) = w.token(&assertion, "patient/*.rs").await;
    assert_eq!((status, error_of(&body)), (401, "invalid_client"), "{body}");

    // A practitioner gets user scopes in SMART v2 form, v1 requests included.
    let assertion = jwt(&w.doc, &eddsa(), &claims(&w.doc, "d-1"));
    let (status, body) = w.token(&assertion, "user/Observation.read user/Patient.cruds").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["scope"], "user/Observation.rs user/Patient.cruds");

    // The organisation itself: system scopes only; asking only for patient scopes is refused.
    let org = w.net.organisations[0].clone();
    let (status, body) = w.token(&jwt(&org, &eddsa(), &claims(&org, "o-1")), "patient/*.rs").await;
    assert_eq!((status, error_of(&body)), (400, "invalid_scope"), "{body}");
    let (status, body) = w.token(&jwt(&org, &eddsa(), &claims(&org, "o-2")), "system/*.cruds").await;
    assert_eq!((status, body["scope"].as_str()), (200, Some("system/*.cruds")), "{body}");

    // Validators hold no API tokens.
    let validator = w.net.validators[0].clone();
    let (status, body) = w.token(&jwt(&validator, &eddsa(), &claims(&validator, "v-1")), "system/*.rs").await;
    assert_eq!((status, error_of(&body)), (401, "invalid_client"), "{body}");
}

#[tokio::test]
async fn bad_assertions_are_refused_as_invalid_client() {
    let w = World::new();
    let p = &w.patient;
    let stranger = Keypair::from_label("not-registered");
    let mut cases: Vec<(&str, String)> = Vec::new();
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = claims(p, "x");
        f(&mut c);
        jwt(p, &eddsa(), &c)
    };
    cases.push(("wrong audience", with(&|c| c["aud"] = json!("http://elsewhere/auth/token"))));
    cases.push(("expired", with(&|c| c["exp"] = json!(now_s() - 600))));
    cases.push(("exp too far ahead", with(&|c| c["exp"] = json!(now_s() + 3600))));
    cases.push(("not yet valid", with(&|c| c["nbf"] = json!(now_s() + 600))));
    cases.push(("issued in the future", with(&|c| c["iat"] = json!(now_s() + 600))));
    cases.push(("nbf not a number", with(&|c| c["nbf"] = json!("soon"))));
    cases.push(("exp overflowing", with(&|c| c["exp"] = json!(u64::MAX / 1000))));
    cases.push(("sub differs", with(&|c| c["sub"] = json!(stranger.id().to_hex()))));
    cases.push(("no jti", with(&|c| c["jti"] = json!(null))));
    cases.push(("iss not an id", with(&|c| c["iss"] = json!("my-app"))));
    cases.push(("signed by another key", jwt(&stranger, &eddsa(), &claims(p, "y"))));
    cases.push(("unregistered client", jwt(&stranger, &eddsa(), &claims(&stranger, "z"))));
    cases.push(("HS256", jwt(p, &json!({"alg": "HS256"}), &claims(p, "h"))));
    cases.push(("typ not JWT", jwt(p, &json!({"alg": "EdDSA", "typ": "dpop+jwt"}), &claims(p, "typ"))));
    cases.push(("alg none", {
        let j = jwt(p, &json!({"alg": "none"}), &claims(p, "n"));
        format!("{}.", j.rsplit_once('.').unwrap().0)
    }));
    cases.push(("two parts", "abc.def".to_owned()));
    cases.push(("not base64", "!!.!!.!!".to_owned()));
    cases.push(("tampered claims", {
        let good = jwt(p, &eddsa(), &claims(p, "t"));
        let parts: Vec<&str> = good.split('.').collect();
        let mut c = claims(p, "t");
        c["exp"] = json!(now_s() + 200);
        format!("{}.{}.{}", parts[0], b64(c.to_string().as_bytes()), parts[2])
    }));
    // A Host header naming another server does not make its audience acceptable here: the
    // audience is this node's configured URL, never the request's.
    let foreign = {
        let mut c = claims(p, "host-spoof");
        c["aud"] = json!("http://elsewhere.example/auth/token");
        jwt(p, &eddsa(), &c)
    };
    let body = format!(
        "grant_type=client_credentials&scope=patient%2F%2A.rs&client_assertion_type={}&client_assertion={foreign}",
        CLIENT_ASSERTION_TYPE.replace(':', "%3A")
    );
    let request = Request::post("/auth/token")
        .header("host", "elsewhere.example")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Body::from(body))
        .unwrap();
    let response = w.router.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status().as_u16(), 401, "a spoofed Host must not widen the accepted audience");
    for (what, assertion) in cases {
        let (status, body) = w.token(&assertion, "patient/*.rs").await;
        assert_eq!((status, error_of(&body)), (401, "invalid_client"), "{what}: {body}");
        assert!(!body["error_description"].as_str().unwrap_or("").is_empty(), "{what}");
    }
}

#[tokio::test]
async fn malformed_requests_and_scopes_get_oauth_errors() {
    let w = World::new();
    let good = || jwt(&w.patient, &eddsa(), &claims(&w.patient, &format!("j{}", rand::random::<u64>())));
    let assertion_type = CLIENT_ASSERTION_TYPE.replace(':', "%3A");
    let cases = [
        (
            format!("grant_type=password&client_assertion_type={assertion_type}&client_assertion={}", good()),
            400,
            "unsupported_grant_type",
        ),
        ("grant_type=client_credentials&scope=patient%2F%2A.rs".to_owned(), 400, "invalid_request"),
        (
            format!(
                "grant_type=client_credentials&grant_type=client_credentials&client_assertion_type={assertion_type}&client_assertion={}",
                good()
            ),
            400,
            "invalid_request",
        ),
        (
            format!("grant_type=client_credentials&client_assertion_type=jwt&client_assertion={}", good()),
            400,
            "invalid_request",
        ),
    ];
    for (body, status, error) in cases {
        let (got, json, cache) = w.post_form(&body).await;
        assert_eq!((got, error_of(&json)), (status, error), "{body}: {json}");
        assert_eq!(cache.as_deref(), Some("no-store"));
    }
    for (scope, why) in [
        ("", "no scope"),
        ("patient/Observation.rs?category=laboratory", "granular"),
        ("patient/Coverage.rs", "unsupported type"),
        ("patient/*.sr", "bad letters"),
        ("banana", "not a scope"),
    ] {
        let (status, body) = w.token(&good(), scope).await;
        assert_eq!((status, error_of(&body)), (400, "invalid_scope"), "{why}: {body}");
    }
    // A JSON body instead of a form.
    let request = Request::post("/auth/token")
        .header("host", HOST)
        .header("content-type", "application/json")
        .body(Body::from("{}"))
        .unwrap();
    let response = w.router.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status().as_u16(), 400);
}

#[tokio::test]
async fn smart_configuration_names_the_token_endpoint_and_eddsa() {
    let w = World::new();
    let request = Request::get("/.well-known/smart-configuration").header("host", HOST).body(Body::empty()).unwrap();
    let response = w.router.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let body: Value =
        serde_json::from_slice(&axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap()).unwrap();
    assert_eq!(body["token_endpoint"], AUD);
    assert_eq!(body["token_endpoint_auth_methods_supported"], json!(["private_key_jwt"]));
    assert_eq!(body["token_endpoint_auth_signing_alg_values_supported"], json!(["EdDSA"]));
    assert!(body["capabilities"].as_array().unwrap().contains(&json!("permission-v2")));
}
