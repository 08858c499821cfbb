//! Conditional creates (`If-None-Exist`): the header is read here, the search made by
//! `records::conditional` (the one resource of the server a search finds, for a caller whose
//! token may search the type and who may see it; audited like a search result).

use axum::{
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use medledger_fhir::IssueCode;
use medledger_records::conditional::existing_match;

use crate::{
    app::AppState,
    clock::now_ms,
    fhir::{commit::latest_version, credentials::records, errors::FhirError},
    smart::scopes::Grant,
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
    let service = records(app)?;
    let found = tokio::task::spawn_blocking(move || {
        existing_match(&service, &app2.search, grant2.caller(), &resource_type2, &query, now_ms())
    })
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
