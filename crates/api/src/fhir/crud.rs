//! `POST /fhir/{type}` (create), `GET /fhir/{type}/{id}` (read), `GET …/_history/{vid}`
//! (vread), `PUT /fhir/{type}/{id}` (update) and `DELETE /fhir/{type}/{id}` (logical delete) of
//! the patient-record types; directory types are handed to `directory.rs`.
//!
//! The token's scopes must allow the interaction on the type, and then consent must allow the
//! caller on the record: both, never either. Writes are by the staff and systems of the
//! organisation operating this node (the custodian), and run the checks every write path runs
//! (`records::content`). A record the caller may not see answers as an unknown id; every refusal
//! is audited. Stored bytes are exactly what the client sent; reads return them with the
//! server's `id` and `meta` spliced in.

use axum::{
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use medledger_fhir::IssueCode;
use medledger_ledger::{AccessAction, Purpose};
use medledger_records::{RecordError, WriteRequest};
use medledger_types::IdentityId;

use crate::{
    app::AppState,
    clock::now_ms,
    fhir::{
        commit::{wait_for_commit, written_response},
        credentials::{authorize, authorize_record, purpose, record_audit, records},
        errors::{FhirError, forbidden, no_such, not_found},
        render::resource_response,
        request::{check_content_type, if_match, parse_id},
        served::{is_tombstone, served, tombstone},
    },
    smart::scopes::interactions,
};

/// A read refused by consent answers as an unknown id (the refusal is audited by the read).
fn unless_denied(error: RecordError, resource_type: &str, id: &str) -> FhirError {
    match error {
        RecordError::Denied(_) => no_such(resource_type, id),
        other => other.into(),
    }
}

/// `GET /fhir/{type}/{id}` and, with `vid`, `GET /fhir/{type}/{id}/_history/{vid}`.
async fn read_version(
    app: AppState,
    headers: HeaderMap,
    resource_type: String,
    id: String,
    version: Option<u32>,
) -> Result<Response, FhirError> {
    served(&resource_type)?;
    if crate::fhir::served::is_directory(&resource_type) {
        return crate::fhir::directory::read(app, headers, resource_type, id, version).await;
    }
    let purpose = purpose(&headers)?;
    let grant =
        authorize_record(&app, &headers, &resource_type, interactions::READ, &id, AccessAction::Read, purpose).await?;
    let record_id = parse_id(&id)?;
    // A record of another type is, for this URL, not there.
    let stored_type = app.chain.snapshot().record(&record_id).map(|h| h.resource_type.clone());
    if stored_type.as_deref() != Some(resource_type.as_str()) {
        return Err(no_such(&resource_type, &id));
    }
    let service = records(&app)?;
    let read = tokio::task::spawn_blocking(move || {
        service.read_as(grant.caller(), record_id, version, purpose, AccessAction::Read, now_ms())
    })
    .await
    .map_err(|_| FhirError::new(StatusCode::INTERNAL_SERVER_ERROR, IssueCode::Exception, "read task failed"))?
    .map_err(|e| unless_denied(e, &resource_type, &id))?;
    if is_tombstone(&read.plaintext) {
        return Err(FhirError::new(
            StatusCode::GONE,
            IssueCode::Deleted,
            format!("{resource_type}/{id} was deleted (version {}); its history is kept", read.version),
        ));
    }
    let committed_ms = app
        .chain
        .patient_index()
        .record(&record_id)
        .and_then(|r| r.versions.iter().find(|v| v.version == read.version).map(|v| v.position.committed_at_ms))
        .unwrap_or_else(now_ms);
    resource_response(StatusCode::OK, &resource_type, &record_id, read.version, committed_ms, &read.plaintext)
}

pub(crate) async fn read(
    State(app): State<AppState>,
    Path((resource_type, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, FhirError> {
    read_version(app, headers, resource_type, id, None).await
}

pub(crate) async fn vread(
    State(app): State<AppState>,
    Path((resource_type, id, vid)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Response, FhirError> {
    let version = vid
        .parse::<u32>()
        .ok()
        .filter(|v| *v > 0)
        .ok_or_else(|| not_found(format!("no version {}", crate::error::echo(&vid))))?;
    read_version(app, headers, resource_type, id, Some(version)).await
}

/// How long a create waits for a new patient's registration to commit.
const REGISTRATION_WAIT_MS: u64 = 15_000;

/// Registers a new patient identity (keys held by this organisation until handed over) and
/// waits until the registration is committed, so records can be written for it.
pub(crate) async fn register_patient(app: &AppState) -> Result<IdentityId, FhirError> {
    let service = records(app)?;
    let (identity, tx) =
        tokio::task::spawn_blocking(move || service.register_patient(now_ms())).await.map_err(|_| {
            FhirError::new(StatusCode::INTERNAL_SERVER_ERROR, IssueCode::Exception, "registration task failed")
        })??;
    match crate::fhir::commit::outcome_within(app, &tx, REGISTRATION_WAIT_MS).await {
        Some(medledger_node::chain::TxStatus::Committed { .. }) => Ok(identity),
        Some(medledger_node::chain::TxStatus::Rejected { reason }) => Err(FhirError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            IssueCode::Transient,
            format!("the patient's registration was refused: {reason}"),
        )),
        _ => Err(FhirError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            IssueCode::Transient,
            "the patient's registration is not committed yet; retry shortly",
        )),
    }
}

/// `POST /fhir/{type}`: create. The author is the token's identity, which must be staff of
/// the organisation operating this node (the custodian).
pub(crate) async fn create(
    State(app): State<AppState>,
    Path(resource_type): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, FhirError> {
    served(&resource_type)?;
    if crate::fhir::served::is_directory(&resource_type) {
        return crate::fhir::directory::create(app, headers, resource_type, body).await;
    }
    let grant = authorize(&app, &headers, &resource_type, interactions::CREATE)?;
    check_content_type(&headers)?;
    // The checks every path that writes a record runs (`records::content`).
    let content = medledger_records::content::check_record(Some(&resource_type), &body)?;
    let service = records(&app)?;
    let custodian = service.organisation();
    let author = grant.identity;
    let staff = medledger_records::access::is_staff(&app.chain.snapshot(), &author, &custodian);
    let (json, category) = (&content.json, content.category);
    if !staff {
        // Audited when the resource names a patient here (a refused write attempt about them).
        if let Ok(Some(patient)) = medledger_records::content::patient_of(&app.chain.snapshot(), &resource_type, json) {
            record_audit(&service, move |s| {
                s.audit_refused_write(author, patient, None, "not-custodian-staff", now_ms())
            })
            .await?;
        }
        return Err(forbidden("only the staff and systems of the organisation operating this node write here"));
    }
    // Conditional create, only for the custodian's staff (whose search it is, audited): already
    // here means nothing is written.
    if let Some(found) = crate::fhir::conditional::if_none_exist(&app, &headers, &grant, &resource_type).await? {
        return Ok(found);
    }
    let (patient, registered) =
        match medledger_records::content::patient_of(&app.chain.snapshot(), &resource_type, json)? {
            Some(patient) => (patient, false),
            // A Patient naming no identity is someone new to the network: register them.
            None => (register_patient(&app).await?, true),
        };
    let content = body.clone();
    let type_for_write = resource_type.clone();
    let written = tokio::task::spawn_blocking(move || {
        let request =
            WriteRequest { author, patient, resource_type: &type_for_write, category, content: &content, record: None };
        service.write(&request, now_ms(), &mut rand::rng())
    })
    .await
    .map_err(|_| FhirError::new(StatusCode::INTERNAL_SERVER_ERROR, IssueCode::Exception, "write task failed"))??;
    let mut response = written_response(&app, StatusCode::CREATED, &resource_type, &(&written).into(), &body).await?;
    if let Ok(v) = HeaderValue::from_str(&patient.to_hex()) {
        response.headers_mut().insert("x-medledger-patient-identity", v);
    }
    if registered {
        response.headers_mut().insert("x-medledger-patient-registered", HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// `PUT /fhir/{type}/{id}`: a new version of an existing resource (no update-as-create), by
/// the custodian's staff; `If-Match` makes it conditional on the latest version.
pub(crate) async fn update(
    State(app): State<AppState>,
    Path((resource_type, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, FhirError> {
    served(&resource_type)?;
    if crate::fhir::served::is_directory(&resource_type) {
        return crate::fhir::directory::update(app, headers, resource_type, id, body).await;
    }
    let grant = authorize_record(
        &app,
        &headers,
        &resource_type,
        interactions::UPDATE,
        &id,
        AccessAction::Write,
        Purpose::Treatment,
    )
    .await?;
    check_content_type(&headers)?;
    let expected = if_match(&headers)?;
    let record_id = parse_id(&id)?;
    // A record the caller may not see is, to it, not there: the same answer as for an unknown
    // id, and before the body is looked at (a 400 would tell the two apart). The attempt is
    // still on the record's trail.
    let head = crate::existence::head_of_type(&app, &record_id, &resource_type);
    let visible = head.is_some()
        && crate::existence::sees(&app.chain.snapshot(), &grant.identity, &record_id, Purpose::Treatment);
    if !visible {
        if let (Some(head), Some(service)) = (&head, &app.records) {
            let (who, patient) = (grant.identity, head.patient);
            record_audit(service, move |s| {
                s.audit_refused_write(who, patient, Some(record_id), "not-custodian-staff", now_ms())
            })
            .await?;
        }
        return Err(FhirError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            IssueCode::NotSupported,
            format!(
                "no {resource_type} with id {} exists, and this server does not create resources by update \
                 (POST to /fhir/{resource_type} instead)",
                crate::error::echo(&id)
            ),
        ));
    }
    let content = medledger_records::content::check_record(Some(&resource_type), &body)?;
    if content.validated.id.as_deref() != Some(id.as_str()) {
        return Err(FhirError::new(
            StatusCode::BAD_REQUEST,
            IssueCode::Invalid,
            "the resource's id must equal the id in the URL".to_owned(),
        ));
    }
    let service = records(&app)?;
    let custodian = service.organisation();
    let author = grant.identity;
    let staff = medledger_records::access::is_staff(&app.chain.snapshot(), &author, &custodian);
    if !staff {
        // Every refusal is on the record: a write attempt by someone not the custodian's.
        let patient = app.chain.snapshot().record(&record_id).map(|h| h.patient);
        if let Some(patient) = patient {
            record_audit(&service, move |s| {
                s.audit_refused_write(author, patient, Some(record_id), "not-custodian-staff", now_ms())
            })
            .await?;
        }
        return Err(forbidden("only the staff and systems of the organisation operating this node write here"));
    }
    let existing = app.chain.snapshot().record(&record_id).map(|h| (h.patient, h.category.clone()));
    let patient = medledger_records::content::patient_of(&app.chain.snapshot(), &resource_type, &content.json)?
        .or(existing.as_ref().map(|e| e.0))
        .ok_or_else(|| not_found(format!("no {resource_type} with id {}", crate::error::echo(&id))))?;
    let category = content.category;
    // The ledger refuses a version in another consent category; say so now rather than let
    // the write be refused when its block is built.
    if existing.as_ref().is_some_and(|e| e.1 != category) {
        return Err(FhirError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            IssueCode::BusinessRule,
            "a record's consent category never changes (e.g. a lab Observation cannot become a vital sign): create a new resource",
        ));
    }
    let content = body.clone();
    let type_for_write = resource_type.clone();
    let written = tokio::task::spawn_blocking(move || {
        let request = WriteRequest {
            author,
            patient,
            resource_type: &type_for_write,
            category,
            content: &content,
            record: Some(record_id),
        };
        service.write_expecting(&request, expected, now_ms(), &mut rand::rng())
    })
    .await
    .map_err(|_| FhirError::new(StatusCode::INTERNAL_SERVER_ERROR, IssueCode::Exception, "write task failed"))??;
    written_response(&app, StatusCode::OK, &resource_type, &(&written).into(), &body).await
}

/// `DELETE /fhir/{type}/{id}`: a logical delete by the custodian's staff: the record's next
/// version is a delete marker, so reads answer 410 Gone, searches skip it, and its history
/// (every earlier version, and the delete) stays. Deleting a deleted resource succeeds again
/// without writing anything.
pub(crate) async fn delete(
    State(app): State<AppState>,
    Path((resource_type, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, FhirError> {
    served(&resource_type)?;
    if crate::fhir::served::is_directory(&resource_type) {
        return crate::fhir::directory::delete(app, headers, resource_type, id).await;
    }
    let grant = authorize_record(
        &app,
        &headers,
        &resource_type,
        interactions::DELETE,
        &id,
        AccessAction::Write,
        Purpose::Treatment,
    )
    .await?;
    let record_id = parse_id(&id)?;
    let head =
        crate::existence::head_of_type(&app, &record_id, &resource_type).ok_or_else(|| no_such(&resource_type, &id))?;
    let service = records(&app)?;
    // A record the caller may not see answers as an unknown id; the attempt is audited.
    if !crate::existence::sees(&app.chain.snapshot(), &grant.identity, &record_id, Purpose::Treatment) {
        let (who, patient) = (grant.identity, head.patient);
        record_audit(&service, move |s| {
            s.audit_refused_write(who, patient, Some(record_id), "not-custodian-staff", now_ms())
        })
        .await?;
        return Err(no_such(&resource_type, &id));
    }
    let custodian = service.organisation();
    let author = grant.identity;
    let staff = medledger_records::access::is_staff(&app.chain.snapshot(), &author, &custodian);
    if !staff {
        let patient = head.patient;
        record_audit(&service, move |s| {
            s.audit_refused_write(author, patient, Some(record_id), "not-custodian-staff", now_ms())
        })
        .await?;
        return Err(forbidden("only the staff and systems of the organisation operating this node delete here"));
    }
    let latest = {
        let service = service.clone();
        tokio::task::spawn_blocking(move || service.plaintext_for_index(&record_id, head.latest_version))
            .await
            .map_err(|_| {
                FhirError::new(StatusCode::INTERNAL_SERVER_ERROR, IssueCode::Exception, "read task failed")
            })??
    };
    if is_tombstone(&latest) {
        let mut response = StatusCode::NO_CONTENT.into_response();
        response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        return Ok(response);
    }
    let marker = tombstone(&resource_type);
    let content = marker.clone();
    let type_for_write = resource_type.clone();
    let written = tokio::task::spawn_blocking(move || {
        let request = WriteRequest {
            author,
            patient: head.patient,
            resource_type: &type_for_write,
            category: &head.category,
            content: &content,
            record: Some(record_id),
        };
        service.write_expecting(&request, Some(head.latest_version), now_ms(), &mut rand::rng())
    })
    .await
    .map_err(|_| FhirError::new(StatusCode::INTERNAL_SERVER_ERROR, IssueCode::Exception, "delete task failed"))??;
    let committed = app.fhir_commit_wait_ms == 0 || wait_for_commit(&app, &written.tx_id).await?;
    let mut response =
        if committed { StatusCode::NO_CONTENT.into_response() } else { StatusCode::ACCEPTED.into_response() };
    if let Ok(v) = HeaderValue::from_str(&format!("W/\"{}\"", written.version)) {
        response.headers_mut().insert(header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&written.tx_id.to_hex()) {
        response.headers_mut().insert("x-medledger-tx", v);
    }
    Ok(response)
}
