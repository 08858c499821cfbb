//! History: `GET /fhir/{type}/{id}/_history` (instance) and `GET /fhir/{type}/_history`
//! (type), as `history` Bundles, newest first, paged with `_count` and `_offset`. Consent
//! decides before anything is counted: a caller who may not read a record learns nothing of
//! its history, not even its length; each returned version is a read like any other (decided
//! and audited). Directory types are handed to `directory.rs`.

use axum::{
    extract::{Path, State},
    http::HeaderMap,
    response::Response,
};
use medledger_ledger::AccessAction;
use medledger_records::{history::Page, resource::ResourceError};

use crate::{
    app::AppState,
    clock::now_ms,
    fhir::{
        credentials::{authorize, authorize_record, on_service, purpose, records},
        errors::{FhirError, no_such, refused},
        paging::{HISTORY_VERSIONS_MAX, paging},
        render::history_response,
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
    // Consent first, before anything else can answer differently: nothing of the history (not
    // even its length, or whether the id is real) for a caller who may not read the record;
    // the refusal is audited. Bad paging is told only to a caller who may read it (asked with
    // an empty page, the decision is made and audited, and nothing is read).
    let (count, offset) = paging(&query, HISTORY_VERSIONS_MAX, "instance history").unwrap_or((0, 0));
    let type_for_read = resource_type.clone();
    let history = on_service(&service, move |s| {
        s.record_history(grant.caller(), &type_for_read, record_id, purpose, Page { count, offset }, now_ms())
    })
    .await?
    .map_err(|e| match e {
        ResourceError::Unknown => no_such(&resource_type, &id),
        other => refused(other, &resource_type, &id),
    })?;
    paging(&query, HISTORY_VERSIONS_MAX, "instance history")?;
    let url = format!("{}/fhir/{resource_type}/{}/_history", app.public_base(), record_id.to_hex());
    Ok(history_response(&url, &resource_type, (count, offset), &history))
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
    let service = records(&app)?;
    let type_for_read = resource_type.clone();
    let history = on_service(&service, move |s| {
        s.type_history(grant.caller(), &type_for_read, purpose, Page { count, offset }, now_ms())
    })
    .await??;
    let url = format!("{}/fhir/{resource_type}/_history", app.public_base());
    Ok(history_response(&url, &resource_type, (count, offset), &history))
}
