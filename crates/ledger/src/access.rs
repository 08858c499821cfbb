//! Who may do what with a patient's record: a pure function of the finalized state, the
//! request and the time, so every node decides the same way and the decision can be audited.

use medledger_types::{IdentityId, Role, TimestampMs, TxId};

use crate::{
    state::{Grant, RecordHead, State},
    tx::Purpose,
};

/// Why access is allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Basis {
    /// The requester is the patient.
    Patient,
    /// The requester is the custodian organisation or its staff or clients.
    Custodian,
    /// A live consent grant (to the requester or to the requester's organisation).
    Grant(TxId),
}

/// Why access is refused; the code is what access events record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Denial {
    UnknownRequester,
    NoGrant,
    GrantExpired,
    GrantRevoked,
    ActionNotGranted,
    PurposeNotGranted,
}

impl Denial {
    pub fn code(&self) -> &'static str {
        match self {
            Denial::UnknownRequester => "unknown-requester",
            Denial::NoGrant => "no-grant",
            Denial::GrantExpired => "grant-expired",
            Denial::GrantRevoked => "grant-revoked",
            Denial::ActionNotGranted => "action-not-granted",
            Denial::PurposeNotGranted => "purpose-not-granted",
        }
    }
}

impl Basis {
    pub fn code(&self) -> &'static str {
        match self {
            Basis::Patient => "patient",
            Basis::Custodian => "custodian",
            Basis::Grant(_) => "consent-grant",
        }
    }

    pub fn grant(&self) -> Option<TxId> {
        match self {
            Basis::Grant(id) => Some(*id),
            _ => None,
        }
    }
}

/// Decides whether `requester` may perform `action` (an `actions` bit) on `record` (with id
/// `record_id`) for `purpose` at time `at_ms`. The most specific refusal is reported when no
/// grant applies, so patients and auditors see why.
pub fn decide(
    state: &State,
    requester: &IdentityId,
    record_id: &medledger_types::RecordId,
    record: &RecordHead,
    action: u8,
    purpose: Purpose,
    at_ms: TimestampMs,
) -> Result<Basis, Denial> {
    let Some(who) = state.identity(requester) else { return Err(Denial::UnknownRequester) };
    if *requester == record.patient {
        return Ok(Basis::Patient);
    }
    let staff_of = match who.role {
        Role::Practitioner | Role::SystemClient => who.organisation,
        Role::Organisation => Some(*requester),
        _ => None,
    };
    // The custodian and its staff and clients may read and write the records in its care.
    if staff_of == Some(record.custodian) {
        return Ok(Basis::Custodian);
    }
    // Grants to the requester itself, then to the requester's organisation.
    let mut holders = vec![*requester];
    if let Some(org) = staff_of
        && org != *requester
    {
        holders.push(org);
    }
    let mut best = Denial::NoGrant;
    for holder in holders {
        for grant in state.grants_between(&record.patient, &holder) {
            match check(grant, record_id, record, action, purpose, at_ms) {
                Ok(()) => return Ok(Basis::Grant(grant.id)),
                Err(denial) => best = more_specific(best, denial),
            }
        }
    }
    Err(best)
}

fn check(
    grant: &Grant,
    record_id: &medledger_types::RecordId,
    record: &RecordHead,
    action: u8,
    purpose: Purpose,
    at_ms: TimestampMs,
) -> Result<(), Denial> {
    if !grant.scope.covers(record_id, &record.resource_type, &record.category) {
        return Err(Denial::NoGrant);
    }
    if grant.revoked_at.is_some() {
        return Err(Denial::GrantRevoked);
    }
    if at_ms < grant.valid_from_ms || at_ms >= grant.valid_until_ms {
        return Err(Denial::GrantExpired);
    }
    if grant.actions & action != action {
        return Err(Denial::ActionNotGranted);
    }
    if grant.purpose != purpose {
        return Err(Denial::PurposeNotGranted);
    }
    Ok(())
}

/// Ranks refusals: a grant that covers the record but fails on a detail explains more than no
/// grant at all.
fn more_specific(a: Denial, b: Denial) -> Denial {
    fn rank(d: Denial) -> u8 {
        match d {
            Denial::UnknownRequester | Denial::NoGrant => 0,
            Denial::GrantRevoked => 1,
            Denial::GrantExpired => 2,
            Denial::ActionNotGranted => 3,
            Denial::PurposeNotGranted => 4,
        }
    }
    if rank(b) > rank(a) { b } else { a }
}
