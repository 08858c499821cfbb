//! `GET /fhir/Consent?patient=Patient/{id}` and `GET /fhir/Consent/{grant id}`: a patient's
//! grants as Consents, for the patient, and for an organisation holding the patient's records
//! (and its staff): only the grants that give it access. Anyone else learns nothing, not even
//! that the patient exists.

use axum::{
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    response::Response,
};
use medledger_fhir::IssueCode;
use medledger_records::consent::consent_resource;
use medledger_types::RecordId;

use crate::{
    app::AppState,
    clock::now_ms,
    fhir::{
        credentials::{authorize, purpose},
        errors::{FhirError, forbidden, not_found},
        render::bundle_response,
    },
    identities::{concerns, may_oversee, organisation_of},
    smart::scopes::interactions,
};

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
        let state = app.chain.snapshot();
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
        let state = app.chain.snapshot();
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
