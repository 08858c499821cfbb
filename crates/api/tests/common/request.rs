//! Requests as the API's clients send them, and what they get back. Signed requests
//! (`/v1`, `Authorization: Medledger-Ed25519 …`) are signed when built, so each is fresh (a
//! replay must reuse the built request). Bearer tokens are issued straight into the world's
//! token store ([`World::token`]) or asked for at `/auth/token` with an EdDSA client assertion
//! ([`World::ask_token`]). Requests the world sends carry the `Host` of its first public base,
//! as a client reaching the node there would (the API never reads it).

use axum::{
    body::Body,
    http::{HeaderMap, Request, request::Builder},
};
use base64::Engine as _;
use medledger_api::{
    auth::authorization,
    smart::{CLIENT_ASSERTION_TYPE, Grant, parse_scope},
};
use medledger_crypto::Keypair;
use medledger_types::Role;
use serde_json::{Value, json};
use tower::ServiceExt;

use super::{fhir::FHIR, now_ms, world::World};

/// An answer of the API: status, headers and the whole body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Answer {
    /// The body as JSON, `Null` if it is none.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// The status and the body as JSON, to compare or destructure at once.
    pub fn status_json(&self) -> (u16, Value) {
        (self.status, self.json())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The OperationOutcome's first issue code; asserts the body is an OperationOutcome.
    pub fn issue(&self) -> String {
        let v = self.json();
        assert_eq!(v["resourceType"], "OperationOutcome", "{}", self.text());
        v["issue"][0]["code"].as_str().unwrap_or("").to_owned()
    }

    /// [`Answer::issue`], asserting too that the outcome came as FHIR JSON.
    pub fn fhir_issue(&self) -> String {
        let v = self.json();
        assert_eq!(v["resourceType"], "OperationOutcome", "{}", self.text());
        assert_eq!(self.header("content-type"), Some("application/fhir+json; charset=utf-8"));
        v["issue"][0]["code"].as_str().unwrap_or("").to_owned()
    }

    /// `Retry-After` in seconds; panics when absent or not a number.
    pub fn retry_after_s(&self) -> u64 {
        let value = self.headers.get("retry-after").unwrap_or_else(|| panic!("no Retry-After: {}", self.text()));
        value.to_str().unwrap().parse().unwrap()
    }
}

/// Sends `request` through `router` and reads the whole answer.
pub async fn send(router: &axum::Router, request: Request<Body>) -> Answer {
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap().to_vec();
    Answer { status, headers, body }
}

/// A request signed now by `keys` for its own identity, over `method`, `path` and `body`.
pub fn signed_request(method: &str, path: &str, keys: &Keypair, body: &[u8]) -> Builder {
    let header = authorization(keys, &keys.id(), method, path, body, now_ms());
    Request::builder().method(method).uri(path).header("authorization", header)
}

// ---- client assertions (SMART backend services) ----

/// Base64url without padding, as JWTs use it.
pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A compact JWS with `header` and `claims`, signed by `keys`.
pub fn jwt(keys: &Keypair, header: &Value, claims: &Value) -> String {
    let signing_input = format!("{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()));
    let signature = keys.sign(signing_input.as_bytes());
    format!("{signing_input}.{}", b64(&signature.0))
}

/// The JOSE header of an EdDSA-signed JWT.
pub fn eddsa_header() -> Value {
    json!({"alg": "EdDSA", "typ": "JWT"})
}

/// The claims of `keys`' client assertion for the token endpoint `audience`, valid for two
/// minutes.
pub fn assertion_claims(keys: &Keypair, audience: &str, jti: &str) -> Value {
    json!({
        "iss": keys.id().to_hex(), "sub": keys.id().to_hex(), "aud": audience,
        "exp": now_ms() / 1000 + 120, "jti": jti,
    })
}

/// A fresh EdDSA client assertion of `keys` for the token endpoint `audience`.
pub fn client_assertion(keys: &Keypair, audience: &str, jti: &str) -> String {
    jwt(keys, &eddsa_header(), &assertion_claims(keys, audience, jti))
}

/// The form body of a client-credentials token request for `scope` (space separated).
pub fn token_form(scope: &str, assertion: &str) -> String {
    format!(
        "grant_type=client_credentials&scope={}&client_assertion_type={}&client_assertion={assertion}",
        scope.replace(' ', "+").replace('/', "%2F").replace('*', "%2A"),
        CLIENT_ASSERTION_TYPE.replace(':', "%3A"),
    )
}

impl World {
    /// The host of the first public base, if there is one.
    fn host(&self) -> Option<&str> {
        let base = self.services.public_bases.first()?;
        Some(base.split_once("://").map_or(base.as_str(), |(_, rest)| rest))
    }

    /// A request to this world's node, with its `Host`.
    pub fn request(&self, method: &str, path: &str) -> Builder {
        let request = Request::builder().method(method).uri(path);
        match self.host() {
            Some(host) => request.header("host", host),
            None => request,
        }
    }

    /// A request to this world's node with `Authorization: Bearer <token>`.
    pub fn bearer(&self, method: &str, path: &str, token: &str) -> Builder {
        self.request(method, path).header("authorization", format!("Bearer {token}"))
    }

    /// The token endpoint's URL under the first public base (an assertion's audience).
    pub fn token_endpoint(&self) -> String {
        format!("{}/auth/token", self.services.public_bases.first().expect("a world with a public base"))
    }

    pub async fn send(&self, request: Request<Body>) -> Answer {
        send(&self.router, request).await
    }

    /// A bearer token for `who` acting in `role` with `scope` (space separated), issued by the
    /// node itself (as `medledger dev` does), valid for a minute.
    pub fn token(&self, who: &Keypair, role: Role, scope: &str) -> String {
        self.token_valid_for(who, role, scope, 60_000)
    }

    /// [`World::token`] valid for `valid_ms`.
    pub fn token_valid_for(&self, who: &Keypair, role: Role, scope: &str, valid_ms: u64) -> String {
        let scopes = scope.split(' ').map(|s| parse_scope(s).unwrap()).collect();
        self.tokens.issue(Grant {
            identity: who.id(),
            role,
            signing_key: who.public_key(),
            scopes,
            expires_ms: now_ms() + valid_ms,
        })
    }

    /// `POST /auth/token` with the form `body`.
    pub async fn post_form(&self, body: &str) -> Answer {
        let request = self
            .request("POST", "/auth/token")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Body::from(body.to_owned()))
            .unwrap();
        self.send(request).await
    }

    /// Asks `/auth/token` for `scope` with `assertion`.
    pub async fn redeem(&self, assertion: &str, scope: &str) -> Answer {
        self.post_form(&token_form(scope, assertion)).await
    }

    /// Asks `/auth/token` for `scope` as `who`, with a fresh assertion named `jti`.
    pub async fn ask_token(&self, who: &Keypair, scope: &str, jti: &str) -> Answer {
        self.redeem(&client_assertion(who, &self.token_endpoint(), jti), scope).await
    }

    /// A bearer token for `who` from `/auth/token`, as a real client gets one.
    pub async fn token_from_endpoint(&self, who: &Keypair, scope: &str) -> String {
        let answer = self.ask_token(who, scope, &format!("jti-{}", rand::random::<u64>())).await;
        assert_eq!(answer.status, 200, "{}", answer.text());
        answer.json()["access_token"].as_str().unwrap().to_owned()
    }

    /// A FHIR interaction as `token`; a body goes as FHIR JSON.
    pub async fn fhir(&self, method: &str, token: &str, path: &str, body: Option<&str>) -> Answer {
        let mut request = self.bearer(method, path, token);
        if body.is_some() {
            request = request.header("content-type", FHIR);
        }
        self.send(request.body(Body::from(body.unwrap_or("").to_owned())).unwrap()).await
    }

    pub async fn get(&self, token: &str, path: &str) -> Answer {
        self.fhir("GET", token, path, None).await
    }

    /// A GET without any credentials.
    pub async fn get_anonymous(&self, path: &str) -> Answer {
        self.send(self.request("GET", path).body(Body::empty()).unwrap()).await
    }

    pub async fn post(&self, token: &str, path: &str, body: &str) -> Answer {
        self.fhir("POST", token, path, Some(body)).await
    }

    /// A PUT, conditional on `If-Match: <if_match>` when given.
    pub async fn put(&self, token: &str, path: &str, if_match: Option<&str>, body: &str) -> Answer {
        let mut request = self.bearer("PUT", path, token).header("content-type", FHIR);
        if let Some(tag) = if_match {
            request = request.header("if-match", tag);
        }
        self.send(request.body(Body::from(body.to_owned())).unwrap()).await
    }

    pub async fn delete(&self, token: &str, path: &str) -> Answer {
        self.fhir("DELETE", token, path, None).await
    }

    /// Creates a resource through the FHIR API as `token` and commits it; its id.
    pub async fn create(&self, token: &str, resource_type: &str, body: &str) -> String {
        let created = self.post(token, &format!("/fhir/{resource_type}"), body).await;
        assert_eq!(created.status, 201, "{}", created.text());
        self.commit();
        created.json()["id"].as_str().unwrap().to_owned()
    }

    /// A `/v1` request, signed by `keys` when given.
    pub async fn call(&self, method: &str, path: &str, keys: Option<&Keypair>, body: &[u8]) -> Answer {
        let mut request = self.request(method, path);
        if let Some(keys) = keys {
            request = request.header("authorization", authorization(keys, &keys.id(), method, path, body, now_ms()));
        }
        self.send(request.body(Body::from(body.to_vec())).unwrap()).await
    }

    /// A GET (signed by `keys` when given) that must answer 200 with JSON; the JSON.
    pub async fn get_json(&self, path: &str, keys: Option<&Keypair>) -> Value {
        let answer = self.call("GET", path, keys, b"").await;
        assert_eq!(answer.status, 200, "{path}: {}", answer.text());
        serde_json::from_slice(&answer.body).unwrap()
    }
}
