//! Genesis: the founding member organisations and validators of a consortium. Its hash is the
//! chain id that every transaction and block commits to.

use medledger_codec::{CodecError, Decode, Encode, Reader, Writer, decode_exact};
use medledger_crypto::{EncryptionPublicKey, PublicKey, identity_id, sha256_parts};
use medledger_types::{Hash, IdentityId, OrganisationKind, TimestampMs, limits};

/// Version 2 adds each organisation's kind (`OrganisationKind`).
pub const GENESIS_VERSION: u8 = 2;

/// One founding identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GenesisIdentity {
    pub name: String,
    pub signing_key: PublicKey,
    pub encryption_key: EncryptionPublicKey,
    /// For validators: the member organisation operating the node.
    pub organisation: Option<IdentityId>,
    /// For organisations: what kind of member it is; `None` for validators.
    pub kind: Option<OrganisationKind>,
}

impl GenesisIdentity {
    pub fn id(&self) -> IdentityId {
        identity_id(&self.signing_key)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Genesis {
    /// Human-readable network name; also the origin line of log checkpoints.
    pub chain_name: String,
    pub genesis_time_ms: TimestampMs,
    pub organisations: Vec<GenesisIdentity>,
    /// The validator set, in a fixed order (consensus derives leaders from it).
    pub validators: Vec<GenesisIdentity>,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GenesisError {
    #[error("genesis encoding: {0}")]
    Codec(#[from] CodecError),
    #[error("genesis is invalid: {0}")]
    Invalid(String),
}

impl Genesis {
    /// The chain id: SHA-256 over a domain tag and the encoded genesis.
    pub fn chain_id(&self) -> Hash {
        sha256_parts(&[b"medledger/genesis/v1", &self.to_bytes()])
    }

    /// The height-0 header that block 1 links to. Consensus uses it as its genesis anchor,
    /// so its hash is the parent of the first block.
    pub fn anchor_header(&self) -> crate::BlockHeader {
        let empty = medledger_merkle::empty_root();
        crate::BlockHeader {
            chain_id: self.chain_id(),
            height: 0,
            parent: Hash::default(),
            timestamp_ms: self.genesis_time_ms,
            proposer: IdentityId::default(),
            tx_count: 0,
            txs_root: empty,
            log_size: 0,
            log_root: empty,
        }
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, GenesisError> {
        let genesis: Genesis = decode_exact(bytes)?;
        genesis.validate()?;
        Ok(genesis)
    }

    /// Structural rules: at least one validator, unique identities, validators operated by
    /// genesis organisations.
    pub fn validate(&self) -> Result<(), GenesisError> {
        let invalid = |m: String| Err(GenesisError::Invalid(m));
        if self.chain_name.is_empty() || self.chain_name.contains(['\n', ' ', '+']) {
            return invalid("chain name must be non-empty without spaces, '+' or newlines".into());
        }
        if self.validators.is_empty() {
            return invalid("at least one validator is required".into());
        }
        let mut seen = std::collections::HashSet::new();
        for who in self.organisations.iter().chain(&self.validators) {
            if !seen.insert(who.id()) {
                return invalid(format!("identity {} appears twice", who.id()));
            }
            if who.name.is_empty() {
                return invalid("every genesis identity needs a name".into());
            }
        }
        let orgs: std::collections::HashSet<_> = self.organisations.iter().map(|o| o.id()).collect();
        for v in &self.validators {
            match v.organisation {
                Some(org) if orgs.contains(&org) => {}
                _ => {
                    return invalid(format!("validator {} is not operated by a genesis organisation", v.name));
                }
            }
        }
        for o in &self.organisations {
            if o.organisation.is_some() {
                return invalid(format!("organisation {} cannot belong to another organisation", o.name));
            }
            if o.kind.is_none() {
                return invalid(format!("organisation {} needs a kind", o.name));
            }
        }
        if let Some(v) = self.validators.iter().find(|v| v.kind.is_some()) {
            return invalid(format!("validator {} has an organisation kind", v.name));
        }
        Ok(())
    }
}

fn encode_identity(w: &mut Writer, who: &GenesisIdentity) {
    w.str(&who.name).fixed(&who.signing_key.0).fixed(&who.encryption_key.0);
    w.option(&who.organisation, |w, o| {
        w.encode(o);
    });
}

fn decode_identity(r: &mut Reader<'_>) -> Result<GenesisIdentity, CodecError> {
    Ok(GenesisIdentity {
        name: r.string(limits::NAME_BYTES_MAX, "name")?,
        signing_key: PublicKey(r.array("signing key")?),
        encryption_key: EncryptionPublicKey(r.array("encryption key")?),
        organisation: r.option("organisation", IdentityId::decode)?,
        kind: None,
    })
}

fn encode_organisation(w: &mut Writer, who: &GenesisIdentity) {
    encode_identity(w, who);
    // `validate` requires a kind; an unvalidated genesis without one encodes as "other".
    w.u8(who.kind.unwrap_or(OrganisationKind::Other) as u8);
}

fn decode_organisation(r: &mut Reader<'_>) -> Result<GenesisIdentity, CodecError> {
    let mut who = decode_identity(r)?;
    let tag = r.u8("organisation kind")?;
    who.kind = Some(OrganisationKind::from_u8(tag).ok_or(CodecError::InvalidTag { what: "organisation kind", tag })?);
    Ok(who)
}

impl Encode for Genesis {
    fn encode(&self, w: &mut Writer) {
        w.u8(GENESIS_VERSION).str(&self.chain_name).u64(self.genesis_time_ms);
        w.seq(&self.organisations, encode_organisation);
        w.seq(&self.validators, encode_identity);
    }
}

impl Decode for Genesis {
    fn decode(r: &mut Reader<'_>) -> Result<Self, CodecError> {
        let version = r.u8("genesis version")?;
        if version != GENESIS_VERSION {
            return Err(CodecError::InvalidTag { what: "genesis version", tag: version });
        }
        Ok(Self {
            chain_name: r.string(limits::NAME_BYTES_MAX, "chain name")?,
            genesis_time_ms: r.u64("genesis time")?,
            organisations: r.seq(limits::GENESIS_MEMBERS_MAX, "organisations", decode_organisation)?,
            validators: r.seq(limits::VALIDATORS_MAX, "validators", decode_identity)?,
        })
    }
}
