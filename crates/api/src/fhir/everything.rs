//! `GET /fhir/Patient/{id}/$everything`: the latest version of every record of a patient that
//! the caller may read, as a `searchset` Bundle, the Patient first.

use axum::{
    extract::{Path, State},
    http::HeaderMap,
    response::Response,
};
use medledger_ledger::AccessAction;
use medledger_records::history::Page;

use crate::{
    app::AppState,
    clock::now_ms,
    fhir::{
        credentials::{authorize_record, on_service, purpose, records},
        errors::{FhirError, refused},
        paging::{page_links, paging},
        render::{bundle_response, served_resource, unservable_outcome},
        request::parse_id,
    },
    smart::scopes::interactions,
};

/// `GET /fhir/Patient/{id}/$everything`: the latest version of every record of the patient
/// that the caller may read (consent decides per record before paging; refusals are left out,
/// and audited), as a `searchset` Bundle, the Patient first. Paged with `_count` (default and
/// maximum [`EVERYTHING_PAGE_MAX`]) and `_offset` over the visible records only. A caller who
/// may see none of them gets the answer for an unknown patient.
pub(crate) async fn everything(
    State(app): State<AppState>,
    Path(id): Path<String>,
    axum::extract::Query(query): axum::extract::Query<std::collections::HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, FhirError> {
    let purpose = purpose(&headers)?;
    let grant =
        authorize_record(&app, &headers, "Patient", interactions::READ, &id, AccessAction::Read, purpose).await?;
    let record_id = parse_id(&id)?;
    let (count, offset) = paging(&query, EVERYTHING_PAGE_MAX, "$everything")?;
    let service = records(&app)?;
    let everything = on_service(&service, move |s| {
        s.everything(grant.caller(), record_id, purpose, Page { count, offset }, now_ms())
    })
    .await?
    .map_err(|e| refused(e, "Patient", &id))?;
    let total = everything.total;
    let links = page_links(&format!("{}/fhir/Patient/{id}/$everything", app.public_base()), count, offset, total);
    let mut bundle = format!(r#"{{"resourceType":"Bundle","type":"searchset","link":{links},"entry":["#);
    let mut first = true;
    let mut unservable = Vec::new();
    for member in &everything.members {
        let (record, resource_type, version) = (&member.record_id, &member.resource_type, member.version);
        // One version that cannot be served is named in an outcome, not the whole record's end.
        let Some(resource) = served_resource(resource_type, record, version, member.committed_ms, &member.plaintext)
        else {
            unservable.push((resource_type.as_str(), *record, version));
            continue;
        };
        if !first {
            bundle.push(',');
        }
        first = false;
        bundle.push_str(&format!(
            r#"{{"fullUrl":"{}/fhir/{resource_type}/{}","resource":"#,
            app.public_base(),
            record.to_hex()
        ));
        bundle.push_str(&resource);
        bundle.push_str(r#","search":{"mode":"match"}}"#);
    }
    if !unservable.is_empty() {
        if !first {
            bundle.push(',');
        }
        bundle
            .push_str(&format!(r#"{{"resource":{},"search":{{"mode":"outcome"}}}}"#, unservable_outcome(&unservable)));
    }
    bundle.push_str("]}");
    Ok(bundle_response(bundle))
}

/// Most resources one `$everything` page carries (each is decrypted and audited).
pub const EVERYTHING_PAGE_MAX: usize = 200;
