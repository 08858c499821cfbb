//! Every name, place and identifier system the generator can emit.
//!
//! People and places come only from these lists, which are invented, so a generated record can
//! never describe a real person; tests check every emitted name against them. Clinical codes
//! are real (LOINC, SNOMED CT, RxNorm, CVX, UCUM) because that is what makes the data useful.

/// Identifier system of the synthetic medical record numbers (`Patient.identifier`).
pub const MRN_SYSTEM: &str = "https://medledger.example/synthetic-mrn";

/// Prefix of every synthetic medical record number.
pub const MRN_PREFIX: &str = "SYN-";

/// `meta.security` label on every resource: HL7 v3 ActReason `HTEST`, "test health data".
pub const TEST_DATA_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v3-ActReason";
pub const TEST_DATA_CODE: &str = "HTEST";

/// The fictional state of every address.
pub const STATE: &str = "Synthetica";

/// Prefix of every postal code.
pub const POSTAL_CODE_PREFIX: &str = "SY";

/// Phone numbers are `(555) 555-01NN`: 555-0100..0199 is reserved for fiction in the NANP.
pub const PHONE_PREFIX: &str = "(555) 555-01";

/// E-mail domain, reserved for examples by RFC 2606.
pub const EMAIL_DOMAIN: &str = "example.org";

pub const GIVEN_NAMES_FEMALE: &[&str] = &[
    "Amara", "Beatrix", "Celia", "Delphine", "Elowen", "Freya", "Greta", "Hollis", "Imogen", "Junia", "Linnea",
    "Marisol", "Nerys", "Odette", "Petra", "Rosalind", "Sabine", "Tamsin", "Verity", "Wren",
];

pub const GIVEN_NAMES_MALE: &[&str] = &[
    "Alaric", "Bastian", "Cassius", "Dorian", "Emrys", "Fitzroy", "Gideon", "Hale", "Ivo", "Jasper", "Lucan", "Magnus",
    "Nico", "Orrin", "Percival", "Quentin", "Rowan", "Silas", "Tobin", "Ulric",
];

pub const FAMILY_NAMES: &[&str] = &[
    "Alderwood",
    "Ashcombe",
    "Brambleton",
    "Caskwell",
    "Dunlavey",
    "Elmsworth",
    "Fennimore",
    "Glasswright",
    "Hollowell",
    "Inglebrook",
    "Kettleby",
    "Larkfield",
    "Merriweather",
    "Nettlefold",
    "Oakhurst",
    "Pennywhistle",
    "Quenby",
    "Rookwood",
    "Saltmarsh",
    "Thistlewood",
    "Underhill",
    "Vexmoor",
    "Winterbourne",
    "Yarrowby",
];

/// Fictional towns (`Address.city`).
pub const TOWNS: &[&str] = &[
    "Brackenmoor",
    "Copperwick",
    "Emberfield",
    "Glimmerdale",
    "Harrowmere",
    "Lindenfall",
    "Quillhaven",
    "Starling Cove",
    "Tumbleweir",
    "Wrenmouth",
];

/// Street names; an address line is `<house number> <street>`.
pub const STREETS: &[&str] = &[
    "Clover Court",
    "Foxglove Way",
    "Heron Close",
    "Juniper Row",
    "Kestrel Avenue",
    "Lanternlight Street",
    "Larkspur Lane",
    "Mossbank Road",
    "Old Mill Lane",
    "Quarry Hill",
    "Tanners Walk",
    "Windrush Crescent",
];

pub(crate) const SNOMED: &str = "http://snomed.info/sct";
pub(crate) const LOINC: &str = "http://loinc.org";
pub(crate) const RXNORM: &str = "http://www.nlm.nih.gov/research/umls/rxnorm";
pub(crate) const CVX: &str = "http://hl7.org/fhir/sid/cvx";
pub(crate) const UCUM: &str = "http://unitsofmeasure.org";
pub(crate) const ACT_CODE: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";
pub(crate) const OBSERVATION_CATEGORY: &str = crate::OBSERVATION_CATEGORY_SYSTEM;
pub(crate) const INTERPRETATION: &str = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation";
pub(crate) const IDENTIFIER_TYPE: &str = "http://terminology.hl7.org/CodeSystem/v2-0203";
pub(crate) const CONDITION_CLINICAL: &str = "http://terminology.hl7.org/CodeSystem/condition-clinical";
pub(crate) const CONDITION_VERIFICATION: &str = "http://terminology.hl7.org/CodeSystem/condition-ver-status";
pub(crate) const CONDITION_CATEGORY: &str = "http://terminology.hl7.org/CodeSystem/condition-category";
pub(crate) const ALLERGY_CLINICAL: &str = "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical";
pub(crate) const ALLERGY_VERIFICATION: &str = "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification";
pub(crate) const MEDICATION_REQUEST_CATEGORY: &str = "http://terminology.hl7.org/CodeSystem/medicationrequest-category";

/// Medical effect of a condition on the generated measurements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Effect {
    None,
    HighGlucose,
    HighBloodPressure,
    LowHemoglobin,
}

#[derive(Debug)]
pub(crate) struct Medication {
    pub(crate) rxnorm: &'static str,
    pub(crate) display: &'static str,
    pub(crate) instruction: &'static str,
    pub(crate) frequency: i64,
    pub(crate) period: i64,
    /// Upper end of a range such as "every 4 to 6 hours".
    pub(crate) period_max: Option<i64>,
    pub(crate) period_unit: &'static str,
    pub(crate) as_needed: bool,
}

#[derive(Debug)]
pub(crate) struct ConditionKind {
    pub(crate) snomed: &'static str,
    pub(crate) display: &'static str,
    pub(crate) age_years_min: i64,
    pub(crate) effect: Effect,
    pub(crate) medication: Option<Medication>,
}

pub(crate) const CONDITIONS: &[ConditionKind] = &[
    ConditionKind {
        snomed: "44054006",
        display: "Diabetes mellitus type 2 (disorder)",
        age_years_min: 25,
        effect: Effect::HighGlucose,
        medication: Some(Medication {
            rxnorm: "860975",
            display: "24 HR Metformin hydrochloride 500 MG Extended Release Oral Tablet",
            instruction: "Take 1 tablet by mouth once daily with the evening meal.",
            frequency: 1,
            period: 1,
            period_max: None,
            period_unit: "d",
            as_needed: false,
        }),
    },
    ConditionKind {
        snomed: "38341003",
        display: "Hypertensive disorder, systemic arterial (disorder)",
        age_years_min: 25,
        effect: Effect::HighBloodPressure,
        medication: Some(Medication {
            rxnorm: "314076",
            display: "lisinopril 10 MG Oral Tablet",
            instruction: "Take 1 tablet by mouth once daily.",
            frequency: 1,
            period: 1,
            period_max: None,
            period_unit: "d",
            as_needed: false,
        }),
    },
    ConditionKind {
        snomed: "195967001",
        display: "Asthma (disorder)",
        age_years_min: 0,
        effect: Effect::None,
        medication: Some(Medication {
            rxnorm: "351137",
            display: "albuterol 0.21 MG/ML Inhalation Solution",
            instruction: "Inhale 3 mL by nebulizer every 4 to 6 hours as needed for wheezing.",
            frequency: 1,
            period: 4,
            period_max: Some(6),
            period_unit: "h",
            as_needed: true,
        }),
    },
    ConditionKind {
        snomed: "55822004",
        display: "Hyperlipidemia (disorder)",
        age_years_min: 30,
        effect: Effect::None,
        medication: Some(Medication {
            rxnorm: "314231",
            display: "Simvastatin 10 MG Oral Tablet",
            instruction: "Take 1 tablet by mouth once daily in the evening.",
            frequency: 1,
            period: 1,
            period_max: None,
            period_unit: "d",
            as_needed: false,
        }),
    },
    ConditionKind {
        snomed: "239873007",
        display: "Osteoarthritis of knee (disorder)",
        age_years_min: 45,
        effect: Effect::None,
        medication: Some(Medication {
            rxnorm: "310965",
            display: "Ibuprofen 200 MG Oral Tablet",
            instruction: "Take 2 tablets by mouth every 6 to 8 hours as needed for knee pain.",
            frequency: 1,
            period: 6,
            period_max: Some(8),
            period_unit: "h",
            as_needed: true,
        }),
    },
    ConditionKind {
        snomed: "271737000",
        display: "Anemia (disorder)",
        age_years_min: 0,
        effect: Effect::LowHemoglobin,
        medication: None,
    },
];

#[derive(Debug)]
pub(crate) struct AllergyKind {
    pub(crate) system: &'static str,
    pub(crate) code: &'static str,
    pub(crate) display: &'static str,
    /// AllergyIntolerance.category: food | medication | environment.
    pub(crate) category: &'static str,
    /// SNOMED CT (code, display) of the reactions this substance plausibly causes.
    pub(crate) reactions: &'static [(&'static str, &'static str)],
}

const WHEAL: (&str, &str) = ("247472004", "Wheal (finding)");
const SKIN_ERUPTION: (&str, &str) = ("271807003", "Eruption of skin (disorder)");
const DYSPNEA: (&str, &str) = ("267036007", "Dyspnea (finding)");
const RHINOCONJUNCTIVITIS: (&str, &str) = ("878820003", "Rhinoconjunctivitis (disorder)");
const ITCHING: (&str, &str) = ("418290006", "Itching (finding)");
const ANGIOEDEMA: (&str, &str) = ("402387002", "Allergic angioedema (disorder)");
pub(crate) const ANAPHYLAXIS: (&str, &str) = ("39579001", "Anaphylaxis (disorder)");

pub(crate) const ALLERGIES: &[AllergyKind] = &[
    AllergyKind {
        system: SNOMED,
        code: "442571000124108",
        display: "Tree nut (substance)",
        category: "food",
        reactions: &[WHEAL, ITCHING, ANGIOEDEMA, ANAPHYLAXIS],
    },
    AllergyKind {
        system: SNOMED,
        code: "102263004",
        display: "Eggs (edible) (substance)",
        category: "food",
        reactions: &[SKIN_ERUPTION, ITCHING],
    },
    AllergyKind {
        system: SNOMED,
        code: "111088007",
        display: "Latex (substance)",
        category: "environment",
        reactions: &[WHEAL, ITCHING],
    },
    AllergyKind {
        system: SNOMED,
        code: "264287008",
        display: "Animal dander (substance)",
        category: "environment",
        reactions: &[RHINOCONJUNCTIVITIS, DYSPNEA],
    },
    AllergyKind {
        system: SNOMED,
        code: "782576004",
        display: "Tree pollen (substance)",
        category: "environment",
        reactions: &[RHINOCONJUNCTIVITIS],
    },
    AllergyKind {
        system: SNOMED,
        code: "288328004",
        display: "Bee venom (substance)",
        category: "environment",
        reactions: &[WHEAL, ANGIOEDEMA, ANAPHYLAXIS],
    },
    AllergyKind {
        system: RXNORM,
        code: "1191",
        display: "Aspirin",
        category: "medication",
        reactions: &[WHEAL, DYSPNEA],
    },
    AllergyKind {
        system: RXNORM,
        code: "10831",
        display: "Sulfamethoxazole / Trimethoprim",
        category: "medication",
        reactions: &[SKIN_ERUPTION, ITCHING],
    },
];

#[derive(Debug)]
pub(crate) struct Vaccine {
    pub(crate) cvx: &'static str,
    pub(crate) display: &'static str,
    pub(crate) age_years_min: i64,
    pub(crate) age_years_max: i64,
}

pub(crate) const VACCINES: &[Vaccine] = &[
    Vaccine {
        cvx: "140",
        display: "Influenza, seasonal, injectable, preservative free",
        age_years_min: 0,
        age_years_max: 200,
    },
    Vaccine {
        cvx: "208",
        display: "SARS-COV-2 (COVID-19) vaccine, mRNA, spike protein, LNP, preservative free, 30 mcg/0.3mL dose",
        age_years_min: 12,
        age_years_max: 200,
    },
    Vaccine { cvx: "115", display: "Tdap", age_years_min: 7, age_years_max: 200 },
    Vaccine {
        cvx: "113",
        display: "Td (adult), 5 Lf tetanus toxoid, preservative free, adsorbed",
        age_years_min: 7,
        age_years_max: 200,
    },
    Vaccine { cvx: "43", display: "Hep B, adult", age_years_min: 20, age_years_max: 200 },
    Vaccine { cvx: "52", display: "Hep A, adult", age_years_min: 19, age_years_max: 200 },
    Vaccine { cvx: "62", display: "HPV, quadrivalent", age_years_min: 9, age_years_max: 26 },
    Vaccine { cvx: "187", display: "zoster vaccine recombinant", age_years_min: 50, age_years_max: 200 },
    Vaccine {
        cvx: "33",
        display: "pneumococcal polysaccharide vaccine, 23 valent",
        age_years_min: 65,
        age_years_max: 200,
    },
];

#[derive(Debug)]
pub(crate) struct EncounterClass {
    pub(crate) code: &'static str,
    pub(crate) display: &'static str,
    pub(crate) weight: u64,
    /// SNOMED CT (code, display) of the encounter types seen in this class.
    pub(crate) types: &'static [(&'static str, &'static str)],
    pub(crate) duration_minutes_min: i64,
    pub(crate) duration_minutes_max: i64,
}

pub(crate) const ENCOUNTER_CLASSES: &[EncounterClass] = &[
    EncounterClass {
        code: "AMB",
        display: "ambulatory",
        weight: 70,
        types: &[
            ("185349003", "Encounter for check up (procedure)"),
            ("185345009", "Encounter for symptom (procedure)"),
            ("185347001", "Encounter for problem (procedure)"),
            ("390906007", "Follow-up encounter (procedure)"),
        ],
        duration_minutes_min: 15,
        duration_minutes_max: 60,
    },
    EncounterClass {
        code: "EMER",
        display: "emergency",
        weight: 18,
        types: &[("50849002", "Emergency room admission (procedure)")],
        duration_minutes_min: 90,
        duration_minutes_max: 8 * 60,
    },
    EncounterClass {
        code: "IMP",
        display: "inpatient encounter",
        weight: 12,
        types: &[
            ("32485007", "Hospital admission (procedure)"),
            ("305408004", "Admission to surgical department (procedure)"),
        ],
        duration_minutes_min: 24 * 60,
        duration_minutes_max: 7 * 24 * 60,
    },
];
