//! Conditional creates (`If-None-Exist`, a Bundle entry's `ifNoneExist`): the one resource of
//! the server a search finds, for a caller whose token may search the type and who may see it;
//! the query must parse strictly and have criteria. What the check learns (these exist and
//! match) is audited like a search result.

use axum::{
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use medledger_fhir::{
    IssueCode,
    search::{self, ParseOptions},
};
use medledger_types::RecordId;

use crate::{
    app::AppState,
    clock::now_ms,
    fhir::{commit::latest_version, credentials::records, errors::FhirError, served::is_directory},
    smart::scopes::{Grant, interactions},
};

/// `If-None-Exist` of a single create: `Ok(Some(response))` when the search finds the
/// resource (200, its location, nothing written), `Ok(None)` to go on creating.
pub(crate) async fn if_none_exist(
    app: &AppState,
    headers: &HeaderMap,
    grant: &Grant,
    resource_type: &str,
) -> Result<Option<Response>, FhirError> {
    let Some(value) = headers.get("if-none-exist") else { return Ok(None) };
    let query = value
        .to_str()
        .map_err(|_| FhirError::new(StatusCode::BAD_REQUEST, IssueCode::Value, "If-None-Exist is not text"))?
        .to_owned();
    let (app2, grant2, resource_type2) = (app.clone(), grant.clone(), resource_type.to_owned());
    let found = tokio::task::spawn_blocking(move || existing_match(&app2, &grant2, &resource_type2, &query))
        .await
        .map_err(|_| FhirError::new(StatusCode::INTERNAL_SERVER_ERROR, IssueCode::Exception, "search task failed"))?
        .map_err(|why| FhirError::new(StatusCode::PRECONDITION_FAILED, IssueCode::Processing, why))?;
    let Some(id) = found else { return Ok(None) };
    let latest = latest_version(app, &id);
    let mut response = StatusCode::OK.into_response();
    if let Some(v) = latest
        && let Ok(location) = HeaderValue::from_str(&format!("/fhir/{resource_type}/{}/_history/{v}", id.to_hex()))
    {
        response.headers_mut().insert(header::LOCATION, location);
        if let Ok(etag) = HeaderValue::from_str(&format!("W/\"{v}\"")) {
            response.headers_mut().insert(header::ETAG, etag);
        }
    }
    Ok(Some(response))
}

/// A conditional create's search: the one resource of the server it finds (the caller must be
/// able to search the type and see it), `None` if none, an error if several or malformed.
pub(crate) fn existing_match(
    app: &AppState,
    grant: &Grant,
    resource_type: &str,
    query: &str,
) -> Result<Option<RecordId>, String> {
    let shown = format!("ifNoneExist {}", crate::error::echo(query));
    let query = searchable_query(grant, resource_type, query, &shown)?;
    let service = records(app).map_err(|_| "this node serves no records".to_owned())?;
    let found = app.search.matching_for_reference(&service, &query, grant.caller(), now_ms());
    // What the check learned (these exist and match) is an access like a search result's.
    for id in found.iter().filter(|id| !is_directory(resource_type) && app.chain.snapshot().record(id).is_some()) {
        service
            .audit_match(grant.identity, *id, medledger_ledger::Purpose::Treatment, now_ms())
            .map_err(|e| format!("{shown}: {e}"))?;
    }
    match found.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(*one)),
        _ => Err(format!("{shown} matches more than one resource")),
    }
}

/// The search a conditional reference or a conditional create makes (`shown` names it in
/// errors): the token must allow searching (or reading) the type, and the query must parse
/// strictly and have criteria.
pub(crate) fn searchable_query(
    grant: &Grant,
    resource_type: &str,
    query: &str,
    shown: &str,
) -> Result<search::Query, String> {
    if !(grant.allows(resource_type, interactions::SEARCH) || grant.allows(resource_type, interactions::READ)) {
        return Err(format!("{shown}: the token's scopes do not allow searching {resource_type}"));
    }
    let params = parse_query_string(query).ok_or_else(|| format!("{shown} is not a valid query"))?;
    let query = search::parse_query(resource_type, &params, &ParseOptions { lenient: false }).map_err(|issues| {
        format!("{shown}: {}", issues.iter().map(|i| i.diagnostics.clone()).collect::<Vec<_>>().join("; "))
    })?;
    if query.filters.is_empty() {
        return Err(format!("{shown} has no search criteria"));
    }
    Ok(query)
}

/// `a=1&b=x%7Cy` as decoded pairs; `None` if malformed.
fn parse_query_string(query: &str) -> Option<Vec<(String, String)>> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=')?;
            Some((percent_decode(k)?, percent_decode(v)?))
        })
        .collect()
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}
