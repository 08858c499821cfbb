//! The patient's view: their records and versions, their grants, their delegates, their full
//! access log with an inclusion proof per entry, and notifications; plus the version history of
//! a record for anyone allowed to read it.
//!
//! Every request is signed (`auth`). Only the patient themself reads their view (403
//! `not-the-patient` otherwise), except that a live delegate of the patient also reads their
//! grants and delegates: what managing consent for them needs, and nothing of their records or
//! access log. Answers come from the node's per-patient index
//! (`medledger_node::index`) and the state, read together under one lock so they are at the
//! same height; they carry ids and codes only, never record contents. Lists are paged
//! (`from`, `limit` ≤ [`PAGE_LIMIT_MAX`]) so no answer grows without bound.

use std::collections::HashMap;

use axum::{
    Json,
    extract::{Path, Query, Request, State},
};
use medledger_ledger::{
    AccessAction, AccessOutcome, BreakGlassReview, Grant, GrantOrigin, Scope, State as LedgerState, actions,
};
use medledger_node::index::{
    AccessEntry, BreakGlassEntry, DelegateAct, DelegateActEntry, DelegationChange, DelegationEntry, KeyShareEntry,
    PatientIndex, RecordEntry, ReviewEntry, TxPosition,
};
use medledger_records::access::{self, AccessRequest, SignedRequest};
use medledger_types::{IdentityId, Role, TimestampMs};
use serde::Serialize;

use crate::{
    app::{AppState, on_chain},
    clock::now_ms,
    error::ApiError,
    params::{hexes, optional_param, parse_identity_id, parse_purpose, parse_record_id},
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

// ---- parameters and authorisation ----

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
pub(crate) fn slice<T>(items: &[T], from: usize, limit: usize) -> (&[T], Option<usize>) {
    let start = from.min(items.len());
    let end = start.saturating_add(limit).min(items.len());
    (&items[start..end], (end < items.len()).then_some(end))
}

/// Authenticates the request and checks the requester is the patient `patient`.
async fn the_patient(app: &AppState, patient: IdentityId, request: Request) -> Result<(), ApiError> {
    let (requester, _) = authenticated(app, request).await?;
    let is_patient =
        on_chain(&app.chain, move |c| Ok(c.state().identity(&requester).is_some_and(|i| i.role == Role::Patient)))
            .await?;
    if requester != patient || !is_patient {
        return Err(ApiError::Forbidden {
            reason: "not-the-patient",
            message: "only the patient reads their own records, grants, access log and notifications".into(),
        });
    }
    Ok(())
}

/// Authenticates the request and checks the requester is the patient `patient` or, by the
/// node's clock, a live delegate of theirs.
async fn the_patient_or_delegate(app: &AppState, patient: IdentityId, request: Request) -> Result<(), ApiError> {
    let (requester, _) = authenticated(app, request).await?;
    let now = now_ms();
    let allowed = on_chain(&app.chain, move |c| {
        let state = c.state();
        let is_patient = requester == patient && state.identity(&requester).is_some_and(|i| i.role == Role::Patient);
        Ok(is_patient || state.is_live_delegate(&patient, &requester, now))
    })
    .await?;
    if !allowed {
        return Err(ApiError::Forbidden {
            reason: "not-the-patient-or-delegate",
            message: "only the patient or a live delegate of theirs reads their grants and delegates".into(),
        });
    }
    Ok(())
}

// ---- shared JSON pieces ----

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

fn action_names(bits: u8) -> Vec<&'static str> {
    [(actions::READ, "read"), (actions::WRITE, "write")]
        .into_iter()
        .filter(|(b, _)| bits & b != 0)
        .map(|(_, n)| n)
        .collect()
}

#[derive(Serialize)]
struct VersionView {
    version: u32,
    tx_id: String,
    log_index: u64,
    height: u64,
    committed_at_ms: TimestampMs,
    author: String,
}

fn version_views(record: &RecordEntry, from: usize, limit: usize) -> (Vec<VersionView>, Option<usize>) {
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

// ---- GET /v1/patients/{id}/records ----

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
    the_patient(&app, patient, request).await?;
    on_chain(&app.chain, move |c| {
        let index = c.patient_index();
        let all = index.patient(&patient).map(|e| e.records.as_slice()).unwrap_or_default();
        let (page, next) = slice(all, from, limit);
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
        Ok(Json(RecordsView { patient: patient.to_hex(), total: all.len(), from, next, records }))
    })
    .await
}

// ---- GET /v1/patients/{id}/grants ----

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

fn origin_code(origin: &GrantOrigin) -> &'static str {
    match origin {
        GrantOrigin::Consent => "consent",
        GrantOrigin::Rule { .. } => "rule",
        GrantOrigin::BreakGlass { .. } => "break-glass",
    }
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
    the_patient_or_delegate(&app, patient, request).await?;
    let now = now_ms();
    on_chain(&app.chain, move |c| {
        let state = c.state();
        let total = state.grants_of(&patient).count();
        let grants: Vec<GrantView> =
            state.grants_of(&patient).skip(from).take(limit).map(|g| grant_view(g, now)).collect();
        let end = from.saturating_add(grants.len());
        let next = (end < total).then_some(end);
        Ok(Json(GrantsView { patient: patient.to_hex(), total, from: from.min(total), next, grants }))
    })
    .await
}

// ---- GET /v1/patients/{id}/delegates ----

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
    the_patient_or_delegate(&app, patient, request).await?;
    let now = now_ms();
    on_chain(&app.chain, move |c| {
        let state = c.state();
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

// ---- GET /v1/patients/{id}/access-log ----

#[derive(Serialize)]
struct AccessView {
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

fn access_view(a: &AccessEntry, state: &LedgerState) -> AccessView {
    let e = &a.event;
    AccessView {
        accessor_name: state.identity(&e.accessor).map(|i| i.name.clone()).filter(|n| !n.is_empty()),
        recorded_by: a.recorder.to_hex(),
        recorded_by_name: crate::identities::recorder_display(state, &a.recorder),
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
    the_patient(&app, patient, request).await?;
    on_chain(&app.chain, move |c| {
        // State before index (the chain's lock order): both at one height, so every entry is
        // in the log the proofs are made against. Proofs come from this guard's log rather
        // than `Chain::inclusion_proof`, which would take the state lock a second time.
        let state = c.state();
        let index = c.patient_index();
        let log = state.log();
        let (log_size, log_root) = (log.size(), log.root());
        let all = index.patient(&patient).map(|e| e.access.as_slice()).unwrap_or_default();
        let (page, next) = slice(all, from, limit);
        let entries = page
            .iter()
            .map(|a| {
                // Indexed entries are below the state's log size (same height): a failure here
                // is the node's fault, not the request's.
                let proof = log
                    .inclusion_proof(a.position.log_index, log_size)
                    .map_err(|e| ApiError::Internal(format!("access-log proof: {e}")))?;
                Ok(ProvenAccessView { entry: access_view(a, &state), proof: hexes(&proof) })
            })
            .collect::<Result<Vec<_>, ApiError>>()?;
        Ok(Json(AccessLogView {
            patient: patient.to_hex(),
            total: all.len(),
            from: from.min(all.len()),
            next,
            log_size,
            log_root: log_root.to_hex(),
            entries,
        }))
    })
    .await
}

// ---- GET /v1/patients/{id}/notifications ----

#[derive(Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
enum Notification {
    /// Someone accessed (or was refused) the patient's data.
    Access {
        #[serde(flatten)]
        entry: AccessView,
        /// Read under a break-glass declaration, not the patient's consent.
        break_glass: bool,
        /// For a refusal: how many refused attempts by this accessor (since `since_ms`) this
        /// notification stands for, the latest shown. One accessor's refused attempts are one
        /// notification, so a flood of them cannot push anything else out of view.
        #[serde(skip_serializing_if = "Option::is_none")]
        refused_attempts: Option<usize>,
    },
    /// A practitioner declared emergency access.
    BreakGlass {
        /// The declaration's transaction id, which is also its grant id.
        tx_id: String,
        log_index: u64,
        committed_at_ms: TimestampMs,
        practitioner: String,
        reason: String,
        window_ms: u64,
    },
    /// An organisation reviewed a break-glass access to the patient's data.
    BreakGlassReviewed {
        /// The review transaction.
        tx_id: String,
        log_index: u64,
        committed_at_ms: TimestampMs,
        /// The declaration reviewed (also its grant id).
        break_glass_tx: String,
        reviewer: String,
        /// `justified` or `unjustified` (an unjustified access still open ended at once).
        verdict: &'static str,
        reason: String,
    },
    /// The patient appointed a delegate.
    DelegateAppointed {
        tx_id: String,
        log_index: u64,
        committed_at_ms: TimestampMs,
        delegate: String,
        valid_until_ms: TimestampMs,
    },
    /// A delegation ended: the patient dismissed the delegate, or the delegate stepped down.
    DelegateDismissed { tx_id: String, log_index: u64, committed_at_ms: TimestampMs, delegate: String, by: String },
    /// A delegate granted access to the patient's data (the grant id is `tx_id`).
    DelegateGrant { tx_id: String, log_index: u64, committed_at_ms: TimestampMs, delegate: String, grantee: String },
    /// A delegate revoked a grant of the patient.
    DelegateRevoke { tx_id: String, log_index: u64, committed_at_ms: TimestampMs, delegate: String, grant_id: String },
    /// One of the patient's category keys was wrapped for a grantee.
    GrantWrap {
        tx_id: String,
        log_index: u64,
        committed_at_ms: TimestampMs,
        recipient: String,
        custodian: String,
        category: String,
        epoch: u32,
    },
    /// A live grant ends within [`EXPIRING_WITHIN_MS`].
    GrantExpiring {
        grant_id: String,
        grantee: String,
        origin: &'static str,
        valid_until_ms: TimestampMs,
        expires_in_ms: u64,
    },
}

#[derive(Serialize)]
pub(crate) struct NotificationsView {
    patient: String,
    since_ms: TimestampMs,
    /// The newest block time covered: pass it as `since_ms` next time to get only what is new.
    until_ms: TimestampMs,
    total: usize,
    truncated: bool,
    notifications: Vec<Notification>,
}

/// Entries of `items` (in commit order) committed strictly after `since_ms`.
fn since<T>(items: &[T], since_ms: TimestampMs, position: impl Fn(&T) -> &TxPosition) -> &[T] {
    &items[items.partition_point(|i| position(i).committed_at_ms <= since_ms)..]
}

/// An event the patient is told about, by reference until it is known to be kept.
enum Event<'a> {
    /// An access, and for a refusal how many refusals of its accessor it stands for.
    Access(&'a AccessEntry, usize),
    BreakGlass(&'a BreakGlassEntry),
    Reviewed(&'a ReviewEntry),
    Delegation(&'a DelegationEntry),
    DelegateAct(&'a DelegateActEntry),
    GrantWrap(&'a KeyShareEntry),
}

impl Event<'_> {
    fn view(&self, state: &LedgerState) -> Notification {
        match self {
            Event::Access(a, attempts) => Notification::Access {
                entry: access_view(a, state),
                break_glass: a.event.outcome == AccessOutcome::BreakGlass,
                refused_attempts: (a.event.outcome == AccessOutcome::Denied).then_some(*attempts),
            },
            Event::BreakGlass(b) => Notification::BreakGlass {
                tx_id: b.position.tx_id.to_hex(),
                log_index: b.position.log_index,
                committed_at_ms: b.position.committed_at_ms,
                practitioner: b.practitioner.to_hex(),
                reason: b.reason.clone(),
                window_ms: b.window_ms,
            },
            Event::Reviewed(r) => Notification::BreakGlassReviewed {
                tx_id: r.position.tx_id.to_hex(),
                log_index: r.position.log_index,
                committed_at_ms: r.position.committed_at_ms,
                break_glass_tx: r.break_glass_tx.to_hex(),
                reviewer: r.reviewer.to_hex(),
                verdict: r.verdict.code(),
                reason: r.reason.clone(),
            },
            Event::Delegation(d) => {
                let (tx_id, log_index, committed_at_ms) =
                    (d.position.tx_id.to_hex(), d.position.log_index, d.position.committed_at_ms);
                let delegate = d.delegate.to_hex();
                match d.change {
                    DelegationChange::Appointed { valid_until_ms } => {
                        Notification::DelegateAppointed { tx_id, log_index, committed_at_ms, delegate, valid_until_ms }
                    }
                    DelegationChange::Dismissed { by } => {
                        Notification::DelegateDismissed { tx_id, log_index, committed_at_ms, delegate, by: by.to_hex() }
                    }
                }
            }
            Event::DelegateAct(a) => {
                let (tx_id, log_index, committed_at_ms) =
                    (a.position.tx_id.to_hex(), a.position.log_index, a.position.committed_at_ms);
                let delegate = a.delegate.to_hex();
                match a.act {
                    DelegateAct::Grant { grantee } => Notification::DelegateGrant {
                        tx_id,
                        log_index,
                        committed_at_ms,
                        delegate,
                        grantee: grantee.to_hex(),
                    },
                    DelegateAct::Revoke { grant_id } => Notification::DelegateRevoke {
                        tx_id,
                        log_index,
                        committed_at_ms,
                        delegate,
                        grant_id: grant_id.to_hex(),
                    },
                }
            }
            Event::GrantWrap(s) => Notification::GrantWrap {
                tx_id: s.position.tx_id.to_hex(),
                log_index: s.position.log_index,
                committed_at_ms: s.position.committed_at_ms,
                recipient: s.recipient.to_hex(),
                custodian: s.custodian.to_hex(),
                category: s.category.clone(),
                epoch: s.epoch,
            },
        }
    }
}

fn notifications_of(
    state: &LedgerState,
    index: &PatientIndex,
    grants: Vec<&Grant>,
    patient: &IdentityId,
    since_ms: TimestampMs,
    now: TimestampMs,
) -> (usize, Vec<Notification>) {
    // Events since `since_ms`, ordered by their place in the log; views are built only for the
    // ones kept, so a long history costs references, not JSON.
    let mut events: Vec<((u64, usize), Event<'_>)> = Vec::new();
    if let Some(entry) = index.patient(patient) {
        let access = since(&entry.access, since_ms, |a| &a.position);
        // One notification per accessor's refusals (the latest, with their count).
        let mut refusals: HashMap<IdentityId, (usize, usize)> = HashMap::new();
        for (i, a) in access.iter().enumerate().filter(|(_, a)| a.event.outcome == AccessOutcome::Denied) {
            let entry = refusals.entry(a.event.accessor).or_insert((0, i));
            *entry = (entry.0 + 1, i);
        }
        events.extend(access.iter().enumerate().filter_map(|(i, a)| {
            let attempts = match a.event.outcome {
                AccessOutcome::Denied => match refusals.get(&a.event.accessor) {
                    Some((count, last)) if *last == i => *count,
                    _ => return None,
                },
                _ => 1,
            };
            Some(((a.position.log_index, usize::from(a.event_index)), Event::Access(a, attempts)))
        }));
        let declared = since(&entry.break_glass, since_ms, |b| &b.position);
        events.extend(declared.iter().map(|b| ((b.position.log_index, 0), Event::BreakGlass(b))));
        // One entry per transaction in each of these lists: the log index orders them.
        let reviews = since(&entry.reviews, since_ms, |r| &r.position);
        events.extend(reviews.iter().map(|r| ((r.position.log_index, 0), Event::Reviewed(r))));
        let delegations = since(&entry.delegations, since_ms, |d| &d.position);
        events.extend(delegations.iter().map(|d| ((d.position.log_index, 0), Event::Delegation(d))));
        let acts = since(&entry.delegate_acts, since_ms, |a| &a.position);
        events.extend(acts.iter().map(|a| ((a.position.log_index, 0), Event::DelegateAct(a))));
        let wraps = since(&entry.key_shares, since_ms, |s| &s.position);
        events.extend(
            wraps
                .iter()
                .enumerate()
                .filter(|(_, s)| s.is_grant_wrap())
                .map(|(i, s)| ((s.position.log_index, i), Event::GrantWrap(s))),
        );
    }
    events.sort_by_key(|(k, _)| *k);
    let expiring: Vec<Notification> = grants
        .into_iter()
        .filter(|g| g.is_live(now) && g.valid_until_ms - now <= EXPIRING_WITHIN_MS)
        .map(|g| Notification::GrantExpiring {
            grant_id: g.id.to_hex(),
            grantee: g.grantee.to_hex(),
            origin: origin_code(&g.origin),
            valid_until_ms: g.valid_until_ms,
            expires_in_ms: g.valid_until_ms - now,
        })
        .take(NOTIFICATIONS_MAX)
        .collect();
    let total = events.len() + expiring.len();
    // Expiring grants are current, so they stay; the oldest events give way.
    let kept = NOTIFICATIONS_MAX.saturating_sub(expiring.len()).min(events.len());
    let mut all: Vec<Notification> = events[events.len() - kept..].iter().map(|(_, e)| e.view(state)).collect();
    all.extend(expiring);
    (total, all)
}

pub(crate) async fn notifications(
    State(app): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    request: Request,
) -> Result<Json<NotificationsView>, ApiError> {
    let patient = parse_identity_id(&id)?;
    let since_ms = optional_param(&query, "since_ms")?.unwrap_or(0);
    the_patient(&app, patient, request).await?;
    let now = now_ms();
    on_chain(&app.chain, move |c| {
        let state = c.state();
        let index = c.patient_index();
        let grants: Vec<&Grant> = state.grants_of(&patient).collect();
        let (total, notifications) = notifications_of(&state, &index, grants, &patient, since_ms, now);
        Ok(Json(NotificationsView {
            patient: patient.to_hex(),
            since_ms,
            until_ms: state.head_timestamp_ms(),
            total,
            truncated: total > notifications.len(),
            notifications,
        }))
    })
    .await
}

// ---- GET /v1/records/{id}/history ----

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
    on_chain(&app.chain, move |c| {
        let request = AccessRequest {
            caller: requester,
            credential: &SignedRequest,
            action: AccessAction::History,
            purpose,
            record: record_id,
            version: None,
            now_ms: now,
        };
        let decision = access::authorize(&c.state(), &request)
            .ok_or_else(|| ApiError::NotFound(format!("no record {record_id}")))?;
        if let Some(service) = &records {
            service.audit_decision(&decision, now)?;
        }
        // Refused (and audited above): the answer for a record that does not exist
        // (`crate::existence`).
        let basis = decision.outcome.map_err(|_| ApiError::NotFound(format!("no record {record_id}")))?;
        let index = c.patient_index();
        let record = index
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
