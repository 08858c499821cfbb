//! Named upper bounds. Every queue, message and request in medledger has one; changing a
//! consensus-relevant limit (marked) is a protocol change.

/// Largest encoded signed transaction accepted anywhere (consensus-relevant).
pub const TX_BYTES_MAX: usize = 64 * 1024;
/// Largest encoded batch transaction (consensus-relevant): a FHIR transaction bundle or an
/// import chunk, committed all-or-nothing. Only validators sign batches.
pub const BATCH_TX_BYTES_MAX: usize = 1024 * 1024;
/// Most operations in one batch transaction (consensus-relevant).
pub const BATCH_OPS_MAX: usize = 2048;
/// Largest directory entry (a FHIR Organization, Practitioner, PractitionerRole or Location,
/// stored in clear on-chain), in bytes (consensus-relevant).
pub const DIRECTORY_CONTENT_BYTES_MAX: usize = 32 * 1024;
/// Most transactions in one block (consensus-relevant).
pub const BLOCK_TXS_MAX: usize = 20_000;
/// Most operations in one block, a batch counting each of its operations (consensus-relevant).
pub const BLOCK_OPS_MAX: usize = 40_000;
/// Largest encoded block (consensus-relevant).
pub const BLOCK_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Longest display name of an identity, in bytes of UTF-8 (consensus-relevant).
pub const NAME_BYTES_MAX: usize = 128;
/// Longest FHIR resource type name, in bytes (consensus-relevant).
pub const RESOURCE_TYPE_BYTES_MAX: usize = 64;
/// Largest record ciphertext (consensus-relevant: record commits declare the length).
pub const RECORD_CIPHERTEXT_BYTES_MAX: u64 = 8 * 1024 * 1024;
/// Most recipients in one key-share transaction (consensus-relevant).
pub const KEY_SHARES_MAX: usize = 64;
/// Most access events in one transaction (consensus-relevant); keeps the transaction far
/// below `TX_BYTES_MAX`.
pub const ACCESS_EVENTS_PER_TX_MAX: usize = 256;
/// Most resource types or records named in one consent scope (consensus-relevant).
pub const SCOPE_ITEMS_MAX: usize = 64;
/// Oldest an access event may be when its transaction commits, against the block's time
/// (consensus-relevant): a node records decisions promptly, from its durable audit journal
/// after a restart too; an older event is refused rather than placed back in time.
pub const ACCESS_EVENT_AGE_MAX_MS: u64 = 7 * 24 * 60 * 60 * 1000;
/// Longest reason text in an access event, in bytes (consensus-relevant).
pub const REASON_BYTES_MAX: usize = 256;
/// Most validators in a consortium (consensus-relevant).
pub const VALIDATORS_MAX: usize = 64;
/// Most member organisations in genesis (consensus-relevant).
pub const GENESIS_MEMBERS_MAX: usize = 1024;
/// How far ahead of a validator's clock a proposed block timestamp may be.
pub const BLOCK_FUTURE_DRIFT_MS: u64 = 10_000;
/// How far ahead of the expected nonce a submitted transaction may be queued.
pub const NONCE_AHEAD_MAX: u64 = 4096;
/// Most transactions waiting in a node's mempool; a quarter is reserved for the node's own
/// (its audit events and the writes it signs), which others' transactions cannot take.
pub const MEMPOOL_TXS_MAX: usize = 200_000;
/// Most encoded bytes waiting in a node's mempool (a quarter reserved as above).
pub const MEMPOOL_BYTES_MAX: usize = 256 * 1024 * 1024;
/// Most transactions one signer other than the node itself may have waiting.
pub const MEMPOOL_TXS_PER_SIGNER_MAX: usize = 256;
/// Most bytes one signer other than the node itself may have waiting: two of the largest
/// batches.
pub const MEMPOOL_BYTES_PER_SIGNER_MAX: usize = 2 * BATCH_TX_BYTES_MAX;
/// Most transactions one signer other than the node may have waiting behind a nonce gap
/// (admitted on a signature check alone, never offered to blocks until the gap fills).
pub const MEMPOOL_PARKED_PER_SIGNER_MAX: usize = 16;
/// Most bytes of parked transactions in a mempool (others than the node's own).
pub const MEMPOOL_PARKED_BYTES_MAX: usize = 32 * 1024 * 1024;
/// Longest a transaction waits in a mempool before it is dropped (a client resubmits).
pub const MEMPOOL_TX_TTL_MS: u64 = 10 * 60 * 1000;
/// Largest HTTP request body accepted by the node API.
pub const HTTP_BODY_BYTES_MAX: usize = 2 * TX_BYTES_MAX;
/// Shortest break-glass window (consensus-relevant): an emergency needs at least this long.
pub const BREAK_GLASS_WINDOW_MIN_MS: u64 = 60 * 1000;
/// Longest break-glass window (consensus-relevant): emergency access beyond a day needs the
/// patient's consent or a review, not another declaration.
pub const BREAK_GLASS_WINDOW_MAX_MS: u64 = 24 * 60 * 60 * 1000;
/// Window clients propose when the practitioner does not choose one (not consensus-relevant).
pub const BREAK_GLASS_WINDOW_DEFAULT_MS: u64 = 4 * 60 * 60 * 1000;
/// Most break-glass declarations of one practitioner awaiting review (consensus-relevant):
/// emergency access without consent is reviewed before more is declared.
pub const BREAK_GLASS_UNREVIEWED_PER_PRACTITIONER_MAX: usize = 3;
/// How long an unreviewed break-glass declaration counts against its practitioner's cap
/// (consensus-relevant): 7 days.
pub const BREAK_GLASS_REVIEW_WINDOW_MS: u64 = 7 * 24 * 60 * 60 * 1000;
/// Longest break-glass reason code, in bytes (consensus-relevant).
pub const BREAK_GLASS_REASON_BYTES_MAX: usize = 64;
/// Longest sharing-rule kind name, in bytes (consensus-relevant).
pub const RULE_KIND_BYTES_MAX: usize = 64;
/// Largest canonical parameter encoding of a sharing rule, in bytes (consensus-relevant).
pub const RULE_PARAMS_BYTES_MAX: usize = 4 * 1024;
/// Most active sharing rules of one patient that react to record commits (consensus-relevant):
/// bounds the work every record commit adds to block verification.
pub const RULES_REACTING_PER_PATIENT_MAX: usize = 16;
/// Longest referral a patient may authorise, in days (consensus-relevant).
pub const RULE_GRANT_DAYS_MAX: u32 = 366;
/// Most delegates a patient may have live at once (consensus-relevant): bounds the delegate
/// check every consent transaction makes, and a patient's exposure to proxies.
pub const DELEGATES_PER_PATIENT_MAX: usize = 8;
/// Longest reason code of a break-glass review, in bytes (consensus-relevant).
pub const REVIEW_REASON_BYTES_MAX: usize = 64;
