//! After a write is submitted: waiting (up to [`crate::Services::fhir_commit_wait_ms`]) for its
//! transaction to commit, when a version was committed, and the answer to a create or update:
//! the resource once committed, or 202 Accepted if the wait ran out.

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use medledger_fhir::{Issue, IssueCode, Severity};
use medledger_node::chain::TxStatus;
use medledger_types::RecordId;

use crate::{
    app::AppState,
    clock::now_ms,
    fhir::{
        errors::{FHIR_JSON, FhirError},
        render::resource_response,
    },
};

/// Waits (up to the configured time) for a written version to commit. `Ok(true)`: committed;
/// `Ok(false)`: still pending when the wait ran out.
pub(crate) async fn wait_for_commit(app: &AppState, tx: &medledger_types::TxId) -> Result<bool, FhirError> {
    use crate::fhir::commit::Outcome;
    match crate::fhir::commit::wait(app, tx).await {
        Outcome::Committed => Ok(true),
        Outcome::Pending => Ok(false),
        Outcome::Refused(reason) => Err(FhirError::new(
            StatusCode::CONFLICT,
            IssueCode::Conflict,
            format!("the write was refused when its block was built: {reason}"),
        )),
    }
}

/// The answer to a create or update: `created_status` once committed; 202 Accepted with an
/// informational OperationOutcome if the wait ran out (the version commits later).
pub(crate) async fn written_response(
    app: &AppState,
    created_status: StatusCode,
    resource_type: &str,
    written: &Written,
    body: &[u8],
) -> Result<Response, FhirError> {
    let committed = app.fhir_commit_wait_ms == 0 || wait_for_commit(app, &written.tx_id).await?;
    // `lastUpdated` is the block time, as later reads will say (or now, if not waiting).
    let committed_ms = committed_at_ms(app, &written.record_id, written.version).unwrap_or_else(now_ms);
    let mut response = if committed {
        resource_response(created_status, resource_type, &written.record_id, written.version, committed_ms, body)?
    } else {
        let outcome = medledger_fhir::operation_outcome(&[Issue {
            severity: Severity::Information,
            code: IssueCode::Transient,
            expression: None,
            diagnostics: format!(
                "accepted: version {} is submitted and not committed yet; it is readable once committed",
                written.version
            ),
        }]);
        let mut r = (StatusCode::ACCEPTED, outcome).into_response();
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
        if let Ok(v) = HeaderValue::from_str(&format!(
            "/fhir/{resource_type}/{}/_history/{}",
            written.record_id.to_hex(),
            written.version
        )) {
            r.headers_mut().insert(header::CONTENT_LOCATION, v);
        }
        r
    };
    if let Ok(v) = HeaderValue::from_str(&written.tx_id.to_hex()) {
        response.headers_mut().insert("x-medledger-tx", v);
    }
    Ok(response)
}

/// A version just submitted: what a create or update answers about.
pub(crate) struct Written {
    pub(crate) record_id: RecordId,
    pub(crate) version: u32,
    pub(crate) tx_id: medledger_types::TxId,
}

impl From<&medledger_records::Written> for Written {
    fn from(w: &medledger_records::Written) -> Self {
        Self { record_id: w.record_id, version: w.version, tx_id: w.tx_id }
    }
}

/// When `version` of a record or directory entry was committed (its block's time), if it is.
pub(crate) fn committed_at_ms(app: &AppState, id: &RecordId, version: u32) -> Option<u64> {
    medledger_records::resource::committed_at_ms(&app.chain, id, version)
}

/// How a submitted write ended.
pub(crate) enum Outcome {
    Committed,
    Pending,
    Refused(String),
}

/// Waits (up to the node's configured time) for a submitted transaction's outcome.
pub(crate) async fn wait(app: &AppState, tx: &medledger_types::TxId) -> Outcome {
    match outcome_within(app, tx, app.fhir_commit_wait_ms).await {
        Some(TxStatus::Committed { .. }) => Outcome::Committed,
        Some(TxStatus::Rejected { reason }) => Outcome::Refused(reason),
        _ => Outcome::Pending,
    }
}

/// The transaction's outcome (committed or rejected) if it is known within `wait_ms`: the
/// chain tells its watchers when a block commits it, so nothing polls the store.
pub(crate) async fn outcome_within(app: &AppState, tx: &medledger_types::TxId, wait_ms: u64) -> Option<TxStatus> {
    let (chain, id) = (app.chain.clone(), *tx);
    // Registering looks the transaction up in the store once: off the async workers.
    let receiver = tokio::task::spawn_blocking(move || chain.watch(&id)).await.ok()?.ok()?;
    tokio::time::timeout(std::time::Duration::from_millis(wait_ms), receiver).await.ok()?.ok()
}

/// The latest version of a record or directory entry.
pub(crate) fn latest_version(app: &AppState, id: &RecordId) -> Option<u32> {
    medledger_records::resource::latest_version(&app.chain, id)
}
