//! Key shares: wraps of a custodian's category key for a patient. Consent decides who may
//! receive one; a new epoch starts with the patient and the custodian, and an epoch stops
//! taking new records when a grant it was shared under ends (`docs/keys.md`).

use medledger_types::{IdentityId, Role, TimestampMs};

use super::{
    CategoryKeyId, CategoryKeyState,
    overlay::{OpContext, Overlay},
};
use crate::{error::TxError, tx::KeyShareEntry};

impl Overlay<'_> {
    /// Shares the current epoch of a category key, or starts the next, with recipients who may
    /// hold it; signed by the custodian, its staff, clients or nodes.
    pub(super) fn share_category_key(
        &mut self,
        cx: OpContext,
        custodian: &IdentityId,
        patient: &IdentityId,
        category: &str,
        epoch: &u32,
        shares: &[KeyShareEntry],
    ) -> Result<(), TxError> {
        let OpContext { signer, tx_id, block: ctx, .. } = cx;
        if self.require(custodian, "custodian")?.role != Role::Organisation {
            return Err(TxError::InvalidField("custodian must be a member organisation"));
        }
        let signer_identity = self.require(&signer, "signer")?;
        let acts_for_custodian = signer == *custodian
            || (matches!(signer_identity.role, Role::Practitioner | Role::SystemClient | Role::Validator)
                && signer_identity.organisation == Some(*custodian));
        if !acts_for_custodian {
            return Err(TxError::NotAuthorised("only the custodian or its staff, clients and nodes share its keys"));
        }
        if self.require(patient, "patient")?.role != Role::Patient {
            return Err(TxError::InvalidField("patient must be a patient identity"));
        }
        if !medledger_types::is_category(category) {
            return Err(TxError::InvalidField("unknown category"));
        }
        if shares.is_empty() {
            return Err(TxError::InvalidField("a key share needs at least one recipient"));
        }
        let key_id = CategoryKeyId { custodian: *custodian, patient: *patient, category: category.to_owned() };
        let current = self.category_key(&key_id).cloned();
        let current_epoch = current.as_ref().map_or(0, |k| k.epoch);
        let mut state = if *epoch == current_epoch + 1 {
            // A new key: it must reach the patient and the custodian.
            let recipients: Vec<IdentityId> = shares.iter().map(|e| e.recipient).collect();
            if !recipients.contains(patient) || !recipients.contains(custodian) {
                return Err(TxError::InvalidField(
                    "a new category key must be shared with the patient and the custodian",
                ));
            }
            let mut past = current.as_ref().map(|k| k.past.clone()).unwrap_or_default();
            if let Some(previous) = &current {
                past.push((previous.epoch, previous.holders.clone()));
            }
            CategoryKeyState {
                epoch: *epoch,
                holders: Vec::new(),
                rotation_required: false,
                past,
                shared_until_ms: TimestampMs::MAX,
            }
        } else if *epoch == current_epoch && current_epoch > 0 {
            current.expect("epoch above zero exists")
        } else {
            return Err(TxError::InvalidField("key share must be for the current epoch or the next"));
        };
        let mut seen = std::collections::HashSet::new();
        let mut shared_by_grant = Vec::new();
        for entry in shares {
            if !seen.insert(entry.recipient) || state.holders.iter().any(|(h, _)| *h == entry.recipient) {
                return Err(TxError::InvalidField("recipient already holds this key"));
            }
            self.require(&entry.recipient, "key share recipient")?;
            // Consent decides who may receive keys: never anyone else, and the epoch ends
            // for new records when the recipient's grant does.
            let Some(until) = self.key_holding_until(&key_id, &entry.recipient, ctx.timestamp_ms) else {
                return Err(TxError::NotAuthorised(
                    "recipient is not the patient, the custodian or a live grantee covering this whole category",
                ));
            };
            state.shared_until_ms = state.shared_until_ms.min(until);
            if entry.recipient != *patient && entry.recipient != *custodian {
                shared_by_grant.push(entry.recipient);
            }
            state.holders.push((entry.recipient, tx_id));
        }
        for holder in shared_by_grant {
            let mut keys = self.shared_keys(*patient, holder).cloned().unwrap_or_default();
            if !keys.contains(&key_id) {
                keys.push(key_id.clone());
            }
            self.delta.shared_keys.insert((*patient, holder), keys);
        }
        self.delta.category_keys.insert(key_id, state);
        Ok(())
    }

    /// Until when `holder` may hold `key` received at `at_ms` (see [`super::State::key_holding_until`]).
    fn key_holding_until(&self, key: &CategoryKeyId, holder: &IdentityId, at_ms: TimestampMs) -> Option<TimestampMs> {
        if *holder == key.patient || *holder == key.custodian {
            return Some(TimestampMs::MAX);
        }
        let ids = self.grant_ids(key.patient, *holder)?;
        ids.iter()
            .filter_map(|id| self.grant(id))
            .filter(|g| g.may_share_key(&key.category, at_ms))
            .map(|g| g.valid_until_ms)
            .max()
    }
}
