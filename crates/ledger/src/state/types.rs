//! The public state types: what the ledger remembers about identities, records, grants,
//! delegations, category keys and directory entries, with the queries that only need one
//! value. Changed only by the transaction families (`super::overlay` and its siblings).

use medledger_crypto::{EncryptionPublicKey, PublicKey};
use medledger_types::{Height, IdentityId, OrganisationKind, Role, TimestampMs, TxId};

use crate::tx::{ReviewVerdict, Scope, actions};

/// A registered identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub id: IdentityId,
    pub role: Role,
    pub signing_key: PublicKey,
    pub encryption_key: EncryptionPublicKey,
    pub organisation: Option<IdentityId>,
    /// What a member organisation does (from genesis); `None` for every other identity.
    pub kind: Option<OrganisationKind>,
    /// For a patient: the organisation that registered them (it may hold their keys in trust
    /// until it hands them over and the patient rotates).
    pub registered_by: Option<IdentityId>,
    /// How many times the identity rotated its keys.
    pub key_rotations: u32,
    pub name: String,
    /// The nonce the identity's next transaction must carry.
    pub next_nonce: u64,
    pub registered_at: Height,
}

/// The latest version of a record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordHead {
    pub patient: IdentityId,
    pub custodian: IdentityId,
    pub resource_type: String,
    pub category: String,
    pub latest_version: u32,
    /// The committing transaction of each version, oldest first (version `i + 1` at index `i`).
    pub versions: Vec<TxId>,
}

impl RecordHead {
    /// The transaction that committed `version`.
    pub fn version_tx(&self, version: u32) -> Option<TxId> {
        self.versions.get((version as usize).checked_sub(1)?).copied()
    }
}

/// How a grant came to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GrantOrigin {
    /// A consent grant the patient signed, themself or through a delegate (`Grant::signed_by`).
    Consent,
    /// Emergency access a practitioner declared (`break-glass`); its id is that transaction's.
    BreakGlass {
        reason: String,
        /// The review, once an organisation reviewed the access; until then it awaits one.
        review: Option<BreakGlassReview>,
    },
    /// Derived by a sharing rule (`crate::rules`); its id is derived, not a transaction's.
    Rule {
        /// The rule that derived it.
        rule_id: TxId,
        /// The patient's own rule whose consent it stays within (may equal `rule_id`).
        authority: TxId,
        /// Whether the grantee may receive category keys under it.
        category_keys: bool,
    },
}

/// An organisation's finding on a break-glass access (`Payload::ReviewBreakGlass`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BreakGlassReview {
    /// The reviewing transaction.
    pub review_tx: TxId,
    /// Who signed it: the organisation, or one of its practitioners other than the declarer.
    pub reviewer: IdentityId,
    pub verdict: ReviewVerdict,
    /// The reviewer's reason code.
    pub reason: String,
    pub reviewed_at: Height,
    /// Block time of the review.
    pub reviewed_at_ms: TimestampMs,
}

/// A delegation: `delegate` may sign consent grants and revocations and manage sharing rules
/// for `patient` while it is live. Kept after it ends, so the patient's history shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delegation {
    /// The appointing transaction.
    pub id: TxId,
    pub patient: IdentityId,
    pub delegate: IdentityId,
    pub appointed_at: Height,
    /// Block time from which the delegate may no longer act.
    pub valid_until_ms: TimestampMs,
    pub dismissed_at: Option<Height>,
    /// The patient, or the delegate stepping down.
    pub dismissed_by: Option<IdentityId>,
}

impl Delegation {
    /// Whether the delegate may act at block time `at_ms`: not dismissed, not past its end.
    pub fn is_live(&self, at_ms: TimestampMs) -> bool {
        self.dismissed_at.is_none() && at_ms < self.valid_until_ms
    }
}

/// A consent grant as committed, with its revocation if any. Break-glass access and access
/// derived by sharing rules are grants too, told apart by their origin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub id: TxId,
    pub patient: IdentityId,
    pub grantee: IdentityId,
    pub scope: Scope,
    pub actions: u8,
    pub purpose: crate::tx::Purpose,
    pub valid_from_ms: TimestampMs,
    pub valid_until_ms: TimestampMs,
    pub granted_at: Height,
    /// The signer of the transaction that created the grant: for consent, the patient or a
    /// delegate of theirs; for break-glass, the practitioner; for rule-derived access, the
    /// signer of the installing transaction or of the record commit it reacted to.
    pub signed_by: IdentityId,
    pub revoked_at: Option<Height>,
    /// Block time of the revocation: an access after it is not under the grant.
    pub revoked_at_ms: Option<TimestampMs>,
    /// Who ended it: the patient, a delegate, whoever removed the deriving rule, or the
    /// reviewer of an unjustified break-glass access.
    pub revoked_by: Option<IdentityId>,
    pub origin: GrantOrigin,
}

impl Grant {
    pub fn is_break_glass(&self) -> bool {
        matches!(self.origin, GrantOrigin::BreakGlass { .. })
    }

    /// Whether the grant awaits review (break-glass access not yet reviewed).
    pub fn needs_review(&self) -> bool {
        matches!(self.origin, GrantOrigin::BreakGlass { review: None, .. })
    }

    /// The review of a break-glass access, once there is one.
    pub fn review(&self) -> Option<&BreakGlassReview> {
        match &self.origin {
            GrantOrigin::BreakGlass { review, .. } => review.as_ref(),
            _ => None,
        }
    }

    /// The delegate who signed a consent grant for the patient, if the patient did not.
    pub fn delegate(&self) -> Option<IdentityId> {
        (matches!(self.origin, GrantOrigin::Consent) && self.signed_by != self.patient).then_some(self.signed_by)
    }

    /// The sharing rule that derived the grant, if one did.
    pub fn derived_from(&self) -> Option<TxId> {
        match self.origin {
            GrantOrigin::Rule { rule_id, .. } => Some(rule_id),
            _ => None,
        }
    }

    /// Whether the grantee may receive category-key wraps under this grant. Not under
    /// break-glass (a key would outlive the window: reads go through the custodian's node) nor
    /// under rules that cover single records (a key would open the category's other records).
    pub fn shares_category_keys(&self) -> bool {
        match self.origin {
            GrantOrigin::Consent => true,
            GrantOrigin::BreakGlass { .. } => false,
            GrantOrigin::Rule { category_keys, .. } => category_keys,
        }
    }

    /// Whether the grant is in force at block time `at_ms` (not revoked, within its period).
    pub fn is_live(&self, at_ms: TimestampMs) -> bool {
        self.revoked_at.is_none() && self.valid_from_ms <= at_ms && at_ms < self.valid_until_ms
    }

    /// Whether the grantee may receive, at block time `at_ms`, a category key of the grant's
    /// patient in `category`: the grant is live, lets it read, may carry keys at all, and its
    /// scope covers every record the key can open (`Scope::covers_category`). Key material
    /// follows consent exactly (`docs/keys.md`).
    pub fn may_share_key(&self, category: &str, at_ms: TimestampMs) -> bool {
        self.is_live(at_ms)
            && self.shares_category_keys()
            && self.actions & actions::READ != 0
            && self.scope.covers_category(category)
    }
}

/// One custodian's key for one patient's category (see `docs/keys.md`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CategoryKeyId {
    pub custodian: IdentityId,
    pub patient: IdentityId,
    pub category: String,
}

/// The current epoch of a category key and who holds a wrap of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CategoryKeyState {
    pub epoch: u32,
    /// Holders of the current epoch's key, with the key-share transaction that wrapped it.
    pub holders: Vec<(IdentityId, TxId)>,
    /// Set when a grant of a holder was revoked: the next record in this category must use a
    /// new epoch, which the revoked grantee never receives.
    pub rotation_required: bool,
    /// Holders of earlier epochs' keys (older versions stay readable by them).
    pub past: Vec<(u32, Vec<(IdentityId, TxId)>)>,
    /// Block time from which no record may be written under this epoch: the earliest end of
    /// the grants under which someone other than the patient and the custodian received it
    /// (`TimestampMs::MAX` while only they hold it). A grantee whose grant has ended must never
    /// receive what is written afterwards, so the key rotates on expiry as on revocation.
    pub shared_until_ms: TimestampMs,
}

impl CategoryKeyState {
    /// Whether a record written at block time `at_ms` must use a new epoch: a holder's grant
    /// was revoked, or one under which the key was shared has ended.
    pub fn must_rotate(&self, at_ms: TimestampMs) -> bool {
        self.rotation_required || at_ms >= self.shared_until_ms
    }

    /// Holders of `epoch`'s key, with the key-share transactions that wrapped it for them.
    pub fn holders_of(&self, epoch: u32) -> Option<&[(IdentityId, TxId)]> {
        if epoch == self.epoch {
            return Some(&self.holders);
        }
        self.past.iter().find(|(e, _)| *e == epoch).map(|(_, h)| h.as_slice())
    }
}

/// The latest version of a consortium directory entry (`Payload::DirectoryPut`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirectoryHead {
    pub resource_type: String,
    /// The organisation that wrote it; only it (its validators, staff or clients) updates it.
    pub owner: IdentityId,
    pub latest_version: u32,
    /// The committing transaction of each version, oldest first (version `i + 1` at index `i`).
    pub versions: Vec<TxId>,
}

impl DirectoryHead {
    /// The transaction that committed `version`.
    pub fn version_tx(&self, version: u32) -> Option<TxId> {
        self.versions.get((version as usize).checked_sub(1)?).copied()
    }
}
