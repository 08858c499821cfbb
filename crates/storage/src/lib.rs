//! Crash-safe embedded storage of the chain: blocks, the transaction index and chain metadata,
//! in one redb file (`DIR/ledger.redb`).
//!
//! Architecture invariant: a block and its index entries are written in one redb write
//! transaction with immediate durability, so after a crash the store holds exactly a prefix
//! of the finalized chain, never a half-written block. The store itself trusts nothing it
//! reads back: [`replay`] re-verifies every block (hash links, signatures, both Merkle
//! roots) through the ledger's rules before a node serves anything.
//!
//! API boundary: [`Store`] (append, read) and [`replay`] (rebuild and verify state).

use std::path::{Path, PathBuf};

use medledger_codec::Encode;
use medledger_ledger::{Block, BlockError, Genesis, State, genesis::GenesisError};
use medledger_types::{Height, TxId};
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

/// File name of the database inside a node's data directory.
pub const DB_FILE: &str = "ledger.redb";
/// Storage layout version, kept in the meta table.
pub const STORAGE_FORMAT_VERSION: u64 = 1;

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const BLOCKS: TableDefinition<u64, &[u8]> = TableDefinition::new("blocks");
/// Transaction id -> (height, index within block).
const TX_INDEX: TableDefinition<&[u8; 32], (u64, u32)> = TableDefinition::new("tx_index");
/// Height -> consensus finalization certificate (opaque to this crate).
const FINALIZATIONS: TableDefinition<u64, &[u8]> = TableDefinition::new("finalizations");

const META_GENESIS: &str = "genesis";
const META_FORMAT: &str = "format_version";

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    #[error("database {path}: {message}")]
    Database { path: PathBuf, message: String },
    #[error("data directory {0} holds no chain (run `medledger init` or `medledger dev` first)")]
    NotInitialised(PathBuf),
    #[error("data directory holds a different chain (genesis mismatch)")]
    GenesisMismatch,
    #[error("storage format version {found} is not supported (expected {expected})")]
    UnsupportedFormat { found: u64, expected: u64 },
    #[error("block {got} does not follow the stored head {head}")]
    NotNext { head: Height, got: Height },
    #[error("stored genesis: {0}")]
    Genesis(#[from] GenesisError),
}

/// A problem found while re-verifying stored history.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChainError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("block at height {height}: stored bytes do not decode: {error}")]
    Undecodable {
        height: Height,
        #[source]
        error: medledger_codec::CodecError,
    },
    #[error("block at height {height} is invalid: {error}")]
    Invalid { height: Height, error: BlockError },
    #[error("height {height} is missing from the block table")]
    Missing { height: Height },
    #[error("finalization certificate at height {height}: {reason}")]
    BadCertificate { height: Height, reason: String },
}

impl ChainError {
    /// The first bad height, when the problem is with a block.
    pub fn height(&self) -> Option<Height> {
        match self {
            ChainError::Undecodable { height, .. }
            | ChainError::Invalid { height, .. }
            | ChainError::Missing { height }
            | ChainError::BadCertificate { height, .. } => Some(*height),
            ChainError::Storage(_) => None,
        }
    }
}

/// The chain store of one node.
pub struct Store {
    db: redb::Database,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens (creating if needed) the store in `dir`. The directory (a node's data directory)
    /// is made private to its owner (0700) and the database file 0600, on creation and again
    /// on every open, so an install left readable by other local users is fixed at start.
    pub fn open(dir: &Path) -> Result<Self, StorageError> {
        medledger_crypto::private_dir(dir).map_err(|e| db_err(dir, e))?;
        let path = dir.join(DB_FILE);
        let mut options = std::fs::OpenOptions::new();
        options.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        // Created private rather than tightened after: never readable by others, not even
        // for a moment. redb initialises an empty file as a new database.
        let file = options.open(&path).map_err(|e| db_err(&path, e))?;
        medledger_crypto::make_private(&path).map_err(|e| db_err(&path, e))?;
        let db = redb::Database::builder().create_file(file).map_err(|e| db_err(&path, e))?;
        let store = Self { db, path };
        store.ensure_tables()?;
        Ok(store)
    }

    /// Opens an existing store; fails if `dir` holds none.
    pub fn open_existing(dir: &Path) -> Result<Self, StorageError> {
        if !dir.join(DB_FILE).exists() {
            return Err(StorageError::NotInitialised(dir.to_owned()));
        }
        Self::open(dir)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, e: impl std::fmt::Display) -> StorageError {
        db_err(&self.path, e)
    }

    fn ensure_tables(&self) -> Result<(), StorageError> {
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut meta = txn.open_table(META).map_err(|e| self.err(e))?;
            let found = meta.get(META_FORMAT).map_err(|e| self.err(e))?.map(|v| v.value().to_vec());
            match found {
                None => {
                    meta.insert(META_FORMAT, STORAGE_FORMAT_VERSION.to_be_bytes().as_slice())
                        .map_err(|e| self.err(e))?;
                }
                Some(bytes) => {
                    let found = <[u8; 8]>::try_from(bytes.as_slice()).map(u64::from_be_bytes).unwrap_or(0);
                    if found != STORAGE_FORMAT_VERSION {
                        return Err(StorageError::UnsupportedFormat { found, expected: STORAGE_FORMAT_VERSION });
                    }
                }
            }
            txn.open_table(BLOCKS).map_err(|e| self.err(e))?;
            txn.open_table(TX_INDEX).map_err(|e| self.err(e))?;
            txn.open_table(FINALIZATIONS).map_err(|e| self.err(e))?;
        }
        txn.commit().map_err(|e| self.err(e))
    }

    /// Records the genesis of this chain, or checks that it matches the one recorded.
    pub fn init_genesis(&self, genesis: &Genesis) -> Result<(), StorageError> {
        let bytes = genesis.to_bytes();
        match self.genesis_bytes()? {
            Some(existing) if existing == bytes => Ok(()),
            Some(_) => Err(StorageError::GenesisMismatch),
            None => {
                let txn = self.db.begin_write().map_err(|e| self.err(e))?;
                txn.open_table(META)
                    .map_err(|e| self.err(e))?
                    .insert(META_GENESIS, bytes.as_slice())
                    .map_err(|e| self.err(e))?;
                txn.commit().map_err(|e| self.err(e))
            }
        }
    }

    fn genesis_bytes(&self) -> Result<Option<Vec<u8>>, StorageError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let meta = txn.open_table(META).map_err(|e| self.err(e))?;
        Ok(meta.get(META_GENESIS).map_err(|e| self.err(e))?.map(|v| v.value().to_vec()))
    }

    pub fn genesis(&self) -> Result<Genesis, StorageError> {
        let bytes = self.genesis_bytes()?.ok_or_else(|| StorageError::NotInitialised(self.path.clone()))?;
        Ok(Genesis::from_bytes(&bytes)?)
    }

    /// Height of the last stored block (0 when none).
    pub fn last_height(&self) -> Result<Height, StorageError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let blocks = txn.open_table(BLOCKS).map_err(|e| self.err(e))?;
        Ok(blocks.last().map_err(|e| self.err(e))?.map_or(0, |(k, _)| k.value()))
    }

    /// Appends finalized blocks (with their finalization certificates, if any) in one durable
    /// write. Each must follow the stored head.
    pub fn append_blocks(&self, blocks: &[(&Block, Option<&[u8]>)]) -> Result<(), StorageError> {
        if blocks.is_empty() {
            return Ok(());
        }
        let mut head = self.last_height()?;
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut table = txn.open_table(BLOCKS).map_err(|e| self.err(e))?;
            let mut index = txn.open_table(TX_INDEX).map_err(|e| self.err(e))?;
            let mut finals = txn.open_table(FINALIZATIONS).map_err(|e| self.err(e))?;
            for (block, certificate) in blocks {
                let height = block.height();
                if height != head + 1 {
                    return Err(StorageError::NotNext { head, got: height });
                }
                table.insert(height, block.to_bytes().as_slice()).map_err(|e| self.err(e))?;
                for (i, tx) in block.txs.iter().enumerate() {
                    index.insert(&tx.id().0, (height, i as u32)).map_err(|e| self.err(e))?;
                }
                if let Some(cert) = certificate {
                    finals.insert(height, *cert).map_err(|e| self.err(e))?;
                }
                head = height;
            }
        }
        // An early return above drops the transaction uncommitted: nothing partial lands.
        txn.commit().map_err(|e| self.err(e))
    }

    pub fn block_bytes(&self, height: Height) -> Result<Option<Vec<u8>>, StorageError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = txn.open_table(BLOCKS).map_err(|e| self.err(e))?;
        Ok(table.get(height).map_err(|e| self.err(e))?.map(|v| v.value().to_vec()))
    }

    pub fn finalization(&self, height: Height) -> Result<Option<Vec<u8>>, StorageError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = txn.open_table(FINALIZATIONS).map_err(|e| self.err(e))?;
        Ok(table.get(height).map_err(|e| self.err(e))?.map(|v| v.value().to_vec()))
    }

    /// Visits stored finalization certificates in height order.
    pub fn for_each_finalization(
        &self,
        mut visit: impl FnMut(Height, &[u8]) -> Result<(), ChainError>,
    ) -> Result<(), ChainError> {
        const BATCH: u64 = 1024;
        let mut next = 0u64;
        loop {
            let txn = self.db.begin_read().map_err(|e| self.err(e))?;
            let table = txn.open_table(FINALIZATIONS).map_err(|e| self.err(e))?;
            let mut seen = 0;
            for entry in table.range(next..).map_err(|e| self.err(e))?.take(BATCH as usize) {
                let (k, v) = entry.map_err(|e| self.err(e))?;
                visit(k.value(), v.value())?;
                next = k.value() + 1;
                seen += 1;
            }
            if seen < BATCH {
                return Ok(());
            }
        }
    }

    /// Where a committed transaction is: (height, index within its block).
    pub fn tx_location(&self, id: &TxId) -> Result<Option<(Height, u32)>, StorageError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = txn.open_table(TX_INDEX).map_err(|e| self.err(e))?;
        Ok(table.get(&id.0).map_err(|e| self.err(e))?.map(|v| v.value()))
    }

    pub fn tx_count(&self) -> Result<u64, StorageError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = txn.open_table(TX_INDEX).map_err(|e| self.err(e))?;
        table.len().map_err(|e| self.err(e))
    }

    /// Visits stored blocks in height order from `from`, reading in bounded batches.
    pub fn for_each_block(
        &self,
        from: Height,
        mut visit: impl FnMut(Height, &[u8]) -> Result<(), ChainError>,
    ) -> Result<(), ChainError> {
        const BATCH: u64 = 256;
        let mut next = from;
        loop {
            let txn = self.db.begin_read().map_err(|e| self.err(e))?;
            let table = txn.open_table(BLOCKS).map_err(|e| self.err(e))?;
            let mut seen = 0;
            for entry in table.range(next..next.saturating_add(BATCH)).map_err(|e| self.err(e))? {
                let (k, v) = entry.map_err(|e| self.err(e))?;
                let height = k.value();
                if height != next {
                    return Err(ChainError::Missing { height: next });
                }
                visit(height, v.value())?;
                next += 1;
                seen += 1;
            }
            if seen < BATCH {
                return Ok(());
            }
        }
    }
}

fn db_err(path: &Path, e: impl std::fmt::Display) -> StorageError {
    StorageError::Database { path: path.to_owned(), message: e.to_string() }
}

/// Counts from a replay.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplayReport {
    pub blocks: u64,
    pub transactions: u64,
}

/// Rebuilds the state from genesis by re-verifying every stored block in order: hash links,
/// header rules, every transaction's rules and signature, the transactions root and the log
/// root. Stops at the first problem. `progress` is called every few thousand blocks.
pub fn replay(store: &Store, progress: &mut dyn FnMut(Height, Height)) -> Result<(State, ReplayReport), ChainError> {
    let genesis = store.genesis()?;
    let mut state = State::from_genesis(&genesis);
    let last = store.last_height()?;
    let mut report = ReplayReport::default();
    store.for_each_block(1, |height, bytes| {
        let block = Block::decode(bytes).map_err(|error| ChainError::Undecodable { height, error })?;
        if block.height() != height {
            return Err(ChainError::Invalid {
                height,
                error: BlockError::WrongHeight { expected: height, got: block.height() },
            });
        }
        state.apply_block(&block, None, &|_| false).map_err(|error| ChainError::Invalid { height, error })?;
        report.blocks += 1;
        report.transactions += block.txs.len() as u64;
        if height % 1000 == 0 || height == last {
            progress(height, last);
        }
        Ok(())
    })?;
    if report.blocks != last {
        return Err(ChainError::Missing { height: report.blocks + 1 });
    }
    Ok((state, report))
}

#[cfg(test)]
mod tests;
