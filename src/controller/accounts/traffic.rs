//! The request rate and the 429s of each account over the last sync interval, for its status:
//! differences of the client's running counts ([`Traffic`]) between two rounds of the status
//! loop. The rate is rounded (two significant digits, never finer than 0.1 requests/s), so an
//! idle account, whose only traffic is the periodic scan, does not rewrite its status every
//! interval.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::agentsend::Traffic;

/// An account's running counts at one time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    /// When they were read.
    pub at: Instant,
    /// Requests sent so far.
    pub requests: u64,
    /// 429 answers so far.
    pub rate_limited: u64,
}

/// One account's traffic between two samples.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Window {
    /// Requests per second, rounded with [`round_rate`].
    pub rate: f64,
    /// 429 answers.
    pub rate_limited: i64,
}

/// The traffic between `prev` and `now`, the rate over at least `min_span` (the sync
/// interval: a first reading soon after the client's first call must not turn two requests
/// in a few milliseconds into hundreds per second). Counts that went down, as after the
/// client forgot the account, count from zero.
pub fn window(prev: &Sample, now: &Sample, min_span: Duration) -> Window {
    let (requests, limited) = if now.requests < prev.requests {
        (now.requests, now.rate_limited)
    } else {
        (
            now.requests - prev.requests,
            now.rate_limited.saturating_sub(prev.rate_limited),
        )
    };
    let secs = now
        .at
        .saturating_duration_since(prev.at)
        .max(min_span)
        .as_secs_f64();
    let rate = if secs > 0.0 {
        requests as f64 / secs
    } else {
        0.0
    };
    Window {
        rate: round_rate(rate),
        rate_limited: i64::try_from(limited).unwrap_or(i64::MAX),
    }
}

/// `rate` to two significant digits, never finer than 0.1 (below 0.05: zero).
pub fn round_rate(rate: f64) -> f64 {
    if !rate.is_finite() || rate < 0.05 {
        return 0.0;
    }
    // Digits kept after the decimal point: 1 below 10, 0 up to 100, -1 up to 1000, ...
    let decimals = (1 - rate.log10().floor() as i32).min(1);
    if decimals >= 0 {
        let scale = 10f64.powi(decimals);
        (rate * scale).round() / scale
    } else {
        let scale = 10f64.powi(-decimals);
        (rate / scale).round() * scale
    }
}

/// The last sample of every account key (by fingerprint), to difference the next one with.
#[derive(Debug, Default)]
pub struct Meter {
    min_span: Duration,
    last: HashMap<String, Sample>,
    this_round: HashMap<String, Window>,
}

impl Meter {
    /// A meter whose rates are over at least `min_span` (the sync interval).
    pub fn new(min_span: Duration) -> Meter {
        Meter {
            min_span,
            ..Meter::default()
        }
    }

    /// Start a round: keys not read in the previous one are forgotten.
    pub fn start_round(&mut self) {
        let seen = std::mem::take(&mut self.this_round);
        self.last.retain(|k, _| seen.contains_key(k));
    }

    /// The traffic of the key `fingerprint` since the last round (or since the client first
    /// called it), given its counts `traffic` now; the same answer for every account of this
    /// round that shares the key.
    pub fn read(&mut self, fingerprint: &str, traffic: Option<Traffic>, now: Instant) -> Window {
        if let Some(w) = self.this_round.get(fingerprint) {
            return *w;
        }
        let w = match traffic {
            None => Window::default(),
            Some(t) => {
                let sample = Sample {
                    at: now,
                    requests: t.requests,
                    rate_limited: t.rate_limited,
                };
                let start = Sample {
                    at: t.since,
                    requests: 0,
                    rate_limited: 0,
                };
                let prev = self.last.insert(fingerprint.to_string(), sample);
                window(&prev.unwrap_or(start), &sample, self.min_span)
            }
        };
        self.this_round.insert(fingerprint.to_string(), w);
        w
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_rounded_to_two_significant_digits_and_tenths() {
        for (rate, want) in [
            (0.0, 0.0),
            (0.0167, 0.0), // one scan a minute: idle
            (0.049, 0.0),
            (0.06, 0.1),
            (0.5, 0.5),
            (0.3, 0.3),
            (1.26, 1.3),
            (9.96, 10.0),
            (12.34, 12.0),
            (123.4, 120.0),
            (1567.0, 1600.0),
            (f64::NAN, 0.0),
            (f64::INFINITY, 0.0),
            (-3.0, 0.0),
        ] {
            assert_eq!(round_rate(rate), want, "{rate}");
        }
    }

    #[test]
    fn a_window_is_the_difference_of_two_samples() {
        let t0 = Instant::now();
        let at = |s: u64, requests, rate_limited| Sample {
            at: t0 + Duration::from_secs(s),
            requests,
            rate_limited,
        };
        for (prev, now, rate, limited) in [
            (at(0, 0, 0), at(10, 50, 3), 5.0, 3),
            (at(0, 50, 3), at(60, 51, 3), 0.0, 0), // idle: one scan a minute
            (at(0, 50, 3), at(2, 51, 3), 0.5, 0),
            (at(0, 50, 3), at(0, 80, 3), 15.0, 0), // no time passed: over the 2 s minimum
            (at(0, 50, 3), at(10, 20, 1), 2.0, 1), // counts restarted
        ] {
            let w = window(&prev, &now, Duration::from_secs(2));
            assert_eq!(
                (w.rate, w.rate_limited),
                (rate, limited),
                "{prev:?} {now:?}"
            );
        }
    }

    #[test]
    fn the_meter_differences_rounds_and_shares_a_key_within_a_round() {
        let t0 = Instant::now();
        let traffic = |requests, rate_limited| Traffic {
            since: t0,
            requests,
            rate_limited,
        };
        let mut m = Meter::new(Duration::from_secs(2));
        m.start_round();
        let early = m.read("k0", Some(traffic(2, 0)), t0 + Duration::from_millis(5));
        assert_eq!(early.rate, 1.0, "2 requests 5 ms after the first: over 2 s");
        let first = m.read("k1", Some(traffic(20, 2)), t0 + Duration::from_secs(10));
        assert_eq!(
            (first.rate, first.rate_limited),
            (2.0, 2),
            "since the first call"
        );
        assert_eq!(
            m.read("k1", Some(traffic(99, 9)), t0 + Duration::from_secs(11)),
            first,
            "a second account on the same key, same round"
        );
        assert_eq!(m.read("k2", None, t0), Window::default(), "never called");
        m.start_round();
        let next = m.read("k1", Some(traffic(30, 2)), t0 + Duration::from_secs(20));
        assert_eq!((next.rate, next.rate_limited), (1.0, 0));
        m.start_round();
        m.start_round();
        assert!(m.last.is_empty(), "keys no account reads are forgotten");
    }
}
