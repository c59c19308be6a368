//! HTTP client for the AgentSend Inboxes API.
//!
//! - Idempotent calls (get, list, delete) are retried on transient failures with exponential
//!   backoff and jitter. `create` is never retried: the API has no idempotency key, so a lost
//!   response must be recovered by listing, which is the caller's job.
//! - Each account (API key) has an adaptive budget ([`Aimd`]): unlimited at first (only
//!   `max_concurrency` bounds it), cut on a 429, raised additively while requests succeed.
//! - A 429 also pauses the account for its `Retry-After`: a call that would wait longer than
//!   `max_queue_wait` fails fast with [`ApiError::RateLimited`] without sending anything; a
//!   shorter pause is waited out.
//! - `requests_per_second`, if set, is a hard ceiling over all accounts.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use backon::{ExponentialBuilder, Retryable};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use tokio::sync::Semaphore;

use super::error::{ApiError, MAX_RETRY_AFTER, parse_retry_after, truncate};
use super::limiter::{Aimd, AimdConfig};
use super::types::{ApiKey, CreateInbox, InboxPage, RemoteInbox, Snapshot};

/// Largest response body read; anything bigger is an invalid response.
pub const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;
/// Page size used by [`AgentSendClient::list_all`] (the API's maximum).
pub const PAGE_SIZE: u64 = 100;
/// Delay assumed when a 429 carries no usable `Retry-After`.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(5);

/// Called after every HTTP exchange: route label, status label (`"201"`, `"error"`), latency.
pub type RequestObserver = Arc<dyn Fn(&'static str, &str, Duration) + Send + Sync>;

/// Called after every answer with the account's key fingerprint ([`ApiKey::fingerprint`]),
/// its adaptive rate (`None`: unlimited) and whether the answer was a 429.
pub type AccountObserver = Arc<dyn Fn(&str, Option<f64>, bool) + Send + Sync>;

/// Called with the route of an answer whose `Retry-After` was present but not a delay
/// RFC 9110 allows (it was ignored).
pub type InvalidHeaderObserver = Arc<dyn Fn(&'static str) + Send + Sync>;

/// Asked right before a write (POST, DELETE) leaves the process: `false` refuses it.
pub type MayWrite = Arc<dyn Fn() -> bool + Send + Sync>;

/// What the client reports as it goes (metrics), and what it asks before writing; each is
/// optional.
#[derive(Clone, Default)]
pub struct Observers {
    /// Every exchange.
    pub requests: Option<RequestObserver>,
    /// Each account's adaptive rate and 429s.
    pub accounts: Option<AccountObserver>,
    /// Each invalid `Retry-After`.
    pub invalid_retry_after: Option<InvalidHeaderObserver>,
    /// Whether this instance may write now (leader election). Checked after every wait —
    /// the account's pace, a 429 pause, the concurrency bound — right before the request is
    /// sent, so a write never leaves a process that lost the lease while it waited.
    pub may_write: Option<MayWrite>,
}

/// Tuning of the client. Defaults are documented in the command-line reference
/// (docs/reference/cli.md).
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Per-request timeout (connect + response).
    pub timeout: Duration,
    /// Extra attempts for idempotent calls on transient failures.
    pub max_retries: usize,
    /// First backoff delay; doubles per attempt, with jitter.
    pub min_backoff: Duration,
    /// Backoff cap.
    pub max_backoff: Duration,
    /// Hard ceiling of requests per second across all accounts; `None`: only the adaptive
    /// per-account budget and `max_concurrency` bound it.
    pub requests_per_second: Option<u32>,
    /// Burst allowed above the ceiling.
    pub burst: u32,
    /// Requests in flight at once.
    pub max_concurrency: usize,
    /// Longest `Retry-After` honoured (never more than [`MAX_RETRY_AFTER`], the default).
    pub max_retry_after: Duration,
    /// A call for a paused account waits this long at most; beyond, it fails fast.
    pub max_queue_wait: Duration,
    /// The adaptive per-account budget (its ceiling is taken from `requests_per_second`).
    pub adaptive: AimdConfig,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            timeout: Duration::from_secs(10),
            max_retries: 3,
            min_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
            requests_per_second: None,
            burst: 100,
            max_concurrency: 32,
            max_retry_after: MAX_RETRY_AFTER,
            max_queue_wait: Duration::from_secs(1),
            adaptive: AimdConfig::default(),
        }
    }
}

/// A cheap-to-clone AgentSend client shared by all reconciles.
#[derive(Clone)]
pub struct AgentSendClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    base: String,
    opts: ClientOptions,
    ceiling: Option<DefaultDirectRateLimiter>,
    in_flight: Semaphore,
    accounts: Mutex<HashMap<ApiKey, Account>>,
    observer: Option<RequestObserver>,
    account_observer: Option<AccountObserver>,
    invalid_retry_after: Option<InvalidHeaderObserver>,
    may_write: Option<MayWrite>,
}

/// The budget of one account, with the fingerprint its metrics are labelled with.
struct Account {
    aimd: Aimd,
    fingerprint: String,
    traffic: Traffic,
    /// When the client last used it (idle ones are dropped: [`IDLE_ACCOUNT`]).
    used: Instant,
}

/// An account's budget unused this long (and not paused) is dropped when another is made: a
/// key that is gone (rotated, mistyped, an Inbox deleted) leaves no state behind for good.
const IDLE_ACCOUNT: Duration = Duration::from_secs(3600);

/// Above this many budgets, making another first drops the idle ones.
const ACCOUNTS_BEFORE_EVICTION: usize = 64;

/// What the client sent for one account since it first called it (for the account status's
/// request rate and 429s).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Traffic {
    /// When the client first called the account.
    pub since: Instant,
    /// Requests sent.
    pub requests: u64,
    /// Answers that were 429s.
    pub rate_limited: u64,
}

impl std::fmt::Debug for AgentSendClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentSendClient")
            .field("base", &self.inner.base)
            .field("opts", &self.inner.opts)
            .finish_non_exhaustive()
    }
}

/// One request: its metrics route label, method, path, query and JSON body.
struct Call<'a> {
    route: &'static str,
    method: Method,
    path: &'a str,
    query: &'a [(&'a str, String)],
    body: Option<Vec<u8>>,
}

impl<'a> Call<'a> {
    fn new(route: &'static str, method: Method, path: &'a str) -> Self {
        Call {
            route,
            method,
            path,
            query: &[],
            body: None,
        }
    }

    fn query(self, query: &'a [(&'a str, String)]) -> Self {
        Call { query, ..self }
    }

    fn body(self, body: Vec<u8>) -> Self {
        Call {
            body: Some(body),
            ..self
        }
    }
}

impl AgentSendClient {
    /// A client for the API at `base_url` (e.g. `https://api.agentsend.io`).
    pub fn new(base_url: &str, opts: ClientOptions) -> Result<Self, ApiError> {
        Self::with_observer(base_url, opts, None)
    }

    /// Like [`AgentSendClient::new`], reporting every exchange to `observer` (metrics).
    pub fn with_observer(
        base_url: &str,
        opts: ClientOptions,
        observer: Option<RequestObserver>,
    ) -> Result<Self, ApiError> {
        let observers = Observers {
            requests: observer,
            ..Observers::default()
        };
        Self::with_observers(base_url, opts, observers)
    }

    /// Like [`AgentSendClient::new`], reporting to every one of `observers`.
    pub fn with_observers(
        base_url: &str,
        opts: ClientOptions,
        observers: Observers,
    ) -> Result<Self, ApiError> {
        let base = base_url.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(ApiError::Config {
                message: format!("AgentSend URL must start with http:// or https://, got {base:?}"),
            });
        }
        crate::ensure_crypto_provider();
        let http = reqwest::Client::builder()
            .timeout(opts.timeout)
            .connect_timeout(opts.timeout.min(Duration::from_secs(5)))
            .user_agent(concat!("inbox-operator/", env!("CARGO_PKG_VERSION")))
            // Never follow redirects: reqwest would resend the custom `x-api-key` header to
            // whatever host a 3xx points at. A 3xx is reported as a rejection instead.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| ApiError::Config {
                message: format!("cannot build HTTP client: {e}"),
            })?;
        let burst = NonZeroU32::new(opts.burst.max(1)).unwrap_or(NonZeroU32::MIN);
        let ceiling = opts
            .requests_per_second
            .and_then(NonZeroU32::new)
            .map(|rate| RateLimiter::direct(Quota::per_second(rate).allow_burst(burst)));
        let in_flight = Semaphore::new(opts.max_concurrency.max(1));
        Ok(AgentSendClient {
            inner: Arc::new(Inner {
                http,
                base,
                opts,
                ceiling,
                in_flight,
                accounts: Mutex::new(HashMap::new()),
                observer: observers.requests,
                account_observer: observers.accounts,
                invalid_retry_after: observers.invalid_retry_after,
                may_write: observers.may_write,
            }),
        })
    }

    /// Base URL the client talks to.
    pub fn base_url(&self) -> &str {
        &self.inner.base
    }

    /// `POST /inboxes`. Sent once, never retried (no idempotency key): on a transport error
    /// the inbox may or may not exist, and the caller must recover by listing.
    pub async fn create_inbox(
        &self,
        key: &ApiKey,
        req: &CreateInbox,
    ) -> Result<RemoteInbox, ApiError> {
        let body = serde_json::to_vec(req).map_err(|e| ApiError::Config {
            message: format!("cannot encode request: {e}"),
        })?;
        self.send_json(
            key,
            Call::new("create", Method::POST, "/inboxes").body(body),
        )
        .await
    }

    /// `GET /inboxes/{id}`; [`ApiError::NotFound`] when absent (or another account's).
    pub async fn get_inbox(&self, key: &ApiKey, id: &str) -> Result<RemoteInbox, ApiError> {
        let path = format!("/inboxes/{}", encode_path_segment(id));
        self.retrying(|| self.send_json(key, Call::new("get", Method::GET, &path)))
            .await
    }

    /// `GET /inboxes?limit=&offset=`, newest first.
    pub async fn list_inboxes(
        &self,
        key: &ApiKey,
        limit: u64,
        offset: u64,
    ) -> Result<InboxPage, ApiError> {
        let query = [("limit", limit.to_string()), ("offset", offset.to_string())];
        self.retrying(|| async {
            let call = Call::new("list", Method::GET, "/inboxes").query(&query);
            let (bytes, date) = self.send(key, call).await?;
            let mut page: InboxPage = parse_body(&bytes)?;
            page.server_time = date;
            Ok(page)
        })
        .await
    }

    /// Every inbox of the account ([`list_all`](Self::list_all)), with the server's clock at
    /// the first page: what proves that an address was absent before a create was sent.
    pub async fn list_snapshot(&self, key: &ApiKey) -> Result<Snapshot, ApiError> {
        let mut seen = std::collections::HashSet::new();
        let mut inboxes = Vec::new();
        let mut server_time = None;
        let mut first = true;
        self.list_dated_pages(key, |page, date| {
            if std::mem::take(&mut first) {
                server_time = date;
            }
            for inbox in page {
                if seen.insert(inbox.id.clone()) {
                    inboxes.push(inbox);
                }
            }
        })
        .await?;
        Ok(Snapshot {
            inboxes,
            server_time,
        })
    }

    /// Every inbox of the account, in pages of 100 (ceil(N/100) requests).
    ///
    /// Pages shift while inboxes are created or deleted concurrently: duplicates are dropped,
    /// and an inbox missing from the result is not proof that it is gone (callers confirm with
    /// [`AgentSendClient::get_inbox`]).
    pub async fn list_all(&self, key: &ApiKey) -> Result<Vec<RemoteInbox>, ApiError> {
        self.list_filtered(key, |_| true).await
    }

    /// [`list_all`](Self::list_all), keeping only the inboxes `keep` accepts, page by page:
    /// what a scan holds is proportional to what it keeps, not to the account (which other
    /// software may fill with many more inboxes).
    pub async fn list_filtered(
        &self,
        key: &ApiKey,
        mut keep: impl FnMut(&RemoteInbox) -> bool,
    ) -> Result<Vec<RemoteInbox>, ApiError> {
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        self.list_pages(key, |page| {
            for inbox in page {
                if keep(&inbox) && seen.insert(inbox.id.clone()) {
                    out.push(inbox);
                }
            }
        })
        .await?;
        Ok(out)
    }

    /// Every inbox of the account, handed to `on_page` one page at a time as the pages
    /// arrive (nothing is held between pages). Pages shift while inboxes are created or
    /// deleted concurrently, so an inbox may come twice, or not at all (see
    /// [`list_all`](Self::list_all)). On an error, the pages before it were handed over.
    pub async fn list_pages(
        &self,
        key: &ApiKey,
        mut on_page: impl FnMut(Vec<RemoteInbox>),
    ) -> Result<(), ApiError> {
        self.list_dated_pages(key, |page, _| on_page(page)).await
    }

    /// [`list_pages`](Self::list_pages), with each page's server time.
    async fn list_dated_pages(
        &self,
        key: &ApiKey,
        mut on_page: impl FnMut(Vec<RemoteInbox>, Option<i64>),
    ) -> Result<(), ApiError> {
        let mut offset = 0u64;
        let mut pages = 0u64;
        loop {
            let page = self.list_inboxes(key, PAGE_SIZE, offset).await?;
            pages += 1;
            let n = page.data.len() as u64;
            let next = next_page(offset, n, page.total, page.limit, pages);
            on_page(page.data, page.server_time);
            match next {
                Some(o) => offset = o,
                None => return Ok(()),
            }
        }
    }

    /// `DELETE /inboxes/{id}`. Retried on transient failures; [`ApiError::NotFound`] means
    /// it is already gone (callers treat that as done).
    pub async fn delete_inbox(&self, key: &ApiKey, id: &str) -> Result<(), ApiError> {
        let path = format!("/inboxes/{}", encode_path_segment(id));
        self.retrying(|| async {
            self.send(key, Call::new("delete", Method::DELETE, &path))
                .await
                .map(|_| ())
        })
        .await
    }

    async fn retrying<T, F, Fut>(&self, f: F) -> Result<T, ApiError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, ApiError>>,
    {
        let o = &self.inner.opts;
        let backoff = ExponentialBuilder::default()
            .with_min_delay(o.min_backoff)
            .with_max_delay(o.max_backoff)
            .with_max_times(o.max_retries)
            .with_jitter();
        f.retry(backoff)
            .sleep(tokio::time::sleep)
            .when(ApiError::is_transient)
            .notify(|e, d| tracing::debug!(error = %e, delay_ms = d.as_millis() as u64, "retrying AgentSend call"))
            .await
    }

    async fn send_json<T: DeserializeOwned>(
        &self,
        key: &ApiKey,
        call: Call<'_>,
    ) -> Result<T, ApiError> {
        let (bytes, _) = self.send(key, call).await?;
        parse_body(&bytes)
    }

    /// One HTTP exchange under the account's budget, the concurrency bound and the ceiling.
    /// Returns the body and the server's clock (its `Date` header, Unix seconds).
    async fn send(&self, key: &ApiKey, call: Call<'_>) -> Result<(Vec<u8>, Option<i64>), ApiError> {
        let Call {
            route,
            method,
            path,
            query,
            body,
        } = call;
        self.admit(key).await?;
        let _permit = self
            .inner
            .in_flight
            .acquire()
            .await
            .map_err(|_| ApiError::Config {
                message: "client shut down".into(),
            })?;
        if let Some(ceiling) = &self.inner.ceiling {
            ceiling.until_ready().await;
        }
        // A 429 may have paused the account while this call waited for a permit.
        self.wait_out_pause(key).await?;

        let url = format!("{}{}", self.inner.base, path);
        if method != Method::GET
            && let Some(may_write) = &self.inner.may_write
            && !may_write()
        {
            return Err(ApiError::Transient {
                status: None,
                message: "not sent: this instance is not (or no longer) leading".into(),
            });
        }
        let key_header = key_header(key)?;
        let mut req = self
            .inner
            .http
            .request(method, &url)
            .header("x-api-key", key_header)
            .header("accept", "application/json");
        if !query.is_empty() {
            req = req.query(query);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        self.account(key, |a| a.traffic.requests += 1);
        let started = Instant::now();
        let result = self.exchange(req).await;
        let status_label = match &result {
            Ok((s, _, _, _)) => s.as_str().to_string(),
            Err(_) => "error".to_string(),
        };
        if let Some(obs) = &self.inner.observer {
            obs(route, &status_label, started.elapsed());
        }
        let (status, retry_after, bytes, date) = result?;
        let retry_after = self.delay(route, retry_after);
        if status.is_success() {
            self.answered(key, started, None);
            return Ok((bytes, date));
        }
        let retry_after = retry_after.map(|d| d.min(self.inner.opts.max_retry_after));
        let err =
            ApiError::from_status(status.as_u16(), retry_after, &bytes).redacted(key.expose());
        match &err {
            ApiError::RateLimited { retry_after, .. } => {
                self.answered(
                    key,
                    started,
                    Some(retry_after.unwrap_or(DEFAULT_RETRY_AFTER)),
                );
            }
            // A server error says nothing about the account's limit.
            ApiError::Transient { .. } => {}
            _ => self.answered(key, started, None),
        }
        Err(err)
    }

    /// The delay a `Retry-After` asks for; an invalid one is reported and ignored.
    fn delay(&self, route: &'static str, retry_after: RetryAfter) -> Option<Duration> {
        match retry_after {
            RetryAfter::Absent => None,
            RetryAfter::Delay(d) => Some(d),
            RetryAfter::Invalid => {
                tracing::debug!(
                    route,
                    "ignored an invalid Retry-After (RFC 9110: delay-seconds or an HTTP-date)"
                );
                if let Some(observe) = &self.inner.invalid_retry_after {
                    observe(route);
                }
                None
            }
        }
    }

    /// The account's budget, created on first use.
    fn account<T>(&self, key: &ApiKey, f: impl FnOnce(&mut Account) -> T) -> T {
        let mut accounts = self.inner.accounts.lock();
        let now = Instant::now();
        if accounts.len() >= ACCOUNTS_BEFORE_EVICTION && !accounts.contains_key(key) {
            evict_idle(&mut accounts, now);
        }
        let account = accounts.entry(key.clone()).or_insert_with(|| Account {
            aimd: Aimd::new(
                AimdConfig {
                    ceiling: self.inner.opts.requests_per_second.map(f64::from),
                    ..self.inner.opts.adaptive
                },
                Instant::now(),
            ),
            fingerprint: key.fingerprint(),
            traffic: Traffic {
                since: Instant::now(),
                requests: 0,
                rate_limited: 0,
            },
            used: now,
        });
        account.used = now;
        f(account)
    }

    /// Wait for the account's budget: its pace, and a pause no longer than `max_queue_wait`
    /// (a longer one fails fast, without sending).
    async fn admit(&self, key: &ApiKey) -> Result<(), ApiError> {
        for _ in 0..3 {
            let wait = self.account(key, |a| {
                let now = Instant::now();
                match a.aimd.paused_for(now) {
                    Some(left) if left > self.inner.opts.max_queue_wait => Err(paused(left)),
                    _ => Ok(a.aimd.reserve(now)),
                }
            })?;
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            if self.rate_limited_for(key).is_none() {
                return Ok(());
            }
        }
        match self.rate_limited_for(key) {
            Some(left) => Err(paused(left)),
            None => Ok(()),
        }
    }

    /// Wait out a pause of the account no longer than `max_queue_wait`; fail on a longer one.
    async fn wait_out_pause(&self, key: &ApiKey) -> Result<(), ApiError> {
        match self.rate_limited_for(key) {
            None => Ok(()),
            Some(left) if left > self.inner.opts.max_queue_wait => Err(paused(left)),
            Some(left) => {
                tokio::time::sleep(left).await;
                Ok(())
            }
        }
    }

    /// Feed an answer to a request sent at `sent_at` to the account's budget: a 429 (with the
    /// pause it asks for) or an answer that shows the account is within its limit.
    fn answered(&self, key: &ApiKey, sent_at: Instant, throttled: Option<Duration>) {
        let (fingerprint, rate) = self.account(key, |a| {
            match throttled {
                Some(pause) => {
                    let pause = pause
                        .min(self.inner.opts.max_retry_after)
                        .min(MAX_RETRY_AFTER);
                    a.aimd.on_throttled(sent_at, Instant::now(), pause);
                    a.traffic.rate_limited += 1;
                }
                None => a.aimd.on_success(),
            }
            (a.fingerprint.clone(), a.aimd.rate())
        });
        if let Some(obs) = &self.inner.account_observer {
            obs(&fingerprint, rate, throttled.is_some());
        }
    }

    async fn exchange(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<(StatusCode, RetryAfter, Vec<u8>, Option<i64>), ApiError> {
        let mut resp = req.send().await.map_err(transport_error)?;
        let status = resp.status();
        let date = resp
            .headers()
            .get("date")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| httpdate::parse_http_date(v).ok())
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .and_then(|d| i64::try_from(d.as_secs()).ok());
        let retry_after = match resp.headers().get("retry-after") {
            None => RetryAfter::Absent,
            Some(v) => v
                .to_str()
                .ok()
                .and_then(|v| parse_retry_after(v, SystemTime::now()))
                .map_or(RetryAfter::Invalid, RetryAfter::Delay),
        };
        let mut bytes = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(transport_error)? {
            if bytes.len() + chunk.len() > MAX_BODY_BYTES {
                return Err(ApiError::InvalidResponse {
                    message: format!("response body larger than {MAX_BODY_BYTES} bytes"),
                });
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok((status, retry_after, bytes, date))
    }

    /// How long calls for this account are held back by a 429, if at all.
    pub fn rate_limited_for(&self, key: &ApiKey) -> Option<Duration> {
        self.account(key, |a| a.aimd.paused_for(Instant::now()))
    }

    /// What the client sent for the account so far; `None` if it never called it.
    pub fn traffic(&self, key: &ApiKey) -> Option<Traffic> {
        let accounts = self.inner.accounts.lock();
        accounts.get(key).map(|a| a.traffic)
    }

    /// The account's adaptive rate in requests/s (`None`: unlimited so far).
    pub fn account_rate(&self, key: &ApiKey) -> Option<f64> {
        self.account(key, |a| a.aimd.rate())
    }
}

/// The `x-api-key` header, marked sensitive: never printed by the HTTP stack's Debug output.
fn key_header(key: &ApiKey) -> Result<reqwest::header::HeaderValue, ApiError> {
    let mut value =
        reqwest::header::HeaderValue::from_str(key.expose()).map_err(|_| ApiError::Config {
            message:
                "the API key contains characters an HTTP header cannot carry; check the key Secret"
                    .into(),
        })?;
    value.set_sensitive(true);
    Ok(value)
}

/// Drop the budgets unused for [`IDLE_ACCOUNT`] that are not paused by a 429.
fn evict_idle(accounts: &mut HashMap<ApiKey, Account>, now: Instant) {
    accounts.retain(|_, a| {
        now.saturating_duration_since(a.used) < IDLE_ACCOUNT || a.aimd.paused_for(now).is_some()
    });
}

/// An answer's `Retry-After` header.
enum RetryAfter {
    /// None was sent.
    Absent,
    /// A delay RFC 9110 allows (capped).
    Delay(Duration),
    /// Present, but not a delay: ignored, and counted.
    Invalid,
}

/// A JSON body, or why it is unreadable.
fn parse_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| ApiError::InvalidResponse {
        message: truncate(&format!("{e}"), 200),
    })
}

/// The error of a call held back by a pause of `left`.
fn paused(left: Duration) -> ApiError {
    ApiError::RateLimited {
        retry_after: Some(left),
        message: "waiting for Retry-After before calling this account again".into(),
    }
}

/// Hard bound on the pages of one [`AgentSendClient::list_all`] scan, so a server whose `total`
/// lies or keeps growing cannot keep the scan paging.
pub const MAX_PAGES: u64 = 100_000;

/// After page number `pages` (from 1) of a scan, which held `n` inboxes from `offset` and
/// claimed `total` and `limit`: the offset of the next page, or `None` when the scan is over.
/// Every number may come from a hostile server: nothing overflows, and a scan never goes past
/// [`MAX_PAGES`] pages.
pub fn next_page(
    offset: u64,
    n: u64,
    total: Option<u64>,
    limit: Option<u64>,
    pages: u64,
) -> Option<u64> {
    // The server may cap pages below what was asked: a short page ends the scan only when it
    // is shorter than the page size the server says it used.
    let page_size = limit.filter(|l| *l > 0).unwrap_or(PAGE_SIZE).min(PAGE_SIZE);
    let next = offset.saturating_add(n);
    let beyond_total = total.is_some_and(|t| next >= t);
    let bound = total
        .map_or(MAX_PAGES, |t| t.div_ceil(page_size).saturating_add(2))
        .min(MAX_PAGES);
    let over = n == 0 || n < page_size || beyond_total || pages >= bound || next == u64::MAX;
    (!over).then_some(next)
}

/// Transport failures: timeouts, resets, refused connections. reqwest's messages carry the
/// URL but never headers, so the key cannot leak through them.
fn transport_error(e: reqwest::Error) -> ApiError {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "response interrupted"
    } else {
        "request failed"
    };
    let mut detail = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        detail.push_str(": ");
        detail.push_str(&s.to_string());
        src = s.source();
    }
    ApiError::Transient {
        status: None,
        message: truncate(&format!("{kind}: {detail}"), 300),
    }
}

/// Percent-encode an opaque ID for use as one path segment.
fn encode_path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Budgets of keys no longer used go (a tenant cycling keys leaves no state for good);
    /// one in use, or paused by a 429, stays.
    #[test]
    fn idle_account_budgets_are_dropped() {
        let t0 = Instant::now();
        let later = t0 + IDLE_ACCOUNT + Duration::from_secs(1);
        let budget = |used: Instant| Account {
            aimd: Aimd::new(AimdConfig::default(), t0),
            fingerprint: String::new(),
            traffic: Traffic {
                since: t0,
                requests: 0,
                rate_limited: 0,
            },
            used,
        };
        let key = |k: &str| ApiKey::new(k).unwrap();
        let mut accounts = HashMap::from([
            (key("idle"), budget(t0)),
            (key("recent"), budget(later - Duration::from_secs(5))),
            (key("paused"), budget(t0)),
        ]);
        if let Some(p) = accounts.get_mut(&key("paused")) {
            p.aimd.on_throttled(t0, t0, IDLE_ACCOUNT * 2);
        }
        evict_idle(&mut accounts, later);
        let mut kept: Vec<&str> = accounts.keys().map(ApiKey::expose).collect();
        kept.sort_unstable();
        assert_eq!(kept, ["paused", "recent"]);
    }

    #[test]
    fn ids_are_encoded_not_parsed() {
        assert_eq!(encode_path_segment("inb_7x9k"), "inb_7x9k");
        assert_eq!(encode_path_segment("a/b c"), "a%2Fb%20c");
        assert_eq!(
            encode_path_segment("3f1c0a2e-8b1d-4c5e-9f00-123456789abc"),
            "3f1c0a2e-8b1d-4c5e-9f00-123456789abc"
        );
    }

    #[test]
    fn rejects_bad_base_url() {
        let e = AgentSendClient::new("api.agentsend.io", ClientOptions::default()).unwrap_err();
        assert_eq!(e.reason(), "config");
    }

    #[tokio::test]
    async fn gate_blocks_without_sending() {
        // Port 9 (discard) on loopback: nothing is sent because the gate answers first.
        let c = AgentSendClient::new("http://127.0.0.1:9", ClientOptions::default()).unwrap();
        let k = ApiKey::new("k").unwrap();
        c.answered(&k, Instant::now(), Some(Duration::from_secs(30)));
        let e = c.get_inbox(&k, "x").await.unwrap_err();
        match e {
            ApiError::RateLimited {
                retry_after: Some(d),
                ..
            } => assert!(d > Duration::from_secs(25)),
            other => panic!("unexpected {other:?}"),
        }
        assert!(c.rate_limited_for(&ApiKey::new("other").unwrap()).is_none());
    }
}

#[cfg(test)]
mod paging_tests {
    use super::*;
    use axum::extract::Query;
    use std::collections::HashMap;

    /// A server that caps pages at 50 and never says `total`.
    async fn capped_server(n: usize) -> String {
        let app = axum::Router::new().route(
            "/inboxes",
            axum::routing::get(move |Query(q): Query<HashMap<String, String>>| async move {
                let offset: usize = q.get("offset").and_then(|v| v.parse().ok()).unwrap_or(0);
                let data: Vec<serde_json::Value> = (offset..n.min(offset + 50))
                    .map(|i| serde_json::json!({"id": format!("i{i}"), "address": format!("a{i}@x.io"), "status": "active"}))
                    .collect();
                axum::Json(serde_json::json!({"data": data, "limit": 50, "offset": offset}))
            }),
        );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(l, app).await.ok() });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn list_all_follows_server_page_size_without_total() {
        let url = capped_server(1234).await;
        let c = AgentSendClient::new(&url, ClientOptions::default()).unwrap();
        let all = c.list_all(&ApiKey::new("k").unwrap()).await.unwrap();
        assert_eq!(all.len(), 1234);
    }

    /// A filtered listing still reads every page, and holds only what it keeps.
    #[tokio::test]
    async fn list_filtered_reads_every_page_and_keeps_what_it_is_asked_to() {
        let url = capped_server(1234).await;
        let c = AgentSendClient::new(&url, ClientOptions::default()).unwrap();
        let mut offered = 0;
        let kept = c
            .list_filtered(&ApiKey::new("k").unwrap(), |r| {
                offered += 1;
                ["i0", "i617", "i1233"].contains(&r.id.as_str())
            })
            .await
            .unwrap();
        assert_eq!(offered, 1234);
        let ids: Vec<&str> = kept.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["i0", "i617", "i1233"]);
    }
}
