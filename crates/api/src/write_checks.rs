//! What the node checks of a resource's content before it signs a write of it, whatever path
//! the write comes by: `POST`/`PUT /fhir/{type}`, transaction and batch Bundle entries, and
//! `POST /v1/records`. One function per kind of content, so no path stores what another
//! refuses (a body that breaks later reads, a look-alike delete marker). The ledger does not parse FHIR: these checks are the node's, before it
//! signs.

use axum::http::StatusCode;
use medledger_fhir::{IssueCode, Validated};
use medledger_types::{IdentityId, RecordId};

use crate::{
    fhir::{FhirError, SERVED_TYPES, category_of, is_tombstone, patient_of},
    routes::AppState,
};

/// A patient record's content that passed [`check_record`].
pub(crate) struct RecordContent {
    pub(crate) validated: Validated,
    pub(crate) json: serde_json::Value,
    /// The consent category derived from the content (Observations by their category code).
    pub(crate) category: &'static str,
}

/// Checks `body` as a version of a patient record (of `resource_type`, when the URL names
/// one): the strict parser and structural validation (no duplicate keys, no unknown members),
/// a type served as a patient record, not a delete marker, and its consent category.
pub(crate) fn check_record(resource_type: Option<&str>, body: &[u8]) -> Result<RecordContent, FhirError> {
    let validated =
        medledger_fhir::validate(body).map_err(|issues| FhirError::with_issues(StatusCode::BAD_REQUEST, issues))?;
    if let Some(expected) = resource_type
        && validated.resource_type != expected
    {
        return Err(FhirError::new(
            StatusCode::BAD_REQUEST,
            IssueCode::Invalid,
            format!("the body is a {}, the URL says {expected}", validated.resource_type),
        ));
    }
    let (json, category) = record_content(&validated.resource_type, body)?;
    Ok(RecordContent { validated, json, category })
}

/// The checks of [`check_record`] after validation, for content validated as part of
/// something larger (a Bundle entry): a patient-record type, not a delete marker, its
/// category. Returns the content as JSON and the category.
pub(crate) fn record_content(resource_type: &str, body: &[u8]) -> Result<(serde_json::Value, &'static str), FhirError> {
    if !SERVED_TYPES.contains(&resource_type) {
        return Err(FhirError::new(
            StatusCode::BAD_REQUEST,
            IssueCode::NotSupported,
            format!("{} is not a patient record type served here", crate::error::echo(resource_type)),
        ));
    }
    // The validator already refuses the marker's `medledger` member; refusing its prefix
    // here too keeps the marker unforgeable should the validator ever accept more.
    if is_tombstone(body) {
        return Err(FhirError::new(
            StatusCode::BAD_REQUEST,
            IssueCode::Invalid,
            "this is the server's delete marker, not a resource: delete with DELETE",
        ));
    }
    let json: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| FhirError::new(StatusCode::BAD_REQUEST, IssueCode::Invalid, e.to_string()))?;
    let category = category_of(resource_type, &json)?;
    Ok((json, category))
}

/// For `POST /v1/records`, where the caller names the patient: the resource must not name
/// another. A Patient's `urn:medledger:identity` identifier, if any, must be `patient`; any
/// other type needs a `subject` or `patient` reference `Patient/<id>`, and when `<id>` is a
/// server id (64 hex) it must name a Patient of `patient` stored here, exactly as the FHIR
/// API resolves it. Another id is the client's own label for the patient (synthetic and
/// imported data carry them): it names no resource of this server, so it cannot file the
/// record under someone else, and it is kept as written.
pub(crate) fn check_patient_named(
    app: &AppState,
    resource_type: &str,
    json: &serde_json::Value,
    patient: &IdentityId,
) -> Result<(), FhirError> {
    let other = || {
        FhirError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            IssueCode::BusinessRule,
            "the resource names another patient than the one it is written for",
        )
    };
    if resource_type != "Patient" {
        let reference =
            ["subject", "patient"].iter().find_map(|k| json[*k]["reference"].as_str()).ok_or_else(|| {
                FhirError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    IssueCode::Processing,
                    format!("a {resource_type} needs a subject or patient reference to a Patient"),
                )
            })?;
        let id = reference.strip_prefix("Patient/").ok_or_else(|| {
            FhirError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                IssueCode::Processing,
                format!("{} is not a reference to a Patient", crate::error::echo(reference)),
            )
        })?;
        let server_id = id.split('/').next().is_some_and(|first| RecordId::from_hex(first).is_ok());
        if !server_id {
            return Ok(());
        }
    }
    match patient_of(app, resource_type, json)? {
        Some(named) if named != *patient => Err(other()),
        _ => Ok(()),
    }
}
