//! The consortium directory over FHIR: Organization, Practitioner, PractitionerRole and
//! Location (`medledger_types::DIRECTORY_RESOURCE_TYPES`). `crud.rs` and `history.rs` hand
//! these types here.
//!
//! These describe organisations, staff and places, not patients, so they are committed in
//! clear (`Payload::DirectoryPut`), readable by any authenticated client whose token's scopes
//! cover the type, with no consent decision and no access event. Writes are by the staff and
//! systems of the organisation operating this node; an entry is owned by the organisation that
//! created it, and only that organisation writes its later versions. Delete is logical, as for
//! records: the next version is a delete marker. Instance and type history list every version.
//! Content that is or can carry patient data (contained resources, narrative, extensions off
//! a short allow-list) is refused on every write path (`records::content::check_directory`).

use axum::{
    body::Bytes,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use medledger_fhir::IssueCode;
use medledger_records::{RecordError, history::Page, resource::ResourceError};
use medledger_types::{IdentityId, RecordId};

use crate::{
    app::AppState,
    clock::now_ms,
    fhir::{
        commit::{Written, wait_for_commit, written_response},
        credentials::{authorize, on_service, records},
        errors::{FhirError, forbidden, no_update_as_create, not_found, refused},
        paging::{HISTORY_VERSIONS_MAX, paging},
        render::{history_response, resource_response},
        request::{check_content_type, if_match, parse_id},
        served::{is_tombstone, tombstone},
    },
    smart::scopes::interactions,
};

fn task_failed(what: &str) -> FhirError {
    FhirError::new(StatusCode::INTERNAL_SERVER_ERROR, IssueCode::Exception, format!("{what} task failed"))
}

/// Maps a node refusal of a directory write: another organisation's entry is forbidden, not
/// misdirected (no node can write it for this caller).
fn write_error(e: RecordError) -> FhirError {
    match e {
        RecordError::NotCustodian => forbidden("this entry belongs to another organisation; only it updates it"),
        other => other.into(),
    }
}

/// The entry `id` names, if it is a directory entry of `resource_type`.
fn entry_of_type(app: &AppState, resource_type: &str, id: &str) -> Result<RecordId, FhirError> {
    let entry_id = parse_id(id)?;
    if !records(app)?.directory_has(resource_type, &entry_id) {
        return Err(not_found(format!("no {resource_type} with id {}", crate::error::echo(id))));
    }
    Ok(entry_id)
}

/// `GET /fhir/{type}/{id}` and `…/_history/{vid}` for a directory type.
pub(crate) async fn read(
    app: AppState,
    headers: HeaderMap,
    resource_type: String,
    id: String,
    version: Option<u32>,
) -> Result<Response, FhirError> {
    authorize(&app, &headers, &resource_type, interactions::READ)?;
    let entry_id = parse_id(&id)?;
    let service = records(&app)?;
    let type_for_read = resource_type.clone();
    let read = on_service(&service, move |s| s.directory_read(&type_for_read, entry_id, version, now_ms()))
        .await?
        .map_err(|e| match e {
            ResourceError::Unknown => not_found(format!("no {resource_type} with id {}", crate::error::echo(&id))),
            other => refused(other, &resource_type, &id),
        })?;
    resource_response(StatusCode::OK, &resource_type, &entry_id, read.version, read.committed_ms, &read.plaintext)
}

/// Checks a directory write's caller and body; returns the author.
fn check_write(
    app: &AppState,
    headers: &HeaderMap,
    resource_type: &str,
    interaction: u8,
    body: Option<&[u8]>,
) -> Result<IdentityId, FhirError> {
    let grant = authorize(app, headers, resource_type, interaction)?;
    if let Some(body) = body {
        check_content_type(headers)?;
        let validated =
            medledger_fhir::validate(body).map_err(|issues| FhirError::with_issues(StatusCode::BAD_REQUEST, issues))?;
        if validated.resource_type != resource_type {
            return Err(FhirError::new(
                StatusCode::BAD_REQUEST,
                IssueCode::Invalid,
                format!("the body is a {}, the URL says {resource_type}", validated.resource_type),
            ));
        }
        // Small enough for the ledger, and no patient data in the clear directory.
        medledger_records::content::check_directory(resource_type, body)?;
    }
    let service = records(app)?;
    if !service.writes_here(&grant.identity) {
        return Err(forbidden("only the staff and systems of the organisation operating this node write here"));
    }
    Ok(grant.identity)
}

/// `POST /fhir/{type}` for a directory type.
pub(crate) async fn create(
    app: AppState,
    headers: HeaderMap,
    resource_type: String,
    body: Bytes,
) -> Result<Response, FhirError> {
    check_write(&app, &headers, &resource_type, interactions::CREATE, Some(&body))?;
    let grant = authorize(&app, &headers, &resource_type, interactions::CREATE)?;
    // Conditional create: already here means nothing is written.
    if let Some(found) = crate::fhir::conditional::if_none_exist(&app, &headers, &grant, &resource_type).await? {
        return Ok(found);
    }
    let service = records(&app)?;
    let (content, type_for_write) = (body.clone(), resource_type.clone());
    let written = tokio::task::spawn_blocking(move || {
        service.write_directory(&type_for_write, &content, None, None, now_ms(), &mut rand::rng())
    })
    .await
    .map_err(|_| task_failed("write"))?
    .map_err(write_error)?;
    let (entry_id, version) = written.versions[0];
    let written = Written { record_id: entry_id, version, tx_id: written.tx_id };
    written_response(&app, StatusCode::CREATED, &resource_type, &written, &body).await
}

/// `PUT /fhir/{type}/{id}` for a directory type: the next version of an existing entry of
/// this organisation's (no update-as-create); `If-Match` makes it conditional.
pub(crate) async fn update(
    app: AppState,
    headers: HeaderMap,
    resource_type: String,
    id: String,
    body: Bytes,
) -> Result<Response, FhirError> {
    check_write(&app, &headers, &resource_type, interactions::UPDATE, Some(&body))?;
    let expected = if_match(&headers)?;
    let entry_id = entry_of_type(&app, &resource_type, &id).map_err(|_| no_update_as_create(&resource_type, &id))?;
    let validated =
        medledger_fhir::validate(&body).map_err(|issues| FhirError::with_issues(StatusCode::BAD_REQUEST, issues))?;
    if validated.id.as_deref() != Some(id.as_str()) {
        return Err(FhirError::new(
            StatusCode::BAD_REQUEST,
            IssueCode::Invalid,
            "the resource's id must equal the id in the URL".to_owned(),
        ));
    }
    let service = records(&app)?;
    let (content, type_for_write) = (body.clone(), resource_type.clone());
    let written = tokio::task::spawn_blocking(move || {
        service.write_directory(&type_for_write, &content, Some(entry_id), expected, now_ms(), &mut rand::rng())
    })
    .await
    .map_err(|_| task_failed("write"))?
    .map_err(write_error)?;
    let (entry_id, version) = written.versions[0];
    let written = Written { record_id: entry_id, version, tx_id: written.tx_id };
    written_response(&app, StatusCode::OK, &resource_type, &written, &body).await
}

/// `DELETE /fhir/{type}/{id}` for a directory type: a logical delete (the next version is a
/// delete marker); deleting a deleted entry succeeds without writing.
pub(crate) async fn delete(
    app: AppState,
    headers: HeaderMap,
    resource_type: String,
    id: String,
) -> Result<Response, FhirError> {
    check_write(&app, &headers, &resource_type, interactions::DELETE, None)?;
    let entry_id = entry_of_type(&app, &resource_type, &id)?;
    let service = records(&app)?;
    let marker = tombstone(&resource_type);
    let type_for_write = resource_type.clone();
    let written = tokio::task::spawn_blocking(move || {
        let latest = service.read_directory(&entry_id, None)?;
        if is_tombstone(&latest.content) {
            return Ok(None);
        }
        service
            .write_directory(&type_for_write, &marker, Some(entry_id), Some(latest.version), now_ms(), &mut rand::rng())
            .map(Some)
    })
    .await
    .map_err(|_| task_failed("delete"))?
    .map_err(write_error)?;
    let mut response = match &written {
        None => StatusCode::NO_CONTENT.into_response(),
        Some(w) => {
            let committed = app.fhir_commit_wait_ms == 0 || wait_for_commit(&app, &w.tx_id).await?;
            let mut r = if committed { StatusCode::NO_CONTENT } else { StatusCode::ACCEPTED }.into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("W/\"{}\"", w.versions[0].1)) {
                r.headers_mut().insert(header::ETAG, v);
            }
            if let Ok(v) = HeaderValue::from_str(&w.tx_id.to_hex()) {
                r.headers_mut().insert("x-medledger-tx", v);
            }
            r
        }
    };
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// `GET /fhir/{type}/{id}/_history` for a directory type: every version, newest first.
pub(crate) async fn history(
    app: AppState,
    headers: HeaderMap,
    resource_type: String,
    id: String,
    query: std::collections::HashMap<String, String>,
) -> Result<Response, FhirError> {
    authorize(&app, &headers, &resource_type, interactions::READ)?;
    let entry_id = parse_id(&id)?;
    // An unknown entry answers as such whatever the paging says (asked with an empty page).
    let (count, offset) = paging(&query, HISTORY_VERSIONS_MAX, "instance history").unwrap_or((0, 0));
    let service = records(&app)?;
    let type_for_read = resource_type.clone();
    let history = on_service(&service, move |s| s.directory_history(&type_for_read, entry_id, Page { count, offset }))
        .await?
        .map_err(|e| match e {
            ResourceError::Unknown => not_found(format!("no {resource_type} with id {}", crate::error::echo(&id))),
            other => refused(other, &resource_type, &id),
        })?;
    paging(&query, HISTORY_VERSIONS_MAX, "instance history")?;
    let url = format!("{}/fhir/{resource_type}/{}/_history", app.public_base(), entry_id.to_hex());
    Ok(history_response(&url, &resource_type, (count, offset), &history))
}

/// `GET /fhir/{type}/_history` for a directory type: every version of every entry of the
/// type, newest commit first, paged.
pub(crate) async fn type_history(
    app: AppState,
    headers: HeaderMap,
    resource_type: String,
    query: std::collections::HashMap<String, String>,
) -> Result<Response, FhirError> {
    // SMART maps type history to search (`s`), as for records.
    authorize(&app, &headers, &resource_type, interactions::SEARCH)?;
    let (count, offset) = paging(&query, HISTORY_VERSIONS_MAX, "type history")?;
    let service = records(&app)?;
    let type_for_read = resource_type.clone();
    let history =
        on_service(&service, move |s| s.directory_type_history(&type_for_read, Page { count, offset })).await??;
    let url = format!("{}/fhir/{resource_type}/_history", app.public_base());
    Ok(history_response(&url, &resource_type, (count, offset), &history))
}
