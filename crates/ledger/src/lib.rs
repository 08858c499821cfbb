//! The medledger state machine: transactions, blocks, genesis and the validation rules.
//!
//! Architecture invariant: pure. Block time, randomness and the local clock are inputs; there
//! is no I/O, no async and no serialization other than the canonical codec. Given the same
//! genesis and the same blocks, every node computes the same state and the same log.
//!
//! API boundary: [`State`] (query, `check_transaction`, `build_block`, `verify_block`,
//! `commit`), [`Transaction`], [`Block`], [`Genesis`].

pub mod access;
pub mod block;
pub mod error;
pub mod genesis;
pub mod keys;
pub mod rules;
pub mod state;
pub mod tx;

pub use block::{Block, BlockHeader};
pub use error::{BlockError, TxError};
pub use genesis::{Genesis, GenesisIdentity};
pub use rules::{InstalledRule, RuleError};
pub use state::{
    BreakGlassReview, Built, CategoryKeyId, CategoryKeyState, Delegation, Delta, Executed, Grant, GrantOrigin,
    Identity, RecordHead, State,
};
pub use tx::{
    AccessAction, AccessEvent, AccessOutcome, KeyShareEntry, Payload, Purpose, ReviewVerdict, RuleSpec, Scope,
    Transaction, TxBody, actions,
};
