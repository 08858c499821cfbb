//! Attack: the mempool as a free parking lot (issue 9, item 5). Transactions parked behind a
//! nonce gap were admitted on a signature check alone and never left; one identity could park
//! thousands, and enough parked transactions ahead of everyone else's kept every write out of
//! blocks. Now each signer has its own budget, parked transactions are never offered to block
//! building, and every transaction expires.

use std::sync::Arc;

use medledger_crypto::Keypair;
use medledger_ledger::{Payload, Purpose, Scope, actions, tx::sign};
use medledger_node::{
    chain::{Chain, SubmitError, TxStatus},
    devnet::{Devnet, commit_pending},
    mempool::{MempoolError, MempoolLimits},
};
use medledger_types::{Role, TxId, limits};

const T0: u64 = 1_900_000_000_000;

fn chain() -> (Devnet, Arc<Chain>, tempfile::TempDir) {
    let net = Devnet::new("medledger.mempool", T0, &["Hospital A", "Clinic B"], 1, &mut |l| Keypair::from_label(l));
    let dir = tempfile::tempdir().unwrap();
    let (chain, _) = Chain::open(dir.path(), &net.genesis, net.validators[0].clone(), &mut |_, _| {}).unwrap();
    (net, Arc::new(chain), dir)
}

/// A parked transaction of `keys` (its nonce is ahead of the next one): small and valid-looking.
fn parked(net: &Devnet, keys: &Keypair, nonce: u64) -> Vec<u8> {
    let revoke = Payload::ConsentRevoke { grant_id: TxId([nonce as u8; 32]) };
    sign(keys, net.genesis.chain_id(), keys.id(), nonce, revoke).bytes().to_vec()
}

#[test]
fn one_identity_cannot_park_transactions_without_limit_and_parked_ones_expire() {
    let (net, chain, _dir) = chain();
    let (mallory, eve) = (Keypair::from_label("mallory"), Keypair::from_label("eve"));
    for who in [&mallory, &eve] {
        chain.submit_as(&net.organisations[0], Payload::register(Role::Patient, who, None, ""), T0).unwrap();
    }
    commit_pending(&chain, net.validators[0].id(), T0 + 1000).unwrap();
    // Behind a gap (nonce 0 never sent): admitted on a signature check alone, so few.
    let mut admitted = 0;
    let mut refused = None;
    for nonce in 1..=1000u64 {
        match chain.submit(&parked(&net, &mallory, nonce), T0 + 2000) {
            Ok(_) => admitted += 1,
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    assert_eq!(admitted, limits::MEMPOOL_PARKED_PER_SIGNER_MAX, "one identity parked {admitted} transactions");
    assert!(matches!(refused, Some(SubmitError::Mempool(MempoolError::TooManyParked { .. }))), "{refused:?}");
    // Executable ones (a run of valid grants from the next nonce) are bounded per signer too.
    let grant = |nonce: u64| {
        let payload = Payload::ConsentGrant {
            patient: eve.id(),
            grantee: net.organisations[1].id(),
            scope: Scope::All,
            actions: actions::READ,
            purpose: Purpose::Treatment,
            valid_from_ms: T0,
            valid_until_ms: T0 + 86_400_000,
        };
        sign(&eve, net.genesis.chain_id(), eve.id(), nonce, payload)
    };
    let mut refused = None;
    for nonce in 0..1000u64 {
        if let Err(e) = chain.submit(grant(nonce).bytes(), T0 + 2000) {
            refused = Some((nonce, e));
            break;
        }
    }
    let (stopped_at, error) = refused.expect("a bound");
    assert!(matches!(error, SubmitError::Mempool(MempoolError::SignerOverQuota { .. })), "{error:?}");
    assert!(stopped_at as usize <= limits::MEMPOOL_TXS_PER_SIGNER_MAX);
    // Someone else is not affected by mallory's budget.
    let other = Keypair::from_label("other");
    chain.submit_as(&net.organisations[1], Payload::register(Role::Patient, &other, None, ""), T0 + 2000).unwrap();
    // Nothing waits forever: after the time-to-live every one of them is gone.
    chain.submit(&parked(&net, &mallory, 2000), T0 + 2000 + limits::MEMPOOL_TX_TTL_MS).unwrap();
    assert_eq!(chain.mempool_len(), 1, "only the newest is left");
}

#[test]
fn parked_transactions_cannot_keep_writes_out_of_blocks() {
    let (net, chain, _dir) = chain();
    // Parked transactions are budgeted tightly per signer; this test lifts that budget to show
    // that even unbounded parking cannot keep executable transactions out of blocks.
    let lifted = MempoolLimits {
        parked_per_signer_max: limits::MEMPOOL_TXS_PER_SIGNER_MAX,
        parked_bytes_max: limits::MEMPOOL_BYTES_MAX,
        ..MempoolLimits::default()
    };
    chain.set_mempool_limits(lifted).unwrap();
    let org = net.organisations[0].clone();
    // Enough identities that their parked transactions outnumber what block building looks at.
    let attackers: Vec<Keypair> = (0..(2 * limits::BLOCK_TXS_MAX / limits::MEMPOOL_TXS_PER_SIGNER_MAX + 4))
        .map(|i| Keypair::from_label(&format!("parker-{i}")))
        .collect();
    let patient = Keypair::from_label("patient");
    let mut t = T0;
    for who in attackers.iter().chain([&patient]) {
        chain.submit_as(&org, Payload::register(Role::Patient, who, None, ""), t).unwrap();
    }
    t += 1000;
    commit_pending(&chain, net.validators[0].id(), t).unwrap();
    let mut parked_total = 0;
    for who in &attackers {
        for nonce in 1..=limits::MEMPOOL_TXS_PER_SIGNER_MAX as u64 {
            chain.submit(&parked(&net, who, nonce), t).unwrap();
            parked_total += 1;
        }
    }
    assert!(parked_total > 2 * limits::BLOCK_TXS_MAX);
    // An honest patient's consent, submitted after all of them, goes into the very next block.
    let grant = Payload::ConsentGrant {
        patient: patient.id(),
        grantee: net.organisations[1].id(),
        scope: Scope::Categories(vec!["labs".into()]),
        actions: actions::READ,
        purpose: Purpose::Treatment,
        valid_from_ms: t,
        valid_until_ms: t + 86_400_000,
    };
    let honest = chain.submit_as(&patient, grant, t).unwrap();
    let parent = chain.block(chain.head().height).unwrap().unwrap();
    let block = chain.propose(&[parent], t + 1000, net.validators[0].id(), false).unwrap();
    chain.apply_finalized(&[block], &[]).unwrap();
    assert!(
        matches!(chain.tx_status(&honest).unwrap(), TxStatus::Committed { .. }),
        "the honest grant waits behind parked transactions"
    );
}
