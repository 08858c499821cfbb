//! The node's per-patient index (`medledger_node::index`) as the record service fills it:
//! records and versions, access events, key wraps and break-glass, rebuilt the same at open.

use std::sync::Arc;

use medledger_blobs::MemoryBlobStore;
use medledger_crypto::Keypair;
use medledger_ledger::{AccessOutcome, Payload, Purpose, Scope, actions};
use medledger_node::{chain::Chain, devnet::Devnet};
use medledger_records::{RecordService, WriteRequest};
use medledger_types::Role;

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

/// Finalizes everything pending, as a one-validator chain would.
fn commit(net: &Devnet, chain: &Chain) {
    medledger_node::devnet::commit_pending(chain, net.validators[0].id(), now_ms()).unwrap();
}

#[test]
fn indexes_records_access_shares_and_break_glass_and_rebuilds_the_same_at_open() {
    let net = Devnet::new("medledger.index", now_ms() - 60_000, &["Hospital A", "Clinic B"], 1, &mut |l| {
        Keypair::from_label(l)
    });
    let dir = tempfile::tempdir().unwrap();
    let (chain, _) = Chain::open(dir.path(), &net.genesis, net.validators[0].clone(), &mut |_, _| {}).unwrap();
    let chain = Arc::new(chain);
    let (org_a, org_b) = (net.organisations[0].clone(), net.organisations[1].clone());
    let (doc_a, doc_b, patient) =
        (Keypair::from_label("dr-a"), Keypair::from_label("dr-b"), Keypair::from_label("patient"));
    let t = now_ms();
    chain.submit_as(&org_a, Payload::register(Role::Practitioner, &doc_a, Some(org_a.id()), "Dr A"), t).unwrap();
    chain.submit_as(&org_b, Payload::register(Role::Practitioner, &doc_b, Some(org_b.id()), "Dr B"), t).unwrap();
    chain.submit_as(&net.organisations[0], Payload::register(Role::Patient, &patient, None, ""), t).unwrap();
    commit(&net, &chain);

    let service =
        RecordService::new(chain.clone(), net.validators[0].clone(), org_a, Arc::new(MemoryBlobStore::default()));
    let request = |record| WriteRequest {
        author: doc_a.id(),
        patient: patient.id(),
        resource_type: "Condition",
        category: "conditions",
        content: b"{\"resourceType\":\"Condition\"}",
        record,
    };
    let written = service.write(&request(None), now_ms(), &mut rand::rng()).unwrap();
    commit(&net, &chain);
    let second = service.write(&request(Some(written.record_id)), now_ms(), &mut rand::rng()).unwrap();
    commit(&net, &chain);
    assert!(service.read(doc_b.id(), written.record_id, None, Purpose::Treatment, now_ms()).is_err());
    service.flush_events(now_ms()).unwrap();
    let grant = Payload::ConsentGrant {
        patient: patient.id(),
        grantee: doc_b.id(),
        scope: Scope::All,
        actions: actions::READ,
        purpose: Purpose::Treatment,
        valid_from_ms: t,
        valid_until_ms: t + 86_400_000,
    };
    let grant_id = chain.submit_as(&patient, grant, now_ms()).unwrap();
    let bg = Payload::BreakGlass { patient: patient.id(), reason: "unconscious".into(), window_ms: 3_600_000 };
    let bg_id = chain.submit_as(&doc_b, bg, now_ms()).unwrap();
    commit(&net, &chain);
    let shares = service.share_keys_for_grant(&grant_id, now_ms(), &mut rand::rng()).unwrap();
    assert_eq!(shares.len(), 1);
    commit(&net, &chain);

    let index = chain.patient_index().clone();
    let entry = index.patient(&patient.id()).unwrap();
    assert_eq!(entry.records.len(), 1);
    let record = &entry.records[0];
    assert_eq!((record.resource_type.as_str(), record.category.as_str()), ("Condition", "conditions"));
    assert_eq!(record.latest_version(), 2);
    assert_eq!(record.versions[1].position.tx_id, second.tx_id);
    assert!(record.versions.iter().all(|v| v.author == doc_a.id()));
    assert_eq!(index.record(&written.record_id), Some(record));
    // Every position is the transaction's place in the log.
    let state = chain.snapshot();
    for v in &record.versions {
        assert_eq!(state.log().leaf(v.position.log_index), Some(medledger_types::Hash(v.position.tx_id.0)));
    }
    drop(state);
    assert_eq!(entry.access.len(), 1);
    assert_eq!(entry.access[0].event.accessor, doc_b.id());
    assert_eq!(entry.access[0].event.outcome, AccessOutcome::Denied);
    assert_eq!(entry.access[0].event_index, 0);
    // The patient's own wraps are not indexed; the custodian's and the grantee's are.
    assert!(entry.key_shares.iter().all(|s| s.recipient != patient.id()));
    let wraps: Vec<_> = entry.key_shares.iter().filter(|s| s.is_grant_wrap()).collect();
    assert_eq!(wraps.len(), 1);
    assert_eq!((wraps[0].recipient, wraps[0].position.tx_id), (doc_b.id(), shares[0]));
    assert_eq!(entry.break_glass.len(), 1);
    assert_eq!((entry.break_glass[0].position.tx_id, entry.break_glass[0].practitioner), (bg_id, doc_b.id()));
    assert!(index.patient(&doc_b.id()).is_none());

    // Reopening rebuilds exactly the same index from the stored blocks.
    drop(service);
    let chain = Arc::try_unwrap(chain).expect("no other handle");
    drop(chain);
    let (reopened, _) = Chain::open(dir.path(), &net.genesis, net.validators[0].clone(), &mut |_, _| {}).unwrap();
    let rebuilt = reopened.patient_index();
    assert_eq!(rebuilt.height(), index.height());
    assert_eq!(rebuilt.patient(&patient.id()), index.patient(&patient.id()));
}
