//! Pure construction of `Inbox.status` from what a pass learned: mirrored counters and the
//! `Ready`, kstatus (`Reconciling`, `Stalled`) and `SendLimitReached` conditions. Which
//! readiness applies is decided by [`crate::controller::inbox::plan`]; this module only renders it.

use crate::agentsend::RemoteInbox;
use crate::api::inbox::{Condition, ConditionStatus, InboxStatus, Reason, condition};

/// Whether the inbox is usable, and if not, why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Readiness {
    /// Exists, active, Secret correct.
    Ready,
    /// Work is in progress or will be retried automatically.
    Progressing {
        /// Why not ready.
        reason: Reason,
        /// For humans.
        message: String,
    },
    /// Needs a human: the spec, the credentials or the Secret must change.
    Stalled {
        /// Why not ready.
        reason: Reason,
        /// For humans.
        message: String,
    },
    /// Deliberately idle (paused): neither reconciling nor stalled.
    Idle {
        /// Why not ready.
        reason: Reason,
        /// For humans.
        message: String,
    },
}

impl Readiness {
    /// Shorthand for [`Readiness::Progressing`].
    pub fn progressing(reason: Reason, message: impl Into<String>) -> Self {
        Readiness::Progressing {
            reason,
            message: message.into(),
        }
    }

    /// Shorthand for [`Readiness::Stalled`].
    pub fn stalled(reason: Reason, message: impl Into<String>) -> Self {
        Readiness::Stalled {
            reason,
            message: message.into(),
        }
    }

    /// The Ready condition's reason.
    pub fn reason(&self) -> Reason {
        match self {
            Readiness::Ready => Reason::Ready,
            Readiness::Progressing { reason, .. }
            | Readiness::Stalled { reason, .. }
            | Readiness::Idle { reason, .. } => *reason,
        }
    }

    /// The Ready condition's message.
    pub fn message(&self) -> &str {
        match self {
            Readiness::Ready => READY,
            Readiness::Progressing { message, .. }
            | Readiness::Stalled { message, .. }
            | Readiness::Idle { message, .. } => message,
        }
    }
}

/// Everything a pass learned that goes into status.
#[derive(Clone, Debug)]
pub struct StatusInput<'a> {
    /// The previous status (counters are kept when this pass could not observe the inbox).
    pub previous: Option<&'a InboxStatus>,
    /// `metadata.generation` this pass acted on.
    pub generation: Option<i64>,
    /// The bound inbox ID, if any.
    pub inbox_id: Option<String>,
    /// The inbox as observed in this pass.
    pub remote: Option<&'a RemoteInbox>,
    /// The Secret currently holding the address, if written.
    pub secret_name: Option<String>,
    /// The outcome.
    pub readiness: Readiness,
    /// RFC 3339 "now", for condition transitions.
    pub now: &'a str,
}

/// Build the status for this pass. Condition transition times only move when a condition's
/// status changes, so an unchanged inbox yields an identical status (and no write).
pub fn build_status(input: StatusInput<'_>) -> InboxStatus {
    let prev = input.previous.cloned().unwrap_or_default();
    let mut s = match &input.inbox_id {
        Some(id) => InboxStatus {
            inbox_id: Some(id.clone()),
            conditions: Vec::new(),
            ..prev.clone()
        },
        // Unbound: nothing to mirror.
        None => InboxStatus {
            secret_name: prev.secret_name.clone(),
            config_map_name: prev.config_map_name.clone(),
            ..Default::default()
        },
    };
    if let Some(r) = input.remote {
        mirror(&mut s, r);
    }
    if input.secret_name.is_some() {
        s.secret_name = input.secret_name.clone();
    }
    s.observed_generation = input.generation;
    let c = Conditions {
        previous: &prev.conditions,
        generation: input.generation,
        now: input.now,
    };
    s.conditions = c.readiness(&input.readiness).into();
    if s.inbox_id.is_some()
        && let Some(remaining) = s.sends_remaining
    {
        s.conditions
            .push(c.send_limit(remaining, s.daily_send_limit.unwrap_or_default()));
    }
    s
}

/// Copy the observed inbox's identity and counters into status.
fn mirror(s: &mut InboxStatus, r: &RemoteInbox) {
    s.inbox_id = Some(r.id.clone());
    s.address = Some(r.address.clone());
    s.display_name = r.display_name.clone();
    s.domain_id = r.domain_id.clone();
    s.state = Some(r.status.as_str().to_string());
    s.daily_send_limit = r.daily_send_limit;
    s.sends_today = r.sends_today;
    s.sends_remaining = r.sends_remaining();
    s.total_sent = r.total_sent;
    s.bounce_count = r.bounce_count;
    s.complaint_count = r.complaint_count;
    s.created_at = r.created_at.clone();
}

/// Renders conditions, keeping the previous transition time of an unchanged status.
struct Conditions<'a> {
    previous: &'a [Condition],
    generation: Option<i64>,
    now: &'a str,
}

/// The message of `Ready` on a Ready Inbox.
pub const READY: &str = "inbox is active and its Secret holds the current address";

/// The message of `Reconciling` and `Stalled` (both `False`) on a Ready Inbox.
pub const UP_TO_DATE: &str = "inbox is up to date";

impl Conditions<'_> {
    /// `Ready`, then kstatus: `Reconciling` while working, `Stalled` when a human must act,
    /// neither otherwise.
    fn readiness(&self, readiness: &Readiness) -> [Condition; 3] {
        let ready = ConditionStatus::from_bool(*readiness == Readiness::Ready);
        let (reconciling, stalled, reason, message) = match readiness {
            Readiness::Progressing { reason, message } => (true, false, *reason, message.as_str()),
            Readiness::Stalled { reason, message } => (false, true, *reason, message.as_str()),
            Readiness::Idle { reason, message } => (false, false, *reason, message.as_str()),
            Readiness::Ready => (false, false, Reason::UpToDate, UP_TO_DATE),
        };
        [
            self.make(
                condition::READY,
                ready,
                readiness.reason(),
                readiness.message(),
            ),
            self.make(
                condition::RECONCILING,
                ConditionStatus::from_bool(reconciling),
                reason,
                message,
            ),
            self.make(
                condition::STALLED,
                ConditionStatus::from_bool(stalled),
                reason,
                message,
            ),
        ]
    }

    /// `SendLimitReached`: True while no sends remain.
    fn send_limit(&self, remaining: i64, limit: i64) -> Condition {
        if remaining == 0 {
            let m = format!(
                "daily send limit of {limit} reached; sends fail with 429 until the window resets"
            );
            self.make(
                condition::SEND_LIMIT_REACHED,
                ConditionStatus::True,
                Reason::SendLimitReached,
                &m,
            )
        } else {
            let m = format!("{remaining} sends remaining today");
            self.make(
                condition::SEND_LIMIT_REACHED,
                ConditionStatus::False,
                Reason::SendsAvailable,
                &m,
            )
        }
    }

    fn make(
        &self,
        type_: &str,
        status: ConditionStatus,
        reason: Reason,
        message: &str,
    ) -> Condition {
        make(
            self.previous,
            type_,
            status,
            reason,
            message,
            self.generation,
            self.now,
        )
    }
}

fn make(
    prev: &[Condition],
    type_: &str,
    status: ConditionStatus,
    reason: Reason,
    message: &str,
    generation: Option<i64>,
    now: &str,
) -> Condition {
    let last_transition_time = prev
        .iter()
        .find(|c| c.type_ == type_ && c.status() == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.to_string());
    Condition {
        type_: type_.to_string(),
        status: status.as_str().to_string(),
        observed_generation: generation,
        last_transition_time,
        reason: reason.as_str().to_string(),
        message: message.to_string(),
    }
}

/// Find a condition by type.
pub fn find<'a>(status: Option<&'a InboxStatus>, type_: &str) -> Option<&'a Condition> {
    status?.conditions.iter().find(|c| c.type_ == type_)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote(sends: i64, limit: i64) -> RemoteInbox {
        RemoteInbox {
            daily_send_limit: Some(limit),
            sends_today: Some(sends),
            ..RemoteInbox::fixture("inb_1", "a@agentsend.io")
        }
    }

    fn input<'a>(
        prev: Option<&'a InboxStatus>,
        r: &'a RemoteInbox,
        now: &'a str,
    ) -> StatusInput<'a> {
        StatusInput {
            previous: prev,
            generation: Some(3),
            inbox_id: Some(r.id.clone()),
            remote: Some(r),
            secret_name: Some("s".into()),
            readiness: Readiness::Ready,
            now,
        }
    }

    #[test]
    fn mirrors_counters_and_is_stable() {
        let r = remote(4, 10);
        let s1 = build_status(input(None, &r, "t1"));
        assert_eq!(s1.sends_remaining, Some(6));
        assert_eq!(s1.observed_generation, Some(3));
        assert_eq!(find(Some(&s1), "Ready").unwrap().status, "True");
        assert_eq!(find(Some(&s1), "SendLimitReached").unwrap().status, "False");
        // Same observation later: identical status, so no write.
        let s2 = build_status(input(Some(&s1), &r, "t2"));
        assert_eq!(s1, s2);
    }

    #[test]
    fn transition_time_moves_only_on_change() {
        let r = remote(10, 10);
        let s1 = build_status(input(None, &r, "t1"));
        let c = find(Some(&s1), "SendLimitReached").unwrap();
        assert_eq!(
            (c.status.as_str(), c.last_transition_time.as_str()),
            ("True", "t1")
        );
        assert_eq!(s1.sends_remaining, Some(0));
        let r2 = remote(12, 10);
        let s2 = build_status(input(Some(&s1), &r2, "t2"));
        assert_eq!(s2.sends_remaining, Some(0), "never negative");
        assert_eq!(
            find(Some(&s2), "SendLimitReached")
                .unwrap()
                .last_transition_time,
            "t1"
        );
        let r3 = remote(0, 10);
        let s3 = build_status(input(Some(&s2), &r3, "t3"));
        assert_eq!(
            find(Some(&s3), "SendLimitReached")
                .unwrap()
                .last_transition_time,
            "t3"
        );
        assert_eq!(find(Some(&s3), "Ready").unwrap().last_transition_time, "t1");
    }

    #[test]
    fn stalled_and_progressing_map_to_kstatus() {
        let r = remote(0, 10);
        let mut i = input(None, &r, "t");
        i.readiness = Readiness::stalled(Reason::Rejected, "address taken");
        let s = build_status(i);
        assert_eq!(find(Some(&s), "Ready").unwrap().reason, "Rejected");
        assert_eq!(find(Some(&s), "Ready").unwrap().message, "address taken");
        assert_eq!(find(Some(&s), "Stalled").unwrap().status, "True");
        assert_eq!(find(Some(&s), "Reconciling").unwrap().status, "False");
        let mut i = input(None, &r, "t");
        i.readiness = Readiness::progressing(Reason::Creating, "creating");
        let s = build_status(i);
        assert_eq!(find(Some(&s), "Reconciling").unwrap().status, "True");
        assert_eq!(find(Some(&s), "Stalled").unwrap().status, "False");
    }

    #[test]
    fn keeps_counters_when_not_observed() {
        let r = remote(4, 10);
        let s1 = build_status(input(None, &r, "t1"));
        let s2 = build_status(StatusInput {
            previous: Some(&s1),
            generation: Some(3),
            inbox_id: Some("inb_1".into()),
            remote: None,
            secret_name: None,
            readiness: Readiness::progressing(Reason::ApiUnavailable, "503"),
            now: "t2",
        });
        assert_eq!(s2.sends_today, Some(4));
        assert_eq!(s2.secret_name.as_deref(), Some("s"));
        assert_eq!(find(Some(&s2), "Ready").unwrap().reason, "ApiUnavailable");
    }
}
