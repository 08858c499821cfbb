//! Record endpoints: write and read encrypted FHIR records through the node's record service.
//! Every request is signed by the acting identity (`auth`); every read decision is audited.

use std::{collections::HashMap, sync::Arc};

use axum::{
    extract::{Path, Query, Request, State},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use medledger_records::{RecordError, resource::ResourceError};
use medledger_types::IdentityId;
use serde::Serialize;

use crate::{
    app::AppState,
    clock::now_ms,
    error::ApiError,
    params::{parse_purpose, parse_record_id},
    signed::authenticated,
};

pub(crate) const FHIR_JSON: &str = "application/fhir+json";

fn records(app: &AppState) -> Result<Arc<medledger_records::RecordService>, ApiError> {
    app.records.clone().ok_or_else(|| {
        ApiError::Unavailable("this node does not serve records (no organisation key configured)".into())
    })
}

impl From<RecordError> for ApiError {
    fn from(e: RecordError) -> Self {
        if e.is_storage_full() {
            return ApiError::StorageFull(crate::error::storage_full(&e).to_owned());
        }
        match e {
            RecordError::OutOfScope => ApiError::Forbidden { reason: "scope-not-granted", message: e.to_string() },
            RecordError::Denied(denial) => ApiError::Forbidden { reason: denial.code(), message: e.to_string() },
            RecordError::UnknownRecord(_) | RecordError::UnknownVersion { .. } => ApiError::NotFound(e.to_string()),
            RecordError::NotDecryptableHere => ApiError::Misdirected(e.to_string()),
            RecordError::NotCustodian => ApiError::Misdirected(e.to_string()),
            RecordError::VersionPending | RecordError::VersionMismatch { .. } => ApiError::Conflict(e.to_string()),
            RecordError::TooLarge { max } => ApiError::PayloadTooLarge { max },
            RecordError::Invalid(m) => ApiError::BadRequest(m.to_owned()),
            RecordError::Submit(s) => ApiError::Submit(s),
            RecordError::CiphertextMissing | RecordError::Audit(_) => ApiError::Unavailable(e.to_string()),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

/// A refusal of the FHIR checks (`records::content`) in this API's error shape: every
/// issue, with where it is.
fn refused(error: medledger_records::content::Refused) -> ApiError {
    let issues: Vec<String> = error.issues.iter().map(ToString::to_string).collect();
    ApiError::BadRequest(issues.join("; "))
}

#[derive(Serialize)]
struct WrittenView {
    record_id: String,
    version: u32,
    tx_id: String,
    ciphertext_hash: String,
    status: &'static str,
}

/// `POST /v1/records?patient=<id>[&record=<id>]` with the FHIR resource as the body.
pub(crate) async fn write(
    State(app): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
    request: Request,
) -> Result<Response, ApiError> {
    let service = records(&app)?;
    let (author, body) = authenticated(&app, request).await?;
    let patient =
        query.get("patient").ok_or_else(|| ApiError::BadRequest("missing query parameter `patient`".into())).and_then(
            |p| IdentityId::from_hex(p).map_err(|_| ApiError::BadRequest("patient must be 64 hex characters".into())),
        )?;
    let record = query.get("record").map(|r| parse_record_id(r)).transpose()?;
    let written = tokio::task::spawn_blocking(move || {
        service.write_signed(author, patient, record, &body, now_ms(), &mut rand::rng()).map_err(|e| match e {
            ResourceError::NotStaff => ApiError::Forbidden {
                reason: "not-custodian-staff",
                message: "only this organisation's staff and clients write records through its node".into(),
            },
            // The same answer as a record hidden from the caller (`records::resource`).
            ResourceError::Unknown => match record {
                Some(record) => RecordError::UnknownRecord(record).into(),
                None => ApiError::BadRequest(e.to_string()),
            },
            ResourceError::Changed => ApiError::BadRequest(e.to_string()),
            ResourceError::Content(content) => refused(content),
            ResourceError::Record(error) => error.into(),
            other => ApiError::BadRequest(other.to_string()),
        })
    })
    .await
    .map_err(|_| ApiError::Internal("write task failed".into()))??;
    let view = WrittenView {
        record_id: written.record_id.to_hex(),
        version: written.version,
        tx_id: written.tx_id.to_hex(),
        ciphertext_hash: written.ciphertext_hash.to_hex(),
        status: "pending",
    };
    Ok((StatusCode::CREATED, axum::Json(view)).into_response())
}

/// `GET /v1/records/{id}[?version=N][&purpose=TREAT]`: the FHIR resource exactly as written.
pub(crate) async fn read(
    State(app): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    request: Request,
) -> Result<Response, ApiError> {
    let service = records(&app)?;
    let record_id = parse_record_id(&id)?;
    let version = match query.get("version") {
        None => None,
        Some(v) => {
            Some(v.parse::<u32>().map_err(|_| ApiError::BadRequest("version must be a positive integer".into()))?)
        }
    };
    let purpose = parse_purpose(&query)?;
    let (requester, _) = authenticated(&app, request).await?;
    let read = tokio::task::spawn_blocking(move || service.read(requester, record_id, version, purpose, now_ms()))
        .await
        .map_err(|_| ApiError::Internal("read task failed".into()))?
        // Refused by consent (and audited by the read): to the caller, the record is not there
        // (`records::resource`).
        .map_err(|e| match e {
            RecordError::Denied(_) => ApiError::from(RecordError::UnknownRecord(record_id)),
            other => other.into(),
        })?;
    let mut response = (StatusCode::OK, read.plaintext.to_vec()).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    headers.insert("x-medledger-version", HeaderValue::from(read.version));
    if let Ok(v) = HeaderValue::from_str(&read.tx_id.to_hex()) {
        headers.insert("x-medledger-tx", v);
    }
    headers.insert("x-medledger-basis", HeaderValue::from_static(read.basis.code()));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}
