//! The node's single enforcement point: whether a caller may use one of a patient's records is
//! decided by [`authorize`] (or, without the event, [`check`]), here, and nowhere else in the node (the API, the record service,
//! searches, exports and Bundles all ask it). It takes the whole request — caller, what the
//! caller's credential permits, action, purpose, record and time — and returns the decision
//! together with the access event that records it, so that no entry point can decide without
//! the means to audit, or audit something other than what was decided.
//!
//! The order is fixed: a record that does not exist is no decision at all (`None`); then the
//! credential (a SMART token's scopes; a signed request carries the identity's whole authority);
//! then consent, by the ledger's rules (`ledger::access`) at the node's head and the node's
//! clock. The event is dated `now_ms`, names the version asked for when it exists (else the
//! latest: the ledger refuses events naming versions that do not exist), and is `None` when
//! the caller is not a registered identity (the ledger accepts events only about registered
//! accessors; an outsider's refusal is answered, not recorded).

pub use medledger_ledger::access::{Basis, Denial};
use medledger_ledger::{AccessAction, AccessEvent, AccessOutcome, Purpose, RecordHead, State, actions};
use medledger_types::{IdentityId, RecordId, TimestampMs};

/// SMART interactions, as bits: what a credential may do with a resource type.
pub mod interactions {
    pub const CREATE: u8 = 1;
    pub const READ: u8 = 2;
    pub const UPDATE: u8 = 4;
    pub const DELETE: u8 = 8;
    pub const SEARCH: u8 = 16;
    pub const ALL: u8 = 31;
}

/// What a caller's credential permits before consent is asked.
pub trait Permits: Sync {
    /// Whether `interaction` (one of [`interactions`]) on `resource_type` is permitted.
    fn permits(&self, resource_type: &str, interaction: u8) -> bool;
}

/// A request signed with the identity's own key: its whole authority (consent still decides).
#[derive(Clone, Copy, Debug, Default)]
pub struct SignedRequest;

impl Permits for SignedRequest {
    fn permits(&self, _: &str, _: u8) -> bool {
        true
    }
}

/// Who asks, and what their credential permits.
#[derive(Clone, Copy)]
pub struct Caller<'a> {
    pub identity: IdentityId,
    pub credential: &'a dyn Permits,
}

impl Caller<'static> {
    /// A request signed with `identity`'s own key.
    pub fn signed(identity: IdentityId) -> Self {
        Caller { identity, credential: &SignedRequest }
    }
}

/// One request to use a record.
#[derive(Clone, Copy)]
pub struct AccessRequest<'a> {
    pub caller: IdentityId,
    pub credential: &'a dyn Permits,
    /// What the access is, as the event records it: a read, a history, a search hit, an export.
    pub action: AccessAction,
    pub purpose: Purpose,
    pub record: RecordId,
    /// The version asked for (`None`: the latest).
    pub version: Option<u32>,
    pub now_ms: TimestampMs,
}

/// Why a request is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The credential does not permit the interaction on the record's type (a token's scopes).
    Credential,
    /// Consent does not allow it.
    Consent(Denial),
}

impl Refusal {
    /// The code access events record.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::Credential => "scope-not-granted",
            Refusal::Consent(denial) => denial.code(),
        }
    }
}

/// A decision and the access event that records it.
#[derive(Clone, Debug)]
pub struct Decision {
    pub outcome: Result<Basis, Refusal>,
    /// The event to record; `None` when the caller is not a registered identity.
    pub event: Option<AccessEvent>,
    /// The record's head the decision was made on.
    pub head: RecordHead,
}

impl Decision {
    pub fn is_allowed(&self) -> bool {
        self.outcome.is_ok()
    }

    /// The consent denial, when consent refused.
    pub fn denial(&self) -> Option<Denial> {
        match self.outcome {
            Err(Refusal::Consent(denial)) => Some(denial),
            _ => None,
        }
    }

    /// This decision turned into a refusal with `code` (allowed, but not served: e.g. the
    /// ciphertext could not be fetched): the attempt stays on the record as a denial.
    pub fn refused_after_all(&self, code: &str) -> Option<AccessEvent> {
        self.event.as_ref().map(|e| AccessEvent {
            outcome: AccessOutcome::Denied,
            grant_id: None,
            reason: code.to_owned(),
            ..e.clone()
        })
    }
}

/// The interaction a credential must permit for `action`.
fn interaction_of(action: AccessAction) -> u8 {
    match action {
        AccessAction::Read | AccessAction::Export => interactions::READ,
        // An instance history is a read of the record; a type history, a search of the type.
        AccessAction::History => interactions::READ | interactions::SEARCH,
        AccessAction::Search => interactions::SEARCH | interactions::READ,
        AccessAction::Write => interactions::CREATE | interactions::UPDATE | interactions::DELETE,
    }
}

/// Decides `request` on `state` (the node's finalized head); `None` when the record does not
/// exist. A search hit is permitted by a scope for searching or reading the type.
pub fn authorize(state: &State, request: &AccessRequest<'_>) -> Option<Decision> {
    let head = state.record(&request.record)?;
    let outcome = outcome(state, head, request);
    let version = request.version.filter(|v| (1..=head.latest_version).contains(v)).unwrap_or(head.latest_version);
    let event = state.identity(&request.caller).is_some().then(|| {
        let (outcome, grant_id, reason) = match &outcome {
            Ok(basis) => (basis.outcome(), basis.grant(), basis.code()),
            Err(refusal) => (AccessOutcome::Denied, None, refusal.code()),
        };
        AccessEvent {
            accessor: request.caller,
            patient: head.patient,
            record: Some((request.record, version)),
            action: request.action,
            purpose: request.purpose,
            outcome,
            grant_id,
            reason: reason.to_owned(),
            at_ms: request.now_ms,
        }
    });
    Some(Decision { outcome, event, head: head.clone() })
}

/// [`authorize`] without the event: for filtering many records (a search's candidates, a type
/// history) before the ones kept are decided, and recorded, one by one. `None` when the
/// record does not exist.
pub fn check(state: &State, request: &AccessRequest<'_>) -> Option<Result<Basis, Refusal>> {
    state.record(&request.record).map(|head| outcome(state, head, request))
}

fn outcome(state: &State, head: &RecordHead, request: &AccessRequest<'_>) -> Result<Basis, Refusal> {
    let wanted = interaction_of(request.action);
    let permitted =
        [interactions::CREATE, interactions::READ, interactions::UPDATE, interactions::DELETE, interactions::SEARCH]
            .into_iter()
            .filter(|bit| wanted & bit != 0)
            .any(|bit| request.credential.permits(&head.resource_type, bit));
    if !permitted {
        return Err(Refusal::Credential);
    }
    medledger_ledger::access::decide_at_head(
        state,
        &request.caller,
        &request.record,
        head,
        actions::READ,
        request.purpose,
        request.now_ms,
    )
    .map_err(Refusal::Consent)
}

/// Whether `caller` may see `record` for `purpose` at `now_ms` ([`may_read`] allows it); a
/// record that does not exist is seen by no one.
pub fn sees(state: &State, caller: &IdentityId, record: &RecordId, purpose: Purpose, now_ms: TimestampMs) -> bool {
    may_read(state, caller, record, purpose, now_ms).is_some_and(|d| d.is_ok())
}

/// Consent's read decision for `caller` on `record` for `purpose` with a signed request's
/// whole authority: whether the caller may see the record at all. `None` when it does not
/// exist.
pub fn may_read(
    state: &State,
    caller: &IdentityId,
    record: &RecordId,
    purpose: Purpose,
    now_ms: TimestampMs,
) -> Option<Result<Basis, Refusal>> {
    let request = AccessRequest {
        caller: *caller,
        credential: &SignedRequest,
        action: AccessAction::Read,
        purpose,
        record: *record,
        version: None,
        now_ms,
    };
    check(state, &request)
}

/// Whether `who` is `organisation` itself or one of its practitioners or system clients.
pub fn is_staff(state: &State, who: &IdentityId, organisation: &IdentityId) -> bool {
    state.identity(who).is_some_and(|w| medledger_ledger::rules::acts_for(w, organisation))
}
