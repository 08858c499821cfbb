use medledger_crypto::Keypair;
use medledger_ledger::{Genesis, GenesisIdentity, Payload, tx::sign};
use medledger_types::Role;

use super::*;

fn genesis() -> (Genesis, Keypair, Keypair) {
    let org = Keypair::from_label("org");
    let validator = Keypair::from_label("validator");
    let ident = |name: &str, k: &Keypair, o| GenesisIdentity {
        name: name.into(),
        signing_key: k.public_key(),
        encryption_key: k.encryption_public_key(),
        organisation: o,
        kind: o.is_none().then_some(medledger_types::OrganisationKind::CareProvider),
    };
    let g = Genesis {
        chain_name: "medledger.test".into(),
        genesis_time_ms: 1_000,
        organisations: vec![ident("Org", &org, None)],
        validators: vec![ident("v0", &validator, Some(org.id()))],
    };
    (g, org, validator)
}

/// Builds `n` blocks of practitioner registrations, applying them to `state`.
fn chain(n: u64) -> (Genesis, Vec<Block>) {
    let (g, org, validator) = genesis();
    let mut state = State::from_genesis(&g);
    let mut blocks = Vec::new();
    let mut nonce = 0;
    for h in 1..=n {
        let txs: Vec<_> = (0..3)
            .map(|i| {
                let doc = Keypair::from_label(&format!("doc-{h}-{i}"));
                let tx = sign(
                    &org,
                    state.chain_id(),
                    org.id(),
                    nonce,
                    Payload::register(Role::Practitioner, &doc, Some(org.id()), format!("Dr {h}.{i}")),
                );
                nonce += 1;
                tx
            })
            .collect();
        let (block, skipped) = state.build_block(txs, 1_000 + h * 1000, validator.id());
        assert!(skipped.is_empty());
        state.apply_block(&block, None, &|_| false).unwrap();
        blocks.push(block);
    }
    (g, blocks)
}

#[test]
fn append_read_replay_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (g, blocks) = chain(5);
    {
        let store = Store::open(dir.path()).unwrap();
        store.init_genesis(&g).unwrap();
        let refs: Vec<_> = blocks.iter().map(|b| (b, None)).collect();
        store.append_blocks(&refs[..2]).unwrap();
        store.append_blocks(&refs[2..]).unwrap();
    }
    let store = Store::open_existing(dir.path()).unwrap();
    assert_eq!(store.last_height().unwrap(), 5);
    assert_eq!(store.tx_count().unwrap(), 15);
    let tx = &blocks[3].txs[2];
    assert_eq!(store.tx_location(&tx.id()).unwrap(), Some((4, 2)));
    let (state, report) = replay(&store, &mut |_, _| {}).unwrap();
    assert_eq!(report, ReplayReport { blocks: 5, transactions: 15 });
    assert_eq!(state.head_hash(), blocks[4].hash());
    assert_eq!(state.log().root(), blocks[4].header.log_root);
}

#[test]
fn refuses_gaps_other_genesis_and_missing_dirs() {
    let dir = tempfile::tempdir().unwrap();
    let (g, blocks) = chain(3);
    let store = Store::open(dir.path()).unwrap();
    store.init_genesis(&g).unwrap();
    assert!(matches!(store.append_blocks(&[(&blocks[1], None)]), Err(StorageError::NotNext { head: 0, got: 2 })));
    // A batch failing part-way writes nothing.
    assert!(store.append_blocks(&[(&blocks[0], None), (&blocks[2], None)]).is_err());
    assert_eq!(store.last_height().unwrap(), 0);
    let mut other = g.clone();
    other.chain_name = "other.test".into();
    assert!(matches!(store.init_genesis(&other), Err(StorageError::GenesisMismatch)));
    let missing = dir.path().join("nope");
    assert!(matches!(Store::open_existing(&missing), Err(StorageError::NotInitialised(_))));
}

#[test]
fn replay_detects_a_tampered_block() {
    let dir = tempfile::tempdir().unwrap();
    let (g, mut blocks) = chain(4);
    // Tamper with block 3's timestamp after the fact: block 4's parent link breaks.
    blocks[2].header.timestamp_ms += 1;
    let store = Store::open(dir.path()).unwrap();
    store.init_genesis(&g).unwrap();
    for b in &blocks {
        store.append_blocks(&[(b, None)]).unwrap();
    }
    let err = replay(&store, &mut |_, _| {}).unwrap_err();
    assert_eq!(err.height(), Some(4), "{err}");
    assert!(matches!(err, ChainError::Invalid { error: BlockError::WrongParent, .. }));
}
