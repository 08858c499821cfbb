//! `GET /fhir/Patient/{id}/$everything`: the latest version of every record of a patient that
//! the caller may read, as a `searchset` Bundle, the Patient first.

use axum::{
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    response::Response,
};
use medledger_fhir::IssueCode;
use medledger_ledger::{AccessAction, Purpose};
use medledger_records::RecordError;
use medledger_types::{IdentityId, RecordId};

use crate::{
    app::AppState,
    clock::now_ms,
    fhir::{
        credentials::{authorize_record, purpose, record_audit, records},
        errors::{FhirError, no_such},
        paging::{page_links, paging},
        render::{bundle_response, served_resource, unservable_outcome},
        request::parse_id,
        served::{SERVED_TYPES, is_tombstone},
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
    let patient = match app.chain.snapshot().record(&record_id) {
        Some(head) if head.resource_type == "Patient" => head.patient,
        _ => return Err(no_such("Patient", &id)),
    };
    // The Patient resource itself first, then the rest in the order they were written.
    let mut members: Vec<(RecordId, String, u32, u64)> = app
        .chain
        .patient_index()
        .patient(&patient)
        .map(|p| {
            p.records
                .iter()
                .filter(|r| SERVED_TYPES.contains(&r.resource_type.as_str()))
                // Scopes narrow too: only the types the token may read.
                .filter(|r| grant.allows(&r.resource_type, interactions::READ))
                .filter_map(|r| {
                    let latest = r.versions.last()?;
                    Some((r.record_id, r.resource_type.clone(), latest.version, latest.position.committed_at_ms))
                })
                .collect()
        })
        .unwrap_or_default();
    members.sort_by_key(|(id, resource_type, _, _)| (*id != record_id, resource_type != "Patient"));
    let service = records(&app)?;
    let requester = grant.identity;
    // Consent decides before counting: the total, the pages and the next links are over what
    // the caller may see, so their sizes say nothing about records it may not.
    let (members, refused) = visible_members(&app, &requester, members, purpose);
    // Each refusal is on the patient's trail, as the refused reads of a page were (at most a
    // page's worth per request, so one request cannot queue unbounded events).
    let refused: Vec<_> = refused.into_iter().take(count).collect();
    record_audit(&service, move |s| {
        refused.into_iter().try_for_each(|(refused_id, code)| {
            s.audit_refused_access(requester, refused_id, AccessAction::Read, purpose, code, now_ms())
        })
    })
    .await?;
    // Nothing visible: the same answer as for a patient that does not exist.
    if members.is_empty() {
        return Err(no_such("Patient", &id));
    }
    let total = members.len();
    let page: Vec<_> = members.into_iter().skip(offset).take(count).collect();
    let wanted = page.clone();
    let reader = grant.clone();
    let reads = tokio::task::spawn_blocking(move || {
        let items: Vec<_> = wanted.iter().map(|(id, _, version, _)| (*id, Some(*version))).collect();
        let reads = service.read_many(reader.caller(), &items, purpose, AccessAction::Read, now_ms())?;
        Ok::<_, RecordError>(reads.into_iter().map(Result::ok).collect::<Vec<_>>())
    })
    .await
    .map_err(|_| FhirError::new(StatusCode::INTERNAL_SERVER_ERROR, IssueCode::Exception, "read task failed"))??;
    let links = page_links(&format!("{}/fhir/Patient/{id}/$everything", app.public_base()), count, offset, total);
    let mut bundle = format!(r#"{{"resourceType":"Bundle","type":"searchset","link":{links},"entry":["#);
    let mut first = true;
    let mut unservable = Vec::new();
    for ((record, resource_type, version, at_ms), read) in page.iter().zip(reads) {
        // Not readable by this caller (refused and audited by the read), or deleted: left out.
        let Some(read) = read.filter(|r| !is_tombstone(&r.plaintext)) else { continue };
        // One version that cannot be served is named in an outcome, not the whole record's end.
        let Some(resource) = served_resource(resource_type, record, *version, *at_ms, &read.plaintext) else {
            unservable.push((resource_type.as_str(), *record, *version));
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

/// The members of `$everything` that `requester` may read for `purpose` (in order), and those
/// it may not with the denial's code, all decided at one snapshot.
#[allow(clippy::type_complexity)]
fn visible_members(
    app: &AppState,
    requester: &IdentityId,
    members: Vec<(RecordId, String, u32, u64)>,
    purpose: Purpose,
) -> (Vec<(RecordId, String, u32, u64)>, Vec<(RecordId, &'static str)>) {
    let now = now_ms();
    let (mut visible, mut refused) = (Vec::with_capacity(members.len()), Vec::new());
    let state = app.chain.snapshot();
    for member in members {
        match crate::existence::read_decision(&state, requester, &member.0, purpose, now) {
            Some(Ok(_)) => visible.push(member),
            Some(Err(denial)) => refused.push((member.0, denial.code())),
            None => {}
        }
    }
    (visible, refused)
}

/// Most resources one `$everything` page carries (each is decrypted and audited).
pub const EVERYTHING_PAGE_MAX: usize = 200;
