//! FHIR transaction-Bundle input, as the planner (`medledger_records::bundle`) takes it apart.
//!
//! The planner itself is not a pure function (it reads chain state, the search index and the
//! caller's grant, and draws random ids), so this target drives the public pure functions it
//! is built on, in its order: `validate` of the Bundle, each entry's request and resource read
//! by `records::bundle::entries::entry_in` (accepted, or refused with a 4xx), each entry's resource cut out of the
//! body by its span, `search::extract_bytes` of each entry (conditional references resolve
//! against them), `splice::replace_references` rewriting every reference the planner would
//! rewrite, `validate` of the rewritten entry, and `search::parse_query` plus
//! `Filter::matches` for conditional references.
//!
//! Properties: none of these panics; the entries listed are the Bundle's `entry` items; each
//! entry's span parses alone and names its resource type; rewriting changes exactly the
//! `reference` strings it was given (every other `reference` string and the document's
//! shape stay as they were) and leaves valid JSON.

use std::collections::HashMap;

use medledger_fhir::{
    json::{self, Kind, Limits, Value},
    search::{self, IndexValue, ParseOptions},
    splice::replace_references,
    validate,
    validate::ReferenceKind,
};

use super::{bucket, feature};

/// Every `"reference": "<string>"` member of a document, in document order: what
/// `replace_references` looks at.
fn reference_strings(value: &Value<'_>, out: &mut Vec<String>) {
    match &value.kind {
        Kind::Object(members) => {
            for member in members {
                if member.key == "reference"
                    && let Kind::String(text) = &member.value.kind
                {
                    out.push(text.to_string());
                }
                reference_strings(&member.value, out);
            }
        }
        Kind::Array(items) => items.iter().for_each(|item| reference_strings(item, out)),
        _ => {}
    }
}

/// The server reference the planner would write for entry `index`'s reference `kind`.
fn rewritten(index: usize, kind: &ReferenceKind) -> Option<String> {
    let id = hex::encode(medledger_crypto::sha256(&index.to_be_bytes()).0);
    match kind {
        ReferenceKind::Uuid | ReferenceKind::Absolute => Some(format!("Patient/{id}")),
        ReferenceKind::Relative { resource_type, .. } | ReferenceKind::Conditional { resource_type, .. } => {
            Some(format!("{resource_type}/{id}"))
        }
        ReferenceKind::Contained { .. } | ReferenceKind::Oid => None,
    }
}

/// `a=1&b=2` as pairs, without percent-decoding (the planner decodes first; the decoded text
/// is as arbitrary as this).
fn query_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            pair.split_once('=').map_or((pair.to_owned(), String::new()), |(k, v)| (k.to_owned(), v.to_owned()))
        })
        .collect()
}

pub fn fhir_bundle(data: &[u8]) -> u64 {
    let validated = match validate(data) {
        Ok(validated) if validated.resource_type == "Bundle" => validated,
        Ok(other) => return feature(&[b"not a bundle", other.resource_type.as_bytes()]),
        Err(issues) => return feature(&[b"invalid", issues[0].code.as_str().as_bytes()]),
    };
    let root = json::parse(data, &Limits::default()).expect("validate accepted what json::parse refuses");
    let items = root.get("entry").and_then(Value::as_array).map_or(0, <[Value<'_>]>::len);
    assert_eq!(validated.entries.len(), items, "entries listed are the Bundle's entry items");
    let bundle_type = root.get("type").and_then(Value::as_str).unwrap_or("").to_owned();
    let mut values_of_entries: Vec<HashMap<&'static str, Vec<IndexValue>>> = Vec::new();
    let mut rewrites = 0usize;
    let mut conditionals = 0usize;
    let mut refused_entries = 0usize;
    for (index, entry) in validated.entries.iter().enumerate() {
        match medledger_records::bundle::entries::entry_in(index, entry, data, None, None) {
            Ok(parsed) => assert_eq!(parsed.index, index, "an entry keeps its place"),
            Err(refused) => {
                assert!((400..500).contains(&refused.status), "an entry is refused as the client's fault");
                refused_entries += 1;
            }
        }
        let Some(span) = &entry.resource_span else { continue };
        let bytes = &data[span.clone()];
        let resource = json::parse(bytes, &Limits::default()).expect("an entry's span parses alone");
        assert_eq!(resource.get("resourceType").and_then(Value::as_str), entry.resource_type.as_deref());
        if let Ok(extraction) = search::extract_bytes(bytes) {
            let mut values: HashMap<&'static str, Vec<IndexValue>> = HashMap::new();
            for (param, value) in extraction.values {
                values.entry(param).or_default().push(value);
            }
            values_of_entries.push(values);
        }
        let Some(inner) = &entry.resource else { continue };
        let replacements: HashMap<String, String> = inner
            .references
            .iter()
            .filter_map(|site| Some((site.reference.clone(), rewritten(index, &site.kind)?)))
            .collect();
        let out = replace_references(bytes, &replacements).expect("a valid entry is valid JSON");
        if replacements.is_empty() {
            assert_eq!(out, bytes, "nothing to replace, yet the bytes changed");
        }
        let after = json::parse(&out, &Limits::default()).expect("rewriting references broke the JSON");
        let (mut before_refs, mut after_refs) = (Vec::new(), Vec::new());
        reference_strings(&resource, &mut before_refs);
        reference_strings(&after, &mut after_refs);
        let expected: Vec<String> =
            before_refs.iter().map(|r| replacements.get(r).cloned().unwrap_or_else(|| r.clone())).collect();
        assert_eq!(after_refs, expected, "rewriting changed other text than the references it was given");
        rewrites += replacements.len();
        // The rewritten entry is validated again (target types are known only now).
        let _ = validate(&out);
        for site in &inner.references {
            if let ReferenceKind::Conditional { resource_type, query } = &site.kind {
                conditionals += 1;
                let pairs = query_pairs(query);
                if let Ok(parsed) = search::parse_query(resource_type, &pairs, &ParseOptions { lenient: false }) {
                    let empty = Vec::new();
                    for values in &values_of_entries {
                        let _ =
                            parsed.filters.iter().all(|f| f.matches(values.get(f.param.as_str()).unwrap_or(&empty)));
                    }
                }
            }
        }
    }
    // The type as the planner tells them apart (any other code is refused there).
    let planned_as: &[u8] = match bundle_type.as_str() {
        "transaction" => b"transaction",
        "batch" => b"batch",
        _ => b"other",
    };
    feature(&[
        b"bundle",
        planned_as,
        &bucket(items),
        &bucket(rewrites),
        &bucket(conditionals),
        &bucket(refused_entries),
    ])
}
