//! What a pass does next: a [`Step`] (a read, a write, an AgentSend call), or [`Done`] with
//! the [`Report`] to write first and how the pass ends ([`Then`]); and whether a step
//! [`writes`] anything.

use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};

use crate::agentsend::{ApiError, ApiKey, CreateInbox, RemoteInbox};
use crate::api::inbox::InboxStatus;
use crate::controller::accounts::credentials::InUse;
use crate::controller::error::{Error, Stop};
use crate::controller::inbox::events::InboxEvent;
use crate::controller::inbox::outputs::config_map;
use crate::controller::inbox::status::Readiness;
use crate::controller::ownership::proof::Origin;

use super::observed::Hold;

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

impl From<Failure> for Stop {
    fn from(f: Failure) -> Stop {
        Stop::Failed(match f {
            Failure::Api(e) => Error::Api(e),
            Failure::CredentialsMissing(m) => Error::CredentialsMissing(m),
            Failure::InvalidObject => Error::MissingObjectKey,
            Failure::Held(d) => return Stop::Held(d),
            Failure::AccountChanged(m) => Error::AccountChanged(m),
            Failure::OwnershipUnverified(m) => Error::OwnershipUnverified(m),
        })
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
