//! `inbox-operator crd`: the operator's CustomResourceDefinitions (Inbox, Account,
//! ClusterAccount), generated from the types in [`crate::api`]; `crds/` and the chart hold
//! the same files (checked by a test).

use std::collections::BTreeMap;

use kube::CustomResourceExt;

use crate::api::account::{Account, ClusterAccount};

/// Every CRD of the operator rendered as YAML, keyed by its committed file name
/// (`crds/<name>.yaml`).
pub fn crd_files() -> Result<BTreeMap<String, String>, serde_yaml::Error> {
    let mut files = BTreeMap::new();
    files.insert(
        "inboxes.agentsend.io.yaml".to_string(),
        crate::api::inbox::crd_yaml()?,
    );
    files.insert(
        "accounts.agentsend.io.yaml".to_string(),
        serde_yaml::to_string(&Account::crd())?,
    );
    files.insert(
        "clusteraccounts.agentsend.io.yaml".to_string(),
        serde_yaml::to_string(&ClusterAccount::crd())?,
    );
    Ok(files)
}
