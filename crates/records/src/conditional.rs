//! Conditional creates and conditional references: the one resource of the server a search
//! finds, for a caller whose credential may search the type and who may see it; the query
//! must parse strictly and have criteria. What the check learns (these exist and match) is
//! audited like a search result.

use medledger_fhir::{
    outcome::echo,
    search::{self, ParseOptions},
};
use medledger_ledger::Purpose;
use medledger_types::{RecordId, TimestampMs};

use crate::{
    RecordService,
    access::{Caller, interactions},
    search::SearchIndex,
    served::is_directory,
};

/// A conditional create's search: the one resource of the server it finds (the caller must be
/// able to search the type and see it), `None` if none, an error if several or malformed.
pub fn existing_match(
    service: &RecordService,
    search: &SearchIndex,
    caller: Caller<'_>,
    resource_type: &str,
    query: &str,
    now_ms: TimestampMs,
) -> Result<Option<RecordId>, String> {
    let shown = format!("ifNoneExist {}", echo(query));
    let query = searchable_query(caller, resource_type, query, &shown)?;
    let found = search.matching_for_reference(service, &query, caller, now_ms);
    // What the check learned (these exist and match) is an access like a search result's.
    let state = service.chain.snapshot();
    for id in found.iter().filter(|id| !is_directory(resource_type) && state.record(id).is_some()) {
        service.audit_match(caller.identity, *id, Purpose::Treatment, now_ms).map_err(|e| format!("{shown}: {e}"))?;
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
pub fn searchable_query(
    caller: Caller<'_>,
    resource_type: &str,
    query: &str,
    shown: &str,
) -> Result<search::Query, String> {
    if !(caller.credential.permits(resource_type, interactions::SEARCH)
        || caller.credential.permits(resource_type, interactions::READ))
    {
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
