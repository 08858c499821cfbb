//! A validation finding ([`Issue`]) and its FHIR vocabularies: the severity and the issue
//! type (http://hl7.org/fhir/R4/valueset-issue-type.html) an OperationOutcome reports.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Fatal,
    Error,
    Warning,
    Information,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Fatal => "fatal",
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Information => "information",
        }
    }
}

/// FHIR `IssueType` codes (valueset-issue-type) this validator produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum IssueCode {
    /// Not well-formed JSON.
    Invalid,
    /// Unknown element, wrong JSON shape or cardinality.
    Structure,
    Required,
    /// A primitive or reference that does not match its lexical rules.
    Value,
    Invariant,
    TooLong,
    NotSupported,
    // Codes a server uses for what is not about the resource's structure (R4 issue-type).
    /// Authentication needed or failed.
    Login,
    Forbidden,
    NotFound,
    Conflict,
    /// The resource is well-formed but cannot be processed (e.g. a reference that does not
    /// resolve).
    Processing,
    BusinessRule,
    /// The resource was deleted (HTTP 410).
    Deleted,
    /// Try again later.
    Transient,
    /// The request would cost too much (R4 `too-costly`): narrow it.
    TooCostly,
    Exception,
}

impl IssueCode {
    pub fn as_str(self) -> &'static str {
        match self {
            IssueCode::Invalid => "invalid",
            IssueCode::Structure => "structure",
            IssueCode::Required => "required",
            IssueCode::Value => "value",
            IssueCode::Invariant => "invariant",
            IssueCode::TooLong => "too-long",
            IssueCode::NotSupported => "not-supported",
            IssueCode::Login => "login",
            IssueCode::Forbidden => "forbidden",
            IssueCode::NotFound => "not-found",
            IssueCode::TooCostly => "too-costly",
            IssueCode::Conflict => "conflict",
            IssueCode::Processing => "processing",
            IssueCode::BusinessRule => "business-rule",
            IssueCode::Deleted => "deleted",
            IssueCode::Transient => "transient",
            IssueCode::Exception => "exception",
        }
    }
}

/// One finding. `expression` is a FHIRPath-like location such as
/// `Observation.code.coding[0].system` (choice elements use their JSON name, e.g.
/// `Observation.valueQuantity`); `None` when the input is not JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    pub severity: Severity,
    pub code: IssueCode,
    pub expression: Option<String>,
    pub diagnostics: String,
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.severity.as_str(), self.code.as_str())?;
        if let Some(expression) = &self.expression {
            write!(f, " at {expression}")?;
        }
        write!(f, ": {}", self.diagnostics)
    }
}
