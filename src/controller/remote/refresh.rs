//! Refresh on demand (`agentsend.io/refresh`): an Inbox whose annotation has a value its
//! status has not seen (`status.observedRefresh`) asks for fresh counters. Requests are
//! queued per account and folded: the queue waits until no request has come for
//! [`QUIET`] (at most [`MAX_WAIT`] after the first), then scans each account once — one
//! paginated list, ceil(N/100) requests, however many Inboxes asked — and wakes every Inbox
//! that asked, whose next pass reads the fresh observation from the scan cache and records
//! the value it served. Nothing here calls AgentSend per Inbox.
//!
//! A refresh scan of one account starts at most once per [`MIN_INTERVAL`]: a new annotation
//! value is cheap for a tenant to write, and a shared account's scans are everyone's
//! requests, so requests that come sooner wait for the next allowed scan (and are folded
//! into it) instead of driving the account into 429s.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::channel::mpsc;
use kube::runtime::reflector::ObjectRef;
use tokio::sync::Notify;

use crate::agentsend::ApiKey;
use crate::api::inbox::Inbox;
use crate::controller::remote::scans::ScanCache;

/// A batch is scanned once no request has come for this long...
pub const QUIET: Duration = Duration::from_millis(500);
/// ...or this long after its first request, whichever comes first.
pub const MAX_WAIT: Duration = Duration::from_secs(3);
/// The shortest time between two refresh scans of one account.
pub const MIN_INTERVAL: Duration = Duration::from_secs(30);
/// How long a served value is remembered for the pass that records it.
const SERVED_TTL: Duration = Duration::from_secs(600);

/// Where an Inbox's refresh request stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refresh {
    /// Queued: a scan will serve it and wake the Inbox.
    Pending,
    /// A scan that started after the request has completed (or failed: the pass's own
    /// observation then shows the error).
    Served,
}

#[derive(Default)]
struct State {
    /// API key → (Inbox → the annotation value it asked for).
    pending: HashMap<ApiKey, HashMap<ObjectRef<Inbox>, String>>,
    /// Inbox → the value last served, and when.
    served: HashMap<ObjectRef<Inbox>, (String, Instant)>,
    /// First and latest request of the batch being collected.
    first: Option<Instant>,
    last: Option<Instant>,
    /// API key → when its last refresh scan started (kept for [`MIN_INTERVAL`]).
    scanned: HashMap<ApiKey, Instant>,
}

/// The queue of refresh requests, shared by reconciles and the refresh loop.
#[derive(Clone)]
pub struct RefreshQueue {
    state: Arc<Mutex<State>>,
    wake: Arc<Notify>,
    /// The shortest time between two refresh scans of one account ([`MIN_INTERVAL`]).
    min_interval: Duration,
}

impl Default for RefreshQueue {
    fn default() -> Self {
        RefreshQueue::with_min_interval(MIN_INTERVAL)
    }
}

impl RefreshQueue {
    /// A queue scanning each account at most once per `min_interval`.
    pub fn with_min_interval(min_interval: Duration) -> Self {
        RefreshQueue {
            state: Arc::default(),
            wake: Arc::default(),
            min_interval,
        }
    }

    /// `obj` (bound in the account of `key`) asks for counters fresher than now, for the
    /// annotation value `value`: `Served` once a scan has answered that value, else queued.
    pub fn request(&self, key: &ApiKey, obj: &ObjectRef<Inbox>, value: &str) -> Refresh {
        let mut s = self.state.lock();
        if s.served.get(obj).is_some_and(|(v, _)| v == value) {
            return Refresh::Served;
        }
        let now = Instant::now();
        let queued = s.pending.entry(key.clone()).or_default();
        if queued.get(obj).map(String::as_str) != Some(value) {
            queued.insert(obj.clone(), value.to_string());
            s.first.get_or_insert(now);
            s.last = Some(now);
            self.wake.notify_one();
        }
        Refresh::Pending
    }

    /// How long until some account of the batch being collected is due: the batch's own
    /// wait, and no account before [`MIN_INTERVAL`] after its last refresh scan. `None` when
    /// nothing is queued.
    fn due_in(&self, now: Instant) -> Option<Duration> {
        let s = self.state.lock();
        let batch = batch_due(s.first?, s.last?, now);
        let allowed = s
            .pending
            .keys()
            .map(|k| next_allowed(s.scanned.get(k).copied(), now, self.min_interval))
            .min()
            .unwrap_or(Duration::ZERO);
        Some(batch.max(allowed))
    }

    /// Take the accounts of the batch whose refresh scan may start now, with the Inboxes
    /// that asked; the others stay queued.
    fn take(&self, now: Instant) -> Vec<(ApiKey, HashMap<ObjectRef<Inbox>, String>)> {
        let mut s = self.state.lock();
        s.served.retain(|_, (_, at)| at.elapsed() < SERVED_TTL);
        let interval = self.min_interval;
        s.scanned
            .retain(|_, at| now.saturating_duration_since(*at) < interval);
        let due: Vec<ApiKey> = s
            .pending
            .keys()
            .filter(|k| !s.scanned.contains_key(*k))
            .cloned()
            .collect();
        let taken: Vec<_> = due
            .into_iter()
            .filter_map(|k| {
                let asked = s.pending.remove(&k)?;
                s.scanned.insert(k.clone(), now);
                Some((k, asked))
            })
            .collect();
        if s.pending.is_empty() {
            s.first = None;
            s.last = None;
        }
        taken
    }

    /// Record that `value` was served to `obj`.
    fn served(&self, obj: ObjectRef<Inbox>, value: String) {
        self.state
            .lock()
            .served
            .insert(obj, (value, Instant::now()));
    }
}

/// Time left until an account last scanned at `scanned` may be scanned again.
fn next_allowed(scanned: Option<Instant>, now: Instant, interval: Duration) -> Duration {
    scanned.map_or(Duration::ZERO, |at| {
        (at + interval).saturating_duration_since(now)
    })
}

/// Time left until a batch whose first request came at `first` and latest at `last` is due.
fn batch_due(first: Instant, last: Instant, now: Instant) -> Duration {
    let due = (last + QUIET).min(first + MAX_WAIT);
    due.saturating_duration_since(now)
}

/// Serve refresh requests until `trigger` closes: collect a batch, scan each account in it
/// once, and wake the Inboxes that asked.
pub async fn run(
    queue: RefreshQueue,
    scans: ScanCache,
    trigger: mpsc::UnboundedSender<ObjectRef<Inbox>>,
) {
    loop {
        match queue.due_in(Instant::now()) {
            None => {
                queue.wake.notified().await;
                continue;
            }
            Some(wait) if !wait.is_zero() => {
                tokio::time::sleep(wait).await;
                continue;
            }
            Some(_) => {}
        }
        for (key, asked) in queue.take(Instant::now()) {
            match scans.scan(&key, &[]).await {
                Ok(_) => tracing::debug!(inboxes = asked.len(), "refresh scan"),
                // The woken passes observe the failure and report it.
                Err(e) => tracing::warn!(error = %e, inboxes = asked.len(), "refresh scan failed"),
            }
            for (obj, value) in asked {
                queue.served(obj.clone(), value);
                let _ = trigger.unbounded_send(obj);
            }
        }
        if trigger.is_closed() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(name: &str) -> ObjectRef<Inbox> {
        ObjectRef::new(name).within("ns")
    }

    #[test]
    fn a_batch_is_due_after_a_quiet_spell_or_the_longest_wait() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        // (first request, latest request, now) after t0 → time left
        let cases = [
            (0, 0, 0, 500),
            (0, 0, 300, 200),
            (0, 400, 500, 400),
            (0, 2900, 2950, 50),
            (0, 2900, 3000, 0),
            (0, 0, 9000, 0),
        ];
        for (first, last, now, want) in cases {
            let got = batch_due(t0 + ms(first), t0 + ms(last), t0 + ms(now));
            assert_eq!(got, ms(want), "first {first} last {last} now {now}");
        }
    }

    #[test]
    fn requests_fold_per_account_and_are_served_once_scanned() {
        let q = RefreshQueue::default();
        let (a, b) = (ApiKey::new("a").unwrap(), ApiKey::new("b").unwrap());
        assert_eq!(q.request(&a, &obj("x"), "1"), Refresh::Pending);
        assert_eq!(q.request(&a, &obj("y"), "1"), Refresh::Pending);
        assert_eq!(
            q.request(&a, &obj("x"), "1"),
            Refresh::Pending,
            "asked again"
        );
        assert_eq!(q.request(&b, &obj("z"), "7"), Refresh::Pending);
        assert!(q.due_in(Instant::now()).is_some());
        let batch = q.take(Instant::now());
        let mut sizes: Vec<usize> = batch.iter().map(|(_, m)| m.len()).collect();
        sizes.sort();
        assert_eq!(sizes, [1, 2], "one entry per account, each Inbox once");
        assert_eq!(q.due_in(Instant::now()), None, "nothing queued");
        for (_, asked) in batch {
            for (o, v) in asked {
                q.served(o, v);
            }
        }
        assert_eq!(q.request(&a, &obj("x"), "1"), Refresh::Served);
        assert_eq!(
            q.request(&a, &obj("x"), "2"),
            Refresh::Pending,
            "a new value asks again"
        );
    }

    /// A tenant writing new refresh values cannot make a shared account scan more than once
    /// per MIN_INTERVAL: the next request waits for the interval and is folded; another
    /// account is not held back.
    #[test]
    fn an_account_is_refresh_scanned_at_most_once_per_interval() {
        let q = RefreshQueue::default();
        let (a, b) = (ApiKey::new("a").unwrap(), ApiKey::new("b").unwrap());
        let t0 = Instant::now();
        q.request(&a, &obj("x"), "1");
        assert_eq!(q.take(t0).len(), 1, "the first scan goes");
        for v in ["2", "3", "4"] {
            q.request(&a, &obj("x"), v);
        }
        q.request(&b, &obj("y"), "1");
        let soon = t0 + Duration::from_secs(1);
        let taken: Vec<ApiKey> = q.take(soon).into_iter().map(|(k, _)| k).collect();
        assert_eq!(taken, [b], "only the other account");
        let wait = q.due_in(soon).expect("a is still queued");
        assert_eq!(wait, MIN_INTERVAL - Duration::from_secs(1));
        let later = t0 + MIN_INTERVAL;
        let batch = q.take(later);
        assert_eq!(batch.len(), 1);
        assert_eq!(batch[0].1[&obj("x")], "4", "folded into the latest value");
        assert_eq!(q.due_in(later), None);
    }
}
