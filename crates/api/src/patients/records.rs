//! `GET /v1/patients/{id}/records` (the patient's records with their latest versions, for
//! the patient) and `GET /v1/records/{id}/history` (a record's versions, for whoever may read
//! the record; the decision is audited).

use std::collections::HashMap;

use axum::{
    Json,
    extract::{Path, Query, Request, State},
};
use medledger_records::views;
use serde::Serialize;

use crate::{
    app::{AppState, on_chain},
    clock::now_ms,
    error::ApiError,
    params::{parse_identity_id, parse_purpose, parse_record_id},
    patients::common::{VERSIONS_LISTED_MAX, VersionView, index_page, page, render, the_patient, version_views},
    signed::authenticated,
};

#[derive(Serialize)]
struct RecordView {
    record_id: String,
    resource_type: String,
    category: String,
    custodian: String,
    latest_version: u32,
    version_count: usize,
    /// The latest [`VERSIONS_LISTED_MAX`] versions, oldest first.
    versions: Vec<VersionView>,
}

#[derive(Serialize)]
pub(crate) struct RecordsView {
    patient: String,
    total: usize,
    from: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<usize>,
    records: Vec<RecordView>,
}

pub(crate) async fn records(
    State(app): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    request: Request,
) -> Result<Json<RecordsView>, ApiError> {
    let patient = parse_identity_id(&id)?;
    let (from, limit) = page(&query)?;
    let snapshot = the_patient(&app, patient, request).await?;
    render(snapshot, move |state| {
        let index = state.index();
        let (page, total, next) = index_page(index.patient(&patient).map(|e| &e.records), from, limit);
        let records = page
            .iter()
            .map(|r| {
                let skip = r.versions.len().saturating_sub(VERSIONS_LISTED_MAX);
                RecordView {
                    record_id: r.record_id.to_hex(),
                    resource_type: r.resource_type.clone(),
                    category: r.category.clone(),
                    custodian: r.custodian.to_hex(),
                    latest_version: r.latest_version(),
                    version_count: r.versions.len(),
                    versions: version_views(r, skip, VERSIONS_LISTED_MAX).0,
                }
            })
            .collect();
        Ok(Json(RecordsView { patient: patient.to_hex(), total, from, next, records }))
    })
    .await
}

#[derive(Serialize)]
pub(crate) struct HistoryView {
    record_id: String,
    patient: String,
    resource_type: String,
    category: String,
    custodian: String,
    latest_version: u32,
    /// Why the requester may see it (`patient`, `custodian`, `consent-grant`, …).
    basis: &'static str,
    total: usize,
    from: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<usize>,
    versions: Vec<VersionView>,
}

/// `GET /v1/records/{id}/history[?purpose=P][&from=N][&limit=M]`: the record's versions, for
/// whoever may read the record. The decision is audited as a `history` access event when this
/// node serves records (it has the audit queue).
pub(crate) async fn history(
    State(app): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    request: Request,
) -> Result<Json<HistoryView>, ApiError> {
    let record_id = parse_record_id(&id)?;
    let purpose = parse_purpose(&query)?;
    let (from, limit) = page(&query)?;
    let (requester, _) = authenticated(&app, request).await?;
    let now = now_ms();
    let records = app.records.clone();
    // Refused (and audited): the answer for a record that does not exist (`records::resource`).
    let (snapshot, basis) = on_chain(&app.chain, move |c| {
        views::record_history_as(c, records.as_deref(), requester, record_id, purpose, now)?
            .ok_or_else(|| ApiError::NotFound(format!("no record {record_id}")))
    })
    .await?;
    render(snapshot, move |state| {
        let record = state
            .index()
            .record(&record_id)
            .ok_or_else(|| ApiError::Internal(format!("record {record_id} is in the state but not the index")))?;
        let (versions, next) = version_views(record, from, limit);
        Ok(Json(HistoryView {
            record_id: record_id.to_hex(),
            patient: record.patient.to_hex(),
            resource_type: record.resource_type.clone(),
            category: record.category.clone(),
            custodian: record.custodian.to_hex(),
            latest_version: record.latest_version(),
            basis: basis.code(),
            total: record.versions.len(),
            from: from.min(record.versions.len()),
            next,
            versions,
        }))
    })
    .await
}
