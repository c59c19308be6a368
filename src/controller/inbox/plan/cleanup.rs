//! The cleanup phase (the Inbox is being deleted; our finalizer holds it): delete the inbox
//! (`Delete`: only with a key that reaches it, and only one this Inbox owns) or leave it
//! (`Orphan`, and always when observing); then the owned Secrets and ConfigMaps go, or are
//! released (`retainOnOrphan`); then the finalizer goes.

use crate::agentsend::ApiKey;
use crate::api::inbox::{self, DeletionPolicy, Reason};
use crate::controller::accounts::credentials::Credentials;
use crate::controller::inbox::addresses::{AddressLookup, Recovery};
use crate::controller::inbox::events::{EventKind, InboxEvent};
use crate::controller::inbox::outputs::config_map;
use crate::controller::inbox::status;
use crate::controller::ownership::proof::{Binding, Pending};

use super::claims::{claimed_ids, claims_on, ids_of};
use super::config_map::config_map_names;
use super::converge::{delete_owned_secret, renamed_secret_cleanup};
use super::observed::{Lookup, Observed};
use super::outcome::{finish, stalled};
use super::report::report;
use super::retry::{fail, held, readiness_for_error};
use super::step::{Done, Failure, Failures, Step, Then};
use crate::controller::inbox::addresses;
use crate::controller::inbox::outputs::secret;

pub(super) fn cleanup(o: &Observed) -> Step {
    if let Some(step) = held(o) {
        return step;
    }
    let Some((policy, _)) = o.deletion_policy() else {
        return Step::ReadNamespace;
    };
    // Observe-only: deletion releases, whatever deletionPolicy says.
    let policy = if o.observing() {
        DeletionPolicy::Orphan
    } else {
        policy
    };
    // No `Deleting` status first: a deletion that goes through in this pass is over before
    // anyone reads it (and the Inbox is gone with its status), and the write was one of the
    // pass's sequential round trips. A deletion that cannot go through still explains itself:
    // waiting for other finalizers or a pause reports `Deleting`/`Paused` ([`held_deletion`]),
    // and a failure reports the failure (kept on retries: one status write per outcome).
    let bound = o.binding();
    let pending = match o.pending() {
        Some(p @ (Pending::Proven { .. } | Pending::Legacy(_))) => Some(p),
        // A mark without proof deletes nothing.
        Some(Pending::Unproven { .. }) | None => None,
    };
    match policy {
        DeletionPolicy::Orphan => {
            if let Some(b) = &bound
                && let Some(step) = announce_orphaned(o, &b.id)
            {
                return step;
            }
        }
        DeletionPolicy::Delete if bound.is_some() || pending.is_some() => {
            if let Some(step) = delete_remote(o, bound, pending) {
                return step;
            }
        }
        DeletionPolicy::Delete => {}
    }
    let current = o.inbox.secret_name();
    let orphan = policy == DeletionPolicy::Orphan;
    if orphan
        && o.inbox.retains_secret()
        && let Some(step) = retain_secret(o, &current)
    {
        return step;
    }
    if let Some(step) = delete_owned_secret(o, &current) {
        return step;
    }
    if let Some(step) = renamed_secret_cleanup(o, &current) {
        return step;
    }
    if let Some(step) = cleanup_config_maps(o, orphan && o.inbox.retains_config_map()) {
        return step;
    }
    Step::Done(Done {
        release: true,
        failures: Failures::Reset,
        ..finish(None, Then::Settle)
    })
}

/// The `Orphaned` event for inbox `id` left in place, once. A Warning when the Inbox last
/// reported `AccountChanged`: its credentials no longer reach the inbox, so nobody manages it
/// now.
fn announce_orphaned(o: &Observed, id: &str) -> Option<Step> {
    if o.announced(EventKind::Orphaned) || o.announced(EventKind::LeftBehind) {
        return None;
    }
    let unreachable = status::find(o.status_at_start.as_ref(), inbox::condition::READY)
        .is_some_and(|c| c.reason() == Some(Reason::AccountChanged));
    let event = if unreachable {
        InboxEvent::new(
            EventKind::LeftBehind,
            format!(
                "left AgentSend inbox {id} in place (deletionPolicy Orphan) in an account the Inbox's credentials no longer reach: nothing manages it now; delete it in AgentSend if it is unwanted{}",
                retained(o)
            ),
        )
    } else {
        let why = if o.observing() {
            "managementPolicy Observe"
        } else {
            "deletionPolicy Orphan"
        };
        InboxEvent::new(
            EventKind::Orphaned,
            format!("left AgentSend inbox {id} in place ({why}){}", retained(o)),
        )
    };
    Some(Step::Announce(event))
}

/// Deleting: the ConfigMaps this Inbox owns go with it — but the wanted one is released
/// instead when `retain` (`retainOnOrphan` with `Orphan`); `None` once none is left.
fn cleanup_config_maps(o: &Observed, retain: bool) -> Option<Step> {
    let names = config_map_names(o);
    if names.is_empty() {
        return None;
    }
    let Some(known) = &o.config_maps else {
        return Some(Step::ReadConfigMaps { names });
    };
    let owner = o.inbox.metadata.uid.as_deref().unwrap_or_default();
    let wanted = o.inbox.config_map_name();
    if retain
        && let Some(name) = wanted
        && let Some(meta) = known.get(&name).and_then(Option::as_ref)
        && secret::is_owned_by(meta, owner)
    {
        return Some(Step::Release {
            kind: config_map::OutputKind::ConfigMap,
            patch: config_map::release_patch(meta, owner),
            name,
        });
    }
    let (name, uid) = config_map::unwanted(known, None, owner).next()?;
    Some(Step::DeleteConfigMap {
        name: name.to_string(),
        uid: uid.cloned(),
    })
}

/// What the Orphaned event adds about the outputs `retainOnOrphan` keeps.
fn retained(o: &Observed) -> String {
    let secret = o
        .inbox
        .retains_secret()
        .then(|| format!("Secret {}", o.inbox.secret_name()));
    let config_map = o
        .inbox
        .config_map_name()
        .filter(|_| o.inbox.retains_config_map())
        .map(|n| format!("ConfigMap {n}"));
    let kept: Vec<String> = secret.into_iter().chain(config_map).collect();
    if kept.is_empty() {
        String::new()
    } else {
        format!("; kept {} (retainOnOrphan)", kept.join(" and "))
    }
}

/// Deleting with `Orphan` and `spec.secret.retainOnOrphan`: read the Secret, then release it
/// if this Inbox owns it; `None` once it is not (or no longer) ours.
fn retain_secret(o: &Observed, name: &str) -> Option<Step> {
    let owner = o.inbox.metadata.uid.as_deref().unwrap_or_default();
    match o.secrets.get(name) {
        None => Some(Step::ReadSecret {
            name: name.to_string(),
        }),
        Some(Some(meta)) if secret::is_owned_by(meta, owner) => Some(Step::Release {
            kind: config_map::OutputKind::Secret,
            name: name.to_string(),
            patch: config_map::release_patch(meta, owner),
        }),
        Some(_) => None,
    }
}

/// Delete the bound inbox, or the one an interrupted create made; `None` once done. Only with
/// a key of the account the inbox was bound in: a key of another account is first checked
/// with a GET (found: same account), and where it does not reach the inbox the deletion waits
/// (`AccountChanged`) instead of taking its 404 for "already gone".
fn delete_remote(o: &Observed, bound: Option<Binding>, pending: Option<Pending>) -> Option<Step> {
    let key = match (&o.credentials, &o.remembered_key) {
        (None, _) => return Some(Step::ReadCredentials),
        (Some(Credentials::Key(k)), _) => k.clone(),
        // The Secret may already be gone (its namespace is being deleted): the key this
        // process last used for the Inbox still works.
        (Some(Credentials::Missing(_) | Credentials::Refused(_)), Some(k)) => k.clone(),
        (Some(Credentials::Missing(msg) | Credentials::Refused(msg)), None) => {
            let m = format!(
                "cannot delete the AgentSend inbox: {msg}; restore the credentials or set deletionPolicy: Orphan"
            );
            let r = report(o, None, None, stalled(Reason::CredentialsMissing, m));
            return Some(fail(o, Some(r), Failure::CredentialsMissing(msg.clone())));
        }
    };
    let current = o.account_of(&key);
    let (id, account) = match (bound, pending) {
        (Some(b), _) => {
            // Delete only an inbox this Inbox owns: a second claimant only releases itself.
            let elsewhere = match claims_on(o, &[&b.id], true) {
                Ok(e) => e,
                Err(step) => return Some(*step),
            };
            if elsewhere.get(&b.id).is_some_and(|c| c.prior) {
                return None;
            }
            (b.id, b.account)
        }
        // Found by listing with this very key: in its account.
        (None, Some(pending)) => match interrupted_create(o, &key, pending)? {
            Ok(id) => (id, Some(current.clone())),
            Err(step) => return Some(step),
        },
        (None, None) => return None,
    };
    if account.as_deref() != Some(current.as_str()) {
        match &o.remote {
            None => return Some(Step::Fetch { key, id }),
            Some(Lookup::Failed(e)) => {
                let r = report(o, None, None, readiness_for_error(e));
                return Some(fail(o, Some(r), Failure::Api(e.clone())));
            }
            Some(Lookup::Gone) => return Some(deletion_blocked(o, &id, account.as_deref())),
            Some(Lookup::Found(_)) => {}
        }
    }
    match &o.deleted {
        None => Some(Step::DeleteInbox { key, id }),
        Some(Err(e)) => Some(fail(
            o,
            Some(report(o, None, None, readiness_for_error(e))),
            Failure::Api(e.clone()),
        )),
        Some(Ok(())) if !o.forgotten => Some(Step::Forget { key, id }),
        Some(Ok(())) if !o.announced(EventKind::Deleted) => Some(Step::Announce(InboxEvent::new(
            EventKind::Deleted,
            format!("deleted AgentSend inbox {id}"),
        ))),
        Some(Ok(())) => None,
    }
}

/// Deleting with `Delete`, and the key at hand does not reach the bound inbox: the
/// finalizer stays until the credentials reach it again, or `Orphan` releases the Inbox.
fn deletion_blocked(o: &Observed, id: &str, bound_in: Option<&str>) -> Step {
    let account = match bound_in {
        Some(a) => format!("the account of the key with fingerprint {a}"),
        None => "an account its binding does not record".into(),
    };
    let msg = format!(
        "cannot delete inbox {id:?}: the current credentials do not reach it (it was bound in {account}), and a 404 from another account is not proof that it is gone; the finalizer stays until the credentials reach the inbox's account again, or set deletionPolicy: Orphan to release this Inbox and leave the inbox in place"
    );
    let r = report(o, None, None, stalled(Reason::AccountChanged, msg.clone()));
    fail(o, Some(r), Failure::AccountChanged(msg))
}

/// During deletion without a bound ID: what an interrupted create made. `Some(Err(step))`
/// while inputs are missing, `Some(Ok(id))` for the inbox to delete, `None` for nothing.
/// Only an inbox of the pending address created after the mark, held by no other Inbox, is
/// deleted; a legacy mark deletes nothing on a guess.
fn interrupted_create(
    o: &Observed,
    key: &ApiKey,
    pending: Pending,
) -> Option<Result<String, Step>> {
    let candidates = match &o.candidates {
        None => return Some(Err(Step::ListCandidates { key: key.clone() })),
        Some(Err(e)) => return Some(Err(fail(o, None, Failure::Api(e.clone())))),
        Some(Ok(c)) => c,
    };
    let elsewhere = match claims_on(o, &ids_of(candidates), true) {
        Ok(e) => e,
        Err(step) => return Some(Err(*step)),
    };
    let since = match pending {
        Pending::Proven { address, origin } => {
            let found = addresses::find_address(&o.inbox.spec, address, origin, candidates);
            return match found {
                AddressLookup::Ours(r) if !elsewhere.contains_key(&r.id) => Some(Ok(r.id)),
                _ => None,
            };
        }
        Pending::Unproven { .. } => return None,
        Pending::Legacy(since) => since,
    };
    let ids = match addresses::recover_legacy(
        &o.inbox.spec,
        since,
        candidates,
        &claimed_ids(elsewhere),
    ) {
        Recovery::None => return None,
        Recovery::One(r) => vec![r.id],
        Recovery::Ambiguous(ids) => ids,
    };
    if o.announced(EventKind::CreationUncertain) {
        return None;
    }
    Some(Err(Step::Announce(InboxEvent::new(
        EventKind::CreationUncertain,
        format!(
            "a create started by an earlier operator version may have made {}; none was deleted — delete it in AgentSend if it is unwanted",
            ids.join(", ")
        ),
    ))))
}
