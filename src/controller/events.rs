//! The Kubernetes Events the controller publishes: one variant per contract reason, with its
//! type (Normal or Warning) fixed by the variant.

use kube::runtime::events::{Event, EventType};

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
    /// The event's `reason` (and `action`).
    pub fn reason(self) -> &'static str {
        match self {
            EventKind::Created => "Created",
            EventKind::Adopted => "Adopted",
            EventKind::Deleted => "Deleted",
            EventKind::Orphaned => "Orphaned",
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

#[cfg(test)]
mod tests {
    use super::*;

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
