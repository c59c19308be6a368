//! The account caches — `Account`s (per watched scope) and `ClusterAccount`s (cluster-wide) —
//! what credentials resolution reads from them, the Inboxes an account change wakes, and the
//! key Secrets the accounts name (watched by name with the Inboxes' credentials Secrets, in
//! [`crate::controller::accounts::key_secrets`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use kube::api::Api;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher::{self, watcher};
use kube::{Client, ResourceExt};

use crate::api::account::{Account, ClusterAccount, FINALIZER_CREDENTIALS_IN_USE};
use crate::api::common::AccountKind;
use crate::api::inbox::{Inbox, InboxView};
use crate::controller::accounts::credentials::{AccountInfo, InUse};
use crate::controller::accounts::key_secrets::ReferenceSource;
use crate::controller::cache::inbox::CachedInbox;
use crate::controller::cache::watches::{self, CacheSync};
use crate::controller::error::Error;

/// How long a reconcile waits for the caches' first list before failing (retried).
pub(crate) const SYNC_WAIT: Duration = Duration::from_secs(30);

/// An account that changed (or was listed, or deleted).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AccountChange {
    /// An `Account`.
    Account {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// A `ClusterAccount`.
    ClusterAccount {
        /// Its name.
        name: String,
    },
}

/// The account caches. Cheap to clone: the caches are shared.
#[derive(Clone)]
pub struct AccountCaches {
    /// `Account`s, one cache per watched scope.
    pub accounts: Vec<Store<Account>>,
    /// Every `ClusterAccount`.
    pub cluster: Store<ClusterAccount>,
    /// Where `ClusterAccount` key Secrets live.
    pub operator_namespace: String,
    synced: tokio::sync::watch::Receiver<bool>,
}

impl AccountCaches {
    /// Start the account watches (they count towards `synced`); returns the caches and the
    /// stream of changes, which must be polled for the caches to fill.
    pub(crate) fn watch(
        client: &Client,
        namespaces: &[Option<String>],
        operator_namespace: String,
        synced: &Arc<CacheSync>,
    ) -> (Self, BoxStream<'static, AccountChange>) {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let own = CacheSync::new(namespaces.len() + 1, move || {
            let _ = tx.send(true);
        });
        let mut stores = Vec::new();
        let mut streams = Vec::new();
        for ns in namespaces {
            let api = watches::scoped_api::<Account>(client, ns.as_deref());
            let (store, events) = watches::cached(watcher(api, watches::watch_config()), synced);
            stores.push(store);
            let events = changed(events.inspect_ok(own.observer()));
            let changes = watches::without_errors(events, "Accounts").filter_map(|a| async move {
                let a = a.ok()?;
                Some(AccountChange::Account {
                    namespace: a.namespace()?,
                    name: a.name_any(),
                })
            });
            streams.push(changes.boxed());
        }
        let api: Api<ClusterAccount> = Api::all(client.clone());
        let (cluster, events) = watches::cached(watcher(api, watches::watch_config()), synced);
        let events = changed(events.inspect_ok(own.observer()));
        let changes =
            watches::without_errors(events, "ClusterAccounts").filter_map(|a| async move {
                Some(AccountChange::ClusterAccount {
                    name: a.ok()?.name_any(),
                })
            });
        streams.push(changes.boxed());
        let caches = AccountCaches {
            accounts: stores,
            cluster,
            operator_namespace,
            synced: rx,
        };
        (caches, futures::stream::select_all(streams).boxed())
    }

    /// Wait until every account cache has listed once (a decision on a cache still empty
    /// could pick the wrong key).
    pub async fn wait_synced(&self) -> Result<(), Error> {
        match watches::ready_within(&self.synced, SYNC_WAIT).await {
            true => Ok(()),
            false => Err(Error::AccountsNotSynced),
        }
    }

    fn account(&self, namespace: &str, name: &str) -> Option<Arc<Account>> {
        let r = ObjectRef::new(name).within(namespace);
        self.accounts.iter().find_map(|s| s.get(&r))
    }

    fn cluster_account(&self, name: &str) -> Option<Arc<ClusterAccount>> {
        self.cluster.get(&ObjectRef::new(name))
    }

    /// The account `inbox`'s `spec.accountRef` names, if it exists.
    pub fn referenced<I: InboxView>(&self, inbox: &I) -> Option<AccountInfo> {
        let r = inbox.spec().account_ref.as_ref()?;
        let ns = inbox.meta().namespace.as_deref().unwrap_or_default();
        match r.kind {
            AccountKind::Account => self
                .account(ns, &r.name)
                .map(|a| AccountInfo::namespaced(&r.name, ns, &a.spec.secret_ref)),
            AccountKind::ClusterAccount => self
                .cluster_account(&r.name)
                .map(|a| AccountInfo::cluster(&r.name, &a.spec, &self.operator_namespace)),
        }
    }

    /// The `ClusterAccount`s marked default, oldest first.
    pub fn defaults(&self) -> Vec<AccountInfo> {
        crate::controller::accounts::credentials::defaults(
            &self.cluster.state(),
            &self.operator_namespace,
        )
    }

    /// Whether the account `target` names carries the in-use finalizer (`None`: not an
    /// account, or not in the cache).
    pub fn carries_finalizer(&self, target: &InUse) -> Option<bool> {
        let has = |f: &[String]| f.iter().any(|f| f == FINALIZER_CREDENTIALS_IN_USE);
        match target {
            InUse::Account { namespace, name } => {
                self.account(namespace, name).map(|a| has(a.finalizers()))
            }
            InUse::ClusterAccount { name } => {
                self.cluster_account(name).map(|a| has(a.finalizers()))
            }
            InUse::Secret { .. } => None,
        }
    }

    /// Whether the account `change` names is being deleted (and still cached).
    pub fn deleting(&self, change: &AccountChange) -> Option<InUse> {
        let (target, meta) = match change {
            AccountChange::Account { namespace, name } => (
                InUse::Account {
                    namespace: namespace.clone(),
                    name: name.clone(),
                },
                self.account(namespace, name).map(|a| a.metadata.clone()),
            ),
            AccountChange::ClusterAccount { name } => (
                InUse::ClusterAccount { name: name.clone() },
                self.cluster_account(name).map(|a| a.metadata.clone()),
            ),
        };
        meta.filter(|m| m.deletion_timestamp.is_some())
            .map(|_| target)
    }

    /// What `inbox` may use (see [`crate::controller::accounts::credentials::may_use`]).
    pub fn may_use<I: InboxView>(&self, inbox: &I) -> Vec<InUse> {
        let defaults = self.defaults();
        crate::controller::accounts::credentials::may_use(
            inbox,
            self.referenced(inbox).as_ref(),
            defaults.first(),
        )
    }

    /// The key Secrets the accounts name now, `(namespace, name)`, as a source of the key
    /// Secret watch set.
    pub fn references(&self) -> ReferenceSource {
        let (accounts, cluster) = (self.accounts.clone(), self.cluster.clone());
        let operator_namespace = self.operator_namespace.clone();
        Arc::new(move || {
            let namespaced = accounts
                .iter()
                .flat_map(|s| s.state())
                .filter_map(|a| Some((a.namespace()?, a.spec.secret_ref.name.clone())));
            let shared = cluster
                .state()
                .into_iter()
                .map(|a| (operator_namespace.clone(), a.spec.secret_ref.name.clone()));
            namespaced.chain(shared).collect()
        })
    }
}

/// What of an account its Inboxes depend on: spec (generation), the default annotation,
/// deletion. Status writes change none of it.
fn fingerprint<K: kube::Resource>(a: &K) -> u64 {
    use std::hash::{Hash, Hasher};
    let m = a.meta();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    m.generation.hash(&mut h);
    m.deletion_timestamp.is_some().hash(&mut h);
    m.annotations
        .as_ref()
        .and_then(|a| a.get(crate::api::account::ANNOTATION_DEFAULT_ACCOUNT))
        .hash(&mut h);
    h.finish()
}

/// The accounts of a watch stream that were deleted or changed in what their Inboxes depend
/// on ([`fingerprint`]): the account status writes do not wake every Inbox.
fn changed<K>(
    events: impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
) -> impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: kube::Resource + Send + 'static,
{
    let mut seen: HashMap<(Option<String>, String), u64> = HashMap::new();
    events.flat_map(move |e| {
        let out: Vec<Result<K, watcher::Error>> = match e {
            Err(e) => vec![Err(e)],
            Ok(watcher::Event::Apply(a) | watcher::Event::InitApply(a)) => {
                let key = (
                    a.meta().namespace.clone(),
                    a.meta().name.clone().unwrap_or_default(),
                );
                let print = fingerprint(&a);
                if seen.insert(key, print) == Some(print) {
                    vec![]
                } else {
                    vec![Ok(a)]
                }
            }
            Ok(watcher::Event::Delete(a)) => {
                seen.remove(&(
                    a.meta().namespace.clone(),
                    a.meta().name.clone().unwrap_or_default(),
                ));
                vec![Ok(a)]
            }
            Ok(_) => vec![],
        };
        futures::stream::iter(out)
    })
}

/// The Inboxes (among `inboxes`) an account change may concern: those naming the account,
/// and — a `ClusterAccount` may be (or have been) the default — those naming none.
pub fn affected(inboxes: &[Arc<CachedInbox>], change: &AccountChange) -> Vec<ObjectRef<Inbox>> {
    inboxes
        .iter()
        .filter(|i| {
            let r = i.spec.account_ref.as_ref();
            match change {
                AccountChange::Account { namespace, name } => {
                    i.metadata.namespace.as_deref() == Some(namespace.as_str())
                        && r.is_some_and(|r| r.kind == AccountKind::Account && &r.name == name)
                }
                AccountChange::ClusterAccount { name } => match r {
                    Some(r) => r.kind == AccountKind::ClusterAccount && &r.name == name,
                    None => i.spec.credentials.is_none(),
                },
            }
        })
        .map(|i| i.inbox_ref())
        .collect()
}

/// Whether any `ClusterAccount` sets `maxInboxesPerNamespace`: without one no Inbox waits for
/// a quota slot, and a deleted Inbox frees none (so [`freed_slot_waiters`], a walk over every
/// cached Inbox per deletion event — O(N²) per bulk delete —, is skipped).
pub fn any_quota(cluster: &Store<crate::api::account::ClusterAccount>) -> bool {
    cluster
        .state()
        .iter()
        .any(|a| a.spec.max_inboxes_per_namespace.is_some())
}

/// The Inboxes (among `inboxes`) a deleted Inbox `gone` may have freed a quota slot for:
/// the others of its namespace that an account refuses now (`AccountRefused`).
pub fn freed_slot_waiters(
    inboxes: &[Arc<CachedInbox>],
    gone: &CachedInbox,
) -> Vec<ObjectRef<CachedInbox>> {
    let refused = |i: &CachedInbox| {
        i.condition_reason(crate::api::inbox::condition::READY)
            == Some(crate::api::inbox::Reason::AccountRefused.as_str())
    };
    inboxes
        .iter()
        .filter(|i| {
            i.metadata.namespace == gone.metadata.namespace
                && i.metadata.uid != gone.metadata.uid
                && refused(i)
        })
        .map(|i| ObjectRef::from_obj(&**i))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::common::AccountRef;
    use crate::api::common::SecretKeyRef;
    use crate::api::inbox::{CredentialsSpec, InboxSpec};

    fn inbox(
        ns: &str,
        name: &str,
        r: Option<(AccountKind, &str)>,
        creds: bool,
    ) -> Arc<CachedInbox> {
        let mut i = Inbox::new(
            name,
            InboxSpec {
                account_ref: r.map(|(kind, n)| {
                    Box::new(AccountRef {
                        kind,
                        name: n.into(),
                    })
                }),
                credentials: creds.then(|| {
                    Box::new(CredentialsSpec {
                        secret_ref: SecretKeyRef {
                            name: "k".into(),
                            key: "apiKey".into(),
                        },
                    })
                }),
                ..Default::default()
            },
        );
        i.metadata.namespace = Some(ns.into());
        Arc::new(i.into())
    }

    #[test]
    fn a_deleted_inbox_wakes_the_refused_inboxes_of_its_namespace() {
        let with_ready = |ns: &str, name: &str, reason: Option<&str>| {
            let mut i = inbox(ns, name, None, false).to_inbox();
            i.metadata.uid = Some(format!("uid-{ns}-{name}"));
            i.status = reason.map(|r| crate::api::inbox::InboxStatus {
                conditions: vec![crate::api::inbox::Condition {
                    type_: "Ready".into(),
                    status: "False".into(),
                    reason: r.into(),
                    ..Default::default()
                }],
                ..Default::default()
            });
            Arc::new(CachedInbox::from(i))
        };
        let all = [
            with_ready("a", "over-quota", Some("AccountRefused")),
            with_ready("a", "ready", None),
            with_ready("a", "failing", Some("ApiUnavailable")),
            with_ready("b", "other-namespace", Some("AccountRefused")),
        ];
        let gone = with_ready("a", "gone", None);
        let woken: Vec<String> = freed_slot_waiters(&all, &gone)
            .into_iter()
            .map(|o| o.name)
            .collect();
        assert_eq!(woken, ["over-quota"]);
        let itself = with_ready("a", "over-quota", Some("AccountRefused"));
        assert!(freed_slot_waiters(&all, &itself).is_empty(), "not itself");
    }

    #[test]
    fn an_account_change_wakes_the_inboxes_it_may_concern() {
        use AccountKind::*;
        let all = [
            inbox("a", "by-account", Some((Account, "acct")), false),
            inbox("b", "same-name-other-ns", Some((Account, "acct")), false),
            inbox("a", "by-cluster", Some((ClusterAccount, "shared")), false),
            inbox("a", "other-cluster", Some((ClusterAccount, "other")), false),
            inbox("a", "implicit", None, false),
            inbox("a", "own-secret", None, true),
        ];
        let names = |c: AccountChange| -> Vec<String> {
            affected(&all, &c).into_iter().map(|o| o.name).collect()
        };
        for (change, want) in [
            (
                AccountChange::Account {
                    namespace: "a".into(),
                    name: "acct".into(),
                },
                vec!["by-account"],
            ),
            (
                AccountChange::ClusterAccount {
                    name: "shared".into(),
                },
                vec!["by-cluster", "implicit"],
            ),
            (
                AccountChange::Account {
                    namespace: "c".into(),
                    name: "acct".into(),
                },
                vec![],
            ),
        ] {
            assert_eq!(names(change.clone()), want, "{change:?}");
        }
    }
}
