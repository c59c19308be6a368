//! The server-side request-rate limit: one token bucket per account (all its API keys share
//! it), as a rate-limited API would enforce. Pure: time is passed in.

use std::time::{Duration, Instant};

/// A request-rate limit: `per_second` tokens a second, at most `burst` saved up.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimit {
    /// Sustained requests per second (> 0).
    pub per_second: f64,
    /// Requests allowed at once after a quiet period (≥ 1).
    pub burst: f64,
}

impl RateLimit {
    /// `per_second` requests a second with a burst of one second's worth; `None` unless
    /// `per_second` is a positive finite number.
    pub fn per_second(per_second: f64) -> Option<RateLimit> {
        RateLimit::new(per_second, per_second)
    }

    /// `per_second` with an explicit `burst` (at least 1); `None` unless `per_second` is a
    /// positive finite number.
    pub fn new(per_second: f64, burst: f64) -> Option<RateLimit> {
        let burst = if burst.is_finite() {
            burst.max(1.0)
        } else {
            1.0
        };
        (per_second.is_finite() && per_second > 0.0).then_some(RateLimit { per_second, burst })
    }
}

/// The tokens of one account.
#[derive(Clone, Copy, Debug)]
pub struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// A full bucket.
    pub fn full(limit: RateLimit, now: Instant) -> Bucket {
        Bucket {
            tokens: limit.burst,
            at: now,
        }
    }

    /// Take a token for a request arriving at `now`, or say how long until one is available.
    pub fn take(&mut self, limit: RateLimit, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * limit.per_second).min(limit.burst);
        self.at = now.max(self.at);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        Err(Duration::from_secs_f64(
            (1.0 - self.tokens) / limit.per_second,
        ))
    }
}

/// The `Retry-After` value (whole seconds, at least 1, rounded up so a client that obeys it
/// finds a token) for a wait of `d`.
pub fn retry_after_seconds(d: Duration) -> u64 {
    (d.as_secs_f64().ceil() as u64).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn limits_are_validated() {
        for (rate, burst, ok) in [
            (100.0, 100.0, true),
            (0.5, 0.0, true),
            (0.0, 10.0, false),
            (-1.0, 10.0, false),
            (f64::NAN, 10.0, false),
            (f64::INFINITY, 10.0, false),
        ] {
            assert_eq!(RateLimit::new(rate, burst).is_some(), ok, "{rate} {burst}");
        }
        assert_eq!(RateLimit::new(0.5, 0.0).map(|l| l.burst), Some(1.0));
        assert_eq!(RateLimit::per_second(100.0).map(|l| l.burst), Some(100.0));
    }

    #[test]
    fn bucket_allows_burst_then_the_rate() {
        // (requests at t=0 after a full bucket, then waits) per case:
        // limit, requests at once, how many pass, wait reported for the next one.
        for (per_second, burst, at_once, pass, next_wait) in [
            (100.0, 100.0, 150, 100, ms(10)),
            (10.0, 5.0, 8, 5, ms(100)),
            (1.0, 1.0, 3, 1, ms(1000)),
            (2.0, 10.0, 10, 10, ms(500)),
        ] {
            let limit = RateLimit::new(per_second, burst).unwrap();
            let t0 = Instant::now();
            let mut b = Bucket::full(limit, t0);
            let passed = (0..at_once).filter(|_| b.take(limit, t0).is_ok()).count();
            assert_eq!(passed, pass, "{per_second}/s burst {burst}");
            let wait = b.take(limit, t0).unwrap_err();
            assert!(
                wait.abs_diff(next_wait) < ms(1),
                "{wait:?} vs {next_wait:?}"
            );
            // After that wait, exactly one more passes.
            assert!(b.take(limit, t0 + next_wait).is_ok());
            assert!(b.take(limit, t0 + next_wait).is_err());
        }
    }

    #[test]
    fn bucket_refills_up_to_burst_only() {
        let limit = RateLimit::new(10.0, 3.0).unwrap();
        let t0 = Instant::now();
        let mut b = Bucket::full(limit, t0);
        for _ in 0..3 {
            b.take(limit, t0).unwrap();
        }
        // An hour of quiet saves up 3 tokens, not 36,000.
        let later = t0 + Duration::from_secs(3600);
        let passed = (0..10).filter(|_| b.take(limit, later).is_ok()).count();
        assert_eq!(passed, 3);
        // A clock that goes backwards adds nothing.
        assert!(b.take(limit, t0).is_err());
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        for (wait, secs) in [
            (ms(0), 1),
            (ms(10), 1),
            (ms(1000), 1),
            (ms(1001), 2),
            (ms(2500), 3),
        ] {
            assert_eq!(retry_after_seconds(wait), secs, "{wait:?}");
        }
    }
}
