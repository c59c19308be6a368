//! The integration tests, in one binary: one control plane (etcd, kube-apiserver,
//! kube-controller-manager; `support`) is started for the whole run and shared by every test,
//! each in a namespace of its own, so the tests run in parallel. One module per area; the
//! shared helpers are the workspace crate `inbox-testkit` (testkit/): `support` (the control
//! plane, free ports, the operator binary as a process, polling) and `ctl` (one `Env`: a
//! namespace, a simulator and, when asked for, an in-process controller; create-and-wait-Ready,
//! typed condition waits, simulator faults), reached as `crate::support` and `crate::ctl`.
//!
//! `tests/faults_apiserver.rs` is not here: it stops and restarts the API server, so it has a
//! binary and a control plane of its own.
//!
//! Run one area with e.g. `hack/test.sh --test it controller::`.

use inbox_testkit::{ctl, support};

mod accounts;
mod agentsend;
mod controller;
mod crd;
mod demo;
mod deploy;
mod e2e;
mod faults;
mod hostile;
mod monitoring;
mod outputs;
mod ownership;
mod secure_metrics;
