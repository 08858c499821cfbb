//! Break-glass review queues: `GET /v1/break-glass[?pending=true|false][&from=N][&limit=M]`.
//!
//! An organisation, or one of its practitioners, lists the break-glass accesses about its
//! patients and its staff (`docs/rules.md`, review break-glass): those to patients whose data
//! it holds as custodian, which it may review unless its own practitioner declared them, and
//! those its own practitioners declared, shown so it knows but never reviewed by it (the
//! declarer's organisation does not judge its own staff's emergencies). Nothing else: 403
//! `not-an-organisation` for any other caller. With `pending=true` (the default) only accesses
//! awaiting review are listed, oldest first, so the queue is worked from the front. Answers
//! carry ids and codes only.

use std::collections::HashMap;

use axum::{
    Json,
    extract::{Query, Request, State},
};
use medledger_records::views;
use medledger_types::TimestampMs;
use serde::Serialize;

use crate::{
    app::{AppState, on_chain},
    clock::now_ms,
    error::ApiError,
    patients::common::{ReviewView, page, render, slice},
    signed::authenticated,
};

#[derive(Serialize)]
struct BreakGlassView {
    /// The declaration's transaction id, which is also its grant id: what a review names.
    tx_id: String,
    log_index: u64,
    committed_at_ms: TimestampMs,
    patient: String,
    practitioner: String,
    reason: String,
    window_ms: u64,
    /// Why the caller's organisation sees it: `custodian` (it holds the patient's records) or
    /// `declarer-organisation` (its practitioner declared it).
    basis: &'static str,
    /// Whether the caller may review it: a custodian other than the declarer's organisation,
    /// and never the declarer.
    reviewable_by_you: bool,
    /// The emergency window is open now (by the node's clock) and not revoked.
    live: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    review: Option<ReviewView>,
}

#[derive(Serialize)]
pub(crate) struct BreakGlassListView {
    organisation: String,
    pending_only: bool,
    total: usize,
    from: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<usize>,
    events: Vec<BreakGlassView>,
}

pub(crate) async fn list(
    State(app): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
    request: Request,
) -> Result<Json<BreakGlassListView>, ApiError> {
    let pending_only = match query.get("pending").map(String::as_str) {
        None | Some("true") => true,
        Some("false") => false,
        Some(_) => return Err(ApiError::BadRequest("query parameter `pending` must be true or false".into())),
    };
    let (from, limit) = page(&query)?;
    let (requester, _) = authenticated(&app, request).await?;
    let now = now_ms();
    let (snapshot, organisation) = on_chain(&app.chain, move |c| {
        views::break_glass_queue_of(c, &requester).ok_or_else(|| ApiError::Forbidden {
            reason: "not-an-organisation",
            message: "break-glass reviews are listed for organisations and their practitioners".into(),
        })
    })
    .await?;
    render(snapshot, move |state| {
        // Every declaration is visited: break-glass is rare, and the list is bounded by the
        // page, not by the scan. One snapshot, so the state and the index are at one height.
        let visible: Vec<_> = state
            .index()
            .break_glass()
            .filter(|b| !pending_only || b.reviewed_by_tx.is_none())
            .filter_map(|b| Some((b, views::break_glass_basis(state, &organisation, &requester, b)?)))
            .collect();
        let (page, next) = slice(&visible, from, limit);
        let events = page
            .iter()
            .map(|(b, (basis, reviewable))| {
                let grant = state.grant(&b.position.tx_id);
                BreakGlassView {
                    tx_id: b.position.tx_id.to_hex(),
                    log_index: b.position.log_index,
                    committed_at_ms: b.position.committed_at_ms,
                    patient: b.patient.to_hex(),
                    practitioner: b.practitioner.to_hex(),
                    reason: b.reason.clone(),
                    window_ms: b.window_ms,
                    basis,
                    reviewable_by_you: *reviewable,
                    live: grant.is_some_and(|g| g.is_live(now)),
                    review: grant.and_then(|g| g.review()).map(ReviewView::from),
                }
            })
            .collect();
        Ok(Json(BreakGlassListView {
            organisation: organisation.to_hex(),
            pending_only,
            total: visible.len(),
            from: from.min(visible.len()),
            next,
            events,
        }))
    })
    .await
}
