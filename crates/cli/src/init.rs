//! `medledger init`: a new consortium — keys, genesis, and one config per validator.

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use medledger_codec::Encode;
use medledger_crypto::{Keypair, write_key_file};
use medledger_node::devnet::Devnet;
use medledger_types::OrganisationKind;

use crate::config::{NodeConfigFile, PeerEntry};

pub const GENESIS_FILE: &str = "genesis.bin";

pub struct InitOptions {
    pub dir: PathBuf,
    pub chain_name: String,
    pub organisations: Vec<String>,
    pub validators: usize,
    pub host: IpAddr,
    pub p2p_base_port: u16,
    pub api_base_port: u16,
}

pub fn slug(name: &str) -> String {
    let s: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
    s.split('-').filter(|p| !p.is_empty()).collect::<Vec<_>>().join("-")
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A founding member as `Name` or `Name:kind` (kind: care-provider, payer, research, other;
/// care-provider when omitted).
fn parse_member(spec: &str) -> Result<(&str, OrganisationKind)> {
    match spec.rsplit_once(':') {
        Some((name, kind)) => match OrganisationKind::parse(kind.trim()) {
            Some(kind) => Ok((name.trim(), kind)),
            None => {
                bail!("unknown organisation kind {kind:?} for {name:?}: use care-provider, payer, research or other")
            }
        },
        None => Ok((spec.trim(), OrganisationKind::CareProvider)),
    }
}

pub fn init(opts: &InitOptions) -> Result<Vec<PathBuf>> {
    if opts.validators == 0 || opts.validators > medledger_types::limits::VALIDATORS_MAX {
        bail!("--validators must be between 1 and {}", medledger_types::limits::VALIDATORS_MAX);
    }
    if opts.organisations.is_empty() {
        bail!("at least one organisation is needed");
    }
    let genesis_path = opts.dir.join(GENESIS_FILE);
    if genesis_path.exists() {
        bail!("{} already exists: refusing to overwrite a consortium", genesis_path.display());
    }
    std::fs::create_dir_all(&opts.dir).with_context(|| format!("cannot create {}", opts.dir.display()))?;
    let members = opts.organisations.iter().map(|spec| parse_member(spec)).collect::<Result<Vec<_>>>()?;
    let names: Vec<&str> = members.iter().map(|(name, _)| *name).collect();
    let net = Devnet::with_kinds(&opts.chain_name, now_ms(), &members, opts.validators, &mut |_| Keypair::generate());
    net.genesis.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
    for (name, keys) in names.iter().zip(&net.organisations) {
        write_key_file(&opts.dir.join("organisations").join(format!("{}.key", slug(name))), keys)?;
    }
    let peers: Vec<PeerEntry> = net
        .validators
        .iter()
        .enumerate()
        .map(|(i, k)| PeerEntry {
            public_key: k.public_key().to_string(),
            address: SocketAddr::new(opts.host, opts.p2p_base_port + i as u16),
        })
        .collect();
    let mut configs = Vec::new();
    for (i, keys) in net.validators.iter().enumerate() {
        let node_dir = opts.dir.join(format!("node-{i}"));
        write_key_file(&node_dir.join("node.key"), keys)?;
        let cfg = NodeConfigFile {
            data_dir: PathBuf::from("data"),
            genesis: Path::new("..").join(GENESIS_FILE),
            key: PathBuf::from("node.key"),
            organisation_key: Some(
                Path::new("..").join("organisations").join(format!("{}.key", slug(names[i % names.len()]))),
            ),
            p2p_listen: SocketAddr::new(opts.host, opts.p2p_base_port + i as u16),
            api_listen: SocketAddr::new(opts.host, opts.api_base_port + i as u16),
            public_url: None,
            worker_threads: 2,
            peers: peers.clone(),
        };
        let path = node_dir.join("node.toml");
        cfg.save(&path)?;
        configs.push(path);
    }
    std::fs::write(&genesis_path, net.genesis.to_bytes())?;
    Ok(configs)
}
