//! How stored versions are answered: spliced with the server's `id` and `meta`
//! (`medledger_fhir::splice`, never re-serialized), with ETag and Content-Location, as one
//! resource or as entries of a history Bundle; a version that cannot be served is named in an
//! OperationOutcome rather than failing the whole answer.

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use medledger_fhir::{
    Issue, IssueCode, Severity,
    instant::instant_from_ms,
    splice::{ServerMeta, with_server_meta},
};
use medledger_types::RecordId;

use crate::fhir::{
    errors::{FHIR_JSON, FhirError},
    served::is_tombstone,
};

/// A stored version returned to a client: spliced, with ETag and Location-style headers.
pub(crate) fn resource_response(
    status: StatusCode,
    resource_type: &str,
    record_id: &RecordId,
    version: u32,
    last_updated_ms: u64,
    stored: &[u8],
) -> Result<Response, FhirError> {
    let id = record_id.to_hex();
    let version_text = version.to_string();
    let last_updated = instant_from_ms(last_updated_ms);
    let body =
        with_server_meta(stored, &ServerMeta { id: &id, version_id: &version_text, last_updated: &last_updated })
            .map_err(|e| FhirError::new(StatusCode::INTERNAL_SERVER_ERROR, IssueCode::Exception, e.to_string()))?;
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(v) = HeaderValue::from_str(&format!("W/\"{version}\"")) {
        headers.insert(header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("/fhir/{resource_type}/{id}/_history/{version}")) {
        headers.insert(header::CONTENT_LOCATION, v.clone());
        if status == StatusCode::CREATED {
            headers.insert(header::LOCATION, v);
        }
    }
    Ok(response)
}

/// One entry of a history Bundle: the version with the server's `id` and `meta`, or, for a
/// delete marker, the DELETE with no resource.
pub(crate) fn push_history_entry(
    bundle: &mut String,
    resource_type: &str,
    record: &RecordId,
    version: u32,
    at_ms: u64,
    plaintext: &[u8],
) {
    let id_hex = record.to_hex();
    let last_updated = instant_from_ms(at_ms);
    let response = |status: &str, outcome: &str| {
        format!(
            r#""response":{{"status":"{status}","etag":"W/\"{version}\"","lastModified":"{last_updated}"{outcome}}}"#
        )
    };
    if is_tombstone(plaintext) {
        bundle.push_str(&format!(
            r#"{{"fullUrl":"/fhir/{resource_type}/{id_hex}","request":{{"method":"DELETE","url":"{resource_type}/{id_hex}"}},{}}}"#,
            response("204 No Content", "")
        ));
        return;
    }
    let (method, url, status) = if version == 1 {
        ("POST", resource_type.to_owned(), "201 Created")
    } else {
        ("PUT", format!("{resource_type}/{id_hex}"), "200 OK")
    };
    let request = format!(r#""request":{{"method":"{method}","url":"{url}"}}"#);
    match served_resource(resource_type, record, version, at_ms, plaintext) {
        Some(resource) => bundle.push_str(&format!(
            r#"{{"fullUrl":"/fhir/{resource_type}/{id_hex}","resource":{resource},{request},{}}}"#,
            response(status, "")
        )),
        // Listed without its content, saying why, rather than failing the whole history.
        None => {
            let outcome = format!(r#","outcome":{}"#, unservable_outcome(&[(resource_type, *record, version)]));
            bundle.push_str(&format!(
                r#"{{"fullUrl":"/fhir/{resource_type}/{id_hex}",{request},{}}}"#,
                response(status, &outcome)
            ));
        }
    }
}

/// A stored version with the server's `id` and `meta` spliced in, as UTF-8 text; `None` when
/// it cannot be (no write path accepts such bytes any more, but a version stored before, or
/// by another node, may be one). Logged, so an operator sees it.
pub(crate) fn served_resource(
    resource_type: &str,
    record: &RecordId,
    version: u32,
    at_ms: u64,
    stored: &[u8],
) -> Option<String> {
    let (id_hex, version_text, last_updated) = (record.to_hex(), version.to_string(), instant_from_ms(at_ms));
    let meta = ServerMeta { id: &id_hex, version_id: &version_text, last_updated: &last_updated };
    match with_server_meta(stored, &meta).map(String::from_utf8) {
        Ok(Ok(text)) => Some(text),
        Ok(Err(_)) | Err(_) => {
            tracing::warn!(%resource_type, record = %id_hex, version, "a stored version cannot be served; left out");
            None
        }
    }
}

/// An OperationOutcome naming stored versions left out of an answer because they cannot be
/// served (see [`served_resource`]).
pub(crate) fn unservable_outcome(left_out: &[(&str, RecordId, u32)]) -> String {
    let issues: Vec<Issue> = left_out
        .iter()
        .map(|(resource_type, record, version)| Issue {
            severity: Severity::Warning,
            code: IssueCode::Processing,
            expression: None,
            diagnostics: format!(
                "{resource_type}/{} version {version} is stored in a form this server cannot serve \
                 (not valid FHIR JSON); it is left out",
                record.to_hex()
            ),
        })
        .collect();
    medledger_fhir::operation_outcome(&issues)
}

/// A 200 answer carrying a FHIR JSON body that must not be cached.
pub(crate) fn bundle_response(body: String) -> Response {
    let mut response = (StatusCode::OK, body).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A `history` Bundle of `history`'s page, answered; `url` is the history's absolute URL
/// (its paging links are built on it).
pub(crate) fn history_response(
    url: &str,
    resource_type: &str,
    (count, offset): (usize, usize),
    history: &medledger_records::history::HistoryPage,
) -> Response {
    let total = history.total;
    let links = crate::fhir::paging::page_links(url, count, offset, total);
    let mut bundle = format!(r#"{{"resourceType":"Bundle","type":"history","total":{total},"link":{links},"entry":["#);
    for (i, v) in history.versions.iter().enumerate() {
        if i > 0 {
            bundle.push(',');
        }
        push_history_entry(&mut bundle, resource_type, &v.record_id, v.version, v.committed_ms, &v.plaintext);
    }
    bundle.push_str("]}");
    bundle_response(bundle)
}
