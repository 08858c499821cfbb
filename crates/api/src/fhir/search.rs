//! FHIR search (`GET /fhir/{type}?…`), answered from the search index (`search_index.rs`).
//! Results are filtered by the caller's consent (`records::access`, with the token's scopes)
//! before counting and paging, so totals reveal nothing the caller may not see; every returned
//! resource is read through the record service and so audited, as a `Search` access, and so is
//! what a total counts without returning it (within [`COUNTED_PATIENTS_MAX`] patients).

use std::{collections::HashSet, sync::Arc};

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
use medledger_ledger::AccessAction;
use medledger_records::{RecordError, RecordService, journal::Synced};
use medledger_types::{IdentityId, RecordId};

use crate::{
    app::AppState,
    clock::now_ms,
    fhir::{
        errors::{FHIR_JSON, FhirError},
        search_index::{Found, SearchIndex, evaluate},
    },
    smart::scopes::{Grant, interactions},
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
    let (index, chain) = (app.search.clone(), app.chain.clone());
    let grant_for_task = grant.clone();
    let query_for_task = query.clone();
    let answer = tokio::task::spawn_blocking(move || -> Result<String, FhirError> {
        index.catch_up(&chain, &service);
        let now = now_ms();
        let found = evaluate(&index, &chain, &query_for_task, &grant_for_task, purpose, now);
        let links = params_for_links(&params);
        bundle(&service, &index, &query_for_task, &found, (&grant_for_task, purpose, now), &origin, &links)
    })
    .await
    .map_err(|_| FhirError::new(StatusCode::INTERNAL_SERVER_ERROR, IssueCode::Exception, "search task failed"))??;
    let mut response = (StatusCode::OK, answer).into_response();
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

/// Most patients a search's `total` may count beyond those its page returns: each is recorded
/// on that patient's trail, so a broader total is left out of the answer (FHIR allows a
/// searchset without one), and a `_summary=count` that broad is refused.
pub const COUNTED_PATIENTS_MAX: usize = 100;

fn bundle(
    service: &Arc<RecordService>,
    index: &SearchIndex,
    query: &search::Query,
    found: &Found,
    (grant, purpose, now): (&Grant, medledger_ledger::Purpose, u64),
    origin: &str,
    link_params: &str,
) -> Result<String, FhirError> {
    // Whose records the total counts without this answer returning them: each such patient
    // learns of the count on their trail, within a bound.
    let returned: HashSet<IdentityId> = match query.summary_count {
        true => HashSet::new(),
        false => found.returned_patients.iter().copied().collect(),
    };
    let unreturned = found.counted.iter().filter(|(p, _)| !returned.contains(p)).count();
    let show_total = unreturned <= COUNTED_PATIENTS_MAX;
    if query.summary_count && !show_total {
        return Err(FhirError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            IssueCode::TooCostly,
            format!(
                "this count covers the records of {unreturned} patients, each of whom would see it on their access \
                 trail; at most {COUNTED_PATIENTS_MAX} are counted at once: narrow the search (by patient, say)"
            ),
        ));
    }
    let base = format!("{origin}/fhir/{}", query.resource_type);
    let separator = if link_params.is_empty() { "" } else { "&" };
    let mut links =
        vec![format!(r#"{{"relation":"self","url":"{base}?{link_params}{separator}_offset={}"}}"#, query.offset)];
    let next = query.offset as usize + query.count as usize;
    if !query.summary_count && next < found.total && query.count > 0 {
        links.push(format!(r#"{{"relation":"next","url":"{base}?{link_params}{separator}_offset={next}"}}"#));
    }
    let total = match show_total {
        true => format!(r#""total":{},"#, found.total),
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
    // Every decision below is recorded before the answer leaves (one journal sync for all).
    let mut synced = Synced::default();
    let mut served: HashSet<IdentityId> = HashSet::new();
    if !query.summary_count {
        let indexed = index.indexed.read().expect("search index lock poisoned");
        let listed: Vec<(RecordId, &str)> = found
            .matches
            .iter()
            .map(|id| (*id, "match"))
            .chain(found.includes.iter().map(|id| (*id, "include")))
            .collect();
        for (record_id, mode) in listed {
            let Some(entry) = indexed.entries.get(&record_id) else { continue };
            // Audited as a search access; a version written since indexing is read as indexed.
            // Directory entries are read as they are: not patient data, not audited.
            let content = match entry.directory {
                true => {
                    service.read_directory(&record_id, Some(entry.version)).map(|v| zeroize::Zeroizing::new(v.content))
                }
                false => service
                    .read_deferred(
                        grant.caller(),
                        record_id,
                        Some(entry.version),
                        purpose,
                        AccessAction::Search,
                        now_ms(),
                        &mut synced,
                    )
                    .map(|r| r.plaintext),
            };
            let plaintext = match content {
                Ok(plaintext) => plaintext,
                // Nothing is answered that is not recorded.
                Err(e @ RecordError::Audit(_)) => return Err(e.into()),
                Err(_) => continue,
            };
            if mode == "match"
                && let Some(patient) = found.patient_of.get(&record_id)
            {
                served.insert(*patient);
            }
            let id = record_id.to_hex();
            let version = entry.version.to_string();
            let last_updated = instant_from_ms(entry.last_updated_ms);
            let resource = with_server_meta(
                &plaintext,
                &ServerMeta { id: &id, version_id: &version, last_updated: &last_updated },
            )
            .map_err(|e| FhirError::new(StatusCode::INTERNAL_SERVER_ERROR, IssueCode::Exception, e.to_string()))?;
            if !first {
                out.push(',');
            }
            first = false;
            out.push_str(&format!(r#"{{"fullUrl":"{origin}/fhir/{}/{id}","resource":"#, entry.resource_type));
            out.push_str(std::str::from_utf8(&resource).map_err(|_| {
                FhirError::new(StatusCode::INTERNAL_SERVER_ERROR, IssueCode::Exception, "stored resource is not UTF-8")
            })?);
            out.push_str(&format!(r#","search":{{"mode":"{mode}"}}}}"#));
        }
    }
    out.push_str("]}");
    // What the total counted but the answer does not return is learned too: one count event
    // per patient whose records were counted and none returned (a `_summary=count` or
    // `_count=0` search counts everything).
    for (patient, basis) in found.counted.iter().filter(|(p, _)| show_total && !served.contains(p)) {
        // Dated as decided, so the grant named was in force then.
        service.audit_count_deferred(grant.identity, *patient, purpose, *basis, now, &mut synced)?;
    }
    service.sync_audit(synced)?;
    Ok(out)
}
