//! `Patient/$everything`: the latest version of every record of a patient that the caller may
//! read, the Patient first, then the rest in the order they were written. Consent decides per
//! record before paging, so the total and the pages say nothing about records the caller may
//! not see; refusals are left out and audited (at most a page's worth per request, so one
//! request cannot queue unbounded events). A caller who may see none of them gets the answer
//! for an unknown patient.

use medledger_ledger::{AccessAction, Purpose};
use medledger_types::{RecordId, TimestampMs};
use zeroize::Zeroizing;

use crate::{
    RecordService,
    access::{self, Caller, interactions},
    history::Page,
    resource::ResourceError,
    served::{SERVED_TYPES, is_tombstone},
};

/// One record of an `$everything` page.
pub struct Member {
    pub record_id: RecordId,
    pub resource_type: String,
    pub version: u32,
    pub committed_ms: TimestampMs,
    pub plaintext: Zeroizing<Vec<u8>>,
}

/// A page of `$everything`: how many records the caller may see in all, and this page's
/// readable, undeleted ones.
pub struct Everything {
    pub total: usize,
    pub members: Vec<Member>,
}

impl RecordService {
    /// `$everything` of the patient whose Patient record is `patient_record`.
    pub fn everything(
        &self,
        caller: Caller<'_>,
        patient_record: RecordId,
        purpose: Purpose,
        page: Page,
        now_ms: TimestampMs,
    ) -> Result<Everything, ResourceError> {
        let index = self.chain.patient_index();
        let state = index.snapshot();
        let patient = match state.record(&patient_record) {
            Some(head) if head.resource_type == "Patient" => head.patient,
            _ => return Err(ResourceError::Unknown),
        };
        let mut members: Vec<(RecordId, String, u32, TimestampMs)> = index
            .patient(&patient)
            .map(|p| {
                p.records
                    .iter()
                    .filter(|r| SERVED_TYPES.contains(&r.resource_type.as_str()))
                    // Scopes narrow too: only the types the credential may read.
                    .filter(|r| caller.credential.permits(&r.resource_type, interactions::READ))
                    .filter_map(|r| {
                        let latest = r.versions.last()?;
                        Some((r.record_id, r.resource_type.clone(), latest.version, latest.position.committed_at_ms))
                    })
                    .collect()
            })
            .unwrap_or_default();
        members.sort_by_key(|(id, resource_type, _, _)| (*id != patient_record, resource_type != "Patient"));
        // Consent decides before counting, at the same snapshot.
        let (mut visible, mut refused) = (Vec::with_capacity(members.len()), Vec::new());
        for member in members {
            match access::may_read(state, &caller.identity, &member.0, purpose, now_ms) {
                Some(Ok(_)) => visible.push(member),
                Some(Err(denial)) => refused.push((member.0, denial.code())),
                None => {}
            }
        }
        drop(index);
        for (refused_id, code) in refused.into_iter().take(page.count) {
            self.audit_refused_access(caller.identity, refused_id, AccessAction::Read, purpose, code, now_ms)?;
        }
        if visible.is_empty() {
            return Err(ResourceError::Unknown);
        }
        let total = visible.len();
        let wanted: Vec<_> = visible.into_iter().skip(page.offset).take(page.count).collect();
        let items: Vec<_> = wanted.iter().map(|(id, _, version, _)| (*id, Some(*version))).collect();
        let reads = self.read_many(caller, &items, purpose, AccessAction::Read, now_ms)?;
        // Not readable by this caller after all (refused and audited by the read), or
        // deleted: left out.
        let members = wanted
            .into_iter()
            .zip(reads)
            .filter_map(|((record_id, resource_type, version, committed_ms), read)| {
                let read = read.ok().filter(|r| !is_tombstone(&r.plaintext))?;
                Some(Member { record_id, resource_type, version, committed_ms, plaintext: read.plaintext })
            })
            .collect();
        Ok(Everything { total, members })
    }
}
