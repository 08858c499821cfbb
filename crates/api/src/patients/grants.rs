//! `GET /v1/patients/{id}/grants` and `GET /v1/patients/{id}/delegates`: every grant of the
//! patient (its origin, signer, review and whether live) and every delegation, for the
//! patient and their live delegates (what managing consent for them needs).

use std::collections::HashMap;

use axum::{
    Json,
    extract::{Path, Query, Request, State},
};
use medledger_ledger::{Grant, GrantOrigin, Scope};
use medledger_types::TimestampMs;
use serde::Serialize;

use crate::{
    app::AppState,
    clock::now_ms,
    error::ApiError,
    params::parse_identity_id,
    patients::common::{ReviewView, action_names, origin_code, page, render, slice, the_patient_or_delegate},
};

#[derive(Serialize)]
struct ScopeView {
    /// `all`, `resource-types`, `records` or `categories`.
    kind: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    items: Vec<String>,
}

impl From<&Scope> for ScopeView {
    fn from(scope: &Scope) -> Self {
        match scope {
            Scope::All => ScopeView { kind: "all", items: Vec::new() },
            Scope::ResourceTypes(t) => ScopeView { kind: "resource-types", items: t.clone() },
            Scope::Records(r) => ScopeView { kind: "records", items: r.iter().map(|r| r.to_hex()).collect() },
            Scope::Categories(c) => ScopeView { kind: "categories", items: c.clone() },
        }
    }
}

#[derive(Serialize)]
struct GrantView {
    grant_id: String,
    grantee: String,
    /// `consent`, `rule` or `break-glass`.
    origin: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    rule_id: Option<String>,
    /// The break-glass reason code.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    needs_review: bool,
    /// The review of a break-glass access, once reviewed.
    #[serde(skip_serializing_if = "Option::is_none")]
    review: Option<ReviewView>,
    /// Who signed the transaction that created the grant.
    signed_by: String,
    /// The delegate who granted it for the patient, when the patient did not.
    #[serde(skip_serializing_if = "Option::is_none")]
    granted_by_delegate: Option<String>,
    scope: ScopeView,
    actions: Vec<&'static str>,
    purpose: &'static str,
    valid_from_ms: TimestampMs,
    valid_until_ms: TimestampMs,
    granted_at: u64,
    revoked_at: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    revoked_by: Option<String>,
    /// In force now (by the node's clock): not revoked and within its period.
    live: bool,
}

fn grant_view(g: &Grant, now: TimestampMs) -> GrantView {
    GrantView {
        grant_id: g.id.to_hex(),
        grantee: g.grantee.to_hex(),
        origin: origin_code(&g.origin),
        rule_id: g.derived_from().map(|r| r.to_hex()),
        reason: match &g.origin {
            GrantOrigin::BreakGlass { reason, .. } => Some(reason.clone()),
            _ => None,
        },
        needs_review: g.needs_review(),
        review: g.review().map(ReviewView::from),
        signed_by: g.signed_by.to_hex(),
        granted_by_delegate: g.delegate().map(|d| d.to_hex()),
        scope: ScopeView::from(&g.scope),
        actions: action_names(g.actions),
        purpose: g.purpose.code(),
        valid_from_ms: g.valid_from_ms,
        valid_until_ms: g.valid_until_ms,
        granted_at: g.granted_at,
        revoked_at: g.revoked_at,
        revoked_by: g.revoked_by.map(|r| r.to_hex()),
        live: g.is_live(now),
    }
}

#[derive(Serialize)]
pub(crate) struct GrantsView {
    patient: String,
    total: usize,
    from: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<usize>,
    grants: Vec<GrantView>,
}

pub(crate) async fn grants(
    State(app): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    request: Request,
) -> Result<Json<GrantsView>, ApiError> {
    let patient = parse_identity_id(&id)?;
    let (from, limit) = page(&query)?;
    let snapshot = the_patient_or_delegate(&app, patient, request).await?;
    let now = now_ms();
    render(snapshot, move |state| {
        let total = state.grants_of(&patient).count();
        let grants: Vec<GrantView> =
            state.grants_of(&patient).skip(from).take(limit).map(|g| grant_view(g, now)).collect();
        let end = from.saturating_add(grants.len());
        let next = (end < total).then_some(end);
        Ok(Json(GrantsView { patient: patient.to_hex(), total, from: from.min(total), next, grants }))
    })
    .await
}

#[derive(Serialize)]
struct DelegationView {
    /// The appointing transaction.
    appointment_tx: String,
    delegate: String,
    /// `practitioner` or `patient`.
    delegate_role: &'static str,
    /// A practitioner's display name (patients have none on-chain).
    #[serde(skip_serializing_if = "String::is_empty")]
    delegate_name: String,
    appointed_at: u64,
    valid_until_ms: TimestampMs,
    dismissed_at: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dismissed_by: Option<String>,
    /// May act now (by the node's clock): not dismissed and before its end.
    live: bool,
}

#[derive(Serialize)]
pub(crate) struct DelegatesView {
    patient: String,
    /// Live delegates now; at most `limits::DELEGATES_PER_PATIENT_MAX`.
    live: usize,
    total: usize,
    from: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<usize>,
    /// Every delegation, dismissed and expired ones included, oldest first.
    delegations: Vec<DelegationView>,
}

/// `GET /v1/patients/{id}/delegates[?from=N][&limit=M]`: who may manage the patient's consent,
/// for the patient and for their live delegates.
pub(crate) async fn delegates(
    State(app): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    request: Request,
) -> Result<Json<DelegatesView>, ApiError> {
    let patient = parse_identity_id(&id)?;
    let (from, limit) = page(&query)?;
    let snapshot = the_patient_or_delegate(&app, patient, request).await?;
    let now = now_ms();
    render(snapshot, move |state| {
        let all: Vec<_> = state.delegations_of(&patient).collect();
        let (page, next) = slice(&all, from, limit);
        let delegations = page
            .iter()
            .map(|d| {
                let who = state.identity(&d.delegate);
                DelegationView {
                    appointment_tx: d.id.to_hex(),
                    delegate: d.delegate.to_hex(),
                    delegate_role: who.map_or("unknown", |i| i.role.as_str()),
                    delegate_name: who.map(|i| i.name.clone()).unwrap_or_default(),
                    appointed_at: d.appointed_at,
                    valid_until_ms: d.valid_until_ms,
                    dismissed_at: d.dismissed_at,
                    dismissed_by: d.dismissed_by.map(|b| b.to_hex()),
                    live: d.is_live(now),
                }
            })
            .collect();
        Ok(Json(DelegatesView {
            patient: patient.to_hex(),
            live: all.iter().filter(|d| d.is_live(now)).count(),
            total: all.len(),
            from: from.min(all.len()),
            next,
            delegations,
        }))
    })
    .await
}
