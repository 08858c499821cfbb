//! A strict, bounded RFC 8259 JSON parser producing a borrowed tree.
//!
//! FHIR servers must keep what clients sent byte for byte (decimals such as `5.40` are
//! significant, and the stored bytes are what gets signed), so this parser never converts
//! numbers: a number is its lexeme. Object members keep their order and their byte positions,
//! so callers can cut out a sub-document (a Bundle entry's resource) without re-serializing.
//!
//! Everything an adversary controls is bounded by [`Limits`]; nesting is bounded so the
//! recursive descent cannot exhaust the stack, and every byte is examined a constant number
//! of times (duplicate-key detection uses a hash set for larger objects).

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

use crate::Error;

/// Upper bounds on a JSON document. Defaults suit FHIR resources and transaction Bundles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted document.
    pub input_bytes_max: usize,
    /// Deepest nesting of arrays and objects (the top-level value is depth 1).
    pub depth_max: usize,
    /// Longest string (key or value) after unescaping, in bytes.
    pub string_bytes_max: usize,
    /// Most elements in one array.
    pub array_len_max: usize,
    /// Most members in one object.
    pub object_members_max: usize,
}

impl Limits {
    pub const INPUT_BYTES_MAX_DEFAULT: usize = 32 * 1024 * 1024;
    pub const DEPTH_MAX_DEFAULT: usize = 64;
    pub const STRING_BYTES_MAX_DEFAULT: usize = 16 * 1024 * 1024;
    pub const ARRAY_LEN_MAX_DEFAULT: usize = 100_000;
    pub const OBJECT_MEMBERS_MAX_DEFAULT: usize = 1_000;
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            input_bytes_max: Self::INPUT_BYTES_MAX_DEFAULT,
            depth_max: Self::DEPTH_MAX_DEFAULT,
            string_bytes_max: Self::STRING_BYTES_MAX_DEFAULT,
            array_len_max: Self::ARRAY_LEN_MAX_DEFAULT,
            object_members_max: Self::OBJECT_MEMBERS_MAX_DEFAULT,
        }
    }
}

/// Why a document was rejected; the position travels in [`Error::Json`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Syntax {
    TooLarge { input_bytes_max: usize },
    TooDeep { depth_max: usize },
    StringTooLong { string_bytes_max: usize },
    ArrayTooLong { array_len_max: usize },
    TooManyMembers { object_members_max: usize },
    InvalidUtf8,
    ByteOrderMark,
    UnexpectedEnd,
    UnexpectedCharacter(char),
    TrailingCharacters,
    InvalidNumber,
    InvalidLiteral,
    ControlCharacterInString,
    InvalidEscape,
    LoneSurrogate,
    DuplicateKey(String),
    ExpectedKey,
    ExpectedColon,
    ExpectedCommaOrEnd,
}

impl fmt::Display for Syntax {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Syntax::TooLarge { input_bytes_max } => write!(f, "document larger than {input_bytes_max} bytes"),
            Syntax::TooDeep { depth_max } => write!(f, "nesting deeper than {depth_max} levels"),
            Syntax::StringTooLong { string_bytes_max } => write!(f, "string longer than {string_bytes_max} bytes"),
            Syntax::ArrayTooLong { array_len_max } => write!(f, "array longer than {array_len_max} elements"),
            Syntax::TooManyMembers { object_members_max } => {
                write!(f, "object with more than {object_members_max} members")
            }
            Syntax::InvalidUtf8 => f.write_str("invalid UTF-8"),
            Syntax::ByteOrderMark => f.write_str("byte order mark is not allowed"),
            Syntax::UnexpectedEnd => f.write_str("unexpected end of input"),
            Syntax::UnexpectedCharacter(c) => write!(f, "unexpected character {c:?}"),
            Syntax::TrailingCharacters => f.write_str("trailing characters after the JSON value"),
            Syntax::InvalidNumber => f.write_str("invalid number"),
            Syntax::InvalidLiteral => f.write_str("invalid literal (expected true, false or null)"),
            Syntax::ControlCharacterInString => f.write_str("unescaped control character in string"),
            Syntax::InvalidEscape => f.write_str("invalid escape sequence"),
            Syntax::LoneSurrogate => f.write_str("unpaired UTF-16 surrogate in \\u escape"),
            Syntax::DuplicateKey(key) => write!(f, "duplicate key {key:?}"),
            Syntax::ExpectedKey => f.write_str("expected a string key"),
            Syntax::ExpectedColon => f.write_str("expected ':'"),
            Syntax::ExpectedCommaOrEnd => f.write_str("expected ',' or the end of the array or object"),
        }
    }
}

/// A parsed value and the byte range `start..end` of its text in the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Value<'a> {
    pub kind: Kind<'a>,
    pub start: usize,
    pub end: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind<'a> {
    Null,
    Bool(bool),
    /// The number exactly as written (RFC 8259 grammar); never converted.
    Number(&'a str),
    /// Unescaped text; borrowed when the source had no escapes.
    String(Cow<'a, str>),
    Array(Vec<Value<'a>>),
    /// Members in document order; keys are unique.
    Object(Vec<Member<'a>>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member<'a> {
    pub key: Cow<'a, str>,
    /// Byte offset of the key's opening quote.
    pub key_start: usize,
    pub value: Value<'a>,
}

impl<'a> Value<'a> {
    pub fn as_str(&self) -> Option<&str> {
        match &self.kind {
            Kind::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_object(&self) -> Option<&[Member<'a>]> {
        match &self.kind {
            Kind::Object(members) => Some(members),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value<'a>]> {
        match &self.kind {
            Kind::Array(items) => Some(items),
            _ => None,
        }
    }

    /// The member named `key` of an object.
    pub fn get(&self, key: &str) -> Option<&Value<'a>> {
        self.as_object()?.iter().find(|m| m.key == key).map(|m| &m.value)
    }

    /// Short name of the JSON type, for messages.
    pub fn type_name(&self) -> &'static str {
        match self.kind {
            Kind::Null => "null",
            Kind::Bool(_) => "boolean",
            Kind::Number(_) => "number",
            Kind::String(_) => "string",
            Kind::Array(_) => "array",
            Kind::Object(_) => "object",
        }
    }
}

/// Parses one JSON document (RFC 8259: any value at top level, whitespace around it only).
pub fn parse<'a>(input: &'a [u8], limits: &Limits) -> Result<Value<'a>, Error> {
    if input.len() > limits.input_bytes_max {
        return Err(error_at(input, 0, Syntax::TooLarge { input_bytes_max: limits.input_bytes_max }));
    }
    let text = match std::str::from_utf8(input) {
        Ok(text) => text,
        Err(e) => return Err(error_at(input, e.valid_up_to(), Syntax::InvalidUtf8)),
    };
    if text.starts_with('\u{feff}') {
        return Err(error_at(input, 0, Syntax::ByteOrderMark));
    }
    let mut parser = Parser { text, bytes: input, pos: 0, limits };
    let result = parser.document();
    result.map_err(|(offset, syntax)| error_at(input, offset, syntax))
}

/// Turns a byte offset into an error with 1-based line and column (columns count characters).
fn error_at(input: &[u8], offset: usize, reason: Syntax) -> Error {
    let offset = offset.min(input.len());
    let before = &input[..offset];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = before.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    // Count UTF-8 lead bytes only, so a multi-byte character is one column.
    let column = before[line_start..].iter().filter(|&&b| (b & 0xC0) != 0x80).count() + 1;
    Error::Json { reason, offset, line, column }
}

type Failure = (usize, Syntax);

struct Parser<'a, 'l> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
    limits: &'l Limits,
}

impl<'a> Parser<'a, '_> {
    fn document(&mut self) -> Result<Value<'a>, Failure> {
        self.skip_whitespace();
        let value = self.value(1)?;
        self.skip_whitespace();
        if self.pos != self.bytes.len() {
            return Err((self.pos, Syntax::TrailingCharacters));
        }
        Ok(value)
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    fn unexpected(&self) -> Failure {
        match self.text[self.pos..].chars().next() {
            Some(c) => (self.pos, Syntax::UnexpectedCharacter(c)),
            None => (self.pos, Syntax::UnexpectedEnd),
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value<'a>, Failure> {
        let start = self.pos;
        let kind = match self.peek() {
            None => return Err((self.pos, Syntax::UnexpectedEnd)),
            Some(b'{') => self.object(depth)?,
            Some(b'[') => self.array(depth)?,
            Some(b'"') => Kind::String(self.string()?),
            Some(b't') => self.literal("true", Kind::Bool(true))?,
            Some(b'f') => self.literal("false", Kind::Bool(false))?,
            Some(b'n') => self.literal("null", Kind::Null)?,
            Some(b'-' | b'0'..=b'9') => Kind::Number(self.number()?),
            Some(_) => return Err(self.unexpected()),
        };
        Ok(Value { kind, start, end: self.pos })
    }

    fn literal(&mut self, word: &str, kind: Kind<'a>) -> Result<Kind<'a>, Failure> {
        if self.bytes[self.pos..].starts_with(word.as_bytes()) {
            self.pos += word.len();
            Ok(kind)
        } else {
            Err((self.pos, Syntax::InvalidLiteral))
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
        self.pos - start
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`
    fn number(&mut self) -> Result<&'a str, Failure> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => {
                self.pos += 1;
                if let Some(b'0'..=b'9') = self.peek() {
                    return Err((start, Syntax::InvalidNumber));
                }
            }
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err((start, Syntax::InvalidNumber)),
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if self.digits() == 0 {
                return Err((start, Syntax::InvalidNumber));
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return Err((start, Syntax::InvalidNumber));
            }
        }
        Ok(&self.text[start..self.pos])
    }

    fn string(&mut self) -> Result<Cow<'a, str>, Failure> {
        let quote = self.pos;
        self.pos += 1;
        let content_start = self.pos;
        // Fast path: no escapes, borrow the source.
        loop {
            match self.peek() {
                None => return Err((self.pos, Syntax::UnexpectedEnd)),
                Some(b'"') => {
                    let content = &self.text[content_start..self.pos];
                    self.check_string_len(quote, content.len())?;
                    self.pos += 1;
                    return Ok(Cow::Borrowed(content));
                }
                Some(b'\\') => break,
                Some(0x00..=0x1F) => return Err((self.pos, Syntax::ControlCharacterInString)),
                Some(_) => self.pos += 1,
            }
        }
        let mut out = String::from(&self.text[content_start..self.pos]);
        loop {
            self.check_string_len(quote, out.len())?;
            match self.peek() {
                None => return Err((self.pos, Syntax::UnexpectedEnd)),
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(Cow::Owned(out));
                }
                Some(b'\\') => {
                    let escape_start = self.pos;
                    self.pos += 1;
                    let c = match self.peek() {
                        Some(b'"') => '"',
                        Some(b'\\') => '\\',
                        Some(b'/') => '/',
                        Some(b'b') => '\u{8}',
                        Some(b'f') => '\u{c}',
                        Some(b'n') => '\n',
                        Some(b'r') => '\r',
                        Some(b't') => '\t',
                        Some(b'u') => {
                            self.pos += 1;
                            let unit = self.hex4(escape_start)?;
                            let c = self.code_point(unit, escape_start)?;
                            out.push(c);
                            continue;
                        }
                        None => return Err((self.pos, Syntax::UnexpectedEnd)),
                        Some(_) => return Err((escape_start, Syntax::InvalidEscape)),
                    };
                    self.pos += 1;
                    out.push(c);
                }
                Some(0x00..=0x1F) => return Err((self.pos, Syntax::ControlCharacterInString)),
                Some(_) => {
                    // Copy the run up to the next quote, backslash or control byte at once.
                    let run_start = self.pos;
                    while let Some(b) = self.peek() {
                        if b == b'"' || b == b'\\' || b < 0x20 {
                            break;
                        }
                        self.pos += 1;
                    }
                    out.push_str(&self.text[run_start..self.pos]);
                }
            }
        }
    }

    fn check_string_len(&self, quote: usize, len: usize) -> Result<(), Failure> {
        if len > self.limits.string_bytes_max {
            return Err((quote, Syntax::StringTooLong { string_bytes_max: self.limits.string_bytes_max }));
        }
        Ok(())
    }

    /// Reads the four hex digits after `\u`.
    fn hex4(&mut self, escape_start: usize) -> Result<u16, Failure> {
        let Some(digits) = self.bytes.get(self.pos..self.pos + 4) else {
            return Err((escape_start, Syntax::InvalidEscape));
        };
        let mut unit: u16 = 0;
        for &d in digits {
            let v = match d {
                b'0'..=b'9' => d - b'0',
                b'a'..=b'f' => d - b'a' + 10,
                b'A'..=b'F' => d - b'A' + 10,
                _ => return Err((escape_start, Syntax::InvalidEscape)),
            };
            unit = (unit << 4) | u16::from(v);
        }
        self.pos += 4;
        Ok(unit)
    }

    /// Combines a `\u` unit with a following low surrogate when it is a high surrogate.
    fn code_point(&mut self, unit: u16, escape_start: usize) -> Result<char, Failure> {
        match unit {
            0xD800..=0xDBFF => {
                if !self.bytes[self.pos..].starts_with(b"\\u") {
                    return Err((escape_start, Syntax::LoneSurrogate));
                }
                let low_start = self.pos;
                self.pos += 2;
                let low = self.hex4(low_start)?;
                if !(0xDC00..=0xDFFF).contains(&low) {
                    return Err((escape_start, Syntax::LoneSurrogate));
                }
                let scalar = 0x10000 + ((u32::from(unit) - 0xD800) << 10) + (u32::from(low) - 0xDC00);
                char::from_u32(scalar).ok_or((escape_start, Syntax::LoneSurrogate))
            }
            0xDC00..=0xDFFF => Err((escape_start, Syntax::LoneSurrogate)),
            _ => char::from_u32(u32::from(unit)).ok_or((escape_start, Syntax::InvalidEscape)),
        }
    }

    fn enter(&self, depth: usize) -> Result<(), Failure> {
        if depth > self.limits.depth_max {
            return Err((self.pos, Syntax::TooDeep { depth_max: self.limits.depth_max }));
        }
        Ok(())
    }

    fn array(&mut self, depth: usize) -> Result<Kind<'a>, Failure> {
        self.enter(depth)?;
        self.pos += 1;
        let mut items = Vec::new();
        self.skip_whitespace();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(Kind::Array(items));
        }
        loop {
            self.skip_whitespace();
            if items.len() == self.limits.array_len_max {
                return Err((self.pos, Syntax::ArrayTooLong { array_len_max: self.limits.array_len_max }));
            }
            items.push(self.value(depth + 1)?);
            self.skip_whitespace();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(Kind::Array(items));
                }
                None => return Err((self.pos, Syntax::UnexpectedEnd)),
                Some(_) => return Err((self.pos, Syntax::ExpectedCommaOrEnd)),
            }
        }
    }

    fn object(&mut self, depth: usize) -> Result<Kind<'a>, Failure> {
        self.enter(depth)?;
        self.pos += 1;
        let mut members: Vec<Member<'a>> = Vec::new();
        // Small objects are checked pairwise; larger ones switch to a set so the work per
        // member stays constant.
        let mut seen: Option<HashSet<String>> = None;
        self.skip_whitespace();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(Kind::Object(members));
        }
        loop {
            self.skip_whitespace();
            let key_start = self.pos;
            match self.peek() {
                Some(b'"') => {}
                None => return Err((self.pos, Syntax::UnexpectedEnd)),
                Some(_) => return Err((self.pos, Syntax::ExpectedKey)),
            }
            if members.len() == self.limits.object_members_max {
                return Err((key_start, Syntax::TooManyMembers { object_members_max: self.limits.object_members_max }));
            }
            let key = self.string()?;
            let duplicate = match &mut seen {
                Some(set) => !set.insert(key.to_string()),
                None => {
                    let duplicate = members.iter().any(|m| m.key == key);
                    if members.len() >= 16 {
                        let mut set: HashSet<String> = members.iter().map(|m| m.key.to_string()).collect();
                        set.insert(key.to_string());
                        seen = Some(set);
                    }
                    duplicate
                }
            };
            if duplicate {
                return Err((key_start, Syntax::DuplicateKey(key.into_owned())));
            }
            self.skip_whitespace();
            if self.peek() != Some(b':') {
                return Err((self.pos, Syntax::ExpectedColon));
            }
            self.pos += 1;
            self.skip_whitespace();
            let value = self.value(depth + 1)?;
            members.push(Member { key, key_start, value });
            self.skip_whitespace();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(Kind::Object(members));
                }
                None => return Err((self.pos, Syntax::UnexpectedEnd)),
                Some(_) => return Err((self.pos, Syntax::ExpectedCommaOrEnd)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Value<'_> {
        parse(text.as_bytes(), &Limits::default()).unwrap_or_else(|e| panic!("{text:?}: {e}"))
    }

    fn fail(input: &[u8]) -> (Syntax, usize, usize, usize) {
        match parse(input, &Limits::default()) {
            Err(Error::Json { reason, offset, line, column }) => (reason, offset, line, column),
            other => panic!("{:?} should fail, got {other:?}", String::from_utf8_lossy(input)),
        }
    }

    #[test]
    fn keeps_number_lexemes_and_key_order() {
        let v = ok(r#"{"z": 5.40, "a": -0.0e+10, "m": 1E3, "n": 123456789012345678901234567890}"#);
        let members = v.as_object().unwrap();
        let keys: Vec<&str> = members.iter().map(|m| &*m.key).collect();
        assert_eq!(keys, ["z", "a", "m", "n"]);
        let numbers: Vec<&str> = members
            .iter()
            .map(|m| match m.value.kind {
                Kind::Number(n) => n,
                _ => panic!(),
            })
            .collect();
        assert_eq!(numbers, ["5.40", "-0.0e+10", "1E3", "123456789012345678901234567890"]);
    }

    #[test]
    fn spans_cover_the_source_text() {
        let text = r#" { "a" : [ 1 , { "b" : "c" } ] } "#;
        let v = ok(text);
        assert_eq!(&text[v.start..v.end], r#"{ "a" : [ 1 , { "b" : "c" } ] }"#);
        let a = v.get("a").unwrap();
        assert_eq!(&text[a.start..a.end], r#"[ 1 , { "b" : "c" } ]"#);
        let inner = &a.as_array().unwrap()[1];
        assert_eq!(&text[inner.start..inner.end], r#"{ "b" : "c" }"#);
    }

    #[test]
    fn unescapes_strings() {
        let v = ok(r#"["a\"b\\c\/d\b\f\n\r\t", "\u00e9\u4e2d\ud83d\ude00", "plain é"]"#);
        let items = v.as_array().unwrap();
        assert_eq!(items[0].as_str(), Some("a\"b\\c/d\u{8}\u{c}\n\r\t"));
        assert_eq!(items[1].as_str(), Some("é中😀"));
        assert!(matches!(items[2].kind, Kind::String(Cow::Borrowed("plain é"))));
    }

    #[test]
    fn accepts_any_top_level_value() {
        for text in ["null", "true", "false", "0", "-1.5e-3", "\"x\"", "[]", "{}", " \t\r\n[ ]\n"] {
            ok(text);
        }
    }

    #[test]
    fn rejects_malformed_input_with_positions() {
        let cases: &[(&[u8], Syntax, usize)] = &[
            (b"", Syntax::UnexpectedEnd, 0),
            (b"   ", Syntax::UnexpectedEnd, 3),
            (b"{", Syntax::UnexpectedEnd, 1),
            (b"[1,]", Syntax::UnexpectedCharacter(']'), 3),
            (b"[1 2]", Syntax::ExpectedCommaOrEnd, 3),
            (b"{\"a\" 1}", Syntax::ExpectedColon, 5),
            (b"{\"a\":1,}", Syntax::ExpectedKey, 7),
            (b"{a:1}", Syntax::ExpectedKey, 1),
            (b"{'a':1}", Syntax::ExpectedKey, 1),
            (b"{\"a\":1}x", Syntax::TrailingCharacters, 7),
            (b"{\"a\":1} {}", Syntax::TrailingCharacters, 8),
            (b"01", Syntax::InvalidNumber, 0),
            (b"-", Syntax::InvalidNumber, 0),
            (b"1.", Syntax::InvalidNumber, 0),
            (b".5", Syntax::UnexpectedCharacter('.'), 0),
            (b"1e", Syntax::InvalidNumber, 0),
            (b"1e+", Syntax::InvalidNumber, 0),
            (b"+1", Syntax::UnexpectedCharacter('+'), 0),
            (b"NaN", Syntax::UnexpectedCharacter('N'), 0),
            (b"Infinity", Syntax::UnexpectedCharacter('I'), 0),
            (b"-Infinity", Syntax::InvalidNumber, 0),
            (b"0x10", Syntax::TrailingCharacters, 1),
            (b"tru", Syntax::InvalidLiteral, 0),
            (b"nul", Syntax::InvalidLiteral, 0),
            (b"True", Syntax::UnexpectedCharacter('T'), 0),
            (b"\"abc", Syntax::UnexpectedEnd, 4),
            (b"\"a\tb\"", Syntax::ControlCharacterInString, 2),
            (b"\"a\nb\"", Syntax::ControlCharacterInString, 2),
            (b"\"\\x\"", Syntax::InvalidEscape, 1),
            (b"\"\\u12\"", Syntax::InvalidEscape, 1),
            (b"\"\\u12G4\"", Syntax::InvalidEscape, 1),
            (b"\"\\ud800\"", Syntax::LoneSurrogate, 1),
            (b"\"\\udc00\"", Syntax::LoneSurrogate, 1),
            (b"\"\\ud800\\u0041\"", Syntax::LoneSurrogate, 1),
            (b"\"\\ud800x\"", Syntax::LoneSurrogate, 1),
            (b"\"ab\xff\"", Syntax::InvalidUtf8, 3),
            (b"\"\xc0\xaf\"", Syntax::InvalidUtf8, 1),
            (b"\"\xed\xa0\x80\"", Syntax::InvalidUtf8, 1),
            (b"\xef\xbb\xbf{}", Syntax::ByteOrderMark, 0),
            (b"{\"a\":1,\"a\":2}", Syntax::DuplicateKey("a".into()), 7),
            (b"{\"a\":1,\"\\u0061\":2}", Syntax::DuplicateKey("a".into()), 7),
            (b"[\x0c]", Syntax::UnexpectedCharacter('\u{c}'), 1),
            (b"[\xc2\xa0]", Syntax::UnexpectedCharacter('\u{a0}'), 1),
            (b"/* c */ {}", Syntax::UnexpectedCharacter('/'), 0),
        ];
        for (input, syntax, offset) in cases {
            let (got, got_offset, _, _) = fail(input);
            assert_eq!((&got, got_offset), (syntax, *offset), "{:?}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn reports_line_and_column() {
        let (reason, offset, line, column) = fail(b"{\n  \"a\": 1,\n  \"\xc3\xa9\": tru\n}");
        assert_eq!(reason, Syntax::InvalidLiteral);
        assert_eq!((offset, line, column), (20, 3, 8));
        let message = parse(b"[1,\n x]", &Limits::default()).unwrap_err().to_string();
        assert!(message.contains("line 2, column 2"), "{message}");
    }

    #[test]
    fn duplicate_keys_found_in_large_objects() {
        let mut text = String::from("{");
        for i in 0..40 {
            text.push_str(&format!("\"k{i}\":{i},"));
        }
        text.push_str("\"k3\":0}");
        assert!(matches!(fail(text.as_bytes()).0, Syntax::DuplicateKey(k) if k == "k3"));
        // The same keys nested in different objects are fine.
        ok(r#"{"a":{"a":{"a":1}},"b":[{"a":1},{"a":2}]}"#);
    }

    #[test]
    fn enforces_limits() {
        let limits = Limits { input_bytes_max: 10, ..Limits::default() };
        assert!(matches!(parse(b"[1,2,3,4,5,6]", &limits), Err(Error::Json { reason: Syntax::TooLarge { .. }, .. })));

        let deep_ok = "[".repeat(64) + &"]".repeat(64);
        ok(&deep_ok);
        let too_deep = "[".repeat(65) + &"]".repeat(65);
        assert_eq!(fail(too_deep.as_bytes()).0, Syntax::TooDeep { depth_max: 64 });
        // Far deeper than the stack could take without the limit.
        let very_deep = "{\"a\":".repeat(100_000);
        assert_eq!(fail(very_deep.as_bytes()).0, Syntax::TooDeep { depth_max: 64 });

        let limits = Limits { string_bytes_max: 4, ..Limits::default() };
        assert!(parse(b"\"abcd\"", &limits).is_ok());
        assert!(matches!(parse(b"\"abcde\"", &limits), Err(Error::Json { reason: Syntax::StringTooLong { .. }, .. })));
        assert!(matches!(
            parse(b"\"ab\\ncde\"", &limits),
            Err(Error::Json { reason: Syntax::StringTooLong { .. }, .. })
        ));
        assert!(matches!(
            parse(b"{\"abcde\":1}", &limits),
            Err(Error::Json { reason: Syntax::StringTooLong { .. }, .. })
        ));

        let limits = Limits { array_len_max: 3, object_members_max: 2, ..Limits::default() };
        assert!(parse(b"[1,2,3]", &limits).is_ok());
        assert!(matches!(parse(b"[1,2,3,4]", &limits), Err(Error::Json { reason: Syntax::ArrayTooLong { .. }, .. })));
        assert!(parse(b"{\"a\":1,\"b\":2}", &limits).is_ok());
        assert!(matches!(
            parse(b"{\"a\":1,\"b\":2,\"c\":3}", &limits),
            Err(Error::Json { reason: Syntax::TooManyMembers { .. }, .. })
        ));
    }

    /// Deterministic fuzzing: every prefix, every single-byte deletion and a spread of byte
    /// substitutions of a realistic document must parse or fail cleanly, never panic; and
    /// whatever parses must have spans that lie inside the input.
    #[test]
    fn mutated_documents_never_panic() {
        let doc = br#"{"resourceType":"Observation","valueQuantity":{"value":5.40,"unit":"mmol/L"},
            "note":[{"text":"caf\u00e9 \ud83d\ude00 \"quoted\""}],"flag":true,"none":null,"n":[-1e-3,0,12]}"#;
        parse(doc, &Limits::default()).unwrap();
        let replacements =
            [b'"', b'\\', b'{', b'}', b'[', b']', b',', b':', b'0', b'-', b'e', b'.', b' ', 0x00, 0xff, 0xc3];
        let mut checked = 0usize;
        let mut check = |input: &[u8]| {
            if let Ok(v) = parse(input, &Limits::default()) {
                assert!(v.start <= v.end && v.end <= input.len());
            }
            checked += 1;
        };
        for len in 0..doc.len() {
            check(&doc[..len]);
            let mut deleted = doc.to_vec();
            deleted.remove(len);
            check(&deleted);
            for (i, &r) in replacements.iter().enumerate() {
                if (len + i) % 3 == 0 {
                    let mut replaced = doc.to_vec();
                    replaced[len] = r;
                    check(&replaced);
                }
            }
        }
        // A simple xorshift generator spreads random byte soup over the grammar too.
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let alphabet = b"{}[]:,\"\\ntrufalse0123456789.eE+- \x01\xe2\x82\xac";
        for _ in 0..20_000 {
            let mut soup = Vec::new();
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = (state % 24) as usize;
            for _ in 0..len {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                soup.push(alphabet[(state % alphabet.len() as u64) as usize]);
            }
            check(&soup);
        }
        assert!(checked > 20_000);
    }
}
