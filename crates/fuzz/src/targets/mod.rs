//! The targets. Each is a function from bytes to a feature (see [`crate::engine`]) that
//! panics when a property does not hold; the properties are written on each target.

mod bundle;
mod fhir;
mod generate;
mod ledger;
#[cfg(unix)]
mod pack;
pub(crate) mod requests;

use crate::Target;

pub use bundle::fhir_bundle;
pub use fhir::fhir_validate;
pub use ledger::{block_decode, block_roundtrip, tx_decode, tx_roundtrip};
#[cfg(unix)]
pub use pack::pack_scan;
pub use requests::{NOW_MS, TOKEN_URLS, auth_header, jwt_text, smart_jwt, smart_scope};

/// Every target.
pub static ALL: &[Target] = &[
    Target {
        name: "tx_decode",
        about: "Transaction::decode on bytes: no panic; accepted bytes re-encode identically; trailing bytes and prefixes refused",
        run: tx_decode,
        input_bytes_max: 80 * 1024,
        dictionary: &[&[1], &[0, 0, 0, 0], &[0xff, 0xff, 0xff, 0xff], &[0, 0, 0, 64], &[0, 0, 0, 65], &[14], &[15]],
        mutate: None,
    },
    Target {
        name: "tx_roundtrip",
        about: "structured transactions: decode(sign(body)) == the transaction exactly when every limit holds",
        run: tx_roundtrip,
        input_bytes_max: 8 * 1024,
        dictionary: &[],
        mutate: None,
    },
    Target {
        name: "block_decode",
        about: "Block::decode and BlockHeader decode_exact on bytes: no panic; accepted bytes re-encode identically",
        run: block_decode,
        input_bytes_max: 128 * 1024,
        dictionary: &[&[1], &[0, 0, 0, 0], &[0xff, 0xff, 0xff, 0xff], &[0, 0, 0, 1], &[0, 0, 0, 2]],
        mutate: None,
    },
    Target {
        name: "block_roundtrip",
        about: "structured blocks: decode(encode(block)) == block exactly when its transactions are valid",
        run: block_roundtrip,
        input_bytes_max: 16 * 1024,
        dictionary: &[],
        mutate: None,
    },
    Target {
        name: "fhir_validate",
        about: "medledger_fhir json::parse and validate: no panic, deterministic, spans and references consistent, limits monotone",
        run: fhir_validate,
        input_bytes_max: 96 * 1024,
        dictionary: fhir::DICTIONARY,
        mutate: Some(crate::json_mutate::mutate),
    },
    Target {
        name: "fhir_bundle",
        about: "transaction Bundle input as the API plans it: entries cut out by span, references rewritten in place, conditional queries parsed",
        run: fhir_bundle,
        input_bytes_max: 96 * 1024,
        dictionary: fhir::DICTIONARY,
        mutate: Some(crate::json_mutate::mutate),
    },
    #[cfg(unix)]
    Target {
        name: "pack_scan",
        about: "PackBlobStore::open on arbitrary segment files: no I/O error or panic, ranges within files, intact blobs served, recovery idempotent",
        run: pack_scan,
        input_bytes_max: 64 * 1024,
        dictionary: &[b"MLBE", b"MLBPACK1", &[1, 0, 0, 0], &[0, 0, 0, 0], &[0xff, 0xff, 0xff, 0xff], &[0, 0, 0x80, 0]],
        mutate: None,
    },
    Target {
        name: "auth_header",
        about: "Medledger-Ed25519 Authorization header parsing: no panic; accepted headers well-formed and re-render to the same fields",
        run: auth_header,
        input_bytes_max: 4 * 1024,
        dictionary: requests::AUTH_DICTIONARY,
        mutate: None,
    },
    Target {
        name: "smart_jwt",
        about: "SMART client-assertion JWT parsing: no panic; oversize refused; accepted assertions have valid aud, sub, exp, nbf, iat",
        run: smart_jwt,
        input_bytes_max: 16 * 1024,
        dictionary: requests::JWT_DICTIONARY,
        mutate: None,
    },
    Target {
        name: "smart_scope",
        about: "SMART scope parsing: no panic; accepted scopes render to their v2 form, which parses to the same scope",
        run: smart_scope,
        input_bytes_max: 256,
        dictionary: &[b"patient/", b"user/", b"system/", b"*", b".", b"cruds", b"read", b"write", b"?", b"Observation"],
        mutate: None,
    },
];

/// FNV-1a over `parts`, with a separator so `["ab", "c"]` and `["a", "bc"]` differ: the
/// features targets return.
pub fn feature(parts: &[&[u8]]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for part in parts {
        for &b in part.iter().chain(&[0xff]) {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    hash
}

/// A size class (0, 1, 2–3, 4–7, …): features that tell small inputs from large ones without
/// making every length a feature of its own.
pub fn bucket(n: usize) -> [u8; 1] {
    [(usize::BITS - n.leading_zeros()) as u8]
}
