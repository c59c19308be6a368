#!/usr/bin/env bash
# Run the benchmark (not a test). Figures go into BENCHMARKS.md.
#   hack/bench.sh                      # N = 100, 1000
#   hack/bench.sh --inboxes 100,1000,10000 --latency 20ms
set -euo pipefail
cd "$(dirname "$0")/.."
hack/envtest-assets.sh >/dev/null
cargo build --release --bin inbox-operator --bin inbox-bench
exec target/release/inbox-bench "$@"
