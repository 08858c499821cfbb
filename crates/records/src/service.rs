//! Encrypted records, node side: writing a version (encrypt, store the ciphertext, make sure the
//! category key exists and is shared with the patient and the custodian, commit), and reading
//! one (decide access, fetch and check the ciphertext, unwrap the keys, decrypt), with every
//! decision queued as an access event.
//!
//! A node decrypts only with its own organisation's keys: if its organisation holds no wrap of
//! a record's category key, it cannot produce the plaintext, whatever it stores.

use std::{
    collections::HashMap,
    sync::{Arc, OnceLock},
};

use medledger_blobs::BlobStore;
use medledger_crypto::{
    Keypair,
    envelope::{
        CategoryKey, DataKey, HpkeWrap, hpke_unwrap, hpke_wrap, open_record, seal_record, unwrap_data_key,
        wrap_data_key,
    },
};
use medledger_ledger::{
    AccessAction, CategoryKeyId, KeyShareEntry, Payload, Purpose,
    access::Basis,
    actions,
    keys::{category_key_info, data_key_aad, record_aad},
};
use medledger_types::{Hash, IdentityId, RecordId, TimestampMs, TxId};
use rand::CryptoRng;
use zeroize::Zeroizing;

use medledger_node::{
    chain::Chain,
    locks::{OrderedMutex, rank},
    replication::CiphertextFetcher,
};

use crate::{
    RecordError,
    access::{self, AccessRequest, Caller, Decision, Refusal},
    journal::{AuditTrail, Synced},
};

/// A version written by [`RecordService::write`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub record_id: RecordId,
    pub version: u32,
    pub tx_id: TxId,
    pub ciphertext_hash: Hash,
}

/// A version read by [`RecordService::read`].
pub struct Read {
    pub version: u32,
    pub tx_id: TxId,
    pub basis: Basis,
    pub plaintext: Zeroizing<Vec<u8>>,
}

/// What a write needs.
pub struct WriteRequest<'a> {
    /// The authenticated identity writing: the custodian or its staff or clients.
    pub author: IdentityId,
    pub patient: IdentityId,
    pub resource_type: &'a str,
    pub category: &'a str,
    /// The FHIR resource, exactly as received.
    pub content: &'a [u8],
    /// `Some` to write the next version of an existing record.
    pub record: Option<RecordId>,
}

/// Largest plaintext record accepted.
pub const RECORD_PLAINTEXT_BYTES_MAX: usize = 4 * 1024 * 1024;

pub struct RecordService {
    pub(crate) chain: Arc<Chain>,
    /// Signs transactions on the authors' behalf (a validator of the organisation).
    pub(crate) node_keys: Keypair,
    /// The organisation's keys: its category-key wraps are addressed to them.
    pub(crate) organisation_keys: Keypair,
    pub(crate) blobs: Arc<dyn BlobStore>,
    /// Category keys this node created or unwrapped, by key and epoch.
    pub(crate) category_keys: OrderedMutex<HashMap<(CategoryKeyId, u32), CachedKey>>,
    /// Versions submitted but not yet committed, so concurrent updates do not collide.
    pub(crate) pending_versions: OrderedMutex<HashMap<RecordId, (u32, Option<TxId>)>>,
    /// Access events: journaled, then committed in batches (`crate::journal`).
    pub(crate) audit: AuditTrail,
    /// Key shares submitted but not yet committed, with when, so they are not submitted twice.
    inflight_shares: OrderedMutex<HashMap<(CategoryKeyId, u32, IdentityId), TimestampMs>>,
    /// Fetches ciphertexts this node lacks from peers; unset when running without peers.
    fetcher: OnceLock<CiphertextFetcher>,
    /// Where keys of patients this organisation registers are kept for hand-over; unset: it
    /// registers none.
    pub(crate) patient_key_dir: OnceLock<std::path::PathBuf>,
}

/// A category key this node holds, and where it stands.
#[derive(Clone)]
pub(crate) struct CachedKey {
    pub(crate) key: CategoryKey,
    pub(crate) origin: KeyOrigin,
}

/// Whether a cached key is the chain's, or one this node created whose share may yet fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KeyOrigin {
    /// Unwrapped from a committed share: the key of its epoch.
    Committed,
    /// Created here; its share is about to be submitted (inside a batch being built).
    Submitting,
    /// Created here; its share went in with this transaction, not known committed yet.
    Submitted(TxId),
}

impl RecordService {
    /// The key this node created for an epoch not committed yet, if it may still commit: a
    /// share that was refused or left the mempool is forgotten, so a new key can be made.
    pub(crate) fn in_flight_key(
        &self,
        cache: &mut HashMap<(CategoryKeyId, u32), CachedKey>,
        slot: &(CategoryKeyId, u32),
    ) -> Option<CategoryKey> {
        let cached = cache.get(slot)?;
        if let KeyOrigin::Submitted(tx) = cached.origin
            && matches!(
                self.chain.tx_status(&tx),
                Ok(medledger_node::chain::TxStatus::Rejected { .. } | medledger_node::chain::TxStatus::Unknown)
            )
        {
            cache.remove(slot);
            return None;
        }
        Some(cached.key.clone())
    }
}

/// How long a submitted key share counts as in flight before it may be submitted again.
const SHARE_INFLIGHT_MS: u64 = 30_000;

/// How long before a category key's sharing ends (`CategoryKeyState::shared_until_ms`) a
/// node already writes under a new epoch: the block a write lands in is dated after the
/// write, and the ledger refuses a record under an epoch that must have rotated by then.
const KEY_ROTATION_MARGIN_MS: u64 = 60_000;

/// Whether a record written now must start a new epoch of `key` (see
/// [`KEY_ROTATION_MARGIN_MS`]).
pub(crate) fn must_rotate_before_writing(key: &medledger_ledger::CategoryKeyState, now_ms: TimestampMs) -> bool {
    key.must_rotate(now_ms.saturating_add(KEY_ROTATION_MARGIN_MS))
}

impl RecordService {
    pub fn new(chain: Arc<Chain>, node_keys: Keypair, organisation_keys: Keypair, blobs: Arc<dyn BlobStore>) -> Self {
        Self {
            chain,
            node_keys,
            organisation_keys,
            blobs,
            category_keys: OrderedMutex::new(rank::RECORD_CATEGORY_KEYS, "category keys", HashMap::new()),
            pending_versions: OrderedMutex::new(rank::RECORD_PENDING_VERSIONS, "pending versions", HashMap::new()),
            audit: AuditTrail::default(),
            inflight_shares: OrderedMutex::new(rank::RECORD_INFLIGHT_SHARES, "in-flight key shares", HashMap::new()),
            fetcher: OnceLock::new(),
            patient_key_dir: OnceLock::new(),
        }
    }

    /// The same service with the audit trail's bounds set to `limits` (before anything is
    /// recorded).
    pub fn with_audit_limits(mut self, limits: crate::journal::AuditLimits) -> Self {
        self.audit = AuditTrail::new(limits);
        self
    }

    /// Lets this node register patients itself (see [`RecordService::register_patient`]),
    /// keeping their keys in `dir` (mode 0600 files) until handed over. Set once.
    pub fn set_patient_key_dir(&self, dir: std::path::PathBuf) {
        let _ = self.patient_key_dir.set(dir);
    }

    /// Registers a new patient identity for someone who has no keys yet (a provider-registered
    /// patient, e.g. from a FHIR create or an import): generates their keys, writes them to the
    /// patient key directory — the organisation holds them in trust until they are handed
    /// over — and submits the registration, signed by the organisation. The patient's name
    /// never goes on-chain. Returns the identity and the registering transaction.
    pub fn register_patient(&self, now_ms: TimestampMs) -> Result<(IdentityId, TxId), RecordError> {
        let dir = self
            .patient_key_dir
            .get()
            .ok_or(RecordError::Invalid("this node registers no patients: register the patient's identity first"))?;
        let keys = Keypair::generate();
        let path = dir.join(format!("{}.key", keys.id()));
        medledger_crypto::write_key_file(&path, &keys).map_err(RecordError::KeyFile)?;
        let payload = Payload::register(medledger_types::Role::Patient, &keys, None, "");
        let tx = self.chain.submit_as(&self.organisation_keys, payload, now_ms).inspect_err(|_| {
            // Nothing refers to a key whose registration never went in.
            let _ = std::fs::remove_file(&path);
        })?;
        Ok((keys.id(), tx))
    }

    /// The store holding this node's ciphertexts.
    pub fn blobs(&self) -> Arc<dyn BlobStore> {
        self.blobs.clone()
    }

    /// Lets reads fetch missing ciphertexts from peers. Reads then block while fetching, so
    /// [`RecordService::read`] must run on a thread that may block. Set once.
    pub fn set_fetcher(&self, fetcher: CiphertextFetcher) {
        let _ = self.fetcher.set(fetcher);
    }

    pub fn organisation(&self) -> IdentityId {
        self.organisation_keys.id()
    }

    /// The identity this node signs with (its validator's).
    pub fn node_identity(&self) -> IdentityId {
        self.node_keys.id()
    }

    /// Signs a consent grant or revocation as a patient's gateway delegate: the ledger accepts
    /// it only if the patient appointed this node (`docs/rules.md`). Nothing else is signed
    /// this way.
    pub fn submit_as_gateway(&self, payload: Payload, now_ms: TimestampMs) -> Result<TxId, RecordError> {
        match payload {
            Payload::ConsentGrant { .. } | Payload::ConsentRevoke { .. } => {
                Ok(self.chain.submit_as(&self.node_keys, payload, now_ms)?)
            }
            _ => Err(RecordError::Invalid("a gateway signs consent grants and revocations only")),
        }
    }

    /// Encrypts and commits a record version written by `request.author` for this node's
    /// organisation. Returns once the commit is submitted (it is final a block later).
    pub fn write(
        &self,
        request: &WriteRequest<'_>,
        now_ms: TimestampMs,
        rng: &mut impl CryptoRng,
    ) -> Result<Written, RecordError> {
        self.write_expecting(request, None, now_ms, rng)
    }

    /// [`RecordService::write`] of the next version of `request.record`, only if its latest
    /// committed version is `expected` (optimistic concurrency: HTTP `If-Match`).
    pub fn write_expecting(
        &self,
        request: &WriteRequest<'_>,
        expected: Option<u32>,
        now_ms: TimestampMs,
        rng: &mut impl CryptoRng,
    ) -> Result<Written, RecordError> {
        if request.content.len() > RECORD_PLAINTEXT_BYTES_MAX {
            return Err(RecordError::TooLarge { max: RECORD_PLAINTEXT_BYTES_MAX });
        }
        let custodian = self.organisation();
        let (record_id, version) = self.next_version(request, expected, &custodian, rng)?;
        let key_id = CategoryKeyId { custodian, patient: request.patient, category: request.category.to_owned() };
        let (epoch, category_key) = self.current_category_key(&key_id, now_ms, rng)?;
        let data_key = DataKey::generate(rng);
        let aad = record_aad(&record_id, version, &request.patient, &custodian, request.resource_type);
        let ciphertext = seal_record(&data_key, &aad, request.content, rng);
        // Durable before the chain refers to it.
        let ciphertext_hash = self.blobs.put(&ciphertext)?;
        let key_aad = data_key_aad(&record_id, version, &custodian, &request.patient, request.category, epoch);
        let wrapped_data_key = wrap_data_key(&category_key, &key_aad, &data_key, rng);
        let payload = Payload::RecordCommit {
            record_id,
            version,
            patient: request.patient,
            custodian,
            author: request.author,
            resource_type: request.resource_type.to_owned(),
            category: request.category.to_owned(),
            key_epoch: epoch,
            ciphertext_hash,
            ciphertext_bytes: ciphertext.len() as u64,
            wrapped_data_key,
        };
        let tx_id = self.chain.submit_as(&self.node_keys, payload, now_ms).inspect_err(|_| {
            self.pending_versions.lock().remove(&record_id);
        })?;
        if let Some(entry) = self.pending_versions.lock().get_mut(&record_id) {
            entry.1 = Some(tx_id);
        }
        Ok(Written { record_id, version, tx_id, ciphertext_hash })
    }

    pub(crate) fn next_version(
        &self,
        request: &WriteRequest<'_>,
        expected: Option<u32>,
        custodian: &IdentityId,
        rng: &mut impl CryptoRng,
    ) -> Result<(RecordId, u32), RecordError> {
        let mut pending = self.pending_versions.lock();
        // A pending version of this record whose transaction the ledger refused (or that left
        // the mempool without committing) will never commit: forget it, or the record would
        // stay locked against updates until restart.
        if let Some(record_id) = request.record
            && let Some((_, Some(tx))) = pending.get(&record_id)
            && matches!(
                self.chain.tx_status(tx),
                Ok(medledger_node::chain::TxStatus::Rejected { .. } | medledger_node::chain::TxStatus::Unknown)
            )
        {
            pending.remove(&record_id);
        }
        let state = self.chain.snapshot();
        pending.retain(|id, (v, _)| state.record(id).is_none_or(|h| h.latest_version < *v));
        match request.record {
            None => {
                let mut id = [0u8; 32];
                rng.fill_bytes(&mut id);
                let record_id = RecordId(id);
                pending.insert(record_id, (1, None));
                Ok((record_id, 1))
            }
            Some(record_id) => {
                let head = state.record(&record_id).ok_or(RecordError::UnknownRecord(record_id))?;
                if head.custodian != *custodian {
                    return Err(RecordError::NotCustodian);
                }
                if head.patient != request.patient || head.resource_type != request.resource_type {
                    return Err(RecordError::Invalid("patient and resource type of a record never change"));
                }
                if pending.contains_key(&record_id) {
                    return Err(RecordError::VersionPending);
                }
                if let Some(expected) = expected
                    && expected != head.latest_version
                {
                    return Err(RecordError::VersionMismatch { latest: head.latest_version });
                }
                let version = head.latest_version + 1;
                pending.insert(record_id, (version, None));
                Ok((record_id, version))
            }
        }
    }

    /// The category key records are written under now: the current epoch's, or a new epoch's
    /// (shared with the patient and the custodian) when there is none yet or a revocation
    /// requires rotation.
    pub(crate) fn current_category_key(
        &self,
        key_id: &CategoryKeyId,
        now_ms: TimestampMs,
        rng: &mut impl CryptoRng,
    ) -> Result<(u32, CategoryKey), RecordError> {
        let current = self.chain.snapshot().category_key(key_id).cloned();
        if let Some(state) = &current
            && !must_rotate_before_writing(state, now_ms)
        {
            let key = self.category_key(key_id, state.epoch)?;
            return Ok((state.epoch, key));
        }
        let epoch = current.as_ref().map_or(1, |s| s.epoch + 1);
        let mut cache = self.category_keys.lock();
        // Created already and awaiting commitment: reuse it rather than start another.
        if let Some(key) = self.in_flight_key(&mut cache, &(key_id.clone(), epoch)) {
            return Ok((epoch, key));
        }
        let key = CategoryKey::generate(rng);
        let state = self.chain.snapshot();
        let patient = state.identity(&key_id.patient).ok_or(RecordError::Invalid("unknown patient"))?.clone();
        let organisation = self.organisation_keys.encryption_public_key();
        drop(state);
        let shares = vec![
            share_entry(&key, key_id, epoch, key_id.patient, &patient.encryption_key, rng)?,
            share_entry(&key, key_id, epoch, key_id.custodian, &organisation, rng)?,
        ];
        let payload = Payload::KeyShare {
            custodian: key_id.custodian,
            patient: key_id.patient,
            category: key_id.category.clone(),
            epoch,
            shares,
        };
        let tx = self.chain.submit_as(&self.node_keys, payload, now_ms)?;
        cache.insert((key_id.clone(), epoch), CachedKey { key: key.clone(), origin: KeyOrigin::Submitted(tx) });
        Ok((epoch, key))
    }

    /// A category key of this organisation's, unwrapped from its committed share.
    pub(crate) fn category_key(&self, key_id: &CategoryKeyId, epoch: u32) -> Result<CategoryKey, RecordError> {
        // Only a key unwrapped from the chain is trusted for a committed epoch: one this node
        // created may have lost to another share of the same epoch.
        if let Some(cached) = self.category_keys.lock().get(&(key_id.clone(), epoch))
            && cached.origin == KeyOrigin::Committed
        {
            return Ok(cached.key.clone());
        }
        let me = self.organisation();
        let share_tx = {
            let state = self.chain.snapshot();
            let key = state.category_key(key_id).ok_or(RecordError::NotDecryptableHere)?;
            let holders = key.holders_of(epoch).ok_or(RecordError::NotDecryptableHere)?;
            holders.iter().find(|(h, _)| *h == me).map(|(_, tx)| *tx).ok_or(RecordError::NotDecryptableHere)?
        };
        let tx = self.chain.transaction(&share_tx)?.ok_or(RecordError::NotDecryptableHere)?;
        let share = tx.body().payload.ops().iter().find(|op| {
            matches!(op, Payload::KeyShare { custodian, patient, category, epoch: e, .. }
                if *custodian == key_id.custodian && *patient == key_id.patient && *category == key_id.category && *e == epoch)
        });
        let Some(Payload::KeyShare { shares, .. }) = share else {
            return Err(RecordError::Corrupt("a key holder's transaction shares no such key".into()));
        };
        let entry = shares.iter().find(|e| e.recipient == me).ok_or(RecordError::NotDecryptableHere)?;
        let wrap = HpkeWrap { encapsulated_key: entry.encapsulated_key, ciphertext: entry.wrapped_key };
        let info = category_key_info(&key_id.custodian, &key_id.patient, &key_id.category, epoch);
        let key =
            hpke_unwrap(&self.organisation_keys, &info, &me.0, &wrap).map_err(|_| RecordError::NotDecryptableHere)?;
        self.category_keys
            .lock()
            .insert((key_id.clone(), epoch), CachedKey { key: key.clone(), origin: KeyOrigin::Committed });
        Ok(key)
    }

    /// Reads `version` (default: latest) of a record for `requester`, if allowed; every decision
    /// is queued as an access event.
    pub fn read(
        &self,
        requester: IdentityId,
        record_id: RecordId,
        version: Option<u32>,
        purpose: Purpose,
        now_ms: TimestampMs,
    ) -> Result<Read, RecordError> {
        self.read_as(Caller::signed(requester), record_id, version, purpose, AccessAction::Read, now_ms)
    }

    /// The plaintext of a version for this node's own in-memory search index: no person reads
    /// it, so no access event; the index never leaves memory (see `medledger_api`'s search).
    pub fn plaintext_for_index(&self, record_id: &RecordId, version: u32) -> Result<Zeroizing<Vec<u8>>, RecordError> {
        match self.decrypt_indexed(record_id, version) {
            Some(result) => result,
            None => Err(RecordError::UnknownVersion { record: *record_id, version }),
        }
    }

    /// [`RecordService::read`], audited as `action` (a search result is a `Search` access).
    pub fn read_as(
        &self,
        caller: Caller<'_>,
        record_id: RecordId,
        version: Option<u32>,
        purpose: Purpose,
        action: AccessAction,
        now_ms: TimestampMs,
    ) -> Result<Read, RecordError> {
        let mut synced = Synced::default();
        let read = self.read_deferred(caller, record_id, version, purpose, action, now_ms, &mut synced);
        self.audit.sync(synced)?;
        read
    }

    /// Reads each of `items` (record, version) for `caller` as [`RecordService::read_as`]
    /// does, recording every decision, with one wait for the audit journal before any plaintext
    /// is returned. `Err` only when the decisions could not be made durable: then nothing is
    /// returned.
    pub fn read_many(
        &self,
        caller: Caller<'_>,
        items: &[(RecordId, Option<u32>)],
        purpose: Purpose,
        action: AccessAction,
        now_ms: TimestampMs,
    ) -> Result<Vec<Result<Read, RecordError>>, RecordError> {
        let mut synced = Synced::default();
        let reads = items
            .iter()
            .map(|(record_id, version)| {
                self.read_deferred(caller, *record_id, *version, purpose, action, now_ms, &mut synced)
            })
            .collect();
        self.audit.sync(synced)?;
        Ok(reads)
    }

    /// Makes the decisions recorded with `synced` durable.
    pub fn sync_audit(&self, synced: Synced) -> Result<(), RecordError> {
        Ok(self.audit.sync(synced)?)
    }

    /// Records `decision`'s event (a refusal within the accessor's refusal budget), its
    /// journal sync left to the caller (`synced`).
    pub fn record_decision(
        &self,
        decision: &Decision,
        now_ms: TimestampMs,
        synced: &mut Synced,
    ) -> Result<(), RecordError> {
        match (&decision.event, decision.is_allowed()) {
            (None, _) => Ok(()),
            (Some(event), true) => Ok(self.audit.record_deferred(event.clone(), synced)?),
            (Some(event), false) => Ok(self.audit.record_refusal_deferred(event.clone(), now_ms, synced)?),
        }
    }

    /// Records `decision`'s event and waits until it is durable.
    pub fn audit_decision(&self, decision: &Decision, now_ms: TimestampMs) -> Result<(), RecordError> {
        let mut synced = Synced::default();
        self.record_decision(decision, now_ms, &mut synced)?;
        self.sync_audit(synced)
    }

    /// One read with its decision (by [`access::authorize`]) recorded, its journal sync left to
    /// the caller (`synced`, then [`RecordService::sync_audit`] before anything read leaves
    /// the node).
    #[allow(clippy::too_many_arguments)]
    pub fn read_deferred(
        &self,
        caller: Caller<'_>,
        record_id: RecordId,
        version: Option<u32>,
        purpose: Purpose,
        action: AccessAction,
        now_ms: TimestampMs,
        synced: &mut Synced,
    ) -> Result<Read, RecordError> {
        let request = AccessRequest {
            caller: caller.identity,
            credential: caller.credential,
            action,
            purpose,
            record: record_id,
            version,
            now_ms,
        };
        let decision =
            access::authorize(&self.chain.snapshot(), &request).ok_or(RecordError::UnknownRecord(record_id))?;
        let basis = match decision.outcome {
            Ok(basis) => basis,
            Err(refusal) => {
                self.record_decision(&decision, now_ms, synced)?;
                return Err(match refusal {
                    Refusal::Consent(denial) => RecordError::Denied(denial),
                    Refusal::Credential => RecordError::OutOfScope,
                });
            }
        };
        let version = version.unwrap_or(decision.head.latest_version);
        let tx_id =
            decision.head.version_tx(version).ok_or(RecordError::UnknownVersion { record: record_id, version })?;
        match self.decrypt_indexed(&record_id, version).unwrap_or_else(|| self.decrypt(&tx_id, &record_id, version)) {
            Ok(plaintext) => {
                // Recorded before the plaintext leaves (durably once the caller syncs): a read
                // whose event cannot be recorded is refused.
                self.record_decision(&decision, now_ms, synced)?;
                Ok(Read { version, tx_id, basis, plaintext })
            }
            Err(error) => {
                // Allowed but not served: the attempt is still on the record.
                let code = match error {
                    RecordError::NotDecryptableHere => "not-decryptable-here",
                    RecordError::CiphertextMissing => "ciphertext-missing",
                    _ => "read-failed",
                };
                if let Some(refusal) = decision.refused_after_all(code) {
                    self.audit.record_refusal_deferred(refusal, now_ms, synced)?;
                }
                Err(error)
            }
        }
    }

    /// Decrypts `version` of `record`, committed by `tx_id` (alone or in a batch), with this
    /// organisation's keys.
    fn decrypt(&self, tx_id: &TxId, record: &RecordId, wanted: u32) -> Result<Zeroizing<Vec<u8>>, RecordError> {
        let tx = self
            .chain
            .transaction(tx_id)?
            .ok_or(RecordError::Corrupt(format!("record commit {tx_id} is not stored")))?;
        let commit = tx.body().payload.ops().iter().find(
            |op| matches!(op, Payload::RecordCommit { record_id, version, .. } if record_id == record && *version == wanted),
        );
        let Some(Payload::RecordCommit {
            record_id,
            version,
            patient,
            custodian,
            resource_type,
            category,
            key_epoch,
            ciphertext_hash,
            wrapped_data_key,
            ..
        }) = commit
        else {
            return Err(RecordError::Corrupt(format!("{tx_id} does not commit version {wanted} of {record}")));
        };
        self.open_version(
            (record_id, *version),
            (patient, custodian),
            (resource_type, category),
            *key_epoch,
            ciphertext_hash,
            wrapped_data_key,
        )
    }

    /// Decrypts a version from the node's index (no block is read); `None` if not indexed.
    fn decrypt_indexed(&self, record_id: &RecordId, version: u32) -> Option<Result<Zeroizing<Vec<u8>>, RecordError>> {
        let (people, kinds, entry) = {
            let index = self.chain.patient_index();
            let record = index.record(record_id)?;
            let entry = record.versions.iter().find(|v| v.version == version)?.clone();
            ((record.patient, record.custodian), (record.resource_type.clone(), record.category.clone()), entry)
        };
        Some(self.open_version(
            (record_id, version),
            (&people.0, &people.1),
            (&kinds.0, &kinds.1),
            entry.key_epoch,
            &entry.ciphertext_hash,
            &entry.wrapped_data_key,
        ))
    }

    /// Unwraps the data key of a version and decrypts its ciphertext.
    fn open_version(
        &self,
        (record_id, version): (&RecordId, u32),
        (patient, custodian): (&IdentityId, &IdentityId),
        (resource_type, category): (&str, &str),
        key_epoch: u32,
        ciphertext_hash: &Hash,
        wrapped_data_key: &[u8; 72],
    ) -> Result<Zeroizing<Vec<u8>>, RecordError> {
        let key_id = CategoryKeyId { custodian: *custodian, patient: *patient, category: category.to_owned() };
        let category_key = self.category_key(&key_id, key_epoch)?;
        let key_aad = data_key_aad(record_id, version, custodian, patient, category, key_epoch);
        let data_key = unwrap_data_key(&category_key, &key_aad, wrapped_data_key)
            .map_err(|_| RecordError::Corrupt("data key does not unwrap".into()))?;
        let stored = self.blobs.get(ciphertext_hash)?;
        let ciphertext = match (stored, self.fetcher.get()) {
            (Some(ciphertext), _) => ciphertext,
            // Replicated on first use: the fetcher checks the bytes against the chain's hash
            // and stores them before returning.
            (None, Some(fetcher)) => fetcher.fetch_blocking(*record_id, version).map_err(|e| {
                tracing::info!(%record_id, version, error = %e, "ciphertext not replicated");
                RecordError::CiphertextMissing
            })?,
            (None, None) => return Err(RecordError::CiphertextMissing),
        };
        let aad = record_aad(record_id, version, patient, custodian, resource_type);
        open_record(&data_key, &aad, &ciphertext)
            .map_err(|_| RecordError::Corrupt("ciphertext does not decrypt".into()))
    }

    /// After `grant_id` commits: wraps this organisation's current category keys of the patient
    /// that the grant reaches for the grantee, and submits the shares. Consensus re-checks that
    /// the grant covers each key. Returns the key-share transactions submitted.
    pub fn share_keys_for_grant(
        &self,
        grant_id: &TxId,
        now_ms: TimestampMs,
        rng: &mut impl CryptoRng,
    ) -> Result<Vec<TxId>, RecordError> {
        let me = self.organisation();
        let (grant, grantee_key, keys) = {
            let state = self.chain.snapshot();
            let grant = state.grant(grant_id).cloned().ok_or(RecordError::Invalid("unknown grant"))?;
            if !grant.is_live(now_ms) || grant.actions & actions::READ == 0 || !grant.shares_category_keys() {
                return Ok(Vec::new());
            }
            let grantee_key =
                state.identity(&grant.grantee).ok_or(RecordError::Invalid("unknown grantee"))?.encryption_key;
            // Exactly what consensus accepts (`Grant::may_share_key`): whole categories only. An
            // epoch that must rotate is still shared: it opens only records written before, all
            // of which the grant covers; the next write starts a new epoch, shared again.
            let keys: Vec<(CategoryKeyId, u32)> = medledger_types::CATEGORIES
                .iter()
                .filter(|c| grant.may_share_key(c, now_ms))
                .map(|c| CategoryKeyId { custodian: me, patient: grant.patient, category: (*c).to_owned() })
                .filter_map(|id| {
                    let key = state.category_key(&id)?;
                    let held = key.holders.iter().any(|(h, _)| *h == grant.grantee);
                    (!held).then_some((id, key.epoch))
                })
                .collect();
            (grant, grantee_key, keys)
        };
        let mut submitted = Vec::new();
        let mut inflight = self.inflight_shares.lock();
        inflight.retain(|_, at| now_ms.saturating_sub(*at) < SHARE_INFLIGHT_MS);
        for (key_id, epoch) in keys {
            if inflight.contains_key(&(key_id.clone(), epoch, grant.grantee)) {
                continue;
            }
            let key = self.category_key(&key_id, epoch)?;
            let entry = share_entry(&key, &key_id, epoch, grant.grantee, &grantee_key, rng)?;
            let payload = Payload::KeyShare {
                custodian: key_id.custodian,
                patient: key_id.patient,
                category: key_id.category.clone(),
                epoch,
                shares: vec![entry],
            };
            submitted.push(self.chain.submit_as(&self.node_keys, payload, now_ms)?);
            inflight.insert((key_id, epoch, grant.grantee), now_ms);
        }
        Ok(submitted)
    }

    /// Shares keys for every live grant this organisation's keys can serve (see
    /// [`RecordService::share_keys_for_grant`]); run periodically by the node.
    pub fn share_keys_for_live_grants(
        &self,
        now_ms: TimestampMs,
        rng: &mut impl CryptoRng,
    ) -> Result<usize, RecordError> {
        let grants: Vec<TxId> = self
            .chain
            .snapshot()
            .grants()
            .filter(|g| g.is_live(now_ms) && g.actions & actions::READ != 0 && g.shares_category_keys())
            .map(|g| g.id)
            .collect();
        // One grant that cannot be served (a grantee with an unusable key, say) must not keep
        // the others from their keys.
        let mut shared = 0;
        for grant in grants {
            match self.share_keys_for_grant(&grant, now_ms, rng) {
                Ok(ids) => shared += ids.len(),
                Err(e) => tracing::warn!(grant = %grant, error = %e, "keys not shared for a grant"),
            }
        }
        Ok(shared)
    }
}

pub(crate) fn share_entry(
    key: &CategoryKey,
    key_id: &CategoryKeyId,
    epoch: u32,
    recipient: IdentityId,
    recipient_key: &medledger_crypto::EncryptionPublicKey,
    rng: &mut impl CryptoRng,
) -> Result<KeyShareEntry, RecordError> {
    let info = category_key_info(&key_id.custodian, &key_id.patient, &key_id.category, epoch);
    let wrap = hpke_wrap(recipient_key, &info, &recipient.0, key, rng)
        .map_err(|_| RecordError::Invalid("recipient's encryption key is invalid"))?;
    Ok(KeyShareEntry { recipient, encapsulated_key: wrap.encapsulated_key, wrapped_key: wrap.ciphertext })
}
