//! SMART v2 scopes and the grant a bearer token stands for: parsing scopes (v2, and v1 mapped
//! to v2), rendering them, and what a grant allows. Scopes only ever narrow: consent
//! (`records::access`) decides on top of them, asking a [`Grant`] through `Permits`.

use std::fmt;

use medledger_crypto::PublicKey;
use medledger_types::{IdentityId, Role, TimestampMs};

/// The three SMART scope contexts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Context {
    /// The patient's own compartment.
    Patient,
    /// What the signed-in user (a practitioner) may see.
    User,
    /// Whatever the client system may see.
    System,
}

impl Context {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Context::Patient => "patient",
            Context::User => "user",
            Context::System => "system",
        }
    }
}

/// SMART v2 interaction letters.
pub use medledger_records::access::interactions;

/// One granted scope: a context, a resource type (`None` for `*`), and interactions.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Scope {
    pub context: Context,
    pub resource_type: Option<String>,
    pub interactions: u8,
}

impl fmt::Display for Scope {
    /// The SMART v2 form (`patient/Observation.rs`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let letters: String = [
            (interactions::CREATE, 'c'),
            (interactions::READ, 'r'),
            (interactions::UPDATE, 'u'),
            (interactions::DELETE, 'd'),
            (interactions::SEARCH, 's'),
        ]
        .iter()
        .filter(|(bit, _)| self.interactions & bit != 0)
        .map(|(_, c)| *c)
        .collect();
        write!(f, "{}/{}.{letters}", self.context.as_str(), self.resource_type.as_deref().unwrap_or("*"))
    }
}

/// Why a scope string is not one we grant.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    #[error("scope {0:?} is not a SMART resource scope (context/Type.cruds)")]
    Malformed(String),
    #[error("scope {0:?}: granular scopes with query parameters are not supported")]
    Granular(String),
    #[error("scope {0:?}: interactions must be a subset of c, r, u, d, s in that order")]
    BadInteractions(String),
}

/// Parses one SMART scope: v2 (`patient/*.rs`, `system/Observation.cruds`) or v1
/// (`user/*.read`, `.write`, `.*`), the latter mapped to v2. Resource-type names are checked
/// by the caller against what the server supports.
pub fn parse_scope(text: &str) -> Result<Scope, ScopeError> {
    let malformed = || ScopeError::Malformed(crate::error::echo(text));
    if text.contains('?') {
        return Err(ScopeError::Granular(crate::error::echo(text)));
    }
    let (context, rest) = text.split_once('/').ok_or_else(malformed)?;
    let context = match context {
        "patient" => Context::Patient,
        "user" => Context::User,
        "system" => Context::System,
        _ => return Err(malformed()),
    };
    let (resource, letters) = rest.split_once('.').ok_or_else(malformed)?;
    let resource_type = match resource {
        "*" => None,
        t if !t.is_empty() && t.len() <= 64 && t.bytes().all(|b| b.is_ascii_alphabetic()) => Some(t.to_owned()),
        _ => return Err(malformed()),
    };
    let interactions = match letters {
        "read" => interactions::READ | interactions::SEARCH,
        "write" => interactions::CREATE | interactions::UPDATE | interactions::DELETE,
        "*" => interactions::ALL,
        v2 => {
            let mut bits = 0u8;
            let mut last = 0usize;
            for c in v2.chars() {
                let position = "cruds".find(c).ok_or_else(|| ScopeError::BadInteractions(crate::error::echo(text)))?;
                if position < last {
                    return Err(ScopeError::BadInteractions(crate::error::echo(text)));
                }
                last = position + 1;
                bits |= 1 << position;
            }
            if bits == 0 {
                return Err(ScopeError::BadInteractions(crate::error::echo(text)));
            }
            bits
        }
    };
    Ok(Scope { context, resource_type, interactions })
}

/// What a valid bearer token stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub identity: IdentityId,
    pub role: Role,
    /// The identity's signing key when the token was issued. The token is void once the
    /// identity's key on-chain is another one (a committed rotation): a token obtained with a
    /// key that leaked must not outlive the rotation that retired the key.
    pub signing_key: PublicKey,
    pub scopes: Vec<Scope>,
    pub expires_ms: TimestampMs,
}

impl Grant {
    /// Whether the grant's identity is, in `state`, still registered with the role and the
    /// signing key the token was issued under. Roles never change on-chain today; checking
    /// it too keeps a token from outliving any change of what its identity is.
    pub fn is_current(&self, state: &medledger_ledger::State) -> bool {
        state.identity(&self.identity).is_some_and(|who| who.role == self.role && who.signing_key == self.signing_key)
    }

    /// Whether the scopes allow `interaction` on `resource_type` (consent is checked apart, by
    /// `records::access`, which asks this through [`Permits`]).
    pub fn allows(&self, resource_type: &str, interaction: u8) -> bool {
        self.scopes
            .iter()
            .any(|s| s.interactions & interaction != 0 && s.resource_type.as_deref().is_none_or(|t| t == resource_type))
    }
}

impl Grant {
    /// The token's holder as the record service's caller, with the token's scopes.
    pub fn caller(&self) -> medledger_records::access::Caller<'_> {
        medledger_records::access::Caller { identity: self.identity, credential: self }
    }
}

/// A token's scopes are the credential `records::access` checks before consent.
impl medledger_records::access::Permits for Grant {
    fn permits(&self, resource_type: &str, interaction: u8) -> bool {
        self.allows(resource_type, interaction)
    }
}

/// What a token may export: a scope reading the type, in the system context for a
/// system-level export, and for `patient/…` scopes only records of the token's own patient.
impl medledger_records::export::ExportCredential for Grant {
    fn may_export(
        &self,
        level: medledger_records::export::Level,
        resource_type: &str,
        patient: Option<&IdentityId>,
    ) -> bool {
        use medledger_records::export::Level;
        self.scopes.iter().any(|s| {
            s.interactions & interactions::READ != 0
                && s.resource_type.as_deref().is_none_or(|t| t == resource_type)
                && match s.context {
                    Context::System => true,
                    Context::User => level != Level::System,
                    Context::Patient => level != Level::System && patient.is_none_or(|p| *p == self.identity),
                }
        })
    }
}

/// Resource types a scope may name: what the FHIR API serves.
pub fn supported_resource_type(name: &str) -> bool {
    medledger_fhir::model::Model::r4().is_supported_resource(name)
}
