//! FHIR Consent over the ledger's grants: `read.rs` answers `GET /fhir/Consent?patient=…`
//! and `GET /fhir/Consent/{id}`; `write.rs` creates and revokes grants from Consents written
//! by the patient or their delegate. The mapping both ways (a Consent as a grant, a grant as
//! a Consent) and who may write a patient's consent are `records::consent`.

pub(crate) mod read;
pub(crate) mod write;
