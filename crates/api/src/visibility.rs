//! How much of the ledger a caller sees (`ARCHITECTURE.md`, "What is public").
//!
//! Every transaction names pseudonymous patients together with what was done for them: a
//! record's type, category and custodian, a grant's grantee and purpose, an access's or a
//! break-glass's reason, which organisation registered them. Pseudonymous health metadata is
//! personal data, so the ledger endpoints show it only to those who hold it anyway:
//!
//! - anyone, without a signature: block headers, transaction ids (the log's leaf hashes) and
//!   where each is (height, index, log index), proofs and checkpoints: everything needed to
//!   check that the log is append-only and that a transaction is in it, nothing about what
//!   the transaction does or who signed it;
//! - consortium members (a request signed by an organisation or a validator, `auth.rs`):
//!   raw blocks, and every transaction's kind, signer and nonce. Validators replicate every
//!   block over p2p and their organisations run them, so this shows them nothing new;
//! - a transaction's own signer: that transaction's details (a patient their own grants).
//!
//! Practitioners and system clients are not members here: they are many, and see patients'
//! data only as consent lets them; the chain-wide metadata is their organisation's.
//! Patient identities (`/v1/identities/{id}`) are shown only to the patient and to members; to
//! anyone else a patient's id answers as an unknown one, so a pseudonym cannot be confirmed as
//! a patient of the consortium, nor its activity followed through its nonce.

use axum::{extract::Request, http::header};
use medledger_node::chain::Chain;
use medledger_types::{IdentityId, Role};

use crate::{app::AppState, error::ApiError, signed::authenticated};

/// Who asks, as far as ledger data is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Viewer {
    /// No signature: the public view.
    Anonymous,
    /// A consortium member: an organisation or a validator.
    Member(IdentityId),
    /// Any other registered identity that signed the request.
    Other(IdentityId),
}

impl Viewer {
    /// `caller` (authenticated, or none) classified by its role in `chain`'s state.
    pub(crate) fn of(chain: &Chain, caller: Option<IdentityId>) -> Self {
        let Some(id) = caller else { return Viewer::Anonymous };
        let role = chain.snapshot().identity(&id).map(|i| i.role);
        match role {
            Some(Role::Organisation | Role::Validator) => Viewer::Member(id),
            _ => Viewer::Other(id),
        }
    }

    pub(crate) fn is_member(&self) -> bool {
        matches!(self, Viewer::Member(_))
    }

    /// Whether this viewer is `id` itself.
    pub(crate) fn is(&self, id: &IdentityId) -> bool {
        matches!(self, Viewer::Member(me) | Viewer::Other(me) if me == id)
    }

    /// Whether this viewer sees what a transaction signed by `signer` does and who signed it:
    /// members see every transaction's, anyone else only their own.
    pub(crate) fn sees_details_signed_by(&self, signer: &IdentityId) -> bool {
        self.is_member() || self.is(signer)
    }
}

/// The caller of a request to an endpoint whose answer depends on who asks: `None` without an
/// `Authorization` header (the public view), else the identity whose signature verifies, or
/// 401 if it does not (a caller who signs wants more than the public view and should learn
/// why it did not get it).
pub(crate) async fn caller(app: &AppState, request: Request) -> Result<Option<IdentityId>, ApiError> {
    if !request.headers().contains_key(header::AUTHORIZATION) {
        return Ok(None);
    }
    authenticated(app, request).await.map(|(id, _)| Some(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_see_every_transaction_others_their_own() {
        let (me, other) = (IdentityId([1; 32]), IdentityId([2; 32]));
        assert!(Viewer::Member(me).sees_details_signed_by(&other));
        assert!(Viewer::Other(me).sees_details_signed_by(&me));
        assert!(!Viewer::Other(me).sees_details_signed_by(&other));
        assert!(!Viewer::Anonymous.sees_details_signed_by(&other));
        assert!(!Viewer::Anonymous.is(&me));
    }
}
