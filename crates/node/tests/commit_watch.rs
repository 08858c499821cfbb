//! Commit notifications (`Chain::watch`): a watcher is told when its transaction commits (with
//! the same position `tx_status` reports), at once when it has already committed, and when it
//! is rejected or expires from the mempool; waiters that give up leave nothing behind for long.

use futures::executor::block_on;
use medledger_crypto::Keypair;
use medledger_ledger::Payload;
use medledger_node::{
    chain::{Chain, TxStatus},
    commit_watch::{CommitWatchers, SWEEP_AT},
    devnet::{Devnet, commit_pending},
    mempool::MempoolLimits,
};
use medledger_types::{Role, TxId};

const T0: u64 = 1_900_000_000_000;

fn chain() -> (Devnet, Chain, tempfile::TempDir) {
    let net = Devnet::new("medledger.watch", T0, &["Hospital A"], 1, &mut |l| Keypair::from_label(l));
    let dir = tempfile::tempdir().unwrap();
    let (chain, _) = Chain::open(dir.path(), &net.genesis, net.validators[0].clone(), &mut |_, _| {}).unwrap();
    (net, chain, dir)
}

#[test]
fn a_watcher_is_told_when_its_transaction_commits() {
    let (net, chain, _dir) = chain();
    let org = &net.organisations[0];
    let doc = Keypair::from_label("dr-watch");
    let tx = chain.submit_as(org, Payload::register(Role::Practitioner, &doc, Some(org.id()), "Dr W"), T0).unwrap();
    let mut receiver = chain.watch(&tx).unwrap();
    assert_eq!(receiver.try_recv().unwrap(), None, "not told before it commits");
    commit_pending(&chain, net.validators[0].id(), T0 + 1_000).unwrap();
    let told = block_on(receiver).expect("told");
    assert!(matches!(told, TxStatus::Committed { .. }), "{told:?}");
    assert_eq!(told, chain.tx_status(&tx).unwrap(), "the same position as the store");
    // Already committed: told at once.
    assert_eq!(block_on(chain.watch(&tx).unwrap()).unwrap(), told);
}

#[test]
fn a_watcher_is_told_when_its_transaction_is_rejected() {
    let (net, chain, _dir) = chain();
    let org = &net.organisations[0];
    let doc = Keypair::from_label("dr-twice");
    // Two registrations of the same practitioner: the second can never commit.
    let first = chain.submit_as(org, Payload::register(Role::Practitioner, &doc, Some(org.id()), "Dr A"), T0).unwrap();
    let second = chain.submit_as(org, Payload::register(Role::Practitioner, &doc, Some(org.id()), "Dr A"), T0).unwrap();
    let (first_rx, second_rx) = (chain.watch(&first).unwrap(), chain.watch(&second).unwrap());
    commit_pending(&chain, net.validators[0].id(), T0 + 1_000).unwrap();
    assert!(matches!(block_on(first_rx).unwrap(), TxStatus::Committed { .. }));
    assert!(matches!(block_on(second_rx).unwrap(), TxStatus::Rejected { .. }));
}

#[test]
fn waiters_that_give_up_are_swept() {
    let watchers = CommitWatchers::default();
    for i in 0..(SWEEP_AT * 3) {
        let mut id = [0u8; 32];
        id[..8].copy_from_slice(&(i as u64).to_be_bytes());
        drop(watchers.register(TxId(id)));
    }
    assert!(watchers.len() <= SWEEP_AT + 1, "{} receivers kept", watchers.len());
}

/// A transaction parked behind a nonce gap that never fills: it can never commit.
fn parked(net: &Devnet, chain: &Chain) -> TxId {
    let org = &net.organisations[0];
    let doc = Keypair::from_label("dr-parked");
    let nonce = chain.snapshot().next_nonce(&org.id()) + 1;
    let payload = Payload::register(Role::Practitioner, &doc, Some(org.id()), "Dr P");
    let tx = medledger_ledger::tx::sign(org, chain.snapshot().chain_id(), org.id(), nonce, payload);
    chain.submit(tx.bytes(), T0).unwrap()
}

fn short_lived(chain: &Chain) {
    chain.set_mempool_limits(MempoolLimits { tx_ttl_ms: 1_000, ..MempoolLimits::default() }).unwrap();
}

#[test]
fn a_watcher_is_told_when_its_transaction_expires_at_the_next_submission() {
    let (net, chain, _dir) = chain();
    short_lived(&chain);
    let stuck = parked(&net, &chain);
    let mut receiver = chain.watch(&stuck).unwrap();
    // Someone else's submission after the time to live drops it.
    let other = Keypair::from_label("dr-other");
    let org = &net.organisations[0];
    chain.submit_as(org, Payload::register(Role::Practitioner, &other, Some(org.id()), "Dr O"), T0 + 2_000).unwrap();
    match receiver.try_recv().unwrap().expect("told at once") {
        TxStatus::Rejected { reason } => assert!(reason.starts_with("expired"), "{reason}"),
        other => panic!("expected an expiry, got {other:?}"),
    }
    assert!(matches!(chain.tx_status(&stuck).unwrap(), TxStatus::Rejected { .. }), "status says rejected, not unknown");
}

#[test]
fn a_watcher_is_told_when_its_transaction_expires_as_blocks_pass() {
    let (net, chain, _dir) = chain();
    short_lived(&chain);
    let stuck = parked(&net, &chain);
    let mut receiver = chain.watch(&stuck).unwrap();
    // No other submission: a block whose time is past the time to live ends it.
    let org = &net.organisations[0];
    let doc = Keypair::from_label("dr-block");
    chain.submit_as(org, Payload::register(Role::Practitioner, &doc, Some(org.id()), "Dr B"), T0 + 500).unwrap();
    commit_pending(&chain, net.validators[0].id(), T0 + 5_000).unwrap();
    assert!(matches!(receiver.try_recv().unwrap().expect("told at once"), TxStatus::Rejected { .. }));
    assert_eq!(chain.mempool_len(), 0);
}
