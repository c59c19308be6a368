//! HTTP endpoints: `/metrics` on the metrics address (plain, or protected by
//! [`crate::secure_metrics`]), and the probes `/healthz`, `/readyz` (on the metrics address,
//! and on the plain-HTTP health address when one is set).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::metrics::Metrics;

/// Readiness, as reported by `/readyz`.
#[derive(Debug, Default)]
pub struct Health {
    ready: AtomicBool,
}

impl Health {
    /// Mark ready (caches synced and leadership known) or not.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// Whether `/readyz` answers 200.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
}

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
}

/// The router serving the three endpoints; with `auth`, `/metrics` answers only callers it
/// allows (the probes stay open).
pub fn router(
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    auth: Option<crate::secure_metrics::Authorizer>,
) -> Router {
    let mut metrics_route = Router::new().route("/metrics", get(metrics_handler));
    if let Some(auth) = auth {
        metrics_route = metrics_route.layer(axum::middleware::from_fn_with_state(
            auth,
            crate::secure_metrics::require_access,
        ));
    }
    metrics_route
        .with_state(AppState { metrics })
        .merge(probes(health))
}

/// The router serving only `/healthz` and `/readyz`.
pub fn probes(health: Arc<Health>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(health)
}

/// `/metrics`, streamed: the exposition is sent piece by piece as the client reads it, so a
/// scrape at 10,000 Inboxes holds ≈ 65 KB of text at most instead of ≈ 7.6 MB.
async fn metrics_handler(State(s): State<AppState>) -> impl IntoResponse {
    let pieces = s.metrics.scrape().map(Ok::<_, std::convert::Infallible>);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        axum::body::Body::from_stream(futures::stream::iter(pieces)),
    )
}

async fn readyz(State(health): State<Arc<Health>>) -> impl IntoResponse {
    if health.is_ready() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

/// Bind `addr` and serve plain HTTP until the process ends.
pub async fn serve(addr: SocketAddr, app: Router) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics server stopped");
        }
    }))
}

/// Bind `addr` and serve HTTPS with `tls` until the process ends.
pub async fn serve_tls(
    addr: SocketAddr,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = crate::secure_metrics::TlsListener::bind(addr, tls).await?;
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics server stopped");
        }
    }))
}
