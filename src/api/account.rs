//! The account resources (`accounts.agentsend.io` and `clusteraccounts.agentsend.io`,
//! `v1alpha1`): where an Inbox's API key comes from, and — for a `ClusterAccount` shared by
//! many namespaces — which namespaces may use it, on which domains, and how many Inboxes each
//! may hold. An Inbox names one with `spec.accountRef`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::{CustomResource, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::api::common::SecretKeyRef;
use crate::api::inbox::Condition;

/// Annotation on a `ClusterAccount`: `"true"` makes it the account of Inboxes that name none.
pub const ANNOTATION_DEFAULT_ACCOUNT: &str = "agentsend.io/default-account";
/// Finalizer on a key Secret (and on the account naming it) while an Inbox uses it: deleting
/// a namespace removes its Inboxes first and their credentials last.
pub const FINALIZER_CREDENTIALS_IN_USE: &str = "agentsend.io/credentials-in-use";
/// Where the operator's namespace is read when `POD_NAMESPACE` is unset.
pub const SERVICE_ACCOUNT_NAMESPACE_FILE: &str =
    "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// An AgentSend account for the Inboxes of one namespace: its API key is read from a Secret
/// in the Account's own namespace.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "agentsend.io",
    version = "v1alpha1",
    kind = "Account",
    plural = "accounts",
    singular = "account",
    namespaced,
    status = "AccountStatus",
    shortname = "acct",
    category = "agentsend",
    derive = "PartialEq",
    derive = "Default",
    doc = "An AgentSend account (API key) for the Inboxes of its namespace.",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Inboxes","type":"integer","jsonPath":".status.inboxes"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Message","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"Ready\")].message"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct AccountSpec {
    /// The Secret (in the Account's namespace) and key holding the API key.
    pub secret_ref: SecretKeyRef,
}

/// An AgentSend account shared across namespaces: its API key is read from a Secret in the
/// operator's namespace; it says which namespaces may use it, on which domains, and how many
/// Inboxes each may hold.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "agentsend.io",
    version = "v1alpha1",
    kind = "ClusterAccount",
    plural = "clusteraccounts",
    singular = "clusteraccount",
    status = "AccountStatus",
    shortname = "cacct",
    category = "agentsend",
    derive = "PartialEq",
    derive = "Default",
    doc = "An AgentSend account (API key) shared by the namespaces it allows.",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Inboxes","type":"integer","jsonPath":".status.inboxes"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Message","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"Ready\")].message"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ClusterAccountSpec {
    /// The Secret (in the operator's namespace) and key holding the API key.
    pub secret_ref: SecretKeyRef,
    /// Namespaces whose labels match may use this account. With `namespaces`, a namespace
    /// matching either may; with neither, every namespace may.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// Namespaces (by name) that may use this account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxItems" = 1000))]
    pub namespaces: Option<Vec<String>>,
    /// The only `domainId`s Inboxes on this account may use (omitted: any, including the
    /// shared domain; an Inbox without `domainId` needs the list to be absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxItems" = 1000))]
    pub allowed_domain_ids: Option<Vec<String>>,
    /// At most this many Inboxes per namespace on this account (omitted: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("minimum" = 0))]
    pub max_inboxes_per_namespace: Option<i32>,
    /// Whether Inboxes may take existing inboxes of this account: `spec.inboxId` adoption and
    /// `managementPolicy: Observe` binding (omitted: `Allow`). With `Deny`, Inboxes on this
    /// account only ever get inboxes the operator created for them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adoption_policy: Option<AdoptionPolicy>,
}

/// Whether a `ClusterAccount` lets Inboxes take existing inboxes.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum AdoptionPolicy {
    /// `spec.inboxId` and `managementPolicy: Observe` may bind existing inboxes.
    #[default]
    Allow,
    /// Refused (`AccountRefused`, no AgentSend call): every inbox is one the operator made.
    Deny,
}

/// Observed state of an account.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccountStatus {
    /// `Ready`: the last scan of the account with its key succeeded (`False` with
    /// `CredentialsMissing`, `CredentialsInvalid` or `ApiUnavailable`, and a message).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Inboxes bound through this account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inboxes: Option<i64>,
    /// Inboxes in the AgentSend account that no Inbox in the cluster claims.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unclaimed_inboxes: Option<i64>,
    /// RFC 3339 time of the last successful scan of the account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scan_time: Option<String>,
    /// AgentSend requests per second sent with this account's key over the last sync
    /// interval (two significant digits, never finer than 0.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_rate: Option<f64>,
    /// AgentSend answers that were 429 (rate limited) over the last sync interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limited_requests: Option<i64>,
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

impl ClusterAccount {
    /// Whether the `agentsend.io/default-account` annotation marks this account the default.
    pub fn is_default(&self) -> bool {
        self.annotations()
            .get(ANNOTATION_DEFAULT_ACCOUNT)
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    }
}

/// The operator's namespace, where `ClusterAccount` key Secrets live: `pod_namespace`
/// (`POD_NAMESPACE`), else `service_account_namespace` (the in-cluster service-account
/// namespace file's content), else `default`.
pub fn operator_namespace(
    pod_namespace: Option<&str>,
    service_account_namespace: Option<&str>,
) -> String {
    [pod_namespace, service_account_namespace]
        .into_iter()
        .flatten()
        .map(str::trim)
        .find(|s| !s.is_empty())
        .unwrap_or("default")
        .to_string()
}

/// [`operator_namespace`] from `given` (`--operator-namespace`, or `POD_NAMESPACE`), else the
/// service-account file.
pub fn operator_namespace_or(given: Option<&str>) -> String {
    let sa = std::fs::read_to_string(SERVICE_ACCOUNT_NAMESPACE_FILE).ok();
    operator_namespace(given, sa.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    #[test]
    fn the_operator_namespace_falls_back_in_order() {
        for (pod, sa, want) in [
            (Some("ops"), Some("sa-ns"), "ops"),
            (None, Some("sa-ns\n"), "sa-ns"),
            (Some(" "), Some("sa-ns"), "sa-ns"),
            (None, None, "default"),
            (Some(""), Some(""), "default"),
        ] {
            assert_eq!(operator_namespace(pod, sa), want, "{pod:?} {sa:?}");
        }
    }

    #[test]
    fn names_scopes_and_schema() {
        let a = Account::crd();
        assert_eq!(a.metadata.name.as_deref(), Some("accounts.agentsend.io"));
        assert_eq!(a.spec.scope, "Namespaced");
        let c = ClusterAccount::crd();
        assert_eq!(
            c.metadata.name.as_deref(),
            Some("clusteraccounts.agentsend.io")
        );
        assert_eq!(c.spec.scope, "Cluster");
        for (crd, short) in [(&a, "acct"), (&c, "cacct")] {
            assert_eq!(crd.spec.names.short_names, Some(vec![short.to_string()]));
            assert_eq!(
                crd.spec.names.categories,
                Some(vec!["agentsend".to_string()])
            );
            let cols: Vec<_> = crd.spec.versions[0]
                .additional_printer_columns
                .iter()
                .flatten()
                .map(|col| (col.name.as_str(), col.priority.unwrap_or(0)))
                .collect();
            assert_eq!(
                cols,
                [
                    ("Ready", 0),
                    ("Reason", 0),
                    ("Inboxes", 0),
                    ("Age", 0),
                    ("Message", 1)
                ]
            );
        }
        let v = serde_json::to_value(&c).unwrap();
        let spec = &v["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        for field in [
            "secretRef",
            "namespaceSelector",
            "namespaces",
            "allowedDomainIds",
            "maxInboxesPerNamespace",
        ] {
            assert!(spec["properties"].get(field).is_some(), "{field}");
        }
        assert_eq!(
            spec["properties"]["secretRef"]["properties"]["key"]["default"],
            "apiKey"
        );
    }

    #[test]
    fn the_default_annotation() {
        let mut c = ClusterAccount::new("shared", ClusterAccountSpec::default());
        assert!(!c.is_default());
        c.annotations_mut()
            .insert(ANNOTATION_DEFAULT_ACCOUNT.into(), "true".into());
        assert!(c.is_default());
    }
}
