//! FHIR history of stored records: every version of one record (instance history) or of every
//! record of a type (type history), newest first, one page at a time. Consent decides before
//! anything is counted: a caller who may not read a record learns nothing of its history, not
//! even its length; each returned version is a read like any other (decided and audited).

use medledger_ledger::{AccessAction, Purpose};
use medledger_node::{chain::Chain, index::TxPosition};
use medledger_types::{IdentityId, RecordId, TimestampMs};
use zeroize::Zeroizing;

use crate::{
    RecordError, RecordService,
    access::{self, AccessRequest, Caller},
    resource::ResourceError,
    served::is_tombstone,
};

/// One version in a history page.
pub struct HistoryVersion {
    pub record_id: RecordId,
    pub version: u32,
    pub committed_ms: TimestampMs,
    pub plaintext: Zeroizing<Vec<u8>>,
}

/// A page of a history: how many versions the whole history has (of the records the caller
/// may read), and this page's, newest first.
pub struct HistoryPage {
    pub total: usize,
    pub versions: Vec<HistoryVersion>,
}

/// Who wrote a version and which signed transaction committed it (a FHIR Provenance).
pub struct VersionProvenance {
    pub version: u32,
    pub author: IdentityId,
    /// The organisation the record is kept for.
    pub custodian: IdentityId,
    pub position: TxPosition,
    /// The committing transaction's signer and signature.
    pub signer: IdentityId,
    pub signature: [u8; 64],
    /// Whether the version is a delete marker.
    pub deleted: bool,
}

/// One version's plaintext, or why it could not be read.
type PlaintextRead = Result<Zeroizing<Vec<u8>>, RecordError>;

/// Which part of a history: at most `count` versions, after skipping `offset`.
#[derive(Clone, Copy, Debug)]
pub struct Page {
    pub count: usize,
    pub offset: usize,
}

impl RecordService {
    /// Every version of `resource_type` record `record_id`, newest first. A record the caller
    /// may not read (or of another type) is [`ResourceError::Unknown`]; the refusal is audited.
    pub fn record_history(
        &self,
        caller: Caller<'_>,
        resource_type: &str,
        record_id: RecordId,
        purpose: Purpose,
        page: Page,
        now_ms: TimestampMs,
    ) -> Result<HistoryPage, ResourceError> {
        let index = self.chain.patient_index();
        let decision = history_decision(index.snapshot(), caller, resource_type, record_id, purpose, now_ms)?;
        if !decision.is_allowed() {
            drop(index);
            self.audit_decision(&decision, now_ms)?;
            return Err(ResourceError::Unknown);
        }
        let versions: Vec<(u32, TimestampMs)> = index
            .record(&record_id)
            .map(|r| r.versions.iter().rev().map(|v| (v.version, v.position.committed_at_ms)).collect())
            .unwrap_or_default();
        drop(index);
        let total = versions.len();
        let wanted: Vec<(RecordId, u32, TimestampMs)> =
            versions.into_iter().skip(page.offset).take(page.count).map(|(v, at)| (record_id, v, at)).collect();
        let reads = self.read_versions(caller, &wanted, purpose, now_ms)?;
        // A version the record's own history lists reads like the others, or the whole
        // answer fails (as a read of it would).
        let versions = wanted
            .into_iter()
            .zip(reads)
            .map(|((record_id, version, committed_ms), read)| {
                read.map(|plaintext| HistoryVersion { record_id, version, committed_ms, plaintext })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(HistoryPage { total, versions })
    }

    /// Every version of every `resource_type` record the caller may read, newest commit
    /// first; records consent refuses are left out before counting, all decided at one
    /// snapshot.
    pub fn type_history(
        &self,
        caller: Caller<'_>,
        resource_type: &str,
        purpose: Purpose,
        page: Page,
        now_ms: TimestampMs,
    ) -> Result<HistoryPage, RecordError> {
        let index = self.chain.patient_index();
        let mut versions: Vec<(u64, RecordId, u32, TimestampMs)> = Vec::new();
        for record in index.records().filter(|r| r.resource_type == resource_type) {
            let request = AccessRequest {
                caller: caller.identity,
                credential: caller.credential,
                action: AccessAction::History,
                purpose,
                record: record.record_id,
                version: None,
                now_ms,
            };
            if access::check(index.snapshot(), &request).is_some_and(|outcome| outcome.is_ok()) {
                versions.extend(
                    record
                        .versions
                        .iter()
                        .map(|v| (v.position.log_index, record.record_id, v.version, v.position.committed_at_ms)),
                );
            }
        }
        drop(index);
        versions.sort_by_key(|v| std::cmp::Reverse(v.0));
        let total = versions.len();
        let wanted: Vec<(RecordId, u32, TimestampMs)> =
            versions.into_iter().skip(page.offset).take(page.count).map(|(_, r, v, at)| (r, v, at)).collect();
        let reads = self.read_versions(caller, &wanted, purpose, now_ms)?;
        // A version consent refused between the listing and the read is left out of the page.
        let versions = wanted
            .into_iter()
            .zip(reads)
            .filter_map(|((record_id, version, committed_ms), read)| {
                read.ok().map(|plaintext| HistoryVersion { record_id, version, committed_ms, plaintext })
            })
            .collect();
        Ok(HistoryPage { total, versions })
    }

    /// Reads each (record, version), audited as history reads.
    fn read_versions(
        &self,
        caller: Caller<'_>,
        wanted: &[(RecordId, u32, TimestampMs)],
        purpose: Purpose,
        now_ms: TimestampMs,
    ) -> Result<Vec<PlaintextRead>, RecordError> {
        let items: Vec<(RecordId, Option<u32>)> = wanted.iter().map(|(r, v, _)| (*r, Some(*v))).collect();
        Ok(self
            .read_many(caller, &items, purpose, AccessAction::History, now_ms)?
            .into_iter()
            .map(|read| read.map(|r| r.plaintext))
            .collect())
    }
}

/// The provenance of every version of `resource_type` record `record_id`, newest first.
/// The lookup is audited as a history access, allowed or not, when this node serves
/// records (`service`: it has the audit queue; a node with no organisation key answers
/// too, without knowing which versions are deletes); one the caller may not make is
/// [`ResourceError::Unknown`].
pub fn provenance(
    chain: &Chain,
    service: Option<&RecordService>,
    caller: Caller<'_>,
    resource_type: &str,
    record_id: RecordId,
    purpose: Purpose,
    now_ms: TimestampMs,
) -> Result<Vec<VersionProvenance>, ResourceError> {
    let index = chain.patient_index();
    // Decided and recorded at one time: the event names the grant in force then.
    let decision = history_decision(index.snapshot(), caller, resource_type, record_id, purpose, now_ms)?;
    let record = index.record(&record_id).map(|r| (r.custodian, r.versions.clone()));
    drop(index);
    if let Some(service) = service {
        service.audit_decision(&decision, now_ms)?;
    }
    if !decision.is_allowed() {
        return Err(ResourceError::Unknown);
    }
    let (custodian, versions) = record.ok_or(ResourceError::Unknown)?;
    let mut out = Vec::with_capacity(versions.len());
    for version in versions.iter().rev() {
        let Some(tx) = chain.transaction(&version.position.tx_id).map_err(RecordError::Chain)? else {
            continue;
        };
        // A delete is a version too: its marker says so (the caller may read the record).
        let deleted = service
            .and_then(|s| s.plaintext_for_index(&record_id, version.version).ok())
            .is_some_and(|p| is_tombstone(&p));
        out.push(VersionProvenance {
            version: version.version,
            author: version.author,
            custodian,
            position: version.position,
            signer: tx.body().signer,
            signature: tx.signature().0,
            deleted,
        });
    }
    Ok(out)
}

/// Consent's decision on `caller` reading the history of `resource_type` record `record_id`;
/// [`ResourceError::Unknown`] when there is no such record of that type.
fn history_decision(
    state: &medledger_ledger::State,
    caller: Caller<'_>,
    resource_type: &str,
    record_id: RecordId,
    purpose: Purpose,
    now_ms: TimestampMs,
) -> Result<access::Decision, ResourceError> {
    let request = AccessRequest {
        caller: caller.identity,
        credential: caller.credential,
        action: AccessAction::History,
        purpose,
        record: record_id,
        version: None,
        now_ms,
    };
    access::authorize(state, &request).filter(|d| d.head.resource_type == resource_type).ok_or(ResourceError::Unknown)
}
