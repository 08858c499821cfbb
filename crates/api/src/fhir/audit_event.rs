//! `GET /fhir/AuditEvent?patient=Patient/{id}`: the on-chain access events about a patient as
//! R4 AuditEvents shaped after IHE BALP, each naming the ledger transaction and log index that
//! prove it. For the patient, and for the staff and systems of an organisation holding the
//! patient's records (who see the events about their own records only).

use axum::{
    extract::State,
    http::{HeaderMap, StatusCode},
    response::Response,
};
use medledger_fhir::{IssueCode, instant::instant_from_ms};
use medledger_ledger::AccessAction;
use medledger_records::trail::TrailError;
use medledger_types::{IdentityId, RecordId};

use crate::{
    app::AppState,
    clock::now_ms,
    fhir::{
        credentials::{authorize, on_chain, purpose},
        errors::{FhirError, forbidden, not_found},
        paging::{count_param, offset_param},
        render::bundle_response,
        served::{IDENTITY_SYSTEM, LEDGER_LOG_INDEX_EXTENSION, LEDGER_TX_EXTENSION},
    },
    smart::scopes::interactions,
};

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
            "_count" => count = count_param(value, AUDIT_PAGE_MAX)?,
            "_offset" => offset = offset_param(value)?,
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
    let caller = grant.identity;
    let trail = on_chain(&app, move |chain, _| {
        medledger_records::trail::audit_trail(chain, &caller, &patient_record, purpose, (count, offset), now_ms())
    })
    .await?
    .map_err(|e| match e {
        TrailError::NotOverseer => forbidden(e.to_string()),
        TrailError::Unknown => not_found(format!("no Patient {}", crate::error::echo(&patient_ref))),
    })?;
    let (patient, total) = (trail.patient, trail.total);
    let chain_id = app.chain.genesis().chain_id().to_hex();
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
    for item in &trail.entries {
        let recorder = (&item.entry.recorder, item.recorder_name.as_str());
        let resource = audit_event(&item.entry, &patient, &chain_id, item.resource_type.as_deref(), recorder);
        let id = resource["id"].as_str().unwrap_or_default().to_owned();
        bundle["entry"].as_array_mut().expect("entry is an array").push(serde_json::json!({
            "fullUrl": format!("{}/fhir/AuditEvent/{id}", app.public_base()),
            "resource": resource,
            "search": {"mode": "match"},
        }));
    }
    Ok(bundle_response(bundle.to_string()))
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
