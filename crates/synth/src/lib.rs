//! Seeded generator of synthetic FHIR R4 patients, for `medledger dev` demo data, tests and
//! benchmarks.
//!
//! Each [`SyntheticPatient`] is a Patient plus the Encounters, laboratory and vital-sign
//! Observations, Conditions, MedicationRequests, AllergyIntolerances and Immunizations that
//! refer to it, as compact FHIR R4 JSON tagged with medledger's consent category.
//!
//! Architecture invariants:
//! - **Deterministic:** the output is a function of the seed alone: the same seed gives
//!   byte-identical JSON on every platform and run. Randomness is a SplitMix64 written out in
//!   this crate, dates count back from a fixed base date ([`BASE_DATE`]) instead of the clock,
//!   and the JSON is written by this crate in a fixed key order, so neither a dependency's
//!   version nor a feature another crate enables can change it.
//! - **Synthetic only:** names, streets and towns come from the invented lists in
//!   [`vocabulary`]; record numbers use the [`vocabulary::MRN_SYSTEM`] system, phone numbers the
//!   fictional 555-01NN range, e-mail the reserved `example.org`; every resource carries the
//!   HL7 `HTEST` ("test health data") security label. Clinical codes are real.
//!
//! ```
//! use medledger_synth::{Generator, category_of};
//!
//! let patient = Generator::new(42).patient();
//! assert_eq!(patient.resources[0].reference(), format!("Patient/{}", patient.patient_id));
//! for resource in &patient.resources {
//!     let json: serde_json::Value = serde_json::from_slice(&resource.json).unwrap();
//!     assert_eq!(category_of(resource.resource_type, &json), Some(resource.category));
//! }
//! assert_eq!(patient, Generator::new(42).patient());
//! ```
//!
//! API boundary: [`Generator`], [`SyntheticPatient`], [`Resource`], and the category helpers
//! [`CATEGORIES`] and [`category_of`], which also classify records that did not come from the
//! generator. The crate has no I/O and does not know about the ledger.

mod generator;
mod json;
mod rng;
mod time;
pub mod vocabulary;

pub use generator::Generator;

/// Every generated date and time lies before this day (UTC).
pub const BASE_DATE: &str = "2026-01-01";

/// medledger's consent categories, one per kind of clinical record.
pub const CATEGORIES: [&str; 8] =
    ["demographics", "encounters", "labs", "vitals", "conditions", "medications", "allergies", "immunizations"];

/// The standard system of `Observation.category` codes.
pub const OBSERVATION_CATEGORY_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/observation-category";

/// One generated FHIR resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    /// FHIR resource type, e.g. `Observation`.
    pub resource_type: &'static str,
    /// FHIR logical id, unique over the generator's lifetime.
    pub id: String,
    /// medledger consent category, one of [`CATEGORIES`]; always equal to what
    /// [`category_of`] derives from `json`.
    pub category: &'static str,
    /// Compact JSON of the FHIR R4 resource.
    pub json: Vec<u8>,
}

impl Resource {
    /// The FHIR relative reference to this resource: `<type>/<id>`.
    pub fn reference(&self) -> String {
        format!("{}/{}", self.resource_type, self.id)
    }
}

/// A patient and everything recorded about them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntheticPatient {
    /// Logical id of the Patient resource.
    pub patient_id: String,
    /// The Patient first; every other resource comes after each resource it refers to, so the
    /// list can be written in order, and every reference resolves inside the list.
    pub resources: Vec<Resource>,
}

/// medledger's consent category of a FHIR resource, or `None` if it has none.
///
/// Patient, Encounter, Condition, MedicationRequest, AllergyIntolerance and Immunization map by
/// type. An Observation is `labs` or `vitals` by its `category[].coding[]` code `laboratory` or
/// `vital-signs`; codings from other systems are ignored (the same code can mean something
/// else there), and an Observation that claims both is `None`, so a caller refuses it rather
/// than file it under a consent that does not cover all of it. A `resourceType` in `json` that
/// disagrees with `resource_type` also gives `None`.
pub fn category_of(resource_type: &str, json: &serde_json::Value) -> Option<&'static str> {
    if let Some(declared) = json.get("resourceType")
        && declared.as_str() != Some(resource_type)
    {
        return None;
    }
    match resource_type {
        "Patient" => Some("demographics"),
        "Encounter" => Some("encounters"),
        "Observation" => observation_category(json),
        "Condition" => Some("conditions"),
        "MedicationRequest" => Some("medications"),
        "AllergyIntolerance" => Some("allergies"),
        "Immunization" => Some("immunizations"),
        _ => None,
    }
}

fn observation_category(json: &serde_json::Value) -> Option<&'static str> {
    let codes = json
        .get("category")
        .and_then(serde_json::Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|concept| concept.get("coding").and_then(serde_json::Value::as_array))
        .flatten()
        .filter(|coding| match coding.get("system") {
            None => true,
            Some(system) => system.as_str() == Some(OBSERVATION_CATEGORY_SYSTEM),
        })
        .filter_map(|coding| coding.get("code").and_then(serde_json::Value::as_str));
    let (mut laboratory, mut vital_signs) = (false, false);
    for code in codes {
        laboratory |= code == "laboratory";
        vital_signs |= code == "vital-signs";
    }
    match (laboratory, vital_signs) {
        (true, false) => Some("labs"),
        (false, true) => Some("vitals"),
        _ => None,
    }
}
