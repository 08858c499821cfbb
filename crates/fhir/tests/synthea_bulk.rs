//! Synthea transaction Bundles and Bulk Data NDJSON (testdata/fhir): every resource of a
//! supported type validates; every other type is reported `not-supported`, never a panic.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use medledger_fhir::model::Model;
use medledger_fhir::validate::ReferenceKind;
use medledger_fhir::{IssueCode, Severity, validate};

fn testdata(sub: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/fhir").join(sub)
}

fn files(dir: &Path, extension: &str) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == extension))
        .collect();
    paths.sort();
    paths
}

#[test]
fn synthea_bundles_validate() {
    let model = Model::r4();
    let mut supported = 0;
    let mut unsupported: BTreeMap<String, usize> = BTreeMap::new();
    let paths = files(&testdata("synthea-r4"), "json");
    assert_eq!(paths.len(), 9);
    for path in &paths {
        let bytes = std::fs::read(path).unwrap();
        let validated = validate(&bytes)
            .unwrap_or_else(|issues| panic!("{}: {:#?}", path.display(), &issues[..3.min(issues.len())]));
        assert_eq!(validated.resource_type, "Bundle");
        let mut expected_warnings = Vec::new();
        for (index, entry) in validated.entries.iter().enumerate() {
            let resource_type = entry.resource_type.as_deref().unwrap();
            let span = entry.resource_span.clone().unwrap();
            // The entry's bytes are a resource on their own: validating them alone agrees.
            let alone = validate(&bytes[span]);
            if model.is_supported_resource(resource_type) {
                supported += 1;
                assert!(entry.resource.is_some(), "{}: entry {index}", path.display());
                let alone = alone.unwrap();
                let resource = entry.resource.as_deref().unwrap();
                assert_eq!(&alone.references, &resource.references);
            } else {
                *unsupported.entry(resource_type.to_string()).or_default() += 1;
                assert_eq!(alone.unwrap_err()[0].code, IssueCode::NotSupported);
                expected_warnings.push(format!("Bundle.entry[{index}].resource.resourceType"));
            }
        }
        let warnings: Vec<String> = validated
            .warnings
            .iter()
            .inspect(|w| assert_eq!((w.severity, w.code), (Severity::Warning, IssueCode::NotSupported)))
            .map(|w| w.expression.clone().unwrap())
            .collect();
        assert_eq!(warnings, expected_warnings);
    }
    println!("synthea: {supported} supported resources valid; not supported: {unsupported:?}");
    assert!(supported > 300, "{supported}");
    assert!(unsupported.contains_key("Claim") && unsupported.contains_key("ExplanationOfBenefit"));
}

#[test]
fn bulk_ndjson_validates() {
    let model = Model::r4();
    let dir = testdata("bulk-ndjson-10-patients");
    let mut valid: BTreeMap<String, usize> = BTreeMap::new();
    let mut not_supported: BTreeMap<String, usize> = BTreeMap::new();
    let mut conditional = 0;
    for path in files(&dir, "ndjson") {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(&path).unwrap();
        for (number, line) in text.lines().enumerate() {
            let resource_type = name.split('.').next().unwrap();
            match validate(line.as_bytes()) {
                Ok(validated) => {
                    assert_eq!(validated.resource_type, resource_type);
                    conditional += validated
                        .references
                        .iter()
                        .filter(|r| matches!(r.kind, ReferenceKind::Conditional { .. }))
                        .count();
                    *valid.entry(validated.resource_type).or_default() += 1;
                }
                Err(issues) => {
                    assert!(
                        !model.is_supported_resource(resource_type),
                        "{name}:{}: {:#?}",
                        number + 1,
                        &issues[..3.min(issues.len())]
                    );
                    assert_eq!(issues.len(), 1);
                    assert_eq!(issues[0].code, IssueCode::NotSupported);
                    *not_supported.entry(resource_type.to_string()).or_default() += 1;
                }
            }
        }
    }
    println!("bulk: valid {valid:?}; not supported {not_supported:?}; {conditional} conditional references");
    assert_eq!(valid.values().sum::<usize>() + not_supported.values().sum::<usize>(), 7_160);
    assert_eq!(valid.len(), 11, "{valid:?}");
    assert_eq!(not_supported.keys().collect::<Vec<_>>(), ["Device", "Location"]);
    assert_eq!(conditional, 10_037);
}
