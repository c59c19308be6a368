//! Converging a bound, observed inbox: register it with the counter sync, write or restore
//! the Secret (its metadata and template checked first), then the ConfigMap, then report
//! Ready (or what the inbox's state says). Also the Secret helpers the bind after a create
//! and the cleanup share.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;

use crate::agentsend::{ApiKey, InboxState, RemoteInbox};
use crate::api::inbox::Reason;
use crate::controller::inbox::events::{EventKind, InboxEvent};
use crate::controller::inbox::outputs::secret::SecretPlan;
use crate::controller::inbox::outputs::{config_map, template};
use crate::controller::inbox::status::Readiness;

use super::config_map::converge_config_map;
use super::observed::Observed;
use super::outcome::{conflict, done, done_quietly, finish, stalled};
use super::report::report;
use super::step::{Done, Failure, Failures, Step, Then};
use crate::controller::inbox::outputs::secret;

/// Converge the Secret and status on an observed, bound inbox.
pub(super) fn converge(o: &Observed, key: ApiKey, remote: &RemoteInbox) -> Step {
    if !o.registered {
        return Step::Register {
            key,
            id: remote.id.clone(),
        };
    }
    let templated = match checked_secret_spec(o, remote) {
        Ok(values) => values,
        Err(step) => return *step,
    };
    let config_map_data = match config_map::checked_data(&o.inbox, remote) {
        Ok(data) => data,
        Err(e) => return rejected_with(o, remote, e.to_string()),
    };
    let name = o.inbox.secret_name();
    let existing = match o.secrets.get(&name) {
        None => return Step::ReadSecret { name },
        Some(s) => s.as_ref(),
    };
    let Some(desired) = rendered_secret(o, remote, templated) else {
        return done_quietly(Then::Fail(Failure::InvalidObject));
    };
    let uid = o.inbox.metadata.uid.clone().unwrap_or_default();
    let (create, note) = match secret::plan_secret(existing, &desired, &uid) {
        SecretPlan::Create => (true, format!("wrote the address to Secret {name}")),
        SecretPlan::Update => (false, format!("restored the address in Secret {name}")),
        SecretPlan::Conflict => {
            let msg = format!(
                "Secret {name:?} exists and is not owned by this Inbox; it is left untouched: delete it or set spec.secret.name"
            );
            return conflict(o, remote, msg);
        }
        SecretPlan::UpToDate => {
            if let Some(step) = renamed_secret_cleanup(o, &name) {
                return step;
            }
            if let Some(step) = converge_config_map(o, remote, config_map_data) {
                return step;
            }
            let readiness = readiness_of(remote);
            return Step::Done(Done {
                failures: Failures::Reset,
                ..finish(
                    Some(report(o, Some(remote), Some(name), readiness)),
                    Then::Settle,
                )
            });
        }
    };
    // The pass that just bound the inbox announced it; its first Secret needs no event.
    let quiet = create && o.bound_now;
    Step::WriteSecret {
        secret: Box::new(desired),
        create,
        event: (!quiet).then(|| InboxEvent::new(EventKind::SecretWritten, note)),
    }
}

/// `Rejected` with the observed inbox mirrored; nothing written but status.
fn rejected_with(o: &Observed, remote: &RemoteInbox, msg: String) -> Step {
    done(
        report(o, Some(remote), None, stalled(Reason::Rejected, msg)),
        Then::Settle,
    )
}

/// Readiness of an observed, bound inbox whose Secret is in place.
fn readiness_of(remote: &RemoteInbox) -> Readiness {
    match &remote.status {
        InboxState::Active => Readiness::Ready,
        InboxState::Suspended => stalled(
            Reason::InboxSuspended,
            "AgentSend suspended this inbox (often for high bounce or complaint rates); it neither sends nor receives until reactivated",
        ),
        InboxState::Deleted => Readiness::progressing(
            Reason::InboxNotFound,
            "AgentSend reports this inbox as deleted",
        ),
        InboxState::Unknown(s) => Readiness::progressing(
            Reason::ApiUnavailable,
            format!(
                "AgentSend reports inbox state {s:?}, which this operator does not know; the inbox is not treated as ready"
            ),
        ),
    }
}

/// Check what the spec adds to the Secret before anything is written: labels and annotations
/// Kubernetes would refuse, and `spec.secret.template` (rendered here). `Ok`: the rendered
/// template keys; `Err`: the `Rejected` report that ends the pass.
pub(super) fn checked_secret_spec(
    o: &Observed,
    remote: &RemoteInbox,
) -> Result<BTreeMap<String, String>, Box<Step>> {
    let rejected = |msg: String| {
        Box::new(done(
            report(o, Some(remote), None, stalled(Reason::Rejected, msg)),
            Then::Settle,
        ))
    };
    let spec_secret = o.inbox.spec.secret.as_ref();
    if let Err(e) = crate::controller::inbox::outputs::meta::check_secret_metadata(
        spec_secret.and_then(|s| s.labels.as_ref()),
        spec_secret.and_then(|s| s.annotations.as_ref()),
    ) {
        return Err(rejected(format!(
            "{e}; Kubernetes would refuse the Secret, so it is not written"
        )));
    }
    match spec_secret.and_then(|s| s.template.as_ref()) {
        None => Ok(BTreeMap::new()),
        Some(t) => template::render(t, &template::Fields::of(remote)).map_err(|e| {
            rejected(format!(
                "spec.secret.template: {e}; the Secret is left as it was"
            ))
        }),
    }
}

/// The Secret the Inbox should own for `remote`, with its rendered template values
/// (`templated`, from [`checked_secret_spec`]) and the digest of its data; `None` when the
/// Inbox has no name or UID.
pub(super) fn rendered_secret(
    o: &Observed,
    remote: &RemoteInbox,
    templated: BTreeMap<String, String>,
) -> Option<Secret> {
    let mut desired = secret::desired_secret(&o.inbox, remote)?;
    secret::add_string_data(&mut desired, templated);
    Some(desired)
}

/// After `spec.secret.name` changed, the previous Secret goes if this Inbox owns it.
pub(super) fn renamed_secret_cleanup(o: &Observed, current: &str) -> Option<Step> {
    let old = o.status_at_start.as_ref()?.secret_name.as_deref()?;
    (old != current).then(|| delete_owned_secret(o, old))?
}

/// Read the Secret, then delete it if this Inbox owns it; `None` once nothing is left to do.
pub(super) fn delete_owned_secret(o: &Observed, name: &str) -> Option<Step> {
    let uid = o.inbox.metadata.uid.as_deref().unwrap_or_default();
    match o.secrets.get(name) {
        None => Some(Step::ReadSecret {
            name: name.to_string(),
        }),
        Some(Some(s)) if secret::is_owned_by(s, uid) => Some(Step::DeleteSecret {
            name: name.to_string(),
            uid: s.uid.clone(),
        }),
        Some(_) => None,
    }
}
