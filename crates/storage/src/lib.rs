//! Crash-safe embedded storage (redb) of blocks, transaction index and log leaves.
