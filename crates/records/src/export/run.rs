//! An export job's work, on a thread that may block: the records the caller's scopes and the
//! level select, consent decided before anything is counted, each record read (and audited)
//! as an `Export` access and written as one NDJSON line, within the job's byte quotas.

use std::collections::HashSet;

use medledger_fhir::{
    instant::instant_from_ms,
    outcome::escape_into,
    splice::{ServerMeta, with_server_meta},
};
use medledger_ledger::{AccessAction, Purpose};
use medledger_types::{IdentityId, RecordId, TimestampMs};

use crate::{
    RecordError, RecordService,
    access::{self, AccessRequest, Caller, Permits},
    export::jobs::{Finished, Full, Job, Jobs, NdjsonFile, Progress, push_line},
    journal::Synced,
    served::is_tombstone,
};

/// Most resources in one NDJSON file; a type with more is split into several files.
pub const FILE_LINES_MAX: usize = 10_000;

/// Records whose consent is decided between two looks at whether the job was cancelled.
const CONSENT_CHUNK: usize = 1_024;

/// What is exported: the level of the kick-off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// `GET /fhir/$export`: every record.
    System,
    /// `GET /fhir/Patient/$export`: every patient's compartment (all our types are in it).
    Patients,
    /// `GET /fhir/Group/{id}/$export`: the compartments of the patients with records in the
    /// custody of organisation `id`.
    Group(IdentityId),
}

/// A credential that may export: what its scopes allow at each level (consent is checked
/// apart, by [`crate::access`], which asks the [`Permits`] part).
pub trait ExportCredential: Permits + Send {
    /// Whether it lets its holder export a `resource_type` record of `patient` (`None`: any
    /// patient, for the kick-off's check of the types) at `level`.
    fn may_export(&self, level: Level, resource_type: &str, patient: Option<&IdentityId>) -> bool;
}

/// What a job exports, for whom.
pub struct Plan {
    pub level: Level,
    pub types: Vec<&'static str>,
    pub since_ms: Option<u64>,
    /// Who exports, and with what credential.
    pub requester: IdentityId,
    pub credential: Box<dyn ExportCredential>,
    pub purpose: Purpose,
}

/// A record the export may include, as the index had it when the job started.
#[derive(Clone)]
struct Candidate {
    record: RecordId,
    resource_type: &'static str,
    /// Its type's place in the plan, then its log index: the output order.
    order: (usize, u64),
    version: u32,
    versions: usize,
    committed_ms: u64,
}

/// Runs a job to the end (or until cancelled), on a thread that may block; `now_ms` is the
/// clock (time is an input).
pub fn run(jobs: &Jobs, job: &Job, service: &RecordService, plan: &Plan, now_ms: &dyn Fn() -> TimestampMs) -> Finished {
    let chain = &service.chain;
    let cancelled = || Finished::Failed { at_ms: now_ms(), diagnostics: "the export was cancelled".into() };
    let requester = plan.requester;
    let caller = Caller { identity: requester, credential: plan.credential.as_ref() };
    // What there is at the finalized head, and that head's block time (one snapshot, so the
    // index is at the same height).
    let (transaction_time_ms, mut candidates) = {
        let state = chain.snapshot();
        let transaction_time_ms = state.head_timestamp_ms().max(chain.genesis().genesis_time_ms);
        let index = state.index();
        let members: Option<HashSet<IdentityId>> = match plan.level {
            Level::Group(organisation) => {
                Some(index.records().filter(|r| r.custodian == organisation).map(|r| r.patient).collect())
            }
            _ => None,
        };
        let candidates: Vec<Candidate> = index
            .records()
            .filter_map(|r| {
                let rank = plan.types.iter().position(|t| *t == r.resource_type)?;
                let latest = r.versions.last()?;
                let wanted = plan.since_ms.is_none_or(|since| latest.position.committed_at_ms >= since)
                    && members.as_ref().is_none_or(|m| m.contains(&r.patient))
                    && plan.credential.may_export(plan.level, &r.resource_type, Some(&r.patient));
                wanted.then(|| Candidate {
                    record: r.record_id,
                    resource_type: plan.types[rank],
                    order: (rank, latest.position.log_index),
                    version: latest.version,
                    versions: r.versions.len(),
                    committed_ms: latest.position.committed_at_ms,
                })
            })
            .collect();
        (transaction_time_ms, candidates)
    };
    candidates.sort_by_key(|c| c.order);
    // Consent before anything is counted, at one snapshot; a cancel is noticed between chunks.
    let now = now_ms();
    let mut visible = Vec::new();
    let state = chain.snapshot();
    for chunk in candidates.chunks(CONSENT_CHUNK) {
        if job.cancelled() {
            return cancelled();
        }
        visible.extend(
            chunk
                .iter()
                .filter(|c| {
                    let request = AccessRequest {
                        caller: requester,
                        credential: caller.credential,
                        action: AccessAction::Export,
                        purpose: plan.purpose,
                        record: c.record,
                        version: Some(c.version),
                        now_ms: now,
                    };
                    access::check(&state, &request).is_some_and(|outcome| outcome.is_ok())
                })
                .cloned(),
        );
    }
    drop((candidates, state));
    let total = visible.len();
    job.set_progress(Progress { exporting: true, done: 0, total });
    let mut outputs: Vec<NdjsonFile> = Vec::new();
    let mut errors: Vec<NdjsonFile> = Vec::new();
    // Every export is recorded as it is read; the journal is synced once, before any output
    // can be downloaded.
    let mut synced = Synced::default();
    for (done, candidate) in visible.iter().enumerate() {
        if job.cancelled() {
            return cancelled();
        }
        job.set_progress(Progress { exporting: true, done, total });
        let outcome = export_one(service, caller, plan.purpose, candidate, now_ms(), &mut synced);
        let written = match outcome {
            Exported::Line(line) => jobs.reserve(job, line.len() + 1, now_ms()).map(|()| {
                push_line(&mut outputs, candidate.resource_type, candidate.resource_type, &line, FILE_LINES_MAX)
            }),
            Exported::Skipped => Ok(()),
            Exported::Error(issue) => {
                let line = outcome_line("error", issue.0, &issue.1);
                jobs.reserve(job, line.len() + 1, now_ms())
                    .map(|()| push_line(&mut errors, "OperationOutcome", "error", line.as_bytes(), FILE_LINES_MAX))
            }
        };
        if let Err(full) = written {
            let limits = jobs.limits();
            let why = match full {
                Full::Job => {
                    format!("the export reached this server's limit of {} MiB per export", limits.job_bytes_max >> 20)
                }
                Full::Identity => format!(
                    "this client's exports hold {} MiB of output, its quota (DELETE the status URLs of exports \
                     already downloaded)",
                    limits.identity_bytes_max >> 20
                ),
                Full::Node => "this server holds as much export output as it allows (other exports)".to_owned(),
            };
            let diagnostics = format!(
                "the export is incomplete: {why}; {} of {total} resources were processed, the rest are missing \
                 (narrow it with _type, _since or Group/{{id}}/$export, or retry later)",
                done
            );
            // Not counted: one short line, so the client is always told.
            push_line(
                &mut errors,
                "OperationOutcome",
                "error",
                outcome_line("error", "too-costly", &diagnostics).as_bytes(),
                FILE_LINES_MAX,
            );
            break;
        }
    }
    if let Err(e) = service.sync_audit(synced) {
        return Finished::Failed { at_ms: now_ms(), diagnostics: format!("the export could not be recorded: {e}") };
    }
    job.set_progress(Progress { exporting: true, done: total, total });
    Finished::Complete { at_ms: now_ms(), transaction_time_ms, outputs, errors }
}

/// What exporting one record came to.
enum Exported {
    /// The resource as one NDJSON line.
    Line(Vec<u8>),
    /// Deleted, or no longer visible to the caller: left out.
    Skipped,
    /// Visible but not exportable here: an issue code and diagnostics for the error file.
    Error((&'static str, String)),
}

fn export_one(
    service: &RecordService,
    caller: Caller<'_>,
    purpose: Purpose,
    c: &Candidate,
    now_ms: TimestampMs,
    synced: &mut Synced,
) -> Exported {
    let id = c.record.to_hex();
    // A deleted record's latest version is a delete marker (never the first version): look
    // before reading, so no export is recorded of what is not exported.
    if c.versions > 1 && service.plaintext_for_index(&c.record, c.version).is_ok_and(|p| is_tombstone(&p)) {
        return Exported::Skipped;
    }
    match service.read_deferred(caller, c.record, Some(c.version), purpose, AccessAction::Export, now_ms, synced) {
        Ok(read) if is_tombstone(&read.plaintext) => Exported::Skipped,
        Ok(read) => {
            let version = c.version.to_string();
            let last_updated = instant_from_ms(c.committed_ms);
            match with_server_meta(
                &read.plaintext,
                &ServerMeta { id: &id, version_id: &version, last_updated: &last_updated },
            ) {
                Ok(mut line) => {
                    // JSON strings cannot hold raw line breaks, so these are whitespace between
                    // tokens: spaces keep every value as stored and the resource on one line.
                    for byte in &mut line {
                        if matches!(*byte, b'\n' | b'\r') {
                            *byte = b' ';
                        }
                    }
                    Exported::Line(line)
                }
                Err(e) => Exported::Error((
                    "exception",
                    format!(
                        "{}/{id} version {}: the stored resource cannot be served: {e}",
                        c.resource_type, c.version
                    ),
                )),
            }
        }
        // Consent changed since it was checked: left out (the refusal is audited by the read).
        Err(RecordError::Denied(_)) => Exported::Skipped,
        Err(e) => {
            let code = match e {
                RecordError::CiphertextMissing | RecordError::Submit(_) => "transient",
                _ => "exception",
            };
            Exported::Error((
                code,
                format!("{}/{id} version {} could not be exported: {e}", c.resource_type, c.version),
            ))
        }
    }
}

/// An OperationOutcome with one issue, on one line.
fn outcome_line(severity: &str, code: &str, diagnostics: &str) -> String {
    let mut out = format!(
        r#"{{"resourceType":"OperationOutcome","issue":[{{"severity":"{severity}","code":"{code}","diagnostics":""#
    );
    escape_into(&mut out, diagnostics);
    out.push_str(r#""}]}"#);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_lines_are_one_line_of_json() {
        let line = outcome_line("error", "exception", "quote \" and\nnewline");
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["issue"][0]["diagnostics"], "quote \" and\nnewline");
    }
}
