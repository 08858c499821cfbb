//! Record commits: a new version of an encrypted record, written for its custodian under the
//! current epoch of its category key. The patient's reacting sharing rules run on each commit.

use medledger_types::{Role, limits};

use super::{
    CategoryKeyId, RecordHead,
    overlay::{OpContext, Overlay, check_resource_type},
};
use crate::{error::TxError, rules::CommittedRecord, tx::Payload};

impl Overlay<'_> {
    /// Commits a version of a record (`op` is a `Payload::RecordCommit`): by its author or the
    /// custodian's node, versions in sequence, patient, custodian, type and category fixed, under
    /// the category key's current epoch unless that key must rotate.
    pub(super) fn commit_record(&mut self, cx: OpContext, op: &Payload) -> Result<(), TxError> {
        let OpContext { signer, tx_id, source_id, block: ctx, .. } = cx;
        let Payload::RecordCommit {
            record_id,
            version,
            patient,
            custodian,
            author,
            resource_type,
            category,
            key_epoch,
            ciphertext_hash: _,
            ciphertext_bytes,
            wrapped_data_key: _,
        } = op
        else {
            unreachable!("apply_op dispatches record commits here")
        };
        let custodian_identity = self.require(custodian, "custodian")?;
        if custodian_identity.role != Role::Organisation {
            return Err(TxError::InvalidField("custodian must be a member organisation"));
        }
        let author_identity = self.require(author, "author")?;
        let author_writes_for_custodian = *author == *custodian
            || (matches!(author_identity.role, Role::Practitioner | Role::SystemClient)
                && author_identity.organisation == Some(*custodian));
        if !author_writes_for_custodian {
            return Err(TxError::NotAuthorised("the author must be the custodian or one of its staff or clients"));
        }
        // The author signs, or the custodian's node signs on the author's behalf.
        let signer_identity = self.require(&signer, "signer")?;
        let node_of_custodian =
            signer_identity.role == Role::Validator && signer_identity.organisation == Some(*custodian);
        if signer != *author && !node_of_custodian {
            return Err(TxError::NotAuthorised("a record is signed by its author or by the custodian's node"));
        }
        if self.require(patient, "patient")?.role != Role::Patient {
            return Err(TxError::InvalidField("patient must be a patient identity"));
        }
        check_resource_type(resource_type)?;
        if !medledger_types::categories_of_resource_type(resource_type).contains(&category.as_str()) {
            return Err(TxError::InvalidField("category does not fit the resource type"));
        }
        if *ciphertext_bytes == 0 || *ciphertext_bytes > limits::RECORD_CIPHERTEXT_BYTES_MAX {
            return Err(TxError::InvalidField("ciphertext length out of range"));
        }
        if self.directory_entry(record_id).is_some() {
            return Err(TxError::InvalidField("the id is a directory entry's"));
        }
        let mut previous_versions = Vec::new();
        match self.record(record_id) {
            None if *version == 1 => {}
            None => return Err(TxError::InvalidField("the first version of a record is 1")),
            Some(head) => {
                previous_versions = head.versions.clone();
                if head.patient != *patient || head.custodian != *custodian {
                    return Err(TxError::InvalidField("patient and custodian of a record never change"));
                }
                if head.resource_type != *resource_type || head.category != *category {
                    return Err(TxError::InvalidField("resource type and category of a record never change"));
                }
                if *version != head.latest_version + 1 {
                    return Err(TxError::InvalidField("version must be the latest version plus one"));
                }
            }
        }
        let key_id = CategoryKeyId { custodian: *custodian, patient: *patient, category: category.clone() };
        match self.category_key(&key_id) {
            None => {
                return Err(TxError::InvalidField(
                    "no category key yet: share one with the patient and the custodian first",
                ));
            }
            Some(key) if key.epoch != *key_epoch => {
                return Err(TxError::InvalidField("record must use the current epoch of its category key"));
            }
            Some(key) if key.must_rotate(ctx.timestamp_ms) => {
                return Err(TxError::InvalidField(
                    "category key must be rotated (a grant it was shared under has ended) before new records are written",
                ));
            }
            Some(_) => {}
        }
        self.delta.records.insert(
            *record_id,
            RecordHead {
                patient: *patient,
                custodian: *custodian,
                resource_type: resource_type.clone(),
                category: category.clone(),
                latest_version: *version,
                versions: {
                    previous_versions.push(tx_id);
                    previous_versions
                },
            },
        );
        let committed = CommittedRecord {
            record_id: *record_id,
            version: *version,
            custodian: *custodian,
            resource_type,
            category,
            height: ctx.height,
            timestamp_ms: ctx.timestamp_ms,
        };
        self.react_to_record((source_id, signer), *patient, &committed);
        Ok(())
    }
}
