//! Executing a planned Bundle: the plan submitted as one batch transaction, its commit awaited
//! (and its new patients' keys given up if the ledger refuses it, even after the answer), and
//! the `transaction-response` or `batch-response` Bundle.

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use medledger_fhir::{IssueCode, instant::instant_from_ms};
use medledger_node::chain::TxStatus;
use medledger_records::{
    BatchWrite, BatchWritten, WriteRequest,
    bundle::{
        Plan, Planner,
        entries::{EntryIn, Method, Planned},
        plan,
    },
};
use medledger_types::IdentityId;

use crate::{
    app::AppState,
    clock::now_ms,
    fhir::{
        commit::{Outcome, committed_at_ms, latest_version, outcome_within, wait},
        credentials::records,
        errors::{FHIR_JSON, FhirError},
        served::is_directory,
    },
    smart::scopes::Grant,
};

/// How long a Bundle answered 202 (not committed in time) is watched, to clean up after it
/// if the ledger refuses it: past the mempool's time to live (after which the node rejects
/// it as expired), with a minute's margin for the expiry to run.
const ABANDON_WATCH_MS: u64 = medledger_types::limits::MEMPOOL_TX_TTL_MS + 60_000;

/// A refusal of the whole Bundle.
pub(super) fn error(status: StatusCode, code: IssueCode, diagnostics: impl Into<String>) -> FhirError {
    FhirError::new(status, code, diagnostics)
}

/// Submits a plan as one batch; returns the submitted batch, or `None` if nothing needed
/// writing (deletes of deleted resources only).
async fn submit(
    app: &AppState,
    grant: &Grant,
    plan: Plan,
) -> Result<(Option<BatchWritten>, Vec<Planned>, Vec<IdentityId>), FhirError> {
    let service = records(app)?;
    let author = grant.identity;
    let new_ids: Vec<IdentityId> = plan.new_patients.iter().map(|k| k.id()).collect();
    let Plan { new_patients, entries } = plan;
    let (written, entries) = tokio::task::spawn_blocking(move || {
        let writes: Vec<BatchWrite<'_>> = entries
            .iter()
            .filter(|p| !p.noop)
            .map(|p| match is_directory(&p.resource_type) {
                true => BatchWrite::Directory {
                    resource_type: &p.resource_type,
                    content: &p.content,
                    entry: (p.method != Method::Post).then_some(p.id),
                    expected: p.expected,
                    new_id: (p.method == Method::Post).then_some(p.id),
                },
                false => BatchWrite::Record {
                    request: WriteRequest {
                        author,
                        patient: p.patient.expect("records have a patient"),
                        resource_type: &p.resource_type,
                        category: p.category,
                        content: &p.content,
                        record: (p.method != Method::Post).then_some(p.id),
                    },
                    expected: p.expected,
                    new_id: (p.method == Method::Post).then_some(p.id),
                },
            })
            .collect();
        let written = match writes.is_empty() {
            true => Ok(None),
            false => service.write_batch(&new_patients, &writes, now_ms(), &mut rand::rng()).map(Some),
        };
        drop(writes);
        (written, entries)
    })
    .await
    .map_err(|_| error(StatusCode::INTERNAL_SERVER_ERROR, IssueCode::Exception, "write task failed"))?;
    let written = written.map_err(|e| match e {
        medledger_records::RecordError::NotCustodian => error(
            StatusCode::FORBIDDEN,
            IssueCode::Forbidden,
            "a resource of the Bundle belongs to another organisation; only it updates it",
        ),
        other => other.into(),
    })?;
    Ok((written, entries, new_ids))
}

/// `response` of one written entry.
fn entry_response(app: &AppState, planned: &Planned, version: Option<u32>, committed: bool) -> String {
    let id = planned.id.to_hex();
    if planned.noop && planned.method == Method::Post {
        // A conditional create that found its resource: that resource, as it is.
        let latest = latest_version(app, &planned.id);
        let mut fields = vec![r#""status":"200 OK""#.to_owned()];
        if let Some(v) = latest {
            fields.push(format!(r#""location":"{}/{id}/_history/{v}""#, planned.resource_type));
            fields.push(format!(r#""etag":"W/\"{v}\"""#));
        }
        return format!(r#"{{"response":{{{}}}}}"#, fields.join(","));
    }
    let status = match (committed, planned.method) {
        (false, _) => "202 Accepted",
        (true, Method::Post) => "201 Created",
        (true, Method::Put) => "200 OK",
        (true, Method::Delete) => "204 No Content",
    };
    let mut fields = vec![format!(r#""status":"{status}""#)];
    if let Some(version) = version {
        if planned.method != Method::Delete {
            fields.push(format!(r#""location":"{}/{id}/_history/{version}""#, planned.resource_type));
        }
        fields.push(format!(r#""etag":"W/\"{version}\"""#));
        if let Some(at) = committed_at_ms(app, &planned.id, version) {
            fields.push(format!(r#""lastModified":"{}""#, instant_from_ms(at)));
        }
    }
    format!(r#"{{"response":{{{}}}}}"#, fields.join(","))
}

fn bundle_response(status: StatusCode, body: String, tx: Option<&medledger_types::TxId>) -> Response {
    let mut response = (status, body).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(tx) = tx
        && let Ok(v) = HeaderValue::from_str(&tx.to_hex())
    {
        response.headers_mut().insert("x-medledger-tx", v);
    }
    response
}

/// Plans, submits and waits for one transaction.
async fn run_transaction(
    app: &AppState,
    grant: &Grant,
    entries: Vec<EntryIn>,
    batch_entry: bool,
) -> Result<(Vec<Planned>, Option<BatchWritten>, Outcome), FhirError> {
    let plan = {
        let (app, grant) = (app.clone(), grant.clone());
        let service = records(&app)?;
        tokio::task::spawn_blocking(move || {
            let planner = Planner { service: &service, search: &app.search, caller: grant.caller(), now_ms: now_ms() };
            plan(&planner, entries, batch_entry, &mut rand::rng())
        })
        .await
        .map_err(|_| error(StatusCode::INTERNAL_SERVER_ERROR, IssueCode::Exception, "planning task failed"))??
    };
    let (written, planned, new_patients) = submit(app, grant, plan).await?;
    let outcome = match &written {
        None => Outcome::Committed,
        Some(w) => wait(app, &w.tx_id).await,
    };
    match (&outcome, &written, &app.records) {
        (Outcome::Refused(_), Some(w), Some(service)) => {
            let (service, w) = (service.clone(), w.clone());
            let _ = tokio::task::spawn_blocking(move || service.abandon_batch(&w, &new_patients)).await;
        }
        // Not committed in time: clean up later if the ledger refuses it after all.
        (Outcome::Pending, Some(w), Some(service)) => {
            let (app, service, w) = (app.clone(), service.clone(), w.clone());
            // Told by the chain when the batch commits, is rejected or expires; nothing polls.
            tokio::spawn(async move {
                // Committed, or still pending (it may yet commit): its keys are kept.
                if let Some(TxStatus::Rejected { .. }) = outcome_within(&app, &w.tx_id, ABANDON_WATCH_MS).await {
                    let _ = tokio::task::spawn_blocking(move || service.abandon_batch(&w, &new_patients)).await;
                }
            });
        }
        _ => {}
    }
    Ok((planned, written, outcome))
}

/// The version each planned entry got (deletes of deleted resources: none).
fn versions_of(planned: &[Planned], written: Option<&BatchWritten>) -> Vec<Option<u32>> {
    let mut versions = written.map(|w| w.versions.iter()).into_iter().flatten();
    planned.iter().map(|p| if p.noop { None } else { versions.next().map(|(_, v)| *v) }).collect()
}

pub(super) async fn transaction(app: &AppState, grant: &Grant, entries: Vec<EntryIn>) -> Result<Response, FhirError> {
    let count = entries.len();
    let (planned, written, outcome) = run_transaction(app, grant, entries, false).await?;
    let committed = match outcome {
        Outcome::Refused(reason) => {
            return Err(error(
                StatusCode::CONFLICT,
                IssueCode::Conflict,
                format!("the transaction was refused when its block was built, and nothing was written: {reason}"),
            ));
        }
        Outcome::Pending => false,
        Outcome::Committed => true,
    };
    let versions = versions_of(&planned, written.as_ref());
    // Answers in the order of the request's entries.
    let mut responses = vec![String::new(); count];
    for (p, version) in planned.iter().zip(versions) {
        responses[p.index] = entry_response(app, p, version, committed);
    }
    let body =
        format!(r#"{{"resourceType":"Bundle","type":"transaction-response","entry":[{}]}}"#, responses.join(","));
    let status = if committed { StatusCode::OK } else { StatusCode::ACCEPTED };
    Ok(bundle_response(status, body, written.as_ref().map(|w| &w.tx_id)))
}

/// An entry's failure as a batch-response entry.
fn failed_entry(e: &FhirError) -> String {
    format!(
        r#"{{"response":{{"status":"{}","outcome":{}}}}}"#,
        e.status().as_u16(),
        medledger_fhir::operation_outcome(e.issues())
    )
}

pub(super) async fn batch(
    app: &AppState,
    grant: &Grant,
    entries: Vec<Result<EntryIn, FhirError>>,
) -> Result<Response, FhirError> {
    // Each entry is a transaction of its own; they run one after another (each waits for its
    // commit), so an entry may rely on the ones before it having committed.
    let mut responses = Vec::with_capacity(entries.len());
    for entry in entries {
        let answer = match entry {
            Err(e) => failed_entry(&e),
            Ok(entry) => match run_transaction(app, grant, vec![entry], true).await {
                Err(e) => failed_entry(&e),
                Ok((_, _, Outcome::Refused(reason))) => failed_entry(&error(
                    StatusCode::CONFLICT,
                    IssueCode::Conflict,
                    format!("refused when its block was built: {reason}"),
                )),
                Ok((planned, written, outcome)) => {
                    let versions = versions_of(&planned, written.as_ref());
                    entry_response(app, &planned[0], versions[0], matches!(outcome, Outcome::Committed))
                }
            },
        };
        responses.push(answer);
    }
    let body = format!(r#"{{"resourceType":"Bundle","type":"batch-response","entry":[{}]}}"#, responses.join(","));
    Ok(bundle_response(StatusCode::OK, body, None))
}
