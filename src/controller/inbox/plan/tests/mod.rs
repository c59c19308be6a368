//! The lifecycle as a table: each row is one rule — what the pass has observed so far,
//! and the one thing the planner does next.
//!
//! This file holds what the rows are built from: the builder `B` of an [`Observed`] (`obs()`
//! and its methods), keys, inboxes, errors, Secrets and statuses. The rows and the other
//! tests: `lifecycle` (the main table, the phases), `outputs` (the ConfigMap and the Secret),
//! `ownership` (claims and proof), `rules` (errors, retries, status).

mod lifecycle;
mod outputs;
mod ownership;
mod rules;

use std::collections::HashMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;

use crate::agentsend::{ApiError, ApiKey, InboxState, RemoteInbox};
use crate::api::inbox::{self, DeletionPolicy, Inbox, InboxSpec, InboxStatus, Reason};
use crate::controller::accounts::credentials::{Credentials, InUse};
use crate::controller::inbox::outputs::config_map;
use crate::controller::inbox::outputs::secret::{self, testing::as_written};
use crate::controller::inbox::plan::backoff::MAX_RETRY_DELAY;
use crate::controller::inbox::plan::observed::{Claim, Hold, Lookup, Marked, Observed, Phase};
use crate::controller::inbox::plan::outcome::stalled;
use crate::controller::inbox::status::{self, Readiness, StatusInput};
use crate::controller::ownership::proof::{Origin, ProofKey};
use crate::controller::remote::refresh::Refresh;

/// The default cap of the failure backoff.
const MAX: Duration = MAX_RETRY_DELAY;

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
        let s = secret::desired_secret(&self.0.inbox, r).map(|s| as_written(&s));
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
    let mut s = as_written(&secret::desired_secret(&obs().0.inbox, &inb1()).unwrap());
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
        managed_fields: Some(vec![
            crate::controller::inbox::outputs::secret::testing::owning(inbox::FIELD_MANAGER, &keys),
        ]),
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
