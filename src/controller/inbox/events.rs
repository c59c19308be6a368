//! The Kubernetes Events the controller publishes: one variant per contract reason, with its
//! type (Normal or Warning) fixed by the variant; and [`EventRecorder`], which publishes them
//! in the background.

use parking_lot::Mutex;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use tokio::sync::Semaphore;
use tracing::warn;

/// Every event reason of the contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// Normal: the operator created the AgentSend inbox.
    Created,
    /// Normal: the operator adopted an existing inbox (`spec.inboxId`).
    Adopted,
    /// Normal: the AgentSend inbox was deleted with the Inbox.
    Deleted,
    /// Normal: the AgentSend inbox was left in place (`deletionPolicy: Orphan`).
    Orphaned,
    /// Warning, reason `Orphaned`: the Inbox was released (`deletionPolicy: Orphan`) while
    /// its credentials reach another account than its inbox's, so nobody manages that inbox
    /// any more; the message names it.
    LeftBehind,
    /// Normal: the Secret was written or restored.
    SecretWritten,
    /// Normal: the ConfigMap (`spec.configMap`) was written or restored.
    ConfigMapWritten,
    /// Warning: the inbox vanished in AgentSend and was created again.
    Recreated,
    /// Warning: a Secret of that name is not this Inbox's.
    SecretConflict,
    /// Warning: AgentSend refused the spec, or the inbox is not this Inbox's to take.
    Rejected,
    /// Warning: AgentSend refused the API key.
    CredentialsInvalid,
    /// Warning: an interrupted create left several candidates.
    CreationUncertain,
    /// Warning: AgentSend suspended the inbox.
    Suspended,
    /// Warning: no sends left today.
    SendLimitReached,
}

impl EventKind {
    /// Every kind, in the order the reference lists them (`make docs`).
    #[cfg(test)]
    pub(crate) const ALL: [EventKind; 14] = [
        EventKind::Created,
        EventKind::Adopted,
        EventKind::Deleted,
        EventKind::Orphaned,
        EventKind::LeftBehind,
        EventKind::SecretWritten,
        EventKind::ConfigMapWritten,
        EventKind::Recreated,
        EventKind::SecretConflict,
        EventKind::Rejected,
        EventKind::CredentialsInvalid,
        EventKind::CreationUncertain,
        EventKind::Suspended,
        EventKind::SendLimitReached,
    ];

    /// The event's `reason` (and `action`).
    pub fn reason(self) -> &'static str {
        match self {
            EventKind::Created => "Created",
            EventKind::Adopted => "Adopted",
            EventKind::Deleted => "Deleted",
            EventKind::Orphaned | EventKind::LeftBehind => "Orphaned",
            EventKind::SecretWritten => "SecretWritten",
            EventKind::ConfigMapWritten => "ConfigMapWritten",
            EventKind::Recreated => "Recreated",
            EventKind::SecretConflict => "SecretConflict",
            EventKind::Rejected => "Rejected",
            EventKind::CredentialsInvalid => "CredentialsInvalid",
            EventKind::CreationUncertain => "CreationUncertain",
            EventKind::Suspended => "Suspended",
            EventKind::SendLimitReached => "SendLimitReached",
        }
    }

    /// Normal or Warning.
    pub fn event_type(self) -> EventType {
        match self {
            EventKind::Created
            | EventKind::Adopted
            | EventKind::Deleted
            | EventKind::Orphaned
            | EventKind::SecretWritten
            | EventKind::ConfigMapWritten => EventType::Normal,
            EventKind::Recreated
            | EventKind::LeftBehind
            | EventKind::SecretConflict
            | EventKind::Rejected
            | EventKind::CredentialsInvalid
            | EventKind::CreationUncertain
            | EventKind::Suspended
            | EventKind::SendLimitReached => EventType::Warning,
        }
    }
}

/// One event about an Inbox: what happened and a note for humans.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InboxEvent {
    /// Reason and type.
    pub kind: EventKind,
    /// Human note (truncated when published).
    pub note: String,
}

impl InboxEvent {
    /// An event of `kind`.
    pub fn new(kind: EventKind, note: impl Into<String>) -> Self {
        InboxEvent {
            kind,
            note: note.into(),
        }
    }

    /// The kube-runtime event to publish.
    pub fn to_kube(&self) -> Event {
        Event {
            type_: self.kind.event_type(),
            reason: self.kind.reason().to_string(),
            note: Some(crate::agentsend::truncate(&self.note, 1000)),
            action: self.kind.reason().to_string(),
            secondary: None,
        }
    }
}

/// Publishes Kubernetes Events in the background through kube's [`Recorder`], so that a
/// reconcile pass never waits on the event's round trip (an event is a record for humans: the
/// status and the writes carry the state, and a lost event changes no decision).
///
/// At most [`EventRecorder::IN_FLIGHT`] publishes run at once; beyond that, [`publish`]
/// waits for one to finish (memory stays bounded in a burst). Failures are logged with the
/// reason only. Events of one pass may therefore land out of order (their times tell).
///
/// One Recorder per window of [`EventRecorder::WINDOW`] events: kube's Recorder keeps every
/// event it published in the last 6 minutes (to fold repeats into a series) — about 3 KB
/// each, most of the heap after a bulk apply of thousands of Inboxes (see
/// docs/archive/benchmarks-history.md). Starting a new Recorder every window bounds that
/// cache; repeats are still folded within a window.
///
/// [`publish`]: EventRecorder::publish
pub(crate) struct EventRecorder {
    client: Client,
    reporter: Reporter,
    current: Mutex<(Recorder, usize)>,
    in_flight: Arc<Semaphore>,
}

impl EventRecorder {
    /// Events published by one Recorder before the next one starts.
    const WINDOW: usize = 500;
    /// Publishes in flight at once.
    pub(crate) const IN_FLIGHT: usize = 32;
    /// How long [`EventRecorder::drain`] waits at shutdown.
    pub(crate) const DRAIN: Duration = Duration::from_secs(5);

    pub(crate) fn new(client: Client, reporter: Reporter) -> Self {
        let recorder = Recorder::new(client.clone(), reporter.clone());
        EventRecorder {
            client,
            reporter,
            current: Mutex::new((recorder, 0)),
            in_flight: Arc::new(Semaphore::new(Self::IN_FLIGHT)),
        }
    }

    /// Publish `ev` about `reference` in the background (waits only while
    /// [`EventRecorder::IN_FLIGHT`] publishes are running).
    pub(crate) async fn publish(&self, ev: &InboxEvent, reference: &ObjectReference) {
        let Ok(permit) = self.in_flight.clone().acquire_owned().await else {
            return; // closed: never (the semaphore is not closed)
        };
        let recorder = self.recorder();
        let (kind, event, reference) = (ev.kind, ev.to_kube(), reference.clone());
        tokio::spawn(async move {
            if let Err(e) = recorder.publish(&event, &reference).await {
                warn!(error = %e, reason = kind.reason(), "could not publish event");
            }
            drop(permit);
        });
    }

    /// Wait (at most `limit`) until the publishes in flight have finished: at shutdown, so
    /// that the last passes' events are not lost.
    pub(crate) async fn drain(&self, limit: Duration) {
        let all = u32::try_from(Self::IN_FLIGHT).unwrap_or(u32::MAX);
        if tokio::time::timeout(limit, self.in_flight.acquire_many(all))
            .await
            .is_err()
        {
            warn!("shutdown: some events were not published in time");
        }
    }

    /// The Recorder of the current window.
    fn recorder(&self) -> Recorder {
        let mut current = self.current.lock();
        if current.1 >= Self::WINDOW {
            *current = (Recorder::new(self.client.clone(), self.reporter.clone()), 0);
        }
        current.1 += 1;
        current.0.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`EventKind::ALL`] lists the kinds in the order of `position`, each once: a new variant
    /// does not compile until it has a position in this exhaustive `match`, the reminder to
    /// add it to `ALL` (and to the events reference) too.
    #[test]
    fn all_lists_every_kind_once() {
        let position = |k: EventKind| match k {
            EventKind::Created => 0,
            EventKind::Adopted => 1,
            EventKind::Deleted => 2,
            EventKind::Orphaned => 3,
            EventKind::LeftBehind => 4,
            EventKind::SecretWritten => 5,
            EventKind::ConfigMapWritten => 6,
            EventKind::Recreated => 7,
            EventKind::SecretConflict => 8,
            EventKind::Rejected => 9,
            EventKind::CredentialsInvalid => 10,
            EventKind::CreationUncertain => 11,
            EventKind::Suspended => 12,
            EventKind::SendLimitReached => 13,
        };
        for (i, k) in EventKind::ALL.into_iter().enumerate() {
            assert_eq!(position(k), i, "{k:?}");
        }
    }

    #[test]
    fn types_are_fixed_per_reason() {
        let warning = |k: EventKind| k.event_type() == EventType::Warning;
        assert!(!warning(EventKind::Created));
        assert!(!warning(EventKind::SecretWritten));
        assert!(warning(EventKind::Recreated));
        assert!(warning(EventKind::SendLimitReached));
        let ev = InboxEvent::new(EventKind::Suspended, "x".repeat(2000)).to_kube();
        assert_eq!(ev.reason, "Suspended");
        assert!(ev.note.unwrap().len() <= 1004);
    }
}
