//! The consortium directory as FHIR reads it: an entry (Organization, Practitioner, Location,
//! …) and its history, public to every authenticated caller and kept in the clear on-chain.
//! An id that names no entry of the type answers as unknown; a deleted entry as gone.

use medledger_types::{RecordId, TimestampMs};
use zeroize::Zeroizing;

use crate::{
    RecordError, RecordService,
    history::{HistoryPage, HistoryVersion, Page},
    resource::{ResourceError, ResourceRead, committed_at_ms},
    served::is_tombstone,
};

impl RecordService {
    /// The latest (or `version`) of directory entry `entry_id`, a `resource_type`.
    pub fn directory_read(
        &self,
        resource_type: &str,
        entry_id: RecordId,
        version: Option<u32>,
        now_ms: TimestampMs,
    ) -> Result<ResourceRead, ResourceError> {
        self.directory_entry_of_type(resource_type, &entry_id)?;
        let read = self.read_directory(&entry_id, version)?;
        if is_tombstone(&read.content) {
            return Err(ResourceError::Gone { version: read.version });
        }
        let committed_ms = committed_at_ms(&self.chain, &entry_id, read.version).unwrap_or(now_ms);
        Ok(ResourceRead { version: read.version, committed_ms, plaintext: Zeroizing::new(read.content) })
    }

    /// Every version of directory entry `entry_id`, newest first.
    pub fn directory_history(
        &self,
        resource_type: &str,
        entry_id: RecordId,
        page: Page,
    ) -> Result<HistoryPage, ResourceError> {
        self.directory_entry_of_type(resource_type, &entry_id)?;
        let versions: Vec<(u32, TimestampMs)> = self
            .chain
            .patient_index()
            .directory_versions(&entry_id)
            .iter()
            .rev()
            .map(|(v, p)| (*v, p.committed_at_ms))
            .collect();
        let total = versions.len();
        let wanted: Vec<_> =
            versions.into_iter().skip(page.offset).take(page.count).map(|(v, at)| (entry_id, v, at)).collect();
        Ok(HistoryPage { total, versions: self.directory_versions(wanted)? })
    }

    /// Every version of every `resource_type` directory entry, newest commit first, from one
    /// snapshot.
    pub fn directory_type_history(&self, resource_type: &str, page: Page) -> Result<HistoryPage, RecordError> {
        let snapshot = self.chain.snapshot();
        let index = snapshot.index();
        let mut versions: Vec<(u64, RecordId, u32, TimestampMs)> = snapshot
            .directory_entries()
            .filter(|(_, head)| head.resource_type == resource_type)
            .flat_map(|(id, _)| {
                index.directory_versions(id).iter().map(|(v, p)| (p.log_index, *id, *v, p.committed_at_ms))
            })
            .collect();
        drop(snapshot);
        versions.sort_by_key(|v| std::cmp::Reverse((v.0, v.2)));
        let total = versions.len();
        let wanted: Vec<_> =
            versions.into_iter().skip(page.offset).take(page.count).map(|(_, id, v, at)| (id, v, at)).collect();
        Ok(HistoryPage { total, versions: self.directory_versions(wanted)? })
    }

    /// Whether `who` writes for this node's organisation (the organisation itself, or its
    /// staff or systems): who may change its directory entries.
    pub fn writes_here(&self, who: &medledger_types::IdentityId) -> bool {
        crate::access::is_staff(&self.chain.snapshot(), who, &self.organisation())
    }

    /// Whether `entry_id` is a directory entry of `resource_type`.
    pub fn directory_has(&self, resource_type: &str, entry_id: &RecordId) -> bool {
        self.chain.snapshot().directory_entry(entry_id).is_some_and(|h| h.resource_type == resource_type)
    }

    fn directory_entry_of_type(&self, resource_type: &str, entry_id: &RecordId) -> Result<(), ResourceError> {
        if self.directory_has(resource_type, entry_id) { Ok(()) } else { Err(ResourceError::Unknown) }
    }

    fn directory_versions(
        &self,
        wanted: Vec<(RecordId, u32, TimestampMs)>,
    ) -> Result<Vec<HistoryVersion>, RecordError> {
        wanted
            .into_iter()
            .map(|(record_id, version, committed_ms)| {
                let content = self.read_directory(&record_id, Some(version))?.content;
                Ok(HistoryVersion { record_id, version, committed_ms, plaintext: Zeroizing::new(content) })
            })
            .collect()
    }
}
