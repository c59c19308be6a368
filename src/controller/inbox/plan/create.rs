//! Creating the inbox, safely across crashes: the create-pending mark (with its proof)
//! before the POST, the bind after it, and the recovery of an interrupted create (look the
//! address up; bind it only on proof, create again, or leave it to a human).

use crate::agentsend::{ApiError, ApiKey, RemoteInbox};
use crate::api::inbox::{self, Inbox, Reason};
use crate::controller::inbox::addresses::{AddressLookup, Recovery};
use crate::controller::inbox::events::{EventKind, InboxEvent};
use crate::controller::inbox::status::{self, Readiness};
use crate::controller::ownership::proof::{Origin, Pending};

use super::claims::{bind_unless_claimed, claimed_ids, claims_on, ids_of};
use super::converge::{checked_secret_spec, rendered_secret};
use super::observed::{Marked, Observed, recorded_identity};
use super::outcome::{done, done_quietly, progress, rejected, stalled};
use super::report::report;
use super::retry::{api_failure, stale_view_retry};
use super::step::{Step, Then};
use crate::controller::inbox::addresses;

/// No inbox bound: mark and create, or recover an interrupted create. Only a mark this
/// operator can prove it wrote for this Inbox is acted on as this Inbox's create.
pub(super) fn create_or_recover(o: &Observed, key: ApiKey) -> Step {
    match o.pending() {
        None if rejected_at_this_generation(&o.inbox) => {
            // The API refused this exact spec; it will refuse it again.
            done_quietly(Then::Settle)
        }
        None => mark_then_create(o, key, None),
        Some(Pending::Proven { address, origin }) => recover(o, key, address, origin),
        Some(Pending::Unproven { address }) => unproven_mark(o, key, address),
        Some(Pending::Legacy(since)) => recover_legacy(o, key, since),
    }
}

/// Persist the pending mark naming the address to create, with its proof — only on a
/// current view (a stale one could miss a binding recorded meanwhile) — then create.
/// `unbind`: the vanished inbox this create replaces (its binding is cleared in the same
/// write, its address reused).
///
/// A generated address is nobody else's. Any other (the user's `spec.address`, or the
/// vanished inbox's) is first looked up in the account: held already, it is someone else's
/// and never bound; absent, the mark's proof records the server's time of that listing, so
/// that an inbox of that address found later can be told from one that existed before.
pub(super) fn mark_then_create(o: &Observed, key: ApiKey, unbind: Option<&str>) -> Step {
    match (o.marked, pending_address(o)) {
        (None, _) => {
            let previous = unbind
                .and_then(|id| recorded_identity(&o.inbox, id))
                .map(|r| r.address);
            let address =
                addresses::address_to_create(&o.inbox.spec, previous.as_deref(), &o.random_local);
            let origin = if o.inbox.spec.address.is_none() && previous.is_none() {
                Origin::Random
            } else {
                let candidates = match listed(o, &key) {
                    Err(step) => return *step,
                    Ok(c) => c,
                };
                if let Some(holder) = addresses::holder_of(&o.inbox.spec, &address, candidates) {
                    return address_in_use(o, &address, holder);
                }
                Origin::SeenAbsent(o.listed_at)
            };
            Step::MarkPending {
                unbind: unbind.map(str::to_string),
                address,
                origin,
                resumes: false,
                key,
            }
        }
        (Some(Marked::Yes), Some(address)) => create(o, key, address),
        (Some(_), _) => stale_view_retry(o),
    }
}

/// The address the proven pending mark names (`None`: no mark, or one without proof).
pub(super) fn pending_address(o: &Observed) -> Option<&str> {
    match o.pending()? {
        Pending::Proven { address, .. } => Some(address),
        Pending::Unproven { .. } | Pending::Legacy(_) => None,
    }
}

/// The account's inboxes, listed (after the last create attempt of this pass).
pub(super) fn listed<'o>(o: &'o Observed, key: &ApiKey) -> Result<&'o [RemoteInbox], Box<Step>> {
    match &o.candidates {
        None => Err(Box::new(Step::ListCandidates { key: key.clone() })),
        Some(Err(e)) => Err(Box::new(api_failure(o, e))),
        Some(Ok(c)) => Ok(c),
    }
}

/// A create of `address` may have happened without being recorded: look it up exactly
/// before creating again with the same address. Found, it is bound only if the mark's
/// proof shows it could not have existed before this Inbox asked for it.
fn recover(o: &Observed, key: ApiKey, address: &str, origin: Origin) -> Step {
    if o.progress != Some(Reason::Creating) {
        return progress(
            o,
            Readiness::progressing(
                Reason::Creating,
                format!("resuming the interrupted create of the AgentSend inbox {address:?}"),
            ),
        );
    }
    let candidates = match listed(o, &key) {
        Err(step) => return *step,
        Ok(c) => c,
    };
    match addresses::find_address(&o.inbox.spec, address, origin, candidates) {
        AddressLookup::Absent if origin == Origin::Random => create(o, key, address),
        // Absent: renew the proof of absence (this listing's time), then create again; a
        // create long after the first listing would otherwise fall outside its window.
        AddressLookup::Absent if o.marked.is_none() => Step::MarkPending {
            unbind: None,
            address: address.to_string(),
            origin: Origin::SeenAbsent(o.listed_at),
            resumes: true,
            key,
        },
        AddressLookup::Absent => create(o, key, address),
        AddressLookup::Ours(remote) => bind_recovered(o, key, remote),
        AddressLookup::Older(remote) => address_in_use(o, address, &remote),
    }
}

/// A pending mark without this operator's proof (written by hand, copied, or by a version
/// that wrote none): its address is never bound and never deleted. If the account does not
/// hold it, nothing is at stake and the create starts over with a mark of its own; if it
/// does, a human decides.
fn unproven_mark(o: &Observed, key: ApiKey, address: &str) -> Step {
    let candidates = match listed(o, &key) {
        Err(step) => return *step,
        Ok(c) => c,
    };
    let Some(holder) = addresses::holder_of(&o.inbox.spec, address, candidates) else {
        return mark_then_create(o, key, None);
    };
    let msg = format!(
        "the {} annotation names {address:?}, which is inbox {} in this AgentSend account, but carries no proof that this operator started that create for this Inbox (written by hand, copied from another Inbox, or left by an earlier version): it is not bound, and deleting this Inbox leaves it alone. If it is this Inbox's, set spec.inboxId: {} to adopt it; otherwise remove the annotation to create a new inbox",
        inbox::ANNOTATION_CREATE_PENDING,
        holder.id,
        holder.id
    );
    done(
        report(o, None, None, stalled(Reason::CreationUncertain, msg)),
        Then::Settle,
    )
}

/// The pending address is ours: bind it unless another Inbox holds it.
fn bind_recovered(o: &Observed, key: ApiKey, remote: RemoteInbox) -> Step {
    let note = format!(
        "created AgentSend inbox {} ({}); recovered after an interrupted create",
        remote.id, remote.address
    );
    bind_unless_claimed(o, key, remote, InboxEvent::new(EventKind::Created, note))
}

/// The account already had the address before this Inbox asked for it: never bound.
fn address_in_use(o: &Observed, address: &str, remote: &RemoteInbox) -> Step {
    address_taken(
        o,
        format!(
            "the address {address:?} already belongs to inbox {} in this AgentSend account, created before this Inbox asked for it; set spec.inboxId: {} to adopt it, or choose another address",
            remote.id, remote.id
        ),
    )
}

/// Nothing was created for this Inbox: clear the mark, then `Rejected` until the spec changes.
fn address_taken(o: &Observed, msg: String) -> Step {
    if !o.pending_cleared
        && o.inbox
            .annotation(inbox::ANNOTATION_CREATE_PENDING)
            .is_some()
    {
        return Step::ClearPending;
    }
    let msg = match &o.replaces {
        Some(old) => format!(
            "inbox {old} vanished from AgentSend and could not be re-created with its address: {msg}"
        ),
        None => msg,
    };
    rejected(o, msg)
}

/// A create started by an earlier version (AgentSend chose the address): bind nothing on a
/// guess. No match: create anew (with an address); any match: a human decides.
fn recover_legacy(o: &Observed, key: ApiKey, since: jiff::Timestamp) -> Step {
    let candidates = match listed(o, &key) {
        Err(step) => return *step,
        Ok(c) => c,
    };
    let elsewhere = match claims_on(o, &ids_of(candidates), true) {
        Ok(e) => e,
        Err(step) => return *step,
    };
    let ids = match addresses::recover_legacy(
        &o.inbox.spec,
        since,
        candidates,
        &claimed_ids(elsewhere),
    ) {
        Recovery::None => return mark_then_create(o, key, None),
        Recovery::One(r) => vec![r.id],
        Recovery::Ambiguous(ids) => ids,
    };
    let msg = format!(
        "a create started by an earlier operator version may have made {} ({}); set spec.inboxId to the one to keep and delete any others in AgentSend, or remove the {} annotation to create a new inbox",
        if ids.len() == 1 {
            "this inbox"
        } else {
            "these inboxes"
        },
        ids.join(", "),
        inbox::ANNOTATION_CREATE_PENDING
    );
    done(
        report(o, None, None, stalled(Reason::CreationUncertain, msg)),
        Then::Settle,
    )
}

/// Bind the inbox this pass created; with its Secret at once ([`Step::BindWithSecret`]) when
/// the Secret is known to be absent and renders (anything else — a Secret that exists, a
/// template error — is left to [`converge`](super::converge::converge) after a plain bind,
/// as before).
fn bind_created(o: &Observed, key: ApiKey, remote: &RemoteInbox, event: InboxEvent) -> Step {
    let remote = remote.clone();
    let absent = matches!(o.secrets.get(&o.inbox.secret_name()), Some(None));
    let secret = absent
        .then(|| {
            let templated = checked_secret_spec(o, &remote).ok()?;
            rendered_secret(o, &remote, templated)
        })
        .flatten();
    match secret {
        Some(secret) => Step::BindWithSecret {
            key,
            remote,
            event,
            secret: Box::new(secret),
        },
        None => Step::Bind { key, remote, event },
    }
}

/// Whether the Ready condition already says the API rejected this generation of the spec.
fn rejected_at_this_generation(inbox: &Inbox) -> bool {
    status::find(inbox.status.as_ref(), inbox::condition::READY).is_some_and(|c| {
        c.reason() == Some(Reason::Rejected) && c.observed_generation == inbox.metadata.generation
    })
}

/// The pending mark naming `address` is persisted: report `Creating`, POST, then bind or
/// handle the failure. A 409 is a lookup: the address may be ours from an earlier attempt.
pub(super) fn create(o: &Observed, key: ApiKey, address: &str) -> Step {
    match &o.created {
        // No `Creating` status on the way: a create that works ends Ready in one pass, with
        // one status write.
        // Read the Secret (cache, or GET) before the POST, so that the bind after it can
        // create the Secret at the same time ([`Step::BindWithSecret`]).
        None if !o.secrets.contains_key(&o.inbox.secret_name()) => Step::ReadSecret {
            name: o.inbox.secret_name(),
        },
        None => Step::Create {
            key,
            request: addresses::create_request(&o.inbox.spec, address),
        },
        Some(Ok(remote)) => {
            let event = match &o.replaces {
                Some(old) => InboxEvent::new(
                    EventKind::Recreated,
                    format!(
                        "inbox {old} vanished from AgentSend and was recreated as {} ({})",
                        remote.id, remote.address
                    ),
                ),
                None => InboxEvent::new(
                    EventKind::Created,
                    format!("created AgentSend inbox {} ({})", remote.id, remote.address),
                ),
            };
            bind_created(o, key, remote, event)
        }
        Some(Err(e)) if is_address_conflict(e) => after_conflict(o, key, address, e),
        // Otherwise the pending mark stays: the next pass looks the address up first.
        Some(Err(e)) if proves_not_created(e) && !o.pending_cleared => Step::ClearPending,
        Some(Err(e)) => api_failure(o, e),
    }
}

/// The API answered 409 (address taken) to a create: ours from an earlier attempt, older in
/// this account, or held by another account.
fn after_conflict(o: &Observed, key: ApiKey, address: &str, e: &ApiError) -> Step {
    let candidates = match listed(o, &key) {
        Err(step) => return *step,
        Ok(c) => c,
    };
    let found = match o.pending() {
        Some(Pending::Proven { origin, .. }) => {
            addresses::find_address(&o.inbox.spec, address, origin, candidates)
        }
        // The mark went in this pass (nothing of it is bound now): only say who holds it.
        _ => match addresses::holder_of(&o.inbox.spec, address, candidates) {
            Some(holder) => AddressLookup::Older(holder.clone()),
            None => AddressLookup::Absent,
        },
    };
    match found {
        // This pass wrote a new mark: no earlier attempt of this create exists, so the inbox
        // holding the address is someone else's, however new.
        AddressLookup::Ours(remote) if o.marked == Some(Marked::Yes) && !o.resumed => {
            address_in_use(o, address, &remote)
        }
        AddressLookup::Ours(remote) => bind_recovered(o, key, remote),
        AddressLookup::Older(remote) => address_in_use(o, address, &remote),
        AddressLookup::Absent => address_taken(
            o,
            format!(
                "the address {address:?} is taken ({e}); it is not in this AgentSend account: choose another address"
            ),
        ),
    }
}

/// A create refused because the address is taken.
fn is_address_conflict(e: &ApiError) -> bool {
    matches!(e, ApiError::Rejected { status: 409, .. })
}

/// Whether a failed create certainly created nothing: the API answered with a 4xx.
/// Transport errors and 5xx leave the outcome unknown.
pub(super) fn proves_not_created(e: &ApiError) -> bool {
    matches!(
        e,
        ApiError::Rejected { .. }
            | ApiError::Unauthorized { .. }
            | ApiError::RateLimited { .. }
            | ApiError::NotFound { .. }
            | ApiError::Config { .. }
    )
}
