//! The contract's names, from the code that uses them: `docs/reference/conditions.md` (the
//! condition types and every [`Reason`] of [`Reason::ALL`]), `docs/reference/events.md` (every
//! [`EventKind`], with its type) and `docs/reference/annotations.md` (the annotations, labels
//! and finalizers of `src/api/`). What each name means is written here, in a `match` over the
//! enum: a new reason or event does not compile until it is described.

use super::markdown::{code, header, table};
use crate::api::account::{ANNOTATION_DEFAULT_ACCOUNT, FINALIZER_CREDENTIALS_IN_USE};
use crate::api::inbox::{self as inbox, Reason, condition};
use crate::controller::inbox::events::EventKind;
use kube::runtime::events::EventType;

/// The condition types of an Inbox, and what `True` means.
pub(super) const CONDITIONS: [(&str, &str); 4] = [
    (
        condition::READY,
        "The inbox exists, is `active`, and the Secret (and, with `spec.configMap`, the \
         ConfigMap) holds its current address. `kubectl wait --for=condition=Ready` waits for it.",
    ),
    (
        condition::RECONCILING,
        "The operator is working towards the spec (creating, retrying, deleting). kstatus \
         reads it, as Flux does.",
    ),
    (
        condition::STALLED,
        "Progress needs you: the message says what to change. kstatus reads it; the Argo CD \
         health check shows it as Degraded.",
    ),
    (
        condition::SEND_LIMIT_REACHED,
        "`sendsRemaining` is 0. `Ready` is unaffected: the inbox still receives mail.",
    ),
];

/// A reason: the condition it appears on, what happened, and what to do.
struct ReasonDoc {
    on: &'static str,
    meaning: &'static str,
    action: &'static str,
}

fn reason_doc(r: Reason) -> ReasonDoc {
    let (on, meaning, action) = match r {
        Reason::Ready => (
            "Ready=True",
            "The inbox exists, is active, and its outputs hold its current address.",
            "",
        ),
        Reason::UpToDate => (
            "Reconciling=False, Stalled=False",
            "The Inbox is Ready: nothing to do.",
            "",
        ),
        Reason::Creating => (
            "Ready=False",
            "An interrupted create (a crash, an outage) is being resumed. A create that \
             succeeds at once goes straight to `Ready`.",
            "Wait.",
        ),
        Reason::InboxSuspended => (
            "Ready=False",
            "AgentSend suspended the inbox (high bounce or complaint rates).",
            "Resolve it with AgentSend; `Ready` returns when the inbox is reactivated.",
        ),
        Reason::SecretConflict => (
            "Ready=False",
            "A Secret (or, with `spec.configMap`, a ConfigMap) of that name exists and this \
             Inbox does not own it; the message says which. It is never modified.",
            "Delete it, or set `spec.secret.name` (`spec.configMap.name`).",
        ),
        Reason::CredentialsMissing => (
            "Ready=False",
            "No usable API key: the credentials Secret or its key is missing, or the Inbox \
             names no key and none applies by default (no `spec.accountRef`, no \
             `spec.credentials`, no default ClusterAccount allowing its namespace, no operator \
             default key).",
            "Create the Secret, or name an account; it is picked up without a restart.",
        ),
        Reason::CredentialsInvalid => (
            "Ready=False",
            "AgentSend answered 401 or 403 to the key.",
            "Fix the key; a rotated Secret is picked up without a restart (retried every \
             ~5 minutes meanwhile).",
        ),
        Reason::Rejected => (
            "Ready=False",
            "AgentSend refused the spec (400, 409, 422: an address taken, an unknown domain); \
             or the address already belongs to an inbox this Inbox did not create; or another \
             Inbox owns the inbox; or an adoption was refused; or the `agentsend.io/inbox-id` \
             annotation names an inbox without the operator's proof; or a template or a label \
             does not pass the checks.",
            "Change the spec (or adopt the named inbox with `spec.inboxId`); not retried until \
             the spec changes.",
        ),
        Reason::AccountRefused => (
            "Ready=False",
            "The account refuses the Inbox (its namespace, its `domainId`, the namespace's \
             quota, adoption denied), or the Account or ClusterAccount or its key Secret does \
             not exist. The message names the rule; no AgentSend call is made.",
            "Change the Inbox or the account. Looked at again when the account, its key \
             Secret or the namespace's labels change, when another Inbox of the namespace is \
             deleted, and every `--sync-interval`.",
        ),
        Reason::ImmutableFieldChanged => (
            "Ready=False",
            "`address`, `displayName`, `domainId` or a bound `inboxId` changed (the CRD's CEL \
             rules refuse this at admission; the controller holds it if one gets through).",
            "Revert the change, or create a new Inbox.",
        ),
        Reason::CreationUncertain => (
            "Ready=False",
            "A `create-pending` mark the operator cannot prove it wrote for this Inbox \
             (written by hand, copied, or left by a version without proofs) names an address \
             an inbox of the account holds; or a create interrupted by a version before \
             operator-chosen addresses may have made inboxes. The message names them; nothing \
             is bound or deleted.",
            "Set `spec.inboxId` to the right inbox, or remove the `agentsend.io/create-pending` \
             annotation to create anew.",
        ),
        Reason::AccountChanged => (
            "Ready=False",
            "The credentials now reach another AgentSend account than the one the inbox was \
             bound in, and do not find it there (the message names the key fingerprints). \
             Nothing is created; a deletion with `Delete` waits, the finalizer stays.",
            "Point `spec.credentials`, `spec.accountRef` or the key Secret back at the \
             inbox's account; or set `deletionPolicy: Orphan` to release the Inbox (a Warning \
             `Orphaned` event names the inbox left behind).",
        ),
        Reason::OwnershipUnverified => (
            "Ready=False",
            "Adoption, recovery or deletion needs the cluster-wide one-owner check, and \
             listing Inboxes cluster-wide failed. Nothing is bound or deleted meanwhile.",
            "Grant the binding-check role (namespaced installs); retried with backoff.",
        ),
        Reason::Paused => (
            "Ready=False",
            "The annotation `agentsend.io/paused: \"true\"` stops every AgentSend call and \
             output write (neither Reconciling nor Stalled). A paused Inbox's deletion waits.",
            "Remove the annotation to resume.",
        ),
        Reason::Deleting => (
            "Ready=False",
            "The deletion waits for other finalizers on the Inbox to go first (the message \
             names them). A deletion that goes through at once writes no status.",
            "Wait, or remove the named finalizers once their owner is done.",
        ),
        Reason::ApiUnavailable => (
            "Ready=False",
            "AgentSend errors (5xx), timeouts, rate limits (429) or an unreadable answer.",
            "Nothing: retried with backoff (after `Retry-After` for a 429).",
        ),
        Reason::InboxNotFound => (
            "Ready=False",
            "`spec.inboxId` does not exist in the account (nothing is created); or an \
             observe-only Inbox's inbox does not exist or vanished (it is never created or \
             re-created). Looked at again every 5 sync intervals.",
            "Fix the ID or the address, or set `managementPolicy: Manage`.",
        ),
        Reason::SendLimitReached => (
            "SendLimitReached=True",
            "No sends left today; sends fail with 429 until the daily window resets.",
            "Wait for the window, or ask AgentSend for a higher limit.",
        ),
        Reason::SendsAvailable => (
            "SendLimitReached=False",
            "Sends remain today (the message says how many).",
            "",
        ),
    };
    ReasonDoc {
        on,
        meaning,
        action,
    }
}

/// `docs/reference/conditions.md`.
pub(super) fn conditions_page() -> String {
    let mut out = header(
        "Conditions and reasons",
        "`condition` and `Reason::ALL` in `src/api/inbox.rs`",
    );
    out.push_str(
        "An Inbox's `status.conditions` hold `Ready`, the kstatus pair `Reconciling` and \
         `Stalled`, and, once the inbox is bound, `SendLimitReached`. Tools should not fail on a \
         reason they do not know: new ones may come in any release (see \
         [API stability](../api-stability.md)).\n\n## Condition types\n\n",
    );
    let rows: Vec<[String; 2]> = CONDITIONS
        .iter()
        .map(|(t, m)| [code(t), m.to_string()])
        .collect();
    out.push_str(&table(["Type", "True when"], &rows));
    out.push_str(
        "`Reconciling` and `Stalled` carry the `Ready` reason and message while the Inbox is \
         not Ready. An Account's and a ClusterAccount's `status.conditions` hold `Ready` only: \
         `True` (reason `Ready`) when the last scan of the account with its key succeeded, \
         else `False` with `CredentialsMissing`, `CredentialsInvalid` or `ApiUnavailable`.\n\n\
         ## Reasons\n\n",
    );
    let rows: Vec<[String; 4]> = Reason::ALL
        .iter()
        .map(|r| {
            let d = reason_doc(*r);
            [
                code(r.as_str()),
                d.on.to_string(),
                d.meaning.to_string(),
                d.action.to_string(),
            ]
        })
        .collect();
    out.push_str(&table(
        ["Reason", "On", "What happened", "What to do"],
        &rows,
    ));
    out
}

/// What an event says happened.
fn event_doc(k: EventKind) -> &'static str {
    match k {
        EventKind::Created => {
            "The operator created the AgentSend inbox (a new Inbox gets this one event on its \
             way to Ready)."
        }
        EventKind::Adopted => "The operator bound an existing inbox (`spec.inboxId`).",
        EventKind::Deleted => "The AgentSend inbox was deleted with the Inbox.",
        EventKind::Orphaned => {
            "The AgentSend inbox was left in place when the Inbox went (`deletionPolicy: \
             Orphan`, or an observe-only Inbox)."
        }
        EventKind::LeftBehind => {
            "The Inbox was released under `AccountChanged`: its credentials no longer reach \
             its inbox, which nothing manages now; the message names it."
        }
        EventKind::SecretWritten => {
            "The Secret was restored, moved, or re-written after the pass that created or \
             adopted the inbox."
        }
        EventKind::ConfigMapWritten => "The ConfigMap of `spec.configMap` was written or restored.",
        EventKind::Recreated => {
            "The inbox vanished in AgentSend and was created again with the same address."
        }
        EventKind::SecretConflict => {
            "A Secret or ConfigMap of the wanted name is not this Inbox's (reason \
             `SecretConflict`)."
        }
        EventKind::Rejected => {
            "AgentSend refused the spec, or the inbox is not this Inbox's to take (reason \
             `Rejected`)."
        }
        EventKind::CredentialsInvalid => "AgentSend refused the API key (401/403).",
        EventKind::CreationUncertain => {
            "An interrupted create left inboxes that cannot be proven this Inbox's (reason \
             `CreationUncertain`)."
        }
        EventKind::Suspended => "AgentSend suspended the inbox.",
        EventKind::SendLimitReached => "No sends left today.",
    }
}

/// `docs/reference/events.md`.
pub(super) fn events_page() -> String {
    let mut out = header("Events", "`EventKind` in `src/controller/inbox/events.rs`");
    out.push_str(
        "The operator publishes `events.k8s.io` Events on the Inbox (`kubectl describe inbox \
         NAME`, `kubectl get events --field-selector involvedObject.name=NAME`). Warnings are \
         published on transitions, not on every retry. Events are records for humans, \
         published in the background: the status carries the state.\n\n",
    );
    let rows: Vec<[String; 3]> = EventKind::ALL
        .iter()
        .map(|k| {
            let kind = match k.event_type() {
                EventType::Normal => "Normal",
                EventType::Warning => "Warning",
            };
            [
                code(k.reason()),
                kind.to_string(),
                event_doc(*k).to_string(),
            ]
        })
        .collect();
    out.push_str(&table(["Reason", "Type", "When"], &rows));
    out
}

/// A name of the contract: where it goes, who writes it, what it means.
pub(super) struct Name {
    pub(super) name: &'static str,
    on: &'static str,
    by: &'static str,
    meaning: &'static str,
}

const fn name(
    name: &'static str,
    on: &'static str,
    by: &'static str,
    meaning: &'static str,
) -> Name {
    Name {
        name,
        on,
        by,
        meaning,
    }
}

/// Every annotation, label and finalizer of `src/api/` (a test checks none is missing).
pub(super) const NAMES: [Name; 15] = [
    name(
        inbox::ANNOTATION_INBOX_ID,
        "Inbox",
        "operator",
        "The bound inbox ID, written as soon as it exists so that a restored object keeps \
         its binding. Acted on only with its proof.",
    ),
    name(
        inbox::ANNOTATION_INBOX_ID_PROOF,
        "Inbox",
        "operator",
        "The proof that the operator bound this Inbox (namespace and name) to that ID, and \
         the fingerprint of the account's key: `v1.<fingerprint>.<MAC>`.",
    ),
    name(
        inbox::ANNOTATION_CREATE_PENDING,
        "Inbox",
        "operator",
        "The address being created: written before the create call (with a resourceVersion \
         precondition) and removed once the ID is recorded. Found without an ID, it makes the \
         next pass look that exact address up instead of creating again. Acted on only with \
         its proof. (Marks left by versions before 0.1 hold an RFC 3339 time instead.)",
    ),
    name(
        inbox::ANNOTATION_CREATE_PENDING_PROOF,
        "Inbox",
        "operator",
        "The proof that the operator started that create for this Inbox, and how the address \
         was chosen: `random` (generated) or `absent-<t>` (seen absent in a listing the \
         server dated `t`).",
    ),
    name(
        inbox::ANNOTATION_CREATE_PENDING_SINCE,
        "Inbox",
        "operator",
        "When the create-pending mark was written (RFC 3339, the operator's clock). \
         Informational: no decision rests on it.",
    ),
    name(
        inbox::ANNOTATION_PAUSED,
        "Inbox",
        "you",
        "`\"true\"`: no AgentSend call and no output write until removed; a deletion waits \
         too (reason `Paused`).",
    ),
    name(
        inbox::ANNOTATION_REFRESH,
        "Inbox",
        "you",
        "A new value (any string) refreshes the counters within seconds; \
         `status.observedRefresh` shows the value served.",
    ),
    name(
        inbox::ANNOTATION_DEFAULT_DELETION_POLICY,
        "Namespace",
        "you",
        "`Delete` or `Orphan` (any case): the `deletionPolicy` of the namespace's Inboxes that \
         set none. Any other value means `Orphan`.",
    ),
    name(
        ANNOTATION_DEFAULT_ACCOUNT,
        "ClusterAccount",
        "you",
        "`\"true\"`: the account of Inboxes that name none, in the namespaces it allows (the \
         oldest wins if several are marked).",
    ),
    name(
        inbox::LABEL_MANAGED_BY,
        "Secret, ConfigMap (label)",
        "operator",
        "`inbox-operator` on every Secret and ConfigMap the operator writes; its watches \
         select by it.",
    ),
    name(
        inbox::LABEL_INBOX,
        "Secret, ConfigMap (label)",
        "operator",
        "The owning Inbox's name; for a name over 63 characters, its first 50 characters, \
         `-` and 12 hex characters of the name's SHA-256.",
    ),
    name(
        inbox::ANNOTATION_INBOX_NAME,
        "Secret, ConfigMap",
        "operator",
        "The owning Inbox's full name (kept when a retained output is released).",
    ),
    name(
        inbox::ANNOTATION_DATA_DIGEST,
        "Secret, ConfigMap",
        "operator",
        "SHA-256 of the data the operator wrote, so that it can tell from metadata alone \
         whether the object is up to date (it caches no Secret data).",
    ),
    name(
        inbox::FINALIZER,
        "Inbox (finalizer)",
        "operator",
        "Holds the Inbox's deletion until the AgentSend inbox is deleted (or left, with \
         `Orphan`) and the outputs are removed or released.",
    ),
    name(
        FINALIZER_CREDENTIALS_IN_USE,
        "key Secret, Account, ClusterAccount (finalizer)",
        "operator",
        "Held while an Inbox uses the key, so that deleting a namespace removes its Inboxes \
         first and their credentials last; removed with the last Inbox using it.",
    ),
];

/// `docs/reference/annotations.md`.
pub(super) fn annotations_page() -> String {
    let mut out = header(
        "Annotations, labels and finalizers",
        "the constants of `src/api/inbox.rs` and `src/api/account.rs`",
    );
    out.push_str(
        "The names the operator reads and writes. Those set by *you* are the knobs; those set \
         by the *operator* are its own: it writes only these annotations and the status of an \
         Inbox, never its `spec`, so GitOps tools need no `ignoreDifferences` for them. An \
         annotation a tenant writes or copies binds nothing: the operator acts on its own \
         annotations only with their proof (see [Trust and tenancy](../concepts/trust.md)).\n\n",
    );
    let rows: Vec<[String; 4]> = NAMES
        .iter()
        .map(|n| {
            [
                code(n.name),
                n.on.to_string(),
                n.by.to_string(),
                n.meaning.to_string(),
            ]
        })
        .collect();
    out.push_str(&table(["Name", "On", "Set by", "Meaning"], &rows));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `pub const NAME: &str = "value";` of the given prefixes in `file`'s text.
    fn constants(text: &str, prefixes: &[&str]) -> Vec<String> {
        text.lines()
            .filter_map(|l| l.trim().strip_prefix("pub const "))
            .filter(|l| prefixes.iter().any(|p| l.starts_with(p)))
            .filter_map(|l| l.split('"').nth(1))
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn every_annotation_label_and_finalizer_is_described() {
        let root = env!("CARGO_MANIFEST_DIR");
        let mut found = Vec::new();
        for file in ["src/api/inbox.rs", "src/api/account.rs"] {
            let text = std::fs::read_to_string(format!("{root}/{file}")).expect("source");
            found.extend(constants(&text, &["ANNOTATION_", "LABEL_", "FINALIZER"]));
        }
        assert!(found.len() >= 14, "{found:?}");
        let missing: Vec<&String> = found
            .iter()
            .filter(|n| !NAMES.iter().any(|d| d.name == n.as_str()))
            .collect();
        assert!(
            missing.is_empty(),
            "describe these in reference::contract::NAMES: {missing:?}"
        );
    }

    #[test]
    fn every_condition_type_is_described() {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/api/inbox.rs"))
                .expect("source");
        let block = text
            .split("pub mod condition {")
            .nth(1)
            .and_then(|rest| rest.split("\n}").next())
            .expect("the condition module");
        let types = constants(block, &[""]);
        let described: Vec<String> = CONDITIONS.iter().map(|(t, _)| t.to_string()).collect();
        assert_eq!(
            types, described,
            "describe every condition type in CONDITIONS"
        );
    }
}
