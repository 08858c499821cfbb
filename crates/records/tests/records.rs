//! Encrypted records through the node's record service: write, read, consent, denial, key
//! sharing on grant, revocation with rotation, the audit trail, and that a node whose
//! organisation holds no key cannot decrypt even with the same disk and its own keys.

use std::sync::Arc;

use medledger_blobs::{BlobStore, PackBlobStore};
use medledger_crypto::Keypair;
use medledger_ledger::{
    Payload, Purpose, Scope,
    access::{Basis, Denial},
    actions,
};
use medledger_node::{chain::Chain, devnet::Devnet};
use medledger_records::{RecordError, RecordService, WriteRequest};
use medledger_types::Role;

const T0: u64 = 1_900_000_000_000;

struct World {
    net: Devnet,
    chain: Arc<Chain>,
    t: u64,
    _dir: tempfile::TempDir,
}

impl World {
    fn new() -> (Self, Arc<dyn BlobStore>, tempfile::TempDir) {
        let net = Devnet::new("medledger.records", T0, &["Hospital A", "Clinic B"], 2, &mut |l| Keypair::from_label(l));
        let dir = tempfile::tempdir().unwrap();
        let (chain, _) = Chain::open(dir.path(), &net.genesis, net.validators[0].clone(), &mut |_, _| {}).unwrap();
        let blob_dir = tempfile::tempdir().unwrap();
        let blobs: Arc<dyn BlobStore> = Arc::new(PackBlobStore::open(blob_dir.path()).unwrap());
        (Self { net, chain: Arc::new(chain), t: T0, _dir: dir }, blobs, blob_dir)
    }

    /// Finalizes everything pending, as a one-validator chain would.
    fn commit(&mut self) {
        self.t += 1000;
        medledger_node::devnet::commit_pending(&self.chain, self.net.validators[0].id(), self.t).unwrap();
    }

    fn submit(&self, keys: &Keypair, payload: Payload) -> medledger_types::TxId {
        self.chain.submit_as(keys, payload, self.t).unwrap()
    }
}

#[test]
fn records_are_encrypted_shared_by_consent_and_audited() {
    let (mut w, blobs, blob_dir) = World::new();
    let (org_a, org_b) = (w.net.organisations[0].clone(), w.net.organisations[1].clone());
    let doc_a = Keypair::from_label("dr-a");
    let doc_b = Keypair::from_label("dr-b");
    let patient = Keypair::from_label("patient");
    w.submit(&org_a, Payload::register(Role::Practitioner, &doc_a, Some(org_a.id()), "Dr A"));
    w.submit(&org_b, Payload::register(Role::Practitioner, &doc_b, Some(org_b.id()), "Dr B"));
    w.submit(&w.net.organisations[0].clone(), Payload::register(Role::Patient, &patient, None, ""));
    w.commit();

    let node_a = RecordService::new(w.chain.clone(), w.net.validators[0].clone(), org_a.clone(), blobs.clone());
    // Clinic B's node: the same chain and the same blob store, its own organisation's keys.
    let node_b = RecordService::new(w.chain.clone(), w.net.validators[1].clone(), org_b.clone(), blobs.clone());
    let mut rng = rand::rng();

    // A synthetic lab result, written by Dr A at Hospital A.
    let synthetic = medledger_synth::Generator::new(7).patient();
    let lab = synthetic.resources.iter().find(|r| r.category == "labs").expect("a lab result");
    let request = WriteRequest {
        author: doc_a.id(),
        patient: patient.id(),
        resource_type: lab.resource_type,
        category: lab.category,
        content: &lab.json,
        record: None,
    };
    let written = node_a.write(&request, w.t, &mut rng).unwrap();
    w.commit();
    assert_eq!(w.chain.snapshot().record(&written.record_id).unwrap().latest_version, 1);

    // The patient and the author read the exact bytes back through the custodian's node.
    let read = node_a.read(doc_a.id(), written.record_id, None, Purpose::Treatment, w.t).unwrap();
    assert_eq!(&read.plaintext[..], &lab.json[..]);
    assert_eq!(read.basis, Basis::Custodian);
    assert_eq!(
        node_a.read(patient.id(), written.record_id, Some(1), Purpose::Treatment, w.t).unwrap().basis,
        Basis::Patient
    );

    // No plaintext on disk: not in the blob store, not in the chain's store.
    let needle = b"\"resourceType\":\"Observation\"";
    for dir in [blob_dir.path(), w._dir.path()] {
        for entry in walk(dir) {
            let bytes = std::fs::read(&entry).unwrap();
            assert!(!contains(&bytes, needle), "plaintext found in {}", entry.display());
        }
    }

    // Clinic B: no grant, so refused; and even ignoring the decision it holds no key.
    assert!(matches!(
        node_b.read(doc_b.id(), written.record_id, None, Purpose::Treatment, w.t),
        Err(RecordError::Denied(Denial::NoGrant))
    ));
    assert!(matches!(
        node_b.read(patient.id(), written.record_id, None, Purpose::Treatment, w.t),
        Err(RecordError::NotDecryptableHere)
    ));

    // The patient grants Clinic B their labs for treatment; Hospital A's node shares the key.
    let grant = w.submit(
        &patient,
        Payload::ConsentGrant {
            patient: patient.id(),
            grantee: org_b.id(),
            scope: Scope::Categories(vec!["labs".into()]),
            actions: actions::READ,
            purpose: Purpose::Treatment,
            valid_from_ms: w.t,
            valid_until_ms: w.t + 30 * 86_400_000,
        },
    );
    w.commit();
    assert_eq!(node_a.share_keys_for_grant(&grant, w.t, &mut rng).unwrap().len(), 1);
    w.commit();
    let read_b = node_b.read(doc_b.id(), written.record_id, None, Purpose::Treatment, w.t).unwrap();
    assert_eq!(&read_b.plaintext[..], &lab.json[..]);
    assert_eq!(read_b.basis, Basis::Grant(grant));
    assert!(matches!(
        node_b.read(doc_b.id(), written.record_id, None, Purpose::Research, w.t),
        Err(RecordError::Denied(Denial::PurposeNotGranted))
    ));

    // Revocation: refused from the revocation on; the next version uses a new key epoch that
    // Clinic B never receives. What B already read (and the old key) it keeps.
    w.submit(&patient, Payload::ConsentRevoke { grant_id: grant });
    w.commit();
    assert!(matches!(
        node_b.read(doc_b.id(), written.record_id, None, Purpose::Treatment, w.t),
        Err(RecordError::Denied(Denial::GrantRevoked))
    ));
    let update = WriteRequest { record: Some(written.record_id), ..request };
    let v2 = node_a.write(&update, w.t, &mut rng).unwrap();
    w.commit();
    assert_eq!(v2.version, 2);
    assert_eq!(
        &node_a.read(patient.id(), written.record_id, Some(2), Purpose::Treatment, w.t).unwrap().plaintext[..],
        &lab.json[..]
    );
    assert!(matches!(
        node_b.read(patient.id(), written.record_id, Some(2), Purpose::Treatment, w.t),
        Err(RecordError::NotDecryptableHere)
    ));

    // Every decision became an access event: allowed and denied, committed in batches.
    let queued = node_a.pending_events() + node_b.pending_events();
    // 3 reads served at A; at B 1 served and 5 refused (no grant, no key twice, purpose,
    // revoked).
    assert_eq!(queued, 9);
    let mut batches = node_a.flush_events(w.t).unwrap();
    batches.extend(node_b.flush_events(w.t).unwrap());
    w.commit();
    let mut events = Vec::new();
    for id in batches {
        let tx = w.chain.transaction(&id).unwrap().expect("committed");
        let Payload::AccessEvents { events: batch } = &tx.body().payload else { panic!("not access events") };
        events.extend(batch.clone());
    }
    assert_eq!(events.len(), queued);
    assert_eq!(events.iter().filter(|e| e.outcome == medledger_ledger::AccessOutcome::Denied).count(), 5);
    assert!(events.iter().any(|e| e.reason == "not-decryptable-here"));
    assert!(events.iter().any(|e| e.grant_id == Some(grant) && e.accessor == doc_b.id()));
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() { stack.push(p) } else { out.push(p) }
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A version whose transaction the ledger refuses at block building (admitted while queued
/// behind an earlier nonce) must not leave its record locked against further updates.
#[test]
fn a_refused_version_does_not_lock_its_record() {
    let (mut w, blobs, _blob_dir) = World::new();
    let org_a = w.net.organisations[0].clone();
    let doc = Keypair::from_label("dr-lock");
    let patient = Keypair::from_label("patient-lock");
    w.submit(&org_a, Payload::register(Role::Practitioner, &doc, Some(org_a.id()), "Dr Lock"));
    w.submit(&w.net.organisations[0].clone(), Payload::register(Role::Patient, &patient, None, ""));
    w.commit();
    let node = RecordService::new(w.chain.clone(), w.net.validators[0].clone(), org_a, blobs);
    let mut rng = rand::rng();
    let lab = |record| WriteRequest {
        author: doc.id(),
        patient: patient.id(),
        resource_type: "Observation",
        category: "labs",
        content: br#"{"resourceType":"Observation","status":"final"}"#,
        record,
    };
    let a = node.write(&lab(None), w.t, &mut rng).unwrap();
    let b = node.write(&lab(None), w.t, &mut rng).unwrap();
    w.commit();
    // A valid update of A, then an update of B in another category: queued behind A's nonce,
    // so admitted, and refused when the block is built.
    node.write(&lab(Some(a.record_id)), w.t, &mut rng).unwrap();
    let bad = WriteRequest { category: "vitals", ..lab(Some(b.record_id)) };
    let refused = node.write(&bad, w.t, &mut rng).unwrap();
    w.commit();
    assert!(matches!(w.chain.tx_status(&refused.tx_id).unwrap(), medledger_node::chain::TxStatus::Rejected { .. }));
    // B can be updated again.
    let again = node.write(&lab(Some(b.record_id)), w.t, &mut rng).unwrap();
    w.commit();
    assert_eq!(again.version, 2);
    assert_eq!(w.chain.snapshot().record(&b.record_id).unwrap().latest_version, 2);
}

/// A blob store whose disk is full: every write fails as the disk stores report ENOSPC.
struct FullDisk(medledger_blobs::MemoryBlobStore);

impl BlobStore for FullDisk {
    fn put(&self, _: &[u8]) -> Result<medledger_types::Hash, medledger_blobs::BlobError> {
        Err(medledger_blobs::BlobError::StorageFull {
            path: "/var/lib/medledger/blobs".into(),
            source: std::io::Error::from(std::io::ErrorKind::StorageFull),
        })
    }

    fn get(&self, hash: &medledger_types::Hash) -> Result<Option<Vec<u8>>, medledger_blobs::BlobError> {
        self.0.get(hash)
    }

    fn len_bytes(&self, hash: &medledger_types::Hash) -> Result<Option<u64>, medledger_blobs::BlobError> {
        self.0.len_bytes(hash)
    }
}

#[test]
fn a_full_disk_is_reported_as_a_full_disk_and_nothing_is_committed() {
    let (mut w, _, _blob_dir) = World::new();
    let org_a = w.net.organisations[0].clone();
    let (doc_a, patient) = (Keypair::from_label("dr-a"), Keypair::from_label("patient"));
    w.submit(&org_a, Payload::register(Role::Practitioner, &doc_a, Some(org_a.id()), "Dr A"));
    w.submit(&org_a, Payload::register(Role::Patient, &patient, None, ""));
    w.commit();
    let full: Arc<dyn BlobStore> = Arc::new(FullDisk(medledger_blobs::MemoryBlobStore::default()));
    let node = RecordService::new(w.chain.clone(), w.net.validators[0].clone(), org_a, full);
    let log_size = w.chain.head().log_size;
    let request = WriteRequest {
        author: doc_a.id(),
        patient: patient.id(),
        resource_type: "Condition",
        category: "conditions",
        content: b"{\"resourceType\":\"Condition\"}",
        record: None,
    };
    let error = node.write(&request, w.t, &mut rand::rng()).unwrap_err();
    assert!(error.is_storage_full(), "{error:?}");
    let message = error.to_string();
    assert!(message.contains("disk is full") && !message.contains("inconsistent"), "{message}");
    // The OS error is kept in the chain of sources.
    let mut source = std::error::Error::source(&error);
    let mut found = false;
    while let Some(e) = source {
        found |= e.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::StorageFull);
        source = e.source();
    }
    assert!(found, "the io::Error is a source of {error:?}");
    w.commit();
    // No record: at most the patient's new category key (which the next write reuses).
    let no_records = w.chain.patient_index().patient(&patient.id()).is_none_or(|p| p.records.is_empty());
    assert!(no_records, "no record was committed");
    assert!(w.chain.head().log_size <= log_size + 1);
}
