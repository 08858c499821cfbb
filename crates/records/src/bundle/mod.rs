//! FHIR transaction and batch Bundles, planned in full before anything is written: each
//! entry's request and resource checked on its own (`entries.rs`), then the whole transaction
//! resolved (`plan.rs`: credential, custodian staff, conditional creates, ids, references
//! between entries and conditional references, patients, consent categories, the content
//! checks of `content`). The API parses the Bundle, makes one call to [`plan`], submits the
//! plan as one ledger batch and renders the answer.

pub mod entries;
mod plan;

pub use plan::{Plan, PlanError, Planner, plan};
