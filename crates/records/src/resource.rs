//! The FHIR interactions on one stored record — read, vread, create, update, delete — decided
//! here: whether the record exists for the caller, whether the caller writes for this node's
//! organisation, and which patient and consent category a write is for. A record the caller
//! may not see is, to it, not there (the same answer as an unknown id), and every refused
//! attempt that names a patient is on that patient's trail. The API parses the request, makes
//! these calls and renders their answers; it reads no state itself.
//!
//! What a caller may learn of a record's existence: nothing, unless it may see the record. A
//! record (or patient) the caller may not see answers exactly as an id that names nothing —
//! same status, same message — on every route that takes one: FHIR read, vread, history,
//! update, delete, Provenance, AuditEvent, Consent, `$everything` and Bundle entries, and
//! `/v1/records`. The refusal is still audited (the patient sees the attempt); only the
//! caller's answer does not tell a real id from a random one. "May see" is consent's read
//! decision ([`crate::access::may_read`]) for the request's purpose: the patient, the
//! custodian's staff, or a live grant, rule or break-glass covering the record.

use medledger_ledger::{AccessAction, Purpose, RecordHead};
use medledger_node::chain::Chain;
use medledger_types::{IdentityId, RecordId, TimestampMs};
use zeroize::Zeroizing;

use crate::{
    RecordError, RecordService,
    access::{self, Caller},
    content::{self, RecordContent, Refused},
    served::is_tombstone,
};

/// Why an interaction on a record was refused (beyond what [`RecordError`] says).
#[derive(Debug, thiserror::Error)]
pub enum ResourceError {
    /// No record of the type with the id, or one the caller may not see: answer exactly as for
    /// an id that names nothing.
    #[error("no such resource")]
    Unknown,
    /// The version asked for is a delete marker.
    #[error("deleted (version {version}); its history is kept")]
    Gone { version: u32 },
    /// Only the organisation operating this node, and its staff and systems, write here.
    #[error("only the staff and systems of the organisation operating this node write here")]
    NotStaff,
    /// An update may not move a record to another consent category.
    #[error("a record's consent category never changes")]
    CategoryChanged,
    /// A new version written by a signed request may not change the record's type, patient
    /// or consent category.
    #[error("a record's type, patient and consent category never change: write a new record")]
    Changed,
    /// The content is not a record this node stores (with the FHIR status and issues).
    #[error("the resource is refused")]
    Content(Refused),
    #[error(transparent)]
    Record(#[from] RecordError),
}

impl From<Refused> for ResourceError {
    fn from(refused: Refused) -> Self {
        ResourceError::Content(refused)
    }
}

/// A version read for FHIR read or vread.
pub struct ResourceRead {
    pub version: u32,
    /// Block time of the version's commit (the resource's `meta.lastUpdated`).
    pub committed_ms: TimestampMs,
    pub plaintext: Zeroizing<Vec<u8>>,
}

/// What a checked create or update will write: for whom, in which consent category.
#[derive(Clone, Copy, Debug)]
pub struct WriteTarget {
    /// `None`: a Patient naming no identity, someone new to the network to register first.
    pub patient: Option<IdentityId>,
    pub category: &'static str,
}

/// A record a delete may mark deleted: its head, and whether it already is.
pub struct Deletable {
    pub head: RecordHead,
    pub already_deleted: bool,
}

impl RecordService {
    /// FHIR read (`version` `None`) and vread of a `resource_type` record, audited as a read.
    pub fn read_resource(
        &self,
        caller: Caller<'_>,
        resource_type: &str,
        record_id: RecordId,
        version: Option<u32>,
        purpose: Purpose,
        now_ms: TimestampMs,
    ) -> Result<ResourceRead, ResourceError> {
        // A record of another type is, for this URL, not there (its type never changes).
        if self.chain.snapshot().record(&record_id).is_none_or(|h| h.resource_type != resource_type) {
            return Err(ResourceError::Unknown);
        }
        let read =
            self.read_as(caller, record_id, version, purpose, AccessAction::Read, now_ms).map_err(unless_denied)?;
        if is_tombstone(&read.plaintext) {
            return Err(ResourceError::Gone { version: read.version });
        }
        let committed_ms = self
            .chain
            .patient_index()
            .record(&record_id)
            .and_then(|r| r.versions.iter().find(|v| v.version == read.version).map(|v| v.position.committed_at_ms))
            .unwrap_or(now_ms);
        Ok(ResourceRead { version: read.version, committed_ms, plaintext: read.plaintext })
    }

    /// The head of `record_id` if it is a `resource_type` record that `caller` may see for a
    /// write (treatment). One the caller may not see is [`ResourceError::Unknown`], and the
    /// attempt is on its patient's trail.
    pub fn visible_for_write(
        &self,
        caller: &IdentityId,
        resource_type: &str,
        record_id: RecordId,
        now_ms: TimestampMs,
    ) -> Result<RecordHead, ResourceError> {
        let snapshot = self.chain.snapshot();
        let head =
            snapshot.record(&record_id).filter(|h| h.resource_type == resource_type).ok_or(ResourceError::Unknown)?;
        if access::sees(&snapshot, caller, &record_id, Purpose::Treatment, now_ms) {
            return Ok(head.clone());
        }
        let patient = head.patient;
        drop(snapshot);
        self.audit_refused_write(*caller, patient, Some(record_id), "not-custodian-staff", now_ms)?;
        Err(ResourceError::Unknown)
    }

    /// Checks that `author` writes here (refusing, and auditing when the content names a
    /// patient, if not), then for whom and in which category `content` is written: a create
    /// (`record` `None`) or a new version of `record`, which keeps its category.
    pub fn check_write(
        &self,
        author: IdentityId,
        resource_type: &str,
        content: &RecordContent,
        record: Option<RecordId>,
        now_ms: TimestampMs,
    ) -> Result<WriteTarget, ResourceError> {
        let snapshot = self.chain.snapshot();
        let existing = record.and_then(|id| snapshot.record(&id).map(|h| (h.patient, h.category.clone())));
        if !access::is_staff(&snapshot, &author, &self.organisation()) {
            // Every refusal is on the record: a write attempt about a patient, by someone not
            // the custodian's.
            let named = match &existing {
                Some((patient, _)) => Some(*patient),
                None => content::patient_of(&snapshot, resource_type, &content.json).ok().flatten(),
            };
            drop(snapshot);
            if let Some(patient) = named {
                self.audit_refused_write(author, patient, record, "not-custodian-staff", now_ms)?;
            }
            return Err(ResourceError::NotStaff);
        }
        let named = content::patient_of(&snapshot, resource_type, &content.json)?;
        let category = content.category;
        match (record, existing) {
            (None, _) => Ok(WriteTarget { patient: named, category }),
            (Some(_), None) => Err(ResourceError::Unknown),
            // The ledger refuses a version in another consent category; say so now rather than
            // let the write be refused when its block is built.
            (Some(_), Some((_, old))) if old != category => Err(ResourceError::CategoryChanged),
            (Some(_), Some((patient, _))) => Ok(WriteTarget { patient: Some(named.unwrap_or(patient)), category }),
        }
    }

    /// Checks a FHIR delete of `record_id` by `author`: visible to it, and written by the
    /// custodian's staff (refusals audited). Says whether the record is already deleted.
    pub fn check_delete(
        &self,
        author: IdentityId,
        resource_type: &str,
        record_id: RecordId,
        now_ms: TimestampMs,
    ) -> Result<Deletable, ResourceError> {
        let head = self.visible_for_write(&author, resource_type, record_id, now_ms)?;
        if !access::is_staff(&self.chain.snapshot(), &author, &self.organisation()) {
            self.audit_refused_write(author, head.patient, Some(record_id), "not-custodian-staff", now_ms)?;
            return Err(ResourceError::NotStaff);
        }
        let latest = self.plaintext_for_index(&record_id, head.latest_version)?;
        Ok(Deletable { already_deleted: is_tombstone(&latest), head })
    }
}

impl RecordService {
    /// A record version written by a request `author` signed with their own key
    /// (`POST /v1/records`): by the custodian's staff only (checked first: the content checks
    /// look patients up, which is no one else's business), about `patient` and no one else,
    /// and a new version keeps its record's type, patient and category. A record the author
    /// may not see answers as an unknown one. Refusals are on the patient's trail.
    pub fn write_signed(
        &self,
        author: IdentityId,
        patient: IdentityId,
        record: Option<RecordId>,
        body: &[u8],
        now_ms: TimestampMs,
        rng: &mut impl rand::CryptoRng,
    ) -> Result<crate::Written, ResourceError> {
        if !access::is_staff(&self.chain.snapshot(), &author, &self.organisation()) {
            self.audit_refused_write(author, patient, record, "not-custodian-staff", now_ms)?;
            return Err(ResourceError::NotStaff);
        }
        if let Some(record_id) = record {
            let hidden = {
                let state = self.chain.snapshot();
                let patient = state.record(&record_id).map(|h| h.patient);
                patient.filter(|_| !access::sees(&state, &author, &record_id, Purpose::Treatment, now_ms))
            };
            if let Some(patient) = hidden {
                self.audit_refused_write(author, patient, Some(record_id), "not-custodian-staff", now_ms)?;
                return Err(ResourceError::Unknown);
            }
        }
        // Exactly what `POST /fhir/{type}` checks of a record (strict parse, validation, a
        // served type, no delete marker, the category), and that it names no other patient.
        let content = content::check_record(None, body)?;
        let resource_type = content.validated.resource_type.clone();
        let category = content.category;
        {
            let state = self.chain.snapshot();
            content::check_patient_named(&state, &resource_type, &content.json, &patient)?;
            if let Some(record_id) = record {
                let head = state.record(&record_id).ok_or(ResourceError::Unknown)?;
                if head.resource_type != resource_type || head.patient != patient || head.category != category {
                    return Err(ResourceError::Changed);
                }
            }
        }
        let request =
            crate::WriteRequest { author, patient, resource_type: &resource_type, category, content: body, record };
        Ok(self.write(&request, now_ms, rng)?)
    }
}

/// When `version` of a record or directory entry was committed (its block's time), if it is.
pub fn committed_at_ms(chain: &Chain, id: &RecordId, version: u32) -> Option<TimestampMs> {
    let index = chain.patient_index();
    if let Some(record) = index.record(id) {
        return record.versions.iter().find(|v| v.version == version).map(|v| v.position.committed_at_ms);
    }
    index.directory_versions(id).iter().find(|(v, _)| *v == version).map(|(_, p)| p.committed_at_ms)
}

/// The latest committed version of a record or directory entry.
pub fn latest_version(chain: &Chain, id: &RecordId) -> Option<u32> {
    let state = chain.snapshot();
    state.record(id).map(|h| h.latest_version).or_else(|| state.directory_entry(id).map(|h| h.latest_version))
}

/// A read refused by consent answers as an unknown id (the refusal is audited by the read).
fn unless_denied(error: RecordError) -> ResourceError {
    match error {
        RecordError::Denied(_) => ResourceError::Unknown,
        other => ResourceError::Record(other),
    }
}
