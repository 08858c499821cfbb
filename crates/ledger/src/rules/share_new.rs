//! Standing rule `share-new`: "every record committed for me from now on in these categories
//! is readable by G, for this purpose".
//!
//! Each new record (its first version committed while the rule is active) gets a read grant
//! for G scoped to that one record; records that existed before the rule never do, and removing
//! the rule stops it for records committed later (grants already derived stay until the
//! patient revokes them).
//!
//! G receives no category keys under this rule: a category key would also open the older
//! records. G reads through the custodian's node, which decrypts. Follow-up: per-record key
//! wraps (the version's data key wrapped for G) would let G decrypt itself.

use medledger_codec::Writer;
use medledger_types::IdentityId;

use super::{
    CommittedRecord, Derived, InstallContext, InstalledRule, RuleError, SharingRule, check_categories, decode_params,
    may_be_grantee, read_categories, read_purpose, write_categories,
};
use crate::tx::{Purpose, RuleSpec, Scope};

/// Parameters of a `share-new` rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShareNewParams {
    pub grantee: IdentityId,
    pub categories: Vec<String>,
    pub purpose: Purpose,
}

impl ShareNewParams {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.encode(&self.grantee);
        write_categories(&mut w, &self.categories);
        w.u8(self.purpose as u8);
        w.into_bytes()
    }

    pub fn decode(params: &[u8]) -> Result<Self, RuleError> {
        let p = decode_params(params, |r| {
            Ok(Self { grantee: r.decode()?, categories: read_categories(r)?, purpose: read_purpose(r)? })
        })?;
        check_categories(&p.categories)?;
        Ok(p)
    }

    pub fn to_spec(&self) -> RuleSpec {
        RuleSpec::new(ShareNew.kind(), self.encode())
    }
}

pub struct ShareNew;

impl SharingRule for ShareNew {
    fn kind(&self) -> &'static str {
        "share-new"
    }

    fn install(&self, ctx: &InstallContext<'_>, params: &[u8]) -> Result<Vec<Derived>, RuleError> {
        let p = ShareNewParams::decode(params)?;
        if !ctx.for_patient {
            return Err(RuleError::NotAuthorised(
                "only the patient or a delegate of theirs installs a standing sharing rule",
            ));
        }
        if !may_be_grantee(ctx.view, &p.grantee) {
            return Err(RuleError::InvalidParams("grantee must be an organisation, practitioner or system client"));
        }
        Ok(Vec::new())
    }

    fn reacts_to_records(&self) -> bool {
        true
    }

    fn on_record_commit(&self, rule: &InstalledRule, record: &CommittedRecord<'_>) -> Vec<Derived> {
        // Checked at installation; an undecodable rule shares nothing (fails closed).
        let Ok(p) = ShareNewParams::decode(&rule.params) else { return Vec::new() };
        // Only new records: a later version of an older record would expose its earlier versions.
        if record.version != 1 || !p.categories.iter().any(|c| c == record.category) {
            return Vec::new();
        }
        vec![Derived {
            grantee: p.grantee,
            scope: Scope::Records(vec![record.record_id]),
            purpose: p.purpose,
            valid_from_ms: record.timestamp_ms,
            valid_until_ms: u64::MAX,
            authority: rule.id,
            category_keys: false,
        }]
    }
}
