//! The patient's view: their records and versions, their grants, their delegates, their full
//! access log with an inclusion proof per entry, and notifications; plus the version history of
//! a record for anyone allowed to read it.
//!
//! Every request is signed (`auth`). Only the patient themself reads their view (403
//! `not-the-patient` otherwise), except that a live delegate of the patient also reads their
//! grants and delegates: what managing consent for them needs, and nothing of their records or
//! access log. Answers come from the node's per-patient index
//! (`medledger_node::index`) and the state, read together under one lock so they are at the
//! same height; they carry ids and codes only, never record contents. Lists are paged
//! (`from`, `limit` ≤ `PAGE_LIMIT_MAX`) so no answer grows without bound.
//!
//! One module per view: `records.rs` (records, and a record's history), `grants.rs` (grants
//! and delegates), `access_log.rs` and `notifications.rs`, over `common.rs` (paging, who may
//! ask, shared JSON pieces), which `break_glass.rs` uses too.

pub(crate) mod access_log;
pub(crate) mod common;
pub(crate) mod grants;
pub(crate) mod notifications;
pub(crate) mod records;
