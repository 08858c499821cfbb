//! Transactions: one canonical, versioned binary encoding; the id is the RFC 6962 leaf hash
//! of that encoding, and the signature covers a domain tag plus everything but itself.

use medledger_codec::{CodecError, Decode, Encode, Reader, Writer};
use medledger_crypto::{EncryptionPublicKey, Keypair, PublicKey, Signature};
use medledger_types::{Hash, IdentityId, RecordId, Role, TxId, limits};

/// Encoding version of transactions; the first byte of every encoded transaction.
pub const TX_VERSION: u8 = 1;
/// Prefix of every signed message, so a transaction signature can never be replayed as a
/// signature over anything else medledger signs (checkpoints, blocks, consensus votes).
pub const TX_SIGNING_DOMAIN: &[u8] = b"medledger/tx/v1\x00";

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

    fn tag(&self) -> u8 {
        match self {
            Payload::RegisterIdentity { .. } => 1,
            Payload::RotateKey { .. } => 2,
            Payload::RecordCommit { .. } => 3,
            Payload::ConsentGrant { .. } => 4,
            Payload::ConsentRevoke { .. } => 5,
            Payload::AccessEvents { .. } => 6,
            Payload::KeyShare { .. } => 7,
            Payload::BreakGlass { .. } => 8,
            Payload::InstallRule { .. } => 9,
            Payload::RemoveRule { .. } => 10,
            Payload::AppointDelegate { .. } => 11,
            Payload::DismissDelegate { .. } => 12,
            Payload::ReviewBreakGlass { .. } => 13,
            Payload::Batch { .. } => 14,
            Payload::DirectoryPut { .. } => 15,
        }
    }
}

/// The signed part of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxBody {
    /// Binds the transaction to one chain (the hash of its genesis).
    pub chain_id: Hash,
    pub signer: IdentityId,
    /// Per-signer sequence number, starting at 0: replay protection and ordering.
    pub nonce: u64,
    pub payload: Payload,
}

/// A signed transaction with its canonical bytes and id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transaction {
    body: TxBody,
    signature: Signature,
    bytes: Vec<u8>,
    id: TxId,
}

fn leaf_id(bytes: &[u8]) -> TxId {
    TxId(medledger_crypto::sha256_parts(&[&[0u8], bytes]).0)
}

impl Transaction {
    /// Signs `body` with `keys`.
    pub fn sign(body: TxBody, keys: &Keypair) -> Self {
        let mut w = Writer::with_capacity(256);
        w.u8(TX_VERSION);
        encode_body(&body, &mut w);
        let unsigned = w.into_bytes();
        let signature = keys.sign(&signing_message(&unsigned));
        let mut bytes = unsigned;
        bytes.extend_from_slice(&signature.0);
        let id = leaf_id(&bytes);
        Self { body, signature, bytes, id }
    }

    /// Decodes untrusted bytes (does not check the signature: see [`Transaction::signed_message`]).
    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        if bytes.len() > limits::BATCH_TX_BYTES_MAX {
            return Err(CodecError::TooLong { what: "transaction", got: bytes.len(), max: limits::BATCH_TX_BYTES_MAX });
        }
        let mut r = Reader::new(bytes);
        let version = r.u8("transaction version")?;
        if version != TX_VERSION {
            return Err(CodecError::InvalidTag { what: "transaction version", tag: version });
        }
        let body = decode_body(&mut r)?;
        let signature = Signature(r.array("signature")?);
        r.finish()?;
        // Only a batch may be larger than an ordinary transaction.
        if !matches!(body.payload, Payload::Batch { .. }) && bytes.len() > limits::TX_BYTES_MAX {
            return Err(CodecError::TooLong { what: "transaction", got: bytes.len(), max: limits::TX_BYTES_MAX });
        }
        Ok(Self { body, signature, bytes: bytes.to_vec(), id: leaf_id(bytes) })
    }

    pub fn body(&self) -> &TxBody {
        &self.body
    }

    pub fn signature(&self) -> &Signature {
        &self.signature
    }

    /// Canonical encoded bytes (the log leaf data).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// RFC 6962 leaf hash of [`Transaction::bytes`].
    pub fn id(&self) -> TxId {
        self.id
    }

    /// The exact message the signature covers.
    pub fn signed_message(&self) -> Vec<u8> {
        signing_message(&self.bytes[..self.bytes.len() - 64])
    }
}

fn signing_message(unsigned: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(TX_SIGNING_DOMAIN.len() + unsigned.len());
    msg.extend_from_slice(TX_SIGNING_DOMAIN);
    msg.extend_from_slice(unsigned);
    msg
}

fn encode_body(body: &TxBody, w: &mut Writer) {
    w.encode(&body.chain_id).encode(&body.signer).u64(body.nonce);
    encode_payload(&body.payload, w);
}

fn encode_payload(payload: &Payload, w: &mut Writer) {
    w.u8(payload.tag());
    match payload {
        Payload::RegisterIdentity { role, signing_key, encryption_key, organisation, name } => {
            w.u8(*role as u8).fixed(&signing_key.0).fixed(&encryption_key.0);
            w.option(organisation, |w, o| {
                w.encode(o);
            });
            w.str(name);
        }
        Payload::RotateKey { signing_key, encryption_key } => {
            w.fixed(&signing_key.0).fixed(&encryption_key.0);
        }
        Payload::RecordCommit {
            record_id,
            version,
            patient,
            custodian,
            author,
            resource_type,
            category,
            key_epoch,
            ciphertext_hash,
            ciphertext_bytes,
            wrapped_data_key,
        } => {
            w.encode(record_id).u32(*version).encode(patient).encode(custodian).encode(author);
            w.str(resource_type).str(category);
            w.u32(*key_epoch).encode(ciphertext_hash).u64(*ciphertext_bytes).fixed(wrapped_data_key);
        }
        Payload::ConsentGrant { patient, grantee, scope, actions, purpose, valid_from_ms, valid_until_ms } => {
            w.encode(patient).encode(grantee);
            match scope {
                Scope::All => {
                    w.u8(0);
                }
                Scope::ResourceTypes(types) => {
                    w.u8(1).seq(types, |w, t| {
                        w.str(t);
                    });
                }
                Scope::Records(records) => {
                    w.u8(2).seq(records, |w, r| {
                        w.encode(r);
                    });
                }
                Scope::Categories(categories) => {
                    w.u8(3).seq(categories, |w, c| {
                        w.str(c);
                    });
                }
            }
            w.u8(*actions).u8(*purpose as u8).u64(*valid_from_ms).u64(*valid_until_ms);
        }
        Payload::ConsentRevoke { grant_id } => {
            w.encode(grant_id);
        }
        Payload::AccessEvents { events } => {
            w.seq(events, |w, e| {
                w.encode(e);
            });
        }
        Payload::KeyShare { custodian, patient, category, epoch, shares } => {
            w.encode(custodian).encode(patient).str(category).u32(*epoch);
            w.seq(shares, |w, e| {
                w.encode(&e.recipient).fixed(&e.encapsulated_key).fixed(&e.wrapped_key);
            });
        }
        Payload::BreakGlass { patient, reason, window_ms } => {
            w.encode(patient).str(reason).u64(*window_ms);
        }
        Payload::InstallRule { patient, rule } => {
            w.encode(patient).str(&rule.kind).bytes(&rule.params);
        }
        Payload::RemoveRule { rule_id } => {
            w.encode(rule_id);
        }
        Payload::AppointDelegate { patient, delegate, valid_until_ms } => {
            w.encode(patient).encode(delegate).u64(*valid_until_ms);
        }
        Payload::DismissDelegate { patient, delegate } => {
            w.encode(patient).encode(delegate);
        }
        Payload::ReviewBreakGlass { break_glass_tx, verdict, reason } => {
            w.encode(break_glass_tx).u8(*verdict as u8).str(reason);
        }
        Payload::Batch { ops } => {
            w.seq(ops, |w, op| encode_payload(op, w));
        }
        Payload::DirectoryPut { entry_id, version, resource_type, content } => {
            w.encode(entry_id).u32(*version).str(resource_type).bytes(content);
        }
    }
}

fn purpose(r: &mut Reader<'_>) -> Result<Purpose, CodecError> {
    let tag = r.u8("purpose")?;
    Purpose::from_u8(tag).ok_or(CodecError::InvalidTag { what: "purpose", tag })
}

fn short_string(r: &mut Reader<'_>, what: &'static str) -> Result<String, CodecError> {
    r.string(limits::RESOURCE_TYPE_BYTES_MAX, what)
}

/// One access event's canonical encoding: inside access-events transactions, and in a node's
/// audit journal.
impl Encode for AccessEvent {
    fn encode(&self, w: &mut Writer) {
        w.encode(&self.accessor).encode(&self.patient);
        w.option(&self.record, |w, (id, version)| {
            w.encode(id).u32(*version);
        });
        w.u8(self.action as u8).u8(self.purpose as u8).u8(self.outcome as u8);
        w.option(&self.grant_id, |w, g| {
            w.encode(g);
        });
        w.str(&self.reason).u64(self.at_ms);
    }
}

impl Decode for AccessEvent {
    fn decode(r: &mut Reader<'_>) -> Result<Self, CodecError> {
        decode_access_event(r)
    }
}

fn decode_access_event(r: &mut Reader<'_>) -> Result<AccessEvent, CodecError> {
    let accessor = IdentityId::decode(r)?;
    let patient = IdentityId::decode(r)?;
    let record = r.option("record", |r| Ok((RecordId::decode(r)?, r.u32("version")?)))?;
    let action_tag = r.u8("action")?;
    let action = AccessAction::from_u8(action_tag).ok_or(CodecError::InvalidTag { what: "action", tag: action_tag })?;
    let purpose = purpose(r)?;
    let outcome_tag = r.u8("outcome")?;
    let outcome =
        AccessOutcome::from_u8(outcome_tag).ok_or(CodecError::InvalidTag { what: "outcome", tag: outcome_tag })?;
    Ok(AccessEvent {
        accessor,
        patient,
        record,
        action,
        purpose,
        outcome,
        grant_id: r.option("grant id", TxId::decode)?,
        reason: r.string(limits::REASON_BYTES_MAX, "reason")?,
        at_ms: r.u64("access time")?,
    })
}

fn decode_body(r: &mut Reader<'_>) -> Result<TxBody, CodecError> {
    let chain_id = Hash::decode(r)?;
    let signer = IdentityId::decode(r)?;
    let nonce = r.u64("nonce")?;
    let payload = decode_payload(r, true)?;
    Ok(TxBody { chain_id, signer, nonce, payload })
}

/// One payload; a batch only where `batch_allowed` (batches do not nest).
fn decode_payload(r: &mut Reader<'_>, batch_allowed: bool) -> Result<Payload, CodecError> {
    let tag = r.u8("payload kind")?;
    let payload = match tag {
        1 => {
            let role_tag = r.u8("role")?;
            let role = Role::from_u8(role_tag).ok_or(CodecError::InvalidTag { what: "role", tag: role_tag })?;
            Payload::RegisterIdentity {
                role,
                signing_key: PublicKey(r.array("signing key")?),
                encryption_key: EncryptionPublicKey(r.array("encryption key")?),
                organisation: r.option("organisation", IdentityId::decode)?,
                name: r.string(limits::NAME_BYTES_MAX, "name")?,
            }
        }
        2 => Payload::RotateKey {
            signing_key: PublicKey(r.array("signing key")?),
            encryption_key: EncryptionPublicKey(r.array("encryption key")?),
        },
        3 => Payload::RecordCommit {
            record_id: RecordId::decode(r)?,
            version: r.u32("version")?,
            patient: IdentityId::decode(r)?,
            custodian: IdentityId::decode(r)?,
            author: IdentityId::decode(r)?,
            resource_type: short_string(r, "resource type")?,
            category: short_string(r, "category")?,
            key_epoch: r.u32("key epoch")?,
            ciphertext_hash: Hash::decode(r)?,
            ciphertext_bytes: r.u64("ciphertext length")?,
            wrapped_data_key: r.array("wrapped data key")?,
        },
        4 => {
            let patient = IdentityId::decode(r)?;
            let grantee = IdentityId::decode(r)?;
            let scope = match r.u8("scope kind")? {
                0 => Scope::All,
                1 => Scope::ResourceTypes(
                    r.seq(limits::SCOPE_ITEMS_MAX, "scope resource types", |r| short_string(r, "resource type"))?,
                ),
                2 => Scope::Records(r.seq(limits::SCOPE_ITEMS_MAX, "scope records", RecordId::decode)?),
                3 => Scope::Categories(
                    r.seq(limits::SCOPE_ITEMS_MAX, "scope categories", |r| short_string(r, "category"))?,
                ),
                tag => return Err(CodecError::InvalidTag { what: "scope kind", tag }),
            };
            Payload::ConsentGrant {
                patient,
                grantee,
                scope,
                actions: r.u8("actions")?,
                purpose: purpose(r)?,
                valid_from_ms: r.u64("valid from")?,
                valid_until_ms: r.u64("valid until")?,
            }
        }
        5 => Payload::ConsentRevoke { grant_id: TxId::decode(r)? },
        6 => Payload::AccessEvents {
            events: r.seq(limits::ACCESS_EVENTS_PER_TX_MAX, "access events", decode_access_event)?,
        },
        7 => Payload::KeyShare {
            custodian: IdentityId::decode(r)?,
            patient: IdentityId::decode(r)?,
            category: short_string(r, "category")?,
            epoch: r.u32("key epoch")?,
            shares: r.seq(limits::KEY_SHARES_MAX, "key shares", |r| {
                Ok(KeyShareEntry {
                    recipient: IdentityId::decode(r)?,
                    encapsulated_key: r.array("encapsulated key")?,
                    wrapped_key: r.array("wrapped key")?,
                })
            })?,
        },
        8 => Payload::BreakGlass {
            patient: IdentityId::decode(r)?,
            reason: r.string(limits::BREAK_GLASS_REASON_BYTES_MAX, "break-glass reason")?,
            window_ms: r.u64("break-glass window")?,
        },
        9 => Payload::InstallRule {
            patient: IdentityId::decode(r)?,
            rule: RuleSpec {
                kind: r.string(limits::RULE_KIND_BYTES_MAX, "rule kind")?,
                params: r.bytes(limits::RULE_PARAMS_BYTES_MAX, "rule params")?.to_vec(),
            },
        },
        10 => Payload::RemoveRule { rule_id: TxId::decode(r)? },
        11 => Payload::AppointDelegate {
            patient: IdentityId::decode(r)?,
            delegate: IdentityId::decode(r)?,
            valid_until_ms: r.u64("delegation end")?,
        },
        12 => Payload::DismissDelegate { patient: IdentityId::decode(r)?, delegate: IdentityId::decode(r)? },
        13 => {
            let break_glass_tx = TxId::decode(r)?;
            let tag = r.u8("review verdict")?;
            let verdict = ReviewVerdict::from_u8(tag).ok_or(CodecError::InvalidTag { what: "review verdict", tag })?;
            Payload::ReviewBreakGlass {
                break_glass_tx,
                verdict,
                reason: r.string(limits::REVIEW_REASON_BYTES_MAX, "review reason")?,
            }
        }
        14 if batch_allowed => {
            Payload::Batch { ops: r.seq(limits::BATCH_OPS_MAX, "batch operations", |r| decode_payload(r, false))? }
        }
        15 => Payload::DirectoryPut {
            entry_id: RecordId::decode(r)?,
            version: r.u32("version")?,
            resource_type: short_string(r, "resource type")?,
            content: r.bytes(limits::DIRECTORY_CONTENT_BYTES_MAX, "directory content")?.to_vec(),
        },
        tag => return Err(CodecError::InvalidTag { what: "payload kind", tag }),
    };
    Ok(payload)
}

impl Encode for Transaction {
    fn encode(&self, w: &mut Writer) {
        w.fixed(&self.bytes);
    }
}

/// Builds and signs a transaction by `keys` (whose identity id is `signer`).
pub fn sign(keys: &Keypair, chain_id: Hash, signer: IdentityId, nonce: u64, payload: Payload) -> Transaction {
    Transaction::sign(TxBody { chain_id, signer, nonce, payload }, keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(payload: Payload) {
        let keys = Keypair::from_label("tx-round-trip");
        let tx = sign(&keys, Hash([3; 32]), keys.id(), 7, payload);
        let decoded = Transaction::decode(tx.bytes()).unwrap();
        assert_eq!(decoded, tx);
        assert_eq!(decoded.id(), tx.id());
        // Every strict prefix and any trailing byte is refused.
        for cut in 0..tx.bytes().len() {
            assert!(Transaction::decode(&tx.bytes()[..cut]).is_err(), "prefix of {cut} bytes decoded");
        }
        let mut padded = tx.bytes().to_vec();
        padded.push(0);
        assert!(Transaction::decode(&padded).is_err());
    }

    #[test]
    fn delegate_and_review_payloads_round_trip() {
        let (patient, delegate) = (IdentityId([1; 32]), IdentityId([2; 32]));
        round_trip(Payload::AppointDelegate { patient, delegate, valid_until_ms: 1_800_000_000_000 });
        round_trip(Payload::DismissDelegate { patient, delegate });
        for verdict in [ReviewVerdict::Justified, ReviewVerdict::Unjustified] {
            round_trip(Payload::ReviewBreakGlass {
                break_glass_tx: TxId([4; 32]),
                verdict,
                reason: "ed-confirmed".into(),
            });
        }
    }

    #[test]
    fn new_payloads_have_the_documented_layout() {
        let keys = Keypair::from_label("tx-layout");
        let (patient, delegate) = (IdentityId([1; 32]), IdentityId([2; 32]));
        let body_start = 1 + 32 + 32 + 8;
        let appoint = sign(
            &keys,
            Hash([3; 32]),
            keys.id(),
            0,
            Payload::AppointDelegate { patient, delegate, valid_until_ms: 0x0102_0304_0506_0708 },
        );
        let b = &appoint.bytes()[body_start..];
        assert_eq!(b[0], 11);
        assert_eq!((&b[1..33], &b[33..65]), (&patient.0[..], &delegate.0[..]));
        assert_eq!(&b[65..73], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(b.len(), 73 + 64);
        let dismiss = sign(&keys, Hash([3; 32]), keys.id(), 0, Payload::DismissDelegate { patient, delegate });
        assert_eq!(dismiss.bytes()[body_start], 12);
        assert_eq!(dismiss.bytes().len(), body_start + 1 + 64 + 64);
        let review = sign(
            &keys,
            Hash([3; 32]),
            keys.id(),
            0,
            Payload::ReviewBreakGlass {
                break_glass_tx: TxId([4; 32]),
                verdict: ReviewVerdict::Unjustified,
                reason: "no-emergency".into(),
            },
        );
        let b = &review.bytes()[body_start..];
        assert_eq!((b[0], &b[1..33], b[33]), (13, &[4u8; 32][..], 2));
        assert_eq!(&b[34..38], &12u32.to_be_bytes());
        assert_eq!(&b[38..50], b"no-emergency");
    }

    #[test]
    fn unknown_verdicts_and_long_review_reasons_are_refused() {
        let keys = Keypair::from_label("tx-strict");
        let review = |reason: String| {
            sign(
                &keys,
                Hash([3; 32]),
                keys.id(),
                0,
                Payload::ReviewBreakGlass { break_glass_tx: TxId([4; 32]), verdict: ReviewVerdict::Justified, reason },
            )
        };
        let mut bytes = review("ok".into()).bytes().to_vec();
        let verdict_at = 1 + 32 + 32 + 8 + 1 + 32;
        for tag in [0u8, 3, 255] {
            bytes[verdict_at] = tag;
            assert!(matches!(Transaction::decode(&bytes), Err(CodecError::InvalidTag { what: "review verdict", .. })));
        }
        let long = review("x".repeat(limits::REVIEW_REASON_BYTES_MAX + 1));
        assert!(Transaction::decode(long.bytes()).is_err());
        let longest = review("x".repeat(limits::REVIEW_REASON_BYTES_MAX));
        assert!(Transaction::decode(longest.bytes()).is_ok());
        assert_eq!(ReviewVerdict::parse("Unjustified"), Some(ReviewVerdict::Unjustified));
        assert_eq!(ReviewVerdict::parse("maybe"), None);
    }
}
