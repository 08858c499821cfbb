//! A medledger validator: Simplex BFT consensus over authenticated p2p, mempool, block
//! execution and persistence.
//!
//! Architecture invariant: consensus code is generic over commonware's runtime traits, so the
//! same validator runs in the deterministic simulator (tests, replayable by seed) and on
//! tokio (production). Only [`net`] names tokio. Every block this node votes for or applies
//! went through the ledger's full verification; a finalized block that fails it halts the node
//! instead of being applied.
//!
//! API boundary: [`chain::Chain`] (queries, submission, the consensus-side operations),
//! [`validator::start_validator`], [`net::run_node`].

pub mod app;
pub mod block;
pub mod certificate;
pub mod chain;
pub mod commit_watch;
pub mod devnet;
pub mod index;
mod index_vec;
pub mod locks;
pub mod mempool;
pub mod metrics;
pub mod net;
pub mod replication;
#[cfg(feature = "simulation")]
pub mod simulation;
pub mod snapshot;
pub mod validator;

use medledger_ledger::BlockError;
use medledger_storage::{ChainError, StorageError};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("stored chain failed verification: {0}")]
    Chain(#[from] ChainError),
    #[error("finalized block {height} failed verification: {error}")]
    FinalizedInvalid {
        height: u64,
        #[source]
        error: BlockError,
    },
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("configuration: {0}")]
    Config(String),
}
