//! Admission of a request to the handlers: its body is read whole first — within the body
//! timeout and the client's share of the body-buffer budget — and only then may it take one of
//! the node's [`CONCURRENT_REQUESTS_MAX`] permits. A client sending slowly thus holds only its
//! own connection, never the capacity that serves everyone else.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use axum::{
    body::{Body, Bytes, HttpBody},
    extract::{ConnectInfo, Request, State},
    http::{HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use http_body_util::BodyExt;
use medledger_fhir::IssueCode;
use medledger_types::limits;
use tokio::sync::Semaphore;

use crate::{
    budget::{self, ClientBudget, Exhausted, Share},
    error::ApiError,
    fhir::errors::FhirError,
    http_limits::{BUNDLE_BODY_BYTES_MAX, CONCURRENT_REQUESTS_MAX, HttpLimits, RECORD_BODY_BYTES_MAX},
};

/// The largest body any route takes. A body is buffered up to this; each route's own, smaller
/// limit then applies to the buffered body (and answers its 413 in the route's format).
pub(crate) const BODY_BYTES_MAX: usize =
    max(limits::HTTP_BODY_BYTES_MAX, max(RECORD_BODY_BYTES_MAX, BUNDLE_BODY_BYTES_MAX));

const fn max(a: usize, b: usize) -> usize {
    if a > b { a } else { b }
}

/// What the admission step shares between requests.
pub(crate) struct Admission {
    permits: Semaphore,
    body_read_timeout: Duration,
    buffers: Arc<ClientBudget>,
}

impl Admission {
    pub(crate) fn new(limits: &HttpLimits) -> Arc<Self> {
        Arc::new(Self {
            permits: Semaphore::new(CONCURRENT_REQUESTS_MAX),
            body_read_timeout: Duration::from_millis(limits.body_read_timeout_ms),
            buffers: ClientBudget::new(limits.body_buffer_bytes_per_client_max, limits.body_buffer_bytes_max),
        })
    }

    /// The request with its body read into memory, and the buffer share that body holds.
    async fn read_body(&self, request: Request, client: IpAddr) -> Result<(Request, Option<Share>), ApiError> {
        let (parts, mut body) = request.into_parts();
        if HttpBody::is_end_stream(&body) {
            return Ok((Request::from_parts(parts, body), None));
        }
        let declared = parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|len| len > BODY_BYTES_MAX as u64) {
            return Err(ApiError::PayloadTooLarge { max: BODY_BYTES_MAX });
        }
        // Counted as bytes arrive, not as declared: a promise of a large body costs nothing
        // until it is kept.
        let mut share = self.buffers.share(client);
        let deadline = tokio::time::Instant::now() + self.body_read_timeout;
        let mut chunks: Vec<Bytes> = Vec::new();
        let mut len = 0usize;
        loop {
            let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
                Err(_) => {
                    return Err(ApiError::RequestTimeout { timeout_ms: self.body_read_timeout.as_millis() as u64 });
                }
                Ok(None) => break,
                Ok(Some(Err(e))) => return Err(ApiError::BadRequest(format!("cannot read the request body: {e}"))),
                Ok(Some(Ok(frame))) => frame,
            };
            // Trailers carry nothing any route reads.
            let Ok(data) = frame.into_data() else { continue };
            len = len.saturating_add(data.len());
            if len > BODY_BYTES_MAX {
                return Err(ApiError::PayloadTooLarge { max: BODY_BYTES_MAX });
            }
            share.grow(data.len()).map_err(|exhausted| match exhausted {
                Exhausted::Client => {
                    ApiError::Unavailable("this client is sending too many request bodies at once; retry later".into())
                }
                Exhausted::Node => {
                    ApiError::Unavailable("this node is receiving too many request bodies at once; retry later".into())
                }
            })?;
            chunks.push(data);
        }
        let bytes = match chunks.len() {
            0 => Bytes::new(),
            1 => chunks.swap_remove(0),
            _ => {
                let mut all = Vec::with_capacity(len);
                for chunk in &chunks {
                    all.extend_from_slice(chunk);
                }
                Bytes::from(all)
            }
        };
        Ok((Request::from_parts(parts, Body::from(bytes)), Some(share)))
    }
}

/// The middleware: reads the body, then takes a permit (or sheds the request with 503).
/// `/v1/health` takes no permit: it reports whether the node works, not how loaded it is, and
/// a load balancer must not take a busy node out of service.
pub(crate) async fn admit(State(admission): State<Arc<Admission>>, request: Request, next: Next) -> Response {
    let fhir = is_fhir(request.uri().path());
    let client = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(budget::IN_PROCESS, |ConnectInfo(peer)| budget::client_key(peer.ip()));
    // The buffer share is held until the answer is ready: the body lives until then.
    let (request, _buffered) = match admission.read_body(request, client).await {
        Ok(read) => read,
        // The rest of the body is not read, so the connection cannot be reused.
        Err(error) => return close(refusal(error, fhir)),
    };
    if request.uri().path() == "/v1/health" {
        return next.run(request).await;
    }
    match admission.permits.try_acquire() {
        Ok(_permit) => next.run(request).await,
        Err(_) => refusal(ApiError::Busy, fhir),
    }
}

fn is_fhir(path: &str) -> bool {
    path == "/fhir" || path.starts_with("/fhir/")
}

/// `error` as the route's clients expect it: an OperationOutcome on /fhir, JSON elsewhere.
fn refusal(error: ApiError, fhir: bool) -> Response {
    if !fhir {
        return error.into_response();
    }
    let status = error.status();
    let code = match status {
        StatusCode::PAYLOAD_TOO_LARGE => IssueCode::TooLong,
        StatusCode::BAD_REQUEST => IssueCode::Invalid,
        // 408 and 503: the FHIR "transient" code covers timeouts and throttling.
        _ => IssueCode::Transient,
    };
    let mut response = FhirError::new(status, code, error.to_string()).into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

fn close(mut response: Response) -> Response {
    response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_limit_fits_the_buffer() {
        for route_max in [limits::HTTP_BODY_BYTES_MAX, RECORD_BODY_BYTES_MAX, BUNDLE_BODY_BYTES_MAX] {
            assert!(route_max <= BODY_BYTES_MAX);
        }
        let defaults = HttpLimits::default();
        assert!(defaults.body_buffer_bytes_per_client_max >= BODY_BYTES_MAX, "one largest body fits a client's share");
        assert!(defaults.body_buffer_bytes_max >= defaults.body_buffer_bytes_per_client_max);
    }
}
