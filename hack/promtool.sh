#!/usr/bin/env bash
# promtool (Prometheus's rule checker and rule unit-test runner), built from the Prometheus Go
# module with the machine's Go: no prebuilt binaries can be downloaded here, and the Go module
# proxy serves the source. The version is pinned by the committed module hack/promtool/ (go.mod +
# go.sum, made by hack/promtool/gen.sh), so the build is verified against go.sum.
#
#   hack/promtool.sh                      # prints the path of the promtool binary
#   "$(hack/promtool.sh)" test rules deploy/monitoring/alerts_test.yaml
#
# Prints the binary's path on stdout; everything else goes to stderr. Idempotent: the binary is
# cached outside the work tree, in ${INBOX_OPERATOR_CACHE:-~/.cache/inbox-operator}/tools/, and
# rebuilt only when the pinned module or the build flags change (5-10 min cold on 2 cores).
# $PROMTOOL, if set to an executable, is printed unchanged and nothing is built.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"

PROMETHEUS_VERSION=3.15.1   # module github.com/prometheus/prometheus v0.315.1
MOD="$HERE/promtool"
CACHE="${INBOX_OPERATOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/inbox-operator}/tools"

log() { echo "promtool: $*" >&2; }

if [[ -n "${PROMTOOL:-}" && -x "$PROMTOOL" ]]; then
  echo "$PROMTOOL"
  exit 0
fi

# Stamp the version `promtool --version` reports, as Prometheus's own build does.
ldflags="-s -w -X github.com/prometheus/common/version.Version=$PROMETHEUS_VERSION"
ldflags+=" -X github.com/prometheus/common/version.Branch=release-${PROMETHEUS_VERSION%.*}"
ldflags+=" -X github.com/prometheus/common/version.Revision=v$PROMETHEUS_VERSION"
# A build is reused while what it is built from (the pinned module, the flags) is unchanged.
STAMP=$(cat <(echo "$PROMETHEUS_VERSION $ldflags") "$MOD/go.mod" "$MOD/go.sum" | sha256sum | cut -c1-16)
TARGET="$CACHE/promtool-v$PROMETHEUS_VERSION-$STAMP"
if [[ -x "$TARGET" ]]; then
  echo "$TARGET"
  exit 0
fi

want="v0.$(( 300 + $(cut -d. -f2 <<<"$PROMETHEUS_VERSION") )).$(cut -d. -f3 <<<"$PROMETHEUS_VERSION")"
grep -q "^require github.com/prometheus/prometheus $want\$" "$MOD/go.mod" ||
  { log "hack/promtool/go.mod does not pin $want (Prometheus $PROMETHEUS_VERSION): run hack/promtool/gen.sh"; exit 1; }
command -v go >/dev/null || { log "Go is required (go 1.26 or newer on PATH)"; exit 1; }

# The machine's Go, never a downloaded toolchain; go.sum must already hold every checksum.
export GOTOOLCHAIN=local GOFLAGS="-mod=readonly -trimpath -buildvcs=false" CGO_ENABLED=0
mkdir -p "$CACHE"
start=$(date +%s)
log "building promtool $PROMETHEUS_VERSION (5-10 min cold on 2 cores)"
(cd "$MOD" && go build -ldflags "$ldflags" -o "$TARGET.tmp.$$" github.com/prometheus/prometheus/cmd/promtool) >&2
mv "$TARGET.tmp.$$" "$TARGET"
"$TARGET" --version 2>&1 | sed -n 1p >&2
log "built in $(( $(date +%s) - start ))s"
echo "$TARGET"
