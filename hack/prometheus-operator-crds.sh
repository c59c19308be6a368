#!/usr/bin/env bash
# The Prometheus Operator's CRDs (ServiceMonitor, PodMonitor, PrometheusRule, ...), for the test
# that applies the chart's and deploy/monitoring's monitoring objects to the test control plane
# with strict field validation (tests/it/monitoring.rs). They come from the Prometheus Operator's
# Go module (example/prometheus-operator-crd/), fetched with `go mod download` through the Go
# module proxy and checked against the pinned go.sum hash below; the module cache (outside the
# work tree, `go env GOMODCACHE`) keeps them.
#
#   hack/prometheus-operator-crds.sh      # prints the directory holding the CRD files
#
# Pinned: v0.85.0, the newest version of the module github.com/prometheus-operator/prometheus-operator
# the proxy serves (the API group monitoring.coreos.com/v1 is stable across versions).
set -euo pipefail

MODULE=github.com/prometheus-operator/prometheus-operator
VERSION=v0.85.0
SUM="h1:M5xLCLEoaW2IJfnuCwFzzpL+jSVQu3KGT84Pye+fW8s="

command -v go >/dev/null || { echo "prometheus-operator-crds: Go is required" >&2; exit 1; }
json=$(cd / && GOFLAGS=-mod=mod GOTOOLCHAIN=local go mod download -json "$MODULE@$VERSION")
got=$(sed -n 's/^[[:space:]]*"Sum": "\(.*\)",\{0,1\}$/\1/p' <<<"$json")
dir=$(sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p' <<<"$json")
if [[ "$got" != "$SUM" ]]; then
  echo "prometheus-operator-crds: $MODULE@$VERSION has checksum $got, want $SUM" >&2
  exit 1
fi
crds="$dir/example/prometheus-operator-crd"
[[ -f "$crds/monitoring.coreos.com_servicemonitors.yaml" ]] ||
  { echo "prometheus-operator-crds: no CRDs in $crds" >&2; exit 1; }
echo "$crds"
