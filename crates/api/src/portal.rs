//! The portal: a read-only public ledger explorer at `/`.
//!
//! Invariant: static, public data only. The page, its scripts and its stylesheet are compiled
//! in and served byte for byte; nothing from the chain, the configuration or the request is
//! written into them, so the server side of the portal can reveal nothing. The page itself
//! reads only the public, unsigned JSON endpoints (head, health, blocks, transactions, proofs,
//! checkpoint), the same any client can call, which give block headers and transaction ids and
//! positions but not what a transaction does or who signed it (`visibility.rs`), and checks
//! inclusion and consistency proofs in
//! the browser (`portal/rfc6962.js`, tested against the RFC 6962 vectors by
//! `tests/portal.rs`). It never calls the signed record or patient endpoints.
//!
//! Assets are separate files rather than inline so that the Content-Security-Policy can
//! forbid inline script and style outright: markup injected by some future bug still could
//! not run.

use axum::{
    http::{HeaderName, HeaderValue, header},
    response::{IntoResponse, Redirect, Response},
};

const INDEX_HTML: &str = include_str!("../portal/index.html");
const APP_JS: &str = include_str!("../portal/app.js");
const RFC6962_JS: &str = include_str!("../portal/rfc6962.js");
const STYLE_CSS: &str = include_str!("../portal/style.css");

const HTML: &str = "text/html; charset=utf-8";
/// RFC 9239: `text/javascript` is the one JavaScript media type; ES modules are refused by
/// browsers unless served with a JavaScript type.
const JAVASCRIPT: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// Only this origin's own files and API; no inline code, no framing, no form posts elsewhere.
pub(crate) const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Every portal response carries the same hardening headers. `no-store`: the assets are tiny
/// and a node upgrade must never leave a browser running an old verifier against a new API.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    let headers: [(HeaderName, HeaderValue); 5] = [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY)),
        (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        (header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
    ];
    (headers, body).into_response()
}

pub(crate) async fn index() -> Response {
    asset(HTML, INDEX_HTML)
}

pub(crate) async fn app_js() -> Response {
    asset(JAVASCRIPT, APP_JS)
}

pub(crate) async fn rfc6962_js() -> Response {
    asset(JAVASCRIPT, RFC6962_JS)
}

pub(crate) async fn style_css() -> Response {
    asset(CSS, STYLE_CSS)
}

/// `/portal` is an alias for people who guess it; the page keeps one address, `/`, so that
/// shared links and bookmarks agree. Temporary (307), so the path stays free for a page of its
/// own later.
pub(crate) async fn to_index() -> Redirect {
    Redirect::temporary("/")
}
