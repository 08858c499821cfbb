//! Who asks, and what for: the SMART bearer grant of a FHIR request with its scopes checked
//! for the interaction, the purpose of use (`X-Purpose-Of-Use`), whether the caller is staff of
//! the organisation operating this node, and the record service. A scope refusal about one
//! record is an on-chain access event like any refusal ([`authorize_record`]); events are
//! recorded on the blocking pool ([`record_audit`]), and a failure to record is the answer.

use axum::http::{HeaderMap, StatusCode};
use medledger_fhir::IssueCode;
use medledger_ledger::{AccessAction, Purpose};
use medledger_records::RecordError;
use medledger_types::RecordId;

use crate::{
    app::AppState,
    clock::now_ms,
    fhir::errors::{FhirError, forbidden, unauthorized},
    smart::{bearer::bearer, scopes::Grant},
};

/// Records an access event through `f` on the blocking pool (recording waits for the audit
/// journal's sync), turning a failure to record into the request's answer: nothing is acted on,
/// nor refused, unrecorded.
pub(crate) async fn record_audit<F>(
    service: &std::sync::Arc<medledger_records::RecordService>,
    f: F,
) -> Result<(), FhirError>
where
    F: FnOnce(&medledger_records::RecordService) -> Result<(), RecordError> + Send + 'static,
{
    let service = service.clone();
    tokio::task::spawn_blocking(move || f(&service))
        .await
        .map_err(|_| FhirError::new(StatusCode::INTERNAL_SERVER_ERROR, IssueCode::Exception, "audit task failed"))?
        .map_err(FhirError::from)
}

/// Runs `f` on the record service off the async workers (it may read the stores, decrypt,
/// or submit). The outer error is the task's failure; the inner one is `f`'s, for the caller
/// to answer in its own words.
pub(crate) async fn on_service<T, E, F>(
    service: &std::sync::Arc<medledger_records::RecordService>,
    f: F,
) -> Result<Result<T, E>, FhirError>
where
    F: FnOnce(&medledger_records::RecordService) -> Result<T, E> + Send + 'static,
    T: Send + 'static,
    E: Send + 'static,
{
    let service = service.clone();
    tokio::task::spawn_blocking(move || f(&service))
        .await
        .map_err(|_| FhirError::new(StatusCode::INTERNAL_SERVER_ERROR, IssueCode::Exception, "record task failed"))
}

/// Runs `f` on the chain off the async workers (for what needs no record service: a node with
/// no organisation key answers too). Errors as [`on_service`].
pub(crate) async fn on_chain<T, E, F>(app: &AppState, f: F) -> Result<Result<T, E>, FhirError>
where
    F: FnOnce(&medledger_node::chain::Chain, Option<&medledger_records::RecordService>) -> Result<T, E>
        + Send
        + 'static,
    T: Send + 'static,
    E: Send + 'static,
{
    let (chain, service) = (app.chain.clone(), app.records.clone());
    tokio::task::spawn_blocking(move || f(&chain, service.as_deref()))
        .await
        .map_err(|_| FhirError::new(StatusCode::INTERNAL_SERVER_ERROR, IssueCode::Exception, "record task failed"))
}

pub(crate) fn authorize_type(
    app: &AppState,
    headers: &HeaderMap,
    resource_type: &str,
    interaction: u8,
) -> Result<Grant, FhirError> {
    authorize(app, headers, resource_type, interaction)
}

pub(crate) fn purpose_of(headers: &HeaderMap) -> Result<Purpose, FhirError> {
    purpose(headers)
}

pub(crate) fn record_service(app: &AppState) -> Result<std::sync::Arc<medledger_records::RecordService>, FhirError> {
    records(app)
}

/// The bearer grant, with its scopes checked for `interaction` on `resource_type`.
pub(crate) fn authorize(
    app: &AppState,
    headers: &HeaderMap,
    resource_type: &str,
    interaction: u8,
) -> Result<Grant, FhirError> {
    let grant = bearer(app, headers, now_ms()).map_err(unauthorized)?;
    if !grant.allows(resource_type, interaction) {
        return Err(forbidden(format!(
            "the token's scopes do not allow this interaction on {resource_type} (scopes: {})",
            grant.scopes.iter().map(ToString::to_string).collect::<Vec<_>>().join(" ")
        )));
    }
    Ok(grant)
}

/// [`authorize`] for a request about one record: a scope refusal is also an on-chain access
/// event (every denial is audited), once the caller is authenticated.
pub(crate) async fn authorize_record(
    app: &AppState,
    headers: &HeaderMap,
    resource_type: &str,
    interaction: u8,
    id: &str,
    action: AccessAction,
    purpose: Purpose,
) -> Result<Grant, FhirError> {
    match authorize(app, headers, resource_type, interaction) {
        Err(refusal) if refusal.status() == StatusCode::FORBIDDEN => {
            if let (Ok(grant), Some(service), Ok(record_id)) =
                (bearer(app, headers, now_ms()), &app.records, RecordId::from_hex(id))
            {
                let who = grant.identity;
                record_audit(service, move |s| {
                    s.audit_refused_access(who, record_id, action, purpose, "scope-not-granted", now_ms())
                })
                .await?;
            }
            Err(refusal)
        }
        other => other,
    }
}

pub(crate) fn records(app: &AppState) -> Result<std::sync::Arc<medledger_records::RecordService>, FhirError> {
    app.records.clone().ok_or_else(|| {
        FhirError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            IssueCode::Transient,
            "this node does not serve records (no organisation key configured)",
        )
    })
}

/// The purpose of use of a request: `X-Purpose-Of-Use` (HL7 v3 code), default treatment.
pub(crate) fn purpose(headers: &HeaderMap) -> Result<Purpose, FhirError> {
    match headers.get("x-purpose-of-use").map(|v| v.to_str().unwrap_or("")) {
        None => Ok(Purpose::Treatment),
        Some(code) => Purpose::parse(code).ok_or_else(|| {
            FhirError::new(
                StatusCode::BAD_REQUEST,
                IssueCode::Value,
                format!(
                    "unknown X-Purpose-Of-Use {} (TREAT, HPAYMT, HOPERAT, HRESCH, ETREAT)",
                    crate::error::echo(code)
                ),
            )
        }),
    }
}

pub(crate) fn authenticate(app: &AppState, headers: &HeaderMap) -> Result<Grant, FhirError> {
    bearer(app, headers, now_ms()).map_err(|why| FhirError::new(StatusCode::UNAUTHORIZED, IssueCode::Login, why))
}
