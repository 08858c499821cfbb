//! Keeps ARCHITECTURE.md true: the crate layers it declares are checked against the
//! dependencies `cargo metadata` reports. A crate may depend only on crates of lower layers,
//! every workspace crate has a layer and a section in the code map, and the core never
//! depends on tokio, axum or serde_json.

use std::{collections::BTreeMap, path::PathBuf, process::Command};

use serde_json::Value;

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `crate name → layer` from the code map's `layer N: a, b` lines.
fn declared_layers(architecture: &str) -> BTreeMap<String, u32> {
    let mut layers = BTreeMap::new();
    for line in architecture.lines() {
        let Some(rest) = line.strip_prefix("layer ") else { continue };
        let (number, crates) = rest.split_once(':').expect("a layer line reads `layer N: a, b`");
        let number: u32 = number.trim().parse().expect("a layer number");
        for name in crates.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            assert!(layers.insert(name.to_owned(), number).is_none(), "{name} is in two layers");
        }
    }
    layers
}

/// Each workspace package (`medledger-` stripped) and its normal and build dependencies
/// (package names as declared).
fn workspace_dependencies() -> BTreeMap<String, Vec<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline"])
        .current_dir(workspace_root())
        .output()
        .expect("cargo metadata runs");
    assert!(out.status.success(), "cargo metadata: {}", String::from_utf8_lossy(&out.stderr));
    let metadata: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut crates = BTreeMap::new();
    for package in metadata["packages"].as_array().unwrap() {
        let name = package["name"].as_str().unwrap();
        let short = name.strip_prefix("medledger-").unwrap_or(name).to_owned();
        let deps = package["dependencies"]
            .as_array()
            .unwrap()
            .iter()
            // `kind` is null for normal dependencies, "build" or "dev" otherwise; dev
            // dependencies (tests) may reach anywhere.
            .filter(|d| d["kind"].as_str() != Some("dev"))
            .map(|d| d["name"].as_str().unwrap().to_owned())
            .collect();
        crates.insert(short, deps);
    }
    crates
}

#[test]
fn crate_dependencies_follow_the_layers_of_architecture_md() {
    let architecture = std::fs::read_to_string(workspace_root().join("ARCHITECTURE.md")).unwrap();
    let layers = declared_layers(&architecture);
    assert!(architecture.contains("The core (`types` … `ledger`)"), "the code map names the core");
    assert!(layers.len() >= 10, "ARCHITECTURE.md declares the crate layers: {layers:?}");
    let crates = workspace_dependencies();
    let mut problems = Vec::new();
    for (name, deps) in &crates {
        let Some(&layer) = layers.get(name) else {
            problems.push(format!("crate {name} has no layer in ARCHITECTURE.md"));
            continue;
        };
        if !architecture.contains(&format!("### `crates/{name}`")) {
            problems.push(format!("crate {name} has no section in ARCHITECTURE.md's code map"));
        }
        for dep in deps.iter().filter_map(|d| d.strip_prefix("medledger-")) {
            match layers.get(dep) {
                Some(&dep_layer) if dep_layer < layer => {}
                Some(&dep_layer) => problems.push(format!(
                    "{name} (layer {layer}) depends on {dep} (layer {dep_layer}): ARCHITECTURE.md places it above or beside"
                )),
                None => problems.push(format!("{name} depends on {dep}, which has no layer")),
            }
        }
        // The core, as the code map names it ("The core (`types` … `ledger`)").
        if ["types", "codec", "crypto", "merkle", "ledger"].contains(&name.as_str()) {
            for banned in ["tokio", "axum", "serde_json"] {
                if deps.iter().any(|d| d == banned) {
                    problems.push(format!("core crate {name} depends on {banned}"));
                }
            }
        }
    }
    for name in layers.keys() {
        if !crates.contains_key(name) {
            problems.push(format!("ARCHITECTURE.md places {name}, which is not a workspace crate"));
        }
    }
    assert!(problems.is_empty(), "ARCHITECTURE.md and the code disagree:\n{}", problems.join("\n"));
}

/// Every `.rs` file under `dir`, recursively.
fn rust_files(dir: &std::path::Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Access is decided in exactly one place: `records::access`, over the ledger's rules. No
/// other code asks the ledger's decision functions (node replication asks only whether a
/// peer organisation holds a live grant, to send it ciphertexts: not a caller's access).
#[test]
fn access_is_decided_only_by_records_access() {
    let root = workspace_root();
    let mut files = Vec::new();
    rust_files(&root.join("crates"), &mut files);
    // The enforcement point itself, and this test, which names what it looks for.
    let allowed = ["crates/records/src/access.rs", file!()];
    let mut offenders = Vec::new();
    for file in files {
        let relative = file.strip_prefix(&root).unwrap().to_string_lossy().into_owned();
        if relative.starts_with("crates/ledger/") || allowed.contains(&relative.as_str()) {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        for needle in ["decide_at_head", "access::decide(", "ledger::access::decide"] {
            if text.contains(needle) {
                offenders.push(format!("{relative} uses {needle}"));
            }
        }
    }
    assert!(offenders.is_empty(), "access decided outside records::access:\n{}", offenders.join("\n"));
}
