//! Delegates: people (or a member's validator as the patient's gateway) the patient lets sign
//! consent and manage sharing rules for them, until a given time or a dismissal.

use medledger_types::{IdentityId, Role, limits};

use super::{
    Delegation,
    overlay::{OpContext, Overlay},
};
use crate::error::TxError;

impl Overlay<'_> {
    /// Appoints a delegate, signed by the patient themself (delegation does not chain).
    pub(super) fn appoint_delegate(
        &mut self,
        cx: OpContext,
        patient: &IdentityId,
        delegate: &IdentityId,
        valid_until_ms: &u64,
    ) -> Result<(), TxError> {
        let OpContext { signer, role, tx_id, block: ctx, .. } = cx;
        // The patient's own signature, never a delegate's: delegation does not chain.
        if signer != *patient || role != Some(Role::Patient) {
            return Err(TxError::NotAuthorised("only the patient appoints their delegates"));
        }
        if delegate == patient {
            return Err(TxError::InvalidField("a patient cannot be their own delegate"));
        }
        // A person: a practitioner (a trusted clinician) or a patient identity (a parent
        // or guardian registered in their own right); or a member's validator as the
        // patient's FHIR gateway, signing the Consents the patient (or their personal
        // delegate) writes through its API. Organisations and system clients act under
        // their own authority, never as a patient.
        let role = self.require(delegate, "delegate")?.role;
        if !matches!(role, Role::Practitioner | Role::Patient | Role::Validator) {
            return Err(TxError::InvalidField(
                "a delegate must be a practitioner, a patient identity or a member's validator",
            ));
        }
        if *valid_until_ms <= ctx.timestamp_ms {
            return Err(TxError::InvalidField("delegation has already ended"));
        }
        let mut all = self.delegations(patient).cloned().unwrap_or_default();
        if all.iter().any(|d| d.delegate == *delegate && d.is_live(ctx.timestamp_ms)) {
            return Err(TxError::InvalidField("already a live delegate of this patient: dismiss first"));
        }
        if all.iter().filter(|d| d.is_live(ctx.timestamp_ms)).count() >= limits::DELEGATES_PER_PATIENT_MAX {
            return Err(TxError::InvalidField("the patient already has the most live delegates"));
        }
        all.push(Delegation {
            id: tx_id,
            patient: *patient,
            delegate: *delegate,
            appointed_at: ctx.height,
            valid_until_ms: *valid_until_ms,
            dismissed_at: None,
            dismissed_by: None,
        });
        self.delta.delegations.insert(*patient, all);
        Ok(())
    }

    /// Ends a live delegation, signed by the patient or by the delegate stepping down.
    pub(super) fn dismiss_delegate(
        &mut self,
        cx: OpContext,
        patient: &IdentityId,
        delegate: &IdentityId,
    ) -> Result<(), TxError> {
        let OpContext { signer, block: ctx, .. } = cx;
        // The patient dismisses; a delegate may step down, but dismisses no one else.
        if signer != *patient && signer != *delegate {
            return Err(TxError::NotAuthorised("only the patient, or the delegate stepping down, ends a delegation"));
        }
        let mut all = self.delegations(patient).cloned().unwrap_or_default();
        let live = all
            .iter_mut()
            .find(|d| d.delegate == *delegate && d.is_live(ctx.timestamp_ms))
            .ok_or(TxError::InvalidField("not a live delegate of this patient"))?;
        live.dismissed_at = Some(ctx.height);
        live.dismissed_by = Some(signer);
        self.delta.delegations.insert(*patient, all);
        Ok(())
    }
}
