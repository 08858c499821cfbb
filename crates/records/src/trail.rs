//! A patient's audit trail as a FHIR client asks for it (`AuditEvent?patient=`): the on-chain
//! access events about the patient, oldest first. The patient sees every event; an
//! organisation holding their records (and its staff and systems) only the events about its
//! own records, since writing one record about a patient must not open their whole trail.
//! Anyone else learns nothing, not even that the patient exists, unless they may see the
//! Patient record (then they are told the trail is not theirs).

use medledger_ledger::Purpose;
use medledger_node::index::AccessEntry;
use medledger_types::{IdentityId, RecordId, TimestampMs};

use medledger_node::chain::Chain;

use crate::{access, people};

/// Why a trail is not shown.
#[derive(Debug, thiserror::Error)]
pub enum TrailError {
    /// No Patient record with that id, or one the caller may not see.
    #[error("no such patient")]
    Unknown,
    /// The caller may see the Patient but not their trail.
    #[error("the audit trail of a patient is for the patient and the organisations holding their records")]
    NotOverseer,
}

/// One event of a trail, with what names it for people.
pub struct TrailEntry {
    pub entry: AccessEntry,
    /// The type of the record the event is about, if it is about one.
    pub resource_type: Option<String>,
    /// The validator that recorded it, in words: "node-0 (St Mary's Hospital)".
    pub recorder_name: String,
}

/// A page of a patient's trail.
pub struct Trail {
    /// The patient's identity.
    pub patient: IdentityId,
    /// Events the caller may see in all.
    pub total: usize,
    pub entries: Vec<TrailEntry>,
}

/// The events about the patient whose Patient record is `patient_record`, that `caller` may
/// see, `count` of them after skipping `offset`; all read at one snapshot. (Reading needs no
/// record service: a node with no organisation key answers too.)
pub fn audit_trail(
    chain: &Chain,
    caller: &IdentityId,
    patient_record: &RecordId,
    purpose: Purpose,
    (count, offset): (usize, usize),
    now_ms: TimestampMs,
) -> Result<Trail, TrailError> {
    let index = chain.patient_index();
    let state = index.snapshot();
    let patient = match state.record(patient_record) {
        Some(head) if head.resource_type == "Patient" => head.patient,
        _ => return Err(TrailError::Unknown),
    };
    let custodian_view = if *caller == patient {
        None
    } else {
        match people::organisation_of(state, caller).filter(|o| state.custodies(o, &patient)) {
            Some(organisation) => Some(organisation),
            None if !access::sees(state, caller, patient_record, purpose, now_ms) => {
                return Err(TrailError::Unknown);
            }
            None => return Err(TrailError::NotOverseer),
        }
    };
    let visible: Vec<&AccessEntry> = index
        .patient(&patient)
        .map(|p| {
            p.access
                .iter()
                .filter(|e| {
                    custodian_view.is_none_or(|org| {
                        e.event.record.is_some_and(|(r, _)| index.record(&r).is_some_and(|r| r.custodian == org))
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let total = visible.len();
    let entries = visible
        .into_iter()
        .skip(offset)
        .take(count)
        .map(|entry| TrailEntry {
            entry: entry.clone(),
            resource_type: entry.event.record.and_then(|(r, _)| index.record(&r).map(|r| r.resource_type.clone())),
            recorder_name: people::recorder_display(state, &entry.recorder),
        })
        .collect();
    Ok(Trail { patient, total, entries })
}
