//! Attack: forging the audit trail (issue 9, item 2). Organisations and system clients signed
//! access-events transactions naming any accessor, patient, record and outcome, and they showed
//! in the patient's access log as if a node had decided them. Now only a validator records
//! events (it is shown as their recorder), and an allowed event must name a basis the ledger
//! agrees with.

mod common;

use common::{DAY_MS, World};
use medledger_crypto::Keypair;
use medledger_ledger::{AccessAction, AccessEvent, AccessOutcome, Payload, Purpose, Scope, TxError, actions};
use medledger_types::{RecordId, Role, TxId};

fn read(
    w: &World,
    accessor: &Keypair,
    record: RecordId,
    outcome: AccessOutcome,
    grant_id: Option<TxId>,
) -> AccessEvent {
    AccessEvent {
        accessor: accessor.id(),
        patient: w.patient.id(),
        record: Some((record, 1)),
        action: AccessAction::Read,
        purpose: Purpose::Treatment,
        outcome,
        grant_id,
        reason: if outcome == AccessOutcome::Denied { "no-grant".into() } else { "consent-grant".into() },
        at_ms: w.t,
    }
}

#[test]
fn organisations_clients_and_nodes_cannot_forge_access_events() {
    let mut w = World::new();
    let (org_b, doc, doc_b, validator, patient) =
        (w.org_b.clone(), w.doc.clone(), w.doc_b.clone(), w.validator.clone(), w.patient.clone());
    let client_b = Keypair::from_label("client-b");
    w.ok(&org_b, Payload::register(Role::SystemClient, &client_b, Some(org_b.id()), "B integration"));
    let lab = RecordId([1; 32]);
    w.lab(lab, 1);

    // "Dr B read the patient's lab, allowed": signed by Clinic B or its client, refused.
    let forged = read(&w, &doc_b, lab, AccessOutcome::Allowed, None);
    for signer in [&org_b, &client_b] {
        let refused = w.submit(signer, Payload::AccessEvents { events: vec![forged.clone()] });
        assert!(matches!(refused, Err(TxError::NotAuthorised(m)) if m.contains("validator")), "{refused:?}");
    }
    // Nor as a denial naming anyone: only validators record.
    let denial = read(&w, &doc, lab, AccessOutcome::Denied, None);
    assert!(matches!(
        w.submit(&org_b, Payload::AccessEvents { events: vec![denial.clone()] }),
        Err(TxError::NotAuthorised(_))
    ));

    // A validator cannot claim an access was allowed on a basis the ledger does not know.
    let refused = w.submit(&validator, Payload::AccessEvents { events: vec![forged.clone()] });
    assert!(matches!(refused, Err(TxError::InvalidField(_))), "{refused:?}");
    // Under a grant that does not cover the record (vitals only), or before it started.
    let t = w.t;
    let vitals = w.ok(
        &patient,
        Payload::ConsentGrant {
            patient: patient.id(),
            grantee: org_b.id(),
            scope: Scope::Categories(vec!["vitals".into()]),
            actions: actions::READ,
            purpose: Purpose::Treatment,
            valid_from_ms: t,
            valid_until_ms: t + DAY_MS,
        },
    );
    let under_vitals = read(&w, &doc_b, lab, AccessOutcome::Allowed, Some(vitals));
    assert!(matches!(
        w.submit(&validator, Payload::AccessEvents { events: vec![under_vitals] }),
        Err(TxError::InvalidField(_))
    ));
    let t = w.t;
    let labs = w.ok(
        &patient,
        Payload::ConsentGrant {
            patient: patient.id(),
            grantee: org_b.id(),
            scope: Scope::Categories(vec!["labs".into()]),
            actions: actions::READ,
            purpose: Purpose::Research,
            valid_from_ms: t,
            valid_until_ms: t + DAY_MS,
        },
    );
    let before_grant = AccessEvent {
        at_ms: t - 1,
        purpose: Purpose::Research,
        ..read(&w, &doc_b, lab, AccessOutcome::Allowed, Some(labs))
    };
    let wrong_purpose = read(&w, &doc_b, lab, AccessOutcome::Allowed, Some(labs));
    for bad in [before_grant, wrong_purpose] {
        assert!(matches!(
            w.submit(&validator, Payload::AccessEvents { events: vec![bad] }),
            Err(TxError::InvalidField(_))
        ));
    }
    // What a node really decided is accepted: the custodian's practitioner, a grantee's read
    // under its grant, and a denial.
    let custodian_read =
        AccessEvent { reason: "custodian".into(), ..read(&w, &doc, lab, AccessOutcome::Allowed, None) };
    let granted =
        AccessEvent { purpose: Purpose::Research, ..read(&w, &doc_b, lab, AccessOutcome::Allowed, Some(labs)) };
    w.ok(&validator, Payload::AccessEvents { events: vec![custodian_read, granted, denial] });
    // Events dated long before their block are refused, so none is placed back in time.
    let stale = AccessEvent { at_ms: w.t - 8 * DAY_MS, ..read(&w, &doc, lab, AccessOutcome::Denied, None) };
    assert!(matches!(
        w.submit(&validator, Payload::AccessEvents { events: vec![stale] }),
        Err(TxError::InvalidField(_))
    ));
}

/// A validator may not record allowed accesses it did not serve (another organisation's staff
/// reading another custodian's record), nor accesses after the grant they name was revoked.
#[test]
fn nodes_cannot_record_accesses_they_did_not_serve_or_after_revocation() {
    let mut w = World::new();
    let (org_b, doc, doc_b, validator, validator_b, patient) = (
        w.org_b.clone(),
        w.doc.clone(),
        w.doc_b.clone(),
        w.validator.clone(),
        w.validator_b.clone(),
        w.patient.clone(),
    );
    let lab = RecordId([1; 32]);
    w.lab(lab, 1);
    // Hospital A's doctor reading Hospital A's lab: Clinic B's node served nothing of it.
    let custodian_read =
        AccessEvent { reason: "custodian".into(), ..read(&w, &doc, lab, AccessOutcome::Allowed, None) };
    let refused = w.submit(&validator_b, Payload::AccessEvents { events: vec![custodian_read.clone()] });
    assert!(matches!(refused, Err(TxError::NotAuthorised(_))), "{refused:?}");
    w.ok(&validator, Payload::AccessEvents { events: vec![custodian_read] });
    // A grant revoked: an access dated after the revocation is not under it.
    let t = w.t;
    let labs = w.ok(
        &patient,
        Payload::ConsentGrant {
            patient: patient.id(),
            grantee: org_b.id(),
            scope: Scope::Categories(vec!["labs".into()]),
            actions: actions::READ,
            purpose: Purpose::Treatment,
            valid_from_ms: t,
            valid_until_ms: t + DAY_MS,
        },
    );
    w.ok(&patient, Payload::ConsentRevoke { grant_id: labs });
    let after = AccessEvent { at_ms: w.t, ..read(&w, &doc_b, lab, AccessOutcome::Allowed, Some(labs)) };
    assert!(matches!(
        w.submit(&validator_b, Payload::AccessEvents { events: vec![after] }),
        Err(TxError::InvalidField(_))
    ));
}
