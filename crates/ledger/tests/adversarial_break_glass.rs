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
