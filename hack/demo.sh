#!/usr/bin/env bash
# One command from a fresh machine to a working inbox-operator:
#   - a local control plane (etcd + kube-apiserver, built once and cached),
#   - the AgentSend SIMULATOR (not the real service) on loopback,
#   - the CRDs, the operator, the examples; waits for Ready and prints the result.
#
# To use a real AgentSend account instead of the simulator:
#   AGENTSEND_API_KEY=sk_live_... hack/demo.sh
# (the simulator is then not started and the operator talks to https://api.agentsend.io,
# or AGENTSEND_API_URL if set).
#
# Stop everything with:  hack/demo.sh down
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
STATE="${DEMO_STATE_DIR:-$ROOT/.local}"
CLUSTER="$STATE/cluster"
log() { echo "demo: $*" >&2; }

if [[ "${1:-}" == "down" ]]; then
  for p in operator simulator; do
    [[ -f "$STATE/$p.pid" ]] && kill "$(cat "$STATE/$p.pid")" 2>/dev/null || true
    rm -f "$STATE/$p.pid"
  done
  "$ROOT/hack/local-cluster.sh" down "$CLUSTER" || true
  log "stopped; removed $CLUSTER"
  exit 0
fi

mkdir -p "$STATE"
log "building the local control plane (first run: several minutes; then cached)"
ASSETS="$("$ROOT/hack/envtest-assets.sh" "${K8S_VERSION:-1.37.2}")"
# The kubectl built with the control plane: the server's own version.
export PATH="$ASSETS:$PATH"

log "building inbox-operator and the simulator (inbox-sim)"
cargo build --quiet --manifest-path "$ROOT/Cargo.toml" -p inbox-operator --bin inbox-operator -p inbox-sim --bin inbox-sim
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug/inbox-operator"
SIM="${CARGO_TARGET_DIR:-$ROOT/target}/debug/inbox-sim"

log "starting the local control plane"
KUBECONFIG="$("$ROOT/hack/local-cluster.sh" up "$CLUSTER")"
export KUBECONFIG

if [[ -n "${AGENTSEND_API_KEY:-}" ]]; then
  API_URL="${AGENTSEND_API_URL:-https://api.agentsend.io}"
  log "using the real AgentSend API at $API_URL"
else
  PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')
  export AGENTSEND_API_KEY="sim-demo-key"
  API_URL="http://127.0.0.1:$PORT"
  "$SIM" --listen "127.0.0.1:$PORT" --api-key "$AGENTSEND_API_KEY" >"$STATE/simulator.log" 2>&1 &
  echo $! > "$STATE/simulator.pid"
  for _ in $(seq 1 50); do curl -sf "$API_URL/_simulator/stats" >/dev/null 2>&1 && break; sleep 0.1; done
  log "AgentSend SIMULATOR (not the real service) on $API_URL"
fi

log "installing the CRDs"
kubectl apply --server-side -k "$ROOT/crds" >/dev/null
kubectl wait --for condition=established --timeout=60s \
  crd/inboxes.agentsend.io crd/accounts.agentsend.io crd/clusteraccounts.agentsend.io >/dev/null

log "starting the operator (log: $STATE/operator.log)"
[[ -f "$STATE/operator.pid" ]] && kill "$(cat "$STATE/operator.pid")" 2>/dev/null || true
METRICS_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')
AGENTSEND_API_URL="$API_URL" "$BIN" run --metrics-addr "127.0.0.1:$METRICS_PORT" --metrics-secure=false --sync-interval 10s >"$STATE/operator.log" 2>&1 &
echo $! > "$STATE/operator.pid"

log "applying examples"
kubectl apply --server-side -f "$ROOT/examples/random-address.yaml" >/dev/null
kubectl apply --server-side -f "$ROOT/examples/orphan-policy.yaml" >/dev/null
if [[ "$API_URL" == http://127.0.0.1:* ]]; then
  kubectl apply --server-side -f "$ROOT/examples/custom-domain.yaml" >/dev/null
fi
kubectl wait --for condition=Ready --timeout=90s inboxes --all >/dev/null

echo
kubectl get inboxes
echo
NAME=$(kubectl get inboxes -o jsonpath='{.items[0].metadata.name}')
SECRET=$(kubectl get inbox "$NAME" -o jsonpath='{.status.secretName}')
echo "Address of Inbox $NAME, read back from Secret $SECRET:"
kubectl get secret "$SECRET" -o jsonpath='{.data.address}' | base64 -d; echo
echo
echo "kubeconfig:  export KUBECONFIG=$KUBECONFIG PATH=$ASSETS:\$PATH   # kubectl $("$ASSETS/kube-apiserver" --version | cut -d' ' -f2), as the server"
echo "metrics:     curl -s http://127.0.0.1:$METRICS_PORT/metrics | grep inbox_operator_inbox_"
echo "stop:        hack/demo.sh down"
