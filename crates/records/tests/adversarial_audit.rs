//! Attacks on the audit trail's completeness (issue 9, items 4 and 5): reads served while their
//! access events could not be recorded (a full mempool), events lost in a crash before they
//! committed, and one identity's refused reads flooding a patient's trail.

use std::sync::Arc;

use medledger_blobs::{BlobStore, MemoryBlobStore};
use medledger_crypto::Keypair;
use medledger_ledger::{AccessOutcome, Payload, Purpose};
use medledger_node::{
    chain::Chain,
    devnet::{Devnet, commit_pending},
};
use medledger_records::journal::{AuditLimits, OVER_QUOTA_REASON};
use medledger_records::{RecordError, RecordService, WriteRequest};
use medledger_types::{RecordId, Role};

const T0: u64 = 1_900_000_000_000;

struct World {
    net: Devnet,
    chain: Arc<Chain>,
    blobs: Arc<dyn BlobStore>,
    doc: Keypair,
    stranger: Keypair,
    patient: Keypair,
    t: u64,
    dir: tempfile::TempDir,
}

impl World {
    fn new() -> Self {
        let net = Devnet::new("medledger.audit", T0, &["Hospital A", "Clinic B"], 1, &mut |l| Keypair::from_label(l));
        let dir = tempfile::tempdir().unwrap();
        let (chain, _) =
            Chain::open(&dir.path().join("chain"), &net.genesis, net.validators[0].clone(), &mut |_, _| {}).unwrap();
        let (org_a, org_b) = (net.organisations[0].clone(), net.organisations[1].clone());
        let (doc, stranger, patient) =
            (Keypair::from_label("dr-a"), Keypair::from_label("dr-stranger"), Keypair::from_label("patient"));
        chain.submit_as(&org_a, Payload::register(Role::Practitioner, &doc, Some(org_a.id()), "Dr A"), T0).unwrap();
        chain
            .submit_as(&org_b, Payload::register(Role::Practitioner, &stranger, Some(org_b.id()), "Dr S"), T0)
            .unwrap();
        chain.submit_as(&org_a, Payload::register(Role::Patient, &patient, None, ""), T0).unwrap();
        let w = Self {
            net,
            chain: Arc::new(chain),
            blobs: Arc::new(MemoryBlobStore::default()),
            doc,
            stranger,
            patient,
            t: T0,
            dir,
        };
        w.commit();
        w
    }

    fn commit(&self) {
        commit_pending(&self.chain, self.net.validators[0].id(), self.t + 1000).unwrap();
    }

    fn service(&self) -> RecordService {
        RecordService::new(
            self.chain.clone(),
            self.net.validators[0].clone(),
            self.net.organisations[0].clone(),
            self.blobs.clone(),
        )
    }

    fn write_lab(&self, service: &RecordService) -> RecordId {
        let request = WriteRequest {
            author: self.doc.id(),
            patient: self.patient.id(),
            resource_type: "Observation",
            category: "labs",
            content: br#"{"resourceType":"Observation","status":"final"}"#,
            record: None,
        };
        let written = service.write(&request, self.t, &mut rand::rng()).unwrap();
        self.commit();
        written.record_id
    }

    /// The access events on the chain about the patient, as the index holds them.
    fn events_on_chain(&self) -> Vec<medledger_ledger::AccessEvent> {
        let index = self.chain.patient_index();
        index
            .patient(&self.patient.id())
            .map(|p| p.access.iter().map(|a| a.event.clone()).collect())
            .unwrap_or_default()
    }
}

#[test]
fn reads_are_refused_when_their_access_event_cannot_be_recorded() {
    let w = World::new();
    let limits = AuditLimits { pending_events_max: 3, ..AuditLimits::default() };
    let service = w.service().with_audit_limits(limits);
    let lab = w.write_lab(&service);
    for _ in 0..3 {
        service.read(w.doc.id(), lab, None, Purpose::Treatment, w.t).unwrap();
    }
    // Three events await commitment (the mempool cannot take them, say): the next read is not
    // served, because its event could not be recorded.
    let refused = service.read(w.doc.id(), lab, None, Purpose::Treatment, w.t);
    assert!(matches!(refused, Err(RecordError::Audit(_))), "a read was served with its event unrecorded");
    // Once they commit, reads are served again.
    service.flush_events(w.t).unwrap();
    w.commit();
    service.flush_events(w.t).unwrap();
    assert_eq!(service.pending_events(), 0);
    service.read(w.doc.id(), lab, None, Purpose::Treatment, w.t).unwrap();
    assert_eq!(w.events_on_chain().len(), 3);
}

#[test]
fn access_events_survive_a_crash_before_they_commit() {
    let w = World::new();
    let journal = w.dir.path().join("audit.journal");
    let lab = {
        let service = w.service();
        assert_eq!(service.open_audit_journal(&journal, w.t).unwrap(), 0);
        let lab = w.write_lab(&service);
        service.read(w.doc.id(), lab, None, Purpose::Treatment, w.t).unwrap();
        assert!(service.read(w.stranger.id(), lab, None, Purpose::Treatment, w.t).is_err());
        // The node dies here: nothing was flushed to the chain.
        lab
    };
    assert!(w.events_on_chain().is_empty());
    let restarted = w.service();
    assert_eq!(restarted.open_audit_journal(&journal, w.t).unwrap(), 2, "both decisions come back from the journal");
    restarted.flush_events(w.t).unwrap();
    w.commit();
    let events = w.events_on_chain();
    assert_eq!(events.len(), 2);
    assert!(events.iter().any(|e| e.accessor == w.doc.id() && e.outcome == AccessOutcome::Allowed));
    assert!(events.iter().any(|e| e.accessor == w.stranger.id() && e.outcome == AccessOutcome::Denied));
    assert_eq!(events[0].record.map(|(r, _)| r), Some(lab));
    // A crash after they committed, before the journal was emptied, commits nothing twice.
    drop(restarted);
    let again = w.service();
    assert_eq!(again.open_audit_journal(&journal, w.t).unwrap(), 0);
    again.flush_events(w.t).unwrap();
    w.commit();
    assert_eq!(w.events_on_chain().len(), 2);
    // Once everything is committed and settled, the journal is emptied.
    again.read(w.doc.id(), lab, None, Purpose::Treatment, w.t).unwrap();
    again.flush_events(w.t).unwrap();
    w.commit();
    again.flush_events(w.t).unwrap();
    assert_eq!(std::fs::metadata(&journal).unwrap().len(), 0);
}

#[test]
fn one_identity_cannot_flood_a_patients_trail_with_refused_reads() {
    let w = World::new();
    let service = w.service();
    let lab = w.write_lab(&service);
    service.read(w.doc.id(), lab, None, Purpose::Treatment, w.t).unwrap();
    // 2,000 refused reads by one stranger within a few seconds.
    for i in 0..2_000u64 {
        assert!(service.read(w.stranger.id(), lab, None, Purpose::Treatment, w.t + i).is_err());
    }
    let limits = AuditLimits::default();
    let recorded = service.pending_events();
    assert!(
        recorded <= 1 + limits.refusals_burst as usize + 4,
        "{recorded} events recorded for one identity's refused reads"
    );
    service.flush_events(w.t).unwrap();
    w.commit();
    let events = w.events_on_chain();
    // The patient still learns the attempts went on, once, without each costing an entry.
    assert!(events.iter().any(|e| e.accessor == w.stranger.id() && e.reason == OVER_QUOTA_REASON));
    assert!(events.iter().any(|e| e.accessor == w.doc.id()), "the real access is still on the trail");
}

/// An access event the ledger refuses (here: dated more than a week before its block) must not
/// block the events recorded after it, and the journal must not grow without bound while the
/// node is never idle.
#[test]
fn a_refused_access_event_never_blocks_the_others_and_the_journal_stays_bounded() {
    let w = World::new();
    let journal = w.dir.path().join("audit.journal");
    let limits = AuditLimits { journal_compact_bytes: 4096, ..AuditLimits::default() };
    let service = w.service().with_audit_limits(limits);
    service.open_audit_journal(&journal, w.t).unwrap();
    let lab = w.write_lab(&service);
    // A decision dated 8 days back: its event can never be recorded.
    service.read(w.doc.id(), lab, None, Purpose::Treatment, w.t - 8 * 86_400_000).unwrap();
    for _ in 0..100 {
        service.read(w.doc.id(), lab, None, Purpose::Treatment, w.t).unwrap();
    }
    for _ in 0..4 {
        let _ = service.flush_events(w.t);
        w.commit();
    }
    assert_eq!(w.events_on_chain().len(), 100, "the events after the bad one are all recorded");
    assert_eq!(service.pending_events(), 0);
    // The node is never idle: as older events commit, the journal is rewritten with only the
    // uncommitted ones instead of growing (about 8 KiB a round here; 20 rounds would be 160 KiB).
    let mut shrank = false;
    let mut last = 0;
    for round in 0..20 {
        for _ in 0..50 {
            service.read(w.doc.id(), lab, None, Purpose::Treatment, w.t).unwrap();
        }
        service.flush_events(w.t).unwrap();
        w.commit();
        for _ in 0..5 {
            service.read(w.doc.id(), lab, None, Purpose::Treatment, w.t).unwrap();
        }
        let size = std::fs::metadata(&journal).unwrap().len();
        assert!(size < 64 * 1024, "round {round}: the journal holds {size} bytes");
        shrank |= size < last;
        last = size;
    }
    assert!(shrank, "the journal was never compacted");
}
