//! The reconcile planner: every decision the controller takes about one Inbox, as a pure
//! function from what the pass has observed so far ([`Observed`]) to the next thing to do
//! ([`Step`]).
//!
//! [`crate::controller::inbox::execute`] starts a pass with only the Inbox, asks [`plan`], runs the calls of the
//! step it gets, records what they found in the [`Observed`], and asks again, until the
//! planner answers [`Step::Done`]. Inputs are therefore gathered lazily, in the order the
//! lifecycle needs them: a paused Inbox costs no credentials read, a bound one no listing.
//!
//! The lifecycle, in the order [`plan`] checks it:
//! - **Paused** (`agentsend.io/paused`): report `Paused`, no AgentSend call, no Secret write;
//!   a paused Inbox being deleted keeps its finalizer until the annotation goes. So does one
//!   that carries other controllers' finalizers ([`Phase::Held`], `Deleting` names them).
//! - **Namespace default**: without `spec.deletionPolicy`, the namespace's
//!   `agentsend.io/default-deletion-policy` is read; status shows which policy applies.
//! - **Credentials** missing: `CredentialsMissing`, retried with backoff.
//! - **Bound** (annotation, else status): identity checks against the recorded and the observed
//!   inbox (`ImmutableFieldChanged`), then **converge** (Secret, status). A **vanished** inbox
//!   is re-created (created ones) or reported `InboxNotFound` (adopted ones).
//!   A new `agentsend.io/refresh` value queues a refresh (see [`crate::controller::remote::refresh`]).
//! - **Adopt** (`spec.inboxId`): fetch, check the spec's identity fields and the one-owner
//!   rule (`Rejected`), bind, converge.
//! - **Observe-only** (`managementPolicy: Observe`): adopt by `spec.inboxId`, or bind the exact
//!   `spec.address` from one list scan; never create or re-create (`InboxNotFound`), and
//!   deletion only releases.
//! - **Create**: persist `agentsend.io/create-pending` (only on a current view of the Inbox),
//!   report `Creating`, POST, bind. A failure that proves nothing was created clears the mark.
//! - **Recover**: a pending mark without an ID means an interrupted create: list the account
//!   and bind the one match, create when there is none, `CreationUncertain` when several.
//! - **Delete** (finalizer): with `deletionPolicy: Delete` delete the bound (or recovered)
//!   inbox, with `Orphan` leave it; delete the owned Secrets. No status write on the way
//!   unless the deletion waits (`Deleting` names other finalizers) or fails.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::agentsend::{
    ApiError, ApiKey, CreateInbox, DEFAULT_RETRY_AFTER, InboxState, MAX_RETRY_AFTER, RemoteInbox,
};
use crate::api::inbox::{
    self, ConditionStatus, DeletionPolicy, DeletionPolicySource, Inbox, InboxStatus, Reason,
};
use crate::controller::accounts::credentials::{Credentials, InUse};
use crate::controller::error::Error;
use crate::controller::inbox::decide::{self, AddressLookup, FieldMismatch, Recovery, SecretPlan};
use crate::controller::inbox::events::{EventKind, InboxEvent};
use crate::controller::inbox::outputs::config_map;
use crate::controller::inbox::outputs::template;
use crate::controller::inbox::status::{self, Readiness, StatusInput};
use crate::controller::ownership::proof::{Binding, Origin, Pending, ProofKey};
use crate::controller::remote::refresh::Refresh;

/// Which half of the lifecycle a pass runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// The Inbox exists (and carries the finalizer): converge it.
    Apply,
    /// The Inbox is being deleted: clean up, then the finalizer goes.
    Cleanup,
    /// Being deleted, but paused, or other finalizers than ours remain: nothing happens and
    /// the finalizer stays.
    Held,
}

impl Phase {
    /// The phase of a pass over `inbox`; `None` when kube's finalizer helper decides (it adds
    /// the finalizer, or runs [`Phase::Apply`] or [`Phase::Cleanup`]).
    pub fn before_finalizer(inbox: &Inbox) -> Option<Phase> {
        let deleting = inbox.metadata.deletion_timestamp.is_some();
        let held = inbox.is_paused() || !foreign_finalizers(inbox).is_empty();
        (deleting && held).then_some(Phase::Held)
    }
}

/// The finalizers other controllers hold on `inbox` while it carries ours: deletion waits
/// until they are gone (an archiver exports the mail first), as crossplane-runtime does.
/// Empty without our finalizer (then there is nothing of ours to hold back).
pub fn foreign_finalizers(inbox: &Inbox) -> Vec<&str> {
    let all = inbox.metadata.finalizers.as_deref().unwrap_or_default();
    if !all.iter().any(|f| f == inbox::FINALIZER) {
        return Vec::new();
    }
    all.iter()
        .map(String::as_str)
        .filter(|f| *f != inbox::FINALIZER)
        .collect()
}

/// What looking up one inbox by ID found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// It exists (in any state).
    Found(RemoteInbox),
    /// It does not exist in this account.
    Gone,
    /// The API failed.
    Failed(ApiError),
}

/// Outcome of persisting the create-pending mark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Marked {
    /// Persisted on the version of the Inbox this pass read.
    Yes,
    /// The Inbox changed since it was read (the view may lack a binding): decide again.
    Stale,
}

/// A failed attempt, remembered between passes: a pass over the same inputs (phase,
/// generation, API key) does nothing until `remaining` has elapsed. A pass woken by its own
/// writes (the pending mark, `Creating`, `Deleting`, the failure) is such a pass; a new spec,
/// a new key, a deletion or a pause is not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hold {
    /// The phase the attempt ran in.
    pub phase: Phase,
    /// The generation it ran on.
    pub generation: Option<i64>,
    /// The key it used (`None`: there was none).
    pub key: Option<ApiKey>,
    /// How long from the start of this pass until the next attempt may run.
    pub remaining: Duration,
}

impl Hold {
    /// A hold on the inputs of the pass `o`, for `delay`.
    pub fn of(o: &Observed, delay: Duration) -> Hold {
        Hold {
            phase: o.phase,
            generation: o.inbox.metadata.generation,
            key: attempt_key(o),
            remaining: delay,
        }
    }

    /// Whether the pass `o` would repeat the held attempt (credentials already read).
    pub fn matches(&self, o: &Observed) -> bool {
        self.phase == o.phase
            && self.generation == o.inbox.metadata.generation
            && self.key == attempt_key(o)
    }
}

/// The key a pass acts with: the Inbox's, else (deleting) the one remembered for it.
fn attempt_key(o: &Observed) -> Option<ApiKey> {
    match &o.credentials {
        Some(Credentials::Key(k)) => Some(k.clone()),
        Some(Credentials::Missing(_) | Credentials::Refused(_)) if o.phase == Phase::Cleanup => {
            o.remembered_key.clone()
        }
        _ => None,
    }
}

/// Another Inbox in the cluster that names an inbox ID (annotation, status, or a bind by this
/// process).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    /// Its `namespace/name`.
    pub owner: String,
    /// It holds the ID ahead of this Inbox: this process bound it there, or it is the older
    /// of the two (created earlier; UID as the tie-break). A copy yields to the original.
    pub prior: bool,
}

/// Everything a pass knows so far. The executor fills the fields as steps run; `None` means
/// "not looked at yet".
#[derive(Clone, Debug)]
pub struct Observed {
    /// The Inbox, as updated by this pass's own writes (annotations, status).
    pub inbox: Inbox,
    /// Its status when the pass started (events fire on transitions from it).
    pub status_at_start: Option<InboxStatus>,
    /// Apply, cleanup or held.
    pub phase: Phase,
    /// RFC 3339 "now" (second precision), for the pending mark and condition transitions.
    pub now: String,
    /// In [0, 1): spreads retries.
    pub jitter: f64,
    /// Consecutive failed passes of this Inbox before this one.
    pub failures: u32,
    /// The cap of the failure backoff (`--max-retry-delay`).
    pub max_retry_delay: Duration,
    /// Counter sync interval.
    pub sync_interval: Duration,
    /// The API key, once read.
    pub credentials: Option<Credentials>,
    /// The key this process last used for the Inbox (deletion after the Secret went).
    pub remembered_key: Option<ApiKey>,
    /// The objects the key comes through (its Secret, its account), each with whether it
    /// carries the in-use finalizer yet (read with the credentials).
    pub in_use: Vec<(InUse, bool)>,
    /// The bound inbox (or the one `spec.inboxId` names), once looked up.
    pub remote: Option<Lookup>,
    /// All inboxes of the account, once listed (recovery, and before creating an address
    /// that was not generated).
    pub candidates: Option<Result<Vec<RemoteInbox>, ApiError>>,
    /// The server's clock (Unix seconds) when it answered that listing, if it said.
    pub listed_at: Option<i64>,
    /// The operator's proof key: what tells its own marks and bindings from a tenant's.
    pub proof: ProofKey,
    /// Inbox IDs other Inboxes in the cluster name, once collected: of the IDs in
    /// `bindings_checked`.
    pub bound_elsewhere: Option<HashMap<String, Claim>>,
    /// The IDs `bound_elsewhere` covers (each lookup names the IDs the decision needs, so that
    /// it costs a few index lookups, not a walk over every Inbox); `None`: all of them.
    pub bindings_checked: Option<HashSet<String>>,
    /// Why the cluster-wide one-owner check could not be made (the Inbox list failed): a
    /// decision that needs it waits.
    pub bindings_unavailable: Option<String>,
    /// Whether this pass persisted the create-pending mark.
    pub marked: Option<Marked>,
    /// The mark this pass persisted resumes an earlier attempt of the same create (so an
    /// inbox of its address may be that attempt's).
    pub resumed: bool,
    /// The vanished inbox a create in this pass replaces.
    pub replaces: Option<String>,
    /// Outcome of this pass's create call.
    pub created: Option<Result<RemoteInbox, ApiError>>,
    /// This pass removed the pending mark after a create that provably created nothing.
    pub pending_cleared: bool,
    /// This pass bound the Inbox (created, recovered or adopted).
    pub bound_now: bool,
    /// This pass dropped the cached observation of the vanished or deleted inbox.
    pub forgotten: bool,
    /// This pass registered the binding with the counter sync.
    pub registered: bool,
    /// The metadata of Secrets read (or written, or deleted) by name; `None` inside: absent.
    /// Their data is never read: see [`decide::plan_secret`].
    pub secrets: BTreeMap<String, Option<ObjectMeta>>,
    /// The metadata of the ConfigMaps read (or written, or deleted) by name, as `secrets`;
    /// `None` until read (only when `spec.configMap` or `status.configMapName` names one).
    pub config_maps: Option<BTreeMap<String, Option<ObjectMeta>>>,
    /// Outcome of this pass's delete call.
    pub deleted: Option<Result<(), ApiError>>,
    /// Events this pass published outside status reports.
    pub announced: Vec<EventKind>,
    /// The progress reason this pass already reported (`Creating`, `Deleting`).
    pub progress: Option<Reason>,
    /// The Inbox lacks the finalizer (apply phase): the first write adds it.
    pub finalizer_missing: bool,
    /// The address this pass's create named (set with `created`).
    pub attempted: Option<String>,
    /// A fresh random local part, used if this pass starts a create without `spec.address`.
    pub random_local: String,
    /// The failed attempt this Inbox is backing off from, if any is still running.
    pub hold: Option<Hold>,
    /// Where the refresh this Inbox asks for (`agentsend.io/refresh`) stands, once asked.
    pub refresh: Option<Refresh>,
    /// The namespace's `agentsend.io/default-deletion-policy` annotation, once read
    /// (`Some(None)`: not set). Read only when `spec.deletionPolicy` is unset.
    pub namespace_default: Option<Option<String>>,
}

impl Observed {
    /// A pass over `inbox` that has observed nothing yet.
    pub fn new(
        inbox: Inbox,
        phase: Phase,
        now: String,
        sync_interval: Duration,
        proof: ProofKey,
    ) -> Self {
        Observed {
            proof,
            listed_at: None,
            bindings_unavailable: None,
            resumed: false,
            status_at_start: inbox.status.clone(),
            inbox,
            phase,
            now,
            jitter: 0.0,
            failures: 0,
            max_retry_delay: decide::MAX_RETRY_DELAY,
            sync_interval,
            credentials: None,
            remembered_key: None,
            in_use: Vec::new(),
            remote: None,
            candidates: None,
            bound_elsewhere: None,
            bindings_checked: None,
            marked: None,
            replaces: None,
            created: None,
            pending_cleared: false,
            bound_now: false,
            forgotten: false,
            registered: false,
            secrets: BTreeMap::new(),
            config_maps: None,
            deleted: None,
            announced: Vec::new(),
            progress: None,
            hold: None,
            refresh: None,
            namespace_default: None,
            random_local: String::new(),
            attempted: None,
            finalizer_missing: false,
        }
    }

    /// The deletion policy that applies and its source; `None` until the namespace is read.
    fn deletion_policy(&self) -> Option<(DeletionPolicy, DeletionPolicySource)> {
        let ns = self.namespace_default.as_ref().map(Option::as_deref);
        decide::deletion_policy(self.inbox.spec.deletion_policy, ns)
    }

    /// `Some(ReadNamespace)` while the namespace default is needed and not read yet.
    fn needs_namespace(&self) -> Option<Step> {
        self.deletion_policy()
            .is_none()
            .then_some(Step::ReadNamespace)
    }

    fn adopted(&self) -> bool {
        self.inbox.spec.inbox_id.is_some()
    }

    /// The inbox this Inbox is bound to, on proof ([`ProofKey::binding`]).
    pub fn binding(&self) -> Option<Binding> {
        self.proof.binding(&self.inbox)
    }

    /// The create-pending mark, and whether it is proven ([`ProofKey::pending`]).
    fn pending(&self) -> Option<Pending<'_>> {
        self.proof.pending(&self.inbox)
    }

    /// The fingerprint of `key`'s account binding.
    fn account_of(&self, key: &ApiKey) -> String {
        self.proof.fingerprint(key)
    }

    /// `managementPolicy: Observe`: never create, re-create or delete.
    fn observing(&self) -> bool {
        self.inbox.is_observe_only()
    }

    fn announced(&self, kind: EventKind) -> bool {
        self.announced.contains(&kind)
    }
}

/// A status to write (if `changed`) and the events its transitions publish.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// The complete new status.
    pub status: InboxStatus,
    /// Whether it differs from the current one (no write otherwise).
    pub changed: bool,
    /// The Ready condition is True.
    pub ready: bool,
    /// The readiness it renders.
    pub readiness: Readiness,
    /// Transition events, published after the write.
    pub events: Vec<InboxEvent>,
    /// A failed write is logged, not returned (deletion goes on regardless).
    pub best_effort: bool,
}

/// What happens to the Inbox's consecutive-failure count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failures {
    /// Unchanged.
    Keep,
    /// The Inbox converged: back to zero.
    Reset,
    /// One more failure.
    Bump,
}

/// How a pass ends.
#[derive(Clone, Debug, PartialEq)]
pub enum Then {
    /// Wait for a change (watches and the counter sync drive the next pass).
    Settle,
    /// Look again after this long.
    Requeue(Duration),
    /// Fail the pass; the error policy retries it.
    Fail(Failure),
}

/// A failure that fails the pass (only during deletion: the finalizer must stay).
#[derive(Clone, Debug, PartialEq)]
pub enum Failure {
    /// An AgentSend call failed.
    Api(ApiError),
    /// No API key to delete the inbox with.
    CredentialsMissing(String),
    /// The Inbox has no name or UID.
    InvalidObject,
    /// Backing off from a failed attempt over the same inputs: look again after this long.
    Held(Duration),
    /// The credentials do not reach the inbox to delete (another account); the message says
    /// what to do.
    AccountChanged(String),
    /// The one-owner check could not be made; the message says why.
    OwnershipUnverified(String),
}

impl From<Failure> for Error {
    fn from(f: Failure) -> Error {
        match f {
            Failure::Api(e) => Error::Api(e),
            Failure::CredentialsMissing(m) => Error::CredentialsMissing(m),
            Failure::InvalidObject => Error::MissingObjectKey,
            Failure::Held(d) => Error::Held(d),
            Failure::AccountChanged(m) => Error::AccountChanged(m),
            Failure::OwnershipUnverified(m) => Error::OwnershipUnverified(m),
        }
    }
}

/// The end of a pass.
#[derive(Clone, Debug, PartialEq)]
pub struct Done {
    /// Status to report first, if any.
    pub report: Option<Report>,
    /// Settle, requeue or fail.
    pub then: Then,
    /// The failure count.
    pub failures: Failures,
    /// Metric label when the pass handled a failure itself (it is not a success).
    pub failed: Option<&'static str>,
    /// The Inbox is gone: drop its registration, metrics and failure count.
    pub release: bool,
    /// The attempt failed: hold back passes over the same inputs this long.
    pub hold: Option<Hold>,
    /// Refused because another Inbox owns this inbox ID: look again when that one goes.
    pub blocked_on: Option<String>,
}

/// The next thing a pass does.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// Resolve the API key (and the key remembered for this Inbox).
    ReadCredentials,
    /// Read the namespace's `agentsend.io/default-deletion-policy` annotation.
    ReadNamespace,
    /// Put the in-use finalizer on an object the key comes through.
    MarkInUse(InUse),
    /// Observe the bound inbox through the account's scan cache.
    Observe {
        /// The account's API key.
        key: ApiKey,
        /// The AgentSend inbox ID.
        id: String,
    },
    /// GET an inbox with this key: the one `spec.inboxId` names, or a bound one whose account
    /// must be checked (a 404 from another account's key is not "gone").
    Fetch {
        /// The account's API key.
        key: ApiKey,
        /// The AgentSend inbox ID.
        id: String,
    },
    /// List the account, holding its create gate exclusively until the next `Bind` (or any
    /// other step but `FindBindings`).
    ListCandidates {
        /// The account's API key.
        key: ApiKey,
    },
    /// Collect which other Inboxes in the cluster name the inbox IDs `ids`.
    FindBindings {
        /// Beyond the watch cache: a cluster-wide metadata list when the caches do not
        /// cover the cluster (adoption, recovery, deletion); the cache otherwise.
        cluster_wide: bool,
        /// The IDs to look up.
        ids: Vec<String>,
    },
    /// Persist the create-pending mark (the address to create, its proof, and the time) if
    /// the Inbox is unchanged since read; `unbind` also clears the binding to a vanished inbox
    /// in the same write.
    MarkPending {
        /// The vanished inbox whose binding this write clears.
        unbind: Option<String>,
        /// The address every attempt of this create names.
        address: String,
        /// How the address was chosen (the proof states it).
        origin: Origin,
        /// The mark renews one of an earlier attempt of the same create.
        resumes: bool,
        /// The key of the account the create goes to (the unbinding's proof names it).
        key: ApiKey,
    },
    /// Write a progress status (best effort) and go on.
    Progress(Report),
    /// POST the inbox, holding the account's create gate shared until the next `Bind`.
    Create {
        /// The account's API key.
        key: ApiKey,
        /// The create body.
        request: CreateInbox,
    },
    /// Record the binding (annotation, pending mark cleared, one-owner registry, cache) and
    /// publish `event`.
    Bind {
        /// The account's API key.
        key: ApiKey,
        /// The inbox to bind.
        remote: RemoteInbox,
        /// Published after the write.
        event: InboxEvent,
    },
    /// [`Step::Bind`] and, at the same time, create the Secret `secret` (absent, read in this
    /// pass): one round trip instead of two in the pass that created the inbox. Safe either
    /// way it fails: a Secret written while the binding patch fails names the inbox of the
    /// pending address, the one inbox the next pass's exact lookup binds (or, if the Inbox is
    /// deleted meanwhile, deletes with the owned Secret); a binding whose Secret write fails is
    /// an ordinary bound Inbox, whose next pass writes the Secret.
    BindWithSecret {
        /// The account's API key.
        key: ApiKey,
        /// The inbox to bind.
        remote: RemoteInbox,
        /// Published once the binding is written.
        event: InboxEvent,
        /// The Secret to create.
        secret: Box<Secret>,
    },
    /// Write the binding's annotation and its proof for the account of `key` (a binding
    /// known only from status, or proven for another key of the same account).
    RecordBinding {
        /// The AgentSend inbox ID.
        id: String,
        /// The key that reached it.
        key: ApiKey,
    },
    /// Remove the pending mark.
    ClearPending,
    /// Drop the cached observation of an inbox that is gone.
    Forget {
        /// The account's API key.
        key: ApiKey,
        /// The AgentSend inbox ID.
        id: String,
    },
    /// Ask for counters fresher than now (`agentsend.io/refresh`), folded into the account's
    /// next refresh scan.
    RequestRefresh {
        /// The account's API key.
        key: ApiKey,
        /// The annotation value asked for.
        value: String,
    },
    /// Register the binding with the counter sync.
    Register {
        /// The account's API key.
        key: ApiKey,
        /// The AgentSend inbox ID.
        id: String,
    },
    /// Read a Secret of the Inbox's namespace.
    ReadSecret {
        /// The Secret's name.
        name: String,
    },
    /// Create (or server-side apply) the Secret, then publish `event` if any.
    WriteSecret {
        /// The desired Secret.
        secret: Box<Secret>,
        /// Create it (absent) rather than apply over it (ours, drifted).
        create: bool,
        /// Published after the write (none for the first write in the pass that created or
        /// adopted the inbox: that pass's `Created`/`Adopted` says it all).
        event: Option<InboxEvent>,
    },
    /// Read the metadata of these ConfigMaps of the Inbox's namespace (the wanted one, the
    /// one status records).
    ReadConfigMaps {
        /// Their names.
        names: Vec<String>,
    },
    /// Create (or server-side apply) the ConfigMap, then publish `event` if any.
    WriteConfigMap {
        /// The desired ConfigMap.
        config_map: Box<ConfigMap>,
        /// Create it (absent) rather than apply over it (ours, drifted).
        create: bool,
        /// Published after the write.
        event: Option<InboxEvent>,
    },
    /// Let an owned output outlive the Inbox (`retainOnOrphan`): merge-patch away this
    /// Inbox's ownerReference and the operator's labels ([`config_map::release_patch`]).
    Release {
        /// The Secret or the ConfigMap.
        kind: config_map::OutputKind,
        /// Its name.
        name: String,
        /// The merge patch.
        patch: serde_json::Value,
    },
    /// Delete an owned ConfigMap (precondition: its UID).
    DeleteConfigMap {
        /// The ConfigMap's name.
        name: String,
        /// Its UID, as a delete precondition.
        uid: Option<String>,
    },
    /// Add the finalizer (it is missing and this pass is about to write something other
    /// than the pending mark, which carries it).
    AddFinalizer,
    /// Delete an owned Secret (precondition: its UID).
    DeleteSecret {
        /// The Secret's name.
        name: String,
        /// Its UID, as a delete precondition.
        uid: Option<String>,
    },
    /// DELETE the AgentSend inbox.
    DeleteInbox {
        /// The account's API key.
        key: ApiKey,
        /// The AgentSend inbox ID.
        id: String,
    },
    /// Publish an event.
    Announce(InboxEvent),
    /// End the pass.
    Done(Done),
}

/// Decide the next step.
pub fn plan(o: &Observed) -> Step {
    match o.phase {
        Phase::Apply => with_finalizer(o, apply(o)),
        Phase::Cleanup => cleanup(o),
        Phase::Held => done(report(o, None, None, held_deletion(&o.inbox)), Then::Settle),
    }
}

/// Why a deletion is held: the pause comes first; else the other finalizers, named. The
/// removal of either updates the Inbox, which starts the next pass.
fn held_deletion(inbox: &Inbox) -> Readiness {
    if inbox.is_paused() {
        return Readiness::Idle {
            reason: Reason::Paused,
            message: "deletion is waiting: the Inbox is paused (agentsend.io/paused); remove the annotation to let the operator finish deleting".into(),
        };
    }
    Readiness::progressing(
        Reason::Deleting,
        format!(
            "deletion is waiting for the other finalizers to be removed first: {}; the AgentSend inbox and the Secret stay until then",
            foreign_finalizers(inbox).join(", ")
        ),
    )
}

// ------------------------------------------------------------------------------- apply

/// The finalizer is in place before anything is written: the pending mark carries it (one
/// patch for both); any other first write is preceded by [`Step::AddFinalizer`].
fn with_finalizer(o: &Observed, step: Step) -> Step {
    if o.finalizer_missing && writes(&step) && !matches!(step, Step::MarkPending { .. }) {
        return Step::AddFinalizer;
    }
    step
}

/// Whether executing `step` writes anything (to Kubernetes or AgentSend).
pub fn writes(step: &Step) -> bool {
    match step {
        Step::ReadCredentials
        | Step::ReadNamespace
        | Step::Observe { .. }
        | Step::Fetch { .. }
        | Step::ListCandidates { .. }
        | Step::FindBindings { .. }
        | Step::Forget { .. }
        | Step::Register { .. }
        | Step::RequestRefresh { .. }
        | Step::ReadSecret { .. }
        | Step::ReadConfigMaps { .. } => false,
        Step::Progress(report) => report.changed,
        Step::Done(done) => done.report.as_ref().is_some_and(|r| r.changed),
        Step::AddFinalizer
        | Step::MarkInUse(_)
        | Step::MarkPending { .. }
        | Step::Create { .. }
        | Step::Bind { .. }
        | Step::BindWithSecret { .. }
        | Step::RecordBinding { .. }
        | Step::ClearPending
        | Step::WriteSecret { .. }
        | Step::DeleteSecret { .. }
        | Step::WriteConfigMap { .. }
        | Step::DeleteConfigMap { .. }
        | Step::Release { .. }
        | Step::DeleteInbox { .. }
        | Step::Announce(_) => true,
    }
}

fn apply(o: &Observed) -> Step {
    if o.inbox.is_paused() {
        let paused = Readiness::Idle {
            reason: Reason::Paused,
            message: "paused by the agentsend.io/paused annotation: no AgentSend calls and no Secret writes until it is removed".into(),
        };
        return done(report(o, None, None, paused), Then::Settle);
    }
    if let Some(step) = o.needs_namespace() {
        return step;
    }
    let key = match &o.credentials {
        None => return Step::ReadCredentials,
        Some(Credentials::Missing(msg)) => {
            let delay = decide::backoff(o.failures.clamp(3, 5), o.jitter, o.max_retry_delay);
            return Step::Done(Done {
                failures: Failures::Bump,
                failed: Some(Error::CREDENTIALS_MISSING),
                ..finish(
                    Some(report(
                        o,
                        None,
                        None,
                        stalled(Reason::CredentialsMissing, msg),
                    )),
                    Then::Requeue(delay),
                )
            });
        }
        Some(Credentials::Refused(msg)) => {
            // No AgentSend call; looked at again when the account changes, and each interval
            // (a namespace's labels or another Inbox's deletion may lift the refusal).
            return done(
                report(o, None, None, stalled(Reason::AccountRefused, msg)),
                Then::Requeue(o.sync_interval),
            );
        }
        Some(Credentials::Key(k)) => k.clone(),
    };
    if let Some(step) = held(o) {
        return step;
    }
    if let Some((target, _)) = o.in_use.iter().find(|(_, marked)| !marked) {
        return Step::MarkInUse(target.clone());
    }
    if !o.bound_now
        && (o.created.is_some() || o.marked == Some(Marked::Yes))
        && let Some(address) = o.attempted.as_deref().or(pending_address(o))
    {
        return create(o, key, address);
    }
    if let Some(b) = o.binding() {
        return bound(o, key, &b);
    }
    if let Some(claimed) = o.proof.unproven_claim(&o.inbox)
        && o.inbox.spec.inbox_id.as_deref() != Some(claimed)
    {
        return unproven_claim(o, claimed);
    }
    // Before the first AgentSend call: outputs that could never be written refuse the spec
    // (not mid-create: a pending create is finished or recovered first).
    if o.inbox
        .annotation(inbox::ANNOTATION_CREATE_PENDING)
        .is_none()
        && let Some(msg) = config_map::spec_refusal(&o.inbox)
    {
        return rejected(o, msg);
    }
    match &o.inbox.spec.inbox_id {
        Some(id) => adopt(o, key, id),
        None if o.observing() => observe_by_address(o, key),
        None => create_or_recover(o, key),
    }
}

/// The `agentsend.io/inbox-id` annotation names an inbox without the operator's proof that it
/// bound it here: written by hand, copied from another Inbox, or restored into another
/// namespace. Never bound, never deleted, nothing created (it may be this Inbox's).
fn unproven_claim(o: &Observed, id: &str) -> Step {
    // Who owns it, for the message (cluster-wide; the refusal stands without the answer).
    let owner = if o.bindings_unavailable.is_some() {
        String::new()
    } else {
        match claims_on(o, &[id], true) {
            Ok(elsewhere) => elsewhere
                .get(id)
                .map(|claim| format!(" (it is bound to Inbox {})", claim.owner))
                .unwrap_or_default(),
            Err(step) => return *step,
        }
    };
    let msg = format!(
        "the {} annotation names inbox {id:?}{owner}, but without this operator's proof that it bound that inbox to this Inbox (written by hand, copied from another Inbox, or restored into another namespace or cluster): it is not bound, nothing is created, and deleting this Inbox leaves it alone. To take it, set spec.inboxId: {id} (explicit adoption); to create a new inbox instead, remove the annotation",
        inbox::ANNOTATION_INBOX_ID
    );
    done(
        report(o, None, None, stalled(Reason::Rejected, msg)),
        Then::Settle,
    )
}

/// The Inbox is bound to `b`: check immutability and the account, observe, converge.
fn bound(o: &Observed, key: ApiKey, b: &Binding) -> Step {
    let id = b.id.as_str();
    // The binding's account is the current key's: a 404 means the inbox is gone. Otherwise
    // (another key, or an account not recorded) only a direct GET that finds it says the
    // key reaches the same account; a 404 then says nothing about the inbox.
    let current = o.account_of(&key);
    let same_account = b.account.as_deref() == Some(current.as_str());
    // Strict identity for inboxes this operator created; an adopted or observed one need
    // only match the fields the spec sets.
    let strict = !o.adopted() && !o.observing();
    if !o.bound_now {
        if let Some(m) = decide::inbox_id_changed(&o.inbox.spec, id) {
            return immutable(o, &m);
        }
        // Against the recorded identity: no AgentSend call needed.
        if let Some(recorded) = recorded_identity(&o.inbox, id)
            && let Some(m) = decide::identity_mismatch(&o.inbox.spec, &recorded, strict)
        {
            return immutable(o, &m);
        }
        // One owner: an ID named by the annotation or status is checked like spec.inboxId.
        let elsewhere = match claims_on(o, &[id], false) {
            Ok(e) => e,
            Err(step) => return *step,
        };
        if let Some(claim) = elsewhere.get(id).filter(|c| c.prior) {
            return claimed_elsewhere(o, id, claim);
        }
    }
    let remote = match &o.remote {
        None if same_account => {
            return Step::Observe {
                key,
                id: id.to_string(),
            };
        }
        None => {
            return Step::Fetch {
                key,
                id: id.to_string(),
            };
        }
        Some(Lookup::Failed(e)) => return api_failure(o, e),
        Some(Lookup::Gone) if !same_account => return account_changed(o, b, &current),
        Some(Lookup::Gone) => return vanished(o, key, id),
        Some(Lookup::Found(r)) if r.status == InboxState::Deleted && !same_account => {
            return account_changed(o, b, &current);
        }
        Some(Lookup::Found(r)) if r.status == InboxState::Deleted => return vanished(o, key, id),
        Some(Lookup::Found(r)) => r,
    };
    if !o.bound_now
        && let Some(m) = decide::identity_mismatch(&o.inbox.spec, remote, strict)
    {
        return immutable(o, &m);
    }
    if !same_account || o.inbox.annotation(inbox::ANNOTATION_INBOX_ID) != Some(id) {
        // Bound through status only (a GitOps replace dropped the annotations, or an earlier
        // version bound it), or another key of the same account reached it (rotation): write
        // the binding and its proof for this key.
        return Step::RecordBinding {
            id: id.to_string(),
            key,
        };
    }
    if !o.bound_now
        && o.refresh.is_none()
        && let Some(value) = o.inbox.refresh_wanted()
    {
        // Queued, not awaited: the refresh scan wakes this Inbox when it has served it.
        return Step::RequestRefresh {
            key,
            value: value.to_string(),
        };
    }
    converge(o, key, remote)
}

/// The bound inbox is not found with the current key, and the binding was made in another
/// account (or records none): nothing is created; the user points the credentials back, or
/// releases the Inbox.
fn account_changed(o: &Observed, b: &Binding, current: &str) -> Step {
    let id = &b.id;
    let msg = match &b.account {
        Some(bound_in) => format!(
            "the credentials now reach another AgentSend account than the one inbox {id:?} was bound in (the account of the key with fingerprint {bound_in}; the current key's is {current}), and that key does not find it; nothing is created. Point spec.credentials, spec.accountRef or the key Secret back at the inbox's account, or set deletionPolicy: Orphan and delete this Inbox to release it"
        ),
        None => format!(
            "inbox {id:?} is not found with the current credentials, and its binding does not record which account it was made in (bound by an earlier version, or its annotations were replaced): it may be in another account; nothing is created. Point the credentials at the inbox's account, or set deletionPolicy: Orphan and delete this Inbox to release it"
        ),
    };
    done(
        report(o, None, None, stalled(Reason::AccountChanged, msg)),
        Then::Requeue(o.sync_interval),
    )
}

/// The identity recorded in status for `id`, if status describes it.
pub fn recorded_identity(inbox: &Inbox, id: &str) -> Option<RemoteInbox> {
    let s = inbox.status.as_ref()?;
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

/// The bound inbox no longer exists in AgentSend.
fn vanished(o: &Observed, key: ApiKey, id: &str) -> Step {
    if !o.forgotten {
        return Step::Forget {
            key,
            id: id.to_string(),
        };
    }
    if o.observing() {
        let msg = format!(
            "the observed inbox {id:?} no longer exists in this AgentSend account; managementPolicy Observe never re-creates it (set Manage to let the operator create a new one)"
        );
        return done(
            report(o, None, None, stalled(Reason::InboxNotFound, msg)),
            Then::Requeue(o.sync_interval.saturating_mul(5)),
        );
    }
    if o.adopted() {
        let msg = format!(
            "the adopted inbox {id:?} no longer exists in this AgentSend account; set spec.inboxId to an existing inbox or remove it to create a new one"
        );
        return done(
            report(o, None, None, stalled(Reason::InboxNotFound, msg)),
            Then::Requeue(o.sync_interval.saturating_mul(5)),
        );
    }
    // Unbind (empty annotation: explicitly unbound) and mark the create pending in one
    // write; the new inbox gets the address the app already uses.
    mark_then_create(o, key, Some(id))
}

/// Adopt the existing inbox `spec.inboxId` names.
fn adopt(o: &Observed, key: ApiKey, id: &str) -> Step {
    let remote = match &o.remote {
        None => {
            return Step::Fetch {
                key,
                id: id.to_string(),
            };
        }
        Some(Lookup::Failed(e)) => return api_failure(o, e),
        Some(Lookup::Gone) => {
            let msg = format!(
                "spec.inboxId {id:?} does not exist in this AgentSend account (or belongs to another account); nothing was created"
            );
            return done(
                report(o, None, None, stalled(Reason::InboxNotFound, msg)),
                Then::Requeue(o.sync_interval.saturating_mul(5)),
            );
        }
        Some(Lookup::Found(r)) => r,
    };
    if let Some(m) = decide::identity_mismatch(&o.inbox.spec, remote, false) {
        return rejected(o, format!("cannot adopt inbox {id:?}: {}", m.message));
    }
    let elsewhere = match claims_on(o, &[id], true) {
        Ok(e) => e,
        Err(step) => return *step,
    };
    if let Some(claim) = elsewhere.get(id) {
        return claimed_elsewhere(o, id, claim);
    }
    let note = format!(
        "adopted existing AgentSend inbox {} ({})",
        id, remote.address
    );
    Step::Bind {
        key,
        remote: remote.clone(),
        event: InboxEvent::new(EventKind::Adopted, note),
    }
}

/// Observe-only without `spec.inboxId`: bind the inbox of exactly `spec.address` (one list
/// scan); nothing is ever created.
fn observe_by_address(o: &Observed, key: ApiKey) -> Step {
    let Some(address) = o.inbox.spec.address.as_deref() else {
        return rejected(
            o,
            "managementPolicy Observe needs spec.inboxId or spec.address to find the inbox to observe (nothing is created)".into(),
        );
    };
    let candidates = match listed(o, &key) {
        Err(step) => return *step,
        Ok(c) => c,
    };
    let Some(remote) = decide::observed_by_address(&o.inbox.spec, candidates) else {
        let msg = format!(
            "no inbox with the address {address:?} (and the spec's other identity fields) exists in this AgentSend account; managementPolicy Observe never creates one"
        );
        return done(
            report(o, None, None, stalled(Reason::InboxNotFound, msg)),
            Then::Requeue(o.sync_interval.saturating_mul(5)),
        );
    };
    let note = format!(
        "observing existing AgentSend inbox {} ({}); it is never created, re-created or deleted",
        remote.id, remote.address
    );
    bind_unless_claimed(
        o,
        key,
        remote.clone(),
        InboxEvent::new(EventKind::Adopted, note),
    )
}

/// No inbox bound: mark and create, or recover an interrupted create. Only a mark this
/// operator can prove it wrote for this Inbox is acted on as this Inbox's create.
fn create_or_recover(o: &Observed, key: ApiKey) -> Step {
    match o.pending() {
        None if rejected_at_this_generation(&o.inbox) => {
            // The API refused this exact spec; it will refuse it again.
            done_quietly(Then::Settle)
        }
        None => mark_then_create(o, key, None),
        Some(Pending::Proven { address, origin }) => recover(o, key, address, origin),
        Some(Pending::Unproven { address }) => unproven_mark(o, key, address),
        Some(Pending::Legacy(since)) => recover_legacy(o, key, since),
    }
}

/// Persist the pending mark naming the address to create, with its proof — only on a
/// current view (a stale one could miss a binding recorded meanwhile) — then create.
/// `unbind`: the vanished inbox this create replaces (its binding is cleared in the same
/// write, its address reused).
///
/// A generated address is nobody else's. Any other (the user's `spec.address`, or the
/// vanished inbox's) is first looked up in the account: held already, it is someone else's
/// and never bound; absent, the mark's proof records the server's time of that listing, so
/// that an inbox of that address found later can be told from one that existed before.
fn mark_then_create(o: &Observed, key: ApiKey, unbind: Option<&str>) -> Step {
    match (o.marked, pending_address(o)) {
        (None, _) => {
            let previous = unbind
                .and_then(|id| recorded_identity(&o.inbox, id))
                .map(|r| r.address);
            let address =
                decide::address_to_create(&o.inbox.spec, previous.as_deref(), &o.random_local);
            let origin = if o.inbox.spec.address.is_none() && previous.is_none() {
                Origin::Random
            } else {
                let candidates = match listed(o, &key) {
                    Err(step) => return *step,
                    Ok(c) => c,
                };
                if let Some(holder) = decide::holder_of(&o.inbox.spec, &address, candidates) {
                    return address_in_use(o, &address, holder);
                }
                Origin::SeenAbsent(o.listed_at)
            };
            Step::MarkPending {
                unbind: unbind.map(str::to_string),
                address,
                origin,
                resumes: false,
                key,
            }
        }
        (Some(Marked::Yes), Some(address)) => create(o, key, address),
        (Some(_), _) => stale_view_retry(o),
    }
}

/// The address the proven pending mark names (`None`: no mark, or one without proof).
fn pending_address(o: &Observed) -> Option<&str> {
    match o.pending()? {
        Pending::Proven { address, .. } => Some(address),
        Pending::Unproven { .. } | Pending::Legacy(_) => None,
    }
}

/// The account's inboxes, listed (after the last create attempt of this pass).
fn listed<'o>(o: &'o Observed, key: &ApiKey) -> Result<&'o [RemoteInbox], Box<Step>> {
    match &o.candidates {
        None => Err(Box::new(Step::ListCandidates { key: key.clone() })),
        Some(Err(e)) => Err(Box::new(api_failure(o, e))),
        Some(Ok(c)) => Ok(c),
    }
}

/// A create of `address` may have happened without being recorded: look it up exactly
/// before creating again with the same address. Found, it is bound only if the mark's
/// proof shows it could not have existed before this Inbox asked for it.
fn recover(o: &Observed, key: ApiKey, address: &str, origin: Origin) -> Step {
    if o.progress != Some(Reason::Creating) {
        return progress(
            o,
            Readiness::progressing(
                Reason::Creating,
                format!("resuming the interrupted create of the AgentSend inbox {address:?}"),
            ),
        );
    }
    let candidates = match listed(o, &key) {
        Err(step) => return *step,
        Ok(c) => c,
    };
    match decide::find_address(&o.inbox.spec, address, origin, candidates) {
        AddressLookup::Absent if origin == Origin::Random => create(o, key, address),
        // Absent: renew the proof of absence (this listing's time), then create again; a
        // create long after the first listing would otherwise fall outside its window.
        AddressLookup::Absent if o.marked.is_none() => Step::MarkPending {
            unbind: None,
            address: address.to_string(),
            origin: Origin::SeenAbsent(o.listed_at),
            resumes: true,
            key,
        },
        AddressLookup::Absent => create(o, key, address),
        AddressLookup::Ours(remote) => bind_recovered(o, key, remote),
        AddressLookup::Older(remote) => address_in_use(o, address, &remote),
    }
}

/// A pending mark without this operator's proof (written by hand, copied, or by a version
/// that wrote none): its address is never bound and never deleted. If the account does not
/// hold it, nothing is at stake and the create starts over with a mark of its own; if it
/// does, a human decides.
fn unproven_mark(o: &Observed, key: ApiKey, address: &str) -> Step {
    let candidates = match listed(o, &key) {
        Err(step) => return *step,
        Ok(c) => c,
    };
    let Some(holder) = decide::holder_of(&o.inbox.spec, address, candidates) else {
        return mark_then_create(o, key, None);
    };
    let msg = format!(
        "the {} annotation names {address:?}, which is inbox {} in this AgentSend account, but carries no proof that this operator started that create for this Inbox (written by hand, copied from another Inbox, or left by an earlier version): it is not bound, and deleting this Inbox leaves it alone. If it is this Inbox's, set spec.inboxId: {} to adopt it; otherwise remove the annotation to create a new inbox",
        inbox::ANNOTATION_CREATE_PENDING,
        holder.id,
        holder.id
    );
    done(
        report(o, None, None, stalled(Reason::CreationUncertain, msg)),
        Then::Settle,
    )
}

/// The pending address is ours: bind it unless another Inbox holds it.
fn bind_recovered(o: &Observed, key: ApiKey, remote: RemoteInbox) -> Step {
    let note = format!(
        "created AgentSend inbox {} ({}); recovered after an interrupted create",
        remote.id, remote.address
    );
    bind_unless_claimed(o, key, remote, InboxEvent::new(EventKind::Created, note))
}

/// Bind `remote` with `event`, unless another Inbox in the cluster already claims it.
fn bind_unless_claimed(o: &Observed, key: ApiKey, remote: RemoteInbox, event: InboxEvent) -> Step {
    let elsewhere = match claims_on(o, &[&remote.id], true) {
        Ok(e) => e,
        Err(step) => return *step,
    };
    if let Some(claim) = elsewhere.get(&remote.id) {
        return claimed_elsewhere(o, &remote.id, claim);
    }
    Step::Bind { key, remote, event }
}

/// The account already had the address before this Inbox asked for it: never bound.
fn address_in_use(o: &Observed, address: &str, remote: &RemoteInbox) -> Step {
    address_taken(
        o,
        format!(
            "the address {address:?} already belongs to inbox {} in this AgentSend account, created before this Inbox asked for it; set spec.inboxId: {} to adopt it, or choose another address",
            remote.id, remote.id
        ),
    )
}

/// Nothing was created for this Inbox: clear the mark, then `Rejected` until the spec changes.
fn address_taken(o: &Observed, msg: String) -> Step {
    if !o.pending_cleared
        && o.inbox
            .annotation(inbox::ANNOTATION_CREATE_PENDING)
            .is_some()
    {
        return Step::ClearPending;
    }
    let msg = match &o.replaces {
        Some(old) => format!(
            "inbox {old} vanished from AgentSend and could not be re-created with its address: {msg}"
        ),
        None => msg,
    };
    rejected(o, msg)
}

/// A create started by an earlier version (AgentSend chose the address): bind nothing on a
/// guess. No match: create anew (with an address); any match: a human decides.
fn recover_legacy(o: &Observed, key: ApiKey, since: jiff::Timestamp) -> Step {
    let candidates = match listed(o, &key) {
        Err(step) => return *step,
        Ok(c) => c,
    };
    let elsewhere = match claims_on(o, &ids_of(candidates), true) {
        Ok(e) => e,
        Err(step) => return *step,
    };
    let ids =
        match decide::recover_legacy(&o.inbox.spec, since, candidates, &claimed_ids(elsewhere)) {
            Recovery::None => return mark_then_create(o, key, None),
            Recovery::One(r) => vec![r.id],
            Recovery::Ambiguous(ids) => ids,
        };
    let msg = format!(
        "a create started by an earlier operator version may have made {} ({}); set spec.inboxId to the one to keep and delete any others in AgentSend, or remove the {} annotation to create a new inbox",
        if ids.len() == 1 {
            "this inbox"
        } else {
            "these inboxes"
        },
        ids.join(", "),
        inbox::ANNOTATION_CREATE_PENDING
    );
    done(
        report(o, None, None, stalled(Reason::CreationUncertain, msg)),
        Then::Settle,
    )
}

/// Bind the inbox this pass created; with its Secret at once ([`Step::BindWithSecret`]) when
/// the Secret is known to be absent and renders (anything else — a Secret that exists, a
/// template error — is left to [`converge`] after a plain bind, as before).
fn bind_created(o: &Observed, key: ApiKey, remote: &RemoteInbox, event: InboxEvent) -> Step {
    let remote = remote.clone();
    let absent = matches!(o.secrets.get(&o.inbox.secret_name()), Some(None));
    let secret = absent
        .then(|| {
            let templated = checked_secret_spec(o, &remote).ok()?;
            rendered_secret(o, &remote, templated)
        })
        .flatten();
    match secret {
        Some(secret) => Step::BindWithSecret {
            key,
            remote,
            event,
            secret: Box::new(secret),
        },
        None => Step::Bind { key, remote, event },
    }
}

/// Whether the Ready condition already says the API rejected this generation of the spec.
pub fn rejected_at_this_generation(inbox: &Inbox) -> bool {
    status::find(inbox.status.as_ref(), inbox::condition::READY).is_some_and(|c| {
        c.reason() == Some(Reason::Rejected) && c.observed_generation == inbox.metadata.generation
    })
}

/// The pending mark naming `address` is persisted: report `Creating`, POST, then bind or
/// handle the failure. A 409 is a lookup: the address may be ours from an earlier attempt.
fn create(o: &Observed, key: ApiKey, address: &str) -> Step {
    match &o.created {
        // No `Creating` status on the way: a create that works ends Ready in one pass, with
        // one status write.
        // Read the Secret (cache, or GET) before the POST, so that the bind after it can
        // create the Secret at the same time ([`Step::BindWithSecret`]).
        None if !o.secrets.contains_key(&o.inbox.secret_name()) => Step::ReadSecret {
            name: o.inbox.secret_name(),
        },
        None => Step::Create {
            key,
            request: decide::create_request(&o.inbox.spec, address),
        },
        Some(Ok(remote)) => {
            let event = match &o.replaces {
                Some(old) => InboxEvent::new(
                    EventKind::Recreated,
                    format!(
                        "inbox {old} vanished from AgentSend and was recreated as {} ({})",
                        remote.id, remote.address
                    ),
                ),
                None => InboxEvent::new(
                    EventKind::Created,
                    format!("created AgentSend inbox {} ({})", remote.id, remote.address),
                ),
            };
            bind_created(o, key, remote, event)
        }
        Some(Err(e)) if is_address_conflict(e) => after_conflict(o, key, address, e),
        // Otherwise the pending mark stays: the next pass looks the address up first.
        Some(Err(e)) if proves_not_created(e) && !o.pending_cleared => Step::ClearPending,
        Some(Err(e)) => api_failure(o, e),
    }
}

/// The API answered 409 (address taken) to a create: ours from an earlier attempt, older in
/// this account, or held by another account.
fn after_conflict(o: &Observed, key: ApiKey, address: &str, e: &ApiError) -> Step {
    let candidates = match listed(o, &key) {
        Err(step) => return *step,
        Ok(c) => c,
    };
    let found = match o.pending() {
        Some(Pending::Proven { origin, .. }) => {
            decide::find_address(&o.inbox.spec, address, origin, candidates)
        }
        // The mark went in this pass (nothing of it is bound now): only say who holds it.
        _ => match decide::holder_of(&o.inbox.spec, address, candidates) {
            Some(holder) => AddressLookup::Older(holder.clone()),
            None => AddressLookup::Absent,
        },
    };
    match found {
        // This pass wrote a new mark: no earlier attempt of this create exists, so the inbox
        // holding the address is someone else's, however new.
        AddressLookup::Ours(remote) if o.marked == Some(Marked::Yes) && !o.resumed => {
            address_in_use(o, address, &remote)
        }
        AddressLookup::Ours(remote) => bind_recovered(o, key, remote),
        AddressLookup::Older(remote) => address_in_use(o, address, &remote),
        AddressLookup::Absent => address_taken(
            o,
            format!(
                "the address {address:?} is taken ({e}); it is not in this AgentSend account: choose another address"
            ),
        ),
    }
}

/// A create refused because the address is taken.
fn is_address_conflict(e: &ApiError) -> bool {
    matches!(e, ApiError::Rejected { status: 409, .. })
}

/// Whether a failed create certainly created nothing: the API answered with a 4xx.
/// Transport errors and 5xx leave the outcome unknown.
pub fn proves_not_created(e: &ApiError) -> bool {
    matches!(
        e,
        ApiError::Rejected { .. }
            | ApiError::Unauthorized { .. }
            | ApiError::RateLimited { .. }
            | ApiError::NotFound { .. }
            | ApiError::Config { .. }
    )
}

/// The Secret the Inbox should own for `remote`, with its rendered template values
/// (`templated`, from [`checked_secret_spec`]) and the digest of its data; `None` when the
/// Inbox has no name or UID.
fn rendered_secret(
    o: &Observed,
    remote: &RemoteInbox,
    templated: BTreeMap<String, String>,
) -> Option<Secret> {
    let mut desired = decide::desired_secret(&o.inbox, remote)?;
    decide::add_string_data(&mut desired, templated);
    Some(desired)
}

/// Converge the Secret and status on an observed, bound inbox.
fn converge(o: &Observed, key: ApiKey, remote: &RemoteInbox) -> Step {
    if !o.registered {
        return Step::Register {
            key,
            id: remote.id.clone(),
        };
    }
    let templated = match checked_secret_spec(o, remote) {
        Ok(values) => values,
        Err(step) => return *step,
    };
    let config_map_data = match config_map::checked_data(&o.inbox, remote) {
        Ok(data) => data,
        Err(e) => return rejected_with(o, remote, e.to_string()),
    };
    let name = o.inbox.secret_name();
    let existing = match o.secrets.get(&name) {
        None => return Step::ReadSecret { name },
        Some(s) => s.as_ref(),
    };
    let Some(desired) = rendered_secret(o, remote, templated) else {
        return done_quietly(Then::Fail(Failure::InvalidObject));
    };
    let uid = o.inbox.metadata.uid.clone().unwrap_or_default();
    let (create, note) = match decide::plan_secret(existing, &desired, &uid) {
        SecretPlan::Create => (true, format!("wrote the address to Secret {name}")),
        SecretPlan::Update => (false, format!("restored the address in Secret {name}")),
        SecretPlan::Conflict => {
            let msg = format!(
                "Secret {name:?} exists and is not owned by this Inbox; it is left untouched: delete it or set spec.secret.name"
            );
            return conflict(o, remote, msg);
        }
        SecretPlan::UpToDate => {
            if let Some(step) = renamed_secret_cleanup(o, &name) {
                return step;
            }
            if let Some(step) = converge_config_map(o, remote, config_map_data) {
                return step;
            }
            let readiness = readiness_of(remote);
            return Step::Done(Done {
                failures: Failures::Reset,
                ..finish(
                    Some(report(o, Some(remote), Some(name), readiness)),
                    Then::Settle,
                )
            });
        }
    };
    // The pass that just bound the inbox announced it; its first Secret needs no event.
    let quiet = create && o.bound_now;
    Step::WriteSecret {
        secret: Box::new(desired),
        create,
        event: (!quiet).then(|| InboxEvent::new(EventKind::SecretWritten, note)),
    }
}

/// A Secret or ConfigMap of the wanted name is someone else's: `SecretConflict`, nothing
/// written. The foreign object is not watched: look again now and then.
fn conflict(o: &Observed, remote: &RemoteInbox, msg: String) -> Step {
    let again = Duration::from_secs(30).mul_f64(1.0 + o.jitter * 0.2);
    Step::Done(Done {
        failures: Failures::Reset,
        ..finish(
            Some(report(
                o,
                Some(remote),
                None,
                stalled(Reason::SecretConflict, msg),
            )),
            Then::Requeue(again),
        )
    })
}

/// `Rejected` with the observed inbox mirrored; nothing written but status.
fn rejected_with(o: &Observed, remote: &RemoteInbox, msg: String) -> Step {
    done(
        report(o, Some(remote), None, stalled(Reason::Rejected, msg)),
        Then::Settle,
    )
}

// -------------------------------------------------------------------------- ConfigMap

/// The ConfigMaps a pass must know about: the one `spec.configMap` wants and the one status
/// records (if it differs); empty when neither names one.
fn config_map_names(o: &Observed) -> Vec<String> {
    let recorded = o
        .status_at_start
        .as_ref()
        .and_then(|s| s.config_map_name.clone());
    let mut names: Vec<String> = o
        .inbox
        .config_map_name()
        .into_iter()
        .chain(recorded)
        .collect();
    names.dedup();
    names
}

/// After the Secret is in place: write or restore the ConfigMap `data` belongs in (a foreign
/// one is a `SecretConflict`), and delete the one this Inbox owned under a former name or
/// before `spec.configMap` was removed. `None` once nothing is left to do.
fn converge_config_map(
    o: &Observed,
    remote: &RemoteInbox,
    data: Option<BTreeMap<String, String>>,
) -> Option<Step> {
    let names = config_map_names(o);
    if names.is_empty() {
        return None;
    }
    let Some(known) = &o.config_maps else {
        return Some(Step::ReadConfigMaps { names });
    };
    let uid = o.inbox.metadata.uid.as_deref().unwrap_or_default();
    let wanted = o.inbox.config_map_name();
    if let (Some(name), Some(data)) = (&wanted, data) {
        let Some(desired) = config_map::desired_config_map(&o.inbox, data) else {
            return Some(done_quietly(Then::Fail(Failure::InvalidObject)));
        };
        let existing = known.get(name).and_then(Option::as_ref);
        let note = match config_map::plan_config_map(existing, &desired, uid) {
            SecretPlan::UpToDate => None,
            SecretPlan::Create => Some(format!("wrote the address to ConfigMap {name}")),
            SecretPlan::Update => Some(format!("restored the address in ConfigMap {name}")),
            SecretPlan::Conflict => {
                let msg = format!(
                    "ConfigMap {name:?} exists and is not owned by this Inbox; it is left untouched: delete it or set spec.configMap.name"
                );
                return Some(conflict(o, remote, msg));
            }
        };
        if let Some(note) = note {
            return Some(Step::WriteConfigMap {
                create: existing.is_none(),
                config_map: Box::new(desired),
                event: Some(InboxEvent::new(EventKind::ConfigMapWritten, note)),
            });
        }
    }
    let (name, uid) = config_map::unwanted(known, wanted.as_deref(), uid).next()?;
    Some(Step::DeleteConfigMap {
        name: name.to_string(),
        uid: uid.cloned(),
    })
}

/// What `status.configMapName` says after this pass: the wanted ConfigMap once this Inbox
/// owns it, nothing once no owned one is left; `None` (keep it) while that is not known.
fn config_map_in_place(o: &Observed) -> Option<Option<String>> {
    let known = o.config_maps.as_ref()?;
    let uid = o.inbox.metadata.uid.as_deref().unwrap_or_default();
    match o.inbox.config_map_name() {
        Some(name) => {
            let meta = known.get(&name)?.as_ref()?;
            decide::is_owned_by(meta, uid).then_some(Some(name))
        }
        None => config_map::unwanted(known, None, uid)
            .next()
            .is_none()
            .then_some(None),
    }
}

/// Check what the spec adds to the Secret before anything is written: labels and annotations
/// Kubernetes would refuse, and `spec.secret.template` (rendered here). `Ok`: the rendered
/// template keys; `Err`: the `Rejected` report that ends the pass.
fn checked_secret_spec(
    o: &Observed,
    remote: &RemoteInbox,
) -> Result<BTreeMap<String, String>, Box<Step>> {
    let rejected = |msg: String| {
        Box::new(done(
            report(o, Some(remote), None, stalled(Reason::Rejected, msg)),
            Then::Settle,
        ))
    };
    let spec_secret = o.inbox.spec.secret.as_ref();
    if let Err(e) = crate::controller::inbox::outputs::meta::check_secret_metadata(
        spec_secret.and_then(|s| s.labels.as_ref()),
        spec_secret.and_then(|s| s.annotations.as_ref()),
    ) {
        return Err(rejected(format!(
            "{e}; Kubernetes would refuse the Secret, so it is not written"
        )));
    }
    match spec_secret.and_then(|s| s.template.as_ref()) {
        None => Ok(BTreeMap::new()),
        Some(t) => template::render(t, &template::Fields::of(remote)).map_err(|e| {
            rejected(format!(
                "spec.secret.template: {e}; the Secret is left as it was"
            ))
        }),
    }
}

/// After `spec.secret.name` changed, the previous Secret goes if this Inbox owns it.
fn renamed_secret_cleanup(o: &Observed, current: &str) -> Option<Step> {
    let old = o.status_at_start.as_ref()?.secret_name.as_deref()?;
    (old != current).then(|| delete_owned_secret(o, old))?
}

/// Read the Secret, then delete it if this Inbox owns it; `None` once nothing is left to do.
fn delete_owned_secret(o: &Observed, name: &str) -> Option<Step> {
    let uid = o.inbox.metadata.uid.as_deref().unwrap_or_default();
    match o.secrets.get(name) {
        None => Some(Step::ReadSecret {
            name: name.to_string(),
        }),
        Some(Some(s)) if decide::is_owned_by(s, uid) => Some(Step::DeleteSecret {
            name: name.to_string(),
            uid: s.uid.clone(),
        }),
        Some(_) => None,
    }
}

/// Readiness of an observed, bound inbox whose Secret is in place.
pub fn readiness_of(remote: &RemoteInbox) -> Readiness {
    match &remote.status {
        InboxState::Active => Readiness::Ready,
        InboxState::Suspended => stalled(
            Reason::InboxSuspended,
            "AgentSend suspended this inbox (often for high bounce or complaint rates); it neither sends nor receives until reactivated",
        ),
        InboxState::Deleted => Readiness::progressing(
            Reason::InboxNotFound,
            "AgentSend reports this inbox as deleted",
        ),
        InboxState::Unknown(s) => Readiness::progressing(
            Reason::ApiUnavailable,
            format!(
                "AgentSend reports inbox state {s:?}, which this operator does not know; the inbox is not treated as ready"
            ),
        ),
    }
}

// ----------------------------------------------------------------------------- cleanup

fn cleanup(o: &Observed) -> Step {
    if let Some(step) = held(o) {
        return step;
    }
    let Some((policy, _)) = o.deletion_policy() else {
        return Step::ReadNamespace;
    };
    // Observe-only: deletion releases, whatever deletionPolicy says.
    let policy = if o.observing() {
        DeletionPolicy::Orphan
    } else {
        policy
    };
    // No `Deleting` status first: a deletion that goes through in this pass is over before
    // anyone reads it (and the Inbox is gone with its status), and the write was one of the
    // pass's sequential round trips. A deletion that cannot go through still explains itself:
    // waiting for other finalizers or a pause reports `Deleting`/`Paused` ([`held_deletion`]),
    // and a failure reports the failure (kept on retries: one status write per outcome).
    let bound = o.binding();
    let pending = match o.pending() {
        Some(p @ (Pending::Proven { .. } | Pending::Legacy(_))) => Some(p),
        // A mark without proof deletes nothing.
        Some(Pending::Unproven { .. }) | None => None,
    };
    match policy {
        DeletionPolicy::Orphan => {
            if let Some(b) = &bound
                && let Some(step) = announce_orphaned(o, &b.id)
            {
                return step;
            }
        }
        DeletionPolicy::Delete if bound.is_some() || pending.is_some() => {
            if let Some(step) = delete_remote(o, bound, pending) {
                return step;
            }
        }
        DeletionPolicy::Delete => {}
    }
    let current = o.inbox.secret_name();
    let orphan = policy == DeletionPolicy::Orphan;
    if orphan
        && o.inbox.retains_secret()
        && let Some(step) = retain_secret(o, &current)
    {
        return step;
    }
    if let Some(step) = delete_owned_secret(o, &current) {
        return step;
    }
    if let Some(step) = renamed_secret_cleanup(o, &current) {
        return step;
    }
    if let Some(step) = cleanup_config_maps(o, orphan && o.inbox.retains_config_map()) {
        return step;
    }
    Step::Done(Done {
        release: true,
        failures: Failures::Reset,
        ..finish(None, Then::Settle)
    })
}

/// The `Orphaned` event for inbox `id` left in place, once. A Warning when the Inbox last
/// reported `AccountChanged`: its credentials no longer reach the inbox, so nobody manages it
/// now.
fn announce_orphaned(o: &Observed, id: &str) -> Option<Step> {
    if o.announced(EventKind::Orphaned) || o.announced(EventKind::LeftBehind) {
        return None;
    }
    let unreachable = status::find(o.status_at_start.as_ref(), inbox::condition::READY)
        .is_some_and(|c| c.reason() == Some(Reason::AccountChanged));
    let event = if unreachable {
        InboxEvent::new(
            EventKind::LeftBehind,
            format!(
                "left AgentSend inbox {id} in place (deletionPolicy Orphan) in an account the Inbox's credentials no longer reach: nothing manages it now; delete it in AgentSend if it is unwanted{}",
                retained(o)
            ),
        )
    } else {
        let why = if o.observing() {
            "managementPolicy Observe"
        } else {
            "deletionPolicy Orphan"
        };
        InboxEvent::new(
            EventKind::Orphaned,
            format!("left AgentSend inbox {id} in place ({why}){}", retained(o)),
        )
    };
    Some(Step::Announce(event))
}

/// Deleting: the ConfigMaps this Inbox owns go with it — but the wanted one is released
/// instead when `retain` (`retainOnOrphan` with `Orphan`); `None` once none is left.
fn cleanup_config_maps(o: &Observed, retain: bool) -> Option<Step> {
    let names = config_map_names(o);
    if names.is_empty() {
        return None;
    }
    let Some(known) = &o.config_maps else {
        return Some(Step::ReadConfigMaps { names });
    };
    let owner = o.inbox.metadata.uid.as_deref().unwrap_or_default();
    let wanted = o.inbox.config_map_name();
    if retain
        && let Some(name) = wanted
        && let Some(meta) = known.get(&name).and_then(Option::as_ref)
        && decide::is_owned_by(meta, owner)
    {
        return Some(Step::Release {
            kind: config_map::OutputKind::ConfigMap,
            patch: config_map::release_patch(meta, owner),
            name,
        });
    }
    let (name, uid) = config_map::unwanted(known, None, owner).next()?;
    Some(Step::DeleteConfigMap {
        name: name.to_string(),
        uid: uid.cloned(),
    })
}

/// What the Orphaned event adds about the outputs `retainOnOrphan` keeps.
fn retained(o: &Observed) -> String {
    let secret = o
        .inbox
        .retains_secret()
        .then(|| format!("Secret {}", o.inbox.secret_name()));
    let config_map = o
        .inbox
        .config_map_name()
        .filter(|_| o.inbox.retains_config_map())
        .map(|n| format!("ConfigMap {n}"));
    let kept: Vec<String> = secret.into_iter().chain(config_map).collect();
    if kept.is_empty() {
        String::new()
    } else {
        format!("; kept {} (retainOnOrphan)", kept.join(" and "))
    }
}

/// Deleting with `Orphan` and `spec.secret.retainOnOrphan`: read the Secret, then release it
/// if this Inbox owns it; `None` once it is not (or no longer) ours.
fn retain_secret(o: &Observed, name: &str) -> Option<Step> {
    let owner = o.inbox.metadata.uid.as_deref().unwrap_or_default();
    match o.secrets.get(name) {
        None => Some(Step::ReadSecret {
            name: name.to_string(),
        }),
        Some(Some(meta)) if decide::is_owned_by(meta, owner) => Some(Step::Release {
            kind: config_map::OutputKind::Secret,
            name: name.to_string(),
            patch: config_map::release_patch(meta, owner),
        }),
        Some(_) => None,
    }
}

/// Delete the bound inbox, or the one an interrupted create made; `None` once done. Only with
/// a key of the account the inbox was bound in: a key of another account is first checked
/// with a GET (found: same account), and where it does not reach the inbox the deletion waits
/// (`AccountChanged`) instead of taking its 404 for "already gone".
fn delete_remote(o: &Observed, bound: Option<Binding>, pending: Option<Pending>) -> Option<Step> {
    let key = match (&o.credentials, &o.remembered_key) {
        (None, _) => return Some(Step::ReadCredentials),
        (Some(Credentials::Key(k)), _) => k.clone(),
        // The Secret may already be gone (its namespace is being deleted): the key this
        // process last used for the Inbox still works.
        (Some(Credentials::Missing(_) | Credentials::Refused(_)), Some(k)) => k.clone(),
        (Some(Credentials::Missing(msg) | Credentials::Refused(msg)), None) => {
            let m = format!(
                "cannot delete the AgentSend inbox: {msg}; restore the credentials or set deletionPolicy: Orphan"
            );
            let r = report(o, None, None, stalled(Reason::CredentialsMissing, m));
            return Some(fail(o, Some(r), Failure::CredentialsMissing(msg.clone())));
        }
    };
    let current = o.account_of(&key);
    let (id, account) = match (bound, pending) {
        (Some(b), _) => {
            // Delete only an inbox this Inbox owns: a second claimant only releases itself.
            let elsewhere = match claims_on(o, &[&b.id], true) {
                Ok(e) => e,
                Err(step) => return Some(*step),
            };
            if elsewhere.get(&b.id).is_some_and(|c| c.prior) {
                return None;
            }
            (b.id, b.account)
        }
        // Found by listing with this very key: in its account.
        (None, Some(pending)) => match interrupted_create(o, &key, pending)? {
            Ok(id) => (id, Some(current.clone())),
            Err(step) => return Some(step),
        },
        (None, None) => return None,
    };
    if account.as_deref() != Some(current.as_str()) {
        match &o.remote {
            None => return Some(Step::Fetch { key, id }),
            Some(Lookup::Failed(e)) => {
                let r = report(o, None, None, readiness_for_error(e));
                return Some(fail(o, Some(r), Failure::Api(e.clone())));
            }
            Some(Lookup::Gone) => return Some(deletion_blocked(o, &id, account.as_deref())),
            Some(Lookup::Found(_)) => {}
        }
    }
    match &o.deleted {
        None => Some(Step::DeleteInbox { key, id }),
        Some(Err(e)) => Some(fail(
            o,
            Some(report(o, None, None, readiness_for_error(e))),
            Failure::Api(e.clone()),
        )),
        Some(Ok(())) if !o.forgotten => Some(Step::Forget { key, id }),
        Some(Ok(())) if !o.announced(EventKind::Deleted) => Some(Step::Announce(InboxEvent::new(
            EventKind::Deleted,
            format!("deleted AgentSend inbox {id}"),
        ))),
        Some(Ok(())) => None,
    }
}

/// Deleting with `Delete`, and the key at hand does not reach the bound inbox: the
/// finalizer stays until the credentials reach it again, or `Orphan` releases the Inbox.
fn deletion_blocked(o: &Observed, id: &str, bound_in: Option<&str>) -> Step {
    let account = match bound_in {
        Some(a) => format!("the account of the key with fingerprint {a}"),
        None => "an account its binding does not record".into(),
    };
    let msg = format!(
        "cannot delete inbox {id:?}: the current credentials do not reach it (it was bound in {account}), and a 404 from another account is not proof that it is gone; the finalizer stays until the credentials reach the inbox's account again, or set deletionPolicy: Orphan to release this Inbox and leave the inbox in place"
    );
    let r = report(o, None, None, stalled(Reason::AccountChanged, msg.clone()));
    fail(o, Some(r), Failure::AccountChanged(msg))
}

/// During deletion without a bound ID: what an interrupted create made. `Some(Err(step))`
/// while inputs are missing, `Some(Ok(id))` for the inbox to delete, `None` for nothing.
/// Only an inbox of the pending address created after the mark, held by no other Inbox, is
/// deleted; a legacy mark deletes nothing on a guess.
fn interrupted_create(
    o: &Observed,
    key: &ApiKey,
    pending: Pending,
) -> Option<Result<String, Step>> {
    let candidates = match &o.candidates {
        None => return Some(Err(Step::ListCandidates { key: key.clone() })),
        Some(Err(e)) => return Some(Err(fail(o, None, Failure::Api(e.clone())))),
        Some(Ok(c)) => c,
    };
    let elsewhere = match claims_on(o, &ids_of(candidates), true) {
        Ok(e) => e,
        Err(step) => return Some(Err(*step)),
    };
    let since = match pending {
        Pending::Proven { address, origin } => {
            let found = decide::find_address(&o.inbox.spec, address, origin, candidates);
            return match found {
                AddressLookup::Ours(r) if !elsewhere.contains_key(&r.id) => Some(Ok(r.id)),
                _ => None,
            };
        }
        Pending::Unproven { .. } => return None,
        Pending::Legacy(since) => since,
    };
    let ids =
        match decide::recover_legacy(&o.inbox.spec, since, candidates, &claimed_ids(elsewhere)) {
            Recovery::None => return None,
            Recovery::One(r) => vec![r.id],
            Recovery::Ambiguous(ids) => ids,
        };
    if o.announced(EventKind::CreationUncertain) {
        return None;
    }
    Some(Err(Step::Announce(InboxEvent::new(
        EventKind::CreationUncertain,
        format!(
            "a create started by an earlier operator version may have made {}; none was deleted — delete it in AgentSend if it is unwanted",
            ids.join(", ")
        ),
    ))))
}

// ------------------------------------------------------------------------ outcomes

fn stalled(reason: Reason, message: impl Into<String>) -> Readiness {
    Readiness::stalled(reason, message)
}

fn immutable(o: &Observed, m: &FieldMismatch) -> Step {
    let r = stalled(Reason::ImmutableFieldChanged, decide::immutable_message(m));
    done(report(o, None, None, r), Then::Settle)
}

/// Who else names the inbox IDs `ids`: `Err(FindBindings)` until each has been looked up
/// (`cluster_wide`: see [`Step::FindBindings`]).
fn claims_on<'o>(
    o: &'o Observed,
    ids: &[&str],
    cluster_wide: bool,
) -> Result<&'o HashMap<String, Claim>, Box<Step>> {
    let unchecked: Vec<String> = match (&o.bound_elsewhere, &o.bindings_checked) {
        (Some(_), None) => Vec::new(),
        (Some(_), Some(checked)) => ids
            .iter()
            .filter(|id| !checked.contains(**id))
            .map(|id| id.to_string())
            .collect(),
        (None, _) => ids.iter().map(|id| id.to_string()).collect(),
    };
    if cluster_wide && let Some(why) = &o.bindings_unavailable {
        return Err(Box::new(ownership_unverified(o, why)));
    }
    match &o.bound_elsewhere {
        Some(claims) if unchecked.is_empty() => Ok(claims),
        _ => Err(Box::new(Step::FindBindings {
            cluster_wide,
            ids: unchecked,
        })),
    }
}

/// Fail closed: whether another Inbox owns the inbox cannot be checked, so adoption, recovery
/// and deletion wait (a condition, and the pass fails to back off).
fn ownership_unverified(o: &Observed, why: &str) -> Step {
    let msg = format!(
        "waiting: cannot check that no other Inbox in the cluster owns the inbox ({why}); nothing is bound or deleted until the check can be made. In a namespaced install, grant the binding-check role (list Inboxes cluster-wide)"
    );
    let r = report(
        o,
        None,
        None,
        stalled(Reason::OwnershipUnverified, msg.clone()),
    );
    fail(o, Some(r), Failure::OwnershipUnverified(msg))
}

/// The IDs of `inboxes`.
fn ids_of(inboxes: &[RemoteInbox]) -> Vec<&str> {
    inboxes.iter().map(|r| r.id.as_str()).collect()
}

/// The inbox IDs other Inboxes name.
fn claimed_ids(elsewhere: &HashMap<String, Claim>) -> HashSet<String> {
    elsewhere.keys().cloned().collect()
}

/// Refused: `claim`'s Inbox owns inbox `id`. Nothing is written but the status (which does
/// not record the ID); the Inbox is looked at again when the owner goes away.
fn claimed_elsewhere(o: &Observed, id: &str, claim: &Claim) -> Step {
    let msg = format!(
        "inbox {id:?} is already bound to Inbox {}; two Inboxes never share one inbox (this one writes no Secret and its deletion leaves the inbox alone)",
        claim.owner
    );
    let mut r = report(o, None, None, stalled(Reason::Rejected, msg));
    if r.status.inbox_id.as_deref() == Some(id) {
        r.status.inbox_id = None;
        r.changed = o.inbox.status.as_ref() != Some(&r.status);
        if !r.changed {
            r.events.clear();
        }
    }
    Step::Done(Done {
        blocked_on: Some(id.to_string()),
        ..finish(Some(r), Then::Requeue(o.sync_interval.saturating_mul(5)))
    })
}

fn rejected(o: &Observed, msg: String) -> Step {
    done(
        report(o, None, None, stalled(Reason::Rejected, msg)),
        Then::Settle,
    )
}

/// Retry after a stale cache view: soon (the watch normally delivers the newer object within
/// a second), then backing off, so a watch that is down does not cost a patch per second.
fn stale_view_retry(o: &Observed) -> Step {
    Step::Done(Done {
        failures: Failures::Bump,
        ..finish(
            None,
            Then::Requeue(decide::stale_view_delay(
                o.failures,
                o.jitter,
                o.max_retry_delay,
            )),
        )
    })
}

/// Turn an AgentSend failure into conditions and a retry.
/// Attempts that write (create, recovery, adoption) hold back passes over the same inputs
/// for the retry delay; a failed observation of a bound inbox does not (the account's scan
/// cache bounds those calls, and the counter sync wakes the Inbox when the account is back).
fn api_failure(o: &Observed, e: &ApiError) -> Step {
    let delay = retry_delay(e, o.failures, o.jitter, o.max_retry_delay);
    let observing =
        o.binding().is_some() && o.created.is_none() && matches!(o.remote, Some(Lookup::Failed(_)));
    Step::Done(Done {
        failures: Failures::Bump,
        failed: Some(e.reason()),
        hold: delay.filter(|_| !observing).map(|d| Hold::of(o, d)),
        ..finish(
            Some(report(o, None, None, readiness_for_error(e))),
            delay.map_or(Then::Settle, Then::Requeue),
        )
    })
}

/// The Ready condition for an AgentSend failure.
pub fn readiness_for_error(e: &ApiError) -> Readiness {
    match e {
        ApiError::Unauthorized { .. } => stalled(Reason::CredentialsInvalid, e.to_string()),
        ApiError::Rejected { message, status } => stalled(
            Reason::Rejected,
            format!("AgentSend rejected the spec (HTTP {status}): {message}"),
        ),
        ApiError::NotFound { .. }
        | ApiError::RateLimited { .. }
        | ApiError::Transient { .. }
        | ApiError::InvalidResponse { .. } => {
            Readiness::progressing(Reason::ApiUnavailable, e.to_string())
        }
        ApiError::Config { .. } => stalled(Reason::ApiUnavailable, e.to_string()),
    }
}

/// How long to wait before trying again after an AgentSend error; `None` means wait for the
/// spec to change. `failures` counts consecutive failures of this Inbox (0 for the first);
/// `jitter` in [0, 1) spreads retries so many Inboxes do not retry at once; `max` caps the
/// exponential backoff (never a `Retry-After`).
pub fn retry_delay(err: &ApiError, failures: u32, jitter: f64, max: Duration) -> Option<Duration> {
    // `clamp` keeps NaN, which `mul_f64` would panic on.
    let jitter = if jitter.is_nan() {
        0.0
    } else {
        jitter.clamp(0.0, 0.999)
    };
    match err {
        ApiError::Rejected { .. } => None,
        ApiError::RateLimited { retry_after, .. } => {
            let base = retry_after
                .unwrap_or(DEFAULT_RETRY_AFTER)
                .min(MAX_RETRY_AFTER);
            // Never earlier than Retry-After; spread up to 20 % (at least 1 s) later.
            let spread = (base.mul_f64(0.2)).max(Duration::from_secs(1));
            Some(base.saturating_add(spread.mul_f64(jitter)))
        }
        ApiError::Unauthorized { .. } | ApiError::Config { .. } => {
            Some(Duration::from_secs(300) + Duration::from_secs(60).mul_f64(jitter))
        }
        ApiError::Transient { .. }
        | ApiError::InvalidResponse { .. }
        | ApiError::NotFound { .. } => Some(decide::backoff(failures, jitter, max)),
    }
}

/// Retry delay for a pass that failed with `err` (the error policy); `max` caps the
/// exponential backoff.
pub fn error_retry(err: &Error, failures: u32, jitter: f64, max: Duration) -> Duration {
    match err {
        Error::Api(e) => retry_delay(e, failures, jitter, max).unwrap_or(Duration::from_secs(300)),
        Error::CredentialsMissing(_) => decide::backoff(failures.max(4), jitter, max),
        Error::Backoff { retry, .. } | Error::Held(retry) => *retry,
        Error::NotLeading => Error::NOT_LEADING_RETRY,
        _ => decide::backoff(failures, jitter, max),
    }
}

/// A progress report: written if possible, and the pass goes on either way.
fn progress(o: &Observed, readiness: Readiness) -> Step {
    Step::Progress(Report {
        best_effort: true,
        ..report(o, None, None, readiness)
    })
}

fn finish(report: Option<Report>, then: Then) -> Done {
    Done {
        report,
        then,
        failures: Failures::Keep,
        failed: None,
        release: false,
        hold: None,
        blocked_on: None,
    }
}

fn done(report: Report, then: Then) -> Step {
    Step::Done(finish(Some(report), then))
}

fn done_quietly(then: Then) -> Step {
    Step::Done(finish(None, then))
}

/// Fail a deletion pass: the finalizer stays, and passes over the same inputs wait for the
/// reconcile backoff (or the API's own retry rule) instead of retrying on their own writes.
fn fail(o: &Observed, report: Option<Report>, failure: Failure) -> Step {
    let report = report.map(|r| Report {
        best_effort: true,
        ..r
    });
    let delay = error_retry(
        &failure.clone().into(),
        o.failures,
        o.jitter,
        o.max_retry_delay,
    );
    Step::Done(Done {
        hold: Some(Hold::of(o, delay)),
        ..finish(report, Then::Fail(failure))
    })
}

/// While a failed attempt over the same inputs backs off: do nothing until it has elapsed.
/// (The key is read first: a new key is a new attempt.)
fn held(o: &Observed) -> Option<Step> {
    let hold = o.hold.as_ref()?;
    if o.credentials.is_none() {
        return Some(Step::ReadCredentials);
    }
    if !hold.matches(o) {
        return None;
    }
    let then = match o.phase {
        // A quiet Ok would let the finalizer go: the cleanup pass fails instead.
        Phase::Cleanup => Then::Fail(Failure::Held(hold.remaining)),
        Phase::Apply | Phase::Held => Then::Requeue(hold.remaining),
    };
    Some(done_quietly(then))
}

// ----------------------------------------------------------------------------- status

/// The status for `readiness`, whether it changed, and the events its transitions publish.
pub fn report(
    o: &Observed,
    remote: Option<&RemoteInbox>,
    secret_name: Option<String>,
    readiness: Readiness,
) -> Report {
    let current = o.inbox.status.as_ref();
    let mut new = status::build_status(StatusInput {
        previous: current,
        generation: o.inbox.metadata.generation,
        inbox_id: remote
            .map(|r| r.id.clone())
            .or_else(|| o.binding().map(|b| b.id)),
        remote,
        secret_name,
        readiness: readiness.clone(),
        now: &o.now,
    });
    if let Some(value) = refresh_served(o) {
        new.observed_refresh = Some(value.to_string());
    }
    if let Some(name) = config_map_in_place(o) {
        new.config_map_name = name;
    }
    // Which deletion policy applies, once known; else what status said.
    let (policy, source) = match o.deletion_policy() {
        Some((p, s)) => (Some(p), Some(s)),
        None => current.map_or((None, None), |c| {
            (c.deletion_policy, c.deletion_policy_source)
        }),
    };
    new.deletion_policy = policy;
    new.deletion_policy_source = source;
    let changed = current != Some(&new);
    let events = if changed {
        transition_events(o.status_at_start.as_ref(), &new, &readiness)
    } else {
        Vec::new()
    };
    Report {
        ready: readiness == Readiness::Ready,
        status: new,
        changed,
        readiness,
        events,
        best_effort: false,
    }
}

/// The `agentsend.io/refresh` value this pass's observation answers: a refresh scan served
/// it, or the pass bound the inbox (the create's or GET's answer is fresh).
fn refresh_served(o: &Observed) -> Option<&str> {
    let served = o.refresh == Some(Refresh::Served) || o.bound_now;
    served.then(|| o.inbox.refresh_wanted()).flatten()
}

/// Warning events for entering a not-ready reason the contract names, and for reaching the
/// send limit. Transitions only, so a retry loop does not flood the namespace.
pub fn transition_events(
    before: Option<&InboxStatus>,
    after: &InboxStatus,
    readiness: &Readiness,
) -> Vec<InboxEvent> {
    let mut events = Vec::new();
    let before_reason = status::find(before, inbox::condition::READY).and_then(|c| c.reason());
    let warning = match readiness.reason() {
        Reason::Rejected => Some(EventKind::Rejected),
        Reason::CredentialsInvalid => Some(EventKind::CredentialsInvalid),
        Reason::CreationUncertain => Some(EventKind::CreationUncertain),
        Reason::SecretConflict => Some(EventKind::SecretConflict),
        Reason::InboxSuspended => Some(EventKind::Suspended),
        _ => None,
    };
    if let Some(kind) = warning
        && before_reason != Some(readiness.reason())
    {
        events.push(InboxEvent::new(kind, readiness.message()));
    }
    let limit = |s| status::find(s, inbox::condition::SEND_LIMIT_REACHED);
    if let Some(now) = limit(Some(after))
        && now.status() == ConditionStatus::True
        && limit(before).map(|c| c.status()) != Some(ConditionStatus::True)
    {
        events.push(InboxEvent::new(
            EventKind::SendLimitReached,
            now.message.clone(),
        ));
    }
    events
}

// ------------------------------------------------------------------------- display

/// How a step that writes an output object (Secret or ConfigMap) reads in a plan.
fn describe_write(
    f: &mut fmt::Formatter<'_>,
    kind: &str,
    meta: &ObjectMeta,
    create: bool,
    quiet: bool,
) -> fmt::Result {
    let verb = if create { "create" } else { "update" };
    let name = meta.name.as_deref().unwrap_or_default();
    write!(f, "{verb} {kind} {name}")?;
    if quiet {
        write!(f, " quietly")?;
    }
    Ok(())
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::ReadCredentials => write!(f, "read credentials"),
            Step::ReadNamespace => write!(f, "read namespace"),
            Step::MarkInUse(target) => write!(f, "mark {target} in use"),
            Step::Observe { id, .. } => write!(f, "observe {id}"),
            Step::Fetch { id, .. } => write!(f, "fetch {id}"),
            Step::ListCandidates { .. } => write!(f, "list candidates"),
            Step::FindBindings { .. } => write!(f, "find bindings"),
            Step::MarkPending {
                unbind,
                address,
                origin,
                resumes,
                ..
            } => {
                if let Some(id) = unbind {
                    write!(f, "unbind {id} and ")?;
                }
                write!(f, "mark pending {address}")?;
                if let Origin::SeenAbsent(at) = origin {
                    write!(f, " (seen absent at {at:?})")?;
                }
                if *resumes {
                    f.write_str(" again")?;
                }
                Ok(())
            }
            Step::Progress(r) => write!(f, "progress {}", r.readiness.reason()),
            Step::Create { request, .. } => write!(
                f,
                "create {}",
                request.address.as_deref().unwrap_or_default()
            ),
            Step::Bind { remote, event, .. } => {
                write!(f, "bind {} ({})", remote.id, event.kind.reason())
            }
            Step::BindWithSecret {
                remote,
                event,
                secret,
                ..
            } => write!(
                f,
                "bind {} ({}) and create secret {}",
                remote.id,
                event.kind.reason(),
                secret.metadata.name.as_deref().unwrap_or_default()
            ),
            Step::RecordBinding { id, .. } => write!(f, "record binding {id}"),
            Step::ClearPending => write!(f, "clear pending"),
            Step::Forget { id, .. } => write!(f, "forget {id}"),
            Step::Register { id, .. } => write!(f, "register {id}"),
            Step::RequestRefresh { value, .. } => write!(f, "request refresh {value:?}"),
            Step::ReadSecret { name } => write!(f, "read secret {name}"),
            Step::WriteSecret {
                secret,
                create,
                event,
            } => describe_write(f, "secret", &secret.metadata, *create, event.is_none()),
            Step::DeleteSecret { name, .. } => write!(f, "delete secret {name}"),
            Step::ReadConfigMaps { names } => write!(f, "read configmaps {}", names.join(",")),
            Step::WriteConfigMap {
                config_map,
                create,
                event,
            } => describe_write(
                f,
                "configmap",
                &config_map.metadata,
                *create,
                event.is_none(),
            ),
            Step::DeleteConfigMap { name, .. } => write!(f, "delete configmap {name}"),
            Step::Release { kind, name, .. } => write!(f, "release {kind} {name}"),
            Step::AddFinalizer => write!(f, "add finalizer"),
            Step::DeleteInbox { id, .. } => write!(f, "delete inbox {id}"),
            Step::Announce(e) => {
                let warning = e.kind.event_type() == kube::runtime::events::EventType::Warning;
                let kind = if warning { "warning " } else { "" };
                write!(f, "announce {kind}{}", e.kind.reason())
            }
            Step::Done(d) => write!(f, "{d}"),
        }
    }
}

impl fmt::Display for Done {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("done")?;
        if let Some(r) = &self.report {
            write!(f, " {}", r.readiness.reason())?;
            for e in &r.events {
                write!(f, " +{}", e.kind.reason())?;
            }
        }
        match &self.then {
            Then::Settle => f.write_str("; settle")?,
            Then::Requeue(d) => write!(f, "; requeue {d:?}")?,
            Then::Fail(Failure::Api(e)) => write!(f, "; fail {}", e.reason())?,
            Then::Fail(Failure::CredentialsMissing(_)) => f.write_str("; fail credentials")?,
            Then::Fail(Failure::InvalidObject) => f.write_str("; fail invalid")?,
            Then::Fail(Failure::Held(d)) => write!(f, "; held {d:?}")?,
            Then::Fail(Failure::AccountChanged(_)) => f.write_str("; fail account changed")?,
            Then::Fail(Failure::OwnershipUnverified(_)) => {
                f.write_str("; fail ownership unverified")?
            }
        }
        match self.failures {
            Failures::Keep => {}
            Failures::Reset => f.write_str("; reset failures")?,
            Failures::Bump => f.write_str("; count failure")?,
        }
        if self.release {
            f.write_str("; release")?;
        }
        if let Some(h) = &self.hold {
            write!(f, "; hold {:?}", h.remaining)?;
        }
        if let Some(id) = &self.blocked_on {
            write!(f, "; wait for the owner of {id}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! The lifecycle as a table: each row is one rule — what the pass has observed so far,
    //! and the one thing the planner does next.

    use super::*;
    use crate::api::inbox::{InboxSpec, SecretSpec};
    use crate::controller::inbox::decide::tests::as_written;
    use kube::ResourceExt;

    /// The default cap of the failure backoff.
    const MAX: Duration = decide::MAX_RETRY_DELAY;

    const NOW: &str = "2026-11-28T10:00:00Z";
    const MARKED_AT: &str = "2026-11-28T09:59:00Z";
    /// The random local part the executor drew for the pass.
    const RANDOM: &str = "r4nd0mr4nd0mr4nd";

    fn key() -> ApiKey {
        ApiKey::new("k").unwrap()
    }

    /// The operator's proof key in these tests.
    fn proof_key() -> ProofKey {
        ProofKey::from_bytes(&[9u8; 32]).unwrap()
    }

    /// A key of another AgentSend account.
    fn other_key() -> ApiKey {
        ApiKey::new("k-of-another-account").unwrap()
    }

    /// The listing that found a chosen address absent, as the server's clock said.
    fn listed_at() -> i64 {
        MARKED_AT.parse::<jiff::Timestamp>().unwrap().as_second()
    }

    fn remote(id: &str, address: &str) -> RemoteInbox {
        RemoteInbox::fixture(id, address)
    }

    fn inb1() -> RemoteInbox {
        remote("inb_1", "support@agentsend.io")
    }

    fn transient() -> ApiError {
        ApiError::Transient {
            status: Some(503),
            message: "down".into(),
        }
    }

    fn unauthorized() -> ApiError {
        ApiError::Unauthorized {
            status: 401,
            message: "bad key".into(),
        }
    }

    /// A failed attempt over these inputs, with 250 s left.
    fn hold(phase: Phase, generation: Option<i64>, key: Option<ApiKey>) -> Hold {
        Hold {
            phase,
            generation,
            key,
            remaining: Duration::from_secs(250),
        }
    }

    fn owner_claim(prior: bool) -> Claim {
        Claim {
            owner: "other/owner".into(),
            prior,
        }
    }

    fn rejected_422() -> ApiError {
        ApiError::Rejected {
            status: 422,
            message: "unknown domain".into(),
        }
    }

    /// `r`, created long before the pending mark.
    fn older(r: RemoteInbox) -> RemoteInbox {
        RemoteInbox {
            created_at: Some("2025-01-01T00:00:00.000Z".into()),
            ..r
        }
    }

    fn rejected_409() -> ApiError {
        ApiError::Rejected {
            status: 409,
            message: "address taken".into(),
        }
    }

    /// An Observed under construction.
    struct B(Observed);

    fn obs() -> B {
        let mut i = Inbox::new("mail", InboxSpec::default());
        i.metadata.namespace = Some("team".into());
        i.metadata.uid = Some("uid-1".into());
        i.metadata.resource_version = Some("7".into());
        i.metadata.generation = Some(2);
        let mut o = Observed::new(
            i,
            Phase::Apply,
            NOW.into(),
            Duration::from_secs(60),
            proof_key(),
        );
        o.random_local = RANDOM.into();
        // The namespace was read and sets no default (rows about it say otherwise).
        o.namespace_default = Some(None);
        B(o)
    }

    impl B {
        fn with(mut self, f: impl FnOnce(&mut Observed)) -> Self {
            f(&mut self.0);
            self
        }
        fn ann(self, k: &'static str, v: &str) -> Self {
            let v = v.to_string();
            self.with(|o| {
                o.inbox.annotations_mut().insert(k.into(), v);
            })
        }
        fn paused(self) -> Self {
            self.ann(inbox::ANNOTATION_PAUSED, "true")
        }
        fn finalizers(self, list: &[&str]) -> Self {
            let list = list.iter().map(|f| f.to_string()).collect();
            self.with(|o| o.inbox.metadata.finalizers = Some(list))
        }
        fn deleting(self) -> Self {
            self.with(|o| o.phase = Phase::Cleanup)
                .progress(Reason::Deleting)
        }
        fn observe(self) -> Self {
            self.spec(|s| s.management_policy = inbox::ManagementPolicy::Observe)
        }
        fn orphan(self) -> Self {
            self.spec(|s| s.deletion_policy = Some(DeletionPolicy::Orphan))
        }
        fn key(self) -> Self {
            self.with(|o| o.credentials = Some(Credentials::Key(key())))
        }
        fn no_key(self) -> Self {
            self.with(|o| o.credentials = Some(Credentials::Missing("no key".into())))
        }
        /// The key comes through Secret ops/shared-key, which carries the finalizer or not.
        fn in_use(self, marked: bool) -> Self {
            self.with(|o| {
                o.in_use = vec![(
                    InUse::Secret {
                        namespace: "ops".into(),
                        name: "shared-key".into(),
                    },
                    marked,
                )]
            })
        }
        fn remembered(self) -> Self {
            self.with(|o| o.remembered_key = Some(key()))
        }
        /// Bound by annotation, with the operator's proof for the account of [`key`]; the
        /// binding index read, nobody else claiming anything (unless `elsewhere` says
        /// otherwise).
        fn bound(self, id: &str) -> Self {
            self.bound_in(id, &key())
        }
        /// Bound by annotation, with proof, in the account of `k`.
        fn bound_in(self, id: &str, k: &ApiKey) -> Self {
            let pk = proof_key();
            let proof = pk.binding_proof("team", "mail", id, &pk.fingerprint(k));
            self.ann(inbox::ANNOTATION_INBOX_ID, id)
                .ann(inbox::ANNOTATION_INBOX_ID_PROOF, &proof)
                .with(|o| {
                    o.bound_elsewhere.get_or_insert_with(HashMap::new);
                })
        }
        /// The annotation names `id` with no proof (a tenant wrote it).
        fn claims_unproven(self, id: &str) -> Self {
            self.ann(inbox::ANNOTATION_INBOX_ID, id)
        }
        fn index_unread(self) -> Self {
            self.with(|o| o.bound_elsewhere = None)
        }
        /// A create of `support@agentsend.io` (the address of [`inb1`]) marked at MARKED_AT
        /// with the operator's proof that it generated the address.
        fn pending(self) -> Self {
            self.pending_as(Origin::Random)
        }
        /// The same create, with a proof of `origin`.
        fn pending_as(self, origin: Origin) -> Self {
            let proof = proof_key().pending_proof("team", "mail", "support@agentsend.io", origin);
            self.ann(inbox::ANNOTATION_CREATE_PENDING, "support@agentsend.io")
                .ann(inbox::ANNOTATION_CREATE_PENDING_PROOF, &proof)
                .ann(inbox::ANNOTATION_CREATE_PENDING_SINCE, MARKED_AT)
        }
        /// A chosen `spec.address` whose create was marked after a listing at MARKED_AT found
        /// it absent.
        fn pending_chosen(self) -> Self {
            self.spec(|s| s.address = Some("support@agentsend.io".into()))
                .pending_as(Origin::SeenAbsent(Some(listed_at())))
        }
        /// A mark naming `support@agentsend.io` with no proof (a tenant wrote it).
        fn pending_unproven(self) -> Self {
            self.ann(inbox::ANNOTATION_CREATE_PENDING, "support@agentsend.io")
                .ann(inbox::ANNOTATION_CREATE_PENDING_SINCE, MARKED_AT)
        }
        /// A mark left by an earlier version: a time, no address.
        fn legacy_pending(self) -> Self {
            self.ann(inbox::ANNOTATION_CREATE_PENDING, MARKED_AT)
        }
        fn spec(self, f: impl FnOnce(&mut InboxSpec)) -> Self {
            self.with(|o| f(&mut o.inbox.spec))
        }
        fn adopting(self, id: &str) -> Self {
            let id = id.to_string();
            self.spec(|s| s.inbox_id = Some(id))
        }
        fn status(self, st: InboxStatus) -> Self {
            self.with(|o| {
                o.inbox.status = Some(st.clone());
                o.status_at_start = Some(st);
            })
        }
        fn found(self, r: RemoteInbox) -> Self {
            self.with(|o| o.remote = Some(Lookup::Found(r)))
        }
        fn gone(self) -> Self {
            self.with(|o| o.remote = Some(Lookup::Gone))
        }
        fn lookup_failed(self, e: ApiError) -> Self {
            self.with(|o| o.remote = Some(Lookup::Failed(e)))
        }
        fn candidates(self, c: Vec<RemoteInbox>) -> Self {
            self.with(|o| o.candidates = Some(Ok(c)))
        }
        /// Other Inboxes own these IDs (they hold them ahead of this one).
        fn elsewhere(self, ids: &[&str]) -> Self {
            let claims = ids
                .iter()
                .map(|s| (s.to_string(), owner_claim(true)))
                .collect();
            self.with(|o| o.bound_elsewhere = Some(claims))
        }
        fn marked(self, m: Marked) -> Self {
            self.with(|o| o.marked = Some(m))
        }
        fn created(self, r: Result<RemoteInbox, ApiError>) -> Self {
            self.with(|o| {
                o.created = Some(r);
                o.attempted = Some("support@agentsend.io".into());
            })
        }
        fn progress(self, r: Reason) -> Self {
            self.with(|o| o.progress = Some(r))
        }
        fn refreshed(self, r: Refresh) -> Self {
            self.with(|o| o.refresh = Some(r))
        }
        fn registered(self) -> Self {
            self.with(|o| o.registered = true)
        }
        fn secret(self, name: &str, s: Option<ObjectMeta>) -> Self {
            let name = name.to_string();
            self.with(|o| {
                o.secrets.insert(name, s);
            })
        }
        /// The Secret as this Inbox writes it for `r`.
        fn secret_for(self, r: &RemoteInbox) -> Self {
            let s = decide::desired_secret(&self.0.inbox, r).map(|s| as_written(&s));
            let name = self.0.inbox.secret_name();
            self.secret(&name, s)
        }
        /// Bound to `r`, observed, registered, Secret in place.
        fn converged(self, r: RemoteInbox) -> Self {
            self.key()
                .bound(&r.id.clone())
                .elsewhere(&[])
                .found(r.clone())
                .registered()
                .secret_for(&r)
        }
    }

    fn owned_secret(name: &str) -> ObjectMeta {
        let mut s = as_written(&decide::desired_secret(&obs().0.inbox, &inb1()).unwrap());
        s.name = Some(name.into());
        s.uid = Some(format!("uid-of-{name}"));
        s
    }

    fn foreign_secret(name: &str) -> ObjectMeta {
        let mut s = owned_secret(name);
        s.owner_references = None;
        s
    }

    fn ready_status(r: &RemoteInbox) -> InboxStatus {
        status::build_status(StatusInput {
            previous: None,
            generation: Some(2),
            inbox_id: Some(r.id.clone()),
            remote: Some(r),
            secret_name: Some("mail".into()),
            readiness: Readiness::Ready,
            now: NOW,
        })
    }

    fn rejected_status(generation: i64) -> InboxStatus {
        let mut s = status::build_status(StatusInput {
            previous: None,
            generation: Some(generation),
            inbox_id: None,
            remote: None,
            secret_name: None,
            readiness: stalled(Reason::Rejected, "taken"),
            now: NOW,
        });
        s.observed_generation = Some(generation);
        s
    }

    fn with_status(r: RemoteInbox, state: InboxState) -> RemoteInbox {
        RemoteInbox { status: state, ..r }
    }

    /// The ConfigMap `spec.configMap` asks for, as this Inbox writes it for `r`.
    fn written_config_map(b: &B, r: &RemoteInbox) -> ObjectMeta {
        let data = config_map::checked_data(&b.0.inbox, r).unwrap().unwrap();
        let c = config_map::desired_config_map(&b.0.inbox, data).unwrap();
        let keys: Vec<&str> = c.data.iter().flatten().map(|(k, _)| k.as_str()).collect();
        ObjectMeta {
            uid: Some(format!("uid-of-{}", c.metadata.name.clone().unwrap())),
            managed_fields: Some(vec![crate::controller::inbox::decide::tests::owning(
                inbox::FIELD_MANAGER,
                &keys,
            )]),
            ..c.metadata
        }
    }

    impl B {
        fn config_map(self, name: Option<&str>) -> Self {
            let name = name.map(str::to_string);
            self.spec(|s| {
                s.config_map = Some(Box::new(inbox::ConfigMapSpec {
                    name,
                    ..Default::default()
                }))
            })
        }
        /// `status.configMapName` records `name`.
        fn recorded_config_map(self, name: &str) -> Self {
            let name = name.to_string();
            self.with(|o| {
                for s in [&mut o.inbox.status, &mut o.status_at_start] {
                    s.get_or_insert_default().config_map_name = Some(name.clone());
                }
            })
        }
        fn config_maps(self, known: &[(&str, Option<ObjectMeta>)]) -> Self {
            let known = known
                .iter()
                .map(|(n, m)| (n.to_string(), m.clone()))
                .collect();
            self.with(|o| o.config_maps = Some(known))
        }
    }

    /// The ConfigMap output (`spec.configMap`): the Secret's rules, one rule per row.
    fn output_rows() -> Vec<(&'static str, B, &'static str)> {
        let with_cm = || obs().config_map(None).converged(inb1());
        let ours = written_config_map(&with_cm(), &inb1());
        let foreign = ObjectMeta {
            owner_references: None,
            ..ours.clone()
        };
        let edited = ObjectMeta {
            managed_fields: Some(vec![crate::controller::inbox::decide::tests::owning(
                "kubectl-edit",
                &["address"],
            )]),
            ..ours.clone()
        };
        let renamed = ObjectMeta {
            name: Some("old".into()),
            ..ours.clone()
        };
        let template = |t: &str| {
            let t = t.to_string();
            move |s: &mut InboxSpec| {
                s.secret.get_or_insert_default().template = Some([("FROM".to_string(), t)].into());
            }
        };
        vec![
            (
                "unbound, a template that does not parse: Rejected before any AgentSend call",
                obs().key().spec(template("{{ address ")),
                "done Rejected +Rejected; settle",
            ),
            (
                "unbound, a template bomb: Rejected before any AgentSend call",
                obs().key().spec(template("{{ address * 99999999 }}")),
                "done Rejected +Rejected; settle",
            ),
            (
                "unbound, a ConfigMap template naming an unknown field: Rejected, nothing created",
                obs().key().spec(|s| {
                    s.config_map = Some(Box::new(inbox::ConfigMapSpec {
                        template: Some([("X".to_string(), "{{ adress }}".to_string())].into()),
                        ..Default::default()
                    }))
                }),
                "done Rejected +Rejected; settle",
            ),
            (
                "mid-create, a template turned bad: the create is resumed first (the inbox may exist)",
                obs().key().pending().spec(template("{{ address ")),
                "progress Creating",
            ),
            (
                "unbound, a good template: the create goes on",
                obs().key().spec(template("<{{ address }}>")),
                "mark pending r4nd0mr4nd0mr4nd@agentsend.io",
            ),
            (
                "configMap wanted, Secret in place: read the ConfigMap's metadata",
                with_cm(),
                "read configmaps mail",
            ),
            (
                "configMap absent: create it",
                with_cm().config_maps(&[("mail", None)]),
                "create configmap mail",
            ),
            (
                "configMap ours and as written: Ready, and status records it",
                with_cm().config_maps(&[("mail", Some(ours.clone()))]),
                "done Ready; settle; reset failures",
            ),
            (
                "configMap edited by someone else: restored",
                with_cm().config_maps(&[("mail", Some(edited))]),
                "update configmap mail",
            ),
            (
                "a ConfigMap of that name this Inbox does not own: SecretConflict, never touched",
                with_cm().config_maps(&[("mail", Some(foreign))]),
                "done SecretConflict +SecretConflict; requeue 30s; reset failures",
            ),
            (
                "configMap template that does not render: Rejected, nothing written",
                with_cm().spec(|s| {
                    s.config_map.get_or_insert_default().template =
                        Some([("FROM".into(), "{{ nope }}".into())].into());
                }),
                "done Rejected +Rejected; settle",
            ),
            (
                "configMap renamed: both names read",
                obs()
                    .config_map(Some("new"))
                    .converged(inb1())
                    .recorded_config_map("old"),
                "read configmaps new,old",
            ),
            (
                "configMap renamed, the new one written: the old one goes",
                obs()
                    .config_map(Some("mail"))
                    .converged(inb1())
                    .recorded_config_map("old")
                    .config_maps(&[("mail", Some(ours.clone())), ("old", Some(renamed.clone()))]),
                "delete configmap old",
            ),
            (
                "spec.configMap removed: the recorded one goes",
                obs()
                    .converged(inb1())
                    .recorded_config_map("old")
                    .config_maps(&[("old", Some(renamed.clone()))]),
                "delete configmap old",
            ),
            (
                "spec.configMap removed, the recorded one gone: Ready",
                obs()
                    .converged(inb1())
                    .recorded_config_map("old")
                    .config_maps(&[("old", None)]),
                "done Ready; settle; reset failures",
            ),
            (
                "no configMap wanted or recorded: no ConfigMap read",
                obs().converged(inb1()),
                "done Ready; settle; reset failures",
            ),
            (
                "deleting with a configMap: read it",
                obs().config_map(None).deleting().secret("mail", None),
                "read configmaps mail",
            ),
            (
                "deleting: the owned ConfigMap goes with the Secret",
                obs()
                    .config_map(None)
                    .deleting()
                    .secret("mail", None)
                    .config_maps(&[("mail", Some(ours.clone()))]),
                "delete configmap mail",
            ),
            (
                "Orphan + secret.retainOnOrphan: the owned Secret is released, not deleted",
                obs()
                    .orphan()
                    .spec(|s| s.secret.get_or_insert_default().retain_on_orphan = Some(true))
                    .deleting()
                    .secret("mail", Some(owned_secret("mail"))),
                "release secret mail",
            ),
            (
                "Orphan + secret.retainOnOrphan, released: nothing more to do",
                obs()
                    .orphan()
                    .spec(|s| s.secret.get_or_insert_default().retain_on_orphan = Some(true))
                    .deleting()
                    .secret("mail", Some(foreign_secret("mail"))),
                "done; settle; reset failures; release",
            ),
            (
                "the namespace default Orphan + retainOnOrphan: released too",
                obs()
                    .with(|o| o.namespace_default = Some(Some("Orphan".into())))
                    .spec(|s| s.secret.get_or_insert_default().retain_on_orphan = Some(true))
                    .deleting()
                    .secret("mail", Some(owned_secret("mail"))),
                "release secret mail",
            ),
            (
                "Delete + secret.retainOnOrphan: no effect, the Secret is deleted",
                obs()
                    .spec(|s| s.secret.get_or_insert_default().retain_on_orphan = Some(true))
                    .deleting()
                    .secret("mail", Some(owned_secret("mail"))),
                "delete secret mail",
            ),
            (
                "Orphan + configMap.retainOnOrphan: the owned ConfigMap is released",
                obs()
                    .orphan()
                    .config_map(None)
                    .spec(|s| s.config_map.get_or_insert_default().retain_on_orphan = Some(true))
                    .deleting()
                    .secret("mail", None)
                    .config_maps(&[("mail", Some(ours.clone()))]),
                "release configmap mail",
            ),
            (
                "Orphan without configMap.retainOnOrphan: the ConfigMap is deleted",
                obs()
                    .orphan()
                    .config_map(None)
                    .deleting()
                    .secret("mail", None)
                    .config_maps(&[("mail", Some(ours.clone()))]),
                "delete configmap mail",
            ),
            (
                "observe-only + configMap.retainOnOrphan: released (deletion only releases)",
                obs()
                    .observe()
                    .config_map(None)
                    .spec(|s| s.config_map.get_or_insert_default().retain_on_orphan = Some(true))
                    .deleting()
                    .secret("mail", None)
                    .config_maps(&[("mail", Some(ours.clone()))]),
                "release configmap mail",
            ),
            (
                "Delete + configMap.retainOnOrphan: no effect, deleted",
                obs()
                    .config_map(None)
                    .spec(|s| s.config_map.get_or_insert_default().retain_on_orphan = Some(true))
                    .deleting()
                    .secret("mail", None)
                    .config_maps(&[("mail", Some(ours.clone()))]),
                "delete configmap mail",
            ),
            (
                "deleting: a foreign ConfigMap of that name is left alone",
                obs()
                    .config_map(None)
                    .deleting()
                    .secret("mail", None)
                    .config_maps(&[(
                        "mail",
                        Some(ObjectMeta {
                            owner_references: None,
                            ..ours
                        }),
                    )]),
                "done; settle; reset failures; release",
            ),
        ]
    }

    #[test]
    fn status_records_the_config_map_once_in_place_and_forgets_it_once_gone() {
        let name_in = |b: B| match plan(&b.0) {
            Step::Done(d) => d.report.and_then(|r| r.status.config_map_name),
            other => panic!("{other}"),
        };
        let b = obs().config_map(None).converged(inb1());
        let ours = written_config_map(&b, &inb1());
        let b = b.config_maps(&[("mail", Some(ours))]);
        assert_eq!(name_in(b).as_deref(), Some("mail"));
        let removed = obs()
            .converged(inb1())
            .recorded_config_map("old")
            .config_maps(&[("old", None)]);
        assert_eq!(name_in(removed), None);
    }

    /// The lifecycle, one rule per row: (rule, observed so far, next step).
    fn table() -> Vec<(&'static str, B, &'static str)> {
        let at_limit = RemoteInbox {
            sends_today: Some(100),
            ..inb1()
        };
        let bot = |id: &str, addr: &str| RemoteInbox {
            display_name: Some("Bot".into()),
            ..remote(id, addr)
        };
        vec![
            // ---- paused
            (
                "paused: no AgentSend call, no Secret write",
                obs().paused(),
                "done Paused; settle",
            ),
            (
                "paused while deleting: nothing happens, the finalizer stays",
                obs().paused().with(|o| o.phase = Phase::Held),
                "done Paused; settle",
            ),
            (
                "deleting while another finalizer remains: wait for it (Deleting names it), the finalizer stays",
                obs()
                    .finalizers(&[inbox::FINALIZER, "example.com/archive"])
                    .with(|o| o.phase = Phase::Held),
                "done Deleting; settle",
            ),
            (
                "paused and another finalizer: the pause is what the user must lift",
                obs()
                    .paused()
                    .finalizers(&[inbox::FINALIZER, "example.com/archive"])
                    .with(|o| o.phase = Phase::Held),
                "done Paused; settle",
            ),
            // ---- observe-only (managementPolicy: Observe): never create, re-create or delete
            (
                "observe by address: one list scan for an exact lookup, never a create",
                obs()
                    .key()
                    .observe()
                    .spec(|s| s.address = Some("support@agentsend.io".into())),
                "list candidates",
            ),
            (
                "observe by address, found: bind it (Adopted) once no other Inbox holds it",
                obs()
                    .key()
                    .observe()
                    .spec(|s| s.address = Some("support@agentsend.io".into()))
                    .candidates(vec![remote("inb_0", "other@agentsend.io"), inb1()])
                    .elsewhere(&[]),
                "bind inb_1 (Adopted)",
            ),
            (
                "observe by address, held by another Inbox: Rejected",
                obs()
                    .key()
                    .observe()
                    .spec(|s| s.address = Some("support@agentsend.io".into()))
                    .candidates(vec![inb1()])
                    .elsewhere(&["inb_1"]),
                "done Rejected +Rejected; requeue 300s; wait for the owner of inb_1",
            ),
            (
                "observe by address, absent: InboxNotFound, nothing created",
                obs()
                    .key()
                    .observe()
                    .spec(|s| s.address = Some("support@agentsend.io".into()))
                    .candidates(vec![remote("inb_0", "other@agentsend.io")]),
                "done InboxNotFound; requeue 300s",
            ),
            (
                "observe a local part: only on the spec's domain (here the shared one)",
                obs()
                    .key()
                    .observe()
                    .spec(|s| s.address = Some("support".into()))
                    .candidates(vec![RemoteInbox {
                        domain_id: Some("dom_1".into()),
                        ..remote("inb_2", "support@example.com")
                    }]),
                "done InboxNotFound; requeue 300s",
            ),
            (
                "observe without inboxId or address: Rejected, nothing to look up",
                obs().key().observe(),
                "done Rejected +Rejected; settle",
            ),
            (
                "observe by spec.inboxId: fetched like an adoption",
                obs().key().observe().adopting("inb_1"),
                "fetch inb_1",
            ),
            (
                "observed inbox vanished: never re-created, InboxNotFound",
                obs()
                    .key()
                    .observe()
                    .bound("inb_1")
                    .gone()
                    .with(|o| o.forgotten = true),
                "done InboxNotFound; requeue 300s",
            ),
            (
                "observed inbox with a display name the spec does not set: not a change",
                obs().observe().converged(RemoteInbox {
                    display_name: Some("Theirs".into()),
                    ..inb1()
                }),
                "done Ready; settle; reset failures",
            ),
            (
                "deleting an observed Inbox only releases, whatever deletionPolicy says",
                obs()
                    .deleting()
                    .observe()
                    .bound("inb_1")
                    .key()
                    .spec(|s| s.deletion_policy = Some(DeletionPolicy::Delete)),
                "announce Orphaned",
            ),
            // ---- namespace default (agentsend.io/default-deletion-policy)
            (
                "no spec.deletionPolicy: the namespace default is read (status shows which applies)",
                obs().with(|o| o.namespace_default = None),
                "read namespace",
            ),
            (
                "spec.deletionPolicy set: the namespace is not read",
                obs()
                    .with(|o| o.namespace_default = None)
                    .spec(|s| s.deletion_policy = Some(DeletionPolicy::Delete)),
                "read credentials",
            ),
            // ---- credentials
            (
                "the API key is resolved before anything else",
                obs(),
                "read credentials",
            ),
            (
                "no API key: CredentialsMissing, retried with backoff (at least the 4th step)",
                obs().no_key(),
                "done CredentialsMissing; requeue 4s; count failure",
            ),
            (
                "the account refuses the Inbox: AccountRefused, no AgentSend call, looked at again each interval",
                obs().with(|o| {
                    o.credentials = Some(Credentials::Refused("namespace not allowed".into()))
                }),
                "done AccountRefused; requeue 60s",
            ),
            (
                "the key Secret does not carry the in-use finalizer: it gets it before any AgentSend call",
                obs()
                    .key()
                    .in_use(false)
                    .with(|o| o.finalizer_missing = true),
                "add finalizer",
            ),
            (
                "the Inbox has its finalizer: the key Secret gets its own",
                obs().key().in_use(false),
                "mark Secret ops/shared-key in use",
            ),
            (
                "everything the key comes through is marked: on to the create",
                obs().key().in_use(true),
                "mark pending r4nd0mr4nd0mr4nd@agentsend.io",
            ),
            (
                "deleting with the account refused: the key last used deletes the inbox",
                obs()
                    .deleting()
                    .bound("inb_1")
                    .remembered()
                    .with(|o| o.credentials = Some(Credentials::Refused("gone".into()))),
                "delete inbox inb_1",
            ),
            // ---- create
            (
                "unbound, nothing pending: persist the mark naming a random address before any POST",
                obs().key(),
                "mark pending r4nd0mr4nd0mr4nd@agentsend.io",
            ),
            (
                "with a domainId the generated address is a local part",
                obs().key().spec(|s| s.domain_id = Some("dom_1".into())),
                "mark pending r4nd0mr4nd0mr4nd",
            ),
            (
                "spec.address: the account is listed before the mark (a chosen address may be taken)",
                obs().key().spec(|s| s.address = Some("support".into())),
                "list candidates",
            ),
            (
                "spec.address absent from the listing: the mark names it, with the listing's time",
                obs()
                    .key()
                    .spec(|s| s.address = Some("support".into()))
                    .candidates(vec![])
                    .with(|o| o.listed_at = Some(listed_at())),
                "mark pending support (seen absent at Some(1795859940))",
            ),
            (
                "spec.address already held in the account: someone else's, refused before any mark or POST",
                obs()
                    .key()
                    .spec(|s| s.address = Some("support".into()))
                    .candidates(vec![older(inb1())]),
                "done Rejected +Rejected; settle",
            ),
            (
                "mark refused, the view was stale: decide again on fresh data soon",
                obs().key().marked(Marked::Stale),
                "done; requeue 500ms; count failure",
            ),
            (
                "marked: read the Secret first (cache, or GET), so the bind can write it at once",
                obs().key().pending().marked(Marked::Yes),
                "read secret mail",
            ),
            (
                "marked: POST the marked address (no Creating status: one status write, Ready)",
                obs()
                    .key()
                    .pending()
                    .marked(Marked::Yes)
                    .secret("mail", None),
                "create support@agentsend.io",
            ),
            (
                "no finalizer yet: the pending mark carries it (one patch for both)",
                obs().key().with(|o| o.finalizer_missing = true),
                "mark pending r4nd0mr4nd0mr4nd@agentsend.io",
            ),
            (
                "no finalizer, and the first write is not the mark: add the finalizer first",
                obs().converged(inb1()).with(|o| o.finalizer_missing = true),
                "add finalizer",
            ),
            (
                "created: record the binding, announce Created",
                obs().key().pending().created(Ok(inb1())),
                "bind inb_1 (Created)",
            ),
            (
                "created, its Secret absent: bind and create the Secret at once (one round trip)",
                obs()
                    .key()
                    .pending()
                    .secret("mail", None)
                    .created(Ok(inb1())),
                "bind inb_1 (Created) and create secret mail",
            ),
            (
                "created, a Secret of that name exists: bind only (then converge decides on it)",
                obs()
                    .key()
                    .pending()
                    .secret("mail", Some(ObjectMeta::default()))
                    .created(Ok(inb1())),
                "bind inb_1 (Created)",
            ),
            (
                "created, the Secret template does not render: bind only (then Rejected)",
                obs()
                    .key()
                    .pending()
                    .secret("mail", None)
                    .spec(|s| {
                        s.secret.get_or_insert_default().template =
                            Some([("X".into(), "{{ nope }}".into())].into());
                    })
                    .created(Ok(inb1())),
                "bind inb_1 (Created)",
            ),
            (
                "re-created after the inbox vanished: announce Recreated (Warning)",
                obs()
                    .key()
                    .pending()
                    .created(Ok(inb1()))
                    .with(|o| o.replaces = Some("inb_0".into())),
                "bind inb_1 (Recreated)",
            ),
            (
                "create refused with a 4xx: nothing was created, so the pending mark goes",
                obs().key().pending().created(Err(rejected_422())),
                "clear pending",
            ),
            (
                "then Rejected with the API's message, not retried until the spec changes",
                obs()
                    .key()
                    .created(Err(rejected_422()))
                    .with(|o| o.pending_cleared = true),
                "done Rejected +Rejected; settle; count failure",
            ),
            (
                "create outcome unknown (5xx): the mark stays, ApiUnavailable, backoff",
                obs().key().pending().created(Err(transient())),
                "done ApiUnavailable; requeue 500ms; count failure; hold 500ms",
            ),
            (
                "409 to our create is a lookup: the address may be ours from an earlier attempt",
                obs().key().pending().created(Err(rejected_409())),
                "list candidates",
            ),
            (
                "409, and the account holds the address created after the mark: ours, bind it",
                obs()
                    .key()
                    .pending()
                    .created(Err(rejected_409()))
                    .candidates(vec![inb1()])
                    .elsewhere(&[]),
                "bind inb_1 (Created)",
            ),
            (
                "409 to the first attempt (this pass wrote the mark): someone else's, however new",
                obs()
                    .key()
                    .pending()
                    .marked(Marked::Yes)
                    .created(Err(rejected_409()))
                    .candidates(vec![inb1()]),
                "clear pending",
            ),
            (
                "409, and the address is older than the mark: never bound, the mark goes",
                obs()
                    .key()
                    .pending_chosen()
                    .created(Err(rejected_409()))
                    .candidates(vec![older(inb1())]),
                "clear pending",
            ),
            (
                "409, and the address is not in this account: another account holds it",
                obs()
                    .key()
                    .pending()
                    .created(Err(rejected_409()))
                    .candidates(vec![]),
                "clear pending",
            ),
            (
                "then Rejected (address taken), not retried until the spec changes",
                obs()
                    .key()
                    .created(Err(rejected_409()))
                    .candidates(vec![])
                    .with(|o| o.pending_cleared = true),
                "done Rejected +Rejected; settle",
            ),
            (
                "rejected at this generation: no second create",
                obs().key().status(rejected_status(2)),
                "done; settle",
            ),
            (
                "rejected at an older generation: the spec changed, try again",
                obs().key().status(rejected_status(1)),
                "mark pending r4nd0mr4nd0mr4nd@agentsend.io",
            ),
            // ---- recover: an exact lookup of the marked address
            (
                "pending mark without an ID: say Creating (the create was interrupted)",
                obs().key().pending(),
                "progress Creating",
            ),
            (
                "then look the address up before creating",
                obs().key().pending().progress(Reason::Creating),
                "list candidates",
            ),
            (
                "the listing fails: ApiUnavailable, backoff",
                obs()
                    .key()
                    .pending()
                    .progress(Reason::Creating)
                    .with(|o| o.candidates = Some(Err(transient()))),
                "done ApiUnavailable; requeue 500ms; count failure; hold 500ms",
            ),
            (
                "found, created after the mark: collect the IDs other Inboxes hold (one owner)",
                obs()
                    .key()
                    .pending()
                    .progress(Reason::Creating)
                    .candidates(vec![inb1()]),
                "find bindings",
            ),
            (
                "found, created after the mark, nobody else holds it: bind it (Created)",
                obs()
                    .key()
                    .pending()
                    .progress(Reason::Creating)
                    .candidates(vec![remote("x", "other@agentsend.io"), inb1()])
                    .elsewhere(&[]),
                "bind inb_1 (Created)",
            ),
            (
                "found, but another Inbox holds it (a copied mark): Rejected, naming the owner",
                obs()
                    .key()
                    .pending()
                    .progress(Reason::Creating)
                    .candidates(vec![inb1()])
                    .elsewhere(&["inb_1"]),
                "done Rejected +Rejected; requeue 300s; wait for the owner of inb_1",
            ),
            (
                "found, but it existed before the listing behind the mark: never bound, the mark goes",
                obs()
                    .key()
                    .pending_chosen()
                    .progress(Reason::Creating)
                    .candidates(vec![older(inb1())]),
                "clear pending",
            ),
            (
                "not found: the create never happened, POST again with the same address",
                obs()
                    .key()
                    .pending()
                    .progress(Reason::Creating)
                    .secret("mail", None)
                    .candidates(vec![]),
                "create support@agentsend.io",
            ),
            (
                "a legacy mark (an earlier version's create), nothing matches: create with an address",
                obs()
                    .key()
                    .legacy_pending()
                    .candidates(vec![])
                    .elsewhere(&[]),
                "mark pending r4nd0mr4nd0mr4nd@agentsend.io",
            ),
            (
                "a legacy mark with a match: CreationUncertain, never bound on a guess",
                obs()
                    .key()
                    .legacy_pending()
                    .spec(|s| s.address = Some("support@agentsend.io".into()))
                    .candidates(vec![inb1()])
                    .elsewhere(&[]),
                "done CreationUncertain +CreationUncertain; settle",
            ),
            // ---- bound
            (
                "bound: observe through the account's scan cache",
                obs().key().bound("inb_1"),
                "observe inb_1",
            ),
            (
                "spec.inboxId moved away from the bound inbox: ImmutableFieldChanged",
                obs().key().bound("inb_1").adopting("inb_2"),
                "done ImmutableFieldChanged; settle",
            ),
            (
                "address differs from the recorded one: ImmutableFieldChanged, no call",
                obs()
                    .key()
                    .bound("inb_1")
                    .status(ready_status(&inb1()))
                    .spec(|s| s.address = Some("sales".into())),
                "done ImmutableFieldChanged; settle",
            ),
            (
                "created inbox: a display name on one side only is a change",
                obs().key().bound("inb_1").found(RemoteInbox {
                    display_name: Some("X".into()),
                    ..inb1()
                }),
                "done ImmutableFieldChanged; settle",
            ),
            (
                "adopted inbox: only the fields set in the spec must match",
                obs()
                    .key()
                    .bound("inb_1")
                    .adopting("inb_1")
                    .found(RemoteInbox {
                        display_name: Some("X".into()),
                        ..inb1()
                    }),
                "register inb_1",
            ),
            (
                "observing fails: ApiUnavailable, backoff",
                obs().key().bound("inb_1").lookup_failed(transient()),
                "done ApiUnavailable; requeue 500ms; count failure",
            ),
            (
                "the key is refused: CredentialsInvalid, retried slowly",
                obs()
                    .key()
                    .bound("inb_1")
                    .lookup_failed(ApiError::Unauthorized {
                        status: 401,
                        message: "no".into(),
                    }),
                "done CredentialsInvalid +CredentialsInvalid; requeue 300s; count failure",
            ),
            (
                "rate limited: Retry-After is honoured",
                obs()
                    .key()
                    .bound("inb_1")
                    .lookup_failed(ApiError::RateLimited {
                        retry_after: Some(Duration::from_secs(30)),
                        message: String::new(),
                    }),
                "done ApiUnavailable; requeue 30s; count failure",
            ),
            (
                "misconfigured client: stalled until the flags change",
                obs().key().bound("inb_1").lookup_failed(ApiError::Config {
                    message: "bad url".into(),
                }),
                "done ApiUnavailable; requeue 300s; count failure",
            ),
            (
                "vanished: drop the cached observation first",
                obs().key().bound("inb_1").gone(),
                "forget inb_1",
            ),
            (
                "state deleted counts as vanished",
                obs()
                    .key()
                    .bound("inb_1")
                    .found(with_status(inb1(), InboxState::Deleted)),
                "forget inb_1",
            ),
            (
                "vanished, created by us: unbind and mark pending in one write",
                obs()
                    .key()
                    .bound("inb_1")
                    .gone()
                    .with(|o| o.forgotten = true),
                "unbind inb_1 and mark pending r4nd0mr4nd0mr4nd@agentsend.io",
            ),
            (
                "vanished: the new inbox gets the address the app already uses, once the account shows it free",
                obs()
                    .key()
                    .bound("inb_1")
                    .status(ready_status(&inb1()))
                    .gone()
                    .with(|o| o.forgotten = true),
                "list candidates",
            ),
            (
                "vanished, its address free: unbind and mark pending (seen absent) in one write",
                obs()
                    .key()
                    .bound("inb_1")
                    .status(ready_status(&inb1()))
                    .gone()
                    .with(|o| o.forgotten = true)
                    .candidates(vec![])
                    .with(|o| o.listed_at = Some(listed_at())),
                "unbind inb_1 and mark pending support@agentsend.io (seen absent at Some(1795859940))",
            ),
            (
                "vanished, adopted: InboxNotFound, never re-created",
                obs()
                    .key()
                    .bound("inb_1")
                    .adopting("inb_1")
                    .gone()
                    .with(|o| o.forgotten = true),
                "done InboxNotFound; requeue 300s",
            ),
            (
                "bound through status only (a GitOps replace, a binding of a version without proofs) and found with this key: write the binding and its proof, no AgentSend write",
                obs()
                    .key()
                    .status(ready_status(&inb1()))
                    .elsewhere(&[])
                    .found(inb1()),
                "record binding inb_1",
            ),
            // ---- one owner on every path
            (
                "bound: the binding index is read before any AgentSend call",
                obs().key().bound("inb_1").index_unread(),
                "find bindings",
            ),
            (
                "bound by annotation to an inbox another Inbox holds: Rejected naming it, no Secret, looked at again when it goes",
                obs().key().bound("inb_1").elsewhere(&["inb_1"]),
                "done Rejected +Rejected; requeue 300s; wait for the owner of inb_1",
            ),
            (
                "bound through status only to an inbox another Inbox holds: Rejected too",
                obs()
                    .key()
                    .status(ready_status(&inb1()))
                    .elsewhere(&["inb_1"]),
                "done Rejected +Rejected; requeue 300s; wait for the owner of inb_1",
            ),
            (
                "a newer copy names the same inbox: the original keeps it",
                obs().key().bound("inb_1").with(|o| {
                    o.bound_elsewhere =
                        Some(HashMap::from([("inb_1".to_string(), owner_claim(false))]));
                }),
                "observe inb_1",
            ),
            (
                "deleting a bound Inbox: ownership is checked before any DELETE",
                obs().deleting().bound("inb_1").key().index_unread(),
                "find bindings",
            ),
            (
                "a second claimant's deletion never calls AgentSend: it only releases itself",
                obs().deleting().bound("inb_1").key().elsewhere(&["inb_1"]),
                "read secret mail",
            ),
            (
                "an empty inbox-id annotation means explicitly unbound",
                obs().key().bound("").status(ready_status(&inb1())),
                "mark pending r4nd0mr4nd0mr4nd@agentsend.io",
            ),
            // ---- refresh on demand (agentsend.io/refresh)
            (
                "a new refresh value: queue a refresh (folded into one account scan), not awaited",
                obs().converged(inb1()).ann(inbox::ANNOTATION_REFRESH, "1"),
                "request refresh \"1\"",
            ),
            (
                "refresh queued: converge on what is known; the refresh scan wakes the Inbox",
                obs()
                    .converged(inb1())
                    .ann(inbox::ANNOTATION_REFRESH, "1")
                    .refreshed(Refresh::Pending),
                "done Ready; settle; reset failures",
            ),
            (
                "the value was served already (status.observedRefresh): no request",
                obs()
                    .converged(inb1())
                    .ann(inbox::ANNOTATION_REFRESH, "1")
                    .status(InboxStatus {
                        observed_refresh: Some("1".into()),
                        ..ready_status(&inb1())
                    }),
                "done Ready; settle; reset failures",
            ),
            (
                "bound in this pass: the create's answer is fresh, no request",
                obs()
                    .converged(inb1())
                    .ann(inbox::ANNOTATION_REFRESH, "1")
                    .with(|o| o.bound_now = true),
                "done Ready; settle; reset failures",
            ),
            // ---- converge
            (
                "bound and observed: register with the counter sync",
                obs().key().bound("inb_1").found(inb1()),
                "register inb_1",
            ),
            (
                "registered: read the Secret",
                obs().key().bound("inb_1").found(inb1()).registered(),
                "read secret mail",
            ),
            (
                "Secret absent: create it (SecretWritten)",
                obs()
                    .key()
                    .bound("inb_1")
                    .found(inb1())
                    .registered()
                    .secret("mail", None),
                "create secret mail",
            ),
            (
                "in the pass that created the inbox, its first Secret adds no event (one event: Created)",
                obs()
                    .key()
                    .bound("inb_1")
                    .found(inb1())
                    .registered()
                    .secret("mail", None)
                    .with(|o| o.bound_now = true),
                "create secret mail quietly",
            ),
            (
                "owned Secret edited: restore it",
                obs()
                    .key()
                    .bound("inb_1")
                    .found(inb1())
                    .registered()
                    .secret(
                        "mail",
                        Some({
                            // Someone else's edit of `address` moved the field to them.
                            let mut s = owned_secret("mail");
                            for e in s.managed_fields.iter_mut().flatten() {
                                e.manager = Some("kubectl-edit".into());
                            }
                            s
                        }),
                    ),
                "update secret mail",
            ),
            (
                "a Secret of that name this Inbox does not own: SecretConflict, never touched",
                obs()
                    .key()
                    .bound("inb_1")
                    .found(inb1())
                    .registered()
                    .secret("mail", Some(foreign_secret("mail"))),
                "done SecretConflict +SecretConflict; requeue 30s; reset failures",
            ),
            (
                "spec.secret.labels Kubernetes would refuse: Rejected, the Secret is not written",
                obs()
                    .key()
                    .bound("inb_1")
                    .found(inb1())
                    .registered()
                    .spec(|s| {
                        s.secret.get_or_insert_default().labels =
                            Some([(format!("{}/x", "p".repeat(254)), "v".into())].into());
                    }),
                "done Rejected +Rejected; settle",
            ),
            (
                "spec.secret.template that does not render: Rejected naming the key, nothing written",
                obs().converged(inb1()).spec(|s| {
                    s.secret.get_or_insert_default().template =
                        Some([("FROM".into(), "{{ nope }}".into())].into());
                }),
                "done Rejected +Rejected; settle",
            ),
            (
                "active, Secret in place: Ready",
                obs().converged(inb1()),
                "done Ready; settle; reset failures",
            ),
            (
                "suspended: InboxSuspended and a Suspended warning",
                obs().converged(with_status(inb1(), InboxState::Suspended)),
                "done InboxSuspended +Suspended; settle; reset failures",
            ),
            (
                "an unknown state: not ready, and not read as suspended",
                obs().converged(with_status(inb1(), InboxState::Unknown("paused".into()))),
                "done ApiUnavailable; settle; reset failures",
            ),
            (
                "no sends left: SendLimitReached warning on the transition",
                obs().converged(at_limit.clone()),
                "done Ready +SendLimitReached; settle; reset failures",
            ),
            (
                "still no sends left: unchanged status, no write, no second warning",
                obs()
                    .converged(at_limit.clone())
                    .status(ready_status(&at_limit)),
                "done Ready; settle; reset failures",
            ),
            (
                "Secret renamed: look at the previous one",
                obs().converged(inb1()).status(InboxStatus {
                    secret_name: Some("old".into()),
                    ..ready_status(&inb1())
                }),
                "read secret old",
            ),
            (
                "the previous Secret is owned: delete it",
                obs()
                    .converged(inb1())
                    .status(InboxStatus {
                        secret_name: Some("old".into()),
                        ..ready_status(&inb1())
                    })
                    .secret("old", Some(owned_secret("old"))),
                "delete secret old",
            ),
            (
                "the previous Secret is someone else's: leave it",
                obs()
                    .converged(inb1())
                    .status(InboxStatus {
                        secret_name: Some("old".into()),
                        ..ready_status(&inb1())
                    })
                    .secret("old", Some(foreign_secret("old"))),
                "done Ready; settle; reset failures",
            ),
            (
                "spec.secret.name: the Secret of that name is the one written",
                obs()
                    .key()
                    .bound("inb_1")
                    .found(inb1())
                    .registered()
                    .spec(|s| {
                        s.secret = Some(Box::new(SecretSpec {
                            name: Some("addr".into()),
                            ..Default::default()
                        }))
                    }),
                "read secret addr",
            ),
            // ---- adopt
            (
                "spec.inboxId: fetch that inbox",
                obs().key().adopting("inb_9"),
                "fetch inb_9",
            ),
            (
                "adopting an inbox that does not exist: InboxNotFound, nothing created",
                obs().key().adopting("inb_9").gone(),
                "done InboxNotFound; requeue 300s",
            ),
            (
                "adopting fails on the API: ApiUnavailable",
                obs().key().adopting("inb_9").lookup_failed(transient()),
                "done ApiUnavailable; requeue 500ms; count failure; hold 500ms",
            ),
            (
                "adopting with a different address in the spec: Rejected",
                obs()
                    .key()
                    .adopting("inb_9")
                    .spec(|s| s.address = Some("sales".into()))
                    .found(remote("inb_9", "support@agentsend.io")),
                "done Rejected +Rejected; settle",
            ),
            (
                "adopting: check that no other Inbox holds it",
                obs()
                    .key()
                    .adopting("inb_9")
                    .found(remote("inb_9", "x@agentsend.io")),
                "find bindings",
            ),
            (
                "adopting an inbox bound to another Inbox: Rejected (one owner)",
                obs()
                    .key()
                    .adopting("inb_9")
                    .found(remote("inb_9", "x@agentsend.io"))
                    .elsewhere(&["inb_9"]),
                "done Rejected +Rejected; requeue 300s; wait for the owner of inb_9",
            ),
            (
                "adopting: bind and announce Adopted",
                obs()
                    .key()
                    .adopting("inb_9")
                    .found(remote("inb_9", "x@agentsend.io"))
                    .elsewhere(&["inb_1"]),
                "bind inb_9 (Adopted)",
            ),
            (
                "bound in this pass: converge without checking again",
                obs()
                    .key()
                    .adopting("inb_9")
                    .bound("inb_9")
                    .found(remote("inb_9", "x@agentsend.io"))
                    .with(|o| o.bound_now = true),
                "register inb_9",
            ),
            // ---- backing off from a failed attempt (no pass is started by its own writes)
            (
                "a 401 on create: CredentialsInvalid, the slow credentials retry, and passes over the same key hold back as long",
                obs()
                    .key()
                    .created(Err(unauthorized()))
                    .with(|o| o.pending_cleared = true),
                "done CredentialsInvalid +CredentialsInvalid; requeue 300s; count failure; hold 300s",
            ),
            (
                "a 503 on create: ApiUnavailable, the reconcile backoff, held as long",
                obs()
                    .key()
                    .pending()
                    .marked(Marked::Yes)
                    .progress(Reason::Creating)
                    .created(Err(transient())),
                "done ApiUnavailable; requeue 500ms; count failure; hold 500ms",
            ),
            (
                "woken (by its own writes) while holding back: nothing at all until the hold ends",
                obs()
                    .key()
                    .with(|o| o.hold = Some(hold(Phase::Apply, Some(2), Some(key())))),
                "done; requeue 250s",
            ),
            (
                "holding back: the key is read first (a new key is a new attempt)",
                obs().with(|o| o.hold = Some(hold(Phase::Apply, Some(2), Some(key())))),
                "read credentials",
            ),
            (
                "the key was fixed: the held attempt does not apply, work resumes at once",
                obs().key().with(|o| {
                    o.hold = Some(hold(Phase::Apply, Some(2), ApiKey::new("old")));
                }),
                "mark pending r4nd0mr4nd0mr4nd@agentsend.io",
            ),
            (
                "the spec changed: a new generation is a new attempt",
                obs()
                    .key()
                    .with(|o| o.hold = Some(hold(Phase::Apply, Some(1), Some(key())))),
                "mark pending r4nd0mr4nd0mr4nd@agentsend.io",
            ),
            (
                "a failed observation of a bound inbox holds nothing back (the counter sync wakes it)",
                obs().key().bound("inb_1").lookup_failed(transient()),
                "done ApiUnavailable; requeue 500ms; count failure",
            ),
            (
                "deleting while an apply attempt holds: deletion starts at once",
                obs()
                    .with(|o| o.phase = Phase::Cleanup)
                    .bound("inb_1")
                    .key()
                    .with(|o| o.hold = Some(hold(Phase::Apply, Some(2), Some(key())))),
                "delete inbox inb_1",
            ),
            (
                "a failed deletion holds back: the pass fails quietly (the finalizer stays), no status write",
                obs()
                    .with(|o| o.phase = Phase::Cleanup)
                    .bound("inb_1")
                    .key()
                    .with(|o| o.hold = Some(hold(Phase::Cleanup, Some(2), Some(key())))),
                "done; held 250s",
            ),
            (
                "retrying a failed deletion: its failure stays reported, no flip back to Deleting",
                obs()
                    .with(|o| {
                        o.phase = Phase::Cleanup;
                        o.failures = 2;
                    })
                    .bound("inb_1")
                    .key(),
                "delete inbox inb_1",
            ),
            // ---- delete
            (
                "deleting without spec.deletionPolicy: read the namespace default first",
                obs().deleting().with(|o| o.namespace_default = None),
                "read namespace",
            ),
            (
                "the namespace defaults to Orphan: leave the inbox, announce Orphaned",
                obs()
                    .deleting()
                    .bound("inb_1")
                    .with(|o| o.namespace_default = Some(Some("Orphan".into()))),
                "announce Orphaned",
            ),
            (
                "the Inbox's own deletionPolicy wins over the namespace default",
                obs()
                    .deleting()
                    .bound("inb_1")
                    .key()
                    .spec(|s| s.deletion_policy = Some(DeletionPolicy::Delete))
                    .with(|o| o.namespace_default = Some(Some("Orphan".into()))),
                "delete inbox inb_1",
            ),
            (
                "deleting: no Deleting status first (one round trip less): straight to the AgentSend delete",
                obs()
                    .with(|o| o.phase = Phase::Cleanup)
                    .bound("inb_1")
                    .key(),
                "delete inbox inb_1",
            ),
            (
                "deleting an unbound Inbox: straight to its Secret, no status write",
                obs().with(|o| o.phase = Phase::Cleanup),
                "read secret mail",
            ),
            (
                "Orphan: leave the inbox, announce Orphaned",
                obs().deleting().orphan().bound("inb_1"),
                "announce Orphaned",
            ),
            (
                "Orphan: then the owned Secret",
                obs()
                    .deleting()
                    .orphan()
                    .bound("inb_1")
                    .with(|o| o.announced.push(EventKind::Orphaned)),
                "read secret mail",
            ),
            (
                "Delete: resolve the key",
                obs().deleting().bound("inb_1"),
                "read credentials",
            ),
            (
                "Delete: delete the bound inbox",
                obs().deleting().bound("inb_1").key(),
                "delete inbox inb_1",
            ),
            (
                "Delete with the credentials Secret gone: the key last used still works",
                obs().deleting().bound("inb_1").no_key().remembered(),
                "delete inbox inb_1",
            ),
            (
                "Delete without any key: CredentialsMissing, the finalizer stays",
                obs().deleting().bound("inb_1").no_key(),
                "done CredentialsMissing; fail credentials; hold 8s",
            ),
            (
                "the delete call fails: the finalizer stays, retried",
                obs()
                    .deleting()
                    .bound("inb_1")
                    .key()
                    .with(|o| o.deleted = Some(Err(transient()))),
                "done ApiUnavailable; fail transient; hold 500ms",
            ),
            (
                "deleted (or already gone): drop the observation",
                obs()
                    .deleting()
                    .bound("inb_1")
                    .key()
                    .with(|o| o.deleted = Some(Ok(()))),
                "forget inb_1",
            ),
            (
                "then announce Deleted",
                obs().deleting().bound("inb_1").key().with(|o| {
                    o.deleted = Some(Ok(()));
                    o.forgotten = true;
                }),
                "announce Deleted",
            ),
            (
                "never bound, nothing pending (e.g. a Rejected second claimant): no AgentSend call",
                obs().deleting().adopting("inb_1"),
                "read secret mail",
            ),
            (
                "pending mark, no ID: find what the interrupted create made",
                obs().deleting().pending().key(),
                "list candidates",
            ),
            (
                "the listing fails: the finalizer stays",
                obs()
                    .deleting()
                    .pending()
                    .key()
                    .with(|o| o.candidates = Some(Err(transient()))),
                "done; fail transient; hold 500ms",
            ),
            (
                "the marked address, created after the mark: delete it",
                obs()
                    .deleting()
                    .pending()
                    .key()
                    .candidates(vec![inb1()])
                    .elsewhere(&[]),
                "delete inbox inb_1",
            ),
            (
                "the marked address existed before the mark: not ours, nothing deleted",
                obs()
                    .deleting()
                    .pending_chosen()
                    .key()
                    .candidates(vec![older(inb1())])
                    .elsewhere(&[]),
                "read secret mail",
            ),
            (
                "the marked address is held by another Inbox: nothing deleted",
                obs()
                    .deleting()
                    .pending()
                    .key()
                    .candidates(vec![inb1()])
                    .elsewhere(&["inb_1"]),
                "read secret mail",
            ),
            (
                "not found: nothing to delete in AgentSend",
                obs()
                    .deleting()
                    .pending()
                    .key()
                    .candidates(vec![])
                    .elsewhere(&[]),
                "read secret mail",
            ),
            (
                "a legacy mark with matches: delete none, announce CreationUncertain",
                obs()
                    .deleting()
                    .legacy_pending()
                    .key()
                    .spec(|s| s.display_name = Some("Bot".into()))
                    .candidates(vec![bot("a", "a@agentsend.io"), bot("b", "b@agentsend.io")])
                    .elsewhere(&[]),
                "announce warning CreationUncertain",
            ),
            (
                "the owned Secret goes",
                obs().deleting().secret("mail", Some(owned_secret("mail"))),
                "delete secret mail",
            ),
            (
                "a foreign Secret of that name stays",
                obs()
                    .deleting()
                    .secret("mail", Some(foreign_secret("mail"))),
                "done; settle; reset failures; release",
            ),
            (
                "the Secret of a previous name goes too",
                obs().deleting().secret("mail", None).status(InboxStatus {
                    secret_name: Some("old".into()),
                    ..Default::default()
                }),
                "read secret old",
            ),
            (
                "all done: release the registration, metrics and backoff",
                obs().deleting().secret("mail", None),
                "done; settle; reset failures; release",
            ),
        ]
    }

    /// Ownership on proof: what a tenant can write (annotations) is a claim to check, never
    /// proof; the account a binding was made in is checked before a 404 counts as "gone".
    fn ownership_rows() -> Vec<(&'static str, B, &'static str)> {
        let pk = proof_key();
        let after_listing = RemoteInbox {
            created_at: Some("2026-11-28T09:59:02.000Z".into()),
            ..inb1()
        };
        let unverified = |o: &mut Observed| o.bindings_unavailable = Some("403 forbidden".into());
        let account_changed = status::build_status(StatusInput {
            previous: Some(&ready_status(&inb1())),
            generation: Some(2),
            inbox_id: Some("inb_1".into()),
            remote: None,
            secret_name: Some("mail".into()),
            readiness: stalled(Reason::AccountChanged, "elsewhere"),
            now: NOW,
        });
        vec![
            // ---- the inbox-id annotation
            (
                "an inbox-id annotation without proof (a tenant wrote it): who owns that ID is looked up for the message",
                obs().key().claims_unproven("inb_9"),
                "find bindings",
            ),
            (
                "an inbox-id annotation without proof: not bound, nothing created (the owner, if any, named)",
                obs().key().claims_unproven("inb_9").elsewhere(&["inb_9"]),
                "done Rejected +Rejected; settle",
            ),
            (
                "a proof copied from another Inbox proves nothing here",
                obs()
                    .key()
                    .claims_unproven("inb_9")
                    .ann(
                        inbox::ANNOTATION_INBOX_ID_PROOF,
                        &pk.binding_proof("team", "other", "inb_9", &pk.fingerprint(&key())),
                    )
                    .elsewhere(&[]),
                "done Rejected +Rejected; settle",
            ),
            (
                "an unproven annotation naming the inbox spec.inboxId names: explicit adoption",
                obs().key().claims_unproven("inb_1").adopting("inb_1"),
                "fetch inb_1",
            ),
            (
                "an empty inbox-id annotation without proof does not unbind: status still binds",
                obs()
                    .key()
                    .claims_unproven("")
                    .status(ready_status(&inb1()))
                    .elsewhere(&[]),
                "fetch inb_1",
            ),
            (
                "bound by status alone (a GitOps replace dropped the annotations): the account is checked with a GET",
                obs().key().status(ready_status(&inb1())).elsewhere(&[]),
                "fetch inb_1",
            ),
            (
                "an unproven annotation beside a status binding: status wins, the annotation is rewritten",
                obs()
                    .key()
                    .claims_unproven("inb_9")
                    .status(ready_status(&inb1()))
                    .elsewhere(&[])
                    .found(inb1()),
                "record binding inb_1",
            ),
            (
                "status-bound, this key does not find it: its account is unknown, so nothing is created",
                obs()
                    .key()
                    .status(ready_status(&inb1()))
                    .elsewhere(&[])
                    .gone(),
                "done AccountChanged; requeue 60s",
            ),
            // ---- the account a binding was made in
            (
                "bound in another account than the key's: a GET, not the scan cache, says whether it reaches it",
                obs().key().bound_in("inb_1", &other_key()),
                "fetch inb_1",
            ),
            (
                "another account, not found there: AccountChanged, never created there",
                obs().key().bound_in("inb_1", &other_key()).gone(),
                "done AccountChanged; requeue 60s",
            ),
            (
                "another key of the same account finds it (rotation): re-proven for the new key, no condition",
                obs().key().bound_in("inb_1", &other_key()).found(inb1()),
                "record binding inb_1",
            ),
            // ---- the create-pending mark
            (
                "a pending mark without proof: the account is listed before anything else",
                obs().key().pending_unproven(),
                "list candidates",
            ),
            (
                "a pending mark without proof whose address the account holds: named, never bound",
                obs()
                    .key()
                    .pending_unproven()
                    .candidates(vec![inb1()])
                    .elsewhere(&[]),
                "done CreationUncertain +CreationUncertain; settle",
            ),
            (
                "a pending mark without proof whose address the account lacks: start over with a mark of its own",
                obs().key().pending_unproven().candidates(vec![]),
                "mark pending r4nd0mr4nd0mr4nd@agentsend.io",
            ),
            (
                "a chosen address found created after the listing behind the mark: this Inbox's create",
                obs()
                    .key()
                    .pending_chosen()
                    .progress(Reason::Creating)
                    .candidates(vec![after_listing.clone()])
                    .elsewhere(&[]),
                "bind inb_1 (Created)",
            ),
            (
                "a chosen address still absent at recovery: the proof of absence is renewed before the POST",
                obs()
                    .key()
                    .pending_chosen()
                    .progress(Reason::Creating)
                    .candidates(vec![])
                    .with(|o| o.listed_at = Some(listed_at() + 60)),
                "mark pending support@agentsend.io (seen absent at Some(1795860000)) again",
            ),
            (
                "409 after a renewed mark: the holder may be the earlier attempt (a late commit), bound if in its window",
                obs()
                    .key()
                    .pending_chosen()
                    .marked(Marked::Yes)
                    .with(|o| o.resumed = true)
                    .created(Err(rejected_409()))
                    .candidates(vec![after_listing])
                    .elsewhere(&[]),
                "bind inb_1 (Created)",
            ),
            // ---- deletion
            (
                "deleting, an unproven inbox-id annotation: nothing deleted in AgentSend",
                obs().deleting().key().claims_unproven("inb_9"),
                "read secret mail",
            ),
            (
                "deleting, an unproven pending mark: nothing deleted, not even looked up",
                obs().deleting().key().pending_unproven(),
                "read secret mail",
            ),
            (
                "deleting, bound in another account than the key's: a GET first",
                obs()
                    .deleting()
                    .key()
                    .bound_in("inb_1", &other_key())
                    .elsewhere(&[]),
                "fetch inb_1",
            ),
            (
                "deleting, that GET finds it: the same account, delete",
                obs()
                    .deleting()
                    .key()
                    .bound_in("inb_1", &other_key())
                    .elsewhere(&[])
                    .found(inb1()),
                "delete inbox inb_1",
            ),
            (
                "deleting, this key does not reach it: a 404 from another account is not 'gone', the finalizer stays",
                obs()
                    .deleting()
                    .key()
                    .bound_in("inb_1", &other_key())
                    .elsewhere(&[])
                    .gone(),
                "done AccountChanged; fail account changed; hold 500ms",
            ),
            (
                "Orphan after AccountChanged: released, with a Warning Orphaned naming the inbox left behind",
                obs()
                    .deleting()
                    .orphan()
                    .bound_in("inb_1", &other_key())
                    .status(account_changed),
                "announce warning Orphaned",
            ),
            // ---- fail closed
            (
                "adoption while the cluster-wide one-owner check fails: wait, nothing bound",
                obs().key().adopting("inb_1").found(inb1()).with(unverified),
                "done OwnershipUnverified; fail ownership unverified; hold 500ms",
            ),
            (
                "deletion while the check fails: no AgentSend call",
                obs().deleting().key().bound("inb_1").with(unverified),
                "done OwnershipUnverified; fail ownership unverified; hold 500ms",
            ),
        ]
    }

    #[test]
    fn lifecycle() {
        let mut wrong = Vec::new();
        let mut rows = table();
        rows.extend(output_rows());
        rows.extend(ownership_rows());
        println!("{} lifecycle rules", rows.len());
        for (rule, b, want) in rows {
            let got = plan(&b.0).to_string();
            if got != want {
                wrong.push(format!("{rule}:\n    want {want}\n    got  {got}"));
            }
        }
        assert!(
            wrong.is_empty(),
            "{} rows differ:\n{}",
            wrong.len(),
            wrong.join("\n")
        );
    }

    /// Bindings are looked up for the IDs a decision needs, and again for an ID not looked up
    /// yet in the same pass (a recovered inbox after a lookup of the vanished one): a claim
    /// is never missed because another ID was checked first.
    #[test]
    fn bindings_are_looked_up_per_id_and_again_for_a_new_one() {
        let find = |b: &B| match plan(&b.0) {
            Step::FindBindings { ids, .. } => ids,
            other => panic!("expected a lookup, got {other}"),
        };
        let fresh = obs().key().bound("inb_1").index_unread();
        assert_eq!(find(&fresh), ["inb_1"], "only the bound ID");
        let checked = |ids: &[&str], claimed: &[&str]| {
            let ids: HashSet<String> = ids.iter().map(|s| s.to_string()).collect();
            let claimed: HashMap<String, Claim> = claimed
                .iter()
                .map(|s| (s.to_string(), owner_claim(true)))
                .collect();
            move |o: &mut Observed| {
                o.bound_elsewhere = Some(claimed);
                o.bindings_checked = Some(ids);
            }
        };
        let looked_up = obs().key().bound("inb_1").with(checked(&["inb_1"], &[]));
        assert_eq!(plan(&looked_up.0).to_string(), "observe inb_1");
        let other_id = obs().key().bound("inb_2").with(checked(&["inb_1"], &[]));
        assert_eq!(
            find(&other_id),
            ["inb_2"],
            "not covered by the first lookup"
        );
        let claimed = obs()
            .key()
            .bound("inb_2")
            .with(checked(&["inb_1", "inb_2"], &["inb_2"]));
        assert!(
            plan(&claimed.0).to_string().contains("Rejected"),
            "{}",
            plan(&claimed.0)
        );
    }

    /// The Secret written with the binding is the one converging would write after it.
    #[test]
    fn the_secret_written_with_the_binding_is_the_converged_one() {
        let template = |s: &mut InboxSpec| {
            s.secret.get_or_insert_default().template =
                Some([("FROM".into(), "<{{ address }}>".into())].into());
        };
        let at_bind = obs()
            .key()
            .pending()
            .secret("mail", None)
            .spec(template)
            .created(Ok(inb1()));
        let Step::BindWithSecret { secret: early, .. } = plan(&at_bind.0) else {
            panic!("expected bind with secret, got {}", plan(&at_bind.0));
        };
        let after = obs()
            .key()
            .bound("inb_1")
            .found(inb1())
            .registered()
            .secret("mail", None)
            .spec(template);
        let Step::WriteSecret { secret: late, .. } = plan(&after.0) else {
            panic!("expected a Secret write, got {}", plan(&after.0));
        };
        assert_eq!(early, late);
    }

    #[test]
    fn a_rendered_template_joins_the_secrets_default_keys() {
        let b = obs()
            .key()
            .bound("inb_1")
            .found(inb1())
            .registered()
            .secret("mail", None)
            .spec(|s| {
                s.secret.get_or_insert_default().template =
                    Some([("FROM".into(), "<{{ address }}>".into())].into());
            });
        let Step::WriteSecret { secret, create, .. } = plan(&b.0) else {
            panic!("expected a Secret write, got {}", plan(&b.0));
        };
        assert!(create);
        let digest = secret.metadata.annotations.clone().unwrap_or_default()
            [inbox::ANNOTATION_DATA_DIGEST]
            .clone();
        let data = secret.data.unwrap_or_default();
        assert_eq!(
            digest,
            decide::data_digest(&data),
            "the digest covers the template keys"
        );
        let keys: Vec<&str> = data.keys().map(String::as_str).collect();
        assert_eq!(keys, ["FROM", "address", "inboxId"]);
        assert_eq!(data["FROM"].0, format!("<{}>", inb1().address).into_bytes());
    }

    #[test]
    fn every_not_ready_reason_and_warning_is_a_row() {
        let expected: Vec<&str> = table()
            .into_iter()
            .chain(ownership_rows())
            .map(|(_, _, want)| want)
            .collect();
        let all = expected.join("\n");
        for r in Reason::ALL {
            if matches!(r, Reason::UpToDate | Reason::SendsAvailable) {
                continue; // reasons of True/False companion conditions, not of a Ready outcome
            }
            assert!(all.contains(r.as_str()), "no row ends in {r}");
        }
        for k in [
            EventKind::Created,
            EventKind::Adopted,
            EventKind::Deleted,
            EventKind::Orphaned,
            EventKind::LeftBehind,
            EventKind::Recreated,
            EventKind::SecretConflict,
            EventKind::Rejected,
            EventKind::CredentialsInvalid,
            EventKind::CreationUncertain,
            EventKind::Suspended,
            EventKind::SendLimitReached,
        ] {
            assert!(all.contains(k.reason()), "no row publishes {}", k.reason());
        }
    }

    #[test]
    fn status_shows_which_deletion_policy_applies() {
        use DeletionPolicySource::{Default, Namespace, Spec};
        let shown = |b: B| match plan(&b.0) {
            Step::Done(Done {
                report: Some(r), ..
            }) => (r.status.deletion_policy, r.status.deletion_policy_source),
            other => panic!("{other}"),
        };
        let ns_orphan = |o: &mut Observed| o.namespace_default = Some(Some("Orphan".into()));
        let cases = [
            (obs().converged(inb1()), DeletionPolicy::Delete, Default),
            (
                obs().converged(inb1()).with(ns_orphan),
                DeletionPolicy::Orphan,
                Namespace,
            ),
            (
                obs()
                    .converged(inb1())
                    .with(ns_orphan)
                    .spec(|s| s.deletion_policy = Some(DeletionPolicy::Delete)),
                DeletionPolicy::Delete,
                Spec,
            ),
        ];
        for (b, policy, source) in cases {
            assert_eq!(shown(b), (Some(policy), Some(source)));
        }
    }

    #[test]
    fn a_served_refresh_is_recorded_in_status_once() {
        let refreshing = || obs().converged(inb1()).ann(inbox::ANNOTATION_REFRESH, "7");
        let observed = |b: B| match plan(&b.0) {
            Step::Done(Done {
                report: Some(r), ..
            }) => r.status.observed_refresh,
            other => panic!("{other}"),
        };
        assert_eq!(
            observed(refreshing().refreshed(Refresh::Served)).as_deref(),
            Some("7")
        );
        assert_eq!(observed(refreshing().refreshed(Refresh::Pending)), None);
        let mut i = refreshing().0.inbox;
        assert_eq!(i.refresh_wanted(), Some("7"));
        i.status = Some(InboxStatus {
            observed_refresh: Some("7".into()),
            ..Default::default()
        });
        assert_eq!(i.refresh_wanted(), None, "served");
        i.annotations_mut()
            .insert(inbox::ANNOTATION_REFRESH.into(), String::new());
        assert_eq!(i.refresh_wanted(), None, "empty asks for nothing");
    }

    #[test]
    fn deletion_waits_for_foreign_finalizers_only_while_ours_is_there() {
        let deleted = |finalizers: &[&str]| {
            let mut i = obs().finalizers(finalizers).0.inbox;
            i.metadata.deletion_timestamp = Some(
                k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()),
            );
            i
        };
        let cases: [(&[&str], Option<Phase>, &[&str]); 4] = [
            (&[inbox::FINALIZER], None, &[]),
            (
                &["example.com/archive", inbox::FINALIZER, "b/c"],
                Some(Phase::Held),
                &["example.com/archive", "b/c"],
            ),
            // Ours already gone: nothing of ours to hold.
            (&["example.com/archive"], None, &[]),
            (&[], None, &[]),
        ];
        for (finalizers, phase, foreign) in cases {
            let i = deleted(finalizers);
            assert_eq!(Phase::before_finalizer(&i), phase, "{finalizers:?}");
            assert_eq!(foreign_finalizers(&i), foreign, "{finalizers:?}");
        }
        let mut alive = deleted(&[inbox::FINALIZER, "example.com/archive"]);
        alive.metadata.deletion_timestamp = None;
        assert_eq!(Phase::before_finalizer(&alive), None, "not deleting");
        let r = held_deletion(&deleted(&[inbox::FINALIZER, "example.com/archive"]));
        assert!(
            r.message().contains("example.com/archive"),
            "{}",
            r.message()
        );
    }

    #[test]
    fn paused_deletion_bypasses_the_finalizer_helper() {
        let mut i = obs().paused().0.inbox;
        assert_eq!(Phase::before_finalizer(&i), None);
        i.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            jiff::Timestamp::now(),
        ));
        assert_eq!(Phase::before_finalizer(&i), Some(Phase::Held));
    }

    #[test]
    fn api_errors_map_to_conditions() {
        let cases = [
            (
                ApiError::Unauthorized {
                    status: 403,
                    message: "m".into(),
                },
                Reason::CredentialsInvalid,
                true,
                true,
            ),
            (rejected_409(), Reason::Rejected, true, true),
            (
                ApiError::NotFound {
                    message: "m".into(),
                },
                Reason::ApiUnavailable,
                false,
                true,
            ),
            (
                ApiError::RateLimited {
                    retry_after: None,
                    message: "m".into(),
                },
                Reason::ApiUnavailable,
                false,
                true,
            ),
            (transient(), Reason::ApiUnavailable, false, false),
            (
                ApiError::InvalidResponse {
                    message: "m".into(),
                },
                Reason::ApiUnavailable,
                false,
                false,
            ),
            (
                ApiError::Config {
                    message: "m".into(),
                },
                Reason::ApiUnavailable,
                true,
                true,
            ),
        ];
        for (e, reason, stalls, nothing_created) in cases {
            let r = readiness_for_error(&e);
            assert_eq!(r.reason(), reason, "{e:?}");
            assert_eq!(matches!(r, Readiness::Stalled { .. }), stalls, "{e:?}");
            assert_eq!(proves_not_created(&e), nothing_created, "{e:?}");
        }
        assert!(
            readiness_for_error(&rejected_409())
                .message()
                .contains("address taken")
        );
    }

    #[test]
    fn retry_rules() {
        assert_eq!(retry_delay(&rejected_409(), 0, 0.5, MAX), None);
        let limited = ApiError::RateLimited {
            retry_after: Some(Duration::from_secs(30)),
            message: String::new(),
        };
        for j in [0.0, 0.5, 0.99] {
            let d = retry_delay(&limited, 0, j, MAX).unwrap();
            assert!(
                d >= Duration::from_secs(30) && d <= Duration::from_secs(37),
                "{d:?}"
            );
        }
        let unauthorized = ApiError::Unauthorized {
            status: 401,
            message: String::new(),
        };
        assert!(retry_delay(&unauthorized, 0, 0.0, MAX).unwrap() >= Duration::from_secs(300));
        let d0 = retry_delay(&transient(), 0, 0.0, MAX).unwrap();
        let d3 = retry_delay(&transient(), 3, 0.0, MAX).unwrap();
        assert!(d3 > d0);
        assert!(retry_delay(&transient(), 30, 1.0, MAX).unwrap() <= Duration::from_secs(300));
        // --max-retry-delay caps the backoff, never the API's own Retry-After.
        let one = Duration::from_secs(1);
        assert!(retry_delay(&transient(), 30, 0.99, one).unwrap() <= one);
        assert!(retry_delay(&limited, 0, 0.0, one).unwrap() >= Duration::from_secs(30));
    }

    #[test]
    fn absurd_retry_after_is_bounded() {
        let limited = ApiError::RateLimited {
            retry_after: Some(Duration::MAX),
            message: String::new(),
        };
        for j in [0.0, 0.99, f64::NAN, f64::INFINITY, -1.0] {
            let d = retry_delay(&limited, u32::MAX, j, MAX).unwrap();
            assert!(d <= MAX_RETRY_AFTER.mul_f64(1.2), "{d:?}");
        }
    }

    #[test]
    fn failed_passes_are_retried_by_cause() {
        let missing = Error::CredentialsMissing("x".into());
        assert!(error_retry(&missing, 0, 0.0, MAX) >= Duration::from_secs(8));
        let rejected = Error::Api(rejected_409());
        assert_eq!(
            error_retry(&rejected, 0, 0.0, MAX),
            Duration::from_secs(300)
        );
        let internal = Error::Internal("x".into());
        assert_eq!(
            error_retry(&internal, 0, 0.0, MAX),
            Duration::from_millis(500)
        );
    }

    #[test]
    fn warnings_fire_on_transitions_only() {
        let before = rejected_status(2);
        let r = stalled(Reason::Rejected, "again");
        assert!(transition_events(Some(&before), &before, &r).is_empty());
        let kinds: Vec<_> = transition_events(None, &before, &r)
            .into_iter()
            .map(|e| e.kind)
            .collect();
        assert_eq!(kinds, [EventKind::Rejected]);
        let creating = Readiness::progressing(Reason::Creating, "m");
        assert!(transition_events(None, &before, &creating).is_empty());
    }
}
