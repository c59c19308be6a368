//! The `agentsend.io/credentials-in-use` finalizer on the objects an Inbox's key comes
//! through (its key Secret, its Account or ClusterAccount): put on before the first AgentSend
//! call with that key, taken off when the last Inbox using the object is gone. Deleting a
//! namespace thus deletes its Inboxes (which need the key to delete their inboxes) first and
//! their credentials last — also when the operator restarts meanwhile.

use std::fmt::Debug;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::json;
use tracing::{debug, info, warn};

use crate::api::account::{Account, ClusterAccount, FINALIZER_CREDENTIALS_IN_USE};
use crate::controller::accounts::credentials::InUse;
use crate::controller::accounts::watch::{AccountCaches, SYNC_WAIT};
use crate::controller::cache::inboxes::InboxCaches;
use crate::controller::remote::bindings::BindingRegistry;

/// What keeping the finalizer needs: the client, every Inbox, the accounts and the bindings
/// that deletions released. Cheap to clone.
#[derive(Clone)]
pub struct InUseFinalizers {
    client: Client,
    inboxes: InboxCaches,
    accounts: AccountCaches,
    bindings: BindingRegistry,
}

impl InUseFinalizers {
    /// Keep the finalizer with these.
    pub fn new(
        client: Client,
        inboxes: InboxCaches,
        accounts: AccountCaches,
        bindings: BindingRegistry,
    ) -> InUseFinalizers {
        InUseFinalizers {
            client,
            inboxes,
            accounts,
            bindings,
        }
    }

    /// Put the finalizer on `target` (a no-op when it carries it or is gone).
    pub async fn mark(&self, target: &InUse) -> Result<(), kube::Error> {
        self.set(target, true).await
    }

    /// Take the finalizer off those of `targets` that no Inbox in the caches may use any
    /// more, besides the Inbox with UID `leaving` (being released) and Inboxes whose deletion
    /// released their bindings. Only once every cache has listed: a cache still empty
    /// (another watched namespace's Inboxes, the accounts) would make a user look absent.
    /// Failures are logged: the next release or key Secret event tries again.
    pub async fn release_unused(&self, targets: &[InUse], leaving: Option<&str>) {
        if targets.is_empty() {
            // Nothing to release (the operator's default key): no walk over every Inbox.
            return;
        }
        if !self.inboxes.synced_within(SYNC_WAIT).await {
            warn!("watch caches not synced: credentials-in-use finalizers left in place for now");
            return;
        }
        let users: Vec<InUse> = self
            .inboxes
            .all()
            .iter()
            .filter(|i| {
                let uid = i.metadata.uid.as_deref().unwrap_or_default();
                Some(uid) != leaving && !self.bindings.is_released(uid)
            })
            .flat_map(|i| self.accounts.may_use(&**i))
            .collect();
        for target in crate::controller::accounts::credentials::unused(targets, &users) {
            if let Err(e) = self.set(target, false).await {
                warn!(error = %e, %target, "could not remove the credentials-in-use finalizer");
            }
        }
    }

    async fn set(&self, target: &InUse, present: bool) -> Result<(), kube::Error> {
        let client = self.client.clone();
        let changed = match target {
            InUse::Secret { namespace, name } => {
                set_on(&Api::<Secret>::namespaced(client, namespace), name, present).await?
            }
            InUse::Account { namespace, name } => {
                set_on(
                    &Api::<Account>::namespaced(client, namespace),
                    name,
                    present,
                )
                .await?
            }
            InUse::ClusterAccount { name } => {
                set_on(&Api::<ClusterAccount>::all(client), name, present).await?
            }
        };
        if changed {
            match present {
                true => debug!(%target, "credentials-in-use finalizer added"),
                false => info!(%target, "credentials no longer in use: finalizer removed"),
            }
        }
        Ok(())
    }
}

/// Add or remove the finalizer on one object, on the version read (a conflict fails; the
/// caller retries). `Ok(false)`: nothing to do (already so, or the object is gone).
async fn set_on<K>(api: &Api<K>, name: &str, present: bool) -> Result<bool, kube::Error>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let Some(meta) = api.get_metadata_opt(name).await? else {
        return Ok(false);
    };
    let mut list = meta.finalizers().to_vec();
    let has = list.iter().any(|f| f == FINALIZER_CREDENTIALS_IN_USE);
    if has == present || (present && meta.metadata.deletion_timestamp.is_some()) {
        // A finalizer cannot be added to an object being deleted.
        return Ok(false);
    }
    if present {
        list.push(FINALIZER_CREDENTIALS_IN_USE.to_string());
    } else {
        list.retain(|f| f != FINALIZER_CREDENTIALS_IN_USE);
    }
    let patch = json!({ "metadata": {
        "resourceVersion": meta.metadata.resource_version,
        "finalizers": list,
    }});
    match api
        .patch_metadata(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.is_not_found() => Ok(false),
        Err(e) => Err(e),
    }
}
