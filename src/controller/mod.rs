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

pub mod accounts;
pub mod cache;
pub mod context;
pub mod error;
pub mod inbox;
pub mod ownership;
pub mod remote;
pub mod run;
