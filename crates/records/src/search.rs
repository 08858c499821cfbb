//! The FHIR search index: the search values of every record version this node can decrypt,
//! kept current with the chain, and the evaluation of parsed queries
//! (`medledger_fhir::search`) against it. [`SearchIndex::search`] answers a search whole
//! (match, consent, page, include, read and audit every hit); conditional references and
//! creates resolve through [`SearchIndex::matching_for_reference`].
//!
//! The index holds values derived from plaintext (codes, dates, names), so it lives in memory
//! only: nothing of it is written to disk or logged, and it is rebuilt after a restart by
//! decrypting again (on the first search). After each block it looks only at the records that
//! got a version since (`PatientIndex::changed_since`), and at every record every 30 s (for
//! records that became readable here without a new version: a ciphertext replicated late, a key
//! shared later). While one search brings the index up to a newly
//! committed block, others answer from it as it was, so a search may miss what committed in
//! the last moment. Results are filtered by the caller's consent ([`crate::access`], with the
//! caller's credential) before counting and paging, so totals reveal nothing the caller may
//! not see; every returned resource is read through the record service and so audited, as a
//! `Search` access, and so is what a total counts without returning it (within
//! [`COUNTED_PATIENTS_MAX`] patients).
//!
//! A lock left poisoned by a search that panicked is taken anyway: the index is a cache whose
//! every candidate is checked against its entry and every hit against consent, so a
//! half-applied catch-up can make a search miss something, never show what it should not.

use std::{
    collections::{HashMap, HashSet},
    sync::RwLock,
};

use medledger_fhir::search::{self, IndexValue};
use medledger_ledger::{AccessAction, Purpose};
use medledger_node::chain::Chain;
use medledger_types::{IdentityId, RECORD_RESOURCE_TYPES, RecordId, TimestampMs};
use zeroize::Zeroizing;

use crate::{
    RecordError, RecordService,
    access::{self, AccessRequest, Basis, Caller, interactions},
    journal::Synced,
    served::is_tombstone,
};

/// Most resources one answer carries, matches and includes together.
pub const RESULTS_PER_ANSWER_MAX: usize = 1_000;

/// Most patients a search's `total` may count beyond those its page returns: each is recorded
/// on that patient's trail, so a broader total is left out of the answer (FHIR allows a
/// searchset without one), and a `_summary=count` that broad is refused.
pub const COUNTED_PATIENTS_MAX: usize = 100;

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
    pub fn catch_up(&self, chain: &Chain, service: &RecordService) {
        self.catch_up_waiting(chain, service, false)
    }

    /// [`SearchIndex::catch_up`]; with `wait`, waits for a catch-up in progress rather than
    /// answer from the index as it was (resolving a conditional reference must see what
    /// committed just before).
    fn catch_up_waiting(&self, chain: &Chain, service: &RecordService, wait: bool) {
        let height = chain.patient_index().height();
        if self.indexed.read().unwrap_or_else(std::sync::PoisonError::into_inner).height == height {
            return;
        }
        // The first build must finish before anyone searches; later ones are single-flight.
        let first = self.indexed.read().unwrap_or_else(std::sync::PoisonError::into_inner).height == 0;
        let mut turn = if first || wait {
            self.catching_up.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
        } else {
            match self.catching_up.try_lock() {
                Ok(turn) => turn,
                Err(_) => return,
            }
        };
        if self.indexed.read().unwrap_or_else(std::sync::PoisonError::into_inner).height == height {
            return;
        }
        // One snapshot: the directory heads and the index at one height.
        let snapshot = chain.snapshot();
        let directory_heads: Vec<(RecordId, String, u32)> = snapshot
            .directory_entries()
            .map(|(id, head)| (*id, head.resource_type.clone(), head.latest_version))
            .collect();
        let (stale, stale_directory): (Vec<Stale>, Vec<Stale>) = {
            let indexed = self.indexed.read().unwrap_or_else(std::sync::PoisonError::into_inner);
            let index = snapshot.index();
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
                .filter(|r| RECORD_RESOURCE_TYPES.contains(&r.resource_type.as_str()))
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
            if is_tombstone(&plaintext) {
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
        let mut indexed = self.indexed.write().unwrap_or_else(std::sync::PoisonError::into_inner);
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

/// Evaluates `query` for `caller`: match, filter by consent, sort, page, include. Consent is
/// decided against one snapshot of the chain, so every hit is judged at the same height.
fn evaluate(
    index: &SearchIndex,
    chain: &Chain,
    query: &search::Query,
    caller: Caller<'_>,
    purpose: Purpose,
    now: u64,
) -> Found {
    // Each record found is a search hit, decided with the caller's credential and consent.
    let hit = |record: &RecordId| AccessRequest {
        caller: caller.identity,
        credential: caller.credential,
        action: AccessAction::Search,
        purpose,
        record: *record,
        version: None,
        now_ms: now,
    };
    // Included and revincluded records are of other types: the caller's credential must cover
    // reading them too, as well as consent.
    let scoped = |resource_type: &str| {
        caller.credential.permits(resource_type, interactions::READ)
            || caller.credential.permits(resource_type, interactions::SEARCH)
    };
    let indexed = index.indexed.read().unwrap_or_else(std::sync::PoisonError::into_inner);
    let state = chain.snapshot();
    let visible = |record: &RecordId| {
        // Directory entries are not patient data: the credential decides alone.
        state.directory_entry(record).is_some()
            || access::check(&state, &hit(record)).is_some_and(|outcome| outcome.is_ok())
    };
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
    for record in &filtered {
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

/// How a resource is in a search's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HitMode {
    /// It matched the query.
    Match,
    /// Brought in by `_include` / `_revinclude`.
    Include,
}

impl HitMode {
    /// The FHIR `Bundle.entry.search.mode` code.
    pub fn code(self) -> &'static str {
        match self {
            HitMode::Match => "match",
            HitMode::Include => "include",
        }
    }
}

/// One resource a search returns, read (and audited) as the caller.
pub struct Hit {
    pub record_id: RecordId,
    pub resource_type: String,
    pub version: u32,
    pub last_updated_ms: u64,
    pub mode: HitMode,
    /// The stored resource (without server metadata, which the renderer splices in).
    pub content: Zeroizing<Vec<u8>>,
}

/// A search's answer: the page's resources and what the total is.
pub struct SearchAnswer {
    /// The matches the caller may see, in all pages.
    pub total: usize,
    /// Whether `total` may be shown: not when it counts more than [`COUNTED_PATIENTS_MAX`]
    /// patients beyond those the page returns.
    pub show_total: bool,
    pub hits: Vec<Hit>,
}

impl SearchIndex {
    /// Answers `query` for `caller` at `now`: catches the index up, evaluates, reads every
    /// returned resource as a `Search` access, and records a count event for each patient
    /// whose records the total counts but the page does not return; every decision is durable
    /// before this returns. A `_summary=count` over more than [`COUNTED_PATIENTS_MAX`] such
    /// patients is refused ([`RecordError::CountTooBroad`]).
    pub fn search(
        &self,
        service: &RecordService,
        query: &search::Query,
        caller: Caller<'_>,
        purpose: Purpose,
        now_ms: TimestampMs,
    ) -> Result<SearchAnswer, RecordError> {
        self.catch_up(&service.chain, service);
        let found = evaluate(self, &service.chain, query, caller, purpose, now_ms);
        // Whose records the total counts without this answer returning them: each such patient
        // learns of the count on their trail, within a bound.
        let returned: HashSet<IdentityId> = match query.summary_count {
            true => HashSet::new(),
            false => found.returned_patients.iter().copied().collect(),
        };
        let unreturned = found.counted.iter().filter(|(p, _)| !returned.contains(p)).count();
        let show_total = unreturned <= COUNTED_PATIENTS_MAX;
        if query.summary_count && !show_total {
            return Err(RecordError::CountTooBroad { patients: unreturned, max: COUNTED_PATIENTS_MAX });
        }
        // Every decision below is recorded before the answer leaves (one journal sync for all).
        let mut synced = Synced::default();
        let mut served: HashSet<IdentityId> = HashSet::new();
        let mut hits = Vec::new();
        if !query.summary_count {
            let indexed = self.indexed.read().unwrap_or_else(std::sync::PoisonError::into_inner);
            let listed = found
                .matches
                .iter()
                .map(|id| (*id, HitMode::Match))
                .chain(found.includes.iter().map(|id| (*id, HitMode::Include)));
            for (record_id, mode) in listed {
                let Some(entry) = indexed.entries.get(&record_id) else { continue };
                // Audited as a search access; a version written since indexing is read as
                // indexed. Directory entries are read as they are: not patient data, not audited.
                let content = match entry.directory {
                    true => service.read_directory(&record_id, Some(entry.version)).map(|v| Zeroizing::new(v.content)),
                    false => service
                        .read_deferred(
                            caller,
                            record_id,
                            Some(entry.version),
                            purpose,
                            AccessAction::Search,
                            now_ms,
                            &mut synced,
                        )
                        .map(|r| r.plaintext),
                };
                let content = match content {
                    Ok(content) => content,
                    // Nothing is answered that is not recorded.
                    Err(e @ RecordError::Audit(_)) => return Err(e),
                    Err(_) => continue,
                };
                if mode == HitMode::Match
                    && let Some(patient) = found.patient_of.get(&record_id)
                {
                    served.insert(*patient);
                }
                hits.push(Hit {
                    record_id,
                    resource_type: entry.resource_type.clone(),
                    version: entry.version,
                    last_updated_ms: entry.last_updated_ms,
                    mode,
                    content,
                });
            }
        }
        // What the total counted but the answer does not return is learned too: one count
        // event per patient whose records were counted and none returned (a `_summary=count`
        // or `_count=0` search counts everything).
        for (patient, basis) in found.counted.iter().filter(|(p, _)| show_total && !served.contains(p)) {
            // Dated as decided, so the grant named was in force then.
            service.audit_count_deferred(caller.identity, *patient, purpose, *basis, now_ms, &mut synced)?;
        }
        service.sync_audit(synced)?;
        Ok(SearchAnswer { total: found.total, show_total, hits })
    }

    /// The resources matching `query` that `caller` may see, at most two: resolving a
    /// conditional reference (`Type?query`) needs exactly one. Waits for a catch-up in
    /// progress (it must see what committed just before). Not audited: nothing is returned to
    /// the caller but the id it asked the server to link to.
    pub fn matching_for_reference(
        &self,
        service: &RecordService,
        query: &search::Query,
        caller: Caller<'_>,
        now_ms: TimestampMs,
    ) -> Vec<RecordId> {
        self.catch_up_waiting(&service.chain, service, true);
        let mut query = query.clone();
        query.count = 2;
        query.offset = 0;
        query.includes.clear();
        query.revincludes.clear();
        query.sort.clear();
        evaluate(self, &service.chain, &query, caller, Purpose::Treatment, now_ms).matches
    }
}
