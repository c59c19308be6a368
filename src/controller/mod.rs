//! The Inbox controller: wiring of watches, the reconcile loop and the counter sync.
//!
//! - [`plan`] decides every step of a pass (pure; table-tested), using the building blocks
//!   in [`decide`] and the status rendering in [`status`]; [`events`] names what it publishes.
//! - `execute` runs the steps: every Kubernetes and AgentSend call of a reconcile.
//! - [`accounts`] batches counter reads into one paginated scan per account per interval.

pub mod accounts;
pub mod decide;
pub mod events;
mod execute;
pub mod plan;
pub mod status;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::channel::mpsc;
use futures::{FutureExt, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::controller::{Config as ControllerConfig, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, Resource};
use thiserror::Error;

use crate::agentsend::{AgentSendClient, ApiError, ApiKey};
use crate::crd::{self, Inbox};
use crate::metrics::Metrics;

pub use accounts::Accounts;

/// Where the operator's default API key comes from.
#[derive(Clone, Debug)]
pub enum DefaultKey {
    /// No default: every Inbox needs `spec.credentials`.
    None,
    /// Fixed for the process lifetime (`AGENTSEND_API_KEY`).
    Fixed(ApiKey),
    /// Read from this file at each use, so a rotated (remounted) Secret is picked up.
    File(PathBuf),
}

impl DefaultKey {
    /// The current default key, if any.
    pub fn current(&self) -> Option<ApiKey> {
        match self {
            DefaultKey::None => None,
            DefaultKey::Fixed(k) => Some(k.clone()),
            DefaultKey::File(p) => std::fs::read_to_string(p).ok().and_then(ApiKey::new),
        }
    }
}

/// Controller settings (from the command line).
#[derive(Clone, Debug)]
pub struct Settings {
    /// How often counters are refreshed (one account scan per interval).
    pub sync_interval: Duration,
    /// Reconciles running at once per watched namespace set.
    pub concurrency: u16,
    /// Namespaces to watch; empty means all.
    pub namespaces: Vec<String>,
    /// Label selector on Inboxes (sharding).
    pub selector: Option<String>,
    /// The default API key.
    pub default_key: DefaultKey,
    /// Name reported on events (`reportingController`).
    pub reporter: String,
    /// Instance reported on events (pod name).
    pub instance: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            sync_interval: Duration::from_secs(60),
            concurrency: 16,
            namespaces: Vec::new(),
            selector: None,
            default_key: DefaultKey::None,
            reporter: "inbox-operator".into(),
            instance: None,
        }
    }
}

/// Failures that fail a reconcile pass (AgentSend failures while converging become
/// conditions instead; see [`plan`]). Each variant has a short metric label.
#[derive(Debug, Error)]
pub enum Error {
    /// The Kubernetes API refused or failed a call; retried with backoff.
    #[error("Kubernetes API call failed: {0}")]
    Kube(#[from] kube::Error),
    /// Adding the finalizer failed.
    #[error("could not add the finalizer: {0}")]
    AddFinalizer(#[source] kube::Error),
    /// Removing the finalizer failed.
    #[error("could not remove the finalizer: {0}")]
    RemoveFinalizer(#[source] kube::Error),
    /// An AgentSend call failed during deletion; the finalizer stays until it succeeds.
    #[error("{0}")]
    Api(#[from] ApiError),
    /// Credentials are missing; the finalizer stays until they exist (or the policy is Orphan).
    #[error("{0}")]
    CredentialsMissing(String),
    /// The object lacks a namespace, name or UID (never true for an object from the API).
    #[error("Inbox has no namespace, name or UID")]
    MissingObjectKey,
    /// A bug: the planner did not converge, or a step reached the wrong executor.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// Metric label of a pass that found no API key.
    pub const CREDENTIALS_MISSING: &'static str = "credentials_missing";

    /// Short, stable label for `inbox_operator_reconcile_errors_total`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) | Error::AddFinalizer(_) | Error::RemoveFinalizer(_) => "kubernetes",
            Error::Api(e) => e.reason(),
            Error::CredentialsMissing(_) => Self::CREDENTIALS_MISSING,
            Error::MissingObjectKey => "invalid_object",
            Error::Internal(_) => "internal",
        }
    }
}

/// kube's finalizer helper wraps the pass's error; unwrap it so the error policy and the
/// metrics see the real cause.
impl From<kube::runtime::finalizer::Error<Error>> for Error {
    fn from(e: kube::runtime::finalizer::Error<Error>) -> Self {
        use kube::runtime::finalizer::Error as F;
        match e {
            F::ApplyFailed(inner) | F::CleanupFailed(inner) => inner,
            F::AddFinalizer(e) => Error::AddFinalizer(e),
            F::RemoveFinalizer(e) => Error::RemoveFinalizer(e),
            F::UnnamedObject => Error::MissingObjectKey,
            F::InvalidFinalizer => Error::Internal("invalid finalizer name".into()),
        }
    }
}

/// State shared by every reconcile.
pub struct Context {
    pub(crate) client: Client,
    pub(crate) api: AgentSendClient,
    pub(crate) settings: Settings,
    pub(crate) accounts: Accounts,
    pub(crate) recorder: EventRecorder,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) inbox_stores: Vec<Store<Inbox>>,
    pub(crate) secret_stores: HashMap<Option<String>, Store<Secret>>,
    pub(crate) failures: Mutex<HashMap<ObjectRef<Inbox>, u32>>,
}

impl Context {
    /// Consecutive failures of this Inbox.
    pub(crate) fn failures(&self, obj: &ObjectRef<Inbox>) -> u32 {
        let f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        f.get(obj).copied().unwrap_or(0)
    }

    /// Consecutive failures of this Inbox, then count one more.
    pub(crate) fn bump_failures(&self, obj: &ObjectRef<Inbox>) -> u32 {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let n = f.entry(obj.clone()).or_insert(0);
        let before = *n;
        *n = n.saturating_add(1);
        before
    }

    /// The Inbox reconciled fine: reset its backoff.
    pub(crate) fn reset_failures(&self, obj: &ObjectRef<Inbox>) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(obj);
    }

    /// Whether the Inbox stores cover the whole cluster (all namespaces, no selector).
    pub(crate) fn sees_whole_cluster(&self) -> bool {
        self.settings.namespaces.is_empty() && self.settings.selector.is_none()
    }

    /// The managed-Secret cache for a namespace.
    pub(crate) fn secret_store(&self, ns: &str) -> Option<&Store<Secret>> {
        self.secret_stores
            .get(&Some(ns.to_string()))
            .or_else(|| self.secret_stores.get(&None))
    }
}

/// Label selector of the Secrets this operator writes.
pub fn managed_secret_selector() -> String {
    format!("{}={}", crd::LABEL_MANAGED_BY, crd::MANAGED_BY)
}

/// Drop `managedFields` from cached objects: they are large and never read here.
fn slim<K: Resource>(mut obj: K) -> K {
    obj.meta_mut().managed_fields = None;
    obj
}

/// Publishes Kubernetes Events through kube's [`Recorder`], one Recorder per window of
/// [`EventRecorder::WINDOW`] events. kube's Recorder keeps every event it published in the
/// last 6 minutes (to fold repeats into a series) — about 3 KB each, most of the heap after a
/// bulk apply of thousands of Inboxes (see BENCHMARKS.md). Starting a new Recorder every
/// window bounds that cache; repeats are still folded within a window.
pub(crate) struct EventRecorder {
    client: Client,
    reporter: Reporter,
    current: Mutex<(Recorder, usize)>,
}

impl EventRecorder {
    /// Events published by one Recorder before the next one starts.
    const WINDOW: usize = 500;

    fn new(client: Client, reporter: Reporter) -> Self {
        let recorder = Recorder::new(client.clone(), reporter.clone());
        EventRecorder {
            client,
            reporter,
            current: Mutex::new((recorder, 0)),
        }
    }

    /// Publish `ev` about `reference`.
    pub(crate) async fn publish(
        &self,
        ev: &kube::runtime::events::Event,
        reference: &k8s_openapi::api::core::v1::ObjectReference,
    ) -> Result<(), kube::Error> {
        let recorder = {
            let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
            if current.1 >= Self::WINDOW {
                *current = (Recorder::new(self.client.clone(), self.reporter.clone()), 0);
            }
            current.1 += 1;
            current.0.clone()
        };
        recorder.publish(ev, reference).await
    }
}

/// Backoff between failed watch attempts: like kube's default (client-go's) but capped at
/// 10 s instead of 30 s, so the caches catch up within seconds once an API server outage ends
/// (a stale cache holds every write of the affected Inboxes back). Resets after a quiet minute.
fn watch_backoff() -> kube::runtime::utils::ResetTimerBackoff<watcher::ExponentialBackoff> {
    let exponential = backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(500))
        .with_max_delay(Duration::from_secs(10))
        .with_factor(2.0)
        .with_jitter()
        .without_max_times();
    kube::runtime::utils::ResetTimerBackoff::new(exponential.into(), Duration::from_secs(60))
}

/// Calls `on_ready` once every observed watch stream has finished its first list.
struct CacheSync {
    remaining: std::sync::atomic::AtomicUsize,
    on_ready: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl CacheSync {
    fn new(streams: usize, on_ready: impl FnOnce() + Send + 'static) -> Arc<Self> {
        let sync = Arc::new(CacheSync {
            remaining: streams.into(),
            on_ready: Mutex::new(Some(Box::new(on_ready))),
        });
        if streams == 0 {
            sync.stream_synced();
        }
        sync
    }

    /// An inspector for one watch stream: counts its first `InitDone` (relists are ignored).
    fn observer<K>(self: &Arc<Self>) -> impl FnMut(&watcher::Event<K>) + use<K> {
        let sync = self.clone();
        let mut seen = false;
        move |event| {
            if !seen && matches!(event, watcher::Event::InitDone) {
                seen = true;
                if sync
                    .remaining
                    .fetch_sub(1, std::sync::atomic::Ordering::AcqRel)
                    == 1
                {
                    sync.stream_synced();
                }
            }
        }
    }

    fn stream_synced(&self) {
        let f = self.on_ready.lock().ok().and_then(|mut f| f.take());
        if let Some(f) = f {
            tracing::info!("watch caches synced; ready");
            f();
        }
    }
}

/// Run the controller until `shutdown` resolves; in-flight reconciles finish first.
/// `on_ready` is called once every watch cache has synced.
pub async fn run(
    client: Client,
    api: AgentSendClient,
    settings: Settings,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    on_ready: impl FnOnce() + Send + 'static,
) {
    let scopes: Vec<Option<String>> = if settings.namespaces.is_empty() {
        vec![None]
    } else {
        settings.namespaces.iter().cloned().map(Some).collect()
    };
    // Lists are consistent reads (not `any_semantic`, served from the API server's watch
    // cache): after an API server restart a cached list could hand back a resourceVersion the
    // new watch cache no longer serves, and every relist would then fail with 410 Gone.
    let mut inbox_wc = watcher::Config::default();
    if let Some(sel) = &settings.selector {
        inbox_wc = inbox_wc.labels(sel);
    }
    let secret_wc = watcher::Config::default().labels(&managed_secret_selector());

    struct Scope {
        ns: Option<String>,
        inbox_reader: Store<Inbox>,
        inbox_stream: futures::stream::BoxStream<'static, Result<Inbox, watcher::Error>>,
        secret_reader: Store<Secret>,
        secret_stream: futures::stream::BoxStream<'static, Result<Secret, watcher::Error>>,
    }
    // Readiness: every watch cache has completed its first list. Observed on the streams
    // (not with `Store::wait_until_ready`, whose signal wakes only one waiter: the Controller's).
    let synced = CacheSync::new(scopes.len() * 2, on_ready);
    let mut built = Vec::new();
    for ns in scopes {
        let (inbox_api, secret_api): (Api<Inbox>, Api<Secret>) = match &ns {
            Some(n) => (
                Api::namespaced(client.clone(), n),
                Api::namespaced(client.clone(), n),
            ),
            None => (Api::all(client.clone()), Api::all(client.clone())),
        };
        let (inbox_reader, inbox_writer) = reflector::store::<Inbox>();
        let inbox_stream = watcher(inbox_api, inbox_wc.clone())
            .backoff(watch_backoff())
            .inspect_ok(synced.observer())
            .modify(|i| {
                i.meta_mut().managed_fields = None;
            })
            .reflect(inbox_writer)
            .applied_objects()
            .boxed();
        let (secret_reader, secret_writer) = reflector::store::<Secret>();
        let secret_stream = watcher(secret_api, secret_wc.clone())
            .backoff(watch_backoff())
            .inspect_ok(synced.observer())
            .modify(|s| {
                s.meta_mut().managed_fields = None;
            })
            .reflect(secret_writer)
            .touched_objects()
            .map(|r| r.map(slim))
            .boxed();
        built.push(Scope {
            ns,
            inbox_reader,
            inbox_stream,
            secret_reader,
            secret_stream,
        });
    }

    let reporter = Reporter {
        controller: settings.reporter.clone(),
        instance: settings.instance.clone(),
    };
    let accounts = Accounts::new(api.clone(), settings.sync_interval);
    let ctx = Arc::new(Context {
        client: client.clone(),
        api,
        accounts: accounts.clone(),
        recorder: EventRecorder::new(client.clone(), reporter),
        metrics: metrics.clone(),
        inbox_stores: built.iter().map(|s| s.inbox_reader.clone()).collect(),
        secret_stores: built
            .iter()
            .map(|s| (s.ns.clone(), s.secret_reader.clone()))
            .collect(),
        failures: Mutex::new(HashMap::new()),
        settings: settings.clone(),
    });

    // Counter sync: one trigger channel per scope, routed by namespace.
    let (sync_tx, mut sync_rx) = mpsc::unbounded::<ObjectRef<Inbox>>();
    let mut scope_txs: Vec<(Option<String>, mpsc::UnboundedSender<ObjectRef<Inbox>>)> = Vec::new();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut controllers = Vec::new();
    for scope in built {
        let (tx, rx) = mpsc::unbounded::<ObjectRef<Inbox>>();
        scope_txs.push((scope.ns.clone(), tx));
        let mut stop = stop_rx.clone();
        // Credentials Secrets are the user's (not labelled): watch their metadata only, and
        // reconcile the Inboxes that reference one when it changes (key rotation).
        let cred_api: Api<kube::core::PartialObjectMeta<Secret>> = match &scope.ns {
            Some(n) => Api::namespaced(client.clone(), n),
            None => Api::all(client.clone()),
        };
        let cred_stream = watcher(
            cred_api,
            watcher::Config::default().labels(&format!(
                "{}!={}",
                crd::LABEL_MANAGED_BY,
                crd::MANAGED_BY
            )),
        )
        .backoff(watch_backoff())
        .touched_objects()
        .map(|r| r.map(slim));
        let cred_reader = scope.inbox_reader.clone();
        let ctrl = Controller::for_stream(scope.inbox_stream, scope.inbox_reader)
            .owns_stream(scope.secret_stream)
            .watches_stream(
                cred_stream,
                move |meta: kube::core::PartialObjectMeta<Secret>| {
                    let ns = meta.metadata.namespace.clone();
                    let name = meta.metadata.name.clone();
                    cred_reader
                        .state()
                        .into_iter()
                        .filter(|i| {
                            i.metadata.namespace == ns
                                && i.spec
                                    .credentials
                                    .as_ref()
                                    .map(|c| Some(&c.secret_ref.name))
                                    == Some(name.as_ref())
                        })
                        .map(|i| ObjectRef::from_obj(&*i))
                        .collect::<Vec<_>>()
                },
            )
            .reconcile_on(rx)
            .with_config(
                ControllerConfig::default()
                    .concurrency(settings.concurrency)
                    .debounce(Duration::from_millis(200)),
            )
            .graceful_shutdown_on(async move {
                let _ = stop.wait_for(|v| *v).await;
            })
            .run(execute::reconcile, execute::error_policy, ctx.clone())
            .for_each(|res| async move {
                if let Err(e) = res {
                    tracing::debug!(error = %e, "controller event");
                }
            });
        controllers.push(ctrl.boxed());
    }
    let router = tokio::spawn(async move {
        while let Some(obj) = sync_rx.next().await {
            let target = scope_txs
                .iter()
                .find(|(ns, _)| ns.is_none() || ns.as_deref() == obj.namespace.as_deref());
            if let Some((_, tx)) = target {
                let _ = tx.unbounded_send(obj);
            }
        }
    });
    let sync_metrics = metrics.clone();
    let sync = tokio::spawn(
        accounts.run_sync_loop(sync_tx, move || sync_metrics.counter_sync_succeeded()),
    );

    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutdown requested: finishing in-flight reconciles");
        let _ = stop_tx.send(true);
    });
    futures::future::join_all(controllers).map(|_| ()).await;
    sync.abort();
    router.abort();
    tracing::info!("controller stopped");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn ready_once_after_every_stream_first_lists() {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let sync = CacheSync::new(2, move || {
            c.fetch_add(1, Ordering::SeqCst);
        });
        let mut inboxes = sync.observer::<Inbox>();
        let mut secrets = sync.observer::<Secret>();
        inboxes(&watcher::Event::Init);
        inboxes(&watcher::Event::InitDone);
        // A relist of the same stream does not count as the other stream.
        inboxes(&watcher::Event::Init);
        inboxes(&watcher::Event::InitDone);
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        secrets(&watcher::Event::InitDone);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        secrets(&watcher::Event::InitDone);
        inboxes(&watcher::Event::InitDone);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
