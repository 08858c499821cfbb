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
use medledger_records::history::provenance as provenance_of;
use medledger_types::IdentityId;

use crate::{
    app::AppState,
    clock::now_ms,
    fhir::{
        credentials::{authorize, on_chain, purpose},
        errors::{FhirError, forbidden, refused},
        render::bundle_response,
        request::parse_id,
        served::{IDENTITY_SYSTEM, LEDGER_LOG_INDEX_EXTENSION, LEDGER_TX_EXTENSION, served},
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
    let type_for_read = resource_type.to_owned();
    let versions = on_chain(&app, move |chain, service| {
        provenance_of(chain, service, grant.caller(), &type_for_read, record_id, purpose, now_ms())
    })
    .await?
    .map_err(|e| refused(e, resource_type, id))?;
    let identity =
        |id: &IdentityId| serde_json::json!({"identifier": {"system": IDENTITY_SYSTEM, "value": id.to_hex()}});
    let mut entries = Vec::new();
    for version in &versions {
        let (custodian, signer) = (version.custodian, version.signer);
        let signature = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, version.signature);
        let recorded = instant_from_ms(version.position.committed_at_ms);
        let activity = match (version.version, version.deleted) {
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
