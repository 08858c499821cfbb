//! Replication of record ciphertexts between nodes.
//!
//! The chain carries every record commit, but the ciphertext itself lives in the blob store of
//! the node that wrote it. A node whose organisation may decrypt a version (it is the custodian,
//! or holds a wrap of the category key the version was written under) and lacks the ciphertext
//! asks peers for it over an authenticated p2p channel ([`CHANNEL_BLOBS`]), checks the bytes
//! against the on-chain ciphertext hash, stores them, and only then uses them.
//!
//! A node serves a ciphertext only to peers whose organisation is the custodian, or holds a
//! wrap of the version's category key AND a live grant covering the version at the finalized
//! head's block time: an organisation whose grant expired or was revoked is not sent versions,
//! even of an epoch whose key it kept (`docs/keys.md`). Ciphertexts are useless without keys,
//! but minimum-necessary means they are not handed to organisations no longer entitled. Peers
//! are genesis validators; a peer's organisation is the one genesis says operates it.
//!
//! Wire format (`docs/format.md`, "Ciphertext replication"): one tagged message per request
//! or response, encoded with the medledger codec.
//!
//! The actor is generic over commonware's runtime traits, so it runs in the deterministic
//! simulator as well as on tokio.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use commonware_cryptography::ed25519::PublicKey;
use commonware_p2p::{Receiver, Recipients, Sender};
use commonware_runtime::{Clock, IoBuf, Metrics, Spawner};
use futures::{
    SinkExt, StreamExt,
    channel::{mpsc, oneshot},
};
use medledger_blobs::{BlobStore, blob_hash};
use medledger_codec::{CodecError, Reader, Writer};
use medledger_ledger::{CategoryKeyId, access};
use medledger_types::{Hash, IdentityId, RecordId, limits};

use crate::{chain::Chain, validator::consensus_public_key};

/// The p2p channel of ciphertext requests and responses; identical on every validator.
pub const CHANNEL_BLOBS: u64 = 5;

/// Largest replication message: a ciphertext of the largest size the ledger accepts, plus
/// framing.
pub const BLOB_MESSAGE_BYTES_MAX: usize = limits::RECORD_CIPHERTEXT_BYTES_MAX as usize + 64;

/// How long one peer has to answer before the next is asked.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(5);

/// Fetches running at once on one node; more are refused as busy rather than queued without
/// bound.
pub const FETCHES_IN_FLIGHT_MAX: usize = 64;

const TAG_REQUEST: u8 = 1;
const TAG_FOUND: u8 = 2;
const TAG_UNAVAILABLE: u8 = 3;

/// Why a peer did not send a ciphertext.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Unavailable {
    /// The version is committed, but its ciphertext is not in the peer's store.
    NotStored = 1,
    /// The requesting node's organisation holds no key that opens this version.
    NotEntitled = 2,
    /// The peer knows no such committed version (it may be behind).
    UnknownVersion = 3,
}

impl Unavailable {
    fn from_u8(v: u8) -> Option<Self> {
        [Self::NotStored, Self::NotEntitled, Self::UnknownVersion].into_iter().find(|u| *u as u8 == v)
    }

    pub fn code(self) -> &'static str {
        match self {
            Self::NotStored => "not-stored",
            Self::NotEntitled => "not-entitled",
            Self::UnknownVersion => "unknown-version",
        }
    }
}

/// One replication message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BlobMessage {
    Request { request_id: u64, record_id: RecordId, version: u32 },
    Found { request_id: u64, ciphertext: Vec<u8> },
    Unavailable { request_id: u64, reason: Unavailable },
}

impl BlobMessage {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        match self {
            BlobMessage::Request { request_id, record_id, version } => {
                w.u8(TAG_REQUEST).u64(*request_id).fixed(&record_id.0).u32(*version);
            }
            BlobMessage::Found { request_id, ciphertext } => {
                w.u8(TAG_FOUND).u64(*request_id).bytes(ciphertext);
            }
            BlobMessage::Unavailable { request_id, reason } => {
                w.u8(TAG_UNAVAILABLE).u64(*request_id).u8(*reason as u8);
            }
        }
        w.into_bytes()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        let mut r = Reader::new(bytes);
        let message = match r.u8("message tag")? {
            TAG_REQUEST => BlobMessage::Request {
                request_id: r.u64("request id")?,
                record_id: RecordId(r.array("record id")?),
                version: r.u32("version")?,
            },
            TAG_FOUND => BlobMessage::Found {
                request_id: r.u64("request id")?,
                ciphertext: r.bytes(limits::RECORD_CIPHERTEXT_BYTES_MAX as usize, "ciphertext")?.to_vec(),
            },
            TAG_UNAVAILABLE => BlobMessage::Unavailable {
                request_id: r.u64("request id")?,
                reason: Unavailable::from_u8(r.u8("reason")?)
                    .ok_or(CodecError::InvalidValue("unknown unavailability reason"))?,
            },
            tag => return Err(CodecError::InvalidTag { what: "replication message", tag }),
        };
        r.finish()?;
        Ok(message)
    }
}

/// Why a fetch failed.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FetchError {
    #[error("record {0} has no committed version {1}")]
    UnknownVersion(RecordId, u32),
    #[error("this node's organisation holds no key for this version; it does not fetch it")]
    NotEntitled,
    #[error("no peer could supply the ciphertext ({0})")]
    NoPeerHadIt(String),
    #[error("too many ciphertext fetches in flight; retry shortly")]
    Busy,
    #[error("the replication service has stopped")]
    Stopped,
    #[error("blob store: {0}")]
    Store(String),
}

/// What one version's ciphertext is: its on-chain hash and who may hold it.
struct VersionFacts {
    ciphertext_hash: Hash,
    custodian: IdentityId,
    /// Identities holding a wrap of the category key epoch the version's data key is under and
    /// a live grant covering the record now (the head's block time).
    entitled_holders: Vec<IdentityId>,
}

fn version_facts(chain: &Chain, record_id: &RecordId, version: u32) -> Option<VersionFacts> {
    // One snapshot: the record's index entry and its key state at one height.
    let state = chain.snapshot();
    let (patient, custodian, category, epoch, ciphertext_hash) = {
        let index = state.index();
        let record = index.record(record_id)?;
        let entry = record.versions.iter().find(|v| v.version == version)?;
        (record.patient, record.custodian, record.category.clone(), entry.key_epoch, entry.ciphertext_hash)
    };
    let head = state.record(record_id)?;
    let key = state.category_key(&CategoryKeyId { custodian, patient, category })?;
    let at_ms = state.head_timestamp_ms();
    let entitled_holders = key
        .holders_of(epoch)
        .unwrap_or_default()
        .iter()
        .map(|(id, _)| *id)
        .filter(|holder| access::holds_live_read_grant(&state, holder, record_id, head, at_ms))
        .collect();
    Some(VersionFacts { ciphertext_hash, custodian, entitled_holders })
}

impl VersionFacts {
    /// Whether `organisation` could open this version and is still entitled to read it, and so
    /// may hold its ciphertext.
    fn entitles(&self, organisation: &IdentityId) -> bool {
        self.custodian == *organisation || self.entitled_holders.contains(organisation)
    }
}

/// Requests awaiting an answer. Its lock (and the sender's) is taken even if poisoned: each
/// holds only a map insert or remove, or a send, so a panic elsewhere leaves them consistent.
type Pending = Arc<Mutex<HashMap<u64, (PublicKey, oneshot::Sender<BlobMessage>)>>>;

struct FetchJob {
    record_id: RecordId,
    version: u32,
    respond: oneshot::Sender<Result<Vec<u8>, FetchError>>,
}

/// Handle to a running replicator: asks peers for ciphertexts this node lacks.
#[derive(Clone)]
pub struct CiphertextFetcher {
    jobs: mpsc::Sender<FetchJob>,
    in_flight: Arc<AtomicUsize>,
}

impl CiphertextFetcher {
    /// Fetches the ciphertext of `record_id` `version` from peers, checks it against the
    /// on-chain hash and stores it; returns the ciphertext.
    pub async fn fetch(&self, record_id: RecordId, version: u32) -> Result<Vec<u8>, FetchError> {
        if self.in_flight.fetch_add(1, Ordering::SeqCst) >= FETCHES_IN_FLIGHT_MAX {
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            return Err(FetchError::Busy);
        }
        let (respond, response) = oneshot::channel();
        let mut jobs = self.jobs.clone();
        let sent = jobs.send(FetchJob { record_id, version, respond }).await;
        let result = match sent {
            Ok(()) => response.await.unwrap_or(Err(FetchError::Stopped)),
            Err(_) => Err(FetchError::Stopped),
        };
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        result
    }

    /// [`CiphertextFetcher::fetch`] from a thread that may block (never from an async task).
    pub fn fetch_blocking(&self, record_id: RecordId, version: u32) -> Result<Vec<u8>, FetchError> {
        futures::executor::block_on(self.fetch(record_id, version))
    }
}

/// Starts the replicator of this node (`me`, operated by `organisation`) on `context`: it
/// serves peers' requests from `blobs`, and runs fetches asked for through the returned handle.
pub fn start_replicator<E, S, R>(
    context: E,
    chain: Arc<Chain>,
    blobs: Arc<dyn BlobStore>,
    (me, organisation): (PublicKey, IdentityId),
    (sender, receiver): (S, R),
) -> CiphertextFetcher
where
    E: Spawner + Clock + Metrics,
    S: Sender<PublicKey = PublicKey>,
    R: Receiver<PublicKey = PublicKey>,
{
    // Which organisation operates each peer, from genesis.
    let peer_organisations: HashMap<PublicKey, IdentityId> = chain
        .genesis()
        .validators
        .iter()
        .filter_map(|v| Some((consensus_public_key(&v.signing_key)?, v.organisation?)))
        .collect();
    let sender = Arc::new(Mutex::new(sender));
    let pending: Pending = Arc::new(Mutex::new(HashMap::new()));
    let (jobs_tx, jobs_rx) = mpsc::channel(FETCHES_IN_FLIGHT_MAX);
    let shared = Shared {
        chain,
        blobs,
        organisation,
        peer_organisations: Arc::new(peer_organisations),
        me,
        sender,
        pending,
        next_request_id: Arc::new(AtomicU64::new(1)),
    };
    let serve = shared.clone();
    context.child("replication_serve").spawn(move |_| serve.serve(receiver));
    context.child("replication_fetch").spawn(move |context| shared.run_jobs(context, jobs_rx));
    CiphertextFetcher { jobs: jobs_tx, in_flight: Arc::new(AtomicUsize::new(0)) }
}

struct Shared<S> {
    chain: Arc<Chain>,
    blobs: Arc<dyn BlobStore>,
    organisation: IdentityId,
    peer_organisations: Arc<HashMap<PublicKey, IdentityId>>,
    me: PublicKey,
    sender: Arc<Mutex<S>>,
    pending: Pending,
    next_request_id: Arc<AtomicU64>,
}

impl<S> Clone for Shared<S> {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            blobs: self.blobs.clone(),
            organisation: self.organisation,
            peer_organisations: self.peer_organisations.clone(),
            me: self.me.clone(),
            sender: self.sender.clone(),
            pending: self.pending.clone(),
            next_request_id: self.next_request_id.clone(),
        }
    }
}

impl<S: Sender<PublicKey = PublicKey>> Shared<S> {
    fn send(&self, peer: &PublicKey, message: &BlobMessage) -> bool {
        let bytes = IoBuf::from(message.encode());
        let mut sender = self.sender.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        !sender.send(Recipients::One(peer.clone()), bytes, false).is_empty()
    }

    /// Answers peers' requests and routes their responses to the waiting fetches.
    async fn serve<R: Receiver<PublicKey = PublicKey>>(self, mut receiver: R) {
        while let Ok((peer, bytes)) = receiver.recv().await {
            let Ok(message) = BlobMessage::decode(bytes.as_ref()) else {
                tracing::debug!(%peer, "undecodable replication message ignored");
                continue;
            };
            match message {
                BlobMessage::Request { request_id, record_id, version } => {
                    let answer = self.answer(&peer, request_id, &record_id, version);
                    self.send(&peer, &answer);
                }
                BlobMessage::Found { request_id, .. } | BlobMessage::Unavailable { request_id, .. } => {
                    let waiting =
                        self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&request_id);
                    match waiting {
                        // Only the peer that was asked may answer.
                        Some((asked, respond)) if asked == peer => {
                            let _ = respond.send(message);
                        }
                        Some(entry) => {
                            self.pending
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                                .insert(request_id, entry);
                        }
                        None => {}
                    }
                }
            }
        }
    }

    fn answer(&self, peer: &PublicKey, request_id: u64, record_id: &RecordId, version: u32) -> BlobMessage {
        let unavailable = |reason| BlobMessage::Unavailable { request_id, reason };
        let Some(facts) = version_facts(&self.chain, record_id, version) else {
            return unavailable(Unavailable::UnknownVersion);
        };
        match self.peer_organisations.get(peer) {
            Some(org) if facts.entitles(org) => {}
            _ => return unavailable(Unavailable::NotEntitled),
        }
        match self.blobs.get(&facts.ciphertext_hash) {
            Ok(Some(ciphertext)) => BlobMessage::Found { request_id, ciphertext },
            _ => unavailable(Unavailable::NotStored),
        }
    }

    async fn run_jobs<E: Spawner + Clock>(self, context: E, mut jobs: mpsc::Receiver<FetchJob>) {
        while let Some(job) = jobs.next().await {
            let shared = self.clone();
            context.child("fetch").spawn(move |context| async move {
                let result = shared.fetch(&context, job.record_id, job.version).await;
                let _ = job.respond.send(result);
            });
        }
    }

    /// Asks entitled peers in turn (the custodian's nodes first) until one supplies bytes
    /// that hash to the on-chain ciphertext hash.
    async fn fetch<E: Clock>(&self, context: &E, record_id: RecordId, version: u32) -> Result<Vec<u8>, FetchError> {
        let facts =
            version_facts(&self.chain, &record_id, version).ok_or(FetchError::UnknownVersion(record_id, version))?;
        if !facts.entitles(&self.organisation) {
            return Err(FetchError::NotEntitled);
        }
        if let Ok(Some(ciphertext)) = self.blobs.get(&facts.ciphertext_hash) {
            return Ok(ciphertext);
        }
        let mut peers: Vec<(bool, PublicKey)> = self
            .peer_organisations
            .iter()
            .filter(|(peer, org)| **peer != self.me && facts.entitles(org))
            .map(|(peer, org)| (*org != facts.custodian, peer.clone()))
            .collect();
        peers.sort();
        let mut outcomes = Vec::new();
        for (_, peer) in peers {
            let request_id = self.next_request_id.fetch_add(1, Ordering::SeqCst);
            let (respond, response) = oneshot::channel();
            self.pending
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(request_id, (peer.clone(), respond));
            if !self.send(&peer, &BlobMessage::Request { request_id, record_id, version }) {
                self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&request_id);
                outcomes.push("not-connected");
                continue;
            }
            let answer = commonware_macros::select! {
                answer = response => answer.ok(),
                _ = context.sleep(PEER_TIMEOUT) => None,
            };
            self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&request_id);
            match answer {
                Some(BlobMessage::Found { ciphertext, .. }) => {
                    if blob_hash(&ciphertext) != facts.ciphertext_hash {
                        tracing::warn!(%peer, %record_id, version, "peer sent a ciphertext that does not match the chain");
                        outcomes.push("mismatch");
                        continue;
                    }
                    self.blobs.put(&ciphertext).map_err(|e| FetchError::Store(e.to_string()))?;
                    tracing::info!(%peer, %record_id, version, "ciphertext replicated from peer");
                    return Ok(ciphertext);
                }
                Some(BlobMessage::Unavailable { reason, .. }) => outcomes.push(reason.code()),
                Some(BlobMessage::Request { .. }) => outcomes.push("bad-answer"),
                None => outcomes.push("timeout"),
            }
        }
        if outcomes.is_empty() {
            outcomes.push("no entitled peer");
        }
        Err(FetchError::NoPeerHadIt(outcomes.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_junk_is_refused() {
        let messages = [
            BlobMessage::Request { request_id: 7, record_id: RecordId([3; 32]), version: 2 },
            BlobMessage::Found { request_id: 8, ciphertext: vec![1, 2, 3] },
            BlobMessage::Unavailable { request_id: 9, reason: Unavailable::NotEntitled },
        ];
        for m in messages {
            assert_eq!(BlobMessage::decode(&m.encode()).unwrap(), m);
            let mut trailing = m.encode();
            trailing.push(0);
            assert!(BlobMessage::decode(&trailing).is_err());
        }
        assert!(BlobMessage::decode(&[]).is_err());
        assert!(BlobMessage::decode(&[9, 0, 0]).is_err());
        assert!(BlobMessage::decode(&[TAG_UNAVAILABLE, 0, 0, 0, 0, 0, 0, 0, 1, 77]).is_err());
        // A length prefix beyond the ciphertext limit is refused before any allocation.
        let mut oversized = vec![TAG_FOUND];
        oversized.extend_from_slice(&1u64.to_be_bytes());
        oversized.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(BlobMessage::decode(&oversized).is_err());
    }
}
