//! Planning a transaction: every entry resolved and checked (scopes, custodian staff,
//! conditional creates, ids, references between entries and conditional references, patients,
//! consent categories, what each write checks) before anything is written. Runs on the blocking
//! pool: it reads the chain state and may record refusals.

use std::collections::{HashMap, HashSet};

use axum::http::StatusCode;
use medledger_crypto::Keypair;
use medledger_fhir::{
    Issue, IssueCode,
    search::{self, IndexValue},
    validate::ReferenceKind,
};
use medledger_types::{IdentityId, RecordId, Role};

use crate::{
    app::AppState,
    clock::now_ms,
    fhir::{
        bundle::entries::{EntryIn, Method, Planned, entry_error, error, interaction},
        conditional::{existing_match, searchable_query},
        credentials::{is_staff, records},
        errors::FhirError,
        served::{IDENTITY_SYSTEM, is_directory, is_tombstone, served, tombstone},
    },
    smart::scopes::Grant,
};

/// What a transaction will write, resolved and checked.
pub(super) struct Plan {
    pub(super) new_patients: Vec<Keypair>,
    pub(super) entries: Vec<Planned>,
}

/// Resolves and checks `entries` as one transaction (nothing is written).
pub(super) fn plan(app: &AppState, grant: &Grant, entries: Vec<EntryIn>, batch_entry: bool) -> Result<Plan, FhirError> {
    let service = records(app)?;
    let custodian = service.organisation();
    // A refused change of an existing record is on that record's audit trail, as for a single
    // update or delete.
    // (Planning runs on the blocking pool: recording may wait for the audit journal.)
    let audit_refusal = |reason: &str| -> Result<(), FhirError> {
        for entry in entries.iter().filter(|e| e.method != Method::Post) {
            let patient = entry.target.and_then(|id| app.chain.snapshot().record(&id).map(|h| h.patient));
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
            let found =
                app.chain.snapshot().record(&ids[i]).filter(|h| h.resource_type == "Patient").map(|h| h.patient);
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
                        .filter(|id| app.chain.snapshot().identity(id).is_some_and(|w| w.role == Role::Patient));
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
                let state = app.chain.snapshot();
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
                    &app.chain.snapshot(),
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
                    // What every path checks of a record (`records::content`); the entry was
                    // validated with the Bundle.
                    let (json, category) =
                        medledger_records::content::record_content(&entry.resource_type, &content)
                            .map_err(|e| FhirError::from(e).at(&format!("Bundle.entry[{}].resource", entry.index)))?;
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
                } else if let Err(refused) = medledger_records::content::check_directory(&entry.resource_type, &content)
                {
                    // Too large for the ledger, or patient data in the clear directory.
                    return Err(medledger_records::content::in_entry(refused, entry.index).into());
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
    let state = app.chain.snapshot();
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
    let state = app.chain.snapshot();
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
    for id in app.search.matching_for_reference(&service, &query, grant.caller(), now_ms()) {
        if !found.contains(&id) {
            found.push(id);
        }
    }
    // Among several directory entries, the caller's own organisation's are the ones meant
    // (another member could publish look-alikes of them).
    if found.len() > 1 && is_directory(resource_type) {
        let own = service.organisation();
        let state = app.chain.snapshot();
        let own_or_new: Vec<RecordId> =
            found.iter().copied().filter(|id| state.directory_entry(id).is_none_or(|h| h.owner == own)).collect();
        if !own_or_new.is_empty() {
            found = own_or_new;
        }
    }
    // What the reference found (one, or several: "more than one" says they exist) is an access
    // like a search result's: on each record's trail.
    for id in found.iter().filter(|id| !is_directory(resource_type) && app.chain.snapshot().record(id).is_some()) {
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
