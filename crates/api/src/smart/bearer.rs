//! The bearer grant of a FHIR request: the token of its `Authorization: Bearer` header, known,
//! unexpired, and still held under the key and role it was issued under.

use axum::http::{HeaderMap, header};
use medledger_types::TimestampMs;

use crate::{app::AppState, smart::scopes::Grant};

/// The bearer grant of a request, or why not (for the FHIR endpoints): a known, unexpired
/// token whose identity still holds the key (and role) it was issued under. A token that
/// outlived a rotation of its identity's key is forgotten.
pub(crate) fn bearer(app: &AppState, headers: &HeaderMap, now_ms: TimestampMs) -> Result<Grant, &'static str> {
    let value = headers.get(header::AUTHORIZATION).ok_or("missing Authorization: Bearer token")?;
    let text = value.to_str().map_err(|_| "malformed Authorization header")?;
    let (scheme, token) = text.split_once(' ').ok_or("malformed Authorization header")?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err("use Authorization: Bearer <token> from /auth/token");
    }
    let token = token.trim();
    let grant = app.tokens.lookup(token, now_ms).ok_or("the bearer token is unknown or expired")?;
    let current = grant.is_current(&app.chain.snapshot());
    if !current {
        app.tokens.revoke(token);
        return Err("the bearer token was issued under a key its identity has since replaced; get a new one");
    }
    Ok(grant)
}
