//! The node's view of the chain: finalized state (rebuilt and re-verified from storage at
//! start), the store, the mempool and the blocks consensus has verified but not yet finalized.
//! Runtime-agnostic and synchronous: consensus glue and the HTTP API both call into it.

use std::{
    collections::{HashMap, VecDeque},
    path::Path,
    sync::Arc,
};

use medledger_crypto::Keypair;
use medledger_ledger::{Block, BlockError, Executed, Genesis, State, Transaction, TxError};
use medledger_merkle::{MerkleError, checkpoint};
use medledger_storage::{ChainError, ReplayReport, Store, replay};
use medledger_types::{Hash, Height, IdentityId, TimestampMs, TxId, limits};

use crate::{
    NodeError,
    commit_watch::CommitWatchers,
    index::PatientIndex,
    locks::{OrderedMutex, rank},
    mempool::{Mempool, MempoolError},
    metrics::Metrics,
    snapshot::{IndexView, Snapshot},
};

/// Why a submitted transaction was refused at the door.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    #[error("malformed transaction: {0}")]
    Malformed(#[source] medledger_codec::CodecError),
    #[error("{0}")]
    Invalid(#[from] TxError),
    #[error("{0}")]
    Mempool(#[from] MempoolError),
    #[error("transaction is already committed")]
    AlreadyCommitted,
}

/// What became of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxStatus {
    Pending,
    Committed { height: Height, index: u32, log_index: u64 },
    Rejected { reason: String },
    Unknown,
}

/// The latest finalized block, summarised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub height: Height,
    pub hash: Hash,
    pub timestamp_ms: TimestampMs,
    pub log_size: u64,
    pub log_root: Hash,
}

/// Most rejected transactions remembered for status queries.
const REJECTED_REMEMBERED_MAX: usize = 100_000;
/// Most unfinalized ancestors a proposal may build on.
pub const ANCESTORS_MAX: usize = 1024;

#[derive(Default)]
struct Rejections {
    reasons: HashMap<TxId, String>,
    order: VecDeque<TxId>,
}

impl Rejections {
    fn add(&mut self, id: TxId, reason: String) {
        if self.reasons.insert(id, reason).is_none() {
            self.order.push_back(id);
            if self.order.len() > REJECTED_REMEMBERED_MAX
                && let Some(old) = self.order.pop_front()
            {
                self.reasons.remove(&old);
            }
        }
    }
}

pub struct Chain {
    genesis: Genesis,
    /// The finalized state and per-patient index (`crate::index`), published whole after
    /// each batch of finalized blocks (see [`crate::snapshot`]). Replaced only by
    /// [`Chain::apply_finalized`], under `applying` and while it holds the mempool's lock.
    current: arc_swap::ArcSwap<Snapshot>,
    /// Block application: one writer at a time.
    applying: OrderedMutex<()>,
    store: Store,
    mempool: OrderedMutex<Mempool>,
    /// Blocks verified on top of the finalized head (directly or through each other), by hash.
    unfinalized: OrderedMutex<HashMap<Hash, Arc<Executed>>>,
    rejections: OrderedMutex<Rejections>,
    /// Who waits for which transaction's outcome.
    watchers: CommitWatchers,
    /// This node's identity (signs checkpoints).
    node_keys: Keypair,
    /// Set when the node stopped following the chain, with the reason.
    halted: OrderedMutex<Option<String>>,
    /// Serialises nonce allocation for transactions this node signs itself.
    local_signing: OrderedMutex<()>,
    pub metrics: Metrics,
}

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chain").field("store", &self.store).finish()
    }
}

impl Chain {
    /// Opens the chain in `dir`: records `genesis` on first use (checks it matches later), then
    /// rebuilds the state by re-verifying every stored block.
    pub fn open(
        dir: &Path,
        genesis: &Genesis,
        node_keys: Keypair,
        progress: &mut dyn FnMut(Height, Height),
    ) -> Result<(Self, ReplayReport), NodeError> {
        genesis.validate().map_err(|e| NodeError::Config(e.to_string()))?;
        let store = Store::open(dir)?;
        store.init_genesis(genesis)?;
        let (state, report) = replay(&store, progress)?;
        // A second pass over blocks `replay` just verified: the index is derived data, so it
        // is rebuilt rather than stored and can never disagree with the chain.
        let mut index = PatientIndex::default();
        store.for_each_block(1, |height, bytes| {
            let block = Block::decode(bytes).map_err(|error| ChainError::Undecodable { height, error })?;
            index.apply_block(&block, &state);
            Ok(())
        })?;
        let metrics = Metrics::default();
        metrics.set_head(state.height(), state.log().size());
        let chain = Self {
            genesis: genesis.clone(),
            current: arc_swap::ArcSwap::from_pointee(Snapshot::new(state, index)),
            applying: OrderedMutex::new(rank::CHAIN_APPLY, "block application", ()),
            store,
            mempool: OrderedMutex::new(rank::CHAIN_MEMPOOL, "mempool", Mempool::default()),
            unfinalized: OrderedMutex::new(rank::CHAIN_UNFINALIZED, "unfinalized blocks", HashMap::new()),
            rejections: OrderedMutex::new(rank::CHAIN_REJECTIONS, "rejections", Rejections::default()),
            watchers: CommitWatchers::default(),
            node_keys,
            halted: OrderedMutex::new(rank::CHAIN_HALTED, "halted", None),
            local_signing: OrderedMutex::new(rank::CHAIN_LOCAL_SIGNING, "local signing", ()),
            metrics,
        };
        Ok((chain, report))
    }

    /// Marks the node as no longer following the chain (see [`crate::app::run_executor`]).
    pub fn halt(&self, reason: String) {
        *self.halted.lock() = Some(reason);
    }

    /// Why the node stopped following the chain, if it did.
    pub fn halted(&self) -> Option<String> {
        self.halted.lock().clone()
    }

    pub fn genesis(&self) -> &Genesis {
        &self.genesis
    }

    pub fn node_id(&self) -> IdentityId {
        self.node_keys.id()
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The finalized state and index at the latest applied height: an immutable view that
    /// never changes under the holder and holds no lock (see [`crate::snapshot`]).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// The per-patient index of the latest snapshot (with the state it belongs to).
    pub fn patient_index(&self) -> IndexView {
        IndexView(self.snapshot())
    }

    pub fn head(&self) -> Head {
        let state = self.snapshot();
        Head {
            height: state.height(),
            hash: state.head_hash(),
            timestamp_ms: state.head_timestamp_ms(),
            log_size: state.log().size(),
            log_root: state.log().root(),
        }
    }

    /// Replaces the mempool's bounds (tests, tuning); only while it is empty.
    pub fn set_mempool_limits(&self, limits: crate::mempool::MempoolLimits) -> Result<(), NodeError> {
        let mut pool = self.mempool.lock();
        if !pool.is_empty() {
            return Err(NodeError::Config("the mempool's bounds change only while it is empty".into()));
        }
        *pool = Mempool::new(limits);
        Ok(())
    }

    pub fn mempool_len(&self) -> usize {
        self.mempool.lock().len()
    }

    /// Admits a transaction to the mempool after checking its encoding, size, signature and,
    /// when it is the signer's next transaction, every ledger rule against finalized state.
    pub fn submit(&self, bytes: &[u8], now_ms: TimestampMs) -> Result<TxId, SubmitError> {
        let result = self.submit_inner(bytes, now_ms);
        match &result {
            Ok(_) => self.metrics.txs_submitted.inc(),
            Err(_) => self.metrics.txs_refused.inc(),
        }
        result
    }

    fn submit_inner(&self, bytes: &[u8], now_ms: TimestampMs) -> Result<TxId, SubmitError> {
        let tx = Transaction::decode(bytes).map_err(SubmitError::Malformed)?;
        // Resubmitting a pending transaction is a harmless retry: answer as for the first time.
        if self.mempool.lock().contains(&tx.id()) {
            return Ok(tx.id());
        }
        let checked = self.check_admission(&tx, now_ms);
        // A committed transaction fails admission (its nonce is used); say so precisely. Only
        // looked up on failure, keeping the store off the submission hot path.
        let next_nonce = match checked {
            Ok(next_nonce) => next_nonce,
            Err(error) => {
                if self.store.tx_location(&tx.id()).ok().flatten().is_some() {
                    return Err(SubmitError::AlreadyCommitted);
                }
                return Err(error);
            }
        };
        let id = tx.id();
        // This node's own transactions (audit events, the writes it signs) may use the reserve.
        let own = tx.body().signer == self.node_keys.id();
        {
            let mut pool = self.mempool.lock();
            self.expire_pending(&mut pool, now_ms);
            pool.insert(tx, now_ms, own, next_nonce)?;
        }
        self.metrics.mempool_txs.set(self.mempool_len() as i64);
        Ok(id)
    }

    /// Checks `tx` for admission; returns its signer's next nonce in finalized state.
    fn check_admission(&self, tx: &Transaction, now_ms: TimestampMs) -> Result<u64, SubmitError> {
        let expected;
        {
            let state = self.snapshot();
            let body = tx.body();
            expected = state.next_nonce(&body.signer);
            if body.nonce == expected {
                state.check_transaction(tx, now_ms.max(state.head_timestamp_ms() + 1))?;
            } else if body.nonce < expected {
                return Err(TxError::Replayed { expected, got: body.nonce }.into());
            } else if body.nonce - expected > limits::NONCE_AHEAD_MAX {
                return Err(TxError::NonceAhead { expected, got: body.nonce }.into());
            } else {
                // Queued behind earlier nonces: full rules run at block building; the
                // signature is checked now so the mempool only ever holds authentic ones.
                if body.chain_id != state.chain_id() {
                    return Err(TxError::WrongChain.into());
                }
                let who = state.identity(&body.signer).ok_or(TxError::UnknownSigner(body.signer))?;
                // Only validators sign batches (the ledger checks it again): no one else may
                // park up to a megabyte per transaction in the mempool.
                if matches!(body.payload, medledger_ledger::Payload::Batch { .. })
                    && who.role != medledger_types::Role::Validator
                {
                    return Err(TxError::NotAuthorised("only a member organisation's validator signs a batch").into());
                }
                who.signing_key.verify(&tx.signed_message(), tx.signature()).map_err(|_| TxError::BadSignature)?;
            }
        }
        Ok(expected)
    }

    /// Drops the transactions that waited in the mempool past their time to live, telling
    /// their waiters and remembering why (so a status query says "rejected", not "unknown").
    fn expire_pending(&self, pool: &mut Mempool, now_ms: TimestampMs) {
        let expired = pool.expire(now_ms);
        if expired.is_empty() {
            return;
        }
        let reason = "expired: it waited in the mempool longer than its time to live without being committed";
        let mut rejections = self.rejections.lock();
        for id in expired {
            self.watchers.resolve(&id, &TxStatus::Rejected { reason: reason.to_owned() });
            rejections.add(id, reason.to_owned());
        }
    }

    pub fn tx_status(&self, id: &TxId) -> Result<TxStatus, NodeError> {
        if let Some((height, index)) = self.store.tx_location(id)? {
            let header = self.stored_block(height, Block::decode_header)?;
            let log_index = (header.log_size.checked_sub(u64::from(header.tx_count)))
                .filter(|_| index < header.tx_count)
                .map(|first| first + u64::from(index))
                .ok_or_else(|| NodeError::Corrupt(format!("the transaction index points outside block {height}")))?;
            return Ok(TxStatus::Committed { height, index, log_index });
        }
        if self.mempool.lock().contains(id) {
            return Ok(TxStatus::Pending);
        }
        if let Some(reason) = self.rejections.lock().reasons.get(id) {
            return Ok(TxStatus::Rejected { reason: reason.clone() });
        }
        Ok(TxStatus::Unknown)
    }

    /// A receiver told when transaction `id` commits or is rejected (at once if it already
    /// has), including when it expires from the mempool (a rejection). It is never told about
    /// a transaction this node never admitted: wait with a timeout.
    pub fn watch(&self, id: &TxId) -> Result<futures::channel::oneshot::Receiver<TxStatus>, NodeError> {
        // Registered before looking: an outcome that lands in between is told, not missed.
        let receiver = self.watchers.register(*id);
        match self.tx_status(id)? {
            status @ (TxStatus::Committed { .. } | TxStatus::Rejected { .. }) => self.watchers.resolve(id, &status),
            TxStatus::Pending | TxStatus::Unknown => {}
        }
        Ok(receiver)
    }

    /// Signs `payload` with `keys` at the signer's next free nonce (after its pending
    /// transactions) and submits it.
    pub fn submit_as(
        &self,
        keys: &Keypair,
        payload: medledger_ledger::Payload,
        now_ms: TimestampMs,
    ) -> Result<TxId, SubmitError> {
        let _guard = self.local_signing.lock();
        let signer = keys.id();
        // The committed nonce and the pending ones must be read as one view: a block applied
        // between the two reads would move nonces from the mempool into the state, and the
        // gap would hand out a nonce already used. Applying a block publishes its snapshot
        // while it holds the mempool's lock, so the snapshot taken under that lock matches
        // the mempool.
        let (nonce, chain_id) = {
            let pool = self.mempool.lock();
            let state = self.snapshot();
            (pool.run_end(&signer, state.next_nonce(&signer)), state.chain_id())
        };
        let tx = medledger_ledger::tx::sign(keys, chain_id, signer, nonce, payload);
        self.submit(tx.bytes(), now_ms)
    }

    /// A committed transaction by id.
    pub fn transaction(&self, id: &TxId) -> Result<Option<Transaction>, NodeError> {
        let Some((height, index)) = self.store.tx_location(id)? else { return Ok(None) };
        self.stored_block(height, |bytes| Block::decode_transaction_at(bytes, index))
    }

    /// Part of the block at `height`, which the transaction index says is stored, decoded
    /// by `decode` (only what the caller needs).
    fn stored_block<T>(
        &self,
        height: Height,
        decode: impl FnOnce(&[u8]) -> Result<T, medledger_codec::CodecError>,
    ) -> Result<T, NodeError> {
        let bytes =
            self.store.block_bytes(height)?.ok_or(NodeError::Corrupt(format!("indexed block {height} is missing")))?;
        decode(&bytes).map_err(|error| NodeError::Chain(ChainError::Undecodable { height, error }))
    }

    pub fn block(&self, height: Height) -> Result<Option<Block>, NodeError> {
        match self.store.block_bytes(height)? {
            None => Ok(None),
            Some(bytes) => Block::decode(&bytes)
                .map(Some)
                .map_err(|error| NodeError::Chain(ChainError::Undecodable { height, error })),
        }
    }

    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<(Hash, Hash, Vec<Hash>), MerkleError> {
        let state = self.snapshot();
        let log = state.log();
        let proof = log.inclusion_proof(index, size)?;
        let leaf = log.leaf(index).expect("index below size");
        Ok((leaf, log.root_at(size)?, proof))
    }

    pub fn consistency_proof(&self, from: u64, to: u64) -> Result<(Hash, Hash, Vec<Hash>), MerkleError> {
        let state = self.snapshot();
        let log = state.log();
        let proof = log.consistency_proof(from, to)?;
        Ok((log.root_at(from)?, log.root_at(to)?, proof))
    }

    /// The latest log checkpoint as a C2SP signed note, signed by this node.
    pub fn checkpoint(&self) -> String {
        let head = self.head();
        let cp = checkpoint::Checkpoint {
            origin: self.genesis.chain_name.clone(),
            size: head.log_size,
            root: head.log_root,
        };
        checkpoint::sign_note(&cp.body(), &cp.origin, &self.node_keys)
    }

    /// The verifier key of this node's checkpoints.
    pub fn checkpoint_verifier_key(&self) -> String {
        checkpoint::verifier_key(&self.genesis.chain_name, &self.node_keys.public_key())
    }

    // ---- consensus side ----

    /// Resolves `ancestry` (newest first, starting at the parent of a new block, ending at or
    /// beyond the finalized head) into executed unfinalized ancestors, oldest first, verifying
    /// any not seen before. `None` if the ancestry does not connect to the finalized head or an
    /// ancestor is invalid.
    fn executed_ancestors(&self, state: &State, ancestry: &[Block]) -> Result<Vec<Arc<Executed>>, BlockError> {
        let mut chain: Vec<&Block> = ancestry.iter().take_while(|b| b.height() > state.height()).collect();
        chain.reverse();
        match chain.first() {
            None => {
                // The parent is at or below the finalized head: it must be the head itself.
                let parent = ancestry.first().ok_or(BlockError::WrongParent)?;
                return if parent.hash() == state.head_hash() { Ok(Vec::new()) } else { Err(BlockError::WrongParent) };
            }
            Some(oldest) if oldest.header.parent != state.head_hash() => return Err(BlockError::WrongParent),
            Some(_) => {}
        }
        let mut executed: Vec<Arc<Executed>> = Vec::with_capacity(chain.len());
        for block in chain {
            let hash = block.hash();
            let cached = self.unfinalized.lock().get(&hash).cloned();
            let entry = match cached {
                Some(e) => e,
                None => {
                    let refs: Vec<&Executed> = executed.iter().map(Arc::as_ref).collect();
                    let delta = state.verify_block_on(&refs, block, None, &|_| false)?;
                    let e = Arc::new(Executed { block: block.clone(), delta });
                    self.unfinalized.lock().insert(hash, e.clone());
                    e
                }
            };
            executed.push(entry);
        }
        Ok(executed)
    }

    /// Builds a block on top of `ancestry` (newest first, starting with the parent) from the
    /// mempool. Returns `None` when the parent does not connect to the finalized head.
    /// `forge_first_signature` is fault injection for tests of byzantine proposers.
    pub fn propose(
        &self,
        ancestry: &[Block],
        timestamp_ms: TimestampMs,
        proposer: IdentityId,
        forge_first_signature: bool,
    ) -> Option<Block> {
        let state = self.snapshot();
        let ancestors = match self.executed_ancestors(&state, ancestry) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "cannot build on the given parent");
                return None;
            }
        };
        let mut candidates =
            self.mempool.lock().candidates(limits::BLOCK_TXS_MAX * 2, |signer| state.next_nonce(signer));
        if forge_first_signature && let Some(first) = candidates.first_mut() {
            let mut bytes = first.bytes().to_vec();
            let last = bytes.len() - 1;
            bytes[last] ^= 1;
            *first = Transaction::decode(&bytes).expect("flipping a signature bit keeps the encoding valid");
        }
        let refs: Vec<&Executed> = ancestors.iter().map(Arc::as_ref).collect();
        let built = state.build_block_on(&refs, candidates, timestamp_ms, proposer);
        let (block, delta, skipped) = (built.block, built.delta, built.skipped);
        // Still valid later (nonce used by an unfinalized ancestor, or queued behind a gap):
        // keep. Anything else can never become valid on this branch: drop with its reason.
        let mut dropped = Vec::new();
        for (tx, error) in skipped {
            if !matches!(error, TxError::Replayed { .. } | TxError::NonceAhead { .. }) {
                dropped.push((tx.id(), error.to_string()));
            }
        }
        if !dropped.is_empty() {
            let mut pool = self.mempool.lock();
            let mut rejections = self.rejections.lock();
            for (id, reason) in dropped {
                pool.remove(&id);
                self.watchers.resolve(&id, &TxStatus::Rejected { reason: reason.clone() });
                rejections.add(id, reason);
                self.metrics.txs_dropped.inc();
            }
        }
        self.unfinalized.lock().insert(block.hash(), Arc::new(Executed { block: block.clone(), delta }));
        self.metrics.blocks_proposed.inc();
        Some(block)
    }

    /// Verifies a proposed `block` on top of `ancestry` (newest first, starting with its
    /// parent), remembering the result for finalization.
    pub fn verify(&self, block: &Block, ancestry: &[Block], now_ms: Option<TimestampMs>) -> Result<(), BlockError> {
        let state = self.snapshot();
        if let Some(cached) = self.unfinalized.lock().get(&block.hash())
            && cached.block == *block
        {
            return Ok(());
        }
        let ancestors = self.executed_ancestors(&state, ancestry)?;
        let refs: Vec<&Executed> = ancestors.iter().map(Arc::as_ref).collect();
        let known_good = {
            let pool = self.mempool.lock();
            let ids: std::collections::HashSet<TxId> =
                block.txs.iter().map(|t| t.id()).filter(|id| pool.contains(id)).collect();
            ids
        };
        let delta = state.verify_block_on(&refs, block, now_ms, &|id| known_good.contains(id));
        match delta {
            Ok(delta) => {
                self.unfinalized.lock().insert(block.hash(), Arc::new(Executed { block: block.clone(), delta }));
                Ok(())
            }
            Err(e) => {
                self.metrics.blocks_rejected.inc();
                Err(e)
            }
        }
    }

    /// Applies finalized blocks, in height order: verifies each (reusing the verification done
    /// during consensus when there was one), writes them durably in one store transaction, then
    /// updates the in-memory state and the mempool. Heights already applied are skipped.
    pub fn apply_finalized(&self, blocks: &[Block], certificates: &[Option<Vec<u8>>]) -> Result<(), NodeError> {
        // One batch at a time (`applying`), so the snapshot cannot change between verifying
        // and publishing. Readers and proposals never wait for this: they keep using the
        // previous snapshot through the durable write and the application.
        let _writer = self.applying.lock();
        let state = self.snapshot();
        let mut executed: Vec<Arc<Executed>> = Vec::new();
        let mut certs: Vec<Option<&[u8]>> = Vec::new();
        for (i, block) in blocks.iter().enumerate() {
            let tip = executed.last().map_or(state.height(), |e| e.block.height());
            if block.height() <= tip {
                continue;
            }
            let cached = self.unfinalized.lock().get(&block.hash()).cloned();
            let parent_hash = executed.last().map_or(state.head_hash(), |e| e.block.hash());
            let entry = match cached {
                Some(e) if e.block == *block && block.header.parent == parent_hash => e,
                _ => {
                    let refs: Vec<&Executed> = executed.iter().map(Arc::as_ref).collect();
                    let delta = state
                        .verify_block_on(&refs, block, None, &|_| false)
                        .map_err(|error| NodeError::FinalizedInvalid { height: block.height(), error })?;
                    Arc::new(Executed { block: block.clone(), delta })
                }
            };
            executed.push(entry);
            certs.push(certificates.get(i).and_then(|c| c.as_deref()));
        }
        if executed.is_empty() {
            return Ok(());
        }
        let pairs: Vec<(&Block, Option<&[u8]>)> = executed.iter().map(|e| &e.block).zip(certs).collect();
        self.store.append_blocks(&pairs)?;
        // The next snapshot: a clone sharing everything with the current one, then the blocks.
        // The executed blocks stay cached until it is published: a proposal building on one
        // meanwhile finds it there instead of verifying it again (commit shares the changes'
        // values, so nothing is copied for keeping them).
        let mut next = Snapshot::clone(&state);
        drop(state);
        let mut tx_count = 0;
        let mut signers = std::collections::HashSet::new();
        {
            let (state, index) = next.parts_mut();
            for entry in &executed {
                signers.extend(entry.block.txs.iter().map(|tx| tx.body().signer));
                tx_count += entry.block.txs.len() as u64;
                state.commit(&entry.block, &entry.delta);
                index.apply_block(&entry.block, state);
            }
        }
        let next = Arc::new(next);
        let mut unfinalized = self.unfinalized.lock();
        let mut pool = self.mempool.lock();
        // Published under the mempool's lock: see `submit_as`. The previous snapshot is
        // released after the locks, since freeing what only it held takes a while.
        let previous = self.current.swap(next.clone());
        let state = next;
        for entry in &executed {
            for tx in &entry.block.txs {
                pool.remove(&tx.id());
            }
            // Told after publishing: a woken waiter reads a snapshot that has its transaction.
            self.watchers.resolve_block(&entry.block);
        }
        // Expiry runs on block time too, so a transaction nobody resubmits around still ends.
        if let Some(last) = executed.last() {
            self.expire_pending(&mut pool, last.block.header.timestamp_ms);
        }
        for signer in signers {
            for id in pool.remove_stale(&signer, state.next_nonce(&signer)) {
                let reason = "nonce used by another committed transaction".to_owned();
                self.watchers.resolve(&id, &TxStatus::Rejected { reason: reason.clone() });
                self.rejections.lock().add(id, reason);
            }
        }
        let height = state.height();
        unfinalized.retain(|_, e| e.block.height() > height);
        self.metrics.txs_committed.add(tx_count);
        self.metrics.set_head(height, state.log().size());
        self.metrics.mempool_txs.set(pool.len() as i64);
        drop((pool, unfinalized));
        drop(previous);
        Ok(())
    }
}
