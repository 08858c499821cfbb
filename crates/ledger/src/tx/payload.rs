//! What transactions carry: the payload kinds and the values inside them (purposes, scopes,
//! access events, key shares, rule specs). Their wire encoding is in `super::codec`
//! (`docs/format.md`); the rules that check them are in `crate::state`.

use medledger_crypto::{EncryptionPublicKey, Keypair, PublicKey};
use medledger_types::{Hash, IdentityId, RecordId, Role, TxId};

/// What a consent grant lets the grantee do, as a bit set.
pub mod actions {
    pub const READ: u8 = 1;
    pub const WRITE: u8 = 2;
    pub const ALL: u8 = READ | WRITE;
}

/// HL7 v3 PurposeOfUse, the subset medledger enforces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Purpose {
    /// TREAT
    Treatment = 1,
    /// HPAYMT
    Payment = 2,
    /// HOPERAT
    Operations = 3,
    /// HRESCH
    Research = 4,
    /// ETREAT
    Emergency = 5,
}

impl Purpose {
    pub const ALL: [Purpose; 5] =
        [Purpose::Treatment, Purpose::Payment, Purpose::Operations, Purpose::Research, Purpose::Emergency];

    pub fn from_u8(tag: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|p| *p as u8 == tag)
    }

    /// The HL7 v3 ActReason code.
    pub fn code(&self) -> &'static str {
        match self {
            Purpose::Treatment => "TREAT",
            Purpose::Payment => "HPAYMT",
            Purpose::Operations => "HOPERAT",
            Purpose::Research => "HRESCH",
            Purpose::Emergency => "ETREAT",
        }
    }

    pub fn parse(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.code().eq_ignore_ascii_case(code))
    }
}

/// One action in an access event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AccessAction {
    Read = 1,
    Write = 2,
    History = 3,
    Search = 4,
    /// A bulk export (FHIR `$export`) handed the record to the client.
    Export = 5,
}

impl AccessAction {
    pub fn from_u8(tag: u8) -> Option<Self> {
        [Self::Read, Self::Write, Self::History, Self::Search, Self::Export].into_iter().find(|a| *a as u8 == tag)
    }
}

/// Outcome of an access attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AccessOutcome {
    Allowed = 1,
    Denied = 2,
    BreakGlass = 3,
}

impl AccessOutcome {
    pub fn from_u8(tag: u8) -> Option<Self> {
        [Self::Allowed, Self::Denied, Self::BreakGlass].into_iter().find(|a| *a as u8 == tag)
    }
}

/// A reviewer's finding on a break-glass access.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReviewVerdict {
    /// The emergency was real: the access stands.
    Justified = 1,
    /// It was not: the window ends at once if still open.
    Unjustified = 2,
}

impl ReviewVerdict {
    pub fn from_u8(tag: u8) -> Option<Self> {
        [Self::Justified, Self::Unjustified].into_iter().find(|v| *v as u8 == tag)
    }

    pub fn code(&self) -> &'static str {
        match self {
            ReviewVerdict::Justified => "justified",
            ReviewVerdict::Unjustified => "unjustified",
        }
    }

    pub fn parse(code: &str) -> Option<Self> {
        [Self::Justified, Self::Unjustified].into_iter().find(|v| v.code().eq_ignore_ascii_case(code))
    }
}

/// Which data a consent grant covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every record of the patient.
    All,
    /// Records of these FHIR resource types.
    ResourceTypes(Vec<String>),
    /// These records (all versions).
    Records(Vec<RecordId>),
    /// Records in these consent categories (`medledger_types::CATEGORIES`).
    Categories(Vec<String>),
}

impl Scope {
    /// Whether this scope covers `record`, of `resource_type`, in `category`.
    pub fn covers(&self, record: &RecordId, resource_type: &str, category: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::ResourceTypes(types) => types.iter().any(|t| t == resource_type),
            Scope::Records(records) => records.contains(record),
            Scope::Categories(categories) => categories.iter().any(|c| c == category),
        }
    }

    /// Whether this scope covers every record that can ever be in `category`: what a category
    /// key opens. Never for single records (the key would open the category's other records),
    /// and for resource types only when the scope names every type the category can hold.
    pub fn covers_category(&self, category: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Categories(categories) => categories.iter().any(|c| c == category),
            Scope::ResourceTypes(types) => {
                let mut in_category = medledger_types::resource_types_of_category(category).peekable();
                in_category.peek().is_some() && in_category.all(|t| types.iter().any(|named| named == t))
            }
            Scope::Records(_) => false,
        }
    }
}

/// A category key wrapped (HPKE) for one recipient.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyShareEntry {
    pub recipient: IdentityId,
    /// HPKE encapsulated key (the sender's ephemeral X25519 public key).
    pub encapsulated_key: [u8; 32],
    /// The category key encrypted to the recipient: 32 bytes and a 16-byte tag.
    pub wrapped_key: [u8; 48],
}

/// A sharing rule as submitted: `kind` selects the implementation in the rule registry
/// (`crate::rules`), `params` is that kind's canonical encoding (`docs/format.md`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleSpec {
    pub kind: String,
    pub params: Vec<u8>,
}

/// One access to a patient's data, as a node observed and decided it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AccessEvent {
    pub accessor: IdentityId,
    pub patient: IdentityId,
    /// The record and version accessed, when the access was to one record.
    pub record: Option<(RecordId, u32)>,
    pub action: AccessAction,
    pub purpose: Purpose,
    pub outcome: AccessOutcome,
    pub grant_id: Option<TxId>,
    /// Machine-readable reason code; never free text about the patient.
    pub reason: String,
    /// When the node decided, in ms since the Unix epoch (the node's clock).
    pub at_ms: u64,
}

/// What a transaction does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Payload {
    RegisterIdentity {
        role: Role,
        signing_key: PublicKey,
        encryption_key: EncryptionPublicKey,
        /// The organisation a practitioner or system client belongs to.
        organisation: Option<IdentityId>,
        /// Display name; empty for patients, whose names are PHI and never go on-chain.
        name: String,
    },
    RotateKey {
        signing_key: PublicKey,
        encryption_key: EncryptionPublicKey,
    },
    RecordCommit {
        record_id: RecordId,
        version: u32,
        patient: IdentityId,
        custodian: IdentityId,
        /// Who wrote this version: the custodian or one of its practitioners or system clients.
        /// The transaction is signed by the author, or by the custodian's node on the author's
        /// authenticated request.
        author: IdentityId,
        resource_type: String,
        /// Consent category (`medledger_types::CATEGORIES`), fixed for all versions.
        category: String,
        /// Epoch of the category key the data key is wrapped under.
        key_epoch: u32,
        /// SHA-256 of the ciphertext: its address in the blob store.
        ciphertext_hash: Hash,
        ciphertext_bytes: u64,
        /// The version's data key wrapped under the category key (`docs/keys.md`).
        wrapped_data_key: [u8; 72],
    },
    ConsentGrant {
        patient: IdentityId,
        grantee: IdentityId,
        scope: Scope,
        actions: u8,
        purpose: Purpose,
        valid_from_ms: u64,
        valid_until_ms: u64,
    },
    ConsentRevoke {
        grant_id: TxId,
    },
    /// Access events written by a node, batched so that auditing every read does not cost a
    /// signature and a log leaf per read.
    AccessEvents {
        events: Vec<AccessEvent>,
    },
    /// Wraps of one category key for recipients. Epoch `current + 1` starts a new key and must
    /// include the patient and the custodian.
    KeyShare {
        custodian: IdentityId,
        patient: IdentityId,
        category: String,
        epoch: u32,
        shares: Vec<KeyShareEntry>,
    },
    /// Emergency access declared by a practitioner without the patient's consent: read access
    /// to all the patient's records for purpose Emergency during `window_ms` from the block's
    /// time, flagged for review and visible to the patient.
    BreakGlass {
        patient: IdentityId,
        /// Machine-readable reason code (letters, digits, `-_.:`); never free text.
        reason: String,
        window_ms: u64,
    },
    /// Installs a sharing rule for `patient` (`crate::rules`); who may sign depends on the kind.
    InstallRule {
        patient: IdentityId,
        rule: RuleSpec,
    },
    /// Removes an installed rule (its id is the installing transaction's id).
    RemoveRule {
        rule_id: TxId,
    },
    /// The patient lets `delegate` (a guardian, a parent, a trusted practitioner) sign consent
    /// grants and revocations and manage sharing rules for them until `valid_until_ms`.
    AppointDelegate {
        patient: IdentityId,
        delegate: IdentityId,
        valid_until_ms: u64,
    },
    /// Ends a delegation, signed by the patient or by the delegate stepping down.
    DismissDelegate {
        patient: IdentityId,
        delegate: IdentityId,
    },
    /// An organisation's review of a break-glass access (the declaring transaction's id).
    ReviewBreakGlass {
        break_glass_tx: TxId,
        verdict: ReviewVerdict,
        /// Machine-readable reason code (letters, digits, `-_.:`); never free text.
        reason: String,
    },
    /// Operations committed all-or-nothing under one signature, nonce and log leaf: a FHIR
    /// transaction bundle or an import chunk. Signed by a validator for its organisation; the
    /// operations may be patient registrations, key shares, record commits and directory puts,
    /// each checked as if the validator had signed it alone, in order, each seeing the ones
    /// before it. One failing operation fails the whole batch.
    Batch {
        ops: Vec<Payload>,
    },
    /// A version of a consortium directory entry (`medledger_types::DIRECTORY_RESOURCE_TYPES`):
    /// the FHIR resource in clear, owned by the signer's organisation.
    DirectoryPut {
        entry_id: RecordId,
        version: u32,
        resource_type: String,
        /// The FHIR JSON, exactly as received.
        content: Vec<u8>,
    },
}

impl Payload {
    /// The operations this payload performs: a batch's operations, else the payload itself.
    pub fn ops(&self) -> &[Payload] {
        match self {
            Payload::Batch { ops } => ops,
            other => std::slice::from_ref(other),
        }
    }

    /// Registration of the identity holding `keys` (only its public keys are used).
    pub fn register(role: Role, keys: &Keypair, organisation: Option<IdentityId>, name: impl Into<String>) -> Self {
        Payload::RegisterIdentity {
            role,
            signing_key: keys.public_key(),
            encryption_key: keys.encryption_public_key(),
            organisation,
            name: name.into(),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Payload::RegisterIdentity { .. } => "register-identity",
            Payload::RotateKey { .. } => "rotate-key",
            Payload::RecordCommit { .. } => "record-commit",
            Payload::ConsentGrant { .. } => "consent-grant",
            Payload::ConsentRevoke { .. } => "consent-revoke",
            Payload::AccessEvents { .. } => "access-events",
            Payload::KeyShare { .. } => "key-share",
            Payload::BreakGlass { .. } => "break-glass",
            Payload::InstallRule { .. } => "install-rule",
            Payload::RemoveRule { .. } => "remove-rule",
            Payload::AppointDelegate { .. } => "appoint-delegate",
            Payload::DismissDelegate { .. } => "dismiss-delegate",
            Payload::ReviewBreakGlass { .. } => "review-break-glass",
            Payload::Batch { .. } => "batch",
            Payload::DirectoryPut { .. } => "directory-put",
        }
    }
}
