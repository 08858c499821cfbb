//! [`RecordError`]: why the record service refused or failed, keeping each cause's source.

use medledger_ledger::access::Denial;
use medledger_node::chain::SubmitError;
use medledger_types::RecordId;

use crate::journal::AuditError;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    #[error("access denied: {}", .0.code())]
    Denied(Denial),
    #[error("record {0} does not exist")]
    UnknownRecord(RecordId),
    /// The caller's credential (a token's scopes) does not permit this on the record's type.
    #[error("the caller's credential does not permit this on the record's type")]
    OutOfScope,
    #[error("record {record} has no version {version}")]
    UnknownVersion { record: RecordId, version: u32 },
    #[error("this node's organisation holds no key for this record; read it at a node of the record's custodian")]
    NotDecryptableHere,
    #[error("the ciphertext of this version is not in this node's store")]
    CiphertextMissing,
    #[error("this node's organisation is not the record's custodian")]
    NotCustodian,
    #[error("a previous version of this record is still being committed; retry shortly")]
    VersionPending,
    #[error("the record's latest version is {latest}, not the one the update was based on")]
    VersionMismatch { latest: u32 },
    #[error("record is larger than {max} bytes")]
    TooLarge { max: usize },
    #[error("{0}")]
    Invalid(&'static str),
    #[error("transaction refused: {0}")]
    Submit(#[from] SubmitError),
    #[error("stored data is inconsistent: {0}")]
    Corrupt(String),
    /// A count would be recorded on too many patients' trails (see `search::COUNTED_PATIENTS_MAX`).
    #[error(
        "this count covers the records of {patients} patients, each of whom would see it on their access trail; at \
         most {max} are counted at once: narrow the search (by patient, say)"
    )]
    CountTooBroad { patients: usize, max: usize },
    /// The blob store failed; a full disk says so ([`RecordError::is_storage_full`]), it is
    /// never reported as inconsistent data.
    #[error(transparent)]
    Blobs(#[from] medledger_blobs::BlobError),
    /// The chain store could not be read.
    #[error("reading the chain: {0}")]
    Chain(#[from] medledger_node::NodeError),
    /// A new patient's key file could not be written (nothing was submitted).
    #[error("writing a patient key file: {0}")]
    KeyFile(#[source] medledger_crypto::KeyFileError),
    /// The decision could not be recorded, so it is not acted on.
    #[error("{0}")]
    Audit(#[from] AuditError),
}

impl RecordError {
    /// Whether the node's disk (or its quota) is full: the write can succeed once space is
    /// freed, and nothing was partly written.
    pub fn is_storage_full(&self) -> bool {
        matches!(self, RecordError::Blobs(e) if e.is_storage_full())
    }
}
