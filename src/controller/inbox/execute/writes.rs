//! The pass's writes to the Inbox itself: the create-pending mark, the proven binding,
//! annotations, and the owned Secret.

use k8s_openapi::api::core::v1::Secret;
use kube::api::{ObjectMeta, Patch, PatchParams};
use serde_json::json;
use tracing::{field, info};

use crate::agentsend::{ApiKey, CreateInbox};
use crate::api::inbox;
use crate::controller::error::Stop;
use crate::controller::inbox::plan::{Marked, Observed};
use crate::controller::ownership::proof::Origin;

use super::config_maps;
use super::pass::{Gate, Pass, clear_pending, set_annotation, with_finalizer};

impl Pass<'_> {
    /// Create the inbox `request` asks for, holding the account's create gate shared until
    /// the pass ends (a recovery must not list the account between this POST and its
    /// bookkeeping).
    pub(super) async fn create(
        &self,
        o: &mut Observed,
        gate: &mut Option<Gate>,
        key: &ApiKey,
        request: CreateInbox,
    ) {
        let lock = self.ctx.create_gates.of(key);
        *gate = Some(Gate::Shared(lock.read_owned().await));
        let created = self.ctx.api.create_inbox(key, &request).await;
        if let Ok(r) = &created {
            tracing::Span::current().record("inbox_id", field::display(&r.id));
            info!(inbox_id = %r.id, "created inbox");
        }
        o.created = Some(created);
        o.attempted = request.address;
        // A later lookup must see the account as it is after this attempt.
        o.candidates = None;
    }

    /// Persist the pending mark (and clear a vanished binding) if the Inbox is unchanged
    /// since read (optimistic concurrency).
    pub(super) async fn mark_pending(
        &self,
        o: &mut Observed,
        unbind: Option<String>,
        address: &str,
        origin: Origin,
        key: &ApiKey,
    ) -> Result<(), Stop> {
        let proof = self
            .ctx
            .proof
            .pending_proof(&self.ns, &self.name, address, origin);
        let mut annotations = json!({
            inbox::ANNOTATION_CREATE_PENDING: address,
            inbox::ANNOTATION_CREATE_PENDING_PROOF: proof,
            inbox::ANNOTATION_CREATE_PENDING_SINCE: o.now,
        });
        // Explicitly unbound, with proof (a bare empty annotation would be a tenant's claim).
        let unbound_proof = unbind.as_ref().map(|_| self.binding_proof("", key));
        if let Some(proof) = &unbound_proof {
            annotations[inbox::ANNOTATION_INBOX_ID] = json!("");
            annotations[inbox::ANNOTATION_INBOX_ID_PROOF] = json!(proof);
        }
        let Some(rv) = o.inbox.metadata.resource_version.clone() else {
            o.marked = Some(Marked::Stale);
            return Ok(());
        };
        let mut patch =
            json!({ "metadata": { "resourceVersion": rv, "annotations": annotations } });
        if o.finalizer_missing {
            // One write for both; the precondition makes replacing the list safe.
            patch["metadata"]["finalizers"] = json!(with_finalizer(&o.inbox));
        }
        match self
            .inboxes
            .patch(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(updated) => {
                self.wrote_inbox(&updated);
                if let Some(proof) = &unbound_proof {
                    set_annotation(&mut o.inbox, inbox::ANNOTATION_INBOX_ID, Some(""));
                    set_annotation(&mut o.inbox, inbox::ANNOTATION_INBOX_ID_PROOF, Some(proof));
                }
                set_annotation(
                    &mut o.inbox,
                    inbox::ANNOTATION_CREATE_PENDING_PROOF,
                    Some(&proof),
                );
                let now = o.now.clone();
                if o.finalizer_missing {
                    o.inbox.metadata.finalizers = Some(with_finalizer(&o.inbox));
                    o.finalizer_missing = false;
                }
                set_annotation(
                    &mut o.inbox,
                    inbox::ANNOTATION_CREATE_PENDING,
                    Some(address),
                );
                set_annotation(
                    &mut o.inbox,
                    inbox::ANNOTATION_CREATE_PENDING_SINCE,
                    Some(&now),
                );
                o.replaces = unbind;
                o.marked = Some(Marked::Yes);
            }
            Err(kube::Error::Api(s)) if s.is_conflict() => {
                tracing::debug!("Inbox changed since it was read; deciding again on fresh data");
                o.marked = Some(Marked::Stale);
            }
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }

    /// The proof that this Inbox is bound to `id` in the account of `key`.
    pub(super) fn binding_proof(&self, id: &str, key: &ApiKey) -> String {
        let account = self.ctx.proof.fingerprint(key);
        self.ctx
            .proof
            .binding_proof(&self.ns, &self.name, id, &account)
    }

    /// Persist the binding with its proof for `key`'s account, and clear the pending mark,
    /// in one write.
    pub(super) async fn record_binding(
        &self,
        o: &mut Observed,
        id: &str,
        key: &ApiKey,
    ) -> Result<(), Stop> {
        let proof = self.binding_proof(id, key);
        self.patch_annotations(json!({
            inbox::ANNOTATION_INBOX_ID: id,
            inbox::ANNOTATION_INBOX_ID_PROOF: proof,
            inbox::ANNOTATION_CREATE_PENDING: null,
            inbox::ANNOTATION_CREATE_PENDING_PROOF: null,
            inbox::ANNOTATION_CREATE_PENDING_SINCE: null,
        }))
        .await?;
        set_annotation(&mut o.inbox, inbox::ANNOTATION_INBOX_ID, Some(id));
        set_annotation(&mut o.inbox, inbox::ANNOTATION_INBOX_ID_PROOF, Some(&proof));
        clear_pending(&mut o.inbox);
        Ok(())
    }

    pub(super) async fn patch_annotations(
        &self,
        annotations: serde_json::Value,
    ) -> Result<(), Stop> {
        let patch = json!({ "metadata": { "annotations": annotations } });
        let updated = self
            .inboxes
            .patch(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        self.wrote_inbox(&updated);
        Ok(())
    }

    /// Create the Secret (a 409 means it appeared meanwhile: fail, re-read next pass) or
    /// server-side apply our fields onto it. Returns its metadata as written.
    pub(super) async fn write_secret(
        &self,
        secret: &Secret,
        create: bool,
        uid: Option<&str>,
    ) -> Result<ObjectMeta, Stop> {
        config_maps::write_owned(&self.secrets, secret, create, uid).await
    }

    /// Delete an owned Secret; gone already, or replaced meanwhile (UID precondition), is fine.
    pub(super) async fn delete_secret(&self, name: &str, uid: Option<String>) -> Result<(), Stop> {
        config_maps::delete_owned(&self.secrets, name, uid).await
    }
}
