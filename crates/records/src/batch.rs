//! All-or-nothing writes (a FHIR transaction bundle, an import chunk) and the consortium
//! directory, node side.
//!
//! A batch becomes one `Payload::Batch` transaction signed by this node: the registrations of
//! patients new to the network, their first category keys, every record version and every
//! directory entry. The ledger applies all of it or none of it. Ciphertexts are stored before
//! the batch is submitted (the chain must never refer to a missing one); a batch the ledger
//! refuses leaves only unreferenced ciphertexts behind, never a record.
//!
//! Directory entries (Organization, Practitioner, PractitionerRole, Location) are not patient
//! data: they are committed in clear, owned by the organisation that wrote them.

use std::collections::HashMap;

use medledger_crypto::{
    Keypair,
    envelope::{CategoryKey, DataKey, seal_record, wrap_data_key},
};
use medledger_ledger::{
    CategoryKeyId, Payload,
    keys::{data_key_aad, record_aad},
};
use medledger_types::{Hash, IdentityId, RecordId, Role, TimestampMs, TxId, limits};
use rand::CryptoRng;

use crate::RecordError;
use crate::service::must_rotate_before_writing;
use crate::service::{CachedKey, KeyOrigin, RECORD_PLAINTEXT_BYTES_MAX, RecordService, WriteRequest, share_entry};

/// One resource of a batch.
pub enum BatchWrite<'a> {
    /// A record version; `expected` is the `If-Match` version of an update. A new record
    /// (`request.record: None`) gets `new_id`, or a random id.
    Record { request: WriteRequest<'a>, expected: Option<u32>, new_id: Option<RecordId> },
    /// A directory entry: a new one (`entry: None`, with `new_id` or a random id) or the next
    /// version of one of this organisation's.
    Directory {
        resource_type: &'a str,
        content: &'a [u8],
        entry: Option<RecordId>,
        expected: Option<u32>,
        new_id: Option<RecordId>,
    },
}

/// What a submitted batch will commit, in the order of the writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchWritten {
    pub tx_id: TxId,
    /// The id and version each write gets.
    pub versions: Vec<(RecordId, u32)>,
}

/// A committed directory entry version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryVersion {
    pub entry_id: RecordId,
    pub resource_type: String,
    pub version: u32,
    pub owner: IdentityId,
    pub tx_id: TxId,
    /// The FHIR JSON exactly as written.
    pub content: Vec<u8>,
}

impl RecordService {
    /// Keys for a patient new to the network, to be registered inside a batch
    /// ([`RecordService::write_batch`]); nothing is stored until the batch is submitted.
    pub fn new_patient_keys(&self) -> Result<Keypair, RecordError> {
        if self.patient_key_dir.get().is_none() {
            return Err(RecordError::Invalid("this node registers no patients: register the patient's identity first"));
        }
        Ok(Keypair::generate())
    }

    /// Submits `writes` as one all-or-nothing batch, registering `new_patients` (from
    /// [`RecordService::new_patient_keys`]) in it. Returns once the batch is submitted; it is
    /// final a block later, or refused as a whole.
    pub fn write_batch(
        &self,
        new_patients: &[Keypair],
        writes: &[BatchWrite<'_>],
        now_ms: TimestampMs,
        rng: &mut impl CryptoRng,
    ) -> Result<BatchWritten, RecordError> {
        if writes.is_empty() && new_patients.is_empty() {
            return Err(RecordError::Invalid("a batch needs at least one write"));
        }
        let mut reserved = Vec::new();
        let mut created_keys = HashMap::new();
        let result = self.write_batch_reserving(new_patients, writes, now_ms, rng, &mut reserved, &mut created_keys);
        {
            // Keys this batch created are in flight with it, or forgotten if it never went in.
            let mut cache = self.category_keys.lock();
            for (key_id, (epoch, _)) in created_keys {
                let slot = (key_id, epoch);
                match &result {
                    Ok(written) => {
                        if let Some(cached) = cache.get_mut(&slot) {
                            cached.origin = KeyOrigin::Submitted(written.tx_id);
                        }
                    }
                    Err(_) => {
                        if cache.get(&slot).is_some_and(|c| c.origin == KeyOrigin::Submitting) {
                            cache.remove(&slot);
                        }
                    }
                }
            }
        }
        let mut pending = self.pending_versions.lock();
        match &result {
            Ok(written) => {
                for id in &reserved {
                    if let Some(entry) = pending.get_mut(id) {
                        entry.1 = Some(written.tx_id);
                    }
                }
            }
            Err(_) => {
                for id in &reserved {
                    pending.remove(id);
                }
            }
        }
        result
    }

    fn write_batch_reserving(
        &self,
        new_patients: &[Keypair],
        writes: &[BatchWrite<'_>],
        now_ms: TimestampMs,
        rng: &mut impl CryptoRng,
        reserved: &mut Vec<RecordId>,
        new_keys: &mut HashMap<CategoryKeyId, (u32, CategoryKey)>,
    ) -> Result<BatchWritten, RecordError> {
        let custodian = self.organisation();
        let new: HashMap<IdentityId, &Keypair> = new_patients.iter().map(|k| (k.id(), k)).collect();
        let key_dir = match new_patients.is_empty() {
            true => None,
            false => Some(self.patient_key_dir.get().ok_or(RecordError::Invalid(
                "this node registers no patients: register the patient's identity first",
            ))?),
        };
        // First every check and reservation, then (only if all pass) encryption and storage:
        // a batch refused here leaves no ciphertext behind. Record commits are placeholders
        // until then.
        let mut ops: Vec<Option<Payload>> =
            new_patients.iter().map(|k| Some(Payload::register(Role::Patient, k, None, ""))).collect();
        let mut sealed_later = Vec::new();
        let mut shares = Vec::new();
        let mut versions = Vec::with_capacity(writes.len());
        let mut directory_seen = Vec::new();
        for write in writes {
            match write {
                BatchWrite::Record { request, expected, new_id } => {
                    if request.content.len() > RECORD_PLAINTEXT_BYTES_MAX {
                        return Err(RecordError::TooLarge { max: RECORD_PLAINTEXT_BYTES_MAX });
                    }
                    let patient_is_new = new.contains_key(&request.patient);
                    if patient_is_new && request.record.is_some() {
                        return Err(RecordError::Invalid("a patient new to the network has no records to update"));
                    }
                    let (record_id, version) = match (request.record, new_id) {
                        (None, Some(id)) => {
                            self.reserve_new_record(*id)?;
                            (*id, 1)
                        }
                        _ => self.next_version(request, *expected, &custodian, rng)?,
                    };
                    reserved.push(record_id);
                    let key_id =
                        CategoryKeyId { custodian, patient: request.patient, category: request.category.to_owned() };
                    let (epoch, category_key) =
                        self.batch_category_key(&key_id, &new, new_keys, &mut shares, now_ms, rng)?;
                    ops.extend(shares.drain(..).map(Some));
                    ops.push(None);
                    sealed_later.push((ops.len() - 1, request, record_id, version, epoch, category_key));
                    versions.push((record_id, version));
                }
                BatchWrite::Directory { resource_type, content, entry, expected, new_id } => {
                    if !medledger_types::is_directory_resource_type(resource_type) {
                        return Err(RecordError::Invalid("not a directory resource type"));
                    }
                    if content.is_empty() || content.len() > limits::DIRECTORY_CONTENT_BYTES_MAX {
                        return Err(RecordError::TooLarge { max: limits::DIRECTORY_CONTENT_BYTES_MAX });
                    }
                    let (entry_id, version) = match entry {
                        None => match new_id {
                            Some(id) => (*id, 1),
                            None => {
                                let mut id = [0u8; 32];
                                rng.fill_bytes(&mut id);
                                (RecordId(id), 1)
                            }
                        },
                        Some(id) => {
                            if directory_seen.contains(id) {
                                return Err(RecordError::Invalid("a batch writes a directory entry at most once"));
                            }
                            let state = self.chain.snapshot();
                            let head = state.directory_entry(id).ok_or(RecordError::UnknownRecord(*id))?;
                            if head.owner != custodian {
                                return Err(RecordError::NotCustodian);
                            }
                            if head.resource_type != *resource_type {
                                return Err(RecordError::Invalid("the resource type of an entry never changes"));
                            }
                            if let Some(expected) = expected
                                && *expected != head.latest_version
                            {
                                return Err(RecordError::VersionMismatch { latest: head.latest_version });
                            }
                            directory_seen.push(*id);
                            (*id, head.latest_version + 1)
                        }
                    };
                    ops.push(Some(Payload::DirectoryPut {
                        entry_id,
                        version,
                        resource_type: (*resource_type).to_owned(),
                        content: content.to_vec(),
                    }));
                    versions.push((entry_id, version));
                }
            }
        }
        if ops.len() > limits::BATCH_OPS_MAX {
            return Err(RecordError::Invalid("too many resources for one transaction"));
        }
        for (at, request, record_id, version, epoch, category_key) in sealed_later {
            let data_key = DataKey::generate(rng);
            let aad = record_aad(&record_id, version, &request.patient, &custodian, request.resource_type);
            let ciphertext = seal_record(&data_key, &aad, request.content, rng);
            // Durable before the chain refers to it.
            let ciphertext_hash = self.blobs.put(&ciphertext)?;
            let key_aad = data_key_aad(&record_id, version, &custodian, &request.patient, request.category, epoch);
            ops[at] = Some(Payload::RecordCommit {
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
                wrapped_data_key: wrap_data_key(&category_key, &key_aad, &data_key, rng),
            });
        }
        let mut ops: Vec<Payload> = ops.into_iter().map(|op| op.expect("every placeholder sealed")).collect();
        // A single operation needs no batch: it is submitted as itself, with the same checks.
        let payload = match ops.len() {
            1 => ops.pop().expect("one operation"),
            _ => Payload::Batch { ops },
        };
        // Refuse an oversize batch with a clear error rather than a decoding failure.
        let probe =
            medledger_ledger::tx::sign(&self.node_keys, Hash::default(), self.node_keys.id(), 0, payload.clone());
        let size_max = match payload {
            Payload::Batch { .. } => limits::BATCH_TX_BYTES_MAX,
            _ => limits::TX_BYTES_MAX,
        };
        if probe.bytes().len() > size_max {
            return Err(RecordError::TooLarge { max: size_max });
        }
        // Keys of new patients are on disk before anything refers to them.
        let mut key_files = Vec::new();
        if let Some(dir) = key_dir {
            for keys in new_patients {
                let path = dir.join(format!("{}.key", keys.id()));
                if let Err(e) = medledger_crypto::write_key_file(&path, keys) {
                    remove_all(&key_files);
                    return Err(RecordError::KeyFile(e));
                }
                key_files.push(path);
            }
        }
        let tx_id = self.chain.submit_as(&self.node_keys, payload, now_ms).inspect_err(|_| {
            remove_all(&key_files);
        })?;
        Ok(BatchWritten { tx_id, versions })
    }

    /// The key a batch writes `key_id`'s records under: the current epoch's, one created and in
    /// flight, or a new epoch's whose share (with the patient and the custodian) goes into the
    /// batch itself, so the batch never depends on a transaction that could fail apart from it.
    fn batch_category_key(
        &self,
        key_id: &CategoryKeyId,
        new_patients: &HashMap<IdentityId, &Keypair>,
        new_keys: &mut HashMap<CategoryKeyId, (u32, CategoryKey)>,
        ops: &mut Vec<Payload>,
        now_ms: TimestampMs,
        rng: &mut impl CryptoRng,
    ) -> Result<(u32, CategoryKey), RecordError> {
        if let Some((epoch, key)) = new_keys.get(key_id) {
            return Ok((*epoch, key.clone()));
        }
        let (epoch, patient_key) = match new_patients.get(&key_id.patient) {
            Some(keys) => (1, keys.encryption_public_key()),
            None => {
                let state = self.chain.snapshot();
                let current = state.category_key(key_id).map(|k| (k.epoch, must_rotate_before_writing(k, now_ms)));
                let patient_key =
                    state.identity(&key_id.patient).ok_or(RecordError::Invalid("unknown patient"))?.encryption_key;
                drop(state);
                match current {
                    Some((epoch, false)) => return Ok((epoch, self.category_key(key_id, epoch)?)),
                    Some((epoch, true)) => (epoch + 1, patient_key),
                    None => (1, patient_key),
                }
            }
        };
        // Created by another write and awaiting commitment: use it, do not start another. A
        // new one is marked as being submitted at once (under the same lock), so that no
        // concurrent write makes a second key for the epoch.
        let mut cache = self.category_keys.lock();
        let slot = (key_id.clone(), epoch);
        if let Some(key) = self.in_flight_key(&mut cache, &slot) {
            return Ok((epoch, key));
        }
        let key = CategoryKey::generate(rng);
        cache.insert(slot, CachedKey { key: key.clone(), origin: KeyOrigin::Submitting });
        drop(cache);
        let organisation = self.organisation_keys.encryption_public_key();
        let shares = vec![
            share_entry(&key, key_id, epoch, key_id.patient, &patient_key, rng)?,
            share_entry(&key, key_id, epoch, key_id.custodian, &organisation, rng)?,
        ];
        ops.push(Payload::KeyShare {
            custodian: key_id.custodian,
            patient: key_id.patient,
            category: key_id.category.clone(),
            epoch,
            shares,
        });
        new_keys.insert(key_id.clone(), (epoch, key.clone()));
        Ok((epoch, key))
    }

    /// Reserves `id` for a new record (ids chosen in advance, so a bundle's references can
    /// name them before anything is written).
    fn reserve_new_record(&self, id: RecordId) -> Result<(), RecordError> {
        let mut pending = self.pending_versions.lock();
        let state = self.chain.snapshot();
        if state.record(&id).is_some() || state.directory_entry(&id).is_some() || pending.contains_key(&id) {
            return Err(RecordError::Invalid("the chosen record id is taken"));
        }
        pending.insert(id, (1, None));
        Ok(())
    }

    /// Cleans up after a submitted batch the ledger refused (or dropped): releases its
    /// reserved versions and removes the held keys of its new patients whose registration never
    /// committed. Committed records and registered patients are left alone.
    pub fn abandon_batch(&self, written: &BatchWritten, new_patients: &[IdentityId]) {
        let unregistered: Vec<IdentityId> = {
            let mut pending = self.pending_versions.lock();
            let state = self.chain.snapshot();
            for (id, version) in &written.versions {
                let committed = state.record(id).is_some_and(|h| h.latest_version >= *version);
                if !committed && pending.get(id).is_some_and(|(v, tx)| v == version && *tx == Some(written.tx_id)) {
                    pending.remove(id);
                }
            }
            new_patients.iter().filter(|id| state.identity(id).is_none()).copied().collect()
        };
        // Files are removed with no lock held.
        if let Some(dir) = self.patient_key_dir.get() {
            for id in unregistered {
                let _ = std::fs::remove_file(dir.join(format!("{id}.key")));
            }
        }
    }

    /// Writes one directory entry (a new one, or the next version of one of this
    /// organisation's), signed by this node. Returns once submitted.
    pub fn write_directory(
        &self,
        resource_type: &str,
        content: &[u8],
        entry: Option<RecordId>,
        expected: Option<u32>,
        now_ms: TimestampMs,
        rng: &mut impl CryptoRng,
    ) -> Result<BatchWritten, RecordError> {
        let write = BatchWrite::Directory { resource_type, content, entry, expected, new_id: None };
        self.write_batch(&[], std::slice::from_ref(&write), now_ms, rng)
    }

    /// A version (default: latest) of a directory entry, read from its committing transaction.
    pub fn read_directory(&self, entry_id: &RecordId, version: Option<u32>) -> Result<DirectoryVersion, RecordError> {
        let (head, tx_id, version) = {
            let state = self.chain.snapshot();
            let head = state.directory_entry(entry_id).cloned().ok_or(RecordError::UnknownRecord(*entry_id))?;
            let version = version.unwrap_or(head.latest_version);
            let tx_id = head.version_tx(version).ok_or(RecordError::UnknownVersion { record: *entry_id, version })?;
            (head, tx_id, version)
        };
        let tx = self
            .chain
            .transaction(&tx_id)?
            .ok_or(RecordError::Corrupt(format!("directory commit {tx_id} is not stored")))?;
        let content = tx
            .body()
            .payload
            .ops()
            .iter()
            .find_map(|op| match op {
                Payload::DirectoryPut { entry_id: id, version: v, content, .. } if id == entry_id && *v == version => {
                    Some(content.clone())
                }
                _ => None,
            })
            .ok_or(RecordError::Corrupt(format!("{tx_id} does not commit version {version} of {entry_id}")))?;
        Ok(DirectoryVersion {
            entry_id: *entry_id,
            resource_type: head.resource_type,
            version,
            owner: head.owner,
            tx_id,
            content,
        })
    }
}

fn remove_all(paths: &[std::path::PathBuf]) {
    for path in paths {
        let _ = std::fs::remove_file(path);
    }
}
