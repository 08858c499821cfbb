//! FHIR Bulk Data Access (v2) export, asynchronous request pattern: `GET /fhir/$export`
//! (system level), `GET /fhir/Patient/$export` (every patient) and `GET
//! /fhir/Group/{id}/$export` (the patients in one organisation's custody) start a job that runs
//! in the background; `GET /fhir/$export-status/{job}` reports its progress and then its
//! manifest; the manifest's files are fetched from `GET /fhir/$export-file/{job}/{file}`;
//! `DELETE` on the status URL cancels a job or discards its output. `docs/fhir.md` describes it.
//!
//! Who sees what follows search exactly: the token's scopes must allow reading the type (and,
//! for `patient/…` scopes, the record must be of the token's own patient), and the ledger's
//! consent rules must allow the caller on the record (`records::access`). Records
//! failing either are left out without a trace in the output; consent is decided before
//! anything is counted, so progress and counts reveal only what the caller may see. Each
//! exported record is read through the record service as an `Export` access, so it is an
//! on-chain access event like any read.
//!
//! Output is PHI in clear, so it is never written to disk: files are kept in memory, under the
//! per-job, per-identity and node-wide byte limits of [`ExportLimits`], overwritten with zeros
//! when discarded, and discarded [`ExportLimits::ttl_ms`] after the job finished (sooner when
//! its identity holds more than its share of a full node; or when the client deletes the job).
//! Only the client (token identity) that started a job can see its status and files; to
//! anyone else it does not exist (404). The jobs' bookkeeping and quotas are in
//! `fhir_export_jobs.rs`.

use std::collections::HashSet;

use axum::{
    extract::{Path, Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, Uri, header},
    response::{IntoResponse, Response},
};
use medledger_fhir::{
    IssueCode,
    instant::instant_from_ms,
    outcome::escape_into,
    splice::{ServerMeta, with_server_meta},
};
use medledger_ledger::{AccessAction, Purpose};
use medledger_node::chain::Chain;
use medledger_records::access::{self, AccessRequest, Caller};
use medledger_records::{RecordError, RecordService};
use medledger_types::{IdentityId, RecordId, Role};

pub use crate::fhir_export_jobs::{ExportLimits, Jobs};
use crate::{
    app::AppState,
    clock::now_ms,
    fhir::{FHIR_JSON, FhirError, SERVED_TYPES, is_tombstone},
    fhir_export_jobs::{Busy, Finished, Full, Job, NdjsonFile, Progress, RETRY_AFTER_POLL_S, push_line},
    smart::{
        bearer::bearer,
        scopes::{Context, Grant, interactions},
    },
};

/// Most resources in one NDJSON file; a type with more is split into several files.
pub const FILE_LINES_MAX: usize = 10_000;
/// Records whose consent is decided per hold of the chain state's read lock.
const CONSENT_CHUNK: usize = 1_024;

const NDJSON: &str = "application/fhir+ndjson";
const BULK_OPERATION: &str = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition";

// ---- kick-off ----

/// What is exported: the level of the kick-off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Level {
    /// `GET /fhir/$export`: every record.
    System,
    /// `GET /fhir/Patient/$export`: every patient's compartment (all our types are in it).
    Patients,
    /// `GET /fhir/Group/{id}/$export`: the compartments of the patients with records in the
    /// custody of organisation `id`.
    Group(IdentityId),
}

/// A kick-off's parameters, checked.
#[derive(Debug, PartialEq, Eq)]
struct Params {
    /// `_type`, in the order first named; `None`: every type.
    types: Option<Vec<&'static str>>,
    /// `_since` as milliseconds since the epoch.
    since_ms: Option<u64>,
    /// Parameters skipped under `Prefer: handling=lenient`, as warnings.
    ignored: Vec<String>,
}

fn bad(code: IssueCode, diagnostics: impl Into<String>) -> FhirError {
    FhirError::new(StatusCode::BAD_REQUEST, code, diagnostics)
}

/// Checks the kick-off parameters (names and values already percent-decoded).
fn parse_params(params: &[(String, String)], lenient: bool) -> Result<Params, FhirError> {
    let mut out = Params { types: None, since_ms: None, ignored: Vec::new() };
    let (mut format_seen, mut since_seen) = (false, false);
    for (name, value) in params {
        match name.as_str() {
            "_outputFormat" => {
                if std::mem::replace(&mut format_seen, true) {
                    return Err(bad(IssueCode::Invalid, "_outputFormat is given more than once"));
                }
                // An unescaped `+` in a query string arrives as a space.
                let format = value.trim().replace(' ', "+");
                if !matches!(format.as_str(), "application/fhir+ndjson" | "application/ndjson" | "ndjson") {
                    return Err(bad(
                        IssueCode::NotSupported,
                        format!(
                            "_outputFormat {} is not supported: only application/fhir+ndjson (or application/ndjson, ndjson)",
                            crate::error::echo(value)
                        ),
                    ));
                }
            }
            "_type" => {
                let types = out.types.get_or_insert_with(Vec::new);
                for name in value.split(',').map(str::trim) {
                    let served = SERVED_TYPES.iter().find(|t| **t == name).ok_or_else(|| {
                        if name.is_empty() {
                            bad(IssueCode::Invalid, "_type names an empty resource type")
                        } else if medledger_fhir::model::Model::r4().is_r4_resource_type(name) {
                            bad(
                                IssueCode::NotSupported,
                                format!(
                                    "resource type {} is not exported here (exported: {})",
                                    crate::error::echo(name),
                                    SERVED_TYPES.join(", ")
                                ),
                            )
                        } else {
                            bad(IssueCode::Invalid, format!("{} is not an R4 resource type", crate::error::echo(name)))
                        }
                    })?;
                    if !types.contains(served) {
                        types.push(served);
                    }
                }
            }
            "_since" => {
                if std::mem::replace(&mut since_seen, true) {
                    return Err(bad(IssueCode::Invalid, "_since is given more than once"));
                }
                // A `+hh:mm` offset sent unescaped arrives with a space for the `+`.
                let since = parse_instant(&value.replace(' ', "+")).ok_or_else(|| {
                    bad(
                        IssueCode::Value,
                        format!(
                            "_since must be a FHIR instant such as 2024-01-31T12:00:00Z, not {}",
                            crate::error::echo(value)
                        ),
                    )
                })?;
                out.since_ms = Some(since);
            }
            other if lenient => {
                out.ignored.push(format!("parameter {} is not supported and was ignored", crate::error::echo(other)));
            }
            other => {
                return Err(bad(
                    IssueCode::NotSupported,
                    format!(
                        "$export supports _outputFormat, _type and _since, not {} (send Prefer: handling=lenient to have unsupported parameters ignored)",
                        crate::error::echo(other)
                    ),
                ));
            }
        }
    }
    Ok(out)
}

/// An R4 `instant` (`YYYY-MM-DDThh:mm:ss[.fff…](Z|±hh:mm)`, seconds and zone required) as
/// milliseconds since the epoch (a time before 1970 as 0).
fn parse_instant(text: &str) -> Option<u64> {
    let b = text.as_bytes();
    let digit_at = |i: usize| b.get(i).is_some_and(u8::is_ascii_digit);
    let shape = b.len() >= 20
        && [0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18].iter().all(|i| digit_at(*i))
        && (b[4], b[7], b[10], b[13], b[16]) == (b'-', b'-', b'T', b':', b':');
    if !shape {
        return None;
    }
    let mut rest = &b[19..];
    if let Some(fraction) = rest.strip_prefix(b".") {
        let digits = fraction.iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        rest = &fraction[digits..];
    }
    let zone_ok = rest == b"Z"
        || (rest.len() == 6
            && matches!(rest[0], b'+' | b'-')
            && rest[1].is_ascii_digit()
            && rest[2].is_ascii_digit()
            && rest[3] == b':'
            && rest[4].is_ascii_digit()
            && rest[5].is_ascii_digit());
    if !zone_ok {
        return None;
    }
    let (low, _) = medledger_fhir::search::date::parse_range(text)?;
    Some(u64::try_from(low).unwrap_or(0))
}

/// The preference tokens of every `Prefer` header (`respond-async`, `handling=lenient`).
fn preferences(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([',', ';']))
        .map(|p| p.trim().to_ascii_lowercase())
        .collect()
}

/// `Accept`, when given, must allow FHIR JSON (the format of the kick-off's OperationOutcome).
fn check_accept(headers: &HeaderMap) -> Result<(), FhirError> {
    let values: Vec<&str> = headers.get_all(header::ACCEPT).iter().filter_map(|v| v.to_str().ok()).collect();
    if values.is_empty() {
        return Ok(());
    }
    let acceptable = values.iter().flat_map(|v| v.split(',')).any(|range| {
        let essence = range.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        matches!(essence.as_str(), "application/fhir+json" | "application/json" | "application/*" | "*/*")
    });
    if acceptable {
        return Ok(());
    }
    Err(FhirError::new(
        StatusCode::NOT_ACCEPTABLE,
        IssueCode::NotSupported,
        "$export answers in application/fhir+json: send Accept: application/fhir+json",
    ))
}

/// Whether `grant`'s scopes let it export a `resource_type` record of `patient` (`None`: any
/// patient, for the kick-off's check of the types) at `level`: a scope reading the type, in
/// the system context for a system-level export, and for `patient/…` scopes only records of
/// the token's own patient.
fn scopes_allow(grant: &Grant, level: Level, resource_type: &str, patient: Option<&IdentityId>) -> bool {
    grant.scopes.iter().any(|s| {
        s.interactions & interactions::READ != 0
            && s.resource_type.as_deref().is_none_or(|t| t == resource_type)
            && match s.context {
                Context::System => true,
                Context::User => level != Level::System,
                Context::Patient => level != Level::System && patient.is_none_or(|p| *p == grant.identity),
            }
    })
}

/// The types to export: those named by `_type` (each must be allowed by the scopes) or every
/// type the scopes allow.
fn exported_types(grant: &Grant, level: Level, named: Option<&[&'static str]>) -> Result<Vec<&'static str>, FhirError> {
    let forbidden = |m: String| FhirError::new(StatusCode::FORBIDDEN, IssueCode::Forbidden, m);
    if level == Level::System
        && !grant.scopes.iter().any(|s| s.context == Context::System && s.interactions & interactions::READ != 0)
    {
        return Err(forbidden(
            "a system-level export needs system/*.r or system/<Type>.r scopes; use Patient/$export or \
             Group/{id}/$export with patient or user scopes"
                .into(),
        ));
    }
    match named {
        Some(types) => {
            if let Some(refused) = types.iter().find(|t| !scopes_allow(grant, level, t, None)) {
                return Err(forbidden(format!("the token's scopes do not allow reading {refused}")));
            }
            Ok(types.to_vec())
        }
        None => {
            let types: Vec<&'static str> =
                SERVED_TYPES.iter().copied().filter(|t| scopes_allow(grant, level, t, None)).collect();
            if types.is_empty() {
                return Err(forbidden("the token's scopes allow reading none of the exported types".into()));
            }
            Ok(types)
        }
    }
}

/// What a job exports, for whom.
struct Plan {
    level: Level,
    types: Vec<&'static str>,
    since_ms: Option<u64>,
    grant: Grant,
    purpose: Purpose,
}

/// `GET /fhir/$export`.
pub(crate) async fn export_system(
    State(app): State<AppState>,
    uri: Uri,
    Query(params): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Result<Response, FhirError> {
    kick_off(app, Level::System, uri, params, headers).await
}

/// `GET /fhir/Patient/$export`.
pub(crate) async fn export_patients(
    State(app): State<AppState>,
    uri: Uri,
    Query(params): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Result<Response, FhirError> {
    kick_off(app, Level::Patients, uri, params, headers).await
}

/// `GET /fhir/Group/{id}/$export`: `id` is a member organisation's identity id, standing for
/// the patients with records in its custody (medledger keeps no Group resources).
pub(crate) async fn export_group(
    State(app): State<AppState>,
    Path(id): Path<String>,
    uri: Uri,
    Query(params): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Result<Response, FhirError> {
    authenticate(&app, &headers)?;
    let organisation = IdentityId::from_hex(&id)
        .ok()
        .filter(|org| app.chain.state().identity(org).is_some_and(|who| who.role == Role::Organisation))
        .ok_or_else(|| {
            FhirError::new(
                StatusCode::NOT_FOUND,
                IssueCode::NotFound,
                format!(
                    "no Group {}: a Group id is a member organisation's identity id (its patients)",
                    crate::error::echo(&id)
                ),
            )
        })?;
    kick_off(app, Level::Group(organisation), uri, params, headers).await
}

/// Any other method on a kick-off URL (a POST with a Parameters body is not supported).
pub(crate) async fn kick_off_method() -> FhirError {
    FhirError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        IssueCode::NotSupported,
        "start an export with GET and query parameters (_outputFormat, _type, _since)",
    )
}

fn authenticate(app: &AppState, headers: &HeaderMap) -> Result<Grant, FhirError> {
    bearer(app, headers, now_ms()).map_err(|why| FhirError::new(StatusCode::UNAUTHORIZED, IssueCode::Login, why))
}

async fn kick_off(
    app: AppState,
    level: Level,
    uri: Uri,
    params: Vec<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, FhirError> {
    let grant = authenticate(&app, &headers)?;
    let prefer = preferences(&headers);
    if !prefer.iter().any(|p| p == "respond-async") {
        return Err(bad(IssueCode::Invalid, "$export runs asynchronously: send Prefer: respond-async"));
    }
    check_accept(&headers)?;
    let params = parse_params(&params, prefer.iter().any(|p| p == "handling=lenient"))?;
    let purpose = crate::fhir::purpose_of(&headers)?;
    let types = exported_types(&grant, level, params.types.as_deref())?;
    let service = crate::fhir::record_service(&app)?;
    // The configured public base (relative URLs without one), never the request's Host.
    let base = app.public_base().to_owned();
    let request = format!("{base}{}", uri.path_and_query().map_or(uri.path(), |p| p.as_str()));
    let job = match app.exports.admit(grant.identity, request, base.clone(), now_ms()) {
        Ok(job) => job,
        Err(busy) => {
            let (why, retry_after_s) = match busy {
                Busy::IdentityRunning => (
                    "this client already has an export running; poll or delete it first".to_owned(),
                    RETRY_AFTER_POLL_S,
                ),
                Busy::IdentityHolding { retry_after_s } => (
                    format!(
                        "this client holds {} exports, its quota; DELETE their status URLs (or wait for them to expire)",
                        app.exports.limits().held_per_identity_max
                    ),
                    retry_after_s,
                ),
                Busy::Node { retry_after_s } => (
                    "this node is running or holding as many exports as it allows; retry later".to_owned(),
                    retry_after_s,
                ),
            };
            let mut response = FhirError::new(StatusCode::TOO_MANY_REQUESTS, IssueCode::Transient, why).into_response();
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after_s));
            return Ok(response);
        }
    };
    let plan = Plan { level, types, since_ms: params.since_ms, grant, purpose };
    let (jobs, chain) = (app.exports.clone(), app.chain.clone());
    let running = job.clone();
    tokio::spawn(async move {
        let worker = {
            let (job, jobs) = (running.clone(), jobs.clone());
            tokio::task::spawn_blocking(move || run(&jobs, &job, &chain, &service, &plan))
        };
        let finished = worker.await.unwrap_or_else(|_| Finished::Failed {
            at_ms: now_ms(),
            diagnostics: "the export task failed; start the export again".into(),
        });
        jobs.finish(&running, finished);
        drop(running);
        // Expired on time even if nobody asks about exports again.
        tokio::time::sleep(std::time::Duration::from_millis(jobs.limits().ttl_ms.saturating_add(1_000))).await;
        jobs.expire(now_ms());
    });
    let status_url = format!("{base}/fhir/$export-status/{}", job.id);
    let mut issues = vec![
        serde_json::json!({"severity": "information", "code": "informational", "diagnostics": format!("export started; poll {status_url}")}),
    ];
    issues.extend(params.ignored.into_iter().map(
        |diagnostics| serde_json::json!({"severity": "warning", "code": "not-supported", "diagnostics": diagnostics}),
    ));
    let outcome = serde_json::json!({"resourceType": "OperationOutcome", "issue": issues});
    let mut response = (StatusCode::ACCEPTED, outcome.to_string()).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(v) = HeaderValue::from_str(&status_url) {
        headers.insert(header::CONTENT_LOCATION, v);
    }
    Ok(response)
}

// ---- the job ----

/// A record the export may include, as the index had it when the job started.
#[derive(Clone)]
struct Candidate {
    record: RecordId,
    resource_type: &'static str,
    /// Its type's place in the plan, then its log index: the output order.
    order: (usize, u64),
    version: u32,
    versions: usize,
    committed_ms: u64,
}

/// Runs a job to the end (or until cancelled), on a thread that may block.
fn run(jobs: &Jobs, job: &Job, chain: &Chain, service: &RecordService, plan: &Plan) -> Finished {
    let cancelled = || Finished::Failed { at_ms: now_ms(), diagnostics: "the export was cancelled".into() };
    let requester = plan.grant.identity;
    // What there is at the finalized head, and that head's block time (the state first, so
    // the index is at the same height).
    let (transaction_time_ms, mut candidates) = {
        let state = chain.state();
        let transaction_time_ms = state.head_timestamp_ms().max(chain.genesis().genesis_time_ms);
        let index = chain.patient_index();
        drop(state);
        let members: Option<HashSet<IdentityId>> = match plan.level {
            Level::Group(organisation) => {
                Some(index.records().filter(|r| r.custodian == organisation).map(|r| r.patient).collect())
            }
            _ => None,
        };
        let candidates: Vec<Candidate> = index
            .records()
            .filter_map(|r| {
                let rank = plan.types.iter().position(|t| *t == r.resource_type)?;
                let latest = r.versions.last()?;
                let wanted = plan.since_ms.is_none_or(|since| latest.position.committed_at_ms >= since)
                    && members.as_ref().is_none_or(|m| m.contains(&r.patient))
                    && scopes_allow(&plan.grant, plan.level, &r.resource_type, Some(&r.patient));
                wanted.then(|| Candidate {
                    record: r.record_id,
                    resource_type: plan.types[rank],
                    order: (rank, latest.position.log_index),
                    version: latest.version,
                    versions: r.versions.len(),
                    committed_ms: latest.position.committed_at_ms,
                })
            })
            .collect();
        (transaction_time_ms, candidates)
    };
    candidates.sort_by_key(|c| c.order);
    // Consent before anything is counted, under the state's read lock per chunk (never across
    // the whole scan: block application waits for it).
    let now = now_ms();
    let mut visible = Vec::new();
    for chunk in candidates.chunks(CONSENT_CHUNK) {
        if job.cancelled() {
            return cancelled();
        }
        let state = chain.state();
        visible.extend(
            chunk
                .iter()
                .filter(|c| {
                    let request = AccessRequest {
                        caller: requester,
                        credential: &plan.grant,
                        action: AccessAction::Export,
                        purpose: plan.purpose,
                        record: c.record,
                        version: Some(c.version),
                        now_ms: now,
                    };
                    access::check(&state, &request).is_some_and(|outcome| outcome.is_ok())
                })
                .cloned(),
        );
    }
    drop(candidates);
    let total = visible.len();
    job.set_progress(Progress { exporting: true, done: 0, total });
    let mut outputs: Vec<NdjsonFile> = Vec::new();
    let mut errors: Vec<NdjsonFile> = Vec::new();
    // Every export is recorded as it is read; the journal is synced once, before any output
    // can be downloaded.
    let mut synced = medledger_records::journal::Synced::default();
    for (done, candidate) in visible.iter().enumerate() {
        if job.cancelled() {
            return cancelled();
        }
        job.set_progress(Progress { exporting: true, done, total });
        let outcome = export_one(service, plan.grant.caller(), plan.purpose, candidate, &mut synced);
        let written = match outcome {
            Exported::Line(line) => jobs.reserve(job, line.len() + 1, now_ms()).map(|()| {
                push_line(&mut outputs, candidate.resource_type, candidate.resource_type, &line, FILE_LINES_MAX)
            }),
            Exported::Skipped => Ok(()),
            Exported::Error(issue) => {
                let line = outcome_line("error", issue.0, &issue.1);
                jobs.reserve(job, line.len() + 1, now_ms())
                    .map(|()| push_line(&mut errors, "OperationOutcome", "error", line.as_bytes(), FILE_LINES_MAX))
            }
        };
        if let Err(full) = written {
            let limits = jobs.limits();
            let why = match full {
                Full::Job => {
                    format!("the export reached this server's limit of {} MiB per export", limits.job_bytes_max >> 20)
                }
                Full::Identity => format!(
                    "this client's exports hold {} MiB of output, its quota (DELETE the status URLs of exports \
                     already downloaded)",
                    limits.identity_bytes_max >> 20
                ),
                Full::Node => "this server holds as much export output as it allows (other exports)".to_owned(),
            };
            let diagnostics = format!(
                "the export is incomplete: {why}; {} of {total} resources were processed, the rest are missing \
                 (narrow it with _type, _since or Group/{{id}}/$export, or retry later)",
                done
            );
            // Not counted: one short line, so the client is always told.
            push_line(
                &mut errors,
                "OperationOutcome",
                "error",
                outcome_line("error", "too-costly", &diagnostics).as_bytes(),
                FILE_LINES_MAX,
            );
            break;
        }
    }
    if let Err(e) = service.sync_audit(synced) {
        return Finished::Failed { at_ms: now_ms(), diagnostics: format!("the export could not be recorded: {e}") };
    }
    job.set_progress(Progress { exporting: true, done: total, total });
    Finished::Complete { at_ms: now_ms(), transaction_time_ms, outputs, errors }
}

/// What exporting one record came to.
enum Exported {
    /// The resource as one NDJSON line.
    Line(Vec<u8>),
    /// Deleted, or no longer visible to the caller: left out.
    Skipped,
    /// Visible but not exportable here: an issue code and diagnostics for the error file.
    Error((&'static str, String)),
}

fn export_one(
    service: &RecordService,
    caller: Caller<'_>,
    purpose: Purpose,
    c: &Candidate,
    synced: &mut medledger_records::journal::Synced,
) -> Exported {
    let id = c.record.to_hex();
    // A deleted record's latest version is a delete marker (never the first version): look
    // before reading, so no export is recorded of what is not exported.
    if c.versions > 1 && service.plaintext_for_index(&c.record, c.version).is_ok_and(|p| is_tombstone(&p)) {
        return Exported::Skipped;
    }
    match service.read_deferred(caller, c.record, Some(c.version), purpose, AccessAction::Export, now_ms(), synced) {
        Ok(read) if is_tombstone(&read.plaintext) => Exported::Skipped,
        Ok(read) => {
            let version = c.version.to_string();
            let last_updated = instant_from_ms(c.committed_ms);
            match with_server_meta(
                &read.plaintext,
                &ServerMeta { id: &id, version_id: &version, last_updated: &last_updated },
            ) {
                Ok(mut line) => {
                    // JSON strings cannot hold raw line breaks, so these are whitespace between
                    // tokens: spaces keep every value as stored and the resource on one line.
                    for byte in &mut line {
                        if matches!(*byte, b'\n' | b'\r') {
                            *byte = b' ';
                        }
                    }
                    Exported::Line(line)
                }
                Err(e) => Exported::Error((
                    "exception",
                    format!(
                        "{}/{id} version {}: the stored resource cannot be served: {e}",
                        c.resource_type, c.version
                    ),
                )),
            }
        }
        // Consent changed since it was checked: left out (the refusal is audited by the read).
        Err(RecordError::Denied(_)) => Exported::Skipped,
        Err(e) => {
            let code = match e {
                RecordError::CiphertextMissing | RecordError::Submit(_) => "transient",
                _ => "exception",
            };
            Exported::Error((
                code,
                format!("{}/{id} version {} could not be exported: {e}", c.resource_type, c.version),
            ))
        }
    }
}

/// An OperationOutcome with one issue, on one line.
fn outcome_line(severity: &str, code: &str, diagnostics: &str) -> String {
    let mut out = format!(
        r#"{{"resourceType":"OperationOutcome","issue":[{{"severity":"{severity}","code":"{code}","diagnostics":""#
    );
    escape_into(&mut out, diagnostics);
    out.push_str(r#""}]}"#);
    out
}

// ---- status, files, delete ----

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
    let finished = job.finished.lock().expect("export job lock poisoned");
    let mut response = match &*finished {
        None => {
            let progress = *job.progress.lock().expect("export job lock poisoned");
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
        let finished = job.finished.lock().expect("export job lock poisoned");
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

/// Declares the export operations in the CapabilityStatement (`/fhir/metadata`): system
/// `export`, `Patient` `export`, and `Group` `export` (Group has no other interaction).
pub(crate) fn declare_operations(statement: &mut serde_json::Value) {
    let operation = |name: &str, documentation: &str| serde_json::json!({"name": "export", "definition": format!("{BULK_OPERATION}/{name}"), "documentation": documentation});
    let rest = &mut statement["rest"][0];
    if let Some(resources) = rest["resource"].as_array_mut() {
        if let Some(patient) = resources.iter_mut().find(|r| r["type"] == "Patient") {
            let export = operation(
                "patient-export",
                "Bulk Data export of every patient's records the client may read (Prefer: respond-async)",
            );
            match patient["operation"].as_array_mut() {
                Some(operations) => operations.push(export),
                None => patient["operation"] = serde_json::json!([export]),
            }
        }
        resources.push(serde_json::json!({
            "type": "Group",
            "documentation": "No Group resources are stored: Group/{id} with id a member organisation's identity id stands for the patients with records in its custody, for $export only.",
            "operation": [operation("group-export", "Bulk Data export of the records of the patients in an organisation's custody that the client may read")],
        }));
    }
    rest["operation"] = serde_json::json!([operation(
        "export",
        "Bulk Data export of every record the client may read; needs system/ scopes (Prefer: respond-async)"
    )]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_need_seconds_and_a_zone() {
        assert_eq!(parse_instant("1970-01-01T00:00:01Z"), Some(1000));
        assert_eq!(parse_instant("2000-02-29T00:00:00.123Z"), Some(951_782_400_123));
        assert_eq!(parse_instant("2000-02-29T01:00:00+01:00"), Some(951_782_400_000));
        assert_eq!(parse_instant("1960-01-01T00:00:00Z"), Some(0));
        for bad in [
            "2024",
            "2024-01-31",
            "2024-01-31T12:00Z",
            "2024-01-31T12:00:00",
            "2024-01-31T12:00:00.Z",
            "2024-02-30T12:00:00Z",
            "2024-01-31T25:00:00Z",
            "2024-01-31T12:00:00+0100",
            "2024-01-31 12:00:00Z",
            "2024-01-31T12:00:00Zjunk",
        ] {
            assert_eq!(parse_instant(bad), None, "{bad}");
        }
    }

    #[test]
    fn parameters_are_checked_strictly_unless_lenient() {
        let p = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
        };
        let ok = parse_params(
            &p(&[
                ("_outputFormat", "application/fhir ndjson"),
                ("_type", "Observation,Patient"),
                ("_type", "Observation"),
            ]),
            false,
        )
        .unwrap();
        assert_eq!(ok.types, Some(vec!["Observation", "Patient"]));
        assert_eq!(
            parse_params(&p(&[("_since", "2024-01-01T00:00:00 01:00")]), false).unwrap().since_ms,
            Some(1_704_063_600_000)
        );
        for refused in [
            &[("_outputFormat", "text/csv")][..],
            &[("_type", "Banana")],
            &[("_type", "Coverage")],
            &[("_type", "Observation,")],
            &[("_since", "2024")],
            &[("_since", "2024-01-01T00:00:00Z"), ("_since", "2024-01-01T00:00:00Z")],
            &[("_typeFilter", "Observation?code=1")],
        ] {
            assert!(parse_params(&p(refused), false).is_err(), "{refused:?}");
        }
        let lenient = parse_params(&p(&[("_typeFilter", "x"), ("_type", "Patient")]), true).unwrap();
        assert_eq!(lenient.ignored.len(), 1);
        assert!(parse_params(&p(&[("_type", "Banana")]), true).is_err(), "a bad value is an error even when lenient");
    }

    #[test]
    fn outcome_lines_are_one_line_of_json() {
        let line = outcome_line("error", "exception", "quote \" and\nnewline");
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["issue"][0]["diagnostics"], "quote \" and\nnewline");
    }
}
