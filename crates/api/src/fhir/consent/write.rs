//! Writing Consent: `POST /fhir/Consent` creates the on-chain grant a Consent describes;
//! `DELETE /fhir/Consent/{id}` (or a `PUT` with status `inactive`) revokes it.
//!
//! A grant must be signed by the patient or a live delegate of theirs. FHIR clients hold
//! tokens, not ledger keys, so the node signs — only as the patient's **gateway delegate**:
//! the patient appoints this node's validator identity once (with their own key), and from
//! then on the node signs, for that patient only, the Consents that the patient (or a personal
//! delegate of theirs) writes here with their own token. Without that appointment the answer
//! is 403, saying how to make it.
//!
//! A Consent is mapped exactly or refused with an OperationOutcome naming every reason —
//! never widened: one `permit` provision, no nested provisions, security labels or data
//! periods; one actor named by its on-chain identity; actions `access` (read) and `correct`
//! (write); exactly one purpose; a period with an end; and at most one kind of scope: resource
//! types (`class`), consent categories (`code`), or records (`data`, meaning `instance`).

use axum::{
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use medledger_fhir::{Issue, IssueCode, Severity};
use medledger_ledger::{Payload, Purpose, Scope, actions};
use medledger_types::{IdentityId, RecordId, Role, TxId, limits};

use crate::{
    app::AppState,
    clock::now_ms,
    fhir::{
        commit::wait_for_commit,
        consent::resource::consent_resource,
        credentials::{authorize, records},
        errors::{FHIR_JSON, FhirError, forbidden, not_found},
        request::check_content_type,
        served::{CATEGORY_SYSTEM, IDENTITY_SYSTEM, SERVED_TYPES},
    },
    smart::scopes::interactions,
};

const CONSENT_ACTION: &str = "http://terminology.hl7.org/CodeSystem/consentaction";
const CONSENT_SCOPE: &str = "http://terminology.hl7.org/CodeSystem/consentscope";
const ACT_REASON: &str = "http://terminology.hl7.org/CodeSystem/v3-ActReason";
const RESOURCE_TYPES: &str = "http://hl7.org/fhir/resource-types";

fn unprocessable(reasons: Vec<String>) -> FhirError {
    let issues = reasons
        .into_iter()
        .map(|diagnostics| Issue {
            severity: Severity::Error,
            code: IssueCode::NotSupported,
            expression: None,
            diagnostics,
        })
        .collect();
    FhirError::with_issues(StatusCode::UNPROCESSABLE_ENTITY, issues)
}

/// The identity a Reference names with a `urn:medledger:identity` identifier, or a
/// `Patient/<id>` reference to a Patient stored here.
fn identity_of(state: &medledger_ledger::State, reference: &serde_json::Value) -> Option<IdentityId> {
    if reference["identifier"]["system"] == IDENTITY_SYSTEM {
        return reference["identifier"]["value"].as_str().and_then(|v| IdentityId::from_hex(v).ok());
    }
    let id = reference["reference"].as_str()?.strip_prefix("Patient/")?;
    let head = state.record(&RecordId::from_hex(id).ok()?)?;
    (head.resource_type == "Patient").then_some(head.patient)
}

fn codings(value: &serde_json::Value) -> Vec<&serde_json::Value> {
    value["coding"].as_array().into_iter().flatten().collect()
}

/// The grant a Consent describes, exactly, or every reason it cannot be expressed.
fn grant_of(
    state: &medledger_ledger::State,
    json: &serde_json::Value,
    now: u64,
) -> Result<(IdentityId, Payload), Vec<String>> {
    let mut why = Vec::new();
    if json["status"] != "active" {
        why.push(format!(
            "only an active Consent creates a grant (status is {}); to end one, DELETE it",
            json["status"]
        ));
    }
    if !codings(&json["scope"]).iter().any(|c| c["system"] == CONSENT_SCOPE && c["code"] == "patient-privacy") {
        why.push("scope must be patient-privacy (consentscope): medledger enforces privacy consents".into());
    }
    let patient =
        identity_of(state, &json["patient"]).filter(|p| state.identity(p).is_some_and(|w| w.role == Role::Patient));
    if patient.is_none() {
        why.push(format!(
            "patient must name a patient: Patient/<id> of this server or an identifier of system {IDENTITY_SYSTEM}"
        ));
    }
    let p = &json["provision"];
    if !p.is_object() {
        why.push("a provision is required: it is the grant".into());
        return Err(why);
    }
    if p["type"] != "permit" {
        why.push(
            "provision.type must be permit: medledger grants access and has no deny rules (revoke instead)".into(),
        );
    }
    for unsupported in ["provision", "securityLabel", "dataPeriod"] {
        if !p[unsupported].is_null() {
            why.push(format!("provision.{unsupported} cannot be enforced exactly and is not accepted"));
        }
    }
    let actors = p["actor"].as_array().map(Vec::as_slice).unwrap_or_default();
    let grantee = match actors {
        [actor] => {
            let grantee = identity_of(state, &actor["reference"]);
            match grantee.and_then(|g| state.identity(&g)) {
                Some(who) if matches!(who.role, Role::Organisation | Role::Practitioner | Role::SystemClient) => {
                    grantee
                }
                _ => {
                    why.push(format!(
                        "provision.actor must name an organisation, practitioner or system client by its on-chain \
                         identity (reference.identifier of system {IDENTITY_SYSTEM})"
                    ));
                    None
                }
            }
        }
        _ => {
            why.push("provision.actor must name exactly one grantee (one grant each)".into());
            None
        }
    };
    let mut granted = 0u8;
    let action_list = p["action"].as_array().map(Vec::as_slice).unwrap_or_default();
    for action in action_list {
        for coding in codings(action) {
            match (coding["system"].as_str(), coding["code"].as_str()) {
                (Some(CONSENT_ACTION), Some("access")) => granted |= actions::READ,
                (Some(CONSENT_ACTION), Some("correct")) => granted |= actions::WRITE,
                _ => why.push(format!(
                    "provision.action {} is not one of access (read) or correct (write)",
                    coding["code"]
                )),
            }
        }
    }
    if granted == 0 {
        why.push("provision.action must say what is allowed: access (read) and/or correct (write)".into());
    }
    let purposes = p["purpose"].as_array().map(Vec::as_slice).unwrap_or_default();
    let purpose = match purposes {
        [one] if one["system"] == ACT_REASON => one["code"].as_str().and_then(Purpose::parse),
        _ => None,
    };
    if purpose.is_none() {
        why.push(
            "provision.purpose must be exactly one of TREAT, HPAYMT, HOPERAT, HRESCH, ETREAT (v3-ActReason)".into(),
        );
    }
    let period = &p["period"];
    let start = period["start"].as_str().map(medledger_fhir::search::date::parse_range);
    let end = period["end"].as_str().map(medledger_fhir::search::date::parse_range);
    // The narrowest reading of each bound: the latest start and the earliest end it allows.
    let valid_from_ms = match start {
        None => Some(now),
        Some(Some((_, high))) => u64::try_from(high).ok(),
        Some(None) => None,
    };
    let valid_until_ms = match end {
        Some(Some((low, _))) => u64::try_from(low).ok(),
        _ => None,
    };
    if valid_from_ms.is_none() {
        why.push("provision.period.start is not a valid dateTime".into());
    }
    if valid_until_ms.is_none() {
        why.push("provision.period.end is required (a valid dateTime): grants end".into());
    }
    // At most one kind of scope, so that the grant is exactly the Consent.
    let classes: Vec<&serde_json::Value> = p["class"].as_array().into_iter().flatten().collect();
    let codes: Vec<&serde_json::Value> = p["code"].as_array().into_iter().flatten().flat_map(codings).collect();
    let data: Vec<&serde_json::Value> = p["data"].as_array().into_iter().flatten().collect();
    let kinds = [!classes.is_empty(), !codes.is_empty(), !data.is_empty()].iter().filter(|k| **k).count();
    let scope = if kinds > 1 {
        why.push("use one of provision.class, provision.code or provision.data: their combination cannot be enforced exactly".into());
        None
    } else if !classes.is_empty() {
        let mut types = Vec::new();
        for class in classes {
            match (class["system"].as_str(), class["code"].as_str()) {
                (Some(RESOURCE_TYPES), Some(t)) if SERVED_TYPES.contains(&t) => types.push(t.to_owned()),
                _ => why.push(format!("provision.class {} is not a patient-record resource type", class["code"])),
            }
        }
        Some(Scope::ResourceTypes(types))
    } else if !codes.is_empty() {
        let mut categories = Vec::new();
        for code in codes {
            match (code["system"].as_str(), code["code"].as_str()) {
                (Some(CATEGORY_SYSTEM), Some(c)) if medledger_types::is_category(c) => categories.push(c.to_owned()),
                _ => why.push(format!(
                    "provision.code {} is not a medledger consent category ({CATEGORY_SYSTEM})",
                    code["code"]
                )),
            }
        }
        Some(Scope::Categories(categories))
    } else if !data.is_empty() {
        let mut records = Vec::new();
        for item in data {
            let record = item["reference"]["reference"]
                .as_str()
                .and_then(|r| r.split_once('/'))
                .and_then(|(_, id)| RecordId::from_hex(id).ok())
                .filter(|id| state.record(id).is_some_and(|h| Some(h.patient) == patient));
            match (item["meaning"].as_str(), record) {
                (Some("instance"), Some(id)) => records.push(id),
                (Some("instance"), None) => why.push(format!(
                    "provision.data {} is not a record of this patient here",
                    item["reference"]["reference"]
                )),
                _ => why.push("provision.data meaning must be instance (the record itself)".into()),
            }
        }
        Some(Scope::Records(records))
    } else {
        Some(Scope::All)
    };
    let too_many = match &scope {
        Some(Scope::ResourceTypes(v)) | Some(Scope::Categories(v)) => v.len() > limits::SCOPE_ITEMS_MAX,
        Some(Scope::Records(v)) => v.len() > limits::SCOPE_ITEMS_MAX,
        _ => false,
    };
    if too_many {
        why.push(format!("a grant names at most {} items", limits::SCOPE_ITEMS_MAX));
    }
    match (why.is_empty(), patient, grantee, purpose, valid_from_ms, valid_until_ms, scope) {
        (true, Some(patient), Some(grantee), Some(purpose), Some(valid_from_ms), Some(valid_until_ms), Some(scope)) => {
            Ok((
                patient,
                Payload::ConsentGrant {
                    patient,
                    grantee,
                    scope,
                    actions: granted,
                    purpose,
                    valid_from_ms,
                    valid_until_ms,
                },
            ))
        }
        _ => Err(why),
    }
}

/// Checks that the caller may write `patient`'s consent and that this node is the patient's
/// gateway delegate.
fn check_acting_for(app: &AppState, caller: &IdentityId, patient: &IdentityId) -> Result<(), FhirError> {
    let service = records(app)?;
    let gateway = service.node_identity();
    let state = app.chain.snapshot();
    let now = now_ms().max(state.head_timestamp_ms());
    if !acts_for(&state, caller, patient) {
        return Err(forbidden("only the patient, or a personal delegate of theirs, writes their consent"));
    }
    if !state.is_live_delegate(patient, &gateway, now) {
        return Err(forbidden(format!(
            "this node signs consents only for patients who appointed it as their delegate: appoint identity {} \
             (`medledger consent delegate add --key <your key file> --delegate {}`), then retry",
            gateway.to_hex(),
            gateway.to_hex()
        )));
    }
    Ok(())
}

/// Whether `caller` may write `patient`'s consent: the patient, or a personal delegate (a
/// parent, a guardian); this node, or another gateway, may not ask itself.
fn acts_for(state: &medledger_ledger::State, caller: &IdentityId, patient: &IdentityId) -> bool {
    let now = now_ms().max(state.head_timestamp_ms());
    let personal = state.is_live_delegate(patient, caller, now)
        && state.identity(caller).is_some_and(|w| matches!(w.role, Role::Patient | Role::Practitioner));
    caller == patient || personal
}

/// Submits `payload` signed by this node as the patient's gateway delegate and waits for it.
async fn submit(app: &AppState, payload: Payload) -> Result<(TxId, bool), FhirError> {
    let service = records(app)?;
    let tx =
        tokio::task::spawn_blocking(move || service.submit_as_gateway(payload, now_ms())).await.map_err(|_| {
            FhirError::new(StatusCode::INTERNAL_SERVER_ERROR, IssueCode::Exception, "consent task failed")
        })??;
    let committed = app.fhir_commit_wait_ms == 0 || wait_for_commit(app, &tx).await?;
    Ok((tx, committed))
}

/// `POST /fhir/Consent`.
pub(crate) async fn create(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, FhirError> {
    let token = authorize(&app, &headers, "Consent", interactions::CREATE)?;
    check_content_type(&headers)?;
    let validated =
        medledger_fhir::validate(&body).map_err(|issues| FhirError::with_issues(StatusCode::BAD_REQUEST, issues))?;
    if validated.resource_type != "Consent" {
        return Err(FhirError::new(
            StatusCode::BAD_REQUEST,
            IssueCode::Invalid,
            format!("the body is a {}, the URL says Consent", validated.resource_type),
        ));
    }
    let json: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| FhirError::new(StatusCode::BAD_REQUEST, IssueCode::Invalid, e.to_string()))?;
    let (patient, payload) = {
        let state = app.chain.snapshot();
        grant_of(&state, &json, now_ms().max(state.head_timestamp_ms())).map_err(unprocessable)?
    };
    check_acting_for(&app, &token.identity, &patient)?;
    let (tx, committed) = submit(&app, payload).await?;
    let location = format!("/fhir/Consent/{}", tx.to_hex());
    let mut response = if committed {
        let state = app.chain.snapshot();
        let grant = state.grant(&tx).ok_or_else(|| not_found("the grant is gone"))?;
        let body = consent_resource(&state, grant, now_ms().max(state.head_timestamp_ms())).to_string();
        (StatusCode::CREATED, body).into_response()
    } else {
        StatusCode::ACCEPTED.into_response()
    };
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    if let Ok(v) = HeaderValue::from_str(&location) {
        headers.insert(header::LOCATION, v);
    }
    if let Ok(v) = HeaderValue::from_str(&tx.to_hex()) {
        headers.insert("x-medledger-tx", v);
    }
    Ok(response)
}

/// The live consent grant `id` names, with its patient. To a caller who may not write the
/// patient's consent, a grant that exists answers as one that does not: whether it exists, or
/// was revoked, is not theirs to learn.
fn live_grant(app: &AppState, caller: &IdentityId, id: &str) -> Result<(TxId, IdentityId), FhirError> {
    let unknown = || not_found(format!("no Consent {}", crate::error::echo(id)));
    let grant_id = TxId::from_hex(id).map_err(|_| unknown())?;
    let state = app.chain.snapshot();
    let grant = state.grant(&grant_id).ok_or_else(unknown)?;
    if !acts_for(&state, caller, &grant.patient) {
        return Err(unknown());
    }
    if grant.revoked_at.is_some() {
        return Err(FhirError::new(StatusCode::GONE, IssueCode::Deleted, "this consent is already revoked"));
    }
    Ok((grant_id, grant.patient))
}

async fn revoke(app: &AppState, headers: &HeaderMap, id: &str, interaction: u8) -> Result<Response, FhirError> {
    let token = authorize(app, headers, "Consent", interaction)?;
    let (grant_id, patient) = live_grant(app, &token.identity, id)?;
    check_acting_for(app, &token.identity, &patient)?;
    let (tx, committed) = submit(app, Payload::ConsentRevoke { grant_id }).await?;
    let mut response = if committed { StatusCode::NO_CONTENT } else { StatusCode::ACCEPTED }.into_response();
    if let Ok(v) = HeaderValue::from_str(&tx.to_hex()) {
        response.headers_mut().insert("x-medledger-tx", v);
    }
    Ok(response)
}

/// `DELETE /fhir/Consent/{id}`: revokes the grant.
pub(crate) async fn delete(
    State(app): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, FhirError> {
    revoke(&app, &headers, &id, interactions::DELETE).await
}

/// `PUT /fhir/Consent/{id}`: only to end it (status `inactive` or `rejected`); grants are never
/// edited in place.
pub(crate) async fn update(
    State(app): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, FhirError> {
    check_content_type(&headers)?;
    let json: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| FhirError::new(StatusCode::BAD_REQUEST, IssueCode::Invalid, e.to_string()))?;
    if json["resourceType"] != "Consent" || json["id"].as_str() != Some(id.as_str()) {
        return Err(FhirError::new(
            StatusCode::BAD_REQUEST,
            IssueCode::Invalid,
            "the body must be the Consent with the URL's id",
        ));
    }
    match json["status"].as_str() {
        Some("inactive" | "rejected") => revoke(&app, &headers, &id, interactions::UPDATE).await,
        _ => Err(unprocessable(vec![
            "a grant is never edited: PUT it with status inactive (or DELETE it) to revoke, and POST a new Consent"
                .into(),
        ])),
    }
}
