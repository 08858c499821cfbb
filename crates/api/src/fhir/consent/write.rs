//! Writing Consent: `POST /fhir/Consent` creates the on-chain grant a Consent describes;
//! `DELETE /fhir/Consent/{id}` (or a `PUT` with status `inactive`) revokes it.
//!
//! A grant must be signed by the patient or a live delegate of theirs. FHIR clients hold
//! tokens, not ledger keys, so the node signs — only as the patient's **gateway delegate**:
//! the patient appoints this node's validator identity once (with their own key), and from
//! then on the node signs, for that patient only, the Consents that the patient (or a personal
//! delegate of theirs) writes here with their own token. Without that appointment the answer
//! is 403, saying how to make it.
//!
//! A Consent is mapped exactly (`records::consent::grant_of`) or refused with an
//! OperationOutcome naming every reason — never widened: one `permit` provision, no nested
//! provisions, security labels or data periods; one actor named by its on-chain identity;
//! actions `access` (read) and `correct` (write); exactly one purpose; a period with an end;
//! and at most one kind of scope: resource types (`class`), consent categories (`code`), or
//! records (`data`, meaning `instance`).

use axum::{
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use medledger_fhir::{Issue, IssueCode, Severity};
use medledger_ledger::Payload;
use medledger_records::consent::{acts_for, consent_resource, grant_of};
use medledger_types::{IdentityId, TxId};

use crate::{
    app::AppState,
    clock::now_ms,
    fhir::{
        commit::wait_for_commit,
        credentials::{authorize, records},
        errors::{FHIR_JSON, FhirError, forbidden, not_found},
        request::check_content_type,
    },
    smart::scopes::interactions,
};

fn unprocessable(reasons: Vec<String>) -> FhirError {
    let issues = reasons
        .into_iter()
        .map(|diagnostics| Issue {
            severity: Severity::Error,
            code: IssueCode::NotSupported,
            expression: None,
            diagnostics,
        })
        .collect();
    FhirError::with_issues(StatusCode::UNPROCESSABLE_ENTITY, issues)
}

/// Checks that the caller may write `patient`'s consent and that this node is the patient's
/// gateway delegate.
fn check_acting_for(app: &AppState, caller: &IdentityId, patient: &IdentityId) -> Result<(), FhirError> {
    let service = records(app)?;
    let gateway = service.node_identity();
    let state = app.chain.snapshot();
    let now = now_ms().max(state.head_timestamp_ms());
    if !acts_for(&state, caller, patient, now) {
        return Err(forbidden("only the patient, or a personal delegate of theirs, writes their consent"));
    }
    if !state.is_live_delegate(patient, &gateway, now) {
        return Err(forbidden(format!(
            "this node signs consents only for patients who appointed it as their delegate: appoint identity {} \
             (`medledger consent delegate add --key <your key file> --delegate {}`), then retry",
            gateway.to_hex(),
            gateway.to_hex()
        )));
    }
    Ok(())
}

/// Submits `payload` signed by this node as the patient's gateway delegate and waits for it.
async fn submit(app: &AppState, payload: Payload) -> Result<(TxId, bool), FhirError> {
    let service = records(app)?;
    let tx =
        tokio::task::spawn_blocking(move || service.submit_as_gateway(payload, now_ms())).await.map_err(|_| {
            FhirError::new(StatusCode::INTERNAL_SERVER_ERROR, IssueCode::Exception, "consent task failed")
        })??;
    let committed = app.fhir_commit_wait_ms == 0 || wait_for_commit(app, &tx).await?;
    Ok((tx, committed))
}

/// `POST /fhir/Consent`.
pub(crate) async fn create(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, FhirError> {
    let token = authorize(&app, &headers, "Consent", interactions::CREATE)?;
    check_content_type(&headers)?;
    let validated =
        medledger_fhir::validate(&body).map_err(|issues| FhirError::with_issues(StatusCode::BAD_REQUEST, issues))?;
    if validated.resource_type != "Consent" {
        return Err(FhirError::new(
            StatusCode::BAD_REQUEST,
            IssueCode::Invalid,
            format!("the body is a {}, the URL says Consent", validated.resource_type),
        ));
    }
    let json: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| FhirError::new(StatusCode::BAD_REQUEST, IssueCode::Invalid, e.to_string()))?;
    let (patient, payload) = {
        let state = app.chain.snapshot();
        grant_of(&state, &json, now_ms().max(state.head_timestamp_ms())).map_err(unprocessable)?
    };
    check_acting_for(&app, &token.identity, &patient)?;
    let (tx, committed) = submit(&app, payload).await?;
    let location = format!("/fhir/Consent/{}", tx.to_hex());
    let mut response = if committed {
        let state = app.chain.snapshot();
        let grant = state.grant(&tx).ok_or_else(|| not_found("the grant is gone"))?;
        let body = consent_resource(&state, grant, now_ms().max(state.head_timestamp_ms())).to_string();
        (StatusCode::CREATED, body).into_response()
    } else {
        StatusCode::ACCEPTED.into_response()
    };
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    if let Ok(v) = HeaderValue::from_str(&location) {
        headers.insert(header::LOCATION, v);
    }
    if let Ok(v) = HeaderValue::from_str(&tx.to_hex()) {
        headers.insert("x-medledger-tx", v);
    }
    Ok(response)
}

/// The live consent grant `id` names, with its patient. To a caller who may not write the
/// patient's consent, a grant that exists answers as one that does not: whether it exists, or
/// was revoked, is not theirs to learn.
fn live_grant(app: &AppState, caller: &IdentityId, id: &str) -> Result<(TxId, IdentityId), FhirError> {
    let unknown = || not_found(format!("no Consent {}", crate::error::echo(id)));
    let grant_id = TxId::from_hex(id).map_err(|_| unknown())?;
    let state = app.chain.snapshot();
    let grant = state.grant(&grant_id).ok_or_else(unknown)?;
    if !acts_for(&state, caller, &grant.patient, now_ms()) {
        return Err(unknown());
    }
    if grant.revoked_at.is_some() {
        return Err(FhirError::new(StatusCode::GONE, IssueCode::Deleted, "this consent is already revoked"));
    }
    Ok((grant_id, grant.patient))
}

async fn revoke(app: &AppState, headers: &HeaderMap, id: &str, interaction: u8) -> Result<Response, FhirError> {
    let token = authorize(app, headers, "Consent", interaction)?;
    let (grant_id, patient) = live_grant(app, &token.identity, id)?;
    check_acting_for(app, &token.identity, &patient)?;
    let (tx, committed) = submit(app, Payload::ConsentRevoke { grant_id }).await?;
    let mut response = if committed { StatusCode::NO_CONTENT } else { StatusCode::ACCEPTED }.into_response();
    if let Ok(v) = HeaderValue::from_str(&tx.to_hex()) {
        response.headers_mut().insert("x-medledger-tx", v);
    }
    Ok(response)
}

/// `DELETE /fhir/Consent/{id}`: revokes the grant.
pub(crate) async fn delete(
    State(app): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, FhirError> {
    revoke(&app, &headers, &id, interactions::DELETE).await
}

/// `PUT /fhir/Consent/{id}`: only to end it (status `inactive` or `rejected`); grants are never
/// edited in place.
pub(crate) async fn update(
    State(app): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, FhirError> {
    check_content_type(&headers)?;
    let json: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| FhirError::new(StatusCode::BAD_REQUEST, IssueCode::Invalid, e.to_string()))?;
    if json["resourceType"] != "Consent" || json["id"].as_str() != Some(id.as_str()) {
        return Err(FhirError::new(
            StatusCode::BAD_REQUEST,
            IssueCode::Invalid,
            "the body must be the Consent with the URL's id",
        ));
    }
    match json["status"].as_str() {
        Some("inactive" | "rejected") => revoke(&app, &headers, &id, interactions::UPDATE).await,
        _ => Err(unprocessable(vec![
            "a grant is never edited: PUT it with status inactive (or DELETE it) to revoke, and POST a new Consent"
                .into(),
        ])),
    }
}
