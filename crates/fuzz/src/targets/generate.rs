//! Structured transactions and blocks built from fuzzer bytes (`arbitrary::Unstructured`), so
//! a mutation of the bytes is a mutation of the structure.
//!
//! Values are generated within the decoder's limits, except that now and then one limit is
//! broken on purpose (a string one byte too long, one item too many, a batch inside a batch);
//! [`Gen::broken`] names each one, so a target knows whether decoding must succeed.
//!
//! A generator has a budget of bytes ([`GENERATED_BYTES_MAX`]) that values at their limits
//! spend: enough for a batch past its 1 MiB limit, but limits cannot multiply (2,049
//! operations of 256 access events each), which would take gigabytes and minutes.

use arbitrary::{Result, Unstructured};
use medledger_crypto::{EncryptionPublicKey, PublicKey};
use medledger_ledger::{
    AccessAction, AccessEvent, AccessOutcome, KeyShareEntry, Payload, Purpose, ReviewVerdict, RuleSpec, Scope, TxBody,
};
use medledger_types::{Hash, IdentityId, RecordId, Role, TxId, limits};

/// Most bytes of strings, blobs and sequence items one generator makes, about.
pub const GENERATED_BYTES_MAX: usize = 2 * 1024 * 1024;

/// A generator over fuzzer bytes that remembers which limits it broke.
pub struct Gen<'a, 'u> {
    u: &'u mut Unstructured<'a>,
    pub broken: Vec<&'static str>,
    /// What is left of [`GENERATED_BYTES_MAX`].
    budget_bytes: usize,
}

/// The longest prefix of `text` of at most `max` bytes that ends on a character boundary.
fn cut(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

impl<'a, 'u> Gen<'a, 'u> {
    pub fn new(u: &'u mut Unstructured<'a>) -> Self {
        Self { u, broken: Vec::new(), budget_bytes: GENERATED_BYTES_MAX }
    }

    /// Whether to break the limit on `what` this time (about one in 64; never once the input
    /// is used up, which reads as zeros).
    fn breaks(&mut self, what: &'static str) -> Result<bool> {
        let breaks = self.u.int_in_range(0u8..=63)? == 63;
        if breaks {
            self.broken.push(what);
        }
        Ok(breaks)
    }

    pub fn bytes32(&mut self) -> Result<[u8; 32]> {
        self.u.arbitrary()
    }

    pub fn u64(&mut self) -> Result<u64> {
        self.u.arbitrary()
    }

    pub fn u32(&mut self) -> Result<u32> {
        self.u.arbitrary()
    }

    pub fn u8(&mut self) -> Result<u8> {
        self.u.arbitrary()
    }

    fn choose<T: Copy>(&mut self, items: &[T]) -> Result<T> {
        self.u.choose(items).copied()
    }

    /// A UTF-8 string for a field of at most `max` bytes: usually short, sometimes exactly at
    /// the limit (one- and two-byte characters), rarely one byte past it.
    /// Spends `bytes` of the budget.
    fn spend(&mut self, bytes: usize) {
        self.budget_bytes = self.budget_bytes.saturating_sub(bytes);
    }

    /// Whether values at a limit of `max` bytes (or one past it) are still affordable.
    fn affords(&self, max: usize) -> bool {
        self.budget_bytes > max
    }

    pub fn text(&mut self, max: usize, what: &'static str) -> Result<String> {
        let text = if self.affords(max) && self.breaks(what)? {
            "z".repeat(max + 1)
        } else {
            match self.u.int_in_range(0u8..=15)? {
                14 if self.affords(max) => "x".repeat(max),
                15 if self.affords(max) => "é".repeat(max / 2),
                _ => {
                    let text: &str = self.u.arbitrary()?;
                    cut(text, max.min(self.budget_bytes))
                }
            }
        };
        self.spend(text.len());
        Ok(text)
    }

    /// Bytes for a field of at most `max` bytes, like [`Gen::text`].
    pub fn blob(&mut self, max: usize, what: &'static str) -> Result<Vec<u8>> {
        let blob = if self.affords(max) && self.breaks(what)? {
            vec![7; max + 1]
        } else {
            match self.u.int_in_range(0u8..=15)? {
                15 if self.affords(max) => vec![b'{'; max],
                _ => {
                    let bytes: &[u8] = self.u.arbitrary()?;
                    bytes[..bytes.len().min(max).min(self.budget_bytes)].to_vec()
                }
            }
        };
        self.spend(blob.len());
        Ok(blob)
    }

    /// How many items (each taking about `item_bytes`) of a sequence of at most `max`:
    /// usually a few, sometimes the maximum, rarely one more.
    pub fn count(&mut self, max: usize, typical: usize, item_bytes: usize, what: &'static str) -> Result<usize> {
        let at_limit = self.affords((max + 1) * item_bytes);
        let count = if at_limit && self.breaks(what)? {
            max + 1
        } else if at_limit && self.u.int_in_range(0u8..=31)? == 31 {
            max
        } else {
            self.u.int_in_range(0..=typical.min(max))?
        };
        self.spend(count * item_bytes);
        Ok(count)
    }

    fn identity(&mut self) -> Result<IdentityId> {
        Ok(IdentityId(self.bytes32()?))
    }

    fn record(&mut self) -> Result<RecordId> {
        Ok(RecordId(self.bytes32()?))
    }

    fn tx_id(&mut self) -> Result<TxId> {
        Ok(TxId(self.bytes32()?))
    }

    fn purpose(&mut self) -> Result<Purpose> {
        self.choose(&Purpose::ALL)
    }

    fn short(&mut self, what: &'static str) -> Result<String> {
        self.text(limits::RESOURCE_TYPE_BYTES_MAX, what)
    }

    fn access_event(&mut self) -> Result<AccessEvent> {
        Ok(AccessEvent {
            accessor: self.identity()?,
            patient: self.identity()?,
            record: if self.u.arbitrary()? { Some((self.record()?, self.u32()?)) } else { None },
            action: self.choose(&[
                AccessAction::Read,
                AccessAction::Write,
                AccessAction::History,
                AccessAction::Search,
                AccessAction::Export,
            ])?,
            purpose: self.purpose()?,
            outcome: self.choose(&[AccessOutcome::Allowed, AccessOutcome::Denied, AccessOutcome::BreakGlass])?,
            grant_id: if self.u.arbitrary()? { Some(self.tx_id()?) } else { None },
            reason: self.text(limits::REASON_BYTES_MAX, "access reason")?,
            at_ms: self.u64()?,
        })
    }

    fn scope(&mut self) -> Result<Scope> {
        Ok(match self.u.int_in_range(0u8..=3)? {
            0 => Scope::All,
            1 => {
                let n = self.count(limits::SCOPE_ITEMS_MAX, 4, 36, "scope items")?;
                Scope::ResourceTypes((0..n).map(|_| self.short("scope resource type")).collect::<Result<_>>()?)
            }
            2 => {
                let n = self.count(limits::SCOPE_ITEMS_MAX, 4, 36, "scope items")?;
                Scope::Records((0..n).map(|_| self.record()).collect::<Result<_>>()?)
            }
            _ => {
                let n = self.count(limits::SCOPE_ITEMS_MAX, 4, 36, "scope items")?;
                Scope::Categories((0..n).map(|_| self.short("scope category")).collect::<Result<_>>()?)
            }
        })
    }

    /// One payload; inside a batch (`in_batch`), a batch only when that limit is broken.
    pub fn payload(&mut self, in_batch: bool) -> Result<Payload> {
        let mut kind = self.u.int_in_range(1u8..=15)?;
        if kind == 14 && in_batch && !self.breaks("nested batch")? {
            kind = 3;
        }
        Ok(match kind {
            1 => Payload::RegisterIdentity {
                role: self.choose(&Role::ALL)?,
                signing_key: PublicKey(self.bytes32()?),
                encryption_key: EncryptionPublicKey(self.bytes32()?),
                organisation: if self.u.arbitrary()? { Some(self.identity()?) } else { None },
                name: self.text(limits::NAME_BYTES_MAX, "name")?,
            },
            2 => Payload::RotateKey {
                signing_key: PublicKey(self.bytes32()?),
                encryption_key: EncryptionPublicKey(self.bytes32()?),
            },
            3 => Payload::RecordCommit {
                record_id: self.record()?,
                version: self.u32()?,
                patient: self.identity()?,
                custodian: self.identity()?,
                author: self.identity()?,
                resource_type: self.short("resource type")?,
                category: self.short("category")?,
                key_epoch: self.u32()?,
                ciphertext_hash: Hash(self.bytes32()?),
                ciphertext_bytes: self.u64()?,
                wrapped_data_key: {
                    let mut key = [0u8; 72];
                    self.u.fill_buffer(&mut key)?;
                    key
                },
            },
            4 => Payload::ConsentGrant {
                patient: self.identity()?,
                grantee: self.identity()?,
                scope: self.scope()?,
                actions: self.u8()?,
                purpose: self.purpose()?,
                valid_from_ms: self.u64()?,
                valid_until_ms: self.u64()?,
            },
            5 => Payload::ConsentRevoke { grant_id: self.tx_id()? },
            6 => {
                let n = self.count(limits::ACCESS_EVENTS_PER_TX_MAX, 6, 120, "access events")?;
                Payload::AccessEvents { events: (0..n).map(|_| self.access_event()).collect::<Result<_>>()? }
            }
            7 => {
                let (custodian, patient, category, epoch) =
                    (self.identity()?, self.identity()?, self.short("key share category")?, self.u32()?);
                let n = self.count(limits::KEY_SHARES_MAX, 4, 112, "key shares")?;
                let shares = (0..n)
                    .map(|_| {
                        let recipient = self.identity()?;
                        let encapsulated_key = self.bytes32()?;
                        let mut wrapped_key = [0u8; 48];
                        self.u.fill_buffer(&mut wrapped_key)?;
                        Ok(KeyShareEntry { recipient, encapsulated_key, wrapped_key })
                    })
                    .collect::<Result<_>>()?;
                Payload::KeyShare { custodian, patient, category, epoch, shares }
            }
            8 => Payload::BreakGlass {
                patient: self.identity()?,
                reason: self.text(limits::BREAK_GLASS_REASON_BYTES_MAX, "break-glass reason")?,
                window_ms: self.u64()?,
            },
            9 => Payload::InstallRule {
                patient: self.identity()?,
                rule: RuleSpec {
                    kind: self.text(limits::RULE_KIND_BYTES_MAX, "rule kind")?,
                    params: self.blob(limits::RULE_PARAMS_BYTES_MAX, "rule params")?,
                },
            },
            10 => Payload::RemoveRule { rule_id: self.tx_id()? },
            11 => Payload::AppointDelegate {
                patient: self.identity()?,
                delegate: self.identity()?,
                valid_until_ms: self.u64()?,
            },
            12 => Payload::DismissDelegate { patient: self.identity()?, delegate: self.identity()? },
            13 => Payload::ReviewBreakGlass {
                break_glass_tx: self.tx_id()?,
                verdict: self.choose(&[ReviewVerdict::Justified, ReviewVerdict::Unjustified])?,
                reason: self.text(limits::REVIEW_REASON_BYTES_MAX, "review reason")?,
            },
            14 => {
                let n = self.count(limits::BATCH_OPS_MAX, 5, 100, "batch operations")?;
                Payload::Batch { ops: (0..n).map(|_| self.payload(true)).collect::<Result<_>>()? }
            }
            _ => Payload::DirectoryPut {
                entry_id: self.record()?,
                version: self.u32()?,
                resource_type: self.short("directory resource type")?,
                content: self.blob(limits::DIRECTORY_CONTENT_BYTES_MAX, "directory content")?,
            },
        })
    }

    pub fn body(&mut self) -> Result<TxBody> {
        Ok(TxBody {
            chain_id: Hash(self.bytes32()?),
            signer: self.identity()?,
            nonce: self.u64()?,
            payload: self.payload(false)?,
        })
    }

    pub fn header(&mut self) -> Result<medledger_ledger::BlockHeader> {
        Ok(medledger_ledger::BlockHeader {
            chain_id: Hash(self.bytes32()?),
            height: self.u64()?,
            parent: Hash(self.bytes32()?),
            timestamp_ms: self.u64()?,
            proposer: self.identity()?,
            tx_count: self.u32()?,
            txs_root: Hash(self.bytes32()?),
            log_size: self.u64()?,
            log_root: Hash(self.bytes32()?),
        })
    }

    /// A small number (for counts of transactions in a block).
    pub fn small(&mut self, max: usize) -> Result<usize> {
        self.u.int_in_range(0..=max)
    }
}
