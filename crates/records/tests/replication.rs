//! Ciphertext replication over the simulated p2p network, in commonware's deterministic
//! runtime: an entitled node fetches a ciphertext it lacks and checks it against the chain; a
//! node whose organisation holds no key neither fetches nor is served until a grant gives it
//! one; a peer sending bytes that do not match the on-chain hash is not believed.
//!
//! The nodes share one chain (consensus agreement is what `simulation.rs` tests); each has its
//! own blob store and its own replicator on the simulated network.
//!
//! Prints its seed; replay with `MEDLEDGER_SEED=<seed> cargo test -p medledger-node --test
//! replication`.

#[allow(dead_code)]
use medledger_node::simulation as common;

use std::{sync::Arc, time::Duration};

use commonware_cryptography::ed25519::PublicKey;
use commonware_p2p::{Receiver as _, Recipients, Sender as _};
use commonware_runtime::{Clock as _, IoBuf, Runner as _, Spawner as _, Supervisor as _, deterministic};
use medledger_blobs::{BlobStore, MemoryBlobStore, blob_hash};
use medledger_crypto::Keypair;
use medledger_ledger::{Payload, Purpose, Scope, actions, tx::sign};
use medledger_node::{
    chain::Chain,
    devnet::{Devnet, commit_pending},
    replication::{BlobMessage, CHANNEL_BLOBS, FetchError, Unavailable, start_replicator},
    validator::QUOTA,
};
use medledger_records::{RecordService, WriteRequest};
use medledger_types::Role;

const T0: u64 = 1_900_000_000_000;

/// Sends `message` from a raw channel to `peer` and waits for the answer.
async fn ask<S, R>(channel: &mut (S, R), peer: &PublicKey, message: BlobMessage) -> BlobMessage
where
    S: commonware_p2p::Sender<PublicKey = PublicKey>,
    R: commonware_p2p::Receiver<PublicKey = PublicKey>,
{
    let sent = channel.0.send(Recipients::One(peer.clone()), IoBuf::from(message.encode()), false);
    assert_eq!(sent, vec![peer.clone()]);
    let (from, bytes) = channel.1.recv().await.unwrap();
    assert_eq!(&from, peer);
    BlobMessage::decode(bytes.as_ref()).unwrap()
}

#[test]
fn entitled_nodes_replicate_ciphertexts_and_check_them_against_the_chain() {
    let seed = common::seed(21, "replication");
    deterministic::Runner::seeded(seed).start(|context| async move {
        // Validators 0 and 2 are Hospital A's, 1 and 3 Clinic B's.
        let net =
            Devnet::new("medledger.replication", T0, &["Hospital A", "Clinic B"], 4, &mut |l| Keypair::from_label(l));
        let (org_a, org_b) = (net.organisations[0].clone(), net.organisations[1].clone());
        let dir = tempfile::tempdir().unwrap();
        let (chain, _) = Chain::open(dir.path(), &net.genesis, net.validators[0].clone(), &mut |_, _| {}).unwrap();
        let chain = Arc::new(chain);
        let mut t = T0;
        let commit = |t: &mut u64| {
            *t += 1000;
            commit_pending(&chain, net.validators[0].id(), *t).unwrap();
        };

        let doc = Keypair::from_label("replication-doctor");
        let patient = Keypair::from_label("replication-patient");
        chain.submit_as(&org_a, Payload::register(Role::Practitioner, &doc, Some(org_a.id()), "Dr A"), t).unwrap();
        chain.submit_as(&org_a, Payload::register(Role::Patient, &patient, None, ""), t).unwrap();
        commit(&mut t);

        // Hospital A writes a lab result on node 0; only node 0's store has the ciphertext.
        let stores: Vec<Arc<dyn BlobStore>> = (0..4).map(|_| Arc::new(MemoryBlobStore::new()) as _).collect();
        let writer = RecordService::new(chain.clone(), net.validators[0].clone(), org_a.clone(), stores[0].clone());
        let mut rng = rand::rng();
        let content = br#"{"resourceType":"Observation","status":"final","code":{"text":"synthetic"}}"#;
        let request = WriteRequest {
            author: doc.id(),
            patient: patient.id(),
            resource_type: "Observation",
            category: "labs",
            content,
            record: None,
        };
        let written = writer.write(&request, t, &mut rng).unwrap();
        commit(&mut t);
        let record = written.record_id;

        // The network: replicators on nodes 0, 1 and 2; node 3's channel is driven by hand.
        let participants = common::participants(&net.validators);
        let oracle = common::network(&context, &participants).await;
        common::link_all(&oracle, &participants).await;
        let mut fetchers = Vec::new();
        for i in 0..3 {
            let control = oracle.control(participants[i].clone());
            let channel = control.register(CHANNEL_BLOBS, QUOTA).await.unwrap();
            let organisation = net.organisations[i % 2].id();
            fetchers.push(start_replicator(
                context.child("replicator").with_attribute("index", i),
                chain.clone(),
                stores[i].clone(),
                (participants[i].clone(), organisation),
                channel,
            ));
        }
        let mut raw = oracle.control(participants[3].clone()).register(CHANNEL_BLOBS, QUOTA).await.unwrap();
        context.sleep(Duration::from_millis(100)).await;

        // Node 2 (Hospital A, the custodian) lacks it: fetched from node 0, checked, stored.
        assert!(!stores[2].contains(&written.ciphertext_hash).unwrap());
        let fetched = fetchers[2].fetch(record, 1).await.unwrap();
        assert_eq!(blob_hash(&fetched), written.ciphertext_hash);
        assert_eq!(stores[2].get(&written.ciphertext_hash).unwrap(), Some(fetched.clone()));
        // Unknown versions are not asked for.
        assert_eq!(fetchers[2].fetch(record, 2).await, Err(FetchError::UnknownVersion(record, 2)));

        // Clinic B holds no key: its node does not fetch, and is not served when it asks.
        assert_eq!(fetchers[1].fetch(record, 1).await, Err(FetchError::NotEntitled));
        let request = BlobMessage::Request { request_id: 1, record_id: record, version: 1 };
        assert_eq!(
            ask(&mut raw, &participants[0], request.clone()).await,
            BlobMessage::Unavailable { request_id: 1, reason: Unavailable::NotEntitled }
        );
        assert!(!stores[1].contains(&written.ciphertext_hash).unwrap());

        // The patient grants Clinic B their labs; Hospital A's node wraps the key for it.
        let grant = Payload::ConsentGrant {
            patient: patient.id(),
            grantee: org_b.id(),
            scope: Scope::Categories(vec!["labs".into()]),
            actions: actions::READ,
            purpose: Purpose::Treatment,
            valid_from_ms: t,
            valid_until_ms: t + 86_400_000,
        };
        let grant_id = chain.submit(sign(&patient, net.genesis.chain_id(), patient.id(), 0, grant).bytes(), t).unwrap();
        commit(&mut t);
        assert_eq!(writer.share_keys_for_grant(&grant_id, t, &mut rng).unwrap().len(), 1);
        commit(&mut t);

        // Now Clinic B's node is entitled: served, and its own fetch succeeds.
        match ask(&mut raw, &participants[0], BlobMessage::Request { request_id: 2, record_id: record, version: 1 })
            .await
        {
            BlobMessage::Found { request_id: 2, ciphertext } => {
                assert_eq!(blob_hash(&ciphertext), written.ciphertext_hash)
            }
            other => panic!("expected the ciphertext, got {other:?}"),
        }
        assert_eq!(fetchers[1].fetch(record, 1).await.unwrap(), fetched);
        assert!(stores[1].contains(&written.ciphertext_hash).unwrap());

        // A second version whose ciphertext only a lying peer (node 3) claims to have.
        let hidden: Arc<dyn BlobStore> = Arc::new(MemoryBlobStore::new());
        let hidden_writer = RecordService::new(chain.clone(), net.validators[0].clone(), org_a.clone(), hidden.clone());
        let v2 = hidden_writer
            .write(&WriteRequest { record: Some(record), ..request_for(&doc, &patient, content) }, t, &mut rng)
            .unwrap();
        commit(&mut t);
        let (stop_lying, mut stopped) = futures::channel::oneshot::channel::<()>();
        let liar = context.child("liar").spawn(move |_| async move {
            let (mut sender, mut receiver) = raw;
            loop {
                commonware_macros::select! {
                    message = receiver.recv() => {
                        let Ok((peer, bytes)) = message else { break };
                        if let Ok(BlobMessage::Request { request_id, .. }) = BlobMessage::decode(bytes.as_ref()) {
                            let lie = BlobMessage::Found { request_id, ciphertext: b"not the ciphertext".to_vec() };
                            sender.send(Recipients::One(peer), IoBuf::from(lie.encode()), false);
                        }
                    },
                    _ = &mut stopped => break,
                }
            }
            (sender, receiver)
        });
        match fetchers[1].fetch(record, 2).await {
            Err(FetchError::NoPeerHadIt(outcomes)) => {
                assert!(outcomes.contains("mismatch"), "{outcomes}");
                assert!(outcomes.contains("not-stored"), "{outcomes}");
            }
            other => panic!("a lie must not be accepted: {other:?}"),
        }
        assert!(!stores[1].contains(&v2.ciphertext_hash).unwrap());
        // Once an honest node has it, the fetch succeeds whatever the liar says.
        stores[2].put(&hidden.get(&v2.ciphertext_hash).unwrap().unwrap()).unwrap();
        let fetched_v2 = fetchers[1].fetch(record, 2).await.unwrap();
        assert_eq!(blob_hash(&fetched_v2), v2.ciphertext_hash);
        stop_lying.send(()).unwrap();
        let mut raw = liar.await.unwrap();

        // End to end: Clinic B's record service reads version 2 with its own keys. (Its store
        // now has the ciphertext, so the read does not need to fetch.)
        let reader = RecordService::new(chain.clone(), net.validators[1].clone(), org_b.clone(), stores[1].clone());
        let read = reader.read(patient.id(), record, Some(2), Purpose::Treatment, t).unwrap();
        assert_eq!(&read.plaintext[..], &content[..]);

        // The grant ends (a day later by block time): Clinic B still holds the old epoch's key,
        // but is no longer sent versions of it, and its node no longer asks.
        let v3 = writer
            .write(&WriteRequest { record: Some(record), ..request_for(&doc, &patient, content) }, t, &mut rng)
            .unwrap();
        commit(&mut t);
        assert_eq!(fetchers[1].fetch(record, 3).await.map(|c| blob_hash(&c)), Ok(v3.ciphertext_hash));
        let v4 = writer
            .write(&WriteRequest { record: Some(record), ..request_for(&doc, &patient, content) }, t, &mut rng)
            .unwrap();
        commit(&mut t);
        t += 86_400_000;
        let later = Payload::register(Role::Practitioner, &Keypair::from_label("later"), Some(org_a.id()), "Dr L");
        chain.submit_as(&org_a, later, t).unwrap();
        commit(&mut t);
        assert_eq!(fetchers[1].fetch(record, 4).await, Err(FetchError::NotEntitled));
        // Asked directly by Clinic B's other node, the custodian's node refuses too.
        assert_eq!(
            ask(&mut raw, &participants[0], BlobMessage::Request { request_id: 3, record_id: record, version: 4 })
                .await,
            BlobMessage::Unavailable { request_id: 3, reason: Unavailable::NotEntitled }
        );
        assert!(!stores[1].contains(&v4.ciphertext_hash).unwrap());
    });
}

fn request_for<'a>(doc: &Keypair, patient: &Keypair, content: &'a [u8]) -> WriteRequest<'a> {
    WriteRequest {
        author: doc.id(),
        patient: patient.id(),
        resource_type: "Observation",
        category: "labs",
        content,
        record: None,
    }
}
