//! HTTP API of a medledger node (axum): head, proofs, checkpoints, transactions, blocks, metrics.
