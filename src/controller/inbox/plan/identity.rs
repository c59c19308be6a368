//! Which AgentSend inbox is this Inbox's, once one is named: the binding checked before it
//! converges (immutable fields, the one-owner rule, the account it was made in), an
//! annotation without proof refused, a vanished inbox re-created or reported, an inbox
//! adopted by `spec.inboxId` or observed by `spec.address`.

use crate::agentsend::{ApiKey, InboxState};
use crate::api::inbox::{self, Reason};
use crate::controller::inbox::addresses::FieldMismatch;
use crate::controller::inbox::events::{EventKind, InboxEvent};
use crate::controller::ownership::proof::Binding;

use super::claims::{bind_unless_claimed, claimed_elsewhere, claims_on};
use super::converge::converge;
use super::create::{listed, mark_then_create};
use super::observed::{Lookup, Observed, recorded_identity};
use super::outcome::{done, rejected, stalled};
use super::report::report;
use super::retry::api_failure;
use super::step::{Step, Then};
use crate::controller::inbox::addresses;

/// The `agentsend.io/inbox-id` annotation names an inbox without the operator's proof that it
/// bound it here: written by hand, copied from another Inbox, or restored into another
/// namespace. Never bound, never deleted, nothing created (it may be this Inbox's).
pub(super) fn unproven_claim(o: &Observed, id: &str) -> Step {
    // Who owns it, for the message (cluster-wide; the refusal stands without the answer).
    let owner = if o.bindings_unavailable.is_some() {
        String::new()
    } else {
        match claims_on(o, &[id], true) {
            Ok(elsewhere) => elsewhere
                .get(id)
                .map(|claim| format!(" (it is bound to Inbox {})", claim.owner))
                .unwrap_or_default(),
            Err(step) => return *step,
        }
    };
    let msg = format!(
        "the {} annotation names inbox {id:?}{owner}, but without this operator's proof that it bound that inbox to this Inbox (written by hand, copied from another Inbox, or restored into another namespace or cluster): it is not bound, nothing is created, and deleting this Inbox leaves it alone. To take it, set spec.inboxId: {id} (explicit adoption); to create a new inbox instead, remove the annotation",
        inbox::ANNOTATION_INBOX_ID
    );
    done(
        report(o, None, None, stalled(Reason::Rejected, msg)),
        Then::Settle,
    )
}

/// The Inbox is bound to `b`: check immutability and the account, observe, converge.
pub(super) fn bound(o: &Observed, key: ApiKey, b: &Binding) -> Step {
    let id = b.id.as_str();
    // The binding's account is the current key's: a 404 means the inbox is gone. Otherwise
    // (another key, or an account not recorded) only a direct GET that finds it says the
    // key reaches the same account; a 404 then says nothing about the inbox.
    let current = o.account_of(&key);
    let same_account = b.account.as_deref() == Some(current.as_str());
    // Strict identity for inboxes this operator created; an adopted or observed one need
    // only match the fields the spec sets.
    let strict = !o.adopted() && !o.observing();
    if !o.bound_now {
        if let Some(m) = addresses::inbox_id_changed(&o.inbox.spec, id) {
            return immutable(o, &m);
        }
        // Against the recorded identity: no AgentSend call needed.
        if let Some(recorded) = recorded_identity(&o.inbox, id)
            && let Some(m) = addresses::identity_mismatch(&o.inbox.spec, &recorded, strict)
        {
            return immutable(o, &m);
        }
        // One owner: an ID named by the annotation or status is checked like spec.inboxId.
        let elsewhere = match claims_on(o, &[id], false) {
            Ok(e) => e,
            Err(step) => return *step,
        };
        if let Some(claim) = elsewhere.get(id).filter(|c| c.prior) {
            return claimed_elsewhere(o, id, claim);
        }
    }
    let remote = match &o.remote {
        None if same_account => {
            return Step::Observe {
                key,
                id: id.to_string(),
            };
        }
        None => {
            return Step::Fetch {
                key,
                id: id.to_string(),
            };
        }
        Some(Lookup::Failed(e)) => return api_failure(o, e),
        Some(Lookup::Gone) if !same_account => return account_changed(o, b, &current),
        Some(Lookup::Gone) => return vanished(o, key, id),
        Some(Lookup::Found(r)) if r.status == InboxState::Deleted && !same_account => {
            return account_changed(o, b, &current);
        }
        Some(Lookup::Found(r)) if r.status == InboxState::Deleted => return vanished(o, key, id),
        Some(Lookup::Found(r)) => r,
    };
    if !o.bound_now
        && let Some(m) = addresses::identity_mismatch(&o.inbox.spec, remote, strict)
    {
        return immutable(o, &m);
    }
    if !same_account || o.inbox.annotation(inbox::ANNOTATION_INBOX_ID) != Some(id) {
        // Bound through status only (a GitOps replace dropped the annotations, or an earlier
        // version bound it), or another key of the same account reached it (rotation): write
        // the binding and its proof for this key.
        return Step::RecordBinding {
            id: id.to_string(),
            key,
        };
    }
    if !o.bound_now
        && o.refresh.is_none()
        && let Some(value) = o.inbox.refresh_wanted()
    {
        // Queued, not awaited: the refresh scan wakes this Inbox when it has served it.
        return Step::RequestRefresh {
            key,
            value: value.to_string(),
        };
    }
    converge(o, key, remote)
}

fn immutable(o: &Observed, m: &FieldMismatch) -> Step {
    let r = stalled(
        Reason::ImmutableFieldChanged,
        addresses::immutable_message(m),
    );
    done(report(o, None, None, r), Then::Settle)
}

/// The bound inbox is not found with the current key, and the binding was made in another
/// account (or records none): nothing is created; the user points the credentials back, or
/// releases the Inbox.
fn account_changed(o: &Observed, b: &Binding, current: &str) -> Step {
    let id = &b.id;
    let msg = match &b.account {
        Some(bound_in) => format!(
            "the credentials now reach another AgentSend account than the one inbox {id:?} was bound in (the account of the key with fingerprint {bound_in}; the current key's is {current}), and that key does not find it; nothing is created. Point spec.credentials, spec.accountRef or the key Secret back at the inbox's account, or set deletionPolicy: Orphan and delete this Inbox to release it"
        ),
        None => format!(
            "inbox {id:?} is not found with the current credentials, and its binding does not record which account it was made in (bound by an earlier version, or its annotations were replaced): it may be in another account; nothing is created. Point the credentials at the inbox's account, or set deletionPolicy: Orphan and delete this Inbox to release it"
        ),
    };
    done(
        report(o, None, None, stalled(Reason::AccountChanged, msg)),
        Then::Requeue(o.sync_interval),
    )
}

/// The bound inbox no longer exists in AgentSend.
fn vanished(o: &Observed, key: ApiKey, id: &str) -> Step {
    if !o.forgotten {
        return Step::Forget {
            key,
            id: id.to_string(),
        };
    }
    if o.observing() {
        let msg = format!(
            "the observed inbox {id:?} no longer exists in this AgentSend account; managementPolicy Observe never re-creates it (set Manage to let the operator create a new one)"
        );
        return done(
            report(o, None, None, stalled(Reason::InboxNotFound, msg)),
            Then::Requeue(o.sync_interval.saturating_mul(5)),
        );
    }
    if o.adopted() {
        let msg = format!(
            "the adopted inbox {id:?} no longer exists in this AgentSend account; set spec.inboxId to an existing inbox or remove it to create a new one"
        );
        return done(
            report(o, None, None, stalled(Reason::InboxNotFound, msg)),
            Then::Requeue(o.sync_interval.saturating_mul(5)),
        );
    }
    // Unbind (empty annotation: explicitly unbound) and mark the create pending in one
    // write; the new inbox gets the address the app already uses.
    mark_then_create(o, key, Some(id))
}

/// Adopt the existing inbox `spec.inboxId` names.
pub(super) fn adopt(o: &Observed, key: ApiKey, id: &str) -> Step {
    let remote = match &o.remote {
        None => {
            return Step::Fetch {
                key,
                id: id.to_string(),
            };
        }
        Some(Lookup::Failed(e)) => return api_failure(o, e),
        Some(Lookup::Gone) => {
            let msg = format!(
                "spec.inboxId {id:?} does not exist in this AgentSend account (or belongs to another account); nothing was created"
            );
            return done(
                report(o, None, None, stalled(Reason::InboxNotFound, msg)),
                Then::Requeue(o.sync_interval.saturating_mul(5)),
            );
        }
        Some(Lookup::Found(r)) => r,
    };
    if let Some(m) = addresses::identity_mismatch(&o.inbox.spec, remote, false) {
        return rejected(o, format!("cannot adopt inbox {id:?}: {}", m.message));
    }
    let elsewhere = match claims_on(o, &[id], true) {
        Ok(e) => e,
        Err(step) => return *step,
    };
    if let Some(claim) = elsewhere.get(id) {
        return claimed_elsewhere(o, id, claim);
    }
    let note = format!(
        "adopted existing AgentSend inbox {} ({})",
        id, remote.address
    );
    Step::Bind {
        key,
        remote: remote.clone(),
        event: InboxEvent::new(EventKind::Adopted, note),
    }
}

/// Observe-only without `spec.inboxId`: bind the inbox of exactly `spec.address` (one list
/// scan); nothing is ever created.
pub(super) fn observe_by_address(o: &Observed, key: ApiKey) -> Step {
    let Some(address) = o.inbox.spec.address.as_deref() else {
        return rejected(
            o,
            "managementPolicy Observe needs spec.inboxId or spec.address to find the inbox to observe (nothing is created)".into(),
        );
    };
    let candidates = match listed(o, &key) {
        Err(step) => return *step,
        Ok(c) => c,
    };
    let Some(remote) = addresses::observed_by_address(&o.inbox.spec, candidates) else {
        let msg = format!(
            "no inbox with the address {address:?} (and the spec's other identity fields) exists in this AgentSend account; managementPolicy Observe never creates one"
        );
        return done(
            report(o, None, None, stalled(Reason::InboxNotFound, msg)),
            Then::Requeue(o.sync_interval.saturating_mul(5)),
        );
    };
    let note = format!(
        "observing existing AgentSend inbox {} ({}); it is never created, re-created or deleted",
        remote.id, remote.address
    );
    bind_unless_claimed(
        o,
        key,
        remote.clone(),
        InboxEvent::new(EventKind::Adopted, note),
    )
}
