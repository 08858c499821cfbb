//! What a resource yields for a search parameter, and the normalisations shared by index
//! values and query values (so both sides are compared in the same form).

use crate::model::Model;

/// One index value of one search parameter.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum IndexValue {
    /// From a Coding, CodeableConcept (one per coding), Identifier (`system`, `value`), code,
    /// string, uri, boolean (`true`/`false`) or ContactPoint (its `value`, no system). Codes
    /// are compared exactly: case matters in most code systems.
    Token { system: Option<String>, code: String },
    /// From a string, or each part of a HumanName (family, given, prefix, suffix, text) or an
    /// Address (line, city, district, state, postalCode, country, text). `normalized` is what
    /// default and `:contains` searches compare ([`normalize`]); `exact` is the text as
    /// written, for `:exact`.
    String { normalized: String, exact: String },
    /// A closed interval of UTC milliseconds since the Unix epoch, both ends included: the
    /// range a date, dateTime or instant implies (see [`super::date::parse_range`]), or a
    /// Period (`i64::MIN` / `i64::MAX` for a missing start / end).
    Date { low_ms: i64, high_ms: i64 },
    /// A reference by type and id. `resource_type` is `None` only for query values that name
    /// no type (`subject=abc` on a parameter with several target types).
    Reference { resource_type: Option<String>, id: String },
}

impl IndexValue {
    pub fn token(system: Option<&str>, code: &str) -> IndexValue {
        IndexValue::Token { system: system.map(str::to_string), code: code.to_string() }
    }

    pub fn string(text: &str) -> IndexValue {
        IndexValue::String { normalized: normalize(text), exact: text.to_string() }
    }

    pub fn reference(resource_type: &str, id: &str) -> IndexValue {
        IndexValue::Reference { resource_type: Some(resource_type.to_string()), id: id.to_string() }
    }
}

/// Lowercases, folds the accents of Latin letters (`é` → `e`, `ß` → `ss`, combining marks
/// dropped) and collapses runs of whitespace into one space, trimming both ends. FHIR string
/// search is "case- and accent-insensitive" without saying how; this covers Latin-script
/// names, which is what our data holds, without a Unicode normalisation table.
pub fn normalize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut pending_space = false;
    for c in text.chars() {
        if c.is_whitespace() {
            pending_space = !out.is_empty();
            continue;
        }
        for lower in c.to_lowercase() {
            if pending_space {
                out.push(' ');
                pending_space = false;
            }
            fold(lower, &mut out);
        }
    }
    out
}

/// Base letters of U+00E0..=U+00FF (lowercase Latin-1); `*` marks characters handled apart.
const LATIN1: &[u8; 32] = b"aaaaaa*ceeeeiiiidnooooo*ouuuuy*y";
/// Base letters of U+0100..=U+017F (Latin Extended-A, upper and lower case interleaved).
const LATIN_EXTENDED_A: &[u8; 128] =
    b"aaaaaaccccccccddddeeeeeeeeeegggggggghhhhiiiiiiiiii**jjkkkllllllllllnnnnnnnnnoooooo**rrrrrrssssssssttttttuuuuuuuuuuuuwwyyyzzzzzzs";

fn fold(c: char, out: &mut String) {
    let code = u32::from(c);
    match c {
        '\u{300}'..='\u{36f}' => {} // combining diacritical marks
        'ß' => out.push_str("ss"),
        'æ' => out.push_str("ae"),
        'þ' => out.push_str("th"),
        'ĳ' | 'Ĳ' => out.push_str("ij"),
        'œ' | 'Œ' => out.push_str("oe"),
        '\u{e0}'..='\u{ff}' if LATIN1[(code - 0xe0) as usize] != b'*' => {
            out.push(char::from(LATIN1[(code - 0xe0) as usize]));
        }
        '\u{100}'..='\u{17f}' if LATIN_EXTENDED_A[(code - 0x100) as usize] != b'*' => {
            out.push(char::from(LATIN_EXTENDED_A[(code - 0x100) as usize]));
        }
        _ => out.push(c),
    }
}

/// The type and id a reference string names, for indexing and for query values:
/// `Type/id` and `Type/id/_history/v` (version dropped), and absolute URLs by their last two
/// path segments (`https://other.example/fhir/Patient/7` → `Patient`, `7`). Contained
/// (`#id`), `urn:uuid:` / `urn:oid:` and conditional (`Type?…`) references name nothing the
/// index can hold: the API resolves the latter two before a resource is stored.
pub fn parse_reference(reference: &str) -> Option<(&str, &str)> {
    if reference.starts_with('#') || reference.starts_with("urn:") || reference.contains('?') {
        return None;
    }
    let path = match reference.split_once("://") {
        // Absolute: drop the scheme and host, and any fragment.
        Some((_, rest)) => rest.split_once('/')?.1.split('#').next()?,
        None => reference,
    };
    let path = match path.split_once("/_history/") {
        Some((before, _version)) => before,
        None => path,
    };
    let mut segments = path.rsplit('/');
    let id = segments.next()?;
    let resource_type = segments.next()?;
    if reference.split_once("://").is_none() && segments.next().is_some() {
        return None;
    }
    if !is_id(id) || !Model::r4().is_r4_resource_type(resource_type) {
        return None;
    }
    Some((resource_type, id))
}

/// R4 `id`: 1 to 64 of `[A-Za-z0-9-.]`.
pub fn is_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_case_accents_and_whitespace() {
        assert_eq!(normalize("  Müller-Lüdenscheidt  "), "muller-ludenscheidt");
        assert_eq!(normalize("JOSÉ\t  María\nÑúñez"), "jose maria nunez");
        assert_eq!(normalize("Straße Œuvre Ærø"), "strasse oeuvre aero");
        assert_eq!(normalize("Łukasz Dvořák Şahin İlker"), "lukasz dvorak sahin ilker");
        // Decomposed input: e + combining acute.
        assert_eq!(normalize("Rene\u{301}e"), "renee");
        assert_eq!(normalize("中文 名字"), "中文 名字");
        assert_eq!(normalize(" \t "), "");
        assert_eq!(normalize("×÷"), "×÷");
    }

    #[test]
    fn latin_tables_are_aligned() {
        assert_eq!(normalize("àåçèìðñòøùýÿ"), "aaceidnoouyy");
        assert_eq!(normalize("ĀćĎēĝĥĩĵķĸĺŉōŕśţũŵŷŹžſ"), "acdeghijkklnorstuwyzzs");
    }

    #[test]
    fn parses_references() {
        assert_eq!(parse_reference("Patient/example"), Some(("Patient", "example")));
        assert_eq!(parse_reference("Patient/example/_history/2"), Some(("Patient", "example")));
        assert_eq!(parse_reference("http://x.org/fhir/Observation/o1"), Some(("Observation", "o1")));
        assert_eq!(parse_reference("https://x.org/fhir/Observation/o1/_history/3"), Some(("Observation", "o1")));
        assert_eq!(parse_reference("https://x.org/Observation/o1#frag"), Some(("Observation", "o1")));
        for none in [
            "#p1",
            "urn:uuid:3f0f4f0e-4c7b-4b0e-8d2f-0a1b2c3d4e5f",
            "Patient?identifier=x",
            "example",
            "a/Patient/x",
            "Nonsense/x",
            "Patient/",
            "Patient/a b",
            "http://x.org",
            "",
        ] {
            assert_eq!(parse_reference(none), None, "{none:?}");
        }
    }
}
