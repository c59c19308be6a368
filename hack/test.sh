#!/usr/bin/env bash
# THE test command (`make test`): provisions the test control plane (etcd, kube-apiserver,
# kube-controller-manager, kubectl and helm of Kubernetes $K8S_VERSION, default 1.37.2, built
# once from their Go modules by hack/envtest-assets.sh and cached in
# ~/.cache/inbox-operator/envtest/), then runs every test of every workspace member (the
# operator, sim/, bench/; testkit/ holds the integration tests' helpers and no tests): unit
# tests, the simulator's own tests (sim/tests/), and the real-apiserver integration tests:
# tests/it/ (one binary, one control plane for the whole run) and tests/faults_apiserver.rs (it
# stops the API server, so it has a control plane of its own).
#
#   hack/test.sh                          # everything on 1.37.2: cargo test --workspace --all-targets
#   K8S_VERSION=1.33.13 hack/test.sh      # everything on the earliest supported version
#   hack/test.sh --test it crd::          # arguments replace --workspace --all-targets
#
# Environment: K8S_VERSION; KUBEBUILDER_ASSETS (use these binaries instead); KUBECTL, HELM
# (default: the ones built with the control plane); RUST_TEST_THREADS (tests per binary in
# parallel; default 4).
# Ends with one summary line 'test: N passed, N failed, N skipped'; exits non-zero on any
# failure, including a build failure or a test binary that crashed.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)

K8S_VERSION="${K8S_VERSION:-1.37.2}"
KUBEBUILDER_ASSETS="$(hack/envtest-assets.sh "$K8S_VERSION")"
export KUBEBUILDER_ASSETS
export KUBECTL="${KUBECTL:-$KUBEBUILDER_ASSETS/kubectl}" HELM="${HELM:-$KUBEBUILDER_ASSETS/helm}"
echo "test: control plane assets in $KUBEBUILDER_ASSETS"
echo "test: server $("$KUBEBUILDER_ASSETS/kube-apiserver" --version), etcd $("$KUBEBUILDER_ASSETS/etcd" --version | sed -n '1s/.*: //p'), $("$KUBECTL" version --client 2>/dev/null | sed -n 1p), helm $("$HELM" version --short)"
for tool in openssl setsid "$KUBECTL" "$HELM"; do
  command -v "$tool" >/dev/null || { echo "test: $tool is required" >&2; exit 1; }
done

# Integration tests mostly wait on the apiserver; a few more threads than cores keeps them busy.
export RUST_TEST_THREADS="${RUST_TEST_THREADS:-4}"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
set +e
# --no-fail-fast: every test binary runs, so one failure does not hide others.
if [[ $# -eq 0 ]]; then set -- --workspace --all-targets; fi
cargo test --locked --no-fail-fast "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e

# Only libtest's own result lines, e.g.
#   test result: FAILED. 4 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out; finished in 6.85s
read -r binaries passed failed ignored < <(
  grep -E '^test result: [A-Za-z]+\. [0-9]+ passed; [0-9]+ failed; [0-9]+ ignored' "$log" |
    awk '{b++; p+=$4; f+=$6; i+=$8} END {print b+0, p+0, f+0, i+0}'
)
echo
echo "test: $binaries test binaries in $(( $(date +%s) - start ))s"
if [[ $status -ne 0 && $failed -eq 0 ]]; then
  echo "test: cargo test exited $status without a failed test: a build error or a crashed test binary (see above)"
  failed=1
fi
echo "test: $passed passed, $failed failed, $ignored skipped"
exit "$status"
