//! Batches (kind 14): a validator's all-or-nothing group of patient registrations, key shares,
//! record commits and directory puts under one signature, nonce and log leaf. Each operation is
//! checked as if the validator had signed it alone, seeing the ones before it.

use medledger_types::{Role, TxId};

use super::overlay::{OpContext, Overlay};
use crate::{error::TxError, tx::Payload};

impl Overlay<'_> {
    /// Runs a batch's operations in a child overlay, so that either all of them apply or none.
    pub(super) fn execute_batch(&mut self, ops: &[Payload], cx: OpContext) -> Result<(), TxError> {
        let OpContext { signer, role, tx_id, .. } = cx;
        let organisation = self.require(&signer, "signer")?.organisation;
        if role != Some(Role::Validator) || organisation.is_none() {
            return Err(TxError::NotAuthorised("only a member organisation's validator signs a batch"));
        }
        if ops.is_empty() {
            return Err(TxError::InvalidField("a batch needs at least one operation"));
        }
        let delta = {
            let mut child = self.child();
            for (index, op) in ops.iter().enumerate() {
                let allowed = matches!(
                    op,
                    Payload::RegisterIdentity { role: Role::Patient, .. }
                        | Payload::KeyShare { .. }
                        | Payload::RecordCommit { .. }
                        | Payload::DirectoryPut { .. }
                );
                let result = if allowed {
                    // Rules reacting to several records of one batch derive distinct grant ids.
                    child.apply_op(op, OpContext { source_id: batch_op_id(&tx_id, index as u32), ..cx })
                } else {
                    Err(TxError::InvalidField(
                        "a batch holds only patient registrations, key shares, record commits and directory entries",
                    ))
                };
                result.map_err(|error| TxError::InBatch { index, error: Box::new(error) })?;
            }
            child.delta
        };
        self.delta.merge(delta);
        Ok(())
    }
}

/// The id rules derive grants from for operation `index` of batch `tx`.
fn batch_op_id(tx: &TxId, index: u32) -> TxId {
    let index = index.to_be_bytes();
    let parts: [&[u8]; 3] = [b"medledger/batch-op/v1", &tx.0, &index];
    TxId(medledger_crypto::sha256_parts(&parts).0)
}
