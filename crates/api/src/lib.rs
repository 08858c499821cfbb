//! HTTP API of a medledger node (axum): head, proofs, checkpoints, transactions, blocks,
//! identities and metrics, served from a [`Chain`] handle.
//!
//! Architecture invariant: this is the only crate that speaks HTTP/JSON. It converts every
//! error — bad input, refused transactions, missing data, node faults, and axum's own
//! rejections (body limit, unknown route, wrong method) — into a JSON response
//! `{"error": {"code": <status>, "message": <reason>}}` with a 4xx/5xx status; no input makes
//! it panic or answer 500. It holds no state of its own: every answer comes from [`Chain`],
//! whose calls run on the blocking pool so that no lock guard is held across an `.await`.
//! Error messages name fields and ids, never record contents.
//!
//! API boundary: [`router`] and [`serve`] (with [`Services`] and its [`HttpLimits`],
//! [`auth::NonceLimits`], [`smart::TokenLimits`] and [`ExportLimits`]), the endpoints below,
//! and [`ApiError`].
//!
//! | Method and path                                   | Answer                                           |
//! |---------------------------------------------------|--------------------------------------------------|
//! | `GET /v1/health`                                  | `{"status":"ok","height"}`, or 503 `{"status":"halted","reason"}` |
//! | `GET /v1/head`                                    | chain id, height, block hash, timestamp, log size and root |
//! | `GET /v1/proofs/inclusion?index=I[&size=N]`       | RFC 6962 audit path, leaf hash and root          |
//! | `GET /v1/proofs/consistency?from=M[&to=N]`        | RFC 6962 consistency proof and both roots        |
//! | `GET /v1/checkpoint`                              | C2SP signed checkpoint note (`text/plain`)       |
//! | `GET /v1/checkpoint/key`                          | the note's verifier key (`text/plain`)           |
//! | `POST /v1/transactions`                           | raw canonical bytes (`application/octet-stream`) or `{"tx":"<hex>"}`; 202 `{"tx_id","status":"pending"}` |
//! | `GET /v1/transactions/{id}`                       | pending / committed (height, index, log index; signed by a member or the transaction's signer: kind, signer) / rejected (reason); 404 when unknown |
//! | `GET /v1/blocks/{height}`                         | header fields and transaction ids; signed by a member: each transaction's kind, signer and nonce (the signer: its own) |
//! | `GET /v1/blocks/{height}/raw`                     | signed, members only: canonical block bytes (401 unsigned, 403 `not-a-member`) |
//! | `GET /v1/identities/{id}`                         | role, name, organisation, keys, next nonce; a patient's only signed by the patient or a member (404 as unknown otherwise) |
//! | `POST /v1/records?patient=<id>[&record=<id>]`     | signed; FHIR JSON body, checked as `POST /fhir/{type}` checks it → 201 record id, version, tx id |
//! | `GET /v1/records/{id}[?version=N][&purpose=P]`    | signed; the FHIR resource as written, or (consent refusing) the 404 of an unknown record |
//! | `GET /v1/records/{id}/history[?purpose=P]`       | signed; the record's versions (tx id, author), for whoever may read it (404 otherwise) |
//! | `GET /v1/patients/{id}/records`                   | signed, the patient only; records with versions  |
//! | `GET /v1/patients/{id}/grants`                    | signed, the patient or a live delegate; every grant, its origin, signer, review and whether live |
//! | `GET /v1/patients/{id}/delegates`                 | signed, the patient or a live delegate; every delegation and whether live |
//! | `GET /v1/patients/{id}/access-log?from=N&limit=M` | signed, the patient only; access events, each with an inclusion proof |
//! | `GET /v1/patients/{id}/notifications?since_ms=T`  | signed, the patient only; new accesses, break-glass and reviews, delegates and their consent, key wraps, expiring grants |
//! | `GET /v1/break-glass?pending=true`                | signed, an organisation or its practitioners; break-glass it may review (its declarers', its patients') |
//! | `GET /metrics`                                    | Prometheus text format 0.0.4                     |
//! | `GET /`                                           | the portal: a static, read-only ledger explorer (`portal.rs`); `/portal` redirects to it |
//! | `GET /portal/{app.js,rfc6962.js,style.css}`       | the portal's script modules and stylesheet       |
//!
//! What is public: block headers, transaction ids and positions, proofs, checkpoints, head,
//! health, metrics, and identities other than patients. What a transaction does and who
//! signed it (health metadata about pseudonymous patients) only consortium members see, in a
//! request signed by an organisation or a validator, and a transaction's own signer for that
//! transaction (`visibility.rs`). The ledger endpoints take an optional signature; without one
//! they answer the public view.
//!
//! Statuses: 400 malformed input or invalid transaction, 401 a signature missing where one is
//! required or not verifying, 403 signed but not allowed (with a machine-readable `reason`),
//! 404 unknown resource or route (and a
//! record the caller may not see: answered exactly as an unknown one, see `records::resource`),
//! 405 wrong method, 408 body not received within the body timeout, 409 transaction already
//! committed, 413 body over [`limits::HTTP_BODY_BYTES_MAX`], 415 unsupported content type,
//! 429 an identity over one of its own quotas (below; with `Retry-After`), 503 mempool full,
//! node halted, more than [`CONCURRENT_REQUESTS_MAX`] requests in flight, a node-wide quota
//! reached, or a client over its connection or body-buffer share (with `Retry-After`), 500 node
//! faults only.
//!
//! Limits: request bodies are capped at [`limits::HTTP_BODY_BYTES_MAX`] (twice the largest
//! transaction, so any transaction fits as raw bytes; hex in JSON doubles the size, so the
//! very largest transactions must be sent raw). At most [`CONCURRENT_REQUESTS_MAX`] requests
//! are served at once; the excess is shed with 503 instead of queued. A request takes one of
//! those permits only once its whole body has arrived (`/v1/health` takes none), so a slow
//! sender holds no capacity but its own connection. The server ([`HttpLimits`] in
//! [`Services::http`], defaults in brackets) closes a connection that has not sent a request's
//! headers within `header_read_timeout_ms` [10 s] of opening or of its previous answer (idle
//! keep-alive included), answers 408 and closes when a body is not whole within
//! `body_read_timeout_ms` [30 s], and closes one whose answer makes no write progress for
//! `write_stall_timeout_ms` [30 s]. A client — an IPv4 address or an IPv6 /64 — holds at most
//! `connections_per_client_max` [256] of the node's `connections_max` [4,096] connections, and
//! at most `body_buffer_bytes_per_client_max` [64 MiB] of the `body_buffer_bytes_max` [512 MiB]
//! of request bodies being received; beyond either it gets 503, so no one client can fill what
//! the others need. Keep `connections_max` below the open-file limit.
//!
//! Per-identity quotas (an identity is the on-chain signer of a request or the holder of a
//! bearer token): what one identity holds never evicts another's, past its own quota it alone
//! gets 429 with `Retry-After` (in the route's error shape: `{"error":…}` on `/v1`, an OAuth
//! error on `/auth/token`, an OperationOutcome on `/fhir`), and a node-wide cap only refuses
//! new requests (503 with `Retry-After`; 429 on `$export`). Defaults in brackets:
//! - Signed requests ([`auth::NonceLimits`] in [`Services::nonces`]): `per_identity_max`
//!   [50,000] requests per identity in ten minutes (their nonces are remembered that long,
//!   [`auth::NONCE_MEMORY_MS`], and never forgotten sooner); `remembered_max` [4,000,000]
//!   nonces in all.
//! - Bearer tokens ([`smart::TokenLimits`] of the [`smart::TokenStore`] in
//!   [`Services::tokens`]): `tokens_per_identity_max` [16] live tokens per identity, a new one
//!   replacing that identity's own oldest; `assertions_per_identity_max` [32] token requests per
//!   identity in seven minutes ([`smart::ASSERTION_MEMORY_MS`], how long a `jti` is
//!   remembered); `tokens_max` [100,000] live tokens and `assertions_max` [200,000] `jti`s in
//!   all.
//! - Bulk Data exports ([`ExportLimits`] in [`Services::exports`]): `held_per_identity_max` [2]
//!   jobs per identity (running or finished, one running), `identity_bytes_max` [256 MiB] of
//!   output per identity over its held jobs, `job_bytes_max` [256 MiB] per job; node-wide
//!   `running_max` [4], `held_max` [256] jobs and `bytes_max` [1 GiB]. Output is kept `ttl_ms`
//!   [1 h] after its job finished; when a node-wide cap is reached, finished jobs of identities
//!   holding more than their fair share (the cap divided by the identities holding some) are
//!   kept only `contended_ttl_ms` [10 min] after they finished.
//!
//! ## Module layering
//!
//! The modules form four tiers, bottom to top. A module imports only from its own tier or a
//! lower one; an interaction (one module, or one folder such as `fhir/bundle/`) never imports
//! another, so what two interactions share lives in a lower module; and no two modules import
//! each other, directly or around a circle. `module_graph_test.rs` reads the sources and checks
//! all of it against these lists, which must name every module:
//! - **foundation** (no request state; vocabulary, limits and in-memory stores): `auth`,
//!   `budget`, `clock`, `error`, `fhir::errors`,
//!   `fhir::paging`, `fhir::render`, `fhir::request`,
//!   `fhir::served`, `http_limits`, `params`,
//!   `smart::scopes`, `smart::tokens`
//! - **services** (what the handlers share, mostly over the shared request state): `app`,
//!   `fhir::commit`, `fhir::conditional`, `fhir::credentials`, `fhir::directory`,
//!   `patients::common`, `signed`, `smart::bearer`, `visibility`
//! - **interactions** (each answers its own routes): `break_glass`, `fhir::audit_event`,
//!   `fhir::bundle`, `fhir::capability`, `fhir::consent`, `fhir::crud`, `fhir::everything`,
//!   `fhir::export`, `fhir::history`, `fhir::provenance`, `fhir::search`, `patients`,
//!   `portal`, `records`, `routes`, `smart`
//! - **router** (the wiring and the server around it): `crate`, `admission`, `fhir`, `server`
//!
//! A folder's `mod.rs` sits above its files: it declares them, and wires or re-exports them
//! (`fhir/mod.rs` holds the `/fhir` routes), but none of them imports it.

use std::{future::Future, sync::Arc};

use axum::{
    Router,
    extract::DefaultBodyLimit,
    middleware,
    routing::{get, post},
};
use medledger_node::chain::Chain;
use medledger_records::RecordService;
use medledger_types::limits;

mod admission;
mod app;
pub mod auth;
mod break_glass;
mod budget;
mod clock;
mod error;
pub mod fhir;
mod http_limits;
#[cfg(test)]
mod module_graph_test;
mod params;
mod patients;
mod portal;
mod records;
mod routes;
mod server;
mod signed;
pub mod smart;
mod visibility;

pub use error::{ApiError, ErrorBody, ErrorDetail};
pub use http_limits::{CONCURRENT_REQUESTS_MAX, HttpLimits};
pub use medledger_records::export::jobs::ExportLimits;
pub use medledger_records::search::COUNTED_PATIENTS_MAX;

/// The API's routes over `chain`, with the body limit and concurrency bound applied.
pub fn router(chain: Arc<Chain>) -> Router {
    router_with(chain, None)
}

/// What the API serves beyond the chain itself.
#[derive(Clone)]
pub struct Services {
    /// The record endpoints, when the node holds its organisation's keys.
    pub records: Option<Arc<RecordService>>,
    /// Bearer tokens of `/auth/token`; shared so the node (e.g. `medledger dev`) can issue some.
    pub tokens: Arc<smart::TokenStore>,
    /// How long a FHIR create or update waits for its version to commit before answering
    /// (so a read right after a 201 finds it); past it the answer is 202 Accepted. 0 answers
    /// as soon as the write is submitted (tests that commit blocks by hand).
    pub fhir_commit_wait_ms: u64,
    /// The base URLs this node's API is reached at (e.g. `http://127.0.0.1:8080`): a client
    /// assertion's `aud` must be one of them plus `/auth/token`, and the first is the canonical
    /// one every absolute URL the API writes starts with (the token endpoint in the
    /// CapabilityStatement and the SMART configuration, Bundle links and `fullUrl`s, export
    /// URLs). Never taken from the request (a client controls its `Host` header: links built
    /// from it would point a victim's client elsewhere, and an assertion made for another node
    /// could be redeemed here). Empty: no assertion is accepted and URLs are relative.
    /// Entries that are not a [`public_base`] are left out (with a warning).
    pub public_bases: Vec<String>,
    /// Timeouts and per-client limits of the HTTP server.
    pub http: HttpLimits,
    /// Per-identity and node-wide quotas of signed requests' nonces.
    pub nonces: auth::NonceLimits,
    /// Per-identity and node-wide quotas of Bulk Data export jobs.
    pub exports: ExportLimits,
}

impl Default for Services {
    fn default() -> Self {
        Self {
            records: None,
            tokens: Arc::default(),
            fhir_commit_wait_ms: FHIR_COMMIT_WAIT_MS,
            public_bases: Vec::new(),
            http: HttpLimits::default(),
            nonces: auth::NonceLimits::default(),
            exports: ExportLimits::default(),
        }
    }
}

/// A public base URL as configured (`http://host:port` or `https://host/prefix`), normalised
/// without its trailing `/`; or why it cannot be one. Every absolute URL the API writes starts
/// with it, inside JSON and HTTP headers, so only plain URL characters are allowed.
pub fn public_base(text: &str) -> Result<String, &'static str> {
    let base = text.trim().trim_end_matches('/');
    let rest = base
        .strip_prefix("https://")
        .or_else(|| base.strip_prefix("http://"))
        .ok_or("a public base URL starts with http:// or https://")?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err("a public base URL names a host");
    }
    if !rest.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~:/[]%".contains(&b)) {
        return Err("a public base URL has no user, query, fragment, spaces or quotes");
    }
    Ok(base.to_owned())
}

/// The base URLs of an API listening on `addr`: `http://addr`, and for a loopback address
/// also `http://localhost:port`.
pub fn bases_for_listen_addr(addr: std::net::SocketAddr) -> Vec<String> {
    let mut bases = vec![format!("http://{addr}")];
    if addr.ip().is_loopback() {
        bases.push(format!("http://localhost:{}", addr.port()));
    }
    bases
}

/// Default of [`Services::fhir_commit_wait_ms`].
pub const FHIR_COMMIT_WAIT_MS: u64 = 15_000;

/// [`router`] plus the record endpoints served by `records`.
pub fn router_with(chain: Arc<Chain>, records: Option<Arc<RecordService>>) -> Router {
    router_for(chain, Services { records, ..Services::default() })
}

/// The API's routes over `chain` and `services`.
pub fn router_for(chain: Arc<Chain>, services: Services) -> Router {
    let chain_id = chain.genesis().chain_id();
    let Services { records, tokens, fhir_commit_wait_ms, public_bases, http, nonces, exports } = services;
    let app = app::AppState {
        chain,
        chain_id,
        records,
        auth: Arc::new(auth::Authenticator::new(nonces)),
        tokens,
        search: Arc::default(),
        exports: Arc::new(medledger_records::export::jobs::Jobs::new(exports)),
        fhir_commit_wait_ms,
        public_bases: Arc::new(
            public_bases
                .iter()
                .filter_map(|b| {
                    public_base(b).inspect_err(|why| tracing::warn!(base = %b, why, "public base URL left out")).ok()
                })
                .collect(),
        ),
    };
    let record_body_limit = DefaultBodyLimit::max(http_limits::RECORD_BODY_BYTES_MAX);
    let admission_state = admission::Admission::new(&http);
    let router = Router::new()
        .route("/v1/health", get(routes::health))
        .route("/v1/head", get(routes::head))
        .route("/v1/proofs/inclusion", get(routes::inclusion))
        .route("/v1/proofs/consistency", get(routes::consistency))
        .route("/v1/checkpoint", get(routes::checkpoint))
        .route("/v1/checkpoint/key", get(routes::checkpoint_key))
        .route("/v1/transactions", post(routes::submit))
        .route("/v1/transactions/{id}", get(routes::transaction))
        .route("/v1/blocks/{height}", get(routes::block))
        .route("/v1/blocks/{height}/raw", get(routes::block_raw))
        .route("/v1/identities/{id}", get(routes::identity))
        .route("/v1/records", post(records::write).layer(record_body_limit))
        .route("/v1/records/{id}", get(records::read))
        .route("/v1/records/{id}/history", get(patients::records::history))
        .route("/v1/patients/{id}/records", get(patients::records::records))
        .route("/v1/patients/{id}/grants", get(patients::grants::grants))
        .route("/v1/patients/{id}/access-log", get(patients::access_log::access_log))
        .route("/v1/patients/{id}/notifications", get(patients::notifications::notifications))
        .route("/v1/patients/{id}/delegates", get(patients::grants::delegates))
        .route("/v1/break-glass", get(break_glass::list));
    fhir::routes(router)
        .route("/auth/token", post(smart::token))
        .route("/.well-known/smart-configuration", get(smart::configuration))
        .route("/metrics", get(routes::metrics))
        .route("/", get(portal::index))
        .route("/portal", get(portal::to_index))
        .route("/portal/", get(portal::to_index))
        .route("/portal/app.js", get(portal::app_js))
        .route("/portal/rfc6962.js", get(portal::rfc6962_js))
        .route("/portal/style.css", get(portal::style_css))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(DefaultBodyLimit::max(limits::HTTP_BODY_BYTES_MAX))
        .layer(middleware::from_fn_with_state(admission_state, admission::admit))
        .with_state(app)
}

/// Serves [`router`] on `listener` until `shutdown` completes, then finishes the requests in
/// flight and returns.
pub async fn serve(
    listener: tokio::net::TcpListener,
    chain: Arc<Chain>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, chain, None, shutdown).await
}

/// [`serve`] with the record endpoints.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    chain: Arc<Chain>,
    records: Option<Arc<RecordService>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_for(listener, chain, Services { records, ..Services::default() }, shutdown).await
}

/// [`serve`] with `services`.
pub async fn serve_for(
    listener: tokio::net::TcpListener,
    chain: Arc<Chain>,
    services: Services,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "HTTP API listening");
    }
    let http = services.http.clone();
    server::run(listener, router_for(chain, services), &http, shutdown).await
}

#[cfg(test)]
mod tests {
    use super::public_base;

    #[test]
    fn public_bases_are_plain_urls() {
        assert_eq!(public_base("https://fhir.example/").unwrap(), "https://fhir.example");
        assert_eq!(public_base(" http://[::1]:8080/prefix ").unwrap(), "http://[::1]:8080/prefix");
        for bad in [
            "fhir.example",
            "ftp://fhir.example",
            "http://",
            "http:///path",
            "https://a.example/x?y=1",
            "https://a.example/#x",
            "https://a.example/\"x",
            "https://user@a.example",
            "https://a.example/ space",
        ] {
            assert!(public_base(bad).is_err(), "{bad}");
        }
    }
}
