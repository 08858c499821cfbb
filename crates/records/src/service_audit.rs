//! The record service's audit side: the access events of decisions made outside a read
//! (history, refusals before any consent decision, refused writes, counts), the journal, and
//! committing events (`crate::journal`). Every method that records returns an error when the
//! event cannot be recorded; callers then refuse the request rather than act unrecorded.

use medledger_ledger::{AccessAction, AccessEvent, AccessOutcome, Purpose, access::Basis};
use medledger_types::{IdentityId, RecordId, TimestampMs, TxId};

use crate::{
    RecordError,
    access::{self, AccessRequest, SignedRequest},
    journal::Synced,
    service::RecordService,
};

impl RecordService {
    /// Journals this node's access events in `path` (see `crate::journal`), queuing again what a
    /// previous run journaled and the chain does not hold. Returns how many were queued again.
    pub fn open_audit_journal(&self, path: &std::path::Path, now_ms: TimestampMs) -> Result<usize, RecordError> {
        Ok(self.audit.open_journal(path, &self.chain, &self.node_identity(), now_ms)?)
    }

    /// Records an access to `record_id` refused before any consent decision (e.g. the caller's
    /// token scopes do not cover it) as a denied access event with `reason`, when the caller is
    /// a registered identity and the record exists.
    pub fn audit_refused_access(
        &self,
        requester: IdentityId,
        record_id: RecordId,
        action: AccessAction,
        purpose: Purpose,
        reason: &str,
        now_ms: TimestampMs,
    ) -> Result<(), RecordError> {
        let head = {
            let state = self.chain.snapshot();
            let Some(head) = state.record(&record_id).map(|h| (h.patient, h.latest_version)) else { return Ok(()) };
            if state.identity(&requester).is_none() {
                return Ok(());
            }
            head
        };
        let event = AccessEvent {
            accessor: requester,
            patient: head.0,
            record: Some((record_id, head.1)),
            action,
            purpose,
            outcome: AccessOutcome::Denied,
            grant_id: None,
            reason: reason.to_owned(),
            at_ms: now_ms,
        };
        Ok(self.audit.record_refusal(event, now_ms)?)
    }

    /// Records a refused write attempt as an access event (when both parties are registered and
    /// the subject is a patient, so the event is valid on-chain).
    pub fn audit_refused_write(
        &self,
        requester: IdentityId,
        patient: IdentityId,
        record: Option<RecordId>,
        reason: &str,
        now_ms: TimestampMs,
    ) -> Result<(), RecordError> {
        let (valid, record) = {
            let state = self.chain.snapshot();
            let valid = state.identity(&requester).is_some()
                && state.identity(&patient).is_some_and(|p| p.role == medledger_types::Role::Patient);
            let record =
                record.and_then(|r| state.record(&r).filter(|h| h.patient == patient).map(|h| (r, h.latest_version)));
            (valid, record)
        };
        if !valid {
            return Ok(());
        }
        let event = AccessEvent {
            accessor: requester,
            patient,
            record,
            action: AccessAction::Write,
            purpose: Purpose::Treatment,
            outcome: AccessOutcome::Denied,
            grant_id: None,
            reason: reason.to_owned(),
            at_ms: now_ms,
        };
        Ok(self.audit.record_refusal(event, now_ms)?)
    }

    /// Records that `requester` learned how many of `patient`'s records match a search (a
    /// `_summary=count` or `_count=0` search, or a conditional check), each of which it may
    /// read on `basis`: one `Search` event per patient, naming no record, so a count is on the
    /// trail like the records a search returns.
    pub fn audit_count(
        &self,
        requester: IdentityId,
        patient: IdentityId,
        purpose: Purpose,
        basis: Basis,
        now_ms: TimestampMs,
    ) -> Result<(), RecordError> {
        let mut synced = Synced::default();
        self.audit_count_deferred(requester, patient, purpose, basis, now_ms, &mut synced)?;
        self.sync_audit(synced)
    }

    /// [`RecordService::audit_count`] with the journal sync left to the caller.
    pub fn audit_count_deferred(
        &self,
        requester: IdentityId,
        patient: IdentityId,
        purpose: Purpose,
        basis: Basis,
        now_ms: TimestampMs,
        synced: &mut Synced,
    ) -> Result<(), RecordError> {
        let event = AccessEvent {
            accessor: requester,
            patient,
            record: None,
            action: AccessAction::Search,
            purpose,
            outcome: basis.outcome(),
            grant_id: basis.grant(),
            reason: basis.code().to_owned(),
            at_ms: now_ms,
        };
        Ok(self.audit.record_deferred(event, synced)?)
    }

    /// Records that a search `requester` made found `record_id` (a conditional create's or
    /// conditional reference's match: the caller learns it exists and matches, though no
    /// content is returned): a `Search` event naming the record, on the basis consent gives.
    /// A record the caller may not see is never a match, so a refusal here is recorded as one.
    pub fn audit_match(
        &self,
        requester: IdentityId,
        record_id: RecordId,
        purpose: Purpose,
        now_ms: TimestampMs,
    ) -> Result<(), RecordError> {
        let request = AccessRequest {
            caller: requester,
            credential: &SignedRequest,
            action: AccessAction::Search,
            purpose,
            record: record_id,
            version: None,
            now_ms,
        };
        let Some(decision) = access::authorize(&self.chain.snapshot(), &request) else { return Ok(()) };
        let mut synced = Synced::default();
        self.record_decision(&decision, now_ms, &mut synced)?;
        self.sync_audit(synced)
    }

    /// Access events recorded and not yet known committed.
    pub fn pending_events(&self) -> usize {
        self.audit.pending()
    }

    /// Commits recorded access events in batches, signed by this node. Events that cannot be
    /// submitted (mempool full) stay recorded for the next flush; committed ones leave the
    /// journal.
    pub fn flush_events(&self, now_ms: TimestampMs) -> Result<Vec<TxId>, RecordError> {
        Ok(self.audit.flush(&self.chain, &self.node_keys, now_ms)?)
    }
}
