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
use medledger_records::RecordError;
use medledger_types::{IdentityId, RecordId};

use crate::{
    app::AppState,
    clock::now_ms,
    fhir::{
        commit::{Written, committed_at_ms, wait_for_commit, written_response},
        credentials::{authorize, is_staff, records},
        errors::{FhirError, forbidden, not_found},
        paging::{HISTORY_VERSIONS_MAX, page_links, paging},
        render::{bundle_response, push_history_entry, resource_response},
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
    let matches = app.chain.snapshot().directory_entry(&entry_id).is_some_and(|h| h.resource_type == resource_type);
    if !matches {
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
    let entry_id = entry_of_type(&app, &resource_type, &id)?;
    let service = records(&app)?;
    let read = tokio::task::spawn_blocking(move || service.read_directory(&entry_id, version))
        .await
        .map_err(|_| task_failed("read"))??;
    if is_tombstone(&read.content) {
        return Err(FhirError::new(
            StatusCode::GONE,
            IssueCode::Deleted,
            format!("{resource_type}/{id} was deleted (version {}); its history is kept", read.version),
        ));
    }
    let committed_ms = committed_at_ms(&app, &entry_id, read.version).unwrap_or_else(now_ms);
    resource_response(StatusCode::OK, &resource_type, &entry_id, read.version, committed_ms, &read.content)
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
    if !is_staff(app, &grant.identity, &service.organisation()) {
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
    let entry_id = entry_of_type(&app, &resource_type, &id).map_err(|_| {
        FhirError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            IssueCode::NotSupported,
            format!(
                "no {resource_type} with id {} exists, and this server does not create resources by update \
                 (POST to /fhir/{resource_type} instead)",
                crate::error::echo(&id)
            ),
        )
    })?;
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
    let entry_id = entry_of_type(&app, &resource_type, &id)?;
    let versions: Vec<(u32, u64)> = app
        .chain
        .patient_index()
        .directory_versions(&entry_id)
        .iter()
        .rev()
        .map(|(v, p)| (*v, p.committed_at_ms))
        .collect();
    let (count, offset) = paging(&query, HISTORY_VERSIONS_MAX, "instance history")?;
    let total = versions.len();
    let versions: Vec<(u32, u64)> = versions.into_iter().skip(offset).take(count).collect();
    let service = records(&app)?;
    let wanted = versions.clone();
    let contents = tokio::task::spawn_blocking(move || {
        wanted
            .iter()
            .map(|(v, _)| service.read_directory(&entry_id, Some(*v)).map(|r| r.content))
            .collect::<Result<Vec<_>, _>>()
    })
    .await
    .map_err(|_| task_failed("read"))??;
    let id_hex = entry_id.to_hex();
    let links =
        page_links(&format!("{}/fhir/{resource_type}/{id_hex}/_history", app.public_base()), count, offset, total);
    let mut bundle = format!(r#"{{"resourceType":"Bundle","type":"history","total":{total},"link":{links},"entry":["#);
    for (i, ((version, at_ms), content)) in versions.iter().zip(&contents).enumerate() {
        if i > 0 {
            bundle.push(',');
        }
        push_history_entry(&mut bundle, &resource_type, &entry_id, *version, *at_ms, content);
    }
    bundle.push_str("]}");
    Ok(bundle_response(bundle))
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
    // (log index, entry, version, committed at), from one snapshot (state and index agree).
    let snapshot = app.chain.snapshot();
    let ids: Vec<RecordId> = snapshot
        .directory_entries()
        .filter(|(_, head)| head.resource_type == resource_type)
        .map(|(id, _)| *id)
        .collect();
    let mut versions: Vec<(u64, RecordId, u32, u64)> = {
        let index = snapshot.index();
        ids.iter()
            .flat_map(|id| {
                index
                    .directory_versions(id)
                    .iter()
                    .map(|(v, p)| (p.log_index, *id, *v, p.committed_at_ms))
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    versions.sort_by_key(|v| std::cmp::Reverse((v.0, v.2)));
    let total = versions.len();
    let page: Vec<_> = versions.into_iter().skip(offset).take(count).collect();
    let service = records(&app)?;
    let wanted = page.clone();
    let contents = tokio::task::spawn_blocking(move || {
        wanted
            .iter()
            .map(|(_, id, v, _)| service.read_directory(id, Some(*v)).map(|r| r.content))
            .collect::<Result<Vec<_>, _>>()
    })
    .await
    .map_err(|_| task_failed("read"))??;
    let links = page_links(&format!("{}/fhir/{resource_type}/_history", app.public_base()), count, offset, total);
    let mut bundle = format!(r#"{{"resourceType":"Bundle","type":"history","total":{total},"link":{links},"entry":["#);
    for (i, ((_, id, version, at_ms), content)) in page.iter().zip(&contents).enumerate() {
        if i > 0 {
            bundle.push(',');
        }
        push_history_entry(&mut bundle, &resource_type, id, *version, *at_ms, content);
    }
    bundle.push_str("]}");
    Ok(bundle_response(bundle))
}
