//! The types both resources use: a reference to an account ([`AccountRef`]) and to a key in
//! a Secret ([`SecretKeyRef`]).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Default key inside a credentials Secret.
pub const DEFAULT_CREDENTIALS_KEY: &str = "apiKey";

/// Which kind of account an Inbox names.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum AccountKind {
    /// A namespaced `Account`, looked up in the Inbox's namespace.
    Account,
    /// A cluster-scoped `ClusterAccount`.
    ClusterAccount,
}

impl AccountKind {
    /// The kind's name.
    pub fn as_str(self) -> &'static str {
        match self {
            AccountKind::Account => "Account",
            AccountKind::ClusterAccount => "ClusterAccount",
        }
    }
}

impl std::fmt::Display for AccountKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `spec.accountRef` of an Inbox.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccountRef {
    /// `Account` (in the Inbox's namespace) or `ClusterAccount`.
    pub kind: AccountKind,
    /// The account's name.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub name: String,
}

/// A key in a Secret (of the Inbox's namespace, the Account's, or the operator's).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Secret name.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub name: String,
    /// Key in the Secret; defaults to `apiKey`.
    #[serde(default = "default_credentials_key")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

fn default_credentials_key() -> String {
    DEFAULT_CREDENTIALS_KEY.to_string()
}
