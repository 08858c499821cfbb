//! The `/v1` ledger endpoints (health, head, proofs, checkpoints, transactions, blocks,
//! identities, metrics) and the fallbacks for unknown routes and methods, with the JSON shapes
//! they return.
//!
//! Every call into [`Chain`] that reads the store runs on tokio's blocking pool
//! ([`on_chain`]), so a slow disk never stalls the async workers. Finalized state is read from
//! a snapshot ([`Chain::snapshot`]), which takes no lock.

use std::collections::HashMap;

use axum::{
    Json,
    body::Bytes,
    extract::{FromRequest, Path, Query, Request, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header},
    response::{IntoResponse, Response},
};
use medledger_ledger::{Block, Identity, Transaction};
use medledger_node::{
    NodeError,
    chain::{Chain, TxStatus},
};
use medledger_types::{Height, IdentityId, TxId, limits};
use serde::{Deserialize, Serialize};

use crate::{
    app::{AppState, on_chain},
    clock::now_ms,
    error::{ApiError, echo},
    params::{hexes, optional_param, parse_identity_id, parse_u64},
    visibility::{Viewer, caller},
};

const TEXT_PLAIN: &str = "text/plain; charset=utf-8";
const OCTET_STREAM: &str = "application/octet-stream";
/// Prometheus text exposition format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

fn text(content_type: &'static str, body: String) -> Response {
    ([(header::CONTENT_TYPE, HeaderValue::from_static(content_type))], body).into_response()
}

// ---- query and path parameters ----

fn required_param(query: &HashMap<String, String>, name: &str) -> Result<u64, ApiError> {
    optional_param(query, name)?
        .ok_or_else(|| ApiError::BadRequest(format!("missing required query parameter `{name}`")))
}

fn parse_height(text: &str) -> Result<Height, ApiError> {
    parse_u64("block height", text)
}

fn parse_tx_id(text: &str) -> Result<TxId, ApiError> {
    TxId::from_hex(text).map_err(|e| ApiError::BadRequest(format!("transaction id must be 64 hex characters: {e}")))
}

// ---- health and head ----

#[derive(Serialize)]
struct Health {
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    height: Option<Height>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

pub(crate) async fn health(State(app): State<AppState>) -> Result<Response, ApiError> {
    if let Some(reason) = app.chain.halted() {
        let body = Health { status: "halted", height: None, reason: Some(reason) };
        return Ok((StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response());
    }
    let height = on_chain(&app.chain, |c| Ok(c.head().height)).await?;
    Ok(Json(Health { status: "ok", height: Some(height), reason: None }).into_response())
}

#[derive(Serialize)]
pub(crate) struct HeadView {
    chain_id: String,
    height: Height,
    block_hash: String,
    timestamp_ms: u64,
    log_size: u64,
    log_root: String,
}

pub(crate) async fn head(State(app): State<AppState>) -> Result<Json<HeadView>, ApiError> {
    let head = on_chain(&app.chain, |c| Ok(c.head())).await?;
    Ok(Json(HeadView {
        chain_id: app.chain_id.to_hex(),
        height: head.height,
        block_hash: head.hash.to_hex(),
        timestamp_ms: head.timestamp_ms,
        log_size: head.log_size,
        log_root: head.log_root.to_hex(),
    }))
}

// ---- proofs and checkpoints ----

#[derive(Serialize)]
pub(crate) struct InclusionView {
    index: u64,
    size: u64,
    leaf_hash: String,
    root: String,
    proof: Vec<String>,
}

pub(crate) async fn inclusion(
    State(app): State<AppState>,
    query: Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<InclusionView>, ApiError> {
    let Query(query) = query?;
    let index = required_param(&query, "index")?;
    let size = optional_param(&query, "size")?;
    on_chain(&app.chain, move |c| {
        let size = size.unwrap_or_else(|| c.head().log_size);
        let (leaf, root, proof) = c.inclusion_proof(index, size)?;
        Ok(Json(InclusionView { index, size, leaf_hash: leaf.to_hex(), root: root.to_hex(), proof: hexes(&proof) }))
    })
    .await
}

#[derive(Serialize)]
pub(crate) struct ConsistencyView {
    from: u64,
    to: u64,
    root_from: String,
    root_to: String,
    proof: Vec<String>,
}

pub(crate) async fn consistency(
    State(app): State<AppState>,
    query: Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<ConsistencyView>, ApiError> {
    let Query(query) = query?;
    let from = required_param(&query, "from")?;
    let to = optional_param(&query, "to")?;
    on_chain(&app.chain, move |c| {
        let to = to.unwrap_or_else(|| c.head().log_size);
        let (root_from, root_to, proof) = c.consistency_proof(from, to)?;
        Ok(Json(ConsistencyView {
            from,
            to,
            root_from: root_from.to_hex(),
            root_to: root_to.to_hex(),
            proof: hexes(&proof),
        }))
    })
    .await
}

pub(crate) async fn checkpoint(State(app): State<AppState>) -> Result<Response, ApiError> {
    let note = on_chain(&app.chain, |c| Ok(c.checkpoint())).await?;
    Ok(text(TEXT_PLAIN, note))
}

pub(crate) async fn checkpoint_key(State(app): State<AppState>) -> Response {
    text(TEXT_PLAIN, app.chain.checkpoint_verifier_key())
}

// ---- transactions ----

#[derive(Debug)]
enum BodyKind {
    Raw,
    Json,
}

fn body_kind(headers: &HeaderMap) -> Result<BodyKind, ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Err(ApiError::UnsupportedMediaType("(none)".into()));
    };
    let text = value.to_str().map_err(|_| ApiError::UnsupportedMediaType("(not visible ASCII)".into()))?;
    let essence = text.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    match essence.as_str() {
        OCTET_STREAM => Ok(BodyKind::Raw),
        "application/json" => Ok(BodyKind::Json),
        _ => Err(ApiError::UnsupportedMediaType(echo(text))),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubmitJson {
    tx: String,
}

/// The transaction bytes of a `{"tx": "<hex>"}` body. Messages describe where the JSON is
/// wrong without quoting it.
fn tx_from_json(body: &[u8]) -> Result<Vec<u8>, ApiError> {
    let parsed: SubmitJson = serde_json::from_slice(body).map_err(|e| {
        ApiError::BadRequest(format!(
            "body must be JSON of the form {{\"tx\": \"<hex>\"}} ({:?} error at line {} column {})",
            e.classify(),
            e.line(),
            e.column()
        ))
    })?;
    hex::decode(parsed.tx.trim()).map_err(|e| ApiError::BadRequest(format!("field `tx` is not hex: {e}")))
}

#[derive(Serialize)]
struct Submitted {
    tx_id: String,
    status: &'static str,
}

pub(crate) async fn submit(State(app): State<AppState>, request: Request) -> Result<Response, ApiError> {
    // The content type is checked before the body is read.
    let kind = body_kind(request.headers())?;
    let body = Bytes::from_request(request, &())
        .await
        .map_err(|rejection| ApiError::from_body(rejection, limits::HTTP_BODY_BYTES_MAX))?;
    let bytes = match kind {
        BodyKind::Raw => body.to_vec(),
        BodyKind::Json => tx_from_json(&body)?,
    };
    let now = now_ms();
    let id = on_chain(&app.chain, move |c| Ok(c.submit(&bytes, now)?)).await?;
    let mut response =
        (StatusCode::ACCEPTED, Json(Submitted { tx_id: id.to_hex(), status: "pending" })).into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/transactions/{id}")) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

#[derive(Serialize)]
pub(crate) struct TxView {
    tx_id: String,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    height: Option<Height>,
    #[serde(skip_serializing_if = "Option::is_none")]
    index: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    log_index: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    signer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

impl TxView {
    fn new(id: &TxId, status: &'static str) -> Self {
        Self {
            tx_id: id.to_hex(),
            status,
            height: None,
            index: None,
            log_index: None,
            kind: None,
            signer: None,
            reason: None,
        }
    }
}

/// A transaction's status as `viewer` may see it: where a committed one is, for anyone; what
/// it does and who signed it, for members and its signer only (`visibility.rs`).
fn tx_view(chain: &Chain, id: TxId, viewer: Viewer) -> Result<TxView, ApiError> {
    Ok(match chain.tx_status(&id)? {
        TxStatus::Pending => TxView::new(&id, "pending"),
        TxStatus::Rejected { reason } => TxView { reason: Some(reason), ..TxView::new(&id, "rejected") },
        TxStatus::Unknown => TxView::new(&id, "unknown"),
        TxStatus::Committed { height, index, log_index } => {
            let block =
                chain.block(height)?.ok_or_else(|| NodeError::Corrupt(format!("indexed block {height} is missing")))?;
            let tx = block.txs.get(index as usize).filter(|tx| tx.id() == id).ok_or_else(|| {
                NodeError::Corrupt(format!("transaction index points at the wrong place in block {height}"))
            })?;
            let body = tx.body();
            let details = viewer.sees_details_signed_by(&body.signer);
            TxView {
                height: Some(height),
                index: Some(index),
                log_index: Some(log_index),
                kind: details.then(|| body.payload.kind()),
                signer: details.then(|| body.signer.to_hex()),
                ..TxView::new(&id, "committed")
            }
        }
    })
}

pub(crate) async fn transaction(
    State(app): State<AppState>,
    id: Result<Path<String>, axum::extract::rejection::PathRejection>,
    request: Request,
) -> Result<Response, ApiError> {
    let Path(id) = id?;
    let id = parse_tx_id(&id)?;
    let caller = caller(&app, request).await?;
    let view = on_chain(&app.chain, move |c| tx_view(c, id, Viewer::of(c, caller))).await?;
    let status = if view.status == "unknown" { StatusCode::NOT_FOUND } else { StatusCode::OK };
    Ok((status, Json(view)).into_response())
}

// ---- blocks ----

/// A transaction in a block: its id (the log's leaf hash) for anyone; what it is, who signed it
/// and with which nonce for members and its signer only.
#[derive(Serialize)]
pub(crate) struct BlockTxView {
    tx_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    signer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    nonce: Option<u64>,
}

impl BlockTxView {
    fn new(tx: &Transaction, viewer: Viewer) -> Self {
        let body = tx.body();
        let details = viewer.sees_details_signed_by(&body.signer);
        Self {
            tx_id: tx.id().to_hex(),
            kind: details.then(|| body.payload.kind()),
            signer: details.then(|| body.signer.to_hex()),
            nonce: details.then_some(body.nonce),
        }
    }
}

#[derive(Serialize)]
pub(crate) struct BlockView {
    height: Height,
    hash: String,
    parent: String,
    timestamp_ms: u64,
    proposer: String,
    tx_count: u32,
    txs_root: String,
    log_size: u64,
    log_root: String,
    transactions: Vec<BlockTxView>,
}

impl BlockView {
    /// `block`'s header, and its transactions as `viewer` may see them.
    fn new(block: &Block, viewer: Viewer) -> Self {
        let h = &block.header;
        Self {
            height: h.height,
            hash: block.hash().to_hex(),
            parent: h.parent.to_hex(),
            timestamp_ms: h.timestamp_ms,
            proposer: h.proposer.to_hex(),
            tx_count: h.tx_count,
            txs_root: h.txs_root.to_hex(),
            log_size: h.log_size,
            log_root: h.log_root.to_hex(),
            transactions: block.txs.iter().map(|tx| BlockTxView::new(tx, viewer)).collect(),
        }
    }
}

fn no_block(height: Height) -> ApiError {
    ApiError::NotFound(format!("no finalized block at height {height}"))
}

pub(crate) async fn block(
    State(app): State<AppState>,
    height: Result<Path<String>, axum::extract::rejection::PathRejection>,
    request: Request,
) -> Result<Json<BlockView>, ApiError> {
    let Path(height) = height?;
    let height = parse_height(&height)?;
    let caller = caller(&app, request).await?;
    on_chain(&app.chain, move |c| {
        let viewer = Viewer::of(c, caller);
        let block = c.block(height)?.ok_or_else(|| no_block(height))?;
        Ok(Json(BlockView::new(&block, viewer)))
    })
    .await
}

/// Canonical block bytes: every field of every transaction, so for consortium members only
/// (`visibility.rs`); `GET /v1/blocks/{height}` is the public view.
pub(crate) async fn block_raw(
    State(app): State<AppState>,
    height: Result<Path<String>, axum::extract::rejection::PathRejection>,
    request: Request,
) -> Result<Response, ApiError> {
    let Path(height) = height?;
    let height = parse_height(&height)?;
    let Some(caller) = caller(&app, request).await? else {
        return Err(ApiError::Unauthorized(format!(
            "raw blocks are for consortium members: sign the request ({}) as an organisation or a validator; \
             GET /v1/blocks/{height} is public",
            crate::auth::SCHEME
        )));
    };
    let bytes = on_chain(&app.chain, move |c| {
        if !Viewer::of(c, Some(caller)).is_member() {
            return Err(ApiError::Forbidden {
                reason: "not-a-member",
                message: "raw blocks are for consortium members (organisations and validators)".into(),
            });
        }
        c.store().block_bytes(height).map_err(NodeError::from)?.ok_or_else(|| no_block(height))
    })
    .await?;
    Ok(([(header::CONTENT_TYPE, HeaderValue::from_static(OCTET_STREAM))], bytes).into_response())
}

// ---- identities ----

#[derive(Serialize)]
pub(crate) struct IdentityView {
    id: String,
    role: &'static str,
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    organisation: Option<String>,
    /// What a member organisation does (`care-provider`, `payer`, `research`, `other`).
    #[serde(skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    signing_key: String,
    encryption_key: String,
    next_nonce: u64,
    registered_at: Height,
}

impl From<&Identity> for IdentityView {
    fn from(who: &Identity) -> Self {
        Self {
            id: who.id.to_hex(),
            role: who.role.as_str(),
            name: who.name.clone(),
            organisation: who.organisation.as_ref().map(IdentityId::to_hex),
            kind: who.kind.map(|k| k.as_str()),
            signing_key: hex::encode(who.signing_key.0),
            encryption_key: hex::encode(who.encryption_key.0),
            next_nonce: who.next_nonce,
            registered_at: who.registered_at,
        }
    }
}

/// An identity. A patient's is shown only to the patient and to members; to anyone else it
/// answers exactly as an unknown id (`visibility.rs`).
pub(crate) async fn identity(
    State(app): State<AppState>,
    id: Result<Path<String>, axum::extract::rejection::PathRejection>,
    request: Request,
) -> Result<Json<IdentityView>, ApiError> {
    let Path(id) = id?;
    let id = parse_identity_id(&id)?;
    let caller = caller(&app, request).await?;
    on_chain(&app.chain, move |c| {
        let viewer = Viewer::of(c, caller);
        let view = medledger_records::views::identity_as(c, caller.as_ref(), viewer.is_member(), &id);
        view.as_ref().map(IdentityView::from).map(Json).ok_or_else(|| ApiError::NotFound(format!("no identity {id}")))
    })
    .await
}

// ---- metrics and fallbacks ----

pub(crate) async fn metrics(State(app): State<AppState>) -> Response {
    text(PROMETHEUS_TEXT, app.chain.metrics.render())
}

pub(crate) async fn not_found(uri: Uri) -> axum::response::Response {
    use axum::response::IntoResponse;
    // FHIR clients get an OperationOutcome for paths under /fhir.
    if uri.path().starts_with("/fhir/") {
        return crate::fhir::errors::not_supported().await.into_response();
    }
    ApiError::NotFound(format!("no such endpoint: {}", echo(uri.path()))).into_response()
}

pub(crate) async fn method_not_allowed(method: Method, uri: Uri) -> axum::response::Response {
    use axum::response::IntoResponse;
    if uri.path().starts_with("/fhir/") {
        return crate::fhir::errors::not_supported().await.into_response();
    }
    ApiError::MethodNotAllowed { method: echo(method.as_str()), path: echo(uri.path()) }.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn u64_parameters_are_canonical_decimals() {
        assert_eq!(parse_u64("x", "0").unwrap(), 0);
        assert_eq!(parse_u64("x", "18446744073709551615").unwrap(), u64::MAX);
        for bad in ["", "+1", "-1", "1.0", "0x10", " 1", "18446744073709551616", "abc"] {
            assert_eq!(parse_u64("x", bad).unwrap_err().status(), StatusCode::BAD_REQUEST, "{bad:?}");
        }
    }

    #[test]
    fn content_types() {
        let kind = |ct: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
            body_kind(&h)
        };
        assert!(matches!(kind("application/octet-stream"), Ok(BodyKind::Raw)));
        assert!(matches!(kind("Application/JSON; charset=utf-8"), Ok(BodyKind::Json)));
        assert_eq!(kind("text/plain").unwrap_err().status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert_eq!(body_kind(&HeaderMap::new()).unwrap_err().status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }

    #[test]
    fn json_bodies() {
        assert_eq!(tx_from_json(br#"{"tx": "00ff"}"#).unwrap(), vec![0, 0xff]);
        assert!(tx_from_json(br#"{"tx": "0g"}"#).is_err());
        assert!(tx_from_json(br#"{"tx": "00", "extra": 1}"#).is_err());
        let err = tx_from_json(br#"{"tx": 5}"#).unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
    }
}
