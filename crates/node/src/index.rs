//! Per-patient index of committed history: what a patient's view needs (their records and
//! versions, every access event about them, every wrap of their category keys given to someone
//! else, every break-glass declaration and its review, every appointment and dismissal of a
//! delegate, every grant and revocation a delegate signed for them), without scanning the chain
//! per request; and every break-glass declaration in commit order, for organisations' review
//! queues.
//!
//! Derived data only: a pure function of the finalized blocks, rebuilt at start by scanning the
//! store ([`PatientIndex::apply_block`] per block, after the state's replay verified them) and
//! extended as blocks commit. The state is consulted only for facts that never change once
//! committed (which patient a revoked grant is of), so the final state serves a rebuild. It holds ids, codes and positions, never plaintext: every entry is
//! fixed-size apart from codes the ledger already bounds (resource type and category names of
//! at most [`limits::RESOURCE_TYPE_BYTES_MAX`], reasons of at most [`limits::REASON_BYTES_MAX`]
//! and [`limits::BREAK_GLASS_REASON_BYTES_MAX`] bytes). The number of entries grows with the
//! chain, as the state does.

use medledger_ledger::{AccessEvent, Block, Payload, ReviewVerdict, State};
use medledger_types::{Hash, Height, IdentityId, RecordId, TimestampMs, TxId, limits};

/// Where a transaction sits: what a client needs to fetch it and prove its inclusion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxPosition {
    /// The transaction id, which is also its RFC 6962 leaf hash.
    pub tx_id: TxId,
    /// Its leaf index in the global log.
    pub log_index: u64,
    pub height: Height,
    /// The committing block's timestamp (block time, not a node's clock).
    pub committed_at_ms: TimestampMs,
}

/// One committed version of a record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionEntry {
    pub version: u32,
    pub author: IdentityId,
    pub position: TxPosition,
    /// What decrypting this version needs, so reads never load and decode its block.
    pub key_epoch: u32,
    pub ciphertext_hash: Hash,
    pub wrapped_data_key: [u8; 72],
}

/// A record of a patient, with every committed version, oldest first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordEntry {
    pub record_id: RecordId,
    pub patient: IdentityId,
    pub resource_type: String,
    pub category: String,
    pub custodian: IdentityId,
    pub versions: Vec<VersionEntry>,
}

impl RecordEntry {
    pub fn latest_version(&self) -> u32 {
        self.versions.last().map_or(0, |v| v.version)
    }
}

/// One access event about a patient.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessEntry {
    /// The access-events transaction that carries the event.
    pub position: TxPosition,
    /// The event's index within that transaction.
    pub event_index: u16,
    /// Who recorded it: the validator that decided, and signed the transaction.
    pub recorder: IdentityId,
    pub event: AccessEvent,
}

/// A wrap of one of the patient's category keys for someone other than the patient.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyShareEntry {
    pub position: TxPosition,
    pub recipient: IdentityId,
    pub custodian: IdentityId,
    pub category: String,
    pub epoch: u32,
}

impl KeyShareEntry {
    /// Whether the key went to a third party (a grantee), not to the custodian that holds it
    /// anyway: what a patient is told about.
    pub fn is_grant_wrap(&self) -> bool {
        self.recipient != self.custodian
    }
}

/// A break-glass declaration about a patient (its grant's id is the transaction id).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BreakGlassEntry {
    pub position: TxPosition,
    pub patient: IdentityId,
    pub practitioner: IdentityId,
    /// The declared reason code.
    pub reason: String,
    pub window_ms: u64,
    /// The reviewing transaction, once reviewed (its entry is in the patient's `reviews`).
    pub reviewed_by_tx: Option<TxId>,
}

/// A review of one of the patient's break-glass accesses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReviewEntry {
    pub position: TxPosition,
    /// The reviewed declaration.
    pub break_glass_tx: TxId,
    pub reviewer: IdentityId,
    pub verdict: ReviewVerdict,
    /// The reviewer's reason code.
    pub reason: String,
}

/// What happened to a delegation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DelegationChange {
    Appointed {
        valid_until_ms: TimestampMs,
    },
    /// By the patient, or by the delegate stepping down.
    Dismissed {
        by: IdentityId,
    },
}

/// An appointment or dismissal of one of the patient's delegates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DelegationEntry {
    pub position: TxPosition,
    pub delegate: IdentityId,
    pub change: DelegationChange,
}

/// Consent a delegate signed for the patient.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DelegateAct {
    /// A grant (its id is the transaction id) to `grantee`.
    Grant {
        grantee: IdentityId,
    },
    Revoke {
        grant_id: TxId,
    },
}

/// A consent grant or revocation signed by a delegate rather than the patient.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DelegateActEntry {
    pub position: TxPosition,
    pub delegate: IdentityId,
    pub act: DelegateAct,
}

/// Everything indexed about one patient, each list in commit order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PatientEntry {
    pub records: IndexVec<RecordEntry>,
    pub access: IndexVec<AccessEntry>,
    pub key_shares: IndexVec<KeyShareEntry>,
    pub break_glass: IndexVec<BreakGlassEntry>,
    pub reviews: IndexVec<ReviewEntry>,
    pub delegations: IndexVec<DelegationEntry>,
    pub delegate_acts: IndexVec<DelegateActEntry>,
}

/// The index's containers are persistent: cloning the index (once per finalized block, for
/// readers' snapshots) shares everything already indexed and costs O(changes), not O(size).
type IndexMap<K, V> = medledger_ledger::state::PMap<K, V>;
pub use crate::index_vec::IndexVec;

/// The per-patient index over finalized blocks (see the module docs).
#[derive(Clone, Debug, Default)]
pub struct PatientIndex {
    /// Entries behind `Arc`: copying a shared part of the map copies pointers, and a patient's
    /// entry is copied (its persistent vectors: cheaply) only when a block touches it.
    patients: IndexMap<IdentityId, PatientEntry>,
    /// record -> (its patient, its position in that patient's `records`).
    records: IndexMap<RecordId, (IdentityId, usize)>,
    /// Every break-glass declaration in commit order: (patient, position in that patient's
    /// `break_glass`).
    break_glass: imbl::Vector<(IdentityId, usize)>,
    /// declaration id -> its place in `break_glass`.
    break_glass_by_tx: IndexMap<TxId, usize>,
    /// directory entry -> where each of its versions was committed, oldest first.
    directory: IndexMap<RecordId, Vec<(u32, TxPosition)>>,
    /// Every record version and directory version committed, as (height, id), in commit
    /// order: what changed since a height, without scanning every record.
    changes: imbl::Vector<(Height, RecordId)>,
    /// Height of the last block applied; blocks at or below it are ignored.
    height: Height,
}

impl PatientIndex {
    /// Height of the last block indexed.
    pub fn height(&self) -> Height {
        self.height
    }

    /// The records and directory entries that got a version in a block above `height`, in
    /// commit order (an id appears once per version).
    pub fn changed_since(&self, height: Height) -> impl Iterator<Item = &RecordId> {
        let from = self
            .changes
            .binary_search_by(
                |(h, _)| if *h <= height { std::cmp::Ordering::Less } else { std::cmp::Ordering::Greater },
            )
            .unwrap_or_else(|at| at);
        (from..self.changes.len()).map(move |i| &self.changes[i].1)
    }

    /// Where each version of a directory entry was committed, oldest first.
    pub fn directory_versions(&self, entry: &RecordId) -> &[(u32, TxPosition)] {
        self.directory.get(entry).map(Vec::as_slice).unwrap_or_default()
    }

    pub fn patient(&self, patient: &IdentityId) -> Option<&PatientEntry> {
        self.patients.get(patient)
    }

    /// Every break-glass declaration, in commit order.
    pub fn break_glass(&self) -> impl DoubleEndedIterator<Item = &BreakGlassEntry> {
        self.break_glass.iter().filter_map(|(p, i)| self.patients.get(p)?.break_glass.get(*i))
    }

    /// Every record with its versions, in no particular order.
    pub fn records(&self) -> impl Iterator<Item = &RecordEntry> {
        self.patients.values().flat_map(|p| p.records.iter())
    }

    /// A record with its versions, by id.
    pub fn record(&self, record: &RecordId) -> Option<&RecordEntry> {
        let (patient, position) = self.records.get(record)?;
        self.patients.get(patient)?.records.get(*position)
    }

    /// Indexes a finalized, verified block. Blocks must come in height order; one at or below
    /// the last indexed height is ignored, so applying a block twice changes nothing. `state`
    /// is the state after this block or any later one (see the module docs).
    pub fn apply_block(&mut self, block: &Block, state: &State) {
        let header = &block.header;
        if header.height <= self.height {
            return;
        }
        self.height = header.height;
        // The block's transactions are the last `tx_count` leaves of the log it commits to.
        let first_leaf = header.log_size.saturating_sub(block.txs.len() as u64);
        for (i, tx) in block.txs.iter().enumerate() {
            let position = TxPosition {
                tx_id: tx.id(),
                log_index: first_leaf + i as u64,
                height: header.height,
                committed_at_ms: header.timestamp_ms,
            };
            let signer = tx.body().signer;
            // A batch's operations are indexed as if each were its own transaction.
            for op in tx.body().payload.ops() {
                match op {
                    Payload::RecordCommit {
                        record_id,
                        version,
                        patient,
                        custodian,
                        author,
                        resource_type,
                        category,
                        key_epoch,
                        ciphertext_hash,
                        wrapped_data_key,
                        ..
                    } => {
                        let entry = VersionEntry {
                            version: *version,
                            author: *author,
                            position,
                            key_epoch: *key_epoch,
                            ciphertext_hash: *ciphertext_hash,
                            wrapped_data_key: *wrapped_data_key,
                        };
                        match self.records.get(record_id) {
                            Some((p, at)) => {
                                if let Some(record) = self.patients.get_mut(p).and_then(|e| e.records.get_mut(*at)) {
                                    record.versions.push(entry);
                                }
                                self.changes.push_back((header.height, *record_id));
                            }
                            None => {
                                let records = &mut self.patients.entry_mut(*patient).records;
                                self.records.insert(*record_id, (*patient, records.len()));
                                self.changes.push_back((header.height, *record_id));
                                records.push(RecordEntry {
                                    record_id: *record_id,
                                    patient: *patient,
                                    resource_type: bounded(resource_type, limits::RESOURCE_TYPE_BYTES_MAX),
                                    category: bounded(category, limits::RESOURCE_TYPE_BYTES_MAX),
                                    custodian: *custodian,
                                    versions: vec![entry],
                                });
                            }
                        }
                    }
                    Payload::DirectoryPut { entry_id, version, .. } => {
                        self.directory.entry_mut(*entry_id).push((*version, position));
                        self.changes.push_back((header.height, *entry_id));
                    }
                    Payload::AccessEvents { events } => {
                        for (event_index, event) in events.iter().enumerate().take(limits::ACCESS_EVENTS_PER_TX_MAX) {
                            let mut event = event.clone();
                            event.reason = bounded(&event.reason, limits::REASON_BYTES_MAX);
                            self.patients.entry_mut(event.patient).access.push(AccessEntry {
                                position,
                                event_index: event_index as u16,
                                recorder: signer,
                                event,
                            });
                        }
                    }
                    Payload::KeyShare { custodian, patient, category, epoch, shares } => {
                        let wraps = shares.iter().filter(|s| s.recipient != *patient).map(|s| KeyShareEntry {
                            position,
                            recipient: s.recipient,
                            custodian: *custodian,
                            category: bounded(category, limits::RESOURCE_TYPE_BYTES_MAX),
                            epoch: *epoch,
                        });
                        self.patients.entry_mut(*patient).key_shares.extend(wraps);
                    }
                    Payload::BreakGlass { patient, reason, window_ms } => {
                        let declared = &mut self.patients.entry_mut(*patient).break_glass;
                        self.break_glass_by_tx.insert(position.tx_id, self.break_glass.len());
                        self.break_glass.push_back((*patient, declared.len()));
                        declared.push(BreakGlassEntry {
                            position,
                            patient: *patient,
                            practitioner: signer,
                            reason: bounded(reason, limits::BREAK_GLASS_REASON_BYTES_MAX),
                            window_ms: *window_ms,
                            reviewed_by_tx: None,
                        });
                    }
                    Payload::ReviewBreakGlass { break_glass_tx, verdict, reason } => {
                        let Some(&(patient, at)) =
                            self.break_glass_by_tx.get(break_glass_tx).map(|i| &self.break_glass[*i])
                        else {
                            continue;
                        };
                        let entry = self.patients.entry_mut(patient);
                        if let Some(declared) = entry.break_glass.get_mut(at) {
                            declared.reviewed_by_tx = Some(position.tx_id);
                        }
                        entry.reviews.push(ReviewEntry {
                            position,
                            break_glass_tx: *break_glass_tx,
                            reviewer: signer,
                            verdict: *verdict,
                            reason: bounded(reason, limits::REVIEW_REASON_BYTES_MAX),
                        });
                    }
                    Payload::AppointDelegate { patient, delegate, valid_until_ms } => {
                        self.patients.entry_mut(*patient).delegations.push(DelegationEntry {
                            position,
                            delegate: *delegate,
                            change: DelegationChange::Appointed { valid_until_ms: *valid_until_ms },
                        });
                    }
                    Payload::DismissDelegate { patient, delegate } => {
                        self.patients.entry_mut(*patient).delegations.push(DelegationEntry {
                            position,
                            delegate: *delegate,
                            change: DelegationChange::Dismissed { by: signer },
                        });
                    }
                    // The ledger accepted it, so a signer other than the patient was a live delegate.
                    Payload::ConsentGrant { patient, grantee, .. } if signer != *patient => {
                        self.patients.entry_mut(*patient).delegate_acts.push(DelegateActEntry {
                            position,
                            delegate: signer,
                            act: DelegateAct::Grant { grantee: *grantee },
                        });
                    }
                    Payload::ConsentRevoke { grant_id } => {
                        let Some(patient) = state.grant(grant_id).map(|g| g.patient) else { continue };
                        if signer != patient {
                            self.patients.entry_mut(patient).delegate_acts.push(DelegateActEntry {
                                position,
                                delegate: signer,
                                act: DelegateAct::Revoke { grant_id: *grant_id },
                            });
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

/// `text` cut to at most `max` bytes (on a character boundary). Committed blocks already obey
/// these bounds; this keeps the index's per-entry size bounded even if a limit changes.
fn bounded(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use medledger_crypto::Keypair;
    use medledger_ledger::{Purpose, ReviewVerdict, Scope, actions};
    use medledger_types::Role;

    use super::*;
    use crate::{chain::Chain, devnet::Devnet};

    fn now_ms() -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
    }

    fn commit(net: &Devnet, chain: &Chain) {
        crate::devnet::commit_pending(chain, net.validators[0].id(), now_ms()).unwrap();
    }

    #[test]
    fn bounded_cuts_on_char_boundaries() {
        assert_eq!(bounded("abc", 3), "abc");
        assert_eq!(bounded("abcd", 3), "abc");
        assert_eq!(bounded("aé", 2), "a");
    }

    #[test]
    fn indexes_delegates_their_consent_and_break_glass_reviews() {
        let net =
            Devnet::new("medledger.index-delegates", now_ms() - 60_000, &["Hospital A", "Clinic B"], 1, &mut |l| {
                Keypair::from_label(l)
            });
        let dir = tempfile::tempdir().unwrap();
        let (chain, _) = Chain::open(dir.path(), &net.genesis, net.validators[0].clone(), &mut |_, _| {}).unwrap();
        let org_b = net.organisations[1].clone();
        let (doc_b, patient, guardian) =
            (Keypair::from_label("dr-b"), Keypair::from_label("patient"), Keypair::from_label("guardian"));
        let t = now_ms();
        chain.submit_as(&org_b, Payload::register(Role::Practitioner, &doc_b, Some(org_b.id()), "Dr B"), t).unwrap();
        for p in [&patient, &guardian] {
            chain.submit_as(&org_b, Payload::register(Role::Patient, p, None, ""), t).unwrap();
        }
        commit(&net, &chain);
        let appoint =
            Payload::AppointDelegate { patient: patient.id(), delegate: guardian.id(), valid_until_ms: t + 86_400_000 };
        let appointed = chain.submit_as(&patient, appoint, now_ms()).unwrap();
        let bg = Payload::BreakGlass { patient: patient.id(), reason: "unconscious".into(), window_ms: 3_600_000 };
        let bg_id = chain.submit_as(&doc_b, bg, now_ms()).unwrap();
        commit(&net, &chain);
        let grant = Payload::ConsentGrant {
            patient: patient.id(),
            grantee: doc_b.id(),
            scope: Scope::All,
            actions: actions::READ,
            purpose: Purpose::Treatment,
            valid_from_ms: t,
            valid_until_ms: t + 86_400_000,
        };
        let grant_id = chain.submit_as(&guardian, grant, now_ms()).unwrap();
        let review = Payload::ReviewBreakGlass {
            break_glass_tx: bg_id,
            verdict: ReviewVerdict::Justified,
            reason: "ed-confirmed".into(),
        };
        // The patient's delegate reviews (the declarer's organisation may not).
        let review_id = chain.submit_as(&guardian, review, now_ms()).unwrap();
        commit(&net, &chain);
        chain.submit_as(&guardian, Payload::ConsentRevoke { grant_id }, now_ms()).unwrap();
        // The patient revoking their own grant is not a delegate's act.
        let dismiss = Payload::DismissDelegate { patient: patient.id(), delegate: guardian.id() };
        chain.submit_as(&patient, dismiss, now_ms()).unwrap();
        commit(&net, &chain);

        let index = chain.patient_index().clone();
        let entry = index.patient(&patient.id()).unwrap();
        let changes: Vec<_> = entry.delegations.iter().map(|d| (d.delegate, d.change)).collect();
        assert_eq!(
            changes,
            vec![
                (guardian.id(), DelegationChange::Appointed { valid_until_ms: t + 86_400_000 }),
                (guardian.id(), DelegationChange::Dismissed { by: patient.id() }),
            ]
        );
        assert_eq!(entry.delegations[0].position.tx_id, appointed);
        let acts: Vec<_> = entry.delegate_acts.iter().map(|a| (a.delegate, a.act)).collect();
        assert_eq!(
            acts,
            vec![
                (guardian.id(), DelegateAct::Grant { grantee: doc_b.id() }),
                (guardian.id(), DelegateAct::Revoke { grant_id }),
            ]
        );
        assert_eq!(entry.delegate_acts[0].position.tx_id, grant_id);
        assert_eq!(entry.break_glass[0].reviewed_by_tx, Some(review_id));
        assert_eq!(entry.reviews.len(), 1);
        let r = &entry.reviews[0];
        assert_eq!((r.break_glass_tx, r.reviewer, r.verdict), (bg_id, guardian.id(), ReviewVerdict::Justified));
        let all: Vec<_> = index.break_glass().map(|b| (b.patient, b.position.tx_id)).collect();
        assert_eq!(all, vec![(patient.id(), bg_id)]);
        assert!(index.patient(&guardian.id()).is_none(), "nothing is filed under the delegate");

        drop(chain);
        let (reopened, _) = Chain::open(dir.path(), &net.genesis, net.validators[0].clone(), &mut |_, _| {}).unwrap();
        assert_eq!(reopened.patient_index().patient(&patient.id()), index.patient(&patient.id()));
        assert_eq!(reopened.patient_index().break_glass().count(), 1);
    }
}
