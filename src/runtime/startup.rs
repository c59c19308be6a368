//! `inbox-operator run`: startup checks (key, kubeconfig, CRDs, RBAC), the metrics server, the
//! AgentSend client, signals; then the controller, directly or under [`crate::runtime::leader`].

use std::net::SocketAddr;
use std::sync::Arc;

use kube::api::{Api, ListParams};
use kube::{Client, Config};
use thiserror::Error;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::agentsend::{
    AccountObserver, AgentSendClient, ApiKey, ClientOptions, Observers, RequestObserver,
};
use crate::api::account::{Account, ClusterAccount};
use crate::api::inbox::Inbox;
use crate::cli::{LogFormat, RunArgs};
use crate::controller::{self, DefaultKey, Settings};
use crate::metrics::Metrics;
use crate::runtime::leader::{self, Lease, LeaseTiming, WriteGate};
use crate::runtime::secure_metrics;
use crate::runtime::server::{self, Health};

/// Why the operator could not start (or stopped). Each message says what to do.
#[derive(Debug, Error)]
pub enum StartupError {
    /// No default API key and no `--no-default-key`.
    #[error(
        "no default AgentSend API key: set AGENTSEND_API_KEY or --api-key-file (or pass --no-default-key if every Inbox names its key: spec.accountRef, spec.credentials, or a default ClusterAccount)"
    )]
    NoDefaultKey,
    /// `--api-key-file` cannot be read.
    #[error("cannot read the API key file {path}: {source}; check the mounted Secret")]
    KeyFile {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// `--api-key-file` is empty.
    #[error("the API key file {0} is empty; check the mounted Secret")]
    EmptyKeyFile(String),
    /// No usable Kubernetes configuration.
    #[error(
        "cannot load a Kubernetes configuration ({0}); run in a cluster, set KUBECONFIG, or create ~/.kube/config"
    )]
    KubeConfig(String),
    /// The API server does not answer.
    #[error(
        "cannot reach the Kubernetes API server at {url}: {message}; check the kubeconfig and network"
    )]
    Unreachable {
        /// The server's URL.
        url: String,
        /// Why.
        message: String,
    },
    /// Some of the three CRDs (Inbox, Account, ClusterAccount) are not installed.
    #[error(
        "CRDs not installed: {0} (the operator needs all three: inboxes.agentsend.io, accounts.agentsend.io, clusteraccounts.agentsend.io); install them with `inbox-operator crd | kubectl apply --server-side -f -` or `kubectl apply --server-side -k crds`"
    )]
    CrdMissing(String),
    /// The proof key cannot be read or made.
    #[error("{0}")]
    ProofKey(#[from] controller::ProofKeyError),
    /// RBAC does not allow listing one of the resources.
    #[error(
        "not allowed to list {resource} ({message}); apply the RBAC in deploy/ for the operator's ServiceAccount"
    )]
    Forbidden {
        /// The resource, e.g. `inboxes.agentsend.io`.
        resource: &'static str,
        /// The API server's message.
        message: String,
    },
    /// Another Kubernetes error at startup.
    #[error("Kubernetes API error during startup: {0}")]
    Kube(String),
    /// The AgentSend client settings are invalid.
    #[error("invalid AgentSend settings: {0}")]
    AgentSend(String),
    /// HTTPS for /metrics could not be set up.
    #[error("{0}")]
    MetricsTls(#[from] crate::runtime::secure_metrics::TlsError),
    /// The metrics address cannot be bound.
    #[error("cannot serve metrics on {addr}: {source}; choose another --metrics-addr")]
    MetricsBind {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// `--lease-duration` is unusable.
    #[error("{0}")]
    LeaseTiming(#[from] crate::runtime::leader::TimingError),
    /// Leading ended in an error (the Lease was lost).
    #[error("{0}")]
    Leader(#[from] crate::runtime::leader::LeaderError),
}

/// Set up `tracing` output (text or JSON; levels from `RUST_LOG`, default `info`).
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

fn default_key(args: &RunArgs) -> Result<DefaultKey, StartupError> {
    if let Some(path) = &args.api_key_file {
        let text = std::fs::read_to_string(path).map_err(|source| StartupError::KeyFile {
            path: path.display().to_string(),
            source,
        })?;
        if ApiKey::new(&text).is_none() {
            return Err(StartupError::EmptyKeyFile(path.display().to_string()));
        }
        return Ok(DefaultKey::File(path.clone()));
    }
    if let Some(k) = std::env::var("AGENTSEND_API_KEY")
        .ok()
        .and_then(ApiKey::new)
    {
        return Ok(DefaultKey::Fixed(k));
    }
    if args.no_default_key {
        return Ok(DefaultKey::None);
    }
    Err(StartupError::NoDefaultKey)
}

/// A Kubernetes client by the standard rules, checked to reach its API server.
pub(crate) async fn kube_client() -> Result<Client, StartupError> {
    let mut config = Config::infer()
        .await
        .map_err(|e| StartupError::KubeConfig(e.to_string()))?;
    controller::harden_kube_config(&mut config);
    let url = config.cluster_url.to_string();
    let client = Client::try_from(config).map_err(|e| StartupError::KubeConfig(e.to_string()))?;
    client
        .apiserver_version()
        .await
        .map_err(|e| StartupError::Unreachable {
            url,
            message: e.to_string(),
        })?;
    Ok(client)
}

/// Each of the three CRDs is installed and its resource may be listed (in the first watched
/// namespace, or cluster-wide): the operator needs all three, and without the account kinds it
/// would wait for their caches forever.
async fn check_crds(client: &Client, args: &RunArgs) -> Result<(), StartupError> {
    let scoped = |ns: Option<&String>| -> (Api<Inbox>, Api<Account>) {
        match ns {
            Some(ns) => (
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
            ),
            None => (Api::all(client.clone()), Api::all(client.clone())),
        }
    };
    let (inboxes, accounts) = scoped(args.namespace.first());
    let cluster_accounts: Api<ClusterAccount> = Api::all(client.clone());
    let one = ListParams::default().limit(1);
    let listed = [
        (
            "inboxes.agentsend.io",
            inboxes.list_metadata(&one).await.map(drop),
        ),
        (
            "accounts.agentsend.io",
            accounts.list_metadata(&one).await.map(drop),
        ),
        (
            "clusteraccounts.agentsend.io",
            cluster_accounts.list_metadata(&one).await.map(drop),
        ),
    ];
    crd_check_outcome(listed)
}

/// What the three list calls of [`check_crds`] say: every CRD missing is named at once.
fn crd_check_outcome(
    listed: [(&'static str, Result<(), kube::Error>); 3],
) -> Result<(), StartupError> {
    let mut missing = Vec::new();
    for (resource, result) in listed {
        match result {
            Ok(()) => {}
            // By code, not `Status::is_not_found`: a resource type that is not installed
            // answers a plain-text "404 page not found", which carries no `NotFound` reason.
            Err(kube::Error::Api(s)) if s.code == 404 => missing.push(resource),
            Err(kube::Error::Api(s)) if s.is_forbidden() => {
                return Err(StartupError::Forbidden {
                    resource,
                    message: s.message,
                });
            }
            Err(e) => return Err(StartupError::Kube(e.to_string())),
        }
    }
    match missing.as_slice() {
        [] => Ok(()),
        _ => Err(StartupError::CrdMissing(missing.join(", "))),
    }
}

/// A future that resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => drop(term.recv().await),
            // No SIGTERM handler: Ctrl-C alone ends the run.
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = terminate => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// Serve `/metrics`, `/healthz` and `/readyz` on `--metrics-addr` (HTTPS with access checks
/// unless `--metrics-secure=false`), and the probes on `--health-addr` if set.
async fn serve_metrics(
    args: &RunArgs,
    client: &Client,
    metrics: &Arc<Metrics>,
    health: &Arc<Health>,
) -> Result<(), StartupError> {
    let bind_error = |addr: SocketAddr| {
        move |source| StartupError::MetricsBind {
            addr: addr.to_string(),
            source,
        }
    };
    let addr = args.metrics_addr;
    if args.metrics_secure {
        let tls = secure_metrics::tls_config(args.metrics_cert_dir.as_deref())?;
        let auth = secure_metrics::Authorizer::new(client.clone());
        let app = server::router(metrics.clone(), health.clone(), Some(auth));
        server::serve_tls(addr, tls, app)
            .await
            .map_err(bind_error(addr))?;
        info!(%addr, "serving /metrics over HTTPS (TokenReview + SubjectAccessReview), /healthz, /readyz");
    } else {
        let app = server::router(metrics.clone(), health.clone(), None);
        server::serve(addr, app).await.map_err(bind_error(addr))?;
        info!(%addr, "serving /metrics (plain HTTP, unauthenticated), /healthz, /readyz");
    }
    if let Some(addr) = args.health_addr {
        server::serve(addr, server::probes(health.clone()))
            .await
            .map_err(bind_error(addr))?;
        info!(%addr, "serving /healthz, /readyz");
    }
    Ok(())
}

/// The operator's namespace, and the proof key kept there (made at first start).
async fn proof_key(
    client: &Client,
    args: &RunArgs,
) -> Result<(String, controller::ProofKey), StartupError> {
    let namespace = crate::api::account::operator_namespace_or(args.operator_namespace.as_deref());
    let key = controller::load_or_create_proof_key(client, &namespace).await?;
    Ok((namespace, key))
}

/// The AgentSend client, reporting every request and each account's budget to the metrics.
fn agentsend_client(
    args: &RunArgs,
    metrics: &Arc<Metrics>,
    gate: &WriteGate,
) -> Result<AgentSendClient, StartupError> {
    let observer_metrics = metrics.clone();
    let observer: RequestObserver = Arc::new(move |route, status, took| {
        observer_metrics.api_request(route, status, took);
    });
    let account_metrics = metrics.clone();
    let account_observer: AccountObserver = Arc::new(move |account, rate, throttled| {
        account_metrics.api_account(account, rate, throttled);
    });
    let opts = ClientOptions {
        timeout: args.agentsend_timeout,
        requests_per_second: args.agentsend_rate,
        burst: args.agentsend_burst,
        max_concurrency: usize::from(args.agentsend_concurrency),
        ..ClientOptions::default()
    };
    let invalid_metrics = metrics.clone();
    let observers = Observers {
        requests: Some(observer),
        accounts: Some(account_observer),
        invalid_retry_after: Some(Arc::new(move |route| {
            invalid_metrics.invalid_retry_after(route);
        })),
        may_write: Some({
            let gate = gate.clone();
            Arc::new(move || gate.is_open())
        }),
    };
    AgentSendClient::with_observers(&args.endpoint.agentsend_url, opts, observers)
        .map_err(|e| StartupError::AgentSend(e.to_string()))
}

/// This instance's name: for the lease and on events.
fn identity(args: &RunArgs) -> String {
    args.identity
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| format!("inbox-operator-{}", std::process::id()))
}

/// The controller's settings from the command line and what startup found.
fn settings(
    args: &RunArgs,
    default_key: DefaultKey,
    gate: &WriteGate,
    identity: &str,
    operator_namespace: String,
    proof_key: controller::ProofKey,
    health: &Arc<Health>,
) -> Settings {
    Settings {
        sync_interval: args.sync_interval,
        concurrency: args.concurrency.max(1),
        namespaces: args.namespace.clone(),
        selector: args.selector.clone(),
        default_key,
        reporter: "inbox-operator".into(),
        instance: Some(identity.to_string()),
        gate: gate.clone(),
        operator_namespace,
        account_status: args.account_status,
        max_retry_delay: args.max_retry_delay,
        proof_key: Some(proof_key),
        refresh_min_interval: controller::REFRESH_MIN_INTERVAL,
        health: Some(health.clone()),
    }
}

/// Run the operator until SIGTERM (returns Ok) or a fatal error.
pub async fn run(args: RunArgs) -> Result<(), StartupError> {
    crate::ensure_crypto_provider();
    let default_key = default_key(&args)?;
    // Checked before connecting: a bad --lease-duration is a configuration error.
    let timing = if args.leader_elect {
        Some(LeaseTiming::new(args.lease_duration)?)
    } else {
        None
    };
    // Without leader election every write is allowed; with it, only while leading.
    let gate = match &timing {
        Some(t) => WriteGate::leased(t.renew_deadline),
        None => WriteGate::open(),
    };
    let client = kube_client().await?;
    check_crds(&client, &args).await?;
    let (operator_namespace, proof_key) = proof_key(&client, &args).await?;
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::default());
    serve_metrics(&args, &client, &metrics, &health).await?;
    let api = agentsend_client(&args, &metrics, &gate)?;
    let identity = identity(&args);
    let settings = settings(
        &args,
        default_key,
        &gate,
        &identity,
        operator_namespace,
        proof_key,
        &health,
    );
    info!(
        url = %args.endpoint.agentsend_url,
        namespaces = ?settings.namespaces,
        selector = ?settings.selector,
        account_status = ?settings.account_status,
        operator_namespace = %settings.operator_namespace,
        sync_interval_s = settings.sync_interval.as_secs_f64(),
        "starting inbox-operator"
    );
    let shutdown = CancellationToken::new();
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        on_signal.cancel();
    });
    let (ctl_client, ctl_metrics, ctl_health) = (client.clone(), metrics.clone(), health.clone());
    let controller = move |stop: CancellationToken| {
        controller::run(
            ctl_client,
            api,
            settings,
            ctl_metrics,
            stop.cancelled_owned(),
            move || ctl_health.set_ready(true),
        )
    };
    let Some(timing) = timing else {
        metrics.set_leader(true);
        controller(shutdown).await;
        return Ok(());
    };
    let lease = Lease {
        name: args.lease_name.clone(),
        namespace: args
            .lease_namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        identity,
        timing,
    };
    leader::run(client, lease, gate, &health, &metrics, shutdown, controller).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(code: u16, reason: &str) -> Result<(), kube::Error> {
        let status = kube::core::Status::failure("the server said no", reason).with_code(code);
        Err(kube::Error::Api(Box::new(status)))
    }

    #[test]
    fn every_missing_crd_is_named_at_once() {
        let e = crd_check_outcome([
            ("inboxes.agentsend.io", Ok(())),
            ("accounts.agentsend.io", answer(404, "")),
            ("clusteraccounts.agentsend.io", answer(404, "")),
        ])
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with(
                "CRDs not installed: accounts.agentsend.io, clusteraccounts.agentsend.io ("
            ),
            "{e}"
        );
        assert!(
            crd_check_outcome([
                ("inboxes.agentsend.io", Ok(())),
                ("accounts.agentsend.io", Ok(())),
                ("clusteraccounts.agentsend.io", Ok(())),
            ])
            .is_ok()
        );
    }

    #[test]
    fn a_forbidden_list_names_the_resource() {
        let e = crd_check_outcome([
            ("inboxes.agentsend.io", Ok(())),
            ("accounts.agentsend.io", Ok(())),
            ("clusteraccounts.agentsend.io", answer(403, "Forbidden")),
        ])
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("not allowed to list clusteraccounts.agentsend.io"),
            "{e}"
        );
    }
}
