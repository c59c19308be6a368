//! The one-owner rule: which other Inboxes name an inbox ID (looked up per ID; cluster-wide
//! where the caches do not cover the cluster), refusing an inbox another Inbox owns, and
//! failing closed while the check cannot be made.

use std::collections::{HashMap, HashSet};

use crate::agentsend::{ApiKey, RemoteInbox};
use crate::api::inbox::Reason;
use crate::controller::inbox::events::InboxEvent;

use super::observed::{Claim, Observed};
use super::outcome::{finish, stalled};
use super::report::report;
use super::retry::fail;
use super::step::{Done, Failure, Step, Then};

/// Who else names the inbox IDs `ids`: `Err(FindBindings)` until each has been looked up
/// (`cluster_wide`: see [`Step::FindBindings`]).
pub(super) fn claims_on<'o>(
    o: &'o Observed,
    ids: &[&str],
    cluster_wide: bool,
) -> Result<&'o HashMap<String, Claim>, Box<Step>> {
    let unchecked: Vec<String> = match (&o.bound_elsewhere, &o.bindings_checked) {
        (Some(_), None) => Vec::new(),
        (Some(_), Some(checked)) => ids
            .iter()
            .filter(|id| !checked.contains(**id))
            .map(|id| id.to_string())
            .collect(),
        (None, _) => ids.iter().map(|id| id.to_string()).collect(),
    };
    if cluster_wide && let Some(why) = &o.bindings_unavailable {
        return Err(Box::new(ownership_unverified(o, why)));
    }
    match &o.bound_elsewhere {
        Some(claims) if unchecked.is_empty() => Ok(claims),
        _ => Err(Box::new(Step::FindBindings {
            cluster_wide,
            ids: unchecked,
        })),
    }
}

/// Fail closed: whether another Inbox owns the inbox cannot be checked, so adoption, recovery
/// and deletion wait (a condition, and the pass fails to back off).
fn ownership_unverified(o: &Observed, why: &str) -> Step {
    let msg = format!(
        "waiting: cannot check that no other Inbox in the cluster owns the inbox ({why}); nothing is bound or deleted until the check can be made. In a namespaced install, grant the binding-check role (list Inboxes cluster-wide)"
    );
    let r = report(
        o,
        None,
        None,
        stalled(Reason::OwnershipUnverified, msg.clone()),
    );
    fail(o, Some(r), Failure::OwnershipUnverified(msg))
}

/// The IDs of `inboxes`.
pub(super) fn ids_of(inboxes: &[RemoteInbox]) -> Vec<&str> {
    inboxes.iter().map(|r| r.id.as_str()).collect()
}

/// The inbox IDs other Inboxes name.
pub(super) fn claimed_ids(elsewhere: &HashMap<String, Claim>) -> HashSet<String> {
    elsewhere.keys().cloned().collect()
}

/// Refused: `claim`'s Inbox owns inbox `id`. Nothing is written but the status (which does
/// not record the ID); the Inbox is looked at again when the owner goes away.
pub(super) fn claimed_elsewhere(o: &Observed, id: &str, claim: &Claim) -> Step {
    let msg = format!(
        "inbox {id:?} is already bound to Inbox {}; two Inboxes never share one inbox (this one writes no Secret and its deletion leaves the inbox alone)",
        claim.owner
    );
    let mut r = report(o, None, None, stalled(Reason::Rejected, msg));
    if r.status.inbox_id.as_deref() == Some(id) {
        r.status.inbox_id = None;
        r.changed = o.inbox.status.as_ref() != Some(&r.status);
        if !r.changed {
            r.events.clear();
        }
    }
    Step::Done(Done {
        blocked_on: Some(id.to_string()),
        ..finish(Some(r), Then::Requeue(o.sync_interval.saturating_mul(5)))
    })
}

/// Bind `remote` with `event`, unless another Inbox in the cluster already claims it.
pub(super) fn bind_unless_claimed(
    o: &Observed,
    key: ApiKey,
    remote: RemoteInbox,
    event: InboxEvent,
) -> Step {
    let elsewhere = match claims_on(o, &[&remote.id], true) {
        Ok(e) => e,
        Err(step) => return *step,
    };
    if let Some(claim) = elsewhere.get(&remote.id) {
        return claimed_elsewhere(o, &remote.id, claim);
    }
    Step::Bind { key, remote, event }
}
