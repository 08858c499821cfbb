//! Generates `model/r4-resources.txt` from the official StructureDefinitions in
//! `definitions/` and fails when the committed file is stale.
//!
//! Regenerate with `MEDLEDGER_REGENERATE=1 cargo test -p medledger-fhir --test model_fresh`;
//! regeneration is an explicit approval of the new model, so review the diff.
//!
//! The StructureDefinitions are read with this crate's own parser, so the generator also
//! exercises it on 1.5 MB of real FHIR JSON.

use std::fmt::Write as _;
use std::path::Path;

use medledger_fhir::json::{self, Kind, Limits, Value};

const CRATE_DIR: &str = env!("CARGO_MANIFEST_DIR");

/// Elements every resource or element has; the model loader adds them back, so the generated
/// file only lists what is specific to each type. Each is checked against the snapshot.
const IMPLIED: &[(&str, &str, &str)] = &[
    ("Resource.id", "0..1", "id"),
    ("Resource.meta", "0..1", "Meta"),
    ("Resource.implicitRules", "0..1", "uri"),
    ("Resource.language", "0..1", "code"),
    ("DomainResource.text", "0..1", "Narrative"),
    ("DomainResource.contained", "0..*", "Resource"),
    ("DomainResource.extension", "0..*", "Extension"),
    ("DomainResource.modifierExtension", "0..*", "Extension"),
    ("Element.id", "0..1", "string"),
    ("Element.extension", "0..*", "Extension"),
    ("BackboneElement.modifierExtension", "0..*", "Extension"),
];

fn str_of<'a>(v: &'a Value<'_>, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn last_segment(url: &str) -> &str {
    url.rsplit('/').next().unwrap_or(url)
}

/// Type list of one element in the model's notation: `A|B|Reference(X,Y)`.
fn types_of(element: &Value<'_>, path: &str) -> String {
    let Some(types) = element.get("type").and_then(Value::as_array) else {
        let target = str_of(element, "contentReference").unwrap_or_else(|| panic!("{path}: no type"));
        return format!("={}", target.trim_start_matches('#'));
    };
    let mut out = Vec::new();
    for t in types {
        let code = str_of(t, "code").unwrap();
        let mut name = if code == "http://hl7.org/fhirpath/System.String" {
            // Only the ids of resources and elements use FHIRPath system types, and those
            // are implied; anything else means the generator needs teaching.
            panic!("{path}: unexpected system type");
        } else {
            code.to_string()
        };
        if let Some(profiles) = t.get("profile").and_then(Value::as_array) {
            assert_eq!(profiles.len(), 1, "{path}");
            name = last_segment(profiles[0].as_str().unwrap()).to_string();
        }
        if code == "Reference" {
            let targets: Vec<&str> = t
                .get("targetProfile")
                .and_then(Value::as_array)
                .map(|a| a.iter().map(|p| last_segment(p.as_str().unwrap())).collect())
                .unwrap_or_default();
            name = format!("Reference({})", targets.join(","));
        }
        out.push(name);
    }
    out.join("|")
}

fn generate() -> String {
    let dir = Path::new(CRATE_DIR).join("definitions");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("StructureDefinition-") && n.ends_with(".json"))
        .collect();
    names.sort();
    let mut out = String::from(
        "# Generated from the HL7 FHIR R4 (4.0.1) StructureDefinitions in crates/fhir/definitions\n\
         # by tests/model_fresh.rs. Do not edit: regenerate with MEDLEDGER_REGENERATE=1.\n\
         # Elements every resource and backbone element has (id, meta, extension, ...) are implied.\n",
    );

    let capability = std::fs::read(dir.join("CapabilityStatement-base.json")).unwrap();
    let capability = json::parse(&capability, &Limits::default()).unwrap();
    let rest = &capability.get("rest").unwrap().as_array().unwrap()[0];
    let mut all: Vec<&str> =
        rest.get("resource").unwrap().as_array().unwrap().iter().map(|r| str_of(r, "type").unwrap()).collect();
    // Parameters is a resource but never a RESTful endpoint, so the CapabilityStatement
    // leaves it out; it appears in transaction Bundles (e.g. a $operation entry).
    assert!(!all.contains(&"Parameters"));
    all.push("Parameters");
    all.sort();
    writeln!(out, "\nr4-resource-types {}", all.join(" ")).unwrap();

    for name in names {
        let bytes = std::fs::read(dir.join(&name)).unwrap();
        let sd = json::parse(&bytes, &Limits::default()).unwrap();
        let type_name = str_of(&sd, "type").unwrap();
        let base = last_segment(str_of(&sd, "baseDefinition").unwrap());
        assert_eq!(str_of(&sd, "kind"), Some("resource"), "{name}");
        assert_eq!(str_of(&sd, "fhirVersion"), Some("4.0.1"), "{name}");
        writeln!(out, "\nresource {type_name} {base}").unwrap();
        let elements = sd.get("snapshot").unwrap().get("element").unwrap().as_array().unwrap();
        for element in &elements[1..] {
            let path = str_of(element, "path").unwrap();
            let base_path = str_of(element.get("base").unwrap(), "path").unwrap();
            let min = match element.get("min").map(|v| &v.kind) {
                Some(Kind::Number(n)) => *n,
                _ => panic!("{path}: no min"),
            };
            let max = str_of(element, "max").unwrap();
            let cardinality = format!("{min}..{max}");
            if let Some((_, implied_cardinality, implied_type)) = IMPLIED.iter().find(|(p, _, _)| *p == base_path) {
                assert_eq!(cardinality, *implied_cardinality, "{path}");
                // Resource.id and Element.id are FHIRPath strings in the snapshot.
                if !base_path.ends_with(".id") {
                    assert_eq!(types_of(element, path), *implied_type, "{path}");
                }
                continue;
            }
            writeln!(out, "{path} {cardinality} {}", types_of(element, path)).unwrap();
        }
    }
    out
}

#[test]
fn generated_model_is_fresh() {
    let generated = generate();
    let target = Path::new(CRATE_DIR).join("model/r4-resources.txt");
    if std::env::var_os("MEDLEDGER_REGENERATE").is_some() {
        std::fs::write(&target, &generated).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&target).unwrap_or_default();
    assert!(
        committed == generated,
        "model/r4-resources.txt is stale; regenerate with MEDLEDGER_REGENERATE=1 and review the diff"
    );
}
