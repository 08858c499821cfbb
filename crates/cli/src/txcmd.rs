//! Transaction helpers: build, sign with a key file, submit to a node, optionally wait.

use std::{path::Path, time::Duration};

use anyhow::{Context, Result, bail};
use medledger_crypto::{Keypair, read_key_file};
use medledger_ledger::{Payload, Purpose, Scope, Transaction, actions, tx::sign};
use medledger_types::{Hash, IdentityId, Role, TxId};
use serde_json::Value;

use crate::client::Client;

pub fn load_keys(path: &Path) -> Result<Keypair> {
    read_key_file(path).with_context(|| format!("cannot load key file {}", path.display()))
}

fn chain_id(client: &Client) -> Result<Hash> {
    let head = client.get("/v1/head")?;
    let text = head["chain_id"].as_str().context("node did not report a chain id")?;
    Ok(Hash::from_hex(text)?)
}

/// The signer's next nonce as the node sees it (0 for a not-yet-registered identity).
fn next_nonce(client: &Client, id: &IdentityId) -> Result<u64> {
    let (status, body) = client.get_raw(&format!("/v1/identities/{id}"))?;
    match status {
        200 => body["next_nonce"].as_u64().context("node did not report a nonce"),
        404 => Ok(0),
        s => bail!("node answered {s} for identity {id}"),
    }
}

/// Signs `payload` with `keys` and submits it; waits for commitment when `wait` is set.
pub fn submit(client: &Client, keys: &Keypair, nonce: Option<u64>, payload: Payload, wait: bool) -> Result<Value> {
    let chain_id = chain_id(client)?;
    let nonce = match nonce {
        Some(n) => n,
        None => next_nonce(client, &keys.id())?,
    };
    let tx: Transaction = sign(keys, chain_id, keys.id(), nonce, payload);
    let accepted = client.submit(tx.bytes())?;
    if !wait {
        return Ok(accepted);
    }
    wait_for(client, &tx.id(), Duration::from_secs(30))
}

pub fn wait_for(client: &Client, id: &TxId, timeout: Duration) -> Result<Value> {
    let started = std::time::Instant::now();
    loop {
        let (_, status) = client.get_raw(&format!("/v1/transactions/{id}"))?;
        match status["status"].as_str() {
            Some("committed") => return Ok(status),
            Some("rejected") => bail!("transaction {id} was rejected: {}", status["reason"].as_str().unwrap_or("?")),
            _ if started.elapsed() > timeout => bail!("transaction {id} not committed after {timeout:?}"),
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

pub fn register_payload(
    role: &str,
    subject: &Keypair,
    organisation: Option<IdentityId>,
    name: &str,
) -> Result<Payload> {
    let role = Role::parse(role).with_context(|| format!("unknown role '{role}'"))?;
    Ok(Payload::register(role, subject, organisation, name))
}

pub fn rotate_payload(new_keys: &Keypair) -> Payload {
    Payload::RotateKey { signing_key: new_keys.public_key(), encryption_key: new_keys.encryption_public_key() }
}

pub fn parse_scope(text: &str) -> Result<Scope> {
    if text == "all" {
        return Ok(Scope::All);
    }
    if let Some(types) = text.strip_prefix("types:") {
        return Ok(Scope::ResourceTypes(types.split(',').map(|t| t.trim().to_owned()).collect()));
    }
    if let Some(records) = text.strip_prefix("records:") {
        return records
            .split(',')
            .map(|r| Ok(medledger_types::RecordId::from_hex(r.trim())?))
            .collect::<Result<Vec<_>>>()
            .map(Scope::Records);
    }
    bail!("scope must be 'all', 'types:Observation,Condition' or 'records:<hex>,<hex>'")
}

pub fn parse_actions(text: &str) -> Result<u8> {
    let mut bits = 0;
    for part in text.split(',') {
        bits |= match part.trim() {
            "read" => actions::READ,
            "write" => actions::WRITE,
            other => bail!("unknown action '{other}' (read, write)"),
        };
    }
    Ok(bits)
}

pub fn parse_purpose(text: &str) -> Result<Purpose> {
    Purpose::parse(text).with_context(|| format!("unknown purpose '{text}' (TREAT, HPAYMT, HOPERAT, HRESCH, ETREAT)"))
}
