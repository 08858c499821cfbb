//! `medledger-fuzz`: runs the fuzz targets for longer than `cargo test` does.
//!
//! ```text
//! medledger-fuzz list                       the targets and what each asserts
//! medledger-fuzz seed                       (re)writes the generated seeds and FHIR copies
//! medledger-fuzz <target|all> [--seconds N] [--executions N] [--seed N]
//! ```
//!
//! Prints one JSON object per target (`target`, `executions`, `seconds`, `crashes`, …) and
//! saves each finding under `crates/fuzz/crashes/<target>/` with its message beside it. Exits
//! 1 when anything was found. Build with `--release`: debug builds are 10–50× slower.

use std::{
    process::ExitCode,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use medledger_fuzz::{
    FuzzError, Target, all_targets, corpus_dir, crashes_dir, crate_dir,
    engine::{Budget, fuzz},
    load_corpus, save_finding, seeds, target,
};

const USAGE: &str = "usage: medledger-fuzz list | seed | <target|all> [--seconds N] [--executions N] [--seed N]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("medledger-fuzz: {error}");
            ExitCode::from(2)
        }
    }
}

fn number(args: &[String], flag: &str) -> Result<Option<u64>, FuzzError> {
    let Some(at) = args.iter().position(|a| a == flag) else { return Ok(None) };
    let value = args.get(at + 1).ok_or_else(|| FuzzError::Usage(format!("{flag} needs a number\n{USAGE}")))?;
    value.parse().map(Some).map_err(|_| FuzzError::Usage(format!("{flag} {value}: not a number\n{USAGE}")))
}

/// The process's peak resident memory so far (Linux), in MiB.
fn peak_rss_mib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

fn run(args: &[String]) -> Result<ExitCode, FuzzError> {
    let command = args.first().ok_or_else(|| FuzzError::Usage(USAGE.to_owned()))?;
    match command.as_str() {
        "list" => {
            for t in all_targets() {
                println!("{:16} {}", t.name, t.about);
            }
            return Ok(ExitCode::SUCCESS);
        }
        "seed" => {
            let repo = crate_dir().join("../..");
            let written = seeds::write_all(&crate_dir().join("corpus"), &repo)?;
            println!("wrote {written} seed files under {}", crate_dir().join("corpus").display());
            return Ok(ExitCode::SUCCESS);
        }
        _ => {}
    }
    let targets: Vec<&Target> = if command == "all" { all_targets().iter().collect() } else { vec![target(command)?] };
    let seconds = number(args, "--seconds")?.unwrap_or(60);
    let executions_max = number(args, "--executions")?.unwrap_or(u64::MAX);
    let seed = match number(args, "--seed")? {
        Some(seed) => seed,
        None => SystemTime::now().duration_since(UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64),
    };
    let mut found = false;
    for (i, t) in targets.into_iter().enumerate() {
        let corpus = load_corpus(&corpus_dir(t.name))?;
        let corpus_len = corpus.len();
        let budget = Budget {
            executions_max,
            time_max: Duration::from_secs(seconds),
            seed: seed.wrapping_add(i as u64),
            slow_input: (!cfg!(debug_assertions)).then(|| Duration::from_secs(2)),
        };
        let report = fuzz(t, corpus, &budget);
        for finding in &report.findings {
            let path = save_finding(&crashes_dir(t.name), finding)?;
            eprintln!("{}: {} ({})", t.name, finding.message, path.display());
        }
        found |= !report.findings.is_empty();
        let line = serde_json::json!({
            "target": t.name,
            "executions": report.executions,
            "seconds": (report.elapsed.as_secs_f64() * 10.0).round() / 10.0,
            "crashes": report.crashes(),
            "slow": report.findings.len() - report.crashes(),
            "seed": report.seed,
            "corpus": corpus_len,
            "pool": report.pool,
            "features": report.features,
            "slowest_ms": report.slowest.as_millis() as u64,
            "peak_rss_mib": peak_rss_mib(),
        });
        println!("{line}");
    }
    Ok(if found { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}
