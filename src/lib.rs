//! inbox-operator: manage AgentSend email inboxes declaratively from Kubernetes.
//!
//! Layout (see ARCHITECTURE.md): [`api`] (the resources), [`agentsend`] (the AgentSend
//! client), [`controller`] (the reconcile), [`runtime`] (startup, leader election, servers),
//! [`commands`] (the other subcommands), [`cli`] and [`metrics`].
//! The AgentSend simulator used by tests and the demo is a separate workspace crate
//! (`inbox-sim`, in `sim/`): the operator contains no simulator.
#![forbid(unsafe_code)]

pub mod agentsend;
pub mod api;
pub mod cli;
pub mod commands;
pub mod controller;
pub mod metrics;
pub mod runtime;

/// Install ring as the process-wide rustls crypto provider (idempotent). Exactly one provider
/// is compiled in; this makes the choice explicit for every TLS client (kube and reqwest).
pub fn ensure_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
