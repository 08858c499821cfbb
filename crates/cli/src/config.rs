//! The node configuration file (TOML), written by `medledger init` and read by
//! `medledger node --config FILE`. Relative paths are relative to the file's directory.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfigFile {
    /// Where the node keeps its chain and consensus data.
    pub data_dir: PathBuf,
    /// The consortium's genesis file.
    pub genesis: PathBuf,
    /// This validator's key file.
    pub key: PathBuf,
    /// The operating organisation's key file. With it the node serves records: it encrypts,
    /// decrypts and shares its organisation's category keys. Without it, it only validates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organisation_key: Option<PathBuf>,
    /// Peer-to-peer listen address.
    pub p2p_listen: SocketAddr,
    /// HTTP API listen address.
    pub api_listen: SocketAddr,
    /// The base URL clients reach the API at, e.g. `https://fhir.hospital.example` behind a
    /// reverse proxy: the token URL in `/fhir/metadata` and the SMART configuration, Bundle
    /// links and export URLs start with it (the request's `Host` header is never used). Default:
    /// `http://<api_listen>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_url: Option<String>,
    /// Runtime worker threads (default 2).
    #[serde(default = "default_threads")]
    pub worker_threads: usize,
    /// Every validator of the genesis, this one included.
    pub peers: Vec<PeerEntry>,
}

fn default_threads() -> usize {
    2
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerEntry {
    /// Hex Ed25519 public key of the validator.
    pub public_key: String,
    pub address: SocketAddr,
}

/// Largest config file we read.
const CONFIG_BYTES_MAX: u64 = 1024 * 1024;

impl NodeConfigFile {
    pub fn load(path: &Path) -> Result<Self> {
        let meta = std::fs::metadata(path).with_context(|| format!("cannot read config {}", path.display()))?;
        if meta.len() > CONFIG_BYTES_MAX {
            bail!("config {} is larger than {CONFIG_BYTES_MAX} bytes", path.display());
        }
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read config {}", path.display()))?;
        let mut cfg: Self = toml::from_str(&text).with_context(|| format!("config {} is invalid", path.display()))?;
        if let Some(url) = &cfg.public_url {
            let normalised = medledger_api::public_base(url)
                .map_err(|why| anyhow::anyhow!("config {}: public_url {url:?}: {why}", path.display()))?;
            cfg.public_url = Some(normalised);
        }
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [&mut cfg.data_dir, &mut cfg.genesis, &mut cfg.key].into_iter().chain(cfg.organisation_key.as_mut()) {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        Ok(cfg)
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let text = toml::to_string_pretty(self)?;
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
    }
}

pub fn parse_public_key(hex_text: &str) -> Result<medledger_crypto::PublicKey> {
    let mut key = [0u8; 32];
    hex::decode_to_slice(hex_text.trim(), &mut key)
        .with_context(|| format!("'{hex_text}' is not 64 hex characters"))?;
    Ok(medledger_crypto::PublicKey(key))
}
