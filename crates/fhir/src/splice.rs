//! What a server returns for a stored resource: the bytes the client sent, with the server's
//! `id` and `meta.versionId` / `meta.lastUpdated` set. Done by splicing JSON text, never by
//! re-serializing: every other member keeps its exact bytes (decimals, escapes, key order).

use crate::{
    Error,
    json::{self, Limits},
};

/// The server's view of a stored version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerMeta<'a> {
    /// The logical id.
    pub id: &'a str,
    pub version_id: &'a str,
    /// An R4 `instant` (e.g. `2026-11-21T10:00:00.000Z`).
    pub last_updated: &'a str,
}

/// Returns `resource` (a JSON object) with `resourceType` first, then `id` and `meta` as the
/// server says, then every other top-level member byte for byte in its original order. Members
/// of the client's `meta` other than `versionId` and `lastUpdated` (profile, tag, security,
/// source) are kept, byte for byte, after the server's two.
pub fn with_server_meta(resource: &[u8], meta: &ServerMeta<'_>) -> Result<Vec<u8>, Error> {
    let root = json::parse(resource, &Limits::default())?;
    let members = root.as_object().ok_or(Error::NotAnObject)?;
    let text = |start: usize, end: usize| &resource[start..end];
    let mut out = Vec::with_capacity(resource.len() + 128);
    out.push(b'{');
    if let Some(m) = members.iter().find(|m| m.key == "resourceType") {
        out.extend_from_slice(text(m.key_start, m.value.end));
        out.push(b',');
    }
    out.extend_from_slice(b"\"id\":");
    push_string(&mut out, meta.id);
    out.extend_from_slice(b",\"meta\":{\"versionId\":");
    push_string(&mut out, meta.version_id);
    out.extend_from_slice(b",\"lastUpdated\":");
    push_string(&mut out, meta.last_updated);
    if let Some(client_meta) = members.iter().find(|m| m.key == "meta").and_then(|m| m.value.as_object()) {
        for m in client_meta.iter().filter(|m| m.key != "versionId" && m.key != "lastUpdated") {
            out.push(b',');
            out.extend_from_slice(text(m.key_start, m.value.end));
        }
    }
    out.push(b'}');
    for m in members.iter().filter(|m| !matches!(m.key.as_ref(), "resourceType" | "id" | "meta")) {
        out.push(b',');
        out.extend_from_slice(text(m.key_start, m.value.end));
    }
    out.push(b'}');
    Ok(out)
}

/// Appends `value` as a JSON string. Server values are ids, digits and instants, but escape
/// anyway so nothing can break the document.
fn push_string(out: &mut Vec<u8>, value: &str) {
    out.push(b'"');
    for c in value.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            c if (c as u32) < 0x20 => out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes()),
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out.push(b'"');
}

/// `bytes` with the string value of every `"reference"` member found in `replacements`
/// replaced (a reference to another server's id, a Bundle entry's new id); every other byte
/// is kept.
pub fn replace_references(
    bytes: &[u8],
    replacements: &std::collections::HashMap<String, String>,
) -> Result<Vec<u8>, Error> {
    let value = json::parse(bytes, &Limits::default())?;
    let mut spans: Vec<(std::ops::Range<usize>, &str)> = Vec::new();
    collect_reference_spans(&value, replacements, &mut spans);
    spans.sort_by_key(|(r, _)| r.start);
    let mut out = Vec::with_capacity(bytes.len() + spans.len() * 64);
    let mut at = 0;
    for (span, to) in spans {
        out.extend_from_slice(&bytes[at..span.start]);
        push_string(&mut out, to);
        at = span.end;
    }
    out.extend_from_slice(&bytes[at..]);
    Ok(out)
}

fn collect_reference_spans<'v>(
    value: &json::Value<'_>,
    replacements: &'v std::collections::HashMap<String, String>,
    out: &mut Vec<(std::ops::Range<usize>, &'v str)>,
) {
    match &value.kind {
        json::Kind::Object(members) => {
            for member in members {
                if member.key == "reference"
                    && let json::Kind::String(text) = &member.value.kind
                    && let Some(to) = replacements.get(text.as_ref())
                {
                    out.push((member.value.start..member.value.end, to.as_str()));
                }
                collect_reference_spans(&member.value, replacements, out);
            }
        }
        json::Kind::Array(items) => {
            for item in items {
                collect_reference_spans(item, replacements, out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const META: ServerMeta<'static> =
        ServerMeta { id: "abc", version_id: "2", last_updated: "2026-11-21T10:00:00.000Z" };

    fn splice(input: &str) -> String {
        String::from_utf8(with_server_meta(input.as_bytes(), &META).unwrap()).unwrap()
    }

    #[test]
    fn sets_id_and_meta_and_keeps_every_other_byte() {
        let input = r#"{ "status" : "final", "resourceType": "Observation", "valueQuantity": {"value": 5.40, "unit": "mmol\/L"}, "id": "client-id" }"#;
        assert_eq!(
            splice(input),
            r#"{"resourceType": "Observation","id":"abc","meta":{"versionId":"2","lastUpdated":"2026-11-21T10:00:00.000Z"},"status" : "final","valueQuantity": {"value": 5.40, "unit": "mmol\/L"}}"#
        );
    }

    #[test]
    fn keeps_the_clients_other_meta_members() {
        let input = r##"{"resourceType":"Patient","meta":{"versionId":"9","profile":["http://example.org/p"],"lastUpdated":"2001-01-01T00:00:00Z","source":"#x"}}"##;
        assert_eq!(
            splice(input),
            r##"{"resourceType":"Patient","id":"abc","meta":{"versionId":"2","lastUpdated":"2026-11-21T10:00:00.000Z","profile":["http://example.org/p"],"source":"#x"}}"##
        );
    }

    #[test]
    fn the_result_is_valid_json_and_non_objects_are_refused() {
        let out = with_server_meta(br#"{"resourceType":"Patient","gender":"female"}"#, &META).unwrap();
        assert!(json::parse(&out, &Limits::default()).is_ok());
        assert!(with_server_meta(b"[1]", &META).is_err());
        assert!(with_server_meta(b"{", &META).is_err());
        let tricky = ServerMeta { id: "a\"b\\c\u{1}", ..META };
        let out = with_server_meta(br#"{"resourceType":"Patient"}"#, &tricky).unwrap();
        let parsed = json::parse(&out, &Limits::default()).unwrap();
        assert_eq!(parsed.get("id").and_then(|v| v.as_str()), Some("a\"b\\c\u{1}"));
    }

    #[test]
    fn replace_references_changes_only_the_named_reference_strings() {
        let input = br#"{"resourceType":"Observation","subject":{"reference":"urn:uuid:1"},"note":[{"text":"urn:uuid:1"}],"valueQuantity":{"value":1.50},"hasMember":[{"reference":"Observation/9"},{"reference":"urn:uuid:1"}]}"#;
        let mut map = std::collections::HashMap::new();
        map.insert("urn:uuid:1".to_owned(), "Patient/ab".to_owned());
        let out = replace_references(input, &map).unwrap();
        let expected = br#"{"resourceType":"Observation","subject":{"reference":"Patient/ab"},"note":[{"text":"urn:uuid:1"}],"valueQuantity":{"value":1.50},"hasMember":[{"reference":"Observation/9"},{"reference":"Patient/ab"}]}"#;
        assert_eq!(String::from_utf8(out).unwrap(), String::from_utf8(expected.to_vec()).unwrap());
        assert!(replace_references(b"{", &map).is_err());
    }
}
