//! The state every handler shares ([`AppState`]: the chain, the record service, the
//! authenticator, the token store, the FHIR search index and export jobs, the public bases)
//! and [`on_chain`], which runs a chain call on the blocking pool.
//!
//! Every call into [`Chain`] that reads the store (redb, blob files) runs on tokio's blocking
//! pool, where a slow disk cannot stall the async workers. Reading finalized state takes a
//! snapshot ([`Chain::snapshot`]), which never waits for a lock and may be held anywhere.

use std::sync::Arc;

use medledger_node::chain::Chain;
use medledger_types::Hash;

use crate::error::ApiError;

#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) chain: Arc<Chain>,
    /// Computed once: hashing the genesis on every `/v1/head` would be waste.
    pub(crate) chain_id: Hash,
    /// Present when the node holds its organisation's keys and serves records.
    pub(crate) records: Option<Arc<medledger_records::RecordService>>,
    pub(crate) auth: Arc<crate::auth::Authenticator>,
    /// Bearer tokens issued by `/auth/token` (SMART backend services).
    pub(crate) tokens: Arc<crate::smart::tokens::TokenStore>,
    /// The FHIR search index (in memory only).
    pub(crate) search: Arc<medledger_records::search::SearchIndex>,
    /// FHIR bulk export jobs and their output (in memory only).
    pub(crate) exports: Arc<medledger_records::export::jobs::Jobs>,
    /// See [`crate::Services::fhir_commit_wait_ms`].
    pub(crate) fhir_commit_wait_ms: u64,
    /// See [`crate::Services::public_bases`].
    pub(crate) public_bases: Arc<Vec<String>>,
}

impl AppState {
    /// The base of every absolute URL the API writes: the first configured public base
    /// ([`crate::Services::public_bases`]), never the request's `Host` header. Empty when none
    /// is configured: URLs are then relative (`/fhir/...`).
    pub(crate) fn public_base(&self) -> &str {
        self.public_bases.first().map_or("", String::as_str)
    }
}

/// Runs `f` against the chain on the blocking pool. A panic inside it (a poisoned lock, a
/// bug) becomes a 500 instead of tearing down the connection.
pub(crate) async fn on_chain<T, F>(chain: &Arc<Chain>, f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&Chain) -> Result<T, ApiError> + Send + 'static,
{
    let chain = chain.clone();
    match tokio::task::spawn_blocking(move || f(&chain)).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => Err(ApiError::Internal("request handler panicked".into())),
        Err(_) => Err(ApiError::Internal("request handler was cancelled".into())),
    }
}
