//! What a caller may learn of a record's existence: nothing, unless it may see the record. A
//! record (or patient) the caller may not see answers exactly as an id that names nothing —
//! same status, same message — on every route that takes one: FHIR read, vread, history,
//! update, delete, Provenance, AuditEvent, Consent, `$everything` and Bundle entries, and
//! `/v1/records`. The refusal is still audited where it always was (the patient sees the
//! attempt); only the caller's answer no longer tells a real id from a random one.
//!
//! "May see" is consent's read decision (`records::access::may_read`) for the request's
//! purpose: the patient, the custodian's staff, or a live grant, rule or break-glass covering
//! the record.

use medledger_ledger::{Purpose, RecordHead, State};
use medledger_records::access::{self, Basis, Refusal};
use medledger_types::{IdentityId, RecordId, TimestampMs};

use crate::{app::AppState, clock::now_ms};

/// The head of record `record_id`, if it exists as a `resource_type`.
pub(crate) fn head_of_type(app: &AppState, record_id: &RecordId, resource_type: &str) -> Option<RecordHead> {
    app.chain.snapshot().record(record_id).filter(|h| h.resource_type == resource_type).cloned()
}

/// Consent's decision on `caller` reading record `record_id` for `purpose` at `now_ms`; `None`
/// when the record does not exist.
pub(crate) fn read_decision(
    state: &State,
    caller: &IdentityId,
    record_id: &RecordId,
    purpose: Purpose,
    now_ms: TimestampMs,
) -> Option<Result<Basis, Refusal>> {
    access::may_read(state, caller, record_id, purpose, now_ms)
}

/// Whether `caller` may see record `record_id` for `purpose` now (a record that does not exist
/// is seen by no one).
pub(crate) fn sees(state: &State, caller: &IdentityId, record_id: &RecordId, purpose: Purpose) -> bool {
    read_decision(state, caller, record_id, purpose, now_ms()).is_some_and(|d| d.is_ok())
}
