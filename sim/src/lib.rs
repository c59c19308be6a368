//! An in-memory **simulator** of the AgentSend Inboxes API — **NOT the real service**.
//!
//! It implements the documented API (`x-api-key` auth, create/list/get/delete, newest-first
//! pages with a total, random and custom-domain addresses, 400/401/404/409/422 answers) so that
//! tests and the local demo run without an AgentSend account, plus hooks the tests need:
//! counters and status of an inbox, out-of-band creation and deletion, latency, error rates,
//! `fail_next`, 429 with `Retry-After`, "create then drop the response", malformed bodies, and
//! per-route request counts and logs.
//!
//! The crate owns its wire types ([`CreateInbox`], [`RemoteInbox`], [`InboxState`]): it
//! simulates an HTTP API and shares no Rust types with the operator's client. The `inbox-sim`
//! binary runs it standalone ([`run_standalone`]).
//!
//! Every response carries the header `x-agentsend-simulator: true`, and the standalone server
//! ([`run_standalone`]) prints a banner saying it is not the real service. The hooks are also
//! served over HTTP under `/_simulator/` (no auth) for a simulator in another process.
//!
//! Every request on an `/inboxes` route goes through, in order: count → latency → rate limit →
//! injected errors → auth → handler, and is logged with its outcome whatever it is.
//!
//! The rate limit is either an injected window (`rate_limit_for`, ...) or, when switched on
//! ([`Simulator::set_account_rate_limit`], `inbox-sim --rate-limit`, the control field
//! `accountRateLimit`), a token bucket per account as a rate-limited API enforces it: a request
//! that finds no token gets 429 with `Retry-After` in whole seconds (rounded up). Off by default.
//!
//! ## Control endpoints (no auth; not counted in the stats)
//!
//! | endpoint | body / answer |
//! |---|---|
//! | `POST /_simulator/accounts` | `{account, apiKey}` |
//! | `POST /_simulator/domains` | `{account, domainId, domainName}` |
//! | `POST /_simulator/keys/revoke`, `/keys/restore` | `{apiKey}` |
//! | `POST /_simulator/inboxes` | `{account, address?, displayName?, domainId?}` → the inbox |
//! | `GET /_simulator/inboxes?account=` | the account's inboxes, newest first |
//! | `PATCH /_simulator/inboxes/{id}` | any of `status`, `sendsToday`, `dailySendLimit`, `totalSent`, `bounceCount`, `complaintCount` → the inbox |
//! | `DELETE /_simulator/inboxes/{id}` | out-of-band delete |
//! | `POST /_simulator/faults` | any of `accountRateLimit: {perSecond, burst?}` (a token bucket per account; burst defaults to one second's worth; `perSecond: 0` turns it off), `latencyMs`, `errorRate`, `errorStatus`, `dropNextCreates`, `lateCommits: {count, delayMs}`, `failNext: {route, n, status}`, `rateLimit: {account, ms, httpDate}`, `retryAfter: {account, values}` (429s with these raw `Retry-After` values, one per request), `malformed: {route, kind}` (kind null to stop), `defaultDailyLimit` |
//! | `DELETE /_simulator/faults` | clear every fault |
//! | `GET /_simulator/stats` | `{"requests":{"create":n,"get":n,"list":n,"delete":n},"total":n,"inboxes":n}` |
//! | `POST` or `DELETE /_simulator/reset-counters` | zero the request counters |

#![forbid(unsafe_code)]

mod api;
mod bucket;
mod control;
mod state;
mod types;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::HeaderValue;
use axum::response::Response;
use axum::routing::get;
use tokio::sync::oneshot;

pub use bucket::RateLimit;
pub use types::{CreateInbox, InboxState, RemoteInbox};

pub use state::{
    MAX_ADDRESS_LEN, MAX_LOCAL_PART_LEN, SHARED_DOMAIN, SimError, resolve_address, valid_local_part,
};

use state::SimState;

/// The response header that marks every simulator answer.
pub const SIMULATOR_HEADER: &str = "x-agentsend-simulator";
/// The banner's first line (stderr) when run standalone.
pub const BANNER: &str = "AgentSend SIMULATOR — NOT the real service";

/// An API route, for fault injection and request counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Route {
    /// `POST /inboxes`
    Create,
    /// `GET /inboxes/{id}`
    Get,
    /// `GET /inboxes`
    List,
    /// `DELETE /inboxes/{id}`
    Delete,
}

impl Route {
    /// Every route.
    pub const ALL: [Route; 4] = [Route::Create, Route::Get, Route::List, Route::Delete];

    /// Lower-case name used in stats (`create`, `get`, `list`, `delete`).
    pub fn as_str(self) -> &'static str {
        match self {
            Route::Create => "create",
            Route::Get => "get",
            Route::List => "list",
            Route::Delete => "delete",
        }
    }

    /// The route named by [`Route::as_str`].
    pub fn parse(s: &str) -> Option<Route> {
        Route::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// Ways a successful answer can be malformed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Malformed {
    /// An HTML page instead of JSON.
    NotJson,
    /// Valid JSON cut in half.
    Truncated,
    /// Extra, undocumented fields (still valid per the API doc: clients must accept it).
    UnexpectedFields,
    /// A body larger than 8 MiB.
    Huge,
}

impl Malformed {
    /// The kind named `not-json`, `truncated`, `unexpected-fields` or `huge`.
    pub fn parse(s: &str) -> Option<Malformed> {
        match s {
            "not-json" | "notJson" => Some(Malformed::NotJson),
            "truncated" => Some(Malformed::Truncated),
            "unexpected-fields" | "unexpectedFields" => Some(Malformed::UnexpectedFields),
            "huge" => Some(Malformed::Huge),
            _ => None,
        }
    }
}

/// One API request as the simulator saw it.
#[derive(Clone, Debug)]
pub struct RequestRecord {
    /// When it arrived.
    pub at: Instant,
    /// Which route.
    pub route: Route,
    /// The account of its key, if the key is known (even if revoked).
    pub account: Option<String>,
    /// The status answered (499 when the client went away before the answer).
    pub status: u16,
}

/// The simulator: cheap to clone; every clone shares the same state.
#[derive(Clone)]
pub struct Simulator {
    state: Arc<Mutex<SimState>>,
}

impl Default for Simulator {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Simulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Simulator(AgentSend simulator, not the real service)")
    }
}

/// A running simulator server; dropping it stops the server.
#[derive(Debug)]
pub struct SimulatorHandle {
    url: String,
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
}

impl SimulatorHandle {
    /// Base URL, e.g. `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for SimulatorHandle {
    fn drop(&mut self) {
        // Graceful: stop accepting, close idle keep-alive connections, let in-flight
        // requests finish.
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl Simulator {
    /// An empty simulator: no accounts, no faults, new inboxes limited to 100 sends a day.
    pub fn new() -> Self {
        Simulator {
            state: Arc::new(Mutex::new(SimState::default())),
        }
    }

    /// The state, held briefly and never across an `.await`.
    fn lock(&self) -> MutexGuard<'_, SimState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    // ----- accounts, keys, domains -----

    /// Create `account` if needed and accept `api_key` for it (an account may have several).
    pub fn add_account(&self, account: &str, api_key: &str) {
        self.lock().keys.insert(
            api_key.to_string(),
            state::KeyEntry {
                account: account.to_string(),
                revoked: false,
            },
        );
    }

    /// Answer 401 to this key from now on.
    pub fn revoke_key(&self, api_key: &str) {
        if let Some(k) = self.lock().keys.get_mut(api_key) {
            k.revoked = true;
        }
    }

    /// Accept a revoked key again.
    pub fn restore_key(&self, api_key: &str) {
        if let Some(k) = self.lock().keys.get_mut(api_key) {
            k.revoked = false;
        }
    }

    /// Register a custom domain (`domain_id` → `domain_name`, e.g. `example.com`) on an account.
    pub fn add_domain(&self, account: &str, domain_id: &str, domain_name: &str) {
        self.lock().domains.insert(
            (account.to_string(), domain_id.to_string()),
            domain_name.trim().to_ascii_lowercase(),
        );
    }

    /// Daily send limit of inboxes created from now on (default 100).
    pub fn set_default_daily_limit(&self, limit: i64) {
        self.lock().default_limit = limit;
    }

    // ----- inboxes, out of band -----

    /// Create an inbox out of band, with the same validation as `POST /inboxes`; the error
    /// reads like the API's answer (`409 address_taken: ...`).
    pub fn insert_inbox(&self, account: &str, req: CreateInbox) -> Result<RemoteInbox, String> {
        self.lock().create(account, &req).map_err(|e| e.to_string())
    }

    /// One inbox by ID, whatever its account.
    pub fn inbox(&self, id: &str) -> Option<RemoteInbox> {
        self.lock().get(id, None).map(|s| s.inbox.clone())
    }

    /// The account that owns inbox `id`.
    pub fn inbox_account(&self, id: &str) -> Option<String> {
        self.lock().get(id, None).map(|s| s.account.clone())
    }

    /// An account's inboxes, newest first.
    pub fn inboxes(&self, account: &str) -> Vec<RemoteInbox> {
        let st = self.lock();
        let (page, _) = st.page(account, usize::MAX, 0);
        page.into_iter().cloned().collect()
    }

    /// Number of inboxes in all accounts.
    pub fn inbox_count(&self) -> usize {
        self.lock().inboxes.len()
    }

    /// Delete an inbox out of band (as if deleted in the AgentSend console); its address is
    /// free again. `false` if there was no such inbox.
    pub fn delete_out_of_band(&self, id: &str) -> bool {
        self.lock().remove(id, None)
    }

    /// Change an inbox (counters, status) as AgentSend would over time. Its ID cannot change.
    /// `false` if there is no such inbox.
    pub fn update_inbox(&self, id: &str, f: impl FnOnce(&mut RemoteInbox)) -> bool {
        self.lock().update(id, f)
    }

    // ----- faults -----

    /// Latency added to every API request.
    pub fn set_latency(&self, d: Duration) {
        self.lock().latency = d;
    }

    /// A random fraction `rate` (0–1) of API requests answer `status` before doing anything.
    pub fn set_error_rate(&self, rate: f64, status: u16) {
        let mut st = self.lock();
        st.error_rate = if rate.is_finite() {
            rate.clamp(0.0, 1.0)
        } else {
            0.0
        };
        st.error_status = status;
    }

    /// The next `n` requests on `route` answer `status` before doing anything (after latency
    /// and rate limiting, before auth).
    pub fn fail_next(&self, route: Route, n: usize, status: u16) {
        self.lock().fail_next.insert(route, (n, status));
    }

    /// Every request of `account` (any of its keys) gets 429 with `Retry-After` — whole
    /// seconds, or an HTTP date when `http_date` — until `d` has elapsed.
    pub fn rate_limit_for(&self, account: &str, d: Duration, http_date: bool) {
        let now = Instant::now();
        self.lock().rate_limited.insert(
            account.to_string(),
            (now.checked_add(d).unwrap_or(now), http_date),
        );
    }

    /// The next requests of `account`, one per value, get 429 with `Retry-After` set to that
    /// value verbatim (huge, negative, garbage, dates: whatever a broken server might send;
    /// values that are not valid header text are sent without the header).
    pub fn rate_limit_with_retry_after<S: Into<String>>(
        &self,
        account: &str,
        values: impl IntoIterator<Item = S>,
    ) {
        self.lock()
            .raw_retry_after
            .entry(account.to_string())
            .or_default()
            .extend(values.into_iter().map(Into::into));
    }

    /// Like [`rate_limit_for`](Self::rate_limit_for), but the `d` starts when the next request
    /// of `account` arrives: tests then know the window without depending on when the client
    /// first calls.
    pub fn rate_limit_from_next_request(&self, account: &str, d: Duration, http_date: bool) {
        self.lock()
            .rate_limit_armed
            .insert(account.to_string(), (d, http_date));
    }

    /// When the current rate limit of `account` ends, if one is in force.
    pub fn rate_limited_until(&self, account: &str) -> Option<Instant> {
        self.lock()
            .rate_limited
            .get(account)
            .map(|(until, _)| *until)
    }

    /// The next `n` successful creates happen, but their responses are aborted after the
    /// headers: the client sees a transport error while the inbox exists.
    pub fn drop_next_create_responses(&self, n: usize) {
        self.lock().drop_creates = n;
    }

    /// The next `n` creates commit `delay` after they arrive, then answer (a client that
    /// gave up meanwhile never sees it). Address uniqueness is checked at the commit, as a
    /// database would: a late create of an address taken meanwhile fails.
    pub fn commit_next_creates_late(&self, n: usize, delay: Duration) {
        self.lock().late_commits = (n, delay);
    }

    /// How many late creates have reached their commit (whether it succeeded or was refused).
    pub fn late_commits_settled(&self) -> usize {
        self.lock().late_commits_settled
    }

    /// Successful answers on `route` are malformed in this way (`None` to stop).
    pub fn set_malformed(&self, route: Route, kind: Option<Malformed>) {
        let mut st = self.lock();
        match kind {
            Some(k) => st.malformed.insert(route, k),
            None => st.malformed.remove(&route),
        };
    }

    /// A server-side request-rate limit per account (every key of an account shares one token
    /// bucket), or none. Requests beyond it get 429 with `Retry-After`. Changing it refills
    /// every bucket.
    pub fn set_account_rate_limit(&self, limit: Option<RateLimit>) {
        let mut st = self.lock();
        st.account_limit = limit;
        st.buckets.clear();
    }

    /// Stop every injected fault (latency, errors, rate limits, dropped and malformed answers).
    pub fn clear_faults(&self) {
        let mut st = self.lock();
        st.account_limit = None;
        st.buckets.clear();
        st.latency = Duration::ZERO;
        st.error_rate = 0.0;
        st.fail_next.clear();
        st.rate_limited.clear();
        st.rate_limit_armed.clear();
        st.raw_retry_after.clear();
        st.drop_creates = 0;
        st.late_commits = (0, Duration::ZERO);
        st.malformed.clear();
    }

    // ----- observation -----

    /// API requests seen on `route` (counted on arrival, whatever their outcome).
    pub fn request_count(&self, route: Route) -> u64 {
        self.lock().counts.get(&route).copied().unwrap_or(0)
    }

    /// API requests seen on every route.
    pub fn total_requests(&self) -> u64 {
        self.lock().counts.values().sum()
    }

    /// The request log, in order of completion (the most recent 100,000–200,000).
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.lock().records.clone()
    }

    /// Zero the counters and the log.
    pub fn reset_counters(&self) {
        let mut st = self.lock();
        st.counts.clear();
        st.records.clear();
    }

    // ----- serving -----

    /// The HTTP API plus the `/_simulator/` control endpoints.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/inboxes", get(api::list).post(api::create))
            .route("/inboxes/{id}", get(api::get).delete(api::delete))
            .merge(control::router())
            .fallback(api::fallback)
            .layer(axum::middleware::map_response(
                |mut r: Response| async move {
                    r.headers_mut()
                        .insert(SIMULATOR_HEADER, HeaderValue::from_static("true"));
                    r
                },
            ))
            .with_state(self.clone())
    }

    /// Serve on a free loopback port until the handle is dropped.
    pub async fn spawn(&self) -> std::io::Result<SimulatorHandle> {
        self.spawn_on(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Serve on `addr` (port 0: a free one) until the handle is dropped; e.g. on a node's
    /// bridge address, where Pods reach it.
    pub async fn spawn_on(&self, addr: SocketAddr) -> std::io::Result<SimulatorHandle> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let app = self.router();
        let (tx, rx) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.await;
                })
                .await;
        });
        Ok(SimulatorHandle {
            url: format!("http://{addr}"),
            addr,
            shutdown: Some(tx),
        })
    }
}

/// `inbox-sim`: serve a simulator on `addr` until Ctrl-C or SIGTERM. Each key
/// gets its own account (`acct-1`, `acct-2`, ...), each with the demo domain `dom_example` →
/// `example.com`; `latency` is added to every API request.
/// `rate_limit`, if any, is the per-account request-rate limit
/// ([`Simulator::set_account_rate_limit`]).
pub async fn run_standalone(
    addr: SocketAddr,
    api_keys: Vec<String>,
    latency: Duration,
    rate_limit: Option<RateLimit>,
) -> std::io::Result<()> {
    let sim = Simulator::new();
    for (i, k) in api_keys.iter().enumerate() {
        let account = format!("acct-{}", i + 1);
        sim.add_account(&account, k.trim());
        sim.add_domain(&account, "dom_example", "example.com");
    }
    sim.set_latency(latency);
    sim.set_account_rate_limit(rate_limit);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    eprintln!("==================================================================");
    eprintln!(" {BANNER}");
    eprintln!(" In-memory stand-in for tests and demos; no mail is sent or received.");
    eprintln!(
        " API:      http://{local}  ({} account(s), one per API key; keys not shown)",
        api_keys.len()
    );
    eprintln!(" Domain:   dom_example -> example.com on every account");
    eprintln!(" Latency:  {} ms per API request", latency.as_millis());
    match rate_limit {
        Some(l) => eprintln!(
            " Limit:    {} requests/s per account (burst {}), then 429",
            l.per_second, l.burst
        ),
        None => eprintln!(" Limit:    none"),
    }
    eprintln!(" Control:  http://{local}/_simulator/ (no auth)");
    eprintln!("==================================================================");
    axum::serve(listener, sim.router())
        .with_graceful_shutdown(shutdown_signal())
        .await
}

/// Resolves on Ctrl-C (a drain for interactive runs). SIGTERM keeps its default action: the
/// simulator holds nothing that outlives the process, so there is nothing to drain.
pub async fn shutdown_signal() {
    let _ = tokio::signal::ctrl_c().await;
}
