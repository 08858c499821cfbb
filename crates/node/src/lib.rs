//! A medledger validator: Simplex BFT consensus over authenticated p2p, mempool, block execution and persistence.
