//! What the operator's integration tests share (`tests/it/`, one binary for every area, and
//! `tests/faults_apiserver.rs`, which stops the API server and so has a binary of its own). Not
//! shipped: only the operator package dev-depends on it.
//!
//! - [`support`] — the test control plane (a real etcd, kube-apiserver and
//!   kube-controller-manager, started once per test binary, with the CRDs installed), a
//!   namespace per test, log dumps on failure, free ports, polling ([`support::wait_for`]), and
//!   the `inbox-operator` binary run as a process ([`support::Operator`]).
//! - [`ctl`] — one test's environment ([`ctl::Env`]): a namespace, a simulator and, when asked
//!   for, an in-process controller; create-and-wait-Ready, typed condition waits, simulator
//!   faults and the end-state invariants.
//! - [`node`] — the real node of `tests/node/` (`hack/node/node.sh`): a one-node cluster on this
//!   machine running the operator's image in Pods, its namespaces, and the host's view of a
//!   container's process (its user, capabilities, cgroup limits).
//!
//! The operator binary is found next to the running test executable's `deps/` folder, where
//! Cargo puts the binaries it builds for a package's integration tests
//! ([`support::operator_command`]): only the operator's own integration tests can start it.

#![forbid(unsafe_code)]

pub mod ctl;
pub mod node;
pub mod support;
