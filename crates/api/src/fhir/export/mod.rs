//! FHIR Bulk Data Access (v2) export, asynchronous request pattern: `GET /fhir/$export`
//! (system level), `GET /fhir/Patient/$export` (every patient) and `GET
//! /fhir/Group/{id}/$export` (the patients in one organisation's custody) start a job that runs
//! in the background; `GET /fhir/$export-status/{job}` reports its progress and then its
//! manifest; the manifest's files are fetched from `GET /fhir/$export-file/{job}/{file}`;
//! `DELETE` on the status URL cancels a job or discards its output. `docs/fhir.md` describes it.
//!
//! Who sees what follows search exactly: the token's scopes must allow reading the type (and,
//! for `patient/…` scopes, the record must be of the token's own patient: the token is the
//! job's `records::export::ExportCredential`), and the ledger's consent rules must allow the
//! caller on the record (`records::access`). Records failing either are left out without a
//! trace in the output; consent is decided before anything is counted, so progress and counts
//! reveal only what the caller may see. Each exported record is read through the record
//! service as an `Export` access, so it is an on-chain access event like any read.
//!
//! Output is PHI in clear, so it is never written to disk: files are kept in memory, under the
//! per-job, per-identity and node-wide byte limits of `records::export::jobs::ExportLimits`, overwritten with
//! zeros when discarded, and discarded `ExportLimits::ttl_ms` after the job finished
//! (sooner when its identity holds more than its share of a full node; or when the client
//! deletes the job). Only the client (token identity) that started a job can see its status
//! and files; to anyone else it does not exist (404).
//!
//! Here: `kick_off.rs` (the kick-off requests and their parameters, then one call:
//! `records::export::run` on a blocking thread) and `status.rs` (status, files and delete).
//! The job itself (what it exports, for whom, the NDJSON it writes) and the jobs' bookkeeping
//! and quotas are `records::export`.

pub(crate) mod kick_off;
pub(crate) mod status;
