//! Generates `model/r4-search-parameters.txt` from the official R4 SearchParameter
//! definitions in `definitions/` and fails when the committed file is stale.
//!
//! Regenerate with `MEDLEDGER_REGENERATE=1 cargo test -p medledger-fhir --test search_table_fresh`
//! and review the diff. Which parameters we support is decided by which
//! `SearchParameter-*.json` files are copied into `definitions/`; a shared definition
//! (`clinical-patient` covers 32 types) contributes the union branches of the searchable types
//! only. Every expression is compiled here, so one the FHIRPath subset cannot evaluate fails
//! generation rather than a search at run time.

use std::fmt::Write as _;
use std::path::Path;

use medledger_fhir::json::{self, Limits, Value};
use medledger_fhir::model::Model;
use medledger_fhir::search::SEARCHABLE_TYPES;
use medledger_fhir::search::fhirpath;

const CRATE_DIR: &str = env!("CARGO_MANIFEST_DIR");

fn str_of<'a>(v: &'a Value<'_>, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or_else(|| panic!("no {key}"))
}

fn strings<'a>(v: &'a Value<'_>, key: &str) -> Vec<&'a str> {
    v.get(key).and_then(Value::as_array).map(|a| a.iter().map(|s| s.as_str().unwrap()).collect()).unwrap_or_default()
}

/// Splits a FHIRPath union at its top level (`|` outside parentheses).
fn union_branches(expression: &str) -> Vec<&str> {
    let mut branches = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in expression.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            '|' if depth == 0 => {
                branches.push(expression[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    branches.push(expression[start..].trim());
    branches
}

fn generate() -> String {
    let model = Model::r4();
    let dir = Path::new(CRATE_DIR).join("definitions");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("SearchParameter-") && n.ends_with(".json"))
        .collect();
    names.sort();
    let mut lines = Vec::new();
    for name in &names {
        let bytes = std::fs::read(dir.join(name)).unwrap();
        let definition = json::parse(&bytes, &Limits::default()).unwrap();
        assert_eq!(str_of(&definition, "resourceType"), "SearchParameter", "{name}");
        let id = str_of(&definition, "id");
        assert_eq!(str_of(&definition, "url"), format!("http://hl7.org/fhir/SearchParameter/{id}"), "{name}");
        let code = str_of(&definition, "code");
        let param_type = str_of(&definition, "type");
        assert!(matches!(param_type, "token" | "string" | "date" | "reference"), "{name}: type {param_type}");
        let targets = strings(&definition, "target");
        let targets = if targets.is_empty() { "-".to_string() } else { targets.join(",") };
        let expression = str_of(&definition, "expression");
        let bases = strings(&definition, "base");
        if bases == ["Resource"] {
            lines.push(format!("Resource {code} {param_type} {targets} {id} {expression}"));
            continue;
        }
        let mut used = false;
        for base in bases.iter().filter(|b| SEARCHABLE_TYPES.contains(b)) {
            let prefix = format!("{base}.");
            let branches: Vec<&str> = union_branches(expression)
                .into_iter()
                .filter(|b| b.trim_start_matches('(').starts_with(&prefix))
                .collect();
            assert!(!branches.is_empty(), "{name}: no expression for {base}");
            let restricted = branches.join(" | ");
            if let Err(e) = fhirpath::compile(&restricted, model) {
                panic!("{name} ({base}): {e}");
            }
            lines.push(format!("{base} {code} {param_type} {targets} {id} {restricted}"));
            used = true;
        }
        assert!(used, "{name} applies to no searchable type");
    }
    lines.sort();
    let mut out = String::from(
        "# Generated from the HL7 FHIR R4 (4.0.1) SearchParameter definitions in crates/fhir/definitions\n\
         # by tests/search_table_fresh.rs. Do not edit: regenerate with MEDLEDGER_REGENERATE=1.\n\
         # <Type> <code> <type> <targets|-> <SearchParameter id> <FHIRPath expression for Type>\n\n",
    );
    for line in lines {
        writeln!(out, "{line}").unwrap();
    }
    out
}

#[test]
fn generated_search_table_is_fresh() {
    let generated = generate();
    let target = Path::new(CRATE_DIR).join("model/r4-search-parameters.txt");
    if std::env::var_os("MEDLEDGER_REGENERATE").is_some() {
        std::fs::write(&target, &generated).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&target).unwrap_or_default();
    assert!(
        committed == generated,
        "model/r4-search-parameters.txt is stale; regenerate with MEDLEDGER_REGENERATE=1 and review the diff"
    );
}
