#!/usr/bin/env bash
# A throw-away local control plane (etcd + kube-apiserver + kube-controller-manager, Kubernetes
# $K8S_VERSION, default 1.37.2, built by hack/envtest-assets.sh) on loopback, for the demo and
# the benchmark. The controller-manager runs the garbage collector, the namespace controller and
# the clusterrole-aggregation controller (the built-in view/edit/admin roles).
# Not for production.
#
#   hack/local-cluster.sh up   [DIR]   start; prints the kubeconfig path
#   hack/local-cluster.sh down [DIR]   stop and delete DIR
#
# DIR defaults to .local/cluster in the repository.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CMD="${1:-up}"
DIR="${2:-$ROOT/.local/cluster}"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
log() { echo "local-cluster: $*" >&2; }

down() {
  for p in controller-manager apiserver etcd; do
    if [[ -f "$DIR/$p.pid" ]]; then
      kill "$(cat "$DIR/$p.pid")" 2>/dev/null || true
    fi
  done
  sleep 1
  for p in controller-manager apiserver etcd; do
    if [[ -f "$DIR/$p.pid" ]]; then kill -9 "$(cat "$DIR/$p.pid")" 2>/dev/null || true; fi
  done
  rm -rf "$DIR"
}

if [[ "$CMD" == "down" ]]; then
  down
  log "stopped"
  exit 0
fi
[[ "$CMD" == "up" ]] || { echo "usage: $0 up|down [DIR]" >&2; exit 2; }

ASSETS="$("$ROOT/hack/envtest-assets.sh" "${K8S_VERSION:-1.37.2}")"
if [[ -f "$DIR/apiserver.pid" ]] && kill -0 "$(cat "$DIR/apiserver.pid")" 2>/dev/null; then
  log "already running"
  echo "$DIR/kubeconfig"
  exit 0
fi
rm -rf "$DIR"
mkdir -p "$DIR/etcd" "$DIR/certs"

ETCD_PORT=$(free_port); PEER_PORT=$(free_port); API_PORT=$(free_port); KCM_PORT=$(free_port)
TOKEN=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
KCM_TOKEN=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
{ echo "$TOKEN,admin,admin,system:masters"
  echo "$KCM_TOKEN,kube-controller-manager,kcm,system:masters"; } > "$DIR/tokens.csv"
openssl genrsa -out "$DIR/sa.key" 2048 2>/dev/null
openssl rsa -in "$DIR/sa.key" -pubout -out "$DIR/sa.pub" 2>/dev/null

"$ASSETS/etcd" --data-dir "$DIR/etcd" \
  --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls "http://127.0.0.1:$PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$PEER_PORT" \
  --initial-cluster "default=http://127.0.0.1:$PEER_PORT" \
  --quota-backend-bytes 4294967296 >"$DIR/etcd.log" 2>&1 &
echo $! > "$DIR/etcd.pid"

"$ASSETS/kube-apiserver" --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
  --secure-port "$API_PORT" --bind-address 127.0.0.1 --advertise-address 127.0.0.1 \
  --endpoint-reconciler-type none \
  --cert-dir "$DIR/certs" --token-auth-file "$DIR/tokens.csv" --authorization-mode RBAC \
  --service-account-issuer https://kubernetes.default.svc --service-account-key-file "$DIR/sa.pub" \
  --service-account-signing-key-file "$DIR/sa.key" --service-cluster-ip-range 10.0.0.0/24 \
  --allow-privileged --max-requests-inflight 1000 --max-mutating-requests-inflight 500 \
  >"$DIR/apiserver.log" 2>&1 &
echo $! > "$DIR/apiserver.pid"

# kubeconfig FILE TOKEN
kubeconfig() {
cat > "$1" <<KC
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: https://127.0.0.1:$API_PORT
    insecure-skip-tls-verify: true
users:
- name: admin
  user:
    token: $2
contexts:
- name: local
  context:
    cluster: local
    user: admin
    namespace: default
current-context: local
KC
}
kubeconfig "$DIR/kubeconfig" "$TOKEN"
kubeconfig "$DIR/kcm.kubeconfig" "$KCM_TOKEN"

for _ in $(seq 1 180); do
  if curl -ksf -H "Authorization: Bearer $TOKEN" "https://127.0.0.1:$API_PORT/readyz" >/dev/null 2>&1; then
    log "kube-apiserver $("$ASSETS/kube-apiserver" --version | cut -d' ' -f2) ready on https://127.0.0.1:$API_PORT"
    "$ASSETS/kube-controller-manager" --kubeconfig "$DIR/kcm.kubeconfig" \
      --controllers garbagecollector,namespace,clusterrole-aggregation --leader-elect=false \
      --use-service-account-credentials=false --secure-port "$KCM_PORT" --bind-address 127.0.0.1 \
      --authentication-skip-lookup=true --cert-dir "$DIR/kcm-certs" \
      >"$DIR/controller-manager.log" 2>&1 &
    echo $! > "$DIR/controller-manager.pid"
    echo "$DIR/kubeconfig"
    exit 0
  fi
  if ! kill -0 "$(cat "$DIR/apiserver.pid")" 2>/dev/null; then break; fi
  sleep 0.5
done
log "kube-apiserver did not become ready; last log lines:"
tail -20 "$DIR/apiserver.log" >&2
down
exit 1
