#!/usr/bin/env bash
# Provision a real etcd + kube-apiserver (Kubernetes 1.20.2) for integration tests.
#
# Prebuilt Kubernetes binaries cannot be downloaded on our machines, so this builds
# kube-apiserver from Debian's `kubernetes` source package and takes etcd from the
# `etcd-server` package. Idempotent; the result is cached outside the work tree.
#
# Prints the assets directory (envtest's KUBEBUILDER_ASSETS convention) on stdout;
# everything else goes to stderr. If KUBEBUILDER_ASSETS is already set and holds
# both binaries, it is printed unchanged and nothing is built.
set -euo pipefail

K8S_VERSION=1.20.2
CACHE="${INBOX_OPERATOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/inbox-operator}/envtest"
OUT="$CACHE/k8s-$K8S_VERSION"

log() { echo "envtest-assets: $*" >&2; }

if [[ -n "${KUBEBUILDER_ASSETS:-}" && -x "$KUBEBUILDER_ASSETS/kube-apiserver" && -x "$KUBEBUILDER_ASSETS/etcd" ]]; then
  echo "$KUBEBUILDER_ASSETS"
  exit 0
fi
if [[ -f "$OUT/.complete" && -x "$OUT/kube-apiserver" && -x "$OUT/etcd" ]]; then
  echo "$OUT"
  exit 0
fi

SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi

# --- Debian packages -------------------------------------------------------
need_pkgs=()
for p in etcd-server golang-go rsync dpkg-dev openssl make; do
  dpkg -s "$p" >/dev/null 2>&1 || need_pkgs+=("$p")
done
SRC_LIST=/etc/apt/sources.list.d/inbox-operator-src.sources
if ! grep -rqs '^Types:.*deb-src' /etc/apt/sources.list.d/ && ! grep -qs '^deb-src' /etc/apt/sources.list; then
  suite=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
  log "adding a deb-src entry for $suite"
  $SUDO tee "$SRC_LIST" >/dev/null <<SRC
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: $suite
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  APT_UPDATED=""
fi
if [[ ${#need_pkgs[@]} -gt 0 || -z "${APT_UPDATED-x}" ]]; then
  log "apt-get update"
  $SUDO apt-get update -qq >&2
fi
if [[ ${#need_pkgs[@]} -gt 0 ]]; then
  log "installing ${need_pkgs[*]}"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >&2
fi

# --- Kubernetes source -------------------------------------------------------
SRC="$CACHE/src"
TREE="$SRC/kubernetes-$K8S_VERSION"
mkdir -p "$SRC"
if [[ ! -d "$TREE/cmd/kube-apiserver" ]]; then
  ( cd "$SRC"
    ls kubernetes_*.orig.tar.gz >/dev/null 2>&1 || apt-get source --download-only kubernetes >&2 2>/dev/null \
      || { $SUDO apt-get update -qq >&2; apt-get source --download-only kubernetes >&2; }
    log "unpacking"
    rm -rf "kubernetes-$K8S_VERSION.tmp" && mkdir "kubernetes-$K8S_VERSION.tmp"
    tar xzf kubernetes_*.orig.tar.gz -C "kubernetes-$K8S_VERSION.tmp" --strip-components=1
    mv "kubernetes-$K8S_VERSION.tmp" "kubernetes-$K8S_VERSION" )
fi

# --- Patches ---------------------------------------------------------------
# 1. reflect2 v1.0.1 links to runtime.mapiterinit with the pre-Go-1.18 signature and
#    crashes the first time a map is serialised. Apply the change reflect2 v1.0.2 made.
R2="$TREE/vendor/github.com/modern-go/reflect2"
if ! grep -q "checkBucket uintptr" "$R2/unsafe_link.go"; then
  log "patching vendored reflect2 for Go >= 1.18"
  perl -0pi -e 's/func mapiterinit\(rtype unsafe\.Pointer, m unsafe\.Pointer\) \*hiter/func mapiterinit(rtype unsafe.Pointer, m unsafe.Pointer, it *hiter)/' "$R2/unsafe_link.go"
  perl -0pi -e 's/\t\/\/ rest fields are ignored\n\}/\tt           unsafe.Pointer\n\th           unsafe.Pointer\n\tbuckets     unsafe.Pointer\n\tbptr        unsafe.Pointer\n\toverflow    *[]unsafe.Pointer\n\toldoverflow *[]unsafe.Pointer\n\tstartBucket uintptr\n\toffset      uint8\n\twrapped     bool\n\tB           uint8\n\ti           uint8\n\tbucket      uintptr\n\tcheckBucket uintptr\n}/' "$R2/unsafe_link.go"
  perl -0pi -e 's/\treturn &UnsafeMapIterator\{\n\t\thiter:      mapiterinit\(type2\.rtype, \*\(\*unsafe\.Pointer\)\(obj\)\),/\tvar it hiter\n\tmapiterinit(type2.rtype, *(*unsafe.Pointer)(obj), &it)\n\treturn &UnsafeMapIterator{\n\t\thiter:      &it,/' "$R2/unsafe_map.go"
  grep -q 'checkBucket uintptr' "$R2/unsafe_link.go" && grep -q 'hiter:      &it' "$R2/unsafe_map.go" \
    || { log "reflect2 patch did not apply"; exit 1; }
fi
# 2. Version defaults, so /version reports v1.20.2 (clients parse it).
for f in staging/src/k8s.io/component-base/version/base.go staging/src/k8s.io/client-go/pkg/version/base.go; do
  perl -pi -e 's/^(\s*gitMajor\s+string)(\s*=\s*"")?/$1 = "1"/; s/^(\s*gitMinor\s+string)(\s*=\s*"")?/$1 = "20"/; s/^(\s*gitVersion\s+(?:string\s*)?=\s*)"v0\.0\.0-master\+[0-9a-f]+"/$1"v'"$K8S_VERSION"'"/' "$TREE/$f"
done

# --- Build ----------------------------------------------------------------------
GOPATH_DIR="$CACHE/gopath"
mkdir -p "$GOPATH_DIR/src/k8s.io"
ln -sfn "$TREE" "$GOPATH_DIR/src/k8s.io/kubernetes"
export GOPATH="$GOPATH_DIR" GO111MODULE=off GOFLAGS="" GOCACHE="$CACHE/gocache"
cd "$GOPATH_DIR/src/k8s.io/kubernetes"
if [[ ! -f "$CACHE/.generated" ]]; then
  log "make generated_files (a few minutes)"
  rm -rf _output
  make generated_files >&2
  touch "$CACHE/.generated"
fi
mkdir -p "$OUT"
log "building kube-apiserver (a few minutes on 2 cores)"
go build -o "$OUT/kube-apiserver.tmp" \
  -ldflags "-s -w -X k8s.io/kubernetes/vendor/k8s.io/component-base/version.gitVersion=v$K8S_VERSION -X k8s.io/kubernetes/vendor/k8s.io/component-base/version.gitMajor=1 -X k8s.io/kubernetes/vendor/k8s.io/component-base/version.gitMinor=20" \
  ./cmd/kube-apiserver >&2
mv "$OUT/kube-apiserver.tmp" "$OUT/kube-apiserver"
ln -sfn "$(command -v etcd || echo /usr/bin/etcd)" "$OUT/etcd"
"$OUT/kube-apiserver" --version >&2
touch "$OUT/.complete"
echo "$OUT"
