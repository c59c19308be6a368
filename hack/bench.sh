#!/usr/bin/env bash
# Run the benchmark (not a test). Current figures and method: docs/performance.md.
#   hack/bench.sh                      # N = 100, 1000
#   hack/bench.sh --inboxes 100,1000,10000 --latency 20ms
#   hack/bench.sh --inboxes 1000 --sim-rate-limit 0,100   # each N unlimited, then with the simulator limiting each account to 100 req/s
#   hack/bench.sh --write-costs 2000   # the control plane's CPU per write of an Inbox's life
#   hack/bench.sh --cache-sizes        # the heap one cached Inbox costs, part by part
set -euo pipefail
cd "$(dirname "$0")/.."
# The control plane (and its kubectl, first on PATH) of Kubernetes $K8S_VERSION (default 1.37.2).
ASSETS="$(hack/envtest-assets.sh "${K8S_VERSION:-1.37.2}")"
export PATH="$ASSETS:$PATH" K8S_VERSION="${K8S_VERSION:-1.37.2}"
cargo build --release -p inbox-operator --bin inbox-operator -p inbox-bench --bin inbox-bench
export INBOX_BENCH_OPERATOR="${INBOX_BENCH_OPERATOR:-${CARGO_TARGET_DIR:-target}/release/inbox-operator}"
exec "${CARGO_TARGET_DIR:-target}/release/inbox-bench" "$@"
