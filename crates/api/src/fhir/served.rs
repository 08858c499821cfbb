//! What this FHIR server serves and the vocabulary it writes: the patient-record types
//! ([`SERVED_TYPES`]) and the consortium directory's, the identifier systems and extension URLs
//! of medledger's own resources, and the delete marker that a logical delete stores as a
//! record's next version.

use axum::http::StatusCode;
use medledger_fhir::IssueCode;

use crate::fhir::errors::FhirError;

/// The resource types this slice serves: those stored as patient records.
pub const SERVED_TYPES: &[&str] = &medledger_types::RECORD_RESOURCE_TYPES;

pub use medledger_records::served::{
    CATEGORY_SYSTEM, GRANT_ORIGIN_EXTENSION, IDENTITY_SYSTEM, LEDGER_LOG_INDEX_EXTENSION, LEDGER_TX_EXTENSION,
};
pub(crate) use medledger_records::served::{is_tombstone, tombstone};

/// Whether `resource_type` is served here (a patient-record or directory type); if not, the
/// OperationOutcome saying so (and whether it is an R4 type at all).
pub(crate) fn served(resource_type: &str) -> Result<(), FhirError> {
    if SERVED_TYPES.contains(&resource_type) || is_directory(resource_type) {
        return Ok(());
    }
    let known = medledger_fhir::model::Model::r4().is_r4_resource_type(resource_type);
    Err(FhirError::new(
        StatusCode::NOT_FOUND,
        IssueCode::NotSupported,
        if known {
            format!("resource type {} is not served here (see /fhir/metadata)", crate::error::echo(resource_type))
        } else {
            format!("{} is not an R4 resource type", crate::error::echo(resource_type))
        },
    ))
}

pub(crate) fn served_type(resource_type: &str) -> Result<(), FhirError> {
    served(resource_type)
}

/// Whether `resource_type` is a consortium directory type (committed in clear, no consent).
pub(crate) fn is_directory(resource_type: &str) -> bool {
    medledger_types::is_directory_resource_type(resource_type)
}
