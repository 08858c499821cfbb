//! Every official R4 example of a supported type (testdata/fhir/r4-examples) is validated.
//! Nothing may panic; the few examples that violate R4 as published are listed below with the
//! reason, so a model change that accepts or rejects anything else fails this test.

use std::collections::BTreeMap;
use std::path::Path;

use medledger_fhir::validate;

/// Examples rejected because they break R4 as published, with the first issue explained.
const EXPECTED_REJECTIONS: &[(&str, &str)] = &[
    (
        "MedicationRequest-medrx0301.json",
        "dispenseRequest.performer is Reference(Organization) in R4 but the example points at Practitioner/f001",
    ),
    (
        "Observation-clinical-gender.json",
        "Observation.performer may not reference an Encounter; the example has performer Encounter/example",
    ),
];

#[test]
fn official_examples_validate() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/fhir/r4-examples");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".json"))
        .collect();
    names.sort();
    assert!(names.len() > 250, "examples missing: {}", names.len());
    let mut rejected = BTreeMap::new();
    let mut warnings = 0;
    for name in &names {
        let bytes = std::fs::read(dir.join(name)).unwrap();
        match validate(&bytes) {
            Ok(validated) => warnings += validated.warnings.len(),
            Err(issues) => {
                println!("REJECTED {name}: {} issue(s); first: {}", issues.len(), issues[0]);
                for issue in issues.iter().skip(1).take(4) {
                    println!("    {issue}");
                }
                rejected.insert(name.clone(), issues);
            }
        }
    }
    println!("{} of {} examples pass ({} warnings)", names.len() - rejected.len(), names.len(), warnings);
    let expected: Vec<&str> = EXPECTED_REJECTIONS.iter().map(|(name, _)| *name).collect();
    let actual: Vec<&str> = rejected.keys().map(String::as_str).collect();
    assert_eq!(actual, expected, "the set of rejected examples changed");
}
