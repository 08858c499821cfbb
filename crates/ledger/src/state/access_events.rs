//! Access events: the audit trail a node records of the accesses it decided. Each allowed event
//! must name a basis the ledger agrees with (a grant, custody, the patient themself), so no node
//! can claim an access happened under a basis that never existed.

use medledger_types::{IdentityId, Role, limits};

use super::{
    BlockContext,
    overlay::{OpContext, Overlay, check_reason},
};
use crate::{
    error::TxError,
    tx::{AccessAction, AccessEvent, AccessOutcome, actions},
};

impl Overlay<'_> {
    /// Records access events: signed by a validator (the deciding node), at least one event, each
    /// passing `check_access_event`.
    pub(super) fn record_access_events(&self, cx: OpContext, events: &[AccessEvent]) -> Result<(), TxError> {
        let OpContext { signer, role, block: ctx, .. } = cx;
        // Only the node that made a decision records it: a validator, shown as the
        // recorder of every event it signs. An allowed event must name a basis the
        // ledger agrees with, so no node can claim someone read under a grant, a
        // custody or a break-glass declaration they never had.
        if role != Some(Role::Validator) {
            return Err(TxError::NotAuthorised(
                "access events are recorded only by the node that decided them: a validator",
            ));
        }
        if events.is_empty() {
            return Err(TxError::InvalidField("an access-events transaction needs at least one event"));
        }
        for event in events {
            self.check_access_event(event, &signer, ctx)?;
        }
        Ok(())
    }

    /// One access event of an `AccessEvents` transaction (see there).
    fn check_access_event(&self, event: &AccessEvent, recorder: &IdentityId, ctx: BlockContext) -> Result<(), TxError> {
        let accessor = self.require(&event.accessor, "accessor")?;
        let staff_of = match accessor.role {
            Role::Practitioner | Role::SystemClient => accessor.organisation,
            Role::Organisation => Some(event.accessor),
            _ => None,
        };
        if self.require(&event.patient, "patient")?.role != Role::Patient {
            return Err(TxError::InvalidField("patient must be a patient identity"));
        }
        let record = match event.record {
            Some((record_id, version)) => match self.record(&record_id) {
                Some(head) if head.patient == event.patient && version >= 1 && version <= head.latest_version => {
                    Some((record_id, head))
                }
                _ => {
                    return Err(TxError::InvalidField("access event names an unknown record version of this patient"));
                }
            },
            None => None,
        };
        if event.at_ms > ctx.timestamp_ms.saturating_add(limits::BLOCK_FUTURE_DRIFT_MS) {
            return Err(TxError::InvalidField("access event is dated after its block"));
        }
        if event.at_ms.saturating_add(limits::ACCESS_EVENT_AGE_MAX_MS) < ctx.timestamp_ms {
            return Err(TxError::InvalidField("access event is older than an access event may be recorded"));
        }
        check_reason(&event.reason)?;
        let grant = match &event.grant_id {
            Some(g) => Some(self.grant(g).ok_or(TxError::UnknownGrant(*g))?),
            None => None,
        };
        match event.outcome {
            AccessOutcome::Denied if grant.is_some() => {
                Err(TxError::InvalidField("a denied access is not under a grant"))
            }
            AccessOutcome::Denied => Ok(()),
            AccessOutcome::BreakGlass if !grant.is_some_and(|g| g.is_break_glass()) => {
                Err(TxError::InvalidField("a break-glass access names its break-glass declaration"))
            }
            AccessOutcome::Allowed if grant.is_some_and(|g| g.is_break_glass()) => {
                Err(TxError::InvalidField("an access under break-glass is recorded as break-glass"))
            }
            // An allowed access is recorded by the node that served it: one of the accessor's own
            // organisation, or of the record's custodian (for an event naming no record, of a
            // custodian of the patient); a patient reads their own data through any node.
            AccessOutcome::Allowed | AccessOutcome::BreakGlass
                if !(event.accessor == event.patient || {
                    let recorder_org = self.identity(recorder).and_then(|i| i.organisation);
                    recorder_org.is_some()
                        && (recorder_org == staff_of
                            || match record {
                                Some((_, head)) => recorder_org == Some(head.custodian),
                                None => recorder_org.is_some_and(|o| self.custodies(&o, &event.patient)),
                            })
                }) =>
            {
                Err(TxError::NotAuthorised(
                    "an allowed access is recorded by a node of the accessor's organisation or of the record's custodian",
                ))
            }
            AccessOutcome::Allowed | AccessOutcome::BreakGlass => match grant {
                Some(grant) => {
                    let needed = if event.action == AccessAction::Write { actions::WRITE } else { actions::READ };
                    let grantee_ok = grant.grantee == event.accessor || Some(grant.grantee) == staff_of;
                    let covers =
                        record.is_none_or(|(id, head)| grant.scope.covers(&id, &head.resource_type, &head.category));
                    let in_period = grant.valid_from_ms <= event.at_ms
                        && event.at_ms < grant.valid_until_ms
                        && grant.revoked_at_ms.is_none_or(|revoked| event.at_ms < revoked);
                    if grant.patient != event.patient
                        || !grantee_ok
                        || !covers
                        || !in_period
                        || grant.actions & needed != needed
                        || grant.purpose != event.purpose
                    {
                        return Err(TxError::InvalidField(
                            "an allowed access names a grant that did not allow it (accessor, record, period, action or purpose)",
                        ));
                    }
                    Ok(())
                }
                // Without a grant: the patient themself, or the custodian and its staff.
                None => {
                    let custodian_ok = match record {
                        Some((_, head)) => staff_of == Some(head.custodian),
                        None => staff_of.is_some_and(|org| self.custodies(&org, &event.patient)),
                    };
                    if event.accessor == event.patient || custodian_ok {
                        Ok(())
                    } else {
                        Err(TxError::InvalidField(
                            "an allowed access without a grant is by the patient or the record's custodian",
                        ))
                    }
                }
            },
        }
    }
}
