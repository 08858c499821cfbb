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
use medledger_records::consents::ConsentError;
use medledger_types::TxId;

use crate::{
    app::AppState,
    clock::now_ms,
    fhir::{
        commit::wait_for_commit,
        credentials::{authorize, on_service, records},
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

/// What refused a consent write, in words.
fn refused(error: ConsentError, id: &str) -> FhirError {
    match error {
        ConsentError::Unmappable(reasons) => unprocessable(reasons),
        ConsentError::NotActingFor => forbidden(error.to_string()),
        ConsentError::NoGateway { gateway } => forbidden(format!(
            "this node signs consents only for patients who appointed it as their delegate: appoint identity {} \
             (`medledger consent delegate add --key <your key file> --delegate {}`), then retry",
            gateway.to_hex(),
            gateway.to_hex()
        )),
        ConsentError::Unknown | ConsentError::UnknownPatient => {
            not_found(format!("no Consent {}", crate::error::echo(id)))
        }
        ConsentError::NotOverseer => forbidden(error.to_string()),
        ConsentError::Revoked => FhirError::new(StatusCode::GONE, IssueCode::Deleted, error.to_string()),
        ConsentError::Record(error) => error.into(),
    }
}

/// Waits for a consent transaction the node signed as the patient's gateway delegate.
async fn committed(app: &AppState, tx: &TxId) -> Result<bool, FhirError> {
    Ok(app.fhir_commit_wait_ms == 0 || wait_for_commit(app, tx).await?)
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
    let service = records(&app)?;
    let caller = token.identity;
    let tx =
        on_service(&service, move |s| s.grant_consent(&caller, &json, now_ms())).await?.map_err(|e| refused(e, ""))?;
    let location = format!("/fhir/Consent/{}", tx.to_hex());
    let mut response = if committed(&app, &tx).await? {
        let body = service.consent(&tx, now_ms()).ok_or_else(|| not_found("the grant is gone"))?.to_string();
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

async fn revoke(app: &AppState, headers: &HeaderMap, id: &str, interaction: u8) -> Result<Response, FhirError> {
    let token = authorize(app, headers, "Consent", interaction)?;
    let service = records(app)?;
    let (caller, id_hex) = (token.identity, id.to_owned());
    let tx = on_service(&service, move |s| s.revoke_consent(&caller, &id_hex, now_ms()))
        .await?
        .map_err(|e| refused(e, id))?;
    let done = committed(app, &tx).await?;
    let mut response = if done { StatusCode::NO_CONTENT } else { StatusCode::ACCEPTED }.into_response();
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
