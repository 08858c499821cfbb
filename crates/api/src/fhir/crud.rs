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
use medledger_records::{WriteRequest, resource::ResourceError};
use medledger_types::IdentityId;

use crate::{
    app::AppState,
    clock::now_ms,
    fhir::{
        commit::{wait_for_commit, written_response},
        credentials::{authorize, authorize_record, on_service, purpose, records},
        errors::{FhirError, forbidden, no_such, no_update_as_create, not_found, refused},
        render::resource_response,
        request::{check_content_type, if_match, parse_id},
        served::{served, tombstone},
    },
    smart::scopes::interactions,
};

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
    let service = records(&app)?;
    let type_for_read = resource_type.clone();
    let read = on_service(&service, move |s| {
        s.read_resource(grant.caller(), &type_for_read, record_id, version, purpose, now_ms())
    })
    .await?
    .map_err(|e| refused(e, &resource_type, &id))?;
    resource_response(StatusCode::OK, &resource_type, &record_id, read.version, read.committed_ms, &read.plaintext)
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
    let category = content.category;
    let service = records(&app)?;
    let author = grant.identity;
    let type_for_check = resource_type.clone();
    let target =
        on_service(&service, move |s| s.check_write(author, &type_for_check, &content, None, now_ms())).await?;
    // A refused author learns nothing more (not even whether a conditional create matches);
    // content naming no valid patient is refused after the conditional, as a match wins.
    let target = match target {
        Ok(target) => Ok(target),
        Err(ResourceError::Content(content)) => Err(content),
        Err(other) => return Err(refused(other, &resource_type, "")),
    };
    // Conditional create, only for the custodian's staff (whose search it is, audited): already
    // here means nothing is written.
    if let Some(found) = crate::fhir::conditional::if_none_exist(&app, &headers, &grant, &resource_type).await? {
        return Ok(found);
    }
    let (patient, registered) = match target?.patient {
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
    let service = records(&app)?;
    let author = grant.identity;
    // A record the caller may not see is, to it, not there: the same answer as for an unknown
    // id, and before the body is looked at (a 400 would tell the two apart). The attempt is
    // still on the record's trail.
    let type_for_check = resource_type.clone();
    let visible =
        on_service(&service, move |s| s.visible_for_write(&author, &type_for_check, record_id, now_ms())).await?;
    match visible {
        Ok(_) => {}
        Err(ResourceError::Unknown) => return Err(no_update_as_create(&resource_type, &id)),
        Err(other) => return Err(refused(other, &resource_type, &id)),
    }
    let content = medledger_records::content::check_record(Some(&resource_type), &body)?;
    if content.validated.id.as_deref() != Some(id.as_str()) {
        return Err(FhirError::new(
            StatusCode::BAD_REQUEST,
            IssueCode::Invalid,
            "the resource's id must equal the id in the URL".to_owned(),
        ));
    }
    let type_for_check = resource_type.clone();
    let target =
        on_service(&service, move |s| s.check_write(author, &type_for_check, &content, Some(record_id), now_ms()))
            .await?
            .map_err(|e| match e {
                ResourceError::Unknown => not_found(format!("no {resource_type} with id {}", crate::error::echo(&id))),
                other => refused(other, &resource_type, &id),
            })?;
    let (patient, category) = (target.patient.ok_or_else(|| no_such(&resource_type, &id))?, target.category);
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
    let service = records(&app)?;
    let author = grant.identity;
    let type_for_check = resource_type.clone();
    let deletable = on_service(&service, move |s| s.check_delete(author, &type_for_check, record_id, now_ms()))
        .await?
        .map_err(|e| match e {
            ResourceError::NotStaff => {
                forbidden("only the staff and systems of the organisation operating this node delete here")
            }
            other => refused(other, &resource_type, &id),
        })?;
    if deletable.already_deleted {
        let mut response = StatusCode::NO_CONTENT.into_response();
        response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        return Ok(response);
    }
    let head = deletable.head;
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
