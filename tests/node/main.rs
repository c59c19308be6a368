//! The real-node tests: the operator as users run it — the image built from this repository,
//! installed with the Helm chart or `kubectl apply -k deploy/base`, in Pods on a real one-node
//! Kubernetes 1.37 cluster on this machine (kubelet, containerd and runc, kube-proxy, a CNI
//! bridge; `hack/node/node.sh`, reached through `inbox_testkit::node`). What only a node shows:
//! the probes, the securityContext and the limits as the kernel applies them, leader election
//! between two Pods, `/metrics` through the Service with ServiceAccount tokens, and an
//! application reading its address from an environment variable and a mounted Secret.
//!
//! One node for the whole binary, up on first use (about 10 s) and down when the binary ends,
//! whatever ends it; each test installs its own release in namespaces of its own and talks to a
//! simulator of its own on the node's address. A test that installs something cluster-wide
//! (`deploy/base` watches every namespace) has the node to itself meanwhile.
//!
//! Every test is ignored by default: it needs root, Linux with cgroup v1, the Debian packages
//! containerd, runc, containernetworking-plugins, nftables and busybox-static, and it changes
//! the host while it runs (a bridge, cgroups, sysctls, nftables tables; all undone and checked
//! afterwards). `hack/test.sh` runs them on Kubernetes 1.37 when the machine has all that (CI
//! does); by hand: `cargo test --test node -- --ignored`. Run one area with e.g.
//! `cargo test --test node -- --ignored failover::`.

use inbox_testkit::{node, support};

mod apps;
mod failover;
mod hostile;
mod image;
mod install;
mod metrics;
mod release;
