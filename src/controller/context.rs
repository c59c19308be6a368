//! What every reconcile shares: the settings from the command line ([`Settings`]) and the
//! [`Context`] — the clients, the caches of each watched scope, the per-account state and the
//! per-Inbox bookkeeping (failures, holds, quota slots).

use parking_lot::Mutex;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use futures::channel::mpsc;
use kube::Client;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};

use crate::agentsend::{AgentSendClient, ApiKey};
use crate::api::inbox::Inbox;
use crate::controller::cache::inbox::CachedInbox;
use crate::metrics::Metrics;
use crate::runtime::leader::WriteGate;

use crate::controller::remote::bindings::BindingRegistry;
use crate::controller::remote::create_gates::CreateGates;
use crate::controller::remote::scans::ScanCache;

use crate::controller::accounts::credentials::Peer;
use crate::controller::accounts::in_use::InUseFinalizers;
use crate::controller::accounts::{status as account_status, watch as account_watch};
use crate::controller::cache::inboxes::InboxCaches;
use crate::controller::cache::{claims, owned as owned_cache, watches, written};
use crate::controller::error::Stop;
use crate::controller::inbox::plan::backoff;
use crate::controller::inbox::{events, plan};
use crate::controller::ownership::proof;
use crate::controller::remote::refresh;

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
    /// leader election, while the lease renewal is confirmed with it ([`crate::runtime::leader`]).
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
    pub health: Option<Arc<crate::runtime::server::Health>>,
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
            max_retry_delay: backoff::MAX_RETRY_DELAY,
            proof_key: None,
            health: None,
            refresh_min_interval: refresh::MIN_INTERVAL,
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

impl Context {
    /// Consecutive failures of this Inbox.
    pub(crate) fn failures(&self, obj: &ObjectRef<Inbox>) -> u32 {
        let f = self.failures.lock();
        f.get(obj).copied().unwrap_or(0)
    }

    /// Consecutive failures of this Inbox, then count one more.
    pub(crate) fn bump_failures(&self, obj: &ObjectRef<Inbox>) -> u32 {
        let mut f = self.failures.lock();
        let n = f.entry(obj.clone()).or_insert(0);
        let before = *n;
        *n = n.saturating_add(1);
        before
    }

    /// The Inbox reconciled fine: reset its backoff.
    pub(crate) fn reset_failures(&self, obj: &ObjectRef<Inbox>) {
        self.failures.lock().remove(obj);
    }

    /// The failed attempt this Inbox still backs off from, with the time left.
    pub(crate) fn hold(&self, obj: &ObjectRef<Inbox>) -> Option<plan::Hold> {
        let mut holds = self.holds.lock();
        let now = std::time::Instant::now();
        holds.retain(|_, (_, until)| *until > now);
        holds.get(obj).map(|(h, until)| plan::Hold {
            remaining: until.saturating_duration_since(now),
            ..h.clone()
        })
    }

    /// Hold back passes over the inputs of `hold` for its `remaining` time; `None` clears.
    pub(crate) fn set_hold(&self, obj: &ObjectRef<Inbox>, hold: Option<plan::Hold>) {
        let mut holds = self.holds.lock();
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
            self.quota_slots.lock().remove(uid);
        }
    }

    /// Every Inbox cache, as a handle of its own.
    pub(crate) fn inbox_caches(&self) -> InboxCaches {
        InboxCaches::new(self.inbox_stores.clone(), self.caches_synced.clone())
    }

    /// The credentials-in-use finalizer, over this context's caches.
    pub(crate) fn in_use(&self) -> InUseFinalizers {
        InUseFinalizers::new(
            self.client.clone(),
            self.inbox_caches(),
            self.accounts.clone(),
            self.bindings.clone(),
        )
    }

    /// The other Inboxes of `inbox`'s namespace, as the quota counts them.
    pub(crate) fn peers(&self, inbox: &Inbox) -> Vec<Peer> {
        let ns = inbox.metadata.namespace.as_deref();
        self.inbox_caches()
            .all()
            .iter()
            .filter(|i| {
                i.metadata.namespace.as_deref() == ns && i.metadata.uid != inbox.metadata.uid
            })
            .map(|i| Peer::of(&**i, &self.proof))
            .collect()
    }

    /// Whether the Inbox stores cover the whole cluster (all namespaces, no selector).
    pub(crate) fn sees_whole_cluster(&self) -> bool {
        self.settings.namespaces.is_empty() && self.settings.selector.is_none()
    }

    /// `Err(NotLeading)` unless this instance may write now (see [`Settings::gate`]).
    pub(crate) fn may_write(&self) -> Result<(), Stop> {
        if self.settings.gate.is_open() {
            Ok(())
        } else {
            Err(Stop::NotLeading)
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
