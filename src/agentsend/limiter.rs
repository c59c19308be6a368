//! The adaptive request budget of one AgentSend account (API key): additive increase,
//! multiplicative decrease (AIMD), as TCP's congestion control and the AWS SDKs' "adaptive"
//! retry mode do. Pure: every method takes the time, so the arithmetic is table-tested.
//!
//! - It starts unlimited: only the client's concurrency bounds it (AgentSend publishes no
//!   request-rate limit, so any fixed guess is too slow or too fast).
//! - A 429 cuts the rate to `decrease` × the rate actually sent over the last second (never
//!   below `floor`), once per episode: 429s answering requests sent before the cut are the same
//!   congestion, not new news. It also pauses the account for its `Retry-After`.
//! - Every answer that is not a 429 or a server error adds `increase` / rate (so the rate grows
//!   by `increase` requests/s per second of success), up to the `ceiling`, if any.
//! - [`Aimd::reserve`] paces sends at the rate (with a small burst tolerance) and after the pause.

use std::time::{Duration, Instant};

/// Length of the window the sent rate is measured over.
const WINDOW: Duration = Duration::from_secs(1);

/// Tuning of [`Aimd`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AimdConfig {
    /// Hard ceiling in requests/s (`--agentsend-rate`); `None`: none.
    pub ceiling: Option<f64>,
    /// Lowest rate a cut goes to, in requests/s.
    pub floor: f64,
    /// Requests/s gained per second of successful requests.
    pub increase: f64,
    /// Fraction of the sent rate kept on a 429 (0–1).
    pub decrease: f64,
    /// Sends may run this far ahead of the pace (a small burst).
    pub tolerance: Duration,
}

impl Default for AimdConfig {
    fn default() -> Self {
        AimdConfig {
            ceiling: None,
            floor: 1.0,
            increase: 20.0,
            decrease: 0.7,
            tolerance: Duration::from_millis(50),
        }
    }
}

/// Requests sent in the current and the previous [`WINDOW`] (a sliding-window counter).
#[derive(Clone, Copy, Debug)]
struct SentRate {
    start: Instant,
    current: f64,
    previous: f64,
}

impl SentRate {
    fn roll(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.start);
        if elapsed >= WINDOW * 2 {
            self.previous = 0.0;
            self.current = 0.0;
            self.start = now;
        } else if elapsed >= WINDOW {
            self.previous = self.current;
            self.current = 0.0;
            self.start += WINDOW;
        }
    }

    /// Requests per second over the last [`WINDOW`].
    fn per_second(&mut self, now: Instant) -> f64 {
        self.roll(now);
        let into = now.saturating_duration_since(self.start).as_secs_f64() / WINDOW.as_secs_f64();
        (self.previous * (1.0 - into.min(1.0)) + self.current) / WINDOW.as_secs_f64()
    }
}

/// The AIMD state of one account.
#[derive(Clone, Debug)]
pub struct Aimd {
    cfg: AimdConfig,
    /// The allowed rate; `None` until the first 429 (unlimited) unless there is a ceiling.
    rate: Option<f64>,
    /// The pacing clock: when the next send is due.
    next: Instant,
    paused_until: Option<Instant>,
    last_cut: Option<Instant>,
    sent: SentRate,
}

impl Aimd {
    /// A fresh account at `now`: unlimited, or at the ceiling if there is one.
    pub fn new(cfg: AimdConfig, now: Instant) -> Aimd {
        let ceiling = cfg.ceiling.filter(|c| c.is_finite() && *c > 0.0);
        let cfg = AimdConfig {
            ceiling,
            floor: if cfg.floor.is_finite() && cfg.floor > 0.0 {
                cfg.floor.min(ceiling.unwrap_or(f64::MAX))
            } else {
                1.0
            },
            decrease: if (0.0..1.0).contains(&cfg.decrease) {
                cfg.decrease
            } else {
                0.5
            },
            increase: if cfg.increase.is_finite() {
                cfg.increase.max(0.0)
            } else {
                0.0
            },
            tolerance: cfg.tolerance,
        };
        Aimd {
            cfg,
            rate: ceiling,
            next: now,
            paused_until: None,
            last_cut: None,
            sent: SentRate {
                start: now,
                current: 0.0,
                previous: 0.0,
            },
        }
    }

    /// The allowed rate in requests/s; `None` while unlimited.
    pub fn rate(&self) -> Option<f64> {
        self.rate
    }

    /// How long the account is still paused by a `Retry-After`, if at all.
    pub fn paused_for(&self, now: Instant) -> Option<Duration> {
        self.paused_until
            .and_then(|u| u.checked_duration_since(now))
            .filter(|d| !d.is_zero())
    }

    /// Book a send for a request ready at `now`: how long it must wait (zero: send now). The
    /// send is counted as made at the end of the wait.
    pub fn reserve(&mut self, now: Instant) -> Duration {
        let earliest = self.paused_until.map_or(now, |p| p.max(now));
        let at = match self.rate {
            None => earliest,
            Some(rate) => {
                let due = self.next.max(earliest);
                let at = due
                    .checked_sub(self.cfg.tolerance)
                    .map_or(earliest, |t| t.max(earliest));
                self.next = due + Duration::from_secs_f64(1.0 / rate);
                at
            }
        };
        self.sent.roll(at);
        self.sent.current += 1.0;
        at.saturating_duration_since(now)
    }

    /// An answer that shows the account is not over its limit: additive increase.
    pub fn on_success(&mut self) {
        if let Some(rate) = self.rate {
            let raised = rate + self.cfg.increase / rate;
            self.rate = Some(self.cfg.ceiling.map_or(raised, |c| raised.min(c)));
        }
    }

    /// A 429 at `now` to a request sent at `sent_at`: pause for `retry_after` and, unless this
    /// episode was already answered by a cut, cut the rate. Returns whether it cut.
    pub fn on_throttled(&mut self, sent_at: Instant, now: Instant, retry_after: Duration) -> bool {
        let until = now.checked_add(retry_after).unwrap_or(now);
        self.paused_until = Some(self.paused_until.map_or(until, |p| p.max(until)));
        if self.last_cut.is_some_and(|cut| sent_at < cut) {
            return false;
        }
        let sent = self.sent.per_second(now);
        let base = self.rate.map_or(sent, |r| r.min(sent));
        let cut = (base * self.cfg.decrease).max(self.cfg.floor);
        self.rate = Some(self.cfg.ceiling.map_or(cut, |c| cut.min(c)));
        self.last_cut = Some(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn cfg(ceiling: Option<f64>) -> AimdConfig {
        AimdConfig {
            ceiling,
            floor: 1.0,
            increase: 20.0,
            decrease: 0.5,
            tolerance: Duration::ZERO,
        }
    }

    /// `n` sends reserved evenly over `over` from `t0`.
    fn send(a: &mut Aimd, t0: Instant, n: u32, over: Duration) {
        for i in 0..n {
            a.reserve(t0 + over * i / n.max(1));
        }
    }

    #[test]
    fn starts_unlimited_or_at_the_ceiling() {
        let t0 = Instant::now();
        for (ceiling, rate) in [
            (None, None),
            (Some(50.0), Some(50.0)),
            (Some(0.0), None),
            (Some(f64::NAN), None),
        ] {
            let mut a = Aimd::new(cfg(ceiling), t0);
            assert_eq!(a.rate(), rate, "{ceiling:?}");
            if rate.is_none() {
                // Unlimited: a thousand sends at once, none waits.
                assert!((0..1000).all(|_| a.reserve(t0).is_zero()));
            }
        }
    }

    #[test]
    fn a_429_cuts_the_sent_rate_once_per_episode() {
        // (sends in the second before the 429, current rate, expected rate after the cut)
        for (sent, rate, after) in [
            (200, None, 100.0),      // unlimited: half of what was sent
            (200, Some(80.0), 40.0), // limited below what was sent: half the limit
            (10, Some(500.0), 5.0),  // an idle account: from what was really sent
            (1, None, 1.0),          // the floor
            (0, Some(1.5), 1.0),     // never below the floor
        ] {
            let t0 = Instant::now();
            let mut a = Aimd::new(cfg(None), t0);
            a.rate = rate;
            send(&mut a, t0, sent, ms(1000));
            let now = t0 + ms(1000);
            assert!(a.on_throttled(now, now, ms(0)));
            let got = a.rate().unwrap();
            assert!((got - after).abs() < 1.0, "{sent} sent at {rate:?}: {got}");
            // Requests sent before the cut answering 429 are the same episode.
            assert!(!a.on_throttled(now - ms(5), now + ms(10), ms(0)));
            assert!((a.rate().unwrap() - got).abs() < f64::EPSILON);
            // A request sent after the cut that meets a 429 is a new episode.
            assert!(a.on_throttled(now + ms(20), now + ms(30), ms(0)));
        }
    }

    #[test]
    fn success_adds_increase_per_second_up_to_the_ceiling() {
        // (ceiling, start rate, successes, expected rate): each adds 20/rate, so a second of
        // successes at the rate adds about 20/s (r² grows by 40 per success).
        for (ceiling, start, successes, expected) in [
            (None, 10.0, 10, 22.7),
            (None, 100.0, 100, 118.3),
            (Some(25.0), 10.0, 100, 25.0), // capped
        ] {
            let t0 = Instant::now();
            let mut a = Aimd::new(cfg(ceiling), t0);
            a.rate = Some(start);
            for _ in 0..successes {
                a.on_success();
            }
            let got = a.rate().unwrap();
            assert!((got - expected).abs() < 0.1, "{start} + {successes}: {got}");
        }
        // Unlimited stays unlimited.
        let mut a = Aimd::new(cfg(None), Instant::now());
        a.on_success();
        assert_eq!(a.rate(), None);
    }

    #[test]
    fn sends_are_paced_at_the_rate_and_held_during_retry_after() {
        let t0 = Instant::now();
        let mut a = Aimd::new(cfg(Some(10.0)), t0);
        let waits: Vec<Duration> = (0..4).map(|_| a.reserve(t0)).collect();
        assert_eq!(waits, [ms(0), ms(100), ms(200), ms(300)]);

        // A 429 with Retry-After 2 s: paused, and the next send waits for the pause.
        let mut a = Aimd::new(cfg(None), t0);
        a.reserve(t0);
        a.on_throttled(t0, t0 + ms(20), Duration::from_secs(2));
        assert_eq!(a.paused_for(t0 + ms(20)), Some(ms(2000)));
        assert_eq!(a.paused_for(t0 + ms(2020)), None);
        let wait = a.reserve(t0 + ms(500));
        assert_eq!(wait, ms(1520));
        // A shorter Retry-After never shortens a pause.
        a.on_throttled(t0, t0 + ms(30), ms(100));
        assert_eq!(a.paused_for(t0 + ms(20)), Some(ms(2000)));
    }

    #[test]
    fn burst_tolerance_lets_a_few_through_at_once() {
        let t0 = Instant::now();
        let mut a = Aimd::new(
            AimdConfig {
                tolerance: ms(50),
                ..cfg(Some(100.0))
            },
            t0,
        );
        let now: usize = (0..10).filter(|_| a.reserve(t0).is_zero()).count();
        assert_eq!(now, 6, "the pace, plus 50 ms of it at once");
    }

    #[test]
    fn nonsense_settings_are_made_safe() {
        let t0 = Instant::now();
        let mut a = Aimd::new(
            AimdConfig {
                ceiling: None,
                floor: -3.0,
                increase: f64::NAN,
                decrease: 7.0,
                tolerance: Duration::ZERO,
            },
            t0,
        );
        a.on_throttled(t0, t0, ms(0));
        assert_eq!(a.rate(), Some(1.0));
        a.on_success();
        assert_eq!(a.rate(), Some(1.0));
    }
}
