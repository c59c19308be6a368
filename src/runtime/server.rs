//! HTTP endpoints: `/metrics` on the metrics address (plain, or protected by
//! [`crate::runtime::secure_metrics`]), and the probes `/healthz`, `/readyz` (on the metrics address,
//! and on the plain-HTTP health address when one is set).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::metrics::Metrics;

/// Readiness, as reported by `/readyz`, and liveness, by `/healthz`.
#[derive(Debug, Default)]
pub struct Health {
    ready: AtomicBool,
    /// The controller stopped on its own (a task it needs ended): `/healthz` fails, so the
    /// kubelet restarts the Pod instead of it serving probes while reconciling nothing.
    stopped: AtomicBool,
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

    /// The controller stopped on its own: not alive, not ready.
    pub fn set_stopped(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.set_ready(false);
    }

    /// Whether `/healthz` answers 200.
    pub fn is_alive(&self) -> bool {
        !self.stopped.load(Ordering::SeqCst)
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
    auth: Option<crate::runtime::secure_metrics::Authorizer>,
) -> Router {
    let mut metrics_route = Router::new().route("/metrics", get(metrics_handler));
    if let Some(auth) = auth {
        metrics_route = metrics_route.layer(axum::middleware::from_fn_with_state(
            auth,
            crate::runtime::secure_metrics::require_access,
        ));
    }
    metrics_route
        .with_state(AppState { metrics })
        .merge(probes(health))
}

/// The router serving only `/healthz` and `/readyz`.
pub fn probes(health: Arc<Health>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
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

async fn healthz(State(health): State<Arc<Health>>) -> impl IntoResponse {
    if health.is_alive() {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::INTERNAL_SERVER_ERROR, "the controller stopped")
    }
}

async fn readyz(State(health): State<Arc<Health>>) -> impl IntoResponse {
    if health.is_ready() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

/// Most connections one server (port) holds at once; a connection beyond it is closed as
/// soon as it is accepted, so a flood costs a refused connection each, not a task each.
pub const MAX_CONNECTIONS: usize = 64;
/// How long a client may take to send a request's headers — and so how long a kept-alive
/// connection may sit idle before its next request.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a connection lives, whatever it does (a scrape takes well under a second).
pub const MAX_CONNECTION_AGE: Duration = Duration::from_secs(120);

/// Bind `addr` and serve plain HTTP until the process ends.
pub async fn serve(addr: SocketAddr, app: Router) -> std::io::Result<tokio::task::JoinHandle<()>> {
    serve_with(addr, None, app).await
}

/// Bind `addr` and serve HTTPS with `tls` until the process ends.
pub async fn serve_tls(
    addr: SocketAddr,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    serve_with(addr, Some(TlsAcceptor::from(tls)), app).await
}

/// The accept loop of one port: at most [`MAX_CONNECTIONS`] at once, each with a handshake
/// timeout (TLS), a header-read/idle timeout and a maximum age, in a task of its own.
async fn serve_with(
    addr: SocketAddr,
    tls: Option<TlsAcceptor>,
    app: Router,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(addr).await?;
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    Ok(tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::debug!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                tracing::debug!("{MAX_CONNECTIONS} connections open: closing a new one");
                continue;
            };
            let (tls, app) = (tls.clone(), app.clone());
            tokio::spawn(async move {
                let _slot = slot;
                let Some(acceptor) = tls else {
                    return serve_connection(stream, app).await;
                };
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => serve_connection(stream, app).await,
                    Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!("TLS handshake timed out"),
                }
            });
        }
    }))
}

/// HTTP/1.1 on one connection, within [`HEADER_READ_TIMEOUT`] and [`MAX_CONNECTION_AGE`].
async fn serve_connection<S>(stream: S, app: Router)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = TowerToHyperService::new(app);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let connection = http.serve_connection(TokioIo::new(stream), service);
    match tokio::time::timeout(MAX_CONNECTION_AGE, connection).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "connection ended with an error"),
        Err(_) => tracing::debug!("connection closed at its maximum age"),
    }
}
