//! The validation rules of the state machine, exercised through blocks as consensus would.

use medledger_crypto::Keypair;
use medledger_ledger::{
    AccessAction, AccessEvent, AccessOutcome, Block, BlockError, CategoryKeyId, Genesis, GenesisIdentity,
    KeyShareEntry, Payload, Purpose, Scope, State, Transaction, TxError, actions, tx::sign,
};
use medledger_types::{Hash, IdentityId, RecordId, Role, TxId};

struct World {
    state: State,
    org_a: Keypair,
    org_b: Keypair,
    validator: Keypair,
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
        let org_a = Keypair::from_label("org-a");
        let org_b = Keypair::from_label("org-b");
        let validator = Keypair::from_label("validator-0");
        let genesis = Genesis {
            chain_name: "medledger.test".into(),
            genesis_time_ms: 1_700_000_000_000,
            organisations: vec![identity("Hospital A", &org_a, None), identity("Hospital B", &org_b, None)],
            validators: vec![identity("node-0", &validator, Some(org_a.id()))],
        };
        genesis.validate().unwrap();
        let state = State::from_genesis(&genesis);
        Self { state, org_a, org_b, validator, t: 1_700_000_000_000 }
    }

    fn tx(&self, keys: &Keypair, payload: Payload) -> Transaction {
        let nonce = self.state.next_nonce(&keys.id());
        sign(keys, self.state.chain_id(), keys.id(), nonce, payload)
    }

    /// Builds a block of exactly `txs` (as a proposer that did not filter would) and applies it.
    fn apply(&mut self, txs: Vec<Transaction>) -> Result<Block, BlockError> {
        self.t += 1000;
        let (mut block, _) = self.state.build_block(vec![], self.t, self.validator.id());
        // Re-derive the header for the exact transaction list, valid or not.
        let leaves: Vec<Hash> = txs.iter().map(|t| Hash(t.id().0)).collect();
        block.header.tx_count = txs.len() as u32;
        block.header.txs_root = medledger_ledger::block::txs_root(&txs);
        block.header.log_size = self.state.log().size() + txs.len() as u64;
        block.header.log_root = self.state.log().root_with_appended(&leaves);
        block.txs = txs;
        self.state.apply_block(&block, Some(self.t), &|_| false)?;
        Ok(block)
    }

    fn apply_one(&mut self, tx: Transaction) -> Result<(), TxError> {
        match self.apply(vec![tx]) {
            Ok(_) => Ok(()),
            Err(BlockError::InvalidTransaction { error, .. }) => Err(error),
            Err(e) => panic!("unexpected block error {e}"),
        }
    }

    fn register(
        &mut self,
        by: &Keypair,
        keys: &Keypair,
        role: Role,
        org: Option<IdentityId>,
        name: &str,
    ) -> Result<(), TxError> {
        let payload = Payload::register(role, keys, org, name);
        let tx = if by.id() == keys.id() && role == Role::Patient {
            sign(by, self.state.chain_id(), by.id(), 0, payload)
        } else {
            self.tx(by, payload)
        };
        self.apply_one(tx)
    }

    /// Shares the (custodian org A, patient, category) key with `recipients` at `epoch`, signed by
    /// `by`. The wraps are placeholders: consensus checks who receives them, not their bytes.
    fn share(
        &mut self,
        by: &Keypair,
        patient: &Keypair,
        category: &str,
        epoch: u32,
        recipients: &[IdentityId],
    ) -> Result<(), TxError> {
        let shares = recipients
            .iter()
            .map(|r| KeyShareEntry { recipient: *r, encapsulated_key: [7; 32], wrapped_key: [8; 48] })
            .collect();
        let tx = self.tx(
            by,
            Payload::KeyShare {
                custodian: self.org_a.id(),
                patient: patient.id(),
                category: category.into(),
                epoch,
                shares,
            },
        );
        self.apply_one(tx)
    }

    fn commit_record(
        &mut self,
        by: &Keypair,
        patient: &Keypair,
        record: RecordId,
        version: u32,
    ) -> Result<(), TxError> {
        self.commit_record_at(by, patient, record, version, 1)
    }

    fn commit_record_at(
        &mut self,
        by: &Keypair,
        patient: &Keypair,
        record: RecordId,
        version: u32,
        key_epoch: u32,
    ) -> Result<(), TxError> {
        self.commit_record_by(by, by.id(), patient, record, version, key_epoch)
    }

    fn commit_record_by(
        &mut self,
        by: &Keypair,
        author: IdentityId,
        patient: &Keypair,
        record: RecordId,
        version: u32,
        key_epoch: u32,
    ) -> Result<(), TxError> {
        let custodian = self.org_a.id();
        let tx = self.tx(
            by,
            Payload::RecordCommit {
                record_id: record,
                version,
                patient: patient.id(),
                custodian,
                author,
                resource_type: "Observation".into(),
                category: "labs".into(),
                key_epoch,
                ciphertext_hash: Hash([9; 32]),
                ciphertext_bytes: 1234,
                wrapped_data_key: [5; 72],
            },
        );
        self.apply_one(tx)
    }

    fn grant(&mut self, patient: &Keypair, grantee: IdentityId, scope: Scope, days: u64) -> TxId {
        let tx = self.tx(
            patient,
            Payload::ConsentGrant {
                patient: patient.id(),
                grantee,
                scope,
                actions: actions::READ,
                purpose: Purpose::Treatment,
                valid_from_ms: self.t,
                valid_until_ms: self.t + days * 86_400_000,
            },
        );
        let id = tx.id();
        self.apply_one(tx).unwrap();
        id
    }

    fn event(
        accessor: IdentityId,
        patient: IdentityId,
        record: Option<(RecordId, u32)>,
        grant: Option<TxId>,
    ) -> AccessEvent {
        AccessEvent {
            accessor,
            patient,
            record,
            action: AccessAction::Read,
            purpose: Purpose::Treatment,
            outcome: if grant.is_some() { AccessOutcome::Allowed } else { AccessOutcome::Denied },
            grant_id: grant,
            reason: if grant.is_some() { "consent-grant".into() } else { "no-grant".into() },
            at_ms: 1_700_000_000_000,
        }
    }
}

#[test]
fn registration_is_governed() {
    let mut w = World::new();
    let (org_a, org_b) = (w.org_a.clone(), w.org_b.clone());
    let doc = Keypair::from_label("doctor");
    let patient = Keypair::from_label("patient");
    let stranger = Keypair::from_label("stranger");

    // An organisation registers its practitioner; it must name itself as the organisation.
    assert_eq!(
        w.register(&org_a, &doc, Role::Practitioner, Some(org_b.id()), "Dr Who"),
        Err(TxError::InvalidField("organisation must be the registering organisation"))
    );
    w.register(&org_a, &doc, Role::Practitioner, Some(org_a.id()), "Dr Who").unwrap();
    assert_eq!(w.state.identity(&doc.id()).unwrap().role, Role::Practitioner);
    assert_eq!(
        w.register(&org_a, &doc, Role::Practitioner, Some(org_a.id()), "Dr Who"),
        Err(TxError::AlreadyRegistered(doc.id()))
    );
    // A practitioner cannot register colleagues, nor anyone organisations or validators.
    let other = Keypair::from_label("other");
    assert!(matches!(
        w.register(&doc, &other, Role::Practitioner, Some(org_a.id()), "X"),
        Err(TxError::NotAuthorised(_))
    ));
    assert!(matches!(
        w.register(&org_a, &other, Role::Organisation, None, "Evil Corp"),
        Err(TxError::NotAuthorised(_))
    ));
    assert!(matches!(
        w.register(&org_a, &other, Role::Validator, Some(org_a.id()), "n"),
        Err(TxError::NotAuthorised(_))
    ));
    // Patients never carry a name on-chain.
    assert_eq!(
        w.register(&org_a, &patient, Role::Patient, None, "Jane Doe"),
        Err(TxError::InvalidField("patient names are PHI and never go on-chain"))
    );
    // No self-registration: a free identity is an attacker's (issue 9, item 5).
    assert_eq!(w.register(&patient, &patient, Role::Patient, None, ""), Err(TxError::UnknownSigner(patient.id())));
    // A member organisation registers the patient with the patient's own public keys.
    w.register(&org_a, &patient, Role::Patient, None, "").unwrap();
    // A provider registers a patient with the patient's public key.
    let p2 = Keypair::from_label("patient-2");
    w.register(&doc, &p2, Role::Patient, None, "").unwrap();
    // Unknown signers cannot do anything else.
    let tx = sign(
        &stranger,
        w.state.chain_id(),
        stranger.id(),
        0,
        Payload::RotateKey { signing_key: other.public_key(), encryption_key: other.encryption_public_key() },
    );
    assert_eq!(w.apply_one(tx), Err(TxError::UnknownSigner(stranger.id())));
    // Nothing of the rejected transactions was written.
    assert!(w.state.identity(&other.id()).is_none());
    assert!(w.state.identity(&stranger.id()).is_none());
}

#[test]
fn replay_and_nonces() {
    let mut w = World::new();
    let org_a = w.org_a.clone();
    let doc = Keypair::from_label("doctor");
    let payload = Payload::register(Role::Practitioner, &doc, Some(org_a.id()), "Dr A");
    let tx = w.tx(&org_a, payload);
    w.apply_one(tx.clone()).unwrap();
    assert_eq!(w.apply_one(tx.clone()), Err(TxError::Replayed { expected: 1, got: 0 }));
    let ahead = sign(&org_a, w.state.chain_id(), org_a.id(), 5, tx.body().payload.clone());
    assert_eq!(w.apply_one(ahead), Err(TxError::NonceAhead { expected: 1, got: 5 }));
    // The same transaction twice in one block: the second is a replay, the block is invalid.
    let doc2 = Keypair::from_label("doctor-2");
    let tx2 = w.tx(&org_a, Payload::register(Role::Practitioner, &doc2, Some(org_a.id()), "Dr B"));
    let height = w.state.height();
    assert!(matches!(w.apply(vec![tx2.clone(), tx2]), Err(BlockError::InvalidTransaction { index: 1, .. })));
    assert_eq!(w.state.height(), height, "a rejected block changes nothing");
    assert!(w.state.identity(&doc2.id()).is_none());
}

#[test]
fn signatures_are_checked_and_bound_to_the_chain() {
    let mut w = World::new();
    let org_a = w.org_a.clone();
    let doc = Keypair::from_label("doctor");
    let good = w.tx(&org_a, Payload::register(Role::Practitioner, &doc, Some(org_a.id()), "Dr A"));
    // Flip one bit of the signature.
    let mut bytes = good.bytes().to_vec();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    let forged = Transaction::decode(&bytes).unwrap();
    assert_eq!(w.apply_one(forged.clone()), Err(TxError::BadSignature));
    assert_eq!(w.state.check_transaction(&forged, w.t), Err(TxError::BadSignature));
    // Signed by someone else claiming to be org A.
    let impostor = Keypair::from_label("impostor");
    let claimed = sign(&impostor, w.state.chain_id(), org_a.id(), 0, good.body().payload.clone());
    assert_eq!(w.apply_one(claimed), Err(TxError::BadSignature));
    // Another chain's transaction.
    let foreign = sign(&org_a, Hash([1; 32]), org_a.id(), 0, good.body().payload.clone());
    assert_eq!(w.apply_one(foreign), Err(TxError::WrongChain));
    w.apply_one(good).unwrap();
}

#[test]
fn key_rotation_changes_the_verifying_key() {
    let mut w = World::new();
    let org_a = w.org_a.clone();
    let new_keys = Keypair::from_label("org-a-rotated");
    let rotate = w.tx(
        &org_a,
        Payload::RotateKey { signing_key: new_keys.public_key(), encryption_key: new_keys.encryption_public_key() },
    );
    w.apply_one(rotate).unwrap();
    let doc = Keypair::from_label("doctor");
    let payload = Payload::register(Role::Practitioner, &doc, Some(org_a.id()), "Dr A");
    let old = sign(&org_a, w.state.chain_id(), org_a.id(), 1, payload.clone());
    assert_eq!(w.apply_one(old), Err(TxError::BadSignature));
    let new = sign(&new_keys, w.state.chain_id(), org_a.id(), 1, payload);
    w.apply_one(new).unwrap();
    assert_eq!(w.state.identity(&org_a.id()).unwrap().signing_key, new_keys.public_key());
}

#[test]
fn records_need_a_category_key_held_by_patient_and_custodian() {
    let mut w = World::new();
    let (org_a, org_b) = (w.org_a.clone(), w.org_b.clone());
    let doc = Keypair::from_label("doctor");
    let doc_b = Keypair::from_label("doctor-b");
    let patient = Keypair::from_label("patient");
    w.register(&org_a, &doc, Role::Practitioner, Some(org_a.id()), "Dr A").unwrap();
    w.register(&org_b, &doc_b, Role::Practitioner, Some(org_b.id()), "Dr B").unwrap();
    w.register(&org_a, &patient, Role::Patient, None, "").unwrap();
    let record = RecordId([5; 32]);
    assert!(
        matches!(w.commit_record(&doc, &patient, record, 1), Err(TxError::InvalidField(m)) if m.contains("no category key"))
    );
    // A new key must reach both the patient and the custodian.
    assert!(matches!(w.share(&doc, &patient, "labs", 1, &[patient.id()]), Err(TxError::InvalidField(_))));
    // Other organisations' staff cannot share org A's keys; nobody shares with org B unasked.
    assert!(matches!(
        w.share(&doc_b, &patient, "labs", 1, &[patient.id(), org_a.id()]),
        Err(TxError::NotAuthorised(_))
    ));
    assert!(matches!(
        w.share(&doc, &patient, "labs", 1, &[patient.id(), org_a.id(), org_b.id()]),
        Err(TxError::NotAuthorised(_))
    ));
    assert!(matches!(
        w.share(&doc, &patient, "nonsense", 1, &[patient.id(), org_a.id()]),
        Err(TxError::InvalidField(_))
    ));
    w.share(&doc, &patient, "labs", 1, &[patient.id(), org_a.id()]).unwrap();
    assert!(
        matches!(w.share(&doc, &patient, "labs", 1, &[patient.id()]), Err(TxError::InvalidField(_))),
        "double share"
    );
    assert!(matches!(w.share(&doc, &patient, "labs", 3, &[patient.id(), org_a.id()]), Err(TxError::InvalidField(_))));

    assert_eq!(
        w.commit_record(&doc, &patient, record, 2),
        Err(TxError::InvalidField("the first version of a record is 1"))
    );
    assert!(matches!(w.commit_record(&doc_b, &patient, record, 1), Err(TxError::NotAuthorised(_))));
    assert!(matches!(w.commit_record_at(&doc, &patient, record, 1, 2), Err(TxError::InvalidField(_))), "future epoch");
    w.commit_record(&doc, &patient, record, 1).unwrap();
    w.commit_record(&doc, &patient, record, 2).unwrap();
    assert_eq!(
        w.commit_record(&doc, &patient, record, 2),
        Err(TxError::InvalidField("version must be the latest version plus one"))
    );
    // The custodian's node may sign for its practitioner; nobody signs for another's author.
    let validator = w.validator.clone();
    w.commit_record_by(&validator, doc.id(), &patient, record, 3, 1).unwrap();
    assert!(matches!(
        w.commit_record_by(&validator, doc_b.id(), &patient, record, 4, 1),
        Err(TxError::NotAuthorised(_))
    ));
    assert!(matches!(w.commit_record_by(&doc_b, doc.id(), &patient, record, 4, 1), Err(TxError::NotAuthorised(_))));
    let head = w.state.record(&record).unwrap();
    assert_eq!((head.latest_version, head.category.as_str()), (3, "labs"));
    assert_eq!(head.versions.len(), 3);
    assert_eq!(head.version_tx(3), Some(head.versions[2]));
    assert_eq!(head.version_tx(0), None);
}

#[test]
fn key_shares_follow_consent_and_revocation_forces_rotation() {
    let mut w = World::new();
    let (org_a, org_b, validator) = (w.org_a.clone(), w.org_b.clone(), w.validator.clone());
    let doc = Keypair::from_label("doctor");
    let patient = Keypair::from_label("patient");
    w.register(&org_a, &doc, Role::Practitioner, Some(org_a.id()), "Dr A").unwrap();
    w.register(&org_a, &patient, Role::Patient, None, "").unwrap();
    w.share(&doc, &patient, "labs", 1, &[patient.id(), org_a.id()]).unwrap();
    let record = RecordId([5; 32]);
    w.commit_record(&doc, &patient, record, 1).unwrap();

    // A grant of conditions does not reach the labs key; a grant of Observations does.
    let conditions = w.grant(&patient, org_b.id(), Scope::Categories(vec!["conditions".into()]), 30);
    assert!(matches!(w.share(&validator, &patient, "labs", 1, &[org_b.id()]), Err(TxError::NotAuthorised(_))));
    let observations = w.grant(&patient, org_b.id(), Scope::ResourceTypes(vec!["Observation".into()]), 30);
    // The custodian's node shares it (validators act for their organisation).
    w.share(&validator, &patient, "labs", 1, &[org_b.id()]).unwrap();
    let key_id = CategoryKeyId { custodian: org_a.id(), patient: patient.id(), category: "labs".into() };
    assert_eq!(w.state.category_key(&key_id).unwrap().holders.len(), 3);

    // Revoking the grant forces a new epoch before the next record.
    let revoke = w.tx(&patient, Payload::ConsentRevoke { grant_id: observations });
    w.apply_one(revoke).unwrap();
    assert!(w.state.category_key(&key_id).unwrap().rotation_required);
    assert!(
        matches!(w.commit_record(&doc, &patient, record, 2), Err(TxError::InvalidField(m)) if m.contains("rotated"))
    );
    // The new epoch cannot go to the revoked grantee (its other grant is for conditions).
    assert!(matches!(
        w.share(&doc, &patient, "labs", 2, &[patient.id(), org_a.id(), org_b.id()]),
        Err(TxError::NotAuthorised(_))
    ));
    w.share(&doc, &patient, "labs", 2, &[patient.id(), org_a.id()]).unwrap();
    assert!(!w.state.category_key(&key_id).unwrap().rotation_required);
    assert!(matches!(w.commit_record_at(&doc, &patient, record, 2, 1), Err(TxError::InvalidField(_))), "old epoch");
    w.commit_record_at(&doc, &patient, record, 2, 2).unwrap();
    let _ = conditions;
}

#[test]
fn expired_grants_do_not_reach_keys() {
    let mut w = World::new();
    let (org_a, org_b) = (w.org_a.clone(), w.org_b.clone());
    let doc = Keypair::from_label("doctor");
    let patient = Keypair::from_label("patient");
    w.register(&org_a, &doc, Role::Practitioner, Some(org_a.id()), "Dr A").unwrap();
    w.register(&org_a, &patient, Role::Patient, None, "").unwrap();
    w.share(&doc, &patient, "labs", 1, &[patient.id(), org_a.id()]).unwrap();
    w.grant(&patient, org_b.id(), Scope::All, 1);
    // Two days of blocks later (block time decides expiry).
    w.t += 2 * 86_400_000;
    assert!(matches!(w.share(&doc, &patient, "labs", 1, &[org_b.id()]), Err(TxError::NotAuthorised(_))));
}

#[test]
fn grants_revocations_and_access_events() {
    let mut w = World::new();
    let (org_a, org_b, validator) = (w.org_a.clone(), w.org_b.clone(), w.validator.clone());
    let doc = Keypair::from_label("doctor");
    let doc_b = Keypair::from_label("doctor-b");
    let patient = Keypair::from_label("patient");
    w.register(&org_a, &doc, Role::Practitioner, Some(org_a.id()), "Dr A").unwrap();
    w.register(&org_b, &doc_b, Role::Practitioner, Some(org_b.id()), "Dr B").unwrap();
    w.register(&org_a, &patient, Role::Patient, None, "").unwrap();
    w.share(&doc, &patient, "labs", 1, &[patient.id(), org_a.id()]).unwrap();
    let record = RecordId([5; 32]);
    w.commit_record(&doc, &patient, record, 1).unwrap();

    // Only the patient grants; category scopes must name known categories.
    let payload = Payload::ConsentGrant {
        patient: patient.id(),
        grantee: org_b.id(),
        scope: Scope::Categories(vec!["labs".into()]),
        actions: actions::READ,
        purpose: Purpose::Treatment,
        valid_from_ms: w.t,
        valid_until_ms: w.t + 86_400_000,
    };
    let by_doctor = w.tx(&doc, payload.clone());
    assert!(matches!(w.apply_one(by_doctor), Err(TxError::NotAuthorised(_))));
    let Payload::ConsentGrant { patient: p, grantee, actions: a, purpose, valid_from_ms, valid_until_ms, .. } =
        payload.clone()
    else {
        unreachable!()
    };
    let bad_scope = w.tx(
        &patient,
        Payload::ConsentGrant {
            patient: p,
            grantee,
            scope: Scope::Categories(vec!["everything".into()]),
            actions: a,
            purpose,
            valid_from_ms,
            valid_until_ms,
        },
    );
    assert!(matches!(w.apply_one(bad_scope), Err(TxError::InvalidField(_))));
    let grant = w.tx(&patient, payload);
    let grant_id = grant.id();
    w.apply_one(grant).unwrap();
    assert_eq!(w.state.grant(&grant_id).unwrap().grantee, org_b.id());
    assert!(w.state.grant(&grant_id).unwrap().scope.covers(&record, "Observation", "labs"));
    assert_eq!(w.state.grants_between(&patient.id(), &org_b.id()).count(), 1);

    // A node records a batch of accesses: one under the grant (decided now), one denied.
    let under_grant =
        AccessEvent { at_ms: w.t, ..World::event(doc_b.id(), patient.id(), Some((record, 1)), Some(grant_id)) };
    let batch = w.tx(
        &validator,
        Payload::AccessEvents { events: vec![under_grant, World::event(doc_b.id(), patient.id(), None, None)] },
    );
    w.apply_one(batch).unwrap();
    // Unknown versions, free text, future dates, empty batches and practitioners are refused.
    let mut unknown_version = World::event(doc_b.id(), patient.id(), Some((record, 3)), None);
    let mut free_text = World::event(doc_b.id(), patient.id(), None, None);
    free_text.reason = "patient has HIV".into();
    let mut future = World::event(doc_b.id(), patient.id(), None, None);
    future.at_ms = w.t + 3_600_000;
    for bad in [vec![unknown_version.clone()], vec![free_text], vec![future], vec![]] {
        let tx = w.tx(&validator, Payload::AccessEvents { events: bad });
        assert!(matches!(w.apply_one(tx), Err(TxError::InvalidField(_))));
    }
    unknown_version.record = None;
    let by_doc = w.tx(&doc_b, Payload::AccessEvents { events: vec![unknown_version] });
    assert!(matches!(w.apply_one(by_doc), Err(TxError::NotAuthorised(_))));

    // Revocation: only by the patient, once.
    let revoke_by_org = w.tx(&org_b, Payload::ConsentRevoke { grant_id });
    assert!(matches!(w.apply_one(revoke_by_org), Err(TxError::NotAuthorised(_))));
    let revoke = w.tx(&patient, Payload::ConsentRevoke { grant_id });
    w.apply_one(revoke).unwrap();
    assert_eq!(w.state.grant(&grant_id).unwrap().revoked_at, Some(w.state.height()));
    assert!(!w.state.grant(&grant_id).unwrap().is_live(w.t));
    let again = w.tx(&patient, Payload::ConsentRevoke { grant_id });
    assert_eq!(w.apply_one(again), Err(TxError::InvalidField("grant is already revoked")));
}

#[test]
fn block_header_rules() {
    let mut w = World::new();
    w.t += 1000;
    let (good, _) = w.state.build_block(vec![], w.t, w.validator.id());
    let check = |b: &Block, state: &State| state.verify_block(b, Some(b.header.timestamp_ms), &|_| false).map(|_| ());
    check(&good, &w.state).unwrap();

    let mut b = good.clone();
    b.header.height = 2;
    assert_eq!(check(&b, &w.state), Err(BlockError::WrongHeight { expected: 1, got: 2 }));
    let mut b = good.clone();
    b.header.parent = Hash([3; 32]);
    assert_eq!(check(&b, &w.state), Err(BlockError::WrongParent));
    let mut b = good.clone();
    b.header.timestamp_ms = 1_700_000_000_000;
    assert!(matches!(check(&b, &w.state), Err(BlockError::TimestampNotIncreasing { .. })));
    let mut b = good.clone();
    b.header.proposer = w.org_a.id();
    assert_eq!(check(&b, &w.state), Err(BlockError::UnknownProposer));
    let mut b = good.clone();
    b.header.log_root = Hash([0; 32]);
    assert_eq!(check(&b, &w.state), Err(BlockError::LogRootMismatch));
    let mut b = good.clone();
    b.header.log_size = 1;
    assert!(matches!(check(&b, &w.state), Err(BlockError::LogSizeMismatch { .. })));
    // A timestamp far in the future is refused when judged against a local clock.
    let mut b = good.clone();
    b.header.timestamp_ms = w.t + 3_600_000;
    assert!(matches!(w.state.verify_block(&b, Some(w.t), &|_| false), Err(BlockError::TimestampInFuture { .. })));
    w.state.apply_block(&good, Some(w.t), &|_| false).unwrap();
    assert_eq!(w.state.head_hash(), good.hash());
}

#[test]
fn build_block_skips_invalid_and_blocks_round_trip() {
    let mut w = World::new();
    let org_a = w.org_a.clone();
    let docs: Vec<Keypair> = (0..5).map(|i| Keypair::from_label(&format!("doc-{i}"))).collect();
    let chain = w.state.chain_id();
    let mut txs: Vec<Transaction> = docs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            sign(
                &org_a,
                chain,
                org_a.id(),
                i as u64,
                Payload::register(Role::Practitioner, d, Some(org_a.id()), format!("Dr {i}")),
            )
        })
        .collect();
    // A duplicate (replay) in the middle is skipped, the rest included in order.
    txs.insert(2, txs[1].clone());
    w.t += 1000;
    let (block, skipped) = w.state.build_block(txs, w.t, w.validator.id());
    assert_eq!(block.txs.len(), 5);
    assert_eq!(skipped.len(), 1);
    assert!(matches!(skipped[0].1, TxError::Replayed { .. }));
    let bytes = medledger_codec::Encode::to_bytes(&block);
    let decoded = Block::decode(&bytes).unwrap();
    assert_eq!(decoded, block);
    assert_eq!(decoded.hash(), block.hash());
    // The partial decoders (a transaction's status and lookup) agree with the full one.
    assert_eq!(Block::decode_header(&bytes).unwrap(), block.header);
    for (i, tx) in block.txs.iter().enumerate() {
        assert_eq!(Block::decode_transaction_at(&bytes, i as u32).unwrap().as_ref(), Some(tx));
    }
    assert_eq!(Block::decode_transaction_at(&bytes, 5).unwrap(), None);
    assert!(Block::decode_transaction_at(&bytes[..bytes.len() - 1], 4).is_err());
    w.state.apply_block(&decoded, Some(w.t), &|_| false).unwrap();
    assert_eq!(w.state.log().size(), 5);
    assert_eq!(w.state.log().root(), block.header.log_root);
    // Truncated or padded encodings are rejected.
    assert!(Block::decode(&bytes[..bytes.len() - 1]).is_err());
    let mut padded = bytes.clone();
    padded.push(0);
    assert!(Block::decode(&padded).is_err());
}

#[test]
fn transaction_decoding_is_strict() {
    let w = World::new();
    let tx = w.tx(&w.org_a, Payload::ConsentRevoke { grant_id: medledger_types::TxId([1; 32]) });
    let bytes = tx.bytes().to_vec();
    assert_eq!(Transaction::decode(&bytes).unwrap(), tx);
    for cut in 0..bytes.len() {
        assert!(Transaction::decode(&bytes[..cut]).is_err(), "prefix of {cut} bytes decoded");
    }
    let mut v2 = bytes.clone();
    v2[0] = 2;
    assert!(Transaction::decode(&v2).is_err());
    let oversized = vec![1u8; medledger_types::limits::TX_BYTES_MAX + 1];
    assert!(Transaction::decode(&oversized).is_err());
    // The id is the RFC 6962 leaf hash of the bytes.
    assert_eq!(tx.id().0, medledger_merkle::leaf_hash(&bytes).0);
}

#[test]
fn blocks_build_and_verify_on_unfinalized_ancestors() {
    use medledger_ledger::Executed;
    let w = World::new();
    let org_a = w.org_a.clone();
    let chain = w.state.chain_id();
    let reg = |i: u64| {
        let d = Keypair::from_label(&format!("doc-{i}"));
        sign(
            &org_a,
            chain,
            org_a.id(),
            i,
            Payload::register(Role::Practitioner, &d, Some(org_a.id()), format!("Dr {i}")),
        )
    };
    let v = w.validator.id();
    let mut state = w.state.clone();
    let (b1, _) = state.build_block(vec![reg(0), reg(1)], w.t + 1000, v);
    let d1 = state.verify_block(&b1, None, &|_| false).unwrap();
    let e1 = Executed { block: b1.clone(), delta: d1 };
    // Block 2 builds on block 1 before block 1 is final: nonces continue from the ancestor,
    // and the ancestor's own transactions cannot be replayed.
    let built = state.build_block_on(&[&e1], vec![reg(1), reg(2)], w.t + 2000, v);
    let (b2, skipped) = (built.block, built.skipped);
    assert_eq!(b2.txs.len(), 1);
    assert!(matches!(skipped[0].1, TxError::Replayed { expected: 2, got: 1 }));
    assert_eq!(b2.header.parent, b1.hash());
    assert_eq!(b2.header.log_size, 3);
    let d2 = state.verify_block_on(&[&e1], &b2, None, &|_| false).unwrap();
    // Without its ancestor, block 2 does not verify.
    assert_eq!(state.verify_block(&b2, None, &|_| false).unwrap_err(), BlockError::WrongHeight { expected: 1, got: 2 });
    state.commit(&e1.block, &e1.delta);
    state.commit(&b2, &d2);
    // Same result as applying one by one from scratch.
    let mut again = w.state.clone();
    again.apply_block(&b1, None, &|_| false).unwrap();
    again.apply_block(&b2, None, &|_| false).unwrap();
    assert_eq!(state.head_hash(), again.head_hash());
    assert_eq!(state.log().root(), again.log().root());
    assert_eq!(state.next_nonce(&org_a.id()), 3);
}
