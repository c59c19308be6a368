//! The Inbox reconcile: [`plan`] decides every step of a pass (pure, table-tested), with
//! [`addresses`] (identity and address rules); [`status`] renders the status it decides;
//! [`outputs`] holds the rules of what the Inbox writes (Secret, ConfigMap, templates, metadata); `execute`
//! runs the steps (every Kubernetes and AgentSend call of a pass); [`events`] names what it
//! publishes.

pub mod addresses;
pub mod events;
pub(crate) mod execute;
pub mod outputs;
pub mod plan;
pub mod status;
