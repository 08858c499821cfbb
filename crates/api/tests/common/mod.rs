//! The one harness of the API integration tests: a devnet chain in a tempdir with its
//! organisations, staff and patients, an optional record service, the router over them
//! ([`world`]); requests as clients send them, signed or with bearer tokens, and their
//! answers ([`request`]); the FHIR resources the tests write ([`fhir`]).
//!
//! Every test file builds its [`world::World`] with [`world::World::builder`] (or
//! [`world::World::hospital_and_clinic`], the two-organisation network most files use),
//! naming exactly what it needs: chain name, organisations, identities and their roles,
//! limits, services. So a file's world reads at its top, and the harness holds no per-file
//! special cases; what only one file needs stays in that file.

// Each test file is its own crate and compiles this module for itself, using only part of it:
// what one file leaves unused is not dead in the harness.
#![allow(dead_code)]

pub mod fhir;
pub mod request;
pub mod world;

/// Wall-clock time in milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}
