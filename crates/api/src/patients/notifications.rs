//! `GET /v1/patients/{id}/notifications?since_ms=T`: what the patient is told about since a
//! time: accesses (one notification per accessor's refusals), break-glass and its reviews,
//! delegates and what they did, key wraps for grantees, and grants about to expire.

use std::collections::HashMap;

use axum::{
    Json,
    extract::{Path, Query, Request, State},
};
use medledger_ledger::{AccessOutcome, Grant, State as LedgerState};
use medledger_node::index::{
    AccessEntry, BreakGlassEntry, DelegateAct, DelegateActEntry, DelegationChange, DelegationEntry, IndexVec,
    KeyShareEntry, PatientIndex, ReviewEntry, TxPosition,
};
use medledger_types::{IdentityId, TimestampMs};
use serde::Serialize;

use crate::{
    app::AppState,
    clock::now_ms,
    error::ApiError,
    params::{optional_param, parse_identity_id},
    patients::common::{
        AccessView, EXPIRING_WITHIN_MS, NOTIFICATIONS_MAX, access_view, origin_code, render, the_patient,
    },
};

#[derive(Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
enum Notification {
    /// Someone accessed (or was refused) the patient's data.
    Access {
        #[serde(flatten)]
        entry: AccessView,
        /// Read under a break-glass declaration, not the patient's consent.
        break_glass: bool,
        /// For a refusal: how many refused attempts by this accessor (since `since_ms`) this
        /// notification stands for, the latest shown. One accessor's refused attempts are one
        /// notification, so a flood of them cannot push anything else out of view.
        #[serde(skip_serializing_if = "Option::is_none")]
        refused_attempts: Option<usize>,
    },
    /// A practitioner declared emergency access.
    BreakGlass {
        /// The declaration's transaction id, which is also its grant id.
        tx_id: String,
        log_index: u64,
        committed_at_ms: TimestampMs,
        practitioner: String,
        reason: String,
        window_ms: u64,
    },
    /// An organisation reviewed a break-glass access to the patient's data.
    BreakGlassReviewed {
        /// The review transaction.
        tx_id: String,
        log_index: u64,
        committed_at_ms: TimestampMs,
        /// The declaration reviewed (also its grant id).
        break_glass_tx: String,
        reviewer: String,
        /// `justified` or `unjustified` (an unjustified access still open ended at once).
        verdict: &'static str,
        reason: String,
    },
    /// The patient appointed a delegate.
    DelegateAppointed {
        tx_id: String,
        log_index: u64,
        committed_at_ms: TimestampMs,
        delegate: String,
        valid_until_ms: TimestampMs,
    },
    /// A delegation ended: the patient dismissed the delegate, or the delegate stepped down.
    DelegateDismissed { tx_id: String, log_index: u64, committed_at_ms: TimestampMs, delegate: String, by: String },
    /// A delegate granted access to the patient's data (the grant id is `tx_id`).
    DelegateGrant { tx_id: String, log_index: u64, committed_at_ms: TimestampMs, delegate: String, grantee: String },
    /// A delegate revoked a grant of the patient.
    DelegateRevoke { tx_id: String, log_index: u64, committed_at_ms: TimestampMs, delegate: String, grant_id: String },
    /// One of the patient's category keys was wrapped for a grantee.
    GrantWrap {
        tx_id: String,
        log_index: u64,
        committed_at_ms: TimestampMs,
        recipient: String,
        custodian: String,
        category: String,
        epoch: u32,
    },
    /// A live grant ends within [`EXPIRING_WITHIN_MS`].
    GrantExpiring {
        grant_id: String,
        grantee: String,
        origin: &'static str,
        valid_until_ms: TimestampMs,
        expires_in_ms: u64,
    },
}

#[derive(Serialize)]
pub(crate) struct NotificationsView {
    patient: String,
    since_ms: TimestampMs,
    /// The newest block time covered: pass it as `since_ms` next time to get only what is new.
    until_ms: TimestampMs,
    total: usize,
    truncated: bool,
    notifications: Vec<Notification>,
}

/// Entries of `items` (in commit order) committed strictly after `since_ms`.
fn since<T>(items: &IndexVec<T>, since_ms: TimestampMs, position: impl Fn(&T) -> &TxPosition) -> Vec<&T> {
    items.iter_from(items.partition_point(|i| position(i).committed_at_ms <= since_ms)).collect()
}

/// An event the patient is told about, by reference until it is known to be kept.
enum Event<'a> {
    /// An access, and for a refusal how many refusals of its accessor it stands for.
    Access(&'a AccessEntry, usize),
    BreakGlass(&'a BreakGlassEntry),
    Reviewed(&'a ReviewEntry),
    Delegation(&'a DelegationEntry),
    DelegateAct(&'a DelegateActEntry),
    GrantWrap(&'a KeyShareEntry),
}

impl Event<'_> {
    fn view(&self, state: &LedgerState) -> Notification {
        match self {
            Event::Access(a, attempts) => Notification::Access {
                entry: access_view(a, state),
                break_glass: a.event.outcome == AccessOutcome::BreakGlass,
                refused_attempts: (a.event.outcome == AccessOutcome::Denied).then_some(*attempts),
            },
            Event::BreakGlass(b) => Notification::BreakGlass {
                tx_id: b.position.tx_id.to_hex(),
                log_index: b.position.log_index,
                committed_at_ms: b.position.committed_at_ms,
                practitioner: b.practitioner.to_hex(),
                reason: b.reason.clone(),
                window_ms: b.window_ms,
            },
            Event::Reviewed(r) => Notification::BreakGlassReviewed {
                tx_id: r.position.tx_id.to_hex(),
                log_index: r.position.log_index,
                committed_at_ms: r.position.committed_at_ms,
                break_glass_tx: r.break_glass_tx.to_hex(),
                reviewer: r.reviewer.to_hex(),
                verdict: r.verdict.code(),
                reason: r.reason.clone(),
            },
            Event::Delegation(d) => {
                let (tx_id, log_index, committed_at_ms) =
                    (d.position.tx_id.to_hex(), d.position.log_index, d.position.committed_at_ms);
                let delegate = d.delegate.to_hex();
                match d.change {
                    DelegationChange::Appointed { valid_until_ms } => {
                        Notification::DelegateAppointed { tx_id, log_index, committed_at_ms, delegate, valid_until_ms }
                    }
                    DelegationChange::Dismissed { by } => {
                        Notification::DelegateDismissed { tx_id, log_index, committed_at_ms, delegate, by: by.to_hex() }
                    }
                }
            }
            Event::DelegateAct(a) => {
                let (tx_id, log_index, committed_at_ms) =
                    (a.position.tx_id.to_hex(), a.position.log_index, a.position.committed_at_ms);
                let delegate = a.delegate.to_hex();
                match a.act {
                    DelegateAct::Grant { grantee } => Notification::DelegateGrant {
                        tx_id,
                        log_index,
                        committed_at_ms,
                        delegate,
                        grantee: grantee.to_hex(),
                    },
                    DelegateAct::Revoke { grant_id } => Notification::DelegateRevoke {
                        tx_id,
                        log_index,
                        committed_at_ms,
                        delegate,
                        grant_id: grant_id.to_hex(),
                    },
                }
            }
            Event::GrantWrap(s) => Notification::GrantWrap {
                tx_id: s.position.tx_id.to_hex(),
                log_index: s.position.log_index,
                committed_at_ms: s.position.committed_at_ms,
                recipient: s.recipient.to_hex(),
                custodian: s.custodian.to_hex(),
                category: s.category.clone(),
                epoch: s.epoch,
            },
        }
    }
}

fn notifications_of(
    state: &LedgerState,
    index: &PatientIndex,
    grants: Vec<&Grant>,
    patient: &IdentityId,
    since_ms: TimestampMs,
    now: TimestampMs,
) -> (usize, Vec<Notification>) {
    // Events since `since_ms`, ordered by their place in the log; views are built only for the
    // ones kept, so a long history costs references, not JSON.
    let mut events: Vec<((u64, usize), Event<'_>)> = Vec::new();
    if let Some(entry) = index.patient(patient) {
        let access = since(&entry.access, since_ms, |a| &a.position);
        // One notification per accessor's refusals (the latest, with their count).
        let mut refusals: HashMap<IdentityId, (usize, usize)> = HashMap::new();
        for (i, a) in access.iter().enumerate().filter(|(_, a)| a.event.outcome == AccessOutcome::Denied) {
            let entry = refusals.entry(a.event.accessor).or_insert((0, i));
            *entry = (entry.0 + 1, i);
        }
        events.extend(access.iter().enumerate().filter_map(|(i, a)| {
            let attempts = match a.event.outcome {
                AccessOutcome::Denied => match refusals.get(&a.event.accessor) {
                    Some((count, last)) if *last == i => *count,
                    _ => return None,
                },
                _ => 1,
            };
            Some(((a.position.log_index, usize::from(a.event_index)), Event::Access(a, attempts)))
        }));
        let declared = since(&entry.break_glass, since_ms, |b| &b.position);
        events.extend(declared.iter().map(|b| ((b.position.log_index, 0), Event::BreakGlass(b))));
        // One entry per transaction in each of these lists: the log index orders them.
        let reviews = since(&entry.reviews, since_ms, |r| &r.position);
        events.extend(reviews.iter().map(|r| ((r.position.log_index, 0), Event::Reviewed(r))));
        let delegations = since(&entry.delegations, since_ms, |d| &d.position);
        events.extend(delegations.iter().map(|d| ((d.position.log_index, 0), Event::Delegation(d))));
        let acts = since(&entry.delegate_acts, since_ms, |a| &a.position);
        events.extend(acts.iter().map(|a| ((a.position.log_index, 0), Event::DelegateAct(a))));
        let wraps = since(&entry.key_shares, since_ms, |s| &s.position);
        events.extend(
            wraps
                .iter()
                .enumerate()
                .filter(|(_, s)| s.is_grant_wrap())
                .map(|(i, s)| ((s.position.log_index, i), Event::GrantWrap(s))),
        );
    }
    events.sort_by_key(|(k, _)| *k);
    let expiring: Vec<Notification> = grants
        .into_iter()
        .filter(|g| g.is_live(now) && g.valid_until_ms - now <= EXPIRING_WITHIN_MS)
        .map(|g| Notification::GrantExpiring {
            grant_id: g.id.to_hex(),
            grantee: g.grantee.to_hex(),
            origin: origin_code(&g.origin),
            valid_until_ms: g.valid_until_ms,
            expires_in_ms: g.valid_until_ms - now,
        })
        .take(NOTIFICATIONS_MAX)
        .collect();
    let total = events.len() + expiring.len();
    // Expiring grants are current, so they stay; the oldest events give way.
    let kept = NOTIFICATIONS_MAX.saturating_sub(expiring.len()).min(events.len());
    let mut all: Vec<Notification> = events[events.len() - kept..].iter().map(|(_, e)| e.view(state)).collect();
    all.extend(expiring);
    (total, all)
}

pub(crate) async fn notifications(
    State(app): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    request: Request,
) -> Result<Json<NotificationsView>, ApiError> {
    let patient = parse_identity_id(&id)?;
    let since_ms = optional_param(&query, "since_ms")?.unwrap_or(0);
    let snapshot = the_patient(&app, patient, request).await?;
    let now = now_ms();
    render(snapshot, move |state| {
        let index = state.index();
        let grants: Vec<&Grant> = state.grants_of(&patient).collect();
        let (total, notifications) = notifications_of(state, index, grants, &patient, since_ms, now);
        Ok(Json(NotificationsView {
            patient: patient.to_hex(),
            since_ms,
            until_ms: state.head_timestamp_ms(),
            total,
            truncated: total > notifications.len(),
            notifications,
        }))
    })
    .await
}
