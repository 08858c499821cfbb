//! `GET /fhir/$export-status/{job}` (progress, then the manifest), `DELETE` on it (cancel or
//! discard), and `GET /fhir/$export-file/{job}/{file}`: for the client that started the job
//! only; to anyone else it does not exist.

use axum::{
    extract::{Path, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use medledger_fhir::{IssueCode, instant::instant_from_ms};
use medledger_records::export::jobs::{Finished, NdjsonFile, RETRY_AFTER_POLL_S};

use crate::{
    app::AppState,
    clock::now_ms,
    fhir::{credentials::authenticate, errors::FhirError},
    smart::scopes::interactions,
};

const NDJSON: &str = "application/fhir+ndjson";

fn not_found(what: &str) -> FhirError {
    FhirError::new(StatusCode::NOT_FOUND, IssueCode::NotFound, format!("no export {}", crate::error::echo(what)))
}

/// `GET /fhir/$export-status/{job}`: 202 with `X-Progress` while running, then 200 with the
/// manifest; 500 with an OperationOutcome if the job itself failed.
pub(crate) async fn status(
    State(app): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, FhirError> {
    let grant = authenticate(&app, &headers)?;
    let job = app.exports.get(&grant.identity, &id, now_ms()).ok_or_else(|| not_found(&id))?;
    let finished = job.finished.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut response = match &*finished {
        None => {
            let progress = *job.progress.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let text = if progress.exporting {
                format!("exported {} of {} resources", progress.done, progress.total)
            } else {
                "preparing: selecting the records the client may see".to_owned()
            };
            let mut response = StatusCode::ACCEPTED.into_response();
            if let Ok(v) = HeaderValue::from_str(&text) {
                response.headers_mut().insert("x-progress", v);
            }
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_POLL_S));
            response
        }
        Some(Finished::Failed { diagnostics, .. }) => {
            FhirError::new(StatusCode::INTERNAL_SERVER_ERROR, IssueCode::Exception, diagnostics.clone()).into_response()
        }
        Some(Finished::Complete { transaction_time_ms, outputs, errors, .. }) => {
            let entry = |f: &NdjsonFile| {
                serde_json::json!({
                    "type": f.resource_type,
                    "url": format!("{}/fhir/$export-file/{}/{}", job.base, job.id, f.name),
                    "count": f.lines,
                })
            };
            let manifest = serde_json::json!({
                "transactionTime": instant_from_ms(*transaction_time_ms),
                "request": job.request,
                "requiresAccessToken": true,
                "output": outputs.iter().map(entry).collect::<Vec<_>>(),
                "error": errors.iter().map(entry).collect::<Vec<_>>(),
            });
            let mut response = (StatusCode::OK, manifest.to_string()).into_response();
            response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        }
    };
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// `DELETE /fhir/$export-status/{job}`: cancels a running job or discards a finished one's
/// output.
pub(crate) async fn delete(
    State(app): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, FhirError> {
    let grant = authenticate(&app, &headers)?;
    if !app.exports.remove(&grant.identity, &id, now_ms()) {
        return Err(not_found(&id));
    }
    Ok(StatusCode::ACCEPTED.into_response())
}

/// `GET /fhir/$export-file/{job}/{file}`: one output or error file, for the job's client,
/// whose token must still allow reading the file's type.
pub(crate) async fn file(
    State(app): State<AppState>,
    Path((id, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, FhirError> {
    let grant = authenticate(&app, &headers)?;
    let job = app.exports.get(&grant.identity, &id, now_ms()).ok_or_else(|| not_found(&id))?;
    let body = {
        let finished = job.finished.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(Finished::Complete { outputs, errors, .. }) = &*finished else {
            return Err(not_found(&format!("{id}/{name}")));
        };
        if let Some(output) = outputs.iter().find(|f| f.name == name) {
            if !grant.allows(&output.resource_type, interactions::READ) {
                return Err(FhirError::new(
                    StatusCode::FORBIDDEN,
                    IssueCode::Forbidden,
                    format!("the token's scopes do not allow reading {}", output.resource_type),
                ));
            }
            output.body.clone()
        } else if let Some(error) = errors.iter().find(|f| f.name == name) {
            error.body.clone()
        } else {
            return Err(not_found(&format!("{id}/{name}")));
        }
    };
    let mut response = (StatusCode::OK, body).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(NDJSON));
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}
