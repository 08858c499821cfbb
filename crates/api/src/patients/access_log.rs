//! `GET /v1/patients/{id}/access-log`: the patient's access events, each with an RFC 6962
//! inclusion proof against one tree size and root, for the patient only.

use std::collections::HashMap;

use axum::{
    Json,
    extract::{Path, Query, Request, State},
};
use serde::Serialize;

use crate::{
    app::AppState,
    error::ApiError,
    params::{hexes, parse_identity_id},
    patients::common::{AccessView, access_view, index_page, page, render, the_patient},
};

#[derive(Serialize)]
struct ProvenAccessView {
    #[serde(flatten)]
    entry: AccessView,
    /// RFC 6962 audit path of `tx_id` at `log_index` in the tree of size `log_size`.
    proof: Vec<String>,
}

#[derive(Serialize)]
pub(crate) struct AccessLogView {
    patient: String,
    total: usize,
    from: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<usize>,
    /// The tree size and root every proof in this answer is against.
    log_size: u64,
    log_root: String,
    entries: Vec<ProvenAccessView>,
}

pub(crate) async fn access_log(
    State(app): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    request: Request,
) -> Result<Json<AccessLogView>, ApiError> {
    let patient = parse_identity_id(&id)?;
    let (from, limit) = page(&query)?;
    let snapshot = the_patient(&app, patient, request).await?;
    render(snapshot, move |state| {
        // One snapshot: the index and the log at one height, so every entry is in the log the
        // proofs are made against.
        let index = state.index();
        let log = state.log();
        let (log_size, log_root) = (log.size(), log.root());
        let (page, total, next) = index_page(index.patient(&patient).map(|e| &e.access), from, limit);
        let entries = page
            .iter()
            .map(|a| {
                // Indexed entries are below the state's log size (same height): a failure here
                // is the node's fault, not the request's.
                let proof = log
                    .inclusion_proof(a.position.log_index, log_size)
                    .map_err(|e| ApiError::Internal(format!("access-log proof: {e}")))?;
                Ok(ProvenAccessView { entry: access_view(a, state), proof: hexes(&proof) })
            })
            .collect::<Result<Vec<_>, ApiError>>()?;
        Ok(Json(AccessLogView {
            patient: patient.to_hex(),
            total,
            from: from.min(total),
            next,
            log_size,
            log_root: log_root.to_hex(),
            entries,
        }))
    })
    .await
}
