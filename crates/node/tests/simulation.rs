//! Consensus in commonware's deterministic runtime: seeded, simulated network and time.
//! Every test prints its seed; replay a failure with `MEDLEDGER_SEED=<seed> cargo test -p
//! medledger-node --test simulation <name>`.

use medledger_node::simulation as common;

use std::{sync::Arc, time::Duration};

use commonware_runtime::{Clock as _, Runner as _, deterministic};
use medledger_crypto::Keypair;
use medledger_ledger::{Block, Payload, Transaction, tx::sign};
use medledger_node::{
    app::ProposalFault,
    chain::{Chain, TxStatus},
    devnet::Devnet,
};
use medledger_types::{Hash, Role};

const GENESIS_MS: u64 = 0;

struct Scenario {
    validators: usize,
    /// Never started: crashed from the beginning.
    offline: Vec<usize>,
    /// Proposes blocks with a forged transaction signature.
    byzantine: Option<usize>,
    /// Blocks every online validator must finalize.
    target_height: u64,
    /// Registration transactions submitted (spread over the online validators).
    txs: usize,
}

struct Outcome {
    /// Certificates stored by the first online validator: (height, block hash, bytes).
    certificates: Vec<(u64, Hash, Vec<u8>)>,
    /// Finalized block hashes per online validator, heights 1..=target.
    chains: Vec<(usize, Vec<Hash>)>,
    committed_txs: Vec<u64>,
    honest_rejections: u64,
    forged_committed: bool,
    audit: String,
}

fn registrations(net: &Devnet, n: usize) -> Vec<Transaction> {
    registrations_by(net, 0, n)
}

fn registrations_by(net: &Devnet, org_index: usize, n: usize) -> Vec<Transaction> {
    let org = &net.organisations[org_index];
    let chain_id = net.genesis.chain_id();
    (0..n)
        .map(|i| {
            let doc = Keypair::from_label(&format!("doc-{org_index}-{i}"));
            sign(
                org,
                chain_id,
                org.id(),
                i as u64,
                Payload::register(Role::Practitioner, &doc, Some(org.id()), format!("Dr {i}")),
            )
        })
        .collect()
}

fn run(seed: u64, s: Scenario) -> Outcome {
    let net = Devnet::new("medledger.sim", GENESIS_MS, &["Hospital A", "Hospital B"], s.validators, &mut |l| {
        Keypair::from_label(l)
    });
    let dirs: Vec<tempfile::TempDir> = (0..s.validators).map(|_| tempfile::tempdir().unwrap()).collect();
    let txs = registrations(&net, s.txs);
    let cfg = deterministic::Config::new().with_seed(seed).with_timeout(Some(Duration::from_secs(900)));
    deterministic::Runner::new(cfg).start(|context| async move {
        let participants = common::participants(&net.validators);
        let oracle = common::network(&context, &participants).await;

        let online: Vec<usize> = (0..s.validators).filter(|i| !s.offline.contains(i)).collect();
        let mut chains: Vec<(usize, Arc<Chain>)> = Vec::new();
        for &i in &online {
            let (chain, _) =
                Chain::open(dirs[i].path(), &net.genesis, net.validators[i].clone(), &mut |_, _| {}).unwrap();
            chains.push((i, Arc::new(chain)));
        }
        // Every node gets every transaction, as a client retrying against several nodes would;
        // whichever leader proposes first includes them, the others drop them on finalization.
        for (_, chain) in &chains {
            for tx in &txs {
                chain.submit(tx.bytes(), GENESIS_MS).unwrap();
            }
        }
        // The byzantine validator also holds transactions nobody else has, so it always has
        // one to forge when it leads; they can only ever appear in its (rejected) proposals.
        if let Some(b) = s.byzantine {
            let chain = &chains.iter().find(|(i, _)| *i == b).unwrap().1;
            for tx in registrations_by(&net, 1, 5) {
                chain.submit(tx.bytes(), GENESIS_MS).unwrap();
            }
        }
        for (i, chain) in &chains {
            let fault = if s.byzantine == Some(*i) { ProposalFault::ForgedSignature } else { ProposalFault::None };
            common::start(&context, &oracle, &participants, *i, &net.validators[*i], chain.clone(), fault).await;
        }
        common::link_all(&oracle, &participants).await;
        while !chains.iter().all(|(_, c)| c.head().height >= s.target_height) {
            context.sleep(Duration::from_millis(100)).await;
        }
        let mut forged_committed = false;
        let mut outcome_chains = Vec::new();
        let mut committed_txs = Vec::new();
        for (i, chain) in &chains {
            let hashes: Vec<Hash> = (1..=s.target_height)
                .map(|h| {
                    let block: Block = chain.block(h).unwrap().expect("finalized block stored");
                    // Every stored transaction is authentic (the forged copy has another id).
                    for tx in &block.txs {
                        let signer = net.organisations.iter().find(|o| o.id() == tx.body().signer).unwrap();
                        if signer.public_key().verify(&tx.signed_message(), tx.signature()).is_err() {
                            forged_committed = true;
                        }
                    }
                    block.hash()
                })
                .collect();
            outcome_chains.push((*i, hashes));
            committed_txs.push(chain.head().log_size);
            assert!(chain.halted().is_none(), "validator {i} halted: {:?}", chain.halted());
        }
        let first = &chains[0].1;
        let certificates = (1..=s.target_height)
            .filter_map(|h| {
                let cert = first.store().finalization(h).unwrap()?;
                Some((h, first.block(h).unwrap().unwrap().hash(), cert))
            })
            .collect();
        let honest_rejections =
            chains.iter().filter(|(i, _)| Some(*i) != s.byzantine).map(|(_, c)| c.metrics.blocks_rejected.get()).sum();
        Outcome {
            certificates,
            chains: outcome_chains,
            committed_txs,
            honest_rejections,
            forged_committed,
            audit: context.auditor().state(),
        }
    })
}

fn seed(default: u64) -> u64 {
    common::seed(default, "simulation")
}

fn assert_same_chain(o: &Outcome) {
    let (first_index, first) = &o.chains[0];
    for (i, hashes) in &o.chains {
        assert_eq!(hashes, first, "validator {i} diverged from validator {first_index}");
    }
}

#[test]
fn four_validators_commit_the_same_blocks() {
    let o = run(seed(1), Scenario { validators: 4, offline: vec![], byzantine: None, target_height: 12, txs: 40 });
    assert_eq!(o.chains.len(), 4);
    assert_same_chain(&o);
    assert!(o.committed_txs.iter().all(|&n| n == 40), "{:?}", o.committed_txs);
}

#[test]
fn finalization_certificates_are_stored_and_verify() {
    use medledger_node::certificate::{CertificateError, CertificateVerifier};
    let o = run(seed(6), Scenario { validators: 4, offline: vec![], byzantine: None, target_height: 8, txs: 4 });
    assert!(!o.certificates.is_empty(), "no certificate stored");
    let net =
        Devnet::new("medledger.sim", GENESIS_MS, &["Hospital A", "Hospital B"], 4, &mut |l| Keypair::from_label(l));
    let verifier = CertificateVerifier::new(&net.genesis).unwrap();
    for (height, hash, cert) in &o.certificates {
        verifier.verify(cert, *hash).unwrap_or_else(|e| panic!("certificate at {height}: {e}"));
    }
    let (_, hash, cert) = &o.certificates[0];
    assert_eq!(verifier.verify(cert, Hash([9; 32])), Err(CertificateError::WrongBlock));
    let mut tampered = cert.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    assert!(verifier.verify(&tampered, *hash).is_err());
    // Another consortium's validators did not sign it.
    let other = Devnet::new("medledger.other", GENESIS_MS, &["X"], 4, &mut |l| Keypair::from_label(&format!("x{l}")));
    assert!(CertificateVerifier::new(&other.genesis).unwrap().verify(cert, *hash).is_err());
}

#[test]
fn three_of_four_keep_committing_with_one_crashed() {
    let o = run(seed(2), Scenario { validators: 4, offline: vec![2], byzantine: None, target_height: 10, txs: 20 });
    assert_eq!(o.chains.len(), 3);
    assert_same_chain(&o);
    assert!(o.committed_txs.iter().all(|&n| n == 20), "{:?}", o.committed_txs);
}

#[test]
fn single_validator_commits() {
    let o = run(seed(3), Scenario { validators: 1, offline: vec![], byzantine: None, target_height: 10, txs: 25 });
    assert_same_chain(&o);
    assert_eq!(o.committed_txs[0], 25);
}

#[test]
fn forged_transactions_never_reach_a_committed_block() {
    let o = run(seed(4), Scenario { validators: 4, offline: vec![], byzantine: Some(0), target_height: 12, txs: 30 });
    assert_same_chain(&o);
    assert!(o.honest_rejections > 0, "the byzantine validator never got to propose");
    assert!(!o.forged_committed, "a forged transaction was committed");
    // The honest validators still committed every authentic transaction.
    assert!(o.committed_txs.iter().all(|&n| n == 30), "{:?}", o.committed_txs);
}

#[test]
fn same_seed_replays_identically() {
    let s = || Scenario { validators: 4, offline: vec![], byzantine: None, target_height: 4, txs: 8 };
    let seed = seed(5);
    let a = run(seed, s());
    let b = run(seed, s());
    assert_eq!(a.chains, b.chains);
    assert_eq!(a.audit, b.audit, "execution is not deterministic");
}

#[test]
fn status_of_submitted_transactions() {
    // Outside consensus: submission rules on a fresh chain.
    let net = Devnet::new("medledger.sim", GENESIS_MS, &["A"], 1, &mut |l| Keypair::from_label(l));
    let dir = tempfile::tempdir().unwrap();
    let (chain, _) = Chain::open(dir.path(), &net.genesis, net.validators[0].clone(), &mut |_, _| {}).unwrap();
    let txs = registrations(&net, 3);
    let id = chain.submit(txs[1].bytes(), 1).unwrap(); // queued behind nonce 0
    assert_eq!(chain.tx_status(&id).unwrap(), TxStatus::Pending);
    assert_eq!(chain.submit(txs[1].bytes(), 1).unwrap(), id, "a retried submission is idempotent");
    assert_eq!(chain.mempool_len(), 1);
    assert!(chain.submit(&[1, 2, 3], 1).is_err(), "garbage accepted");
    let mut forged = txs[0].bytes().to_vec();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    let err = chain.submit(&forged, 1).unwrap_err().to_string();
    assert!(err.contains("signature"), "{err}");
    assert_eq!(chain.tx_status(&medledger_types::TxId([7; 32])).unwrap(), TxStatus::Unknown);
}
