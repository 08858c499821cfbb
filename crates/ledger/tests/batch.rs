//! Batch transactions (all-or-nothing groups of operations, used for FHIR transaction bundles
//! and imports) and consortium directory entries, exercised through blocks as consensus would.

use medledger_crypto::Keypair;
use medledger_ledger::{
    Block, BlockError, CategoryKeyId, Genesis, GenesisIdentity, KeyShareEntry, Payload, Purpose, Scope, State,
    Transaction, TxError, actions, tx::sign,
};
use medledger_types::{Hash, IdentityId, RecordId, Role, TxId, limits};

struct World {
    state: State,
    org_a: Keypair,
    org_b: Keypair,
    node_a: Keypair,
    node_b: Keypair,
    doc: Keypair,
    t: u64,
}

fn identity(name: &str, keys: &Keypair, org: Option<IdentityId>) -> GenesisIdentity {
    GenesisIdentity {
        name: name.into(),
        signing_key: keys.public_key(),
        encryption_key: keys.encryption_public_key(),
        organisation: org,
        // Organisations are care providers here; validators have no kind.
        kind: org.is_none().then_some(medledger_types::OrganisationKind::CareProvider),
    }
}

impl World {
    fn new() -> Self {
        let org_a = Keypair::from_label("batch-org-a");
        let org_b = Keypair::from_label("batch-org-b");
        let node_a = Keypair::from_label("batch-node-a");
        let node_b = Keypair::from_label("batch-node-b");
        let genesis = Genesis {
            chain_name: "medledger.batch-test".into(),
            genesis_time_ms: 1_700_000_000_000,
            organisations: vec![identity("Hospital A", &org_a, None), identity("Hospital B", &org_b, None)],
            validators: vec![
                identity("node-a", &node_a, Some(org_a.id())),
                identity("node-b", &node_b, Some(org_b.id())),
            ],
        };
        genesis.validate().unwrap();
        let mut w = Self {
            state: State::from_genesis(&genesis),
            org_a: org_a.clone(),
            org_b,
            node_a,
            node_b,
            doc: Keypair::from_label("batch-doctor"),
            t: 1_700_000_000_000,
        };
        let doc = w.doc.clone();
        w.submit(&org_a, Payload::register(Role::Practitioner, &doc, Some(org_a.id()), "Dr A")).unwrap();
        w
    }

    fn tx(&self, keys: &Keypair, payload: Payload) -> Transaction {
        let nonce = self.state.next_nonce(&keys.id());
        sign(keys, self.state.chain_id(), keys.id(), nonce, payload)
    }

    /// Builds a block of exactly `txs` (as a proposer that did not filter would) and applies it.
    fn apply(&mut self, txs: Vec<Transaction>) -> Result<Block, BlockError> {
        self.t += 1000;
        let (mut block, _) = self.state.build_block(vec![], self.t, self.node_a.id());
        let leaves: Vec<Hash> = txs.iter().map(|t| Hash(t.id().0)).collect();
        block.header.tx_count = txs.len() as u32;
        block.header.txs_root = medledger_ledger::block::txs_root(&txs);
        block.header.log_size = self.state.log().size() + txs.len() as u64;
        block.header.log_root = self.state.log().root_with_appended(&leaves);
        block.txs = txs;
        self.state.apply_block(&block, Some(self.t), &|_| false)?;
        Ok(block)
    }

    fn submit(&mut self, by: &Keypair, payload: Payload) -> Result<TxId, TxError> {
        let tx = self.tx(by, payload);
        let id = tx.id();
        match self.apply(vec![tx]) {
            Ok(_) => Ok(id),
            Err(BlockError::InvalidTransaction { error, .. }) => Err(error),
            Err(e) => panic!("unexpected block error {e}"),
        }
    }
}

/// Placeholder wraps: consensus checks who receives a key, not the wrap's bytes.
fn key_share(custodian: IdentityId, patient: IdentityId, category: &str) -> Payload {
    let entry = |recipient| KeyShareEntry { recipient, encapsulated_key: [7; 32], wrapped_key: [8; 48] };
    Payload::KeyShare {
        custodian,
        patient,
        category: category.into(),
        epoch: 1,
        shares: vec![entry(patient), entry(custodian)],
    }
}

fn record(id: u8, version: u32, patient: IdentityId, custodian: IdentityId, author: IdentityId) -> Payload {
    Payload::RecordCommit {
        record_id: RecordId([id; 32]),
        version,
        patient,
        custodian,
        author,
        resource_type: "Observation".into(),
        category: "labs".into(),
        key_epoch: 1,
        ciphertext_hash: Hash([id; 32]),
        ciphertext_bytes: 100,
        wrapped_data_key: [9; 72],
    }
}

fn directory(id: u8, version: u32, resource_type: &str) -> Payload {
    Payload::DirectoryPut {
        entry_id: RecordId([id; 32]),
        version,
        resource_type: resource_type.into(),
        content: br#"{"resourceType":"Organization","name":"Synthetic Clinic"}"#.to_vec(),
    }
}

#[test]
fn a_batch_registers_a_patient_shares_keys_and_commits_records_in_one_leaf() {
    let mut w = World::new();
    let patient = Keypair::from_label("batch-patient");
    let (org, node, doc) = (w.org_a.id(), w.node_a.clone(), w.doc.id());
    let log_before = w.state.log().size();
    let nonce_before = w.state.next_nonce(&node.id());
    let batch = Payload::Batch {
        ops: vec![
            Payload::register(Role::Patient, &patient, None, ""),
            key_share(org, patient.id(), "labs"),
            record(1, 1, patient.id(), org, doc),
            record(2, 1, patient.id(), org, doc),
            // A later operation sees the earlier ones: the next version of record 1.
            record(1, 2, patient.id(), org, doc),
            directory(3, 1, "Organization"),
        ],
    };
    let id = w.submit(&node, batch).unwrap();
    assert_eq!(w.state.log().size(), log_before + 1, "one leaf for the whole batch");
    assert_eq!(w.state.next_nonce(&node.id()), nonce_before + 1, "one nonce for the whole batch");
    assert_eq!(w.state.identity(&patient.id()).unwrap().role, Role::Patient);
    let head = w.state.record(&RecordId([1; 32])).unwrap();
    assert_eq!((head.latest_version, head.version_tx(1), head.version_tx(2)), (2, Some(id), Some(id)));
    assert_eq!(w.state.record(&RecordId([2; 32])).unwrap().version_tx(1), Some(id));
    let key = w.state.category_key(&CategoryKeyId { custodian: org, patient: patient.id(), category: "labs".into() });
    assert_eq!(key.unwrap().holders_of(1).unwrap().len(), 2);
    let entry = w.state.directory_entry(&RecordId([3; 32])).unwrap();
    assert_eq!((entry.owner, entry.latest_version, entry.version_tx(1)), (org, 1, Some(id)));
}

#[test]
fn one_failing_operation_leaves_nothing_of_the_batch() {
    let mut w = World::new();
    let patient = Keypair::from_label("batch-patient-2");
    let (org, node, doc) = (w.org_a.id(), w.node_a.clone(), w.doc.id());
    let nonce_before = w.state.next_nonce(&node.id());
    let batch = Payload::Batch {
        ops: vec![
            Payload::register(Role::Patient, &patient, None, ""),
            key_share(org, patient.id(), "labs"),
            record(1, 1, patient.id(), org, doc),
            directory(3, 1, "Organization"),
            // Version 2 of a record that has none: refused, and with it the whole batch.
            record(4, 2, patient.id(), org, doc),
        ],
    };
    let error = w.submit(&node, batch).unwrap_err();
    assert!(matches!(&error, TxError::InBatch { index: 4, .. }), "{error}");
    assert!(error.to_string().contains("operation 4 of the batch"), "{error}");
    assert!(w.state.identity(&patient.id()).is_none());
    assert!(w.state.record(&RecordId([1; 32])).is_none());
    assert!(w.state.directory_entry(&RecordId([3; 32])).is_none());
    assert_eq!(w.state.next_nonce(&node.id()), nonce_before);
    // The proposer's path (build_block) skips it the same way and keeps the other candidates.
    let bad = w.tx(&node, Payload::Batch { ops: vec![record(5, 3, patient.id(), org, doc)] });
    let good = w.tx(&w.node_a.clone(), directory(6, 1, "Location"));
    let (block, skipped) = w.state.build_block(vec![bad, good], w.t + 1000, node.id());
    assert_eq!((block.txs.len(), skipped.len()), (1, 1));
}

#[test]
fn only_a_validator_signs_a_batch_and_only_of_the_allowed_operations() {
    let mut w = World::new();
    let (org, org_keys, doc) = (w.org_a.id(), w.org_a.clone(), w.doc.clone());
    for signer in [&org_keys, &doc] {
        let error = w.submit(signer, Payload::Batch { ops: vec![directory(1, 1, "Organization")] }).unwrap_err();
        assert!(matches!(error, TxError::NotAuthorised(_)), "{error}");
    }
    let node = w.node_a.clone();
    let empty = w.submit(&node, Payload::Batch { ops: vec![] }).unwrap_err();
    assert!(matches!(empty, TxError::InvalidField(_)), "{empty}");
    let grant = Payload::ConsentGrant {
        patient: doc.id(),
        grantee: org,
        scope: Scope::All,
        actions: actions::READ,
        purpose: Purpose::Treatment,
        valid_from_ms: 0,
        valid_until_ms: u64::MAX,
    };
    let practitioner = Payload::register(Role::Practitioner, &Keypair::from_label("x"), Some(org), "Dr X");
    for op in [grant, practitioner] {
        let error = w.submit(&node, Payload::Batch { ops: vec![directory(1, 1, "Organization"), op] }).unwrap_err();
        assert!(matches!(error, TxError::InBatch { index: 1, .. }), "{error}");
    }
    // Batches do not nest: the decoder refuses a batch inside a batch.
    let nested = w.tx(&node, Payload::Batch { ops: vec![Payload::Batch { ops: vec![directory(1, 1, "Location")] }] });
    assert!(Transaction::decode(nested.bytes()).is_err());
}

#[test]
fn batches_may_exceed_the_ordinary_transaction_size_up_to_their_own_limit() {
    let mut w = World::new();
    let patient = Keypair::from_label("batch-patient-3");
    let (org, node, doc) = (w.org_a.id(), w.node_a.clone(), w.doc.id());
    let mut ops = vec![Payload::register(Role::Patient, &patient, None, ""), key_share(org, patient.id(), "labs")];
    for i in 0..400u32 {
        let mut op = record(0, 1, patient.id(), org, doc);
        if let Payload::RecordCommit { record_id, .. } = &mut op {
            record_id.0[..4].copy_from_slice(&i.to_be_bytes());
        }
        ops.push(op);
    }
    let tx = w.tx(&node, Payload::Batch { ops });
    assert!(tx.bytes().len() > limits::TX_BYTES_MAX, "{} bytes", tx.bytes().len());
    assert_eq!(Transaction::decode(tx.bytes()).unwrap(), tx);
    w.apply(vec![tx]).unwrap();
    let committed = (0..400u32)
        .filter(|i| {
            let mut id = [0u8; 32];
            id[..4].copy_from_slice(&i.to_be_bytes());
            w.state.record(&RecordId(id)).is_some()
        })
        .count();
    assert_eq!(committed, 400);
    // A batch past its own limit is refused by the decoder.
    let huge: Vec<Payload> = (0..40u8)
        .map(|i| Payload::DirectoryPut {
            entry_id: RecordId([i; 32]),
            version: 1,
            resource_type: "Location".into(),
            content: vec![b'x'; limits::DIRECTORY_CONTENT_BYTES_MAX],
        })
        .collect();
    let tx = w.tx(&node, Payload::Batch { ops: huge });
    assert!(tx.bytes().len() > limits::BATCH_TX_BYTES_MAX);
    assert!(Transaction::decode(tx.bytes()).is_err());
}

#[test]
fn directory_entries_belong_to_the_organisation_that_wrote_them() {
    let mut w = World::new();
    let (org_a, node_a, node_b, doc) = (w.org_a.clone(), w.node_a.clone(), w.node_b.clone(), w.doc.clone());
    // Staff and the organisation write through their node (which checks the content carries no
    // patient data), never directly (issue 9, item 7).
    for signer in [&doc, &org_a] {
        let error = w.submit(signer, directory(1, 1, "Practitioner")).unwrap_err();
        assert!(matches!(error, TxError::NotAuthorised(_)), "{error}");
    }
    w.submit(&node_a, directory(1, 1, "Practitioner")).unwrap();
    assert_eq!(w.state.directory_entry(&RecordId([1; 32])).unwrap().owner, org_a.id());
    // Hospital A's node updates it; Hospital B's node may not.
    w.submit(&node_a, directory(1, 2, "Practitioner")).unwrap();
    let error = w.submit(&node_b, directory(1, 3, "Practitioner")).unwrap_err();
    assert!(matches!(error, TxError::NotAuthorised(_)), "{error}");
    w.submit(&node_a, directory(1, 3, "Practitioner")).unwrap();
    for (op, why) in [
        (directory(1, 3, "Practitioner"), "a replayed version"),
        (directory(1, 5, "Practitioner"), "a skipped version"),
        (directory(1, 4, "Organization"), "a changed type"),
        (directory(2, 2, "Location"), "a first version other than 1"),
        (directory(2, 1, "Observation"), "a patient-record type"),
    ] {
        assert!(w.submit(&node_a, op).is_err(), "{why} was accepted");
    }
    let patient = Keypair::from_label("batch-patient-4");
    w.submit(&org_a, Payload::register(Role::Patient, &patient, None, "")).unwrap();
    let error = w.submit(&patient, directory(9, 1, "Organization")).unwrap_err();
    assert!(matches!(error, TxError::NotAuthorised(_)), "{error}");
    let _ = w.org_b.id();
}

#[test]
fn a_block_is_bounded_by_operations_not_only_by_transactions() {
    let mut w = World::new();
    let node = w.node_a.clone();
    let batches: Vec<Transaction> = (0..20u64)
        .map(|n| {
            let ops = (0..limits::BATCH_OPS_MAX as u32)
                .map(|i| {
                    let mut id = [0u8; 32];
                    id[..8].copy_from_slice(&n.to_be_bytes());
                    id[8..12].copy_from_slice(&i.to_be_bytes());
                    Payload::DirectoryPut {
                        entry_id: RecordId(id),
                        version: 1,
                        resource_type: "Location".into(),
                        content: b"{}".to_vec(),
                    }
                })
                .collect();
            sign(&node, w.state.chain_id(), node.id(), w.state.next_nonce(&node.id()) + n, Payload::Batch { ops })
        })
        .collect();
    // A proposer stops before the limit ...
    let (block, _) = w.state.build_block(batches.clone(), w.t + 1000, node.id());
    let ops: usize = block.txs.iter().map(|t| t.body().payload.ops().len()).sum();
    assert!(ops <= limits::BLOCK_OPS_MAX && ops + limits::BATCH_OPS_MAX > limits::BLOCK_OPS_MAX, "{ops}");
    // ... and a block past it is refused before any of it is executed.
    let error = w.apply(batches).unwrap_err();
    assert!(matches!(error, BlockError::TooManyOperations(n) if n == 20 * limits::BATCH_OPS_MAX), "{error}");
}
