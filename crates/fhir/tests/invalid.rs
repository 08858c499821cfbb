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
    assert_error(r#"{"resourceType":"Coverage","status":"active"}"#, IssueCode::NotSupported, "resourceType");
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
        {"resource":{"resourceType":"Coverage","id":"c"},"request":{"method":"POST","url":"Coverage"}},
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
    assert_eq!(validated.entries[2].resource_type.as_deref(), Some("Coverage"));
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

/// Each `(fragment, location)` removed from `valid` leaves a resource missing that required
/// element; together they name every required element the model gives `resource_type`.
fn assert_required(resource_type: &str, valid: &str, cases: &[(&str, &str)]) {
    assert_valid(valid);
    let mut reported = std::collections::BTreeSet::new();
    for (fragment, location) in cases {
        assert_eq!(valid.matches(fragment).count(), 1, "{fragment}");
        let issues = validate(valid.replacen(fragment, "", 1).as_bytes()).unwrap_err();
        assert_eq!(issues.len(), 1, "{fragment}: {issues:#?}");
        assert_eq!((issues[0].code, issues[0].expression.as_deref()), (IssueCode::Required, Some(*location)));
        reported.insert(issues[0].diagnostics.split(' ').next().unwrap().to_string());
    }
    let prefix = format!("{resource_type}.");
    let required: std::collections::BTreeSet<String> = medledger_fhir::model::Model::r4()
        .all_elements()
        .filter(|e| e.min > 0 && e.path.starts_with(&prefix))
        .map(|e| e.path.clone())
        .collect();
    assert_eq!(reported, required);
}

#[test]
fn handwritten_claim_and_explanation_of_benefit() {
    let claim = r#"{"resourceType":"Claim","status":"active","type":{"text":"pharmacy"},"use":"claim",
        "patient":{"reference":"Patient/1"},"created":"2024-01-02","provider":{"reference":"Organization/1"},
        "priority":{"text":"normal"},"payee":{"type":{"text":"provider"},"party":{"reference":"Organization/1"}},
        "careTeam":[{"sequence":1,"provider":{"reference":"Practitioner/1"},"responsible":true}],
        "supportingInfo":[{"sequence":2,"category":{"text":"info"},"valueString":"x"}],
        "diagnosis":[{"sequence":3,"diagnosisCodeableConcept":{"text":"flu"},"type":[{"text":"principal"}]}],
        "procedure":[{"sequence":4,"procedureReference":{"reference":"Procedure/1"},"date":"2024-01-01"}],
        "insurance":[{"sequence":5,"focal":true,"coverage":{"reference":"Coverage/1"},"preAuthRef":["A1"]}],
        "accident":{"date":"2023-12-31","locationAddress":{"city":"Den Burg"}},
        "item":[{"sequence":6,"productOrService":{"text":"visit"},"detail":[{"sequence":7,"productOrService":{"text":"part"},
            "subDetail":[{"sequence":8,"productOrService":{"text":"sub"},"factor":1.0}]}]}],
        "total":{"value":10,"currency":"USD"}}"#;
    assert_required(
        "Claim",
        claim,
        &[
            (r#""status":"active","#, "Claim.status"),
            (r#""type":{"text":"pharmacy"},"#, "Claim.type"),
            (r#""use":"claim","#, "Claim.use"),
            (r#""patient":{"reference":"Patient/1"},"#, "Claim.patient"),
            (r#""created":"2024-01-02","#, "Claim.created"),
            (r#""provider":{"reference":"Organization/1"},"#, "Claim.provider"),
            (r#""priority":{"text":"normal"},"#, "Claim.priority"),
            (r#""type":{"text":"provider"},"#, "Claim.payee.type"),
            (r#""sequence":1,"#, "Claim.careTeam[0].sequence"),
            (r#""provider":{"reference":"Practitioner/1"},"#, "Claim.careTeam[0].provider"),
            (r#""sequence":2,"#, "Claim.supportingInfo[0].sequence"),
            (r#""category":{"text":"info"},"#, "Claim.supportingInfo[0].category"),
            (r#""sequence":3,"#, "Claim.diagnosis[0].sequence"),
            (r#""diagnosisCodeableConcept":{"text":"flu"},"#, "Claim.diagnosis[0].diagnosis[x]"),
            (r#""sequence":4,"#, "Claim.procedure[0].sequence"),
            (r#""procedureReference":{"reference":"Procedure/1"},"#, "Claim.procedure[0].procedure[x]"),
            (
                r#""insurance":[{"sequence":5,"focal":true,"coverage":{"reference":"Coverage/1"},"preAuthRef":["A1"]}],"#,
                "Claim.insurance",
            ),
            (r#""sequence":5,"#, "Claim.insurance[0].sequence"),
            (r#""focal":true,"#, "Claim.insurance[0].focal"),
            (r#""coverage":{"reference":"Coverage/1"},"#, "Claim.insurance[0].coverage"),
            (r#""date":"2023-12-31","#, "Claim.accident.date"),
            (r#""sequence":6,"#, "Claim.item[0].sequence"),
            (r#""productOrService":{"text":"visit"},"#, "Claim.item[0].productOrService"),
            (r#""sequence":7,"#, "Claim.item[0].detail[0].sequence"),
            (r#""productOrService":{"text":"part"},"#, "Claim.item[0].detail[0].productOrService"),
            (r#""sequence":8,"#, "Claim.item[0].detail[0].subDetail[0].sequence"),
            (r#""productOrService":{"text":"sub"},"#, "Claim.item[0].detail[0].subDetail[0].productOrService"),
        ],
    );
    // Claim and ExplanationOfBenefit differ in places: an EOB's insurance has no sequence,
    // a Claim's item no adjudication; a Claim's patient is a Patient, never a Group.
    assert_error(
        &claim.replace(r#""preAuthRef":["A1"]"#, r#""preAuthRef":["A1"],"outcome":"complete""#),
        IssueCode::Structure,
        "Claim.insurance[0].outcome",
    );
    assert_error(
        &claim.replace(r#""factor":1.0"#, r#""factor":1.0,"adjudication":[{"category":{"text":"x"}}]"#),
        IssueCode::Structure,
        "Claim.item[0].detail[0].subDetail[0].adjudication",
    );
    assert_error(&claim.replace("Patient/1", "Group/1"), IssueCode::Structure, "Claim.patient.reference");
    assert_error(
        &claim.replace(r#""procedureReference""#, r#""procedureCodeableConcept":{"text":"x"},"procedureReference""#),
        IssueCode::Structure,
        "Claim.procedure[0].procedureReference",
    );
    assert_error(&claim.replace(r#""sequence":6"#, r#""sequence":0"#), IssueCode::Value, "Claim.item[0].sequence");
    assert_error(
        &claim.replace(r#""total":{"value":10,"currency":"USD"}"#, r#""total":[{"value":10,"currency":"USD"}]"#),
        IssueCode::Structure,
        "Claim.total",
    );

    let eob = r#"{"resourceType":"ExplanationOfBenefit","status":"active","type":{"text":"oral"},"use":"claim",
        "patient":{"reference":"Patient/1"},"created":"2024-01-02","insurer":{"reference":"Organization/2"},
        "provider":{"reference":"Organization/1"},"outcome":"complete","claim":{"reference":"Claim/1"},
        "careTeam":[{"sequence":1,"provider":{"reference":"Practitioner/1"},"responsible":true}],
        "supportingInfo":[{"sequence":2,"category":{"text":"info"},"reason":{"code":"r"}}],
        "diagnosis":[{"sequence":3,"diagnosisReference":{"reference":"Condition/1"},"type":[{"text":"principal"}]}],
        "procedure":[{"sequence":4,"procedureCodeableConcept":{"text":"proc"},"date":"2024-01-01"}],
        "insurance":[{"focal":true,"coverage":{"reference":"Coverage/1"},"preAuthRef":["A1"]}],
        "item":[{"sequence":6,"productOrService":{"text":"visit"},
            "adjudication":[{"category":{"text":"submitted"},"amount":{"value":11,"currency":"USD"}}],
            "detail":[{"sequence":7,"productOrService":{"text":"part"},
                "subDetail":[{"sequence":8,"productOrService":{"text":"sub"},"adjudication":[{"category":{"text":"eligible"},"value":1}]}],
                "adjudication":[{"category":{"text":"benefit"},"value":2}]}]}],
        "addItem":[{"productOrService":{"text":"added"},"detail":[{"productOrService":{"text":"added part"},
            "subDetail":[{"productOrService":{"text":"added sub"},"factor":1}]}],"itemSequence":[6]}],
        "adjudication":[{"category":{"text":"total"},"value":3}],
        "total":[{"category":{"text":"total submitted"},"amount":{"value":10,"currency":"USD"}}],
        "payment":{"amount":{"value":0,"currency":"USD"},"date":"2024-02-01"},
        "processNote":[{"number":1,"type":"display","text":"note"}],
        "benefitBalance":[{"category":{"text":"medical"},
            "financial":[{"type":{"text":"benefit"},"allowedMoney":{"value":100,"currency":"USD"},"usedUnsignedInt":2}]}]}"#;
    assert_required(
        "ExplanationOfBenefit",
        eob,
        &[
            (r#""status":"active","#, "ExplanationOfBenefit.status"),
            (r#""type":{"text":"oral"},"#, "ExplanationOfBenefit.type"),
            (r#""use":"claim","#, "ExplanationOfBenefit.use"),
            (r#""patient":{"reference":"Patient/1"},"#, "ExplanationOfBenefit.patient"),
            (r#""created":"2024-01-02","#, "ExplanationOfBenefit.created"),
            (r#""insurer":{"reference":"Organization/2"},"#, "ExplanationOfBenefit.insurer"),
            (r#""provider":{"reference":"Organization/1"},"#, "ExplanationOfBenefit.provider"),
            (r#""outcome":"complete","#, "ExplanationOfBenefit.outcome"),
            (r#""sequence":1,"#, "ExplanationOfBenefit.careTeam[0].sequence"),
            (r#""provider":{"reference":"Practitioner/1"},"#, "ExplanationOfBenefit.careTeam[0].provider"),
            (r#""sequence":2,"#, "ExplanationOfBenefit.supportingInfo[0].sequence"),
            (r#""category":{"text":"info"},"#, "ExplanationOfBenefit.supportingInfo[0].category"),
            (r#""sequence":3,"#, "ExplanationOfBenefit.diagnosis[0].sequence"),
            (r#""diagnosisReference":{"reference":"Condition/1"},"#, "ExplanationOfBenefit.diagnosis[0].diagnosis[x]"),
            (r#""sequence":4,"#, "ExplanationOfBenefit.procedure[0].sequence"),
            (r#""procedureCodeableConcept":{"text":"proc"},"#, "ExplanationOfBenefit.procedure[0].procedure[x]"),
            (
                r#""insurance":[{"focal":true,"coverage":{"reference":"Coverage/1"},"preAuthRef":["A1"]}],"#,
                "ExplanationOfBenefit.insurance",
            ),
            (r#""focal":true,"#, "ExplanationOfBenefit.insurance[0].focal"),
            (r#""coverage":{"reference":"Coverage/1"},"#, "ExplanationOfBenefit.insurance[0].coverage"),
            (r#""sequence":6,"#, "ExplanationOfBenefit.item[0].sequence"),
            (r#""productOrService":{"text":"visit"},"#, "ExplanationOfBenefit.item[0].productOrService"),
            (r#""category":{"text":"submitted"},"#, "ExplanationOfBenefit.item[0].adjudication[0].category"),
            (r#""sequence":7,"#, "ExplanationOfBenefit.item[0].detail[0].sequence"),
            (r#""productOrService":{"text":"part"},"#, "ExplanationOfBenefit.item[0].detail[0].productOrService"),
            (r#""sequence":8,"#, "ExplanationOfBenefit.item[0].detail[0].subDetail[0].sequence"),
            (
                r#""productOrService":{"text":"sub"},"#,
                "ExplanationOfBenefit.item[0].detail[0].subDetail[0].productOrService",
            ),
            (r#""productOrService":{"text":"added"},"#, "ExplanationOfBenefit.addItem[0].productOrService"),
            (
                r#""productOrService":{"text":"added part"},"#,
                "ExplanationOfBenefit.addItem[0].detail[0].productOrService",
            ),
            (
                r#""productOrService":{"text":"added sub"},"#,
                "ExplanationOfBenefit.addItem[0].detail[0].subDetail[0].productOrService",
            ),
            (r#""category":{"text":"total submitted"},"#, "ExplanationOfBenefit.total[0].category"),
            (r#","amount":{"value":10,"currency":"USD"}"#, "ExplanationOfBenefit.total[0].amount"),
            (r#""category":{"text":"medical"},"#, "ExplanationOfBenefit.benefitBalance[0].category"),
            (r#""type":{"text":"benefit"},"#, "ExplanationOfBenefit.benefitBalance[0].financial[0].type"),
        ],
    );
    // The adjudications of details, sub-details, added items and the EOB itself reuse the
    // item adjudication's elements.
    for (fragment, location) in [
        (r#""category":{"text":"benefit"},"#, "ExplanationOfBenefit.item[0].detail[0].adjudication[0].category"),
        (
            r#""category":{"text":"eligible"},"#,
            "ExplanationOfBenefit.item[0].detail[0].subDetail[0].adjudication[0].category",
        ),
        (r#""category":{"text":"total"},"#, "ExplanationOfBenefit.adjudication[0].category"),
    ] {
        assert_error(&eob.replacen(fragment, "", 1), IssueCode::Required, location);
    }
    assert_error(
        &eob.replace(r#"{"focal":true,"#, r#"{"sequence":1,"focal":true,"#),
        IssueCode::Structure,
        "ExplanationOfBenefit.insurance[0].sequence",
    );
    // An EOB's supporting-information reason is a Coding, a Claim's a CodeableConcept.
    assert_error(
        &eob.replace(r#""reason":{"code":"r"}"#, r#""reason":{"coding":[{"code":"r"}]}"#),
        IssueCode::Structure,
        "ExplanationOfBenefit.supportingInfo[0].reason.coding",
    );
    assert_error(
        &eob.replace(r#""usedUnsignedInt":2"#, r#""usedString":"2""#),
        IssueCode::Structure,
        "ExplanationOfBenefit.benefitBalance[0].financial[0].usedString",
    );
    assert_error(&eob.replace("Claim/1", "Coverage/1"), IssueCode::Structure, "ExplanationOfBenefit.claim.reference");
}

#[test]
fn handwritten_location_and_device() {
    let location = r#"{"resourceType":"Location","identifier":[{"system":"https://github.com/synthetichealth/synthea","value":"l1"}],
        "status":"active","operationalStatus":{"code":"O"},"name":"South Wing","alias":["SW"],"mode":"instance",
        "type":[{"text":"ward"}],"address":{"city":"Den Burg"},"position":{"longitude":-83.6945691,"latitude":42.25475478,"altitude":0},
        "managingOrganization":{"reference":"Organization/1"},"partOf":{"reference":"Location/2"},
        "hoursOfOperation":[{"daysOfWeek":["mon","tue"],"allDay":false,"openingTime":"08:00:00","closingTime":"17:30:00"}],
        "availabilityExceptions":"public holidays"}"#;
    assert_required(
        "Location",
        location,
        &[
            (r#""longitude":-83.6945691,"#, "Location.position.longitude"),
            (r#""latitude":42.25475478,"#, "Location.position.latitude"),
        ],
    );
    assert_error(&location.replace("Location/2", "Organization/2"), IssueCode::Structure, "Location.partOf.reference");
    assert_error(
        &location.replace(r#""17:30:00""#, r#""17:30""#),
        IssueCode::Value,
        "Location.hoursOfOperation[0].closingTime",
    );
    assert_error(
        &location.replace(r#""address":{"city":"Den Burg"}"#, r#""address":[{"city":"Den Burg"}]"#),
        IssueCode::Structure,
        "Location.address",
    );

    let device = r#"{"resourceType":"Device","identifier":[{"value":"d1"}],"definition":{"reference":"DeviceDefinition/1"},
        "udiCarrier":[{"deviceIdentifier":"96702913868313","carrierAIDC":"KDAxKTk2NzAy","carrierHRF":"(01)96702913868313","entryType":"barcode"}],
        "status":"active","deviceName":[{"name":"Blood glucose meter","type":"user-friendly-name"}],"modelNumber":"GM-1",
        "type":{"text":"glucose meter"},"specialization":[{"systemType":{"text":"glucose"},"version":"2"}],
        "version":[{"type":{"text":"firmware"},"value":"1.2"}],"property":[{"type":{"text":"range"},"valueQuantity":[{"value":1},{"value":33}]}],
        "patient":{"reference":"Patient/1"},"owner":{"reference":"Organization/1"},"location":{"reference":"Location/1"},
        "safety":[{"text":"MR safe"}],"parent":{"reference":"Device/2"}}"#;
    assert_required(
        "Device",
        device,
        &[
            (r#""name":"Blood glucose meter","#, "Device.deviceName[0].name"),
            (r#","type":"user-friendly-name""#, "Device.deviceName[0].type"),
            (r#""systemType":{"text":"glucose"},"#, "Device.specialization[0].systemType"),
            (r#","value":"1.2""#, "Device.version[0].value"),
            (r#""type":{"text":"range"},"#, "Device.property[0].type"),
        ],
    );
    assert_error(
        &device.replace(r#""valueQuantity":[{"value":1},{"value":33}]"#, r#""valueQuantity":{"value":1}"#),
        IssueCode::Structure,
        "Device.property[0].valueQuantity",
    );
    assert_error(&device.replace("Patient/1", "Practitioner/1"), IssueCode::Structure, "Device.patient.reference");
    assert_error(
        &device.replace(r#""KDAxKTk2NzAy""#, r#""not base64!""#),
        IssueCode::Value,
        "Device.udiCarrier[0].carrierAIDC",
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
