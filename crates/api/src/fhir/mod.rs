//! The FHIR R4 REST API (`/fhir`): the CapabilityStatement; create, read, vread, update,
//! logical delete, history and search of the patient-record types and the consortium
//! directory; transaction and batch Bundles; `Patient/$everything`; Bulk Data export; Consent
//! over the ledger's grants; read-only Provenance and AuditEvent views of the ledger. All
//! through the same encryption, consent enforcement and on-chain audit as the record
//! endpoints; `docs/fhir.md` describes it.
//!
//! Every request carries a SMART bearer token (`smart`); its scopes must allow the
//! interaction on the type, and then consent (`records::access`) must allow the caller on the
//! record: both, never either. Logical ids are record ids in hex (64 characters, a valid FHIR
//! id), so an id never needs a lookup table and never leaks anything. Stored bytes are exactly
//! what the client sent; reads return them with the server's `id` and `meta` spliced in
//! (`medledger_fhir::splice`), never re-serialized. Errors are OperationOutcomes.
//!
//! One module per interaction, each answering its routes: `crud` (create, read, vread, update,
//! delete), `history`, `search`, `everything`, `bundle/` (Bundles: entries, planning,
//! execution), `export/` (Bulk Data: kick-off, the job, status and files), `consent/` (the
//! grant↔Consent mapping, reads, writes), `provenance`, `audit_event` and `capability`.
//! Beneath them, what they share and never each other: `errors` (OperationOutcomes), `served`
//! (the served types and medledger's identifier systems and extensions), `request`, `paging`,
//! `render` (stored versions as answers), `credentials` (bearer grant, scopes, purpose,
//! audit of refusals), `commit` (waiting for a write to commit),
//! `conditional` (conditional creates) and `directory` (the directory types,
//! which `crud` and `history` hand on). This module only wires the routes and re-exports the
//! public constants; no module below imports it (the crate docs give the layering, and a test
//! keeps it).

use axum::{
    Router,
    extract::DefaultBodyLimit,
    routing::{get, post},
};

use crate::app::AppState;

pub(crate) mod audit_event;
pub(crate) mod bundle;
pub(crate) mod capability;
pub(crate) mod commit;
pub(crate) mod conditional;
pub(crate) mod consent;
pub(crate) mod credentials;
pub(crate) mod crud;
pub(crate) mod directory;
pub(crate) mod errors;
pub(crate) mod everything;
pub(crate) mod export;
pub(crate) mod history;
pub(crate) mod paging;
pub(crate) mod provenance;
pub(crate) mod render;
pub(crate) mod request;
pub(crate) mod search;
pub(crate) mod served;

pub use audit_event::{AUDIT_PAGE_DEFAULT, AUDIT_PAGE_MAX};
pub use everything::EVERYTHING_PAGE_MAX;
pub use paging::{HISTORY_VERSIONS_MAX, OFFSET_MAX};
pub use served::{
    CATEGORY_SYSTEM, GRANT_ORIGIN_EXTENSION, IDENTITY_SYSTEM, LEDGER_LOG_INDEX_EXTENSION, LEDGER_TX_EXTENSION,
    SERVED_TYPES,
};

/// `router` with the `/fhir` routes added: each interaction's handlers, with the record body
/// limit on the routes that take a resource and the Bundle's on `POST /fhir`.
pub(crate) fn routes(router: Router<AppState>) -> Router<AppState> {
    router
        .route("/fhir", post(bundle::bundle).layer(DefaultBodyLimit::max(crate::http_limits::BUNDLE_BODY_BYTES_MAX)))
        // Clients post to the base with or without its trailing slash (fhirpy: with).
        .route("/fhir/", post(bundle::bundle).layer(DefaultBodyLimit::max(crate::http_limits::BUNDLE_BODY_BYTES_MAX)))
        .route("/fhir/metadata", get(capability::metadata))
        .route("/fhir/AuditEvent", get(audit_event::audit_events))
        .route("/fhir/Provenance", get(provenance::provenance))
        .route("/fhir/Consent", get(consent::read::consents).post(consent::write::create))
        .route(
            "/fhir/Consent/{id}",
            get(consent::read::consent).put(consent::write::update).delete(consent::write::delete),
        )
        .route(
            "/fhir/{type}",
            post(crud::create)
                .layer(DefaultBodyLimit::max(crate::http_limits::RECORD_BODY_BYTES_MAX))
                .get(search::search)
                .put(errors::not_supported)
                .delete(errors::not_supported),
        )
        .route(
            "/fhir/{type}/{id}",
            get(crud::read)
                .put(crud::update)
                .layer(DefaultBodyLimit::max(crate::http_limits::RECORD_BODY_BYTES_MAX))
                .delete(crud::delete)
                .post(errors::not_supported),
        )
        .route("/fhir/{type}/_history", get(history::type_history))
        .route("/fhir/{type}/{id}/_history", get(history::history))
        .route("/fhir/Patient/{id}/$everything", get(everything::everything))
        .route("/fhir/$export", get(export::kick_off::export_system).post(export::kick_off::kick_off_method))
        .route("/fhir/Patient/$export", get(export::kick_off::export_patients).post(export::kick_off::kick_off_method))
        .route("/fhir/Group/{id}/$export", get(export::kick_off::export_group).post(export::kick_off::kick_off_method))
        .route("/fhir/$export-status/{job}", get(export::status::status).delete(export::status::delete))
        .route("/fhir/$export-file/{job}/{file}", get(export::status::file))
        .route("/fhir/{type}/{id}/_history/{vid}", get(crud::vread))
}
