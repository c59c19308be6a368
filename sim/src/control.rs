//! `/_simulator/` control endpoints, for a simulator running in another process (the demo,
//! the benchmark). No auth: bind the simulator to loopback. Not part of the AgentSend API, and
//! not counted in the request stats.
//!
//! The endpoints are listed in the [`super`] module docs.

use std::collections::HashMap;
use std::time::Duration;

use axum::Router;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use super::api::error_response;
use super::{Malformed, Route, Simulator};
use crate::types::{CreateInbox, InboxState};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AccountBody {
    account: String,
    api_key: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DomainBody {
    account: String,
    domain_id: String,
    domain_name: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct KeyBody {
    api_key: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct InsertBody {
    account: String,
    #[serde(flatten)]
    req: CreateInbox,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct InboxPatch {
    status: Option<String>,
    sends_today: Option<i64>,
    daily_send_limit: Option<i64>,
    total_sent: Option<i64>,
    bounce_count: Option<i64>,
    complaint_count: Option<i64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct FailNext {
    route: String,
    n: usize,
    #[serde(default = "default_error_status")]
    status: u16,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RateLimit {
    account: String,
    ms: u64,
    #[serde(default)]
    http_date: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AccountRateLimit {
    per_second: f64,
    burst: Option<f64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRetryAfter {
    account: String,
    values: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MalformedBody {
    route: String,
    kind: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct FaultsBody {
    latency_ms: Option<u64>,
    error_rate: Option<f64>,
    error_status: Option<u16>,
    drop_next_creates: Option<usize>,
    late_commits: Option<LateCommits>,
    fail_next: Option<FailNext>,
    rate_limit: Option<RateLimit>,
    retry_after: Option<RawRetryAfter>,
    malformed: Option<MalformedBody>,
    default_daily_limit: Option<i64>,
    account_rate_limit: Option<AccountRateLimit>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LateCommits {
    count: usize,
    delay_ms: u64,
}

fn default_error_status() -> u16 {
    503
}

pub(super) fn router() -> Router<Simulator> {
    Router::new()
        .route("/_simulator/accounts", post(add_account))
        .route("/_simulator/domains", post(add_domain))
        .route("/_simulator/keys/revoke", post(revoke))
        .route("/_simulator/keys/restore", post(restore))
        .route("/_simulator/inboxes", post(insert_inbox).get(list_inboxes))
        .route(
            "/_simulator/inboxes/{id}",
            patch(patch_inbox).delete(delete_inbox).get(get_inbox),
        )
        .route("/_simulator/faults", post(set_faults).delete(clear_faults))
        .route("/_simulator/stats", get(stats))
        .route("/_simulator/reset-counters", post(reset).delete(reset))
}

/// The JSON body, or why it is not acceptable (answered with a 400 by [`bad`]).
fn body<T: DeserializeOwned>(b: Result<axum::Json<T>, JsonRejection>) -> Result<T, String> {
    b.map(|axum::Json(t)| t).map_err(|e| e.body_text())
}

fn bad(message: &str) -> Response {
    error_response(400, "invalid_body", message)
}

fn not_found() -> Response {
    error_response(404, "not_found", "inbox not found")
}

async fn add_account(
    State(sim): State<Simulator>,
    b: Result<axum::Json<AccountBody>, JsonRejection>,
) -> Response {
    match body(b) {
        Ok(b) if b.api_key.trim().is_empty() => bad("apiKey must not be empty"),
        Ok(b) => {
            sim.add_account(&b.account, b.api_key.trim());
            StatusCode::NO_CONTENT.into_response()
        }
        Err(m) => bad(&m),
    }
}

async fn add_domain(
    State(sim): State<Simulator>,
    b: Result<axum::Json<DomainBody>, JsonRejection>,
) -> Response {
    match body(b) {
        Ok(b) => {
            sim.add_domain(&b.account, &b.domain_id, &b.domain_name);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(m) => bad(&m),
    }
}

async fn revoke(
    State(sim): State<Simulator>,
    b: Result<axum::Json<KeyBody>, JsonRejection>,
) -> Response {
    match body(b) {
        Ok(b) => {
            sim.revoke_key(&b.api_key);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(m) => bad(&m),
    }
}

async fn restore(
    State(sim): State<Simulator>,
    b: Result<axum::Json<KeyBody>, JsonRejection>,
) -> Response {
    match body(b) {
        Ok(b) => {
            sim.restore_key(&b.api_key);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(m) => bad(&m),
    }
}

async fn insert_inbox(
    State(sim): State<Simulator>,
    b: Result<axum::Json<InsertBody>, JsonRejection>,
) -> Response {
    let b = match body(b) {
        Ok(b) => b,
        Err(m) => return bad(&m),
    };
    match sim.lock().create(&b.account, &b.req) {
        Ok(i) => (StatusCode::CREATED, axum::Json(i)).into_response(),
        Err(e) => error_response(e.status, e.error, &e.message),
    }
}

async fn list_inboxes(
    State(sim): State<Simulator>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    match q.get("account") {
        Some(a) => axum::Json(sim.inboxes(a)).into_response(),
        None => bad("the query parameter account is required"),
    }
}

async fn get_inbox(State(sim): State<Simulator>, Path(id): Path<String>) -> Response {
    match sim.inbox(&id) {
        Some(i) => axum::Json(i).into_response(),
        None => not_found(),
    }
}

fn parse_state(s: &str) -> InboxState {
    match s {
        "active" => InboxState::Active,
        "suspended" => InboxState::Suspended,
        "deleted" => InboxState::Deleted,
        other => InboxState::Unknown(other.to_string()),
    }
}

async fn patch_inbox(
    State(sim): State<Simulator>,
    Path(id): Path<String>,
    b: Result<axum::Json<InboxPatch>, JsonRejection>,
) -> Response {
    let p = match body(b) {
        Ok(p) => p,
        Err(m) => return bad(&m),
    };
    let found = sim.update_inbox(&id, |i| {
        if let Some(s) = &p.status {
            i.status = parse_state(s);
        }
        let set = |field: &mut Option<i64>, v: Option<i64>| {
            if v.is_some() {
                *field = v;
            }
        };
        set(&mut i.sends_today, p.sends_today);
        set(&mut i.daily_send_limit, p.daily_send_limit);
        set(&mut i.total_sent, p.total_sent);
        set(&mut i.bounce_count, p.bounce_count);
        set(&mut i.complaint_count, p.complaint_count);
    });
    match sim.inbox(&id) {
        Some(i) if found => axum::Json(i).into_response(),
        _ => not_found(),
    }
}

async fn delete_inbox(State(sim): State<Simulator>, Path(id): Path<String>) -> Response {
    if sim.delete_out_of_band(&id) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        not_found()
    }
}

async fn set_faults(
    State(sim): State<Simulator>,
    b: Result<axum::Json<FaultsBody>, JsonRejection>,
) -> Response {
    let f = match body(b) {
        Ok(f) => f,
        Err(m) => return bad(&m),
    };
    // Validate everything before changing anything.
    let fail_next = match &f.fail_next {
        Some(x) => match Route::parse(&x.route) {
            Some(r) => Some((r, x.n, x.status)),
            None => return bad("failNext.route must be create, get, list or delete"),
        },
        None => None,
    };
    let malformed = match &f.malformed {
        Some(m) => {
            let Some(route) = Route::parse(&m.route) else {
                return bad("malformed.route must be create, get, list or delete");
            };
            let kind = match m.kind.as_deref() {
                None => None,
                Some(k) => match Malformed::parse(k) {
                    Some(k) => Some(k),
                    None => {
                        return bad(
                            "malformed.kind must be not-json, truncated, unexpected-fields, huge or null",
                        );
                    }
                },
            };
            Some((route, kind))
        }
        None => None,
    };
    if let Some(r) = f.error_rate
        && !(0.0..=1.0).contains(&r)
    {
        return bad("errorRate must be between 0 and 1");
    }
    let account_limit = match &f.account_rate_limit {
        Some(l) if l.per_second == 0.0 => Some(None),
        Some(l) => {
            match crate::bucket::RateLimit::new(l.per_second, l.burst.unwrap_or(l.per_second)) {
                Some(limit) => Some(Some(limit)),
                None => {
                    return bad("accountRateLimit.perSecond must be a positive number (0: off)");
                }
            }
        }
        None => None,
    };

    if let Some(ms) = f.latency_ms {
        sim.set_latency(Duration::from_millis(ms));
    }
    if let Some(rate) = f.error_rate {
        sim.set_error_rate(rate, f.error_status.unwrap_or(503));
    } else if let Some(s) = f.error_status {
        sim.lock().error_status = s;
    }
    if let Some(n) = f.drop_next_creates {
        sim.drop_next_create_responses(n);
    }
    if let Some(l) = f.late_commits {
        sim.commit_next_creates_late(l.count, Duration::from_millis(l.delay_ms));
    }
    if let Some((route, n, status)) = fail_next {
        sim.fail_next(route, n, status);
    }
    if let Some(rl) = f.rate_limit {
        sim.rate_limit_for(&rl.account, Duration::from_millis(rl.ms), rl.http_date);
    }
    if let Some(ra) = f.retry_after {
        sim.rate_limit_with_retry_after(&ra.account, ra.values);
    }
    if let Some((route, kind)) = malformed {
        sim.set_malformed(route, kind);
    }
    if let Some(l) = f.default_daily_limit {
        sim.set_default_daily_limit(l);
    }
    if let Some(limit) = account_limit {
        sim.set_account_rate_limit(limit);
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn clear_faults(State(sim): State<Simulator>) -> StatusCode {
    sim.clear_faults();
    StatusCode::NO_CONTENT
}

async fn reset(State(sim): State<Simulator>) -> StatusCode {
    sim.reset_counters();
    StatusCode::NO_CONTENT
}

async fn stats(State(sim): State<Simulator>) -> axum::Json<serde_json::Value> {
    let r = |route: Route| sim.request_count(route);
    axum::Json(json!({
        "requests": {
            "create": r(Route::Create),
            "get": r(Route::Get),
            "list": r(Route::List),
            "delete": r(Route::Delete),
        },
        "total": sim.total_requests(),
        "inboxes": sim.inbox_count(),
    }))
}
