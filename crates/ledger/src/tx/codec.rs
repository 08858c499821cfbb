//! The canonical encoding of transaction bodies and payloads (`docs/format.md`): big-endian,
//! length-prefixed, one tag per payload kind. Decoding takes untrusted bytes and bounds
//! every length by `medledger_types::limits`; encoding then decoding gives back the same value.

use medledger_codec::{CodecError, Decode, Encode, Reader, Writer};
use medledger_crypto::{EncryptionPublicKey, PublicKey};
use medledger_types::{Hash, IdentityId, RecordId, Role, TxId, limits};

use super::{
    AccessAction, AccessEvent, AccessOutcome, KeyShareEntry, Payload, Purpose, ReviewVerdict, RuleSpec, Scope, TxBody,
};

impl Payload {
    /// The payload kind's tag: the first byte of its encoding.
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

pub(super) fn encode_body(body: &TxBody, w: &mut Writer) {
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

pub(super) fn decode_body(r: &mut Reader<'_>) -> Result<TxBody, CodecError> {
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
