//! What an identity is to a patient's data, read from the ledger state: the organisation a
//! caller acts for, whether it oversees a patient (the patient, or an organisation holding
//! their records), whether a grant concerns an organisation, and how the node that recorded an
//! access event is named for people.

use medledger_types::{IdentityId, Role};

/// How a recorder of access events is named for people: "node-0 (St Mary's Hospital)".
pub fn recorder_display(state: &medledger_ledger::State, recorder: &IdentityId) -> String {
    match state.identity(recorder) {
        Some(node) => match node.organisation.and_then(|o| state.identity(&o)) {
            Some(org) => format!("{} ({})", node.name, org.name),
            None => node.name.clone(),
        },
        None => format!("unknown recorder {}", recorder.to_hex()),
    }
}

/// Who may see a patient's consents and audit trail: the patient, and the staff and systems
/// of an organisation holding the patient's records.
pub fn may_oversee(state: &medledger_ledger::State, caller: &IdentityId, patient: &IdentityId) -> bool {
    caller == patient || organisation_of(state, caller).is_some_and(|o| state.custodies(&o, patient))
}

/// Whether `grant` gives access to `organisation` or one of its staff (what an organisation,
/// as opposed to the patient, may see of a patient's consents).
pub fn concerns(state: &medledger_ledger::State, grant: &medledger_ledger::Grant, organisation: &IdentityId) -> bool {
    grant.grantee == *organisation || organisation_of(state, &grant.grantee) == Some(*organisation)
}

/// The organisation a caller acts for: itself, or the one its practitioner or system client
/// belongs to.
pub fn organisation_of(state: &medledger_ledger::State, caller: &IdentityId) -> Option<IdentityId> {
    state.identity(caller).and_then(|w| match w.role {
        Role::Organisation => Some(w.id),
        Role::Practitioner | Role::SystemClient => w.organisation,
        _ => None,
    })
}
