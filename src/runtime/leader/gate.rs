//! The lease's timing and the write gate: when this instance may write, from the renewals
//! it has confirmed (pure state, no IO).
//!
//! Timing ([`LeaseTiming`], from `--lease-duration` D): the leader renews the Lease D/2 after
//! its last renewal and retries every D/8; each renewal it sees succeed opens the gate until
//! 3/4·D after the moment the request was *sent*. A standby takes the Lease only once it has
//! seen no renewal for D on its own clock, and it sees a renewal no earlier than it was sent,
//! so a leader that cannot renew stops writing at least D/4 before anyone else may start.

use parking_lot::Mutex;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use thiserror::Error;
use tracing::{info, warn};

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
    /// When the leader renews, after its last renewal: D/2 (whole seconds).
    pub renew_after: Duration,
    /// How long after a renewal this instance may still write: 3/4·D.
    pub renew_deadline: Duration,
    /// How often a standby reads the Lease, and a leader retries a failed renewal: D/8.
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
        let open = l.clock.lock().may_act(Instant::now());
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
            l.clock.lock().confirm(renewed_at);
        }
    }

    /// The lease is lost: close until a renewal is confirmed again.
    pub fn revoke(&self) {
        if let Some(l) = &self.leased {
            l.clock.lock().revoke();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn timing_renews_at_half_and_stops_writing_at_three_quarters() {
        let t = LeaseTiming::new(15 * S).expect("valid");
        assert_eq!(t.renew_after, 7 * S);
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
}
