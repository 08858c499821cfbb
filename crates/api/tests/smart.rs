//! SMART backend-services authorization: `POST /auth/token` with EdDSA client assertions
//! signed by on-chain identities, scope narrowing by role, and every way an assertion or a
//! request can be wrong, each answered with the RFC 6749 error it deserves.

use axum::{body::Body, http::Request};
use medledger_api::smart::{CLIENT_ASSERTION_TYPE, interactions};
use medledger_crypto::Keypair;
use medledger_types::Role;
use serde_json::{Value, json};

mod common;

use common::{
    now_ms,
    request::{assertion_claims, b64, eddsa_header, jwt},
    world::World,
};

const AUD: &str = "http://node.test:8080/auth/token";

fn now_s() -> u64 {
    now_ms() / 1000
}

/// Hospital A's node, reached at `http://node.test:8080`, with one practitioner and one patient.
fn world() -> World {
    World::builder("medledger.api-smart")
        .practitioner("smart-doctor", 0, "Dr S")
        .patients(&["smart-patient"])
        .public_base("http://node.test:8080")
        .build()
}

fn error_of(v: &Value) -> &str {
    v["error"].as_str().unwrap_or("")
}

#[tokio::test]
async fn identities_get_tokens_with_the_scopes_their_role_allows() {
    let w = world();
    // A patient asks for patient and user scopes: only its own compartment is granted.
    let assertion = jwt(w.patient(), &eddsa_header(), &assertion_claims(w.patient(), AUD, "p-1"));
    let (status, body) = w.redeem(&assertion, "patient/*.rs user/*.rs openid").await.status_json();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "bearer");
    assert_eq!(body["scope"], "patient/*.rs");
    assert_eq!(body["expires_in"], 300);
    let grant = w.tokens.lookup(body["access_token"].as_str().unwrap(), now_s() * 1000).expect("token is live");
    assert_eq!((grant.identity, grant.role), (w.patient().id(), Role::Patient));
    assert!(grant.allows("Observation", interactions::SEARCH) && !grant.allows("Observation", interactions::CREATE));

    // The same assertion twice: refused (jti replay).
    let (status, body) = w.redeem(&assertion, "patient/*.rs").await.status_json();
    assert_eq!((status, error_of(&body)), (401, "invalid_client"), "{body}");

    // A practitioner gets user scopes in SMART v2 form, v1 requests included.
    let assertion = jwt(w.doc_a(), &eddsa_header(), &assertion_claims(w.doc_a(), AUD, "d-1"));
    let (status, body) = w.redeem(&assertion, "user/Observation.read user/Patient.cruds").await.status_json();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["scope"], "user/Observation.rs user/Patient.cruds");

    // The organisation itself: system scopes only; asking only for patient scopes is refused.
    let org = w.net.organisations[0].clone();
    let (status, body) =
        w.redeem(&jwt(&org, &eddsa_header(), &assertion_claims(&org, AUD, "o-1")), "patient/*.rs").await.status_json();
    assert_eq!((status, error_of(&body)), (400, "invalid_scope"), "{body}");
    let (status, body) = w
        .redeem(&jwt(&org, &eddsa_header(), &assertion_claims(&org, AUD, "o-2")), "system/*.cruds")
        .await
        .status_json();
    assert_eq!((status, body["scope"].as_str()), (200, Some("system/*.cruds")), "{body}");

    // Validators hold no API tokens.
    let validator = w.net.validators[0].clone();
    let (status, body) = w
        .redeem(&jwt(&validator, &eddsa_header(), &assertion_claims(&validator, AUD, "v-1")), "system/*.rs")
        .await
        .status_json();
    assert_eq!((status, error_of(&body)), (401, "invalid_client"), "{body}");
}

#[tokio::test]
async fn bad_assertions_are_refused_as_invalid_client() {
    let w = world();
    let p = w.patient();
    let stranger = Keypair::from_label("not-registered");
    let mut cases: Vec<(&str, String)> = Vec::new();
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = assertion_claims(p, AUD, "x");
        f(&mut c);
        jwt(p, &eddsa_header(), &c)
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
    cases.push(("signed by another key", jwt(&stranger, &eddsa_header(), &assertion_claims(p, AUD, "y"))));
    cases.push(("unregistered client", jwt(&stranger, &eddsa_header(), &assertion_claims(&stranger, AUD, "z"))));
    cases.push(("HS256", jwt(p, &json!({"alg": "HS256"}), &assertion_claims(p, AUD, "h"))));
    cases.push(("typ not JWT", jwt(p, &json!({"alg": "EdDSA", "typ": "dpop+jwt"}), &assertion_claims(p, AUD, "typ"))));
    cases.push(("alg none", {
        let j = jwt(p, &json!({"alg": "none"}), &assertion_claims(p, AUD, "n"));
        format!("{}.", j.rsplit_once('.').unwrap().0)
    }));
    cases.push(("two parts", "abc.def".to_owned()));
    cases.push(("not base64", "!!.!!.!!".to_owned()));
    cases.push(("tampered claims", {
        let good = jwt(p, &eddsa_header(), &assertion_claims(p, AUD, "t"));
        let parts: Vec<&str> = good.split('.').collect();
        let mut c = assertion_claims(p, AUD, "t");
        c["exp"] = json!(now_s() + 200);
        format!("{}.{}.{}", parts[0], b64(c.to_string().as_bytes()), parts[2])
    }));
    // A Host header naming another server does not make its audience acceptable here: the
    // audience is this node's configured URL, never the request's.
    let foreign = {
        let mut c = assertion_claims(p, AUD, "host-spoof");
        c["aud"] = json!("http://elsewhere.example/auth/token");
        jwt(p, &eddsa_header(), &c)
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
    assert_eq!(w.send(request).await.status, 401, "a spoofed Host must not widen the accepted audience");
    for (what, assertion) in cases {
        let (status, body) = w.redeem(&assertion, "patient/*.rs").await.status_json();
        assert_eq!((status, error_of(&body)), (401, "invalid_client"), "{what}: {body}");
        assert!(!body["error_description"].as_str().unwrap_or("").is_empty(), "{what}");
    }
}

#[tokio::test]
async fn malformed_requests_and_scopes_get_oauth_errors() {
    let w = world();
    let good = || {
        jwt(w.patient(), &eddsa_header(), &assertion_claims(w.patient(), AUD, &format!("j{}", rand::random::<u64>())))
    };
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
        let answer = w.post_form(&body).await;
        let (got, json) = answer.status_json();
        assert_eq!((got, error_of(&json)), (status, error), "{body}: {json}");
        assert_eq!(answer.header("cache-control"), Some("no-store"));
    }
    for (scope, why) in [
        ("", "no scope"),
        ("patient/Observation.rs?category=laboratory", "granular"),
        ("patient/Coverage.rs", "unsupported type"),
        ("patient/*.sr", "bad letters"),
        ("banana", "not a scope"),
    ] {
        let (status, body) = w.redeem(&good(), scope).await.status_json();
        assert_eq!((status, error_of(&body)), (400, "invalid_scope"), "{why}: {body}");
    }
    // A JSON body instead of a form.
    let request = w.request("POST", "/auth/token").header("content-type", "application/json").body(Body::from("{}"));
    assert_eq!(w.send(request.unwrap()).await.status, 400);
}

#[tokio::test]
async fn smart_configuration_names_the_token_endpoint_and_eddsa() {
    let w = world();
    let answer = w.send(w.request("GET", "/.well-known/smart-configuration").body(Body::empty()).unwrap()).await;
    assert_eq!(answer.status, 200);
    let body = answer.json();
    assert_eq!(body["token_endpoint"], AUD);
    assert_eq!(body["token_endpoint_auth_methods_supported"], json!(["private_key_jwt"]));
    assert_eq!(body["token_endpoint_auth_signing_alg_values_supported"], json!(["EdDSA"]));
    assert!(body["capabilities"].as_array().unwrap().contains(&json!("permission-v2")));
}
