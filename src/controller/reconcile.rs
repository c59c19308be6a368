//! The reconcile pass: reads what is, asks [`super::decide`] what to do, and does it.
//! All Kubernetes and AgentSend calls of the controller live here.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::runtime::reflector::ObjectRef;
use serde_json::json;
use tracing::{Instrument, field, info, warn};

use super::decide::{self, Recovery, SecretPlan};
use super::status::{self, Readiness, StatusInput};
use super::{Context, Error, key_of, ns_name, object_ref, settled};
use crate::agentsend::{ApiError, ApiKey, InboxState, RemoteInbox};
use crate::crd::{self, DeletionPolicy, Inbox, InboxStatus, reason};

/// Entry point called by the kube-runtime Controller.
pub(crate) async fn reconcile(inbox: Arc<Inbox>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let (ns, name) = ns_name(&inbox)?;
    let span = tracing::info_span!(
        "reconcile",
        namespace = %ns,
        name = %name,
        inbox_id = field::Empty
    );
    if let Some(id) = inbox.bound_inbox_id() {
        span.record("inbox_id", field::display(&id));
    }
    let result = reconcile_inner(inbox, ctx.clone(), ns)
        .instrument(span)
        .await;
    ctx.metrics.reconciled(result.is_ok(), started.elapsed());
    if let Err(e) = &result {
        ctx.metrics.error(e.metric_label());
    }
    result
}

async fn reconcile_inner(
    inbox: Arc<Inbox>,
    ctx: Arc<Context>,
    ns: String,
) -> Result<Action, Error> {
    let api: Api<Inbox> = Api::namespaced(ctx.client.clone(), &ns);
    if inbox.metadata.deletion_timestamp.is_some() && inbox.is_paused() {
        // Paused: deletion waits (no AgentSend call) until the annotation is removed.
        let pass = Pass::new(&ctx, &inbox);
        pass.set_status(
            None,
            Readiness::Idle {
                reason: reason::PAUSED,
                message: "deletion is waiting: the Inbox is paused (agentsend.io/paused); remove the annotation to let the operator finish deleting".into(),
            },
        )
        .await?;
        return Ok(settled());
    }
    let ctx2 = ctx.clone();
    finalizer(&api, crd::FINALIZER, inbox, |event| async move {
        match event {
            FinalizerEvent::Apply(inbox) => Pass::new(&ctx2, &inbox).apply().await,
            FinalizerEvent::Cleanup(inbox) => Pass::new(&ctx2, &inbox).cleanup().await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

/// Retry policy for errors that escaped the pass (Kubernetes failures, deletion failures).
pub(crate) fn error_policy(inbox: Arc<Inbox>, err: &Error, ctx: Arc<Context>) -> Action {
    let failures = ctx.bump_failures(&key_of(&inbox));
    let jitter = rand::random::<f64>();
    let delay = match err {
        Error::Api(e) => {
            decide::retry_delay(e, failures, jitter).unwrap_or(Duration::from_secs(300))
        }
        Error::CredentialsMissing(_) => decide::backoff(failures.max(4), jitter),
        Error::Finalizer(inner) => match inner.as_ref() {
            kube::runtime::finalizer::Error::CleanupFailed(Error::Api(e))
            | kube::runtime::finalizer::Error::ApplyFailed(Error::Api(e)) => {
                decide::retry_delay(e, failures, jitter).unwrap_or(Duration::from_secs(300))
            }
            _ => decide::backoff(failures, jitter),
        },
        _ => decide::backoff(failures, jitter),
    };
    warn!(
        namespace = inbox.metadata.namespace.as_deref().unwrap_or_default(),
        name = inbox.metadata.name.as_deref().unwrap_or_default(),
        error = %err,
        retry_in_ms = delay.as_millis() as u64,
        "reconcile failed"
    );
    Action::requeue(delay)
}

/// One reconcile pass over one Inbox.
struct Pass<'a> {
    ctx: &'a Context,
    inbox: &'a Inbox,
    ns: String,
    name: String,
    api: Api<Inbox>,
}

enum KeyOutcome {
    Key(ApiKey),
    Missing(String),
}

impl<'a> Pass<'a> {
    fn new(ctx: &'a Context, inbox: &'a Inbox) -> Self {
        let ns = inbox.metadata.namespace.clone().unwrap_or_default();
        let name = inbox.metadata.name.clone().unwrap_or_default();
        let api = Api::namespaced(ctx.client.clone(), &ns);
        Pass {
            ctx,
            inbox,
            ns,
            name,
            api,
        }
    }

    fn obj_key(&self) -> ObjectRef<Inbox> {
        key_of(self.inbox)
    }

    fn uid(&self) -> String {
        self.inbox.metadata.uid.clone().unwrap_or_default()
    }

    fn adopted(&self) -> bool {
        self.inbox.spec.inbox_id.is_some()
    }

    // ---------------------------------------------------------------- apply

    async fn apply(&self) -> Result<Action, Error> {
        if self.inbox.is_paused() {
            self.set_status(
                None,
                Readiness::Idle {
                    reason: reason::PAUSED,
                    message: "paused by the agentsend.io/paused annotation: no AgentSend calls and no Secret writes until it is removed".into(),
                },
            )
            .await?;
            return Ok(settled());
        }
        let key = match self.credentials().await? {
            KeyOutcome::Key(k) => k,
            KeyOutcome::Missing(msg) => {
                self.set_status(None, Readiness::stalled(reason::CREDENTIALS_MISSING, msg))
                    .await?;
                let n = self.ctx.bump_failures(&self.obj_key());
                return Ok(Action::requeue(decide::backoff(
                    n.clamp(3, 5),
                    rand::random(),
                )));
            }
        };
        let action = match self.inbox.bound_inbox_id() {
            Some(id) => self.apply_bound(&key, &id).await?,
            None => match self.inbox.spec.inbox_id.clone() {
                Some(id) => self.adopt(&key, &id).await?,
                None => self.create_or_recover(&key, false).await?,
            },
        };
        Ok(action)
    }

    /// Resolve the API key: the Inbox's own Secret (same namespace only) or the default.
    async fn credentials(&self) -> Result<KeyOutcome, Error> {
        let Some(c) = &self.inbox.spec.credentials else {
            return Ok(match self.ctx.settings.default_key.current() {
                Some(k) => KeyOutcome::Key(k),
                None => KeyOutcome::Missing(
                    "no spec.credentials and the operator has no default API key (AGENTSEND_API_KEY or --api-key-file)".into(),
                ),
            });
        };
        let secrets: Api<Secret> = Api::namespaced(self.ctx.client.clone(), &self.ns);
        let r = &c.secret_ref;
        let Some(secret) = secrets.get_opt(&r.name).await? else {
            return Ok(KeyOutcome::Missing(format!(
                "credentials Secret {:?} not found in namespace {:?}",
                r.name, self.ns
            )));
        };
        let value = secret
            .data
            .as_ref()
            .and_then(|d| d.get(&r.key))
            .map(|b| String::from_utf8_lossy(&b.0).into_owned());
        Ok(match value.and_then(ApiKey::new) {
            Some(k) => KeyOutcome::Key(k),
            None => KeyOutcome::Missing(format!(
                "credentials Secret {:?} has no non-empty key {:?}",
                r.name, r.key
            )),
        })
    }

    /// The Inbox is bound to `id`: check immutability, observe, converge.
    async fn apply_bound(&self, key: &ApiKey, id: &str) -> Result<Action, Error> {
        if let Some(m) = decide::inbox_id_changed(&self.inbox.spec, id) {
            return self.immutable(&m).await;
        }
        // Immutability against the recorded identity: no AgentSend call needed.
        if let Some(recorded) = self.recorded_identity(id)
            && let Some(m) = decide::identity_mismatch(&self.inbox.spec, &recorded, !self.adopted())
        {
            return self.immutable(&m).await;
        }
        let observed = match self.ctx.accounts.observe(key, id).await {
            Ok(o) => o,
            Err(e) => return self.api_failure(&e, Some(id)).await,
        };
        let remote = match observed {
            Some(r) if r.status != InboxState::Deleted => r,
            _ => return self.vanished(key, id).await,
        };
        if let Some(m) = decide::identity_mismatch(&self.inbox.spec, &remote, !self.adopted()) {
            return self.immutable(&m).await;
        }
        if self.inbox.annotation(crd::ANNOTATION_INBOX_ID) != Some(id) {
            // Bound through status only (e.g. restored from a backup): pin it.
            self.record_binding(id).await?;
        }
        self.converge(key, &remote).await
    }

    /// The identity recorded in status for `id`, if status describes it.
    fn recorded_identity(&self, id: &str) -> Option<RemoteInbox> {
        let s = self.inbox.status.as_ref()?;
        if s.inbox_id.as_deref() != Some(id) {
            return None;
        }
        Some(RemoteInbox {
            id: id.to_string(),
            address: s.address.clone()?,
            display_name: s.display_name.clone(),
            domain_id: s.domain_id.clone(),
            status: InboxState::Active,
            daily_send_limit: None,
            sends_today: None,
            total_sent: None,
            bounce_count: None,
            complaint_count: None,
            created_at: None,
        })
    }

    async fn immutable(&self, m: &decide::FieldMismatch) -> Result<Action, Error> {
        self.set_status(
            None,
            Readiness::stalled(
                reason::IMMUTABLE_FIELD_CHANGED,
                decide::immutable_message(m),
            ),
        )
        .await?;
        Ok(settled())
    }

    /// The bound inbox no longer exists in AgentSend.
    async fn vanished(&self, key: &ApiKey, id: &str) -> Result<Action, Error> {
        self.ctx.accounts.forget(key, id);
        if self.adopted() {
            self.set_status(
                None,
                Readiness::stalled(
                    reason::INBOX_NOT_FOUND,
                    format!("the adopted inbox {id:?} no longer exists in this AgentSend account; set spec.inboxId to an existing inbox or remove it to create a new one"),
                ),
            )
            .await?;
            return Ok(Action::requeue(self.ctx.settings.sync_interval * 5));
        }
        warn!(
            inbox_id = id,
            "inbox vanished from AgentSend; recreating from spec"
        );
        // Unbind (empty annotation: explicitly unbound) and mark the create as pending in one
        // write, then create on the updated object.
        let now = now_rfc3339();
        if !self
            .patch_annotations_if_current(json!({
                crd::ANNOTATION_INBOX_ID: "",
                crd::ANNOTATION_CREATE_PENDING: now,
            }))
            .await?
        {
            return Ok(self.stale_view_retry());
        }
        let mut unbound = self.inbox.clone();
        let ann = unbound
            .metadata
            .annotations
            .get_or_insert_with(Default::default);
        ann.insert(crd::ANNOTATION_INBOX_ID.into(), String::new());
        ann.insert(crd::ANNOTATION_CREATE_PENDING.into(), now);
        Pass::new(self.ctx, &unbound)
            .create(key, true, Some(id))
            .await
    }

    /// Adopt an existing inbox by ID.
    async fn adopt(&self, key: &ApiKey, id: &str) -> Result<Action, Error> {
        let remote = match self.ctx.api.get_inbox(key, id).await {
            Ok(r) => r,
            Err(ApiError::NotFound { .. }) => {
                self.set_status(
                    None,
                    Readiness::stalled(
                        reason::INBOX_NOT_FOUND,
                        format!("spec.inboxId {id:?} does not exist in this AgentSend account (or belongs to another account); nothing was created"),
                    ),
                )
                .await?;
                return Ok(Action::requeue(self.ctx.settings.sync_interval * 5));
            }
            Err(e) => return self.api_failure(&e, None).await,
        };
        if let Some(m) = decide::identity_mismatch(&self.inbox.spec, &remote, false) {
            let msg = format!("cannot adopt inbox {id:?}: {}", m.message);
            return self.rejected(&msg).await;
        }
        if self.bound_elsewhere().await?.contains(id) {
            let msg = format!(
                "inbox {id:?} is already bound to another Inbox in this cluster; two Inboxes never share one inbox"
            );
            return self.rejected(&msg).await;
        }
        self.ctx.accounts.note_bound(id, &self.uid());
        self.record_binding(id).await?;
        self.ctx.accounts.remember(key, &remote);
        self.event(
            false,
            "Adopted",
            format!(
                "adopted existing AgentSend inbox {} ({})",
                id, remote.address
            ),
        )
        .await;
        self.converge(key, &remote).await
    }

    async fn rejected(&self, msg: &str) -> Result<Action, Error> {
        self.set_status(None, Readiness::stalled(reason::REJECTED, msg))
            .await?;
        Ok(settled())
    }

    /// No inbox bound: recover an interrupted create, or create.
    async fn create_or_recover(&self, key: &ApiKey, recreated: bool) -> Result<Action, Error> {
        let pending = self
            .inbox
            .annotation(crd::ANNOTATION_CREATE_PENDING)
            .map(str::to_string);
        let Some(pending) = pending else {
            if self.rejected_at_this_generation() {
                // The API refused this exact spec; it will refuse it again.
                return Ok(settled());
            }
            // Only mark (and then create) if this pass saw the current object: a stale cache
            // view could miss the binding a previous pass recorded.
            if !self
                .patch_annotations_if_current(
                    json!({ crd::ANNOTATION_CREATE_PENDING: now_rfc3339() }),
                )
                .await?
            {
                return Ok(self.stale_view_retry());
            }
            return self.create(key, recreated, None).await;
        };
        // A create may have happened without being recorded: look before creating. Exclusive:
        // no create of this account is between its answer and its bookkeeping meanwhile.
        let gate = self.ctx.accounts.create_gate(key);
        let exclusive = gate.write().await;
        let candidates = match self.ctx.api.list_all(key).await {
            Ok(c) => c,
            Err(e) => return self.api_failure(&e, None).await,
        };
        let since = pending.parse::<jiff::Timestamp>().ok();
        let elsewhere = self.bound_elsewhere().await?;
        match decide::recover_pending(&self.inbox.spec, since, &candidates, &elsewhere) {
            Recovery::Bind(remote) => {
                info!(inbox_id = %remote.id, "recovered the inbox of an interrupted create");
                self.ctx.accounts.note_bound(&remote.id, &self.uid());
                self.record_binding(&remote.id).await?;
                drop(exclusive);
                self.ctx.accounts.remember(key, &remote);
                self.event(
                    false,
                    "Created",
                    format!(
                        "created AgentSend inbox {} ({}); recovered after an interrupted create",
                        remote.id, remote.address
                    ),
                )
                .await;
                self.converge(key, &remote).await
            }
            Recovery::CreateNew => {
                drop(exclusive);
                self.create(key, recreated, None).await
            }
            Recovery::Ambiguous(ids) => {
                let msg = format!(
                    "an interrupted create left {} matching inboxes ({}); set spec.inboxId to the one to keep and delete the others in AgentSend",
                    ids.len(),
                    ids.join(", ")
                );
                self.set_status(None, Readiness::stalled(reason::CREATION_UNCERTAIN, msg))
                    .await?;
                Ok(settled())
            }
        }
    }

    fn rejected_at_this_generation(&self) -> bool {
        status::find(self.inbox.status.as_ref(), crd::condition::READY).is_some_and(|c| {
            c.reason == reason::REJECTED && c.observed_generation == self.inbox.metadata.generation
        })
    }

    /// POST /inboxes, with the pending mark already persisted.
    async fn create(
        &self,
        key: &ApiKey,
        recreated: bool,
        old_id: Option<&str>,
    ) -> Result<Action, Error> {
        let req = decide::create_request(&self.inbox.spec);
        let gate = self.ctx.accounts.create_gate(key);
        let guard = gate.read().await;
        match self.ctx.api.create_inbox(key, &req).await {
            Ok(remote) => {
                tracing::Span::current().record("inbox_id", field::display(&remote.id));
                self.ctx.accounts.note_bound(&remote.id, &self.uid());
                self.record_binding(&remote.id).await?;
                drop(guard);
                self.ctx.accounts.remember(key, &remote);
                if recreated {
                    let old = old_id.unwrap_or("?");
                    self.event(
                        true,
                        "Recreated",
                        format!("inbox {old} vanished from AgentSend and was recreated as {} ({}); the old address may be gone", remote.id, remote.address),
                    )
                    .await;
                } else {
                    self.event(
                        false,
                        "Created",
                        format!("created AgentSend inbox {} ({})", remote.id, remote.address),
                    )
                    .await;
                }
                info!(inbox_id = %remote.id, "created inbox");
                self.converge(key, &remote).await
            }
            Err(e) => {
                if proves_not_created(&e) {
                    self.patch_annotations(json!({ crd::ANNOTATION_CREATE_PENDING: null }))
                        .await?;
                }
                // Otherwise the pending mark stays: the next pass lists before creating.
                self.api_failure(&e, None).await
            }
        }
    }

    /// Converge the Secret and status on an observed, bound inbox.
    async fn converge(&self, key: &ApiKey, remote: &RemoteInbox) -> Result<Action, Error> {
        self.ctx.accounts.register(key, &remote.id, self.obj_key());
        let secret_name = self.inbox.secret_name();
        let readiness = match self.ensure_secret(remote).await? {
            SecretOutcome::Conflict => Readiness::stalled(
                reason::SECRET_CONFLICT,
                format!(
                    "Secret {secret_name:?} exists and is not owned by this Inbox; it is left untouched: delete it or set spec.secret.name"
                ),
            ),
            SecretOutcome::Ok => {
                self.cleanup_renamed_secret(&secret_name).await?;
                status::readiness_of(remote)
            }
        };
        let conflict = matches!(
            readiness,
            Readiness::Stalled {
                reason: reason::SECRET_CONFLICT,
                ..
            }
        );
        self.set_status_with(
            Some(remote),
            (!conflict).then(|| secret_name.clone()),
            readiness,
        )
        .await?;
        self.ctx.reset_failures(&self.obj_key());
        if conflict {
            // The foreign Secret is not watched: look again now and then.
            return Ok(Action::requeue(
                Duration::from_secs(30).mul_f64(1.0 + rand::random::<f64>() * 0.2),
            ));
        }
        Ok(settled())
    }

    // ---------------------------------------------------------------- Secret

    async fn ensure_secret(&self, remote: &RemoteInbox) -> Result<SecretOutcome, Error> {
        let desired = decide::desired_secret(self.inbox, remote);
        let name = self.inbox.secret_name();
        let existing = self.get_secret(&name).await?;
        let uid = self.inbox.metadata.uid.clone().unwrap_or_default();
        let secrets: Api<Secret> = Api::namespaced(self.ctx.client.clone(), &self.ns);
        match decide::plan_secret(existing.as_ref(), &desired, &uid) {
            SecretPlan::UpToDate => Ok(SecretOutcome::Ok),
            SecretPlan::Conflict => Ok(SecretOutcome::Conflict),
            SecretPlan::Create => {
                let pp = PostParams {
                    field_manager: Some(crd::FIELD_MANAGER.into()),
                    ..Default::default()
                };
                match secrets.create(&pp, &desired).await {
                    Ok(_) => {}
                    // Appeared meanwhile (ours from a racing pass, or someone else's): re-read next pass.
                    Err(kube::Error::Api(s)) if s.code == 409 => {
                        return Err(Error::Kube(kube::Error::Api(s)));
                    }
                    Err(e) => return Err(e.into()),
                }
                self.event(
                    false,
                    "SecretWritten",
                    format!("wrote the address to Secret {name}"),
                )
                .await;
                Ok(SecretOutcome::Ok)
            }
            SecretPlan::Update => {
                let mut body = serde_json::to_value(&desired)
                    .map_err(|e| Error::Kube(kube::Error::SerdeError(e)))?;
                body["apiVersion"] = json!("v1");
                body["kind"] = json!("Secret");
                secrets
                    .patch(
                        &name,
                        &PatchParams::apply(crd::FIELD_MANAGER).force(),
                        &Patch::Apply(&body),
                    )
                    .await?;
                self.event(
                    false,
                    "SecretWritten",
                    format!("restored the address in Secret {name}"),
                )
                .await;
                Ok(SecretOutcome::Ok)
            }
        }
    }

    /// From the watch cache; one GET when the cache does not have it (a foreign Secret is
    /// not in the label-filtered cache, and the cache may lag our own writes).
    async fn get_secret(&self, name: &str) -> Result<Option<Secret>, Error> {
        if let Some(store) = self.ctx.secret_store(&self.ns)
            && let Some(s) = store.get(&ObjectRef::new(name).within(&self.ns))
        {
            return Ok(Some((*s).clone()));
        }
        let secrets: Api<Secret> = Api::namespaced(self.ctx.client.clone(), &self.ns);
        Ok(secrets.get_opt(name).await?)
    }

    /// After `spec.secret.name` changed, delete the previous Secret if we own it.
    async fn cleanup_renamed_secret(&self, current: &str) -> Result<(), Error> {
        let Some(old) = self
            .inbox
            .status
            .as_ref()
            .and_then(|s| s.secret_name.clone())
        else {
            return Ok(());
        };
        if old != current {
            self.delete_owned_secret(&old).await?;
        }
        Ok(())
    }

    async fn delete_owned_secret(&self, name: &str) -> Result<(), Error> {
        let uid = self.inbox.metadata.uid.clone().unwrap_or_default();
        let Some(s) = self.get_secret(name).await? else {
            return Ok(());
        };
        if !decide::is_owned_by(&s, &uid) {
            return Ok(());
        }
        let secrets: Api<Secret> = Api::namespaced(self.ctx.client.clone(), &self.ns);
        let dp = DeleteParams {
            preconditions: s.metadata.uid.clone().map(|u| kube::api::Preconditions {
                uid: Some(u),
                resource_version: None,
            }),
            ..Default::default()
        };
        match secrets.delete(name, &dp).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    // ---------------------------------------------------------------- cleanup

    async fn cleanup(&self) -> Result<Action, Error> {
        let policy = self.inbox.spec.deletion_policy;
        let bound = self.inbox.bound_inbox_id();
        let pending = self
            .inbox
            .annotation(crd::ANNOTATION_CREATE_PENDING)
            .map(str::to_string);
        let _ = self
            .set_status(
                None,
                Readiness::progressing(
                    reason::DELETING,
                    format!("deleting (deletionPolicy {policy:?})"),
                ),
            )
            .await;
        match policy {
            DeletionPolicy::Orphan => {
                if let Some(id) = &bound {
                    self.event(
                        false,
                        "Orphaned",
                        format!("left AgentSend inbox {id} in place (deletionPolicy Orphan)"),
                    )
                    .await;
                }
            }
            DeletionPolicy::Delete if bound.is_some() || pending.is_some() => {
                let key = match self.credentials().await? {
                    KeyOutcome::Key(k) => k,
                    // The Secret may already be gone (its namespace is being deleted): the key
                    // this process last used for the Inbox still works.
                    KeyOutcome::Missing(msg) => match self.ctx.accounts.key_for(&self.obj_key()) {
                        Some(k) => k,
                        None => {
                            let _ = self
                                .set_status(
                                    None,
                                    Readiness::stalled(
                                        reason::CREDENTIALS_MISSING,
                                        format!("cannot delete the AgentSend inbox: {msg}; restore the credentials or set deletionPolicy: Orphan"),
                                    ),
                                )
                                .await;
                            return Err(Error::CredentialsMissing(msg));
                        }
                    },
                };
                let target = match (&bound, &pending) {
                    (Some(id), _) => Some(id.clone()),
                    (None, Some(p)) => self.find_interrupted_create(&key, p).await?,
                    (None, None) => None,
                };
                if let Some(id) = target {
                    match self.ctx.api.delete_inbox(&key, &id).await {
                        Ok(()) | Err(ApiError::NotFound { .. }) => {}
                        Err(e) => {
                            let _ = self.api_failure(&e, Some(&id)).await;
                            return Err(Error::Api(e));
                        }
                    }
                    self.ctx.accounts.forget(&key, &id);
                    self.event(false, "Deleted", format!("deleted AgentSend inbox {id}"))
                        .await;
                }
            }
            DeletionPolicy::Delete => {}
        }
        let current = self.inbox.secret_name();
        self.delete_owned_secret(&current).await?;
        if let Some(old) = self
            .inbox
            .status
            .as_ref()
            .and_then(|s| s.secret_name.clone())
            && old != current
        {
            self.delete_owned_secret(&old).await?;
        }
        self.ctx.accounts.unregister(&self.obj_key());
        self.ctx.metrics.forget_inbox(&self.ns, &self.name);
        self.ctx.reset_failures(&self.obj_key());
        Ok(settled())
    }

    /// During deletion without a bound ID: find what an interrupted create made, if anything.
    async fn find_interrupted_create(
        &self,
        key: &ApiKey,
        pending: &str,
    ) -> Result<Option<String>, Error> {
        let gate = self.ctx.accounts.create_gate(key);
        let _exclusive = gate.write().await;
        let candidates = self.ctx.api.list_all(key).await?;
        let elsewhere = self.bound_elsewhere().await?;
        let since = pending.parse::<jiff::Timestamp>().ok();
        Ok(
            match decide::recover_pending(&self.inbox.spec, since, &candidates, &elsewhere) {
                Recovery::Bind(r) => Some(r.id),
                Recovery::CreateNew => None,
                Recovery::Ambiguous(ids) => {
                    self.event(
                    true,
                    "CreationUncertain",
                    format!("could not tell which of {} inboxes an interrupted create made ({}); none was deleted — delete the unwanted one in AgentSend", ids.len(), ids.join(", ")),
                )
                .await;
                    None
                }
            },
        )
    }

    // ---------------------------------------------------------------- helpers

    /// IDs bound to other Inboxes anywhere in the cluster (from the cache when it covers
    /// the cluster, otherwise a metadata-only list, falling back to the cache).
    async fn bound_elsewhere(&self) -> Result<HashSet<String>, Error> {
        let me = self.inbox.metadata.uid.clone();
        let mut ids = self
            .ctx
            .accounts
            .recently_bound_except(me.as_deref().unwrap_or_default());
        let from_cache = |ids: &mut HashSet<String>| {
            for store in &self.ctx.inbox_stores {
                for other in store.state() {
                    if other.metadata.uid != me
                        && let Some(id) = other.bound_inbox_id()
                    {
                        ids.insert(id);
                    }
                }
            }
        };
        if self.ctx.sees_whole_cluster() {
            from_cache(&mut ids);
            return Ok(ids);
        }
        let all: Api<Inbox> = Api::all(self.ctx.client.clone());
        match all.list_metadata(&ListParams::default()).await {
            Ok(list) => {
                for item in list.items {
                    if item.metadata.uid != me
                        && let Some(id) = item
                            .metadata
                            .annotations
                            .as_ref()
                            .and_then(|a| a.get(crd::ANNOTATION_INBOX_ID))
                        && !id.is_empty()
                    {
                        ids.insert(id.clone());
                    }
                }
            }
            Err(e) => {
                warn!(error = %e, "cannot list Inboxes cluster-wide; checking bindings in the watched namespaces only");
                from_cache(&mut ids);
            }
        }
        Ok(ids)
    }

    /// Persist the binding and clear the pending mark in one write.
    async fn record_binding(&self, id: &str) -> Result<(), Error> {
        self.patch_annotations(json!({
            crd::ANNOTATION_INBOX_ID: id,
            crd::ANNOTATION_CREATE_PENDING: null,
        }))
        .await
    }

    /// Patch annotations only if the object is still at the resourceVersion this pass read
    /// (optimistic concurrency). `Ok(false)`: it changed meanwhile; decide again on fresh data.
    async fn patch_annotations_if_current(
        &self,
        annotations: serde_json::Value,
    ) -> Result<bool, Error> {
        let Some(rv) = self.inbox.metadata.resource_version.clone() else {
            return Ok(false);
        };
        let patch = json!({ "metadata": { "resourceVersion": rv, "annotations": annotations } });
        match self
            .api
            .patch(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => {
                tracing::debug!("Inbox changed since it was read; deciding again on fresh data");
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Retry after a stale cache view: soon (the watch normally delivers the newer object
    /// within a second), then backing off, so a watch that is down (API server restarting)
    /// does not turn into a patch per Inbox per second.
    fn stale_view_retry(&self) -> Action {
        let failures = self.ctx.bump_failures(&self.obj_key());
        Action::requeue(decide::stale_view_delay(failures, rand::random()))
    }

    async fn patch_annotations(&self, annotations: serde_json::Value) -> Result<(), Error> {
        let patch = json!({ "metadata": { "annotations": annotations } });
        self.api
            .patch(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        Ok(())
    }

    /// Turn an AgentSend failure into conditions and a retry.
    async fn api_failure(&self, e: &ApiError, _id: Option<&str>) -> Result<Action, Error> {
        let readiness = match e {
            ApiError::Unauthorized { .. } => {
                Readiness::stalled(reason::CREDENTIALS_INVALID, e.to_string())
            }
            ApiError::Rejected { message, status } => Readiness::stalled(
                reason::REJECTED,
                format!("AgentSend rejected the spec (HTTP {status}): {message}"),
            ),
            ApiError::NotFound { .. } => {
                Readiness::progressing(reason::API_UNAVAILABLE, e.to_string())
            }
            ApiError::RateLimited { .. }
            | ApiError::Transient { .. }
            | ApiError::InvalidResponse { .. } => {
                Readiness::progressing(reason::API_UNAVAILABLE, e.to_string())
            }
            ApiError::Config { .. } => Readiness::stalled(reason::API_UNAVAILABLE, e.to_string()),
        };
        self.ctx.metrics.error(e.reason());
        self.set_status(None, readiness).await?;
        let failures = self.ctx.bump_failures(&self.obj_key());
        Ok(match decide::retry_delay(e, failures, rand::random()) {
            Some(d) => Action::requeue(d),
            None => settled(),
        })
    }

    async fn set_status(
        &self,
        remote: Option<&RemoteInbox>,
        readiness: Readiness,
    ) -> Result<(), Error> {
        self.set_status_with(remote, None, readiness).await
    }

    /// Build the status and write it only if it changed; publish transition events and
    /// per-Inbox metrics.
    async fn set_status_with(
        &self,
        remote: Option<&RemoteInbox>,
        secret_name: Option<String>,
        readiness: Readiness,
    ) -> Result<(), Error> {
        let prev = self.inbox.status.as_ref();
        let prev_reason = status::find(prev, crd::condition::READY).map(|c| c.reason.clone());
        let prev_limit =
            status::find(prev, crd::condition::SEND_LIMIT_REACHED).map(|c| c.status.clone());
        let now = now_rfc3339();
        let inbox_id = remote
            .map(|r| r.id.clone())
            .or_else(|| self.inbox.bound_inbox_id());
        let new = status::build_status(StatusInput {
            previous: prev,
            generation: self.inbox.metadata.generation,
            inbox_id,
            remote,
            secret_name,
            readiness: readiness.clone(),
            now: &now,
        });
        let ready = matches!(readiness, Readiness::Ready);
        self.ctx
            .metrics
            .observe_inbox(&self.ns, &self.name, &new, ready);
        if prev == Some(&new) {
            return Ok(());
        }
        self.write_status(&new).await?;
        if let Some(ev) = decide::warning_for_transition(
            prev_reason.as_deref(),
            readiness.reason(),
            readiness.message(),
        ) {
            self.event(ev.warning, ev.reason, ev.note).await;
        }
        let limit_now =
            status::find(Some(&new), crd::condition::SEND_LIMIT_REACHED).map(|c| c.status.clone());
        if limit_now.as_deref() == Some("True") && prev_limit.as_deref() != Some("True") {
            let msg = status::find(Some(&new), crd::condition::SEND_LIMIT_REACHED)
                .map(|c| c.message.clone())
                .unwrap_or_default();
            self.event(true, "SendLimitReached", msg).await;
        }
        Ok(())
    }

    async fn write_status(&self, status: &InboxStatus) -> Result<(), Error> {
        let body = json!({
            "apiVersion": "agentsend.io/v1alpha1",
            "kind": "Inbox",
            "status": status,
        });
        self.api
            .patch_status(
                &self.name,
                &PatchParams::apply(crd::FIELD_MANAGER).force(),
                &Patch::Apply(&body),
            )
            .await?;
        Ok(())
    }

    async fn event(&self, warning: bool, reason: &str, note: String) {
        let ev = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.to_string(),
            note: Some(crate::agentsend::truncate(&note, 1000)),
            action: reason.to_string(),
            secondary: None,
        };
        if let Err(e) = self
            .ctx
            .recorder
            .publish(&ev, &object_ref(self.inbox))
            .await
        {
            warn!(error = %e, reason, "could not publish event");
        }
    }
}

enum SecretOutcome {
    Ok,
    Conflict,
}

/// Whether a failed create certainly created nothing: the API answered with a 4xx.
/// Transport errors and 5xx leave the outcome unknown.
fn proves_not_created(e: &ApiError) -> bool {
    matches!(
        e,
        ApiError::Rejected { .. }
            | ApiError::Unauthorized { .. }
            | ApiError::RateLimited { .. }
            | ApiError::NotFound { .. }
            | ApiError::Config { .. }
    )
}

fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}
