//! Where the proof key ([`crate::controller::ownership::proof`]) lives: the Secret `inbox-operator-proof-key` in the
//! operator's namespace. The first process to start makes it (create, so that of two replicas
//! starting at once one wins and both read the winner's key); every replica and shard reads
//! the same key, so each can check what another wrote. Losing the Secret loses the proofs:
//! bound Inboxes keep their inboxes through status, but a restore from a backup would need
//! `spec.inboxId` (see docs/concepts/trust.md).

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::{Client, ResourceExt};

use crate::controller::ownership::proof::{PROOF_SECRET, PROOF_SECRET_KEY, ProofKey, ShortKey};

/// Why the proof key could not be had.
#[derive(Debug, thiserror::Error)]
pub enum ProofKeyError {
    /// Reading or creating the Secret failed.
    #[error(
        "cannot read or create the proof-key Secret {namespace}/{PROOF_SECRET}: {source}; the operator needs get and create on Secrets in its own namespace"
    )]
    Kube {
        /// The operator's namespace.
        namespace: String,
        /// What the API server said.
        #[source]
        source: kube::Error,
    },
    /// The Secret exists without a usable key.
    #[error("{0}")]
    Short(#[from] ShortKey),
}

/// Read the proof key from `namespace`, making it first if there is none.
pub async fn load_or_create(client: &Client, namespace: &str) -> Result<ProofKey, ProofKeyError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let kube_err = |source| ProofKeyError::Kube {
        namespace: namespace.to_string(),
        source,
    };
    if let Some(existing) = api.get_opt(PROOF_SECRET).await.map_err(kube_err)? {
        return Ok(ProofKey::from_bytes(&key_bytes(&existing))?);
    }
    let fresh = ProofKey::generate();
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(PROOF_SECRET.into()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_string(),
                "inbox-operator".to_string(),
            )])),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(
            PROOF_SECRET_KEY.to_string(),
            ByteString(fresh.clone()),
        )])),
        ..Default::default()
    };
    match api.create(&PostParams::default(), &secret).await {
        Ok(created) => {
            tracing::info!(
                secret = %created.name_any(),
                namespace,
                "created the proof key (it proves which inboxes this operator bound; keep it with your backups)"
            );
            Ok(ProofKey::from_bytes(&fresh)?)
        }
        // Another replica made it first: use its key.
        Err(kube::Error::Api(s)) if s.code == 409 => {
            let winner = api.get(PROOF_SECRET).await.map_err(kube_err)?;
            Ok(ProofKey::from_bytes(&key_bytes(&winner))?)
        }
        Err(e) => Err(kube_err(e)),
    }
}

fn key_bytes(secret: &Secret) -> Vec<u8> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(PROOF_SECRET_KEY))
        .map(|b| b.0.clone())
        .unwrap_or_default()
}
