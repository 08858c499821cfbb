//! Core identifiers, hashes and limits shared by every medledger crate.
//!
//! Architecture invariant: this crate has no behaviour beyond formatting and parsing of
//! identifiers; everything that hashes, signs or validates lives further down the chain.

use std::fmt;

pub mod limits;

/// Errors from parsing identifiers given as text.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum TypesError {
    #[error("expected {expected} hex characters, got {got}")]
    HexLength { expected: usize, got: usize },
    #[error("invalid hex: {0}")]
    Hex(String),
}

fn parse_hex32(text: &str) -> Result<[u8; 32], TypesError> {
    if text.len() != 64 {
        return Err(TypesError::HexLength { expected: 64, got: text.len() });
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(text, &mut out).map_err(|e| TypesError::Hex(e.to_string()))?;
    Ok(out)
}

macro_rules! hash_newtype {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
        pub struct $name(pub [u8; 32]);

        impl $name {
            pub const LEN: usize = 32;

            pub fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }

            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }

            pub fn from_hex(text: &str) -> Result<Self, TypesError> {
                parse_hex32(text).map(Self)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex::encode(self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                // Eight hex characters identify a value in logs without flooding them.
                write!(f, concat!(stringify!($name), "({})"), &hex::encode(&self.0[..4]))
            }
        }

        impl std::str::FromStr for $name {
            type Err = TypesError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::from_hex(s)
            }
        }
    };
}

hash_newtype!(
    /// A SHA-256 digest.
    Hash
);
hash_newtype!(
    /// The id of an identity: SHA-256 over a domain tag and its first Ed25519 public key.
    /// Stays the same when the identity rotates its keys.
    IdentityId
);
hash_newtype!(
    /// The id of a transaction: its RFC 6962 leaf hash, SHA-256(0x00 || signed transaction bytes).
    TxId
);
hash_newtype!(
    /// The id of a medical record (all versions share it).
    RecordId
);

/// medledger's consent categories: the unit a category key and a category-scoped grant cover.
/// A record's category is derived from its FHIR resource and never changes.
pub const CATEGORIES: [&str; 15] = [
    "demographics",
    "encounters",
    "labs",
    "vitals",
    "observations",
    "conditions",
    "medications",
    "allergies",
    "immunizations",
    "procedures",
    "reports",
    "documents",
    "careplans",
    "billing",
    "devices",
];

pub fn is_category(name: &str) -> bool {
    CATEGORIES.contains(&name)
}

/// The categories a record of `resource_type` can be in (empty: not patient data medledger
/// stores yet). Observations are labs or vital signs, by their FHIR category.
pub fn categories_of_resource_type(resource_type: &str) -> &'static [&'static str] {
    match resource_type {
        "Patient" => &["demographics"],
        "Encounter" => &["encounters"],
        "Observation" => &["labs", "vitals", "observations"],
        "Condition" => &["conditions"],
        "MedicationRequest" => &["medications"],
        "AllergyIntolerance" => &["allergies"],
        "Immunization" => &["immunizations"],
        "Procedure" => &["procedures"],
        "DiagnosticReport" => &["reports"],
        "DocumentReference" => &["documents"],
        "CarePlan" => &["careplans"],
        "Claim" | "ExplanationOfBenefit" => &["billing"],
        "Device" => &["devices"],
        _ => &[],
    }
}

/// Every FHIR resource type medledger stores as a patient record (each has a category above).
pub const RECORD_RESOURCE_TYPES: [&str; 14] = [
    "Patient",
    "Encounter",
    "Observation",
    "Condition",
    "MedicationRequest",
    "AllergyIntolerance",
    "Immunization",
    "Procedure",
    "DiagnosticReport",
    "DocumentReference",
    "CarePlan",
    "Claim",
    "ExplanationOfBenefit",
    "Device",
];

/// The resource types whose records can be in `category` (what one category key opens).
pub fn resource_types_of_category(category: &str) -> impl Iterator<Item = &'static str> + '_ {
    RECORD_RESOURCE_TYPES.into_iter().filter(move |t| categories_of_resource_type(t).contains(&category))
}

/// FHIR resource types kept in the consortium directory: signed and committed like records,
/// but in clear, because they describe organisations, staff and places, not patients.
pub const DIRECTORY_RESOURCE_TYPES: [&str; 4] = ["Organization", "Practitioner", "PractitionerRole", "Location"];

pub fn is_directory_resource_type(resource_type: &str) -> bool {
    DIRECTORY_RESOURCE_TYPES.contains(&resource_type)
}

/// The consent category of an Observation from its `category` codes (code system
/// `http://terminology.hl7.org/CodeSystem/observation-category`): `labs` for laboratory,
/// `vitals` for vital-signs, `observations` for anything else (survey, social history, exam,
/// ...), and `None` when it claims both laboratory and vital-signs (consent is per category,
/// so an Observation must be in exactly one).
pub fn observation_category<'a>(codes: impl IntoIterator<Item = &'a str>) -> Option<&'static str> {
    let (mut lab, mut vital) = (false, false);
    for code in codes {
        lab |= code == "laboratory";
        vital |= code == "vital-signs";
    }
    match (lab, vital) {
        (true, true) => None,
        (true, false) => Some("labs"),
        (false, true) => Some("vitals"),
        (false, false) => Some("observations"),
    }
}

/// Block height; the genesis state is height 0 and the first block is height 1.
pub type Height = u64;

/// Milliseconds since the Unix epoch (UTC).
pub type TimestampMs = u64;

/// The kind of an identity. Encoded as one byte (see `docs/format.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// A consortium member organisation (hospital, insurer, research body). From genesis.
    Organisation = 1,
    /// A validator node, run by a member organisation. From genesis.
    Validator = 2,
    /// A clinician or other staff member, registered by their organisation.
    Practitioner = 3,
    /// A patient, registered by a provider (a member organisation or its staff or node) with
    /// the patient's own keys; never self-registered.
    Patient = 4,
    /// A machine client (EHR integration, batch job), registered by its organisation.
    SystemClient = 5,
}

impl Role {
    pub const ALL: [Role; 5] =
        [Role::Organisation, Role::Validator, Role::Practitioner, Role::Patient, Role::SystemClient];

    pub fn from_u8(tag: u8) -> Option<Role> {
        Role::ALL.into_iter().find(|r| *r as u8 == tag)
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Organisation => "organisation",
            Role::Validator => "validator",
            Role::Practitioner => "practitioner",
            Role::Patient => "patient",
            Role::SystemClient => "system-client",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == text)
    }
}

/// What a member organisation does, fixed in genesis. It decides, for example, who may
/// declare break-glass access (only clinicians of care providers). Encoded as one byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OrganisationKind {
    /// A hospital, clinic or practice: treats patients.
    CareProvider = 1,
    /// An insurer or other payer.
    Payer = 2,
    /// A research institute.
    Research = 3,
    /// Anything else (a registry, a pharmacy chain's head office, ...).
    Other = 4,
}

impl OrganisationKind {
    pub const ALL: [OrganisationKind; 4] =
        [OrganisationKind::CareProvider, OrganisationKind::Payer, OrganisationKind::Research, OrganisationKind::Other];

    pub fn from_u8(tag: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|k| *k as u8 == tag)
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            OrganisationKind::CareProvider => "care-provider",
            OrganisationKind::Payer => "payer",
            OrganisationKind::Research => "research",
            OrganisationKind::Other => "other",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == text)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_errors() {
        let h = Hash([0xab; 32]);
        assert_eq!(Hash::from_hex(&h.to_hex()).unwrap(), h);
        assert_eq!(Hash::from_hex("abcd"), Err(TypesError::HexLength { expected: 64, got: 4 }));
        assert!(matches!(Hash::from_hex(&"zz".repeat(32)), Err(TypesError::Hex(_))));
    }

    #[test]
    fn every_resource_category_is_a_category() {
        for rt in RECORD_RESOURCE_TYPES {
            assert!(!categories_of_resource_type(rt).is_empty());
            assert!(categories_of_resource_type(rt).iter().all(|c| is_category(c)), "{rt}");
        }
        assert!(categories_of_resource_type("Practitioner").is_empty());
        // Every category holds some record type, and the inverse mapping agrees.
        for category in CATEGORIES {
            let types: Vec<_> = resource_types_of_category(category).collect();
            assert!(!types.is_empty(), "{category}");
            assert!(types.iter().all(|t| categories_of_resource_type(t).contains(&category)));
        }
        assert_eq!(resource_types_of_category("billing").collect::<Vec<_>>(), ["Claim", "ExplanationOfBenefit"]);
    }

    #[test]
    fn role_tags_round_trip() {
        for role in Role::ALL {
            assert_eq!(Role::from_u8(role as u8), Some(role));
            assert_eq!(Role::parse(role.as_str()), Some(role));
        }
        assert_eq!(Role::from_u8(0), None);
        assert_eq!(Role::from_u8(6), None);
    }
}
