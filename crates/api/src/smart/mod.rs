//! SMART Backend Services authorization (SMART App Launch 2.x, "backend services"): a client
//! that is an on-chain identity proves itself with a `client_assertion` JWT signed by its own
//! Ed25519 key (RFC 7523, `private_key_jwt`) and receives a short-lived opaque bearer token
//! carrying SMART v2 scopes. Scopes only ever narrow: consent (`records::access`) is enforced
//! on top of them for every resource.
//!
//! Which scopes an identity may hold follows its role: a patient only `patient/…` (its own
//! compartment), a practitioner only `user/…` (what the practitioner may see), an organisation
//! or system client `system/…`. Validators get no tokens.
//!
//! Tokens are random 256-bit values kept (as their SHA-256) in memory only: a restart logs
//! every client out, which is the safe failure for short-lived credentials. Each identity has
//! its own quota of live tokens and of token requests (`tokens.rs`): one client's flood only
//! ever replaces its own tokens, and is refused with 429 (`slow_down`) past its quota.
//!
//! Here: the token endpoint and the SMART configuration. Beside it: `scopes.rs` (scopes and
//! the [`Grant`] a token stands for), `tokens.rs` (the token store and its quotas) and
//! `bearer.rs` (a request's bearer grant, for the FHIR handlers). This module only re-exports
//! them for the crate's users; inside the crate they are imported from where they are.

use std::collections::HashMap;

use axum::{
    Json,
    extract::{Form, State, rejection::FormRejection},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use base64::Engine as _;
use medledger_crypto::{PublicKey, Signature};
use medledger_types::{IdentityId, Role, TimestampMs};
use serde_json::{Value, json};

pub(crate) mod bearer;
pub(crate) mod scopes;
pub(crate) mod tokens;

pub use scopes::{Context, Grant, Scope, ScopeError, interactions, parse_scope, supported_resource_type};
pub use tokens::{
    ASSERTION_LIFETIME_MAX_MS, ASSERTION_MEMORY_MS, ASSERTION_SKEW_MS, ASSERTIONS_MAX, ASSERTIONS_PER_IDENTITY_MAX,
    TOKENS_MAX, TOKENS_PER_IDENTITY_MAX, TokenLimits, TokenStore,
};

use crate::{app::AppState, clock::now_ms};
use tokens::Refusal;

/// Lifetime of an access token.
pub const TOKEN_TTL_MS: u64 = 5 * 60 * 1000;
/// Longest client assertion accepted, in bytes.
pub const ASSERTION_BYTES_MAX: usize = 8 * 1024;
/// Most scopes in one request.
pub const SCOPES_PER_REQUEST_MAX: usize = 64;

pub const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// An OAuth 2.0 error response (RFC 6749 §5.2).
#[derive(Debug)]
pub struct OAuthError {
    status: StatusCode,
    code: &'static str,
    description: String,
    /// `Retry-After` (seconds) of a refusal that passes with time.
    retry_after_s: Option<u64>,
}

impl OAuthError {
    fn new(code: &'static str, description: impl Into<String>) -> Self {
        let status = if code == "invalid_client" { StatusCode::UNAUTHORIZED } else { StatusCode::BAD_REQUEST };
        Self { status, code, description: description.into(), retry_after_s: None }
    }

    /// The token store's refusal of an otherwise valid request.
    fn refused(refusal: Refusal, limits: &TokenLimits) -> Self {
        let (status, code, description, retry_after_s) = match refusal {
            Refusal::Replayed => return Self::new("invalid_client", "this client_assertion (jti) was already used"),
            Refusal::IdentityQuota { retry_after_s } => (
                StatusCode::TOO_MANY_REQUESTS,
                "slow_down",
                format!(
                    "this client made {} token requests in the last {} minutes, its quota; reuse a token you hold \
                     (each lasts {} minutes) or retry in {retry_after_s} s",
                    limits.assertions_per_identity_max,
                    ASSERTION_MEMORY_MS / 60_000,
                    TOKEN_TTL_MS / 60_000
                ),
                retry_after_s,
            ),
            Refusal::NodeFull { retry_after_s } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                format!("this server holds as many tokens as it can; retry in {retry_after_s} s"),
                retry_after_s,
            ),
        };
        Self { status, code, description, retry_after_s: Some(retry_after_s) }
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let mut response =
            (self.status, Json(json!({"error": self.code, "error_description": self.description}))).into_response();
        no_store(response.headers_mut());
        if let Some(seconds) = self.retry_after_s {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

fn no_store(headers: &mut HeaderMap) {
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
}

/// The claims of a verified client assertion that matter here.
struct Assertion {
    issuer: IdentityId,
    jti: String,
}

fn b64(part: &str, what: &'static str) -> Result<Vec<u8>, OAuthError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| OAuthError::new("invalid_client", format!("client_assertion {what} is not base64url")))
}

/// A client assertion JWT whose form and claims are acceptable, its signature not yet checked.
#[doc(hidden)]
#[derive(Debug)]
pub struct ParsedAssertion<'a> {
    pub issuer: IdentityId,
    pub jti: String,
    /// `header.payload` as sent: what the signature covers.
    pub signing_input: &'a str,
    pub signature: Signature,
}

/// Parses a client assertion JWT (compact JWS, EdDSA) and checks its header and claims
/// (`aud` among `token_urls`, times against `now_ms`): everything `verify_assertion` does
/// before it looks up the issuer's key. Public only for the fuzz targets.
#[doc(hidden)]
pub fn parse_assertion<'a>(
    jwt: &'a str,
    token_urls: &[String],
    now_ms: TimestampMs,
) -> Result<ParsedAssertion<'a>, OAuthError> {
    let invalid = |m: &str| OAuthError::new("invalid_client", m.to_owned());
    if jwt.len() > ASSERTION_BYTES_MAX {
        return Err(invalid("client_assertion is too long"));
    }
    let mut parts = jwt.split('.');
    let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(invalid("client_assertion must be a compact JWS (header.payload.signature)"));
    };
    let header: Value = serde_json::from_slice(&b64(h, "header")?).map_err(|_| invalid("JWS header is not JSON"))?;
    if header["alg"] != "EdDSA" {
        return Err(invalid("client_assertion must be signed with alg EdDSA (Ed25519)"));
    }
    if header.get("typ").is_some_and(|t| !t.as_str().is_some_and(|t| t.eq_ignore_ascii_case("JWT"))) {
        return Err(invalid("client_assertion typ, when given, must be JWT"));
    }
    if header.get("crit").is_some() {
        return Err(invalid("JWS crit header parameters are not supported"));
    }
    let claims: Value = serde_json::from_slice(&b64(p, "payload")?).map_err(|_| invalid("JWT claims are not JSON"))?;
    let signature: [u8; 64] =
        b64(s, "signature")?.try_into().map_err(|_| invalid("an Ed25519 signature is 64 bytes"))?;
    let iss = claims["iss"].as_str().ok_or_else(|| invalid("iss (the client id) is missing"))?;
    if claims["sub"].as_str() != Some(iss) {
        return Err(invalid("sub must equal iss (the client id)"));
    }
    let issuer =
        IdentityId::from_hex(iss).map_err(|_| invalid("the client id is an identity id: 64 hex characters"))?;
    let aud_ok = match &claims["aud"] {
        Value::String(a) => token_urls.contains(a),
        Value::Array(all) => all.iter().any(|a| a.as_str().is_some_and(|a| token_urls.contains(&a.to_owned()))),
        _ => false,
    };
    if !aud_ok {
        return Err(invalid("aud must be this server's token endpoint URL"));
    }
    let exp_s = claims["exp"].as_u64().ok_or_else(|| invalid("exp is missing or not a number"))?;
    let expires_ms = exp_s.saturating_mul(1000);
    if expires_ms.saturating_add(ASSERTION_SKEW_MS) <= now_ms {
        return Err(invalid("client_assertion has expired"));
    }
    if expires_ms > now_ms + ASSERTION_LIFETIME_MAX_MS + ASSERTION_SKEW_MS {
        return Err(invalid("client_assertion exp is more than five minutes away"));
    }
    for claim in ["nbf", "iat"] {
        match claims.get(claim) {
            None => {}
            Some(v) => {
                let at_s = v.as_u64().ok_or_else(|| invalid("nbf and iat must be numbers (seconds)"))?;
                if at_s.saturating_mul(1000) > now_ms + ASSERTION_SKEW_MS {
                    return Err(invalid("client_assertion is not valid yet (nbf or iat in the future)"));
                }
            }
        }
    }
    let jti =
        claims["jti"].as_str().filter(|j| !j.is_empty() && j.len() <= 256).ok_or_else(|| invalid("jti is missing"))?;
    // `h.p` exactly as sent.
    let signing_input = &jwt[..h.len() + 1 + p.len()];
    Ok(ParsedAssertion { issuer, jti: jti.to_owned(), signing_input, signature: Signature(signature) })
}

/// Verifies a client assertion JWT (compact JWS, EdDSA) against the issuer's on-chain key.
fn verify_assertion(
    app: &AppState,
    jwt: &str,
    token_urls: &[String],
    now_ms: TimestampMs,
) -> Result<(Assertion, Role, PublicKey), OAuthError> {
    let ParsedAssertion { issuer, jti, signing_input, signature } = parse_assertion(jwt, token_urls, now_ms)?;
    let invalid = |m: &str| OAuthError::new("invalid_client", m.to_owned());
    let (key, role) = {
        let state = app.chain.snapshot();
        let who = state.identity(&issuer).ok_or_else(|| invalid("the client is not a registered identity"))?;
        (who.signing_key, who.role)
    };
    key.verify(signing_input.as_bytes(), &signature)
        .map_err(|_| invalid("client_assertion signature does not verify under the client's key"))?;
    Ok((Assertion { issuer, jti }, role, key))
}

/// The scope context an identity's role may hold.
fn context_of(role: Role) -> Option<Context> {
    match role {
        Role::Patient => Some(Context::Patient),
        Role::Practitioner => Some(Context::User),
        Role::Organisation | Role::SystemClient => Some(Context::System),
        _ => None,
    }
}

/// `POST /auth/token`: client credentials with a JWT client assertion.
pub(crate) async fn token(
    State(app): State<AppState>,
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Result<Response, OAuthError> {
    let Form(pairs) =
        form.map_err(|_| OAuthError::new("invalid_request", "send application/x-www-form-urlencoded parameters"))?;
    let mut params: HashMap<&str, &str> = HashMap::new();
    for (k, v) in &pairs {
        if params.insert(k.as_str(), v.as_str()).is_some() {
            return Err(OAuthError::new("invalid_request", format!("parameter {} given twice", crate::error::echo(k))));
        }
    }
    if params.get("grant_type") != Some(&"client_credentials") {
        return Err(OAuthError::new("unsupported_grant_type", "grant_type must be client_credentials"));
    }
    if params.get("client_assertion_type") != Some(&CLIENT_ASSERTION_TYPE) {
        return Err(OAuthError::new(
            "invalid_request",
            format!("client_assertion_type must be {CLIENT_ASSERTION_TYPE}"),
        ));
    }
    let jwt = params
        .get("client_assertion")
        .ok_or_else(|| OAuthError::new("invalid_request", "client_assertion is missing"))?;
    let scope_text = params.get("scope").copied().unwrap_or("");
    let requested: Vec<&str> = scope_text.split(' ').filter(|s| !s.is_empty()).collect();
    if requested.is_empty() {
        return Err(OAuthError::new("invalid_scope", "ask for at least one scope"));
    }
    if requested.len() > SCOPES_PER_REQUEST_MAX {
        return Err(OAuthError::new("invalid_scope", format!("at most {SCOPES_PER_REQUEST_MAX} scopes")));
    }
    let token_urls: Vec<String> = app.public_bases.iter().map(|b| format!("{b}/auth/token")).collect();
    let now = now_ms();
    let (assertion, role, signing_key) = verify_assertion(&app, jwt, &token_urls, now)?;
    let context = context_of(role)
        .ok_or_else(|| OAuthError::new("invalid_client", "this identity's role cannot hold API tokens"))?;
    // Unknown or other-context scopes are not granted; malformed ones are an error.
    let mut granted: Vec<Scope> = Vec::new();
    for text in requested {
        if matches!(text, "openid" | "fhirUser" | "offline_access" | "online_access") || text.starts_with("launch") {
            continue;
        }
        let scope = parse_scope(text).map_err(|e| OAuthError::new("invalid_scope", e.to_string()))?;
        if let Some(t) = &scope.resource_type
            && !supported_resource_type(t)
        {
            return Err(OAuthError::new(
                "invalid_scope",
                format!("resource type {} is not served here", crate::error::echo(t)),
            ));
        }
        if scope.context == context && !granted.contains(&scope) {
            granted.push(scope);
        }
    }
    if granted.is_empty() {
        return Err(OAuthError::new(
            "invalid_scope",
            format!("an identity with this role may hold only {}/… scopes", context.as_str()),
        ));
    }
    let scope_line = granted.iter().map(ToString::to_string).collect::<Vec<_>>().join(" ");
    let grant =
        Grant { identity: assertion.issuer, role, signing_key, scopes: granted, expires_ms: now + TOKEN_TTL_MS };
    let token = app
        .tokens
        .redeem(&assertion.jti, grant, now)
        .map_err(|refusal| OAuthError::refused(refusal, app.tokens.limits()))?;
    let mut response = Json(json!({
        "access_token": token,
        "token_type": "bearer",
        "expires_in": TOKEN_TTL_MS / 1000,
        "scope": scope_line,
    }))
    .into_response();
    no_store(response.headers_mut());
    Ok(response)
}

/// `GET /.well-known/smart-configuration`.
pub(crate) async fn configuration(State(app): State<AppState>) -> Response {
    // From configuration, never from the request's Host header (this answer is cacheable).
    let base = app.public_base();
    let mut response = Json(json!({
        "issuer": base,
        "token_endpoint": format!("{base}/auth/token"),
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["EdDSA"],
        "grant_types_supported": ["client_credentials"],
        "scopes_supported": ["patient/*.rs", "user/*.rs", "user/*.cruds", "system/*.rs", "system/*.cruds"],
        "capabilities": ["client-confidential-asymmetric", "permission-v2"],
    }))
    .into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=3600"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse_in_v2_and_v1_forms_and_render_as_v2() {
        let s = parse_scope("patient/*.rs").unwrap();
        assert_eq!((s.context, s.resource_type.clone(), s.interactions), (Context::Patient, None, 18));
        assert_eq!(s.to_string(), "patient/*.rs");
        assert_eq!(parse_scope("system/Observation.cruds").unwrap().to_string(), "system/Observation.cruds");
        assert_eq!(parse_scope("user/*.read").unwrap().to_string(), "user/*.rs");
        assert_eq!(parse_scope("user/Patient.write").unwrap().to_string(), "user/Patient.cud");
        assert_eq!(parse_scope("system/*.*").unwrap().to_string(), "system/*.cruds");
        for bad in [
            "patient/*.sr",
            "patient/*.rr",
            "patient/*.x",
            "patient/*.",
            "clinic/*.rs",
            "patient*.rs",
            "patient/Obs-1.r",
        ] {
            assert!(parse_scope(bad).is_err(), "{bad}");
        }
        assert!(matches!(parse_scope("patient/Observation.rs?category=laboratory"), Err(ScopeError::Granular(_))));
    }

    #[test]
    fn grants_allow_only_their_interactions_and_types() {
        let grant = Grant {
            identity: IdentityId::default(),
            role: Role::Practitioner,
            signing_key: PublicKey([0; 32]),
            scopes: vec![parse_scope("user/Observation.rs").unwrap(), parse_scope("user/*.c").unwrap()],
            expires_ms: 10,
        };
        assert!(grant.allows("Observation", interactions::READ));
        assert!(grant.allows("Observation", interactions::SEARCH));
        assert!(!grant.allows("Condition", interactions::READ));
        assert!(grant.allows("Condition", interactions::CREATE));
        assert!(!grant.allows("Observation", interactions::DELETE));
    }
}
