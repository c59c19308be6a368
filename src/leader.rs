//! Leader election: the lease state machine around the controller, and the write gate.
//!
//! - **Following**: the lease is held elsewhere. This instance is healthy and ready (its
//!   leadership is known) and runs no controller.
//! - **Leading**: the controller runs, but it writes (AgentSend POST/DELETE, Kubernetes
//!   writes) only while the [`WriteGate`] is open: while this instance has *confirmed* a
//!   renewal of the Lease within the renew deadline. Losing the lease cancels the controller
//!   like a shutdown does.
//! - **Releasing**: on the way out the lease is given up, so a standby takes over at once;
//!   after a loss the process exits with an error so that a restart rejoins as a follower.
//!
//! Timing ([`LeaseTiming`], from `--lease-duration` D): the lease manager renews the Lease
//! D/2 after its last renewal; a confirmer reads the Lease every D/8 and, when it names this
//! instance with a renewTime of age `a`, opens the gate until `a` + 3/4·D from now. A leader
//! that cannot renew (API server unreachable, Lease taken or deleted) therefore stops
//! writing 3/4·D after its last renewal, D/4 before any other instance may take the Lease.
//! A Lease naming another holder, no holder, or gone counts as lost at once.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease as KubeLease;
use kube::{Api, Client};
use kube_lease_manager::LeaseManagerBuilder;
use thiserror::Error;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

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
    /// Lease duration, renewal and renew deadline.
    pub timing: LeaseTiming,
}

/// A `--lease-duration` the lease cannot work with.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TimingError {
    /// Too short to renew, confirm and stop writing in time.
    #[error(
        "--lease-duration {0:?} is too short: use at least {min}s (the leader renews after half of it and must confirm the renewal within three quarters)",
        min = LeaseTiming::MIN_SECONDS
    )]
    TooShort(Duration),
    /// A Lease holds whole seconds.
    #[error("--lease-duration {0:?} is not a whole number of seconds (a Lease holds seconds)")]
    Fractional(Duration),
}

/// The lease's timing, derived from its duration D.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseTiming {
    /// D: how long the Lease stays valid after a renewal; another instance may take it then.
    pub duration: Duration,
    /// When the lease manager renews, after the last renewal: D/2 (whole seconds).
    pub renew_after: Duration,
    /// How long after a renewal this instance may still write: 3/4·D.
    pub renew_deadline: Duration,
    /// How often the confirmer reads the Lease: D/8.
    pub check_every: Duration,
}

impl LeaseTiming {
    /// The shortest lease duration accepted, in seconds.
    pub const MIN_SECONDS: u64 = 4;

    /// The timing of a lease of `duration` (whole seconds, at least [`Self::MIN_SECONDS`]).
    pub fn new(duration: Duration) -> Result<LeaseTiming, TimingError> {
        if duration.subsec_nanos() != 0 {
            return Err(TimingError::Fractional(duration));
        }
        let secs = duration.as_secs();
        if secs < Self::MIN_SECONDS {
            return Err(TimingError::TooShort(duration));
        }
        Ok(LeaseTiming {
            duration,
            renew_after: Duration::from_secs(secs / 2),
            renew_deadline: duration * 3 / 4,
            check_every: duration / 8,
        })
    }

    /// The lease manager's grace: it renews this long before the Lease would expire.
    fn grace_secs(&self) -> u64 {
        (self.duration - self.renew_after).as_secs()
    }
}

/// When this instance may act, from its last confirmed renewal (pure: no clock, no IO).
#[derive(Clone, Debug)]
pub struct LeaseClock {
    renew_deadline: Duration,
    valid_until: Option<Instant>,
}

impl LeaseClock {
    /// No renewal confirmed yet: may not act.
    pub fn new(renew_deadline: Duration) -> LeaseClock {
        LeaseClock {
            renew_deadline,
            valid_until: None,
        }
    }

    /// A renewal made at `renewed_at` was confirmed (an older one than already known changes
    /// nothing).
    pub fn confirm(&mut self, renewed_at: Instant) {
        let until = renewed_at.checked_add(self.renew_deadline);
        self.valid_until = self.valid_until.max(until);
    }

    /// The lease is lost: may not act until a new renewal is confirmed.
    pub fn revoke(&mut self) {
        self.valid_until = None;
    }

    /// Whether this instance may act at `now`: strictly before the renew deadline of its
    /// last confirmed renewal.
    pub fn may_act(&self, now: Instant) -> bool {
        self.valid_until.is_some_and(|until| now < until)
    }
}

/// Whether the controller may write: always without leader election, else while the
/// [`LeaseClock`] allows. Cheap to clone; clones share one state.
#[derive(Clone, Debug, Default)]
pub struct WriteGate {
    leased: Option<Arc<Leased>>,
}

#[derive(Debug)]
struct Leased {
    clock: Mutex<LeaseClock>,
    /// The state last seen by [`WriteGate::is_open`], to log transitions once.
    was_open: AtomicBool,
}

impl WriteGate {
    /// Always open (no leader election).
    pub fn open() -> WriteGate {
        WriteGate::default()
    }

    /// Closed until a renewal is confirmed; then open until its renew deadline.
    pub fn leased(renew_deadline: Duration) -> WriteGate {
        WriteGate {
            leased: Some(Arc::new(Leased {
                clock: Mutex::new(LeaseClock::new(renew_deadline)),
                was_open: AtomicBool::new(false),
            })),
        }
    }

    /// Whether writes are allowed now. Logs when this differs from the last answer.
    pub fn is_open(&self) -> bool {
        let Some(l) = &self.leased else {
            return true;
        };
        let open = l
            .clock
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .may_act(Instant::now());
        if l.was_open.swap(open, Ordering::AcqRel) != open {
            if open {
                info!("leader lease renewal confirmed: writes resume");
            } else {
                warn!(
                    "leader lease renewal not confirmed within the renew deadline, or the lease is lost: AgentSend and Kubernetes writes stop"
                );
            }
        }
        open
    }

    /// A renewal made at `renewed_at` was confirmed.
    pub fn confirm(&self, renewed_at: Instant) {
        if let Some(l) = &self.leased {
            l.clock
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .confirm(renewed_at);
        }
    }

    /// The lease is lost: close until a renewal is confirmed again.
    pub fn revoke(&self) {
        if let Some(l) = &self.leased {
            l.clock.lock().unwrap_or_else(|p| p.into_inner()).revoke();
        }
    }
}

/// What one read of the Lease says about this instance's leadership.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reading {
    /// Held by this instance, renewed `age` ago.
    Renewed {
        /// Time since the renewTime, by this instance's clock (which wrote it).
        age: Duration,
    },
    /// Held by this instance, without a renewTime: confirms nothing.
    Unconfirmed,
    /// Held by another instance.
    Other(String),
    /// Held by no one (released).
    Free,
    /// The Lease does not exist.
    Missing,
}

impl Reading {
    /// Interpret `lease` (`None`: not found) for `identity` at wall-clock time `now`.
    pub fn of(lease: Option<&KubeLease>, identity: &str, now: jiff::Timestamp) -> Reading {
        let Some(lease) = lease else {
            return Reading::Missing;
        };
        let spec = lease.spec.as_ref();
        match spec.and_then(|s| s.holder_identity.as_deref()) {
            None | Some("") => Reading::Free,
            Some(h) if h != identity => Reading::Other(h.to_string()),
            Some(_) => match spec.and_then(|s| s.renew_time.as_ref()) {
                None => Reading::Unconfirmed,
                Some(t) => Reading::Renewed {
                    // A renewTime ahead of the clock (it stepped back) counts as just now.
                    age: now.duration_since(t.0).try_into().unwrap_or(Duration::ZERO),
                },
            },
        }
    }

    /// Whether this reading means the lease is lost.
    pub fn is_lost(&self) -> bool {
        matches!(self, Reading::Other(_) | Reading::Free | Reading::Missing)
    }
}

/// Read the Lease every [`LeaseTiming::check_every`] and keep `gate` in step with the
/// renewals it shows. Returns the reading that shows the lease lost.
async fn confirm_renewals(client: Client, lease: &Lease, gate: &WriteGate) -> Reading {
    let api: Api<KubeLease> = Api::namespaced(client, &lease.namespace);
    let every = lease.timing.check_every;
    let mut failing = false;
    loop {
        let read =
            tokio::time::timeout(every.max(Duration::from_secs(1)), api.get_opt(&lease.name));
        let result = read.await;
        let (instant, wall) = (Instant::now(), jiff::Timestamp::now());
        match result {
            Ok(Ok(found)) => {
                failing = false;
                let reading = Reading::of(found.as_ref(), &lease.identity, wall);
                if reading.is_lost() {
                    gate.revoke();
                    gate.is_open();
                    return reading;
                }
                if let Reading::Renewed { age } = reading
                    && let Some(renewed_at) = instant.checked_sub(age)
                {
                    gate.confirm(renewed_at);
                }
            }
            Ok(Err(e)) if !failing => {
                failing = true;
                warn!(error = %e, "cannot read the leader Lease to confirm its renewal");
            }
            Ok(Err(e)) => debug!(error = %e, "cannot read the leader Lease"),
            Err(_) => debug!("reading the leader Lease timed out"),
        }
        gate.is_open();
        tokio::time::sleep(every).await;
    }
}

/// Follow until leader, lead (running `controller` until `shutdown` or a lost lease), then
/// release the lease. `gate` opens only while renewals are confirmed.
pub async fn run<F, Fut>(
    client: Client,
    lease: Lease,
    gate: WriteGate,
    health: &Health,
    metrics: &Metrics,
    shutdown: CancellationToken,
    controller: F,
) -> Result<(), StartupError>
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: Future<Output = ()>,
{
    let manager = LeaseManagerBuilder::new(client.clone(), &lease.name)
        .with_namespace(&lease.namespace)
        .with_identity(&lease.identity)
        .with_duration(lease.timing.duration.as_secs())
        .with_grace(lease.timing.grace_secs())
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
    let lost = lead(
        client,
        &lease,
        &gate,
        leader_rx.clone(),
        shutdown,
        controller,
    )
    .await;
    metrics.set_leader(false);

    if lost {
        // Nothing to release, and the lease manager's cached state may still name this
        // instance: releasing would clear the new holder's Lease.
        lease_task.abort();
        let _ = lease_task.await;
        return Err(StartupError::LostLease);
    }
    // Releasing: closing every receiver makes the lease manager release the Lease.
    drop(leader_rx);
    match tokio::time::timeout(Duration::from_secs(10), lease_task).await {
        Ok(Ok(Ok(_))) => info!("released the leader lease"),
        Ok(Ok(Err(e))) => warn!(error = %e, "could not release the leader lease"),
        _ => warn!("timed out releasing the leader lease"),
    }
    Ok(())
}

/// Run `controller` while leading, with the renewal confirmer keeping `gate`; stop it when
/// the lease manager or the confirmer sees the lease lost. Returns whether it was lost.
async fn lead<F, Fut>(
    client: Client,
    lease: &Lease,
    gate: &WriteGate,
    mut leader_rx: tokio::sync::watch::Receiver<bool>,
    shutdown: CancellationToken,
    controller: F,
) -> bool
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: Future<Output = ()>,
{
    let stop = shutdown.child_token();
    let lost = CancellationToken::new();
    let (on_loss, lost_flag, loss_gate) = (stop.clone(), lost.clone(), gate.clone());
    let loss_watch = tokio::spawn(async move {
        if leader_rx.wait_for(|l| !*l).await.is_ok() {
            loss_gate.revoke();
            warn!("lost leadership; stopping controller");
            lost_flag.cancel();
            on_loss.cancel();
        }
    });
    let (confirm_lease, confirm_gate) = (lease.clone(), gate.clone());
    let (on_loss, lost_flag) = (stop.clone(), lost.clone());
    let confirmer = tokio::spawn(async move {
        let reading = confirm_renewals(client, &confirm_lease, &confirm_gate).await;
        warn!(lease = ?reading, "the leader Lease is no longer ours; stopping controller");
        lost_flag.cancel();
        on_loss.cancel();
    });
    controller(stop).await;
    gate.revoke();
    for task in [loss_watch, confirmer] {
        task.abort();
        let _ = task.await;
    }
    lost.is_cancelled()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn timing_renews_at_half_and_stops_writing_at_three_quarters() {
        let t = LeaseTiming::new(15 * S).expect("valid");
        assert_eq!(t.renew_after, 7 * S);
        assert_eq!(t.grace_secs(), 8);
        assert_eq!(t.renew_deadline, Duration::from_millis(11_250));
        assert_eq!(t.check_every, Duration::from_millis(1_875));
        // A healthy leader renews, and confirms it, well before the deadline.
        assert!(t.renew_after + t.check_every < t.renew_deadline);
        assert!(t.renew_deadline < t.duration);
        let min = LeaseTiming::new(Duration::from_secs(LeaseTiming::MIN_SECONDS)).expect("valid");
        assert!(min.renew_after + min.check_every < min.renew_deadline);
    }

    #[test]
    fn timing_rejects_short_or_fractional_durations() {
        assert_eq!(LeaseTiming::new(3 * S), Err(TimingError::TooShort(3 * S)));
        let frac = Duration::from_millis(6_500);
        assert_eq!(LeaseTiming::new(frac), Err(TimingError::Fractional(frac)));
        let msg = TimingError::TooShort(S).to_string();
        assert!(msg.contains("at least 4s"), "{msg}");
    }

    #[test]
    fn clock_allows_acting_only_before_the_renew_deadline() {
        let t0 = Instant::now();
        let mut c = LeaseClock::new(3 * S);
        assert!(!c.may_act(t0), "closed until a renewal is confirmed");
        c.confirm(t0);
        assert!(c.may_act(t0));
        assert!(c.may_act(t0 + 2 * S));
        assert!(!c.may_act(t0 + 3 * S), "the deadline itself is too late");
        c.confirm(t0 + 2 * S);
        assert!(c.may_act(t0 + 4 * S));
        // An older renewal seen later does not shorten the window.
        c.confirm(t0);
        assert!(c.may_act(t0 + 4 * S));
        c.revoke();
        assert!(!c.may_act(t0 + 4 * S));
        c.confirm(t0 + 4 * S);
        assert!(c.may_act(t0 + 5 * S));
    }

    #[test]
    fn gate_is_always_open_without_a_lease() {
        let g = WriteGate::open();
        assert!(g.is_open());
        g.revoke();
        assert!(g.is_open());
    }

    #[test]
    fn leased_gate_opens_on_a_recent_renewal_and_closes_on_revoke() {
        let g = WriteGate::leased(10 * S);
        let shared = g.clone();
        assert!(!g.is_open());
        shared.confirm(Instant::now());
        assert!(g.is_open());
        shared.revoke();
        assert!(!g.is_open());
        // A renewal already past its deadline opens nothing.
        if let Some(old) = Instant::now().checked_sub(11 * S) {
            g.confirm(old);
            assert!(!g.is_open());
        }
    }

    fn lease(holder: Option<&str>, renewed: Option<jiff::Timestamp>) -> KubeLease {
        KubeLease {
            spec: Some(LeaseSpec {
                holder_identity: holder.map(String::from),
                renew_time: renewed.map(MicroTime),
                ..LeaseSpec::default()
            }),
            ..KubeLease::default()
        }
    }

    #[test]
    fn readings_of_the_lease() {
        let now = jiff::Timestamp::now();
        let before = now - jiff::SignedDuration::from_secs(2);
        let after = now + jiff::SignedDuration::from_secs(2);
        let of = |l: Option<&KubeLease>| Reading::of(l, "me", now);
        assert_eq!(
            of(Some(&lease(Some("me"), Some(before)))),
            Reading::Renewed { age: 2 * S }
        );
        assert_eq!(
            of(Some(&lease(Some("me"), Some(after)))),
            Reading::Renewed {
                age: Duration::ZERO
            }
        );
        assert_eq!(of(Some(&lease(Some("me"), None))), Reading::Unconfirmed);
        assert_eq!(
            of(Some(&lease(Some("you"), Some(now)))),
            Reading::Other("you".into())
        );
        assert_eq!(of(Some(&lease(None, Some(now)))), Reading::Free);
        assert_eq!(of(Some(&lease(Some(""), None))), Reading::Free);
        assert_eq!(of(Some(&KubeLease::default())), Reading::Free);
        assert_eq!(of(None), Reading::Missing);
        assert!(of(None).is_lost() && of(Some(&lease(Some("you"), None))).is_lost());
        assert!(!of(Some(&lease(Some("me"), None))).is_lost());
    }
}
