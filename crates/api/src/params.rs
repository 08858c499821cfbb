//! Query and path parameters of the `/v1` endpoints: canonical decimals, hex ids and the
//! purpose of use, each refused with a 400 that names the parameter.

use std::collections::HashMap;

use medledger_ledger::Purpose;
use medledger_types::{Hash, IdentityId, RecordId};

use crate::error::{ApiError, echo};

pub(crate) fn parse_u64(name: &str, value: &str) -> Result<u64, ApiError> {
    // `u64::from_str` accepts a leading '+'; canonical decimal only.
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::BadRequest(format!("{name} must be a non-negative integer, got {}", echo(value))));
    }
    value.parse().map_err(|_| ApiError::BadRequest(format!("{name} {} is out of range", echo(value))))
}

pub(crate) fn optional_param(query: &HashMap<String, String>, name: &str) -> Result<Option<u64>, ApiError> {
    query.get(name).map(|v| parse_u64(&format!("query parameter `{name}`"), v)).transpose()
}

pub(crate) fn parse_identity_id(text: &str) -> Result<IdentityId, ApiError> {
    IdentityId::from_hex(text).map_err(|e| ApiError::BadRequest(format!("identity id must be 64 hex characters: {e}")))
}

pub(crate) fn hexes(hashes: &[Hash]) -> Vec<String> {
    hashes.iter().map(Hash::to_hex).collect()
}

pub(crate) fn parse_record_id(text: &str) -> Result<RecordId, ApiError> {
    RecordId::from_hex(text).map_err(|e| ApiError::BadRequest(format!("record id must be 64 hex characters: {e}")))
}

pub(crate) fn parse_purpose(query: &HashMap<String, String>) -> Result<Purpose, ApiError> {
    match query.get("purpose") {
        None => Ok(Purpose::Treatment),
        Some(p) => Purpose::parse(p).ok_or_else(|| {
            ApiError::BadRequest(format!("unknown purpose {} (TREAT, HPAYMT, HOPERAT, HRESCH, ETREAT)", echo(p)))
        }),
    }
}
