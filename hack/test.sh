#!/usr/bin/env bash
# THE test command (`make test`): provisions the test control plane (etcd, kube-apiserver,
# kube-controller-manager, kubectl and helm of Kubernetes $K8S_VERSION, default 1.37.2, built
# once from their Go modules by hack/envtest-assets.sh and cached in
# ~/.cache/inbox-operator/envtest/), then runs every test of every workspace member (the
# operator, sim/, bench/; testkit/ holds the integration tests' helpers and no tests): unit
# tests, the simulator's own tests (sim/tests/), and the real-apiserver integration tests:
# tests/it/ (one binary, one control plane for the whole run) and tests/faults_apiserver.rs (it
# stops the API server, so it has a control plane of its own). On 1.37, where the machine can run
# a real node (root, containerd: `hack/node/node.sh check`), also the real-node tests
# (tests/node/: the operator's image in Pods, installed with the chart and deploy/base; ignored
# by plain `cargo test`): this builds the node's kubelet, kube-proxy and kube-scheduler
# (hack/node/assets.sh, cached) and the operator's image (hack/image/build.py, a musl release
# build as the Dockerfile's), and the node checks the host is clean after it goes down.
#
#   hack/test.sh                          # everything on 1.37.2: cargo test --workspace --all-targets
#   K8S_VERSION=1.33.13 hack/test.sh      # everything on the earliest supported version
#   hack/test.sh --test it crd::          # arguments replace --workspace --all-targets
#
# Environment: K8S_VERSION; KUBEBUILDER_ASSETS (use these binaries instead); KUBECTL, HELM
# (default: the ones built with the control plane); RUST_TEST_THREADS (tests per binary in
# parallel; default 4); INBOX_NODE_TESTS: auto (default: run them where they can run),
# required (CI: on 1.37, fail if they cannot run), off.
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

# The real-node tests, with the default arguments only (`hack/test.sh --test node -- --ignored`
# runs them by hand).
node_tests=""
if [[ $# -eq 0 ]]; then
  if [[ ${INBOX_NODE_TESTS:-auto} == off ]]; then
    node_tests="INBOX_NODE_TESTS=off"
  elif [[ $K8S_VERSION != 1.37.* ]]; then
    node_tests="the node runs Kubernetes 1.37 only"
  elif ! why=$(hack/node/node.sh check 2>&1); then
    node_tests="${why#node: }"
    if [[ ${INBOX_NODE_TESTS:-auto} == required ]]; then
      echo "test: the real-node tests are required (INBOX_NODE_TESTS=required) but cannot run: $node_tests" >&2
      exit 1
    fi
  fi
  if [[ -z $node_tests ]]; then
    command -v curl >/dev/null || { echo "test: curl is required (the real-node tests' HTTPS client)" >&2; exit 1; }
    # `--include-ignored` below must not pick up anything else.
    others=$(grep -rl '#\[ignore' --include='*.rs' src tests sim bench testkit | grep -v '^tests/node/' || true)
    if [[ -n $others ]]; then
      echo "test: only the real-node tests may be #[ignore]d; also in: $others" >&2
      exit 1
    fi
    node_start=$(date +%s)
    hack/node/assets.sh >/dev/null
    INBOX_NODE_OPERATOR_IMAGE="$(python3 hack/image/build.py operator)"
    export INBOX_NODE_OPERATOR_IMAGE
    echo "test: real node: kubelet, kube-proxy, kube-scheduler and the operator's image ready in $(( $(date +%s) - node_start ))s"
  else
    echo "test: the real-node tests (tests/node/) are skipped: $node_tests"
  fi
fi

# Integration tests mostly wait on the apiserver; a few more threads than cores keeps them busy.
export RUST_TEST_THREADS="${RUST_TEST_THREADS:-4}"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
set +e
# --no-fail-fast: every test binary runs, so one failure does not hide others.
if [[ $# -eq 0 ]]; then
  set -- --workspace --all-targets
  # The ignored tests are the real-node tests, and only they.
  [[ -n $node_tests ]] || set -- "$@" -- --include-ignored
fi
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
# The node's own check of the host after it went down (hack/node/node.sh down).
if grep -q '^node: down in' "$log"; then
  echo "test: real node: $(grep '^node: down in' "$log" | tail -n 1 | sed 's/^node: //')"
  if grep -q "the host is NOT as before" "$log"; then
    echo "test: the node left the host changed (see 'node:' above)"
    [[ $status -ne 0 ]] || status=1
    failed=$((failed + 1))
  fi
fi
echo "test: $passed passed, $failed failed, $ignored skipped"
exit "$status"
