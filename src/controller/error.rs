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

    /// Short, stable label for `inbox_operator_reconcile_errors_total`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) | Error::AddFinalizer(_) | Error::RemoveFinalizer(_) => "kubernetes",
            Error::Api(e) => e.reason(),
            Error::CredentialsMissing(_) => Self::CREDENTIALS_MISSING,
            Error::MissingObjectKey => "invalid_object",
            Error::Internal(_) => "internal",
            Error::AccountsNotSynced => "accounts_not_synced",
            Error::AccountChanged(_) => "account_changed",
            Error::OwnershipUnverified(_) => "ownership_unverified",
            Error::ProofKey(_) => "proof_key",
        }
    }
}

/// How a pass ended without finishing its work: a failure, or one of the two outcomes that
/// stop a pass without being failures of the Inbox.
#[derive(Debug, Error)]
pub enum Stop {
    /// The pass failed; the error policy backs off by cause.
    #[error(transparent)]
    Failed(Error),
    /// The pass failed and the planner chose when to try again (it also holds back passes
    /// over the same inputs until then).
    #[error("{cause}")]
    FailedRetryIn {
        /// What failed.
        cause: Error,
        /// When to try again.
        retry: Duration,
    },
    /// Not a failure: this instance has not confirmed a lease renewal within the renew
    /// deadline (or lost the lease), so the pass stopped before writing; it is retried after
    /// [`Stop::NOT_LEADING_RETRY`].
    #[error("not leading: the leader lease renewal is not confirmed, so this pass does not write")]
    NotLeading,
    /// Not a failure: backing off from the last failed attempt over the same inputs.
    #[error("backing off from the last failed attempt; next attempt in {0:?}")]
    Held(Duration),
}

impl Stop {
    /// When a pass stopped by [`Stop::NotLeading`] is retried.
    pub const NOT_LEADING_RETRY: Duration = Duration::from_secs(2);

    /// The label a stopped pass is counted under in `inbox_operator_reconcile_errors_total`;
    /// `None` for a held pass, which is no attempt (the failure it waits out was counted).
    pub fn metric_label(&self) -> Option<&'static str> {
        match self {
            Stop::Failed(e) | Stop::FailedRetryIn { cause: e, .. } => Some(e.metric_label()),
            Stop::NotLeading => Some("not_leading"),
            Stop::Held(_) => None,
        }
    }
}

impl<E: Into<Error>> From<E> for Stop {
    fn from(e: E) -> Self {
        Stop::Failed(e.into())
    }
}

/// kube's finalizer helper wraps how the pass ended; unwrap it so the metrics and the error
/// policy see the real cause.
impl From<kube::runtime::finalizer::Error<Stop>> for Stop {
    fn from(e: kube::runtime::finalizer::Error<Stop>) -> Self {
        use kube::runtime::finalizer::Error as F;
        match e {
            F::ApplyFailed(inner) | F::CleanupFailed(inner) => inner,
            F::AddFinalizer(e) => Stop::Failed(Error::AddFinalizer(e)),
            F::RemoveFinalizer(e) => Stop::Failed(Error::RemoveFinalizer(e)),
            F::UnnamedObject => Stop::Failed(Error::MissingObjectKey),
            F::InvalidFinalizer => Stop::Failed(Error::Internal("invalid finalizer name".into())),
        }
    }
}
