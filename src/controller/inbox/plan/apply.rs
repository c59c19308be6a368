//! The apply phase, up to the inbox: the pause, the namespace default, the credentials, a
//! running backoff, the in-use finalizers, and the Inbox's finalizer before the first write;
//! then a create under way, the binding, an adoption, an observation by address, or a new
//! create.

use crate::api::inbox::{self, Reason};
use crate::controller::accounts::credentials::Credentials;
use crate::controller::error::Error;
use crate::controller::inbox::outputs::config_map;
use crate::controller::inbox::status::Readiness;

use super::backoff;
use super::create::{create, create_or_recover, pending_address};
use super::identity::{adopt, bound, observe_by_address, unproven_claim};
use super::observed::{Marked, Observed};
use super::outcome::{done, finish, rejected, stalled};
use super::report::report;
use super::retry::held;
use super::step::{Done, Failures, Step, Then, writes};

/// The finalizer is in place before anything is written: the pending mark carries it (one
/// patch for both); any other first write is preceded by [`Step::AddFinalizer`].
pub(super) fn with_finalizer(o: &Observed, step: Step) -> Step {
    if o.finalizer_missing && writes(&step) && !matches!(step, Step::MarkPending { .. }) {
        return Step::AddFinalizer;
    }
    step
}

pub(super) fn apply(o: &Observed) -> Step {
    if o.inbox.is_paused() {
        let paused = Readiness::Idle {
            reason: Reason::Paused,
            message: "paused by the agentsend.io/paused annotation: no AgentSend calls and no Secret writes until it is removed".into(),
        };
        return done(report(o, None, None, paused), Then::Settle);
    }
    if let Some(step) = o.needs_namespace() {
        return step;
    }
    let key = match &o.credentials {
        None => return Step::ReadCredentials,
        Some(Credentials::Missing(msg)) => {
            let delay = backoff::backoff(o.failures.clamp(3, 5), o.jitter, o.max_retry_delay);
            return Step::Done(Done {
                failures: Failures::Bump,
                failed: Some(Error::CREDENTIALS_MISSING),
                ..finish(
                    Some(report(
                        o,
                        None,
                        None,
                        stalled(Reason::CredentialsMissing, msg),
                    )),
                    Then::Requeue(delay),
                )
            });
        }
        Some(Credentials::Refused(msg)) => {
            // No AgentSend call; looked at again when the account changes, and each interval
            // (a namespace's labels or another Inbox's deletion may lift the refusal).
            return done(
                report(o, None, None, stalled(Reason::AccountRefused, msg)),
                Then::Requeue(o.sync_interval),
            );
        }
        Some(Credentials::Key(k)) => k.clone(),
    };
    if let Some(step) = held(o) {
        return step;
    }
    if let Some((target, _)) = o.in_use.iter().find(|(_, marked)| !marked) {
        return Step::MarkInUse(target.clone());
    }
    if !o.bound_now
        && (o.created.is_some() || o.marked == Some(Marked::Yes))
        && let Some(address) = o.attempted.as_deref().or(pending_address(o))
    {
        return create(o, key, address);
    }
    if let Some(b) = o.binding() {
        return bound(o, key, &b);
    }
    if let Some(claimed) = o.proof.unproven_claim(&o.inbox)
        && o.inbox.spec.inbox_id.as_deref() != Some(claimed)
    {
        return unproven_claim(o, claimed);
    }
    // Before the first AgentSend call: outputs that could never be written refuse the spec
    // (not mid-create: a pending create is finished or recovered first).
    if o.inbox
        .annotation(inbox::ANNOTATION_CREATE_PENDING)
        .is_none()
        && let Some(msg) = config_map::spec_refusal(&o.inbox)
    {
        return rejected(o, msg);
    }
    match &o.inbox.spec.inbox_id {
        Some(id) => adopt(o, key, id),
        None if o.observing() => observe_by_address(o, key),
        None => create_or_recover(o, key),
    }
}

// Here, not in `observed`: the inputs know nothing of the steps (`step` uses `observed`).
impl Observed {
    /// `Some(ReadNamespace)` while the namespace default is needed and not read yet.
    fn needs_namespace(&self) -> Option<Step> {
        self.deletion_policy()
            .is_none()
            .then_some(Step::ReadNamespace)
    }
}
