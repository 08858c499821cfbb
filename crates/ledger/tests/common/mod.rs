//! The world the ledger's behaviour tests run in: two hospitals, a practitioner at each, a
//! registered patient, blocks built and applied as consensus would.

#![allow(dead_code)]

use medledger_crypto::Keypair;
use medledger_ledger::{
    Block, BlockError, CategoryKeyId, Genesis, GenesisIdentity, KeyShareEntry, Payload, Purpose, RuleSpec, State,
    Transaction, TxError,
    access::{Basis, Denial, decide},
    actions,
    tx::sign,
};
use medledger_types::{Hash, IdentityId, OrganisationKind, RecordId, Role, TxId};

pub const DAY_MS: u64 = 86_400_000;
pub const HOUR_MS: u64 = 3_600_000;

pub struct World {
    pub state: State,
    pub org_a: Keypair,
    pub org_b: Keypair,
    pub validator: Keypair,
    /// Organisation B's node.
    pub validator_b: Keypair,
    pub doc: Keypair,
    pub doc_b: Keypair,
    pub patient: Keypair,
    pub t: u64,
}

pub fn identity(name: &str, keys: &Keypair, org: Option<IdentityId>) -> GenesisIdentity {
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
    /// Two hospitals, a practitioner at each, one registered patient, and the labs key of
    /// (hospital A, patient) shared with the patient and hospital A.
    pub fn new() -> Self {
        Self::with_second_member("Hospital B", OrganisationKind::CareProvider)
    }

    /// [`World::new`] with organisation B named `name`, of `kind` (an insurer, a research
    /// institute, ...).
    pub fn with_second_member(name: &str, kind: OrganisationKind) -> Self {
        let org_a = Keypair::from_label("org-a");
        let org_b = Keypair::from_label("org-b");
        let validator = Keypair::from_label("validator-0");
        let second = GenesisIdentity { kind: Some(kind), ..identity(name, &org_b, None) };
        let genesis = Genesis {
            chain_name: "medledger.test".into(),
            genesis_time_ms: 1_700_000_000_000,
            organisations: vec![identity("Hospital A", &org_a, None), second],
            validators: vec![
                identity("node-0", &validator, Some(org_a.id())),
                identity("node-1", &Keypair::from_label("validator-1"), Some(org_b.id())),
            ],
        };
        genesis.validate().unwrap();
        let mut w = Self {
            state: State::from_genesis(&genesis),
            org_a: org_a.clone(),
            org_b: org_b.clone(),
            validator,
            validator_b: Keypair::from_label("validator-1"),
            doc: Keypair::from_label("doctor"),
            doc_b: Keypair::from_label("doctor-b"),
            patient: Keypair::from_label("patient"),
            t: 1_700_000_000_000,
        };
        let (doc, doc_b, patient) = (w.doc.clone(), w.doc_b.clone(), w.patient.clone());
        w.ok(&org_a, Payload::register(Role::Practitioner, &doc, Some(org_a.id()), "Dr A"));
        w.ok(&org_b, Payload::register(Role::Practitioner, &doc_b, Some(org_b.id()), "Dr B"));
        w.ok(&org_a, Payload::register(Role::Patient, &patient, None, ""));
        w.share(&doc, "labs", &[patient.id(), org_a.id()]).unwrap();
        w
    }

    pub fn tx(&self, keys: &Keypair, payload: Payload) -> Transaction {
        let nonce = self.state.next_nonce(&keys.id());
        sign(keys, self.state.chain_id(), keys.id(), nonce, payload)
    }

    /// Builds a block of exactly `txs` (as a proposer that did not filter would) and applies it.
    pub fn apply(&mut self, txs: Vec<Transaction>) -> Result<Block, BlockError> {
        self.t += 1000;
        let (mut block, _) = self.state.build_block(vec![], self.t, self.validator.id());
        let leaves: Vec<Hash> = txs.iter().map(|t| Hash(t.id().0)).collect();
        block.header.tx_count = txs.len() as u32;
        block.header.txs_root = medledger_ledger::block::txs_root(&txs);
        block.header.log_size = self.state.log().size() + txs.len() as u64;
        block.header.log_root = self.state.log().root_with_appended(&leaves);
        block.txs = txs;
        self.state.apply_block(&block, Some(self.t), &|_| false)?;
        Ok(block)
    }

    pub fn apply_one(&mut self, tx: Transaction) -> Result<TxId, TxError> {
        let id = tx.id();
        match self.apply(vec![tx]) {
            Ok(_) => Ok(id),
            Err(BlockError::InvalidTransaction { error, .. }) => Err(error),
            Err(e) => panic!("unexpected block error {e}"),
        }
    }

    pub fn submit(&mut self, by: &Keypair, payload: Payload) -> Result<TxId, TxError> {
        let tx = self.tx(by, payload);
        self.apply_one(tx)
    }

    pub fn ok(&mut self, by: &Keypair, payload: Payload) -> TxId {
        self.submit(by, payload).unwrap()
    }

    /// The current epoch of (hospital A, patient, `category`), or the next one when none
    /// exists, shared with `recipients`. Wraps are placeholders: consensus checks who receives
    /// them, not their bytes.
    pub fn share(&mut self, by: &Keypair, category: &str, recipients: &[IdentityId]) -> Result<TxId, TxError> {
        let key_id =
            CategoryKeyId { custodian: self.org_a.id(), patient: self.patient.id(), category: category.into() };
        let epoch = match self.state.category_key(&key_id) {
            // The next block is dated one second later (`apply`).
            Some(k) if !k.must_rotate(self.t + 1000) => k.epoch,
            Some(k) => k.epoch + 1,
            None => 1,
        };
        let shares = recipients
            .iter()
            .map(|r| KeyShareEntry { recipient: *r, encapsulated_key: [7; 32], wrapped_key: [8; 48] })
            .collect();
        let payload = Payload::KeyShare {
            custodian: self.org_a.id(),
            patient: self.patient.id(),
            category: category.into(),
            epoch,
            shares,
        };
        self.submit(by, payload)
    }

    /// Commits `version` of `record` at hospital A, written by its practitioner.
    pub fn commit(
        &mut self,
        record: RecordId,
        version: u32,
        resource_type: &str,
        category: &str,
    ) -> Result<TxId, TxError> {
        let key_id =
            CategoryKeyId { custodian: self.org_a.id(), patient: self.patient.id(), category: category.into() };
        let key_epoch = self.state.category_key(&key_id).map_or(1, |k| k.epoch);
        let doc = self.doc.clone();
        let payload = Payload::RecordCommit {
            record_id: record,
            version,
            patient: self.patient.id(),
            custodian: self.org_a.id(),
            author: doc.id(),
            resource_type: resource_type.into(),
            category: category.into(),
            key_epoch,
            ciphertext_hash: Hash([9; 32]),
            ciphertext_bytes: 1234,
            wrapped_data_key: [5; 72],
        };
        self.submit(&doc, payload)
    }

    pub fn lab(&mut self, record: RecordId, version: u32) {
        self.commit(record, version, "Observation", "labs").unwrap();
    }

    pub fn install(&mut self, by: &Keypair, rule: RuleSpec) -> Result<TxId, TxError> {
        let patient = self.patient.id();
        self.submit(by, Payload::InstallRule { patient, rule })
    }

    pub fn break_glass(&mut self, by: &Keypair, reason: &str, window_ms: u64) -> Result<TxId, TxError> {
        let patient = self.patient.id();
        self.submit(by, Payload::BreakGlass { patient, reason: reason.into(), window_ms })
    }

    /// `decide` for a read of `record` by `who` at block time `at_ms`.
    pub fn read(&self, who: &Keypair, record: RecordId, purpose: Purpose, at_ms: u64) -> Result<Basis, Denial> {
        self.decide(who, record, actions::READ, purpose, at_ms)
    }

    pub fn decide(
        &self,
        who: &Keypair,
        record: RecordId,
        action: u8,
        purpose: Purpose,
        at_ms: u64,
    ) -> Result<Basis, Denial> {
        let head = self.state.record(&record).expect("record exists");
        decide(&self.state, &who.id(), &record, head, action, purpose, at_ms)
    }

    pub fn now(&self) -> u64 {
        self.state.head_timestamp_ms()
    }

    pub fn labs_key(&self) -> CategoryKeyId {
        CategoryKeyId { custodian: self.org_a.id(), patient: self.patient.id(), category: "labs".into() }
    }
}

/// The categories a referral consent in these tests covers.
pub fn labs_and_vitals() -> Vec<String> {
    vec!["labs".into(), "vitals".into()]
}

/// A patient's authorisation for `referrer` to refer their labs and vitals for up to 30 days.
pub fn consent(referrer: medledger_types::IdentityId) -> medledger_ledger::rules::referral::ReferralConsentParams {
    medledger_ledger::rules::referral::ReferralConsentParams {
        referrer,
        categories: labs_and_vitals(),
        max_days: 30,
        purpose: medledger_ledger::Purpose::Treatment,
    }
}

/// A referral of labs for 14 days to `to`, under `authorisation`.
pub fn referral(authorisation: TxId, to: IdentityId) -> medledger_ledger::rules::referral::ReferralParams {
    medledger_ledger::rules::referral::ReferralParams {
        authorisation,
        to,
        categories: vec!["labs".into()],
        days: 14,
        purpose: medledger_ledger::Purpose::Treatment,
    }
}

/// Consent grants the sharing and delegate tests make.
impl World {
    /// A read grant of the patient's labs to `grantee`, signed by `by`, for `patient`.
    pub fn grant_for(&mut self, by: &Keypair, patient: IdentityId, grantee: IdentityId) -> Result<TxId, TxError> {
        let now = self.now();
        self.submit(
            by,
            medledger_ledger::Payload::ConsentGrant {
                patient,
                grantee,
                scope: medledger_ledger::Scope::Categories(vec!["labs".into()]),
                actions: medledger_ledger::actions::READ,
                purpose: medledger_ledger::Purpose::Treatment,
                valid_from_ms: now,
                valid_until_ms: now + 30 * DAY_MS,
            },
        )
    }

    pub fn grant_to(&mut self, patient: &Keypair, grantee: IdentityId) -> TxId {
        self.grant_for(patient, patient.id(), grantee).unwrap()
    }
}
