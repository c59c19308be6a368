//! An in-memory **simulator** of the AgentSend Inboxes API — **not the real service**.
//!
//! It implements the documented API (auth, create/list/get/delete, pagination newest first,
//! 400/401/404/409/422 answers) so that tests and the local demo run without an AgentSend
//! account, plus control hooks the tests need: counters and status of an inbox, out-of-band
//! deletion, latency, error rates, 429 with `Retry-After`, "create then drop the response",
//! malformed bodies, and per-route request counts. Every response carries the header
//! `x-agentsend-simulator: true`.

mod control;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use rand::Rng;
use serde_json::{Value, json};

use crate::agentsend::{CreateInbox, InboxState, RemoteInbox};

/// The shared domain of random addresses.
pub const SHARED_DOMAIN: &str = "agentsend.io";
/// Most request records kept for [`Simulator::requests`].
const MAX_RECORDS: usize = 200_000;

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
    /// Lower-case name used in stats.
    pub fn as_str(self) -> &'static str {
        match self {
            Route::Create => "create",
            Route::Get => "get",
            Route::List => "list",
            Route::Delete => "delete",
        }
    }
}

/// Ways a successful answer can be malformed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Malformed {
    /// An HTML page instead of JSON.
    NotJson,
    /// Valid JSON cut in half.
    Truncated,
    /// Extra, undocumented fields (still valid per the API doc: must be accepted).
    UnexpectedFields,
    /// A body larger than 8 MiB.
    Huge,
}

/// One API request as the simulator saw it.
#[derive(Clone, Debug)]
pub struct RequestRecord {
    /// When it arrived.
    pub at: Instant,
    /// Which route.
    pub route: Route,
    /// The account of its key, if the key is known.
    pub account: Option<String>,
    /// The status answered.
    pub status: u16,
}

#[derive(Clone)]
struct KeyEntry {
    account: String,
    revoked: bool,
}

struct Stored {
    account: String,
    inbox: RemoteInbox,
}

#[derive(Default)]
struct SimState {
    keys: HashMap<String, KeyEntry>,
    domains: HashMap<(String, String), String>,
    /// Insertion sequence → inbox (newest = largest).
    inboxes: BTreeMap<u64, Stored>,
    by_id: HashMap<String, u64>,
    addresses: HashSet<String>,
    next_seq: u64,
    default_limit: i64,
    latency: Duration,
    error_rate: f64,
    error_status: u16,
    fail_next: HashMap<Route, (usize, u16)>,
    rate_limited: HashMap<String, (Instant, bool)>,
    drop_creates: usize,
    malformed: HashMap<Route, Malformed>,
    counts: HashMap<Route, u64>,
    records: Vec<RequestRecord>,
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
        f.write_str("Simulator")
    }
}

/// A running simulator server; dropping it stops the server.
pub struct SimulatorHandle {
    url: String,
    task: tokio::task::JoinHandle<()>,
}

impl SimulatorHandle {
    /// Base URL, e.g. `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        self.url.clone()
    }
}

impl Drop for SimulatorHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn random_string(n: usize) -> String {
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..n)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
        .collect()
}

fn now_rfc3339_millis() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

fn valid_local_part(local: &str) -> bool {
    !local.is_empty()
        && local.len() <= 64
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
        && local
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '-'))
}

/// A refusal, as the API would send it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimError {
    /// HTTP status.
    pub status: u16,
    /// Short error code.
    pub error: &'static str,
    /// Human message.
    pub message: String,
}

impl std::fmt::Display for SimError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status, self.error, self.message)
    }
}

fn err(status: u16, error: &'static str, message: impl Into<String>) -> SimError {
    SimError {
        status,
        error,
        message: message.into(),
    }
}

impl Simulator {
    /// An empty simulator (no accounts yet).
    pub fn new() -> Self {
        Simulator {
            state: Arc::new(Mutex::new(SimState {
                default_limit: 100,
                error_status: 503,
                ..SimState::default()
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, SimState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Create `account` if needed and accept `api_key` for it.
    pub fn add_account(&self, account: &str, api_key: &str) {
        self.lock().keys.insert(
            api_key.to_string(),
            KeyEntry {
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

    /// Register a custom domain (`domain_id` → `domain_name`) on an account.
    pub fn add_domain(&self, account: &str, domain_id: &str, domain_name: &str) {
        self.lock().domains.insert(
            (account.to_string(), domain_id.to_string()),
            domain_name.to_lowercase(),
        );
    }

    /// Daily send limit of new inboxes (default 100).
    pub fn set_default_daily_limit(&self, limit: i64) {
        self.lock().default_limit = limit;
    }

    /// Create an inbox out of band, with the same validation as `POST /inboxes`.
    pub fn insert_inbox(&self, account: &str, req: CreateInbox) -> Result<RemoteInbox, String> {
        self.create_in(account, &req).map_err(|e| e.to_string())
    }

    fn create_in(&self, account: &str, req: &CreateInbox) -> Result<RemoteInbox, SimError> {
        let mut st = self.lock();
        let domain = match &req.domain_id {
            Some(d) => st
                .domains
                .get(&(account.to_string(), d.clone()))
                .cloned()
                .ok_or_else(|| {
                    err(
                        422,
                        "unknown_domain",
                        format!("domain {d:?} is not registered on this account"),
                    )
                })?,
            None => SHARED_DOMAIN.to_string(),
        };
        let address = match &req.address {
            None => loop {
                let a = format!("{}@{}", random_string(10), domain);
                if !st.addresses.contains(&a) {
                    break a;
                }
            },
            Some(a) => {
                let a = a.trim().to_lowercase();
                if a.len() > 254 || a.chars().any(char::is_whitespace) {
                    return Err(err(
                        400,
                        "invalid_address",
                        format!("{a:?} is not a valid address"),
                    ));
                }
                let (local, dom) = match a.split_once('@') {
                    Some((l, d)) => (l.to_string(), d.to_string()),
                    None => (a.clone(), domain.clone()),
                };
                if dom.contains('@') || !valid_local_part(&local) {
                    return Err(err(
                        400,
                        "invalid_address",
                        format!("{a:?} is not a valid address"),
                    ));
                }
                if dom != domain {
                    return Err(err(
                        400,
                        "invalid_address",
                        format!("address domain {dom:?} does not match {domain:?}"),
                    ));
                }
                format!("{local}@{dom}")
            }
        };
        if st.addresses.contains(&address) {
            return Err(err(
                409,
                "address_taken",
                format!("address {address} is already in use"),
            ));
        }
        let inbox = RemoteInbox {
            id: format!("inb_{}", random_string(20)),
            address: address.clone(),
            display_name: req.display_name.clone(),
            domain_id: req.domain_id.clone(),
            status: InboxState::Active,
            daily_send_limit: Some(st.default_limit),
            sends_today: Some(0),
            total_sent: Some(0),
            bounce_count: Some(0),
            complaint_count: Some(0),
            created_at: Some(now_rfc3339_millis()),
        };
        st.next_seq += 1;
        let seq = st.next_seq;
        st.addresses.insert(address);
        st.by_id.insert(inbox.id.clone(), seq);
        st.inboxes.insert(
            seq,
            Stored {
                account: account.to_string(),
                inbox: inbox.clone(),
            },
        );
        Ok(inbox)
    }

    /// One inbox by ID, whatever its account.
    pub fn inbox(&self, id: &str) -> Option<RemoteInbox> {
        let st = self.lock();
        let seq = st.by_id.get(id)?;
        st.inboxes.get(seq).map(|s| s.inbox.clone())
    }

    /// An account's inboxes, newest first.
    pub fn inboxes(&self, account: &str) -> Vec<RemoteInbox> {
        self.lock()
            .inboxes
            .values()
            .rev()
            .filter(|s| s.account == account)
            .map(|s| s.inbox.clone())
            .collect()
    }

    /// Number of inboxes in all accounts.
    pub fn inbox_count(&self) -> usize {
        self.lock().inboxes.len()
    }

    /// Delete an inbox out of band (as if deleted in the AgentSend console).
    pub fn delete_out_of_band(&self, id: &str) -> bool {
        let mut st = self.lock();
        Self::remove(&mut st, id)
    }

    fn remove(st: &mut SimState, id: &str) -> bool {
        let Some(seq) = st.by_id.remove(id) else {
            return false;
        };
        if let Some(s) = st.inboxes.remove(&seq) {
            st.addresses.remove(&s.inbox.address);
        }
        true
    }

    /// Change an inbox (counters, status) as AgentSend would over time.
    pub fn update_inbox(&self, id: &str, f: impl FnOnce(&mut RemoteInbox)) -> bool {
        let mut st = self.lock();
        let Some(seq) = st.by_id.get(id).copied() else {
            return false;
        };
        match st.inboxes.get_mut(&seq) {
            Some(s) => {
                f(&mut s.inbox);
                true
            }
            None => false,
        }
    }

    /// Latency added to every API request.
    pub fn set_latency(&self, d: Duration) {
        self.lock().latency = d;
    }

    /// A random fraction of API requests answer `status` before doing anything.
    pub fn set_error_rate(&self, rate: f64, status: u16) {
        let mut st = self.lock();
        st.error_rate = rate.clamp(0.0, 1.0);
        st.error_status = status;
    }

    /// The next `n` requests on `route` answer `status` before doing anything.
    pub fn fail_next(&self, route: Route, n: usize, status: u16) {
        self.lock().fail_next.insert(route, (n, status));
    }

    /// Every request of `account` gets 429 with `Retry-After` (seconds, or an HTTP date when
    /// `http_date`) until `d` has elapsed.
    pub fn rate_limit_for(&self, account: &str, d: Duration, http_date: bool) {
        self.lock()
            .rate_limited
            .insert(account.to_string(), (Instant::now() + d, http_date));
    }

    /// The next `n` creates happen, but their responses are aborted mid-way.
    pub fn drop_next_create_responses(&self, n: usize) {
        self.lock().drop_creates = n;
    }

    /// Successful answers on `route` are malformed in this way (`None` to stop).
    pub fn set_malformed(&self, route: Route, kind: Option<Malformed>) {
        let mut st = self.lock();
        match kind {
            Some(k) => st.malformed.insert(route, k),
            None => st.malformed.remove(&route),
        };
    }

    /// Stop every injected fault.
    pub fn clear_faults(&self) {
        let mut st = self.lock();
        st.latency = Duration::ZERO;
        st.error_rate = 0.0;
        st.fail_next.clear();
        st.rate_limited.clear();
        st.drop_creates = 0;
        st.malformed.clear();
    }

    /// Requests seen on `route`.
    pub fn request_count(&self, route: Route) -> u64 {
        self.lock().counts.get(&route).copied().unwrap_or(0)
    }

    /// Requests seen on every route.
    pub fn total_requests(&self) -> u64 {
        self.lock().counts.values().sum()
    }

    /// The request log (most recent 200,000).
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.lock().records.clone()
    }

    /// Zero the counters and the log.
    pub fn reset_counters(&self) {
        let mut st = self.lock();
        st.counts.clear();
        st.records.clear();
    }

    fn record(&self, route: Route, account: Option<String>, status: u16, at: Instant) {
        let mut st = self.lock();
        *st.counts.entry(route).or_default() += 1;
        if st.records.len() >= MAX_RECORDS {
            st.records.drain(..MAX_RECORDS / 2);
        }
        st.records.push(RequestRecord {
            at,
            route,
            account,
            status,
        });
    }

    /// The HTTP API plus the `/_simulator/` control endpoints.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/inboxes", get(list_handler).post(create_handler))
            .route("/inboxes/{id}", get(get_handler).delete(delete_handler))
            .merge(control::router())
            .layer(axum::middleware::map_response(
                |mut r: Response| async move {
                    r.headers_mut()
                        .insert("x-agentsend-simulator", HeaderValue::from_static("true"));
                    r
                },
            ))
            .with_state(self.clone())
    }

    /// Serve on a free loopback port until the handle is dropped.
    pub async fn spawn(&self) -> std::io::Result<SimulatorHandle> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let app = self.router();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(SimulatorHandle {
            url: format!("http://{addr}"),
            task,
        })
    }

    /// The common front of every API request: latency, rate limit, injected errors, auth.
    /// Returns the account, or the response to send instead.
    async fn front(
        &self,
        route: Route,
        headers: &HeaderMap,
    ) -> Result<String, (Option<String>, Response)> {
        let key = headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let (latency, entry) = {
            let st = self.lock();
            (
                st.latency,
                key.as_ref().and_then(|k| st.keys.get(k).cloned()),
            )
        };
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        let account = entry.as_ref().map(|e| e.account.clone());
        let mut st = self.lock();
        if let Some(a) = &account
            && let Some((until, http_date)) = st.rate_limited.get(a).copied()
        {
            let now = Instant::now();
            if until > now {
                let left = until - now;
                let value = if http_date {
                    httpdate::fmt_http_date(SystemTime::now() + left + Duration::from_millis(999))
                } else {
                    left.as_secs_f64().ceil().max(1.0).to_string()
                };
                let mut resp = error_response(429, "rate_limited", "too many requests");
                if let Ok(v) = HeaderValue::from_str(&value) {
                    resp.headers_mut().insert("retry-after", v);
                }
                return Err((account, resp));
            }
            st.rate_limited.remove(a);
        }
        if let Some((n, status)) = st.fail_next.get_mut(&route)
            && *n > 0
        {
            *n -= 1;
            let s = *status;
            return Err((
                account,
                error_response(s, "injected", "injected failure (simulator)"),
            ));
        }
        if st.error_rate > 0.0 && rand::rng().random_bool(st.error_rate) {
            let s = st.error_status;
            return Err((
                account,
                error_response(s, "injected", "injected failure (simulator)"),
            ));
        }
        match entry {
            Some(e) if !e.revoked => Ok(e.account),
            _ => Err((
                account,
                error_response(401, "unauthorized", "missing or invalid API key"),
            )),
        }
    }

    fn malformed(&self, route: Route) -> Option<Malformed> {
        self.lock().malformed.get(&route).copied()
    }
}

fn error_response(status: u16, error: &str, message: &str) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        code,
        axum::Json(json!({"error": error, "message": message})),
    )
        .into_response()
}

fn sim_error_response(e: &SimError) -> Response {
    error_response(e.status, e.error, &e.message)
}

/// A success body, malformed if asked to.
fn success(status: StatusCode, body: Value, malformed: Option<Malformed>) -> Response {
    match malformed {
        None => (status, axum::Json(body)).into_response(),
        Some(Malformed::NotJson) => (
            status,
            [("content-type", "text/html")],
            "<html><body>Bad gateway (simulated)</body></html>",
        )
            .into_response(),
        Some(Malformed::Truncated) => {
            let text = body.to_string();
            let half = text.len() / 2;
            (
                status,
                [("content-type", "application/json")],
                text[..half].to_string(),
            )
                .into_response()
        }
        Some(Malformed::UnexpectedFields) => {
            let mut body = body;
            add_extra_fields(&mut body);
            (status, axum::Json(body)).into_response()
        }
        Some(Malformed::Huge) => {
            let pad = "x".repeat(9 * 1024 * 1024);
            let mut body = body;
            if let Value::Object(m) = &mut body {
                m.insert("padding".into(), Value::String(pad));
            }
            (status, axum::Json(body)).into_response()
        }
    }
}

fn add_extra_fields(v: &mut Value) {
    if let Value::Object(m) = v {
        m.insert(
            "unexpected".into(),
            json!({"nested": [1, 2, 3], "flag": true}),
        );
        if let Some(Value::Array(items)) = m.get_mut("data") {
            for i in items {
                add_extra_fields(i);
            }
        }
    }
}

fn to_json(i: &RemoteInbox) -> Value {
    serde_json::to_value(i).unwrap_or(Value::Null)
}

async fn create_handler(
    State(sim): State<Simulator>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let at = Instant::now();
    let account = match sim.front(Route::Create, &headers).await {
        Ok(a) => a,
        Err((acct, resp)) => {
            sim.record(Route::Create, acct, resp.status().as_u16(), at);
            return resp;
        }
    };
    let req: CreateInbox = if body.iter().all(u8::is_ascii_whitespace) {
        CreateInbox::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => {
                sim.record(Route::Create, Some(account), 400, at);
                return error_response(
                    400,
                    "invalid_json",
                    &format!("request body is not valid JSON: {e}"),
                );
            }
        }
    };
    let resp = match sim.create_in(&account, &req) {
        Ok(inbox) => {
            let drop_it = {
                let mut st = sim.lock();
                if st.drop_creates > 0 {
                    st.drop_creates -= 1;
                    true
                } else {
                    false
                }
            };
            if drop_it {
                // Headers go out, then the body fails: the client never learns the result.
                let stream = futures::stream::once(async {
                    Err::<axum::body::Bytes, std::io::Error>(std::io::Error::other(
                        "response dropped by the simulator",
                    ))
                });
                sim.record(Route::Create, Some(account), 201, at);
                return Response::builder()
                    .status(StatusCode::CREATED)
                    .header("content-type", "application/json")
                    .body(Body::from_stream(stream))
                    .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
            }
            success(
                StatusCode::CREATED,
                to_json(&inbox),
                sim.malformed(Route::Create),
            )
        }
        Err(e) => sim_error_response(&e),
    };
    sim.record(Route::Create, Some(account), resp.status().as_u16(), at);
    resp
}

async fn list_handler(
    State(sim): State<Simulator>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let at = Instant::now();
    let account = match sim.front(Route::List, &headers).await {
        Ok(a) => a,
        Err((acct, resp)) => {
            sim.record(Route::List, acct, resp.status().as_u16(), at);
            return resp;
        }
    };
    // `None`: present but not a non-negative integer (answered with 400).
    let parse = |k: &str, default: u64| -> Option<u64> {
        match q.get(k) {
            None => Some(default),
            Some(v) => v.parse::<u64>().ok(),
        }
    };
    let resp = match (parse("limit", 20), parse("offset", 0)) {
        (Some(limit), Some(offset)) => {
            let limit = limit.clamp(1, 100);
            let st = sim.lock();
            let mine = st.inboxes.values().rev().filter(|s| s.account == account);
            let total = st.inboxes.values().filter(|s| s.account == account).count();
            let data: Vec<Value> = mine
                .skip(offset as usize)
                .take(limit as usize)
                .map(|s| to_json(&s.inbox))
                .collect();
            drop(st);
            let body = json!({"data": data, "total": total, "limit": limit, "offset": offset});
            success(StatusCode::OK, body, sim.malformed(Route::List))
        }
        _ => error_response(
            400,
            "invalid_parameter",
            "limit and offset must be non-negative integers",
        ),
    };
    sim.record(Route::List, Some(account), resp.status().as_u16(), at);
    resp
}

async fn get_handler(
    State(sim): State<Simulator>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let at = Instant::now();
    let account = match sim.front(Route::Get, &headers).await {
        Ok(a) => a,
        Err((acct, resp)) => {
            sim.record(Route::Get, acct, resp.status().as_u16(), at);
            return resp;
        }
    };
    let found = {
        let st = sim.lock();
        st.by_id
            .get(&id)
            .and_then(|seq| st.inboxes.get(seq))
            .filter(|s| s.account == account)
            .map(|s| s.inbox.clone())
    };
    let resp = match found {
        Some(i) => success(StatusCode::OK, to_json(&i), sim.malformed(Route::Get)),
        None => error_response(404, "not_found", "inbox not found"),
    };
    sim.record(Route::Get, Some(account), resp.status().as_u16(), at);
    resp
}

async fn delete_handler(
    State(sim): State<Simulator>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let at = Instant::now();
    let account = match sim.front(Route::Delete, &headers).await {
        Ok(a) => a,
        Err((acct, resp)) => {
            sim.record(Route::Delete, acct, resp.status().as_u16(), at);
            return resp;
        }
    };
    let deleted = {
        let mut st = sim.lock();
        let owned = st
            .by_id
            .get(&id)
            .and_then(|seq| st.inboxes.get(seq))
            .is_some_and(|s| s.account == account);
        owned && Simulator::remove(&mut st, &id)
    };
    let resp = if deleted {
        StatusCode::NO_CONTENT.into_response()
    } else {
        error_response(404, "not_found", "inbox not found")
    };
    sim.record(Route::Delete, Some(account), resp.status().as_u16(), at);
    resp
}

/// `inbox-operator simulator`: serve a simulator on `addr` until Ctrl-C or SIGTERM. Each key
/// gets its own account (`acct-1`, ...), each with the demo domain `dom_example` →
/// `example.com`.
pub async fn run_standalone(
    addr: SocketAddr,
    api_keys: Vec<String>,
    latency: Duration,
) -> std::io::Result<()> {
    eprintln!("==============================================================");
    eprintln!(" AgentSend SIMULATOR — NOT the real service (in-memory, local)");
    eprintln!(" listening on http://{addr}; control endpoints under /_simulator/");
    eprintln!("==============================================================");
    let sim = Simulator::new();
    for (i, k) in api_keys.iter().enumerate() {
        let account = format!("acct-{}", i + 1);
        sim.add_account(&account, k);
        sim.add_domain(&account, "dom_example", "example.com");
    }
    sim.set_latency(latency);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, sim.router())
        .with_graceful_shutdown(crate::operator::shutdown_signal())
        .await
}
