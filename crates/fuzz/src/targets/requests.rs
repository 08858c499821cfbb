//! The request parsers of `crates/api`: the `Medledger-Ed25519` Authorization header
//! (`auth::parse_authorization`), SMART client-assertion JWTs (`smart::parse_assertion`:
//! everything before the issuer's key is looked up) and SMART scopes (`smart::parse_scope`).
//!
//! Properties: no panic on any input; an accepted header has a 32-hex-digit nonce and its
//! fields, rendered canonically, parse to the same fields; an assertion longer than
//! `ASSERTION_BYTES_MAX` is refused, and an accepted one is EdDSA without `crit`, has
//! `sub == iss` naming the issuer, an `aud` among the token URLs, an `exp` not past and at most
//! five minutes (plus skew) away, no `nbf`/`iat` in the future, a signing input that is exactly
//! `header.payload` as sent and a signature of 64 bytes; an accepted scope renders to its v2
//! form, which parses to the same scope.

use std::sync::LazyLock;

use base64::Engine as _;
use medledger_api::{
    auth::{SCHEME, SignedHeader, parse_authorization},
    smart::{
        ASSERTION_BYTES_MAX, ASSERTION_LIFETIME_MAX_MS, ASSERTION_SKEW_MS, interactions, parse_assertion, parse_scope,
    },
};
use medledger_types::IdentityId;
use serde_json::Value;

use super::{bucket, feature};

pub static AUTH_DICTIONARY: &[&[u8]] = &[
    b"Medledger-Ed25519 ",
    b"id=",
    b"ts=",
    b"nonce=",
    b"sig=",
    b",",
    b"=",
    b" ",
    b"0123456789abcdef0123456789abcdef",
    b"1800000000000",
    b"+1",
    b"18446744073709551616",
];

pub static JWT_DICTIONARY: &[&[u8]] = &[
    b"\0",
    b".",
    br#""alg":"EdDSA""#,
    br#""typ":"JWT""#,
    br#""crit":[]"#,
    br#""iss":"#,
    br#""sub":"#,
    br#""aud":"http://127.0.0.1:8080/auth/token""#,
    br#""aud":["https://fhir.example.org/auth/token"]"#,
    br#""exp":1800000060"#,
    br#""nbf":1800000000"#,
    br#""iat":1800000000"#,
    br#""jti":"j""#,
    b"1.5e3",
    b"-1",
    b"18446744073709551615",
    b"null",
];

/// The clock and token endpoints `smart_jwt` checks assertions against.
pub const NOW_MS: u64 = 1_800_000_000_000;
pub static TOKEN_URLS: LazyLock<Vec<String>> = LazyLock::new(|| {
    vec!["http://127.0.0.1:8080/auth/token".to_owned(), "https://fhir.example.org/auth/token".to_owned()]
});

/// The name of a value's variant in its `Debug` text (`Malformed("x")` → `Malformed`).
fn variant(debug: &str) -> &str {
    debug.split(|c: char| !c.is_ascii_alphanumeric() && c != '_').next().unwrap_or("")
}

pub fn auth_header(data: &[u8]) -> u64 {
    let text = String::from_utf8_lossy(data);
    match parse_authorization(&text) {
        Err(error) => {
            let debug = format!("{error:?}");
            feature(&[b"auth refused", debug.as_bytes()])
        }
        Ok(header) => {
            assert!(text.starts_with(SCHEME));
            assert!(text.len() <= medledger_api::auth::AUTHORIZATION_BYTES_MAX, "an oversize header was accepted");
            let keys: Vec<&str> = text[SCHEME.len()..]
                .split(',')
                .filter_map(|part| part.trim().split_once('='))
                .map(|(k, _)| k)
                .collect();
            assert_eq!(keys.len(), 4, "an accepted header names each field exactly once: {keys:?}");
            let canonical = format!(
                "{SCHEME} id={},ts={},nonce={},sig={}",
                header.id.to_hex(),
                header.ts_ms,
                header.nonce,
                hex::encode(header.sig.0)
            );
            let again: Result<SignedHeader<'_>, _> = parse_authorization(&canonical);
            assert_eq!(again.as_ref(), Ok(&header), "the canonical rendering parses otherwise");
            feature(&[b"auth ok", &bucket(text.len())])
        }
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn b64_decode(text: &str) -> Vec<u8> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text).expect("accepted parts are base64url")
}

/// The JWT an input stands for: with two NUL bytes or more, `header NUL claims NUL signature`
/// (each part base64url-encoded here, so mutations reach the JSON); otherwise the text itself.
pub fn jwt_text(data: &[u8]) -> String {
    let mut parts = data.splitn(3, |b| *b == 0);
    match (parts.next(), parts.next(), parts.next()) {
        (Some(header), Some(claims), Some(signature)) => format!("{}.{}.{}", b64(header), b64(claims), b64(signature)),
        _ => String::from_utf8_lossy(data).into_owned(),
    }
}

pub fn smart_jwt(data: &[u8]) -> u64 {
    let jwt = jwt_text(data);
    let result = parse_assertion(&jwt, &TOKEN_URLS, NOW_MS);
    if jwt.len() > ASSERTION_BYTES_MAX {
        assert!(result.is_err(), "an assertion of {} bytes was accepted", jwt.len());
    }
    let parsed = match result {
        Err(error) => {
            let debug = format!("{error:?}");
            return feature(&[b"jwt refused", debug.split("retry_after").next().unwrap_or("").as_bytes()]);
        }
        Ok(parsed) => parsed,
    };
    let (header_b64, rest) = jwt.split_once('.').expect("three parts");
    let (claims_b64, signature_b64) = rest.split_once('.').expect("three parts");
    assert_eq!(parsed.signing_input, &jwt[..header_b64.len() + 1 + claims_b64.len()]);
    assert_eq!(b64_decode(signature_b64), parsed.signature.0, "the signature is the third part");
    let header: Value = serde_json::from_slice(&b64_decode(header_b64)).expect("header JSON");
    assert_eq!(header["alg"], "EdDSA");
    assert!(header.get("crit").is_none());
    let claims: Value = serde_json::from_slice(&b64_decode(claims_b64)).expect("claims JSON");
    let iss = claims["iss"].as_str().expect("iss");
    assert_eq!(claims["sub"].as_str(), Some(iss));
    assert_eq!(IdentityId::from_hex(iss).ok(), Some(parsed.issuer));
    let audiences: Vec<&str> = match &claims["aud"] {
        Value::String(aud) => vec![aud.as_str()],
        Value::Array(all) => all.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    assert!(audiences.iter().any(|a| TOKEN_URLS.iter().any(|u| u == a)), "aud {audiences:?}");
    let exp_ms = claims["exp"].as_u64().expect("exp").saturating_mul(1000);
    assert!(exp_ms.saturating_add(ASSERTION_SKEW_MS) > NOW_MS, "expired");
    assert!(exp_ms <= NOW_MS + ASSERTION_LIFETIME_MAX_MS + ASSERTION_SKEW_MS, "exp too far away");
    for claim in ["nbf", "iat"] {
        if let Some(at) = claims.get(claim) {
            assert!(at.as_u64().expect("a number").saturating_mul(1000) <= NOW_MS + ASSERTION_SKEW_MS, "{claim}");
        }
    }
    assert_eq!(claims["jti"].as_str(), Some(parsed.jti.as_str()));
    assert!(!parsed.jti.is_empty() && parsed.jti.len() <= 256);
    feature(&[b"jwt ok", &bucket(jwt.len()), &[u8::from(claims["aud"].is_array())]])
}

pub fn smart_scope(data: &[u8]) -> u64 {
    let text = String::from_utf8_lossy(data);
    match parse_scope(&text) {
        Err(error) => {
            let debug = format!("{error:?}");
            feature(&[b"scope refused", variant(&debug).as_bytes()])
        }
        Ok(scope) => {
            assert!(!text.contains('?'), "a granular scope was accepted");
            assert!(scope.interactions != 0 && scope.interactions & !interactions::ALL == 0);
            let v2 = scope.to_string();
            let again = parse_scope(&v2).expect("the v2 rendering of a scope parses");
            assert_eq!(again, scope);
            assert_eq!(again.to_string(), v2);
            feature(&[b"scope ok", &[scope.interactions, u8::from(scope.resource_type.is_some())]])
        }
    }
}
