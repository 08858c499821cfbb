//! Break-glass access and its review, and sharing rules (referrals, standing rules),
//! exercised through blocks as consensus would, with `access::decide` checked for each
//! outcome (delegates: `delegates.rs`).

use medledger_crypto::Keypair;
use medledger_ledger::{
    AccessAction, AccessEvent, AccessOutcome, CategoryKeyId, GrantOrigin, Payload, Purpose, ReviewVerdict, RuleError,
    RuleSpec, Scope, State, Transaction, TxError,
    access::{Basis, Denial, decide_at_head},
    actions,
    rules::{
        referral::{ReferralConsentParams, ReferralParams},
        share_new::ShareNewParams,
    },
    tx::sign,
};
use medledger_types::{Hash, RecordId, Role, TxId, limits};

mod common;

use common::{DAY_MS, HOUR_MS, World, consent, labs_and_vitals, referral};

fn rule_error(result: Result<TxId, TxError>) -> RuleError {
    match result {
        Err(TxError::Rule(e)) => e,
        other => panic!("expected a rule refusal, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Break-glass

#[test]
fn break_glass_allows_emergency_reads_only_within_its_window() {
    let mut w = World::new();
    let (doc_b, patient, validator) = (w.doc_b.clone(), w.patient.clone(), w.validator.clone());
    let record = RecordId([1; 32]);
    w.lab(record, 1);
    assert_eq!(w.read(&doc_b, record, Purpose::Emergency, w.now()), Err(Denial::NoGrant));

    let id = w.break_glass(&doc_b, "ed-arrival:unconscious", HOUR_MS).unwrap();
    let declared_at = w.now();
    let events: Vec<_> = w.state.break_glass_events(&patient.id()).collect();
    assert_eq!(events.len(), 1, "the patient sees the declaration");
    let g = events[0];
    assert_eq!((g.id, g.grantee, g.patient), (id, doc_b.id(), patient.id()));
    assert_eq!((g.scope.clone(), g.actions, g.purpose), (Scope::All, actions::READ, Purpose::Emergency));
    assert_eq!((g.valid_from_ms, g.valid_until_ms), (declared_at, declared_at + HOUR_MS));
    assert!(g.is_break_glass() && g.needs_review());
    assert_eq!(g.origin, GrantOrigin::BreakGlass { reason: "ed-arrival:unconscious".into(), review: None });
    assert_eq!(w.state.grants_of(&patient.id()).count(), 1);

    // Within the window, for Emergency only, read only.
    let basis = w.read(&doc_b, record, Purpose::Emergency, declared_at).unwrap();
    assert_eq!(basis, Basis::BreakGlass(id));
    assert_eq!((basis.outcome(), basis.grant(), basis.code()), (AccessOutcome::BreakGlass, Some(id), "break-glass"));
    assert_eq!(w.read(&doc_b, record, Purpose::Emergency, declared_at + HOUR_MS - 1), Ok(Basis::BreakGlass(id)));
    assert_eq!(w.read(&doc_b, record, Purpose::Treatment, declared_at), Err(Denial::PurposeNotGranted));
    assert_eq!(
        w.decide(&doc_b, record, actions::WRITE, Purpose::Emergency, declared_at),
        Err(Denial::ActionNotGranted)
    );
    // Outside the window (block time decides): refused with a clear denial.
    assert_eq!(w.read(&doc_b, record, Purpose::Emergency, declared_at + HOUR_MS), Err(Denial::BreakGlassExpired));
    assert_eq!(w.read(&doc_b, record, Purpose::Emergency, declared_at - 1), Err(Denial::BreakGlassExpired));
    assert_eq!(Denial::BreakGlassExpired.code(), "break-glass-expired");
    // Only the declaring practitioner: not its organisation nor colleagues.
    assert_eq!(w.read(&w.org_b.clone(), record, Purpose::Emergency, declared_at), Err(Denial::NoGrant));
    w.t += 2 * HOUR_MS;
    w.apply(vec![]).unwrap();
    assert_eq!(w.read(&doc_b, record, Purpose::Emergency, w.now()), Err(Denial::BreakGlassExpired));

    // No category key under break-glass: it would outlive the window.
    assert!(matches!(w.share(&w.doc.clone(), "labs", &[doc_b.id()]), Err(TxError::NotAuthorised(_))));

    // The read is audited as break-glass, naming the declaration; nothing else may claim that.
    let event = |outcome, grant_id| AccessEvent {
        accessor: doc_b.id(),
        patient: patient.id(),
        record: Some((record, 1)),
        action: AccessAction::Read,
        purpose: Purpose::Emergency,
        outcome,
        grant_id,
        reason: "break-glass".into(),
        at_ms: declared_at,
    };
    w.ok(&validator, Payload::AccessEvents { events: vec![event(AccessOutcome::BreakGlass, Some(id))] });
    let consent = w.ok(
        &patient,
        Payload::ConsentGrant {
            patient: patient.id(),
            grantee: doc_b.id(),
            scope: Scope::All,
            actions: actions::READ,
            purpose: Purpose::Emergency,
            valid_from_ms: w.t,
            valid_until_ms: w.t + DAY_MS,
        },
    );
    for bad in [event(AccessOutcome::BreakGlass, None), event(AccessOutcome::BreakGlass, Some(consent))] {
        let result = w.submit(&validator, Payload::AccessEvents { events: vec![bad] });
        assert!(matches!(result, Err(TxError::InvalidField(m)) if m.contains("break-glass")), "{result:?}");
    }
    // With a consent grant for Emergency, reads are no longer flagged as break-glass.
    let id2 = w.break_glass(&doc_b, "ed-arrival", HOUR_MS).unwrap();
    assert_eq!(w.read(&doc_b, record, Purpose::Emergency, w.now()), Ok(Basis::Grant(consent)));
    // The patient may end an emergency access early.
    w.ok(&patient, Payload::ConsentRevoke { grant_id: consent });
    assert_eq!(w.read(&doc_b, record, Purpose::Emergency, w.now()), Ok(Basis::BreakGlass(id2)));
    w.ok(&patient, Payload::ConsentRevoke { grant_id: id2 });
    assert_eq!(w.read(&doc_b, record, Purpose::Emergency, w.now()), Err(Denial::BreakGlassExpired));
    assert_eq!(w.state.break_glass_events(&patient.id()).count(), 2);
}

#[test]
fn break_glass_is_declared_by_practitioners_with_a_code_and_a_bounded_window() {
    let mut w = World::new();
    let (org_a, doc, patient, validator) = (w.org_a.clone(), w.doc.clone(), w.patient.clone(), w.validator.clone());
    let client = Keypair::from_label("ehr-client");
    w.ok(&org_a, Payload::register(Role::SystemClient, &client, Some(org_a.id()), "EHR"));
    for who in [&org_a, &patient, &client, &validator] {
        assert!(
            matches!(w.break_glass(who, "ed", HOUR_MS), Err(TxError::NotAuthorised(_))),
            "{:?}",
            w.state.identity(&who.id()).map(|i| i.role)
        );
    }
    // The subject must be a patient.
    let not_patient =
        w.submit(&doc, Payload::BreakGlass { patient: org_a.id(), reason: "ed".into(), window_ms: HOUR_MS });
    assert_eq!(not_patient, Err(TxError::InvalidField("patient must be a patient identity")));
    // The reason is a code, never free text or empty.
    for reason in ["", "patient collapsed in ward 3", "é"] {
        assert!(matches!(w.break_glass(&doc, reason, HOUR_MS), Err(TxError::InvalidField(_))), "{reason:?}");
    }
    // Over 64 bytes does not even decode.
    let long = w.tx(&doc, Payload::BreakGlass { patient: patient.id(), reason: "a".repeat(65), window_ms: HOUR_MS });
    assert!(Transaction::decode(long.bytes()).is_err());
    // Window bounds: 1 minute ..= 24 hours.
    for window in [0, limits::BREAK_GLASS_WINDOW_MIN_MS - 1, limits::BREAK_GLASS_WINDOW_MAX_MS + 1, u64::MAX] {
        assert!(matches!(w.break_glass(&doc, "ed", window), Err(TxError::InvalidField(_))), "{window}");
    }
    let mut declared = Vec::new();
    for window in
        [limits::BREAK_GLASS_WINDOW_MIN_MS, limits::BREAK_GLASS_WINDOW_DEFAULT_MS, limits::BREAK_GLASS_WINDOW_MAX_MS]
    {
        let id = w.break_glass(&doc, "ed", window).unwrap();
        // One open window per practitioner and patient: a second is refused until it ends.
        assert!(matches!(w.break_glass(&doc, "ed", window), Err(TxError::InvalidField(_))));
        w.ok(&patient, Payload::ConsentRevoke { grant_id: id });
        declared.push(id);
    }
    assert_eq!(limits::BREAK_GLASS_WINDOW_DEFAULT_MS, 4 * HOUR_MS);
    assert_eq!(w.state.break_glass_events(&patient.id()).count(), 3);
    // Capped: with three declarations awaiting review, no fourth until one is reviewed.
    assert_eq!(limits::BREAK_GLASS_UNREVIEWED_PER_PRACTITIONER_MAX, 3);
    assert!(matches!(w.break_glass(&doc, "ed", HOUR_MS), Err(TxError::NotAuthorised(m)) if m.contains("review")));
    // The patient reviews, once the keys Hospital A registered them with (and might hold in
    // trust) are rotated: Hospital A answers for the declarer, so it cannot review in their name.
    assert!(matches!(
        w.submit(&patient, review(declared[0], ReviewVerdict::Justified, "ok")),
        Err(TxError::NotAuthorised(m)) if m.contains("rotate")
    ));
    let rotated = Keypair::from_label("patient-rotated");
    w.ok(
        &patient,
        Payload::RotateKey { signing_key: rotated.public_key(), encryption_key: rotated.encryption_public_key() },
    );
    let review_tx = sign(
        &rotated,
        w.state.chain_id(),
        patient.id(),
        w.state.next_nonce(&patient.id()),
        review(declared[0], ReviewVerdict::Justified, "ok"),
    );
    w.apply_one(review_tx).unwrap();
    w.break_glass(&doc, "ed", HOUR_MS).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Referrals

#[test]
fn referral_within_the_authorisation_grants_the_referred_organisation() {
    let mut w = World::new();
    let (org_a, org_b, doc, doc_b, patient) =
        (w.org_a.clone(), w.org_b.clone(), w.doc.clone(), w.doc_b.clone(), w.patient.clone());
    let record = RecordId([1; 32]);
    w.lab(record, 1);
    let authorisation = w.install(&patient, consent(org_a.id()).to_spec()).unwrap();
    // Authorising referrals shares nothing by itself.
    assert_eq!(w.read(&doc_b, record, Purpose::Treatment, w.now()), Err(Denial::NoGrant));
    assert!(w.state.grants_of(&patient.id()).next().is_none());

    // Hospital A's practitioner refers the patient to hospital B; the patient's key is not used.
    let referral_id = w.install(&doc, referral(authorisation, org_b.id()).to_spec()).unwrap();
    let referred_at = w.now();
    let rule = w.state.rule(&referral_id).unwrap();
    assert_eq!((rule.kind.as_str(), rule.installed_by, rule.is_active()), ("referral", doc.id(), true));
    assert_eq!(rule.derived.len(), 1);
    let grant_id = rule.derived[0];
    let g = w.state.grant(&grant_id).unwrap();
    assert_eq!(
        (g.patient, g.grantee, g.actions, g.purpose),
        (patient.id(), org_b.id(), actions::READ, Purpose::Treatment)
    );
    assert_eq!(g.scope, Scope::Categories(vec!["labs".into()]));
    assert_eq!((g.valid_from_ms, g.valid_until_ms), (referred_at, referred_at + 14 * DAY_MS));
    assert_eq!(g.origin, GrantOrigin::Rule { rule_id: referral_id, authority: authorisation, category_keys: true });
    assert_eq!(g.derived_from(), Some(referral_id));
    assert_eq!(w.state.rules_of(&patient.id()).map(|r| r.id).collect::<Vec<_>>(), vec![authorisation, referral_id]);

    // B's staff read the labs for treatment during the referral, nothing more.
    let basis = w.read(&doc_b, record, Purpose::Treatment, referred_at).unwrap();
    assert_eq!(basis, Basis::Rule { rule_id: referral_id, grant_id });
    assert_eq!(
        (basis.grant(), basis.outcome(), basis.code()),
        (Some(grant_id), AccessOutcome::Allowed, "sharing-rule")
    );
    assert_eq!(w.read(&org_b, record, Purpose::Treatment, referred_at), Ok(basis));
    assert_eq!(w.read(&doc_b, record, Purpose::Research, referred_at), Err(Denial::PurposeNotGranted));
    assert_eq!(
        w.decide(&doc_b, record, actions::WRITE, Purpose::Treatment, referred_at),
        Err(Denial::ActionNotGranted)
    );
    assert_eq!(w.read(&doc_b, record, Purpose::Treatment, referred_at + 14 * DAY_MS), Err(Denial::GrantExpired));
    // Vitals were authorised but not referred; conditions neither.
    w.share(&doc, "conditions", &[patient.id(), org_a.id()]).unwrap();
    let condition = RecordId([2; 32]);
    w.commit(condition, 1, "Condition", "conditions").unwrap();
    assert_eq!(w.read(&doc_b, condition, Purpose::Treatment, w.now()), Err(Denial::NoGrant));

    // Key sharing treats the referral like a consent grant of the same scope.
    w.share(&w.validator.clone(), "labs", &[org_b.id()]).unwrap();
    assert!(matches!(w.share(&doc, "conditions", &[org_b.id()]), Err(TxError::NotAuthorised(_))));

    // The referrer withdraws the referral: B's access ends and the labs key must rotate.
    w.ok(&org_a, Payload::RemoveRule { rule_id: referral_id });
    assert!(!w.state.rule(&referral_id).unwrap().is_active());
    assert_eq!(w.read(&doc_b, record, Purpose::Treatment, w.now()), Err(Denial::GrantRevoked));
    assert!(w.state.category_key(&w.labs_key()).unwrap().rotation_required);
    assert!(w.state.rule(&authorisation).unwrap().is_active(), "the authorisation stays");
}

#[test]
fn referral_beyond_the_authorisation_is_refused() {
    let mut w = World::new();
    let (org_a, org_b, doc, doc_b, patient) =
        (w.org_a.clone(), w.org_b.clone(), w.doc.clone(), w.doc_b.clone(), w.patient.clone());
    let authorisation = w.install(&patient, consent(org_a.id()).to_spec()).unwrap();
    let base = referral(authorisation, org_b.id());
    let log_size = w.state.log().size();

    let more_categories = ReferralParams { categories: vec!["conditions".into(), "labs".into()], ..base.clone() };
    assert_eq!(
        rule_error(w.install(&doc, more_categories.to_spec())),
        RuleError::ExceedsConsent("categories beyond the authorisation")
    );
    let longer = ReferralParams { days: 31, ..base.clone() };
    assert_eq!(
        rule_error(w.install(&doc, longer.to_spec())),
        RuleError::ExceedsConsent("longer than the authorisation allows")
    );
    let zero_days = ReferralParams { days: 0, ..base.clone() };
    assert!(matches!(rule_error(w.install(&doc, zero_days.to_spec())), RuleError::ExceedsConsent(_)));
    let other_purpose = ReferralParams { purpose: Purpose::Research, ..base.clone() };
    assert_eq!(
        rule_error(w.install(&doc, other_purpose.to_spec())),
        RuleError::ExceedsConsent("purpose differs from the authorisation")
    );
    // Only the authorised referrer (or its staff) refers; not B, its staff, nor the patient.
    for who in [&org_b, &doc_b, &patient] {
        assert!(matches!(rule_error(w.install(who, base.to_spec())), RuleError::NotAuthorised(_)));
    }
    // To another member organisation only.
    for to in [org_a.id(), patient.id(), doc_b.id()] {
        let bad = ReferralParams { to, ..base.clone() };
        assert!(matches!(rule_error(w.install(&doc, bad.to_spec())), RuleError::InvalidParams(_)));
    }
    // An authorisation must exist, be of this patient, and have been signed by the patient.
    let unknown = ReferralParams { authorisation: TxId([3; 32]), ..base.clone() };
    assert!(matches!(rule_error(w.install(&doc, unknown.to_spec())), RuleError::ExceedsConsent(_)));
    assert!(matches!(rule_error(w.install(&org_a, consent(org_a.id()).to_spec())), RuleError::NotAuthorised(_)));
    let other_patient = Keypair::from_label("patient-2");
    let org_a = w.org_a.clone();
    w.ok(&org_a, Payload::register(Role::Patient, &other_patient, None, ""));
    let foreign = w
        .submit(
            &other_patient,
            Payload::InstallRule { patient: other_patient.id(), rule: consent(org_a.id()).to_spec() },
        )
        .unwrap();
    let borrowed = ReferralParams { authorisation: foreign, ..base.clone() };
    assert!(matches!(rule_error(w.install(&doc, borrowed.to_spec())), RuleError::ExceedsConsent(_)));
    // Rules for someone else's patient are signed by that patient only.
    assert!(matches!(
        w.submit(&other_patient, Payload::InstallRule { patient: patient.id(), rule: consent(org_a.id()).to_spec() }),
        Err(TxError::Rule(RuleError::NotAuthorised(_)))
    ));
    // Malformed parameters and unknown kinds.
    assert_eq!(rule_error(w.install(&patient, RuleSpec::new("smart-contract", vec![]))), RuleError::UnknownKind);
    assert!(matches!(
        rule_error(w.install(&doc, RuleSpec::new("referral", vec![1, 2, 3]))),
        RuleError::InvalidParams(_)
    ));
    let mut trailing = base.encode();
    trailing.push(0);
    assert!(matches!(rule_error(w.install(&doc, RuleSpec::new("referral", trailing))), RuleError::InvalidParams(_)));
    // A category set must be in canonical order: hand-encode a descending one.
    let mut unsorted = medledger_codec::Writer::new();
    unsorted.encode(&authorisation).encode(&org_b.id()).u32(2).str("vitals").str("labs").u32(14).u8(1);
    assert!(matches!(
        rule_error(w.install(&doc, RuleSpec::new("referral", unsorted.into_bytes()))),
        RuleError::InvalidParams(_)
    ));
    let bad_max = ReferralConsentParams { max_days: limits::RULE_GRANT_DAYS_MAX + 1, ..consent(org_a.id()) };
    assert!(matches!(rule_error(w.install(&patient, bad_max.to_spec())), RuleError::InvalidParams(_)));
    let not_an_org = ReferralConsentParams { referrer: doc.id(), ..consent(org_a.id()) };
    assert!(matches!(rule_error(w.install(&patient, not_an_org.to_spec())), RuleError::InvalidParams(_)));

    // Nothing of the refused transactions was written (each refused block left no trace).
    assert_eq!(w.state.log().size(), log_size + 2, "only patient-2's registration and authorisation committed");
    assert!(w.state.grants_of(&patient.id()).next().is_none());
    assert_eq!(w.state.rules_of(&patient.id()).count(), 1);
    // Exactly the authorised maximum is fine.
    let widest = ReferralParams { categories: labs_and_vitals(), days: 30, ..base };
    w.install(&doc, widest.to_spec()).unwrap();
}

#[test]
fn removing_the_authorisation_stops_new_referrals() {
    let mut w = World::new();
    let (org_a, org_b, doc, doc_b, patient) =
        (w.org_a.clone(), w.org_b.clone(), w.doc.clone(), w.doc_b.clone(), w.patient.clone());
    let record = RecordId([1; 32]);
    w.lab(record, 1);
    let authorisation = w.install(&patient, consent(org_a.id()).to_spec()).unwrap();
    let first = w.install(&doc, referral(authorisation, org_b.id()).to_spec()).unwrap();

    // Only the patient (or the installer) removes the authorisation.
    assert!(matches!(w.submit(&org_a, Payload::RemoveRule { rule_id: authorisation }), Err(TxError::NotAuthorised(_))));
    assert!(matches!(w.submit(&doc_b, Payload::RemoveRule { rule_id: first }), Err(TxError::NotAuthorised(_))));
    w.ok(&patient, Payload::RemoveRule { rule_id: authorisation });
    assert_eq!(
        w.submit(&patient, Payload::RemoveRule { rule_id: authorisation }),
        Err(TxError::InvalidField("rule is already removed"))
    );
    assert_eq!(
        w.submit(&patient, Payload::RemoveRule { rule_id: TxId([4; 32]) }),
        Err(TxError::UnknownRule(TxId([4; 32])))
    );

    // New referrals under it are refused by consensus.
    assert_eq!(
        rule_error(w.install(&doc, referral(authorisation, org_b.id()).to_spec())),
        RuleError::ExceedsConsent("the patient removed this referral authorisation")
    );
    // The referral already made stands until it ends or the patient revokes it.
    let grant_id = w.state.rule(&first).unwrap().derived[0];
    assert_eq!(w.read(&doc_b, record, Purpose::Treatment, w.now()), Ok(Basis::Rule { rule_id: first, grant_id }));
    w.ok(&patient, Payload::ConsentRevoke { grant_id });
    assert_eq!(w.read(&doc_b, record, Purpose::Treatment, w.now()), Err(Denial::GrantRevoked));
    assert!(!w.state.rule(&authorisation).unwrap().is_active());
}

// ---------------------------------------------------------------------------------------------
// Standing rule

#[test]
fn standing_rule_covers_only_later_records_and_stops_after_removal() {
    let mut w = World::new();
    let (org_a, org_b, doc, doc_b, patient) =
        (w.org_a.clone(), w.org_b.clone(), w.doc.clone(), w.doc_b.clone(), w.patient.clone());
    w.share(&doc, "conditions", &[patient.id(), org_a.id()]).unwrap();
    let old = RecordId([1; 32]);
    w.lab(old, 1);
    let params = ShareNewParams { grantee: org_b.id(), categories: vec!["labs".into()], purpose: Purpose::Treatment };
    // Only the patient installs it.
    assert!(matches!(rule_error(w.install(&doc, params.to_spec())), RuleError::NotAuthorised(_)));
    let bad_grantee = ShareNewParams { grantee: patient.id(), ..params.clone() };
    assert!(matches!(rule_error(w.install(&patient, bad_grantee.to_spec())), RuleError::InvalidParams(_)));
    let rule_id = w.install(&patient, params.to_spec()).unwrap();

    let new = RecordId([2; 32]);
    w.lab(new, 1);
    let condition = RecordId([3; 32]);
    w.commit(condition, 1, "Condition", "conditions").unwrap();
    // A new version of the old record does not bring it under the rule.
    w.lab(old, 2);
    let derived: Vec<_> = w.state.grants_of(&patient.id()).collect();
    assert_eq!(derived.len(), 1, "{derived:?}");
    let g = derived[0];
    assert_eq!((g.grantee, g.scope.clone(), g.actions), (org_b.id(), Scope::Records(vec![new]), actions::READ));
    assert_eq!(g.origin, GrantOrigin::Rule { rule_id, authority: rule_id, category_keys: false });
    let grant_id = g.id;

    let now = w.now();
    assert_eq!(w.read(&doc_b, new, Purpose::Treatment, now), Ok(Basis::Rule { rule_id, grant_id }));
    assert_eq!(w.read(&org_b, new, Purpose::Treatment, now), Ok(Basis::Rule { rule_id, grant_id }));
    assert_eq!(w.read(&doc_b, new, Purpose::Research, now), Err(Denial::PurposeNotGranted));
    assert_eq!(w.read(&doc_b, old, Purpose::Treatment, now), Err(Denial::NoGrant), "older records stay closed");
    assert_eq!(w.read(&doc_b, condition, Purpose::Treatment, now), Err(Denial::NoGrant), "other categories");
    // Per-record access never reaches the category key (it would open the older records).
    assert!(matches!(w.share(&doc, "labs", &[org_b.id()]), Err(TxError::NotAuthorised(_))));

    // Removal stops the rule for records committed afterwards.
    w.ok(&patient, Payload::RemoveRule { rule_id });
    let later = RecordId([4; 32]);
    w.lab(later, 1);
    assert_eq!(w.read(&doc_b, later, Purpose::Treatment, w.now()), Err(Denial::NoGrant));
    assert_eq!(w.read(&doc_b, new, Purpose::Treatment, w.now()), Ok(Basis::Rule { rule_id, grant_id }));
    assert_eq!(w.state.grants_of(&patient.id()).count(), 1);
    // The patient can still revoke what the rule shared.
    w.ok(&patient, Payload::ConsentRevoke { grant_id });
    assert_eq!(w.read(&doc_b, new, Purpose::Treatment, w.now()), Err(Denial::GrantRevoked));
}

#[test]
fn rules_reacting_to_records_are_bounded_per_patient() {
    let mut w = World::new();
    let (org_b, patient) = (w.org_b.clone(), w.patient.clone());
    let spec = |i: usize| {
        let purpose = Purpose::ALL[i % Purpose::ALL.len()];
        let category = medledger_types::CATEGORIES[i % medledger_types::CATEGORIES.len()];
        ShareNewParams { grantee: org_b.id(), categories: vec![category.into()], purpose }.to_spec()
    };
    let mut ids = Vec::new();
    for i in 0..limits::RULES_REACTING_PER_PATIENT_MAX {
        ids.push(w.install(&patient, spec(i)).unwrap());
    }
    assert_eq!(rule_error(w.install(&patient, spec(99))), RuleError::TooManyRules);
    w.ok(&patient, Payload::RemoveRule { rule_id: ids[3] });
    w.install(&patient, spec(99)).unwrap();
    // Rules that do not react to records (authorisations) are not counted.
    w.install(&patient, consent(w.org_a.id()).to_spec()).unwrap();
    // Every labs rule fires on one new lab record; each derives its own grant with its own id.
    w.lab(RecordId([1; 32]), 1);
    let mut ids: Vec<TxId> = w.state.grants_of(&patient.id()).map(|g| g.id).collect();
    let labs_rules = (0..limits::RULES_REACTING_PER_PATIENT_MAX)
        .filter(|i| medledger_types::CATEGORIES[i % medledger_types::CATEGORIES.len()] == "labs")
        .count();
    assert_eq!(ids.len(), labs_rules);
    ids.dedup();
    assert_eq!(ids.len(), labs_rules);
}

// ---------------------------------------------------------------------------------------------
// Break-glass review

/// A second practitioner at hospital B, and a patient with no records anywhere.
fn colleague_and_stranger(w: &mut World) -> (Keypair, Keypair) {
    let (org_b, colleague, stranger) = (w.org_b.clone(), Keypair::from_label("doctor-b2"), Keypair::from_label("p2"));
    w.ok(&org_b, Payload::register(Role::Practitioner, &colleague, Some(org_b.id()), "Dr B2"));
    // Registered by Hospital A, so not by the organisation of Hospital B's declarers.
    let org_a = w.org_a.clone();
    w.ok(&org_a, Payload::register(Role::Patient, &stranger, None, ""));
    (colleague, stranger)
}

fn review(id: TxId, verdict: ReviewVerdict, reason: &str) -> Payload {
    Payload::ReviewBreakGlass { break_glass_tx: id, verdict, reason: reason.into() }
}

#[test]
fn a_custodian_reviews_break_glass_once_and_a_justified_access_stands() {
    let mut w = World::new();
    let (org_a, org_b, doc_b, patient) = (w.org_a.clone(), w.org_b.clone(), w.doc_b.clone(), w.patient.clone());
    let record = RecordId([1; 32]);
    w.lab(record, 1);
    let id = w.break_glass(&doc_b, "ed-unresponsive", HOUR_MS).unwrap();
    assert!(w.state.grant(&id).unwrap().needs_review());

    // Hospital A holds the patient's records: it may review another organisation's emergency.
    let review_tx = w.ok(&org_a, review(id, ReviewVerdict::Justified, "ed-confirmed"));
    let g = w.state.grant(&id).unwrap().clone();
    assert!(!g.needs_review());
    let r = g.review().unwrap();
    assert_eq!(
        (r.review_tx, r.reviewer, r.verdict, r.reason.as_str()),
        (review_tx, org_a.id(), ReviewVerdict::Justified, "ed-confirmed")
    );
    assert_eq!((r.reviewed_at, r.reviewed_at_ms), (w.state.height(), w.now()));
    assert_eq!(g.revoked_at, None, "a justified access keeps its window");
    assert_eq!(w.read(&doc_b, record, Purpose::Emergency, w.now()), Ok(Basis::BreakGlass(id)));
    assert_eq!(w.state.break_glass_events(&patient.id()).next().unwrap().review(), Some(r));

    // One review per access, whoever tries again and whatever the verdict.
    for (who, verdict) in [(&org_a, ReviewVerdict::Justified), (&org_b, ReviewVerdict::Unjustified)] {
        assert_eq!(
            w.submit(who, review(id, verdict, "again")),
            Err(TxError::InvalidField("this break-glass access was already reviewed"))
        );
    }
}

#[test]
fn an_unjustified_verdict_ends_an_open_window_at_once() {
    let mut w = World::new();
    let (org_b, doc_b) = (w.org_b.clone(), w.doc_b.clone());
    let (colleague, _) = colleague_and_stranger(&mut w);
    let record = RecordId([1; 32]);
    w.lab(record, 1);
    let open = w.break_glass(&doc_b, "ed-unresponsive", HOUR_MS).unwrap();
    // Not a colleague of the declarer at hospital B; a practitioner of hospital A, which holds
    // the patient's records, reviews.
    assert!(matches!(
        w.submit(&colleague, review(open, ReviewVerdict::Justified, "ok")),
        Err(TxError::NotAuthorised(_))
    ));
    let doc = w.doc.clone();
    w.ok(&doc, review(open, ReviewVerdict::Unjustified, "no-emergency"));
    let g = w.state.grant(&open).unwrap();
    assert_eq!((g.revoked_at, g.revoked_by), (Some(w.state.height()), Some(doc.id())));
    assert_eq!(g.review().unwrap().verdict, ReviewVerdict::Unjustified);
    assert_eq!(w.read(&doc_b, record, Purpose::Emergency, w.now()), Err(Denial::GrantRevoked));

    // A window already over is recorded as unjustified but not revoked after the fact.
    let over = w.break_glass(&doc_b, "ed-unresponsive", limits::BREAK_GLASS_WINDOW_MIN_MS).unwrap();
    w.t += limits::BREAK_GLASS_WINDOW_MIN_MS;
    let org_a = w.org_a.clone();
    w.ok(&org_a, review(over, ReviewVerdict::Unjustified, "no-emergency"));
    let g = w.state.grant(&over).unwrap();
    assert_eq!((g.revoked_at, g.needs_review()), (None, false));
    assert_eq!(g.review().unwrap().reviewer, org_a.id());
    let _ = org_b;
}

#[test]
fn only_the_patient_or_another_custodian_reviews_and_never_the_declarer_or_its_organisation() {
    let mut w = World::new();
    let (org_a, org_b, doc, doc_b, patient, validator) =
        (w.org_a.clone(), w.org_b.clone(), w.doc.clone(), w.doc_b.clone(), w.patient.clone(), w.validator.clone());
    let (_, stranger) = colleague_and_stranger(&mut w);
    let id = w.break_glass(&doc_b, "ed-unresponsive", HOUR_MS).unwrap();
    let refused = |w: &mut World, who: &Keypair, id: TxId| {
        matches!(w.submit(who, review(id, ReviewVerdict::Justified, "ok")), Err(TxError::NotAuthorised(_)))
    };
    assert!(refused(&mut w, &doc_b, id), "the declarer reviewed their own access");
    assert!(refused(&mut w, &org_b, id), "the declarer's organisation reviewed its own practitioner");
    assert!(refused(&mut w, &validator, id), "a validator is not a reviewer");
    // The patient may review an emergency access to their own data.
    let by_patient = w.tx(&patient, review(id, ReviewVerdict::Unjustified, "not-me"));
    w.state.check_transaction(&by_patient, w.t + 1).unwrap();
    // Hospital A's practitioner may review: hospital A custodies the patient's labs.
    let by_doc = w.tx(&doc, review(id, ReviewVerdict::Justified, "ok"));
    w.state.check_transaction(&by_doc, w.t + 1).unwrap();

    // For a patient hospital A holds nothing of, neither it nor hospital B (the declarer's)
    // reviews: the patient does.
    let p2 = stranger.id();
    let id2 = w.ok(&doc_b, Payload::BreakGlass { patient: p2, reason: "ed-unresponsive".into(), window_ms: HOUR_MS });
    assert!(refused(&mut w, &org_a, id2), "a non-custodian organisation reviewed");
    assert!(refused(&mut w, &doc, id2), "a non-custodian's practitioner reviewed");
    assert!(refused(&mut w, &org_b, id2), "the declarer's organisation reviewed");
    w.ok(&stranger, review(id2, ReviewVerdict::Justified, "ed-confirmed"));

    // Only break-glass accesses are reviewed, with a code for a reason.
    let consent = w.grant_to(&patient, doc_b.id());
    assert_eq!(
        w.submit(&org_a, review(consent, ReviewVerdict::Justified, "ok")),
        Err(TxError::InvalidField("only a break-glass access is reviewed"))
    );
    assert_eq!(
        w.submit(&org_a, review(TxId([9; 32]), ReviewVerdict::Justified, "ok")),
        Err(TxError::UnknownGrant(TxId([9; 32])))
    );
    assert!(matches!(w.submit(&org_a, review(id, ReviewVerdict::Justified, "")), Err(TxError::InvalidField(_))));
    assert!(matches!(
        w.submit(&org_a, review(id, ReviewVerdict::Justified, "patient said so")),
        Err(TxError::InvalidField(_))
    ));
    assert!(w.state.grant(&id).unwrap().needs_review());
}

// ---------------------------------------------------------------------------------------------
// Encoding and determinism

#[test]
fn new_payloads_round_trip_and_decode_strictly() {
    let w = World::new();
    let patient = w.patient.id();
    for (keys, payload) in [
        (&w.doc, Payload::BreakGlass { patient, reason: "ed".into(), window_ms: HOUR_MS }),
        (&w.patient, Payload::InstallRule { patient, rule: consent(w.org_a.id()).to_spec() }),
        (&w.patient, Payload::RemoveRule { rule_id: TxId([1; 32]) }),
    ] {
        let kind = payload.kind();
        let tx = w.tx(keys, payload);
        let bytes = tx.bytes().to_vec();
        assert_eq!(Transaction::decode(&bytes).unwrap(), tx, "{kind}");
        for cut in 0..bytes.len() {
            assert!(Transaction::decode(&bytes[..cut]).is_err(), "{kind}: prefix of {cut} bytes decoded");
        }
    }
    let big = RuleSpec::new("referral", vec![0; limits::RULE_PARAMS_BYTES_MAX + 1]);
    let tx = w.tx(&w.doc, Payload::InstallRule { patient, rule: big });
    assert!(Transaction::decode(tx.bytes()).is_err());
    let params = consent(w.org_a.id());
    assert_eq!(ReferralConsentParams::decode(&params.encode()).unwrap(), params);
}

#[test]
fn rule_derived_state_is_identical_when_built_and_when_verified() {
    let mut w = World::new();
    let (org_a, org_b, doc, patient) = (w.org_a.clone(), w.org_b.clone(), w.doc.clone(), w.patient.clone());
    let authorisation = w.install(&patient, consent(org_a.id()).to_spec()).unwrap();
    // One block: a standing rule, a referral, a break-glass and two new records, in that order.
    let share_new = ShareNewParams { grantee: org_b.id(), categories: labs_and_vitals(), purpose: Purpose::Operations };
    let chain = w.state.chain_id();
    let p_nonce = w.state.next_nonce(&patient.id());
    let d_nonce = w.state.next_nonce(&doc.id());
    let record = |id: u8, version| Payload::RecordCommit {
        record_id: RecordId([id; 32]),
        version,
        patient: patient.id(),
        custodian: org_a.id(),
        author: doc.id(),
        resource_type: "Observation".into(),
        category: "labs".into(),
        key_epoch: 1,
        ciphertext_hash: Hash([9; 32]),
        ciphertext_bytes: 10,
        wrapped_data_key: [5; 72],
    };
    let txs = vec![
        sign(
            &patient,
            chain,
            patient.id(),
            p_nonce,
            Payload::InstallRule { patient: patient.id(), rule: share_new.to_spec() },
        ),
        sign(
            &doc,
            chain,
            doc.id(),
            d_nonce,
            Payload::InstallRule { patient: patient.id(), rule: referral(authorisation, org_b.id()).to_spec() },
        ),
        sign(&doc, chain, doc.id(), d_nonce + 1, record(1, 1)),
        sign(&doc, chain, doc.id(), d_nonce + 2, record(2, 1)),
        sign(
            &w.doc_b,
            chain,
            w.doc_b.id(),
            0,
            Payload::BreakGlass { patient: patient.id(), reason: "ed".into(), window_ms: HOUR_MS },
        ),
    ];
    w.t += 1000;
    let (block, skipped) = w.state.build_block(txs, w.t, w.validator.id());
    assert!(skipped.is_empty(), "{skipped:?}");
    let mut proposer = w.state.clone();
    let mut verifier = w.state.clone();
    proposer.apply_block(&block, None, &|_| false).unwrap();
    let delta = verifier.verify_block(&block, Some(w.t), &|_| false).unwrap();
    verifier.commit(&block, &delta);
    let grants = |s: &State| s.grants_of(&patient.id()).cloned().collect::<Vec<_>>();
    assert_eq!(grants(&proposer), grants(&verifier));
    // Referral (1), two records under the standing rule (2), break-glass (1).
    assert_eq!(grants(&proposer).len(), 4);
    let rules = |s: &State| s.rules_of(&patient.id()).cloned().collect::<Vec<_>>();
    assert_eq!(rules(&proposer), rules(&verifier));
    assert_eq!(proposer.head_hash(), verifier.head_hash());
}

/// A node judges a request at the head's block time and at its own clock; both must allow.
#[test]
fn nodes_refuse_when_block_time_or_their_clock_says_a_grant_is_over() {
    let mut w = World::new();
    let record = RecordId([40; 32]);
    w.lab(record, 1);
    let (patient, doc_b) = (w.patient.clone(), w.doc_b.clone());
    let start = w.now();
    w.ok(
        &patient,
        Payload::ConsentGrant {
            patient: patient.id(),
            grantee: w.org_b.id(),
            scope: Scope::All,
            actions: actions::READ,
            purpose: Purpose::Treatment,
            valid_from_ms: start,
            valid_until_ms: start + 10_000,
        },
    );
    let at_node = |w: &World, node_ms: u64| {
        let head = w.state.record(&record).unwrap();
        decide_at_head(&w.state, &doc_b.id(), &record, head, actions::READ, Purpose::Treatment, node_ms)
    };
    // Block time and the clock agree the grant is live.
    assert!(matches!(at_node(&w, w.now()), Ok(Basis::Grant(_))));
    // The chain stalled: block time still inside the window, the node's clock past it.
    assert_eq!(at_node(&w, start + 10_000), Err(Denial::GrantExpired));
    // Blocks moved past the window while this node's clock lags behind: block time decides.
    for _ in 0..10 {
        w.apply(vec![]).unwrap();
    }
    assert!(w.now() >= start + 10_000);
    assert_eq!(at_node(&w, start + 5_000), Err(Denial::GrantExpired));
}

/// Issue 9, item 1: a category key reaches only grantees whose live grant covers every record
/// it opens, and a record is never written under an epoch whose sharing has ended.
#[test]
fn category_keys_follow_consent_exactly() {
    let mut w = World::new();
    let (patient, org_b) = (w.patient.clone(), w.org_b.clone());
    let doc = w.doc.clone();
    w.lab(RecordId([1; 32]), 1);
    let grant = |w: &mut World, scope: Scope, until_ms: u64| {
        let t = w.t;
        w.ok(
            &patient,
            Payload::ConsentGrant {
                patient: patient.id(),
                grantee: org_b.id(),
                scope,
                actions: actions::READ,
                purpose: Purpose::Treatment,
                valid_from_ms: t,
                valid_until_ms: until_ms,
            },
        )
    };
    // One record: never the labs key (it would open every other lab).
    let far = w.t + 30 * DAY_MS;
    grant(&mut w, Scope::Records(vec![RecordId([1; 32])]), far);
    assert!(matches!(w.share(&doc, "labs", &[org_b.id()]), Err(TxError::NotAuthorised(_))));
    // Resource types: only when they name every type the category holds.
    grant(&mut w, Scope::ResourceTypes(vec!["Claim".into()]), far);
    let org_a = w.org_a.id();
    w.share(&doc, "billing", &[patient.id(), org_a]).unwrap();
    assert!(matches!(w.share(&doc, "billing", &[org_b.id()]), Err(TxError::NotAuthorised(_))));
    grant(&mut w, Scope::ResourceTypes(vec!["Observation".into()]), far);
    // The labs key is shared under the Observation grant, whose end bounds the epoch.
    let soon = w.t + 10_000;
    let short = grant(&mut w, Scope::Categories(vec!["labs".into()]), soon);
    w.share(&doc, "labs", &[org_b.id()]).unwrap();
    assert_eq!(w.state.category_key(&w.labs_key()).unwrap().shared_until_ms, far);
    assert!(w.state.grant(&short).is_some());

    // (The Observation grant also covers vitals.) A key shared under a grant that then expires: records must move to a new epoch.
    w.share(&doc, "conditions", &[patient.id(), org_a]).unwrap();
    let conditions_until = w.t + 5_000;
    grant(&mut w, Scope::Categories(vec!["conditions".into()]), conditions_until);
    w.share(&doc, "conditions", &[org_b.id()]).unwrap();
    let conditions_key =
        CategoryKeyId { custodian: w.org_a.id(), patient: patient.id(), category: "conditions".into() };
    assert_eq!(w.state.category_key(&conditions_key).unwrap().shared_until_ms, conditions_until);
    w.commit(RecordId([2; 32]), 1, "Condition", "conditions").unwrap();
    while w.t + 1000 < conditions_until {
        w.apply(vec![]).unwrap();
    }
    let refused = w.commit(RecordId([3; 32]), 1, "Condition", "conditions");
    assert!(matches!(refused, Err(TxError::InvalidField(m)) if m.contains("rotated")), "{refused:?}");
    // The new epoch goes to the patient and the custodian only; the expired grantee is refused.
    assert!(matches!(w.share(&doc, "conditions", &[patient.id(), org_a, org_b.id()]), Err(TxError::NotAuthorised(_))));
    w.share(&doc, "conditions", &[patient.id(), org_a]).unwrap();
    let rotated = w.state.category_key(&conditions_key).unwrap();
    assert_eq!((rotated.epoch, rotated.shared_until_ms), (2, u64::MAX));
    w.commit(RecordId([3; 32]), 1, "Condition", "conditions").unwrap();
}
