//! Read access to every Inbox cache of this process ([`InboxCaches`]): what the account tasks
//! and the credentials-in-use bookkeeping need of the Inboxes, without the reconcile context.

use std::sync::Arc;
use std::time::Duration;

use kube::runtime::reflector::Store;

use crate::controller::cache::inbox::CachedInbox;
use crate::controller::cache::watches;

/// Every Inbox cache (one per watched scope), and whether every watch cache has listed.
/// Cheap to clone: the caches are shared.
#[derive(Clone)]
pub struct InboxCaches {
    stores: Vec<Store<CachedInbox>>,
    synced: tokio::sync::watch::Receiver<bool>,
}

impl InboxCaches {
    /// Read `stores`; `synced` turns true once every watch cache has listed.
    pub fn new(
        stores: Vec<Store<CachedInbox>>,
        synced: tokio::sync::watch::Receiver<bool>,
    ) -> InboxCaches {
        InboxCaches { stores, synced }
    }

    /// Every Inbox in the caches.
    pub fn all(&self) -> Vec<Arc<CachedInbox>> {
        self.stores.iter().flat_map(|s| s.state()).collect()
    }

    /// Whether every watch cache has listed, waiting at most `limit` for it.
    pub async fn synced_within(&self, limit: Duration) -> bool {
        watches::ready_within(&self.synced, limit).await
    }

    /// Wait until every watch cache has listed; `false` when that will never happen (the
    /// controller is stopping).
    pub async fn wait_synced(&self) -> bool {
        self.synced.clone().wait_for(|ready| *ready).await.is_ok()
    }
}
