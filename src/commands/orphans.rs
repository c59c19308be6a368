//! `inbox-operator orphans --account NAME [--namespace NS]`: the inboxes of an account that no
//! Inbox in the cluster claims — leaks after manual creation or old bugs — as IDs and
//! addresses, never the key. The same count is the account's `status.unclaimedInboxes`.

use std::collections::HashSet;

use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, ListParams};

use crate::agentsend::{AgentSendClient, ApiKey, ClientOptions};
use crate::api::account::{Account, ClusterAccount};
use crate::api::common::SecretKeyRef;
use crate::api::inbox::Inbox;
use crate::cli::OrphansArgs;
use crate::controller::tally;

/// Why `orphans` could not answer.
#[derive(Debug, thiserror::Error)]
pub enum OrphansError {
    /// No Kubernetes access.
    #[error("{0}")]
    Startup(#[from] crate::runtime::startup::StartupError),
    /// The account does not exist.
    #[error("{0} not found (a ClusterAccount without --namespace, an Account with it)")]
    NoAccount(String),
    /// Its key Secret or key is missing.
    #[error(
        "the key Secret {name:?} in namespace {namespace:?} is missing or has no non-empty key {key:?}"
    )]
    NoKey {
        /// The Secret's namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The key in it.
        key: String,
    },
    /// A Kubernetes call failed.
    #[error("Kubernetes API call failed: {0}; check your access to accounts, secrets and inboxes")]
    Kube(#[from] kube::Error),
    /// AgentSend refused or failed.
    #[error("AgentSend: {0}")]
    Api(#[from] crate::agentsend::ApiError),
}

/// The report: one `ID  ADDRESS` line per unclaimed inbox, after a header.
pub async fn run(args: &OrphansArgs) -> Result<String, OrphansError> {
    crate::ensure_crypto_provider();
    let client = crate::runtime::startup::kube_client().await?;
    let (secret_ns, secret) = account_key_ref(&client, args).await?;
    let key = read_key(&client, &secret_ns, &secret).await?;
    let api = AgentSendClient::new(&args.endpoint.agentsend_url, ClientOptions::default())?;
    let listed = api.list_all(&key).await?;
    let inboxes: Api<Inbox> = Api::all(client);
    let claimed: HashSet<String> = inboxes
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .filter_map(Inbox::named_inbox_id)
        .collect();
    let (_, unclaimed) = tally(&listed, &claimed);
    let mut out = format!(
        "# {} of {} inboxes in the account are claimed by no Inbox\nID\tADDRESS\n",
        unclaimed.len(),
        listed.len()
    );
    for r in unclaimed {
        out.push_str(&format!("{}\t{}\n", r.id, r.address));
    }
    Ok(out)
}

/// The account's key Secret: (namespace, reference).
async fn account_key_ref(
    client: &Client,
    args: &OrphansArgs,
) -> Result<(String, SecretKeyRef), OrphansError> {
    match &args.namespace {
        Some(ns) => {
            let api: Api<Account> = Api::namespaced(client.clone(), ns);
            let a = api.get_opt(&args.account).await?.ok_or_else(|| {
                OrphansError::NoAccount(format!("Account {:?} in namespace {ns:?}", args.account))
            })?;
            Ok((ns.clone(), a.spec.secret_ref))
        }
        None => {
            let api: Api<ClusterAccount> = Api::all(client.clone());
            let a = api.get_opt(&args.account).await?.ok_or_else(|| {
                OrphansError::NoAccount(format!("ClusterAccount {:?}", args.account))
            })?;
            Ok((args.operator_namespace.clone(), a.spec.secret_ref))
        }
    }
}

async fn read_key(
    client: &Client,
    namespace: &str,
    secret: &SecretKeyRef,
) -> Result<ApiKey, OrphansError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    crate::controller::accounts::credentials::api_key_in(
        api.get_opt(&secret.name).await?,
        &secret.key,
    )
    .ok_or_else(|| OrphansError::NoKey {
        namespace: namespace.to_string(),
        name: secret.name.clone(),
        key: secret.key.clone(),
    })
}
