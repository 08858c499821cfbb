//! Renders validation issues as an R4 OperationOutcome (operationoutcome.html).
//!
//! Built as a string by hand: the shape is fixed and small, and this keeps serde out of the
//! crate. Every string goes through [`escape_into`], so diagnostics quoting client input
//! cannot break the document.

use crate::validate::Issue;

/// The OperationOutcome JSON for `issues`. R4 requires at least one issue, so an empty list
/// renders as a single `informational` one.
pub fn operation_outcome(issues: &[Issue]) -> String {
    let mut out = String::from(r#"{"resourceType":"OperationOutcome","issue":["#);
    if issues.is_empty() {
        out.push_str(r#"{"severity":"information","code":"informational","diagnostics":"no issues"}"#);
    }
    for (index, issue) in issues.iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        out.push_str(r#"{"severity":""#);
        out.push_str(issue.severity.as_str());
        out.push_str(r#"","code":""#);
        out.push_str(issue.code.as_str());
        out.push_str(r#"","diagnostics":""#);
        escape_into(&mut out, &issue.diagnostics);
        out.push('"');
        if let Some(expression) = &issue.expression {
            out.push_str(r#","expression":[""#);
            escape_into(&mut out, expression);
            out.push_str(r#""]"#);
        }
        out.push('}');
    }
    out.push_str("]}");
    out
}

/// Appends `text` as the contents of a JSON string (RFC 8259 section 7).
pub fn escape_into(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
}

/// Characters of a client's text quoted back in a diagnostic, at most.
pub const ECHO_CHARS_MAX: usize = 64;

/// `text` (a client's input) quoted for a diagnostic: at most [`ECHO_CHARS_MAX`] characters,
/// control characters and quotes escaped, so an answer never carries a client's bytes raw.
pub fn echo(text: &str) -> String {
    let mut out: String = text.chars().take(ECHO_CHARS_MAX).flat_map(char::escape_debug).collect();
    if text.chars().count() > ECHO_CHARS_MAX {
        out.push('…');
    }
    format!("\"{out}\"")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::{Limits, parse};
    use crate::validate::{IssueCode, Severity, validate};

    #[test]
    fn renders_issues() {
        let issues = validate(br#"{"resourceType":"Observation","status":"final"}"#).unwrap_err();
        assert_eq!(
            operation_outcome(&issues),
            r#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"required","diagnostics":"Observation.code is required (minimum 1)","expression":["Observation.code"]}]}"#
        );
        let issues = validate(b"{").unwrap_err();
        assert_eq!(
            operation_outcome(&issues),
            r#"{"resourceType":"OperationOutcome","issue":[{"severity":"fatal","code":"invalid","diagnostics":"invalid JSON at line 1, column 2 (byte 1): unexpected end of input"}]}"#
        );
        assert_eq!(
            operation_outcome(&[]),
            r#"{"resourceType":"OperationOutcome","issue":[{"severity":"information","code":"informational","diagnostics":"no issues"}]}"#
        );
    }

    #[test]
    fn escapes_hostile_text() {
        let nasty = "quote \" backslash \\ newline \n nul \u{0} bell \u{7} unicode é \u{2028} 😀";
        let issue = Issue {
            severity: Severity::Warning,
            code: IssueCode::Value,
            expression: Some(format!("Patient.{nasty}")),
            diagnostics: nasty.to_string(),
        };
        let rendered = operation_outcome(&[issue]);
        let parsed = parse(rendered.as_bytes(), &Limits::default()).unwrap();
        let first = &parsed.get("issue").unwrap().as_array().unwrap()[0];
        assert_eq!(first.get("diagnostics").unwrap().as_str(), Some(nasty));
        assert_eq!(
            first.get("expression").unwrap().as_array().unwrap()[0].as_str(),
            Some(format!("Patient.{nasty}").as_str())
        );
    }
}
