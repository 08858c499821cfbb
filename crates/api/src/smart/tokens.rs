//! The bearer tokens `POST /auth/token` issues, and the client-assertion ids (`jti`) it has
//! seen, in memory, under per-identity quotas: an identity holds at most
//! [`TokenLimits::tokens_per_identity_max`] live tokens (a new one replaces its OWN oldest)
//! and may have used at most [`TokenLimits::assertions_per_identity_max`] assertions in the
//! last [`ASSERTION_MEMORY_MS`] (beyond it, its requests are refused until its oldest is
//! forgotten). The node-wide caps only refuse new requests; nothing one identity does ever
//! evicts another's token or assertion id.

use std::{
    collections::{BTreeSet, HashMap, VecDeque},
    sync::{Mutex, MutexGuard, PoisonError},
};

use base64::Engine as _;
use medledger_crypto::sha256;
use medledger_types::{Hash, IdentityId, TimestampMs};

use crate::smart::scopes::Grant;

/// Longest a client assertion may still be valid for (SMART: at most five minutes).
pub const ASSERTION_LIFETIME_MAX_MS: u64 = 5 * 60 * 1000;
/// Tolerated clock difference for `exp`/`nbf`/`iat`.
pub const ASSERTION_SKEW_MS: u64 = 60 * 1000;

/// How long an assertion id is remembered after its use. An accepted assertion expires at most
/// `ASSERTION_LIFETIME_MAX_MS + ASSERTION_SKEW_MS` after the node's clock at its use and is
/// accepted up to `ASSERTION_SKEW_MS` after it expires, so nothing can replay it later than
/// this. It is the same for every assertion, so ids are forgotten in the order they were used.
pub const ASSERTION_MEMORY_MS: u64 = ASSERTION_LIFETIME_MAX_MS + 2 * ASSERTION_SKEW_MS;
/// Default of [`TokenLimits::tokens_per_identity_max`].
pub const TOKENS_PER_IDENTITY_MAX: usize = 16;
/// Default of [`TokenLimits::assertions_per_identity_max`].
pub const ASSERTIONS_PER_IDENTITY_MAX: usize = 32;
/// Default of [`TokenLimits::tokens_max`].
pub const TOKENS_MAX: usize = 100_000;
/// Default of [`TokenLimits::assertions_max`].
pub const ASSERTIONS_MAX: usize = 200_000;

/// What the token store holds, per identity and in all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenLimits {
    /// Live tokens one identity holds; a new one beyond it replaces that identity's oldest. A
    /// client needs one token at a time (five minutes each); this leaves room for several
    /// workers.
    pub tokens_per_identity_max: usize,
    /// Token requests (client assertions) one identity may make within
    /// [`ASSERTION_MEMORY_MS`] (seven minutes); more are refused with 429 and `Retry-After`.
    /// This is also the rate limit of the token endpoint per identity.
    pub assertions_per_identity_max: usize,
    /// Live tokens in all; past it a request that would add one is refused with 503 and
    /// `Retry-After` (nobody's token is evicted).
    pub tokens_max: usize,
    /// Assertion ids remembered in all; past it token requests are refused with 503.
    pub assertions_max: usize,
}

impl Default for TokenLimits {
    fn default() -> Self {
        Self {
            tokens_per_identity_max: TOKENS_PER_IDENTITY_MAX,
            assertions_per_identity_max: ASSERTIONS_PER_IDENTITY_MAX,
            tokens_max: TOKENS_MAX,
            assertions_max: ASSERTIONS_MAX,
        }
    }
}

/// Why the store refuses a token request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The assertion id was used before.
    Replayed,
    /// The identity made its whole quota of token requests; it may ask again after this long.
    IdentityQuota { retry_after_s: u64 },
    /// The node holds as many tokens or assertion ids as it may; retry after this long.
    NodeFull { retry_after_s: u64 },
}

#[derive(Default)]
struct Client {
    /// Live tokens, oldest first.
    tokens: VecDeque<Hash>,
    /// Assertion ids (SHA-256 of the `jti`: fixed size, whatever the client sent) and when
    /// they were used, oldest first.
    assertions: VecDeque<(TimestampMs, Hash)>,
}

#[derive(Default)]
struct Held {
    by_hash: HashMap<Hash, Grant>,
    /// Every live token by expiry, so expired ones are forgotten whoever held them.
    expiry: BTreeSet<(TimestampMs, Hash)>,
    /// Only identities holding a token or an assertion id.
    clients: HashMap<IdentityId, Client>,
    /// Every remembered assertion id's use time and identity, in use order. An identity's
    /// k-th entry here is the k-th of its `assertions`, and both are removed only from the
    /// front and together, so they stay in step.
    assertion_order: VecDeque<(TimestampMs, IdentityId)>,
}

impl Held {
    /// Forgets tokens that expired and assertion ids that can no longer be replayed.
    fn forget_expired(&mut self, now_ms: TimestampMs) {
        while let Some(&(expires_ms, hash)) = self.expiry.first() {
            if expires_ms > now_ms {
                break;
            }
            self.remove_token(&hash);
        }
        while let Some(&(used_ms, identity)) = self.assertion_order.front() {
            if now_ms < used_ms.saturating_add(ASSERTION_MEMORY_MS) {
                break;
            }
            self.assertion_order.pop_front();
            self.with_client(identity, |c| {
                c.assertions.pop_front();
            });
        }
    }

    /// Applies `f` to `identity`'s entry, and drops the entry once it holds nothing.
    fn with_client(&mut self, identity: IdentityId, f: impl FnOnce(&mut Client)) {
        if let Some(client) = self.clients.get_mut(&identity) {
            f(client);
            if client.tokens.is_empty() && client.assertions.is_empty() {
                self.clients.remove(&identity);
            }
        }
    }

    fn remove_token(&mut self, hash: &Hash) -> Option<Grant> {
        let grant = self.by_hash.remove(hash)?;
        self.expiry.remove(&(grant.expires_ms, *hash));
        self.with_client(grant.identity, |c| c.tokens.retain(|h| h != hash));
        Some(grant)
    }

    /// Stores token `hash` for `grant`; when its identity already holds `per_identity_max`,
    /// its own oldest tokens make way.
    fn insert_token(&mut self, hash: Hash, grant: Grant, per_identity_max: usize) {
        let identity = grant.identity;
        while let Some(oldest) = self
            .clients
            .get(&identity)
            .filter(|c| c.tokens.len() >= per_identity_max.max(1))
            .and_then(|c| c.tokens.front().copied())
        {
            self.remove_token(&oldest);
        }
        self.expiry.insert((grant.expires_ms, hash));
        self.by_hash.insert(hash, grant);
        self.clients.entry(identity).or_default().tokens.push_back(hash);
    }

    fn tokens_of(&self, identity: &IdentityId) -> usize {
        self.clients.get(identity).map_or(0, |c| c.tokens.len())
    }
}

/// Whole seconds from `now_ms` until `at_ms`, at least 1: a `Retry-After`.
fn seconds_until(at_ms: TimestampMs, now_ms: TimestampMs) -> u64 {
    at_ms.saturating_sub(now_ms).div_ceil(1000).max(1)
}

/// A fresh random token and the SHA-256 it is kept as.
fn new_token() -> (String, Hash) {
    let mut raw = [0u8; 32];
    rand::fill(&mut raw);
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
    let hash = sha256(token.as_bytes());
    (token, hash)
}

/// Issued bearer tokens and seen assertion ids, in memory (see the module docs).
pub struct TokenStore {
    limits: TokenLimits,
    held: Mutex<Held>,
}

impl Default for TokenStore {
    fn default() -> Self {
        Self::new(TokenLimits::default())
    }
}

impl TokenStore {
    pub fn new(limits: TokenLimits) -> Self {
        Self { limits, held: Mutex::default() }
    }

    pub fn limits(&self) -> &TokenLimits {
        &self.limits
    }

    fn lock(&self) -> MutexGuard<'_, Held> {
        // Every change keeps the maps consistent before anything that could panic.
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Issues a token for `grant` on the node's own behalf (`medledger dev`, benchmarks,
    /// tests); returns the token text (shown once, never stored). The identity's oldest token
    /// makes way beyond its quota; the node-wide caps do not apply (clients get their tokens
    /// from the token endpoint, where they do).
    pub fn issue(&self, grant: Grant) -> String {
        let (token, hash) = new_token();
        let mut held = self.lock();
        held.forget_expired(crate::clock::now_ms());
        held.insert_token(hash, grant, self.limits.tokens_per_identity_max);
        token
    }

    /// Issues a token for `grant` to a client that proved itself with assertion `jti`, if the
    /// assertion is new and the quotas allow: the assertion id is remembered (until no one
    /// could replay it) and the token issued, both or neither.
    pub(crate) fn redeem(&self, jti: &str, grant: Grant, now_ms: TimestampMs) -> Result<String, Refusal> {
        let identity = grant.identity;
        let jti = sha256(jti.as_bytes());
        let mut held = self.lock();
        held.forget_expired(now_ms);
        if let Some(client) = held.clients.get(&identity) {
            if client.assertions.iter().any(|(_, seen)| *seen == jti) {
                return Err(Refusal::Replayed);
            }
            if client.assertions.len() >= self.limits.assertions_per_identity_max {
                let oldest_ms = client.assertions.front().map_or(now_ms, |(used_ms, _)| *used_ms);
                let retry_after_s = seconds_until(oldest_ms.saturating_add(ASSERTION_MEMORY_MS), now_ms);
                return Err(Refusal::IdentityQuota { retry_after_s });
            }
        }
        if held.assertion_order.len() >= self.limits.assertions_max {
            let oldest_ms = held.assertion_order.front().map_or(now_ms, |(used_ms, _)| *used_ms);
            let retry_after_s = seconds_until(oldest_ms.saturating_add(ASSERTION_MEMORY_MS), now_ms);
            return Err(Refusal::NodeFull { retry_after_s });
        }
        // A token that replaces one of the identity's own takes no room.
        if held.tokens_of(&identity) < self.limits.tokens_per_identity_max
            && held.by_hash.len() >= self.limits.tokens_max
        {
            let first_expiry_ms = held.expiry.first().map_or(now_ms, |(expires_ms, _)| *expires_ms);
            return Err(Refusal::NodeFull { retry_after_s: seconds_until(first_expiry_ms, now_ms) });
        }
        held.assertion_order.push_back((now_ms, identity));
        held.clients.entry(identity).or_default().assertions.push_back((now_ms, jti));
        let (token, hash) = new_token();
        held.insert_token(hash, grant, self.limits.tokens_per_identity_max);
        Ok(token)
    }

    /// The grant behind `token`, if it is known and not expired at `now_ms`. Whether its
    /// identity still holds the key it was issued under is the caller's to check against the
    /// chain ([`Grant::is_current`]); the API does so on every request.
    pub fn lookup(&self, token: &str, now_ms: TimestampMs) -> Option<Grant> {
        let hash = sha256(token.as_bytes());
        self.lock().by_hash.get(&hash).filter(|g| now_ms < g.expires_ms).cloned()
    }

    /// Forgets `token` (its identity rotated its key since it was issued).
    pub fn revoke(&self, token: &str) {
        self.lock().remove_token(&sha256(token.as_bytes()));
    }
}

#[cfg(test)]
mod tests {
    use medledger_crypto::PublicKey;
    use medledger_types::Role;

    use super::*;

    fn grant(identity: IdentityId, expires_ms: TimestampMs) -> Grant {
        Grant { identity, role: Role::SystemClient, signing_key: PublicKey([0; 32]), scopes: vec![], expires_ms }
    }

    fn small() -> TokenStore {
        TokenStore::new(TokenLimits {
            tokens_per_identity_max: 4,
            assertions_per_identity_max: 8,
            tokens_max: 10,
            assertions_max: 20,
        })
    }

    #[test]
    fn tokens_expire_and_assertions_are_used_once() {
        let store = TokenStore::default();
        let token = store.redeem("a", grant(IdentityId::default(), 100), 0).unwrap();
        assert_eq!(store.lookup(&token, 99), Some(grant(IdentityId::default(), 100)));
        assert_eq!(store.lookup(&token, 100), None);
        assert_eq!(store.lookup("not-a-token", 0), None);
        assert_eq!(store.redeem("a", grant(IdentityId::default(), 100), 1), Err(Refusal::Replayed));
        // Another identity's `a` is another assertion.
        assert!(store.redeem("a", grant(IdentityId([1; 32]), 100), 1).is_ok());
        // Remembered until nobody could replay it, then forgotten.
        assert_eq!(
            store.redeem("a", grant(IdentityId::default(), 1_000), ASSERTION_MEMORY_MS - 1),
            Err(Refusal::Replayed)
        );
        assert!(store.redeem("a", grant(IdentityId::default(), 1_000), ASSERTION_MEMORY_MS).is_ok());
    }

    #[test]
    fn one_client_cannot_crowd_out_the_others() {
        let store = small();
        let (flooder, other) = (IdentityId([1; 32]), IdentityId([2; 32]));
        let kept = store.redeem("o-1", grant(other, 1_000_000), 0).unwrap();
        let mut flood = Vec::new();
        for i in 0..8 {
            flood.push(store.redeem(&format!("f-{i}"), grant(flooder, 1_000_000), i).unwrap());
        }
        // Its own oldest tokens made way; the other client's did not.
        assert!(store.lookup(&kept, 10).is_some());
        assert!(flood[..4].iter().all(|t| store.lookup(t, 10).is_none()));
        assert!(flood[4..].iter().all(|t| store.lookup(t, 10).is_some()));
        // Past its request quota, refused until its oldest assertion is forgotten.
        assert_eq!(
            store.redeem("f-9", grant(flooder, 1_000_000), 1_000),
            Err(Refusal::IdentityQuota { retry_after_s: ASSERTION_MEMORY_MS / 1000 - 1 })
        );
        assert!(store.redeem("o-2", grant(other, 1_000_000), 1_000).is_ok());
        assert!(store.redeem("f-9", grant(flooder, 1_000_000), ASSERTION_MEMORY_MS).is_ok());
    }

    #[test]
    fn a_full_node_refuses_new_tokens_and_evicts_none() {
        let store = small();
        let ids: Vec<IdentityId> = (1..=4).map(|n| IdentityId([n; 32])).collect();
        let mut live = Vec::new();
        for (n, id) in ids[..2].iter().enumerate() {
            for i in 0..4 {
                live.push(store.redeem(&format!("{n}-{i}"), grant(*id, 60_000), 0).unwrap());
            }
        }
        live.push(store.redeem("2-0", grant(ids[2], 60_000), 0).unwrap());
        live.push(store.redeem("2-1", grant(ids[2], 60_000), 0).unwrap());
        // Ten live tokens: one more would pass the node's cap.
        assert_eq!(store.redeem("3-0", grant(ids[3], 60_000), 1_000), Err(Refusal::NodeFull { retry_after_s: 59 }));
        assert_eq!(store.redeem("2-2", grant(ids[2], 60_000), 1_000), Err(Refusal::NodeFull { retry_after_s: 59 }));
        assert!(live.iter().all(|t| store.lookup(t, 1_000).is_some()), "nobody's token was evicted");
        // An identity at its own quota still renews: its new token replaces its own oldest.
        let renewed = store.redeem("0-4", grant(ids[0], 60_000), 1_000).unwrap();
        assert!(store.lookup(&live[0], 1_000).is_none());
        assert!(store.lookup(&renewed, 1_000).is_some());
        // Once tokens expire there is room again.
        assert!(store.redeem("3-0", grant(ids[3], 120_000), 60_000).is_ok());
        // Assertion ids: the node remembers at most 20.
        let store = small();
        for n in 0..5u8 {
            for i in 0..4 {
                // Born expired: only the assertion ids stay.
                store.redeem(&format!("{i}"), grant(IdentityId([n; 32]), 0), 0).unwrap();
            }
        }
        assert_eq!(
            store.redeem("x", grant(IdentityId([9; 32]), 0), 0),
            Err(Refusal::NodeFull { retry_after_s: ASSERTION_MEMORY_MS / 1000 })
        );
    }

    #[test]
    fn revoked_and_expired_tokens_leave_nothing_behind() {
        let store = small();
        let token = store.issue(grant(IdentityId([1; 32]), 10));
        store.revoke(&token);
        assert_eq!(store.lookup(&token, 0), None);
        let _ = store.redeem("a", grant(IdentityId([2; 32]), 10), 0).unwrap();
        store.lock().forget_expired(ASSERTION_MEMORY_MS);
        let held = store.lock();
        assert!(held.by_hash.is_empty() && held.expiry.is_empty() && held.assertion_order.is_empty());
        assert!(held.clients.is_empty(), "identities holding nothing are forgotten");
    }
}
