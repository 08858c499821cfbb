//! Planning a transaction: every entry resolved and checked (credential, custodian staff,
//! conditional creates, ids, references between entries and conditional references, patients,
//! consent categories, what each write checks) before anything is written. Blocks: it reads
//! the chain and may record refusals. Time and randomness are inputs.

use std::collections::{HashMap, HashSet};

use medledger_crypto::Keypair;
use medledger_fhir::{
    Issue, IssueCode,
    outcome::echo,
    search::{self, IndexValue},
    validate::ReferenceKind,
};
use medledger_ledger::Purpose;
use medledger_types::{IdentityId, RecordId, Role, TimestampMs};
use rand::CryptoRng;

use crate::{
    RecordError, RecordService,
    access::{self, Caller},
    bundle::entries::{self, EntryIn, Method, Planned, interaction},
    conditional::{existing_match, searchable_query},
    content::{self, Refused, status},
    search::SearchIndex,
    served::{IDENTITY_SYSTEM, is_directory, is_served, is_tombstone, tombstone},
};

/// What a transaction will write, resolved and checked.
pub struct Plan {
    pub new_patients: Vec<Keypair>,
    pub entries: Vec<Planned>,
}

/// Why a Bundle cannot be planned: a refusal of the Bundle or one of its entries (status and
/// issues), or a failure of the record service (recording a refusal, making a patient's keys).
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Refused(#[from] Refused),
    #[error(transparent)]
    Record(#[from] RecordError),
}

/// An entry-level refusal, naming the entry.
fn entry_error(index: usize, status: u16, code: IssueCode, why: impl std::fmt::Display) -> PlanError {
    entries::entry_error(index, status, code, why).into()
}

/// A refusal of the whole Bundle.
fn error(status: u16, code: IssueCode, diagnostics: impl Into<String>) -> PlanError {
    entries::error(status, code, diagnostics).into()
}

/// Who plans, with what, and when.
#[derive(Clone, Copy)]
pub struct Planner<'a> {
    pub service: &'a RecordService,
    pub search: &'a SearchIndex,
    pub caller: Caller<'a>,
    pub now_ms: TimestampMs,
}

/// Resolves and checks `entries` as one transaction (nothing is written); new records' ids
/// come from `rng`.
pub fn plan(
    planner: &Planner<'_>,
    entries: Vec<EntryIn>,
    batch_entry: bool,
    rng: &mut impl CryptoRng,
) -> Result<Plan, PlanError> {
    let Planner { service, caller, now_ms, .. } = *planner;
    let state = service.chain.snapshot();
    let custodian = service.organisation();
    // A refused change of an existing record is on that record's audit trail, as for a single
    // update or delete.
    // (Planning runs on the blocking pool: recording may wait for the audit journal.)
    let audit_refusal = |reason: &str| -> Result<(), RecordError> {
        for entry in entries.iter().filter(|e| e.method != Method::Post) {
            let patient = entry.target.and_then(|id| state.record(&id).map(|h| h.patient));
            if let Some(patient) = patient {
                service.audit_refused_write(caller.identity, patient, entry.target, reason, now_ms)?;
            }
        }
        Ok(())
    };
    for entry in &entries {
        if !caller.credential.permits(&entry.resource_type, interaction(entry.method)) {
            audit_refusal("scope-not-granted")?;
            return Err(entry_error(
                entry.index,
                status::FORBIDDEN,
                IssueCode::Forbidden,
                format!("the token's scopes do not allow this interaction on {}", entry.resource_type),
            ));
        }
    }
    if !access::is_staff(&state, &caller.identity, &custodian) {
        audit_refusal("not-custodian-staff")?;
        return Err(error(
            status::FORBIDDEN,
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
            (Some(query), Method::Post) => {
                existing_match(service, planner.search, caller, &entry.resource_type, query, now_ms)
                    .map_err(|why| entry_error(entry.index, status::PRECONDITION_FAILED, IssueCode::Processing, why))?
            }
            (Some(_), _) => {
                return Err(entry_error(
                    entry.index,
                    status::BAD_REQUEST,
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
                rng.fill_bytes(&mut bytes);
                RecordId(bytes)
            }
        };
        ids.push(id);
        if let Some(url) = &entry.full_url {
            let reference = format!("{}/{}", entry.resource_type, id.to_hex());
            if by_url.insert(url.clone(), reference).is_some() {
                return Err(entry_error(
                    entry.index,
                    status::BAD_REQUEST,
                    IssueCode::Invalid,
                    format!("fullUrl {} appears twice in the Bundle", echo(url)),
                ));
            }
        }
    }
    let mut seen_targets = HashSet::new();
    for entry in entries.iter().filter(|e| e.method != Method::Post) {
        if !seen_targets.insert(entry.target) {
            return Err(entry_error(
                entry.index,
                status::BAD_REQUEST,
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
            let found = state.record(&ids[i]).filter(|h| h.resource_type == "Patient").map(|h| h.patient);
            if let Some(patient) = found {
                patient_of_record.insert(ids[i], patient);
            }
            continue;
        }
        let content =
            rewrite(planner, entry, bytes, &by_url, &entries, &ids, &bundle_values, batch_entry, &mut resolved)?;
        if entry.resource_type == "Patient" && entry.method == Method::Post {
            let json: serde_json::Value = serde_json::from_slice(&content)
                .map_err(|e| entry_error(entry.index, status::BAD_REQUEST, IssueCode::Invalid, e))?;
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
                        .filter(|id| state.identity(id).is_some_and(|w| w.role == Role::Patient));
                    id.ok_or_else(|| {
                        entry_error(
                            entry.index,
                            status::UNPROCESSABLE_ENTITY,
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
                status::NOT_FOUND,
                IssueCode::NotFound,
                format!("no {} with id {}", entry.resource_type, id.to_hex()),
            )
        };
        // PUT and DELETE: the resource exists, with this type.
        let existing = match entry.method {
            Method::Post => None,
            _ if directory => {
                let head = state
                    .directory_entry(&id)
                    .filter(|h| h.resource_type == entry.resource_type)
                    .ok_or_else(not_found)?;
                Some((None, String::new(), head.latest_version))
            }
            _ => {
                let head =
                    state.record(&id).filter(|h| h.resource_type == entry.resource_type).ok_or_else(not_found)?;
                // A record the caller may not see is, to it, not there (the API's `existence`).
                let sees = access::may_read(&state, &caller.identity, &id, Purpose::Treatment, now_ms)
                    .is_some_and(|d| d.is_ok());
                if !sees {
                    service.audit_refused_write(
                        caller.identity,
                        head.patient,
                        Some(id),
                        "not-custodian-staff",
                        now_ms,
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
                    let (json, category) = content::record_content(&entry.resource_type, &content)
                        .map_err(|e| at(e, &format!("Bundle.entry[{}].resource", entry.index)))?;
                    let patient = match &existing {
                        Some((patient, existing_category, _)) => {
                            if existing_category != category {
                                return Err(entry_error(
                                    entry.index,
                                    status::UNPROCESSABLE_ENTITY,
                                    IssueCode::BusinessRule,
                                    "a record's consent category never changes: create a new resource",
                                ));
                            }
                            // The new version must name the record's own patient.
                            let named = match entry.resource_type.as_str() {
                                "Patient" => named_identity(&json),
                                other => Some(subject_patient(&state, entry.index, other, &json, &patient_of_record)?),
                            };
                            if named.is_some_and(|named| Some(named) != *patient) {
                                return Err(entry_error(
                                    entry.index,
                                    status::UNPROCESSABLE_ENTITY,
                                    IssueCode::BusinessRule,
                                    "a record's patient never changes",
                                ));
                            }
                            *patient
                        }
                        None if entry.resource_type == "Patient" => patient_of_record.get(&id).copied(),
                        None => {
                            Some(subject_patient(&state, entry.index, &entry.resource_type, &json, &patient_of_record)?)
                        }
                    };
                    plan.patient = patient;
                    plan.category = category;
                } else if let Err(refused) = content::check_directory(&entry.resource_type, &content) {
                    // Too large for the ledger, or patient data in the clear directory.
                    return Err(content::in_entry(refused, entry.index).into());
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
    state: &medledger_ledger::State,
    index: usize,
    resource_type: &str,
    json: &serde_json::Value,
    bundle_patients: &HashMap<RecordId, IdentityId>,
) -> Result<IdentityId, PlanError> {
    let unprocessable = |why: String| entry_error(index, status::UNPROCESSABLE_ENTITY, IssueCode::Processing, why);
    let reference = ["subject", "patient"]
        .iter()
        .find_map(|k| json[*k]["reference"].as_str())
        .ok_or_else(|| unprocessable(format!("a {resource_type} needs a subject or patient reference to a Patient")))?;
    let id = reference
        .strip_prefix("Patient/")
        .and_then(|id| RecordId::from_hex(id).ok())
        .ok_or_else(|| unprocessable(format!("{} is not a reference to a Patient", echo(reference))))?;
    if let Some(identity) = bundle_patients.get(&id) {
        return Ok(*identity);
    }
    state.record(&id).filter(|h| h.resource_type == "Patient").map(|h| h.patient).ok_or_else(|| {
        unprocessable(format!("reference {} does not resolve to a Patient on this server", echo(reference)))
    })
}

/// The entry's bytes with every reference to another entry, and every conditional reference,
/// rewritten to `Type/id` of the server.
#[allow(clippy::too_many_arguments)]
fn rewrite(
    planner: &Planner<'_>,
    entry: &EntryIn,
    bytes: &[u8],
    by_url: &HashMap<String, String>,
    entries: &[EntryIn],
    ids: &[RecordId],
    bundle_values: &HashMap<usize, HashMap<&'static str, Vec<IndexValue>>>,
    batch_entry: bool,
    resolved: &mut HashMap<String, String>,
) -> Result<Vec<u8>, PlanError> {
    let broken = |why: String| entry_error(entry.index, status::BAD_REQUEST, IssueCode::Processing, why);
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
                        echo(reference)
                    )));
                }
                None => return Err(broken(format!("{} names no entry of this Bundle", echo(reference)))),
            },
            ReferenceKind::Absolute => by_url.get(reference).cloned(),
            ReferenceKind::Relative { resource_type, id, version } => {
                let in_bundle = base.as_ref().and_then(|b| by_url.get(&format!("{b}{resource_type}/{id}")));
                match in_bundle {
                    Some(to) if version.is_none() => Some(to.clone()),
                    Some(_) => return Err(broken("versioned references to Bundle entries are not supported".into())),
                    None => {
                        check_server_reference(&planner.service.chain.snapshot(), resource_type, id)
                            .map_err(&broken)?;
                        None
                    }
                }
            }
            // The same conditional reference in many entries (a practitioner of every encounter)
            // is resolved once per Bundle.
            ReferenceKind::Conditional { .. } if resolved.contains_key(reference) => resolved.get(reference).cloned(),
            ReferenceKind::Conditional { resource_type, query } => {
                let to = resolve_conditional(planner, entries, ids, bundle_values, resource_type, query, batch_entry)
                    .map_err(|why| {
                    entry_error(entry.index, status::PRECONDITION_FAILED, IssueCode::Processing, why)
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
        .map_err(|e| entry_error(entry.index, status::BAD_REQUEST, IssueCode::Invalid, e))?;
    // The targets' types are known only now: each reference must still be of an allowed type.
    medledger_fhir::validate(&rewritten).map_err(|issues| {
        let at_entry = |issue: Issue| {
            // `Encounter.serviceProvider.reference` → `Bundle.entry[i].resource.serviceProvider.reference`
            let rest = issue.expression.as_deref().and_then(|e| e.split_once('.')).map(|(_, r)| format!(".{r}"));
            let expression = Some(format!("Bundle.entry[{}].resource{}", entry.index, rest.unwrap_or_default()));
            Issue { expression, ..issue }
        };
        Refused::with_issues(status::BAD_REQUEST, issues.into_iter().map(at_entry).collect())
    })?;
    Ok(rewritten)
}

/// A relative reference to a type this server holds must name a resource it holds.
fn check_server_reference(state: &medledger_ledger::State, resource_type: &str, id: &str) -> Result<(), String> {
    if !is_served(resource_type) {
        return Ok(()); // a type not held here: not checkable, kept as written
    }
    let found = RecordId::from_hex(id).ok().is_some_and(|id| {
        state.record(&id).is_some_and(|h| h.resource_type == resource_type)
            || state.directory_entry(&id).is_some_and(|h| h.resource_type == resource_type)
    });
    match found {
        true => Ok(()),
        false => {
            Err(format!("reference {resource_type}/{} resolves to nothing in this Bundle or on this server", echo(id)))
        }
    }
}

/// `Type?query` resolved to `Type/id`: exactly one match among the Bundle's entries and the
/// server's resources the caller may see.
#[allow(clippy::too_many_arguments)]
fn resolve_conditional(
    planner: &Planner<'_>,
    entries: &[EntryIn],
    ids: &[RecordId],
    bundle_values: &HashMap<usize, HashMap<&'static str, Vec<IndexValue>>>,
    resource_type: &str,
    query: &str,
    batch_entry: bool,
) -> Result<String, String> {
    let shown = format!("conditional reference {resource_type}?{}", echo(query));
    let Planner { service, search, caller, now_ms } = *planner;
    let query = searchable_query(caller, resource_type, query, &shown)?;
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
    for id in search.matching_for_reference(service, &query, caller, now_ms) {
        if !found.contains(&id) {
            found.push(id);
        }
    }
    // Among several directory entries, the caller's own organisation's are the ones meant
    // (another member could publish look-alikes of them).
    if found.len() > 1 && is_directory(resource_type) {
        let own = service.organisation();
        let state = service.chain.snapshot();
        let own_or_new: Vec<RecordId> =
            found.iter().copied().filter(|id| state.directory_entry(id).is_none_or(|h| h.owner == own)).collect();
        if !own_or_new.is_empty() {
            found = own_or_new;
        }
    }
    // What the reference found (one, or several: "more than one" says they exist) is an access
    // like a search result's: on each record's trail.
    let state = service.chain.snapshot();
    for id in found.iter().filter(|id| !is_directory(resource_type) && state.record(id).is_some()) {
        service.audit_match(caller.identity, *id, Purpose::Treatment, now_ms).map_err(|e| format!("{shown}: {e}"))?;
    }
    match found.as_slice() {
        [one] => Ok(format!("{resource_type}/{}", one.to_hex())),
        [] => Err(format!("{shown} matches nothing (in this Bundle or on this server)")),
        _ => Err(format!("{shown} matches more than one resource")),
    }
}

/// Points every issue of `refused` that names no place at `expression`.
fn at(mut refused: Refused, expression: &str) -> Refused {
    for issue in &mut refused.issues {
        if issue.expression.is_none() {
            issue.expression = Some(expression.to_owned());
        }
    }
    refused
}
