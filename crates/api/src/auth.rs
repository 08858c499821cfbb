//! Request authentication: each request is signed with the caller's identity key.
//!
//! `Authorization: Medledger-Ed25519 id=<identity hex>,ts=<ms>,nonce=<32 hex>,sig=<128 hex>`
//! where the signature (Ed25519, ZIP-215) covers
//! `"medledger/request/v1\n" METHOD "\n" PATH?QUERY "\n" ts "\n" nonce "\n" hex(SHA-256(body))`.
//! The node checks the identity is registered, the signature under its current key, the
//! time within ±5 minutes of its clock, and that the nonce was not seen in that window.
//!
//! Nonces are remembered per identity, each identity under its own quota
//! ([`NonceLimits::per_identity_max`] requests per [`NONCE_MEMORY_MS`]): an identity past it
//! is refused (429) until its oldest nonces are forgotten, and nobody else is affected. A nonce
//! is never forgotten while its request could still be replayed.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{Mutex, MutexGuard, PoisonError},
};

use medledger_crypto::{Keypair, Signature, sha256};
use medledger_node::chain::Chain;
use medledger_types::{IdentityId, TimestampMs};

pub const SCHEME: &str = "Medledger-Ed25519";
/// Longest Authorization header accepted: a well-formed one is under 300 bytes.
pub const AUTHORIZATION_BYTES_MAX: usize = 512;
/// How far a request's time may be from the node's clock.
pub const CLOCK_SKEW_MAX_MS: u64 = 5 * 60 * 1000;
/// How long a nonce is remembered after its request was accepted: a request is accepted while
/// its time is within [`CLOCK_SKEW_MAX_MS`] of the node's clock, so one accepted at `t` could be
/// replayed until `t + 2 × CLOCK_SKEW_MAX_MS` and no later.
pub const NONCE_MEMORY_MS: u64 = 2 * CLOCK_SKEW_MAX_MS;
/// Nonces are remembered in groups by acceptance time, this wide, each forgotten whole when
/// its latest nonce may be: one timestamp per group instead of one per nonce, so a nonce is
/// kept up to this much longer than it must be (the safe side).
const NONCE_GROUP_MS: u64 = 60 * 1000;
/// Default of [`NonceLimits::per_identity_max`].
pub const NONCES_PER_IDENTITY_MAX: usize = 50_000;
/// Default of [`NonceLimits::remembered_max`].
pub const NONCES_REMEMBERED_MAX: usize = 4_000_000;

/// How many recent requests' nonces the node remembers, per identity and in all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NonceLimits {
    /// Signed requests one identity may make within [`NONCE_MEMORY_MS`] (ten minutes; up to a
    /// minute more, see `NONCE_GROUP_MS`); more are refused with 429 and `Retry-After` until
    /// its oldest are forgotten. The default, 50,000, is 83 requests a second for ten minutes.
    pub per_identity_max: usize,
    /// Nonces remembered in all (about 40 bytes each); past it signed requests are refused
    /// with 503 and `Retry-After`. Filling it takes `remembered_max / per_identity_max`
    /// identities at their whole quota (80 with the defaults).
    pub remembered_max: usize,
}

impl Default for NonceLimits {
    fn default() -> Self {
        Self { per_identity_max: NONCES_PER_IDENTITY_MAX, remembered_max: NONCES_REMEMBERED_MAX }
    }
}

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
    /// The identity made its whole quota of signed requests in the memory window.
    #[error("this identity made {max} signed requests in the last 10 minutes, its quota; retry in {retry_after_s} s")]
    TooMany { max: usize, retry_after_s: u64 },
    /// The node remembers as many nonces as it may.
    #[error("this node remembers as many recent requests as it can; retry in {retry_after_s} s")]
    Saturated { retry_after_s: u64 },
}

/// Whole seconds from `now_ms` until `at_ms`, at least 1: a `Retry-After`.
fn seconds_until(at_ms: TimestampMs, now_ms: TimestampMs) -> u64 {
    at_ms.saturating_sub(now_ms).div_ceil(1000).max(1)
}

/// Nonces accepted within [`NONCE_GROUP_MS`] of `first_ms`.
struct Group {
    first_ms: TimestampMs,
    /// The latest acceptance time in the group (the clock may step back, so not always the
    /// last inserted); the group is forgotten [`NONCE_MEMORY_MS`] after it.
    latest_ms: TimestampMs,
    nonces: HashSet<u128>,
}

/// One identity's remembered nonces, oldest group first.
#[derive(Default)]
struct IdentityNonces {
    groups: VecDeque<Group>,
    count: usize,
}

impl IdentityNonces {
    fn contains(&self, nonce: u128) -> bool {
        self.groups.iter().any(|g| g.nonces.contains(&nonce))
    }

    /// Forgets the groups no request of which could be replayed at `now_ms` or later; how many
    /// nonces were forgotten.
    fn forget_expired(&mut self, now_ms: TimestampMs) -> usize {
        let mut forgotten = 0;
        while let Some(group) = self.groups.front() {
            if group.latest_ms.saturating_add(NONCE_MEMORY_MS) >= now_ms {
                break;
            }
            forgotten += group.nonces.len();
            self.groups.pop_front();
        }
        self.count -= forgotten;
        forgotten
    }

    fn insert(&mut self, nonce: u128, now_ms: TimestampMs) {
        match self.groups.back_mut() {
            // A clock that stepped back lands in the last group too.
            Some(last) if now_ms < last.first_ms.saturating_add(NONCE_GROUP_MS) => {
                last.latest_ms = last.latest_ms.max(now_ms);
                last.nonces.insert(nonce);
            }
            _ => self.groups.push_back(Group { first_ms: now_ms, latest_ms: now_ms, nonces: HashSet::from([nonce]) }),
        }
        self.count += 1;
    }

    /// When this identity's oldest group will be forgotten.
    fn next_forgetting_ms(&self, now_ms: TimestampMs) -> TimestampMs {
        self.groups.front().map_or(now_ms, |g| g.latest_ms.saturating_add(NONCE_MEMORY_MS + 1))
    }
}

/// Every identity's remembered nonces.
#[derive(Default)]
struct SeenNonces {
    /// Only identities with nonces remembered.
    identities: HashMap<IdentityId, IdentityNonces>,
    /// Nonces remembered in all.
    total: usize,
    /// When to look at every identity for groups to forget next (identities that stopped
    /// sending are not looked at otherwise).
    next_sweep_ms: TimestampMs,
}

impl SeenNonces {
    fn sweep(&mut self, now_ms: TimestampMs) {
        let mut forgotten = 0;
        self.identities.retain(|_, nonces| {
            forgotten += nonces.forget_expired(now_ms);
            nonces.count > 0
        });
        self.total -= forgotten;
        self.next_sweep_ms = now_ms.saturating_add(NONCE_GROUP_MS);
    }

    /// Remembers `nonce` of `id` accepted at `now_ms`, or why not.
    fn remember(
        &mut self,
        id: IdentityId,
        nonce: u128,
        now_ms: TimestampMs,
        limits: &NonceLimits,
    ) -> Result<(), AuthError> {
        if now_ms >= self.next_sweep_ms {
            self.sweep(now_ms);
        }
        let mine = self.identities.entry(id).or_default();
        let forgotten = mine.forget_expired(now_ms);
        let refusal = if mine.contains(nonce) {
            Some(AuthError::Replayed)
        } else if mine.count >= limits.per_identity_max {
            let retry_after_s = seconds_until(mine.next_forgetting_ms(now_ms), now_ms);
            Some(AuthError::TooMany { max: limits.per_identity_max, retry_after_s })
        } else if self.total - forgotten >= limits.remembered_max {
            Some(AuthError::Saturated { retry_after_s: seconds_until(self.next_sweep_ms, now_ms) })
        } else {
            mine.insert(nonce, now_ms);
            None
        };
        let empty = mine.count == 0;
        self.total = self.total - forgotten + usize::from(refusal.is_none());
        if empty {
            self.identities.remove(&id);
        }
        refusal.map_or(Ok(()), Err)
    }
}

/// The fields of a `Medledger-Ed25519` Authorization header, parsed but not yet checked.
#[doc(hidden)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedHeader<'a> {
    pub id: IdentityId,
    pub ts_ms: u64,
    /// 32 hex digits, as sent (the signature covers this spelling).
    pub nonce: &'a str,
    pub sig: Signature,
}

/// Parses an Authorization header value; what [`Authenticator::verify`] does before any
/// check against the chain, the clock or the nonce memory. Public only for the fuzz targets.
#[doc(hidden)]
pub fn parse_authorization(header: &str) -> Result<SignedHeader<'_>, AuthError> {
    // One value has one spelling: each field once, the time as a canonical decimal, and nothing
    // longer than the longest well-formed header (so the parser's work is bounded too).
    if header.len() > AUTHORIZATION_BYTES_MAX {
        return Err(AuthError::Malformed("header too long"));
    }
    let params = header.strip_prefix(SCHEME).ok_or(AuthError::Malformed("unknown scheme"))?.trim();
    let (mut id, mut ts, mut nonce, mut sig) = (None, None, None, None);
    for part in params.split(',') {
        let (k, v) = part.trim().split_once('=').ok_or(AuthError::Malformed("expected key=value"))?;
        let repeated = match k {
            "id" => id.replace(IdentityId::from_hex(v).map_err(|_| AuthError::Malformed("id"))?).is_some(),
            "ts" => {
                let canonical = !v.is_empty()
                    && v.len() <= 20
                    && v.bytes().all(|b| b.is_ascii_digit())
                    && (v == "0" || !v.starts_with('0'));
                let value = v.parse::<u64>().ok().filter(|_| canonical).ok_or(AuthError::Malformed("ts"))?;
                ts.replace(value).is_some()
            }
            "nonce" if v.len() == 32 && v.bytes().all(|b| b.is_ascii_hexdigit()) => nonce.replace(v).is_some(),
            "sig" => {
                let mut s = [0u8; 64];
                hex::decode_to_slice(v, &mut s).map_err(|_| AuthError::Malformed("sig"))?;
                sig.replace(Signature(s)).is_some()
            }
            _ => return Err(AuthError::Malformed("unknown or invalid field")),
        };
        if repeated {
            return Err(AuthError::Malformed("a field is repeated"));
        }
    }
    let (Some(id), Some(ts_ms), Some(nonce), Some(sig)) = (id, ts, nonce, sig) else {
        return Err(AuthError::Malformed("needs id, ts, nonce and sig"));
    };
    Ok(SignedHeader { id, ts_ms, nonce, sig })
}

/// Verifies signed requests and remembers recent nonces.
#[derive(Default)]
pub struct Authenticator {
    limits: NonceLimits,
    seen: Mutex<SeenNonces>,
}

impl Authenticator {
    pub fn new(limits: NonceLimits) -> Self {
        Self { limits, seen: Mutex::default() }
    }

    fn seen(&self) -> MutexGuard<'_, SeenNonces> {
        // Counts and sets change together in single steps; a panic elsewhere leaves them whole.
        self.seen.lock().unwrap_or_else(PoisonError::into_inner)
    }

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
        let SignedHeader { id, ts_ms: ts, nonce, sig } = parse_authorization(header)?;
        if ts.abs_diff(now_ms) > CLOCK_SKEW_MAX_MS {
            return Err(AuthError::Stale);
        }
        let key = chain.snapshot().identity(&id).map(|i| i.signing_key).ok_or(AuthError::UnknownIdentity)?;
        key.verify(&request_message(method, path_and_query, ts, nonce, body), &sig)
            .map_err(|_| AuthError::BadSignature)?;
        // Only authentic requests consume nonce memory. Upper- and lower-case spellings of a
        // nonce are the same nonce.
        let value = u128::from_str_radix(nonce, 16).map_err(|_| AuthError::Malformed("nonce"))?;
        self.seen().remember(id, value, now_ms, &self.limits)?;
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: NonceLimits = NonceLimits { per_identity_max: 3, remembered_max: 5 };

    fn id(n: u8) -> IdentityId {
        IdentityId([n; 32])
    }

    #[test]
    fn an_authorization_header_has_one_spelling() {
        let sig = "ab".repeat(64);
        let nonce = "0123456789abcdef0123456789abcdef";
        let who = id(7).to_hex();
        let good = format!("{SCHEME} id={who},ts=1700000000000,nonce={nonce},sig={sig}");
        assert!(parse_authorization(&good).is_ok());
        for bad in [
            // A field twice (the last one used to win).
            format!("{SCHEME} id={who},ts=1700000000000,ts=5,nonce={nonce},sig={sig}"),
            format!("{SCHEME} id={who},ts=1700000000000,nonce={nonce},sig={sig},sig={sig}"),
            // Times spelled other than as a canonical decimal.
            format!("{SCHEME} id={who},ts=+1700000000000,nonce={nonce},sig={sig}"),
            format!("{SCHEME} id={who},ts=01700000000000,nonce={nonce},sig={sig}"),
            // Padding past the longest well-formed header.
            format!("{SCHEME} id={who},ts=1700000000000,nonce={nonce},sig={sig}{}", " ".repeat(400)),
        ] {
            assert!(matches!(parse_authorization(&bad), Err(AuthError::Malformed(_))), "accepted {bad}");
        }
    }

    #[test]
    fn a_nonce_is_remembered_exactly_as_long_as_it_could_be_replayed() {
        let mut seen = SeenNonces::default();
        let t = 1_000_000;
        assert_eq!(seen.remember(id(1), 7, t, &LIMITS), Ok(()));
        assert_eq!(seen.remember(id(1), 7, t + NONCE_MEMORY_MS, &LIMITS), Err(AuthError::Replayed));
        assert_eq!(seen.remember(id(1), 7, t + NONCE_MEMORY_MS + 1, &LIMITS), Ok(()));
        // Another identity's nonce 7 is another nonce.
        assert_eq!(seen.remember(id(2), 7, t, &LIMITS), Ok(()));
        // A clock that steps back forgets nothing sooner.
        assert_eq!(seen.remember(id(3), 1, t, &LIMITS), Ok(()));
        assert_eq!(seen.remember(id(3), 2, t - 30_000, &LIMITS), Ok(()));
        assert_eq!(seen.remember(id(3), 2, t + NONCE_MEMORY_MS, &LIMITS), Err(AuthError::Replayed));
    }

    #[test]
    fn an_identity_past_its_quota_is_refused_and_no_one_else() {
        let mut seen = SeenNonces::default();
        let t = 1_000_000;
        for n in 0..3 {
            assert_eq!(seen.remember(id(1), n, t + n as u64, &LIMITS), Ok(()));
        }
        let retry_after_s = NONCE_MEMORY_MS / 1000;
        assert_eq!(seen.remember(id(1), 9, t + 1_000, &LIMITS), Err(AuthError::TooMany { max: 3, retry_after_s }));
        // A replay is still named as one.
        assert_eq!(seen.remember(id(1), 0, t + 1_000, &LIMITS), Err(AuthError::Replayed));
        assert_eq!(seen.remember(id(2), 9, t + 1_000, &LIMITS), Ok(()));
        // Its nonces are forgotten (a group at a time) and it may go on.
        assert_eq!(seen.remember(id(1), 9, t + 2 + NONCE_MEMORY_MS + 1, &LIMITS), Ok(()));
        assert_eq!(seen.identities[&id(1)].count, 1);
    }

    #[test]
    fn the_node_cap_refuses_new_nonces_and_idle_identities_are_forgotten() {
        let mut seen = SeenNonces::default();
        let t = 1_000_000;
        for (who, n) in [(1, 0), (1, 1), (1, 2), (2, 0), (2, 1)] {
            assert_eq!(seen.remember(id(who), n, t, &LIMITS), Ok(()));
        }
        assert!(matches!(seen.remember(id(3), 0, t, &LIMITS), Err(AuthError::Saturated { .. })));
        assert!(!seen.identities.contains_key(&id(3)), "a refused identity leaves nothing behind");
        // Long after, identity 3's request sweeps everyone's forgotten nonces away.
        assert_eq!(seen.remember(id(3), 0, t + NONCE_MEMORY_MS + NONCE_GROUP_MS + 1, &LIMITS), Ok(()));
        assert_eq!((seen.total, seen.identities.len()), (1, 1));
    }
}
