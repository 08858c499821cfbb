//! `medledger_fhir::json::parse` and `medledger_fhir::validate` on arbitrary bytes.
//!
//! Properties: neither panics; both are deterministic; every byte span the parser reports cuts
//! out text that parses to the same value (members and items of the top level, with nested
//! spans shifted consistently), which is what splicing and Bundle entries rely on; tighter
//! limits never accept what the defaults refuse; issues are non-empty and capped; what
//! `validate` accepts parses, names its own `resourceType`, has Bundle entry spans that cut
//! out each entry's resource, and references whose kind `parse_reference` agrees with; and a
//! valid resource with the server's id and meta spliced in is still valid, with that id.

use medledger_fhir::{
    Severity, Validated,
    json::{self, Kind, Limits, Value},
    model::Model,
    splice::{ServerMeta, with_server_meta},
    validate,
    validate::{ISSUES_MAX, parse_reference},
};

use super::{bucket, feature};

pub static DICTIONARY: &[&[u8]] = &[
    br#""resourceType":"#,
    br#""Patient""#,
    br#""Observation""#,
    br#""Bundle""#,
    br#""Organization""#,
    br#""entry":[{"#,
    br#""resource":{"#,
    br#""reference":"#,
    br#""fullUrl":"urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a""#,
    br#""request":{"method":"POST","url":"Patient"}"#,
    br#""type":"transaction""#,
    br#""contained":[{"#,
    br#""id":"a1""#,
    br#""meta":{"versionId":"1"}"#,
    br#""extension":[{"url":"http://x","valueString":"y"}]"#,
    br#""valueQuantity":{"value":5.40,"unit":"mmol/L"}"#,
    br#""subject":{"reference":"Patient/p1"}"#,
    br#""Patient?identifier=http://x|1""#,
    br##""#a1""##,
    br#""http://example.org/fhir/Patient/1""#,
    br#""2026-01-01T00:00:00.000Z""#,
    br#""code":{"coding":[{"system":"http://loinc.org","code":"1-8"}]}"#,
    br#""status":"final""#,
    br#""text":{"status":"generated","div":"<div xmlns=\"http://www.w3.org/1999/xhtml\">x</div>"}"#,
    br#"\u0000"#,
    br#"\ud800"#,
    br#"\ud83d\ude00"#,
    br#"\u00e9"#,
    b"1e999",
    b"-0",
    b"0.000",
    b"true",
    b"null",
    b"{}",
    b"[]",
    b"[[[[[[[[",
    b"]",
    b"}",
    b":",
    b",",
];

/// Whether `b`, a re-parse of the text `a` spans, is `a` shifted by `shift` bytes.
fn same_shifted(a: &Value<'_>, b: &Value<'_>, shift: usize) -> bool {
    if a.start != b.start + shift || a.end != b.end + shift {
        return false;
    }
    match (&a.kind, &b.kind) {
        (Kind::Array(x), Kind::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_shifted(x, y, shift))
        }
        (Kind::Object(x), Kind::Object(y)) => {
            x.len() == y.len()
                && x.iter().zip(y).all(|(x, y)| {
                    x.key == y.key && x.key_start == y.key_start + shift && same_shifted(&x.value, &y.value, shift)
                })
        }
        (x, y) => x == y,
    }
}

/// Every span of the top level's members or items cuts out text that parses to that value.
fn check_spans(data: &[u8], root: &Value<'_>) {
    assert!(
        root.start <= root.end && root.end <= data.len(),
        "root span {}..{} of {}",
        root.start,
        root.end,
        data.len()
    );
    let children: Vec<&Value<'_>> = match &root.kind {
        Kind::Object(members) => {
            for m in members {
                assert!(m.key_start < m.value.start && data[m.key_start] == b'"', "key span of {:?}", m.key);
            }
            members.iter().map(|m| &m.value).collect()
        }
        Kind::Array(items) => items.iter().collect(),
        _ => Vec::new(),
    };
    for child in children {
        let text = &data[child.start..child.end];
        let again = json::parse(text, &Limits::default()).expect("a member's span does not parse alone");
        assert!(same_shifted(child, &again, child.start), "a member's span parses to another value");
    }
}

/// The JSON error's kind, without positions.
fn syntax_name(error: &medledger_fhir::Error) -> String {
    let text = match error {
        medledger_fhir::Error::Json { reason, .. } => format!("{reason:?}"),
        other => format!("{other:?}"),
    };
    text.chars().take_while(char::is_ascii_alphanumeric).collect()
}

/// `Observation.component[2].code` → `Observation.component.code`: issue locations as
/// features, without indices.
fn without_indices(expression: &str) -> String {
    let mut out = String::with_capacity(expression.len());
    let mut depth = 0;
    for c in expression.chars() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out
}

/// What must hold of a resource `validate` accepted, and of its Bundle entries.
pub(super) fn check_validated(data: &[u8], validated: &Validated, model: &Model) {
    for site in &validated.references {
        assert_eq!(
            parse_reference(&site.reference, model).as_ref(),
            Ok(&site.kind),
            "reference {:?} at {}",
            site.reference,
            site.path
        );
    }
    assert!(validated.warnings.len() <= ISSUES_MAX + 1, "{} warnings", validated.warnings.len());
    assert!(validated.warnings.iter().all(|w| w.severity > Severity::Error), "an error among the warnings");
    for entry in &validated.entries {
        let Some(span) = &entry.resource_span else {
            assert!(entry.resource.is_none(), "an entry with a resource but no span");
            continue;
        };
        assert!(span.start < span.end && span.end <= data.len(), "entry span {span:?} of {}", data.len());
        let resource = json::parse(&data[span.clone()], &Limits::default()).expect("an entry's span does not parse");
        assert_eq!(resource.get("resourceType").and_then(Value::as_str), entry.resource_type.as_deref());
        if let Some(inner) = &entry.resource {
            assert_eq!(Some(inner.resource_type.as_str()), entry.resource_type.as_deref());
            assert!(inner.warnings.is_empty(), "entries' warnings belong to the Bundle");
            check_validated(data, inner, model);
        }
    }
}

pub fn fhir_validate(data: &[u8]) -> u64 {
    let defaults = Limits::default();
    let parsed = json::parse(data, &defaults);
    assert_eq!(parsed, json::parse(data, &defaults), "json::parse is not deterministic");
    if let Ok(root) = &parsed {
        check_spans(data, root);
    }
    let tight = Limits {
        input_bytes_max: 16 * 1024,
        depth_max: 6,
        string_bytes_max: 200,
        array_len_max: 20,
        object_members_max: 20,
    };
    if json::parse(data, &tight).is_ok() {
        assert!(parsed.is_ok(), "tighter limits accepted what the defaults refuse");
    }
    let validated = validate(data);
    assert_eq!(validated, validate(data), "validate is not deterministic");
    match validated {
        Ok(validated) => {
            let Ok(root) = &parsed else { panic!("validate accepted what json::parse refuses") };
            assert_eq!(root.get("resourceType").and_then(Value::as_str), Some(validated.resource_type.as_str()));
            let model = Model::r4();
            check_validated(data, &validated, model);
            let meta = ServerMeta { id: "fuzz-1", version_id: "7", last_updated: "2026-11-21T10:00:00.000Z" };
            let spliced = with_server_meta(data, &meta).expect("a valid resource is an object");
            match validate(&spliced) {
                Ok(again) => {
                    assert_eq!(again.resource_type, validated.resource_type);
                    assert_eq!(
                        (again.id.as_deref(), again.version_id.as_deref(), again.last_updated.as_deref()),
                        (Some(meta.id), Some(meta.version_id), Some(meta.last_updated))
                    );
                }
                Err(issues) => panic!("a valid resource with the server's id and meta is invalid: {issues:?}"),
            }
            let first_warning =
                validated.warnings.first().map(|w| without_indices(w.expression.as_deref().unwrap_or("")));
            feature(&[
                b"valid",
                validated.resource_type.as_bytes(),
                &bucket(validated.entries.len()),
                &bucket(validated.references.len()),
                first_warning.unwrap_or_default().as_bytes(),
            ])
        }
        Err(issues) => {
            assert!(!issues.is_empty() && issues.len() <= ISSUES_MAX + 1, "{} issues", issues.len());
            if let Err(error) = &parsed {
                assert_eq!(issues.len(), 1, "a JSON error is one issue");
                assert_eq!(issues[0].severity, Severity::Fatal);
                return feature(&[b"json", syntax_name(error).as_bytes()]);
            }
            let first = &issues[0];
            let location = without_indices(first.expression.as_deref().unwrap_or(""));
            feature(&[b"invalid", first.code.as_str().as_bytes(), location.as_bytes()])
        }
    }
}
