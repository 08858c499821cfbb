//! The kick-off of a Bulk Data export: `GET /fhir/$export`, `GET /fhir/Patient/$export` and
//! `GET /fhir/Group/{id}/$export`, with `Prefer: respond-async` and the `_outputFormat`,
//! `_type` and `_since` parameters checked; admitted under the export quotas (`jobs.rs`), the
//! job then runs on the blocking pool (`run.rs`).

use axum::{
    extract::{Path, Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, Uri, header},
    response::{IntoResponse, Response},
};
use medledger_fhir::IssueCode;
use medledger_records::export::{
    ExportCredential, Level, Plan,
    jobs::{Busy, Finished, RETRY_AFTER_POLL_S},
    run,
};
use medledger_types::IdentityId;

use crate::{
    app::AppState,
    clock::now_ms,
    fhir::{
        credentials::authenticate,
        errors::{FHIR_JSON, FhirError},
        served::SERVED_TYPES,
    },
    smart::scopes::{Context, Grant, interactions},
};

/// A kick-off's parameters, checked.
#[derive(Debug, PartialEq, Eq)]
struct Params {
    /// `_type`, in the order first named; `None`: every type.
    types: Option<Vec<&'static str>>,
    /// `_since` as milliseconds since the epoch.
    since_ms: Option<u64>,
    /// Parameters skipped under `Prefer: handling=lenient`, as warnings.
    ignored: Vec<String>,
}

fn bad(code: IssueCode, diagnostics: impl Into<String>) -> FhirError {
    FhirError::new(StatusCode::BAD_REQUEST, code, diagnostics)
}

/// Checks the kick-off parameters (names and values already percent-decoded).
fn parse_params(params: &[(String, String)], lenient: bool) -> Result<Params, FhirError> {
    let mut out = Params { types: None, since_ms: None, ignored: Vec::new() };
    let (mut format_seen, mut since_seen) = (false, false);
    for (name, value) in params {
        match name.as_str() {
            "_outputFormat" => {
                if std::mem::replace(&mut format_seen, true) {
                    return Err(bad(IssueCode::Invalid, "_outputFormat is given more than once"));
                }
                // An unescaped `+` in a query string arrives as a space.
                let format = value.trim().replace(' ', "+");
                if !matches!(format.as_str(), "application/fhir+ndjson" | "application/ndjson" | "ndjson") {
                    return Err(bad(
                        IssueCode::NotSupported,
                        format!(
                            "_outputFormat {} is not supported: only application/fhir+ndjson (or application/ndjson, ndjson)",
                            crate::error::echo(value)
                        ),
                    ));
                }
            }
            "_type" => {
                let types = out.types.get_or_insert_with(Vec::new);
                for name in value.split(',').map(str::trim) {
                    let served = SERVED_TYPES.iter().find(|t| **t == name).ok_or_else(|| {
                        if name.is_empty() {
                            bad(IssueCode::Invalid, "_type names an empty resource type")
                        } else if medledger_fhir::model::Model::r4().is_r4_resource_type(name) {
                            bad(
                                IssueCode::NotSupported,
                                format!(
                                    "resource type {} is not exported here (exported: {})",
                                    crate::error::echo(name),
                                    SERVED_TYPES.join(", ")
                                ),
                            )
                        } else {
                            bad(IssueCode::Invalid, format!("{} is not an R4 resource type", crate::error::echo(name)))
                        }
                    })?;
                    if !types.contains(served) {
                        types.push(served);
                    }
                }
            }
            "_since" => {
                if std::mem::replace(&mut since_seen, true) {
                    return Err(bad(IssueCode::Invalid, "_since is given more than once"));
                }
                // A `+hh:mm` offset sent unescaped arrives with a space for the `+`.
                let since = parse_instant(&value.replace(' ', "+")).ok_or_else(|| {
                    bad(
                        IssueCode::Value,
                        format!(
                            "_since must be a FHIR instant such as 2024-01-31T12:00:00Z, not {}",
                            crate::error::echo(value)
                        ),
                    )
                })?;
                out.since_ms = Some(since);
            }
            other if lenient => {
                out.ignored.push(format!("parameter {} is not supported and was ignored", crate::error::echo(other)));
            }
            other => {
                return Err(bad(
                    IssueCode::NotSupported,
                    format!(
                        "$export supports _outputFormat, _type and _since, not {} (send Prefer: handling=lenient to have unsupported parameters ignored)",
                        crate::error::echo(other)
                    ),
                ));
            }
        }
    }
    Ok(out)
}

/// An R4 `instant` (`YYYY-MM-DDThh:mm:ss[.fff…](Z|±hh:mm)`, seconds and zone required) as
/// milliseconds since the epoch (a time before 1970 as 0).
fn parse_instant(text: &str) -> Option<u64> {
    let b = text.as_bytes();
    let digit_at = |i: usize| b.get(i).is_some_and(u8::is_ascii_digit);
    let shape = b.len() >= 20
        && [0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18].iter().all(|i| digit_at(*i))
        && (b[4], b[7], b[10], b[13], b[16]) == (b'-', b'-', b'T', b':', b':');
    if !shape {
        return None;
    }
    let mut rest = &b[19..];
    if let Some(fraction) = rest.strip_prefix(b".") {
        let digits = fraction.iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        rest = &fraction[digits..];
    }
    let zone_ok = rest == b"Z"
        || (rest.len() == 6
            && matches!(rest[0], b'+' | b'-')
            && rest[1].is_ascii_digit()
            && rest[2].is_ascii_digit()
            && rest[3] == b':'
            && rest[4].is_ascii_digit()
            && rest[5].is_ascii_digit());
    if !zone_ok {
        return None;
    }
    let (low, _) = medledger_fhir::search::date::parse_range(text)?;
    Some(u64::try_from(low).unwrap_or(0))
}

/// The preference tokens of every `Prefer` header (`respond-async`, `handling=lenient`).
fn preferences(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([',', ';']))
        .map(|p| p.trim().to_ascii_lowercase())
        .collect()
}

/// `Accept`, when given, must allow FHIR JSON (the format of the kick-off's OperationOutcome).
fn check_accept(headers: &HeaderMap) -> Result<(), FhirError> {
    let values: Vec<&str> = headers.get_all(header::ACCEPT).iter().filter_map(|v| v.to_str().ok()).collect();
    if values.is_empty() {
        return Ok(());
    }
    let acceptable = values.iter().flat_map(|v| v.split(',')).any(|range| {
        let essence = range.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        matches!(essence.as_str(), "application/fhir+json" | "application/json" | "application/*" | "*/*")
    });
    if acceptable {
        return Ok(());
    }
    Err(FhirError::new(
        StatusCode::NOT_ACCEPTABLE,
        IssueCode::NotSupported,
        "$export answers in application/fhir+json: send Accept: application/fhir+json",
    ))
}

/// The types to export: those named by `_type` (each must be allowed by the scopes) or every
/// type the scopes allow.
fn exported_types(grant: &Grant, level: Level, named: Option<&[&'static str]>) -> Result<Vec<&'static str>, FhirError> {
    let forbidden = |m: String| FhirError::new(StatusCode::FORBIDDEN, IssueCode::Forbidden, m);
    if level == Level::System
        && !grant.scopes.iter().any(|s| s.context == Context::System && s.interactions & interactions::READ != 0)
    {
        return Err(forbidden(
            "a system-level export needs system/*.r or system/<Type>.r scopes; use Patient/$export or \
             Group/{id}/$export with patient or user scopes"
                .into(),
        ));
    }
    match named {
        Some(types) => {
            if let Some(refused) = types.iter().find(|t| !grant.may_export(level, t, None)) {
                return Err(forbidden(format!("the token's scopes do not allow reading {refused}")));
            }
            Ok(types.to_vec())
        }
        None => {
            let types: Vec<&'static str> =
                SERVED_TYPES.iter().copied().filter(|t| grant.may_export(level, t, None)).collect();
            if types.is_empty() {
                return Err(forbidden("the token's scopes allow reading none of the exported types".into()));
            }
            Ok(types)
        }
    }
}

/// `GET /fhir/$export`.
pub(crate) async fn export_system(
    State(app): State<AppState>,
    uri: Uri,
    Query(params): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Result<Response, FhirError> {
    kick_off(app, Level::System, uri, params, headers).await
}

/// `GET /fhir/Patient/$export`.
pub(crate) async fn export_patients(
    State(app): State<AppState>,
    uri: Uri,
    Query(params): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Result<Response, FhirError> {
    kick_off(app, Level::Patients, uri, params, headers).await
}

/// `GET /fhir/Group/{id}/$export`: `id` is a member organisation's identity id, standing for
/// the patients with records in its custody (medledger keeps no Group resources).
pub(crate) async fn export_group(
    State(app): State<AppState>,
    Path(id): Path<String>,
    uri: Uri,
    Query(params): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Result<Response, FhirError> {
    authenticate(&app, &headers)?;
    let organisation = IdentityId::from_hex(&id)
        .ok()
        .filter(|org| medledger_records::views::is_organisation(&app.chain, org))
        .ok_or_else(|| {
            FhirError::new(
                StatusCode::NOT_FOUND,
                IssueCode::NotFound,
                format!(
                    "no Group {}: a Group id is a member organisation's identity id (its patients)",
                    crate::error::echo(&id)
                ),
            )
        })?;
    kick_off(app, Level::Group(organisation), uri, params, headers).await
}

/// Any other method on a kick-off URL (a POST with a Parameters body is not supported).
pub(crate) async fn kick_off_method() -> FhirError {
    FhirError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        IssueCode::NotSupported,
        "start an export with GET and query parameters (_outputFormat, _type, _since)",
    )
}

async fn kick_off(
    app: AppState,
    level: Level,
    uri: Uri,
    params: Vec<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, FhirError> {
    let grant = authenticate(&app, &headers)?;
    let prefer = preferences(&headers);
    if !prefer.iter().any(|p| p == "respond-async") {
        return Err(bad(IssueCode::Invalid, "$export runs asynchronously: send Prefer: respond-async"));
    }
    check_accept(&headers)?;
    let params = parse_params(&params, prefer.iter().any(|p| p == "handling=lenient"))?;
    let purpose = crate::fhir::credentials::purpose_of(&headers)?;
    let types = exported_types(&grant, level, params.types.as_deref())?;
    let service = crate::fhir::credentials::record_service(&app)?;
    // The configured public base (relative URLs without one), never the request's Host.
    let base = app.public_base().to_owned();
    let request = format!("{base}{}", uri.path_and_query().map_or(uri.path(), |p| p.as_str()));
    let mut job_id = [0u8; 16];
    rand::fill(&mut job_id);
    let job = match app.exports.admit(grant.identity, request, base.clone(), now_ms(), job_id) {
        Ok(job) => job,
        Err(busy) => {
            let (why, retry_after_s) = match busy {
                Busy::IdentityRunning => (
                    "this client already has an export running; poll or delete it first".to_owned(),
                    RETRY_AFTER_POLL_S,
                ),
                Busy::IdentityHolding { retry_after_s } => (
                    format!(
                        "this client holds {} exports, its quota; DELETE their status URLs (or wait for them to expire)",
                        app.exports.limits().held_per_identity_max
                    ),
                    retry_after_s,
                ),
                Busy::Node { retry_after_s } => (
                    "this node is running or holding as many exports as it allows; retry later".to_owned(),
                    retry_after_s,
                ),
            };
            let mut response = FhirError::new(StatusCode::TOO_MANY_REQUESTS, IssueCode::Transient, why).into_response();
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after_s));
            return Ok(response);
        }
    };
    let plan = Plan {
        level,
        types,
        since_ms: params.since_ms,
        requester: grant.identity,
        credential: Box::new(grant),
        purpose,
    };
    let jobs = app.exports.clone();
    let running = job.clone();
    tokio::spawn(async move {
        let worker = {
            let (job, jobs) = (running.clone(), jobs.clone());
            tokio::task::spawn_blocking(move || run(&jobs, &job, &service, &plan, &now_ms))
        };
        let finished = worker.await.unwrap_or_else(|_| Finished::Failed {
            at_ms: now_ms(),
            diagnostics: "the export task failed; start the export again".into(),
        });
        jobs.finish(&running, finished);
        drop(running);
        // Expired on time even if nobody asks about exports again.
        tokio::time::sleep(std::time::Duration::from_millis(jobs.limits().ttl_ms.saturating_add(1_000))).await;
        jobs.expire(now_ms());
    });
    let status_url = format!("{base}/fhir/$export-status/{}", job.id);
    let mut issues = vec![
        serde_json::json!({"severity": "information", "code": "informational", "diagnostics": format!("export started; poll {status_url}")}),
    ];
    issues.extend(params.ignored.into_iter().map(
        |diagnostics| serde_json::json!({"severity": "warning", "code": "not-supported", "diagnostics": diagnostics}),
    ));
    let outcome = serde_json::json!({"resourceType": "OperationOutcome", "issue": issues});
    let mut response = (StatusCode::ACCEPTED, outcome.to_string()).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(v) = HeaderValue::from_str(&status_url) {
        headers.insert(header::CONTENT_LOCATION, v);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_need_seconds_and_a_zone() {
        assert_eq!(parse_instant("1970-01-01T00:00:01Z"), Some(1000));
        assert_eq!(parse_instant("2000-02-29T00:00:00.123Z"), Some(951_782_400_123));
        assert_eq!(parse_instant("2000-02-29T01:00:00+01:00"), Some(951_782_400_000));
        assert_eq!(parse_instant("1960-01-01T00:00:00Z"), Some(0));
        for bad in [
            "2024",
            "2024-01-31",
            "2024-01-31T12:00Z",
            "2024-01-31T12:00:00",
            "2024-01-31T12:00:00.Z",
            "2024-02-30T12:00:00Z",
            "2024-01-31T25:00:00Z",
            "2024-01-31T12:00:00+0100",
            "2024-01-31 12:00:00Z",
            "2024-01-31T12:00:00Zjunk",
        ] {
            assert_eq!(parse_instant(bad), None, "{bad}");
        }
    }

    #[test]
    fn parameters_are_checked_strictly_unless_lenient() {
        let p = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
        };
        let ok = parse_params(
            &p(&[
                ("_outputFormat", "application/fhir ndjson"),
                ("_type", "Observation,Patient"),
                ("_type", "Observation"),
            ]),
            false,
        )
        .unwrap();
        assert_eq!(ok.types, Some(vec!["Observation", "Patient"]));
        assert_eq!(
            parse_params(&p(&[("_since", "2024-01-01T00:00:00 01:00")]), false).unwrap().since_ms,
            Some(1_704_063_600_000)
        );
        for refused in [
            &[("_outputFormat", "text/csv")][..],
            &[("_type", "Banana")],
            &[("_type", "Coverage")],
            &[("_type", "Observation,")],
            &[("_since", "2024")],
            &[("_since", "2024-01-01T00:00:00Z"), ("_since", "2024-01-01T00:00:00Z")],
            &[("_typeFilter", "Observation?code=1")],
        ] {
            assert!(parse_params(&p(refused), false).is_err(), "{refused:?}");
        }
        let lenient = parse_params(&p(&[("_typeFilter", "x"), ("_type", "Patient")]), true).unwrap();
        assert_eq!(lenient.ignored.len(), 1);
        assert!(parse_params(&p(&[("_type", "Banana")]), true).is_err(), "a bad value is an error even when lenient");
    }
}
