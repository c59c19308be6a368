#!/usr/bin/env bash
# One command from a fresh machine to a working inbox-operator:
#   - a local control plane (etcd, kube-apiserver, kube-controller-manager and kubectl of
#     Kubernetes 1.37.2, built from their pinned Go modules once and cached; no helm),
#   - a debug build of inbox-operator (and of the simulator, inbox-sim, when it is used),
#   - the AgentSend SIMULATOR (not the real service) on loopback,
#   - the CRDs, the operator, and examples/random-address.yaml, examples/orphan-policy.yaml and
#     examples/custom-domain.yaml; waits for Ready and prints the result.
# It says what it builds and how long each part took. Cold (nothing cached, 2 free cores): the
# control plane takes about 7-8 minutes and the Rust build 5-7 more; warm, about 6 seconds.
#
# To use a real AgentSend account instead of the simulator:
#   AGENTSEND_API_KEY=sk_live_... hack/demo.sh
# (the simulator is then neither built nor started, the operator talks to
# https://api.agentsend.io, or AGENTSEND_API_URL if set, and only examples/random-address.yaml
# is applied: it creates one inbox in your account, which `hack/demo.sh down` deletes).
#
# Stop everything with:  hack/demo.sh down
# With a real key, `down` first deletes the demo's Inboxes, and with them their inboxes in your
# AgentSend account, then stops the operator and the control plane.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
STATE="${DEMO_STATE_DIR:-$ROOT/.local}"
CLUSTER="$STATE/cluster"
log() { echo "demo: $*" >&2; }
# The demo does not use helm: the control plane is built without it.
export INBOX_ASSETS_HELM=0
# The demo's control plane has a port of its own each time: kubectl's discovery cache for it
# stays in the demo's folder, not in ~/.kube/cache.
export KUBECACHEDIR="$STATE/kubectl-cache"

# With a real key: delete every Inbox while the operator still runs, so that their inboxes are
# deleted in AgentSend; name whatever is left.
delete_real_inboxes() {
  [[ -f "$STATE/real-api" && -f "$STATE/assets" && -f "$CLUSTER/kubeconfig" ]] || return 0
  local kubectl
  kubectl="$(cat "$STATE/assets")/kubectl"
  export KUBECONFIG="$CLUSTER/kubeconfig"
  log "deleting the demo's Inboxes first: they hold inboxes in your AgentSend account ($(cat "$STATE/real-api"))"
  if "$kubectl" delete inboxes --all --all-namespaces --timeout=120s >&2; then
    log "deleted; their inboxes are deleted in AgentSend (those with deletionPolicy: Orphan are left there)"
  else
    log "WARNING: some Inboxes were not deleted in 120 s; these inboxes are left in your AgentSend account:"
    "$kubectl" get inboxes --all-namespaces \
      -o custom-columns='NAMESPACE:.metadata.namespace,NAME:.metadata.name,ADDRESS:.status.address,INBOX ID:.status.inboxId' >&2 || true
  fi
}

if [[ "${1:-}" == "down" ]]; then
  delete_real_inboxes
  for p in operator simulator; do
    [[ -f "$STATE/$p.pid" ]] && kill "$(cat "$STATE/$p.pid")" 2>/dev/null || true
    rm -f "$STATE/$p.pid"
  done
  "$ROOT/hack/local-cluster.sh" down "$CLUSTER" || true
  rm -f "$STATE/real-api" "$STATE/assets"
  log "stopped; removed $CLUSTER"
  exit 0
fi

mkdir -p "$STATE"
took() { echo "$(( SECONDS - $1 ))s"; }
if [[ -n "${AGENTSEND_API_KEY:-}" ]]; then
  API_URL="${AGENTSEND_API_URL:-https://api.agentsend.io}"
  USE_SIM=""
else
  USE_SIM=1
fi

t=$SECONDS
log "control plane: etcd, kube-apiserver, kube-controller-manager, kubectl ${K8S_VERSION:-1.37.2} (built once from their Go modules: about 7-8 min on 2 cores; then cached)"
ASSETS="$("$ROOT/hack/envtest-assets.sh" "${K8S_VERSION:-1.37.2}")"
echo "$ASSETS" >"$STATE/assets"
log "control plane ready in $(took "$t") ($ASSETS)"
# The kubectl built with the control plane: the server's own version.
export PATH="$ASSETS:$PATH"

t=$SECONDS
BUILD=(-p inbox-operator --bin inbox-operator)
if [[ -n $USE_SIM ]]; then
  BUILD+=(-p inbox-sim --bin inbox-sim)
  log "building inbox-operator and the simulator inbox-sim (debug; the first build takes about 10 CPU-minutes, then seconds)"
else
  log "building inbox-operator (debug; the first build takes about 10 CPU-minutes, then seconds)"
fi
cargo build --quiet --locked --manifest-path "$ROOT/Cargo.toml" "${BUILD[@]}"
log "built in $(took "$t")"
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug/inbox-operator"
SIM="${CARGO_TARGET_DIR:-$ROOT/target}/debug/inbox-sim"

t=$SECONDS
log "starting the local control plane"
KUBECONFIG="$("$ROOT/hack/local-cluster.sh" up "$CLUSTER")"
export KUBECONFIG

if [[ -z $USE_SIM ]]; then
  echo "$API_URL" >"$STATE/real-api"
  log "using the real AgentSend API at $API_URL"
else
  rm -f "$STATE/real-api"
  PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')
  export AGENTSEND_API_KEY="sim-demo-key"
  API_URL="http://127.0.0.1:$PORT"
  "$SIM" --listen "127.0.0.1:$PORT" --api-key "$AGENTSEND_API_KEY" >"$STATE/simulator.log" 2>&1 &
  echo $! > "$STATE/simulator.pid"
  for _ in $(seq 1 50); do curl -sf "$API_URL/_simulator/stats" >/dev/null 2>&1 && break; sleep 0.1; done
  log "AgentSend SIMULATOR (not the real service) on $API_URL"
fi

log "installing the CRDs (inboxes, accounts, clusteraccounts)"
kubectl apply --server-side -k "$ROOT/crds" >/dev/null
kubectl wait --for condition=established --timeout=60s \
  crd/inboxes.agentsend.io crd/accounts.agentsend.io crd/clusteraccounts.agentsend.io >/dev/null

log "starting the operator (log: $STATE/operator.log)"
[[ -f "$STATE/operator.pid" ]] && kill "$(cat "$STATE/operator.pid")" 2>/dev/null || true
METRICS_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')
AGENTSEND_API_URL="$API_URL" "$BIN" run --metrics-addr "127.0.0.1:$METRICS_PORT" --metrics-secure=false --sync-interval 10s >"$STATE/operator.log" 2>&1 &
echo $! > "$STATE/operator.pid"

EXAMPLES=(random-address.yaml)
if [[ -n $USE_SIM ]]; then
  # orphan-policy.yaml would leave its inbox behind in a real account; custom-domain.yaml
  # needs a domain of the account (the simulator's is dom_example).
  EXAMPLES+=(orphan-policy.yaml custom-domain.yaml)
fi
log "applying ${EXAMPLES[*]/#/examples/}"
for e in "${EXAMPLES[@]}"; do
  kubectl apply --server-side -f "$ROOT/examples/$e" >/dev/null
done
kubectl wait --for condition=Ready --timeout=90s inboxes --all >/dev/null
log "cluster, operator and Ready Inboxes in $(took "$t")"

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
if [[ -z $USE_SIM ]]; then
  echo "stop:        hack/demo.sh down   # deletes the demo's Inboxes and their inboxes in your account first"
else
  echo "stop:        hack/demo.sh down"
fi
log "done in ${SECONDS}s"
