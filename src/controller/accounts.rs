//! Batched counter sync: one paginated scan per AgentSend account (API key) per sync
//! interval feeds every Inbox of that account, instead of one GET per inbox.
//!
//! Reconciles read observations from the latest scan; an inbox missing from a fresh scan is
//! confirmed with a single GET (pages shift while inboxes come and go). A background loop
//! rescans each account every interval and asks the controller to reconcile exactly the
//! Inboxes whose inbox changed or vanished, so an unchanged fleet costs ceil(N/100) list
//! requests and zero Kubernetes writes per interval.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::channel::mpsc;
use kube::runtime::reflector::ObjectRef;

use crate::agentsend::{AgentSendClient, ApiError, ApiKey, RemoteInbox};
use crate::crd::Inbox;

/// How long a failed scan's error is reused before the account is tried again.
const FAILURE_TTL: Duration = Duration::from_secs(20);
/// How long IDs bound by this process are remembered beyond the watch cache.
const RECENTLY_BOUND_TTL: Duration = Duration::from_secs(600);

#[derive(Default)]
struct Account {
    /// Inbox ID → the Inbox bound to it.
    bound: HashMap<String, ObjectRef<Inbox>>,
    /// Inbox ID → (observation, when).
    seen: HashMap<String, (RemoteInbox, Instant)>,
    /// When the last complete scan started.
    scanned_at: Option<Instant>,
    /// The last failed scan, shared by callers for a short while so that a revoked key or an
    /// outage costs one request, not one per Inbox.
    failed: Option<(ApiError, Instant)>,
    /// Serialises scans of this account (single flight).
    scan_lock: Arc<tokio::sync::Mutex<()>>,
}

/// Shared registry of accounts, their bound inboxes and the latest observations.
#[derive(Clone)]
pub struct Accounts {
    inner: Arc<Mutex<HashMap<ApiKey, Account>>>,
    /// Per account: creates hold it shared, recoveries exclusively, so a recovery never sees
    /// an inbox whose create is still being recorded by another reconcile.
    create_gates: Arc<Mutex<HashMap<ApiKey, Arc<tokio::sync::RwLock<()>>>>>,
    /// Inbox IDs this process bound recently (the watch cache may not show them yet).
    recently_bound: Arc<Mutex<HashMap<String, (String, Instant)>>>,
    client: AgentSendClient,
    interval: Duration,
}

impl Accounts {
    /// A registry whose observations stay fresh for `interval`.
    pub fn new(client: AgentSendClient, interval: Duration) -> Self {
        Accounts {
            inner: Arc::default(),
            create_gates: Arc::default(),
            recently_bound: Arc::default(),
            client,
            interval,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ApiKey, Account>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Record that `obj` is bound to inbox `id` in the account of `key` (moving it away from
    /// any other key, e.g. after a key rotation).
    pub fn register(&self, key: &ApiKey, id: &str, obj: ObjectRef<Inbox>) {
        let mut accounts = self.lock();
        for (k, acct) in accounts.iter_mut() {
            if k != key {
                acct.bound.retain(|_, o| o != &obj);
            }
        }
        let acct = accounts.entry(key.clone()).or_default();
        acct.bound.retain(|i, o| o != &obj || i == id);
        acct.bound.insert(id.to_string(), obj);
        accounts.retain(|_, a| !a.bound.is_empty());
    }

    /// The API key `obj` was last bound under, if this process saw it. Lets deletion finish
    /// when the credentials Secret is already gone (a namespace being deleted removes it
    /// alongside the Inbox).
    pub fn key_for(&self, obj: &ObjectRef<Inbox>) -> Option<ApiKey> {
        self.lock()
            .iter()
            .find(|(_, a)| a.bound.values().any(|o| o == obj))
            .map(|(k, _)| k.clone())
    }

    /// The create/recovery gate of an account.
    pub fn create_gate(&self, key: &ApiKey) -> Arc<tokio::sync::RwLock<()>> {
        let mut gates = self.create_gates.lock().unwrap_or_else(|p| p.into_inner());
        gates.entry(key.clone()).or_default().clone()
    }

    /// Note that this process just bound `id` to the Inbox with UID `owner`.
    pub fn note_bound(&self, id: &str, owner: &str) {
        let mut m = self
            .recently_bound
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        m.retain(|_, (_, at)| at.elapsed() < RECENTLY_BOUND_TTL);
        m.insert(id.to_string(), (owner.to_string(), Instant::now()));
    }

    /// IDs bound by this process within the last minutes to Inboxes other than `owner`.
    pub fn recently_bound_except(&self, owner: &str) -> HashSet<String> {
        let m = self
            .recently_bound
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        m.iter()
            .filter(|(_, (o, at))| o != owner && at.elapsed() < RECENTLY_BOUND_TTL)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Forget `obj` (deleted Inbox).
    pub fn unregister(&self, obj: &ObjectRef<Inbox>) {
        let mut accounts = self.lock();
        for acct in accounts.values_mut() {
            acct.bound.retain(|_, o| o != obj);
        }
        accounts.retain(|_, a| !a.bound.is_empty());
    }

    /// Store an observation made outside a scan (a create's or a GET's answer).
    pub fn remember(&self, key: &ApiKey, inbox: &RemoteInbox) {
        let mut accounts = self.lock();
        let acct = accounts.entry(key.clone()).or_default();
        acct.seen
            .insert(inbox.id.clone(), (inbox.clone(), Instant::now()));
    }

    /// Forget an inbox that is gone.
    pub fn forget(&self, key: &ApiKey, id: &str) {
        if let Some(acct) = self.lock().get_mut(key) {
            acct.seen.remove(id);
        }
    }

    /// Number of accounts with bound inboxes.
    pub fn account_count(&self) -> usize {
        self.lock().len()
    }

    /// The current state of inbox `id`: `Ok(None)` when it does not exist.
    ///
    /// Uses the latest scan when fresh; otherwise scans the account (one scan at a time per
    /// account; concurrent callers share it). Falls back to one GET when the inbox is absent
    /// from a fresh scan.
    pub async fn observe(&self, key: &ApiKey, id: &str) -> Result<Option<RemoteInbox>, ApiError> {
        if let Some(hit) = self.fresh(key, id) {
            return Ok(Some(hit));
        }
        if let Some(e) = self.recent_failure(key) {
            return Err(e);
        }
        if !self.scan_is_fresh(key) {
            self.scan(key).await?;
            if let Some(hit) = self.fresh(key, id) {
                return Ok(Some(hit));
            }
        }
        match self.client.get_inbox(key, id).await {
            Ok(r) => {
                self.remember(key, &r);
                Ok(Some(r))
            }
            Err(ApiError::NotFound { .. }) => {
                self.forget(key, id);
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn fresh(&self, key: &ApiKey, id: &str) -> Option<RemoteInbox> {
        let accounts = self.lock();
        let (r, at) = accounts.get(key)?.seen.get(id)?;
        (at.elapsed() < self.interval).then(|| r.clone())
    }

    fn recent_failure(&self, key: &ApiKey) -> Option<ApiError> {
        let ttl = self.interval.min(FAILURE_TTL);
        let accounts = self.lock();
        let (e, at) = accounts.get(key)?.failed.as_ref()?;
        (at.elapsed() < ttl).then(|| e.clone())
    }

    fn scan_is_fresh(&self, key: &ApiKey) -> bool {
        self.lock()
            .get(key)
            .and_then(|a| a.scanned_at)
            .is_some_and(|t| t.elapsed() < self.interval)
    }

    /// Scan one account now (single flight). Returns the IDs whose observation changed or
    /// which vanished, with the Inboxes bound to them.
    pub async fn scan(&self, key: &ApiKey) -> Result<Vec<ObjectRef<Inbox>>, ApiError> {
        let lock = {
            let mut accounts = self.lock();
            accounts.entry(key.clone()).or_default().scan_lock.clone()
        };
        let requested = Instant::now();
        let _guard = lock.lock().await;
        // Someone else may have finished a scan while we waited: share its outcome.
        {
            let accounts = self.lock();
            if let Some(a) = accounts.get(key) {
                if a.scanned_at.is_some_and(|t| t >= requested) {
                    return Ok(Vec::new());
                }
                if let Some((e, at)) = &a.failed
                    && *at >= requested
                {
                    return Err(e.clone());
                }
            }
        }
        let started = Instant::now();
        let result = match self.client.list_all(key).await {
            Ok(r) => r,
            Err(e) => {
                let mut accounts = self.lock();
                accounts.entry(key.clone()).or_default().failed = Some((e.clone(), Instant::now()));
                return Err(e);
            }
        };
        let mut changed = Vec::new();
        let mut accounts = self.lock();
        let acct = accounts.entry(key.clone()).or_default();
        let listed: HashSet<&str> = result.iter().map(|r| r.id.as_str()).collect();
        // First success after a failed scan (key restored, outage over): every Inbox of the
        // account has a condition to clear, even if nothing changed in AgentSend.
        let recovered = acct.failed.is_some();
        for (id, obj) in &acct.bound {
            let before = acct.seen.get(id).map(|(r, _)| r);
            let after = result.iter().find(|r| &r.id == id);
            let differs = match (before, after) {
                (Some(b), Some(a)) => b != a,
                (None, Some(_)) => true,
                (_, None) => true,
            };
            if differs || recovered {
                changed.push(obj.clone());
            }
        }
        // Keep observations newer than this scan (made by creates/GETs meanwhile).
        acct.seen
            .retain(|id, (_, at)| *at > started && !listed.contains(id.as_str()));
        for r in result {
            acct.seen.insert(r.id.clone(), (r, started));
        }
        acct.scanned_at = Some(started);
        acct.failed = None;
        Ok(changed)
    }

    /// API keys with bound inboxes, and the Inboxes bound in each.
    pub fn snapshot(&self) -> Vec<(ApiKey, Vec<ObjectRef<Inbox>>)> {
        self.lock()
            .iter()
            .map(|(k, a)| (k.clone(), a.bound.values().cloned().collect()))
            .collect()
    }

    /// Rescan every account every interval and send the Inboxes whose inbox changed to
    /// `trigger`. On an account-level failure (revoked key, outage) every Inbox of that
    /// account is reconciled so its conditions say so.
    pub async fn run_sync_loop(
        self,
        trigger: mpsc::UnboundedSender<ObjectRef<Inbox>>,
        on_success: impl Fn() + Send + 'static,
    ) {
        // A random phase so several operators (shards) do not scan in lockstep; then one round
        // per interval exactly (a slow round delays the next instead of bunching them up).
        let phase = self.interval.mul_f64(rand::random::<f64>() * 0.5);
        let mut ticks = tokio::time::interval_at(
            tokio::time::Instant::now() + self.interval + phase,
            self.interval,
        );
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let mut all_ok = true;
            for (key, bound) in self.snapshot() {
                match self.scan(&key).await {
                    Ok(changed) => {
                        for obj in changed {
                            let _ = trigger.unbounded_send(obj);
                        }
                    }
                    Err(e) => {
                        all_ok = false;
                        tracing::warn!(error = %e, inboxes = bound.len(), "counter sync scan failed");
                        if !matches!(e, ApiError::RateLimited { .. }) {
                            for obj in bound {
                                let _ = trigger.unbounded_send(obj);
                            }
                        }
                    }
                }
            }
            if all_ok {
                on_success();
            }
            if trigger.is_closed() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agentsend::ClientOptions;

    fn accounts() -> Accounts {
        let client = AgentSendClient::new("http://127.0.0.1:9", ClientOptions::default()).unwrap();
        Accounts::new(client, Duration::from_secs(60))
    }

    fn obj(name: &str) -> ObjectRef<Inbox> {
        ObjectRef::new(name).within("ns")
    }

    #[test]
    fn registration_follows_key_rotation() {
        let a = accounts();
        let old = ApiKey::new("old").unwrap();
        let new = ApiKey::new("new").unwrap();
        a.register(&old, "i1", obj("x"));
        a.register(&old, "i2", obj("y"));
        assert_eq!(a.account_count(), 1);
        a.register(&new, "i1", obj("x"));
        let snap: HashMap<_, _> = a.snapshot().into_iter().collect();
        assert_eq!(snap[&old], vec![obj("y")]);
        assert_eq!(snap[&new], vec![obj("x")]);
        a.unregister(&obj("y"));
        assert_eq!(a.account_count(), 1, "empty accounts are dropped");
        assert_eq!(a.key_for(&obj("x")), Some(new.clone()));
        assert_eq!(a.key_for(&obj("y")), None);
    }

    #[test]
    fn rebinding_replaces_the_old_id() {
        let a = accounts();
        let k = ApiKey::new("k").unwrap();
        a.register(&k, "old-id", obj("x"));
        a.register(&k, "new-id", obj("x"));
        let snap = a.snapshot();
        assert_eq!(snap[0].1.len(), 1);
    }

    #[test]
    fn recently_bound_excludes_the_owner() {
        let a = accounts();
        a.note_bound("i1", "uid-a");
        a.note_bound("i2", "uid-b");
        let for_a = a.recently_bound_except("uid-a");
        assert!(!for_a.contains("i1") && for_a.contains("i2"));
    }

    #[tokio::test]
    async fn remembered_observations_are_served_without_requests() {
        let a = accounts();
        let k = ApiKey::new("k").unwrap();
        let r = RemoteInbox {
            id: "i1".into(),
            address: "a@agentsend.io".into(),
            display_name: None,
            domain_id: None,
            status: crate::agentsend::InboxState::Active,
            daily_send_limit: Some(1),
            sends_today: Some(0),
            total_sent: None,
            bounce_count: None,
            complaint_count: None,
            created_at: None,
        };
        a.remember(&k, &r);
        // The client points at a closed port: a request would fail.
        assert_eq!(a.observe(&k, "i1").await.unwrap(), Some(r));
    }
}
