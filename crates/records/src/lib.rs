//! The record service of a medledger node: encrypted record writes and reads (FHIR JSON,
//! per-version data keys wrapped under per-patient category keys), batches, the sharing of
//! category keys with those a live grant entitles, and the durable journal of every access
//! decision, committed on-chain as access events.
//!
//! Architecture invariant: plaintext exists only in memory, in this crate and its callers'
//! answers; every read is decided by the ledger's rules at the node's head and its access
//! event is journaled durably before the answer is released. Time and randomness are inputs.
//!
//! The FHIR application lives here too, with only HTTP left to the API: [`served`] (which
//! types are records, the delete marker, medledger's FHIR vocabulary), [`content`] (what a
//! write's content must be; its consent category and patient), [`search`] (the search
//! index and whole searches), [`export`] (Bulk Data jobs), [`bundle`] (transaction planning),
//! [`conditional`] (conditional creates and references) and [`consent`] (Consent ↔ grant).
//! Each interaction on stored data is decided here and answered as data the API renders:
//! [`resource`] (read, vread, the checks of a create, update or delete; what a caller may learn
//! of a record's existence), [`history`] (histories, Provenance), [`everything`]
//! (`$everything`), [`trail`] (AuditEvent), [`consents`] (Consent reads and gateway writes),
//! [`directory`] (directory reads) and [`views`] (who may see the `/v1` views, answered with
//! the snapshot decided on). [`people`]: what an identity is to a patient.
//!
//! API boundary: [`RecordService`] (with [`WriteRequest`], [`Written`], [`Read`]),
//! [`RecordError`], [`access::authorize`] (the single enforcement point), the journal's
//! [`journal::AuditLimits`], and the FHIR modules above.

pub mod access;
mod batch;
pub mod bundle;
pub mod conditional;
pub mod consent;
pub mod consents;
pub mod content;
pub mod directory;
mod error;
pub mod everything;
pub mod export;
pub mod history;
pub mod journal;
pub mod people;
pub mod resource;
pub mod search;
pub mod served;
mod service;
mod service_audit;
pub mod trail;
pub mod views;

pub use batch::*;
pub use error::RecordError;
pub use service::*;
