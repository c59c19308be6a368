//! Per-account state shared by reconciles, in three parts that do not depend on each other:
//!
//! - [`ScanCache`]: the latest observation of every inbox of an AgentSend account (API key),
//!   refreshed by one paginated scan per sync interval (single flight: concurrent callers
//!   share one scan) instead of one GET per inbox. An inbox missing from a fresh scan is
//!   confirmed with a single GET (pages shift while inboxes come and go).
//! - [`CreateGates`]: one lock per account; creates hold it shared, recoveries exclusively,
//!   so a recovery never sees an inbox whose create is still being recorded.
//! - [`BindingRegistry`]: which Inbox is bound to which inbox in which account (what the
//!   counter sync scans, and the key to delete with once a credentials Secret is gone), and
//!   the IDs this process bound recently (the one-owner check, ahead of the watch cache).
//!
//! [`run_counter_sync`] rescans every account with bound inboxes each interval and asks the
//! controller to reconcile exactly the Inboxes whose inbox changed or vanished, so an
//! unchanged fleet costs ceil(N/100) list requests and zero Kubernetes writes per interval
//! (while this process creates inboxes in an account, at most two rounds in a row skip its
//! scan: [`scan_due`]).

use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::channel::mpsc;
use kube::runtime::reflector::ObjectRef;

use crate::agentsend::{AgentSendClient, ApiError, ApiKey, InboxState, RemoteInbox};
use crate::api::inbox::Inbox;
use crate::controller::cache::compact::Numbers;

/// While this process creates inboxes in an account, how many counter-sync rounds in a row
/// may skip its scan ([`scan_due`]): counters are then at most one interval more than this
/// old. Two keeps a bulk create of 10,000 within 2 % more requests than creates.
pub(crate) const ROUNDS_SKIPPED_WHILE_CREATING: u32 = 2;

/// How long a failed scan's error is reused before the account is tried again.
const FAILURE_TTL: Duration = Duration::from_secs(20);
/// How long IDs bound by this process are remembered beyond the watch cache.
const RECENTLY_BOUND_TTL: Duration = Duration::from_secs(600);

// ------------------------------------------------------------------------- scans

/// What the cache knows about one account.
#[derive(Default)]
struct Scanned {
    /// Inbox ID → observation, boxed: a hash table holds 1.6 entries per entry (its load
    /// factor), so a large entry inline would cost more than the box.
    seen: HashMap<Box<str>, Box<Observation>>,
    /// Inbox IDs whose observation changed (or which vanished) in a scan, until a reconcile
    /// reports the change: every scan, whoever started it, marks them, and the counter sync
    /// asks for them at each round until then. A reconcile that failed (the API server was
    /// down) or a scan started by a reconcile (which triggers nothing) loses no news.
    unreported: HashSet<String>,
    /// When the last complete scan started.
    scanned_at: Option<Instant>,
    /// The same, as wall-clock time (account status: `lastScanTime`).
    scanned_wall: Option<jiff::Timestamp>,
    /// The last failed scan, shared by callers for a short while so that a revoked key or an
    /// outage costs one request, not one per Inbox.
    failed: Option<(ApiError, Instant)>,
    /// Serialises scans of this account (single flight).
    scan_lock: Arc<tokio::sync::Mutex<()>>,
    /// Whether an Account's status asks for the whole inventory: only then do scans keep
    /// the inboxes no Inbox here is bound to (in `unbound`), so that an account nobody
    /// inspects costs memory in proportion to its bound inboxes only.
    inventory_wanted: bool,
    /// With `inventory_wanted`: the inboxes of the last scan not kept in `seen`.
    unbound: Vec<RemoteInbox>,
    /// When an observation was last made outside a scan (a create's answer, a GET): while
    /// this process keeps creating inboxes, the counter sync may defer its scan (see
    /// [`scan_due`]).
    observed_outside: Option<Instant>,
    /// When this account was first seen: a stand-in for the last scan before the first one.
    first_seen: Option<Instant>,
}

impl Scanned {
    /// How old an observation may be for a pass to use it: one `interval`, or one more per
    /// round the counter sync may skip while this process creates inboxes in the account
    /// ([`scan_due`]: without this, the passes of the Inboxes created a round ago would each
    /// find their observation stale and start the scan the counter sync skipped).
    fn max_age(&self, interval: Duration) -> Duration {
        let now = Instant::now();
        match self.scanned_at.or(self.first_seen) {
            Some(last) if creating(now, interval, last, self.observed_outside) => {
                interval * (ROUNDS_SKIPPED_WHILE_CREATING + 1)
            }
            _ => interval,
        }
    }

    /// Take one listed inbox `r` of the scan that started at `started`, in place: a known
    /// inbox whose observation differs is marked unreported; the observation is kept when the
    /// scan keeps it ([`Wanted::keeps`]), else dropped (and set aside for the inventory when
    /// that is wanted). Returns its ID when it is kept and was not known before.
    fn absorb(
        &mut self,
        r: RemoteInbox,
        started: Instant,
        wanted: &Wanted<'_>,
        unbound: &mut Vec<RemoteInbox>,
    ) -> Option<String> {
        let id = r.id.as_str();
        let known = self.seen.get_mut(id);
        if known.as_ref().is_some_and(|o| !o.matches(&r)) {
            self.unreported.insert(r.id.clone());
        }
        if wanted.keeps(id, known.is_some()) {
            match known {
                Some(o) => **o = Observation::new(r, started),
                None => {
                    let id = r.id.clone();
                    let observation = Box::new(Observation::new(r, started));
                    self.seen.insert(id.as_str().into(), observation);
                    return Some(id);
                }
            }
            return None;
        }
        if known.is_some() {
            self.seen.remove(id);
        }
        if self.inventory_wanted {
            unbound.push(r);
        }
        None
    }

    /// End a complete scan that started at `started`: the known inboxes it did not list
    /// vanished (marked unreported, and forgotten unless observed after it started). Returns
    /// the `watched` IDs a reconcile should look at: those changed, unreported, missing or
    /// `new` (not known before the scan) — all of them after a failed scan.
    fn finish_scan(
        &mut self,
        started: Instant,
        watched: &[String],
        wanted: &Wanted<'_>,
        new: &HashSet<String>,
    ) -> Vec<String> {
        let unreported = &mut self.unreported;
        self.seen.retain(|id, o| {
            if o.at != started {
                unreported.insert(id.to_string());
            }
            o.at >= started
        });
        let recovered = self.failed.is_some();
        let changed = watched
            .iter()
            .filter(|id| {
                recovered
                    || self.unreported.contains(id.as_str())
                    || !self.seen.contains_key(id.as_str())
                    || new.contains(id.as_str())
            })
            .cloned()
            .collect();
        if !wanted.watched.is_empty() {
            // The counter sync passes every bound ID: nothing else needs a report.
            self.unreported
                .retain(|id| wanted.watched.contains(id.as_str()));
        }
        changed
    }
}

/// One inbox as a scan, a create or a GET saw it, and when; its ID is the key it is kept
/// under. The answer's strings boxed and its counters in one array with a known-bit mask:
/// 152 bytes where a `RemoteInbox` and the time took 240. Built and compared by
/// destructuring every field of `RemoteInbox`, so a field added there does not compile until
/// it is kept here too.
#[derive(Clone, Debug)]
struct Observation {
    address: Box<str>,
    display_name: Option<Box<str>>,
    domain_id: Option<Box<str>>,
    created_at: Option<Box<str>>,
    status: InboxState,
    /// `dailySendLimit`, `sendsToday`, `totalSent`, `bounceCount`, `complaintCount`.
    counts: Numbers<5>,
    at: Instant,
}

impl Observation {
    fn new(r: RemoteInbox, at: Instant) -> Observation {
        let RemoteInbox {
            id: _,
            address,
            display_name,
            domain_id,
            status,
            daily_send_limit,
            sends_today,
            total_sent,
            bounce_count,
            complaint_count,
            created_at,
        } = r;
        let counts = Numbers::new([
            daily_send_limit,
            sends_today,
            total_sent,
            bounce_count,
            complaint_count,
        ]);
        let boxed = |s: Option<String>| s.map(String::into_boxed_str);
        Observation {
            address: address.into_boxed_str(),
            display_name: boxed(display_name),
            domain_id: boxed(domain_id),
            created_at: boxed(created_at),
            status,
            counts,
            at,
        }
    }

    /// The inbox `id` as observed.
    fn inbox(&self, id: &str) -> RemoteInbox {
        let text = |s: &Option<Box<str>>| s.as_deref().map(str::to_string);
        RemoteInbox {
            id: id.to_string(),
            address: self.address.to_string(),
            display_name: text(&self.display_name),
            domain_id: text(&self.domain_id),
            status: self.status.clone(),
            daily_send_limit: self.counts.get(0),
            sends_today: self.counts.get(1),
            total_sent: self.counts.get(2),
            bounce_count: self.counts.get(3),
            complaint_count: self.counts.get(4),
            created_at: text(&self.created_at),
        }
    }

    /// Whether `r` (of the same ID) says the same as this observation.
    fn matches(&self, r: &RemoteInbox) -> bool {
        let RemoteInbox {
            id: _,
            address,
            display_name,
            domain_id,
            status,
            daily_send_limit,
            sends_today,
            total_sent,
            bounce_count,
            complaint_count,
            created_at,
        } = r;
        let same =
            |mine: &Option<Box<str>>, theirs: &Option<String>| mine.as_deref() == theirs.as_deref();
        *self.address == **address
            && same(&self.display_name, display_name)
            && same(&self.domain_id, domain_id)
            && same(&self.created_at, created_at)
            && self.status == *status
            && self.counts.all()
                == [
                    *daily_send_limit,
                    *sends_today,
                    *total_sent,
                    *bounce_count,
                    *complaint_count,
                ]
    }
}

/// What a scan keeps: the observation of `also`, of the `watched` inboxes (the counter sync)
/// or, when none are named, of those already known.
struct Wanted<'a> {
    watched: HashSet<&'a str>,
    also: Option<&'a str>,
}

impl Wanted<'_> {
    fn keeps(&self, id: &str, known: bool) -> bool {
        self.also == Some(id)
            || if self.watched.is_empty() {
                known
            } else {
                self.watched.contains(id)
            }
    }
}

/// Observations of inboxes per account, from scans, creates and GETs.
#[derive(Clone)]
pub struct ScanCache {
    accounts: Arc<Mutex<HashMap<ApiKey, Scanned>>>,
    client: AgentSendClient,
    interval: Duration,
}

impl ScanCache {
    /// A cache whose observations stay fresh for `interval`.
    pub fn new(client: AgentSendClient, interval: Duration) -> Self {
        ScanCache {
            accounts: Arc::default(),
            client,
            interval,
        }
    }

    /// Store an observation made outside a scan (a create's or a GET's answer).
    pub fn remember(&self, key: &ApiKey, inbox: &RemoteInbox) {
        let mut accounts = self.accounts.lock();
        let acct = accounts.entry(key.clone()).or_default();
        let now = Instant::now();
        let observation = Box::new(Observation::new(inbox.clone(), now));
        acct.seen.insert(inbox.id.as_str().into(), observation);
        acct.observed_outside = Some(now);
        acct.first_seen.get_or_insert(now);
    }

    /// Forget an inbox that is gone.
    pub fn forget(&self, key: &ApiKey, id: &str) {
        if let Some(acct) = self.accounts.lock().get_mut(key) {
            acct.seen.remove(id);
            acct.unreported.remove(id);
        }
    }

    /// A reconcile reported `observed` in its Inbox's status: unless a newer observation came
    /// in meanwhile, the counter sync stops asking for that Inbox.
    pub fn reported(&self, key: &ApiKey, observed: &RemoteInbox) {
        if let Some(acct) = self.accounts.lock().get_mut(key) {
            let current = acct.seen.get(observed.id.as_str());
            if current.is_none_or(|o| o.matches(observed)) {
                acct.unreported.remove(&observed.id);
            }
        }
    }

    /// Drop the accounts not in `keys` (no Inbox is bound in them any more).
    pub fn retain_accounts(&self, keys: &HashSet<ApiKey>) {
        self.accounts.lock().retain(|k, _| keys.contains(k));
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
            self.scan_keeping(key, &[], Some(id)).await?;
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
        let accounts = self.accounts.lock();
        let acct = accounts.get(key)?;
        let o = acct.seen.get(id)?;
        (o.at.elapsed() < acct.max_age(self.interval)).then(|| o.inbox(id))
    }

    fn recent_failure(&self, key: &ApiKey) -> Option<ApiError> {
        let ttl = self.interval.min(FAILURE_TTL);
        let accounts = self.accounts.lock();
        let (e, at) = accounts.get(key)?.failed.as_ref()?;
        (at.elapsed() < ttl).then(|| e.clone())
    }

    fn scan_is_fresh(&self, key: &ApiKey) -> bool {
        self.accounts
            .lock()
            .get(key)
            .and_then(|a| Some(a.scanned_at?.elapsed() < a.max_age(self.interval)))
            .unwrap_or(false)
    }

    /// Scan one account now (single flight). Returns those of `watched` whose observation
    /// changed or which vanished, in this scan or in an earlier one, and is not yet
    /// [`reported`](Self::reported) — all of them on the first success after a failed scan
    /// (key restored, outage over), since each has a condition to clear.
    ///
    /// Only the observations of `watched` are kept (or, when `watched` is empty, of the
    /// inboxes already known): the cache stays proportional to the bound inboxes, not to the
    /// account, which other software may fill with many more.
    pub async fn scan(&self, key: &ApiKey, watched: &[String]) -> Result<Vec<String>, ApiError> {
        self.scan_keeping(key, watched, None).await
    }

    /// [`scan`](Self::scan), also keeping the observation of `also`.
    async fn scan_keeping(
        &self,
        key: &ApiKey,
        watched: &[String],
        also: Option<&str>,
    ) -> Result<Vec<String>, ApiError> {
        let scan_lock = self
            .accounts
            .lock()
            .entry(key.clone())
            .or_default()
            .scan_lock
            .clone();
        let requested = Instant::now();
        let _guard = scan_lock.lock().await;
        // Someone else may have finished a scan while we waited: share its outcome.
        if let Some(a) = self.accounts.lock().get(key) {
            if a.scanned_at.is_some_and(|t| t >= requested) {
                return Ok(Vec::new());
            }
            if let Some((e, at)) = &a.failed
                && *at >= requested
            {
                return Err(e.clone());
            }
        }
        let started = Instant::now();
        let wall = jiff::Timestamp::now();
        let wanted = Wanted {
            watched: watched.iter().map(String::as_str).collect(),
            also,
        };
        // Page by page, in place: a scan holds one page and what it sets aside, never a
        // second copy of every observation.
        let (mut new, mut unbound) = (HashSet::new(), Vec::new());
        let listed = self.client.list_pages(key, |page| {
            let mut accounts = self.accounts.lock();
            let acct = accounts.entry(key.clone()).or_default();
            for r in page {
                new.extend(acct.absorb(r, started, &wanted, &mut unbound));
            }
        });
        let listed = listed.await;
        let mut accounts = self.accounts.lock();
        let acct = accounts.entry(key.clone()).or_default();
        if let Err(e) = listed {
            acct.failed = Some((e.clone(), Instant::now()));
            return Err(e);
        }
        let changed = acct.finish_scan(started, watched, &wanted, &new);
        acct.unbound = unbound;
        acct.scanned_at = Some(started);
        acct.scanned_wall = Some(wall);
        acct.failed = None;
        Ok(changed)
    }

    /// The counter sync's round for one account: [`scan`](Self::scan) when [`scan_due`],
    /// else no request — the changes earlier scans saw and no reconcile reported yet.
    pub async fn sync(&self, key: &ApiKey, watched: &[String]) -> Result<Vec<String>, ApiError> {
        let deferred = {
            let accounts = self.accounts.lock();
            accounts.get(key).and_then(|a| {
                let last = a.scanned_at.or(a.first_seen)?;
                let due = scan_due(Instant::now(), self.interval, last, a.observed_outside);
                (!due).then(|| {
                    let watched = watched.iter().filter(|id| a.unreported.contains(*id));
                    watched.cloned().collect()
                })
            })
        };
        match deferred {
            Some(unreported) => Ok(unreported),
            None => self.scan(key, watched).await,
        }
    }

    /// Every inbox of the account as of a scan at most one interval old — scanning now only
    /// when there is none (the counter sync's scans serve it: no second scan per interval) —
    /// and when that scan started.
    pub async fn inventory(
        &self,
        key: &ApiKey,
    ) -> Result<(Vec<RemoteInbox>, jiff::Timestamp), ApiError> {
        let first_ask = {
            let mut accounts = self.accounts.lock();
            let acct = accounts.entry(key.clone()).or_default();
            !std::mem::replace(&mut acct.inventory_wanted, true)
        };
        if first_ask || !self.scan_is_fresh(key) {
            if let Some(e) = self.recent_failure(key) {
                return Err(e);
            }
            self.scan(key, &[]).await?;
        }
        let accounts = self.accounts.lock();
        let acct = accounts.get(key);
        let listed = acct
            .map(|a| {
                let bound = a.seen.iter().map(|(id, o)| o.inbox(id));
                bound.chain(a.unbound.iter().cloned()).collect()
            })
            .unwrap_or_default();
        let at = acct
            .and_then(|a| a.scanned_wall)
            .unwrap_or_else(jiff::Timestamp::now);
        Ok((listed, at))
    }
}

/// Whether the counter sync scans an account at a round (`now`), given when its last scan
/// started (or the account was first seen) and when an observation was last made outside a
/// scan (this process's creates). At rest: every round. While this process creates inboxes
/// in the account (an observation within the last `interval`), the inboxes it just created
/// are fresh from their create's answer, and a scan — a list of the whole account — would
/// mostly re-read them: the round is skipped, at most [`ROUNDS_SKIPPED_WHILE_CREATING`] in a
/// row, so that no counter is more than one interval more than that old. (A round comes one
/// `interval` after the previous one: the half interval of margin absorbs a late round.)
pub(crate) fn scan_due(
    now: Instant,
    interval: Duration,
    last_scan: Instant,
    observed_outside: Option<Instant>,
) -> bool {
    !creating(now, interval, last_scan, observed_outside)
        || now.saturating_duration_since(last_scan)
            >= interval.mul_f64(f64::from(ROUNDS_SKIPPED_WHILE_CREATING) + 0.5)
}

/// Whether this process is creating inboxes in an account: an observation outside a scan (a
/// create's answer) since its last scan started, within the last `interval`.
fn creating(
    now: Instant,
    interval: Duration,
    last_scan: Instant,
    observed_outside: Option<Instant>,
) -> bool {
    observed_outside
        .is_some_and(|at| at >= last_scan && now.saturating_duration_since(at) < interval)
}

// ------------------------------------------------------------------------- gates

/// One create/recovery lock per account.
///
/// Still needed with operator-chosen addresses: two Inboxes may name the same `spec.address`.
/// Without the gate, the second one's recovery (after its 409) could list the account between
/// the first one's create committing and its binding being noted, see the inbox as created
/// after its own mark ("ours"), find no other owner yet, and bind it too. Holding the gate
/// shared from the create until the binding is noted makes that listing wait. A legacy
/// recovery (an address AgentSend chose) likewise never mistakes an unrecorded create for its
/// own. Creates never wait for each other, so it costs nothing on the happy path.
#[derive(Clone, Default)]
pub struct CreateGates {
    gates: Arc<Mutex<HashMap<ApiKey, Arc<tokio::sync::RwLock<()>>>>>,
}

impl CreateGates {
    /// The gate of an account: creates take it shared, recoveries exclusively. Gates nobody
    /// holds are dropped once there are many (a gate is only needed while held).
    pub fn of(&self, key: &ApiKey) -> Arc<tokio::sync::RwLock<()>> {
        let mut gates = self.gates.lock();
        if gates.len() >= 64 && !gates.contains_key(key) {
            gates.retain(|_, g| Arc::strong_count(g) > 1);
        }
        gates.entry(key.clone()).or_default().clone()
    }
}

// ---------------------------------------------------------------------- bindings

/// Inbox ID → the Inbox bound to it (`namespace/name`, [`owner_key`]), in one account.
type Bound = HashMap<Arc<str>, Arc<str>>;

/// An Inbox as the registry keys it: `namespace/name` (neither may contain a `/`), one
/// shared string where an `ObjectRef` is 96 bytes inline plus two strings.
fn owner_key(obj: &ObjectRef<Inbox>) -> String {
    format!(
        "{}/{}",
        obj.namespace.as_deref().unwrap_or_default(),
        obj.name
    )
}

/// The reference [`owner_key`] stands for.
fn owner_ref(key: &str) -> ObjectRef<Inbox> {
    let (ns, name) = key.split_once('/').unwrap_or(("", key));
    let r = ObjectRef::new(name);
    if ns.is_empty() { r } else { r.within(ns) }
}

/// A bind by this process: (owner UID, owner `namespace/name`).
type RecentBind = (Box<str>, Box<str>);

/// Entries remembered for [`RECENTLY_BOUND_TTL`]: expired ones are swept once the map has
/// doubled since the last sweep, so that an insert costs O(1) amortised, not a walk over
/// every entry (which made each bind and release cost O(N) during a bulk apply or delete).
struct Recent<V> {
    entries: HashMap<Box<str>, (V, Instant)>,
    /// Sweep expired entries when `entries` reaches this size.
    sweep_at: usize,
}

impl<V> Default for Recent<V> {
    fn default() -> Self {
        Recent {
            entries: HashMap::new(),
            sweep_at: 0,
        }
    }
}

impl<V> Recent<V> {
    fn insert(&mut self, key: &str, value: V) {
        if self.entries.len() >= self.sweep_at {
            self.entries
                .retain(|_, (_, at)| at.elapsed() < RECENTLY_BOUND_TTL);
            self.sweep_at = (self.entries.len() * 2).max(1024);
        }
        self.entries.insert(key.into(), (value, Instant::now()));
    }

    fn get(&self, key: &str) -> Option<&V> {
        self.entries
            .get(key)
            .filter(|(_, at)| at.elapsed() < RECENTLY_BOUND_TTL)
            .map(|(v, _)| v)
    }
}

/// The bindings, indexed both ways so that every update and lookup is O(1).
#[derive(Default)]
struct Bindings {
    /// API key → (inbox ID → the Inbox bound to it).
    accounts: HashMap<ApiKey, Bound>,
    /// Inbox ([`owner_key`]) → (API key, inbox ID): its one binding. Both maps share the
    /// strings.
    by_obj: HashMap<Arc<str>, (ApiKey, Arc<str>)>,
}

impl Bindings {
    /// Remove the binding of the Inbox `owner` ([`owner_key`]), if any.
    fn remove(&mut self, owner: &str) {
        let Some((key, id)) = self.by_obj.remove(owner) else {
            return;
        };
        if let Some(bound) = self.accounts.get_mut(&key) {
            if bound.get(&id).is_some_and(|o| &**o == owner) {
                bound.remove(&id);
            }
            if bound.is_empty() {
                self.accounts.remove(&key);
            }
        }
    }
}

/// Which Inbox is bound to which inbox, per account.
#[derive(Clone, Default)]
pub struct BindingRegistry {
    /// Who is bound to what (proportional to the bound Inboxes, O(1) per update).
    bindings: Arc<Mutex<Bindings>>,
    /// Inbox IDs this process bound recently (the watch cache may not show them yet):
    /// ID → (owner UID, owner `namespace/name`, when).
    recently_bound: Arc<Mutex<Recent<RecentBind>>>,
    /// UIDs of Inboxes whose deletion released their binding (the watch cache may still
    /// show them for a moment): they own nothing any more.
    released: Arc<Mutex<Recent<()>>>,
    /// Inbox ID → Inboxes refused because another Inbox owns it; woken when it is released.
    waiters: Arc<Mutex<HashMap<String, HashSet<ObjectRef<Inbox>>>>>,
}

impl BindingRegistry {
    /// Record that `obj` is bound to inbox `id` in the account of `key` (moving it away from
    /// any other key or ID, e.g. after a key rotation). Only the name and namespace of `obj`
    /// are kept (its resourceVersion and UID, which no lookup compares, would be two more
    /// strings per binding, twice).
    pub fn register(&self, key: &ApiKey, id: &str, obj: ObjectRef<Inbox>) {
        let owner = owner_key(&obj);
        let mut b = self.bindings.lock();
        if b.by_obj
            .get(owner.as_str())
            .is_some_and(|(k, i)| k == key && &**i == id)
        {
            return;
        }
        b.remove(&owner);
        let (owner, id): (Arc<str>, Arc<str>) = (owner.into(), id.into());
        let bound = b.accounts.entry(key.clone()).or_default();
        if let Some(previous) = bound.insert(id.clone(), owner.clone())
            && previous != owner
        {
            // The ID changed hands: the previous Inbox is no longer bound to it.
            b.by_obj.remove(&previous);
        }
        b.by_obj.insert(owner, (key.clone(), id));
    }

    /// Forget `obj` (deleted Inbox).
    pub fn unregister(&self, obj: &ObjectRef<Inbox>) {
        self.bindings.lock().remove(&owner_key(obj));
    }

    /// The API key `obj` was last bound under, if this process saw it. Lets deletion finish
    /// when the credentials Secret is already gone (a namespace being deleted removes it
    /// alongside the Inbox).
    pub fn key_for(&self, obj: &ObjectRef<Inbox>) -> Option<ApiKey> {
        let owner = owner_key(obj);
        self.bindings
            .lock()
            .by_obj
            .get(owner.as_str())
            .map(|(k, _)| k.clone())
    }

    /// API keys with bound inboxes, and the inbox IDs bound in each (what the counter sync
    /// scans for): no copy of who they are bound to, which [`bound_to`](Self::bound_to) looks
    /// up for the few that changed.
    pub fn bound_ids(&self) -> Vec<(ApiKey, Vec<String>)> {
        self.bindings
            .lock()
            .accounts
            .iter()
            .map(|(k, b)| (k.clone(), b.keys().map(|id| id.to_string()).collect()))
            .collect()
    }

    /// The Inboxes bound to `ids` in the account of `key` (IDs no longer bound are skipped).
    pub fn bound_to(&self, key: &ApiKey, ids: &[String]) -> Vec<ObjectRef<Inbox>> {
        let b = self.bindings.lock();
        let Some(bound) = b.accounts.get(key) else {
            return Vec::new();
        };
        ids.iter()
            .filter_map(|id| bound.get(id.as_str()).map(|o| owner_ref(o)))
            .collect()
    }

    /// Note that this process just bound `id` to the Inbox with UID `owner`, called `name`
    /// (`namespace/name`).
    pub fn note_bound(&self, id: &str, owner: &str, name: &str) {
        self.recently_bound
            .lock()
            .insert(id, (owner.into(), name.into()));
    }

    /// The `namespace/name` of the Inbox other than `owner` this process bound `id` to within
    /// the last minutes, unless that Inbox has released it since.
    pub fn recently_bound_to(&self, id: &str, owner: &str) -> Option<String> {
        let (uid, name) = self
            .recently_bound
            .lock()
            .get(id)
            .filter(|(o, _)| &**o != owner)
            .cloned()?;
        (!self.is_released(&uid)).then(|| name.into())
    }

    /// The Inbox with UID `owner` is gone: its bindings are free at once (a re-created
    /// Inbox may adopt the inbox now). Returns the Inboxes that were waiting for `ids`.
    pub fn release(&self, owner: &str, ids: &[String]) -> Vec<ObjectRef<Inbox>> {
        {
            let mut recent = self.recently_bound.lock();
            for id in ids {
                if recent.get(id).is_some_and(|(o, _)| &**o == owner) {
                    recent.entries.remove(id.as_str());
                }
            }
        }
        // Any other ID it bound is freed by `recently_bound_to`'s check of this mark.
        self.released.lock().insert(owner, ());
        let mut waiters = self.waiters.lock();
        ids.iter()
            .filter_map(|id| waiters.remove(id))
            .flatten()
            .collect()
    }

    /// Whether the Inbox with this UID released its bindings (it is being deleted).
    pub fn is_released(&self, uid: &str) -> bool {
        self.released.lock().get(uid).is_some()
    }

    /// `obj` was refused inbox `id` (another Inbox owns it): wake it when that one goes.
    pub fn wait_for(&self, id: &str, obj: ObjectRef<Inbox>) {
        self.waiters
            .lock()
            .entry(id.to_string())
            .or_default()
            .insert(obj);
    }
}

// ------------------------------------------------------------------ counter sync

/// Rescan every account with bound inboxes each `interval` and send the Inboxes whose inbox
/// changed to `trigger`. On an account-level failure (revoked key, outage) every Inbox of
/// that account is reconciled so its conditions say so; `on_success` runs after a round in
/// which every scan succeeded.
pub async fn run_counter_sync(
    scans: ScanCache,
    bindings: BindingRegistry,
    trigger: mpsc::UnboundedSender<ObjectRef<Inbox>>,
    on_success: impl Fn() + Send + 'static,
) {
    // A random phase so several operators (shards) do not scan in lockstep; then one round
    // per interval exactly (a slow round delays the next instead of bunching them up).
    // At least 1 s (a zero period panics in tokio); the CLI refuses anything outside 1 s–24 h.
    let interval = scans.interval.max(Duration::from_secs(1));
    let phase = interval.mul_f64(rand::random::<f64>() * 0.5);
    let now = tokio::time::Instant::now();
    let first = now
        .checked_add(interval.saturating_add(phase))
        .unwrap_or(now);
    let mut ticks = tokio::time::interval_at(first, interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let accounts = bindings.bound_ids();
        scans.retain_accounts(&accounts.iter().map(|(k, _)| k.clone()).collect());
        let mut all_ok = true;
        for (key, ids) in accounts {
            let to_reconcile = match scans.sync(&key, &ids).await {
                Ok(changed) => {
                    tracing::debug!(
                        inboxes = ids.len(),
                        changed = changed.len(),
                        "counter sync scan"
                    );
                    bindings.bound_to(&key, &changed)
                }
                Err(e) => {
                    all_ok = false;
                    tracing::warn!(error = %e, inboxes = ids.len(), "counter sync scan failed");
                    match e {
                        ApiError::RateLimited { .. } => Vec::new(),
                        _ => bindings.bound_to(&key, &ids),
                    }
                }
            };
            for obj in to_reconcile {
                let _ = trigger.unbounded_send(obj);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Create gates of keys no longer used go once there are many; a held gate stays.
    #[test]
    fn create_gates_nobody_holds_are_dropped() {
        let gates = CreateGates::default();
        let held = gates.of(&ApiKey::new("held").unwrap());
        for i in 0..200 {
            drop(gates.of(&ApiKey::new(format!("k{i}")).unwrap()));
        }
        let n = gates.gates.lock().len();
        assert!(n <= 65, "{n} gates kept");
        let again = gates.of(&ApiKey::new("held").unwrap());
        assert!(Arc::ptr_eq(&held, &again), "the held gate is the same gate");
    }
    use crate::agentsend::ClientOptions;

    fn scans() -> ScanCache {
        let client = AgentSendClient::new("http://127.0.0.1:9", ClientOptions::default()).unwrap();
        ScanCache::new(client, Duration::from_secs(60))
    }

    /// A simulator with one account `acct` (key `key-a`), and a scan cache in front of it;
    /// the handle keeps the simulator serving.
    async fn simulated_account() -> (
        inbox_sim::Simulator,
        inbox_sim::SimulatorHandle,
        ScanCache,
        ApiKey,
    ) {
        let sim = inbox_sim::Simulator::new();
        sim.add_account("acct", "key-a");
        let handle = sim.spawn().await.unwrap();
        let client = AgentSendClient::new(&handle.url(), ClientOptions::default()).unwrap();
        let scans = ScanCache::new(client, Duration::from_secs(60));
        (sim, handle, scans, ApiKey::new("key-a").unwrap())
    }

    fn obj(name: &str) -> ObjectRef<Inbox> {
        ObjectRef::new(name).within("ns")
    }

    /// The Inboxes bound in the account of `key`.
    fn bound_in(b: &BindingRegistry, key: &ApiKey) -> Vec<ObjectRef<Inbox>> {
        let ids = b.bound_ids().into_iter().find(|(k, _)| k == key);
        b.bound_to(key, &ids.map(|(_, ids)| ids).unwrap_or_default())
    }

    /// A scan over several pages: each page's inboxes are compared and kept as they come; an
    /// inbox changed on a later page and one gone from the account are both asked for; the
    /// gone one is forgotten.
    #[tokio::test]
    async fn a_scan_over_pages_notices_changes_and_vanished_inboxes_on_every_page() {
        let (sim, _handle, scans, key) = simulated_account().await;
        let ids: Vec<String> = (0..250)
            .map(|_| {
                let created = sim.insert_inbox("acct", inbox_sim::CreateInbox::default());
                created.unwrap().id
            })
            .collect();
        let known = |scans: &ScanCache| scans.accounts.lock()[&key].seen.len();
        let mut first = scans.scan(&key, &ids).await.unwrap();
        first.sort();
        let mut all = ids.clone();
        all.sort();
        assert_eq!(first, all, "all new");
        assert_eq!(known(&scans), 250);
        // Every inbox reported as the client reads it (through the wire format).
        for r in sim.inboxes("acct") {
            let wire = serde_json::to_value(r).unwrap();
            scans.reported(&key, &serde_json::from_value(wire).unwrap());
        }
        assert!(
            scans.scan(&key, &ids).await.unwrap().is_empty(),
            "nothing changed"
        );

        let (changed, gone) = (&ids[230], &ids[120]);
        sim.update_inbox(changed, |r| r.sends_today = Some(42));
        sim.delete_out_of_band(gone);
        let mut news = scans.scan(&key, &ids).await.unwrap();
        news.sort();
        let mut want = vec![changed.clone(), gone.clone()];
        want.sort();
        assert_eq!(news, want);
        assert_eq!(known(&scans), 249, "the gone one is forgotten");
    }

    /// A change a scan saw is asked for at every counter-sync scan until a reconcile reports
    /// it — also when the scan that saw it was started by a reconcile (which triggers
    /// nothing), and a report of an older observation does not clear a newer change.
    #[tokio::test]
    async fn a_change_is_asked_for_until_reported() {
        let (sim, _handle, scans, key) = simulated_account().await;
        let inbox = sim
            .insert_inbox("acct", inbox_sim::CreateInbox::default())
            .unwrap();
        let watched = vec![inbox.id.clone()];
        // The simulator's inbox as the client reads it: through the wire format.
        let id = || -> crate::agentsend::RemoteInbox {
            let wire = serde_json::to_value(sim.inbox(&inbox.id).unwrap()).unwrap();
            serde_json::from_value(wire).unwrap()
        };
        assert_eq!(scans.scan(&key, &watched).await.unwrap(), watched, "new");
        scans.reported(&key, &id());
        assert!(scans.scan(&key, &watched).await.unwrap().is_empty(), "same");

        sim.update_inbox(&inbox.id, |r| r.sends_today = Some(7));
        scans.scan(&key, &[]).await.unwrap();
        assert_eq!(
            scans.scan(&key, &watched).await.unwrap(),
            watched,
            "seen by another scan"
        );
        assert_eq!(
            scans.scan(&key, &watched).await.unwrap(),
            watched,
            "not reported yet"
        );
        let seven = id();
        sim.update_inbox(&inbox.id, |r| r.sends_today = Some(8));
        scans.scan(&key, &watched).await.unwrap();
        scans.reported(&key, &seven);
        assert_eq!(
            scans.scan(&key, &watched).await.unwrap(),
            watched,
            "8 not reported"
        );
        scans.reported(&key, &id());
        assert!(
            scans.scan(&key, &watched).await.unwrap().is_empty(),
            "reported"
        );
    }

    /// At rest every round scans; while this process creates, rounds are skipped, never
    /// three in a row.
    #[test]
    fn an_observation_gives_back_what_was_observed_and_notices_any_change() {
        let mut r = RemoteInbox::fixture("i1", "a@agentsend.io");
        r.display_name = Some("A".into());
        r.sends_today = None;
        let o = Observation::new(r.clone(), Instant::now());
        assert_eq!(o.inbox("i1"), r);
        assert!(o.matches(&r));
        let changes: [fn(&mut RemoteInbox); 8] = [
            |r| r.address = "b@agentsend.io".into(),
            |r| r.display_name = None,
            |r| r.domain_id = Some("d".into()),
            |r| r.status = InboxState::Suspended,
            |r| r.sends_today = Some(0),
            |r| r.bounce_count = Some(1),
            |r| r.complaint_count = None,
            |r| r.created_at = None,
        ];
        for change in changes {
            let mut other = r.clone();
            change(&mut other);
            assert!(!o.matches(&other), "{other:?}");
        }
    }

    #[test]
    fn the_counter_sync_defers_a_scan_by_at_most_two_rounds_while_creating() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let i = s(30);
        // (last scan, last observation outside a scan, now) after t0 → scan?
        let cases = [
            ((0, None, 30), true, "at rest"),
            ((0, None, 60), true, "at rest, late"),
            ((0, Some(25), 30), false, "creating: skip one round"),
            ((0, Some(55), 60), false, "creating: skip a second round"),
            ((0, Some(85), 90), true, "creating: never three rounds"),
            ((0, Some(74), 75), true, "creating, 2.5 intervals"),
            ((0, Some(73), 74), false, "creating, under 2.5"),
            ((10, Some(5), 40), true, "nothing created since the scan"),
            ((0, Some(1), 31), true, "the last create is an interval old"),
            ((0, Some(29), 30), false, "a create a second ago"),
        ];
        for ((scan, outside, now), want, what) in cases {
            let at = |secs| t0 + s(secs);
            let got = scan_due(at(now), i, at(scan), outside.map(at));
            assert_eq!(got, want, "{what}");
        }
    }

    /// The counter sync's round: no request while this process has just created an inbox and
    /// the last scan is recent; a scan again once that scan is 2.5 intervals old.
    #[tokio::test]
    async fn a_round_right_after_creates_sends_no_request() {
        let (sim, _handle, scans, key) = simulated_account().await;
        let created = sim.insert_inbox("acct", inbox_sim::CreateInbox::default());
        let created = serde_json::to_value(created.unwrap()).unwrap();
        let created: RemoteInbox = serde_json::from_value(created).unwrap();
        let watched = vec![created.id.clone()];
        scans.remember(&key, &created);
        assert!(scans.sync(&key, &watched).await.unwrap().is_empty());
        assert_eq!(sim.request_count(inbox_sim::Route::List), 0, "deferred");
        let long_ago = Instant::now().checked_sub(Duration::from_secs(200));
        scans.accounts.lock().get_mut(&key).unwrap().first_seen = long_ago;
        scans.sync(&key, &watched).await.unwrap();
        assert_eq!(sim.request_count(inbox_sim::Route::List), 1, "scanned");
    }

    /// While this process creates inboxes, a pass over an Inbox created a round ago uses its
    /// create's answer (up to three intervals old) instead of starting the scan the counter
    /// sync skipped; at rest, one interval.
    #[test]
    fn passes_accept_three_interval_old_observations_only_while_creating() {
        let i = Duration::from_secs(30);
        let ago = |secs| Instant::now().checked_sub(Duration::from_secs(secs));
        let acct = |scan, outside: Option<u64>| Scanned {
            scanned_at: ago(scan),
            observed_outside: outside.and_then(ago),
            ..Scanned::default()
        };
        assert_eq!(acct(40, Some(5)).max_age(i), i * 3, "creating");
        assert_eq!(acct(40, None).max_age(i), i, "at rest");
        assert_eq!(
            acct(40, Some(35)).max_age(i),
            i,
            "the last create an interval old"
        );
        assert_eq!(
            acct(10, Some(20)).max_age(i),
            i,
            "nothing created since the scan"
        );
    }

    #[test]
    fn registration_follows_key_rotation() {
        let b = BindingRegistry::default();
        let old = ApiKey::new("old").unwrap();
        let new = ApiKey::new("new").unwrap();
        b.register(&old, "i1", obj("x"));
        b.register(&old, "i2", obj("y"));
        assert_eq!(b.bound_ids().len(), 1);
        b.register(&new, "i1", obj("x"));
        assert_eq!(bound_in(&b, &old), vec![obj("y")]);
        assert_eq!(bound_in(&b, &new), vec![obj("x")]);
        b.unregister(&obj("y"));
        assert_eq!(b.bound_ids().len(), 1, "empty accounts are dropped");
        assert_eq!(b.key_for(&obj("x")), Some(new.clone()));
        assert_eq!(b.key_for(&obj("y")), None);
    }

    #[test]
    fn the_registry_hands_back_the_namespace_and_name_it_was_given() {
        let b = BindingRegistry::default();
        let k = ApiKey::new("k").unwrap();
        let (a, other) = (
            ObjectRef::<Inbox>::new("mail").within("team-a"),
            ObjectRef::<Inbox>::new("mail").within("team-b"),
        );
        b.register(&k, "i1", a.clone());
        b.register(&k, "i2", other.clone());
        assert_eq!(
            b.bound_to(&k, &["i1".into(), "i2".into()]),
            [a.clone(), other]
        );
        let by_name = b.bound_to(&k, &["i1".into()]);
        assert_eq!(by_name[0].namespace.as_deref(), Some("team-a"));
        b.unregister(&a);
        assert_eq!(b.key_for(&a), None);
        assert_eq!(owner_ref(&owner_key(&a)), a);
    }

    #[test]
    fn rebinding_replaces_the_old_id() {
        let b = BindingRegistry::default();
        let k = ApiKey::new("k").unwrap();
        b.register(&k, "old-id", obj("x"));
        b.register(&k, "new-id", obj("x"));
        assert_eq!(b.bound_ids()[0].1, ["new-id"]);
    }

    #[test]
    fn an_id_that_changes_hands_leaves_the_previous_inbox_unbound() {
        let b = BindingRegistry::default();
        let k = ApiKey::new("k").unwrap();
        b.register(&k, "i1", obj("x"));
        b.register(&k, "i1", obj("y"));
        assert_eq!(b.key_for(&obj("x")), None);
        assert_eq!(b.key_for(&obj("y")), Some(k.clone()));
        // Unregistering the previous owner leaves the new binding alone.
        b.unregister(&obj("x"));
        assert_eq!(bound_in(&b, &k), vec![obj("y")]);
    }

    #[test]
    fn recently_bound_excludes_the_owner() {
        let b = BindingRegistry::default();
        b.note_bound("i1", "uid-a", "ns/a");
        b.note_bound("i2", "uid-b", "ns/b");
        assert_eq!(b.recently_bound_to("i1", "uid-a"), None);
        assert_eq!(b.recently_bound_to("i2", "uid-a").as_deref(), Some("ns/b"));
        assert_eq!(b.recently_bound_to("i3", "uid-a"), None);
    }

    #[test]
    fn a_deleted_owner_frees_its_binding_at_once_and_wakes_waiters() {
        let b = BindingRegistry::default();
        b.note_bound("i1", "uid-a", "ns/a");
        b.wait_for("i1", obj("thief"));
        b.wait_for("i2", obj("other"));
        assert_eq!(b.release("uid-a", &["i1".into()]), vec![obj("thief")]);
        assert_eq!(b.recently_bound_to("i1", "uid-b"), None);
        assert!(b.is_released("uid-a") && !b.is_released("uid-b"));
        assert!(b.release("uid-a", &["i1".into()]).is_empty(), "woken once");
    }

    #[test]
    fn one_gate_per_account() {
        let g = CreateGates::default();
        let (a, b) = (ApiKey::new("a").unwrap(), ApiKey::new("b").unwrap());
        assert!(Arc::ptr_eq(&g.of(&a), &g.of(&a)));
        assert!(!Arc::ptr_eq(&g.of(&a), &g.of(&b)));
    }

    /// An account shared with other software: the cache keeps the bound inboxes only.
    #[tokio::test]
    async fn scans_keep_only_the_bound_inboxes() {
        let (sim, _handle, scans, key) = simulated_account().await;
        let ids: Vec<String> = (0..5)
            .map(|_| {
                let r = sim.insert_inbox("acct", inbox_sim::CreateInbox::default());
                r.unwrap().id
            })
            .collect();
        let watched = vec![ids[0].clone()];
        scans.scan(&key, &watched).await.unwrap();
        let known = |scans: &ScanCache| scans.accounts.lock()[&key].seen.len();
        assert_eq!(known(&scans), 1, "only the bound inbox");
        // A reconcile asking for another one (adoption) gets it from the scan it starts.
        scans.accounts.lock().get_mut(&key).unwrap().scanned_at = None;
        assert!(scans.observe(&key, &ids[1]).await.unwrap().is_some());
        assert_eq!(known(&scans), 2);
        assert_eq!(sim.request_count(inbox_sim::Route::Get), 0, "no GET needed");
    }

    #[tokio::test]
    async fn remembered_observations_are_served_without_requests() {
        let s = scans();
        let k = ApiKey::new("k").unwrap();
        let r = RemoteInbox::fixture("i1", "a@agentsend.io");
        s.remember(&k, &r);
        // The client points at a closed port: a request would fail.
        assert_eq!(s.observe(&k, "i1").await.unwrap(), Some(r));
        s.retain_accounts(&HashSet::new());
        assert!(
            s.fresh(&k, "i1").is_none(),
            "accounts nobody is bound in are dropped"
        );
    }
}
