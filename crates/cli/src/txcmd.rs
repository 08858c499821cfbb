//! Transaction helpers: build, sign with a key file, submit to a node, optionally wait.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

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

/// The signer's next nonce as the node sees it (0 for a not-yet-registered identity). Asked
/// with a signed request: a patient's identity is shown only to the patient and to members.
pub fn next_nonce(client: &Client, keys: &Keypair) -> Result<u64> {
    let id = keys.id();
    let (status, body) = client.get_signed(keys, &format!("/v1/identities/{id}"))?;
    let message = body.pointer("/error/message").and_then(Value::as_str).unwrap_or_default();
    match status {
        200 => body["next_nonce"].as_u64().context("node did not report a nonce"),
        // Not registered yet (a registration it signs itself is the node's to refuse).
        404 => Ok(0),
        401 if message == "unknown identity" => Ok(0),
        s => bail!("node answered {s} for identity {id}: {message}"),
    }
}

/// Signs `payload` with `keys` and submits it; waits for commitment when `wait` is set.
pub fn submit(client: &Client, keys: &Keypair, nonce: Option<u64>, payload: Payload, wait: bool) -> Result<Value> {
    let chain_id = chain_id(client)?;
    let nonce = match nonce {
        Some(n) => n,
        None => next_nonce(client, keys)?,
    };
    let tx: Transaction = sign(keys, chain_id, keys.id(), nonce, payload);
    let accepted = client.submit(tx.bytes())?;
    if !wait {
        return Ok(accepted);
    }
    wait_for(client, &tx.id(), Duration::from_secs(30), Some(keys))
}

/// Polls the transaction's public status until it is committed (or rejected, or `timeout`
/// passes). Once committed, a `signer` (the transaction's own, or a member) asks once more,
/// signed, for what only it may see: the transaction's kind and signer.
pub fn wait_for(client: &Client, id: &TxId, timeout: Duration, signer: Option<&Keypair>) -> Result<Value> {
    let started = std::time::Instant::now();
    loop {
        let (_, status) = client.get_raw(&format!("/v1/transactions/{id}"))?;
        match status["status"].as_str() {
            Some("committed") => {
                return match signer {
                    Some(keys) => status_as(client, id, keys, status),
                    None => Ok(status),
                };
            }
            Some("rejected") => bail!("transaction {id} was rejected: {}", status["reason"].as_str().unwrap_or("?")),
            _ if started.elapsed() > timeout => bail!("transaction {id} not committed after {timeout:?}"),
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// The transaction's status asked with a request signed by `keys`; `public` (what an unsigned
/// request got) if the node will not tell `keys` more.
fn status_as(client: &Client, id: &TxId, keys: &Keypair, public: Value) -> Result<Value> {
    let (status, detailed) = client.get_signed(keys, &format!("/v1/transactions/{id}"))?;
    Ok(if status == 200 { detailed } else { public })
}

/// `tx status`: the transaction's status, signed by `keys` when given (a member or the
/// transaction's signer then also sees its kind and signer).
pub fn status(client: &Client, id: &TxId, keys: Option<&Keypair>) -> Result<Value> {
    let path = format!("/v1/transactions/{id}");
    let (_, body) = match keys {
        Some(keys) => client.get_signed(keys, &path)?,
        None => client.get_raw(&path)?,
    };
    Ok(body)
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
    if let Some(categories) = text.strip_prefix("categories:") {
        return Ok(Scope::Categories(categories.split(',').map(|c| c.trim().to_owned()).collect()));
    }
    if let Some(records) = text.strip_prefix("records:") {
        return records
            .split(',')
            .map(|r| Ok(medledger_types::RecordId::from_hex(r.trim())?))
            .collect::<Result<Vec<_>>>()
            .map(Scope::Records);
    }
    bail!("scope must be 'all', 'types:Observation,Condition', 'categories:labs,vitals' or 'records:<hex>,<hex>'")
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

/// Longest grant the CLI writes, in days.
pub const GRANT_DAYS_MAX: u64 = 3660;

/// A patient's consent grant, as `tx grant` and `consent grant` take it.
#[derive(clap::Args)]
pub struct GrantArgs {
    /// Your (the patient's) key file.
    #[arg(long)]
    pub key: PathBuf,
    /// Grantee identity id (hex).
    #[arg(long)]
    pub grantee: IdentityId,
    /// all | types:Observation,Condition | categories:labs,vitals | records:<hex>,...
    #[arg(long, default_value = "all")]
    pub scope: String,
    /// read, write or read,write.
    #[arg(long, default_value = "read")]
    pub actions: String,
    /// TREAT, HPAYMT, HOPERAT, HRESCH or ETREAT.
    #[arg(long, default_value = "TREAT")]
    pub purpose: String,
    #[arg(long, default_value_t = 30)]
    pub days: u64,
}

impl GrantArgs {
    /// The signer's keys and the grant payload, valid from `now_ms`.
    pub fn payload(&self, now_ms: u64) -> Result<(Keypair, Payload)> {
        if !(1..=GRANT_DAYS_MAX).contains(&self.days) {
            bail!("--days must be 1 to {GRANT_DAYS_MAX}");
        }
        let signer = load_keys(&self.key)?;
        let payload = Payload::ConsentGrant {
            patient: signer.id(),
            grantee: self.grantee,
            scope: parse_scope(&self.scope)?,
            actions: parse_actions(&self.actions)?,
            purpose: parse_purpose(&self.purpose)?,
            valid_from_ms: now_ms,
            valid_until_ms: now_ms + self.days * 86_400_000,
        };
        Ok((signer, payload))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse_and_bad_ones_are_refused() {
        assert_eq!(parse_scope("all").unwrap(), Scope::All);
        assert_eq!(
            parse_scope("categories:labs, vitals").unwrap(),
            Scope::Categories(vec!["labs".into(), "vitals".into()])
        );
        assert_eq!(parse_scope("types:Observation").unwrap(), Scope::ResourceTypes(vec!["Observation".into()]));
        assert!(parse_scope("everything").is_err());
        assert!(parse_scope("records:zz").is_err());
    }

    #[test]
    fn grant_days_are_bounded_before_any_key_is_read() {
        let args = |days| GrantArgs {
            key: PathBuf::from("/nonexistent.key"),
            grantee: IdentityId([1; 32]),
            scope: "all".into(),
            actions: "read".into(),
            purpose: "TREAT".into(),
            days,
        };
        for days in [0, GRANT_DAYS_MAX + 1] {
            assert!(args(days).payload(0).unwrap_err().to_string().contains("--days"), "{days} days accepted");
        }
        // In range, it gets as far as the key file.
        assert!(args(30).payload(0).unwrap_err().to_string().contains("key file"));
    }
}
