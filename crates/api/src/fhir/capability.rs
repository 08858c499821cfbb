//! `GET /fhir/metadata`: the CapabilityStatement, saying exactly what this server does: the
//! record and directory types with their interactions and search parameters, Consent,
//! Provenance and AuditEvent, `Patient/$everything`, the Bulk Data export operations, and the
//! SMART token endpoint (under the configured public base, never the request's `Host`).

use axum::{
    extract::State,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use medledger_fhir::instant::instant_from_ms;

use crate::{
    app::AppState,
    fhir::{errors::FHIR_JSON, served::SERVED_TYPES},
};

/// `GET /fhir/metadata`: exactly what this server does.
pub(crate) async fn metadata(State(app): State<AppState>) -> Response {
    // The configured public base, never the request's Host header: a client controls that, and
    // a token URL built from it would send the next client's credentials elsewhere.
    let base = app.public_base();
    let mut resources: Vec<serde_json::Value> = SERVED_TYPES
        .iter()
        .map(|t| {
            let mut resource = stored_type(t);
            if *t == "Patient" {
                resource["operation"] = serde_json::json!([{
                    "name": "everything",
                    "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything"
                }]);
            }
            resource
        })
        .collect();
    // The consortium directory: in clear, no consent.
    for t in medledger_types::DIRECTORY_RESOURCE_TYPES {
        let mut resource = stored_type(t);
        resource["documentation"] =
            "consortium directory: committed on-chain in clear, readable with the type's scope alone".into();
        resources.push(resource);
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
    declare_operations(&mut statement);
    let mut response = (StatusCode::OK, statement.to_string()).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    response
}

const BULK_OPERATION: &str = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition";

/// Declares the export operations in the CapabilityStatement (`/fhir/metadata`): system
/// `export`, `Patient` `export`, and `Group` `export` (Group has no other interaction).
pub(crate) fn declare_operations(statement: &mut serde_json::Value) {
    let operation = |name: &str, documentation: &str| serde_json::json!({"name": "export", "definition": format!("{BULK_OPERATION}/{name}"), "documentation": documentation});
    let rest = &mut statement["rest"][0];
    if let Some(resources) = rest["resource"].as_array_mut() {
        if let Some(patient) = resources.iter_mut().find(|r| r["type"] == "Patient") {
            let export = operation(
                "patient-export",
                "Bulk Data export of every patient's records the client may read (Prefer: respond-async)",
            );
            match patient["operation"].as_array_mut() {
                Some(operations) => operations.push(export),
                None => patient["operation"] = serde_json::json!([export]),
            }
        }
        resources.push(serde_json::json!({
            "type": "Group",
            "documentation": "No Group resources are stored: Group/{id} with id a member organisation's identity id stands for the patients with records in its custody, for $export only.",
            "operation": [operation("group-export", "Bulk Data export of the records of the patients in an organisation's custody that the client may read")],
        }));
    }
    rest["operation"] = serde_json::json!([operation(
        "export",
        "Bulk Data export of every record the client may read; needs system/ scopes (Prefer: respond-async)"
    )]);
}

/// Search parameters the CapabilityStatement declares for `resource_type`.
fn declared_params(resource_type: &str) -> Vec<serde_json::Value> {
    medledger_fhir::search::SearchParams::r4()
        .for_type(resource_type)
        .map(|p| {
            serde_json::json!({
                "name": p.code,
                "definition": p.definition_url(),
                "type": match p.param_type {
                    medledger_fhir::search::ParamType::Token => "token",
                    medledger_fhir::search::ParamType::String => "string",
                    medledger_fhir::search::ParamType::Date => "date",
                    medledger_fhir::search::ParamType::Reference => "reference",
                },
            })
        })
        .collect()
}

/// What every stored type (patient records and the directory alike) declares: the same
/// interactions, search parameters, includes, versioning and conditional support.
fn stored_type(resource_type: &str) -> serde_json::Value {
    serde_json::json!({
        "type": resource_type,
        "interaction": [
            {"code": "read"}, {"code": "vread"}, {"code": "create"}, {"code": "update"},
            {"code": "delete"}, {"code": "history-instance"}, {"code": "history-type"},
            {"code": "search-type"}
        ],
        "searchParam": declared_params(resource_type),
        "searchInclude": ["*"],
        "searchRevInclude": ["*"],
        "versioning": "versioned",
        "readHistory": true,
        "updateCreate": false,
        "conditionalCreate": true,
        "conditionalUpdate": false,
        "conditionalDelete": "not-supported",
    })
}
