//! The overlay a block executes in: uncommitted changes layered over a state and over the
//! changes of unfinalized ancestor blocks, the checks every transaction shares, and the
//! dispatch of each operation to its family's module. Invariant: an operation that fails any
//! check changes nothing (each family checks everything before it writes to `delta`, and a
//! batch runs in a child overlay merged only if all its operations pass).

use medledger_crypto::PublicKey;
use medledger_types::{Height, IdentityId, RecordId, Role, TimestampMs, TxId};

use super::{
    BlockContext, CategoryKeyId, CategoryKeyState, Delegation, Delta, DirectoryHead, Executed, Grant, Identity,
    RecordHead, State, holds_a_category_key,
};
use crate::{
    error::TxError,
    rules::{InstalledRule, RuleView},
    tx::{Payload, Transaction},
};

/// Who performs an operation, under which ids, in which block: what its checks may consult.
#[derive(Clone, Copy, Debug)]
pub(super) struct OpContext {
    /// The transaction's signer (for a batch's operations, the batch's).
    pub(super) signer: IdentityId,
    /// The signer's role before the transaction.
    pub(super) role: Option<Role>,
    /// The signer's key before the transaction (the one its signature verifies under).
    pub(super) key: PublicKey,
    /// The transaction's id: the id of the grants, rules and delegations it creates, and the
    /// committing transaction its record and directory versions list.
    pub(super) tx_id: TxId,
    /// The id rules derive grants from: the transaction's, or a batch operation's own.
    pub(super) source_id: TxId,
    pub(super) block: BlockContext,
}

/// Uncommitted changes layered over a state, and over the changes of unfinalized ancestor
/// blocks, while a block is built or verified.
pub(super) struct Overlay<'a> {
    base: &'a State,
    /// Oldest first; lookups search the newest first.
    ancestors: Vec<&'a Delta>,
    pub(super) delta: Delta,
}

impl<'a> Overlay<'a> {
    pub(super) fn new(base: &'a State, ancestors: &[&'a Executed]) -> Self {
        Self { base, ancestors: ancestors.iter().map(|a| &a.delta).collect(), delta: Delta::default() }
    }

    pub(super) fn into_delta(self) -> Delta {
        self.delta
    }

    /// An overlay on top of this one, for operations that must apply all together or not at
    /// all: its changes are merged into this one's by the caller, or dropped.
    pub(super) fn child(&self) -> Overlay<'_> {
        Overlay {
            base: self.base,
            ancestors: self.ancestors.iter().copied().chain(std::iter::once(&self.delta)).collect(),
            delta: Delta::default(),
        }
    }

    /// Looks `key` up in the ancestors' changes, newest first, then in the base state.
    fn inherited<K: std::hash::Hash + Eq + Clone, V>(
        &self,
        key: &K,
        field: impl Fn(&'a Delta) -> &'a super::DeltaMap<K, V>,
        base: &'a super::PMap<K, V>,
    ) -> Option<&'a V> {
        self.ancestors.iter().rev().find_map(|d| field(d).get(key)).or_else(|| base.get(key))
    }

    pub(super) fn identity(&self, id: &IdentityId) -> Option<&Identity> {
        self.delta.identities.get(id).or_else(|| self.inherited(id, |d| &d.identities, &self.base.identities))
    }

    pub(super) fn identity_mut(&mut self, id: &IdentityId) -> &mut Identity {
        if !self.delta.identities.contains_key(id) {
            let current = self.identity(id).expect("identity checked before mutation").clone();
            self.delta.identities.insert(*id, current);
        }
        self.delta.identities.get_mut(id).expect("inserted above")
    }

    pub(super) fn record(&self, id: &RecordId) -> Option<&RecordHead> {
        self.delta.records.get(id).or_else(|| self.inherited(id, |d| &d.records, &self.base.records))
    }

    pub(super) fn directory_entry(&self, id: &RecordId) -> Option<&DirectoryHead> {
        self.delta.directory.get(id).or_else(|| self.inherited(id, |d| &d.directory, &self.base.directory))
    }

    pub(super) fn grant(&self, id: &TxId) -> Option<&Grant> {
        self.delta.grants.get(id).or_else(|| self.inherited(id, |d| &d.grants, &self.base.grants))
    }

    pub(super) fn category_key(&self, id: &CategoryKeyId) -> Option<&CategoryKeyState> {
        self.delta.category_keys.get(id).or_else(|| self.inherited(id, |d| &d.category_keys, &self.base.category_keys))
    }

    pub(super) fn grant_ids(&self, patient: IdentityId, grantee: IdentityId) -> Option<&Vec<TxId>> {
        let key = (patient, grantee);
        self.delta.grant_index.get(&key).or_else(|| self.inherited(&key, |d| &d.grant_index, &self.base.grant_index))
    }

    pub(super) fn shared_keys(&self, patient: IdentityId, holder: IdentityId) -> Option<&Vec<CategoryKeyId>> {
        let key = (patient, holder);
        self.delta.shared_keys.get(&key).or_else(|| self.inherited(&key, |d| &d.shared_keys, &self.base.shared_keys))
    }

    pub(super) fn patient_grant_ids(&self, patient: &IdentityId) -> Option<&Vec<TxId>> {
        self.delta
            .patient_grants
            .get(patient)
            .or_else(|| self.inherited(patient, |d| &d.patient_grants, &self.base.patient_grants))
    }

    pub(super) fn installed_rule(&self, id: &TxId) -> Option<&InstalledRule> {
        self.delta.rules.get(id).or_else(|| self.inherited(id, |d| &d.rules, &self.base.rules))
    }

    pub(super) fn patient_rule_ids(&self, patient: &IdentityId) -> Option<&Vec<TxId>> {
        self.delta
            .patient_rules
            .get(patient)
            .or_else(|| self.inherited(patient, |d| &d.patient_rules, &self.base.patient_rules))
    }

    pub(super) fn reacting_rule_ids(&self, patient: &IdentityId) -> Option<&Vec<TxId>> {
        self.delta
            .reacting_rules
            .get(patient)
            .or_else(|| self.inherited(patient, |d| &d.reacting_rules, &self.base.reacting_rules))
    }

    pub(super) fn declared_break_glass(&self, practitioner: &IdentityId) -> Option<&Vec<TxId>> {
        self.delta
            .declared_break_glass
            .get(practitioner)
            .or_else(|| self.inherited(practitioner, |d| &d.declared_break_glass, &self.base.declared_break_glass))
    }

    pub(super) fn delegations(&self, patient: &IdentityId) -> Option<&Vec<Delegation>> {
        self.delta
            .delegations
            .get(patient)
            .or_else(|| self.inherited(patient, |d| &d.delegations, &self.base.delegations))
    }

    /// Whether `signer` acts as `patient` at block time `at_ms`: is the patient, or a live
    /// delegate of theirs. A dismissal earlier in the same block already counts.
    pub(super) fn acts_for_patient(&self, signer: &IdentityId, patient: &IdentityId, at_ms: TimestampMs) -> bool {
        signer == patient
            || self.delegations(patient).is_some_and(|ds| ds.iter().any(|d| d.delegate == *signer && d.is_live(at_ms)))
    }

    /// Adds a grant and indexes it by (patient, grantee) and by patient.
    pub(super) fn insert_grant(&mut self, grant: Grant) {
        let (id, patient, grantee) = (grant.id, grant.patient, grant.grantee);
        self.delta.grants.insert(id, grant);
        let mut ids = self.grant_ids(patient, grantee).cloned().unwrap_or_default();
        ids.push(id);
        self.delta.grant_index.insert((patient, grantee), ids);
        let mut ids = self.patient_grant_ids(&patient).cloned().unwrap_or_default();
        ids.push(id);
        self.delta.patient_grants.insert(patient, ids);
    }

    /// Revokes a live grant at `height` on `by`'s transaction, and marks every category key of
    /// the patient that the grantee holds as needing rotation, so new versions never reach the
    /// grantee.
    pub(super) fn revoke_grant(&mut self, grant_id: &TxId, (height, at_ms): (Height, TimestampMs), by: IdentityId) {
        let Some(grant) = self.grant(grant_id) else { return };
        if grant.revoked_at.is_some() {
            return;
        }
        let mut revoked = grant.clone();
        revoked.revoked_at = Some(height);
        revoked.revoked_at_ms = Some(at_ms);
        revoked.revoked_by = Some(by);
        let (patient, grantee) = (revoked.patient, revoked.grantee);
        self.delta.grants.insert(*grant_id, revoked);
        for key_id in self.shared_keys(patient, grantee).cloned().unwrap_or_default() {
            if let Some(key) = self.category_key(&key_id)
                && key.holders.iter().any(|(h, _)| *h == grantee)
            {
                let mut key = key.clone();
                key.rotation_required = true;
                self.delta.category_keys.insert(key_id, key);
            }
        }
    }

    /// Whether `organisation` is a custodian of `patient`'s data: it holds a category key of
    /// the patient, which exists from before its first record of the patient in that category.
    /// At most one lookup per category, so this costs the same however much data there is.
    pub(super) fn custodies(&self, organisation: &IdentityId, patient: &IdentityId) -> bool {
        holds_a_category_key(organisation, patient, |id| self.category_key(id).is_some())
    }

    pub(super) fn require(&self, id: &IdentityId, what: &'static str) -> Result<&Identity, TxError> {
        self.identity(id).ok_or(TxError::UnknownIdentity { what, id: *id })
    }

    /// Checks `tx` against the rules and, only if every check passes, applies it. Returns the
    /// key its signature must verify under (the signer's key before this transaction).
    ///
    /// Checked here, for every transaction: this chain's id, a registered signer, the signer's
    /// next nonce (which an accepted transaction consumes). Each operation's own
    /// rules are on its handler in the family modules (`identity`, `record`, `access_events`,
    /// `consent`, `key_share`, `break_glass`, `rules`, `delegates`, `batch`, `directory`);
    /// `docs/rules.md` lists them all.
    pub(super) fn execute(&mut self, tx: &Transaction, ctx: BlockContext) -> Result<PublicKey, TxError> {
        let body = tx.body();
        if body.chain_id != self.base.chain_id {
            return Err(TxError::WrongChain);
        }
        let signer = body.signer;
        let (key, role, expected_nonce) = match self.identity(&signer) {
            Some(who) => (who.signing_key, Some(who.role), who.next_nonce),
            None => return Err(TxError::UnknownSigner(signer)),
        };
        if body.nonce < expected_nonce {
            return Err(TxError::Replayed { expected: expected_nonce, got: body.nonce });
        }
        if body.nonce > expected_nonce {
            return Err(TxError::NonceAhead { expected: expected_nonce, got: body.nonce });
        }
        let tx_id = tx.id();
        let cx = OpContext { signer, role, key, tx_id, source_id: tx_id, block: ctx };
        match &body.payload {
            Payload::Batch { ops } => self.execute_batch(ops, cx)?,
            op => self.apply_op(op, cx)?,
        }
        // Every accepted transaction consumes its signer's nonce.
        if let Some(who) = self.delta.identities.get_mut(&signer) {
            who.next_nonce = body.nonce + 1;
        } else {
            self.identity_mut(&signer).next_nonce = body.nonce + 1;
        }
        Ok(key)
    }

    /// Checks one operation and, only if every check passes, applies it: dispatches to the
    /// operation's family. A batch's operations come here one by one (`batch`).
    pub(super) fn apply_op(&mut self, op: &Payload, cx: OpContext) -> Result<(), TxError> {
        match op {
            Payload::RegisterIdentity { role, signing_key, encryption_key, organisation, name } => {
                self.register_identity(cx, role, signing_key, encryption_key, organisation, name)
            }
            Payload::RotateKey { signing_key, encryption_key } => self.rotate_key(cx, signing_key, encryption_key),
            Payload::RecordCommit { .. } => self.commit_record(cx, op),
            Payload::AccessEvents { events } => self.record_access_events(cx, events),
            Payload::ConsentGrant { .. } => self.grant_consent(cx, op),
            Payload::ConsentRevoke { grant_id } => self.revoke_consent(cx, grant_id),
            Payload::KeyShare { custodian, patient, category, epoch, shares } => {
                self.share_category_key(cx, custodian, patient, category, epoch, shares)
            }
            Payload::BreakGlass { patient, reason, window_ms } => {
                self.declare_break_glass(cx, patient, reason, window_ms)
            }
            Payload::ReviewBreakGlass { break_glass_tx, verdict, reason } => {
                self.review_break_glass(cx, break_glass_tx, verdict, reason)
            }
            Payload::InstallRule { patient, rule } => self.install_rule(cx, patient, rule),
            Payload::RemoveRule { rule_id } => self.remove_rule(cx, rule_id),
            Payload::AppointDelegate { patient, delegate, valid_until_ms } => {
                self.appoint_delegate(cx, patient, delegate, valid_until_ms)
            }
            Payload::DismissDelegate { patient, delegate } => self.dismiss_delegate(cx, patient, delegate),
            Payload::DirectoryPut { entry_id, version, resource_type, content } => {
                self.put_directory_entry(cx, entry_id, version, resource_type, content)
            }
            Payload::Batch { .. } => Err(TxError::InvalidField("batches do not nest")),
        }
    }
}

impl RuleView for Overlay<'_> {
    fn identity(&self, id: &IdentityId) -> Option<&Identity> {
        Overlay::identity(self, id)
    }

    fn rule(&self, id: &TxId) -> Option<&InstalledRule> {
        self.installed_rule(id)
    }
}

/// A FHIR resource type name: an upper-case ASCII letter, then ASCII letters and digits.
pub(super) fn check_resource_type(t: &str) -> Result<(), TxError> {
    let mut chars = t.chars();
    match chars.next() {
        Some(c) if c.is_ascii_uppercase() && chars.all(|c| c.is_ascii_alphanumeric()) => Ok(()),
        _ => Err(TxError::InvalidField("resource type must be a FHIR resource type name")),
    }
}

/// A reason code: letters, digits and `-_.:` only, so no free text about a patient goes on-chain.
pub(super) fn check_reason(reason: &str) -> Result<(), TxError> {
    if reason.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c)) {
        Ok(())
    } else {
        Err(TxError::InvalidField("reason must be a code (letters, digits, - _ . :), not free text"))
    }
}
