//! What a pass knows: the [`Observed`] inputs the executor fills in as steps run (`None`: not
//! looked at yet), the [`Phase`] it runs in, what lookups and writes found ([`Lookup`],
//! [`Marked`], [`Claim`]), and the [`Hold`] of a failed attempt it may be backing off from.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::backoff;
use super::observed;
use crate::agentsend::{ApiError, ApiKey, InboxState, RemoteInbox};
use crate::api::inbox::{self, DeletionPolicy, DeletionPolicySource, Inbox, InboxStatus, Reason};
use crate::controller::accounts::credentials::{Credentials, InUse};
use crate::controller::inbox::events::EventKind;
use crate::controller::ownership::proof::{Binding, Pending, ProofKey};
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
pub(super) fn foreign_finalizers(inbox: &Inbox) -> Vec<&str> {
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
    pub(super) fn of(o: &Observed, delay: Duration) -> Hold {
        Hold {
            phase: o.phase,
            generation: o.inbox.metadata.generation,
            key: attempt_key(o),
            remaining: delay,
        }
    }

    /// Whether the pass `o` would repeat the held attempt (credentials already read).
    pub(super) fn matches(&self, o: &Observed) -> bool {
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
    /// Their data is never read: see [`secret::plan_secret`].
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
            max_retry_delay: backoff::MAX_RETRY_DELAY,
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
    pub(super) fn deletion_policy(&self) -> Option<(DeletionPolicy, DeletionPolicySource)> {
        let ns = self.namespace_default.as_ref().map(Option::as_deref);
        observed::deletion_policy(self.inbox.spec.deletion_policy, ns)
    }

    pub(super) fn adopted(&self) -> bool {
        self.inbox.spec.inbox_id.is_some()
    }

    /// The inbox this Inbox is bound to, on proof ([`ProofKey::binding`]).
    pub fn binding(&self) -> Option<Binding> {
        self.proof.binding(&self.inbox)
    }

    /// The create-pending mark, and whether it is proven ([`ProofKey::pending`]).
    pub(super) fn pending(&self) -> Option<Pending<'_>> {
        self.proof.pending(&self.inbox)
    }

    /// The fingerprint of `key`'s account binding.
    pub(super) fn account_of(&self, key: &ApiKey) -> String {
        self.proof.fingerprint(key)
    }

    /// `managementPolicy: Observe`: never create, re-create or delete.
    pub(super) fn observing(&self) -> bool {
        self.inbox.is_observe_only()
    }

    pub(super) fn announced(&self, kind: EventKind) -> bool {
        self.announced.contains(&kind)
    }
}

/// The identity recorded in status for `id`, if status describes it.
pub(super) fn recorded_identity(inbox: &Inbox, id: &str) -> Option<RemoteInbox> {
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

/// The deletion policy that applies, and where it comes from: the spec's own field wins;
/// else the namespace's `agentsend.io/default-deletion-policy` annotation (`namespace`:
/// `None` while not read, `Some(None)` when absent); else `Delete`. An annotation that is
/// neither `Delete` nor `Orphan` counts as `Orphan`: a typo never destroys mail.
pub fn deletion_policy(
    spec: Option<DeletionPolicy>,
    namespace: Option<Option<&str>>,
) -> Option<(DeletionPolicy, DeletionPolicySource)> {
    if let Some(p) = spec {
        return Some((p, DeletionPolicySource::Spec));
    }
    Some(match namespace? {
        None => (DeletionPolicy::Delete, DeletionPolicySource::Default),
        Some(v) => (
            DeletionPolicy::parse(v).unwrap_or(DeletionPolicy::Orphan),
            DeletionPolicySource::Namespace,
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_wins_then_the_namespace_then_delete() {
        use DeletionPolicy::{Delete, Orphan};
        use DeletionPolicySource::{Default, Namespace, Spec};
        let cases = [
            (Some(Delete), Some(Some("Orphan")), Some((Delete, Spec))),
            (Some(Orphan), None, Some((Orphan, Spec))),
            (None, None, None),
            (None, Some(None), Some((Delete, Default))),
            (None, Some(Some("Orphan")), Some((Orphan, Namespace))),
            (None, Some(Some(" delete ")), Some((Delete, Namespace))),
            (None, Some(Some("keep")), Some((Orphan, Namespace))),
            (None, Some(Some("")), Some((Orphan, Namespace))),
        ];
        for (spec, ns, want) in cases {
            assert_eq!(deletion_policy(spec, ns), want, "{spec:?} {ns:?}");
        }
    }
}
