//! What the node checks of a resource's content before it signs a write of it, whatever path
//! the write comes by: `POST`/`PUT /fhir/{type}`, transaction and batch Bundle entries, and
//! `POST /v1/records`; and the FHIR↔ledger mapping of content: a record's consent category
//! ([`category_of`], from the one table of `medledger_types`) and its patient ([`patient_of`]). One function per kind of content, so no path stores what another
//! refuses (a body that breaks later reads, a look-alike delete marker, patient data in the
//! clear directory). The ledger does not parse FHIR: these checks are the node's, before it
//! signs.

use medledger_fhir::{
    Issue, IssueCode, Severity, Validated,
    json::{self, Limits, Value},
    outcome::echo,
};
use medledger_ledger::State;
use medledger_types::{IdentityId, RecordId, Role, categories_of_resource_type};

use crate::served::{IDENTITY_SYSTEM, SERVED_TYPES, is_tombstone};

/// HTTP status codes a refusal carries: FHIR's own vocabulary (a Bundle entry's
/// `response.status` is one), which the API answers with.
pub mod status {
    pub const BAD_REQUEST: u16 = 400;
    pub const FORBIDDEN: u16 = 403;
    pub const NOT_FOUND: u16 = 404;
    pub const PRECONDITION_FAILED: u16 = 412;
    pub const PAYLOAD_TOO_LARGE: u16 = 413;
    pub const UNPROCESSABLE_ENTITY: u16 = 422;
}

/// Why content is refused: the status and the OperationOutcome's issues.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("refused ({status}): {}", .issues.first().map_or("", |i| i.diagnostics.as_str()))]
pub struct Refused {
    pub status: u16,
    pub issues: Vec<Issue>,
}

impl Refused {
    pub fn with_issues(status: u16, issues: Vec<Issue>) -> Self {
        Self { status, issues }
    }

    pub fn new(status: u16, code: IssueCode, diagnostics: impl Into<String>) -> Self {
        let issue = Issue { severity: Severity::Error, code, expression: None, diagnostics: diagnostics.into() };
        Self { status, issues: vec![issue] }
    }
}

/// A patient record's content that passed [`check_record`].
pub struct RecordContent {
    pub validated: Validated,
    pub json: serde_json::Value,
    /// The consent category derived from the content (Observations by their category code).
    pub category: &'static str,
}

/// Checks `body` as a version of a patient record (of `resource_type`, when the URL names
/// one): the strict parser and structural validation (no duplicate keys, no unknown members),
/// a type served as a patient record, not a delete marker, and its consent category.
pub fn check_record(resource_type: Option<&str>, body: &[u8]) -> Result<RecordContent, Refused> {
    let validated =
        medledger_fhir::validate(body).map_err(|issues| Refused::with_issues(status::BAD_REQUEST, issues))?;
    if let Some(expected) = resource_type
        && validated.resource_type != expected
    {
        return Err(Refused::new(
            status::BAD_REQUEST,
            IssueCode::Invalid,
            format!("the body is a {}, the URL says {expected}", validated.resource_type),
        ));
    }
    let (json, category) = record_content(&validated.resource_type, body)?;
    Ok(RecordContent { validated, json, category })
}

/// The checks of [`check_record`] after validation, for content validated as part of
/// something larger (a Bundle entry): a patient-record type, not a delete marker, its
/// category. Returns the content as JSON and the category.
pub fn record_content(resource_type: &str, body: &[u8]) -> Result<(serde_json::Value, &'static str), Refused> {
    if !SERVED_TYPES.contains(&resource_type) {
        return Err(Refused::new(
            status::BAD_REQUEST,
            IssueCode::NotSupported,
            format!("{} is not a patient record type served here", echo(resource_type)),
        ));
    }
    // The validator already refuses the marker's `medledger` member; refusing its prefix
    // here too keeps the marker unforgeable should the validator ever accept more.
    if is_tombstone(body) {
        return Err(Refused::new(
            status::BAD_REQUEST,
            IssueCode::Invalid,
            "this is the server's delete marker, not a resource: delete with DELETE",
        ));
    }
    let json: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| Refused::new(status::BAD_REQUEST, IssueCode::Invalid, e.to_string()))?;
    let category = category_of(resource_type, &json)?;
    Ok((json, category))
}

/// For `POST /v1/records`, where the caller names the patient: the resource must not name
/// another. A Patient's `urn:medledger:identity` identifier, if any, must be `patient`; any
/// other type needs a `subject` or `patient` reference `Patient/<id>`, and when `<id>` is a
/// server id (64 hex) it must name a Patient of `patient` stored here, exactly as the FHIR
/// API resolves it. Another id is the client's own label for the patient (synthetic and
/// imported data carry them): it names no resource of this server, so it cannot file the
/// record under someone else, and it is kept as written.
pub fn check_patient_named(
    state: &State,
    resource_type: &str,
    json: &serde_json::Value,
    patient: &IdentityId,
) -> Result<(), Refused> {
    let other = || {
        Refused::new(
            status::UNPROCESSABLE_ENTITY,
            IssueCode::BusinessRule,
            "the resource names another patient than the one it is written for",
        )
    };
    if resource_type != "Patient" {
        let reference =
            ["subject", "patient"].iter().find_map(|k| json[*k]["reference"].as_str()).ok_or_else(|| {
                Refused::new(
                    status::UNPROCESSABLE_ENTITY,
                    IssueCode::Processing,
                    format!("a {resource_type} needs a subject or patient reference to a Patient"),
                )
            })?;
        let id = reference.strip_prefix("Patient/").ok_or_else(|| {
            Refused::new(
                status::UNPROCESSABLE_ENTITY,
                IssueCode::Processing,
                format!("{} is not a reference to a Patient", echo(reference)),
            )
        })?;
        let server_id = id.split('/').next().is_some_and(|first| RecordId::from_hex(first).is_ok());
        if !server_id {
            return Ok(());
        }
    }
    match patient_of(state, resource_type, json)? {
        Some(named) if named != *patient => Err(other()),
        _ => Ok(()),
    }
}

/// Extensions a directory entry may carry, each with the one `value[x]` it must have: flags
/// and counts only, never text, so none can hold a name, a date or a diagnosis. They are the
/// ones real directories use (US Core's Direct address flag; Synthea's utilization and bed
/// counts); anything else is refused rather than stored on-chain in clear for good.
pub const DIRECTORY_EXTENSIONS: &[(&str, &str)] = &[
    ("http://hl7.org/fhir/us/core/StructureDefinition/us-core-direct", "valueBoolean"),
    ("http://synthetichealth.github.io/synthea/utilization-encounters-extension", "valueInteger"),
    ("http://synthetichealth.github.io/synthea/utilization-procedures-extension", "valueInteger"),
    ("http://synthetichealth.github.io/synthea/utilization-labs-extension", "valueInteger"),
    ("http://synthetichealth.github.io/synthea/utilization-prescriptions-extension", "valueInteger"),
    ("http://synthetichealth.github.io/synthea/bed-count-extension", "valueInteger"),
];

/// Refuses directory content (already validated) that is, or can carry, patient data: the
/// directory is committed on-chain in clear and never erased. Refused: `contained` resources
/// (a contained Patient or Observation), narrative `text` (free XHTML the server cannot
/// check says only what the structured elements say), `modifierExtension`, any `extension`
/// not on [`DIRECTORY_EXTENSIONS`] or not of its exact shape, and a Location of type PTRES
/// (a patient's residence). The issue's expression names the member. Also refuses content
/// over `DIRECTORY_CONTENT_BYTES_MAX` (the ledger's limit), first, so the walk is small.
pub fn check_directory(resource_type: &str, body: &[u8]) -> Result<(), Refused> {
    let max = medledger_types::limits::DIRECTORY_CONTENT_BYTES_MAX;
    if body.len() > max {
        let issue = Issue {
            severity: Severity::Error,
            code: IssueCode::TooLong,
            expression: Some(resource_type.to_owned()),
            diagnostics: format!("directory resources are at most {max} bytes (they are stored on-chain)"),
        };
        return Err(Refused::with_issues(status::PAYLOAD_TOO_LARGE, vec![issue]));
    }
    let root = json::parse(body, &Limits::default())
        .map_err(|e| Refused::new(status::BAD_REQUEST, IssueCode::Invalid, e.to_string()))?;
    let refuse = |expression: String, why: String| {
        let issue = Issue {
            severity: Severity::Error,
            code: IssueCode::BusinessRule,
            expression: Some(expression),
            diagnostics: format!(
                "{why}: directory entries are on-chain in clear and never erased, so they carry no patient data"
            ),
        };
        Err(Refused::with_issues(status::UNPROCESSABLE_ENTITY, vec![issue]))
    };
    if resource_type == "Location" && is_residence(&root) {
        return refuse("Location.type".into(), "a patient's residence (Location type PTRES) is patient data".into());
    }
    if root.get("text").is_some() {
        return refuse(format!("{resource_type}.text"), "narrative text is not accepted here".into());
    }
    // Depth-first over every value of at most 32 KiB of JSON, whose depth the parser bounds.
    let mut stack: Vec<(&Value<'_>, String)> = vec![(&root, resource_type.to_owned())];
    while let Some((value, path)) = stack.pop() {
        if let Some(items) = value.as_array() {
            for (i, item) in items.iter().enumerate() {
                stack.push((item, format!("{path}[{i}]")));
            }
            continue;
        }
        for member in value.as_object().unwrap_or_default() {
            let at = format!("{path}.{}", member.key);
            match member.key.as_ref() {
                "contained" => return refuse(at, "contained resources are not accepted here".into()),
                "modifierExtension" => return refuse(at, "modifier extensions are not accepted here".into()),
                "extension" => {
                    for (i, extension) in member.value.as_array().unwrap_or_default().iter().enumerate() {
                        if let Err(why) = allowed_extension(extension) {
                            return refuse(format!("{at}[{i}]"), why);
                        }
                    }
                }
                _ => stack.push((&member.value, at)),
            }
        }
    }
    Ok(())
}

/// Whether an extension is on [`DIRECTORY_EXTENSIONS`] with exactly its `url` and value.
fn allowed_extension(extension: &Value<'_>) -> Result<(), String> {
    let url = extension.get("url").and_then(Value::as_str).unwrap_or("");
    let Some((_, value_key)) = DIRECTORY_EXTENSIONS.iter().find(|(allowed, _)| *allowed == url) else {
        return Err(format!("extension {} is not on the directory's allow-list", echo(url)));
    };
    let members = extension.as_object().unwrap_or_default();
    let shaped = members.len() == 2 && members.iter().all(|m| m.key == "url" || m.key == *value_key);
    match shaped {
        true => Ok(()),
        false => Err(format!("extension {} carries only its {value_key} here", echo(url))),
    }
}

/// Whether a Location is typed as a patient's residence (`PTRES`).
fn is_residence(root: &Value<'_>) -> bool {
    let types = root.get("type").and_then(Value::as_array).unwrap_or_default();
    types
        .iter()
        .flat_map(|t| t.get("coding").and_then(Value::as_array).unwrap_or_default())
        .any(|c| c.get("code").and_then(Value::as_str) == Some("PTRES"))
}

/// `error` about one Bundle entry: each issue's expression moved under `Bundle.entry[index]`
/// (`Practitioner.contained` → `Bundle.entry[2].resource.contained`).
pub fn in_entry(error: Refused, index: usize) -> Refused {
    let status = error.status;
    let issues = error
        .issues
        .into_iter()
        .map(|issue| {
            let rest = issue.expression.as_deref().and_then(|e| e.split_once('.')).map(|(_, r)| format!(".{r}"));
            Issue { expression: Some(format!("Bundle.entry[{index}].resource{}", rest.unwrap_or_default())), ..issue }
        })
        .collect();
    Refused::with_issues(status, issues)
}

/// The patient identity a resource belongs to: for a Patient, the identity named by its
/// `urn:medledger:identity` identifier (`None` when it names none); for anything else, the
/// Patient its `subject` or `patient` reference points to.
pub fn patient_of(state: &State, resource_type: &str, json: &serde_json::Value) -> Result<Option<IdentityId>, Refused> {
    let unprocessable = |m: String| Refused::new(status::UNPROCESSABLE_ENTITY, IssueCode::Processing, m);
    if resource_type == "Patient" {
        let Some(value) = json["identifier"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|i| i["system"] == IDENTITY_SYSTEM)
            .and_then(|i| i["value"].as_str())
        else {
            return Ok(None);
        };
        let id = IdentityId::from_hex(value)
            .map_err(|_| unprocessable(format!("{IDENTITY_SYSTEM} identifier must be 64 hex characters")))?;
        return match state.identity(&id) {
            Some(who) if who.role == Role::Patient => Ok(Some(id)),
            _ => Err(unprocessable(format!("{IDENTITY_SYSTEM} names no registered patient identity"))),
        };
    }
    let reference = ["subject", "patient"]
        .iter()
        .find_map(|k| json[*k]["reference"].as_str())
        .ok_or_else(|| unprocessable(format!("a {resource_type} needs a subject or patient reference to a Patient")))?;
    let target = reference
        .strip_prefix("Patient/")
        .and_then(|id| RecordId::from_hex(id).ok())
        .and_then(|id| state.record(&id))
        .filter(|head| head.resource_type == "Patient")
        .ok_or_else(|| {
            unprocessable(format!("reference {} does not resolve to a Patient on this server", echo(reference)))
        })?;
    Ok(Some(target.patient))
}

/// The consent category of a new resource (Observations by their category coding).
pub fn category_of(resource_type: &str, json: &serde_json::Value) -> Result<&'static str, Refused> {
    match categories_of_resource_type(resource_type) {
        [one] => Ok(one),
        [] => Err(Refused::new(status::NOT_FOUND, IssueCode::NotFound, format!("{resource_type} is not patient data"))),
        _ => {
            let codes: Vec<&str> = json["category"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|c| c["coding"].as_array().into_iter().flatten())
                .filter(|c| c["system"] == "http://terminology.hl7.org/CodeSystem/observation-category")
                .filter_map(|c| c["code"].as_str())
                .collect();
            medledger_types::observation_category(codes).ok_or_else(|| {
                Refused::new(
                    status::UNPROCESSABLE_ENTITY,
                    IssueCode::BusinessRule,
                    "an Observation cannot be both laboratory and vital-signs (observation-category code \
                     system): consent is given per category",
                )
            })
        }
    }
}
