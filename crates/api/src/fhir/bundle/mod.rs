//! `POST /fhir`: transaction and batch Bundles.
//!
//! A **transaction** is all-or-nothing: every entry is checked (structure, scopes, references,
//! patient, consent category) before anything is written, and then the whole Bundle becomes one
//! ledger batch transaction (`Payload::Batch`), which the ledger applies entirely or not at
//! all. New resources get their ids before anything is stored, so references between entries
//! (`urn:uuid:…`, full URLs, and relative `Type/id` references under an entry's base) and
//! conditional references (`Type?identifier=…`, resolved to exactly one resource of this
//! Bundle or of the server that the caller may see) are rewritten in the entries' bytes: only
//! those reference strings change, the rest of each resource is stored as received.
//!
//! A **batch** runs each entry on its own (each a transaction of one): one failing entry does
//! not stop the others, and entries may not reference each other.
//!
//! Supported entry requests: `POST Type` (create), `PUT Type/id` (update, `ifMatch` honoured),
//! `DELETE Type/id` (logical delete). Conditional create/update/delete and `GET` entries are
//! refused with `not-supported`, never ignored.
//!
//! Here: the handler, which validates the Bundle and reads its entries
//! (`records::bundle::entries`); then `records::bundle::plan` resolves and checks them without
//! writing anything, and `execute.rs` submits the plan, waits for its commit and answers.

use axum::{
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::Response,
};
use medledger_fhir::{
    IssueCode,
    json::{self, Limits},
};

use crate::{
    app::AppState,
    clock::now_ms,
    fhir::{errors::FhirError, request::check_content_type},
    smart::bearer::bearer,
};

pub(crate) mod execute;

use execute::{batch, error, transaction};
use medledger_records::bundle::entries::entry_in;

/// Most entries in one Bundle.
pub const BUNDLE_ENTRIES_MAX: usize = 1_000;

/// `POST /fhir`.
pub(crate) async fn bundle(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, FhirError> {
    let grant =
        bearer(&app, &headers, now_ms()).map_err(|why| error(StatusCode::UNAUTHORIZED, IssueCode::Login, why))?;
    check_content_type(&headers)?;
    // Parsing and validating up to 16 MiB is blocking work.
    let body_for_task = body.clone();
    let validated = tokio::task::spawn_blocking(move || medledger_fhir::validate(&body_for_task))
        .await
        .map_err(|_| error(StatusCode::INTERNAL_SERVER_ERROR, IssueCode::Exception, "validation task failed"))?
        .map_err(|issues| FhirError::with_issues(StatusCode::BAD_REQUEST, issues))?;
    if validated.resource_type != "Bundle" {
        return Err(error(
            StatusCode::BAD_REQUEST,
            IssueCode::Invalid,
            format!("POST /fhir takes a transaction or batch Bundle, not a {}", validated.resource_type),
        ));
    }
    let parsed = json::parse(&body, &Limits::default())
        .map_err(|e| error(StatusCode::BAD_REQUEST, IssueCode::Invalid, e.to_string()))?;
    let bundle_type = parsed.get("type").and_then(|t| t.as_str()).unwrap_or("").to_owned();
    if validated.entries.len() > BUNDLE_ENTRIES_MAX {
        return Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            IssueCode::TooLong,
            format!("a Bundle has at most {BUNDLE_ENTRIES_MAX} entries here; split it"),
        ));
    }
    let entries_json: Vec<&json::Value<'_>> =
        parsed.get("entry").and_then(|e| e.as_array()).map(|a| a.iter().collect()).unwrap_or_default();
    let mut entries = Vec::with_capacity(validated.entries.len());
    for (index, entry) in validated.entries.iter().enumerate() {
        let if_match = entries_json
            .get(index)
            .and_then(|e| e.get("request"))
            .and_then(|r| r.get("ifMatch"))
            .and_then(|v| v.as_str());
        let unsupported = entries_json
            .get(index)
            .and_then(|e| e.get("request"))
            .and_then(|r| ["ifNoneMatch", "ifModifiedSince"].into_iter().find(|k| r.get(k).is_some()));
        let if_none_exist = entries_json
            .get(index)
            .and_then(|e| e.get("request"))
            .and_then(|r| r.get("ifNoneExist"))
            .and_then(|v| v.as_str())
            .map(str::to_owned);
        entries.push(
            entry_in(index, entry, &body, if_match, unsupported)
                .map(|mut e| {
                    e.if_none_exist = if_none_exist;
                    e
                })
                .map_err(FhirError::from),
        );
    }
    match bundle_type.as_str() {
        "transaction" => {
            let entries = entries.into_iter().collect::<Result<Vec<_>, _>>()?;
            transaction(&app, &grant, entries).await
        }
        "batch" => batch(&app, &grant, entries).await,
        other => Err(error(
            StatusCode::BAD_REQUEST,
            IssueCode::Invalid,
            format!("POST /fhir takes a transaction or batch Bundle, not a {} Bundle", crate::error::echo(other)),
        )),
    }
}
