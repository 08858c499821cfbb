//! Consent as FHIR clients read and write it. Reading: a patient's consents are for the
//! patient and the organisations holding their records (each organisation sees the grants
//! that concern it, not the patient's others); anyone else learns nothing, not even that the
//! patient exists, unless they may see the Patient. Writing: FHIR clients hold tokens, not
//! ledger keys, so the node signs a consent grant or revocation — only as the patient's **gateway delegate**, which the
//! patient appoints once with their own key, and only for a caller who is the patient or a
//! personal delegate of theirs. A Consent is mapped exactly ([`crate::consent::grant_of`]) or
//! refused with every reason, never widened. Everything is decided at one snapshot.

use medledger_ledger::{Payload, Purpose};
use medledger_node::chain::Chain;
use medledger_types::{IdentityId, RecordId, TimestampMs, TxId};

use crate::{
    RecordError, RecordService, access,
    consent::{acts_for, consent_resource, grant_of},
    people::{concerns, may_oversee, organisation_of},
};

/// Why a consent write is refused.
#[derive(Debug, thiserror::Error)]
pub enum ConsentError {
    /// The Consent does not map exactly to a grant: every reason.
    #[error("the Consent cannot be granted as written")]
    Unmappable(Vec<String>),
    /// The caller is neither the patient nor a personal delegate of theirs.
    #[error("only the patient, or a personal delegate of theirs, writes their consent")]
    NotActingFor,
    /// The patient has not appointed this node (identity `gateway`) to sign for them.
    #[error("this node signs consents only for patients who appointed it as their delegate")]
    NoGateway { gateway: IdentityId },
    /// No consent with that id, or one the caller may not see or write (the same answer).
    #[error("no such consent")]
    Unknown,
    /// No Patient record with that id, or one the caller may not see.
    #[error("no such patient")]
    UnknownPatient,
    /// The caller may see the Patient but not their consents.
    #[error("a patient's consents are for the patient and the organisations holding their records")]
    NotOverseer,
    #[error("this consent is already revoked")]
    Revoked,
    #[error(transparent)]
    Record(#[from] RecordError),
}

impl RecordService {
    /// Submits, signed as `caller`'s patient's gateway delegate, the grant the Consent `json`
    /// describes. Returns the transaction (the grant's id).
    pub fn grant_consent(
        &self,
        caller: &IdentityId,
        json: &serde_json::Value,
        now_ms: TimestampMs,
    ) -> Result<TxId, ConsentError> {
        let state = self.chain.snapshot();
        let now = now_ms.max(state.head_timestamp_ms());
        let (patient, payload) = grant_of(&state, json, now).map_err(ConsentError::Unmappable)?;
        self.check_gateway(&state, caller, &patient, now)?;
        drop(state);
        Ok(self.submit_as_gateway(payload, now_ms)?)
    }

    /// Submits, signed as the patient's gateway delegate, the revocation of the live grant
    /// `id_hex` names.
    pub fn revoke_consent(&self, caller: &IdentityId, id_hex: &str, now_ms: TimestampMs) -> Result<TxId, ConsentError> {
        let grant_id = TxId::from_hex(id_hex).map_err(|_| ConsentError::Unknown)?;
        let state = self.chain.snapshot();
        let grant = state.grant(&grant_id).ok_or(ConsentError::Unknown)?;
        // To a caller who may not write the patient's consent, a grant that exists answers as
        // one that does not: whether it exists, or was revoked, is not theirs to learn.
        if !acts_for(&state, caller, &grant.patient, now_ms) {
            return Err(ConsentError::Unknown);
        }
        if grant.revoked_at.is_some() {
            return Err(ConsentError::Revoked);
        }
        let patient = grant.patient;
        self.check_gateway(&state, caller, &patient, now_ms.max(state.head_timestamp_ms()))?;
        drop(state);
        Ok(self.submit_as_gateway(Payload::ConsentRevoke { grant_id }, now_ms)?)
    }

    /// The Consent of grant `id` as committed, if it is (for the caller that just wrote it).
    pub fn consent(&self, id: &TxId, now_ms: TimestampMs) -> Option<serde_json::Value> {
        let state = self.chain.snapshot();
        let grant = state.grant(id)?;
        Some(consent_resource(&state, grant, now_ms.max(state.head_timestamp_ms())))
    }

    /// That `caller` may write `patient`'s consent, and that this node is their gateway.
    fn check_gateway(
        &self,
        state: &medledger_ledger::State,
        caller: &IdentityId,
        patient: &IdentityId,
        now_ms: TimestampMs,
    ) -> Result<(), ConsentError> {
        if !acts_for(state, caller, patient, now_ms) {
            return Err(ConsentError::NotActingFor);
        }
        let gateway = self.node_identity();
        if !state.is_live_delegate(patient, &gateway, now_ms) {
            return Err(ConsentError::NoGateway { gateway });
        }
        Ok(())
    }
}

/// The Consent of grant `id_hex` if `caller` may see it: the patient, or an organisation
/// holding the patient's records (or its staff) that the grant concerns.
pub fn consent_as(chain: &Chain, caller: &IdentityId, id_hex: &str, now_ms: TimestampMs) -> Option<serde_json::Value> {
    let grant_id = TxId::from_hex(id_hex).ok()?;
    let state = chain.snapshot();
    let stored = state.grant(&grant_id)?;
    let allowed = *caller == stored.patient
        || (may_oversee(&state, caller, &stored.patient)
            && organisation_of(&state, caller).is_some_and(|org| concerns(&state, stored, &org)));
    allowed.then(|| consent_resource(&state, stored, now_ms.max(state.head_timestamp_ms())))
}

/// Every grant of the patient whose Patient record is `patient_record` (consents, grants
/// derived by sharing rules, break-glass), live or not, as Consents, that `caller` may see.
pub fn consents_of(
    chain: &Chain,
    caller: &IdentityId,
    patient_record: &RecordId,
    purpose: Purpose,
    now_ms: TimestampMs,
) -> Result<Vec<serde_json::Value>, ConsentError> {
    let state = chain.snapshot();
    let patient = match state.record(patient_record) {
        Some(head) if head.resource_type == "Patient" => head.patient,
        _ => return Err(ConsentError::UnknownPatient),
    };
    if !may_oversee(&state, caller, &patient) {
        // Someone who may not even see the Patient learns nothing, not that it exists.
        if !access::sees(&state, caller, patient_record, purpose, now_ms) {
            return Err(ConsentError::UnknownPatient);
        }
        return Err(ConsentError::NotOverseer);
    }
    let at = now_ms.max(state.head_timestamp_ms());
    // An organisation sees the consents that give it (or its staff) access, not the
    // patient's others.
    let viewer = (*caller != patient).then(|| organisation_of(&state, caller)).flatten();
    Ok(state
        .grants_of(&patient)
        .filter(|g| viewer.is_none_or(|org| concerns(&state, g, &org)))
        .map(|g| consent_resource(&state, g, at))
        .collect())
}
