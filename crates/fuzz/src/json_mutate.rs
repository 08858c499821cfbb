//! JSON-aware mutations for the FHIR targets: byte mutations rarely leave a FHIR resource
//! valid (2% of mutated Bundles still validate), so the parts behind validation — Bundle
//! entries, reference rewriting, search extraction — would see few inputs. These mutations
//! work on the spans `medledger_fhir::json::parse` reports and splice text, so the rest of the
//! document keeps its bytes and the result is usually still JSON, often still FHIR.

use medledger_fhir::json::{self, Kind, Limits, Value};

use crate::engine::Rng;

/// References of every kind, for `reference` and `fullUrl` values.
const REFERENCES: &[&str] = &[
    r#""urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a""#,
    r#""urn:uuid:88f151c0-a954-468a-88bd-5ae15c08e059""#,
    r#""urn:uuid:not-a-uuid""#,
    r#""urn:oid:1.2.840.113619""#,
    r#""Patient/p1""#,
    r#""Patient/0000000000000000000000000000000000000000000000000000000000000001""#,
    r#""Observation/o1/_history/2""#,
    r#""Practitioner?identifier=http://x|2""#,
    r#""Patient?identifier=http://x|1&name=a%20b""#,
    r#""Patient?_id=p1&_count=2""#,
    r#""Patient?""#,
    r#""http://example.org/fhir/Patient/p2""#,
    r#""http://example.org/fhir/Encounter/e1/_history/1""#,
    r#""https://other.example/Patient/9""#,
    r##""#a1""##,
    r##""#""##,
    r#""Organization/org-1""#,
    r#""Patient/p 1""#,
];

/// Values of a Bundle entry's `request`.
const REQUEST_VALUES: &[&str] = &[
    r#""POST""#,
    r#""PUT""#,
    r#""DELETE""#,
    r#""GET""#,
    r#""PATCH""#,
    r#""Patient""#,
    r#""Observation""#,
    r#""/Patient""#,
    r#""Patient/""#,
    r#""Observation/0000000000000000000000000000000000000000000000000000000000000001""#,
    r#""Patient/1/2""#,
    r#""Patient?identifier=http://x|1""#,
    r#""W/\"1\"""#,
    r#""\"2\"""#,
    r#""identifier=http://x|1""#,
    r#""transaction""#,
    r#""batch""#,
];

/// Anything else: codes, dates, ids, escapes, text of unusual shape.
const STRINGS: &[&str] = &[
    r#""final""#,
    r#""2026-02-29""#,
    r#""2026-01-01T00:00:00.000+14:00""#,
    r#""1970""#,
    r#""a1""#,
    r#""""#,
    r#"" ""#,
    r#""\u0000""#,
    r#""\ud83d\ude00""#,
    r#""é\"\\\/\b\f\n\r\t""#,
    r#""http://loinc.org""#,
];

const NUMBERS: &[&str] =
    &["0", "-0", "1", "-1", "5.40", "1e999", "1E-7", "12345678901234567890", "0.000000001", "2147483648"];

/// One value's place in the document.
struct Node {
    start: usize,
    end: usize,
    /// Where its member starts (the key's quote), when it is an object member.
    member_start: Option<usize>,
    /// The member's key, when it is an object member.
    key: Option<String>,
    in_array: bool,
    /// 0 null or boolean, 1 number, 2 string, 3 array, 4 object.
    shape: u8,
}

impl Node {
    /// A string the Bundle planner reads: references, full URLs, an entry's request.
    fn planner_reads(&self) -> bool {
        self.shape == 2
            && matches!(
                self.key.as_deref(),
                Some("reference" | "fullUrl" | "method" | "url" | "ifMatch" | "ifNoneExist" | "type")
            )
    }
}

fn collect(value: &Value<'_>, member: Option<(usize, &str)>, in_array: bool, out: &mut Vec<Node>) {
    if out.len() >= 4096 {
        return;
    }
    let shape = match value.kind {
        Kind::Null | Kind::Bool(_) => 0,
        Kind::Number(_) => 1,
        Kind::String(_) => 2,
        Kind::Array(_) => 3,
        Kind::Object(_) => 4,
    };
    out.push(Node {
        start: value.start,
        end: value.end,
        member_start: member.map(|(start, _)| start),
        key: member.map(|(_, key)| key.to_owned()),
        in_array,
        shape,
    });
    match &value.kind {
        Kind::Object(members) => {
            for m in members {
                collect(&m.value, Some((m.key_start, &m.key)), false, out);
            }
        }
        Kind::Array(items) => {
            for item in items {
                collect(item, None, true, out);
            }
        }
        _ => {}
    }
}

/// One of `nodes` (never the root) for which `wanted` holds, if any.
fn pick<'n>(rng: &mut Rng, nodes: &'n [Node], wanted: impl Fn(&Node) -> bool) -> Option<&'n Node> {
    let fitting: Vec<&Node> = nodes[1..].iter().filter(|n| wanted(n)).collect();
    (!fitting.is_empty()).then(|| fitting[rng.below(fitting.len())])
}

/// A string for the member `key`: references for references, request values for requests,
/// and for references now and then a full URL of the same document (`data`, `nodes`).
fn string_for(rng: &mut Rng, key: Option<&str>, data: &[u8], nodes: &[Node]) -> Vec<u8> {
    let from = |rng: &mut Rng, list: &[&str]| list[rng.below(list.len())].as_bytes().to_vec();
    match key {
        Some("reference" | "fullUrl") if rng.one_in(3) => {
            match pick(rng, nodes, |n| n.key.as_deref() == Some("fullUrl") && n.shape == 2) {
                Some(url) => data[url.start..url.end].to_vec(),
                None => from(rng, REFERENCES),
            }
        }
        Some("reference" | "fullUrl") => from(rng, REFERENCES),
        Some("method" | "url" | "ifMatch" | "ifNoneExist" | "type") => from(rng, REQUEST_VALUES),
        _ => from(rng, STRINGS),
    }
}

/// Applies one JSON-level mutation to `data` if it parses; returns whether it did.
pub fn mutate(rng: &mut Rng, data: &mut Vec<u8>, pool: &[Vec<u8>]) -> bool {
    let Ok(root) = json::parse(data, &Limits::default()) else { return false };
    let mut nodes = Vec::new();
    collect(&root, None, false, &mut nodes);
    // The root itself is never replaced or removed: it is the resource.
    if nodes.len() < 2 {
        return false;
    }
    let (start, end, text): (usize, usize, Vec<u8>) = match rng.below(8) {
        // Another string where a string was, of the kind its member holds; mostly where the
        // planner reads.
        0..=2 => {
            let Some(node) = pick(rng, &nodes, |n| n.planner_reads()).filter(|_| !rng.one_in(3)) else {
                let Some(node) = pick(rng, &nodes, |n| n.shape == 2) else { return false };
                let text = string_for(rng, node.key.as_deref(), data, &nodes);
                return splice(data, node.start, node.end, &text);
            };
            (node.start, node.end, string_for(rng, node.key.as_deref(), data, &nodes))
        }
        // Another number where a number was.
        3 => {
            let Some(node) = pick(rng, &nodes, |n| n.shape == 1) else { return false };
            (node.start, node.end, NUMBERS[rng.below(NUMBERS.len())].as_bytes().to_vec())
        }
        // A copy of another value of this document or of another input, of the same member
        // name if there is one, else of the same shape (an entry's resource in another's
        // place, a reference object in another's).
        4 | 5 => {
            let node = &nodes[1 + rng.below(nodes.len() - 1)];
            let source: &[u8] =
                if rng.one_in(2) { data } else { pool.get(rng.below(pool.len())).map_or(data, Vec::as_slice) };
            let Ok(source_root) = json::parse(source, &Limits::default()) else { return false };
            let mut others = Vec::new();
            collect(&source_root, None, false, &mut others);
            let same_key = |n: &Node| node.key.is_some() && n.key == node.key;
            let other = pick(rng, &others, same_key).or_else(|| pick(rng, &others, |n| n.shape == node.shape));
            let Some(other) = other else { return false };
            (node.start, node.end, source[other.start..other.end].to_vec())
        }
        // An array item twice.
        6 => {
            let Some(node) = pick(rng, &nodes, |n| n.in_array) else { return false };
            let mut text = b",".to_vec();
            text.extend_from_slice(&data[node.start..node.end]);
            (node.end, node.end, text)
        }
        // A member or an item removed, with the comma that separated it; not what the planner
        // reads (a missing request is refused before planning).
        _ => {
            let Some(node) = pick(rng, &nodes, |n| !n.planner_reads()) else { return false };
            let start = node.member_start.unwrap_or(node.start);
            let after = data[node.end..].iter().position(|b| !b.is_ascii_whitespace()).map(|i| node.end + i);
            match after {
                Some(at) if data[at] == b',' => (start, at + 1, Vec::new()),
                // The last one: take the comma before it, if any.
                _ => match data[..start].iter().rposition(|b| !b.is_ascii_whitespace()) {
                    Some(at) if data[at] == b',' => (at, node.end, Vec::new()),
                    _ => (start, node.end, Vec::new()),
                },
            }
        }
    };
    splice(data, start, end, &text)
}

fn splice(data: &mut Vec<u8>, start: usize, end: usize, text: &[u8]) -> bool {
    data.splice(start..end, text.iter().copied());
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutants_of_json_are_mostly_json() {
        let seed = br#"{"resourceType":"Bundle","type":"transaction","entry":[{"fullUrl":"urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a","resource":{"resourceType":"Patient","gender":"female"}},{"resource":{"resourceType":"Observation","subject":{"reference":"Patient/p1"},"valueQuantity":{"value":5.40}}}]}"#;
        let mut rng = Rng::new(5);
        let mut still_json = 0;
        for _ in 0..1000 {
            let mut data = seed.to_vec();
            assert!(mutate(&mut rng, &mut data, &[seed.to_vec()]));
            still_json += usize::from(json::parse(&data, &Limits::default()).is_ok());
        }
        assert!(still_json > 950, "{still_json} of 1000 mutants parse");
    }
}
