//! The replicated state and the rules that change it. Pure: block time is an input, the local
//! clock appears only as an optional bound on proposed timestamps, and nothing here does I/O.

mod types;

use std::collections::HashMap;

use medledger_crypto::{CryptoError, PublicKey, Signature, identity_id, verify_batch};
use medledger_merkle::MerkleLog;
use medledger_types::{Hash, Height, IdentityId, OrganisationKind, RecordId, Role, TimestampMs, TxId, limits};
pub use types::{
    BreakGlassReview, CategoryKeyId, CategoryKeyState, Delegation, DirectoryHead, Grant, GrantOrigin, Identity,
    RecordHead,
};

use crate::{
    block::{Block, BlockHeader, txs_root},
    error::{BlockError, TxError},
    genesis::Genesis,
    rules::{self, CommittedRecord, Derived, InstallContext, InstalledRule, RuleError, RuleView},
    tx::{AccessAction, AccessEvent, AccessOutcome, Payload, Purpose, ReviewVerdict, Scope, Transaction, actions},
};

/// Everything a block changes, computed by verification and applied by commit.
#[derive(Clone, Debug, Default)]
pub struct Delta {
    identities: HashMap<IdentityId, Identity>,
    records: HashMap<RecordId, RecordHead>,
    grants: HashMap<TxId, Grant>,
    category_keys: HashMap<CategoryKeyId, CategoryKeyState>,
    /// (patient, holder) -> the category keys of that patient the holder received by grant.
    shared_keys: HashMap<(IdentityId, IdentityId), Vec<CategoryKeyId>>,
    /// (patient, grantee) -> ids of the grants between them.
    grant_index: HashMap<(IdentityId, IdentityId), Vec<TxId>>,
    /// patient -> ids of every grant of the patient, oldest first.
    patient_grants: HashMap<IdentityId, Vec<TxId>>,
    rules: HashMap<TxId, InstalledRule>,
    /// patient -> ids of every rule installed for the patient, oldest first.
    patient_rules: HashMap<IdentityId, Vec<TxId>>,
    /// patient -> ids of the active rules that react to the patient's record commits, in
    /// installation order (the order they are evaluated in).
    reacting_rules: HashMap<IdentityId, Vec<TxId>>,
    /// patient -> every delegation of the patient, oldest first.
    delegations: HashMap<IdentityId, Vec<Delegation>>,
    directory: HashMap<RecordId, DirectoryHead>,
    /// practitioner -> ids of the break-glass declarations they made, oldest first.
    declared_break_glass: HashMap<IdentityId, Vec<TxId>>,
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

/// The state after some prefix of the chain.
#[derive(Clone, Debug)]
pub struct State {
    chain_id: Hash,
    chain_name: String,
    validators: Vec<IdentityId>,
    identities: HashMap<IdentityId, Identity>,
    records: HashMap<RecordId, RecordHead>,
    grants: HashMap<TxId, Grant>,
    category_keys: HashMap<CategoryKeyId, CategoryKeyState>,
    shared_keys: HashMap<(IdentityId, IdentityId), Vec<CategoryKeyId>>,
    grant_index: HashMap<(IdentityId, IdentityId), Vec<TxId>>,
    patient_grants: HashMap<IdentityId, Vec<TxId>>,
    rules: HashMap<TxId, InstalledRule>,
    patient_rules: HashMap<IdentityId, Vec<TxId>>,
    reacting_rules: HashMap<IdentityId, Vec<TxId>>,
    delegations: HashMap<IdentityId, Vec<Delegation>>,
    directory: HashMap<RecordId, DirectoryHead>,
    declared_break_glass: HashMap<IdentityId, Vec<TxId>>,
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
        let mut identities = HashMap::new();
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
            records: HashMap::new(),
            grants: HashMap::new(),
            category_keys: HashMap::new(),
            shared_keys: HashMap::new(),
            grant_index: HashMap::new(),
            patient_grants: HashMap::new(),
            rules: HashMap::new(),
            patient_rules: HashMap::new(),
            reacting_rules: HashMap::new(),
            delegations: HashMap::new(),
            directory: HashMap::new(),
            declared_break_glass: HashMap::new(),
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

    /// The grants `patient` gave `grantee`, oldest first.
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
    pub fn commit(&mut self, block: &Block, delta: Delta) {
        assert_eq!(block.header.height, self.height + 1, "commit of a block that does not extend the state");
        assert_eq!(block.header.parent, self.head_hash, "commit of a block that does not extend the state");
        self.identities.extend(delta.identities);
        self.records.extend(delta.records);
        self.grants.extend(delta.grants);
        self.category_keys.extend(delta.category_keys);
        self.shared_keys.extend(delta.shared_keys);
        self.grant_index.extend(delta.grant_index);
        self.patient_grants.extend(delta.patient_grants);
        self.rules.extend(delta.rules);
        self.patient_rules.extend(delta.patient_rules);
        self.reacting_rules.extend(delta.reacting_rules);
        self.delegations.extend(delta.delegations);
        self.directory.extend(delta.directory);
        self.declared_break_glass.extend(delta.declared_break_glass);
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
        self.commit(block, delta);
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

/// Uncommitted changes layered over a state, and over the changes of unfinalized ancestor
/// blocks, while a block is built or verified.
struct Overlay<'a> {
    base: &'a State,
    /// Oldest first; lookups search the newest first.
    ancestors: Vec<&'a Delta>,
    delta: Delta,
}

impl<'a> Overlay<'a> {
    fn new(base: &'a State, ancestors: &[&'a Executed]) -> Self {
        Self { base, ancestors: ancestors.iter().map(|a| &a.delta).collect(), delta: Delta::default() }
    }

    fn into_delta(self) -> Delta {
        self.delta
    }

    /// Looks `key` up in the ancestors' changes, newest first, then in the base state.
    fn inherited<K: std::hash::Hash + Eq, V>(
        &self,
        key: &K,
        field: impl Fn(&'a Delta) -> &'a HashMap<K, V>,
        base: &'a HashMap<K, V>,
    ) -> Option<&'a V> {
        self.ancestors.iter().rev().find_map(|d| field(d).get(key)).or_else(|| base.get(key))
    }

    fn identity(&self, id: &IdentityId) -> Option<&Identity> {
        self.delta.identities.get(id).or_else(|| self.inherited(id, |d| &d.identities, &self.base.identities))
    }

    fn identity_mut(&mut self, id: &IdentityId) -> &mut Identity {
        if !self.delta.identities.contains_key(id) {
            let current = self.identity(id).expect("identity checked before mutation").clone();
            self.delta.identities.insert(*id, current);
        }
        self.delta.identities.get_mut(id).expect("inserted above")
    }

    fn record(&self, id: &RecordId) -> Option<&RecordHead> {
        self.delta.records.get(id).or_else(|| self.inherited(id, |d| &d.records, &self.base.records))
    }

    fn directory_entry(&self, id: &RecordId) -> Option<&DirectoryHead> {
        self.delta.directory.get(id).or_else(|| self.inherited(id, |d| &d.directory, &self.base.directory))
    }

    fn grant(&self, id: &TxId) -> Option<&Grant> {
        self.delta.grants.get(id).or_else(|| self.inherited(id, |d| &d.grants, &self.base.grants))
    }

    fn category_key(&self, id: &CategoryKeyId) -> Option<&CategoryKeyState> {
        self.delta.category_keys.get(id).or_else(|| self.inherited(id, |d| &d.category_keys, &self.base.category_keys))
    }

    fn grant_ids(&self, patient: IdentityId, grantee: IdentityId) -> Option<&Vec<TxId>> {
        let key = (patient, grantee);
        self.delta.grant_index.get(&key).or_else(|| self.inherited(&key, |d| &d.grant_index, &self.base.grant_index))
    }

    fn shared_keys(&self, patient: IdentityId, holder: IdentityId) -> Option<&Vec<CategoryKeyId>> {
        let key = (patient, holder);
        self.delta.shared_keys.get(&key).or_else(|| self.inherited(&key, |d| &d.shared_keys, &self.base.shared_keys))
    }

    fn patient_grant_ids(&self, patient: &IdentityId) -> Option<&Vec<TxId>> {
        self.delta
            .patient_grants
            .get(patient)
            .or_else(|| self.inherited(patient, |d| &d.patient_grants, &self.base.patient_grants))
    }

    fn installed_rule(&self, id: &TxId) -> Option<&InstalledRule> {
        self.delta.rules.get(id).or_else(|| self.inherited(id, |d| &d.rules, &self.base.rules))
    }

    fn patient_rule_ids(&self, patient: &IdentityId) -> Option<&Vec<TxId>> {
        self.delta
            .patient_rules
            .get(patient)
            .or_else(|| self.inherited(patient, |d| &d.patient_rules, &self.base.patient_rules))
    }

    fn reacting_rule_ids(&self, patient: &IdentityId) -> Option<&Vec<TxId>> {
        self.delta
            .reacting_rules
            .get(patient)
            .or_else(|| self.inherited(patient, |d| &d.reacting_rules, &self.base.reacting_rules))
    }

    fn declared_break_glass(&self, practitioner: &IdentityId) -> Option<&Vec<TxId>> {
        self.delta
            .declared_break_glass
            .get(practitioner)
            .or_else(|| self.inherited(practitioner, |d| &d.declared_break_glass, &self.base.declared_break_glass))
    }

    fn delegations(&self, patient: &IdentityId) -> Option<&Vec<Delegation>> {
        self.delta
            .delegations
            .get(patient)
            .or_else(|| self.inherited(patient, |d| &d.delegations, &self.base.delegations))
    }

    /// Whether `signer` acts as `patient` at block time `at_ms`: is the patient, or a live
    /// delegate of theirs. A dismissal earlier in the same block already counts.
    fn acts_for_patient(&self, signer: &IdentityId, patient: &IdentityId, at_ms: TimestampMs) -> bool {
        signer == patient
            || self.delegations(patient).is_some_and(|ds| ds.iter().any(|d| d.delegate == *signer && d.is_live(at_ms)))
    }

    /// Adds a grant and indexes it by (patient, grantee) and by patient.
    fn insert_grant(&mut self, grant: Grant) {
        let (id, patient, grantee) = (grant.id, grant.patient, grant.grantee);
        self.delta.grants.insert(id, grant);
        let mut ids = self.grant_ids(patient, grantee).cloned().unwrap_or_default();
        ids.push(id);
        self.delta.grant_index.insert((patient, grantee), ids);
        let mut ids = self.patient_grant_ids(&patient).cloned().unwrap_or_default();
        ids.push(id);
        self.delta.patient_grants.insert(patient, ids);
    }

    /// Revokes a live grant at `height` on `by`'s transaction, and marks every category key of
    /// the patient that the grantee holds as needing rotation, so new versions never reach the
    /// grantee.
    fn revoke_grant(&mut self, grant_id: &TxId, (height, at_ms): (Height, TimestampMs), by: IdentityId) {
        let Some(grant) = self.grant(grant_id) else { return };
        if grant.revoked_at.is_some() {
            return;
        }
        let mut revoked = grant.clone();
        revoked.revoked_at = Some(height);
        revoked.revoked_at_ms = Some(at_ms);
        revoked.revoked_by = Some(by);
        let (patient, grantee) = (revoked.patient, revoked.grantee);
        self.delta.grants.insert(*grant_id, revoked);
        for key_id in self.shared_keys(patient, grantee).cloned().unwrap_or_default() {
            if let Some(key) = self.category_key(&key_id)
                && key.holders.iter().any(|(h, _)| *h == grantee)
            {
                let mut key = key.clone();
                key.rotation_required = true;
                self.delta.category_keys.insert(key_id, key);
            }
        }
    }

    /// The ledger's own checks on access a rule derived for `patient`, whatever the rule's
    /// code: read-only, resting on an active rule the patient signed, a valid grantee, a
    /// well-formed scope and period. `installing` is the rule being installed, with whether its
    /// signer acts as the patient,
    /// which is not in the state yet.
    fn check_derived(
        &self,
        d: &Derived,
        patient: &IdentityId,
        installing: Option<(TxId, bool)>,
        at_ms: TimestampMs,
    ) -> Result<(), RuleError> {
        let authority_ok = match installing {
            Some((id, for_patient)) if id == d.authority => for_patient,
            _ => self
                .installed_rule(&d.authority)
                .is_some_and(|r| r.patient == *patient && r.is_patients_own() && r.is_active()),
        };
        if !authority_ok {
            return Err(RuleError::InvalidDerivation("access must rest on an active rule the patient signed"));
        }
        if !rules::may_be_grantee(self, &d.grantee) {
            return Err(RuleError::InvalidDerivation("grantee must be an organisation, practitioner or system client"));
        }
        if d.valid_until_ms <= d.valid_from_ms || d.valid_until_ms <= at_ms {
            return Err(RuleError::InvalidDerivation("period is empty or already over"));
        }
        let scope_ok = match &d.scope {
            Scope::All => true,
            Scope::Categories(c) => !c.is_empty() && c.iter().all(|c| medledger_types::is_category(c)),
            Scope::ResourceTypes(t) => !t.is_empty() && t.iter().all(|t| check_resource_type(t).is_ok()),
            Scope::Records(r) => {
                !r.is_empty()
                    && r.len() <= limits::SCOPE_ITEMS_MAX
                    && r.iter().all(|r| self.record(r).is_some_and(|h| h.patient == *patient))
            }
        };
        if !scope_ok {
            return Err(RuleError::InvalidDerivation("scope is not a valid scope of this patient's records"));
        }
        Ok(())
    }

    /// Stores access derived by `rule_id` as read-only grants with ids bound to the source
    /// transaction (signed by `signed_by`), the rule and the position, so every node derives
    /// the same ids.
    fn insert_derived(
        &mut self,
        derived: Vec<Derived>,
        patient: IdentityId,
        rule_id: TxId,
        (source, signed_by): (TxId, IdentityId),
        height: Height,
    ) -> Vec<TxId> {
        let mut ids = Vec::with_capacity(derived.len());
        for (index, d) in derived.into_iter().enumerate() {
            let id = derived_grant_id(&source, &rule_id, index as u32);
            self.insert_grant(Grant {
                id,
                patient,
                grantee: d.grantee,
                scope: d.scope,
                actions: actions::READ,
                purpose: d.purpose,
                valid_from_ms: d.valid_from_ms,
                valid_until_ms: d.valid_until_ms,
                granted_at: height,
                signed_by,
                revoked_at: None,
                revoked_at_ms: None,
                revoked_by: None,
                origin: GrantOrigin::Rule { rule_id, authority: d.authority, category_keys: d.category_keys },
            });
            ids.push(id);
        }
        ids
    }

    /// Runs the patient's reacting rules, in installation order, on a committed record version.
    fn react_to_record(&mut self, source: (TxId, IdentityId), patient: IdentityId, record: &CommittedRecord<'_>) {
        let rule_ids = self.reacting_rule_ids(&patient).cloned().unwrap_or_default();
        for rule_id in rule_ids {
            let Some(rule) = self.installed_rule(&rule_id).cloned() else { continue };
            let Some(kind) = rules::lookup(&rule.kind) else { continue };
            // Access failing the ledger's checks is dropped, never stored: a faulty rule can
            // only share less, and cannot block the patient's records from being written.
            let derived: Vec<Derived> = kind
                .on_record_commit(&rule, record)
                .into_iter()
                .filter(|d| self.check_derived(d, &patient, None, record.timestamp_ms).is_ok())
                .collect();
            self.insert_derived(derived, patient, rule_id, source, record.height);
        }
    }

    /// Until when `holder` may hold `key` received at `at_ms` (see [`State::key_holding_until`]).
    fn key_holding_until(&self, key: &CategoryKeyId, holder: &IdentityId, at_ms: TimestampMs) -> Option<TimestampMs> {
        if *holder == key.patient || *holder == key.custodian {
            return Some(TimestampMs::MAX);
        }
        let ids = self.grant_ids(key.patient, *holder)?;
        ids.iter()
            .filter_map(|id| self.grant(id))
            .filter(|g| g.may_share_key(&key.category, at_ms))
            .map(|g| g.valid_until_ms)
            .max()
    }

    /// Whether `organisation` is a custodian of `patient`'s data: it holds a category key of
    /// the patient, which exists from before its first record of the patient in that category.
    /// At most one lookup per category, so this costs the same however much data there is.
    fn custodies(&self, organisation: &IdentityId, patient: &IdentityId) -> bool {
        holds_a_category_key(organisation, patient, |id| self.category_key(id).is_some())
    }

    /// One access event of an `AccessEvents` transaction (see there).
    fn check_access_event(&self, event: &AccessEvent, recorder: &IdentityId, ctx: BlockContext) -> Result<(), TxError> {
        let accessor = self.require(&event.accessor, "accessor")?;
        let staff_of = match accessor.role {
            Role::Practitioner | Role::SystemClient => accessor.organisation,
            Role::Organisation => Some(event.accessor),
            _ => None,
        };
        if self.require(&event.patient, "patient")?.role != Role::Patient {
            return Err(TxError::InvalidField("patient must be a patient identity"));
        }
        let record = match event.record {
            Some((record_id, version)) => match self.record(&record_id) {
                Some(head) if head.patient == event.patient && version >= 1 && version <= head.latest_version => {
                    Some((record_id, head))
                }
                _ => {
                    return Err(TxError::InvalidField("access event names an unknown record version of this patient"));
                }
            },
            None => None,
        };
        if event.at_ms > ctx.timestamp_ms.saturating_add(limits::BLOCK_FUTURE_DRIFT_MS) {
            return Err(TxError::InvalidField("access event is dated after its block"));
        }
        if event.at_ms.saturating_add(limits::ACCESS_EVENT_AGE_MAX_MS) < ctx.timestamp_ms {
            return Err(TxError::InvalidField("access event is older than an access event may be recorded"));
        }
        check_reason(&event.reason)?;
        let grant = match &event.grant_id {
            Some(g) => Some(self.grant(g).ok_or(TxError::UnknownGrant(*g))?),
            None => None,
        };
        match event.outcome {
            AccessOutcome::Denied if grant.is_some() => {
                Err(TxError::InvalidField("a denied access is not under a grant"))
            }
            AccessOutcome::Denied => Ok(()),
            AccessOutcome::BreakGlass if !grant.is_some_and(|g| g.is_break_glass()) => {
                Err(TxError::InvalidField("a break-glass access names its break-glass declaration"))
            }
            AccessOutcome::Allowed if grant.is_some_and(|g| g.is_break_glass()) => {
                Err(TxError::InvalidField("an access under break-glass is recorded as break-glass"))
            }
            // An allowed access is recorded by the node that served it: one of the accessor's own
            // organisation, or of the record's custodian (for an event naming no record, of a
            // custodian of the patient); a patient reads their own data through any node.
            AccessOutcome::Allowed | AccessOutcome::BreakGlass
                if !(event.accessor == event.patient || {
                    let recorder_org = self.identity(recorder).and_then(|i| i.organisation);
                    recorder_org.is_some()
                        && (recorder_org == staff_of
                            || match record {
                                Some((_, head)) => recorder_org == Some(head.custodian),
                                None => recorder_org.is_some_and(|o| self.custodies(&o, &event.patient)),
                            })
                }) =>
            {
                Err(TxError::NotAuthorised(
                    "an allowed access is recorded by a node of the accessor's organisation or of the record's custodian",
                ))
            }
            AccessOutcome::Allowed | AccessOutcome::BreakGlass => match grant {
                Some(grant) => {
                    let needed = if event.action == AccessAction::Write { actions::WRITE } else { actions::READ };
                    let grantee_ok = grant.grantee == event.accessor || Some(grant.grantee) == staff_of;
                    let covers =
                        record.is_none_or(|(id, head)| grant.scope.covers(&id, &head.resource_type, &head.category));
                    let in_period = grant.valid_from_ms <= event.at_ms
                        && event.at_ms < grant.valid_until_ms
                        && grant.revoked_at_ms.is_none_or(|revoked| event.at_ms < revoked);
                    if grant.patient != event.patient
                        || !grantee_ok
                        || !covers
                        || !in_period
                        || grant.actions & needed != needed
                        || grant.purpose != event.purpose
                    {
                        return Err(TxError::InvalidField(
                            "an allowed access names a grant that did not allow it (accessor, record, period, action or purpose)",
                        ));
                    }
                    Ok(())
                }
                // Without a grant: the patient themself, or the custodian and its staff.
                None => {
                    let custodian_ok = match record {
                        Some((_, head)) => staff_of == Some(head.custodian),
                        None => staff_of.is_some_and(|org| self.custodies(&org, &event.patient)),
                    };
                    if event.accessor == event.patient || custodian_ok {
                        Ok(())
                    } else {
                        Err(TxError::InvalidField(
                            "an allowed access without a grant is by the patient or the record's custodian",
                        ))
                    }
                }
            },
        }
    }

    fn require(&self, id: &IdentityId, what: &'static str) -> Result<&Identity, TxError> {
        self.identity(id).ok_or(TxError::UnknownIdentity { what, id: *id })
    }

    /// Runs a batch's operations in a child overlay, so that either all of them apply or none.
    fn execute_batch(
        &mut self,
        ops: &[Payload],
        signer: (IdentityId, Option<Role>, PublicKey),
        tx_id: TxId,
        ctx: BlockContext,
    ) -> Result<(), TxError> {
        let (signer_id, role, _) = signer;
        let organisation = self.require(&signer_id, "signer")?.organisation;
        if role != Some(Role::Validator) || organisation.is_none() {
            return Err(TxError::NotAuthorised("only a member organisation's validator signs a batch"));
        }
        if ops.is_empty() {
            return Err(TxError::InvalidField("a batch needs at least one operation"));
        }
        let delta = {
            let mut child = Overlay {
                base: self.base,
                ancestors: self.ancestors.iter().copied().chain(std::iter::once(&self.delta)).collect(),
                delta: Delta::default(),
            };
            for (index, op) in ops.iter().enumerate() {
                let allowed = matches!(
                    op,
                    Payload::RegisterIdentity { role: Role::Patient, .. }
                        | Payload::KeyShare { .. }
                        | Payload::RecordCommit { .. }
                        | Payload::DirectoryPut { .. }
                );
                let result = if allowed {
                    // Rules reacting to several records of one batch derive distinct grant ids.
                    child.apply_op(op, signer, (tx_id, batch_op_id(&tx_id, index as u32)), ctx)
                } else {
                    Err(TxError::InvalidField(
                        "a batch holds only patient registrations, key shares, record commits and directory entries",
                    ))
                };
                result.map_err(|error| TxError::InBatch { index, error: Box::new(error) })?;
            }
            child.delta
        };
        self.delta.merge(delta);
        Ok(())
    }

    /// Checks one operation signed by `signer` (id, role before the transaction, key) and,
    /// only if every check passes, applies it. `ids` is the transaction's id and the id rules
    /// derive grants from (the same, except inside a batch).
    fn apply_op(
        &mut self,
        op: &Payload,
        (signer, role, key): (IdentityId, Option<Role>, PublicKey),
        (tx_id, source_id): (TxId, TxId),
        ctx: BlockContext,
    ) -> Result<(), TxError> {
        match op {
            Payload::RegisterIdentity { role: new_role, signing_key, encryption_key, organisation, name } => {
                let id = identity_id(signing_key);
                if self.identity(&id).is_some() {
                    return Err(TxError::AlreadyRegistered(id));
                }
                match new_role {
                    Role::Organisation | Role::Validator => {
                        return Err(TxError::NotAuthorised(
                            "organisations and validators join through genesis or governance, not registration",
                        ));
                    }
                    Role::Practitioner | Role::SystemClient => {
                        if role != Some(Role::Organisation) {
                            return Err(TxError::NotAuthorised(
                                "only a member organisation registers its practitioners and system clients",
                            ));
                        }
                        if *organisation != Some(signer) {
                            return Err(TxError::InvalidField("organisation must be the registering organisation"));
                        }
                        check_name(name)?;
                    }
                    Role::Patient => {
                        // Registration is an act of a member organisation (its staff, clients or
                        // node, which check who the patient is), with the patient's own public
                        // keys: a free self-registered identity costs an attacker nothing and
                        // could spam reads, tokens and the mempool.
                        // Of a care provider: insurers and research institutes enrol no patients
                        // (every identity multiplies the per-identity budgets of every node).
                        let registrar_org = match role {
                            Some(Role::Organisation) => Some(signer),
                            Some(Role::Validator | Role::Practitioner | Role::SystemClient) => {
                                self.identity(&signer).and_then(|i| i.organisation)
                            }
                            _ => None,
                        };
                        let care_provider = registrar_org
                            .and_then(|o| self.identity(&o))
                            .is_some_and(|o| o.kind == Some(OrganisationKind::CareProvider));
                        if !care_provider {
                            return Err(TxError::NotAuthorised(
                                "patients are registered by a care-providing member organisation, its staff or its node",
                            ));
                        }
                        if organisation.is_some() {
                            return Err(TxError::InvalidField("patients do not belong to an organisation"));
                        }
                        if !name.is_empty() {
                            return Err(TxError::InvalidField("patient names are PHI and never go on-chain"));
                        }
                    }
                }
                let identity = Identity {
                    id,
                    role: *new_role,
                    signing_key: *signing_key,
                    encryption_key: *encryption_key,
                    organisation: *organisation,
                    kind: None,
                    // Only patients are registered with keys someone else may hold.
                    registered_by: match new_role {
                        Role::Patient => self.identity(&signer).and_then(|i| i.organisation).or(Some(signer)),
                        _ => None,
                    },
                    key_rotations: 0,
                    name: name.clone(),
                    next_nonce: 0,
                    registered_at: ctx.height,
                };
                self.delta.identities.insert(id, identity);
            }
            Payload::RotateKey { signing_key, encryption_key } => {
                if *signing_key == key {
                    return Err(TxError::InvalidField("new signing key equals the current one"));
                }
                let who = self.identity_mut(&signer);
                who.signing_key = *signing_key;
                who.encryption_key = *encryption_key;
                who.key_rotations = who.key_rotations.saturating_add(1);
            }
            Payload::RecordCommit {
                record_id,
                version,
                patient,
                custodian,
                author,
                resource_type,
                category,
                key_epoch,
                ciphertext_hash: _,
                ciphertext_bytes,
                wrapped_data_key: _,
            } => {
                let custodian_identity = self.require(custodian, "custodian")?;
                if custodian_identity.role != Role::Organisation {
                    return Err(TxError::InvalidField("custodian must be a member organisation"));
                }
                let author_identity = self.require(author, "author")?;
                let author_writes_for_custodian = *author == *custodian
                    || (matches!(author_identity.role, Role::Practitioner | Role::SystemClient)
                        && author_identity.organisation == Some(*custodian));
                if !author_writes_for_custodian {
                    return Err(TxError::NotAuthorised(
                        "the author must be the custodian or one of its staff or clients",
                    ));
                }
                // The author signs, or the custodian's node signs on the author's behalf.
                let signer_identity = self.require(&signer, "signer")?;
                let node_of_custodian =
                    signer_identity.role == Role::Validator && signer_identity.organisation == Some(*custodian);
                if signer != *author && !node_of_custodian {
                    return Err(TxError::NotAuthorised("a record is signed by its author or by the custodian's node"));
                }
                if self.require(patient, "patient")?.role != Role::Patient {
                    return Err(TxError::InvalidField("patient must be a patient identity"));
                }
                check_resource_type(resource_type)?;
                if !medledger_types::categories_of_resource_type(resource_type).contains(&category.as_str()) {
                    return Err(TxError::InvalidField("category does not fit the resource type"));
                }
                if *ciphertext_bytes == 0 || *ciphertext_bytes > limits::RECORD_CIPHERTEXT_BYTES_MAX {
                    return Err(TxError::InvalidField("ciphertext length out of range"));
                }
                if self.directory_entry(record_id).is_some() {
                    return Err(TxError::InvalidField("the id is a directory entry's"));
                }
                let mut previous_versions = Vec::new();
                match self.record(record_id) {
                    None if *version == 1 => {}
                    None => return Err(TxError::InvalidField("the first version of a record is 1")),
                    Some(head) => {
                        previous_versions = head.versions.clone();
                        if head.patient != *patient || head.custodian != *custodian {
                            return Err(TxError::InvalidField("patient and custodian of a record never change"));
                        }
                        if head.resource_type != *resource_type || head.category != *category {
                            return Err(TxError::InvalidField("resource type and category of a record never change"));
                        }
                        if *version != head.latest_version + 1 {
                            return Err(TxError::InvalidField("version must be the latest version plus one"));
                        }
                    }
                }
                let key_id = CategoryKeyId { custodian: *custodian, patient: *patient, category: category.clone() };
                match self.category_key(&key_id) {
                    None => {
                        return Err(TxError::InvalidField(
                            "no category key yet: share one with the patient and the custodian first",
                        ));
                    }
                    Some(key) if key.epoch != *key_epoch => {
                        return Err(TxError::InvalidField("record must use the current epoch of its category key"));
                    }
                    Some(key) if key.must_rotate(ctx.timestamp_ms) => {
                        return Err(TxError::InvalidField(
                            "category key must be rotated (a grant it was shared under has ended) before new records are written",
                        ));
                    }
                    Some(_) => {}
                }
                self.delta.records.insert(
                    *record_id,
                    RecordHead {
                        patient: *patient,
                        custodian: *custodian,
                        resource_type: resource_type.clone(),
                        category: category.clone(),
                        latest_version: *version,
                        versions: {
                            previous_versions.push(tx_id);
                            previous_versions
                        },
                    },
                );
                let committed = CommittedRecord {
                    record_id: *record_id,
                    version: *version,
                    custodian: *custodian,
                    resource_type,
                    category,
                    height: ctx.height,
                    timestamp_ms: ctx.timestamp_ms,
                };
                self.react_to_record((source_id, signer), *patient, &committed);
            }
            Payload::ConsentGrant {
                patient,
                grantee,
                scope,
                actions: acts,
                purpose: _,
                valid_from_ms,
                valid_until_ms,
            } => {
                if self.require(patient, "patient")?.role != Role::Patient {
                    return Err(TxError::InvalidField("patient must be a patient identity"));
                }
                if !self.acts_for_patient(&signer, patient, ctx.timestamp_ms) {
                    return Err(TxError::NotAuthorised(
                        "only the patient or a live delegate of theirs grants access to their data",
                    ));
                }
                let grantee_role = self.require(grantee, "grantee")?.role;
                if !matches!(grantee_role, Role::Organisation | Role::Practitioner | Role::SystemClient) {
                    return Err(TxError::InvalidField(
                        "grantee must be an organisation, practitioner or system client",
                    ));
                }
                if *acts == 0 || *acts & !actions::ALL != 0 {
                    return Err(TxError::InvalidField("actions must be a non-empty subset of read and write"));
                }
                if valid_until_ms <= valid_from_ms {
                    return Err(TxError::InvalidField("validity period ends before it starts"));
                }
                if *valid_until_ms <= ctx.timestamp_ms {
                    return Err(TxError::InvalidField("grant has already expired"));
                }
                match scope {
                    Scope::All => {}
                    Scope::ResourceTypes(types) => {
                        if types.is_empty() {
                            return Err(TxError::InvalidField("empty resource type scope"));
                        }
                        types.iter().try_for_each(|t| check_resource_type(t))?;
                    }
                    Scope::Categories(categories) => {
                        if categories.is_empty() || !categories.iter().all(|c| medledger_types::is_category(c)) {
                            return Err(TxError::InvalidField("category scope must name known categories"));
                        }
                    }
                    Scope::Records(records) => {
                        if records.is_empty() {
                            return Err(TxError::InvalidField("empty record scope"));
                        }
                        for r in records {
                            match self.record(r) {
                                Some(head) if head.patient == *patient => {}
                                _ => {
                                    return Err(TxError::InvalidField(
                                        "scope names a record that is not the patient's",
                                    ));
                                }
                            }
                        }
                    }
                }
                let Payload::ConsentGrant { purpose, .. } = op else { unreachable!() };
                self.insert_grant(Grant {
                    id: tx_id,
                    patient: *patient,
                    grantee: *grantee,
                    scope: scope.clone(),
                    actions: *acts,
                    purpose: *purpose,
                    valid_from_ms: *valid_from_ms,
                    valid_until_ms: *valid_until_ms,
                    granted_at: ctx.height,
                    signed_by: signer,
                    revoked_at: None,
                    revoked_at_ms: None,
                    revoked_by: None,
                    origin: GrantOrigin::Consent,
                });
            }
            Payload::ConsentRevoke { grant_id } => {
                let grant = self.grant(grant_id).ok_or(TxError::UnknownGrant(*grant_id))?;
                if !self.acts_for_patient(&signer, &grant.patient, ctx.timestamp_ms) {
                    return Err(TxError::NotAuthorised(
                        "only the patient whose data it covers, or a live delegate of theirs, revokes a grant",
                    ));
                }
                if grant.revoked_at.is_some() {
                    return Err(TxError::InvalidField("grant is already revoked"));
                }
                // Any grant of the patient: consent, break-glass or rule-derived.
                self.revoke_grant(grant_id, (ctx.height, ctx.timestamp_ms), signer);
            }
            Payload::AccessEvents { events } => {
                // Only the node that made a decision records it: a validator, shown as the
                // recorder of every event it signs. An allowed event must name a basis the
                // ledger agrees with, so no node can claim someone read under a grant, a
                // custody or a break-glass declaration they never had.
                if role != Some(Role::Validator) {
                    return Err(TxError::NotAuthorised(
                        "access events are recorded only by the node that decided them: a validator",
                    ));
                }
                if events.is_empty() {
                    return Err(TxError::InvalidField("an access-events transaction needs at least one event"));
                }
                for event in events {
                    self.check_access_event(event, &signer, ctx)?;
                }
            }
            Payload::KeyShare { custodian, patient, category, epoch, shares } => {
                if self.require(custodian, "custodian")?.role != Role::Organisation {
                    return Err(TxError::InvalidField("custodian must be a member organisation"));
                }
                let signer_identity = self.require(&signer, "signer")?;
                let acts_for_custodian = signer == *custodian
                    || (matches!(signer_identity.role, Role::Practitioner | Role::SystemClient | Role::Validator)
                        && signer_identity.organisation == Some(*custodian));
                if !acts_for_custodian {
                    return Err(TxError::NotAuthorised(
                        "only the custodian or its staff, clients and nodes share its keys",
                    ));
                }
                if self.require(patient, "patient")?.role != Role::Patient {
                    return Err(TxError::InvalidField("patient must be a patient identity"));
                }
                if !medledger_types::is_category(category) {
                    return Err(TxError::InvalidField("unknown category"));
                }
                if shares.is_empty() {
                    return Err(TxError::InvalidField("a key share needs at least one recipient"));
                }
                let key_id = CategoryKeyId { custodian: *custodian, patient: *patient, category: category.clone() };
                let current = self.category_key(&key_id).cloned();
                let current_epoch = current.as_ref().map_or(0, |k| k.epoch);
                let mut state = if *epoch == current_epoch + 1 {
                    // A new key: it must reach the patient and the custodian.
                    let recipients: Vec<IdentityId> = shares.iter().map(|e| e.recipient).collect();
                    if !recipients.contains(patient) || !recipients.contains(custodian) {
                        return Err(TxError::InvalidField(
                            "a new category key must be shared with the patient and the custodian",
                        ));
                    }
                    let mut past = current.as_ref().map(|k| k.past.clone()).unwrap_or_default();
                    if let Some(previous) = &current {
                        past.push((previous.epoch, previous.holders.clone()));
                    }
                    CategoryKeyState {
                        epoch: *epoch,
                        holders: Vec::new(),
                        rotation_required: false,
                        past,
                        shared_until_ms: TimestampMs::MAX,
                    }
                } else if *epoch == current_epoch && current_epoch > 0 {
                    current.expect("epoch above zero exists")
                } else {
                    return Err(TxError::InvalidField("key share must be for the current epoch or the next"));
                };
                let mut seen = std::collections::HashSet::new();
                let mut shared_by_grant = Vec::new();
                for entry in shares {
                    if !seen.insert(entry.recipient) || state.holders.iter().any(|(h, _)| *h == entry.recipient) {
                        return Err(TxError::InvalidField("recipient already holds this key"));
                    }
                    self.require(&entry.recipient, "key share recipient")?;
                    // Consent decides who may receive keys: never anyone else, and the epoch ends
                    // for new records when the recipient's grant does.
                    let Some(until) = self.key_holding_until(&key_id, &entry.recipient, ctx.timestamp_ms) else {
                        return Err(TxError::NotAuthorised(
                            "recipient is not the patient, the custodian or a live grantee covering this whole category",
                        ));
                    };
                    state.shared_until_ms = state.shared_until_ms.min(until);
                    if entry.recipient != *patient && entry.recipient != *custodian {
                        shared_by_grant.push(entry.recipient);
                    }
                    state.holders.push((entry.recipient, tx_id));
                }
                for holder in shared_by_grant {
                    let mut keys = self.shared_keys(*patient, holder).cloned().unwrap_or_default();
                    if !keys.contains(&key_id) {
                        keys.push(key_id.clone());
                    }
                    self.delta.shared_keys.insert((*patient, holder), keys);
                }
                self.delta.category_keys.insert(key_id, state);
            }
            Payload::BreakGlass { patient, reason, window_ms } => {
                if role != Some(Role::Practitioner) {
                    return Err(TxError::NotAuthorised("only a practitioner declares break-glass access"));
                }
                // Emergencies are treated by care providers: an insurer's or a research
                // institute's staff have no emergency that justifies reading without consent.
                let declarer_org = self.require(&signer, "signer")?.organisation;
                let care_provider = declarer_org
                    .and_then(|o| self.identity(&o))
                    .is_some_and(|o| o.kind == Some(OrganisationKind::CareProvider));
                if !care_provider {
                    return Err(TxError::NotAuthorised(
                        "only clinicians of a care-providing organisation declare break-glass access",
                    ));
                }
                // Capped: a practitioner's declarations must be reviewed before more are made,
                // and one open window per patient is enough.
                let declared = self.declared_break_glass(&signer).cloned().unwrap_or_default();
                if declared
                    .iter()
                    .filter_map(|id| self.grant(id))
                    .any(|g| g.patient == *patient && g.is_live(ctx.timestamp_ms))
                {
                    return Err(TxError::InvalidField(
                        "this practitioner's break-glass access to this patient is still open",
                    ));
                }
                // Recent ones only: a declaration nobody reviews (a patient who never can, say)
                // must not bar the clinician from emergencies for good.
                let recent = ctx.timestamp_ms.saturating_sub(limits::BREAK_GLASS_REVIEW_WINDOW_MS);
                let unreviewed = declared
                    .iter()
                    .filter_map(|id| self.grant(id))
                    .filter(|g| g.needs_review() && g.valid_from_ms >= recent)
                    .count();
                if unreviewed >= limits::BREAK_GLASS_UNREVIEWED_PER_PRACTITIONER_MAX {
                    return Err(TxError::NotAuthorised(
                        "this practitioner's earlier break-glass accesses await review: no more until reviewed",
                    ));
                }
                if self.require(patient, "patient")?.role != Role::Patient {
                    return Err(TxError::InvalidField("patient must be a patient identity"));
                }
                if reason.is_empty() {
                    return Err(TxError::InvalidField("break-glass access needs a reason code"));
                }
                check_reason(reason)?;
                if !(limits::BREAK_GLASS_WINDOW_MIN_MS..=limits::BREAK_GLASS_WINDOW_MAX_MS).contains(window_ms) {
                    return Err(TxError::InvalidField("break-glass window must be 1 minute to 24 hours"));
                }
                self.insert_grant(Grant {
                    id: tx_id,
                    patient: *patient,
                    grantee: signer,
                    scope: Scope::All,
                    actions: actions::READ,
                    purpose: Purpose::Emergency,
                    valid_from_ms: ctx.timestamp_ms,
                    valid_until_ms: ctx.timestamp_ms.saturating_add(*window_ms),
                    granted_at: ctx.height,
                    signed_by: signer,
                    revoked_at: None,
                    revoked_at_ms: None,
                    revoked_by: None,
                    origin: GrantOrigin::BreakGlass { reason: reason.clone(), review: None },
                });
                let mut declared = declared;
                declared.push(tx_id);
                self.delta.declared_break_glass.insert(signer, declared);
            }
            Payload::InstallRule { patient, rule } => {
                if self.require(patient, "patient")?.role != Role::Patient {
                    return Err(TxError::InvalidField("patient must be a patient identity"));
                }
                let kind = rules::lookup(&rule.kind).ok_or(RuleError::UnknownKind)?;
                let reacting = self.reacting_rule_ids(patient).cloned().unwrap_or_default();
                if kind.reacts_to_records() && reacting.len() >= limits::RULES_REACTING_PER_PATIENT_MAX {
                    return Err(RuleError::TooManyRules.into());
                }
                let signer_identity = self.require(&signer, "signer")?.clone();
                let for_patient = self.acts_for_patient(&signer, patient, ctx.timestamp_ms);
                let install = InstallContext {
                    view: &*self,
                    rule_id: tx_id,
                    patient: *patient,
                    signer: &signer_identity,
                    for_patient,
                    height: ctx.height,
                    timestamp_ms: ctx.timestamp_ms,
                };
                let derived = kind.install(&install, &rule.params)?;
                for d in &derived {
                    self.check_derived(d, patient, Some((tx_id, for_patient)), ctx.timestamp_ms)?;
                }
                let derived = self.insert_derived(derived, *patient, tx_id, (tx_id, signer), ctx.height);
                self.delta.rules.insert(
                    tx_id,
                    InstalledRule {
                        id: tx_id,
                        patient: *patient,
                        kind: kind.kind().to_owned(),
                        params: rule.params.clone(),
                        installed_by: signer,
                        for_patient,
                        installed_at: ctx.height,
                        installed_at_ms: ctx.timestamp_ms,
                        removed_at: None,
                        derived,
                    },
                );
                let mut ids = self.patient_rule_ids(patient).cloned().unwrap_or_default();
                ids.push(tx_id);
                self.delta.patient_rules.insert(*patient, ids);
                if kind.reacts_to_records() {
                    let mut ids = reacting;
                    ids.push(tx_id);
                    self.delta.reacting_rules.insert(*patient, ids);
                }
            }
            Payload::RemoveRule { rule_id } => {
                let rule = self.installed_rule(rule_id).ok_or(TxError::UnknownRule(*rule_id))?.clone();
                let installer_org = self.identity(&rule.installed_by).and_then(|i| i.organisation);
                let by_patient = self.acts_for_patient(&signer, &rule.patient, ctx.timestamp_ms);
                // A rule signed for the patient is the patient's: its installer (a delegate since
                // dismissed, say) and the installer's organisation have no say over it.
                let by_installer = !rule.for_patient && (signer == rule.installed_by || Some(signer) == installer_org);
                if !by_patient && !by_installer {
                    return Err(TxError::NotAuthorised(
                        "a rule is removed by its patient (or a live delegate), its installer or the installer's organisation",
                    ));
                }
                if !rule.is_active() {
                    return Err(TxError::InvalidField("rule is already removed"));
                }
                for grant_id in &rule.derived {
                    self.revoke_grant(grant_id, (ctx.height, ctx.timestamp_ms), signer);
                }
                if let Some(ids) = self.reacting_rule_ids(&rule.patient)
                    && ids.contains(rule_id)
                {
                    let ids = ids.iter().filter(|id| *id != rule_id).copied().collect();
                    self.delta.reacting_rules.insert(rule.patient, ids);
                }
                let mut removed = rule;
                removed.removed_at = Some(ctx.height);
                self.delta.rules.insert(*rule_id, removed);
            }
            Payload::AppointDelegate { patient, delegate, valid_until_ms } => {
                // The patient's own signature, never a delegate's: delegation does not chain.
                if signer != *patient || role != Some(Role::Patient) {
                    return Err(TxError::NotAuthorised("only the patient appoints their delegates"));
                }
                if delegate == patient {
                    return Err(TxError::InvalidField("a patient cannot be their own delegate"));
                }
                // A person: a practitioner (a trusted clinician) or a patient identity (a parent
                // or guardian registered in their own right); or a member's validator as the
                // patient's FHIR gateway, signing the Consents the patient (or their personal
                // delegate) writes through its API. Organisations and system clients act under
                // their own authority, never as a patient.
                let role = self.require(delegate, "delegate")?.role;
                if !matches!(role, Role::Practitioner | Role::Patient | Role::Validator) {
                    return Err(TxError::InvalidField(
                        "a delegate must be a practitioner, a patient identity or a member's validator",
                    ));
                }
                if *valid_until_ms <= ctx.timestamp_ms {
                    return Err(TxError::InvalidField("delegation has already ended"));
                }
                let mut all = self.delegations(patient).cloned().unwrap_or_default();
                if all.iter().any(|d| d.delegate == *delegate && d.is_live(ctx.timestamp_ms)) {
                    return Err(TxError::InvalidField("already a live delegate of this patient: dismiss first"));
                }
                if all.iter().filter(|d| d.is_live(ctx.timestamp_ms)).count() >= limits::DELEGATES_PER_PATIENT_MAX {
                    return Err(TxError::InvalidField("the patient already has the most live delegates"));
                }
                all.push(Delegation {
                    id: tx_id,
                    patient: *patient,
                    delegate: *delegate,
                    appointed_at: ctx.height,
                    valid_until_ms: *valid_until_ms,
                    dismissed_at: None,
                    dismissed_by: None,
                });
                self.delta.delegations.insert(*patient, all);
            }
            Payload::DismissDelegate { patient, delegate } => {
                // The patient dismisses; a delegate may step down, but dismisses no one else.
                if signer != *patient && signer != *delegate {
                    return Err(TxError::NotAuthorised(
                        "only the patient, or the delegate stepping down, ends a delegation",
                    ));
                }
                let mut all = self.delegations(patient).cloned().unwrap_or_default();
                let live = all
                    .iter_mut()
                    .find(|d| d.delegate == *delegate && d.is_live(ctx.timestamp_ms))
                    .ok_or(TxError::InvalidField("not a live delegate of this patient"))?;
                live.dismissed_at = Some(ctx.height);
                live.dismissed_by = Some(signer);
                self.delta.delegations.insert(*patient, all);
            }
            Payload::ReviewBreakGlass { break_glass_tx, verdict, reason } => {
                let grant = self.grant(break_glass_tx).ok_or(TxError::UnknownGrant(*break_glass_tx))?.clone();
                let GrantOrigin::BreakGlass { reason: declared, review } = &grant.origin else {
                    return Err(TxError::InvalidField("only a break-glass access is reviewed"));
                };
                if review.is_some() {
                    return Err(TxError::InvalidField("this break-glass access was already reviewed"));
                }
                if reason.is_empty() {
                    return Err(TxError::InvalidField("a review needs a reason code"));
                }
                check_reason(reason)?;
                // The declarer never reviews their own emergency, in any capacity.
                if signer == grant.grantee {
                    return Err(TxError::NotAuthorised("the declaring practitioner cannot review their own access"));
                }
                // Reviewed by the patient (or a live delegate), or by a care-providing custodian
                // of the patient's records other than the declarer's organisation: never by the
                // declarer's organisation, which answers for the declarer, in any guise.
                let declarer_org = self.identity(&grant.grantee).and_then(|i| i.organisation);
                let reviewer_org = self.identity(&signer).and_then(|i| match i.role {
                    Role::Organisation => Some(signer),
                    _ => i.organisation,
                });
                if declarer_org.is_some() && reviewer_org == declarer_org {
                    return Err(TxError::NotAuthorised(
                        "the declarer's organisation, its staff and its nodes never review its break-glass",
                    ));
                }
                if signer == grant.patient {
                    // Keys the declarer's organisation registered and may still hold in trust
                    // (never rotated since) are not the patient's voice.
                    let patient = self.require(&grant.patient, "patient")?;
                    if declarer_org.is_some() && patient.registered_by == declarer_org && patient.key_rotations == 0 {
                        return Err(TxError::NotAuthorised(
                            "the patient's keys may still be held by the declarer's organisation: rotate them first",
                        ));
                    }
                }
                if !self.acts_for_patient(&signer, &grant.patient, ctx.timestamp_ms) {
                    let reviewer = self.require(&signer, "signer")?;
                    let organisation = match reviewer.role {
                        Role::Organisation => signer,
                        Role::Practitioner => reviewer
                            .organisation
                            .ok_or(TxError::NotAuthorised("a reviewing practitioner must belong to an organisation"))?,
                        _ => {
                            return Err(TxError::NotAuthorised(
                                "break-glass is reviewed by the patient, or by a custodian organisation or one of its practitioners",
                            ));
                        }
                    };
                    let care_provider =
                        self.identity(&organisation).is_some_and(|o| o.kind == Some(OrganisationKind::CareProvider));
                    if declarer_org == Some(organisation)
                        || !care_provider
                        || !self.custodies(&organisation, &grant.patient)
                    {
                        return Err(TxError::NotAuthorised(
                            "break-glass is reviewed by the patient or a custodian of their records other than the declarer's organisation",
                        ));
                    }
                }
                let mut reviewed = grant.clone();
                reviewed.origin = GrantOrigin::BreakGlass {
                    reason: declared.clone(),
                    review: Some(BreakGlassReview {
                        review_tx: tx_id,
                        reviewer: signer,
                        verdict: *verdict,
                        reason: reason.clone(),
                        reviewed_at: ctx.height,
                        reviewed_at_ms: ctx.timestamp_ms,
                    }),
                };
                self.delta.grants.insert(*break_glass_tx, reviewed);
                // An unjustified emergency ends now; one already over or revoked stays as it is.
                if *verdict == ReviewVerdict::Unjustified && grant.is_live(ctx.timestamp_ms) {
                    self.revoke_grant(break_glass_tx, (ctx.height, ctx.timestamp_ms), signer);
                }
            }
            Payload::DirectoryPut { entry_id, version, resource_type, content } => {
                let signer_identity = self.require(&signer, "signer")?;
                // Only an organisation's node signs: it checks the content is a valid FHIR
                // resource of the type carrying no patient data (no contained resources,
                // narrative or unlisted extensions) before signing. Staff and the organisation
                // write through it, so an organisation's key alone cannot publish anything in
                // clear.
                let owner = match signer_identity.role {
                    Role::Validator => signer_identity
                        .organisation
                        .ok_or(TxError::NotAuthorised("directory entries are written for a member organisation"))?,
                    _ => {
                        return Err(TxError::NotAuthorised(
                            "directory entries are written by a member organisation's node, which checks them",
                        ));
                    }
                };
                if !medledger_types::is_directory_resource_type(resource_type) {
                    return Err(TxError::InvalidField("not a directory resource type"));
                }
                if content.is_empty() || content.len() > limits::DIRECTORY_CONTENT_BYTES_MAX {
                    return Err(TxError::InvalidField("directory content length out of range"));
                }
                let mut versions = Vec::new();
                match self.directory_entry(entry_id) {
                    None if *version == 1 => {}
                    None => return Err(TxError::InvalidField("the first version of a directory entry is 1")),
                    Some(head) => {
                        if head.owner != owner {
                            return Err(TxError::NotAuthorised(
                                "only the owning organisation updates a directory entry",
                            ));
                        }
                        if head.resource_type != *resource_type {
                            return Err(TxError::InvalidField("the resource type of a directory entry never changes"));
                        }
                        if *version != head.latest_version + 1 {
                            return Err(TxError::InvalidField("version must be the latest version plus one"));
                        }
                        versions = head.versions.clone();
                    }
                }
                if self.record(entry_id).is_some() {
                    return Err(TxError::InvalidField("the id is a record's"));
                }
                versions.push(tx_id);
                self.delta.directory.insert(
                    *entry_id,
                    DirectoryHead { resource_type: resource_type.clone(), owner, latest_version: *version, versions },
                );
            }
            Payload::Batch { .. } => return Err(TxError::InvalidField("batches do not nest")),
        }
        Ok(())
    }

    /// Checks `tx` against the rules and, only if every check passes, applies it. Returns the
    /// key its signature must verify under (the signer's key before this transaction).
    fn execute(&mut self, tx: &Transaction, ctx: BlockContext) -> Result<PublicKey, TxError> {
        let body = tx.body();
        if body.chain_id != self.base.chain_id {
            return Err(TxError::WrongChain);
        }
        let signer = body.signer;
        let (key, role, expected_nonce) = match self.identity(&signer) {
            Some(who) => (who.signing_key, Some(who.role), who.next_nonce),
            None => return Err(TxError::UnknownSigner(signer)),
        };
        if body.nonce < expected_nonce {
            return Err(TxError::Replayed { expected: expected_nonce, got: body.nonce });
        }
        if body.nonce > expected_nonce {
            return Err(TxError::NonceAhead { expected: expected_nonce, got: body.nonce });
        }
        let tx_id = tx.id();
        match &body.payload {
            Payload::Batch { ops } => self.execute_batch(ops, (signer, role, key), tx_id, ctx)?,
            op => self.apply_op(op, (signer, role, key), (tx_id, tx_id), ctx)?,
        }
        // Every accepted transaction consumes its signer's nonce.
        if let Some(who) = self.delta.identities.get_mut(&signer) {
            who.next_nonce = body.nonce + 1;
        } else {
            self.identity_mut(&signer).next_nonce = body.nonce + 1;
        }
        Ok(key)
    }
}

impl RuleView for Overlay<'_> {
    fn identity(&self, id: &IdentityId) -> Option<&Identity> {
        Overlay::identity(self, id)
    }

    fn rule(&self, id: &TxId) -> Option<&InstalledRule> {
        self.installed_rule(id)
    }
}

/// Id of the `index`-th grant a rule derived while executing transaction `source`. Not a
/// transaction id, but from the same space: SHA-256 over a domain tag, so it never equals one.
/// The id rules derive grants from for operation `index` of batch `tx`.
fn batch_op_id(tx: &TxId, index: u32) -> TxId {
    let index = index.to_be_bytes();
    let parts: [&[u8]; 3] = [b"medledger/batch-op/v1", &tx.0, &index];
    TxId(medledger_crypto::sha256_parts(&parts).0)
}

fn derived_grant_id(source: &TxId, rule: &TxId, index: u32) -> TxId {
    let index = index.to_be_bytes();
    let parts: [&[u8]; 4] = [b"medledger/derived-grant/v1", &source.0, &rule.0, &index];
    TxId(medledger_crypto::sha256_parts(&parts).0)
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

fn check_name(name: &str) -> Result<(), TxError> {
    if name.trim().is_empty() || name.chars().any(char::is_control) {
        return Err(TxError::InvalidField("name must be non-empty printable text"));
    }
    Ok(())
}

fn check_resource_type(t: &str) -> Result<(), TxError> {
    let mut chars = t.chars();
    match chars.next() {
        Some(c) if c.is_ascii_uppercase() && chars.all(|c| c.is_ascii_alphanumeric()) => Ok(()),
        _ => Err(TxError::InvalidField("resource type must be a FHIR resource type name")),
    }
}

fn check_reason(reason: &str) -> Result<(), TxError> {
    if reason.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c)) {
        Ok(())
    } else {
        Err(TxError::InvalidField("reason must be a code (letters, digits, - _ . :), not free text"))
    }
}
