//! The backoff curves every retry uses: exponential from 1 s with jitter, capped by
//! `--max-retry-delay` (at most [`MAX_RETRY_DELAY`]), and the quick first retry after a stale
//! cache view. The decisions that use them are in [`super::retry`].

use std::time::Duration;

/// Delay before deciding again after a write was refused because this pass read a stale
/// cache view: 0.5–1 s the first time, then [`backoff`] (the watch may be down for a while).
pub fn stale_view_delay(failures: u32, jitter: f64, max: Duration) -> Duration {
    match failures {
        0 => Duration::from_millis(500).mul_f64(1.0 + jitter.clamp(0.0, 1.0)),
        n => backoff(n, jitter, max),
    }
}

/// The default cap of [`backoff`] (`--max-retry-delay`).
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(300);

/// Exponential backoff from 1 s, doubling per failure, capped at `max` (and at
/// [`MAX_RETRY_DELAY`]'s 5 minutes at most); full jitter on the upper half so retries never
/// bunch up yet never get shorter than half the step.
pub fn backoff(failures: u32, jitter: f64, max: Duration) -> Duration {
    let step = Duration::from_secs(1)
        .saturating_mul(1u32 << failures.min(9))
        .min(max)
        .min(MAX_RETRY_DELAY);
    step.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let max = MAX_RETRY_DELAY;
        assert!(backoff(0, 0.0, max) >= Duration::from_millis(500));
        assert!(backoff(3, 0.0, max) > backoff(0, 0.0, max));
        assert!(backoff(30, 1.0, max) <= Duration::from_secs(300));
        // A lower cap (--max-retry-delay) bounds every step, jitter included; never a
        // higher one than 5 minutes.
        let two = Duration::from_secs(2);
        for failures in [0, 1, 5, 30] {
            assert!(backoff(failures, 0.99, two) <= two);
            assert!(backoff(failures, 0.0, two) >= Duration::from_millis(500));
        }
        assert!(backoff(30, 1.0, Duration::MAX) <= Duration::from_secs(300));
    }

    #[test]
    fn stale_views_are_retried_soon_then_backed_off() {
        for j in [0.0, 0.5, 1.0] {
            let first = stale_view_delay(0, j, MAX_RETRY_DELAY);
            assert!(first >= Duration::from_millis(500) && first <= Duration::from_secs(1));
        }
        // A watch that stays down must not cost a write attempt per second per Inbox.
        assert!(stale_view_delay(5, 0.0, MAX_RETRY_DELAY) >= Duration::from_secs(16));
        assert!(stale_view_delay(50, 1.0, MAX_RETRY_DELAY) <= Duration::from_secs(300));
    }
}
