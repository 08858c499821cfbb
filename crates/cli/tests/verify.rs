//! `medledger verify` on a data directory: intact chains pass with counts; corrupted bytes on
//! disk are found and reported with the first bad height.

use std::{path::Path, process::Command};

use medledger_crypto::Keypair;
use medledger_ledger::{Block, Payload, Transaction, tx::sign};
use medledger_node::{chain::Chain, devnet::Devnet};
use medledger_types::Role;

const BIN: &str = env!("CARGO_BIN_EXE_medledger");

/// Builds a chain of `blocks` blocks with three registrations each, without consensus.
fn build_chain(dir: &Path, blocks: u64) -> Vec<Transaction> {
    let net = Devnet::new("medledger.verify", 1_000, &["Org"], 1, &mut |l| Keypair::from_label(l));
    let (chain, _) = Chain::open(dir, &net.genesis, net.validators[0].clone(), &mut |_, _| {}).unwrap();
    let org = &net.organisations[0];
    let mut all = Vec::new();
    let mut nonce = 0;
    for h in 1..=blocks {
        for i in 0..3 {
            let doc = Keypair::from_label(&format!("doc-{h}-{i}"));
            let tx = sign(
                org,
                net.genesis.chain_id(),
                org.id(),
                nonce,
                Payload::register(Role::Practitioner, &doc, Some(org.id()), format!("Dr {h}.{i}")),
            );
            nonce += 1;
            chain.submit(tx.bytes(), 2_000 + h * 1000).unwrap();
            all.push(tx);
        }
        let parent = match h {
            1 => Block { header: net.genesis.anchor_header(), txs: vec![] },
            _ => chain.block(h - 1).unwrap().unwrap(),
        };
        let block = chain.propose(&[parent], 2_000 + h * 1000, net.validators[0].id(), false).unwrap();
        assert_eq!(block.txs.len(), 3);
        chain.apply_finalized(&[block], &[]).unwrap();
    }
    all
}

fn verify(dir: &Path) -> (i32, String) {
    let out = Command::new(BIN).args(["verify", "--data-dir"]).arg(dir).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

/// Flips one byte at every place `needle` occurs in `file` (copy-on-write storage may hold
/// older copies of a page too). Returns how many places were changed.
fn corrupt(file: &Path, needle: &[u8], offset: usize) -> usize {
    let mut bytes = std::fs::read(file).unwrap();
    let mut hits = 0;
    let mut i = 0;
    while i + needle.len() <= bytes.len() {
        if &bytes[i..i + needle.len()] == needle {
            bytes[i + offset] ^= 0x01;
            hits += 1;
            i += needle.len();
        } else {
            i += 1;
        }
    }
    std::fs::write(file, bytes).unwrap();
    hits
}

#[test]
fn intact_chain_verifies_with_counts() {
    let dir = tempfile::tempdir().unwrap();
    build_chain(dir.path(), 5);
    let (code, text) = verify(dir.path());
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("OK: 5 blocks, 15 transactions, log size 15"), "{text}");
}

#[test]
fn flipped_signature_byte_is_found_at_its_height() {
    let dir = tempfile::tempdir().unwrap();
    let txs = build_chain(dir.path(), 5);
    // A byte inside the signature of the second transaction of block 3.
    let target = &txs[3 * 3 - 2];
    let sig = &target.bytes()[target.bytes().len() - 64..];
    let hits = corrupt(&dir.path().join(medledger_storage::DB_FILE), sig, 17);
    assert!(hits >= 1, "signature bytes not found in the store");
    let (code, text) = verify(dir.path());
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("FAILED at height 3"), "{text}");
    // The id shown is that of the damaged bytes as stored.
    assert!(text.contains("transaction 1 ("), "{text}");
    assert!(text.contains("signature does not verify"), "{text}");
}

#[test]
fn flipped_name_byte_is_found_at_its_height() {
    let dir = tempfile::tempdir().unwrap();
    build_chain(dir.path(), 4);
    // "Dr 2.0" is only in block 2, in its first transaction: the signature no longer covers it.
    let hits = corrupt(&dir.path().join(medledger_storage::DB_FILE), b"Dr 2.0", 3);
    assert!(hits >= 1);
    let (code, text) = verify(dir.path());
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("FAILED at height 2"), "{text}");
    assert!(text.contains("transaction 0"), "{text}");
}

#[test]
fn missing_directory_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let (code, text) = verify(&dir.path().join("nothing-here"));
    assert_ne!(code, 0);
    assert!(text.contains("holds no chain"), "{text}");
}
