//! `inbox-operator import`: print ready-to-apply Inbox YAML for every inbox of the AgentSend
//! account that no Inbox in the cluster claims yet (`ackctl adopt` / `asoctl import` for
//! inboxes). Each adopts its inbox by `spec.inboxId` with `deletionPolicy: Orphan`, under a
//! name derived from the address. Reads only: it lists the account and the cluster's Inboxes,
//! writes nothing, and never prints the API key.

use std::collections::{BTreeMap, HashSet};

use kube::api::{Api, ListParams};
use kube::{Client, Config};
use thiserror::Error;

use crate::agentsend::{AgentSendClient, ApiKey, ClientOptions, RemoteInbox};
use crate::api::inbox::{self, Inbox};
use crate::cli::ImportArgs;

/// Longest generated name: a DNS-1123 label (also a valid Secret name and label value).
const MAX_NAME: usize = 63;
/// Hex characters of the address's hash appended when a name would not be unique.
const HASH_LEN: usize = 8;

/// Why `import` could not print anything. Each message says what to do.
#[derive(Debug, Error)]
pub enum ImportError {
    /// No API key.
    #[error(
        "no AgentSend API key: set AGENTSEND_API_KEY or --api-key-file (the account whose inboxes are imported)"
    )]
    NoKey,
    /// `--api-key-file` cannot be read (or is empty).
    #[error("cannot read an API key from {path}: {reason}")]
    KeyFile {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// No usable Kubernetes configuration, or the API server refused the list.
    #[error(
        "cannot list the Inboxes in the cluster ({0}); set KUBECONFIG and check that you may list inboxes.agentsend.io in all namespaces"
    )]
    Kube(String),
    /// AgentSend refused or failed the listing.
    #[error("cannot list the AgentSend account: {0}")]
    AgentSend(String),
    /// The YAML could not be rendered.
    #[error("cannot render the YAML: {0}")]
    Render(String),
}

/// Run `import`: the YAML on success.
pub async fn run(args: &ImportArgs) -> Result<String, ImportError> {
    let key = api_key(args)?;
    let (claimed, taken) = cluster_claims(&args.namespace).await?;
    let api = AgentSendClient::new(&args.endpoint.agentsend_url, ClientOptions::default())
        .map_err(|e| ImportError::AgentSend(e.to_string()))?;
    let account = api
        .list_all(&key)
        .await
        .map_err(|e| ImportError::AgentSend(e.to_string()))?;
    let selected: Vec<&RemoteInbox> = account
        .iter()
        .filter(|r| !claimed.contains(&r.id) && on_domain(r, args.domain.as_deref()))
        .collect();
    render(&selected, &args.namespace, &taken, args.observe)
}

/// The key: `--api-key-file`, else `AGENTSEND_API_KEY`.
fn api_key(args: &ImportArgs) -> Result<ApiKey, ImportError> {
    if let Some(path) = &args.api_key_file {
        let key_file = |reason: String| ImportError::KeyFile {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| key_file(e.to_string()))?;
        return ApiKey::new(&text).ok_or_else(|| key_file("it is empty".into()));
    }
    std::env::var("AGENTSEND_API_KEY")
        .ok()
        .and_then(ApiKey::new)
        .ok_or(ImportError::NoKey)
}

/// Every inbox ID an Inbox anywhere in the cluster names (spec, annotation or status), and
/// the names of the Inboxes in `namespace` (a generated name never replaces one).
async fn cluster_claims(
    namespace: &str,
) -> Result<(HashSet<String>, HashSet<String>), ImportError> {
    let kube = |e: &dyn std::fmt::Display| ImportError::Kube(e.to_string());
    let mut config = Config::infer().await.map_err(|e| kube(&e))?;
    crate::controller::cache::watches::harden(&mut config);
    let client = Client::try_from(config).map_err(|e| kube(&e))?;
    let all: Api<Inbox> = Api::all(client);
    let list = all
        .list(&ListParams::default())
        .await
        .map_err(|e| kube(&e))?;
    let mut claimed = HashSet::new();
    let mut taken = HashSet::new();
    for i in list.items {
        claimed.extend(i.spec.inbox_id.clone());
        claimed.extend(i.annotation(inbox::ANNOTATION_INBOX_ID).map(str::to_string));
        claimed.extend(i.status.as_ref().and_then(|s| s.inbox_id.clone()));
        if i.metadata.namespace.as_deref() == Some(namespace) {
            taken.extend(i.metadata.name.clone());
        }
    }
    claimed.remove("");
    Ok((claimed, taken))
}

/// Whether `r` is on `domain` (a domain ID, or the address's domain); any without a filter.
pub fn on_domain(r: &RemoteInbox, domain: Option<&str>) -> bool {
    let Some(d) = domain else { return true };
    let address_domain = r.address.rsplit_once('@').map(|(_, d)| d);
    r.domain_id.as_deref() == Some(d) || address_domain.is_some_and(|a| a.eq_ignore_ascii_case(d))
}

/// A DNS-1123 label from an address: lowercase letters and digits, every other run of
/// characters one `-` (`Support.Team@example.com` → `support-team-example-com`), at most 63.
pub fn base_name(address: &str) -> String {
    let mut name = String::new();
    for c in address.chars() {
        if c.is_ascii_alphanumeric() {
            name.push(c.to_ascii_lowercase());
        } else if !name.ends_with('-') {
            name.push('-');
        }
    }
    let name = name.trim_matches('-');
    let name = if name.is_empty() { "inbox" } else { name };
    name[..name.len().min(MAX_NAME)]
        .trim_end_matches('-')
        .to_string()
}

/// A name per inbox, deterministic and unique: the base name, or — when two addresses share
/// it, or an Inbox of that name exists in the namespace — the base name (shortened to fit)
/// with `-` and 8 hex characters of the address's SHA-256.
pub fn names(addresses: &[&str], taken: &HashSet<String>) -> Vec<String> {
    let bases: Vec<String> = addresses.iter().map(|a| base_name(a)).collect();
    let mut count: BTreeMap<&str, usize> = BTreeMap::new();
    for b in &bases {
        *count.entry(b.as_str()).or_default() += 1;
    }
    addresses
        .iter()
        .zip(&bases)
        .map(|(address, base)| {
            if count[base.as_str()] == 1 && !taken.contains(base) {
                return base.clone();
            }
            let head = &base[..base.len().min(MAX_NAME - HASH_LEN - 1)];
            let hash = crate::controller::inbox::outputs::meta::short_hash(address, HASH_LEN);
            format!("{}-{hash}", head.trim_end_matches('-'))
        })
        .collect()
}

/// The YAML documents, sorted by address, each preceded by a comment naming its inbox;
/// `observe`: observe-only Inboxes (`managementPolicy: Observe`).
pub fn render(
    inboxes: &[&RemoteInbox],
    namespace: &str,
    taken: &HashSet<String>,
    observe: bool,
) -> Result<String, ImportError> {
    let mut sorted = inboxes.to_vec();
    sorted.sort_by(|a, b| a.address.cmp(&b.address).then(a.id.cmp(&b.id)));
    let addresses: Vec<&str> = sorted.iter().map(|r| r.address.as_str()).collect();
    let names = names(&addresses, taken);
    let mut out = format!(
        "# {} AgentSend inbox(es) no Inbox claims yet; adopt them with: kubectl apply -f FILE\n",
        sorted.len()
    );
    for (r, name) in sorted.iter().zip(names) {
        let mut doc = serde_json::json!({
            "apiVersion": "agentsend.io/v1alpha1",
            "kind": "Inbox",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"inboxId": r.id, "deletionPolicy": "Orphan"},
        });
        if observe {
            doc["spec"]["managementPolicy"] = "Observe".into();
        }
        let yaml = serde_yaml::to_string(&doc).map_err(|e| ImportError::Render(e.to_string()))?;
        // The address comes from the API: escaped, so no newline in it can end the comment
        // and inject YAML into output users pipe to `kubectl apply`.
        out.push_str(&format!(
            "---\n# {} ({})\n{yaml}",
            r.address.escape_debug(),
            r.status.as_str()
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An address from the API with a newline cannot end its comment and inject a document
    /// (a ClusterRoleBinding, say) into output users pipe to `kubectl apply`.
    #[test]
    fn api_text_cannot_inject_yaml() {
        let mut hostile = RemoteInbox::fixture("inb_1", "x@agentsend.io");
        hostile.address =
            "x@agentsend.io\n---\nkind: ClusterRoleBinding\nmetadata:\n  name: pwned\r\n".into();
        let out = render(&[&hostile], "team", &HashSet::new(), false).unwrap();
        let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&out)
            .map(|d| serde_yaml::Value::deserialize(d).unwrap())
            .filter(|v| !v.is_null())
            .collect();
        assert_eq!(docs.len(), 1, "{out}");
        assert_eq!(docs[0]["kind"], "Inbox", "{out}");
        assert!(!out.contains("\nkind: ClusterRoleBinding"), "{out}");
    }

    #[test]
    fn names_are_dns_labels_derived_from_the_address() {
        let long = format!("{}@agentsend.io", "a".repeat(80));
        let cases = [
            ("support@agentsend.io", "support-agentsend-io"),
            ("Support.Team@Example.com", "support-team-example-com"),
            ("__x__@y", "x-y"),
            ("@@@", "inbox"),
        ];
        for (address, want) in cases {
            assert_eq!(base_name(address), want, "{address}");
        }
        let n = base_name(&long);
        assert!(n.len() <= 63 && !n.ends_with('-'), "{n}");
    }

    #[test]
    fn names_are_unique_and_deterministic() {
        let taken: HashSet<String> = ["ops-agentsend-io".to_string()].into();
        let addresses = ["a.b@x.io", "a-b@x.io", "ops@agentsend.io", "solo@x.io"];
        let got = names(&addresses, &taken);
        assert_eq!(got, names(&addresses, &taken), "deterministic");
        assert_eq!(got[3], "solo-x-io", "unique and free: the plain name");
        let distinct: HashSet<&String> = got.iter().collect();
        assert_eq!(distinct.len(), 4, "{got:?}");
        for (name, address) in got.iter().zip(addresses).take(3) {
            let hash = crate::controller::inbox::outputs::meta::short_hash(address, HASH_LEN);
            assert!(name.ends_with(&hash), "{name} for {address}");
            assert!(name.len() <= 63);
        }
    }

    #[test]
    fn output_adopts_with_orphan_and_filters_by_domain() {
        let mut custom = RemoteInbox::fixture("inb_2", "sales@example.com");
        custom.domain_id = Some("dom_example".into());
        let shared = RemoteInbox::fixture("inb_1", "bot@agentsend.io");
        assert!(on_domain(&custom, Some("dom_example")));
        assert!(on_domain(&custom, Some("EXAMPLE.com")));
        assert!(!on_domain(&shared, Some("example.com")));
        assert!(on_domain(&shared, None));
        let yaml = render(&[&custom, &shared], "team", &HashSet::new(), false).unwrap();
        let docs: Vec<serde_json::Value> = serde_yaml::Deserializer::from_str(&yaml)
            .map(|d| serde_json::Value::deserialize(d).unwrap())
            .filter(|v| !v.is_null())
            .collect();
        assert_eq!(docs.len(), 2, "{yaml}");
        assert_eq!(docs[0]["metadata"]["name"], "bot-agentsend-io");
        assert_eq!(docs[0]["metadata"]["namespace"], "team");
        assert_eq!(docs[0]["spec"]["inboxId"], "inb_1");
        assert_eq!(docs[1]["spec"]["deletionPolicy"], "Orphan");
        let typed: Inbox = serde_json::from_value(docs[1].clone()).unwrap();
        assert_eq!(typed.spec.inbox_id.as_deref(), Some("inb_2"));
        assert_eq!(
            typed.spec.management_policy,
            inbox::ManagementPolicy::Manage
        );
        let observed = render(&[&custom], "team", &HashSet::new(), true).unwrap();
        assert!(observed.contains("managementPolicy: Observe"), "{observed}");
    }

    use serde::Deserialize;
}
