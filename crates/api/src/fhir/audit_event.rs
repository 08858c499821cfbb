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
use medledger_types::{IdentityId, RecordId};

use crate::{
    app::AppState,
    fhir::{
        credentials::{authorize, purpose},
        errors::{FhirError, forbidden, not_found},
        paging::{count_param, offset_param},
        render::bundle_response,
        served::{IDENTITY_SYSTEM, LEDGER_LOG_INDEX_EXTENSION, LEDGER_TX_EXTENSION},
    },
    identities::{organisation_of, recorder_display},
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
    // The patient sees every event; an organisation holding their records (and its staff)
    // only the events about its own records: writing one record about a patient must not
    // open their whole trail.
    let (patient, custodian_view) = {
        let state = app.chain.snapshot();
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
        let state = app.chain.snapshot();
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
