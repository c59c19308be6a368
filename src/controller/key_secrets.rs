//! Watches of the key Secrets that are referenced (today by Inboxes' `spec.credentials`):
//! one metadata-only watch per referenced Secret, selected by name, started and stopped as the
//! set of references changes. So a rotated key reconciles its users promptly, while the
//! operator lists and watches no other Secret of the user's and caches no key.
//!
//! Where references come from is pluggable: a [`ReferenceSource`] is any function yielding
//! the `(namespace, name)` pairs to watch (an Account store can be one), and whoever feeds it
//! pings the shared [`Notify`] when its answer may have changed.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use futures::channel::mpsc;
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::Store;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::watches;
use crate::crd::Inbox;

/// A referenced Secret: `(namespace, name)`.
pub type SecretRef = (String, String);

/// Yields the Secrets to watch now. Called after every ping of the watch set's [`Notify`].
pub type ReferenceSource = Arc<dyn Fn() -> BTreeSet<SecretRef> + Send + Sync>;

/// The credentials Secrets the Inboxes in `store` reference (always in their own namespace).
pub fn inbox_references(store: Store<Inbox>) -> ReferenceSource {
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
    fn inboxes_reference_their_credentials_secret_in_their_namespace() {
        let (reader, mut writer) = kube::runtime::reflector::store::<Inbox>();
        for (ns, name, creds) in [
            ("a", "one", Some("key")),
            ("a", "two", None),
            ("b", "three", Some("key")),
        ] {
            let i = (*crate::controller::watches::tests::inbox(ns, name, creds)).clone();
            writer.apply_watcher_event(&watcher::Event::Apply(i));
        }
        let refs = inbox_references(reader)();
        assert_eq!(refs, [r("a", "key"), r("b", "key")].into());
    }
}
