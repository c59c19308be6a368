//! Watch set-up: one cached watch per resource and scope (Inboxes in a reflector store, the
//! metadata of managed Secrets and ConfigMaps in an [`OwnedCache`]), the readiness signal
//! once every cache has listed.

use parking_lot::Mutex;
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::{Stream, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ObjectMeta};
use kube::core::PartialObjectMeta;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, Resource};

use crate::api::inbox::{self, Inbox};
use crate::controller::cache::inbox::CachedInbox;
use crate::controller::cache::owned::OwnedCache;

/// How long the API server keeps one watch request open (seconds). Shorter than kube's
/// default (290 s) so that an idle watch always sends something within the client's read
/// timeout ([`KUBE_READ_TIMEOUT`]); the watcher then resumes from its last resourceVersion.
pub const WATCH_TIMEOUT_SECS: u32 = 20;

/// The client's read timeout: no Kubernetes request — a LIST during an API server restart, a
/// status write to a server that went away without closing the connection — can hang a
/// reconcile (and with it a controller slot) forever. kube's default is none.
pub const KUBE_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Bound every Kubernetes request of a client built from `config` (see [`KUBE_READ_TIMEOUT`]).
pub fn harden(config: &mut kube::Config) {
    config.read_timeout = Some(KUBE_READ_TIMEOUT);
    // Count from when a request is sent, not from when its pooled connection went idle.
    config.reset_reader_on_write = true;
}

/// The watch settings every watch of the operator starts from.
pub(crate) fn watch_config() -> watcher::Config {
    watcher::Config::default().timeout(WATCH_TIMEOUT_SECS)
}

/// An API for `K` in one namespace, or in all.
pub(crate) fn scoped_api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Cache what the watch `events` lists, and count its first list towards readiness — once
/// the cache holds it, so that nothing woken by readiness reads a cache still empty. Returns
/// the cache and the stream of watch events, which must be polled for the cache to fill.
pub(crate) fn cached<K>(
    events: impl Stream<Item = WatchResult<K>> + Send + 'static,
    synced: &Arc<CacheSync>,
) -> (
    Store<K>,
    impl Stream<Item = WatchResult<K>> + Send + 'static,
)
where
    K: Resource + Clone + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone,
{
    let (reader, writer) = reflector::store::<K>();
    let stream = events
        .backoff(backoff())
        .reflect(writer)
        .inspect_ok(synced.observer());
    (reader, stream)
}

/// The metadata-only watch of the objects of kind `K` this operator owns (by label): the
/// Secrets, the ConfigMaps (`spec.configMap`). Never their data.
pub(crate) fn owned_watch<K>(
    api: Api<PartialObjectMeta<K>>,
) -> impl Stream<Item = WatchResult<PartialObjectMeta<K>>> + Send + 'static
where
    K: Resource<DynamicType = ()> + Clone + Debug + Send + Sync + 'static,
{
    watcher(
        api,
        watch_config().labels(&crate::controller::cache::watches::managed_secret_selector()),
    )
}

/// Fill the compact cache of what decisions read of owned objects ([`OwnedCache`]) from the
/// watch `events` ([`owned_watch`]), and count its first list towards readiness once the
/// cache holds it (as [`cached`] does). Returns the cache and the stream of watch events,
/// which must be polled for the cache to fill.
pub(crate) fn owned_metadata<K>(
    events: impl Stream<Item = WatchResult<PartialObjectMeta<K>>> + Send + 'static,
    synced: &Arc<CacheSync>,
) -> (
    OwnedCache,
    impl Stream<Item = WatchResult<PartialObjectMeta<K>>> + Send + 'static,
)
where
    K: Resource<DynamicType = ()> + Clone + Debug + Send + Sync + 'static,
{
    let cache = OwnedCache::default();
    let fill = cache.clone();
    let stream = events
        .backoff(backoff())
        .inspect_ok(move |e| fill.apply(e))
        .inspect_ok(synced.observer());
    (cache, stream)
}

/// A namespace's metadata alone.
pub(crate) type NamespaceMeta = PartialObjectMeta<Namespace>;

/// The metadata of the watched namespaces (every namespace, or the one `namespace` names),
/// trimmed to the `agentsend.io/default-deletion-policy` annotation: the cache the namespace
/// default is read from, and the changes that re-reconcile a namespace's Inboxes. Not counted
/// for readiness: without permission to watch, each read is one GET instead.
pub(crate) fn namespaces(
    client: &Client,
    namespace: Option<&str>,
) -> (
    Store<NamespaceMeta>,
    impl Stream<Item = Result<NamespaceMeta, watcher::Error>> + Send + 'static,
) {
    let api: Api<NamespaceMeta> = Api::all(client.clone());
    let mut config = watch_config();
    if let Some(ns) = namespace {
        config = config.fields(&format!("metadata.name={ns}"));
    }
    let (reader, writer) = reflector::store();
    let stream = watcher(api, config)
        .backoff(backoff())
        .modify(|m: &mut NamespaceMeta| {
            let default = m
                .metadata
                .annotations
                .as_mut()
                .and_then(|a| a.remove_entry(inbox::ANNOTATION_DEFAULT_DELETION_POLICY));
            m.metadata = ObjectMeta {
                name: m.metadata.name.take(),
                resource_version: m.metadata.resource_version.take(),
                annotations: default.map(|kv| [kv].into()),
                ..ObjectMeta::default()
            };
        })
        .reflect(writer)
        .touched_objects();
    (reader, stream)
}

/// The Inboxes (among `inboxes`) in the namespace `name`.
pub fn inboxes_in_namespace(
    inboxes: &[Arc<CachedInbox>],
    name: Option<&str>,
) -> Vec<ObjectRef<CachedInbox>> {
    inboxes
        .iter()
        .filter(|i| name.is_some() && i.metadata.namespace.as_deref() == name)
        .map(|i| ObjectRef::from_obj(&**i))
        .collect()
}

/// An Inbox's metadata alone.
pub(crate) type InboxMeta = PartialObjectMeta<Inbox>;

/// One item of a watch stream.
type WatchResult<K> = Result<watcher::Event<K>, watcher::Error>;

/// Every Inbox in the cluster, trimmed to what the one-owner rule reads (name, namespace,
/// UID, creation time, the `agentsend.io/inbox-id` annotation): kept by an operator whose own
/// caches do not cover the cluster (`--namespace`, a `--selector` shard), so that a claim
/// outside its scope is seen on every path without a list call per pass. `synced` turns true
/// at its first complete list (it never does without cluster-wide list/watch permission).
pub(crate) fn claims_index(
    client: &Client,
    synced: Arc<AtomicBool>,
) -> (
    Store<InboxMeta>,
    impl Stream<Item = WatchResult<InboxMeta>> + Send + 'static,
) {
    let api: Api<InboxMeta> = Api::all(client.clone());
    let (reader, writer) = reflector::store();
    let stream = watcher(api, watch_config())
        .backoff(backoff())
        .modify(|m: &mut InboxMeta| trim_to_claim(&mut m.metadata))
        .reflect(writer)
        .inspect_ok(move |e| {
            if matches!(e, watcher::Event::InitDone) {
                synced.store(true, Ordering::Release);
            }
        });
    (reader, stream)
}

/// Keep only the metadata a claim needs: the binding annotation and its proof (a claim
/// counts only with the proof, checked where it is read).
fn trim_to_claim(meta: &mut ObjectMeta) {
    let kept: std::collections::BTreeMap<String, String> = meta
        .annotations
        .take()
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| k == inbox::ANNOTATION_INBOX_ID || k == inbox::ANNOTATION_INBOX_ID_PROOF)
        .collect();
    *meta = ObjectMeta {
        name: meta.name.take(),
        namespace: meta.namespace.take(),
        uid: meta.uid.take(),
        resource_version: meta.resource_version.take(),
        creation_timestamp: meta.creation_timestamp.take(),
        annotations: (!kept.is_empty()).then_some(kept),
        ..ObjectMeta::default()
    };
}

/// Keep a watch stream's errors from the Controller (they are logged here). Each watch backs
/// off on its own ([`backoff`]); kube's Controller, given an error by any of its input
/// streams, backs off *all* of them — counter-sync wake-ups included — for up to a minute,
/// so after an API server outage nothing would be reconciled for that long.
pub(crate) fn without_errors<K: Send + 'static>(
    stream: impl Stream<Item = WatchItem<K>> + Send + 'static,
    what: &'static str,
) -> impl Stream<Item = WatchItem<K>> + Send + 'static {
    stream.filter(move |item| {
        if let Err(e) = item {
            tracing::debug!(error = %e, watch = what, "watch error; the watch retries with backoff");
        }
        std::future::ready(item.is_ok())
    })
}

/// One object (or error) of a watch stream.
type WatchItem<K> = Result<K, watcher::Error>;

/// Backoff between failed watch attempts: like kube's default (client-go's) but capped at
/// 10 s (5 s plus up to 100 % jitter) instead of 30 s, so the caches catch up within seconds once an API server outage ends
/// (a stale cache holds every write of the affected Inboxes back). Resets after a quiet minute.
pub(crate) fn backoff() -> kube::runtime::utils::ResetTimerBackoff<watcher::ExponentialBackoff> {
    let exponential = backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(500))
        .with_max_delay(Duration::from_secs(5))
        .with_factor(2.0)
        .with_jitter()
        .without_max_times();
    kube::runtime::utils::ResetTimerBackoff::new(exponential.into(), Duration::from_secs(60))
}

/// Whether `ready` (a readiness signal) turns true within `limit`; false when it does not, or
/// when its sender is gone.
pub(crate) async fn ready_within(
    ready: &tokio::sync::watch::Receiver<bool>,
    limit: Duration,
) -> bool {
    let mut rx = ready.clone();
    matches!(
        tokio::time::timeout(limit, rx.wait_for(|ready| *ready)).await,
        Ok(Ok(_))
    )
}

/// Calls `on_ready` once every observed watch stream has finished its first list.
pub(crate) struct CacheSync {
    remaining: std::sync::atomic::AtomicUsize,
    on_ready: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl CacheSync {
    pub(crate) fn new(streams: usize, on_ready: impl FnOnce() + Send + 'static) -> Arc<Self> {
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
    pub(crate) fn observer<K>(self: &Arc<Self>) -> impl FnMut(&watcher::Event<K>) + use<K> {
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
        let f = self.on_ready.lock().take();
        if let Some(f) = f {
            tracing::info!("watch caches synced; ready");
            f();
        }
    }
}

/// Label selector of the Secrets this operator writes.
pub fn managed_secret_selector() -> String {
    format!("{}={}", inbox::LABEL_MANAGED_BY, inbox::MANAGED_BY)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn the_claims_index_keeps_only_what_a_claim_needs() {
        let mut meta = ObjectMeta {
            name: Some("a".into()),
            namespace: Some("ns".into()),
            uid: Some("u".into()),
            labels: Some([("team".to_string(), "x".to_string())].into()),
            annotations: Some(
                [
                    (inbox::ANNOTATION_INBOX_ID.to_string(), "inb_1".to_string()),
                    ("big".to_string(), "x".repeat(1000)),
                ]
                .into(),
            ),
            finalizers: Some(vec!["f".into()]),
            ..ObjectMeta::default()
        };
        trim_to_claim(&mut meta);
        assert_eq!(meta.name.as_deref(), Some("a"));
        assert_eq!(meta.uid.as_deref(), Some("u"));
        assert_eq!(
            meta.annotations,
            Some([(inbox::ANNOTATION_INBOX_ID.to_string(), "inb_1".to_string())].into())
        );
        assert!(meta.labels.is_none() && meta.finalizers.is_none());
        let mut unbound = ObjectMeta::default();
        trim_to_claim(&mut unbound);
        assert!(unbound.annotations.is_none());
    }

    #[test]
    fn ready_once_after_every_stream_first_lists() {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let sync = CacheSync::new(2, move || {
            c.fetch_add(1, Ordering::SeqCst);
        });
        let mut inboxes = sync.observer::<Inbox>();
        let mut secrets = sync.observer::<k8s_openapi::api::core::v1::Secret>();
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

    /// What a readiness callback saw of a cache: filled in by `on_ready`.
    type Seen = Arc<Mutex<Option<bool>>>;

    /// A one-stream readiness signal whose callback records whether `holds` (reading the
    /// cache put in the returned slot) is true at that moment.
    fn recording_sync<C: Send + Sync + 'static>(
        holds: fn(&C) -> bool,
    ) -> (Arc<CacheSync>, Arc<std::sync::OnceLock<C>>, Seen) {
        let slot = Arc::new(std::sync::OnceLock::<C>::new());
        let seen: Seen = Arc::default();
        let (s, r) = (slot.clone(), seen.clone());
        let sync = CacheSync::new(1, move || {
            *r.lock() = Some(s.get().is_some_and(holds));
        });
        (sync, slot, seen)
    }

    /// A first list of one object.
    fn first_list<K>(object: K) -> impl Stream<Item = WatchResult<K>> + Send + 'static
    where
        K: Send + 'static,
    {
        futures::stream::iter([
            Ok(watcher::Event::Init),
            Ok(watcher::Event::InitApply(object)),
            Ok(watcher::Event::InitDone),
        ])
    }

    #[tokio::test]
    async fn a_cache_already_holds_its_first_list_when_readiness_fires() {
        // Readiness wakes work that reads the caches at once (releasing the key Secret of a
        // namespace being deleted): a cache still empty then would look like "nobody uses it".
        let (sync, slot, seen) = recording_sync(|s: &Store<Inbox>| s.state().len() == 1);
        let (store, events) = cached(
            first_list((*super::testing::inbox("ns", "a", None)).clone()),
            &sync,
        );
        slot.set(store).ok();
        events.for_each(|_| async {}).await;
        assert_eq!(*seen.lock(), Some(true));

        let (sync, slot, seen) = recording_sync(|c: &OwnedCache| c.get("ns", "s").is_some());
        let mut secret = PartialObjectMeta::<k8s_openapi::api::core::v1::Secret>::default();
        secret.metadata.namespace = Some("ns".into());
        secret.metadata.name = Some("s".into());
        // Owned by an Inbox: only such objects are cached.
        secret.metadata.owner_references = Some(vec![
            k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                api_version: "agentsend.io/v1alpha1".into(),
                kind: "Inbox".into(),
                name: "a".into(),
                uid: "uid-a".into(),
                ..Default::default()
            },
        ]);
        let (cache, events) = owned_metadata(first_list(secret), &sync);
        slot.set(cache).ok();
        events.for_each(|_| async {}).await;
        assert_eq!(*seen.lock(), Some(true));
    }
}

/// Fixtures for the tests of the modules that read the Inbox cache.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::Arc;

    use crate::api::common::SecretKeyRef;
    use crate::api::inbox::{CredentialsSpec, Inbox, InboxSpec};

    /// An Inbox in `ns` using the credentials Secret `creds` (if any); shared by the
    /// key-Secret watch tests.
    pub(crate) fn inbox(ns: &str, name: &str, creds: Option<&str>) -> Arc<Inbox> {
        let mut i = Inbox::new(
            name,
            InboxSpec {
                credentials: creds.map(|c| {
                    Box::new(CredentialsSpec {
                        secret_ref: SecretKeyRef {
                            name: c.into(),
                            key: "apiKey".into(),
                        },
                    })
                }),
                ..Default::default()
            },
        );
        i.metadata.namespace = Some(ns.into());
        Arc::new(i)
    }
}
