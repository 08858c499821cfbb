//! Attack: free identities (issue 9, item 5). Anyone could register a patient identity for
//! themselves and then spend a node's reads, audit trail, tokens and mempool under it. Now a
//! patient is registered only by a member organisation, its staff or its node.

mod common;

use common::World;
use medledger_crypto::Keypair;
use medledger_ledger::{Payload, TxError, tx::sign};
use medledger_types::Role;

#[test]
fn anyone_cannot_register_a_patient_identity_for_themselves() {
    let mut w = World::new();
    let mallory = Keypair::from_label("mallory");
    let own = sign(&mallory, w.state.chain_id(), mallory.id(), 0, Payload::register(Role::Patient, &mallory, None, ""));
    assert_eq!(w.apply_one(own), Err(TxError::UnknownSigner(mallory.id())));
    assert!(w.state.identity(&mallory.id()).is_none());
    // Nor by another patient: registration is a provider's act.
    let patient = w.patient.clone();
    let by_patient = w.submit(&patient, Payload::register(Role::Patient, &mallory, None, ""));
    assert!(matches!(by_patient, Err(TxError::NotAuthorised(_))), "{by_patient:?}");
    // A member organisation registers her, with her own keys.
    let org = w.org_b.clone();
    w.ok(&org, Payload::register(Role::Patient, &mallory, None, ""));
    assert_eq!(w.state.identity(&mallory.id()).map(|i| i.role), Some(Role::Patient));
}

/// Insurers and research institutes (and their staff) enrol no patients: every identity
/// multiplies every node's per-identity budgets, so only care providers create them.
#[test]
fn insurer_staff_cannot_mint_patient_identities() {
    let mut w = World::with_second_member("Acme Insurance", medledger_types::OrganisationKind::Payer);
    let (insurer, clerk) = (w.org_b.clone(), w.doc_b.clone());
    for (signer, label) in [(&insurer, "minted-1"), (&clerk, "minted-2")] {
        let minted = Keypair::from_label(label);
        let refused = w.submit(signer, Payload::register(Role::Patient, &minted, None, ""));
        assert!(matches!(refused, Err(TxError::NotAuthorised(_))), "{refused:?}");
    }
}
