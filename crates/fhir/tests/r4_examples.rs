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
    assert_eq!(names.len(), 306, "examples missing or added");
    // Every supported type has official examples here (all of the package's, see SOURCE.md).
    for resource_type in medledger_fhir::model::Model::r4().supported_resources() {
        assert!(names.iter().any(|n| n.starts_with(&format!("{resource_type}-"))), "no example of {resource_type}");
    }
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

/// Mutations of every valid example that must be caught: an unknown element at the root, and
/// emptied string values (R4 forbids empty strings) at a few places in the tree.
#[test]
fn mutated_examples_are_rejected() {
    use medledger_fhir::IssueCode;
    use medledger_fhir::json::{Kind, Limits, Value, parse};
    use medledger_fhir::model::Model;

    fn strings<'v>(value: &'v Value<'_>, out: &mut Vec<&'v Value<'v>>) {
        match &value.kind {
            Kind::String(_) => out.push(value),
            Kind::Array(items) => items.iter().for_each(|i| strings(i, out)),
            Kind::Object(members) => {
                // Resources of unsupported types are not validated, so not mutated either.
                let resource_type = value.get("resourceType").and_then(Value::as_str);
                if resource_type.is_some_and(|t| !Model::r4().is_supported_resource(t)) {
                    return;
                }
                members.iter().filter(|m| m.key != "resourceType").for_each(|m| strings(&m.value, out))
            }
            _ => {}
        }
    }

    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/fhir/r4-examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        let Ok(validated) = validate(&bytes) else { continue };
        let tree = parse(&bytes, &Limits::default()).unwrap();
        let members = tree.as_object().unwrap();
        let second = members.iter().find(|m| m.key != "resourceType").unwrap();
        let mut renamed = bytes[..second.key_start].to_vec();
        renamed.extend_from_slice(b"\"zzUnknown\"");
        renamed.extend_from_slice(&bytes[second.key_start + second.key.len() + 2..]);
        let issues = validate(&renamed).unwrap_err();
        let expected = format!("{}.zzUnknown", validated.resource_type);
        assert!(
            issues.iter().any(|i| i.code == IssueCode::Structure && i.expression.as_deref() == Some(expected.as_str())),
            "{}: {issues:?}",
            path.display()
        );

        let mut values = Vec::new();
        strings(&tree, &mut values);
        let step = (values.len() / 3).max(1);
        for value in values.iter().step_by(step).take(3) {
            let mut emptied = bytes[..value.start].to_vec();
            emptied.extend_from_slice(b"\"\"");
            emptied.extend_from_slice(&bytes[value.end..]);
            let issues = validate(&emptied).unwrap_err();
            assert!(issues.iter().any(|i| i.code == IssueCode::Value), "{}: {issues:?}", path.display());
            checked += 1;
        }
    }
    assert!(checked > 600, "{checked}");
}
