//! The one watch set of key Secrets — those Inboxes name in `spec.credentials` and those
//! `Account`s and `ClusterAccount`s name in `spec.secretRef`: one metadata-only watch per
//! referenced Secret, selected by name, started and stopped as the set of references changes.
//! So a rotated key reconciles its users promptly, and a key Secret being deleted loses its
//! in-use finalizer once nobody uses it, while the operator lists and watches no other Secret
//! of the user's and caches no Secret data.
//!
//! Where references come from is pluggable: a [`ReferenceSource`] is any function yielding
//! the `(namespace, name)` pairs to watch (the Inbox caches, the account caches), and whoever
//! feeds it pings the shared [`Notify`] when its answer may have changed.

use std::collections::{BTreeSet, HashMap};
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

use super::Context;
use super::account_watch::all_inboxes;
use super::cached_inbox::{CachedInbox, inbox_ref};
use super::credentials::InUse;
use super::watches;
use crate::crd::{Inbox, InboxView};

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

/// What to change in the running watches to match `wanted`: the watches to start and the
/// ones to stop.
pub fn diff(
    running: &BTreeSet<SecretRef>,
    wanted: &BTreeSet<SecretRef>,
) -> (Vec<SecretRef>, Vec<SecretRef>) {
    (
        wanted.difference(running).cloned().collect(),
        running.difference(wanted).cloned().collect(),
    )
}

/// One item of the merged key-Secret watch.
type Item = Result<PartialObjectMeta<Secret>, watcher::Error>;

/// Keep one metadata watch per Secret that `sources` reference, re-evaluated whenever
/// `changed` is notified, until `stop`. Returns the merged stream of touched Secrets.
pub fn watch_referenced(
    client: Client,
    sources: Vec<ReferenceSource>,
    changed: Arc<Notify>,
    stop: CancellationToken,
) -> impl Stream<Item = Item> + Send + 'static {
    let (tx, rx) = mpsc::unbounded();
    let until = stop.clone();
    let manage = async move {
        let mut running: HashMap<SecretRef, CancellationToken> = HashMap::new();
        loop {
            let wanted: BTreeSet<SecretRef> = sources.iter().flat_map(|s| s()).collect();
            let (start, stop_now) = diff(&running.keys().cloned().collect(), &wanted);
            for key in stop_now {
                if let Some(token) = running.remove(&key) {
                    token.cancel();
                }
            }
            for key in start {
                let token = stop.child_token();
                tokio::spawn(
                    token
                        .clone()
                        .run_until_cancelled_owned(forward(one(&client, &key), tx.clone())),
                );
                running.insert(key, token);
            }
            changed.notified().await;
        }
    };
    tokio::spawn(until.run_until_cancelled_owned(manage));
    rx
}

/// The metadata watch of one Secret, selected by name.
fn one(client: &Client, (ns, name): &SecretRef) -> impl Stream<Item = Item> + Send + 'static {
    let api: Api<PartialObjectMeta<Secret>> = Api::namespaced(client.clone(), ns);
    let config = watches::watch_config().fields(&format!("metadata.name={name}"));
    watcher(api, config)
        .backoff(watches::backoff())
        .touched_objects()
        .map(|r| {
            r.map(|mut m| {
                m.metadata.managed_fields = None;
                m
            })
        })
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

/// Follow the key Secrets `secrets` (from [`watch_referenced`]) until the stream ends: on
/// each change (a rotated key, a deletion) wake the Inboxes that may use the Secret, and
/// release its in-use finalizer once it is being deleted and nobody uses it. Starts once
/// every watch cache has listed (`ctx.caches_synced`): before, a key Secret being deleted (a
/// namespace deleted while the operator was away) would look unused and lose its finalizer
/// too early.
pub async fn follow(ctx: Arc<Context>, secrets: impl Stream<Item = Item> + Send + 'static) {
    let mut synced = ctx.caches_synced.clone();
    if synced.wait_for(|ready| *ready).await.is_err() {
        return;
    }
    let mut secrets = std::pin::pin!(watches::without_errors(secrets, "key Secrets"));
    while let Some(secret) = secrets.next().await {
        let Ok(secret) = secret else { continue };
        let m = &secret.metadata;
        let (Some(namespace), Some(name)) = (m.namespace.clone(), m.name.clone()) else {
            continue;
        };
        let target = InUse::Secret { namespace, name };
        for obj in users_of(&all_inboxes(&ctx), &target, |i| ctx.accounts.may_use(i)) {
            let _ = ctx.wake.unbounded_send(obj);
        }
        if m.deletion_timestamp.is_some() {
            super::in_use::release_unused(&ctx, std::slice::from_ref(&target), None).await;
        }
    }
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
        use crate::account::{AccountKind, AccountRef};
        use crate::controller::credentials::{AccountInfo, may_use};
        use crate::crd::SecretKeyRef;
        let fixture = crate::controller::watches::tests::inbox;
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
            let i = (*crate::controller::watches::tests::inbox(ns, name, creds)).clone();
            let i = CachedInbox::from(i);
            writer.apply_watcher_event(&watcher::Event::Apply(i));
        }
        let refs = inbox_references(reader)();
        assert_eq!(refs, [r("a", "key"), r("b", "key")].into());
    }
}
