//! The mutation engine: a seeded, coverage-free fuzzer that runs on the stable toolchain.
//!
//! A run starts from a target's corpus, executes every corpus entry once as it is (so the
//! corpus doubles as a regression suite), then loops: pick an input from the pool, apply a
//! stack of 1–16 mutations (bit flips, interesting integers in both byte orders, inserts,
//! deletes, copies, splices with another pool entry, dictionary tokens, long repeats of a
//! chunk, truncation) — or, for three mutants in four, the target's own structure-aware
//! mutation if it has one (JSON-level for the FHIR targets, [`crate::json_mutate`]) — and
//! execute it. Now and then an input is fresh random bytes instead.
//!
//! There is no coverage instrumentation (that needs a nightly toolchain). Feedback comes from
//! the target instead: each execution returns a *feature*, a small summary of where the input
//! went (which error, which payload kind, which FHIR element an issue names), and an input
//! with a feature not seen before joins the pool. That steers mutation towards inputs that get
//! further into a parser, the way coverage would, only coarser.
//!
//! A panic inside a target is a finding: it is caught, its message and location are recorded
//! with the input, and the run goes on. Invariants: for a given seed and corpus the sequence
//! of inputs is deterministic (only the time budget can end a run earlier or later), and the
//! pool stays bounded in entries and bytes.

use std::{
    cell::{Cell, RefCell},
    collections::HashSet,
    panic::{self, AssertUnwindSafe},
    sync::Once,
    time::{Duration, Instant},
};

use crate::Target;

/// Most inputs kept in a run's pool, corpus included, and most bytes they may take together.
const POOL_ENTRIES_MAX: usize = 4096;
const POOL_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Most distinct findings kept per run (the same location panicking again is not kept).
const FINDINGS_MAX: usize = 32;

/// A small, fast, seedable generator (SplitMix64): the engine's only source of randomness,
/// so a run replays from its seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n`; 0 when `n` is 0.
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { (self.next_u64() % n as u64) as usize }
    }

    /// True once in `n` calls on average.
    pub fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let word = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        self.fill(&mut out);
        out
    }
}

/// How long a run may go on: whichever limit comes first.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub executions_max: u64,
    pub time_max: Duration,
    pub seed: u64,
    /// An input that takes longer than this is reported as a slow finding (work not bounded
    /// per input byte); `None` in debug builds, where everything is slow.
    pub slow_input: Option<Duration>,
}

/// An input that made a target panic, or ran for too long.
#[derive(Debug, Clone)]
pub struct Finding {
    pub input: Vec<u8>,
    /// The panic message and location, or how long a slow input took.
    pub message: String,
    pub slow: bool,
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct Report {
    pub target: &'static str,
    pub seed: u64,
    pub executions: u64,
    pub elapsed: Duration,
    pub findings: Vec<Finding>,
    /// Inputs in the pool at the end (corpus plus inputs that showed a new feature).
    pub pool: usize,
    /// Distinct features seen.
    pub features: usize,
    pub slowest: Duration,
}

impl Report {
    pub fn crashes(&self) -> usize {
        self.findings.iter().filter(|f| !f.slow).count()
    }
}

thread_local! {
    /// Whether a panic on this thread is a target's, to be recorded rather than printed.
    static CAPTURING: Cell<bool> = const { Cell::new(false) };
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Installs (once per process) a panic hook that records the panics of targets on the thread
/// that runs them and leaves every other panic to the previous hook, so a failing test still
/// prints its message.
fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if CAPTURING.with(Cell::get) {
                let location = info.location().map_or_else(|| "unknown location".to_owned(), |l| l.to_string());
                let payload = info
                    .payload()
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| info.payload().downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "panic with a non-string payload".to_owned());
                LAST_PANIC.with(|last| *last.borrow_mut() = Some(format!("panicked at {location}: {payload}")));
            } else {
                previous(info);
            }
        }));
    });
}

/// Runs `target` on one input: its feature, or the panic message.
pub fn execute(target: &Target, input: &[u8]) -> Result<u64, String> {
    install_panic_hook();
    CAPTURING.with(|c| c.set(true));
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| (target.run)(input)));
    CAPTURING.with(|c| c.set(false));
    outcome.map_err(|_| {
        LAST_PANIC.with(|last| last.borrow_mut().take()).unwrap_or_else(|| "panicked without a message".to_owned())
    })
}

/// Fuzzes `target` from `corpus` within `budget`.
pub fn fuzz(target: &Target, corpus: Vec<Vec<u8>>, budget: &Budget) -> Report {
    let mut rng = Rng::new(budget.seed);
    let mut pool: Vec<Vec<u8>> = corpus;
    let seeds = pool.len();
    let mut pool_bytes: usize = pool.iter().map(Vec::len).sum();
    let mut features = HashSet::new();
    let mut findings: Vec<Finding> = Vec::new();
    let mut finding_keys = HashSet::new();
    let mut slowest = Duration::ZERO;
    let started = Instant::now();
    let mut executions = 0u64;
    let mut next_seed = 0;
    while executions < budget.executions_max && started.elapsed() < budget.time_max {
        // Every corpus entry once as it is, then mutants.
        let input = if next_seed < seeds {
            next_seed += 1;
            pool[next_seed - 1].clone()
        } else {
            next_input(&mut rng, &pool, target)
        };
        let began = Instant::now();
        let outcome = execute(target, &input);
        let took = began.elapsed();
        executions += 1;
        slowest = slowest.max(took);
        match outcome {
            Ok(feature) => {
                if let Some(limit) = budget.slow_input
                    && took > limit
                    && findings.len() < FINDINGS_MAX
                    && finding_keys.insert(format!("slow {feature}"))
                {
                    let message = format!("took {} ms (limit {} ms)", took.as_millis(), limit.as_millis());
                    findings.push(Finding { input: input.clone(), message, slow: true });
                }
                if features.insert(feature) && next_seed >= seeds {
                    pool_bytes += input.len();
                    if pool.len() < POOL_ENTRIES_MAX && pool_bytes <= POOL_BYTES_MAX {
                        pool.push(input);
                    } else if pool.len() > seeds {
                        // Keep the corpus; replace a grown entry.
                        let at = seeds + rng.below(pool.len() - seeds);
                        pool_bytes -= pool[at].len();
                        pool[at] = input;
                    } else {
                        pool_bytes -= input.len();
                    }
                }
            }
            Err(message) => {
                if findings.len() < FINDINGS_MAX && finding_keys.insert(finding_key(&message)) {
                    findings.push(Finding { input, message, slow: false });
                }
            }
        }
    }
    Report {
        target: target.name,
        seed: budget.seed,
        executions,
        elapsed: started.elapsed(),
        findings,
        pool: pool.len(),
        features: features.len(),
        slowest,
    }
}

/// Findings at the same place with the same first words are one finding.
fn finding_key(message: &str) -> String {
    let first_line = message.lines().next().unwrap_or("");
    first_line.chars().take(160).collect()
}

fn next_input(rng: &mut Rng, pool: &[Vec<u8>], target: &Target) -> Vec<u8> {
    let max = target.input_bytes_max;
    if pool.is_empty() || rng.one_in(32) {
        let len = rng.below(max.min(512) + 1);
        return rng.bytes(len);
    }
    let mut data = pool[rng.below(pool.len())].clone();
    // Mostly a few mutations, sometimes many.
    let scale = 1 << rng.below(5);
    let rounds = 1 + rng.below(scale);
    // Three mutants in four from the target's own mutation only, if it has one: a single
    // byte mutation mostly undoes what it keeps (JSON, FHIR validity).
    let structured = target.mutate.filter(|_| !rng.one_in(4));
    for _ in 0..rounds {
        if !structured.is_some_and(|structured| structured(rng, &mut data, pool)) {
            mutate(rng, &mut data, pool, target.dictionary, max);
        }
    }
    data.truncate(max);
    data
}

const INTERESTING_U32: [u32; 24] = [
    0,
    1,
    2,
    3,
    4,
    7,
    8,
    16,
    31,
    32,
    33,
    63,
    64,
    65,
    127,
    128,
    255,
    256,
    1024,
    4096,
    65_535,
    65_536,
    0x7fff_ffff,
    0xffff_ffff,
];

const INTERESTING_BYTES: [u8; 16] =
    [0, 1, 0x7f, 0x80, 0xff, b'"', b'\\', b'{', b'}', b'[', b']', b',', b':', b'.', b'/', b'='];

/// Applies one random mutation to `data`, keeping it at most `max` bytes.
pub fn mutate(rng: &mut Rng, data: &mut Vec<u8>, pool: &[Vec<u8>], dictionary: &[&[u8]], max: usize) {
    let len = data.len();
    match rng.below(14) {
        // Flip one bit.
        0 if len > 0 => {
            let at = rng.below(len);
            data[at] ^= 1 << rng.below(8);
        }
        // A random byte.
        1 if len > 0 => {
            let at = rng.below(len);
            data[at] = rng.next_u64() as u8;
        }
        // An interesting byte.
        2 if len > 0 => {
            let at = rng.below(len);
            data[at] = INTERESTING_BYTES[rng.below(INTERESTING_BYTES.len())];
        }
        // An interesting u32, big- or little-endian (the codec is big-endian, pack files are
        // little-endian), or the length of the rest of the input.
        3 if len >= 4 => {
            let at = rng.below(len - 3);
            let value = if rng.one_in(4) { (len - at - 4) as u32 } else { INTERESTING_U32[rng.below(24)] };
            let bytes = if rng.one_in(2) { value.to_be_bytes() } else { value.to_le_bytes() };
            data[at..at + 4].copy_from_slice(&bytes);
        }
        // An interesting u64.
        4 if len >= 8 => {
            let at = rng.below(len - 7);
            let value = [0, 1, u64::MAX, i64::MAX as u64, 1 << 32, 1_800_000_000_000][rng.below(6)];
            let bytes = if rng.one_in(2) { value.to_be_bytes() } else { value.to_le_bytes() };
            data[at..at + 8].copy_from_slice(&bytes);
        }
        // Insert random bytes.
        5 => {
            let at = rng.below(len + 1);
            let insert_len = 1 + rng.below(16);
            let insert = rng.bytes(insert_len);
            data.splice(at..at, insert);
        }
        // Delete a range.
        6 if len > 0 => {
            let at = rng.below(len);
            let end = (at + 1 + rng.below(32.min(len - at))).min(len);
            data.drain(at..end);
        }
        // Copy a range of the input elsewhere in it.
        7 if len > 0 => {
            let from = rng.below(len);
            let end = (from + 1 + rng.below(64)).min(len);
            let chunk = data[from..end].to_vec();
            let at = rng.below(len + 1);
            data.splice(at..at, chunk);
        }
        // Splice in a range of another pool entry, inserted or overwriting.
        8 if !pool.is_empty() => {
            let other = &pool[rng.below(pool.len())];
            if !other.is_empty() {
                let from = rng.below(other.len());
                let end = (from + 1 + rng.below(256)).min(other.len());
                let at = rng.below(len + 1);
                let overwrite = if rng.one_in(2) { (end - from).min(len - at) } else { 0 };
                data.splice(at..at + overwrite, other[from..end].iter().copied());
            }
        }
        // Cross over: the head of this input, the tail of another.
        9 if !pool.is_empty() => {
            let other = &pool[rng.below(pool.len())];
            let cut = rng.below(len + 1);
            let other_cut = rng.below(other.len() + 1);
            data.truncate(cut);
            data.extend_from_slice(&other[other_cut..]);
        }
        // A dictionary token, inserted or overwriting.
        10 | 11 if !dictionary.is_empty() => {
            let token = dictionary[rng.below(dictionary.len())];
            let at = rng.below(len + 1);
            let overwrite = if rng.one_in(3) { token.len().min(len - at) } else { 0 };
            data.splice(at..at + overwrite, token.iter().copied());
        }
        // A chunk repeated many times: deep nesting, long strings, large counts.
        12 if len > 0 => {
            let at = rng.below(len);
            let end = (at + 1 + rng.below(8)).min(len);
            let chunk = data[at..end].to_vec();
            let room = max.saturating_sub(len) / chunk.len();
            let times = rng.below(room.min(4096) + 1);
            let repeated: Vec<u8> = chunk.iter().copied().cycle().take(chunk.len() * times).collect();
            data.splice(at..at, repeated);
        }
        // Truncate.
        13 if len > 0 => data.truncate(rng.below(len)),
        // The chosen mutation does not apply to this input: append a byte instead.
        _ => data.push(rng.next_u64() as u8),
    }
    data.truncate(max);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn panics_on_abc(data: &[u8]) -> u64 {
        assert!(!data.windows(3).any(|w| w == b"abc"), "found abc");
        data.len() as u64
    }

    const TOY: Target = Target {
        name: "toy",
        about: "panics on abc",
        run: panics_on_abc,
        input_bytes_max: 64,
        dictionary: &[b"ab", b"c"],
        mutate: None,
    };

    #[test]
    fn the_same_seed_gives_the_same_inputs() {
        let budget = Budget { executions_max: 500, time_max: Duration::from_secs(30), seed: 7, slow_input: None };
        let a = fuzz(&TOY, vec![b"xyz".to_vec()], &budget);
        let b = fuzz(&TOY, vec![b"xyz".to_vec()], &budget);
        assert_eq!((a.executions, a.pool, a.features), (b.executions, b.pool, b.features));
    }

    #[test]
    fn a_panic_is_a_finding_with_its_location_and_the_run_goes_on() {
        let budget = Budget { executions_max: 2000, time_max: Duration::from_secs(30), seed: 1, slow_input: None };
        let report = fuzz(&TOY, vec![b"zab".to_vec()], &budget);
        assert_eq!(report.executions, 2000);
        let finding = report.findings.first().expect("the dictionary makes abc quickly");
        assert!(finding.input.windows(3).any(|w| w == b"abc"));
        assert!(finding.message.contains("engine.rs") && finding.message.contains("found abc"), "{}", finding.message);
        assert_eq!(report.crashes(), 1, "one place, one finding");
    }

    #[test]
    fn mutants_stay_within_the_bound() {
        let mut rng = Rng::new(3);
        let pool = vec![vec![1u8; 40], vec![2u8; 100]];
        for _ in 0..10_000 {
            let mut data = pool[rng.below(2)].clone();
            mutate(&mut rng, &mut data, &pool, &[b"token"], 64);
            assert!(data.len() <= 64);
        }
    }
}
