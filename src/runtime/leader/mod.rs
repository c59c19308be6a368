//! Leader election: the lease state machine around the controller, and the write gate.
//!
//! - **Following**: the Lease is held elsewhere. This instance is healthy and ready (its
//!   leadership is known), runs no controller, and reads the Lease every D/8. It takes the
//!   Lease when it is free, or when it has seen no change to it for the duration the Lease
//!   states, by its own clock ([`decide`]).
//! - **Leading**: the controller runs, but it writes (AgentSend POST/DELETE, Kubernetes
//!   writes) only while the [`WriteGate`] is open: until 3/4·D after the last renewal that
//!   succeeded ([`gate`]). A renewal refused because the Lease names someone else, no one, or
//!   is gone cancels the controller like a shutdown does, and the process exits with an error
//!   so that a restart rejoins as a follower.
//! - **Releasing**: on a normal shutdown the Lease is given up, so a standby takes over at
//!   once.
//!
//! Every write (create, take, renew, release) is made on the resourceVersion last read or
//! written, so of two instances that decide at the same moment only one succeeds; the other
//! sees a conflict and reads again.

pub mod decide;
pub mod gate;

use std::future::Future;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease as KubeLease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::PostParams;
use kube::{Api, Client};
use thiserror::Error;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::metrics::Metrics;
use crate::runtime::server::Health;
use decide::{Lost, Next, Seen};
pub use gate::{LeaseClock, LeaseTiming, TimingError, WriteGate};

/// Which Lease to hold, and as whom.
#[derive(Clone, Debug)]
pub struct Lease {
    /// Lease name.
    pub name: String,
    /// Lease namespace.
    pub namespace: String,
    /// This instance's identity.
    pub identity: String,
    /// Lease duration, renewal and renew deadline.
    pub timing: LeaseTiming,
}

/// Why leading ended in an error.
#[derive(Debug, Error)]
pub enum LeaderError {
    /// This instance lost the Lease while leading.
    #[error("lost the leader lease ({0}); exiting so that a restart rejoins as a follower")]
    Lost(Lost),
}

/// Why one read or write of the Lease did not happen.
#[derive(Debug, Error)]
enum LeaseIoError {
    #[error("{0}")]
    Kube(#[from] kube::Error),
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
}

/// Follow until leader, lead (running `controller` until `shutdown` or a lost lease), then
/// release the Lease. `gate` opens only while renewals succeed.
pub async fn run<F, Fut>(
    client: Client,
    lease: Lease,
    gate: WriteGate,
    health: &Health,
    metrics: &Metrics,
    shutdown: CancellationToken,
    controller: F,
) -> Result<(), LeaderError>
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut elector = Elector::new(client, lease);
    // Following: healthy and ready, since leadership is known.
    health.set_ready(true);
    info!(lease = %elector.lease.name, namespace = %elector.lease.namespace, identity = %elector.lease.identity, "waiting for leadership");
    tokio::select! {
        () = elector.acquire(&gate) => {}
        () = shutdown.cancelled() => {
            info!("terminated while waiting for leadership");
            return Ok(());
        }
    }

    // Leading: not ready until the controller's caches have synced.
    info!("acquired leadership; starting controller");
    metrics.set_leader(true);
    health.set_ready(false);
    let lost = lead(&mut elector, &gate, shutdown, controller).await;
    metrics.set_leader(false);
    if let Some(lost) = lost {
        // Nothing to release: the Lease is someone else's (or gone).
        return Err(LeaderError::Lost(lost));
    }
    // Releasing, so that a standby need not wait for the Lease to expire.
    match tokio::time::timeout(Duration::from_secs(10), elector.release()).await {
        Ok(Ok(())) => info!("released the leader lease"),
        Ok(Err(e)) => warn!(error = %e, "could not release the leader lease"),
        Err(_) => warn!("timed out releasing the leader lease"),
    }
    Ok(())
}

/// Run `controller` while the elector keeps the Lease; stop it when a renewal shows the
/// Lease lost. Returns how it was lost, if it was.
async fn lead<F, Fut>(
    elector: &mut Elector,
    gate: &WriteGate,
    shutdown: CancellationToken,
    controller: F,
) -> Option<Lost>
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: Future<Output = ()>,
{
    let stop = shutdown.child_token();
    let running = controller(stop.clone());
    tokio::pin!(running);
    let lost = tokio::select! {
        () = &mut running => None,
        lost = elector.keep(gate) => Some(lost),
    };
    if let Some(lost) = &lost {
        warn!(lease = %lost, "the leader Lease is no longer ours; stopping controller");
        stop.cancel();
        running.await;
    }
    gate.revoke();
    lost
}

/// Reads and writes one Lease for one identity, remembering what it last saw.
struct Elector {
    api: Api<KubeLease>,
    lease: Lease,
    /// The Lease as last read or written: its resourceVersion is the precondition of the
    /// next write. `None`: not read yet, or not found.
    current: Option<KubeLease>,
    /// Its record, and since when it has been seen unchanged.
    seen: Option<Seen>,
}

impl Elector {
    fn new(client: Client, lease: Lease) -> Elector {
        Elector {
            api: Api::namespaced(client, &lease.namespace),
            lease,
            current: None,
            seen: None,
        }
    }

    /// The longest one request may take: one check interval, and at least a second.
    fn request_timeout(&self) -> Duration {
        self.lease.timing.check_every.max(Duration::from_secs(1))
    }

    /// Follow until this instance holds the Lease; `gate` is confirmed by the winning write.
    async fn acquire(&mut self, gate: &WriteGate) {
        let mut failing = false;
        loop {
            match self.try_acquire(gate).await {
                Ok(true) => return,
                Ok(false) => failing = false,
                Err(e) if !failing => {
                    failing = true;
                    warn!(error = %e, "cannot read or take the leader Lease");
                }
                Err(e) => debug!(error = %e, "cannot read or take the leader Lease"),
            }
            tokio::time::sleep(self.lease.timing.check_every).await;
        }
    }

    /// Read the Lease and take it if [`decide::next`] says so. Whether it is now ours.
    async fn try_acquire(&mut self, gate: &WriteGate) -> Result<bool, LeaseIoError> {
        self.read().await?;
        let next = decide::next(
            &self.lease.identity,
            self.seen.as_ref(),
            Instant::now(),
            self.lease.timing.duration,
        );
        match next {
            Next::Wait { holder, remaining } => {
                debug!(%holder, ?remaining, "the leader Lease is held");
                Ok(false)
            }
            Next::Create | Next::Take => self.claim(gate).await,
        }
    }

    /// Renew while leading: D/2 after the last renewal, retrying every D/8. Returns how the
    /// Lease was lost; the gate closes on its own when renewals stop succeeding.
    async fn keep(&mut self, gate: &WriteGate) -> Lost {
        let timing = self.lease.timing;
        let mut renewed = Instant::now();
        let mut failing = false;
        loop {
            tokio::time::sleep(timing.check_every).await;
            gate.is_open();
            if renewed.elapsed() < timing.renew_after {
                continue;
            }
            let sent = Instant::now();
            match self.claim(gate).await {
                Ok(true) => (renewed, failing) = (sent, false),
                Ok(false) => {
                    if let Err(lost) = self.check_still_held().await {
                        gate.revoke();
                        gate.is_open();
                        return lost;
                    }
                }
                Err(e) if !failing => {
                    failing = true;
                    warn!(error = %e, "cannot renew the leader Lease");
                }
                Err(e) => debug!(error = %e, "cannot renew the leader Lease"),
            }
        }
    }

    /// After a refused renewal: read the Lease again and say whether it is still ours. A
    /// failed read says nothing; the next renewal tries again.
    async fn check_still_held(&mut self) -> Result<(), Lost> {
        if let Err(e) = self.read().await {
            debug!(error = %e, "cannot read the leader Lease after a refused renewal");
            return Ok(());
        }
        let record = self.current.as_ref().and_then(|l| l.spec.as_ref());
        decide::still_held(&self.lease.identity, record, self.current.is_some())
    }

    /// Read the Lease, and note when its record changed.
    async fn read(&mut self) -> Result<(), LeaseIoError> {
        let limit = self.request_timeout();
        let found = tokio::time::timeout(limit, self.api.get_opt(&self.lease.name))
            .await
            .map_err(|_| LeaseIoError::TimedOut(limit))??;
        let now = Instant::now();
        self.seen = found.as_ref().map(|l| {
            let record = l.spec.clone().unwrap_or_default();
            Seen::observe(self.seen.take(), record, now)
        });
        self.current = found;
        Ok(())
    }

    /// Write this instance into the Lease as holder with a fresh renewTime, on the
    /// resourceVersion last seen (creating it if none was). On success `gate` is confirmed
    /// from the moment the request was sent. `Ok(false)`: someone else wrote first.
    async fn claim(&mut self, gate: &WriteGate) -> Result<bool, LeaseIoError> {
        let lease = claimed(self.current.as_ref(), &self.lease, jiff::Timestamp::now());
        let limit = self.request_timeout();
        let sent = Instant::now();
        let pp = PostParams::default();
        let write = async {
            match lease.metadata.resource_version {
                Some(_) => self.api.replace(&self.lease.name, &pp, &lease).await,
                None => self.api.create(&pp, &lease).await,
            }
        };
        let written = tokio::time::timeout(limit, write)
            .await
            .map_err(|_| LeaseIoError::TimedOut(limit))?;
        match written {
            Ok(l) => {
                self.current = Some(l);
                gate.confirm(sent);
                Ok(true)
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Give the Lease up, if it is still as this instance last wrote it.
    async fn release(&mut self) -> Result<(), LeaseIoError> {
        let Some(mut lease) = self.current.clone() else {
            return Ok(());
        };
        if let Some(spec) = lease.spec.as_mut() {
            spec.holder_identity = None;
        }
        match self
            .api
            .replace(&self.lease.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(()),
            // Someone else wrote it since: it is not ours to release.
            Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// `current` (or a new Lease) naming `lease.identity` as holder, renewed at `now`; a change of
/// holder sets the acquire time and counts a transition. Keeps `current`'s resourceVersion.
fn claimed(current: Option<&KubeLease>, lease: &Lease, now: jiff::Timestamp) -> KubeLease {
    let mut out = current.cloned().unwrap_or_else(|| {
        let mut l = KubeLease::default();
        l.metadata.name = Some(lease.name.clone());
        l.metadata.namespace = Some(lease.namespace.clone());
        l
    });
    let spec = out.spec.get_or_insert_with(LeaseSpec::default);
    if spec.holder_identity.as_deref() != Some(lease.identity.as_str()) {
        let transitions = spec.lease_transitions.unwrap_or(0);
        // A Lease that never had a holder is acquired, not transferred.
        if spec
            .holder_identity
            .as_deref()
            .is_some_and(|h| !h.is_empty())
        {
            spec.lease_transitions = Some(transitions.saturating_add(1));
        } else {
            spec.lease_transitions = Some(transitions);
        }
        spec.holder_identity = Some(lease.identity.clone());
        spec.acquire_time = Some(MicroTime(now));
    }
    spec.renew_time = Some(MicroTime(now));
    let secs = lease.timing.duration.as_secs();
    spec.lease_duration_seconds = Some(i32::try_from(secs).unwrap_or(i32::MAX));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease() -> Lease {
        Lease {
            name: "l".into(),
            namespace: "ns".into(),
            identity: "me".into(),
            timing: LeaseTiming::new(Duration::from_secs(6)).expect("valid"),
        }
    }

    fn held_by(holder: Option<&str>, transitions: Option<i32>) -> KubeLease {
        let mut l = KubeLease::default();
        l.metadata.resource_version = Some("7".into());
        l.spec = Some(LeaseSpec {
            holder_identity: holder.map(String::from),
            lease_transitions: transitions,
            acquire_time: Some(MicroTime(jiff::Timestamp::UNIX_EPOCH)),
            ..LeaseSpec::default()
        });
        l
    }

    #[test]
    fn a_claim_names_this_instance_and_keeps_the_precondition() {
        let now = jiff::Timestamp::now();
        let new = claimed(None, &lease(), now);
        let spec = new.spec.as_ref().expect("spec");
        assert_eq!(new.metadata.resource_version, None, "created, not replaced");
        assert_eq!(spec.holder_identity.as_deref(), Some("me"));
        assert_eq!(spec.lease_duration_seconds, Some(6));
        assert_eq!(spec.lease_transitions, Some(0));

        let taken = claimed(Some(&held_by(Some("you"), Some(2))), &lease(), now);
        let spec = taken.spec.as_ref().expect("spec");
        assert_eq!(taken.metadata.resource_version.as_deref(), Some("7"));
        assert_eq!(
            spec.lease_transitions,
            Some(3),
            "a takeover is a transition"
        );
        assert_eq!(spec.acquire_time, Some(MicroTime(now)));

        let renewed = claimed(Some(&held_by(Some("me"), Some(3))), &lease(), now);
        let spec = renewed.spec.as_ref().expect("spec");
        assert_eq!(spec.lease_transitions, Some(3), "a renewal is not");
        assert_eq!(
            spec.acquire_time,
            Some(MicroTime(jiff::Timestamp::UNIX_EPOCH)),
            "a renewal keeps the acquire time"
        );
        assert_eq!(spec.renew_time, Some(MicroTime(now)));

        let free = claimed(Some(&held_by(None, Some(3))), &lease(), now);
        assert_eq!(free.spec.and_then(|s| s.lease_transitions), Some(3));
    }
}
