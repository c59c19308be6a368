#!/usr/bin/env bash
# Provision the real node's Kubernetes commands: kubelet, kube-proxy and kube-scheduler, built
# with the machine's Go from the pinned module hack/controlplane/node/k8s-vVERSION (the same
# k8s.io/kubernetes and replaces as the control plane's module; hack/controlplane/gen.sh checks
# that every shared dependency is at one version). The control plane itself (etcd,
# kube-apiserver, kube-controller-manager, kubectl, helm) comes from hack/envtest-assets.sh.
#
#   hack/node/assets.sh            # Kubernetes 1.37.2, the only version the node runs
#
# Prints the directory holding the three commands on stdout; everything else goes to stderr.
# Idempotent: cached in ${INBOX_OPERATOR_CACHE:-~/.cache/inbox-operator}/node/k8s-VERSION/ and
# rebuilt only when this script or the module's go.sum changes. About 30 s after the control
# plane's build (the Go build cache holds the shared packages), ~4 min cold.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"

K8S_VERSION="${1:-1.37.2}"
CACHE="${INBOX_OPERATOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/inbox-operator}/node"
OUT="$CACHE/k8s-$K8S_VERSION"
MOD="$ROOT/hack/controlplane/node/k8s-v$K8S_VERSION"
BINARIES=(kubelet kube-proxy kube-scheduler)

log() { echo "node-assets: $*" >&2; }

[[ -f "$MOD/go.mod" ]] || { log "no pinned node module for Kubernetes $K8S_VERSION (hack/controlplane/gen.sh node $K8S_VERSION)"; exit 1; }
STAMP=$(cat "$0" "$MOD/go.sum" | sha256sum | cut -c1-16)

complete() {
  local b
  [[ "$(cat "$OUT/.complete" 2>/dev/null)" == "$STAMP" ]] || return 1
  for b in "${BINARIES[@]}"; do [[ -x "$OUT/$b" ]] || return 1; done
}
if complete; then
  echo "$OUT"
  exit 0
fi
command -v go >/dev/null || { log "Go is required (go 1.26 or newer on PATH)"; exit 1; }

# As hack/envtest-assets.sh: the machine's Go, go.sum verified, static, version stamped.
export GOTOOLCHAIN=local GOFLAGS="-mod=readonly -trimpath -buildvcs=false" CGO_ENABLED=0
major=$(cut -d. -f1 <<<"$K8S_VERSION"); minor=$(cut -d. -f2 <<<"$K8S_VERSION")
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=v$K8S_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
  ldflags+=" -X $pkg.gitTreeState=clean"
done

start=$(date +%s)
log "building kubelet, kube-proxy and kube-scheduler v$K8S_VERSION"
mkdir -p "$OUT"
tmp="$OUT/.build"
rm -rf "$tmp" && mkdir -p "$tmp"
(cd "$MOD" && go build -ldflags "$ldflags" -o "$tmp/" \
  k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy \
  k8s.io/kubernetes/cmd/kube-scheduler) >&2
mv "$tmp"/* "$OUT/" && rmdir "$tmp"
"$OUT/kubelet" --version >&2
echo "$STAMP" >"$OUT/.complete"
log "built in $(( $(date +%s) - start ))s"
echo "$OUT"
