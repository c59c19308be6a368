//! The account side's followers: account changes and key-Secret changes wake the Inboxes
//! they concern, and an account or key Secret being deleted loses its credentials-in-use
//! finalizer once no Inbox uses it. Each works from [`Followers`], the handles it needs.

use std::sync::Arc;

use futures::channel::mpsc;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use kube::runtime::reflector::ObjectRef;

use crate::api::inbox::Inbox;
use crate::controller::accounts::credentials::InUse;
use crate::controller::accounts::in_use::InUseFinalizers;
use crate::controller::accounts::key_secrets::{Item, users_of};
use crate::controller::accounts::watch::{AccountCaches, AccountChange, affected};
use crate::controller::cache::inboxes::InboxCaches;
use crate::controller::cache::watches;

/// What the followers read and do: the Inbox and account caches, the finalizer, and the
/// channel that asks the controller to reconcile an Inbox.
#[derive(Clone)]
pub struct Followers {
    /// Every Inbox.
    pub inboxes: InboxCaches,
    /// The Account and ClusterAccount caches.
    pub accounts: AccountCaches,
    /// The credentials-in-use finalizer.
    pub in_use: InUseFinalizers,
    /// Asks the controller to reconcile an Inbox.
    pub wake: mpsc::UnboundedSender<ObjectRef<Inbox>>,
}

/// Follow account changes until the stream ends: wake the Inboxes each concerns, ping
/// `references_changed` (the key Secrets the accounts name may have changed), and let an
/// account being deleted go once no Inbox uses it.
pub async fn accounts(
    f: Followers,
    mut changes: BoxStream<'static, AccountChange>,
    references_changed: Arc<tokio::sync::Notify>,
) {
    while let Some(change) = changes.next().await {
        for obj in affected(&f.inboxes.all(), &change) {
            let _ = f.wake.unbounded_send(obj);
        }
        references_changed.notify_one();
        if let Some(target) = f.accounts.deleting(&change) {
            // Deleted while no Inbox uses it any more (one switched away): let it go.
            f.in_use
                .release_unused(std::slice::from_ref(&target), None)
                .await;
        }
    }
}

/// Follow the key Secrets `secrets` (from
/// [`crate::controller::accounts::key_secrets::watch_referenced`]) until the stream ends: on
/// each change (a rotated key, a deletion) wake the Inboxes that may use the Secret, and
/// release its in-use finalizer once it is being deleted and nobody uses it. Starts once
/// every watch cache has listed: before, a key Secret being deleted (a namespace deleted
/// while the operator was away) would look unused and lose its finalizer too early.
pub async fn key_secrets(f: Followers, secrets: impl Stream<Item = Item> + Send + 'static) {
    if !f.inboxes.wait_synced().await {
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
        for obj in users_of(&f.inboxes.all(), &target, |i| f.accounts.may_use(i)) {
            let _ = f.wake.unbounded_send(obj);
        }
        if m.deletion_timestamp.is_some() {
            f.in_use
                .release_unused(std::slice::from_ref(&target), None)
                .await;
        }
    }
}
