//! The executor of a reconcile pass: it decides nothing. It asks [`crate::controller::inbox::plan::plan`] for the
//! next step, performs that step's Kubernetes and AgentSend calls, records what they found in
//! the [`Observed`], and loops until the planner ends the pass. It also counts the pass in
//! the metrics and applies the error policy the planner chose.
//!
//! Every write (AgentSend POST/DELETE, Kubernetes writes and Events) is preceded by a check of
//! the write gate ([`Context::may_write`]): a pass that finds it closed (this instance is not
//! a confirmed leader) stops there with [`Error::NotLeading`]. Stopping between two writes
//! is what a crash does, and the planner recovers from it (the create-pending mark).

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, ListParams, ObjectMeta, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard};
use tracing::{Instrument, field, info, warn};

use crate::agentsend::{ApiError, ApiKey};
use crate::api::account;
use crate::api::inbox::{self, Inbox, InboxStatus};
use crate::controller::accounts::credentials;
use crate::controller::accounts::credentials::Credentials;
use crate::controller::cache::claims::{self, ClaimIndex, Claimant};
use crate::controller::cache::inbox::CachedInbox;
use crate::controller::cache::written::{self, Write};
use crate::controller::context::Context;
use crate::controller::error::Error;
use crate::controller::inbox::decide;
use crate::controller::inbox::events::InboxEvent;
use crate::controller::inbox::plan::{
    self, Claim, Done, Failures, Lookup, Marked, Observed, Phase, Report, Step, Then,
};
use crate::controller::ownership::proof::Origin;
use crate::metrics::Metrics;

/// A planner that has not finished after this many steps has a bug; the pass fails instead
/// of spinning.
const MAX_STEPS: usize = 64;

mod config_maps;

/// How a pass that did not fail ended.
struct Passed {
    action: Action,
    /// Metric label of a failure the pass handled itself (reported in status, retried).
    failed: Option<&'static str>,
    /// The pass did nothing: its cached view predates this operator's own last write.
    skipped: bool,
}

/// Entry point called by the kube-runtime Controller.
pub(crate) async fn reconcile(
    cached: Arc<CachedInbox>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let started = Instant::now();
    let inbox = Arc::new(cached.to_inbox());
    let span = tracing::info_span!(
        "reconcile",
        namespace = inbox.metadata.namespace.as_deref().unwrap_or_default(),
        name = inbox.metadata.name.as_deref().unwrap_or_default(),
        inbox_id = field::Empty
    );
    if let Some(b) = ctx.proof.binding(inbox.as_ref()) {
        span.record("inbox_id", field::display(&b.id));
    }
    let result = run(inbox, &ctx).instrument(span.clone()).await;
    span.in_scope(|| {
        tracing::debug!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            ok = result.is_ok(),
            "pass ended"
        );
    });
    record(&ctx.metrics, &result, started);
    result.map(|p| p.action)
}

/// Count a pass once: a success only when nothing failed, an error with its real label.
fn record(metrics: &Metrics, result: &Result<Passed, Error>, started: Instant) {
    if matches!(result, Err(Error::Held(_))) {
        // Not an attempt: the failure it backs off from was counted.
        return;
    }
    let failed = match result {
        Ok(p) if p.skipped => return metrics.skipped(),
        Ok(p) => p.failed,
        Err(e) => Some(e.metric_label()),
    };
    metrics.reconciled(failed.is_none(), started.elapsed());
    if let Some(label) = failed {
        metrics.error(label);
    }
}

async fn run(inbox: Arc<Inbox>, ctx: &Context) -> Result<Passed, Error> {
    let pass = Pass::new(ctx, &inbox)?;
    if ctx
        .last_writes
        .behind(&pass.uid, inbox.metadata.resource_version.as_deref())
    {
        tracing::debug!("the cache has not caught up with this operator's last write yet");
        return Ok(Passed {
            action: Action::requeue(written::RETRY),
            failed: None,
            skipped: true,
        });
    }
    // kube's finalizer helper may write (add or remove the finalizer) before any step.
    ctx.may_write()?;
    let outcome = run_phase(&pass, inbox).await;
    let last = *pass.last_write.lock();
    if let Some(w) = last {
        ctx.last_writes.note(&pass.uid, w);
    }
    let action = outcome?;
    let failed = *pass.failed.lock();
    Ok(Passed {
        action,
        failed,
        skipped: false,
    })
}

/// Run the pass in the phase the Inbox is in, through kube's finalizer helper where it
/// applies.
async fn run_phase(pass: &Pass<'_>, inbox: Arc<Inbox>) -> Result<Action, Error> {
    Ok(match Phase::before_finalizer(&inbox) {
        Some(phase) => pass.run(&inbox, phase).await?,
        // Without the finalizer, not deleted: this pass adds it with its first write (with the
        // pending mark when that is the first), rather than in a write of its own.
        None if needs_finalizer(&inbox) => pass.run(&inbox, Phase::Apply).await?,
        // kube's helper adds the finalizer, or runs Apply / Cleanup (and then removes it).
        None => {
            let p = pass;
            let action = finalizer(
                &pass.inboxes,
                inbox::FINALIZER,
                inbox,
                move |event| async move {
                    match event {
                        FinalizerEvent::Apply(i) => p.run(&i, Phase::Apply).await,
                        FinalizerEvent::Cleanup(i) => p.run(&i, Phase::Cleanup).await,
                    }
                },
            )
            .await
            .map_err(Error::from)?;
            if pass.released.load(std::sync::atomic::Ordering::Relaxed) {
                // The helper removed the finalizer after the release: done with this Inbox.
                pass.wrote(Write::Finalized);
            }
            action
        }
    })
}

/// Whether the Inbox lacks the finalizer and is not being deleted.
fn needs_finalizer(inbox: &Inbox) -> bool {
    inbox.metadata.deletion_timestamp.is_none()
        && !inbox.finalizers().iter().any(|f| f == inbox::FINALIZER)
}

/// Retry policy for passes that failed (Kubernetes failures, deletion failures).
pub(crate) fn error_policy(inbox: Arc<CachedInbox>, err: &Error, ctx: Arc<Context>) -> Action {
    if let Error::Held(remaining) = err {
        return Action::requeue(*remaining);
    }
    if let Error::NotLeading = err {
        // Not a failure of this Inbox: no backoff, and the gate logs its transitions.
        tracing::debug!(
            namespace = inbox.metadata.namespace.as_deref().unwrap_or_default(),
            name = inbox.metadata.name.as_deref().unwrap_or_default(),
            "not leading: pass stopped before writing"
        );
        return Action::requeue(Error::NOT_LEADING_RETRY);
    }
    let failures = ctx.bump_failures(&inbox.inbox_ref());
    let delay = plan::error_retry(err, failures, rand::random(), ctx.settings.max_retry_delay);
    warn!(
        namespace = inbox.metadata.namespace.as_deref().unwrap_or_default(),
        name = inbox.metadata.name.as_deref().unwrap_or_default(),
        error = %err,
        reason = err.metric_label(),
        retry_in_ms = delay.as_millis() as u64,
        "reconcile failed"
    );
    Action::requeue(delay)
}

/// The account's create gate, as held by this pass.
#[allow(dead_code)] // held for its Drop only
enum Gate {
    /// A create is between its POST and its bookkeeping.
    Shared(OwnedRwLockReadGuard<()>),
    /// A recovery is between its listing and its bookkeeping.
    Exclusive(OwnedRwLockWriteGuard<()>),
}

/// One reconcile pass over one Inbox, with the APIs it uses built once.
struct Pass<'a> {
    ctx: &'a Context,
    ns: String,
    name: String,
    uid: String,
    obj: ObjectRef<Inbox>,
    reference: k8s_openapi::api::core::v1::ObjectReference,
    inboxes: Api<Inbox>,
    secrets: Api<Secret>,
    failed: Mutex<Option<&'static str>>,
    /// This pass's last write to the Inbox (see [`written`]).
    last_write: Mutex<Option<Write>>,
    /// The pass released the Inbox (deletion done but for the finalizer).
    released: std::sync::atomic::AtomicBool,
}

impl<'a> Pass<'a> {
    fn new(ctx: &'a Context, inbox: &Inbox) -> Result<Self, Error> {
        let (Some(ns), Some(name), Some(uid)) = (
            inbox.namespace(),
            inbox.metadata.name.clone(),
            inbox.metadata.uid.clone(),
        ) else {
            return Err(Error::MissingObjectKey);
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
    fn wrote(&self, write: Write) {
        *self.last_write.lock() = Some(write);
    }

    /// Note a write to the Inbox that returned `updated`.
    fn wrote_inbox(&self, updated: &Inbox) {
        if let Some(w) = Write::version(updated.metadata.resource_version.as_deref()) {
            self.wrote(w);
        }
    }

    /// Plan and execute until the planner is done.
    async fn run(&self, inbox: &Inbox, phase: Phase) -> Result<Action, Error> {
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
        o.random_local = decide::random_local_part(|n| rand::random_range(0..n));
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
        Err(Error::Internal(format!(
            "the planner did not finish within {MAX_STEPS} steps"
        )))
    }

    async fn step(
        &self,
        o: &mut Observed,
        step: Step,
        gate: &mut Option<Gate>,
    ) -> Result<(), Error> {
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
            Step::Observe { key, id } => {
                o.remote = Some(match self.ctx.scans.observe(&key, &id).await {
                    Ok(Some(r)) => Lookup::Found(r),
                    Ok(None) => Lookup::Gone,
                    Err(e) => Lookup::Failed(e),
                });
            }
            Step::Fetch { key, id } => {
                o.remote = Some(match self.ctx.api.get_inbox(&key, &id).await {
                    Ok(r) => Lookup::Found(r),
                    Err(ApiError::NotFound { .. }) => Lookup::Gone,
                    Err(e) => Lookup::Failed(e),
                });
            }
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
            Step::Create { key, request } => {
                let lock = self.ctx.create_gates.of(&key);
                *gate = Some(Gate::Shared(lock.read_owned().await));
                let created = self.ctx.api.create_inbox(&key, &request).await;
                if let Ok(r) = &created {
                    tracing::Span::current().record("inbox_id", field::display(&r.id));
                    info!(inbox_id = %r.id, "created inbox");
                }
                o.created = Some(created);
                o.attempted = request.address.clone();
                // A later lookup must see the account as it is after this attempt.
                o.candidates = None;
            }
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
    async fn bind(
        &self,
        o: &mut Observed,
        gate: &mut Option<Gate>,
        step: Step,
    ) -> Result<(), Error> {
        let (key, remote, event, secret) = match step {
            Step::Bind { key, remote, event } => (key, remote, event, None),
            Step::BindWithSecret {
                key,
                remote,
                event,
                secret,
            } => (key, remote, event, Some(*secret)),
            other => return Err(Error::Internal(format!("not a bind: {other}"))),
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
    async fn bookkeeping(&self, o: &mut Observed, step: Step) -> Result<(), Error> {
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
    async fn finish(&self, done: Done, o: &Observed) -> Result<Action, Error> {
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
            Then::Fail(f) => Err(match done.hold {
                Some(h) => Error::Backoff {
                    cause: Box::new(f.into()),
                    retry: h.remaining,
                },
                None => f.into(),
            }),
        }
    }

    /// Export the per-Inbox metrics; write the status if it changed and publish its
    /// transition events. `Ok(true)` when the status in the API server is the report's.
    async fn report(&self, report: &Report) -> Result<bool, Error> {
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

    async fn write_status(&self, status: &InboxStatus) -> Result<(), Error> {
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
    async fn publish(&self, event: &InboxEvent) {
        self.ctx.recorder.publish(event, &self.reference).await;
    }

    // ------------------------------------------------------------------ inputs

    /// Resolve the API key ([`credentials::resolve`] over the account caches, the namespace's
    /// labels when a rule needs them, and the namespace's other Inboxes), read it from its
    /// Secret, and note which of the objects it comes through carry the in-use finalizer.
    async fn credentials(&self, o: &mut Observed) -> Result<(), Error> {
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
    fn resolve_reserving(
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
    async fn namespace_labels(
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
    async fn namespace_default(&self) -> Result<Option<String>, Error> {
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
    async fn bound_elsewhere(
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
    fn add_claim(
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
    async fn get_secret(&self, name: &str) -> Result<Option<ObjectMeta>, Error> {
        if let Some(store) = self.ctx.secret_store(&self.ns)
            && let Some(meta) = store.get(&self.ns, name)
        {
            return Ok(Some(meta));
        }
        let found = self.secrets.get_metadata_opt(name).await?;
        Ok(found.map(|m| m.metadata))
    }

    // ------------------------------------------------------------------ writes

    /// Persist the pending mark (and clear a vanished binding) if the Inbox is unchanged
    /// since read (optimistic concurrency).
    async fn mark_pending(
        &self,
        o: &mut Observed,
        unbind: Option<String>,
        address: &str,
        origin: Origin,
        key: &ApiKey,
    ) -> Result<(), Error> {
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
    fn binding_proof(&self, id: &str, key: &ApiKey) -> String {
        let account = self.ctx.proof.fingerprint(key);
        self.ctx
            .proof
            .binding_proof(&self.ns, &self.name, id, &account)
    }

    /// Persist the binding with its proof for `key`'s account, and clear the pending mark,
    /// in one write.
    async fn record_binding(&self, o: &mut Observed, id: &str, key: &ApiKey) -> Result<(), Error> {
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

    async fn patch_annotations(&self, annotations: serde_json::Value) -> Result<(), Error> {
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
    async fn write_secret(
        &self,
        secret: &Secret,
        create: bool,
        uid: Option<&str>,
    ) -> Result<ObjectMeta, Error> {
        config_maps::write_owned(&self.secrets, secret, create, uid).await
    }

    /// Delete an owned Secret; gone already, or replaced meanwhile (UID precondition), is fine.
    async fn delete_secret(&self, name: &str, uid: Option<String>) -> Result<(), Error> {
        config_maps::delete_owned(&self.secrets, name, uid).await
    }
}

/// Add the claims found on `ids` to what the pass knows.
fn note_bindings(o: &mut Observed, found: HashMap<String, Claim>, ids: Vec<String>) {
    o.bound_elsewhere
        .get_or_insert_with(HashMap::new)
        .extend(found);
    o.bindings_checked
        .get_or_insert_with(Default::default)
        .extend(ids);
}

/// The Inbox's finalizers with this operator's added.
fn with_finalizer(inbox: &Inbox) -> Vec<String> {
    let mut list = inbox.finalizers().to_vec();
    if !list.iter().any(|f| f == inbox::FINALIZER) {
        list.push(inbox::FINALIZER.to_string());
    }
    list
}

/// Mirror the removal of the pending mark, its proof and its time in the pass's view.
fn clear_pending(inbox: &mut Inbox) {
    for k in [
        inbox::ANNOTATION_CREATE_PENDING,
        inbox::ANNOTATION_CREATE_PENDING_PROOF,
        inbox::ANNOTATION_CREATE_PENDING_SINCE,
    ] {
        set_annotation(inbox, k, None);
    }
}

/// Mirror one of this pass's annotation writes in its view of the Inbox.
fn set_annotation(inbox: &mut Inbox, key: &str, value: Option<&str>) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::inbox::plan::writes;
    use kube::runtime::finalizer::Error as FinalizerError;

    #[test]
    fn errors_are_counted_once_with_their_real_reason() {
        let m = Metrics::new();
        let unauthorized = ApiError::Unauthorized {
            status: 401,
            message: "bad key".into(),
        };
        let wrapped = FinalizerError::CleanupFailed(Error::Api(unauthorized.clone()));
        record(&m, &Err(Error::from(wrapped)), Instant::now());
        let handled = Passed {
            action: Action::await_change(),
            failed: Some(unauthorized.reason()),
            skipped: false,
        };
        record(&m, &Ok(handled), Instant::now());
        let fine = Passed {
            action: Action::await_change(),
            failed: None,
            skipped: false,
        };
        record(&m, &Ok(fine), Instant::now());
        let stale = Passed {
            action: Action::requeue(written::RETRY),
            failed: None,
            skipped: true,
        };
        record(&m, &Ok(stale), Instant::now());
        let text = m.encode();
        assert!(
            text.contains(r#"inbox_operator_reconcile_errors_total{reason="unauthorized"} 2"#),
            "{text}"
        );
        assert!(!text.contains(r#"reason="finalizer""#), "{text}");
        assert!(
            text.contains(r#"inbox_operator_reconciles_total{result="error"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"inbox_operator_reconciles_total{result="success"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"inbox_operator_reconciles_total{result="skipped"} 1"#),
            "{text}"
        );
    }

    #[test]
    fn a_pass_stopped_by_the_gate_is_counted_as_not_leading() {
        let m = Metrics::new();
        record(&m, &Err(Error::NotLeading), Instant::now());
        let wrapped = FinalizerError::ApplyFailed(Error::NotLeading);
        record(&m, &Err(Error::from(wrapped)), Instant::now());
        let text = m.encode();
        assert!(
            text.contains(r#"inbox_operator_reconcile_errors_total{reason="not_leading"} 2"#),
            "{text}"
        );
    }

    #[test]
    fn reads_and_in_memory_steps_pass_a_closed_gate_writes_do_not() {
        assert!(!writes(&Step::ReadCredentials));
        assert!(!writes(&Step::FindBindings {
            cluster_wide: true,
            ids: vec!["i".into()]
        }));
        assert!(!writes(&Step::ReadSecret { name: "s".into() }));
        let key = crate::agentsend::ApiKey::new("k").expect("key");
        assert!(writes(&Step::MarkPending {
            unbind: None,
            address: "a@agentsend.io".into(),
            origin: Origin::Random,
            resumes: false,
            key: key.clone(),
        }));
        assert!(writes(&Step::ClearPending));
        assert!(writes(&Step::RecordBinding {
            id: "i".into(),
            key
        }));
        assert!(writes(&Step::DeleteSecret {
            name: "s".into(),
            uid: None
        }));
    }
}
