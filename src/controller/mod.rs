//! The Inbox controller: wiring of watches, the reconcile loop and the counter sync.
//!
//! - [`plan`] decides every step of a pass (pure; table-tested), using the building blocks
//!   in [`decide`] and the status rendering in [`status`]; [`events`] names what it publishes.
//! - `execute` runs the steps: every Kubernetes and AgentSend call of a reconcile.
//! - [`accounts`] holds per-account state: the scan cache (one paginated scan per account per
//!   interval feeds every Inbox), the create gates and the binding registry.
//! - [`credentials`] decides which key an Inbox uses and whether its account lets it (pure);
//!   [`account_watch`] caches the accounts and follows their changes; [`in_use`] keeps the
//!   credentials-in-use finalizer on key Secrets and accounts; [`account_status`] writes the
//!   accounts' status (key check, bound and unclaimed inboxes, and from [`account_traffic`]
//!   the request rate and 429s) once per interval.
//! - [`watches`] sets up the cached watches; this module wires them into one kube-runtime
//!   Controller per watched scope, plus the counter-sync loop.

pub mod account_status;
pub mod account_traffic;
pub mod account_watch;
pub mod accounts;
pub mod cached_inbox;
pub mod claims;
pub mod credentials;
pub mod decide;
pub mod events;
mod execute;
pub mod in_use;
pub mod key_secrets;
pub mod outputs;
pub mod owned_cache;
pub mod plan;
pub mod proof;
pub mod proof_store;
pub mod references;
pub mod refresh;
pub mod status;
pub mod watches;
pub mod written;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::channel::mpsc;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Client;
use kube::core::PartialObjectMeta;
use kube::runtime::WatchStreamExt;
use kube::runtime::controller::{Config as ControllerConfig, Controller};
use kube::runtime::events::Reporter;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use thiserror::Error;
use tokio_util::sync::CancellationToken;

use watches::CacheSync;

use crate::agentsend::{AgentSendClient, ApiError, ApiKey};
use crate::crd::{self, Inbox};
use crate::leader::WriteGate;
use crate::metrics::Metrics;
use cached_inbox::{CachedInbox, cached_ref};

pub use accounts::{BindingRegistry, CreateGates, ScanCache};
pub use watches::harden as harden_kube_config;

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
    /// Reconciles running at once per watched scope: one Controller runs per entry of
    /// `namespaces` (or one for all namespaces), each with this concurrency.
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
    /// AgentSend and Kubernetes writes happen only while this is open: always without
    /// leader election, while the lease renewal is confirmed with it ([`crate::leader`]).
    pub gate: WriteGate,
    /// The operator's namespace: where `ClusterAccount` key Secrets live.
    pub operator_namespace: String,
    /// Which account status this instance writes (`--account-status`).
    pub account_status: account_status::StatusWriter,
    /// The longest wait between retries of a failing Inbox (`--max-retry-delay`): caps the
    /// exponential backoff, never AgentSend's `Retry-After`.
    pub max_retry_delay: Duration,
    /// Told when the controller stops on its own (a task it needs ended): `/healthz` then
    /// fails.
    pub health: Option<Arc<crate::server::Health>>,
    /// The shortest time between two refresh scans (`agentsend.io/refresh`) of one account.
    pub refresh_min_interval: Duration,
    /// The proof key ([`proof`]); `None`: read (or made) at start from the Secret
    /// `inbox-operator-proof-key` in `operator_namespace`.
    pub proof_key: Option<proof::ProofKey>,
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
            gate: WriteGate::open(),
            operator_namespace: "default".into(),
            account_status: account_status::StatusWriter::All,
            max_retry_delay: decide::MAX_RETRY_DELAY,
            proof_key: None,
            health: None,
            refresh_min_interval: refresh::MIN_INTERVAL,
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
    /// A failed pass whose retry delay the planner chose (it also holds back passes over the
    /// same inputs until then).
    #[error("{cause}")]
    Backoff {
        /// What failed.
        cause: Box<Error>,
        /// When to try again.
        retry: Duration,
    },
    /// This instance has not confirmed a lease renewal within the renew deadline (or lost
    /// the lease): the pass stopped before writing and is retried after [`Error::NOT_LEADING_RETRY`].
    #[error("not leading: the leader lease renewal is not confirmed, so this pass does not write")]
    NotLeading,
    /// Backing off from a failed deletion attempt over the same inputs (not a new failure).
    #[error("backing off from the last failed attempt; next attempt in {0:?}")]
    Held(Duration),
    /// The Account/ClusterAccount caches have not listed yet (check the operator may list
    /// and watch them: accounts, clusteraccounts).
    #[error(
        "the Account and ClusterAccount caches have not listed yet; check the operator's RBAC for accounts and clusteraccounts"
    )]
    AccountsNotSynced,
    /// Deleting: the credentials do not reach the bound inbox's account.
    #[error("{0}")]
    AccountChanged(String),
    /// The cluster-wide one-owner check could not be made.
    #[error("{0}")]
    OwnershipUnverified(String),
    /// The proof key could not be read or made.
    #[error("{0}")]
    ProofKey(#[from] proof_store::ProofKeyError),
}

impl Error {
    /// Metric label of a pass that found no API key.
    pub const CREDENTIALS_MISSING: &'static str = "credentials_missing";

    /// When a pass stopped by [`Error::NotLeading`] is retried.
    pub const NOT_LEADING_RETRY: Duration = Duration::from_secs(2);

    /// Short, stable label for `inbox_operator_reconcile_errors_total`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) | Error::AddFinalizer(_) | Error::RemoveFinalizer(_) => "kubernetes",
            Error::Api(e) => e.reason(),
            Error::CredentialsMissing(_) => Self::CREDENTIALS_MISSING,
            Error::MissingObjectKey => "invalid_object",
            Error::Internal(_) => "internal",
            Error::Backoff { cause, .. } => cause.metric_label(),
            Error::Held(_) => "held",
            Error::NotLeading => "not_leading",
            Error::AccountsNotSynced => "accounts_not_synced",
            Error::AccountChanged(_) => "account_changed",
            Error::OwnershipUnverified(_) => "ownership_unverified",
            Error::ProofKey(_) => "proof_key",
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
    pub(crate) scans: ScanCache,
    pub(crate) refreshes: refresh::RefreshQueue,
    pub(crate) create_gates: CreateGates,
    pub(crate) bindings: BindingRegistry,
    pub(crate) recorder: events::EventRecorder,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) inbox_stores: Vec<Store<CachedInbox>>,
    /// Who names which inbox ID, per Inbox cache (fed by the same watch events).
    pub(crate) inbox_claims: Vec<claims::ClaimIndex>,
    /// The same for the cluster-wide claims index, when there is one.
    pub(crate) cluster_claims: claims::ClaimIndex,
    /// Every Inbox's claim cluster-wide, when `inbox_stores` do not cover the cluster, and
    /// whether it has listed yet.
    pub(crate) claims_index: Option<(Store<PartialObjectMeta<Inbox>>, Arc<AtomicBool>)>,
    pub(crate) secret_stores: HashMap<Option<String>, owned_cache::OwnedCache>,
    /// The metadata of the ConfigMaps this operator owns, per watched scope.
    pub(crate) config_map_stores: HashMap<Option<String>, owned_cache::OwnedCache>,
    /// Namespace metadata per watched scope (the default deletion policy).
    pub(crate) namespace_stores: HashMap<Option<String>, Store<watches::NamespaceMeta>>,
    pub(crate) failures: Mutex<HashMap<ObjectRef<Inbox>, u32>>,
    pub(crate) holds: Mutex<HashMap<ObjectRef<Inbox>, (plan::Hold, std::time::Instant)>>,
    /// This process's last write to each Inbox, until the cache shows it.
    pub(crate) last_writes: written::LastWrites,
    /// Asks the controller to reconcile an Inbox (counter sync, released bindings).
    pub(crate) wake: mpsc::UnboundedSender<ObjectRef<Inbox>>,
    /// The Account and ClusterAccount caches.
    pub(crate) accounts: account_watch::AccountCaches,
    /// True once every watch cache has listed (decisions that conclude "nobody uses it"
    /// wait for it).
    pub(crate) caches_synced: tokio::sync::watch::Receiver<bool>,
    /// The proof key: what tells the operator's marks and bindings from a tenant's.
    pub(crate) proof: proof::ProofKey,
    /// The UIDs of the Inboxes this process let past a `maxInboxesPerNamespace` quota that
    /// still hold (or are about to create) an inbox: they hold their slot even before the
    /// cache shows their mark.
    pub(crate) quota_slots: Mutex<std::collections::HashSet<String>>,
}

/// What the controller's start hands every reconcile besides the caches of its scopes.
struct Wiring {
    /// Asks the controller to reconcile an Inbox.
    wake: mpsc::UnboundedSender<ObjectRef<Inbox>>,
    /// The Account and ClusterAccount caches.
    accounts: account_watch::AccountCaches,
    /// The proof key.
    proof: proof::ProofKey,
}

impl Context {
    fn new(
        client: Client,
        api: AgentSendClient,
        settings: Settings,
        metrics: Arc<Metrics>,
        scopes: &[Scope],
        wiring: Wiring,
    ) -> Self {
        let Wiring {
            wake,
            accounts,
            proof,
        } = wiring;
        let reporter = Reporter {
            controller: settings.reporter.clone(),
            instance: settings.instance.clone(),
        };
        Context {
            scans: ScanCache::new(api.clone(), settings.sync_interval),
            refreshes: refresh::RefreshQueue::with_min_interval(settings.refresh_min_interval),
            create_gates: CreateGates::default(),
            bindings: BindingRegistry::default(),
            recorder: events::EventRecorder::new(client.clone(), reporter),
            client,
            api,
            metrics,
            inbox_stores: scopes.iter().map(|s| s.inboxes.clone()).collect(),
            inbox_claims: scopes.iter().map(|s| s.claims.clone()).collect(),
            cluster_claims: claims::ClaimIndex::default(),
            claims_index: None,
            secret_stores: scopes
                .iter()
                .map(|s| (s.ns.clone(), s.secrets.clone()))
                .collect(),
            config_map_stores: scopes
                .iter()
                .map(|s| (s.ns.clone(), s.config_maps.clone()))
                .collect(),
            namespace_stores: scopes
                .iter()
                .map(|s| (s.ns.clone(), s.namespaces.clone()))
                .collect(),
            failures: Mutex::new(HashMap::new()),
            holds: Mutex::new(HashMap::new()),
            last_writes: written::LastWrites::default(),
            wake,
            accounts,
            // Replaced by the controller's own signal before any reader runs.
            caches_synced: tokio::sync::watch::channel(false).1,
            proof,
            quota_slots: Mutex::default(),
            settings,
        }
    }

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

    /// The failed attempt this Inbox still backs off from, with the time left.
    pub(crate) fn hold(&self, obj: &ObjectRef<Inbox>) -> Option<plan::Hold> {
        let mut holds = self.holds.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        holds.retain(|_, (_, until)| *until > now);
        holds.get(obj).map(|(h, until)| plan::Hold {
            remaining: until.saturating_duration_since(now),
            ..h.clone()
        })
    }

    /// Hold back passes over the inputs of `hold` for its `remaining` time; `None` clears.
    pub(crate) fn set_hold(&self, obj: &ObjectRef<Inbox>, hold: Option<plan::Hold>) {
        let mut holds = self.holds.lock().unwrap_or_else(|p| p.into_inner());
        match hold {
            Some(h) => {
                let until = std::time::Instant::now()
                    .checked_add(h.remaining)
                    .unwrap_or_else(std::time::Instant::now);
                holds.insert(obj.clone(), (h, until));
            }
            None => {
                holds.remove(obj);
            }
        }
    }

    /// An Inbox left the watch, however it went (deleted, its finalizer removed by hand, moved
    /// out of this shard's selector): drop what this process keeps for it — its metric
    /// series, failure count, hold, counter-sync registration and quota slot.
    pub(crate) fn forget_gone(&self, gone: &CachedInbox) {
        let (ns, name) = (
            gone.metadata.namespace.as_deref().unwrap_or_default(),
            gone.metadata.name.as_deref().unwrap_or_default(),
        );
        let obj = ObjectRef::<Inbox>::new(name).within(ns);
        self.metrics.forget_inbox(ns, name);
        self.reset_failures(&obj);
        self.set_hold(&obj, None);
        self.bindings.unregister(&obj);
        if let Some(uid) = gone.metadata.uid.as_deref() {
            self.quota_slots
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(uid);
        }
    }

    /// Whether the Inbox stores cover the whole cluster (all namespaces, no selector).
    pub(crate) fn sees_whole_cluster(&self) -> bool {
        self.settings.namespaces.is_empty() && self.settings.selector.is_none()
    }

    /// `Err(NotLeading)` unless this instance may write now (see [`Settings::gate`]).
    pub(crate) fn may_write(&self) -> Result<(), Error> {
        if self.settings.gate.is_open() {
            Ok(())
        } else {
            Err(Error::NotLeading)
        }
    }

    /// The namespace-metadata cache that holds namespace `ns`.
    pub(crate) fn namespace_store(&self, ns: &str) -> Option<&Store<watches::NamespaceMeta>> {
        of_scope(&self.namespace_stores, ns)
    }

    /// The managed-ConfigMap cache for a namespace.
    pub(crate) fn config_map_store(&self, ns: &str) -> Option<&owned_cache::OwnedCache> {
        of_scope(&self.config_map_stores, ns)
    }

    /// The managed-Secret cache for a namespace.
    pub(crate) fn secret_store(&self, ns: &str) -> Option<&owned_cache::OwnedCache> {
        of_scope(&self.secret_stores, ns)
    }
}

/// The entry of the watched scope that holds namespace `ns`: its own, else the cluster-wide
/// one (key `None`).
fn of_scope<'a, T>(per_scope: &'a HashMap<Option<String>, T>, ns: &str) -> Option<&'a T> {
    per_scope
        .get(&Some(ns.to_string()))
        .or_else(|| per_scope.get(&None))
}

/// Label selector of the Secrets this operator writes.
pub fn managed_secret_selector() -> String {
    format!("{}={}", crd::LABEL_MANAGED_BY, crd::MANAGED_BY)
}

/// One watched scope (a namespace, or all of them): its caches and their event streams.
struct Scope {
    ns: Option<String>,
    inboxes: Store<CachedInbox>,
    /// The claims of the Inboxes in `inboxes`, by inbox ID.
    claims: claims::ClaimIndex,
    inbox_events: BoxStream<'static, Result<CachedInbox, watcher::Error>>,
    /// The Inboxes deleted: each may free a quota slot for a refused one.
    deleted_inboxes: BoxStream<'static, Result<CachedInbox, watcher::Error>>,
    secrets: owned_cache::OwnedCache,
    secret_events: BoxStream<'static, Result<PartialObjectMeta<Secret>, watcher::Error>>,
    config_maps: owned_cache::OwnedCache,
    config_map_events: BoxStream<'static, Result<PartialObjectMeta<ConfigMap>, watcher::Error>>,
    namespaces: Store<watches::NamespaceMeta>,
    namespace_events: BoxStream<'static, Result<watches::NamespaceMeta, watcher::Error>>,
}

impl Scope {
    /// Start the cached watches of one scope: Inboxes (by `--selector`; each event pings
    /// `references_changed`, as the key Secrets they name may have changed) and the metadata
    /// of the Secrets this operator manages (by label). Lists are consistent reads (not `any_semantic`, served from the API
    /// server's watch cache): after an API server restart a cached list could hand back a
    /// resourceVersion the new watch cache no longer serves, and every relist would then
    /// fail with 410 Gone.
    fn watch(
        client: &Client,
        ns: Option<String>,
        settings: &Settings,
        synced: &Arc<CacheSync>,
        references_changed: Arc<tokio::sync::Notify>,
        proof: &proof::ProofKey,
    ) -> Scope {
        let proof = proof.clone();
        let mut inbox_config = watches::watch_config();
        if let Some(sel) = &settings.selector {
            inbox_config = inbox_config.labels(sel);
        }
        let inbox_api = watches::scoped_api::<Inbox>(client, ns.as_deref());
        let secret_api = watches::scoped_api::<PartialObjectMeta<Secret>>(client, ns.as_deref());
        let (inboxes, inbox_events) = watches::cached(
            watcher(inbox_api, inbox_config).map_ok(cached_inbox::from_watched),
            synced,
        );
        let (secrets, secret_events) =
            watches::owned_metadata(watches::owned_watch(secret_api), synced);
        let config_map_api =
            watches::scoped_api::<PartialObjectMeta<ConfigMap>>(client, ns.as_deref());
        let (config_maps, config_map_events) =
            watches::owned_metadata(watches::owned_watch(config_map_api), synced);
        let (namespaces, namespace_events) = watches::namespaces(client, ns.as_deref());
        let (deleted, deleted_inboxes) = mpsc::unbounded();
        let claims = claims::ClaimIndex::default();
        let index = claims.clone();
        let mut references = references::ReferenceTracker::default();
        let inbox_events = inbox_events.inspect_ok(move |e| {
            index.apply(e, |i: &CachedInbox| proof.binding(i).map(|b| b.id));
            if references.changed_by(e) {
                references_changed.notify_one();
            }
            if let watcher::Event::Delete(i) = e {
                let _ = deleted.unbounded_send(Ok(i.clone()));
            }
        });
        Scope {
            namespaces,
            namespace_events: watches::without_errors(namespace_events, "namespaces").boxed(),
            ns,
            inboxes,
            deleted_inboxes: deleted_inboxes.boxed(),
            claims,
            inbox_events: watches::without_errors(inbox_events.applied_objects(), "Inboxes")
                .boxed(),
            secrets,
            secret_events: watches::without_errors(
                secret_events.touched_objects(),
                "managed Secrets",
            )
            .boxed(),
            config_maps,
            config_map_events: watches::without_errors(
                config_map_events.touched_objects(),
                "managed ConfigMaps",
            )
            .boxed(),
        }
    }

    /// The kube-runtime Controller of this scope: reconciles on Inbox changes, on changes of
    /// the Secrets they own, on namespace changes (labels an account's namespace selector
    /// reads), on a deleted Inbox (the refused Inboxes of its namespace: a quota slot may be
    /// free) and on `triggers` (counter sync, key Secret and account changes), until `stop` is
    /// cancelled (in-flight reconciles finish first).
    fn controller(
        self,
        ctx: Arc<Context>,
        triggers: mpsc::UnboundedReceiver<ObjectRef<Inbox>>,
        stop: CancellationToken,
    ) -> BoxFuture<'static, ()> {
        let in_namespace = self.inboxes.clone();
        let waiting = self.inboxes.clone();
        let quotas = ctx.accounts.cluster.clone();
        let forget = ctx.clone();
        let config = ControllerConfig::default()
            .concurrency(ctx.settings.concurrency)
            .debounce(Duration::from_millis(200));
        Controller::for_stream(self.inbox_events, self.inboxes)
            .owns_stream(self.secret_events)
            .owns_stream(self.config_map_events)
            .watches_stream(self.deleted_inboxes, move |gone: CachedInbox| {
                forget.forget_gone(&gone);
                // Its credentials may have lost their last user, whether or not it ran a
                // cleanup pass (an admin may have removed its finalizer): release them now.
                let used = forget.accounts.may_use(&gone);
                if !used.is_empty() {
                    let (ctx, uid) = (forget.clone(), gone.metadata.uid.clone());
                    tokio::spawn(async move {
                        in_use::release_unused(&ctx, &used, uid.as_deref()).await;
                    });
                }
                if !account_watch::any_quota(&quotas) {
                    return Vec::new();
                }
                account_watch::freed_slot_waiters(&waiting.state(), &gone)
            })
            .watches_stream(self.namespace_events, move |m: watches::NamespaceMeta| {
                watches::inboxes_in_namespace(&in_namespace.state(), m.metadata.name.as_deref())
            })
            .reconcile_on(triggers.map(cached_ref))
            .with_config(config)
            .graceful_shutdown_on(stop.cancelled_owned())
            .run(execute::reconcile, execute::error_policy, ctx)
            .for_each(|res| async move {
                if let Err(e) = res {
                    tracing::debug!(error = %e, "controller event");
                }
            })
            .boxed()
    }
}

/// The namespaces to watch, `None` standing for all.
fn namespaces(settings: &Settings) -> Vec<Option<String>> {
    if settings.namespaces.is_empty() {
        vec![None]
    } else {
        settings.namespaces.iter().cloned().map(Some).collect()
    }
}

/// Counter-sync triggers go to the controller whose scope holds the Inbox.
async fn route_triggers(
    mut triggers: mpsc::UnboundedReceiver<ObjectRef<Inbox>>,
    routes: Vec<(Option<String>, mpsc::UnboundedSender<ObjectRef<Inbox>>)>,
) {
    while let Some(obj) = triggers.next().await {
        let target = routes
            .iter()
            .find(|(ns, _)| ns.is_none() || ns.as_deref() == obj.namespace.as_deref());
        if let Some((_, tx)) = target {
            let _ = tx.unbounded_send(obj);
        }
    }
}

/// How the controllers' run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Supervised {
    /// They finished (shutdown, lost lease).
    Finished,
    /// A task they need ended first (a panic, or a loop that returned): they were stopped.
    TaskEnded,
}

/// Run `controllers` until they finish; if one of `tasks` (which run until `stop`) ends
/// first, stop everything instead of going on without it — counters that never sync, key
/// Secrets nobody follows — and say so.
async fn supervise(
    controllers: impl std::future::Future<Output = impl Sized>,
    tasks: &mut [tokio::task::JoinHandle<Option<()>>],
    stop: &CancellationToken,
) -> Supervised {
    let mut controllers = std::pin::pin!(controllers);
    let first_ended = futures::future::select_all(tasks.iter_mut());
    tokio::select! {
        _ = &mut controllers => Supervised::Finished,
        (result, index, _) = first_ended => {
            // Tasks end with `stop` (a shutdown): that is the normal way out.
            let on_its_own = !stop.is_cancelled();
            if on_its_own {
                tracing::error!(task = index, panicked = result.is_err(), "a controller task ended on its own; stopping the controller (the process restarts)");
                stop.cancel();
            }
            controllers.await;
            if on_its_own { Supervised::TaskEnded } else { Supervised::Finished }
        }
    }
}

/// The proof key: from the settings, else read (or made) from its Secret, retried with
/// backoff until it works or `stop` (`None`).
async fn proof_key(
    client: &Client,
    settings: &Settings,
    stop: &CancellationToken,
) -> Option<proof::ProofKey> {
    if let Some(k) = &settings.proof_key {
        return Some(k.clone());
    }
    let mut failures = 0;
    loop {
        match proof_store::load_or_create(client, &settings.operator_namespace).await {
            Ok(k) => return Some(k),
            Err(e) => {
                let delay = decide::backoff(failures, rand::random(), Duration::from_secs(60));
                failures += 1;
                tracing::error!(error = %e, retry_s = delay.as_secs_f64(), "no proof key yet; nothing is reconciled until there is one");
                tokio::select! {
                    () = stop.cancelled() => return None,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// Keep the cluster-wide claims index in `ctx` up to date until `stop`. Without cluster-wide
/// list/watch permission its watch keeps failing (with backoff), and bindings are checked
/// against the watch cache and per-decision lists instead.
fn keep_claims_index(client: &Client, ctx: &mut Context, stop: &CancellationToken) {
    let listed = Arc::new(AtomicBool::new(false));
    let (store, events) = watches::claims_index(client, listed.clone());
    ctx.claims_index = Some((store, listed));
    let claims = ctx.cluster_claims.clone();
    let proof = ctx.proof.clone();
    let events = events.inspect_ok(move |e| {
        claims.apply(e, |i: &PartialObjectMeta<Inbox>| {
            claims::proven_id(&proof, i)
        })
    });
    let index = events.for_each(|e| async move {
        if let Err(e) = e {
            tracing::debug!(error = %e, "cluster-wide Inbox index");
        }
    });
    tokio::spawn(stop.clone().run_until_cancelled_owned(index));
}

/// The account and key Secret tasks until `stop`: following account changes, the one watch
/// set of key Secrets (those Inboxes' credentials and accounts name; re-evaluated whenever
/// `references_changed` is pinged; followed once `synced`), and writing account status.
fn spawn_account_tasks(
    ctx: &Arc<Context>,
    changes: BoxStream<'static, account_watch::AccountChange>,
    references_changed: Arc<tokio::sync::Notify>,
    stop: &CancellationToken,
) -> tokio::task::JoinHandle<Option<()>> {
    let mut sources: Vec<key_secrets::ReferenceSource> = ctx
        .inbox_stores
        .iter()
        .map(|s| key_secrets::inbox_references(s.clone()))
        .collect();
    sources.push(ctx.accounts.references());
    let secrets = key_secrets::watch_referenced(
        ctx.client.clone(),
        sources,
        references_changed.clone(),
        stop.clone(),
    );
    let tasks = futures::future::join3(
        account_watch::follow(ctx.clone(), changes, references_changed),
        key_secrets::follow(ctx.clone(), secrets),
        account_status::run(ctx.clone()),
    );
    tokio::spawn(stop.clone().run_until_cancelled_owned(tasks.map(|_| ())))
}

/// A token cancelled when `shutdown` resolves (in-flight reconciles then finish).
fn cancelled_on(
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> CancellationToken {
    let stop = CancellationToken::new();
    let stopper = stop.clone();
    tokio::spawn(async move {
        if stopper.run_until_cancelled(shutdown).await.is_some() {
            tracing::info!("shutdown requested: finishing in-flight reconciles");
            stopper.cancel();
        }
    });
    stop
}

/// The readiness signal of `streams` watch streams: the counter each stream reports its first
/// list to, and a receiver that turns true (once `on_ready` has run) when all have.
fn readiness(
    streams: usize,
    on_ready: impl FnOnce() + Send + 'static,
) -> (Arc<CacheSync>, tokio::sync::watch::Receiver<bool>) {
    let (ready, rx) = tokio::sync::watch::channel(false);
    let sync = CacheSync::new(streams, move || {
        let _ = ready.send(true);
        on_ready();
    });
    (sync, rx)
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
    let stop = cancelled_on(shutdown);
    let Some(proof) = proof_key(&client, &settings, &stop).await else {
        return;
    };
    // Readiness: every watch cache has completed its first list. Observed on the streams
    // (not with `Store::wait_until_ready`, whose signal wakes only one waiter: the Controller's).
    let namespaces = namespaces(&settings);
    // Per scope: Inboxes, managed Secrets and ConfigMaps, Accounts; plus the ClusterAccounts.
    let (synced, synced_rx) = readiness(namespaces.len() * 4 + 1, on_ready);
    let (accounts, account_changes) = account_watch::AccountCaches::watch(
        &client,
        &namespaces,
        settings.operator_namespace.clone(),
        &synced,
    );
    let references_changed = Arc::new(tokio::sync::Notify::new());
    let scopes: Vec<Scope> = namespaces
        .into_iter()
        .map(|ns| {
            let changed = references_changed.clone();
            Scope::watch(&client, ns, &settings, &synced, changed, &proof)
        })
        .collect();
    let (sync_tx, sync_rx) = mpsc::unbounded();
    let mut ctx = Context::new(
        client.clone(),
        api,
        settings,
        metrics.clone(),
        &scopes,
        Wiring {
            wake: sync_tx.clone(),
            accounts,
            proof,
        },
    );
    ctx.caches_synced = synced_rx;
    if !ctx.sees_whole_cluster() {
        keep_claims_index(&client, &mut ctx, &stop);
    }
    let ctx = Arc::new(ctx);
    let mut routes = Vec::new();
    let mut controllers = Vec::new();
    for scope in scopes {
        let (tx, rx) = mpsc::unbounded();
        routes.push((scope.ns.clone(), tx));
        controllers.push(scope.controller(ctx.clone(), rx, stop.clone()));
    }
    let on_synced = move || metrics.counter_sync_succeeded();
    let background = [
        spawn_account_tasks(&ctx, account_changes, references_changed, &stop),
        tokio::spawn(
            stop.clone()
                .run_until_cancelled_owned(route_triggers(sync_rx, routes)),
        ),
        tokio::spawn(stop.clone().run_until_cancelled_owned(refresh::run(
            ctx.refreshes.clone(),
            ctx.scans.clone(),
            sync_tx.clone(),
        ))),
        tokio::spawn(
            stop.clone()
                .run_until_cancelled_owned(accounts::run_counter_sync(
                    ctx.scans.clone(),
                    ctx.bindings.clone(),
                    sync_tx,
                    on_synced,
                )),
        ),
    ];
    run_to_the_end(&ctx, controllers, background, &stop).await;
}

/// Run the scopes' controllers under supervision of the tasks they need, then wind down:
/// pending events sent, every task stopped. A task that ended on its own fails `/healthz`.
async fn run_to_the_end(
    ctx: &Context,
    controllers: Vec<BoxFuture<'static, ()>>,
    mut background: [tokio::task::JoinHandle<Option<()>>; 4],
    stop: &CancellationToken,
) {
    let controllers = futures::future::join_all(controllers);
    if supervise(controllers, &mut background, stop).await == Supervised::TaskEnded
        && let Some(health) = &ctx.settings.health
    {
        health.set_stopped();
    }
    ctx.recorder.drain(events::EventRecorder::DRAIN).await;
    stop.cancel();
    for task in background {
        // One that ended already may have been awaited by the supervision.
        if !task.is_finished() {
            let _ = task.await;
        }
    }
    tracing::info!("controller stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A task the controllers need that ends on its own (a panic) stops them and is
    /// reported; a shutdown that ends the controllers first is a normal finish.
    #[tokio::test]
    async fn a_task_that_dies_stops_the_controllers() {
        let stop = CancellationToken::new();
        let waiting = stop.clone();
        let mut tasks = [
            tokio::spawn(
                stop.clone()
                    .run_until_cancelled_owned(std::future::pending::<()>()),
            ),
            tokio::spawn(async { panic!("a background loop panicked") }),
        ];
        let controllers = async move { waiting.cancelled().await };
        let ended = supervise(controllers, &mut tasks, &stop).await;
        assert_eq!(ended, Supervised::TaskEnded);
        assert!(stop.is_cancelled(), "the controllers were stopped");

        let stop = CancellationToken::new();
        let mut tasks = [tokio::spawn(
            stop.clone()
                .run_until_cancelled_owned(std::future::pending::<()>()),
        )];
        let finished = supervise(async {}, &mut tasks, &stop).await;
        assert_eq!(finished, Supervised::Finished);

        // A shutdown ends the tasks and the controllers together: a normal finish.
        let stop = CancellationToken::new();
        let waiting = stop.clone();
        let mut tasks = [tokio::spawn(
            stop.clone()
                .run_until_cancelled_owned(std::future::pending::<()>()),
        )];
        stop.cancel();
        let shutdown = supervise(waiting.cancelled_owned(), &mut tasks, &stop).await;
        assert_eq!(shutdown, Supervised::Finished);
    }

    /// `/healthz` fails once the controller stopped on its own.
    #[test]
    fn health_fails_once_the_controller_stopped() {
        let health = crate::server::Health::default();
        health.set_ready(true);
        assert!(health.is_alive());
        health.set_stopped();
        assert!(!health.is_alive() && !health.is_ready());
    }
}
