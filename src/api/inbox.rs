//! The `Inbox` custom resource (`inboxes.agentsend.io/v1alpha1`) and every public name
//! of the contract: annotations, finalizer, condition types and reasons.

use std::collections::BTreeMap;

use kube::CustomResource;
use kube::CustomResourceExt;
use kube::core::object::HasSpec;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::api::common::SecretKeyRef;

/// Finalizer that guards the AgentSend inbox and the owned Secret.
pub const FINALIZER: &str = "agentsend.io/finalizer";
/// Annotation holding the bound AgentSend inbox ID (survives a lost status). Acted on only
/// with [`ANNOTATION_INBOX_ID_PROOF`].
pub const ANNOTATION_INBOX_ID: &str = "agentsend.io/inbox-id";
/// The operator's proof that it bound this Inbox (namespace and name) to the ID of
/// [`ANNOTATION_INBOX_ID`], and in which account (a keyed MAC; see `controller::proof`).
pub const ANNOTATION_INBOX_ID_PROOF: &str = "agentsend.io/inbox-id-proof";
/// Annotation persisted before a create call; its value is the address being created (an
/// RFC 3339 time in marks written by versions before 0.1 that let AgentSend choose).
pub const ANNOTATION_CREATE_PENDING: &str = "agentsend.io/create-pending";
/// The operator's proof that it started the create of [`ANNOTATION_CREATE_PENDING`]'s
/// address for this Inbox, and how the address was chosen (generated, or seen absent).
pub const ANNOTATION_CREATE_PENDING_PROOF: &str = "agentsend.io/create-pending-proof";
/// When the create-pending mark was written (RFC 3339, the operator's clock). Informational:
/// no decision rests on it.
pub const ANNOTATION_CREATE_PENDING_SINCE: &str = "agentsend.io/create-pending-since";
/// Annotation users set to `"true"` to pause all AgentSend calls and Secret writes.
pub const ANNOTATION_PAUSED: &str = "agentsend.io/paused";
/// Annotation users set to a new value (any) to ask for fresh counters now; the value served
/// is recorded in `status.observedRefresh`.
pub const ANNOTATION_REFRESH: &str = "agentsend.io/refresh";
/// Namespace annotation (`Delete` or `Orphan`): the `deletionPolicy` of the namespace's
/// Inboxes that do not set `spec.deletionPolicy`.
pub const ANNOTATION_DEFAULT_DELETION_POLICY: &str = "agentsend.io/default-deletion-policy";
/// Label put on every Secret the operator writes.
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Value of [`LABEL_MANAGED_BY`].
pub const MANAGED_BY: &str = "inbox-operator";
/// Label naming the Inbox that owns a Secret: the Inbox's name, or for names longer than a
/// label value allows, a shortened form with a hash ([`crate::controller::inbox::outputs::meta::label_value_for_name`]).
pub const LABEL_INBOX: &str = "agentsend.io/inbox";
/// Annotation on every Secret the operator writes: the owning Inbox's full name.
pub const ANNOTATION_INBOX_NAME: &str = "agentsend.io/inbox-name";
/// Annotation on every Secret the operator writes: a digest of the data it wrote, so that the
/// operator decides whether the Secret is up to date from its metadata alone (it caches no
/// Secret data).
pub const ANNOTATION_DATA_DIGEST: &str = "agentsend.io/data-digest";
/// Field manager used for every server-side apply.
pub const FIELD_MANAGER: &str = "inbox-operator";
/// Condition types.
pub mod condition {
    /// The inbox exists, is active, and its Secret holds the current address.
    pub const READY: &str = "Ready";
    /// kstatus: the controller is working towards the desired state.
    pub const RECONCILING: &str = "Reconciling";
    /// kstatus: progress needs a human (the spec or credentials must change).
    pub const STALLED: &str = "Stalled";
    /// True while `sendsRemaining` is 0.
    pub const SEND_LIMIT_REACHED: &str = "SendLimitReached";
}

/// The stable reasons of the contract, serialised to their exact CamelCase names.
///
/// `Ready=False` carries one of the "not ready" reasons; `Ready=True` carries [`Reason::Ready`];
/// the kstatus conditions reuse the Ready reason (or [`Reason::UpToDate`]), and
/// `SendLimitReached` carries [`Reason::SendLimitReached`] or [`Reason::SendsAvailable`].
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The inbox exists, is active, and its Secret holds the current address.
    Ready,
    /// kstatus: nothing to do.
    UpToDate,
    /// A create is in flight.
    Creating,
    /// AgentSend suspended the inbox.
    InboxSuspended,
    /// A Secret of that name exists and is not owned by this Inbox.
    SecretConflict,
    /// No usable API key: the key Secret or its key is missing, or the Inbox names none
    /// (`spec.accountRef`, `spec.credentials`) and no default applies.
    CredentialsMissing,
    /// AgentSend refused the API key (401/403).
    CredentialsInvalid,
    /// The API refused the spec, or the inbox to adopt is not this Inbox's to take.
    Rejected,
    /// The account the Inbox uses refuses it (namespace, domain, quota) or cannot be used
    /// (missing, or its key Secret is).
    AccountRefused,
    /// An identity field changed after creation.
    ImmutableFieldChanged,
    /// An interrupted create may have made an inbox that cannot be proven this Inbox's: it
    /// is named, never bound and never deleted.
    CreationUncertain,
    /// The credentials now reach another AgentSend account than the one the inbox was bound
    /// in: nothing is created, and deletion waits (or, with `Orphan`, releases).
    AccountChanged,
    /// Whether another Inbox owns the inbox cannot be checked now (the cluster-wide Inbox
    /// list failed): adoption, recovery and deletion wait.
    OwnershipUnverified,
    /// The user paused the Inbox (`agentsend.io/paused`).
    Paused,
    /// The Inbox is being deleted.
    Deleting,
    /// AgentSend is unreachable, failing, throttling, or answered something unreadable.
    ApiUnavailable,
    /// The adopted (or bound-by-`spec.inboxId`) inbox does not exist in this account.
    InboxNotFound,
    /// `SendLimitReached=True`: no sends left today.
    SendLimitReached,
    /// `SendLimitReached=False`: sends remain.
    SendsAvailable,
}

impl Reason {
    /// Every reason, for exhaustive checks.
    pub const ALL: [Reason; 19] = [
        Reason::Ready,
        Reason::UpToDate,
        Reason::Creating,
        Reason::InboxSuspended,
        Reason::SecretConflict,
        Reason::CredentialsMissing,
        Reason::CredentialsInvalid,
        Reason::Rejected,
        Reason::AccountRefused,
        Reason::ImmutableFieldChanged,
        Reason::CreationUncertain,
        Reason::AccountChanged,
        Reason::OwnershipUnverified,
        Reason::Paused,
        Reason::Deleting,
        Reason::ApiUnavailable,
        Reason::InboxNotFound,
        Reason::SendLimitReached,
        Reason::SendsAvailable,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Ready => "Ready",
            Reason::UpToDate => "UpToDate",
            Reason::Creating => "Creating",
            Reason::InboxSuspended => "InboxSuspended",
            Reason::SecretConflict => "SecretConflict",
            Reason::CredentialsMissing => "CredentialsMissing",
            Reason::CredentialsInvalid => "CredentialsInvalid",
            Reason::Rejected => "Rejected",
            Reason::AccountRefused => "AccountRefused",
            Reason::ImmutableFieldChanged => "ImmutableFieldChanged",
            Reason::CreationUncertain => "CreationUncertain",
            Reason::AccountChanged => "AccountChanged",
            Reason::OwnershipUnverified => "OwnershipUnverified",
            Reason::Paused => "Paused",
            Reason::Deleting => "Deleting",
            Reason::ApiUnavailable => "ApiUnavailable",
            Reason::InboxNotFound => "InboxNotFound",
            Reason::SendLimitReached => "SendLimitReached",
            Reason::SendsAvailable => "SendsAvailable",
        }
    }

    /// The reason with this wire name, if it is one of ours.
    pub fn parse(s: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A condition's status (`metav1.ConditionStatus`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConditionStatus {
    /// The condition holds.
    True,
    /// The condition does not hold.
    False,
    /// Not known.
    Unknown,
}

impl ConditionStatus {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionStatus::True => "True",
            ConditionStatus::False => "False",
            ConditionStatus::Unknown => "Unknown",
        }
    }

    /// `True` or `False`.
    pub fn from_bool(b: bool) -> Self {
        if b {
            ConditionStatus::True
        } else {
            ConditionStatus::False
        }
    }
}

impl std::fmt::Display for ConditionStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happens to the AgentSend inbox when the `Inbox` is deleted.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicy {
    /// Delete the AgentSend inbox (and with it its mail).
    #[default]
    Delete,
    /// Leave the AgentSend inbox in place.
    Orphan,
}

impl DeletionPolicy {
    /// The policy a namespace annotation names (`Delete` or `Orphan`, any case); `None` for
    /// anything else.
    pub fn parse(s: &str) -> Option<DeletionPolicy> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("delete") {
            Some(DeletionPolicy::Delete)
        } else if s.eq_ignore_ascii_case("orphan") {
            Some(DeletionPolicy::Orphan)
        } else {
            None
        }
    }
}

/// Whether the operator manages the AgentSend inbox or only observes it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ManagementPolicy {
    /// Create, adopt, re-create and (per `deletionPolicy`) delete the inbox.
    #[default]
    Manage,
    /// Never create, re-create or delete: bind an existing inbox (by `spec.inboxId`, or by
    /// `spec.address`, an exact lookup), mirror it into status and the Secret; deletion only
    /// releases it.
    Observe,
}

/// Where the deletion policy that applies comes from (`status.deletionPolicySource`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicySource {
    /// The Inbox's own `spec.deletionPolicy`.
    Spec,
    /// The namespace's `agentsend.io/default-deletion-policy` annotation.
    Namespace,
    /// Neither: the operator's default, `Delete`.
    Default,
}

/// Desired state of an AgentSend inbox.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "agentsend.io",
    version = "v1alpha1",
    kind = "Inbox",
    plural = "inboxes",
    singular = "inbox",
    namespaced,
    status = "InboxStatus",
    shortname = "inb",
    category = "agentsend",
    derive = "PartialEq",
    derive = "Default",
    doc = "An AgentSend email inbox, managed declaratively.",
    printcolumn = r#"{"name":"Address","type":"string","jsonPath":".status.address"}"#,
    printcolumn = r#"{"name":"State","type":"string","jsonPath":".status.state"}"#,
    printcolumn = r#"{"name":"Sent Today","type":"integer","jsonPath":".status.sendsToday"}"#,
    printcolumn = r#"{"name":"Limit","type":"integer","jsonPath":".status.dailySendLimit"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Message","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"Ready\")].message"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.address) == has(oldSelf.address) && (!has(self.address) || self.address == oldSelf.address)",
     "message": "address is immutable: AgentSend has no update call (delete and recreate the Inbox to change it)"},
    {"rule": "has(self.displayName) == has(oldSelf.displayName) && (!has(self.displayName) || self.displayName == oldSelf.displayName)",
     "message": "displayName is immutable: AgentSend has no update call (delete and recreate the Inbox to change it)"},
    {"rule": "has(self.domainId) == has(oldSelf.domainId) && (!has(self.domainId) || self.domainId == oldSelf.domainId)",
     "message": "domainId is immutable: AgentSend has no update call (delete and recreate the Inbox to change it)"},
    {"rule": "!has(oldSelf.inboxId) || (has(self.inboxId) && self.inboxId == oldSelf.inboxId)",
     "message": "inboxId is immutable once set"},
    {"rule": "!has(self.accountRef) || !has(self.credentials)",
     "message": "set accountRef or credentials, not both: accountRef names an Account or ClusterAccount, credentials.secretRef a Secret of this namespace"}
]))]
pub struct InboxSpec {
    /// Local part (with `domainId`) or full address. Omitted: a random address on the shared domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 254), regex(pattern = r"^[^@\s]+(@[^@\s]+)?$"))]
    pub address: Option<String>,

    /// Name shown in the From header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub display_name: Option<String>,

    /// Custom domain ID. Omitted: the shared domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128), regex(pattern = r"^\S+$"))]
    pub domain_id: Option<String>,

    /// Adopt this existing AgentSend inbox instead of creating one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128), regex(pattern = r"^\S+$"))]
    pub inbox_id: Option<String>,

    /// What happens to the AgentSend inbox when this Inbox is deleted. Unset: the namespace's
    /// `agentsend.io/default-deletion-policy` annotation, else `Delete`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_policy: Option<DeletionPolicy>,

    /// `Manage` (default) or `Observe`: never create, re-create or delete the inbox, only
    /// bind an existing one (by `inboxId` or `address`) and mirror it.
    #[serde(default)]
    pub management_policy: ManagementPolicy,

    /// The Secret that receives the address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<Box<SecretSpec>>,

    /// A ConfigMap that also receives the address (an address is not a secret; many apps
    /// read ConfigMaps). Same ownership, conflict and restore rules as the Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<Box<ConfigMapSpec>>,

    /// API key for this Inbox, from a Secret in the same namespace (the simple form; not
    /// together with `accountRef`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<Box<CredentialsSpec>>,

    /// The `Account` (in this namespace) or `ClusterAccount` whose API key this Inbox uses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_ref: Option<Box<crate::api::common::AccountRef>>,
}

/// A valid label value: empty, or at most 63 of `[A-Za-z0-9-_.]` with alphanumeric ends
/// (the length is checked by `maxLength`).
const LABEL_VALUE_PATTERN: &str = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$";
/// CEL: every key is a qualified name (`[DNS-subdomain prefix/]name`, name ≤ 63). The prefix's
/// 253-character limit is approximated by the total size; the controller checks it exactly.
const QUALIFIED_KEYS_RULE: &str = r"self.all(k, size(k) <= 317 && k.matches('^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$'))";
const QUALIFIED_KEYS_MESSAGE: &str = "keys must be qualified names: an optional DNS subdomain prefix and '/', then at most 63 alphanumerics, '-', '_' or '.', starting and ending alphanumeric";

/// Where the address is published.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretSpec {
    /// Secret name; defaults to the Inbox's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub name: Option<String>,
    /// Extra labels for the Secret (keys: qualified names; values: valid label values).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend(
        "maxProperties" = 100,
        "additionalProperties" = {"type": "string", "maxLength": 63, "pattern": LABEL_VALUE_PATTERN},
        "x-kubernetes-validations" = [{"rule": QUALIFIED_KEYS_RULE, "message": QUALIFIED_KEYS_MESSAGE}]
    ))]
    pub labels: Option<BTreeMap<String, String>>,
    /// Extra annotations for the Secret (keys: qualified names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend(
        "maxProperties" = 100,
        "x-kubernetes-validations" = [{"rule": QUALIFIED_KEYS_RULE, "message": QUALIFIED_KEYS_MESSAGE}]
    ))]
    pub annotations: Option<BTreeMap<String, String>>,
    /// Extra keys rendered from the inbox's fields, e.g.
    /// `SMTP_FROM: '{{ displayName }} <{{ address }}>'`. Fields: `address`, `localPart`,
    /// `domain`, `displayName`, `inboxId`. A template that does not render is `Rejected`
    /// (naming the key) and nothing is written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend(
        "maxProperties" = 32,
        "additionalProperties" = {"type": "string", "maxLength": 4096},
        "x-kubernetes-validations" = [{"rule": TEMPLATE_KEYS_RULE, "message": TEMPLATE_KEYS_MESSAGE}]
    ))]
    pub template: Option<BTreeMap<String, String>>,
    /// Keep the Secret when the Inbox is deleted with `deletionPolicy: Orphan` (explicit or
    /// the namespace default): the operator removes its ownerReference and managed labels
    /// first, so the garbage collector leaves it and apps keep their address. No effect with
    /// `Delete`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retain_on_orphan: Option<bool>,
}

/// Where the address is published for apps that read ConfigMaps: the same default keys as
/// the Secret (`address`, `inboxId`, `domainId`) plus the template's keys.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMapSpec {
    /// ConfigMap name; defaults to the Inbox's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub name: Option<String>,
    /// Extra labels for the ConfigMap (keys: qualified names; values: valid label values).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend(
        "maxProperties" = 100,
        "additionalProperties" = {"type": "string", "maxLength": 63, "pattern": LABEL_VALUE_PATTERN},
        "x-kubernetes-validations" = [{"rule": QUALIFIED_KEYS_RULE, "message": QUALIFIED_KEYS_MESSAGE}]
    ))]
    pub labels: Option<BTreeMap<String, String>>,
    /// Extra annotations for the ConfigMap (keys: qualified names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend(
        "maxProperties" = 100,
        "x-kubernetes-validations" = [{"rule": QUALIFIED_KEYS_RULE, "message": QUALIFIED_KEYS_MESSAGE}]
    ))]
    pub annotations: Option<BTreeMap<String, String>>,
    /// Extra keys rendered from the inbox's fields, as `spec.secret.template`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend(
        "maxProperties" = 32,
        "additionalProperties" = {"type": "string", "maxLength": 4096},
        "x-kubernetes-validations" = [{"rule": TEMPLATE_KEYS_RULE, "message": TEMPLATE_KEYS_MESSAGE}]
    ))]
    pub template: Option<BTreeMap<String, String>>,
    /// Keep the ConfigMap when the Inbox is deleted with `deletionPolicy: Orphan`, as
    /// `spec.secret.retainOnOrphan`. No effect with `Delete`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retain_on_orphan: Option<bool>,
}

/// CEL: template keys are data keys and do not replace the default keys.
const TEMPLATE_KEYS_RULE: &str = r"self.all(k, size(k) <= 253 && k.matches('^[-._a-zA-Z0-9]+$') && !(k in ['address', 'inboxId', 'domainId', '.', '..']))";
const TEMPLATE_KEYS_MESSAGE: &str = "template keys must be data keys (letters, digits, '-', '_', '.') other than address, inboxId and domainId";

/// Per-Inbox API credentials.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsSpec {
    /// Secret (same namespace) holding the API key.
    pub secret_ref: SecretKeyRef,
}

/// Observed state, mirrored from AgentSend.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InboxStatus {
    /// The AgentSend inbox this Inbox is bound to (its opaque ID).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbox_id: Option<String>,
    /// The inbox's full email address, as AgentSend reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// The name shown in the From header, as AgentSend reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// The inbox's custom domain ID; absent on the shared domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain_id: Option<String>,
    /// `active`, `suspended` or `deleted`, as AgentSend reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Sends the inbox may make per day (AgentSend's limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily_send_limit: Option<i64>,
    /// Sends made in AgentSend's current daily window (refreshed every sync interval).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sends_today: Option<i64>,
    /// `dailySendLimit - sendsToday`, never negative.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sends_remaining: Option<i64>,
    /// Sends over the inbox's lifetime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_sent: Option<i64>,
    /// Bounced messages over the inbox's lifetime (a high share makes AgentSend suspend it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bounce_count: Option<i64>,
    /// Spam complaints over the inbox's lifetime (a high share makes AgentSend suspend it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub complaint_count: Option<i64>,
    /// When AgentSend created the inbox (ISO 8601, AgentSend's clock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    /// The Secret holding the address (`spec.secret.name`, else the Inbox's name), once written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// The ConfigMap holding the address (`spec.configMap`), once written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_name: Option<String>,
    /// The `metadata.generation` this status describes: older than the generation while
    /// the operator has not yet acted on a spec change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The deletion policy that applies (the spec's, the namespace default, or `Delete`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_policy: Option<DeletionPolicy>,
    /// Where `deletionPolicy` comes from: `Spec`, `Namespace` or `Default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_policy_source: Option<DeletionPolicySource>,
    /// The value of the `agentsend.io/refresh` annotation the counters were last refreshed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_refresh: Option<String>,
    /// `Ready` (the inbox exists, is active, and its Secret holds the current address),
    /// `Reconciling`, `Stalled` (progress needs a change by you; the message says which) and
    /// `SendLimitReached`; each with a reason and a message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// A condition in the standard `metav1.Condition` shape.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// The condition's type, e.g. `Ready`; one condition of each type.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// The `metadata.generation` the condition was set for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// RFC 3339 time of the last status change.
    pub last_transition_time: String,
    /// Why the condition has its status: a stable CamelCase word to match on (e.g.
    /// `CredentialsInvalid`); `kubectl get` shows Ready's in the `Reason` column.
    pub reason: String,
    /// What happened, for people: names the object, field or rule involved
    /// (`kubectl get -o wide` shows Ready's).
    pub message: String,
}

impl Condition {
    /// The status, typed (`Unknown` for anything unexpected).
    pub fn status(&self) -> ConditionStatus {
        match self.status.as_str() {
            "True" => ConditionStatus::True,
            "False" => ConditionStatus::False,
            _ => ConditionStatus::Unknown,
        }
    }

    /// The reason, if it is one of the contract's.
    pub fn reason(&self) -> Option<Reason> {
        Reason::parse(&self.reason)
    }
}

impl Inbox {
    /// Name of the Secret that receives the address.
    pub fn secret_name(&self) -> String {
        self.spec
            .secret
            .as_ref()
            .and_then(|s| s.name.clone())
            .unwrap_or_else(|| self.metadata.name.clone().unwrap_or_default())
    }

    /// Name of the ConfigMap that receives the address, when `spec.configMap` asks for one.
    pub fn config_map_name(&self) -> Option<String> {
        let spec = self.spec.config_map.as_ref()?;
        spec.name.clone().or_else(|| self.metadata.name.clone())
    }

    /// Whether the Secret outlives this Inbox when it is deleted with `deletionPolicy: Orphan`.
    pub fn retains_secret(&self) -> bool {
        let spec = self.spec.secret.as_ref();
        spec.and_then(|s| s.retain_on_orphan).unwrap_or(false)
    }

    /// Whether the ConfigMap outlives this Inbox when it is deleted with `Orphan`.
    pub fn retains_config_map(&self) -> bool {
        let spec = self.spec.config_map.as_ref();
        spec.and_then(|c| c.retain_on_orphan).unwrap_or(false)
    }

    /// The refresh the user asks for: the `agentsend.io/refresh` value, when set, non-empty
    /// and not yet served (`status.observedRefresh` differs).
    pub fn refresh_wanted(&self) -> Option<&str> {
        let v = self
            .annotation(ANNOTATION_REFRESH)
            .filter(|v| !v.is_empty())?;
        let served = self
            .status
            .as_ref()
            .and_then(|s| s.observed_refresh.as_deref());
        (served != Some(v)).then_some(v)
    }

    /// Whether this Inbox only observes its inbox (`managementPolicy: Observe`).
    pub fn is_observe_only(&self) -> bool {
        self.spec.management_policy == ManagementPolicy::Observe
    }

    /// Whether the user paused this Inbox.
    pub fn is_paused(&self) -> bool {
        self.annotation(ANNOTATION_PAUSED)
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    }

    /// An annotation's value, if set.
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(key))
            .map(String::as_str)
    }

    /// The inbox ID this Inbox names, proven or not (see [`InboxView::named_inbox_id`]).
    pub fn named_inbox_id(&self) -> Option<String> {
        InboxView::named_inbox_id(self)
    }
}

/// What the readers of every cached Inbox read, from a full [`Inbox`] or the watch cache's
/// compact form (`controller::cached_inbox::CachedInbox`).
pub trait InboxView: kube::Resource<DynamicType = ()> + HasSpec<Spec = InboxSpec> {
    /// An `agentsend.io/` annotation's value, if set.
    fn annotation(&self, key: &str) -> Option<&str>;

    /// `status.inboxId`.
    fn status_inbox_id(&self) -> Option<&str>;

    /// The AgentSend inbox this Inbox names: the annotation, else (annotation absent, e.g.
    /// after a GitOps replace) status; an empty annotation names none. Proven or not: for
    /// counting and reports only. What the operator acts on is the binding it can prove
    /// (`controller::proof::ProofKey::binding`).
    fn named_inbox_id(&self) -> Option<String> {
        match self.annotation(ANNOTATION_INBOX_ID) {
            Some(id) if !id.is_empty() => Some(id.to_string()),
            Some(_) => None,
            None => self.status_inbox_id().map(str::to_string),
        }
    }
}

impl InboxView for Inbox {
    fn annotation(&self, key: &str) -> Option<&str> {
        Inbox::annotation(self, key)
    }

    fn status_inbox_id(&self) -> Option<&str> {
        self.status.as_ref()?.inbox_id.as_deref()
    }
}

/// The CustomResourceDefinition, as installed in clusters.
pub fn crd()
-> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition {
    Inbox::crd()
}

/// The CRD rendered as YAML (what `inbox-operator crd` prints and `crds/` holds).
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    serde_yaml::to_string(&crd())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_has_immutability_rules_and_enum() {
        let v = serde_json::to_value(crd()).unwrap();
        let spec = &v["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        let rules = spec["x-kubernetes-validations"].as_array().unwrap();
        assert_eq!(rules.len(), 5);
        assert_eq!(
            spec["properties"]["deletionPolicy"]["enum"],
            serde_json::json!(["Delete", "Orphan"])
        );
        // No schema default: unset means "the namespace default" (an API server default
        // would make every Inbox look explicit).
        assert!(
            spec["properties"]["deletionPolicy"]
                .get("default")
                .is_none()
        );
    }

    #[test]
    fn names_and_columns() {
        let c = crd();
        assert_eq!(c.metadata.name.as_deref(), Some("inboxes.agentsend.io"));
        assert_eq!(c.spec.names.short_names, Some(vec!["inb".to_string()]));
        assert_eq!(c.spec.names.categories, Some(vec!["agentsend".to_string()]));
        let cols: Vec<_> = c.spec.versions[0]
            .additional_printer_columns
            .as_ref()
            .unwrap()
            .iter()
            .map(|c| c.name.clone())
            .collect();
        assert_eq!(
            cols,
            [
                "Address",
                "State",
                "Sent Today",
                "Limit",
                "Ready",
                "Reason",
                "Age",
                "Message"
            ]
        );
        // Only with `kubectl get -o wide`: messages are long.
        let priority = |name: &str| {
            c.spec.versions[0]
                .additional_printer_columns
                .iter()
                .flatten()
                .find(|col| col.name == name)
                .and_then(|col| col.priority)
                .unwrap_or(0)
        };
        assert_eq!(priority("Message"), 1);
        assert_eq!(priority("Reason"), 0);
    }

    #[test]
    fn reasons_serialise_to_their_contract_names() {
        for r in Reason::ALL {
            assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
            assert_eq!(Reason::parse(r.as_str()), Some(r));
        }
        let public = [
            "Creating",
            "InboxSuspended",
            "SecretConflict",
            "CredentialsMissing",
            "CredentialsInvalid",
            "Rejected",
            "AccountRefused",
            "ImmutableFieldChanged",
            "CreationUncertain",
            "Paused",
            "Deleting",
            "ApiUnavailable",
        ];
        for name in public {
            assert!(Reason::parse(name).is_some(), "{name}");
        }
        assert_eq!(serde_json::to_value(ConditionStatus::True).unwrap(), "True");
    }

    #[test]
    fn secret_name_defaults_to_inbox_name() {
        let mut i = Inbox::new("support", InboxSpec::default());
        assert_eq!(i.secret_name(), "support");
        i.spec.secret = Some(Box::new(SecretSpec {
            name: Some("mail".into()),
            ..Default::default()
        }));
        assert_eq!(i.secret_name(), "mail");
    }
}
