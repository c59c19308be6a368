//! The status a pass reports: the complete new status for a readiness (the inbox mirrored,
//! the refresh served, the ConfigMap in place, the deletion policy that applies), whether it
//! changed, and the Warning events its transitions publish.

use crate::agentsend::RemoteInbox;
use crate::api::inbox::{self, ConditionStatus, InboxStatus, Reason};
use crate::controller::inbox::events::{EventKind, InboxEvent};
use crate::controller::inbox::outputs::config_map;
use crate::controller::inbox::status::{self, Readiness, StatusInput};
use crate::controller::remote::refresh::Refresh;

use super::observed::Observed;
use super::step::Report;
use crate::controller::inbox::outputs::secret;

/// The status for `readiness`, whether it changed, and the events its transitions publish.
pub(super) fn report(
    o: &Observed,
    remote: Option<&RemoteInbox>,
    secret_name: Option<String>,
    readiness: Readiness,
) -> Report {
    let current = o.inbox.status.as_ref();
    let mut new = status::build_status(StatusInput {
        previous: current,
        generation: o.inbox.metadata.generation,
        inbox_id: remote
            .map(|r| r.id.clone())
            .or_else(|| o.binding().map(|b| b.id)),
        remote,
        secret_name,
        readiness: readiness.clone(),
        now: &o.now,
    });
    if let Some(value) = refresh_served(o) {
        new.observed_refresh = Some(value.to_string());
    }
    if let Some(name) = config_map_in_place(o) {
        new.config_map_name = name;
    }
    // Which deletion policy applies, once known; else what status said.
    let (policy, source) = match o.deletion_policy() {
        Some((p, s)) => (Some(p), Some(s)),
        None => current.map_or((None, None), |c| {
            (c.deletion_policy, c.deletion_policy_source)
        }),
    };
    new.deletion_policy = policy;
    new.deletion_policy_source = source;
    let changed = current != Some(&new);
    let events = if changed {
        transition_events(o.status_at_start.as_ref(), &new, &readiness)
    } else {
        Vec::new()
    };
    Report {
        ready: readiness == Readiness::Ready,
        status: new,
        changed,
        readiness,
        events,
        best_effort: false,
    }
}

/// The `agentsend.io/refresh` value this pass's observation answers: a refresh scan served
/// it, or the pass bound the inbox (the create's or GET's answer is fresh).
fn refresh_served(o: &Observed) -> Option<&str> {
    let served = o.refresh == Some(Refresh::Served) || o.bound_now;
    served.then(|| o.inbox.refresh_wanted()).flatten()
}

/// What `status.configMapName` says after this pass: the wanted ConfigMap once this Inbox
/// owns it, nothing once no owned one is left; `None` (keep it) while that is not known.
fn config_map_in_place(o: &Observed) -> Option<Option<String>> {
    let known = o.config_maps.as_ref()?;
    let uid = o.inbox.metadata.uid.as_deref().unwrap_or_default();
    match o.inbox.config_map_name() {
        Some(name) => {
            let meta = known.get(&name)?.as_ref()?;
            secret::is_owned_by(meta, uid).then_some(Some(name))
        }
        None => config_map::unwanted(known, None, uid)
            .next()
            .is_none()
            .then_some(None),
    }
}

/// Warning events for entering a not-ready reason the contract names, and for reaching the
/// send limit. Transitions only, so a retry loop does not flood the namespace.
pub(super) fn transition_events(
    before: Option<&InboxStatus>,
    after: &InboxStatus,
    readiness: &Readiness,
) -> Vec<InboxEvent> {
    let mut events = Vec::new();
    let before_reason = status::find(before, inbox::condition::READY).and_then(|c| c.reason());
    let warning = match readiness.reason() {
        Reason::Rejected => Some(EventKind::Rejected),
        Reason::CredentialsInvalid => Some(EventKind::CredentialsInvalid),
        Reason::CreationUncertain => Some(EventKind::CreationUncertain),
        Reason::SecretConflict => Some(EventKind::SecretConflict),
        Reason::InboxSuspended => Some(EventKind::Suspended),
        _ => None,
    };
    if let Some(kind) = warning
        && before_reason != Some(readiness.reason())
    {
        events.push(InboxEvent::new(kind, readiness.message()));
    }
    let limit = |s| status::find(s, inbox::condition::SEND_LIMIT_REACHED);
    if let Some(now) = limit(Some(after))
        && now.status() == ConditionStatus::True
        && limit(before).map(|c| c.status()) != Some(ConditionStatus::True)
    {
        events.push(InboxEvent::new(
            EventKind::SendLimitReached,
            now.message.clone(),
        ));
    }
    events
}
