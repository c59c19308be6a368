//! `/_simulator/` control endpoints, for a simulator running in another process (the demo,
//! the benchmark). No auth; loopback only. Not part of the AgentSend API.

use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, patch, post};
use serde::Deserialize;
use serde_json::json;

use super::{Route, Simulator};
use crate::agentsend::InboxState;

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

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct FaultsBody {
    latency_ms: Option<u64>,
    error_rate: Option<f64>,
    error_status: Option<u16>,
    drop_next_creates: Option<usize>,
}

pub(super) fn router() -> Router<Simulator> {
    Router::new()
        .route("/_simulator/accounts", post(add_account))
        .route("/_simulator/domains", post(add_domain))
        .route("/_simulator/keys/revoke", post(revoke))
        .route("/_simulator/keys/restore", post(restore))
        .route(
            "/_simulator/inboxes/{id}",
            patch(patch_inbox).delete(delete_inbox),
        )
        .route("/_simulator/faults", post(set_faults).delete(clear_faults))
        .route("/_simulator/stats", axum::routing::get(stats))
        .route("/_simulator/reset-counters", delete(reset))
}

async fn add_account(
    State(sim): State<Simulator>,
    axum::Json(b): axum::Json<AccountBody>,
) -> StatusCode {
    sim.add_account(&b.account, &b.api_key);
    StatusCode::NO_CONTENT
}

async fn add_domain(
    State(sim): State<Simulator>,
    axum::Json(b): axum::Json<DomainBody>,
) -> StatusCode {
    sim.add_domain(&b.account, &b.domain_id, &b.domain_name);
    StatusCode::NO_CONTENT
}

async fn revoke(State(sim): State<Simulator>, axum::Json(b): axum::Json<KeyBody>) -> StatusCode {
    sim.revoke_key(&b.api_key);
    StatusCode::NO_CONTENT
}

async fn restore(State(sim): State<Simulator>, axum::Json(b): axum::Json<KeyBody>) -> StatusCode {
    sim.restore_key(&b.api_key);
    StatusCode::NO_CONTENT
}

async fn patch_inbox(
    State(sim): State<Simulator>,
    Path(id): Path<String>,
    axum::Json(p): axum::Json<InboxPatch>,
) -> Response {
    let found = sim.update_inbox(&id, |i| {
        if let Some(s) = &p.status {
            i.status = match s.as_str() {
                "active" => InboxState::Active,
                "suspended" => InboxState::Suspended,
                "deleted" => InboxState::Deleted,
                other => InboxState::Other(other.to_string()),
            };
        }
        if p.sends_today.is_some() {
            i.sends_today = p.sends_today;
        }
        if p.daily_send_limit.is_some() {
            i.daily_send_limit = p.daily_send_limit;
        }
        if p.total_sent.is_some() {
            i.total_sent = p.total_sent;
        }
        if p.bounce_count.is_some() {
            i.bounce_count = p.bounce_count;
        }
        if p.complaint_count.is_some() {
            i.complaint_count = p.complaint_count;
        }
    });
    match (found, sim.inbox(&id)) {
        (true, Some(i)) => axum::Json(i).into_response(),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn delete_inbox(State(sim): State<Simulator>, Path(id): Path<String>) -> StatusCode {
    if sim.delete_out_of_band(&id) {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::NOT_FOUND
    }
}

async fn set_faults(
    State(sim): State<Simulator>,
    axum::Json(f): axum::Json<FaultsBody>,
) -> StatusCode {
    if let Some(ms) = f.latency_ms {
        sim.set_latency(Duration::from_millis(ms));
    }
    if let Some(rate) = f.error_rate {
        sim.set_error_rate(rate, f.error_status.unwrap_or(503));
    }
    if let Some(n) = f.drop_next_creates {
        sim.drop_next_create_responses(n);
    }
    StatusCode::NO_CONTENT
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
