//! Wiring of one validator: Simplex consensus, marshal (block dissemination, backfill and
//! ordered finalized delivery) and the ledger application, over any commonware p2p
//! implementation (simulated in tests, authenticated `lookup` in production).

use std::{num::NonZeroU64, sync::Arc, time::Duration};

use commonware_broadcast::buffered;
use commonware_consensus::{
    marshal::{self, core::Mailbox, resolver::p2p as marshal_resolver, standard::Inline},
    simplex::{
        self,
        config::{ForwardPolicy, SkipBudget, SkipPolicy},
        elector::RoundRobin,
        scheme::ed25519::Scheme,
    },
    types::{Epoch, FixedEpocher, ViewDelta},
};
use commonware_cryptography::{
    Digested, Digestible, Sha256, Signer as _,
    certificate::{ConstantProvider, Verifier as _},
    ed25519::{PrivateKey, PublicKey},
    sha256::Digest,
};
use commonware_p2p::{Blocker, Provider, Receiver, Sender};
use commonware_parallel::Sequential;
use commonware_runtime::{Clock, Handle, Metrics, Quota, Spawner, Storage, buffer::paged::CacheRef};
use commonware_storage::archive::immutable;
use commonware_utils::{NZDuration, NZU16, NZU32, NZU64, NZUsize, ordered::Set};
use medledger_ledger::Block;
use rand::{CryptoRng, Rng};

use crate::{
    app::{FinalizedReporter, LedgerApp, ProposalFault, run_executor},
    block::ChainBlock,
    chain::Chain,
};

/// p2p channel ids; identical on every validator.
pub const CHANNEL_VOTES: u64 = 0;
pub const CHANNEL_CERTIFICATES: u64 = 1;
pub const CHANNEL_RESOLVER: u64 = 2;
pub const CHANNEL_BLOCKS: u64 = 3;
pub const CHANNEL_BACKFILL: u64 = 4;

/// Per-peer, per-channel message rate limit.
pub const QUOTA: Quota = Quota::per_second(NZU32!(1_024));

/// One never-ending epoch: the validator set is fixed by genesis. (At an epoch's last height
/// marshal's `Inline` re-proposes the boundary block, so this must not be small.)
const EPOCH_LENGTH: NonZeroU64 = NZU64!(u64::MAX);
const PAGE_SIZE: u16 = 4096;
const PAGE_CACHE_PAGES: usize = 1024;
const MAILBOX_SIZE: usize = 1024;

/// Consensus timeouts. `Engine::new` requires skip > certification > leader and skip > retry.
#[derive(Clone, Debug)]
pub struct Timing {
    pub leader_timeout: Duration,
    pub certification_timeout: Duration,
    pub timeout_retry: Duration,
    pub skip_timeout: Duration,
    pub fetch_timeout: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            leader_timeout: Duration::from_secs(1),
            certification_timeout: Duration::from_secs(2),
            timeout_retry: Duration::from_secs(10),
            skip_timeout: Duration::from_secs(12),
            fetch_timeout: Duration::from_secs(1),
        }
    }
}

/// The consensus signing namespace of a chain: votes for one chain never count on another.
pub fn consensus_namespace(chain_id: medledger_types::Hash) -> Vec<u8> {
    let mut ns = b"medledger/consensus/v1/".to_vec();
    ns.extend_from_slice(&chain_id.0);
    ns
}

/// The commonware key for a medledger Ed25519 signing seed (the same key signs votes).
pub fn consensus_key(seed: &[u8; 32]) -> PrivateKey {
    use commonware_codec::DecodeExt;
    PrivateKey::decode(bytes::Bytes::copy_from_slice(seed)).expect("any 32 bytes are an Ed25519 seed")
}

/// The commonware public key of a genesis validator.
pub fn consensus_public_key(key: &medledger_crypto::PublicKey) -> Option<PublicKey> {
    use commonware_codec::DecodeExt;
    PublicKey::decode(bytes::Bytes::copy_from_slice(&key.0)).ok()
}

/// Largest p2p message a validator sends or accepts, for `n` validators: the largest of
/// consensus' messages and a replicated ciphertext (`crate::replication`).
pub fn max_message_size(n: usize) -> u32 {
    let m = marshal::max_payload_size::<marshal::standard::Standard<ChainBlock>, Scheme>(n as u32, &());
    let s = simplex::max_payload_size::<Scheme, Digest>(n as u32);
    (m.max(s).max(crate::replication::BLOB_MESSAGE_BYTES_MAX) + 1024) as u32
}

pub struct ValidatorConfig {
    pub signer: PrivateKey,
    /// The validator set from genesis.
    pub participants: Vec<PublicKey>,
    /// Prefix of every storage partition of this validator.
    pub partition_prefix: String,
    pub chain: Arc<Chain>,
    pub timing: Timing,
    /// Fault injection for tests; `ProposalFault::None` in production.
    pub fault: ProposalFault,
}

pub struct ValidatorHandle {
    pub public_key: PublicKey,
    pub marshal: Mailbox<Scheme, marshal::standard::Standard<ChainBlock>>,
    pub consensus: Handle<()>,
}

pub type Channel<S, R> = (S, R);

/// Starts one validator on `context` with its five p2p channels.
#[allow(clippy::too_many_arguments)]
pub async fn start_validator<E, S, R, B, P>(
    context: E,
    cfg: ValidatorConfig,
    blocker: B,
    peer_provider: P,
    votes: Channel<S, R>,
    certificates: Channel<S, R>,
    resolver: Channel<S, R>,
    blocks: Channel<S, R>,
    backfill: Channel<S, R>,
) -> ValidatorHandle
where
    E: Spawner + Metrics + Clock + Storage + Rng + CryptoRng,
    S: Sender<PublicKey = PublicKey>,
    R: Receiver<PublicKey = PublicKey>,
    B: Blocker<PublicKey = PublicKey> + Clone,
    P: Provider<PublicKey = PublicKey> + Clone,
{
    let me = cfg.signer.public_key();
    let namespace = consensus_namespace(cfg.chain.genesis().chain_id());
    let scheme = Scheme::signer(&namespace, Set::from_iter_dedup(cfg.participants.clone()), cfg.signer.clone())
        .expect("this node's key is in the validator set");
    let page_cache = CacheRef::new(NZU16!(PAGE_SIZE), NZUsize!(PAGE_CACHE_PAGES));
    let prefix = cfg.partition_prefix.clone();
    let mailbox_size = NZUsize!(MAILBOX_SIZE);

    let finalizations_by_height = immutable::Archive::init(
        context.child("finalizations_by_height"),
        archive_config(&prefix, "finalizations-by-height", &page_cache, Scheme::certificate_codec_config_unbounded()),
    )
    .await
    .expect("cannot open the finalizations archive");
    let finalized_blocks = immutable::Archive::init(
        context.child("finalized_blocks"),
        archive_config(&prefix, "finalized-blocks", &page_cache, ()),
    )
    .await
    .expect("cannot open the finalized blocks archive");

    let genesis = ChainBlock::new(Block { header: cfg.chain.genesis().anchor_header(), txs: vec![] });
    let genesis_digest = genesis.digest();
    let epocher = FixedEpocher::new(EPOCH_LENGTH);
    let marshal_config = marshal::Config {
        provider: ConstantProvider::<Scheme, Epoch>::new(scheme.clone()),
        epocher: epocher.clone(),
        start: marshal::Start::Genesis(Digested::precomputed(genesis, genesis_digest)),
        partition_prefix: format!("{prefix}-marshal"),
        mailbox_size,
        view_retention: ViewDelta::new(64),
        prunable_items_per_section: NZU64!(64),
        page_cache: page_cache.clone(),
        replay_buffer: NZUsize!(64 * 1024),
        key_write_buffer: NZUsize!(64 * 1024),
        value_write_buffer: NZUsize!(64 * 1024),
        block_codec_config: (),
        max_repair: NZUsize!(16),
        max_pending_acks: NZUsize!(16),
        strategy: Sequential,
    };
    let (marshal_actor, marshal_mailbox, _floor): (_, Mailbox<Scheme, marshal::standard::Standard<ChainBlock>>, _) =
        marshal::core::Actor::init(context.child("marshal"), finalizations_by_height, finalized_blocks, marshal_config)
            .await;

    let backfill_resolver = marshal_resolver::init(
        context.child("marshal_resolver"),
        marshal_resolver::Config {
            public_key: me.clone(),
            peer_provider: peer_provider.clone(),
            blocker: blocker.clone(),
            mailbox_size,
            fetch_timeout: NZDuration!(Duration::from_secs(2)),
            fetch_retry_delay: Duration::from_millis(100),
            priority_requests: false,
            priority_responses: false,
        },
        backfill,
    );
    let (buffer_engine, buffer) = buffered::Engine::<_, PublicKey, ChainBlock, _, _>::new(
        context.child("buffer"),
        buffered::Config {
            public_key: me.clone(),
            mailbox_size,
            deque_size: 16,
            priority: false,
            codec_config: (),
            peer_provider: peer_provider.clone(),
            strategy: Sequential,
        },
    );
    buffer_engine.start(blocks);

    let (reporter, finalized) = FinalizedReporter::new();
    // The executor fsyncs every finalized batch: it runs on its own thread, never on the
    // async workers that drive consensus and the API.
    context.child("executor").dedicated().spawn({
        let (chain, marshal) = (cfg.chain.clone(), marshal_mailbox.clone());
        move |_| run_executor(finalized, chain, marshal)
    });
    marshal_actor.start(reporter, buffer, backfill_resolver);

    let app = LedgerApp::new(cfg.chain.clone(), cfg.chain.node_id(), cfg.fault);
    let inline = Inline::new(context.child("inline"), app, marshal_mailbox.clone(), epocher);
    let engine = simplex::Engine::new(
        context.child("consensus"),
        simplex::Config {
            scheme,
            elector: RoundRobin::<Sha256>::default(),
            blocker,
            automaton: inline.clone(),
            relay: inline.clone(),
            reporter: inline,
            strategy: Sequential,
            partition: format!("{prefix}-consensus"),
            mailbox_size,
            epoch: Epoch::zero(),
            floor: simplex::Floor::Genesis(genesis_digest),
            replay_buffer: NZUsize!(1024 * 1024),
            write_buffer: NZUsize!(1024 * 1024),
            page_cache,
            leader_timeout: cfg.timing.leader_timeout,
            certification_timeout: cfg.timing.certification_timeout,
            timeout_retry: cfg.timing.timeout_retry,
            view_retention: ViewDelta::new(64),
            skip: SkipPolicy::Enabled { timeout: cfg.timing.skip_timeout, budget: SkipBudget::Participants },
            fetch_timeout: NZDuration!(cfg.timing.fetch_timeout),
            fetch_retry_delay: Duration::from_millis(100),
            forward: ForwardPolicy::Disabled,
            track_historical_votes: false,
        },
    );
    let consensus = engine.start(votes, certificates, resolver);
    ValidatorHandle { public_key: me, marshal: marshal_mailbox, consensus }
}

fn archive_config<C>(prefix: &str, name: &str, page_cache: &CacheRef, codec_config: C) -> immutable::Config<C> {
    immutable::Config {
        metadata_partition: format!("{prefix}-{name}-metadata"),
        freezer_table_partition: format!("{prefix}-{name}-freezer-table"),
        freezer_table_initial_size: 64,
        freezer_table_resize_frequency: 10,
        freezer_table_resize_chunk_size: 10,
        freezer_key_partition: format!("{prefix}-{name}-freezer-key"),
        freezer_key_page_cache: page_cache.clone(),
        freezer_value_partition: format!("{prefix}-{name}-freezer-value"),
        freezer_value_target_size: 16 * 1024 * 1024,
        freezer_value_compression: None,
        ordinal_partition: format!("{prefix}-{name}-ordinal"),
        items_per_section: NZU64!(1024),
        codec_config,
        replay_buffer: NZUsize!(64 * 1024),
        freezer_key_write_buffer: NZUsize!(64 * 1024),
        freezer_value_write_buffer: NZUsize!(64 * 1024),
        ordinal_write_buffer: NZUsize!(64 * 1024),
    }
}
