//! What the FHIR handlers parse of a request besides its credentials: the content type of a
//! body, an `If-Match` version, and a logical id (a record id in hex; anything else names
//! nothing here).

use axum::http::{HeaderMap, StatusCode, header};
use medledger_fhir::IssueCode;
use medledger_types::RecordId;

use crate::fhir::errors::{FhirError, not_found};

pub(crate) fn parse_id(id: &str) -> Result<RecordId, FhirError> {
    RecordId::from_hex(id).map_err(|_| not_found(format!("no resource with id {}", crate::error::echo(id))))
}

pub(crate) fn check_content_type(headers: &HeaderMap) -> Result<(), FhirError> {
    let value = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let essence = value.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if essence == "application/fhir+json" || essence == "application/json" {
        return Ok(());
    }
    Err(FhirError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        IssueCode::NotSupported,
        format!("send application/fhir+json, not {}", crate::error::echo(value)),
    ))
}

/// The version an `If-Match` header names (`W/"3"` or `"3"`), if there is one.
pub(crate) fn if_match(headers: &HeaderMap) -> Result<Option<u32>, FhirError> {
    let Some(value) = headers.get(header::IF_MATCH) else { return Ok(None) };
    let text = value.to_str().unwrap_or("").trim();
    let quoted = text.strip_prefix("W/").unwrap_or(text);
    quoted.strip_prefix('"').and_then(|t| t.strip_suffix('"')).and_then(|v| v.parse::<u32>().ok()).map(Some).ok_or_else(
        || {
            FhirError::new(
                StatusCode::BAD_REQUEST,
                IssueCode::Value,
                format!("If-Match must be an ETag such as W/\"1\", not {}", crate::error::echo(text)),
            )
        },
    )
}
