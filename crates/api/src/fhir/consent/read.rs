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
use medledger_records::consents::{self, ConsentError};
use medledger_types::RecordId;

use crate::{
    app::AppState,
    clock::now_ms,
    fhir::{
        credentials::{authorize, on_chain, purpose},
        errors::{FhirError, forbidden, not_found},
        render::bundle_response,
    },
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
    let caller = grant.identity;
    let resources = on_chain(&app, move |chain, _| consents::consents_of(chain, &caller, &record, purpose, now_ms()))
        .await?
        .map_err(|e| match e {
            ConsentError::NotOverseer => forbidden(e.to_string()),
            _ => not_found(format!("no Patient {}", crate::error::echo(&patient_ref))),
        })?;
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
    let (caller, id_hex) = (grant.identity, id.clone());
    // A consent the caller may not see answers as one that does not exist.
    let resource = on_chain(&app, move |chain, _| consents::consent_as(chain, &caller, &id_hex, now_ms()).ok_or(()))
        .await?
        .map_err(|()| not_found(format!("no Consent {}", crate::error::echo(&id))))?;
    Ok(bundle_response(resource.to_string()))
}
