//! A grant as an R4 Consent: status from its period and revocation, the grantee as the actor,
//! the actions, purpose and scope (resource types, consent categories or records) as the
//! provision, and how the grant came to be (consent, rule or break-glass) as an extension.

use medledger_fhir::instant::instant_from_ms;
use medledger_types::IdentityId;

use crate::fhir::served::{CATEGORY_SYSTEM, GRANT_ORIGIN_EXTENSION, IDENTITY_SYSTEM, LEDGER_TX_EXTENSION};

/// A grant (consent, rule-derived access or break-glass) as an R4 Consent. Read-only for now:
/// writing a Consent does not create a grant yet.
pub(crate) fn consent_resource(
    state: &medledger_ledger::State,
    grant: &medledger_ledger::Grant,
    at_ms: u64,
) -> serde_json::Value {
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
