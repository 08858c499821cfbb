//! Break-glass and sharing rules under consensus, in commonware's deterministic runtime: four
//! validators commit registrations, key shares, records, a referral authorisation and a
//! referral, a standing rule with a later record, and a break-glass declaration; every
//! validator must end with the same blocks and the same rule-derived access.
//!
//! Prints its seed; replay with `MEDLEDGER_SEED=<seed> cargo test -p medledger-node --test
//! sharing_simulation`.

use medledger_node::simulation as common;

use std::{sync::Arc, time::Duration};

use commonware_runtime::{Clock as _, Runner as _, deterministic};
use medledger_crypto::Keypair;
use medledger_ledger::{
    Grant, InstalledRule, KeyShareEntry, Payload, Purpose, Transaction,
    access::{Basis, Denial, decide},
    actions,
    rules::{
        referral::{ReferralConsentParams, ReferralParams},
        share_new::ShareNewParams,
    },
    tx::sign,
};
use medledger_node::{
    app::ProposalFault,
    chain::{Chain, TxStatus},
    devnet::Devnet,
};
use medledger_types::{Hash, IdentityId, RecordId, Role, TxId};

const GENESIS_MS: u64 = 0;
const VALIDATORS: usize = 4;

/// Keys of the scenario's actors and a per-signer nonce counter.
struct Actors {
    chain_id: Hash,
    org_a: Keypair,
    org_b: Keypair,
    doc: Keypair,
    doc_b: Keypair,
    patient: Keypair,
    nonces: std::collections::BTreeMap<IdentityId, u64>,
}

impl Actors {
    fn tx(&mut self, keys: &Keypair, payload: Payload) -> Transaction {
        let nonce = self.nonces.entry(keys.id()).or_insert(0);
        let tx = sign(keys, self.chain_id, keys.id(), *nonce, payload);
        *nonce += 1;
        tx
    }

    fn record(&self, id: RecordId) -> Payload {
        Payload::RecordCommit {
            record_id: id,
            version: 1,
            patient: self.patient.id(),
            custodian: self.org_a.id(),
            author: self.doc.id(),
            resource_type: "Observation".into(),
            category: "labs".into(),
            key_epoch: 1,
            ciphertext_hash: Hash([9; 32]),
            ciphertext_bytes: 100,
            wrapped_data_key: [5; 72],
        }
    }
}

const OLD_RECORD: RecordId = RecordId([1; 32]);
const NEW_RECORD: RecordId = RecordId([2; 32]);

/// The transactions in phases: each phase depends on the previous one being committed, so it
/// is submitted only once every validator has committed the previous phase.
fn phases(net: &Devnet) -> (Actors, Vec<Vec<Transaction>>) {
    let (org_a, org_b) = (net.organisations[0].clone(), net.organisations[1].clone());
    let mut a = Actors {
        chain_id: net.genesis.chain_id(),
        doc: Keypair::from_label("sim-doctor-a"),
        doc_b: Keypair::from_label("sim-doctor-b"),
        patient: Keypair::from_label("sim-patient"),
        org_a: org_a.clone(),
        org_b: org_b.clone(),
        nonces: Default::default(),
    };
    let (doc, doc_b, patient) = (a.doc.clone(), a.doc_b.clone(), a.patient.clone());
    let registrations = vec![
        a.tx(&org_a, Payload::register(Role::Practitioner, &doc, Some(org_a.id()), "Dr A")),
        a.tx(&org_b, Payload::register(Role::Practitioner, &doc_b, Some(org_b.id()), "Dr B")),
        // A provider registers the patient with the patient's own keys.
        a.tx(&org_a, Payload::register(Role::Patient, &patient, None, "")),
    ];
    let shares = [patient.id(), org_a.id()]
        .map(|recipient| KeyShareEntry { recipient, encapsulated_key: [7; 32], wrapped_key: [8; 48] })
        .to_vec();
    let key_share =
        Payload::KeyShare { custodian: org_a.id(), patient: patient.id(), category: "labs".into(), epoch: 1, shares };
    let authorise = ReferralConsentParams {
        referrer: org_a.id(),
        categories: vec!["labs".into(), "vitals".into()],
        max_days: 30,
        purpose: Purpose::Treatment,
    };
    let authorisation = a.tx(&patient, Payload::InstallRule { patient: patient.id(), rule: authorise.to_spec() });
    let keys_and_consent = vec![a.tx(&doc, key_share), authorisation.clone()];
    let old_record = vec![a.tx(&doc, a.record(OLD_RECORD))];
    let refer = ReferralParams {
        authorisation: authorisation.id(),
        to: org_b.id(),
        categories: vec!["labs".into()],
        days: 14,
        purpose: Purpose::Treatment,
    };
    let standing =
        ShareNewParams { grantee: org_b.id(), categories: vec!["labs".into()], purpose: Purpose::Operations };
    let rules = vec![
        a.tx(&doc, Payload::InstallRule { patient: patient.id(), rule: refer.to_spec() }),
        a.tx(&patient, Payload::InstallRule { patient: patient.id(), rule: standing.to_spec() }),
    ];
    let later = vec![
        a.tx(&doc, a.record(NEW_RECORD)),
        a.tx(&doc_b, Payload::BreakGlass { patient: patient.id(), reason: "ed-arrival".into(), window_ms: 3_600_000 }),
    ];
    (a, vec![registrations, keys_and_consent, old_record, rules, later])
}

/// What one validator holds of the patient's derived access at the end.
#[derive(Debug, PartialEq)]
struct Snapshot {
    grants: Vec<Grant>,
    rules: Vec<InstalledRule>,
    break_glass: Vec<TxId>,
    decisions: Vec<Result<Basis, Denial>>,
}

struct Outcome {
    chains: Vec<Vec<Hash>>,
    snapshots: Vec<Snapshot>,
}

fn run(seed: u64) -> Outcome {
    let net = Devnet::new("medledger.sim", GENESIS_MS, &["Hospital A", "Hospital B"], VALIDATORS, &mut |l| {
        Keypair::from_label(l)
    });
    let dirs: Vec<tempfile::TempDir> = (0..VALIDATORS).map(|_| tempfile::tempdir().unwrap()).collect();
    let (actors, phases) = phases(&net);
    let cfg = deterministic::Config::new().with_seed(seed).with_timeout(Some(Duration::from_secs(900)));
    deterministic::Runner::new(cfg).start(|context| async move {
        let participants = common::participants(&net.validators);
        let oracle = common::network(&context, &participants).await;

        let mut chains: Vec<Arc<Chain>> = Vec::new();
        for (i, dir) in dirs.iter().enumerate() {
            let (chain, _) = Chain::open(dir.path(), &net.genesis, net.validators[i].clone(), &mut |_, _| {}).unwrap();
            chains.push(Arc::new(chain));
        }
        for (i, chain) in chains.iter().enumerate() {
            common::start(&context, &oracle, &participants, i, &net.validators[i], chain.clone(), ProposalFault::None)
                .await;
        }
        common::link_all(&oracle, &participants).await;

        // Each phase goes to every validator (as a client retrying against several nodes
        // would), and the next starts once all of them have committed it.
        for (phase, txs) in phases.iter().enumerate() {
            for chain in &chains {
                let now_ms = chain.head().timestamp_ms;
                for tx in txs {
                    chain.submit(tx.bytes(), now_ms).unwrap_or_else(|e| panic!("phase {phase}: submit refused: {e}"));
                }
            }
            loop {
                let mut all = true;
                for (i, chain) in chains.iter().enumerate() {
                    for tx in txs {
                        match chain.tx_status(&tx.id()).unwrap() {
                            TxStatus::Committed { .. } => {}
                            TxStatus::Rejected { reason } => panic!("phase {phase}: validator {i} rejected: {reason}"),
                            _ => all = false,
                        }
                    }
                }
                if all {
                    break;
                }
                context.sleep(Duration::from_millis(100)).await;
            }
        }
        // A few more blocks, so every validator has finalized past the last transaction.
        let last = chains.iter().map(|c| c.head().height).max().unwrap();
        let target = last + 2;
        while !chains.iter().all(|c| c.head().height >= target) {
            context.sleep(Duration::from_millis(100)).await;
        }

        // Decisions at the time of the block holding the break-glass (within every window).
        let (last_tx_height, _) = match chains[0].tx_status(&phases.last().unwrap()[1].id()).unwrap() {
            TxStatus::Committed { height, index, .. } => (height, index),
            other => panic!("break-glass not committed: {other:?}"),
        };
        let at_ms = chains[0].block(last_tx_height).unwrap().unwrap().header.timestamp_ms;
        let requesters = [&actors.doc, &actors.doc_b, &actors.org_a, &actors.org_b, &actors.patient];
        let mut snapshots = Vec::new();
        let mut outcome_chains = Vec::new();
        for (i, chain) in chains.iter().enumerate() {
            assert!(chain.halted().is_none(), "validator {i} halted: {:?}", chain.halted());
            outcome_chains
                .push((1..=target).map(|h| chain.block(h).unwrap().expect("finalized block").hash()).collect());
            let state = chain.snapshot();
            let patient = actors.patient.id();
            let mut decisions = Vec::new();
            for who in requesters {
                for record_id in [OLD_RECORD, NEW_RECORD] {
                    let head = state.record(&record_id).expect("record committed");
                    for purpose in Purpose::ALL {
                        decisions.push(decide(&state, &who.id(), &record_id, head, actions::READ, purpose, at_ms));
                    }
                }
            }
            snapshots.push(Snapshot {
                grants: state.grants_of(&patient).cloned().collect(),
                rules: state.rules_of(&patient).cloned().collect(),
                break_glass: state.break_glass_events(&patient).map(|g| g.id).collect(),
                decisions,
            });
        }
        Outcome { chains: outcome_chains, snapshots }
    })
}

fn seed(default: u64) -> u64 {
    common::seed(default, "sharing_simulation")
}

#[test]
fn validators_agree_on_rule_derived_access() {
    let o = run(seed(11));
    assert_eq!(o.chains.len(), VALIDATORS);
    for (i, hashes) in o.chains.iter().enumerate() {
        assert_eq!(hashes, &o.chains[0], "validator {i} committed other blocks");
    }
    for (i, snapshot) in o.snapshots.iter().enumerate() {
        assert_eq!(snapshot, &o.snapshots[0], "validator {i} derived other access");
    }
    let s = &o.snapshots[0];
    // Referral (1), standing rule on the new record (1), break-glass (1).
    assert_eq!(s.grants.len(), 3, "{:#?}", s.grants);
    assert_eq!(s.rules.len(), 3);
    assert_eq!(s.break_glass.len(), 1);
    // The matrix: requester (doc, doc_b, org_a, org_b, patient) × record (old, new) × purpose
    // (Treatment, Payment, Operations, Research, Emergency).
    let at = |who: usize, record: usize, purpose: Purpose| &s.decisions[who * 10 + record * 5 + purpose as usize - 1];
    let referral = s.rules.iter().find(|r| r.kind == "referral").unwrap();
    let standing = s.rules.iter().find(|r| r.kind == "share-new").unwrap();
    let (doc, doc_b, org_b, patient) = (0, 1, 3, 4);
    assert_eq!(at(doc, 0, Purpose::Research), &Ok(Basis::Custodian));
    assert_eq!(at(patient, 1, Purpose::Payment), &Ok(Basis::Patient));
    // Hospital B: both records for treatment under the referral (labs, 14 days) …
    for who in [doc_b, org_b] {
        for record in [0, 1] {
            assert!(
                matches!(at(who, record, Purpose::Treatment), Ok(Basis::Rule { rule_id, .. }) if *rule_id == referral.id)
            );
        }
    }
    // … only the new record for operations under the standing rule …
    assert!(matches!(at(org_b, 1, Purpose::Operations), Ok(Basis::Rule { rule_id, .. }) if *rule_id == standing.id));
    assert_eq!(at(org_b, 0, Purpose::Operations), &Err(Denial::PurposeNotGranted));
    assert_eq!(at(org_b, 0, Purpose::Research), &Err(Denial::PurposeNotGranted));
    // … and Emergency only for the practitioner who broke the glass.
    assert_eq!(at(doc_b, 0, Purpose::Emergency), &Ok(Basis::BreakGlass(s.break_glass[0])));
    assert_eq!(at(org_b, 0, Purpose::Emergency), &Err(Denial::PurposeNotGranted));
}

#[test]
fn same_seed_derives_the_same_access() {
    let seed = seed(12);
    let (a, b) = (run(seed), run(seed));
    assert_eq!(a.chains, b.chains);
    assert_eq!(a.snapshots, b.snapshots);
}
