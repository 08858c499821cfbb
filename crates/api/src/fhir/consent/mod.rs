//! FHIR Consent over the ledger's grants: `resource.rs` maps a grant (consent, rule-derived
//! access or break-glass) to an R4 Consent; `read.rs` answers `GET /fhir/Consent?patient=…`
//! and `GET /fhir/Consent/{id}`; `write.rs` creates and revokes grants from Consents written
//! by the patient or their delegate.

pub(crate) mod read;
pub(crate) mod resource;
pub(crate) mod write;
