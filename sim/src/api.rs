//! The simulated AgentSend HTTP API: `/inboxes` routes, with the fault front every request
//! goes through (count → latency → rate limit → injected errors → auth → handler).

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use axum::body::{Body, Bytes};
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use rand::Rng;
use serde_json::{Value, json};

use super::state::{SimError, SimState};
use super::{Malformed, RequestRecord, Route, Simulator};
use crate::bucket::{Bucket, retry_after_seconds};
use crate::types::{CreateInbox, RemoteInbox};

/// Default and largest page size of `GET /inboxes`.
const DEFAULT_LIMIT: u64 = 20;
const MAX_LIMIT: u64 = 100;
/// Size of the padding of a [`Malformed::Huge`] body (above the client's 8 MiB cap).
const HUGE_PADDING: usize = 9 * 1024 * 1024;
/// Status logged for a request whose client went away before the answer.
const CLIENT_GONE: u16 = 499;

/// Counts a request on arrival and logs it when dropped, with the status answered (or 499
/// when the client went away first and the handler was cancelled).
struct Tracker {
    sim: Simulator,
    route: Route,
    at: Instant,
    account: Option<String>,
    status: u16,
}

impl Tracker {
    fn start(sim: &Simulator, route: Route) -> Tracker {
        sim.lock().count(route);
        Tracker {
            sim: sim.clone(),
            route,
            at: Instant::now(),
            account: None,
            status: CLIENT_GONE,
        }
    }

    fn finish(mut self, resp: Response) -> Response {
        self.status = resp.status().as_u16();
        resp
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        let record = RequestRecord {
            at: self.at,
            route: self.route,
            account: self.account.take(),
            status: self.status,
        };
        self.sim.lock().log(record);
    }
}

/// A JSON error body `{"error", "message"}` with `status`.
pub(super) fn error_response(status: u16, error: &str, message: &str) -> Response {
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

/// A 429 with `Retry-After: value` (sent as is when it is a valid header value).
fn too_many_requests(value: &str) -> Response {
    let mut resp = error_response(
        429,
        "rate_limited",
        "too many requests; retry after the time in Retry-After",
    );
    if let Ok(v) = HeaderValue::from_str(value) {
        resp.headers_mut().insert("retry-after", v);
    }
    resp
}

/// The 429 `account` gets now, if it is rate limited: a queued raw `Retry-After` first, then
/// the timed window (armed by the request that starts it).
fn rate_limit_answer(st: &mut SimState, account: &str) -> Option<Response> {
    if let Some(value) = st
        .raw_retry_after
        .get_mut(account)
        .and_then(|q| q.pop_front())
    {
        return Some(too_many_requests(&value));
    }
    let now = Instant::now();
    if let Some((length, http_date)) = st.rate_limit_armed.remove(account) {
        let until = now.checked_add(length).unwrap_or(now);
        st.rate_limited
            .insert(account.to_string(), (until, http_date));
    }
    let (until, http_date) = st.rate_limited.get(account).copied()?;
    if until <= now {
        st.rate_limited.remove(account);
        return None;
    }
    let left = until - now;
    let value = if http_date {
        // HTTP dates have whole seconds: round up so the client never comes early.
        let at = SystemTime::now()
            .checked_add(left.saturating_add(Duration::from_millis(999)))
            .unwrap_or_else(SystemTime::now);
        httpdate::fmt_http_date(at)
    } else {
        (left.as_secs_f64().ceil() as u64).max(1).to_string()
    };
    Some(too_many_requests(&value))
}

/// The 429 `account` gets now if the per-account rate limit is on and its bucket is empty.
fn bucket_answer(st: &mut SimState, account: &str) -> Option<Response> {
    let limit = st.account_limit?;
    let now = Instant::now();
    let bucket = st
        .buckets
        .entry(account.to_string())
        .or_insert_with(|| Bucket::full(limit, now));
    let wait = bucket.take(limit, now).err()?;
    Some(too_many_requests(&retry_after_seconds(wait).to_string()))
}

fn injected(status: u16) -> Response {
    error_response(
        status,
        "service_unavailable",
        "injected failure (AgentSend simulator)",
    )
}

impl Simulator {
    /// The front of every API request after counting: latency, rate limit, injected errors,
    /// auth. Returns the account, or the answer to send instead.
    async fn front(&self, t: &mut Tracker, headers: &HeaderMap) -> Result<String, Response> {
        let key = headers.get("x-api-key").and_then(|v| v.to_str().ok());
        let latency = self.lock().latency;
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        let mut st = self.lock();
        let entry = key.and_then(|k| st.keys.get(k).cloned());
        t.account = entry.as_ref().map(|e| e.account.clone());

        if let Some(e) = &entry
            && let Some(resp) = rate_limit_answer(&mut st, &e.account)
                .or_else(|| bucket_answer(&mut st, &e.account))
        {
            return Err(resp);
        }

        if let Some((n, status)) = st.fail_next.get_mut(&t.route)
            && *n > 0
        {
            *n -= 1;
            return Err(injected(*status));
        }
        if st.error_rate > 0.0 && rand::rng().random_bool(st.error_rate) {
            return Err(injected(st.error_status));
        }

        match entry {
            Some(e) if !e.revoked => Ok(e.account),
            Some(_) => Err(error_response(
                401,
                "unauthorized",
                "the API key has been revoked",
            )),
            None if key.is_none() => Err(error_response(
                401,
                "unauthorized",
                "missing x-api-key header",
            )),
            None => Err(error_response(401, "unauthorized", "invalid API key")),
        }
    }

    fn malformed(&self, route: Route) -> Option<Malformed> {
        self.lock().malformed.get(&route).copied()
    }
}

fn to_json(i: &RemoteInbox) -> Value {
    serde_json::to_value(i).unwrap_or(Value::Null)
}

/// A success body, malformed if asked to.
fn success(status: StatusCode, body: Value, malformed: Option<Malformed>) -> Response {
    match malformed {
        None => (status, axum::Json(body)).into_response(),
        Some(Malformed::NotJson) => (
            status,
            [("content-type", "text/html")],
            "<html><body><h1>502 Bad Gateway</h1>(AgentSend simulator)</body></html>",
        )
            .into_response(),
        Some(Malformed::Truncated) => {
            let text = body.to_string();
            let mut cut = text.len() / 2;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            (
                status,
                [("content-type", "application/json")],
                text[..cut].to_string(),
            )
                .into_response()
        }
        Some(Malformed::UnexpectedFields) => {
            let mut body = body;
            add_extra_fields(&mut body);
            (status, axum::Json(body)).into_response()
        }
        Some(Malformed::Huge) => {
            let mut body = body;
            if let Value::Object(m) = &mut body {
                m.insert("padding".into(), Value::String("x".repeat(HUGE_PADDING)));
            }
            (status, axum::Json(body)).into_response()
        }
    }
}

/// Undocumented extras a newer API version might send: unknown fields, nested values.
fn add_extra_fields(v: &mut Value) {
    if let Value::Object(m) = v {
        m.insert(
            "unexpected".into(),
            json!({"nested": [1, 2, 3], "flag": true}),
        );
        m.insert("webhookCount".into(), json!(0));
        if let Some(Value::Array(items)) = m.get_mut("data") {
            for i in items {
                add_extra_fields(i);
            }
        }
    }
}

/// A 201 whose body fails after the headers: the inbox exists, the client never learns it.
fn dropped_response() -> Response {
    let stream = futures::stream::once(async {
        Err::<Bytes, std::io::Error>(std::io::Error::other(
            "response dropped by the AgentSend simulator",
        ))
    });
    let mut resp = Response::new(Body::from_stream(stream));
    *resp.status_mut() = StatusCode::CREATED;
    resp.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    resp
}

pub(super) async fn create(
    State(sim): State<Simulator>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let mut t = Tracker::start(&sim, Route::Create);
    let account = match sim.front(&mut t, &headers).await {
        Ok(a) => a,
        Err(resp) => return t.finish(resp),
    };
    let body = match body {
        Ok(b) => b,
        Err(e) => {
            return t.finish(error_response(
                e.status().as_u16(),
                "invalid_body",
                &e.body_text(),
            ));
        }
    };
    let req: CreateInbox = if body.iter().all(u8::is_ascii_whitespace) {
        CreateInbox::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => {
                return t.finish(error_response(
                    400,
                    "invalid_json",
                    &format!("the request body is not a valid inbox request: {e}"),
                ));
            }
        }
    };
    let late = {
        let mut st = sim.lock();
        let (n, delay) = st.late_commits;
        (n > 0).then(|| {
            st.late_commits.0 -= 1;
            delay
        })
    };
    if let Some(delay) = late {
        return t.finish(commit_late(sim.clone(), account, req, delay).await);
    }
    let created = {
        let mut st = sim.lock();
        st.create(&account, &req).map(|inbox| {
            let drop_it = st.drop_creates > 0;
            if drop_it {
                st.drop_creates -= 1;
            }
            (inbox, drop_it)
        })
    };
    let resp = match created {
        Ok((_, true)) => dropped_response(),
        Ok((inbox, false)) => success(
            StatusCode::CREATED,
            to_json(&inbox),
            sim.malformed(Route::Create),
        ),
        Err(e) => sim_error_response(&e),
    };
    t.finish(resp)
}

/// Commit a create `delay` from now in a task of its own (it happens even if the client
/// disconnects first), then answer with its outcome.
async fn commit_late(
    sim: Simulator,
    account: String,
    req: CreateInbox,
    delay: Duration,
) -> Response {
    let commit = tokio::spawn({
        let sim = sim.clone();
        async move {
            tokio::time::sleep(delay).await;
            let mut st = sim.lock();
            st.late_commits_settled += 1;
            st.create(&account, &req)
        }
    });
    match commit.await {
        Ok(Ok(inbox)) => success(
            StatusCode::CREATED,
            to_json(&inbox),
            sim.malformed(Route::Create),
        ),
        Ok(Err(e)) => sim_error_response(&e),
        Err(_) => error_response(500, "internal", "the create task failed"),
    }
}

pub(super) async fn list(
    State(sim): State<Simulator>,
    headers: HeaderMap,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Response {
    let mut t = Tracker::start(&sim, Route::List);
    let account = match sim.front(&mut t, &headers).await {
        Ok(a) => a,
        Err(resp) => return t.finish(resp),
    };
    let Ok(Query(q)) = query else {
        return t.finish(error_response(
            400,
            "invalid_parameter",
            "the query string cannot be parsed",
        ));
    };
    // `None`: present but not a non-negative integer.
    let param = |k: &str, default: u64| match q.get(k) {
        None => Some(default),
        Some(v) => v.trim().parse::<u64>().ok(),
    };
    let (Some(limit), Some(offset)) = (param("limit", DEFAULT_LIMIT), param("offset", 0)) else {
        return t.finish(error_response(
            400,
            "invalid_parameter",
            "limit and offset must be non-negative integers",
        ));
    };
    let limit = limit.clamp(1, MAX_LIMIT);
    let body = {
        let st = sim.lock();
        let offset_idx = usize::try_from(offset).unwrap_or(usize::MAX);
        let (data, total) = st.page(&account, limit as usize, offset_idx);
        let data: Vec<Value> = data.into_iter().map(to_json).collect();
        json!({"data": data, "total": total, "limit": limit, "offset": offset})
    };
    t.finish(success(StatusCode::OK, body, sim.malformed(Route::List)))
}

pub(super) async fn get(
    State(sim): State<Simulator>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> Response {
    let mut t = Tracker::start(&sim, Route::Get);
    let account = match sim.front(&mut t, &headers).await {
        Ok(a) => a,
        Err(resp) => return t.finish(resp),
    };
    let found = id.ok().and_then(|Path(id)| {
        sim.lock()
            .get(&id, Some(&account))
            .map(|s| to_json(&s.inbox))
    });
    let resp = match found {
        Some(body) => success(StatusCode::OK, body, sim.malformed(Route::Get)),
        None => error_response(404, "not_found", "inbox not found"),
    };
    t.finish(resp)
}

pub(super) async fn delete(
    State(sim): State<Simulator>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> Response {
    let mut t = Tracker::start(&sim, Route::Delete);
    let account = match sim.front(&mut t, &headers).await {
        Ok(a) => a,
        Err(resp) => return t.finish(resp),
    };
    let deleted = id
        .ok()
        .is_some_and(|Path(id)| sim.lock().remove(&id, Some(&account)));
    let resp = if deleted {
        StatusCode::NO_CONTENT.into_response()
    } else {
        error_response(404, "not_found", "inbox not found")
    };
    t.finish(resp)
}

/// Anything else: a JSON 404.
pub(super) async fn fallback() -> Response {
    error_response(404, "not_found", "no such route")
}
