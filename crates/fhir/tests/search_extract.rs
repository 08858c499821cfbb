//! Search index extraction over real FHIR: hand-checked values on well-known official
//! examples, every official example and Synthea resource of a searchable type, Synthea
//! claims with their references resolved as a transaction would, the bulk NDJSON's
//! conditional references resolved by identifier search, and mutated inputs, which must never
//! panic.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use medledger_fhir::json::{Kind, Limits, Value, parse};
use medledger_fhir::search::{
    ExtractError, Extraction, INDEX_VALUES_MAX, IndexValue, ParseOptions, SearchParams, extract, extract_bytes,
    parse_query,
};
use medledger_fhir::validate;
use medledger_fhir::validate::{BundleEntry, ReferenceKind};

fn testdata(sub: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/fhir").join(sub)
}

fn example(name: &str) -> Vec<u8> {
    std::fs::read(testdata("r4-examples").join(name)).unwrap()
}

fn values(name: &str, param: &str) -> Vec<IndexValue> {
    let extraction = extract_bytes(&example(name)).unwrap();
    extraction.of(param).cloned().collect()
}

fn token(system: &str, code: &str) -> IndexValue {
    IndexValue::token(if system.is_empty() { None } else { Some(system) }, code)
}

/// `2013-04-02T09:30:10+01:00` and the like, as UTC milliseconds.
fn ms(text: &str) -> i64 {
    medledger_fhir::search::date::parse_range(text).unwrap().0
}

fn range(text: &str) -> IndexValue {
    let (low_ms, high_ms) = medledger_fhir::search::date::parse_range(text).unwrap();
    IndexValue::Date { low_ms, high_ms }
}

#[test]
fn observation_glucose_example() {
    let name = "Observation-f001.json";
    assert_eq!(values(name, "code"), [token("http://loinc.org", "15074-8")]);
    assert_eq!(values(name, "subject"), [IndexValue::reference("Patient", "f001")]);
    assert_eq!(values(name, "patient"), [IndexValue::reference("Patient", "f001")]);
    // effectivePeriod with a start only: from that instant (converted to UTC), ongoing.
    assert_eq!(values(name, "date"), [IndexValue::Date { low_ms: ms("2013-04-02T08:30:10Z"), high_ms: i64::MAX }]);
    assert_eq!(values(name, "identifier"), [token("http://www.bmc.nl/zorgportal/identifiers/observations", "6323")]);
    assert_eq!(values(name, "status"), [token("", "final")]);
    assert_eq!(values(name, "_id"), []);
    // The glucose example is found by the queries a client would send.
    let query = parse_query(
        "Observation",
        &[
            ("code".into(), "http://loinc.org|15074-8".into()),
            ("patient".into(), "Patient/f001".into()),
            ("date".into(), "ge2013-04-02".into()),
            ("date".into(), "gt2013-04-01T23:00:00-10:00".into()),
        ],
        &ParseOptions::default(),
    )
    .unwrap();
    let extraction = extract_bytes(&example(name)).unwrap();
    for filter in &query.filters {
        let values: Vec<IndexValue> = extraction.of(&filter.param).cloned().collect();
        assert!(filter.matches(&values), "{filter:?}");
    }
}

#[test]
fn patient_example() {
    let name = "Patient-example.json";
    let strings = |param: &str| -> Vec<String> {
        values(name, param)
            .into_iter()
            .map(|v| match v {
                IndexValue::String { normalized, .. } => normalized,
                other => panic!("{other:?}"),
            })
            .collect()
    };
    assert_eq!(strings("family"), ["chalmers", "windsor"]);
    assert_eq!(strings("given"), ["peter", "james", "jim"]);
    assert_eq!(strings("name"), ["chalmers", "peter", "james", "jim", "windsor"]);
    assert_eq!(values(name, "birthdate"), [range("1974-12-25")]);
    assert_eq!(values(name, "gender"), [token("", "male")]);
    assert_eq!(values(name, "identifier"), [token("urn:oid:1.2.36.146.595.217.0.1", "12345")]);
    assert_eq!(values(name, "active"), [token("", "true")]);
    assert_eq!(values(name, "organization"), [IndexValue::reference("Organization", "1")]);
    assert!(values(name, "phone").contains(&token("", "(03) 5555 6473")));
    assert!(values(name, "address-city").contains(&IndexValue::string("PleasantVille")));
}

#[test]
fn other_well_known_examples() {
    let condition = "Condition-example.json";
    assert_eq!(values(condition, "code"), [token("http://snomed.info/sct", "39065001")]);
    assert_eq!(
        values(condition, "category"),
        [
            token("http://terminology.hl7.org/CodeSystem/condition-category", "encounter-diagnosis"),
            token("http://snomed.info/sct", "439401001")
        ]
    );
    assert_eq!(values(condition, "onset-date"), [range("2012-05-24")]);
    assert_eq!(values(condition, "patient"), [IndexValue::reference("Patient", "example")]);
    assert_eq!(
        values(condition, "clinical-status"),
        [token("http://terminology.hl7.org/CodeSystem/condition-clinical", "active")]
    );

    let immunization = "Immunization-example.json";
    assert_eq!(values(immunization, "date"), [range("2013-01-10")]);
    assert_eq!(values(immunization, "vaccine-code"), [token("urn:oid:1.2.36.1.2001.1005.17", "FLUVAX")]);
    assert_eq!(values(immunization, "lot-number"), [IndexValue::string("AAJN11K")]);
    // Two performers name the same practitioner: one index value.
    assert_eq!(values(immunization, "performer"), [IndexValue::reference("Practitioner", "example")]);

    let request = "MedicationRequest-medrx0302.json";
    assert_eq!(values(request, "authoredon"), [range("2015-01-15")]);
    assert_eq!(values(request, "patient"), [IndexValue::reference("Patient", "pat1")]);
    // medicationReference is `#med0320`, a contained resource: nothing to index.
    assert_eq!(values(request, "medication"), []);
    assert_eq!(values(request, "code"), []);
    assert_eq!(values(request, "intent"), [token("", "order")]);

    let encounter = "Encounter-example.json";
    assert_eq!(values(encounter, "class"), [token("http://terminology.hl7.org/CodeSystem/v3-ActCode", "IMP")]);
    assert_eq!(values(encounter, "patient"), [IndexValue::reference("Patient", "example")]);
    assert_eq!(values(encounter, "practitioner"), []);

    let practitioner = "Practitioner-example.json";
    assert!(values(practitioner, "name").contains(&IndexValue::string("Dr")));
}

#[test]
fn financial_and_directory_examples() {
    let claim = "Claim-100150.json";
    assert_eq!(values(claim, "patient"), [IndexValue::reference("Patient", "1")]);
    assert_eq!(values(claim, "identifier"), [token("http://happyvalley.com/claim", "12345")]);
    assert_eq!(values(claim, "created"), [range("2014-08-16")]);
    assert_eq!(values(claim, "use"), [token("", "claim")]);
    assert_eq!(values(claim, "status"), [token("", "active")]);
    assert_eq!(values(claim, "priority"), [token("", "normal")]);
    assert_eq!(values(claim, "insurer"), [IndexValue::reference("Organization", "2")]);
    assert_eq!(values(claim, "provider"), [IndexValue::reference("Organization", "1")]);
    assert_eq!(values(claim, "care-team"), [IndexValue::reference("Practitioner", "example")]);

    let eob = "ExplanationOfBenefit-EB3500.json";
    assert_eq!(values(eob, "patient"), [IndexValue::reference("Patient", "pat1")]);
    assert_eq!(values(eob, "claim"), [IndexValue::reference("Claim", "100150")]);
    assert_eq!(values(eob, "provider"), [IndexValue::reference("Practitioner", "1")]);
    assert_eq!(values(eob, "facility"), [IndexValue::reference("Location", "1")]);
    assert_eq!(values(eob, "coverage"), [IndexValue::reference("Coverage", "9876B1")]);
    assert_eq!(values(eob, "encounter"), [IndexValue::reference("Encounter", "example")]);
    assert_eq!(values(eob, "item-udi"), [IndexValue::reference("Device", "example")]);
    assert_eq!(values(eob, "created"), [range("2014-08-16")]);
    assert_eq!(values(eob, "disposition"), [IndexValue::string("Claim settled as per contract.")]);

    let location = "Location-1.json";
    assert_eq!(values(location, "identifier"), [token("", "B1-S.F2")]);
    assert_eq!(
        values(location, "name"),
        [
            IndexValue::string("South Wing, second floor"),
            IndexValue::string("BU MC, SW, F2"),
            IndexValue::string("Burgers University Medical Center, South Wing, second floor"),
        ]
    );
    assert_eq!(values(location, "address-city"), [IndexValue::string("Den Burg")]);
    assert_eq!(values(location, "address-use"), [token("", "work")]);
    assert!(values(location, "address").contains(&IndexValue::string("9105 PZ")));
    assert_eq!(values(location, "organization"), [IndexValue::reference("Organization", "f001")]);
    assert_eq!(values(location, "status"), [token("", "active")]);

    let device = "Device-f001.json";
    assert_eq!(values(device, "identifier"), [token("http:/goodhealthhospital/identifier/devices", "12345")]);
    assert_eq!(values(device, "status"), [token("", "active")]);
}

fn example_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(testdata("r4-examples"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".json"))
        .collect();
    names.sort();
    names
}

/// Every example of a searchable type yields values for its required parameters where the
/// element exists, and every parameter yields something somewhere in the corpus (so a
/// table line that never matches real data, e.g. a mistyped choice, is caught).
#[test]
fn every_example_extracts() {
    let table = SearchParams::r4();
    let mut seen: std::collections::BTreeSet<(String, String)> = Default::default();
    let mut extracted = 0;
    for name in example_names() {
        let bytes = example(&name);
        match extract_bytes(&bytes) {
            Ok(extraction) => {
                extracted += 1;
                assert!(!extraction.truncated, "{name}");
                let resource_type = name.split('-').next().unwrap();
                for (param, value) in &extraction.values {
                    let definition = table.get(resource_type, param).unwrap();
                    let expected_kind = match value {
                        IndexValue::Token { .. } => "token",
                        IndexValue::String { .. } => "string",
                        IndexValue::Date { low_ms, high_ms } => {
                            assert!(low_ms <= high_ms, "{name} {param}");
                            "date"
                        }
                        IndexValue::Reference { .. } => "reference",
                    };
                    assert_eq!(definition.param_type.as_str(), expected_kind, "{name} {param}");
                    seen.insert((resource_type.to_string(), param.to_string()));
                }
            }
            Err(ExtractError::NotSearchable(_)) => {}
            Err(e) => panic!("{name}: {e}"),
        }
    }
    assert!(extracted > 200, "{extracted}");
    // Parameters no official example of its type exercises.
    let unexercised: Vec<String> = medledger_fhir::search::SEARCHABLE_TYPES
        .iter()
        .flat_map(|t| table.for_type(t).filter(|p| !p.server_managed).map(move |p| (t.to_string(), p.code.clone())))
        .filter(|key| !seen.contains(key))
        .map(|(t, c)| format!("{t}.{c}"))
        .collect();
    println!("{} parameters seen; not exercised by the examples: {unexercised:?}", seen.len());
    assert!(seen.len() >= 271, "{}", seen.len());
}

fn synthea_bundles() -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(testdata("synthea-r4"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    paths.sort();
    paths
}

#[test]
fn synthea_bundle_resources_extract() {
    let mut resources = 0;
    let mut with_patient = 0;
    for path in &synthea_bundles() {
        let bytes = std::fs::read(path).unwrap();
        let bundle = parse(&bytes, &Limits::default()).unwrap();
        for entry in bundle.get("entry").and_then(Value::as_array).unwrap() {
            let resource = entry.get("resource").unwrap();
            let resource_type = resource.get("resourceType").and_then(Value::as_str).unwrap();
            assert!(SearchParams::r4().is_searchable(resource_type), "{resource_type}");
            resources += 1;
            // The entry's bytes alone give the same values as the parsed subtree.
            let alone = extract_bytes(&bytes[resource.start..resource.end]).unwrap();
            let extraction = extract(resource, resource_type);
            assert_eq!(alone, extraction);
            assert!(!extraction.truncated);
            if resource_type != "Patient" && extraction.of("patient").next().is_some() {
                with_patient += 1;
            }
        }
    }
    // Synthea references patients by urn:uuid inside a transaction, which only the API can
    // resolve (see the next test); the resources still yield their codes, dates and statuses.
    assert_eq!(resources, 695);
    assert_eq!(with_patient, 0);
}

/// A transaction turns each `urn:uuid` reference into `Type/id` of the Bundle entry whose
/// `fullUrl` it names. Done here the same way, every Synthea Claim and ExplanationOfBenefit
/// still validates and yields its patient, provider, encounters and (for an EOB) its claim,
/// each naming a resource of the same Bundle.
#[test]
fn synthea_claims_and_eobs_extract_resolved_references() {
    let mut checked: BTreeMap<String, usize> = BTreeMap::new();
    for path in &synthea_bundles() {
        let bytes = std::fs::read(path).unwrap();
        let bundle = validate(&bytes).unwrap();
        let local_id = |entry: &BundleEntry| entry.resource.as_ref().and_then(|r| r.id.clone()).unwrap();
        let targets: HashMap<&str, String> = bundle
            .entries
            .iter()
            .map(|e| {
                (e.full_url.as_deref().unwrap(), format!("{}/{}", e.resource_type.as_deref().unwrap(), local_id(e)))
            })
            .collect();
        let in_bundle = |value: &IndexValue, wanted: &str| match value {
            IndexValue::Reference { resource_type: Some(t), id } => {
                t == wanted && targets.values().any(|target| *target == format!("{t}/{id}"))
            }
            _ => false,
        };
        let patients: Vec<String> =
            bundle.entries.iter().filter(|e| e.resource_type.as_deref() == Some("Patient")).map(local_id).collect();
        for entry in &bundle.entries {
            let resource_type = entry.resource_type.as_deref().unwrap();
            if !matches!(resource_type, "Claim" | "ExplanationOfBenefit") {
                continue;
            }
            let at = format!("{} {resource_type} {}", path.display(), local_id(entry));
            let mut text = String::from_utf8(bytes[entry.resource_span.clone().unwrap()].to_vec()).unwrap();
            for site in &entry.resource.as_ref().unwrap().references {
                if site.kind == ReferenceKind::Uuid {
                    let target = &targets[site.reference.as_str()];
                    text = text.replace(&format!("\"{}\"", site.reference), &format!("\"{target}\""));
                }
            }
            let resolved = validate(text.as_bytes()).unwrap_or_else(|issues| panic!("{at}: {issues:#?}"));
            assert!(
                resolved
                    .references
                    .iter()
                    .all(|r| matches!(r.kind, ReferenceKind::Relative { .. } | ReferenceKind::Contained { .. })),
                "{at}"
            );
            let extraction = extract_bytes(text.as_bytes()).unwrap();
            let of = |param: &str| -> Vec<IndexValue> { extraction.of(param).cloned().collect() };
            let [patient] = patients.as_slice() else { panic!("{at}: {patients:?}") };
            assert_eq!(of("patient"), [IndexValue::reference("Patient", patient)], "{at}");
            let query = parse_query(
                resource_type,
                &[("patient".to_string(), format!("Patient/{patient}")), ("status".to_string(), "active".to_string())],
                &ParseOptions::default(),
            )
            .unwrap();
            assert!(query.filters.iter().all(|f| f.matches(&of(&f.param))), "{at}");
            assert_eq!(of("created").len(), 1, "{at}");
            let provider = of("provider");
            assert!(
                provider.len() == 1 && ["Organization", "Practitioner"].iter().any(|t| in_bundle(&provider[0], t)),
                "{at}"
            );
            let encounters = of("encounter");
            assert!(!encounters.is_empty() && encounters.iter().all(|v| in_bundle(v, "Encounter")), "{at}");
            if resource_type == "ExplanationOfBenefit" {
                let claim = of("claim");
                assert!(claim.len() == 1 && in_bundle(&claim[0], "Claim"), "{at}: {claim:?}");
            }
            *checked.entry(resource_type.to_string()).or_default() += 1;
        }
    }
    assert_eq!(checked, BTreeMap::from([("Claim".to_string(), 47), ("ExplanationOfBenefit".to_string(), 38)]));
}

/// Bulk Data NDJSON names Locations, Organizations and Practitioners by conditional references
/// (`Location?identifier=system|value`) that a server resolves with a search: each one finds
/// exactly one resource of the 10-patient set through the target's `identifier` parameter.
/// Devices name their patient directly.
#[test]
fn bulk_conditional_references_resolve_by_identifier() {
    let dir = testdata("bulk-ndjson-10-patients");
    let lines = |resource_type: &str| -> Vec<String> {
        let text = std::fs::read_to_string(dir.join(format!("{resource_type}.000.ndjson"))).unwrap();
        text.lines().map(str::to_string).collect()
    };
    // (id, index values) of every resource that references may name.
    let mut targets: HashMap<String, Vec<(String, Extraction)>> = HashMap::new();
    for resource_type in ["Location", "Organization", "Practitioner", "Patient"] {
        for line in lines(resource_type) {
            let id = validate(line.as_bytes()).unwrap().id.unwrap();
            targets.entry(resource_type.to_string()).or_default().push((id, extract_bytes(line.as_bytes()).unwrap()));
        }
    }
    let synthea = "https://github.com/synthetichealth/synthea";
    for (id, extraction) in &targets["Location"] {
        assert_eq!(extraction.of("identifier").cloned().collect::<Vec<_>>(), [token(synthea, id)]);
    }
    // Each distinct reference is searched once.
    let mut searched: HashSet<String> = HashSet::new();
    let mut resolved: BTreeMap<String, usize> = BTreeMap::new();
    for path in std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()) {
        if path.extension().is_none_or(|e| e != "ndjson") {
            continue;
        }
        for line in std::fs::read_to_string(&path).unwrap().lines() {
            for site in validate(line.as_bytes()).unwrap().references {
                let ReferenceKind::Conditional { resource_type, query } = &site.kind else { continue };
                if searched.insert(site.reference.clone()) {
                    let params: Vec<(String, String)> = query
                        .split('&')
                        .map(|p| p.split_once('=').unwrap())
                        .map(|(name, value)| (name.to_string(), value.to_string()))
                        .collect();
                    assert_eq!(params[0].0, "identifier", "{}", site.reference);
                    let query = parse_query(resource_type, &params, &ParseOptions::default()).unwrap();
                    let matches: Vec<&String> = targets[resource_type.as_str()]
                        .iter()
                        .filter(|(_, extraction)| {
                            query
                                .filters
                                .iter()
                                .all(|f| f.matches(&extraction.of(&f.param).cloned().collect::<Vec<_>>()))
                        })
                        .map(|(id, _)| id)
                        .collect();
                    assert_eq!(matches.len(), 1, "{}: {matches:?}", site.reference);
                }
                *resolved.entry(resource_type.clone()).or_default() += 1;
            }
        }
    }
    assert_eq!(
        resolved,
        BTreeMap::from([
            ("Location".to_string(), 3_432),
            ("Organization".to_string(), 2_430),
            ("Practitioner".to_string(), 4_175)
        ])
    );
    let patients: Vec<IndexValue> =
        targets["Patient"].iter().map(|(id, _)| IndexValue::reference("Patient", id)).collect();
    let devices = lines("Device");
    assert_eq!(devices.len(), 16);
    for line in devices {
        let extraction = extract_bytes(line.as_bytes()).unwrap();
        let patient: Vec<&IndexValue> = extraction.of("patient").collect();
        assert!(patient.len() == 1 && patients.contains(patient[0]), "{line}");
        assert_eq!(extraction.of("status").collect::<Vec<_>>(), [&token("", "active")]);
        assert_eq!(extraction.of("udi-di").count(), 1);
    }
}

/// Rewrites every string value, one at a time, into text that breaks its type (dates,
/// references, codes), and drops or retypes members: extraction never panics and dates stay
/// well-formed intervals.
#[test]
fn mutated_examples_never_panic() {
    fn strings(value: &Value<'_>, out: &mut Vec<(usize, usize)>) {
        match &value.kind {
            Kind::String(_) => out.push((value.start, value.end)),
            Kind::Array(items) => items.iter().for_each(|v| strings(v, out)),
            Kind::Object(members) => members.iter().for_each(|m| strings(&m.value, out)),
            _ => {}
        }
    }
    let replacements: &[&str] = &[
        "\"\"",
        "\"2024-13-45T99:99\"",
        "\"9999-12-31T23:59:59.999999+14:00\"",
        "\"0001\"",
        "\"Patient/\"",
        "\"#\"",
        "\"http://x/_history/1\"",
        "\"urn:uuid:x\"",
        "\"ÅÆ\u{301}ß  \"",
        "null",
        "12",
        "[]",
        "{}",
        "true",
    ];
    let mut checked = 0;
    for name in example_names().iter().filter(|n| !n.starts_with("Bundle")).step_by(3) {
        let bytes = example(name);
        let resource = parse(&bytes, &Limits::default()).unwrap();
        let Some(resource_type) = resource.get("resourceType").and_then(Value::as_str) else { continue };
        if !SearchParams::r4().is_searchable(resource_type) {
            continue;
        }
        let mut spans = Vec::new();
        strings(&resource, &mut spans);
        for (i, (start, end)) in spans.iter().enumerate().step_by(2) {
            let replacement = replacements[i % replacements.len()];
            let mut mutated = bytes[..*start].to_vec();
            mutated.extend_from_slice(replacement.as_bytes());
            mutated.extend_from_slice(&bytes[*end..]);
            let Ok(extraction) = extract_bytes(&mutated) else { continue };
            assert!(extraction.values.len() <= INDEX_VALUES_MAX);
            for (_, value) in &extraction.values {
                if let IndexValue::Date { low_ms, high_ms } = value {
                    assert!(low_ms <= high_ms, "{name}");
                }
            }
            checked += 1;
        }
    }
    assert!(checked > 1_000, "{checked}");
    // Not JSON, not an object, no or an unknown type.
    assert!(matches!(extract_bytes(b"{"), Err(ExtractError::Json(_))));
    assert!(matches!(extract_bytes(b"[]"), Err(ExtractError::NoResourceType)));
    assert!(matches!(extract_bytes(br#"{"resourceType":7}"#), Err(ExtractError::NoResourceType)));
    assert!(matches!(extract_bytes(br#"{"resourceType":"Coverage"}"#), Err(ExtractError::NotSearchable(_))));
}

/// A resource with far more values than the cap is cut at the cap, and says so.
#[test]
fn extraction_is_capped() {
    let mut text = String::from(r#"{"resourceType":"Observation","status":"final","code":{"coding":["#);
    for i in 0..3_000 {
        if i > 0 {
            text.push(',');
        }
        text.push_str(&format!(r#"{{"system":"http://loinc.org","code":"{i}"}}"#));
    }
    text.push_str("]}}");
    let extraction = extract_bytes(text.as_bytes()).unwrap();
    assert!(extraction.truncated);
    assert_eq!(extraction.values.len(), INDEX_VALUES_MAX);
}
