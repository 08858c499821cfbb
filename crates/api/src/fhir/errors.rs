//! How the FHIR API answers a refusal or a failure: an [`FhirError`], rendered as an
//! OperationOutcome (`application/fhir+json`, never cached; a 401 also says `Bearer`), and the
//! mapping of the record service's errors onto HTTP statuses and issue codes. A record the
//! caller may not see answers exactly as one that does not exist ([`no_such`], see
//! `records::resource`).

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use medledger_fhir::{Issue, IssueCode, Severity};
use medledger_records::{RecordError, resource::ResourceError};

pub(crate) const FHIR_JSON: &str = "application/fhir+json; charset=utf-8";

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

/// A content refusal of the record service (`records::content`), with its status and issues.
impl From<medledger_records::content::Refused> for FhirError {
    fn from(refused: medledger_records::content::Refused) -> Self {
        let status = StatusCode::from_u16(refused.status).unwrap_or(StatusCode::UNPROCESSABLE_ENTITY);
        FhirError::with_issues(status, refused.issues)
    }
}

/// A Bundle that cannot be planned (`records::bundle`): its refusal, or the record
/// service's failure.
impl From<medledger_records::bundle::PlanError> for FhirError {
    fn from(e: medledger_records::bundle::PlanError) -> Self {
        match e {
            medledger_records::bundle::PlanError::Refused(refused) => refused.into(),
            medledger_records::bundle::PlanError::Record(e) => e.into(),
        }
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
            RecordError::CountTooBroad { .. } => (StatusCode::UNPROCESSABLE_ENTITY, IssueCode::TooCostly),
            RecordError::Submit(_) | RecordError::CiphertextMissing | RecordError::Audit(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, IssueCode::Transient)
            }
            _ => (StatusCode::INTERNAL_SERVER_ERROR, IssueCode::Exception),
        };
        if status == StatusCode::INSUFFICIENT_STORAGE {
            return FhirError::new(status, code, crate::error::storage_full(&e));
        }
        FhirError::new(status, code, e.to_string())
    }
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

/// What a request about `resource_type/id` answers when no such resource exists — and,
/// word for word, when it exists but the caller may not see it (`records::resource`).
pub(crate) fn no_such(resource_type: &str, id: &str) -> FhirError {
    not_found(format!("no {resource_type} with id {}", crate::error::echo(id)))
}

/// Any other `/fhir/...` path: an OperationOutcome rather than the API's JSON error.
pub(crate) async fn not_supported() -> FhirError {
    FhirError::new(
        StatusCode::NOT_FOUND,
        IssueCode::NotSupported,
        "this FHIR interaction is not supported here (see /fhir/metadata)",
    )
}

/// What refused an interaction on `resource_type`/`id`, in words.
pub(crate) fn refused(error: ResourceError, resource_type: &str, id: &str) -> FhirError {
    match error {
        ResourceError::Unknown => no_such(resource_type, id),
        ResourceError::Gone { version } => FhirError::new(
            StatusCode::GONE,
            IssueCode::Deleted,
            // `id` parsed as an id (hex) before anything could be found deleted.
            format!("{resource_type}/{id} was deleted (version {version}); its history is kept"),
        ),
        ResourceError::NotStaff => {
            forbidden("only the staff and systems of the organisation operating this node write here")
        }
        ResourceError::CategoryChanged => FhirError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            IssueCode::BusinessRule,
            "a record's consent category never changes (e.g. a lab Observation cannot become a vital sign): create a new resource",
        ),
        ResourceError::Changed => {
            FhirError::new(StatusCode::UNPROCESSABLE_ENTITY, IssueCode::BusinessRule, error.to_string())
        }
        ResourceError::Content(refused) => refused.into(),
        ResourceError::Record(error) => error.into(),
    }
}

/// A `PUT` naming no resource the caller may see: this server does not create by update.
pub(crate) fn no_update_as_create(resource_type: &str, id: &str) -> FhirError {
    FhirError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        IssueCode::NotSupported,
        format!(
            "no {resource_type} with id {} exists, and this server does not create resources by update \
             (POST to /fhir/{resource_type} instead)",
            crate::error::echo(id)
        ),
    )
}
