//! The consortium directory: Organization, Practitioner, PractitionerRole and Location
//! resources in clear, versioned, owned by the organisation whose node wrote them.

use medledger_types::{RecordId, Role, limits};

use super::{
    DirectoryHead,
    overlay::{OpContext, Overlay},
};
use crate::error::TxError;

impl Overlay<'_> {
    /// Writes a version of a directory entry: signed by a member's node for its organisation,
    /// versions in sequence, owner and type fixed, never at a record's id.
    pub(super) fn put_directory_entry(
        &mut self,
        cx: OpContext,
        entry_id: &RecordId,
        version: &u32,
        resource_type: &str,
        content: &[u8],
    ) -> Result<(), TxError> {
        let OpContext { signer, tx_id, .. } = cx;
        let signer_identity = self.require(&signer, "signer")?;
        // Only an organisation's node signs: it checks the content is a valid FHIR
        // resource of the type carrying no patient data (no contained resources,
        // narrative or unlisted extensions) before signing. Staff and the organisation
        // write through it, so an organisation's key alone cannot publish anything in
        // clear.
        let owner = match signer_identity.role {
            Role::Validator => signer_identity
                .organisation
                .ok_or(TxError::NotAuthorised("directory entries are written for a member organisation"))?,
            _ => {
                return Err(TxError::NotAuthorised(
                    "directory entries are written by a member organisation's node, which checks them",
                ));
            }
        };
        if !medledger_types::is_directory_resource_type(resource_type) {
            return Err(TxError::InvalidField("not a directory resource type"));
        }
        if content.is_empty() || content.len() > limits::DIRECTORY_CONTENT_BYTES_MAX {
            return Err(TxError::InvalidField("directory content length out of range"));
        }
        let mut versions = Vec::new();
        match self.directory_entry(entry_id) {
            None if *version == 1 => {}
            None => return Err(TxError::InvalidField("the first version of a directory entry is 1")),
            Some(head) => {
                if head.owner != owner {
                    return Err(TxError::NotAuthorised("only the owning organisation updates a directory entry"));
                }
                if head.resource_type != *resource_type {
                    return Err(TxError::InvalidField("the resource type of a directory entry never changes"));
                }
                if *version != head.latest_version + 1 {
                    return Err(TxError::InvalidField("version must be the latest version plus one"));
                }
                versions = head.versions.clone();
            }
        }
        if self.record(entry_id).is_some() {
            return Err(TxError::InvalidField("the id is a record's"));
        }
        versions.push(tx_id);
        self.delta.directory.insert(
            *entry_id,
            DirectoryHead { resource_type: resource_type.to_owned(), owner, latest_version: *version, versions },
        );
        Ok(())
    }
}
