//! Who may see the patient's own views (`/v1/patients/{id}/…`), a record's version list
//! (`/v1/records/{id}/history`) and an organisation's break-glass queue — decided here, and
//! answered with the snapshot the decision was made on, so what a view shows is exactly what
//! was decided on (one height) and the API only renders it.

use std::sync::Arc;

use medledger_ledger::{AccessAction, Purpose};
use medledger_node::{chain::Chain, index::BreakGlassEntry, snapshot::Snapshot};
use medledger_types::{IdentityId, RecordId, Role, TimestampMs};

use crate::{
    RecordError, RecordService,
    access::{self, AccessRequest, Basis, SignedRequest},
};

/// The current snapshot if `requester` is the patient `patient` (an identity of role patient).
pub fn as_the_patient(chain: &Chain, requester: &IdentityId, patient: &IdentityId) -> Option<Arc<Snapshot>> {
    let snapshot = chain.snapshot();
    let is_patient = requester == patient && snapshot.identity(requester).is_some_and(|i| i.role == Role::Patient);
    is_patient.then_some(snapshot)
}

/// The current snapshot if `requester` is the patient `patient` or, at `now_ms`, a live
/// delegate of theirs.
pub fn as_the_patient_or_delegate(
    chain: &Chain,
    requester: &IdentityId,
    patient: &IdentityId,
    now_ms: TimestampMs,
) -> Option<Arc<Snapshot>> {
    let snapshot = chain.snapshot();
    let is_patient = requester == patient && snapshot.identity(requester).is_some_and(|i| i.role == Role::Patient);
    (is_patient || snapshot.is_live_delegate(patient, requester, now_ms)).then_some(snapshot)
}

/// A record's versions as a signed request may list them: the decision (consent's, for a
/// history access) and the snapshot it was made on. The decision is audited when `service`
/// (this node serves records) is given. `None`: no such record, or one the requester may not
/// see (the same answer).
pub fn record_history_as(
    chain: &Chain,
    service: Option<&RecordService>,
    requester: IdentityId,
    record: RecordId,
    purpose: Purpose,
    now_ms: TimestampMs,
) -> Result<Option<(Arc<Snapshot>, Basis)>, RecordError> {
    let snapshot = chain.snapshot();
    let request = AccessRequest {
        caller: requester,
        credential: &SignedRequest,
        action: AccessAction::History,
        purpose,
        record,
        version: None,
        now_ms,
    };
    let Some(decision) = access::authorize(&snapshot, &request) else { return Ok(None) };
    if let Some(service) = service {
        service.audit_decision(&decision, now_ms)?;
    }
    Ok(decision.outcome.ok().map(|basis| (snapshot, basis)))
}

/// The break-glass queue `requester` may see: its organisation (an organisation, or the one a
/// practitioner belongs to) and the snapshot; `None` for anyone else.
pub fn break_glass_queue_of(chain: &Chain, requester: &IdentityId) -> Option<(Arc<Snapshot>, IdentityId)> {
    let snapshot = chain.snapshot();
    let organisation = match snapshot.identity(requester).map(|i| (i.role, i.organisation)) {
        Some((Role::Organisation, _)) => *requester,
        Some((Role::Practitioner, Some(org))) => org,
        _ => return None,
    };
    Some((snapshot, organisation))
}

/// Why `organisation` sees a break-glass declaration, and whether `requester` may review it:
/// the declarer's own organisation sees it (and may not review it), and the patient's
/// custodians review it (except the declarer). `None`: not theirs to see.
pub fn break_glass_basis(
    snapshot: &Snapshot,
    organisation: &IdentityId,
    requester: &IdentityId,
    declaration: &BreakGlassEntry,
) -> Option<(&'static str, bool)> {
    let declarer_org = snapshot.identity(&declaration.practitioner).and_then(|i| i.organisation);
    if declarer_org == Some(*organisation) {
        Some(("declarer-organisation", false))
    } else if snapshot.custodies(organisation, &declaration.patient) {
        Some(("custodian", *requester != declaration.practitioner))
    } else {
        None
    }
}

/// Identity `id` as `viewer` may see it in the public registry (`GET /v1/identities/{id}`):
/// everyone but patients, whom only members and the patient themself see (a patient's id
/// answers as unknown to anyone else). `viewer_is_member`: the viewer is a consortium member.
pub fn identity_as(
    chain: &Chain,
    viewer: Option<&IdentityId>,
    viewer_is_member: bool,
    id: &IdentityId,
) -> Option<medledger_ledger::Identity> {
    chain
        .snapshot()
        .identity(id)
        .filter(|who| who.role != Role::Patient || viewer_is_member || viewer == Some(&who.id))
        .cloned()
}

/// Whether `id` is a member organisation (a Bulk Data Group stands for its patients).
pub fn is_organisation(chain: &Chain, id: &IdentityId) -> bool {
    chain.snapshot().identity(id).is_some_and(|who| who.role == Role::Organisation)
}
