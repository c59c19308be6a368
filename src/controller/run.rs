//! The controller's start: one kube-runtime Controller per watched scope over the cached
//! watches, the triggers that wake Inboxes (owned objects, accounts, key Secrets, the counter
//! sync), the background tasks it needs (supervised: one that ends stops the controller), and
//! its wind-down.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
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
use tokio_util::sync::CancellationToken;

use crate::controller::cache::watches::CacheSync;

use crate::agentsend::AgentSendClient;
use crate::api::inbox::Inbox;
use crate::controller::cache::inbox::{CachedInbox, cached_ref};
use crate::metrics::Metrics;

use crate::controller::remote::bindings::BindingRegistry;
use crate::controller::remote::create_gates::CreateGates;
use crate::controller::remote::scans::ScanCache;

use crate::controller::accounts::follow::{self, Followers};
use crate::controller::accounts::key_secrets;
use crate::controller::accounts::status::StatusSources;
use crate::controller::accounts::{status as account_status, watch as account_watch};
use crate::controller::cache::inbox as cached_inbox;
use crate::controller::cache::references;
use crate::controller::cache::{claims, owned as owned_cache, watches, written};
use crate::controller::context::{Context, Settings};
use crate::controller::inbox::events;
use crate::controller::inbox::execute;
use crate::controller::inbox::plan::backoff;
use crate::controller::ownership::{key_store as proof_store, proof};
use crate::controller::remote::counter_sync::run_counter_sync;
use crate::controller::remote::refresh;

/// What the controller's start hands every reconcile besides the caches of its scopes.
struct Wiring {
    /// Asks the controller to reconcile an Inbox.
    wake: mpsc::UnboundedSender<ObjectRef<Inbox>>,
    /// The Account and ClusterAccount caches.
    accounts: account_watch::AccountCaches,
    /// The proof key.
    proof: proof::ProofKey,
}

/// The context of every reconcile, over the caches of `scopes`.
fn new_context(
    client: Client,
    api: AgentSendClient,
    settings: Settings,
    metrics: Arc<Metrics>,
    scopes: &[Scope],
    wiring: Wiring,
) -> Context {
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
                        ctx.in_use().release_unused(&used, uid.as_deref()).await;
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
                let delay = backoff::backoff(failures, rand::random(), Duration::from_secs(60));
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
    let followers = Followers {
        inboxes: ctx.inbox_caches(),
        accounts: ctx.accounts.clone(),
        in_use: ctx.in_use(),
        wake: ctx.wake.clone(),
    };
    let status = StatusSources {
        writer: ctx.settings.account_status,
        sync_interval: ctx.settings.sync_interval,
        client: ctx.client.clone(),
        api: ctx.api.clone(),
        scans: ctx.scans.clone(),
        accounts: ctx.accounts.clone(),
        inboxes: ctx.inbox_caches(),
        claims_index: ctx.claims_index.as_ref().map(|(index, _)| index.clone()),
        metrics: ctx.metrics.clone(),
        gate: ctx.settings.gate.clone(),
    };
    let tasks = futures::future::join3(
        follow::accounts(followers.clone(), changes, references_changed),
        follow::key_secrets(followers, secrets),
        account_status::run(status),
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
    let mut ctx = new_context(
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
        tokio::spawn(stop.clone().run_until_cancelled_owned(run_counter_sync(
            ctx.scans.clone(),
            ctx.bindings.clone(),
            sync_tx,
            on_synced,
        ))),
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
        let health = crate::runtime::server::Health::default();
        health.set_ready(true);
        assert!(health.is_alive());
        health.set_stopped();
        assert!(!health.is_alive() && !health.is_ready());
    }
}
