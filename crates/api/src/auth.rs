//! Request authentication: each request is signed with the caller's identity key.
//!
//! `Authorization: Medledger-Ed25519 id=<identity hex>,ts=<ms>,nonce=<32 hex>,sig=<128 hex>`
//! where the signature (Ed25519, ZIP-215) covers
//! `"medledger/request/v1\n" METHOD "\n" PATH?QUERY "\n" ts "\n" nonce "\n" hex(SHA-256(body))`.
//! The node checks the identity is registered, the signature under its current key, the
//! time within ±5 minutes of its clock, and that the nonce was not seen in that window.

use std::{
    collections::{HashMap, VecDeque},
    sync::Mutex,
};

use medledger_crypto::{Keypair, Signature, sha256};
use medledger_node::chain::Chain;
use medledger_types::{IdentityId, TimestampMs};

pub const SCHEME: &str = "Medledger-Ed25519";
/// How far a request's time may be from the node's clock.
pub const CLOCK_SKEW_MAX_MS: u64 = 5 * 60 * 1000;
/// Most nonces remembered; beyond it, requests are refused until old ones expire.
pub const NONCES_REMEMBERED_MAX: usize = 1_000_000;

/// The exact bytes a request signature covers.
pub fn request_message(method: &str, path_and_query: &str, ts_ms: u64, nonce: &str, body: &[u8]) -> Vec<u8> {
    format!("medledger/request/v1\n{method}\n{path_and_query}\n{ts_ms}\n{nonce}\n{}", sha256(body).to_hex())
        .into_bytes()
}

/// The `Authorization` header value for a request by `keys` (whose identity is `id`).
pub fn authorization(
    keys: &Keypair,
    id: &IdentityId,
    method: &str,
    path_and_query: &str,
    body: &[u8],
    ts_ms: u64,
) -> String {
    let mut nonce = [0u8; 16];
    rand::fill(&mut nonce);
    let nonce = hex::encode(nonce);
    let sig = keys.sign(&request_message(method, path_and_query, ts_ms, &nonce, body));
    format!("{SCHEME} id={id},ts={ts_ms},nonce={nonce},sig={}", hex::encode(sig.0))
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing Authorization header (sign the request: {SCHEME})")]
    Missing,
    #[error("malformed Authorization header: {0}")]
    Malformed(&'static str),
    #[error("unknown identity")]
    UnknownIdentity,
    #[error("request time is more than 5 minutes from the node's clock")]
    Stale,
    #[error("request was already seen (replayed nonce)")]
    Replayed,
    #[error("signature does not verify")]
    BadSignature,
    #[error("too many recent requests to remember; retry shortly")]
    Saturated,
}

/// Recently seen `identity/nonce` keys, with when, oldest first.
#[derive(Default)]
struct SeenNonces {
    keys: HashMap<String, TimestampMs>,
    order: VecDeque<(TimestampMs, String)>,
}

/// Verifies signed requests and remembers recent nonces.
#[derive(Default)]
pub struct Authenticator {
    seen: Mutex<SeenNonces>,
}

impl Authenticator {
    /// The authenticated identity of a request, or why not.
    pub fn verify(
        &self,
        chain: &Chain,
        header: Option<&str>,
        method: &str,
        path_and_query: &str,
        body: &[u8],
        now_ms: TimestampMs,
    ) -> Result<IdentityId, AuthError> {
        let header = header.ok_or(AuthError::Missing)?;
        let params = header.strip_prefix(SCHEME).ok_or(AuthError::Malformed("unknown scheme"))?.trim();
        let (mut id, mut ts, mut nonce, mut sig) = (None, None, None, None);
        for part in params.split(',') {
            let (k, v) = part.trim().split_once('=').ok_or(AuthError::Malformed("expected key=value"))?;
            match k {
                "id" => id = Some(IdentityId::from_hex(v).map_err(|_| AuthError::Malformed("id"))?),
                "ts" => ts = Some(v.parse::<u64>().map_err(|_| AuthError::Malformed("ts"))?),
                "nonce" if v.len() == 32 && v.bytes().all(|b| b.is_ascii_hexdigit()) => nonce = Some(v.to_owned()),
                "sig" => {
                    let mut s = [0u8; 64];
                    hex::decode_to_slice(v, &mut s).map_err(|_| AuthError::Malformed("sig"))?;
                    sig = Some(Signature(s));
                }
                _ => return Err(AuthError::Malformed("unknown or invalid field")),
            }
        }
        let (Some(id), Some(ts), Some(nonce), Some(sig)) = (id, ts, nonce, sig) else {
            return Err(AuthError::Malformed("needs id, ts, nonce and sig"));
        };
        if ts.abs_diff(now_ms) > CLOCK_SKEW_MAX_MS {
            return Err(AuthError::Stale);
        }
        let key = chain.state().identity(&id).map(|i| i.signing_key).ok_or(AuthError::UnknownIdentity)?;
        key.verify(&request_message(method, path_and_query, ts, &nonce, body), &sig)
            .map_err(|_| AuthError::BadSignature)?;
        // Only authentic requests consume nonce memory.
        let mut seen = self.seen.lock().expect("nonce lock poisoned");
        let SeenNonces { keys: set, order } = &mut *seen;
        while let Some((t, _)) = order.front() {
            if now_ms.saturating_sub(*t) <= 2 * CLOCK_SKEW_MAX_MS {
                break;
            }
            let (_, old) = order.pop_front().expect("front exists");
            set.remove(&old);
        }
        let key = format!("{id}/{nonce}");
        if set.contains_key(&key) {
            return Err(AuthError::Replayed);
        }
        if set.len() >= NONCES_REMEMBERED_MAX {
            return Err(AuthError::Saturated);
        }
        set.insert(key.clone(), now_ms);
        order.push_back((now_ms, key));
        Ok(id)
    }
}
