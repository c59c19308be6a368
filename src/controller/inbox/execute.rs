//! The executor of a reconcile pass: it decides nothing. It asks [`crate::controller::inbox::plan::plan`] for the
//! next step, performs that step's Kubernetes and AgentSend calls, records what they found in
//! the [`Observed`], and loops until the planner ends the pass. It also counts the pass in
//! the metrics and applies the error policy the planner chose.
//!
//! Every write (AgentSend POST/DELETE, Kubernetes writes and Events) is preceded by a check of
//! the write gate ([`Context::may_write`]): a pass that finds it closed (this instance is not
//! a confirmed leader) stops there with [`Stop::NotLeading`]. Stopping between two writes
//! is what a crash does, and the planner recovers from it (the create-pending mark).

use std::sync::Arc;
use std::time::Instant;

use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use tracing::{Instrument, field, warn};

use crate::api::inbox::{self, Inbox};
use crate::controller::cache::inbox::CachedInbox;
use crate::controller::cache::written::{self, Write};
use crate::controller::context::Context;
use crate::controller::error::{Error, Stop};
use crate::controller::inbox::plan::{self, Phase};
use crate::metrics::Metrics;

use pass::{Pass, needs_finalizer};

mod config_maps;
mod inputs;
mod pass;
mod writes;

/// How a pass that did not fail ended.
struct Passed {
    action: Action,
    /// Metric label of a failure the pass handled itself (reported in status, retried).
    failed: Option<&'static str>,
    /// The pass did nothing: its cached view predates this operator's own last write.
    skipped: bool,
}

/// Entry point called by the kube-runtime Controller.
pub(crate) async fn reconcile(
    cached: Arc<CachedInbox>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let started = Instant::now();
    let inbox = Arc::new(cached.to_inbox());
    let span = tracing::info_span!(
        "reconcile",
        namespace = inbox.metadata.namespace.as_deref().unwrap_or_default(),
        name = inbox.metadata.name.as_deref().unwrap_or_default(),
        inbox_id = field::Empty
    );
    if let Some(b) = ctx.proof.binding(inbox.as_ref()) {
        span.record("inbox_id", field::display(&b.id));
    }
    let result = run(inbox, &ctx).instrument(span.clone()).await;
    span.in_scope(|| {
        tracing::debug!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            ok = result.is_ok(),
            "pass ended"
        );
    });
    record(&ctx.metrics, &result, started);
    match result {
        Ok(p) => Ok(p.action),
        Err(stop) => ended_early(&cached, stop, &ctx),
    }
}

/// What follows a pass that stopped early: a failure goes to the error policy (`Err`);
/// the other endings name their own retry.
fn ended_early(inbox: &CachedInbox, stop: Stop, ctx: &Context) -> Result<Action, Error> {
    let (namespace, name) = (
        inbox.metadata.namespace.as_deref().unwrap_or_default(),
        inbox.metadata.name.as_deref().unwrap_or_default(),
    );
    match stop {
        Stop::Failed(e) => Err(e),
        Stop::FailedRetryIn { cause, retry } => {
            ctx.bump_failures(&inbox.inbox_ref());
            warn!(
                namespace,
                name,
                error = %cause,
                reason = cause.metric_label(),
                retry_in_ms = retry.as_millis() as u64,
                "reconcile failed"
            );
            Ok(Action::requeue(retry))
        }
        Stop::NotLeading => {
            // Not a failure of this Inbox: no backoff, and the gate logs its transitions.
            tracing::debug!(namespace, name, "not leading: pass stopped before writing");
            Ok(Action::requeue(Stop::NOT_LEADING_RETRY))
        }
        Stop::Held(remaining) => Ok(Action::requeue(remaining)),
    }
}

/// Count a pass once: a success only when nothing failed, an error with its real label.
fn record(metrics: &Metrics, result: &Result<Passed, Stop>, started: Instant) {
    let failed = match result {
        Ok(p) if p.skipped => return metrics.skipped(),
        Ok(p) => p.failed,
        // Not an attempt: the failure it backs off from was counted.
        Err(Stop::Held(_)) => return,
        Err(stop) => stop.metric_label(),
    };
    metrics.reconciled(failed.is_none(), started.elapsed());
    if let Some(label) = failed {
        metrics.error(label);
    }
}

async fn run(inbox: Arc<Inbox>, ctx: &Context) -> Result<Passed, Stop> {
    let pass = Pass::new(ctx, &inbox)?;
    if ctx
        .last_writes
        .behind(&pass.uid, inbox.metadata.resource_version.as_deref())
    {
        tracing::debug!("the cache has not caught up with this operator's last write yet");
        return Ok(Passed {
            action: Action::requeue(written::RETRY),
            failed: None,
            skipped: true,
        });
    }
    // kube's finalizer helper may write (add or remove the finalizer) before any step.
    ctx.may_write()?;
    let outcome = run_phase(&pass, inbox).await;
    let last = *pass.last_write.lock();
    if let Some(w) = last {
        ctx.last_writes.note(&pass.uid, w);
    }
    let action = outcome?;
    let failed = *pass.failed.lock();
    Ok(Passed {
        action,
        failed,
        skipped: false,
    })
}

/// Run the pass in the phase the Inbox is in, through kube's finalizer helper where it
/// applies.
async fn run_phase(pass: &Pass<'_>, inbox: Arc<Inbox>) -> Result<Action, Stop> {
    Ok(match Phase::before_finalizer(&inbox) {
        Some(phase) => pass.run(&inbox, phase).await?,
        // Without the finalizer, not deleted: this pass adds it with its first write (with the
        // pending mark when that is the first), rather than in a write of its own.
        None if needs_finalizer(&inbox) => pass.run(&inbox, Phase::Apply).await?,
        // kube's helper adds the finalizer, or runs Apply / Cleanup (and then removes it).
        None => {
            let p = pass;
            let action = finalizer(
                &pass.inboxes,
                inbox::FINALIZER,
                inbox,
                move |event| async move {
                    match event {
                        FinalizerEvent::Apply(i) => p.run(&i, Phase::Apply).await,
                        FinalizerEvent::Cleanup(i) => p.run(&i, Phase::Cleanup).await,
                    }
                },
            )
            .await
            .map_err(Stop::from)?;
            if pass.released.load(std::sync::atomic::Ordering::Relaxed) {
                // The helper removed the finalizer after the release: done with this Inbox.
                pass.wrote(Write::Finalized);
            }
            action
        }
    })
}

/// Retry policy for passes that failed (Kubernetes failures, deletion failures).
pub(crate) fn error_policy(inbox: Arc<CachedInbox>, err: &Error, ctx: Arc<Context>) -> Action {
    let failures = ctx.bump_failures(&inbox.inbox_ref());
    let delay = plan::error_retry(err, failures, rand::random(), ctx.settings.max_retry_delay);
    warn!(
        namespace = inbox.metadata.namespace.as_deref().unwrap_or_default(),
        name = inbox.metadata.name.as_deref().unwrap_or_default(),
        error = %err,
        reason = err.metric_label(),
        retry_in_ms = delay.as_millis() as u64,
        "reconcile failed"
    );
    Action::requeue(delay)
}

#[cfg(test)]
mod tests;
