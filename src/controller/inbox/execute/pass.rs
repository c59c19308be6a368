//! One reconcile pass over one Inbox ([`Pass`]): the loop that asks the planner for a step,
//! runs it and records what it found, until the planner ends the pass; the bookkeeping after
//! a bind, and the end of a pass (status, events, the next action).

use parking_lot::Mutex;
use std::collections::HashMap;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard};
use tracing::warn;

use crate::agentsend::ApiError;
use crate::api::inbox::{self, Inbox, InboxStatus};
use crate::controller::accounts::credentials;
use crate::controller::accounts::credentials::Credentials;
use crate::controller::cache::written::Write;
use crate::controller::context::Context;
use crate::controller::error::{Error, Stop};
use crate::controller::inbox::addresses;
use crate::controller::inbox::events::InboxEvent;
use crate::controller::inbox::plan::{
    self, Claim, Done, Failures, Lookup, Observed, Phase, Report, Step, Then,
};

/// A planner that has not finished after this many steps has a bug; the pass fails instead
/// of spinning.
const MAX_STEPS: usize = 64;

/// The account's create gate, as held by this pass.
#[allow(dead_code)] // held for its Drop only
pub(super) enum Gate {
    /// A create is between its POST and its bookkeeping.
    Shared(OwnedRwLockReadGuard<()>),
    /// A recovery is between its listing and its bookkeeping.
    Exclusive(OwnedRwLockWriteGuard<()>),
}

/// One reconcile pass over one Inbox, with the APIs it uses built once.
pub(super) struct Pass<'a> {
    pub(super) ctx: &'a Context,
    pub(super) ns: String,
    pub(super) name: String,
    pub(super) uid: String,
    pub(super) obj: ObjectRef<Inbox>,
    pub(super) reference: k8s_openapi::api::core::v1::ObjectReference,
    pub(super) inboxes: Api<Inbox>,
    pub(super) secrets: Api<Secret>,
    pub(super) failed: Mutex<Option<&'static str>>,
    /// This pass's last write to the Inbox (see [`written`]).
    pub(super) last_write: Mutex<Option<Write>>,
    /// The pass released the Inbox (deletion done but for the finalizer).
    pub(super) released: std::sync::atomic::AtomicBool,
}

impl<'a> Pass<'a> {
    pub(super) fn new(ctx: &'a Context, inbox: &Inbox) -> Result<Self, Stop> {
        let (Some(ns), Some(name), Some(uid)) = (
            inbox.namespace(),
            inbox.metadata.name.clone(),
            inbox.metadata.uid.clone(),
        ) else {
            return Err(Error::MissingObjectKey.into());
        };
        Ok(Pass {
            ctx,
            obj: ObjectRef::from_obj(inbox),
            reference: inbox.object_ref(&()),
            inboxes: Api::namespaced(ctx.client.clone(), &ns),
            secrets: Api::namespaced(ctx.client.clone(), &ns),
            ns,
            name,
            uid,
            failed: Mutex::new(None),
            last_write: Mutex::new(None),
            released: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Note a write to the Inbox: `Write::version` of what it returned, or `Finalized`.
    pub(super) fn wrote(&self, write: Write) {
        *self.last_write.lock() = Some(write);
    }

    /// Note a write to the Inbox that returned `updated`.
    pub(super) fn wrote_inbox(&self, updated: &Inbox) {
        if let Some(w) = Write::version(updated.metadata.resource_version.as_deref()) {
            self.wrote(w);
        }
    }

    /// Plan and execute until the planner is done.
    pub(super) async fn run(&self, inbox: &Inbox, phase: Phase) -> Result<Action, Stop> {
        let now = jiff::Timestamp::now()
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        let mut o = Observed::new(
            inbox.clone(),
            phase,
            now,
            self.ctx.settings.sync_interval,
            self.ctx.proof.clone(),
        );
        o.jitter = rand::random();
        o.failures = self.ctx.failures(&self.obj);
        o.max_retry_delay = self.ctx.settings.max_retry_delay;
        o.hold = self.ctx.hold(&self.obj);
        o.random_local = addresses::random_local_part(|n| rand::random_range(0..n));
        o.finalizer_missing = phase == Phase::Apply && needs_finalizer(inbox);
        let mut gate = None;
        for _ in 0..MAX_STEPS {
            let step = plan::plan(&o);
            tracing::debug!(%step, "step");
            if !matches!(
                step,
                Step::FindBindings { .. } | Step::Bind { .. } | Step::BindWithSecret { .. }
            ) {
                gate = None;
            }
            match step {
                Step::Done(done) => return self.finish(done, &o).await,
                step => self.step(&mut o, step, &mut gate).await?,
            }
        }
        Err(Stop::from(Error::Internal(format!(
            "the planner did not finish within {MAX_STEPS} steps"
        ))))
    }

    pub(super) async fn step(
        &self,
        o: &mut Observed,
        step: Step,
        gate: &mut Option<Gate>,
    ) -> Result<(), Stop> {
        if plan::writes(&step) {
            self.ctx.may_write()?;
        }
        match step {
            Step::ReadCredentials => {
                self.credentials(o).await?;
                o.remembered_key = self.ctx.bindings.key_for(&self.obj);
            }
            Step::MarkInUse(target) => {
                self.ctx.in_use().mark(&target).await?;
                for (t, marked) in &mut o.in_use {
                    *marked |= *t == target;
                }
            }
            Step::Observe { key, id } => o.remote = Some(self.observe(&key, &id).await),
            Step::Fetch { key, id } => o.remote = Some(self.fetch(&key, &id).await),
            Step::ListCandidates { key } => {
                let lock = self.ctx.create_gates.of(&key);
                *gate = Some(Gate::Exclusive(lock.write_owned().await));
                let listed = self.ctx.api.list_snapshot(&key).await;
                o.listed_at = listed.as_ref().ok().and_then(|s| s.server_time);
                o.candidates = Some(listed.map(|s| s.inboxes));
            }
            Step::FindBindings { cluster_wide, ids } => {
                let (found, unavailable) =
                    self.bound_elsewhere(&o.inbox, cluster_wide, &ids).await?;
                note_bindings(o, found, ids);
                if unavailable.is_some() {
                    o.bindings_unavailable = unavailable;
                }
            }
            Step::MarkPending {
                unbind,
                address,
                origin,
                resumes,
                key,
            } => {
                self.mark_pending(o, unbind, &address, origin, &key).await?;
                o.resumed = resumes;
            }
            Step::Progress(report) => {
                let reason = report.readiness.reason();
                if self.report(&report).await? {
                    o.inbox.status = Some(report.status);
                }
                o.progress = Some(reason);
            }
            Step::Create { key, request } => self.create(o, gate, &key, request).await,
            step @ (Step::Bind { .. } | Step::BindWithSecret { .. }) => {
                self.bind(o, gate, step).await?;
            }
            step => self.bookkeeping(o, step).await?,
        }
        Ok(())
    }

    /// Record the binding of `remote` (and publish `event`), and with `secret`, create that
    /// Secret at the same time ([`Step::BindWithSecret`]: the two writes are independent, and
    /// either failing is safe — see there). The event is published when the binding is
    /// written, whatever the Secret write did; a failed write fails the pass.
    pub(super) async fn bind(
        &self,
        o: &mut Observed,
        gate: &mut Option<Gate>,
        step: Step,
    ) -> Result<(), Stop> {
        let (key, remote, event, secret) = match step {
            Step::Bind { key, remote, event } => (key, remote, event, None),
            Step::BindWithSecret {
                key,
                remote,
                event,
                secret,
            } => (key, remote, event, Some(*secret)),
            other => return Err(Stop::from(Error::Internal(format!("not a bind: {other}")))),
        };
        let owner = format!("{}/{}", self.ns, self.name);
        self.ctx.bindings.note_bound(&remote.id, &self.uid, &owner);
        let write_secret = async {
            match &secret {
                Some(s) => self.write_secret(s, true, None).await.map(Some),
                None => Ok(None),
            }
        };
        let (bound, written) =
            futures::future::join(self.record_binding(o, &remote.id, &key), write_secret).await;
        bound?;
        *gate = None;
        self.ctx.scans.remember(&key, &remote);
        self.publish(&event).await;
        o.remote = Some(Lookup::Found(remote));
        o.bound_now = true;
        if let (Some(s), Some(meta)) = (&secret, written?) {
            o.secrets.insert(s.name_any(), Some(meta));
        }
        Ok(())
    }

    /// The steps that write annotations, Secrets and registries, or delete.
    pub(super) async fn bookkeeping(&self, o: &mut Observed, step: Step) -> Result<(), Stop> {
        match step {
            Step::ReadNamespace => {
                o.namespace_default = Some(self.namespace_default().await?);
            }
            Step::RecordBinding { id, key } => self.record_binding(o, &id, &key).await?,
            Step::AddFinalizer => {
                // On the version read (a conflict retries the pass on fresh data).
                let patch = json!({ "metadata": {
                    "resourceVersion": o.inbox.metadata.resource_version,
                    "finalizers": with_finalizer(&o.inbox),
                }});
                let updated = self
                    .inboxes
                    .patch(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await?;
                self.wrote_inbox(&updated);
                o.inbox.metadata.finalizers = updated.metadata.finalizers;
                o.inbox.metadata.resource_version = updated.metadata.resource_version;
                o.finalizer_missing = false;
            }
            Step::ClearPending => {
                self.patch_annotations(json!({
                    inbox::ANNOTATION_CREATE_PENDING: null,
                    inbox::ANNOTATION_CREATE_PENDING_PROOF: null,
                    inbox::ANNOTATION_CREATE_PENDING_SINCE: null,
                }))
                .await?;
                clear_pending(&mut o.inbox);
                o.pending_cleared = true;
            }
            Step::Forget { key, id } => {
                self.ctx.scans.forget(&key, &id);
                o.forgotten = true;
            }
            Step::RequestRefresh { key, value } => {
                o.refresh = Some(self.ctx.refreshes.request(&key, &self.obj, &value));
            }
            Step::Register { key, id } => {
                self.ctx.bindings.register(&key, &id, self.obj.clone());
                o.registered = true;
            }
            Step::ReadSecret { name } => {
                let found = self.get_secret(&name).await?;
                o.secrets.insert(name, found);
            }
            Step::WriteSecret {
                secret,
                create,
                event,
            } => {
                let uid = o
                    .secrets
                    .get(&secret.name_any())
                    .and_then(|m| m.as_ref()?.uid.clone());
                let written = self.write_secret(&secret, create, uid.as_deref()).await?;
                if let Some(event) = &event {
                    self.publish(event).await;
                }
                o.secrets.insert(secret.name_any(), Some(written));
            }
            Step::DeleteSecret { name, uid } => {
                self.delete_secret(&name, uid).await?;
                o.secrets.insert(name, None);
            }
            Step::DeleteInbox { key, id } => {
                o.deleted = Some(match self.ctx.api.delete_inbox(&key, &id).await {
                    Ok(()) | Err(ApiError::NotFound { .. }) => Ok(()),
                    Err(e) => Err(e),
                });
            }
            Step::Announce(event) => {
                self.publish(&event).await;
                o.announced.push(event.kind);
            }
            other => return self.output_step(o, other).await,
        }
        Ok(())
    }

    /// Report, account and end the pass as the planner decided.
    pub(super) async fn finish(&self, done: Done, o: &Observed) -> Result<Action, Stop> {
        if done.report.as_ref().is_some_and(|r| r.changed) {
            self.ctx.may_write()?;
        }
        let reported = match &done.report {
            Some(report) => self.report(report).await?,
            None => false,
        };
        if reported
            && let (Some(Credentials::Key(key)), Some(Lookup::Found(remote))) =
                (&o.credentials, &o.remote)
        {
            // The status shows this observation: the counter sync may stop asking.
            self.ctx.scans.reported(key, remote);
        }
        if done.hold.is_some() || done.failures == Failures::Reset || done.release {
            self.ctx.set_hold(&self.obj, done.hold.clone());
        }
        // A quota slot taken in this pass is kept while the Inbox holds an inbox (or a create
        // in flight), and freed once it holds none (refused, rejected, or gone).
        if done.release || !credentials::holds_inbox(&o.inbox, &self.ctx.proof) {
            self.ctx.quota_slots.lock().remove(&self.uid);
        }
        match done.failures {
            Failures::Keep => {}
            Failures::Reset => self.ctx.reset_failures(&self.obj),
            Failures::Bump => {
                self.ctx.bump_failures(&self.obj);
            }
        }
        if let Some(id) = &done.blocked_on {
            self.ctx.bindings.wait_for(id, self.obj.clone());
        }
        if done.release {
            self.released
                .store(true, std::sync::atomic::Ordering::Relaxed);
            let used = self.ctx.accounts.may_use(&o.inbox);
            self.ctx
                .in_use()
                .release_unused(&used, Some(&self.uid))
                .await;
            self.ctx.bindings.unregister(&self.obj);
            self.ctx.metrics.forget_inbox(&self.ns, &self.name);
            // Its binding is free at once: an Inbox refused for it looks again now.
            let ids: Vec<String> = o.binding().map(|b| b.id).into_iter().collect();
            for waiter in self.ctx.bindings.release(&self.uid, &ids) {
                let _ = self.ctx.wake.unbounded_send(waiter);
            }
        }
        *self.failed.lock() = done.failed;
        match done.then {
            Then::Settle => Ok(Action::await_change()),
            Then::Requeue(d) => Ok(Action::requeue(d)),
            Then::Fail(f) => Err(match (Stop::from(f), done.hold) {
                (Stop::Failed(cause), Some(h)) => Stop::FailedRetryIn {
                    cause,
                    retry: h.remaining,
                },
                (stop, _) => stop,
            }),
        }
    }

    /// Export the per-Inbox metrics; write the status if it changed and publish its
    /// transition events. `Ok(true)` when the status in the API server is the report's.
    pub(super) async fn report(&self, report: &Report) -> Result<bool, Stop> {
        self.ctx
            .metrics
            .observe_inbox(&self.ns, &self.name, &report.status, report.ready);
        if !report.changed {
            return Ok(true);
        }
        match self.write_status(&report.status).await {
            Ok(()) => {}
            Err(e) if report.best_effort => {
                warn!(error = %e, "could not write status");
                return Ok(false);
            }
            Err(e) => return Err(e),
        }
        for event in &report.events {
            self.publish(event).await;
        }
        Ok(true)
    }

    pub(super) async fn write_status(&self, status: &InboxStatus) -> Result<(), Stop> {
        let body = json!({
            "apiVersion": Inbox::api_version(&()),
            "kind": Inbox::kind(&()),
            "status": status,
        });
        let updated = self
            .inboxes
            .patch_status(
                &self.name,
                &PatchParams::apply(inbox::FIELD_MANAGER).force(),
                &Patch::Apply(&body),
            )
            .await?;
        self.wrote_inbox(&updated);
        Ok(())
    }

    /// Publish `event` in the background ([`crate::controller::inbox::events::EventRecorder`]).
    pub(super) async fn publish(&self, event: &InboxEvent) {
        self.ctx.recorder.publish(event, &self.reference).await;
    }
}

/// Whether the Inbox lacks the finalizer and is not being deleted.
pub(super) fn needs_finalizer(inbox: &Inbox) -> bool {
    inbox.metadata.deletion_timestamp.is_none()
        && !inbox.finalizers().iter().any(|f| f == inbox::FINALIZER)
}

/// Add the claims found on `ids` to what the pass knows.
pub(super) fn note_bindings(o: &mut Observed, found: HashMap<String, Claim>, ids: Vec<String>) {
    o.bound_elsewhere
        .get_or_insert_with(HashMap::new)
        .extend(found);
    o.bindings_checked
        .get_or_insert_with(Default::default)
        .extend(ids);
}

/// The Inbox's finalizers with this operator's added.
pub(super) fn with_finalizer(inbox: &Inbox) -> Vec<String> {
    let mut list = inbox.finalizers().to_vec();
    if !list.iter().any(|f| f == inbox::FINALIZER) {
        list.push(inbox::FINALIZER.to_string());
    }
    list
}

/// Mirror the removal of the pending mark, its proof and its time in the pass's view.
pub(super) fn clear_pending(inbox: &mut Inbox) {
    for k in [
        inbox::ANNOTATION_CREATE_PENDING,
        inbox::ANNOTATION_CREATE_PENDING_PROOF,
        inbox::ANNOTATION_CREATE_PENDING_SINCE,
    ] {
        set_annotation(inbox, k, None);
    }
}

/// Mirror one of this pass's annotation writes in its view of the Inbox.
pub(super) fn set_annotation(inbox: &mut Inbox, key: &str, value: Option<&str>) {
    let annotations = inbox.annotations_mut();
    match value {
        Some(v) => {
            annotations.insert(key.to_string(), v.to_string());
        }
        None => {
            annotations.remove(key);
        }
    }
}
