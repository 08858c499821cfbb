//! The node's audit trail: every access decision this node makes becomes an access event,
//! committed on-chain in batches signed by the node's validator (the recorder).
//!
//! **Durable before the answer.** With a journal ([`AuditTrail::open_journal`]), an event is
//! appended to an append-only file and `fdatasync`ed (grouped: one sync covers every writer
//! waiting) before the decision it records is acted on, so a read is never served, nor a
//! refusal answered, with its event only in memory. A node that crashes replays the journal at
//! start and commits what the chain does not already hold. When the journal cannot take an event
//! (disk error, or [`AuditLimits::pending_events_max`] events not yet committed), the event is
//! not recorded and the decision is not acted on: the caller gets an error, never the data.
//! The journal is emptied whenever everything in it is committed.
//!
//! **Refusals are budgeted per accessor.** One identity's refused requests could otherwise
//! write the patient's trail full (20,000 events in seconds) and push real accesses out of view.
//! Each accessor has a bucket of [`AuditLimits::refusals_burst`] refusals, refilled at
//! [`AuditLimits::refusals_per_minute`]; beyond it a refusal is still refused, and the first
//! one per (accessor, patient) in each minute is recorded as a single `refusals-over-quota`
//! event (no record named), so the patient learns the attempts went on without each costing a
//! permanent on-chain entry. The caller's answer is the same either way.
//!
//! Journal frame: `u32` BE length of the rest; 8 bytes: the first 8 of SHA-256 over the event
//! bytes; the event's canonical encoding (`AccessEvent`, `docs/format.md`). A torn or damaged
//! tail is cut at open.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    fs::{File, OpenOptions},
    io::{Read, Write},
    path::{Path, PathBuf},
    sync::{Condvar, Mutex, MutexGuard, OnceLock},
};

use medledger_codec::{Decode, Encode, Reader};
use medledger_crypto::Keypair;
use medledger_ledger::{AccessEvent, Payload};
use medledger_types::{IdentityId, TimestampMs, TxId, limits};

use medledger_node::chain::{Chain, SubmitError, TxStatus};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    #[error("the audit journal cannot record the access: {0}")]
    Journal(#[from] std::io::Error),
    #[error("{0} access events await commitment; refusing to act on more until they are recorded")]
    Backlog(usize),
    #[error("access events not submitted: {0}")]
    Submit(#[from] SubmitError),
}

/// Bounds of the audit trail.
#[derive(Debug, Clone, Copy)]
pub struct AuditLimits {
    /// Most events recorded but not yet committed; beyond, decisions are refused.
    pub pending_events_max: usize,
    /// Refusals an accessor may have recorded at once, and the rate the budget refills at.
    pub refusals_burst: u32,
    pub refusals_per_minute: u32,
    /// Most `refusals-over-quota` summaries per accessor per minute (one per patient).
    pub summaries_per_minute: u32,
    /// A journal file larger than this is rewritten with only its uncommitted events once they
    /// are a quarter of it or less.
    pub journal_compact_bytes: u64,
}

impl Default for AuditLimits {
    fn default() -> Self {
        Self {
            pending_events_max: 1_000_000,
            refusals_burst: 120,
            refusals_per_minute: 60,
            summaries_per_minute: 16,
            journal_compact_bytes: 16 * 1024 * 1024,
        }
    }
}

/// The reason code of the event standing for an accessor's unrecorded refusals.
pub const OVER_QUOTA_REASON: &str = "refusals-over-quota";

const MINUTE_MS: u64 = 60_000;
/// Largest journal frame accepted at replay (an event is far smaller).
const FRAME_BYTES_MAX: usize = 4096;

/// A refusal budget: tokens, and when they were last counted.
struct Bucket {
    tokens: f64,
    at_ms: TimestampMs,
    /// The minute summaries were last counted in, and the patients summarised in it.
    summary_minute: u64,
    summarised: Vec<IdentityId>,
}

#[derive(Default)]
struct Queue {
    waiting: VecDeque<AccessEvent>,
    /// Events of a rejected batch, retried one per transaction.
    solo: VecDeque<AccessEvent>,
    /// Submitted batches, oldest first, with their events.
    in_flight: VecDeque<(TxId, Vec<AccessEvent>)>,
    /// Events in `in_flight`, kept so the backlog check costs nothing.
    in_flight_events: usize,
}

impl Queue {
    fn len(&self) -> usize {
        self.waiting.len() + self.solo.len() + self.in_flight_events
    }
}

struct JournalState {
    file: File,
    path: PathBuf,
    /// Frames appended but not yet written (the next sync round writes and syncs them).
    buffer: Vec<u8>,
    /// Frames appended since open (never reset), and how many of them are durable.
    appended: u64,
    durable: u64,
    /// Whether a caller is writing and syncing a round right now (without the lock).
    syncing: bool,
    /// Bytes in the file.
    bytes: u64,
    /// Events appended (or replayed) and not yet committed; at 0 the file is emptied.
    uncommitted: usize,
    /// Set when a write or sync failed: nothing more is recorded until the node restarts (a
    /// frame after a lost one could be cut at replay, or a later sync could cover a lost write).
    broken: Option<String>,
}

/// The journal file, with group commit: appends go to a buffer in memory; whoever needs a
/// frame durable and finds no round in progress leads one (writes the whole buffer with one
/// call, syncs once, wakes everyone it covered), and the others wait for it. A round covers
/// every frame appended before it started, so concurrent readers share writes and syncs.
struct Journal {
    state: Mutex<JournalState>,
    rounds: Condvar,
    compact_bytes: u64,
}

fn frame_of(event: &AccessEvent) -> Vec<u8> {
    let bytes = event.to_bytes();
    let mut frame = Vec::with_capacity(12 + bytes.len());
    frame.extend_from_slice(&((bytes.len() + 8) as u32).to_be_bytes());
    frame.extend_from_slice(&medledger_crypto::sha256(&bytes).0[..8]);
    frame.extend_from_slice(&bytes);
    frame
}

fn broken(why: &str) -> std::io::Error {
    std::io::Error::other(format!("the audit journal failed earlier ({why}); restart the node"))
}

impl Journal {
    /// Appends `event` and queues it, both under the journal's lock (lock order: journal, then
    /// queue), so a compaction sees every appended event in the queue.
    fn append(&self, event: AccessEvent, queue: &Mutex<Queue>) -> std::io::Result<u64> {
        let frame = frame_of(&event);
        let mut state = self.state.lock().expect("audit journal lock poisoned");
        if let Some(why) = &state.broken {
            return Err(broken(why));
        }
        state.buffer.extend_from_slice(&frame);
        state.appended += 1;
        state.uncommitted += 1;
        queue.lock().expect("audit queue lock poisoned").waiting.push_back(event);
        Ok(state.appended)
    }

    /// Returns once frame `frame` (and every one before it) is durable.
    fn sync_through(&self, frame: u64) -> std::io::Result<()> {
        let mut state = self.state.lock().expect("audit journal lock poisoned");
        loop {
            if let Some(why) = &state.broken {
                return Err(broken(why));
            }
            if state.durable >= frame {
                return Ok(());
            }
            if state.syncing {
                state = self.rounds.wait(state).expect("audit journal lock poisoned");
                continue;
            }
            // Lead a round: everything appended so far.
            let round = std::mem::take(&mut state.buffer);
            let target = state.appended;
            let start = state.bytes;
            let file = state.file.try_clone()?;
            state.syncing = true;
            drop(state);
            let written = (&file).write_all(&round).and_then(|()| file.sync_data());
            state = self.state.lock().expect("audit journal lock poisoned");
            state.syncing = false;
            match written {
                Ok(()) => {
                    state.bytes = start + round.len() as u64;
                    state.durable = state.durable.max(target);
                }
                Err(e) => {
                    // A torn frame would end the journal at replay, and after a failed sync the
                    // kernel may have dropped writes a later sync would not bring back: stop.
                    let _ = state.file.set_len(start);
                    state.broken = Some(e.to_string());
                }
            }
            self.rounds.notify_all();
        }
    }

    /// Waits for a round in progress to end (callers that change the file hold the lock after).
    fn idle<'a>(&self, mut state: MutexGuard<'a, JournalState>) -> MutexGuard<'a, JournalState> {
        while state.syncing {
            state = self.rounds.wait(state).expect("audit journal lock poisoned");
        }
        state
    }

    /// `n` events committed (or given up on): empties the file once nothing is left, and
    /// rewrites it with only what is left once committed frames make up most of a large file.
    fn committed(&self, n: usize, queue: &Mutex<Queue>) -> std::io::Result<()> {
        let state = self.state.lock().expect("audit journal lock poisoned");
        let mut state = self.idle(state);
        state.uncommitted = state.uncommitted.saturating_sub(n);
        if state.broken.is_some() {
            return Ok(());
        }
        if state.uncommitted == 0 {
            // Nothing is uncommitted, so nothing is buffered either.
            if state.bytes > 0 {
                state.file.set_len(0)?;
                state.file.sync_data()?;
                state.bytes = 0;
            }
            return Ok(());
        }
        let estimate = state.uncommitted as u64 * FRAME_BYTES_ESTIMATE;
        if state.bytes < self.compact_bytes || state.bytes < 4 * estimate {
            return Ok(());
        }
        // Every uncommitted event is in the queue (appends queue under this lock), buffered
        // ones included.
        let left: Vec<AccessEvent> = {
            let queue = queue.lock().expect("audit queue lock poisoned");
            queue
                .waiting
                .iter()
                .chain(&queue.solo)
                .chain(queue.in_flight.iter().flat_map(|(_, events)| events))
                .cloned()
                .collect()
        };
        let tmp = state.path.with_extension("compacting");
        let mut fresh = private_file(&tmp, true)?;
        let mut bytes = 0u64;
        for event in &left {
            let frame = frame_of(event);
            fresh.write_all(&frame)?;
            bytes += frame.len() as u64;
        }
        fresh.sync_all()?;
        std::fs::rename(&tmp, &state.path)?;
        if let Some(dir) = state.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        state.file = private_file(&state.path, false)?;
        state.buffer.clear();
        state.bytes = bytes;
        state.uncommitted = left.len();
        // Everything appended so far is in the synced new file.
        state.durable = state.appended;
        self.rounds.notify_all();
        Ok(())
    }
}

/// Opens (creating, mode 0600) a journal file for appending; `truncate` empties it.
fn private_file(path: &Path, truncate: bool) -> std::io::Result<File> {
    let mut options = OpenOptions::new();
    options.read(true).append(true).create(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let file = options.open(path)?;
    if truncate {
        file.set_len(0)?;
    }
    Ok(file)
}

/// About how large a frame is (for deciding when to compact).
const FRAME_BYTES_ESTIMATE: u64 = 200;

/// The journal frames a caller recorded and has yet to make durable ([`AuditTrail::sync`]).
#[derive(Debug, Default, Clone, Copy)]
#[must_use = "events recorded with a deferred sync are durable only once synced"]
pub struct Synced(u64);

/// See the module docs.
pub struct AuditTrail {
    queue: Mutex<Queue>,
    journal: OnceLock<Journal>,
    refusals: Mutex<HashMap<IdentityId, Bucket>>,
    limits: AuditLimits,
}

impl Default for AuditTrail {
    fn default() -> Self {
        Self::new(AuditLimits::default())
    }
}

impl AuditTrail {
    pub fn new(limits: AuditLimits) -> Self {
        Self {
            queue: Mutex::new(Queue::default()),
            journal: OnceLock::new(),
            refusals: Mutex::new(HashMap::new()),
            limits,
        }
    }

    /// Makes every later event durable in the journal at `path` (created 0600 if missing), and
    /// queues the events a previous run journaled that `chain` does not hold yet (recorded by
    /// `recorder`, this node's validator). Returns how many were queued again. Set once.
    pub fn open_journal(
        &self,
        path: &Path,
        chain: &Chain,
        recorder: &IdentityId,
        now_ms: TimestampMs,
    ) -> Result<usize, AuditError> {
        let mut file = private_file(path, false)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let (events, valid) = replay(&bytes);
        if valid < bytes.len() {
            tracing::warn!(path = %path.display(), cut = bytes.len() - valid, "audit journal tail was torn; cut");
            file.set_len(valid as u64)?;
        }
        // Older events would be refused by the ledger: they cannot be recorded any more.
        let age_limit = now_ms.saturating_sub(limits::ACCESS_EVENT_AGE_MAX_MS);
        let pending: Vec<AccessEvent> = {
            // What this node already recorded about the journal's patients, counted by value (two
            // identical decisions in one millisecond are two events).
            let index = chain.patient_index();
            let patients: HashSet<IdentityId> = events.iter().map(|e| e.patient).collect();
            let mut recorded: HashMap<&AccessEvent, usize> = HashMap::new();
            for entry in patients.iter().filter_map(|p| index.patient(p)).flat_map(|p| p.access.iter()) {
                if entry.recorder == *recorder {
                    *recorded.entry(&entry.event).or_default() += 1;
                }
            }
            events
                .iter()
                .filter(|e| match recorded.get_mut(e) {
                    Some(n) if *n > 0 => {
                        *n -= 1;
                        false
                    }
                    _ => e.at_ms >= age_limit,
                })
                .cloned()
                .collect()
        };
        let journal = Journal {
            state: Mutex::new(JournalState {
                file,
                path: path.to_owned(),
                buffer: Vec::new(),
                appended: 0,
                durable: 0,
                syncing: false,
                bytes: valid as u64,
                uncommitted: pending.len(),
                broken: None,
            }),
            rounds: Condvar::new(),
            compact_bytes: self.limits.journal_compact_bytes,
        };
        if pending.is_empty() {
            journal.committed(0, &self.queue)?;
        }
        let queued = pending.len();
        self.queue.lock().expect("audit queue lock poisoned").waiting.extend(pending);
        if self.journal.set(journal).is_err() {
            tracing::warn!("audit journal opened twice; the first stays");
        }
        Ok(queued)
    }

    /// Records `event` (durably, with a journal) before the decision it records is acted on.
    pub fn record(&self, event: AccessEvent) -> Result<(), AuditError> {
        let mut synced = Synced::default();
        self.record_deferred(event, &mut synced)?;
        self.sync(synced)
    }

    /// Records `event`, leaving the journal's sync to [`AuditTrail::sync`] with `synced`: a
    /// request deciding many accesses (a search page, an export chunk) waits for one sync,
    /// before it acts on any of them.
    pub fn record_deferred(&self, event: AccessEvent, synced: &mut Synced) -> Result<(), AuditError> {
        let pending = self.queue.lock().expect("audit queue lock poisoned").len();
        if pending >= self.limits.pending_events_max {
            return Err(AuditError::Backlog(pending));
        }
        match self.journal.get() {
            Some(journal) => synced.0 = synced.0.max(journal.append(event, &self.queue)?),
            None => self.queue.lock().expect("audit queue lock poisoned").waiting.push_back(event),
        }
        Ok(())
    }

    /// Makes every event recorded with `synced` durable.
    pub fn sync(&self, synced: Synced) -> Result<(), AuditError> {
        match self.journal.get() {
            Some(journal) if synced.0 > 0 => Ok(journal.sync_through(synced.0)?),
            _ => Ok(()),
        }
    }

    /// Records a refusal within the accessor's budget; beyond it, at most a
    /// `refusals-over-quota` summary per patient per minute (see the module docs).
    pub fn record_refusal(&self, event: AccessEvent, now_ms: TimestampMs) -> Result<(), AuditError> {
        let mut synced = Synced::default();
        self.record_refusal_deferred(event, now_ms, &mut synced)?;
        if let Err(e) = self.sync(synced) {
            tracing::error!(error = %e, "a refusal could not be made durable");
        }
        Ok(())
    }

    /// [`AuditTrail::record_refusal`] with the sync left to [`AuditTrail::sync`].
    pub fn record_refusal_deferred(
        &self,
        event: AccessEvent,
        now_ms: TimestampMs,
        synced: &mut Synced,
    ) -> Result<(), AuditError> {
        let to_record = {
            let mut buckets = self.refusals.lock().expect("audit refusal lock poisoned");
            if buckets.len() > 100_000 {
                // Forget accessors whose budget has refilled: nothing to remember about them.
                let (burst, rate) = (self.limits.refusals_burst, self.limits.refusals_per_minute);
                buckets.retain(|_, b| refilled(b, now_ms, burst, rate) < f64::from(burst));
            }
            let burst = self.limits.refusals_burst;
            let bucket = buckets.entry(event.accessor).or_insert(Bucket {
                tokens: f64::from(burst),
                at_ms: now_ms,
                summary_minute: 0,
                summarised: Vec::new(),
            });
            bucket.tokens = refilled(bucket, now_ms, burst, self.limits.refusals_per_minute);
            bucket.at_ms = now_ms;
            if bucket.tokens >= 1.0 {
                bucket.tokens -= 1.0;
                Some(event)
            } else {
                let minute = now_ms / MINUTE_MS;
                if bucket.summary_minute != minute {
                    bucket.summary_minute = minute;
                    bucket.summarised.clear();
                }
                let first_for_patient = !bucket.summarised.contains(&event.patient);
                if first_for_patient && bucket.summarised.len() < self.limits.summaries_per_minute as usize {
                    bucket.summarised.push(event.patient);
                    Some(AccessEvent { record: None, grant_id: None, reason: OVER_QUOTA_REASON.into(), ..event })
                } else {
                    None
                }
            }
        };
        // A refusal that cannot be recorded is still a refusal, answered as every other (an
        // error here would tell a real record from an unknown one); the failure is logged.
        if let Some(event) = to_record
            && let Err(e) = self.record_deferred(event, synced)
        {
            tracing::error!(error = %e, "a refusal could not be recorded");
        }
        Ok(())
    }

    /// Events recorded and not yet known committed.
    pub fn pending(&self) -> usize {
        self.queue.lock().expect("audit queue lock poisoned").len()
    }

    /// Settles submitted batches (committed ones leave the journal; ones that vanished are
    /// queued again; a rejected batch is retried event by event, and an event rejected alone
    /// is given up with an error in the log), then submits what waits, in batches, signed by
    /// `node_keys`. Events that cannot be submitted stay queued.
    pub fn flush(&self, chain: &Chain, node_keys: &Keypair, now_ms: TimestampMs) -> Result<Vec<TxId>, AuditError> {
        let settled = self.settle(chain);
        if let Some(journal) = self.journal.get()
            && settled > 0
        {
            journal.committed(settled, &self.queue)?;
        }
        let mut ids = Vec::new();
        loop {
            let (batch, solo) = {
                let mut queue = self.queue.lock().expect("audit queue lock poisoned");
                match queue.solo.pop_front() {
                    Some(event) => (vec![event], true),
                    None => {
                        let n = queue.waiting.len().min(limits::ACCESS_EVENTS_PER_TX_MAX);
                        (queue.waiting.drain(..n).collect::<Vec<_>>(), false)
                    }
                }
            };
            if batch.is_empty() {
                return Ok(ids);
            }
            match chain.submit_as(node_keys, Payload::AccessEvents { events: batch.clone() }, now_ms) {
                // The ledger's rules refuse it: retrying the same batch would block every
                // event behind it. A batch is retried event by event; an event refused alone
                // cannot be recorded and is given up, loudly.
                Err(error @ (SubmitError::Invalid(_) | SubmitError::Malformed(_))) if solo => {
                    tracing::error!(%error, event = ?batch[0], "an access event was refused by the ledger and is not recorded");
                    if let Some(journal) = self.journal.get() {
                        journal.committed(1, &self.queue)?;
                    }
                }
                Err(SubmitError::Invalid(_) | SubmitError::Malformed(_)) => {
                    tracing::warn!(
                        events = batch.len(),
                        "access events refused as a batch; submitting them one by one"
                    );
                    self.queue.lock().expect("audit queue lock poisoned").solo.extend(batch);
                }
                Ok(id) => {
                    ids.push(id);
                    let mut queue = self.queue.lock().expect("audit queue lock poisoned");
                    queue.in_flight_events += batch.len();
                    queue.in_flight.push_back((id, batch));
                }
                Err(e) => {
                    let mut queue = self.queue.lock().expect("audit queue lock poisoned");
                    if solo {
                        queue.solo.push_front(batch.into_iter().next().expect("one event"));
                    } else {
                        for event in batch.into_iter().rev() {
                            queue.waiting.push_front(event);
                        }
                    }
                    return Err(e.into());
                }
            }
        }
    }

    /// Returns how many events left for good (committed, or given up).
    fn settle(&self, chain: &Chain) -> usize {
        let mut queue = self.queue.lock().expect("audit queue lock poisoned");
        let mut settled = 0;
        let mut still = VecDeque::new();
        while let Some((id, events)) = queue.in_flight.pop_front() {
            match chain.tx_status(&id) {
                Ok(TxStatus::Committed { .. }) => settled += events.len(),
                Ok(TxStatus::Pending) | Err(_) => still.push_back((id, events)),
                Ok(TxStatus::Rejected { reason }) if events.len() == 1 => {
                    tracing::error!(tx = %id, %reason, "an access event was refused by the ledger and is not recorded");
                    settled += 1;
                }
                Ok(TxStatus::Rejected { reason }) => {
                    tracing::warn!(tx = %id, %reason, events = events.len(), "access events refused as a batch; retrying one by one");
                    queue.solo.extend(events);
                }
                Ok(TxStatus::Unknown) => {
                    for event in events.into_iter().rev() {
                        queue.waiting.push_front(event);
                    }
                }
            }
        }
        queue.in_flight_events = still.iter().map(|(_, e)| e.len()).sum();
        queue.in_flight = still;
        settled
    }
}

fn refilled(bucket: &Bucket, now_ms: TimestampMs, burst: u32, per_minute: u32) -> f64 {
    let elapsed = now_ms.saturating_sub(bucket.at_ms) as f64;
    (bucket.tokens + elapsed * f64::from(per_minute) / MINUTE_MS as f64).min(f64::from(burst))
}

/// The events of a journal's bytes, and how many bytes of whole, intact frames there are.
fn replay(bytes: &[u8]) -> (Vec<AccessEvent>, usize) {
    let mut events = Vec::new();
    let mut at = 0;
    while bytes.len() - at >= 4 {
        let len = u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        if !(8..=FRAME_BYTES_MAX).contains(&len) || bytes.len() - at - 4 < len {
            break;
        }
        let (check, body) = bytes[at + 4..at + 4 + len].split_at(8);
        if medledger_crypto::sha256(body).0[..8] != *check {
            break;
        }
        let mut reader = Reader::new(body);
        let Ok(event) = AccessEvent::decode(&mut reader) else { break };
        if reader.finish().is_err() {
            break;
        }
        events.push(event);
        at += 4 + len;
    }
    (events, at)
}

#[cfg(test)]
mod tests {
    use medledger_ledger::{AccessAction, AccessOutcome, Purpose};
    use medledger_types::RecordId;

    use super::*;

    fn denial(accessor: u8, patient: u8) -> AccessEvent {
        AccessEvent {
            accessor: IdentityId([accessor; 32]),
            patient: IdentityId([patient; 32]),
            record: Some((RecordId([9; 32]), 1)),
            action: AccessAction::Read,
            purpose: Purpose::Treatment,
            outcome: AccessOutcome::Denied,
            grant_id: None,
            reason: "no-grant".into(),
            at_ms: 5,
        }
    }

    #[test]
    fn journal_frames_replay_and_a_torn_tail_is_cut() {
        let events = [denial(1, 2), denial(3, 4)];
        let mut bytes = Vec::new();
        for e in &events {
            let body = e.to_bytes();
            bytes.extend_from_slice(&((body.len() + 8) as u32).to_be_bytes());
            bytes.extend_from_slice(&medledger_crypto::sha256(&body).0[..8]);
            bytes.extend_from_slice(&body);
        }
        let whole = bytes.len();
        assert_eq!(replay(&bytes), (events.to_vec(), whole));
        // A torn frame, then a damaged one: replay stops at the last intact frame.
        bytes.extend_from_slice(&[0, 0, 0, 40, 1, 2]);
        assert_eq!(replay(&bytes).1, whole);
        bytes.truncate(whole);
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert_eq!(replay(&bytes).0.len(), 1);
    }

    #[test]
    fn one_accessors_refusals_are_budgeted_and_summarised_once_per_patient() {
        let limits = AuditLimits {
            pending_events_max: 1000,
            refusals_burst: 3,
            refusals_per_minute: 60,
            summaries_per_minute: 2,
            ..AuditLimits::default()
        };
        let trail = AuditTrail::new(limits);
        for _ in 0..10 {
            trail.record_refusal(denial(1, 2), 0).unwrap();
        }
        // Three within the budget, one summary for patient 2.
        assert_eq!(trail.pending(), 4);
        for patient in 3..10 {
            trail.record_refusal(denial(1, patient), 0).unwrap();
        }
        // At most two summaries a minute: patient 2's and patient 3's.
        assert_eq!(trail.pending(), 5);
        // Another accessor has its own budget.
        trail.record_refusal(denial(7, 2), 0).unwrap();
        assert_eq!(trail.pending(), 6);
        // A second later one refusal's worth has refilled.
        trail.record_refusal(denial(1, 2), 1_000).unwrap();
        assert_eq!(trail.pending(), 7);
        let queue = trail.queue.lock().unwrap();
        let summaries: Vec<_> = queue.waiting.iter().filter(|e| e.reason == OVER_QUOTA_REASON).collect();
        assert_eq!(summaries.len(), 2);
        assert!(summaries.iter().all(|e| e.record.is_none()));
    }

    #[test]
    fn a_full_backlog_refuses_to_record() {
        let limits = AuditLimits { pending_events_max: 2, ..AuditLimits::default() };
        let trail = AuditTrail::new(limits);
        trail.record(denial(1, 2)).unwrap();
        trail.record(denial(1, 2)).unwrap();
        assert!(matches!(trail.record(denial(1, 2)), Err(AuditError::Backlog(2))));
    }
}
