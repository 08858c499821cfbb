//! Patient delegates: a delegate grants, revokes and manages sharing rules for the patient
//! while live; delegation does not chain or reach other patients; appointments are bounded.
//! Exercised through blocks as consensus would, with `access::decide` checked for each outcome.

use medledger_crypto::Keypair;
use medledger_ledger::{
    BlockError, Payload, Purpose, RuleError, Scope, TxError,
    access::{Basis, Denial},
    actions,
    rules::share_new::ShareNewParams,
};
use medledger_types::{IdentityId, RecordId, Role, TxId, limits};

mod common;

use common::{DAY_MS, HOUR_MS, World, consent, referral};

impl World {
    /// Registers a guardian: a patient identity in their own right.
    fn guardian(&mut self, label: &str) -> Keypair {
        let keys = Keypair::from_label(label);
        let org = self.org_a.clone();
        self.ok(&org, Payload::register(Role::Patient, &keys, None, ""));
        keys
    }

    fn appoint(&mut self, delegate: IdentityId, until_ms: u64) -> Result<TxId, TxError> {
        let patient = self.patient.clone();
        self.submit(&patient, Payload::AppointDelegate { patient: patient.id(), delegate, valid_until_ms: until_ms })
    }
}

#[test]
fn a_delegate_grants_and_revokes_for_the_patient() {
    let mut w = World::new();
    let (doc_b, patient) = (w.doc_b.clone(), w.patient.clone());
    let guardian = w.guardian("guardian");
    let record = RecordId([1; 32]);
    w.lab(record, 1);
    let until = w.now() + 365 * DAY_MS;
    let appointment = w.appoint(guardian.id(), until).unwrap();
    let d = w.state.delegations_of(&patient.id()).next().unwrap().clone();
    assert_eq!((d.id, d.delegate, d.valid_until_ms, d.dismissed_at), (appointment, guardian.id(), until, None));
    assert!(w.state.is_live_delegate(&patient.id(), &guardian.id(), w.now()));

    let grant = w.grant_for(&guardian, patient.id(), doc_b.id()).unwrap();
    let g = w.state.grant(&grant).unwrap();
    assert_eq!((g.patient, g.signed_by, g.delegate()), (patient.id(), guardian.id(), Some(guardian.id())));
    assert_eq!(w.read(&doc_b, record, Purpose::Treatment, w.now()), Ok(Basis::Grant(grant)));
    // The grant entitles the grantee to the category key, as the patient's own would.
    w.share(&w.doc.clone(), "labs", &[doc_b.id()]).unwrap();

    w.ok(&guardian, Payload::ConsentRevoke { grant_id: grant });
    let g = w.state.grant(&grant).unwrap();
    assert_eq!((g.revoked_at, g.revoked_by), (Some(w.state.height()), Some(guardian.id())));
    assert_eq!(w.read(&doc_b, record, Purpose::Treatment, w.now()), Err(Denial::GrantRevoked));
    assert!(w.state.category_key(&w.labs_key()).unwrap().rotation_required);

    // The delegate also revokes what the patient granted, and a break-glass access.
    let own = w.grant_to(&patient, doc_b.id());
    assert_eq!(w.state.grant(&own).unwrap().delegate(), None);
    w.ok(&guardian, Payload::ConsentRevoke { grant_id: own });
    let bg = w.break_glass(&doc_b, "ed-unresponsive", HOUR_MS).unwrap();
    w.ok(&guardian, Payload::ConsentRevoke { grant_id: bg });
    assert!(w.state.grant(&bg).unwrap().revoked_at.is_some());

    // A practitioner may be a delegate too.
    let doc = w.doc.clone();
    w.appoint(doc.id(), until).unwrap();
    w.grant_for(&doc, patient.id(), doc_b.id()).unwrap();
}

#[test]
fn only_live_delegates_act_for_the_patient() {
    let mut w = World::new();
    let (doc_b, patient) = (w.doc_b.clone(), w.patient.clone());
    let guardian = w.guardian("guardian");
    let not_authorised = |r: Result<TxId, TxError>| matches!(r, Err(TxError::NotAuthorised(_)));
    // Not (yet) a delegate.
    assert!(not_authorised(w.grant_for(&guardian, patient.id(), doc_b.id())));
    let by_patient = w.grant_to(&patient, doc_b.id());
    assert!(not_authorised(w.submit(&guardian, Payload::ConsentRevoke { grant_id: by_patient })));

    // Dismissed: refused from then on; what the delegate granted stays until revoked.
    w.appoint(guardian.id(), w.now() + DAY_MS).unwrap();
    let granted = w.grant_for(&guardian, patient.id(), doc_b.id()).unwrap();
    w.ok(&patient, Payload::DismissDelegate { patient: patient.id(), delegate: guardian.id() });
    let d = w.state.delegations_of(&patient.id()).next().unwrap();
    assert_eq!((d.dismissed_at, d.dismissed_by), (Some(w.state.height()), Some(patient.id())));
    assert!(not_authorised(w.grant_for(&guardian, patient.id(), doc_b.id())));
    assert!(not_authorised(w.submit(&guardian, Payload::ConsentRevoke { grant_id: granted })));
    assert!(w.state.grant(&granted).unwrap().is_live(w.now()), "a dismissed delegate's grant stays in force");

    // Dismissal takes effect at its place in the block: a grant after it is refused.
    w.appoint(guardian.id(), w.now() + DAY_MS).unwrap();
    let dismiss = w.tx(&patient, Payload::DismissDelegate { patient: patient.id(), delegate: guardian.id() });
    let now = w.now();
    let late = w.tx(
        &guardian,
        Payload::ConsentGrant {
            patient: patient.id(),
            grantee: doc_b.id(),
            scope: Scope::All,
            actions: actions::READ,
            purpose: Purpose::Treatment,
            valid_from_ms: now,
            valid_until_ms: now + DAY_MS,
        },
    );
    assert!(matches!(
        w.apply(vec![dismiss.clone(), late]),
        Err(BlockError::InvalidTransaction { index: 1, error: TxError::NotAuthorised(_), .. })
    ));
    w.apply_one(dismiss).unwrap();

    // Expired: block time at or past the end.
    let until = w.now() + 5_000;
    w.appoint(guardian.id(), until).unwrap();
    w.grant_for(&guardian, patient.id(), doc_b.id()).unwrap();
    w.t = until - 1000; // the next block is at `until`
    assert!(not_authorised(w.grant_for(&guardian, patient.id(), doc_b.id())));
    assert!(w.state.is_live_delegate(&patient.id(), &guardian.id(), until - 1));
    assert!(!w.state.is_live_delegate(&patient.id(), &guardian.id(), until));
}

#[test]
fn delegation_does_not_chain_nor_reach_other_patients() {
    let mut w = World::new();
    let (doc, doc_b, patient) = (w.doc.clone(), w.doc_b.clone(), w.patient.clone());
    let guardian = w.guardian("guardian");
    let other = w.guardian("other-patient");
    w.appoint(guardian.id(), w.now() + DAY_MS).unwrap();
    // A delegate appoints no one, not even for the patient they act for, and dismisses no one
    // but themself.
    let appoint =
        Payload::AppointDelegate { patient: patient.id(), delegate: doc.id(), valid_until_ms: w.now() + DAY_MS };
    assert_eq!(w.submit(&guardian, appoint), Err(TxError::NotAuthorised("only the patient appoints their delegates")));
    w.appoint(doc.id(), w.now() + DAY_MS).unwrap();
    let dismiss_doc = Payload::DismissDelegate { patient: patient.id(), delegate: doc.id() };
    assert!(matches!(w.submit(&guardian, dismiss_doc), Err(TxError::NotAuthorised(_))));
    // Nothing for another patient.
    assert!(matches!(w.grant_for(&guardian, other.id(), doc_b.id()), Err(TxError::NotAuthorised(_))));
    let others = w.grant_to(&other, doc_b.id());
    assert!(matches!(w.submit(&guardian, Payload::ConsentRevoke { grant_id: others }), Err(TxError::NotAuthorised(_))));
    // Nor anything else a patient signs as themself.
    let referral_rule = Payload::InstallRule { patient: other.id(), rule: consent(w.org_a.id()).to_spec() };
    assert!(matches!(w.submit(&guardian, referral_rule), Err(TxError::Rule(RuleError::NotAuthorised(_)))));
    // A delegate steps down on their own.
    w.ok(&guardian, Payload::DismissDelegate { patient: patient.id(), delegate: guardian.id() });
    assert_eq!(w.state.delegations_of(&patient.id()).next().unwrap().dismissed_by, Some(guardian.id()));
}

#[test]
fn delegate_appointments_are_validated_and_bounded() {
    let mut w = World::new();
    let (org_a, validator, patient) = (w.org_a.clone(), w.validator.clone(), w.patient.clone());
    let later = w.now() + DAY_MS;
    let invalid = |r: Result<TxId, TxError>| matches!(r, Err(TxError::InvalidField(_)));
    // Persons, or a member's validator as FHIR gateway: no organisation or system client; not
    // oneself; not unknown.
    let client = Keypair::from_label("ehr");
    w.ok(&org_a, Payload::register(Role::SystemClient, &client, Some(org_a.id()), "EHR"));
    for who in [org_a.id(), client.id(), patient.id()] {
        assert!(invalid(w.appoint(who, later)), "{who:?} appointed");
    }
    w.appoint(validator.id(), later).unwrap();
    w.ok(&patient, Payload::DismissDelegate { patient: patient.id(), delegate: validator.id() });
    assert!(matches!(w.appoint(IdentityId([7; 32]), later), Err(TxError::UnknownIdentity { .. })));
    let guardian = w.guardian("guardian");
    assert!(invalid(w.appoint(guardian.id(), w.now())), "a delegation that already ended");
    w.appoint(guardian.id(), later).unwrap();
    assert!(invalid(w.appoint(guardian.id(), later)), "the same live delegate twice");
    // A patient names another patient's delegate only for themself.
    let other = w.guardian("other");
    let for_other = Payload::AppointDelegate { patient: other.id(), delegate: guardian.id(), valid_until_ms: later };
    assert!(matches!(w.submit(&patient, for_other), Err(TxError::NotAuthorised(_))));

    // At most DELEGATES_PER_PATIENT_MAX live at once; a dismissal frees a place.
    let extra: Vec<Keypair> = (1..=limits::DELEGATES_PER_PATIENT_MAX).map(|i| w.guardian(&format!("g{i}"))).collect();
    for g in &extra[..limits::DELEGATES_PER_PATIENT_MAX - 1] {
        w.appoint(g.id(), later).unwrap();
    }
    let last = extra.last().unwrap().id();
    assert_eq!(w.appoint(last, later), Err(TxError::InvalidField("the patient already has the most live delegates")));
    w.ok(&patient, Payload::DismissDelegate { patient: patient.id(), delegate: guardian.id() });
    w.appoint(last, later).unwrap();
    // Dismissing someone who is not a live delegate is refused.
    let dismiss_again = Payload::DismissDelegate { patient: patient.id(), delegate: guardian.id() };
    assert_eq!(w.submit(&patient, dismiss_again), Err(TxError::InvalidField("not a live delegate of this patient")));
    let by_stranger = Payload::DismissDelegate { patient: patient.id(), delegate: last };
    assert!(matches!(w.submit(&other, by_stranger), Err(TxError::NotAuthorised(_))));
    // The list is full again; the history keeps every appointment.
    assert!(w.appoint(guardian.id(), later).is_err());
    assert_eq!(w.state.delegations_of(&patient.id()).count(), limits::DELEGATES_PER_PATIENT_MAX + 2);
}

#[test]
fn a_delegate_manages_the_patients_sharing_rules() {
    let mut w = World::new();
    let (org_a, org_b, patient) = (w.org_a.clone(), w.org_b.clone(), w.patient.clone());
    let guardian = w.guardian("guardian");
    w.appoint(guardian.id(), w.now() + DAY_MS).unwrap();
    let standing = ShareNewParams { grantee: org_b.id(), categories: vec!["labs".into()], purpose: Purpose::Treatment };
    let rule_id = w.install(&guardian, standing.to_spec()).unwrap();
    let rule = w.state.rule(&rule_id).unwrap();
    assert_eq!((rule.installed_by, rule.is_patients_own()), (guardian.id(), true));
    // The rule acts for the patient: a new lab is shared with hospital B.
    let record = RecordId([3; 32]);
    w.lab(record, 1);
    assert!(matches!(w.read(&org_b, record, Purpose::Treatment, w.now()), Ok(Basis::Rule { .. })));
    // An authorisation a delegate signed is the patient's own: referrals may rest on it.
    let authorisation = w.install(&guardian, consent(org_a.id()).to_spec()).unwrap();
    w.install(&org_a, referral(authorisation, org_b.id()).to_spec()).unwrap();
    w.ok(&guardian, Payload::RemoveRule { rule_id });
    assert!(!w.state.rule(&rule_id).unwrap().is_active());
    // Once dismissed, neither.
    w.ok(&patient, Payload::DismissDelegate { patient: patient.id(), delegate: guardian.id() });
    assert!(matches!(w.install(&guardian, standing.to_spec()), Err(TxError::Rule(RuleError::NotAuthorised(_)))));
    assert!(matches!(
        w.submit(&guardian, Payload::RemoveRule { rule_id: authorisation }),
        Err(TxError::NotAuthorised(_))
    ));
    assert!(w.state.rule(&authorisation).unwrap().is_active(), "what the delegate installed stays");
}
