//! What a pass reads besides the Inbox: the API key and the objects it comes through, the
//! namespace's labels and default policy, the claims of other Inboxes, and Secret metadata.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::ResourceExt;
use kube::api::{Api, ListParams, ObjectMeta};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use tracing::warn;

use crate::agentsend::{ApiError, ApiKey};

use crate::api::account;
use crate::api::inbox::{self, Inbox};
use crate::controller::accounts::credentials;
use crate::controller::accounts::credentials::Credentials;
use crate::controller::cache::claims::{self, ClaimIndex, Claimant};
use crate::controller::error::{Error, Stop};
use crate::controller::inbox::plan::{Claim, Lookup, Observed, Phase};

use super::pass::Pass;

impl Pass<'_> {
    /// Resolve the API key ([`credentials::resolve`] over the account caches, the namespace's
    /// labels when a rule needs them, and the namespace's other Inboxes), read it from its
    /// Secret, and note which of the objects it comes through carry the in-use finalizer.
    pub(super) async fn credentials(&self, o: &mut Observed) -> Result<(), Stop> {
        let cleanup = o.phase == Phase::Cleanup;
        let accounts = &self.ctx.accounts;
        accounts.wait_synced().await?;
        let mut inputs = credentials::Inputs {
            referenced: accounts.referenced(&o.inbox),
            defaults: accounts.defaults(),
            namespace_labels: None,
            peers: Vec::new(),
            cleanup,
            holds_inbox: credentials::holds_inbox(&o.inbox, &self.ctx.proof),
        };
        if credentials::needs_peers(&inputs) {
            inputs.peers = self.ctx.peers(&o.inbox);
        }
        if credentials::needs_namespace_labels(&inputs) {
            inputs.namespace_labels = self.namespace_labels().await?;
        }
        let source = self.resolve_reserving(&o.inbox, inputs);
        let mut secret_finalized = false;
        let value = match &source {
            credentials::Source::Secret {
                namespace, secret, ..
            } => {
                let api: Api<Secret> = Api::namespaced(self.ctx.client.clone(), namespace);
                api.get_opt(&secret.name).await?.map(|s| {
                    secret_finalized = s
                        .finalizers()
                        .iter()
                        .any(|f| f == account::FINALIZER_CREDENTIALS_IN_USE);
                    s.data
                        .as_ref()
                        .and_then(|d| d.get(&secret.key))
                        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
                })
            }
            _ => None,
        };
        let found = value.is_some();
        let default = self.ctx.settings.default_key.current();
        let creds = credentials::credentials(&source, value, default, cleanup);
        o.in_use = if found && !cleanup && matches!(creds, Credentials::Key(_)) {
            credentials::in_use(&source, &self.ns)
                .into_iter()
                .map(|t| {
                    let marked = accounts.carries_finalizer(&t).unwrap_or(secret_finalized);
                    (t, marked)
                })
                .collect()
        } else {
            Vec::new()
        };
        o.credentials = Some(creds);
        Ok(())
    }

    /// [`credentials::resolve`], and where a quota applies, check and take a slot atomically:
    /// under one lock, the Inboxes this process let past the quota count as holding theirs
    /// (their marks may not be in the cache yet), and this one, let past, joins them.
    pub(super) fn resolve_reserving(
        &self,
        inbox: &Inbox,
        mut inputs: credentials::Inputs,
    ) -> credentials::Source {
        let quota = credentials::needs_peers(&inputs);
        if !quota {
            return credentials::resolve(inbox, &inputs);
        }
        let mut reserved = self.ctx.quota_slots.lock();
        credentials::count_reserved(&mut inputs.peers, &reserved);
        let source = credentials::resolve(inbox, &inputs);
        let let_past = !matches!(
            source,
            credentials::Source::Refused(_) | credentials::Source::Missing(_)
        );
        if let_past && !inputs.holds_inbox {
            reserved.insert(self.uid.clone());
        }
        source
    }

    /// The labels of the Inbox's namespace; `None` when the operator may not read them.
    pub(super) async fn namespace_labels(
        &self,
    ) -> Result<Option<std::collections::BTreeMap<String, String>>, Error> {
        let api: Api<Namespace> = Api::all(self.ctx.client.clone());
        match api.get_metadata(&self.ns).await {
            Ok(m) => Ok(Some(m.metadata.labels.unwrap_or_default())),
            Err(kube::Error::Api(s)) if s.code == 403 => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The namespace's `agentsend.io/default-deletion-policy` annotation: from the namespace
    /// cache, else (not cached yet, or not watchable) one GET of the namespace's metadata.
    pub(super) async fn namespace_default(&self) -> Result<Option<String>, Stop> {
        let annotation = |m: &ObjectMeta| {
            m.annotations
                .as_ref()
                .and_then(|a| a.get(inbox::ANNOTATION_DEFAULT_DELETION_POLICY))
                .cloned()
        };
        if let Some(store) = self.ctx.namespace_store(&self.ns)
            && let Some(m) = store.get(&ObjectRef::new(&self.ns))
        {
            return Ok(annotation(&m.metadata));
        }
        let api: Api<Namespace> = Api::all(self.ctx.client.clone());
        let meta = api.get_metadata_opt(&self.ns).await?;
        Ok(meta.and_then(|m| annotation(&m.metadata)))
    }

    /// Which other Inboxes name the inbox IDs `ids` (annotation or status), and who holds
    /// each: the IDs this process bound recently, the watch caches' claim indexes, and — when
    /// the caches do not cover the cluster — the cluster-wide claims index, or, until that
    /// has listed (or without permission for it) and `cluster_wide`, a metadata-only list of
    /// every Inbox. Inboxes that released their bindings (deleted) own nothing.
    /// The claims found, and (cluster-wide) why the check could not be made, if it could not.
    pub(super) async fn bound_elsewhere(
        &self,
        me: &Inbox,
        cluster_wide: bool,
        ids: &[String],
    ) -> Result<(HashMap<String, Claim>, Option<String>), Error> {
        let mut claims: HashMap<String, Claim> = HashMap::new();
        for id in ids {
            if let Some(owner) = self.ctx.bindings.recently_bound_to(id, &self.uid) {
                claims.insert(id.clone(), Claim { owner, prior: true });
            }
        }
        let add_from = |claims: &mut HashMap<String, Claim>, index: &ClaimIndex| {
            for id in ids {
                for c in index.claimants(id) {
                    self.add_claim(claims, me, id, c);
                }
            }
        };
        for index in &self.ctx.inbox_claims {
            add_from(&mut claims, index);
        }
        if let Some((_, listed)) = &self.ctx.claims_index
            && listed.load(std::sync::atomic::Ordering::Acquire)
        {
            // Every Inbox in the cluster, whatever this instance watches.
            add_from(&mut claims, &self.ctx.cluster_claims);
            return Ok((claims, None));
        }
        if !cluster_wide || self.ctx.sees_whole_cluster() {
            return Ok((claims, None));
        }
        let all: Api<Inbox> = Api::all(self.ctx.client.clone());
        match all.list_metadata(&ListParams::default()).await {
            Ok(list) => {
                let listed = ClaimIndex::default();
                let proven = |i: &PartialObjectMeta<Inbox>| claims::proven_id(&self.ctx.proof, i);
                for item in list.items {
                    listed.apply(&watcher::Event::Apply(item), proven);
                }
                add_from(&mut claims, &listed);
            }
            Err(e) => {
                warn!(error = %e, "cannot list Inboxes cluster-wide; adoption, recovery and deletion wait until the one-owner check can be made");
                return Ok((
                    claims,
                    Some(format!("listing Inboxes cluster-wide failed: {e}")),
                ));
            }
        }
        Ok((claims, None))
    }

    /// Record that `other` names inbox `id` (unless it is this Inbox, or released).
    pub(super) fn add_claim(
        &self,
        claims: &mut HashMap<String, Claim>,
        me: &Inbox,
        id: &str,
        other: Claimant,
    ) {
        if other.uid == self.uid || self.ctx.bindings.is_released(&other.uid) {
            return;
        }
        let mine = (
            me.metadata.creation_timestamp.as_ref().map(|t| t.0),
            self.uid.clone(),
        );
        let claim = Claim {
            owner: other.owner,
            prior: other.seniority < mine,
        };
        match claims.get(id) {
            Some(c) if c.prior || !claim.prior => {}
            _ => {
                claims.insert(id.to_string(), claim);
            }
        }
    }

    /// A Secret's metadata (never its data) from the watch cache; one metadata GET when the
    /// cache does not have it (a foreign Secret is not in the label-filtered cache, and the
    /// cache may lag our own writes).
    pub(super) async fn get_secret(&self, name: &str) -> Result<Option<ObjectMeta>, Stop> {
        if let Some(store) = self.ctx.secret_store(&self.ns)
            && let Some(meta) = store.get(&self.ns, name)
        {
            return Ok(Some(meta));
        }
        let found = self.secrets.get_metadata_opt(name).await?;
        Ok(found.map(|m| m.metadata))
    }

    /// One inbox as the account's scan cache knows it.
    pub(super) async fn observe(&self, key: &ApiKey, id: &str) -> Lookup {
        match self.ctx.scans.observe(key, id).await {
            Ok(Some(r)) => Lookup::Found(r),
            Ok(None) => Lookup::Gone,
            Err(e) => Lookup::Failed(e),
        }
    }

    /// One inbox as AgentSend has it now (a GET).
    pub(super) async fn fetch(&self, key: &ApiKey, id: &str) -> Lookup {
        match self.ctx.api.get_inbox(key, id).await {
            Ok(r) => Lookup::Found(r),
            Err(ApiError::NotFound { .. }) => Lookup::Gone,
            Err(e) => Lookup::Failed(e),
        }
    }
}
