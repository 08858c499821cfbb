//! Fuzz targets for medledger's untrusted-input surfaces, run on the stable toolchain by a
//! small mutation engine ([`engine`]): transaction and block decoding, FHIR JSON parsing and
//! validation, FHIR transaction-Bundle input, the blob pack scan, and the signed-request and
//! SMART client-assertion parsers.
//!
//! Each target asserts properties, not only the absence of panics: decoders reject trailing
//! bytes and re-encode what they accept to the same bytes, structurally generated values
//! round-trip, the validator is deterministic and its spans cut out what it says they do,
//! the pack scan stays within its files and its recovery is idempotent, and the parsers
//! reject oversize input. A panic or a failed property is a finding.
//!
//! Corpus: `corpus/<target>/` holds the seeds (real encodings, made by `medledger-fuzz seed`,
//! and small FHIR examples from `testdata/fhir`) and regression inputs; every run executes each
//! of them first. `cargo test -p medledger-fuzz` runs every target briefly;
//! `cargo run --release -p medledger-fuzz -- all --seconds 60` runs them longer and saves
//! findings under `crashes/<target>/` (not committed).
//!
//! Invariant: nothing here is used by a node; the crate depends on the crates it fuzzes and
//! nothing depends on it.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

pub mod engine;
pub mod json_mutate;
pub mod seeds;
pub mod targets;

/// One fuzz target.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    pub name: &'static str,
    /// What it feeds and what it asserts, in a line.
    pub about: &'static str,
    /// Runs one input; panics when a property does not hold. Returns a feature: a small
    /// summary of where the input went, which the engine uses as feedback.
    pub run: fn(&[u8]) -> u64,
    /// Largest input the engine makes.
    pub input_bytes_max: usize,
    /// Tokens the engine inserts into inputs.
    pub dictionary: &'static [&'static [u8]],
    /// A structure-aware mutation the engine uses for three mutants in four, if the target has
    /// one; returns whether it applied (else a byte mutation is used).
    pub mutate: Option<Mutation>,
}

/// A target's own mutation: changes the input in place (the pool is there to splice from);
/// false if it did not apply.
pub type Mutation = fn(&mut engine::Rng, &mut Vec<u8>, &[Vec<u8>]) -> bool;

/// Errors of the corpus and findings files.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FuzzError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no fuzz target named {0:?} (see `medledger-fuzz list`)")]
    UnknownTarget(String),
    #[error("{0}")]
    Usage(String),
}

pub(crate) fn io_at(path: &Path) -> impl FnOnce(io::Error) -> FuzzError + '_ {
    move |source| FuzzError::Io { path: path.to_owned(), source }
}

/// Every target, in the order `all` runs them.
pub fn all_targets() -> &'static [Target] {
    targets::ALL
}

pub fn target(name: &str) -> Result<&'static Target, FuzzError> {
    targets::ALL.iter().find(|t| t.name == name).ok_or_else(|| FuzzError::UnknownTarget(name.to_owned()))
}

/// The crate's own directory (corpus and findings live under it).
pub fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub fn corpus_dir(target: &str) -> PathBuf {
    crate_dir().join("corpus").join(target)
}

pub fn crashes_dir(target: &str) -> PathBuf {
    crate_dir().join("crashes").join(target)
}

/// The corpus of a target, in file-name order (empty if it has none).
pub fn load_corpus(dir: &Path) -> Result<Vec<Vec<u8>>, FuzzError> {
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut paths: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(io_at(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    paths.sort();
    paths.iter().map(|p| fs::read(p).map_err(io_at(p))).collect()
}

/// Saves a finding as `<dir>/<sha256 prefix>.bin` with its message beside it in `.txt`;
/// returns the input's path.
pub fn save_finding(dir: &Path, finding: &engine::Finding) -> Result<PathBuf, FuzzError> {
    fs::create_dir_all(dir).map_err(io_at(dir))?;
    let name = hex::encode(&medledger_crypto::sha256(&finding.input).0[..8]);
    let prefix = if finding.slow { "slow-" } else { "crash-" };
    let input_path = dir.join(format!("{prefix}{name}.bin"));
    fs::write(&input_path, &finding.input).map_err(io_at(&input_path))?;
    let text_path = dir.join(format!("{prefix}{name}.txt"));
    fs::write(&text_path, format!("{}\n", finding.message)).map_err(io_at(&text_path))?;
    Ok(input_path)
}
