use crate::json::{Decimal, Json, arr, obj};
use crate::rng::{GAMMA, SplitMix64, mix};
use crate::time::{BASE_EPOCH_SECONDS, SECONDS_PER_DAY, SECONDS_PER_HOUR, SECONDS_PER_MINUTE, date, date_time};
use crate::vocabulary::{
    ACT_CODE, ALLERGIES, ALLERGY_CLINICAL, ALLERGY_VERIFICATION, ANAPHYLAXIS, CONDITION_CATEGORY, CONDITION_CLINICAL,
    CONDITION_VERIFICATION, CONDITIONS, CVX, ConditionKind, EMAIL_DOMAIN, ENCOUNTER_CLASSES, Effect, EncounterClass,
    FAMILY_NAMES, GIVEN_NAMES_FEMALE, GIVEN_NAMES_MALE, IDENTIFIER_TYPE, INTERPRETATION, LOINC,
    MEDICATION_REQUEST_CATEGORY, MRN_PREFIX, MRN_SYSTEM, OBSERVATION_CATEGORY, PHONE_PREFIX, POSTAL_CODE_PREFIX,
    RXNORM, SNOMED, STATE, STREETS, TEST_DATA_CODE, TEST_DATA_SYSTEM, TOWNS, UCUM, VACCINES,
};
use crate::{Resource, SyntheticPatient};

/// Patients are adults, so every measurement range below is an adult one.
const AGE_YEARS_MIN: i64 = 18;
const AGE_YEARS_MAX: i64 = 90;
/// Encounters fall in the three years before the base date.
const HISTORY_DAYS: i64 = 3 * 365;
/// Long enough that the longest inpatient stay still ends before the base date.
const HISTORY_GAP_DAYS: i64 = 8;
const ENCOUNTERS_MAX: i64 = 3;
const IMMUNIZATIONS_MAX: usize = 4;
/// Relative weights of having 0, 1, 2 or 3 conditions.
const CONDITION_COUNT_WEIGHTS: [u64; 4] = [35, 30, 20, 15];
/// Relative weights of having 0, 1 or 2 allergies.
const ALLERGY_COUNT_WEIGHTS: [u64; 3] = [55, 30, 15];
/// Chance that a condition with a usual medication has it prescribed.
const PRESCRIBED_PERCENT: u64 = 85;

/// Seeded generator of synthetic patients; see the crate docs for the guarantees.
#[derive(Debug, Clone)]
pub struct Generator {
    seed: u64,
    rng: SplitMix64,
    ids_issued: u64,
    patients_issued: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gender {
    Female,
    Male,
    Other,
}

impl Gender {
    fn code(self) -> &'static str {
        match self {
            Gender::Female => "female",
            Gender::Male => "male",
            Gender::Other => "other",
        }
    }
}

/// What the clinical resources need to know about the patient.
struct Person {
    reference: String,
    gender: Gender,
    age_years: i64,
    weight_hectograms: i64,
    effects: Vec<Effect>,
}

impl Person {
    fn has(&self, effect: Effect) -> bool {
        self.effects.contains(&effect)
    }

    /// Lab reference ranges that differ by sex use the female range only for `female`.
    fn is_female(&self) -> bool {
        self.gender == Gender::Female
    }
}

struct Visit {
    reference: String,
    class: &'static EncounterClass,
    start_epoch_seconds: i64,
    end_epoch_seconds: i64,
}

#[derive(Debug, Clone, Copy)]
enum Lab {
    Glucose,
    Hemoglobin,
    Creatinine,
    HemoglobinA1c,
}

const LABS: [Lab; 4] = [Lab::Glucose, Lab::Hemoglobin, Lab::Creatinine, Lab::HemoglobinA1c];

/// A measured quantity with its UCUM unit.
struct Quantity {
    value: Decimal,
    unit: &'static str,
    ucum: &'static str,
}

impl Quantity {
    fn json(&self) -> Json {
        obj! { "value": self.value, "unit": self.unit, "system": UCUM, "code": self.ucum }
    }

    fn with_units(&self, units: i64) -> Quantity {
        Quantity { value: Decimal::new(units, self.value.scale), unit: self.unit, ucum: self.ucum }
    }
}

impl Generator {
    /// A generator whose whole output is fixed by `seed`.
    pub fn new(seed: u64) -> Self {
        Self { seed, rng: SplitMix64::new(seed), ids_issued: 0, patients_issued: 0 }
    }

    /// The seed this generator was created with; it replays the whole output.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The next `count` patients; the same as calling [`Generator::patient`] `count` times.
    pub fn patients(&mut self, count: usize) -> Vec<SyntheticPatient> {
        (0..count).map(|_| self.patient()).collect()
    }

    /// The next patient: the Patient resource first, then every resource that refers to it,
    /// each after the resources it refers to.
    pub fn patient(&mut self) -> SyntheticPatient {
        let ordinal = self.patients_issued;
        self.patients_issued += 1;

        let age_years = self.rng.between(AGE_YEARS_MIN, AGE_YEARS_MAX);
        let eligible: Vec<&ConditionKind> = CONDITIONS.iter().filter(|kind| age_years >= kind.age_years_min).collect();
        let condition_count = self.rng.weighted(&CONDITION_COUNT_WEIGHTS);
        let conditions: Vec<&ConditionKind> =
            self.rng.distinct(eligible.len(), condition_count).into_iter().map(|idx| eligible[idx]).collect();

        let mut resources = Vec::new();
        let (person, patient) = self.demographics(ordinal, age_years, &conditions);
        let patient_id = patient.id.clone();
        resources.push(patient);

        let visits = self.encounters(&person, &mut resources);

        let mut diagnoses = Vec::with_capacity(conditions.len());
        for kind in &conditions {
            let visit = self.rng.pick(&visits);
            let condition = self.condition(&person, visit, kind);
            diagnoses.push((kind, visit, condition.reference()));
            resources.push(condition);
        }
        for (kind, visit, condition_reference) in diagnoses {
            if kind.medication.is_some() && self.rng.percent(PRESCRIBED_PERCENT) {
                let request = self.medication_request(&person, visit, kind, &condition_reference);
                resources.push(request);
            }
        }

        for visit in &visits {
            self.vitals(&person, visit, &mut resources);
            self.labs(&person, visit, &mut resources);
        }

        let allergy_count = self.rng.weighted(&ALLERGY_COUNT_WEIGHTS);
        for idx in self.rng.distinct(ALLERGIES.len(), allergy_count) {
            let visit = self.rng.pick(&visits);
            let allergy = self.allergy(&person, visit, idx);
            resources.push(allergy);
        }

        let vaccines: Vec<usize> = (0..VACCINES.len())
            .filter(|&idx| (VACCINES[idx].age_years_min..=VACCINES[idx].age_years_max).contains(&person.age_years))
            .collect();
        let immunization_count = self.rng.between(1, IMMUNIZATIONS_MAX as i64) as usize;
        for pick in self.rng.distinct(vaccines.len(), immunization_count) {
            let visit = self.rng.pick(&visits);
            let immunization = self.immunization(&person, visit, vaccines[pick]);
            resources.push(immunization);
        }

        SyntheticPatient { patient_id, resources }
    }

    /// `<prefix>-<seed as 16 hex digits>-<counter>`: unique over the generator's lifetime and
    /// across seeds, and a valid FHIR id (`[A-Za-z0-9\-\.]{1,64}`).
    fn next_id(&mut self, prefix: &str) -> String {
        let id = format!("{prefix}-{:016x}-{}", self.seed, self.ids_issued);
        self.ids_issued += 1;
        id
    }

    /// A moment inside the visit, on a whole minute.
    fn moment_in(&mut self, visit: &Visit) -> i64 {
        let duration_minutes = (visit.end_epoch_seconds - visit.start_epoch_seconds) / SECONDS_PER_MINUTE;
        visit.start_epoch_seconds + self.rng.between(0, duration_minutes) * SECONDS_PER_MINUTE
    }

    fn demographics(&mut self, ordinal: u64, age_years: i64, conditions: &[&ConditionKind]) -> (Person, Resource) {
        let gender = match self.rng.weighted(&[49, 49, 2]) {
            0 => Gender::Female,
            1 => Gender::Male,
            _ => Gender::Other,
        };
        let given_names = match gender {
            Gender::Female => GIVEN_NAMES_FEMALE,
            Gender::Male => GIVEN_NAMES_MALE,
            Gender::Other => *self.rng.pick(&[GIVEN_NAMES_FEMALE, GIVEN_NAMES_MALE]),
        };
        let given_count = if self.rng.percent(40) { 2 } else { 1 };
        let given: Vec<&'static str> =
            self.rng.distinct(given_names.len(), given_count).into_iter().map(|idx| given_names[idx]).collect();
        let family = *self.rng.pick(FAMILY_NAMES);

        // The patient is `age_years` old on the base date.
        let base_day = BASE_EPOCH_SECONDS / SECONDS_PER_DAY;
        let birth_day = base_day - age_years * 365 - age_years / 4 - self.rng.between(1, 364);
        let birth_epoch_seconds = birth_day * SECONDS_PER_DAY;

        // A bijection of the ordinal keeps record numbers unique within a generator.
        let mrn = format!("{MRN_PREFIX}{:016X}", mix(self.seed.wrapping_add(ordinal.wrapping_mul(GAMMA))));
        let phone = format!("{PHONE_PREFIX}{:02}", self.rng.below(100));
        let email = format!("{}.{}{}@{EMAIL_DOMAIN}", given[0], family, self.rng.between(1, 99)).to_lowercase();
        let line = format!("{} {}", self.rng.between(1, 999), self.rng.pick(STREETS));
        let city = *self.rng.pick(TOWNS);
        let postal_code = format!("{POSTAL_CODE_PREFIX}{:04}", self.rng.below(10_000));
        let marital = *self.rng.pick(&[("M", "Married"), ("S", "Never Married"), ("D", "Divorced"), ("W", "Widowed")]);
        let weight_hectograms = match gender {
            Gender::Female => self.rng.between(480, 950),
            Gender::Male => self.rng.between(580, 1150),
            Gender::Other => self.rng.between(500, 1050),
        };

        let given_json: Vec<Json> = given.iter().copied().map(Json::from).collect();
        let id = self.next_id("pat");
        let json = obj! {
            "resourceType": "Patient",
            "id": &id,
            "meta": meta(None),
            "identifier": arr![obj! {
                "use": "usual",
                "type": codeable(IDENTIFIER_TYPE, "MR", "Medical record number"),
                "system": MRN_SYSTEM,
                "value": mrn,
            }],
            "active": true,
            "name": arr![obj! { "use": "official", "family": family, "given": given_json }],
            "telecom": arr![
                obj! { "system": "phone", "value": phone, "use": "mobile" },
                obj! { "system": "email", "value": email, "use": "home" },
            ],
            "gender": gender.code(),
            "birthDate": date(birth_epoch_seconds),
            "address": arr![obj! {
                "use": "home",
                "type": "both",
                "line": arr![line],
                "city": city,
                "state": STATE,
                "postalCode": postal_code,
            }],
            "maritalStatus": codeable("http://terminology.hl7.org/CodeSystem/v3-MaritalStatus", marital.0, marital.1),
        };
        let resource = resource("Patient", id, "demographics", &json);
        let person = Person {
            reference: resource.reference(),
            gender,
            age_years,
            weight_hectograms,
            effects: conditions.iter().map(|kind| kind.effect).collect(),
        };
        (person, resource)
    }

    fn encounters(&mut self, person: &Person, resources: &mut Vec<Resource>) -> Vec<Visit> {
        let count = self.rng.between(1, ENCOUNTERS_MAX);
        let weights: Vec<u64> = ENCOUNTER_CLASSES.iter().map(|class| class.weight).collect();
        let mut planned: Vec<(i64, i64, &'static EncounterClass)> = (0..count)
            .map(|_| {
                let class = &ENCOUNTER_CLASSES[self.rng.weighted(&weights)];
                let day = BASE_EPOCH_SECONDS / SECONDS_PER_DAY - self.rng.between(HISTORY_GAP_DAYS, HISTORY_DAYS);
                // Clinics book quarter-hour slots in office hours; hospitals admit at any time.
                let seconds_of_day = if class.code == "AMB" {
                    self.rng.between(8 * 4, 16 * 4) * 15 * SECONDS_PER_MINUTE
                } else {
                    self.rng.between(0, 24 * 60 - 1) * SECONDS_PER_MINUTE
                };
                let start = day * SECONDS_PER_DAY + seconds_of_day;
                let duration_minutes = self.rng.between(class.duration_minutes_min, class.duration_minutes_max);
                (start, start + duration_minutes * SECONDS_PER_MINUTE, class)
            })
            .collect();
        planned.sort_by_key(|(start, _, _)| *start);

        planned
            .into_iter()
            .map(|(start, end, class)| {
                let (type_code, type_display) = *self.rng.pick(class.types);
                let id = self.next_id("enc");
                let json = obj! {
                    "resourceType": "Encounter",
                    "id": &id,
                    "meta": meta(None),
                    "status": "finished",
                    "class": coding(ACT_CODE, class.code, class.display),
                    "type": arr![codeable(SNOMED, type_code, type_display)],
                    "subject": reference(&person.reference),
                    "period": obj! { "start": date_time(start), "end": date_time(end) },
                };
                let resource = resource("Encounter", id, "encounters", &json);
                let visit = Visit {
                    reference: resource.reference(),
                    class,
                    start_epoch_seconds: start,
                    end_epoch_seconds: end,
                };
                resources.push(resource);
                visit
            })
            .collect()
    }

    fn condition(&mut self, person: &Person, visit: &Visit, kind: &ConditionKind) -> Resource {
        // Onset up to ten years before the visit, but not before the age the condition appears.
        let years_since_possible = person.age_years - kind.age_years_min.max(AGE_YEARS_MIN);
        let onset_days_back = self.rng.between(0, (years_since_possible * 365).min(10 * 365));
        let onset = visit.start_epoch_seconds - onset_days_back * SECONDS_PER_DAY;
        let id = self.next_id("cond");
        let json = obj! {
            "resourceType": "Condition",
            "id": &id,
            "meta": meta(None),
            "clinicalStatus": codeable_no_text(CONDITION_CLINICAL, "active", "Active"),
            "verificationStatus": codeable_no_text(CONDITION_VERIFICATION, "confirmed", "Confirmed"),
            "category": arr![codeable_no_text(CONDITION_CATEGORY, "problem-list-item", "Problem List Item")],
            "code": codeable(SNOMED, kind.snomed, kind.display),
            "subject": reference(&person.reference),
            "encounter": reference(&visit.reference),
            "onsetDateTime": date(onset),
            "recordedDate": date_time(self.moment_in(visit)),
        };
        resource("Condition", id, "conditions", &json)
    }

    fn medication_request(
        &mut self,
        person: &Person,
        visit: &Visit,
        kind: &ConditionKind,
        condition_reference: &str,
    ) -> Resource {
        let medication = kind.medication.as_ref().expect("only called for conditions with a medication");
        let (category_code, category_display) =
            if visit.class.code == "IMP" { ("discharge", "Discharge") } else { ("outpatient", "Outpatient") };
        let mut repeat = obj! { "frequency": medication.frequency, "period": medication.period };
        if let Some(period_max) = medication.period_max {
            repeat.push("periodMax", period_max);
        }
        repeat.push("periodUnit", medication.period_unit);
        let id = self.next_id("medrx");
        let json = obj! {
            "resourceType": "MedicationRequest",
            "id": &id,
            "meta": meta(None),
            "status": "active",
            "intent": "order",
            "category": arr![codeable_no_text(MEDICATION_REQUEST_CATEGORY, category_code, category_display)],
            "medicationCodeableConcept": codeable(RXNORM, medication.rxnorm, medication.display),
            "subject": reference(&person.reference),
            "encounter": reference(&visit.reference),
            "authoredOn": date_time(self.moment_in(visit)),
            "reasonReference": arr![obj! { "reference": condition_reference.to_owned(), "display": kind.display }],
            "dosageInstruction": arr![obj! {
                "sequence": 1i64,
                "text": medication.instruction,
                "timing": obj! { "repeat": repeat },
                "asNeededBoolean": medication.as_needed,
            }],
        };
        resource("MedicationRequest", id, "medications", &json)
    }

    fn vitals(&mut self, person: &Person, visit: &Visit, resources: &mut Vec<Resource>) {
        let measured = visit.start_epoch_seconds + self.rng.between(5, 15) * SECONDS_PER_MINUTE;
        let emergency = visit.class.code == "EMER";

        let heart_rate = if emergency { self.rng.between(72, 118) } else { self.rng.between(58, 96) };
        let heart_rate = Quantity { value: Decimal::new(heart_rate, 0), unit: "beats/minute", ucum: "/min" };
        let (systolic, diastolic) = if person.has(Effect::HighBloodPressure) {
            (self.rng.between(132, 165), self.rng.between(82, 100))
        } else {
            (self.rng.between(104, 129), self.rng.between(64, 83))
        };
        let pressure = Quantity { value: Decimal::new(0, 0), unit: "mmHg", ucum: "mm[Hg]" };
        let weight = person.weight_hectograms + self.rng.between(-15, 15);
        let weight = Quantity { value: Decimal::new(weight, 1), unit: "kg", ucum: "kg" };
        let temperature =
            if emergency && self.rng.percent(25) { self.rng.between(378, 394) } else { self.rng.between(362, 373) };
        let temperature = Quantity { value: Decimal::new(temperature, 1), unit: "Cel", ucum: "Cel" };

        let mut observation = |profile, code, display, value: Option<&Quantity>, components: Vec<Json>| {
            let id = self.next_id("obs");
            let mut json = obj! {
                "resourceType": "Observation",
                "id": &id,
                "meta": meta(Some(profile)),
                "status": "final",
                "category": arr![observation_category("vital-signs", "Vital Signs")],
                "code": codeable(LOINC, code, display),
                "subject": reference(&person.reference),
                "encounter": reference(&visit.reference),
                "effectiveDateTime": date_time(measured),
            };
            if let Some(value) = value {
                json.push("valueQuantity", value.json());
            }
            if !components.is_empty() {
                json.push("component", components);
            }
            resources.push(resource("Observation", id, "vitals", &json));
        };

        observation(
            "http://hl7.org/fhir/StructureDefinition/heartrate",
            "8867-4",
            "Heart rate",
            Some(&heart_rate),
            vec![],
        );
        let component = |code, display, units| {
            obj! {
                "code": codeable(LOINC, code, display),
                "valueQuantity": pressure.with_units(units).json(),
            }
        };
        observation(
            "http://hl7.org/fhir/StructureDefinition/bp",
            "85354-9",
            "Blood pressure panel with all children optional",
            None,
            vec![
                component("8480-6", "Systolic blood pressure", systolic),
                component("8462-4", "Diastolic blood pressure", diastolic),
            ],
        );
        observation(
            "http://hl7.org/fhir/StructureDefinition/bodyweight",
            "29463-7",
            "Body weight",
            Some(&weight),
            vec![],
        );
        observation(
            "http://hl7.org/fhir/StructureDefinition/bodytemp",
            "8310-5",
            "Body temperature",
            Some(&temperature),
            vec![],
        );
    }

    fn labs(&mut self, person: &Person, visit: &Visit, resources: &mut Vec<Resource>) {
        let diabetic = person.has(Effect::HighGlucose);
        let mut ordered: Vec<Lab> = LABS
            .into_iter()
            .filter(|lab| (diabetic && matches!(lab, Lab::Glucose | Lab::HemoglobinA1c)) || self.rng.percent(50))
            .collect();
        if ordered.is_empty() {
            ordered.push(Lab::Glucose);
        }
        let collected = self.moment_in(visit);
        let issued = collected + self.rng.between(1, 6) * SECONDS_PER_HOUR;
        for lab in ordered {
            let (code, display, quantity, low, high) = self.lab_result(person, lab);
            let interpretation = if quantity.value.units < low {
                ("L", "Low")
            } else if quantity.value.units > high {
                ("H", "High")
            } else {
                ("N", "Normal")
            };
            let id = self.next_id("obs");
            let json = obj! {
                "resourceType": "Observation",
                "id": &id,
                "meta": meta(None),
                "status": "final",
                "category": arr![observation_category("laboratory", "Laboratory")],
                "code": codeable(LOINC, code, display),
                "subject": reference(&person.reference),
                "encounter": reference(&visit.reference),
                "effectiveDateTime": date_time(collected),
                "issued": date_time(issued),
                "valueQuantity": quantity.json(),
                "interpretation": arr![codeable_no_text(INTERPRETATION, interpretation.0, interpretation.1)],
                "referenceRange": arr![obj! {
                    "low": quantity.with_units(low).json(),
                    "high": quantity.with_units(high).json(),
                }],
            };
            resources.push(resource("Observation", id, "labs", &json));
        }
    }

    /// LOINC code and display, the value, and the reference range in the value's units.
    fn lab_result(&mut self, person: &Person, lab: Lab) -> (&'static str, &'static str, Quantity, i64, i64) {
        let female = person.is_female();
        match lab {
            Lab::Glucose => {
                let units = if person.has(Effect::HighGlucose) {
                    self.rng.between(110, 240)
                } else {
                    self.rng.between(72, 104)
                };
                let quantity = Quantity { value: Decimal::new(units, 0), unit: "mg/dL", ucum: "mg/dL" };
                ("2345-7", "Glucose [Mass/volume] in Serum or Plasma", quantity, 70, 99)
            }
            Lab::Hemoglobin => {
                let (low, high) = if female { (120, 155) } else { (135, 175) };
                let units = match (person.has(Effect::LowHemoglobin), female) {
                    (true, true) => self.rng.between(85, 115),
                    (true, false) => self.rng.between(95, 128),
                    (false, _) => self.rng.between(low - 2, high + 1),
                };
                let quantity = Quantity { value: Decimal::new(units, 1), unit: "g/dL", ucum: "g/dL" };
                ("718-7", "Hemoglobin [Mass/volume] in Blood", quantity, low, high)
            }
            Lab::Creatinine => {
                let (low, high) = if female { (59, 104) } else { (74, 135) };
                let units = self.rng.between(low - 6, high + 4);
                let quantity = Quantity { value: Decimal::new(units, 2), unit: "mg/dL", ucum: "mg/dL" };
                ("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", quantity, low, high)
            }
            Lab::HemoglobinA1c => {
                let units =
                    if person.has(Effect::HighGlucose) { self.rng.between(64, 98) } else { self.rng.between(45, 58) };
                let quantity = Quantity { value: Decimal::new(units, 1), unit: "%", ucum: "%" };
                ("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", quantity, 40, 56)
            }
        }
    }

    fn allergy(&mut self, person: &Person, visit: &Visit, idx: usize) -> Resource {
        let kind = &ALLERGIES[idx];
        let (reaction_code, reaction_display) = *self.rng.pick(kind.reactions);
        let severe = reaction_code == ANAPHYLAXIS.0;
        let severity = if severe { "severe" } else { *self.rng.pick(&["mild", "moderate"]) };
        let id = self.next_id("allergy");
        let json = obj! {
            "resourceType": "AllergyIntolerance",
            "id": &id,
            "meta": meta(None),
            "clinicalStatus": codeable_no_text(ALLERGY_CLINICAL, "active", "Active"),
            "verificationStatus": codeable_no_text(ALLERGY_VERIFICATION, "confirmed", "Confirmed"),
            "type": "allergy",
            "category": arr![kind.category],
            "criticality": if severe { "high" } else { "low" },
            "code": codeable(kind.system, kind.code, kind.display),
            "patient": reference(&person.reference),
            "encounter": reference(&visit.reference),
            "recordedDate": date_time(self.moment_in(visit)),
            "reaction": arr![obj! {
                "manifestation": arr![codeable(SNOMED, reaction_code, reaction_display)],
                "severity": severity,
            }],
        };
        resource("AllergyIntolerance", id, "allergies", &json)
    }

    fn immunization(&mut self, person: &Person, visit: &Visit, idx: usize) -> Resource {
        let vaccine = &VACCINES[idx];
        let lot_number = format!("SYNLOT{:05}", self.rng.below(100_000));
        let id = self.next_id("imm");
        let json = obj! {
            "resourceType": "Immunization",
            "id": &id,
            "meta": meta(None),
            "status": "completed",
            "vaccineCode": codeable(CVX, vaccine.cvx, vaccine.display),
            "patient": reference(&person.reference),
            "encounter": reference(&visit.reference),
            "occurrenceDateTime": date_time(self.moment_in(visit)),
            "primarySource": true,
            "lotNumber": lot_number,
            "route": codeable_no_text(
                "http://terminology.hl7.org/CodeSystem/v3-RouteOfAdministration",
                "IM",
                "Injection, intramuscular",
            ),
        };
        resource("Immunization", id, "immunizations", &json)
    }
}

fn resource(resource_type: &'static str, id: String, category: &'static str, json: &Json) -> Resource {
    Resource { resource_type, id, category, json: json.to_bytes() }
}

/// Every resource is labelled as test data, so a system that ingests it can tell.
fn meta(profile: Option<&'static str>) -> Json {
    let mut meta = obj! {};
    if let Some(profile) = profile {
        meta.push("profile", arr![profile]);
    }
    meta.push("security", arr![coding(TEST_DATA_SYSTEM, TEST_DATA_CODE, "test health data")]);
    meta
}

fn coding(system: &'static str, code: &'static str, display: &'static str) -> Json {
    obj! { "system": system, "code": code, "display": display }
}

fn codeable(system: &'static str, code: &'static str, display: &'static str) -> Json {
    obj! { "coding": arr![coding(system, code, display)], "text": display }
}

fn codeable_no_text(system: &'static str, code: &'static str, display: &'static str) -> Json {
    obj! { "coding": arr![coding(system, code, display)] }
}

fn observation_category(code: &'static str, display: &'static str) -> Json {
    codeable_no_text(OBSERVATION_CATEGORY, code, display)
}

fn reference(target: &str) -> Json {
    obj! { "reference": target.to_owned() }
}
