//! The process around the controller: [`startup`] (checks, clients, signals), [`leader`]
//! (the Lease and the write gate), [`server`] (`/metrics`, `/healthz`, `/readyz`) and
//! [`secure_metrics`] (HTTPS and token checks for `/metrics`).

pub mod leader;
pub(crate) mod secure_metrics;
pub mod server;
pub mod startup;
