//! Synthea transaction Bundles and Bulk Data NDJSON (testdata/fhir): every resource in them is
//! of a supported type and validates, with the same findings whether validated inside its
//! Bundle or alone. The counts are pinned, so a model change that starts rejecting (or
//! skipping) any of them fails here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use medledger_fhir::json::{Limits, Value, parse};
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

fn counts(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(name, count)| (name.to_string(), *count)).collect()
}

/// The `resourceType`s of a resource's contained resources, by position.
fn contained_types(resource: &[u8]) -> Vec<String> {
    let tree = parse(resource, &Limits::default()).unwrap();
    let contained = tree.get("contained").and_then(Value::as_array).unwrap_or_default();
    contained.iter().map(|c| c.get("resourceType").and_then(Value::as_str).unwrap().to_string()).collect()
}

#[test]
fn synthea_bundles_validate() {
    let model = Model::r4();
    let mut entries: BTreeMap<String, usize> = BTreeMap::new();
    // Contained resources of types the model does not cover, by (container, type).
    let mut not_validated: BTreeMap<String, usize> = BTreeMap::new();
    let paths = files(&testdata("synthea-r4"), "json");
    assert_eq!(paths.len(), 9);
    for path in &paths {
        let bytes = std::fs::read(path).unwrap();
        let validated = validate(&bytes)
            .unwrap_or_else(|issues| panic!("{}: {:#?}", path.display(), &issues[..3.min(issues.len())]));
        assert_eq!(validated.resource_type, "Bundle");
        let mut expected_warnings = Vec::new();
        for (index, entry) in validated.entries.iter().enumerate() {
            let at = format!("{}: entry {index}", path.display());
            let resource_type = entry.resource_type.as_deref().unwrap();
            assert!(model.is_supported_resource(resource_type), "{at}: {resource_type} is not supported");
            let resource = entry.resource.as_deref().unwrap_or_else(|| panic!("{at}: not validated"));
            assert_eq!(resource.resource_type, resource_type, "{at}");
            *entries.entry(resource_type.to_string()).or_default() += 1;
            // The entry's bytes are a resource on their own: validating them alone agrees.
            let span = entry.resource_span.clone().unwrap();
            let alone = validate(&bytes[span.clone()]).unwrap_or_else(|issues| panic!("{at}: {issues:#?}"));
            assert_eq!(&alone.references, &resource.references, "{at}");
            // Every warning is a contained resource of a type the model does not cover, and
            // every such resource is warned about; nothing else is skipped.
            let unsupported: Vec<(usize, String)> = contained_types(&bytes[span])
                .into_iter()
                .enumerate()
                .filter(|(_, t)| !model.is_supported_resource(t))
                .collect();
            let warnings: Vec<String> = alone
                .warnings
                .iter()
                .inspect(|w| assert_eq!((w.severity, w.code), (Severity::Warning, IssueCode::NotSupported), "{at}"))
                .map(|w| w.expression.clone().unwrap())
                .collect();
            let expected: Vec<String> =
                unsupported.iter().map(|(i, _)| format!("{resource_type}.contained[{i}].resourceType")).collect();
            assert_eq!(warnings, expected, "{at}");
            for (i, contained_type) in &unsupported {
                *not_validated.entry(format!("{resource_type}.contained {contained_type}")).or_default() += 1;
                expected_warnings.push(format!("Bundle.entry[{index}].resource.contained[{i}].resourceType"));
            }
        }
        let warnings: Vec<String> = validated
            .warnings
            .iter()
            .inspect(|w| assert_eq!((w.severity, w.code), (Severity::Warning, IssueCode::NotSupported)))
            .map(|w| w.expression.clone().unwrap())
            .collect();
        assert_eq!(warnings, expected_warnings, "{}", path.display());
    }
    println!(
        "synthea: {} entries valid {entries:?}; contained, not modelled: {not_validated:?}",
        entries.values().sum::<usize>()
    );
    assert_eq!(
        entries,
        counts(&[
            ("CarePlan", 2),
            ("Claim", 47),
            ("Condition", 15),
            ("DiagnosticReport", 12),
            ("Encounter", 38),
            ("ExplanationOfBenefit", 38),
            ("Immunization", 44),
            ("MedicationRequest", 9),
            ("Observation", 250),
            ("Organization", 110),
            ("Patient", 7),
            ("Practitioner", 110),
            ("Procedure", 13),
        ])
    );
    // Synthea's EOBs carry their referral and coverage as contained ServiceRequest and
    // Coverage, types this model does not cover; those are the only resources not validated.
    assert_eq!(
        not_validated,
        counts(&[
            ("ExplanationOfBenefit.contained Coverage", 38),
            ("ExplanationOfBenefit.contained ServiceRequest", 38)
        ])
    );
}

#[test]
fn bulk_ndjson_validates() {
    let model = Model::r4();
    let mut valid: BTreeMap<String, usize> = BTreeMap::new();
    let mut conditional: BTreeMap<String, usize> = BTreeMap::new();
    for path in files(&testdata("bulk-ndjson-10-patients"), "ndjson") {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let resource_type = name.split('.').next().unwrap();
        assert!(model.is_supported_resource(resource_type), "{name}");
        let text = std::fs::read_to_string(&path).unwrap();
        for (number, line) in text.lines().enumerate() {
            let validated = validate(line.as_bytes())
                .unwrap_or_else(|issues| panic!("{name}:{}: {:#?}", number + 1, &issues[..3.min(issues.len())]));
            assert_eq!(validated.resource_type, resource_type);
            assert!(validated.warnings.is_empty(), "{name}:{}: {:?}", number + 1, validated.warnings);
            for reference in &validated.references {
                if let ReferenceKind::Conditional { resource_type: target, .. } = &reference.kind {
                    *conditional.entry(target.clone()).or_default() += 1;
                }
            }
            *valid.entry(validated.resource_type).or_default() += 1;
        }
    }
    println!(
        "bulk: {} resources valid {valid:?}; conditional references to {conditional:?}",
        valid.values().sum::<usize>()
    );
    assert_eq!(
        valid,
        counts(&[
            ("AllergyIntolerance", 11),
            ("Condition", 555),
            ("Device", 16),
            ("DocumentReference", 1215),
            ("Encounter", 1215),
            ("Immunization", 161),
            ("Location", 44),
            ("MedicationRequest", 1745),
            ("Organization", 43),
            ("Patient", 13),
            ("Practitioner", 43),
            ("PractitionerRole", 43),
            ("Procedure", 2056),
        ])
    );
    assert_eq!(valid.values().sum::<usize>(), 7_160);
    assert_eq!(conditional.values().sum::<usize>(), 10_037, "{conditional:?}");
    assert!(conditional.contains_key("Location"), "{conditional:?}");
}
