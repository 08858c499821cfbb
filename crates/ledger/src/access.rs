//! Who may do what with a patient's record: a pure function of the finalized state, the
//! request and the time, so every node decides the same way and the decision can be audited.

use medledger_types::{IdentityId, Role, TimestampMs, TxId};

use crate::{
    state::{Grant, GrantOrigin, RecordHead, State},
    tx::{AccessOutcome, Purpose},
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
    /// The requester's own break-glass declaration (its transaction id), within its window and
    /// for purpose Emergency. Reads under it are audited with outcome `BreakGlass`.
    BreakGlass(TxId),
    /// A live grant derived by a sharing rule (`crate::rules`).
    Rule { rule_id: TxId, grant_id: TxId },
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
    /// A break-glass declaration covers the record but its window is over (or not begun).
    BreakGlassExpired,
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
            Denial::BreakGlassExpired => "break-glass-expired",
        }
    }
}

impl Basis {
    pub fn code(&self) -> &'static str {
        match self {
            Basis::Patient => "patient",
            Basis::Custodian => "custodian",
            Basis::Grant(_) => "consent-grant",
            Basis::BreakGlass(_) => "break-glass",
            Basis::Rule { .. } => "sharing-rule",
        }
    }

    /// The grant to name in the access event (break-glass declarations and rule-derived
    /// access are grants in the state).
    pub fn grant(&self) -> Option<TxId> {
        match self {
            Basis::Grant(id) | Basis::BreakGlass(id) => Some(*id),
            Basis::Rule { grant_id, .. } => Some(*grant_id),
            Basis::Patient | Basis::Custodian => None,
        }
    }

    /// The outcome an access event records for an access allowed on this basis.
    pub fn outcome(&self) -> AccessOutcome {
        match self {
            Basis::BreakGlass(_) => AccessOutcome::BreakGlass,
            _ => AccessOutcome::Allowed,
        }
    }
}

/// Decides whether `requester` may perform `action` (an `actions` bit) on `record` (with id
/// `record_id`) for `purpose` at time `at_ms`. The most specific refusal is reported when no
/// grant applies, so patients and auditors see why. Consent and rule-derived grants are
/// preferred, oldest first, over break-glass, so an access is flagged as an emergency only
/// when nothing else allows it.
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
    let mut break_glass = None;
    for holder in holders {
        for grant in state.grants_between(&record.patient, &holder) {
            match check(grant, record_id, record, action, purpose, at_ms) {
                Ok(()) => match grant.origin {
                    GrantOrigin::Consent => return Ok(Basis::Grant(grant.id)),
                    GrantOrigin::Rule { rule_id, .. } => return Ok(Basis::Rule { rule_id, grant_id: grant.id }),
                    GrantOrigin::BreakGlass { .. } => {
                        break_glass.get_or_insert(Basis::BreakGlass(grant.id));
                    }
                },
                Err(denial) => best = more_specific(best, denial),
            }
        }
    }
    break_glass.ok_or(best)
}

/// What a node decides for a request arriving at its clock time `node_ms`: [`decide`] at the
/// finalized head's block time (grants start and expire by block time, as consensus applies
/// them), which must also allow at `node_ms`. The second check matters when the chain stalls:
/// block time stops, and a grant that has expired by the clock must not stay usable until the
/// next block. Either refusal wins, block time's first.
#[allow(clippy::too_many_arguments)]
pub fn decide_at_head(
    state: &State,
    requester: &IdentityId,
    record_id: &medledger_types::RecordId,
    record: &RecordHead,
    action: u8,
    purpose: Purpose,
    node_ms: TimestampMs,
) -> Result<Basis, Denial> {
    decide(state, requester, record_id, record, action, purpose, state.head_timestamp_ms())?;
    // The basis is the one in force at the node's clock: the access event is dated by that
    // clock, and the ledger checks the named grant was in its period then.
    decide(state, requester, record_id, record, action, purpose, node_ms)
}

/// Whether `holder` itself holds a live grant (consent or rule-derived; never break-glass,
/// which is served only by the custodian's node) to read `record` at block time `at_ms`, for
/// any purpose: whether a node of `holder` may be sent the record's ciphertexts.
pub fn holds_live_read_grant(
    state: &State,
    holder: &IdentityId,
    record_id: &medledger_types::RecordId,
    record: &RecordHead,
    at_ms: TimestampMs,
) -> bool {
    state.grants_between(&record.patient, holder).any(|g| {
        !g.is_break_glass()
            && g.is_live(at_ms)
            && g.actions & crate::tx::actions::READ != 0
            && g.scope.covers(record_id, &record.resource_type, &record.category)
    })
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
        return Err(if grant.is_break_glass() { Denial::BreakGlassExpired } else { Denial::GrantExpired });
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
            Denial::GrantExpired | Denial::BreakGlassExpired => 2,
            Denial::ActionNotGranted => 3,
            Denial::PurposeNotGranted => 4,
        }
    }
    if rank(b) > rank(a) { b } else { a }
}
