//! The failures that fail a reconcile pass ([`enum@Error`]), each with a short metric label.

use std::time::Duration;

use thiserror::Error;

use crate::agentsend::ApiError;

use crate::controller::ownership::key_store as proof_store;

/// Failures that fail a reconcile pass (AgentSend failures while converging become
/// conditions instead; see [`crate::controller::inbox::plan`]). Each variant has a short metric label.
#[derive(Debug, Error)]
pub enum Error {
    /// The Kubernetes API refused or failed a call; retried with backoff.
    #[error("Kubernetes API call failed: {0}")]
    Kube(#[from] kube::Error),
    /// Adding the finalizer failed.
    #[error("could not add the finalizer: {0}")]
    AddFinalizer(#[source] kube::Error),
    /// Removing the finalizer failed.
    #[error("could not remove the finalizer: {0}")]
    RemoveFinalizer(#[source] kube::Error),
    /// An AgentSend call failed during deletion; the finalizer stays until it succeeds.
    #[error("{0}")]
    Api(#[from] ApiError),
    /// Credentials are missing; the finalizer stays until they exist (or the policy is Orphan).
    #[error("{0}")]
    CredentialsMissing(String),
    /// The object lacks a namespace, name or UID (never true for an object from the API).
    #[error("Inbox has no namespace, name or UID")]
    MissingObjectKey,
    /// A bug: the planner did not converge, or a step reached the wrong executor.
    #[error("internal error: {0}")]
    Internal(String),
    /// A failed pass whose retry delay the planner chose (it also holds back passes over the
    /// same inputs until then).
    #[error("{cause}")]
    Backoff {
        /// What failed.
        cause: Box<Error>,
        /// When to try again.
        retry: Duration,
    },
    /// This instance has not confirmed a lease renewal within the renew deadline (or lost
    /// the lease): the pass stopped before writing and is retried after [`Error::NOT_LEADING_RETRY`].
    #[error("not leading: the leader lease renewal is not confirmed, so this pass does not write")]
    NotLeading,
    /// Backing off from a failed deletion attempt over the same inputs (not a new failure).
    #[error("backing off from the last failed attempt; next attempt in {0:?}")]
    Held(Duration),
    /// The Account/ClusterAccount caches have not listed yet (check the operator may list
    /// and watch them: accounts, clusteraccounts).
    #[error(
        "the Account and ClusterAccount caches have not listed yet; check the operator's RBAC for accounts and clusteraccounts"
    )]
    AccountsNotSynced,
    /// Deleting: the credentials do not reach the bound inbox's account.
    #[error("{0}")]
    AccountChanged(String),
    /// The cluster-wide one-owner check could not be made.
    #[error("{0}")]
    OwnershipUnverified(String),
    /// The proof key could not be read or made.
    #[error("{0}")]
    ProofKey(#[from] proof_store::ProofKeyError),
}

impl Error {
    /// Metric label of a pass that found no API key.
    pub const CREDENTIALS_MISSING: &'static str = "credentials_missing";

    /// When a pass stopped by [`Error::NotLeading`] is retried.
    pub const NOT_LEADING_RETRY: Duration = Duration::from_secs(2);

    /// Short, stable label for `inbox_operator_reconcile_errors_total`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) | Error::AddFinalizer(_) | Error::RemoveFinalizer(_) => "kubernetes",
            Error::Api(e) => e.reason(),
            Error::CredentialsMissing(_) => Self::CREDENTIALS_MISSING,
            Error::MissingObjectKey => "invalid_object",
            Error::Internal(_) => "internal",
            Error::Backoff { cause, .. } => cause.metric_label(),
            Error::Held(_) => "held",
            Error::NotLeading => "not_leading",
            Error::AccountsNotSynced => "accounts_not_synced",
            Error::AccountChanged(_) => "account_changed",
            Error::OwnershipUnverified(_) => "ownership_unverified",
            Error::ProofKey(_) => "proof_key",
        }
    }
}

/// kube's finalizer helper wraps the pass's error; unwrap it so the error policy and the
/// metrics see the real cause.
impl From<kube::runtime::finalizer::Error<Error>> for Error {
    fn from(e: kube::runtime::finalizer::Error<Error>) -> Self {
        use kube::runtime::finalizer::Error as F;
        match e {
            F::ApplyFailed(inner) | F::CleanupFailed(inner) => inner,
            F::AddFinalizer(e) => Error::AddFinalizer(e),
            F::RemoveFinalizer(e) => Error::RemoveFinalizer(e),
            F::UnnamedObject => Error::MissingObjectKey,
            F::InvalidFinalizer => Error::Internal("invalid finalizer name".into()),
        }
    }
}
