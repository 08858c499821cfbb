//! Consent: grants the patient (or a live delegate of theirs) gives, and their revocation.

use medledger_types::{Role, TxId};

use super::{
    Grant, GrantOrigin,
    overlay::{OpContext, Overlay, check_resource_type},
};
use crate::{
    error::TxError,
    tx::{Payload, Scope, actions},
};

impl Overlay<'_> {
    /// Records a consent grant (`op` is a `Payload::ConsentGrant`): signed for the patient, to an
    /// organisation, practitioner or system client, non-empty actions, a period not yet over, a
    /// well-formed scope of the patient's own records.
    pub(super) fn grant_consent(&mut self, cx: OpContext, op: &Payload) -> Result<(), TxError> {
        let OpContext { signer, tx_id, block: ctx, .. } = cx;
        let Payload::ConsentGrant { patient, grantee, scope, actions: acts, purpose, valid_from_ms, valid_until_ms } =
            op
        else {
            unreachable!("apply_op dispatches consent grants here")
        };
        if self.require(patient, "patient")?.role != Role::Patient {
            return Err(TxError::InvalidField("patient must be a patient identity"));
        }
        if !self.acts_for_patient(&signer, patient, ctx.timestamp_ms) {
            return Err(TxError::NotAuthorised(
                "only the patient or a live delegate of theirs grants access to their data",
            ));
        }
        let grantee_role = self.require(grantee, "grantee")?.role;
        if !matches!(grantee_role, Role::Organisation | Role::Practitioner | Role::SystemClient) {
            return Err(TxError::InvalidField("grantee must be an organisation, practitioner or system client"));
        }
        if *acts == 0 || *acts & !actions::ALL != 0 {
            return Err(TxError::InvalidField("actions must be a non-empty subset of read and write"));
        }
        if valid_until_ms <= valid_from_ms {
            return Err(TxError::InvalidField("validity period ends before it starts"));
        }
        if *valid_until_ms <= ctx.timestamp_ms {
            return Err(TxError::InvalidField("grant has already expired"));
        }
        match scope {
            Scope::All => {}
            Scope::ResourceTypes(types) => {
                if types.is_empty() {
                    return Err(TxError::InvalidField("empty resource type scope"));
                }
                types.iter().try_for_each(|t| check_resource_type(t))?;
            }
            Scope::Categories(categories) => {
                if categories.is_empty() || !categories.iter().all(|c| medledger_types::is_category(c)) {
                    return Err(TxError::InvalidField("category scope must name known categories"));
                }
            }
            Scope::Records(records) => {
                if records.is_empty() {
                    return Err(TxError::InvalidField("empty record scope"));
                }
                for r in records {
                    match self.record(r) {
                        Some(head) if head.patient == *patient => {}
                        _ => {
                            return Err(TxError::InvalidField("scope names a record that is not the patient's"));
                        }
                    }
                }
            }
        }
        self.insert_grant(Grant {
            id: tx_id,
            patient: *patient,
            grantee: *grantee,
            scope: scope.clone(),
            actions: *acts,
            purpose: *purpose,
            valid_from_ms: *valid_from_ms,
            valid_until_ms: *valid_until_ms,
            granted_at: ctx.height,
            signed_by: signer,
            revoked_at: None,
            revoked_at_ms: None,
            revoked_by: None,
            origin: GrantOrigin::Consent,
        });
        Ok(())
    }

    /// Revokes a live grant of any origin, signed for its patient.
    pub(super) fn revoke_consent(&mut self, cx: OpContext, grant_id: &TxId) -> Result<(), TxError> {
        let OpContext { signer, block: ctx, .. } = cx;
        let grant = self.grant(grant_id).ok_or(TxError::UnknownGrant(*grant_id))?;
        if !self.acts_for_patient(&signer, &grant.patient, ctx.timestamp_ms) {
            return Err(TxError::NotAuthorised(
                "only the patient whose data it covers, or a live delegate of theirs, revokes a grant",
            ));
        }
        if grant.revoked_at.is_some() {
            return Err(TxError::InvalidField("grant is already revoked"));
        }
        // Any grant of the patient: consent, break-glass or rule-derived.
        self.revoke_grant(grant_id, (ctx.height, ctx.timestamp_ms), signer);
        Ok(())
    }
}
