//! Attack: break-glass as a back door (issue 9, item 3). An insurer's or a research institute's
//! staff declared emergency access to a patient's whole record, and their own organisation
//! approved it. Now only clinicians of care providers declare, the declarer's organisation
//! never reviews its own staff's emergencies (another custodian of the patient, or the patient,
//! does), and a practitioner's unreviewed declarations are capped.

mod common;

use common::{HOUR_MS, World};
use medledger_ledger::{Payload, ReviewVerdict, TxError};
use medledger_types::{OrganisationKind, RecordId, limits};

fn review(id: medledger_types::TxId) -> Payload {
    Payload::ReviewBreakGlass { break_glass_tx: id, verdict: ReviewVerdict::Justified, reason: "ok".into() }
}

#[test]
fn insurer_and_research_staff_cannot_declare_break_glass() {
    for (name, kind) in
        [("Acme Insurance", OrganisationKind::Payer), ("Northbridge Research", OrganisationKind::Research)]
    {
        let mut w = World::with_second_member(name, kind);
        w.lab(RecordId([1; 32]), 1);
        let doc_b = w.doc_b.clone();
        let refused = w.break_glass(&doc_b, "ed-unresponsive", HOUR_MS);
        assert!(
            matches!(refused, Err(TxError::NotAuthorised(m)) if m.contains("care-providing")),
            "{name}: {refused:?}"
        );
        assert_eq!(w.state.break_glass_events(&w.patient.id()).count(), 0);
    }
}

#[test]
fn the_declarers_organisation_cannot_approve_its_own_break_glass() {
    let mut w = World::new();
    w.lab(RecordId([1; 32]), 1);
    let (org_b, doc_b) = (w.org_b.clone(), w.doc_b.clone());
    let id = w.break_glass(&doc_b, "ed-unresponsive", HOUR_MS).unwrap();
    let refused = w.submit(&org_b, review(id));
    assert!(matches!(refused, Err(TxError::NotAuthorised(_))), "{refused:?}");
    assert!(w.state.grant(&id).unwrap().needs_review());
    // Hospital A, which holds the patient's records, reviews.
    let org_a = w.org_a.clone();
    w.ok(&org_a, review(id));
    assert!(!w.state.grant(&id).unwrap().needs_review());
}

#[test]
fn a_practitioner_cannot_declare_break_glass_without_limit() {
    let mut w = World::new();
    let (doc_b, patient) = (w.doc_b.clone(), w.patient.clone());
    let mut declared = 0;
    // Each open window is closed by the patient, so only the review cap can stop the next one.
    while let Ok(id) = w.break_glass(&doc_b, "ed-unresponsive", HOUR_MS) {
        declared += 1;
        w.ok(&patient, Payload::ConsentRevoke { grant_id: id });
        assert!(declared <= 10, "break-glass is not capped");
    }
    assert_eq!(declared, limits::BREAK_GLASS_UNREVIEWED_PER_PRACTITIONER_MAX);
}

/// The declarer's organisation cannot review in another guise: with the patient keys it holds
/// in trust (it registered the patient), nor as the patient's delegate; nor can an insurer that
/// made itself a "custodian" with an empty key.
#[test]
fn the_declarers_organisation_cannot_review_as_the_patient_or_a_delegate() {
    let mut w = World::new();
    w.lab(RecordId([1; 32]), 1);
    let (org_a, doc, patient) = (w.org_a.clone(), w.doc.clone(), w.patient.clone());
    // Hospital A registered the patient; its doctor declares.
    let id = w.break_glass(&doc, "ed-unresponsive", HOUR_MS).unwrap();
    let as_patient = w.submit(&patient, review(id));
    assert!(matches!(as_patient, Err(TxError::NotAuthorised(m)) if m.contains("rotate")), "{as_patient:?}");
    // A colleague of the declarer appointed as the patient's delegate.
    let colleague = medledger_crypto::Keypair::from_label("dr-a2");
    w.ok(&org_a, Payload::register(medledger_types::Role::Practitioner, &colleague, Some(org_a.id()), "Dr A2"));
    let until = w.t + 86_400_000;
    w.ok(&patient, Payload::AppointDelegate { patient: patient.id(), delegate: colleague.id(), valid_until_ms: until });
    assert!(matches!(w.submit(&colleague, review(id)), Err(TxError::NotAuthorised(_))));
    assert!(w.state.grant(&id).unwrap().needs_review());
}

#[test]
fn an_insurer_holding_a_key_of_the_patient_cannot_review_break_glass() {
    let mut w = World::with_second_member("Acme Insurance", OrganisationKind::Payer);
    w.lab(RecordId([1; 32]), 1);
    let (org_b, doc, patient) = (w.org_b.clone(), w.doc.clone(), w.patient.clone());
    // The insurer makes itself a "custodian": an epoch of its own key for the patient.
    let share = Payload::KeyShare {
        custodian: org_b.id(),
        patient: patient.id(),
        category: "billing".into(),
        epoch: 1,
        shares: [patient.id(), org_b.id()]
            .into_iter()
            .map(|r| medledger_ledger::KeyShareEntry { recipient: r, encapsulated_key: [1; 32], wrapped_key: [2; 48] })
            .collect(),
    };
    w.ok(&org_b, share);
    let id = w.break_glass(&doc, "ed-unresponsive", HOUR_MS).unwrap();
    assert!(matches!(w.submit(&org_b, review(id)), Err(TxError::NotAuthorised(_))));
}
