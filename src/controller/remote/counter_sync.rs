//! The counter sync ([`run_counter_sync`]): rescans every account with bound inboxes each
//! interval and asks the controller to reconcile exactly the Inboxes whose inbox changed or
//! vanished, so an unchanged fleet costs ceil(N/100) list requests and zero Kubernetes writes
//! per interval.

use std::time::Duration;

use futures::channel::mpsc;
use kube::runtime::reflector::ObjectRef;

use crate::agentsend::ApiError;
use crate::api::inbox::Inbox;
use crate::controller::remote::bindings::BindingRegistry;
use crate::controller::remote::scans::ScanCache;

/// Rescan every account with bound inboxes each `interval` and send the Inboxes whose inbox
/// changed to `trigger`. On an account-level failure (revoked key, outage) every Inbox of
/// that account is reconciled so its conditions say so; `on_success` runs after a round in
/// which every scan succeeded.
pub async fn run_counter_sync(
    scans: ScanCache,
    bindings: BindingRegistry,
    trigger: mpsc::UnboundedSender<ObjectRef<Inbox>>,
    on_success: impl Fn() + Send + 'static,
) {
    // A random phase so several operators (shards) do not scan in lockstep; then one round
    // per interval exactly (a slow round delays the next instead of bunching them up).
    // At least 1 s (a zero period panics in tokio); the CLI refuses anything outside 1 s–24 h.
    let interval = scans.interval.max(Duration::from_secs(1));
    let phase = interval.mul_f64(rand::random::<f64>() * 0.5);
    let now = tokio::time::Instant::now();
    let first = now
        .checked_add(interval.saturating_add(phase))
        .unwrap_or(now);
    let mut ticks = tokio::time::interval_at(first, interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let accounts = bindings.bound_ids();
        scans.retain_accounts(&accounts.iter().map(|(k, _)| k.clone()).collect());
        let mut all_ok = true;
        for (key, ids) in accounts {
            let to_reconcile = match scans.sync(&key, &ids).await {
                Ok(changed) => {
                    tracing::debug!(
                        inboxes = ids.len(),
                        changed = changed.len(),
                        "counter sync scan"
                    );
                    bindings.bound_to(&key, &changed)
                }
                Err(e) => {
                    all_ok = false;
                    tracing::warn!(error = %e, inboxes = ids.len(), "counter sync scan failed");
                    match e {
                        ApiError::RateLimited { .. } => Vec::new(),
                        _ => bindings.bound_to(&key, &ids),
                    }
                }
            };
            for obj in to_reconcile {
                let _ = trigger.unbounded_send(obj);
            }
        }
        if all_ok {
            on_success();
        }
        if trigger.is_closed() {
            return;
        }
    }
}
