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

use std::{
    collections::{HashMap, HashSet},
    ops::Range,
};

use axum::{
    body::Bytes,
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use medledger_crypto::Keypair;
use medledger_fhir::{
    Issue, IssueCode, Severity,
    instant::instant_from_ms,
    json::{self, Limits},
    search::{self, IndexValue, ParseOptions},
    validate::ReferenceKind,
};
use medledger_node::chain::TxStatus;
use medledger_records::WriteRequest;
use medledger_records::{BatchWrite, BatchWritten};
use medledger_types::{IdentityId, RecordId, Role};

use crate::{
    app::AppState,
    clock::now_ms,
    fhir::{
        FHIR_JSON, FhirError, IDENTITY_SYSTEM, check_content_type, committed_at_ms, is_tombstone, records, served,
        tombstone,
    },
    fhir_directory::{is_directory, is_staff},
    smart::{
        bearer::bearer,
        scopes::{Grant, interactions},
    },
};

/// Most entries in one Bundle.
pub const BUNDLE_ENTRIES_MAX: usize = 1_000;
/// How long a Bundle answered 202 (not committed in time) is watched, to clean up after it
/// if the ledger refuses it.
const ABANDON_WATCH: std::time::Duration = std::time::Duration::from_secs(600);

fn error(status: StatusCode, code: IssueCode, diagnostics: impl Into<String>) -> FhirError {
    FhirError::new(status, code, diagnostics)
}

/// An entry-level error, naming the entry.
fn entry_error(index: usize, status: StatusCode, code: IssueCode, why: impl std::fmt::Display) -> FhirError {
    let issue = Issue {
        severity: Severity::Error,
        code,
        expression: Some(format!("Bundle.entry[{index}]")),
        diagnostics: why.to_string(),
    };
    FhirError::with_issues(status, vec![issue])
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Method {
    Post,
    Put,
    Delete,
}

/// One entry as received.
struct EntryIn {
    index: usize,
    full_url: Option<String>,
    method: Method,
    resource_type: String,
    /// PUT/DELETE: the existing resource.
    target: Option<RecordId>,
    /// The resource's exact bytes (POST/PUT).
    bytes: Option<Vec<u8>>,
    /// References of the resource, as the validator found them.
    references: Vec<(String, ReferenceKind)>,
    if_match: Option<u32>,
    /// Conditional create: the search (`identifier=…|…`) whose single match means "already
    /// here, write nothing".
    if_none_exist: Option<String>,
}

/// One entry ready to write.
struct Planned {
    index: usize,
    method: Method,
    resource_type: String,
    id: RecordId,
    /// Rewritten bytes (the tombstone for a delete).
    content: Vec<u8>,
    /// Records only: patient and category.
    patient: Option<IdentityId>,
    category: &'static str,
    expected: Option<u32>,
    /// A delete of something already deleted: nothing to write.
    noop: bool,
}

/// `If-None-Exist` of a single create: `Ok(Some(response))` when the search finds the
/// resource (200, its location, nothing written), `Ok(None)` to go on creating.
pub(crate) async fn if_none_exist(
    app: &AppState,
    headers: &HeaderMap,
    grant: &Grant,
    resource_type: &str,
) -> Result<Option<Response>, FhirError> {
    let Some(value) = headers.get("if-none-exist") else { return Ok(None) };
    let query = value
        .to_str()
        .map_err(|_| error(StatusCode::BAD_REQUEST, IssueCode::Value, "If-None-Exist is not text"))?
        .to_owned();
    let (app2, grant2, resource_type2) = (app.clone(), grant.clone(), resource_type.to_owned());
    let found = tokio::task::spawn_blocking(move || existing_match(&app2, &grant2, &resource_type2, &query))
        .await
        .map_err(|_| error(StatusCode::INTERNAL_SERVER_ERROR, IssueCode::Exception, "search task failed"))?
        .map_err(|why| error(StatusCode::PRECONDITION_FAILED, IssueCode::Processing, why))?;
    let Some(id) = found else { return Ok(None) };
    let latest = latest_version(app, &id);
    let mut response = StatusCode::OK.into_response();
    if let Some(v) = latest
        && let Ok(location) = HeaderValue::from_str(&format!("/fhir/{resource_type}/{}/_history/{v}", id.to_hex()))
    {
        response.headers_mut().insert(header::LOCATION, location);
        if let Ok(etag) = HeaderValue::from_str(&format!("W/\"{v}\"")) {
            response.headers_mut().insert(header::ETAG, etag);
        }
    }
    Ok(Some(response))
}

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
        entries.push(entry_in(index, entry, &body, if_match, unsupported).map(|mut e| {
            e.if_none_exist = if_none_exist;
            e
        }));
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

/// Checks one entry's request and resource as received.
fn entry_in(
    index: usize,
    entry: &medledger_fhir::validate::BundleEntry,
    body: &[u8],
    if_match: Option<&str>,
    unsupported: Option<&str>,
) -> Result<EntryIn, FhirError> {
    let bad = |code, why: String| entry_error(index, StatusCode::BAD_REQUEST, code, why);
    if let Some(key) = unsupported {
        return Err(bad(IssueCode::NotSupported, format!("request.{key} (conditional interactions) is not supported")));
    }
    let method = match entry.request_method.as_deref() {
        Some("POST") => Method::Post,
        Some("PUT") => Method::Put,
        Some("DELETE") => Method::Delete,
        Some(other) => {
            return Err(bad(
                IssueCode::NotSupported,
                format!("request.method {other} is not supported in Bundles here"),
            ));
        }
        None => return Err(bad(IssueCode::Required, "request.method is required".into())),
    };
    let url = entry.request_url.as_deref().ok_or_else(|| bad(IssueCode::Required, "request.url is required".into()))?;
    if url.contains('?') {
        return Err(bad(
            IssueCode::NotSupported,
            format!("conditional {method:?} ({}) is not supported", crate::error::echo(url)),
        ));
    }
    let (url_type, url_id) = match url.trim_start_matches('/').split_once('/') {
        Some((t, id)) => (t.to_owned(), Some(id.to_owned())),
        None => (url.trim_start_matches('/').to_owned(), None),
    };
    served(&url_type).map_err(|_| {
        bad(IssueCode::NotSupported, format!("resource type {} is not served here", crate::error::echo(&url_type)))
    })?;
    let target = match (method, &url_id) {
        (Method::Post, None) => None,
        (Method::Post, Some(_)) => return Err(bad(IssueCode::Invalid, "a POST's request.url is the type only".into())),
        (_, Some(id)) => Some(RecordId::from_hex(id).map_err(|_| {
            entry_error(
                index,
                StatusCode::NOT_FOUND,
                IssueCode::NotFound,
                format!("no {url_type} with id {} (ids here are 64 hex characters)", crate::error::echo(id)),
            )
        })?),
        (_, None) => return Err(bad(IssueCode::Invalid, format!("a {method:?}'s request.url is Type/id"))),
    };
    let (bytes, references) = match method {
        Method::Delete => (None, Vec::new()),
        _ => {
            let span: Range<usize> = entry
                .resource_span
                .clone()
                .ok_or_else(|| bad(IssueCode::Required, "the entry has no resource".into()))?;
            let resource = entry.resource.as_ref().ok_or_else(|| {
                bad(
                    IssueCode::NotSupported,
                    format!("resource type {} is not supported", entry.resource_type.as_deref().unwrap_or("?")),
                )
            })?;
            if resource.resource_type != url_type {
                return Err(bad(
                    IssueCode::Invalid,
                    format!("the resource is a {}, request.url says {url_type}", resource.resource_type),
                ));
            }
            if method == Method::Put && resource.id.as_deref() != url_id.as_deref() {
                return Err(bad(IssueCode::Invalid, "a PUT resource's id must equal the id in request.url".into()));
            }
            let references = resource.references.iter().map(|r| (r.reference.clone(), r.kind.clone())).collect();
            (Some(body[span].to_vec()), references)
        }
    };
    let if_match = match if_match {
        None => None,
        Some(text) => {
            let quoted = text.trim().strip_prefix("W/").unwrap_or(text.trim());
            Some(
                quoted
                    .strip_prefix('"')
                    .and_then(|t| t.strip_suffix('"'))
                    .and_then(|v| v.parse::<u32>().ok())
                    .ok_or_else(|| bad(IssueCode::Value, "request.ifMatch must be an ETag such as W/\"1\"".into()))?,
            )
        }
    };
    Ok(EntryIn {
        index,
        full_url: entry.full_url.clone(),
        method,
        resource_type: url_type,
        target,
        bytes,
        references,
        if_match,
        if_none_exist: None,
    })
}

/// The scope interaction an entry needs.
fn interaction(method: Method) -> u8 {
    match method {
        Method::Post => interactions::CREATE,
        Method::Put => interactions::UPDATE,
        Method::Delete => interactions::DELETE,
    }
}

/// What a transaction will write, resolved and checked.
struct Plan {
    new_patients: Vec<Keypair>,
    entries: Vec<Planned>,
}

/// Resolves and checks `entries` as one transaction (nothing is written).
fn plan(app: &AppState, grant: &Grant, entries: Vec<EntryIn>, batch_entry: bool) -> Result<Plan, FhirError> {
    let service = records(app)?;
    let custodian = service.organisation();
    // A refused change of an existing record is on that record's audit trail, as for a single
    // update or delete.
    // (Planning runs on the blocking pool: recording may wait for the audit journal.)
    let audit_refusal = |reason: &str| -> Result<(), FhirError> {
        for entry in entries.iter().filter(|e| e.method != Method::Post) {
            let patient = entry.target.and_then(|id| app.chain.state().record(&id).map(|h| h.patient));
            if let Some(patient) = patient {
                service.audit_refused_write(grant.identity, patient, entry.target, reason, now_ms())?;
            }
        }
        Ok(())
    };
    for entry in &entries {
        if !grant.allows(&entry.resource_type, interaction(entry.method)) {
            audit_refusal("scope-not-granted")?;
            return Err(entry_error(
                entry.index,
                StatusCode::FORBIDDEN,
                IssueCode::Forbidden,
                format!("the token's scopes do not allow this interaction on {}", entry.resource_type),
            ));
        }
    }
    if !is_staff(app, &grant.identity, &custodian) {
        audit_refusal("not-custodian-staff")?;
        return Err(error(
            StatusCode::FORBIDDEN,
            IssueCode::Forbidden,
            "only the staff and systems of the organisation operating this node write here",
        ));
    }
    // Ids first: every created resource gets its id before any reference is rewritten.
    let mut ids: Vec<RecordId> = Vec::with_capacity(entries.len());
    let mut by_url: HashMap<String, String> = HashMap::new();
    // Conditional creates that found their resource: written nothing, named by its id.
    let mut already: HashSet<usize> = HashSet::new();
    for (i, entry) in entries.iter().enumerate() {
        let found = match (&entry.if_none_exist, entry.method) {
            (Some(query), Method::Post) => existing_match(app, grant, &entry.resource_type, query)
                .map_err(|why| entry_error(entry.index, StatusCode::PRECONDITION_FAILED, IssueCode::Processing, why))?,
            (Some(_), _) => {
                return Err(entry_error(
                    entry.index,
                    StatusCode::BAD_REQUEST,
                    IssueCode::Invalid,
                    "ifNoneExist is for POST entries",
                ));
            }
            (None, _) => None,
        };
        if found.is_some() {
            already.insert(i);
        }
        let id = match (entry.target, found) {
            (_, Some(id)) | (Some(id), None) => id,
            (None, None) => {
                let mut bytes = [0u8; 32];
                rand::Rng::fill_bytes(&mut rand::rng(), &mut bytes);
                RecordId(bytes)
            }
        };
        ids.push(id);
        if let Some(url) = &entry.full_url {
            let reference = format!("{}/{}", entry.resource_type, id.to_hex());
            if by_url.insert(url.clone(), reference).is_some() {
                return Err(entry_error(
                    entry.index,
                    StatusCode::BAD_REQUEST,
                    IssueCode::Invalid,
                    format!("fullUrl {} appears twice in the Bundle", crate::error::echo(url)),
                ));
            }
        }
    }
    let mut seen_targets = HashSet::new();
    for entry in entries.iter().filter(|e| e.method != Method::Post) {
        if !seen_targets.insert(entry.target) {
            return Err(entry_error(
                entry.index,
                StatusCode::BAD_REQUEST,
                IssueCode::Invalid,
                "a transaction changes each resource at most once",
            ));
        }
    }
    // Conditional references resolve against the Bundle's own resources first.
    let mut bundle_values: HashMap<usize, HashMap<&'static str, Vec<IndexValue>>> = HashMap::new();
    let conditional =
        entries.iter().any(|e| e.references.iter().any(|(_, k)| matches!(k, ReferenceKind::Conditional { .. })));
    for (i, entry) in entries.iter().enumerate().filter(|_| conditional) {
        if let Some(bytes) = &entry.bytes
            && let Ok(extraction) = search::extract_bytes(bytes)
        {
            let mut values: HashMap<&'static str, Vec<IndexValue>> = HashMap::new();
            for (param, value) in extraction.values {
                values.entry(param).or_default().push(value);
            }
            values.insert("_id", vec![IndexValue::Token { system: None, code: ids[i].to_hex() }]);
            bundle_values.insert(i, values);
        }
    }
    // New patients (a Patient naming no on-chain identity) and the identity of every Patient
    // of the Bundle, by its new id.
    let mut new_patients = Vec::new();
    let mut patient_of_record: HashMap<RecordId, IdentityId> = HashMap::new();
    let mut planned = Vec::with_capacity(entries.len());
    // Patients first, so that other entries find them whatever the order.
    let mut order: Vec<usize> = (0..entries.len()).collect();
    order.sort_by_key(|i| entries[*i].resource_type != "Patient");
    let mut rewritten: Vec<Option<Vec<u8>>> = vec![None; entries.len()];
    let mut resolved: HashMap<String, String> = HashMap::new();
    for &i in &order {
        let entry = &entries[i];
        let Some(bytes) = &entry.bytes else { continue };
        if already.contains(&i) {
            // Not written; a Patient found keeps its identity for the other entries.
            let found = app.chain.state().record(&ids[i]).filter(|h| h.resource_type == "Patient").map(|h| h.patient);
            if let Some(patient) = found {
                patient_of_record.insert(ids[i], patient);
            }
            continue;
        }
        let content =
            rewrite(app, grant, entry, bytes, &by_url, &entries, &ids, &bundle_values, batch_entry, &mut resolved)?;
        if entry.resource_type == "Patient" && entry.method == Method::Post {
            let json: serde_json::Value = serde_json::from_slice(&content)
                .map_err(|e| entry_error(entry.index, StatusCode::BAD_REQUEST, IssueCode::Invalid, e))?;
            let named = json["identifier"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|i| i["system"] == IDENTITY_SYSTEM)
                .and_then(|i| i["value"].as_str());
            let identity = match named {
                Some(hex) => {
                    let id = IdentityId::from_hex(hex)
                        .ok()
                        .filter(|id| app.chain.state().identity(id).is_some_and(|w| w.role == Role::Patient));
                    id.ok_or_else(|| {
                        entry_error(
                            entry.index,
                            StatusCode::UNPROCESSABLE_ENTITY,
                            IssueCode::Processing,
                            format!("{IDENTITY_SYSTEM} names no registered patient identity"),
                        )
                    })?
                }
                None => {
                    let keys = service.new_patient_keys()?;
                    let id = keys.id();
                    new_patients.push(keys);
                    id
                }
            };
            patient_of_record.insert(ids[i], identity);
        }
        rewritten[i] = Some(content);
    }
    for (i, entry) in entries.iter().enumerate() {
        let id = ids[i];
        let directory = is_directory(&entry.resource_type);
        let mut plan = Planned {
            index: entry.index,
            method: entry.method,
            resource_type: entry.resource_type.clone(),
            id,
            content: Vec::new(),
            patient: None,
            category: "",
            expected: entry.if_match,
            noop: false,
        };
        if already.contains(&i) {
            plan.noop = true;
            planned.push(plan);
            continue;
        }
        let not_found = || {
            entry_error(
                entry.index,
                StatusCode::NOT_FOUND,
                IssueCode::NotFound,
                format!("no {} with id {}", entry.resource_type, id.to_hex()),
            )
        };
        // PUT and DELETE: the resource exists, with this type.
        let existing = match entry.method {
            Method::Post => None,
            _ if directory => {
                let state = app.chain.state();
                let head = state
                    .directory_entry(&id)
                    .filter(|h| h.resource_type == entry.resource_type)
                    .ok_or_else(not_found)?;
                Some((None, String::new(), head.latest_version))
            }
            _ => {
                let head = crate::existence::head_of_type(app, &id, &entry.resource_type).ok_or_else(not_found)?;
                // A record the caller may not see is, to it, not there (`crate::existence`).
                if !crate::existence::sees(
                    &app.chain.state(),
                    &grant.identity,
                    &id,
                    medledger_ledger::Purpose::Treatment,
                ) {
                    service.audit_refused_write(
                        grant.identity,
                        head.patient,
                        Some(id),
                        "not-custodian-staff",
                        now_ms(),
                    )?;
                    return Err(not_found());
                }
                Some((Some(head.patient), head.category.clone(), head.latest_version))
            }
        };
        match entry.method {
            Method::Delete => {
                let (patient, category, latest) = existing.expect("checked above");
                plan.patient = patient;
                plan.category = medledger_types::CATEGORIES.iter().find(|c| **c == category).copied().unwrap_or("");
                plan.expected = Some(entry.if_match.unwrap_or(latest));
                plan.content = tombstone(&entry.resource_type);
                plan.noop = match directory {
                    true => service.read_directory(&id, None).is_ok_and(|v| is_tombstone(&v.content)),
                    false => service.plaintext_for_index(&id, latest).is_ok_and(|p| is_tombstone(&p)),
                };
            }
            _ => {
                let content = rewritten[i].take().expect("rewritten above");
                if !directory {
                    // What every path checks of a record (`write_checks`); the entry was
                    // validated with the Bundle.
                    let (json, category) = crate::write_checks::record_content(&entry.resource_type, &content)
                        .map_err(|e| e.at(&format!("Bundle.entry[{}].resource", entry.index)))?;
                    let patient = match &existing {
                        Some((patient, existing_category, _)) => {
                            if existing_category != category {
                                return Err(entry_error(
                                    entry.index,
                                    StatusCode::UNPROCESSABLE_ENTITY,
                                    IssueCode::BusinessRule,
                                    "a record's consent category never changes: create a new resource",
                                ));
                            }
                            // The new version must name the record's own patient.
                            let named = match entry.resource_type.as_str() {
                                "Patient" => named_identity(&json),
                                other => Some(subject_patient(app, entry.index, other, &json, &patient_of_record)?),
                            };
                            if named.is_some_and(|named| Some(named) != *patient) {
                                return Err(entry_error(
                                    entry.index,
                                    StatusCode::UNPROCESSABLE_ENTITY,
                                    IssueCode::BusinessRule,
                                    "a record's patient never changes",
                                ));
                            }
                            *patient
                        }
                        None if entry.resource_type == "Patient" => patient_of_record.get(&id).copied(),
                        None => {
                            Some(subject_patient(app, entry.index, &entry.resource_type, &json, &patient_of_record)?)
                        }
                    };
                    plan.patient = patient;
                    plan.category = category;
                } else if let Err(refused) = crate::write_checks::check_directory(&entry.resource_type, &content) {
                    // Too large for the ledger, or patient data in the clear directory.
                    return Err(crate::write_checks::in_entry(refused, entry.index));
                }
                plan.content = content;
            }
        }
        planned.push(plan);
    }
    Ok(Plan { new_patients, entries: planned })
}

/// The identity a Patient resource names with a `urn:medledger:identity` identifier, if any
/// (and well-formed).
fn named_identity(json: &serde_json::Value) -> Option<IdentityId> {
    json["identifier"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|i| i["system"] == IDENTITY_SYSTEM)
        .and_then(|i| i["value"].as_str())
        .and_then(|hex| IdentityId::from_hex(hex).ok())
}

/// The patient a (non-Patient) record belongs to: the Patient its `subject` or `patient`
/// reference names, on the server or created in this Bundle.
fn subject_patient(
    app: &AppState,
    index: usize,
    resource_type: &str,
    json: &serde_json::Value,
    bundle_patients: &HashMap<RecordId, IdentityId>,
) -> Result<IdentityId, FhirError> {
    let unprocessable = |why: String| entry_error(index, StatusCode::UNPROCESSABLE_ENTITY, IssueCode::Processing, why);
    let reference = ["subject", "patient"]
        .iter()
        .find_map(|k| json[*k]["reference"].as_str())
        .ok_or_else(|| unprocessable(format!("a {resource_type} needs a subject or patient reference to a Patient")))?;
    let id = reference
        .strip_prefix("Patient/")
        .and_then(|id| RecordId::from_hex(id).ok())
        .ok_or_else(|| unprocessable(format!("{} is not a reference to a Patient", crate::error::echo(reference))))?;
    if let Some(identity) = bundle_patients.get(&id) {
        return Ok(*identity);
    }
    let state = app.chain.state();
    state.record(&id).filter(|h| h.resource_type == "Patient").map(|h| h.patient).ok_or_else(|| {
        unprocessable(format!(
            "reference {} does not resolve to a Patient on this server",
            crate::error::echo(reference)
        ))
    })
}

/// The entry's bytes with every reference to another entry, and every conditional reference,
/// rewritten to `Type/id` of the server.
#[allow(clippy::too_many_arguments)]
fn rewrite(
    app: &AppState,
    grant: &Grant,
    entry: &EntryIn,
    bytes: &[u8],
    by_url: &HashMap<String, String>,
    entries: &[EntryIn],
    ids: &[RecordId],
    bundle_values: &HashMap<usize, HashMap<&'static str, Vec<IndexValue>>>,
    batch_entry: bool,
    resolved: &mut HashMap<String, String>,
) -> Result<Vec<u8>, FhirError> {
    let broken = |why: String| entry_error(entry.index, StatusCode::BAD_REQUEST, IssueCode::Processing, why);
    // The base of the entry's fullUrl (`https://x/fhir/` of `https://x/fhir/Patient/1`), for
    // relative references between entries.
    let base =
        entry.full_url.as_deref().filter(|u| u.starts_with("http://") || u.starts_with("https://")).and_then(|u| {
            let mut parts = u.rsplitn(3, '/');
            let (_id, _type, base) = (parts.next()?, parts.next()?, parts.next()?);
            Some(format!("{base}/"))
        });
    let mut replacements: HashMap<String, String> = HashMap::new();
    for (reference, kind) in &entry.references {
        if replacements.contains_key(reference) {
            continue;
        }
        let to = match kind {
            ReferenceKind::Uuid => match by_url.get(reference) {
                Some(to) => Some(to.clone()),
                None if batch_entry => {
                    return Err(broken(format!(
                        "{} names another entry: batch entries are independent (use a transaction)",
                        crate::error::echo(reference)
                    )));
                }
                None => return Err(broken(format!("{} names no entry of this Bundle", crate::error::echo(reference)))),
            },
            ReferenceKind::Absolute => by_url.get(reference).cloned(),
            ReferenceKind::Relative { resource_type, id, version } => {
                let in_bundle = base.as_ref().and_then(|b| by_url.get(&format!("{b}{resource_type}/{id}")));
                match in_bundle {
                    Some(to) if version.is_none() => Some(to.clone()),
                    Some(_) => return Err(broken("versioned references to Bundle entries are not supported".into())),
                    None => {
                        check_server_reference(app, resource_type, id).map_err(&broken)?;
                        None
                    }
                }
            }
            // The same conditional reference in many entries (a practitioner of every encounter)
            // is resolved once per Bundle.
            ReferenceKind::Conditional { .. } if resolved.contains_key(reference) => resolved.get(reference).cloned(),
            ReferenceKind::Conditional { resource_type, query } => {
                let to =
                    resolve_conditional(app, grant, entries, ids, bundle_values, resource_type, query, batch_entry)
                        .map_err(|why| {
                            entry_error(entry.index, StatusCode::PRECONDITION_FAILED, IssueCode::Processing, why)
                        })?;
                resolved.insert(reference.clone(), to.clone());
                Some(to)
            }
            ReferenceKind::Contained { .. } | ReferenceKind::Oid => None,
        };
        if let Some(to) = to {
            replacements.insert(reference.clone(), to);
        }
    }
    if replacements.is_empty() {
        return Ok(bytes.to_vec());
    }
    let rewritten = medledger_fhir::splice::replace_references(bytes, &replacements)
        .map_err(|e| entry_error(entry.index, StatusCode::BAD_REQUEST, IssueCode::Invalid, e))?;
    // The targets' types are known only now: each reference must still be of an allowed type.
    medledger_fhir::validate(&rewritten).map_err(|issues| {
        let at_entry = |issue: Issue| {
            // `Encounter.serviceProvider.reference` → `Bundle.entry[i].resource.serviceProvider.reference`
            let rest = issue.expression.as_deref().and_then(|e| e.split_once('.')).map(|(_, r)| format!(".{r}"));
            let expression = Some(format!("Bundle.entry[{}].resource{}", entry.index, rest.unwrap_or_default()));
            Issue { expression, ..issue }
        };
        FhirError::with_issues(StatusCode::BAD_REQUEST, issues.into_iter().map(at_entry).collect())
    })?;
    Ok(rewritten)
}

/// A relative reference to a type this server holds must name a resource it holds.
fn check_server_reference(app: &AppState, resource_type: &str, id: &str) -> Result<(), String> {
    if served(resource_type).is_err() {
        return Ok(()); // a type not held here: not checkable, kept as written
    }
    let state = app.chain.state();
    let found = RecordId::from_hex(id).ok().is_some_and(|id| {
        state.record(&id).is_some_and(|h| h.resource_type == resource_type)
            || state.directory_entry(&id).is_some_and(|h| h.resource_type == resource_type)
    });
    match found {
        true => Ok(()),
        false => Err(format!(
            "reference {resource_type}/{} resolves to nothing in this Bundle or on this server",
            crate::error::echo(id)
        )),
    }
}

/// `Type?query` resolved to `Type/id`: exactly one match among the Bundle's entries and the
/// server's resources the caller may see.
#[allow(clippy::too_many_arguments)]
fn resolve_conditional(
    app: &AppState,
    grant: &Grant,
    entries: &[EntryIn],
    ids: &[RecordId],
    bundle_values: &HashMap<usize, HashMap<&'static str, Vec<IndexValue>>>,
    resource_type: &str,
    query: &str,
    batch_entry: bool,
) -> Result<String, String> {
    let shown = format!("conditional reference {resource_type}?{}", crate::error::echo(query));
    let query = searchable_query(grant, resource_type, query, &shown)?;
    let mut found: Vec<RecordId> = Vec::new();
    if !batch_entry {
        for (i, entry) in entries.iter().enumerate() {
            if entry.resource_type != resource_type || entry.method == Method::Delete {
                continue;
            }
            let Some(values) = bundle_values.get(&i) else { continue };
            let empty = Vec::new();
            if query.filters.iter().all(|f| f.matches(values.get(f.param.as_str()).unwrap_or(&empty))) {
                found.push(ids[i]);
            }
        }
    }
    let service = records(app).map_err(|_| "this node serves no records".to_owned())?;
    for id in crate::fhir_search::matching_for_reference(&app.search, &app.chain, &service, &query, grant, now_ms()) {
        if !found.contains(&id) {
            found.push(id);
        }
    }
    // Among several directory entries, the caller's own organisation's are the ones meant
    // (another member could publish look-alikes of them).
    if found.len() > 1 && is_directory(resource_type) {
        let own = service.organisation();
        let state = app.chain.state();
        let own_or_new: Vec<RecordId> =
            found.iter().copied().filter(|id| state.directory_entry(id).is_none_or(|h| h.owner == own)).collect();
        if !own_or_new.is_empty() {
            found = own_or_new;
        }
    }
    // What the reference found (one, or several: "more than one" says they exist) is an access
    // like a search result's: on each record's trail.
    for id in found.iter().filter(|id| !is_directory(resource_type) && app.chain.state().record(id).is_some()) {
        service
            .audit_match(grant.identity, *id, medledger_ledger::Purpose::Treatment, now_ms())
            .map_err(|e| format!("{shown}: {e}"))?;
    }
    match found.as_slice() {
        [one] => Ok(format!("{resource_type}/{}", one.to_hex())),
        [] => Err(format!("{shown} matches nothing (in this Bundle or on this server)")),
        _ => Err(format!("{shown} matches more than one resource")),
    }
}

/// A conditional create's search: the one resource of the server it finds (the caller must be
/// able to search the type and see it), `None` if none, an error if several or malformed.
pub(crate) fn existing_match(
    app: &AppState,
    grant: &Grant,
    resource_type: &str,
    query: &str,
) -> Result<Option<RecordId>, String> {
    let shown = format!("ifNoneExist {}", crate::error::echo(query));
    let query = searchable_query(grant, resource_type, query, &shown)?;
    let service = records(app).map_err(|_| "this node serves no records".to_owned())?;
    let found = crate::fhir_search::matching_for_reference(&app.search, &app.chain, &service, &query, grant, now_ms());
    // What the check learned (these exist and match) is an access like a search result's.
    for id in found.iter().filter(|id| !is_directory(resource_type) && app.chain.state().record(id).is_some()) {
        service
            .audit_match(grant.identity, *id, medledger_ledger::Purpose::Treatment, now_ms())
            .map_err(|e| format!("{shown}: {e}"))?;
    }
    match found.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(*one)),
        _ => Err(format!("{shown} matches more than one resource")),
    }
}

/// The search a conditional reference or a conditional create makes (`shown` names it in
/// errors): the token must allow searching (or reading) the type, and the query must parse
/// strictly and have criteria.
fn searchable_query(grant: &Grant, resource_type: &str, query: &str, shown: &str) -> Result<search::Query, String> {
    if !(grant.allows(resource_type, interactions::SEARCH) || grant.allows(resource_type, interactions::READ)) {
        return Err(format!("{shown}: the token's scopes do not allow searching {resource_type}"));
    }
    let params = parse_query_string(query).ok_or_else(|| format!("{shown} is not a valid query"))?;
    let query = search::parse_query(resource_type, &params, &ParseOptions { lenient: false }).map_err(|issues| {
        format!("{shown}: {}", issues.iter().map(|i| i.diagnostics.clone()).collect::<Vec<_>>().join("; "))
    })?;
    if query.filters.is_empty() {
        return Err(format!("{shown} has no search criteria"));
    }
    Ok(query)
}

/// `a=1&b=x%7Cy` as decoded pairs; `None` if malformed.
fn parse_query_string(query: &str) -> Option<Vec<(String, String)>> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=')?;
            Some((percent_decode(k)?, percent_decode(v)?))
        })
        .collect()
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
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

/// How a submitted write ended.
pub(crate) enum Outcome {
    Committed,
    Pending,
    Refused(String),
}

/// Waits (up to the node's configured time) for a submitted transaction's outcome.
pub(crate) async fn wait(app: &AppState, tx: &medledger_types::TxId) -> Outcome {
    let started = std::time::Instant::now();
    loop {
        match app.chain.tx_status(tx) {
            Ok(TxStatus::Committed { .. }) => return Outcome::Committed,
            Ok(TxStatus::Rejected { reason }) => return Outcome::Refused(reason),
            _ if started.elapsed().as_millis() as u64 >= app.fhir_commit_wait_ms => return Outcome::Pending,
            _ => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
        }
    }
}

/// The latest version of a record or directory entry.
fn latest_version(app: &AppState, id: &RecordId) -> Option<u32> {
    let state = app.chain.state();
    state.record(id).map(|h| h.latest_version).or_else(|| state.directory_entry(id).map(|h| h.latest_version))
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
        tokio::task::spawn_blocking(move || plan(&app, &grant, entries, batch_entry))
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
            tokio::spawn(async move {
                let started = std::time::Instant::now();
                loop {
                    match app.chain.tx_status(&w.tx_id) {
                        Ok(TxStatus::Committed { .. }) => return,
                        Ok(TxStatus::Rejected { .. } | TxStatus::Unknown) => break,
                        // Still pending: it may yet commit, so its keys are kept.
                        _ if started.elapsed() >= ABANDON_WATCH => return,
                        _ => tokio::time::sleep(std::time::Duration::from_millis(500)).await,
                    }
                }
                let _ = tokio::task::spawn_blocking(move || service.abandon_batch(&w, &new_patients)).await;
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

async fn transaction(app: &AppState, grant: &Grant, entries: Vec<EntryIn>) -> Result<Response, FhirError> {
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

async fn batch(app: &AppState, grant: &Grant, entries: Vec<Result<EntryIn, FhirError>>) -> Result<Response, FhirError> {
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
