//! FHIR search (`GET /fhir/{type}?…`): parses the query, makes one call into the record
//! service's search index (`medledger_records::search`: match, consent, page, include, read
//! and audit), and renders the searchset Bundle.

use axum::{
    extract::{Path, Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use medledger_fhir::{
    Issue, IssueCode,
    instant::instant_from_ms,
    search::{self, ParseOptions},
    splice::{ServerMeta, with_server_meta},
};
use medledger_records::search::SearchAnswer;

use crate::{
    app::AppState,
    clock::now_ms,
    fhir::errors::{FHIR_JSON, FhirError},
    smart::scopes::interactions,
};

/// `GET /fhir/{type}?…`: search.
pub(crate) async fn search(
    State(app): State<AppState>,
    Path(resource_type): Path<String>,
    Query(params): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Result<Response, FhirError> {
    crate::fhir::served::served_type(&resource_type)?;
    let grant = crate::fhir::credentials::authorize_type(&app, &headers, &resource_type, interactions::SEARCH)?;
    let purpose = crate::fhir::credentials::purpose_of(&headers)?;
    let lenient = headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split([',', ';']).any(|p| p.trim() == "handling=lenient"));
    let query = search::parse_query(&resource_type, &params, &ParseOptions { lenient })
        .map_err(|issues| FhirError::with_issues(StatusCode::BAD_REQUEST, issues))?;
    if let Some(format) = &query.format
        && !matches!(format.as_str(), "json" | "application/json" | "application/fhir+json")
    {
        return Err(FhirError::with_issues(
            StatusCode::NOT_ACCEPTABLE,
            vec![Issue {
                severity: medledger_fhir::Severity::Error,
                code: IssueCode::NotSupported,
                expression: None,
                diagnostics: "this server answers in JSON only".into(),
            }],
        ));
    }
    let service = crate::fhir::credentials::record_service(&app)?;
    // Links are absolute (clients follow `next` as given), under the node's configured public
    // base: never the request's Host, which the client controls.
    let origin = app.public_base().to_owned();
    let index = app.search.clone();
    let rendered = tokio::task::spawn_blocking(move || -> Result<String, FhirError> {
        let answer = index.search(&service, &query, grant.caller(), purpose, now_ms())?;
        bundle(&query, &answer, &origin, &params_for_links(&params))
    })
    .await
    .map_err(|_| FhirError::new(StatusCode::INTERNAL_SERVER_ERROR, IssueCode::Exception, "search task failed"))??;
    let mut response = (StatusCode::OK, rendered).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// The request's parameters without `_offset`, re-encoded for `self`/`next` links.
fn params_for_links(params: &[(String, String)]) -> String {
    let mut out = String::new();
    for (k, v) in params.iter().filter(|(k, _)| k != "_offset") {
        if !out.is_empty() {
            out.push('&');
        }
        out.push_str(&percent(k));
        out.push('=');
        out.push_str(&percent(v));
    }
    out
}

fn percent(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b':' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The searchset Bundle of `answer` (links absolute, under `origin`).
fn bundle(query: &search::Query, answer: &SearchAnswer, origin: &str, link_params: &str) -> Result<String, FhirError> {
    let base = format!("{origin}/fhir/{}", query.resource_type);
    let separator = if link_params.is_empty() { "" } else { "&" };
    let mut links =
        vec![format!(r#"{{"relation":"self","url":"{base}?{link_params}{separator}_offset={}"}}"#, query.offset)];
    let next = query.offset as usize + query.count as usize;
    if !query.summary_count && next < answer.total && query.count > 0 {
        links.push(format!(r#"{{"relation":"next","url":"{base}?{link_params}{separator}_offset={next}"}}"#));
    }
    let total = match answer.show_total {
        true => format!(r#""total":{},"#, answer.total),
        false => String::new(),
    };
    let mut out =
        format!(r#"{{"resourceType":"Bundle","type":"searchset",{total}"link":[{}],"entry":["#, links.join(","));
    let mut first = true;
    if !query.ignored.is_empty() {
        out.push_str(r#"{"resource":"#);
        out.push_str(&medledger_fhir::operation_outcome(&query.ignored));
        out.push_str(r#","search":{"mode":"outcome"}}"#);
        first = false;
    }
    for hit in &answer.hits {
        let id = hit.record_id.to_hex();
        let version = hit.version.to_string();
        let last_updated = instant_from_ms(hit.last_updated_ms);
        let resource =
            with_server_meta(&hit.content, &ServerMeta { id: &id, version_id: &version, last_updated: &last_updated })
                .map_err(|e| FhirError::new(StatusCode::INTERNAL_SERVER_ERROR, IssueCode::Exception, e.to_string()))?;
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(&format!(r#"{{"fullUrl":"{origin}/fhir/{}/{id}","resource":"#, hit.resource_type));
        out.push_str(std::str::from_utf8(&resource).map_err(|_| {
            FhirError::new(StatusCode::INTERNAL_SERVER_ERROR, IssueCode::Exception, "stored resource is not UTF-8")
        })?);
        out.push_str(&format!(r#","search":{{"mode":"{}"}}}}"#, hit.mode.code()));
    }
    out.push_str("]}");
    Ok(out)
}
