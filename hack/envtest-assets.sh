#!/usr/bin/env bash
# Provision the test control plane: etcd, kube-apiserver, kube-controller-manager, kubectl and helm,
# built from their Go modules with the machine's Go (prebuilt Kubernetes binaries cannot be
# downloaded here). The versions are pinned by the committed modules in hack/controlplane/
# (go.mod + go.sum, made by hack/controlplane/gen.sh), so every build is verified against go.sum.
#
#   hack/envtest-assets.sh            # Kubernetes 1.37.2 (latest supported)
#   hack/envtest-assets.sh 1.33.13    # Kubernetes 1.33.13 (earliest supported)
#   INBOX_ASSETS_HELM=0 hack/envtest-assets.sh   # without helm (the demo does not use it)
#
# Prints the assets directory (envtest's KUBEBUILDER_ASSETS convention) on stdout; everything
# else goes to stderr. Idempotent; results are cached outside the work tree, in
# ${INBOX_OPERATOR_CACHE:-~/.cache/inbox-operator}/envtest/. If KUBEBUILDER_ASSETS is already set
# and holds the binaries, it is printed unchanged and nothing is built.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"

K8S_VERSION="${1:-${K8S_VERSION:-1.37.2}}"
ETCD_VERSION=3.6.16
HELM_VERSION=3.22.0
CACHE="${INBOX_OPERATOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/inbox-operator}/envtest"
OUT="$CACHE/k8s-$K8S_VERSION"
KUBE_BINARIES=(kube-apiserver kube-controller-manager kubectl)
BINARIES=(etcd "${KUBE_BINARIES[@]}")
WITH_HELM="${INBOX_ASSETS_HELM:-1}"
[[ "$WITH_HELM" == 1 ]] && BINARIES+=(helm)

log() { echo "envtest-assets: $*" >&2; }

# A build is reused while this script and the pinned modules are unchanged.
STAMP=$(cat "$0" "$HERE"/controlplane/*/go.sum 2>/dev/null | sha256sum | cut -c1-16)

# .complete holds the stamp of the Kubernetes binaries' build; etcd and helm are links to
# shared builds, present or not.
complete_in() {
  local dir=$1 b
  [[ "$(cat "$dir/.complete" 2>/dev/null)" == "$STAMP" ]] || return 1
  for b in "${BINARIES[@]}"; do [[ -x "$dir/$b" ]] || return 1; done
}
kube_built_in() {
  local dir=$1 b
  [[ "$(cat "$dir/.complete" 2>/dev/null)" == "$STAMP" ]] || return 1
  for b in "${KUBE_BINARIES[@]}"; do [[ -x "$dir/$b" ]] || return 1; done
}

if [[ -n "${KUBEBUILDER_ASSETS:-}" && -x "$KUBEBUILDER_ASSETS/kube-apiserver" && -x "$KUBEBUILDER_ASSETS/etcd" ]]; then
  echo "$KUBEBUILDER_ASSETS"
  exit 0
fi
if complete_in "$OUT"; then
  echo "$OUT"
  exit 0
fi

MOD="$HERE/controlplane/k8s-v$K8S_VERSION"
[[ -f "$MOD/go.mod" ]] || { log "no pinned module for Kubernetes $K8S_VERSION (run hack/controlplane/gen.sh k8s $K8S_VERSION)"; exit 1; }
command -v go >/dev/null || { log "Go is required (go 1.26 or newer on PATH)"; exit 1; }

# The machine's Go, never a downloaded toolchain; go.sum must already hold every checksum.
export GOTOOLCHAIN=local GOFLAGS="-mod=readonly -trimpath -buildvcs=false" CGO_ENABLED=0
mkdir -p "$OUT" "$CACHE/bin"

# ldflags VERSION PACKAGES...: stamp the version the binaries report (/version, --version);
# unstamped they say v0.0.0-master, which clients that parse the server version reject.
stamp() {
  local v=$1 major minor flags="-s -w" pkg
  major=$(cut -d. -f1 <<<"$v"); minor=$(cut -d. -f2 <<<"$v")
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    flags+=" -X $pkg.gitVersion=v$v -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    flags+=" -X $pkg.gitTreeState=clean"
  done
  echo "$flags"
}

# helm_ldflags: stamp helm as its Makefile does: its own version, and the Kubernetes version of
# the client-go it is built with (the default for `helm template` and `helm lint`; unstamped it
# is 1.20, which a chart's kubeVersion of >=1.33 refuses).
helm_ldflags() {
  local client_go major minor
  client_go=$(awk '$1 == "k8s.io/client-go" { print $2 }' "$HERE/controlplane/helm-v$HELM_VERSION/go.mod")
  major=$(( $(cut -d. -f1 <<<"${client_go#v}") + 1 )); minor=$(cut -d. -f2 <<<"$client_go")
  local flags="-s -w -X helm.sh/helm/v3/internal/version.version=v$HELM_VERSION"
  flags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
  for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
    flags+=" -X $pkg.k8sVersionMajor=$major -X $pkg.k8sVersionMinor=$minor"
  done
  echo "$flags"
}

# Shared tools (same for every Kubernetes version) are built once into $CACHE/bin.
build_shared() {
  local name=$1 version=$2 pkg=$3 ldflags=$4 target="$CACHE/bin/$1-v$2-$STAMP"
  if [[ ! -x "$target" ]]; then
    log "building $name v$version (about a minute or two)"
    (cd "$HERE/controlplane/$name-v$version" && go build -ldflags "$ldflags" -o "$target.tmp" "$pkg") >&2
    mv "$target.tmp" "$target"
  fi
  ln -sfn "$target" "$OUT/$name"
}

start=$(date +%s)
build_shared etcd "$ETCD_VERSION" go.etcd.io/etcd/server/v3 "-s -w"
if [[ "$WITH_HELM" == 1 ]]; then
  build_shared helm "$HELM_VERSION" helm.sh/helm/v3/cmd/helm "$(helm_ldflags)"
fi
if ! kube_built_in "$OUT"; then
  log "building kube-apiserver, kube-controller-manager and kubectl v$K8S_VERSION (~6 min cold on 2 cores)"
  tmp="$OUT/.build"
  rm -rf "$tmp" && mkdir -p "$tmp"
  (cd "$MOD" && go build -ldflags "$(stamp "$K8S_VERSION")" -o "$tmp/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kubectl) >&2
  mv "$tmp"/* "$OUT/" && rmdir "$tmp"
  echo "$STAMP" >"$OUT/.complete"
fi
"$OUT/kube-apiserver" --version >&2
"$OUT/etcd" --version | sed -n 1p >&2
if [[ "$WITH_HELM" == 1 ]]; then "$OUT/helm" version --short >&2; fi
log "built in $(( $(date +%s) - start ))s"
echo "$OUT"
