//! The FHIR R4 REST API (`/fhir`): the CapabilityStatement; create, read, vread, update,
//! logical delete and history of the patient-record types; `Patient/$everything`; read-only
//! Consent, Provenance and AuditEvent views of the ledger (search is in `fhir_search`). All
//! through the same encryption, consent enforcement and on-chain audit as the record
//! endpoints; `docs/fhir.md` describes it.
//!
//! Every request carries a SMART bearer token (`smart`); its scopes must allow the
//! interaction on the type, and then `ledger::access` must allow the caller on the record:
//! both, never either. Logical ids are record ids in hex (64 characters, a valid FHIR id), so
//! an id never needs a lookup table and never leaks anything. Stored bytes are exactly what
//! the client sent; reads return them with the server's `id` and `meta` spliced in
//! (`medledger_fhir::splice`), never re-serialized. Errors are OperationOutcomes.

use axum::{
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use medledger_fhir::{
    Issue, IssueCode, Severity,
    instant::instant_from_ms,
    splice::{ServerMeta, with_server_meta},
};
use medledger_ledger::{AccessAction, Purpose};
use medledger_records::{
    RecordError, WriteRequest,
    access::{self, AccessRequest},
};
use medledger_types::{IdentityId, RecordId, Role, categories_of_resource_type};

use crate::{
    app::AppState,
    clock::now_ms,
    smart::{
        bearer::bearer,
        scopes::{Grant, interactions},
    },
};

pub(crate) const FHIR_JSON: &str = "application/fhir+json; charset=utf-8";

/// The resource types this slice serves: those stored as patient records.
pub const SERVED_TYPES: &[&str] = &medledger_types::RECORD_RESOURCE_TYPES;

/// What a logical delete stores as the record's next version (encrypted like any version):
/// not a FHIR resource (the validator refuses its `medledger` member), so no client can write
/// one through the FHIR API, and it marks the record deleted for every node that can open it.
pub(crate) fn tombstone(resource_type: &str) -> Vec<u8> {
    format!(r#"{{"medledger":"deleted","resourceType":"{resource_type}"}}"#).into_bytes()
}

/// Whether stored bytes are a delete marker (see [`tombstone`]).
pub(crate) fn is_tombstone(stored: &[u8]) -> bool {
    stored.starts_with(br#"{"medledger":"deleted","#)
}

/// The identifier system naming a patient's on-chain identity in a Patient resource.
pub const IDENTITY_SYSTEM: &str = "urn:medledger:identity";

/// An error answered as an OperationOutcome.
#[derive(Debug)]
pub(crate) struct FhirError {
    status: StatusCode,
    issues: Vec<Issue>,
}

impl FhirError {
    pub(crate) fn with_issues(status: StatusCode, issues: Vec<Issue>) -> Self {
        Self { status, issues }
    }

    pub(crate) fn new(status: StatusCode, code: IssueCode, diagnostics: impl Into<String>) -> Self {
        let issue = Issue { severity: Severity::Error, code, expression: None, diagnostics: diagnostics.into() };
        Self { status, issues: vec![issue] }
    }

    /// Points every issue that names no place at `expression`.
    pub(crate) fn at(mut self, expression: &str) -> Self {
        for issue in &mut self.issues {
            if issue.expression.is_none() {
                issue.expression = Some(expression.to_owned());
            }
        }
        self
    }

    pub(crate) fn status(&self) -> StatusCode {
        self.status
    }

    pub(crate) fn issues(&self) -> &[Issue] {
        &self.issues
    }
}

impl IntoResponse for FhirError {
    fn into_response(self) -> Response {
        let body = medledger_fhir::operation_outcome(&self.issues);
        let mut response = (self.status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<RecordError> for FhirError {
    fn from(e: RecordError) -> Self {
        let (status, code) = match &e {
            // Nothing was written; the write can succeed once space is freed.
            e if e.is_storage_full() => (StatusCode::INSUFFICIENT_STORAGE, IssueCode::Transient),
            RecordError::Denied(_) | RecordError::OutOfScope => (StatusCode::FORBIDDEN, IssueCode::Forbidden),
            RecordError::UnknownRecord(_) | RecordError::UnknownVersion { .. } => {
                (StatusCode::NOT_FOUND, IssueCode::NotFound)
            }
            RecordError::NotDecryptableHere | RecordError::NotCustodian => {
                (StatusCode::MISDIRECTED_REQUEST, IssueCode::Forbidden)
            }
            RecordError::VersionPending => (StatusCode::CONFLICT, IssueCode::Conflict),
            RecordError::VersionMismatch { .. } => (StatusCode::PRECONDITION_FAILED, IssueCode::Conflict),
            RecordError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, IssueCode::TooLong),
            RecordError::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, IssueCode::Invalid),
            RecordError::Submit(_) | RecordError::CiphertextMissing | RecordError::Audit(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, IssueCode::Transient)
            }
            _ => (StatusCode::INTERNAL_SERVER_ERROR, IssueCode::Exception),
        };
        FhirError::new(status, code, e.to_string())
    }
}

/// Records an access event through `f` on the blocking pool (recording waits for the audit
/// journal's sync), turning a failure to record into the request's answer: nothing is acted on,
/// nor refused, unrecorded.
pub(crate) async fn record_audit<F>(
    service: &std::sync::Arc<medledger_records::RecordService>,
    f: F,
) -> Result<(), FhirError>
where
    F: FnOnce(&medledger_records::RecordService) -> Result<(), RecordError> + Send + 'static,
{
    let service = service.clone();
    tokio::task::spawn_blocking(move || f(&service))
        .await
        .map_err(|_| FhirError::new(StatusCode::INTERNAL_SERVER_ERROR, IssueCode::Exception, "audit task failed"))?
        .map_err(FhirError::from)
}

pub(crate) fn unauthorized(why: &str) -> FhirError {
    FhirError::new(StatusCode::UNAUTHORIZED, IssueCode::Login, why.to_owned())
}

pub(crate) fn forbidden(why: impl Into<String>) -> FhirError {
    FhirError::new(StatusCode::FORBIDDEN, IssueCode::Forbidden, why)
}

pub(crate) fn not_found(what: impl Into<String>) -> FhirError {
    FhirError::new(StatusCode::NOT_FOUND, IssueCode::NotFound, what)
}

pub(crate) fn served(resource_type: &str) -> Result<(), FhirError> {
    if SERVED_TYPES.contains(&resource_type) || crate::fhir_directory::is_directory(resource_type) {
        return Ok(());
    }
    let known = medledger_fhir::model::Model::r4().is_r4_resource_type(resource_type);
    Err(FhirError::new(
        StatusCode::NOT_FOUND,
        IssueCode::NotSupported,
        if known {
            format!("resource type {} is not served here (see /fhir/metadata)", crate::error::echo(resource_type))
        } else {
            format!("{} is not an R4 resource type", crate::error::echo(resource_type))
        },
    ))
}

pub(crate) fn served_type(resource_type: &str) -> Result<(), FhirError> {
    served(resource_type)
}

pub(crate) fn authorize_type(
    app: &AppState,
    headers: &HeaderMap,
    resource_type: &str,
    interaction: u8,
) -> Result<Grant, FhirError> {
    authorize(app, headers, resource_type, interaction)
}

pub(crate) fn purpose_of(headers: &HeaderMap) -> Result<Purpose, FhirError> {
    purpose(headers)
}

pub(crate) fn record_service(app: &AppState) -> Result<std::sync::Arc<medledger_records::RecordService>, FhirError> {
    records(app)
}

/// The bearer grant, with its scopes checked for `interaction` on `resource_type`.
pub(crate) fn authorize(
    app: &AppState,
    headers: &HeaderMap,
    resource_type: &str,
    interaction: u8,
) -> Result<Grant, FhirError> {
    let grant = bearer(app, headers, now_ms()).map_err(unauthorized)?;
    if !grant.allows(resource_type, interaction) {
        return Err(forbidden(format!(
            "the token's scopes do not allow this interaction on {resource_type} (scopes: {})",
            grant.scopes.iter().map(ToString::to_string).collect::<Vec<_>>().join(" ")
        )));
    }
    Ok(grant)
}

/// [`authorize`] for a request about one record: a scope refusal is also an on-chain access
/// event (every denial is audited), once the caller is authenticated.
async fn authorize_record(
    app: &AppState,
    headers: &HeaderMap,
    resource_type: &str,
    interaction: u8,
    id: &str,
    action: AccessAction,
    purpose: Purpose,
) -> Result<Grant, FhirError> {
    match authorize(app, headers, resource_type, interaction) {
        Err(refusal) if refusal.status == StatusCode::FORBIDDEN => {
            if let (Ok(grant), Some(service), Ok(record_id)) =
                (bearer(app, headers, now_ms()), &app.records, RecordId::from_hex(id))
            {
                let who = grant.identity;
                record_audit(service, move |s| {
                    s.audit_refused_access(who, record_id, action, purpose, "scope-not-granted", now_ms())
                })
                .await?;
            }
            Err(refusal)
        }
        other => other,
    }
}

pub(crate) fn records(app: &AppState) -> Result<std::sync::Arc<medledger_records::RecordService>, FhirError> {
    app.records.clone().ok_or_else(|| {
        FhirError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            IssueCode::Transient,
            "this node does not serve records (no organisation key configured)",
        )
    })
}

/// The purpose of use of a request: `X-Purpose-Of-Use` (HL7 v3 code), default treatment.
pub(crate) fn purpose(headers: &HeaderMap) -> Result<Purpose, FhirError> {
    match headers.get("x-purpose-of-use").map(|v| v.to_str().unwrap_or("")) {
        None => Ok(Purpose::Treatment),
        Some(code) => Purpose::parse(code).ok_or_else(|| {
            FhirError::new(
                StatusCode::BAD_REQUEST,
                IssueCode::Value,
                format!(
                    "unknown X-Purpose-Of-Use {} (TREAT, HPAYMT, HOPERAT, HRESCH, ETREAT)",
                    crate::error::echo(code)
                ),
            )
        }),
    }
}

/// What a request about `resource_type/id` answers when no such resource exists — and,
/// word for word, when it exists but the caller may not see it (`crate::existence`).
pub(crate) fn no_such(resource_type: &str, id: &str) -> FhirError {
    not_found(format!("no {resource_type} with id {}", crate::error::echo(id)))
}

/// A read refused by consent answers as an unknown id (the refusal is audited by the read).
fn unless_denied(error: RecordError, resource_type: &str, id: &str) -> FhirError {
    match error {
        RecordError::Denied(_) => no_such(resource_type, id),
        other => other.into(),
    }
}

pub(crate) fn parse_id(id: &str) -> Result<RecordId, FhirError> {
    RecordId::from_hex(id).map_err(|_| not_found(format!("no resource with id {}", crate::error::echo(id))))
}

/// A stored version returned to a client: spliced, with ETag and Location-style headers.
pub(crate) fn resource_response(
    status: StatusCode,
    resource_type: &str,
    record_id: &RecordId,
    version: u32,
    last_updated_ms: u64,
    stored: &[u8],
) -> Result<Response, FhirError> {
    let id = record_id.to_hex();
    let version_text = version.to_string();
    let last_updated = instant_from_ms(last_updated_ms);
    let body =
        with_server_meta(stored, &ServerMeta { id: &id, version_id: &version_text, last_updated: &last_updated })
            .map_err(|e| FhirError::new(StatusCode::INTERNAL_SERVER_ERROR, IssueCode::Exception, e.to_string()))?;
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(v) = HeaderValue::from_str(&format!("W/\"{version}\"")) {
        headers.insert(header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("/fhir/{resource_type}/{id}/_history/{version}")) {
        headers.insert(header::CONTENT_LOCATION, v.clone());
        if status == StatusCode::CREATED {
            headers.insert(header::LOCATION, v);
        }
    }
    Ok(response)
}

/// `GET /fhir/{type}/{id}` and, with `vid`, `GET /fhir/{type}/{id}/_history/{vid}`.
async fn read_version(
    app: AppState,
    headers: HeaderMap,
    resource_type: String,
    id: String,
    version: Option<u32>,
) -> Result<Response, FhirError> {
    served(&resource_type)?;
    if crate::fhir_directory::is_directory(&resource_type) {
        return crate::fhir_directory::read(app, headers, resource_type, id, version).await;
    }
    let purpose = purpose(&headers)?;
    let grant =
        authorize_record(&app, &headers, &resource_type, interactions::READ, &id, AccessAction::Read, purpose).await?;
    let record_id = parse_id(&id)?;
    // A record of another type is, for this URL, not there.
    let stored_type = app.chain.state().record(&record_id).map(|h| h.resource_type.clone());
    if stored_type.as_deref() != Some(resource_type.as_str()) {
        return Err(no_such(&resource_type, &id));
    }
    let service = records(&app)?;
    let read = tokio::task::spawn_blocking(move || {
        service.read_as(grant.caller(), record_id, version, purpose, AccessAction::Read, now_ms())
    })
    .await
    .map_err(|_| FhirError::new(StatusCode::INTERNAL_SERVER_ERROR, IssueCode::Exception, "read task failed"))?
    .map_err(|e| unless_denied(e, &resource_type, &id))?;
    if is_tombstone(&read.plaintext) {
        return Err(FhirError::new(
            StatusCode::GONE,
            IssueCode::Deleted,
            format!("{resource_type}/{id} was deleted (version {}); its history is kept", read.version),
        ));
    }
    let committed_ms = app
        .chain
        .patient_index()
        .record(&record_id)
        .and_then(|r| r.versions.iter().find(|v| v.version == read.version).map(|v| v.position.committed_at_ms))
        .unwrap_or_else(now_ms);
    resource_response(StatusCode::OK, &resource_type, &record_id, read.version, committed_ms, &read.plaintext)
}

pub(crate) async fn read(
    State(app): State<AppState>,
    Path((resource_type, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, FhirError> {
    read_version(app, headers, resource_type, id, None).await
}

pub(crate) async fn vread(
    State(app): State<AppState>,
    Path((resource_type, id, vid)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Response, FhirError> {
    let version = vid
        .parse::<u32>()
        .ok()
        .filter(|v| *v > 0)
        .ok_or_else(|| not_found(format!("no version {}", crate::error::echo(&vid))))?;
    read_version(app, headers, resource_type, id, Some(version)).await
}

pub(crate) fn check_content_type(headers: &HeaderMap) -> Result<(), FhirError> {
    let value = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let essence = value.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if essence == "application/fhir+json" || essence == "application/json" {
        return Ok(());
    }
    Err(FhirError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        IssueCode::NotSupported,
        format!("send application/fhir+json, not {}", crate::error::echo(value)),
    ))
}

/// The patient identity a resource belongs to: for a Patient, the identity named by its
/// `urn:medledger:identity` identifier (`None` when it names none); for anything else, the
/// Patient its `subject` or `patient` reference points to.
pub(crate) fn patient_of(
    app: &AppState,
    resource_type: &str,
    json: &serde_json::Value,
) -> Result<Option<IdentityId>, FhirError> {
    let unprocessable = |m: String| FhirError::new(StatusCode::UNPROCESSABLE_ENTITY, IssueCode::Processing, m);
    let state = app.chain.state();
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
            unprocessable(format!(
                "reference {} does not resolve to a Patient on this server",
                crate::error::echo(reference)
            ))
        })?;
    Ok(Some(target.patient))
}

/// Waits (up to the configured time) for a written version to commit. `Ok(true)`: committed;
/// `Ok(false)`: still pending when the wait ran out.
pub(crate) async fn wait_for_commit(app: &AppState, tx: &medledger_types::TxId) -> Result<bool, FhirError> {
    use crate::fhir_bundle::Outcome;
    match crate::fhir_bundle::wait(app, tx).await {
        Outcome::Committed => Ok(true),
        Outcome::Pending => Ok(false),
        Outcome::Refused(reason) => Err(FhirError::new(
            StatusCode::CONFLICT,
            IssueCode::Conflict,
            format!("the write was refused when its block was built: {reason}"),
        )),
    }
}

/// The answer to a create or update: `created_status` once committed; 202 Accepted with an
/// informational OperationOutcome if the wait ran out (the version commits later).
pub(crate) async fn written_response(
    app: &AppState,
    created_status: StatusCode,
    resource_type: &str,
    written: &Written,
    body: &[u8],
) -> Result<Response, FhirError> {
    let committed = app.fhir_commit_wait_ms == 0 || wait_for_commit(app, &written.tx_id).await?;
    // `lastUpdated` is the block time, as later reads will say (or now, if not waiting).
    let committed_ms = committed_at_ms(app, &written.record_id, written.version).unwrap_or_else(now_ms);
    let mut response = if committed {
        resource_response(created_status, resource_type, &written.record_id, written.version, committed_ms, body)?
    } else {
        let outcome = medledger_fhir::operation_outcome(&[Issue {
            severity: Severity::Information,
            code: IssueCode::Transient,
            expression: None,
            diagnostics: format!(
                "accepted: version {} is submitted and not committed yet; it is readable once committed",
                written.version
            ),
        }]);
        let mut r = (StatusCode::ACCEPTED, outcome).into_response();
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
        if let Ok(v) = HeaderValue::from_str(&format!(
            "/fhir/{resource_type}/{}/_history/{}",
            written.record_id.to_hex(),
            written.version
        )) {
            r.headers_mut().insert(header::CONTENT_LOCATION, v);
        }
        r
    };
    if let Ok(v) = HeaderValue::from_str(&written.tx_id.to_hex()) {
        response.headers_mut().insert("x-medledger-tx", v);
    }
    Ok(response)
}

/// A version just submitted: what a create or update answers about.
pub(crate) struct Written {
    pub(crate) record_id: RecordId,
    pub(crate) version: u32,
    pub(crate) tx_id: medledger_types::TxId,
}

impl From<&medledger_records::Written> for Written {
    fn from(w: &medledger_records::Written) -> Self {
        Self { record_id: w.record_id, version: w.version, tx_id: w.tx_id }
    }
}

/// When `version` of a record or directory entry was committed (its block's time), if it is.
pub(crate) fn committed_at_ms(app: &AppState, id: &RecordId, version: u32) -> Option<u64> {
    let index = app.chain.patient_index();
    if let Some(record) = index.record(id) {
        return record.versions.iter().find(|v| v.version == version).map(|v| v.position.committed_at_ms);
    }
    index.directory_versions(id).iter().find(|(v, _)| *v == version).map(|(_, p)| p.committed_at_ms)
}

/// How long a create waits for a new patient's registration to commit.
const REGISTRATION_WAIT_MS: u64 = 15_000;

/// Registers a new patient identity (keys held by this organisation until handed over) and
/// waits until the registration is committed, so records can be written for it.
pub(crate) async fn register_patient(app: &AppState) -> Result<IdentityId, FhirError> {
    let service = records(app)?;
    let (identity, tx) =
        tokio::task::spawn_blocking(move || service.register_patient(now_ms())).await.map_err(|_| {
            FhirError::new(StatusCode::INTERNAL_SERVER_ERROR, IssueCode::Exception, "registration task failed")
        })??;
    let started = std::time::Instant::now();
    loop {
        match app.chain.tx_status(&tx) {
            Ok(medledger_node::chain::TxStatus::Committed { .. }) => return Ok(identity),
            Ok(medledger_node::chain::TxStatus::Rejected { reason }) => {
                return Err(FhirError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    IssueCode::Transient,
                    format!("the patient's registration was refused: {reason}"),
                ));
            }
            _ if started.elapsed().as_millis() as u64 > REGISTRATION_WAIT_MS => {
                return Err(FhirError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    IssueCode::Transient,
                    "the patient's registration is not committed yet; retry shortly",
                ));
            }
            _ => tokio::time::sleep(std::time::Duration::from_millis(25)).await,
        }
    }
}

/// `POST /fhir/{type}`: create. The author is the token's identity, which must be staff of
/// the organisation operating this node (the custodian).
pub(crate) async fn create(
    State(app): State<AppState>,
    Path(resource_type): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, FhirError> {
    served(&resource_type)?;
    if crate::fhir_directory::is_directory(&resource_type) {
        return crate::fhir_directory::create(app, headers, resource_type, body).await;
    }
    let grant = authorize(&app, &headers, &resource_type, interactions::CREATE)?;
    check_content_type(&headers)?;
    // The checks every path that writes a record runs (`write_checks`).
    let content = crate::write_checks::check_record(Some(&resource_type), &body)?;
    let service = records(&app)?;
    let custodian = service.organisation();
    let author = grant.identity;
    let staff = app.chain.state().identity(&author).is_some_and(|w| {
        w.id == custodian
            || (matches!(w.role, Role::Practitioner | Role::SystemClient) && w.organisation == Some(custodian))
    });
    let (json, category) = (&content.json, content.category);
    if !staff {
        // Audited when the resource names a patient here (a refused write attempt about them).
        if let Ok(Some(patient)) = patient_of(&app, &resource_type, json) {
            record_audit(&service, move |s| {
                s.audit_refused_write(author, patient, None, "not-custodian-staff", now_ms())
            })
            .await?;
        }
        return Err(forbidden("only the staff and systems of the organisation operating this node write here"));
    }
    // Conditional create, only for the custodian's staff (whose search it is, audited): already
    // here means nothing is written.
    if let Some(found) = crate::fhir_bundle::if_none_exist(&app, &headers, &grant, &resource_type).await? {
        return Ok(found);
    }
    let (patient, registered) = match patient_of(&app, &resource_type, json)? {
        Some(patient) => (patient, false),
        // A Patient naming no identity is someone new to the network: register them.
        None => (register_patient(&app).await?, true),
    };
    let content = body.clone();
    let type_for_write = resource_type.clone();
    let written = tokio::task::spawn_blocking(move || {
        let request =
            WriteRequest { author, patient, resource_type: &type_for_write, category, content: &content, record: None };
        service.write(&request, now_ms(), &mut rand::rng())
    })
    .await
    .map_err(|_| FhirError::new(StatusCode::INTERNAL_SERVER_ERROR, IssueCode::Exception, "write task failed"))??;
    let mut response = written_response(&app, StatusCode::CREATED, &resource_type, &(&written).into(), &body).await?;
    if let Ok(v) = HeaderValue::from_str(&patient.to_hex()) {
        response.headers_mut().insert("x-medledger-patient-identity", v);
    }
    if registered {
        response.headers_mut().insert("x-medledger-patient-registered", HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// The version an `If-Match` header names (`W/"3"` or `"3"`), if there is one.
pub(crate) fn if_match(headers: &HeaderMap) -> Result<Option<u32>, FhirError> {
    let Some(value) = headers.get(header::IF_MATCH) else { return Ok(None) };
    let text = value.to_str().unwrap_or("").trim();
    let quoted = text.strip_prefix("W/").unwrap_or(text);
    quoted.strip_prefix('"').and_then(|t| t.strip_suffix('"')).and_then(|v| v.parse::<u32>().ok()).map(Some).ok_or_else(
        || {
            FhirError::new(
                StatusCode::BAD_REQUEST,
                IssueCode::Value,
                format!("If-Match must be an ETag such as W/\"1\", not {}", crate::error::echo(text)),
            )
        },
    )
}

/// `PUT /fhir/{type}/{id}`: a new version of an existing resource (no update-as-create), by
/// the custodian's staff; `If-Match` makes it conditional on the latest version.
pub(crate) async fn update(
    State(app): State<AppState>,
    Path((resource_type, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, FhirError> {
    served(&resource_type)?;
    if crate::fhir_directory::is_directory(&resource_type) {
        return crate::fhir_directory::update(app, headers, resource_type, id, body).await;
    }
    let grant = authorize_record(
        &app,
        &headers,
        &resource_type,
        interactions::UPDATE,
        &id,
        AccessAction::Write,
        Purpose::Treatment,
    )
    .await?;
    check_content_type(&headers)?;
    let expected = if_match(&headers)?;
    let record_id = parse_id(&id)?;
    // A record the caller may not see is, to it, not there: the same answer as for an unknown
    // id, and before the body is looked at (a 400 would tell the two apart). The attempt is
    // still on the record's trail.
    let head = crate::existence::head_of_type(&app, &record_id, &resource_type);
    let visible =
        head.is_some() && crate::existence::sees(&app.chain.state(), &grant.identity, &record_id, Purpose::Treatment);
    if !visible {
        if let (Some(head), Some(service)) = (&head, &app.records) {
            let (who, patient) = (grant.identity, head.patient);
            record_audit(service, move |s| {
                s.audit_refused_write(who, patient, Some(record_id), "not-custodian-staff", now_ms())
            })
            .await?;
        }
        return Err(FhirError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            IssueCode::NotSupported,
            format!(
                "no {resource_type} with id {} exists, and this server does not create resources by update \
                 (POST to /fhir/{resource_type} instead)",
                crate::error::echo(&id)
            ),
        ));
    }
    let content = crate::write_checks::check_record(Some(&resource_type), &body)?;
    if content.validated.id.as_deref() != Some(id.as_str()) {
        return Err(FhirError::new(
            StatusCode::BAD_REQUEST,
            IssueCode::Invalid,
            "the resource's id must equal the id in the URL".to_owned(),
        ));
    }
    let service = records(&app)?;
    let custodian = service.organisation();
    let author = grant.identity;
    let staff = app.chain.state().identity(&author).is_some_and(|w| {
        w.id == custodian
            || (matches!(w.role, Role::Practitioner | Role::SystemClient) && w.organisation == Some(custodian))
    });
    if !staff {
        // Every refusal is on the record: a write attempt by someone not the custodian's.
        let patient = app.chain.state().record(&record_id).map(|h| h.patient);
        if let Some(patient) = patient {
            record_audit(&service, move |s| {
                s.audit_refused_write(author, patient, Some(record_id), "not-custodian-staff", now_ms())
            })
            .await?;
        }
        return Err(forbidden("only the staff and systems of the organisation operating this node write here"));
    }
    let existing = app.chain.state().record(&record_id).map(|h| (h.patient, h.category.clone()));
    let patient = patient_of(&app, &resource_type, &content.json)?
        .or(existing.as_ref().map(|e| e.0))
        .ok_or_else(|| not_found(format!("no {resource_type} with id {}", crate::error::echo(&id))))?;
    let category = content.category;
    // The ledger refuses a version in another consent category; say so now rather than let
    // the write be refused when its block is built.
    if existing.as_ref().is_some_and(|e| e.1 != category) {
        return Err(FhirError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            IssueCode::BusinessRule,
            "a record's consent category never changes (e.g. a lab Observation cannot become a vital sign): create a new resource",
        ));
    }
    let content = body.clone();
    let type_for_write = resource_type.clone();
    let written = tokio::task::spawn_blocking(move || {
        let request = WriteRequest {
            author,
            patient,
            resource_type: &type_for_write,
            category,
            content: &content,
            record: Some(record_id),
        };
        service.write_expecting(&request, expected, now_ms(), &mut rand::rng())
    })
    .await
    .map_err(|_| FhirError::new(StatusCode::INTERNAL_SERVER_ERROR, IssueCode::Exception, "write task failed"))??;
    written_response(&app, StatusCode::OK, &resource_type, &(&written).into(), &body).await
}

/// `DELETE /fhir/{type}/{id}`: a logical delete by the custodian's staff: the record's next
/// version is a delete marker, so reads answer 410 Gone, searches skip it, and its history
/// (every earlier version, and the delete) stays. Deleting a deleted resource succeeds again
/// without writing anything.
pub(crate) async fn delete(
    State(app): State<AppState>,
    Path((resource_type, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, FhirError> {
    served(&resource_type)?;
    if crate::fhir_directory::is_directory(&resource_type) {
        return crate::fhir_directory::delete(app, headers, resource_type, id).await;
    }
    let grant = authorize_record(
        &app,
        &headers,
        &resource_type,
        interactions::DELETE,
        &id,
        AccessAction::Write,
        Purpose::Treatment,
    )
    .await?;
    let record_id = parse_id(&id)?;
    let head =
        crate::existence::head_of_type(&app, &record_id, &resource_type).ok_or_else(|| no_such(&resource_type, &id))?;
    let service = records(&app)?;
    // A record the caller may not see answers as an unknown id; the attempt is audited.
    if !crate::existence::sees(&app.chain.state(), &grant.identity, &record_id, Purpose::Treatment) {
        let (who, patient) = (grant.identity, head.patient);
        record_audit(&service, move |s| {
            s.audit_refused_write(who, patient, Some(record_id), "not-custodian-staff", now_ms())
        })
        .await?;
        return Err(no_such(&resource_type, &id));
    }
    let custodian = service.organisation();
    let author = grant.identity;
    let staff = app.chain.state().identity(&author).is_some_and(|w| {
        w.id == custodian
            || (matches!(w.role, Role::Practitioner | Role::SystemClient) && w.organisation == Some(custodian))
    });
    if !staff {
        let patient = head.patient;
        record_audit(&service, move |s| {
            s.audit_refused_write(author, patient, Some(record_id), "not-custodian-staff", now_ms())
        })
        .await?;
        return Err(forbidden("only the staff and systems of the organisation operating this node delete here"));
    }
    let latest = {
        let service = service.clone();
        tokio::task::spawn_blocking(move || service.plaintext_for_index(&record_id, head.latest_version))
            .await
            .map_err(|_| {
                FhirError::new(StatusCode::INTERNAL_SERVER_ERROR, IssueCode::Exception, "read task failed")
            })??
    };
    if is_tombstone(&latest) {
        let mut response = StatusCode::NO_CONTENT.into_response();
        response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        return Ok(response);
    }
    let marker = tombstone(&resource_type);
    let content = marker.clone();
    let type_for_write = resource_type.clone();
    let written = tokio::task::spawn_blocking(move || {
        let request = WriteRequest {
            author,
            patient: head.patient,
            resource_type: &type_for_write,
            category: &head.category,
            content: &content,
            record: Some(record_id),
        };
        service.write_expecting(&request, Some(head.latest_version), now_ms(), &mut rand::rng())
    })
    .await
    .map_err(|_| FhirError::new(StatusCode::INTERNAL_SERVER_ERROR, IssueCode::Exception, "delete task failed"))??;
    let committed = app.fhir_commit_wait_ms == 0 || wait_for_commit(&app, &written.tx_id).await?;
    let mut response =
        if committed { StatusCode::NO_CONTENT.into_response() } else { StatusCode::ACCEPTED.into_response() };
    if let Ok(v) = HeaderValue::from_str(&format!("W/\"{}\"", written.version)) {
        response.headers_mut().insert(header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&written.tx_id.to_hex()) {
        response.headers_mut().insert("x-medledger-tx", v);
    }
    Ok(response)
}

/// `GET /fhir/{type}/{id}/_history`: every version, newest first, as a history Bundle. Each
/// version is a read like any other: decided by consent and audited.
pub(crate) async fn history(
    State(app): State<AppState>,
    Path((resource_type, id)): Path<(String, String)>,
    axum::extract::Query(query): axum::extract::Query<std::collections::HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, FhirError> {
    served(&resource_type)?;
    if crate::fhir_directory::is_directory(&resource_type) {
        return crate::fhir_directory::history(app, headers, resource_type, id, query).await;
    }
    let purpose = purpose(&headers)?;
    let grant =
        authorize_record(&app, &headers, &resource_type, interactions::READ, &id, AccessAction::History, purpose)
            .await?;
    let record_id = parse_id(&id)?;
    let service = records(&app)?;
    let requester = grant.identity;
    // Consent first, before anything else can answer differently: nothing of the history (not
    // even its length, or whether the id is real) for a caller who may not read the record;
    // the refusal is audited.
    let now = now_ms();
    let request = AccessRequest {
        caller: requester,
        credential: &grant,
        action: AccessAction::History,
        purpose,
        record: record_id,
        version: None,
        now_ms: now,
    };
    let decision = access::authorize(&app.chain.state(), &request)
        .filter(|d| d.head.resource_type == resource_type)
        .ok_or_else(|| no_such(&resource_type, &id))?;
    if !decision.is_allowed() {
        record_audit(&service, move |s| s.audit_decision(&decision, now)).await?;
        return Err(no_such(&resource_type, &id));
    }
    let (count, offset) = paging(&query, HISTORY_VERSIONS_MAX, "instance history")?;
    let versions: Vec<(u32, u64)> = app
        .chain
        .patient_index()
        .record(&record_id)
        .map(|r| r.versions.iter().rev().map(|v| (v.version, v.position.committed_at_ms)).collect())
        .unwrap_or_default();
    let total = versions.len();
    let versions: Vec<(u32, u64)> = versions.into_iter().skip(offset).take(count).collect();
    let wanted = versions.clone();
    let reader = grant.clone();
    let plaintexts = tokio::task::spawn_blocking(move || {
        let items: Vec<_> = wanted.iter().map(|(v, _)| (record_id, Some(*v))).collect();
        service
            .read_many(reader.caller(), &items, purpose, AccessAction::History, now_ms())?
            .into_iter()
            .map(|r| r.map(|r| r.plaintext))
            .collect::<Result<Vec<_>, _>>()
    })
    .await
    .map_err(|_| FhirError::new(StatusCode::INTERNAL_SERVER_ERROR, IssueCode::Exception, "read task failed"))??;
    let id_hex = record_id.to_hex();
    let links =
        page_links(&format!("{}/fhir/{resource_type}/{id_hex}/_history", app.public_base()), count, offset, total);
    let mut bundle = format!(r#"{{"resourceType":"Bundle","type":"history","total":{total},"link":{links},"entry":["#);
    for (i, ((version, at_ms), plaintext)) in versions.iter().zip(&plaintexts).enumerate() {
        if i > 0 {
            bundle.push(',');
        }
        push_history_entry(&mut bundle, &resource_type, &record_id, *version, *at_ms, plaintext);
    }
    bundle.push_str("]}");
    Ok(bundle_response(bundle))
}

/// `GET /fhir/Patient/{id}/$everything`: the latest version of every record of the patient
/// that the caller may read (consent decides per record before paging; refusals are left out,
/// and audited), as a `searchset` Bundle, the Patient first. Paged with `_count` (default and
/// maximum [`EVERYTHING_PAGE_MAX`]) and `_offset` over the visible records only. A caller who
/// may see none of them gets the answer for an unknown patient.
pub(crate) async fn everything(
    State(app): State<AppState>,
    Path(id): Path<String>,
    axum::extract::Query(query): axum::extract::Query<std::collections::HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, FhirError> {
    let purpose = purpose(&headers)?;
    let grant =
        authorize_record(&app, &headers, "Patient", interactions::READ, &id, AccessAction::Read, purpose).await?;
    let record_id = parse_id(&id)?;
    let (count, offset) = paging(&query, EVERYTHING_PAGE_MAX, "$everything")?;
    let patient = match app.chain.state().record(&record_id) {
        Some(head) if head.resource_type == "Patient" => head.patient,
        _ => return Err(no_such("Patient", &id)),
    };
    // The Patient resource itself first, then the rest in the order they were written.
    let mut members: Vec<(RecordId, String, u32, u64)> = app
        .chain
        .patient_index()
        .patient(&patient)
        .map(|p| {
            p.records
                .iter()
                .filter(|r| SERVED_TYPES.contains(&r.resource_type.as_str()))
                // Scopes narrow too: only the types the token may read.
                .filter(|r| grant.allows(&r.resource_type, interactions::READ))
                .filter_map(|r| {
                    let latest = r.versions.last()?;
                    Some((r.record_id, r.resource_type.clone(), latest.version, latest.position.committed_at_ms))
                })
                .collect()
        })
        .unwrap_or_default();
    members.sort_by_key(|(id, resource_type, _, _)| (*id != record_id, resource_type != "Patient"));
    let service = records(&app)?;
    let requester = grant.identity;
    // Consent decides before counting: the total, the pages and the next links are over what
    // the caller may see, so their sizes say nothing about records it may not.
    let (members, refused) = visible_members(&app, &requester, members, purpose);
    // Each refusal is on the patient's trail, as the refused reads of a page were (at most a
    // page's worth per request, so one request cannot queue unbounded events).
    let refused: Vec<_> = refused.into_iter().take(count).collect();
    record_audit(&service, move |s| {
        refused.into_iter().try_for_each(|(refused_id, code)| {
            s.audit_refused_access(requester, refused_id, AccessAction::Read, purpose, code, now_ms())
        })
    })
    .await?;
    // Nothing visible: the same answer as for a patient that does not exist.
    if members.is_empty() {
        return Err(no_such("Patient", &id));
    }
    let total = members.len();
    let page: Vec<_> = members.into_iter().skip(offset).take(count).collect();
    let wanted = page.clone();
    let reader = grant.clone();
    let reads = tokio::task::spawn_blocking(move || {
        let items: Vec<_> = wanted.iter().map(|(id, _, version, _)| (*id, Some(*version))).collect();
        let reads = service.read_many(reader.caller(), &items, purpose, AccessAction::Read, now_ms())?;
        Ok::<_, RecordError>(reads.into_iter().map(Result::ok).collect::<Vec<_>>())
    })
    .await
    .map_err(|_| FhirError::new(StatusCode::INTERNAL_SERVER_ERROR, IssueCode::Exception, "read task failed"))??;
    let links = page_links(&format!("{}/fhir/Patient/{id}/$everything", app.public_base()), count, offset, total);
    let mut bundle = format!(r#"{{"resourceType":"Bundle","type":"searchset","link":{links},"entry":["#);
    let mut first = true;
    let mut unservable = Vec::new();
    for ((record, resource_type, version, at_ms), read) in page.iter().zip(reads) {
        // Not readable by this caller (refused and audited by the read), or deleted: left out.
        let Some(read) = read.filter(|r| !is_tombstone(&r.plaintext)) else { continue };
        // One version that cannot be served is named in an outcome, not the whole record's end.
        let Some(resource) = served_resource(resource_type, record, *version, *at_ms, &read.plaintext) else {
            unservable.push((resource_type.as_str(), *record, *version));
            continue;
        };
        if !first {
            bundle.push(',');
        }
        first = false;
        bundle.push_str(&format!(
            r#"{{"fullUrl":"{}/fhir/{resource_type}/{}","resource":"#,
            app.public_base(),
            record.to_hex()
        ));
        bundle.push_str(&resource);
        bundle.push_str(r#","search":{"mode":"match"}}"#);
    }
    if !unservable.is_empty() {
        if !first {
            bundle.push(',');
        }
        bundle
            .push_str(&format!(r#"{{"resource":{},"search":{{"mode":"outcome"}}}}"#, unservable_outcome(&unservable)));
    }
    bundle.push_str("]}");
    Ok(bundle_response(bundle))
}

/// The members of `$everything` that `requester` may read for `purpose` (in order), and those
/// it may not with the denial's code. Consent is decided under the state's read lock per chunk,
/// never across a whole patient (block application waits for that lock).
#[allow(clippy::type_complexity)]
fn visible_members(
    app: &AppState,
    requester: &IdentityId,
    members: Vec<(RecordId, String, u32, u64)>,
    purpose: Purpose,
) -> (Vec<(RecordId, String, u32, u64)>, Vec<(RecordId, &'static str)>) {
    let now = now_ms();
    let (mut visible, mut refused) = (Vec::with_capacity(members.len()), Vec::new());
    for chunk in members.chunks(CONSENT_CHUNK) {
        let state = app.chain.state();
        for member in chunk {
            match crate::existence::read_decision(&state, requester, &member.0, purpose, now) {
                Some(Ok(_)) => visible.push(member.clone()),
                Some(Err(denial)) => refused.push((member.0, denial.code())),
                None => {}
            }
        }
    }
    (visible, refused)
}

/// `GET /fhir/AuditEvent?patient=Patient/{id}[&_count=N][&_offset=M]`: the on-chain access
/// events about a patient (every read, write attempt, history, search and refusal), oldest
/// first, as AuditEvent resources shaped after IHE BALP, each naming the ledger transaction
/// and log index that prove it. For the patient themself, and for the staff and systems of an
/// organisation holding the patient's records.
pub(crate) async fn audit_events(
    State(app): State<AppState>,
    axum::extract::Query(query): axum::extract::Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Result<Response, FhirError> {
    let grant = authorize(&app, &headers, "AuditEvent", interactions::SEARCH)?;
    let purpose = purpose(&headers)?;
    let bad = |m: String| FhirError::new(StatusCode::BAD_REQUEST, IssueCode::Value, m);
    let (mut patient_ref, mut count, mut offset) = (None, AUDIT_PAGE_DEFAULT, 0usize);
    for (key, value) in &query {
        match key.as_str() {
            "patient" if patient_ref.is_none() => patient_ref = Some(value.clone()),
            "_count" => {
                count = value
                    .parse::<usize>()
                    .ok()
                    .filter(|c| (1..=AUDIT_PAGE_MAX).contains(c))
                    .ok_or_else(|| bad(format!("_count must be 1 to {AUDIT_PAGE_MAX}")))?;
            }
            "_offset" => {
                offset = value
                    .parse::<usize>()
                    .ok()
                    .filter(|o| *o <= OFFSET_MAX)
                    .ok_or_else(|| bad(format!("_offset must be a number up to {OFFSET_MAX}")))?;
            }
            other => {
                return Err(FhirError::new(
                    StatusCode::BAD_REQUEST,
                    IssueCode::NotSupported,
                    format!(
                        "AuditEvent search supports patient, _count and _offset, not {}",
                        crate::error::echo(other)
                    ),
                ));
            }
        }
    }
    let patient_ref = patient_ref.ok_or_else(|| bad("AuditEvent search needs patient=Patient/<id>".into()))?;
    let patient_record = patient_ref
        .strip_prefix("Patient/")
        .unwrap_or(&patient_ref)
        .parse::<String>()
        .ok()
        .and_then(|id| RecordId::from_hex(&id).ok())
        .ok_or_else(|| not_found(format!("no Patient {}", crate::error::echo(&patient_ref))))?;
    // The patient sees every event; an organisation holding their records (and its staff)
    // only the events about its own records: writing one record about a patient must not
    // open their whole trail.
    let (patient, custodian_view) = {
        let state = app.chain.state();
        let patient = match state.record(&patient_record) {
            Some(head) if head.resource_type == "Patient" => head.patient,
            _ => return Err(not_found(format!("no Patient {}", crate::error::echo(&patient_ref)))),
        };
        if grant.identity == patient {
            (patient, None)
        } else {
            match organisation_of(&state, &grant.identity).filter(|o| state.custodies(o, &patient)) {
                Some(organisation) => (patient, Some(organisation)),
                // Someone who may not even see the Patient learns nothing, not that it exists.
                None if !crate::existence::sees(&state, &grant.identity, &patient_record, purpose) => {
                    return Err(not_found(format!("no Patient {}", crate::error::echo(&patient_ref))));
                }
                None => {
                    return Err(forbidden(
                        "the audit trail of a patient is for the patient and the organisations holding their records",
                    ));
                }
            }
        }
    };
    let chain_id = app.chain.genesis().chain_id().to_hex();
    let index = app.chain.patient_index();
    let entries: Vec<_> = index
        .patient(&patient)
        .map(|p| {
            p.access
                .iter()
                .filter(|e| {
                    custodian_view.is_none_or(|org| {
                        e.event.record.is_some_and(|(r, _)| index.record(&r).is_some_and(|r| r.custodian == org))
                    })
                })
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    let total = entries.len();
    let mut bundle = serde_json::json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "total": total,
        "link": [{"relation": "self", "url": format!("{}/fhir/AuditEvent?patient=Patient/{}&_count={count}&_offset={offset}", app.public_base(), patient_record.to_hex())}],
        "entry": [],
    });
    if offset + count < total {
        bundle["link"].as_array_mut().expect("link is an array").push(serde_json::json!({
            "relation": "next",
            "url": format!("{}/fhir/AuditEvent?patient=Patient/{}&_count={count}&_offset={}", app.public_base(), patient_record.to_hex(), offset + count),
        }));
    }
    let page: Vec<_> = entries
        .into_iter()
        .skip(offset)
        .take(count)
        .map(|entry| {
            let resource_type = entry.event.record.and_then(|(r, _)| index.record(&r).map(|r| r.resource_type.clone()));
            (entry, resource_type)
        })
        .collect();
    drop(index);
    // Who recorded each event, in words: the validator that decided, and its organisation.
    let recorders: std::collections::HashMap<IdentityId, String> = {
        let state = app.chain.state();
        page.iter().map(|(e, _)| (e.recorder, recorder_display(&state, &e.recorder))).collect()
    };
    for (entry, resource_type) in &page {
        let recorder = (&entry.recorder, recorders.get(&entry.recorder).map_or("", String::as_str));
        let resource = audit_event(entry, &patient, &chain_id, resource_type.as_deref(), recorder);
        let id = resource["id"].as_str().unwrap_or_default().to_owned();
        bundle["entry"].as_array_mut().expect("entry is an array").push(serde_json::json!({
            "fullUrl": format!("{}/fhir/AuditEvent/{id}", app.public_base()),
            "resource": resource,
            "search": {"mode": "match"},
        }));
    }
    Ok(bundle_response(bundle.to_string()))
}

/// How a recorder of access events is named for people: "node-0 (St Mary's Hospital)".
pub(crate) fn recorder_display(state: &medledger_ledger::State, recorder: &IdentityId) -> String {
    match state.identity(recorder) {
        Some(node) => match node.organisation.and_then(|o| state.identity(&o)) {
            Some(org) => format!("{} ({})", node.name, org.name),
            None => node.name.clone(),
        },
        None => format!("unknown recorder {}", recorder.to_hex()),
    }
}

pub const AUDIT_PAGE_DEFAULT: usize = 50;
pub const AUDIT_PAGE_MAX: usize = 500;

/// One access event as an R4 AuditEvent (IHE BALP's shape: a RESTful-operation event with the
/// accessor as requesting agent, the patient and the record as entities).
fn audit_event(
    entry: &medledger_node::index::AccessEntry,
    patient: &IdentityId,
    chain_id: &str,
    resource_type: Option<&str>,
    (recorder, recorder_name): (&IdentityId, &str),
) -> serde_json::Value {
    use medledger_ledger::AccessOutcome;
    let event = &entry.event;
    let (subtype, action) = match event.action {
        AccessAction::Read => ("read", "R"),
        AccessAction::History => ("history-instance", "R"),
        AccessAction::Search => ("search-type", "E"),
        AccessAction::Write => ("update", "U"),
        AccessAction::Export => ("export", "R"),
    };
    let outcome = match event.outcome {
        AccessOutcome::Denied => "4",
        _ => "0",
    };
    let identity = |id: &IdentityId| serde_json::json!({"system": IDENTITY_SYSTEM, "value": id.to_hex()});
    let mut entities = vec![serde_json::json!({
        "what": {"identifier": identity(patient)},
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1", "display": "Person"},
        "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1", "display": "Patient"},
    })];
    if let Some((record, version)) = &event.record
        && let Some(resource_type) = resource_type
    {
        entities.push(serde_json::json!({
            "what": {"reference": format!("{resource_type}/{}/_history/{version}", record.to_hex())},
            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2", "display": "System Object"},
            "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "4", "display": "Domain Resource"},
        }));
    }
    let mut agent = serde_json::json!({
        "who": {"identifier": identity(&event.accessor)},
        "requestor": true,
        "purposeOfUse": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": event.purpose.code()}]}],
    });
    if let Some(grant) = &event.grant_id {
        agent["policy"] = serde_json::json!([format!("urn:medledger:grant:{}", grant.to_hex())]);
    }
    let mut resource = serde_json::json!({
        "resourceType": "AuditEvent",
        "id": format!("{}-{}", entry.position.log_index, entry.event_index),
        "extension": [
            {"url": LEDGER_TX_EXTENSION, "valueString": entry.position.tx_id.to_hex()},
            {"url": LEDGER_LOG_INDEX_EXTENSION, "valueUnsignedInt": entry.position.log_index},
        ],
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest", "display": "RESTful Operation"},
        "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": subtype}],
        "action": action,
        "recorded": instant_from_ms(event.at_ms),
        "outcome": outcome,
        "purposeOfEvent": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": event.purpose.code()}]}],
        "agent": [agent],
        "source": {
            "site": format!("medledger chain {chain_id}"),
            // The node that decided and recorded the event (only validators may).
            "observer": {"identifier": identity(recorder), "display": recorder_name},
        },
        "entity": entities,
    });
    // The decision's reason code (basis or denial); R4 forbids empty strings.
    if !event.reason.is_empty() {
        resource["outcomeDesc"] = serde_json::json!(event.reason);
    }
    resource
}

/// `GET /fhir/Provenance?target=<Type>/<id>`: one Provenance per version of the record: who
/// wrote it (the author), for which organisation (the custodian), when it was committed, and
/// the ledger transaction that commits it, with that transaction's signature. For whoever may
/// read the record; the lookup is audited as a history access.
pub(crate) async fn provenance(
    State(app): State<AppState>,
    axum::extract::Query(query): axum::extract::Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Result<Response, FhirError> {
    let target = match query.as_slice() {
        [(key, value)] if key == "target" => value.clone(),
        _ => {
            return Err(FhirError::new(
                StatusCode::BAD_REQUEST,
                IssueCode::NotSupported,
                "Provenance search takes exactly one parameter: target=<Type>/<id>",
            ));
        }
    };
    let (resource_type, id) = target
        .split_once('/')
        .ok_or_else(|| FhirError::new(StatusCode::BAD_REQUEST, IssueCode::Value, "target must be <Type>/<id>"))?;
    served(resource_type)?;
    let grant = authorize(&app, &headers, "Provenance", interactions::SEARCH)?;
    if !grant.allows(resource_type, interactions::READ) {
        return Err(forbidden(format!("the token's scopes do not allow reading {resource_type}")));
    }
    let purpose = purpose(&headers)?;
    let record_id = parse_id(id)?;
    // Decided and recorded at one time: the event names the grant in force then.
    let now = now_ms();
    let request = AccessRequest {
        caller: grant.identity,
        credential: &grant,
        action: AccessAction::History,
        purpose,
        record: record_id,
        version: None,
        now_ms: now,
    };
    let decision = access::authorize(&app.chain.state(), &request)
        .filter(|d| d.head.resource_type == resource_type)
        .ok_or_else(|| no_such(resource_type, id))?;
    let allowed = decision.is_allowed();
    if let Some(service) = &app.records {
        record_audit(service, move |s| s.audit_decision(&decision, now)).await?;
    }
    // Refused (and audited): the answer for a record that does not exist.
    if !allowed {
        return Err(no_such(resource_type, id));
    }
    let (custodian, versions) = {
        let index = app.chain.patient_index();
        let record = index.record(&record_id).ok_or_else(|| not_found("the record is not indexed yet"))?;
        (record.custodian, record.versions.clone())
    };
    let identity =
        |id: &IdentityId| serde_json::json!({"identifier": {"system": IDENTITY_SYSTEM, "value": id.to_hex()}});
    let mut entries = Vec::new();
    for version in versions.iter().rev() {
        let tx = app
            .chain
            .transaction(&version.position.tx_id)
            .map_err(|e| FhirError::new(StatusCode::INTERNAL_SERVER_ERROR, IssueCode::Exception, e.to_string()))?;
        let (signer, signature) = match &tx {
            Some(tx) => {
                (tx.body().signer, base64::Engine::encode(&base64::engine::general_purpose::STANDARD, tx.signature().0))
            }
            None => continue,
        };
        let recorded = instant_from_ms(version.position.committed_at_ms);
        // A delete is a version too: its marker says so (the caller may read the record).
        let deleted = match &app.records {
            Some(service) => {
                let service = service.clone();
                let v = version.version;
                tokio::task::spawn_blocking(move || service.plaintext_for_index(&record_id, v))
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .is_some_and(|p| is_tombstone(&p))
            }
            None => false,
        };
        let activity = match (version.version, deleted) {
            (_, true) => "DELETE",
            (1, false) => "CREATE",
            _ => "UPDATE",
        };
        // One ledger transaction (a Bundle's batch) can commit versions of many records: the
        // id names the record too.
        let provenance_id = format!("{}-{}", version.position.log_index, &record_id.to_hex()[..32]);
        let resource = serde_json::json!({
            "resourceType": "Provenance",
            "id": provenance_id,
            "extension": [
                {"url": LEDGER_TX_EXTENSION, "valueString": version.position.tx_id.to_hex()},
                {"url": LEDGER_LOG_INDEX_EXTENSION, "valueUnsignedInt": version.position.log_index},
            ],
            "target": [{"reference": format!("{resource_type}/{id}/_history/{}", version.version)}],
            "recorded": recorded,
            "activity": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation", "code": activity}]},
            "agent": [
                {
                    "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type", "code": "author"}]},
                    "who": identity(&version.author),
                    "onBehalfOf": identity(&custodian),
                },
                {
                    "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type", "code": "custodian"}]},
                    "who": identity(&custodian),
                },
            ],
            "signature": [{
                "type": [{"system": "urn:iso-astm:E1762-95:2013", "code": "1.2.840.10065.1.12.1.5", "display": "Verification Signature"}],
                "when": recorded,
                "who": identity(&signer),
                "sigFormat": "application/octet-stream",
                "data": signature,
            }],
        });
        entries.push(serde_json::json!({
            "fullUrl": format!("{}/fhir/Provenance/{provenance_id}", app.public_base()),
            "resource": resource,
            "search": {"mode": "match"},
        }));
    }
    let bundle = serde_json::json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "total": entries.len(),
        "link": [{"relation": "self", "url": format!("{}/fhir/Provenance?target={resource_type}/{id}", app.public_base())}],
        "entry": entries,
    });
    Ok(bundle_response(bundle.to_string()))
}

/// Who may see a patient's consents and audit trail: the patient, and the staff and systems
/// of an organisation holding the patient's records.
fn may_oversee(state: &medledger_ledger::State, caller: &IdentityId, patient: &IdentityId) -> bool {
    caller == patient || organisation_of(state, caller).is_some_and(|o| state.custodies(&o, patient))
}

/// Whether `grant` gives access to `organisation` or one of its staff (what an organisation,
/// as opposed to the patient, may see of a patient's consents).
fn concerns(state: &medledger_ledger::State, grant: &medledger_ledger::Grant, organisation: &IdentityId) -> bool {
    grant.grantee == *organisation || organisation_of(state, &grant.grantee) == Some(*organisation)
}

/// The organisation a caller acts for: itself, or the one its practitioner or system client
/// belongs to.
fn organisation_of(state: &medledger_ledger::State, caller: &IdentityId) -> Option<IdentityId> {
    state.identity(caller).and_then(|w| match w.role {
        Role::Organisation => Some(w.id),
        Role::Practitioner | Role::SystemClient => w.organisation,
        _ => None,
    })
}

/// A grant (consent, rule-derived access or break-glass) as an R4 Consent. Read-only for now:
/// writing a Consent does not create a grant yet.
pub(crate) fn consent_resource(
    state: &medledger_ledger::State,
    grant: &medledger_ledger::Grant,
    at_ms: u64,
) -> serde_json::Value {
    use medledger_ledger::{GrantOrigin, Scope as GrantScope, actions};
    let identity =
        |id: &IdentityId| serde_json::json!({"identifier": {"system": IDENTITY_SYSTEM, "value": id.to_hex()}});
    let status = if grant.revoked_at.is_some() || at_ms >= grant.valid_until_ms {
        "inactive"
    } else if at_ms < grant.valid_from_ms {
        "proposed"
    } else {
        "active"
    };
    let mut actions_list = Vec::new();
    if grant.actions & actions::READ != 0 {
        actions_list.push(serde_json::json!({"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentaction", "code": "access"}]}));
    }
    if grant.actions & actions::WRITE != 0 {
        actions_list.push(serde_json::json!({"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentaction", "code": "correct"}]}));
    }
    let mut provision = serde_json::json!({
        "type": "permit",
        "period": {"start": instant_from_ms(grant.valid_from_ms), "end": instant_from_ms(grant.valid_until_ms)},
        "actor": [{
            "role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP", "display": "information recipient"}]},
            "reference": identity(&grant.grantee),
        }],
        "action": actions_list,
        "purpose": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": grant.purpose.code()}],
    });
    match &grant.scope {
        GrantScope::All => {}
        GrantScope::ResourceTypes(types) => {
            provision["class"] = serde_json::json!(
                types
                    .iter()
                    .map(|t| serde_json::json!({"system": "http://hl7.org/fhir/resource-types", "code": t}))
                    .collect::<Vec<_>>()
            );
        }
        GrantScope::Categories(categories) => {
            provision["code"] = serde_json::json!(
                categories
                    .iter()
                    .map(|c| serde_json::json!({"coding": [{"system": CATEGORY_SYSTEM, "code": c}]}))
                    .collect::<Vec<_>>()
            );
        }
        GrantScope::Records(records) => {
            provision["data"] = serde_json::json!(records
                .iter()
                .map(|r| {
                    let resource_type = state.record(r).map_or("Resource".to_owned(), |h| h.resource_type.clone());
                    serde_json::json!({"meaning": "instance", "reference": {"reference": format!("{resource_type}/{}", r.to_hex())}})
                })
                .collect::<Vec<_>>());
        }
    }
    let origin = match &grant.origin {
        GrantOrigin::Consent => "consent".to_owned(),
        GrantOrigin::BreakGlass { .. } => "break-glass".to_owned(),
        GrantOrigin::Rule { rule_id, .. } => format!("rule:{}", rule_id.to_hex()),
    };
    serde_json::json!({
        "resourceType": "Consent",
        "id": grant.id.to_hex(),
        "extension": [
            {"url": GRANT_ORIGIN_EXTENSION, "valueString": origin},
            {"url": LEDGER_TX_EXTENSION, "valueString": grant.id.to_hex()},
        ],
        "status": status,
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0", "display": "Patient Consent"}]}],
        "patient": identity(&grant.patient),
        "performer": [identity(&grant.signed_by)],
        "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]},
        "provision": provision,
    })
}

/// The code system of medledger's consent categories (`medledger_types::CATEGORIES`).
pub const CATEGORY_SYSTEM: &str = "urn:medledger:category";
/// Extension saying how a grant came to be: `consent`, `break-glass` or `rule:<rule id>`.
pub const GRANT_ORIGIN_EXTENSION: &str = "urn:medledger:fhir:extension:grant-origin";

/// `GET /fhir/Consent?patient=Patient/{id}`: every grant of the patient (consents, grants
/// derived by sharing rules, break-glass), live or not, as Consent resources. Read-only: a
/// Consent cannot be written here yet.
pub(crate) async fn consents(
    State(app): State<AppState>,
    axum::extract::Query(query): axum::extract::Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Result<Response, FhirError> {
    let grant = authorize(&app, &headers, "Consent", interactions::SEARCH)?;
    let purpose = purpose(&headers)?;
    let patient_ref = match query.as_slice() {
        [(key, value)] if key == "patient" => value.clone(),
        _ => {
            return Err(FhirError::new(
                StatusCode::BAD_REQUEST,
                IssueCode::NotSupported,
                "Consent search takes exactly one parameter: patient=Patient/<id>",
            ));
        }
    };
    let record = RecordId::from_hex(patient_ref.strip_prefix("Patient/").unwrap_or(&patient_ref))
        .map_err(|_| not_found(format!("no Patient {}", crate::error::echo(&patient_ref))))?;
    let now = now_ms();
    let resources: Vec<serde_json::Value> = {
        let state = app.chain.state();
        let patient = match state.record(&record) {
            Some(head) if head.resource_type == "Patient" => head.patient,
            _ => return Err(not_found(format!("no Patient {}", crate::error::echo(&patient_ref)))),
        };
        if !may_oversee(&state, &grant.identity, &patient) {
            // Someone who may not even see the Patient learns nothing, not that it exists.
            if !crate::existence::sees(&state, &grant.identity, &record, purpose) {
                return Err(not_found(format!("no Patient {}", crate::error::echo(&patient_ref))));
            }
            return Err(forbidden(
                "a patient's consents are for the patient and the organisations holding their records",
            ));
        }
        let at = now.max(state.head_timestamp_ms());
        // An organisation sees the consents that give it (or its staff) access, not the
        // patient's others.
        let viewer = (grant.identity != patient).then(|| organisation_of(&state, &grant.identity)).flatten();
        state
            .grants_of(&patient)
            .filter(|g| viewer.is_none_or(|org| concerns(&state, g, &org)))
            .map(|g| consent_resource(&state, g, at))
            .collect()
    };
    let bundle = serde_json::json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "total": resources.len(),
        "link": [{"relation": "self", "url": format!("{}/fhir/Consent?patient=Patient/{}", app.public_base(), record.to_hex())}],
        "entry": resources.into_iter().map(|r| serde_json::json!({
            "fullUrl": format!("{}/fhir/Consent/{}", app.public_base(), r["id"].as_str().unwrap_or_default()),
            "resource": r,
            "search": {"mode": "match"},
        })).collect::<Vec<_>>(),
    });
    Ok(bundle_response(bundle.to_string()))
}

/// `GET /fhir/Consent/{grant id}`.
pub(crate) async fn consent(
    State(app): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, FhirError> {
    let grant = authorize(&app, &headers, "Consent", interactions::READ)?;
    let grant_id = medledger_types::TxId::from_hex(&id)
        .map_err(|_| not_found(format!("no Consent {}", crate::error::echo(&id))))?;
    let resource = {
        let state = app.chain.state();
        let stored =
            state.grant(&grant_id).ok_or_else(|| not_found(format!("no Consent {}", crate::error::echo(&id))))?;
        let allowed = grant.identity == stored.patient
            || (may_oversee(&state, &grant.identity, &stored.patient)
                && organisation_of(&state, &grant.identity).is_some_and(|org| concerns(&state, stored, &org)));
        // A consent the caller may not see answers as one that does not exist.
        if !allowed {
            return Err(not_found(format!("no Consent {}", crate::error::echo(&id))));
        }
        consent_resource(&state, stored, now_ms().max(state.head_timestamp_ms()))
    };
    Ok(bundle_response(resource.to_string()))
}

/// Extension naming the ledger transaction that carries an access event (its RFC 6962 leaf
/// hash: `GET /v1/proofs/inclusion` proves it).
pub const LEDGER_TX_EXTENSION: &str = "urn:medledger:fhir:extension:ledger-transaction";
/// Extension naming that transaction's index in the ledger's log.
pub const LEDGER_LOG_INDEX_EXTENSION: &str = "urn:medledger:fhir:extension:ledger-log-index";

/// Largest `_offset` accepted by the paged endpoints.
pub const OFFSET_MAX: usize = 1_000_000;

/// Most resources one `$everything` page carries (each is decrypted and audited).
pub const EVERYTHING_PAGE_MAX: usize = 200;

/// `GET /fhir/{type}/_history[?_count=N&_offset=M]`: every version of every record of the
/// type that the caller may read, newest commit first, as a `history` Bundle. Records consent
/// refuses are left out before counting; each returned version is a read like any other
/// (decided and audited).
pub(crate) async fn type_history(
    State(app): State<AppState>,
    Path(resource_type): Path<String>,
    axum::extract::Query(query): axum::extract::Query<std::collections::HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, FhirError> {
    served(&resource_type)?;
    if crate::fhir_directory::is_directory(&resource_type) {
        return crate::fhir_directory::type_history(app, headers, resource_type, query).await;
    }
    // SMART maps type history to search (`s`): it lists the type's records.
    let grant = authorize(&app, &headers, &resource_type, interactions::SEARCH)?;
    let purpose = purpose(&headers)?;
    let (count, offset) = paging(&query, HISTORY_VERSIONS_MAX, "type history")?;
    let requester = grant.identity;
    let now = now_ms();
    // (log index, record, version, committed at) of every version of the type; then only those
    // of records the caller may read. Consent is decided under the state's read lock per chunk,
    // never across the whole type (block application waits for that lock).
    let all: Vec<(u64, RecordId, u32, u64)> = app
        .chain
        .patient_index()
        .records()
        .filter(|r| r.resource_type == resource_type)
        .flat_map(|r| {
            r.versions
                .iter()
                .map(|v| (v.position.log_index, r.record_id, v.version, v.position.committed_at_ms))
                .collect::<Vec<_>>()
        })
        .collect();
    let mut readable: std::collections::HashMap<RecordId, bool> = std::collections::HashMap::new();
    for chunk in all.chunks(CONSENT_CHUNK) {
        let state = app.chain.state();
        for (_, record, _, _) in chunk {
            readable.entry(*record).or_insert_with(|| {
                let request = AccessRequest {
                    caller: requester,
                    credential: &grant,
                    action: AccessAction::History,
                    purpose,
                    record: *record,
                    version: None,
                    now_ms: now,
                };
                access::check(&state, &request).is_some_and(|outcome| outcome.is_ok())
            });
        }
    }
    let mut versions: Vec<(u64, RecordId, u32, u64)> =
        all.into_iter().filter(|(_, record, _, _)| readable.get(record).copied().unwrap_or(false)).collect();
    versions.sort_by_key(|v| std::cmp::Reverse(v.0));
    let total = versions.len();
    let page: Vec<_> = versions.into_iter().skip(offset).take(count).collect();
    let service = records(&app)?;
    let wanted = page.clone();
    let reader = grant.clone();
    let reads = tokio::task::spawn_blocking(move || {
        let items: Vec<_> = wanted.iter().map(|(_, id, v, _)| (*id, Some(*v))).collect();
        let reads = service.read_many(reader.caller(), &items, purpose, AccessAction::History, now_ms())?;
        Ok::<_, RecordError>(reads.into_iter().map(Result::ok).collect::<Vec<_>>())
    })
    .await
    .map_err(|_| FhirError::new(StatusCode::INTERNAL_SERVER_ERROR, IssueCode::Exception, "read task failed"))??;
    let links = page_links(&format!("{}/fhir/{resource_type}/_history", app.public_base()), count, offset, total);
    let mut bundle = format!(r#"{{"resourceType":"Bundle","type":"history","total":{total},"link":{links},"entry":["#);
    let mut first = true;
    for ((_, record, version, at_ms), read) in page.iter().zip(reads) {
        let Some(read) = read else { continue };
        if !first {
            bundle.push(',');
        }
        first = false;
        push_history_entry(&mut bundle, &resource_type, record, *version, *at_ms, &read.plaintext);
    }
    bundle.push_str("]}");
    Ok(bundle_response(bundle))
}

/// `_count` (1 to `max`, default `max`) and `_offset` of a paged endpoint (`what`, for the
/// message); any other parameter is refused as not supported.
pub(crate) fn paging(
    query: &std::collections::HashMap<String, String>,
    max: usize,
    what: &str,
) -> Result<(usize, usize), FhirError> {
    let bad = |m: String| FhirError::new(StatusCode::BAD_REQUEST, IssueCode::Value, m);
    let (mut count, mut offset) = (max, 0usize);
    for (key, value) in query {
        match key.as_str() {
            "_count" => {
                count = value
                    .parse::<usize>()
                    .ok()
                    .filter(|c| (1..=max).contains(c))
                    .ok_or_else(|| bad(format!("_count must be 1 to {max}")))?;
            }
            "_offset" => {
                offset = value
                    .parse::<usize>()
                    .ok()
                    .filter(|o| *o <= OFFSET_MAX)
                    .ok_or_else(|| bad(format!("_offset must be a number up to {OFFSET_MAX}")))?;
            }
            other => {
                return Err(FhirError::new(
                    StatusCode::BAD_REQUEST,
                    IssueCode::NotSupported,
                    format!("{what} supports _count and _offset, not {}", crate::error::echo(other)),
                ));
            }
        }
    }
    Ok((count, offset))
}

/// A Bundle's `link` array: `self`, and `next` while there is more.
pub(crate) fn page_links(path: &str, count: usize, offset: usize, total: usize) -> String {
    let mut links = format!(r#"[{{"relation":"self","url":"{path}?_count={count}&_offset={offset}"}}"#);
    if offset.saturating_add(count) < total {
        links.push_str(&format!(r#",{{"relation":"next","url":"{path}?_count={count}&_offset={}"}}"#, offset + count));
    }
    links.push(']');
    links
}

/// One entry of a history Bundle: the version with the server's `id` and `meta`, or, for a
/// delete marker, the DELETE with no resource.
pub(crate) fn push_history_entry(
    bundle: &mut String,
    resource_type: &str,
    record: &RecordId,
    version: u32,
    at_ms: u64,
    plaintext: &[u8],
) {
    let id_hex = record.to_hex();
    let last_updated = instant_from_ms(at_ms);
    let response = |status: &str, outcome: &str| {
        format!(
            r#""response":{{"status":"{status}","etag":"W/\"{version}\"","lastModified":"{last_updated}"{outcome}}}"#
        )
    };
    if is_tombstone(plaintext) {
        bundle.push_str(&format!(
            r#"{{"fullUrl":"/fhir/{resource_type}/{id_hex}","request":{{"method":"DELETE","url":"{resource_type}/{id_hex}"}},{}}}"#,
            response("204 No Content", "")
        ));
        return;
    }
    let (method, url, status) = if version == 1 {
        ("POST", resource_type.to_owned(), "201 Created")
    } else {
        ("PUT", format!("{resource_type}/{id_hex}"), "200 OK")
    };
    let request = format!(r#""request":{{"method":"{method}","url":"{url}"}}"#);
    match served_resource(resource_type, record, version, at_ms, plaintext) {
        Some(resource) => bundle.push_str(&format!(
            r#"{{"fullUrl":"/fhir/{resource_type}/{id_hex}","resource":{resource},{request},{}}}"#,
            response(status, "")
        )),
        // Listed without its content, saying why, rather than failing the whole history.
        None => {
            let outcome = format!(r#","outcome":{}"#, unservable_outcome(&[(resource_type, *record, version)]));
            bundle.push_str(&format!(
                r#"{{"fullUrl":"/fhir/{resource_type}/{id_hex}",{request},{}}}"#,
                response(status, &outcome)
            ));
        }
    }
}

/// A stored version with the server's `id` and `meta` spliced in, as UTF-8 text; `None` when
/// it cannot be (no write path accepts such bytes any more, but a version stored before, or
/// by another node, may be one). Logged, so an operator sees it.
pub(crate) fn served_resource(
    resource_type: &str,
    record: &RecordId,
    version: u32,
    at_ms: u64,
    stored: &[u8],
) -> Option<String> {
    let (id_hex, version_text, last_updated) = (record.to_hex(), version.to_string(), instant_from_ms(at_ms));
    let meta = ServerMeta { id: &id_hex, version_id: &version_text, last_updated: &last_updated };
    match with_server_meta(stored, &meta).map(String::from_utf8) {
        Ok(Ok(text)) => Some(text),
        Ok(Err(_)) | Err(_) => {
            tracing::warn!(%resource_type, record = %id_hex, version, "a stored version cannot be served; left out");
            None
        }
    }
}

/// An OperationOutcome naming stored versions left out of an answer because they cannot be
/// served (see [`served_resource`]).
pub(crate) fn unservable_outcome(left_out: &[(&str, RecordId, u32)]) -> String {
    let issues: Vec<Issue> = left_out
        .iter()
        .map(|(resource_type, record, version)| Issue {
            severity: Severity::Warning,
            code: IssueCode::Processing,
            expression: None,
            diagnostics: format!(
                "{resource_type}/{} version {version} is stored in a form this server cannot serve \
                 (not valid FHIR JSON); it is left out",
                record.to_hex()
            ),
        })
        .collect();
    medledger_fhir::operation_outcome(&issues)
}

/// A 200 answer carrying a FHIR JSON body that must not be cached.
pub(crate) fn bundle_response(body: String) -> Response {
    let mut response = (StatusCode::OK, body).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Most versions one history answer carries (each is decrypted and audited).
pub const HISTORY_VERSIONS_MAX: usize = 100;

/// Versions whose records' consent a type history decides per hold of the state's read lock.
const CONSENT_CHUNK: usize = 1_024;

/// The consent category of a new resource (Observations by their category coding).
pub(crate) fn category_of(resource_type: &str, json: &serde_json::Value) -> Result<&'static str, FhirError> {
    match categories_of_resource_type(resource_type) {
        [one] => Ok(one),
        [] => Err(not_found(format!("{resource_type} is not patient data"))),
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
                FhirError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    IssueCode::BusinessRule,
                    "an Observation cannot be both laboratory and vital-signs (observation-category code \
                     system): consent is given per category",
                )
            })
        }
    }
}

/// `GET /fhir/metadata`: exactly what this server does.
pub(crate) async fn metadata(State(app): State<AppState>) -> Response {
    // The configured public base, never the request's Host header: a client controls that, and
    // a token URL built from it would send the next client's credentials elsewhere.
    let base = app.public_base();
    let resources: Vec<serde_json::Value> = SERVED_TYPES
        .iter()
        .map(|t| {
            let mut resource = serde_json::json!({
                "type": t,
                "interaction": [
                    {"code": "read"}, {"code": "vread"}, {"code": "create"}, {"code": "update"},
                    {"code": "delete"}, {"code": "history-instance"}, {"code": "history-type"},
                    {"code": "search-type"}
                ],
                "searchParam": crate::fhir_search::declared_params(t),
                "searchInclude": ["*"],
                "searchRevInclude": ["*"],
                "versioning": "versioned",
                "readHistory": true,
                "updateCreate": false,
                "conditionalCreate": true,
                "conditionalUpdate": false,
                "conditionalDelete": "not-supported",
            });
            if *t == "Patient" {
                resource["operation"] = serde_json::json!([{
                    "name": "everything",
                    "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything"
                }]);
            }
            resource
        })
        .collect();
    let mut resources = resources;
    // The consortium directory: in clear, no consent.
    for t in medledger_types::DIRECTORY_RESOURCE_TYPES {
        resources.push(serde_json::json!({
            "type": t,
            "interaction": [
                {"code": "read"}, {"code": "vread"}, {"code": "create"}, {"code": "update"},
                {"code": "delete"}, {"code": "history-instance"}, {"code": "history-type"},
                {"code": "search-type"}
            ],
            "searchParam": crate::fhir_search::declared_params(t),
            "searchInclude": ["*"],
            "searchRevInclude": ["*"],
            "versioning": "versioned",
            "readHistory": true,
            "updateCreate": false,
            "conditionalCreate": true,
            "conditionalUpdate": false,
            "conditionalDelete": "not-supported",
            "documentation": "consortium directory: committed on-chain in clear, readable with the type's scope alone",
        }));
    }
    resources.push(serde_json::json!({
        "type": "Consent",
        "interaction": [{"code": "read"}, {"code": "create"}, {"code": "update"}, {"code": "delete"}, {"code": "search-type"}],
        "searchParam": [{"name": "patient", "type": "reference", "documentation": "required: Patient/<id>"}],
        "documentation": "the patient's on-chain grants; create makes the grant a Consent describes exactly (or is refused), delete or update to inactive revokes; written by the patient or their delegate, signed by this node as the patient's appointed gateway delegate",
        "conditionalCreate": false,
    }));
    resources.push(serde_json::json!({
        "type": "Provenance",
        "interaction": [{"code": "search-type"}],
        "searchParam": [{"name": "target", "type": "reference", "documentation": "required: <Type>/<id>; one Provenance per version"}],
    }));
    resources.push(serde_json::json!({
        "type": "AuditEvent",
        "interaction": [{"code": "search-type"}],
        "searchParam": [{"name": "patient", "type": "reference", "documentation": "required: Patient/<id>; results paged with _count and _offset"}],
    }));
    let head = app.chain.head();
    let mut statement = serde_json::json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": instant_from_ms(head.timestamp_ms.max(app.chain.genesis().genesis_time_ms)),
        "kind": "instance",
        "software": {"name": "medledger", "version": env!("CARGO_PKG_VERSION")},
        "implementation": {"description": format!("medledger node of {}", app.chain.genesis().chain_name), "url": format!("{base}/fhir")},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json"],
        "rest": [{
            "mode": "server",
            "security": {
                "service": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/restful-security-service", "code": "SMART-on-FHIR"}]}],
                "description": "SMART Backend Services: POST /auth/token with an EdDSA client_assertion; scopes and the patient's consent are both enforced.",
                "extension": [{
                    "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                    "extension": [{"url": "token", "valueUri": format!("{base}/auth/token")}]
                }]
            },
            "resource": resources,
        }],
    });
    crate::fhir_export::declare_operations(&mut statement);
    let mut response = (StatusCode::OK, statement.to_string()).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    response
}

/// Any other `/fhir/...` path: an OperationOutcome rather than the API's JSON error.
pub(crate) async fn not_supported() -> FhirError {
    FhirError::new(
        StatusCode::NOT_FOUND,
        IssueCode::NotSupported,
        "this FHIR interaction is not supported here (see /fhir/metadata)",
    )
}
