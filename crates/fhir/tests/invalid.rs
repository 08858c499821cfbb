//! One hand-written invalid resource per check, asserting the issue code and location; and
//! the valid counterparts that must pass.

use medledger_fhir::validate::{ReferenceKind, validate_with_limits};
use medledger_fhir::{IssueCode, Severity, validate};

const OBSERVATION: &str = r#"{"resourceType":"Observation","status":"final","code":{"text":"glucose"}}"#;

/// Inserts `fields` (JSON members) into the minimal Observation.
fn observation(fields: &str) -> String {
    OBSERVATION.replacen(r#""status":"final","#, &format!(r#""status":"final",{fields},"#), 1)
}

/// The first error of an invalid input, as (code, expression).
fn first_error(json: &str) -> (IssueCode, String) {
    let issues = match validate(json.as_bytes()) {
        Ok(v) => panic!("accepted: {json}\n{v:?}"),
        Err(issues) => issues,
    };
    let issue = issues.iter().find(|i| i.severity <= Severity::Error).expect("an error");
    (issue.code, issue.expression.clone().unwrap_or_default())
}

fn assert_error(json: &str, code: IssueCode, expression: &str) {
    let (got_code, got_expression) = first_error(json);
    assert_eq!((got_code, got_expression.as_str()), (code, expression), "{json}");
}

fn assert_valid(json: &str) {
    if let Err(issues) = validate(json.as_bytes()) {
        panic!("rejected: {json}\n{issues:#?}");
    }
}

#[test]
fn minimal_resources_are_valid() {
    assert_valid(OBSERVATION);
    assert_valid(r#"{"resourceType":"Patient"}"#);
    assert_valid(&observation(
        r#""valueQuantity":{"value":5.40,"unit":"mmol/L","system":"http://unitsofmeasure.org","code":"mmol/L"}"#,
    ));
}

#[test]
fn not_json_or_not_a_resource() {
    let issues = validate(b"{\"resourceType\": \"Patient\",}").unwrap_err();
    assert_eq!(issues[0].code, IssueCode::Invalid);
    assert_eq!(issues[0].severity, Severity::Fatal);
    assert!(issues[0].diagnostics.contains("line 1, column 28"), "{}", issues[0].diagnostics);
    assert_eq!(validate(b"[]").unwrap_err()[0].code, IssueCode::Structure);
    assert_error(r#"{"id":"x"}"#, IssueCode::Required, "resourceType");
    assert_error(r#"{"resourceType":7}"#, IssueCode::Structure, "resourceType");
}

#[test]
fn unknown_and_unsupported_resource_types() {
    assert_error(r#"{"resourceType":"Claim","status":"active"}"#, IssueCode::NotSupported, "resourceType");
    assert_error(r#"{"resourceType":"Patients"}"#, IssueCode::NotSupported, "resourceType");
    assert_error(r#"{"resourceType":"patient"}"#, IssueCode::NotSupported, "resourceType");
}

#[test]
fn unknown_elements() {
    assert_error(&observation(r#""colour":"red""#), IssueCode::Structure, "Observation.colour");
    assert_error(&observation(r#""code2":{"text":"x"}"#), IssueCode::Structure, "Observation.code2");
    assert_error(
        &observation(r#""category":[{"coding":[{"system":"http://x","cod":"y"}]}]"#),
        IssueCode::Structure,
        "Observation.category[0].coding[0].cod",
    );
    assert_error(&observation(r#""valueFoo":"x""#), IssueCode::Structure, "Observation.valueFoo");
    // Resource elements are not allowed in data types.
    assert_error(&observation(r#""note":[{"text":"x","meta":{}}]"#), IssueCode::Structure, "Observation.note[0].meta");
    // modifierExtension is allowed on resources and backbone elements, not on data types.
    assert_valid(&observation(r#""modifierExtension":[{"url":"http://x","valueBoolean":true}]"#));
    assert_valid(&observation(
        r#""component":[{"code":{"text":"a"},"modifierExtension":[{"url":"http://x","valueCode":"a"}]}]"#,
    ));
    assert_error(
        &observation(r#""method":{"text":"x","modifierExtension":[{"url":"http://x","valueCode":"a"}]}"#),
        IssueCode::Structure,
        "Observation.method.modifierExtension",
    );
}

#[test]
fn cardinality_and_json_shape() {
    assert_error(&observation(r#""category":{"text":"x"}"#), IssueCode::Structure, "Observation.category");
    assert_error(&observation(r#""issued":["2020-01-01T00:00:00Z"]"#), IssueCode::Structure, "Observation.issued");
    assert_error(&observation(r#""subject":"Patient/1""#), IssueCode::Structure, "Observation.subject");
    assert_error(&observation(r#""method":[]"#), IssueCode::Structure, "Observation.method");
    assert_error(&observation(r#""category":[{"text":"x"},null]"#), IssueCode::Structure, "Observation.category[1]");
    assert_error(&observation(r#""issued":null"#), IssueCode::Structure, "Observation.issued");
    assert_error(
        &observation(r#""valueQuantity":{"value":{"v":1}}"#),
        IssueCode::Structure,
        "Observation.valueQuantity.value",
    );
}

#[test]
fn empty_values() {
    assert_error(&observation(r#""category":[]"#), IssueCode::Structure, "Observation.category");
    assert_error(&observation(r#""method":{}"#), IssueCode::Structure, "Observation.method");
    assert_error(&observation(r#""category":[{}]"#), IssueCode::Structure, "Observation.category[0]");
    assert_error(&observation(r#""id":"""#), IssueCode::Value, "Observation.id");
    assert_error(&observation(r#""method":{"text":""}"#), IssueCode::Value, "Observation.method.text");
}

#[test]
fn required_elements() {
    assert_error(r#"{"resourceType":"Observation","code":{"text":"x"}}"#, IssueCode::Required, "Observation.status");
    assert_error(r#"{"resourceType":"Observation","status":"final"}"#, IssueCode::Required, "Observation.code");
    assert_error(
        &observation(r#""component":[{"valueString":"x"}]"#),
        IssueCode::Required,
        "Observation.component[0].code",
    );
    assert_error(
        &observation(r#""extension":[{"valueString":"x"}]"#),
        IssueCode::Required,
        "Observation.extension[0].url",
    );
    assert_error(&observation(r#""note":[{"authorString":"x"}]"#), IssueCode::Required, "Observation.note[0].text");
    assert_error(
        r#"{"resourceType":"Consent","status":"active","category":[{"text":"x"}]}"#,
        IssueCode::Required,
        "Consent.scope",
    );
    // A required primitive may be given by its extension only (e.g. data-absent-reason).
    assert_valid(
        r#"{"resourceType":"Observation","_status":{"extension":[{"url":"http://hl7.org/fhir/StructureDefinition/data-absent-reason","valueCode":"unknown"}]},"code":{"text":"x"}}"#,
    );
}

#[test]
fn primitive_values() {
    assert_error(&observation(r#""issued":"2020-01-01""#), IssueCode::Value, "Observation.issued");
    assert_error(
        &observation(r#""effectiveDateTime":"2020-02-30""#),
        IssueCode::Value,
        "Observation.effectiveDateTime",
    );
    assert_error(&observation(r#""valueInteger":1.5"#), IssueCode::Value, "Observation.valueInteger");
    assert_error(&observation(r#""valueBoolean":"true""#), IssueCode::Value, "Observation.valueBoolean");
    assert_error(
        &observation(r#""valueQuantity":{"value":"5.4"}"#),
        IssueCode::Value,
        "Observation.valueQuantity.value",
    );
    assert_error(&observation(r#""id":"a_b""#), IssueCode::Value, "Observation.id");
    assert_error(
        &observation(r#""code2":1"#).replace(r#""code2":1,"#, r#""language":"en  GB","#),
        IssueCode::Value,
        "Observation.language",
    );
    assert_error(
        &observation(r#""code":{"coding":[{"system":"http://loinc .org","code":"1"}]}"#).replacen(
            r#","code":{"text":"glucose"}"#,
            "",
            1,
        ),
        IssueCode::Value,
        "Observation.code.coding[0].system",
    );
    assert_error(
        r#"{"resourceType":"Patient","birthDate":"1970-01-01","_birthDate":{"extension":[{"url":"http://x","valueDateTime":"1970-01-01T25:00:00Z"}]}}"#,
        IssueCode::Value,
        "Patient._birthDate.extension[0].valueDateTime",
    );
    assert_valid(&observation(r#""valueInteger":-2147483648"#));
    assert_error(&observation(r#""valueInteger":-2147483649"#), IssueCode::Value, "Observation.valueInteger");
}

#[test]
fn string_length_limit() {
    let long = "x".repeat(1024 * 1024 + 1);
    assert_error(&observation(&format!(r#""valueString":"{long}""#)), IssueCode::TooLong, "Observation.valueString");
}

#[test]
fn choice_types_are_exclusive() {
    assert_error(
        &observation(r#""valueString":"a","valueBoolean":true"#),
        IssueCode::Structure,
        "Observation.valueBoolean",
    );
    assert_error(
        &observation(r#""effectiveDateTime":"2020","effectivePeriod":{"start":"2020"}"#),
        IssueCode::Structure,
        "Observation.effectivePeriod",
    );
    // A value and its own primitive extension are one choice.
    assert_valid(&observation(r#""valueString":"a","_valueString":{"id":"x"}"#));
}

#[test]
fn primitive_extensions() {
    assert_valid(
        r#"{"resourceType":"Patient","birthDate":"1970-03-30","_birthDate":{"extension":[{"url":"http://hl7.org/fhir/StructureDefinition/patient-birthTime","valueDateTime":"1970-03-30T14:35:00+01:00"}]}}"#,
    );
    assert_valid(r#"{"resourceType":"Patient","name":[{"given":["A",null,"C"],"_given":[null,{"id":"b"},null]}]}"#);
    assert_valid(r#"{"resourceType":"Patient","name":[{"_given":[{"id":"a"}]}]}"#);
    assert_error(
        r#"{"resourceType":"Patient","name":[{"given":["A",null]}]}"#,
        IssueCode::Structure,
        "Patient.name[0].given[1]",
    );
    assert_error(
        r#"{"resourceType":"Patient","name":[{"given":["A","B"],"_given":[null]}]}"#,
        IssueCode::Structure,
        "Patient.name[0]._given",
    );
    assert_error(
        r#"{"resourceType":"Patient","name":[{"given":[null],"_given":[null]}]}"#,
        IssueCode::Structure,
        "Patient.name[0].given[0]",
    );
    assert_error(r#"{"resourceType":"Patient","_name":{"id":"x"}}"#, IssueCode::Structure, "Patient._name");
    assert_error(
        r#"{"resourceType":"Patient","_birthDate":{"url":"x"}}"#,
        IssueCode::Structure,
        "Patient._birthDate.url",
    );
    assert_error(r#"{"resourceType":"Patient","_birthDate":"x"}"#, IssueCode::Structure, "Patient._birthDate");
}

#[test]
fn reference_formats() {
    let with_subject = |reference: &str| observation(&format!(r#""subject":{{"reference":"{reference}"}}"#));
    for ok in [
        "Patient/123",
        "Patient/a.b-c",
        "Patient/123/_history/2",
        "https://other.example/fhir/Patient/9",
        "urn:uuid:c757873d-ec9a-4326-a141-556f43239520",
        "urn:oid:1.2.3.4",
        "Patient?identifier=http://hospital.example|12345",
    ] {
        let validated = validate(with_subject(ok).as_bytes()).unwrap_or_else(|e| panic!("{ok}: {e:?}"));
        assert_eq!(validated.references[0].reference, ok);
        assert_eq!(validated.references[0].path, "Observation.subject.reference");
    }
    for bad in [
        "Patient",
        "Patient/",
        "Patient/1/2",
        "patient/1",
        "Foo/1",
        "Patient/1/_history/",
        "Patient/a_b",
        "urn:uuid:not-a-uuid",
        "urn:oid:9.1",
        "Patient?",
        "Patient 1",
        "#",
    ] {
        let (code, expression) = first_error(&with_subject(bad));
        let expected = if bad == "#" { IssueCode::Invariant } else { IssueCode::Value };
        assert_eq!((code, expression.as_str()), (expected, "Observation.subject.reference"), "{bad}");
    }
    // Allowed target types come from the model.
    assert_error(&with_subject("Practitioner/1"), IssueCode::Structure, "Observation.subject.reference");
    assert_error(&with_subject("Practitioner?name=x"), IssueCode::Structure, "Observation.subject.reference");
    assert_error(
        &with_subject("https://x.example/fhir/Medication/1"),
        IssueCode::Structure,
        "Observation.subject.reference",
    );
}

#[test]
fn conditional_references_are_reported_distinctly() {
    let json = observation(
        r#""subject":{"reference":"Patient?identifier=http://h.example|7"},"performer":[{"reference":"Practitioner/1"}]"#,
    );
    let validated = validate(json.as_bytes()).unwrap();
    assert_eq!(
        validated.references[0].kind,
        ReferenceKind::Conditional { resource_type: "Patient".into(), query: "identifier=http://h.example|7".into() }
    );
    assert_eq!(
        validated.references[1].kind,
        ReferenceKind::Relative { resource_type: "Practitioner".into(), id: "1".into(), version: None }
    );
    assert_eq!(validated.references[1].path, "Observation.performer[0].reference");
}

#[test]
fn contained_resources() {
    let json = r##"{"resourceType":"Observation","contained":[{"resourceType":"Patient","id":"p1","name":[{"family":"X"}],
        "managingOrganization":{"reference":"Organization/9"}}],"status":"final","code":{"text":"x"},"subject":{"reference":"#p1"}}"##;
    let validated = validate(json.as_bytes()).unwrap();
    let paths: Vec<&str> = validated.references.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, ["Observation.contained[0].managingOrganization.reference", "Observation.subject.reference"]);
    // ref-1: a local reference needs its contained resource.
    assert_error(&json.replace(r##""#p1""##, r##""#p2""##), IssueCode::Invariant, "Observation.subject.reference");
    // Contained resources are validated like any other.
    assert_error(
        &json.replace(r#""family":"X""#, r#""family":["X"]"#),
        IssueCode::Structure,
        "Observation.contained[0].name[0].family",
    );
    // dom-2 and dom-4.
    assert_error(
        &json.replace(r#""id":"p1","#, r#""id":"p1","contained":[{"resourceType":"Patient"}],"#),
        IssueCode::Invariant,
        "Observation.contained[0].contained",
    );
    assert_error(
        &json.replace(r#""id":"p1","#, r#""id":"p1","meta":{"versionId":"1"},"#),
        IssueCode::Invariant,
        "Observation.contained[0].meta",
    );
    // A contained resource of an unsupported type is a warning, not an error.
    let medication = r##"{"resourceType":"MedicationRequest","contained":[{"resourceType":"Medication","id":"m"}],
        "status":"active","intent":"order","medicationReference":{"reference":"#m"},"subject":{"reference":"Patient/1"}}"##;
    let validated = validate(medication.as_bytes()).unwrap();
    assert_eq!(validated.warnings.len(), 1);
    assert_eq!(validated.warnings[0].code, IssueCode::NotSupported);
    assert_eq!(validated.warnings[0].expression.as_deref(), Some("MedicationRequest.contained[0].resourceType"));
    assert_error(
        &medication.replace("Medication\"", "Medicine\""),
        IssueCode::NotSupported,
        "MedicationRequest.contained[0].resourceType",
    );
}

#[test]
fn bundle_entries() {
    let bundle = r#"{"resourceType":"Bundle","type":"transaction","entry":[
        {"fullUrl":"urn:uuid:c757873d-ec9a-4326-a141-556f43239520","resource":{"resourceType":"Patient","active":true},
         "request":{"method":"POST","url":"Patient"}},
        {"fullUrl":"urn:uuid:d757873d-ec9a-4326-a141-556f43239520","resource":{"resourceType":"Observation","status":"final",
         "code":{"text":"x"},"valueQuantity":{"value":5.40},"subject":{"reference":"urn:uuid:c757873d-ec9a-4326-a141-556f43239520"}},
         "request":{"method":"POST","url":"Observation"}},
        {"resource":{"resourceType":"Claim","id":"c"},"request":{"method":"POST","url":"Claim"}},
        {"request":{"method":"DELETE","url":"Patient/9"}}]}"#;
    let validated = validate(bundle.as_bytes()).unwrap();
    assert_eq!(validated.entries.len(), 4);
    let observation = &validated.entries[1];
    let span = observation.resource_span.clone().unwrap();
    assert!(bundle[span].starts_with(r#"{"resourceType":"Observation""#));
    let resource = observation.resource.as_ref().unwrap();
    assert_eq!(resource.references[0].path, "Observation.subject.reference");
    assert_eq!(resource.references[0].kind, ReferenceKind::Uuid);
    assert_eq!(observation.request_method.as_deref(), Some("POST"));
    assert_eq!(validated.entries[2].resource_type.as_deref(), Some("Claim"));
    assert!(validated.entries[2].resource.is_none());
    assert_eq!(validated.warnings[0].code, IssueCode::NotSupported);
    assert_eq!(validated.warnings[0].expression.as_deref(), Some("Bundle.entry[2].resource.resourceType"));
    assert!(validated.entries[3].resource_span.is_none());

    // Entry resources are validated recursively, with full paths.
    assert_error(
        &bundle.replace(r#""active":true"#, r#""active":"yes""#),
        IssueCode::Value,
        "Bundle.entry[0].resource.active",
    );
    // bdl-3: a transaction entry needs its request.
    assert_error(
        &bundle.replace(r#""request":{"method":"POST","url":"Patient"}"#, r#""search":{"mode":"match"}"#),
        IssueCode::Invariant,
        "Bundle.entry[0]",
    );
    // bdl-7: fullUrls are unique.
    assert_error(
        &bundle.replace("urn:uuid:d757873d", "urn:uuid:c757873d"),
        IssueCode::Invariant,
        "Bundle.entry[1].fullUrl",
    );
    // bdl-1: total only in searchset and history.
    assert_error(
        &bundle.replace(r#""type":"transaction""#, r#""type":"transaction","total":2"#),
        IssueCode::Invariant,
        "Bundle.total",
    );
}

#[test]
fn invariants() {
    assert_error(
        &observation(r#""valueString":"x","dataAbsentReason":{"text":"unknown"}"#),
        IssueCode::Invariant,
        "Observation.dataAbsentReason",
    );
    assert_error(
        r#"{"resourceType":"Patient","contact":[{"gender":"female"}]}"#,
        IssueCode::Invariant,
        "Patient.contact[0]",
    );
    assert_error(
        &observation(
            r#""extension":[{"url":"http://x","valueString":"a","extension":[{"url":"y","valueString":"b"}]}]"#,
        ),
        IssueCode::Invariant,
        "Observation.extension[0]",
    );
    assert_error(&observation(r#""extension":[{"url":"http://x"}]"#), IssueCode::Invariant, "Observation.extension[0]");
    assert_error(
        &observation(r#""valueQuantity":{"value":1,"code":"mg"}"#),
        IssueCode::Invariant,
        "Observation.valueQuantity",
    );
    // SimpleQuantity has no comparator.
    assert_error(
        &observation(r#""referenceRange":[{"low":{"value":1,"comparator":"<"}}]"#),
        IssueCode::Structure,
        "Observation.referenceRange[0].low.comparator",
    );
    assert_error(
        r#"{"resourceType":"CarePlan","status":"active","intent":"plan","subject":{"reference":"Patient/1"},
            "activity":[{"reference":{"reference":"ServiceRequest/1"},"detail":{"status":"completed"}}]}"#,
        IssueCode::Invariant,
        "CarePlan.activity[0]",
    );
}

#[test]
fn handwritten_resources() {
    assert_valid(
        r#"{"resourceType":"PractitionerRole","active":true,"practitioner":{"reference":"Practitioner/1"},
            "availableTime":[{"daysOfWeek":["mon","tue"],"availableStartTime":"09:00:00"}],
            "notAvailable":[{"description":"holiday","during":{"start":"2024-12-24"}}]}"#,
    );
    assert_error(
        r#"{"resourceType":"PractitionerRole","notAvailable":[{"during":{"start":"2024-12-24"}}]}"#,
        IssueCode::Required,
        "PractitionerRole.notAvailable[0].description",
    );
    assert_error(
        r#"{"resourceType":"CarePlan","status":"active","intent":"plan"}"#,
        IssueCode::Required,
        "CarePlan.subject",
    );
}

#[test]
fn exact_bytes_are_what_is_validated() {
    let text = "{\n  \"resourceType\" : \"Observation\",\n  \"id\": \"bp\",\n  \"meta\": {\"versionId\": \"3\", \"lastUpdated\": \"2024-05-01T10:00:00.000+02:00\"},\n  \"status\": \"final\",\n  \"code\": {\"text\": \"x\"},\n  \"valueQuantity\": {\"value\": 5.40, \"unit\": \"mmol/L\"}\n}";
    let validated = validate(text.as_bytes()).unwrap();
    assert_eq!(validated.resource_type, "Observation");
    assert_eq!(validated.id.as_deref(), Some("bp"));
    assert_eq!(validated.version_id.as_deref(), Some("3"));
    assert_eq!(validated.last_updated.as_deref(), Some("2024-05-01T10:00:00.000+02:00"));
    // The validator only reads; nothing it returns is a re-serialization. The decimal lexeme
    // survives parsing exactly.
    let tree = medledger_fhir::json::parse(text.as_bytes(), &Default::default()).unwrap();
    let value = tree.get("valueQuantity").unwrap().get("value").unwrap();
    assert_eq!(&text[value.start..value.end], "5.40");
    assert!(matches!(value.kind, medledger_fhir::json::Kind::Number("5.40")));
}

#[test]
fn limits_become_too_long_issues() {
    let limits = medledger_fhir::json::Limits { input_bytes_max: 16, ..Default::default() };
    let issues = validate_with_limits(OBSERVATION.as_bytes(), &limits).unwrap_err();
    assert_eq!(issues[0].code, IssueCode::TooLong);
    let deep = format!(
        "{}{}",
        r#"{"resourceType":"Patient","extension":"#.to_string() + &"[".repeat(70),
        "]".repeat(70) + "}"
    );
    assert_eq!(validate(deep.as_bytes()).unwrap_err()[0].code, IssueCode::TooLong);
}

#[test]
fn issues_are_capped() {
    let members: Vec<String> = (0..500).map(|i| format!(r#""unknown{i}":1"#)).collect();
    let json = format!(r#"{{"resourceType":"Patient",{}}}"#, members.join(","));
    let issues = validate(json.as_bytes()).unwrap_err();
    assert_eq!(issues.len(), medledger_fhir::validate::ISSUES_MAX + 1);
    assert!(issues.last().unwrap().diagnostics.starts_with("400 further issues"));
    // An error past the cap still makes the resource invalid.
    let contained: Vec<String> = (0..150).map(|i| format!(r#"{{"resourceType":"Medication","id":"m{i}"}}"#)).collect();
    let json = format!(r#"{{"resourceType":"Patient","contained":[{}],"active":"yes"}}"#, contained.join(","));
    let issues = validate(json.as_bytes()).unwrap_err();
    assert!(issues.iter().all(|i| i.severity >= Severity::Warning));
}

/// Every prefix and every single-byte deletion or substitution of a Bundle goes through the
/// whole validator (not just the parser) without panicking.
#[test]
fn mutated_bundles_never_panic() {
    let doc = br##"{"resourceType":"Bundle","type":"transaction","entry":[{"fullUrl":"urn:uuid:c757873d-ec9a-4326-a141-556f43239520",
        "resource":{"resourceType":"Patient","contained":[{"resourceType":"Organization","id":"o","name":"x"}],
        "managingOrganization":{"reference":"#o"},"name":[{"given":["A",null],"_given":[null,{"id":"g"}]}],"birthDate":"1970-01-01"},
        "request":{"method":"POST","url":"Patient"}},{"resource":{"resourceType":"Observation","status":"final","code":{"text":"x"},
        "valueQuantity":{"value":5.40,"code":"mg","system":"http://unitsofmeasure.org"},"subject":{"reference":"Patient?identifier=a|b"}},
        "request":{"method":"POST","url":"Observation"}}]}"##;
    validate(doc).unwrap();
    let replacements = [b'"', b'{', b'}', b'[', b']', b',', b'0', b'#', b'_', b'n', b' '];
    for i in 0..doc.len() {
        let _ = validate(&doc[..i]);
        let mut deleted = doc.to_vec();
        deleted.remove(i);
        let _ = validate(&deleted);
        let mut replaced = doc.to_vec();
        replaced[i] = replacements[i % replacements.len()];
        let _ = validate(&replaced);
    }
}
