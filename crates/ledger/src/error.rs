use medledger_types::{IdentityId, TxId};

/// Why a transaction is not valid in the current state. Messages never contain record
/// contents; they name fields and ids only.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TxError {
    #[error("transaction is for another chain")]
    WrongChain,
    #[error("signer {0} is not a registered identity")]
    UnknownSigner(IdentityId),
    #[error("signature does not verify under the signer's current key")]
    BadSignature,
    #[error("nonce {got} was already used (expected {expected}): replayed transaction")]
    Replayed { expected: u64, got: u64 },
    #[error("nonce {got} is ahead of the expected {expected}")]
    NonceAhead { expected: u64, got: u64 },
    #[error("not authorised: {0}")]
    NotAuthorised(&'static str),
    #[error("identity {0} is already registered")]
    AlreadyRegistered(IdentityId),
    #[error("unknown {what} {id}")]
    UnknownIdentity { what: &'static str, id: IdentityId },
    #[error("unknown grant {0}")]
    UnknownGrant(TxId),
    #[error("invalid field: {0}")]
    InvalidField(&'static str),
    #[error("unknown sharing rule {0}")]
    UnknownRule(TxId),
    #[error("sharing rule refused: {0}")]
    Rule(#[from] crate::rules::RuleError),
    #[error("operation {index} of the batch: {error}")]
    InBatch { index: usize, error: Box<TxError> },
}

/// Why a block does not validly extend the chain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BlockError {
    #[error("block is for another chain")]
    WrongChain,
    #[error("expected height {expected}, got {got}")]
    WrongHeight { expected: u64, got: u64 },
    #[error("parent hash does not match the current head")]
    WrongParent,
    #[error("timestamp {got_ms} is not after the parent's {parent_ms}")]
    TimestampNotIncreasing { parent_ms: u64, got_ms: u64 },
    #[error("timestamp {got_ms} is too far ahead of the local clock {now_ms}")]
    TimestampInFuture { now_ms: u64, got_ms: u64 },
    #[error("proposer is not a validator")]
    UnknownProposer,
    #[error("{0} transactions exceed the per-block maximum")]
    TooManyTransactions(usize),
    #[error("{0} operations exceed the per-block maximum")]
    TooManyOperations(usize),
    #[error("header says {header} transactions, block has {actual}")]
    TxCountMismatch { header: u32, actual: usize },
    #[error("transactions root does not match the transactions")]
    TxsRootMismatch,
    #[error("log size {header} in header, expected {expected}")]
    LogSizeMismatch { header: u64, expected: u64 },
    #[error("log root in header does not match the log")]
    LogRootMismatch,
    #[error("transaction {index} ({tx_id}) is invalid: {error}")]
    InvalidTransaction { index: usize, tx_id: TxId, error: TxError },
}
