//! Paging of long answers: `_count` and `_offset` of the paged endpoints and a Bundle's
//! `self`/`next` links.

use axum::http::StatusCode;
use medledger_fhir::IssueCode;

use crate::fhir::errors::FhirError;

/// Largest `_offset` accepted by the paged endpoints.
pub const OFFSET_MAX: usize = 1_000_000;

/// `_count` (1 to `max`, default `max`) and `_offset` of a paged endpoint (`what`, for the
/// message); any other parameter is refused as not supported.
pub(crate) fn paging(
    query: &std::collections::HashMap<String, String>,
    max: usize,
    what: &str,
) -> Result<(usize, usize), FhirError> {
    let (mut count, mut offset) = (max, 0usize);
    for (key, value) in query {
        match key.as_str() {
            "_count" => count = count_param(value, max)?,
            "_offset" => offset = offset_param(value)?,
            other => {
                return Err(FhirError::new(
                    StatusCode::BAD_REQUEST,
                    IssueCode::NotSupported,
                    format!("{what} supports _count and _offset, not {}", crate::error::echo(other)),
                ));
            }
        }
    }
    Ok((count, offset))
}

/// A `_count` value: 1 to `max`.
pub(crate) fn count_param(value: &str, max: usize) -> Result<usize, FhirError> {
    value
        .parse::<usize>()
        .ok()
        .filter(|c| (1..=max).contains(c))
        .ok_or_else(|| FhirError::new(StatusCode::BAD_REQUEST, IssueCode::Value, format!("_count must be 1 to {max}")))
}

/// An `_offset` value: at most [`OFFSET_MAX`].
pub(crate) fn offset_param(value: &str) -> Result<usize, FhirError> {
    value.parse::<usize>().ok().filter(|o| *o <= OFFSET_MAX).ok_or_else(|| {
        FhirError::new(
            StatusCode::BAD_REQUEST,
            IssueCode::Value,
            format!("_offset must be a number up to {OFFSET_MAX}"),
        )
    })
}

/// A Bundle's `link` array: `self`, and `next` while there is more.
pub(crate) fn page_links(path: &str, count: usize, offset: usize, total: usize) -> String {
    let mut links = format!(r#"[{{"relation":"self","url":"{path}?_count={count}&_offset={offset}"}}"#);
    if offset.saturating_add(count) < total {
        links.push_str(&format!(r#",{{"relation":"next","url":"{path}?_count={count}&_offset={}"}}"#, offset + count));
    }
    links.push(']');
    links
}

/// Most versions one history answer carries (each is decrypted and audited).
pub const HISTORY_VERSIONS_MAX: usize = 100;
