//! The lifecycle table (every phase, one rule per row), the test that runs it with the
//! other tables, and the phase rules of a deletion held by a pause or other finalizers.

use std::collections::HashMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::agentsend::{ApiError, ApiKey, InboxState, RemoteInbox};
use crate::api::inbox::{self, DeletionPolicy, InboxStatus, Reason, SecretSpec};
use crate::controller::accounts::credentials::Credentials;
use crate::controller::inbox::events::EventKind;
use crate::controller::inbox::plan::observed::{Marked, Phase, foreign_finalizers};
use crate::controller::inbox::plan::pass::{held_deletion, plan};
use crate::controller::remote::refresh::Refresh;

use super::outputs::output_rows;
use super::ownership::ownership_rows;
use super::{
    B, foreign_secret, hold, inb1, key, listed_at, obs, older, owned_secret, owner_claim,
    ready_status, rejected_409, rejected_422, rejected_status, remote, transient, unauthorized,
    with_status,
};

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
fn deletion_waits_for_foreign_finalizers_only_while_ours_is_there() {
    let deleted = |finalizers: &[&str]| {
        let mut i = obs().finalizers(finalizers).0.inbox;
        i.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            jiff::Timestamp::now(),
        ));
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
