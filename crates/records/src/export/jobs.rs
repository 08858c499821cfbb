//! The bookkeeping of Bulk Data export jobs: which jobs a node holds, whose
//! they are, how much output each holds, and the quotas on both.
//!
//! Every quota is per identity (the token's): at most one running job and
//! [`ExportLimits::held_per_identity_max`] held (running, or finished and not yet deleted or
//! expired), at most [`ExportLimits::identity_bytes_max`] of output over its held jobs. The
//! node-wide caps (running jobs, held jobs, output bytes) stay, but reaching one never evicts
//! anyone on the spot: it makes the finished jobs of the identities holding more than their
//! fair share (the cap divided by the identities holding some) expire sooner,
//! [`ExportLimits::contended_ttl_ms`] after they finished instead of [`ExportLimits::ttl_ms`],
//! and whatever is still full is answered 429 with the time until room is expected.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
};

use medledger_types::IdentityId;

/// Default of [`ExportLimits::running_max`].
pub const JOBS_RUNNING_MAX: usize = 4;
/// Default of [`ExportLimits::held_max`].
pub const JOBS_HELD_MAX: usize = 256;
/// Default of [`ExportLimits::held_per_identity_max`].
pub const JOBS_HELD_PER_IDENTITY_MAX: usize = 2;
/// Default of [`ExportLimits::job_bytes_max`].
pub const JOB_BYTES_MAX: usize = 256 << 20;
/// Default of [`ExportLimits::identity_bytes_max`].
pub const IDENTITY_BYTES_MAX: usize = 256 << 20;
/// Default of [`ExportLimits::bytes_max`].
pub const NODE_BYTES_MAX: usize = 1 << 30;
/// Default of [`ExportLimits::ttl_ms`].
pub const JOB_TTL_MS: u64 = 60 * 60 * 1000;
/// Default of [`ExportLimits::contended_ttl_ms`].
pub const JOB_TTL_CONTENDED_MS: u64 = 10 * 60 * 1000;
/// `Retry-After` (seconds) when every running slot is taken (running jobs end by themselves).
const RETRY_AFTER_RUNNING_S: u64 = 30;
/// `Retry-After` (seconds) while the client's own job is running.
pub const RETRY_AFTER_POLL_S: u64 = 2;

/// The export quotas of a node: per identity (token identity) and in all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExportLimits {
    /// Jobs running at once on the node (one per identity at most).
    pub running_max: usize,
    /// Jobs held at once on the node (running, or finished and not deleted or expired).
    pub held_max: usize,
    /// Jobs one identity may hold at once, of which one may be running.
    pub held_per_identity_max: usize,
    /// Output bytes of one job; past it the job stops and says so in its errors.
    pub job_bytes_max: usize,
    /// Output bytes of all the jobs one identity holds, finished-but-not-downloaded included;
    /// past it its running job stops and says so.
    pub identity_bytes_max: usize,
    /// Output bytes of all jobs on the node.
    pub bytes_max: usize,
    /// How long a finished job's output is kept.
    pub ttl_ms: u64,
    /// How long, instead, a finished job of an identity holding more than its fair share is
    /// kept once the node runs into a node-wide cap.
    pub contended_ttl_ms: u64,
}

impl Default for ExportLimits {
    fn default() -> Self {
        Self {
            running_max: JOBS_RUNNING_MAX,
            held_max: JOBS_HELD_MAX,
            held_per_identity_max: JOBS_HELD_PER_IDENTITY_MAX,
            job_bytes_max: JOB_BYTES_MAX,
            identity_bytes_max: IDENTITY_BYTES_MAX,
            bytes_max: NODE_BYTES_MAX,
            ttl_ms: JOB_TTL_MS,
            contended_ttl_ms: JOB_TTL_CONTENDED_MS,
        }
    }
}

/// Output bytes held, in all and per identity.
#[derive(Default)]
struct Bytes {
    total: usize,
    /// Only identities holding some.
    per_identity: HashMap<IdentityId, usize>,
}

/// The export jobs of a node (in memory only).
pub struct Jobs {
    limits: ExportLimits,
    held: Mutex<HashMap<String, Arc<Job>>>,
    /// Lock order: `held`, then `bytes` (a job dropped under `held` gives its bytes back).
    bytes: Arc<Mutex<Bytes>>,
}

impl Default for Jobs {
    fn default() -> Self {
        Self::new(ExportLimits::default())
    }
}

/// One export job.
pub struct Job {
    /// Random, 128 bits, hex: unguessable, though only its owner may use it anyway.
    pub id: String,
    pub owner: IdentityId,
    /// The kick-off request's absolute URL, for the manifest.
    pub request: String,
    /// The base URL the manifest's file URLs start with.
    pub base: String,
    cancelled: AtomicBool,
    pub progress: Mutex<Progress>,
    /// `None` while the job runs.
    pub finished: Mutex<Option<Finished>>,
    /// When the job's output is discarded; `u64::MAX` while it runs.
    expires_ms: AtomicU64,
    bytes: Arc<Mutex<Bytes>>,
    /// Bytes of output this job holds (counted in `bytes` too).
    reserved: AtomicUsize,
}

#[derive(Clone, Copy, Default)]
pub struct Progress {
    /// Consent is decided; `total` is what the caller may see.
    pub exporting: bool,
    pub done: usize,
    pub total: usize,
}

pub enum Finished {
    Complete {
        at_ms: u64,
        /// The finalized head's block time the export reflects.
        transaction_time_ms: u64,
        outputs: Vec<NdjsonFile>,
        errors: Vec<NdjsonFile>,
    },
    /// The job itself failed (not a record of it): an internal fault.
    Failed { at_ms: u64, diagnostics: String },
}

impl Finished {
    fn at_ms(&self) -> u64 {
        match self {
            Finished::Complete { at_ms, .. } | Finished::Failed { at_ms, .. } => *at_ms,
        }
    }
}

/// One output file: NDJSON lines of one resource type, in memory.
pub struct NdjsonFile {
    /// `Observation-1.ndjson`, `error-1.ndjson`.
    pub name: String,
    pub resource_type: String,
    pub lines: usize,
    pub body: Vec<u8>,
}

impl Drop for NdjsonFile {
    /// The body is PHI: overwrite it before the memory is given back.
    fn drop(&mut self) {
        self.body.fill(0);
        std::hint::black_box(&self.body);
    }
}

/// Appends `line` (one resource, no line break) to the last file of `files` when it is of
/// `resource_type` and has room, else to a new file (`{prefix}-{n}.ndjson`).
pub fn push_line(files: &mut Vec<NdjsonFile>, resource_type: &str, prefix: &str, line: &[u8], lines_max: usize) {
    let fits = files.last().is_some_and(|f| f.resource_type == resource_type && f.lines < lines_max);
    if !fits {
        let n = files.iter().filter(|f| f.resource_type == resource_type).count() + 1;
        files.push(NdjsonFile {
            name: format!("{prefix}-{n}.ndjson"),
            resource_type: resource_type.to_owned(),
            lines: 0,
            body: Vec::new(),
        });
    }
    let file = files.last_mut().expect("a file was just ensured");
    file.body.extend_from_slice(line);
    file.body.push(b'\n');
    file.lines += 1;
}

/// Why a kick-off cannot start a job now; each with its `Retry-After` in seconds.
#[derive(Debug, PartialEq, Eq)]
pub enum Busy {
    /// The identity already has a job running.
    IdentityRunning,
    /// The identity holds its whole quota of jobs.
    IdentityHolding { retry_after_s: u64 },
    /// The node runs or holds as many jobs as it may.
    Node { retry_after_s: u64 },
}

/// Why a job stopped writing output early.
#[derive(Debug, PartialEq, Eq)]
pub enum Full {
    Job,
    Identity,
    Node,
}

/// Whole seconds from `now_ms` until `at_ms`, at least 1: a `Retry-After`.
fn seconds_until(at_ms: u64, now_ms: u64) -> u64 {
    at_ms.saturating_sub(now_ms).div_ceil(1000).max(1)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update is a single step (or fills a value no one reads until it is whole).
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Job {
    pub fn is_running(&self) -> bool {
        lock(&self.finished).is_none()
    }

    pub fn cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }

    pub fn set_progress(&self, progress: Progress) {
        *lock(&self.progress) = progress;
    }

    fn expires_ms(&self) -> u64 {
        self.expires_ms.load(Ordering::SeqCst)
    }

    /// Keeps a finished job at most `ttl_ms` after it finished (never longer than it was).
    fn shorten(&self, ttl_ms: u64) {
        if let Some(finished) = &*lock(&self.finished) {
            self.expires_ms.fetch_min(finished.at_ms().saturating_add(ttl_ms), Ordering::SeqCst);
        }
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        let reserved = *self.reserved.get_mut();
        if reserved > 0 {
            let mut bytes = lock(&self.bytes);
            bytes.total = bytes.total.saturating_sub(reserved);
            if let Some(mine) = bytes.per_identity.get_mut(&self.owner) {
                *mine = mine.saturating_sub(reserved);
                if *mine == 0 {
                    bytes.per_identity.remove(&self.owner);
                }
            }
        }
    }
}

/// Discards the jobs whose output expired.
fn sweep(held: &mut HashMap<String, Arc<Job>>, now_ms: u64) {
    held.retain(|_, job| now_ms < job.expires_ms());
}

/// The identities among `holdings` (identity → amount held) holding more than their fair
/// share of `cap`: `cap` divided by the number of identities holding some, `requester`
/// included.
fn over_share(holdings: &HashMap<IdentityId, usize>, cap: usize, requester: IdentityId) -> HashSet<IdentityId> {
    let holders = holdings.len() + usize::from(!holdings.contains_key(&requester));
    let share = (cap / holders.max(1)).max(1);
    holdings.iter().filter(|(_, held)| **held > share).map(|(id, _)| *id).collect()
}

impl Jobs {
    pub fn new(limits: ExportLimits) -> Self {
        Self { limits, held: Mutex::default(), bytes: Arc::default() }
    }

    pub fn limits(&self) -> &ExportLimits {
        &self.limits
    }

    /// Finished jobs of `over` are kept only [`ExportLimits::contended_ttl_ms`] after they
    /// finished; then the expired are discarded.
    fn contend(&self, held: &mut HashMap<String, Arc<Job>>, over: &HashSet<IdentityId>, now_ms: u64) {
        for job in held.values().filter(|j| over.contains(&j.owner)) {
            job.shorten(self.limits.contended_ttl_ms);
        }
        sweep(held, now_ms);
    }

    /// Starts a job for `owner` if the limits allow.
    /// Admits a job of `owner` at `now_ms`, under the quotas; `id_bytes` (random, from the
    /// caller: randomness is an input here) become its id.
    pub fn admit(
        &self,
        owner: IdentityId,
        request: String,
        base: String,
        now_ms: u64,
        id_bytes: [u8; 16],
    ) -> Result<Arc<Job>, Busy> {
        let mut held = lock(&self.held);
        sweep(&mut held, now_ms);
        let mine: Vec<&Arc<Job>> = held.values().filter(|j| j.owner == owner).collect();
        if mine.iter().any(|j| j.is_running()) {
            return Err(Busy::IdentityRunning);
        }
        if mine.len() >= self.limits.held_per_identity_max {
            let first_expiry_ms = mine.iter().map(|j| j.expires_ms()).min().unwrap_or(now_ms);
            return Err(Busy::IdentityHolding { retry_after_s: seconds_until(first_expiry_ms, now_ms) });
        }
        if held.values().filter(|j| j.is_running()).count() >= self.limits.running_max {
            return Err(Busy::Node { retry_after_s: RETRY_AFTER_RUNNING_S });
        }
        if held.len() >= self.limits.held_max {
            let mut holdings: HashMap<IdentityId, usize> = HashMap::new();
            for job in held.values() {
                *holdings.entry(job.owner).or_default() += 1;
            }
            let over = over_share(&holdings, self.limits.held_max, owner);
            self.contend(&mut held, &over, now_ms);
            if held.len() >= self.limits.held_max {
                let first_expiry_ms = held.values().map(|j| j.expires_ms()).min().unwrap_or(now_ms);
                let retry_after_s = match first_expiry_ms {
                    u64::MAX => RETRY_AFTER_RUNNING_S,
                    at_ms => seconds_until(at_ms, now_ms),
                };
                return Err(Busy::Node { retry_after_s });
            }
        }
        let job = Arc::new(Job {
            id: hex::encode(id_bytes),
            owner,
            request,
            base,
            cancelled: AtomicBool::new(false),
            progress: Mutex::new(Progress::default()),
            finished: Mutex::new(None),
            expires_ms: AtomicU64::new(u64::MAX),
            bytes: self.bytes.clone(),
            reserved: AtomicUsize::new(0),
        });
        held.insert(job.id.clone(), job.clone());
        Ok(job)
    }

    /// Records how `job` ended; its output is kept [`ExportLimits::ttl_ms`] from now on.
    pub fn finish(&self, job: &Job, finished: Finished) {
        let expires_ms = finished.at_ms().saturating_add(self.limits.ttl_ms);
        *lock(&job.finished) = Some(finished);
        job.expires_ms.store(expires_ms, Ordering::SeqCst);
    }

    /// `owner`'s job `id`, if it is held; anyone else's is not there.
    pub fn get(&self, owner: &IdentityId, id: &str, now_ms: u64) -> Option<Arc<Job>> {
        let mut held = lock(&self.held);
        sweep(&mut held, now_ms);
        held.get(id).filter(|j| j.owner == *owner).cloned()
    }

    /// Cancels (if running) and discards `owner`'s job `id`; whether there was one.
    pub fn remove(&self, owner: &IdentityId, id: &str, now_ms: u64) -> bool {
        let mut held = lock(&self.held);
        sweep(&mut held, now_ms);
        if held.get(id).is_none_or(|j| j.owner != *owner) {
            return false;
        }
        if let Some(job) = held.remove(id) {
            job.cancelled.store(true, Ordering::SeqCst);
        }
        true
    }

    /// Discards the jobs whose output expired.
    pub fn expire(&self, now_ms: u64) {
        sweep(&mut lock(&self.held), now_ms);
    }

    /// Takes `amount` bytes for `owner` if its quota and the node's allow.
    fn take(&self, owner: IdentityId, amount: usize) -> Result<(), Full> {
        let mut bytes = lock(&self.bytes);
        let mine = bytes.per_identity.get(&owner).copied().unwrap_or(0);
        if mine.saturating_add(amount) > self.limits.identity_bytes_max {
            return Err(Full::Identity);
        }
        if bytes.total.saturating_add(amount) > self.limits.bytes_max {
            return Err(Full::Node);
        }
        bytes.total += amount;
        *bytes.per_identity.entry(owner).or_default() += amount;
        Ok(())
    }

    /// Counts `amount` more bytes of `job`'s output against the job's, its identity's and the
    /// node's limits. When the node's is reached, the finished output of identities over their
    /// fair share is made to expire sooner (and what already has is discarded) first.
    pub fn reserve(&self, job: &Job, amount: usize, now_ms: u64) -> Result<(), Full> {
        if job.reserved.load(Ordering::SeqCst).saturating_add(amount) > self.limits.job_bytes_max {
            return Err(Full::Job);
        }
        match self.take(job.owner, amount) {
            Err(Full::Node) => {
                let mut held = lock(&self.held);
                let over = over_share(&lock(&self.bytes).per_identity, self.limits.bytes_max, job.owner);
                self.contend(&mut held, &over, now_ms);
                drop(held);
                self.take(job.owner, amount)?;
            }
            taken => taken?,
        }
        job.reserved.fetch_add(amount, Ordering::SeqCst);
        Ok(())
    }

    /// Bytes of output held by every job together.
    #[cfg(test)]
    fn bytes_held(&self) -> usize {
        lock(&self.bytes).total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(n: u8) -> IdentityId {
        IdentityId([n; 32])
    }

    fn failed(at_ms: u64) -> Finished {
        Finished::Failed { at_ms, diagnostics: String::new() }
    }

    fn small() -> Jobs {
        Jobs::new(ExportLimits {
            running_max: 2,
            held_max: 4,
            held_per_identity_max: 2,
            job_bytes_max: 100,
            identity_bytes_max: 150,
            bytes_max: 300,
            ttl_ms: 1_000,
            contended_ttl_ms: 100,
        })
    }

    #[test]
    fn files_split_at_the_line_limit_per_type() {
        let mut files = Vec::new();
        for (resource_type, n) in [("Patient", 1), ("Observation", 5)] {
            for i in 0..n {
                push_line(&mut files, resource_type, resource_type, format!("{{\"n\":{i}}}").as_bytes(), 2);
            }
        }
        let names: Vec<(&str, usize)> = files.iter().map(|f| (f.name.as_str(), f.lines)).collect();
        assert_eq!(
            names,
            [
                ("Patient-1.ndjson", 1),
                ("Observation-1.ndjson", 2),
                ("Observation-2.ndjson", 2),
                ("Observation-3.ndjson", 1)
            ]
        );
        assert_eq!(files[1].body, b"{\"n\":0}\n{\"n\":1}\n");
    }

    #[test]
    fn jobs_are_limited_per_identity_and_expire() {
        let jobs = small();
        let first = jobs.admit(client(1), "r".into(), String::new(), 0, [1; 16]).unwrap();
        assert_eq!(jobs.admit(client(1), "r".into(), String::new(), 0, [2; 16]).err(), Some(Busy::IdentityRunning));
        // Others cannot see it; the owner can.
        assert!(jobs.get(&client(2), &first.id, 0).is_none());
        assert!(jobs.get(&client(1), &first.id, 0).is_some());
        jobs.finish(&first, failed(10));
        let second = jobs.admit(client(1), "r".into(), String::new(), 10, [3; 16]).unwrap();
        jobs.finish(&second, failed(20));
        assert_eq!(
            jobs.admit(client(1), "r".into(), String::new(), 20, [4; 16]).err(),
            Some(Busy::IdentityHolding { retry_after_s: 1 })
        );
        // Kept `ttl_ms` after finishing, then gone (and its identity may start again).
        assert!(jobs.get(&client(1), &first.id, 1_009).is_some());
        assert!(jobs.get(&client(1), &first.id, 1_010).is_none());
        assert!(jobs.admit(client(1), "r".into(), String::new(), 1_010, [5; 16]).is_ok());
        // Deleting: only the owner, and then it is gone and cancelled.
        assert!(!jobs.remove(&client(2), &second.id, 1_010));
        assert!(jobs.remove(&client(1), &second.id, 1_010));
        assert!(second.cancelled());
        assert!(jobs.get(&client(1), &second.id, 1_010).is_none());
    }

    #[test]
    fn a_full_node_shortens_the_holds_of_identities_over_their_share() {
        let jobs = small();
        // Node-wide: at most two running.
        let a = jobs.admit(client(1), "r".into(), String::new(), 0, [6; 16]).unwrap();
        let b = jobs.admit(client(2), "r".into(), String::new(), 0, [7; 16]).unwrap();
        assert_eq!(
            jobs.admit(client(3), "r".into(), String::new(), 0, [8; 16]).err(),
            Some(Busy::Node { retry_after_s: RETRY_AFTER_RUNNING_S })
        );
        // Clients 1 and 2 hold two finished jobs each: all four slots.
        jobs.finish(&a, failed(0));
        jobs.finish(&b, failed(0));
        for n in [1, 2] {
            let job = jobs.admit(client(n), "r".into(), String::new(), 0, [n + 100; 16]).unwrap();
            jobs.finish(&job, failed(50));
        }
        // Client 3's share is 4 / 3 = 1 job: 1 and 2 hold more, so their finished jobs are
        // kept 100 ms after finishing instead of 1 s. None has been for that long yet.
        assert_eq!(
            jobs.admit(client(3), "r".into(), String::new(), 99, [10; 16]).err(),
            Some(Busy::Node { retry_after_s: 1 })
        );
        assert!(jobs.get(&client(1), &a.id, 99).is_some(), "nobody is evicted on the spot");
        // Once the shortened hold of their oldest is over, client 3 gets a slot.
        let c = jobs.admit(client(3), "r".into(), String::new(), 100, [11; 16]).unwrap();
        assert!(jobs.get(&client(1), &a.id, 100).is_none() && jobs.get(&client(2), &b.id, 100).is_none());
        // Jobs at or under their share keep their whole hold.
        jobs.finish(&c, failed(100));
        let d = jobs.admit(client(4), "r".into(), String::new(), 100, [12; 16]).unwrap();
        jobs.finish(&d, failed(100));
        assert_eq!(
            jobs.admit(client(5), "r".into(), String::new(), 120, [13; 16]).err(),
            Some(Busy::Node { retry_after_s: 1 })
        );
        assert!(jobs.get(&client(3), &c.id, 1_099).is_some(), "client 3 holds one job: its share");
    }

    #[test]
    fn output_bytes_are_bounded_per_job_per_identity_and_per_node() {
        let jobs = small();
        let job = jobs.admit(client(1), "r".into(), String::new(), 0, [14; 16]).unwrap();
        assert_eq!(jobs.reserve(&job, 90, 0), Ok(()));
        assert_eq!(jobs.reserve(&job, 11, 0), Err(Full::Job));
        assert_eq!(jobs.reserve(&job, 10, 0), Ok(()));
        jobs.finish(&job, failed(0));
        drop(job);
        // The identity's next job: its finished output counts against its quota.
        let next = jobs.admit(client(1), "r".into(), String::new(), 0, [15; 16]).unwrap();
        assert_eq!(jobs.reserve(&next, 51, 0), Err(Full::Identity));
        assert_eq!(jobs.reserve(&next, 50, 0), Ok(()));
        jobs.finish(&next, failed(0));
        // Discarded output gives its bytes back.
        assert!(jobs.remove(&client(1), &next.id, 0));
        drop(next);
        assert_eq!(jobs.bytes_held(), 100);
        // Node-wide: 300 bytes. Clients 2 and 3 add 100 each: full.
        for n in [2, 3] {
            let job = jobs.admit(client(n), "r".into(), String::new(), 0, [n + 200; 16]).unwrap();
            jobs.reserve(&job, 100, 0).unwrap();
            jobs.finish(&job, failed(0));
        }
        // Client 4's share is 300 / 4 = 75 bytes; everyone else holds 100, so their output is
        // kept only 100 ms: at 50 ms nothing is freed, at 100 ms all of it is.
        let late = jobs.admit(client(4), "r".into(), String::new(), 50, [17; 16]).unwrap();
        assert_eq!(jobs.reserve(&late, 1, 50), Err(Full::Node));
        assert_eq!(jobs.reserve(&late, 1, 100), Ok(()));
        assert_eq!(jobs.bytes_held(), 1);
    }
}
