//! The signed caller of a `/v1` request (`auth`): the body is read whole (up to
//! [`RECORD_BODY_BYTES_MAX`]) and the signature over it checked on the blocking pool; a
//! refusal is a 401, or a 429/503 when the caller or the node is over its nonce quota.

use axum::{body::Bytes, extract::Request, http::header};
use medledger_types::IdentityId;

use crate::{app::AppState, clock::now_ms, error::ApiError, http_limits::RECORD_BODY_BYTES_MAX};

/// Reads the body and authenticates the request; returns (identity, body).
pub(crate) async fn authenticated(app: &AppState, request: Request) -> Result<(IdentityId, Bytes), ApiError> {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, RECORD_BODY_BYTES_MAX)
        .await
        .map_err(|_| ApiError::PayloadTooLarge { max: RECORD_BODY_BYTES_MAX })?;
    let header = parts.headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let path = parts.uri.path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_default();
    let method = parts.method.as_str().to_owned();
    let (chain, auth) = (app.chain.clone(), app.auth.clone());
    let body_for_check = body.clone();
    let id = tokio::task::spawn_blocking(move || {
        auth.verify(&chain, header.as_deref(), &method, &path, &body_for_check, now_ms())
    })
    .await
    .map_err(|_| ApiError::Internal("authentication task failed".into()))?
    .map_err(|e| match e {
        crate::auth::AuthError::TooMany { retry_after_s, .. } => {
            ApiError::TooManyRequests { message: e.to_string(), retry_after_s }
        }
        crate::auth::AuthError::Saturated { retry_after_s } => {
            ApiError::Saturated { message: e.to_string(), retry_after_s }
        }
        _ => ApiError::Unauthorized(e.to_string()),
    })?;
    Ok((id, body))
}
