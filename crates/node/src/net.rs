//! Running a validator for real: the commonware tokio runtime, authenticated p2p with the
//! fixed validator set (`lookup`: known keys and addresses, no gossip discovery), consensus
//! storage under the data directory, and whatever service the caller runs beside it (the
//! HTTP API).

use std::{future::Future, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use commonware_cryptography::{ChaCha20Poly1305, Signer as _, ed25519::PublicKey};
use commonware_p2p::{Address, AddressableManager as _, authenticated::lookup};
use commonware_runtime::{Runner as _, Supervisor as _, tokio};
use commonware_stream::{
    cups::{self, Cups},
    sake::{self, Sake},
};
use commonware_utils::{NZUsize, ordered::Map};

use medledger_blobs::BlobStore;
use medledger_types::IdentityId;

use crate::{
    NodeError,
    app::ProposalFault,
    chain::Chain,
    replication::{CHANNEL_BLOBS, CiphertextFetcher, start_replicator},
    validator::{
        CHANNEL_BACKFILL, CHANNEL_BLOCKS, CHANNEL_CERTIFICATES, CHANNEL_RESOLVER, CHANNEL_VOTES, QUOTA, Timing,
        ValidatorConfig, consensus_key, consensus_public_key, max_message_size, start_validator,
    },
};

/// Sub-directory of the data directory holding consensus' own journals and archives.
pub const CONSENSUS_DIR: &str = "consensus";

/// Everything needed to run one validator process.
pub struct NodeConfig {
    pub data_dir: PathBuf,
    /// Address this validator listens on for its peers.
    pub p2p_listen: SocketAddr,
    /// Every validator of the genesis (this one included) with its p2p address.
    pub peers: Vec<(medledger_crypto::PublicKey, SocketAddr)>,
    pub timing: Timing,
    /// Worker threads of the runtime.
    pub worker_threads: usize,
    /// For a node serving records: its blob store and organisation, to replicate ciphertexts
    /// with peers (`crate::replication`).
    pub replication: Option<(Arc<dyn BlobStore>, IdentityId)>,
}

fn p2p_namespace(chain: &Chain) -> Vec<u8> {
    let mut ns = b"medledger/p2p/v1/".to_vec();
    ns.extend_from_slice(&chain.snapshot().chain_id().0);
    ns
}

/// Runs the validator of `chain` until `service` completes. The service gets the chain and,
/// when `cfg.replication` is set, the handle fetching missing ciphertexts from peers.
pub fn run_node<F, Fut>(cfg: NodeConfig, chain: Arc<Chain>, signing_seed: [u8; 32], service: F) -> Result<(), NodeError>
where
    F: FnOnce(Arc<Chain>, Option<CiphertextFetcher>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let validators: Vec<medledger_crypto::PublicKey> =
        chain.genesis().validators.iter().map(|v| v.signing_key).collect();
    if !chain.genesis().validators.iter().any(|v| v.id() == chain.node_id()) {
        return Err(NodeError::Config("this node's key is not a validator of the genesis".into()));
    }
    let mut peers: Vec<(PublicKey, SocketAddr)> = Vec::new();
    for (key, addr) in &cfg.peers {
        if !validators.contains(key) {
            return Err(NodeError::Config(format!("peer {key} is not a validator of the genesis")));
        }
        let pk = consensus_public_key(key).ok_or_else(|| NodeError::Config(format!("peer key {key} is invalid")))?;
        peers.push((pk, *addr));
    }
    if peers.len() != validators.len() {
        return Err(NodeError::Config(format!(
            "the peer list names {} validators, the genesis has {}",
            peers.len(),
            validators.len()
        )));
    }
    let participants: Vec<PublicKey> = peers.iter().map(|(k, _)| k.clone()).collect();
    let n = participants.len();
    let storage = cfg.data_dir.join(CONSENSUS_DIR);
    std::fs::create_dir_all(&storage).map_err(|e| NodeError::Config(format!("{}: {e}", storage.display())))?;
    let runtime = tokio::Config::new().with_storage_directory(storage).with_worker_threads(cfg.worker_threads.max(1));
    let listen = cfg.p2p_listen;
    let timing = cfg.timing.clone();
    let replication = cfg.replication;
    tokio::Runner::new(runtime).start(|context| async move {
        let signer = consensus_key(&signing_seed);
        let handshake = Cups::<_, ChaCha20Poly1305>::new(
            Sake {
                signer: signer.clone(),
                synchrony_bound: Duration::from_secs(5),
                max_handshake_age: Duration::from_secs(10),
                version: sake::Version::V1,
            },
            cups::Version::V1,
        );
        // `local` allows loopback and private addresses (a consortium's own network) and dials
        // quickly; the validator set is closed, so only genesis keys can connect.
        let p2p = lookup::Config::local(
            handshake,
            &p2p_namespace(&chain),
            listen,
            NZUsize!(n.max(1)),
            max_message_size(n),
            NZUsize!(1024),
        );
        let (mut network, mut oracle) = lookup::Network::new(context.child("network"), p2p);
        let _ = oracle
            .track(0, Map::<PublicKey, Address>::from_iter_dedup(peers.iter().map(|(k, a)| (k.clone(), (*a).into()))));
        let votes = network.register(CHANNEL_VOTES, QUOTA);
        let certificates = network.register(CHANNEL_CERTIFICATES, QUOTA);
        let resolver = network.register(CHANNEL_RESOLVER, QUOTA);
        let blocks = network.register(CHANNEL_BLOCKS, QUOTA);
        let backfill = network.register(CHANNEL_BACKFILL, QUOTA);
        let fetcher = replication.map(|(blobs, organisation)| {
            let channel = network.register(CHANNEL_BLOBS, QUOTA);
            start_replicator(
                context.child("replication"),
                chain.clone(),
                blobs,
                (signer.public_key(), organisation),
                channel,
            )
        });
        network.start();
        tracing::info!(public_key = %signer.public_key(), %listen, validators = n, "validator starting");
        let _handle = start_validator(
            context.child("validator"),
            ValidatorConfig {
                signer,
                participants,
                partition_prefix: "node".into(),
                chain: chain.clone(),
                timing,
                fault: ProposalFault::None,
            },
            oracle.clone(),
            oracle,
            votes,
            certificates,
            resolver,
            blocks,
            backfill,
        )
        .await;
        service(chain, fetcher).await;
    });
    Ok(())
}
