//! Sharing rules: deterministic automations of consent ("smart contracts") that every node
//! evaluates identically.
//!
//! A rule is installed by an `install-rule` transaction carrying a [`RuleSpec`]: a kind, which
//! selects an implementation of [`SharingRule`] from [`REGISTRY`], and that kind's canonical
//! parameters. The ledger calls the implementation when the rule is installed and when a
//! record of the rule's patient commits; the implementation answers with [`Derived`] access,
//! which the ledger turns into grants (`Grant::origin` = [`GrantOrigin::Rule`](crate::state::GrantOrigin::Rule)) that
//! `access::decide` honours like consent grants.
//!
//! **Adding a rule** = a module implementing [`SharingRule`] and one line in [`REGISTRY`]. The
//! transaction format, block verification and node code do not change. It is still a protocol
//! change: a validator without the new kind refuses blocks that install it, so every validator
//! must run the new registry before anyone submits the kind.
//!
//! **Rules only narrow.** Whatever a rule's code does, the ledger enforces on every derivation
//! that the access is read-only, that it rests on an active rule the patient signed themselves
//! (its `authority`), that its grantee is an organisation, practitioner or system client, and
//! that its scope and period are well-formed. The rule's own checks keep it within what that
//! authority allows (a referral cannot name more categories, days or another purpose).
//!
//! Determinism: implementations get block time and a read-only view of the state, never the
//! local clock or randomness, and must not iterate hash maps.

use medledger_codec::{CodecError, Reader, Writer};
use medledger_types::{Height, IdentityId, RecordId, Role, TimestampMs, TxId, limits};

use crate::{
    state::Identity,
    tx::{Purpose, RuleSpec, Scope},
};

pub mod referral;
pub mod share_new;

/// Every rule kind this ledger knows, looked up by [`SharingRule::kind`]. Adding a kind is one
/// line here (and a protocol upgrade; see the module docs).
pub static REGISTRY: &[&dyn SharingRule] = &[&referral::ReferralConsent, &referral::Referral, &share_new::ShareNew];

/// The implementation of `kind`, if this ledger knows it.
pub fn lookup(kind: &str) -> Option<&'static dyn SharingRule> {
    REGISTRY.iter().copied().find(|r| r.kind() == kind)
}

/// Why a rule cannot be installed. Messages name fields, never patient data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RuleError {
    #[error("unknown sharing-rule kind")]
    UnknownKind,
    #[error("invalid rule parameters: {0}")]
    InvalidParams(&'static str),
    #[error("not authorised: {0}")]
    NotAuthorised(&'static str),
    #[error("exceeds what the patient authorised: {0}")]
    ExceedsConsent(&'static str),
    #[error("the patient already has the most active rules that react to records")]
    TooManyRules,
    #[error("rule derives invalid access: {0}")]
    InvalidDerivation(&'static str),
}

impl From<CodecError> for RuleError {
    fn from(_: CodecError) -> Self {
        RuleError::InvalidParams("parameters do not decode canonically for this kind")
    }
}

/// A rule as installed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstalledRule {
    /// The installing transaction's id.
    pub id: TxId,
    pub patient: IdentityId,
    pub kind: String,
    pub params: Vec<u8>,
    /// The signer of the installing transaction: the patient, a delegate of theirs, or e.g. a
    /// referring organisation.
    pub installed_by: IdentityId,
    /// Whether the signer acted as the patient: the patient themself, or a delegate of theirs
    /// live at installation. Such a rule stays the patient's own after the delegate is
    /// dismissed, as a delegate's grants do.
    pub for_patient: bool,
    pub installed_at: Height,
    pub installed_at_ms: TimestampMs,
    pub removed_at: Option<Height>,
    /// Grants derived when the rule was installed; removing the rule revokes them. Grants
    /// derived from later record commits are not listed (they are found by their origin).
    pub derived: Vec<TxId>,
}

impl InstalledRule {
    pub fn is_active(&self) -> bool {
        self.removed_at.is_none()
    }

    /// Whether the patient signed this rule (themself or through a live delegate): only such
    /// rules are an authority for derived access.
    pub fn is_patients_own(&self) -> bool {
        self.for_patient
    }
}

/// Read-only view of the state (including the block being built) that rules may consult.
pub trait RuleView {
    fn identity(&self, id: &IdentityId) -> Option<&Identity>;
    fn rule(&self, id: &TxId) -> Option<&InstalledRule>;
}

/// Everything an installation is judged on.
pub struct InstallContext<'a> {
    pub view: &'a dyn RuleView,
    /// The id the rule will have (the installing transaction's).
    pub rule_id: TxId,
    pub patient: IdentityId,
    pub signer: &'a Identity,
    /// Whether the signer acts as the patient (is the patient or a live delegate of theirs):
    /// what rules that only the patient may install check, rather than the signer's id.
    pub for_patient: bool,
    pub height: Height,
    /// Block time.
    pub timestamp_ms: TimestampMs,
}

/// A record version that just committed for the rule's patient.
pub struct CommittedRecord<'a> {
    pub record_id: RecordId,
    pub version: u32,
    pub custodian: IdentityId,
    pub resource_type: &'a str,
    pub category: &'a str,
    pub height: Height,
    /// Block time.
    pub timestamp_ms: TimestampMs,
}

/// Access a rule derives; the ledger stores it as a read-only grant of the rule's patient.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Derived {
    pub grantee: IdentityId,
    pub scope: Scope,
    pub purpose: Purpose,
    pub valid_from_ms: TimestampMs,
    pub valid_until_ms: TimestampMs,
    /// The active rule, signed by the patient, whose consent this access stays within.
    pub authority: TxId,
    /// Whether the grantee may receive category-key wraps under this access. Only for access
    /// that covers whole categories: a category key also opens records the access does not.
    pub category_keys: bool,
}

/// One kind of sharing rule. Implementations are stateless: all state is the installed rule
/// and the ledger's view.
pub trait SharingRule: Sync {
    /// The kind name in [`RuleSpec::kind`] (at most `limits::RULE_KIND_BYTES_MAX` bytes).
    fn kind(&self) -> &'static str;

    /// Checks the parameters and the signer's authority to install the rule for the patient,
    /// and returns the access installing it derives now (revoked when the rule is removed).
    fn install(&self, ctx: &InstallContext<'_>, params: &[u8]) -> Result<Vec<Derived>, RuleError>;

    /// Whether the ledger calls [`SharingRule::on_record_commit`] while the rule is active.
    /// Such rules count against `limits::RULES_REACTING_PER_PATIENT_MAX`.
    fn reacts_to_records(&self) -> bool {
        false
    }

    /// Access derived from a record version committed for the patient while the rule is
    /// active. Must not fail: the parameters were checked at installation.
    fn on_record_commit(&self, _rule: &InstalledRule, _record: &CommittedRecord<'_>) -> Vec<Derived> {
        Vec::new()
    }
}

impl RuleSpec {
    pub fn new(kind: &str, params: Vec<u8>) -> Self {
        Self { kind: kind.to_owned(), params }
    }
}

/// Decodes a rule's whole parameter encoding with `each`, refusing trailing bytes.
pub fn decode_params<T>(
    params: &[u8],
    each: impl FnOnce(&mut Reader<'_>) -> Result<T, CodecError>,
) -> Result<T, RuleError> {
    let mut r = Reader::new(params);
    let value = each(&mut r)?;
    r.finish()?;
    Ok(value)
}

/// A set of categories as parameters carry it: a sequence in strictly ascending byte order, so
/// each set has one encoding.
pub fn write_categories(w: &mut Writer, categories: &[String]) {
    let mut sorted = categories.to_vec();
    sorted.sort();
    sorted.dedup();
    w.seq(&sorted, |w, c| {
        w.str(c);
    });
}

/// Reads a category set written by [`write_categories`].
pub fn read_categories(r: &mut Reader<'_>) -> Result<Vec<String>, CodecError> {
    r.seq(medledger_types::CATEGORIES.len(), "categories", |r| r.string(limits::RESOURCE_TYPE_BYTES_MAX, "category"))
}

/// Checks a decoded category set: non-empty, known categories, canonical order.
pub fn check_categories(categories: &[String]) -> Result<(), RuleError> {
    if categories.is_empty() || !categories.iter().all(|c| medledger_types::is_category(c)) {
        return Err(RuleError::InvalidParams("categories must be a non-empty set of known categories"));
    }
    if !categories.windows(2).all(|w| w[0] < w[1]) {
        return Err(RuleError::InvalidParams("categories must be in strictly ascending order"));
    }
    Ok(())
}

pub fn read_purpose(r: &mut Reader<'_>) -> Result<Purpose, CodecError> {
    let tag = r.u8("purpose")?;
    Purpose::from_u8(tag).ok_or(CodecError::InvalidTag { what: "purpose", tag })
}

/// Whether `who` is the organisation `org` or one of its practitioners or system clients.
pub fn acts_for(who: &Identity, org: &IdentityId) -> bool {
    who.id == *org || (matches!(who.role, Role::Practitioner | Role::SystemClient) && who.organisation == Some(*org))
}

/// Whether `id` may hold access: an organisation, practitioner or system client.
pub fn may_be_grantee(view: &dyn RuleView, id: &IdentityId) -> bool {
    view.identity(id).is_some_and(|i| matches!(i.role, Role::Organisation | Role::Practitioner | Role::SystemClient))
}

/// `days` days in ms.
pub fn days_ms(days: u32) -> u64 {
    u64::from(days) * 86_400_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_kinds_are_unique_and_short() {
        for (i, rule) in REGISTRY.iter().enumerate() {
            assert!(rule.kind().len() <= limits::RULE_KIND_BYTES_MAX);
            assert!(REGISTRY[i + 1..].iter().all(|other| other.kind() != rule.kind()), "{}", rule.kind());
            assert_eq!(lookup(rule.kind()).map(|r| r.kind()), Some(rule.kind()));
        }
        assert!(lookup("no-such-rule").is_none());
    }

    #[test]
    fn category_sets_are_canonical() {
        let mut w = Writer::new();
        write_categories(&mut w, &["vitals".into(), "labs".into(), "labs".into()]);
        let bytes = w.into_bytes();
        let set = decode_params(&bytes, read_categories).unwrap();
        assert_eq!(set, vec!["labs".to_string(), "vitals".to_string()]);
        check_categories(&set).unwrap();
        assert!(check_categories(&["vitals".into(), "labs".into()]).is_err());
        assert!(check_categories(&[]).is_err());
        assert!(check_categories(&["everything".into()]).is_err());
        assert!(decode_params(&[bytes.as_slice(), &[0]].concat(), read_categories).is_err());
    }
}
