//! Attack: key material reaching further than consent (issue 9, item 1).
//!
//! A grantee organisation keeps every key it was ever sent and, in the worst case, gets every
//! ciphertext (a leaked blob store, a careless replica). With its own private keys (and its
//! staff's) it unwraps every category-key wrap addressed to it on-chain and tries to open every
//! record version ever committed. It must open only versions some grant of its covered, for
//! whole categories, while that grant was live: never a version outside a single-record grant,
//! never a version written after its grant expired or was revoked.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use medledger_blobs::{BlobStore, MemoryBlobStore};
use medledger_crypto::{
    Keypair,
    envelope::{CategoryKey, HpkeWrap, hpke_unwrap, open_record, unwrap_data_key},
};
use medledger_ledger::{
    Payload, Purpose, Scope, actions,
    keys::{category_key_info, data_key_aad, record_aad},
};
use medledger_node::{chain::Chain, devnet::Devnet};
use medledger_records::{RecordService, WriteRequest, Written};
use medledger_types::{IdentityId, RecordId, Role};

const T0: u64 = 1_900_000_000_000;
const MINUTE_MS: u64 = 60_000;

struct World {
    net: Devnet,
    chain: Arc<Chain>,
    t: u64,
    _dir: tempfile::TempDir,
}

impl World {
    fn new() -> Self {
        let net = Devnet::new("medledger.keys", T0, &["Hospital A", "Clinic B"], 2, &mut |l| Keypair::from_label(l));
        let dir = tempfile::tempdir().unwrap();
        let (chain, _) = Chain::open(dir.path(), &net.genesis, net.validators[0].clone(), &mut |_, _| {}).unwrap();
        Self { net, chain: Arc::new(chain), t: T0, _dir: dir }
    }

    /// Finalizes everything pending at block time `t + step_ms`.
    fn commit_after(&mut self, step_ms: u64) {
        self.t += step_ms;
        medledger_node::devnet::commit_pending(&self.chain, self.net.validators[0].id(), self.t).unwrap();
    }

    fn submit(&self, keys: &Keypair, payload: Payload) -> medledger_types::TxId {
        self.chain.submit_as(keys, payload, self.t).unwrap()
    }
}

/// What the grantee manages to decrypt: (record, version) pairs.
fn decryptable_by(chain: &Chain, blobs: &dyn BlobStore, holders: &[&Keypair]) -> HashSet<(RecordId, u32)> {
    let head = chain.head().height;
    let blocks: Vec<_> = (1..=head).map(|h| chain.block(h).unwrap().unwrap()).collect();
    let mut keys: HashMap<(IdentityId, IdentityId, String, u32), Vec<CategoryKey>> = HashMap::new();
    for block in &blocks {
        for tx in &block.txs {
            for op in tx.body().payload.ops() {
                let Payload::KeyShare { custodian, patient, category, epoch, shares } = op else { continue };
                for share in shares {
                    for holder in holders.iter().filter(|h| h.id() == share.recipient) {
                        let info = category_key_info(custodian, patient, category, *epoch);
                        let wrap = HpkeWrap { encapsulated_key: share.encapsulated_key, ciphertext: share.wrapped_key };
                        if let Ok(key) = hpke_unwrap(holder, &info, &share.recipient.0, &wrap) {
                            keys.entry((*custodian, *patient, category.clone(), *epoch)).or_default().push(key);
                        }
                    }
                }
            }
        }
    }
    let mut opened = HashSet::new();
    for block in &blocks {
        for tx in &block.txs {
            for op in tx.body().payload.ops() {
                let Payload::RecordCommit {
                    record_id,
                    version,
                    patient,
                    custodian,
                    resource_type,
                    category,
                    key_epoch,
                    ciphertext_hash,
                    wrapped_data_key,
                    ..
                } = op
                else {
                    continue;
                };
                let Some(candidates) = keys.get(&(*custodian, *patient, category.clone(), *key_epoch)) else {
                    continue;
                };
                let ciphertext = blobs.get(ciphertext_hash).unwrap().expect("the attacker has every ciphertext");
                let key_aad = data_key_aad(record_id, *version, custodian, patient, category, *key_epoch);
                let aad = record_aad(record_id, *version, patient, custodian, resource_type);
                for key in candidates {
                    if let Ok(data_key) = unwrap_data_key(key, &key_aad, wrapped_data_key)
                        && open_record(&data_key, &aad, &ciphertext).is_ok()
                    {
                        opened.insert((*record_id, *version));
                    }
                }
            }
        }
    }
    opened
}

#[test]
fn grantee_cannot_decrypt_versions_outside_its_grants_with_every_key_it_holds() {
    let mut w = World::new();
    let (org_a, org_b) = (w.net.organisations[0].clone(), w.net.organisations[1].clone());
    let doc_a = Keypair::from_label("dr-a");
    let doc_b = Keypair::from_label("dr-b");
    let patient = Keypair::from_label("patient");
    w.submit(&org_a, Payload::register(Role::Practitioner, &doc_a, Some(org_a.id()), "Dr A"));
    w.submit(&org_b, Payload::register(Role::Practitioner, &doc_b, Some(org_b.id()), "Dr B"));
    w.submit(&org_a, Payload::register(Role::Patient, &patient, None, ""));
    w.commit_after(1000);

    // The attacker is assumed to hold every ciphertext; the custodian's store stands in for it.
    let blobs: Arc<dyn BlobStore> = Arc::new(MemoryBlobStore::default());
    let node_a = RecordService::new(w.chain.clone(), w.net.validators[0].clone(), org_a.clone(), blobs.clone());
    let mut rng = rand::rng();
    let write = |w: &World, category: &'static str, record: Option<RecordId>, rng: &mut rand::rngs::ThreadRng| {
        let resource_type = "Observation";
        let content = format!(
            r#"{{"resourceType":"Observation","status":"final","category":[{{"coding":[{{"code":"{}"}}]}}]}}"#,
            if category == "labs" { "laboratory" } else { "vital-signs" }
        );
        let request = WriteRequest {
            author: doc_a.id(),
            patient: patient.id(),
            resource_type,
            category,
            content: content.as_bytes(),
            record,
        };
        node_a.write(&request, w.t, rng).unwrap()
    };
    let id = |v: &Written| (v.record_id, v.version);

    // Labs L1, L2 and vitals V1, all under the first epoch of their category keys.
    let l1 = write(&w, "labs", None, &mut rng);
    let l2 = write(&w, "labs", None, &mut rng);
    let v1 = write(&w, "vitals", None, &mut rng);
    w.commit_after(1000);

    // Grant 1: ONE lab record (L1), for 20 seconds. Grant 2: all vitals, for 20 seconds.
    let one_record = w.submit(
        &patient,
        Payload::ConsentGrant {
            patient: patient.id(),
            grantee: org_b.id(),
            scope: Scope::Records(vec![l1.record_id]),
            actions: actions::READ,
            purpose: Purpose::Treatment,
            valid_from_ms: w.t,
            valid_until_ms: w.t + 20_000,
        },
    );
    let vitals = w.submit(
        &patient,
        Payload::ConsentGrant {
            patient: patient.id(),
            grantee: org_b.id(),
            scope: Scope::Categories(vec!["vitals".into()]),
            actions: actions::READ,
            purpose: Purpose::Treatment,
            valid_from_ms: w.t,
            valid_until_ms: w.t + 20_000,
        },
    );
    w.commit_after(1000);
    // The custodian's node shares whatever keys consent lets it share, as it does on commit.
    node_a.share_keys_for_grant(&one_record, w.t, &mut rng).unwrap();
    node_a.share_keys_for_grant(&vitals, w.t, &mut rng).unwrap();
    w.commit_after(1000);

    // Both grants expire; the custodian keeps writing: a new lab L3, a new version of L1, a
    // new vital V2 and a new version of V1.
    w.t += 60_000;
    let l3 = write(&w, "labs", None, &mut rng);
    let l1v2 = write(&w, "labs", Some(l1.record_id), &mut rng);
    let v2 = write(&w, "vitals", None, &mut rng);
    w.commit_after(1000);
    let v1v2 = write(&w, "vitals", Some(v1.record_id), &mut rng);
    w.commit_after(MINUTE_MS);
    assert_eq!(w.chain.snapshot().record(&v1.record_id).unwrap().latest_version, 2, "every write committed");

    // Clinic B, with its organisation key and its practitioner's key, against everything.
    let opened = decryptable_by(&w.chain, blobs.as_ref(), &[&org_b, &doc_b]);
    // What its grants ever covered, for whole categories, while live: V1 only (vitals were
    // granted; L1 was granted alone, which must never bring a category key).
    let entitled: HashSet<_> = [id(&v1)].into_iter().collect();
    let beyond: Vec<_> = opened.difference(&entitled).collect();
    let name = |v: &(RecordId, u32)| {
        [(id(&l1), "L1"), (id(&l2), "L2"), (id(&l3), "L3"), (id(&l1v2), "L1 v2"), (id(&v2), "V2"), (id(&v1v2), "V1 v2")]
            .into_iter()
            .find(|(k, _)| k == v)
            .map_or("?", |(_, n)| n)
    };
    assert!(
        beyond.is_empty(),
        "Clinic B decrypts versions no live grant of its covered: {:?}",
        beyond.iter().map(|v| name(v)).collect::<Vec<_>>()
    );
    // And the test is not vacuous: the whole-category grant did bring the vitals key.
    assert!(opened.contains(&id(&v1)), "the vitals grant brought no key at all");
}
