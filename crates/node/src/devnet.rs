//! Genesis and keys for development networks and tests.

use medledger_crypto::Keypair;
use medledger_ledger::{Genesis, GenesisIdentity};
use medledger_types::{OrganisationKind, TimestampMs};

/// The founding identities of a development network.
pub struct Devnet {
    pub genesis: Genesis,
    pub organisations: Vec<Keypair>,
    /// Validator `i` is operated by organisation `i % organisations.len()`.
    pub validators: Vec<Keypair>,
}

/// A genesis validator operated by `organisation`.
pub fn identity(name: &str, keys: &Keypair, organisation: Option<medledger_types::IdentityId>) -> GenesisIdentity {
    GenesisIdentity {
        name: name.into(),
        signing_key: keys.public_key(),
        encryption_key: keys.encryption_public_key(),
        organisation,
        kind: None,
    }
}

/// A genesis member organisation of `kind`.
pub fn organisation(name: &str, keys: &Keypair, kind: OrganisationKind) -> GenesisIdentity {
    GenesisIdentity { kind: Some(kind), ..identity(name, keys, None) }
}

impl Devnet {
    /// `organisation_names` founding organisations, all care providers, and `validators`
    /// validators, with keys from `key` (deterministic labels in tests, fresh randomness for
    /// real networks).
    pub fn new(
        chain_name: &str,
        genesis_time_ms: TimestampMs,
        organisation_names: &[&str],
        validators: usize,
        key: &mut dyn FnMut(&str) -> Keypair,
    ) -> Self {
        let members: Vec<(&str, OrganisationKind)> =
            organisation_names.iter().map(|n| (*n, OrganisationKind::CareProvider)).collect();
        Self::with_kinds(chain_name, genesis_time_ms, &members, validators, key)
    }

    /// [`Devnet::new`] with each founding organisation's kind.
    pub fn with_kinds(
        chain_name: &str,
        genesis_time_ms: TimestampMs,
        members: &[(&str, OrganisationKind)],
        validators: usize,
        key: &mut dyn FnMut(&str) -> Keypair,
    ) -> Self {
        let organisation_names: Vec<&str> = members.iter().map(|(n, _)| *n).collect();
        let organisations: Vec<Keypair> = organisation_names.iter().map(|n| key(&format!("org/{n}"))).collect();
        let validator_keys: Vec<Keypair> = (0..validators).map(|i| key(&format!("validator/{i}"))).collect();
        let genesis = Genesis {
            chain_name: chain_name.into(),
            genesis_time_ms,
            organisations: members
                .iter()
                .zip(&organisations)
                .map(|((name, kind), keys)| organisation(name, keys, *kind))
                .collect(),
            validators: validator_keys
                .iter()
                .enumerate()
                .map(|(i, keys)| {
                    identity(&format!("node-{i}"), keys, Some(organisations[i % organisations.len()].id()))
                })
                .collect(),
        };
        Self { genesis, organisations, validators: validator_keys }
    }
}

/// Finalizes everything pending in `chain`'s mempool as a one-validator chain would, without
/// consensus: proposes on the head, applies, repeats. For tests and tools; returns the number
/// of blocks made.
pub fn commit_pending(
    chain: &crate::chain::Chain,
    proposer: medledger_types::IdentityId,
    timestamp_ms: TimestampMs,
) -> Result<usize, crate::NodeError> {
    const BLOCKS_MAX: usize = 64;
    for made in 0..BLOCKS_MAX {
        if chain.mempool_len() == 0 {
            return Ok(made);
        }
        let parent = match chain.head().height {
            0 => medledger_ledger::Block { header: chain.genesis().anchor_header(), txs: vec![] },
            h => chain.block(h)?.ok_or_else(|| crate::NodeError::Corrupt(format!("head block {h} missing")))?,
        };
        let block = chain
            .propose(&[parent], timestamp_ms, proposer, false)
            .ok_or_else(|| crate::NodeError::Config("cannot build on the head".into()))?;
        chain.apply_finalized(&[block], &[])?;
    }
    Err(crate::NodeError::Config(format!("mempool did not drain in {BLOCKS_MAX} blocks")))
}
