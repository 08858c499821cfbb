//! The search parameter table: for each searchable resource type, every supported parameter
//! with its type, reference targets and compiled FHIRPath expression.
//!
//! `model/r4-search-parameters.txt` is generated from the official R4 SearchParameter
//! definitions in `definitions/` by `tests/search_table_fresh.rs`, which also compiles every
//! expression, so the table holds nothing the FHIRPath subset cannot evaluate. One line per
//! (resource type, parameter):
//! `<Type> <code> <token|string|date|reference> <targets,…|-> <definition id> <expression>`.
//! Lines for `Resource` (`_id`, `_lastUpdated`) apply to every type and are server-managed.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use super::fhirpath::{self, CompiledPath};
use crate::model::Model;

const TABLE: &str = include_str!("../../model/r4-search-parameters.txt");

/// The resource types that can be searched.
pub const SEARCHABLE_TYPES: &[&str] = &[
    "AllergyIntolerance",
    "CarePlan",
    "Claim",
    "Condition",
    "Device",
    "DiagnosticReport",
    "DocumentReference",
    "Encounter",
    "ExplanationOfBenefit",
    "Immunization",
    "Location",
    "MedicationRequest",
    "Observation",
    "Organization",
    "Patient",
    "Practitioner",
    "PractitionerRole",
    "Procedure",
];

/// SearchParameter `type`s this crate supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ParamType {
    Token,
    String,
    Date,
    Reference,
}

impl ParamType {
    pub fn as_str(self) -> &'static str {
        match self {
            ParamType::Token => "token",
            ParamType::String => "string",
            ParamType::Date => "date",
            ParamType::Reference => "reference",
        }
    }

    fn parse(s: &str) -> Option<ParamType> {
        Some(match s {
            "token" => ParamType::Token,
            "string" => ParamType::String,
            "date" => ParamType::Date,
            "reference" => ParamType::Reference,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchParam {
    /// The parameter's name in a query, e.g. `patient`.
    pub code: String,
    pub param_type: ParamType,
    /// Resource types a reference parameter may point to (empty for other types).
    pub targets: Vec<String>,
    /// The id of the official SearchParameter, e.g. `clinical-patient`; its canonical URL is
    /// `http://hl7.org/fhir/SearchParameter/<id>` (for CapabilityStatement `definition`).
    pub definition: String,
    /// The FHIRPath expression restricted to this resource type.
    pub expression: String,
    /// `_id` and `_lastUpdated`: values come from the server's metadata, not the body, so
    /// [`super::extract`] yields none for them.
    pub server_managed: bool,
    pub(crate) paths: Vec<CompiledPath>,
}

impl SearchParam {
    pub fn definition_url(&self) -> String {
        format!("http://hl7.org/fhir/SearchParameter/{}", self.definition)
    }
}

#[derive(Debug, Default)]
pub struct SearchParams {
    by_type: BTreeMap<String, Vec<SearchParam>>,
    server: Vec<SearchParam>,
}

impl SearchParams {
    /// The table compiled into this crate.
    pub fn r4() -> &'static SearchParams {
        static TABLE_LOADED: OnceLock<SearchParams> = OnceLock::new();
        TABLE_LOADED.get_or_init(|| {
            // The table is part of the source and compiled by its generator test; a failure
            // here is a build defect the tests catch, never something input can cause.
            match SearchParams::load(TABLE, Model::r4()) {
                Ok(table) => table,
                Err(message) => panic!("r4-search-parameters.txt: {message}"),
            }
        })
    }

    /// The parameter `code` of `resource_type` (server-managed ones included).
    pub fn get(&self, resource_type: &str, code: &str) -> Option<&SearchParam> {
        let specific = self.by_type.get(resource_type)?;
        self.server.iter().chain(specific).find(|p| p.code == code)
    }

    /// Every parameter of `resource_type`, server-managed first; empty if it is not searchable.
    pub fn for_type<'s>(&'s self, resource_type: &str) -> impl Iterator<Item = &'s SearchParam> {
        let specific = self.by_type.get(resource_type);
        let server = if specific.is_some() { self.server.as_slice() } else { &[] };
        server.iter().chain(specific.into_iter().flatten())
    }

    /// The parameters whose values come from the resource body.
    pub(crate) fn extracted(&self, resource_type: &str) -> &[SearchParam] {
        self.by_type.get(resource_type).map_or(&[], Vec::as_slice)
    }

    pub fn is_searchable(&self, resource_type: &str) -> bool {
        self.by_type.contains_key(resource_type)
    }

    pub(crate) fn load(text: &str, model: &Model) -> Result<SearchParams, String> {
        let mut table = SearchParams::default();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            table.load_line(line, model).map_err(|e| format!("line {}: {e}: {line}", number + 1))?;
        }
        Ok(table)
    }

    fn load_line(&mut self, line: &str, model: &Model) -> Result<(), String> {
        let mut words = line.splitn(6, ' ');
        let mut next = |what: &str| words.next().ok_or_else(|| format!("missing {what}"));
        let resource_type = next("resource type")?.to_string();
        let code = next("code")?.to_string();
        let param_type = ParamType::parse(next("type")?).ok_or("unsupported parameter type")?;
        let targets: Vec<String> = match next("targets")? {
            "-" => Vec::new(),
            list => list.split(',').map(str::to_string).collect(),
        };
        let definition = next("definition")?.to_string();
        let expression = next("expression")?.to_string();
        if (param_type == ParamType::Reference) == targets.is_empty() {
            return Err("reference parameters, and only they, have targets".into());
        }
        let server_managed = resource_type == "Resource";
        let paths = if server_managed {
            if !matches!(code.as_str(), "_id" | "_lastUpdated") {
                return Err("unknown server-managed parameter".into());
            }
            Vec::new()
        } else {
            if !SEARCHABLE_TYPES.contains(&resource_type.as_str()) {
                return Err("not a searchable resource type".into());
            }
            let paths = fhirpath::compile(&expression, model)?;
            if paths.iter().any(|p| p.root != resource_type) {
                return Err("expression starts from another type".into());
            }
            paths
        };
        let param = SearchParam { code, param_type, targets, definition, expression, server_managed, paths };
        let list = if server_managed { &mut self.server } else { self.by_type.entry(resource_type).or_default() };
        if list.iter().any(|p| p.code == param.code) {
            return Err("duplicate parameter".into());
        }
        list.push(param);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_loads_and_covers_the_issue() {
        let table = SearchParams::r4();
        for resource_type in SEARCHABLE_TYPES {
            for code in ["_id", "_lastUpdated"] {
                assert!(table.get(resource_type, code).is_some_and(|p| p.server_managed), "{resource_type} {code}");
            }
        }
        let required: &[(&str, &[&str])] = &[
            ("Patient", &["identifier", "name", "family", "given", "birthdate", "gender"]),
            ("Observation", &["patient", "subject", "identifier", "code", "date", "category", "status", "encounter"]),
            ("Condition", &["patient", "subject", "identifier", "code", "category", "onset-date", "encounter"]),
            ("Encounter", &["patient", "subject", "identifier", "date", "status", "type"]),
            ("MedicationRequest", &["patient", "subject", "identifier", "code", "category", "status", "authoredon"]),
            ("AllergyIntolerance", &["patient", "identifier", "code", "date", "category"]),
            ("Immunization", &["patient", "identifier", "date", "status", "vaccine-code"]),
            ("Procedure", &["patient", "subject", "identifier", "code", "date", "category", "status"]),
            ("DiagnosticReport", &["patient", "subject", "identifier", "code", "date", "category", "status"]),
            ("DocumentReference", &["patient", "subject", "identifier", "date", "category", "status", "type"]),
            ("CarePlan", &["patient", "subject", "identifier", "date", "category", "status"]),
            ("Practitioner", &["identifier", "name", "family", "given"]),
            ("PractitionerRole", &["identifier", "practitioner", "organization"]),
            ("Organization", &["identifier", "name"]),
            ("Claim", &["patient", "status", "use", "created", "identifier", "encounter", "provider", "insurer"]),
            ("ExplanationOfBenefit", &["patient", "status", "created", "identifier", "claim", "encounter", "provider"]),
            (
                "Location",
                &[
                    "identifier",
                    "name",
                    "address",
                    "address-city",
                    "address-state",
                    "address-postalcode",
                    "address-country",
                    "address-use",
                    "type",
                    "status",
                    "organization",
                    "partof",
                ],
            ),
            ("Device", &["identifier", "patient", "type", "status", "manufacturer", "model", "udi-di", "udi-carrier"]),
        ];
        for (resource_type, codes) in required {
            for code in *codes {
                assert!(table.get(resource_type, code).is_some(), "{resource_type} {code}");
            }
        }
        let patient = table.get("Observation", "patient").unwrap();
        assert_eq!(patient.param_type, ParamType::Reference);
        assert_eq!(patient.targets, ["Patient", "Group"]);
        assert_eq!(patient.expression, "Observation.subject.where(resolve() is Patient)");
        assert_eq!(patient.definition_url(), "http://hl7.org/fhir/SearchParameter/clinical-patient");
        let claim_patient = table.get("Claim", "patient").unwrap();
        assert_eq!(
            (claim_patient.param_type, claim_patient.expression.as_str()),
            (ParamType::Reference, "Claim.patient")
        );
        assert_eq!(claim_patient.targets, ["Patient"]);
        // Parameters of a type other than token, string, date or reference are left out.
        assert!(table.get("Location", "near").is_none());
        assert!(table.get("Device", "url").is_none());
        assert!(table.get("Coverage", "beneficiary").is_none());
        assert_eq!(table.for_type("Coverage").count(), 0);
    }

    #[test]
    fn malformed_tables_are_refused() {
        let model = Model::r4();
        for bad in [
            "Observation code token - clinical-code Observation.nope",
            "Observation code token Patient clinical-code Observation.code",
            "Observation subject reference - x Observation.subject",
            "Observation code quantity - x Observation.code",
            "Coverage beneficiary reference Patient x Coverage.beneficiary",
            "Observation code token - x Patient.gender",
            "Resource _text string - x Resource.text",
            "Observation code token",
        ] {
            assert!(SearchParams::load(bad, model).is_err(), "{bad}");
        }
    }
}
