//! FHIR search (`GET /fhir/{type}?…`): an in-memory index of the search values of every record
//! version this node can decrypt, kept current with the chain, and the evaluation of parsed
//! queries (`medledger_fhir::search`) against it.
//!
//! The index holds values derived from plaintext (codes, dates, names), so it lives in memory
//! only: nothing of it is written to disk or logged, and it is rebuilt after a restart by
//! decrypting again (on the first search). After each block it looks only at the records that
//! got a version since (`PatientIndex::changed_since`), and at every record every 30 s (for
//! records that became readable here without a new version: a ciphertext replicated late, a key
//! shared later). While one search brings the index up to a newly
//! committed block, others answer from it as it was, so a search may miss what committed in
//! the last moment. Results are filtered by the caller's consent
//! (`records::access`, with the token's scopes) before counting and paging, so totals reveal nothing the caller
//! may not see; every returned resource is read through the record service and so audited,
//! as a `Search` access.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, RwLock},
};

use axum::{
    extract::{Path, Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use medledger_fhir::{
    Issue, IssueCode,
    instant::instant_from_ms,
    search::{self, IndexValue, ParseOptions},
    splice::{ServerMeta, with_server_meta},
};
use medledger_ledger::AccessAction;
use medledger_node::chain::Chain;
use medledger_records::{
    RecordError, RecordService,
    access::{self, AccessRequest, Basis},
    journal::Synced,
};
use medledger_types::{IdentityId, RecordId};

use crate::{
    app::AppState,
    clock::now_ms,
    fhir::{FHIR_JSON, FhirError, SERVED_TYPES},
    smart::scopes::interactions,
};

/// Records whose consent is decided per hold of the chain state's read lock.
const VISIBILITY_CHUNK: usize = 1_024;

/// Most resources one answer carries, matches and includes together.
pub const RESULTS_PER_ANSWER_MAX: usize = 1_000;

/// One indexed record: its latest version's search values, by parameter.
struct Entry {
    resource_type: String,
    /// A directory entry (in clear, no consent) rather than a patient record.
    directory: bool,
    version: u32,
    last_updated_ms: u64,
    values: HashMap<&'static str, Vec<IndexValue>>,
}

#[derive(Default)]
struct Indexed {
    /// The patient index height this reflects.
    height: u64,
    entries: HashMap<RecordId, Entry>,
    /// Records by type, in the order first indexed (the default result order); each at most
    /// once (`listed`), even when deleted and written again.
    by_type: HashMap<String, Vec<RecordId>>,
    listed: HashSet<RecordId>,
    /// Postings of reference and token values: (parameter, referenced id or code) → records
    /// that had it in some indexed version. A posting can be stale (a later version dropped
    /// the value), so candidates from here are always checked against the entry itself.
    postings: HashMap<(&'static str, String), Vec<RecordId>>,
    posted: HashSet<(RecordId, &'static str, String)>,
}

/// The posting key of an index value, for the values worth an inverted list.
fn posting_key(value: &IndexValue) -> Option<String> {
    match value {
        IndexValue::Reference { id, .. } => Some(id.clone()),
        IndexValue::Token { code, .. } => Some(code.clone()),
        _ => None,
    }
}

/// A record or directory entry whose latest version is not indexed yet: id, type, version,
/// commit time.
type Stale = (RecordId, String, u32, u64);

/// The node's search index (see the module docs).
#[derive(Default)]
pub struct SearchIndex {
    indexed: RwLock<Indexed>,
    /// Held by the one search bringing the index up to date; the others answer from the
    /// index as it is (at most a block or two behind) instead of all redoing the same work.
    /// It holds when the last full scan ran.
    catching_up: std::sync::Mutex<Option<std::time::Instant>>,
}

/// How often catch-up looks at every record rather than only at what changed: a record
/// whose ciphertext arrives later by replication, or whose key is shared with this node
/// later, changes no record version, and is found this way.
const FULL_SCAN_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

impl SearchIndex {
    /// Brings the index up to the chain's finalized records: indexes every record whose latest
    /// version it has not seen yet, when this node can decrypt it. Cheap when nothing changed.
    fn catch_up(&self, chain: &Chain, service: &RecordService) {
        self.catch_up_waiting(chain, service, false)
    }

    /// [`SearchIndex::catch_up`]; with `wait`, waits for a catch-up in progress rather than
    /// answer from the index as it was (resolving a conditional reference must see what
    /// committed just before).
    fn catch_up_waiting(&self, chain: &Chain, service: &RecordService, wait: bool) {
        let height = chain.patient_index().height();
        if self.indexed.read().expect("search index lock poisoned").height == height {
            return;
        }
        // The first build must finish before anyone searches; later ones are single-flight.
        let first = self.indexed.read().expect("search index lock poisoned").height == 0;
        let mut turn = if first || wait {
            self.catching_up.lock().expect("catch-up lock poisoned")
        } else {
            match self.catching_up.try_lock() {
                Ok(turn) => turn,
                Err(_) => return,
            }
        };
        if self.indexed.read().expect("search index lock poisoned").height == height {
            return;
        }
        // The chain's lock order is state, then patient index (block application takes both
        // for writing in that order): never ask for the state while holding the index.
        let directory_heads: Vec<(RecordId, String, u32)> = chain
            .state()
            .directory_entries()
            .map(|(id, head)| (*id, head.resource_type.clone(), head.latest_version))
            .collect();
        let (stale, stale_directory): (Vec<Stale>, Vec<Stale>) = {
            let indexed = self.indexed.read().expect("search index lock poisoned");
            let index = chain.patient_index();
            // After the first build, only what changed since the indexed height is looked at:
            // most blocks (access events) change no record, and a scan of every record per
            // block would stall the search that runs it.
            let full = indexed.height == 0 || turn.is_none_or(|at| at.elapsed() >= FULL_SCAN_EVERY);
            if full {
                *turn = Some(std::time::Instant::now());
            }
            let changed: Box<dyn Iterator<Item = &medledger_node::index::RecordEntry>> = match full {
                true => Box::new(index.records()),
                false => {
                    let from = indexed.height;
                    let mut seen = HashSet::new();
                    Box::new(
                        index
                            .changed_since(from)
                            .filter(move |id| seen.insert(**id))
                            .filter_map(|id| index.record(id))
                            .collect::<Vec<_>>()
                            .into_iter(),
                    )
                }
            };
            let records = changed
                .filter(|r| SERVED_TYPES.contains(&r.resource_type.as_str()))
                .filter_map(|r| {
                    let latest = r.versions.last()?;
                    let seen = indexed.entries.get(&r.record_id).is_some_and(|e| e.version == latest.version);
                    (!seen).then(|| {
                        (r.record_id, r.resource_type.clone(), latest.version, latest.position.committed_at_ms)
                    })
                })
                .collect();
            // Entries committed in a block the patient index has not taken yet wait for it.
            let directory = directory_heads
                .into_iter()
                .filter(|(id, _, version)| indexed.entries.get(id).is_none_or(|e| e.version != *version))
                .filter_map(|(id, resource_type, version)| {
                    let at = index.directory_versions(&id).iter().find(|(v, _)| *v == version)?.1.committed_at_ms;
                    Some((id, resource_type, version, at))
                })
                .collect();
            (records, directory)
        };
        let mut fresh = Vec::with_capacity(stale.len());
        // Records whose latest version is a delete marker: no longer found by search.
        let mut deleted = Vec::new();
        let directory_ids: HashSet<RecordId> = stale_directory.iter().map(|(id, ..)| *id).collect();
        for (record_id, resource_type, version, last_updated_ms) in stale.into_iter().chain(stale_directory) {
            let directory = directory_ids.contains(&record_id);
            // Not decryptable here, or its ciphertext not replicated yet: drop what an older
            // version left in the index rather than serve a superseded version.
            let content = match directory {
                true => service.read_directory(&record_id, Some(version)).map(|v| zeroize::Zeroizing::new(v.content)),
                false => service.plaintext_for_index(&record_id, version),
            };
            let Ok(plaintext) = content else {
                deleted.push(record_id);
                continue;
            };
            if crate::fhir::is_tombstone(&plaintext) {
                deleted.push(record_id);
                continue;
            }
            let Ok(extraction) = search::extract_bytes(&plaintext) else {
                deleted.push(record_id);
                continue;
            };
            let mut values: HashMap<&'static str, Vec<IndexValue>> = HashMap::new();
            for (param, value) in extraction.values {
                values.entry(param).or_default().push(value);
            }
            values.insert("_id", vec![IndexValue::Token { system: None, code: record_id.to_hex() }]);
            let at = last_updated_ms as i64;
            values.insert("_lastUpdated", vec![IndexValue::Date { low_ms: at, high_ms: at }]);
            fresh.push((record_id, Entry { resource_type, directory, version, last_updated_ms, values }));
        }
        let mut indexed = self.indexed.write().expect("search index lock poisoned");
        for record_id in deleted {
            // Postings and the type list may still name it; candidates are checked against
            // `entries`, where it no longer is.
            indexed.entries.remove(&record_id);
        }
        for (record_id, entry) in fresh {
            if indexed.listed.insert(record_id) {
                indexed.by_type.entry(entry.resource_type.clone()).or_default().push(record_id);
            }
            // A record goes into a posting list once, however many versions carry the value
            // (`posted` remembers which lists it is in).
            for (param, values) in &entry.values {
                for key in values.iter().filter_map(posting_key) {
                    if indexed.posted.insert((record_id, param, key.clone())) {
                        indexed.postings.entry((param, key)).or_default().push(record_id);
                    }
                }
            }
            indexed.entries.insert(record_id, entry);
        }
        indexed.height = height;
    }
}

fn values_of<'e>(entry: &'e Entry, param: &str) -> &'e [IndexValue] {
    entry.values.get(param).map(Vec::as_slice).unwrap_or_default()
}

/// The posting key a filter names when it tests exactly one reference id or one code.
fn single_key(filter: &search::Filter) -> Option<String> {
    use medledger_fhir::search::{Test, TokenQuery};
    match &filter.test {
        Test::Reference { any_of } if any_of.len() == 1 => Some(any_of[0].id.clone()),
        Test::Token { any_of, not: false } if any_of.len() == 1 => match &any_of[0] {
            TokenQuery::Code(code) | TokenQuery::SystemCode { code, .. } | TokenQuery::NoSystem(code) => {
                Some(code.clone())
            }
            TokenQuery::System(_) => None,
        },
        _ => None,
    }
}

/// The smallest candidate list a query's filters allow: the postings of a reference or token
/// filter naming exactly one id or code, else every record of the type. Candidates are
/// always checked against every filter afterwards.
fn candidates<'i>(indexed: &'i Indexed, query: &search::Query) -> std::borrow::Cow<'i, [RecordId]> {
    let table = search::SearchParams::r4();
    let mut best: Option<&'i Vec<RecordId>> = None;
    for filter in &query.filters {
        let Some(key) = single_key(filter) else { continue };
        // The table is static, so its parameter names are the same `&'static str`s the
        // extraction (and so the postings) use.
        let Some(param) = table.get(&query.resource_type, &filter.param).map(|p| p.code.as_str()) else { continue };
        match indexed.postings.get(&(param, key)) {
            // No record ever had this value: nothing can match.
            None => return std::borrow::Cow::Owned(Vec::new()),
            Some(list) => {
                if best.is_none_or(|b| list.len() < b.len()) {
                    best = Some(list);
                }
            }
        }
    }
    match best {
        Some(list) => {
            // Postings can repeat a record (indexed again for a new version) and hold other
            // types: dedupe and keep the type's.
            let mut seen = HashSet::new();
            std::borrow::Cow::Owned(
                list.iter()
                    .filter(|id| {
                        indexed.entries.get(id).is_some_and(|e| e.resource_type == query.resource_type)
                            && seen.insert(**id)
                    })
                    .copied()
                    .collect(),
            )
        }
        None => {
            std::borrow::Cow::Borrowed(indexed.by_type.get(&query.resource_type).map(Vec::as_slice).unwrap_or_default())
        }
    }
}

/// What one search found: page entries (matches, then includes) and the visible total.
struct Found {
    total: usize,
    matches: Vec<RecordId>,
    includes: Vec<RecordId>,
    /// Each patient whose records `total` counts, with the basis of one of them.
    counted: Vec<(IdentityId, Basis)>,
    /// The patients of the records in `matches`.
    returned_patients: Vec<IdentityId>,
    /// The patient of each record in `matches`.
    patient_of: HashMap<RecordId, IdentityId>,
}

/// Evaluates `query` for `requester`: match, filter by consent, sort, page, include.
fn evaluate(
    index: &SearchIndex,
    chain: &Chain,
    query: &search::Query,
    grant: &crate::smart::scopes::Grant,
    purpose: medledger_ledger::Purpose,
    now: u64,
) -> Found {
    // Each record found is a search hit, decided with the token's scopes and consent.
    let hit = |record: &RecordId| AccessRequest {
        caller: grant.identity,
        credential: grant,
        action: AccessAction::Search,
        purpose,
        record: *record,
        version: None,
        now_ms: now,
    };
    // Included and revincluded records are of other types: the token's scopes must cover
    // reading them too, as well as consent.
    let scoped = |resource_type: &str| {
        grant.allows(resource_type, interactions::READ) || grant.allows(resource_type, interactions::SEARCH)
    };
    let indexed = index.indexed.read().expect("search index lock poisoned");
    // Consent is decided under the chain state's read lock, taken per chunk of records, never
    // across a whole scan: block application waits for the lock, and a search over every
    // record of a type must not hold it up.
    let visible_of = |ids: &[RecordId]| -> Vec<RecordId> {
        let mut out = Vec::new();
        for chunk in ids.chunks(VISIBILITY_CHUNK) {
            let state = chain.state();
            out.extend(chunk.iter().copied().filter(|record| {
                // Directory entries are not patient data: the token's scopes decide alone.
                state.directory_entry(record).is_some()
                    || access::check(&state, &hit(record)).is_some_and(|outcome| outcome.is_ok())
            }));
        }
        out
    };
    let visible = |record: &RecordId| !visible_of(std::slice::from_ref(record)).is_empty();
    let candidates = candidates(&indexed, query);
    let filtered: Vec<RecordId> = candidates
        .iter()
        .filter(|id| {
            let Some(entry) = indexed.entries.get(id) else { return false };
            query.filters.iter().all(|f| f.matches(values_of(entry, &f.param)))
        })
        .copied()
        .collect();
    // As `visible_of`, noting whose records are counted and on what basis (for the audit).
    let mut matched = Vec::new();
    let mut counted: Vec<(IdentityId, Basis)> = Vec::new();
    let mut counted_patients: HashSet<IdentityId> = HashSet::new();
    let mut patient_of: HashMap<RecordId, IdentityId> = HashMap::new();
    for chunk in filtered.chunks(VISIBILITY_CHUNK) {
        let state = chain.state();
        for record in chunk {
            if state.directory_entry(record).is_some() {
                matched.push(*record);
                continue;
            }
            let Some(head) = state.record(record) else { continue };
            let Some(Ok(basis)) = access::check(&state, &hit(record)) else { continue };
            matched.push(*record);
            patient_of.insert(*record, head.patient);
            if counted_patients.insert(head.patient) {
                counted.push((head.patient, basis));
            }
        }
    }
    for key in query.sort.iter().rev() {
        matched.sort_by(|a, b| {
            let ka = indexed.entries.get(a).and_then(|e| search::sort_key(values_of(e, &key.param), key.descending));
            let kb = indexed.entries.get(b).and_then(|e| search::sort_key(values_of(e, &key.param), key.descending));
            search::compare_sort_keys(ka, kb, key.descending)
        });
    }
    let total = matched.len();
    let page: Vec<RecordId> = matched
        .into_iter()
        .skip(query.offset as usize)
        .take((query.count as usize).min(RESULTS_PER_ANSWER_MAX))
        .collect();
    let mut includes = Vec::new();
    let mut seen: HashSet<RecordId> = page.iter().copied().collect();
    let room = RESULTS_PER_ANSWER_MAX.saturating_sub(page.len());
    for include in &query.includes {
        for id in &page {
            let Some(entry) = indexed.entries.get(id) else { continue };
            for value in values_of(entry, &include.param) {
                let IndexValue::Reference { resource_type, id: target } = value else { continue };
                let Ok(target) = RecordId::from_hex(target) else { continue };
                let type_ok = indexed.entries.get(&target).is_some_and(|t| {
                    include.target_type.as_deref().is_none_or(|want| t.resource_type == want)
                        && resource_type.as_deref().is_none_or(|r| r == t.resource_type)
                        && scoped(&t.resource_type)
                });
                if type_ok && includes.len() < room && seen.insert(target) && visible(&target) {
                    includes.push(target);
                }
            }
        }
    }
    let page_ids: HashSet<RecordId> = page.iter().copied().collect();
    for revinclude in query.revincludes.iter().filter(|r| scoped(&r.source_type)) {
        let sources = indexed.by_type.get(&revinclude.source_type).map(Vec::as_slice).unwrap_or_default();
        for source in sources {
            let Some(entry) = indexed.entries.get(source) else { continue };
            let points_here = values_of(entry, &revinclude.param).iter().any(|v| match v {
                IndexValue::Reference { id, .. } => RecordId::from_hex(id).is_ok_and(|r| page_ids.contains(&r)),
                _ => false,
            });
            if points_here && includes.len() < room && seen.insert(*source) && visible(source) {
                includes.push(*source);
            }
        }
    }
    let returned_patients = page.iter().filter_map(|r| patient_of.get(r).copied()).collect();
    let patient_of = page.iter().filter_map(|r| Some((*r, *patient_of.get(r)?))).collect();
    Found { total, matches: page, includes, counted, returned_patients, patient_of }
}

/// The resources matching `query` that `grant`'s identity may see, at most two: resolving a
/// conditional reference (`Type?query`) needs exactly one. Not audited: nothing is returned
/// to the caller but the id it asked the server to link to.
pub(crate) fn matching_for_reference(
    index: &SearchIndex,
    chain: &Chain,
    service: &RecordService,
    query: &search::Query,
    grant: &crate::smart::scopes::Grant,
    now: u64,
) -> Vec<RecordId> {
    index.catch_up_waiting(chain, service, true);
    let mut query = query.clone();
    query.count = 2;
    query.offset = 0;
    query.includes.clear();
    query.revincludes.clear();
    query.sort.clear();
    evaluate(index, chain, &query, grant, medledger_ledger::Purpose::Treatment, now).matches
}

/// `GET /fhir/{type}?…`: search.
pub(crate) async fn search(
    State(app): State<AppState>,
    Path(resource_type): Path<String>,
    Query(params): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Result<Response, FhirError> {
    crate::fhir::served_type(&resource_type)?;
    let grant = crate::fhir::authorize_type(&app, &headers, &resource_type, interactions::SEARCH)?;
    let purpose = crate::fhir::purpose_of(&headers)?;
    let lenient = headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split([',', ';']).any(|p| p.trim() == "handling=lenient"));
    let query = search::parse_query(&resource_type, &params, &ParseOptions { lenient })
        .map_err(|issues| FhirError::with_issues(StatusCode::BAD_REQUEST, issues))?;
    if let Some(format) = &query.format
        && !matches!(format.as_str(), "json" | "application/json" | "application/fhir+json")
    {
        return Err(FhirError::with_issues(
            StatusCode::NOT_ACCEPTABLE,
            vec![Issue {
                severity: medledger_fhir::Severity::Error,
                code: IssueCode::NotSupported,
                expression: None,
                diagnostics: "this server answers in JSON only".into(),
            }],
        ));
    }
    let service = crate::fhir::record_service(&app)?;
    // Links are absolute (clients follow `next` as given), under the node's configured public
    // base: never the request's Host, which the client controls.
    let origin = app.public_base().to_owned();
    let (index, chain) = (app.search.clone(), app.chain.clone());
    let grant_for_task = grant.clone();
    let query_for_task = query.clone();
    let answer = tokio::task::spawn_blocking(move || -> Result<String, FhirError> {
        index.catch_up(&chain, &service);
        let now = now_ms();
        let found = evaluate(&index, &chain, &query_for_task, &grant_for_task, purpose, now);
        let links = params_for_links(&params);
        bundle(&service, &index, &query_for_task, &found, (&grant_for_task, purpose, now), &origin, &links)
    })
    .await
    .map_err(|_| FhirError::new(StatusCode::INTERNAL_SERVER_ERROR, IssueCode::Exception, "search task failed"))??;
    let mut response = (StatusCode::OK, answer).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// The request's parameters without `_offset`, re-encoded for `self`/`next` links.
fn params_for_links(params: &[(String, String)]) -> String {
    let mut out = String::new();
    for (k, v) in params.iter().filter(|(k, _)| k != "_offset") {
        if !out.is_empty() {
            out.push('&');
        }
        out.push_str(&percent(k));
        out.push('=');
        out.push_str(&percent(v));
    }
    out
}

fn percent(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b':' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Most patients a search's `total` may count beyond those its page returns: each is recorded
/// on that patient's trail, so a broader total is left out of the answer (FHIR allows a
/// searchset without one), and a `_summary=count` that broad is refused.
pub const COUNTED_PATIENTS_MAX: usize = 100;

fn bundle(
    service: &Arc<RecordService>,
    index: &SearchIndex,
    query: &search::Query,
    found: &Found,
    (grant, purpose, now): (&crate::smart::scopes::Grant, medledger_ledger::Purpose, u64),
    origin: &str,
    link_params: &str,
) -> Result<String, FhirError> {
    // Whose records the total counts without this answer returning them: each such patient
    // learns of the count on their trail, within a bound.
    let returned: HashSet<IdentityId> = match query.summary_count {
        true => HashSet::new(),
        false => found.returned_patients.iter().copied().collect(),
    };
    let unreturned = found.counted.iter().filter(|(p, _)| !returned.contains(p)).count();
    let show_total = unreturned <= COUNTED_PATIENTS_MAX;
    if query.summary_count && !show_total {
        return Err(FhirError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            IssueCode::TooCostly,
            format!(
                "this count covers the records of {unreturned} patients, each of whom would see it on their access \
                 trail; at most {COUNTED_PATIENTS_MAX} are counted at once: narrow the search (by patient, say)"
            ),
        ));
    }
    let base = format!("{origin}/fhir/{}", query.resource_type);
    let separator = if link_params.is_empty() { "" } else { "&" };
    let mut links =
        vec![format!(r#"{{"relation":"self","url":"{base}?{link_params}{separator}_offset={}"}}"#, query.offset)];
    let next = query.offset as usize + query.count as usize;
    if !query.summary_count && next < found.total && query.count > 0 {
        links.push(format!(r#"{{"relation":"next","url":"{base}?{link_params}{separator}_offset={next}"}}"#));
    }
    let total = match show_total {
        true => format!(r#""total":{},"#, found.total),
        false => String::new(),
    };
    let mut out =
        format!(r#"{{"resourceType":"Bundle","type":"searchset",{total}"link":[{}],"entry":["#, links.join(","));
    let mut first = true;
    if !query.ignored.is_empty() {
        out.push_str(r#"{"resource":"#);
        out.push_str(&medledger_fhir::operation_outcome(&query.ignored));
        out.push_str(r#","search":{"mode":"outcome"}}"#);
        first = false;
    }
    // Every decision below is recorded before the answer leaves (one journal sync for all).
    let mut synced = Synced::default();
    let mut served: HashSet<IdentityId> = HashSet::new();
    if !query.summary_count {
        let indexed = index.indexed.read().expect("search index lock poisoned");
        let listed: Vec<(RecordId, &str)> = found
            .matches
            .iter()
            .map(|id| (*id, "match"))
            .chain(found.includes.iter().map(|id| (*id, "include")))
            .collect();
        for (record_id, mode) in listed {
            let Some(entry) = indexed.entries.get(&record_id) else { continue };
            // Audited as a search access; a version written since indexing is read as indexed.
            // Directory entries are read as they are: not patient data, not audited.
            let content = match entry.directory {
                true => {
                    service.read_directory(&record_id, Some(entry.version)).map(|v| zeroize::Zeroizing::new(v.content))
                }
                false => service
                    .read_deferred(
                        grant.caller(),
                        record_id,
                        Some(entry.version),
                        purpose,
                        AccessAction::Search,
                        now_ms(),
                        &mut synced,
                    )
                    .map(|r| r.plaintext),
            };
            let plaintext = match content {
                Ok(plaintext) => plaintext,
                // Nothing is answered that is not recorded.
                Err(e @ RecordError::Audit(_)) => return Err(e.into()),
                Err(_) => continue,
            };
            if mode == "match"
                && let Some(patient) = found.patient_of.get(&record_id)
            {
                served.insert(*patient);
            }
            let id = record_id.to_hex();
            let version = entry.version.to_string();
            let last_updated = instant_from_ms(entry.last_updated_ms);
            let resource = with_server_meta(
                &plaintext,
                &ServerMeta { id: &id, version_id: &version, last_updated: &last_updated },
            )
            .map_err(|e| FhirError::new(StatusCode::INTERNAL_SERVER_ERROR, IssueCode::Exception, e.to_string()))?;
            if !first {
                out.push(',');
            }
            first = false;
            out.push_str(&format!(r#"{{"fullUrl":"{origin}/fhir/{}/{id}","resource":"#, entry.resource_type));
            out.push_str(std::str::from_utf8(&resource).map_err(|_| {
                FhirError::new(StatusCode::INTERNAL_SERVER_ERROR, IssueCode::Exception, "stored resource is not UTF-8")
            })?);
            out.push_str(&format!(r#","search":{{"mode":"{mode}"}}}}"#));
        }
    }
    out.push_str("]}");
    // What the total counted but the answer does not return is learned too: one count event
    // per patient whose records were counted and none returned (a `_summary=count` or
    // `_count=0` search counts everything).
    for (patient, basis) in found.counted.iter().filter(|(p, _)| show_total && !served.contains(p)) {
        // Dated as decided, so the grant named was in force then.
        service.audit_count_deferred(grant.identity, *patient, purpose, *basis, now, &mut synced)?;
    }
    service.sync_audit(synced)?;
    Ok(out)
}

/// Search parameters the CapabilityStatement declares for `resource_type`.
pub fn declared_params(resource_type: &str) -> Vec<serde_json::Value> {
    search::SearchParams::r4()
        .for_type(resource_type)
        .map(|p| {
            serde_json::json!({
                "name": p.code,
                "definition": p.definition_url(),
                "type": match p.param_type {
                    search::ParamType::Token => "token",
                    search::ParamType::String => "string",
                    search::ParamType::Date => "date",
                    search::ParamType::Reference => "reference",
                },
            })
        })
        .collect()
}
