//! The FHIR resources the tests write, as exact text: the server keeps a record's bytes, and
//! tests look for them (a decimal's lexeme, an element's place) in what it answers.

use std::fmt::Display;

use serde_json::Value;

/// The FHIR JSON media type.
pub const FHIR: &str = "application/fhir+json";

/// A Patient resource naming the on-chain patient identity `identity` (its hex).
pub fn patient_resource(identity: impl Display) -> String {
    format!(r#"{{"resourceType":"Patient","identifier":[{{"system":"urn:medledger:identity","value":"{identity}"}}]}}"#)
}

/// A final laboratory Observation: by default LOINC 2345-7 "Glucose", 5.4 mmol/L. Its
/// elements come in a fixed order: resourceType, id, status, category, code, subject,
/// encounter, effectiveDateTime, valueQuantity.
#[derive(Clone, Debug)]
pub struct Lab {
    subject: String,
    id: Option<String>,
    loinc: String,
    text: bool,
    encounter: Option<String>,
    effective: Option<String>,
    value: String,
    ucum: bool,
}

impl Lab {
    /// A lab of `Patient/<patient_id>`.
    pub fn of(patient_id: &str) -> Self {
        Self::about(&format!("Patient/{patient_id}"))
    }

    /// A lab whose subject is the reference `subject` (e.g. a Bundle's `urn:uuid:…`).
    pub fn about(subject: &str) -> Self {
        Self {
            subject: subject.to_owned(),
            id: None,
            loinc: "2345-7".into(),
            text: true,
            encounter: None,
            effective: None,
            value: "5.4".into(),
            ucum: false,
        }
    }

    /// With the server id `id` (as an update sends it).
    pub fn id(mut self, id: &str) -> Self {
        self.id = Some(id.to_owned());
        self
    }

    /// Coded as LOINC `code`.
    pub fn loinc(mut self, code: &str) -> Self {
        self.loinc = code.to_owned();
        self
    }

    /// Without the code's text ("Glucose").
    pub fn untitled(mut self) -> Self {
        self.text = false;
        self
    }

    /// Part of the encounter `reference`.
    pub fn encounter(mut self, reference: &str) -> Self {
        self.encounter = Some(reference.to_owned());
        self
    }

    /// Taken at `date_time` (a FHIR dateTime).
    pub fn effective(mut self, date_time: &str) -> Self {
        self.effective = Some(date_time.to_owned());
        self
    }

    /// The value's decimal, written exactly as given (`"5.40"` stays `5.40`).
    pub fn value(mut self, decimal: &str) -> Self {
        self.value = decimal.to_owned();
        self
    }

    /// With the unit coded in UCUM.
    pub fn ucum(mut self) -> Self {
        self.ucum = true;
        self
    }

    /// The resource as text.
    pub fn json(&self) -> String {
        let id = self.id.as_ref().map(|id| format!(r#""id":"{id}","#)).unwrap_or_default();
        let text = if self.text { r#","text":"Glucose""# } else { "" };
        let encounter = self.encounter.as_ref().map(|e| format!(r#""encounter":{{"reference":"{e}"}},"#));
        let effective = self.effective.as_ref().map(|d| format!(r#""effectiveDateTime":"{d}","#));
        let ucum = if self.ucum { r#","system":"http://unitsofmeasure.org","code":"mmol/L""# } else { "" };
        format!(
            r#"{{"resourceType":"Observation",{id}"status":"final","category":[{{"coding":[{{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"laboratory"}}]}}],"code":{{"coding":[{{"system":"http://loinc.org","code":"{loinc}"}}]{text}}},"subject":{{"reference":"{subject}"}},{encounter}{effective}"valueQuantity":{{"value":{value},"unit":"mmol/L"{ucum}}}}}"#,
            loinc = self.loinc,
            subject = self.subject,
            encounter = encounter.unwrap_or_default(),
            effective = effective.unwrap_or_default(),
            value = self.value,
        )
    }

    /// The resource as JSON (a decimal's lexeme is not kept: use [`Lab::json`] for that).
    pub fn resource(&self) -> Value {
        serde_json::from_str(&self.json()).unwrap()
    }
}
