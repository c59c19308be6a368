//! The Inbox controller. One folder per concern:
//!
//! - [`inbox`]: the reconcile of one Inbox — the pure planner, the output rules, the status,
//!   the events, and the executor that runs the planned steps.
//! - [`accounts`]: which key an Inbox uses and whether its account lets it; the Account and
//!   ClusterAccount caches, the key-Secret watches, the credentials-in-use finalizer and the
//!   accounts' status.
//! - [`remote`]: what is kept of AgentSend's side per account: the scan cache, the create
//!   gates, the bindings, refreshes on demand.
//! - [`cache`]: the watches and what they fill: the compact Inbox cache, owned objects,
//!   claims, and what this process last wrote.
//! - [`ownership`]: the proof of ownership and its key.
//! - [`context`] (what every reconcile shares), [`error`] (what fails a pass) and [`run`]
//!   (wiring it all into kube-runtime Controllers, and the background tasks).

pub(crate) mod accounts;
pub(crate) mod cache;
pub(crate) mod context;
pub(crate) mod error;
pub(crate) mod inbox;
pub(crate) mod ownership;
pub(crate) mod remote;
pub(crate) mod run;

// The controller as the rest of the crate's users see it: the process starts it with these
// (runtime/, tests/, bench/); everything else stays inside.
pub use accounts::status::{StatusWriter, tally};
pub use cache::inbox::CachedInbox;
pub use cache::watches::harden as harden_kube_config;
pub use context::{DefaultKey, Settings};
pub use inbox::plan::backoff::MAX_RETRY_DELAY;
pub use inbox::status::{READY, UP_TO_DATE};
pub use ownership::key_store::{ProofKeyError, load_or_create as load_or_create_proof_key};
pub use ownership::proof::ProofKey;
pub use remote::refresh::MIN_INTERVAL as REFRESH_MIN_INTERVAL;
pub use run::run;
