//! `GET /fhir/Provenance?target=<Type>/<id>`: one Provenance per version of a record: who wrote
//! it, for which organisation, when it was committed, and the ledger transaction that commits
//! it with that transaction's signature. For whoever may read the record; the lookup is
//! audited as a history access.

use axum::{
    extract::State,
    http::{HeaderMap, StatusCode},
    response::Response,
};
use medledger_fhir::{IssueCode, instant::instant_from_ms};
use medledger_ledger::AccessAction;
use medledger_records::access::{self, AccessRequest};
use medledger_types::IdentityId;

use crate::{
    app::AppState,
    clock::now_ms,
    fhir::{
        credentials::{authorize, purpose, record_audit},
        errors::{FhirError, forbidden, no_such, not_found},
        render::bundle_response,
        request::parse_id,
        served::{IDENTITY_SYSTEM, LEDGER_LOG_INDEX_EXTENSION, LEDGER_TX_EXTENSION, is_tombstone, served},
    },
    smart::scopes::interactions,
};

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
    let decision = access::authorize(&app.chain.snapshot(), &request)
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
