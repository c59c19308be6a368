//! inbox-operator: manage AgentSend email inboxes declaratively from Kubernetes.
//!
//! Layout: [`crd`] (the public resource), [`account`] (the account resources), [`agentsend`] (HTTP client for the AgentSend API),
//! [`controller`] (the reconcile: a pure planner, the executor of
//! its steps, watches and per-account caches), [`operator`] and [`leader`] (the `run`
//! command: startup, signals, the lease), [`metrics`], [`server`] and [`secure_metrics`] (`/metrics` over HTTPS with
//! TokenReview/SubjectAccessReview, health).
//! The AgentSend simulator used by tests and the demo is a separate workspace crate
//! (`inbox-sim`, in `sim/`): the operator contains no simulator.
#![forbid(unsafe_code)]

pub mod account;
pub mod agentsend;
pub mod compact;
pub mod controller;
pub mod crd;
pub mod import;
pub mod meta;
pub mod metrics;
pub mod template;

/// Install ring as the process-wide rustls crypto provider (idempotent). Exactly one provider
/// is compiled in; this makes the choice explicit for every TLS client (kube and reqwest).
pub fn ensure_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
pub mod cli;
pub mod leader;
pub mod operator;
pub mod orphans;
pub mod secure_metrics;
pub mod server;
