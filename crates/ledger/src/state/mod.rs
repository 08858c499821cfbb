//! The replicated state and the rules that change it. Pure: block time is an input, the local
//! clock appears only as an optional bound on proposed timestamps, and nothing here does I/O.
//!
//! [`State`] is the finalized state with its read API, block building, verification and
//! commit. A block is executed in an `overlay::Overlay` (changes layered over the state and
//! over unfinalized ancestors' [`Delta`]s) whose `execute` checks what every transaction
//! shares (chain, signer, nonce) and dispatches each operation to its family's module:
//! `identity`, `record`, `access_events`, `consent`, `key_share`, `break_glass`, `rules`,
//! `delegates`, `batch`, `directory`. An operation changes the overlay only after all its
//! checks pass. The public state types are in `types`, re-exported here.

mod access_events;
mod batch;
mod break_glass;
mod consent;
mod delegates;
mod directory;
mod identity;
mod key_share;
mod overlay;
mod pmap;
mod record;
mod rules;
mod types;

pub use pmap::{DeltaMap, PMap};

use medledger_crypto::{CryptoError, PublicKey, Signature, verify_batch};
use medledger_merkle::MerkleLog;
use medledger_types::{Hash, Height, IdentityId, RecordId, Role, TimestampMs, TxId, limits};

use crate::{
    block::{Block, BlockHeader, txs_root},
    error::{BlockError, TxError},
    genesis::Genesis,
    rules::InstalledRule,
    tx::Transaction,
};
use overlay::Overlay;
pub use types::{
    BreakGlassReview, CategoryKeyId, CategoryKeyState, Delegation, DirectoryHead, Grant, GrantOrigin, Identity,
    RecordHead,
};

/// Everything a block changes, computed by verification and applied by commit.
#[derive(Clone, Debug, Default)]
pub struct Delta {
    identities: DeltaMap<IdentityId, Identity>,
    records: DeltaMap<RecordId, RecordHead>,
    grants: DeltaMap<TxId, Grant>,
    category_keys: DeltaMap<CategoryKeyId, CategoryKeyState>,
    /// (patient, holder) -> the category keys of that patient the holder received by grant.
    shared_keys: DeltaMap<(IdentityId, IdentityId), Vec<CategoryKeyId>>,
    /// (patient, grantee) -> ids of the grants between them.
    grant_index: DeltaMap<(IdentityId, IdentityId), Vec<TxId>>,
    /// patient -> ids of every grant of the patient, oldest first.
    patient_grants: DeltaMap<IdentityId, Vec<TxId>>,
    rules: DeltaMap<TxId, InstalledRule>,
    /// patient -> ids of every rule installed for the patient, oldest first.
    patient_rules: DeltaMap<IdentityId, Vec<TxId>>,
    /// patient -> ids of the active rules that react to the patient's record commits, in
    /// installation order (the order they are evaluated in).
    reacting_rules: DeltaMap<IdentityId, Vec<TxId>>,
    /// patient -> every delegation of the patient, oldest first.
    delegations: DeltaMap<IdentityId, Vec<Delegation>>,
    directory: DeltaMap<RecordId, DirectoryHead>,
    /// practitioner -> ids of the break-glass declarations they made, oldest first.
    declared_break_glass: DeltaMap<IdentityId, Vec<TxId>>,
}

impl Delta {
    /// Layers `newer` (changes made on top of this delta) over it.
    fn merge(&mut self, newer: Delta) {
        self.identities.extend(newer.identities);
        self.records.extend(newer.records);
        self.grants.extend(newer.grants);
        self.category_keys.extend(newer.category_keys);
        self.shared_keys.extend(newer.shared_keys);
        self.grant_index.extend(newer.grant_index);
        self.patient_grants.extend(newer.patient_grants);
        self.rules.extend(newer.rules);
        self.patient_rules.extend(newer.patient_rules);
        self.reacting_rules.extend(newer.reacting_rules);
        self.delegations.extend(newer.delegations);
        self.directory.extend(newer.directory);
        self.declared_break_glass.extend(newer.declared_break_glass);
    }
}

/// A block verified on top of some state but not yet finalized, with the changes it makes.
/// Consensus builds on such blocks before they are final; see [`State::verify_block_on`].
#[derive(Debug)]
pub struct Executed {
    pub block: Block,
    pub delta: Delta,
}

/// A block built by [`State::build_block_on`]: the block, its changes, and the candidates that
/// were left out with the reason.
#[derive(Debug)]
pub struct Built {
    pub block: Block,
    pub delta: Delta,
    pub skipped: Vec<(Transaction, TxError)>,
}

/// The state after some prefix of the chain. Its maps are persistent ([`PMap`]): a clone
/// shares every entry with the original and costs O(1), so the node publishes an immutable
/// snapshot per finalized height and readers never hold a lock.
#[derive(Clone, Debug)]
pub struct State {
    chain_id: Hash,
    chain_name: String,
    validators: Vec<IdentityId>,
    identities: PMap<IdentityId, Identity>,
    records: PMap<RecordId, RecordHead>,
    grants: PMap<TxId, Grant>,
    category_keys: PMap<CategoryKeyId, CategoryKeyState>,
    shared_keys: PMap<(IdentityId, IdentityId), Vec<CategoryKeyId>>,
    grant_index: PMap<(IdentityId, IdentityId), Vec<TxId>>,
    patient_grants: PMap<IdentityId, Vec<TxId>>,
    rules: PMap<TxId, InstalledRule>,
    patient_rules: PMap<IdentityId, Vec<TxId>>,
    reacting_rules: PMap<IdentityId, Vec<TxId>>,
    delegations: PMap<IdentityId, Vec<Delegation>>,
    directory: PMap<RecordId, DirectoryHead>,
    declared_break_glass: PMap<IdentityId, Vec<TxId>>,
    height: Height,
    head_hash: Hash,
    head_timestamp_ms: TimestampMs,
    log: MerkleLog,
}

/// Where a block sits, for the rules that depend on it.
#[derive(Clone, Copy, Debug)]
struct BlockContext {
    height: Height,
    timestamp_ms: TimestampMs,
}

impl State {
    pub fn from_genesis(genesis: &Genesis) -> Self {
        let mut identities = PMap::new();
        for (who, role) in genesis
            .organisations
            .iter()
            .map(|o| (o, Role::Organisation))
            .chain(genesis.validators.iter().map(|v| (v, Role::Validator)))
        {
            identities.insert(
                who.id(),
                Identity {
                    id: who.id(),
                    role,
                    signing_key: who.signing_key,
                    encryption_key: who.encryption_key,
                    organisation: who.organisation,
                    kind: who.kind,
                    registered_by: None,
                    key_rotations: 0,
                    name: who.name.clone(),
                    next_nonce: 0,
                    registered_at: 0,
                },
            );
        }
        Self {
            chain_id: genesis.chain_id(),
            chain_name: genesis.chain_name.clone(),
            validators: genesis.validators.iter().map(|v| v.id()).collect(),
            identities,
            records: PMap::new(),
            grants: PMap::new(),
            category_keys: PMap::new(),
            shared_keys: PMap::new(),
            grant_index: PMap::new(),
            patient_grants: PMap::new(),
            rules: PMap::new(),
            patient_rules: PMap::new(),
            reacting_rules: PMap::new(),
            delegations: PMap::new(),
            directory: PMap::new(),
            declared_break_glass: PMap::new(),
            height: 0,
            head_hash: genesis.anchor_header().hash(),
            head_timestamp_ms: genesis.genesis_time_ms,
            log: MerkleLog::new(),
        }
    }

    pub fn chain_id(&self) -> Hash {
        self.chain_id
    }

    pub fn chain_name(&self) -> &str {
        &self.chain_name
    }

    pub fn height(&self) -> Height {
        self.height
    }

    /// Hash of the latest block header (the genesis anchor header before the first block).
    pub fn head_hash(&self) -> Hash {
        self.head_hash
    }

    pub fn head_timestamp_ms(&self) -> TimestampMs {
        self.head_timestamp_ms
    }

    pub fn log(&self) -> &MerkleLog {
        &self.log
    }

    pub fn validators(&self) -> &[IdentityId] {
        &self.validators
    }

    pub fn identity(&self, id: &IdentityId) -> Option<&Identity> {
        self.identities.get(id)
    }

    pub fn identities(&self) -> impl Iterator<Item = &Identity> {
        self.identities.values()
    }

    pub fn record(&self, id: &RecordId) -> Option<&RecordHead> {
        self.records.get(id)
    }

    pub fn grant(&self, id: &TxId) -> Option<&Grant> {
        self.grants.get(id)
    }

    pub fn grants(&self) -> impl Iterator<Item = &Grant> {
        self.grants.values()
    }

    pub fn category_key(&self, id: &CategoryKeyId) -> Option<&CategoryKeyState> {
        self.category_keys.get(id)
    }

    /// Until when `holder` may hold `key` if it receives it at block time `at_ms`: forever for
    /// the patient and the custodian, else the latest end among the holder's grants that may
    /// carry the key (`Grant::may_share_key`); `None` if none may. What consensus checks on every
    /// key share, and what a custodian's node asks before wrapping a key for anyone.
    pub fn key_holding_until(
        &self,
        key: &CategoryKeyId,
        holder: &IdentityId,
        at_ms: TimestampMs,
    ) -> Option<TimestampMs> {
        if *holder == key.patient || *holder == key.custodian {
            return Some(TimestampMs::MAX);
        }
        self.grants_between(&key.patient, holder)
            .filter(|g| g.may_share_key(&key.category, at_ms))
            .map(|g| g.valid_until_ms)
            .max()
    }

    /// The grants `patient` gave `grantee`, oldest first.
    pub fn grants_between(&self, patient: &IdentityId, grantee: &IdentityId) -> impl Iterator<Item = &Grant> {
        self.grant_index.get(&(*patient, *grantee)).into_iter().flatten().filter_map(|id| self.grants.get(id))
    }

    /// Every grant of `patient` (consent, break-glass and rule-derived), oldest first: what the
    /// patient sees of who may read their data.
    pub fn grants_of(&self, patient: &IdentityId) -> impl Iterator<Item = &Grant> {
        self.patient_grants.get(patient).into_iter().flatten().filter_map(|id| self.grants.get(id))
    }

    /// The break-glass accesses declared for `patient`, oldest first.
    pub fn break_glass_events(&self, patient: &IdentityId) -> impl Iterator<Item = &Grant> {
        self.grants_of(patient).filter(|g| g.is_break_glass())
    }

    pub fn directory_entry(&self, id: &RecordId) -> Option<&DirectoryHead> {
        self.directory.get(id)
    }

    /// Every directory entry, in no particular order.
    pub fn directory_entries(&self) -> impl Iterator<Item = (&RecordId, &DirectoryHead)> {
        self.directory.iter()
    }

    pub fn rule(&self, id: &TxId) -> Option<&InstalledRule> {
        self.rules.get(id)
    }

    /// Every sharing rule installed for `patient` (removed ones included), oldest first.
    pub fn rules_of(&self, patient: &IdentityId) -> impl Iterator<Item = &InstalledRule> {
        self.patient_rules.get(patient).into_iter().flatten().filter_map(|id| self.rules.get(id))
    }

    /// Whether `organisation` is a custodian of `patient`'s data (see `docs/rules.md`, review
    /// break-glass): it holds a category key of the patient.
    pub fn custodies(&self, organisation: &IdentityId, patient: &IdentityId) -> bool {
        holds_a_category_key(organisation, patient, |id| self.category_keys.contains_key(id))
    }

    /// Every delegation of `patient` (dismissed and expired ones included), oldest first.
    pub fn delegations_of(&self, patient: &IdentityId) -> impl Iterator<Item = &Delegation> {
        self.delegations.get(patient).into_iter().flatten()
    }

    /// Whether `delegate` may act for `patient` at block time `at_ms`.
    pub fn is_live_delegate(&self, patient: &IdentityId, delegate: &IdentityId, at_ms: TimestampMs) -> bool {
        self.delegations_of(patient).any(|d| d.delegate == *delegate && d.is_live(at_ms))
    }

    /// The nonce `signer`'s next transaction must carry (0 for an unknown identity).
    pub fn next_nonce(&self, signer: &IdentityId) -> u64 {
        self.identities.get(signer).map_or(0, |i| i.next_nonce)
    }

    /// Checks one transaction, signature included, as if it were the next in a block at
    /// `timestamp_ms`. Used to admit transactions to a mempool.
    pub fn check_transaction(&self, tx: &Transaction, timestamp_ms: TimestampMs) -> Result<(), TxError> {
        let mut overlay = Overlay::new(self, &[]);
        let ctx = BlockContext { height: self.height + 1, timestamp_ms };
        let key = overlay.execute(tx, ctx)?;
        key.verify(&tx.signed_message(), tx.signature()).map_err(|_| TxError::BadSignature)
    }

    /// Builds the next block from `candidates`, in order, skipping any that are not valid
    /// after the ones before them. Candidates must have had their signatures checked (the
    /// mempool does that). Returns the block and the skipped transactions with reasons.
    pub fn build_block(
        &self,
        candidates: impl IntoIterator<Item = Transaction>,
        timestamp_ms: TimestampMs,
        proposer: IdentityId,
    ) -> (Block, Vec<(Transaction, TxError)>) {
        let built = self.build_block_on(&[], candidates, timestamp_ms, proposer);
        (built.block, built.skipped)
    }

    /// [`State::build_block`] on top of `ancestors`: the unfinalized blocks from this state's
    /// head (exclusive) to the parent of the new block, oldest first. Also returns the block's
    /// changes, so the proposer need not execute it again.
    pub fn build_block_on(
        &self,
        ancestors: &[&Executed],
        candidates: impl IntoIterator<Item = Transaction>,
        timestamp_ms: TimestampMs,
        proposer: IdentityId,
    ) -> Built {
        let tip = Tip::of(self, ancestors);
        let timestamp_ms = timestamp_ms.max(tip.timestamp_ms + 1);
        let ctx = BlockContext { height: tip.height + 1, timestamp_ms };
        let mut overlay = Overlay::new(self, ancestors);
        let mut txs = Vec::new();
        let mut skipped = Vec::new();
        let mut bytes = 0usize;
        let mut ops = 0usize;
        for tx in candidates {
            let tx_ops = tx.body().payload.ops().len();
            if txs.len() >= limits::BLOCK_TXS_MAX
                || bytes + tx.bytes().len() + 4 > limits::BLOCK_BYTES_MAX - 1024
                || ops + tx_ops > limits::BLOCK_OPS_MAX
            {
                break;
            }
            match overlay.execute(&tx, ctx) {
                Ok(_) => {
                    bytes += tx.bytes().len() + 4;
                    ops += tx_ops;
                    txs.push(tx);
                }
                Err(e) => skipped.push((tx, e)),
            }
        }
        let mut leaves = tip.pending_leaves;
        leaves.extend(txs.iter().map(|t| Hash(t.id().0)));
        let header = BlockHeader {
            chain_id: self.chain_id,
            height: ctx.height,
            parent: tip.hash,
            timestamp_ms,
            proposer,
            tx_count: txs.len() as u32,
            txs_root: txs_root(&txs),
            log_size: self.log.size() + leaves.len() as u64,
            log_root: self.log.root_with_appended(&leaves),
        };
        Built { block: Block { header, txs }, delta: overlay.into_delta(), skipped }
    }

    /// Checks that `block` validly extends this state: header links and fields, every
    /// transaction's rules in order, every signature (batch-verified, except those
    /// `signature_known_good` vouches for), and both Merkle roots. Returns the changes.
    ///
    /// `now_ms` is the local clock when judging a fresh proposal (bounds future timestamps);
    /// `None` when re-verifying stored history.
    pub fn verify_block(
        &self,
        block: &Block,
        now_ms: Option<TimestampMs>,
        signature_known_good: &dyn Fn(&TxId) -> bool,
    ) -> Result<Delta, BlockError> {
        self.verify_block_on(&[], block, now_ms, signature_known_good)
    }

    /// [`State::verify_block`] on top of `ancestors` (see [`State::build_block_on`]).
    pub fn verify_block_on(
        &self,
        ancestors: &[&Executed],
        block: &Block,
        now_ms: Option<TimestampMs>,
        signature_known_good: &dyn Fn(&TxId) -> bool,
    ) -> Result<Delta, BlockError> {
        let tip = Tip::of(self, ancestors);
        let h = &block.header;
        if h.chain_id != self.chain_id {
            return Err(BlockError::WrongChain);
        }
        if h.height != tip.height + 1 {
            return Err(BlockError::WrongHeight { expected: tip.height + 1, got: h.height });
        }
        if h.parent != tip.hash {
            return Err(BlockError::WrongParent);
        }
        if h.timestamp_ms <= tip.timestamp_ms {
            return Err(BlockError::TimestampNotIncreasing { parent_ms: tip.timestamp_ms, got_ms: h.timestamp_ms });
        }
        if let Some(now) = now_ms
            && h.timestamp_ms > now.saturating_add(limits::BLOCK_FUTURE_DRIFT_MS)
        {
            return Err(BlockError::TimestampInFuture { now_ms: now, got_ms: h.timestamp_ms });
        }
        if !self.validators.contains(&h.proposer) {
            return Err(BlockError::UnknownProposer);
        }
        if block.txs.len() > limits::BLOCK_TXS_MAX {
            return Err(BlockError::TooManyTransactions(block.txs.len()));
        }
        // Batches carry many operations each: the work of a block is bounded by operations.
        let ops: usize = block.txs.iter().map(|t| t.body().payload.ops().len()).sum();
        if ops > limits::BLOCK_OPS_MAX {
            return Err(BlockError::TooManyOperations(ops));
        }
        if h.tx_count as usize != block.txs.len() {
            return Err(BlockError::TxCountMismatch { header: h.tx_count, actual: block.txs.len() });
        }
        let ctx = BlockContext { height: h.height, timestamp_ms: h.timestamp_ms };
        let mut overlay = Overlay::new(self, ancestors);
        let mut to_verify: Vec<(usize, PublicKey, Vec<u8>, Signature)> = Vec::new();
        for (index, tx) in block.txs.iter().enumerate() {
            let key = overlay.execute(tx, ctx).map_err(|error| BlockError::InvalidTransaction {
                index,
                tx_id: tx.id(),
                error,
            })?;
            if !signature_known_good(&tx.id()) {
                to_verify.push((index, key, tx.signed_message(), *tx.signature()));
            }
        }
        let items: Vec<(PublicKey, &[u8], Signature)> =
            to_verify.iter().map(|(_, k, m, s)| (*k, m.as_slice(), *s)).collect();
        if let Err(e) = verify_batch(&items) {
            let index = match e {
                CryptoError::BadSignatureInBatch { index } => to_verify[index].0,
                _ => to_verify.first().map_or(0, |v| v.0),
            };
            return Err(BlockError::InvalidTransaction {
                index,
                tx_id: block.txs[index].id(),
                error: TxError::BadSignature,
            });
        }
        // Checked after the transactions so that a damaged transaction is reported as itself.
        if txs_root(&block.txs) != h.txs_root {
            return Err(BlockError::TxsRootMismatch);
        }
        let mut leaves = tip.pending_leaves;
        leaves.extend(block.txs.iter().map(|t| Hash(t.id().0)));
        let expected_size = self.log.size() + leaves.len() as u64;
        if h.log_size != expected_size {
            return Err(BlockError::LogSizeMismatch { header: h.log_size, expected: expected_size });
        }
        if self.log.root_with_appended(&leaves) != h.log_root {
            return Err(BlockError::LogRootMismatch);
        }
        Ok(overlay.into_delta())
    }

    /// Applies a block previously checked by [`State::verify_block`] against this same state.
    pub fn commit(&mut self, block: &Block, delta: &Delta) {
        assert_eq!(block.header.height, self.height + 1, "commit of a block that does not extend the state");
        assert_eq!(block.header.parent, self.head_hash, "commit of a block that does not extend the state");
        self.identities.apply(&delta.identities);
        self.records.apply(&delta.records);
        self.grants.apply(&delta.grants);
        self.category_keys.apply(&delta.category_keys);
        self.shared_keys.apply(&delta.shared_keys);
        self.grant_index.apply(&delta.grant_index);
        self.patient_grants.apply(&delta.patient_grants);
        self.rules.apply(&delta.rules);
        self.patient_rules.apply(&delta.patient_rules);
        self.reacting_rules.apply(&delta.reacting_rules);
        self.delegations.apply(&delta.delegations);
        self.directory.apply(&delta.directory);
        self.declared_break_glass.apply(&delta.declared_break_glass);
        for tx in &block.txs {
            self.log.push(Hash(tx.id().0));
        }
        // Pair assertion: the log we now hold is the one the header promised.
        debug_assert_eq!(self.log.root(), block.header.log_root);
        self.height = block.header.height;
        self.head_hash = block.hash();
        self.head_timestamp_ms = block.header.timestamp_ms;
    }

    /// Verifies and applies.
    pub fn apply_block(
        &mut self,
        block: &Block,
        now_ms: Option<TimestampMs>,
        signature_known_good: &dyn Fn(&TxId) -> bool,
    ) -> Result<(), BlockError> {
        let delta = self.verify_block(block, now_ms, signature_known_good)?;
        self.commit(block, &delta);
        Ok(())
    }
}

/// The block a new block builds on: the state's head or the newest unfinalized ancestor.
struct Tip {
    height: Height,
    hash: Hash,
    timestamp_ms: TimestampMs,
    /// Leaves of the unfinalized ancestors, not yet in the state's log.
    pending_leaves: Vec<Hash>,
}

impl Tip {
    fn of(state: &State, ancestors: &[&Executed]) -> Self {
        let pending_leaves = ancestors.iter().flat_map(|a| a.block.txs.iter().map(|t| Hash(t.id().0))).collect();
        match ancestors.last() {
            None => Self {
                height: state.height,
                hash: state.head_hash,
                timestamp_ms: state.head_timestamp_ms,
                pending_leaves,
            },
            Some(parent) => Self {
                height: parent.block.header.height,
                hash: parent.block.hash(),
                timestamp_ms: parent.block.header.timestamp_ms,
                pending_leaves,
            },
        }
    }
}

/// Whether `exists` finds a category key of (`organisation`, `patient`) in any category: one
/// lookup per category, so the cost does not grow with the data.
fn holds_a_category_key(
    organisation: &IdentityId,
    patient: &IdentityId,
    exists: impl Fn(&CategoryKeyId) -> bool,
) -> bool {
    medledger_types::CATEGORIES
        .iter()
        .any(|c| exists(&CategoryKeyId { custodian: *organisation, patient: *patient, category: (*c).to_owned() }))
}
