//! A small blocking client for a node's HTTP API.

use anyhow::{Context, Result, bail};
use serde_json::Value;

pub struct Client {
    base: String,
    agent: ureq::Agent,
}

impl Client {
    pub fn new(base: &str) -> Self {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(std::time::Duration::from_secs(30)))
            .build()
            .into();
        Self { base: base.trim_end_matches('/').to_owned(), agent }
    }

    fn read(
        &self,
        response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
        what: &str,
    ) -> Result<(u16, Value)> {
        let mut response = response.with_context(|| format!("cannot reach the node at {} ({what})", self.base))?;
        let status = response.status().as_u16();
        let text = response.body_mut().with_config().limit(16 * 1024 * 1024).read_to_string()?;
        let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, json))
    }

    /// GET returning JSON; non-2xx becomes an error carrying the node's message.
    pub fn get(&self, path: &str) -> Result<Value> {
        let (status, body) = self.get_raw(path)?;
        if !(200..300).contains(&status) {
            bail!("node answered {status}: {}", error_message(&body));
        }
        Ok(body)
    }

    pub fn get_raw(&self, path: &str) -> Result<(u16, Value)> {
        self.read(self.agent.get(&format!("{}{path}", self.base)).call(), path)
    }

    pub fn get_text(&self, path: &str) -> Result<String> {
        let (status, body) = self.get_raw(path)?;
        match body {
            Value::String(text) if (200..300).contains(&status) => Ok(text),
            other if (200..300).contains(&status) => Ok(other.to_string()),
            other => bail!("node answered {status}: {}", error_message(&other)),
        }
    }

    /// Submits canonical transaction bytes.
    pub fn submit(&self, tx: &[u8]) -> Result<Value> {
        let response = self
            .agent
            .post(&format!("{}/v1/transactions", self.base))
            .header("content-type", "application/octet-stream")
            .send(tx);
        let (status, body) = self.read(response, "submit")?;
        if !(200..300).contains(&status) {
            bail!("transaction refused ({status}): {}", error_message(&body));
        }
        Ok(body)
    }
}

impl Client {
    /// A request signed by `keys` (see `medledger_api::auth`). Returns status, content type and
    /// body bytes.
    pub fn signed(
        &self,
        keys: &medledger_crypto::Keypair,
        method: &str,
        path_and_query: &str,
        body: &[u8],
    ) -> Result<(u16, String, Vec<u8>)> {
        let auth =
            medledger_api::auth::authorization(keys, &keys.id(), method, path_and_query, body, crate::init::now_ms());
        let url = format!("{}{path_and_query}", self.base);
        let response = match method {
            "GET" => self.agent.get(&url).header("authorization", &auth).call(),
            "POST" => self
                .agent
                .post(&url)
                .header("authorization", &auth)
                .header("content-type", "application/fhir+json")
                .send(body),
            other => bail!("unsupported method {other}"),
        };
        let mut response = response.with_context(|| format!("cannot reach the node at {}", self.base))?;
        let status = response.status().as_u16();
        let content_type =
            response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        let bytes = response.body_mut().with_config().limit(16 * 1024 * 1024).read_to_vec()?;
        Ok((status, content_type, bytes))
    }
}

impl Client {
    /// A GET signed by `keys`, returning the status and the JSON body (or the text as a JSON
    /// string).
    pub fn get_signed(&self, keys: &medledger_crypto::Keypair, path: &str) -> Result<(u16, Value)> {
        let (status, _, bytes) = self.signed(keys, "GET", path, b"")?;
        let json = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Ok((status, json))
    }
}

/// The node's error message (and refusal reason) from a JSON error body.
pub fn error_of(body: &[u8]) -> String {
    let value: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let message = error_message(&value);
    match value.pointer("/error/reason").and_then(Value::as_str) {
        Some(reason) => format!("{message} (reason: {reason})"),
        None => message,
    }
}

fn error_message(body: &Value) -> String {
    body.pointer("/error/message").and_then(Value::as_str).map(str::to_owned).unwrap_or_else(|| body.to_string())
}
