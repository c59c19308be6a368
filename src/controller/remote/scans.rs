//! The scan cache ([`ScanCache`]): the latest observation of every bound inbox of an
//! AgentSend account (API key), refreshed by one paginated scan per sync interval (single
//! flight: concurrent callers share one scan) instead of one GET per inbox. An inbox missing
//! from a fresh scan is confirmed with a single GET (pages shift while inboxes come and go).
//! While this process creates inboxes in an account, at most two counter-sync rounds in a row
//! skip its scan ([`scan_due`]).

use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::agentsend::{AgentSendClient, ApiError, ApiKey, InboxState, RemoteInbox};
use crate::controller::cache::compact::Numbers;

/// While this process creates inboxes in an account, how many counter-sync rounds in a row
/// may skip its scan ([`scan_due`]): counters are then at most one interval more than this
/// old. Two keeps a bulk create of 10,000 within 2 % more requests than creates.
pub(crate) const ROUNDS_SKIPPED_WHILE_CREATING: u32 = 2;

/// How long a failed scan's error is reused before the account is tried again.
const FAILURE_TTL: Duration = Duration::from_secs(20);

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
    pub(super) interval: Duration,
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

#[cfg(test)]
mod tests {
    use super::*;
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

    /// At rest every round scans; while this process creates, rounds are skipped, never
    /// three in a row.
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
