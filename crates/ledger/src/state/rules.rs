//! Sharing rules in the state: installing and removing them, and the ledger's own checks on
//! the access they derive (the rule kinds themselves are `crate::rules`). Whatever a rule's
//! code derives is stored only if it stays within what the patient signed.

use medledger_types::{Height, IdentityId, Role, TimestampMs, TxId, limits};

use super::{
    Grant, GrantOrigin,
    overlay::{OpContext, Overlay, check_resource_type},
};
use crate::{
    error::TxError,
    rules::{self, CommittedRecord, Derived, InstallContext, InstalledRule, RuleError},
    tx::{RuleSpec, Scope, actions},
};

impl Overlay<'_> {
    /// Installs a sharing rule for a patient: the kind decides who may sign and what it derives
    /// at once; reacting kinds are capped per patient.
    pub(super) fn install_rule(&mut self, cx: OpContext, patient: &IdentityId, rule: &RuleSpec) -> Result<(), TxError> {
        let OpContext { signer, tx_id, block: ctx, .. } = cx;
        if self.require(patient, "patient")?.role != Role::Patient {
            return Err(TxError::InvalidField("patient must be a patient identity"));
        }
        let kind = rules::lookup(&rule.kind).ok_or(RuleError::UnknownKind)?;
        let reacting = self.reacting_rule_ids(patient).cloned().unwrap_or_default();
        if kind.reacts_to_records() && reacting.len() >= limits::RULES_REACTING_PER_PATIENT_MAX {
            return Err(RuleError::TooManyRules.into());
        }
        let signer_identity = self.require(&signer, "signer")?.clone();
        let for_patient = self.acts_for_patient(&signer, patient, ctx.timestamp_ms);
        let install = InstallContext {
            view: &*self,
            rule_id: tx_id,
            patient: *patient,
            signer: &signer_identity,
            for_patient,
            height: ctx.height,
            timestamp_ms: ctx.timestamp_ms,
        };
        let derived = kind.install(&install, &rule.params)?;
        for d in &derived {
            self.check_derived(d, patient, Some((tx_id, for_patient)), ctx.timestamp_ms)?;
        }
        let derived = self.insert_derived(derived, *patient, tx_id, (tx_id, signer), ctx.height);
        self.delta.rules.insert(
            tx_id,
            InstalledRule {
                id: tx_id,
                patient: *patient,
                kind: kind.kind().to_owned(),
                params: rule.params.clone(),
                installed_by: signer,
                for_patient,
                installed_at: ctx.height,
                installed_at_ms: ctx.timestamp_ms,
                removed_at: None,
                derived,
            },
        );
        let mut ids = self.patient_rule_ids(patient).cloned().unwrap_or_default();
        ids.push(tx_id);
        self.delta.patient_rules.insert(*patient, ids);
        if kind.reacts_to_records() {
            let mut ids = reacting;
            ids.push(tx_id);
            self.delta.reacting_rules.insert(*patient, ids);
        }
        Ok(())
    }

    /// Removes an active rule and revokes what it derived: by its patient (or a live delegate), or,
    /// for a rule not signed for the patient, by its installer or the installer's organisation.
    pub(super) fn remove_rule(&mut self, cx: OpContext, rule_id: &TxId) -> Result<(), TxError> {
        let OpContext { signer, block: ctx, .. } = cx;
        let rule = self.installed_rule(rule_id).ok_or(TxError::UnknownRule(*rule_id))?.clone();
        let installer_org = self.identity(&rule.installed_by).and_then(|i| i.organisation);
        let by_patient = self.acts_for_patient(&signer, &rule.patient, ctx.timestamp_ms);
        // A rule signed for the patient is the patient's: its installer (a delegate since
        // dismissed, say) and the installer's organisation have no say over it.
        let by_installer = !rule.for_patient && (signer == rule.installed_by || Some(signer) == installer_org);
        if !by_patient && !by_installer {
            return Err(TxError::NotAuthorised(
                "a rule is removed by its patient (or a live delegate), its installer or the installer's organisation",
            ));
        }
        if !rule.is_active() {
            return Err(TxError::InvalidField("rule is already removed"));
        }
        for grant_id in &rule.derived {
            self.revoke_grant(grant_id, (ctx.height, ctx.timestamp_ms), signer);
        }
        if let Some(ids) = self.reacting_rule_ids(&rule.patient)
            && ids.contains(rule_id)
        {
            let ids = ids.iter().filter(|id| *id != rule_id).copied().collect();
            self.delta.reacting_rules.insert(rule.patient, ids);
        }
        let mut removed = rule;
        removed.removed_at = Some(ctx.height);
        self.delta.rules.insert(*rule_id, removed);
        Ok(())
    }

    /// The ledger's own checks on access a rule derived for `patient`, whatever the rule's
    /// code: read-only, resting on an active rule the patient signed, a valid grantee, a
    /// well-formed scope and period. `installing` is the rule being installed, which is not in
    /// the state yet, with whether its signer acts as the patient.
    fn check_derived(
        &self,
        d: &Derived,
        patient: &IdentityId,
        installing: Option<(TxId, bool)>,
        at_ms: TimestampMs,
    ) -> Result<(), RuleError> {
        let authority_ok = match installing {
            Some((id, for_patient)) if id == d.authority => for_patient,
            _ => self
                .installed_rule(&d.authority)
                .is_some_and(|r| r.patient == *patient && r.is_patients_own() && r.is_active()),
        };
        if !authority_ok {
            return Err(RuleError::InvalidDerivation("access must rest on an active rule the patient signed"));
        }
        if !rules::may_be_grantee(self, &d.grantee) {
            return Err(RuleError::InvalidDerivation("grantee must be an organisation, practitioner or system client"));
        }
        if d.valid_until_ms <= d.valid_from_ms || d.valid_until_ms <= at_ms {
            return Err(RuleError::InvalidDerivation("period is empty or already over"));
        }
        let scope_ok = match &d.scope {
            Scope::All => true,
            Scope::Categories(c) => !c.is_empty() && c.iter().all(|c| medledger_types::is_category(c)),
            Scope::ResourceTypes(t) => !t.is_empty() && t.iter().all(|t| check_resource_type(t).is_ok()),
            Scope::Records(r) => {
                !r.is_empty()
                    && r.len() <= limits::SCOPE_ITEMS_MAX
                    && r.iter().all(|r| self.record(r).is_some_and(|h| h.patient == *patient))
            }
        };
        if !scope_ok {
            return Err(RuleError::InvalidDerivation("scope is not a valid scope of this patient's records"));
        }
        Ok(())
    }

    /// Stores access derived by `rule_id` as read-only grants with ids bound to the source
    /// transaction (signed by `signed_by`), the rule and the position, so every node derives
    /// the same ids.
    fn insert_derived(
        &mut self,
        derived: Vec<Derived>,
        patient: IdentityId,
        rule_id: TxId,
        (source, signed_by): (TxId, IdentityId),
        height: Height,
    ) -> Vec<TxId> {
        let mut ids = Vec::with_capacity(derived.len());
        for (index, d) in derived.into_iter().enumerate() {
            let id = derived_grant_id(&source, &rule_id, index as u32);
            self.insert_grant(Grant {
                id,
                patient,
                grantee: d.grantee,
                scope: d.scope,
                actions: actions::READ,
                purpose: d.purpose,
                valid_from_ms: d.valid_from_ms,
                valid_until_ms: d.valid_until_ms,
                granted_at: height,
                signed_by,
                revoked_at: None,
                revoked_at_ms: None,
                revoked_by: None,
                origin: GrantOrigin::Rule { rule_id, authority: d.authority, category_keys: d.category_keys },
            });
            ids.push(id);
        }
        ids
    }

    /// Runs the patient's reacting rules, in installation order, on a committed record version.
    pub(super) fn react_to_record(
        &mut self,
        source: (TxId, IdentityId),
        patient: IdentityId,
        record: &CommittedRecord<'_>,
    ) {
        let rule_ids = self.reacting_rule_ids(&patient).cloned().unwrap_or_default();
        for rule_id in rule_ids {
            let Some(rule) = self.installed_rule(&rule_id).cloned() else { continue };
            let Some(kind) = rules::lookup(&rule.kind) else { continue };
            // Access failing the ledger's checks is dropped, never stored: a faulty rule can
            // only share less, and cannot block the patient's records from being written.
            let derived: Vec<Derived> = kind
                .on_record_commit(&rule, record)
                .into_iter()
                .filter(|d| self.check_derived(d, &patient, None, record.timestamp_ms).is_ok())
                .collect();
            self.insert_derived(derived, patient, rule_id, source, record.height);
        }
    }
}

/// Id of the `index`-th grant a rule derived while executing transaction `source`. Not a
/// transaction id, but from the same space: SHA-256 over a domain tag, so it never equals one.
fn derived_grant_id(source: &TxId, rule: &TxId, index: u32) -> TxId {
    let index = index.to_be_bytes();
    let parts: [&[u8]; 4] = [b"medledger/derived-grant/v1", &source.0, &rule.0, &index];
    TxId(medledger_crypto::sha256_parts(&parts).0)
}
