//! Break-glass: emergency access a care provider's practitioner declares without consent, and
//! its review by the patient or another custodian of the patient's records.

use medledger_types::{IdentityId, OrganisationKind, Role, TxId, limits};

use super::{
    BreakGlassReview, Grant, GrantOrigin,
    overlay::{OpContext, Overlay, check_reason},
};
use crate::{
    error::TxError,
    tx::{Purpose, ReviewVerdict, Scope, actions},
};

impl Overlay<'_> {
    /// Declares break-glass access: read access to all the patient's records for purpose
    /// Emergency during the window, capped per practitioner until reviewed.
    pub(super) fn declare_break_glass(
        &mut self,
        cx: OpContext,
        patient: &IdentityId,
        reason: &str,
        window_ms: &u64,
    ) -> Result<(), TxError> {
        let OpContext { signer, role, tx_id, block: ctx, .. } = cx;
        if role != Some(Role::Practitioner) {
            return Err(TxError::NotAuthorised("only a practitioner declares break-glass access"));
        }
        // Emergencies are treated by care providers: an insurer's or a research
        // institute's staff have no emergency that justifies reading without consent.
        let declarer_org = self.require(&signer, "signer")?.organisation;
        let care_provider = declarer_org
            .and_then(|o| self.identity(&o))
            .is_some_and(|o| o.kind == Some(OrganisationKind::CareProvider));
        if !care_provider {
            return Err(TxError::NotAuthorised(
                "only clinicians of a care-providing organisation declare break-glass access",
            ));
        }
        // Capped: a practitioner's declarations must be reviewed before more are made,
        // and one open window per patient is enough.
        let declared = self.declared_break_glass(&signer).cloned().unwrap_or_default();
        if declared.iter().filter_map(|id| self.grant(id)).any(|g| g.patient == *patient && g.is_live(ctx.timestamp_ms))
        {
            return Err(TxError::InvalidField("this practitioner's break-glass access to this patient is still open"));
        }
        // Recent ones only: a declaration nobody reviews (a patient who never can, say)
        // must not bar the clinician from emergencies for good.
        let recent = ctx.timestamp_ms.saturating_sub(limits::BREAK_GLASS_REVIEW_WINDOW_MS);
        let unreviewed = declared
            .iter()
            .filter_map(|id| self.grant(id))
            .filter(|g| g.needs_review() && g.valid_from_ms >= recent)
            .count();
        if unreviewed >= limits::BREAK_GLASS_UNREVIEWED_PER_PRACTITIONER_MAX {
            return Err(TxError::NotAuthorised(
                "this practitioner's earlier break-glass accesses await review: no more until reviewed",
            ));
        }
        if self.require(patient, "patient")?.role != Role::Patient {
            return Err(TxError::InvalidField("patient must be a patient identity"));
        }
        if reason.is_empty() {
            return Err(TxError::InvalidField("break-glass access needs a reason code"));
        }
        check_reason(reason)?;
        if !(limits::BREAK_GLASS_WINDOW_MIN_MS..=limits::BREAK_GLASS_WINDOW_MAX_MS).contains(window_ms) {
            return Err(TxError::InvalidField("break-glass window must be 1 minute to 24 hours"));
        }
        self.insert_grant(Grant {
            id: tx_id,
            patient: *patient,
            grantee: signer,
            scope: Scope::All,
            actions: actions::READ,
            purpose: Purpose::Emergency,
            valid_from_ms: ctx.timestamp_ms,
            valid_until_ms: ctx.timestamp_ms.saturating_add(*window_ms),
            granted_at: ctx.height,
            signed_by: signer,
            revoked_at: None,
            revoked_at_ms: None,
            revoked_by: None,
            origin: GrantOrigin::BreakGlass { reason: reason.to_owned(), review: None },
        });
        let mut declared = declared;
        declared.push(tx_id);
        self.delta.declared_break_glass.insert(signer, declared);
        Ok(())
    }

    /// Reviews a break-glass access, once, by neither the declarer nor their organisation; an
    /// unjustified access still open ends now.
    pub(super) fn review_break_glass(
        &mut self,
        cx: OpContext,
        break_glass_tx: &TxId,
        verdict: &ReviewVerdict,
        reason: &str,
    ) -> Result<(), TxError> {
        let OpContext { signer, tx_id, block: ctx, .. } = cx;
        let grant = self.grant(break_glass_tx).ok_or(TxError::UnknownGrant(*break_glass_tx))?.clone();
        let GrantOrigin::BreakGlass { reason: declared, review } = &grant.origin else {
            return Err(TxError::InvalidField("only a break-glass access is reviewed"));
        };
        if review.is_some() {
            return Err(TxError::InvalidField("this break-glass access was already reviewed"));
        }
        if reason.is_empty() {
            return Err(TxError::InvalidField("a review needs a reason code"));
        }
        check_reason(reason)?;
        // The declarer never reviews their own emergency, in any capacity.
        if signer == grant.grantee {
            return Err(TxError::NotAuthorised("the declaring practitioner cannot review their own access"));
        }
        // Reviewed by the patient (or a live delegate), or by a care-providing custodian
        // of the patient's records other than the declarer's organisation: never by the
        // declarer's organisation, which answers for the declarer, in any guise.
        let declarer_org = self.identity(&grant.grantee).and_then(|i| i.organisation);
        let reviewer_org = self.identity(&signer).and_then(|i| match i.role {
            Role::Organisation => Some(signer),
            _ => i.organisation,
        });
        if declarer_org.is_some() && reviewer_org == declarer_org {
            return Err(TxError::NotAuthorised(
                "the declarer's organisation, its staff and its nodes never review its break-glass",
            ));
        }
        if signer == grant.patient {
            // Keys the declarer's organisation registered and may still hold in trust
            // (never rotated since) are not the patient's voice.
            let patient = self.require(&grant.patient, "patient")?;
            if declarer_org.is_some() && patient.registered_by == declarer_org && patient.key_rotations == 0 {
                return Err(TxError::NotAuthorised(
                    "the patient's keys may still be held by the declarer's organisation: rotate them first",
                ));
            }
        }
        if !self.acts_for_patient(&signer, &grant.patient, ctx.timestamp_ms) {
            let reviewer = self.require(&signer, "signer")?;
            let organisation = match reviewer.role {
                Role::Organisation => signer,
                Role::Practitioner => reviewer
                    .organisation
                    .ok_or(TxError::NotAuthorised("a reviewing practitioner must belong to an organisation"))?,
                _ => {
                    return Err(TxError::NotAuthorised(
                        "break-glass is reviewed by the patient, or by a custodian organisation or one of its practitioners",
                    ));
                }
            };
            let care_provider =
                self.identity(&organisation).is_some_and(|o| o.kind == Some(OrganisationKind::CareProvider));
            if declarer_org == Some(organisation) || !care_provider || !self.custodies(&organisation, &grant.patient) {
                return Err(TxError::NotAuthorised(
                    "break-glass is reviewed by the patient or a custodian of their records other than the declarer's organisation",
                ));
            }
        }
        let mut reviewed = grant.clone();
        reviewed.origin = GrantOrigin::BreakGlass {
            reason: declared.clone(),
            review: Some(BreakGlassReview {
                review_tx: tx_id,
                reviewer: signer,
                verdict: *verdict,
                reason: reason.to_owned(),
                reviewed_at: ctx.height,
                reviewed_at_ms: ctx.timestamp_ms,
            }),
        };
        self.delta.grants.insert(*break_glass_tx, reviewed);
        // An unjustified emergency ends now; one already over or revoked stays as it is.
        if *verdict == ReviewVerdict::Unjustified && grant.is_live(ctx.timestamp_ms) {
            self.revoke_grant(break_glass_tx, (ctx.height, ctx.timestamp_ms), signer);
        }
        Ok(())
    }
}
