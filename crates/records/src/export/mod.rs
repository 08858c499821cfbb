//! FHIR Bulk Data export jobs: what a job exports for whom and the NDJSON it writes
//! (`run.rs`), and the jobs' bookkeeping and quotas (`jobs.rs`). The API's `fhir/export/`
//! parses the kick-off, starts [`run`] on a blocking thread and renders status and files.
//!
//! Who sees what follows search exactly: the caller's credential must allow exporting the
//! type at the level ([`ExportCredential`]), and the ledger's consent rules must allow the
//! caller on the record ([`crate::access`]). Records failing either are left out without a
//! trace in the output; consent is decided before anything is counted, so progress and counts
//! reveal only what the caller may see. Each exported record is read through the record
//! service as an `Export` access, so it is an on-chain access event like any read.
//!
//! Output is PHI in clear, so it is never written to disk: files are kept in memory, under
//! the per-job, per-identity and node-wide byte limits of [`jobs::ExportLimits`], overwritten
//! with zeros when discarded.

pub mod jobs;
mod run;

pub use run::{ExportCredential, FILE_LINES_MAX, Level, Plan, run};
