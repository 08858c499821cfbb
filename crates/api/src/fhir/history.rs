//! History: `GET /fhir/{type}/{id}/_history` (instance) and `GET /fhir/{type}/_history`
//! (type), as `history` Bundles, newest first, paged with `_count` and `_offset`. Consent
//! decides before anything is counted: a caller who may not read a record learns nothing of
//! its history, not even its length; each returned version is a read like any other (decided
//! and audited). Directory types are handed to `directory.rs`.

use axum::{
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    response::Response,
};
use medledger_fhir::IssueCode;
use medledger_ledger::AccessAction;
use medledger_records::{
    RecordError,
    access::{self, AccessRequest},
};
use medledger_types::RecordId;

use crate::{
    app::AppState,
    clock::now_ms,
    fhir::{
        credentials::{authorize, authorize_record, purpose, record_audit, records},
        errors::{FhirError, no_such},
        paging::{HISTORY_VERSIONS_MAX, page_links, paging},
        render::{bundle_response, push_history_entry},
        request::parse_id,
        served::served,
    },
    smart::scopes::interactions,
};

/// `GET /fhir/{type}/{id}/_history`: every version, newest first, as a history Bundle. Each
/// version is a read like any other: decided by consent and audited.
pub(crate) async fn history(
    State(app): State<AppState>,
    Path((resource_type, id)): Path<(String, String)>,
    axum::extract::Query(query): axum::extract::Query<std::collections::HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, FhirError> {
    served(&resource_type)?;
    if crate::fhir::served::is_directory(&resource_type) {
        return crate::fhir::directory::history(app, headers, resource_type, id, query).await;
    }
    let purpose = purpose(&headers)?;
    let grant =
        authorize_record(&app, &headers, &resource_type, interactions::READ, &id, AccessAction::History, purpose)
            .await?;
    let record_id = parse_id(&id)?;
    let service = records(&app)?;
    let requester = grant.identity;
    // Consent first, before anything else can answer differently: nothing of the history (not
    // even its length, or whether the id is real) for a caller who may not read the record;
    // the refusal is audited.
    let now = now_ms();
    let request = AccessRequest {
        caller: requester,
        credential: &grant,
        action: AccessAction::History,
        purpose,
        record: record_id,
        version: None,
        now_ms: now,
    };
    let decision = access::authorize(&app.chain.snapshot(), &request)
        .filter(|d| d.head.resource_type == resource_type)
        .ok_or_else(|| no_such(&resource_type, &id))?;
    if !decision.is_allowed() {
        record_audit(&service, move |s| s.audit_decision(&decision, now)).await?;
        return Err(no_such(&resource_type, &id));
    }
    let (count, offset) = paging(&query, HISTORY_VERSIONS_MAX, "instance history")?;
    let versions: Vec<(u32, u64)> = app
        .chain
        .patient_index()
        .record(&record_id)
        .map(|r| r.versions.iter().rev().map(|v| (v.version, v.position.committed_at_ms)).collect())
        .unwrap_or_default();
    let total = versions.len();
    let versions: Vec<(u32, u64)> = versions.into_iter().skip(offset).take(count).collect();
    let wanted = versions.clone();
    let reader = grant.clone();
    let plaintexts = tokio::task::spawn_blocking(move || {
        let items: Vec<_> = wanted.iter().map(|(v, _)| (record_id, Some(*v))).collect();
        service
            .read_many(reader.caller(), &items, purpose, AccessAction::History, now_ms())?
            .into_iter()
            .map(|r| r.map(|r| r.plaintext))
            .collect::<Result<Vec<_>, _>>()
    })
    .await
    .map_err(|_| FhirError::new(StatusCode::INTERNAL_SERVER_ERROR, IssueCode::Exception, "read task failed"))??;
    let id_hex = record_id.to_hex();
    let links =
        page_links(&format!("{}/fhir/{resource_type}/{id_hex}/_history", app.public_base()), count, offset, total);
    let mut bundle = format!(r#"{{"resourceType":"Bundle","type":"history","total":{total},"link":{links},"entry":["#);
    for (i, ((version, at_ms), plaintext)) in versions.iter().zip(&plaintexts).enumerate() {
        if i > 0 {
            bundle.push(',');
        }
        push_history_entry(&mut bundle, &resource_type, &record_id, *version, *at_ms, plaintext);
    }
    bundle.push_str("]}");
    Ok(bundle_response(bundle))
}

/// `GET /fhir/{type}/_history[?_count=N&_offset=M]`: every version of every record of the
/// type that the caller may read, newest commit first, as a `history` Bundle. Records consent
/// refuses are left out before counting; each returned version is a read like any other
/// (decided and audited).
pub(crate) async fn type_history(
    State(app): State<AppState>,
    Path(resource_type): Path<String>,
    axum::extract::Query(query): axum::extract::Query<std::collections::HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, FhirError> {
    served(&resource_type)?;
    if crate::fhir::served::is_directory(&resource_type) {
        return crate::fhir::directory::type_history(app, headers, resource_type, query).await;
    }
    // SMART maps type history to search (`s`): it lists the type's records.
    let grant = authorize(&app, &headers, &resource_type, interactions::SEARCH)?;
    let purpose = purpose(&headers)?;
    let (count, offset) = paging(&query, HISTORY_VERSIONS_MAX, "type history")?;
    let requester = grant.identity;
    let now = now_ms();
    // (log index, record, version, committed at) of every version of the type; then only those
    // of records the caller may read, all decided at one snapshot (the index's own height).
    let index = app.chain.patient_index();
    let state = index.snapshot();
    let all: Vec<(u64, RecordId, u32, u64)> = index
        .records()
        .filter(|r| r.resource_type == resource_type)
        .flat_map(|r| {
            r.versions
                .iter()
                .map(|v| (v.position.log_index, r.record_id, v.version, v.position.committed_at_ms))
                .collect::<Vec<_>>()
        })
        .collect();
    let mut readable: std::collections::HashMap<RecordId, bool> = std::collections::HashMap::new();
    for (_, record, _, _) in &all {
        readable.entry(*record).or_insert_with(|| {
            let request = AccessRequest {
                caller: requester,
                credential: &grant,
                action: AccessAction::History,
                purpose,
                record: *record,
                version: None,
                now_ms: now,
            };
            access::check(state, &request).is_some_and(|outcome| outcome.is_ok())
        });
    }
    let mut versions: Vec<(u64, RecordId, u32, u64)> =
        all.into_iter().filter(|(_, record, _, _)| readable.get(record).copied().unwrap_or(false)).collect();
    versions.sort_by_key(|v| std::cmp::Reverse(v.0));
    let total = versions.len();
    let page: Vec<_> = versions.into_iter().skip(offset).take(count).collect();
    let service = records(&app)?;
    let wanted = page.clone();
    let reader = grant.clone();
    let reads = tokio::task::spawn_blocking(move || {
        let items: Vec<_> = wanted.iter().map(|(_, id, v, _)| (*id, Some(*v))).collect();
        let reads = service.read_many(reader.caller(), &items, purpose, AccessAction::History, now_ms())?;
        Ok::<_, RecordError>(reads.into_iter().map(Result::ok).collect::<Vec<_>>())
    })
    .await
    .map_err(|_| FhirError::new(StatusCode::INTERNAL_SERVER_ERROR, IssueCode::Exception, "read task failed"))??;
    let links = page_links(&format!("{}/fhir/{resource_type}/_history", app.public_base()), count, offset, total);
    let mut bundle = format!(r#"{{"resourceType":"Bundle","type":"history","total":{total},"link":{links},"entry":["#);
    let mut first = true;
    for ((_, record, version, at_ms), read) in page.iter().zip(reads) {
        let Some(read) = read else { continue };
        if !first {
            bundle.push(',');
        }
        first = false;
        push_history_entry(&mut bundle, &resource_type, record, *version, *at_ms, &read.plaintext);
    }
    bundle.push_str("]}");
    Ok(bundle_response(bundle))
}
