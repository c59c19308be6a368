//! Which API key an Inbox uses, and whether its account lets it — pure decisions over what
//! the executor gathered (the accounts from the watch caches, the namespace's labels, the
//! other Inboxes of the namespace).
//!
//! Precedence (explicit before implicit):
//! 1. `spec.accountRef` — that `Account` (in the Inbox's namespace) or `ClusterAccount`;
//! 2. `spec.credentials.secretRef` — a Secret of the Inbox's namespace (the simple form);
//! 3. the `ClusterAccount` annotated `agentsend.io/default-account: "true"` (the oldest, if
//!    several are), when its namespace rules allow the Inbox's namespace;
//! 4. the operator's default key.
//!
//! Both `accountRef` and `credentials` set is refused (the CRD's CEL rule refuses it at
//! admission already). A `ClusterAccount`'s rules — namespaces, domains, the per-namespace
//! quota — refuse an Inbox with a message naming the rule. The rules govern creating and
//! keeping an inbox, not deleting one: a pass that deletes only needs the key.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::core::{Selector, SelectorExt};

use crate::agentsend::ApiKey;
use crate::api::account::{AdoptionPolicy, ClusterAccount, ClusterAccountSpec};
use crate::api::common::SecretKeyRef;
use crate::api::common::{AccountKind, AccountRef};
use crate::api::inbox::{Inbox, InboxView};
use crate::controller::ownership::proof::{Pending, ProofKey};

/// The API key for this Inbox, or why there is none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credentials {
    /// Found.
    Key(ApiKey),
    /// Not found; the message says where it was looked for.
    Missing(String),
    /// The account refuses this Inbox (or cannot be used); the message names the rule.
    Refused(String),
}

/// An object an Inbox's key comes through. While an Inbox uses it, it carries the
/// `agentsend.io/credentials-in-use` finalizer.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum InUse {
    /// A key Secret.
    Secret {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// An `Account`.
    Account {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// A `ClusterAccount`.
    ClusterAccount {
        /// Its name.
        name: String,
    },
}

impl std::fmt::Display for InUse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InUse::Secret { namespace, name } => write!(f, "Secret {namespace}/{name}"),
            InUse::Account { namespace, name } => write!(f, "Account {namespace}/{name}"),
            InUse::ClusterAccount { name } => write!(f, "ClusterAccount {name}"),
        }
    }
}

impl InUse {
    fn account(r: &AccountRef, inbox_namespace: &str) -> InUse {
        match r.kind {
            AccountKind::Account => InUse::Account {
                namespace: inbox_namespace.to_string(),
                name: r.name.clone(),
            },
            AccountKind::ClusterAccount => InUse::ClusterAccount {
                name: r.name.clone(),
            },
        }
    }
}

/// The objects a pass's key comes through (what it marks in use before any AgentSend call).
pub fn in_use(source: &Source, inbox_namespace: &str) -> Vec<InUse> {
    let Source::Secret {
        namespace,
        secret,
        account,
    } = source
    else {
        return Vec::new();
    };
    let mut v = vec![InUse::Secret {
        namespace: namespace.clone(),
        name: secret.name.clone(),
    }];
    v.extend(account.iter().map(|a| InUse::account(a, inbox_namespace)));
    v
}

/// What `inbox` may use, from its spec alone (no rules checked, so it errs on the side of
/// "in use"): its `credentials` Secret, or the account it names (or the default one) and
/// that account's key Secret. `referenced` and `default` are those accounts, if they exist.
pub fn may_use<I: InboxView>(
    inbox: &I,
    referenced: Option<&AccountInfo>,
    default: Option<&AccountInfo>,
) -> Vec<InUse> {
    let ns = inbox.meta().namespace.as_deref().unwrap_or_default();
    if let Some(c) = &inbox.spec().credentials {
        return vec![InUse::Secret {
            namespace: ns.to_string(),
            name: c.secret_ref.name.clone(),
        }];
    }
    let account = match &inbox.spec().account_ref {
        Some(r) => {
            let mut v = vec![InUse::account(r, ns)];
            v.extend(referenced.map(|a| InUse::Secret {
                namespace: a.secret_namespace.clone(),
                name: a.secret.name.clone(),
            }));
            return v;
        }
        None => default,
    };
    account
        .map(|a| {
            vec![
                InUse::account(&a.reference(), ns),
                InUse::Secret {
                    namespace: a.secret_namespace.clone(),
                    name: a.secret.name.clone(),
                },
            ]
        })
        .unwrap_or_default()
}

/// What the resolver needs to know about one account.
#[derive(Clone, Debug, PartialEq)]
pub struct AccountInfo {
    /// `Account` or `ClusterAccount`.
    pub kind: AccountKind,
    /// Its name.
    pub name: String,
    /// Where its key Secret lives (the Account's namespace, or the operator's).
    pub secret_namespace: String,
    /// Its key Secret.
    pub secret: SecretKeyRef,
    /// Its rules (none for an `Account`).
    pub rules: Rules,
}

/// A `ClusterAccount`'s rules.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rules {
    /// Namespaces whose labels match may use it.
    pub namespace_selector: Option<LabelSelector>,
    /// Namespaces (by name) that may use it.
    pub namespaces: Option<Vec<String>>,
    /// The only domain IDs it may be used with.
    pub allowed_domain_ids: Option<Vec<String>>,
    /// Inboxes per namespace.
    pub max_inboxes_per_namespace: Option<i32>,
    /// Whether existing inboxes may be adopted or observed through it.
    pub adoption_policy: AdoptionPolicy,
}

impl AccountInfo {
    /// A `ClusterAccount`, whose key Secret is in `operator_namespace`.
    pub fn cluster(name: &str, spec: &ClusterAccountSpec, operator_namespace: &str) -> Self {
        AccountInfo {
            kind: AccountKind::ClusterAccount,
            name: name.to_string(),
            secret_namespace: operator_namespace.to_string(),
            secret: spec.secret_ref.clone(),
            rules: Rules {
                namespace_selector: spec.namespace_selector.clone(),
                namespaces: spec.namespaces.clone(),
                allowed_domain_ids: spec.allowed_domain_ids.clone(),
                max_inboxes_per_namespace: spec.max_inboxes_per_namespace,
                adoption_policy: spec.adoption_policy.unwrap_or_default(),
            },
        }
    }

    /// An `Account` of `namespace`.
    pub fn namespaced(name: &str, namespace: &str, secret: &SecretKeyRef) -> Self {
        AccountInfo {
            kind: AccountKind::Account,
            name: name.to_string(),
            secret_namespace: namespace.to_string(),
            secret: secret.clone(),
            rules: Rules::default(),
        }
    }

    fn reference(&self) -> AccountRef {
        AccountRef {
            kind: self.kind,
            name: self.name.clone(),
        }
    }
}

/// Another Inbox of the same namespace, as the per-namespace quota counts it.
#[derive(Clone, Debug, PartialEq)]
pub struct Peer {
    /// Its name (named in a quota refusal).
    pub name: String,
    /// Creation time and UID: the older Inbox gets a free slot first.
    pub seniority: (Option<jiff::Timestamp>, String),
    /// Bound to an inbox, or its create is in flight, on proof: it holds a slot.
    pub holds_inbox: bool,
    /// Being deleted.
    pub deleting: bool,
    /// Its `spec.accountRef`.
    pub account_ref: Option<AccountRef>,
    /// It sets `spec.credentials`.
    pub has_credentials: bool,
    /// Its `spec.domainId` (one the account refuses never takes a slot).
    pub domain_id: Option<String>,
}

impl Peer {
    /// The quota's view of `inbox`.
    pub fn of<I: InboxView>(inbox: &I, proof: &ProofKey) -> Self {
        let (meta, spec) = (inbox.meta(), inbox.spec());
        Peer {
            name: meta.name.clone().unwrap_or_default(),
            seniority: seniority(inbox),
            holds_inbox: holds_inbox(inbox, proof),
            deleting: meta.deletion_timestamp.is_some(),
            account_ref: spec.account_ref.as_deref().cloned(),
            has_credentials: spec.credentials.is_some(),
            domain_id: spec.domain_id.clone(),
        }
    }
}

fn seniority<I: InboxView>(inbox: &I) -> (Option<jiff::Timestamp>, String) {
    let meta = inbox.meta();
    (
        meta.creation_timestamp.as_ref().map(|t| t.0),
        meta.uid.clone().unwrap_or_default(),
    )
}

/// Whether `inbox` holds a quota slot: bound, or its create in flight, on proof (an
/// annotation a tenant wrote holds nothing, so it can neither take a slot nor skip the quota).
pub fn holds_inbox<I: InboxView>(inbox: &I, proof: &ProofKey) -> bool {
    proof.binding(inbox).is_some()
        || matches!(
            proof.pending(inbox),
            Some(Pending::Proven { .. } | Pending::Legacy(_))
        )
}

/// Count the peers whose UID is in `reserved` (let past the quota by this process, their
/// mark perhaps not yet in the cache) as holding their slot.
pub fn count_reserved(peers: &mut [Peer], reserved: &std::collections::HashSet<String>) {
    for p in peers {
        p.holds_inbox |= reserved.contains(&p.seniority.1);
    }
}

/// The longest API key accepted from a Secret: the operator keeps per-account state keyed
/// by the key, so a tenant's Secret must not be able to make that state arbitrarily large.
pub const MAX_KEY_LEN: usize = 512;

/// Everything the resolution reads.
#[derive(Clone, Debug, Default)]
pub struct Inputs {
    /// The account `spec.accountRef` names, if it exists.
    pub referenced: Option<AccountInfo>,
    /// The `ClusterAccount`s marked default, oldest first.
    pub defaults: Vec<AccountInfo>,
    /// The labels of the Inbox's namespace (`None`: not readable).
    pub namespace_labels: Option<BTreeMap<String, String>>,
    /// The other Inboxes of the namespace.
    pub peers: Vec<Peer>,
    /// The pass deletes the Inbox: only the key matters.
    pub cleanup: bool,
    /// This Inbox holds a quota slot ([`holds_inbox`]).
    pub holds_inbox: bool,
}

/// Where the key comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum Source {
    /// Read it from this Secret.
    Secret {
        /// The Secret's namespace.
        namespace: String,
        /// Its name and key.
        secret: SecretKeyRef,
        /// The account naming it (`None`: the Inbox's own `spec.credentials`).
        account: Option<AccountRef>,
    },
    /// The operator's default key.
    OperatorDefault,
    /// Refused (`AccountRefused`); the message names the rule.
    Refused(String),
    /// No key can be had (during deletion: the key last used may still work).
    Missing(String),
}

/// Whether deciding for `inbox` needs its namespace's labels (a `ClusterAccount` whose rules
/// apply has a `namespaceSelector`; the default's namespace rules apply when deleting too:
/// they say which key the inbox was created with).
pub fn needs_namespace_labels(inputs: &Inputs) -> bool {
    inputs
        .referenced
        .iter()
        .filter(|_| !inputs.cleanup)
        .chain(inputs.defaults.first())
        .any(|a| a.rules.namespace_selector.is_some())
}

/// Whether deciding for `inbox` needs the other Inboxes of its namespace (an account whose
/// rules may apply sets `maxInboxesPerNamespace`; deleting never checks the quota). Listing
/// them costs a walk over the whole Inbox cache, so a pass without a quota skips it.
pub fn needs_peers(inputs: &Inputs) -> bool {
    !inputs.cleanup
        && inputs
            .referenced
            .iter()
            .chain(inputs.defaults.first())
            .any(|a| a.rules.max_inboxes_per_namespace.is_some())
}

/// The key source of `inbox`.
pub fn resolve(inbox: &Inbox, inputs: &Inputs) -> Source {
    let ns = inbox.metadata.namespace.as_deref().unwrap_or_default();
    let spec = &inbox.spec;
    if spec.account_ref.is_some() && spec.credentials.is_some() {
        return refused(
            inputs,
            "spec.accountRef and spec.credentials are both set; keep one".into(),
        );
    }
    if let Some(r) = &spec.account_ref {
        return match &inputs.referenced {
            Some(account) => use_account(inbox, inputs, account),
            None if r.kind == AccountKind::Account => refused(
                inputs,
                format!("Account {:?} not found in namespace {ns:?}", r.name),
            ),
            None => refused(inputs, format!("ClusterAccount {:?} not found", r.name)),
        };
    }
    if let Some(c) = &spec.credentials {
        return Source::Secret {
            namespace: ns.to_string(),
            secret: c.secret_ref.clone(),
            account: None,
        };
    }
    match inputs.defaults.first() {
        Some(default) if namespace_refusal(ns, inputs, default).is_none() => {
            use_account(inbox, inputs, default)
        }
        _ => Source::OperatorDefault,
    }
}

/// The refusal of an account's missing part: during deletion, a missing key instead.
fn refused(inputs: &Inputs, msg: String) -> Source {
    if inputs.cleanup {
        Source::Missing(msg)
    } else {
        Source::Refused(msg)
    }
}

fn use_account(inbox: &Inbox, inputs: &Inputs, account: &AccountInfo) -> Source {
    if !inputs.cleanup
        && let Some(msg) = rule_refusal(inbox, inputs, account)
    {
        return Source::Refused(msg);
    }
    Source::Secret {
        namespace: account.secret_namespace.clone(),
        secret: account.secret.clone(),
        account: Some(account.reference()),
    }
}

/// The first rule of `account` that refuses `inbox`, as a message.
fn rule_refusal(inbox: &Inbox, inputs: &Inputs, account: &AccountInfo) -> Option<String> {
    let ns = inbox.metadata.namespace.as_deref().unwrap_or_default();
    if let Some(msg) = namespace_refusal(ns, inputs, account) {
        return Some(msg);
    }
    if let Some(allowed) = &account.rules.allowed_domain_ids {
        let domain = inbox.spec.domain_id.as_deref();
        if !domain_allowed(account, domain) {
            let what = match domain {
                Some(d) => format!("domainId {d:?}"),
                None => "the shared domain (no domainId)".to_string(),
            };
            return Some(format!(
                "{} {:?} does not allow {what}: allowedDomainIds is [{}]",
                account.kind,
                account.name,
                allowed.join(", ")
            ));
        }
    }
    if let Some(msg) = adoption_refusal(inbox, inputs, account) {
        return Some(msg);
    }
    quota_refusal(inbox, inputs, account)
}

/// `adoptionPolicy: Deny`: an Inbox not yet bound may not take an existing inbox.
fn adoption_refusal(inbox: &Inbox, inputs: &Inputs, account: &AccountInfo) -> Option<String> {
    if account.rules.adoption_policy != AdoptionPolicy::Deny || inputs.holds_inbox {
        return None;
    }
    let how = if inbox.spec.inbox_id.is_some() {
        "spec.inboxId adoption"
    } else if inbox.is_observe_only() {
        "managementPolicy Observe"
    } else {
        return None;
    };
    Some(format!(
        "{} {:?} refuses {how} (adoptionPolicy: Deny): Inboxes on it get only inboxes the operator creates for them; remove spec.inboxId and managementPolicy Observe, or use another account",
        account.kind, account.name
    ))
}

/// Whether `account` allows `domain` (`None`: the shared domain).
fn domain_allowed(account: &AccountInfo, domain: Option<&str>) -> bool {
    match &account.rules.allowed_domain_ids {
        Some(allowed) => domain.is_some_and(|d| allowed.iter().any(|a| a == d)),
        None => true,
    }
}

/// Why `account` does not serve namespace `ns`, if it does not.
fn namespace_refusal(ns: &str, inputs: &Inputs, account: &AccountInfo) -> Option<String> {
    let rules = &account.rules;
    if rules.namespaces.is_none() && rules.namespace_selector.is_none() {
        return None;
    }
    let named = rules
        .namespaces
        .as_ref()
        .is_some_and(|names| names.iter().any(|n| n == ns));
    if named {
        return None;
    }
    let mut why = Vec::new();
    if rules.namespaces.is_some() {
        why.push("it is not in spec.namespaces".to_string());
    }
    if let Some(sel) = &rules.namespace_selector {
        match (
            Selector::try_from(sel.clone()),
            inputs.namespace_labels.as_ref(),
        ) {
            (Ok(s), Some(labels)) if s.matches(labels) => return None,
            (Ok(s), Some(_)) => why.push(format!("its labels do not match spec.namespaceSelector ({s})")),
            (Ok(_), None) => why.push(
                "its labels cannot be read to check spec.namespaceSelector (the operator needs get on namespaces)".to_string(),
            ),
            (Err(e), _) => why.push(format!("spec.namespaceSelector is invalid: {}", e.0)),
        }
    }
    Some(format!(
        "{} {:?} does not allow namespace {ns:?}: {}",
        account.kind,
        account.name,
        why.join(", and ")
    ))
}

/// The per-namespace quota: bound Inboxes (and creates in flight) hold their slots; among
/// the others the oldest get the free ones. An Inbox already holding an inbox is never
/// refused by the quota.
fn quota_refusal(inbox: &Inbox, inputs: &Inputs, account: &AccountInfo) -> Option<String> {
    let max = account.rules.max_inboxes_per_namespace?;
    if inputs.holds_inbox {
        return None;
    }
    let me = seniority(inbox);
    let is_default = inputs.defaults.first() == Some(account);
    let uses = |p: &Peer| match &p.account_ref {
        Some(r) => *r == account.reference(),
        None => is_default && !p.has_credentials,
    };
    let mut ahead: Vec<&str> = inputs
        .peers
        .iter()
        .filter(|p| p.seniority != me && uses(p))
        .filter(|p| {
            p.holds_inbox
                || (!p.deleting
                    && p.seniority < me
                    && domain_allowed(account, p.domain_id.as_deref()))
        })
        .map(|p| p.name.as_str())
        .collect();
    if ahead.len() < usize::try_from(max).unwrap_or(0) {
        return None;
    }
    ahead.sort_unstable();
    Some(format!(
        "{} {:?} allows at most {max} Inboxes per namespace (maxInboxesPerNamespace), and namespace {:?} has {} ({})",
        account.kind,
        account.name,
        inbox.metadata.namespace.as_deref().unwrap_or_default(),
        ahead.len(),
        ahead.join(", ")
    ))
}

/// The credentials of a pass: the key read from `source`'s Secret (`value`: `None` when the
/// Secret does not exist, `Some(None)` when it lacks the key), the operator's default key
/// (`default`), or why there is none.
pub fn credentials(
    source: &Source,
    value: Option<Option<String>>,
    default: Option<ApiKey>,
    cleanup: bool,
) -> Credentials {
    let (namespace, secret, account) = match source {
        Source::Refused(m) => return Credentials::Refused(m.clone()),
        Source::Missing(m) => return Credentials::Missing(m.clone()),
        Source::OperatorDefault => {
            return match default {
                Some(k) => Credentials::Key(k),
                None => Credentials::Missing(
                    "no spec.accountRef or spec.credentials, no default ClusterAccount for this namespace, and the operator has no default API key (AGENTSEND_API_KEY or --api-key-file)".into(),
                ),
            };
        }
        Source::Secret {
            namespace,
            secret,
            account,
        } => (namespace, secret, account),
    };
    let whose = match account {
        Some(a) => format!("the key Secret of {} {:?}", a.kind, a.name),
        None => "credentials Secret".to_string(),
    };
    let missing = match value {
        Some(Some(v)) if v.trim().len() > MAX_KEY_LEN => format!(
            "{whose} {:?} holds a key {:?} longer than {MAX_KEY_LEN} bytes, which no AgentSend key is; check the Secret",
            secret.name, secret.key
        ),
        Some(v) => match v.and_then(ApiKey::new) {
            Some(k) => return Credentials::Key(k),
            None => format!(
                "{whose} {:?} has no non-empty key {:?}",
                secret.name, secret.key
            ),
        },
        None => format!(
            "{whose} {:?} not found in namespace {namespace:?}",
            secret.name
        ),
    };
    if account.is_some() && !cleanup {
        Credentials::Refused(missing)
    } else {
        Credentials::Missing(missing)
    }
}

/// The API key under `key` in `secret`, if there is a non-empty one.
pub fn api_key_in(secret: Option<k8s_openapi::api::core::v1::Secret>, key: &str) -> Option<ApiKey> {
    let bytes = secret?.data?.remove(key)?;
    ApiKey::new(String::from_utf8_lossy(&bytes.0))
}

/// The default `ClusterAccount`s among `all`, oldest first (the first one is used).
pub fn defaults(
    all: &[std::sync::Arc<ClusterAccount>],
    operator_namespace: &str,
) -> Vec<AccountInfo> {
    let mut marked: Vec<&ClusterAccount> = all
        .iter()
        .map(|a| &**a)
        .filter(|a| a.is_default() && a.metadata.deletion_timestamp.is_none())
        .collect();
    marked.sort_by_key(|a| {
        (
            a.metadata.creation_timestamp.as_ref().map(|t| t.0),
            a.metadata.name.clone(),
        )
    });
    marked
        .into_iter()
        .map(|a| {
            AccountInfo::cluster(
                a.metadata.name.as_deref().unwrap_or_default(),
                &a.spec,
                operator_namespace,
            )
        })
        .collect()
}

/// Of `targets`, those none of `users` (what the remaining Inboxes may use) names.
pub fn unused<'a>(targets: &'a [InUse], users: &[InUse]) -> Vec<&'a InUse> {
    targets.iter().filter(|t| !users.contains(t)).collect()
}

#[cfg(test)]
mod tests;
