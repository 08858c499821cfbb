//! The crate's single error type and its conversion into a JSON response.

use axum::{
    Json,
    extract::rejection::{BytesRejection, PathRejection, QueryRejection},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use medledger_merkle::MerkleError;
use medledger_node::{NodeError, chain::SubmitError, mempool::MempoolError};
use serde::Serialize;

#[cfg(test)]
use medledger_fhir::outcome::ECHO_CHARS_MAX;

/// Why a request failed. Every variant maps to one 4xx/5xx status (see [`ApiError::status`])
/// and renders as `{"error": {"code": <status>, "message": <Display>}}`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// The request is malformed: bad path or query parameter, bad body encoding.
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("method {method} is not allowed on {path}")]
    MethodNotAllowed { method: String, path: String },
    #[error("request body exceeds the limit of {max} bytes")]
    PayloadTooLarge { max: usize },
    /// The request body did not arrive whole in time.
    #[error("the request body did not arrive within {timeout_ms} ms")]
    RequestTimeout { timeout_ms: u64 },
    #[error("unsupported content type {0}; send application/octet-stream or application/json")]
    UnsupportedMediaType(String),
    /// A submitted transaction was refused; the status depends on why.
    #[error(transparent)]
    Submit(#[from] SubmitError),
    /// A proof was asked for sizes or indices the log cannot prove.
    #[error("{0}")]
    Proof(#[from] MerkleError),
    /// Load shedding: too many requests in flight.
    #[error("too many concurrent requests; retry later")]
    Busy,
    #[error("{0}")]
    Unauthorized(String),
    /// Authenticated but not allowed; `reason` is the machine-readable code.
    #[error("{message}")]
    Forbidden { reason: &'static str, message: String },
    /// This node cannot serve the request (e.g. its organisation holds no key for the record).
    #[error("{0}")]
    Misdirected(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unavailable(String),
    /// The caller used its whole quota of something (429); `Retry-After` says when it has room.
    #[error("{message}")]
    TooManyRequests { message: String, retry_after_s: u64 },
    /// A node-wide cap is reached (503); `Retry-After` says when to try again.
    #[error("{message}")]
    Saturated { message: String, retry_after_s: u64 },
    #[error("{0}")]
    Node(#[from] NodeError),
    /// The node's disk is full (507): nothing was written; retry once space is freed.
    #[error("{0}")]
    StorageFull(String),
    #[error("internal error: {0}")]
    Internal(String),
}

/// What a client is told when the node's disk is full. The blob store's own message names a
/// path on the node's disk: that goes to the node's log, never to a client.
pub(crate) const STORAGE_FULL_MESSAGE: &str =
    "the node's disk is full: nothing was written; retry once the operator has freed space";

/// Logs a full disk's detail for the operator and returns what the client is told.
pub(crate) fn storage_full(detail: &dyn std::fmt::Display) -> &'static str {
    tracing::error!(%detail, "write refused: the disk is full");
    STORAGE_FULL_MESSAGE
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) | ApiError::Proof(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RequestTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Submit(SubmitError::Mempool(MempoolError::Full(_))) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Submit(SubmitError::Mempool(MempoolError::SignerOverQuota { .. })) => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ApiError::Submit(
                SubmitError::AlreadyCommitted
                | SubmitError::Mempool(MempoolError::NonceTaken(_) | MempoolError::Duplicate),
            ) => StatusCode::CONFLICT,
            ApiError::Submit(_) => StatusCode::BAD_REQUEST,
            ApiError::Busy | ApiError::Unavailable(_) | ApiError::Saturated { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ApiError::Misdirected(_) => StatusCode::MISDIRECTED_REQUEST,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::StorageFull(_) => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::Node(_) | ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Converts axum's body rejection (including the [`axum::extract::DefaultBodyLimit`] one)
    /// into our shape instead of axum's plain-text response.
    pub(crate) fn from_body(rejection: BytesRejection, max: usize) -> Self {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge { max }
        } else {
            ApiError::BadRequest(format!("cannot read the request body: {}", rejection.body_text()))
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        ApiError::BadRequest(format!("invalid path: {}", rejection.body_text()))
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::BadRequest(format!("invalid query string: {}", rejection.body_text()))
    }
}

/// The JSON error body.
#[derive(Debug, Serialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize)]
pub struct ErrorDetail {
    pub code: u16,
    pub message: String,
    /// Machine-readable reason of a refusal (403), e.g. `no-grant`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = self.to_string();
        let reason = match &self {
            ApiError::Forbidden { reason, .. } => Some(*reason),
            _ => None,
        };
        let retry_after_s = match &self {
            ApiError::TooManyRequests { retry_after_s, .. } | ApiError::Saturated { retry_after_s, .. } => {
                Some(*retry_after_s)
            }
            _ if status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::TOO_MANY_REQUESTS => Some(1),
            _ => None,
        };
        if status.is_server_error() {
            tracing::warn!(status = status.as_u16(), %message, "request failed");
        } else {
            tracing::debug!(status = status.as_u16(), %message, "request refused");
        }
        let mut response =
            (status, Json(ErrorBody { error: ErrorDetail { code: status.as_u16(), message, reason } })).into_response();
        if let Some(seconds) = retry_after_s {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// Client input quoted in a message: truncated, with control characters escaped (one
/// definition for the API and the record service's FHIR refusals).
pub(crate) use medledger_fhir::outcome::echo;

#[cfg(test)]
mod tests {
    use medledger_ledger::TxError;

    use super::*;

    #[test]
    fn statuses() {
        assert_eq!(ApiError::Submit(SubmitError::Mempool(MempoolError::Full(3))).status(), 503);
        assert_eq!(ApiError::Submit(SubmitError::Mempool(MempoolError::NonceTaken(4))).status(), 409);
        assert_eq!(ApiError::Submit(SubmitError::AlreadyCommitted).status(), 409);
        assert_eq!(ApiError::Submit(SubmitError::Invalid(TxError::BadSignature)).status(), 400);
        assert_eq!(ApiError::Proof(MerkleError::BadSizes { from: 0, to: 1 }).status(), 400);
        assert_eq!(ApiError::Node(NodeError::Corrupt("x".into())).status(), 500);
        let full = medledger_records::RecordError::Blobs(medledger_blobs::BlobError::StorageFull {
            path: "blobs".into(),
            source: std::io::Error::from(std::io::ErrorKind::StorageFull),
        });
        let fhir = crate::fhir::errors::FhirError::from(full);
        assert_eq!(fhir.status(), 507);
        assert!(fhir.issues().iter().all(|i| !i.to_string().contains("blobs")), "no path on the node's disk is shown");
        let full = medledger_records::RecordError::Blobs(medledger_blobs::BlobError::StorageFull {
            path: "blobs".into(),
            source: std::io::Error::from(std::io::ErrorKind::StorageFull),
        });
        let answer = ApiError::from(full);
        assert_eq!(answer.status(), 507);
        assert_eq!(answer.to_string(), STORAGE_FULL_MESSAGE, "no path on the node's disk is shown");
        assert_eq!(ApiError::TooManyRequests { message: String::new(), retry_after_s: 3 }.status(), 429);
        assert_eq!(ApiError::Saturated { message: String::new(), retry_after_s: 3 }.status(), 503);
    }

    #[test]
    fn echo_truncates_and_escapes() {
        assert_eq!(echo("a\nb"), "\"a\\nb\"");
        let long = "x".repeat(100);
        assert_eq!(echo(&long).chars().count(), ECHO_CHARS_MAX + 3);
    }
}
