//! Identity operations: registering practitioners, system clients and patients (organisations
//! and validators join through genesis), and key rotation.

use medledger_crypto::{EncryptionPublicKey, PublicKey, identity_id};
use medledger_types::{IdentityId, OrganisationKind, Role};

use super::{
    Identity,
    overlay::{OpContext, Overlay},
};
use crate::error::TxError;

impl Overlay<'_> {
    /// Registers a new identity: a practitioner or system client by its own organisation, a patient
    /// (no name, no organisation) by a care-providing organisation, its staff, clients or node.
    /// Organisations and validators join through genesis, never by registration.
    pub(super) fn register_identity(
        &mut self,
        cx: OpContext,
        new_role: &Role,
        signing_key: &PublicKey,
        encryption_key: &EncryptionPublicKey,
        organisation: &Option<IdentityId>,
        name: &str,
    ) -> Result<(), TxError> {
        let OpContext { signer, role, block: ctx, .. } = cx;
        let id = identity_id(signing_key);
        if self.identity(&id).is_some() {
            return Err(TxError::AlreadyRegistered(id));
        }
        match new_role {
            Role::Organisation | Role::Validator => {
                return Err(TxError::NotAuthorised(
                    "organisations and validators join through genesis or governance, not registration",
                ));
            }
            Role::Practitioner | Role::SystemClient => {
                if role != Some(Role::Organisation) {
                    return Err(TxError::NotAuthorised(
                        "only a member organisation registers its practitioners and system clients",
                    ));
                }
                if *organisation != Some(signer) {
                    return Err(TxError::InvalidField("organisation must be the registering organisation"));
                }
                check_name(name)?;
            }
            Role::Patient => {
                // Registration is an act of a member organisation (its staff, clients or
                // node, which check who the patient is), with the patient's own public
                // keys: a free self-registered identity costs an attacker nothing and
                // could spam reads, tokens and the mempool.
                // Of a care provider: insurers and research institutes enrol no patients
                // (every identity multiplies the per-identity budgets of every node).
                let registrar_org = match role {
                    Some(Role::Organisation) => Some(signer),
                    Some(Role::Validator | Role::Practitioner | Role::SystemClient) => {
                        self.identity(&signer).and_then(|i| i.organisation)
                    }
                    _ => None,
                };
                let care_provider = registrar_org
                    .and_then(|o| self.identity(&o))
                    .is_some_and(|o| o.kind == Some(OrganisationKind::CareProvider));
                if !care_provider {
                    return Err(TxError::NotAuthorised(
                        "patients are registered by a care-providing member organisation, its staff or its node",
                    ));
                }
                if organisation.is_some() {
                    return Err(TxError::InvalidField("patients do not belong to an organisation"));
                }
                if !name.is_empty() {
                    return Err(TxError::InvalidField("patient names are PHI and never go on-chain"));
                }
            }
        }
        let identity = Identity {
            id,
            role: *new_role,
            signing_key: *signing_key,
            encryption_key: *encryption_key,
            organisation: *organisation,
            kind: None,
            // Only patients are registered with keys someone else may hold.
            registered_by: match new_role {
                Role::Patient => self.identity(&signer).and_then(|i| i.organisation).or(Some(signer)),
                _ => None,
            },
            key_rotations: 0,
            name: name.to_owned(),
            next_nonce: 0,
            registered_at: ctx.height,
        };
        self.delta.identities.insert(id, identity);
        Ok(())
    }

    /// Replaces the signer's keys (the new signing key must differ from the current one).
    pub(super) fn rotate_key(
        &mut self,
        cx: OpContext,
        signing_key: &PublicKey,
        encryption_key: &EncryptionPublicKey,
    ) -> Result<(), TxError> {
        let OpContext { signer, key, .. } = cx;
        if *signing_key == key {
            return Err(TxError::InvalidField("new signing key equals the current one"));
        }
        let who = self.identity_mut(&signer);
        who.signing_key = *signing_key;
        who.encryption_key = *encryption_key;
        who.key_rotations = who.key_rotations.saturating_add(1);
        Ok(())
    }
}

/// A display name: not blank, no control characters.
fn check_name(name: &str) -> Result<(), TxError> {
    if name.trim().is_empty() || name.chars().any(char::is_control) {
        return Err(TxError::InvalidField("name must be non-empty printable text"));
    }
    Ok(())
}
