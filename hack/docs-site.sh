#!/usr/bin/env bash
# Build the docs site (`make docs-site`; CI runs it): MkDocs with the Material theme, the versions
# pinned in docs/requirements.txt, installed into a virtualenv outside the tree and reused while
# that file is unchanged. `mkdocs build --strict` fails on any warning: a broken link or anchor,
# a page missing from mkdocs.yml's nav, a missing included file.
#
#   hack/docs-site.sh            # build into site/
#   hack/docs-site.sh serve      # preview on http://127.0.0.1:8000 (rebuilds on change)
#
# Environment: INBOX_OPERATOR_CACHE (default ~/.cache/inbox-operator): the venv is
# $INBOX_OPERATOR_CACHE/mkdocs-venv.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${INBOX_OPERATOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/inbox-operator}"
VENV="$CACHE/mkdocs-venv"
log() { echo "docs-site: $*" >&2; }

STAMP=$(sha256sum docs/requirements.txt | cut -c1-16)
if [[ "$(cat "$VENV/.requirements" 2>/dev/null)" != "$STAMP" ]]; then
  log "installing the pinned tools of docs/requirements.txt into $VENV"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-cache-dir \
    -r docs/requirements.txt
  echo "$STAMP" >"$VENV/.requirements"
fi
# Material 9 prints a banner about its end of life (May 2027) on every build: known, see
# docs/requirements.txt.
export NO_MKDOCS_2_WARNING=1
"$VENV/bin/mkdocs" --version >&2
if [[ "${1:-}" == "serve" ]]; then
  exec "$VENV/bin/mkdocs" serve
fi
"$VENV/bin/mkdocs" build --strict --clean
log "built into site/ ($(find site -name '*.html' | wc -l) pages)"
