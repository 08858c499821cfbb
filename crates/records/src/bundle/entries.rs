//! A Bundle's entries as received: each entry's request (method, URL, `ifMatch`) and resource
//! checked on its own, before any planning, with errors that name the entry.

use std::ops::Range;

use medledger_fhir::{Issue, IssueCode, Severity, outcome::echo, validate::ReferenceKind};
use medledger_types::{IdentityId, RecordId};

use crate::{
    access::interactions,
    content::{Refused, status},
    served::is_served,
};

pub fn error(status: u16, code: IssueCode, diagnostics: impl Into<String>) -> Refused {
    Refused::new(status, code, diagnostics)
}

/// An entry-level error, naming the entry.
pub fn entry_error(index: usize, status: u16, code: IssueCode, why: impl std::fmt::Display) -> Refused {
    let issue = Issue {
        severity: Severity::Error,
        code,
        expression: Some(format!("Bundle.entry[{index}]")),
        diagnostics: why.to_string(),
    };
    Refused::with_issues(status, vec![issue])
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Post,
    Put,
    Delete,
}

/// One entry as received.
pub struct EntryIn {
    pub index: usize,
    pub full_url: Option<String>,
    pub method: Method,
    pub resource_type: String,
    /// PUT/DELETE: the existing resource.
    pub target: Option<RecordId>,
    /// The resource's exact bytes (POST/PUT).
    pub bytes: Option<Vec<u8>>,
    /// References of the resource, as the validator found them.
    pub references: Vec<(String, ReferenceKind)>,
    pub if_match: Option<u32>,
    /// Conditional create: the search (`identifier=…|…`) whose single match means "already
    /// here, write nothing".
    pub if_none_exist: Option<String>,
}

/// One entry ready to write.
pub struct Planned {
    pub index: usize,
    pub method: Method,
    pub resource_type: String,
    pub id: RecordId,
    /// Rewritten bytes (the tombstone for a delete).
    pub content: Vec<u8>,
    /// Records only: patient and category.
    pub patient: Option<IdentityId>,
    pub category: &'static str,
    pub expected: Option<u32>,
    /// A delete of something already deleted: nothing to write.
    pub noop: bool,
}

/// Checks one entry's request and resource as received.
pub fn entry_in(
    index: usize,
    entry: &medledger_fhir::validate::BundleEntry,
    body: &[u8],
    if_match: Option<&str>,
    unsupported: Option<&str>,
) -> Result<EntryIn, Refused> {
    let bad = |code, why: String| entry_error(index, status::BAD_REQUEST, code, why);
    if let Some(key) = unsupported {
        return Err(bad(IssueCode::NotSupported, format!("request.{key} (conditional interactions) is not supported")));
    }
    let method = match entry.request_method.as_deref() {
        Some("POST") => Method::Post,
        Some("PUT") => Method::Put,
        Some("DELETE") => Method::Delete,
        Some(other) => {
            return Err(bad(
                IssueCode::NotSupported,
                format!("request.method {other} is not supported in Bundles here"),
            ));
        }
        None => return Err(bad(IssueCode::Required, "request.method is required".into())),
    };
    let url = entry.request_url.as_deref().ok_or_else(|| bad(IssueCode::Required, "request.url is required".into()))?;
    if url.contains('?') {
        return Err(bad(IssueCode::NotSupported, format!("conditional {method:?} ({}) is not supported", echo(url))));
    }
    let (url_type, url_id) = match url.trim_start_matches('/').split_once('/') {
        Some((t, id)) => (t.to_owned(), Some(id.to_owned())),
        None => (url.trim_start_matches('/').to_owned(), None),
    };
    if !is_served(&url_type) {
        return Err(bad(IssueCode::NotSupported, format!("resource type {} is not served here", echo(&url_type))));
    }
    let target = match (method, &url_id) {
        (Method::Post, None) => None,
        (Method::Post, Some(_)) => return Err(bad(IssueCode::Invalid, "a POST's request.url is the type only".into())),
        (_, Some(id)) => Some(RecordId::from_hex(id).map_err(|_| {
            entry_error(
                index,
                status::NOT_FOUND,
                IssueCode::NotFound,
                format!("no {url_type} with id {} (ids here are 64 hex characters)", echo(id)),
            )
        })?),
        (_, None) => return Err(bad(IssueCode::Invalid, format!("a {method:?}'s request.url is Type/id"))),
    };
    let (bytes, references) = match method {
        Method::Delete => (None, Vec::new()),
        _ => {
            let span: Range<usize> = entry
                .resource_span
                .clone()
                .ok_or_else(|| bad(IssueCode::Required, "the entry has no resource".into()))?;
            let resource = entry.resource.as_ref().ok_or_else(|| {
                bad(
                    IssueCode::NotSupported,
                    format!("resource type {} is not supported", entry.resource_type.as_deref().unwrap_or("?")),
                )
            })?;
            if resource.resource_type != url_type {
                return Err(bad(
                    IssueCode::Invalid,
                    format!("the resource is a {}, request.url says {url_type}", resource.resource_type),
                ));
            }
            if method == Method::Put && resource.id.as_deref() != url_id.as_deref() {
                return Err(bad(IssueCode::Invalid, "a PUT resource's id must equal the id in request.url".into()));
            }
            let references = resource.references.iter().map(|r| (r.reference.clone(), r.kind.clone())).collect();
            (Some(body[span].to_vec()), references)
        }
    };
    let if_match = match if_match {
        None => None,
        Some(text) => {
            let quoted = text.trim().strip_prefix("W/").unwrap_or(text.trim());
            Some(
                quoted
                    .strip_prefix('"')
                    .and_then(|t| t.strip_suffix('"'))
                    .and_then(|v| v.parse::<u32>().ok())
                    .ok_or_else(|| bad(IssueCode::Value, "request.ifMatch must be an ETag such as W/\"1\"".into()))?,
            )
        }
    };
    Ok(EntryIn {
        index,
        full_url: entry.full_url.clone(),
        method,
        resource_type: url_type,
        target,
        bytes,
        references,
        if_match,
        if_none_exist: None,
    })
}

/// The scope interaction an entry needs.
pub fn interaction(method: Method) -> u8 {
    match method {
        Method::Post => interactions::CREATE,
        Method::Put => interactions::UPDATE,
        Method::Delete => interactions::DELETE,
    }
}
