//! The one watch set of key Secrets — those Inboxes name in `spec.credentials` and those
//! `Account`s and `ClusterAccount`s name in `spec.secretRef`: one metadata-only watch per
//! namespace that holds a referenced Secret, passing on only the referenced names, started
//! and stopped as the set of references changes. (One watch per name, as before, let a
//! tenant start a watch per Inbox by naming a new Secret in each: the count of watches now
//! follows the namespaces, not what tenants write.)
//! So a rotated key reconciles its users promptly, and a key Secret being deleted loses its
//! in-use finalizer once nobody uses it, while the operator lists and watches no other Secret
//! of the user's and caches no Secret data.
//!
//! Where references come from is pluggable: a [`ReferenceSource`] is any function yielding
//! the `(namespace, name)` pairs to watch (the Inbox caches, the account caches), and whoever
//! feeds it pings the shared [`Notify`] when its answer may have changed.

use parking_lot::RwLock;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use futures::channel::mpsc;
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::api::inbox::{Inbox, InboxView};
use crate::controller::accounts::credentials::InUse;
use crate::controller::cache::inbox::{CachedInbox, inbox_ref};
use crate::controller::cache::watches;

/// A referenced Secret: `(namespace, name)`.
pub type SecretRef = (String, String);

/// Yields the Secrets to watch now. Called after every ping of the watch set's [`Notify`].
pub type ReferenceSource = Arc<dyn Fn() -> BTreeSet<SecretRef> + Send + Sync>;

/// The credentials Secrets the Inboxes in `store` reference (always in their own namespace).
pub fn inbox_references(store: Store<CachedInbox>) -> ReferenceSource {
    Arc::new(move || {
        store
            .state()
            .iter()
            .filter_map(|i| {
                let c = i.spec.credentials.as_ref()?;
                Some((i.namespace()?, c.secret_ref.name.clone()))
            })
            .collect()
    })
}

/// The referenced Secret names, per namespace: one watch each.
pub fn by_namespace(refs: &BTreeSet<SecretRef>) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (ns, name) in refs {
        out.entry(ns.clone()).or_default().insert(name.clone());
    }
    out
}

/// What to change in the running watches to match `wanted`: the watches to start and the
/// ones to stop.
pub fn diff<T: Ord + Clone>(running: &BTreeSet<T>, wanted: &BTreeSet<T>) -> (Vec<T>, Vec<T>) {
    (
        wanted.difference(running).cloned().collect(),
        running.difference(wanted).cloned().collect(),
    )
}

/// The names one namespace's watch passes on (updated as references change).
type Names = Arc<RwLock<BTreeSet<String>>>;

/// One item of the merged key-Secret watch.
pub(crate) type Item = Result<PartialObjectMeta<Secret>, watcher::Error>;

/// Keep one metadata watch per namespace holding a Secret that `sources` reference,
/// re-evaluated whenever `changed` is notified, until `stop`. Returns the merged stream of
/// touched referenced Secrets.
pub fn watch_referenced(
    client: Client,
    sources: Vec<ReferenceSource>,
    changed: Arc<Notify>,
    stop: CancellationToken,
) -> impl Stream<Item = Item> + Send + 'static {
    let (tx, rx) = mpsc::unbounded();
    let until = stop.clone();
    let manage = async move {
        let mut running: HashMap<String, (CancellationToken, Names)> = HashMap::new();
        loop {
            let refs: BTreeSet<SecretRef> = sources.iter().flat_map(|s| s()).collect();
            let wanted = by_namespace(&refs);
            let namespaces = wanted.keys().cloned().collect();
            let (_, stop_now) = diff(&running.keys().cloned().collect(), &namespaces);
            for ns in stop_now {
                if let Some((token, _)) = running.remove(&ns) {
                    token.cancel();
                }
            }
            for (ns, names) in wanted {
                if let Some((_, current)) = running.get(&ns) {
                    let added = follow_names(current, names);
                    // A running watch has listed already: look at a newly referenced
                    // Secret once, as a new watch's first list would.
                    for name in added {
                        tokio::spawn(look_once(client.clone(), ns.clone(), name, tx.clone()));
                    }
                    continue;
                }
                let token = stop.child_token();
                let names: Names = Arc::new(RwLock::new(names));
                let watch = in_namespace(&client, &ns, names.clone());
                tokio::spawn(
                    token
                        .clone()
                        .run_until_cancelled_owned(forward(watch, tx.clone())),
                );
                running.insert(ns, (token, names));
            }
            changed.notified().await;
        }
    };
    tokio::spawn(until.run_until_cancelled_owned(manage));
    rx
}

/// Replace the names a watch passes on; the names added.
fn follow_names(current: &Names, wanted: BTreeSet<String>) -> Vec<String> {
    let mut names = current.write();
    let added = wanted.difference(&names).cloned().collect();
    *names = wanted;
    added
}

/// The metadata watch of one namespace's Secrets, passing on those named in `names`.
fn in_namespace(
    client: &Client,
    ns: &str,
    names: Names,
) -> impl Stream<Item = Item> + Send + 'static {
    let api: Api<PartialObjectMeta<Secret>> = Api::namespaced(client.clone(), ns);
    watcher(api, watches::watch_config())
        .backoff(watches::backoff())
        .touched_objects()
        .filter(move |r| {
            let wanted = match r {
                Ok(m) => names.read().contains(&m.name_any()),
                Err(_) => true,
            };
            std::future::ready(wanted)
        })
        .map(|r| {
            r.map(|mut m| {
                m.metadata.managed_fields = None;
                m
            })
        })
}

/// One metadata read of `ns/name`, sent on as if watched (nothing when absent or on error:
/// the namespace's watch reports its later changes).
async fn look_once(client: Client, ns: String, name: String, tx: mpsc::UnboundedSender<Item>) {
    let api: Api<Secret> = Api::namespaced(client, &ns);
    if let Ok(Some(mut m)) = api.get_metadata_opt(&name).await {
        m.metadata.managed_fields = None;
        let _ = tx.unbounded_send(Ok(m));
    }
}

/// The Inboxes (among `inboxes`) that may use the key Secret `target`, by what `may_use`
/// says each one may use (its credentials Secret, its account and the account's key Secret).
pub fn users_of<I: InboxView>(
    inboxes: &[Arc<I>],
    target: &InUse,
    may_use: impl Fn(&I) -> Vec<InUse>,
) -> Vec<ObjectRef<Inbox>> {
    inboxes
        .iter()
        .filter(|i| may_use(i).contains(target))
        .map(|i| inbox_ref(&**i))
        .collect()
}

/// Send every item of `stream` to `tx` until the receiver goes.
async fn forward(stream: impl Stream<Item = Item>, tx: mpsc::UnboundedSender<Item>) {
    let mut stream = std::pin::pin!(stream);
    while let Some(item) = stream.next().await {
        if tx.unbounded_send(item).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(ns: &str, name: &str) -> SecretRef {
        (ns.into(), name.into())
    }

    /// One watch per namespace, however many Secret names tenants reference there.
    #[test]
    fn references_are_grouped_per_namespace() {
        let refs: BTreeSet<SecretRef> = (0..1000)
            .map(|i| r("a", &format!("k{i}")))
            .chain([r("b", "k")])
            .collect();
        let grouped = by_namespace(&refs);
        assert_eq!(grouped.len(), 2, "two watches for 1,001 names");
        assert_eq!(grouped["a"].len(), 1000);
        let names: Names = Arc::new(RwLock::new(["k1".to_string()].into()));
        let added = follow_names(&names, ["k1".to_string(), "k2".to_string()].into());
        assert_eq!(added, ["k2"]);
        assert!(names.read().contains("k2"));
    }

    #[test]
    fn the_watch_set_follows_the_references() {
        let cases = [
            (
                "nothing yet",
                vec![],
                vec![r("a", "k")],
                vec![r("a", "k")],
                vec![],
            ),
            (
                "unchanged",
                vec![r("a", "k")],
                vec![r("a", "k")],
                vec![],
                vec![],
            ),
            (
                "one more, one gone",
                vec![r("a", "k"), r("b", "k")],
                vec![r("a", "k"), r("c", "k")],
                vec![r("c", "k")],
                vec![r("b", "k")],
            ),
            (
                "same name, other namespace",
                vec![r("a", "k")],
                vec![r("b", "k")],
                vec![r("b", "k")],
                vec![r("a", "k")],
            ),
            (
                "no references left",
                vec![r("a", "k")],
                vec![],
                vec![],
                vec![r("a", "k")],
            ),
        ];
        for (case, running, wanted, start, stop) in cases {
            let wanted: BTreeSet<_> = wanted.into_iter().collect();
            let running: BTreeSet<_> = running.into_iter().collect();
            assert_eq!(diff(&running, &wanted), (start, stop), "{case}");
        }
    }

    #[test]
    fn a_key_secret_wakes_the_inboxes_that_may_use_it() {
        use crate::api::common::SecretKeyRef;
        use crate::api::common::{AccountKind, AccountRef};
        use crate::controller::accounts::credentials::{AccountInfo, may_use};
        let fixture = crate::controller::cache::watches::testing::inbox;
        let mut by_account = (*fixture("a", "by-account", None)).clone();
        by_account.spec.account_ref = Some(Box::new(AccountRef {
            kind: AccountKind::Account,
            name: "team".into(),
        }));
        let all = [
            fixture("a", "one", Some("key")),
            fixture("a", "two", Some("other")),
            fixture("a", "implicit", None),
            fixture("b", "four", Some("key")),
            Arc::new(by_account),
        ];
        let team = AccountInfo::namespaced(
            "team",
            "a",
            &SecretKeyRef {
                name: "team-key".into(),
                key: "apiKey".into(),
            },
        );
        let uses = |i: &Inbox| {
            let referenced = i.spec.account_ref.as_ref().map(|_| team.clone());
            may_use(i, referenced.as_ref(), None)
        };
        let secret = |ns: &str, name: &str| InUse::Secret {
            namespace: ns.into(),
            name: name.into(),
        };
        for (target, want) in [
            (secret("a", "key"), vec!["one"]),
            (secret("b", "key"), vec!["four"]),
            (secret("c", "key"), vec![]),
            (secret("a", "team-key"), vec!["by-account"]),
            (secret("b", "team-key"), vec![]),
        ] {
            let got: Vec<String> = users_of(&all, &target, uses)
                .into_iter()
                .map(|o| o.name)
                .collect();
            assert_eq!(got, want, "{target}");
        }
    }

    #[test]
    fn inboxes_reference_their_credentials_secret_in_their_namespace() {
        let (reader, mut writer) = kube::runtime::reflector::store::<CachedInbox>();
        for (ns, name, creds) in [
            ("a", "one", Some("key")),
            ("a", "two", None),
            ("b", "three", Some("key")),
        ] {
            let i = (*crate::controller::cache::watches::testing::inbox(ns, name, creds)).clone();
            let i = CachedInbox::from(i);
            writer.apply_watcher_event(&watcher::Event::Apply(i));
        }
        let refs = inbox_references(reader)();
        assert_eq!(refs, [r("a", "key"), r("b", "key")].into());
    }
}
