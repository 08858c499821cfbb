//! What this FHIR server serves and the vocabulary it writes: the patient-record types
//! ([`SERVED_TYPES`]) and the consortium directory's, the identifier systems and extension URLs
//! of medledger's own resources, and the delete marker that a logical delete stores as a
//! record's next version.

use axum::http::StatusCode;
use medledger_fhir::IssueCode;

use crate::fhir::errors::FhirError;

/// The resource types this slice serves: those stored as patient records.
pub const SERVED_TYPES: &[&str] = &medledger_types::RECORD_RESOURCE_TYPES;

pub(crate) use medledger_records::served::{is_tombstone, tombstone};

/// The identifier system naming a patient's on-chain identity in a Patient resource.
pub const IDENTITY_SYSTEM: &str = "urn:medledger:identity";

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

/// The code system of medledger's consent categories (`medledger_types::CATEGORIES`).
pub const CATEGORY_SYSTEM: &str = "urn:medledger:category";

/// Extension saying how a grant came to be: `consent`, `break-glass` or `rule:<rule id>`.
pub const GRANT_ORIGIN_EXTENSION: &str = "urn:medledger:fhir:extension:grant-origin";

/// Extension naming the ledger transaction that carries an access event (its RFC 6962 leaf
/// hash: `GET /v1/proofs/inclusion` proves it).
pub const LEDGER_TX_EXTENSION: &str = "urn:medledger:fhir:extension:ledger-transaction";

/// Extension naming that transaction's index in the ledger's log.
pub const LEDGER_LOG_INDEX_EXTENSION: &str = "urn:medledger:fhir:extension:ledger-log-index";

/// Whether `resource_type` is a consortium directory type (committed in clear, no consent).
pub(crate) fn is_directory(resource_type: &str) -> bool {
    medledger_types::is_directory_resource_type(resource_type)
}
