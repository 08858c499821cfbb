//! How records map to FHIR: which resource types are stored as patient records (one table,
//! `medledger_types::RECORD_RESOURCE_TYPES`, with each type's consent categories) and the
//! delete marker a logical delete stores as a record's next version.

pub use medledger_types::{RECORD_RESOURCE_TYPES as SERVED_TYPES, is_directory_resource_type as is_directory};

/// Whether `resource_type` is served here: a patient-record or a directory type.
pub fn is_served(resource_type: &str) -> bool {
    SERVED_TYPES.contains(&resource_type) || is_directory(resource_type)
}

/// What a logical delete stores as the record's next version (encrypted like any version):
/// not a FHIR resource (the validator refuses its `medledger` member), so no client can write
/// one through the FHIR API, and it marks the record deleted for every node that can open it.
pub fn tombstone(resource_type: &str) -> Vec<u8> {
    format!(r#"{{"medledger":"deleted","resourceType":"{resource_type}"}}"#).into_bytes()
}

/// Whether stored bytes are a delete marker (see [`tombstone`]).
pub fn is_tombstone(stored: &[u8]) -> bool {
    stored.starts_with(br#"{"medledger":"deleted","#)
}

/// The identifier system naming a patient's on-chain identity in a Patient resource.
pub const IDENTITY_SYSTEM: &str = "urn:medledger:identity";

/// The code system of medledger's consent categories (`medledger_types::CATEGORIES`).
pub const CATEGORY_SYSTEM: &str = "urn:medledger:category";

/// Extension saying how a grant came to be: `consent`, `break-glass` or `rule:<rule id>`.
pub const GRANT_ORIGIN_EXTENSION: &str = "urn:medledger:fhir:extension:grant-origin";

/// Extension naming the ledger transaction that carries an access event (its RFC 6962 leaf
/// hash: `GET /v1/proofs/inclusion` proves it).
pub const LEDGER_TX_EXTENSION: &str = "urn:medledger:fhir:extension:ledger-transaction";

/// Extension naming that transaction's index in the ledger's log.
pub const LEDGER_LOG_INDEX_EXTENSION: &str = "urn:medledger:fhir:extension:ledger-log-index";

#[cfg(test)]
mod tests {
    #[test]
    fn a_tombstone_is_recognised_and_no_resource_is_one() {
        assert!(super::is_tombstone(&super::tombstone("Observation")));
        assert!(!super::is_tombstone(br#"{"resourceType":"Observation","medledger":"deleted"}"#));
    }
}
