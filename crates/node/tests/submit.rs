//! Local signing (`Chain::submit_as`) under concurrent block commits: every submission must get
//! a fresh nonce even while blocks move pending nonces from the mempool into the state.
//! (A regression test: reading the state's nonce and the mempool under separate locks once
//! handed out a nonce a just-committed block had used.)

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use medledger_crypto::Keypair;
use medledger_ledger::{Block, Payload};
use medledger_node::{
    chain::{Chain, SubmitError},
    devnet::Devnet,
    mempool::MempoolError,
};
use medledger_types::Role;

#[test]
fn submit_as_never_reuses_a_nonce_while_blocks_commit() {
    const THREADS: usize = 4;
    const EACH: usize = 2_000;
    let t0 = 1_900_000_000_000u64;
    let net = Devnet::new("medledger.submit", t0, &["Hospital A"], 1, &mut |l| Keypair::from_label(l));
    let dir = tempfile::tempdir().unwrap();
    let (chain, _) = Chain::open(dir.path(), &net.genesis, net.validators[0].clone(), &mut |_, _| {}).unwrap();
    let chain = Arc::new(chain);
    let org = net.organisations[0].clone();
    let done = Arc::new(AtomicBool::new(false));
    let committer = {
        let (chain, done, proposer) = (chain.clone(), done.clone(), net.validators[0].id());
        std::thread::spawn(move || {
            let mut t = t0;
            // One block at a time, as fast as possible, racing the submitters.
            while !done.load(Ordering::SeqCst) || chain.mempool_len() > 0 {
                t += 1;
                let parent = match chain.head().height {
                    0 => Block { header: chain.genesis().anchor_header(), txs: vec![] },
                    h => chain.block(h).unwrap().unwrap(),
                };
                let block = chain.propose(&[parent], t, proposer, false).unwrap();
                chain.apply_finalized(&[block], &[]).unwrap();
            }
        })
    };
    let submitters: Vec<_> = (0..THREADS)
        .map(|i| {
            let (chain, org) = (chain.clone(), org.clone());
            std::thread::spawn(move || {
                for j in 0..EACH {
                    let doc = Keypair::from_label(&format!("doc-{i}-{j}"));
                    let payload = Payload::register(Role::Practitioner, &doc, Some(org.id()), "Dr Concurrent");
                    // The signer's mempool budget is back-pressure: wait for blocks, then retry.
                    loop {
                        match chain.submit_as(&org, payload.clone(), t0) {
                            Ok(_) => break,
                            Err(SubmitError::Mempool(MempoolError::SignerOverQuota { .. })) => {
                                std::thread::sleep(std::time::Duration::from_millis(1))
                            }
                            Err(e) => panic!("submission {i}/{j} refused: {e}"),
                        }
                    }
                }
            })
        })
        .collect();
    for s in submitters {
        s.join().unwrap();
    }
    done.store(true, Ordering::SeqCst);
    committer.join().unwrap();
    assert_eq!(chain.snapshot().next_nonce(&org.id()), (THREADS * EACH) as u64);
}
