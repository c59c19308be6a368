//! Leader election: the lease state machine around the controller.
//!
//! - **Following**: the lease is held elsewhere. This instance is healthy and ready (its
//!   leadership is known) and runs no controller.
//! - **Leading**: the controller runs; losing the lease cancels it like a shutdown does.
//! - **Releasing**: on the way out the lease is given up, so a standby takes over at once;
//!   after a loss the process exits with an error so that a restart rejoins as a follower.

use std::future::Future;
use std::time::Duration;

use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::metrics::Metrics;
use crate::operator::StartupError;
use crate::server::Health;

/// Which Lease to hold, and as whom.
#[derive(Clone, Debug)]
pub struct Lease {
    /// Lease name.
    pub name: String,
    /// Lease namespace.
    pub namespace: String,
    /// This instance's identity.
    pub identity: String,
    /// How long a holder stays leader without renewing.
    pub duration: Duration,
}

/// Follow until leader, lead (running `controller` until `shutdown` or a lost lease), then
/// release the lease.
pub async fn run<F, Fut>(
    client: Client,
    lease: Lease,
    health: &Health,
    metrics: &Metrics,
    shutdown: CancellationToken,
    controller: F,
) -> Result<(), StartupError>
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: Future<Output = ()>,
{
    let secs = lease.duration.as_secs();
    let manager = LeaseManagerBuilder::new(client, &lease.name)
        .with_namespace(&lease.namespace)
        .with_identity(&lease.identity)
        .with_duration(secs.max(2))
        .with_grace((secs / 3).max(1))
        .build()
        .await
        .map_err(|e| StartupError::Lease(e.to_string()))?;
    let (mut leader_rx, lease_task) = manager.watch().await;
    // Following: healthy and ready, since leadership is known.
    health.set_ready(true);
    info!(lease = %lease.name, namespace = %lease.namespace, identity = %lease.identity, "waiting for leadership");
    let became_leader = tokio::select! {
        r = leader_rx.wait_for(|l| *l) => r.is_ok(),
        _ = shutdown.cancelled() => false,
    };
    if !became_leader {
        drop(leader_rx);
        let _ = lease_task.await;
        if shutdown.is_cancelled() {
            info!("terminated while waiting for leadership");
            return Ok(());
        }
        return Err(StartupError::Lease("lease manager stopped".into()));
    }

    // Leading: not ready until the controller's caches have synced.
    info!("acquired leadership; starting controller");
    metrics.set_leader(true);
    health.set_ready(false);
    let stop = shutdown.child_token();
    let lost = CancellationToken::new();
    let mut watch_leader = leader_rx.clone();
    let (on_loss, lost_flag) = (stop.clone(), lost.clone());
    let loss_watch = tokio::spawn(async move {
        if watch_leader.wait_for(|l| !*l).await.is_ok() {
            warn!("lost leadership; stopping controller");
            lost_flag.cancel();
            on_loss.cancel();
        }
    });
    controller(stop).await;
    metrics.set_leader(false);

    // Releasing: closing every receiver makes the lease manager release the Lease.
    loss_watch.abort();
    let _ = loss_watch.await;
    drop(leader_rx);
    match tokio::time::timeout(Duration::from_secs(10), lease_task).await {
        Ok(Ok(Ok(_))) => info!("released the leader lease"),
        Ok(Ok(Err(e))) => warn!(error = %e, "could not release the leader lease"),
        _ => warn!("timed out releasing the leader lease"),
    }
    if lost.is_cancelled() {
        return Err(StartupError::LostLease);
    }
    Ok(())
}
