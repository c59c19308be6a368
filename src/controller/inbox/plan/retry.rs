//! Failures and backoff: the condition and retry delay of an AgentSend error, the retry of a
//! failed pass (the error policy), a failed deletion pass (the finalizer stays), and the hold
//! that keeps passes over the same inputs from trying again before their time.

use std::time::Duration;

use crate::agentsend::{ApiError, DEFAULT_RETRY_AFTER, MAX_RETRY_AFTER};
use crate::api::inbox::Reason;
use crate::controller::error::{Error, Stop};
use crate::controller::inbox::status::Readiness;

use super::backoff;
use super::observed::{Hold, Lookup, Observed, Phase};
use super::outcome::{done_quietly, finish, stalled};
use super::report::report;
use super::step::{Done, Failure, Failures, Report, Step, Then};

/// Turn an AgentSend failure into conditions and a retry.
/// Attempts that write (create, recovery, adoption) hold back passes over the same inputs
/// for the retry delay; a failed observation of a bound inbox does not (the account's scan
/// cache bounds those calls, and the counter sync wakes the Inbox when the account is back).
pub(super) fn api_failure(o: &Observed, e: &ApiError) -> Step {
    let delay = retry_delay(e, o.failures, o.jitter, o.max_retry_delay);
    let observing =
        o.binding().is_some() && o.created.is_none() && matches!(o.remote, Some(Lookup::Failed(_)));
    Step::Done(Done {
        failures: Failures::Bump,
        failed: Some(e.reason()),
        hold: delay.filter(|_| !observing).map(|d| Hold::of(o, d)),
        ..finish(
            Some(report(o, None, None, readiness_for_error(e))),
            delay.map_or(Then::Settle, Then::Requeue),
        )
    })
}

/// The Ready condition for an AgentSend failure.
pub(super) fn readiness_for_error(e: &ApiError) -> Readiness {
    match e {
        ApiError::Unauthorized { .. } => stalled(Reason::CredentialsInvalid, e.to_string()),
        ApiError::Rejected { message, status } => stalled(
            Reason::Rejected,
            format!("AgentSend rejected the spec (HTTP {status}): {message}"),
        ),
        ApiError::NotFound { .. }
        | ApiError::RateLimited { .. }
        | ApiError::Transient { .. }
        | ApiError::InvalidResponse { .. } => {
            Readiness::progressing(Reason::ApiUnavailable, e.to_string())
        }
        ApiError::Config { .. } => stalled(Reason::ApiUnavailable, e.to_string()),
    }
}

/// How long to wait before trying again after an AgentSend error; `None` means wait for the
/// spec to change. `failures` counts consecutive failures of this Inbox (0 for the first);
/// `jitter` in [0, 1) spreads retries so many Inboxes do not retry at once; `max` caps the
/// exponential backoff (never a `Retry-After`).
pub(super) fn retry_delay(
    err: &ApiError,
    failures: u32,
    jitter: f64,
    max: Duration,
) -> Option<Duration> {
    // `clamp` keeps NaN, which `mul_f64` would panic on.
    let jitter = if jitter.is_nan() {
        0.0
    } else {
        jitter.clamp(0.0, 0.999)
    };
    match err {
        ApiError::Rejected { .. } => None,
        ApiError::RateLimited { retry_after, .. } => {
            let base = retry_after
                .unwrap_or(DEFAULT_RETRY_AFTER)
                .min(MAX_RETRY_AFTER);
            // Never earlier than Retry-After; spread up to 20 % (at least 1 s) later.
            let spread = (base.mul_f64(0.2)).max(Duration::from_secs(1));
            Some(base.saturating_add(spread.mul_f64(jitter)))
        }
        ApiError::Unauthorized { .. } | ApiError::Config { .. } => {
            Some(Duration::from_secs(300) + Duration::from_secs(60).mul_f64(jitter))
        }
        ApiError::Transient { .. }
        | ApiError::InvalidResponse { .. }
        | ApiError::NotFound { .. } => Some(backoff::backoff(failures, jitter, max)),
    }
}

/// Retry delay for a pass that failed with `err` (the error policy); `max` caps the
/// exponential backoff.
pub fn error_retry(err: &Error, failures: u32, jitter: f64, max: Duration) -> Duration {
    match err {
        Error::Api(e) => retry_delay(e, failures, jitter, max).unwrap_or(Duration::from_secs(300)),
        Error::CredentialsMissing(_) => backoff::backoff(failures.max(4), jitter, max),
        _ => backoff::backoff(failures, jitter, max),
    }
}

/// Fail a deletion pass: the finalizer stays, and passes over the same inputs wait for the
/// reconcile backoff (or the API's own retry rule) instead of retrying on their own writes.
pub(super) fn fail(o: &Observed, report: Option<Report>, failure: Failure) -> Step {
    let report = report.map(|r| Report {
        best_effort: true,
        ..r
    });
    let delay = match Stop::from(failure.clone()) {
        Stop::Held(d) => d,
        Stop::Failed(e) | Stop::FailedRetryIn { cause: e, .. } => {
            error_retry(&e, o.failures, o.jitter, o.max_retry_delay)
        }
        Stop::NotLeading => Stop::NOT_LEADING_RETRY,
    };
    Step::Done(Done {
        hold: Some(Hold::of(o, delay)),
        ..finish(report, Then::Fail(failure))
    })
}

/// While a failed attempt over the same inputs backs off: do nothing until it has elapsed.
/// (The key is read first: a new key is a new attempt.)
pub(super) fn held(o: &Observed) -> Option<Step> {
    let hold = o.hold.as_ref()?;
    if o.credentials.is_none() {
        return Some(Step::ReadCredentials);
    }
    if !hold.matches(o) {
        return None;
    }
    let then = match o.phase {
        // A quiet Ok would let the finalizer go: the cleanup pass fails instead.
        Phase::Cleanup => Then::Fail(Failure::Held(hold.remaining)),
        Phase::Apply | Phase::Held => Then::Requeue(hold.remaining),
    };
    Some(done_quietly(then))
}

/// Retry after a stale cache view: soon (the watch normally delivers the newer object within
/// a second), then backing off, so a watch that is down does not cost a patch per second.
pub(super) fn stale_view_retry(o: &Observed) -> Step {
    Step::Done(Done {
        failures: Failures::Bump,
        ..finish(
            None,
            Then::Requeue(backoff::stale_view_delay(
                o.failures,
                o.jitter,
                o.max_retry_delay,
            )),
        )
    })
}
