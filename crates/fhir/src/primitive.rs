//! FHIR R4 primitive types: the JSON representation and the lexical rules of
//! datatypes.html#primitive, written as small hand matchers equivalent to the spec's regexes
//! (no regex engine: each check is a single linear pass).

use crate::json::{Kind, Value};

/// Checks a primitive JSON value against its FHIR type; the error is a diagnostic sentence.
pub fn check(type_code: &str, value: &Value<'_>) -> Result<(), String> {
    match (type_code, &value.kind) {
        ("boolean", Kind::Bool(_)) => Ok(()),
        ("integer", Kind::Number(n)) => integer(n, i64::from(i32::MIN)),
        ("unsignedInt", Kind::Number(n)) => integer(n, 0),
        ("positiveInt", Kind::Number(n)) => integer(n, 1),
        // The JSON grammar already equals the R4 decimal regex; the lexeme is kept as is.
        ("decimal", Kind::Number(_)) => Ok(()),
        (_, Kind::String(s)) if is_string_type(type_code) => string(type_code, s),
        _ => Err(format!("expected {} for a FHIR {type_code}, found {}", json_type_of(type_code), value.type_name())),
    }
}

fn is_string_type(type_code: &str) -> bool {
    !matches!(type_code, "boolean" | "integer" | "unsignedInt" | "positiveInt" | "decimal")
}

fn json_type_of(type_code: &str) -> &'static str {
    match type_code {
        "boolean" => "a JSON boolean",
        "integer" | "unsignedInt" | "positiveInt" | "decimal" => "a JSON number",
        _ => "a JSON string",
    }
}

/// integer: `-?([0]|([1-9][0-9]*))` within 32 bits; unsigned and positive raise the floor.
fn integer(lexeme: &str, minimum: i64) -> Result<(), String> {
    let digits = lexeme.strip_prefix('-').unwrap_or(lexeme);
    let well_formed =
        !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) && (digits == "0" || !digits.starts_with('0'));
    if !well_formed {
        return Err(format!("{lexeme} is not an integer"));
    }
    // At most 11 characters can be in range; longer lexemes are rejected before parsing.
    let parsed = if lexeme.len() <= 11 { lexeme.parse::<i64>().ok() } else { None };
    match parsed {
        Some(v) if v >= minimum && v <= i64::from(i32::MAX) => Ok(()),
        _ => Err(format!("{lexeme} is out of range (minimum {minimum}, maximum {})", i32::MAX)),
    }
}

fn string(type_code: &str, s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err(format!("empty {type_code}: an element must have a value or be absent"));
    }
    let ok = match type_code {
        "string" | "markdown" => s.chars().all(|c| c >= ' ' || matches!(c, '\t' | '\r' | '\n')),
        "code" => is_code(s),
        "id" => s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'),
        "uri" | "url" | "canonical" => !s.chars().any(char::is_whitespace),
        "oid" => is_oid(s),
        "uuid" => is_uuid(s),
        "base64Binary" => is_base64(s),
        "instant" => is_date_time(s, true),
        "date" => is_date(s),
        "dateTime" => is_date_time(s, false),
        "time" => is_time(s),
        "xhtml" => is_xhtml_div(s),
        _ => return Err(format!("unknown primitive type {type_code}")),
    };
    if ok { Ok(()) } else { Err(format!("{s:?} is not a valid {type_code}")) }
}

/// code: `[^\s]+(\s[^\s]+)*` — no leading, trailing or doubled whitespace.
fn is_code(s: &str) -> bool {
    s.split(' ').all(|token| !token.is_empty() && !token.chars().any(char::is_whitespace))
}

/// oid: `urn:oid:[0-2](\.(0|[1-9][0-9]*))+`
pub fn is_oid(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("urn:oid:") else { return false };
    let mut arcs = rest.split('.');
    let first_ok = matches!(arcs.next(), Some("0" | "1" | "2"));
    let mut count = 0;
    let rest_ok = arcs.all(|arc| {
        count += 1;
        !arc.is_empty() && arc.bytes().all(|b| b.is_ascii_digit()) && (arc == "0" || !arc.starts_with('0'))
    });
    first_ok && rest_ok && count > 0
}

/// uuid: `urn:uuid:` + lowercase 8-4-4-4-12 hex.
pub fn is_uuid(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("urn:uuid:") else { return false };
    let groups: Vec<&str> = rest.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, len)| g.len() == len && g.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
}

/// base64Binary: `(\s*([0-9a-zA-Z\+/=]){4}\s*)+`
fn is_base64(s: &str) -> bool {
    let mut count = 0usize;
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=' {
            count += 1;
        } else if !b.is_ascii_whitespace() {
            return false;
        }
    }
    count > 0 && count.is_multiple_of(4)
}

fn digits_of(s: &[u8], len: usize) -> Option<u32> {
    let part = s.get(..len)?;
    if !part.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(part.iter().fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0')))
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        2 if (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Parses `YYYY(-MM(-DD)?)?` at the start of `s`; returns the bytes consumed and the number
/// of components present. Years run 0001-9999 as in the R4 regex.
fn date_prefix(s: &[u8]) -> Option<(usize, u8)> {
    let year = digits_of(s, 4)?;
    if year == 0 {
        return None;
    }
    if s.get(4) != Some(&b'-') {
        return Some((4, 1));
    }
    let month = digits_of(&s[5..], 2)?;
    if !(1..=12).contains(&month) {
        return None;
    }
    if s.get(7) != Some(&b'-') {
        return Some((7, 2));
    }
    let day = digits_of(&s[8..], 2)?;
    if day == 0 || day > days_in_month(year, month) {
        return None;
    }
    Some((10, 3))
}

/// date: `YYYY`, `YYYY-MM` or `YYYY-MM-DD`.
fn is_date(s: &str) -> bool {
    matches!(date_prefix(s.as_bytes()), Some((len, _)) if len == s.len())
}

/// `hh:mm:ss(.f+)?` at the start of `s`; returns the bytes consumed.
fn time_prefix(s: &[u8]) -> Option<usize> {
    let hour = digits_of(s, 2)?;
    let minute = digits_of(s.get(3..)?, 2)?;
    let second = digits_of(s.get(6..)?, 2)?;
    if s[2] != b':' || s[5] != b':' || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut len = 8;
    if s.get(8) == Some(&b'.') {
        let fraction = s[9..].iter().take_while(|b| b.is_ascii_digit()).count();
        if fraction == 0 {
            return None;
        }
        len = 9 + fraction;
    }
    Some(len)
}

/// time: `hh:mm:ss(.f+)?` with no time zone.
fn is_time(s: &str) -> bool {
    time_prefix(s.as_bytes()) == Some(s.len())
}

/// `Z` or `(+|-)hh:mm` with hours 00-13 (any minutes) or exactly 14:00.
fn is_zone(s: &[u8]) -> bool {
    match s {
        b"Z" => true,
        [b'+' | b'-', rest @ ..] if rest.len() == 5 && rest[2] == b':' => {
            match (digits_of(rest, 2), digits_of(&rest[3..], 2)) {
                (Some(hour), Some(minute)) => (hour <= 13 && minute <= 59) || (hour == 14 && minute == 0),
                _ => false,
            }
        }
        _ => false,
    }
}

/// dateTime: a date of any precision, or a full date with `T`, time and zone; instant
/// requires the full form.
fn is_date_time(s: &str, instant: bool) -> bool {
    let bytes = s.as_bytes();
    let Some((date_len, components)) = date_prefix(bytes) else { return false };
    if date_len == bytes.len() {
        return !instant;
    }
    if components != 3 || bytes[date_len] != b'T' {
        return false;
    }
    let rest = &bytes[date_len + 1..];
    let Some(time_len) = time_prefix(rest) else { return false };
    is_zone(&rest[time_len..])
}

/// xhtml in JSON: the narrative `div` element as a string. Full XHTML validation is out of
/// scope; the spec requires the root to be a `div` in the XHTML namespace.
fn is_xhtml_div(s: &str) -> bool {
    let s = s.trim();
    (s.starts_with("<div ") || s.starts_with("<div>") || s.starts_with("<div/"))
        && s.contains("http://www.w3.org/1999/xhtml")
        && (s.ends_with("</div>") || s.ends_with("/>"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::{Limits, parse};

    fn check_json(type_code: &str, json: &str) -> bool {
        let value = parse(json.as_bytes(), &Limits::default()).unwrap();
        check(type_code, &value).is_ok()
    }

    #[test]
    fn lexical_rules() {
        let cases: &[(&str, &str, bool)] = &[
            ("boolean", "true", true),
            ("boolean", "\"true\"", false),
            ("integer", "0", true),
            ("integer", "-0", true),
            ("integer", "-2147483648", true),
            ("integer", "2147483647", true),
            ("integer", "2147483648", false),
            ("integer", "1.0", false),
            ("integer", "1e2", false),
            ("integer", "\"1\"", false),
            ("unsignedInt", "0", true),
            ("unsignedInt", "-1", false),
            ("positiveInt", "0", false),
            ("positiveInt", "1", true),
            ("positiveInt", "99999999999999999999", false),
            ("decimal", "5.40", true),
            ("decimal", "-1.5e-10", true),
            ("decimal", "\"5.4\"", false),
            ("string", "\"x\"", true),
            ("string", "\"\"", false),
            ("string", "\"a\\tb\\nc\"", true),
            ("string", "\"a\\u0001b\"", false),
            ("code", "\"final\"", true),
            ("code", "\"a b\"", true),
            ("code", "\"a  b\"", false),
            ("code", "\" a\"", false),
            ("code", "\"a \"", false),
            ("id", "\"abc-12.3\"", true),
            ("id", "\"abc_1\"", false),
            ("id", &format!("\"{}\"", "a".repeat(65)), false),
            ("uri", "\"http://x/y\"", true),
            ("uri", "\"http://x/ y\"", false),
            ("oid", "\"urn:oid:1.2.3\"", true),
            ("oid", "\"urn:oid:3.2\"", false),
            ("oid", "\"urn:oid:1.02\"", false),
            ("oid", "\"urn:oid:1\"", false),
            ("uuid", "\"urn:uuid:c757873d-ec9a-4326-a141-556f43239520\"", true),
            ("uuid", "\"urn:uuid:C757873D-ec9a-4326-a141-556f43239520\"", false),
            ("uuid", "\"c757873d-ec9a-4326-a141-556f43239520\"", false),
            ("base64Binary", "\"aGVsbG8=\"", true),
            ("base64Binary", "\"aGVs bG8=\"", true),
            ("base64Binary", "\"aGVsbG8\"", false),
            ("base64Binary", "\"aGV*bG8=\"", false),
            ("date", "\"2024\"", true),
            ("date", "\"2024-02\"", true),
            ("date", "\"2024-02-29\"", true),
            ("date", "\"2023-02-29\"", false),
            ("date", "\"2024-13\"", false),
            ("date", "\"0000\"", false),
            ("date", "\"2024-1-01\"", false),
            ("date", "\"2024-01-01T00:00:00Z\"", false),
            ("dateTime", "\"2024\"", true),
            ("dateTime", "\"2024-01-31T23:59:60.123+14:00\"", true),
            ("dateTime", "\"2024-01-31T23:59:59-05:30\"", true),
            ("dateTime", "\"2024-01-31T23:59:59\"", false),
            ("dateTime", "\"2024-01-31T24:00:00Z\"", false),
            ("dateTime", "\"2024-01-31T10:00Z\"", false),
            ("dateTime", "\"2024-01T10:00:00Z\"", false),
            ("dateTime", "\"2024-01-31T10:00:00+14:30\"", false),
            ("instant", "\"2024-01-31T10:00:00.5Z\"", true),
            ("instant", "\"2024-01-31\"", false),
            ("time", "\"10:00:00\"", true),
            ("time", "\"10:00\"", false),
            ("time", "\"10:00:00Z\"", false),
            ("xhtml", "\"<div xmlns=\\\"http://www.w3.org/1999/xhtml\\\">x</div>\"", true),
            ("xhtml", "\"<p>x</p>\"", false),
        ];
        for (type_code, json, expected) in cases {
            assert_eq!(check_json(type_code, json), *expected, "{type_code} {json}");
        }
    }
}
