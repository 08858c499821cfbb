//! Readers get immutable snapshots (`Chain::snapshot`): a snapshot taken before a block is
//! applied keeps showing the state, the log and the index as they were, consistently at one
//! height, and holding one never holds up block application (there is no lock to hold).

use medledger_crypto::Keypair;
use medledger_ledger::Payload;
use medledger_node::{
    chain::Chain,
    devnet::{Devnet, commit_pending},
};
use medledger_types::Role;

const T0: u64 = 1_900_000_000_000;

#[test]
fn a_snapshot_never_changes_and_never_blocks_the_writer() {
    let net = Devnet::new("medledger.snapshot", T0, &["Hospital A"], 1, &mut |l| Keypair::from_label(l));
    let dir = tempfile::tempdir().unwrap();
    let (chain, _) = Chain::open(dir.path(), &net.genesis, net.validators[0].clone(), &mut |_, _| {}).unwrap();
    let org = &net.organisations[0];
    let first = Keypair::from_label("dr-first");
    chain.submit_as(org, Payload::register(Role::Practitioner, &first, Some(org.id()), "Dr F"), T0).unwrap();
    commit_pending(&chain, net.validators[0].id(), T0 + 500).unwrap();
    let doc = Keypair::from_label("dr-snapshot");
    let before = chain.snapshot();
    let index_before = chain.patient_index();
    let (height, log_size, root) = (before.height(), before.log().size(), before.log().root());
    // Held on this very thread while blocks are applied: with a lock guard this would
    // deadlock (or trip the lock-order check); a snapshot is just memory.
    chain.submit_as(org, Payload::register(Role::Practitioner, &doc, Some(org.id()), "Dr S"), T0).unwrap();
    assert!(commit_pending(&chain, net.validators[0].id(), T0 + 1_000).unwrap() >= 1);
    let after = chain.snapshot();
    assert!(after.height() > height, "the chain moved on");
    assert!(after.identity(&doc.id()).is_some(), "the new snapshot has the registration");
    // The old one is exactly as it was: state, log and index.
    assert_eq!((before.height(), before.log().size(), before.log().root()), (height, log_size, root));
    assert!(before.identity(&doc.id()).is_none(), "the old snapshot does not see the registration");
    assert_eq!(index_before.height(), height, "its index is at its own height");
    assert_eq!(before.index().height(), before.height());
    assert_eq!(after.index().height(), after.height());
    // A proof made from the old snapshot still verifies against the old root.
    assert!(log_size > 0 && after.log().size() > log_size);
    let path = before.log().inclusion_proof(log_size - 1, log_size).unwrap();
    let leaf = before.log().leaf(log_size - 1).unwrap();
    assert!(medledger_merkle::verify_inclusion(log_size - 1, log_size, &leaf, &path, &root).is_ok());
}
