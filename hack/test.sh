#!/usr/bin/env bash
# THE test command: provisions the test control plane (etcd + kube-apiserver, built once and
# cached) and runs every test (unit, real-apiserver integration, binary end-to-end, faults).
set -euo pipefail
cd "$(dirname "$0")/.."

KUBEBUILDER_ASSETS="$(hack/envtest-assets.sh)"
export KUBEBUILDER_ASSETS
echo "test: control plane assets in $KUBEBUILDER_ASSETS" >&2
command -v kubectl >/dev/null || { echo "test: kubectl is required (apt-get install kubernetes-client)" >&2; exit 1; }

# Integration tests mostly wait on the apiserver; a few more threads than cores keeps them busy.
export RUST_TEST_THREADS="${RUST_TEST_THREADS:-4}"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
set +e
cargo test --locked "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
passed=$(grep -Eo 'test result: [a-zA-Z]+\. [0-9]+ passed' "$log" | awk '{s+=$4} END {print s+0}')
failed=$(grep -Eo '[0-9]+ failed' "$log" | awk '{s+=$1} END {print s+0}')
echo
echo "all test binaries: $passed passed, $failed failed"
exit "$status"
