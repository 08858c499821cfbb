//! All-or-nothing batches through the node's record service: new patients registered, keys
//! shared, records and directory entries committed in one transaction, or nothing at all.

use std::sync::Arc;

use medledger_blobs::{BlobStore, PackBlobStore};
use medledger_crypto::Keypair;
use medledger_ledger::Payload;
use medledger_node::{
    chain::{Chain, TxStatus},
    devnet::Devnet,
};
use medledger_records::BatchWrite;
use medledger_records::{RecordError, RecordService, WriteRequest};
use medledger_types::Role;

const T0: u64 = 1_900_000_000_000;

struct World {
    net: Devnet,
    chain: Arc<Chain>,
    node: RecordService,
    doc: Keypair,
    patient: Keypair,
    keys_dir: tempfile::TempDir,
    t: u64,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

impl World {
    fn new() -> Self {
        let net = Devnet::new("medledger.batch", T0, &["Hospital A", "Clinic B"], 2, &mut |l| Keypair::from_label(l));
        let dir = tempfile::tempdir().unwrap();
        let (chain, _) = Chain::open(dir.path(), &net.genesis, net.validators[0].clone(), &mut |_, _| {}).unwrap();
        let chain = Arc::new(chain);
        let blob_dir = tempfile::tempdir().unwrap();
        let blobs: Arc<dyn BlobStore> = Arc::new(PackBlobStore::open(blob_dir.path()).unwrap());
        let org_a = net.organisations[0].clone();
        let node = RecordService::new(chain.clone(), net.validators[0].clone(), org_a.clone(), blobs);
        let keys_dir = tempfile::tempdir().unwrap();
        node.set_patient_key_dir(keys_dir.path().to_owned());
        let doc = Keypair::from_label("dr-batch");
        let patient = Keypair::from_label("patient-batch");
        chain.submit_as(&org_a, Payload::register(Role::Practitioner, &doc, Some(org_a.id()), "Dr Batch"), T0).unwrap();
        let chain_id = net.genesis.chain_id();
        let _ = chain_id;
        chain.submit_as(&org_a, Payload::register(Role::Patient, &patient, None, ""), T0).unwrap();
        let mut w = Self { net, chain, node, doc, patient, keys_dir, t: T0, _dirs: (dir, blob_dir) };
        w.commit();
        w
    }

    /// Finalizes everything pending, as a one-validator chain would.
    fn commit(&mut self) {
        self.t += 1000;
        medledger_node::devnet::commit_pending(&self.chain, self.net.validators[0].id(), self.t).unwrap();
    }

    fn request<'a>(
        &self,
        patient: medledger_types::IdentityId,
        resource_type: &'a str,
        content: &'a [u8],
    ) -> WriteRequest<'a> {
        let category = medledger_types::categories_of_resource_type(resource_type)[0];
        WriteRequest { author: self.doc.id(), patient, resource_type, category, content, record: None }
    }

    fn key_files(&self) -> usize {
        std::fs::read_dir(self.keys_dir.path()).unwrap().count()
    }
}

const PATIENT: &[u8] = br#"{"resourceType":"Patient","name":[{"family":"Synthetic"}]}"#;
const LAB: &[u8] = br#"{"resourceType":"Observation","status":"final","value":1.50}"#;
const CLAIM: &[u8] = br#"{"resourceType":"Claim","status":"active"}"#;
const ORG: &[u8] = br#"{"resourceType":"Organization","name":"Synthetic General"}"#;

#[test]
fn a_batch_commits_a_new_patient_their_records_and_directory_entries_in_one_transaction() {
    let mut w = World::new();
    let mut rng = rand::rng();
    let newcomer = w.node.new_patient_keys().unwrap();
    let known = w.patient.id();
    let writes = [
        BatchWrite::Record { request: w.request(newcomer.id(), "Patient", PATIENT), expected: None, new_id: None },
        BatchWrite::Record { request: w.request(newcomer.id(), "Observation", LAB), expected: None, new_id: None },
        BatchWrite::Record { request: w.request(newcomer.id(), "Claim", CLAIM), expected: None, new_id: None },
        BatchWrite::Record { request: w.request(known, "Observation", LAB), expected: None, new_id: None },
        BatchWrite::Directory {
            resource_type: "Organization",
            content: ORG,
            entry: None,
            expected: None,
            new_id: None,
        },
    ];
    let written = w.node.write_batch(std::slice::from_ref(&newcomer), &writes, w.t, &mut rng).unwrap();
    assert_eq!(written.versions.len(), 5);
    // The new patient's keys are held in trust before anything refers to them.
    assert_eq!(w.key_files(), 1);
    w.commit();
    assert!(matches!(w.chain.tx_status(&written.tx_id).unwrap(), TxStatus::Committed { .. }));
    let state = w.chain.snapshot();
    assert_eq!(state.identity(&newcomer.id()).unwrap().role, Role::Patient);
    for (id, version) in &written.versions[..4] {
        let head = state.record(id).unwrap();
        assert_eq!((head.latest_version, head.version_tx(*version)), (1, Some(written.tx_id)));
    }
    drop(state);
    // Every record decrypts to the exact bytes written, through the batch transaction.
    for ((id, version), content) in written.versions[..4].iter().zip([PATIENT, LAB, CLAIM, LAB]) {
        assert_eq!(&w.node.plaintext_for_index(id, *version).unwrap()[..], content);
    }
    let (entry, _) = written.versions[4];
    let org = w.node.read_directory(&entry, None).unwrap();
    assert_eq!((org.content.as_slice(), org.version, org.tx_id), (ORG, 1, written.tx_id));
    assert_eq!(org.owner, w.net.organisations[0].id());
    // An update of the entry through a batch of one.
    let updated = br#"{"resourceType":"Organization","name":"Synthetic General Hospital"}"#;
    let next = w.node.write_directory("Organization", updated, Some(entry), Some(1), w.t, &mut rng).unwrap();
    w.commit();
    assert_eq!(next.versions, vec![(entry, 2)]);
    assert_eq!(w.node.read_directory(&entry, None).unwrap().content, updated.to_vec());
    assert_eq!(w.node.read_directory(&entry, Some(1)).unwrap().content, ORG.to_vec());
    // A stale If-Match is refused before anything is submitted.
    let stale = w.node.write_directory("Organization", ORG, Some(entry), Some(1), w.t, &mut rng).unwrap_err();
    assert!(matches!(stale, RecordError::VersionMismatch { latest: 2 }), "{stale}");
}

#[test]
fn a_refused_batch_leaves_no_patient_no_record_and_no_key_file() {
    let mut w = World::new();
    let mut rng = rand::rng();
    let newcomer = w.node.new_patient_keys().unwrap();
    let log_before = w.chain.snapshot().log().size();
    // The ledger refuses the last write (an Observation is never billing data); the whole batch
    // goes with it, and the submission says why.
    let wrong = WriteRequest { category: "billing", ..w.request(w.patient.id(), "Observation", LAB) };
    let writes = [
        BatchWrite::Record { request: w.request(newcomer.id(), "Patient", PATIENT), expected: None, new_id: None },
        BatchWrite::Directory { resource_type: "Location", content: ORG, entry: None, expected: None, new_id: None },
        BatchWrite::Record { request: wrong, expected: None, new_id: None },
    ];
    let error = w.node.write_batch(std::slice::from_ref(&newcomer), &writes, w.t, &mut rng).unwrap_err();
    assert!(error.to_string().contains("operation"), "{error}");
    assert_eq!(w.key_files(), 0, "the new patient's key file is removed");
    w.commit();
    let state = w.chain.snapshot();
    assert!(state.identity(&newcomer.id()).is_none());
    assert_eq!(state.directory_entries().count(), 0);
    assert_eq!(state.log().size(), log_before, "nothing committed");
    drop(state);
    // Nothing stays reserved: the same patient's next batch goes through.
    let writes =
        [BatchWrite::Record { request: w.request(w.patient.id(), "Observation", LAB), expected: None, new_id: None }];
    let written = w.node.write_batch(&[], &writes, w.t, &mut rng).unwrap();
    w.commit();
    assert!(matches!(w.chain.tx_status(&written.tx_id).unwrap(), TxStatus::Committed { .. }));
    // Queued behind another of the node's transactions, a batch is only checked when its
    // block is built: it is refused there as a whole, and the held keys are discarded.
    let late = w.node.new_patient_keys().unwrap();
    w.node.write(&w.request(w.patient.id(), "Observation", LAB), w.t, &mut rng).unwrap();
    let wrong = WriteRequest { category: "billing", ..w.request(w.patient.id(), "Observation", LAB) };
    let writes = [
        BatchWrite::Record { request: w.request(late.id(), "Patient", PATIENT), expected: None, new_id: None },
        BatchWrite::Record { request: wrong, expected: None, new_id: None },
    ];
    let queued = w.node.write_batch(std::slice::from_ref(&late), &writes, w.t, &mut rng).unwrap();
    assert_eq!(w.key_files(), 1);
    w.commit();
    assert!(matches!(w.chain.tx_status(&queued.tx_id).unwrap(), TxStatus::Rejected { .. }));
    assert!(w.chain.snapshot().identity(&late.id()).is_none());
    assert!(w.chain.snapshot().record(&queued.versions[0].0).is_none());
    w.node.abandon_batch(&queued, &[late.id()]);
    assert_eq!(w.key_files(), 0);
    // Updating a record of a patient new in the same batch makes no sense and is refused.
    let other = w.node.new_patient_keys().unwrap();
    let update = WriteRequest { record: Some(written.versions[0].0), ..w.request(other.id(), "Observation", LAB) };
    let error = w
        .node
        .write_batch(
            std::slice::from_ref(&other),
            &[BatchWrite::Record { request: update, expected: None, new_id: None }],
            w.t,
            &mut rng,
        )
        .unwrap_err();
    assert!(matches!(error, RecordError::Invalid(_)), "{error}");
}
