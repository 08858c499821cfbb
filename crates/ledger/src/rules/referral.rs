//! Referrals without the patient's key online.
//!
//! The patient installs a `referral-consent`: "organisation R may refer me, for these
//! categories, for at most N days, for this purpose". R (or its staff or clients) later
//! installs a `referral` naming that authorisation and an organisation B: B gains read access
//! to the named categories for the named days. A referral outside the authorisation (more
//! categories, more days, another purpose, a removed authorisation, another referrer) is
//! refused by consensus. Removing a referral (by R or the patient) revokes B's access; removing
//! the authorisation stops new referrals but keeps those already made (the patient revokes
//! them one by one if they wish).

use medledger_codec::Writer;
use medledger_types::{IdentityId, Role, TxId, limits};

use super::{
    Derived, InstallContext, RuleError, SharingRule, acts_for, check_categories, days_ms, decode_params,
    read_categories, read_purpose, write_categories,
};
use crate::tx::{Purpose, RuleSpec, Scope};

/// Parameters of a `referral-consent` rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReferralConsentParams {
    /// The organisation allowed to refer the patient.
    pub referrer: IdentityId,
    pub categories: Vec<String>,
    pub max_days: u32,
    pub purpose: Purpose,
}

impl ReferralConsentParams {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.encode(&self.referrer);
        write_categories(&mut w, &self.categories);
        w.u32(self.max_days).u8(self.purpose as u8);
        w.into_bytes()
    }

    pub fn decode(params: &[u8]) -> Result<Self, RuleError> {
        let p = decode_params(params, |r| {
            Ok(Self {
                referrer: r.decode()?,
                categories: read_categories(r)?,
                max_days: r.u32("max days")?,
                purpose: read_purpose(r)?,
            })
        })?;
        check_categories(&p.categories)?;
        Ok(p)
    }

    pub fn to_spec(&self) -> RuleSpec {
        RuleSpec::new(ReferralConsent.kind(), self.encode())
    }
}

/// Parameters of a `referral` rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReferralParams {
    /// The patient's `referral-consent` rule this referral relies on.
    pub authorisation: TxId,
    /// The organisation referred to.
    pub to: IdentityId,
    pub categories: Vec<String>,
    pub days: u32,
    pub purpose: Purpose,
}

impl ReferralParams {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.encode(&self.authorisation).encode(&self.to);
        write_categories(&mut w, &self.categories);
        w.u32(self.days).u8(self.purpose as u8);
        w.into_bytes()
    }

    pub fn decode(params: &[u8]) -> Result<Self, RuleError> {
        let p = decode_params(params, |r| {
            Ok(Self {
                authorisation: r.decode()?,
                to: r.decode()?,
                categories: read_categories(r)?,
                days: r.u32("days")?,
                purpose: read_purpose(r)?,
            })
        })?;
        check_categories(&p.categories)?;
        Ok(p)
    }

    pub fn to_spec(&self) -> RuleSpec {
        RuleSpec::new(Referral.kind(), self.encode())
    }
}

/// The patient authorises an organisation to refer them (derives nothing itself).
pub struct ReferralConsent;

impl SharingRule for ReferralConsent {
    fn kind(&self) -> &'static str {
        "referral-consent"
    }

    fn install(&self, ctx: &InstallContext<'_>, params: &[u8]) -> Result<Vec<Derived>, RuleError> {
        let p = ReferralConsentParams::decode(params)?;
        if !ctx.for_patient {
            return Err(RuleError::NotAuthorised("only the patient or a delegate of theirs authorises referrals"));
        }
        if ctx.view.identity(&p.referrer).map(|i| i.role) != Some(Role::Organisation) {
            return Err(RuleError::InvalidParams("the referrer must be a member organisation"));
        }
        if p.max_days == 0 || p.max_days > limits::RULE_GRANT_DAYS_MAX {
            return Err(RuleError::InvalidParams("max days out of range"));
        }
        Ok(Vec::new())
    }
}

/// A referral by an authorised organisation: read access for the organisation referred to.
pub struct Referral;

impl SharingRule for Referral {
    fn kind(&self) -> &'static str {
        "referral"
    }

    fn install(&self, ctx: &InstallContext<'_>, params: &[u8]) -> Result<Vec<Derived>, RuleError> {
        let p = ReferralParams::decode(params)?;
        let authorisation = ctx
            .view
            .rule(&p.authorisation)
            .filter(|r| r.kind == ReferralConsent.kind() && r.patient == ctx.patient && r.is_patients_own())
            .ok_or(RuleError::ExceedsConsent("no referral authorisation of this patient with that id"))?;
        if !authorisation.is_active() {
            return Err(RuleError::ExceedsConsent("the patient removed this referral authorisation"));
        }
        let allowed = ReferralConsentParams::decode(&authorisation.params)?;
        if !acts_for(ctx.signer, &allowed.referrer) {
            return Err(RuleError::NotAuthorised(
                "a referral is signed by the authorised referrer or its staff or clients",
            ));
        }
        if ctx.view.identity(&p.to).map(|i| i.role) != Some(Role::Organisation) || p.to == allowed.referrer {
            return Err(RuleError::InvalidParams("a referral is to another member organisation"));
        }
        if !p.categories.iter().all(|c| allowed.categories.contains(c)) {
            return Err(RuleError::ExceedsConsent("categories beyond the authorisation"));
        }
        if p.days == 0 || p.days > allowed.max_days {
            return Err(RuleError::ExceedsConsent("longer than the authorisation allows"));
        }
        if p.purpose != allowed.purpose {
            return Err(RuleError::ExceedsConsent("purpose differs from the authorisation"));
        }
        Ok(vec![Derived {
            grantee: p.to,
            scope: Scope::Categories(p.categories),
            purpose: p.purpose,
            valid_from_ms: ctx.timestamp_ms,
            valid_until_ms: ctx.timestamp_ms.saturating_add(days_ms(p.days)),
            authority: authorisation.id,
            // Whole categories: the referred organisation may receive those category keys,
            // exactly as under a consent grant of the same scope.
            category_keys: true,
        }])
    }
}
