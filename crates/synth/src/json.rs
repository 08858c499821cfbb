//! A minimal JSON tree and compact writer.
//!
//! Output bytes must depend on nothing but the seed. `serde_json` would make them depend on
//! which features other crates in the build turn on (`preserve_order` changes key order) and
//! on float formatting, so resources are written here: keys in insertion order (FHIR's
//! customary order, `resourceType` first) and decimals as fixed-point numbers that keep their
//! clinical precision (`13.0`, not `13`).

use std::borrow::Cow;
use std::io::Write as _;

/// A decimal with a fixed number of fraction digits: `units` × 10^-`scale`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Decimal {
    pub(crate) units: i64,
    pub(crate) scale: u32,
}

impl Decimal {
    pub(crate) fn new(units: i64, scale: u32) -> Self {
        Self { units, scale }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Json {
    /// Borrowed when static, so vocabulary strings are never copied.
    Str(Cow<'static, str>),
    Int(i64),
    Dec(Decimal),
    Bool(bool),
    Arr(Vec<Json>),
    Obj(Vec<(&'static str, Json)>),
}

impl From<&'static str> for Json {
    fn from(value: &'static str) -> Self {
        Json::Str(Cow::Borrowed(value))
    }
}

impl From<String> for Json {
    fn from(value: String) -> Self {
        Json::Str(Cow::Owned(value))
    }
}

impl From<&String> for Json {
    fn from(value: &String) -> Self {
        Json::Str(Cow::Owned(value.clone()))
    }
}

impl From<i64> for Json {
    fn from(value: i64) -> Self {
        Json::Int(value)
    }
}

impl From<Decimal> for Json {
    fn from(value: Decimal) -> Self {
        Json::Dec(value)
    }
}

impl From<bool> for Json {
    fn from(value: bool) -> Self {
        Json::Bool(value)
    }
}

impl From<Vec<Json>> for Json {
    fn from(value: Vec<Json>) -> Self {
        Json::Arr(value)
    }
}

/// `obj! { "key": value, ... }` builds an object whose keys keep the order written.
macro_rules! obj {
    ($($key:literal : $value:expr),* $(,)?) => {
        $crate::json::Json::Obj(vec![$(($key, $crate::json::Json::from($value))),*])
    };
}

/// `arr![a, b, ...]` builds an array.
macro_rules! arr {
    ($($value:expr),* $(,)?) => {
        $crate::json::Json::Arr(vec![$($crate::json::Json::from($value)),*])
    };
}

pub(crate) use {arr, obj};

impl Json {
    /// Appends `(key, value)` to an object; used for optional elements.
    pub(crate) fn push(&mut self, key: &'static str, value: impl Into<Json>) {
        match self {
            Json::Obj(fields) => fields.push((key, value.into())),
            _ => unreachable!("push is only called on objects built with obj!"),
        }
    }

    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1024);
        self.write(&mut out);
        out
    }

    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Json::Str(text) => write_string(out, text),
            Json::Int(value) => {
                let _ = write!(out, "{value}");
            }
            Json::Dec(decimal) => write_decimal(out, *decimal),
            Json::Bool(value) => out.extend_from_slice(if *value { b"true" } else { b"false" }),
            Json::Arr(items) => {
                out.push(b'[');
                for (idx, item) in items.iter().enumerate() {
                    if idx > 0 {
                        out.push(b',');
                    }
                    item.write(out);
                }
                out.push(b']');
            }
            Json::Obj(fields) => {
                out.push(b'{');
                for (idx, (key, value)) in fields.iter().enumerate() {
                    if idx > 0 {
                        out.push(b',');
                    }
                    write_string(out, key);
                    out.push(b':');
                    value.write(out);
                }
                out.push(b'}');
            }
        }
    }
}

fn write_decimal(out: &mut Vec<u8>, decimal: Decimal) {
    let divisor = 10u64.pow(decimal.scale);
    let magnitude = decimal.units.unsigned_abs();
    if decimal.units < 0 {
        out.push(b'-');
    }
    let _ = write!(out, "{}", magnitude / divisor);
    if decimal.scale > 0 {
        let _ = write!(out, ".{:0width$}", magnitude % divisor, width = decimal.scale as usize);
    }
}

fn write_string(out: &mut Vec<u8>, text: &str) {
    out.push(b'"');
    for ch in text.chars() {
        match ch {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            ch if u32::from(ch) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(ch));
            }
            ch => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_compact_json_in_insertion_order() {
        let value = obj! {
            "resourceType": "Observation",
            "b": 1i64,
            "a": arr![Decimal::new(130, 1), Decimal::new(-5, 2), Decimal::new(7, 0), true],
            "text": "quote \" slash \\ tab \t bell \u{7}",
        };
        assert_eq!(
            String::from_utf8(value.to_bytes()).unwrap(),
            concat!(
                r#"{"resourceType":"Observation","b":1,"a":[13.0,-0.05,7,true],"#,
                r#""text":"quote \" slash \\ tab \t bell \u0007"}"#,
            )
        );
        let parsed: serde_json::Value = serde_json::from_slice(&value.to_bytes()).unwrap();
        assert_eq!(parsed["text"], "quote \" slash \\ tab \t bell \u{7}");
    }
}
