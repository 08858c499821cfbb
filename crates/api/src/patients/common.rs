//! What the patient views share: paging (`from`, `limit` ≤ [`PAGE_LIMIT_MAX`]), who may ask
//! (the patient, or a live delegate), and the JSON pieces several views carry (versions,
//! access events, break-glass reviews, codes).

use std::{collections::HashMap, sync::Arc};

use axum::extract::Request;
use medledger_ledger::{AccessAction, AccessOutcome, BreakGlassReview, GrantOrigin, State as LedgerState, actions};
use medledger_node::index::{AccessEntry, IndexVec, RecordEntry};
use medledger_node::snapshot::Snapshot;
use medledger_records::views;
use medledger_types::{IdentityId, TimestampMs};
use serde::Serialize;

use crate::{
    app::{AppState, on_chain},
    clock::now_ms,
    error::ApiError,
    params::optional_param,
    signed::authenticated,
};

/// Most entries in one page of any list.
pub const PAGE_LIMIT_MAX: u64 = 500;

/// Entries in a page when the request does not say.
pub const PAGE_LIMIT_DEFAULT: u64 = 100;

/// Most versions listed per record in `/v1/patients/{id}/records` (the latest ones); the full
/// list is paged by `/v1/records/{id}/history`.
pub const VERSIONS_LISTED_MAX: usize = 100;

/// Most notifications in one answer (the newest ones).
pub const NOTIFICATIONS_MAX: usize = 500;

/// A live grant ending within this is reported as expiring.
pub const EXPIRING_WITHIN_MS: u64 = 7 * 24 * 60 * 60 * 1000;

/// `from` and `limit` of a paged list: `limit` is 1 to [`PAGE_LIMIT_MAX`].
pub(crate) fn page(query: &HashMap<String, String>) -> Result<(usize, usize), ApiError> {
    let from = optional_param(query, "from")?.unwrap_or(0);
    let limit = optional_param(query, "limit")?.unwrap_or(PAGE_LIMIT_DEFAULT);
    if limit == 0 || limit > PAGE_LIMIT_MAX {
        return Err(ApiError::BadRequest(format!("query parameter `limit` must be 1 to {PAGE_LIMIT_MAX}")));
    }
    // Beyond any list's length anyway; saturating keeps 32-bit targets correct.
    Ok((usize::try_from(from).unwrap_or(usize::MAX), limit as usize))
}

/// The page of `items` starting at `from`, and where the next page starts (if any).
/// A page of an index list (a persistent vector; see `medledger_node::index::IndexVec`).
pub(crate) fn index_page<T>(items: Option<&IndexVec<T>>, from: usize, limit: usize) -> (Vec<&T>, usize, Option<usize>) {
    let Some(items) = items else { return (Vec::new(), 0, None) };
    let start = from.min(items.len());
    let end = start.saturating_add(limit).min(items.len());
    (items.iter_from(start).take(end - start).collect(), items.len(), (end < items.len()).then_some(end))
}

pub(crate) fn slice<T>(items: &[T], from: usize, limit: usize) -> (&[T], Option<usize>) {
    let start = from.min(items.len());
    let end = start.saturating_add(limit).min(items.len());
    (&items[start..end], (end < items.len()).then_some(end))
}

/// Authenticates the request and checks the requester is the patient `patient`; the snapshot
/// the check was made on, for the view to show.
pub(crate) async fn the_patient(
    app: &AppState,
    patient: IdentityId,
    request: Request,
) -> Result<Arc<Snapshot>, ApiError> {
    let (requester, _) = authenticated(app, request).await?;
    on_chain(&app.chain, move |c| {
        views::as_the_patient(c, &requester, &patient).ok_or_else(|| ApiError::Forbidden {
            reason: "not-the-patient",
            message: "only the patient reads their own records, grants, access log and notifications".into(),
        })
    })
    .await
}

/// Authenticates the request and checks the requester is the patient `patient` or, by the
/// node's clock, a live delegate of theirs; the snapshot the check was made on.
pub(crate) async fn the_patient_or_delegate(
    app: &AppState,
    patient: IdentityId,
    request: Request,
) -> Result<Arc<Snapshot>, ApiError> {
    let (requester, _) = authenticated(app, request).await?;
    let now = now_ms();
    on_chain(&app.chain, move |c| {
        views::as_the_patient_or_delegate(c, &requester, &patient, now).ok_or_else(|| ApiError::Forbidden {
            reason: "not-the-patient-or-delegate",
            message: "only the patient or a live delegate of theirs reads their grants and delegates".into(),
        })
    })
    .await
}

/// Builds a view from `snapshot` off the async workers (views walk lists and make proofs).
pub(crate) async fn render<T, F>(snapshot: Arc<Snapshot>, f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&Snapshot) -> Result<T, ApiError> + Send + 'static,
{
    match tokio::task::spawn_blocking(move || f(&snapshot)).await {
        Ok(result) => result,
        Err(_) => Err(ApiError::Internal("building the view failed".into())),
    }
}

fn action_code(action: AccessAction) -> &'static str {
    match action {
        AccessAction::Read => "read",
        AccessAction::Write => "write",
        AccessAction::History => "history",
        AccessAction::Search => "search",
        AccessAction::Export => "export",
    }
}

fn outcome_code(outcome: AccessOutcome) -> &'static str {
    match outcome {
        AccessOutcome::Allowed => "allowed",
        AccessOutcome::Denied => "denied",
        AccessOutcome::BreakGlass => "break-glass",
    }
}

pub(crate) fn action_names(bits: u8) -> Vec<&'static str> {
    [(actions::READ, "read"), (actions::WRITE, "write")]
        .into_iter()
        .filter(|(b, _)| bits & b != 0)
        .map(|(_, n)| n)
        .collect()
}

#[derive(Serialize)]
pub(crate) struct VersionView {
    version: u32,
    tx_id: String,
    log_index: u64,
    height: u64,
    committed_at_ms: TimestampMs,
    author: String,
}

pub(crate) fn version_views(record: &RecordEntry, from: usize, limit: usize) -> (Vec<VersionView>, Option<usize>) {
    let (page, next) = slice(&record.versions, from, limit);
    let views = page
        .iter()
        .map(|v| VersionView {
            version: v.version,
            tx_id: v.position.tx_id.to_hex(),
            log_index: v.position.log_index,
            height: v.position.height,
            committed_at_ms: v.position.committed_at_ms,
            author: v.author.to_hex(),
        })
        .collect();
    (views, next)
}

#[derive(Serialize)]
pub(crate) struct ReviewView {
    review_tx: String,
    reviewer: String,
    /// `justified` or `unjustified`.
    verdict: &'static str,
    reason: String,
    reviewed_at: u64,
    reviewed_at_ms: TimestampMs,
}

impl From<&BreakGlassReview> for ReviewView {
    fn from(r: &BreakGlassReview) -> Self {
        ReviewView {
            review_tx: r.review_tx.to_hex(),
            reviewer: r.reviewer.to_hex(),
            verdict: r.verdict.code(),
            reason: r.reason.clone(),
            reviewed_at: r.reviewed_at,
            reviewed_at_ms: r.reviewed_at_ms,
        }
    }
}

pub(crate) fn origin_code(origin: &GrantOrigin) -> &'static str {
    match origin {
        GrantOrigin::Consent => "consent",
        GrantOrigin::Rule { .. } => "rule",
        GrantOrigin::BreakGlass { .. } => "break-glass",
    }
}

#[derive(Serialize)]
pub(crate) struct AccessView {
    /// The access-events transaction (its RFC 6962 leaf hash).
    tx_id: String,
    /// Its leaf index in the log.
    log_index: u64,
    /// The event's index within the transaction.
    event_index: u16,
    height: u64,
    committed_at_ms: TimestampMs,
    accessor: String,
    /// The accessor's on-chain name (practitioners, organisations, clients; patients have none).
    #[serde(skip_serializing_if = "Option::is_none")]
    accessor_name: Option<String>,
    /// The validator that decided and recorded the event (only validators may record one).
    recorded_by: String,
    /// The recorder in words: "node-0 (St Mary's Hospital)".
    recorded_by_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    record: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<u32>,
    action: &'static str,
    purpose: &'static str,
    outcome: &'static str,
    reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    grant_id: Option<String>,
    /// When the node decided (its clock).
    at_ms: TimestampMs,
}

pub(crate) fn access_view(a: &AccessEntry, state: &LedgerState) -> AccessView {
    let e = &a.event;
    AccessView {
        accessor_name: state.identity(&e.accessor).map(|i| i.name.clone()).filter(|n| !n.is_empty()),
        recorded_by: a.recorder.to_hex(),
        recorded_by_name: medledger_records::people::recorder_display(state, &a.recorder),
        tx_id: a.position.tx_id.to_hex(),
        log_index: a.position.log_index,
        event_index: a.event_index,
        height: a.position.height,
        committed_at_ms: a.position.committed_at_ms,
        accessor: e.accessor.to_hex(),
        record: e.record.map(|(r, _)| r.to_hex()),
        version: e.record.map(|(_, v)| v),
        action: action_code(e.action),
        purpose: e.purpose.code(),
        outcome: outcome_code(e.outcome),
        reason: e.reason.clone(),
        grant_id: e.grant_id.map(|g| g.to_hex()),
        at_ms: e.at_ms,
    }
}
