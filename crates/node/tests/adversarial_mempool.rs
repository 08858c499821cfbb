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
    mempool::MempoolError,
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
    let mallory = Keypair::from_label("mallory");
    chain.submit_as(&net.organisations[0], Payload::register(Role::Patient, &mallory, None, ""), T0).unwrap();
    commit_pending(&chain, net.validators[0].id(), T0 + 1000).unwrap();
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
    assert_eq!(admitted, limits::MEMPOOL_TXS_PER_SIGNER_MAX, "one identity parked {admitted} transactions");
    assert!(matches!(refused, Some(SubmitError::Mempool(MempoolError::SignerOverQuota { .. }))), "{refused:?}");
    // Someone else is not affected by mallory's budget.
    let other = Keypair::from_label("other");
    chain.submit_as(&net.organisations[1], Payload::register(Role::Patient, &other, None, ""), T0 + 2000).unwrap();
    let parent = chain.block(chain.head().height).unwrap().unwrap();
    let block = chain.propose(&[parent], T0 + 3000, net.validators[0].id(), false).unwrap();
    chain.apply_finalized(&[block], &[]).unwrap();
    assert_eq!(chain.mempool_len(), limits::MEMPOOL_TXS_PER_SIGNER_MAX, "mallory's wait");
    // The gap never fills: after the time-to-live every parked transaction is gone.
    chain.submit(&parked(&net, &other, 5), T0 + 2000 + limits::MEMPOOL_TX_TTL_MS).unwrap();
    assert_eq!(chain.mempool_len(), 1, "only the newest is left");
}

#[test]
fn parked_transactions_cannot_keep_writes_out_of_blocks() {
    let (net, chain, _dir) = chain();
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
