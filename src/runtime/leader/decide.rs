//! What a candidate does next with the Lease, from what it has seen of it (pure: no clock,
//! no IO).
//!
//! Expiry is judged as client-go judges it: from the moment *this* instance first saw the
//! Lease's current record, on its own monotonic clock, plus the duration the record states.
//! The holder's `renewTime` is another machine's wall clock and is never compared with ours,
//! so skew between nodes cannot make a Lease that is being renewed look expired.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::LeaseSpec;

/// The Lease's record as last read, and since when this instance has seen it unchanged.
#[derive(Clone, Debug, PartialEq)]
pub struct Seen {
    record: LeaseSpec,
    since: Instant,
}

impl Seen {
    /// What is known after reading `record` at `now`, having seen `before`: the time restarts
    /// only when the record changed (a renewal, a new holder, a release).
    pub fn observe(before: Option<Seen>, record: LeaseSpec, now: Instant) -> Seen {
        match before {
            Some(seen) if seen.record == record => seen,
            _ => Seen { record, since: now },
        }
    }

    /// The holder the record names, if any (an empty name is none).
    pub fn holder(&self) -> Option<&str> {
        holder(Some(&self.record))
    }
}

/// The next step of an instance that does not lead.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// There is no Lease: create it, naming this instance.
    Create,
    /// Write this instance into the Lease: it is free, already names this instance (a
    /// restart), or has not been renewed for its whole duration by our clock.
    Take,
    /// Held by `holder`, who may renew for `remaining` more (by our clock).
    Wait {
        /// The holder.
        holder: String,
        /// How long until we may take it, if it is not renewed.
        remaining: Duration,
    },
}

/// What an instance named `identity` does next, having seen `seen` (`None`: no Lease) by
/// `now`. A record without a duration is held for `default_duration`.
pub fn next(identity: &str, seen: Option<&Seen>, now: Instant, default_duration: Duration) -> Next {
    let Some(seen) = seen else {
        return Next::Create;
    };
    let holder = match seen.holder() {
        None => return Next::Take,
        Some(h) if h == identity => return Next::Take,
        Some(h) => h,
    };
    let duration = seen
        .record
        .lease_duration_seconds
        .and_then(|s| u64::try_from(s).ok())
        .map_or(default_duration, Duration::from_secs);
    let expires = seen.since.checked_add(duration);
    match expires.and_then(|at| at.checked_duration_since(now)) {
        Some(remaining) if !remaining.is_zero() => Next::Wait {
            holder: holder.to_string(),
            remaining,
        },
        // Expired by our clock (or so far off that it cannot be represented).
        _ if expires.is_some() => Next::Take,
        _ => Next::Wait {
            holder: holder.to_string(),
            remaining: duration,
        },
    }
}

/// How a leader learns it no longer holds the Lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lost {
    /// Another instance holds it.
    Other(String),
    /// No one holds it (it was released by someone else).
    Free,
    /// It was deleted.
    Missing,
}

impl std::fmt::Display for Lost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Lost::Other(h) => write!(f, "now held by {h}"),
            Lost::Free => f.write_str("released by someone else"),
            Lost::Missing => f.write_str("deleted"),
        }
    }
}

/// Whether a leader named `identity`, reading `record` (`None`: no Lease) after a renewal
/// was refused, still holds the Lease.
pub fn still_held(identity: &str, record: Option<&LeaseSpec>, exists: bool) -> Result<(), Lost> {
    if !exists {
        return Err(Lost::Missing);
    }
    match holder(record) {
        None => Err(Lost::Free),
        Some(h) if h == identity => Ok(()),
        Some(h) => Err(Lost::Other(h.to_string())),
    }
}

fn holder(record: Option<&LeaseSpec>) -> Option<&str> {
    record
        .and_then(|r| r.holder_identity.as_deref())
        .filter(|h| !h.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

    const S: Duration = Duration::from_secs(1);
    const D: Duration = Duration::from_secs(15);

    fn record(holder: Option<&str>, renewed_secs: i64, duration: Option<i32>) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(String::from),
            renew_time: Some(MicroTime(
                jiff::Timestamp::from_second(renewed_secs).expect("time"),
            )),
            lease_duration_seconds: duration,
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn the_clock_restarts_only_when_the_record_changes() {
        let t0 = Instant::now();
        let first = Seen::observe(None, record(Some("a"), 100, Some(6)), t0);
        let same = Seen::observe(Some(first.clone()), record(Some("a"), 100, Some(6)), t0 + S);
        assert_eq!(
            same.since, t0,
            "an unchanged record keeps its first sighting"
        );
        let renewed = Seen::observe(Some(same), record(Some("a"), 101, Some(6)), t0 + 2 * S);
        assert_eq!(renewed.since, t0 + 2 * S, "a renewal restarts the clock");
        let other = Seen::observe(Some(renewed), record(Some("b"), 101, Some(6)), t0 + 3 * S);
        assert_eq!(other.since, t0 + 3 * S, "a new holder restarts the clock");
    }

    #[test]
    fn next_steps() {
        let t0 = Instant::now();
        let seen = |holder: Option<&str>, duration: Option<i32>| Seen {
            record: record(holder, 0, duration),
            since: t0,
        };
        let wait = |remaining: Duration| Next::Wait {
            holder: "other".into(),
            remaining,
        };
        // (what was seen, how long after, expected)
        let rows: Vec<(&str, Option<Seen>, Duration, Next)> = vec![
            ("no Lease: create it", None, Duration::ZERO, Next::Create),
            (
                "released: take it at once",
                Some(seen(None, Some(6))),
                Duration::ZERO,
                Next::Take,
            ),
            (
                "empty holder is no holder",
                Some(seen(Some(""), Some(6))),
                Duration::ZERO,
                Next::Take,
            ),
            (
                "ours (a restart): take it back",
                Some(seen(Some("me"), Some(6))),
                Duration::ZERO,
                Next::Take,
            ),
            (
                "held, just seen: wait the whole duration",
                Some(seen(Some("other"), Some(6))),
                Duration::ZERO,
                wait(6 * S),
            ),
            (
                "held, seen 5s ago unchanged: wait the rest",
                Some(seen(Some("other"), Some(6))),
                5 * S,
                wait(S),
            ),
            (
                "held, unchanged for its whole duration: take it",
                Some(seen(Some("other"), Some(6))),
                6 * S,
                Next::Take,
            ),
            (
                "held, long unchanged: take it",
                Some(seen(Some("other"), Some(6))),
                600 * S,
                Next::Take,
            ),
            (
                "no duration in the record: ours applies",
                Some(seen(Some("other"), None)),
                14 * S,
                wait(S),
            ),
            (
                "no duration in the record, ours elapsed: take it",
                Some(seen(Some("other"), None)),
                D,
                Next::Take,
            ),
            (
                "a negative duration is no duration",
                Some(seen(Some("other"), Some(-5))),
                10 * S,
                wait(5 * S),
            ),
        ];
        for (what, seen, after, want) in rows {
            assert_eq!(next("me", seen.as_ref(), t0 + after, D), want, "{what}");
        }
    }

    #[test]
    fn the_holders_clock_is_not_consulted() {
        // A renewTime an hour in the past, seen just now: the Lease is valid for its duration.
        let t0 = Instant::now();
        let seen = Seen::observe(None, record(Some("other"), 0, Some(6)), t0);
        assert!(matches!(
            next("me", Some(&seen), t0 + S, D),
            Next::Wait { .. }
        ));
    }

    #[test]
    fn a_refused_renewal_tells_whether_the_lease_is_still_held() {
        let mine = record(Some("me"), 0, Some(6));
        assert_eq!(still_held("me", Some(&mine), true), Ok(()));
        assert_eq!(
            still_held("me", Some(&record(Some("you"), 0, Some(6))), true),
            Err(Lost::Other("you".into()))
        );
        assert_eq!(
            still_held("me", Some(&record(None, 0, None)), true),
            Err(Lost::Free)
        );
        assert_eq!(still_held("me", None, true), Err(Lost::Free));
        assert_eq!(still_held("me", None, false), Err(Lost::Missing));
    }
}
