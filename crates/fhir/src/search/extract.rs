//! Index values of a resource: every search parameter's expression evaluated on the parsed
//! resource, and each element found converted by its FHIR type into [`IndexValue`]s.

use super::date::parse_range;
use super::fhirpath::{self, Node};
use super::params::{ParamType, SearchParams};
use super::value::{IndexValue, parse_reference};
use crate::json::{self, Kind, Limits, Value};

/// Most index values taken from one resource; a resource with more (a huge code list) is
/// indexed by its first values only, and [`Extraction::truncated`] says so.
pub const INDEX_VALUES_MAX: usize = 1_000;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Extraction {
    /// `(parameter code, value)` in table order, then document order; duplicates removed.
    pub values: Vec<(&'static str, IndexValue)>,
    /// Whether [`INDEX_VALUES_MAX`] cut the list short.
    pub truncated: bool,
}

impl Extraction {
    /// The values of one parameter.
    pub fn of<'e>(&'e self, param: &'e str) -> impl Iterator<Item = &'e IndexValue> + 'e {
        self.values.iter().filter(move |(code, _)| *code == param).map(|(_, value)| value)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ExtractError {
    #[error(transparent)]
    Json(#[from] crate::Error),
    #[error("the resource has no resourceType")]
    NoResourceType,
    #[error("{0} is not a searchable resource type")]
    NotSearchable(String),
}

/// Parses `bytes` and extracts the index values of the resource type it declares.
pub fn extract_bytes(bytes: &[u8]) -> Result<Extraction, ExtractError> {
    let resource = json::parse(bytes, &Limits::default())?;
    let resource_type = resource.get("resourceType").and_then(Value::as_str).ok_or(ExtractError::NoResourceType)?;
    if !SearchParams::r4().is_searchable(resource_type) {
        return Err(ExtractError::NotSearchable(resource_type.to_string()));
    }
    Ok(extract(&resource, resource_type))
}

/// The index values of `resource` for every parameter of `resource_type` except the
/// server-managed `_id` and `_lastUpdated`. Elements of an unexpected shape (input that
/// skipped validation) yield nothing rather than an error; an unsearchable type yields
/// nothing.
pub fn extract(resource: &Value<'_>, resource_type: &str) -> Extraction {
    let table: &'static SearchParams = SearchParams::r4();
    let mut extraction = Extraction::default();
    let mut nodes = Vec::new();
    for param in table.extracted(resource_type) {
        nodes.clear();
        for path in &param.paths {
            fhirpath::evaluate(path, resource, INDEX_VALUES_MAX, &mut nodes);
        }
        let mut values = Vec::new();
        for node in &nodes {
            convert(param.param_type, node, &mut values);
        }
        let first_of_param = extraction.values.len();
        for value in values {
            if extraction.values[first_of_param..].iter().any(|(_, v)| *v == value) {
                continue;
            }
            if extraction.values.len() == INDEX_VALUES_MAX {
                extraction.truncated = true;
                return extraction;
            }
            extraction.values.push((param.code.as_str(), value));
        }
    }
    extraction
}

fn str_of<'v>(value: &'v Value<'_>, key: &str) -> Option<&'v str> {
    value.get(key).and_then(Value::as_str)
}

/// The strings of a member that is a string or an array of strings.
fn strings_of<'v>(value: &'v Value<'_>, key: &str) -> Vec<&'v str> {
    match value.get(key).map(|v| &v.kind) {
        Some(Kind::String(s)) => vec![s],
        Some(Kind::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

fn convert(param_type: ParamType, node: &Node<'_, '_, '_>, out: &mut Vec<IndexValue>) {
    let value = node.value;
    match param_type {
        ParamType::Token => token(node.type_code, value, out),
        ParamType::String => string(node.type_code, value, out),
        ParamType::Date => date(node.type_code, value, out),
        ParamType::Reference => {
            if let Some((resource_type, id)) = str_of(value, "reference").and_then(parse_reference) {
                out.push(IndexValue::reference(resource_type, id));
            }
        }
    }
}

fn coding(value: &Value<'_>, out: &mut Vec<IndexValue>) {
    if let Some(code) = str_of(value, "code") {
        out.push(IndexValue::token(str_of(value, "system"), code));
    }
}

fn token(type_code: &str, value: &Value<'_>, out: &mut Vec<IndexValue>) {
    match (type_code, &value.kind) {
        ("Coding", _) => coding(value, out),
        ("CodeableConcept", _) => {
            for c in value.get("coding").and_then(Value::as_array).unwrap_or_default() {
                coding(c, out);
            }
        }
        ("Identifier", _) => {
            if let Some(code) = str_of(value, "value") {
                out.push(IndexValue::token(str_of(value, "system"), code));
            }
        }
        ("ContactPoint", _) => {
            if let Some(code) = str_of(value, "value") {
                out.push(IndexValue::token(None, code));
            }
        }
        ("boolean", Kind::Bool(b)) => out.push(IndexValue::token(None, if *b { "true" } else { "false" })),
        ("code" | "string" | "id" | "uri" | "url" | "canonical" | "oid" | "uuid", Kind::String(s)) => {
            out.push(IndexValue::token(None, s));
        }
        _ => {}
    }
}

fn string(type_code: &str, value: &Value<'_>, out: &mut Vec<IndexValue>) {
    let parts: Vec<&str> = match (type_code, &value.kind) {
        ("HumanName", _) => {
            ["family", "given", "text", "prefix", "suffix"].iter().flat_map(|k| strings_of(value, k)).collect()
        }
        ("Address", _) => ["line", "city", "district", "state", "postalCode", "country", "text"]
            .iter()
            .flat_map(|k| strings_of(value, k))
            .collect(),
        (_, Kind::String(s)) => vec![s],
        _ => Vec::new(),
    };
    out.extend(parts.into_iter().filter(|s| !s.trim().is_empty()).map(IndexValue::string));
}

fn date(type_code: &str, value: &Value<'_>, out: &mut Vec<IndexValue>) {
    match (type_code, &value.kind) {
        ("date" | "dateTime" | "instant", Kind::String(s)) => {
            if let Some((low_ms, high_ms)) = parse_range(s) {
                out.push(IndexValue::Date { low_ms, high_ms });
            }
        }
        ("Period", _) => period(value, out),
        // A Timing covers its events and the bounds of its repeat (search.html#date).
        ("Timing", _) => {
            for event in strings_of(value, "event") {
                if let Some((low_ms, high_ms)) = parse_range(event) {
                    out.push(IndexValue::Date { low_ms, high_ms });
                }
            }
            if let Some(bounds) = value.get("repeat").and_then(|r| r.get("boundsPeriod")) {
                period(bounds, out);
            }
        }
        _ => {}
    }
}

/// A Period from the start of its start to the end of its end; a missing end means ongoing.
fn period(value: &Value<'_>, out: &mut Vec<IndexValue>) {
    let bound = |key: &str| -> Option<Option<(i64, i64)>> {
        match str_of(value, key) {
            None => Some(None),
            Some(text) => parse_range(text).map(Some),
        }
    };
    // An unreadable bound makes the whole Period unreadable, rather than silently open.
    let (Some(start), Some(end)) = (bound("start"), bound("end")) else { return };
    if start.is_none() && end.is_none() {
        return;
    }
    let low_ms = start.map_or(i64::MIN, |(low, _)| low);
    let high_ms = end.map_or(i64::MAX, |(_, high)| high);
    out.push(IndexValue::Date { low_ms, high_ms: high_ms.max(low_ms) });
}
