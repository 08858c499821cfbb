//! FHIR R4 data layer: strict bounded JSON parsing, a lean R4 model, structural validation and
//! the pure search layer (index values, queries, matching).
//!
//! Architecture invariant: pure — no I/O, no clock, no HTTP. Input bytes are parsed and
//! checked but never re-serialized, so what a server stores and signs is exactly what the
//! client sent. Nothing here panics on input, and the work done is bounded per input byte.

pub mod instant;
mod issue;
pub mod json;
pub mod model;
pub mod outcome;
mod primitive;
pub mod search;
pub mod splice;
pub mod validate;

pub use outcome::operation_outcome;
pub use validate::{Issue, IssueCode, Severity, Validated, validate};

/// Errors of this crate. Validation findings are not errors: they are [`validate::Issue`]s.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("invalid JSON at line {line}, column {column} (byte {offset}): {reason}")]
    Json { reason: json::Syntax, offset: usize, line: usize, column: usize },
    #[error("a resource must be a JSON object")]
    NotAnObject,
}
