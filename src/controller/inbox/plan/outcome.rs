//! How a pass ends or reports progress: the [`Done`] constructors, and the stalled outcomes
//! more than one phase reaches (`Rejected`, `SecretConflict`).

use std::time::Duration;

use crate::agentsend::RemoteInbox;
use crate::api::inbox::Reason;
use crate::controller::inbox::status::Readiness;

use super::observed::Observed;
use super::report::report;
use super::step::{Done, Failures, Report, Step, Then};

pub(super) fn finish(report: Option<Report>, then: Then) -> Done {
    Done {
        report,
        then,
        failures: Failures::Keep,
        failed: None,
        release: false,
        hold: None,
        blocked_on: None,
    }
}

pub(super) fn done(report: Report, then: Then) -> Step {
    Step::Done(finish(Some(report), then))
}

pub(super) fn done_quietly(then: Then) -> Step {
    Step::Done(finish(None, then))
}

/// A progress report: written if possible, and the pass goes on either way.
pub(super) fn progress(o: &Observed, readiness: Readiness) -> Step {
    Step::Progress(Report {
        best_effort: true,
        ..report(o, None, None, readiness)
    })
}

pub(super) fn stalled(reason: Reason, message: impl Into<String>) -> Readiness {
    Readiness::stalled(reason, message)
}

pub(super) fn rejected(o: &Observed, msg: String) -> Step {
    done(
        report(o, None, None, stalled(Reason::Rejected, msg)),
        Then::Settle,
    )
}

/// A Secret or ConfigMap of the wanted name is someone else's: `SecretConflict`, nothing
/// written. The foreign object is not watched: look again now and then.
pub(super) fn conflict(o: &Observed, remote: &RemoteInbox, msg: String) -> Step {
    let again = Duration::from_secs(30).mul_f64(1.0 + o.jitter * 0.2);
    Step::Done(Done {
        failures: Failures::Reset,
        ..finish(
            Some(report(
                o,
                Some(remote),
                None,
                stalled(Reason::SecretConflict, msg),
            )),
            Then::Requeue(again),
        )
    })
}
