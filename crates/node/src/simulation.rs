//! Harness of the deterministic-runtime tests (feature `simulation`): a simulated network of the genesis
//! validators, validators started on it, and every pair linked.

use std::{sync::Arc, time::Duration};

use crate::{
    app::ProposalFault,
    chain::Chain,
    validator::{
        CHANNEL_BACKFILL, CHANNEL_BLOCKS, CHANNEL_CERTIFICATES, CHANNEL_RESOLVER, CHANNEL_VOTES, QUOTA, Timing,
        ValidatorConfig, consensus_key, consensus_public_key, max_message_size, start_validator,
    },
};
use commonware_cryptography::{Signer as _, ed25519::PublicKey};
use commonware_p2p::simulated::{self, Link, Network, Oracle};
use commonware_runtime::{Supervisor as _, deterministic};
use commonware_utils::{NZUsize, probability};
use medledger_crypto::Keypair;

pub type SimOracle = Oracle<PublicKey, deterministic::Context>;

/// The consensus keys of `validators`, in genesis order.
pub fn participants(validators: &[Keypair]) -> Vec<PublicKey> {
    validators.iter().map(|k| consensus_public_key(&k.public_key()).unwrap()).collect()
}

/// A started simulated network tracking `participants`.
pub async fn network(context: &deterministic::Context, participants: &[PublicKey]) -> SimOracle {
    let n = participants.len();
    let (network, oracle) = Network::new_with_peers(
        context.child("network"),
        simulated::Config {
            max_size: max_message_size(n),
            max_peers_per_set: NZUsize!(n),
            disconnect_on_block: true,
            tracked_peer_sets: NZUsize!(1),
        },
        participants.to_vec(),
    )
    .await;
    network.start();
    oracle
}

/// Registers validator `index`'s channels and starts it on `chain`.
pub async fn start(
    context: &deterministic::Context,
    oracle: &SimOracle,
    participants: &[PublicKey],
    index: usize,
    validator_keys: &Keypair,
    chain: Arc<Chain>,
    fault: ProposalFault,
) {
    let key = consensus_key(&validator_keys.signing_seed());
    let control = oracle.control(key.public_key());
    let votes = control.register(CHANNEL_VOTES, QUOTA).await.unwrap();
    let certificates = control.register(CHANNEL_CERTIFICATES, QUOTA).await.unwrap();
    let resolver = control.register(CHANNEL_RESOLVER, QUOTA).await.unwrap();
    let blocks = control.register(CHANNEL_BLOCKS, QUOTA).await.unwrap();
    let backfill = control.register(CHANNEL_BACKFILL, QUOTA).await.unwrap();
    start_validator(
        context.child("validator").with_attribute("index", index),
        ValidatorConfig {
            signer: key,
            participants: participants.to_vec(),
            partition_prefix: format!("validator-{index}"),
            chain,
            timing: Timing::default(),
            fault,
        },
        control.clone(),
        oracle.manager(),
        votes,
        certificates,
        resolver,
        blocks,
        backfill,
    )
    .await;
}

/// Links every pair of participants (20 ms ± 10 ms, no loss).
pub async fn link_all(oracle: &SimOracle, participants: &[PublicKey]) {
    let link =
        Link { latency: Duration::from_millis(20), jitter: Duration::from_millis(10), success_rate: probability!(1.0) };
    for a in participants {
        for b in participants {
            if a != b {
                oracle.add_link(a.clone(), b.clone(), link.clone()).await.unwrap();
            }
        }
    }
}

/// The seed from `MEDLEDGER_SEED`, or `default`; printed so a failure can be replayed.
pub fn seed(default: u64, test_file: &str) -> u64 {
    let seed = std::env::var("MEDLEDGER_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(default);
    println!("seed = {seed} (replay: MEDLEDGER_SEED={seed} cargo test --test {test_file})");
    seed
}
