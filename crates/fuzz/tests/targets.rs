//! Every fuzz target, briefly (what CI runs), and the seed generator's outputs checked.

use std::time::Duration;

use medledger_fuzz::{
    all_targets, corpus_dir, crashes_dir,
    engine::{Budget, execute, fuzz},
    load_corpus, save_finding, seeds, target,
    targets::feature,
};

/// Runs `name` from its corpus for at most 20,000 executions or 4 seconds, with a fixed seed so
/// a failure replays; a finding fails the test and is saved under `crates/fuzz/crashes/`.
fn run_briefly(name: &str) {
    let target = target(name).expect("a target");
    let corpus = load_corpus(&corpus_dir(name)).expect("the corpus reads");
    assert!(!corpus.is_empty(), "corpus/{name} is empty: run `cargo run -p medledger-fuzz -- seed`");
    let budget = Budget {
        executions_max: 20_000,
        time_max: Duration::from_secs(4),
        seed: feature(&[name.as_bytes()]),
        slow_input: None,
    };
    let report = fuzz(target, corpus, &budget);
    let mut saved = Vec::new();
    for finding in &report.findings {
        let path = save_finding(&crashes_dir(name), finding).expect("save the finding");
        saved.push(format!("{} ({})", finding.message, path.display()));
    }
    assert!(saved.is_empty(), "{name} found {}:\n{}", saved.len(), saved.join("\n"));
    eprintln!(
        "{name}: {} executions in {:.1} s, {} features, pool {}",
        report.executions,
        report.elapsed.as_secs_f64(),
        report.features,
        report.pool
    );
}

#[test]
fn tx_decode() {
    run_briefly("tx_decode");
}

#[test]
fn tx_roundtrip() {
    run_briefly("tx_roundtrip");
}

#[test]
fn block_decode() {
    run_briefly("block_decode");
}

#[test]
fn block_roundtrip() {
    run_briefly("block_roundtrip");
}

#[test]
fn fhir_validate() {
    run_briefly("fhir_validate");
}

#[test]
fn fhir_bundle() {
    run_briefly("fhir_bundle");
}

#[cfg(unix)]
#[test]
fn pack_scan() {
    run_briefly("pack_scan");
}

#[test]
fn auth_header() {
    run_briefly("auth_header");
}

#[test]
fn smart_jwt() {
    run_briefly("smart_jwt");
}

#[test]
fn smart_scope() {
    run_briefly("smart_scope");
}

#[test]
fn every_target_is_run_here() {
    let here = include_str!("targets.rs");
    for t in all_targets() {
        assert!(here.contains(&format!("run_briefly(\"{}\")", t.name)), "{} has no test", t.name);
    }
}

/// The generated seeds are what they claim: valid encodings, parseable requests. A seed the
/// code under test no longer accepts (a format change) still runs, but seeds less far.
#[test]
fn generated_seeds_are_accepted_and_pass_their_targets() {
    use medledger_api::{auth, smart};
    use medledger_ledger::{Block, Transaction};

    for seed in seeds::generated().expect("seeds") {
        let accepted = match seed.target {
            "tx_decode" => Transaction::decode(&seed.bytes).is_ok(),
            "block_decode" => Block::decode(&seed.bytes).is_ok(),
            "fhir_bundle" => medledger_fhir::validate(&seed.bytes).is_ok_and(|v| v.entries.len() >= 2),
            "auth_header" => auth::parse_authorization(std::str::from_utf8(&seed.bytes).unwrap()).is_ok(),
            "smart_jwt" => smart::parse_assertion(
                &medledger_fuzz::targets::jwt_text(&seed.bytes),
                &medledger_fuzz::targets::TOKEN_URLS,
                medledger_fuzz::targets::NOW_MS,
            )
            .is_ok(),
            _ => true,
        };
        assert!(accepted, "{}/{} is not accepted", seed.target, seed.name);
        let target = target(seed.target).expect("a target");
        if let Err(message) = execute(target, &seed.bytes) {
            panic!("{}/{}: {message}", seed.target, seed.name);
        }
    }
}

/// The committed corpus still holds what the generator makes (run `medledger-fuzz seed` after
/// changing an encoding or the generator).
#[test]
fn committed_seeds_decode() {
    use medledger_ledger::{Block, Transaction};
    for (name, decodes) in [
        ("tx_decode", (|b: &[u8]| Transaction::decode(b).is_ok()) as fn(&[u8]) -> bool),
        ("block_decode", |b: &[u8]| Block::decode(b).is_ok()),
    ] {
        let dir = corpus_dir(name);
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).expect("corpus dir") {
            let path = entry.expect("entry").path();
            if path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("seed-")) {
                assert!(decodes(&std::fs::read(&path).expect("read")), "{} no longer decodes", path.display());
                seen += 1;
            }
        }
        assert!(seen > 0, "no seeds in {}", dir.display());
    }
}

/// Inputs past a parser's size limit are refused before any work (the engine's inputs are
/// smaller than these limits, so this is checked here once).
#[test]
fn oversize_input_is_refused() {
    use medledger_codec::CodecError;
    use medledger_ledger::{Block, Transaction};
    use medledger_types::limits;

    let tx = Transaction::decode(&vec![1u8; limits::BATCH_TX_BYTES_MAX + 1]);
    assert!(matches!(tx, Err(CodecError::TooLong { what: "transaction", .. })), "{tx:?}");
    let block = Block::decode(&vec![1u8; limits::BLOCK_BYTES_MAX + 1]);
    assert!(matches!(block, Err(CodecError::TooLong { what: "block", .. })), "{block:?}");
    let json_limits = medledger_fhir::json::Limits { input_bytes_max: 1024, ..Default::default() };
    let big = format!("{{\"a\":\"{}\"}}", "x".repeat(1024));
    assert!(medledger_fhir::json::parse(big.as_bytes(), &json_limits).is_err());
    let jwt = "a".repeat(medledger_api::smart::ASSERTION_BYTES_MAX + 1);
    let urls = medledger_fuzz::targets::TOKEN_URLS.clone();
    assert!(medledger_api::smart::parse_assertion(&jwt, &urls, 0).is_err());
}
