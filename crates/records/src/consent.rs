//! The FHIR↔consent mapping, both ways: an R4 Consent as the on-chain grant it describes
//! ([`grant_of`]: mapped exactly or refused with every reason, never widened), a grant as an
//! R4 Consent ([`consent_resource`]: status from its period and revocation, the grantee as the
//! actor, the actions, purpose and scope as the provision, and how the grant came to be as an
//! extension), and who may write a patient's consent ([`acts_for`]). Pure: state and time are
//! inputs; the API parses, calls, renders and submits.

use medledger_fhir::instant::instant_from_ms;
use medledger_ledger::{Payload, Purpose, Scope, State, actions};
use medledger_types::{IdentityId, RecordId, Role, TimestampMs, limits};

use crate::served::{CATEGORY_SYSTEM, GRANT_ORIGIN_EXTENSION, IDENTITY_SYSTEM, LEDGER_TX_EXTENSION, SERVED_TYPES};

const CONSENT_ACTION: &str = "http://terminology.hl7.org/CodeSystem/consentaction";
const CONSENT_SCOPE: &str = "http://terminology.hl7.org/CodeSystem/consentscope";
const ACT_REASON: &str = "http://terminology.hl7.org/CodeSystem/v3-ActReason";
const RESOURCE_TYPES: &str = "http://hl7.org/fhir/resource-types";

/// The identity a Reference names with a `urn:medledger:identity` identifier, or a
/// `Patient/<id>` reference to a Patient stored here.
fn identity_of(state: &State, reference: &serde_json::Value) -> Option<IdentityId> {
    if reference["identifier"]["system"] == IDENTITY_SYSTEM {
        return reference["identifier"]["value"].as_str().and_then(|v| IdentityId::from_hex(v).ok());
    }
    let id = reference["reference"].as_str()?.strip_prefix("Patient/")?;
    let head = state.record(&RecordId::from_hex(id).ok()?)?;
    (head.resource_type == "Patient").then_some(head.patient)
}

fn codings(value: &serde_json::Value) -> Vec<&serde_json::Value> {
    value["coding"].as_array().into_iter().flatten().collect()
}

/// The grant a Consent describes, exactly (the patient, and the grant payload the patient's
/// gateway delegate signs), or every reason it cannot be expressed: never widened.
pub fn grant_of(state: &State, json: &serde_json::Value, now: u64) -> Result<(IdentityId, Payload), Vec<String>> {
    let mut why = Vec::new();
    if json["status"] != "active" {
        why.push(format!(
            "only an active Consent creates a grant (status is {}); to end one, DELETE it",
            json["status"]
        ));
    }
    if !codings(&json["scope"]).iter().any(|c| c["system"] == CONSENT_SCOPE && c["code"] == "patient-privacy") {
        why.push("scope must be patient-privacy (consentscope): medledger enforces privacy consents".into());
    }
    let patient =
        identity_of(state, &json["patient"]).filter(|p| state.identity(p).is_some_and(|w| w.role == Role::Patient));
    if patient.is_none() {
        why.push(format!(
            "patient must name a patient: Patient/<id> of this server or an identifier of system {IDENTITY_SYSTEM}"
        ));
    }
    let p = &json["provision"];
    if !p.is_object() {
        why.push("a provision is required: it is the grant".into());
        return Err(why);
    }
    if p["type"] != "permit" {
        why.push(
            "provision.type must be permit: medledger grants access and has no deny rules (revoke instead)".into(),
        );
    }
    for unsupported in ["provision", "securityLabel", "dataPeriod"] {
        if !p[unsupported].is_null() {
            why.push(format!("provision.{unsupported} cannot be enforced exactly and is not accepted"));
        }
    }
    let actors = p["actor"].as_array().map(Vec::as_slice).unwrap_or_default();
    let grantee = match actors {
        [actor] => {
            let grantee = identity_of(state, &actor["reference"]);
            match grantee.and_then(|g| state.identity(&g)) {
                Some(who) if matches!(who.role, Role::Organisation | Role::Practitioner | Role::SystemClient) => {
                    grantee
                }
                _ => {
                    why.push(format!(
                        "provision.actor must name an organisation, practitioner or system client by its on-chain \
                         identity (reference.identifier of system {IDENTITY_SYSTEM})"
                    ));
                    None
                }
            }
        }
        _ => {
            why.push("provision.actor must name exactly one grantee (one grant each)".into());
            None
        }
    };
    let mut granted = 0u8;
    let action_list = p["action"].as_array().map(Vec::as_slice).unwrap_or_default();
    for action in action_list {
        for coding in codings(action) {
            match (coding["system"].as_str(), coding["code"].as_str()) {
                (Some(CONSENT_ACTION), Some("access")) => granted |= actions::READ,
                (Some(CONSENT_ACTION), Some("correct")) => granted |= actions::WRITE,
                _ => why.push(format!(
                    "provision.action {} is not one of access (read) or correct (write)",
                    coding["code"]
                )),
            }
        }
    }
    if granted == 0 {
        why.push("provision.action must say what is allowed: access (read) and/or correct (write)".into());
    }
    let purposes = p["purpose"].as_array().map(Vec::as_slice).unwrap_or_default();
    let purpose = match purposes {
        [one] if one["system"] == ACT_REASON => one["code"].as_str().and_then(Purpose::parse),
        _ => None,
    };
    if purpose.is_none() {
        why.push(
            "provision.purpose must be exactly one of TREAT, HPAYMT, HOPERAT, HRESCH, ETREAT (v3-ActReason)".into(),
        );
    }
    let period = &p["period"];
    let start = period["start"].as_str().map(medledger_fhir::search::date::parse_range);
    let end = period["end"].as_str().map(medledger_fhir::search::date::parse_range);
    // The narrowest reading of each bound: the latest start and the earliest end it allows.
    let valid_from_ms = match start {
        None => Some(now),
        Some(Some((_, high))) => u64::try_from(high).ok(),
        Some(None) => None,
    };
    let valid_until_ms = match end {
        Some(Some((low, _))) => u64::try_from(low).ok(),
        _ => None,
    };
    if valid_from_ms.is_none() {
        why.push("provision.period.start is not a valid dateTime".into());
    }
    if valid_until_ms.is_none() {
        why.push("provision.period.end is required (a valid dateTime): grants end".into());
    }
    // At most one kind of scope, so that the grant is exactly the Consent.
    let classes: Vec<&serde_json::Value> = p["class"].as_array().into_iter().flatten().collect();
    let codes: Vec<&serde_json::Value> = p["code"].as_array().into_iter().flatten().flat_map(codings).collect();
    let data: Vec<&serde_json::Value> = p["data"].as_array().into_iter().flatten().collect();
    let kinds = [!classes.is_empty(), !codes.is_empty(), !data.is_empty()].iter().filter(|k| **k).count();
    let scope = if kinds > 1 {
        why.push("use one of provision.class, provision.code or provision.data: their combination cannot be enforced exactly".into());
        None
    } else if !classes.is_empty() {
        let mut types = Vec::new();
        for class in classes {
            match (class["system"].as_str(), class["code"].as_str()) {
                (Some(RESOURCE_TYPES), Some(t)) if SERVED_TYPES.contains(&t) => types.push(t.to_owned()),
                _ => why.push(format!("provision.class {} is not a patient-record resource type", class["code"])),
            }
        }
        Some(Scope::ResourceTypes(types))
    } else if !codes.is_empty() {
        let mut categories = Vec::new();
        for code in codes {
            match (code["system"].as_str(), code["code"].as_str()) {
                (Some(CATEGORY_SYSTEM), Some(c)) if medledger_types::is_category(c) => categories.push(c.to_owned()),
                _ => why.push(format!(
                    "provision.code {} is not a medledger consent category ({CATEGORY_SYSTEM})",
                    code["code"]
                )),
            }
        }
        Some(Scope::Categories(categories))
    } else if !data.is_empty() {
        let mut records = Vec::new();
        for item in data {
            let record = item["reference"]["reference"]
                .as_str()
                .and_then(|r| r.split_once('/'))
                .and_then(|(_, id)| RecordId::from_hex(id).ok())
                .filter(|id| state.record(id).is_some_and(|h| Some(h.patient) == patient));
            match (item["meaning"].as_str(), record) {
                (Some("instance"), Some(id)) => records.push(id),
                (Some("instance"), None) => why.push(format!(
                    "provision.data {} is not a record of this patient here",
                    item["reference"]["reference"]
                )),
                _ => why.push("provision.data meaning must be instance (the record itself)".into()),
            }
        }
        Some(Scope::Records(records))
    } else {
        Some(Scope::All)
    };
    let too_many = match &scope {
        Some(Scope::ResourceTypes(v)) | Some(Scope::Categories(v)) => v.len() > limits::SCOPE_ITEMS_MAX,
        Some(Scope::Records(v)) => v.len() > limits::SCOPE_ITEMS_MAX,
        _ => false,
    };
    if too_many {
        why.push(format!("a grant names at most {} items", limits::SCOPE_ITEMS_MAX));
    }
    match (why.is_empty(), patient, grantee, purpose, valid_from_ms, valid_until_ms, scope) {
        (true, Some(patient), Some(grantee), Some(purpose), Some(valid_from_ms), Some(valid_until_ms), Some(scope)) => {
            Ok((
                patient,
                Payload::ConsentGrant {
                    patient,
                    grantee,
                    scope,
                    actions: granted,
                    purpose,
                    valid_from_ms,
                    valid_until_ms,
                },
            ))
        }
        _ => Err(why),
    }
}

/// Whether `caller` may write `patient`'s consent: the patient, or a personal delegate (a
/// parent, a guardian); this node, or another gateway, may not ask itself.
pub fn acts_for(state: &State, caller: &IdentityId, patient: &IdentityId, now_ms: TimestampMs) -> bool {
    let now = now_ms.max(state.head_timestamp_ms());
    let personal = state.is_live_delegate(patient, caller, now)
        && state.identity(caller).is_some_and(|w| matches!(w.role, Role::Patient | Role::Practitioner));
    caller == patient || personal
}

/// A grant (consent, rule-derived access or break-glass) as an R4 Consent.
pub fn consent_resource(state: &State, grant: &medledger_ledger::Grant, at_ms: u64) -> serde_json::Value {
    use medledger_ledger::{GrantOrigin, Scope as GrantScope, actions};
    let identity =
        |id: &IdentityId| serde_json::json!({"identifier": {"system": IDENTITY_SYSTEM, "value": id.to_hex()}});
    let status = if grant.revoked_at.is_some() || at_ms >= grant.valid_until_ms {
        "inactive"
    } else if at_ms < grant.valid_from_ms {
        "proposed"
    } else {
        "active"
    };
    let mut actions_list = Vec::new();
    if grant.actions & actions::READ != 0 {
        actions_list.push(serde_json::json!({"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentaction", "code": "access"}]}));
    }
    if grant.actions & actions::WRITE != 0 {
        actions_list.push(serde_json::json!({"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentaction", "code": "correct"}]}));
    }
    let mut provision = serde_json::json!({
        "type": "permit",
        "period": {"start": instant_from_ms(grant.valid_from_ms), "end": instant_from_ms(grant.valid_until_ms)},
        "actor": [{
            "role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP", "display": "information recipient"}]},
            "reference": identity(&grant.grantee),
        }],
        "action": actions_list,
        "purpose": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": grant.purpose.code()}],
    });
    match &grant.scope {
        GrantScope::All => {}
        GrantScope::ResourceTypes(types) => {
            provision["class"] = serde_json::json!(
                types
                    .iter()
                    .map(|t| serde_json::json!({"system": "http://hl7.org/fhir/resource-types", "code": t}))
                    .collect::<Vec<_>>()
            );
        }
        GrantScope::Categories(categories) => {
            provision["code"] = serde_json::json!(
                categories
                    .iter()
                    .map(|c| serde_json::json!({"coding": [{"system": CATEGORY_SYSTEM, "code": c}]}))
                    .collect::<Vec<_>>()
            );
        }
        GrantScope::Records(records) => {
            provision["data"] = serde_json::json!(records
                .iter()
                .map(|r| {
                    let resource_type = state.record(r).map_or("Resource".to_owned(), |h| h.resource_type.clone());
                    serde_json::json!({"meaning": "instance", "reference": {"reference": format!("{resource_type}/{}", r.to_hex())}})
                })
                .collect::<Vec<_>>());
        }
    }
    let origin = match &grant.origin {
        GrantOrigin::Consent => "consent".to_owned(),
        GrantOrigin::BreakGlass { .. } => "break-glass".to_owned(),
        GrantOrigin::Rule { rule_id, .. } => format!("rule:{}", rule_id.to_hex()),
    };
    serde_json::json!({
        "resourceType": "Consent",
        "id": grant.id.to_hex(),
        "extension": [
            {"url": GRANT_ORIGIN_EXTENSION, "valueString": origin},
            {"url": LEDGER_TX_EXTENSION, "valueString": grant.id.to_hex()},
        ],
        "status": status,
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0", "display": "Patient Consent"}]}],
        "patient": identity(&grant.patient),
        "performer": [identity(&grant.signed_by)],
        "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]},
        "provision": provision,
    })
}
